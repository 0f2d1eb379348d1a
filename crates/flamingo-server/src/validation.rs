//! Request checks before anything is queued: parameter ranges (cheap, on the async thread), then
//! tokenization, `<image>` count, token limits and the images themselves (on the blocking pool).
//! Every failure is a 4xx naming the field; the model's own checks (`Engine::validate`) run here
//! too, so the worker only ever sees requests it can run.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use flamingo_model::engine::{Engine, GenerationParams};
use flamingo_model::sampling::SamplingParams;
use flamingo_model::tokenizer::FlamingoTokenizer;
use flamingo_model::ModelSpec;

use crate::api::Parameters;
use crate::budget::MemoryBudget;
use crate::config::Limits;
use crate::error::ApiError;
use crate::images::{self, ImageContext, ImageInput};
use crate::prompt::Rendered;
use crate::worker::cache::SharedFeatureCache;
use crate::worker::policy::KvShape;

/// What preparation needs from the loaded model.
pub struct PrepContext {
    pub tokenizer: Arc<FlamingoTokenizer>,
    pub limits: Limits,
    /// The loaded model's immutable facts (context, special ids, image preprocessing) and its
    /// rules for a sequence; validation reads these and never touches the model itself.
    pub spec: ModelSpec,
    /// Longest prompt text (bytes, images excluded) that could fit in `max_input_tokens`:
    /// anything longer is refused before the tokenizer sees it.
    pub max_prompt_bytes: usize,
    /// KV bytes per position and per image, and the batch's budget (limits.max_kv_bytes).
    pub kv: KvShape,
    pub max_kv_bytes: usize,
    /// The worker's feature cache, looked up by image hash before decoding.
    pub cache: SharedFeatureCache,
    /// Memory concurrent image decodes share (limits.preprocess_memory_bytes).
    pub decode_budget: MemoryBudget,
    /// Encode new images here rather than on the model worker (limits.encode_images_in_preprocessing),
    /// with this model handle on this one-thread pool (the kernels' shared pool stays with the
    /// worker's steps). The only part of preparation that runs the model.
    pub encode_images: Option<(rayon::ThreadPool, Engine)>,
}

/// Validated parameters; `max_new_tokens` is settled once the prompt length is known.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub sampling: SamplingParams,
    /// None: the default, clamped to the context the prompt leaves.
    pub max_new_tokens: Option<usize>,
    pub num_beams: usize,
    pub length_penalty: f64,
    pub stop: Vec<String>,
    /// Replaces the default end-of-generation tokens when set.
    pub stop_token_ids: Option<Vec<u32>>,
    /// The seed used when sampling (reported back, as TGI does).
    pub seed: Option<u64>,
    pub details: bool,
    pub decoder_input_details: bool,
    pub return_full_text: bool,
    /// Alternatives reported per generated token.
    pub top_n_tokens: usize,
}

pub struct Prepared {
    pub prompt: String,
    pub tokens: Vec<u32>,
    pub images: Vec<ImageInput>,
    pub params: GenerationParams,
    pub resolved: Resolved,
    /// KV-cache bytes the sequence reserves while it runs.
    pub kv_bytes: usize,
}

/// Most alternatives a request may ask for per token (`top_n_tokens`; OpenAI's `top_logprobs`
/// allows 0..=20).
pub const MAX_TOP_N_TOKENS: u32 = 20;
/// Longest stop sequence, in bytes.
pub const MAX_STOP_BYTES: usize = 256;
/// Most ids in `stop_token_ids`.
pub const MAX_STOP_TOKEN_IDS: usize = 16;

/// Temperatures below this decode greedily.
pub const GREEDY_TEMPERATURE: f64 = 1e-5;

fn bad(param: &str, message: String) -> ApiError {
    ApiError::validation(message).param(param)
}

