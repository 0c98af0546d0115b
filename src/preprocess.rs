//! Image → pixel tensor exactly as the released `ChineseCLIPImageProcessor` is configured:
//! decode, convert to RGB, resize to `size×size` bicubic **without cropping**, rescale to [0, 1],
//! normalise with the CLIP mean/std, channels first — or, for checkpoints of the official code, in
//! `cn_clip`'s order (resize in the image's own mode, then RGB: [`Recipe::CnClip`]).
//!
//! Colour conversion follows HF `convert_to_rgb`: images with an alpha channel (RGBA, LA, palette with
//! transparency) are composited over white; grayscale is replicated; CMYK and 16-bit are converted by the
//! decoder. EXIF orientation is not applied, as in the reference processor.

use crate::config::{PreprocessConfig, Recipe};
use anyhow::{anyhow, bail, Result};
use image::imageops::FilterType;
use image::{DynamicImage, RgbImage};
use std::path::Path;

/// A decoded image larger than this in either side is refused (decompression bombs, OOM in the browser).
pub const MAX_SIDE: u32 = 16_384;

/// One preprocessed image: `3 × size × size` floats, channel-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Pixels {
    pub size: usize,
    pub data: Vec<f32>,
}

/// The largest image file read (a photo of 16384² is well below; a 3 GB file that is not an image is refused
/// after reading its first bytes, not all of them).
pub const MAX_FILE_BYTES: u64 = 512 << 20;

/// Memory all the images being decoded at once may take (natively, shared by the decoding threads): a
/// decode waits until its share is free, so `--threads` does not multiply the peak. One image may take it all.
pub const DECODE_BUDGET: u64 = 1536 << 20;

/// Reads an image file, refusing early (from its size and first bytes) what cannot be an image we decode.
/// (In the browser there are no files: it reports the file system's "unsupported".)
pub fn read_image_file(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let name = path.display();
    let mut file = std::fs::File::open(path).map_err(|e| anyhow!("{name}: cannot read: {e}"))?;
    let len = file.metadata().map_err(|e| anyhow!("{name}: cannot read: {e}"))?.len();
    if !file.metadata().is_ok_and(|m| m.is_file()) {
        bail!("{name}: not a file");
    }
    if len > MAX_FILE_BYTES {
        bail!("{name}: {} MB is more than the {} MB an image file may have", len >> 20, MAX_FILE_BYTES >> 20);
    }
    let mut head = Vec::with_capacity(64);
    file.by_ref().take(64).read_to_end(&mut head).map_err(|e| anyhow!("{name}: cannot read: {e}"))?;
    if head.is_empty() {
        bail!("{name}: the file is empty (0 bytes)");
    }
    if image::guess_format(&head).is_err() {
        bail!("{name}: not an image (unrecognised format; JPEG, PNG, WebP, GIF, BMP and TIFF are supported)");
    }
    let mut bytes = head;
    bytes.reserve(len as usize);
    file.take(MAX_FILE_BYTES).read_to_end(&mut bytes).map_err(|e| anyhow!("{name}: cannot read: {e}"))?;
    Ok(bytes)
}

/// Memory reserved from `DECODE_BUDGET` while one image is decoded and converted.
struct BudgetShare(u64);

static BUDGET_IN_USE: std::sync::Mutex<u64> = std::sync::Mutex::new(0);
static BUDGET_FREED: std::sync::Condvar = std::sync::Condvar::new();

impl BudgetShare {
    fn take(bytes: u64) -> Self {
        let bytes = bytes.min(DECODE_BUDGET);
        let mut in_use = BUDGET_IN_USE.lock().unwrap_or_else(|e| e.into_inner());
        // wasm has one thread: nothing else can hold a share while this one waits.
        while *in_use > 0 && *in_use + bytes > DECODE_BUDGET && !cfg!(target_arch = "wasm32") {
            in_use = BUDGET_FREED.wait(in_use).unwrap_or_else(|e| e.into_inner());
        }
        *in_use += bytes;
        Self(bytes)
    }
}

