//! A model on disk in the HF layout — `config.json`, `vocab.txt` (or `tokenizer.json`),
//! `preprocessor_config.json` (optional) and `model.safetensors` or `pytorch_model.bin` — and writing one.

use crate::config::{ClipConfig, PreprocessConfig};
use super::RANDOM_WEIGHTS_KEY;
use crate::tokenize::TextTokenizer;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

pub const CONFIG_FILE: &str = "config.json";
pub const PREPROCESSOR_FILE: &str = "preprocessor_config.json";
pub const VOCAB_FILE: &str = "vocab.txt";
pub const TOKENIZER_FILE: &str = "tokenizer.json";
pub const SAFETENSORS_FILE: &str = "model.safetensors";
pub const PYTORCH_FILE: &str = "pytorch_model.bin";

const LAYOUT_HINT: &str = "a model directory holds config.json, vocab.txt (or tokenizer.json) and model.safetensors \
     or pytorch_model.bin, as on the Hugging Face hub: get one with `tuwen fetch-model`, or make a random one \
     with `tuwen init-random`";

/// The parts of an HF model directory, found and parsed, weights not yet read.
pub struct ModelDir {
    pub root: PathBuf,
    pub config: ClipConfig,
    pub preprocess: PreprocessConfig,
    pub weights: PathBuf,
    tokenizer_file: PathBuf,
}

impl ModelDir {
    pub fn open(root: &Path) -> Result<Self> {
        if !root.is_dir() {
            bail!("{} is not a directory ({LAYOUT_HINT})", root.display());
        }
        let config_path = root.join(CONFIG_FILE);
        if !config_path.is_file() {
            let checkpoints: Vec<String> = std::fs::read_dir(root)
                .map(|entries| {
                    entries
                        .filter_map(|e| e.ok()?.file_name().into_string().ok())
                        .filter(|n| n.ends_with(".pt") || n.ends_with(".pth"))
                        .collect()
                })
                .unwrap_or_default();
            if !checkpoints.is_empty() {
                bail!(
                    "{}: not a model directory (no {CONFIG_FILE}), but it holds {}: give a cn_clip checkpoint itself to --model",
                    root.display(),
                    checkpoints.join(", ")
                );
            }
            bail!("{}: missing ({LAYOUT_HINT})", config_path.display());
        }
        let config = ClipConfig::from_file(&config_path)?;
        let preprocess_path = root.join(PREPROCESSOR_FILE);
        let preprocess = if preprocess_path.is_file() {
            let json = std::fs::read_to_string(&preprocess_path)
                .with_context(|| format!("reading {}", preprocess_path.display()))?;
            PreprocessConfig::from_hf_json(&json, &config.vision_config)
                .with_context(|| format!("in {}", preprocess_path.display()))?
        } else {
            PreprocessConfig::for_vision(&config.vision_config)
        };
        let tokenizer_file = [VOCAB_FILE, TOKENIZER_FILE]
            .iter()
            .map(|f| root.join(f))
            .find(|p| p.is_file())
            .with_context(|| format!("{}: no vocab.txt or tokenizer.json ({LAYOUT_HINT})", root.display()))?;
        let weights = [SAFETENSORS_FILE, PYTORCH_FILE]
            .iter()
            .map(|f| root.join(f))
            .find(|p| p.is_file())
            .with_context(|| {
                format!("{}: no weights (model.safetensors or pytorch_model.bin) ({LAYOUT_HINT})", root.display())
            })?;
        Ok(Self { root: root.to_path_buf(), config, preprocess, weights, tokenizer_file })
    }

    pub fn tokenizer(&self) -> Result<TextTokenizer> {
        let path = &self.tokenizer_file;
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let tokenizer = if path.ends_with(VOCAB_FILE) {
            TextTokenizer::from_vocab_txt(std::str::from_utf8(&bytes).context("not UTF-8")?)
        } else {
            TextTokenizer::from_tokenizer_json(&bytes)
        };
        let tokenizer = tokenizer.with_context(|| format!("in {}", path.display()))?;
        check_vocab_fits(&tokenizer, path, &self.config, Path::new(CONFIG_FILE))?;
        Ok(tokenizer)
    }

    /// The vocabulary as `vocab.txt` text (rebuilt from `tokenizer.json` when that is all there is).
    pub fn vocab_txt(&self) -> Result<String> {
        let path = &self.tokenizer_file;
        if path.ends_with(VOCAB_FILE) {
            return std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()));
        }
        Ok(self.tokenizer()?.vocab_lines().join("\n") + "\n")
    }

    /// A `VarBuilder` over the weights file (memory-mapped safetensors, or a PyTorch pickle).
    pub fn var_builder(&self, device: &Device) -> Result<VarBuilder<'static>> {
        let path = &self.weights;
        let vb = if path.ends_with(SAFETENSORS_FILE) {
            // SAFETY: the file is mapped read-only; tuwen never writes a model while reading it.
            unsafe { VarBuilder::from_mmaped_safetensors(&[path], DType::F32, device) }
        } else {
            VarBuilder::from_pth(path, DType::F32, device)
        };
        vb.with_context(|| format!("{}: not a readable checkpoint", path.display()))
    }

    /// `Some(description)` when the weights were generated by `tuwen init-random`.
    pub fn random_weights(&self) -> Option<String> {
        if !self.weights.ends_with(SAFETENSORS_FILE) {
            return None;
        }
        safetensors_metadata(&self.weights).ok()?.remove(RANDOM_WEIGHTS_KEY)
    }
}

/// The vocabulary must fit the word-embedding table the config declares.
pub fn check_vocab_fits(tokenizer: &TextTokenizer, vocab: &Path, config: &ClipConfig, config_path: &Path) -> Result<()> {
    if tokenizer.vocab_size() > config.text_config.vocab_size {
        bail!(
            "{} has {} tokens but {} says text_config.vocab_size = {}",
            vocab.display(),
            tokenizer.vocab_size(),
            config_path.display(),
            config.text_config.vocab_size
        );
    }
    Ok(())
}

/// The `__metadata__` map of a safetensors file, reading only its header.
pub fn safetensors_metadata(path: &Path) -> Result<HashMap<String, String>> {
    let mut file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).with_context(|| format!("{}: truncated header", path.display()))?;
    let len = u64::from_le_bytes(len);
    if len > 100_000_000 {
        bail!("{}: not a safetensors file (header length {len})", path.display());
    }
    let mut header = vec![0u8; len as usize];
    file.read_exact(&mut header).with_context(|| format!("{}: truncated header", path.display()))?;
    let header: serde_json::Value =
        serde_json::from_slice(&header).with_context(|| format!("{}: header is not JSON", path.display()))?;
    Ok(header
        .get("__metadata__")
        .and_then(|m| serde_json::from_value(m.clone()).ok())
        .unwrap_or_default())
}

/// Reads every tensor of an HF checkpoint file as f32.
#[cfg(not(target_arch = "wasm32"))]
pub fn read_checkpoint(path: &std::path::Path) -> Result<HashMap<String, candle_core::Tensor>> {
    let tensors = if path.extension().is_some_and(|e| e == "safetensors") {
        candle_core::safetensors::load(path, &Device::Cpu)?
    } else {
        candle_core::pickle::read_all(path)?.into_iter().collect()
    };
    Ok(tensors)
}
