//! Image decoding and the OpenFlamingo eval preprocessing.
//!
//! The reference is open_clip 2.16's eval transform applied to `PIL.Image.open(..)`
//! (Pillow 9.5, torchvision 0.15):
//!
//! 1. `Resize(S, BICUBIC)`: shorter side to S, longer side `int(S * long / short)`;
//! 2. `CenterCrop(C)` at `round((W - C) / 2)`, `round((H - C) / 2)`;
//! 3. `convert("RGB")`;
//! 4. `ToTensor()` and 5. `Normalize(mean, std)`.
//!
//! S, C, mean and std are what the model files declare ([`PixelSpec`], from the loaded model's
//! config: `Flamingo::pixel_spec`); for OpenFlamingo-9B S = C = 224 with OpenAI CLIP's mean/std.
//!
//! The vision tower only ever saw pixels produced by Pillow, so the resampler below
//! re-implements Pillow's `ImagingResample` bit for bit (fixed-point 8-bit coefficients,
//! rounding and clipping between the two separable passes) instead of using
//! `image::imageops`, whose kernels and rounding differ.
//!
//! What Pillow does depends on the *mode* `Image.open` gives the file, and that is not
//! always what the `image` crate decodes to. [`decode_source`] reads the few header
//! fields needed to recover it:
//!
//! | source                                   | PIL mode | resize filter     |
//! |------------------------------------------|----------|-------------------|
//! | 8-bit grey (PNG 2/4/8-bit, JPEG)         | `L`      | bicubic           |
//! | grey + alpha (PNG)                       | `LA`     | bicubic, premult. |
//! | RGB (PNG, JPEG, WebP, BMP 16/24/32-bit)  | `RGB`    | bicubic           |
//! | RGBA (PNG, WebP, BMP with alpha mask)    | `RGBA`   | bicubic, premult. |
//! | palette (PNG, GIF, BMP <= 8-bit)         | `P`      | **nearest**       |
//! | 1-bit grey PNG, black/white BMP          | `1`      | **nearest**       |
//! | GIF/BMP whose palette is the grey ramp   | `L`      | bicubic           |
//! | 16-bit grey PNG                          | `I`      | bicubic (float)   |
//!
//! `I` samples are clipped to 0..=255 by `convert("RGB")`, so 16-bit grey images come out
//! mostly white, exactly as in the reference.
//!
//! PNG `tRNS` transparency of grey/RGB/palette images is ignored, as Pillow keeps such
//! images in `L`/`RGB`/`P` and `convert("RGB")` drops it. 16-bit RGB(A)/LA samples keep
//! their high byte, as Pillow's `RGB;16B`-style unpackers do.
//!
//! Known deviations from Pillow: JPEGs are decoded by zune-jpeg, whose IDCT, chroma
//! upsampling and YCbCr rounding differ from libjpeg-turbo by a few levels (measured: up to
//! 4 in decoded pixels, 3 after the resize; everything after decoding is exact);
//! CMYK/YCCK JPEGs are converted to RGB before resizing (Pillow resizes in CMYK); a GIF whose first frame extends past the logical
//! screen is clipped (Pillow grows the canvas); GIF pixels whose index lies past the
//! end of the palette decode as black (not checked against Pillow).

use std::borrow::Cow;
use std::io::Cursor;
use std::ops::Range;
use std::panic::{self, AssertUnwindSafe};

use image::error::UnsupportedErrorKind;
use image::{DynamicImage, ImageFormat, ImageReader, Rgb, RgbImage, Rgba};

/// Side of the square crop fed to OpenFlamingo-9B's vision encoder (ViT-L/14 at 224 px); other
/// models declare their own ([`PixelSpec::size`]).
pub const IMAGE_SIZE: usize = 224;

/// open_clip's `OPENAI_DATASET_MEAN`, rounded to f32 the way `torch.as_tensor` does.
pub const CLIP_MEAN: [f32; 3] = [
    0.48145466_f64 as f32,
    0.4578275_f64 as f32,
    0.40821073_f64 as f32,
];

/// open_clip's `OPENAI_DATASET_STD`, rounded to f32 the way `torch.as_tensor` does.
pub const CLIP_STD: [f32; 3] = [
    0.26862954_f64 as f32,
    0.26130258_f64 as f32,
    0.27577711_f64 as f32,
];

/// How pixels are made for a vision tower: `Resize(resize)` (shorter side, bicubic), then
/// `CenterCrop(size)`, then `Normalize(mean, std)`. `size` is the tower's input side.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PixelSpec {
    /// Shorter side after the resize (open_clip: the image size; HF: `size.shortest_edge`).
    pub resize: usize,
    /// Side of the square center crop, i.e. the vision tower's input size.
    pub size: usize,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl PixelSpec {
    /// OpenFlamingo-9B's: 224 px, OpenAI CLIP mean/std.
    pub const CLIP_224: Self = Self {
        resize: IMAGE_SIZE,
        size: IMAGE_SIZE,
        mean: CLIP_MEAN,
        std: CLIP_STD,
    };

    /// open_clip's eval transform: resize and crop to the same side.
    pub fn square(size: usize, mean: [f32; 3], std: [f32; 3]) -> Self {
        Self {
            resize: size,
            size,
            mean,
            std,
        }
    }

    /// Values per preprocessed image (`3 * size * size`, CHW).
    pub fn values_per_image(&self) -> usize {
        3 * self.size * self.size
    }

    /// Why this spec cannot be served, if it cannot.
    pub fn check(&self) -> Result<(), String> {
        if self.size == 0 {
            return Err("the crop size is 0".into());
        }
        if self.resize < self.size {
            return Err(format!(
                "the resize target ({} px) is smaller than the crop ({} px); center-crop padding is not supported",
                self.resize, self.size
            ));
        }
        if let Some(m) = self.mean.iter().find(|m| !m.is_finite()) {
            return Err(format!("mean {m} is not a finite number"));
        }
        if let Some(s) = self.std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(format!("std {s} is not a positive finite number"));
        }
        Ok(())
    }
}

