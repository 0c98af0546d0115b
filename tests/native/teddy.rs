//! Bundles, indexing, search and the Teddy Cup tasks through the CLI, on generated data (and on the
//! real sample when ../shared is present). Rankings and recalls are recomputed independently here.

use crate::common;
use common::cli::*;
use common::*;
use half::f16;
use std::path::{Path, PathBuf};
use std::process::Command;
use tuwen::{Encoder, Towers};

fn read_result(path: &Path) -> (Vec<String>, Vec<[String; 3]>) {
    let text = std::fs::read_to_string(path).expect("result is UTF-8");
    let mut r = csv::Reader::from_reader(text.as_bytes());
    let header = r.headers().unwrap().iter().map(String::from).collect();
    let rows = r.records().map(|x| x.unwrap()).map(|x| [x[0].into(), x[1].into(), x[2].into()]).collect();
    (header, rows)
}

fn f16_round(v: &[f32]) -> Vec<f32> {
    v.iter().map(|x| f16::from_f32(*x).to_f32()).collect()
}

/// Top-5 ids by cosine, computed here without tuwen's search.
fn brute_top5(query: &[f32], gallery: &[(String, Vec<f32>)]) -> Vec<String> {
    let mut scored: Vec<(f32, &String)> =
        gallery.iter().map(|(id, e)| (e.iter().zip(query).map(|(a, b)| a * b).sum(), id)).collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    scored.into_iter().take(5).map(|x| x.1.clone()).collect()
}

#[test]
fn task1_and_task2_write_the_templates_with_the_right_rankings() {
    let d = competition();
    let model = tiny_model();
    let out1 = d.root.join("result1.csv");
    ok(tuwen(&["task1", "--model", s(&model), "--texts", s(&d.root.join("word_test.csv")), "--image-list",
        s(&d.root.join("image_data.csv")), "--images", s(&d.images), "--out", s(&out1)]));
    let out2 = d.root.join("result2.csv");
    ok(tuwen(&["task2", "--model", s(&model), "--image-list", s(&d.root.join("image_test.csv")), "--images",
        s(&d.images), "--texts", s(&d.root.join("word_data.csv")), "--out", s(&out2)]));

    let encoder = Encoder::from_dir(&model, Towers::Both).unwrap();
    let gallery_images: Vec<(String, Vec<f32>)> =
        d.image_ids.iter().map(|id| (id.clone(), f16_round(&encoder.embed_image_file(&d.images.join(id)).unwrap()))).collect();
    let gallery_texts: Vec<(String, Vec<f32>)> =
        CAPTIONS.iter().enumerate().map(|(i, c)| ((100 + i).to_string(), f16_round(&encoder.embed_text(c).unwrap()))).collect();

    let (header, rows) = read_result(&out1);
    assert_eq!(header, ["text_id", "similarity_ranking", "result_image_id"]);
    assert_eq!(rows.len(), CAPTIONS.len() * 5);
    for (q, caption) in CAPTIONS.iter().enumerate() {
        let chunk = &rows[q * 5..q * 5 + 5];
        assert!(chunk.iter().all(|r| r[0] == (200 + q).to_string()), "every query in order, five rows each");
        assert_eq!(chunk.iter().map(|r| r[1].as_str()).collect::<Vec<_>>(), ["1", "2", "3", "4", "5"]);
        let expected = brute_top5(&f16_round(&encoder.embed_text(caption).unwrap()), &gallery_images);
        assert_eq!(chunk.iter().map(|r| r[2].clone()).collect::<Vec<_>>(), expected, "query {caption:?}");
    }

    let (header, rows) = read_result(&out2);
    assert_eq!(header, ["image_id", "similarity_ranking", "result_text_id"]);
    assert_eq!(rows.len(), 6 * 5);
    for (q, id) in d.image_ids[..6].iter().enumerate() {
        let chunk = &rows[q * 5..q * 5 + 5];
        assert!(chunk.iter().all(|r| &r[0] == id));
        assert_eq!(chunk.iter().map(|r| r[1].as_str()).collect::<Vec<_>>(), ["1", "2", "3", "4", "5"]);
        let expected = brute_top5(&f16_round(&encoder.embed_image_file(&d.images.join(id)).unwrap()), &gallery_texts);
        assert_eq!(chunk.iter().map(|r| r[2].clone()).collect::<Vec<_>>(), expected, "query {id}");
    }

    // With a prebuilt image bundle, task 1 gives the same file without touching the images.
    let bundle = d.root.join("gallery.bundle");
    ok(tuwen(&["index", "images", "--model", s(&model), "--images", s(&d.images), "--list",
        s(&d.root.join("image_data.csv")), "--out", s(&bundle)]));
    let again = d.root.join("again.csv");
    ok(tuwen(&["task1", "--model", s(&model), "--texts", s(&d.root.join("word_test.csv")), "--image-bundle",
        s(&bundle), "--out", s(&again)]));
    assert_eq!(std::fs::read(&out1).unwrap(), std::fs::read(&again).unwrap());
}

