//! The CPU backend, natively and in wasm: activations in pooled buffers (nothing allocated once a shape has
//! run), q8_0 products on tuwen's kernels with bias, activation and residual fused into the store, layer norm
//! fused with the quantization of the product it feeds, attention fused per (sequence, head), and every
//! reduction in a fixed order — so the embeddings are the same bits on every CPU and for any `--threads`.
//! candle is not on this path (it reads the weights; [`super::Reference`] is the unfused candle version the
//! tests compare against).

mod kernels;
mod pool;
#[cfg(feature = "region-profile")]
pub mod region_profile;
pub mod team;

use super::{AttentionShape, Backend};
use crate::config::Activation;
use crate::model::params::{LinearParams, Matrix, NormParams};
use crate::model::q8::{Epilogue, Q8Matrix, BLOCK};
use anyhow::{bail, ensure, Result};
use candle_core::Tensor;
use pool::{Floats, Quants};
use std::sync::Arc;

#[derive(Debug, Clone, Default)]
pub struct Cpu;

/// An activation `[rows, cols]` in a pooled buffer.
pub struct CpuTensor {
    data: Floats,
    rows: usize,
    cols: usize,
}

impl CpuTensor {
    fn new(rows: usize, cols: usize) -> Self {
        Self { data: Floats::take(rows * cols), rows, cols }
    }
}

/// A dense layer as the CPU multiplies it.
pub enum CpuLinear {
    /// f32 weights packed by [`kernels::pack_dense`]: 16 columns at a time, each block's `[in][16]` contiguous.
    Dense { packed: Vec<f32>, bias: Option<Vec<f32>>, in_dim: usize, out_dim: usize },
    /// q8_0 weights packed for the kernels; the bias is added as each tile is stored.
    Quantized { weight: Arc<Q8Matrix>, bias: Option<Vec<f32>> },
}

impl CpuLinear {
    fn dims(&self) -> (usize, usize) {
        match self {
            Self::Dense { in_dim, out_dim, .. } => (*in_dim, *out_dim),
            Self::Quantized { weight, .. } => (weight.in_dim(), weight.out_dim()),
        }
    }
}

pub struct CpuNorm {
    weight: Vec<f32>,
    bias: Vec<f32>,
    eps: f32,
}

/// An f32 table `[rows, cols]`.
pub struct CpuTable {
    data: Vec<f32>,
    rows: usize,
    cols: usize,
}

impl Cpu {
    /// `x·Wᵀ` with its epilogue into a new activation of `rows` rows; the input is `x`, or for q8_0 layers
    /// `quantized` when it was quantized already.
    fn product(
        &self,
        x: Option<&CpuTensor>,
        quantized: Option<&Quants>,
        rows: usize,
        layer: &CpuLinear,
        act: Option<Activation>,
        residual: Option<&CpuTensor>,
    ) -> Result<CpuTensor> {
        let (in_dim, out_dim) = layer.dims();
        if let Some(x) = x {
            ensure!(x.cols == in_dim, "a product with input width {in_dim} got activations [{}, {}]", x.rows, x.cols);
        }
        if let Some(r) = residual {
            ensure!(
                (r.rows, r.cols) == (rows, out_dim),
                "the residual is [{}, {}], the product [{rows}, {out_dim}]",
                r.rows,
                r.cols
            );
        }
        let mut out = CpuTensor::new(rows, out_dim);
        let residual = residual.map(|r| &r.data[..]);
        match layer {
            CpuLinear::Quantized { weight, bias } => {
                let epilogue = Epilogue { bias: bias.as_deref(), act, residual };
                match quantized {
                    Some(q) => weight.matmul_into(q, &mut out.data, &epilogue),
                    None => weight.matmul_into(&quantized_input(x.expect("unquantized input"), None), &mut out.data, &epilogue),
                }
            }
            CpuLinear::Dense { packed, bias, .. } => {
                let x = x.expect("dense products take f32 input");
                kernels::dense(&x.data, rows, packed, in_dim, out_dim, bias.as_deref(), act, residual, &mut out.data);
            }
        }
        Ok(out)
    }
}

