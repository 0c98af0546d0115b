//! arm64's q8_0 kernel: 8-bit dot products (`sdot`).

pub(super) mod neon;
