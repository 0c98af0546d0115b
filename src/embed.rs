//! Texts and images → L2-normalised embeddings: tokenizer + preprocessing + model, batched.

use crate::config::{ClipConfig, PreprocessConfig};
use crate::model::backend::{BackendChoice, BackendReport};
use crate::model::{text::pad_batch, Engine, Gpu, Params, Towers};
use crate::preprocess::{preprocess, Pixels};
use crate::tokenize::TextTokenizer;
use crate::util::resolve_now;
use crate::weights::hf::ModelDir;
use anyhow::{bail, Context, Result};
use candle_core::Device;
use candle_nn::VarBuilder;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Texts per forward pass (padded to the longest text of the batch).
pub const TEXT_BATCH: usize = 32;
/// Images per forward pass on the CPU (larger batches only cost memory there).
pub const IMAGE_BATCH: usize = 8;
/// Images per forward pass on the GPU, which needs wide products to fill its cores (fc1's output is
/// 32 × 197 × 3072 floats, 77 MB, within WebGPU's default 128 MiB binding limit).
pub const GPU_IMAGE_BATCH: usize = 32;

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

/// What a constructor read besides the parameters.
struct Loaded {
    tokenizer: Option<TextTokenizer>,
    preprocess: PreprocessConfig,
    info: ModelInfo,
    weights_file: Option<std::path::PathBuf>,
    fingerprint: std::sync::OnceLock<String>,
}

/// A warning the user should see: stderr natively, the console in the browser.
fn warn(message: &str) {
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("warning: {message}");
    #[cfg(target_arch = "wasm32")]
    web_sys::console::warn_1(&message.into());
}

pub struct Encoder {
    engine: Mutex<Arc<Engine>>,
    /// On the GPU, the parameters again, to move to the CPU if the device is lost.
    fallback: Option<(Params, Towers)>,
    backend: Mutex<BackendReport>,
    config: ClipConfig,
    tokenizer: Option<TextTokenizer>,
    preprocess: PreprocessConfig,
    pub info: ModelInfo,
    /// Where the weights came from, for the fingerprint (hashed on first use: it reads the whole file).
    weights_file: Option<std::path::PathBuf>,
    fingerprint: std::sync::OnceLock<String>,
}

/// Where an encoder runs: a GPU opened by [`crate::model::backend::open`], or the CPU, and why.
#[derive(Clone)]
pub struct Placement {
    pub gpu: Option<Gpu>,
    pub report: BackendReport,
}

impl Placement {
    pub fn cpu() -> Self {
        Self { gpu: None, report: BackendReport { backend: "cpu".into(), detail: "chosen (--backend cpu)".into() } }
    }

    /// Resolves `--backend`: natively this does not wait.
    pub async fn open(choice: BackendChoice) -> Result<Self> {
        let (gpu, report) = crate::model::backend::open(choice).await?;
        Ok(Self { gpu, report })
    }
}

impl Encoder {
    fn new(params: Params, config: ClipConfig, towers: Towers, at: Placement, rest: Loaded) -> Result<Self> {
        let engine = Engine::load(at.gpu.as_ref(), &params, &config, towers)?;
        let fallback = at.gpu.is_some().then_some((params, towers));
        Ok(Self {
            engine: Mutex::new(Arc::new(engine)),
            fallback,
            backend: Mutex::new(at.report),
            config,
            tokenizer: rest.tokenizer,
            preprocess: rest.preprocess,
            info: rest.info,
            weights_file: rest.weights_file,
            fingerprint: rest.fingerprint,
        })
    }

    /// Loads the requested towers from an HF model directory, on the CPU.
    pub fn from_dir(dir: &Path, towers: Towers) -> Result<Self> {
        Self::from_dir_on(dir, towers, Placement::cpu())
    }

