//! The q8_0 matrix product both towers spend their time in: activations `[rows, in]` × packed weights
//! `[out, in]` → `[rows, out]`, for encoder-sized inputs (52–1600 rows × 768–3072).
//!
//! candle's `QMatMul` is built for one-row LLM decoding: on wasm it takes one dot product per (row, column)
//! pair and re-reads every weight for every row. Here the weights are repacked once into 16-column tiles and
//! each tile is multiplied against several activation rows while it is in registers and L1. The arithmetic is
//! q8_0's: weights are the file's q8_0 blocks (i8 quants, one scale per 32); activations are quantized per
//! 32-value block too, to **7 bits** (−63…63, stored `+ 64` as u8 1…127). Seven bits are what every 8-bit dot
//! product on every target takes exactly: AVX2's `vpmaddubsw` (u8 × i8 pairs into a saturating i16: 2·127·128
//! fits), AVX-512/AVX-VNNI's `vpdpbusd` (u8 × i8), wasm's relaxed `i32x4.relaxed_dot_i8x16_i7x16_add` (whose
//! second operand must fit 7 bits) and arm64's `sdot` (i8 × i8: 1…127 is an i8 too) — so no kernel needs a
//! sign trick, and the `+ 64` is taken back per block with the weights' block sums (`64 · Σw`, computed at
//! load). One layout serves every kernel: AVX-512 VNNI, AVX2, arm64's `sdot`, simd128
//! (`i32x4.dot_i16x8_s`) and relaxed SIMD in the browser, and a portable loop. All of them compute the same
//! bits: block sums are exact in i32, and each block adds `sum · (weight scale · activation scale)` to the
//! f32 total with a plain multiply and add (no FMA), in block order. The product's epilogue (bias,
//! activation, residual) runs as each tile row is stored.

// One folder per instruction-set family; the portable kernel below is what each is checked against.
#[cfg(target_arch = "aarch64")]
mod arm;
#[cfg(target_arch = "aarch64")]
use arm::neon;
#[cfg(target_arch = "wasm32")]
mod wasm;
#[cfg(all(target_arch = "wasm32", feature = "relaxed-simd"))]
pub use wasm::relaxed_simd::{dot_form, set_dot_form, DotForm};
#[cfg(all(target_arch = "wasm32", not(feature = "relaxed-simd")))]
use wasm::simd128;
#[cfg(target_arch = "x86_64")]
mod x86;
#[cfg(target_arch = "x86_64")]
use x86::{avx2, avx512};

mod activations;
mod dispatch;
mod pack;
mod portable;

// The roles' items, for every part of the module (`use super::*`).
use activations::*;
use dispatch::*;
use pack::*;
#[cfg_attr(target_arch = "wasm32", allow(unused_imports))] // wasm always has a SIMD kernel
use portable::*;

use crate::config::Activation;
use crate::model::math::{activate, larger};
use half::f16;
use std::ops::Range;

/// Values per quantization block (q8_0's block size).
pub const BLOCK: usize = 32;
/// Output columns per packed weight tile: one AVX-512 register of i32 lanes.
pub const TILE: usize = 16;
/// Bytes of one tile × one block: 8 groups of 4 k-values × 16 columns × 4 bytes.
const TILE_BLOCK_BYTES: usize = BLOCK * TILE;
/// Activation quants are −63…63 (7 bits) …
const ACT_LEVELS: f32 = 63.0;
/// … stored `+ 64` as u8 (1…127): the unsigned operand of u8 × i8 dot products. The `64 · Σw` this adds is
/// taken back per block from the weights' block sums.
const ACT_OFFSET: i32 = 64;
/// Weight quants are q8_0's −127…127 (a −128 in a file is taken exactly too).
const WEIGHT_LEVELS: f32 = 127.0;

/// A weight matrix `[out, in]` packed for the kernels. `in` must be a multiple of [`BLOCK`]; `out` is padded
/// to whole tiles with zero columns.
#[derive(Debug)]
pub struct Q8Matrix {
    out_dim: usize,
    in_dim: usize,
    /// `[tile][block][k/4 group (8)][column (16)][4]`.
    quants: Vec<i8>,
    /// `[tile][block][column (16)]`.
    scales: Vec<f32>,
    /// `[tile][block][column (16)]`: `−64 · Σ quants` of the block, minus what the activations' `+ 64` adds to
    /// a block's dot product: where each block's exact sum starts.
    offsets: Vec<i32>,
}

/// Activations quantized per 32-value block to 7 bits, as the kernels read them. A buffer: reused, it
/// allocates only when it must grow.
#[derive(Default)]
pub struct Q8Rows {
    rows: usize,
    blocks: usize,
    /// `[row][in]`: quant + 64 (1…127).
    quants: Vec<u8>,
    /// `[row][block]`
    scales: Vec<f32>,
    /// `quants − 64` as i16, interleaved by groups of 4 rows, for simd128's i16 dot products.
    #[cfg(all(target_arch = "wasm32", not(feature = "relaxed-simd")))]
    wide: Vec<i16>,
}

