//! A product run: split into jobs over the CPU team, each job's tiles computed by the fastest kernel this
//! CPU has (chosen once, checked against the portable kernel), stored through the epilogue or quantized.

use super::*;

impl Q8Matrix {
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
    pub(super) fn run_jobs(&self, x: &Q8Rows, epilogue: &Epilogue, destination: Destination) {
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
        crate::model::backend::cpu::team::parallel_for(rows.div_ceil(ROWS_PER_JOB) * tile_chunks, job);
    }

    pub(super) fn tile_view(&self, tile: usize) -> TileView<'_> {
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
    pub(super) fn tiles_kernel(&self, x: &Q8Rows, tiles: Range<usize>, rows: Range<usize>, outs: &[TileOut]) {
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
    pub(super) fn x86_tiles(&self, kernel: X86Kernel, x: &Q8Rows, tiles: Range<usize>, rows: Range<usize>, outs: &[TileOut]) {
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

/// Rows of activations per matmul job (a multiple of every kernel's row group: 6 and 8 natively, 4 in wasm).
pub(super) const ROWS_PER_JOB: usize = 96;
/// 16-column tiles per matmul job.
pub(super) const TILES_PER_JOB: usize = 4;
/// Columns of a job's staging rows (a quantized output's two blocks).
pub(super) const STAGED_COLUMNS: usize = TILES_PER_JOB * TILE;

/// Where a product's tiles go: f32 rows, or quantized activations (`[row][out]` quants + 64 and
/// `[row][block]` scales).
#[derive(Clone, Copy)]
pub(super) enum Destination {
    Floats(SendPtr),
    Quantized { quants: SendBytes, scales: SendPtr },
}

#[derive(Clone, Copy)]
pub(super) struct SendBytes(pub(super) *mut u8);
unsafe impl Send for SendBytes {}
unsafe impl Sync for SendBytes {}
impl SendBytes {
    /// `len` elements of type `T` from element `offset` of a buffer of `T` (a method, so closures capture
    /// the Sync wrapper, not the raw pointer). SAFETY: in bounds, and no other live reference to them.
    pub(super) unsafe fn slice<'a, T>(self, offset: usize, len: usize) -> &'a mut [T] {
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
pub(super) enum X86Kernel {
    Avx512Vnni,
    AvxVnni,
    Avx2,
    Portable,
}

#[cfg(target_arch = "x86_64")]
impl X86Kernel {
    pub(super) const ALL: [X86Kernel; 4] = [X86Kernel::Avx512Vnni, X86Kernel::AvxVnni, X86Kernel::Avx2, X86Kernel::Portable];

    /// The name `TUWEN_Q8_KERNEL` takes and benchmarks print.
    pub(super) fn name(self) -> &'static str {
        match self {
            X86Kernel::Avx512Vnni => "avx512-vnni",
            X86Kernel::AvxVnni => "avx-vnni",
            X86Kernel::Avx2 => "avx2",
            X86Kernel::Portable => "portable",
        }
    }

    pub(super) fn available(self) -> bool {
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
pub(super) fn best_x86_kernel() -> X86Kernel {
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

/// The kernel `TUWEN_Q8_KERNEL` names, one of `names` (this CPU's kernels, fastest first); any other value
/// is reported and ignored.
#[allow(dead_code)] // on targets with only the portable kernel
pub(super) fn asked_kernel(names: &[&'static str]) -> Option<&'static str> {
    let asked = std::env::var("TUWEN_Q8_KERNEL").ok()?;
    let known = names.iter().find(|n| **n == asked).copied();
    if known.is_none() {
        eprintln!("tuwen: TUWEN_Q8_KERNEL={asked:?} names no q8_0 kernel ({}); ignored", names.join(", "));
    }
    known
}

/// `tiles_kernel` on arm64's dot-product kernel; panics where the CPU lacks `sdot`.
#[cfg(target_arch = "aarch64")]
pub(super) fn neon_tiles(w: &Q8Matrix, x: &Q8Rows, tiles: Range<usize>, rows: Range<usize>, outs: &[TileOut]) {
    assert!(neon::available(), "this CPU has no 8-bit dot products");
    for (tile, out) in tiles.zip(outs) {
        // SAFETY: the CPU has the dot-product instructions the kernel is compiled for (asserted above).
        unsafe { neon::tile(&w.tile_view(tile), x, rows.clone(), out) }
    }
}

/// Whether arm64's dot-product kernel runs: the CPU has `sdot`, `TUWEN_Q8_KERNEL=portable` does not ask for
/// the portable kernel, and the kernel computes the portable bits here; decided once per process, as on x86.
#[cfg(target_arch = "aarch64")]
pub(super) fn arm_dot_products() -> bool {
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