    fn from_dir_on(dir: &Path, towers: Towers, at: Placement) -> Result<Self> {
        let model_dir = ModelDir::open(dir)?;
        let vb = model_dir.var_builder(&Device::Cpu)?;
        let tokenizer = if towers.text() { Some(model_dir.tokenizer()?) } else { None };
        let info = ModelInfo {
            source: dir.display().to_string(),
            random_weights: model_dir.random_weights(),
            projection_dim: model_dir.config.projection_dim,
            dtype: "f32".into(),
        };
        let rest = Loaded {
            tokenizer,
            preprocess: model_dir.preprocess.clone(),
            info,
            weights_file: Some(model_dir.weights.clone()),
            fingerprint: Default::default(),
        };
        Self::new(Params::from_var_builder(vb), model_dir.config.clone(), towers, at, rest)
            .with_context(|| format!("loading weights from {}", model_dir.weights.display()))
    }

    /// Loads a model from an HF directory, a cn_clip checkpoint or a tuwen GGUF file (`tuwen quantize`), on the CPU.
    pub fn load(path: &Path, towers: Towers) -> Result<Self> {
        Self::load_on(path, towers, Placement::cpu())
    }

    /// Loads a model from an HF directory, a cn_clip checkpoint or a tuwen GGUF file onto the GPU or CPU of `at`.
    pub fn load_on(path: &Path, towers: Towers, at: Placement) -> Result<Self> {
        use crate::weights::ModelKind;
        match crate::weights::model_kind(path)? {
            ModelKind::HfDir => Self::from_dir_on(path, towers, at),
            ModelKind::Gguf => {
                let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
                let mut encoder = Self::from_gguf_bytes_on(&bytes, towers, at).with_context(|| format!("{}", path.display()))?;
                encoder.info.source = path.display().to_string();
                Ok(encoder)
            }
            #[cfg(not(target_arch = "wasm32"))]
            ModelKind::CnClip => Self::from_cn_clip_on(path, towers, at),
            #[cfg(target_arch = "wasm32")]
            ModelKind::CnClip => bail!("{}: cn_clip checkpoints load natively; the page takes a GGUF", path.display()),
        }
    }

    /// Loads the requested towers from a checkpoint of the official code (`clip_cn_*.pt`, `epoch_latest.pt`).
    #[cfg(not(target_arch = "wasm32"))]
    fn from_cn_clip_on(path: &Path, towers: Towers, at: Placement) -> Result<Self> {
        let checkpoint = crate::weights::cn_clip::read(path, towers)?;
        let tokenizer = if towers.text() {
            Some(TextTokenizer::for_recipe(crate::weights::cn_clip::VOCAB_TXT, checkpoint.preprocess.recipe)?)
        } else {
            None
        };
        let info = ModelInfo {
            source: path.display().to_string(),
            random_weights: checkpoint.random_weights.clone(),
            projection_dim: checkpoint.config.projection_dim,
            dtype: "f32".into(),
        };
        let rest = Loaded {
            tokenizer,
            preprocess: checkpoint.preprocess.clone(),
            info,
            weights_file: Some(path.to_path_buf()),
            fingerprint: Default::default(),
        };
        let vb = VarBuilder::from_tensors(checkpoint.tensors, candle_core::DType::F32, &Device::Cpu);
        Self::new(Params::from_var_builder(vb), checkpoint.config, towers, at, rest)
            .with_context(|| format!("loading the {} towers from {}", checkpoint.architecture, path.display()))
    }

    /// Loads the requested towers from tuwen GGUF bytes, on the CPU.
    pub fn from_gguf_bytes(bytes: &[u8], towers: Towers) -> Result<Self> {
        Self::from_gguf_bytes_on(bytes, towers, Placement::cpu())
    }

