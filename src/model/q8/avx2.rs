//! The q8_0 tile kernel on AVX2 (no VNNI: most laptops and servers before 2019, and VMs that hide AVX-512).
//! `vpmaddubsw` multiplies the activations' u8 quants (7-bit + 64, 1…127) by the i8 weights in pairs into
//! i16s — exact, since 2·127·128 < 2¹⁵ — and `vpmaddwd` by ones sums pairs of pairs into one i32 per column:
//! three instructions per 32 multiply-adds, the weights loaded once for every row of the group.

use super::{Q8Rows, TileOut, TileView, BLOCK, TILE, TILE_BLOCK_BYTES};
use std::arch::x86_64::*;
use std::ops::Range;

pub fn available() -> bool {
    crate::model::math::has_avx2()
}

#[target_feature(enable = "avx2")]
pub unsafe fn tile(w: &TileView, x: &Q8Rows, rows: Range<usize>, out: &TileOut) {
    // SAFETY: the caller checked the CPU's features, which `rows` is compiled for.
    super::for_row_groups(rows, 4, |row, n| unsafe {
        match n {
            4 => self::rows::<4>(w, x, row, out),
            _ => self::rows::<1>(w, x, row, out),
        }
    })
}

#[inline]
#[target_feature(enable = "avx2")]
unsafe fn rows<const MR: usize>(w: &TileView, x: &Q8Rows, row0: usize, out: &TileOut) {
    let k = x.blocks * BLOCK;
    let xq = x.quants.as_ptr().add(row0 * k);
    let ones = _mm256_set1_epi16(1);
    let mut sums = [[0f32; TILE]; MR];
    // One half of the tile's columns (8 i32 lanes) at a time over all of k: MR running sums, MR block dot
    // products, the weights and ones fit AVX2's 16 registers without spilling.
    for half in 0..2 {
        let mut acc = [_mm256_setzero_ps(); MR];
        for b in 0..x.blocks {
            let wq = w.quants.as_ptr().add(b * TILE_BLOCK_BYTES + half * 32);
            let mut dots = [_mm256_setzero_si256(); MR];
            for g in 0..BLOCK / 4 {
                let weights = _mm256_loadu_si256(wq.add(g * TILE * 4) as *const __m256i);
                for r in 0..MR {
                    let four = _mm256_set1_epi32((xq.add(r * k + b * BLOCK + g * 4) as *const i32).read_unaligned());
                    dots[r] = _mm256_add_epi32(dots[r], _mm256_madd_epi16(_mm256_maddubs_epi16(four, weights), ones));
                }
            }
            let w_scales = _mm256_loadu_ps(w.scales.as_ptr().add(b * TILE + half * 8));
            let w_offsets = _mm256_loadu_si256(w.offsets.as_ptr().add(b * TILE + half * 8) as *const __m256i);
            for r in 0..MR {
                let exact = _mm256_add_epi32(dots[r], w_offsets);
                // Multiply, then add (not FMA): the bits every other kernel computes.
                let scale = _mm256_mul_ps(w_scales, _mm256_set1_ps(x.scales[(row0 + r) * x.blocks + b]));
                acc[r] = _mm256_add_ps(acc[r], _mm256_mul_ps(_mm256_cvtepi32_ps(exact), scale));
            }
        }
        for r in 0..MR {
            _mm256_storeu_ps(sums[r].as_mut_ptr().add(half * 8), acc[r]);
        }
    }
    for (r, sums) in sums.iter().enumerate() {
        out.write(row0 + r, sums);
    }
}
