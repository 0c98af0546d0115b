//! The Teddy Cup 2024 B tasks end to end: index (or reuse) bundles, search, write `result1.csv` /
//! `result2.csv` in the exact templates, and Recall@K.

use crate::bundle::{Bundle, Kind, Storage};
use crate::gallery::{ensure_bundle, Gallery};
use crate::index::Items;
use crate::search::{top_k_many, Rerank};
use crate::gallery::files;
use crate::Encoder;
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

/// The `result1.csv` header (text → image).
pub const RESULT1_HEADER: [&str; 3] = ["text_id", "similarity_ranking", "result_image_id"];
/// The `result2.csv` header (image → text).
pub const RESULT2_HEADER: [&str; 3] = ["image_id", "similarity_ranking", "result_text_id"];
/// Results per query in both tasks.
pub const RESULTS_PER_QUERY: usize = 5;

/// Options shared by the jobs.
pub struct JobOptions {
    /// Where intermediate bundles live; a killed job resumes from them.
    pub work: PathBuf,
    pub storage: Storage,
    pub rerank: Rerank,
    pub progress: bool,
}

impl JobOptions {
    /// The bundle for `items` in the work folder, as `name`: reused, resumed or built.
    fn bundle(&self, encoder: &Encoder, items: Items, name: &str) -> Result<Bundle> {
        ensure_bundle(encoder, items, &self.work.join(name), self.storage, self.progress)
    }
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
        Some(dir) => files::read_image_list(list, dir),
        None => files::read_ids(list, "image_id"),
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
    image_gallery: Option<Gallery>,
    out: &Path,
    opts: &JobOptions,
) -> Result<usize> {
    let mut inputs = vec![texts_csv];
    inputs.extend(image_list.into_iter().chain(image_gallery.as_ref().and_then(Gallery::path)));
    crate::util::refuse_overwriting(out, &inputs)?;
    let texts = files::read_captions(texts_csv, "text_id")?;
    let gallery = match (image_gallery, images) {
        (Some(given), _) => {
            given.check(&encoder.stamp()?, Some(Kind::Image))?;
            let (bundle, name) = given.into_bundle()?;
            match image_list {
                Some(list) => bundle.select(&list_ids(list, images)?, &name)?,
                None => bundle,
            }
        }
        (None, Some(dir)) => {
            let ids = match image_list {
                Some(list) => files::read_image_list(list, dir)?,
                None => files::list_images(dir)?,
            };
            opts.bundle(encoder, Items::images(dir, ids), "images.bundle")?
        }
        (None, None) => bail!("task 1 needs the gallery: --images DIR (with --image-list) or --image-bundle"),
    };
    let (ids, captions) = texts.into_iter().unzip();
    let queries = opts.bundle(encoder, Items::Texts { ids, captions }, "queries.bundle")?;
    let results = rank(&queries, &gallery, RESULTS_PER_QUERY, opts.rerank)?;
    write_results(out, RESULT1_HEADER, &results)?;
    Ok(results.len())
}

/// Task 2 (image → text): `result2.csv` for the images of `image_test.csv`. The texts are `word_data.csv`
/// when given: a text bundle is narrowed to its ids and must hold the same captions.
pub fn task2(
    encoder: &Encoder,
    image_list: &Path,
    images: &Path,
    texts_csv: Option<&Path>,
    text_gallery: Option<Gallery>,
    out: &Path,
    opts: &JobOptions,
) -> Result<usize> {
    let mut inputs = vec![image_list];
    inputs.extend(texts_csv.into_iter().chain(text_gallery.as_ref().and_then(Gallery::path)));
    crate::util::refuse_overwriting(out, &inputs)?;
    let ids = files::read_image_list(image_list, images)?;
    let gallery = match (text_gallery, texts_csv) {
        (Some(given), texts) => {
            given.check(&encoder.stamp()?, Some(Kind::Text))?;
            let (bundle, name) = given.into_bundle()?;
            match texts {
                Some(csv) => narrow_texts(&bundle, &files::read_captions(csv, "text_id")?, &name, csv)?,
                None => bundle,
            }
        }
        (None, Some(csv)) => {
            let (ids, captions) = files::read_captions(csv, "text_id")?.into_iter().unzip();
            opts.bundle(encoder, Items::Texts { ids, captions }, "texts.bundle")?
        }
        (None, None) => bail!("task 2 needs the texts: --texts word_data.csv or --text-bundle"),
    };
    let queries_path = opts.work.join("queries.bundle");
    let queries = ensure_bundle(encoder, Items::images(images, ids.clone()), &queries_path, opts.storage, opts.progress)?;
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
    write_results(out, RESULT2_HEADER, &results)?;
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
    let rows = files::read_pairs(pairs, images)?;
    let ids: Vec<String> = rows.iter().map(|(id, _)| id.clone()).collect();
    let image_bundle =
        opts.bundle(encoder, Items::images(images, ids.clone()), "eval-images.bundle")?;
    // Texts are keyed by their image's id (unique, checked above).
    let (tids, captions) = rows.into_iter().unzip();
    let text_bundle = opts.bundle(encoder, Items::Texts { ids: tids, captions }, "eval-texts.bundle")?;
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
    let truth_images: Vec<usize> = matched.iter().map(|p| p.1).collect();
    let truth_texts: Vec<usize> = matched.iter().map(|p| p.0).collect();
    Ok(EvalReport::from_hits(&t2i, &truth_images, &i2t, &truth_texts))
}

