//! Where the towers' parameters come from: an HF checkpoint (f32, through candle's `VarBuilder`) or a
//! tuwen GGUF (quantized matrices kept packed, everything else dequantized to f32 once).

use super::q8::Q8Matrix;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Result, Shape, Tensor};
use candle_nn::{Init, VarBuilder};
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Clone)]
enum Source {
    Checkpoint(VarBuilder<'static>),
    Gguf(Arc<HashMap<String, Arc<QTensor>>>),
}

/// A prefix-scoped view of a model's parameters (`pp("text_model")`, then names below it).
#[derive(Clone)]
pub struct Params {
    source: Source,
    prefix: Vec<String>,
    device: Device,
}

/// A weight matrix `[out, in]` as the linear layers use it.
#[derive(Debug, Clone)]
pub enum Matrix {
    Dense(Tensor),
    /// Every quantized (integer) GGUF matrix runs on the q8_0 kernels: q8_0 data is repacked as is; 4-bit data is
    /// dequantized once and requantized to q8_0 (a smaller download, the same kernels and memory as q8_0).
    Quantized(Arc<Q8Matrix>),
}

impl Params {
    pub fn from_var_builder(vb: VarBuilder<'static>) -> Self {
        let device = vb.device().clone();
        Self { source: Source::Checkpoint(vb), prefix: Vec::new(), device }
    }

    pub fn from_gguf_tensors(tensors: HashMap<String, Arc<QTensor>>, device: &Device) -> Self {
        Self { source: Source::Gguf(Arc::new(tensors)), prefix: Vec::new(), device: device.clone() }
    }

    pub fn pp<S: ToString>(&self, s: S) -> Self {
        let mut p = self.clone();
        p.prefix.push(s.to_string());
        p
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    fn path(&self, name: &str) -> String {
        self.prefix.iter().map(String::as_str).chain([name]).collect::<Vec<_>>().join(".")
    }

    fn packed(&self, shape: &Shape, name: &str) -> Result<Arc<QTensor>> {
        let Source::Gguf(map) = &self.source else { unreachable!("only GGUF parameters are packed") };
        let path = self.path(name);
        let t = map.get(&path).ok_or_else(|| candle_core::Error::CannotFindTensor { path: path.clone() })?;
        if t.shape() != shape {
            candle_core::bail!("shape mismatch for {path}, expected {shape:?}, got {:?}", t.shape());
        }
        Ok(t.clone())
    }

    /// A parameter as f32; `hint` only shapes random initialisation (see `model::random`).
    pub fn tensor_with_hint<S: Into<Shape>>(&self, shape: S, name: &str, hint: Init) -> Result<Tensor> {
        let shape = shape.into();
        match &self.source {
            Source::Checkpoint(vb) => {
                let vb = self.prefix.iter().fold(vb.clone(), |vb, p| vb.pp(p));
                finite(vb.get_with_hints(shape, name, hint)?, &self.path(name))
            }
            Source::Gguf(_) => finite(self.packed(&shape, name)?.dequantize(&self.device)?, &self.path(name)),
        }
    }

    pub fn tensor<S: Into<Shape>>(&self, shape: S, name: &str) -> Result<Tensor> {
        self.tensor_with_hint(shape, name, Init::Randn { mean: 0.0, stdev: 0.02 })
    }

    /// A linear layer's weight, kept packed when it is stored quantized.
    pub fn matrix(&self, out_dim: usize, in_dim: usize, name: &str) -> Result<Matrix> {
        match &self.source {
            Source::Checkpoint(_) => Ok(Matrix::Dense(self.tensor((out_dim, in_dim), name)?)),
            Source::Gguf(_) => {
                let q = self.packed(&Shape::from((out_dim, in_dim)), name)?;
                let packed = match q.dtype() {
                    // Float storage stays exact: f32 matmul, not requantized to q8_0.
                    GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => {
                        return Ok(Matrix::Dense(finite(q.dequantize(&self.device)?, &self.path(name))?))
                    }
                    GgmlDType::Q8_0 => Q8Matrix::from_q8_0_bytes(out_dim, in_dim, &q.data()?)
                        .map_err(|e| candle_core::Error::Msg(format!("tensor {}: {e}", self.path(name))))?,
                    _ => {
                        let weights = finite(q.dequantize(&Device::Cpu)?, &self.path(name))?.flatten_all()?.to_vec1::<f32>()?;
                        Q8Matrix::quantize(out_dim, in_dim, &weights)
                    }
                };
                Ok(Matrix::Quantized(Arc::new(packed)))
            }
        }
    }
}

/// `t`, unless it holds a NaN or an infinity (a damaged download): then an error naming the tensor, instead of
/// embeddings that are all NaN and rankings that look valid.
fn finite(t: Tensor, path: &str) -> Result<Tensor> {
    let values = t.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?;
    if let Some(i) = values.iter().position(|x| !x.is_finite()) {
        candle_core::bail!("tensor {path} holds a non-finite value ({} at element {i}): the model file is damaged", values[i]);
    }
    Ok(t)
}

/// A dense layer's parameters as loaded, before a backend takes them: `y = x·Wᵀ (+ b)` with `W` `[out, in]`.
#[derive(Debug, Clone)]
pub struct LinearParams {
    pub matrix: Matrix,
    pub bias: Option<Vec<f32>>,
    pub in_dim: usize,
    pub out_dim: usize,
}

impl LinearParams {
    pub fn load(p: &Params, in_dim: usize, out_dim: usize, bias: bool) -> Result<Self> {
        let bias = if bias { Some(p.tensor(out_dim, "bias")?.to_vec1()?) } else { None };
        Ok(Self { matrix: p.matrix(out_dim, in_dim, "weight")?, bias, in_dim, out_dim })
    }

