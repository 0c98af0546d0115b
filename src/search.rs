//! Exact cosine top-k over a bundle: one query as a SIMD scan, many queries as a blocked matrix
//! product that never holds the full score matrix. Optional dual-softmax re-ranking over all queries.

use crate::bundle::Rows;
use anyhow::{bail, Result};
use half::f16;
use half::slice::HalfFloatSliceExt;

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Hit {
    /// Row in the bundle.
    pub index: usize,
    /// Cosine similarity (or the re-ranked score with `Rerank::DualSoftmax`).
    pub score: f32,
}

/// Re-ranking that uses every query's scores against each gallery item.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Rerank {
    #[default]
    None,
    /// `s · softmax_over_queries(τ·s)`: dampens gallery items that match every query ("hubs").
    DualSoftmax { temperature: f32 },
}

impl std::str::FromStr for Rerank {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "none" => Ok(Self::None),
            // CLIP's learned logit scale is ~100.
            "dual-softmax" => Ok(Self::DualSoftmax { temperature: 100.0 }),
            other => bail!("unknown re-ranking {other:?} (expected none or dual-softmax)"),
        }
    }
}

/// The k best (score, index) pairs seen so far, best first; ties keep the lower index.
struct TopK {
    k: usize,
    items: Vec<Hit>,
}

impl TopK {
    fn new(k: usize) -> Self {
        Self { k, items: Vec::with_capacity(k + 1) }
    }

    #[inline]
    fn push(&mut self, index: usize, score: f32) {
        let score = if score.is_nan() { f32::NEG_INFINITY } else { score };
        if self.items.len() == self.k && self.items.last().is_none_or(|l| score <= l.score) {
            return;
        }
        let at = self.items.partition_point(|h| h.score > score || (h.score == score && h.index < index));
        self.items.insert(at, Hit { index, score });
        self.items.truncate(self.k);
    }

    fn merge(mut self, other: TopK) -> TopK {
        for h in other.items {
            self.push(h.index, h.score);
        }
        self
    }
}

#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight independent accumulators let the compiler vectorise without reassociating one sum.
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

/// f16 row · f32 query with F16C conversion fused into FMA (x86-64 with AVX2, F16C and FMA).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c,fma")]
unsafe fn dot_f16_avx2(row: &[f16], query: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = row.len() / 32 * 32;
    let (r, q) = (row.as_ptr() as *const __m128i, query.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i < n {
        for (j, a) in acc.iter_mut().enumerate() {
            let h = _mm256_cvtph_ps(_mm_loadu_si128(r.add(i / 8 + j)));
            *a = _mm256_fmadd_ps(h, _mm256_loadu_ps(q.add(i + 8 * j)), *a);
        }
        i += 32;
    }
    let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), sum);
    lanes.iter().sum::<f32>() + row[n..].iter().zip(&query[n..]).map(|(a, b)| a.to_f32() * b).sum::<f32>()
}

/// i8 row · f32 query (x86-64 with AVX2 and FMA); the caller applies the row's scale.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_i8_avx2(row: &[i8], query: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = row.len() / 16 * 16;
    let (r, q) = (row.as_ptr(), query.as_ptr());
    let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut i = 0;
    while i < n {
        let lo = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(r.add(i) as *const __m128i)));
        let hi = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(r.add(i + 8) as *const __m128i)));
        a0 = _mm256_fmadd_ps(lo, _mm256_loadu_ps(q.add(i)), a0);
        a1 = _mm256_fmadd_ps(hi, _mm256_loadu_ps(q.add(i + 8)), a1);
        i += 16;
    }
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_add_ps(a0, a1));
    lanes.iter().sum::<f32>() + row[n..].iter().zip(&query[n..]).map(|(a, b)| *a as f32 * b).sum::<f32>()
}

#[cfg(target_arch = "x86_64")]
fn has_avx2_f16c() -> bool {
    static DETECTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DETECTED.get_or_init(|| {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("f16c") && is_x86_feature_detected!("fma")
    })
}

