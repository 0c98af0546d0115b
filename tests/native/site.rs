//! `tuwen site` / `tuwen serve`: the static site's files, its manifest, reuse of finished work, towers cut
//! from a GGUF, bad input, and the server's MIME types. (The page itself is tested in tests/e2e.)

use crate::common;
use common::*;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use tuwen::apps::site::{Manifest, SiteJob};
use tuwen::Towers;

/// A gallery, a fake wasm package (the site only copies it) and the page sources.
fn setup(dir: &Path, count: usize) -> (PathBuf, PathBuf, PathBuf) {
    let pairs = tuwen::apps::site::generate_gallery(&dir.join("gallery"), count).unwrap();
    let pkg = dir.join("pkg");
    std::fs::create_dir_all(&pkg).unwrap();
    std::fs::write(pkg.join("tuwen.js"), "export default function init() {}").unwrap();
    std::fs::write(pkg.join("tuwen_bg.wasm"), b"\0asm\x01\0\0\0").unwrap();
    (pairs, dir.join("gallery/images"), pkg)
}

fn job(model: &Path, pairs: &Path, images: &Path, pkg: &Path, out: &Path) -> SiteJob {
    SiteJob {
        model: model.to_path_buf(),
        gallery: Some((pairs.to_path_buf(), images.to_path_buf())),
        out: out.to_path_buf(),
        www: Path::new(env!("CARGO_MANIFEST_DIR")).join("www"),
        pkg: pkg.to_path_buf(),
        dtype: tuwen::weights::gguf::QuantDtype::Q8_0,
        progress: false,
        backend: tuwen::embed::Placement::cpu(),
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    tuwen::util::hex(&sha2::Sha256::digest(bytes))
}

fn manifest(out: &Path) -> Manifest {
    serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap()
}

#[test]
fn a_site_holds_every_file_its_manifest_names_and_a_rerun_reuses_them() {
    let dir = tempfile::tempdir().unwrap();
    let (pairs, images, pkg) = setup(dir.path(), 12);
    // One unreadable image: left out of the image bundle and reported, its caption stays searchable.
    std::fs::write(images.join("demo-0005.jpg"), b"\xff\xd8\xff truncated").unwrap();
    let out = dir.path().join("site");
    let report = job(&tiny_model(), &pairs, &images, &pkg, &out).run().unwrap();
    assert_eq!((report.images, report.texts, report.skipped_images), (11, 12, 1));
    assert!(report.random_weights && report.to_string().contains("RANDOM WEIGHTS"));

    let m = manifest(&out);
    assert!(m.model.random_weights.is_some(), "the tiny fixture is labelled random");
    let (images_gallery, texts_gallery) = (m.images.as_ref().unwrap(), m.texts.as_ref().unwrap());
    let assets = [&m.wasm, &m.towers.text, &m.towers.vision, &images_gallery.bundle, &texts_gallery.bundle];
    for asset in assets {
        let bytes = std::fs::read(out.join(&asset.url)).unwrap();
        assert_eq!((bytes.len() as u64, sha256_hex(&bytes)), (asset.bytes, asset.sha256.clone()), "{}", asset.url);
    }
    for page in ["index.html", "app.js", "worker.js", "sw.js", "style.css", "pkg/tuwen.js", "manifest.webmanifest", "icons/icon-512.png"] {
        assert!(out.join(page).is_file(), "{page} is part of the site");
    }
    let text = tuwen::weights::gguf::gguf_summary(&out.join(&m.towers.text.url)).unwrap();
    let vision = tuwen::weights::gguf::gguf_summary(&out.join(&m.towers.vision.url)).unwrap();
    assert_eq!((text.towers, vision.towers), (Towers::Text, Towers::Vision));
    assert_eq!((text.dtype.as_str(), text.fingerprint.as_str()), ("q8_0", m.model.fingerprint.as_str()));
    assert_eq!(vision.fingerprint, m.model.fingerprint);

    let image_bundle = tuwen::bundle::Bundle::open(&out.join(&images_gallery.bundle.url)).unwrap();
    let text_bundle = tuwen::bundle::Bundle::open(&out.join(&texts_gallery.bundle.url)).unwrap();
    assert!(!image_bundle.ids.contains(&"demo-0005.jpg".to_string()));
    assert_eq!(text_bundle.captions.as_ref().unwrap()[0], "《绿色北京》摄影大赛胡子<人名>作品");
    assert!(out.join("data/images.bundle.skipped.csv").is_file());
    // A text query from the site's text tower is searched against the site's image bundle natively too.
    let encoder = tuwen::Encoder::load(&out.join(&m.towers.text.url), Towers::Text).unwrap();
    tuwen::index::require_model(&image_bundle, &encoder, "images.bundle").unwrap();

    for (row, id) in image_bundle.ids.iter().enumerate() {
        let thumb = image::open(out.join(format!("{}{row}.jpg", m.thumbnails.as_deref().unwrap()))).unwrap();
        let source = image::open(images.join(id)).unwrap();
        assert!(thumb.width().max(thumb.height()) <= tuwen::preprocess::THUMBNAIL_SIDE);
        let (ratio_thumb, ratio_src) =
            (thumb.width() as f32 / thumb.height() as f32, source.width() as f32 / source.height() as f32);
        assert!((ratio_thumb - ratio_src).abs() < 0.02, "thumbnail {row} keeps the aspect ratio of {id}");
    }
    assert!(!m.examples.is_empty() && m.examples.iter().all(|e| text_bundle.captions.as_ref().unwrap().contains(e)));

    // A second run reuses the towers, bundles and thumbnails.
    let modified = |p: &str| std::fs::metadata(out.join(p)).unwrap().modified().unwrap();
    let before =
        ["models/text.gguf", "models/vision.gguf", "data/texts.bundle", "data/images.bundle", "thumbnails/0.jpg"].map(modified);
    job(&tiny_model(), &pairs, &images, &pkg, &out).run().unwrap();
    let after =
        ["models/text.gguf", "models/vision.gguf", "data/texts.bundle", "data/images.bundle", "thumbnails/0.jpg"].map(modified);
    assert_eq!(before, after);
    assert_eq!(manifest(&out).towers.text.sha256, m.towers.text.sha256);
}

#[test]
fn a_site_without_a_gallery_has_the_model_and_the_page_only_and_drops_an_earlier_gallery() {
    let dir = tempfile::tempdir().unwrap();
    let (pairs, images, pkg) = setup(dir.path(), 4);
    let out = dir.path().join("site");
    job(&tiny_model(), &pairs, &images, &pkg, &out).run().unwrap();
    assert!(out.join("data/images.bundle").is_file() && out.join("thumbnails/0.jpg").is_file());
    let report = SiteJob { gallery: None, ..job(&tiny_model(), &pairs, &images, &pkg, &out) }.run().unwrap();
    assert_eq!((report.images, report.texts), (0, 0));
    assert!(report.to_string().contains("no gallery"), "{report}");
    let m = manifest(&out);
    assert!(m.images.is_none() && m.texts.is_none() && m.thumbnails.is_none() && m.examples.is_empty());
    assert!(!out.join("data").exists() && !out.join("thumbnails").exists(), "the earlier gallery is not served");
    let raw: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert!(raw.get("images").is_none(), "absent, not null: {raw}");
    let vision = tuwen::weights::gguf::gguf_summary(&out.join(&m.towers.vision.url)).unwrap();
    assert_eq!(vision.fingerprint, m.model.fingerprint);
    assert!(m.model.random_weights.is_some());
}

#[test]
fn a_site_from_a_gguf_gets_towers_cut_from_it_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let (pairs, images, pkg) = setup(dir.path(), 6);
    let both = dir.path().join("both.gguf");
    tuwen::quantize::quantize_model(&tiny_model(), tuwen::weights::gguf::QuantDtype::Q8_0, Towers::Both, &both).unwrap();
    let out = dir.path().join("site");
    job(&both, &pairs, &images, &pkg, &out).run().unwrap();
    let m = manifest(&out);
    assert_eq!(m.model.name, "both");
    let full = tuwen::Encoder::load(&both, Towers::Both).unwrap();
    let text = tuwen::Encoder::load(&out.join("models/text.gguf"), Towers::Text).unwrap();
    let vision = tuwen::Encoder::load(&out.join("models/vision.gguf"), Towers::Vision).unwrap();
    assert_eq!(text.embed_text("红色圆形").unwrap(), full.embed_text("红色圆形").unwrap());
    let image = images.join("demo-0002.jpg");
    assert_eq!(vision.embed_image_file(&image).unwrap(), full.embed_image_file(&image).unwrap());
    assert!(text.embed_image_file(&image).is_err(), "the text file holds no vision tower");
    assert_eq!(text.stamp().unwrap(), full.stamp().unwrap());
    // The same GGUF cut twice gives the same bytes (the page caches by hash).
    let again = tuwen::weights::gguf::extract_towers(&std::fs::read(&both).unwrap(), Towers::Text).unwrap();
    assert_eq!(again, std::fs::read(out.join("models/text.gguf")).unwrap());
    // A one-tower GGUF cannot give the other tower.
    let err = tuwen::weights::gguf::extract_towers(&again, Towers::Vision).unwrap_err().to_string();
    assert!(err.contains("holds the text tower only"), "{err}");
}

