//! Galleries: the files one is made from ([`files`]: id/caption CSVs, image folders, ids held inside their
//! folder), the bundle built from them (made once, reused while nothing that decides it changed), and
//! [`Gallery`], what a search runs over — a bundle, or a table in PostgreSQL + pgvector. Generic: the Teddy
//! tasks and the site are both built on it, and neither on the other.

pub mod files;

use crate::bundle::{Bundle, Kind, ModelStamp, Storage};
use crate::index::{IndexJob, Items};
use crate::search::top_k;
use crate::Encoder;
use anyhow::Result;
use std::path::{Path, PathBuf};

/// The bundle for `items` at `path`: reused when complete and made from the same inputs and model,
/// otherwise (re)built, resuming an interrupted build.
pub fn ensure_bundle(encoder: &Encoder, items: Items, path: &Path, storage: Storage, progress: bool) -> Result<Bundle> {
    let source = items.source_hash(encoder)?;
    if path.exists() {
        let bundle = Bundle::open(path)?;
        let stamp = encoder.stamp()?;
        if bundle.header.model == stamp && bundle.header.source.as_deref() == Some(&source) {
            eprintln!("reusing {}", path.display());
            return Ok(bundle);
        }
        eprintln!("{} was made from other inputs or another model: rebuilding it", path.display());
    }
    let report =
        IndexJob { encoder, items, out: path.to_path_buf(), storage, shard: None, progress }.run_with_source(source)?;
    eprintln!("{report}");
    Bundle::open(path)
}

/// One search result: the entry's id, its cosine similarity to the query, and its caption (texts).
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    pub id: String,
    pub score: f32,
    pub caption: Option<String>,
}

/// A gallery to search: a bundle (a file the user gave, or one held in memory), or a table in PostgreSQL +
/// pgvector. Checked against the model before use ([`Gallery::check`]).
pub enum Gallery {
    Bundle { bundle: Bundle, path: Option<PathBuf> },
    #[cfg(all(feature = "cli", not(target_arch = "wasm32")))]
    Table { client: postgres::Client, table: crate::db::Table, exact: bool },
}

impl Gallery {
    /// A bundle file, read and verified (its model is checked later, once the model is loaded).
    pub fn open_file(path: &Path) -> Result<Self> {
        Ok(Self::Bundle { bundle: Bundle::open(path)?, path: Some(path.to_path_buf()) })
    }

    /// A gallery table made with `model` (holding `kind` when one is required); `exact` searches scan every
    /// row instead of walking the HNSW index.
    #[cfg(all(feature = "cli", not(target_arch = "wasm32")))]
    pub fn open_table(url: &str, table: &str, model: &ModelStamp, kind: Option<Kind>, exact: bool) -> Result<Self> {
        let mut client = crate::db::connect(url)?;
        let table = crate::db::open(&mut client, table, model, kind)?;
        Ok(Self::Table { client, table, exact })
    }

    /// What messages call it: the bundle's path, or `table NAME`.
    pub fn name(&self) -> String {
        match self {
            Self::Bundle { path: Some(p), .. } => p.display().to_string(),
            Self::Bundle { path: None, .. } => "the gallery".into(),
            #[cfg(all(feature = "cli", not(target_arch = "wasm32")))]
            Self::Table { table, .. } => format!("table {}", table.name),
        }
    }

    /// The file it was read from, if any (an output must never overwrite it).
    pub fn path(&self) -> Option<&Path> {
        match self {
            Self::Bundle { path, .. } => path.as_deref(),
            #[cfg(all(feature = "cli", not(target_arch = "wasm32")))]
            Self::Table { .. } => None,
        }
    }

    /// Errors unless it was made with `model` and holds `kind` (when one is required).
    pub fn check(&self, model: &ModelStamp, kind: Option<Kind>) -> Result<()> {
        match self {
            Self::Bundle { bundle, .. } => {
                let name = self.name();
                if let Some(kind) = kind {
                    bundle.check_kind(kind, &name)?;
                }
                bundle.check_model(model, &name)
            }
            // Checked when opened: a table is opened for one model.
            #[cfg(all(feature = "cli", not(target_arch = "wasm32")))]
            Self::Table { .. } => Ok(()),
        }
    }

    /// How it was searched, for logs: `over N entries`, `(HNSW) over N rows of table T`.
    pub fn describe(&self) -> String {
        match self {
            Self::Bundle { bundle, .. } => format!("over {} entries", bundle.len()),
            #[cfg(all(feature = "cli", not(target_arch = "wasm32")))]
            Self::Table { table, exact, .. } => {
                format!("({}) over {} rows of table {}", if *exact { "exact scan" } else { "HNSW" }, table.count, table.name)
            }
        }
    }

    /// The `k` entries most similar to `query`, best first.
    pub fn search(&mut self, query: &[f32], k: usize) -> Result<Vec<Found>> {
        match self {
            Self::Bundle { bundle, .. } => {
                let hits = top_k(&bundle.rows(), bundle.dim(), query, k)?;
                Ok(hits
                    .iter()
                    .map(|h| Found {
                        id: bundle.ids[h.index].clone(),
                        score: h.score,
                        caption: bundle.captions.as_ref().map(|c| c[h.index].clone()),
                    })
                    .collect())
            }
            #[cfg(all(feature = "cli", not(target_arch = "wasm32")))]
            Self::Table { client, table, exact } => Ok(crate::db::search(client, table, query, k, *exact)?
                .into_iter()
                .map(|h| Found { id: h.id, score: h.score, caption: h.caption })
                .collect()),
        }
    }

    /// Every entry in memory, in its order (a table is read whole), with the gallery's name: the Teddy tasks
    /// rank all queries at once on it, exactly as on the bundle a table was pushed from.
    pub fn into_bundle(self) -> Result<(Bundle, String)> {
        let name = self.name();
        match self {
            Self::Bundle { bundle, .. } => Ok((bundle, name)),
            #[cfg(all(feature = "cli", not(target_arch = "wasm32")))]
            Self::Table { mut client, table, .. } => Ok((crate::db::load(&mut client, &table)?, name)),
        }
    }
}
