//! The GPU device: the adapter chosen and opened, its failures caught, and work recorded into one
//! submission — buffers made, kernels dispatched, the recording flushed.

use super::kernels::{Kernel, Kernels};
use super::pool::BufferPool;
use super::{GpuTensor, MAX_GROUPS, PARAM_SLOT, SLOTS};
use anyhow::{anyhow, bail, Context as _, Result};
use std::sync::{Arc, Mutex};

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
    pub(super) inner: Arc<Context>,
}

pub(super) struct Context {
    pub(super) device: wgpu::Device,
    pub(super) queue: wgpu::Queue,
    pub(super) adapter: AdapterSummary,
    pub(super) kernels: Kernels,
    pub(super) pool: Arc<BufferPool>,
    pub(super) recording: Mutex<Recording>,
    /// Set when the device is lost or reports an error: every later op fails with it.
    pub(super) failure: Arc<Mutex<Failure>>,
    /// Bound where a kernel's optional input (bias, residual, mask) is absent.
    pub(super) empty: wgpu::Buffer,
}

#[derive(Default)]
pub(super) struct Failure {
    pub(super) lost: Option<String>,
    pub(super) error: Option<String>,
}

#[derive(Default)]
pub(super) struct Recording {
    pub(super) encoder: Option<wgpu::CommandEncoder>,
    pub(super) params: Vec<u8>,
    pub(super) params_buffer: Option<wgpu::Buffer>,
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
    pub(super) fn check(&self) -> Result<()> {
        match self.failure() {
            Some(failure) => bail!("{failure}"),
            None => Ok(()),
        }
    }

    /// A fresh buffer holding `bytes`. Written through the queue (it lands before the next submission),
    /// not mapped at creation, which a lost device would turn into a panic.
    pub(super) fn storage_with(&self, label: &str, bytes: &[u8], usage: wgpu::BufferUsages) -> wgpu::Buffer {
        let buffer = self.inner.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: (bytes.len() as u64).next_multiple_of(4),
            usage: usage | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.inner.queue.write_buffer(&buffer, 0, bytes);
        buffer
    }

    pub(super) fn storage(&self, label: &str, bytes: &[u8]) -> wgpu::Buffer {
        self.storage_with(label, bytes, wgpu::BufferUsages::STORAGE)
    }

    pub(super) fn f32_storage(&self, label: &str, values: &[f32]) -> wgpu::Buffer {
        // A zero-length binding is invalid: pad empty inputs.
        if values.is_empty() {
            return self.storage(label, &[0; 16]);
        }
        self.storage(label, bytemuck::cast_slice(values))
    }

    pub(super) fn tensor(&self, rows: usize, cols: usize) -> GpuTensor {
        let bytes = (rows * cols * 4).max(16) as u64;
        GpuTensor { buffer: Arc::new(self.inner.pool.take(bytes)), rows, cols }
    }

    /// Records one dispatch of `kernel` with `params` as its uniform and `buffers` at bindings 1, 2, ….
    pub(super) fn dispatch(&self, kernel: &Kernel, params: &[u32], buffers: &[&wgpu::Buffer], groups: (u32, u32)) {
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
    pub(super) fn dispatch_flat(&self, kernel: &Kernel, params: &[u32], buffers: &[&wgpu::Buffer], threads: usize) {
        self.dispatch(kernel, params, buffers, grid(threads.div_ceil(64)));
    }

    pub(super) fn gather_rows(&self, src: &wgpu::Buffer, cols: usize, ids: &[u32]) -> GpuTensor {
        let out = self.tensor(ids.len(), cols);
        let ids_buffer = self.storage("row ids", bytemuck::cast_slice(if ids.is_empty() { &[0u32; 4][..] } else { ids }));
        let params = [ids.len() as u32, cols as u32];
        self.dispatch_flat(&self.inner.kernels.gather_rows, &params, &[src, &ids_buffer, out.buffer()], ids.len() * cols);
        out
    }
}

impl Context {
    /// Submits everything recorded so far.
    pub(super) fn flush(&self, rec: &mut Recording) {
        if let (Some(params), Some(encoder)) = (rec.params_buffer.take(), rec.encoder.take()) {
            self.queue.write_buffer(&params, 0, &rec.params);
            self.queue.submit([encoder.finish()]);
        }
        rec.params.clear();
    }
}

/// `groups` workgroups as an `(x, y)` grid within WebGPU's per-dimension limit.
pub(super) fn grid(groups: usize) -> (u32, u32) {
    let groups = groups.max(1) as u32;
    if groups <= MAX_GROUPS {
        (groups, 1)
    } else {
        (MAX_GROUPS, groups.div_ceil(MAX_GROUPS))
    }
}
