//! Everything a request needs before the model: image payloads decoded and preprocessed, the prompt
//! tokenized, parameters validated. Runs on the blocking pool, never on the worker thread.

use std::sync::Arc;

use base64::Engine as _;
use flamingo_model::engine::GenerationParams;
use flamingo_model::preprocess::{self, ImageLimits};
use flamingo_model::sampling::SamplingParams;
use flamingo_model::tokenizer::FlamingoTokenizer;
use sha2::{Digest, Sha256};

use crate::api::{Parameters, Rendered};
use crate::config::Limits;
use crate::error::{ApiError, ErrorKind};

/// A preprocessed image, keyed by the hash of its encoded bytes for the feature cache.
#[derive(Clone)]
pub struct ImageInput {
    pub hash: [u8; 32],
    pub pixels: Arc<Vec<f32>>,
}

pub struct Prepared {
    pub tokens: Vec<u32>,
    pub images: Vec<ImageInput>,
    pub params: GenerationParams,
    pub stop: Vec<String>,
    pub details: bool,
    pub decoder_input_details: bool,
    /// Seed used when sampling (reported back).
    pub seed: Option<u64>,
}

pub struct Context {
    pub tokenizer: Arc<FlamingoTokenizer>,
    pub limits: Limits,
    pub max_positions: usize,
    pub vocab_size: usize,
}

const B64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// base64 or `data:image/...;base64,` -> bytes.
pub fn image_bytes(payload: &str, limits: &Limits) -> Result<Vec<u8>, ApiError> {
    let payload = payload.trim();
    if payload.starts_with("http://") || payload.starts_with("https://") {
        return Err(ApiError::validation(
            "image URLs are not fetched by this server; send the image as base64 or a data: URL",
        ));
    }
    let b64 = match payload.strip_prefix("data:") {
        Some(rest) => {
            let (meta, data) = rest
                .split_once(',')
                .ok_or_else(|| ApiError::validation("malformed data: URL (no comma)"))?;
            if !meta.ends_with(";base64") {
                return Err(ApiError::validation("data: URLs must be base64-encoded"));
            }
            data
        }
        None => payload,
    };
    if b64.len() / 4 * 3 > limits.max_image_bytes + 3 {
        return Err(ApiError::new(
            ErrorKind::PayloadTooLarge,
            format!("image larger than {} bytes", limits.max_image_bytes),
        ));
    }
    let cleaned: String = b64.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    B64.decode(cleaned.as_bytes())
        .map_err(|e| ApiError::validation(format!("invalid base64 image: {e}")))
}

pub fn load_image(payload: &str, limits: &Limits) -> Result<ImageInput, ApiError> {
    let bytes = image_bytes(payload, limits)?;
    let image_limits = ImageLimits {
        max_bytes: limits.max_image_bytes,
        max_width: limits.max_image_side,
        max_height: limits.max_image_side,
        max_pixels: limits.max_image_pixels,
    };
    let pixels = preprocess::preprocess(&bytes, &image_limits).map_err(|e| {
        let kind = if e.is_too_large() {
            ErrorKind::PayloadTooLarge
        } else {
            ErrorKind::Validation
        };
        ApiError::new(kind, format!("image: {e}"))
    })?;
    Ok(ImageInput {
        hash: Sha256::digest(&bytes).into(),
        pixels: Arc::new(pixels),
    })
}

/// Validated generation settings (TGI semantics: any of temperature/top_k/top_p turns sampling on).
pub fn params(
    p: &Parameters,
    ctx: &Context,
) -> Result<(GenerationParams, Vec<String>, Option<u64>), ApiError> {
    let l = &ctx.limits;
    let bad = |m: String| Err(ApiError::validation(m));
    let max_new = p.max_new_tokens.unwrap_or(20) as usize;
    if max_new == 0 || max_new > l.max_new_tokens {
        return bad(format!(
            "max_new_tokens must be between 1 and {}",
            l.max_new_tokens
        ));
    }
    if let Some(t) = p.temperature {
        if !(t > 0.0 && t.is_finite()) {
            return bad("temperature must be > 0".into());
        }
    }
    if let Some(k) = p.top_k {
        if k < 1 {
            return bad("top_k must be >= 1".into());
        }
    }
    if let Some(tp) = p.top_p {
        if !(tp > 0.0 && tp <= 1.0) {
            return bad("top_p must be in (0, 1]".into());
        }
    }
    if let Some(r) = p.repetition_penalty {
        if !(r > 0.0 && r.is_finite()) {
            return bad("repetition_penalty must be > 0".into());
        }
    }
    let beams = p.num_beams.unwrap_or(1) as usize;
    if beams == 0 || beams > l.max_beams {
        return bad(format!("num_beams must be between 1 and {}", l.max_beams));
    }
    if let Some(lp) = p.length_penalty {
        if !lp.is_finite() {
            return bad("length_penalty must be finite".into());
        }
    }
    let stop = p.stop.clone().unwrap_or_default();
    if stop.len() > l.max_stop_sequences || stop.iter().any(|s| s.is_empty() || s.len() > 64) {
        return bad(format!(
            "at most {} stop sequences of 1 to 64 bytes",
            l.max_stop_sequences
        ));
    }
    let do_sample = p.do_sample.unwrap_or(false)
        || p.top_k.is_some()
        || p.top_p.is_some_and(|x| x < 1.0)
        || p.temperature.is_some_and(|t| t != 1.0);
    if do_sample && beams > 1 {
        return bad(
            "beam search is deterministic: do not combine num_beams > 1 with sampling".into(),
        );
    }
    let seed = do_sample.then(|| p.seed.unwrap_or_else(rand::random));
    let sampling = SamplingParams {
        do_sample,
        temperature: p.temperature.unwrap_or(1.0),
        top_k: p.top_k.map(|k| k as usize),
        top_p: p.top_p,
        repetition_penalty: p.repetition_penalty,
        seed: seed.unwrap_or(0),
    };
    let tok = &ctx.tokenizer;
    Ok((
        GenerationParams {
            max_new_tokens: max_new,
            sampling,
            num_beams: beams,
            length_penalty: p.length_penalty.unwrap_or(1.0),
            stop_tokens: vec![tok.end_of_chunk_id, tok.eos_id],
        },
        stop,
        seed,
    ))
}

