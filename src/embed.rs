//! Texts and images → L2-normalised embeddings: tokenizer + preprocessing + model, batched.

use crate::config::{ClipConfig, PreprocessConfig};
use crate::model::{text::batch_tensors, ChineseClip, Towers};
use crate::preprocess::{preprocess, Pixels};
use crate::tokenize::TextTokenizer;
use crate::weights::ModelDir;
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use candle_nn::VarBuilder;
use std::path::Path;

/// Texts per forward pass (padded to the longest text of the batch).
pub const TEXT_BATCH: usize = 32;
/// Images per forward pass.
pub const IMAGE_BATCH: usize = 8;

/// What is known about the loaded model, for logs, the page and bundles.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelInfo {
    /// Where the model came from (a directory, or "bytes").
    pub source: String,
    /// `Some(how)` when the weights are random: every output must say so.
    pub random_weights: Option<String>,
    pub projection_dim: usize,
    /// How the weights are stored: f32 for HF checkpoints, else the GGUF's dtype (q8_0, …).
    pub dtype: String,
}

pub struct Encoder {
    model: ChineseClip,
    tokenizer: Option<TextTokenizer>,
    preprocess: PreprocessConfig,
    pub info: ModelInfo,
    /// Where the weights came from, for the fingerprint (hashed on first use: it reads the whole file).
    weights_file: Option<std::path::PathBuf>,
    fingerprint: std::sync::OnceLock<String>,
}

impl Encoder {
    /// Loads the requested towers from an HF model directory.
    pub fn from_dir(dir: &Path, towers: Towers) -> Result<Self> {
        let model_dir = ModelDir::open(dir)?;
        let device = Device::Cpu;
        let vb = model_dir.var_builder(&device)?;
        let model = ChineseClip::load(&crate::model::Params::from_var_builder(vb), &model_dir.config, towers)
            .with_context(|| format!("loading weights from {}", model_dir.weights.display()))?;
        let tokenizer = if towers.text() { Some(model_dir.tokenizer()?) } else { None };
        let info = ModelInfo {
            source: dir.display().to_string(),
            random_weights: model_dir.random_weights(),
            projection_dim: model_dir.config.projection_dim,
            dtype: "f32".into(),
        };
        Ok(Self {
            model,
            tokenizer,
            preprocess: model_dir.preprocess,
            info,
            weights_file: Some(model_dir.weights.clone()),
            fingerprint: Default::default(),
        })
    }

    /// Loads a model from an HF directory or a tuwen GGUF file (`tuwen quantize`).
    pub fn load(path: &Path, towers: Towers) -> Result<Self> {
        if path.is_file() {
            let mut file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
            let mut magic = [0u8; 4];
            use std::io::Read;
            let _ = file.read(&mut magic);
            if crate::quantize::is_gguf(&magic) {
                let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
                let mut encoder = Self::from_gguf_bytes(&bytes, towers).with_context(|| format!("{}", path.display()))?;
                encoder.info.source = path.display().to_string();
                return Ok(encoder);
            }
            bail!("{}: not a model (expected an HF model directory or a GGUF file from `tuwen quantize`)", path.display());
        }
        Self::from_dir(path, towers)
    }

    /// Loads the requested towers from tuwen GGUF bytes.
    pub fn from_gguf_bytes(bytes: &[u8], towers: Towers) -> Result<Self> {
        let device = Device::Cpu;
        let gguf = crate::quantize::GgufModel::read(&mut std::io::Cursor::new(bytes), &device)?;
        gguf.check_towers(towers)?;
        let tokenizer = if towers.text() {
            Some(TextTokenizer::from_vocab_txt(&gguf.vocab_txt).context("the vocabulary in the GGUF")?)
        } else {
            None
        };
        let params = crate::model::Params::from_gguf_tensors(gguf.tensors, &device);
        let model = ChineseClip::load(&params, &gguf.config, towers).context("loading weights from the GGUF")?;
        let info = ModelInfo {
            source: "bytes".into(),
            random_weights: gguf.random_weights,
            projection_dim: gguf.config.projection_dim,
            dtype: gguf.dtype,
        };
        Ok(Self {
            model,
            tokenizer,
            preprocess: gguf.preprocess,
            info,
            weights_file: None,
            fingerprint: std::sync::OnceLock::from(gguf.fingerprint),
        })
    }