impl Default for PixelSpec {
    fn default() -> Self {
        Self::CLIP_224
    }
}

/// Bits of fraction in Pillow's 8-bit resampling coefficients (`PRECISION_BITS`).
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Support of Pillow's bicubic filter before antialias scaling.
const BICUBIC_SUPPORT: f64 = 2.0;

/// Allocation slack granted to decoders on top of the decoded pixels (row buffers,
/// JPEG coefficient planes, metadata chunks).
const DECODER_HEADROOM: u64 = 64 * 1024 * 1024;

/// Worst-case decoded bytes per pixel (16-bit RGBA).
const MAX_BYTES_PER_PIXEL: u64 = 8;

/// Bounds applied to untrusted image payloads before any pixel is allocated.
#[derive(Debug, Clone)]
pub struct ImageLimits {
    /// Largest accepted encoded payload.
    pub max_bytes: usize,
    /// Largest accepted width in pixels.
    pub max_width: u32,
    /// Largest accepted height in pixels.
    pub max_height: u32,
    /// Largest accepted `width * height`.
    pub max_pixels: u64,
}

impl Default for ImageLimits {
    fn default() -> Self {
        Self {
            max_bytes: 20 * 1024 * 1024,
            max_width: 8192,
            max_height: 8192,
            max_pixels: 40_000_000,
        }
    }
}

/// Why an image payload was refused.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("empty image payload")]
    Empty,
    #[error("image payload of {size} bytes exceeds the limit of {limit} bytes")]
    TooManyBytes { size: usize, limit: usize },
    #[error("unsupported image format: {0} (expected png, jpeg, webp, gif or bmp)")]
    UnsupportedFormat(String),
    #[error("image of {width}x{height} pixels exceeds the limit: {limit}")]
    TooLarge {
        width: u32,
        height: u32,
        limit: String,
    },
    #[error("cannot decode image: {0}")]
    Decode(String),
}

impl ImageError {
    /// True for refusals caused by size (HTTP 413); everything else is malformed input (422).
    pub fn is_too_large(&self) -> bool {
        matches!(self, Self::TooManyBytes { .. } | Self::TooLarge { .. })
    }
}

/// What the header says about an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageInfo {
    /// One of `"png"`, `"jpeg"`, `"webp"`, `"gif"`, `"bmp"`.
    pub format: &'static str,
    pub width: u32,
    pub height: u32,
}

/// The filter Pillow's `Image.resize(.., BICUBIC)` actually uses for a source mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resample {
    /// Every mode except the two below.
    Bicubic,
    /// Pillow silently switches to nearest neighbour for `P` (palette) and `1` images.
    Nearest,
}

/// A decoded image plus what Pillow would have done with it.
#[derive(Debug, Clone)]
pub struct SourceImage {
    /// Pixels in the layout Pillow would hold them in (see the module docs).
    pub image: DynamicImage,
    /// Filter Pillow would resize this image with.
    pub resample: Resample,
    pub info: ImageInfo,
}

impl SourceImage {
    /// Steps 1-3 of the eval transform, with the filter Pillow would pick.
    pub fn resize_and_crop(&self, spec: &PixelSpec) -> RgbImage {
        resize_and_crop_with(&self.image, self.resample, spec)
    }
}

/// Reads the header only and checks the limits; no pixel buffer is allocated.
pub fn probe(bytes: &[u8], limits: &ImageLimits) -> Result<ImageInfo, ImageError> {
    check_payload(bytes, limits)?;
    let (mut reader, format) = reader_for(bytes)?;
    let info = |(width, height)| ImageInfo {
        format,
        width,
        height,
    };
    if let Some(size) = png_ihdr_dimensions(format, bytes) {
        // The png decoder reads up to the first IDAT before it reports a size; IHDR sits at a
        // fixed offset, so an oversized PNG is refused even when cut off right after it.
        check_dimensions(&info(size), limits)?;
    }
    // Width/height are checked below rather than by `image`, so the error can say how
    // large the image is; the allocation cap still bounds header parsing.
    let mut header_limits = decode_limits(limits);
    header_limits.max_image_width = None;
    header_limits.max_image_height = None;
    reader.limits(header_limits);
    let size = guarded(|| reader.into_dimensions()).map_err(|e| from_image_error(e, None))?;
    let info = info(size);
    check_dimensions(&info, limits)?;
    Ok(info)
}

/// Decodes the first frame, refusing anything over `limits` before allocating it.
///
/// Use [`decode_source`] (or [`preprocess`]) to get Pillow's exact behaviour for
/// palette images, which need nearest-neighbour resizing.
pub fn decode(bytes: &[u8], limits: &ImageLimits) -> Result<DynamicImage, ImageError> {
    decode_source(bytes, limits).map(|source| source.image)
}

