//! The Teddy Cup jobs end to end: index (or reuse) bundles, search, write result CSVs or recalls.

use crate::bundle::{Bundle, Kind, Storage};
use crate::index::{IndexJob, Items};
use crate::search::{top_k_many, Rerank};
use crate::teddy::{self, RESULTS_PER_QUERY};
use crate::Encoder;
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

/// Options shared by the jobs.
pub struct JobOptions {
    /// Where intermediate bundles live; a killed job resumes from them.
    pub work: PathBuf,
    pub storage: Storage,
    pub rerank: Rerank,
    pub progress: bool,
}

/// The bundle for `items` at `path`: reused when complete and made from the same inputs and model,
/// otherwise (re)built, resuming an interrupted build.
pub fn ensure_bundle(encoder: &Encoder, items: Items, path: &Path, opts: &JobOptions) -> Result<Bundle> {
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
    let report = IndexJob { encoder, items, out: path.to_path_buf(), storage: opts.storage, shard: None, progress: opts.progress }
        .run_with_source(source)?;
    eprintln!("{report}");
    Bundle::open(path)
}

/// A gallery the user gave instead of files to embed: a bundle file (`--image-bundle`, `--text-bundle`), or
/// one already loaded and checked (a database table, `--db`), with the name messages use for it.
pub enum Given {
    File(PathBuf),
    Loaded { bundle: Bundle, name: String },
}

impl Given {
    fn open(self, encoder: &Encoder, kind: Kind) -> Result<(Bundle, String)> {
        match self {
            Given::File(path) => Ok((given_bundle(encoder, &path, kind)?, path.display().to_string())),
            Given::Loaded { bundle, name } => Ok((bundle, name)),
        }
    }

    fn path(&self) -> Option<&Path> {
        match self {
            Given::File(p) => Some(p),
            Given::Loaded { .. } => None,
        }
    }
}

/// A bundle the user passed (`--image-bundle`, `--text-bundle`): must match the model and kind.
pub fn given_bundle(encoder: &Encoder, path: &Path, kind: Kind) -> Result<Bundle> {
    let bundle = Bundle::open(path)?;
    let what = path.display().to_string();
    bundle.check_kind(kind, &what)?;
    bundle.check_model(&encoder.stamp()?, &what)?;
    Ok(bundle)
}

fn rows(bundle: &Bundle) -> Vec<Vec<f32>> {
    (0..bundle.len()).map(|i| bundle.row(i)).collect()
}

/// Top results for every query of `queries` in `gallery`, as ids.
fn rank(queries: &Bundle, gallery: &Bundle, k: usize, rerank: Rerank) -> Result<Vec<(String, Vec<String>)>> {
    if queries.is_empty() {
        return Ok(Vec::new());
    }
    if gallery.len() < k {
        bail!("the gallery has {} entries, fewer than the {k} results each query needs", gallery.len());
    }
    let hits = top_k_many(&gallery.rows(), gallery.dim(), &rows(queries), k, rerank)?;
    Ok(queries
        .ids
        .iter()
        .zip(hits)
        .map(|(q, h)| (q.clone(), h.iter().map(|hit| gallery.ids[hit.index].clone()).collect()))
        .collect())
}

/// Image ids of a list (`image_data.csv`, `image_test.csv`): checked against the files in `images` when the
/// folder is given, else only read (the gallery then comes from a bundle).
fn list_ids(list: &Path, images: Option<&Path>) -> Result<Vec<String>> {
    match images {
        Some(dir) => teddy::read_image_list(list, dir),
        None => teddy::read_ids(list, "image_id"),
    }
}

/// Errors when `queries` has nothing to search with (every query image unreadable, say).
fn require_queries(queries: &Bundle, asked: usize, path: &Path) -> Result<()> {
    if queries.is_empty() {
        let skipped = crate::util::with_suffix(path, ".skipped.csv");
        bail!("none of the {asked} queries could be embedded (the reasons are in {})", skipped.display());
    }
    Ok(())
}

