//! The GPU backend: wgpu compute shaders (`shaders/*.wgsl`), the same code natively (Vulkan, Metal, DX12)
//! and in the browser (WebGPU).
//!
//! Weights are uploaded once when a tower loads. A forward pass only records: each op appends one dispatch
//! to a command encoder, its shape going into one uniform buffer shared by the whole recording; nothing is
//! submitted until [`Backend::read`] copies the final embeddings out, so an encoder call is one submission
//! and one read-back. Activation buffers come from a pool and go back to it when their tensor drops, so
//! later layers (and later calls) reuse them; recorded work runs in order, so a buffer reused within one
//! recording is only overwritten after its earlier readers ran.

use super::{AttentionShape, Backend};
use crate::config::Activation;
use crate::model::params::{LinearParams, Matrix, NormParams};
use anyhow::{anyhow, bail, Result};
use candle_core::Tensor;
use std::sync::Arc;

/// Bytes per dispatch in the shared uniform buffer (WebGPU's minimum uniform offset alignment).
const PARAM_SLOT: u64 = 256;
/// Dispatches per submission before the recording is flushed (the uniform buffer's capacity).
const SLOTS: usize = 2048;
/// Workgroups per grid dimension WebGPU guarantees.
const MAX_GROUPS: u32 = 65_535;
/// Sequence and head sizes `attention.wgsl` has workgroup memory for.
const MAX_SEQ: usize = 1024;
const MAX_HEAD_DIM: usize = 256;

mod device;
mod kernels;
mod pool;

pub use device::{AdapterSummary, Gpu};
use device::grid;
use pool::Pooled;

/// An activation `[rows, cols]` of f32 in a pooled GPU buffer.
pub struct GpuTensor {
    buffer: Arc<Pooled>,
    rows: usize,
    cols: usize,
}

impl GpuTensor {
    fn buffer(&self) -> &wgpu::Buffer {
        self.buffer.buffer.as_ref().expect("a live tensor holds its buffer")
    }
    pub fn dims(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }
}

/// A dense layer's weights and bias as stored on the GPU.
pub struct GpuLinear {
    weights: GpuWeights,
    bias: Option<wgpu::Buffer>,
    in_dim: usize,
    out_dim: usize,
}

enum GpuWeights {
    /// q8_0: `[out][in/4]` words of 4 signed quants and `[out][in/32]` scales.
    Quantized { quants: wgpu::Buffer, scales: wgpu::Buffer },
    /// f32 `[out][in]`.
    Dense(wgpu::Buffer),
}

pub struct GpuNorm {
    weight: wgpu::Buffer,
    bias: wgpu::Buffer,
    eps: f32,
}

pub struct GpuTable {
    buffer: wgpu::Buffer,
    rows: usize,
    cols: usize,
}

impl Backend for Gpu {
    type Tensor = GpuTensor;
    type Linear = GpuLinear;
    type Norm = GpuNorm;
    type Table = GpuTable;

    fn linear(&self, p: LinearParams) -> Result<GpuLinear> {
        let bias = p.bias.as_deref().map(|b| self.f32_storage("bias", b));
        let weights = match &p.matrix {
            Matrix::Quantized(q) => {
                let blocks = p.in_dim / 32;
                let mut quants = Vec::with_capacity(p.out_dim * p.in_dim / 4);
                let mut scales = Vec::with_capacity(p.out_dim * blocks);
                for column in 0..p.out_dim {
                    for b in 0..blocks {
                        let (q, scale) = q.block(column, b);
                        quants.extend(q.chunks_exact(4).map(|w| u32::from_le_bytes([w[0] as u8, w[1] as u8, w[2] as u8, w[3] as u8])));
                        scales.push(scale);
                    }
                }
                GpuWeights::Quantized {
                    quants: self.storage("q8_0 quants", bytemuck::cast_slice(&quants)),
                    scales: self.f32_storage("q8_0 scales", &scales),
                }
            }
            Matrix::Dense(w) => GpuWeights::Dense(self.f32_storage("weight", &w.flatten_all()?.to_vec1::<f32>()?)),
        };
        Ok(GpuLinear { weights, bias, in_dim: p.in_dim, out_dim: p.out_dim })
    }

