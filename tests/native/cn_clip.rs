//! Checkpoints of the official Chinese-CLIP code (`cn_clip`) against cn_clip's own `tokenize`,
//! `image_transform`, `encode_text` and `encode_image` (scripts/make_cn_clip_fixtures.py: a fine-tuning
//! checkpoint with `module.` keys and optimizer state, an fp16 one without `module.`, an RN50, bad files).
//! `TUWEN_CN_CLIP_FIXTURES=DIR` runs the same checks on the script's `--released` output (the five
//! architectures at their released widths), which is too large to commit.

use crate::common;
use common::*;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::PathBuf;
use tuwen::config::{PreprocessConfig, Recipe};
use tuwen::preprocess::{preprocess, Pixels};
use tuwen::{Encoder, Towers};

#[derive(Deserialize)]
struct Manifest {
    texts: Vec<String>,
    images: Vec<String>,
    checkpoints: Vec<Checkpoint>,
    bad: HashMap<String, String>,
}

#[derive(Deserialize)]
struct Checkpoint {
    file: String,
    architecture: String,
    token_ids: Vec<Vec<u32>>,
    text_embeddings: Vec<Vec<f32>>,
    image_embeddings: Option<HashMap<String, Vec<f32>>>,
    image_size: usize,
}

fn dir() -> PathBuf {
    std::env::var_os("TUWEN_CN_CLIP_FIXTURES").map(PathBuf::from).unwrap_or_else(|| fixtures().join("cn_clip"))
}

fn manifest() -> Manifest {
    serde_json::from_str(&std::fs::read_to_string(dir().join("manifest.json")).unwrap()).unwrap()
}

/// A fixture image's file: generated ones beside the manifest, `sample:ID` from ../shared (None without it).
fn image_file(key: &str) -> Option<PathBuf> {
    match key.strip_prefix("sample:") {
        Some(id) => Some(shared("data/teddy2024-sample/ImageData")?.join("data/teddy2024-sample/ImageData").join(id)),
        None => Some(dir().join("images").join(key)),
    }
}

