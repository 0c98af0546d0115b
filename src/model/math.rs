//! Elementwise functions of the encoders in plain f32 arithmetic (adds, multiplies, one divide; no libm, no
//! fused multiply-add), branch-free so loops over them vectorise. Because every step is an IEEE operation in
//! a fixed order, they give the same bits on every CPU and in wasm — what keeps the CPU backend's results
//! from depending on the machine (libm's `exp`/`erf` differ between platforms and between CPUs that
//! glibc dispatches differently).

use crate::config::Activation;

/// The larger of `m` and `v`, `m` when `v` is NaN (as `f32::max`), in one comparison everywhere.
#[inline(always)]
pub(crate) fn larger(m: f32, v: f32) -> f32 {
    if v > m {
        v
    } else {
        m
    }
}

/// `e^x`, within 2 ulp of the true value on [-87, 88]; 0 below -87.3 (so masked attention scores vanish
/// exactly), saturating at `e^88` above. Cephes' `expf`: x = n·ln2 + r, a degree-6 polynomial for `e^r`.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5·2²³: adding and subtracting it rounds to the nearest integer
    let underflow = x < -87.3;
    let x = x.clamp(-87.3, 88.0);
    let shifted = x * LOG2E + ROUND;
    let n = shifted - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 5.000_000_1e-1;
    let er = (p * (r * r) + r) + 1.0;
    // n (an integer in −126…127) read from `shifted`'s low mantissa bits, where adding ROUND put it: an
    // integer subtract that vectorises, where `n as i32` (saturating) compiled to a scalar loop on x86.
    let n_int = shifted.to_bits().wrapping_sub(ROUND.to_bits()) as i32;
    let two_n = f32::from_bits(((n_int + 127) as u32) << 23);
    if underflow {
        0.0
    } else {
        er * two_n
    }
}

/// The error function, within a few ulp (the rational approximation Eigen and XLA use; ±1 beyond |x| = 4).
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10_f32;
    p = p * x2 + 2.770_681_4e-8;
    p = p * x2 + -2.101_024e-6;
    p = p * x2 + -5.692_506_4e-5;
    p = p * x2 + -7.349_906e-4;
    p = p * x2 + -2.954_600_2e-3;
    p = p * x2 + -1.609_603_3e-2;
    let mut q = -1.456_607_2e-5_f32;
    q = q * x2 + -2.133_740_6e-4;
    q = q * x2 + -1.682_827e-3;
    q = q * x2 + -7.373_329e-3;
    q = q * x2 + -1.426_474e-2;
    x * p / q
}

/// The activation of the feed-forward layers: GELU (erf form, BERT's) or CLIP's quick GELU, `x·σ(1.702x)`.
#[inline(always)]
pub fn activate(act: Activation, x: f32) -> f32 {
    match act {
        Activation::Gelu => 0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2)),
        Activation::QuickGelu => x / (1.0 + exp(-1.702 * x)),
    }
}

/// Defines `fn name(args)` whose body is compiled three times, for the baseline, for AVX2 and for AVX-512,
/// and runs the widest copy the CPU has: wider vectors for the same IEEE operations in the same order (no
/// copy may fuse a multiply and an add), so the results do not change, only the speed.
macro_rules! wide_vectors {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$meta])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name($($arg: $ty),*) {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn widest($($arg: $ty),*) {
                    body($($arg),*)
                }
                if $crate::model::math::has_avx512() {
                    // SAFETY: the CPU has AVX-512 F, BW, DQ and VL.
                    return unsafe { widest($($arg),*) };
                }
                #[target_feature(enable = "avx2")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn wide($($arg: $ty),*) {
                    body($($arg),*)
                }
                if $crate::model::math::has_avx2() {
                    // SAFETY: the CPU has AVX2.
                    return unsafe { wide($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}
pub(crate) use wide_vectors;

#[cfg(target_arch = "x86_64")]
pub fn has_avx2() -> bool {
    use std::sync::OnceLock;
    static AVX2: OnceLock<bool> = OnceLock::new();
    *AVX2.get_or_init(|| is_x86_feature_detected!("avx2"))
}

/// AVX-512 (F, BW, DQ, VL) for [`wide_vectors`]' widest copy, unless `TUWEN_Q8_KERNEL` asks for a narrower
/// kernel (`avx-vnni`, `avx2`, `portable`), so one variable takes a whole run back to the narrower code.
#[cfg(target_arch = "x86_64")]
pub fn has_avx512() -> bool {
    use std::sync::OnceLock;
    static AVX512: OnceLock<bool> = OnceLock::new();
    *AVX512.get_or_init(|| {
        !matches!(std::env::var("TUWEN_Q8_KERNEL").as_deref(), Ok("avx-vnni" | "avx2" | "portable"))
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512dq")
            && is_x86_feature_detected!("avx512vl")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_close_to_libm() {
        let mut worst = 0f64;
        for i in -87_000..88_000 {
            let x = i as f32 * 1e-3;
            let (ours, want) = (exp(x) as f64, (x as f64).exp());
            worst = worst.max(((ours - want) / want).abs());
        }
        assert!(worst < 3e-7, "exp: worst relative error {worst:e}");
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(f32::MIN), 0.0);
        assert!(exp(100.0).is_finite());
    }

    #[test]
    fn erf_is_close_to_the_reference() {
        let mut worst = 0f64;
        for i in -6000..6000 {
            let x = i as f32 * 1e-3;
            let want = candle_core::cpu::erf::erf_f64(x as f64);
            worst = worst.max((erf(x) as f64 - want).abs());
        }
        assert!(worst < 5e-7, "erf: worst absolute error {worst:e}");
    }
}
