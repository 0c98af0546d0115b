//! The kernels against a plain reference and against each other: every kernel this CPU runs gives the
//! portable kernel's bits.

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
