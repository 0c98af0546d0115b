//! Model files, read and written: the Hugging Face layout ([`hf`]) and tuwen's single-file GGUF ([`gguf`]).
//! The lowest layer with the configuration: nothing here knows how a model computes.

pub mod gguf;
pub mod hf;

use anyhow::{Context, Result};
use std::io::Read;
use std::path::Path;

/// Safetensors (and GGUF) metadata key marking a checkpoint as random (the value says how it was made).
pub const RANDOM_WEIGHTS_KEY: &str = "tuwen.random_weights";

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

