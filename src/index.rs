//! Building bundles from image folders and caption lists: batched, parallel decoding, resumable.
//!
//! Progress is appended to a journal (`<out>.partial`) after every batch and synced, so a run killed at
//! any point (even SIGKILL) continues where it stopped when started again with the same inputs: no
//! item is lost or embedded twice. Unreadable images are skipped and listed, never fatal.

use crate::bundle::{Bundle, Kind, ModelStamp, NewBundle, Storage};
use crate::preprocess::preprocess;
use crate::util::with_suffix;
use crate::Encoder;
use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use std::io::{BufReader, Read, Seek, Write};
use std::path::{Path, PathBuf};

/// What to embed.
pub enum Items {
    /// Image files `dir/id`, with the size and modification time each had when listed (`Items::images`).
    Images { dir: PathBuf, ids: Vec<String>, files: Vec<FileStamp> },
    /// Texts with their ids.
    Texts { ids: Vec<String>, captions: Vec<String> },
}

/// What identifies a file's contents cheaply (as make and rsync do): its length and modification time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FileStamp {
    pub len: u64,
    pub modified_ns: i128,
}

impl FileStamp {
    /// The stamp of `path`; a file that cannot be read gets the zero stamp (it is skipped when embedded,
    /// and a later fix changes its stamp, so the next run retries it).
    pub fn of(path: &Path) -> Self {
        let Ok(meta) = std::fs::metadata(path) else { return Self::default() };
        let modified_ns = meta
            .modified()
            .ok()
            .and_then(|t| match t.duration_since(std::time::UNIX_EPOCH) {
                Ok(d) => Some(d.as_nanos() as i128),
                Err(e) => Some(-(e.duration().as_nanos() as i128)),
            })
            .unwrap_or(0);
        Self { len: meta.len(), modified_ns }
    }
}

/// Bumped whenever decoding or resizing changes what pixels an image file gives.
const PREPROCESS_RECIPE: &str = "tuwen.preprocess/1 bicubic-no-crop alpha-over-white";

impl Items {
    /// Image files of `dir`, stamped now: the stamps key the reuse of earlier work on these files.
    pub fn images(dir: &Path, ids: Vec<String>) -> Self {
        let files = ids.par_iter().map(|id| FileStamp::of(&dir.join(id))).collect();
        Items::Images { dir: dir.to_path_buf(), ids, files }
    }
}

impl Items {
    fn len(&self) -> usize {
        match self {
            Items::Images { ids, .. } | Items::Texts { ids, .. } => ids.len(),
        }
    }

    fn ids(&self) -> &[String] {
        match self {
            Items::Images { ids, .. } | Items::Texts { ids, .. } => ids,
        }
    }

    fn kind(&self) -> Kind {
        match self {
            Items::Images { .. } => Kind::Image,
            Items::Texts { .. } => Kind::Text,
        }
    }

    /// Identifies the full input list (before sharding) and everything besides the model's weights that
    /// decides its embeddings: ids, captions, each image file's length and modification time, and how
    /// `encoder` turns them into model input (preprocessing; the tokenizer's vocabulary). Work is reused
    /// only under the same hash.
    pub fn source_hash(&self, encoder: &Encoder) -> Result<String> {
        let mut h = Sha256::new();
        let mut part = |bytes: &[u8]| {
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        };
        part(format!("{:?}", self.kind()).as_bytes());
        for id in self.ids() {
            part(id.as_bytes());
        }
        match self {
            Items::Texts { captions, .. } => {
                for c in captions {
                    part(c.as_bytes());
                }
                let tokenizer = encoder.tokenizer()?;
                part(format!("context {}", tokenizer.context_length()).as_bytes());
                for token in tokenizer.vocab_lines() {
                    part(token.as_bytes());
                }
            }
            Items::Images { files, .. } => {
                for f in files {
                    part(&f.len.to_le_bytes());
                    part(&f.modified_ns.to_le_bytes());
                }
                part(format!("{PREPROCESS_RECIPE} {:?}", encoder.preprocess_config()).as_bytes());
            }
        }
        Ok(format!("sha256:{}", crate::util::hex(&h.finalize())))
    }
}

/// `--shard i/n`: the i-th of n contiguous slices of the input list (0-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl std::str::FromStr for Shard {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let (i, n) = s.split_once('/').context("a shard is written i/n, e.g. 0/4")?;
        let (index, count): (usize, usize) = (i.trim().parse()?, n.trim().parse()?);
        if count == 0 || index >= count {
            bail!("shard {s}: need 0 ≤ i < n");
        }
        Ok(Self { index, count })
    }
}

