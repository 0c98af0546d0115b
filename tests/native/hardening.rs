//! What a hostile or unlucky user hands tuwen, class by class (issue #14): never a wrong result file with
//! exit 0, never stale work reused, never a panic on a valid file, never a lost input, bounded memory and time.

use crate::common;
use common::cli::*;
use common::*;
use std::path::Path;
use tuwen::bundle::{Bundle, Kind, ModelStamp, NewBundle, Storage};
use tuwen::{Encoder, Towers};

fn result_ids(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines().skip(1).map(|l| l.rsplit(',').next().unwrap().to_string()).collect()
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

// 1. Wrong result CSVs with exit 0 -------------------------------------------------------------------------

#[test]
fn the_official_list_is_the_gallery_whatever_the_bundle_holds() {
    let d = competition();
    let model = tiny_model();
    let (texts, word_data) = (d.root.join("word_test.csv"), d.root.join("word_data.csv"));
    // A bundle of all 12 images, a list of 7 of them.
    let bundle = d.root.join("all.bundle");
    ok(tuwen(&["index", "images", "--model", s(&model), "--images", s(&d.images), "--out", s(&bundle)]));
    let listed = &d.image_ids[..7];
    let list = d.root.join("seven.csv");
    write(&list, &format!("image_id\n{}\n", listed.join("\n")));
    let narrowed = d.root.join("narrowed.csv");
    ok(tuwen(&["task1", "--model", s(&model), "--texts", s(&texts), "--image-bundle", s(&bundle), "--image-list",
        s(&list), "--out", s(&narrowed)]));
    assert!(result_ids(&narrowed).iter().all(|id| listed.contains(id)), "every result is in the list");
    // The same file as embedding just the listed images.
    let direct = d.root.join("direct.csv");
    ok(tuwen(&["task1", "--model", s(&model), "--texts", s(&texts), "--images", s(&d.images), "--image-list", s(&list),
        "--out", s(&direct)]));
    assert_eq!(std::fs::read(&narrowed).unwrap(), std::fs::read(&direct).unwrap());
    // A bundle that lacks listed images is an error naming them.
    let small = d.root.join("small.bundle");
    ok(tuwen(&["index", "images", "--model", s(&model), "--images", s(&d.images), "--list", s(&list), "--out", s(&small)]));
    let e = err(tuwen(&["task1", "--model", s(&model), "--texts", s(&texts), "--image-bundle", s(&small), "--image-list",
        s(&d.root.join("image_data.csv")), "--out", s(&d.root.join("x.csv"))]));
    assert!(e.contains("lacks 5") && e.contains(&d.image_ids[11]), "{e}");
    assert!(!d.root.join("x.csv").exists());

    // Task 2: a text bundle narrowed to --texts, and refused when it holds other captions for the same ids.
    let text_bundle = d.root.join("texts.bundle");
    ok(tuwen(&["index", "texts", "--model", s(&model), "--csv", s(&word_data), "--out", s(&text_bundle)]));
    let five = d.root.join("five.csv");
    let rows: Vec<String> = CAPTIONS[..5].iter().enumerate().map(|(i, c)| format!("{},\"{c}\"", 100 + i)).collect();
    write(&five, &format!("text_id,caption\n{}\n", rows.join("\n")));
    let out2 = d.root.join("result2.csv");
    ok(tuwen(&["task2", "--model", s(&model), "--image-list", s(&d.root.join("image_test.csv")), "--images", s(&d.images),
        "--text-bundle", s(&text_bundle), "--texts", s(&five), "--out", s(&out2)]));
    let allowed: Vec<String> = (100..105).map(|i| i.to_string()).collect();
    assert!(result_ids(&out2).iter().all(|id| allowed.contains(id)));
    write(&five, "text_id,caption\n100,另一段完全不同的文字\n101,b\n102,c\n103,d\n104,e\n");
    let e = err(tuwen(&["task2", "--model", s(&model), "--image-list", s(&d.root.join("image_test.csv")), "--images",
        s(&d.images), "--text-bundle", s(&text_bundle), "--texts", s(&five), "--out", s(&out2)]));
    assert!(e.contains("another caption") && e.contains("\"100\""), "{e}");
}

// 2. Stale work reused ---------------------------------------------------------------------------------------

#[test]
fn reuse_follows_the_files_and_retries_what_was_skipped() {
    let d = competition();
    let model = tiny_model();
    let args = |out: &Path, work: &Path| {
        vec!["task1".to_string(), "--model".into(), s(&model).into(), "--texts".into(), s(&d.root.join("word_test.csv")).into(),
            "--image-list".into(), s(&d.root.join("image_data.csv")).into(), "--images".into(), s(&d.images).into(),
            "--out".into(), s(out).into(), "--work".into(), s(work).into()]
    };
    let run = |out: &Path, work: &Path| {
        let a = args(out, work);
        ok(tuwen(&a.iter().map(String::as_str).collect::<Vec<_>>()))
    };
    let (out, work) = (d.root.join("r1.csv"), d.root.join("work"));
    run(&out, &work);
    let stderr = String::from_utf8(run(&out, &work).stderr).unwrap();
    assert!(stderr.contains("reusing"), "an unchanged rerun reuses: {stderr}");

    // Same names, other pixels: the image bundle is rebuilt, and the result equals a fresh run's.
    let victim = d.images.join(&d.image_ids[3]);
    std::fs::copy(d.images.join(&d.image_ids[9]), &victim).unwrap();
    let stderr = String::from_utf8(run(&out, &work).stderr).unwrap();
    assert!(stderr.contains("images.bundle was made from other inputs"), "{stderr}");
    let fresh = d.root.join("fresh.csv");
    run(&fresh, &d.root.join("fresh-work"));
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&fresh).unwrap());

    // An image that failed is retried once fixed.
    let good = std::fs::read(&victim).unwrap();
    write(&victim, "not an image");
    run(&out, &work);
    let images = work.join("images.bundle");
    assert!(!Bundle::open(&images).unwrap().ids.contains(&d.image_ids[3]));
    assert!(std::fs::read_to_string(work.join("images.bundle.skipped.csv")).unwrap().contains(&d.image_ids[3]));
    std::fs::write(&victim, good).unwrap();
    run(&out, &work);
    assert!(Bundle::open(&images).unwrap().ids.contains(&d.image_ids[3]), "the fixed image is embedded on the rerun");
    assert!(!work.join("images.bundle.skipped.csv").exists());

    // eval keeps its work beside --json, not in the current directory.
    let pairs = d.root.join("pairs.csv");
    let rows: Vec<String> = d.image_ids.iter().zip(CAPTIONS.iter().cycle()).map(|(id, c)| format!("{id},\"{c}\"")).collect();
    write(&pairs, &format!("image_id,caption\n{}\n", rows.join("\n")));
    let report = d.root.join("eval/report.json");
    let cwd = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tuwen"))
        .current_dir(cwd.path())
        .args(["eval", "--model", s(&model), "--pairs", s(&pairs), "--images", s(&d.images), "--json", s(&report)])
        .output()
        .unwrap();
    ok(out);
    assert!(d.root.join("eval/report.json.work/eval-images.bundle").is_file());
    assert_eq!(std::fs::read_dir(cwd.path()).unwrap().count(), 0, "nothing written to the current directory");
}

