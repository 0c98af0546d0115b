//! Model files, read and written: the Hugging Face layout ([`hf`]), the official code's checkpoints
//! ([`cn_clip`], read) and tuwen's single-file GGUF ([`gguf`]).
//! The lowest layer with the configuration: nothing here knows how a model computes.

#[cfg(not(target_arch = "wasm32"))]
pub mod cn_clip;
pub mod gguf;
pub mod hf;

use anyhow::{bail, Context, Result};
use std::io::Read;
use std::path::Path;

/// Safetensors (and GGUF) metadata key marking a checkpoint as random (the value says how it was made).
pub const RANDOM_WEIGHTS_KEY: &str = "tuwen.random_weights";

/// The three things `--model` may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    /// A directory in the Hugging Face layout.
    HfDir,
    /// A checkpoint of the official code (`clip_cn_*.pt`, `epoch_latest.pt`): a torch zip archive.
    CnClip,
    /// A tuwen GGUF (`tuwen quantize`).
    Gguf,
}

/// What `path` holds, from its first bytes; an error says what a model may be.
pub fn model_kind(path: &Path) -> Result<ModelKind> {
    if path.is_dir() {
        return Ok(ModelKind::HfDir);
    }
    let mut head = [0u8; 4];
    let mut file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let n = file.read(&mut head).with_context(|| format!("reading {}", path.display()))?;
    if gguf::is_gguf(&head[..n]) {
        Ok(ModelKind::Gguf)
    } else if head[..n].starts_with(b"PK\x03\x04") {
        // A zip archive: what `torch.save` writes.
        Ok(ModelKind::CnClip)
    } else {
        bail!(
            "{}: not a model (expected an HF model directory, a cn_clip checkpoint (.pt) or a GGUF file from `tuwen quantize`)",
            path.display()
        )
    }
}

/// The file whose bytes identify the model (its fingerprint): the weights of an HF directory, else the file.
pub fn weights_file(path: &Path) -> Result<std::path::PathBuf> {
    Ok(match model_kind(path)? {
        ModelKind::HfDir => hf::ModelDir::open(path)?.weights,
        _ => path.to_path_buf(),
    })
}

/// `sha256:<hex>` of a weights file, streamed.
pub fn fingerprint_file(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(format!("sha256:{}", crate::util::hex(&hasher.finalize())))
}

/// `sha256:<hex>` of weights held in memory (the same value `fingerprint_file` gives for the file).
pub fn fingerprint_bytes(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    format!("sha256:{}", crate::util::hex(&Sha256::digest(bytes)))
}