/// Task 1 (text → image): `result1.csv` for the texts of `word_test.csv`. The gallery is the list
/// (`image_data.csv`) when one is given: a bundle that holds more images is narrowed to it, one that lacks
/// some is an error naming them.
pub fn task1(
    encoder: &Encoder,
    texts_csv: &Path,
    image_list: Option<&Path>,
    images: Option<&Path>,
    image_bundle: Option<Given>,
    out: &Path,
    opts: &JobOptions,
) -> Result<usize> {
    let mut inputs = vec![texts_csv];
    inputs.extend(image_list.into_iter().chain(image_bundle.as_ref().and_then(Given::path)));
    crate::util::refuse_overwriting(out, &inputs)?;
    let texts = teddy::read_captions(texts_csv, "text_id")?;
    let gallery = match (image_bundle, images) {
        (Some(given), _) => {
            let (bundle, name) = given.open(encoder, Kind::Image)?;
            match image_list {
                Some(list) => bundle.select(&list_ids(list, images)?, &name)?,
                None => bundle,
            }
        }
        (None, Some(dir)) => {
            let ids = match image_list {
                Some(list) => teddy::read_image_list(list, dir)?,
                None => teddy::list_images(dir)?,
            };
            ensure_bundle(encoder, Items::images(dir, ids), &opts.work.join("images.bundle"), opts)?
        }
        (None, None) => bail!("task 1 needs the gallery: --images DIR (with --image-list) or --image-bundle"),
    };
    let (ids, captions) = texts.into_iter().unzip();
    let queries = ensure_bundle(encoder, Items::Texts { ids, captions }, &opts.work.join("queries.bundle"), opts)?;
    let results = rank(&queries, &gallery, RESULTS_PER_QUERY, opts.rerank)?;
    teddy::write_results(out, teddy::RESULT1_HEADER, &results)?;
    Ok(results.len())
}

/// Task 2 (image → text): `result2.csv` for the images of `image_test.csv`. The texts are `word_data.csv`
/// when given: a text bundle is narrowed to its ids and must hold the same captions.
pub fn task2(
    encoder: &Encoder,
    image_list: &Path,
    images: &Path,
    texts_csv: Option<&Path>,
    text_bundle: Option<Given>,
    out: &Path,
    opts: &JobOptions,
) -> Result<usize> {
    let mut inputs = vec![image_list];
    inputs.extend(texts_csv.into_iter().chain(text_bundle.as_ref().and_then(Given::path)));
    crate::util::refuse_overwriting(out, &inputs)?;
    let ids = teddy::read_image_list(image_list, images)?;
    let gallery = match (text_bundle, texts_csv) {
        (Some(given), texts) => {
            let (bundle, name) = given.open(encoder, Kind::Text)?;
            match texts {
                Some(csv) => narrow_texts(&bundle, &teddy::read_captions(csv, "text_id")?, &name, csv)?,
                None => bundle,
            }
        }
        (None, Some(csv)) => {
            let (ids, captions) = teddy::read_captions(csv, "text_id")?.into_iter().unzip();
            ensure_bundle(encoder, Items::Texts { ids, captions }, &opts.work.join("texts.bundle"), opts)?
        }
        (None, None) => bail!("task 2 needs the texts: --texts word_data.csv or --text-bundle"),
    };
    let queries_path = opts.work.join("queries.bundle");
    let queries = ensure_bundle(encoder, Items::images(images, ids.clone()), &queries_path, opts)?;
    require_queries(&queries, ids.len(), &queries_path)?;
    let mut results = rank(&queries, &gallery, RESULTS_PER_QUERY, opts.rerank)?;
    if results.len() < ids.len() {
        // Unreadable query images (listed in the skipped report) still get rows: the template wants
        // every query; their results are the gallery's most generic texts (the mean query's top 5).
        eprintln!(
            "warning: {} of {} query images could not be read (see {}): their rows hold the most generic texts",
            ids.len() - results.len(),
            ids.len(),
            crate::util::with_suffix(&queries_path, ".skipped.csv").display()
        );
        let mean = mean_row(&queries);
        let fallback = top_k_many(&gallery.rows(), gallery.dim(), &[mean], RESULTS_PER_QUERY, Rerank::None)?;
        let fallback: Vec<String> = fallback[0].iter().map(|h| gallery.ids[h.index].clone()).collect();
        let done: std::collections::HashMap<String, Vec<String>> = results.drain(..).collect();
        results = ids.iter().map(|id| (id.clone(), done.get(id).cloned().unwrap_or_else(|| fallback.clone()))).collect();
    }
    teddy::write_results(out, teddy::RESULT2_HEADER, &results)?;
    Ok(results.len())
}

/// The texts of `csv` out of a text bundle: every id present, with the caption the CSV gives it.
fn narrow_texts(bundle: &Bundle, texts: &[(String, String)], name: &str, csv: &Path) -> Result<Bundle> {
    let ids: Vec<String> = texts.iter().map(|(id, _)| id.clone()).collect();
    let narrowed = bundle.select(&ids, name)?;
    if let Some(captions) = &narrowed.captions {
        if let Some(((id, caption), _)) = texts.iter().zip(captions).find(|((_, a), b)| a != *b) {
            bail!(
                "{name} holds another caption for text {id:?} than {} ({caption:?}): index the texts again",
                csv.display()
            );
        }
    }
    Ok(narrowed)
}