/// Decodes like [`decode`] and also reports the resize filter Pillow would use.
pub fn decode_source(bytes: &[u8], limits: &ImageLimits) -> Result<SourceImage, ImageError> {
    let info = probe(bytes, limits)?;
    let (mut reader, _) = reader_for(bytes)?;
    reader.limits(decode_limits(limits));
    let image = guarded(|| reader.decode()).map_err(|e| from_image_error(e, Some(&info)))?;
    if image.width() == 0 || image.height() == 0 {
        return Err(ImageError::Decode("image has no pixels".into()));
    }
    let facts = SourceFacts::sniff(info.format, bytes);
    Ok(SourceImage {
        image: facts.apply(image),
        resample: facts.resample,
        info,
    })
}

/// Steps 1-3 (bicubic resize, center crop, RGB) for an image in Pillow's layout.
///
/// Always bicubic: for palette sources use [`SourceImage::resize_and_crop`].
pub fn resize_and_crop(img: &DynamicImage, spec: &PixelSpec) -> RgbImage {
    resize_and_crop_with(img, Resample::Bicubic, spec)
}

/// Steps 1-3 with an explicit filter. An image without pixels yields a black crop.
pub fn resize_and_crop_with(img: &DynamicImage, resample: Resample, spec: &PixelSpec) -> RgbImage {
    let (width, height) = (img.width() as usize, img.height() as usize);
    if width == 0 || height == 0 {
        return RgbImage::new(spec.size as u32, spec.size as u32);
    }
    let plan = Plan::new(width, height, spec);
    match pil_pixels(img) {
        PilPixels::Wide(data) => {
            let crop = resize_window::<u16, i32>(&data, width, height, 1, &plan, resample);
            crop.to_rgb(|px| {
                let v = px[0].clamp(0, 255) as u8;
                [v, v, v]
            })
        }
        PilPixels::Narrow { data, channels } => {
            let crop = resize_window::<u8, u8>(&data, width, height, channels, &plan, resample);
            crop.to_rgb(|px| match *px {
                [l] | [l, _] => [l, l, l],
                [r, g, b] | [r, g, b, _] => [r, g, b],
                _ => [0, 0, 0],
            })
        }
    }
}

/// Steps 4-5: `ToTensor()` then `Normalize(spec.mean, spec.std)`, as CHW f32 (`3 * w * h`
/// values; only the spec's mean and std are used).
pub fn normalize(crop: &RgbImage, spec: &PixelSpec) -> Vec<f32> {
    let plane = crop.width() as usize * crop.height() as usize;
    let mut out = vec![0.0_f32; 3 * plane];
    for (i, px) in crop.pixels().enumerate() {
        for c in 0..3 {
            // Same f32 operations, in the same order, as torch: div(255), sub_(mean), div_(std).
            out[c * plane + i] = (f32::from(px[c]) / 255.0 - spec.mean[c]) / spec.std[c];
        }
    }
    out
}

/// Bytes to normalised CHW pixel values (`spec.values_per_image()`: `3 * size * size`).
pub fn preprocess(
    bytes: &[u8],
    limits: &ImageLimits,
    spec: &PixelSpec,
) -> Result<Vec<f32>, ImageError> {
    let source = decode_source(bytes, limits)?;
    Ok(normalize(&source.resize_and_crop(spec), spec))
}

// ---------------------------------------------------------------------------------------
// Decoding helpers

fn check_payload(bytes: &[u8], limits: &ImageLimits) -> Result<(), ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::Empty);
    }
    if bytes.len() > limits.max_bytes {
        return Err(ImageError::TooManyBytes {
            size: bytes.len(),
            limit: limits.max_bytes,
        });
    }
    Ok(())
}

fn check_dimensions(info: &ImageInfo, limits: &ImageLimits) -> Result<(), ImageError> {
    let too_large = |limit: String| ImageError::TooLarge {
        width: info.width,
        height: info.height,
        limit,
    };
    if info.width > limits.max_width || info.height > limits.max_height {
        return Err(too_large(format!(
            "at most {}x{} pixels",
            limits.max_width, limits.max_height
        )));
    }
    if u64::from(info.width) * u64::from(info.height) > limits.max_pixels {
        return Err(too_large(format!("at most {} pixels", limits.max_pixels)));
    }
    if info.width == 0 || info.height == 0 {
        return Err(ImageError::Decode("image has no pixels".into()));
    }
    Ok(())
}

fn png_ihdr_dimensions(format: &str, bytes: &[u8]) -> Option<(u32, u32)> {
    if format != "png" || bytes.get(12..16)? != b"IHDR" {
        return None;
    }
    let be = |at: usize| Some(u32::from_be_bytes(bytes.get(at..at + 4)?.try_into().ok()?));
    Some((be(16)?, be(20)?))
}

/// A reader over an in-memory payload.
type SliceReader<'a> = ImageReader<Cursor<&'a [u8]>>;

fn reader_for(bytes: &[u8]) -> Result<(SliceReader<'_>, &'static str), ImageError> {
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ImageError::Decode(e.to_string()))?;
    let name = match reader.format() {
        Some(ImageFormat::Png) => "png",
        Some(ImageFormat::Jpeg) => "jpeg",
        Some(ImageFormat::WebP) => "webp",
        Some(ImageFormat::Gif) => "gif",
        Some(ImageFormat::Bmp) => "bmp",
        Some(other) => {
            return Err(ImageError::UnsupportedFormat(
                format!("{other:?}").to_lowercase(),
            ))
        }
        None => return Err(ImageError::UnsupportedFormat("unrecognised data".into())),
    };
    Ok((reader, name))
}

