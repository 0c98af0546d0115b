//! The wasm-bindgen shell: the page's worker loads a model and bundles from bytes, embeds queries and
//! searches the galleries.

use crate::bundle::{Bundle, Kind};
use crate::search::top_k;
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

    /// `sha256:…` of the weights this model was made from: bundles made with another model are refused.
    #[wasm_bindgen(getter)]
    pub fn fingerprint(&self) -> Result<String, JsError> {
        Ok(self.inner.stamp().map_err(js_error)?.fingerprint)
    }

    /// `{source, random_weights, projection_dim, dtype}`: the page shows a warning when `random_weights` is set.
    #[wasm_bindgen(getter)]
    pub fn info(&self) -> Result<JsValue, JsError> {
        serde_wasm_bindgen::to_value(&self.inner.info).map_err(|e| JsError::new(&e.to_string()))
    }
}

/// An embedding bundle (`tuwen index`) held in wasm memory, searched by exact cosine top-k.
#[wasm_bindgen]
pub struct WasmGallery {
    inner: Bundle,
}

#[wasm_bindgen]
impl WasmGallery {
    /// Reads bundle bytes; truncated, tampered or foreign files are refused with the reason.
    #[wasm_bindgen(constructor)]
    pub fn new(bytes: Vec<u8>) -> Result<WasmGallery, JsError> {
        Ok(Self { inner: Bundle::from_bytes(bytes).map_err(js_error)? })
    }

    /// "image" or "text".
    #[wasm_bindgen(getter)]
    pub fn kind(&self) -> String {
        match self.inner.header.kind {
            Kind::Image => "image".into(),
            Kind::Text => "text".into(),
        }
    }

    #[wasm_bindgen(getter)]
    pub fn count(&self) -> usize {
        self.inner.len()
    }

    /// The ids, in row order.
    #[wasm_bindgen(getter)]
    pub fn ids(&self) -> Vec<String> {
        self.inner.ids.clone()
    }

    /// The captions, in row order (empty for image bundles).
    #[wasm_bindgen(getter)]
    pub fn captions(&self) -> Vec<String> {
        self.inner.captions.clone().unwrap_or_default()
    }

    /// `{fingerprint, dtype, random_weights?}` of the model that made the embeddings.
    #[wasm_bindgen(getter)]
    pub fn model(&self) -> Result<JsValue, JsError> {
        serde_wasm_bindgen::to_value(&self.inner.header.model).map_err(|e| JsError::new(&e.to_string()))
    }

    /// Errors unless queries from `encoder` can be compared with this gallery.
    #[wasm_bindgen(js_name = checkEncoder)]
    pub fn check_encoder(&self, encoder: &WasmEncoder, what: &str) -> Result<(), JsError> {
        let stamp = encoder.inner.stamp().map_err(js_error)?;
        self.inner.check_model(&stamp, what).map_err(js_error)
    }

    /// The stored embedding of row `index` (to search with a gallery item).
    pub fn row(&self, index: usize) -> Result<Vec<f32>, JsError> {
        if index >= self.inner.len() {
            return Err(JsError::new(&format!("row {index} is out of range (the gallery has {})", self.inner.len())));
        }
        Ok(self.inner.row(index))
    }

    /// The `k` most similar rows to an L2-normalised query: `[{index, score}]`, best first.
    pub fn search(&self, query: &[f32], k: usize) -> Result<JsValue, JsError> {
        let hits = top_k(&self.inner.rows(), self.inner.dim(), query, k).map_err(js_error)?;
        serde_wasm_bindgen::to_value(&hits).map_err(|e| JsError::new(&e.to_string()))
    }
}