/// Range checks with TGI's semantics: setting `temperature` (other than 1), `top_k` or `top_p`
/// (below 1) turns sampling on even without `do_sample`.
pub fn resolve(p: &Parameters, l: &Limits) -> Result<Resolved, ApiError> {
    p.check_unsupported()?;
    let max_new = p.max_new_tokens.map(|n| n as usize);
    if let Some(n) = max_new {
        if n == 0 || n > l.max_new_tokens {
            return Err(bad(
                "max_new_tokens",
                format!(
                    "`max_new_tokens` must be between 1 and {} (got {n})",
                    l.max_new_tokens
                ),
            ));
        }
    }
    check_sampling_ranges(p)?;
    let beams = p.num_beams.unwrap_or(1) as usize;
    if beams == 0 || beams > l.max_beams {
        return Err(bad(
            "num_beams",
            format!(
                "`num_beams` must be between 1 and {} (got {beams})",
                l.max_beams
            ),
        ));
    }
    let length_penalty = p.length_penalty.unwrap_or(1.0);
    if !length_penalty.is_finite() {
        return Err(bad(
            "length_penalty",
            "`length_penalty` must be a finite number".into(),
        ));
    }
    let stop = stop_sequences(p, l)?;
    // vLLM's rule: a temperature this close to 0 means greedy. Dividing logits by it in f32
    // would overflow to infinities and NaN log-probabilities.
    let near_zero = p.temperature.is_some_and(|t| t < GREEDY_TEMPERATURE);
    let temperature = p.temperature.filter(|_| !near_zero);
    let do_sample = !near_zero
        && (p.do_sample.unwrap_or(false)
            || p.top_k.is_some()
            || p.top_p.is_some_and(|x| x < 1.0)
            || temperature.is_some_and(|t| t != 1.0));
    if do_sample && beams > 1 {
        return Err(bad(
            "num_beams",
            "beam search is deterministic here: do not combine num_beams > 1 with sampling".into(),
        ));
    }
    let top_n_tokens = p.top_n_tokens.unwrap_or(0);
    if top_n_tokens > MAX_TOP_N_TOKENS {
        return Err(bad(
            "top_n_tokens",
            format!("`top_n_tokens` must be between 0 and {MAX_TOP_N_TOKENS} (got {top_n_tokens})"),
        ));
    }
    if top_n_tokens > 0 && beams > 1 {
        return Err(bad(
            "top_n_tokens",
            "`top_n_tokens` is not reported by beam search (num_beams > 1)".into(),
        ));
    }
    let seed = do_sample.then(|| p.seed.unwrap_or_else(rand::random));
    Ok(Resolved {
        sampling: SamplingParams {
            do_sample,
            temperature: temperature.unwrap_or(1.0),
            top_k: p.top_k.map(|k| k as usize),
            top_p: p.top_p,
            repetition_penalty: p.repetition_penalty.map(|r| r as f32),
            seed: seed.unwrap_or(0),
        },
        max_new_tokens: max_new,
        num_beams: beams,
        length_penalty,
        stop,
        stop_token_ids: p.stop_token_ids.clone(),
        seed,
        details: p.details.unwrap_or(false),
        decoder_input_details: p.decoder_input_details.unwrap_or(false),
        return_full_text: p.return_full_text.unwrap_or(false),
        top_n_tokens: top_n_tokens as usize,
    })
}

/// The sampling parameters' ranges (each alone; how they combine is `resolve`'s).
fn check_sampling_ranges(p: &Parameters) -> Result<(), ApiError> {
    if let Some(t) = p.temperature {
        if !(t > 0.0 && t.is_finite() && t <= 100.0) {
            return Err(bad("temperature", format!("`temperature` must be > 0 and <= 100 (got {t}); use do_sample=false for greedy")));
        }
    }
    if let Some(k) = p.top_k {
        if k < 1 {
            return Err(bad("top_k", format!("`top_k` must be >= 1 (got {k})")));
        }
    }
    if let Some(tp) = p.top_p {
        if !(tp > 0.0 && tp <= 1.0) {
            return Err(bad(
                "top_p",
                format!("`top_p` must be > 0 and <= 1 (got {tp})"),
            ));
        }
    }
    if let Some(r) = p.repetition_penalty {
        // The model uses it as an f32: subnormal or out-of-range values would divide logits into
        // infinities. Checked on the f64 the client sent, so no rounding lets one through.
        if !(r > 0.0 && r <= f32::MAX as f64 && (r as f32).is_normal()) {
            return Err(bad(
                "repetition_penalty",
                format!("`repetition_penalty` must be a normal number > 0 (got {r:e})"),
            ));
        }
    }
    Ok(())
}

