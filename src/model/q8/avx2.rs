//! The q8_0 tile kernel on AVX2 (no VNNI: most laptops and servers before 2019, and VMs that hide AVX-512).
//! `vpmaddubsw` multiplies u8 × i8 pairs into saturating i16s, so the operands are arranged the way llama.cpp
//! does it to keep every pair sum exact: |x| (≤ 127) as the unsigned operand and the weight with x's sign as
//! the signed one (|w| ≤ 127; a -128 weight would overflow the sign flip, so matrices holding one run on
//! another kernel). `vpmaddwd` by ones then sums pairs of pairs into one i32 per column. Weights are stored
//! `+ 128` for VNNI; flipping the top bit gives them back as i8, so this kernel needs no offset correction.

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
    let flip = _mm256_set1_epi8(i8::MIN);
    let ones = _mm256_set1_epi16(1);
    // [row][columns 0–7, 8–15]
    let mut acc = [[_mm256_setzero_ps(); 2]; MR];
    for b in 0..x.blocks {
        let wq = w.quants.as_ptr().add(b * TILE_BLOCK_BYTES);
        let mut dots = [[_mm256_setzero_si256(); 2]; MR];
        for g in 0..BLOCK / 4 {
            let w_lo = _mm256_xor_si256(_mm256_loadu_si256(wq.add(g * TILE * 4) as *const __m256i), flip);
            let w_hi = _mm256_xor_si256(_mm256_loadu_si256(wq.add(g * TILE * 4 + 32) as *const __m256i), flip);
            for r in 0..MR {
                let four = _mm256_set1_epi32((xq.add(r * k + b * BLOCK + g * 4) as *const i32).read_unaligned());
                let magnitude = _mm256_abs_epi8(four);
                let lo = _mm256_maddubs_epi16(magnitude, _mm256_sign_epi8(w_lo, four));
                let hi = _mm256_maddubs_epi16(magnitude, _mm256_sign_epi8(w_hi, four));
                dots[r][0] = _mm256_add_epi32(dots[r][0], _mm256_madd_epi16(lo, ones));
                dots[r][1] = _mm256_add_epi32(dots[r][1], _mm256_madd_epi16(hi, ones));
            }
        }
        let w_scales = [_mm256_loadu_ps(w.scales.as_ptr().add(b * TILE)), _mm256_loadu_ps(w.scales.as_ptr().add(b * TILE + 8))];
        for r in 0..MR {
            let x_scale = _mm256_set1_ps(x.scales[(row0 + r) * x.blocks + b]);
            for h in 0..2 {
                // Multiply, then add (not FMA): the bits every other kernel computes.
                let scale = _mm256_mul_ps(w_scales[h], x_scale);
                acc[r][h] = _mm256_add_ps(acc[r][h], _mm256_mul_ps(_mm256_cvtepi32_ps(dots[r][h]), scale));
            }
        }
    }
    for r in 0..MR {
        let mut sums = [0f32; TILE];
        _mm256_storeu_ps(sums.as_mut_ptr(), acc[r][0]);
        _mm256_storeu_ps(sums.as_mut_ptr().add(8), acc[r][1]);
        out.write(row0 + r, &sums);
    }
}
