//! Runs one encoder in a loop so `perf record` can say where the time goes (a profiling aid, not a test):
//!
//!     cargo build --release --example profile_encoders
//!     perf record -g target/release/examples/profile_encoders <model.gguf|dir> text|vision [batch] [seconds]
//!
//! Inputs are fixed and synthetic (52-token texts, mid-grey images) so runs compare across kernels;
//! `TUWEN_PROFILE_TEXT=猫` encodes that text instead (short texts: what a pass costs beyond its products).

use std::time::Instant;
use tuwen::{Encoder, Towers};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: profile_encoders <model> text|vision [batch] [seconds]";
    let model = std::path::PathBuf::from(args.get(1).ok_or_else(|| anyhow::anyhow!(usage))?);
    let tower: Towers = args.get(2).map(String::as_str).unwrap_or("text").parse().map_err(anyhow::Error::msg)?;
    let batch: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(1);
    let seconds: f64 = args.get(4).map(|s| s.parse()).transpose()?.unwrap_or(5.0);
    let encoder = Encoder::load(&model, tower)?;
    let text = std::env::var("TUWEN_PROFILE_TEXT")
        .unwrap_or_else(|_| "北京冬奥会开幕式上的烟花照亮了国家体育场的夜空，观众们在看台上挥舞着国旗欢呼。".repeat(2));
    let texts = vec![text.as_str(); batch];
    let size = encoder.preprocess_config().image_size;
    let pixels = vec![tuwen::preprocess::Pixels { size, data: (0..3 * size * size).map(|i| ((i % 97) as f32 / 48.0) - 1.0).collect() }; batch];
    let run = || -> anyhow::Result<()> {
        match tower {
            Towers::Text => drop(encoder.embed_texts(&texts)?),
            _ => drop(encoder.embed_pixels(&pixels)?),
        }
        Ok(())
    };
    run()?;
    #[cfg(feature = "region-profile")]
    drop(tuwen::model::backend::cpu::region_profile::report(1)); // the warm-up run is not counted
    let (start, cpu_start, mut runs) = (Instant::now(), cpu_seconds(), 0);
    while start.elapsed().as_secs_f64() < seconds {
        run()?;
        runs += 1;
    }
    let wall = start.elapsed().as_secs_f64();
    let per = wall / runs as f64;
    // Cores busy over the timed runs: CPU time of every thread ÷ wall time (threads waiting for work do not
    // count), so a shape whose threads idle shows it here, where a sampling profile cannot.
    let busy = match (cpu_start, cpu_seconds()) {
        (Some(a), Some(b)) => format!(", {:.2} cores busy", (b - a) / wall),
        _ => String::new(),
    };
    println!("{} batch {batch}: {:.1} ms per batch, {:.1} items/s ({runs} runs{busy})", tower.name(), per * 1e3, batch as f64 / per);
    // With `--features region-profile`: each parallel region's wall time and each thread's time in its jobs.
    #[cfg(feature = "region-profile")]
    println!("per run:\n{}", tuwen::model::backend::cpu::region_profile::report(runs));
    Ok(())
}

/// This process's user + system CPU seconds, all threads (Linux: /proc/self/stat, in clock ticks of 1/100 s).
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}
