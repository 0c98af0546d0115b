//! `build.sh site`: one deployable static site for a gallery of `image_id,caption` pairs — the page
//! (`www/`), the wasm package (`pkg/`), one GGUF per tower, an image bundle and a text bundle, thumbnails,
//! and `manifest.json`, which tells the page what is where (sizes and hashes for progress and caching).
//!
//! Every step reuses what an earlier run finished (GGUFs with the same fingerprint and dtype, complete
//! bundles, thumbnails of the same bundle), and index runs resume from their journals, so a killed build
//! loses no finished work. `manifest.json` is written last: a site without it is incomplete.

use crate::bundle::{Bundle, Storage};
use crate::index::Items;
use crate::weights::gguf::QuantDtype;
use crate::weights::ModelKind;
use crate::gallery::{ensure_bundle, files};
use crate::util::write_atomic;
use crate::{Encoder, Towers};
use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// How many example queries the page offers.
const EXAMPLES: usize = 8;

pub struct SiteJob {
    /// HF model directory or tuwen GGUF (both towers, or give a directory).
    pub model: PathBuf,
    /// The site's own gallery: a CSV with `image_id,caption` and the folder holding the images named by
    /// `image_id`. None: a site without a gallery, where the page searches only the visitor's own photos.
    pub gallery: Option<(PathBuf, PathBuf)>,
    pub out: PathBuf,
    /// The page's sources and the wasm package to copy.
    pub www: PathBuf,
    pub pkg: PathBuf,
    /// Quantization of the towers made from an HF directory.
    pub dtype: QuantDtype,
    pub progress: bool,
    /// Where the towers run while the gallery is embedded.
    pub backend: crate::embed::Placement,
}

/// Where the relaxed-SIMD module lands in the site.
const RELAXED_WASM: &str = "pkg/tuwen_bg_relaxed.wasm";
/// The threaded build's own package (its JS glue differs: shared memory, the worker pool's snippet).
const THREADS_PKG: &str = "pkg/threads";

/// What the page reads first; the format is documented in docs/site.md.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct Manifest {
    pub version: u32,
    pub generator: String,
    pub model: ModelCard,
    /// The wasm module (`pkg/tuwen_bg.wasm`), fetched by the worker with progress and cached.
    pub wasm: Asset,
    /// The same module built with relaxed SIMD (`pkg/tuwen_bg_relaxed.wasm`), which the worker loads instead
    /// where the browser validates relaxed SIMD; absent when the package has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wasm_relaxed: Option<Asset>,
    /// The threaded build (`pkg/threads/tuwen_bg.wasm`, loaded with `pkg/threads/tuwen.js`), which the worker
    /// runs on a pool of Web Workers where the page is cross-origin isolated; absent when the package has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wasm_threads: Option<Asset>,
    /// The threaded build with relaxed SIMD (`pkg/threads/tuwen_bg_relaxed.wasm`, the threaded glue); absent
    /// when the package has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wasm_threads_relaxed: Option<Asset>,
    pub towers: Towers2<Asset>,
    /// The site's gallery; both absent on a site built without one (the page then searches only the
    /// visitor's own photos).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<Gallery>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub texts: Option<Gallery>,
    /// `thumbnails/<row>.jpg` for each row of the image bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thumbnails: Option<String>,
    pub examples: Vec<String>,
}

#[derive(Debug, Serialize, serde::Deserialize)]
pub struct Towers2<T> {
    pub text: T,
    pub vision: T,
}

#[derive(Debug, Serialize, serde::Deserialize)]
pub struct ModelCard {
    pub name: String,
    pub dtype: String,
    pub fingerprint: String,
    /// Present when the weights are random: the page shows a warning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub random_weights: Option<String>,
}

/// A file of the site: its URL (relative to the page), size for progress bars, hash for cache keys.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct Asset {
    pub url: String,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Debug, Serialize, serde::Deserialize)]
pub struct Gallery {
    pub bundle: Asset,
    pub count: usize,
}

