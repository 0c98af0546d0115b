//! The native test suite as one binary (one link, one process of parallel tests): a module per area.
//! `tests/q8_fidelity.rs` is a binary of its own (it breaks the q8_0 product process-wide on purpose) and
//! `tests/web.rs` runs in headless Chromium.

#[path = "../common/mod.rs"]
mod common;

mod bad_input;
mod cli;
mod cn_clip;
mod containment;
mod cpu;
mod deps;
#[cfg(feature = "cli")] // a PostgreSQL gallery: the CLI's
mod db;
mod fuzz;
mod gpu;
mod hardening;
mod layers;
mod parity;
mod preprocess;
mod quantize;
mod site;
mod slurm;
mod teddy;
mod tokenizer;
