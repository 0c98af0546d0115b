//! The portable kernel — plain loops over the packed layout — and the check every SIMD kernel passes
//! against it before it is used: the same bits on the same product.

use super::*;

/// Whether `tiles` (a kernel, called as `tiles_kernel` is) gives the portable kernel's bits for one small
/// product (11 rows — every kernel's row groups of 6, 4 and 1 —, two tiles, three blocks): a guard, run once,
/// against a kernel that is wrong on a CPU the tests never ran on (AVX-VNNI without AVX-512, arm64 outside
/// qemu). Single-threaded on purpose: it runs while the kernel choice is being made, perhaps inside a
/// thread-pool job.
#[allow(dead_code)] // on targets with only the portable kernel
pub(super) fn computes_the_portable_bits(tiles: impl Fn(&Q8Matrix, &Q8Rows, Range<usize>, Range<usize>, &[TileOut])) -> bool {
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

/// `tiles_kernel` on the portable kernel.
#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
pub(super) fn portable_tiles(w: &Q8Matrix, x: &Q8Rows, tiles: Range<usize>, rows: Range<usize>, outs: &[TileOut]) {
    for (tile, out) in tiles.zip(outs) {
        portable_tile(&w.tile_view(tile), x, rows.clone(), out);
    }
}

/// The reference kernel: plain loops over the same layout (where no SIMD kernel applies), the same
/// arithmetic as the SIMD kernels.
#[cfg_attr(target_arch = "wasm32", allow(dead_code))] // wasm always has a SIMD kernel (tests use it natively)
pub(super) fn portable_tile(w: &TileView, x: &Q8Rows, rows: Range<usize>, out: &TileOut) {
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