/// pairs.csv over the competition images: caption i is CAPTIONS[i % len] + " i".
fn numbered_pairs(d: &Data) -> PathBuf {
    let pairs = d.root.join("pairs.csv");
    let rows: Vec<String> = d.image_ids.iter().zip(CAPTIONS.iter().cycle()).enumerate()
        .map(|(i, (id, c))| format!("{id},\"{c} {i}\"")).collect();
    std::fs::write(&pairs, format!("image_id,caption\n{}\n", rows.join("\n"))).unwrap();
    pairs
}

#[test]
fn eval_recalls_match_an_independent_computation() {
    let d = competition();
    let pairs = numbered_pairs(&d);
    let json = d.root.join("eval.json");
    let model = tiny_model();
    let out = ok(tuwen(&["eval", "--model", s(&model), "--pairs", s(&pairs), "--images", s(&d.images), "--json", s(&json),
        "--work", s(&d.root.join("work"))]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("R@5"));
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();

    let encoder = Encoder::from_dir(&model, Towers::Both).unwrap();
    let images: Vec<Vec<f32>> = d.image_ids.iter().map(|id| f16_round(&encoder.embed_image_file(&d.images.join(id)).unwrap())).collect();
    let texts: Vec<Vec<f32>> = CAPTIONS.iter().cycle().take(d.image_ids.len()).enumerate()
        .map(|(i, c)| f16_round(&encoder.embed_text(&format!("{c} {i}")).unwrap())).collect();
    let recall = |queries: &[Vec<f32>], gallery: &[Vec<f32>], k: usize| {
        let hits = queries.iter().enumerate().filter(|(i, q)| {
            let own: f32 = gallery[*i].iter().zip(q.iter()).map(|(a, b)| a * b).sum();
            // Rank of the true match = 1 + number of strictly better gallery items.
            let better = gallery.iter().filter(|g| g.iter().zip(q.iter()).map(|(a, b)| a * b).sum::<f32>() > own).count();
            better < k
        }).count();
        hits as f64 / queries.len() as f64
    };
    let mut sum = 0.0;
    for (key, q, g) in [("text_to_image", &texts, &images), ("image_to_text", &images, &texts)] {
        for k in [1, 5, 10] {
            let expected = recall(q, g, k);
            let got = report[key][format!("R@{k}")].as_f64().unwrap();
            assert!((got - expected).abs() < 1e-9, "{key} R@{k}: {got} vs {expected}");
            sum += expected;
        }
    }
    assert!((report["mean_recall"].as_f64().unwrap() - sum / 6.0).abs() < 1e-9);
    assert_eq!(report["n"], 12);
}

fn bundle_rows(path: &Path) -> (Vec<String>, Vec<Vec<f32>>) {
    let b = tuwen::bundle::Bundle::open(path).unwrap();
    (b.ids.clone(), (0..b.len()).map(|i| b.row(i)).collect())
}

fn assert_same_bundle(a: &Path, b: &Path) {
    let ((ia, ra), (ib, rb)) = (bundle_rows(a), bundle_rows(b));
    assert_eq!(ia, ib, "same ids in the same order");
    for (x, y) in ra.iter().zip(&rb) {
        assert!(max_abs_diff(x, y) <= 1e-3);
    }
}

#[test]
fn index_resumes_after_sigkill_without_losing_or_repeating_items() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("img");
    make_images(&images, 160, 1400, true);
    let model = tiny_model();
    let out = dir.path().join("g.bundle");
    let partial = dir.path().join("g.bundle.partial");
    let args = ["index", "images", "--model", s(&model), "--images", s(&images), "--out", s(&out)];
    let mut child = Command::new(env!("CARGO_BIN_EXE_tuwen")).args(args).stderr(std::process::Stdio::null()).spawn().unwrap();
    // Kill it once at least one batch is journalled, before it finishes.
    let start = std::time::Instant::now();
    loop {
        let len = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
        if len > 2000 || start.elapsed().as_secs() > 120 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(partial.exists() && !out.exists(), "the run was killed mid-way");
    let resumed = ok(tuwen(&args));
    let log = String::from_utf8_lossy(&resumed.stderr);
    assert!(log.contains("by an earlier run"), "{log}");
    assert!(!partial.exists());

    let single = dir.path().join("single.bundle");
    ok(tuwen(&["index", "images", "--model", s(&model), "--images", s(&images), "--out", s(&single)]));
    assert_same_bundle(&out, &single);
    assert_eq!(bundle_rows(&out).0.len(), 160);
}

#[test]
fn shards_merge_into_the_single_run_and_unreadable_images_are_listed() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("img");
    make_images(&images, 10, 64, false);
    std::fs::write(images.join("broken.jpg"), b"\xFF\xD8\xFF\xE0 not really").unwrap();
    std::fs::write(images.join("empty.png"), b"").unwrap();
    let model = tiny_model();
    let single = dir.path().join("all.bundle");
    let out = ok(tuwen(&["index", "images", "--model", s(&model), "--images", s(&images), "--out", s(&single)]));
    assert!(String::from_utf8_lossy(&out.stderr).contains("10 embedded, 2 skipped"));
    let report = std::fs::read_to_string(dir.path().join("all.bundle.skipped.csv")).unwrap();
    assert!(report.starts_with("id,reason") && report.contains("broken.jpg") && report.contains("empty.png"), "{report}");

    let shards: Vec<PathBuf> = (0..3).map(|i| dir.path().join(format!("s{i}.bundle"))).collect();
    for (i, shard) in shards.iter().enumerate() {
        ok(tuwen(&["index", "images", "--model", s(&model), "--images", s(&images), "--out", s(shard), "--shard", &format!("{i}/3")]));
    }
    let merged = dir.path().join("merged.bundle");
    ok(tuwen(&["index", "merge", "--out", s(&merged), s(&shards[2]), s(&shards[0]), s(&shards[1])]));
    assert_same_bundle(&merged, &single);
    let e = err(tuwen(&["index", "merge", "--out", s(&merged), s(&shards[0]), s(&shards[2])]));
    assert!(e.contains("missing shard(s) 1/3"), "{e}");
    let e = err(tuwen(&["index", "merge", "--out", s(&merged), s(&shards[0]), s(&shards[0])]));
    assert!(e.contains("both shard 0/3"), "{e}");
    let e = err(tuwen(&["index", "merge", "--out", s(&merged), s(&single)]));
    assert!(e.contains("not a shard"), "{e}");
}

