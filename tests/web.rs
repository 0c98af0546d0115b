//! wasm32 in headless Chromium (wasm-bindgen-test): the tiny fixture loaded from bytes gives the
//! embeddings the native build gives (tests/fixtures/tiny/native.json, kept current by tests/parity.rs).
//! Run on all four builds (build.sh): SIMD128, relaxed SIMD, threads and threads with relaxed SIMD, the
//! threaded ones' products on a pool of Web Workers started by each test (`threads`); the threaded builds'
//! tests run in a dedicated worker, as the page's do, since a thread waiting for the pool may block there
//! and not on a page's main thread.
#![cfg(target_arch = "wasm32")]

use serde::Deserialize;
use tuwen::web::WasmEncoder;
use wasm_bindgen_test::*;

#[cfg(not(target_feature = "atomics"))]
wasm_bindgen_test_configure!(run_in_browser);
#[cfg(target_feature = "atomics")]
wasm_bindgen_test_configure!(run_in_dedicated_worker);

/// Threads the threaded build's pool runs (the page uses every core; two exercise the split and the joins).
const THREADS: usize = 2;

/// Starts the threaded build's pool once (rayon's global pool can be built once per module instance) and
/// checks every product now runs on it; the single-threaded builds run on the calling thread.
async fn threads() {
    #[cfg(target_feature = "atomics")]
    {
        thread_local!(static STARTED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) });
        if !STARTED.get() {
            wasm_bindgen_futures::JsFuture::from(tuwen::web::init_thread_pool(THREADS)).await.expect("initThreadPool");
            STARTED.set(true);
        }
    }
    let expected = if cfg!(target_feature = "atomics") { THREADS } else { 1 };
    assert_eq!(tuwen::web::thread_count(), expected, "threads the products run on");
}

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

/// Unwraps a wasm API result (`JsError` has no `Debug`), naming the step that failed.
fn ok<T>(r: Result<T, wasm_bindgen::JsError>, what: &str) -> T {
    r.map_err(|e| format!("{what}: {:?}", wasm_bindgen::JsValue::from(e))).unwrap()
}

/// Every fixture input through `encoder`, texts then images.
async fn embed_all(encoder: &WasmEncoder, expected: &Embeddings) -> Vec<Vec<f32>> {
    let mut out = Vec::new();
    for (text, _) in &expected.texts {
        out.push(ok(encoder.embed_text(text.clone()).await, "embedText"));
    }
    for (name, _) in &expected.images {
        out.push(ok(encoder.embed_image(image_bytes(name).to_vec(), name.clone()).await, "embedImage"));
    }
    out
}

/// Checks every embedding: max |Δ| ≤ `tolerance` and cosine ≥ `min_cosine`; logs the worst values.
async fn check(encoder: &WasmEncoder, expected: &Embeddings, tolerance: f32, min_cosine: f32, what: &str) {
    let (mut worst_d, mut worst_cos) = (0f32, 1f32);
    let inputs = expected.texts.iter().chain(&expected.images);
    for (ours, (input, e)) in embed_all(encoder, expected).await.iter().zip(inputs) {
        let d = max_abs_diff(ours, e);
        let cos: f32 = ours.iter().zip(e).map(|(a, b)| a * b).sum();
        assert!(d <= tolerance && cos >= min_cosine, "{what} {input}: vs native max |Δ| = {d:e}, cosine {cos}");
        worst_d = worst_d.max(d);
        worst_cos = worst_cos.min(cos);
    }
    web_sys::console::log_1(&format!("{what}: vs native max |Δ| {worst_d:e}, min cosine {worst_cos}").into());
}

