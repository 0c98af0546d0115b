//! The wasm-bindgen shell: the page's worker loads a model and bundles from bytes, embeds queries and
//! searches the galleries.

use crate::bundle::{Bundle, Kind, ModelStamp, NewBundle, Storage};
use crate::embed::Placement;
use crate::model::BackendChoice;
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

fn parse_backend(backend: &str) -> Result<BackendChoice, JsError> {
    backend.parse().map_err(|e: String| JsError::new(&e))
}

thread_local! {
    /// The GPU opened last, shared by the towers loaded after it (one device, its shaders compiled once).
    static OPENED: std::cell::RefCell<Option<Placement>> = const { std::cell::RefCell::new(None) };
}

/// Where a tower loaded with `backend` runs: the CPU, or the shared GPU (opened on first need).
async fn placement(backend: &str) -> Result<Placement, JsError> {
    let choice = parse_backend(backend)?;
    if choice == BackendChoice::Cpu {
        return Ok(Placement::cpu());
    }
    let cached = OPENED.with(|o| o.borrow().clone()).filter(|p| p.gpu.as_ref().is_some_and(|g| g.failure().is_none()));
    if let Some(at) = cached {
        return Ok(at);
    }
    let at = Placement::open(choice).await.map_err(js_error)?;
    if at.gpu.is_some() {
        OPENED.with(|o| *o.borrow_mut() = Some(at.clone()));
    }
    Ok(at)
}

/// Resolves a backend choice ("auto", "cpu", "gpu") as the towers will: `{backend: "gpu" | "cpu", detail}`,
/// the adapter or why the CPU. A GPU it opens is kept for the towers loaded next.
#[wasm_bindgen(js_name = openBackend)]
pub async fn open_backend(backend: String) -> Result<JsValue, JsError> {
    let at = placement(&backend).await?;
    serde_wasm_bindgen::to_value(&at.report).map_err(|e| JsError::new(&e.to_string()))
}

/// The SIMD this wasm module was built for: "relaxed-simd" (8-bit dot products; the second build, loaded
/// where the browser validates relaxed SIMD) or "simd128".
#[wasm_bindgen(js_name = simdLevel)]
pub fn simd_level() -> String {
    if cfg!(feature = "relaxed-simd") { "relaxed-simd" } else { "simd128" }.into()
}

/// How the relaxed-SIMD build computes its 8-bit dot products: "accumulate" (`i32x4.relaxed_dot_i8x16_i7x16_add`)
/// or "pairs" (`i16x8.relaxed_dot_i8x16_i7x16_s`, then widened and added); the same bits either way, the
/// faster one depends on the CPU (the page's probe times both). "" in the SIMD128 build, which has no 8-bit
/// dot products.
#[wasm_bindgen(js_name = dotForm)]
pub fn dot_form() -> String {
    #[cfg(feature = "relaxed-simd")]
    return crate::model::q8::dot_form().name().into();
    #[cfg(not(feature = "relaxed-simd"))]
    String::new()
}

/// Chooses the relaxed-SIMD build's dot-product form ([`dot_form`]'s names) for every product from now on.
#[wasm_bindgen(js_name = setDotForm)]
pub fn set_dot_form(form: &str) -> Result<(), JsError> {
    #[cfg(feature = "relaxed-simd")]
    {
        use crate::model::q8::{set_dot_form, DotForm};
        let chosen = DotForm::from_name(form)
            .ok_or_else(|| JsError::new(&format!("unknown dot-product form {form:?} (accumulate or pairs)")))?;
        set_dot_form(chosen);
        Ok(())
    }
    #[cfg(not(feature = "relaxed-simd"))]
    Err(JsError::new(&format!("the SIMD128 build has no 8-bit dot products to compute as {form:?}")))
}

/// Threads the CPU backend's products run on: 1, or the pool `initThreadPool` started (threaded build only).
#[wasm_bindgen(js_name = threadCount)]
pub fn thread_count() -> usize {
    crate::model::backend::cpu::team::threads()
}

/// Starts the pool of Web Workers sharing this module's memory (threaded build, cross-origin isolated page).
#[cfg(feature = "threads")]
pub use wasm_bindgen_rayon::init_thread_pool;

/// A Chinese-CLIP encoder living in wasm memory, its towers on WebGPU or on the CPU (WASM SIMD).
#[wasm_bindgen]
pub struct WasmEncoder {
    inner: Encoder,
}

#[wasm_bindgen]
impl WasmEncoder {
    /// `towers`: "text", "vision" or "both". The bytes are `config.json`, `vocab.txt` and
    /// `model.safetensors` of a model in the HF layout. Runs on the CPU (see `load` for the GPU).
    #[wasm_bindgen(constructor)]
    pub fn new(config_json: &[u8], vocab_txt: &[u8], weights: Vec<u8>, towers: &str) -> Result<WasmEncoder, JsError> {
        let inner = Encoder::from_bytes(config_json, vocab_txt, weights, parse_towers(towers)?).map_err(js_error)?;
        Ok(Self { inner })
    }