    fn norm(&self, p: NormParams) -> Result<GpuNorm> {
        Ok(GpuNorm { weight: self.f32_storage("norm weight", &p.weight), bias: self.f32_storage("norm bias", &p.bias), eps: p.eps })
    }

    fn table(&self, table: &Tensor) -> Result<GpuTable> {
        let (rows, cols) = table.dims2()?;
        Ok(GpuTable { buffer: self.f32_storage("table", &table.flatten_all()?.to_vec1::<f32>()?), rows, cols })
    }

    fn upload(&self, data: &[f32], rows: usize, cols: usize) -> Result<GpuTensor> {
        if data.len() != rows * cols {
            bail!("{} values are not [{rows}, {cols}]", data.len());
        }
        self.check()?;
        // A fresh buffer, not a pooled one: a pooled buffer may still be read by recorded work, and
        // queue writes land before that work runs.
        let data = bytemuck::cast_slice(if data.is_empty() { &[0f32; 4][..] } else { data });
        let buffer = self.storage_with("input", data, wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC);
        Ok(GpuTensor { buffer: Arc::new(Pooled { buffer: Some(buffer), pool: None }), rows, cols })
    }

    fn gather(&self, table: &GpuTable, ids: &[u32]) -> Result<GpuTensor> {
        self.check()?;
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= table.rows) {
            bail!("token id {bad} is outside the embedding table ({} rows)", table.rows);
        }
        Ok(self.gather_rows(&table.buffer, table.cols, ids))
    }

    fn add_rows(&self, x: GpuTensor, table: &GpuTable, period: usize) -> Result<GpuTensor> {
        if period == 0 || x.rows % period != 0 || period > table.rows || x.cols != table.cols {
            bail!("cannot add rows of a [{}, {}] table every {period} rows to [{}, {}]", table.rows, table.cols, x.rows, x.cols);
        }
        let params = [x.rows as u32, x.cols as u32, period as u32];
        self.dispatch_flat(&self.inner.kernels.add_rows, &params, &[&table.buffer, x.buffer()], x.rows * x.cols);
        Ok(x)
    }

    fn linear_forward(&self, x: &GpuTensor, layer: &GpuLinear, act: Option<Activation>, residual: Option<&GpuTensor>) -> Result<GpuTensor> {
        let (in_dim, out_dim, bias) = (layer.in_dim, layer.out_dim, &layer.bias);
        if x.cols != in_dim {
            bail!("a [{}, {}] activation cannot go through a layer of input width {in_dim}", x.rows, x.cols);
        }
        if let Some(r) = residual {
            if r.dims() != (x.rows, out_dim) {
                bail!("residual {:?} does not match the product [{}, {out_dim}]", r.dims(), x.rows);
            }
        }
        let out = self.tensor(x.rows, out_dim);
        let activation = match act {
            None => 0,
            Some(Activation::Gelu) => 1,
            Some(Activation::QuickGelu) => 2,
        };
        let params =
            [x.rows as u32, out_dim as u32, in_dim as u32, bias.is_some() as u32, activation, residual.is_some() as u32];
        let empty = &self.inner.empty;
        let epilogue = [bias.as_ref().unwrap_or(empty), residual.map(GpuTensor::buffer).unwrap_or(empty), out.buffer()];
        let groups = (out_dim.div_ceil(64) as u32, x.rows.div_ceil(64) as u32);
        if groups.1 > MAX_GROUPS {
            bail!("{} rows are more than one product can take; use smaller batches", x.rows);
        }
        let k = &self.inner.kernels;
        match &layer.weights {
            GpuWeights::Quantized { quants, scales } => {
                let blocks = x.rows * in_dim / 32;
                let (xq, xs) = (self.tensor(blocks, 8), self.tensor(blocks, 1));
                self.dispatch_flat(&k.quantize_rows, &[blocks as u32], &[x.buffer(), xq.buffer(), xs.buffer()], blocks);
                let inputs = [xq.buffer(), xs.buffer(), quants, scales];
                self.dispatch(&k.matmul_q8, &params, &[&epilogue[..], &inputs[..]].concat(), groups);
            }
            GpuWeights::Dense(weight) => {
                self.dispatch(&k.matmul_f32, &params, &[&epilogue[..], &[x.buffer(), weight][..]].concat(), groups);
            }
        }
        Ok(out)
    }

    fn layer_norm(&self, x: &GpuTensor, n: &GpuNorm) -> Result<GpuTensor> {
        let out = self.tensor(x.rows, x.cols);
        let params = [x.rows as u32, x.cols as u32, n.eps.to_bits()];
        self.dispatch(&self.inner.kernels.layer_norm, &params, &[x.buffer(), &n.weight, &n.bias, out.buffer()], grid(x.rows));
        Ok(out)
    }

    fn attention(&self, qkv: &GpuTensor, s: AttentionShape, mask_bias: Option<&GpuTensor>) -> Result<GpuTensor> {
        let hidden = qkv.cols / 3;
        let head_dim = hidden / s.heads;
        if qkv.rows != s.batch * s.seq || hidden * 3 != qkv.cols || head_dim * s.heads != hidden {
            bail!("attention over [{}, {}] does not fit {s:?}", qkv.rows, qkv.cols);
        }
        if s.seq > MAX_SEQ || head_dim > MAX_HEAD_DIM {
            bail!("the GPU attention kernel takes up to {MAX_SEQ} tokens and heads of {MAX_HEAD_DIM} (got {} and {head_dim})", s.seq);
        }
        if (s.batch * s.heads) as u32 > MAX_GROUPS {
            bail!("batch × heads = {} is more than one dispatch can take; use smaller batches", s.batch * s.heads);
        }
        let queries = s.queries_per_sequence();
        let out = self.tensor(s.batch * queries, hidden);
        let scale = 1.0 / (head_dim as f32).sqrt();
        let params = [
            s.seq as u32,
            s.heads as u32,
            head_dim as u32,
            hidden as u32,
            mask_bias.is_some() as u32,
            scale.to_bits(),
            queries as u32,
        ];
        let mask = mask_bias.map(GpuTensor::buffer).unwrap_or(&self.inner.empty);
        let groups = (queries as u32, (s.batch * s.heads) as u32);
        self.dispatch(&self.inner.kernels.attention, &params, &[qkv.buffer(), mask, out.buffer()], groups);
        Ok(out)
    }

    fn first_tokens(&self, x: &GpuTensor, seq: usize) -> Result<GpuTensor> {
        let ids: Vec<u32> = (0..x.rows / seq).map(|b| (b * seq) as u32).collect();
        Ok(self.gather_rows(x.buffer(), x.cols, &ids))
    }

    fn l2_normalize(&self, x: &GpuTensor) -> Result<GpuTensor> {
        let out = self.tensor(x.rows, x.cols);
        self.dispatch(&self.inner.kernels.l2_normalize, &[x.rows as u32, x.cols as u32], &[x.buffer(), out.buffer()], (x.rows as u32, 1));
        Ok(out)
    }

    async fn read(&self, x: &GpuTensor) -> Result<Vec<f32>> {
        let cx = &self.inner;
        let bytes = (x.rows * x.cols * 4) as u64;
        if bytes == 0 {
            return Ok(Vec::new());
        }
        let staging = cx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("read-back"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        {
            let mut rec = cx.recording.lock().unwrap();
            let encoder = rec.encoder.get_or_insert_with(|| cx.device.create_command_encoder(&Default::default()));
            encoder.copy_buffer_to_buffer(x.buffer(), 0, &staging, 0, bytes);
            if rec.params_buffer.is_none() {
                // Only a copy was recorded: submit it without a shapes buffer.
                let encoder = rec.encoder.take().unwrap();
                cx.queue.submit([encoder.finish()]);
            } else {
                cx.flush(&mut rec);
            }
        }
        let (sender, receiver) = futures_channel::oneshot::channel();
        staging.slice(..).map_async(wgpu::MapMode::Read, move |result| {
            let _ = sender.send(result);
        });
        #[cfg(not(target_arch = "wasm32"))]
        cx.device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| anyhow!("waiting for the GPU: {e}"))?;
        let mapped = receiver.await;
        if let Some(failure) = self.failure() {
            bail!("{failure}");
        }
        mapped.map_err(|_| anyhow!("the GPU dropped a read-back"))?.map_err(|e| anyhow!("reading GPU results: {e}"))?;
        let values = bytemuck::cast_slice::<u8, f32>(&staging.slice(..).get_mapped_range()?).to_vec();
        staging.unmap();
        Ok(values)
    }
}