fn mean_row(bundle: &Bundle) -> Vec<f32> {
    let mut mean = vec![0f32; bundle.dim()];
    for i in 0..bundle.len() {
        mean.iter_mut().zip(bundle.row(i)).for_each(|(m, x)| *m += x);
    }
    let norm = mean.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    mean.iter_mut().for_each(|m| *m /= norm);
    mean
}

/// Recall@1/5/10 in both directions.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Recalls {
    #[serde(rename = "R@1")]
    pub r1: f64,
    #[serde(rename = "R@5")]
    pub r5: f64,
    #[serde(rename = "R@10")]
    pub r10: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct EvalReport {
    pub text_to_image: Recalls,
    pub image_to_text: Recalls,
    pub mean_recall: f64,
    /// Pairs evaluated (pairs whose image could not be read are left out and listed by the index).
    pub n: usize,
}

impl std::fmt::Display for EvalReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{:<16} {:>7} {:>7} {:>7}", format!("n = {}", self.n), "R@1", "R@5", "R@10")?;
        for (name, r) in [("text → image", &self.text_to_image), ("image → text", &self.image_to_text)] {
            writeln!(f, "{name:<16} {:>6.2}% {:>6.2}% {:>6.2}%", r.r1 * 100.0, r.r5 * 100.0, r.r10 * 100.0)?;
        }
        write!(f, "mean recall      {:>6.2}%", self.mean_recall * 100.0)
    }
}

/// Evaluates retrieval over `image_id,caption` pairs: each caption's true match is its image and back.
pub fn eval(encoder: &Encoder, pairs: &Path, images: &Path, opts: &JobOptions) -> Result<EvalReport> {
    // read_pairs checks every image id against the folder, naming the CSV line each came from.
    let rows = teddy::read_pairs(pairs, images)?;
    let ids: Vec<String> = rows.iter().map(|(id, _)| id.clone()).collect();
    let image_bundle =
        ensure_bundle(encoder, Items::images(images, ids.clone()), &opts.work.join("eval-images.bundle"), opts)?;
    // Texts are keyed by their image's id (unique, checked above).
    let (tids, captions) = rows.into_iter().unzip();
    let text_bundle = ensure_bundle(encoder, Items::Texts { ids: tids, captions }, &opts.work.join("eval-texts.bundle"), opts)?;
    // Only pairs whose image was embedded take part.
    let image_index: std::collections::HashMap<&String, usize> = image_bundle.ids.iter().zip(0..).collect();
    let text_index: std::collections::HashMap<&String, usize> = text_bundle.ids.iter().zip(0..).collect();
    let matched: Vec<(usize, usize)> =
        ids.iter().filter_map(|id| Some((*text_index.get(id)?, *image_index.get(id)?))).collect();
    let n = matched.len();
    if n == 0 {
        bail!("{}: no pair could be evaluated (no image could be read)", pairs.display());
    }
    let k = 10.min(image_bundle.len()).min(text_bundle.len());
    let text_rows = rows_of(&text_bundle, matched.iter().map(|p| p.0));
    let image_rows = rows_of(&image_bundle, matched.iter().map(|p| p.1));
    let t2i = top_k_many(&image_bundle.rows(), image_bundle.dim(), &text_rows, k, opts.rerank)?;
    let i2t = top_k_many(&text_bundle.rows(), text_bundle.dim(), &image_rows, k, opts.rerank)?;
    let ranked = |hits: Vec<Vec<crate::search::Hit>>| hits.into_iter().map(|h| h.iter().map(|x| x.index).collect()).collect::<Vec<Vec<usize>>>();
    let (t2i, i2t) = (ranked(t2i), ranked(i2t));
    let truth_images: Vec<usize> = matched.iter().map(|p| p.1).collect();
    let truth_texts: Vec<usize> = matched.iter().map(|p| p.0).collect();
    let recalls = |ranked: &[Vec<usize>], truth: &[usize]| Recalls {
        r1: teddy::recall_at(ranked, truth, 1),
        r5: teddy::recall_at(ranked, truth, 5),
        r10: teddy::recall_at(ranked, truth, 10),
    };
    let text_to_image = recalls(&t2i, &truth_images);
    let image_to_text = recalls(&i2t, &truth_texts);
    let all = [&text_to_image, &image_to_text];
    let mean_recall = all.iter().map(|r| r.r1 + r.r5 + r.r10).sum::<f64>() / 6.0;
    Ok(EvalReport { text_to_image, image_to_text, mean_recall, n })
}

fn rows_of(bundle: &Bundle, indices: impl Iterator<Item = usize>) -> Vec<Vec<f32>> {
    indices.map(|i| bundle.row(i)).collect()
}

/// The default work folder beside an output file: `<out>.work`.
pub fn work_beside(out: &Path) -> PathBuf {
    crate::util::with_suffix(out, ".work")
}
