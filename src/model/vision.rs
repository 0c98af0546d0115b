//! The vision tower: ViT (CLIP layout, `vision_model.*`) → post-LN [CLS] → `visual_projection`.

use super::params::Params;
use super::ops::{activation, attention, LayerNorm, Linear};
use crate::config::{Activation, VisionConfig};
use candle_core::{Result, Tensor};

struct Layer {
    norm1: LayerNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

impl Layer {
    fn load(vb: &Params, c: &VisionConfig) -> Result<Self> {
        let (h, i, eps) = (c.hidden_size, c.intermediate_size, c.layer_norm_eps);
        let attn = vb.pp("self_attn");
        Ok(Self {
            norm1: LayerNorm::load(&vb.pp("layer_norm1"), h, eps)?,
            q: Linear::load(&attn.pp("q_proj"), h, h, true)?,
            k: Linear::load(&attn.pp("k_proj"), h, h, true)?,
            v: Linear::load(&attn.pp("v_proj"), h, h, true)?,
            out: Linear::load(&attn.pp("out_proj"), h, h, true)?,
            norm2: LayerNorm::load(&vb.pp("layer_norm2"), h, eps)?,
            fc1: Linear::load(&vb.pp("mlp.fc1"), h, i, true)?,
            fc2: Linear::load(&vb.pp("mlp.fc2"), i, h, true)?,
        })
    }

    fn forward(&self, x: &Tensor, heads: usize, act: Activation) -> Result<Tensor> {
        let y = self.norm1.forward(x)?;
        let attn = attention(&self.q.forward(&y)?, &self.k.forward(&y)?, &self.v.forward(&y)?, heads, None)?;
        let x = (self.out.forward(&attn)? + x)?;
        let y = activation(&self.fc1.forward(&self.norm2.forward(&x)?)?, act)?;
        self.fc2.forward(&y)? + x
    }
}

pub struct VisionTower {
    config: VisionConfig,
    activation: Activation,
    class_embedding: Tensor,
    /// The patch convolution (stride = kernel = patch) as a linear map over flattened patches.
    patch_embedding: Linear,
    position_embedding: Tensor,
    pre_norm: LayerNorm,
    layers: Vec<Layer>,
    post_norm: LayerNorm,
    projection: Linear,
}

impl VisionTower {
    /// `vb` is rooted at the checkpoint's top level (it holds `vision_model.*` and `visual_projection`).
    pub fn load(vb: &Params, c: &VisionConfig, projection_dim: usize) -> Result<Self> {
        let vm = vb.pp("vision_model");
        let emb = vm.pp("embeddings");
        let (h, p) = (c.hidden_size, c.patch_size);
        let conv = emb.tensor((h, c.num_channels, p, p), "patch_embedding.weight")?;
        let patch_embedding = Linear::from_weight(conv.reshape((h, c.num_channels * p * p))?, None)?;
        let layers = (0..c.num_hidden_layers)
            .map(|i| Layer::load(&vm.pp(format!("encoder.layers.{i}")), c))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            config: c.clone(),
            activation: c.activation().map_err(candle_core::Error::wrap)?,
            class_embedding: emb.tensor(h, "class_embedding")?,
            patch_embedding,
            position_embedding: emb.tensor((c.num_patches() + 1, h), "position_embedding.weight")?,
            // Sic: the checkpoint spells it "pre_layrnorm".
            pre_norm: LayerNorm::load(&vm.pp("pre_layrnorm"), h, c.layer_norm_eps)?,
            layers,
            post_norm: LayerNorm::load(&vm.pp("post_layernorm"), h, c.layer_norm_eps)?,
            projection: Linear::load(&vb.pp("visual_projection"), h, projection_dim, false)?,
        })
    }

    /// Pixels `[batch, 3, size, size]` → projected, *unnormalised* features.
    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let c = &self.config;
        let (batch, channels, size, _) = pixels.dims4()?;
        let (p, grid) = (c.patch_size, size / c.patch_size);
        // [B, C, gy, p, gx, p] → [B, gy, gx, C, p, p]: each row one patch in the conv weight's order.
        let patches = pixels
            .reshape((batch, channels, grid, p, grid, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((batch, grid * grid, channels * p * p))?;
        let patches = self.patch_embedding.forward(&patches)?;
        let class = self.class_embedding.reshape((1, 1, c.hidden_size))?.repeat((batch, 1, 1))?;
        let x = Tensor::cat(&[&class, &patches], 1)?.broadcast_add(&self.position_embedding)?;
        let mut x = self.pre_norm.forward(&x)?;
        for layer in &self.layers {
            x = layer.forward(&x, c.num_attention_heads, self.activation)?;
        }
        let cls = self.post_norm.forward(&x.narrow(1, 0, 1)?.squeeze(1)?)?;
        self.projection.forward(&cls)
    }

    pub fn image_size(&self) -> usize {
        self.config.image_size
    }
}
