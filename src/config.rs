//! The model's `config.json` (HF `ChineseCLIPConfig`) and `preprocessor_config.json`.
//!
//! The released config is sparse: most text and vision fields are absent and HF fills them from the
//! `ChineseCLIPTextConfig` / `ChineseCLIPVisionConfig` defaults. The `default_*` functions below are
//! those defaults, field for field (transformers 4.x, `configuration_chinese_clip.py`).

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Tokens per text: Chinese-CLIP's context length (not stored in `config.json`).
pub const CONTEXT_LENGTH: usize = 52;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipConfig {
    #[serde(default = "default_projection_dim")]
    pub projection_dim: usize,
    #[serde(default = "default_logit_scale")]
    pub logit_scale_init_value: f64,
    #[serde(default)]
    pub text_config: TextConfig,
    #[serde(default)]
    pub vision_config: VisionConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextConfig {
    #[serde(default = "default_vocab_size")]
    pub vocab_size: usize,
    #[serde(default = "default_hidden_size")]
    pub hidden_size: usize,
    #[serde(default = "default_num_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "default_num_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "default_intermediate_size")]
    pub intermediate_size: usize,
    #[serde(default = "default_text_act")]
    pub hidden_act: String,
    #[serde(default = "default_max_positions")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab_size")]
    pub type_vocab_size: usize,
    #[serde(default = "default_text_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub pad_token_id: usize,
    #[serde(default = "default_position_embedding_type")]
    pub position_embedding_type: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VisionConfig {
    #[serde(default = "default_hidden_size")]
    pub hidden_size: usize,
    #[serde(default = "default_intermediate_size")]
    pub intermediate_size: usize,
    #[serde(default = "default_num_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "default_num_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "default_num_channels")]
    pub num_channels: usize,
    #[serde(default = "default_image_size")]
    pub image_size: usize,
    #[serde(default = "default_patch_size")]
    pub patch_size: usize,
    #[serde(default = "default_vision_act")]
    pub hidden_act: String,
    #[serde(default = "default_vision_eps")]
    pub layer_norm_eps: f64,
}

fn default_projection_dim() -> usize {
    512
}
fn default_logit_scale() -> f64 {
    2.6592
}
fn default_vocab_size() -> usize {
    30522
}
fn default_hidden_size() -> usize {
    768
}
fn default_num_layers() -> usize {
    12
}
fn default_num_heads() -> usize {
    12
}
fn default_intermediate_size() -> usize {
    3072
}
fn default_text_act() -> String {
    "gelu".into()
}
fn default_vision_act() -> String {
    "quick_gelu".into()
}
fn default_max_positions() -> usize {
    512
}
fn default_type_vocab_size() -> usize {
    2
}
fn default_text_eps() -> f64 {
    1e-12
}
fn default_vision_eps() -> f64 {
    1e-5
}
fn default_position_embedding_type() -> String {
    "absolute".into()
}
fn default_num_channels() -> usize {
    3
}
fn default_image_size() -> usize {
    224
}
fn default_patch_size() -> usize {
    32
}

impl Default for TextConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("all fields have defaults")
    }
}

impl Default for VisionConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("all fields have defaults")
    }
}

/// Activation functions the released configs use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// Exact (erf) GELU, BERT's `gelu`.
    Gelu,
    /// `x * sigmoid(1.702 x)`, CLIP's `quick_gelu`.
    QuickGelu,
}

impl Activation {
    fn parse(name: &str, field: &str) -> Result<Self> {
        match name {
            "gelu" => Ok(Self::Gelu),
            "quick_gelu" => Ok(Self::QuickGelu),
            other => bail!("{field}: unsupported activation {other:?} (expected \"gelu\" or \"quick_gelu\")"),
        }
    }
}

