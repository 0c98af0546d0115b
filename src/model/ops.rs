//! The small op set both encoders are written over (candle on CPU, natively and in wasm).

use super::params::{Matrix, Params};
use super::q8::Q8Matrix;
use crate::config::Activation;
use candle_core::{DType, Result, Tensor, D};
use std::sync::Arc;

/// A dense layer `y = x·Wᵀ (+ b)` with the weight in PyTorch's `[out, in]` layout, f32 or quantized.
#[derive(Debug, Clone)]
pub struct Linear {
    product: Product,
    out_dim: usize,
}

/// The weight, with the bias in the form its product adds it.
#[derive(Debug, Clone)]
enum Product {
    /// candle's f32 matmul, then a broadcast add.
    Dense { weight: Tensor, bias: Option<Tensor> },
    /// The q8_0 kernel adds the bias as it stores each tile.
    Quantized { weight: Arc<Q8Matrix>, bias: Option<Vec<f32>> },
}

impl Linear {
    pub fn load(p: &Params, in_dim: usize, out_dim: usize, bias: bool) -> Result<Self> {
        let bias = if bias { Some(p.tensor(out_dim, "bias")?) } else { None };
        let product = match p.matrix(out_dim, in_dim, "weight")? {
            Matrix::Dense(weight) => Product::Dense { weight, bias },
            Matrix::Quantized(weight) => Product::Quantized { weight, bias: bias.map(|b| b.to_vec1()).transpose()? },
        };
        Ok(Self { product, out_dim })
    }

    pub fn from_weight(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        Ok(Self { out_dim: weight.dim(0)?, product: Product::Dense { weight, bias } })
    }

    /// `x`: `[..., in]` → `[..., out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let (rows, in_dim) = (dims[..dims.len() - 1].iter().product::<usize>(), dims[dims.len() - 1]);
        let x = x.reshape((rows, in_dim))?;
        let y = match &self.product {
            Product::Dense { weight, bias } => {
                let y = x.matmul(&weight.t()?)?;
                match bias {
                    Some(b) => y.broadcast_add(b)?,
                    None => y,
                }
            }
            Product::Quantized { weight, bias } => {
                let y = weight.matmul(&x.flatten_all()?.to_vec1::<f32>()?, rows, bias.as_deref());
                Tensor::from_vec(y, (rows, self.out_dim), x.device())?
            }
        };
        let mut out_dims = dims;
        *out_dims.last_mut().unwrap() = self.out_dim;
        y.reshape(out_dims)
    }
}

#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f32,
}

impl LayerNorm {
    pub fn load(p: &Params, dim: usize, eps: f64) -> Result<Self> {
        let weight = p.tensor_with_hint(dim, "weight", candle_nn::Init::Const(1.0))?;
        let bias = p.tensor_with_hint(dim, "bias", candle_nn::Init::Const(0.0))?;
        Ok(Self { weight, bias, eps: eps as f32 })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        candle_nn::ops::layer_norm(&x.contiguous()?, &self.weight, &self.bias, self.eps)
    }
}

pub fn activation(x: &Tensor, act: Activation) -> Result<Tensor> {
    match act {
        Activation::Gelu => x.gelu_erf(),
        Activation::QuickGelu => x.mul(&candle_nn::ops::sigmoid(&(x * 1.702)?)?),
    }
}

/// Multi-head scaled dot-product attention.
/// `q`, `k`, `v`: `[batch, seq, heads·head_dim]`; `mask_bias`: `[batch, 1, 1, seq]` added to the scores
/// (0 for tokens, a large negative number for padding) or `None`.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize, mask_bias: Option<&Tensor>) -> Result<Tensor> {
    let (batch, seq, hidden) = q.dims3()?;
    let head_dim = hidden / heads;
    let split = |t: &Tensor| t.reshape((batch, seq, heads, head_dim))?.transpose(1, 2)?.contiguous();
    let (q, k, v) = (split(q)?, split(k)?, split(v)?);
    let scores = (q.matmul(&k.t()?)? * (1.0 / (head_dim as f64).sqrt()))?;
    let scores = match mask_bias {
        Some(m) => scores.broadcast_add(m)?,
        None => scores,
    };
    let probs = candle_nn::ops::softmax_last_dim(&scores)?;
    probs.matmul(&v)?.transpose(1, 2)?.reshape((batch, seq, hidden))
}

/// Additive attention bias from a `[batch, seq]` 0/1 mask, as HF BERT builds it.
pub fn mask_bias(mask: &Tensor) -> Result<Tensor> {
    let (batch, seq) = mask.dims2()?;
    let inverted = (1.0 - mask.to_dtype(DType::F32)?)?;
    (inverted * f32::MIN as f64)?.reshape((batch, 1, 1, seq))
}

/// Rows scaled to unit L2 norm.
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let norm = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
    x.broadcast_div(&norm.clamp(1e-12, f64::MAX)?)
}