    /// Like the constructor, on `backend`: "auto" (WebGPU unless the only adapter is a CPU emulation such as
    /// SwiftShader), "cpu" or "gpu" (any WebGPU adapter; an error without one).
    pub async fn load(config_json: Vec<u8>, vocab_txt: Vec<u8>, weights: Vec<u8>, towers: String, backend: String) -> Result<WasmEncoder, JsError> {
        let at = placement(&backend).await?;
        let inner = Encoder::from_bytes_on(&config_json, &vocab_txt, weights, parse_towers(&towers)?, at).map_err(js_error)?;
        Ok(Self { inner })
    }

    /// Loads a tuwen GGUF (`tuwen quantize`): one tower or both, config and vocabulary inside; `backend` as
    /// for `load`.
    #[wasm_bindgen(js_name = fromGguf)]
    pub async fn from_gguf(bytes: Vec<u8>, towers: String, backend: String) -> Result<WasmEncoder, JsError> {
        let at = placement(&backend).await?;
        let inner = Encoder::from_gguf_bytes_on(&bytes, parse_towers(&towers)?, at).map_err(js_error)?;
        Ok(Self { inner })
    }

    /// `{backend: "gpu" | "cpu", detail}`: the adapter, or why the encoders are on the CPU (it changes when a
    /// lost GPU makes them fall back).
    #[wasm_bindgen(getter)]
    pub fn backend(&self) -> Result<JsValue, JsError> {
        serde_wasm_bindgen::to_value(&self.inner.backend()).map_err(|e| JsError::new(&e.to_string()))
    }

    /// The L2-normalised embedding of a text (a `Float32Array`).
    #[wasm_bindgen(js_name = embedText)]
    pub async fn embed_text(&self, text: String) -> Result<Vec<f32>, JsError> {
        Ok(self.inner.embed_texts_async(&[text]).await.map_err(js_error)?.remove(0))
    }

    /// The L2-normalised embedding of an encoded image (JPEG, PNG, WebP, GIF, BMP, TIFF).
    #[wasm_bindgen(js_name = embedImage)]
    pub async fn embed_image(&self, bytes: Vec<u8>, name: String) -> Result<Vec<f32>, JsError> {
        self.inner.embed_image_bytes_async(&bytes, &name).await.map_err(js_error)
    }

    /// Indexes one of the visitor's photos (encoded bytes): one decode gives the model input and a ≤ 256 px
    /// JPEG thumbnail; the embedding comes back in the site's int8 storage. Errors name the file and say why
    /// (empty, truncated, over the decode limits, not an image).
    #[wasm_bindgen(js_name = indexPhoto)]
    pub async fn index_photo(&self, bytes: Vec<u8>, name: String) -> Result<IndexedPhoto, JsError> {
        let (pixels, thumbnail) =
            crate::preprocess::preprocess_with_thumbnail(&bytes, &name, self.inner.preprocess_config()).map_err(js_error)?;
        drop(bytes);
        self.indexed(pixels, thumbnail).await
    }

    /// `indexPhoto` for pixels the browser decoded (formats this crate does not read: AVIF, HEIC), as
    /// non-premultiplied RGBA: resized, normalised and thumbnailed by the same code as every other photo.
    #[wasm_bindgen(js_name = indexRgba)]
    pub async fn index_rgba(&self, rgba: Vec<u8>, width: u32, height: u32, name: String) -> Result<IndexedPhoto, JsError> {
        let image = crate::preprocess::from_rgba(rgba, width, height, &name).map_err(js_error)?;
        let thumbnail = crate::preprocess::thumbnail_jpeg(&image, &name).map_err(js_error)?;
        let pixels = crate::preprocess::prepare(image, false, self.inner.preprocess_config());
        self.indexed(pixels, thumbnail).await
    }

    async fn indexed(&self, pixels: crate::preprocess::Pixels, thumbnail: Vec<u8>) -> Result<IndexedPhoto, JsError> {
        let row = self.inner.embed_pixels_async(&[pixels]).await.map_err(js_error)?.remove(0);
        let stored = QuantizedRow::of(&row);
        Ok(IndexedPhoto { values: stored.values, scale: stored.scale, thumbnail })
    }

    /// The model preprocessed pixels of an encoded image (3 × size × size floats, channel-major): what
    /// `indexPhoto` feeds the encoder (tests compare the browser's decode with the crate's).
    #[wasm_bindgen(js_name = preprocessImage)]
    pub fn preprocess_image(&self, bytes: &[u8], name: &str) -> Result<Vec<f32>, JsError> {
        Ok(crate::preprocess::preprocess(bytes, name, self.inner.preprocess_config()).map_err(js_error)?.data)
    }

