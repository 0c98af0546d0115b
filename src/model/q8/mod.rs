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

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "aarch64")]
mod neon;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(all(target_arch = "wasm32", target_feature = "relaxed-simd"))]
mod relaxed_simd;
#[cfg(all(target_arch = "wasm32", target_feature = "relaxed-simd"))]
pub use relaxed_simd::{dot_form, set_dot_form, DotForm};
#[cfg(all(target_arch = "wasm32", not(target_feature = "relaxed-simd")))]
mod simd128;
#[cfg(target_arch = "wasm32")]
mod wasm;

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
    #[cfg(all(target_arch = "wasm32", not(target_feature = "relaxed-simd")))]
    wide: Vec<i16>,
}

/// Quantizes one block q8_0's way to `levels` (127 for weights, 63 for activations): scale = max |x| / levels,
/// values rounded to nearest (ties to even).
#[inline(always)]
fn quantize_block(x: &[f32], out: &mut [i8], levels: f32) -> f32 {
    // Eight running maxima, so the reduction vectorises. A comparison, not `f32::max`: the same value (NaN
    // skipped either way), but `f32::max` is a libm call per element on wasm.
    let mut lanes = [0f32; 8];
    for chunk in x.chunks_exact(8) {
        for (m, v) in lanes.iter_mut().zip(chunk) {
            *m = larger(*m, v.abs());
        }
    }
    let amax = lanes.iter().fold(0f32, |m, &v| larger(m, v));
    let scale = amax / levels;
    let inv = if scale == 0.0 { 0.0 } else { 1.0 / scale };
    // Adding and subtracting 1.5·2²³ rounds to the nearest integer in plain f32 arithmetic (|v·inv| ≤ levels),
    // which vectorises everywhere, unlike `f32::round`'s libm call.
    const ROUND: f32 = 12_582_912.0;
    for (q, v) in out.iter_mut().zip(x) {
        *q = ((v * inv + ROUND) - ROUND) as i8;
    }
    scale
}

impl Q8Matrix {
    fn tiles(&self) -> usize {
        self.out_dim.div_ceil(TILE)
    }
    fn blocks(&self) -> usize {
        self.in_dim / BLOCK
    }

    /// Packs per-column blocks: `block(column, b)` gives the 32 quants and the scale of column `column`'s
    /// block `b`.
    fn pack(out_dim: usize, in_dim: usize, block: impl Fn(usize, usize) -> ([i8; BLOCK], f32)) -> Self {
        assert!(in_dim % BLOCK == 0, "q8_0 needs an input width that is a multiple of {BLOCK}, got {in_dim}");
        let (tiles, blocks) = (out_dim.div_ceil(TILE), in_dim / BLOCK);
        let mut quants = vec![0i8; tiles * blocks * TILE_BLOCK_BYTES];
        let mut scales = vec![0f32; tiles * blocks * TILE];
        let mut offsets = vec![0i32; tiles * blocks * TILE];
        for column in 0..out_dim {
            let (tile, lane) = (column / TILE, column % TILE);
            for b in 0..blocks {
                let (q, scale) = block(column, b);
                let base = (tile * blocks + b) * TILE_BLOCK_BYTES;
                for (k, &v) in q.iter().enumerate() {
                    quants[base + (k / 4) * TILE * 4 + lane * 4 + k % 4] = v;
                }
                scales[(tile * blocks + b) * TILE + lane] = scale;
                offsets[(tile * blocks + b) * TILE + lane] = -ACT_OFFSET * q.iter().map(|&v| v as i32).sum::<i32>();
            }
        }
        Self { out_dim, in_dim, quants, scales, offsets }
    }

    /// From GGUF q8_0 data: `[out][in / 32]` blocks of an f16 scale and 32 i8 quants (34 bytes each).
    pub fn from_q8_0_bytes(out_dim: usize, in_dim: usize, data: &[u8]) -> Result<Self, String> {
        const BYTES: usize = 2 + BLOCK;
        let blocks = in_dim / BLOCK;
        if in_dim % BLOCK != 0 || data.len() != out_dim * blocks * BYTES {
            return Err(format!("q8_0 data of {} bytes does not hold a [{out_dim}, {in_dim}] matrix", data.len()));
        }
        if let Some(block) = data.chunks_exact(BYTES).position(|raw| !f16::from_le_bytes([raw[0], raw[1]]).is_finite()) {
            return Err(format!(
                "the scale of q8_0 block {} of row {} is not finite: the model file is damaged",
                block % blocks,
                block / blocks
            ));
        }
        Ok(Self::pack(out_dim, in_dim, |column, b| {
            let raw = &data[(column * blocks + b) * BYTES..][..BYTES];
            let scale = f16::from_le_bytes([raw[0], raw[1]]).to_f32();
            (std::array::from_fn(|i| raw[2 + i] as i8), scale)
        }))
    }

    /// From f32 weights `[out, in]` (e.g. a 4-bit GGUF matrix dequantized): each block quantized q8_0's way.
    pub fn quantize(out_dim: usize, in_dim: usize, weights: &[f32]) -> Self {
        assert_eq!(weights.len(), out_dim * in_dim);
        Self::pack(out_dim, in_dim, |column, b| {
            let mut q = [0i8; BLOCK];
            let scale = quantize_block(&weights[column * in_dim + b * BLOCK..][..BLOCK], &mut q, WEIGHT_LEVELS);
            (q, scale)
        })
    }

    pub fn out_dim(&self) -> usize {
        self.out_dim
    }
    pub fn in_dim(&self) -> usize {
        self.in_dim
    }