impl Drop for BudgetShare {
    fn drop(&mut self) {
        *BUDGET_IN_USE.lock().unwrap_or_else(|e| e.into_inner()) -= self.0;
        BUDGET_FREED.notify_all();
    }
}

/// Decodes image bytes (any format the `image` crate reads). `name` is used in error messages.
pub fn decode(bytes: &[u8], name: &str) -> Result<DynamicImage> {
    Ok(decode_within_budget(bytes, name)?.0)
}

/// Decodes, holding a share of the decode budget sized for the decoded image and its RGB copy; the share is
/// returned to the caller so that it lasts until the conversion is done.
fn decode_within_budget(bytes: &[u8], name: &str) -> Result<(DynamicImage, BudgetShare)> {
    if bytes.is_empty() {
        bail!("{name}: the file is empty (0 bytes)");
    }
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| anyhow!("{name}: cannot read: {e}"))?;
    if reader.format().is_none() {
        bail!("{name}: not an image (unrecognised format; JPEG, PNG, WebP, GIF, BMP and TIFF are supported)");
    }
    if reader.format() == Some(image::ImageFormat::Jpeg) && !jpeg_scan_complete(bytes) {
        // The decoder would fill the missing rows with grey; PIL refuses such files too.
        bail!("{name}: cannot decode image: truncated JPEG (the last scan has no end-of-image marker)");
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(DECODE_BUDGET);
    // The header alone gives the size: a 35-byte GIF that declares 11000×11000 costs nothing to refuse or
    // to queue behind the images being decoded.
    let decoder = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| anyhow!("{name}: cannot read: {e}"))?
        .into_decoder()
        .map_err(|e| anyhow!("{name}: cannot decode image: {e}"))?;
    let (w, h) = image::ImageDecoder::dimensions(&decoder);
    if w > MAX_SIDE || h > MAX_SIDE {
        bail!("{name}: {w}×{h} pixels is larger than {MAX_SIDE} on a side (refused)");
    }
    // Peak bytes per pixel: the decoded image plus what `into_rgb` makes of it (nothing for 8-bit RGB).
    let color = image::ImageDecoder::color_type(&decoder);
    let conversion = match color {
        image::ColorType::Rgb8 => 0,
        image::ColorType::Rgba8 => 3,
        c if c.has_alpha() => 4 + 3,
        _ => 3,
    };
    let need = w as u64 * h as u64 * (color.bytes_per_pixel() as u64 + conversion);
    if need > DECODE_BUDGET {
        bail!(
            "{name}: {w}×{h} pixels would take {} MB to decode, more than the {} MB allowed",
            need >> 20,
            DECODE_BUDGET >> 20
        );
    }
    drop(decoder);
    let share = BudgetShare::take(need);
    let mut reader = reader;
    reader.limits(limits);
    let image = reader.decode().map_err(|e| anyhow!("{name}: cannot decode image: {e}"))?;
    Ok((image, share))
}

/// True when an end-of-image marker (FF D9) follows the last start-of-scan (FF DA). Entropy-coded data
/// never contains FF D9 (0xFF bytes are stuffed), and EXIF thumbnails come before the main scans.
fn jpeg_scan_complete(bytes: &[u8]) -> bool {
    let last_scan = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]);
    match last_scan {
        Some(at) => bytes[at..].windows(2).any(|w| w == [0xFF, 0xD9]),
        None => false,
    }
}

/// Converts to 8-bit RGB, compositing any alpha channel over white.
pub fn to_rgb(image: &DynamicImage) -> RgbImage {
    into_rgb(image.clone())
}

/// `to_rgb`, consuming the image: an 8-bit RGB image is returned as is, not copied.
pub fn into_rgb(image: DynamicImage) -> RgbImage {
    if !image.color().has_alpha() {
        return image.into_rgb8();
    }
    let rgba = image.into_rgba8();
    let (w, h) = rgba.dimensions();
    let mut rgb = RgbImage::new(w, h);
    for (dst, src) in rgb.pixels_mut().zip(rgba.pixels()) {
        let a = src[3] as u32;
        for c in 0..3 {
            // PIL's alpha_composite rounds (x·a + 255·(255 − a)) / 255 to nearest.
            dst[c] = ((src[c] as u32 * a + 255 * (255 - a) + 127) / 255) as u8;
        }
    }
    rgb
}