/// cn_clip's `image_transform` output per image, for one resolution.
fn reference_pixels(size: usize) -> HashMap<String, Vec<f32>> {
    let path = dir().join(format!("pixels-{size}.safetensors"));
    candle_core::safetensors::load(path, &candle_core::Device::Cpu)
        .unwrap()
        .into_iter()
        .map(|(k, t)| (k, t.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect()
}

fn is_resnet(c: &Checkpoint) -> bool {
    c.architecture.starts_with("RN50")
}

#[test]
fn checkpoints_match_cn_clip_within_1e_4() {
    let m = manifest();
    for c in &m.checkpoints {
        let path = dir().join(&c.file);
        let towers = if is_resnet(c) { Towers::Text } else { Towers::Both };
        let encoder = Encoder::load(&path, towers).unwrap_or_else(|e| panic!("{}: {e:#}", c.file));
        assert!(encoder.info.random_weights.as_deref().is_some_and(|l| l.contains("random weights")), "{}: unlabelled", c.file);
        assert_eq!(encoder.preprocess_config().recipe, Recipe::CnClip);
        let tokenizer = encoder.tokenizer().unwrap();
        for (text, ids) in m.texts.iter().zip(&c.token_ids) {
            assert_eq!(&tokenizer.encode(text).unwrap(), ids, "{}: tokens of {text:?}", c.file);
        }
        let ours = encoder.embed_texts(&m.texts).unwrap();
        let mut worst = 0f32;
        for ((text, a), b) in m.texts.iter().zip(&ours).zip(&c.text_embeddings) {
            let d = max_abs_diff(a, b);
            assert!(d <= 1e-4, "{}: text {text:?} differs from cn_clip's encode_text by {d}", c.file);
            worst = worst.max(d);
        }
        let cat = m.texts.iter().position(|t| t == "一只猫坐在窗台上晒太阳").expect("a caption among the texts");
        let texts_apart = cosine(&ours[cat], &ours[cat + 1]);
        assert!(texts_apart < 0.99, "{}: the model is input-blind (cosine {texts_apart})", c.file);
        eprintln!("{} ({}): texts max |Δ| {worst:.2e}", c.file, c.architecture);

        if let (Some(images), false) = (&c.image_embeddings, is_resnet(c)) {
            let pixels = reference_pixels(c.image_size);
            let mut worst = 0f32;
            for (key, want) in images {
                let px = Pixels { size: c.image_size, data: pixels[key].clone() };
                let got = encoder.embed_pixels(&[px]).unwrap().remove(0);
                let d = max_abs_diff(&got, want);
                assert!(d <= 1e-4, "{}: image {key} differs from cn_clip's encode_image by {d}", c.file);
                worst = worst.max(d);
            }
            eprintln!("{} ({}): images (cn_clip's pixels) max |Δ| {worst:.2e} over {}", c.file, c.architecture, images.len());
        }
        if is_resnet(c) {
            let err = format!("{:#}", Encoder::load(&path, Towers::Both).err().expect("RN50's image tower is refused"));
            assert!(err.contains("ResNet-50") && err.contains("text tower does"), "{err}");
        }
    }
}

/// The fp16 file is the fp32 fine-tuning checkpoint's weights rounded: its embeddings must stay that close.
#[test]
fn an_fp16_checkpoint_is_its_fp32_weights_rounded() {
    let m = manifest();
    let (Some(full), Some(half)) = (
        m.checkpoints.iter().find(|c| c.file == "vit-finetuned.pt"),
        m.checkpoints.iter().find(|c| c.file == "vit-fp16.pt"),
    ) else {
        eprintln!("SKIPPED: {} has no vit-finetuned.pt / vit-fp16.pt pair", dir().display());
        return;
    };
    let a = Encoder::load(&dir().join(&full.file), Towers::Text).unwrap().embed_texts(&m.texts).unwrap();
    let b = Encoder::load(&dir().join(&half.file), Towers::Text).unwrap().embed_texts(&m.texts).unwrap();
    for (x, y) in a.iter().zip(&b) {
        assert!(cosine(x, y) > 0.999, "fp16 vs fp32: cosine {}", cosine(x, y));
    }
}

#[test]
fn cn_clip_preprocessing_matches_image_transform() {
    let m = manifest();
    let Some(c) = m.checkpoints.iter().find(|c| !is_resnet(c) && c.image_embeddings.is_some()) else { return };
    let encoder = Encoder::load(&dir().join(&c.file), Towers::Vision).unwrap();
    let config = encoder.preprocess_config().clone();
    let reference = reference_pixels(c.image_size);
    let transformers = PreprocessConfig { recipe: Recipe::Transformers, ..config.clone() };
    // One step of 8-bit rounding after normalisation.
    let level = 1.0 / 255.0 / 0.26;
    let mut recipe_matters = Vec::new();
    for key in &m.images {
        let Some(path) = image_file(key) else { continue };
        let bytes = std::fs::read(&path).unwrap();
        let ours = preprocess(&bytes, key, &config).unwrap();
        let want = &reference[key];
        let d = max_abs_diff(&ours.data, want);
        let mean = ours.data.iter().zip(want).map(|(a, b)| (a - b).abs()).sum::<f32>() / want.len() as f32;
        eprintln!("{key}: pixels vs cn_clip max |Δ| {d:.4}, mean {mean:.5}");
        let lossless = !key.ends_with(".jpg") && !key.starts_with("sample:");
        if lossless {
            // PNG and GIF decode exactly, and the resize is PIL's own arithmetic: the same pixels.
            assert!(d <= 1e-6, "{key}: max |Δ| {d}, mean {mean} against image_transform");
        } else {
            // JPEG: libjpeg (PIL) and the image crate's decoder round their IDCT differently.
            assert!(mean < 0.01, "{key}: mean |Δ| {mean} against image_transform");
        }
        let e = encoder.embed_image_file(&path).unwrap();
        let cos = cosine(&e, &c.image_embeddings.as_ref().unwrap()[key]);
        assert!(cos >= 0.999, "{key}: cosine {cos} against cn_clip end to end");
        let other = preprocess(&bytes, key, &transformers).unwrap();
        recipe_matters.push((key.clone(), max_abs_diff(&other.data, want)));
    }
    // The recipes differ where PIL's order matters (alpha, palette), so the check above has teeth.
    for key in ["rgba.png", "p.png", "p-transparent.png"] {
        if let Some((_, d)) = recipe_matters.iter().find(|(k, _)| k == key) {
            assert!(*d > 3.0 * level, "{key}: the transformers recipe is as close to cn_clip ({d}) as cn_clip's");
        }
    }
}

#[test]
fn a_quantized_cn_clip_model_keeps_its_recipe() {
    let m = manifest();
    let Some(c) = m.checkpoints.iter().find(|c| !is_resnet(c) && c.image_embeddings.is_some()) else { return };
    let tmp = tempfile::tempdir().unwrap();
    let gguf = tmp.path().join("model.gguf");
    let source = dir().join(&c.file);
    tuwen::quantize::quantize_model(&source, "q8_0".parse().unwrap(), Towers::Both, &gguf).unwrap();
    let f32_model = Encoder::load(&source, Towers::Both).unwrap();
    let q = Encoder::load(&gguf, Towers::Both).unwrap();
    assert_eq!(q.preprocess_config(), f32_model.preprocess_config());
    assert!(q.info.random_weights.is_some(), "the random-weights label is lost in the GGUF");
    // Same fingerprint: bundles made from either are the same model's.
    assert_eq!(q.stamp().unwrap().fingerprint, f32_model.stamp().unwrap().fingerprint);
    let tokenizer = q.tokenizer().unwrap();
    let mut cosines = Vec::new();
    for (text, ids) in m.texts.iter().zip(&c.token_ids) {
        assert_eq!(&tokenizer.encode(text).unwrap(), ids, "GGUF tokens of {text:?}");
        cosines.push(cosine(&q.embed_text(text).unwrap(), &f32_model.embed_text(text).unwrap()));
    }
    for key in &m.images {
        let Some(path) = image_file(key) else { continue };
        cosines.push(cosine(&q.embed_image_file(&path).unwrap(), &f32_model.embed_image_file(&path).unwrap()));
    }
    assert!(meets_q8_bounds(fidelity_of(&cosines)), "q8_0 vs f32 cosines {:?}", fidelity_of(&cosines));
}

fn fidelity_of(cosines: &[f32]) -> (f32, f32) {
    (cosines.iter().sum::<f32>() / cosines.len() as f32, cosines.iter().cloned().fold(1.0, f32::min))
}

#[test]
fn bad_checkpoints_are_refused_with_the_reason() {
    let m = manifest();
    if m.bad.is_empty() {
        return;
    }
    let cwd = std::env::current_dir().unwrap();
    for (file, expected) in &m.bad {
        let path = dir().join("bad").join(file);
        let err = format!("{:#}", Encoder::load(&path, Towers::Both).err().unwrap_or_else(|| panic!("{file} loaded")));
        assert!(err.contains(expected) && err.contains(file.as_str()), "{file}: {err}");
        assert!(!cwd.join("tuwen-pickle-ran").exists(), "{file}: the pickle's code ran");
    }
    // Truncated (an interrupted download) and damaged in the middle.
    let good = std::fs::read(dir().join(&m.checkpoints[0].file)).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let cut = tmp.path().join("cut.pt");
    std::fs::write(&cut, &good[..good.len() / 2]).unwrap();
    let err = format!("{:#}", Encoder::load(&cut, Towers::Both).err().unwrap());
    assert!(err.contains("cut.pt") && err.contains("damaged or truncated"), "{err}");
    // A directory holding a checkpoint is not a model directory: the message points at the file.
    let holder = tmp.path().join("holder");
    std::fs::create_dir(&holder).unwrap();
    std::fs::write(holder.join("epoch_latest.pt"), &good).unwrap();
    let err = format!("{:#}", Encoder::load(&holder, Towers::Both).err().unwrap());
    assert!(err.contains("epoch_latest.pt") && err.contains("--model"), "{err}");
}
