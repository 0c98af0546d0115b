//! The unfused reference backend: one candle op per step (f32 products on candle's gemm, q8_0 products on
//! tuwen's kernels, then separate passes for bias, activation, residual, softmax, layer norm). It is what the
//! fused CPU backend ([`super::Cpu`]) is tested against, op by op and end to end; nothing runs it in production.

use super::{query_rows, AttentionShape, Backend};
use crate::config::Activation;
use crate::model::params::{LinearParams, Matrix, NormParams};
use crate::model::q8::Q8Matrix;
use anyhow::Result;
use candle_core::{Device, Tensor, D};
use std::sync::Arc;

#[derive(Debug, Clone, Default)]
pub struct Reference;

/// The weight, with the bias in the form its product adds it.
#[derive(Debug)]
pub enum ReferenceLinear {
    /// candle's f32 matmul, then a broadcast add.
    Dense { weight: Tensor, bias: Option<Tensor>, out_dim: usize },
    /// The q8_0 kernel adds the bias as it stores each tile.
    Quantized { weight: Arc<Q8Matrix>, bias: Option<Vec<f32>> },
}

pub struct ReferenceNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f32,
}

impl Backend for Reference {
    type Tensor = Tensor;
    type Linear = ReferenceLinear;
    type Norm = ReferenceNorm;
    type Table = Tensor;

    fn linear(&self, p: LinearParams) -> Result<ReferenceLinear> {
        Ok(match p.matrix {
            Matrix::Dense(weight) => ReferenceLinear::Dense {
                weight,
                bias: p.bias.map(|b| Tensor::from_vec(b, p.out_dim, &Device::Cpu)).transpose()?,
                out_dim: p.out_dim,
            },
            Matrix::Quantized(weight) => ReferenceLinear::Quantized { weight, bias: p.bias },
        })
    }

    fn norm(&self, p: NormParams) -> Result<ReferenceNorm> {
        let dim = p.weight.len();
        Ok(ReferenceNorm {
            weight: Tensor::from_vec(p.weight, dim, &Device::Cpu)?,
            bias: Tensor::from_vec(p.bias, dim, &Device::Cpu)?,
            eps: p.eps,
        })
    }

    fn table(&self, table: &Tensor) -> Result<Tensor> {
        Ok(table.to_device(&Device::Cpu)?.contiguous()?)
    }

    fn upload(&self, data: &[f32], rows: usize, cols: usize) -> Result<Tensor> {
        Ok(Tensor::from_slice(data, (rows, cols), &Device::Cpu)?)
    }

    fn gather(&self, table: &Tensor, ids: &[u32]) -> Result<Tensor> {
        Ok(table.embedding(&Tensor::from_slice(ids, ids.len(), &Device::Cpu)?)?)
    }

    fn add_rows(&self, x: Tensor, table: &Tensor, period: usize) -> Result<Tensor> {
        let (rows, cols) = x.dims2()?;
        let x = x.reshape((rows / period, period, cols))?.broadcast_add(&table.narrow(0, 0, period)?)?;
        Ok(x.reshape((rows, cols))?)
    }

    fn linear_forward(
        &self,
        x: &Tensor,
        layer: &ReferenceLinear,
        act: Option<Activation>,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        let rows = x.dim(0)?;
        let y = match layer {
            ReferenceLinear::Dense { weight, bias, .. } => {
                let y = x.matmul(&weight.t()?)?;
                match bias {
                    Some(b) => y.broadcast_add(b)?,
                    None => y,
                }
            }
            ReferenceLinear::Quantized { weight, bias } => {
                let y = weight.matmul(&x.flatten_all()?.to_vec1::<f32>()?, rows, bias.as_deref());
                Tensor::from_vec(y, (rows, weight.out_dim()), x.device())?
            }
        };
        let y = match act {
            None => y,
            Some(Activation::Gelu) => y.gelu_erf()?,
            Some(Activation::QuickGelu) => y.mul(&candle_nn::ops::sigmoid(&(&y * 1.702)?)?)?,
        };
        Ok(match residual {
            Some(r) => (y + r)?,
            None => y,
        })
    }

    fn layer_norm(&self, x: &Tensor, n: &ReferenceNorm) -> Result<Tensor> {
        Ok(candle_nn::ops::layer_norm(&x.contiguous()?, &n.weight, &n.bias, n.eps)?)
    }

    fn attention(&self, qkv: &Tensor, s: AttentionShape, mask_bias: Option<&Tensor>) -> Result<Tensor> {
        let hidden = qkv.dim(1)? / 3;
        let head_dim = hidden / s.heads;
        // [b·s, 3·h] → 3 × [b, heads, s, head_dim]
        let qkv = qkv.reshape((s.batch, s.seq, 3, s.heads, head_dim))?.permute((2, 0, 3, 1, 4))?;
        let part = |i: usize| qkv.get(i)?.contiguous();
        let (q, k, v) = (part(0)?, part(1)?, part(2)?);
        let scores = (q.matmul(&k.t()?)? * (1.0 / (head_dim as f64).sqrt()))?;
        let scores = match mask_bias {
            Some(m) => scores.broadcast_add(&m.reshape((s.batch, 1, 1, s.seq))?)?,
            None => scores,
        };
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        query_rows(self, probs.matmul(&v)?.transpose(1, 2)?.reshape((s.batch * s.seq, hidden))?, s)
    }

    fn first_tokens(&self, x: &Tensor, seq: usize) -> Result<Tensor> {
        let (rows, cols) = x.dims2()?;
        Ok(x.reshape((rows / seq, seq, cols))?.narrow(1, 0, 1)?.squeeze(1)?)
    }

    fn l2_normalize(&self, x: &Tensor) -> Result<Tensor> {
        let norm = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
        Ok(x.broadcast_div(&norm.clamp(1e-12, f64::MAX)?)?)
    }

    async fn read(&self, x: &Tensor) -> Result<Vec<f32>> {
        Ok(x.flatten_all()?.to_vec1()?)
    }
}