impl Shard {
    fn range(&self, len: usize) -> std::ops::Range<usize> {
        self.index * len / self.count..(self.index + 1) * len / self.count
    }
}

pub struct IndexJob<'a> {
    pub encoder: &'a Encoder,
    pub items: Items,
    pub out: PathBuf,
    pub storage: Storage,
    pub shard: Option<Shard>,
    /// Draw a progress bar on stderr (when it is a terminal).
    pub progress: bool,
}

#[derive(Debug)]
pub struct IndexReport {
    pub out: PathBuf,
    pub embedded: usize,
    /// Items done by an earlier, interrupted run.
    pub resumed: usize,
    pub skipped: Vec<(String, String)>,
    /// `<out>.skipped.csv` when something was skipped.
    pub skipped_report: Option<PathBuf>,
    pub seconds: f64,
}

impl std::fmt::Display for IndexReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} embedded", self.out.display(), self.embedded)?;
        if self.resumed > 0 {
            write!(f, " ({} of them by an earlier run)", self.resumed)?;
        }
        write!(f, ", {} skipped", self.skipped.len())?;
        if let Some(r) = &self.skipped_report {
            write!(f, " (listed in {})", r.display())?;
        }
        let fresh = self.embedded + self.skipped.len() - self.resumed;
        write!(f, " in {:.1} s ({:.1}/s)", self.seconds, fresh as f64 / self.seconds.max(1e-9))
    }
}

/// One journal entry: position in this shard's item list, then an embedding or a reason.
enum Entry {
    Embedded(Vec<f32>),
    Skipped(String),
}

const JOURNAL_MAGIC: u8 = 0xA5;
/// The longest skip reason a journal entry may hold (longer ones are cut when written).
const MAX_REASON_BYTES: usize = 64 << 10;

#[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
struct JournalHeader {
    journal: String,
    source: String,
    model: String,
    shard: Option<(usize, usize)>,
    count: usize,
    dim: usize,
}

struct Journal {
    file: std::fs::File,
    path: PathBuf,
}

impl Journal {
    /// Opens (resuming) or creates the journal; returns it with the entries already recorded.
    fn open(path: &Path, header: &JournalHeader) -> Result<(Self, Vec<Option<Entry>>)> {
        let mut entries: Vec<Option<Entry>> = (0..header.count).map(|_| None).collect();
        let header_line = serde_json::to_string(header)? + "\n";
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        if path.exists() {
            let mut file = std::fs::OpenOptions::new().read(true).write(true).open(path)
                .with_context(|| format!("opening {}", path.display()))?;
            let good_end = Self::read(&mut file, path, &header_line, header.dim, &mut entries)?;
            file.set_len(good_end)?;
            file.seek(std::io::SeekFrom::End(0))?;
            return Ok((Self { file, path: path.to_path_buf() }, entries));
        }
        let mut file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        file.write_all(header_line.as_bytes())?;
        file.sync_data()?;
        Ok((Self { file, path: path.to_path_buf() }, entries))
    }

    /// Reads complete entries; returns the offset after the last one (a torn last write is dropped).
    fn read(file: &mut std::fs::File, path: &Path, header_line: &str, dim: usize, entries: &mut [Option<Entry>]) -> Result<u64> {
        let mut reader = BufReader::new(file);
        let mut first = vec![0u8; header_line.len()];
        if reader.read_exact(&mut first).is_err() || first != header_line.as_bytes() {
            bail!(
                "{} is left from an interrupted run with other inputs, model or options: delete it to start over, \
                 or rerun that command to finish it",
                path.display()
            );
        }
        let mut offset = header_line.len() as u64;
        loop {
            let mut head = [0u8; 6];
            if reader.read_exact(&mut head).is_err() || head[0] != JOURNAL_MAGIC {
                break;
            }
            let pos = u32::from_le_bytes(head[1..5].try_into().unwrap()) as usize;
            let entry = match head[5] {
                0 => {
                    let mut buf = vec![0u8; dim * 4];
                    if reader.read_exact(&mut buf).is_err() {
                        break;
                    }
                    offset += buf.len() as u64;
                    Entry::Embedded(buf.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect())
                }
                1 => {
                    let mut len = [0u8; 4];
                    if reader.read_exact(&mut len).is_err() {
                        break;
                    }
                    let len = u32::from_le_bytes(len) as usize;
                    // A reason is a short message: a huge length is a damaged entry, not an allocation to make.
                    if len > MAX_REASON_BYTES {
                        break;
                    }
                    let mut buf = vec![0u8; len];
                    if reader.read_exact(&mut buf).is_err() {
                        break;
                    }
                    offset += 4 + buf.len() as u64;
                    Entry::Skipped(String::from_utf8_lossy(&buf).into_owned())
                }
                _ => break,
            };
            if pos >= entries.len() {
                break;
            }
            offset += 6;
            entries[pos] = Some(entry);
        }
        Ok(offset)
    }

