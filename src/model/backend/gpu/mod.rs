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
use anyhow::{anyhow, bail, Context as _, Result};
use candle_core::Tensor;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Bytes per dispatch in the shared uniform buffer (WebGPU's minimum uniform offset alignment).
const PARAM_SLOT: u64 = 256;
/// Dispatches per submission before the recording is flushed (the uniform buffer's capacity).
const SLOTS: usize = 2048;
/// Workgroups per grid dimension WebGPU guarantees.
const MAX_GROUPS: u32 = 65_535;
/// Sequence and head sizes `attention.wgsl` has workgroup memory for.
const MAX_SEQ: usize = 1024;
const MAX_HEAD_DIM: usize = 256;

struct Kernel {
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
}

struct Kernels {
    matmul_q8: Kernel,
    matmul_f32: Kernel,
    quantize_rows: Kernel,
    layer_norm: Kernel,
    attention: Kernel,
    gather_rows: Kernel,
    add_rows: Kernel,
    l2_normalize: Kernel,
}

/// What the adapter is, for logs and the page.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AdapterSummary {
    pub name: String,
    /// "vulkan", "metal", "dx12", "webgpu", …
    pub api: String,
    /// True for CPU emulations (lavapipe, SwiftShader): correct, but slower than the CPU backend.
    pub emulated: bool,
}

impl std::fmt::Display for AdapterSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}{})", self.name, self.api, if self.emulated { ", CPU-emulated" } else { "" })
    }
}

/// A GPU device and everything recorded on it. Cheap to clone (shared).
#[derive(Clone)]
pub struct Gpu {
    inner: Arc<Context>,
}

struct Context {
    device: wgpu::Device,
    queue: wgpu::Queue,
    adapter: AdapterSummary,
    kernels: Kernels,
    pool: Arc<BufferPool>,
    recording: Mutex<Recording>,
    /// Set when the device is lost or reports an error: every later op fails with it.
    failure: Arc<Mutex<Failure>>,
    /// Bound where a kernel's optional input (bias, residual, mask) is absent.
    empty: wgpu::Buffer,
}

#[derive(Default)]
struct Failure {
    lost: Option<String>,
    error: Option<String>,
}

#[derive(Default)]
struct Recording {
    encoder: Option<wgpu::CommandEncoder>,
    params: Vec<u8>,
    params_buffer: Option<wgpu::Buffer>,
}

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