/// Scores of rows `[start, start + n)` against one query, written to `out`.
fn score_rows(rows: &Rows, dim: usize, query: &[f32], start: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_f16c() {
        for (j, o) in out.iter_mut().enumerate() {
            let i = start + j;
            // SAFETY: the CPU features were detected by has_avx2_f16c.
            *o = match rows {
                Rows::F16(v) => unsafe { dot_f16_avx2(&v[i * dim..(i + 1) * dim], query) },
                Rows::Int8 { values, scales } => scales[i] * unsafe { dot_i8_avx2(&values[i * dim..(i + 1) * dim], query) },
            };
        }
        return;
    }
    let mut buf = vec![0f32; dim];
    for (j, o) in out.iter_mut().enumerate() {
        let i = start + j;
        *o = match rows {
            Rows::F16(v) => {
                // F16C-accelerated conversion (runtime-detected by `half`), then an f32 dot product.
                v[i * dim..(i + 1) * dim].convert_to_f32_slice(&mut buf);
                dot(&buf, query)
            }
            Rows::Int8 { values, scales } => {
                for (b, q) in buf.iter_mut().zip(&values[i * dim..(i + 1) * dim]) {
                    *b = *q as f32;
                }
                dot(&buf, query) * scales[i]
            }
        };
    }
}

fn row_count(rows: &Rows, dim: usize) -> usize {
    match rows {
        Rows::F16(v) => v.len() / dim,
        Rows::Int8 { scales, .. } => scales.len(),
    }
}

/// Rows per parallel task in a single-query scan.
const SCAN_CHUNK: usize = 2048;

/// The `k` rows most similar to one L2-normalised query.
pub fn top_k(rows: &Rows, dim: usize, query: &[f32], k: usize) -> Result<Vec<Hit>> {
    if query.len() != dim {
        bail!("query has {} dimensions, the bundle {dim}", query.len());
    }
    if query.iter().any(|x| !x.is_finite()) {
        bail!("the query embedding holds a non-finite value (a damaged model?): nothing to rank by");
    }
    let n = row_count(rows, dim);
    let scan = |chunk: usize| {
        let start = chunk * SCAN_CHUNK;
        let len = SCAN_CHUNK.min(n - start);
        let mut scores = vec![0f32; len];
        score_rows(rows, dim, query, start, &mut scores);
        let mut top = TopK::new(k);
        for (j, s) in scores.into_iter().enumerate() {
            top.push(start + j, s);
        }
        top
    };
    let chunks = n.div_ceil(SCAN_CHUNK);
    #[cfg(not(target_arch = "wasm32"))]
    let top = {
        use rayon::prelude::*;
        (0..chunks).into_par_iter().map(scan).reduce(|| TopK::new(k), TopK::merge)
    };
    #[cfg(target_arch = "wasm32")]
    let top = (0..chunks).map(scan).fold(TopK::new(k), TopK::merge);
    // Cosines of unit vectors lie in [-1, 1]; f16/int8 storage can round a hair past 1.
    Ok(top.items.into_iter().map(|h| Hit { score: h.score.clamp(-1.0, 1.0), ..h }).collect())
}

/// Gallery rows converted to f32 per block, and queries per block, in the many-query product.
const GALLERY_BLOCK: usize = 4096;
const QUERY_BLOCK: usize = 1024;

fn gallery_block(rows: &Rows, dim: usize, start: usize, len: usize) -> Vec<f32> {
    let mut out = vec![0f32; len * dim];
    match rows {
        Rows::F16(v) => v[start * dim..(start + len) * dim].convert_to_f32_slice(&mut out),
        Rows::Int8 { values, scales } => {
            for (r, row) in out.chunks_exact_mut(dim).enumerate() {
                let s = scales[start + r];
                for (o, q) in row.iter_mut().zip(&values[(start + r) * dim..(start + r + 1) * dim]) {
                    *o = *q as f32 * s;
                }
            }
        }
    }
    out
}

/// Calls `f(query_start, gallery_start, scores)` for every block of the query × gallery score matrix,
/// `scores` being `[q_len × g_len]` row-major.
fn for_each_block(
    rows: &Rows,
    dim: usize,
    queries: &[f32],
    mut f: impl FnMut(usize, usize, usize, &[f32]),
) -> Result<()> {
    use candle_core::{Device, Tensor};
    let (n, m) = (row_count(rows, dim), queries.len() / dim);
    for g in (0..n).step_by(GALLERY_BLOCK) {
        let g_len = GALLERY_BLOCK.min(n - g);
        let block = Tensor::from_vec(gallery_block(rows, dim, g, g_len), (g_len, dim), &Device::Cpu)?;
        let block_t = block.t()?;
        for q in (0..m).step_by(QUERY_BLOCK) {
            let q_len = QUERY_BLOCK.min(m - q);
            let qs = Tensor::from_slice(&queries[q * dim..(q + q_len) * dim], (q_len, dim), &Device::Cpu)?;
            let scores = qs.matmul(&block_t)?.flatten_all()?.to_vec1::<f32>()?;
            f(q, g, g_len, &scores);
        }
    }
    Ok(())
}