struct BuiltGallery {
    images: Bundle,
    texts: Bundle,
    images_path: PathBuf,
    texts_path: PathBuf,
}

/// What a site build did, for the log.
#[derive(Debug)]
pub struct SiteReport {
    pub out: PathBuf,
    pub images: usize,
    pub texts: usize,
    pub skipped_images: usize,
    pub random_weights: bool,
}

impl std::fmt::Display for SiteReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.images == 0 && self.texts == 0 {
            write!(f, "site in {}: no gallery (the page searches the visitor's own photos only)", self.out.display())?;
        } else {
            write!(f, "site in {}: {} images, {} captions", self.out.display(), self.images, self.texts)?;
        }
        if self.skipped_images > 0 {
            write!(f, " ({} unreadable images left out, see data/images.bundle.skipped.csv)", self.skipped_images)?;
        }
        if self.random_weights {
            write!(f, " — RANDOM WEIGHTS: the rankings are meaningless (demo of the machinery only)")?;
        }
        Ok(())
    }
}

impl SiteJob {
    pub fn run(&self) -> Result<SiteReport> {
        let pairs = match &self.gallery {
            Some((pairs, images)) => {
                let read = files::read_pairs(pairs, images)?;
                if read.is_empty() {
                    bail!("{}: no image_id,caption rows", pairs.display());
                }
                Some((read, images))
            }
            None => None,
        };
        for file in ["tuwen.js", "tuwen_bg.wasm"] {
            if !self.pkg.join(file).is_file() {
                bail!("{} has no {file}: build the wasm package first (./build.sh wasm)", self.pkg.display());
            }
        }
        if !self.www.join("index.html").is_file() {
            bail!("{} has no index.html (the page's sources)", self.www.display());
        }
        std::fs::create_dir_all(&self.out).with_context(|| format!("creating {}", self.out.display()))?;
        // The site's files (models/, bundles/, thumbnails/, the page) must not land among its inputs.
        let out = self.out.canonicalize().with_context(|| format!("{}", self.out.display()))?;
        let images_dir = self.gallery.as_ref().map(|(_, images)| ("--images", images));
        for (flag, input) in images_dir.into_iter().chain([("--www", &self.www), ("--pkg", &self.pkg)]) {
            if input.canonicalize().is_ok_and(|input| out.starts_with(&input)) {
                bail!("--out {} is {flag} {} or inside it: choose another folder for the site", self.out.display(), input.display());
            }
        }
        // An older manifest would describe files about to change.
        let manifest_path = self.out.join("manifest.json");
        if manifest_path.exists() {
            std::fs::remove_file(&manifest_path).with_context(|| format!("removing {}", manifest_path.display()))?;
        }

        // Hashing an HF checkpoint reads the whole weights file: once per run.
        let fingerprint = if crate::weights::model_kind(&self.model)? == ModelKind::Gguf {
            crate::weights::gguf::gguf_summary(&self.model)?.fingerprint
        } else {
            crate::weights::fingerprint_file(&crate::weights::weights_file(&self.model)?)?
        };
        let text_gguf = self.tower_gguf(Towers::Text, &fingerprint)?;
        let vision_gguf = self.tower_gguf(Towers::Vision, &fingerprint)?;
        let vision = Encoder::load_on(&vision_gguf, Towers::Vision, self.backend.clone())?;
        let stamp = vision.stamp()?;

        let (gallery, skipped_images) = match pairs {
            Some((pairs, images_dir)) => {
                let (gallery, skipped) = self.gallery(&pairs, images_dir, &text_gguf, &vision)?;
                (Some(gallery), skipped)
            }
            None => {
                // No gallery: the data of an earlier build with one must not be served as if current.
                for stale in ["data", "thumbnails"] {
                    let path = self.out.join(stale);
                    if path.exists() {
                        std::fs::remove_dir_all(&path).with_context(|| format!("removing {}", path.display()))?;
                    }
                }
                (None, 0)
            }
        };
        self.copy_page()?;

        let (images, texts) = match &gallery {
            Some(g) => (g.images.len(), g.texts.len()),
            None => (0, 0),
        };
        let manifest = Manifest {
            version: 1,
            generator: format!("tuwen {}", env!("CARGO_PKG_VERSION")),
            model: ModelCard {
                name: model_name(&self.model),
                dtype: stamp.dtype.clone(),
                fingerprint: stamp.fingerprint.clone(),
                random_weights: stamp.random_weights.clone(),
            },
            wasm: self.asset(&self.out.join("pkg/tuwen_bg.wasm"))?,
            wasm_relaxed: self.optional_asset(&self.out.join(RELAXED_WASM))?,
            wasm_threads: self.optional_asset(&self.out.join(THREADS_PKG).join("tuwen_bg.wasm"))?,
            wasm_threads_relaxed: self.optional_asset(&self.out.join(THREADS_PKG).join("tuwen_bg_relaxed.wasm"))?,
            towers: Towers2 { text: self.asset(&text_gguf)?, vision: self.asset(&vision_gguf)? },
            images: gallery.as_ref().map(|g| Ok::<_, anyhow::Error>(Gallery { bundle: self.asset(&g.images_path)?, count: images })).transpose()?,
            texts: gallery.as_ref().map(|g| Ok::<_, anyhow::Error>(Gallery { bundle: self.asset(&g.texts_path)?, count: texts })).transpose()?,
            thumbnails: gallery.as_ref().map(|_| "thumbnails/".into()),
            examples: gallery.as_ref().map(|g| examples(g.texts.captions.as_deref().unwrap_or_default())).unwrap_or_default(),
        };
        write_atomic(&manifest_path, serde_json::to_string_pretty(&manifest)?.as_bytes())?;
        Ok(SiteReport { out: self.out.clone(), images, texts, skipped_images, random_weights: stamp.random_weights.is_some() })
    }