/// `x`, layer-normalised by `norm` when given, quantized for a q8_0 product (the normalised rows are
/// quantized one at a time, never all in f32).
fn quantized_input(x: &CpuTensor, norm: Option<&CpuNorm>) -> Quants {
    let mut q = Quants::take();
    match norm {
        Some(norm) => q.quantize_with(x.rows, x.cols, |row, dst| {
            kernels::layer_norm_row(&x.data[row * x.cols..][..x.cols], &norm.weight, &norm.bias, norm.eps, dst)
        }),
        None => q.quantize_from(&x.data, x.rows, x.cols),
    }
    q
}

impl Backend for Cpu {
    type Tensor = CpuTensor;
    type Linear = CpuLinear;
    type Norm = CpuNorm;
    type Table = CpuTable;

    fn linear(&self, p: LinearParams) -> Result<CpuLinear> {
        if let Some(b) = &p.bias {
            ensure!(b.len() == p.out_dim, "a bias of {} values for {} outputs", b.len(), p.out_dim);
        }
        Ok(match p.matrix {
            Matrix::Dense(weight) => {
                let (out_dim, in_dim) = weight.dims2()?;
                ensure!(
                    (out_dim, in_dim) == (p.out_dim, p.in_dim),
                    "weights [{out_dim}, {in_dim}] for a [{}, {}] layer",
                    p.out_dim,
                    p.in_dim
                );
                let packed = kernels::pack_dense(&weight.flatten_all()?.to_vec1::<f32>()?, out_dim, in_dim);
                CpuLinear::Dense { packed, bias: p.bias, in_dim, out_dim }
            }
            Matrix::Quantized(weight) => CpuLinear::Quantized { weight, bias: p.bias },
        })
    }

    fn norm(&self, p: NormParams) -> Result<CpuNorm> {
        ensure!(p.weight.len() == p.bias.len(), "a layer norm with {} weights and {} biases", p.weight.len(), p.bias.len());
        Ok(CpuNorm { weight: p.weight, bias: p.bias, eps: p.eps })
    }

    fn table(&self, table: &Tensor) -> Result<CpuTable> {
        let (rows, cols) = table.dims2()?;
        Ok(CpuTable { data: table.flatten_all()?.to_vec1::<f32>()?, rows, cols })
    }

    fn upload(&self, data: &[f32], rows: usize, cols: usize) -> Result<CpuTensor> {
        ensure!(data.len() == rows * cols, "{} values are not [{rows}, {cols}]", data.len());
        Ok(CpuTensor { data: Floats::copy_of(data), rows, cols })
    }

    fn gather(&self, table: &CpuTable, ids: &[u32]) -> Result<CpuTensor> {
        let mut out = CpuTensor::new(ids.len(), table.cols);
        for (dst, &id) in out.data.chunks_exact_mut(table.cols).zip(ids) {
            let id = id as usize;
            if id >= table.rows {
                bail!("token id {id} is outside the embedding table of {} rows", table.rows);
            }
            dst.copy_from_slice(&table.data[id * table.cols..][..table.cols]);
        }
        Ok(out)
    }

    fn add_rows(&self, mut x: CpuTensor, table: &CpuTable, period: usize) -> Result<CpuTensor> {
        ensure!(
            table.cols == x.cols && period <= table.rows && period > 0 && x.rows % period == 0,
            "cannot add {period} rows of a [{}, {}] table to [{}, {}]",
            table.rows,
            table.cols,
            x.rows,
            x.cols
        );
        for (r, row) in x.data.chunks_exact_mut(x.cols).enumerate() {
            for (v, t) in row.iter_mut().zip(&table.data[(r % period) * table.cols..]) {
                *v += t;
            }
        }
        Ok(x)
    }

    fn linear_forward(
        &self,
        x: &CpuTensor,
        layer: &CpuLinear,
        act: Option<Activation>,
        residual: Option<&CpuTensor>,
    ) -> Result<CpuTensor> {
        self.product(Some(x), None, x.rows, layer, act, residual)
    }

    /// Layer norm straight into the q8_0 blocks of the product it feeds: the normalised rows never exist
    /// in f32 all at once.
    fn norm_linear_forward(
        &self,
        x: &CpuTensor,
        norm: &CpuNorm,
        layer: &CpuLinear,
        act: Option<Activation>,
        residual: Option<&CpuTensor>,
    ) -> Result<CpuTensor> {
        let (in_dim, _) = layer.dims();
        ensure!(
            x.cols == in_dim && norm.weight.len() == in_dim,
            "layer norm of width {} before a product of input width {in_dim} on [{}, {}]",
            norm.weight.len(),
            x.rows,
            x.cols
        );
        match layer {
            CpuLinear::Quantized { .. } => self.product(None, Some(&quantized_input(x, Some(norm))), x.rows, layer, act, residual),
            CpuLinear::Dense { .. } => self.linear_forward(&self.layer_norm(x, norm)?, layer, act, residual),
        }
    }

