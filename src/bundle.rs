//! Embedding bundles: a gallery's ids, optional captions and L2-normalised embeddings in one
//! safetensors file (format in docs/bundle.md), memory-mapped natively and read from bytes in wasm.

use anyhow::{anyhow, bail, Context, Result};
use half::f16;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use crate::util::hex;

pub const FORMAT: &str = "tuwen.bundle";
/// Version 2 keeps ids and captions in tensors (version 1 kept them in the safetensors header, which
/// readers cap at 100 MB: a few hundred thousand captions). Version 1 files are still read.
pub const VERSION: u32 = 2;

/// What the gallery holds: images (embedded by the vision tower) or texts (by the text tower).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Image,
    Text,
}

/// How embeddings are stored: f16 (default), or int8 with one f32 scale per row (half the size).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    #[default]
    F16,
    Int8,
}

impl std::str::FromStr for Storage {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f16" => Ok(Self::F16),
            "int8" => Ok(Self::Int8),
            other => bail!("unknown storage {other:?} (expected f16 or int8)"),
        }
    }
}

/// The model that made a bundle: queries must come from the same one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelStamp {
    /// `sha256:<hex>` of the model's weights (see `weights::fingerprint`).
    pub fingerprint: String,
    /// The weights' dtype as run (f32 for HF checkpoints).
    pub dtype: String,
    /// Set when the weights are random: searches over this bundle are meaningless.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub random_weights: Option<String>,
}

/// Everything in a bundle's header besides the tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub version: u32,
    pub kind: Kind,
    pub storage: Storage,
    pub count: usize,
    pub dim: usize,
    pub model: ModelStamp,
    /// `Some((i, n))` for shard i of n made by `tuwen index --shard i/n`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<(usize, usize)>,
    /// sha256 of the full input list, so shards of different lists never merge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

enum Bytes {
    #[cfg(not(target_arch = "wasm32"))]
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            #[cfg(not(target_arch = "wasm32"))]
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

/// A loaded bundle. Embedding rows are borrowed from the file (no copy when memory-mapped).
pub struct Bundle {
    pub header: Header,
    pub ids: Vec<String>,
    pub captions: Option<Vec<String>>,
    bytes: Bytes,
    /// Byte ranges of the embedding matrix and (int8) the row scales.
    values: std::ops::Range<usize>,
    scales: Option<std::ops::Range<usize>>,
    /// Copies of the f16 values / f32 scales when they do not lie on their type's alignment in memory
    /// (safetensors does not align tensors; other writers pad the header differently).
    aligned: Aligned,
}

#[derive(Default)]
struct Aligned {
    values: Option<Vec<f16>>,
    scales: Option<Vec<f32>>,
}

impl Aligned {
    /// Copies whatever of `values` (f16 storage) and `scales` is not aligned for reading in place.
    fn for_ranges(bytes: &[u8], storage: Storage, values: &std::ops::Range<usize>, scales: Option<&std::ops::Range<usize>>) -> Self {
        let values = (storage == Storage::F16)
            .then(|| &bytes[values.clone()])
            .filter(|v| bytemuck::try_cast_slice::<u8, f16>(v).is_err())
            .map(|v| v.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]])).collect());
        let scales = scales
            .map(|s| &bytes[s.clone()])
            .filter(|s| bytemuck::try_cast_slice::<u8, f32>(s).is_err())
            .map(|s| s.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect());
        Self { values, scales }
    }
}

/// Borrowed embedding rows in their stored form.
pub enum Rows<'a> {
    F16(&'a [f16]),
    Int8 { values: &'a [i8], scales: &'a [f32] },
}

const META_HEADER: &str = "tuwen.header";
const META_IDS: &str = "tuwen.ids";
const META_CAPTIONS: &str = "tuwen.captions";
const META_SHA256: &str = "tuwen.sha256";
const META_FORMAT: &str = "format";

const T_EMBEDDINGS: &str = "embeddings";
const T_SCALES: &str = "scales";
const T_IDS: &str = "ids";
const T_ID_OFFSETS: &str = "id_offsets";
const T_CAPTIONS: &str = "captions";
const T_CAPTION_OFFSETS: &str = "caption_offsets";
/// The tensors a version 2 checksum covers, in this order (absent ones count as empty).
const V2_HASHED: [&str; 6] = [T_EMBEDDINGS, T_SCALES, T_IDS, T_ID_OFFSETS, T_CAPTIONS, T_CAPTION_OFFSETS];

