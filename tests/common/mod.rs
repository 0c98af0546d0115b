//! Helpers shared by the integration tests: fixture paths, the optional ../shared data, vector maths.
#![allow(dead_code)]

pub mod cli;
pub mod ops;

use serde::Deserialize;
use std::path::{Path, PathBuf};

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn tiny_model() -> PathBuf {
    fixtures().join("tiny")
}

/// `../shared` beside the checkout, or `None` after printing why the calling test skips.
pub fn shared(what: &str) -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared");
    if dir.join(what).exists() {
        Some(dir)
    } else {
        eprintln!("SKIPPED: {} not found (../shared is absent beside this checkout)", dir.join(what).display());
        None
    }
}

#[derive(Deserialize)]
pub struct Reference {
    pub texts: Vec<ReferenceText>,
    pub images: Vec<ReferenceImage>,
}

#[derive(Deserialize)]
pub struct ReferenceText {
    pub text: String,
    pub ids: Vec<u32>,
    pub embedding: Vec<f32>,
}

#[derive(Deserialize)]
pub struct ReferenceImage {
    pub file: String,
    pub embedding: Vec<f32>,
}

pub fn reference() -> Reference {
    serde_json::from_str(&std::fs::read_to_string(tiny_model().join("reference.json")).unwrap()).unwrap()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "embedding lengths differ");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

/// `image_id,caption` rows of the sample's ImageWordData.csv (quoted newlines, BOM and CRLF handled by csv).
pub fn sample_captions(shared: &Path) -> Vec<(String, String)> {
    let path = shared.join("data/teddy2024-sample/ImageWordData.csv");
    let mut reader = csv::Reader::from_path(&path).unwrap();
    reader.records().map(|r| r.unwrap()).map(|r| (r[0].trim_start_matches('\u{feff}').to_string(), r[1].to_string())).collect()
}

/// What q8_0 guarantees against its f32 model on the tiny fixture, on every machine: cosine of each input's
/// embedding ≥ `Q8_MIN_COSINE`, and their mean ≥ `Q8_MEAN_COSINE`. Not an exact comparison between two q8_0
/// runs: activations are re-quantized to int8 before every product, so a 1-ulp difference upstream (another
/// backend's summation order, another CPU's libm) can flip an int8 step. tests/q8_fidelity.rs proves these
/// bounds still catch a wrong kernel.
pub const Q8_MIN_COSINE: f32 = 0.995;
pub const Q8_MEAN_COSINE: f32 = 0.999;

/// (mean, min) cosine of paired embeddings.
pub fn fidelity(a: &[Vec<f32>], b: &[Vec<f32>]) -> (f32, f32) {
    assert_eq!(a.len(), b.len());
    let cosines: Vec<f32> = a.iter().zip(b).map(|(x, y)| cosine(x, y)).collect();
    (cosines.iter().sum::<f32>() / cosines.len() as f32, cosines.iter().cloned().fold(1.0, f32::min))
}

pub fn meets_q8_bounds((mean, min): (f32, f32)) -> bool {
    mean >= Q8_MEAN_COSINE && min >= Q8_MIN_COSINE
}

/// The fixture's texts and images (every colour mode) embedded by `encoder`, texts batched.
pub fn fixture_embeddings(encoder: &tuwen::Encoder) -> Vec<Vec<f32>> {
    let reference = reference();
    let texts: Vec<&str> = reference.texts.iter().map(|t| t.text.as_str()).collect();
    let mut out = encoder.embed_texts(&texts).unwrap();
    for i in &reference.images {
        out.push(encoder.embed_image_file(&fixtures().join("images").join(&i.file)).unwrap());
    }
    out
}

/// The tiny fixture quantized to q8_0 in memory (both towers).
pub fn tiny_q8_0_gguf() -> Vec<u8> {
    let dir = tiny_model();
    let read = |f: &str| std::fs::read(dir.join(f)).unwrap();
    tuwen::weights::gguf::quantize_safetensors_bytes(
        &String::from_utf8(read("config.json")).unwrap(),
        &String::from_utf8(read("vocab.txt")).unwrap(),
        &read("model.safetensors"),
        "q8_0".parse().unwrap(),
        tuwen::Towers::Both,
    )
    .unwrap()
}
