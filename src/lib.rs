//! tuwen (图文): Chinese image–text retrieval with Chinese-CLIP, natively and in the browser.
//!
//! The modules follow the data path: [`tokenize`] / [`preprocess`] → [`model`] → [`embed`].
//! [`weights`] reads and writes models in the Hugging Face layout; `web` is the wasm-bindgen shell.

pub mod bundle;
pub mod config;
#[cfg(all(feature = "cli", not(target_arch = "wasm32")))]
pub mod db;
pub mod embed;
#[cfg(all(feature = "cli", not(target_arch = "wasm32")))]
pub mod fetch;
#[cfg(not(target_arch = "wasm32"))]
pub mod index;
pub mod model;
pub mod preprocess;
pub mod quantize;
pub mod search;
#[cfg(all(feature = "cli", not(target_arch = "wasm32")))]
pub mod serve;
#[cfg(not(target_arch = "wasm32"))]
pub mod site;
#[cfg(not(target_arch = "wasm32"))]
pub mod tasks;
pub mod teddy;
pub mod tokenize;
pub mod parallel;
pub mod util;
pub mod weights;

#[cfg(target_arch = "wasm32")]
pub mod web;

pub use embed::{Encoder, ModelInfo};
pub use model::Towers;
