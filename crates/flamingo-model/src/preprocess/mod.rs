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

mod decode;
mod normalize;
mod probe;
mod resample;

pub use decode::{decode, decode_source};
pub use normalize::normalize;
pub use probe::probe;
pub use resample::{resize_and_crop, resize_and_crop_with};

use image::{DynamicImage, RgbImage};

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

/// Bytes to normalised CHW pixel values (`spec.values_per_image()`: `3 * size * size`).
pub fn preprocess(
    bytes: &[u8],
    limits: &ImageLimits,
    spec: &PixelSpec,
) -> Result<Vec<f32>, ImageError> {
    let source = decode_source(bytes, limits)?;
    Ok(normalize(&source.resize_and_crop(spec), spec))
}
