//! Chinese-CLIP, written once over the op set in [`ops`]: the text tower, the vision tower and
//! their projections into the shared, L2-normalised embedding space.

pub mod ops;
pub mod params;
pub mod q8;
pub mod random;
pub mod text;
pub mod vision;

use crate::config::ClipConfig;
use candle_core::{Device, Result, Tensor};
pub use params::Params;
pub use text::TextTower;
pub use vision::VisionTower;

/// Which encoders to load: the page needs only the one a query uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Towers {
    Text,
    Vision,
    Both,
}

impl std::str::FromStr for Towers {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "text" => Ok(Self::Text),
            "vision" => Ok(Self::Vision),
            "both" => Ok(Self::Both),
            other => Err(format!("towers are \"text\", \"vision\" or \"both\", not {other:?}")),
        }
    }
}

impl Towers {
    pub fn name(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Vision => "vision",
            Self::Both => "both",
        }
    }

    pub fn text(self) -> bool {
        matches!(self, Self::Text | Self::Both)
    }
    pub fn vision(self) -> bool {
        matches!(self, Self::Vision | Self::Both)
    }
}

pub struct ChineseClip {
    pub config: ClipConfig,
    text: Option<TextTower>,
    vision: Option<VisionTower>,
    device: Device,
}

impl ChineseClip {
    /// Builds the requested towers from a checkpoint with the HF tensor names.
    pub fn load(vb: &Params, config: &ClipConfig, towers: Towers) -> Result<Self> {
        let dim = config.projection_dim;
        let text = towers.text().then(|| TextTower::load(vb, &config.text_config, dim)).transpose()?;
        let vision = towers.vision().then(|| VisionTower::load(vb, &config.vision_config, dim)).transpose()?;
        Ok(Self { config: config.clone(), text, vision, device: vb.device().clone() })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn has_text(&self) -> bool {
        self.text.is_some()
    }

    pub fn has_vision(&self) -> bool {
        self.vision.is_some()
    }

    fn text_tower(&self) -> Result<&TextTower> {
        self.text.as_ref().ok_or_else(|| candle_core::Error::Msg("this model was loaded without its text tower".into()))
    }

    fn vision_tower(&self) -> Result<&VisionTower> {
        self.vision
            .as_ref()
            .ok_or_else(|| candle_core::Error::Msg("this model was loaded without its vision tower".into()))
    }

    /// Token ids and mask `[batch, seq]` → L2-normalised embeddings `[batch, projection_dim]`.
    pub fn embed_tokens(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        ops::l2_normalize(&self.text_tower()?.forward(ids, mask)?)
    }

    /// Pixels `[batch, 3, size, size]` → L2-normalised embeddings `[batch, projection_dim]`.
    pub fn embed_pixels(&self, pixels: &Tensor) -> Result<Tensor> {
        ops::l2_normalize(&self.vision_tower()?.forward(pixels)?)
    }
}