/// Resizes (no crop) and normalises an RGB image into the model's input tensor (the `transformers` recipe).
pub fn normalize(rgb: &RgbImage, config: &PreprocessConfig) -> Pixels {
    let size = config.image_size as u32;
    to_tensor(&image::imageops::resize(rgb, size, size, FilterType::CatmullRom), config)
}

/// A decoded image → the model's input, as the model's recipe prepares it. `palette`: the file stored colour
/// indices (PNG colour type 3, GIF), which the decoder has already expanded.
pub fn prepare(image: DynamicImage, palette: bool, config: &PreprocessConfig) -> Pixels {
    match config.recipe {
        Recipe::Transformers => normalize(&into_rgb(image), config),
        Recipe::CnClip => to_tensor(&resize_as_pil(image, palette, config.image_size as u32), config),
    }
}

/// cn_clip's `Resize` then `convert('RGB')`, PIL's order and arithmetic: a palette image is resized by nearest
/// neighbour; one with alpha is resized premultiplied (PIL's `RGBa`), then unpremultiplied and its alpha
/// dropped (no white background); others are resized channel by channel.
fn resize_as_pil(image: DynamicImage, palette: bool, size: u32) -> RgbImage {
    if palette {
        let rgb = image.into_rgb8();
        let (w, h) = rgb.dimensions();
        // PIL's NEAREST: the source pixel under the output pixel's centre.
        let pick = |i: u32, from: u32| (((i as f64 + 0.5) * from as f64 / size as f64) as u32).min(from - 1);
        return RgbImage::from_fn(size, size, |x, y| *rgb.get_pixel(pick(x, w), pick(y, h)));
    }
    if !image.color().has_alpha() {
        let rgb = image.into_rgb8();
        let (w, h) = rgb.dimensions();
        let out = pil_bicubic(rgb.as_raw(), w as usize, h as usize, 3, size as usize);
        return RgbImage::from_raw(size, size, out).expect("size × size × 3 bytes");
    }
    let mut rgba = image.into_rgba8();
    for px in rgba.pixels_mut() {
        let a = px[3] as u32;
        for c in 0..3 {
            // PIL's MULDIV255: (x·a + 128 + ((x·a + 128) >> 8)) >> 8.
            let t = px[c] as u32 * a + 128;
            px[c] = ((t + (t >> 8)) >> 8) as u8;
        }
    }
    let (w, h) = rgba.dimensions();
    let resized = pil_bicubic(rgba.as_raw(), w as usize, h as usize, 4, size as usize);
    RgbImage::from_fn(size, size, |x, y| {
        let px = &resized[(y * size + x) as usize * 4..][..4];
        let a = px[3] as u32;
        let channel = |c: usize| if a == 0 || a == 255 { px[c] } else { ((255 * px[c] as u32) / a).min(255) as u8 };
        image::Rgb([channel(0), channel(1), channel(2)])
    })
}