    /// The gallery's two bundles (reused when complete, resumed from their journals) and thumbnails; the
    /// count of images that could not be read.
    fn gallery(&self, pairs: &[(String, String)], images_dir: &Path, text_gguf: &Path, vision: &Encoder) -> Result<(BuiltGallery, usize)> {
        let texts_path = self.out.join("data/texts.bundle");
        let texts = {
            let encoder = Encoder::load_on(text_gguf, Towers::Text, self.backend.clone())?;
            let (ids, captions) = pairs.iter().cloned().unzip();
            ensure_bundle(&encoder, Items::Texts { ids, captions }, &texts_path, Storage::Int8, self.progress)?
        };
        let images_path = self.out.join("data/images.bundle");
        let ids = pairs.iter().map(|(id, _)| id.clone()).collect();
        let images = ensure_bundle(vision, Items::images(images_dir, ids), &images_path, Storage::Int8, self.progress)?;
        let stamp = vision.stamp()?;
        if texts.header.model.fingerprint != stamp.fingerprint {
            bail!("the text and vision towers come from different models ({} vs {})", texts.header.model.fingerprint, stamp.fingerprint);
        }
        if images.is_empty() {
            bail!("none of the images in {} could be read (see {})", images_dir.display(), crate::util::with_suffix(&images_path, ".skipped.csv").display());
        }
        self.thumbnails(&images, images_dir)?;
        let skipped = pairs.len() - images.len();
        Ok((BuiltGallery { images, texts, images_path, texts_path }, skipped))
    }

    /// `models/<tower>.gguf`: quantized from the HF directory or cn_clip checkpoint, or cut from the given GGUF; reused when
    /// it already holds this model (same fingerprint) in the wanted dtype.
    fn tower_gguf(&self, tower: Towers, wanted_fingerprint: &str) -> Result<PathBuf> {
        let out = self.out.join("models").join(format!("{}.gguf", tower.name()));
        let from_gguf = crate::weights::model_kind(&self.model)? == ModelKind::Gguf;
        if out.is_file() {
            if let Ok(meta) = crate::weights::gguf::gguf_summary(&out) {
                let dtype_ok = from_gguf || meta.dtype == self.dtype.name();
                if meta.fingerprint == wanted_fingerprint && meta.towers == tower && dtype_ok {
                    eprintln!("reusing {}", out.display());
                    return Ok(out);
                }
            }
        }
        let dtype: QuantDtype = if from_gguf {
            crate::weights::gguf::gguf_summary(&self.model)?.dtype.parse()?
        } else {
            eprintln!("quantizing the {} tower to {}", tower.name(), self.dtype.name());
            self.dtype
        };
        crate::quantize::quantize_model(&self.model, dtype, tower, &out)?;
        Ok(out)
    }

