//! Galleries in PostgreSQL + pgvector, for galleries bigger than memory or shared by many searchers:
//! `tuwen db push` loads a bundle into a table (`row`, `id`, `caption`, `embedding vector(dim)`) with an HNSW
//! index for cosine distance; `tuwen search --db` asks the index; `task1` / `task2` take the table as their
//! gallery (read back whole: those galleries fit in memory, and the result must equal the bundle's exactly).
//!
//! Each gallery is a table and a `<table>_meta` table beside it (the model's fingerprint, kind, storage,
//! dimension, the bundle's checksum, and `complete` once every row is in): a table made with another model is
//! refused as a bundle is. Pushing upserts batches in row order, each batch one transaction, so a push that
//! was killed resumes after the last committed batch and a rerun never duplicates rows.

use crate::bundle::{Bundle, Kind, ModelStamp, NewBundle, Storage};
use anyhow::{bail, Context, Result};
use postgres::{Client, NoTls};
use std::time::Duration;

/// Rows per transaction while pushing.
const BATCH: usize = 1000;

/// A table name tuwen will put in SQL: lower-case letters, digits and `_`, starting with a letter, at most 50
/// characters (so `<name>_meta` and `<name>_hnsw` stay within PostgreSQL's 63). Nothing else reaches a query.
pub fn check_table(name: &str) -> Result<()> {
    let ok = name.len() <= 50
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !ok {
        bail!("table name {name:?}: use lower-case letters, digits and _ (starting with a letter, at most 50)");
    }
    Ok(())
}