    pub fn from_gguf_bytes_on(bytes: &[u8], towers: Towers, at: Placement) -> Result<Self> {
        let device = Device::Cpu;
        let gguf = crate::weights::gguf::GgufModel::read(&mut std::io::Cursor::new(bytes), &device)?;
        gguf.check_towers(towers)?;
        let tokenizer = if towers.text() {
            Some(TextTokenizer::for_recipe(&gguf.vocab_txt, gguf.preprocess.recipe).context("the vocabulary in the GGUF")?)
        } else {
            None
        };
        let info = ModelInfo {
            source: "bytes".into(),
            random_weights: gguf.random_weights,
            projection_dim: gguf.config.projection_dim,
            dtype: gguf.dtype,
        };
        let rest = Loaded {
            tokenizer,
            preprocess: gguf.preprocess,
            info,
            weights_file: None,
            fingerprint: std::sync::OnceLock::from(gguf.fingerprint),
        };
        Self::new(Params::from_gguf_tensors(gguf.tensors, &device), gguf.config, towers, at, rest)
            .context("loading weights from the GGUF")
    }

    /// Loads from in-memory files (the browser): `config.json`, `vocab.txt` and `model.safetensors`.
    pub fn from_bytes(config_json: &[u8], vocab_txt: &[u8], safetensors: Vec<u8>, towers: Towers) -> Result<Self> {
        Self::from_bytes_on(config_json, vocab_txt, safetensors, towers, Placement::cpu())
    }

    pub fn from_bytes_on(config_json: &[u8], vocab_txt: &[u8], safetensors: Vec<u8>, towers: Towers, at: Placement) -> Result<Self> {
        let config = ClipConfig::from_json(std::str::from_utf8(config_json).context("config.json is not UTF-8")?)
            .context("in config.json")?;
        let tokenizer = TextTokenizer::from_vocab_txt(std::str::from_utf8(vocab_txt).context("vocab.txt is not UTF-8")?)
            .context("in vocab.txt")?;
        let random_weights = safetensors::SafeTensors::read_metadata(&safetensors)
            .ok()
            .and_then(|(_, m)| m.metadata().as_ref()?.get(crate::model::random::RANDOM_WEIGHTS_KEY).cloned());
        let fingerprint = std::sync::OnceLock::from(crate::weights::fingerprint_bytes(&safetensors));
        let vb = VarBuilder::from_buffered_safetensors(safetensors, candle_core::DType::F32, &Device::Cpu)
            .context("model.safetensors: not a readable checkpoint")?;
        let info = ModelInfo {
            source: "bytes".into(),
            random_weights,
            projection_dim: config.projection_dim,
            dtype: "f32".into(),
        };
        let preprocess = PreprocessConfig::for_vision(&config.vision_config);
        let rest = Loaded { tokenizer: towers.text().then_some(tokenizer), preprocess, info, weights_file: None, fingerprint };
        Self::new(Params::from_var_builder(vb), config, towers, at, rest).context("loading weights from model.safetensors")
    }

    /// Where the encoders run, and why there.
    pub fn backend(&self) -> BackendReport {
        self.backend.lock().unwrap().clone()
    }

    fn engine(&self) -> Arc<Engine> {
        self.engine.lock().unwrap().clone()
    }

    /// Runs `job` on the current engine; when the GPU fails under it (device lost), moves the towers to the
    /// CPU, says so, and runs `job` again there.
    async fn run<T, F, Fut>(&self, job: F) -> Result<T>
    where
        F: Fn(Arc<Engine>) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let engine = self.engine();
        let result = job(engine.clone()).await;
        let (Err(e), Some(gpu), Some((params, towers))) = (&result, engine.gpu(), &self.fallback) else {
            return result;
        };
        let Some(failure) = gpu.failure() else { return result };
        let cpu = Arc::new(Engine::load(None, params, &self.config, *towers).context("moving the encoders to the CPU")?);
        *self.engine.lock().unwrap() = cpu.clone();
        let report = BackendReport { backend: "cpu".into(), detail: format!("fell back from the GPU: {failure}") };
        warn(&format!("{report} (the failed call: {e:#})"));
        *self.backend.lock().unwrap() = report;
        job(cpu).await
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

