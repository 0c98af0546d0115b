//! The wgpu backend against the CPU backend: each kernel on odd shapes, then whole encoders (tiny fixture, f32
//! and q8_0) with texts of different lengths and images of every colour mode, and the CPU fallback when the
//! device is lost. Natively these run on whatever adapter wgpu finds — in CI, Mesa's lavapipe (Vulkan on
//! the CPU). Without any adapter they skip, except under CI, where that is a failure.

use crate::common;
use common::ops::*;
use common::*;
use tuwen::config::Activation;
use tuwen::embed::Placement;
use tuwen::model::backend::{AttentionShape, Backend, BackendChoice, Cpu, Gpu};
use tuwen::model::params::{LinearParams, Matrix};
use tuwen::model::q8::Q8Matrix;
use tuwen::util::resolve_now;
use tuwen::{Encoder, Towers};

fn gpu() -> Option<Gpu> {
    match resolve_now(Gpu::new(true)).unwrap() {
        Ok(gpu) => {
            eprintln!("GPU adapter: {}", gpu.adapter());
            Some(gpu)
        }
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("SKIPPED: no GPU adapter ({e:#}); install mesa-vulkan-drivers for lavapipe");
            None
        }
        Err(e) => panic!("CI must have a GPU adapter (lavapipe): {e:#}"),
    }
}

#[test]
fn products_match_the_cpu_on_odd_shapes() {
    let Some(gpu) = gpu() else { return };
    // Rows and columns off the 64×64 tile (1 row, partial tiles, more than one tile), inner sizes that are
    // one q8_0 block, several, and (for f32) not a multiple of the 16-deep slice.
    let cases = [(1, 32, 16), (3, 64, 100), (67, 96, 65), (130, 800, 200), (197, 768, 2304)];
    for (case, &(rows, in_dim, out_dim)) in cases.iter().enumerate() {
        let seed = case as u64 * 10;
        let w = values(seed, out_dim * in_dim);
        let x = values(seed + 1, rows * in_dim);
        let bias = Some(values(seed + 2, out_dim));
        let residual = values(seed + 3, rows * out_dim);
        let q8 = LinearParams {
            matrix: Matrix::Quantized(std::sync::Arc::new(Q8Matrix::quantize(out_dim, in_dim, &w))),
            bias: bias.clone(),
            in_dim,
            out_dim,
        };
        let f32_in = in_dim - (case % 2) * 7; // 25, 89, …: not a multiple of 16 either
        let dense = LinearParams {
            matrix: Matrix::Dense(tensor(values(seed + 4, out_dim * f32_in), out_dim, f32_in)),
            bias,
            in_dim: f32_in,
            out_dim,
        };
        let xf = values(seed + 5, rows * f32_in);
        for (name, p, x) in [("q8_0", q8, &x), ("f32", dense, &xf)] {
            for (act, residual) in
                [(None, None), (Some(Activation::Gelu), None), (Some(Activation::QuickGelu), None), (None, Some(&residual[..]))]
            {
                let what = format!("{name} [{rows}×{}]·[{out_dim}]ᵀ act {act:?} residual {}", p.in_dim, residual.is_some());
                let g = linear_on(&gpu, p.clone(), x, rows, act, residual);
                let c = linear_on(&Cpu, p.clone(), x, rows, act, residual);
                assert_close(&g, &c, 2e-5, &what);
            }
        }
        let no_bias = LinearParams { bias: None, ..LinearParams::dense(tensor(w.clone(), out_dim, in_dim)).unwrap() };
        assert_close(
            &linear_on(&gpu, no_bias.clone(), &x, rows, None, None),
            &linear_on(&Cpu, no_bias, &x, rows, None, None),
            2e-5,
            "f32 without bias",
        );
    }
}

#[test]
fn other_ops_match_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let names = ["gather + add rows", "layer norm", "attention", "first tokens", "first queries' attention", "l2 normalize"];
    for &(batch, seq, heads, hidden, masked) in
        &[(1, 1, 1, 8, false), (2, 7, 2, 64, true), (3, 52, 12, 768, true), (2, 197, 12, 768, false), (1, 300, 4, 96, true)]
    {
        let g = pipeline_on(&gpu, batch, seq, heads, hidden, masked);
        let c = pipeline_on(&Cpu, batch, seq, heads, hidden, masked);
        for ((g, c), name) in g.iter().zip(&c).zip(names) {
            assert_close(g, c, 2e-5, &format!("{name}, batch {batch} seq {seq} heads {heads} hidden {hidden} mask {masked}"));
        }
    }
}

