//! The fused CPU backend against the unfused candle reference, op by op on odd shapes (rows 1…197, columns
//! off the 16-column tile, sequences up to 300, with and without masks), the layer norm fused into the next
//! product's quantization, and whole encoders giving the same bits for any number of threads.

use crate::common;
use common::ops::*;
use common::*;
use tuwen::config::Activation;
use tuwen::model::backend::{Backend, Cpu, Reference};
use tuwen::model::params::{LinearParams, Matrix, NormParams};
use tuwen::model::q8::Q8Matrix;
use tuwen::Towers;

fn q8(seed: u64, out_dim: usize, in_dim: usize, bias: bool) -> LinearParams {
    LinearParams {
        matrix: Matrix::Quantized(std::sync::Arc::new(Q8Matrix::quantize(out_dim, in_dim, &values(seed, out_dim * in_dim)))),
        bias: bias.then(|| values(seed + 1, out_dim)),
        in_dim,
        out_dim,
    }
}

fn dense(seed: u64, out_dim: usize, in_dim: usize, bias: bool) -> LinearParams {
    LinearParams {
        bias: bias.then(|| values(seed + 1, out_dim)),
        ..LinearParams::dense(tensor(values(seed, out_dim * in_dim), out_dim, in_dim)).unwrap()
    }
}

#[test]
fn products_and_their_epilogues_match_the_reference() {
    // Batch-1 texts (1–13 rows), a batch of 32 short texts, one and 8 images' tokens; in and out widths
    // that are one block, several, and (out, and f32 in) not multiples of the 16-column tile.
    let cases =
        [(1, 32, 16), (3, 64, 100), (13, 768, 2304), (67, 96, 65), (197, 768, 3072), (32 * 7, 128, 40), (8 * 197, 64, 33)];
    for (case, &(rows, in_dim, out_dim)) in cases.iter().enumerate() {
        let seed = case as u64 * 10;
        let x = values(seed + 2, rows * in_dim);
        let residual = values(seed + 3, rows * out_dim);
        let f32_in = in_dim - (case % 2) * 7;
        let xf = values(seed + 4, rows * f32_in);
        for (name, p, x) in [
            ("q8_0", q8(seed, out_dim, in_dim, true), &x),
            ("f32", dense(seed, out_dim, f32_in, true), &xf),
            ("f32 no bias", dense(seed, out_dim, f32_in, false), &xf),
        ] {
            for (act, residual) in [
                (None, None),
                (Some(Activation::Gelu), None),
                (Some(Activation::QuickGelu), None),
                (None, Some(&residual[..])),
                (Some(Activation::Gelu), Some(&residual[..])),
            ] {
                let what = format!("{name} [{rows}×{}]·[{out_dim}]ᵀ act {act:?} residual {}", p.in_dim, residual.is_some());
                let fused = linear_on(&Cpu, p.clone(), x, rows, act, residual);
                let reference = linear_on(&Reference, p.clone(), x, rows, act, residual);
                assert_close(&fused, &reference, 2e-5, &what);
            }
        }
    }
}

