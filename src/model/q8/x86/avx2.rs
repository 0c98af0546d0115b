//! The q8_0 tile kernel on AVX2 (no VNNI: most laptops and servers before 2019, and VMs that hide AVX-512).
//! `vpmaddubsw` multiplies the activations' u8 quants (7-bit + 64, 1…127) by the i8 weights in pairs into
//! i16s — exact, since 2·127·128 < 2¹⁵ — and `vpmaddwd` by ones sums pairs of pairs into one i32 per column:
//! three instructions per 32 multiply-adds, the weights loaded once for every row of the group. The 4-row
//! case, where nearly all the time goes, is written in assembly (`rows_4`).
//!
//! The same kernel with AVX-VNNI (Intel since Alder Lake — most laptops and desktops since 2021, which have
//! no AVX-512 — and AMD Zen 5): the three instructions become one `{vex} vpdpbusd` (u8 × i8, 4 products per
//! i32 lane, added), the rest is the same assembly (`rows_4_vnni`), so the same bits.

use crate::model::q8::{Q8Rows, TileOut, TileView, BLOCK, TILE, TILE_BLOCK_BYTES};
use std::arch::x86_64::*;
use std::ops::Range;

pub fn available() -> bool {
    crate::model::math::has_avx2()
}

/// Whether the CPU has VEX-encoded 8-bit dot products (AVX-VNNI) as well as AVX2.
pub fn vnni_available() -> bool {
    available() && is_x86_feature_detected!("avxvnni")
}

#[target_feature(enable = "avx2")]
pub unsafe fn tile(w: &TileView, x: &Q8Rows, rows: Range<usize>, out: &TileOut) {
    // SAFETY: the caller checked the CPU's features, which `rows` is compiled for.
    crate::model::q8::for_row_groups(rows, 4, |row, n| unsafe {
        match n {
            4 => self::rows_4(w, x, row, out),
            _ => self::rows::<1>(w, x, row, out),
        }
    })
}

/// [`tile`] with AVX-VNNI's dot products for the 4-row groups (the few rows left over take AVX2's, which
/// compute the same bits).
#[target_feature(enable = "avx2,avxvnni")]
pub unsafe fn tile_vnni(w: &TileView, x: &Q8Rows, rows: Range<usize>, out: &TileOut) {
    // SAFETY: the caller checked the CPU's features, which `rows` is compiled for.
    crate::model::q8::for_row_groups(rows, 4, |row, n| unsafe {
        match n {
            4 => self::rows_4_vnni(w, x, row, out),
            _ => self::rows::<1>(w, x, row, out),
        }
    })
}

/// The i32 block sums of row `r` (both halves: ymm 2r, 2r+1) += the activations at `[x]` `· weights`
/// (ymm8, ymm9) for group `g`: broadcast 4 quants, `vpmaddubsw` (u8 × i8 pairs → i16), `vpmaddwd` by
/// ones (ymm10; pairs of pairs → i32), add.
macro_rules! group_row {
    ($x:literal, $lo:literal, $hi:literal) => {
        concat!(
            "vpbroadcastd ymm11, dword ptr [", $x, " + \\g * 4]\n",
            "vpmaddubsw ymm12, ymm11, ymm8\n", "vpmaddwd ymm12, ymm12, ymm10\n", "vpaddd ymm", $lo, ", ymm", $lo, ", ymm12\n",
            "vpmaddubsw ymm13, ymm11, ymm9\n", "vpmaddwd ymm13, ymm13, ymm10\n", "vpaddd ymm", $hi, ", ymm", $hi, ", ymm13\n",
        )
    };
}

/// [`group_row`] with AVX-VNNI: `{vex} vpdpbusd` adds the 4 products per column to the block sums directly.
macro_rules! group_row_vnni {
    ($x:literal, $lo:literal, $hi:literal) => {
        concat!(
            "vpbroadcastd ymm11, dword ptr [", $x, " + \\g * 4]\n",
            "{{vex}} vpdpbusd ymm", $lo, ", ymm11, ymm8\n", "{{vex}} vpdpbusd ymm", $hi, ", ymm11, ymm9\n",
        )
    };
}

/// Row `r`'s running sums at `[{sums} + 64r]` += f32(block sums ymm lo, hi) · (weight scales (ymm8, ymm9)
/// · the row's scale at `[xs]`): multiply, then add (not FMA), the bits every other kernel computes.
macro_rules! rescale_row {
    ($xs:literal, $lo:literal, $hi:literal, $sum:literal) => {
        concat!(
            "vbroadcastss ymm11, dword ptr [", $xs, "]\n",
            "vmulps ymm12, ymm8, ymm11\n", "vmulps ymm13, ymm9, ymm11\n",
            "vcvtdq2ps ymm", $lo, ", ymm", $lo, "\n", "vmulps ymm", $lo, ", ymm", $lo, ", ymm12\n",
            "vaddps ymm", $lo, ", ymm", $lo, ", [{sums} + ", $sum, "]\n", "vmovups [{sums} + ", $sum, "], ymm", $lo, "\n",
            "vcvtdq2ps ymm", $hi, ", ymm", $hi, "\n", "vmulps ymm", $hi, ", ymm", $hi, ", ymm13\n",
            "vaddps ymm", $hi, ", ymm", $hi, ", [{sums} + ", $sum, " + 32]\n", "vmovups [{sums} + ", $sum, " + 32], ymm", $hi, "\n",
        )
    };
}