    /// Block `b` of column `column`: its 32 quants and its scale.
    pub fn block(&self, column: usize, b: usize) -> ([i8; BLOCK], f32) {
        let (tile, lane, blocks) = (column / TILE, column % TILE, self.blocks());
        let base = (tile * blocks + b) * TILE_BLOCK_BYTES;
        let quants = std::array::from_fn(|k| self.quants[base + (k / 4) * TILE * 4 + lane * 4 + k % 4]);
        (quants, self.scales[(tile * blocks + b) * TILE + lane])
    }

    /// The weights as the kernels see them, dequantized to f32 `[out, in]` (for tests and references).
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.out_dim * self.in_dim];
        for column in 0..self.out_dim {
            for b in 0..self.blocks() {
                let (q, scale) = self.block(column, b);
                for (k, q) in q.iter().enumerate() {
                    out[column * self.in_dim + b * BLOCK + k] = *q as f32 * scale;
                }
            }
        }
        out
    }

    /// Matrices over the same input, their output columns one after the other (exact: blocks are copied).
    pub fn stack(parts: &[&Q8Matrix]) -> Self {
        let in_dim = parts[0].in_dim;
        assert!(parts.iter().all(|p| p.in_dim == in_dim), "stacked matrices must share their input width");
        let starts: Vec<usize> = parts
            .iter()
            .scan(0, |s, p| {
                let start = *s;
                *s += p.out_dim;
                Some(start)
            })
            .collect();
        let out_dim = parts.iter().map(|p| p.out_dim).sum();
        Self::pack(out_dim, in_dim, |column, b| {
            let part = starts.partition_point(|&s| s <= column) - 1;
            parts[part].block(column - starts[part], b)
        })
    }

    /// `x` `[rows, in]` → `x · Wᵀ (+ bias)` `[rows, out]`.
    pub fn matmul(&self, x: &[f32], rows: usize, bias: Option<&[f32]>) -> Vec<f32> {
        assert_eq!(x.len(), rows * self.in_dim, "activations are not [{rows}, {}]", self.in_dim);
        let mut q = Q8Rows::default();
        q.quantize_from(x, rows, self.in_dim);
        let mut out = vec![0f32; rows * self.out_dim];
        self.matmul_into(&q, &mut out, &Epilogue { bias, ..Epilogue::default() });
        out
    }

    /// `x · Wᵀ` into `out` `[rows, out]`, with `epilogue` applied as each tile is stored: `+ bias`, then the
    /// activation, then `+ residual`. Every output value is computed the same way whatever the number of
    /// threads and whichever kernel runs (exact i32 block sums, then one f32 multiply and add per block in
    /// block order), so results do not depend on `--threads` or on the CPU.
    pub fn matmul_into(&self, x: &Q8Rows, out: &mut [f32], epilogue: &Epilogue) {
        assert_eq!(out.len(), x.rows * self.out_dim, "the output is not [{}, {}]", x.rows, self.out_dim);
        if let Some(r) = epilogue.residual {
            assert_eq!(r.len(), x.rows * self.out_dim, "the residual is not [{}, {}]", x.rows, self.out_dim);
        }
        self.run_jobs(x, epilogue, Destination::Floats(SendPtr(out.as_mut_ptr())));
    }

    /// `x · Wᵀ` through `epilogue` (bias and activation; no residual), quantized as it is stored into `out`:
    /// the activations of the product this one feeds, the same bits as [`Self::matmul_into`] followed by
    /// [`Q8Rows::quantize_from`] without the f32 product ever written out whole. Each job stores its rows
    /// × 64 columns in f32 to a small per-thread buffer, then quantizes those two blocks per row.
    pub fn matmul_quantized(&self, x: &Q8Rows, out: &mut Q8Rows, epilogue: &Epilogue) {
        assert!(epilogue.residual.is_none(), "a quantized output takes no residual");
        out.reshape(x.rows, self.out_dim);
        let quants = SendBytes(out.quants.as_mut_ptr());
        self.run_jobs(x, epilogue, Destination::Quantized { quants, scales: SendPtr(out.scales.as_mut_ptr()) });
        out.widen();
    }

    /// The product's jobs over (row chunk, tile chunk): a job's activations stay in L2 while its tiles'
    /// weights pass through L1, and even one short text gives every thread columns to compute.
    fn run_jobs(&self, x: &Q8Rows, epilogue: &Epilogue, destination: Destination) {
        let rows = x.rows;
        assert_eq!(x.blocks, self.blocks(), "activations are {} blocks wide, the weights {}", x.blocks, self.blocks());
        if let Some(b) = epilogue.bias {
            assert_eq!(b.len(), self.out_dim, "bias length");
        }
        let faulty;
        let x = if fault::active() {
            faulty = fault::drop_last_groups(x);
            &faulty
        } else {
            x
        };
        let residual_ptr = SendConstPtr(epilogue.residual.map_or(std::ptr::null(), <[f32]>::as_ptr));
        let tiles = self.tiles();
        let tile_chunks = tiles.div_ceil(TILES_PER_JOB);
        let job = |j: usize| {
            let (row_chunk, tile_chunk) = (j / tile_chunks, j % tile_chunks);
            let row_range = row_chunk * ROWS_PER_JOB..((row_chunk + 1) * ROWS_PER_JOB).min(rows);
            let tiles = tile_chunk * TILES_PER_JOB..((tile_chunk + 1) * TILES_PER_JOB).min(tiles);
            let first_column = tiles.start * TILE;
            STAGING.with(|staging| {
                let mut staging = staging.borrow_mut();
                // Where column 0 of row 0 would be stored: in the output itself, or placed so that this
                // job's rows and columns land in its `[row][64]` staging rows (quantized below); only the
                // job's own rows and columns are ever addressed.
                let (base, stride) = match destination {
                    Destination::Floats(out) => (out, self.out_dim),
                    Destination::Quantized { .. } => {
                        staging.resize(ROWS_PER_JOB * STAGED_COLUMNS, 0.0);
                        let origin = row_range.start * STAGED_COLUMNS + first_column;
                        (SendPtr(staging.as_mut_ptr().wrapping_sub(origin)), STAGED_COLUMNS)
                    }
                };
                let outs: [TileOut; TILES_PER_JOB] = std::array::from_fn(|i| {
                    let tile = (tiles.start + i).min(tiles.end - 1);
                    let columns = (self.out_dim - tile * TILE).min(TILE);
                    let mut tile_bias = [0f32; TILE];
                    if let Some(b) = epilogue.bias {
                        tile_bias[..columns].copy_from_slice(&b[tile * TILE..][..columns]);
                    }
                    // SAFETY: each job writes only its rows of its tiles' columns, so jobs never overlap;
                    // the residual is only read.
                    unsafe {
                        TileOut {
                            first: base.0.wrapping_add(tile * TILE),
                            stride,
                            columns,
                            bias: tile_bias,
                            act: epilogue.act,
                            residual: residual_ptr.at(tile * TILE),
                        }
                    }
                });
                self.tiles_kernel(x, tiles.clone(), row_range.clone(), &outs[..tiles.len()]);
                if let Destination::Quantized { quants, scales } = destination {
                    let (columns, blocks) = (tiles.len() * TILE, self.out_dim / BLOCK);
                    for (i, row) in row_range.enumerate() {
                        let staged = &staging[i * STAGED_COLUMNS..][..columns];
                        for (b, chunk) in staged.chunks_exact(BLOCK).enumerate() {
                            let block = first_column / BLOCK + b;
                            // SAFETY: this job owns these blocks of these rows of the reshaped output.
                            unsafe {
                                let q = std::slice::from_raw_parts_mut(quants.0.add(row * self.out_dim + block * BLOCK), BLOCK);
                                *scales.0.add(row * blocks + block) = quantize_activations_fast(chunk, q);
                            }
                        }
                    }
                }
            });
        };
        if let Destination::Quantized { .. } = destination {
            assert!(self.out_dim % BLOCK == 0 && (TILES_PER_JOB * TILE) % BLOCK == 0, "a quantized output is whole blocks");
        }
        crate::parallel::parallel_for(rows.div_ceil(ROWS_PER_JOB) * tile_chunks, job);
    }

    fn tile_view(&self, tile: usize) -> TileView<'_> {
        let blocks = self.blocks();
        TileView {
            quants: &self.quants[tile * blocks * TILE_BLOCK_BYTES..][..blocks * TILE_BLOCK_BYTES],
            scales: &self.scales[tile * blocks * TILE..][..blocks * TILE],
            offsets: &self.offsets[tile * blocks * TILE..][..blocks * TILE],
        }
    }

    /// Rows `rows` of consecutive tiles `tiles` (`outs[i]` receives tile `tiles.start + i`), by the fastest
    /// kernel this CPU has; a kernel may compute neighbouring tiles together so that each activation it
    /// loads serves more columns. All kernels compute the same bits.
    fn tiles_kernel(&self, x: &Q8Rows, tiles: Range<usize>, rows: Range<usize>, outs: &[TileOut]) {
        debug_assert_eq!(tiles.len(), outs.len());
        #[cfg(target_arch = "x86_64")]
        self.x86_tiles(best_x86_kernel(), x, tiles, rows, outs);
        #[cfg(target_arch = "aarch64")]
        if arm_dot_products() {
            return neon_tiles(self, x, tiles, rows, outs);
        }
        #[cfg(target_arch = "wasm32")]
        for (tile, out) in tiles.zip(outs) {
            wasm::tile(&self.tile_view(tile), x, rows.clone(), out);
        }
        #[cfg(not(any(target_arch = "x86_64", target_arch = "wasm32")))]
        portable_tiles(self, x, tiles, rows, outs);
    }

    /// [`Self::tiles_kernel`] on a given x86 kernel, which the CPU must have.
    #[cfg(target_arch = "x86_64")]
    fn x86_tiles(&self, kernel: X86Kernel, x: &Q8Rows, tiles: Range<usize>, rows: Range<usize>, outs: &[TileOut]) {
        assert!(kernel.available(), "the {} q8_0 kernel does not run on this CPU", kernel.name());
        if kernel == X86Kernel::Avx512Vnni {
            let mut pairs = outs.chunks_exact(2);
            for (i, pair) in pairs.by_ref().enumerate() {
                let tile = tiles.start + 2 * i;
                let views = [self.tile_view(tile), self.tile_view(tile + 1)];
                // SAFETY: the CPU has the features the kernel is compiled for.
                unsafe { avx512::tile_pair(&views, x, rows.clone(), pair) };
            }
            if let [last] = pairs.remainder() {
                // SAFETY: as above.
                unsafe { avx512::tile(&self.tile_view(tiles.end - 1), x, rows, last) };
            }
            return;
        }
        for (tile, out) in tiles.zip(outs) {
            let view = self.tile_view(tile);
            match kernel {
                // SAFETY: the CPU has the features each kernel is compiled for (asserted above).
                X86Kernel::Avx512Vnni => unsafe { avx512::tile(&view, x, rows.clone(), out) },
                X86Kernel::AvxVnni => unsafe { avx2::tile_vnni(&view, x, rows.clone(), out) },
                X86Kernel::Avx2 => unsafe { avx2::tile(&view, x, rows.clone(), out) },
                X86Kernel::Portable => portable_tile(&view, x, rows.clone(), out),
            }
        }
    }

    /// The kernel this matrix runs on here, by name (for benchmarks and logs).
    pub fn kernel_name(&self) -> &'static str {
        #[cfg(target_arch = "x86_64")]
        return best_x86_kernel().name();
        #[cfg(target_arch = "aarch64")]
        return if arm_dot_products() { "neon-dotprod" } else { "portable" };
        #[cfg(target_arch = "wasm32")]
        return wasm::NAME;
        #[allow(unreachable_code)]
        "portable"
    }
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