impl Gpu {
    /// Opens the best GPU adapter. `allow_emulated`: accept CPU emulations of a GPU (lavapipe,
    /// SwiftShader) — for tests; for speed they lose to the CPU backend. The error says why there is none.
    pub async fn new(allow_emulated: bool) -> Result<Self> {
        let mut descriptor = wgpu::InstanceDescriptor::new_without_display_handle();
        descriptor.backends = wgpu::Backends::from_env().unwrap_or(wgpu::Backends::PRIMARY);
        let instance = wgpu::Instance::new(descriptor);
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                ..Default::default()
            })
            .await
            .map_err(|e| anyhow!("no GPU adapter ({e})"))?;
        let info = adapter.get_info();
        let summary = AdapterSummary {
            // Browsers do not name their adapters.
            name: if info.name.is_empty() { "browser adapter".into() } else { info.name.clone() },
            api: format!("{:?}", info.backend).to_lowercase().replace("browserwebgpu", "webgpu"),
            emulated: info.device_type == wgpu::DeviceType::Cpu,
        };
        if summary.emulated && !allow_emulated {
            bail!("the only GPU adapter is {summary}, slower than the CPU backend");
        }
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("tuwen"),
                required_limits: adapter.limits(),
                ..Default::default()
            })
            .await
            .with_context(|| format!("opening {summary}"))?;
        let failure = Arc::new(Mutex::new(Failure::default()));
        let lost = failure.clone();
        device.set_device_lost_callback(move |reason, message| {
            lost.lock().unwrap().lost.get_or_insert(format!("GPU device lost ({reason:?}): {message}"));
        });
        let errors = failure.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            errors.lock().unwrap().error.get_or_insert(format!("GPU error: {e}"));
        }));
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let kernels = Kernels::new(&device);
        if let Some(e) = scope.pop().await {
            bail!("compiling the compute shaders on {summary}: {e}");
        }
        let empty = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("empty"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        let pool = Arc::new(BufferPool { device: device.clone(), free: Default::default() });
        let inner = Context { device, queue, adapter: summary, kernels, pool, recording: Default::default(), failure, empty };
        Ok(Self { inner: Arc::new(inner) })
    }

    pub fn adapter(&self) -> &AdapterSummary {
        &self.inner.adapter
    }

    /// Why the device can no longer be used, once it cannot: its loss (the cause) over the errors it made.
    pub fn failure(&self) -> Option<String> {
        #[cfg(not(target_arch = "wasm32"))]
        let _ = self.inner.device.poll(wgpu::PollType::Poll); // delivers a pending device-lost callback
        let failure = self.inner.failure.lock().unwrap();
        failure.lost.clone().or_else(|| failure.error.clone())
    }

    /// Destroys the device as a driver reset would (tests of the CPU fallback).
    #[doc(hidden)]
    pub fn simulate_device_loss(&self) {
        self.inner.device.destroy();
    }

    /// Fails once the device is lost or has reported an error.
    fn check(&self) -> Result<()> {
        match self.failure() {
            Some(failure) => bail!("{failure}"),
            None => Ok(()),
        }
    }

    /// A fresh buffer holding `bytes`. Written through the queue (it lands before the next submission),
    /// not mapped at creation, which a lost device would turn into a panic.
    fn storage_with(&self, label: &str, bytes: &[u8], usage: wgpu::BufferUsages) -> wgpu::Buffer {
        let buffer = self.inner.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: (bytes.len() as u64).next_multiple_of(4),
            usage: usage | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.inner.queue.write_buffer(&buffer, 0, bytes);
        buffer
    }

    fn storage(&self, label: &str, bytes: &[u8]) -> wgpu::Buffer {
        self.storage_with(label, bytes, wgpu::BufferUsages::STORAGE)
    }

    fn f32_storage(&self, label: &str, values: &[f32]) -> wgpu::Buffer {
        // A zero-length binding is invalid: pad empty inputs.
        if values.is_empty() {
            return self.storage(label, &[0; 16]);
        }
        self.storage(label, bytemuck::cast_slice(values))
    }

    fn tensor(&self, rows: usize, cols: usize) -> GpuTensor {
        let bytes = (rows * cols * 4).max(16) as u64;
        GpuTensor { buffer: Arc::new(self.inner.pool.take(bytes)), rows, cols }
    }

    /// Records one dispatch of `kernel` with `params` as its uniform and `buffers` at bindings 1, 2, ….
    fn dispatch(&self, kernel: &Kernel, params: &[u32], buffers: &[&wgpu::Buffer], groups: (u32, u32)) {
        let cx = &self.inner;
        let mut rec = cx.recording.lock().unwrap();
        if rec.params.len() as u64 >= SLOTS as u64 * PARAM_SLOT {
            cx.flush(&mut rec);
        }
        let params_buffer = rec
            .params_buffer
            .get_or_insert_with(|| {
                cx.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("dispatch shapes"),
                    size: SLOTS as u64 * PARAM_SLOT,
                    usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                })
            })
            .clone();
        let offset = rec.params.len() as u64;
        rec.params.extend(params.iter().flat_map(|p| p.to_le_bytes()));
        rec.params.resize((offset + PARAM_SLOT) as usize, 0);
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &params_buffer,
                offset,
                size: wgpu::BufferSize::new(PARAM_SLOT),
            }),
        }];
        entries.extend(
            buffers.iter().enumerate().map(|(i, b)| wgpu::BindGroupEntry { binding: i as u32 + 1, resource: b.as_entire_binding() }),
        );
        let bind_group =
            cx.device.create_bind_group(&wgpu::BindGroupDescriptor { label: None, layout: &kernel.layout, entries: &entries });
        let encoder = rec.encoder.get_or_insert_with(|| cx.device.create_command_encoder(&Default::default()));
        let mut pass = encoder.begin_compute_pass(&Default::default());
        pass.set_pipeline(&kernel.pipeline);
        pass.set_bind_group(0, &bind_group, &[]);
        pass.dispatch_workgroups(groups.0, groups.1, 1);
    }

    /// Records a dispatch over `threads` invocations of a 64-wide kernel, as a 2-D grid when one row of
    /// workgroups would exceed the limit.
    fn dispatch_flat(&self, kernel: &Kernel, params: &[u32], buffers: &[&wgpu::Buffer], threads: usize) {
        self.dispatch(kernel, params, buffers, grid(threads.div_ceil(64)));
    }

    fn gather_rows(&self, src: &wgpu::Buffer, cols: usize, ids: &[u32]) -> GpuTensor {
        let out = self.tensor(ids.len(), cols);
        let ids_buffer = self.storage("row ids", bytemuck::cast_slice(if ids.is_empty() { &[0u32; 4][..] } else { ids }));
        let params = [ids.len() as u32, cols as u32];
        self.dispatch_flat(&self.inner.kernels.gather_rows, &params, &[src, &ids_buffer, out.buffer()], ids.len() * cols);
        out
    }
}