#[test]
fn search_prints_rank_id_score_caption_and_checks_the_bundle() {
    let d = competition();
    let model = tiny_model();
    let texts = d.root.join("texts.bundle");
    for storage in ["f16", "int8"] {
        ok(tuwen(&["index", "texts", "--model", s(&model), "--csv", s(&d.root.join("word_data.csv")), "--out", s(&texts), "--storage", storage]));
        let out = ok(tuwen(&["search", "--model", s(&model), "--bundle", s(&texts), "--text", "海边的日落与帆船", "-k", "3"]));
        let lines: Vec<Vec<String>> = String::from_utf8(out.stdout).unwrap().lines().map(|l| l.split('\t').map(String::from).collect()).collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0], ["1", "101", &lines[0][2], "海边的日落与帆船"], "{storage}: the caption finds itself");
        assert!((lines[0][2].parse::<f32>().unwrap() - 1.0).abs() < 0.02);
        assert!(lines.iter().all(|l| l.len() == 4), "multi-line captions stay on one line");
    }

    // Damaged, foreign and other-model bundles are refused with a clear reason.
    let bytes = std::fs::read(&texts).unwrap();
    let bad = d.root.join("bad.bundle");
    let search = |b: &Path, m: &Path| tuwen(&["search", "--model", s(m), "--bundle", s(b), "--text", "猫"]);
    std::fs::write(&bad, &bytes[..bytes.len() - 10]).unwrap();
    assert!(err(search(&bad, &model)).contains("bad.bundle"));
    let mut tampered = bytes.clone();
    let at = tampered.len() - 7;
    tampered[at] ^= 0x40;
    std::fs::write(&bad, &tampered).unwrap();
    assert!(err(search(&bad, &model)).contains("corrupt"));
    let e = err(search(&model.join("model.safetensors"), &model));
    assert!(e.contains("not a tuwen bundle"), "{e}");
    std::fs::write(&bad, b"hello").unwrap();
    assert!(err(search(&bad, &model)).contains("not a tuwen bundle"));
    let e = err(search(&texts, &fixtures().join("tiny-bin")));
    assert!(e.contains("another model"), "{e}");
}