/// Strings as one UTF-8 byte run and `count + 1` little-endian u64 offsets into it.
fn pack_strings(strings: &[String]) -> (Vec<u8>, Vec<u8>) {
    let mut text = Vec::with_capacity(strings.iter().map(String::len).sum());
    let mut offsets = Vec::with_capacity((strings.len() + 1) * 8);
    offsets.extend(0u64.to_le_bytes());
    for s in strings {
        text.extend_from_slice(s.as_bytes());
        offsets.extend((text.len() as u64).to_le_bytes());
    }
    (text, offsets)
}

/// The strings `pack_strings` packed, checked: offsets in order and inside the text, each piece UTF-8.
fn unpack_strings(text: &[u8], offsets: &[u8], count: usize, what: &str) -> Result<Vec<String>> {
    if offsets.len() != (count + 1) * 8 {
        bail!("bundle {what} offsets hold {} bytes, expected {}", offsets.len(), (count + 1) * 8);
    }
    let at = |i: usize| u64::from_le_bytes(offsets[i * 8..i * 8 + 8].try_into().unwrap());
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let (a, b) = (at(i), at(i + 1));
        if a > b || b > text.len() as u64 {
            bail!("bundle {what} {i}: offsets {a}..{b} are out of order or past the {} bytes of text", text.len());
        }
        let piece = std::str::from_utf8(&text[a as usize..b as usize]).map_err(|_| anyhow!("bundle {what} {i} is not UTF-8"))?;
        out.push(piece.to_string());
    }
    if at(0) != 0 || at(count) != text.len() as u64 {
        bail!("bundle {what} offsets do not span their text");
    }
    Ok(out)
}

/// Version 2 checksum: the header string, then each tensor of `V2_HASHED`, each preceded by its length.
fn integrity_hash_v2<'a>(header_json: &str, tensor: impl Fn(&str) -> Option<&'a [u8]>) -> String {
    let mut h = Sha256::new();
    let mut part = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    part(header_json.as_bytes());
    for name in V2_HASHED {
        part(tensor(name).unwrap_or_default());
    }
    hex(&h.finalize())
}

/// Version 1 checksum (ids and captions in the header).
fn integrity_hash(header_json: &str, ids_json: &str, captions_json: Option<&str>, tensors: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for part in [header_json.as_bytes(), ids_json.as_bytes(), captions_json.unwrap_or("").as_bytes()] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    for t in tensors {
        h.update((t.len() as u64).to_le_bytes());
        h.update(t);
    }
    hex(&h.finalize())
}

/// Stores one f32 row as int8 with a scale, `x ≈ scale · q`: appends the values to `out`, returns the scale.
pub fn quantize_row(row: &[f32], out: &mut Vec<i8>) -> f32 {
    let max = row.iter().fold(0f32, |m, x| m.max(x.abs()));
    let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
    out.extend(row.iter().map(|x| (x / scale).round().clamp(-127.0, 127.0) as i8));
    scale
}

/// A bundle in memory before it is written: rows are L2-normalised f32.
pub struct NewBundle<'a> {
    pub kind: Kind,
    pub storage: Storage,
    pub model: ModelStamp,
    pub ids: &'a [String],
    pub captions: Option<&'a [String]>,
    pub rows: &'a [Vec<f32>],
    pub shard: Option<(usize, usize)>,
    pub source: Option<String>,
}