fn decode_limits(limits: &ImageLimits) -> image::Limits {
    let mut out = image::Limits::default();
    out.max_image_width = Some(limits.max_width);
    out.max_image_height = Some(limits.max_height);
    out.max_alloc = Some(
        limits
            .max_pixels
            .saturating_mul(MAX_BYTES_PER_PIXEL)
            .saturating_add(DECODER_HEADROOM),
    );
    out
}

/// Runs a decoder call, turning a decoder panic (a bug, but on untrusted input) into an error
/// instead of taking the worker down.
fn guarded<T>(f: impl FnOnce() -> image::ImageResult<T>) -> image::ImageResult<T> {
    panic::catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        Err(image::ImageError::IoError(std::io::Error::other(
            "decoder panicked",
        )))
    })
}

fn from_image_error(err: image::ImageError, info: Option<&ImageInfo>) -> ImageError {
    match err {
        image::ImageError::Limits(limit) => ImageError::TooLarge {
            width: info.map_or(0, |i| i.width),
            height: info.map_or(0, |i| i.height),
            limit: limit.to_string(),
        },
        image::ImageError::Unsupported(e)
            if matches!(e.kind(), UnsupportedErrorKind::Format(_)) =>
        {
            ImageError::UnsupportedFormat(e.to_string())
        }
        other => ImageError::Decode(other.to_string()),
    }
}

// ---------------------------------------------------------------------------------------
// Recovering Pillow's mode from the header

/// What Pillow's `Image.open` would make of a file, as far as preprocessing cares.
struct SourceFacts {
    resample: Resample,
    /// Whether Pillow's mode has an alpha band (`LA`/`RGBA`); if not, any alpha the
    /// `image` crate synthesised from `tRNS`/palette transparency is dropped.
    keep_alpha: bool,
    gif_canvas: Option<GifCanvas>,
}

/// GIF pixels outside the first frame's rectangle: Pillow fills them with the
/// transparent index (else index 0), `image` with transparent black.
struct GifCanvas {
    frame: [u32; 4],
    rgb: [u8; 3],
}

impl SourceFacts {
    const PLAIN: Self = Self {
        resample: Resample::Bicubic,
        keep_alpha: true,
        gif_canvas: None,
    };

    fn sniff(format: &str, bytes: &[u8]) -> Self {
        match format {
            "png" => png_facts(bytes),
            "gif" => gif_facts(bytes).unwrap_or(Self {
                resample: Resample::Nearest,
                keep_alpha: false,
                gif_canvas: None,
            }),
            "bmp" => bmp_facts(bytes).unwrap_or(Self::PLAIN),
            _ => Self::PLAIN,
        }
    }

    fn apply(&self, image: DynamicImage) -> DynamicImage {
        let image = match (&self.gif_canvas, image) {
            (Some(canvas), DynamicImage::ImageRgba8(mut buf)) => {
                canvas.paint(&mut buf);
                DynamicImage::ImageRgba8(buf)
            }
            (_, image) => image,
        };
        let image = if self.keep_alpha {
            image
        } else {
            drop_alpha(image)
        };
        high_bytes(&image).unwrap_or(image)
    }
}

impl GifCanvas {
    fn paint(&self, buf: &mut image::RgbaImage) {
        let [x0, y0, x1, y1] = self.frame;
        let [r, g, b] = self.rgb;
        for (x, y, px) in buf.enumerate_pixels_mut() {
            if x < x0 || x >= x1 || y < y0 || y >= y1 {
                *px = Rgba([r, g, b, 255]);
            }
        }
    }
}

fn png_facts(bytes: &[u8]) -> SourceFacts {
    // IHDR is always the first chunk: bit depth at byte 24, colour type at byte 25.
    let (depth, colour) = (bytes.get(24).copied(), bytes.get(25).copied());
    let palette_like = colour == Some(3) || (colour == Some(0) && depth == Some(1));
    SourceFacts {
        resample: if palette_like {
            Resample::Nearest
        } else {
            Resample::Bicubic
        },
        keep_alpha: matches!(colour, Some(4 | 6)),
        gif_canvas: None,
    }
}

/// Mirrors GifImagePlugin 9.5: the first frame is `P`, or `L` when its palette is the
/// identity grey ramp (`_is_palette_needed` is false).
fn gif_facts(bytes: &[u8]) -> Option<SourceFacts> {
    let flags = *bytes.get(10)?;
    let mut pos = 13;
    let mut global = None;
    if flags & 0x80 != 0 {
        let len = 3 << ((flags & 7) + 1);
        global = Some(bytes.get(pos..pos + len)?);
        pos += len;
    }
    let mut transparency = None;
    loop {
        match *bytes.get(pos)? {
            0x21 => {
                let block = gif_sub_block(bytes, pos + 2)?;
                // Graphic control extension: bit 0 of the packed byte flags a transparent index.
                if bytes[pos + 1] == 0xF9 && block.len() >= 4 && block[0] & 1 != 0 {
                    transparency = Some(block[3]);
                }
                pos = gif_skip_sub_blocks(bytes, pos + 2)?;
            }
            0x2C => {
                let desc = bytes.get(pos + 1..pos + 10)?;
                let field = |i: usize| u32::from(u16::from_le_bytes([desc[i], desc[i + 1]]));
                let (x0, y0) = (field(0), field(2));
                let frame = [x0, y0, x0 + field(4), y0 + field(6)];
                let local = if desc[8] & 0x80 != 0 {
                    let len = 3 << ((desc[8] & 7) + 1);
                    Some(bytes.get(pos + 10..pos + 10 + len)?)
                } else {
                    None
                };
                let palette = match local {
                    Some(p) => (!is_grey_ramp(p)).then_some(p),
                    None => global.filter(|p| !is_grey_ramp(p)),
                };
                let index = transparency.unwrap_or(0);
                let rgb = palette
                    .and_then(|p| p.get(usize::from(index) * 3..usize::from(index) * 3 + 3))
                    .map_or([index; 3], |c| [c[0], c[1], c[2]]);
                return Some(SourceFacts {
                    resample: if palette.is_some() {
                        Resample::Nearest
                    } else {
                        Resample::Bicubic
                    },
                    keep_alpha: false,
                    gif_canvas: Some(GifCanvas { frame, rgb }),
                });
            }
            _ => return None,
        }
    }
}

