//! Search speed on synthetic embeddings (a benchmark, not a test): `cargo bench --bench search`.
//!
//! - one query against 50k×512 (f16 and int8 storage), median of many queries;
//! - task 1 scoring: 5k queries × 50k gallery, top-5 each, blocked (no full score matrix);
//! - next to them, this machine's bounds: memory bandwidth for the scan, f32 GEMM rate for task 1.

use half::f16;
use std::time::Instant;
use tuwen::bundle::Rows;
use tuwen::search::{top_k, top_k_many, Rerank};

const DIM: usize = 512;

fn unit_rows(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    let mut v: Vec<f32> = (0..n * DIM)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        })
        .collect();
    for row in v.chunks_exact_mut(DIM) {
        let n = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        row.iter_mut().for_each(|x| *x /= n);
    }
    v
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let threads = rayon::current_num_threads();
    let n = 50_000;
    let gallery = unit_rows(n, 1);
    let g16: Vec<f16> = gallery.iter().map(|x| f16::from_f32(*x)).collect();
    let mut q8 = Vec::with_capacity(n * DIM);
    let scales: Vec<f32> = gallery.chunks(DIM).map(|r| tuwen::bundle::quantize_row(r, &mut q8)).collect();
    let queries = unit_rows(5_000, 2);
    println!("machine: {} threads (rayon), {}", threads, std::env::consts::ARCH);

    // Memory bandwidth: all threads summing the f16 gallery's bytes as u64 words, best of 20.
    let words: &[u64] = bytemuck::cast_slice(&g16);
    let mut best = f64::MAX;
    for _ in 0..20 {
        use rayon::prelude::*;
        let t = Instant::now();
        let s: u64 = words.par_chunks(1 << 16).map(|c| c.iter().fold(0u64, |a, w| a.wrapping_add(*w))).reduce(|| 0, u64::wrapping_add);
        std::hint::black_box(s);
        best = best.min(t.elapsed().as_secs_f64());
    }
    let read_gbs = words.len() as f64 * 8.0 / best / 1e9;

    for (name, rows) in [("f16", Rows::F16(&g16)), ("int8", Rows::Int8 { values: &q8, scales: &scales })] {
        for _ in 0..5 {
            top_k(&rows, DIM, &queries[..DIM], 10).unwrap();
        }
        let times: Vec<f64> = queries
            .chunks(DIM)
            .take(200)
            .map(|q| {
                let t = Instant::now();
                std::hint::black_box(top_k(&rows, DIM, q, 10).unwrap());
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        let size = match rows {
            Rows::F16(v) => v.len() * 2,
            Rows::Int8 { values, scales } => values.len() + scales.len() * 4,
        };
        println!(
            "single query, 50k×512 {name:<4} ({:.1} MB): median {:.2} ms, min {:.2} ms  (→ {:.1} GB/s)",
            size as f64 / 1e6,
            median(times.clone()),
            times.iter().cloned().fold(f64::MAX, f64::min),
            size as f64 / median(times) / 1e6
        );
    }
    println!(
        "  memory read bound: {read_gbs:.1} GB/s with {threads} threads → a 51.2 MB f16 scan needs ≥ {:.2} ms",
        51.2e6 / read_gbs / 1e6
    );

    // GEMM rate of this machine (the same candle matmul the blocked search uses), 1024×4096×512.
    let a = candle_core::Tensor::from_slice(&queries[..1024 * DIM], (1024, DIM), &candle_core::Device::Cpu).unwrap();
    let b = candle_core::Tensor::from_slice(&gallery[..4096 * DIM], (4096, DIM), &candle_core::Device::Cpu).unwrap();
    let bt = b.t().unwrap();
    let mut best = f64::MAX;
    for _ in 0..10 {
        let t = Instant::now();
        std::hint::black_box(a.matmul(&bt).unwrap());
        best = best.min(t.elapsed().as_secs_f64());
    }
    let gflops = 2.0 * 1024.0 * 4096.0 * DIM as f64 / best / 1e9;

    let qs: Vec<Vec<f32>> = queries.chunks(DIM).map(<[f32]>::to_vec).collect();
    let flop = 2.0 * 5_000.0 * n as f64 * DIM as f64;
    for rerank in [Rerank::None, "dual-softmax".parse().unwrap()] {
        let t = Instant::now();
        let hits = top_k_many(&Rows::F16(&g16), DIM, &qs, 5, rerank).unwrap();
        let secs = t.elapsed().as_secs_f64();
        assert_eq!(hits.len(), 5_000);
        println!(
            "task 1 scoring, 5k × 50k × 512, top-5, rerank {rerank:?}: {secs:.2} s ({:.0} GFLOP/s effective)",
            flop * if rerank == Rerank::None { 1.0 } else { 2.0 } / secs / 1e9
        );
    }
    println!(
        "  GEMM bound: f32 matmul 1024×4096×512 runs at {gflops:.0} GFLOP/s → 5k×50k×512 needs ≥ {:.2} s",
        flop / gflops / 1e9
    );
}