/// Rows of activations per matmul job (a multiple of every kernel's row group: 6 and 8 natively, 4 in wasm).
const ROWS_PER_JOB: usize = 96;
/// 16-column tiles per matmul job.
const TILES_PER_JOB: usize = 4;
/// Columns of a job's staging rows (a quantized output's two blocks).
const STAGED_COLUMNS: usize = TILES_PER_JOB * TILE;

/// Where a product's tiles go: f32 rows, or quantized activations (`[row][out]` quants + 64 and
/// `[row][block]` scales).
#[derive(Clone, Copy)]
enum Destination {
    Floats(SendPtr),
    Quantized { quants: SendBytes, scales: SendPtr },
}

#[derive(Clone, Copy)]
struct SendBytes(*mut u8);
unsafe impl Send for SendBytes {}
unsafe impl Sync for SendBytes {}
impl SendBytes {
    /// `len` elements of type `T` from element `offset` of a buffer of `T` (a method, so closures capture
    /// the Sync wrapper, not the raw pointer). SAFETY: in bounds, and no other live reference to them.
    unsafe fn slice<'a, T>(self, offset: usize, len: usize) -> &'a mut [T] {
        std::slice::from_raw_parts_mut(self.0.cast::<T>().add(offset), len)
    }
}

thread_local! {
    /// A quantized product's job: its f32 tiles before they are quantized.
    static STAGING: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The x86-64 q8_0 kernels, fastest first.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum X86Kernel {
    Avx512Vnni,
    AvxVnni,
    Avx2,
    Portable,
}

#[cfg(target_arch = "x86_64")]
impl X86Kernel {
    const ALL: [X86Kernel; 4] = [X86Kernel::Avx512Vnni, X86Kernel::AvxVnni, X86Kernel::Avx2, X86Kernel::Portable];

    /// The name `TUWEN_Q8_KERNEL` takes and benchmarks print.
    fn name(self) -> &'static str {
        match self {
            X86Kernel::Avx512Vnni => "avx512-vnni",
            X86Kernel::AvxVnni => "avx-vnni",
            X86Kernel::Avx2 => "avx2",
            X86Kernel::Portable => "portable",
        }
    }

    fn available(self) -> bool {
        match self {
            X86Kernel::Avx512Vnni => avx512::available(),
            X86Kernel::AvxVnni => avx2::vnni_available(),
            X86Kernel::Avx2 => avx2::available(),
            X86Kernel::Portable => true,
        }
    }
}