/// Connects with a 10 s connect timeout (a URL may set its own `connect_timeout`).
pub fn connect(url: &str) -> Result<Client> {
    let mut config: postgres::Config = url.parse().with_context(|| format!("{}: not a PostgreSQL URL", redact(url)))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    config.connect(NoTls).with_context(|| format!("connecting to {}", redact(url)))
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[derive(Debug)]
pub struct PushReport {
    pub rows: usize,
    /// Rows already in the table from an earlier, interrupted push of the same bundle.
    pub resumed: usize,
    pub seconds: f64,
}

fn meta(client: &mut Client, table: &str) -> Result<std::collections::HashMap<String, String>> {
    let exists: bool = client.query_one("SELECT to_regclass($1) IS NOT NULL", &[&format!("{table}_meta")])?.get(0);
    if !exists {
        return Ok(Default::default());
    }
    Ok(client.query(&format!("SELECT key, value FROM {table}_meta"), &[])?.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// What a table must record to hold `bundle`'s rows; `checksum` tells one bundle from another.
fn wanted_meta(bundle: &Bundle, checksum: &str) -> Vec<(&'static str, String)> {
    let h = &bundle.header;
    vec![
        ("format", "tuwen.pgvector/1".into()),
        ("fingerprint", h.model.fingerprint.clone()),
        ("dtype", h.model.dtype.clone()),
        ("random_weights", h.model.random_weights.clone().unwrap_or_default()),
        ("kind", format!("{:?}", h.kind).to_lowercase()),
        ("storage", format!("{:?}", h.storage).to_lowercase()),
        ("dim", h.dim.to_string()),
        ("count", h.count.to_string()),
        ("bundle", checksum.to_string()),
    ]
}

/// Loads `bundle` (read from `path`) into `table`, resuming an interrupted push of the same bundle; creates
/// the HNSW index (cosine) at the end.
pub fn push(client: &mut Client, bundle: &Bundle, path: &std::path::Path, table: &str, progress: bool) -> Result<PushReport> {
    check_table(table)?;
    let start = std::time::Instant::now();
    let checksum = crate::weights::fingerprint_file(path)?;
    let wanted = wanted_meta(bundle, &checksum);
    client.batch_execute("CREATE EXTENSION IF NOT EXISTS vector").context("enabling pgvector (CREATE EXTENSION vector)")?;
    let have = meta(client, table)?;
    let same = |k: &str| wanted.iter().find(|(key, _)| *key == k).map(|(_, v)| v) == have.get(k);
    if !have.is_empty() && !same("fingerprint") {
        bail!(
            "table {table} holds embeddings of another model ({}) than {} ({}): push into another table, or drop it",
            have.get("fingerprint").map_or("?", String::as_str),
            path.display(),
            bundle.header.model.fingerprint
        );
    }
    let dim = bundle.dim();
    if have.is_empty() || !wanted.iter().all(|(k, _)| same(k)) {
        // A new table, or another bundle of the same model: start over.
        client.batch_execute(&format!(
            "DROP TABLE IF EXISTS {table}; DROP TABLE IF EXISTS {table}_meta;
             CREATE TABLE {table}_meta (key text PRIMARY KEY, value text NOT NULL);
             CREATE TABLE {table} (row bigint PRIMARY KEY, id text NOT NULL UNIQUE, caption text, embedding vector({dim}) NOT NULL);"
        ))?;
        let mut tx = client.transaction()?;
        for (k, v) in &wanted {
            tx.execute(&format!("INSERT INTO {table}_meta (key, value) VALUES ($1, $2)"), &[k, v])?;
        }
        tx.commit()?;
    }
    // Batches commit in row order: the rows present are 0..done.
    let done: i64 = client.query_one(&format!("SELECT count(*) FROM {table}"), &[])?.get(0);
    let done = done as usize;
    let bar = indicatif::ProgressBar::new(bundle.len() as u64);
    if !progress {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar.set_position(done as u64);
    let insert = format!(
        "INSERT INTO {table} (row, id, caption, embedding) VALUES ($1, $2, $3, $4)
         ON CONFLICT (row) DO UPDATE SET id = excluded.id, caption = excluded.caption, embedding = excluded.embedding"
    );
    for first in (done..bundle.len()).step_by(BATCH) {
        let mut tx = client.transaction()?;
        let statement = tx.prepare(&insert)?;
        for row in first..(first + BATCH).min(bundle.len()) {
            let caption = bundle.captions.as_ref().map(|c| c[row].as_str());
            let embedding = pgvector::Vector::from(bundle.row(row));
            tx.execute(&statement, &[&(row as i64), &bundle.ids[row], &caption, &embedding])
                .with_context(|| format!("inserting row {row} ({:?}) into {table}", bundle.ids[row]))?;
        }
        tx.commit()?;
        bar.set_position((first + BATCH).min(bundle.len()) as u64);
    }
    bar.finish_and_clear();
    client.batch_execute(&format!(
        "CREATE INDEX IF NOT EXISTS {table}_hnsw ON {table} USING hnsw (embedding vector_cosine_ops);
         INSERT INTO {table}_meta (key, value) VALUES ('complete', 'yes') ON CONFLICT (key) DO NOTHING;"
    ))?;
    Ok(PushReport { rows: bundle.len(), resumed: done, seconds: start.elapsed().as_secs_f64() })
}

/// A complete gallery table: its recorded kind, storage, dimension and model, checked against `model`.
pub struct Table {
    pub name: String,
    pub kind: Kind,
    pub storage: Storage,
    pub dim: usize,
    pub count: usize,
    pub model: ModelStamp,
}

/// Opens a complete gallery table made with `model`, holding `kind` when one is required.
pub fn open(client: &mut Client, table: &str, model: &ModelStamp, kind: Option<Kind>) -> Result<Table> {
    check_table(table)?;
    let m = meta(client, table)?;
    if m.get("format").map(String::as_str) != Some("tuwen.pgvector/1") {
        bail!("table {table} is not a tuwen gallery (push one with `tuwen db push`)");
    }
    if m.get("complete").is_none() {
        bail!("table {table} is incomplete (a push was interrupted): run the same `tuwen db push` again");
    }
    let get = |k: &str| m.get(k).cloned().with_context(|| format!("table {table}_meta lacks {k}"));
    let stamp = ModelStamp {
        fingerprint: get("fingerprint")?,
        dtype: get("dtype")?,
        random_weights: Some(get("random_weights")?).filter(|r| !r.is_empty()),
    };
    if stamp.fingerprint != model.fingerprint {
        bail!(
            "table {table} was made with another model ({}, {}) than the one in use ({}, {}): push a bundle of this model",
            stamp.fingerprint,
            stamp.dtype,
            model.fingerprint,
            model.dtype
        );
    }
    let found: Kind = serde_json::from_value(serde_json::Value::String(get("kind")?))?;
    if let Some(kind) = kind.filter(|k| *k != found) {
        bail!("table {table} holds {found:?} embeddings, but {kind:?} embeddings are needed here");
    }
    Ok(Table {
        name: table.to_string(),
        kind: found,
        storage: get("storage")?.parse()?,
        dim: get("dim")?.parse()?,
        count: get("count")?.parse()?,
        model: stamp,
    })
}

/// One hit of a database search.
pub struct DbHit {
    pub id: String,
    pub caption: Option<String>,
    pub score: f32,
}

/// The `k` nearest rows by cosine: through the HNSW index (approximate, `ef_search` candidates), or `exact`
/// (a full scan).
pub fn search(client: &mut Client, table: &Table, query: &[f32], k: usize, exact: bool) -> Result<Vec<DbHit>> {
    if query.len() != table.dim {
        bail!("query has {} dimensions, table {} {}", query.len(), table.name, table.dim);
    }
    if query.iter().any(|x| !x.is_finite()) {
        bail!("the query embedding holds a non-finite value (a damaged model?): nothing to rank by");
    }
    let mut tx = client.transaction()?;
    // SET LOCAL lasts for this transaction only.
    tx.batch_execute(&format!(
        "SET LOCAL hnsw.ef_search = {}; SET LOCAL enable_indexscan = {};",
        (2 * k).max(40),
        if exact { "off" } else { "on" }
    ))?;
    let rows = tx.query(
        &format!("SELECT id, caption, (1 - (embedding <=> $1))::real FROM {} ORDER BY embedding <=> $1, row LIMIT $2", table.name),
        &[&pgvector::Vector::from(query.to_vec()), &(k as i64)],
    )?;
    tx.commit()?;
    Ok(rows.iter().map(|r| DbHit { id: r.get(0), caption: r.get(1), score: r.get::<_, f32>(2).clamp(-1.0, 1.0) }).collect())
}

/// The whole table as an in-memory bundle (rows in their order, stored as pushed): the Teddy tasks rank on it
/// exactly as on the bundle it came from.
pub fn load(client: &mut Client, table: &Table) -> Result<Bundle> {
    let rows = client.query(&format!("SELECT id, caption, embedding FROM {} ORDER BY row", table.name), &[])?;
    if rows.len() != table.count {
        bail!("table {} has {} rows, its record says {}", table.name, rows.len(), table.count);
    }
    let ids: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    let captions: Vec<Option<String>> = rows.iter().map(|r| r.get(1)).collect();
    let embeddings: Vec<Vec<f32>> = rows.iter().map(|r| r.get::<_, pgvector::Vector>(2).to_vec()).collect();
    let captions: Option<Vec<String>> = captions.into_iter().collect();
    let bytes = NewBundle {
        kind: table.kind,
        storage: table.storage,
        model: table.model.clone(),
        ids: &ids,
        captions: captions.as_deref(),
        rows: &embeddings,
        shard: None,
        source: None,
    }
    .to_bytes()?;
    Bundle::from_bytes(bytes)
}