impl TextConfig {
    pub fn activation(&self) -> Result<Activation> {
        Activation::parse(&self.hidden_act, "text_config.hidden_act")
    }
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

impl VisionConfig {
    pub fn activation(&self) -> Result<Activation> {
        Activation::parse(&self.hidden_act, "vision_config.hidden_act")
    }
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
    pub fn num_patches(&self) -> usize {
        (self.image_size / self.patch_size).pow(2)
    }
}

impl ClipConfig {
    /// Reads and validates a `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::from_json(&text).with_context(|| format!("in {}", path.display()))
    }

    pub fn from_json(json: &str) -> Result<Self> {
        let config: Self = serde_json::from_str(json).context("config.json is not a valid ChineseCLIPConfig")?;
        config.validate()?;
        Ok(config)
    }

    /// Rejects shapes the model cannot be built with, naming the field.
    pub fn validate(&self) -> Result<()> {
        let t = &self.text_config;
        let v = &self.vision_config;
        let positive = [
            ("projection_dim", self.projection_dim),
            ("text_config.vocab_size", t.vocab_size),
            ("text_config.hidden_size", t.hidden_size),
            ("text_config.num_hidden_layers", t.num_hidden_layers),
            ("text_config.num_attention_heads", t.num_attention_heads),
            ("text_config.intermediate_size", t.intermediate_size),
            ("text_config.max_position_embeddings", t.max_position_embeddings),
            ("text_config.type_vocab_size", t.type_vocab_size),
            ("vision_config.hidden_size", v.hidden_size),
            ("vision_config.num_hidden_layers", v.num_hidden_layers),
            ("vision_config.num_attention_heads", v.num_attention_heads),
            ("vision_config.intermediate_size", v.intermediate_size),
            ("vision_config.image_size", v.image_size),
            ("vision_config.patch_size", v.patch_size),
        ];
        for (field, value) in positive {
            if value == 0 {
                bail!("{field} must be positive, got 0");
            }
        }
        if t.hidden_size % t.num_attention_heads != 0 {
            bail!(
                "text_config.hidden_size ({}) is not a multiple of text_config.num_attention_heads ({})",
                t.hidden_size,
                t.num_attention_heads
            );
        }
        if v.hidden_size % v.num_attention_heads != 0 {
            bail!(
                "vision_config.hidden_size ({}) is not a multiple of vision_config.num_attention_heads ({})",
                v.hidden_size,
                v.num_attention_heads
            );
        }
        if v.image_size % v.patch_size != 0 {
            bail!(
                "vision_config.image_size ({}) is not a multiple of vision_config.patch_size ({})",
                v.image_size,
                v.patch_size
            );
        }
        if v.num_channels != 3 {
            bail!("vision_config.num_channels must be 3 (RGB), got {}", v.num_channels);
        }
        if t.position_embedding_type != "absolute" {
            bail!(
                "text_config.position_embedding_type {:?} is not supported (only \"absolute\")",
                t.position_embedding_type
            );
        }
        if t.pad_token_id >= t.vocab_size {
            bail!("text_config.pad_token_id ({}) is outside the vocabulary ({})", t.pad_token_id, t.vocab_size);
        }
        if t.max_position_embeddings < CONTEXT_LENGTH {
            bail!(
                "text_config.max_position_embeddings ({}) is shorter than the {CONTEXT_LENGTH}-token context",
                t.max_position_embeddings
            );
        }
        t.activation()?;
        v.activation()?;
        Ok(())
    }
}

/// Whose input preparation a model was trained with: the two differ on a few inputs, and a model keeps its
/// own everywhere (the GGUF records it, so the page prepares inputs as the CLI does).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Recipe {
    /// `transformers`' `ChineseCLIPProcessor`: RGB first (alpha over white), then the bicubic resize; the
    /// tokenizer keeps `[CLS]`-like markers in a text as special tokens; words over 100 characters are `[UNK]`.
    #[default]
    Transformers,
    /// The official `cn_clip` code (`image_transform`, `tokenize`): PIL resizes in the image's own mode before
    /// converting to RGB (palette images by nearest neighbour, alpha premultiplied then dropped); a text's
    /// `[CLS]` is plain text; words up to 200 characters.
    CnClip,
}

