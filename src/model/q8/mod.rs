//! The q8_0 matrix product both towers spend their time in: activations `[rows, in]` × packed weights
//! `[out, in]` → `[rows, out]`, for encoder-sized inputs (52–1600 rows × 768–3072).
//!
//! candle's `QMatMul` is built for one-row LLM decoding: on wasm it takes one dot product per (row, column)
//! pair and re-reads every weight for every row. Here the weights are repacked once into 16-column tiles and
//! each tile is multiplied against several activation rows while it is in registers and L1. The arithmetic is
//! q8_0's: activations are quantized per 32-value block (f32 scale), products are summed exactly in i32 per
//! block and scaled by both blocks' scales. One layout serves every kernel:
//! AVX-512 VNNI natively (`vpdpbusd`), simd128 in the browser (`i32x4.dot_i16x8_s`), and a portable loop.

#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "wasm32")]
mod simd128;

use half::f16;

/// Values per quantization block (q8_0's block size).
pub const BLOCK: usize = 32;
/// Output columns per packed weight tile: one AVX-512 register of i32 lanes.
pub const TILE: usize = 16;
/// Bytes of one tile × one block: 8 groups of 4 k-values × 16 columns × 4 bytes.
const TILE_BLOCK_BYTES: usize = BLOCK * TILE;
/// Weights are stored `+ 128` as u8: the unsigned operand of u8 × i8 dot products (`vpdpbusd`); the `128·Σx`
/// this adds is taken back per block from the activation block sums.
const OFFSET: i32 = 128;

/// A weight matrix `[out, in]` packed for the kernels. `in` must be a multiple of [`BLOCK`]; `out` is padded
/// to whole tiles with zero columns.
#[derive(Debug)]
pub struct Q8Matrix {
    out_dim: usize,
    in_dim: usize,
    /// `[tile][block][k/4 group (8)][column (16)][4]`, each weight + 128.
    quants: Vec<u8>,
    /// `[tile][block][column (16)]`.
    scales: Vec<f32>,
}

/// Activations quantized per 32-value block, as the kernels read them.
pub struct Q8Rows {
    rows: usize,
    blocks: usize,
    /// `[row][in]`
    quants: Vec<i8>,
    /// `[row][block]`
    scales: Vec<f32>,
    /// `[row][block]`: `128 · Σ quants` of the block (the offset's contribution, subtracted per block).
    offsets: Vec<i32>,
    /// `quants` widened to i16 once, for simd128's i16 dot products.
    #[cfg(target_arch = "wasm32")]
    wide: Vec<i16>,
}

/// Quantizes one block q8_0's way: scale = max |x| / 127, values rounded to nearest (ties to even).
#[inline(always)]
fn quantize_block(x: &[f32], out: &mut [i8]) -> f32 {
    // Eight running maxima, so the reduction vectorises.
    let mut lanes = [0f32; 8];
    for chunk in x.chunks_exact(8) {
        for (m, v) in lanes.iter_mut().zip(chunk) {
            *m = m.max(v.abs());
        }
    }
    let amax = lanes.iter().fold(0f32, |m, &v| m.max(v));
    let scale = amax / 127.0;
    let inv = if scale == 0.0 { 0.0 } else { 1.0 / scale };
    // Adding and subtracting 1.5·2²³ rounds to the nearest integer in plain f32 arithmetic (|v·inv| ≤ 127),
    // which vectorises everywhere, unlike `f32::round`'s libm call.
    const ROUND: f32 = 12_582_912.0;
    for (q, v) in out.iter_mut().zip(x) {
        *q = ((v * inv + ROUND) - ROUND) as i8;
    }
    scale
}

impl Q8Matrix {
    fn tiles(&self) -> usize {
        self.out_dim.div_ceil(TILE)
    }
    fn blocks(&self) -> usize {
        self.in_dim / BLOCK
    }

