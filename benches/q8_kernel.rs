//! The q8_0 kernel against this machine's 8-bit dot-product peak (a benchmark, not a test):
//!
//!     cargo bench --bench q8_kernel            # RAYON_NUM_THREADS=2 for two threads
//!
//! 1. Peak: the instruction sequence the kernel is built on, in independent chains with no loads and no
//!    stores, on every thread at once: `vpdpbusd zmm` where AVX-512 VNNI exists, else `{vex} vpdpbusd ymm`
//!    where AVX-VNNI does, else AVX2's `vpmaddubsw` + `vpmaddwd` + `vpaddd` (32 multiply-adds per
//!    `vpmaddubsw`); on arm64 `sdot` (16 per instruction) where the CPU has it.
//! 2. q8_0's ceiling (AVX-512 VNNI): the AVX-512 kernel's block in registers — 8 steps of `vpdpbusd`, then
//!    the per-block rescale (convert, weight scale × row scale, multiply, add) — what any q8_0 kernel can
//!    reach at most here, since its two multiplies share the pipes `vpdpbusd` runs on.
//! 3. The kernel (`Q8Matrix::matmul_into`, whatever this CPU runs) on the encoders' product shapes, as
//!    GMAC/s and as a fraction of that peak.

use std::time::Instant;
use tuwen::model::q8::{Epilogue, Q8Matrix, Q8Rows};
use tuwen::model::random::uniform as lcg;