// 3. Valid files that other writers lay out differently -----------------------------------------------------

fn stamp() -> ModelStamp {
    ModelStamp { fingerprint: "sha256:test".into(), dtype: "f32".into(), random_weights: None }
}

fn unit_rows(n: usize, dim: usize) -> Vec<Vec<f32>> {
    (0..n)
        .map(|i| {
            let v: Vec<f32> = (0..dim).map(|j| ((i * 31 + j * 7) % 13) as f32 - 6.0 + 0.5).collect();
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.iter().map(|x| x / norm).collect()
        })
        .collect()
}

/// The same safetensors file with `pad` more spaces in its header: every tensor moves by `pad` bytes.
fn repad(bytes: &[u8], pad: usize) -> Vec<u8> {
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut out = ((len + pad) as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&bytes[8..8 + len]);
    out.extend(std::iter::repeat_n(b' ', pad));
    out.extend_from_slice(&bytes[8 + len..]);
    out
}

#[test]
fn bundles_load_whatever_the_header_padding() {
    // 3 rows of 5: the int8 values end on an odd byte, so the scales after them are unaligned as well.
    let ids: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
    let rows = unit_rows(3, 5);
    for storage in [Storage::F16, Storage::Int8] {
        let bytes = NewBundle { kind: Kind::Image, storage, model: stamp(), ids: &ids, captions: None, rows: &rows, shard: None, source: None }
            .to_bytes()
            .unwrap();
        let expected: Vec<Vec<f32>> = {
            let b = Bundle::from_bytes(bytes.clone()).unwrap();
            (0..3).map(|i| b.row(i)).collect()
        };
        for pad in 1..8 {
            let b = Bundle::from_bytes(repad(&bytes, pad)).unwrap_or_else(|e| panic!("{storage:?} pad {pad}: {e:#}"));
            assert_eq!((0..3).map(|i| b.row(i)).collect::<Vec<_>>(), expected, "{storage:?} pad {pad}");
            let hits = tuwen::search::top_k(&b.rows(), 5, &rows[1], 1).unwrap();
            assert_eq!(hits[0].index, 1);
            assert!(hits[0].score <= 1.0, "cosines are shown within [-1, 1]: {}", hits[0].score);
        }
    }
}