#[test]
fn bad_shapes_are_errors_not_gpu_faults() {
    let Some(gpu) = gpu() else { return };
    let table = gpu.table(&tensor(values(1, 4 * 8), 4, 8)).unwrap();
    let e = gpu.gather(&table, &[0, 4]).err().unwrap().to_string();
    assert!(e.contains("token id 4") && e.contains("4 rows"), "{e}");
    let x = gpu.upload(&values(2, 3 * 8), 3, 8).unwrap();
    let layer = gpu.linear(LinearParams::dense(tensor(values(3, 16 * 9), 16, 9)).unwrap()).unwrap();
    let e = gpu.linear_forward(&x, &layer, None, None).err().unwrap().to_string();
    assert!(e.contains("input width 9"), "{e}");
    let qkv = gpu.upload(&values(4, 2000 * 24), 2000, 24).unwrap();
    let e = gpu.attention(&qkv, AttentionShape::new(1, 2000, 2), None).err().unwrap().to_string();
    assert!(e.contains("1024 tokens"), "{e}");
    assert!(gpu.failure().is_none(), "a refused op must not reach the device");
}

fn gpu_encoder(load: impl FnOnce(Placement) -> Encoder, gpu: &Gpu) -> Encoder {
    let encoder = load(Placement {
        gpu: Some(gpu.clone()),
        report: tuwen::model::backend::BackendReport { backend: "gpu".into(), detail: gpu.adapter().to_string() },
    });
    assert_eq!(encoder.backend().backend, "gpu");
    encoder
}

const TEXTS: [&str; 5] = [
    "",
    "猫",
    "一只猫坐在窗台上晒太阳",
    "iPhone 15 Pro 发布会 2023年9月13日",
    "《绿色北京》摄影大赛胡子<人名>作品，拍摄于二〇〇八年春天的北京街头",
];
const IMAGES: [&str; 5] = ["rgb.jpg", "rgba.png", "gray.png", "palette.gif", "rgb.webp"];

/// GPU vs CPU embeddings of the same model: cosine ≥ 0.9999 and max |Δ| ≤ 1e-3 for every input, batched
/// (texts of different lengths padded together) and one by one.
fn check_parity(cpu: &Encoder, gpu: &Encoder, what: &str) {
    let mut worst = (1f32, 0f32);
    let mut compare = |g: &[f32], c: &[f32], input: &str| {
        let (cos, d) = (cosine(g, c), max_abs_diff(g, c));
        assert!(cos >= 0.9999 && d <= 1e-3, "{what} {input:?}: GPU vs CPU cosine {cos}, max |Δ| {d:e}");
        worst = (worst.0.min(cos), worst.1.max(d));
    };
    for (g, (c, t)) in gpu.embed_texts(&TEXTS).unwrap().iter().zip(cpu.embed_texts(&TEXTS).unwrap().iter().zip(TEXTS)) {
        compare(g, c, t);
    }
    for t in TEXTS {
        compare(&gpu.embed_text(t).unwrap(), &cpu.embed_text(t).unwrap(), t);
    }
    let pixels: Vec<_> = IMAGES
        .iter()
        .map(|f| {
            let bytes = std::fs::read(fixtures().join("images").join(f)).unwrap();
            tuwen::preprocess::preprocess(&bytes, f, cpu.preprocess_config()).unwrap()
        })
        .collect();
    for ((g, c), f) in gpu.embed_pixels(&pixels).unwrap().iter().zip(cpu.embed_pixels(&pixels).unwrap()).zip(IMAGES) {
        compare(g, &c, f);
    }
    eprintln!("{what}: GPU vs CPU min cosine {}, max |Δ| {:e}", worst.0, worst.1);
}

#[test]
fn tiny_model_embeddings_match_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let cpu = Encoder::load(&tiny_model(), Towers::Both).unwrap();
    let on_gpu = gpu_encoder(|at| Encoder::load_on(&tiny_model(), Towers::Both, at).unwrap(), &gpu);
    check_parity(&cpu, &on_gpu, "tiny f32");
    // q8_0 re-quantizes activations before every product, so the GPU's and the CPU's float sums, a ulp
    // apart, can round an int8 value differently; how far that carries depends on the CPU. What holds on
    // every machine is each backend's fidelity to the f32 model (tests/common::Q8_*, which a broken kernel
    // fails: tests/q8_fidelity.rs). The kernels themselves are compared exactly on given inputs above.
    let gguf = tiny_q8_0_gguf();
    let reference = fixture_embeddings(&cpu);
    let q8_cpu = Encoder::from_gguf_bytes(&gguf, Towers::Both).unwrap();
    let q8_gpu = gpu_encoder(|at| Encoder::from_gguf_bytes_on(&gguf, Towers::Both, at).unwrap(), &gpu);
    for (encoder, what) in [(&q8_cpu, "CPU"), (&q8_gpu, "GPU")] {
        let f = fidelity(&fixture_embeddings(encoder), &reference);
        eprintln!("tiny q8_0 on the {what} vs f32: mean cosine {}, min {}", f.0, f.1);
        assert!(meets_q8_bounds(f), "tiny q8_0 on the {what} vs f32: {f:?}");
    }
    // Texts padded together or embedded alone: the masked positions must not leak into the GPU's results.
    for t in TEXTS {
        let (alone, batched) = (q8_gpu.embed_text(t).unwrap(), q8_gpu.embed_texts(&[t, TEXTS[4]]).unwrap().remove(0));
        assert!(cosine(&alone, &batched) >= Q8_MIN_COSINE, "{t:?}: GPU q8_0 alone vs padded in a batch");
    }
}

