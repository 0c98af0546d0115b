//! Bad input gets a clear error naming the file and what is wrong, never a panic.

use crate::common;
use common::*;
use std::path::Path;
use std::process::Command;
use tuwen::{Encoder, Towers};

fn copy_model(to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in ["config.json", "vocab.txt", "model.safetensors", "preprocessor_config.json"] {
        std::fs::copy(tiny_model().join(f), to.join(f)).unwrap();
    }
}

fn load_err(dir: &Path) -> String {
    format!("{:#}", Encoder::from_dir(dir, Towers::Both).err().expect("loading should fail"))
}

#[test]
fn broken_images_are_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let encoder = Encoder::from_dir(&tiny_model(), Towers::Vision).unwrap();
    let good = std::fs::read(fixtures().join("images/rgb.jpg")).unwrap();
    let cases: [(&str, &[u8], &str); 4] = [
        ("empty.jpg", b"", "empty"),
        ("truncated.jpg", &good[..good.len() / 3], "cannot decode"),
        ("notes.txt", "这不是图片".as_bytes(), "not an image"),
        ("header-only.png", b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", "cannot decode"),
    ];
    for (name, bytes, why) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let err = format!("{:#}", encoder.embed_image_file(&path).unwrap_err());
        assert!(err.contains(name) && err.contains(why), "{name}: {err}");
        // The CLI reports it and exits 1 (a panic would exit 101).
        let out = Command::new(env!("CARGO_BIN_EXE_tuwen"))
            .args(["embed", "--model", tiny_model().to_str().unwrap(), "--image", path.to_str().unwrap()])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&out.stderr).contains(name));
    }
    let missing = dir.path().join("missing.jpg");
    assert!(format!("{:#}", encoder.embed_image_file(&missing).unwrap_err()).contains("missing.jpg"));
}

#[test]
fn missing_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    assert!(load_err(&dir.path().join("nope")).contains("not a directory"));
    copy_model(dir.path());
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let err = load_err(dir.path());
    assert!(err.contains("no weights") && err.contains("model.safetensors"), "{err}");
    std::fs::remove_file(dir.path().join("vocab.txt")).unwrap();
    assert!(load_err(dir.path()).contains("vocab.txt"));
    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    assert!(load_err(dir.path()).contains("config.json: missing"));
}

#[test]
fn corrupt_weights_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    copy_model(dir.path());
    let weights = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let err = load_err(dir.path());
    assert!(err.contains("model.safetensors"), "{err}");
    std::fs::write(&weights, b"").unwrap();
    assert!(load_err(dir.path()).contains("model.safetensors"));
    // A checkpoint lacking a tensor names the tensor.
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let kept: Vec<_> = st.tensors().into_iter().filter(|(n, _)| n != "visual_projection.weight").collect();
    safetensors::serialize_to_file(kept, None, &weights).unwrap();
    let err = load_err(dir.path());
    assert!(err.contains("visual_projection.weight"), "{err}");
    // …but the text tower alone still loads from it.
    assert!(Encoder::from_dir(dir.path(), Towers::Text).is_ok());
}

#[test]
fn config_that_disagrees_with_the_weights_names_tensor_and_file() {
    let dir = tempfile::tempdir().unwrap();
    copy_model(dir.path());
    let path = dir.path().join("config.json");
    let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config["vision_config"]["intermediate_size"] = 48.into();
    std::fs::write(&path, config.to_string()).unwrap();
    let err = load_err(dir.path());
    assert!(err.contains("model.safetensors") && err.contains("shape mismatch") && err.contains("fc1"), "{err}");

    config["vision_config"]["intermediate_size"] = 64.into();
    config["text_config"]["hidden_size"] = 30.into();
    std::fs::write(&path, config.to_string()).unwrap();
    let err = load_err(dir.path());
    assert!(err.contains("config.json") && err.contains("text_config.hidden_size"), "{err}");

    std::fs::write(&path, "{ not json").unwrap();
    let err = load_err(dir.path());
    assert!(err.contains("config.json") && err.contains("not a valid"), "{err}");
}

#[test]
fn vocab_larger_than_the_embedding_table_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    copy_model(dir.path());
    let mut vocab = std::fs::read_to_string(dir.path().join("vocab.txt")).unwrap();
    vocab.push_str("额外1\n额外2\n");
    std::fs::write(dir.path().join("vocab.txt"), vocab).unwrap();
    let err = load_err(dir.path());
    assert!(err.contains("vocab.txt") && err.contains("vocab_size"), "{err}");
}