fn gif_sub_block(bytes: &[u8], pos: usize) -> Option<&[u8]> {
    let len = usize::from(*bytes.get(pos)?);
    bytes.get(pos + 1..pos + 1 + len)
}

fn gif_skip_sub_blocks(bytes: &[u8], mut pos: usize) -> Option<usize> {
    loop {
        let len = usize::from(*bytes.get(pos)?);
        pos += 1 + len;
        if len == 0 {
            return Some(pos);
        }
    }
}

fn is_grey_ramp(palette: &[u8]) -> bool {
    palette
        .chunks(3)
        .enumerate()
        .all(|(i, c)| c.len() == 3 && c.iter().all(|&v| usize::from(v) == i))
}

/// Mirrors BmpImagePlugin 9.5: <= 8-bit files are `P`, unless the palette is grey
/// (black/white for 2 colours -> `1`, the identity ramp otherwise -> `L`).
fn bmp_facts(bytes: &[u8]) -> Option<SourceFacts> {
    let header_size = u32::from_le_bytes(bytes.get(14..18)?.try_into().ok()?) as usize;
    let u16_at = |at: usize| -> Option<u16> {
        Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
    };
    let (bits, colours, stride) = match header_size {
        12 => (u16_at(24)?, 0, 3),
        40 | 64 | 108 | 124 => {
            let colours = u32::from_le_bytes(bytes.get(46..50)?.try_into().ok()?);
            (u16_at(28)?, colours as usize, 4)
        }
        _ => return None,
    };
    if !matches!(bits, 1 | 4 | 8) {
        return Some(SourceFacts::PLAIN);
    }
    let colours = if colours == 0 { 1 << bits } else { colours };
    let palette = bytes.get(14 + header_size..)?;
    let grey = |i: usize, v: usize| {
        palette
            .get(i * stride..i * stride + 3)
            .is_some_and(|c| c.iter().all(|&x| usize::from(x) == v))
    };
    let is_grey = if colours == 2 {
        grey(0, 0) && grey(1, 255)
    } else {
        colours <= 256 && (0..colours).all(|i| grey(i, i))
    };
    Some(SourceFacts {
        resample: if is_grey && colours != 2 {
            Resample::Bicubic
        } else {
            Resample::Nearest
        },
        ..SourceFacts::PLAIN
    })
}

fn drop_alpha(image: DynamicImage) -> DynamicImage {
    match image {
        DynamicImage::ImageLumaA8(buf) => DynamicImage::ImageLuma8(image::GrayImage::from_fn(
            buf.width(),
            buf.height(),
            |x, y| image::Luma([buf.get_pixel(x, y)[0]]),
        )),
        DynamicImage::ImageRgba8(buf) => {
            DynamicImage::ImageRgb8(RgbImage::from_fn(buf.width(), buf.height(), |x, y| {
                let [r, g, b, _] = buf.get_pixel(x, y).0;
                Rgb([r, g, b])
            }))
        }
        DynamicImage::ImageLumaA16(buf) => DynamicImage::ImageLuma16(image::ImageBuffer::from_fn(
            buf.width(),
            buf.height(),
            |x, y| image::Luma([buf.get_pixel(x, y)[0]]),
        )),
        DynamicImage::ImageRgba16(buf) => DynamicImage::ImageRgb16(image::ImageBuffer::from_fn(
            buf.width(),
            buf.height(),
            |x, y| {
                let [r, g, b, _] = buf.get_pixel(x, y).0;
                Rgb([r, g, b])
            },
        )),
        other => other,
    }
}

/// Pillow opens 16-bit RGB(A)/LA PNGs as 8-bit by keeping the high byte of each sample
/// (only 16-bit grey becomes the 32-bit `I` mode). `None` if `image` needs no change.
fn high_bytes(image: &DynamicImage) -> Option<DynamicImage> {
    let narrow = |v: u16| (v >> 8) as u8;
    Some(match image {
        DynamicImage::ImageLumaA16(buf) => DynamicImage::ImageLumaA8(image::ImageBuffer::from_fn(
            buf.width(),
            buf.height(),
            |x, y| image::LumaA(buf.get_pixel(x, y).0.map(narrow)),
        )),
        DynamicImage::ImageRgb16(buf) => {
            DynamicImage::ImageRgb8(RgbImage::from_fn(buf.width(), buf.height(), |x, y| {
                Rgb(buf.get_pixel(x, y).0.map(narrow))
            }))
        }
        DynamicImage::ImageRgba16(buf) => DynamicImage::ImageRgba8(image::RgbaImage::from_fn(
            buf.width(),
            buf.height(),
            |x, y| Rgba(buf.get_pixel(x, y).0.map(narrow)),
        )),
        _ => return None,
    })
}

