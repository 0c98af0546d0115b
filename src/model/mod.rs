//! Chinese-CLIP, written once over the op set in [`backend`]: the text tower, the vision tower and
//! their projections into the shared, L2-normalised embedding space, on the CPU or the GPU.

pub mod backend;
pub mod math;
pub mod params;
pub mod q8;
pub mod random;
pub mod text;
pub mod vision;

use crate::config::ClipConfig;
use anyhow::{anyhow, Result};
use backend::Backend;
pub use crate::config::Towers;
pub use backend::{BackendChoice, Cpu, Gpu};
pub use params::Params;
pub use text::TextTower;
pub use vision::VisionTower;

/// The towers on one backend.
pub struct ChineseClip<B: Backend> {
    pub config: ClipConfig,
    backend: B,
    text: Option<TextTower<B>>,
    vision: Option<VisionTower<B>>,
}

impl<B: Backend> ChineseClip<B> {
    /// Builds the requested towers from a checkpoint with the HF tensor names, their weights handed to `backend`.
    pub fn load(backend: B, vb: &Params, config: &ClipConfig, towers: Towers) -> Result<Self> {
        let dim = config.projection_dim;
        let text = towers.text().then(|| TextTower::load(&backend, vb, &config.text_config, dim)).transpose()?;
        let vision = towers.vision().then(|| VisionTower::load(&backend, vb, &config.vision_config, dim)).transpose()?;
        Ok(Self { config: config.clone(), backend, text, vision })
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Token ids and 0/1 mask, both `[batch·seq]` → L2-normalised embeddings, one per row.
    pub async fn embed_tokens(&self, ids: &[u32], mask: &[f32], seq: usize) -> Result<Vec<Vec<f32>>> {
        let tower = self.text.as_ref().ok_or_else(|| anyhow!("this model was loaded without its text tower"))?;
        let b = &self.backend;
        let embedded = b.l2_normalize(&tower.forward(b, ids, mask, seq)?)?;
        self.rows(b.read(&embedded).await?)
    }

    /// Pixels `[batch, 3, size, size]` → L2-normalised embeddings, one per image.
    pub async fn embed_pixels(&self, pixels: &[f32], batch: usize) -> Result<Vec<Vec<f32>>> {
        let tower = self.vision.as_ref().ok_or_else(|| anyhow!("this model was loaded without its vision tower"))?;
        let b = &self.backend;
        let embedded = b.l2_normalize(&tower.forward(b, pixels, batch)?)?;
        self.rows(b.read(&embedded).await?)
    }

    fn rows(&self, flat: Vec<f32>) -> Result<Vec<Vec<f32>>> {
        Ok(flat.chunks(self.config.projection_dim).map(<[f32]>::to_vec).collect())
    }
}

/// The towers on whichever backend runs them.
pub enum Engine {
    Cpu(ChineseClip<Cpu>),
    Gpu(ChineseClip<Gpu>),
}

impl Engine {
    /// The towers on `gpu` when given, else on the CPU.
    pub fn load(gpu: Option<&Gpu>, vb: &Params, config: &ClipConfig, towers: Towers) -> Result<Self> {
        Ok(match gpu {
            Some(gpu) => Self::Gpu(ChineseClip::load(gpu.clone(), vb, config, towers)?),
            None => Self::Cpu(ChineseClip::load(Cpu, vb, config, towers)?),
        })
    }

    pub fn gpu(&self) -> Option<&Gpu> {
        match self {
            Self::Gpu(m) => Some(m.backend()),
            Self::Cpu(_) => None,
        }
    }

    pub async fn embed_tokens(&self, ids: &[u32], mask: &[f32], seq: usize) -> Result<Vec<Vec<f32>>> {
        match self {
            // The CPU answers at once (its future is ready when first polled).
            Self::Cpu(m) => crate::model::backend::cpu::team::on_pool(|| crate::util::resolve_now(m.embed_tokens(ids, mask, seq)))?,
            Self::Gpu(m) => m.embed_tokens(ids, mask, seq).await,
        }
    }

    pub async fn embed_pixels(&self, pixels: &[f32], batch: usize) -> Result<Vec<Vec<f32>>> {
        match self {
            Self::Cpu(m) => crate::model::backend::cpu::team::on_pool(|| crate::util::resolve_now(m.embed_pixels(pixels, batch)))?,
            Self::Gpu(m) => m.embed_pixels(pixels, batch).await,
        }
    }
}
