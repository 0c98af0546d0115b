//! Single-file GGUF models: one per tower (or both), weights quantized, with everything needed to run
//! them inside — config, vocabulary, preprocessing and the source model's fingerprint — in the metadata.

use crate::config::{ClipConfig, PreprocessConfig};
use crate::config::Towers;
use anyhow::{anyhow, bail, Context, Result};
use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

pub const ARCHITECTURE: &str = "chinese_clip";
const KEY_FORMAT: &str = "tuwen.format";
const FORMAT: &str = "tuwen.model/1";
const KEY_TOWER: &str = "tuwen.tower";
const KEY_DTYPE: &str = "tuwen.dtype";
const KEY_CONFIG: &str = "tuwen.config";
const KEY_PREPROCESS: &str = "tuwen.preprocess";
const KEY_VOCAB: &str = "tuwen.vocab";
const KEY_FINGERPRINT: &str = "tuwen.fingerprint";
const KEY_RANDOM: &str = "tuwen.random_weights";

/// The storage of the linear layers' weight matrices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantDtype {
    F16,
    Q8_0,
    Q4_0,
    Q4K,
}

impl std::str::FromStr for QuantDtype {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f16" => Ok(Self::F16),
            "q8_0" => Ok(Self::Q8_0),
            "q4_0" => Ok(Self::Q4_0),
            "q4k" | "q4_k" => Ok(Self::Q4K),
            other => bail!("unsupported dtype {other:?} (expected q8_0, q4_0, q4k or f16)"),
        }
    }
}

impl QuantDtype {
    pub fn name(self) -> &'static str {
        match self {
            Self::F16 => "f16",
            Self::Q8_0 => "q8_0",
            Self::Q4_0 => "q4_0",
            Self::Q4K => "q4k",
        }
    }

    fn ggml(self) -> GgmlDType {
        match self {
            Self::F16 => GgmlDType::F16,
            Self::Q8_0 => GgmlDType::Q8_0,
            Self::Q4_0 => GgmlDType::Q4_0,
            Self::Q4K => GgmlDType::Q4K,
        }
    }
}


/// Does a checkpoint tensor belong to the tower(s)? Unused tensors (the text pooler, position-id buffers)
/// are left out.
fn wanted(name: &str, towers: Towers) -> bool {
    if name.contains(".pooler.") || name.ends_with("position_ids") {
        return false;
    }
    let text = name.starts_with("text_model.") || name == "text_projection.weight";
    let vision = name.starts_with("vision_model.") || name == "visual_projection.weight";
    (text && towers.text()) || (vision && towers.vision())
}

/// The weights worth quantizing: the matrices of the linear layers and the word-embedding table.
/// Norms, biases, position/class embeddings and the patch convolution stay f32 (small, and sensitive).
fn quantizable(name: &str, shape: &[usize]) -> bool {
    shape.len() == 2
        && name.ends_with(".weight")
        && !name.contains("position_embedding")
        && !name.contains("token_type_embeddings")
        && !name.contains("LayerNorm")
        && !name.contains("layer_norm")
        && !name.contains("layrnorm")
}

/// The most compact of `dtype`, q8_0, f16 whose block fits the row length. q4k keeps the text tower's
/// attention values and attention outputs in q6k (as llama.cpp's Q4_K_M does for its sensitive matrices):
/// measured on the full-size random model, text cosine to f32 0.9831 → 0.9877 for +3.7 MB (59.3 → 63.0 MB);
/// the word embeddings in q8_0 instead bought only 0.9838 for +8 MB.
fn storage_for(dtype: QuantDtype, name: &str, row: usize) -> GgmlDType {
    let sensitive = name.contains("attention.self.value.") || name.contains("attention.output.dense.");
    let first = if dtype == QuantDtype::Q4K && sensitive { GgmlDType::Q6K } else { dtype.ggml() };
    [first, GgmlDType::Q8_0, GgmlDType::F16]
        .into_iter()
        .find(|d| row % d.block_size() == 0)
        .unwrap_or(GgmlDType::F32)
}

/// What goes into a GGUF besides the weights.
pub struct ModelMeta<'a> {
    pub config: &'a ClipConfig,
    pub preprocess: &'a PreprocessConfig,
    pub vocab_txt: &'a str,
    pub fingerprint: &'a str,
    pub random_weights: Option<&'a str>,
}