    pub async fn embed_texts_async<S: AsRef<str>>(&self, texts: &[S]) -> Result<Vec<Vec<f32>>> {
        let tokenizer = self.tokenizer()?;
        let pad = self.config.text_config.pad_token_id as u32;
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(TEXT_BATCH) {
            let rows = chunk.iter().map(|t| tokenizer.encode(t.as_ref())).collect::<Result<Vec<_>>>()?;
            let (ids, mask, seq) = pad_batch(&rows, pad);
            let rows = self.run(|engine| { let (ids, mask) = (&ids, &mask); async move { engine.embed_tokens(ids, mask, seq).await } }).await?;
            require_finite(&rows, |i| format!("text {} ({:?})", out.len() + i, excerpt(chunk[i].as_ref())))?;
            out.extend(rows);
        }
        Ok(out)
    }

    pub fn embed_texts<S: AsRef<str>>(&self, texts: &[S]) -> Result<Vec<Vec<f32>>> {
        resolve_now(self.embed_texts_async(texts))?
    }

    pub fn embed_text(&self, text: &str) -> Result<Vec<f32>> {
        Ok(self.embed_texts(&[text])?.remove(0))
    }

    pub async fn embed_pixels_async(&self, images: &[Pixels]) -> Result<Vec<Vec<f32>>> {
        let size = self.preprocess.image_size;
        let mut out = Vec::with_capacity(images.len());
        let batch = if self.engine().gpu().is_some() { GPU_IMAGE_BATCH } else { IMAGE_BATCH };
        for chunk in images.chunks(batch) {
            let mut data = Vec::with_capacity(chunk.len() * 3 * size * size);
            for px in chunk {
                if px.size != size {
                    bail!("pixels are {0}×{0} but the model takes {size}×{size}", px.size);
                }
                data.extend_from_slice(&px.data);
            }
            let data = &data;
            let rows = self.run(|engine| async move { engine.embed_pixels(data, chunk.len()).await }).await?;
            require_finite(&rows, |i| format!("image {} of this call", out.len() + i))?;
            out.extend(rows);
        }
        Ok(out)
    }

    pub fn embed_pixels(&self, images: &[Pixels]) -> Result<Vec<Vec<f32>>> {
        resolve_now(self.embed_pixels_async(images))?
    }

    /// Encoded image bytes → embedding; `name` (a file name) is used in error messages.
    pub async fn embed_image_bytes_async(&self, bytes: &[u8], name: &str) -> Result<Vec<f32>> {
        let pixels = preprocess(bytes, name, &self.preprocess)?;
        Ok(self.embed_pixels_async(&[pixels]).await?.remove(0))
    }

    pub fn embed_image_bytes(&self, bytes: &[u8], name: &str) -> Result<Vec<f32>> {
        resolve_now(self.embed_image_bytes_async(bytes, name))?
    }

    pub fn embed_image_file(&self, path: &Path) -> Result<Vec<f32>> {
        let bytes = crate::preprocess::read_image_file(path)?;
        self.embed_image_bytes(&bytes, &path.display().to_string())
    }
}

/// Errors unless every value of every embedding is finite; `name(i)` says which input row `i` came from. A NaN
/// embedding would rank a gallery in list order and still look like a valid result.
pub fn require_finite(rows: &[Vec<f32>], name: impl Fn(usize) -> String) -> Result<()> {
    match rows.iter().position(|r| r.iter().any(|x| !x.is_finite())) {
        Some(i) => bail!("{} gave a non-finite embedding: the model's weights are damaged (or the input is)", name(i)),
        None => Ok(()),
    }
}

/// The first characters of a text, for messages.
fn excerpt(text: &str) -> String {
    let mut short: String = text.chars().take(24).collect();
    if short.len() < text.len() {
        short.push('…');
    }
    short
}