#[test]
fn version_1_bundles_are_still_read() {
    // Written here from the version 1 description in docs/bundle.md (ids and captions in the header).
    use sha2::{Digest, Sha256};
    let (ids, captions) = (vec!["x".to_string(), "y".into()], vec!["一".to_string(), "二".into()]);
    let rows = unit_rows(2, 4);
    let values: Vec<u8> = rows.iter().flatten().flat_map(|x| half::f16::from_f32(*x).to_le_bytes()).collect();
    let header = serde_json::json!({"version": 1, "kind": "text", "storage": "f16", "count": 2, "dim": 4,
        "model": {"fingerprint": "sha256:test", "dtype": "f32"}})
    .to_string();
    let (ids_json, captions_json) = (serde_json::to_string(&ids).unwrap(), serde_json::to_string(&captions).unwrap());
    let mut h = Sha256::new();
    for part in [header.as_bytes(), ids_json.as_bytes(), captions_json.as_bytes(), &values] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    let sha: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    let meta = std::collections::HashMap::from([
        ("format".to_string(), "tuwen.bundle".to_string()),
        ("tuwen.header".into(), header),
        ("tuwen.ids".into(), ids_json),
        ("tuwen.captions".into(), captions_json),
        ("tuwen.sha256".into(), sha),
    ]);
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F16, vec![2, 4], &values).unwrap();
    let bytes = safetensors::serialize([("embeddings", view)], Some(meta)).unwrap();
    let b = Bundle::from_bytes(bytes.clone()).unwrap();
    assert_eq!((b.ids.clone(), b.captions.clone()), (ids, Some(captions)));
    // …and refused when tampered, like version 2.
    let mut bad = bytes;
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert!(format!("{:#}", Bundle::from_bytes(bad).err().unwrap()).contains("checksum"));
}

// 4. Non-finite values --------------------------------------------------------------------------------------

#[test]
fn damaged_weights_are_refused_by_tensor_name() {
    // An HF checkpoint with one NaN.
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "vocab.txt", "preprocessor_config.json"] {
        std::fs::copy(tiny_model().join(f), dir.path().join(f)).unwrap();
    }
    let bytes = std::fs::read(tiny_model().join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let victim = "text_model.encoder.layer.0.output.dense.bias";
    let mut tensors: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> =
        st.tensors().into_iter().map(|(n, t)| (n.clone(), t.dtype(), t.shape().to_vec(), t.data().to_vec())).collect();
    let t = tensors.iter_mut().find(|t| t.0 == victim).expect("the fixture has the tensor");
    t.3[4..8].copy_from_slice(&f32::NAN.to_le_bytes());
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.clone(), safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, &dir.path().join("model.safetensors")).unwrap();
    let e = format!("{:#}", Encoder::from_dir(dir.path(), Towers::Both).err().expect("a NaN weight must not load"));
    assert!(e.contains(victim) && e.contains("non-finite"), "{e}");
    let e = err(tuwen(&["embed", "--model", s(dir.path()), "--text", "猫"]));
    assert!(e.contains(victim), "{e}");

    // A q8_0 GGUF with one block scale turned into NaN (f16 0x7E00).
    use candle_core::quantized::gguf_file;
    let gguf = tiny_q8_0_gguf();
    let content = gguf_file::Content::read(&mut std::io::Cursor::new(&gguf)).unwrap();
    // The first encoder matrix by name (`tensor_infos` is a HashMap: `find` on it picked a different tensor
    // from run to run, sometimes the word embeddings, which are refused by another check with other words).
    let (name, info) = content
        .tensor_infos
        .iter()
        .filter(|(n, i)| i.ggml_dtype == candle_core::quantized::GgmlDType::Q8_0 && n.contains(".encoder.layer"))
        .min_by_key(|(n, _)| n.as_str())
        .expect("a q8_0 matrix");
    let at = content.tensor_data_offset as usize + info.offset as usize + 34; // the second block's scale
    let mut damaged = gguf.clone();
    damaged[at..at + 2].copy_from_slice(&[0x00, 0x7E]);
    let e = format!("{:#}", Encoder::from_gguf_bytes(&damaged, Towers::Both).err().expect("a NaN scale must not load"));
    assert!(e.contains(name.as_str()) && e.contains("not finite"), "{e}");
}