#[test]
fn bad_competition_files_are_named_with_their_line() {
    let d = competition();
    let model = tiny_model();
    let run1 = |texts: &Path| tuwen(&["task1", "--model", s(&model), "--texts", s(texts), "--image-list",
        s(&d.root.join("image_data.csv")), "--images", s(&d.images), "--out", s(&d.root.join("r.csv"))]);
    let write = |name: &str, body: &str| {
        let p = d.root.join(name);
        std::fs::write(&p, body).unwrap();
        p
    };
    let e = err(run1(&write("a.csv", "id,caption\n1,猫\n")));
    assert!(e.contains("a.csv") && e.contains("missing column \"text_id\""), "{e}");
    let e = err(run1(&write("b.csv", "text_id,caption\n1,猫\n2,\"多行\n说明\"\n1,狗\n")));
    assert!(e.contains("b.csv") && e.contains("line 5") && e.contains("duplicate text_id \"1\""), "{e}");
    let e = err(run1(&write("c.csv", "text_id,caption\n1,猫\n2,  \n")));
    assert!(e.contains("c.csv") && e.contains("line 3") && e.contains("empty caption"), "{e}");
    let list = write("list.csv", "image_id\nimg000.png\nnope.jpg\n");
    let e = err(tuwen(&["task1", "--model", s(&model), "--texts", s(&d.root.join("word_test.csv")), "--image-list", s(&list),
        "--images", s(&d.images), "--out", s(&d.root.join("r.csv"))]));
    assert!(e.contains("list.csv") && e.contains("line 3: nope.jpg"), "{e}");
    assert!(!d.root.join("r.csv").exists(), "no partial result is written");
}

#[test]
fn the_real_sample_indexes_and_evaluates() {
    let Some(shared) = shared("data/teddy2024-sample/ImageWordData.csv") else { return };
    let sample = shared.join("data/teddy2024-sample");
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("r.json");
    ok(tuwen(&["eval", "--model", s(&tiny_model()), "--pairs", s(&sample.join("ImageWordData.csv")), "--images",
        s(&sample.join("ImageData")), "--json", s(&json), "--work", s(dir.path())]));
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["n"], 300, "all 300 real images (L, P, RGBA, RGB) are read");
    for key in ["text_to_image", "image_to_text"] {
        let (r1, r5, r10) = (report[key]["R@1"].as_f64().unwrap(), report[key]["R@5"].as_f64().unwrap(), report[key]["R@10"].as_f64().unwrap());
        assert!((0.0..=1.0).contains(&r1) && r1 <= r5 && r5 <= r10);
    }
}