/// The `k` best rows for each of many queries (row-major `[m × dim]`), blocked.
pub fn top_k_many(rows: &Rows, dim: usize, queries: &[Vec<f32>], k: usize, rerank: Rerank) -> Result<Vec<Vec<Hit>>> {
    if let Some(bad) = queries.iter().position(|q| q.len() != dim) {
        bail!("query {bad} has {} dimensions, the bundle {dim}", queries[bad].len());
    }
    if let Some(bad) = queries.iter().position(|q| q.iter().any(|x| !x.is_finite())) {
        bail!("query {bad}'s embedding holds a non-finite value (a damaged model?): nothing to rank by");
    }
    let flat: Vec<f32> = queries.iter().flatten().copied().collect();
    let n = row_count(rows, dim);
    // Dual softmax needs, per gallery row, log Σ_q exp(τ·s): a first pass computes it block by block.
    let column_lse = match rerank {
        Rerank::None => None,
        Rerank::DualSoftmax { temperature } => {
            let (mut max, mut sum) = (vec![f32::NEG_INFINITY; n], vec![0f32; n]);
            for_each_block(rows, dim, &flat, |_, g, g_len, scores| {
                for row in scores.chunks_exact(g_len) {
                    for (j, s) in row.iter().enumerate() {
                        let x = temperature * s;
                        let c = g + j;
                        if x > max[c] {
                            sum[c] = sum[c] * (max[c] - x).exp() + 1.0;
                            max[c] = x;
                        } else {
                            sum[c] += (x - max[c]).exp();
                        }
                    }
                }
            })?;
            Some((temperature, max.iter().zip(&sum).map(|(m, s)| m + s.ln()).collect::<Vec<f32>>()))
        }
    };
    let mut tops: Vec<TopK> = (0..queries.len()).map(|_| TopK::new(k)).collect();
    for_each_block(rows, dim, &flat, |q, g, g_len, scores| {
        for (i, row) in scores.chunks_exact(g_len).enumerate() {
            let top = &mut tops[q + i];
            match &column_lse {
                None => row.iter().enumerate().for_each(|(j, s)| top.push(g + j, *s)),
                Some((t, lse)) => {
                    row.iter().enumerate().for_each(|(j, s)| top.push(g + j, s * (t * s - lse[g + j]).exp()))
                }
            }
        }
    })?;
    Ok(tops.into_iter().map(|t| t.items).collect())
}

