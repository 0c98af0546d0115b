//! The op set both encoders are written over, and its implementations: [`cpu`], the fused CPU backend (natively
//! and in wasm: pooled buffers, tuwen's q8_0 kernels, a thread team); [`gpu`], wgpu compute shaders
//! (Vulkan/Metal/DX12 natively, WebGPU in the browser); and [`reference`], plain candle ops that the tests hold
//! the other two to.
//!
//! Activations are 2-D `[rows, cols]` (rows = batch × sequence); ops that need the sequence structure take
//! it as an argument. Every op records work; only [`Backend::read`] waits for it, which is why it is async.

pub mod cpu;
pub mod gpu;
pub mod reference;

use super::params::{LinearParams, NormParams};
use crate::config::Activation;
use anyhow::Result;
use candle_core::Tensor;
use std::future::Future;

pub use cpu::Cpu;
pub use gpu::Gpu;
pub use reference::Reference;

/// Attention heads over a fused `[batch·seq, 3·hidden]` query|key|value activation.
#[derive(Debug, Clone, Copy)]
pub struct AttentionShape {
    pub batch: usize,
    pub seq: usize,
    pub heads: usize,
    pub queries: Queries,
}

/// The query rows attention computes: every token's, or only the first of each sequence — the [CLS] token,
/// the one row both towers read from their last layer, so that layer's other rows are never computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queries {
    All,
    First,
}

impl AttentionShape {
    /// Every query of `batch` sequences of `seq` tokens.
    pub fn new(batch: usize, seq: usize, heads: usize) -> Self {
        Self { batch, seq, heads, queries: Queries::All }
    }

    /// The same attention for the first query of each sequence only.
    pub fn first_queries(self) -> Self {
        Self { queries: Queries::First, ..self }
    }

    /// Query rows per sequence: `seq`, or 1.
    pub fn queries_per_sequence(&self) -> usize {
        match self.queries {
            Queries::All => self.seq,
            Queries::First => self.seq.min(1),
        }
    }
}

pub trait Backend {
    /// An activation `[rows, cols]` of f32 on this backend.
    type Tensor;
    /// A dense layer's weights as this backend multiplies them (uploaded once).
    type Linear;
    type Norm;
    /// An f32 table `[rows, cols]`: embeddings to gather from, or rows added to every sequence.
    type Table;

    fn linear(&self, params: LinearParams) -> Result<Self::Linear>;
    fn norm(&self, params: NormParams) -> Result<Self::Norm>;
    fn table(&self, table: &Tensor) -> Result<Self::Table>;

    /// Host data → activation `[rows, cols]`.
    fn upload(&self, data: &[f32], rows: usize, cols: usize) -> Result<Self::Tensor>;
    /// Row `ids[i]` of `table` for each i: `[ids.len(), table cols]`.
    fn gather(&self, table: &Self::Table, ids: &[u32]) -> Result<Self::Tensor>;
    /// `x[r] += table[r % period]`: per-position rows added to each of the sequences in `x`.
    fn add_rows(&self, x: Self::Tensor, table: &Self::Table, period: usize) -> Result<Self::Tensor>;
    /// `x·Wᵀ + b`, then `activation`, then `+ residual`: the epilogue runs as the product is stored.
    fn linear_forward(
        &self,
        x: &Self::Tensor,
        layer: &Self::Linear,
        activation: Option<Activation>,
        residual: Option<&Self::Tensor>,
    ) -> Result<Self::Tensor>;
    fn layer_norm(&self, x: &Self::Tensor, norm: &Self::Norm) -> Result<Self::Tensor>;
    /// `linear_forward(layer_norm(x))`: a backend may fuse the two (the CPU backend normalises straight into
    /// the product's quantized input).
    fn norm_linear_forward(
        &self,
        x: &Self::Tensor,
        norm: &Self::Norm,
        layer: &Self::Linear,
        activation: Option<Activation>,
        residual: Option<&Self::Tensor>,
    ) -> Result<Self::Tensor> {
        self.linear_forward(&self.layer_norm(x, norm)?, layer, activation, residual)
    }
    /// The feed-forward block: `linear_forward(linear_forward(norm(x), up, activation), down, None,
    /// residual)`, `norm` a layer norm or none. A backend may keep the inner activation in its own form (the
    /// CPU backend quantizes `up`'s output as it is stored, for `down`).
    #[allow(clippy::too_many_arguments)]
    fn feed_forward(
        &self,
        x: &Self::Tensor,
        norm: Option<&Self::Norm>,
        up: &Self::Linear,
        activation: Activation,
        down: &Self::Linear,
        residual: Option<&Self::Tensor>,
    ) -> Result<Self::Tensor> {
        feed_forward_unfused(self, x, norm, up, activation, down, residual)
    }
    /// Scaled dot-product attention per head, softmax over keys; `mask_bias` `[batch, seq]` is added to every
    /// query's scores (0 for tokens, a large negative number for padding). → `[batch·q, hidden]`, q the
    /// shape's [`AttentionShape::queries_per_sequence`] (the first query of each sequence, or all).
    fn attention(&self, qkv: &Self::Tensor, shape: AttentionShape, mask_bias: Option<&Self::Tensor>) -> Result<Self::Tensor>;
    /// The first row of each sequence of `seq` rows (the [CLS] token): `[rows / seq, cols]`.
    fn first_tokens(&self, x: &Self::Tensor, seq: usize) -> Result<Self::Tensor>;
    /// Rows scaled to unit L2 norm.
    fn l2_normalize(&self, x: &Self::Tensor) -> Result<Self::Tensor>;
    /// Waits for the recorded work and returns `x` row-major.
    fn read(&self, x: &Self::Tensor) -> impl Future<Output = Result<Vec<f32>>>;
}

