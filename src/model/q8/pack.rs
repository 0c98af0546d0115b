//! Weights packed for the kernels: q8_0 blocks (from a file or quantized here) laid out in 16-column tiles,
//! each block's offset precomputed.

use super::*;

/// Quantizes one block q8_0's way to `levels` (127 for weights, 63 for activations): scale = max |x| / levels,
/// values rounded to nearest (ties to even).
#[inline(always)]
pub(super) fn quantize_block(x: &[f32], out: &mut [i8], levels: f32) -> f32 {
    // Eight running maxima, so the reduction vectorises. A comparison, not `f32::max`: the same value (NaN
    // skipped either way), but `f32::max` is a libm call per element on wasm.
    let mut lanes = [0f32; 8];
    for chunk in x.chunks_exact(8) {
        for (m, v) in lanes.iter_mut().zip(chunk) {
            *m = larger(*m, v.abs());
        }
    }
    let amax = lanes.iter().fold(0f32, |m, &v| larger(m, v));
    let scale = amax / levels;
    let inv = if scale == 0.0 { 0.0 } else { 1.0 / scale };
    // Adding and subtracting 1.5·2²³ rounds to the nearest integer in plain f32 arithmetic (|v·inv| ≤ levels),
    // which vectorises everywhere, unlike `f32::round`'s libm call.
    const ROUND: f32 = 12_582_912.0;
    for (q, v) in out.iter_mut().zip(x) {
        *q = ((v * inv + ROUND) - ROUND) as i8;
    }
    scale
}

impl Q8Matrix {
    pub(super) fn tiles(&self) -> usize {
        self.out_dim.div_ceil(TILE)
    }
    pub(super) fn blocks(&self) -> usize {
        self.in_dim / BLOCK
    }

    /// Packs per-column blocks: `block(column, b)` gives the 32 quants and the scale of column `column`'s
    /// block `b`.
    pub(super) fn pack(out_dim: usize, in_dim: usize, block: impl Fn(usize, usize) -> ([i8; BLOCK], f32)) -> Self {
        assert!(in_dim % BLOCK == 0, "q8_0 needs an input width that is a multiple of {BLOCK}, got {in_dim}");
        let (tiles, blocks) = (out_dim.div_ceil(TILE), in_dim / BLOCK);
        let mut quants = vec![0i8; tiles * blocks * TILE_BLOCK_BYTES];
        let mut scales = vec![0f32; tiles * blocks * TILE];
        let mut offsets = vec![0i32; tiles * blocks * TILE];
        for column in 0..out_dim {
            let (tile, lane) = (column / TILE, column % TILE);
            for b in 0..blocks {
                let (q, scale) = block(column, b);
                let base = (tile * blocks + b) * TILE_BLOCK_BYTES;
                for (k, &v) in q.iter().enumerate() {
                    quants[base + (k / 4) * TILE * 4 + lane * 4 + k % 4] = v;
                }
                scales[(tile * blocks + b) * TILE + lane] = scale;
                offsets[(tile * blocks + b) * TILE + lane] = -ACT_OFFSET * q.iter().map(|&v| v as i32).sum::<i32>();
            }
        }
        Self { out_dim, in_dim, quants, scales, offsets }
    }

    /// From GGUF q8_0 data: `[out][in / 32]` blocks of an f16 scale and 32 i8 quants (34 bytes each).
    pub fn from_q8_0_bytes(out_dim: usize, in_dim: usize, data: &[u8]) -> Result<Self, String> {
        const BYTES: usize = 2 + BLOCK;
        let blocks = in_dim / BLOCK;
        if in_dim % BLOCK != 0 || data.len() != out_dim * blocks * BYTES {
            return Err(format!("q8_0 data of {} bytes does not hold a [{out_dim}, {in_dim}] matrix", data.len()));
        }
        if let Some(block) = data.chunks_exact(BYTES).position(|raw| !f16::from_le_bytes([raw[0], raw[1]]).is_finite()) {
            return Err(format!(
                "the scale of q8_0 block {} of row {} is not finite: the model file is damaged",
                block % blocks,
                block / blocks
            ));
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
            let scale = quantize_block(&weights[column * in_dim + b * BLOCK..][..BLOCK], &mut q, WEIGHT_LEVELS);
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
        let quants = std::array::from_fn(|k| self.quants[base + (k / 4) * TILE * 4 + lane * 4 + k % 4]);
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
        let starts: Vec<usize> = parts
            .iter()
            .scan(0, |s, p| {
                let start = *s;
                *s += p.out_dim;
                Some(start)
            })
            .collect();
        let out_dim = parts.iter().map(|p| p.out_dim).sum();
        Self::pack(out_dim, in_dim, |column, b| {
            let part = starts.partition_point(|&s| s <= column) - 1;
            parts[part].block(column - starts[part], b)
        })
    }

}