impl NewBundle<'_> {
    /// The safetensors bytes of the bundle.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let count = self.ids.len();
        if self.rows.len() != count {
            bail!("{} ids but {} embeddings", count, self.rows.len());
        }
        if let Some(c) = self.captions {
            if c.len() != count {
                bail!("{} ids but {} captions", count, c.len());
            }
        }
        let mut seen = std::collections::HashSet::new();
        for id in self.ids {
            if !seen.insert(id) {
                bail!("duplicate id {id:?}");
            }
        }
        let dim = self.rows.first().map_or(0, Vec::len);
        if let Some(bad) = self.rows.iter().position(|r| r.len() != dim) {
            bail!("embedding {} ({}) has {} values, expected {dim}", bad, self.ids[bad], self.rows[bad].len());
        }
        if let Some(bad) = self.rows.iter().position(|r| r.iter().any(|x| !x.is_finite())) {
            bail!("the embedding of {:?} holds a non-finite value: refusing to store it", self.ids[bad]);
        }
        let header = Header {
            version: VERSION,
            kind: self.kind,
            storage: self.storage,
            count,
            dim,
            model: self.model.clone(),
            shard: self.shard,
            source: self.source.clone(),
        };
        let header_json = serde_json::to_string(&header)?;
        let (values, values_dtype, scales): (Vec<u8>, _, Option<Vec<u8>>) = match self.storage {
            Storage::F16 => {
                let v: Vec<f16> = self.rows.iter().flatten().map(|x| f16::from_f32(*x)).collect();
                (bytemuck::cast_slice(&v).to_vec(), safetensors::Dtype::F16, None)
            }
            Storage::Int8 => {
                let mut q = Vec::with_capacity(count * dim);
                let s: Vec<f32> = self.rows.iter().map(|r| quantize_row(r, &mut q)).collect();
                (bytemuck::cast_slice(&q).to_vec(), safetensors::Dtype::I8, Some(s.iter().flat_map(|x| x.to_le_bytes()).collect()))
            }
        };
        let (ids, id_offsets) = pack_strings(self.ids);
        let captions = self.captions.map(pack_strings);
        let mut tensors: Vec<(&str, safetensors::Dtype, Vec<usize>, &[u8])> = vec![
            (T_EMBEDDINGS, values_dtype, vec![count, dim], &values),
            (T_IDS, safetensors::Dtype::U8, vec![ids.len()], &ids),
            (T_ID_OFFSETS, safetensors::Dtype::U64, vec![count + 1], &id_offsets),
        ];
        if let Some(s) = &scales {
            tensors.push((T_SCALES, safetensors::Dtype::F32, vec![count], s));
        }
        if let Some((text, offsets)) = &captions {
            tensors.push((T_CAPTIONS, safetensors::Dtype::U8, vec![text.len()], text));
            tensors.push((T_CAPTION_OFFSETS, safetensors::Dtype::U64, vec![count + 1], offsets));
        }
        let sha = integrity_hash_v2(&header_json, |name| tensors.iter().find(|t| t.0 == name).map(|t| t.3));
        let metadata = HashMap::from([
            (META_FORMAT.to_string(), FORMAT.to_string()),
            (META_HEADER.to_string(), header_json),
            (META_SHA256.to_string(), sha),
        ]);
        let views = tensors
            .iter()
            .map(|(name, dtype, shape, data)| Ok((name.to_string(), safetensors::tensor::TensorView::new(*dtype, shape.clone(), data)?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(safetensors::serialize(views, Some(metadata))?)
    }

    /// Writes atomically (temporary file, then rename): a crash never leaves a half-written bundle.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn write(&self, path: &std::path::Path) -> Result<()> {
        let bytes = self.to_bytes().with_context(|| format!("building bundle {}", path.display()))?;
        crate::util::write_atomic(path, &bytes)
    }
}