// ---------------------------------------------------------------------------------------
// Resize + crop

/// Pixels in one of the sample layouts Pillow resizes.
enum PilPixels<'a> {
    /// `L`, `LA`, `RGB` or `RGBA`: 1-4 interleaved 8-bit channels.
    Narrow {
        data: Cow<'a, [u8]>,
        channels: usize,
    },
    /// 16-bit grey, which Pillow holds as mode `I` (32-bit integers).
    Wide(Cow<'a, [u16]>),
}

fn pil_pixels(img: &DynamicImage) -> PilPixels<'_> {
    fn borrowed(data: &[u8], channels: usize) -> PilPixels<'_> {
        PilPixels::Narrow {
            data: Cow::Borrowed(data),
            channels,
        }
    }
    match img {
        DynamicImage::ImageLuma8(b) => borrowed(b.as_raw(), 1),
        DynamicImage::ImageLumaA8(b) => borrowed(b.as_raw(), 2),
        DynamicImage::ImageRgb8(b) => borrowed(b.as_raw(), 3),
        DynamicImage::ImageRgba8(b) => borrowed(b.as_raw(), 4),
        DynamicImage::ImageLuma16(b) => PilPixels::Wide(Cow::Borrowed(b.as_raw())),
        other => {
            // 16-bit colour keeps its high bytes as in Pillow; float images have no Pillow
            // equivalent, so they go through `image`'s own 8-bit conversion.
            let converted = high_bytes(other).unwrap_or_else(|| {
                if other.color().has_alpha() {
                    DynamicImage::ImageRgba8(other.to_rgba8())
                } else {
                    DynamicImage::ImageRgb8(other.to_rgb8())
                }
            });
            PilPixels::Narrow {
                channels: usize::from(converted.color().channel_count()),
                data: Cow::Owned(converted.into_bytes()),
            }
        }
    }
}

/// torchvision's resize target and center-crop window, in resized-image coordinates.
struct Plan {
    resized: (usize, usize),
    cols: Range<usize>,
    rows: Range<usize>,
}

impl Plan {
    fn new(width: usize, height: usize, spec: &PixelSpec) -> Self {
        let (target, crop) = (spec.resize, spec.size.min(spec.resize));
        // `_compute_resized_output_size`: int(size * long / short) with Python's exact
        // int / int true division (both operands are exact in f64).
        let (short, long) = if width <= height {
            (width, height)
        } else {
            (height, width)
        };
        let new_long = (target as f64 * long as f64 / short as f64) as usize;
        let resized = if width <= height {
            (target, new_long)
        } else {
            (new_long, target)
        };
        // `center_crop`: int(round((size - crop) / 2.0)), Python rounds half to even.
        let offset = |size: usize| ((size - crop) as f64 / 2.0).round_ties_even() as usize;
        let (left, top) = (offset(resized.0), offset(resized.1));
        Self {
            resized,
            cols: left..left + crop,
            rows: top..top + crop,
        }
    }
}

/// Resizes (as Pillow) but computes only the output pixels inside the crop window; every
/// output pixel of Pillow's separable resampler depends only on its own coefficient row,
/// so this is exact while bounding the work for extreme aspect ratios.
fn resize_window<S, T>(
    src: &[S],
    width: usize,
    height: usize,
    channels: usize,
    plan: &Plan,
    resample: Resample,
) -> Raster<T>
where
    S: Copy,
    T: Sample + From<S>,
{
    if plan.resized == (width, height) {
        // `Image.resize` returns a plain copy: no premultiplication round trip.
        let cols: Vec<_> = plan.cols.clone().map(Some).collect();
        let rows: Vec<_> = plan.rows.clone().map(Some).collect();
        return Raster::gather(src, width, channels, &cols, &rows);
    }
    match resample {
        Resample::Nearest => {
            let cols = nearest_indices(width, plan.resized.0, plan.cols.clone());
            let rows = nearest_indices(height, plan.resized.1, plan.rows.clone());
            Raster::gather(src, width, channels, &cols, &rows)
        }
        Resample::Bicubic => bicubic_window(src, width, height, channels, plan),
    }
}

fn bicubic_window<S, T>(
    src: &[S],
    width: usize,
    height: usize,
    channels: usize,
    plan: &Plan,
) -> Raster<T>
where
    S: Copy,
    T: Sample + From<S>,
{
    // Pillow skips a pass whose size does not change.
    let horizontal =
        (plan.resized.0 != width).then(|| windows::<T>(width, plan.resized.0, plan.cols.clone()));
    let vertical =
        (plan.resized.1 != height).then(|| windows::<T>(height, plan.resized.1, plan.rows.clone()));
    let cols = horizontal.as_deref().map_or(plan.cols.clone(), span);
    let rows = vertical.as_deref().map_or(plan.rows.clone(), span);

    let mut region = Raster::<T>::extract(src, width, channels, cols.clone(), rows.clone());
    // Pillow resizes LA/RGBA as premultiplied La/RGBa and converts back afterwards.
    let alpha = T::HAS_PREMULTIPLY && (channels == 2 || channels == 4);
    if alpha {
        region.pixels_mut().for_each(T::premultiply);
    }
    if let Some(win) = &horizontal {
        region = region.convolve_rows(cols.start, win);
    }
    if let Some(win) = &vertical {
        region = region.convolve_cols(rows.start, win);
    }
    if alpha {
        region.pixels_mut().for_each(T::unpremultiply);
    }
    region
}