pub fn prepare(rendered: Rendered, p: &Parameters, ctx: &Context) -> Result<Prepared, ApiError> {
    let (params, stop, seed) = params(p, ctx)?;
    if rendered.images.len() > ctx.limits.max_images {
        return Err(ApiError::validation(format!(
            "at most {} images per request",
            ctx.limits.max_images
        )));
    }
    let tokens = ctx
        .tokenizer
        .encode(&rendered.prompt)
        .map_err(|e| ApiError::validation(e.to_string()))?;
    let markers = tokens
        .iter()
        .filter(|&&t| t == ctx.tokenizer.image_id)
        .count();
    if markers != rendered.images.len() {
        return Err(ApiError::validation(format!(
            "the prompt has {markers} <image> markers but {} images were given",
            rendered.images.len()
        )));
    }
    if tokens.len() > ctx.limits.max_input_tokens {
        return Err(ApiError::validation(format!(
            "the prompt has {} tokens; the limit is {}",
            tokens.len(),
            ctx.limits.max_input_tokens
        )));
    }
    if tokens.len() + params.max_new_tokens > ctx.max_positions {
        return Err(ApiError::validation(format!(
            "prompt ({} tokens) + max_new_tokens ({}) exceeds the model's context of {} tokens",
            tokens.len(),
            params.max_new_tokens,
            ctx.max_positions
        )));
    }
    if let Some(t) = tokens.iter().find(|&&t| t as usize >= ctx.vocab_size) {
        return Err(ApiError::validation(format!(
            "token {t} outside the vocabulary"
        )));
    }
    let images = rendered
        .images
        .iter()
        .map(|i| load_image(i, &ctx.limits))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Prepared {
        tokens,
        images,
        params,
        stop,
        details: p.details.unwrap_or(false),
        decoder_input_details: p.decoder_input_details.unwrap_or(false),
        seed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_urls_and_plain_base64() {
        let l = Limits::default();
        assert_eq!(
            image_bytes("data:image/png;base64,aGk=", &l).unwrap(),
            b"hi"
        );
        assert_eq!(image_bytes("aGk", &l).unwrap(), b"hi");
        assert!(image_bytes("https://x/y.png", &l).is_err());
        assert!(image_bytes("%%%", &l).is_err());
        assert!(image_bytes("data:image/png,abc", &l).is_err());
    }

    #[test]
    fn parameter_ranges() {
        let ctx = Context {
            tokenizer: Arc::new(
                FlamingoTokenizer::from_file(std::path::Path::new(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/../../tests/fixtures/tiny-openflamingo/llama/tokenizer.json"
                )))
                .unwrap(),
            ),
            limits: Limits::default(),
            max_positions: 128,
            vocab_size: 403,
        };
        let ok = |p: Parameters| params(&p, &ctx).is_ok();
        assert!(ok(Parameters::default()));
        assert!(!ok(Parameters {
            max_new_tokens: Some(0),
            ..Default::default()
        }));
        assert!(!ok(Parameters {
            top_p: Some(1.5),
            ..Default::default()
        }));
        assert!(!ok(Parameters {
            temperature: Some(0.0),
            ..Default::default()
        }));
        assert!(!ok(Parameters {
            num_beams: Some(99),
            ..Default::default()
        }));
        assert!(!ok(Parameters {
            num_beams: Some(2),
            do_sample: Some(true),
            ..Default::default()
        }));
        let (g, _, seed) = params(
            &Parameters {
                temperature: Some(0.7),
                seed: Some(5),
                ..Default::default()
            },
            &ctx,
        )
        .unwrap();
        assert!(g.sampling.do_sample);
        assert_eq!(seed, Some(5));
    }
}