/// z-scores of one query's scores over the gallery (population standard deviation).
fn zscores(scores: &[f32]) -> Vec<f64> {
    let n = scores.len() as f64;
    let mean = scores.iter().map(|&s| s as f64).sum::<f64>() / n;
    let std = (scores.iter().map(|&s| (s as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
    scores.iter().map(|&s| (s as f64 - mean) / std).collect()
}

/// 1-based ranks, best first, ties to the lower index.
fn ranks(scores: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let mut rank = vec![0; scores.len()];
    for (r, &j) in order.iter().enumerate() {
        rank[j] = r + 1;
    }
    rank
}

#[test]
fn fused_rankings_match_an_independent_computation() {
    use tuwen::search::{to_f16, top_k_fused, Fusion, Side, Rerank};
    // Two models of different widths over the same 300 items, 70 queries (more than one block of them).
    let unit = |seed: u64, dim: usize| {
        let v = common::ops::values(seed, dim);
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        f16_round(&v.iter().map(|x| x / n).collect::<Vec<f32>>())
    };
    let (n, m, k) = (300, 70, 7);
    let models: Vec<(usize, f32)> = vec![(16, 1.0), (24, 2.5)];
    let galleries: Vec<Vec<Vec<f32>>> = models.iter().enumerate().map(|(s, (d, _))| (0..n).map(|i| unit(1000 * s as u64 + i as u64, *d)).collect()).collect();
    let queries: Vec<Vec<Vec<f32>>> = models.iter().enumerate().map(|(s, (d, _))| (0..m).map(|i| unit(9_000_000 + 1000 * s as u64 + i as u64, *d)).collect()).collect();
    let stored: Vec<Vec<f16>> = galleries.iter().map(|g| to_f16(&g.iter().flatten().copied().collect::<Vec<f32>>())).collect();
    let rows: Vec<tuwen::bundle::Rows> = stored.iter().map(|s| tuwen::bundle::Rows::F16(s)).collect();
    let sides = |weights: &[f32]| -> Vec<Side> {
        rows.iter().zip(&queries).zip(&models).zip(weights).map(|(((r, q), (d, _)), w)| Side { rows: r, dim: *d, queries: q, weight: *w }).collect()
    };
    let weights: Vec<f32> = models.iter().map(|(_, w)| *w).collect();
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    for fusion in [Fusion::ZMean, Fusion::Rrf] {
        let got = top_k_fused(&sides(&weights), k, fusion, Rerank::None).unwrap();
        assert_eq!(got.len(), m);
        for q in 0..m {
            let mut fused = vec![0f64; n];
            for (s, w) in weights.iter().enumerate() {
                let scores: Vec<f32> = galleries[s].iter().map(|g| dot(&queries[s][q], g)).collect();
                let part: Vec<f64> = match fusion {
                    Fusion::ZMean => zscores(&scores),
                    Fusion::Rrf => ranks(&scores).iter().map(|&r| 1.0 / (60.0 + r as f64)).collect(),
                };
                let total: f32 = weights.iter().sum();
                for (f, p) in fused.iter_mut().zip(part) {
                    *f += (*w / total) as f64 * p;
                }
            }
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_by(|&a, &b| fused[b].total_cmp(&fused[a]).then(a.cmp(&b)));
            let ours: Vec<usize> = got[q].iter().map(|h| h.index).collect();
            for (r, (a, b)) in ours.iter().zip(&order[..k]).enumerate() {
                // Summation order may swap two items whose fused scores agree to float rounding, never more.
                assert!(a == b || (fused[*a] - fused[*b]).abs() < 1e-5, "{fusion:?} query {q} rank {r}: {ours:?} vs {:?}", &order[..k]);
            }
        }
    }
    // One model: the fused ranking is that model's own.
    let single = top_k_fused(&sides(&weights)[..1], k, Fusion::ZMean, Rerank::None).unwrap();
    let plain = tuwen::search::top_k_many(&rows[0], 16, &queries[0], k, Rerank::None).unwrap();
    for (a, b) in single.iter().zip(&plain) {
        assert_eq!(a.iter().map(|h| h.index).collect::<Vec<_>>(), b.iter().map(|h| h.index).collect::<Vec<_>>());
    }
    // Refused: rank fusion with dual softmax, a zero weight, galleries of different items.
    let dual = Rerank::DualSoftmax { temperature: 100.0 };
    assert!(top_k_fused(&sides(&weights), k, Fusion::Rrf, dual).unwrap_err().to_string().contains("zmean"));
    assert!(top_k_fused(&sides(&[1.0, 0.0]), k, Fusion::ZMean, Rerank::None).unwrap_err().to_string().contains("weight"));
    let short = tuwen::bundle::Rows::F16(&stored[1][..24 * 200]);
    let mut uneven = sides(&weights);
    uneven[1].rows = &short;
    assert!(top_k_fused(&uneven, k, Fusion::ZMean, Rerank::None).unwrap_err().to_string().contains("same items"));
    assert_eq!(top_k_fused(&sides(&weights), k, Fusion::ZMean, dual).unwrap().len(), m);
}

#[test]
fn eval_fuses_models_of_different_widths() {
    let d = competition();
    let pairs = numbered_pairs(&d);
    let cn_clip = fixtures().join("cn_clip/vit-fp16.pt");
    let json = d.root.join("fused.json");
    let out = ok(tuwen(&["eval", "--model", s(&tiny_model()), "--model", s(&cn_clip), "--weight", "1", "--weight", "2",
        "--fuse", "rrf", "--pairs", s(&pairs), "--images", s(&d.images), "--json", s(&json), "--work", s(&d.root.join("work"))]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("fused (rrf)") && text.contains("vit-fp16.pt"), "{text}");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["models"].as_array().unwrap().len(), 2);
    assert_eq!(report["fused"]["n"].as_u64().unwrap() as usize, d.image_ids.len());
    // Each model alone reports what a one-model eval reports.
    let alone = d.root.join("alone.json");
    ok(tuwen(&["eval", "--model", s(&cn_clip), "--pairs", s(&pairs), "--images", s(&d.images), "--json", s(&alone),
        "--work", s(&d.root.join("work-alone"))]));
    let alone: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&alone).unwrap()).unwrap();
    assert_eq!(report["models"][1][1], alone);
    let e = err(tuwen(&["eval", "--model", s(&tiny_model()), "--model", s(&cn_clip), "--weight", "1", "--pairs", s(&pairs),
        "--images", s(&d.images)]));
    assert!(e.contains("one weight per model"), "{e}");
}
