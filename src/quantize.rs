//! `tuwen quantize`: an HF model directory or a cn_clip checkpoint → a tuwen GGUF, or one tower cut out of a GGUF.

use crate::model::{Engine, Params, Towers};
use crate::tokenize::TextTokenizer;
use crate::weights::gguf::{extract_towers, gguf_summary, to_gguf, GgufModel, ModelMeta, QuantDtype};
use crate::weights::hf::{read_checkpoint, ModelDir};
use crate::weights::ModelKind;
use anyhow::{bail, Context, Result};
use candle_core::Device;
use std::path::Path;

/// `tuwen quantize`: a model → one GGUF file. An HF directory or a cn_clip checkpoint is quantized; a GGUF
/// has the towers cut out of it.
pub fn quantize_model(model: &Path, dtype: QuantDtype, towers: Towers, out: &Path) -> Result<u64> {
    match crate::weights::model_kind(model)? {
        ModelKind::HfDir => quantize_dir(model, dtype, towers, out),
        ModelKind::CnClip => quantize_cn_clip(model, dtype, towers, out),
        ModelKind::Gguf => extract_file(model, dtype, towers, out),
    }
}

/// A checkpoint of the official code → one GGUF that records cn_clip's recipe (tokenizer, image order).
fn quantize_cn_clip(path: &Path, dtype: QuantDtype, towers: Towers, out: &Path) -> Result<u64> {
    let checkpoint = crate::weights::cn_clip::read(path, towers)?;
    let fingerprint = crate::weights::fingerprint_file(path)?;
    let meta = ModelMeta {
        config: &checkpoint.config,
        preprocess: &checkpoint.preprocess,
        vocab_txt: crate::weights::cn_clip::VOCAB_TXT,
        fingerprint: &fingerprint,
        random_weights: checkpoint.random_weights.as_deref(),
    };
    write_checked(to_gguf(&checkpoint.tensors, &meta, dtype, towers)?, towers, out)
}

fn write_checked(bytes: Vec<u8>, towers: Towers, out: &Path) -> Result<u64> {
    // Prove the file loads and runs before it replaces anything.
    check_loads(&bytes, towers).context("the quantized model does not load")?;
    crate::util::write_atomic(out, &bytes)?;
    Ok(bytes.len() as u64)
}

/// An HF model directory → one GGUF file.
fn quantize_dir(dir: &Path, dtype: QuantDtype, towers: Towers, out: &Path) -> Result<u64> {
    let model = ModelDir::open(dir)?;
    let tensors = read_checkpoint(&model.weights).with_context(|| format!("reading {}", model.weights.display()))?;
    let vocab_txt = model.vocab_txt()?;
    let fingerprint = crate::weights::fingerprint_file(&model.weights)?;
    let random = model.random_weights();
    let meta = ModelMeta {
        config: &model.config,
        preprocess: &model.preprocess,
        vocab_txt: &vocab_txt,
        fingerprint: &fingerprint,
        random_weights: random.as_deref(),
    };
    write_checked(to_gguf(&tensors, &meta, dtype, towers)?, towers, out)
}

/// `tuwen quantize` on a GGUF: cut the towers out of it (the dtype cannot change: re-quantizing
/// quantized weights would compound the error, so quantize from the HF directory instead).
fn extract_file(model: &Path, dtype: QuantDtype, towers: Towers, out: &Path) -> Result<u64> {
    let bytes = std::fs::read(model).with_context(|| format!("reading {}", model.display()))?;
    let stored = gguf_summary(model)?.dtype;
    if stored != dtype.name() {
        bail!(
            "{} is already quantized to {stored}; making {} from it would quantize twice: run `tuwen quantize` on the HF model directory",
            model.display(),
            dtype.name()
        );
    }
    let cut = extract_towers(&bytes, towers).with_context(|| model.display().to_string())?;
    check_loads(&cut, towers).context("the extracted model does not load")?;
    crate::util::write_atomic(out, &cut)?;
    Ok(cut.len() as u64)
}

/// Proves GGUF bytes load and build the towers asked for, before they replace anything on disk.
fn check_loads(bytes: &[u8], towers: Towers) -> Result<()> {
    let gguf = GgufModel::read(&mut std::io::Cursor::new(bytes), &Device::Cpu)?;
    gguf.check_towers(towers)?;
    if towers.text() {
        TextTokenizer::for_recipe(&gguf.vocab_txt, gguf.preprocess.recipe).context("the vocabulary in the GGUF")?;
    }
    Engine::load(None, &Params::from_gguf_tensors(gguf.tensors, &Device::Cpu), &gguf.config, towers)?;
    Ok(())
}
