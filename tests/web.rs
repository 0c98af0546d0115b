//! wasm32 in headless Chromium (wasm-bindgen-test): the tiny fixture loaded from bytes gives the
//! embeddings the native build gives (tests/fixtures/tiny/native.json, kept current by tests/parity.rs).
#![cfg(target_arch = "wasm32")]

use serde::Deserialize;
use tuwen::web::WasmEncoder;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

const CONFIG: &[u8] = include_bytes!("fixtures/tiny/config.json");
const VOCAB: &[u8] = include_bytes!("fixtures/tiny/vocab.txt");
const WEIGHTS: &[u8] = include_bytes!("fixtures/tiny/model.safetensors");
const NATIVE: &str = include_str!("fixtures/tiny/native.json");

#[derive(Deserialize)]
struct Native {
    f32: Embeddings,
    q8_0: Embeddings,
}

#[derive(Deserialize)]
struct Embeddings {
    texts: Vec<(String, Vec<f32>)>,
    images: Vec<(String, Vec<f32>)>,
}

/// Checks every embedding: max |Δ| ≤ `tolerance` and cosine ≥ `min_cosine`; logs the worst values.
fn check(encoder: &WasmEncoder, expected: &Embeddings, tolerance: f32, min_cosine: f32, what: &str) {
    let (mut worst_d, mut worst_cos) = (0f32, 1f32);
    let mut compare = |ours: Vec<f32>, e: &[f32], input: &str| {
        let d = max_abs_diff(&ours, e);
        let cos: f32 = ours.iter().zip(e).map(|(a, b)| a * b).sum();
        assert!(d <= tolerance && cos >= min_cosine, "{what} {input}: wasm vs native max |Δ| = {d:e}, cosine {cos}");
        worst_d = worst_d.max(d);
        worst_cos = worst_cos.min(cos);
    };
    for (text, e) in &expected.texts {
        compare(encoder.embed_text(text).map_err(|_| "embed_text failed").unwrap(), e, text);
    }
    for (name, e) in &expected.images {
        compare(encoder.embed_image(image_bytes(name), name).map_err(|_| "embed_image failed").unwrap(), e, name);
    }
    web_sys::console::log_1(&format!("{what}: wasm vs native max |Δ| {worst_d:e}, min cosine {worst_cos}").into());
}

fn image_bytes(name: &str) -> &'static [u8] {
    match name {
        "rgb.jpg" => include_bytes!("fixtures/images/rgb.jpg"),
        "rgba.png" => include_bytes!("fixtures/images/rgba.png"),
        "gray.png" => include_bytes!("fixtures/images/gray.png"),
        "palette.gif" => include_bytes!("fixtures/images/palette.gif"),
        "rgb.webp" => include_bytes!("fixtures/images/rgb.webp"),
        other => panic!("no embedded fixture image {other}"),
    }
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[wasm_bindgen_test]
fn wasm_embeddings_equal_native() {
    let native: Native = serde_json::from_str(NATIVE).unwrap();
    let encoder = WasmEncoder::new(CONFIG, VOCAB, WEIGHTS.to_vec(), "both").map_err(|_| "load failed").unwrap();
    check(&encoder, &native.f32, 1e-5, 0.99999, "f32");
}

/// The q8_0 GGUF is made in the browser from the same bytes, then run with the simd128 q8_0 kernel.
#[wasm_bindgen_test]
fn wasm_quantized_embeddings_equal_native() {
    let native: Native = serde_json::from_str(NATIVE).unwrap();
    let gguf = tuwen::quantize::quantize_safetensors_bytes(
        std::str::from_utf8(CONFIG).unwrap(),
        std::str::from_utf8(VOCAB).unwrap(),
        WEIGHTS,
        "q8_0".parse().unwrap(),
        tuwen::Towers::Both,
    )
    .unwrap();
    let encoder = WasmEncoder::from_gguf(&gguf, "both").map_err(|_| "load failed").unwrap();
    // q8_0 matmuls quantize their activations to int8 too: where native (AVX) and wasm (simd128) f32
    // code differ in the last bit, an activation can round to the neighbouring int8 and the difference
    // grows through the layers, most on this deliberately wide-weighted fixture.
    check(&encoder, &native.q8_0, 1e-2, 0.9995, "q8_0");
    let text_only = WasmEncoder::from_gguf(&gguf, "text").map_err(|_| "load failed").unwrap();
    assert!(text_only.embed_image(image_bytes("rgb.jpg"), "rgb.jpg").is_err());
    assert!(WasmEncoder::from_gguf(&gguf[..gguf.len() / 2], "both").is_err(), "a truncated GGUF is refused");
}

/// The simd128 q8_0 kernel against q8_0 arithmetic done the obvious way, on shapes that are not multiples of
/// the kernel's tiles and row groups.
#[wasm_bindgen_test]
fn wasm_q8_kernel_matches_reference() {
    use tuwen::model::q8::{Q8Matrix, BLOCK};
    let mut seed = 7u64;
    let mut random = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((seed >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
            })
            .collect()
    };
    for (rows, out_dim, in_dim) in [(1, 16, 32), (3, 5, 64), (6, 37, 96), (52, 48, 256)] {
        let w = Q8Matrix::quantize(out_dim, in_dim, &random(out_dim * in_dim));
        let (x, bias) = (random(rows * in_dim), random(out_dim));
        let got = w.matmul(&x, rows, Some(&bias));
        let wf = w.dequantize();
        // Activations quantized per 32-block: scale max|x|/127, round to nearest.
        let xq: Vec<f32> = x
            .chunks(BLOCK)
            .flat_map(|b| {
                let d = b.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
                b.iter().map(move |v| if d == 0.0 { 0.0 } else { (v / d).round_ties_even() * d })
            })
            .collect();
        for r in 0..rows {
            for c in 0..out_dim {
                let want: f32 = (0..in_dim).map(|k| xq[r * in_dim + k] * wf[c * in_dim + k]).sum::<f32>() + bias[c];
                let g = got[r * out_dim + c];
                assert!((g - want).abs() <= 1e-3 * (1.0 + want.abs()), "[{rows}x{in_dim}]·[{out_dim}] ({r},{c}): {g} vs {want}");
            }
        }
    }
}

#[wasm_bindgen_test]
fn wasm_reports_bad_input_as_errors() {
    assert!(WasmEncoder::new(b"{", VOCAB, WEIGHTS.to_vec(), "both").is_err());
    assert!(WasmEncoder::new(CONFIG, VOCAB, WEIGHTS[..100].to_vec(), "text").is_err());
    let encoder = WasmEncoder::new(CONFIG, VOCAB, WEIGHTS.to_vec(), "vision").map_err(|_| "load").unwrap();
    assert!(encoder.embed_image(b"not an image", "x.jpg").is_err());
    assert!(encoder.embed_text("文本").is_err(), "the text tower was not loaded");
}