/// The rows of `x` `[batch·seq, cols]` that an attention of `shape` computes queries for: all of them, or
/// each sequence's first (what a layer's residual must be cut to when only its first queries go on).
pub fn query_rows<B: Backend + ?Sized>(b: &B, x: B::Tensor, shape: AttentionShape) -> Result<B::Tensor> {
    match shape.queries {
        Queries::All => Ok(x),
        Queries::First => b.first_tokens(&x, shape.seq),
    }
}

/// Runs `x` `[batch·seq, hidden]` through `layers` (`forward(layer, x, shape)`), the last one computing only
/// each sequence's first query past its attention, since both towers read nothing but the [CLS] row of
/// their last layer: → the [CLS] rows `[batch, hidden]` (the same values as the full pass's first rows).
pub fn through_layers<B: Backend + ?Sized, L>(
    b: &B,
    layers: &[L],
    mut x: B::Tensor,
    shape: AttentionShape,
    forward: impl Fn(&L, B::Tensor, AttentionShape) -> Result<B::Tensor>,
) -> Result<B::Tensor> {
    let Some((last, rest)) = layers.split_last() else { return b.first_tokens(&x, shape.seq) };
    for layer in rest {
        x = forward(layer, x, shape)?;
    }
    forward(last, x, shape.first_queries())
}

/// [`Backend::feed_forward`] as its two products, for backends (or layers) that do not fuse it.
#[allow(clippy::too_many_arguments)]
pub fn feed_forward_unfused<B: Backend + ?Sized>(
    b: &B,
    x: &B::Tensor,
    norm: Option<&B::Norm>,
    up: &B::Linear,
    activation: Activation,
    down: &B::Linear,
    residual: Option<&B::Tensor>,
) -> Result<B::Tensor> {
    let inner = match norm {
        Some(norm) => b.norm_linear_forward(x, norm, up, Some(activation), None)?,
        None => b.linear_forward(x, up, Some(activation), None)?,
    };
    b.linear_forward(&inner, down, None, residual)
}

/// Which backend runs the encoders (`--backend`, and the page's `?backend=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendChoice {
    /// A GPU when a hardware adapter exists, else the CPU (CPU-emulated adapters are slower than the CPU backend).
    #[default]
    Auto,
    Cpu,
    /// The GPU, CPU-emulated adapters (lavapipe, SwiftShader) included; an error when there is none.
    Gpu,
}

impl std::str::FromStr for BackendChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "gpu" | "webgpu" => Ok(Self::Gpu),
            other => Err(format!("the backend is \"auto\", \"cpu\" or \"gpu\", not {other:?}")),
        }
    }
}

/// The backend a choice resolved to, and why: shown in logs and on the page.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BackendReport {
    /// "gpu" or "cpu".
    pub backend: String,
    /// The adapter on the GPU; on the CPU, why the GPU is not used.
    pub detail: String,
}

impl std::fmt::Display for BackendReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.backend, self.detail)
    }
}

/// Opens the GPU a choice asks for. `auto` falls back to the CPU, saying why; `gpu` without an adapter is an
/// error; `cpu` opens nothing.
pub async fn open(choice: BackendChoice) -> Result<(Option<Gpu>, BackendReport)> {
    let cpu = |detail: String| BackendReport { backend: "cpu".into(), detail };
    match choice {
        BackendChoice::Cpu => Ok((None, cpu("chosen (--backend cpu)".into()))),
        BackendChoice::Auto => match Gpu::new(false).await {
            Ok(gpu) => {
                let report = BackendReport { backend: "gpu".into(), detail: gpu.adapter().to_string() };
                Ok((Some(gpu), report))
            }
            Err(e) => Ok((None, cpu(format!("{e:#}")))),
        },
        BackendChoice::Gpu => {
            let gpu = Gpu::new(true).await?;
            let report = BackendReport { backend: "gpu".into(), detail: gpu.adapter().to_string() };
            Ok((Some(gpu), report))
        }
    }
}