impl Context {
    /// Submits everything recorded so far.
    fn flush(&self, rec: &mut Recording) {
        if let (Some(params), Some(encoder)) = (rec.params_buffer.take(), rec.encoder.take()) {
            self.queue.write_buffer(&params, 0, &rec.params);
            self.queue.submit([encoder.finish()]);
        }
        rec.params.clear();
    }
}

/// `groups` workgroups as an `(x, y)` grid within WebGPU's per-dimension limit.
fn grid(groups: usize) -> (u32, u32) {
    let groups = groups.max(1) as u32;
    if groups <= MAX_GROUPS {
        (groups, 1)
    } else {
        (MAX_GROUPS, groups.div_ceil(MAX_GROUPS))
    }
}

impl Kernels {
    fn new(device: &wgpu::Device) -> Self {
        const EPILOGUE: &str = include_str!("shaders/matmul_epilogue.wgsl");
        let kernel = |name: &str, source: std::borrow::Cow<'static, str>| {
            let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(name),
                source: wgpu::ShaderSource::Wgsl(source),
            });
            let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(name),
                layout: None,
                module: &module,
                entry_point: Some("main"),
                compilation_options: Default::default(),
                cache: None,
            });
            Kernel { layout: pipeline.get_bind_group_layout(0), pipeline }
        };
        let with_epilogue = |body: &str| format!("{EPILOGUE}\n{body}").into();
        Self {
            matmul_q8: kernel("matmul_q8", with_epilogue(include_str!("shaders/matmul_q8.wgsl"))),
            matmul_f32: kernel("matmul_f32", with_epilogue(include_str!("shaders/matmul_f32.wgsl"))),
            quantize_rows: kernel("quantize_rows", include_str!("shaders/quantize_rows.wgsl").into()),
            layer_norm: kernel("layer_norm", include_str!("shaders/layer_norm.wgsl").into()),
            attention: kernel("attention", include_str!("shaders/attention.wgsl").into()),
            gather_rows: kernel("gather_rows", include_str!("shaders/gather_rows.wgsl").into()),
            add_rows: kernel("add_rows", include_str!("shaders/add_rows.wgsl").into()),
            l2_normalize: kernel("l2_normalize", include_str!("shaders/l2_normalize.wgsl").into()),
        }
    }
}

/// Storage buffers by size class (powers of two), kept for reuse when their tensors drop.
struct BufferPool {
    device: wgpu::Device,
    free: Mutex<HashMap<u64, Vec<wgpu::Buffer>>>,
}

/// A pooled buffer; returns to the pool on drop.
struct Pooled {
    buffer: Option<wgpu::Buffer>,
    /// None for buffers made for one input, which are not recycled.
    pool: Option<Arc<BufferPool>>,
}

impl BufferPool {
    fn take(self: &Arc<Self>, bytes: u64) -> Pooled {
        let class = bytes.next_power_of_two();
        let reused = self.free.lock().unwrap().get_mut(&class).and_then(Vec::pop);
        let buffer = reused.unwrap_or_else(|| {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("activations"),
                size: class,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            })
        });
        Pooled { buffer: Some(buffer), pool: Some(self.clone()) }
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let (Some(b), Some(pool)) = (self.buffer.take(), &self.pool) {
            pool.free.lock().unwrap().entry(b.size()).or_default().push(b);
        }
    }
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