    /// Packs per-column blocks: `block(column, b)` gives the 32 quants and the scale of column `column`'s
    /// block `b`.
    fn pack(out_dim: usize, in_dim: usize, block: impl Fn(usize, usize) -> ([i8; BLOCK], f32)) -> Self {
        assert!(in_dim % BLOCK == 0, "q8_0 needs an input width that is a multiple of {BLOCK}, got {in_dim}");
        let (tiles, blocks) = (out_dim.div_ceil(TILE), in_dim / BLOCK);
        let mut quants = vec![OFFSET as u8; tiles * blocks * TILE_BLOCK_BYTES];
        let mut scales = vec![0f32; tiles * blocks * TILE];
        for column in 0..out_dim {
            let (tile, lane) = (column / TILE, column % TILE);
            for b in 0..blocks {
                let (q, scale) = block(column, b);
                let base = (tile * blocks + b) * TILE_BLOCK_BYTES;
                for (k, &v) in q.iter().enumerate() {
                    quants[base + (k / 4) * TILE * 4 + lane * 4 + k % 4] = (v as i32 + OFFSET) as u8;
                }
                scales[(tile * blocks + b) * TILE + lane] = scale;
            }
        }
        Self { out_dim, in_dim, quants, scales }
    }

    /// From GGUF q8_0 data: `[out][in / 32]` blocks of an f16 scale and 32 i8 quants (34 bytes each).
    pub fn from_q8_0_bytes(out_dim: usize, in_dim: usize, data: &[u8]) -> Result<Self, String> {
        const BYTES: usize = 2 + BLOCK;
        let blocks = in_dim / BLOCK;
        if in_dim % BLOCK != 0 || data.len() != out_dim * blocks * BYTES {
            return Err(format!("q8_0 data of {} bytes does not hold a [{out_dim}, {in_dim}] matrix", data.len()));
        }
        Ok(Self::pack(out_dim, in_dim, |column, b| {
            let raw = &data[(column * blocks + b) * BYTES..][..BYTES];
            let scale = f16::from_le_bytes([raw[0], raw[1]]).to_f32();
            (std::array::from_fn(|i| raw[2 + i] as i8), scale)
        }))
    }

    /// From f32 weights `[out, in]` (e.g. a 4-bit GGUF matrix dequantized): each block quantized q8_0's way.
    pub fn quantize(out_dim: usize, in_dim: usize, weights: &[f32]) -> Self {
        assert_eq!(weights.len(), out_dim * in_dim);
        Self::pack(out_dim, in_dim, |column, b| {
            let mut q = [0i8; BLOCK];
            let scale = quantize_block(&weights[column * in_dim + b * BLOCK..][..BLOCK], &mut q);
            (q, scale)
        })
    }

    pub fn out_dim(&self) -> usize {
        self.out_dim
    }
    pub fn in_dim(&self) -> usize {
        self.in_dim
    }

    /// Block `b` of column `column`: its 32 quants and its scale.
    pub fn block(&self, column: usize, b: usize) -> ([i8; BLOCK], f32) {
        let (tile, lane, blocks) = (column / TILE, column % TILE, self.blocks());
        let base = (tile * blocks + b) * TILE_BLOCK_BYTES;
        let quants = std::array::from_fn(|k| (self.quants[base + (k / 4) * TILE * 4 + lane * 4 + k % 4] as i32 - OFFSET) as i8);
        (quants, self.scales[(tile * blocks + b) * TILE + lane])
    }