    /// Loads from in-memory files (the browser): `config.json`, `vocab.txt` and `model.safetensors`.
    pub fn from_bytes(config_json: &[u8], vocab_txt: &[u8], safetensors: Vec<u8>, towers: Towers) -> Result<Self> {
        let config = ClipConfig::from_json(std::str::from_utf8(config_json).context("config.json is not UTF-8")?)
            .context("in config.json")?;
        let tokenizer = TextTokenizer::from_vocab_txt(std::str::from_utf8(vocab_txt).context("vocab.txt is not UTF-8")?)
            .context("in vocab.txt")?;
        let random_weights = safetensors::SafeTensors::read_metadata(&safetensors)
            .ok()
            .and_then(|(_, m)| m.metadata().as_ref()?.get(crate::model::random::RANDOM_WEIGHTS_KEY).cloned());
        let fingerprint = std::sync::OnceLock::from(crate::weights::fingerprint_bytes(&safetensors));
        let device = Device::Cpu;
        let vb = VarBuilder::from_buffered_safetensors(safetensors, candle_core::DType::F32, &device)
            .context("model.safetensors: not a readable checkpoint")?;
        let model = ChineseClip::load(&crate::model::Params::from_var_builder(vb), &config, towers).context("loading weights from model.safetensors")?;
        let info = ModelInfo {
            source: "bytes".into(),
            random_weights,
            projection_dim: config.projection_dim,
            dtype: "f32".into(),
        };
        let preprocess = PreprocessConfig::for_vision(&config.vision_config);
        Ok(Self { model, tokenizer: towers.text().then_some(tokenizer), preprocess, info, weights_file: None, fingerprint })
    }

    /// Identifies the model for bundles: its weights' fingerprint and the dtype it runs in.
    pub fn stamp(&self) -> Result<crate::bundle::ModelStamp> {
        let fingerprint = match (self.fingerprint.get(), &self.weights_file) {
            (Some(f), _) => f.clone(),
            (None, Some(path)) => {
                let f = crate::weights::fingerprint_file(path)?;
                self.fingerprint.get_or_init(|| f).clone()
            }
            (None, None) => bail!("the model's fingerprint is unknown"),
        };
        Ok(crate::bundle::ModelStamp {
            fingerprint,
            dtype: self.info.dtype.clone(),
            random_weights: self.info.random_weights.clone(),
        })
    }

    pub fn preprocess_config(&self) -> &PreprocessConfig {
        &self.preprocess
    }

    pub fn tokenizer(&self) -> Result<&TextTokenizer> {
        match &self.tokenizer {
            Some(t) => Ok(t),
            None => bail!("this model was loaded without its text tower"),
        }
    }

    pub fn embed_texts<S: AsRef<str>>(&self, texts: &[S]) -> Result<Vec<Vec<f32>>> {
        let tokenizer = self.tokenizer()?;
        let pad = self.model.config.text_config.pad_token_id as u32;
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(TEXT_BATCH) {
            let rows = chunk.iter().map(|t| tokenizer.encode(t.as_ref())).collect::<Result<Vec<_>>>()?;
            let (ids, mask) = batch_tensors(&rows, pad, self.model.device())?;
            out.extend(self.model.embed_tokens(&ids, &mask)?.to_vec2::<f32>()?);
        }
        Ok(out)
    }

    pub fn embed_text(&self, text: &str) -> Result<Vec<f32>> {
        Ok(self.embed_texts(&[text])?.remove(0))
    }

    pub fn embed_pixels(&self, images: &[Pixels]) -> Result<Vec<Vec<f32>>> {
        let size = self.preprocess.image_size;
        let mut out = Vec::with_capacity(images.len());
        for chunk in images.chunks(IMAGE_BATCH) {
            let mut data = Vec::with_capacity(chunk.len() * 3 * size * size);
            for px in chunk {
                if px.size != size {
                    bail!("pixels are {0}×{0} but the model takes {size}×{size}", px.size);
                }
                data.extend_from_slice(&px.data);
            }
            let pixels = Tensor::from_vec(data, (chunk.len(), 3, size, size), self.model.device())?;
            out.extend(self.model.embed_pixels(&pixels)?.to_vec2::<f32>()?);
        }
        Ok(out)
    }

    /// Encoded image bytes → embedding; `name` (a file name) is used in error messages.
    pub fn embed_image_bytes(&self, bytes: &[u8], name: &str) -> Result<Vec<f32>> {
        let pixels = preprocess(bytes, name, &self.preprocess)?;
        Ok(self.embed_pixels(&[pixels])?.remove(0))
    }

    pub fn embed_image_file(&self, path: &Path) -> Result<Vec<f32>> {
        let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
        self.embed_image_bytes(&bytes, &path.display().to_string())
    }
}
