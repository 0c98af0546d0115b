//! Activation buffers by size class, reused across layers and calls.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Storage buffers by size class (powers of two), kept for reuse when their tensors drop.
pub(super) struct BufferPool {
    pub(super) device: wgpu::Device,
    pub(super) free: Mutex<HashMap<u64, Vec<wgpu::Buffer>>>,
}

/// A pooled buffer; returns to the pool on drop.
pub(super) struct Pooled {
    pub(super) buffer: Option<wgpu::Buffer>,
    /// None for buffers made for one input, which are not recycled.
    pub(super) pool: Option<Arc<BufferPool>>,
}

impl BufferPool {
    pub(super) fn take(self: &Arc<Self>, bytes: u64) -> Pooled {
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