/// Quantizes checkpoint tensors (HF names, f32) into GGUF bytes.
pub fn to_gguf(
    tensors: &HashMap<String, Tensor>,
    meta: &ModelMeta,
    dtype: QuantDtype,
    towers: Towers,
) -> Result<Vec<u8>> {
    let mut packed: BTreeMap<&str, QTensor> = BTreeMap::new();
    for (name, tensor) in tensors {
        if !wanted(name, towers) {
            continue;
        }
        let tensor = tensor.to_dtype(DType::F32)?;
        let dims = tensor.dims();
        let target = if quantizable(name, dims) { storage_for(dtype, name, dims[dims.len() - 1]) } else { GgmlDType::F32 };
        let q = QTensor::quantize(&tensor, target).with_context(|| format!("quantizing {name}"))?;
        packed.insert(name, q);
    }
    if packed.is_empty() {
        bail!("the checkpoint has no tensors of the {} tower", towers.name());
    }
    let string = |s: &str| gguf_file::Value::String(s.to_string());
    let mut metadata = vec![
        ("general.architecture", string(ARCHITECTURE)),
        (KEY_FORMAT, string(FORMAT)),
        (KEY_TOWER, string(towers.name())),
        (KEY_DTYPE, string(dtype.name())),
        (KEY_CONFIG, string(&serde_json::to_string(meta.config)?)),
        (KEY_PREPROCESS, string(&serde_json::to_string(meta.preprocess)?)),
        (KEY_VOCAB, string(meta.vocab_txt)),
        (KEY_FINGERPRINT, string(meta.fingerprint)),
    ];
    if let Some(r) = meta.random_weights {
        metadata.push((KEY_RANDOM, string(r)));
    }
    let metadata: Vec<(&str, &gguf_file::Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let tensors: Vec<(&str, &QTensor)> = packed.iter().map(|(k, v)| (*k, v)).collect();
    let mut out = std::io::Cursor::new(Vec::new());
    gguf_file::write(&mut out, &metadata, &tensors)?;
    Ok(out.into_inner())
}

/// An HF checkpoint held in memory (`config.json`, `vocab.txt`, `model.safetensors` bytes) → GGUF bytes.
/// Works in wasm too; the fingerprint is that of the safetensors bytes, as for the file.
pub fn quantize_safetensors_bytes(
    config_json: &str,
    vocab_txt: &str,
    safetensors: &[u8],
    dtype: QuantDtype,
    towers: Towers,
) -> Result<Vec<u8>> {
    let config = ClipConfig::from_json(config_json).context("in config.json")?;
    let preprocess = PreprocessConfig::for_vision(&config.vision_config);
    let tensors = candle_core::safetensors::load_buffer(safetensors, &Device::Cpu).context("model.safetensors")?;
    let random = safetensors::SafeTensors::read_metadata(safetensors)
        .ok()
        .and_then(|(_, m)| m.metadata().as_ref()?.get(super::RANDOM_WEIGHTS_KEY).cloned());
    let fingerprint = super::fingerprint_bytes(safetensors);
    let meta = ModelMeta { config: &config, preprocess: &preprocess, vocab_txt, fingerprint: &fingerprint, random_weights: random.as_deref() };
    to_gguf(&tensors, &meta, dtype, towers)
}

/// A tuwen GGUF, read: its metadata and tensors.
pub struct GgufModel {
    pub config: ClipConfig,
    pub preprocess: PreprocessConfig,
    pub vocab_txt: String,
    pub fingerprint: String,
    pub dtype: String,
    pub towers: Towers,
    pub random_weights: Option<String>,
    pub tensors: HashMap<String, Arc<QTensor>>,
}

/// True when `bytes` start like a GGUF file.
pub fn is_gguf(bytes: &[u8]) -> bool {
    bytes.starts_with(b"GGUF")
}

impl GgufModel {
    pub fn read<R: std::io::Read + std::io::Seek>(reader: &mut R, device: &Device) -> Result<Self> {
        let content = gguf_file::Content::read(reader).map_err(|e| anyhow!("not a readable GGUF file (truncated or foreign): {e}"))?;
        let text = |key: &str| -> Result<String> {
            match content.metadata.get(key) {
                Some(gguf_file::Value::String(s)) => Ok(s.clone()),
                _ => bail!("not a tuwen model GGUF: no {key} (make one with `tuwen quantize`)"),
            }
        };
        if text(KEY_FORMAT)? != FORMAT {
            bail!("unsupported tuwen GGUF format {:?} (this tuwen reads {FORMAT})", text(KEY_FORMAT)?);
        }
        let config = ClipConfig::from_json(&text(KEY_CONFIG)?).context("tuwen.config")?;
        let preprocess: PreprocessConfig = serde_json::from_str(&text(KEY_PREPROCESS)?).context("tuwen.preprocess")?;
        let mut tensors = HashMap::new();
        for name in content.tensor_infos.keys() {
            let t = content
                .tensor(reader, name, device)
                .map_err(|e| anyhow!("tensor {name}: {e} (the file is truncated or damaged)"))?;
            tensors.insert(name.clone(), Arc::new(t));
        }
        Ok(Self {
            config,
            preprocess,
            vocab_txt: text(KEY_VOCAB)?,
            fingerprint: text(KEY_FINGERPRINT)?,
            dtype: text(KEY_DTYPE)?,
            towers: text(KEY_TOWER)?.parse().map_err(|e: String| anyhow!(e))?,
            random_weights: text(KEY_RANDOM).ok(),
            tensors,
        })
    }

    /// Errors unless this file holds the towers asked for.
    pub fn check_towers(&self, wanted: Towers) -> Result<()> {
        let have = self.towers;
        if (wanted.text() && !have.text()) || (wanted.vision() && !have.vision()) {
            bail!(
                "this GGUF holds the {} tower only, but the {} tower is needed here (quantize with --tower {})",
                have.name(),
                if wanted.text() && !have.text() { "text" } else { "vision" },
                wanted.name()
            );
        }
        Ok(())
    }
}

/// The towers a tuwen GGUF holds, read from its metadata only (no tensor data).
pub fn gguf_towers(content: &gguf_file::Content) -> Result<Towers> {
    match content.metadata.get(KEY_TOWER) {
        Some(gguf_file::Value::String(s)) => s.parse().map_err(|e: String| anyhow!(e)),
        _ => bail!("not a tuwen model GGUF: no {KEY_TOWER} (make one with `tuwen quantize`)"),
    }
}

/// A GGUF holding only `towers`, cut from a tuwen GGUF that holds them (and maybe more): the page
/// fetches one tower per query type. Tensors are copied as stored, never re-quantized.
pub fn extract_towers(bytes: &[u8], towers: Towers) -> Result<Vec<u8>> {
    let mut reader = std::io::Cursor::new(bytes);
    let content =
        gguf_file::Content::read(&mut reader).map_err(|e| anyhow!("not a readable GGUF file (truncated or foreign): {e}"))?;
    let have = gguf_towers(&content)?;
    if have == towers {
        return Ok(bytes.to_vec());
    }
    if (towers.text() && !have.text()) || (towers.vision() && !have.vision()) {
        bail!("this GGUF holds the {} tower only; the {} tower cannot be cut from it", have.name(), towers.name());
    }
    // Sorted, so the same input always gives the same bytes (and the same cache key on the page).
    let mut names: Vec<&String> = content.tensor_infos.keys().filter(|n| wanted(n, towers)).collect();
    names.sort();
    let mut tensors = Vec::with_capacity(names.len());
    for name in names {
        let t = content
            .tensor(&mut reader, name, &Device::Cpu)
            .map_err(|e| anyhow!("tensor {name}: {e} (the file is truncated or damaged)"))?;
        tensors.push((name.as_str(), t));
    }
    let mut metadata: Vec<(&str, gguf_file::Value)> =
        content.metadata.iter().filter(|(k, _)| k.as_str() != KEY_TOWER).map(|(k, v)| (k.as_str(), v.clone())).collect();
    metadata.push((KEY_TOWER, gguf_file::Value::String(towers.name().to_string())));
    metadata.sort_by(|a, b| a.0.cmp(b.0));
    let metadata: Vec<(&str, &gguf_file::Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (*k, v)).collect();
    let mut out = std::io::Cursor::new(Vec::new());
    gguf_file::write(&mut out, &metadata, &tensors)?;
    Ok(out.into_inner())
}

/// What a tuwen GGUF is, from its metadata alone.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufSummary {
    pub towers: Towers,
    pub dtype: String,
    pub fingerprint: String,
}

#[cfg(not(target_arch = "wasm32"))]
pub fn gguf_summary(path: &std::path::Path) -> Result<GgufSummary> {
    let mut file = std::io::BufReader::new(std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?);
    let content = gguf_file::Content::read(&mut file)
        .map_err(|e| anyhow!("{}: not a readable GGUF file (truncated or foreign): {e}", path.display()))?;
    let text = |key: &str| match content.metadata.get(key) {
        Some(gguf_file::Value::String(s)) => Ok(s.clone()),
        _ => Err(anyhow!("{}: not a tuwen model GGUF: no {key} (make one with `tuwen quantize`)", path.display())),
    };
    Ok(GgufSummary { towers: gguf_towers(&content)?, dtype: text(KEY_DTYPE)?, fingerprint: text(KEY_FINGERPRINT)? })
}