impl Bundle {
    /// Memory-maps and verifies a bundle file.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open(path: &std::path::Path) -> Result<Self> {
        if path.is_dir() {
            bail!("{} is a directory, not a bundle file (bundles are single .bundle files written by `tuwen index`)", path.display());
        }
        let file = std::fs::File::open(path).with_context(|| format!("opening bundle {}", path.display()))?;
        // SAFETY: mapped read-only; bundles are replaced by rename, never rewritten in place.
        let map = unsafe { memmap2::Mmap::map(&file) }.with_context(|| format!("mapping {}", path.display()))?;
        Self::parse(Bytes::Mapped(map)).with_context(|| format!("{}", path.display()))
    }

    /// Reads and verifies a bundle from bytes (the browser).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        Self::parse(Bytes::Owned(bytes))
    }

    fn parse(bytes: Bytes) -> Result<Self> {
        let not_bundle = "not a tuwen bundle (expected a safetensors file written by `tuwen index`)";
        if bytes.len() < 8 {
            bail!("{not_bundle}: only {} bytes", bytes.len());
        }
        let (header_len, meta) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| anyhow!("{not_bundle}, or truncated: {e}"))?;
        let metadata = meta.metadata().clone().unwrap_or_default();
        if metadata.get(META_FORMAT).map(String::as_str) != Some(FORMAT) {
            bail!("{not_bundle}: a safetensors file without the tuwen bundle marker");
        }
        let get = |k: &str| metadata.get(k).ok_or_else(|| anyhow!("bundle header lacks {k}"));
        let header_json = get(META_HEADER)?;
        let version: serde_json::Value = serde_json::from_str(header_json).context("bundle header is not JSON")?;
        let version_number = version.get("version").and_then(|v| v.as_u64());
        if !matches!(version_number, Some(1) | Some(2)) {
            bail!(
                "bundle format version {} is not supported (this tuwen reads versions 1 and {VERSION}; a newer tuwen wrote it?)",
                version["version"]
            );
        }
        let header: Header = serde_json::from_value(version).context("bundle header")?;
        let data_start = 8 + header_len;
        let tensors = meta.tensors();
        let range = |name: &str, dtype: safetensors::Dtype, shape: Option<Vec<usize>>| -> Result<std::ops::Range<usize>> {
            let info = tensors.get(name).ok_or_else(|| anyhow!("bundle has no {name} tensor"))?;
            if info.dtype != dtype || shape.as_ref().is_some_and(|s| &info.shape != s) {
                bail!("bundle tensor {name} is {:?} {:?}, expected {dtype:?} {shape:?}", info.dtype, info.shape);
            }
            let (a, b) = info.data_offsets;
            if data_start + b > bytes.len() {
                bail!("bundle is truncated ({} bytes, {name} ends at {})", bytes.len(), data_start + b);
            }
            Ok(data_start + a..data_start + b)
        };
        let (n, d) = (header.count, header.dim);
        let (values, scales) = match header.storage {
            Storage::F16 => (range(T_EMBEDDINGS, safetensors::Dtype::F16, Some(vec![n, d]))?, None),
            Storage::Int8 => (
                range(T_EMBEDDINGS, safetensors::Dtype::I8, Some(vec![n, d]))?,
                Some(range(T_SCALES, safetensors::Dtype::F32, Some(vec![n]))?),
            ),
        };
        let (ids, captions, sha) = if version_number == Some(1) {
            let ids_json = get(META_IDS)?;
            let captions_json = metadata.get(META_CAPTIONS);
            let ids: Vec<String> = serde_json::from_str(ids_json).context("bundle ids")?;
            let captions: Option<Vec<String>> =
                captions_json.map(|c| serde_json::from_str(c)).transpose().context("bundle captions")?;
            let mut tensor_bytes = vec![&bytes[values.clone()]];
            if let Some(s) = &scales {
                tensor_bytes.push(&bytes[s.clone()]);
            }
            (ids, captions, integrity_hash(header_json, ids_json, captions_json.map(String::as_str), &tensor_bytes))
        } else {
            let mut present: HashMap<&str, std::ops::Range<usize>> = HashMap::from([(T_EMBEDDINGS, values.clone())]);
            if let Some(s) = &scales {
                present.insert(T_SCALES, s.clone());
            }
            present.insert(T_IDS, range(T_IDS, safetensors::Dtype::U8, None)?);
            present.insert(T_ID_OFFSETS, range(T_ID_OFFSETS, safetensors::Dtype::U64, Some(vec![n + 1]))?);
            if tensors.contains_key(T_CAPTIONS) {
                present.insert(T_CAPTIONS, range(T_CAPTIONS, safetensors::Dtype::U8, None)?);
                present.insert(T_CAPTION_OFFSETS, range(T_CAPTION_OFFSETS, safetensors::Dtype::U64, Some(vec![n + 1]))?);
            }
            // The checksum first: offsets are only trusted in a file that is what its writer wrote.
            let sha = integrity_hash_v2(header_json, |name| present.get(name).map(|r| &bytes[r.clone()]));
            if Some(&sha) != metadata.get(META_SHA256) {
                bail!("bundle is corrupt: its checksum does not match its contents (modified or damaged)");
            }
            let strings = |text: &str, offsets: &str, what: &str| unpack_strings(&bytes[present[text].clone()], &bytes[present[offsets].clone()], n, what);
            let ids = strings(T_IDS, T_ID_OFFSETS, "id")?;
            let captions = present.contains_key(T_CAPTIONS).then(|| strings(T_CAPTIONS, T_CAPTION_OFFSETS, "caption")).transpose()?;
            (ids, captions, sha)
        };
        if ids.len() != n || captions.as_ref().is_some_and(|c| c.len() != n) {
            bail!("bundle header says {n} entries but lists {} ids", ids.len());
        }
        if Some(&sha) != metadata.get(META_SHA256) {
            bail!("bundle is corrupt: its checksum does not match its contents (modified or damaged)");
        }
        let aligned = Aligned::for_ranges(&bytes, header.storage, &values, scales.as_ref());
        Ok(Self { header, ids, captions, bytes, values, scales, aligned })
    }

    pub fn len(&self) -> usize {
        self.header.count
    }

    pub fn is_empty(&self) -> bool {
        self.header.count == 0
    }

    pub fn dim(&self) -> usize {
        self.header.dim
    }

    pub fn rows(&self) -> Rows<'_> {
        let values = &self.bytes[self.values.clone()];
        // In place when aligned, else the copies `Aligned` made: never a panic on a valid file.
        match &self.scales {
            None => Rows::F16(match &self.aligned.values {
                Some(copy) => copy,
                None => bytemuck::cast_slice(values),
            }),
            Some(s) => Rows::Int8 {
                values: bytemuck::cast_slice(values),
                scales: match &self.aligned.scales {
                    Some(copy) => copy,
                    None => bytemuck::cast_slice(&self.bytes[s.clone()]),
                },
            },
        }
    }

    /// Row `i` as f32.
    pub fn row(&self, i: usize) -> Vec<f32> {
        let d = self.dim();
        match self.rows() {
            Rows::F16(v) => v[i * d..(i + 1) * d].iter().map(|x| x.to_f32()).collect(),
            Rows::Int8 { values, scales } => values[i * d..(i + 1) * d].iter().map(|q| *q as f32 * scales[i]).collect(),
        }
    }

    /// The entries named by `ids`, in that order: a bundle that covers more than a list is narrowed to it.
    /// Errors naming (up to five of) the ids the bundle lacks; `what` names the bundle in messages.
    pub fn select(&self, ids: &[String], what: &str) -> Result<Bundle> {
        let position: HashMap<&str, usize> = self.ids.iter().enumerate().map(|(i, id)| (id.as_str(), i)).collect();
        let missing: Vec<&String> = ids.iter().filter(|id| !position.contains_key(id.as_str())).collect();
        if !missing.is_empty() {
            bail!(
                "{what} lacks {} of the {} listed id(s), e.g. {:?}: index it from this list",
                missing.len(),
                ids.len(),
                missing.iter().take(5).collect::<Vec<_>>()
            );
        }
        let rows: Vec<usize> = ids.iter().map(|id| position[id.as_str()]).collect();
        let d = self.dim();
        let (mut values, mut scales) = (Vec::with_capacity(rows.len() * d * 2), Vec::new());
        let bytes = &self.bytes[self.values.clone()];
        let width = if self.scales.is_some() { 1 } else { 2 };
        for &r in &rows {
            values.extend_from_slice(&bytes[r * d * width..(r + 1) * d * width]);
        }
        if let Some(s) = &self.scales {
            let s = &self.bytes[s.clone()];
            for &r in &rows {
                scales.extend_from_slice(&s[r * 4..(r + 1) * 4]);
            }
        }
        let values_len = values.len();
        // Scales start on a multiple of 4 so they can be read in place.
        values.resize(values_len.next_multiple_of(4), 0);
        let scales_at = values.len();
        values.extend_from_slice(&scales);
        let mut header = self.header.clone();
        header.count = rows.len();
        let (value_range, scale_range) = (0..values_len, self.scales.as_ref().map(|_| scales_at..scales_at + rows.len() * 4));
        Ok(Bundle {
            aligned: Aligned::for_ranges(&values, header.storage, &value_range, scale_range.as_ref()),
            header,
            ids: rows.iter().map(|&r| self.ids[r].clone()).collect(),
            captions: self.captions.as_ref().map(|c| rows.iter().map(|&r| c[r].clone()).collect()),
            values: value_range,
            scales: scale_range,
            bytes: Bytes::Owned(values),
        })
    }

    /// Errors unless queries from `model` can be compared with this bundle.
    pub fn check_model(&self, model: &ModelStamp, what: &str) -> Result<()> {
        if self.header.model.fingerprint != model.fingerprint {
            bail!(
                "{what} was made with another model ({}, {}) than the one in use ({}, {}): re-index it with this model",
                self.header.model.fingerprint,
                self.header.model.dtype,
                model.fingerprint,
                model.dtype
            );
        }
        Ok(())
    }

    pub fn check_kind(&self, kind: Kind, what: &str) -> Result<()> {
        if self.header.kind != kind {
            bail!("{what} holds {:?} embeddings, but {:?} embeddings are needed here", self.header.kind, kind);
        }
        Ok(())
    }
}