impl Recipe {
    pub fn name(self) -> &'static str {
        match self {
            Self::Transformers => "transformers",
            Self::CnClip => "cn_clip",
        }
    }
}

/// The image processor settings (`preprocessor_config.json`); absent → the released model's values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreprocessConfig {
    pub image_size: usize,
    pub image_mean: [f32; 3],
    pub image_std: [f32; 3],
    /// Absent in GGUFs written before it existed: those are all `transformers`.
    #[serde(default)]
    pub recipe: Recipe,
}

impl PreprocessConfig {
    pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
    pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

    pub fn for_vision(vision: &VisionConfig) -> Self {
        Self { image_size: vision.image_size, image_mean: Self::CLIP_MEAN, image_std: Self::CLIP_STD, recipe: Recipe::Transformers }
    }

    /// Reads the HF `preprocessor_config.json`, insisting on the settings tuwen implements
    /// (resize to a square without cropping, bicubic, rescale by 1/255, normalise).
    pub fn from_hf_json(json: &str, vision: &VisionConfig) -> Result<Self> {
        #[derive(Deserialize)]
        struct Size {
            height: usize,
            width: usize,
        }
        #[derive(Deserialize)]
        struct Hf {
            size: Option<Size>,
            do_center_crop: Option<bool>,
            resample: Option<u32>,
            image_mean: Option<[f32; 3]>,
            image_std: Option<[f32; 3]>,
        }
        let hf: Hf = serde_json::from_str(json).context("not a valid image processor config")?;
        let mut config = Self::for_vision(vision);
        if let Some(size) = hf.size {
            if size.height != size.width {
                bail!("size: only square inputs are supported, got {}×{}", size.width, size.height);
            }
            config.image_size = size.height;
        }
        if config.image_size != vision.image_size {
            bail!(
                "size ({}) differs from vision_config.image_size ({})",
                config.image_size,
                vision.image_size
            );
        }
        if hf.do_center_crop == Some(true) {
            bail!("do_center_crop: true is not supported (Chinese-CLIP resizes without cropping)");
        }
        if let Some(r) = hf.resample {
            if r != 3 {
                bail!("resample: only 3 (bicubic) is supported, got {r}");
            }
        }
        if let Some(m) = hf.image_mean {
            config.image_mean = m;
        }
        if let Some(s) = hf.image_std {
            if s.iter().any(|v| *v <= 0.0) {
                bail!("image_std must be positive, got {s:?}");
            }
            config.image_std = s;
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_released_config_gets_hf_defaults() {
        let json = r#"{"projection_dim":512,"text_config":{"vocab_size":21128},"vision_config":{"patch_size":16}}"#;
        let c = ClipConfig::from_json(json).unwrap();
        assert_eq!(c.text_config.hidden_size, 768);
        assert_eq!(c.text_config.layer_norm_eps, 1e-12);
        assert_eq!(c.text_config.activation().unwrap(), Activation::Gelu);
        assert_eq!(c.vision_config.activation().unwrap(), Activation::QuickGelu);
        assert_eq!(c.vision_config.layer_norm_eps, 1e-5);
        assert_eq!(c.vision_config.num_patches(), 196);
    }

    #[test]
    fn wrong_shapes_name_the_field() {
        let json = r#"{"text_config":{"hidden_size":100,"num_attention_heads":12}}"#;
        let err = format!("{:#}", ClipConfig::from_json(json).unwrap_err());
        assert!(err.contains("text_config.hidden_size"), "{err}");
        let json = r#"{"vision_config":{"image_size":224,"patch_size":15}}"#;
        let err = format!("{:#}", ClipConfig::from_json(json).unwrap_err());
        assert!(err.contains("patch_size"), "{err}");
        let json = r#"{"vision_config":{"hidden_act":"relu"}}"#;
        let err = format!("{:#}", ClipConfig::from_json(json).unwrap_err());
        assert!(err.contains("vision_config.hidden_act"), "{err}");
    }
}

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
