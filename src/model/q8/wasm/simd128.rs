//! The q8_0 tile kernel on wasm simd128. There is no 8-bit dot product, so each 16-byte slice of a group
//! (4 columns × 4 k-values) is widened to two i16x8 halves and multiplied by the row's 4 activation quants
//! (splat to both halves) with `i32x4.dot_i16x8_s`; lanes come out as (column, k-pair) partial sums, folded
//! into one sum per column at the end of each block. Four rows share every widened weight.
//!
//! The activations are widened once per product (`Q8Rows::wide`): signed, so no offset is added per block,
//! and interleaved by groups of 4 rows, so that the 4 rows' quants of a k-group are 32 contiguous bytes at
//! constant offsets from one pointer (row-major rows needed an address computed per row and group).
//!
//! Tried and not kept (V8, text tower): the weights widened once per tile call into a per-thread buffer,
//! and the block's loops written out in full. LLVM then unrolls and interleaves the loops (wasm has
//! unlimited locals) and V8 spills most of the sums; 5–40 % slower.

use super::{add_block, write_rows};
use crate::model::q8::{Q8Rows, TileOut, TileView, BLOCK, TILE, TILE_BLOCK_BYTES};
use std::arch::wasm32::*;

/// Rows per interleaved group of `Q8Rows::wide`.
pub(in crate::model::q8) const ROW_GROUP: usize = 4;

/// `wide`'s index of row `row`'s quant `k` for activations `in_dim` wide: `[row group][k/4][row % 4][k % 4]`.
#[inline(always)]
fn wide_index(row: usize, k: usize, in_dim: usize) -> usize {
    ((row / ROW_GROUP * (in_dim / 4) + k / 4) * ROW_GROUP + row % ROW_GROUP) * 4 + k % 4
}

/// Row group `group` of `quants` (`[row][in_dim]`, quant + 64) into `wide` (`4 · in_dim` values, the
/// group's part of `Q8Rows::wide`): each 16 quants of the 4 rows are a 4 × 4 transpose of 4-byte groups, then
/// widened and 64 taken off. Rows past the end of `quants` (a last, partial group) repeat the group's first
/// row: no kernel reads them, but every element is written.
pub(in crate::model::q8) fn widen_row_group(quants: &[u8], group: usize, in_dim: usize, wide: &mut [i16]) {
    assert!(in_dim % 16 == 0 && wide.len() == ROW_GROUP * in_dim && quants.len() % in_dim == 0);
    let first = group * ROW_GROUP;
    let rows: [&[u8]; ROW_GROUP] = std::array::from_fn(|r| {
        let row = if (first + r) * in_dim < quants.len() { first + r } else { first };
        &quants[row * in_dim..][..in_dim]
    });
    let offset = i16x8_splat(crate::model::q8::ACT_OFFSET as i16);
    for k in (0..in_dim).step_by(16) {
        // SAFETY: 16 bytes at k < in_dim (a multiple of 16) of each row.
        let [a, b, c, d] = rows.map(|row| unsafe { v128_load(row.as_ptr().add(k) as *const v128) });
        // 4-byte lanes: [r0g0 r1g0 r0g1 r1g1], [r2g0 r3g0 r2g1 r3g1], and the same for groups 2 and 3.
        let (ab01, cd01) = (i32x4_shuffle::<0, 4, 1, 5>(a, b), i32x4_shuffle::<0, 4, 1, 5>(c, d));
        let (ab23, cd23) = (i32x4_shuffle::<2, 6, 3, 7>(a, b), i32x4_shuffle::<2, 6, 3, 7>(c, d));
        let by_group = [
            i64x2_shuffle::<0, 2>(ab01, cd01),
            i64x2_shuffle::<1, 3>(ab01, cd01),
            i64x2_shuffle::<0, 2>(ab23, cd23),
            i64x2_shuffle::<1, 3>(ab23, cd23),
        ];
        for (g, four_rows) in by_group.into_iter().enumerate() {
            // SAFETY: 16 i16 at (k/4 + g)·16 < 4·in_dim = wide.len() (asserted above).
            unsafe {
                let dst = wide.as_mut_ptr().add((k / 4 + g) * 16);
                v128_store(dst as *mut v128, i16x8_sub(u16x8_extend_low_u8x16(four_rows), offset));
                v128_store(dst.add(8) as *mut v128, i16x8_sub(u16x8_extend_high_u8x16(four_rows), offset));
            }
        }
    }
}

#[inline(always)]
pub(super) fn rows<const MR: usize>(w: &TileView, x: &Q8Rows, row0: usize, out: &TileOut) {
    let (blocks, in_dim) = (x.blocks, x.blocks * BLOCK);
    debug_assert!(MR == 1 || row0 % ROW_GROUP == 0, "a group of rows starts a row group");
    debug_assert!(w.quants.len() == blocks * TILE_BLOCK_BYTES && w.scales.len() == blocks * TILE);
    debug_assert!(x.wide.len() > wide_index(row0 + MR - 1, in_dim - 1, in_dim) && x.scales.len() >= (row0 + MR) * blocks);
    // SAFETY (every raw read below): `wide` holds whole row groups of `in_dim` quants, `scales` a scale per
    // row and block, and the tile `blocks` blocks of quants and scales (checked above in debug builds).
    let activations = unsafe { x.wide.as_ptr().add(wide_index(row0, 0, in_dim)) };
    let row_scales = unsafe { x.scales.as_ptr().add(row0 * blocks) };
    let mut acc = [[f32x4_splat(0.0); 4]; MR];
    for b in 0..blocks {
        let weights = unsafe { w.quants.as_ptr().add(b * TILE_BLOCK_BYTES) };
        let block = unsafe { activations.add(b * BLOCK * ROW_GROUP) };
        let x_scales: [f32; MR] = std::array::from_fn(|r| unsafe { *row_scales.add(r * blocks + b) });
        for quarter in 0..4 {
            // Lanes: [c0 k01, c0 k23, c1 k01, c1 k23] (low) and the same for c2, c3 (high).
            let mut low = [i32x4_splat(0); MR];
            let mut high = [i32x4_splat(0); MR];
            for group in 0..BLOCK / 4 {
                let bytes = unsafe { v128_load(weights.add(group * TILE * 4 + quarter * 16) as *const v128) };
                let (lo, hi) = (i16x8_extend_low_i8x16(bytes), i16x8_extend_high_i8x16(bytes));
                for r in 0..MR {
                    // Row r's 4 quants of this group, in both halves: [x0 x1 x2 x3 x0 x1 x2 x3].
                    let xs = unsafe { v128_load64_splat(block.add((group * ROW_GROUP + r) * 4) as *const u64) };
                    low[r] = i32x4_add(low[r], i32x4_dot_i16x8(lo, xs));
                    high[r] = i32x4_add(high[r], i32x4_dot_i16x8(hi, xs));
                }
            }
            let w_scales = unsafe { v128_load(w.scales.as_ptr().add(b * TILE + quarter * 4) as *const v128) };
            for r in 0..MR {
                let columns =
                    i32x4_add(i32x4_shuffle::<0, 2, 4, 6>(low[r], high[r]), i32x4_shuffle::<1, 3, 5, 7>(low[r], high[r]));
                acc[r][quarter] = add_block(acc[r][quarter], columns, w_scales, x_scales[r]);
            }
        }
    }
    write_rows(&acc, row0, out);
}