    /// With both products q8_0, `up`'s output is quantized as it is stored (see
    /// [`Q8Matrix::matmul_quantized`]): the `[rows, 3072]` inner activation never exists in f32.
    fn feed_forward(
        &self,
        x: &CpuTensor,
        norm: Option<&CpuNorm>,
        up: &CpuLinear,
        act: Activation,
        down: &CpuLinear,
        residual: Option<&CpuTensor>,
    ) -> Result<CpuTensor> {
        match (up, down) {
            (CpuLinear::Quantized { weight, bias }, CpuLinear::Quantized { .. })
                if weight.out_dim() % BLOCK == 0 && down.dims().0 == weight.out_dim() =>
            {
                let (in_dim, _) = up.dims();
                ensure!(x.cols == in_dim, "a product with input width {in_dim} got activations [{}, {}]", x.rows, x.cols);
                if let Some(norm) = norm {
                    ensure!(norm.weight.len() == in_dim, "layer norm of width {} on [{}, {}]", norm.weight.len(), x.rows, x.cols);
                }
                let mut inner = Quants::take();
                let epilogue = Epilogue { bias: bias.as_deref(), act: Some(act), residual: None };
                weight.matmul_quantized(&quantized_input(x, norm), &mut inner, &epilogue);
                self.product(None, Some(&inner), x.rows, down, None, residual)
            }
            _ => super::feed_forward_unfused(self, x, norm, up, act, down, residual),
        }
    }

    fn layer_norm(&self, x: &CpuTensor, norm: &CpuNorm) -> Result<CpuTensor> {
        ensure!(norm.weight.len() == x.cols, "layer norm of width {} on [{}, {}]", norm.weight.len(), x.rows, x.cols);
        let mut out = CpuTensor::new(x.rows, x.cols);
        kernels::layer_norm(&x.data, x.cols, &norm.weight, &norm.bias, norm.eps, &mut out.data);
        Ok(out)
    }

    fn attention(&self, qkv: &CpuTensor, s: AttentionShape, mask_bias: Option<&CpuTensor>) -> Result<CpuTensor> {
        let hidden = qkv.cols / 3;
        ensure!(
            qkv.cols % 3 == 0 && s.heads > 0 && hidden % s.heads == 0 && qkv.rows == s.batch * s.seq,
            "attention of {s:?} on [{}, {}]",
            qkv.rows,
            qkv.cols
        );
        if let Some(m) = mask_bias {
            ensure!((m.rows, m.cols) == (s.batch, s.seq), "a mask [{}, {}] for {s:?}", m.rows, m.cols);
        }
        let queries = s.queries_per_sequence();
        let mut out = CpuTensor::new(s.batch * queries, hidden);
        if qkv.rows > 0 {
            kernels::attention(&qkv.data, s.batch, s.seq, queries, s.heads, mask_bias.map(|m| &m.data[..]), &mut out.data);
        }
        Ok(out)
    }

    fn first_tokens(&self, x: &CpuTensor, seq: usize) -> Result<CpuTensor> {
        ensure!(seq > 0 && x.rows % seq == 0, "[{}, {}] is not made of sequences of {seq}", x.rows, x.cols);
        let mut out = CpuTensor::new(x.rows / seq, x.cols);
        for (i, dst) in out.data.chunks_exact_mut(x.cols).enumerate() {
            dst.copy_from_slice(&x.data[i * seq * x.cols..][..x.cols]);
        }
        Ok(out)
    }

    fn l2_normalize(&self, x: &CpuTensor) -> Result<CpuTensor> {
        let mut out = CpuTensor { data: Floats::copy_of(&x.data), rows: x.rows, cols: x.cols };
        kernels::l2_normalize(&mut out.data, x.cols);
        Ok(out)
    }

    async fn read(&self, x: &CpuTensor) -> Result<Vec<f32>> {
        Ok(x.data.to_vec())
    }
}