#[test]
fn the_optional_wasm_builds_are_listed_when_the_package_has_them_and_dropped_when_it_no_longer_does() {
    let dir = tempfile::tempdir().unwrap();
    let (pairs, images, pkg) = setup(dir.path(), 4);
    std::fs::write(pkg.join("tuwen_bg_relaxed.wasm"), b"\0asm\x01\0\0\0relaxed").unwrap();
    std::fs::create_dir_all(pkg.join("threads/snippets/pool")).unwrap();
    std::fs::write(pkg.join("threads/tuwen.js"), "export function initThreadPool() {}").unwrap();
    std::fs::write(pkg.join("threads/tuwen_bg.wasm"), b"\0asm\x01\0\0\0threads").unwrap();
    std::fs::write(pkg.join("threads/tuwen_bg_relaxed.wasm"), b"\0asm\x01\0\0\0threads relaxed").unwrap();
    std::fs::write(pkg.join("threads/snippets/pool/workerHelpers.js"), "// the pool").unwrap();
    let out = dir.path().join("site");
    job(&tiny_model(), &pairs, &images, &pkg, &out).run().unwrap();
    let m = manifest(&out);
    let listed = [(&m.wasm_relaxed, "pkg/tuwen_bg_relaxed.wasm"), (&m.wasm_threads, "pkg/threads/tuwen_bg.wasm"),
        (&m.wasm_threads_relaxed, "pkg/threads/tuwen_bg_relaxed.wasm")];
    for (asset, url) in listed {
        let asset = asset.as_ref().unwrap_or_else(|| panic!("{url} is in the manifest"));
        let bytes = std::fs::read(out.join(url)).unwrap();
        assert_eq!((asset.url.as_str(), asset.bytes, asset.sha256.clone()), (url, bytes.len() as u64, sha256_hex(&bytes)));
    }
    assert!(out.join("pkg/threads/snippets/pool/workerHelpers.js").is_file(), "the pool's snippet is copied");

    // A package built without them: the site neither lists nor keeps the old copies.
    std::fs::remove_file(pkg.join("tuwen_bg_relaxed.wasm")).unwrap();
    std::fs::remove_file(pkg.join("threads/tuwen_bg_relaxed.wasm")).unwrap();
    job(&tiny_model(), &pairs, &images, &pkg, &out).run().unwrap();
    let m = manifest(&out);
    assert!(m.wasm_relaxed.is_none() && m.wasm_threads_relaxed.is_none() && m.wasm_threads.is_some());
    assert!(!out.join("pkg/tuwen_bg_relaxed.wasm").exists() && !out.join("pkg/threads/tuwen_bg_relaxed.wasm").exists());
}