    /// The weights as the kernels see them, dequantized to f32 `[out, in]` (for tests and references).
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.out_dim * self.in_dim];
        for column in 0..self.out_dim {
            for b in 0..self.blocks() {
                let (q, scale) = self.block(column, b);
                for (k, q) in q.iter().enumerate() {
                    out[column * self.in_dim + b * BLOCK + k] = *q as f32 * scale;
                }
            }
        }
        out
    }

    /// Matrices over the same input, their output columns one after the other (exact: blocks are copied).
    pub fn stack(parts: &[&Q8Matrix]) -> Self {
        let in_dim = parts[0].in_dim;
        assert!(parts.iter().all(|p| p.in_dim == in_dim), "stacked matrices must share their input width");
        let starts: Vec<usize> = parts.iter().scan(0, |s, p| { let start = *s; *s += p.out_dim; Some(start) }).collect();
        let out_dim = parts.iter().map(|p| p.out_dim).sum();
        Self::pack(out_dim, in_dim, |column, b| {
            let part = starts.partition_point(|&s| s <= column) - 1;
            parts[part].block(column - starts[part], b)
        })
    }

    /// `x` `[rows, in]` → `x · Wᵀ (+ bias)` `[rows, out]`.
    pub fn matmul(&self, x: &[f32], rows: usize, bias: Option<&[f32]>) -> Vec<f32> {
        assert_eq!(x.len(), rows * self.in_dim, "activations are not [{rows}, {}]", self.in_dim);
        let x = Q8Rows::quantize(x, rows, self.in_dim);
        let mut out = vec![0f32; rows * self.out_dim];
        let out_ptr = SendPtr(out.as_mut_ptr());
        let tile_job = |tile: usize| {
            let columns = (self.out_dim - tile * TILE).min(TILE);
            let mut tile_bias = [0f32; TILE];
            if let Some(b) = bias {
                tile_bias[..columns].copy_from_slice(&b[tile * TILE..][..columns]);
            }
            // SAFETY: each tile writes only its own columns of every row of `out`, so jobs never overlap.
            let dst = TileOut { first: unsafe { out_ptr.at(tile * TILE) }, stride: self.out_dim, columns, bias: tile_bias };
            self.tile_kernel(&x, tile, &dst);
        };
        #[cfg(not(target_arch = "wasm32"))]
        {
            use rayon::prelude::*;
            (0..self.tiles()).into_par_iter().for_each(tile_job);
        }
        #[cfg(target_arch = "wasm32")]
        (0..self.tiles()).for_each(tile_job);
        out
    }

    fn tile_view(&self, tile: usize) -> TileView<'_> {
        let blocks = self.blocks();
        TileView {
            quants: &self.quants[tile * blocks * TILE_BLOCK_BYTES..][..blocks * TILE_BLOCK_BYTES],
            scales: &self.scales[tile * blocks * TILE..][..blocks * TILE],
        }
    }

    /// One 16-column tile of the product for every row, by the fastest kernel this CPU has.
    fn tile_kernel(&self, x: &Q8Rows, tile: usize, out: &TileOut) {
        let view = self.tile_view(tile);
        #[cfg(target_arch = "x86_64")]
        if avx512::available() {
            // SAFETY: the CPU has the features the kernel is compiled for.
            return unsafe { avx512::tile(&view, x, out) };
        }
        #[cfg(target_arch = "wasm32")]
        return simd128::tile(&view, x, out);
        #[allow(unreachable_code)]
        portable_tile(&view, x, out)
    }
}

/// Where one tile's results go: `rows` rows `stride` floats apart, `columns` (≤ 16) of them from `first`,
/// plus the tile's bias.
struct TileOut {
    first: *mut f32,
    stride: usize,
    columns: usize,
    bias: [f32; TILE],
}

impl TileOut {
    fn write(&self, row: usize, sums: &[f32; TILE]) {
        for c in 0..self.columns {
            // SAFETY: `matmul` sized the output for every row and these columns.
            unsafe { *self.first.add(row * self.stride + c) = sums[c] + self.bias[c] };
        }
    }
}

/// One tile's weights: `[block][group (8)][column (16)][4]` quants and `[block][column]` scales.
struct TileView<'a> {
    quants: &'a [u8],
    scales: &'a [f32],
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
impl SendPtr {
    /// A method, not a field access, so closures capture the (Sync) wrapper rather than the raw pointer.
    unsafe fn at(self, offset: usize) -> *mut f32 {
        self.0.add(offset)
    }
}
unsafe impl Send for TileOut {}
unsafe impl Sync for TileOut {}
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

#[inline(always)]
fn quantize_block_with_offset(x: &[f32], q: &mut [i8], scale: &mut f32, offset: &mut i32) {
    *scale = quantize_block(x, q);
    *offset = OFFSET * q.iter().map(|&v| v as i32).sum::<i32>();
}