/// f16 rows for tests and benchmarks that build galleries in memory.
pub fn to_f16(rows: &[f32]) -> Vec<f16> {
    rows.iter().map(|x| f16::from_f32(*x)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gallery(n: usize, dim: usize, seed: u64) -> Vec<f32> {
        // A small LCG: deterministic pseudo-random unit rows.
        let mut s = seed;
        let mut v: Vec<f32> = (0..n * dim)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5
            })
            .collect();
        for row in v.chunks_exact_mut(dim) {
            let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
            row.iter_mut().for_each(|x| *x /= norm);
        }
        v
    }

    fn brute(g: &[f32], dim: usize, q: &[f32], k: usize) -> Vec<usize> {
        let mut s: Vec<(f32, usize)> = g.chunks_exact(dim).map(|r| dot(r, q)).zip(0..).collect();
        s.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        s.into_iter().take(k).map(|x| x.1).collect()
    }

    #[test]
    fn single_and_many_queries_agree_with_brute_force() {
        let (n, dim) = (5000, 24);
        let g = gallery(n, dim, 1);
        let g16 = to_f16(&g);
        let g_exact: Vec<f32> = g16.iter().map(|x| x.to_f32()).collect();
        let rows = Rows::F16(&g16);
        let queries: Vec<Vec<f32>> = gallery(37, dim, 2).chunks(dim).map(<[f32]>::to_vec).collect();
        let many = top_k_many(&rows, dim, &queries, 7, Rerank::None).unwrap();
        for (q, hits) in queries.iter().zip(&many) {
            let expected = brute(&g_exact, dim, q, 7);
            let single: Vec<usize> = top_k(&rows, dim, q, 7).unwrap().iter().map(|h| h.index).collect();
            assert_eq!(single, expected);
            assert_eq!(hits.iter().map(|h| h.index).collect::<Vec<_>>(), expected);
            assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));
        }
    }

    #[test]
    fn int8_rows_rank_like_f32() {
        let (n, dim) = (800, 64);
        let g = gallery(n, dim, 3);
        let mut q8 = Vec::new();
        let scales: Vec<f32> = g.chunks(dim).map(|r| crate::bundle::quantize_row(r, &mut q8)).collect();
        let rows = Rows::Int8 { values: &q8, scales: &scales };
        let q = &gallery(1, dim, 4);
        let top: Vec<usize> = top_k(&rows, dim, q, 1).unwrap().iter().map(|h| h.index).collect();
        assert_eq!(top, brute(&g, dim, q, 1));
    }

    #[test]
    fn dual_softmax_demotes_a_hub() {
        // Item 0 is close to every query; items 1 and 2 each match one query a bit less.
        let dim = 3;
        let g = [0.7071f32, 0.7071, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0];
        let n: Vec<f32> = g.chunks(3).flat_map(|r| {
            let l = r.iter().map(|x| x * x).sum::<f32>().sqrt();
            r.iter().map(move |x| x / l).collect::<Vec<_>>()
        }).collect();
        let g16 = to_f16(&n);
        let rows = Rows::F16(&g16);
        let queries = vec![vec![0.9f32, 0.436, 0.0], vec![0.436, 0.9, 0.0]];
        let plain = top_k_many(&rows, dim, &queries, 1, Rerank::None).unwrap();
        assert_eq!((plain[0][0].index, plain[1][0].index), (0, 0));
        let reranked = top_k_many(&rows, dim, &queries, 1, "dual-softmax".parse().unwrap()).unwrap();
        assert_eq!((reranked[0][0].index, reranked[1][0].index), (1, 2));
    }

    #[test]
    fn top_k_keeps_lower_index_on_ties_and_sinks_nan() {
        let mut t = TopK::new(2);
        for (i, s) in [(0, 0.5), (1, f32::NAN), (2, 0.5), (3, 0.9)] {
            t.push(i, s);
        }
        assert_eq!(t.items.iter().map(|h| h.index).collect::<Vec<_>>(), vec![3, 0]);
    }
}

/// How several models' similarities become one ranking (the "vote" of several models).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fusion {
    /// The weighted mean of each model's scores standardised per query (z-scores over the gallery): models
    /// whose cosines live on different scales count alike.
    #[default]
    ZMean,
    /// Reciprocal-rank fusion: Σ weight / (60 + rank), ranks from 1; only the order of each model's scores counts.
    Rrf,
}

impl std::str::FromStr for Fusion {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "zmean" => Ok(Self::ZMean),
            "rrf" => Ok(Self::Rrf),
            other => bail!("unknown fusion {other:?} (expected zmean or rrf)"),
        }
    }
}

/// The constant of reciprocal-rank fusion (Cormack et al.).
pub const RRF_K: f32 = 60.0;

/// One model's part in a fused search: its gallery, its embeddings of the queries, its weight.
pub struct Side<'a> {
    pub rows: &'a Rows<'a>,
    pub dim: usize,
    pub queries: &'a [Vec<f32>],
    pub weight: f32,
}

/// Queries fused per block: each side's full score rows for them are held at once.
const FUSED_QUERY_BLOCK: usize = 64;

/// Each side's scores of queries `q0..q0+len` against its whole gallery, fused into `[len × n]`.
fn fused_block(sides: &[Side], n: usize, q0: usize, len: usize, fusion: Fusion) -> Result<Vec<f32>> {
    let total: f32 = sides.iter().map(|s| s.weight).sum();
    let mut fused = vec![0f32; len * n];
    for side in sides {
        let flat: Vec<f32> = side.queries[q0..q0 + len].iter().flatten().copied().collect();
        let mut scores = vec![0f32; len * n];
        for_each_block(side.rows, side.dim, &flat, |q, g, g_len, block| {
            for (i, row) in block.chunks_exact(g_len).enumerate() {
                scores[(q + i) * n + g..][..g_len].copy_from_slice(row);
            }
        })?;
        for (row, out) in scores.chunks_exact(n).zip(fused.chunks_exact_mut(n)) {
            let w = side.weight / total;
            match fusion {
                Fusion::ZMean => {
                    let mean = row.iter().map(|&s| s as f64).sum::<f64>() / n as f64;
                    let var = row.iter().map(|&s| (s as f64 - mean).powi(2)).sum::<f64>() / n as f64;
                    let std = var.sqrt();
                    for (o, &s) in out.iter_mut().zip(row) {
                        *o += w * if std > 0.0 { ((s as f64 - mean) / std) as f32 } else { 0.0 };
                    }
                }
                Fusion::Rrf => {
                    // Rank 1 is the best score; ties keep the lower index first, as `TopK` does.
                    let mut order: Vec<usize> = (0..n).collect();
                    order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
                    for (rank, &j) in order.iter().enumerate() {
                        out[j] += w / (RRF_K + (rank + 1) as f32);
                    }
                }
            }
        }
    }
    Ok(fused)
}

