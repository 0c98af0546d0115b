//! What the two wasm q8_0 kernels share (SIMD128 in the baseline and threaded builds, relaxed SIMD in the
//! builds with the `relaxed-simd` feature; each build compiles exactly one): the row-group dispatch, the
//! per-block scaling and the store. The relaxed kernel enables relaxed SIMD on its own functions only, so
//! both builds compile every dependency the same way (and share their compilation).

#[cfg(feature = "relaxed-simd")]
pub(super) mod relaxed_simd;
#[cfg(not(feature = "relaxed-simd"))]
pub(super) mod simd128;

use crate::model::q8::{Q8Rows, TileOut, TileView, TILE};
use std::arch::wasm32::*;
use std::ops::Range;

/// The kernel's name, for benchmarks and logs.
pub const NAME: &str = if cfg!(feature = "relaxed-simd") { "relaxed-simd" } else { "simd128" };

pub fn tile(w: &TileView, x: &Q8Rows, rows: Range<usize>, out: &TileOut) {
    #[cfg(feature = "relaxed-simd")]
    relaxed_simd::tile(w, x, rows, out);
    #[cfg(not(feature = "relaxed-simd"))]
    row_groups(rows, |row, n| match n {
        4 => simd128::rows::<4>(w, x, row, out),
        _ => simd128::rows::<1>(w, x, row, out),
    })
}

/// `kernel(first_row, 4 or 1)` over `rows`: groups of 4 rows start on a multiple of 4 (SIMD128's interleaved
/// activations); jobs' rows do.
#[inline(always)]
fn row_groups(mut rows: Range<usize>, mut kernel: impl FnMut(usize, usize)) {
    while rows.start % 4 != 0 && !rows.is_empty() {
        kernel(rows.start, 1);
        rows.start += 1;
    }
    crate::model::q8::for_row_groups(rows, 4, kernel)
}

/// `acc` plus one block's exact sums of 4 columns times their scales (weights' × the row's): multiply, then
/// add (not FMA), the bits every other kernel computes.
#[inline(always)]
pub fn add_block(acc: v128, exact: v128, w_scales: v128, x_scale: f32) -> v128 {
    let scale = f32x4_mul(w_scales, f32x4_splat(x_scale));
    f32x4_add(acc, f32x4_mul(f32x4_convert_i32x4(exact), scale))
}

/// Stores MR rows of a tile's 16 sums (4 quarters of 4 columns each) through the product's epilogue.
#[inline(always)]
pub fn write_rows<const MR: usize>(acc: &[[v128; 4]; MR], row0: usize, out: &TileOut) {
    for (r, quarters) in acc.iter().enumerate() {
        let mut sums = [0f32; TILE];
        for (quarter, &sum) in quarters.iter().enumerate() {
            // SAFETY: 4 floats of a 16-float array.
            unsafe { v128_store(sums.as_mut_ptr().add(quarter * 4) as *mut v128, sum) };
        }
        out.write(row0 + r, &sums);
    }
}
