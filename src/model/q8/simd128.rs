//! The q8_0 tile kernel on wasm simd128. There is no 8-bit dot product, so each 16-byte slice of a group
//! (4 columns × 4 k-values) is widened to two i16x8 halves and multiplied by the row's 4 activation quants
//! (splat to both halves) with `i32x4.dot_i16x8_s`; lanes come out as (column, k-pair) partial
//! sums, folded into one sum per column at the end of each block. Four rows share every widened weight, and
//! activations are widened once per product (`Q8Rows::wide`), so a group's four are one 8-byte splat load.

use super::wasm::{add_block, write_rows};
use super::{Q8Rows, TileOut, TileView, BLOCK, TILE, TILE_BLOCK_BYTES};
use std::arch::wasm32::*;

#[inline(always)]
pub(super) fn rows<const MR: usize>(w: &TileView, x: &Q8Rows, row0: usize, out: &TileOut) {
    let k = x.blocks * BLOCK;
    let wide = &x.wide[row0 * k..(row0 + MR) * k];
    // A row's 4 quants of a group (i16) repeated in both halves: [x0 x1 x2 x3 x0 x1 x2 x3].
    // SAFETY: 8 bytes at a group's start, in bounds of `wide`.
    let splat = |r: usize, at: usize| unsafe { v128_load64_splat(wide.as_ptr().add(r * k + at) as *const u64) };
    let mut acc = [[f32x4_splat(0.0); 4]; MR];
    for b in 0..x.blocks {
        let wq = &w.quants[b * TILE_BLOCK_BYTES..][..TILE_BLOCK_BYTES];
        for quarter in 0..4 {
            // Lanes: [c0 k01, c0 k23, c1 k01, c1 k23] (low) and the same for c2, c3 (high).
            let mut low = [i32x4_splat(0); MR];
            let mut high = [i32x4_splat(0); MR];
            for g in 0..BLOCK / 4 {
                // SAFETY: in bounds: a group is 64 bytes, a quarter of it 16.
                let bytes = unsafe { v128_load(wq.as_ptr().add(g * TILE * 4 + quarter * 16) as *const v128) };
                let (lo, hi) = (i16x8_extend_low_i8x16(bytes), i16x8_extend_high_i8x16(bytes));
                for r in 0..MR {
                    let xs = splat(r, b * BLOCK + g * 4);
                    low[r] = i32x4_add(low[r], i32x4_dot_i16x8(lo, xs));
                    high[r] = i32x4_add(high[r], i32x4_dot_i16x8(hi, xs));
                }
            }
            // SAFETY: 4 scales of this quarter, in bounds.
            let w_scales = unsafe { v128_load(w.scales.as_ptr().add(b * TILE + quarter * 4) as *const v128) };
            // SAFETY: the same 4 columns' offsets.
            let w_offsets = unsafe { v128_load(w.offsets.as_ptr().add(b * TILE + quarter * 4) as *const v128) };
            for r in 0..MR {
                let i = (row0 + r) * x.blocks + b;
                let columns =
                    i32x4_add(i32x4_shuffle::<0, 2, 4, 6>(low[r], high[r]), i32x4_shuffle::<1, 3, 5, 7>(low[r], high[r]));
                acc[r][quarter] = add_block(acc[r][quarter], i32x4_add(columns, w_offsets), w_scales, x.scales[i]);
            }
        }
    }
    write_rows(&acc, row0, out);
}
