//! What the two wasm q8_0 kernels share (SIMD128 in the baseline and threaded builds, relaxed SIMD in the
//! second build; each build compiles exactly one as `kernel`): the row-group dispatch, the per-block
//! scaling and the store.

#[cfg(target_feature = "relaxed-simd")]
use super::relaxed_simd as kernel;
#[cfg(not(target_feature = "relaxed-simd"))]
use super::simd128 as kernel;
use super::{Q8Rows, TileOut, TileView, TILE};
use std::arch::wasm32::*;
use std::ops::Range;

/// The kernel's name, for benchmarks and logs.
pub const NAME: &str = if cfg!(target_feature = "relaxed-simd") { "relaxed-simd" } else { "simd128" };

pub fn tile(w: &TileView, x: &Q8Rows, mut rows: Range<usize>, out: &TileOut) {
    // Groups of 4 rows start on a multiple of 4 (SIMD128's interleaved activations); jobs' rows do.
    while rows.start % 4 != 0 && !rows.is_empty() {
        kernel::rows::<1>(w, x, rows.start, out);
        rows.start += 1;
    }
    super::for_row_groups(rows, 4, |row, n| match n {
        4 => kernel::rows::<4>(w, x, row, out),
        _ => kernel::rows::<1>(w, x, row, out),
    })
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