/// `stop` and `stop_token_ids` within their bounds; returns the stop sequences.
fn stop_sequences(p: &Parameters, l: &Limits) -> Result<Vec<String>, ApiError> {
    let stop = p.stop.clone().unwrap_or_default();
    if stop.len() > l.max_stop_sequences {
        return Err(bad(
            "stop",
            format!(
                "at most {} stop sequences (got {})",
                l.max_stop_sequences,
                stop.len()
            ),
        ));
    }
    if let Some(s) = stop
        .iter()
        .find(|s| s.is_empty() || s.len() > MAX_STOP_BYTES)
    {
        return Err(bad(
            "stop",
            format!(
                "stop sequences must be 1 to {MAX_STOP_BYTES} bytes (got {} bytes)",
                s.len()
            ),
        ));
    }
    if let Some(ids) = &p.stop_token_ids {
        if ids.is_empty() || ids.len() > MAX_STOP_TOKEN_IDS {
            return Err(bad(
                "stop_token_ids",
                format!(
                    "`stop_token_ids` must list 1 to {MAX_STOP_TOKEN_IDS} ids (got {})",
                    ids.len()
                ),
            ));
        }
    }
    Ok(stop)
}

/// Tokenizes, checks counts and limits, then decodes the images (the expensive part, last).
/// Runs on the blocking pool; `cancelled` (the client left) stops it between images.
pub fn prepare(
    rendered: Rendered,
    resolved: Resolved,
    ctx: &PrepContext,
    cancelled: &AtomicBool,
    deadline: Instant,
) -> Result<Prepared, ApiError> {
    let (prepared, payloads) = prepare_text(rendered, resolved, ctx)?;
    load_images(prepared, &payloads, ctx, cancelled, deadline, &[])
}

/// [`prepare`] without the images: every check of the text, counts and limits (cheap, done
/// before any image URL is fetched). Returns the image payloads, for [`load_images`].
pub fn prepare_text(
    rendered: Rendered,
    resolved: Resolved,
    ctx: &PrepContext,
) -> Result<(Prepared, Vec<String>), ApiError> {
    let tokens = tokenize_prompt(&rendered, ctx)?;
    let n_images = rendered.images.len();
    let max_new_tokens = context_left(&resolved, tokens.len(), ctx)?;
    let params = GenerationParams {
        max_new_tokens,
        sampling: resolved.sampling.clone(),
        num_beams: resolved.num_beams,
        length_penalty: resolved.length_penalty,
        stop_tokens: stop_tokens(&resolved, &ctx.tokenizer)?,
        top_n: resolved.top_n_tokens,
    };
    ctx.spec
        .validate(&tokens, n_images, &params)
        .map_err(|e| bad("inputs", e.to_string()))?;
    let kv_bytes = kv_reservation(ctx, &params, tokens.len(), n_images)?;
    Ok((
        Prepared {
            prompt: rendered.prompt,
            tokens,
            images: Vec::new(),
            params,
            resolved,
            kv_bytes,
        },
        rendered.images,
    ))
}

/// The prompt's token ids, after the bounds that do not need them (image count, text size: the
/// tokenizer's time and memory grow with the text) and those that do (markers, token count).
fn tokenize_prompt(rendered: &Rendered, ctx: &PrepContext) -> Result<Vec<u32>, ApiError> {
    let l = &ctx.limits;
    let n_images = rendered.images.len();
    if n_images > l.max_images {
        return Err(bad(
            "images",
            format!(
                "at most {} images per request (got {n_images})",
                l.max_images
            ),
        ));
    }
    if rendered.prompt.len() > ctx.max_prompt_bytes {
        return Err(bad(
            "inputs",
            format!(
                "the prompt text has {} bytes; no prompt over {} bytes fits in limits.max_input_tokens ({})",
                rendered.prompt.len(),
                ctx.max_prompt_bytes,
                l.max_input_tokens
            ),
        ));
    }
    let tok = &ctx.tokenizer;
    let tokens = tok
        .encode(&rendered.prompt)
        .map_err(|e| bad("inputs", format!("cannot tokenize the prompt: {e}")))?;
    let markers = tokens.iter().filter(|&&t| t == tok.image_id).count();
    if markers != n_images {
        return Err(bad(
            "images",
            format!("the prompt has {markers} <image> markers but {n_images} images were given"),
        ));
    }
    if tokens.len() > l.max_input_tokens {
        return Err(bad(
            "inputs",
            format!(
                "the prompt has {} tokens; limits.max_input_tokens is {}",
                tokens.len(),
                l.max_input_tokens
            ),
        ));
    }
    Ok(tokens)
}