#[test]
fn non_finite_embeddings_are_never_stored_or_ranked() {
    let ids = vec!["a".to_string(), "b".into()];
    let mut rows = unit_rows(2, 4);
    rows[1][2] = f32::NAN;
    let e = NewBundle { kind: Kind::Image, storage: Storage::Int8, model: stamp(), ids: &ids, captions: None, rows: &rows, shard: None, source: None }
        .to_bytes()
        .err()
        .unwrap();
    assert!(format!("{e:#}").contains("\"b\"") && format!("{e:#}").contains("non-finite"));
    let good = unit_rows(3, 4);
    let f16 = tuwen::search::to_f16(&good.concat());
    let rows = tuwen::bundle::Rows::F16(&f16);
    assert!(tuwen::search::top_k(&rows, 4, &[f32::NAN, 0.0, 0.0, 0.0], 2).is_err());
    assert!(tuwen::search::top_k_many(&rows, 4, &[good[0].clone(), vec![f32::INFINITY; 4]], 2, Default::default()).is_err());
}

// 5. Inputs lost or overwritten -----------------------------------------------------------------------------

#[test]
fn an_unbalanced_quote_is_named_with_its_line() {
    let d = competition();
    let texts = d.root.join("word_test.csv");
    write(&texts, "text_id,caption\n1,一只猫\n2,\"海边的日落\n3,红烧肉\n4,雪山\n");
    let e = err(tuwen(&["task1", "--model", s(&tiny_model()), "--texts", s(&texts), "--images", s(&d.images), "--out",
        s(&d.root.join("r.csv"))]));
    assert!(e.contains("word_test.csv") && e.contains("line 3") && e.contains("never closes"), "{e}");
    write(&texts, "text_id,caption\n1,\"一只\"猫\n");
    let e = err(tuwen(&["index", "texts", "--model", s(&tiny_model()), "--csv", s(&texts), "--out", s(&d.root.join("t.bundle"))]));
    assert!(e.contains("line 2") && e.contains("closing quote"), "{e}");
}

#[test]
fn an_output_never_replaces_an_input() {
    let d = competition();
    let model = tiny_model();
    let texts = d.root.join("word_test.csv");
    let before = std::fs::read(&texts).unwrap();
    // The same file under another spelling.
    let alias = d.root.join(".").join("word_test.csv");
    let e = err(tuwen(&["task1", "--model", s(&model), "--texts", s(&texts), "--images", s(&d.images), "--out", s(&alias)]));
    assert!(e.contains("input"), "{e}");
    let e = err(tuwen(&["index", "texts", "--model", s(&model), "--csv", s(&texts), "--out", s(&texts)]));
    assert!(e.contains("input"), "{e}");
    let pairs = d.root.join("pairs.csv");
    write(&pairs, &format!("image_id,caption\n{},猫\n", d.image_ids[0]));
    let e = err(tuwen(&["eval", "--model", s(&model), "--pairs", s(&pairs), "--images", s(&d.images), "--json", s(&pairs)]));
    assert!(e.contains("input"), "{e}");
    assert_eq!(std::fs::read(&texts).unwrap(), before);
    assert!(std::fs::read_to_string(&pairs).unwrap().starts_with("image_id,caption"));
    // A site is not built into its own images folder.
    let pkg = d.root.join("pkg");
    std::fs::create_dir_all(&pkg).unwrap();
    for f in ["tuwen.js", "tuwen_bg.wasm"] {
        write(&pkg.join(f), "");
    }
    let www = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("www");
    let e = err(tuwen(&["site", "--model", s(&model), "--pairs", s(&pairs), "--images", s(&d.images), "--out",
        s(&d.images.join("site")), "--www", s(&www), "--pkg", s(&pkg)]));
    assert!(e.contains("--images") && e.contains("another folder"), "{e}");
}

