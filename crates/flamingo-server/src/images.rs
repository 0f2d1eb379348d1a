//! Image payloads: base64 or `data:` URL -> bytes -> header probe -> decoded, resized, normalised
//! pixels, plus a hash of the bytes for the worker's feature cache. Runs on the blocking pool.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use base64::Engine as _;
use candle_core::Tensor;
use flamingo_model::preprocess::{self, ImageError, ImageInfo, ImageLimits, PixelSpec};
use sha2::{Digest, Sha256};

use crate::budget::{MemoryBudget, Refused};
use crate::config::Limits;
use crate::error::{ApiError, ErrorKind};
use crate::metrics as m;
use crate::worker::cache::SharedFeatureCache;

/// A preprocessed image (`3 * S * S` normalised CHW values, S the model's input size: its
/// `PixelSpec::size`) and the hash of its bytes.
#[derive(Clone)]
pub struct ImageInput {
    pub hash: [u8; 32],
    /// Empty when `features` were found in the cache before decoding.
    pub pixels: Arc<Vec<f32>>,
    /// The image's resampled features, taken from the worker's cache by the hash of the bytes
    /// (no decoding at all); the request holds them, so a later eviction cannot lose them.
    pub features: Option<Tensor>,
}

/// What decoding an image may hold at its peak, from its header: the decoded frame at up to 8
/// bytes a pixel (16-bit RGBA), the converted copy and the resampler's f32 rows (measured:
/// ~11.5 bytes a pixel for a 16-bit grey PNG), rounded up.
pub fn decode_cost(info: &ImageInfo) -> usize {
    const BYTES_PER_PIXEL: usize = 16;
    (info.width as usize)
        .saturating_mul(info.height as usize)
        .saturating_mul(BYTES_PER_PIXEL)
}

/// Everything image loading needs besides the payloads.
pub struct ImageContext<'a> {
    pub limits: &'a Limits,
    pub spec: &'a PixelSpec,
    pub cache: &'a SharedFeatureCache,
    pub budget: &'a MemoryBudget,
    /// Set when the client has gone: stop before the next expensive step.
    pub cancelled: &'a AtomicBool,
    pub deadline: Instant,
    /// Bytes of the payloads that were image URLs, fetched before (`fetch::fetch_images`), at
    /// their payload's index; empty when the request had none.
    pub fetched: &'a [Option<Vec<u8>>],
}

/// Loads a request's images in order: bytes and their hash first, then the feature cache, then
/// (only for images neither cached nor seen earlier in the request) header probe, a share of
/// the decode memory budget, and the decode itself.
pub fn load_all(payloads: &[String], cx: &ImageContext) -> Result<Vec<ImageInput>, ApiError> {
    let mut seen: HashMap<[u8; 32], ImageInput> = HashMap::new();
    let mut out = Vec::with_capacity(payloads.len());
    for (i, payload) in payloads.iter().enumerate() {
        let what = format!("image {}", i + 1);
        if cx.cancelled.load(Ordering::Relaxed) {
            return Err(client_gone());
        }
        let bytes: std::borrow::Cow<[u8]> = match cx.fetched.get(i).and_then(|b| b.as_deref()) {
            Some(fetched) => fetched.into(),
            None => payload_bytes(payload, cx.limits, &what)?.into(),
        };
        let hash: [u8; 32] = Sha256::digest(&bytes).into();
        if let Some(done) = seen.get(&hash) {
            out.push(done.clone());
            continue;
        }
        let cached = cx
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&hash);
        let input = match cached {
            Some(features) => {
                metrics::counter!(m::IMAGE_CACHE_HITS).increment(1);
                ImageInput {
                    hash,
                    pixels: Arc::new(Vec::new()),
                    features: Some(features),
                }
            }
            None => {
                let il = image_limits(cx.limits);
                let info = preprocess::probe(&bytes, &il).map_err(|e| image_error(&what, e))?;
                let _held = cx
                    .budget
                    .reserve(decode_cost(&info), cx.deadline, || {
                        cx.cancelled.load(Ordering::Relaxed)
                    })
                    .map_err(|r| match r {
                        Refused::Cancelled => client_gone(),
                        Refused::TimedOut => ApiError::new(
                            ErrorKind::Timeout,
                            "the request passed its deadline waiting for image decoding memory (limits.preprocess_memory_bytes)",
                        ),
                    })?;
                metrics::counter!(m::IMAGES_DECODED).increment(1);
                let pixels = preprocess::preprocess(&bytes, &il, cx.spec)
                    .map_err(|e| image_error(&what, e))?;
                ImageInput {
                    hash,
                    pixels: Arc::new(pixels),
                    features: None,
                }
            }
        };
        seen.insert(hash, input.clone());
        out.push(input);
    }
    Ok(out)
}

/// Never seen by the client (it has gone); ends the work early.
fn client_gone() -> ApiError {
    ApiError::new(
        ErrorKind::InvalidRequest,
        "the client closed the connection",
    )
}

/// Standard alphabet, padding optional (browsers and Python pad, some tools do not).
const STANDARD: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);
/// URL-safe alphabet, for clients that use it.
const URL_SAFE: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

pub fn image_limits(limits: &Limits) -> ImageLimits {
    ImageLimits {
        max_bytes: limits.max_image_bytes,
        max_width: limits.max_image_side,
        max_height: limits.max_image_side,
        max_pixels: limits.max_image_pixels,
    }
}