/// `max_new_tokens`: as asked, or the default clamped to the context the prompt leaves; the
/// prompt and it must fit the model's positions.
fn context_left(resolved: &Resolved, prompt: usize, ctx: &PrepContext) -> Result<usize, ApiError> {
    let positions = ctx.spec.max_positions;
    let room = positions.saturating_sub(prompt);
    let max_new_tokens = match resolved.max_new_tokens {
        Some(n) => n,
        None if room == 0 => {
            return Err(bad(
                "inputs",
                format!(
                    "the prompt has {prompt} tokens and fills the model's {positions} positions"
                ),
            ))
        }
        None => ctx.limits.default_max_new_tokens.min(room),
    };
    if prompt + max_new_tokens > positions {
        return Err(bad(
            "max_new_tokens",
            format!(
                "the prompt ({prompt} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model's context of {positions} positions"
            ),
        ));
    }
    Ok(max_new_tokens)
}

/// The ids that end generation: the client's (inside the vocabulary) or `<|endofchunk|>` and
/// `</s>`.
fn stop_tokens(resolved: &Resolved, tok: &FlamingoTokenizer) -> Result<Vec<u32>, ApiError> {
    let Some(ids) = &resolved.stop_token_ids else {
        return Ok(vec![tok.end_of_chunk_id, tok.eos_id]);
    };
    if let Some(bad_id) = ids.iter().find(|&&i| i as usize >= tok.vocab_size()) {
        return Err(bad(
            "stop_token_ids",
            format!(
                "token id {bad_id} is outside the vocabulary ({} tokens)",
                tok.vocab_size()
            ),
        ));
    }
    Ok(ids.clone())
}

/// The KV-cache bytes the whole request reserves (rows x positions), refused when it could never
/// fit `limits.max_kv_bytes`, naming the parameter that makes it large.
fn kv_reservation(
    ctx: &PrepContext,
    params: &GenerationParams,
    prompt: usize,
    n_images: usize,
) -> Result<usize, ApiError> {
    let positions = prompt + params.max_new_tokens;
    let kv_bytes = ctx.kv.reservation(params.num_beams, positions, n_images);
    if kv_bytes <= ctx.max_kv_bytes {
        return Ok(kv_bytes);
    }
    let param = if params.num_beams > 1 {
        "num_beams"
    } else {
        "max_new_tokens"
    };
    Err(bad(
        param,
        format!(
            "`{param}` is too large for the KV-cache budget: this request needs {kv_bytes} bytes ({} rows x {positions} positions, {n_images} images); limits.max_kv_bytes is {}",
            params.num_beams,
            ctx.max_kv_bytes
        ),
    ))
}

/// Decodes a request's images (after [`prepare_text`]); `fetched` holds the bytes of image URL
/// payloads at their index (`fetch::fetch_images`), empty when there were none.
pub fn load_images(
    mut prepared: Prepared,
    payloads: &[String],
    ctx: &PrepContext,
    cancelled: &AtomicBool,
    deadline: Instant,
    fetched: &[Option<Vec<u8>>],
) -> Result<Prepared, ApiError> {
    prepared.images = images::load_all(
        payloads,
        &ImageContext {
            limits: &ctx.limits,
            spec: &ctx.spec.pixels,
            cache: &ctx.cache,
            budget: &ctx.decode_budget,
            cancelled,
            deadline,
            fetched,
        },
    )?;
    if let Some((pool, encoder)) = &ctx.encode_images {
        pool.install(|| encode_new_images(&mut prepared.images, encoder, ctx))?;
    }
    Ok(prepared)
}

