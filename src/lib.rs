//! tuwen (图文): Chinese image–text retrieval with Chinese-CLIP, natively and in the browser.
//!
//! The modules follow the data path, lowest layer first; a module imports only those of lower layers
//! (ARCHITECTURE.md; `tests/native/layers.rs` checks it):
//! [`config`], [`util`] → [`tokenize`], [`preprocess`], [`bundle`] → [`weights`], [`search`] → [`model`] →
//! [`embed`] → `index`, `db` → `gallery`, `quantize`, `fetch`, `serve` → `apps` (the Teddy tasks, the site)
//! → the shells: `web` (wasm-bindgen) and `src/bin/tuwen.rs`.

pub mod config;
pub mod util;

pub mod bundle;
pub mod preprocess;
pub mod tokenize;

pub mod search;
pub mod weights;

pub mod model;

pub mod embed;

#[cfg(all(feature = "cli", not(target_arch = "wasm32")))]
pub mod db;
#[cfg(not(target_arch = "wasm32"))]
pub mod index;

#[cfg(all(feature = "cli", not(target_arch = "wasm32")))]
pub mod fetch;
#[cfg(not(target_arch = "wasm32"))]
pub mod gallery;
#[cfg(not(target_arch = "wasm32"))]
pub mod quantize;
#[cfg(all(feature = "cli", not(target_arch = "wasm32")))]
pub mod serve;

#[cfg(not(target_arch = "wasm32"))]
pub mod apps;

#[cfg(target_arch = "wasm32")]
pub mod web;

pub use config::Towers;
pub use embed::{Encoder, ModelInfo};