/// The fastest kernel this CPU has, no faster than the one `TUWEN_Q8_KERNEL=avx-vnni|avx2|portable` asks for,
/// that computes the portable kernel's bits on a small product here ([`computes_the_portable_bits`]); decided
/// once per process (reading the environment takes a lock, and this is asked on every tile).
#[cfg(target_arch = "x86_64")]
fn best_x86_kernel() -> X86Kernel {
    static BEST: std::sync::OnceLock<X86Kernel> = std::sync::OnceLock::new();
    *BEST.get_or_init(|| {
        let names = X86Kernel::ALL.map(X86Kernel::name);
        let fastest = asked_kernel(&names).map_or(0, |asked| names.iter().position(|n| *n == asked).unwrap_or(0));
        let usable = |kernel: &X86Kernel| {
            if !kernel.available() {
                return false;
            }
            if *kernel == X86Kernel::Portable
                || computes_the_portable_bits(|w, x, tiles, rows, outs| w.x86_tiles(*kernel, x, tiles, rows, outs))
            {
                return true;
            }
            eprintln!(
                "tuwen: the {} q8_0 kernel does not compute the reference results on this CPU; using a slower one",
                kernel.name()
            );
            false
        };
        X86Kernel::ALL[fastest..].iter().copied().find(usable).unwrap_or(X86Kernel::Portable)
    })
}

/// Whether `tiles` (a kernel, called as `tiles_kernel` is) gives the portable kernel's bits for one small
/// product (11 rows — every kernel's row groups of 6, 4 and 1 —, two tiles, three blocks): a guard, run once,
/// against a kernel that is wrong on a CPU the tests never ran on (AVX-VNNI without AVX-512, arm64 outside
/// qemu). Single-threaded on purpose: it runs while the kernel choice is being made, perhaps inside a
/// thread-pool job.
#[allow(dead_code)] // on targets with only the portable kernel
fn computes_the_portable_bits(tiles: impl Fn(&Q8Matrix, &Q8Rows, Range<usize>, Range<usize>, &[TileOut])) -> bool {
    let (rows, out_dim, in_dim) = (11, 2 * TILE, 3 * BLOCK);
    let wave = |n: usize, seed: f32| (0..n).map(|i| (i as f32 * 0.7548 + seed).sin() * 1.9).collect::<Vec<f32>>();
    let w = Q8Matrix::quantize(out_dim, in_dim, &wave(out_dim * in_dim, 0.3));
    let mut x = Q8Rows { rows, blocks: in_dim / BLOCK, ..Q8Rows::default() };
    x.quants.resize(rows * in_dim, 0);
    let values = wave(rows * in_dim, 1.1);
    for (chunk, q) in values.chunks_exact(BLOCK).zip(x.quants.chunks_exact_mut(BLOCK)) {
        x.scales.push(quantize_activations(chunk, q));
    }
    let run = |on: &dyn Fn(&[TileOut])| {
        let mut out = vec![0f32; rows * out_dim];
        let outs: Vec<TileOut> = (0..2)
            .map(|t| TileOut {
                first: out[t * TILE..].as_mut_ptr(),
                stride: out_dim,
                columns: TILE,
                bias: [0.0; TILE],
                act: None,
                residual: std::ptr::null(),
            })
            .collect();
        on(&outs);
        out
    };
    let fast = run(&|outs| tiles(&w, &x, 0..2, 0..rows, outs));
    let slow = run(&|outs| portable_tiles(&w, &x, 0..2, 0..rows, outs));
    fast.iter().map(|v| v.to_bits()).eq(slow.iter().map(|v| v.to_bits()))
}