/// Source range read by a set of windows.
fn span<W>(windows: &[Window<W>]) -> Range<usize> {
    let start = windows.iter().map(|w| w.start).min().unwrap_or(0);
    let end = windows
        .iter()
        .map(|w| w.start + w.weights.len())
        .max()
        .unwrap_or(0);
    start..end
}

/// Pillow's NEAREST resize (`ImagingScaleAffine`): the source coordinate is accumulated
/// by repeated addition, not multiplication, so rounding drift is reproduced exactly.
fn nearest_indices(in_size: usize, out_size: usize, outputs: Range<usize>) -> Vec<Option<usize>> {
    // The box edges are C floats, the step a double.
    let step = f64::from(in_size as f32) / out_size as f64;
    let mut pos = step * 0.5;
    let mut map = Vec::with_capacity(outputs.len());
    for i in 0..outputs.end {
        if i >= outputs.start {
            // COORD(): truncation toward zero; positions are never negative here.
            map.push(Some(pos as usize).filter(|&x| x < in_size));
        }
        pos += step;
    }
    map
}

/// Pillow's `bicubic_filter` (a = -0.5), evaluated with the same operation order.
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// One output sample's taps: source indices `start..start + weights.len()`.
struct Window<W> {
    start: usize,
    weights: Vec<W>,
}

/// Pillow's `precompute_coeffs` for the output indices in `outputs` only.
fn windows<T: Sample>(
    in_size: usize,
    out_size: usize,
    outputs: Range<usize>,
) -> Vec<Window<T::Weight>> {
    let scale = f64::from(in_size as f32) / out_size as f64;
    // Antialiasing: widen the kernel when downscaling.
    let filter_scale = scale.max(1.0);
    let support = BICUBIC_SUPPORT * filter_scale;
    let inv = 1.0 / filter_scale;
    outputs
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            // C `(int)` casts truncate toward zero, as `as` does.
            let xmin = ((center - support + 0.5) as i64).max(0);
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64);
            let mut k: Vec<f64> = (xmin..xmax)
                .map(|x| bicubic((x as f64 - center + 0.5) * inv))
                .collect();
            let total: f64 = k.iter().sum();
            if total != 0.0 {
                k.iter_mut().for_each(|w| *w /= total);
            }
            Window {
                start: xmin as usize,
                weights: T::weights(&k),
            }
        })
        .collect()
}

/// A sample type Pillow resamples: `u8` bands (fixed point) or `I` integers (double).
trait Sample: Copy + Default {
    type Weight: Copy;
    type Acc: Copy;
    /// Whether LA/RGBA-style premultiplication applies.
    const HAS_PREMULTIPLY: bool;
    fn weights(normalised: &[f64]) -> Vec<Self::Weight>;
    /// The sum before the first tap.
    fn start() -> Self::Acc;
    fn tap(acc: Self::Acc, sample: Self, weight: Self::Weight) -> Self::Acc;
    /// Rounds and clips the sum to an output sample.
    fn finish(acc: Self::Acc) -> Self;
    fn premultiply(_pixel: &mut [Self]) {}
    fn unpremultiply(_pixel: &mut [Self]) {}
}

impl Sample for u8 {
    type Weight = i32;
    type Acc = i32;
    const HAS_PREMULTIPLY: bool = true;

    /// `normalize_coeffs_8bpc`: round half away from zero to 22 fractional bits.
    fn weights(normalised: &[f64]) -> Vec<i32> {
        let one = f64::from(1u32 << PRECISION_BITS);
        normalised
            .iter()
            .map(|&k| {
                if k < 0.0 {
                    (-0.5 + k * one) as i32
                } else {
                    (0.5 + k * one) as i32
                }
            })
            .collect()
    }

    /// Pillow starts at one half so that the final shift rounds.
    fn start() -> i32 {
        1 << (PRECISION_BITS - 1)
    }

    fn tap(acc: i32, sample: u8, weight: i32) -> i32 {
        acc + i32::from(sample) * weight
    }

    /// `clip8`: arithmetic shift (floor), then clamp.
    fn finish(acc: i32) -> u8 {
        (acc >> PRECISION_BITS).clamp(0, 255) as u8
    }

    /// `rgbA2rgba` / `lA2la`: colour * alpha / 255 with Pillow's MULDIV255 rounding.
    fn premultiply(pixel: &mut [u8]) {
        if let Some((&mut alpha, colour)) = pixel.split_last_mut() {
            for v in colour {
                let t = u32::from(*v) * u32::from(alpha) + 128;
                *v = (((t >> 8) + t) >> 8) as u8;
            }
        }
    }

    /// `rgba2rgbA` / `la2lA`: truncating division, untouched when alpha is 0 or 255.
    fn unpremultiply(pixel: &mut [u8]) {
        if let Some((&mut alpha, colour)) = pixel.split_last_mut() {
            if alpha != 0 && alpha != 255 {
                for v in colour {
                    *v = (255 * u32::from(*v) / u32::from(alpha)).min(255) as u8;
                }
            }
        }
    }
}