    fn asset(&self, path: &Path) -> Result<Asset> {
        let bytes = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?.len();
        let fingerprint = crate::weights::fingerprint_file(path)?;
        let sha256 = fingerprint.trim_start_matches("sha256:").to_string();
        let url = path.strip_prefix(&self.out).unwrap_or(path).to_string_lossy().replace('\\', "/");
        Ok(Asset { url, bytes, sha256 })
    }

    /// A module the package may lack (the relaxed-SIMD and threaded builds): its asset when the site has it.
    fn optional_asset(&self, path: &Path) -> Result<Option<Asset>> {
        if path.is_file() { self.asset(path).map(Some) } else { Ok(None) }
    }

    /// `thumbnails/<row>.jpg` for every row of the image bundle; regenerated when the bundle changed.
    fn thumbnails(&self, images: &Bundle, images_dir: &Path) -> Result<()> {
        let dir = self.out.join("thumbnails");
        let stamp_path = dir.join(".bundle");
        let stamp = format!("{}\n{}", images.header.source.clone().unwrap_or_default(), images.ids.join("\n"));
        let stamp = crate::util::hex(&Sha256::digest(stamp.as_bytes()));
        if std::fs::read_to_string(&stamp_path).ok().as_deref() != Some(stamp.as_str()) && dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing stale {}", dir.display()))?;
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        images.ids.par_iter().enumerate().try_for_each(|(row, id)| -> Result<()> {
            let out = dir.join(format!("{row}.jpg"));
            if out.is_file() {
                return Ok(());
            }
            let source = images_dir.join(id);
            let bytes = std::fs::read(&source).with_context(|| format!("reading {}", source.display()))?;
            write_atomic(&out, &thumbnail_jpeg(&bytes, &source.display().to_string())?)
        })?;
        write_atomic(&stamp_path, stamp.as_bytes())
    }

    fn copy_page(&self) -> Result<()> {
        copy_files(&self.www, &self.out)?;
        let pkg = self.out.join("pkg");
        std::fs::create_dir_all(&pkg)?;
        for file in ["tuwen.js", "tuwen_bg.wasm"] {
            std::fs::copy(self.pkg.join(file), pkg.join(file)).with_context(|| format!("copying {file} into {}", pkg.display()))?;
        }
        // The relaxed-SIMD module is optional; a stale copy from an earlier package must not outlive it.
        let relaxed = self.pkg.join("tuwen_bg_relaxed.wasm");
        if relaxed.is_file() {
            std::fs::copy(&relaxed, self.out.join(RELAXED_WASM)).with_context(|| format!("copying {}", relaxed.display()))?;
        } else if self.out.join(RELAXED_WASM).exists() {
            std::fs::remove_file(self.out.join(RELAXED_WASM))?;
        }
        // So is the threaded package, copied whole (glue, module, snippets), never merged with an older one.
        let threads = self.out.join(THREADS_PKG);
        if threads.exists() {
            std::fs::remove_dir_all(&threads).with_context(|| format!("removing the old {}", threads.display()))?;
        }
        let built = self.pkg.join("threads");
        if built.join("tuwen_bg.wasm").is_file() && built.join("tuwen.js").is_file() {
            std::fs::create_dir_all(&threads)?;
            copy_files(&built, &threads)?;
        }
        Ok(())
    }
}

fn thumbnail_jpeg(bytes: &[u8], name: &str) -> Result<Vec<u8>> {
    crate::preprocess::thumbnail_jpeg(&crate::preprocess::decode(bytes, name)?, name)
}