    /// `preprocessImage` for browser-decoded RGBA pixels (as `indexRgba` runs it).
    #[wasm_bindgen(js_name = preprocessRgba)]
    pub fn preprocess_rgba(&self, rgba: Vec<u8>, width: u32, height: u32, name: &str) -> Result<Vec<f32>, JsError> {
        let image = crate::preprocess::from_rgba(rgba, width, height, name).map_err(js_error)?;
        Ok(crate::preprocess::prepare(image, false, self.inner.preprocess_config()).data)
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

/// True when the crate decodes the format these bytes start with; the page hands other images (AVIF, HEIC)
/// to the browser's decoder and indexes its pixels (`indexRgba`).
#[wasm_bindgen(js_name = crateDecodes)]
pub fn crate_decodes(head: &[u8]) -> bool {
    crate::preprocess::decodes_format(head)
}

/// An embedding in the int8 storage of bundles: `values[i] × scale`.
struct QuantizedRow {
    values: Vec<i8>,
    scale: f32,
}

impl QuantizedRow {
    fn of(row: &[f32]) -> Self {
        let mut values = Vec::with_capacity(row.len());
        let scale = crate::bundle::quantize_row(row, &mut values);
        Self { values, scale }
    }
}

/// A photo the page indexed: its embedding (int8 values and their scale, as bundles store them) and thumbnail.
#[wasm_bindgen]
pub struct IndexedPhoto {
    values: Vec<i8>,
    scale: f32,
    thumbnail: Vec<u8>,
}

#[wasm_bindgen]
impl IndexedPhoto {
    /// The embedding's int8 values (an `Int8Array`).
    #[wasm_bindgen(getter)]
    pub fn values(&self) -> Vec<i8> {
        self.values.clone()
    }

    #[wasm_bindgen(getter)]
    pub fn scale(&self) -> f32 {
        self.scale
    }

    /// A JPEG at most 256 px on its longer side (a `Uint8Array`).
    #[wasm_bindgen(getter)]
    pub fn thumbnail(&self) -> Vec<u8> {
        self.thumbnail.clone()
    }
}

/// An image bundle of the visitor's photos from their stored rows (`count` rows of int8 `values`, one scale
/// each), made by the model `stamp` (`{fingerprint, dtype, random_weights?}`, the site manifest's `model`):
/// the file `tuwen search --bundle` and the Teddy tasks read, and what the page searches.
#[wasm_bindgen(js_name = photoBundle)]
pub fn photo_bundle(ids: Vec<String>, values: &[i8], scales: &[f32], stamp: JsValue) -> Result<Vec<u8>, JsError> {
    let model: ModelStamp = serde_wasm_bindgen::from_value(stamp).map_err(|e| JsError::new(&format!("model stamp: {e}")))?;
    if scales.len() != ids.len() || (!ids.is_empty() && values.len() % ids.len() != 0) {
        return Err(JsError::new(&format!("{} ids, {} scales and {} values do not make rows", ids.len(), scales.len(), values.len())));
    }
    let dim = if ids.is_empty() { 0 } else { values.len() / ids.len() };
    let rows: Vec<Vec<f32>> = if dim == 0 {
        Vec::new()
    } else {
        values.chunks(dim).zip(scales).map(|(row, &scale)| row.iter().map(|&q| q as f32 * scale).collect()).collect()
    };
    let bundle = NewBundle { kind: Kind::Image, storage: Storage::Int8, model, ids: &ids, captions: None, rows: &rows, shard: None, source: None };
    bundle.to_bytes().map_err(js_error)
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

    /// Errors unless this bundle holds image embeddings made by the model `stamp` (the site manifest's
    /// `model`): a bundle to import as the visitor's photos.
    #[wasm_bindgen(js_name = checkPhotos)]
    pub fn check_photos(&self, stamp: JsValue, what: &str) -> Result<(), JsError> {
        let model: ModelStamp = serde_wasm_bindgen::from_value(stamp).map_err(|e| JsError::new(&format!("model stamp: {e}")))?;
        self.inner.check_kind(Kind::Image, what).map_err(js_error)?;
        self.inner.check_model(&model, what).map_err(js_error)
    }

    /// Row `index` in the int8 storage (`{values, scale}`, thumbnail empty): an imported bundle's rows as
    /// the page stores photos.
    #[wasm_bindgen(js_name = storedRow)]
    pub fn stored_row(&self, index: usize) -> Result<IndexedPhoto, JsError> {
        let row = self.row(index)?;
        let stored = QuantizedRow::of(&row);
        Ok(IndexedPhoto { values: stored.values, scale: stored.scale, thumbnail: Vec::new() })
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