/// Multiply-adds per second of one thread running the dot-product instruction flat out.
#[cfg(target_arch = "x86_64")]
fn peak_one_thread(seconds: f64) -> (f64, &'static str) {
    const ITERS: u64 = 1 << 20;
    let avx512 = is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vnni");
    let avx_vnni = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("avxvnni");
    let start = Instant::now();
    let mut macs = 0u64;
    while start.elapsed().as_secs_f64() < seconds {
        // SAFETY: each branch runs only where its features were detected.
        unsafe {
            if avx512 {
                macs += vnni_loop(ITERS);
            } else if avx_vnni {
                macs += avx_vnni_loop(ITERS);
            } else if is_x86_feature_detected!("avx2") {
                macs += avx2_loop(ITERS);
            } else {
                return (0.0, "none");
            }
        }
    }
    let name = if avx512 {
        "vpdpbusd zmm"
    } else if avx_vnni {
        "{vex} vpdpbusd ymm"
    } else {
        "vpmaddubsw+vpmaddwd+vpaddd ymm"
    };
    return (macs as f64 / start.elapsed().as_secs_f64(), name);

    // Inline assembly, so the compiler can neither hoist the loop-invariant products nor drop them.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn vnni_loop(iters: u64) -> u64 {
        std::arch::asm!(
            "vpxord zmm0, zmm0, zmm0", "vpternlogd zmm14, zmm14, zmm14, 0xff", "vpabsb zmm15, zmm14",
            "2:",
            "vpdpbusd zmm0, zmm15, zmm14", "vpdpbusd zmm1, zmm15, zmm14", "vpdpbusd zmm2, zmm15, zmm14",
            "vpdpbusd zmm3, zmm15, zmm14", "vpdpbusd zmm4, zmm15, zmm14", "vpdpbusd zmm5, zmm15, zmm14",
            "vpdpbusd zmm6, zmm15, zmm14", "vpdpbusd zmm7, zmm15, zmm14", "vpdpbusd zmm8, zmm15, zmm14",
            "vpdpbusd zmm9, zmm15, zmm14",
            "dec {n}", "jnz 2b",
            n = inout(reg) iters => _,
            out("zmm0") _, out("zmm1") _, out("zmm2") _, out("zmm3") _, out("zmm4") _, out("zmm5") _,
            out("zmm6") _, out("zmm7") _, out("zmm8") _, out("zmm9") _, out("zmm14") _, out("zmm15") _,
            options(nostack, nomem),
        );
        iters * 10 * 64
    }

    #[target_feature(enable = "avx2,avxvnni")]
    unsafe fn avx_vnni_loop(iters: u64) -> u64 {
        std::arch::asm!(
            "vpxor ymm0, ymm0, ymm0", "vpcmpeqd ymm14, ymm14, ymm14", "vpabsb ymm15, ymm14",
            "2:",
            "{{vex}} vpdpbusd ymm0, ymm15, ymm14", "{{vex}} vpdpbusd ymm1, ymm15, ymm14",
            "{{vex}} vpdpbusd ymm2, ymm15, ymm14", "{{vex}} vpdpbusd ymm3, ymm15, ymm14",
            "{{vex}} vpdpbusd ymm4, ymm15, ymm14", "{{vex}} vpdpbusd ymm5, ymm15, ymm14",
            "{{vex}} vpdpbusd ymm6, ymm15, ymm14", "{{vex}} vpdpbusd ymm7, ymm15, ymm14",
            "{{vex}} vpdpbusd ymm8, ymm15, ymm14", "{{vex}} vpdpbusd ymm9, ymm15, ymm14",
            "dec {n}", "jnz 2b",
            n = inout(reg) iters => _,
            out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _, out("ymm4") _, out("ymm5") _,
            out("ymm6") _, out("ymm7") _, out("ymm8") _, out("ymm9") _, out("ymm14") _, out("ymm15") _,
            options(nostack, nomem),
        );
        iters * 10 * 32
    }

    #[target_feature(enable = "avx2")]
    unsafe fn avx2_loop(iters: u64) -> u64 {
        // Four independent chains of the kernel's three-instruction step: u8×i8 pairs → i16, pairs of pairs →
        // i32 (× ones), accumulate.
        std::arch::asm!(
            "vpcmpeqw ymm15, ymm15, ymm15", "vpsrlw ymm15, ymm15, 15", "vpabsb ymm14, ymm15",
            "2:",
            "vpmaddubsw ymm4, ymm14, ymm15", "vpmaddubsw ymm5, ymm14, ymm15",
            "vpmaddubsw ymm6, ymm14, ymm15", "vpmaddubsw ymm7, ymm14, ymm15",
            "vpmaddwd ymm4, ymm4, ymm15", "vpmaddwd ymm5, ymm5, ymm15",
            "vpmaddwd ymm6, ymm6, ymm15", "vpmaddwd ymm7, ymm7, ymm15",
            "vpaddd ymm0, ymm0, ymm4", "vpaddd ymm1, ymm1, ymm5", "vpaddd ymm2, ymm2, ymm6", "vpaddd ymm3, ymm3, ymm7",
            "vpmaddubsw ymm8, ymm14, ymm15", "vpmaddubsw ymm9, ymm14, ymm15",
            "vpmaddubsw ymm10, ymm14, ymm15", "vpmaddubsw ymm11, ymm14, ymm15",
            "vpmaddwd ymm8, ymm8, ymm15", "vpmaddwd ymm9, ymm9, ymm15",
            "vpmaddwd ymm10, ymm10, ymm15", "vpmaddwd ymm11, ymm11, ymm15",
            "vpaddd ymm0, ymm0, ymm8", "vpaddd ymm1, ymm1, ymm9", "vpaddd ymm2, ymm2, ymm10", "vpaddd ymm3, ymm3, ymm11",
            "dec {n}", "jnz 2b",
            n = inout(reg) iters => _,
            out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _, out("ymm4") _, out("ymm5") _,
            out("ymm6") _, out("ymm7") _, out("ymm8") _, out("ymm9") _, out("ymm10") _, out("ymm11") _,
            out("ymm14") _, out("ymm15") _,
            options(nostack, nomem),
        );
        iters * 8 * 32
    }
}

