//! Ids in a CSV never reach outside `--images`: through the CLI, every command that reads an id list or a
//! pairs file refuses ids that are absolute, climb out with `..`, or use `\`, `:`, NUL or a drive letter,
//! and symbolic links that leave the folder — naming the file, the line and the id, before any work.

use crate::common;
use common::*;
use std::path::Path;
use std::process::Command;

fn png(path: &Path) {
    image::RgbImage::from_fn(32, 24, |x, y| image::Rgb([x as u8 * 8, y as u8 * 9, 77])).save(path).unwrap();
}

#[test]
fn ids_outside_the_images_folder_are_refused_with_file_line_and_id() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    png(&images.join("ok.png"));
    png(&dir.path().join("secret.png"));
    let secret = dir.path().join("secret.png");
    #[cfg(unix)]
    std::os::unix::fs::symlink(&secret, images.join("link.png")).unwrap();
    let model = tiny_model();
    let mut hostile = vec![secret.to_str().unwrap().to_string(), "../secret.png".into(), "a\\b.png".into(), "C:\\x.png".into(), "C:x.png".into()];
    if cfg!(unix) {
        hostile.push("link.png".into());
    }
    for id in &hostile {
        let list = dir.path().join("list.csv");
        std::fs::write(&list, format!("image_id\nok.png\n\"{id}\"\n")).unwrap();
        let pairs = dir.path().join("pairs.csv");
        std::fs::write(&pairs, format!("image_id,caption\nok.png,一只猫\n\"{id}\",一条狗\n")).unwrap();
        let out_dir = dir.path().join("out");
        let (m, img, l, p) = (model.to_str().unwrap(), images.to_str().unwrap(), list.to_str().unwrap(), pairs.to_str().unwrap());
        let (bundle, site) = (out_dir.join("g.bundle"), out_dir.join("site"));
        let runs: [Vec<&str>; 3] = [
            vec!["index", "images", "--model", m, "--images", img, "--list", l, "--out", bundle.to_str().unwrap()],
            vec!["eval", "--model", m, "--pairs", p, "--images", img],
            vec!["site", "--model", m, "--pairs", p, "--images", img, "--out", site.to_str().unwrap()],
        ];
        for args in runs {
            let out = Command::new(env!("CARGO_BIN_EXE_tuwen")).args(&args).current_dir(dir.path()).output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{} with id {id:?} did not fail cleanly: {stderr}", args[0]);
            assert!(stderr.contains("line 3") && stderr.contains("do not name a file inside"), "{} with id {id:?}: {stderr}", args[0]);
            assert!(!site.join("thumbnails").exists(), "a site was published with a refused id");
        }
    }
}