/// PIL's bicubic `resize` of 8-bit pixels (Resample.c): fixed-point weights with 22 fractional bits, the
/// horizontal pass rounded to 8 bits before the vertical one. Matching it to the bit matters here: the
/// unpremultiply after it divides by alpha, so a rounding difference of one level in a nearly transparent
/// pixel would become dozens.
fn pil_bicubic(src: &[u8], w: usize, h: usize, channels: usize, size: usize) -> Vec<u8> {
    const PRECISION_BITS: u32 = 32 - 8 - 2;
    fn bicubic(x: f64) -> f64 {
        let (a, x) = (-0.5, x.abs());
        if x < 1.0 {
            ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
        } else if x < 2.0 {
            (((x - 5.0) * x + 8.0) * x - 4.0) * a
        } else {
            0.0
        }
    }
    /// Per output index: the first input index and the fixed-point weights.
    fn coefficients(in_size: usize, out_size: usize) -> Vec<(usize, Vec<i64>)> {
        let scale = in_size as f64 / out_size as f64;
        let filter_scale = scale.max(1.0);
        let support = 2.0 * filter_scale;
        (0..out_size)
            .map(|xx| {
                let center = (xx as f64 + 0.5) * scale;
                let min = ((center - support + 0.5) as i64).max(0) as usize;
                let max = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
                let weights: Vec<f64> =
                    (min..max).map(|x| bicubic((x as f64 - center + 0.5) / filter_scale)).collect();
                let total: f64 = weights.iter().sum();
                let fixed = weights
                    .iter()
                    .map(|w| {
                        let k = if total != 0.0 { w / total } else { *w } * (1u64 << PRECISION_BITS) as f64;
                        (if k < 0.0 { k - 0.5 } else { k + 0.5 }) as i64
                    })
                    .collect();
                (min, fixed)
            })
            .collect()
    }
    fn clip8(sum: i64) -> u8 {
        (sum >> PRECISION_BITS).clamp(0, 255) as u8
    }
    let rounding = 1i64 << (PRECISION_BITS - 1);
    // PIL skips a pass whose size does not change.
    let horizontal = if w == size {
        src.to_vec()
    } else {
        let cx = coefficients(w, size);
        let mut out = vec![0u8; h * size * channels];
        for y in 0..h {
            for (x, (min, k)) in cx.iter().enumerate() {
                for c in 0..channels {
                    let sum = k.iter().enumerate().map(|(i, k)| src[(y * w + min + i) * channels + c] as i64 * k).sum::<i64>();
                    out[(y * size + x) * channels + c] = clip8(sum + rounding);
                }
            }
        }
        out
    };
    if h == size {
        return horizontal;
    }
    let cy = coefficients(h, size);
    let mut out = vec![0u8; size * size * channels];
    for (y, (min, k)) in cy.iter().enumerate() {
        for x in 0..size * channels {
            let sum = k.iter().enumerate().map(|(i, k)| horizontal[(min + i) * size * channels + x] as i64 * k).sum::<i64>();
            out[y * size * channels + x] = clip8(sum + rounding);
        }
    }
    out
}

/// A resized RGB image → `3 × size × size` floats, rescaled to [0, 1] and normalised, channels first.
fn to_tensor(resized: &RgbImage, config: &PreprocessConfig) -> Pixels {
    let size = config.image_size;
    let plane = size * size;
    let mut data = vec![0f32; 3 * plane];
    for (i, px) in resized.pixels().enumerate() {
        for c in 0..3 {
            data[c * plane + i] = (px[c] as f32 / 255.0 - config.image_mean[c]) / config.image_std[c];
        }
    }
    Pixels { size, data }
}

/// True when the file stores colour indices that PIL opens as mode `P`: a PNG of colour type 3, a GIF.
pub fn is_palette(bytes: &[u8]) -> bool {
    match image::guess_format(bytes) {
        // The IHDR chunk comes first: 8-byte signature, length, "IHDR", width, height, depth, colour type.
        Ok(image::ImageFormat::Png) => bytes.get(25) == Some(&3),
        Ok(image::ImageFormat::Gif) => true,
        _ => false,
    }
}

/// Bytes of an image file → model input.
pub fn preprocess(bytes: &[u8], name: &str, config: &PreprocessConfig) -> Result<Pixels> {
    let (image, _share) = decode_within_budget(bytes, name)?;
    Ok(prepare(image, is_palette(bytes), config))
}

/// The longest side of a thumbnail, in pixels (2× a 128-px grid cell on high-density screens).
pub const THUMBNAIL_SIDE: u32 = 256;

/// A JPEG at most `THUMBNAIL_SIDE` on its longer side, colours as the model sees them (alpha over white).
pub fn thumbnail_jpeg(image: &DynamicImage, name: &str) -> Result<Vec<u8>> {
    let rgb = to_rgb(&image.thumbnail(THUMBNAIL_SIDE, THUMBNAIL_SIDE));
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 82)
        .encode_image(&rgb)
        .map_err(|e| anyhow!("{name}: encoding the thumbnail: {e}"))?;
    Ok(out)
}