#[test]
fn bad_site_input_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (pairs, images, pkg) = setup(dir.path(), 4);
    let out = dir.path().join("site");
    std::fs::remove_file(images.join("demo-0002.jpg")).unwrap();
    let err = format!("{:#}", job(&tiny_model(), &pairs, &images, &pkg, &out).run().unwrap_err());
    assert!(err.contains("pairs.csv") && err.contains("line 4: demo-0002.jpg"), "{err}");

    let (pairs, images, _) = setup(&dir.path().join("b"), 4);
    let err = format!("{:#}", job(&tiny_model(), &pairs, &images, &dir.path().join("no-pkg"), &out).run().unwrap_err());
    assert!(err.contains("./build.sh wasm"), "{err}");

    let csv = dir.path().join("dup.csv");
    std::fs::write(&csv, "image_id,caption\ndemo-0000.jpg,a\ndemo-0000.jpg,b\n").unwrap();
    let err = format!("{:#}", job(&tiny_model(), &csv, &images, &pkg, &out).run().unwrap_err());
    assert!(err.contains("line 3: duplicate image_id \"demo-0000.jpg\""), "{err}");
    assert!(!out.join("manifest.json").exists(), "an unfinished site has no manifest");
}

fn http_get(addr: &str, path: &str) -> (String, Vec<u8>) {
    http(addr, "GET", path)
}

