//! The q8_0 tile kernel on AVX-512 VNNI: one `vpdpbusd` multiplies 4 broadcast activation quants (u8, 7-bit
//! + 64) of one row by 4 k-values of all 16 columns (i8 weights), summing in i32 lanes, so a block of 32 is 8
//! instructions per row; up to 8 rows share every weight load (6 rows when two neighbouring tiles are computed
//! together, so that each broadcast activation word feeds two `vpdpbusd`).

use super::{Q8Rows, TileOut, TileView, BLOCK, TILE, TILE_BLOCK_BYTES};
use std::arch::x86_64::*;
use std::ops::Range;

pub fn available() -> bool {
    use std::sync::OnceLock;
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("avx512vnni")
    })
}

/// `super::quantize_activations` in two registers: the same scale, rounding (to nearest even, the default
/// MXCSR mode) and offset.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub unsafe fn quantize_activations(x: &[f32], q: &mut [u8]) -> f32 {
    debug_assert!(x.len() == BLOCK && q.len() == BLOCK);
    let (a, b) = (_mm512_loadu_ps(x.as_ptr()), _mm512_loadu_ps(x.as_ptr().add(16)));
    let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(b)));
    let d = amax / super::ACT_LEVELS;
    let inv = _mm512_set1_ps(if d == 0.0 { 0.0 } else { 1.0 / d });
    let offset = _mm512_set1_epi32(super::ACT_OFFSET);
    let qa = _mm512_add_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(a, inv)), offset);
    let qb = _mm512_add_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(b, inv)), offset);
    _mm_storeu_si128(q.as_mut_ptr() as *mut __m128i, _mm512_cvtepi32_epi8(qa));
    _mm_storeu_si128(q.as_mut_ptr().add(16) as *mut __m128i, _mm512_cvtepi32_epi8(qb));
    d
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub unsafe fn tile(w: &TileView, x: &Q8Rows, rows: Range<usize>, out: &TileOut) {
    let (w, out) = (std::array::from_ref(w), std::slice::from_ref(out));
    // SAFETY: the caller checked the CPU's features, which `rows` is compiled for.
    super::for_row_groups(rows, 8, |row, n| unsafe {
        match n {
            8 => self::rows::<1, 8>(w, x, row, out),
            4 => self::rows::<1, 4>(w, x, row, out),
            _ => self::rows::<1, 1>(w, x, row, out),
        }
    })
}

/// Two neighbouring tiles (32 columns) at once: each broadcast activation feeds two `vpdpbusd`, and each
/// row's scale is broadcast once for both. 6 rows: 2·6 block sums, 2·6 running sums, 2 weight vectors and a
/// broadcast fit the 32 zmm registers.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub unsafe fn tile_pair(w: &[TileView; 2], x: &Q8Rows, rows: Range<usize>, out: &[TileOut]) {
    // SAFETY: as in `tile`.
    super::for_row_groups(rows, 6, |row, n| unsafe {
        match n {
            6 => self::rows::<2, 6>(w, x, row, out),
            4 => self::rows::<2, 4>(w, x, row, out),
            _ => self::rows::<2, 1>(w, x, row, out),
        }
    })
}

/// `MR` rows of `T` neighbouring tiles (`out[t]` receives tile `t`).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn rows<const T: usize, const MR: usize>(w: &[TileView; T], x: &Q8Rows, row0: usize, out: &[TileOut]) {
    let k = x.blocks * BLOCK;
    let xq = x.quants.as_ptr().add(row0 * k);
    let mut acc = [[_mm512_setzero_ps(); T]; MR];
    for b in 0..x.blocks {
        // Each block's sums start at minus what the activations' `+ 64` adds (`64 · Σw`, stored negated).
        let mut start = [_mm512_setzero_si512(); T];
        for t in 0..T {
            start[t] = _mm512_loadu_si512(w[t].offsets.as_ptr().add(b * TILE) as *const _);
        }
        let mut dots = [start; MR];
        for g in 0..BLOCK / 4 {
            let mut weights = [_mm512_setzero_si512(); T];
            for t in 0..T {
                weights[t] = _mm512_loadu_si512(w[t].quants.as_ptr().add(b * TILE_BLOCK_BYTES + g * TILE * 4) as *const _);
            }
            for r in 0..MR {
                let four = _mm512_set1_epi32((xq.add(r * k + b * BLOCK + g * 4) as *const i32).read_unaligned());
                for t in 0..T {
                    dots[r][t] = _mm512_dpbusd_epi32(dots[r][t], four, weights[t]);
                }
            }
        }
        for t in 0..T {
            let w_scales = _mm512_loadu_ps(w[t].scales.as_ptr().add(b * TILE));
            for r in 0..MR {
                let scale = _mm512_mul_ps(w_scales, _mm512_set1_ps(x.scales[(row0 + r) * x.blocks + b]));
                // Multiply, then add (not FMA): the bits every other kernel computes.
                acc[r][t] = _mm512_add_ps(acc[r][t], _mm512_mul_ps(_mm512_cvtepi32_ps(dots[r][t]), scale));
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        for t in 0..T {
            let mut sums = [0f32; TILE];
            _mm512_storeu_ps(sums.as_mut_ptr(), acc[t]);
            out[t].write(row0 + r, &sums);
        }
    }
}