impl EvalReport {
    /// Recall@1/5/10 both ways from the ranked hits of each query and the index of its true match.
    fn from_hits(t2i: &[Vec<crate::search::Hit>], truth_images: &[usize], i2t: &[Vec<crate::search::Hit>], truth_texts: &[usize]) -> Self {
        let recalls = |hits: &[Vec<crate::search::Hit>], truth: &[usize]| {
            let ranked: Vec<Vec<usize>> = hits.iter().map(|h| h.iter().map(|x| x.index).collect()).collect();
            Recalls { r1: recall_at(&ranked, truth, 1), r5: recall_at(&ranked, truth, 5), r10: recall_at(&ranked, truth, 10) }
        };
        let (text_to_image, image_to_text) = (recalls(t2i, truth_images), recalls(i2t, truth_texts));
        let mean_recall = [&text_to_image, &image_to_text].iter().map(|r| r.r1 + r.r5 + r.r10).sum::<f64>() / 6.0;
        Self { text_to_image, image_to_text, mean_recall, n: truth_images.len() }
    }
}

/// One model of a fused evaluation, with its weight.
pub struct FusedModel<'a> {
    pub name: String,
    pub encoder: &'a Encoder,
    pub weight: f32,
}

/// Recall of each model alone and of their fusion, over the same pairs.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FusedEvalReport {
    pub models: Vec<(String, EvalReport)>,
    pub fusion: String,
    pub fused: EvalReport,
}

impl std::fmt::Display for FusedEvalReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (name, report) in &self.models {
            writeln!(f, "{name}\n{report}\n")?;
        }
        write!(f, "fused ({})\n{}", self.fusion, self.fused)
    }
}

/// `eval` for several models and their fusion (`fusion`: its name, for the report). Each model embeds into a
/// work folder of its own (keyed on its fingerprint); pairs are those every model could embed.
pub fn eval_fused(
    models: &[FusedModel],
    pairs: &Path,
    images: &Path,
    opts: &JobOptions,
    fusion: crate::search::Fusion,
    fusion_name: &str,
) -> Result<FusedEvalReport> {
    let listed = files::read_pairs(pairs, images)?;
    let ids: Vec<String> = listed.iter().map(|(id, _)| id.clone()).collect();
    let (tids, captions): (Vec<String>, Vec<String>) = listed.into_iter().unzip();
    let mut bundles = Vec::new();
    for model in models {
        let fingerprint = model.encoder.stamp()?.fingerprint;
        let key: String = fingerprint.trim_start_matches("sha256:").chars().take(16).collect();
        let own = JobOptions { work: opts.work.join(format!("model-{key}")), ..*opts };
        let image = own.bundle(model.encoder, Items::images(images, ids.clone()), "eval-images.bundle")?;
        let text = own.bundle(model.encoder, Items::Texts { ids: tids.clone(), captions: captions.clone() }, "eval-texts.bundle")?;
        bundles.push((image, text));
    }
    // The pairs every model embedded, in the CSV's order.
    let embedded: Vec<(std::collections::HashSet<&String>, std::collections::HashSet<&String>)> =
        bundles.iter().map(|(i, t)| (i.ids.iter().collect(), t.ids.iter().collect())).collect();
    let common: Vec<String> =
        ids.iter().filter(|id| embedded.iter().all(|(i, t)| i.contains(id) && t.contains(id))).cloned().collect();
    let n = common.len();
    if n == 0 {
        bail!("{}: no pair could be evaluated (no image could be read)", pairs.display());
    }
    let aligned: Vec<(Bundle, Bundle)> = bundles
        .iter()
        .map(|(i, t)| Ok((i.select(&common, "the image bundle")?, t.select(&common, "the text bundle")?)))
        .collect::<Result<_>>()?;
    let k = 10.min(n);
    let truth: Vec<usize> = (0..n).collect();
    let report = |t2i: Vec<Vec<crate::search::Hit>>, i2t: Vec<Vec<crate::search::Hit>>| EvalReport::from_hits(&t2i, &truth, &i2t, &truth);
    let mut each = Vec::new();
    let queries: Vec<(Vec<Vec<f32>>, Vec<Vec<f32>>)> = aligned.iter().map(|(i, t)| (rows(t), rows(i))).collect();
    for (model, ((image, text), (text_q, image_q))) in models.iter().zip(aligned.iter().zip(&queries)) {
        let t2i = top_k_many(&image.rows(), image.dim(), text_q, k, opts.rerank)?;
        let i2t = top_k_many(&text.rows(), text.dim(), image_q, k, opts.rerank)?;
        each.push((model.name.clone(), report(t2i, i2t)));
    }
    let image_rows: Vec<_> = aligned.iter().map(|(i, _)| i.rows()).collect();
    let text_rows: Vec<_> = aligned.iter().map(|(_, t)| t.rows()).collect();
    let dims = |pick: fn(&(Bundle, Bundle)) -> &Bundle| aligned.iter().map(|p| pick(p).dim()).collect::<Vec<_>>();
    let t2i_sides = sides(&image_rows, &dims(|p| &p.0), queries.iter().map(|q| q.0.as_slice()).collect(), models);
    let i2t_sides = sides(&text_rows, &dims(|p| &p.1), queries.iter().map(|q| q.1.as_slice()).collect(), models);
    let t2i = crate::search::top_k_fused(&t2i_sides, k, fusion, opts.rerank)?;
    let i2t = crate::search::top_k_fused(&i2t_sides, k, fusion, opts.rerank)?;
    Ok(FusedEvalReport { models: each, fusion: fusion_name.to_string(), fused: report(t2i, i2t) })
}