fn http(addr: &str, method: &str, path: &str) -> (String, Vec<u8>) {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(std::time::Duration::from_secs(20))).unwrap();
    write!(stream, "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    (String::from_utf8_lossy(&response[..split]).into_owned(), response[split + 4..].to_vec())
}

#[test]
fn serve_gives_the_types_browsers_need_and_stays_in_its_folder() {
    let dir = tempfile::tempdir().unwrap();
    let site = dir.path().join("site");
    std::fs::create_dir_all(site.join("pkg")).unwrap();
    std::fs::write(site.join("index.html"), "<!doctype html><title>t</title>").unwrap();
    std::fs::write(site.join("pkg/tuwen_bg.wasm"), b"\0asm\x01\0\0\0").unwrap();
    std::fs::write(dir.path().join("secret.txt"), "outside").unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tuwen"))
        .args(["serve", "--dir", site.to_str().unwrap(), "--port", "0"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stderr.as_mut().unwrap()), &mut line).unwrap();
    // "serving <dir> at http://127.0.0.1:<port>/ (Ctrl-C stops)"
    let addr = line.split("http://").nth(1).and_then(|rest| rest.split('/').next()).expect(&line).to_string();
    let (head, body) = http_get(&addr, "/pkg/tuwen_bg.wasm?v=abc");
    assert!(head.starts_with("HTTP/1.1 200") && head.contains("application/wasm"), "{head}");
    assert_eq!(body, b"\0asm\x01\0\0\0");
    let (head, _) = http_get(&addr, "/");
    assert!(head.contains("text/html"), "{head}");
    let (head, _) = http_get(&addr, "/../secret.txt");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    let (head, _) = http_get(&addr, "/%2e%2e/secret.txt");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    // A symbolic link inside the folder to a file outside it is not served.
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(dir.path().join("secret.txt"), site.join("link.txt")).unwrap();
        let (head, body) = http_get(&addr, "/link.txt");
        assert!(head.starts_with("HTTP/1.1 404") && !body.starts_with(b"outside"), "{head}");
    }
    // Only GET and HEAD.
    for method in ["POST", "PUT", "DELETE"] {
        let (head, body) = http(&addr, method, "/index.html");
        assert!(head.starts_with("HTTP/1.1 405") && head.contains("Allow: GET, HEAD"), "{method}: {head}");
        assert!(!String::from_utf8_lossy(&body).contains("<title>"), "{method} got the file");
    }
    // A client that asks for a large file and never reads it does not stall the others.
    std::fs::write(site.join("big.bin"), vec![7u8; 64 << 20]).unwrap();
    let mut stalled = Vec::new();
    for _ in 0..3 {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        write!(s, "GET /big.bin HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
        stalled.push(s);
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (head, _) = http_get(&addr, "/index.html");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    drop(stalled);
    child.kill().unwrap();
    child.wait().unwrap();

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tuwen"))
        .args(["serve", "--dir", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no index.html"));
}

/// Offline after the first visit (and installed): the service worker caches the page's shell at install,
/// so every file of www/ must be in its list (a module missing there breaks the page offline).
#[test]
fn the_service_worker_caches_every_file_of_the_page() {
    let www = Path::new(env!("CARGO_MANIFEST_DIR")).join("www");
    let sw = std::fs::read_to_string(www.join("sw.js")).unwrap();
    let shell = &sw[sw.find("const SHELL = [").unwrap()..];
    let shell = &shell[..shell.find("];").unwrap()];
    let mut files = Vec::new();
    let mut dirs = vec![www.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                files.push(path.strip_prefix(&www).unwrap().to_string_lossy().replace('\\', "/"));
            }
        }
    }
    for file in files.iter().filter(|f| f.as_str() != "sw.js") {
        assert!(shell.contains(&format!("'{file}'")), "www/{file} is not in sw.js's SHELL: the page would break offline");
    }
}
