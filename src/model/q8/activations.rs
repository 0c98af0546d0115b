//! Activations quantized per 32-value block to 7 bits (stored `+ 64`), the kernels' other operand.

use super::*;

/// One block of activations: 7-bit quants stored `+ 64`; returns the scale.
#[inline(always)]
pub(super) fn quantize_activations(x: &[f32], q: &mut [u8]) -> f32 {
    let mut signed = [0i8; BLOCK];
    let scale = quantize_block(x, &mut signed, ACT_LEVELS);
    for (q, s) in q.iter_mut().zip(signed) {
        *q = (s as i32 + ACT_OFFSET) as u8;
    }
    scale
}

/// One block of activations by the fastest quantizer this CPU has (all give the same bits).
#[inline(always)]
pub(super) fn quantize_activations_fast(x: &[f32], q: &mut [u8]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if avx512::available() {
        // SAFETY: the CPU has the features the copy is compiled for.
        return unsafe { avx512::quantize_activations(x, q) };
    }
    quantize_activations(x, q)
}

impl Q8Rows {
    pub fn quantize(x: &[f32], rows: usize, in_dim: usize) -> Self {
        let mut q = Self::default();
        q.quantize_from(x, rows, in_dim);
        q
    }

    /// Makes room for `[rows, in_dim]`, reusing what earlier calls allocated (nothing is zeroed that the
    /// quantizer overwrites: only growth is).
    pub(super) fn reshape(&mut self, rows: usize, in_dim: usize) {
        assert!(in_dim % BLOCK == 0, "q8_0 needs an input width that is a multiple of {BLOCK}, got {in_dim}");
        self.rows = rows;
        self.blocks = in_dim / BLOCK;
        self.quants.resize(rows * in_dim, 0);
        self.scales.resize(rows * self.blocks, 0.0);
    }

    /// Quantizes `x` `[rows, in_dim]` into this buffer.
    pub fn quantize_from(&mut self, x: &[f32], rows: usize, in_dim: usize) {
        assert_eq!(x.len(), rows * in_dim, "activations are not [{rows}, {in_dim}]");
        self.reshape(rows, in_dim);
        self.rows_in_parallel(|row, quants, scales| {
            let src = &x[row * in_dim..][..in_dim];
            for ((chunk, q), s) in src.chunks_exact(BLOCK).zip(quants.chunks_exact_mut(BLOCK)).zip(scales) {
                *s = quantize_activations_fast(chunk, q);
            }
        });
        self.widen();
    }

    /// Quantizes rows that `make_row(row, dst)` writes in f32 first (a layer norm, say), without the f32
    /// rows ever existing all at once.
    pub fn quantize_with(&mut self, rows: usize, in_dim: usize, make_row: impl Fn(usize, &mut [f32]) + Sync) {
        self.reshape(rows, in_dim);
        self.rows_in_parallel(|row, quants, scales| {
            SCRATCH.with(|scratch| {
                let mut scratch = scratch.borrow_mut();
                scratch.resize(in_dim, 0.0);
                make_row(row, &mut scratch);
                for ((chunk, q), s) in scratch.chunks_exact(BLOCK).zip(quants.chunks_exact_mut(BLOCK)).zip(scales) {
                    *s = quantize_activations_fast(chunk, q);
                }
            })
        });
        self.widen();
    }

    /// `job(row, quants, scales)` for every row, rows split among the threads 8 at a time.
    pub(super) fn rows_in_parallel(&mut self, job: impl Fn(usize, &mut [u8], &mut [f32]) + Sync) {
        const ROWS: usize = 8;
        let (rows, in_dim, blocks) = (self.rows, self.blocks * BLOCK, self.blocks);
        let (quants, scales) = (SendBytes(self.quants.as_mut_ptr()), SendBytes(self.scales.as_mut_ptr().cast()));
        crate::model::backend::cpu::team::parallel_ranges(rows, ROWS, |rows| {
            for row in rows {
                // SAFETY: each row belongs to one job; `reshape` sized both buffers for `rows`.
                let (q, s) = unsafe { (quants.slice(row * in_dim, in_dim), scales.slice(row * blocks, blocks)) };
                job(row, q, s);
            }
        });
    }

    /// On wasm without relaxed SIMD, the quants widened once for simd128's i16 dot products: signed (the
    /// `+ 64` taken off) and interleaved by row groups (`simd128::wide_index`), one row group per task.
    pub(super) fn widen(&mut self) {
        #[cfg(all(target_arch = "wasm32", not(feature = "relaxed-simd")))]
        {
            use simd128::{widen_row_group, ROW_GROUP};
            let (rows, in_dim) = (self.rows, self.blocks * BLOCK);
            if rows == 0 || in_dim == 0 {
                return;
            }
            // No zeroing: every element is written (a last, partial group's missing rows too).
            self.wide.resize(rows.div_ceil(ROW_GROUP) * ROW_GROUP * in_dim, 0);
            let quants = &self.quants[..rows * in_dim];
            let (wide, group_len) = (SendBytes(self.wide.as_mut_ptr().cast()), ROW_GROUP * in_dim);
            // Two row groups per job.
            crate::model::backend::cpu::team::parallel_ranges(rows.div_ceil(ROW_GROUP), 2, |groups| {
                for group in groups {
                    // SAFETY: each row group belongs to one job; `wide` was sized for every group.
                    let wide = unsafe { wide.slice(group * group_len, group_len) };
                    widen_row_group(quants, group, in_dim, wide);
                }
            });
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    #[cfg_attr(target_arch = "wasm32", allow(dead_code))] // read by the portable kernel
    pub(super) fn row(&self, row: usize) -> &[u8] {
        &self.quants[row * self.blocks * BLOCK..][..self.blocks * BLOCK]
    }
}

thread_local! {
    /// One f32 row per thread for [`Q8Rows::quantize_with`].
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}
