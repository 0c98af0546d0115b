//! The q8_0 tile kernel on wasm relaxed SIMD (the second wasm build, for browsers that have it): 16 i8
//! weights (4 columns × 4 k-values, the layout's 16-byte quarter of a group) times a row's 4 activation
//! quants splat 4 times, each column's 4 products added to its i32 lane. Its result is only defined when the
//! second operand fits 7 bits, which the activations' 1…127 do (and the largest pair sum, 2·128·127, fits the
//! i16 that x86 engines compute it through). Two ways to write that dot product, the same exact sums, so the
//! same bits; which is faster depends on the CPU (the page's probe times both, [`set_dot_form`]):
//! - [`DotForm::Accumulate`]: `i32x4.relaxed_dot_i8x16_i7x16_add`, one instruction where the CPU has 8-bit
//!   dot products (x86 AVX-VNNI: `vpdpbusd`; arm64: `sdot`), but five in V8 on x86 without AVX-VNNI
//!   (`vpmaddubsw`, `vpmaddwd` by a vector of ones it rebuilds each time with two more, `vpaddd`);
//! - [`DotForm::Pairs`]: `i16x8.relaxed_dot_i8x16_i7x16_s` (one `vpmaddubsw`), `i32x4.dot_i16x8_s` by a vector
//!   of ones (one `vpmaddwd`), `i32x4.add`: three on those CPUs (AMD Zen 2–4, Intel before Alder
//!   Lake), ~1.3× the multiply-adds per second of either the five or SIMD128's `i32x4.dot_i16x8_s`
//!   (BENCHMARKS.md).

use super::{add_block, write_rows};
use crate::model::q8::{Q8Rows, TileOut, TileView, BLOCK, TILE, TILE_BLOCK_BYTES};
use std::arch::wasm32::*;
use std::sync::atomic::{AtomicBool, Ordering};

/// How the kernel computes its 8-bit dot products (module doc). Both give the same bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DotForm {
    Accumulate,
    Pairs,
}