fn image_bytes(name: &str) -> &'static [u8] {
    match name {
        "rgb.jpg" => include_bytes!("fixtures/images/rgb.jpg"),
        "rgba.png" => include_bytes!("fixtures/images/rgba.png"),
        "gray.png" => include_bytes!("fixtures/images/gray.png"),
        "palette.gif" => include_bytes!("fixtures/images/palette.gif"),
        "rgb.webp" => include_bytes!("fixtures/images/rgb.webp"),
        "rgb.png" => include_bytes!("fixtures/images/rgb.png"),
        "rgb.bmp" => include_bytes!("fixtures/images/rgb.bmp"),
        "gray_alpha.png" => include_bytes!("fixtures/images/gray_alpha.png"),
        "palette_transparent.png" => include_bytes!("fixtures/images/palette_transparent.png"),
        "cmyk.jpg" => include_bytes!("fixtures/images/cmyk.jpg"),
        other => panic!("no embedded fixture image {other}"),
    }
}

/// `n` values in [-1, 1) from a seeded LCG (reproducible test inputs).
fn pseudo_random(seed: &mut u64, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| {
            *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((*seed >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[wasm_bindgen_test]
async fn wasm_embeddings_equal_native() {
    threads().await;
    let native: Native = serde_json::from_str(NATIVE).unwrap();
    let encoder = ok(WasmEncoder::new(CONFIG, VOCAB, WEIGHTS.to_vec(), "both"), "load");
    check(&encoder, &native.f32, 1e-5, 0.99999, "f32").await;
}

fn tiny_q8_0() -> Vec<u8> {
    tuwen::weights::gguf::quantize_safetensors_bytes(
        std::str::from_utf8(CONFIG).unwrap(),
        std::str::from_utf8(VOCAB).unwrap(),
        WEIGHTS,
        "q8_0".parse().unwrap(),
        tuwen::Towers::Both,
    )
    .unwrap()
}

/// The q8_0 GGUF is made in the browser from the same bytes, then run with the simd128 q8_0 kernel.
#[wasm_bindgen_test]
async fn wasm_quantized_embeddings_equal_native() {
    threads().await;
    let native: Native = serde_json::from_str(NATIVE).unwrap();
    let gguf = tiny_q8_0();
    let encoder = ok(WasmEncoder::from_gguf(gguf.clone(), "both".into(), "cpu".into()).await, "load");
    // q8_0 matmuls quantize their activations to int8 too: where native (AVX) and wasm (simd128) f32
    // code differ in the last bit, an activation can round to the neighbouring int8 and the difference
    // grows through the layers, most on this deliberately wide-weighted fixture.
    check(&encoder, &native.q8_0, 1e-2, 0.9995, "q8_0").await;
    let text_only = ok(WasmEncoder::from_gguf(gguf.clone(), "text".into(), "cpu".into()).await, "load text");
    assert!(text_only.embed_image(image_bytes("rgb.jpg").to_vec(), "rgb.jpg".into()).await.is_err());
    let truncated = WasmEncoder::from_gguf(gguf[..gguf.len() / 2].to_vec(), "both".into(), "cpu".into()).await;
    assert!(truncated.is_err(), "a truncated GGUF is refused");
}

/// This build's q8_0 kernel (simd128, or relaxed SIMD in the second build, in both its dot-product forms)
/// against q8_0 arithmetic done the obvious way.
#[wasm_bindgen_test]
async fn wasm_q8_kernel_matches_reference() {
    threads().await;
    let expected_kernel = if cfg!(feature = "relaxed-simd") { "relaxed-simd" } else { "simd128" };
    // The relaxed build computes its dot products in either of two forms (src/model/q8/wasm/relaxed_simd.rs):
    // both against the reference, and bit for bit against each other.
    #[cfg(feature = "relaxed-simd")]
    let forms = [tuwen::model::q8::DotForm::Accumulate, tuwen::model::q8::DotForm::Pairs];
    #[cfg(not(feature = "relaxed-simd"))]
    let forms = [()];
    let mut results: Vec<Vec<Vec<f32>>> = Vec::new();
    for form in forms {
        #[cfg(feature = "relaxed-simd")]
        tuwen::model::q8::set_dot_form(form);
        let _ = form;
        let mut seed = 7u64; // the same inputs for every form
        results.push(kernel_against_reference(expected_kernel, &mut |n| pseudo_random(&mut seed, n)));
    }
    // The page's way in: the form by name, an unknown name refused; the SIMD128 build has no forms.
    if cfg!(feature = "relaxed-simd") {
        ok(tuwen::web::set_dot_form("pairs"), "setDotForm(pairs)");
        assert_eq!(tuwen::web::dot_form(), "pairs");
        ok(tuwen::web::set_dot_form("accumulate"), "setDotForm(accumulate)");
        assert_eq!(tuwen::web::dot_form(), "accumulate");
    } else {
        assert_eq!(tuwen::web::dot_form(), "");
        assert!(tuwen::web::set_dot_form("pairs").is_err());
    }
    assert!(tuwen::web::set_dot_form("fastest").is_err(), "an unknown form is refused");
    for other in &results[1..] {
        for (a, b) in results[0].iter().zip(other) {
            assert!(a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()), "the dot-product forms differ");
        }
    }
}

/// Products of random q8_0 matrices (shapes that are not multiples of the kernel's tiles and row groups, -128
/// weights) against the arithmetic done the obvious way; the products' outputs, for comparing kernels.
fn kernel_against_reference(expected_kernel: &str, random: &mut impl FnMut(usize) -> Vec<f32>) -> Vec<Vec<f32>> {
    use tuwen::model::q8::{Q8Matrix, BLOCK};
    let mut outputs = Vec::new();
    for (rows, out_dim, in_dim) in [(1, 16, 32), (3, 5, 64), (6, 37, 96), (52, 48, 256), (197, 20, 64)] {
        // Every 7th weight the most negative q8_0 allows (-128 × scale): the largest pair sums the 8-bit dot
        // products see.
        let mut weights = random(out_dim * in_dim);
        for block in weights.chunks_mut(BLOCK) {
            let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
            block[block.len() / 2] = -amax;
        }
        let w = Q8Matrix::from_q8_0_bytes(out_dim, in_dim, &q8_0_bytes_with_min_quants(&weights, in_dim)).unwrap();
        assert_eq!(w.kernel_name(), expected_kernel);
        let (x, bias) = (random(rows * in_dim), random(out_dim));
        let got = w.matmul(&x, rows, Some(&bias));
        outputs.push(got.clone());
        let wf = w.dequantize();
        // Activations quantized per 32-block to 7 bits: scale max|x|/63, round to nearest.
        let xq: Vec<f32> = x
            .chunks(BLOCK)
            .flat_map(|b| {
                let d = b.iter().fold(0f32, |m, v| m.max(v.abs())) / 63.0;
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
    outputs
}

/// q8_0 bytes for `weights` `[out, in]` whose blocks' scale is max |w| / 128, so each block's most negative
/// value becomes the -128 quant (legal in GGUF, never written by llama.cpp's quantizer).
fn q8_0_bytes_with_min_quants(weights: &[f32], in_dim: usize) -> Vec<u8> {
    use tuwen::model::q8::BLOCK;
    let mut out = Vec::new();
    for row in weights.chunks(in_dim) {
        for block in row.chunks(BLOCK) {
            let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = half::f16::from_f32(amax / 128.0);
            out.extend(d.to_le_bytes());
            let inv = if d.to_f32() == 0.0 { 0.0 } else { 1.0 / d.to_f32() };
            out.extend(block.iter().map(|v| (v * inv).round().clamp(-128.0, 127.0) as i8 as u8));
        }
    }
    out
}

#[wasm_bindgen_test]
async fn wasm_reports_bad_input_as_errors() {
    threads().await;
    assert!(WasmEncoder::new(b"{", VOCAB, WEIGHTS.to_vec(), "both").is_err());
    assert!(WasmEncoder::new(CONFIG, VOCAB, WEIGHTS[..100].to_vec(), "text").is_err());
    let encoder = ok(WasmEncoder::new(CONFIG, VOCAB, WEIGHTS.to_vec(), "vision"), "load");
    assert!(encoder.embed_image(b"not an image".to_vec(), "x.jpg".into()).await.is_err());
    assert!(encoder.embed_text("文本".into()).await.is_err(), "the text tower was not loaded");
    let bad_backend = WasmEncoder::load(CONFIG.to_vec(), VOCAB.to_vec(), WEIGHTS.to_vec(), "text".into(), "tpu".into()).await;
    assert!(bad_backend.is_err());
}

/// The browser's own decode of encoded image bytes (what the page does for formats the crate does not read):
/// `createImageBitmap` without colour conversion or premultiplied alpha, read back as RGBA from a canvas.
async fn browser_decode(bytes: &[u8]) -> (Vec<u8>, u32, u32) {
    let decode = js_sys::Function::new_with_args(
        "bytes",
        "return (async () => {
           const bitmap = await createImageBitmap(new Blob([bytes]), { premultiplyAlpha: 'none', colorSpaceConversion: 'none' });
           const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
           const context = canvas.getContext('2d');
           context.drawImage(bitmap, 0, 0);
           const data = context.getImageData(0, 0, bitmap.width, bitmap.height);
           return [data.width, data.height, new Uint8Array(data.data.buffer)];
         })()",
    );
    let promise: js_sys::Promise = decode.call1(&wasm_bindgen::JsValue::NULL, &js_sys::Uint8Array::from(bytes)).unwrap().into();
    let out: js_sys::Array = wasm_bindgen_futures::JsFuture::from(promise).await.expect("the browser decodes it").into();
    let width = out.get(0).as_f64().unwrap() as u32;
    let height = out.get(1).as_f64().unwrap() as u32;
    (js_sys::Uint8Array::new(&out.get(2)).to_vec(), width, height)
}

/// Pixels the browser decoded, resized and normalised by the crate (the page's path for AVIF and HEIC),
/// against the crate's own decode of the same file: within the tolerance the parity tests hold the crate to
/// against the HF processor (mean |Δ| < 0.01), and the stored embeddings within cosine 0.999.
#[wasm_bindgen_test]
async fn browser_decoded_pixels_match_the_crate_decode() {
    threads().await;
    let encoder = ok(WasmEncoder::new(CONFIG, VOCAB, WEIGHTS.to_vec(), "vision"), "load");
    let names = ["rgb.jpg", "cmyk.jpg", "rgb.png", "rgba.png", "gray.png", "gray_alpha.png", "palette.gif", "palette_transparent.png", "rgb.webp", "rgb.bmp"];
    for name in names {
        let bytes = image_bytes(name);
        let (rgba, width, height) = browser_decode(bytes).await;
        let ours = ok(encoder.preprocess_image(bytes, name), name);
        let browsers = ok(encoder.preprocess_rgba(rgba.clone(), width, height, name), name);
        let mean = ours.iter().zip(&browsers).map(|(a, b)| (a - b).abs()).sum::<f32>() / ours.len() as f32;
        assert!(mean < 0.01, "{name}: the browser's decode is mean |Δ| {mean} from the crate's");
        let crate_row = ok(encoder.index_photo(bytes.to_vec(), name.into()).await, name);
        let browser_row = ok(encoder.index_rgba(rgba, width, height, name.into()).await, name);
        let dequantized = |p: &tuwen::web::IndexedPhoto| p.values().iter().map(|&q| q as f32 * p.scale()).collect::<Vec<f32>>();
        let (a, b) = (dequantized(&crate_row), dequantized(&browser_row));
        let cosine = a.iter().zip(&b).map(|(x, y)| x * y).sum::<f32>()
            / (a.iter().map(|x| x * x).sum::<f32>().sqrt() * b.iter().map(|x| x * x).sum::<f32>().sqrt());
        assert!(cosine >= 0.999, "{name}: embeddings of the two decodes have cosine {cosine}");
        assert!(!crate_row.thumbnail().is_empty() && crate_row.thumbnail()[..2] == [0xFF, 0xD8], "{name}: a JPEG thumbnail");
    }
    // A wrong pixel count or an oversized image is refused by name.
    assert!(encoder.index_rgba(vec![0; 15], 2, 2, "short.avif".into()).await.is_err());
    assert!(encoder.index_rgba(Vec::new(), 20_000, 1, "wide.avif".into()).await.is_err());
    assert!(tuwen::web::crate_decodes(image_bytes("rgb.jpg")) && !tuwen::web::crate_decodes(b"\0\0\x01\0ico"));
}

#[derive(Deserialize)]
struct Report {
    backend: String,
    detail: String,
}


/// WebGPU (SwiftShader in headless Chromium with --enable-unsafe-webgpu) against the CPU backend on the same
/// model, f32 and q8_0: cosine ≥ 0.9999 and max |Δ| ≤ 1e-3 for texts of every length and images of every
/// colour mode. The reference is the native CPU's (native.json): the wasm CPU path's own q8_0 results are
/// 4e-3 away from it on this fixture (see `wasm_quantized_embeddings_equal_native`), and WebGPU lands on
/// the native ones.
#[wasm_bindgen_test]
async fn webgpu_embeddings_match_the_cpu_backend() {
    threads().await;
    let native: Native = serde_json::from_str(NATIVE).unwrap();
    let f32_gpu = WasmEncoder::load(CONFIG.to_vec(), VOCAB.to_vec(), WEIGHTS.to_vec(), "both".into(), "gpu".into()).await;
    let q8_gpu = WasmEncoder::from_gguf(tiny_q8_0(), "both".into(), "gpu".into()).await;
    for (gpu, expected, what) in [(ok(f32_gpu, "gpu f32"), &native.f32, "f32"), (ok(q8_gpu, "gpu q8_0"), &native.q8_0, "q8_0")] {
        let report: Report = serde_wasm_bindgen::from_value(ok(gpu.backend(), "backend")).unwrap();
        assert_eq!(report.backend, "gpu", "{}", report.detail);
        check(&gpu, expected, 1e-3, 0.9999, &format!("WebGPU {what} on {}", report.detail)).await;
    }
}

/// The CPU backend's attention as compiled for wasm (its own register blocking: 4 queries × 8 keys, 16 value
/// dimensions at a time) against the textbook formula in f64, on heads of 8, 16 and 64 dimensions, odd
/// sequence lengths, with and without a mask, for every query and for the first queries alone.
#[wasm_bindgen_test]
async fn wasm_attention_matches_a_plain_reference() {
    threads().await;
    use tuwen::model::backend::{AttentionShape, Backend, Cpu};
    let mut seed = 5u64;
    for &(batch, seq, heads, hidden) in &[(1, 1, 1, 8), (2, 13, 3, 48), (1, 37, 2, 128), (1, 197, 12, 768)] {
        let head_dim = hidden / heads;
        let qkv: Vec<f32> = pseudo_random(&mut seed, batch * seq * 3 * hidden).iter().map(|v| v * 3.0).collect();
        let mask: Vec<f32> = (0..batch * seq).map(|i| if i % seq < seq - (i / seq) % seq.min(3) { 0.0 } else { f32::MIN }).collect();
        for masked in [false, true] {
            let mut want = vec![0f32; batch * seq * hidden];
            for (b, h, i) in (0..batch).flat_map(|b| (0..heads).flat_map(move |h| (0..seq).map(move |i| (b, h, i)))) {
                let at = |row: usize, part: usize, d: usize| qkv[(b * seq + row) * 3 * hidden + part * hidden + h * head_dim + d] as f64;
                let scores: Vec<f64> = (0..seq)
                    .map(|j| {
                        let s = (0..head_dim).map(|d| at(i, 0, d) * at(j, 1, d)).sum::<f64>() / (head_dim as f64).sqrt();
                        if masked && mask[b * seq + j] < 0.0 { f64::NEG_INFINITY } else { s }
                    })
                    .collect();
                let top = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let weights: Vec<f64> = scores.iter().map(|s| (s - top).exp()).collect();
                let total: f64 = weights.iter().sum();
                for d in 0..head_dim {
                    let v = (0..seq).map(|j| weights[j] * at(j, 2, d)).sum::<f64>() / total;
                    want[(b * seq + i) * hidden + h * head_dim + d] = v as f32;
                }
            }
            let shape = AttentionShape::new(batch, seq, heads);
            let (q, m) = (Cpu.upload(&qkv, batch * seq, 3 * hidden).unwrap(), Cpu.upload(&mask, batch, seq).unwrap());
            let all = Cpu.read(&Cpu.attention(&q, shape, masked.then_some(&m)).unwrap()).await.unwrap();
            let first = Cpu.read(&Cpu.attention(&q, shape.first_queries(), masked.then_some(&m)).unwrap()).await.unwrap();
            let what = format!("batch {batch} seq {seq} heads {heads} hidden {hidden} mask {masked}");
            assert!(max_abs_diff(&all, &want) <= 1e-5, "attention, {what}: max |Δ| {:e}", max_abs_diff(&all, &want));
            let first_rows: Vec<f32> = (0..batch).flat_map(|b| all[b * seq * hidden..][..hidden].to_vec()).collect();
            assert_eq!(first, first_rows, "first queries' attention, {what}");
        }
    }
}

/// The kernels on WebGPU against the CPU backend on odd shapes (partial tiles, one row, several blocks).
#[wasm_bindgen_test]
async fn webgpu_kernels_match_the_cpu_backend() {
    threads().await;
    use tuwen::model::backend::{AttentionShape, Backend, Cpu, Gpu};
    use tuwen::model::params::{LinearParams, Matrix};
    use tuwen::model::q8::Q8Matrix;
    let gpu = Gpu::new(true).await.map_err(|e| format!("{e:#}")).unwrap();
    let mut seed = 11u64;
    let mut random = |n: usize| pseudo_random(&mut seed, n);
    async fn product<B: Backend>(b: &B, p: LinearParams, x: &[f32], rows: usize) -> Vec<f32> {
        let layer = b.linear(p.clone()).unwrap();
        let x = b.upload(x, rows, p.in_dim).unwrap();
        b.read(&b.linear_forward(&x, &layer, Some(tuwen::config::Activation::Gelu), None).unwrap()).await.unwrap()
    }
    for (rows, out_dim, in_dim) in [(1, 16, 32), (3, 100, 64), (67, 65, 96)] {
        let w = random(out_dim * in_dim);
        let bias = Some(random(out_dim));
        let x = random(rows * in_dim);
        let q8 = LinearParams { matrix: Matrix::Quantized(std::sync::Arc::new(Q8Matrix::quantize(out_dim, in_dim, &w))), bias: bias.clone(), in_dim, out_dim };
        let dense = LinearParams { matrix: Matrix::Dense(candle_core::Tensor::from_vec(w, (out_dim, in_dim), &candle_core::Device::Cpu).unwrap()), bias, in_dim, out_dim };
        for (name, p) in [("q8_0", q8), ("f32", dense)] {
            let (g, c) = (product(&gpu, p.clone(), &x, rows).await, product(&Cpu, p, &x, rows).await);
            let d = max_abs_diff(&g, &c);
            assert!(d <= 1e-4, "{name} [{rows}×{in_dim}]·[{out_dim}]ᵀ: WebGPU vs CPU max |Δ| {d:e}");
        }
    }
    let (batch, seq, heads, hidden) = (2, 13, 3, 48);
    let qkv = random(batch * seq * 3 * hidden);
    let mask: Vec<f32> = (0..batch * seq).map(|i| if i % seq < 10 { 0.0 } else { f32::MIN }).collect();
    let shape = AttentionShape::new(batch, seq, heads);
    let g = {
        let (q, m) = (gpu.upload(&qkv, batch * seq, 3 * hidden).unwrap(), gpu.upload(&mask, batch, seq).unwrap());
        gpu.read(&gpu.attention(&q, shape, Some(&m)).unwrap()).await.unwrap()
    };
    let c = {
        let (q, m) = (Cpu.upload(&qkv, batch * seq, 3 * hidden).unwrap(), Cpu.upload(&mask, batch, seq).unwrap());
        Cpu.read(&Cpu.attention(&q, shape, Some(&m)).unwrap()).await.unwrap()
    };
    assert!(max_abs_diff(&g, &c) <= 1e-5, "attention: WebGPU vs CPU max |Δ| {:e}", max_abs_diff(&g, &c));
}