#[test]
fn layer_norm_fused_into_the_quantization_matches_norm_then_product() {
    for &(rows, width, out_dim) in &[(1, 32, 16), (5, 768, 2304), (197, 768, 3072), (40, 64, 17)] {
        let norm = NormParams { weight: values(1, width), bias: values(2, width), eps: 1e-5 };
        // Rows with an offset and a spread, as residual streams have.
        let x: Vec<f32> = values(3, rows * width).iter().enumerate().map(|(i, v)| v * 3.0 + (i % 7) as f32).collect();
        let residual = values(4, rows * out_dim);
        for p in [q8(5, out_dim, width, true), dense(6, out_dim, width, false)] {
            let fused = {
                let (layer, norm) = (Cpu.linear(p.clone()).unwrap(), Cpu.norm(norm.clone()).unwrap());
                let (xt, rt) = (Cpu.upload(&x, rows, width).unwrap(), Cpu.upload(&residual, rows, out_dim).unwrap());
                read(&Cpu, &Cpu.norm_linear_forward(&xt, &norm, &layer, Some(Activation::QuickGelu), Some(&rt)).unwrap())
            };
            let reference = {
                let (layer, norm) = (Reference.linear(p.clone()).unwrap(), Reference.norm(norm.clone()).unwrap());
                let (xt, rt) = (Reference.upload(&x, rows, width).unwrap(), Reference.upload(&residual, rows, out_dim).unwrap());
                let normed = Reference.layer_norm(&xt, &norm).unwrap();
                read(&Reference, &Reference.linear_forward(&normed, &layer, Some(Activation::QuickGelu), Some(&rt)).unwrap())
            };
            // q8_0: the layer norm's f32 output is quantized on both sides; where the two norms round a value a
            // ulp apart the int8 step may differ, so the product is held to the quantization's scale.
            let tolerance = if matches!(p.matrix, Matrix::Quantized(_)) { 2e-3 } else { 2e-5 };
            assert_close(&fused, &reference, tolerance, &format!("norm → product [{rows}×{width}]·[{out_dim}]ᵀ"));
        }
    }
}

#[test]
fn attention_norms_and_gathers_match_the_reference() {
    let names = ["gather + add rows", "layer norm", "attention", "first tokens", "first queries' attention", "l2 normalize"];
    for &(batch, seq, heads, hidden, masked) in &[
        (1, 1, 1, 8, false),
        (2, 7, 2, 64, true),
        (32, 52, 12, 768, true),
        (1, 197, 12, 768, false),
        (2, 197, 12, 768, false),
        (1, 300, 4, 96, true),
        (3, 17, 3, 48, true),
    ] {
        let fused = pipeline_on(&Cpu, batch, seq, heads, hidden, masked);
        let reference = pipeline_on(&Reference, batch, seq, heads, hidden, masked);
        for ((f, r), name) in fused.iter().zip(&reference).zip(names) {
            assert_close(f, r, 2e-5, &format!("{name}, batch {batch} seq {seq} heads {heads} hidden {hidden} mask {masked}"));
        }
        // The towers' last layer computes only the first queries: the same bits as the full attention's first
        // rows, so skipping the others changes no embedding.
        assert_eq!(fused[4], fused[3], "first queries' attention, batch {batch} seq {seq} heads {heads} mask {masked}");
    }
}

#[test]
fn bad_shapes_are_errors() {
    let table = Cpu.table(&tensor(values(1, 4 * 8), 4, 8)).unwrap();
    assert!(Cpu.gather(&table, &[0, 4]).err().unwrap().to_string().contains("token id 4"));
    let x = Cpu.upload(&values(2, 3 * 8), 3, 8).unwrap();
    let layer = Cpu.linear(LinearParams::dense(tensor(values(3, 16 * 9), 16, 9)).unwrap()).unwrap();
    assert!(Cpu.linear_forward(&x, &layer, None, None).err().unwrap().to_string().contains("input width 9"));
    assert!(Cpu.upload(&values(2, 5), 2, 3).is_err());
}

/// `tuwen --threads 1` and `--threads 2` print the same embeddings, to the last bit, for q8_0 and f32.
#[test]
fn embeddings_do_not_depend_on_the_thread_count() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("tiny-q8_0.gguf");
    tuwen::quantize::quantize_model(&tiny_model(), "q8_0".parse().unwrap(), Towers::Both, &gguf).unwrap();
    let image = fixtures().join("images/rgb.png");
    for model in [gguf.as_path(), tiny_model().as_path()] {
        let embed = |threads: &str| {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_tuwen"))
                .args(["--threads", threads, "--backend", "cpu", "embed", "--model", model.to_str().unwrap()])
                .args(["--text", "一只猫坐在窗台上晒太阳", "--text", "猫", "--image", image.to_str().unwrap()])
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            out.stdout
        };
        let one = embed("1");
        assert!(!one.is_empty());
        assert_eq!(one, embed("2"), "{}: --threads 1 and 2 differ", model.display());
        assert_eq!(one, embed("3"), "{}: --threads 1 and 3 differ", model.display());
    }
}