    /// An f32 weight `[out, in]` without bias.
    pub fn dense(weight: Tensor) -> Result<Self> {
        let (out_dim, in_dim) = weight.dims2()?;
        Ok(Self { matrix: Matrix::Dense(weight), bias: None, in_dim, out_dim })
    }

    /// Layers over the same input stacked into one (their outputs side by side): one product instead of
    /// several, e.g. attention's query, key and value. Stays q8_0 when every part is; otherwise f32.
    pub fn stack(parts: Vec<LinearParams>) -> Result<Self> {
        let in_dim = parts[0].in_dim;
        if parts.iter().any(|p| p.in_dim != in_dim) {
            candle_core::bail!("stacked layers must share their input width");
        }
        let out_dim = parts.iter().map(|p| p.out_dim).sum();
        let bias = if parts.iter().all(|p| p.bias.is_some()) {
            Some(parts.iter().flat_map(|p| p.bias.clone().unwrap()).collect())
        } else if parts.iter().all(|p| p.bias.is_none()) {
            None
        } else {
            candle_core::bail!("stacked layers must all have a bias or all have none");
        };
        let quantized: Option<Vec<&Q8Matrix>> =
            parts.iter().map(|p| if let Matrix::Quantized(q) = &p.matrix { Some(q.as_ref()) } else { None }).collect();
        let matrix = match quantized {
            Some(q) => Matrix::Quantized(Arc::new(Q8Matrix::stack(&q))),
            None => Matrix::Dense(Tensor::cat(&parts.iter().map(|p| p.matrix.to_dense()).collect::<Result<Vec<_>>>()?, 0)?),
        };
        Ok(Self { matrix, bias, in_dim, out_dim })
    }
}

impl Matrix {
    /// The weights as f32 `[out, in]` (q8_0 dequantized exactly).
    pub fn to_dense(&self) -> Result<Tensor> {
        match self {
            Matrix::Dense(t) => Ok(t.clone()),
            Matrix::Quantized(q) => Tensor::from_vec(q.dequantize(), (q.out_dim(), q.in_dim()), &Device::Cpu),
        }
    }
}

/// A layer norm's parameters.
#[derive(Debug, Clone)]
pub struct NormParams {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub eps: f32,
}

impl NormParams {
    pub fn load(p: &Params, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: p.tensor_with_hint(dim, "weight", Init::Const(1.0))?.to_vec1()?,
            bias: p.tensor_with_hint(dim, "bias", Init::Const(0.0))?.to_vec1()?,
            eps: eps as f32,
        })
    }
}