/// Runs the vision tower and resampler for the request's images that are not cached yet, here
/// on the preprocessing thread, and caches their features: the model worker then never stops
/// every stream in the batch to encode a newcomer's images (it only would for images another
/// request evicted meanwhile, which it encodes itself).
fn encode_new_images(
    images: &mut [ImageInput],
    encoder: &Engine,
    ctx: &PrepContext,
) -> Result<(), ApiError> {
    let todo: Vec<usize> = (0..images.len())
        .filter(|&i| images[i].features.is_none())
        .filter(|&i| {
            images[..i]
                .iter()
                .all(|earlier| earlier.hash != images[i].hash)
        })
        .collect();
    if todo.is_empty() {
        return Ok(());
    }
    let started = Instant::now();
    let pixels: Vec<&[f32]> = todo.iter().map(|&i| images[i].pixels.as_slice()).collect();
    let features = encoder
        .encode_images(&pixels)
        .map_err(|e| ApiError::internal(format!("image encoding failed: {e}")))?;
    metrics::histogram!(crate::metrics::ENCODE_SECONDS).record(started.elapsed().as_secs_f64());
    metrics::counter!(crate::metrics::IMAGE_CACHE_MISSES).increment(todo.len() as u64);
    let mut cache = ctx.cache.lock().unwrap_or_else(|e| e.into_inner());
    for (&i, t) in todo.iter().zip(features) {
        cache.insert(images[i].hash, t.clone());
        let hash = images[i].hash;
        for img in images.iter_mut().filter(|img| img.hash == hash) {
            img.features = Some(t.clone());
            // The pixels are not needed any more; the queue holds less memory.
            img.pixels = std::sync::Arc::new(Vec::new());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(p: Parameters) -> bool {
        resolve(&p, &Limits::default()).is_ok()
    }

    #[test]
    fn parameter_ranges() {
        assert!(ok(Parameters::default()));
        assert!(!ok(Parameters {
            max_new_tokens: Some(0),
            ..Default::default()
        }));
        assert!(!ok(Parameters {
            max_new_tokens: Some(100_000),
            ..Default::default()
        }));
        assert!(!ok(Parameters {
            top_p: Some(1.5),
            ..Default::default()
        }));
        assert!(!ok(Parameters {
            top_p: Some(0.0),
            ..Default::default()
        }));
        assert!(!ok(Parameters {
            top_k: Some(0),
            ..Default::default()
        }));
        assert!(!ok(Parameters {
            temperature: Some(0.0),
            ..Default::default()
        }));
        assert!(!ok(Parameters {
            temperature: Some(f64::NAN),
            ..Default::default()
        }));
        assert!(!ok(Parameters {
            repetition_penalty: Some(-1.0),
            ..Default::default()
        }));
        assert!(!ok(Parameters {
            num_beams: Some(99),
            ..Default::default()
        }));
        assert!(!ok(Parameters {
            num_beams: Some(0),
            ..Default::default()
        }));
        assert!(!ok(Parameters {
            num_beams: Some(2),
            do_sample: Some(true),
            ..Default::default()
        }));
        assert!(!ok(Parameters {
            stop: Some(vec!["".into()]),
            ..Default::default()
        }));
        assert!(!ok(Parameters {
            stop: Some(vec!["a".into(); 5]),
            ..Default::default()
        }));
        assert!(!ok(Parameters {
            best_of: Some(2),
            ..Default::default()
        }));
        assert!(!ok(Parameters {
            truncate: Some(10),
            ..Default::default()
        }));
        assert!(ok(Parameters {
            best_of: Some(1),
            watermark: Some(false),
            top_n_tokens: Some(0),
            ..Default::default()
        }));
        assert!(ok(Parameters {
            num_beams: Some(3),
            length_penalty: Some(0.5),
            ..Default::default()
        }));
    }

    #[test]
    fn sampling_follows_tgi() {
        let r = resolve(
            &Parameters {
                temperature: Some(0.7),
                seed: Some(5),
                ..Default::default()
            },
            &Limits::default(),
        )
        .unwrap();
        assert!(r.sampling.do_sample);
        assert_eq!((r.seed, r.sampling.seed), (Some(5), 5));
        let r = resolve(
            &Parameters {
                do_sample: Some(true),
                ..Default::default()
            },
            &Limits::default(),
        )
        .unwrap();
        assert!(
            r.seed.is_some(),
            "a sampled request reports the seed it drew"
        );
        let r = resolve(
            &Parameters {
                do_sample: Some(true),
                temperature: Some(1e-300),
                ..Default::default()
            },
            &Limits::default(),
        )
        .unwrap();
        assert!(!r.sampling.do_sample, "a near-zero temperature is greedy");
        let r = resolve(
            &Parameters {
                seed: Some(5),
                ..Default::default()
            },
            &Limits::default(),
        )
        .unwrap();
        assert!(!r.sampling.do_sample);
        assert_eq!(r.seed, None);
    }
}