#[test]
fn every_file_of_a_folder_is_embedded_or_listed_as_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    let mut names = make_images(&images, 3, 64, true);
    names.extend(make_images(&images.join("sub"), 1, 64, false).into_iter().map(|n| format!("sub/{n}")));
    for (name, bytes) in [("notes.txt", &b"hello"[..]), ("photo.heic", b"\0\0\0\x18ftypheic"), ("noext", b"??")] {
        std::fs::write(images.join(name), bytes).unwrap();
        names.push(name.to_string());
    }
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(images.join("gone.jpg"), images.join("dangling.jpg")).unwrap();
        names.push("dangling.jpg".into());
    }
    let out = dir.path().join("g.bundle");
    ok(tuwen(&["index", "images", "--model", s(&tiny_model()), "--images", s(&images), "--out", s(&out)]));
    let embedded = Bundle::open(&out).unwrap().ids.clone();
    let skipped: Vec<String> = csv::Reader::from_path(tuwen::util::with_suffix(&out, ".skipped.csv"))
        .unwrap()
        .records()
        .map(|r| r.unwrap()[0].to_string())
        .collect();
    assert_eq!(embedded.len(), 4, "{embedded:?}");
    let mut all: Vec<String> = embedded.into_iter().chain(skipped).collect();
    all.sort();
    names.sort();
    assert_eq!(all, names);
}

// 6. Memory and time bounded --------------------------------------------------------------------------------

