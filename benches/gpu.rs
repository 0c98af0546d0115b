//! The GPU backend's speed next to the CPU backend's, on the same model files (a benchmark, not a test):
//!
//!     cargo bench --bench gpu
//!
//! Uses the full-size random model (models/random-chinese-clip-vit-base-patch16 or TUWEN_BENCH_MODEL, with
//! the q8_0 GGUFs `cargo bench --bench encoders` makes) and prints one Markdown row per backend × dtype:
//! ms per text (batch 1), texts/s (batch 32), ms per image (batch 1), images/s at batch TUWEN_BENCH_IMAGE_BATCH
//! (default 32). Names the adapter; on a CPU emulation (lavapipe) set TUWEN_BENCH_QUICK=1 for 1 GPU run each (the CPU rows take 5).

use std::path::PathBuf;
use std::time::Instant;
use tuwen::embed::Placement;
use tuwen::model::backend::BackendReport;
use tuwen::model::Gpu;
use tuwen::util::resolve_now;
use tuwen::{Encoder, Towers};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn seconds(f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64()
}

fn main() -> anyhow::Result<()> {
    let dir = PathBuf::from(std::env::var("TUWEN_BENCH_MODEL").unwrap_or("models/random-chinese-clip-vit-base-patch16".into()));
    if !dir.join("tuwen-q8_0-text.gguf").exists() {
        eprintln!("SKIPPED: needs {} with its q8_0 GGUFs (cargo bench --bench encoders makes them)", dir.display());
        return Ok(());
    }
    let gpu = match resolve_now(Gpu::new(true))? {
        Ok(gpu) => gpu,
        Err(e) => {
            eprintln!("SKIPPED: no GPU adapter ({e:#})");
            return Ok(());
        }
    };
    let quick = std::env::var_os("TUWEN_BENCH_QUICK").is_some();
    let gpu_runs = if quick { 1 } else { 5 };
    let image_batch: usize = std::env::var("TUWEN_BENCH_IMAGE_BATCH").map(|b| b.parse()).unwrap_or(Ok(32))?;
    println!("GPU adapter: {}; CPU: {} threads", gpu.adapter(), std::thread::available_parallelism()?.get());
    println!("| backend | weights | ms/text b1 | texts/s b32 | ms/image b1 | images/s b{image_batch} |");
    println!("|---|---|---|---|---|---|");
    let texts: Vec<String> = (0..32).map(|i| format!("第{i}张照片：一只猫坐在窗台上晒太阳，窗外是下雪的北京胡同")).collect();
    let pixels: Vec<_> = (0..image_batch)
        .map(|i| tuwen::preprocess::Pixels { size: 224, data: (0..3 * 224 * 224).map(|j| ((i * 7 + j) % 255) as f32 / 127.5 - 1.0).collect() })
        .collect();
    for (weights, text_path, vision_path) in [
        ("q8_0", dir.join("tuwen-q8_0-text.gguf"), dir.join("tuwen-q8_0-vision.gguf")),
        ("f32", dir.clone(), dir.clone()),
    ] {
        for on_gpu in [true, false] {
            let at = || match on_gpu {
                true => Placement { gpu: Some(gpu.clone()), report: BackendReport { backend: "gpu".into(), detail: gpu.adapter().to_string() } },
                false => Placement::cpu(),
            };
            let runs = if on_gpu { gpu_runs } else { 5 };
            let text = Encoder::load_on(&text_path, Towers::Text, at())?;
            let vision = Encoder::load_on(&vision_path, Towers::Vision, at())?;
            text.embed_text("预热")?; // first use: pipelines, buffers
            vision.embed_pixels(&pixels[..1])?;
            let t1 = median((0..runs).map(|i| seconds(|| drop(text.embed_text(&texts[i]).unwrap())) * 1e3).collect());
            let t32 = median((0..runs).map(|_| seconds(|| drop(text.embed_texts(&texts).unwrap()))).collect());
            let i1 = median((0..runs).map(|i| seconds(|| drop(vision.embed_pixels(&pixels[i % image_batch..][..1]).unwrap())) * 1e3).collect());
            // One forward of the whole batch on the GPU (up to 32); batches of 8 on the CPU.
            let ib = median((0..runs).map(|_| seconds(|| drop(vision.embed_pixels(&pixels).unwrap()))).collect());
            let name = if on_gpu { format!("GPU ({})", gpu.adapter().name) } else { "CPU".into() };
            println!("| {name} | {weights} | {t1:.1} | {:.1} | {i1:.1} | {:.2} |", 32.0 / t32, image_batch as f64 / ib);
        }
    }
    Ok(())
}
