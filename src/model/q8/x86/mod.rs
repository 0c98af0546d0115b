//! x86-64's q8_0 kernels: AVX-512 VNNI, and AVX2 with or without AVX-VNNI.

pub(super) mod avx2;
pub(super) mod avx512;