/// The full-size random model (BENCHMARKS.md, Reproduce), when one was generated: the product's shapes.
/// f32 weights meet the 0.9999 / 1e-3 bar with room to spare (≈ 2e-7 apart). q8_0 cannot on *random*
/// weights: activations are re-quantized before every product, so a 1-ulp difference anywhere (summation
/// order in attention or layer norm, `exp`) flips an int8 value by one step (≈ 1 % of its block) and a random
/// network carries that to the output. The CPU does not meet it against itself either: one text embedded
/// alone vs in a padded batch differs by cosine 0.99996, max |Δ| 1.3e-3 with 8-bit activations
/// (BENCHMARKS.md); activations are 7-bit now, each step twice as large, and the GPU's q8_0 text was 0.99964
/// / 4.1e-3 from the CPU's when they changed. So q8_0 is held to the q8_0-vs-f32 fidelity bar itself:
/// cosine ≥ 0.999 and max |Δ| ≤ 1e-2 (a wrong kernel lands far below: see tests/q8_fidelity.rs).
#[test]
fn full_size_embeddings_match_the_cpu() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/random-chinese-clip-vit-base-patch16");
    if !dir.join("tuwen-q8_0-text.gguf").exists() {
        eprintln!(
            "SKIPPED: {} not found (made by `tuwen init-random` + `tuwen quantize`: BENCHMARKS.md, Reproduce)",
            dir.display()
        );
        return;
    }
    let Some(gpu) = gpu() else { return };
    let cases = [
        (dir.clone(), Towers::Both, 0.9999, 1e-3),
        (dir.join("tuwen-q8_0-text.gguf"), Towers::Text, 0.999, 1e-2),
        (dir.join("tuwen-q8_0-vision.gguf"), Towers::Vision, 0.999, 1e-2),
    ];
    for (path, towers, min_cos, max_d) in cases {
        let cpu = Encoder::load(&path, towers).unwrap();
        let on_gpu = gpu_encoder(|at| Encoder::load_on(&path, towers, at).unwrap(), &gpu);
        let check = |g: &[f32], c: &[f32], input: &str| {
            let (cos, d) = (cosine(g, c), max_abs_diff(g, c));
            eprintln!("full-size {} {input:?}: GPU vs CPU cosine {cos}, max |Δ| {d:e}", on_gpu.info.dtype);
            assert!(cos >= min_cos && d <= max_d, "{} {input:?}: cosine {cos}, max |Δ| {d:e}", path.display());
        };
        if towers.text() {
            for ((g, c), t) in on_gpu.embed_texts(&TEXTS).unwrap().iter().zip(cpu.embed_texts(&TEXTS).unwrap()).zip(TEXTS) {
                check(g, &c, t);
            }
        }
        if towers.vision() {
            for f in &IMAGES[..3] {
                let path = fixtures().join("images").join(f);
                check(&on_gpu.embed_image_file(&path).unwrap(), &cpu.embed_image_file(&path).unwrap(), f);
            }
        }
    }
}

#[test]
fn a_lost_device_falls_back_to_the_cpu_and_says_why() {
    let Some(gpu) = gpu() else { return };
    let cpu = Encoder::load(&tiny_model(), Towers::Both).unwrap();
    let on_gpu = gpu_encoder(|at| Encoder::load_on(&tiny_model(), Towers::Both, at).unwrap(), &gpu);
    let before = on_gpu.embed_text("一只猫").unwrap();
    gpu.simulate_device_loss();
    let after = on_gpu.embed_text("一只猫").unwrap();
    let report = on_gpu.backend();
    assert_eq!(report.backend, "cpu", "{report}");
    assert!(report.detail.contains("fell back") && report.detail.contains("lost"), "{report}");
    assert!(max_abs_diff(&after, &cpu.embed_text("一只猫").unwrap()) == 0.0, "after the fallback it is the CPU path");
    assert!(cosine(&before, &after) >= 0.9999);
}

#[test]
fn auto_prefers_the_cpu_over_an_emulated_gpu_and_says_why() {
    let Some(gpu) = gpu() else { return };
    let at = resolve_now(Placement::open(BackendChoice::Auto)).unwrap().unwrap();
    if gpu.adapter().emulated {
        assert!(at.gpu.is_none());
        assert_eq!(at.report.backend, "cpu");
        assert!(at.report.detail.contains("CPU-emulated"), "{}", at.report);
    } else {
        assert_eq!(at.report.backend, "gpu", "{}", at.report);
    }
    let at = resolve_now(Placement::open(BackendChoice::Cpu)).unwrap().unwrap();
    assert!(at.gpu.is_none() && at.report.backend == "cpu");
}