/// The `k` best gallery rows per query by the fused score of several models over the same gallery (row `i`
/// of every side is the same item) and the same queries. `Rerank::DualSoftmax` applies to the fused z-scores
/// (unit variance per query: temperature 1 instead of cosine's 100); with rank fusion it is refused (a sum of
/// reciprocal ranks has no temperature).
pub fn top_k_fused(sides: &[Side], k: usize, fusion: Fusion, rerank: Rerank) -> Result<Vec<Vec<Hit>>> {
    let Some(first) = sides.first() else { bail!("fusion needs at least one model") };
    let (n, m) = (row_count(first.rows, first.dim), first.queries.len());
    for (i, side) in sides.iter().enumerate() {
        if row_count(side.rows, side.dim) != n || side.queries.len() != m {
            bail!(
                "model {} has {} gallery rows and {} queries, model 1 {n} and {m}: fused models must rank the same items",
                i + 1,
                row_count(side.rows, side.dim),
                side.queries.len()
            );
        }
        if !(side.weight.is_finite() && side.weight > 0.0) {
            bail!("model {}'s weight must be a positive number, got {}", i + 1, side.weight);
        }
        if let Some(bad) = side.queries.iter().position(|q| q.len() != side.dim) {
            bail!("model {}: query {bad} has {} dimensions, its gallery {}", i + 1, side.queries[bad].len(), side.dim);
        }
        if let Some(bad) = side.queries.iter().position(|q| q.iter().any(|x| !x.is_finite())) {
            bail!("model {}: query {bad}'s embedding holds a non-finite value (a damaged model?)", i + 1);
        }
    }
    let temperature = match (rerank, fusion) {
        (Rerank::None, _) => None,
        (Rerank::DualSoftmax { .. }, Fusion::ZMean) => Some(1f32),
        (Rerank::DualSoftmax { .. }, Fusion::Rrf) => {
            bail!("--rerank dual-softmax needs scores on a scale (--fuse zmean), not reciprocal ranks (--fuse rrf)")
        }
    };
    let blocks = (0..m).step_by(FUSED_QUERY_BLOCK).map(|q0| (q0, FUSED_QUERY_BLOCK.min(m - q0)));
    // Dual softmax: per gallery item, log Σ_queries exp(τ·fused), from a first pass over the blocks.
    let lse = match temperature {
        None => None,
        Some(t) => {
            let (mut max, mut sum) = (vec![f32::NEG_INFINITY; n], vec![0f32; n]);
            for (q0, len) in blocks.clone() {
                for row in fused_block(sides, n, q0, len, fusion)?.chunks_exact(n) {
                    for (c, s) in row.iter().enumerate() {
                        let x = t * s;
                        if x > max[c] {
                            sum[c] = sum[c] * (max[c] - x).exp() + 1.0;
                            max[c] = x;
                        } else {
                            sum[c] += (x - max[c]).exp();
                        }
                    }
                }
            }
            Some((t, max.iter().zip(&sum).map(|(m, s)| m + s.ln()).collect::<Vec<f32>>()))
        }
    };
    let mut out = Vec::with_capacity(m);
    for (q0, len) in blocks {
        for row in fused_block(sides, n, q0, len, fusion)?.chunks_exact(n) {
            let mut top = TopK::new(k);
            match &lse {
                None => row.iter().enumerate().for_each(|(j, s)| top.push(j, *s)),
                Some((t, lse)) => row.iter().enumerate().for_each(|(j, s)| top.push(j, s * (t * s - lse[j]).exp())),
            }
            out.push(top.items);
        }
    }
    Ok(out)
}
