//! The vision tower: ViT (CLIP layout, `vision_model.*`) → post-LN [CLS] → `visual_projection`.

use super::backend::{query_rows, through_layers, AttentionShape, Backend};
use super::params::{LinearParams, NormParams, Params};
use crate::config::{Activation, VisionConfig};
use anyhow::Result;
use candle_core::Tensor;

struct Layer<B: Backend> {
    norm1: B::Norm,
    /// Query, key and value stacked: one product.
    qkv: B::Linear,
    out: B::Linear,
    norm2: B::Norm,
    fc1: B::Linear,
    fc2: B::Linear,
}

impl<B: Backend> Layer<B> {
    fn load(backend: &B, vb: &Params, c: &VisionConfig) -> Result<Self> {
        let (h, i, eps) = (c.hidden_size, c.intermediate_size, c.layer_norm_eps);
        let attn = vb.pp("self_attn");
        // Loaded in checkpoint order (random test models draw their weights in load order).
        let norm1 = backend.norm(NormParams::load(&vb.pp("layer_norm1"), h, eps)?)?;
        let qkv = ["q_proj", "k_proj", "v_proj"]
            .iter()
            .map(|name| LinearParams::load(&attn.pp(name), h, h, true))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            norm1,
            qkv: backend.linear(LinearParams::stack(qkv)?)?,
            out: backend.linear(LinearParams::load(&attn.pp("out_proj"), h, h, true)?)?,
            norm2: backend.norm(NormParams::load(&vb.pp("layer_norm2"), h, eps)?)?,
            fc1: backend.linear(LinearParams::load(&vb.pp("mlp.fc1"), h, i, true)?)?,
            fc2: backend.linear(LinearParams::load(&vb.pp("mlp.fc2"), i, h, true)?)?,
        })
    }

    /// One layer over `x` `[batch·seq, hidden]`; with `shape.queries` first, only each sequence's first row
    /// goes on from the attention: → `[batch, hidden]`.
    fn forward(&self, b: &B, x: B::Tensor, shape: AttentionShape, act: Activation) -> Result<B::Tensor> {
        let qkv = b.norm_linear_forward(&x, &self.norm1, &self.qkv, None, None)?;
        let x = query_rows(b, x, shape)?;
        let x = b.linear_forward(&b.attention(&qkv, shape, None)?, &self.out, None, Some(&x))?;
        b.feed_forward(&x, Some(&self.norm2), &self.fc1, act, &self.fc2, Some(&x))
    }
}

pub struct VisionTower<B: Backend> {
    config: VisionConfig,
    activation: Activation,
    /// The patch convolution (stride = kernel = patch) as a linear map over flattened patches.
    patch_embedding: B::Linear,
    /// Position embeddings, with the class embedding added to row 0 (the [CLS] token enters as a zero patch).
    position_embedding: B::Table,
    pre_norm: B::Norm,
    layers: Vec<Layer<B>>,
    post_norm: B::Norm,
    projection: B::Linear,
}

impl<B: Backend> VisionTower<B> {
    /// `vb` is rooted at the checkpoint's top level (it holds `vision_model.*` and `visual_projection`).
    pub fn load(backend: &B, vb: &Params, c: &VisionConfig, projection_dim: usize) -> Result<Self> {
        let vm = vb.pp("vision_model");
        let emb = vm.pp("embeddings");
        let (h, p, eps) = (c.hidden_size, c.patch_size, c.layer_norm_eps);
        let conv = emb.tensor((h, c.num_channels, p, p), "patch_embedding.weight")?;
        let layers = (0..c.num_hidden_layers)
            .map(|i| Layer::load(backend, &vm.pp(format!("encoder.layers.{i}")), c))
            .collect::<Result<Vec<_>>>()?;
        let class = emb.tensor(h, "class_embedding")?.reshape((1, h))?;
        let positions = emb.tensor((c.num_patches() + 1, h), "position_embedding.weight")?;
        let class_row = Tensor::cat(&[&class, &Tensor::zeros((c.num_patches(), h), class.dtype(), class.device())?], 0)?;
        Ok(Self {
            config: c.clone(),
            activation: c.activation()?,
            patch_embedding: backend.linear(LinearParams::dense(conv.reshape((h, c.num_channels * p * p))?)?)?,
            position_embedding: backend.table(&(class_row + positions)?)?,
            // Sic: the checkpoint spells it "pre_layrnorm".
            pre_norm: backend.norm(NormParams::load(&vm.pp("pre_layrnorm"), h, eps)?)?,
            layers,
            post_norm: backend.norm(NormParams::load(&vm.pp("post_layernorm"), h, eps)?)?,
            projection: backend.linear(LinearParams::load(&vb.pp("visual_projection"), h, projection_dim, false)?)?,
        })
    }

    /// Pixels `[batch, channels, size, size]` (row-major) → projected, *unnormalised* features.
    pub fn forward(&self, b: &B, pixels: &[f32], batch: usize) -> Result<B::Tensor> {
        let c = &self.config;
        let tokens = c.num_patches() + 1;
        let patches = patch_rows(pixels, batch, c.num_channels, c.image_size, c.patch_size);
        let x = b.upload(&patches, batch * tokens, c.num_channels * c.patch_size * c.patch_size)?;
        let x = b.add_rows(b.linear_forward(&x, &self.patch_embedding, None, None)?, &self.position_embedding, tokens)?;
        let x = b.layer_norm(&x, &self.pre_norm)?;
        let shape = AttentionShape::new(batch, tokens, c.num_attention_heads);
        let cls = through_layers(b, &self.layers, x, shape, |layer, x, shape| layer.forward(b, x, shape, self.activation))?;
        b.norm_linear_forward(&cls, &self.post_norm, &self.projection, None, None)
    }

    pub fn image_size(&self) -> usize {
        self.config.image_size
    }
}

/// Images `[batch, channels, size, size]` → one row per token `[batch, 1 + patches, channels·p·p]`, each patch
/// in the conv weight's `[channel][y][x]` order, row 0 of each image zero (where the [CLS] token goes).
fn patch_rows(pixels: &[f32], batch: usize, channels: usize, size: usize, p: usize) -> Vec<f32> {
    let grid = size / p;
    let width = channels * p * p;
    let mut rows = vec![0f32; batch * (grid * grid + 1) * width];
    for image in 0..batch {
        let src = &pixels[image * channels * size * size..][..channels * size * size];
        for gy in 0..grid {
            for gx in 0..grid {
                let row = &mut rows[(image * (grid * grid + 1) + 1 + gy * grid + gx) * width..][..width];
                for ch in 0..channels {
                    for y in 0..p {
                        let from = ch * size * size + (gy * p + y) * size + gx * p;
                        row[(ch * p + y) * p..][..p].copy_from_slice(&src[from..from + p]);
                    }
                }
            }
        }
    }
    rows
}
