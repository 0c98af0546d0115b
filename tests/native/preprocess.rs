//! Preprocessing against the HF processor on the real Teddy sample (../shared): every colour mode and
//! size present there. Pixel tensors of one small and one large image per mode, and the fixture model's
//! embedding of all 300 images, come from scripts/make_fixtures.py.

use crate::common;
use common::*;
use std::collections::HashMap;
use tuwen::preprocess::preprocess;
use tuwen::{Encoder, Towers};

#[test]
fn sample_images_match_the_hf_processor() {
    let Some(shared) = shared("data/teddy2024-sample/ImageData") else { return };
    let images = shared.join("data/teddy2024-sample/ImageData");
    let encoder = Encoder::from_dir(&tiny_model(), Towers::Vision).unwrap();
    let config = encoder.preprocess_config().clone();

    let pixels = candle_core::safetensors::load(fixtures().join("sample_pixels.safetensors"), &candle_core::Device::Cpu)
        .unwrap();
    let mut worst = 0f32;
    for (name, tensor) in &pixels {
        let reference = tensor.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let ours = preprocess(&std::fs::read(images.join(name)).unwrap(), name, &config).unwrap();
        let d = max_abs_diff(&ours.data, &reference);
        let mean = ours.data.iter().zip(&reference).map(|(a, b)| (a - b).abs()).sum::<f32>() / reference.len() as f32;
        eprintln!("{name}: pixels max |Δ| {d:.4}, mean |Δ| {mean:.5}");
        // One step of 8-bit rounding after normalisation is 1/255/0.26 ≈ 0.015.
        assert!(mean < 0.01, "{name}: mean |Δ| {mean}");
        worst = worst.max(d);
    }
    eprintln!("pixel tensors vs HF: max |Δ| {worst:.4} over {} images", pixels.len());

    let reference: HashMap<String, Vec<f32>> =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("sample_reference.json")).unwrap()).unwrap();
    let captions = sample_captions(&shared);
    let mut ours = Vec::new();
    let (mut min_cos, mut sum_cos) = (1f32, 0f32);
    for (id, _) in &captions {
        let e = encoder.embed_image_file(&images.join(id)).unwrap();
        let cos = cosine(&e, &reference[id]);
        assert!(cos >= 0.999, "{id}: cosine {cos} against the HF processor + model");
        min_cos = min_cos.min(cos);
        sum_cos += cos;
        ours.push(e);
    }
    eprintln!("embeddings vs HF on {} sample images: min cosine {min_cos:.6}, mean {:.6}",
        ours.len(), sum_cos / ours.len() as f32);
    // The check has teeth only if the fixture model tells images apart.
    let n = ours.len();
    let mean_other = (0..n).map(|i| cosine(&ours[i], &ours[(i + 1) % n])).sum::<f32>() / n as f32;
    assert!(mean_other < 0.95, "fixture model is input-blind: neighbouring images have cosine {mean_other}");
}