impl Q8Rows {
    pub fn quantize(x: &[f32], rows: usize, in_dim: usize) -> Self {
        let blocks = in_dim / BLOCK;
        let mut quants = vec![0i8; rows * in_dim];
        let mut scales = vec![0f32; rows * blocks];
        let mut offsets = vec![0i32; rows * blocks];
        let block_job = |((chunk, q), (scale, offset)): ((&[f32], &mut [i8]), (&mut f32, &mut i32))| {
            #[cfg(target_arch = "x86_64")]
            if avx512::available() {
                // SAFETY: the CPU has the features the copy is compiled for.
                return unsafe { avx512::quantize_block(chunk, q, scale, offset) };
            }
            quantize_block_with_offset(chunk, q, scale, offset)
        };
        #[cfg(not(target_arch = "wasm32"))]
        {
            use rayon::prelude::*;
            x.par_chunks_exact(BLOCK)
                .zip(quants.par_chunks_exact_mut(BLOCK))
                .zip(scales.par_iter_mut().zip(offsets.par_iter_mut()))
                .with_min_len(256)
                .for_each(block_job);
        }
        #[cfg(target_arch = "wasm32")]
        x.chunks_exact(BLOCK)
            .zip(quants.chunks_exact_mut(BLOCK))
            .zip(scales.iter_mut().zip(offsets.iter_mut()))
            .for_each(block_job);
        #[cfg(target_arch = "wasm32")]
        let wide = quants.iter().map(|&q| q as i16).collect();
        Self {
            rows,
            blocks,
            quants,
            scales,
            offsets,
            #[cfg(target_arch = "wasm32")]
            wide,
        }
    }

    fn row(&self, row: usize) -> &[i8] {
        &self.quants[row * self.blocks * BLOCK..][..self.blocks * BLOCK]
    }
}

