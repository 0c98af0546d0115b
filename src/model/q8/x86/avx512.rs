//! The q8_0 tile kernel on AVX-512 VNNI: one `vpdpbusd` multiplies 4 broadcast activation quants (u8, 7-bit
//! + 64) of one row by 4 k-values of all 16 columns (i8 weights), summing in i32 lanes, so a block of 32 is 8
//! instructions per row; up to 8 rows share every weight load (6 rows when two neighbouring tiles are computed
//! together, so that each broadcast activation word feeds two `vpdpbusd`). The 6-row × 2-tile case, where
//! nearly all the time goes, is written in assembly (`rows_6x2`): the same instructions in the same order
//! as the intrinsics, without the compiler's spills and bounds checks.

use crate::model::q8::{Q8Rows, TileOut, TileView, BLOCK, TILE, TILE_BLOCK_BYTES};
use std::arch::x86_64::*;
use std::ops::Range;

pub fn available() -> bool {
    use std::sync::OnceLock;
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("avx512vnni")
    })
}

/// `crate::model::q8::quantize_activations` in two registers: the same scale, rounding (to nearest even, the default
/// MXCSR mode) and offset.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub unsafe fn quantize_activations(x: &[f32], q: &mut [u8]) -> f32 {
    debug_assert!(x.len() == BLOCK && q.len() == BLOCK);
    let (a, b) = (_mm512_loadu_ps(x.as_ptr()), _mm512_loadu_ps(x.as_ptr().add(16)));
    let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(b)));
    let d = amax / crate::model::q8::ACT_LEVELS;
    let inv = _mm512_set1_ps(if d == 0.0 { 0.0 } else { 1.0 / d });
    let offset = _mm512_set1_epi32(crate::model::q8::ACT_OFFSET);
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
    crate::model::q8::for_row_groups(rows, 8, |row, n| unsafe {
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
    crate::model::q8::for_row_groups(rows, 6, |row, n| unsafe {
        match n {
            6 => self::rows_6x2(w, x, row, out),
            4 => self::rows::<2, 4>(w, x, row, out),
            _ => self::rows::<2, 1>(w, x, row, out),
        }
    })
}

/// 6 rows of two neighbouring tiles, [`rows::<2, 6>`]'s arithmetic with its block loop written out in
/// assembly. The compiled intrinsics ran at ~59 % of the `vpdpbusd` peak on Zen 4 (bounds checks, spills
/// and reloads around the 24 block sums and running sums, which take all 32 zmm registers); this sequence
/// runs at ~79 % — the ceiling of q8_0's two multiplies per block rescale, which share `vpdpbusd`'s pipes.
/// Registers: zmm0–11 the block sums (row r, tile t in 2r + t), zmm12–13 the two tiles' weights, zmm14 a
/// broadcast activation word, zmm15/31 the two tiles' block starts (−64·Σw), zmm16–27 the running sums,
/// zmm28 a scale, zmm29–30 the two tiles' weight scales.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn rows_6x2(w: &[TileView; 2], x: &Q8Rows, row0: usize, out: &[TileOut]) {
    let blocks = x.blocks;
    let k = blocks * BLOCK;
    // The second tile's arrays follow the first's (one packed matrix, neighbouring tiles): one stride
    // (`tile_bytes`, the bytes of a tile's scales or offsets; its weights are 8 times that) reaches them.
    let tile_bytes = blocks * TILE * 4;
    assert!(
        w[1].quants.as_ptr() == w[0].quants.as_ptr().add(blocks * TILE_BLOCK_BYTES)
            && w[1].scales.as_ptr() == w[0].scales.as_ptr().add(blocks * TILE)
            && w[1].offsets.as_ptr() == w[0].offsets.as_ptr().add(blocks * TILE)
            && blocks > 0
            && x.quants.len() >= (row0 + 6) * k
            && x.scales.len() >= (row0 + 6) * blocks
    );
    // The 12 output rows this block will store (and their residuals) fetched into the cache while it
    // computes: stored cold, each waited for its line in the store queue, which then filled and stalled the
    // next block (the store was ~9 % of the kernel's samples).
    for r in 0..6 {
        for t in out.iter().take(2) {
            _mm_prefetch::<_MM_HINT_ET0>(t.first.wrapping_add((row0 + r) * t.stride) as *const i8);
            if !t.residual.is_null() {
                _mm_prefetch::<_MM_HINT_T0>(t.residual.add((row0 + r) * t.stride) as *const i8);
            }
        }
    }
    // Written whole by the assembly below before it is read (not zeroed first: that was 1 % of the kernel).
    let mut sums = std::mem::MaybeUninit::<[[f32; TILE]; 12]>::uninit();
    std::arch::asm!(
        "vpxord zmm16, zmm16, zmm16", "vpxord zmm17, zmm17, zmm17", "vpxord zmm18, zmm18, zmm18",
        "vpxord zmm19, zmm19, zmm19", "vpxord zmm20, zmm20, zmm20", "vpxord zmm21, zmm21, zmm21",
        "vpxord zmm22, zmm22, zmm22", "vpxord zmm23, zmm23, zmm23", "vpxord zmm24, zmm24, zmm24",
        "vpxord zmm25, zmm25, zmm25", "vpxord zmm26, zmm26, zmm26", "vpxord zmm27, zmm27, zmm27",
        "2:",
        // Each block's exact i32 sums start at the stored −64·Σw.
        "vmovdqu32 zmm15, [{off}]",
        "vmovdqu32 zmm31, [{off} + {ts}]",
        "vmovdqa64 zmm0, zmm15", "vmovdqa64 zmm1, zmm31", "vmovdqa64 zmm2, zmm15", "vmovdqa64 zmm3, zmm31",
        "vmovdqa64 zmm4, zmm15", "vmovdqa64 zmm5, zmm31", "vmovdqa64 zmm6, zmm15", "vmovdqa64 zmm7, zmm31",
        "vmovdqa64 zmm8, zmm15", "vmovdqa64 zmm9, zmm31", "vmovdqa64 zmm10, zmm15", "vmovdqa64 zmm11, zmm31",
        // 8 groups of 4 k-values: both tiles' weights, then each row's 4 activations broadcast to both.
        ".irp g, 0, 1, 2, 3, 4, 5, 6, 7",
        "vmovdqu64 zmm12, [{w} + \\g * 64]",
        "vmovdqu64 zmm13, [{w} + {ts} * 8 + \\g * 64]",
        "vpbroadcastd zmm14, dword ptr [{x} + \\g * 4]",
        "vpdpbusd zmm0, zmm14, zmm12", "vpdpbusd zmm1, zmm14, zmm13",
        "vpbroadcastd zmm14, dword ptr [{x} + {k} + \\g * 4]",
        "vpdpbusd zmm2, zmm14, zmm12", "vpdpbusd zmm3, zmm14, zmm13",
        "vpbroadcastd zmm14, dword ptr [{x} + {k} * 2 + \\g * 4]",
        "vpdpbusd zmm4, zmm14, zmm12", "vpdpbusd zmm5, zmm14, zmm13",
        "vpbroadcastd zmm14, dword ptr [{x3} + \\g * 4]",
        "vpdpbusd zmm6, zmm14, zmm12", "vpdpbusd zmm7, zmm14, zmm13",
        "vpbroadcastd zmm14, dword ptr [{x3} + {k} + \\g * 4]",
        "vpdpbusd zmm8, zmm14, zmm12", "vpdpbusd zmm9, zmm14, zmm13",
        "vpbroadcastd zmm14, dword ptr [{x3} + {k} * 2 + \\g * 4]",
        "vpdpbusd zmm10, zmm14, zmm12", "vpdpbusd zmm11, zmm14, zmm13",
        ".endr",
        // running sum += f32(block sum) · (weight scale · row scale): multiply, then add, as every kernel.
        "vmovups zmm29, [{ws}]",
        "vmovups zmm30, [{ws} + {ts}]",
        "vmulps zmm28, zmm29, dword ptr [{xs}]{{1to16}}",
        "vcvtdq2ps zmm0, zmm0", "vmulps zmm0, zmm0, zmm28", "vaddps zmm16, zmm16, zmm0",
        "vmulps zmm28, zmm30, dword ptr [{xs}]{{1to16}}",
        "vcvtdq2ps zmm1, zmm1", "vmulps zmm1, zmm1, zmm28", "vaddps zmm17, zmm17, zmm1",
        "vmulps zmm28, zmm29, dword ptr [{xs} + {bs}]{{1to16}}",
        "vcvtdq2ps zmm2, zmm2", "vmulps zmm2, zmm2, zmm28", "vaddps zmm18, zmm18, zmm2",
        "vmulps zmm28, zmm30, dword ptr [{xs} + {bs}]{{1to16}}",
        "vcvtdq2ps zmm3, zmm3", "vmulps zmm3, zmm3, zmm28", "vaddps zmm19, zmm19, zmm3",
        "vmulps zmm28, zmm29, dword ptr [{xs} + {bs} * 2]{{1to16}}",
        "vcvtdq2ps zmm4, zmm4", "vmulps zmm4, zmm4, zmm28", "vaddps zmm20, zmm20, zmm4",
        "vmulps zmm28, zmm30, dword ptr [{xs} + {bs} * 2]{{1to16}}",
        "vcvtdq2ps zmm5, zmm5", "vmulps zmm5, zmm5, zmm28", "vaddps zmm21, zmm21, zmm5",
        "vmulps zmm28, zmm29, dword ptr [{xs3}]{{1to16}}",
        "vcvtdq2ps zmm6, zmm6", "vmulps zmm6, zmm6, zmm28", "vaddps zmm22, zmm22, zmm6",
        "vmulps zmm28, zmm30, dword ptr [{xs3}]{{1to16}}",
        "vcvtdq2ps zmm7, zmm7", "vmulps zmm7, zmm7, zmm28", "vaddps zmm23, zmm23, zmm7",
        "vmulps zmm28, zmm29, dword ptr [{xs3} + {bs}]{{1to16}}",
        "vcvtdq2ps zmm8, zmm8", "vmulps zmm8, zmm8, zmm28", "vaddps zmm24, zmm24, zmm8",
        "vmulps zmm28, zmm30, dword ptr [{xs3} + {bs}]{{1to16}}",
        "vcvtdq2ps zmm9, zmm9", "vmulps zmm9, zmm9, zmm28", "vaddps zmm25, zmm25, zmm9",
        "vmulps zmm28, zmm29, dword ptr [{xs3} + {bs} * 2]{{1to16}}",
        "vcvtdq2ps zmm10, zmm10", "vmulps zmm10, zmm10, zmm28", "vaddps zmm26, zmm26, zmm10",
        "vmulps zmm28, zmm30, dword ptr [{xs3} + {bs} * 2]{{1to16}}",
        "vcvtdq2ps zmm11, zmm11", "vmulps zmm11, zmm11, zmm28", "vaddps zmm27, zmm27, zmm11",
        "add {w}, 512", "add {ws}, 64", "add {off}, 64",
        "add {x}, 32", "add {x3}, 32", "add {xs}, 4", "add {xs3}, 4",
        "dec {n}", "jnz 2b",
        "vmovups [{sums}], zmm16", "vmovups [{sums} + 64], zmm17", "vmovups [{sums} + 128], zmm18",
        "vmovups [{sums} + 192], zmm19", "vmovups [{sums} + 256], zmm20", "vmovups [{sums} + 320], zmm21",
        "vmovups [{sums} + 384], zmm22", "vmovups [{sums} + 448], zmm23", "vmovups [{sums} + 512], zmm24",
        "vmovups [{sums} + 576], zmm25", "vmovups [{sums} + 640], zmm26", "vmovups [{sums} + 704], zmm27",
        n = inout(reg) blocks => _,
        w = inout(reg) w[0].quants.as_ptr() => _,
        ws = inout(reg) w[0].scales.as_ptr() => _,
        off = inout(reg) w[0].offsets.as_ptr() => _,
        ts = in(reg) tile_bytes,
        x = inout(reg) x.quants.as_ptr().add(row0 * k) => _,
        x3 = inout(reg) x.quants.as_ptr().add((row0 + 3) * k) => _,
        k = in(reg) k,
        xs = inout(reg) x.scales.as_ptr().add(row0 * blocks) => _,
        xs3 = inout(reg) x.scales.as_ptr().add((row0 + 3) * blocks) => _,
        bs = in(reg) blocks * 4,
        sums = in(reg) sums.as_mut_ptr(),
        out("zmm0") _, out("zmm1") _, out("zmm2") _, out("zmm3") _, out("zmm4") _, out("zmm5") _, out("zmm6") _,
        out("zmm7") _, out("zmm8") _, out("zmm9") _, out("zmm10") _, out("zmm11") _, out("zmm12") _, out("zmm13") _,
        out("zmm14") _, out("zmm15") _, out("zmm16") _, out("zmm17") _, out("zmm18") _, out("zmm19") _, out("zmm20") _,
        out("zmm21") _, out("zmm22") _, out("zmm23") _, out("zmm24") _, out("zmm25") _, out("zmm26") _, out("zmm27") _,
        out("zmm28") _, out("zmm29") _, out("zmm30") _, out("zmm31") _,
        options(nostack),
    );
    // SAFETY: the assembly stored all 12 running sums.
    let sums = sums.assume_init_ref();
    for (i, sums) in sums.iter().enumerate() {
        out[i % 2].write(row0 + i / 2, sums);
    }
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