/// base64 or `data:image/...;base64,` -> bytes. `what` names the field in messages.
pub fn payload_bytes(payload: &str, limits: &Limits, what: &str) -> Result<Vec<u8>, ApiError> {
    let payload = payload.trim();
    if payload.starts_with("http://") || payload.starts_with("https://") {
        // Fetched URLs never get here (`fetch::fetch_images` replaces them by their bytes).
        return Err(ApiError::validation(format!(
            "{what}: image URLs are not fetched here (server.allow_image_urls); \
             send the image as base64 or a data:image/...;base64, URL"
        )));
    }
    let b64 = match payload.strip_prefix("data:") {
        Some(rest) => {
            let (meta, data) = rest.split_once(',').ok_or_else(|| {
                ApiError::validation(format!("{what}: malformed data: URL (no comma)"))
            })?;
            let mut parts = meta.split(';');
            let mime = parts.next().unwrap_or_default();
            if !(mime.is_empty()
                || mime.starts_with("image/")
                || mime == "application/octet-stream")
            {
                return Err(ApiError::validation(format!(
                    "{what}: data: URL of type `{mime}` is not an image"
                )));
            }
            if !parts.any(|p| p.eq_ignore_ascii_case("base64")) {
                return Err(ApiError::validation(format!(
                    "{what}: data: URLs must be base64-encoded (`;base64,`)"
                )));
            }
            data
        }
        None => payload,
    };
    if b64.is_empty() {
        return Err(ApiError::validation(format!("{what}: empty image")));
    }
    // Refuse before decoding: 4 base64 characters carry 3 bytes.
    let approx = b64.len() / 4 * 3;
    if approx > limits.max_image_bytes + 3 {
        return Err(ApiError::new(
            ErrorKind::PayloadTooLarge,
            format!(
                "{what}: image of about {approx} bytes exceeds limits.max_image_bytes ({})",
                limits.max_image_bytes
            ),
        ));
    }
    let cleaned: String;
    let b64 = if b64.bytes().any(|b| b.is_ascii_whitespace()) {
        cleaned = b64.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        cleaned.as_str()
    } else {
        b64
    };
    STANDARD
        .decode(b64)
        .or_else(|e| URL_SAFE.decode(b64).map_err(|_| e))
        .map_err(|e| ApiError::validation(format!("{what}: invalid base64: {e}")))
}

fn image_error(what: &str, e: ImageError) -> ApiError {
    let kind = if e.is_too_large() {
        ErrorKind::PayloadTooLarge
    } else {
        ErrorKind::Validation
    };
    ApiError::new(kind, format!("{what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One payload through `load_all` with no cache and no other request around.
    fn load(
        payload: &str,
        l: &Limits,
        spec: &PixelSpec,
        _what: &str,
    ) -> Result<ImageInput, ApiError> {
        let cache: SharedFeatureCache = Arc::new(std::sync::Mutex::new(
            crate::worker::cache::FeatureCache::new(0),
        ));
        let cx = ImageContext {
            limits: l,
            spec,
            cache: &cache,
            budget: &MemoryBudget::new(1 << 30),
            cancelled: &AtomicBool::new(false),
            deadline: Instant::now() + std::time::Duration::from_secs(10),
            fetched: &[],
        };
        load_all(&[payload.to_string()], &cx).map(|mut v| v.remove(0))
    }

    const PNG_1X1: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==";

    #[test]
    fn data_urls_and_plain_base64() {
        let l = Limits::default();
        assert_eq!(
            payload_bytes("data:image/png;base64,aGk=", &l, "x").unwrap(),
            b"hi"
        );
        assert_eq!(payload_bytes("aGk", &l, "x").unwrap(), b"hi");
        assert_eq!(payload_bytes("aG\nk=", &l, "x").unwrap(), b"hi");
        assert_eq!(payload_bytes("_-8", &l, "x").unwrap(), vec![0xff, 0xef]);
        for bad in [
            "https://x/y.png",
            "%%%",
            "data:image/png,abc",
            "data:text/plain;base64,aGk=",
            "",
            "data:image/png;base64,",
        ] {
            let e = payload_bytes(bad, &l, "images[0]").unwrap_err();
            assert_eq!(e.kind, ErrorKind::Validation, "{bad}");
            assert!(e.message.starts_with("images[0]"), "{}", e.message);
        }
    }

    #[test]
    fn oversized_payloads_are_413_before_decoding() {
        let l = Limits {
            max_image_bytes: 10,
            ..Limits::default()
        };
        let e = payload_bytes(&"A".repeat(400), &l, "x").unwrap_err();
        assert_eq!(e.kind, ErrorKind::PayloadTooLarge);
    }

    #[test]
    fn images_decode_and_hash_by_bytes() {
        let l = Limits::default();
        let spec = PixelSpec::default();
        let a = load(PNG_1X1, &l, &spec, "x").unwrap();
        let b = load(&format!("data:image/png;base64,{PNG_1X1}"), &l, &spec, "x").unwrap();
        assert_eq!(a.pixels.len(), 3 * 224 * 224);
        assert_eq!(a.hash, b.hash);
        // Another model's size and mean/std.
        let other = PixelSpec::square(112, [0.5; 3], [0.25; 3]);
        let c = load(PNG_1X1, &l, &other, "x").unwrap();
        assert_eq!(c.pixels.len(), 3 * 112 * 112);
        assert_eq!(c.hash, a.hash);
        let e = load("aGVsbG8gd29ybGQ=", &l, &spec, "x").err().unwrap();
        assert_eq!(e.kind, ErrorKind::Validation);
        // A truncated PNG (header only) is malformed input, not a server error.
        let truncated = &PNG_1X1[..40];
        assert_eq!(
            load(truncated, &l, &spec, "x").err().unwrap().kind,
            ErrorKind::Validation
        );
    }
}
