//! The CPU backend's f32 work between the q8_0 products: dense (f32) products, layer norm, attention per
//! (sequence, head), L2 norm. Each value is reduced in a fixed order written here (never by a library whose
//! blocking depends on the CPU's caches), so the results are the same bits on every CPU, for any number of
//! threads, and in wasm; the loops are shaped to vectorise (fixed-width accumulator arrays).

use crate::config::Activation;
use crate::model::math::{activate, exp, larger, wide_vectors};
use crate::model::backend::cpu::team::{parallel_for, parallel_ranges};

/// Accumulator lanes of the reductions: wide enough for one AVX2 register, the same order on any width.
const LANES: usize = 8;

/// `Σ a[i]·b[i]` in `LANES` interleaved partial sums, then those summed in order.
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let (ac, bc) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).fold(0.0, |s, v| s + v);
    for (x, y) in ac.zip(bc) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().fold(0.0, |s, v| s + v) + tail
}

#[inline(always)]
fn sum(a: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = a.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().fold(0.0, |s, v| s + v);
    for x in chunks {
        for l in 0..LANES {
            acc[l] += x[l];
        }
    }
    acc.iter().fold(0.0, |s, v| s + v) + tail
}

/// The largest of `a` (NaN skipped; `−∞` when empty), in `LANES` running maxima so that it vectorises.
#[inline(always)]
fn largest(a: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = a.chunks_exact(LANES);
    let tail = chunks.remainder().iter().fold(f32::NEG_INFINITY, |m, &v| larger(m, v));
    for x in chunks {
        for l in 0..LANES {
            acc[l] = larger(acc[l], x[l]);
        }
    }
    acc.iter().fold(tail, |m, &v| larger(m, v))
}

/// What a product does to each value it stores: `+ bias`, then the activation, then `+ residual`.
#[inline(always)]
pub fn epilogue(row: &mut [f32], bias: Option<&[f32]>, act: Option<Activation>, residual: Option<&[f32]>) {
    if let Some(b) = bias {
        for (v, b) in row.iter_mut().zip(b) {
            *v += b;
        }
    }
    if let Some(act) = act {
        for v in row.iter_mut() {
            *v = activate(act, *v);
        }
    }
    if let Some(r) = residual {
        for (v, r) in row.iter_mut().zip(r) {
            *v += r;
        }
    }
}

/// Rows per dense job, and the register block of the dense kernel.
const DENSE_ROWS: usize = 4;
const DENSE_COLUMNS: usize = 16;

/// Weights `[out, in]` (row-major) → blocks of `DENSE_COLUMNS` output columns, each `[in][DENSE_COLUMNS]`
/// contiguous (the last block padded with zero columns), so the dense kernel reads its weights in order:
/// rows of a transposed `[in, out]` matrix lie `out` floats apart, a stride that maps them onto a few L1 sets.
pub fn pack_dense(weight: &[f32], out_dim: usize, in_dim: usize) -> Vec<f32> {
    assert_eq!(weight.len(), out_dim * in_dim);
    let blocks = out_dim.div_ceil(DENSE_COLUMNS);
    let mut packed = vec![0f32; blocks * in_dim * DENSE_COLUMNS];
    for (o, row) in weight.chunks_exact(in_dim).enumerate() {
        let (block, c) = (o / DENSE_COLUMNS, o % DENSE_COLUMNS);
        for (k, &w) in row.iter().enumerate() {
            packed[(block * in_dim + k) * DENSE_COLUMNS + c] = w;
        }
    }
    packed
}

/// `out[r] = epilogue(x[r] · Wᵀ)` with `packed` from [`pack_dense`]: each value summed over k in order, so
/// the f32 path is deterministic too.
#[allow(clippy::too_many_arguments)]
pub fn dense(
    x: &[f32],
    rows: usize,
    packed: &[f32],
    in_dim: usize,
    out_dim: usize,
    bias: Option<&[f32]>,
    act: Option<Activation>,
    residual: Option<&[f32]>,
    out: &mut [f32],
) {
    let out_ptr = SendPtr(out.as_mut_ptr());
    let row_groups = rows.div_ceil(DENSE_ROWS);
    let column_chunks = out_dim.div_ceil(64);
    parallel_for(row_groups * column_chunks, |job| {
        let (group, chunk) = (job / column_chunks, job % column_chunks);
        let r0 = group * DENSE_ROWS;
        let columns = chunk * 64..((chunk + 1) * 64).min(out_dim);
        dense_block(
            x,
            r0,
            (rows - r0).min(DENSE_ROWS),
            columns.start,
            columns.end,
            packed,
            in_dim,
            out_dim,
            bias,
            act,
            residual,
            out_ptr,
        );
    });
}