/// The kernel `TUWEN_Q8_KERNEL` names, one of `names` (this CPU's kernels, fastest first); any other value
/// is reported and ignored.
#[allow(dead_code)] // on targets with only the portable kernel
fn asked_kernel(names: &[&'static str]) -> Option<&'static str> {
    let asked = std::env::var("TUWEN_Q8_KERNEL").ok()?;
    let known = names.iter().find(|n| **n == asked).copied();
    if known.is_none() {
        eprintln!("tuwen: TUWEN_Q8_KERNEL={asked:?} names no q8_0 kernel ({}); ignored", names.join(", "));
    }
    known
}

/// `tiles_kernel` on arm64's dot-product kernel; panics where the CPU lacks `sdot`.
#[cfg(target_arch = "aarch64")]
fn neon_tiles(w: &Q8Matrix, x: &Q8Rows, tiles: Range<usize>, rows: Range<usize>, outs: &[TileOut]) {
    assert!(neon::available(), "this CPU has no 8-bit dot products");
    for (tile, out) in tiles.zip(outs) {
        // SAFETY: the CPU has the dot-product instructions the kernel is compiled for (asserted above).
        unsafe { neon::tile(&w.tile_view(tile), x, rows.clone(), out) }
    }
}

/// Whether arm64's dot-product kernel runs: the CPU has `sdot`, `TUWEN_Q8_KERNEL=portable` does not ask for
/// the portable kernel, and the kernel computes the portable bits here; decided once per process, as on x86.
#[cfg(target_arch = "aarch64")]
fn arm_dot_products() -> bool {
    static DOTPROD: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DOTPROD.get_or_init(|| {
        if !neon::available() || asked_kernel(&["neon-dotprod", "portable"]) == Some("portable") {
            return false;
        }
        let right = computes_the_portable_bits(neon_tiles);
        if !right {
            eprintln!("tuwen: the neon-dotprod q8_0 kernel does not compute the reference results on this CPU; using the portable one");
        }
        right
    })
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

/// One block of activations: 7-bit quants stored `+ 64`; returns the scale.
#[inline(always)]
fn quantize_activations(x: &[f32], q: &mut [u8]) -> f32 {
    let mut signed = [0i8; BLOCK];
    let scale = quantize_block(x, &mut signed, ACT_LEVELS);
    for (q, s) in q.iter_mut().zip(signed) {
        *q = (s as i32 + ACT_OFFSET) as u8;
    }
    scale
}

/// One block of activations by the fastest quantizer this CPU has (all give the same bits).
#[inline(always)]
fn quantize_activations_fast(x: &[f32], q: &mut [u8]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if avx512::available() {
        // SAFETY: the CPU has the features the copy is compiled for.
        return unsafe { avx512::quantize_activations(x, q) };
    }
    quantize_activations(x, q)
}

impl Q8Rows {
    pub fn quantize(x: &[f32], rows: usize, in_dim: usize) -> Self {
        let mut q = Self::default();
        q.quantize_from(x, rows, in_dim);
        q
    }

    /// Makes room for `[rows, in_dim]`, reusing what earlier calls allocated (nothing is zeroed that the
    /// quantizer overwrites: only growth is).
    fn reshape(&mut self, rows: usize, in_dim: usize) {
        assert!(in_dim % BLOCK == 0, "q8_0 needs an input width that is a multiple of {BLOCK}, got {in_dim}");
        self.rows = rows;
        self.blocks = in_dim / BLOCK;
        self.quants.resize(rows * in_dim, 0);
        self.scales.resize(rows * self.blocks, 0.0);
    }

    /// Quantizes `x` `[rows, in_dim]` into this buffer.
    pub fn quantize_from(&mut self, x: &[f32], rows: usize, in_dim: usize) {
        assert_eq!(x.len(), rows * in_dim, "activations are not [{rows}, {in_dim}]");
        self.reshape(rows, in_dim);
        self.rows_in_parallel(|row, quants, scales| {
            let src = &x[row * in_dim..][..in_dim];
            for ((chunk, q), s) in src.chunks_exact(BLOCK).zip(quants.chunks_exact_mut(BLOCK)).zip(scales) {
                *s = quantize_activations_fast(chunk, q);
            }
        });
        self.widen();
    }

    /// Quantizes rows that `make_row(row, dst)` writes in f32 first (a layer norm, say), without the f32
    /// rows ever existing all at once.
    pub fn quantize_with(&mut self, rows: usize, in_dim: usize, make_row: impl Fn(usize, &mut [f32]) + Sync) {
        self.reshape(rows, in_dim);
        self.rows_in_parallel(|row, quants, scales| {
            SCRATCH.with(|scratch| {
                let mut scratch = scratch.borrow_mut();
                scratch.resize(in_dim, 0.0);
                make_row(row, &mut scratch);
                for ((chunk, q), s) in scratch.chunks_exact(BLOCK).zip(quants.chunks_exact_mut(BLOCK)).zip(scales) {
                    *s = quantize_activations_fast(chunk, q);
                }
            })
        });
        self.widen();
    }

    /// `job(row, quants, scales)` for every row, rows split among the threads 8 at a time.
    fn rows_in_parallel(&mut self, job: impl Fn(usize, &mut [u8], &mut [f32]) + Sync) {
        const ROWS: usize = 8;
        let (rows, in_dim, blocks) = (self.rows, self.blocks * BLOCK, self.blocks);
        let (quants, scales) = (SendBytes(self.quants.as_mut_ptr()), SendBytes(self.scales.as_mut_ptr().cast()));
        crate::parallel::parallel_ranges(rows, ROWS, |rows| {
            for row in rows {
                // SAFETY: each row belongs to one job; `reshape` sized both buffers for `rows`.
                let (q, s) = unsafe { (quants.slice(row * in_dim, in_dim), scales.slice(row * blocks, blocks)) };
                job(row, q, s);
            }
        });
    }

    /// On wasm without relaxed SIMD, the quants widened once for simd128's i16 dot products: signed (the
    /// `+ 64` taken off) and interleaved by row groups (`simd128::wide_index`), one row group per task.
    fn widen(&mut self) {
        #[cfg(all(target_arch = "wasm32", not(target_feature = "relaxed-simd")))]
        {
            use simd128::{widen_row_group, ROW_GROUP};
            let (rows, in_dim) = (self.rows, self.blocks * BLOCK);
            if rows == 0 || in_dim == 0 {
                return;
            }
            // No zeroing: every element is written (a last, partial group's missing rows too).
            self.wide.resize(rows.div_ceil(ROW_GROUP) * ROW_GROUP * in_dim, 0);
            let quants = &self.quants[..rows * in_dim];
            let (wide, group_len) = (SendBytes(self.wide.as_mut_ptr().cast()), ROW_GROUP * in_dim);
            // Two row groups per job.
            crate::parallel::parallel_ranges(rows.div_ceil(ROW_GROUP), 2, |groups| {
                for group in groups {
                    // SAFETY: each row group belongs to one job; `wide` was sized for every group.
                    let wide = unsafe { wide.slice(group * group_len, group_len) };
                    widen_row_group(quants, group, in_dim, wide);
                }
            });
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    #[cfg_attr(target_arch = "wasm32", allow(dead_code))] // read by the portable kernel
    fn row(&self, row: usize) -> &[u8] {
        &self.quants[row * self.blocks * BLOCK..][..self.blocks * BLOCK]
    }
}

thread_local! {
    /// One f32 row per thread for [`Q8Rows::quantize_with`].
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `tiles_kernel` on the portable kernel.
#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
fn portable_tiles(w: &Q8Matrix, x: &Q8Rows, tiles: Range<usize>, rows: Range<usize>, outs: &[TileOut]) {
    for (tile, out) in tiles.zip(outs) {
        portable_tile(&w.tile_view(tile), x, rows.clone(), out);
    }
}

/// The reference kernel: plain loops over the same layout (where no SIMD kernel applies), the same
/// arithmetic as the SIMD kernels.
#[cfg_attr(target_arch = "wasm32", allow(dead_code))] // wasm always has a SIMD kernel (tests use it natively)
fn portable_tile(w: &TileView, x: &Q8Rows, rows: Range<usize>, out: &TileOut) {
    for row in rows {
        let mut sum = [0f32; TILE];
        let xq = x.row(row);
        for b in 0..x.blocks {
            let wq = &w.quants[b * TILE_BLOCK_BYTES..][..TILE_BLOCK_BYTES];
            let mut dots: [i32; TILE] = w.offsets[b * TILE..][..TILE].try_into().unwrap();
            for g in 0..BLOCK / 4 {
                for (c, dot) in dots.iter_mut().enumerate() {
                    for j in 0..4 {
                        *dot += wq[(g * TILE + c) * 4 + j] as i32 * xq[b * BLOCK + g * 4 + j] as i32;
                    }
                }
            }
            let x_scale = x.scales[row * x.blocks + b];
            for c in 0..TILE {
                sum[c] += dots[c] as f32 * (w.scales[b * TILE + c] * x_scale);
            }
        }
        out.write(row, &sum);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::model::random::uniform as lcg;

    /// q8_0 semantics computed the slow, obvious way: dequantized weights × dequantized activations.
    fn reference(w: &Q8Matrix, x: &[f32], rows: usize, bias: Option<&[f32]>) -> Vec<f32> {
        let wf = w.dequantize();
        let xq = Q8Rows::quantize(x, rows, w.in_dim);
        let xf: Vec<f32> =
            xq.quants.iter().enumerate().map(|(i, &q)| (q as i32 - ACT_OFFSET) as f32 * xq.scales[i / BLOCK]).collect();
        let mut out = vec![0f32; rows * w.out_dim];
        for r in 0..rows {
            for c in 0..w.out_dim {
                let dot: f64 = (0..w.in_dim).map(|k| xf[r * w.in_dim + k] as f64 * wf[c * w.in_dim + k] as f64).sum();
                out[r * w.out_dim + c] = dot as f32 + bias.map_or(0.0, |b| b[c]);
            }
        }
        out
    }

    #[test]
    fn matches_the_reference_on_odd_shapes() {
        // Rows around the kernels' row groups, columns not a multiple of the tile, one and many blocks.
        for &(rows, out_dim, in_dim) in &[(1, 16, 32), (3, 5, 64), (8, 17, 96), (13, 40, 128), (52, 33, 256), (197, 48, 768)] {
            let w = Q8Matrix::quantize(out_dim, in_dim, &lcg(1, out_dim * in_dim));
            let x = lcg(2, rows * in_dim);
            let bias = lcg(3, out_dim);
            for bias in [None, Some(bias.as_slice())] {
                let got = w.matmul(&x, rows, bias);
                let want = reference(&w, &x, rows, bias);
                for (i, (g, r)) in got.iter().zip(&want).enumerate() {
                    assert!((g - r).abs() <= 1e-4 * (1.0 + r.abs()), "[{rows}x{in_dim}]·[{out_dim}]ᵀ at {i}: {g} vs {r}");
                }
            }
        }
    }

    type TilesFn = Box<dyn Fn(&Q8Matrix, &Q8Rows, Range<usize>, Range<usize>, &[TileOut])>;

    /// Every q8_0 kernel this CPU runs (not only the fastest), by name, as `tiles_kernel`.
    fn kernels_here() -> Vec<(&'static str, TilesFn)> {
        #[cfg(target_arch = "x86_64")]
        return X86Kernel::ALL
            .into_iter()
            .filter(|k| k.available())
            .map(|k| {
                let run: TilesFn = Box::new(move |w, x, tiles, rows, outs| w.x86_tiles(k, x, tiles, rows, outs));
                (k.name(), run)
            })
            .collect();
        #[cfg(target_arch = "aarch64")]
        if neon::available() {
            return vec![("neon-dotprod", Box::new(neon_tiles)), ("portable", Box::new(portable_tiles))];
        }
        #[allow(unreachable_code)]
        {
            let name = Q8Matrix::quantize(1, BLOCK, &[0.0; BLOCK]).kernel_name();
            vec![(name, Box::new(|w: &Q8Matrix, x: &Q8Rows, tiles, rows, outs: &[TileOut]| w.tiles_kernel(x, tiles, rows, outs)))]
        }
    }

    /// The guard that vets the fastest kernel at start-up passes every kernel this CPU runs (a guard that
    /// rejected a right kernel would silently cost its speed), and the kernel chosen is the fastest here.
    #[test]
    fn the_start_up_check_passes_every_kernel_here() {
        for (name, kernel) in kernels_here() {
            assert!(computes_the_portable_bits(|w, x, tiles, rows, outs| kernel(w, x, tiles, rows, outs)), "{name}");
        }
        if std::env::var_os("TUWEN_Q8_KERNEL").is_none() {
            assert_eq!(Q8Matrix::quantize(1, BLOCK, &[0.0; BLOCK]).kernel_name(), kernels_here()[0].0);
        }
    }

    /// Every kernel this CPU can run gives exactly the portable kernel's bits, with each epilogue, on row
    /// counts around the row groups and partial tiles.
    #[test]
    fn every_kernel_computes_the_portable_bits() {
        let (out_dim, in_dim) = (32, 160);
        let w = Q8Matrix::quantize(out_dim, in_dim, &lcg(4, out_dim * in_dim));
        for rows in [1, 3, 4, 5, 8, 11, 13] {
            let x = Q8Rows::quantize(&lcg(5, rows * in_dim), rows, in_dim);
            let residual = lcg(6, rows * TILE);
            for (tile, columns) in [(0, TILE), (1, 7)] {
                for (act, with_residual) in [(None, false), (Some(Activation::Gelu), false), (Some(Activation::QuickGelu), true)]
                {
                    let (mut fast, mut slow) = (vec![0f32; rows * TILE], vec![0f32; rows * TILE]);
                    let bias = std::array::from_fn(|c| c as f32 * 0.25);
                    let residual = if with_residual { residual.as_ptr() } else { std::ptr::null() };
                    let to = |buf: &mut Vec<f32>| TileOut { first: buf.as_mut_ptr(), stride: TILE, columns, bias, act, residual };
                    portable_tile(&w.tile_view(tile), &x, 0..rows, &to(&mut slow));
                    for (name, kernel) in kernels_here() {
                        fast.fill(0.0);
                        kernel(&w, &x, tile..tile + 1, 0..rows, std::slice::from_ref(&to(&mut fast)));
                        assert_eq!(fast, slow, "{name} kernel, {rows} rows, tile {tile}, {act:?}");
                    }
                }
            }
        }
    }

    /// On arm64 the products run on the dot-product kernel wherever the CPU has `sdot` (so the bit-for-bit
    /// tests above compare it, not the portable kernel with itself), and on the portable one elsewhere.
    #[cfg(target_arch = "aarch64")]
    #[test]
    fn arm64_runs_the_dot_product_kernel_where_the_cpu_has_it() {
        let w = Q8Matrix::quantize(16, 32, &lcg(1, 16 * 32));
        let forced_portable = std::env::var("TUWEN_Q8_KERNEL").as_deref() == Ok("portable");
        let want = if std::arch::is_aarch64_feature_detected!("dotprod") && !forced_portable { "neon-dotprod" } else { "portable" };
        eprintln!("arm64 q8_0 kernel: {}", w.kernel_name());
        assert_eq!(w.kernel_name(), want);
    }

    /// Kernels that compute neighbouring tiles together (AVX-512's pairs) give each tile the portable bits,
    /// odd tile counts and a partial last tile included.
    #[test]
    fn tiles_computed_together_are_the_portable_bits() {
        let in_dim = 96;
        for out_dim in [16, 40, 64] {
            let w = Q8Matrix::quantize(out_dim, in_dim, &lcg(11, out_dim * in_dim));
            for rows in [1, 4, 5, 6, 7, 12, 13, 64] {
                let x = Q8Rows::quantize(&lcg(12, rows * in_dim), rows, in_dim);
                let residual = lcg(13, rows * out_dim);
                let (mut fast, mut slow) = (vec![0f32; rows * out_dim], vec![0f32; rows * out_dim]);
                let outs = |buf: &mut Vec<f32>| -> Vec<TileOut> {
                    (0..w.tiles())
                        .map(|t| TileOut {
                            first: buf[t * TILE..].as_mut_ptr(),
                            stride: out_dim,
                            columns: (out_dim - t * TILE).min(TILE),
                            bias: std::array::from_fn(|c| (t * TILE + c) as f32 * 0.125),
                            act: Some(Activation::Gelu),
                            residual: residual[t * TILE..].as_ptr(),
                        })
                        .collect()
                };
                for (t, out) in outs(&mut slow).iter().enumerate() {
                    portable_tile(&w.tile_view(t), &x, 0..rows, out);
                }
                for (name, kernel) in kernels_here() {
                    fast.fill(0.0);
                    kernel(&w, &x, 0..w.tiles(), 0..rows, &outs(&mut fast));
                    assert_eq!(fast, slow, "{name} kernel, {rows} rows, {out_dim} columns");
                }
            }
        }
    }

    /// A -128 quant (legal in GGUF q8_0) is computed exactly by every kernel (7-bit activations keep AVX2's
    /// saturating i16 pair sums in range even then).
    #[test]
    fn a_minus_128_weight_is_exact() {
        let (out_dim, in_dim, rows) = (16, 64, 5);
        let mut data = Vec::new();
        for c in 0..out_dim {
            for b in 0..in_dim / BLOCK {
                data.extend(f16::from_f32(0.01 * (c + 1) as f32).to_le_bytes());
                data.extend((0..BLOCK).map(|i| if (i + b + c) % 5 == 0 { 0x80u8 } else { (i as u8).wrapping_mul(37) }));
            }
        }
        let w = Q8Matrix::from_q8_0_bytes(out_dim, in_dim, &data).unwrap();
        assert!(w.quants.contains(&i8::MIN));
        let x = lcg(8, rows * in_dim);
        let got = w.matmul(&x, rows, None);
        let want = reference(&w, &x, rows, None);
        for (g, r) in got.iter().zip(&want) {
            assert!((g - r).abs() <= 1e-4 * (1.0 + r.abs()), "{g} vs {r}");
        }
    }

    /// The same bits for any number of threads (jobs split rows and columns; each value is computed alone).
    #[test]
    fn a_quantized_output_is_the_product_quantized() {
        // Rows around the row groups and jobs (96), outputs of one, three and many 64-column jobs (a last
        // job of one block), with and without bias and activation; 1 and 3 threads.
        for &(rows, out_dim, in_dim) in &[(1, 32, 32), (7, 96, 64), (52, 160, 96), (197, 3 * 64, 768)] {
            let w = Q8Matrix::quantize(out_dim, in_dim, &lcg(11, out_dim * in_dim));
            let x = Q8Rows::quantize(&lcg(12, rows * in_dim), rows, in_dim);
            let bias = lcg(13, out_dim);
            for (bias, act) in [(None, None), (Some(bias.as_slice()), Some(Activation::Gelu)), (None, Some(Activation::QuickGelu))] {
                let epilogue = Epilogue { bias, act, residual: None };
                let mut f32_out = vec![0f32; rows * out_dim];
                w.matmul_into(&x, &mut f32_out, &epilogue);
                let want = Q8Rows::quantize(&f32_out, rows, out_dim);
                for threads in [1, 3] {
                    let mut got = Q8Rows::quantize(&lcg(14, 5 * 64), 5, 64); // a reused buffer of another shape
                    rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .unwrap()
                        .install(|| w.matmul_quantized(&x, &mut got, &epilogue));
                    let shape = format!("[{rows}x{in_dim}]·[{out_dim}]ᵀ, {threads} threads");
                    assert_eq!((got.rows, got.blocks), (rows, out_dim / BLOCK), "{shape}");
                    assert!(got.quants == want.quants, "{shape}: quants differ");
                    assert!(got.scales.iter().map(|s| s.to_bits()).eq(want.scales.iter().map(|s| s.to_bits())), "{shape}: scales differ");
                }
            }
        }
    }

    #[test]
    fn threads_do_not_change_the_bits() {
        let (rows, out_dim, in_dim) = (150, 200, 256);
        let w = Q8Matrix::quantize(out_dim, in_dim, &lcg(9, out_dim * in_dim));
        let x = lcg(10, rows * in_dim);
        let run =
            |threads| rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(|| w.matmul(&x, rows, None));
        assert_eq!(run(1), run(3));
    }

    #[test]
    fn block_quantizers_agree() {
        let mut x = lcg(6, BLOCK * 64);
        x[..BLOCK].fill(0.0); // an all-zero block: scale 0, quants 0
        x[BLOCK + 3] = 2.5 * x[BLOCK..2 * BLOCK].iter().fold(0f32, |m, v| m.max(v.abs())); // an outlier
        for chunk in x.chunks_exact(BLOCK) {
            let mut q1 = [0u8; BLOCK];
            let s1 = quantize_activations(chunk, &mut q1);
            let expected_scale = chunk.iter().fold(0f32, |m, v| m.max(v.abs())) / ACT_LEVELS;
            assert_eq!(s1, expected_scale);
            for (q, v) in q1.iter().zip(chunk) {
                assert!((1..=127).contains(q), "{q} is not a 7-bit quant + 64");
                let value = (*q as i32 - ACT_OFFSET) as f32 * s1;
                assert!((value - v).abs() <= 0.5 * s1 + 1e-7, "{q} · {s1} vs {v}");
            }
            #[cfg(target_arch = "x86_64")]
            if avx512::available() {
                let mut q2 = [0u8; BLOCK];
                let s2 = unsafe { avx512::quantize_activations(chunk, &mut q2) };
                assert_eq!((q1, s1), (q2, s2));
            }
        }
    }

    #[test]
    fn q8_0_bytes_round_trip() {
        let (out_dim, in_dim) = (3, 64);
        let mut data = Vec::new();
        for c in 0..out_dim {
            for b in 0..in_dim / BLOCK {
                data.extend(f16::from_f32(0.5 * (c + b + 1) as f32).to_le_bytes());
                data.extend((0..BLOCK).map(|i| (i as i8 - 16 + c as i8) as u8));
            }
        }
        let w = Q8Matrix::from_q8_0_bytes(out_dim, in_dim, &data).unwrap();
        let f = w.dequantize();
        assert_eq!(f[0], -16.0 * 0.5);
        assert_eq!(f[in_dim + BLOCK + 31], (31 - 16 + 1) as f32 * 0.5 * 3.0);
        assert!(Q8Matrix::from_q8_0_bytes(out_dim, in_dim, &data[1..]).unwrap_err().contains("does not hold"));
    }
}
