//! Encoder fidelity and speed, f32 vs quantized GGUF (a benchmark, not a test):
//!
//!     cargo bench --bench encoders
//!
//! Uses the full-size random model `./build.sh` makes (models/random-chinese-clip-vit-base-patch16, or
//! TUWEN_BENCH_MODEL), quantizes it to q8_0 / q4_0 / q4k GGUFs (beside it, once), and on the Teddy sample
//! in ../shared measures: cosine to f32 over 200 captions and 50 images, top-5 agreement of f32 and
//! quantized retrieval over all 300 pairs, file sizes, and latency/throughput at batch 1 and 8 (images) or
//! 32 (texts). Set TUWEN_BENCH_QUICK=1 to skip the 300-pair agreement.

use std::path::{Path, PathBuf};
use std::time::Instant;
use tuwen::{Encoder, Towers};

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn time<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let t = Instant::now();
    let r = f();
    (r, t.elapsed().as_secs_f64())
}

fn top5(queries: &[Vec<f32>], gallery: &[Vec<f32>]) -> Vec<Vec<usize>> {
    queries
        .iter()
        .map(|q| {
            let mut s: Vec<(f32, usize)> = gallery.iter().map(|g| cosine(q, g)).zip(0..).collect();
            s.sort_by(|a, b| b.0.total_cmp(&a.0));
            s.into_iter().take(5).map(|x| x.1).collect()
        })
        .collect()
}

fn main() -> anyhow::Result<()> {
    let model_dir = PathBuf::from(std::env::var("TUWEN_BENCH_MODEL").unwrap_or("models/random-chinese-clip-vit-base-patch16".into()));
    let sample = Path::new("../shared/data/teddy2024-sample");
    if !model_dir.join("config.json").exists() || !sample.exists() {
        eprintln!("SKIPPED: needs {} (run ./build.sh) and {}", model_dir.display(), sample.display());
        return Ok(());
    }
    let quick = std::env::var_os("TUWEN_BENCH_QUICK").is_some();
    println!("threads: {} (candle/gemm use all cores)", std::thread::available_parallelism()?.get());
    let mut reader = csv::Reader::from_path(sample.join("ImageWordData.csv"))?;
    let pairs: Vec<(String, String)> = reader.records().map(|r| r.map(|r| (r[0].to_string(), r[1].to_string()))).collect::<Result<_, _>>()?;
    let captions: Vec<&str> = pairs.iter().map(|p| p.1.as_str()).collect();
    let config = tuwen::config::PreprocessConfig::for_vision(&Default::default());
    let pixels: Vec<_> = pairs
        .iter()
        .map(|(id, _)| tuwen::preprocess::preprocess(&std::fs::read(sample.join("ImageData").join(id)).unwrap(), id, &config).unwrap())
        .collect();
    let n_images = if quick { 50 } else { pixels.len() };

    let mut models: Vec<(String, PathBuf, u64)> = vec![("f32".into(), model_dir.clone(), std::fs::metadata(model_dir.join("model.safetensors"))?.len())];
    for dtype in ["q8_0", "q4_0", "q4k"] {
        for tower in ["text", "vision"] {
            let out = model_dir.join(format!("tuwen-{dtype}-{tower}.gguf"));
            if !out.exists() {
                let towers = if tower == "text" { Towers::Text } else { Towers::Vision };
                tuwen::quantize::quantize_model(&model_dir, dtype.parse()?, towers, &out)?;
            }
        }
        let size: u64 = ["text", "vision"].iter().map(|t| std::fs::metadata(model_dir.join(format!("tuwen-{dtype}-{t}.gguf"))).unwrap().len()).sum();
        models.push((dtype.into(), model_dir.clone(), size));
    }

    let mut reference: Option<(Vec<Vec<f32>>, Vec<Vec<f32>>)> = None;
    println!("| model | size (text + vision) | text cos mean / min | image cos mean / min | top-5 agreement t→i / i→t | ms/text b1 | texts/s b32 | ms/image b1 | images/s b8 |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for (name, dir, size) in &models {
        let (text, vision) = if name == "f32" {
            (Encoder::load(dir, Towers::Text)?, Encoder::load(dir, Towers::Vision)?)
        } else {
            (
                Encoder::load(&dir.join(format!("tuwen-{name}-text.gguf")), Towers::Text)?,
                Encoder::load(&dir.join(format!("tuwen-{name}-vision.gguf")), Towers::Vision)?,
            )
        };
        // Warm up, then latency (batch 1) and throughput (batched).
        text.embed_texts(&captions[..4])?;
        let t1 = median((0..20).map(|i| time(|| text.embed_text(captions[i]).unwrap()).1 * 1e3).collect());
        let (_, t32) = time(|| text.embed_texts(&captions[..64]).unwrap());
        vision.embed_pixels(&pixels[..1])?;
        let i1 = median((0..5).map(|i| time(|| vision.embed_pixels(&pixels[i..i + 1]).unwrap()).1 * 1e3).collect());
        let (_, i8) = time(|| vision.embed_pixels(&pixels[..16]).unwrap());
        let texts = text.embed_texts(&captions)?;
        let images = vision.embed_pixels(&pixels[..n_images])?;
        let (fid, agree) = match &reference {
            None => ("—".to_string() + " | —", "—".to_string()),
            Some((rt, ri)) => {
                let ct: Vec<f32> = texts.iter().zip(rt).take(200).map(|(a, b)| cosine(a, b)).collect();
                let ci: Vec<f32> = images.iter().zip(ri).take(50).map(|(a, b)| cosine(a, b)).collect();
                let stats = |c: &[f32]| format!("{:.5} / {:.5}", c.iter().sum::<f32>() / c.len() as f32, c.iter().cloned().fold(1.0, f32::min));
                let overlap = |a: &[Vec<usize>], b: &[Vec<usize>]| {
                    a.iter().zip(b).map(|(x, y)| x.iter().filter(|i| y.contains(i)).count()).sum::<usize>() as f64 / (5 * a.len()) as f64
                };
                let agree = if quick {
                    "(quick)".into()
                } else {
                    format!("{:.1}% / {:.1}%", 100.0 * overlap(&top5(&texts, &images), &top5(&rt[..], &ri[..])),
                        100.0 * overlap(&top5(&images, &texts), &top5(&ri[..], &rt[..])))
                };
                (format!("{} | {}", stats(&ct), stats(&ci)), agree)
            }
        };
        println!(
            "| {name} | {:.1} MB | {fid} | {agree} | {t1:.1} | {:.1} | {i1:.0} | {:.2} |",
            *size as f64 / 1e6, 64.0 / t32, 16.0 / i8
        );
        if reference.is_none() {
            reference = Some((texts, images));
        }
    }
    Ok(())
}
