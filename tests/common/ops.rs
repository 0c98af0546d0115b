//! Helpers for comparing backends op by op: seeded values, and each op run the way an encoder runs it.

use tuwen::config::Activation;
use tuwen::model::backend::{AttentionShape, Backend};
use tuwen::model::params::{LinearParams, NormParams};
use tuwen::util::resolve_now;

use super::max_abs_diff;

pub fn values(seed: u64, n: usize) -> Vec<f32> {
    tuwen::model::random::uniform(seed, n)
}

pub fn tensor(data: Vec<f32>, rows: usize, cols: usize) -> candle_core::Tensor {
    candle_core::Tensor::from_vec(data, (rows, cols), &candle_core::Device::Cpu).unwrap()
}

/// Results of one op on two backends agree within `tolerance` (relative to the values' scale).
pub fn assert_close(got: &[f32], want: &[f32], tolerance: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
    let d = max_abs_diff(got, want);
    assert!(d <= tolerance * scale, "{what}: max |Δ| = {d:e} (scale {scale})");
    assert!(got.iter().all(|v| v.is_finite()), "{what}: non-finite values");
}

pub fn read<B: Backend>(b: &B, t: &B::Tensor) -> Vec<f32> {
    resolve_now(b.read(t)).unwrap().unwrap()
}

/// A linear layer, its epilogue (activation or residual) and the q8_0/f32 weights, on one backend.
pub fn linear_on<B: Backend>(
    b: &B,
    p: LinearParams,
    x: &[f32],
    rows: usize,
    act: Option<Activation>,
    residual: Option<&[f32]>,
) -> Vec<f32> {
    let out_dim = p.out_dim;
    let layer = b.linear(p.clone()).unwrap();
    let xt = b.upload(x, rows, p.in_dim).unwrap();
    let rt = residual.map(|r| b.upload(r, rows, out_dim).unwrap());
    read(b, &b.linear_forward(&xt, &layer, act, rt.as_ref()).unwrap())
}

/// The other ops in the order an encoder uses them, on one backend: gather + add rows → layer norm →
/// attention (with and without mask) → first tokens, and attention of the first queries alone → L2 norm.
pub fn pipeline_on<B: Backend>(b: &B, batch: usize, seq: usize, heads: usize, hidden: usize, masked: bool) -> Vec<Vec<f32>> {
    let vocab = 50;
    let table = b.table(&tensor(values(1, vocab * hidden), vocab, hidden)).unwrap();
    let positions = b.table(&tensor(values(2, seq * hidden), seq, hidden)).unwrap();
    let ids: Vec<u32> = (0..batch * seq).map(|i| ((i * 7 + 3) % vocab) as u32).collect();
    let x = b.add_rows(b.gather(&table, &ids).unwrap(), &positions, seq).unwrap();
    let norm = b.norm(NormParams { weight: values(3, hidden), bias: values(4, hidden), eps: 1e-5 }).unwrap();
    let normed = b.layer_norm(&x, &norm).unwrap();
    // Scores scaled up so the softmax is far from uniform and the mask matters.
    let qkv: Vec<f32> = values(5, batch * seq * 3 * hidden).iter().map(|v| v * 4.0).collect();
    let qkv = b.upload(&qkv, batch * seq, 3 * hidden).unwrap();
    let mask: Vec<f32> = (0..batch * seq).map(|i| if i % seq < seq - (i / seq) % seq.min(3) { 0.0 } else { f32::MIN }).collect();
    let mask = b.upload(&mask, batch, seq).unwrap();
    let shape = AttentionShape::new(batch, seq, heads);
    let attended = b.attention(&qkv, shape, masked.then_some(&mask)).unwrap();
    let first = b.first_tokens(&attended, seq).unwrap();
    let first_queries = b.attention(&qkv, shape.first_queries(), masked.then_some(&mask)).unwrap();
    let unit = b.l2_normalize(&first).unwrap();
    vec![read(b, &x), read(b, &normed), read(b, &attended), read(b, &first), read(b, &first_queries), read(b, &unit)]
}