/// One decode → the model input and the thumbnail (the page indexing a photo).
pub fn preprocess_with_thumbnail(bytes: &[u8], name: &str, config: &PreprocessConfig) -> Result<(Pixels, Vec<u8>)> {
    let (image, _share) = decode_within_budget(bytes, name)?;
    let thumbnail = thumbnail_jpeg(&image, name)?;
    Ok((prepare(image, is_palette(bytes), config), thumbnail))
}

/// Pixels another decoder produced (the browser's, for formats this crate does not read: AVIF, HEIC), as
/// non-premultiplied 8-bit RGBA rows; resized and normalised here as every other image is.
pub fn from_rgba(rgba: Vec<u8>, width: u32, height: u32, name: &str) -> Result<DynamicImage> {
    if width == 0 || height == 0 {
        bail!("{name}: the image has no pixels ({width}×{height})");
    }
    if width > MAX_SIDE || height > MAX_SIDE {
        bail!("{name}: {width}×{height} pixels is larger than {MAX_SIDE} on a side (refused)");
    }
    let expected = width as usize * height as usize * 4;
    if rgba.len() != expected {
        bail!("{name}: {} bytes of RGBA for {width}×{height} pixels (expected {expected})", rgba.len());
    }
    Ok(DynamicImage::ImageRgba8(image::RgbaImage::from_raw(width, height, rgba).expect("length checked")))
}

/// True when this crate reads the format the bytes start with (a browser may read more: AVIF, HEIC).
pub fn decodes_format(bytes: &[u8]) -> bool {
    image::guess_format(bytes).is_ok_and(|f| f.reading_enabled())
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GrayImage, Rgba, RgbaImage};

    fn png(image: DynamicImage) -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        image.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    #[test]
    fn transparent_pixels_become_white() {
        let mut img = RgbaImage::new(4, 4);
        img.put_pixel(0, 0, Rgba([10, 20, 30, 0]));
        img.put_pixel(1, 0, Rgba([10, 20, 30, 255]));
        img.put_pixel(2, 0, Rgba([0, 0, 0, 128]));
        let rgb = to_rgb(&DynamicImage::ImageRgba8(img));
        assert_eq!(rgb.get_pixel(0, 0).0, [255, 255, 255]);
        assert_eq!(rgb.get_pixel(1, 0).0, [10, 20, 30]);
        assert_eq!(rgb.get_pixel(2, 0).0, [127, 127, 127]);
    }

    #[test]
    fn output_is_square_channel_major_and_normalised() {
        let config = PreprocessConfig::for_vision(&Default::default());
        let gray = DynamicImage::ImageLuma8(GrayImage::from_pixel(37, 300, image::Luma([255])));
        let px = preprocess(&png(gray), "white.png", &config).unwrap();
        assert_eq!(px.data.len(), 3 * 224 * 224);
        for c in 0..3 {
            let expected = (1.0 - config.image_mean[c]) / config.image_std[c];
            assert!((px.data[c * 224 * 224 + 5] - expected).abs() < 1e-6);
        }
    }

    #[test]
    fn bad_bytes_name_the_file() {
        let config = PreprocessConfig::for_vision(&Default::default());
        let err = preprocess(&[], "a.jpg", &config).unwrap_err().to_string();
        assert!(err.contains("a.jpg") && err.contains("empty"), "{err}");
        let err = preprocess(b"hello world, not an image", "b.jpg", &config).unwrap_err().to_string();
        assert!(err.contains("b.jpg") && err.contains("not an image"), "{err}");
        let mut bytes = png(DynamicImage::ImageLuma8(GrayImage::new(64, 64)));
        bytes.truncate(bytes.len() / 2);
        let err = preprocess(&bytes, "c.png", &config).unwrap_err().to_string();
        assert!(err.contains("c.png") && err.contains("cannot decode"), "{err}");
    }
}