impl Sample for i32 {
    type Weight = f64;
    type Acc = f64;
    const HAS_PREMULTIPLY: bool = false;

    fn weights(normalised: &[f64]) -> Vec<f64> {
        normalised.to_vec()
    }

    fn start() -> f64 {
        0.0
    }

    /// `ImagingResample*_32bpc` accumulates in double precision.
    fn tap(acc: f64, sample: i32, weight: f64) -> f64 {
        acc + f64::from(sample) * weight
    }

    /// `ROUND_UP`: half away from zero.
    fn finish(acc: f64) -> i32 {
        (if acc >= 0.0 { acc + 0.5 } else { acc - 0.5 }) as i32
    }
}

/// Interleaved samples of a rectangle.
struct Raster<T> {
    width: usize,
    height: usize,
    channels: usize,
    data: Vec<T>,
}

impl<T: Sample> Raster<T> {
    fn new(width: usize, height: usize, channels: usize) -> Self {
        Self {
            width,
            height,
            channels,
            data: vec![T::default(); width * height * channels],
        }
    }

    fn pixels_mut(&mut self) -> std::slice::ChunksExactMut<'_, T> {
        self.data.chunks_exact_mut(self.channels)
    }

    /// Copies `cols x rows` out of a `src_width`-wide interleaved buffer.
    fn extract<S: Copy>(
        src: &[S],
        src_width: usize,
        channels: usize,
        cols: Range<usize>,
        rows: Range<usize>,
    ) -> Self
    where
        T: From<S>,
    {
        let mut data = Vec::with_capacity(cols.len() * rows.len() * channels);
        for y in rows.clone() {
            let line = &src
                [(y * src_width + cols.start) * channels..(y * src_width + cols.end) * channels];
            data.extend(line.iter().map(|&v| T::from(v)));
        }
        Self {
            width: cols.len(),
            height: rows.len(),
            channels,
            data,
        }
    }

    /// Picks source pixels by index; `None` leaves the pixel zero (Pillow's fill).
    fn gather<S: Copy>(
        src: &[S],
        src_width: usize,
        channels: usize,
        cols: &[Option<usize>],
        rows: &[Option<usize>],
    ) -> Self
    where
        T: From<S>,
    {
        let mut out = Self::new(cols.len(), rows.len(), channels);
        for (y, sy) in rows.iter().enumerate() {
            let Some(sy) = sy else { continue };
            for (x, sx) in cols.iter().enumerate() {
                let Some(sx) = sx else { continue };
                let from = (sy * src_width + sx) * channels;
                let to = (y * out.width + x) * channels;
                for c in 0..channels {
                    out.data[to + c] = T::from(src[from + c]);
                }
            }
        }
        out
    }

    /// Horizontal pass; `origin` is the source column of `self`'s first column.
    fn convolve_rows(&self, origin: usize, windows: &[Window<T::Weight>]) -> Self {
        // Monomorphised per channel count so the per-tap loop over channels unrolls.
        match self.channels {
            1 => self.convolve_rows_n::<1>(origin, windows),
            2 => self.convolve_rows_n::<2>(origin, windows),
            3 => self.convolve_rows_n::<3>(origin, windows),
            _ => self.convolve_rows_n::<4>(origin, windows),
        }
    }

    fn convolve_rows_n<const CH: usize>(
        &self,
        origin: usize,
        windows: &[Window<T::Weight>],
    ) -> Self {
        let mut out = Self::new(windows.len(), self.height, CH);
        let rows = self.data.chunks_exact(self.width * CH);
        for (src, dst) in rows.zip(out.data.chunks_exact_mut(windows.len() * CH)) {
            for (win, px) in windows.iter().zip(dst.chunks_exact_mut(CH)) {
                let taps = &src[(win.start - origin) * CH..][..win.weights.len() * CH];
                let mut acc = [T::start(); CH];
                for (sample, &weight) in taps.chunks_exact(CH).zip(&win.weights) {
                    for c in 0..CH {
                        acc[c] = T::tap(acc[c], sample[c], weight);
                    }
                }
                for (v, a) in px.iter_mut().zip(acc) {
                    *v = T::finish(a);
                }
            }
        }
        out
    }

    /// Vertical pass; `origin` is the source row of `self`'s first row.
    fn convolve_cols(&self, origin: usize, windows: &[Window<T::Weight>]) -> Self {
        let stride = self.width * self.channels;
        let mut out = Self::new(self.width, windows.len(), self.channels);
        let mut acc = vec![T::start(); stride];
        for (win, dst) in windows.iter().zip(out.data.chunks_exact_mut(stride)) {
            acc.fill(T::start());
            let rows = self.data[(win.start - origin) * stride..].chunks_exact(stride);
            for (row, &weight) in rows.zip(&win.weights) {
                for (a, &v) in acc.iter_mut().zip(row) {
                    *a = T::tap(*a, v, weight);
                }
            }
            for (v, &a) in dst.iter_mut().zip(&acc) {
                *v = T::finish(a);
            }
        }
        out
    }

    /// `convert("RGB")`, with `to_rgb` mapping one pixel's samples.
    fn to_rgb(&self, to_rgb: impl Fn(&[T]) -> [u8; 3]) -> RgbImage {
        RgbImage::from_fn(self.width as u32, self.height as u32, |x, y| {
            let at = (y as usize * self.width + x as usize) * self.channels;
            Rgb(to_rgb(&self.data[at..at + self.channels]))
        })
    }
}