/// The reference kernel: plain loops over the same layout (used where no SIMD kernel applies).
fn portable_tile(w: &TileView, x: &Q8Rows, out: &TileOut) {
    for row in 0..x.rows {
        let mut sum = [0f32; TILE];
        let xq = x.row(row);
        for b in 0..x.blocks {
            let wq = &w.quants[b * TILE_BLOCK_BYTES..][..TILE_BLOCK_BYTES];
            let mut dots = [0i32; TILE];
            for g in 0..BLOCK / 4 {
                for (c, dot) in dots.iter_mut().enumerate() {
                    for j in 0..4 {
                        *dot += wq[(g * TILE + c) * 4 + j] as i32 * xq[b * BLOCK + g * 4 + j] as i32;
                    }
                }
            }
            let (x_scale, x_offset) = (x.scales[row * x.blocks + b], x.offsets[row * x.blocks + b]);
            for c in 0..TILE {
                sum[c] += (dots[c] - x_offset) as f32 * (w.scales[b * TILE + c] * x_scale);
            }
        }
        out.write(row, &sum);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: u64, n: usize) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// q8_0 semantics computed the slow, obvious way: dequantized weights × dequantized activations.
    fn reference(w: &Q8Matrix, x: &[f32], rows: usize, bias: Option<&[f32]>) -> Vec<f32> {
        let wf = w.dequantize();
        let xq = Q8Rows::quantize(x, rows, w.in_dim);
        let xf: Vec<f32> = xq.quants.iter().enumerate().map(|(i, &q)| q as f32 * xq.scales[i / BLOCK]).collect();
        let mut out = vec![0f32; rows * w.out_dim];
        for r in 0..rows {
            for c in 0..w.out_dim {
                let dot: f64 = (0..w.in_dim).map(|k| xf[r * w.in_dim + k] as f64 * wf[c * w.in_dim + k] as f64).sum();
                out[r * w.out_dim + c] = dot as f32 + bias.map_or(0.0, |b| b[c]);
            }
        }
        out
    }

    #[test]
    fn matches_the_reference_on_odd_shapes() {
        // Rows around the kernels' row groups, columns not a multiple of the tile, one and many blocks.
        for &(rows, out_dim, in_dim) in &[(1, 16, 32), (3, 5, 64), (8, 17, 96), (13, 40, 128), (52, 33, 256), (197, 48, 768)] {
            let w = Q8Matrix::quantize(out_dim, in_dim, &lcg(1, out_dim * in_dim));
            let x = lcg(2, rows * in_dim);
            let bias = lcg(3, out_dim);
            for bias in [None, Some(bias.as_slice())] {
                let got = w.matmul(&x, rows, bias);
                let want = reference(&w, &x, rows, bias);
                for (i, (g, r)) in got.iter().zip(&want).enumerate() {
                    assert!((g - r).abs() <= 1e-4 * (1.0 + r.abs()), "[{rows}x{in_dim}]·[{out_dim}]ᵀ at {i}: {g} vs {r}");
                }
            }
        }
    }

    #[test]
    fn portable_and_simd_kernels_agree() {
        let (rows, out_dim, in_dim) = (11, 32, 160);
        let w = Q8Matrix::quantize(out_dim, in_dim, &lcg(4, out_dim * in_dim));
        let x = Q8Rows::quantize(&lcg(5, rows * in_dim), rows, in_dim);
        for (tile, columns) in [(0, TILE), (1, 7)] {
            let (mut fast, mut slow) = (vec![0f32; rows * TILE], vec![0f32; rows * TILE]);
            let bias = std::array::from_fn(|c| c as f32);
            let to = |buf: &mut Vec<f32>| TileOut { first: buf.as_mut_ptr(), stride: TILE, columns, bias };
            w.tile_kernel(&x, tile, &to(&mut fast));
            portable_tile(&w.tile_view(tile), &x, &to(&mut slow));
            for (f, s) in fast.iter().zip(&slow) {
                // Same i32 block sums; only the f32 accumulation may round differently (FMA or not).
                assert!((f - s).abs() <= 1e-5 * (1.0 + s.abs()), "tile {tile}: {f} vs {s}");
            }
        }
    }

    #[test]
    fn block_quantizers_agree() {
        let mut x = lcg(6, BLOCK * 64);
        x[..BLOCK].fill(0.0); // an all-zero block: scale 0, quants 0
        x[BLOCK + 3] = 2.5 * x[BLOCK..2 * BLOCK].iter().fold(0f32, |m, v| m.max(v.abs())); // an outlier
        for chunk in x.chunks_exact(BLOCK) {
            let (mut q1, mut s1, mut o1) = ([0i8; BLOCK], 0f32, 0i32);
            quantize_block_with_offset(chunk, &mut q1, &mut s1, &mut o1);
            let expected_scale = chunk.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
            assert_eq!(s1, expected_scale);
            for (q, v) in q1.iter().zip(chunk) {
                assert!((*q as f32 * s1 - v).abs() <= 0.5 * s1 + 1e-7, "{q} · {s1} vs {v}");
            }
            #[cfg(target_arch = "x86_64")]
            if avx512::available() {
                let (mut q2, mut s2, mut o2) = ([0i8; BLOCK], 0f32, 0i32);
                unsafe { avx512::quantize_block(chunk, &mut q2, &mut s2, &mut o2) };
                assert_eq!((q1, s1, o1), (q2, s2, o2));
            }
        }
    }

    #[test]
    fn q8_0_bytes_round_trip() {
        let (out_dim, in_dim) = (3, 64);
        let mut data = Vec::new();
        for c in 0..out_dim {
            for b in 0..in_dim / BLOCK {
                data.extend(f16::from_f32(0.5 * (c + b + 1) as f32).to_le_bytes());
                data.extend((0..BLOCK).map(|i| (i as i8 - 16 + c as i8) as u8));
            }
        }
        let w = Q8Matrix::from_q8_0_bytes(out_dim, in_dim, &data).unwrap();
        let f = w.dequantize();
        assert_eq!(f[0], -16.0 * 0.5);
        assert_eq!(f[in_dim + BLOCK + 31], (31 - 16 + 1) as f32 * 0.5 * 3.0);
        assert!(Q8Matrix::from_q8_0_bytes(out_dim, in_dim, &data[1..]).unwrap_err().contains("does not hold"));
    }
}
