//! The `tuwen` command line: the `embed` output contract, `init-random`, `fetch-model` offline.

use crate::common;
use common::*;
use std::process::{Command, Output};

fn tuwen(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tuwen")).args(args).env("HF_ENDPOINT", "http://tuwen-offline.invalid").output().unwrap()
}

fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    assert!(out.status.success(), "tuwen failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout.clone()).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn embed_prints_one_json_object_per_input_in_order() {
    let model = tiny_model();
    let image = fixtures().join("images/rgb.png");
    let out = tuwen(&[
        "embed", "--model", model.to_str().unwrap(), "--text", "一只猫", "--image", image.to_str().unwrap(), "--text", "海边",
    ]);
    let text = String::from_utf8(out.stdout.clone()).unwrap();
    assert!(text.starts_with("{\"kind\":\"text\",\"input\":\"一只猫\",\"embedding\":["), "{text}");
    let lines = json_lines(&out);
    let kinds: Vec<_> = lines.iter().map(|l| (l["kind"].as_str().unwrap(), l["input"].as_str().unwrap())).collect();
    assert_eq!(kinds, [("text", "一只猫"), ("image", image.to_str().unwrap()), ("text", "海边")]);
    let encoder = tuwen::Encoder::from_dir(&model, tuwen::Towers::Both).unwrap();
    for line in &lines {
        let e: Vec<f32> = serde_json::from_value(line["embedding"].clone()).unwrap();
        assert_eq!(e.len(), 32);
        let norm: f32 = e.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "not L2-normalised: {norm}");
    }
    let cat: Vec<f32> = serde_json::from_value(lines[0]["embedding"].clone()).unwrap();
    assert!(max_abs_diff(&cat, &encoder.embed_text("一只猫").unwrap()) < 1e-6);
}

#[test]
fn init_random_writes_the_hf_layout_and_is_labelled() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = tiny_model();
    let args = |out: &str, seed: &str| {
        tuwen(&[
            "init-random", "--config", tiny.join("config.json").to_str().unwrap(), "--vocab",
            tiny.join("vocab.txt").to_str().unwrap(), "--out", out, "--seed", seed,
        ])
    };
    let (a, b, c) = (dir.path().join("a"), dir.path().join("b"), dir.path().join("c"));
    for (out, seed) in [(&a, "7"), (&b, "7"), (&c, "8")] {
        let o = args(out.to_str().unwrap(), seed);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(String::from_utf8_lossy(&o.stderr).contains("RANDOM"));
    }
    // Tensor names and bytes (the header's metadata map has no fixed order, so files are not compared).
    let tensors = |d: &std::path::Path| {
        let bytes = std::fs::read(d.join("model.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut v: Vec<(String, Vec<u8>)> = st.tensors().into_iter().map(|(n, t)| (n, t.data().to_vec())).collect();
        v.sort();
        v
    };
    assert!(tensors(&a) == tensors(&b), "the same seed must give the same weights");
    assert!(tensors(&a) != tensors(&c), "another seed must give other weights");

    // Exactly the tensor names and shapes transformers saved for the same config.
    let names = |p: &std::path::Path| {
        let bytes = std::fs::read(p).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut v: Vec<_> = st.tensors().into_iter().map(|(n, t)| (n, t.shape().to_vec())).collect();
        v.sort();
        v
    };
    assert_eq!(names(&a.join("model.safetensors")), names(&tiny.join("model.safetensors")));

    let out = tuwen(&["embed", "--model", a.to_str().unwrap(), "--text", "猫"]);
    assert_eq!(json_lines(&out).len(), 1);
    assert!(String::from_utf8_lossy(&out.stderr).contains("RANDOM weights"), "the CLI must say the weights are random");
}

#[test]
fn init_random_full_size_from_the_released_config() {
    let Some(shared) = shared("chinese-clip-vit-base-patch16/config.json") else { return };
    let config = tuwen::config::ClipConfig::from_file(&shared.join("chinese-clip-vit-base-patch16/config.json")).unwrap();
    let tensors = tuwen::model::random::random_checkpoint(&config, 0).unwrap();
    let shape = |n: &str| tensors[n].dims().to_vec();
    assert_eq!(shape("text_model.embeddings.word_embeddings.weight"), [21128, 768]);
    assert_eq!(shape("vision_model.embeddings.patch_embedding.weight"), [768, 3, 16, 16]);
    assert_eq!(shape("vision_model.embeddings.position_embedding.weight"), [197, 768]);
    assert_eq!(shape("text_projection.weight"), [512, 768]);
    assert_eq!(shape("visual_projection.weight"), [512, 768]);
    assert!(tensors.contains_key("text_model.encoder.layer.11.output.LayerNorm.bias"));
    assert!(tensors.contains_key("vision_model.encoder.layers.11.mlp.fc2.weight"));
    let params: usize = tensors.values().map(|t| t.elem_count()).sum();
    // ViT-B/16 (~86M) + RoBERTa-wwm-base (~102M) + projections.
    assert!((185_000_000..=190_000_000).contains(&params), "{params} parameters");
}

#[test]
fn fetch_model_offline_fails_at_once_with_advice() {
    let dir = tempfile::tempdir().unwrap();
    let start = std::time::Instant::now();
    let out = tuwen(&["fetch-model", "--out", dir.path().join("m").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach http://tuwen-offline.invalid") && err.contains("--model DIR"), "{err}");
    assert!(start.elapsed().as_secs() < 30, "took {:?}", start.elapsed());
}

/// `--backend`: each choice says on stderr where the encoders run and why; `gpu` (lavapipe in CI) gives the
/// CPU's embeddings; an unknown backend is refused by name.
#[test]
fn backend_choice_is_logged_and_gpu_matches_cpu() {
    let model = tiny_model();
    let run = |backend: &str| tuwen(&["--backend", backend, "embed", "--model", model.to_str().unwrap(), "--text", "一只猫"]);
    let cpu = run("cpu");
    assert!(String::from_utf8_lossy(&cpu.stderr).contains("encoders run on the cpu: chosen (--backend cpu)"));
    let cpu: Vec<f32> = serde_json::from_value(json_lines(&cpu)[0]["embedding"].clone()).unwrap();
    let auto = run("auto");
    let log = String::from_utf8_lossy(&auto.stderr).to_string();
    assert!(log.contains("encoders run on the gpu: ") || log.contains("encoders run on the cpu: "), "{log}");
    let gpu = run("gpu");
    let log = String::from_utf8_lossy(&gpu.stderr).to_string();
    if gpu.status.success() {
        assert!(log.contains("encoders run on the gpu: "), "{log}");
        let gpu: Vec<f32> = serde_json::from_value(json_lines(&gpu)[0]["embedding"].clone()).unwrap();
        assert!(max_abs_diff(&gpu, &cpu) < 1e-5 && cosine(&gpu, &cpu) > 0.9999);
    } else {
        assert!(std::env::var_os("CI").is_none(), "CI must have a GPU adapter (lavapipe): {log}");
        assert!(log.contains("no GPU adapter"), "{log}");
    }
    let bad = run("tpu");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("\"auto\", \"cpu\" or \"gpu\", not \"tpu\""));
}