wide_vectors! {
    /// Rows `r0..r0 + nr` (≤ 4) × columns `c_start..c_end` (whole blocks but the last) of a dense product,
    /// 4 × 16 values at a time in registers.
    fn dense_block(x: &[f32], r0: usize, nr: usize, c_start: usize, c_end: usize, packed: &[f32], in_dim: usize, out_dim: usize,
        bias: Option<&[f32]>, act: Option<Activation>, residual: Option<&[f32]>, out: SendPtr) {
        // A group of fewer than 4 rows repeats its last row in the spare slots (computed, not stored), so
        // the loop below is always 4 × 16 sums in registers.
        let rows: [&[f32]; DENSE_ROWS] = std::array::from_fn(|r| &x[(r0 + r.min(nr - 1)) * in_dim..][..in_dim]);
        let mut c0 = c_start;
        while c0 < c_end {
            let nc = (c_end - c0).min(DENSE_COLUMNS);
            let block = &packed[(c0 / DENSE_COLUMNS) * in_dim * DENSE_COLUMNS..][..in_dim * DENSE_COLUMNS];
            let mut acc = [[0f32; DENSE_COLUMNS]; DENSE_ROWS];
            for (k, w) in (0..in_dim).zip(block.chunks_exact(DENSE_COLUMNS)) {
                let w: &[f32; DENSE_COLUMNS] = w.try_into().unwrap();
                for (acc, row) in acc.iter_mut().zip(&rows) {
                    let xv = row[k];
                    for c in 0..DENSE_COLUMNS {
                        acc[c] += xv * w[c];
                    }
                }
            }
            for (r, acc) in acc.iter_mut().enumerate().take(nr) {
                let row = r0 + r;
                let v = &mut acc[..nc];
                epilogue(v, bias.map(|b| &b[c0..c0 + nc]), act, residual.map(|res| &res[row * out_dim + c0..][..nc]));
                // SAFETY: jobs cover disjoint (row group, column chunk) blocks of `out`.
                unsafe { std::ptr::copy_nonoverlapping(v.as_ptr(), out.at(row * out_dim + c0), nc) };
            }
            c0 += nc;
        }
    }
}

/// One row's layer norm: `(x − mean) / √(var + eps) · weight + bias` (biased variance, as PyTorch).
#[inline(always)]
pub fn layer_norm_row(x: &[f32], weight: &[f32], bias: &[f32], eps: f32, out: &mut [f32]) {
    let n = x.len() as f32;
    let mean = sum(x) / n;
    for (o, v) in out.iter_mut().zip(x) {
        *o = v - mean;
    }
    let var = dot(out, out) / n;
    let inv = 1.0 / (var + eps).sqrt();
    for ((o, w), b) in out.iter_mut().zip(weight).zip(bias) {
        *o = *o * inv * w + b;
    }
}

/// Layer norm of every row of `x` `[rows, cols]` into `out`.
pub fn layer_norm(x: &[f32], cols: usize, weight: &[f32], bias: &[f32], eps: f32, out: &mut [f32]) {
    let rows = x.len() / cols;
    let out_ptr = SendPtr(out.as_mut_ptr());
    const CHUNK: usize = 16;
    parallel_ranges(rows, CHUNK, |range| {
        layer_norm_rows(x, cols, range.start, range.end, weight, bias, eps, out_ptr);
    });
}

wide_vectors! {
    fn layer_norm_rows(x: &[f32], cols: usize, start: usize, end: usize, weight: &[f32], bias: &[f32], eps: f32, out: SendPtr) {
        for row in start..end {
            // SAFETY: each row is written by one job.
            let dst = unsafe { std::slice::from_raw_parts_mut(out.at(row * cols), cols) };
            layer_norm_row(&x[row * cols..][..cols], weight, bias, eps, dst);
        }
    }
}

/// Every row scaled to unit L2 norm (norms below 1e-12 clamped, as `F.normalize`).
pub fn l2_normalize(x: &mut [f32], cols: usize) {
    for row in x.chunks_exact_mut(cols) {
        let norm = dot(row, row).sqrt().max(1e-12);
        for v in row.iter_mut() {
            *v /= norm;
        }
    }
}