/// Each model's gallery, width, queries and weight, for `top_k_fused`.
fn sides<'a>(
    rows: &'a [crate::bundle::Rows<'a>],
    dims: &[usize],
    queries: Vec<&'a [Vec<f32>]>,
    models: &[FusedModel],
) -> Vec<crate::search::Side<'a>> {
    rows.iter()
        .zip(dims)
        .zip(queries)
        .zip(models)
        .map(|(((rows, &dim), queries), m)| crate::search::Side { rows, dim, queries, weight: m.weight })
        .collect()
}

fn rows_of(bundle: &Bundle, indices: impl Iterator<Item = usize>) -> Vec<Vec<f32>> {
    indices.map(|i| bundle.row(i)).collect()
}

/// The default work folder beside an output file: `<out>.work`.
pub fn work_beside(out: &Path) -> PathBuf {
    crate::util::with_suffix(out, ".work")
}

/// Writes a result CSV: `header`, then `RESULTS_PER_QUERY` rows per query, ranks 1…5 (atomically).
pub fn write_results(path: &Path, header: [&str; 3], results: &[(String, Vec<String>)]) -> Result<()> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    writer.write_record(header)?;
    for (query, hits) in results {
        if hits.len() < RESULTS_PER_QUERY {
            bail!("query {query:?} has only {} results (the gallery is smaller than {RESULTS_PER_QUERY})", hits.len());
        }
        for (rank, hit) in hits.iter().take(RESULTS_PER_QUERY).enumerate() {
            writer.write_record([query.as_str(), &(rank + 1).to_string(), hit.as_str()])?;
        }
    }
    let bytes = writer.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?;
    crate::util::write_atomic(path, &bytes)
}

/// Recall@K for queries whose one true match is `truth[q]`, given each query's ranked gallery indices.
pub fn recall_at(ranked: &[Vec<usize>], truth: &[usize], k: usize) -> f64 {
    if ranked.is_empty() {
        return 0.0;
    }
    let hits = ranked.iter().zip(truth).filter(|(r, t)| r.iter().take(k).any(|i| i == *t)).count();
    hits as f64 / ranked.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recall_counts_the_true_match_within_k() {
        let ranked = vec![vec![3, 1, 2], vec![0, 2, 1], vec![2, 0, 1]];
        let truth = [1, 0, 1];
        assert_eq!(recall_at(&ranked, &truth, 1), 1.0 / 3.0);
        assert_eq!(recall_at(&ranked, &truth, 2), 2.0 / 3.0);
        assert_eq!(recall_at(&ranked, &truth, 3), 1.0);
    }
}
