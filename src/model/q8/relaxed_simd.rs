//! The q8_0 tile kernel on wasm relaxed SIMD (the second wasm build, for browsers that have it):
//! `i32x4.relaxed_dot_i8x16_i7x16_add` multiplies 16 i8 weights (4 columns × 4 k-values, the layout's
//! 16-byte quarter of a group) by a row's 4 activation quants splat 4 times, and adds each column's 4
//! products to its i32 lane — 16 multiply-adds in one instruction, no widening, no shuffles. Its result is
//! only defined when the second operand fits 7 bits, which the activations' 1…127 do (and the largest pair
//! sum, 2·128·127, fits the i16 that x86 engines compute it through).

use super::wasm::{add_block, write_rows};
use super::{Q8Rows, TileOut, TileView, BLOCK, TILE, TILE_BLOCK_BYTES};
use std::arch::wasm32::*;

#[inline(always)]
pub(super) fn rows<const MR: usize>(w: &TileView, x: &Q8Rows, row0: usize, out: &TileOut) {
    let k = x.blocks * BLOCK;
    let xq = &x.quants[row0 * k..(row0 + MR) * k];
    // All 16 columns per block, each row's 4 activation bytes splat once per group for the 4 quarters: in V8
    // this beats one quarter at a time over all of k (fewer registers, but 4 passes over the tile's weights).
    let mut acc = [[f32x4_splat(0.0); 4]; MR];
    for b in 0..x.blocks {
        let wq = &w.quants[b * TILE_BLOCK_BYTES..][..TILE_BLOCK_BYTES];
        let mut dots = [[i32x4_splat(0); 4]; MR];
        for g in 0..BLOCK / 4 {
            // SAFETY: 4 activation bytes of row r's group g, in bounds.
            let four: [v128; MR] =
                std::array::from_fn(|r| unsafe { v128_load32_splat(xq.as_ptr().add(r * k + b * BLOCK + g * 4) as *const u32) });
            for quarter in 0..4 {
                // SAFETY: a group is 64 bytes, a quarter of it 16, in bounds.
                let weights = unsafe { v128_load(wq.as_ptr().add(g * TILE * 4 + quarter * 16) as *const v128) };
                for r in 0..MR {
                    dots[r][quarter] = i32x4_relaxed_dot_i8x16_i7x16_add(weights, four[r], dots[r][quarter]);
                }
            }
        }
        for quarter in 0..4 {
            // SAFETY: 4 scales and 4 offsets of this quarter's columns, in bounds.
            let (w_scales, w_offsets) = unsafe {
                (
                    v128_load(w.scales.as_ptr().add(b * TILE + quarter * 4) as *const v128),
                    v128_load(w.offsets.as_ptr().add(b * TILE + quarter * 4) as *const v128),
                )
            };
            for r in 0..MR {
                let x_scale = x.scales[(row0 + r) * x.blocks + b];
                acc[r][quarter] = add_block(acc[r][quarter], i32x4_add(dots[r][quarter], w_offsets), w_scales, x_scale);
            }
        }
    }
    write_rows(&acc, row0, out);
}