/// Scaled dot-product attention of one batch over its fused `[batch·seq, 3·hidden]` query|key|value rows,
/// for the first `queries` tokens of each sequence (all `seq`, or 1), one job per (sequence, head) (see
/// [`attention_head`]) writing straight into the head's columns of `out` `[batch·queries, hidden]`. No
/// `[batch, heads, seq, seq]` tensor exists.
pub fn attention(qkv: &[f32], batch: usize, seq: usize, queries: usize, heads: usize, mask_bias: Option<&[f32]>, out: &mut [f32]) {
    let hidden = qkv.len() / (batch * seq) / 3;
    let out_ptr = SendPtr(out.as_mut_ptr());
    parallel_for(batch * heads, |job| {
        let (b, h) = (job / heads, job % heads);
        SCORES.with(|scratch| {
            attention_head(
                qkv,
                b,
                h,
                seq,
                queries,
                hidden,
                hidden / heads,
                mask_bias.map(|m| &m[b * seq..][..seq]),
                &mut scratch.borrow_mut(),
                out_ptr,
            )
        });
    });
}

/// Keys × queries per register block of the score loop: 4 × 16 sums (4 AVX-512 or 8 AVX2 registers), enough
/// independent chains to hide the add latency, each key vector loaded once for 4 queries. In wasm 4 × 8
/// (8 of the 16 SIMD registers V8 allocates from; 4 × 16 spilled). Each score is summed over the head's
/// dimensions in the same order either way, so the block shape does not change the bits.
#[cfg(not(target_arch = "wasm32"))]
const KEYS: usize = 16;
#[cfg(target_arch = "wasm32")]
const KEYS: usize = 8;
const QUERIES: usize = 4;
/// Output dimensions per register block of `P·V`: a whole 64-dimension head natively (4 AVX-512 registers
/// per query), 16 in wasm (4 registers per query; a whole head was 32 registers for two queries).
#[cfg(not(target_arch = "wasm32"))]
const VALUES: usize = 64;
#[cfg(target_arch = "wasm32")]
const VALUES: usize = 16;
/// Queries per pass of `P·V` over the values: 2 × 64 running sums fit AVX-512's registers (8) and AVX2's (16).
const PAIR: usize = 2;