/// A PNG of a few dozen bytes declaring `w`×`h` RGBA at 16 bits (its one data chunk holds almost nothing).
fn png_header(w: u32, h: u32) -> Vec<u8> {
    let mut ihdr = Vec::new();
    ihdr.extend(w.to_be_bytes());
    ihdr.extend(h.to_be_bytes());
    ihdr.extend([16, 6, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    for (kind, data) in [(&b"IHDR"[..], &ihdr[..]), (b"IDAT", &[0x78, 0x9c][..]), (b"IEND", &[][..])] {
        png.extend((data.len() as u32).to_be_bytes());
        let body: Vec<u8> = kind.iter().chain(data).copied().collect();
        png.extend(&body);
        png.extend(crc32(&body).to_be_bytes());
    }
    png
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for b in bytes {
        crc ^= *b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

#[test]
fn images_too_large_to_decode_are_refused_from_their_header() {
    let config = tuwen::config::PreprocessConfig::for_vision(&Default::default());
    let start = std::time::Instant::now();
    let e = format!("{:#}", tuwen::preprocess::preprocess(&png_header(16000, 16000), "huge.png", &config).unwrap_err());
    assert!(e.contains("huge.png") && e.contains("16000×16000") && e.contains("MB"), "{e}");
    let e = format!("{:#}", tuwen::preprocess::preprocess(&png_header(20000, 10), "wide.png", &config).unwrap_err());
    assert!(e.contains("larger than"), "{e}");
    assert!(start.elapsed().as_secs_f64() < 2.0, "refused from the header, not decoded");

    // A file too big to be an image, and a big file that is not one, are refused without reading them whole.
    let dir = tempfile::tempdir().unwrap();
    let sparse = |name: &str, len: u64, head: &[u8]| {
        let path = dir.path().join(name);
        let mut f = std::fs::File::create(&path).unwrap();
        std::io::Write::write_all(&mut f, head).unwrap();
        f.set_len(len).unwrap();
        path
    };
    let e = format!("{:#}", tuwen::preprocess::read_image_file(&sparse("big.jpg", 3 << 30, b"\xff\xd8\xff")).unwrap_err());
    assert!(e.contains("big.jpg") && e.contains("more than"), "{e}");
    let e = format!("{:#}", tuwen::preprocess::read_image_file(&sparse("data.bin", 400 << 20, b"PK\x03\x04")).unwrap_err());
    assert!(e.contains("not an image"), "{e}");
}

#[test]
fn absurd_thread_counts_are_capped() {
    let out = ok(tuwen(&["--threads", "100000", "embed", "--model", s(&tiny_model()), "--text", "猫"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--threads 100000") && stderr.contains("using"), "{stderr}");
}

#[test]
fn a_download_that_stalls_ends_with_a_message() {
    // A server that accepts connections and never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = std::thread::spawn(move || {
        let mut open = Vec::new();
        for stream in listener.incoming().take(4) {
            open.push(stream);
        }
        std::thread::sleep(std::time::Duration::from_secs(60));
    });
    let home = tempfile::tempdir().unwrap();
    let start = std::time::Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tuwen"))
        .args(["fetch-model", "--out", s(&home.path().join("model"))])
        .env("HF_ENDPOINT", format!("http://127.0.0.1:{port}"))
        .env("HF_HOME", home.path())
        .env("TUWEN_FETCH_STALL_SECONDS", "2")
        .output()
        .unwrap();
    let e = err(out);
    assert!(e.contains("stalled") && e.contains("127.0.0.1"), "{e}");
    assert!(start.elapsed().as_secs() < 30, "gave up after {:?}", start.elapsed());
    drop(held);
}

// 7. Scale of the bundle format -----------------------------------------------------------------------------

#[test]
fn captions_beyond_the_safetensors_header_limit_fit_in_a_bundle() {
    // 150k captions of 800 bytes: 120 MB, more than the 100 MB a safetensors header may hold.
    let n = 150_000;
    let ids: Vec<String> = (0..n).map(|i| format!("t{i}")).collect();
    let captions: Vec<String> = (0..n).map(|i| format!("{i:08}{}", "图".repeat(264))).collect();
    let rows = vec![vec![1.0f32, 0.0]; n];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.bundle");
    NewBundle { kind: Kind::Text, storage: Storage::Int8, model: stamp(), ids: &ids, captions: Some(&captions), rows: &rows, shard: None, source: None }
        .write(&path)
        .unwrap();
    let b = Bundle::open(&path).unwrap();
    assert_eq!(b.len(), n);
    assert_eq!(b.ids[n - 1], ids[n - 1]);
    assert_eq!(b.captions.as_ref().unwrap()[n / 2], captions[n / 2]);
}

// 9. Smaller ------------------------------------------------------------------------------------------------

#[test]
fn small_cases_get_messages_that_say_what_happened() {
    let d = competition();
    let model = tiny_model();
    // A folder given as a bundle.
    let e = err(tuwen(&["search", "--model", s(&model), "--bundle", s(&d.images), "--text", "猫"]));
    assert!(e.contains("is a directory"), "{e}");
    // Every query image unreadable.
    let broken = d.root.join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    write(&broken.join("a.jpg"), "x");
    write(&broken.join("b.jpg"), "y");
    let list = d.root.join("broken.csv");
    write(&list, "image_id\na.jpg\nb.jpg\n");
    let out = d.root.join("r2.csv");
    let e = err(tuwen(&["task2", "--model", s(&model), "--image-list", s(&list), "--images", s(&broken), "--texts",
        s(&d.root.join("word_data.csv")), "--out", s(&out)]));
    assert!(e.contains("none of the 2 queries"), "{e}");
    assert!(!out.exists());
    // A second run on an output another run is writing.
    let bundle = d.root.join("locked.bundle");
    let lock = tuwen::util::OutputLock::take(&bundle).unwrap();
    let e = err(tuwen(&["index", "images", "--model", s(&model), "--images", s(&d.images), "--out", s(&bundle)]));
    assert!(e.contains("another tuwen run"), "{e}");
    drop(lock);
    let done = ok(tuwen(&["index", "images", "--model", s(&model), "--images", s(&d.images), "--out", s(&bundle)]));
    // No GPU-probe noise on a headless machine.
    assert!(!String::from_utf8_lossy(&done.stderr).contains("XDG_RUNTIME_DIR"));
    // Scores never above 1.
    let hits = ok(tuwen(&["search", "--model", s(&model), "--bundle", s(&bundle), "--image", s(&d.images.join(&d.image_ids[0]))]));
    for line in String::from_utf8(hits.stdout).unwrap().lines() {
        let score: f32 = line.split('\t').nth(2).unwrap().parse().unwrap();
        assert!((-1.0..=1.0).contains(&score), "{line}");
    }
}
