//! Helpers shared by the integration tests: fixture paths, the optional ../shared data, vector maths.
#![allow(dead_code)]

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
