//! The q8_0 tile kernel on arm64 with 8-bit dot products (FEAT_DotProd: Apple M1 and later, AWS Graviton 2
//! and later, Arm Cortex-A76 / Neoverse N1 and later). `sdot` by element multiplies 16 weights (4 columns ×
//! 4 k-values, the layout's 16-byte quarter of a group) by one row's 4 activation quants, picked from a
//! register of 16, and adds each column's 4 products to its i32 lane: one instruction per 16 multiply-adds.
//! `sdot` is signed × signed; the activations' stored 1…127 (7 bits + 64) are the same bytes as i8, so the
//! sums are exact and the `+ 64` is taken back by the weights' offsets as in every other kernel.
//!
//! The dot-product intrinsics (`vdotq_laneq_s32`) are not stable Rust yet, so `sdot` is one line of inline
//! assembly; everything around it is intrinsics, which LLVM schedules and allocates as usual.

use crate::model::q8::{Q8Rows, TileOut, TileView, BLOCK, TILE, TILE_BLOCK_BYTES};
use std::arch::aarch64::*;
use std::ops::Range;

/// Whether this CPU has the dot-product instructions (the kernel's only requirement beyond arm64's NEON).
pub fn available() -> bool {
    std::arch::is_aarch64_feature_detected!("dotprod")
}

/// Rows `rows` of one tile: 4 rows at a time, then single rows.
#[target_feature(enable = "neon,dotprod")]
pub unsafe fn tile(w: &TileView, x: &Q8Rows, rows: Range<usize>, out: &TileOut) {
    // SAFETY: the caller checked the CPU's features, which `rows` is compiled for.
    crate::model::q8::for_row_groups(rows, 4, |row, n| unsafe {
        match n {
            4 => self::rows::<4>(w, x, row, out),
            _ => self::rows::<1>(w, x, row, out),
        }
    })
}

/// `sum` plus, per column (lane), the 4 products of `weights` (4 columns × 4 k-values) and activation group
/// `LANE` of `four_groups` (4 quants per group).
#[inline(always)]
unsafe fn sdot<const LANE: i32>(sum: int32x4_t, weights: int8x16_t, four_groups: int8x16_t) -> int32x4_t {
    let mut sum = sum;
    std::arch::asm!(
        "sdot {sum:v}.4s, {weights:v}.16b, {groups:v}.4b[{lane}]",
        sum = inout(vreg) sum,
        weights = in(vreg) weights,
        groups = in(vreg) four_groups,
        lane = const LANE,
        options(pure, nomem, nostack, preserves_flags),
    );
    sum
}

/// Group `LANE` of the 4 groups whose activations `acts` holds (one register per row): the group's 16
/// columns of weights at `wq`, each quarter dotted with every row's 4 quants.
#[inline(always)]
unsafe fn group<const MR: usize, const LANE: i32>(wq: *const i8, acts: &[int8x16_t; MR], sums: &mut [[int32x4_t; 4]; MR]) {
    let weights: [int8x16_t; 4] = std::array::from_fn(|q| vld1q_s8(wq.add(q * 16)));
    for r in 0..MR {
        for q in 0..4 {
            sums[r][q] = sdot::<LANE>(sums[r][q], weights[q], acts[r]);
        }
    }
}

/// `MR` rows of the tile, all 16 columns at once: per block, the i32 sums start at the weights' offsets,
/// take 8 groups of `sdot`s (each weight register serves every row) and are then scaled into the f32
/// running sums — convert, multiply by (weight scale · row scale), add (not a fused multiply-add): the bits
/// every other kernel computes.
#[inline]
#[target_feature(enable = "neon,dotprod")]
unsafe fn rows<const MR: usize>(w: &TileView, x: &Q8Rows, row0: usize, out: &TileOut) {
    let (blocks, k) = (x.blocks, x.blocks * BLOCK);
    assert!(
        w.quants.len() >= blocks * TILE_BLOCK_BYTES
            && w.scales.len() >= blocks * TILE
            && w.offsets.len() >= blocks * TILE
            && x.quants.len() >= (row0 + MR) * k
            && x.scales.len() >= (row0 + MR) * blocks
    );
    let xq = x.quants.as_ptr().add(row0 * k) as *const i8;
    let mut acc = [[vdupq_n_f32(0.0); 4]; MR];
    for b in 0..blocks {
        let wq = w.quants.as_ptr().add(b * TILE_BLOCK_BYTES);
        let offsets: [int32x4_t; 4] = std::array::from_fn(|q| vld1q_s32(w.offsets.as_ptr().add(b * TILE + q * 4)));
        let mut sums = [offsets; MR];
        for half in 0..2 {
            // Groups 4·half … 4·half + 3 of each row: 16 quants, one register per row.
            let acts: [int8x16_t; MR] = std::array::from_fn(|r| vld1q_s8(xq.add(r * k + b * BLOCK + half * 16)));
            let wq = wq.add(half * 4 * TILE * 4);
            group::<MR, 0>(wq, &acts, &mut sums);
            group::<MR, 1>(wq.add(TILE * 4), &acts, &mut sums);
            group::<MR, 2>(wq.add(2 * TILE * 4), &acts, &mut sums);
            group::<MR, 3>(wq.add(3 * TILE * 4), &acts, &mut sums);
        }
        let w_scales: [float32x4_t; 4] = std::array::from_fn(|q| vld1q_f32(w.scales.as_ptr().add(b * TILE + q * 4)));
        for r in 0..MR {
            let x_scale = *x.scales.get_unchecked((row0 + r) * blocks + b);
            for q in 0..4 {
                let scale = vmulq_n_f32(w_scales[q], x_scale);
                acc[r][q] = vaddq_f32(acc[r][q], vmulq_f32(vcvtq_f32_s32(sums[r][q]), scale));
            }
        }
    }
    for (r, quarters) in acc.iter().enumerate() {
        let mut sums = [0f32; TILE];
        for (q, &sum) in quarters.iter().enumerate() {
            vst1q_f32(sums.as_mut_ptr().add(q * 4), sum);
        }
        out.write(row0 + r, &sums);
    }
}
