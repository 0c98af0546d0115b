//! Running the `tuwen` binary, and a miniature competition on disk for the CLI tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn tuwen(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tuwen")).args(args).output().unwrap()
}

pub fn ok(out: Output) -> Output {
    assert!(out.status.success(), "tuwen failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

pub fn err(out: Output) -> String {
    assert_eq!(out.status.code(), Some(1), "expected a clean failure: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `n` distinct images (`img000.png`, …) of `side` pixels, as JPEG when `jpeg`.
pub fn make_images(dir: &Path, n: usize, side: u32, jpeg: bool) -> Vec<String> {
    std::fs::create_dir_all(dir).unwrap();
    (0..n)
        .map(|i| {
            let img = image::RgbImage::from_fn(side, side * 3 / 4, |x, y| {
                let t = i as u32 * 37;
                image::Rgb([((x * (i as u32 + 1) + t) % 256) as u8, ((y * 3 + t * 5) % 256) as u8, ((x ^ y) + t) as u8])
            });
            let name = format!("img{i:03}.{}", if jpeg { "jpg" } else { "png" });
            img.save(dir.join(&name)).unwrap();
            name
        })
        .collect()
}

pub const CAPTIONS: [&str; 8] = ["一只猫坐在窗台上晒太阳", "海边的日落与帆船", "红烧肉的家常做法", "雪山下的湖泊",
    "《绿色北京》摄影大赛胡子<人名>作品", "第一行\r\n第二行的说明", "iPhone 15 Pro 发布会", "城市夜景与灯光"];

pub struct Data {
    pub _dir: tempfile::TempDir,
    pub root: PathBuf,
    pub images: PathBuf,
    pub image_ids: Vec<String>,
}

/// A miniature competition: images, image_data.csv, image_test.csv, word_data.csv, word_test.csv
/// (UTF-8 with BOM, CRLF, a quoted multi-line caption).
pub fn competition() -> Data {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let images = root.join("ImageData");
    let image_ids = make_images(&images, 12, 96, false);
    let csv = |name: &str, header: &str, rows: Vec<String>| {
        let body = std::iter::once(header.to_string()).chain(rows).collect::<Vec<_>>().join("\r\n") + "\r\n";
        std::fs::write(root.join(name), format!("\u{feff}{body}")).unwrap();
    };
    csv("image_data.csv", "image_id", image_ids.clone());
    csv("image_test.csv", "image_id", image_ids[..6].to_vec());
    let texts = |start: usize| -> Vec<String> {
        CAPTIONS.iter().enumerate().map(|(i, c)| format!("{},\"{c}\"", start + i)).collect()
    };
    csv("word_data.csv", "text_id,caption", texts(100));
    csv("word_test.csv", "text_id,caption", texts(200));
    Data { _dir: dir, root, images, image_ids }
}

