//! The wasm-bindgen shell: the page's worker loads a model from bytes and embeds texts and images.

use crate::{Encoder, Towers};
use wasm_bindgen::prelude::*;

#[wasm_bindgen(start)]
pub fn start() {
    console_error_panic_hook::set_once();
}

fn js_error(e: anyhow::Error) -> JsError {
    JsError::new(&format!("{e:#}"))
}

fn parse_towers(towers: &str) -> Result<Towers, JsError> {
    towers.parse().map_err(|e: String| JsError::new(&e))
}

/// A Chinese-CLIP encoder living in wasm memory.
#[wasm_bindgen]
pub struct WasmEncoder {
    inner: Encoder,
}

#[wasm_bindgen]
impl WasmEncoder {
    /// `towers`: "text", "vision" or "both". The bytes are `config.json`, `vocab.txt` and
    /// `model.safetensors` of a model in the HF layout.
    #[wasm_bindgen(constructor)]
    pub fn new(config_json: &[u8], vocab_txt: &[u8], weights: Vec<u8>, towers: &str) -> Result<WasmEncoder, JsError> {
        let inner = Encoder::from_bytes(config_json, vocab_txt, weights, parse_towers(towers)?).map_err(js_error)?;
        Ok(Self { inner })
    }

    /// Loads a tuwen GGUF (`tuwen quantize`): one tower or both, config and vocabulary inside.
    #[wasm_bindgen(js_name = fromGguf)]
    pub fn from_gguf(bytes: &[u8], towers: &str) -> Result<WasmEncoder, JsError> {
        let inner = Encoder::from_gguf_bytes(bytes, parse_towers(towers)?).map_err(js_error)?;
        Ok(Self { inner })
    }

    /// The L2-normalised embedding of a text (a `Float32Array`).
    #[wasm_bindgen(js_name = embedText)]
    pub fn embed_text(&self, text: &str) -> Result<Vec<f32>, JsError> {
        self.inner.embed_text(text).map_err(js_error)
    }

    /// The L2-normalised embedding of an encoded image (JPEG, PNG, WebP, GIF, BMP, TIFF).
    #[wasm_bindgen(js_name = embedImage)]
    pub fn embed_image(&self, bytes: &[u8], name: &str) -> Result<Vec<f32>, JsError> {
        self.inner.embed_image_bytes(bytes, name).map_err(js_error)
    }

    /// `{source, random_weights, projection_dim}`: the page shows a warning when `random_weights` is set.
    #[wasm_bindgen(getter)]
    pub fn info(&self) -> Result<JsValue, JsError> {
        serde_wasm_bindgen::to_value(&self.inner.info).map_err(|e| JsError::new(&e.to_string()))
    }
}