/// Multiply-adds per second of one thread running q8_0's block (6 rows × 2 tiles: 8 steps of 12 `vpdpbusd`,
/// then each of the 12 sums converted, scaled by weight scale × row scale and added) in registers; `None`
/// without AVX-512 VNNI.
#[cfg(target_arch = "x86_64")]
fn q8_0_ceiling_one_thread(seconds: f64) -> Option<f64> {
    if !(is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vnni")) {
        return None;
    }
    const ITERS: u64 = 1 << 16;
    let row_scales = [1.0f32; 6];
    let start = Instant::now();
    let mut macs = 0u64;
    while start.elapsed().as_secs_f64() < seconds {
        // SAFETY: the features were detected above; the loop reads only `row_scales`.
        macs += unsafe { block_loop(ITERS, row_scales.as_ptr()) };
    }
    return Some(macs as f64 / start.elapsed().as_secs_f64());

    /// `block sum → running sum` for each `dot => running, row scale's byte offset`: convert, weight scale
    /// (zmm29) × the row's scale, multiply, add — the kernel's rescale.
    macro_rules! rescale {
        ($($dot:literal => $sum:literal, $row:literal);*) => {
            concat!($(
                "vmulps zmm28, zmm29, dword ptr [{s} + ", $row, "]{{1to16}}\n",
                "vcvtdq2ps zmm", $dot, ", zmm", $dot, "\n",
                "vmulps zmm", $dot, ", zmm", $dot, ", zmm28\n",
                "vaddps zmm", $sum, ", zmm", $sum, ", zmm", $dot, "\n",
            )*)
        };
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn block_loop(iters: u64, row_scales: *const f32) -> u64 {
        std::arch::asm!(
            "vpternlogd zmm14, zmm14, zmm14, 0xff", "vpabsb zmm15, zmm14", "vpxord zmm29, zmm29, zmm29",
            "2:",
            ".rept 8",
            "vpdpbusd zmm0, zmm15, zmm14", "vpdpbusd zmm1, zmm15, zmm14", "vpdpbusd zmm2, zmm15, zmm14",
            "vpdpbusd zmm3, zmm15, zmm14", "vpdpbusd zmm4, zmm15, zmm14", "vpdpbusd zmm5, zmm15, zmm14",
            "vpdpbusd zmm6, zmm15, zmm14", "vpdpbusd zmm7, zmm15, zmm14", "vpdpbusd zmm8, zmm15, zmm14",
            "vpdpbusd zmm9, zmm15, zmm14", "vpdpbusd zmm10, zmm15, zmm14", "vpdpbusd zmm11, zmm15, zmm14",
            ".endr",
            rescale!(0 => 16, 0; 1 => 17, 0; 2 => 18, 4; 3 => 19, 4; 4 => 20, 8; 5 => 21, 8;
                6 => 22, 12; 7 => 23, 12; 8 => 24, 16; 9 => 25, 16; 10 => 26, 20; 11 => 27, 20),
            "dec {n}", "jnz 2b",
            n = inout(reg) iters => _, s = in(reg) row_scales,
            out("zmm0") _, out("zmm1") _, out("zmm2") _, out("zmm3") _, out("zmm4") _, out("zmm5") _,
            out("zmm6") _, out("zmm7") _, out("zmm8") _, out("zmm9") _, out("zmm10") _, out("zmm11") _,
            out("zmm14") _, out("zmm15") _, out("zmm16") _, out("zmm17") _, out("zmm18") _, out("zmm19") _,
            out("zmm20") _, out("zmm21") _, out("zmm22") _, out("zmm23") _, out("zmm24") _, out("zmm25") _,
            out("zmm26") _, out("zmm27") _, out("zmm28") _, out("zmm29") _,
            options(nostack, readonly),
        );
        iters * 8 * 12 * 64
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn q8_0_ceiling_one_thread(_seconds: f64) -> Option<f64> {
    None
}

#[cfg(target_arch = "aarch64")]
fn peak_one_thread(seconds: f64) -> (f64, &'static str) {
    const ITERS: u64 = 1 << 20;
    if !std::arch::is_aarch64_feature_detected!("dotprod") {
        return (0.0, "none");
    }
    let start = Instant::now();
    let mut macs = 0u64;
    while start.elapsed().as_secs_f64() < seconds {
        // SAFETY: the CPU has the dot-product instructions (checked above).
        macs += unsafe { sdot_loop(ITERS) };
    }
    return (macs as f64 / start.elapsed().as_secs_f64(), "sdot v.4s");

    // 16 independent chains: enough for 4 pipes of 4-cycle latency.
    #[target_feature(enable = "neon,dotprod")]
    unsafe fn sdot_loop(iters: u64) -> u64 {
        std::arch::asm!(
            "movi v30.16b, #3", "movi v31.16b, #5",
            "2:",
            ".irp r, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15",
            "sdot v\\r\\().4s, v30.16b, v31.16b",
            ".endr",
            "subs {n}, {n}, #1", "b.ne 2b",
            n = inout(reg) iters => _,
            out("v0") _, out("v1") _, out("v2") _, out("v3") _, out("v4") _, out("v5") _, out("v6") _, out("v7") _,
            out("v8") _, out("v9") _, out("v10") _, out("v11") _, out("v12") _, out("v13") _, out("v14") _,
            out("v15") _, out("v30") _, out("v31") _,
            options(nostack, nomem),
        );
        iters * 16 * 16
    }
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn peak_one_thread(_seconds: f64) -> (f64, &'static str) {
    (0.0, "none")
}

/// The peak on every thread at once, in GMAC/s.
fn peak(threads: usize, seconds: f64) -> (f64, &'static str) {
    let results: Vec<(f64, &str)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads).map(|_| s.spawn(|| peak_one_thread(seconds))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    (results.iter().map(|r| r.0).sum::<f64>() / 1e9, results[0].1)
}

fn main() {
    let threads = rayon::current_num_threads();
    let (first, instruction) = peak(threads, 2.0);
    println!("peak: {first:.0} GMAC/s on {threads} threads ({instruction}, register-only loop)");
    let ceiling: Option<f64> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads).map(|_| s.spawn(|| q8_0_ceiling_one_thread(2.0))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    if let Some(c) = ceiling {
        let (again, _) = peak(threads, 1.0);
        println!(
            "q8_0 ceiling: {:.0} GMAC/s = {:.0} % of the peak measured again ({again:.0}): the kernel's block in registers, 8 steps of vpdpbusd + the per-block rescale",
            c / 1e9,
            100.0 * c / 1e9 / again
        );
    }
    println!("(a VM's speed drifts: the peak is measured again right before each product, and each fraction is of that)");
    // The encoders' products: (name, rows, in, out).
    let shapes = [
        ("text b1: qkv 52×768→2304", 52, 768, 2304),
        ("text b1: ffn up 52×768→3072", 52, 768, 3072),
        ("text b1: ffn down 52×3072→768", 52, 3072, 768),
        ("vision b8: qkv 1576×768→2304", 1576, 768, 2304),
        ("vision b8: attn out 1576×768→768", 1576, 768, 768),
        ("vision b8: ffn up 1576×768→3072", 1576, 768, 3072),
        ("vision b8: ffn down 1576×3072→768", 1576, 3072, 768),
    ];
    let mut kernel = "";
    println!("| product | ms | GMAC/s | peak then | of peak |");
    println!("|---|---|---|---|---|");
    for (name, rows, in_dim, out_dim) in shapes {
        let w = Q8Matrix::quantize(out_dim, in_dim, &lcg(1, out_dim * in_dim));
        kernel = w.kernel_name();
        let x = Q8Rows::quantize(&lcg(2, rows * in_dim), rows, in_dim);
        let bias = lcg(3, out_dim);
        let mut out = vec![0f32; rows * out_dim];
        let epilogue = Epilogue { bias: Some(&bias), ..Epilogue::default() };
        w.matmul_into(&x, &mut out, &epilogue);
        let (peak, _) = peak(threads, 0.5);
        let (start, mut runs) = (Instant::now(), 0);
        while start.elapsed().as_secs_f64() < 1.0 || runs < 3 {
            w.matmul_into(&x, &mut out, &epilogue);
            runs += 1;
        }
        let per = start.elapsed().as_secs_f64() / runs as f64;
        let gmacs = (rows * in_dim * out_dim) as f64 / per / 1e9;
        println!("| {name} | {:.2} | {gmacs:.0} | {peak:.0} | {:.0} % |", per * 1e3, 100.0 * gmacs / peak);
    }
    println!("kernel: {kernel}, {threads} threads");
}