impl DotForm {
    /// The forms by the names the page uses.
    pub const ALL: [(DotForm, &'static str); 2] = [(DotForm::Accumulate, "accumulate"), (DotForm::Pairs, "pairs")];

    pub fn name(self) -> &'static str {
        Self::ALL.iter().find(|(form, _)| *form == self).map_or("", |(_, name)| name)
    }

    pub fn from_name(name: &str) -> Option<DotForm> {
        Self::ALL.iter().find(|(_, n)| *n == name).map(|(form, _)| *form)
    }
}

/// Whether the kernel uses [`DotForm::Pairs`]: one flag for the module (shared by every thread of the
/// threaded build), set before a forward pass.
static PAIRS: AtomicBool = AtomicBool::new(false);

/// Chooses the dot-product form for every product from now on.
pub fn set_dot_form(form: DotForm) {
    PAIRS.store(form == DotForm::Pairs, Ordering::Relaxed);
}

pub fn dot_form() -> DotForm {
    if PAIRS.load(Ordering::Relaxed) { DotForm::Pairs } else { DotForm::Accumulate }
}

/// One tile's rows. Relaxed SIMD is enabled here, for this function and what is inlined into it (everything
/// below), not for the whole build.
#[target_feature(enable = "relaxed-simd")]
pub(super) fn tile(w: &TileView, x: &Q8Rows, rows: std::ops::Range<usize>, out: &TileOut) {
    let pairs = dot_form() == DotForm::Pairs;
    super::row_groups(rows, |row, n| match (n, pairs) {
        (4, false) => rows_with::<4, false>(w, x, row, out),
        (4, true) => rows_with::<4, true>(w, x, row, out),
        (_, false) => rows_with::<1, false>(w, x, row, out),
        (_, true) => rows_with::<1, true>(w, x, row, out),
    })
}

/// `sum` plus, per column (lane), the 4 products of `weights` (4 columns × 4 k-values) and `four` (one row's
/// 4 activations, splat), in the form `PAIRS` chooses (the pairs form widens by a dot with `ones`, eight i16
/// ones).
#[inline(always)]
fn dot<const PAIRS: bool>(weights: v128, four: v128, sum: v128, ones: v128) -> v128 {
    if PAIRS {
        // The pairs widened by a dot with ones: written with `i32x4.extadd_pairwise_i16x8_s`, LLVM fuses the
        // three back into `i32x4.relaxed_dot_i8x16_i7x16_add`.
        i32x4_add(sum, i32x4_dot_i16x8(i16x8_relaxed_dot_i8x16_i7x16(weights, four), ones))
    } else {
        i32x4_relaxed_dot_i8x16_i7x16_add(weights, four, sum)
    }
}

#[inline(always)]
fn rows_with<const MR: usize, const PAIRS: bool>(w: &TileView, x: &Q8Rows, row0: usize, out: &TileOut) {
    let k = x.blocks * BLOCK;
    let xq = &x.quants[row0 * k..(row0 + MR) * k];
    // Sized for V8's 16 vector registers on x86 (measured in Chromium, BENCHMARKS.md: both together 0.73–0.77×
    // the time of all 16 columns in one unrolled pass; either alone no gain):
    // - two passes over k, each for 8 of the tile's 16 columns: 4 rows × 2 quarters of block sums, the rows'
    //   splat activations and a quarter of weights are 13 vectors; the per-block scaled sums (`acc`), touched
    //   once per block, are what gets spilled;
    // - the group loop's count hidden from LLVM: unrolled, LLVM loads all 8 groups' weights and activations
    //   first and then runs each sum's 8 dot products as one chain, ~48 live vectors.
    let groups = std::hint::black_box(BLOCK / 4);
    // The pairs form's vector of ones, passed through memory: as a constant V8 rebuilds it in every group
    // (an immediate load, a move and a shuffle: 3 of the group's ~40 instructions); read once, it stays in a
    // register.
    let ones = std::hint::black_box(i16x8_splat(1));
    let mut acc = [[f32x4_splat(0.0); 4]; MR];
    for half in 0..2 {
        for b in 0..x.blocks {
            let wq = &w.quants[b * TILE_BLOCK_BYTES..][..TILE_BLOCK_BYTES];
            let mut dots = [[i32x4_splat(0); 2]; MR];
            for g in 0..groups {
                // SAFETY: 4 activation bytes of row r's group g, in bounds.
                let four: [v128; MR] =
                    std::array::from_fn(|r| unsafe { v128_load32_splat(xq.as_ptr().add(r * k + b * BLOCK + g * 4) as *const u32) });
                for q in 0..2 {
                    // SAFETY: a group is 64 bytes, a quarter of it 16, in bounds.
                    let weights = unsafe { v128_load(wq.as_ptr().add(g * TILE * 4 + (2 * half + q) * 16) as *const v128) };
                    for r in 0..MR {
                        dots[r][q] = dot::<PAIRS>(weights, four[r], dots[r][q], ones);
                    }
                }
            }
            for q in 0..2 {
                let quarter = 2 * half + q;
                // SAFETY: 4 scales and 4 offsets of this quarter's columns, in bounds.
                let (w_scales, w_offsets) = unsafe {
                    (
                        v128_load(w.scales.as_ptr().add(b * TILE + quarter * 4) as *const v128),
                        v128_load(w.offsets.as_ptr().add(b * TILE + quarter * 4) as *const v128),
                    )
                };
                for r in 0..MR {
                    let x_scale = x.scales[(row0 + r) * x.blocks + b];
                    acc[r][quarter] = add_block(acc[r][quarter], i32x4_add(dots[r][q], w_offsets), w_scales, x_scale);
                }
            }
        }
    }
    write_rows(&acc, row0, out);
}