/// Defines a 4-row kernel `$name`: `$prologue` sets up registers, `$group_row` is one row's step of a group.
macro_rules! rows_4_kernel {
    ($(#[$attr:meta])* $name:ident, $features:literal, $prologue:literal, $group_row:ident) => {
        $(#[$attr])*
        #[target_feature(enable = $features)]
        unsafe fn $name(w: &TileView, x: &Q8Rows, row0: usize, out: &TileOut) {
            let blocks = x.blocks;
            let k = blocks * BLOCK;
            assert!(
                blocks > 0
                    && w.quants.len() >= blocks * TILE_BLOCK_BYTES
                    && w.scales.len() >= blocks * TILE
                    && w.offsets.len() >= blocks * TILE
                    && x.quants.len() >= (row0 + 4) * k
                    && x.scales.len() >= (row0 + 4) * blocks
            );
            let mut sums = [[0f32; TILE]; 4];
            std::arch::asm!(
                $prologue,
                "2:",
                // Each block's exact i32 sums start at the stored −64·Σw.
                "vmovdqu ymm8, [{off}]", "vmovdqu ymm9, [{off} + 32]",
                "vmovdqa ymm0, ymm8", "vmovdqa ymm1, ymm9", "vmovdqa ymm2, ymm8", "vmovdqa ymm3, ymm9",
                "vmovdqa ymm4, ymm8", "vmovdqa ymm5, ymm9", "vmovdqa ymm6, ymm8", "vmovdqa ymm7, ymm9",
                // 8 groups of 4 k-values: the tile's 16 columns of weights, then each row's 4 activations.
                ".irp g, 0, 1, 2, 3, 4, 5, 6, 7",
                "vmovdqu ymm8, [{w} + \\g * 64]", "vmovdqu ymm9, [{w} + \\g * 64 + 32]",
                $group_row!("{x}", 0, 1),
                $group_row!("{x} + {k}", 2, 3),
                $group_row!("{x2}", 4, 5),
                $group_row!("{x2} + {k}", 6, 7),
                ".endr",
                "vmovups ymm8, [{ws}]", "vmovups ymm9, [{ws} + 32]",
                rescale_row!("{xs}", 0, 1, 0),
                rescale_row!("{xs} + {bs}", 2, 3, 64),
                rescale_row!("{xs2}", 4, 5, 128),
                rescale_row!("{xs2} + {bs}", 6, 7, 192),
                "add {w}, 512", "add {ws}, 64", "add {off}, 64",
                "add {x}, 32", "add {x2}, 32", "add {xs}, 4", "add {xs2}, 4",
                "dec {n}", "jnz 2b",
                n = inout(reg) blocks => _,
                w = inout(reg) w.quants.as_ptr() => _,
                ws = inout(reg) w.scales.as_ptr() => _,
                off = inout(reg) w.offsets.as_ptr() => _,
                x = inout(reg) x.quants.as_ptr().add(row0 * k) => _,
                x2 = inout(reg) x.quants.as_ptr().add((row0 + 2) * k) => _,
                k = in(reg) k,
                xs = inout(reg) x.scales.as_ptr().add(row0 * blocks) => _,
                xs2 = inout(reg) x.scales.as_ptr().add((row0 + 2) * blocks) => _,
                bs = in(reg) blocks * 4,
                sums = in(reg) sums.as_mut_ptr(),
                out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _, out("ymm4") _, out("ymm5") _, out("ymm6") _,
                out("ymm7") _, out("ymm8") _, out("ymm9") _, out("ymm10") _, out("ymm11") _, out("ymm12") _, out("ymm13") _,
                options(nostack),
            );
            for (r, sums) in sums.iter().enumerate() {
                out.write(row0 + r, sums);
            }
        }
    };
}

rows_4_kernel!(
    /// 4 rows of one tile, [`rows::<4>`]'s arithmetic with its block loop written out in assembly: all 16
    /// columns at once (each broadcast activation word feeds both halves), the 8 block sums in ymm0–7, the
    /// running sums in memory (one load-add-store per row and half per block, off the critical path). Compiled,
    /// the intrinsics ran one half at a time (each activation word broadcast twice) with the running sums
    /// competing for the 16 registers.
    rows_4,
    "avx2",
    "vpcmpeqw ymm10, ymm10, ymm10\nvpsrlw ymm10, ymm10, 15",
    group_row
);

rows_4_kernel!(
    /// [`rows_4`] with AVX-VNNI's one-instruction step (no vector of ones needed).
    rows_4_vnni,
    "avx2,avxvnni",
    "",
    group_row_vnni
);

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
