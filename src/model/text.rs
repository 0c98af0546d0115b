//! The text tower: RoBERTa-wwm (BERT layout, `text_model.*`) → [CLS] → `text_projection`.

use super::params::Params;
use super::ops::{activation, attention, mask_bias, LayerNorm, Linear};
use crate::config::{Activation, TextConfig};
use candle_core::{DType, Device, Result, Tensor};

struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attention_output: Linear,
    attention_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
}

impl Layer {
    fn load(vb: &Params, c: &TextConfig) -> Result<Self> {
        let (h, i, eps) = (c.hidden_size, c.intermediate_size, c.layer_norm_eps);
        let attn = vb.pp("attention");
        Ok(Self {
            query: Linear::load(&attn.pp("self.query"), h, h, true)?,
            key: Linear::load(&attn.pp("self.key"), h, h, true)?,
            value: Linear::load(&attn.pp("self.value"), h, h, true)?,
            attention_output: Linear::load(&attn.pp("output.dense"), h, h, true)?,
            attention_norm: LayerNorm::load(&attn.pp("output.LayerNorm"), h, eps)?,
            intermediate: Linear::load(&vb.pp("intermediate.dense"), h, i, true)?,
            output: Linear::load(&vb.pp("output.dense"), i, h, true)?,
            output_norm: LayerNorm::load(&vb.pp("output.LayerNorm"), h, eps)?,
        })
    }

    fn forward(&self, x: &Tensor, heads: usize, bias: &Tensor, act: Activation) -> Result<Tensor> {
        let (q, k, v) = (self.query.forward(x)?, self.key.forward(x)?, self.value.forward(x)?);
        let attn = attention(&q, &k, &v, heads, Some(bias))?;
        let x = self.attention_norm.forward(&(self.attention_output.forward(&attn)? + x)?)?;
        let inner = activation(&self.intermediate.forward(&x)?, act)?;
        self.output_norm.forward(&(self.output.forward(&inner)? + x)?)
    }
}

pub struct TextTower {
    config: TextConfig,
    activation: Activation,
    word_embeddings: Tensor,
    position_embeddings: Tensor,
    token_type_embeddings: Tensor,
    embedding_norm: LayerNorm,
    layers: Vec<Layer>,
    projection: Linear,
}

impl TextTower {
    /// `vb` is rooted at the checkpoint's top level (it holds `text_model.*` and `text_projection`).
    pub fn load(vb: &Params, c: &TextConfig, projection_dim: usize) -> Result<Self> {
        let tm = vb.pp("text_model");
        let emb = tm.pp("embeddings");
        let h = c.hidden_size;
        let layers = (0..c.num_hidden_layers)
            .map(|i| Layer::load(&tm.pp(format!("encoder.layer.{i}")), c))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            config: c.clone(),
            activation: c.activation().map_err(candle_core::Error::wrap)?,
            word_embeddings: emb.tensor((c.vocab_size, h), "word_embeddings.weight")?,
            position_embeddings: emb.tensor((c.max_position_embeddings, h), "position_embeddings.weight")?,
            token_type_embeddings: emb.tensor((c.type_vocab_size, h), "token_type_embeddings.weight")?,
            embedding_norm: LayerNorm::load(&emb.pp("LayerNorm"), h, c.layer_norm_eps)?,
            layers,
            projection: Linear::load(&vb.pp("text_projection"), h, projection_dim, false)?,
        })
    }

    /// Token ids `[batch, seq]` (u32) and their 0/1 attention mask → projected, *unnormalised* features.
    pub fn forward(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (batch, seq) = ids.dims2()?;
        let words = self.word_embeddings.embedding(&ids.flatten_all()?)?.reshape((batch, seq, self.config.hidden_size))?;
        let positions = self.position_embeddings.narrow(0, 0, seq)?;
        // Chinese-CLIP feeds token type 0 everywhere.
        let token_type = self.token_type_embeddings.get(0)?;
        let x = words.broadcast_add(&positions)?.broadcast_add(&token_type)?;
        let mut x = self.embedding_norm.forward(&x)?;
        let bias = mask_bias(mask)?;
        for layer in &self.layers {
            x = layer.forward(&x, self.config.num_attention_heads, &bias, self.activation)?;
        }
        let cls = x.narrow(1, 0, 1)?.squeeze(1)?;
        self.projection.forward(&cls)
    }

    pub fn max_positions(&self) -> usize {
        self.config.max_position_embeddings
    }
}

/// Pads a batch of token-id rows to the longest row: ids `[batch, seq]` and mask `[batch, seq]`.
pub fn batch_tensors(rows: &[Vec<u32>], pad_id: u32, device: &Device) -> Result<(Tensor, Tensor)> {
    let seq = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(rows.len() * seq);
    let mut mask = Vec::with_capacity(rows.len() * seq);
    for row in rows {
        ids.extend(row.iter().copied().chain(std::iter::repeat(pad_id)).take(seq));
        mask.extend((0..seq).map(|i| if i < row.len() { 1u8 } else { 0 }));
    }
    let ids = Tensor::from_vec(ids, (rows.len(), seq), device)?;
    let mask = Tensor::from_vec(mask, (rows.len(), seq), device)?.to_dtype(DType::F32)?;
    Ok((ids, mask))
}