/// Copies the regular files of `from` (recursively) into `to`.
fn copy_files(from: &Path, to: &Path) -> Result<()> {
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if entry.file_type()?.is_dir() {
            std::fs::create_dir_all(&dst)?;
            copy_files(&src, &dst)?;
        } else {
            std::fs::copy(&src, &dst).with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
        }
    }
    Ok(())
}

fn model_name(model: &Path) -> String {
    let name = if model.is_file() { model.file_stem() } else { model.file_name() };
    name.map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| model.display().to_string())
}

/// Short captions spread over the gallery, as example queries.
fn examples(captions: &[String]) -> Vec<String> {
    let short: Vec<&String> = captions.iter().filter(|c| (4..=24).contains(&c.chars().count()) && !c.contains('\n')).collect();
    let pool = if short.len() >= EXAMPLES { short } else { captions.iter().collect() };
    let step = (pool.len() / EXAMPLES).max(1);
    pool.into_iter().step_by(step).take(EXAMPLES).cloned().collect()
}

/// Writes a small synthetic gallery (`pairs.csv` + `images/`) for a demo without real data: coloured
/// shapes on coloured backgrounds, captioned in Chinese. Includes captions with markup-like text, which
/// the page must show literally.
pub fn generate_gallery(out: &Path, count: usize) -> Result<PathBuf> {
    use image::{Rgb, RgbImage};
    const COLORS: [(&str, [u8; 3]); 6] = [
        ("红色", [220, 40, 40]),
        ("绿色", [40, 170, 70]),
        ("蓝色", [40, 80, 220]),
        ("黄色", [240, 210, 40]),
        ("紫色", [140, 60, 190]),
        ("黑色", [20, 20, 20]),
    ];
    const BACKGROUNDS: [(&str, [u8; 3]); 3] = [("白色", [250, 250, 250]), ("灰色", [128, 128, 128]), ("浅蓝色", [180, 215, 240])];
    const SHAPES: [&str; 3] = ["圆形", "方块", "横条"];
    let images = out.join("images");
    std::fs::create_dir_all(&images).with_context(|| format!("creating {}", images.display()))?;
    let mut csv = csv::Writer::from_writer(Vec::new());
    csv.write_record(["image_id", "caption"])?;
    for i in 0..count {
        let (color_name, color) = COLORS[i % COLORS.len()];
        let (bg_name, bg) = BACKGROUNDS[(i / COLORS.len()) % BACKGROUNDS.len()];
        let shape = SHAPES[(i / (COLORS.len() * BACKGROUNDS.len())) % SHAPES.len()];
        let side = 160 + 16 * (i % 5) as u32;
        let mut img = RgbImage::from_pixel(side, side, Rgb(bg));
        let c = side as f32 / 2.0;
        for (x, y, p) in img.enumerate_pixels_mut() {
            let (dx, dy) = (x as f32 - c, y as f32 - c);
            let inside = match shape {
                "圆形" => dx * dx + dy * dy < (side as f32 * 0.35).powi(2),
                "方块" => dx.abs() < side as f32 * 0.3 && dy.abs() < side as f32 * 0.3,
                _ => dy.abs() < side as f32 * 0.12,
            };
            if inside {
                *p = Rgb(color);
            }
        }
        let id = format!("demo-{i:04}.jpg");
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90).encode_image(&img)?;
        write_atomic(&images.join(&id), &jpeg)?;
        let caption = match i {
            0 => "《绿色北京》摄影大赛胡子<人名>作品".to_string(),
            1 => "<img src=x onerror=\"document.body.dataset.injected=1\">一张图片".to_string(),
            _ => format!("{bg_name}背景上的一个{color_name}{shape}"),
        };
        csv.write_record([id.as_str(), caption.as_str()])?;
    }
    let pairs = out.join("pairs.csv");
    write_atomic(&pairs, &csv.into_inner()?)?;
    Ok(pairs)
}
