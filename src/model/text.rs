//! The text tower: RoBERTa-wwm (BERT layout, `text_model.*`) → [CLS] → `text_projection`.

use super::backend::{query_rows, through_layers, AttentionShape, Backend};
use super::params::{LinearParams, NormParams, Params};
use crate::config::{Activation, TextConfig};
use anyhow::Result;

struct Layer<B: Backend> {
    /// Query, key and value stacked: one product.
    qkv: B::Linear,
    attention_output: B::Linear,
    attention_norm: B::Norm,
    intermediate: B::Linear,
    output: B::Linear,
    output_norm: B::Norm,
}

impl<B: Backend> Layer<B> {
    fn load(backend: &B, vb: &Params, c: &TextConfig) -> Result<Self> {
        let (h, i, eps) = (c.hidden_size, c.intermediate_size, c.layer_norm_eps);
        let attn = vb.pp("attention");
        let qkv = ["self.query", "self.key", "self.value"]
            .iter()
            .map(|name| LinearParams::load(&attn.pp(name), h, h, true))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            qkv: backend.linear(LinearParams::stack(qkv)?)?,
            attention_output: backend.linear(LinearParams::load(&attn.pp("output.dense"), h, h, true)?)?,
            attention_norm: backend.norm(NormParams::load(&attn.pp("output.LayerNorm"), h, eps)?)?,
            intermediate: backend.linear(LinearParams::load(&vb.pp("intermediate.dense"), h, i, true)?)?,
            output: backend.linear(LinearParams::load(&vb.pp("output.dense"), i, h, true)?)?,
            output_norm: backend.norm(NormParams::load(&vb.pp("output.LayerNorm"), h, eps)?)?,
        })
    }

    /// One layer over `x` `[batch·seq, hidden]`; with `shape.queries` first, only each sequence's first row
    /// goes on from the attention: → `[batch, hidden]`.
    fn forward(&self, b: &B, x: B::Tensor, shape: AttentionShape, mask: &B::Tensor, act: Activation) -> Result<B::Tensor> {
        let attn = b.attention(&b.linear_forward(&x, &self.qkv, None, None)?, shape, Some(mask))?;
        let x = query_rows(b, x, shape)?;
        let x = b.layer_norm(&b.linear_forward(&attn, &self.attention_output, None, Some(&x))?, &self.attention_norm)?;
        b.layer_norm(&b.feed_forward(&x, None, &self.intermediate, act, &self.output, Some(&x))?, &self.output_norm)
    }
}

pub struct TextTower<B: Backend> {
    config: TextConfig,
    activation: Activation,
    word_embeddings: B::Table,
    /// Position embeddings plus the token-type-0 embedding (Chinese-CLIP feeds type 0 everywhere).
    position_embeddings: B::Table,
    embedding_norm: B::Norm,
    layers: Vec<Layer<B>>,
    projection: B::Linear,
}

impl<B: Backend> TextTower<B> {
    /// `vb` is rooted at the checkpoint's top level (it holds `text_model.*` and `text_projection`).
    pub fn load(backend: &B, vb: &Params, c: &TextConfig, projection_dim: usize) -> Result<Self> {
        let tm = vb.pp("text_model");
        let emb = tm.pp("embeddings");
        let h = c.hidden_size;
        let layers = (0..c.num_hidden_layers)
            .map(|i| Layer::load(backend, &tm.pp(format!("encoder.layer.{i}")), c))
            .collect::<Result<Vec<_>>>()?;
        // Loaded in checkpoint order (random test models draw their weights in load order).
        let words = emb.tensor((c.vocab_size, h), "word_embeddings.weight")?;
        let positions = emb.tensor((c.max_position_embeddings, h), "position_embeddings.weight")?;
        let token_type = emb.tensor((c.type_vocab_size, h), "token_type_embeddings.weight")?.get(0)?;
        Ok(Self {
            config: c.clone(),
            activation: c.activation()?,
            word_embeddings: backend.table(&words)?,
            position_embeddings: backend.table(&positions.broadcast_add(&token_type)?)?,
            embedding_norm: backend.norm(NormParams::load(&emb.pp("LayerNorm"), h, c.layer_norm_eps)?)?,
            layers,
            projection: backend.linear(LinearParams::load(&vb.pp("text_projection"), h, projection_dim, false)?)?,
        })
    }

    /// Token-id rows padded to one length `seq` (`ids` `[batch·seq]`, `mask` 1 for tokens, 0 for padding)
    /// → projected, *unnormalised* features `[batch, projection_dim]`.
    pub fn forward(&self, b: &B, ids: &[u32], mask: &[f32], seq: usize) -> Result<B::Tensor> {
        let batch = ids.len() / seq;
        if seq > self.config.max_position_embeddings {
            anyhow::bail!("{seq} tokens is more than the model's {} positions", self.config.max_position_embeddings);
        }
        let x = b.add_rows(b.gather(&self.word_embeddings, ids)?, &self.position_embeddings, seq)?;
        let x = b.layer_norm(&x, &self.embedding_norm)?;
        // Additive attention bias, as HF BERT builds it from the mask.
        let bias: Vec<f32> = mask.iter().map(|&m| (1.0 - m) * f32::MIN).collect();
        let bias = b.upload(&bias, batch, seq)?;
        let shape = AttentionShape::new(batch, seq, self.config.num_attention_heads);
        let cls = through_layers(b, &self.layers, x, shape, |layer, x, shape| layer.forward(b, x, shape, &bias, self.activation))?;
        b.linear_forward(&cls, &self.projection, None, None)
    }

    pub fn max_positions(&self) -> usize {
        self.config.max_position_embeddings
    }
}

/// Pads a batch of token-id rows to the longest row: ids and 0/1 mask, both `[batch·seq]`, and `seq`.
pub fn pad_batch(rows: &[Vec<u32>], pad_id: u32) -> (Vec<u32>, Vec<f32>, usize) {
    let seq = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(rows.len() * seq);
    let mut mask = Vec::with_capacity(rows.len() * seq);
    for row in rows {
        ids.extend(row.iter().copied().chain(std::iter::repeat(pad_id)).take(seq));
        mask.extend((0..seq).map(|i| if i < row.len() { 1f32 } else { 0. }));
    }
    (ids, mask, seq)
}