wide_vectors! {
    /// One (sequence, head): the head's keys packed once into blocks of 16 (`[block][head_dim][16]`), so the
    /// score loop streams them in order with no bounds checks, each of 4 queries' dimensions broadcast from its
    /// row, and keeps 4 × 16 sums in registers (each score summed over the head's dimensions in order);
    /// scale + mask + softmax fused; `P·V` for 2 queries at once over a contiguous copy of the head's values.
    fn attention_head(qkv: &[f32], b: usize, h: usize, seq: usize, queries_per_sequence: usize, hidden: usize, head_dim: usize, mask: Option<&[f32]>,
        scratch: &mut Vec<f32>, out: SendPtr) {
        let scale = 1.0 / (head_dim as f32).sqrt();
        let row = |i: usize, part: usize| &qkv[(b * seq + i) * 3 * hidden + part * hidden + h * head_dim..][..head_dim];
        let padded = seq.div_ceil(KEYS) * KEYS;
        let block_len = head_dim * KEYS;
        scratch.resize(head_dim * padded + QUERIES * padded + seq * head_dim, 0.0);
        let (keys, rest) = scratch.split_at_mut(head_dim * padded);
        let (scores, values) = rest.split_at_mut(QUERIES * padded);
        // The head's values copied together too: in `qkv` their rows lie 3·hidden floats apart, a stride that
        // maps them onto a few L1 sets.
        for j in 0..seq {
            let block = &mut keys[(j / KEYS) * block_len..][..block_len];
            for (d, &k) in row(j, 1).iter().enumerate() {
                block[d * KEYS + j % KEYS] = k;
            }
            let (dst, src) = (&mut values[j * head_dim..][..head_dim], row(j, 2));
            if head_dim == VALUES {
                // A fixed-size copy is a few vector moves; `copy_from_slice` was a `memcpy` call per row.
                let dst: &mut [f32; VALUES] = dst.try_into().unwrap();
                *dst = src.try_into().unwrap();
            } else {
                dst.copy_from_slice(src);
            }
        }
        // The last block's spare keys are zero, so their (unused) scores stay finite.
        for j in seq..padded {
            for d in 0..head_dim {
                keys[(j / KEYS) * block_len + d * KEYS + j % KEYS] = 0.0;
            }
        }
        let mut inv = [0f32; QUERIES];
        for i0 in (0..queries_per_sequence).step_by(QUERIES) {
            let count = (queries_per_sequence - i0).min(QUERIES);
            // The 4 queries read in place, each dimension broadcast from its row (a copy transposed to
            // `[head_dim][4]` cost a tenth of the head in scalar moves). A last group of fewer than 4 repeats
            // its first query in the spare slots (computed, not used).
            let query_rows: [&[f32]; QUERIES] = std::array::from_fn(|n| row(if n < count { i0 + n } else { i0 }, 0));
            for (j0, block_keys) in (0..padded).step_by(KEYS).zip(keys.chunks_exact(block_len)) {
                let mut block = [[0f32; KEYS]; QUERIES];
                for (d, k) in block_keys.chunks_exact(KEYS).enumerate() {
                    let k: &[f32; KEYS] = k.try_into().unwrap();
                    // SAFETY: d < head_dim, the length of every query row (`row`).
                    let q: [f32; QUERIES] = std::array::from_fn(|n| unsafe { *query_rows[n].get_unchecked(d) });
                    for (block, &q) in block.iter_mut().zip(&q) {
                        for c in 0..KEYS {
                            block[c] += q * k[c];
                        }
                    }
                }
                for (n, block) in block.iter().enumerate().take(count) {
                    scores[n * padded + j0..][..KEYS].copy_from_slice(block);
                }
            }
            for n in 0..count {
                let scores = &mut scores[n * padded..][..seq];
                match mask {
                    Some(mask) => scores.iter_mut().zip(mask).for_each(|(s, m)| *s = *s * scale + m),
                    None => scores.iter_mut().for_each(|s| *s *= scale),
                }
                let max = largest(scores);
                for s in scores.iter_mut() {
                    *s = exp(*s - max);
                }
                inv[n] = 1.0 / sum(scores);
            }
            // P·V, PAIR queries and VALUES output dimensions at a time, summed in registers over every key in
            // key order; each value row loaded once for both queries (an odd last query pairs with itself).
            for n0 in (0..count).step_by(PAIR) {
                let first = &scores[n0 * padded..][..seq];
                let second = &scores[(n0 + 1).min(count - 1) * padded..][..seq];
                for d0 in (0..head_dim).step_by(VALUES) {
                    let width = (head_dim - d0).min(VALUES);
                    let (mut a, mut z) = ([0f32; VALUES], [0f32; VALUES]);
                    if head_dim % VALUES == 0 {
                        for ((v, &p), &q) in values.chunks_exact(head_dim).zip(first).zip(second) {
                            let v: &[f32; VALUES] = v[d0..][..VALUES].try_into().unwrap();
                            for c in 0..VALUES {
                                a[c] += p * v[c];
                                z[c] += q * v[c];
                            }
                        }
                    } else {
                        for ((v, &p), &q) in values.chunks_exact(head_dim).zip(first).zip(second) {
                            for ((a, z), v) in a.iter_mut().zip(z.iter_mut()).zip(&v[d0..d0 + width]) {
                                *a += p * v;
                                *z += q * v;
                            }
                        }
                    }
                    for (n, sums) in [a, z].iter().enumerate().take(count - n0) {
                        let row = i0 + n0 + n;
                        // SAFETY: the (sequence, head) job owns these columns of these rows.
                        let at = (b * queries_per_sequence + row) * hidden + h * head_dim + d0;
                        let dst = unsafe { std::slice::from_raw_parts_mut(out.at(at), width) };
                        for (d, s) in dst.iter_mut().zip(sums) {
                            *d = s * inv[n0 + n];
                        }
                    }
                }
            }
        }
    }
}

thread_local! {
    /// One head's packed keys, 4 queries' scores and the head's values, per thread.
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

#[derive(Clone, Copy)]
pub struct SendPtr(*mut f32);
impl SendPtr {
    /// A method, so closures capture the (Sync) wrapper rather than the raw pointer.
    unsafe fn at(self, offset: usize) -> *mut f32 {
        self.0.add(offset)
    }
}
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
