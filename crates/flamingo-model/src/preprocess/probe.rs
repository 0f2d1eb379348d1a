//! Header probe and size limits: what an untrusted payload is, and whether it may be decoded.

use std::io::Cursor;
use std::panic::{self, AssertUnwindSafe};

use image::error::UnsupportedErrorKind;
use image::{ImageFormat, ImageReader};

use super::{ImageError, ImageInfo, ImageLimits};

/// Allocation slack granted to decoders on top of the decoded pixels (row buffers,
/// JPEG coefficient planes, metadata chunks).
const DECODER_HEADROOM: u64 = 64 * 1024 * 1024;

/// Worst-case decoded bytes per pixel (16-bit RGBA).
const MAX_BYTES_PER_PIXEL: u64 = 8;

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
pub(super) type SliceReader<'a> = ImageReader<Cursor<&'a [u8]>>;

pub(super) fn reader_for(bytes: &[u8]) -> Result<(SliceReader<'_>, &'static str), ImageError> {
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

pub(super) fn decode_limits(limits: &ImageLimits) -> image::Limits {
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
pub(super) fn guarded<T>(f: impl FnOnce() -> image::ImageResult<T>) -> image::ImageResult<T> {
    panic::catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        Err(image::ImageError::IoError(std::io::Error::other(
            "decoder panicked",
        )))
    })
}

pub(super) fn from_image_error(err: image::ImageError, info: Option<&ImageInfo>) -> ImageError {
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
