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
    // Sized for V8's 16 vector registers on x86 (measured in Chromium, BENCHMARKS.md: both together 0.73–0.77×
    // the time of all 16 columns in one unrolled pass; either alone no gain):
    // - two passes over k, each for 8 of the tile's 16 columns: 4 rows × 2 quarters of block sums, the rows'
    //   splat activations and a quarter of weights are 13 vectors; the per-block scaled sums (`acc`), touched
    //   once per block, are what gets spilled;
    // - the group loop's count hidden from LLVM: unrolled, LLVM loads all 8 groups' weights and activations
    //   first and then runs each sum's 8 dot products as one chain, ~48 live vectors.
    let groups = std::hint::black_box(BLOCK / 4);
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
                        dots[r][q] = i32x4_relaxed_dot_i8x16_i7x16_add(weights, four[r], dots[r][q]);
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