/// A deliberate fault, so tests can prove that their bounds on quantized embeddings catch a wrong kernel.
#[doc(hidden)]
pub mod fault {
    use super::{Q8Rows, ACT_OFFSET, BLOCK};
    use std::sync::atomic::{AtomicBool, Ordering};

    static DROP_LAST_GROUP: AtomicBool = AtomicBool::new(false);

    /// From now on every q8_0 product forgets the last 4 values of each 32-value block, as a kernel with an
    /// off-by-one in its inner loop would. Process-wide: only for a test binary of its own.
    pub fn drop_last_group_of_every_block(on: bool) {
        DROP_LAST_GROUP.store(on, Ordering::SeqCst);
    }

    pub(super) fn active() -> bool {
        DROP_LAST_GROUP.load(Ordering::Relaxed)
    }

    pub(super) fn drop_last_groups(x: &Q8Rows) -> Q8Rows {
        let mut quants = x.quants.clone();
        for block in quants.chunks_exact_mut(BLOCK) {
            block[BLOCK - 4..].fill(ACT_OFFSET as u8);
        }
        let mut broken = Q8Rows { rows: x.rows, blocks: x.blocks, quants, scales: x.scales.clone(), ..Q8Rows::default() };
        broken.widen();
        broken
    }
}

/// Walks `rows` in groups of `group` rows, then one of 4 when `group` is larger, then single rows:
/// `kernel(first_row, rows_in_group)`, the row-group driver every SIMD kernel shares.
#[inline(always)]
#[allow(dead_code)] // on targets with only the portable kernel
fn for_row_groups(rows: Range<usize>, group: usize, mut kernel: impl FnMut(usize, usize)) {
    let mut row = rows.start;
    while row + group <= rows.end {
        kernel(row, group);
        row += group;
    }
    if group > 4 && row + 4 <= rows.end {
        kernel(row, 4);
        row += 4;
    }
    while row < rows.end {
        kernel(row, 1);
        row += 1;
    }
}

/// What a product does as it stores each value: `+ bias`, then `act`, then `+ residual` (`[rows, out]`).
#[derive(Default, Clone, Copy)]
pub struct Epilogue<'a> {
    pub bias: Option<&'a [f32]>,
    pub act: Option<Activation>,
    pub residual: Option<&'a [f32]>,
}

/// Where one tile's results go: rows `stride` floats apart, `columns` (≤ 16) of them from `first`, and the
/// tile's epilogue (`residual` null when there is none; else it points at the tile's first column).
struct TileOut {
    first: *mut f32,
    stride: usize,
    columns: usize,
    bias: [f32; TILE],
    act: Option<Activation>,
    residual: *const f32,
}

impl TileOut {
    /// Stores one row of the tile through the epilogue. Every kernel ends here, so they share its bits.
    #[inline(always)]
    fn write(&self, row: usize, sums: &[f32; TILE]) {
        let mut v: [f32; TILE] = std::array::from_fn(|c| sums[c] + self.bias[c]);
        if let Some(act) = self.act {
            for x in v.iter_mut() {
                *x = activate(act, *x);
            }
        }
        // SAFETY: `run_jobs` sized the output (and residual) for every row and these columns. `first` may
        // lie before its buffer (staging rows are addressed by the product's row number), hence the
        // wrapping offset; the row's own address is in bounds.
        unsafe {
            let (dst, residual) = (self.first.wrapping_add(row * self.stride), self.residual.wrapping_add(row * self.stride));
            // A whole tile is fixed-size loads, adds and a store, all in registers; only a matrix's last
            // tile may be partial.
            if self.columns == TILE {
                if !self.residual.is_null() {
                    for (c, x) in v.iter_mut().enumerate() {
                        *x += *residual.add(c);
                    }
                }
                (dst as *mut [f32; TILE]).write_unaligned(v);
            } else {
                self.write_partial(dst, residual, v);
            }
        }
    }

    /// A matrix's last, partial tile. Out of line: inlined, LLVM merged its copy with the whole-tile store
    /// into one `memcpy` call of variable length on every store (6–11 % of the text tower).
    #[cold]
    #[inline(never)]
    unsafe fn write_partial(&self, dst: *mut f32, residual: *const f32, mut v: [f32; TILE]) {
        if !self.residual.is_null() {
            for (c, x) in v.iter_mut().enumerate().take(self.columns) {
                *x += *residual.add(c);
            }
        }
        std::ptr::copy_nonoverlapping(v.as_ptr(), dst, self.columns);
    }
}

/// One tile's weights: `[block][group (8)][column (16)][4]` quants, `[block][column]` scales and offsets.
struct TileView<'a> {
    quants: &'a [i8],
    scales: &'a [f32],
    offsets: &'a [i32],
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
#[derive(Clone, Copy)]
struct SendConstPtr(*const f32);
impl SendConstPtr {
    /// Null stays null.
    unsafe fn at(self, offset: usize) -> *const f32 {
        if self.0.is_null() {
            self.0
        } else {
            self.0.add(offset)
        }
    }
}
unsafe impl Send for TileOut {}
unsafe impl Sync for TileOut {}
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
unsafe impl Send for SendConstPtr {}
unsafe impl Sync for SendConstPtr {}

#[cfg(test)]
mod tests;