    /// Appends a batch and syncs it to disk before returning.
    fn append(&mut self, batch: &[(usize, Entry)]) -> Result<()> {
        let mut buf = Vec::new();
        for (pos, entry) in batch {
            buf.push(JOURNAL_MAGIC);
            buf.extend((*pos as u32).to_le_bytes());
            match entry {
                Entry::Embedded(v) => {
                    buf.push(0);
                    v.iter().for_each(|x| buf.extend(x.to_le_bytes()));
                }
                Entry::Skipped(reason) => {
                    let mut end = reason.len().min(MAX_REASON_BYTES);
                    while !reason.is_char_boundary(end) {
                        end -= 1;
                    }
                    buf.push(1);
                    buf.extend((end as u32).to_le_bytes());
                    buf.extend(&reason.as_bytes()[..end]);
                }
            }
        }
        self.file.write_all(&buf).with_context(|| format!("writing {}", self.path.display()))?;
        self.file.sync_data().with_context(|| format!("syncing {}", self.path.display()))
    }
}

/// Items embedded per journal write.
const IMAGE_CHUNK: usize = 32;
const TEXT_CHUNK: usize = 256;

impl IndexJob<'_> {
    pub fn run(self) -> Result<IndexReport> {
        let source = self.items.source_hash(self.encoder)?;
        self.run_with_source(source)
    }

    /// `run` for a caller that already hashed the items' sources (`Items::source_hash`).
    pub fn run_with_source(self, source: String) -> Result<IndexReport> {
        let start = std::time::Instant::now();
        let stamp = self.encoder.stamp()?;
        let range = self.shard.map_or(0..self.items.len(), |s| s.range(self.items.len()));
        let positions: Vec<usize> = range.collect();
        let header = JournalHeader {
            journal: "tuwen.index/1".into(),
            source: source.clone(),
            model: stamp.fingerprint.clone(),
            shard: self.shard.map(|s| (s.index, s.count)),
            count: positions.len(),
            dim: self.encoder.info.projection_dim,
        };
        let _lock = crate::util::OutputLock::take(&self.out)?;
        let journal_path = with_suffix(&self.out, ".partial");
        let (mut journal, mut entries) = Journal::open(&journal_path, &header)?;
        let resumed = entries.iter().filter(|e| matches!(e, Some(Entry::Embedded(_)))).count();
        let todo: Vec<usize> = (0..positions.len()).filter(|&p| entries[p].is_none()).collect();

        let bar = indicatif::ProgressBar::new(positions.len() as u64);
        if self.progress {
            bar.set_style(
                indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {per_sec} ETA {eta}")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            bar.set_message(format!("indexing {:?}", self.items.kind()).to_lowercase());
            bar.set_position((positions.len() - todo.len()) as u64);
            bar.reset_eta();
        } else {
            bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        let chunk = if matches!(self.items, Items::Images { .. }) { IMAGE_CHUNK } else { TEXT_CHUNK };
        for batch in todo.chunks(chunk) {
            let done = self.embed_batch(batch.iter().map(|&p| positions[p]).collect())?;
            let done: Vec<(usize, Entry)> = batch.iter().copied().zip(done).collect();
            journal.append(&done)?;
            for (p, e) in done {
                entries[p] = Some(e);
            }
            bar.inc(batch.len() as u64);
        }
        bar.finish_and_clear();

        let ids = self.items.ids();
        let (mut out_ids, mut rows, mut captions, mut skipped) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (p, entry) in entries.into_iter().enumerate() {
            let item = positions[p];
            match entry.expect("every position is done") {
                Entry::Embedded(v) => {
                    out_ids.push(ids[item].clone());
                    if let Items::Texts { captions: c, .. } = &self.items {
                        captions.push(c[item].clone());
                    }
                    rows.push(v);
                }
                Entry::Skipped(reason) => skipped.push((ids[item].clone(), reason)),
            }
        }
        NewBundle {
            kind: self.items.kind(),
            storage: self.storage,
            model: stamp,
            ids: &out_ids,
            captions: matches!(self.items, Items::Texts { .. }).then_some(&captions[..]),
            rows: &rows,
            shard: header.shard,
            source: Some(source),
        }
        .write(&self.out)?;
        let skipped_report = write_skipped(&self.out, &skipped)?;
        std::fs::remove_file(&journal_path).with_context(|| format!("removing {}", journal_path.display()))?;
        Ok(IndexReport {
            out: self.out,
            embedded: rows.len(),
            resumed,
            skipped,
            skipped_report,
            seconds: start.elapsed().as_secs_f64(),
        })
    }

    fn embed_batch(&self, items: Vec<usize>) -> Result<Vec<Entry>> {
        match &self.items {
            Items::Texts { captions, .. } => {
                let texts: Vec<&str> = items.iter().map(|&i| captions[i].as_str()).collect();
                Ok(self.encoder.embed_texts(&texts)?.into_iter().map(Entry::Embedded).collect())
            }
            Items::Images { dir, ids, .. } => {
                let config = self.encoder.preprocess_config();
                // Decoding and resizing dominate for large photos: spread them over all cores.
                let decoded: Vec<Result<_>> = items
                    .par_iter()
                    .map(|&i| {
                        let path = dir.join(&ids[i]);
                        let bytes = crate::preprocess::read_image_file(&path)?;
                        preprocess(&bytes, &ids[i], config)
                    })
                    .collect();
                let pixels: Vec<_> = decoded.iter().filter_map(|d| d.as_ref().ok().cloned()).collect();
                let mut embedded = self.encoder.embed_pixels(&pixels)?.into_iter();
                Ok(decoded
                    .into_iter()
                    .map(|d| match d {
                        Ok(_) => Entry::Embedded(embedded.next().expect("one embedding per decoded image")),
                        Err(e) => Entry::Skipped(format!("{e:#}")),
                    })
                    .collect())
            }
        }
    }
}

/// `<out>.skipped.csv` (`id,reason`) when items were skipped; removes a stale one otherwise.
fn write_skipped(out: &Path, skipped: &[(String, String)]) -> Result<Option<PathBuf>> {
    let path = with_suffix(out, ".skipped.csv");
    if skipped.is_empty() {
        let _ = std::fs::remove_file(&path);
        return Ok(None);
    }
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(["id", "reason"])?;
    for (id, reason) in skipped {
        w.write_record([id, reason])?;
    }
    crate::util::write_atomic(&path, &w.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?)?;
    Ok(Some(path))
}

/// Joins the shards of one `--shard i/n` run into the bundle a single run would have written.
pub fn merge(inputs: &[PathBuf], out: &Path) -> Result<usize> {
    let mut shards: Vec<(usize, &PathBuf, Bundle)> = Vec::new();
    for path in inputs {
        let b = Bundle::open(path)?;
        let (i, n) = b.header.shard.with_context(|| format!("{} is not a shard (made without --shard)", path.display()))?;
        if let Some((_, first, f)) = shards.first() {
            let (h, fh) = (&b.header, &f.header);
            if h.source != fh.source || h.shard.map(|s| s.1) != Some(fh.shard.unwrap().1) {
                bail!("{} and {} are shards of different inputs", path.display(), first.display());
            }
            if h.model != fh.model || h.kind != fh.kind || h.storage != fh.storage || h.dim != fh.dim {
                bail!("{} and {} were made with different models or options", path.display(), first.display());
            }
        }
        if let Some((_, other, _)) = shards.iter().find(|(j, _, _)| *j == i) {
            bail!("{} and {} are both shard {i}/{n}", path.display(), other.display());
        }
        shards.push((i, path, b));
    }
    let n = shards.first().and_then(|s| s.2.header.shard).map(|s| s.1).context("no shards given")?;
    let missing: Vec<String> = (0..n).filter(|i| !shards.iter().any(|s| s.0 == *i)).map(|i| format!("{i}/{n}")).collect();
    if !missing.is_empty() {
        bail!("missing shard(s) {}", missing.join(", "));
    }
    shards.sort_by_key(|s| s.0);
    let (mut ids, mut captions, mut rows) = (Vec::new(), Vec::new(), Vec::new());
    for (_, _, b) in &shards {
        ids.extend(b.ids.iter().cloned());
        if let Some(c) = &b.captions {
            captions.extend(c.iter().cloned());
        }
        rows.extend((0..b.len()).map(|i| b.row(i)));
    }
    let first = &shards[0].2.header;
    NewBundle {
        kind: first.kind,
        storage: first.storage,
        model: first.model.clone(),
        ids: &ids,
        captions: shards[0].2.captions.is_some().then_some(&captions[..]),
        rows: &rows,
        shard: None,
        source: first.source.clone(),
    }
    .write(out)?;
    Ok(ids.len())
}

/// The model stamp a bundle must carry to be searched with `encoder`.
pub fn require_model(bundle: &Bundle, encoder: &Encoder, what: &str) -> Result<ModelStamp> {
    let stamp = encoder.stamp()?;
    bundle.check_model(&stamp, what)?;
    Ok(stamp)
}
