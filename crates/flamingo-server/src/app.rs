//! Startup: model, worker, router and middleware (request ids, CORS, API keys, body limit,
//! per-route metrics, tracing).

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, MatchedPath, State};
use axum::http::{header, HeaderName, HeaderValue, Method, Request};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use candle_core::{DType, Device};
use flamingo_model::quant::Quantization;
use flamingo_model::tokenizer::FlamingoTokenizer;
use flamingo_model::{Flamingo, LoadOptions, MediaRule, ModelPaths, VisionWeights};
use serde_json::json;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::config::Config;
use crate::error::{ApiError, ErrorKind};
use crate::filter::ContentFilter;
use crate::prepare::Context;
use crate::routes;
use crate::state::AppState;
use crate::worker::{self, WorkerConfig};

/// A relative model path is taken from the working directory, else from the source checkout
/// (so the bundled tiny model is found from anywhere in a fresh clone).
pub fn resolve(path: &Path) -> PathBuf {
    if path.is_absolute() || path.exists() {
        return path.to_path_buf();
    }
    let from_checkout = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path);
    if from_checkout.exists() {
        from_checkout
    } else {
        path.to_path_buf()
    }
}

pub fn model_paths(cfg: &Config) -> Result<ModelPaths, String> {
    let m = &cfg.model;
    let dir = resolve(&m.dir);
    let mut paths = match ModelPaths::from_dir(&dir) {
        Ok(p) => p,
        Err(e) if m.llama_dir.is_some() && m.checkpoint.is_some() => {
            tracing::debug!("model dir not usable ({e}); using separate paths");
            let llama = resolve(m.llama_dir.as_ref().expect("checked"));
            ModelPaths {
                tokenizer: llama.join("tokenizer.json"),
                llama_dir: llama,
                vision: VisionWeights::HfClip {
                    dir: PathBuf::new(),
                },
                checkpoint: resolve(m.checkpoint.as_ref().expect("checked")),
                flamingo_config: None,
            }
        }
        Err(e) => return Err(e.to_string()),
    };
    if let Some(l) = &m.llama_dir {
        paths.llama_dir = resolve(l);
        paths.tokenizer = paths.llama_dir.join("tokenizer.json");
    }
    if let Some(v) = &m.vision_weights {
        paths.vision =
            flamingo_model::paths::open_clip_in(&resolve(v)).map_err(|e| e.to_string())?;
    }
    if let Some(v) = &m.vision_hf_dir {
        paths.vision = VisionWeights::HfClip { dir: resolve(v) };
    }
    if let Some(c) = &m.checkpoint {
        paths.checkpoint = resolve(c);
    }
    if let Some(c) = &m.flamingo_config {
        paths.flamingo_config = Some(resolve(c));
    }
    if let Some(t) = &m.tokenizer {
        paths.tokenizer = resolve(t);
    }
    if matches!(&paths.vision, VisionWeights::HfClip { dir } if dir.as_os_str().is_empty()) {
        return Err("no vision weights: set model.vision_weights or model.vision_hf_dir".into());
    }
    Ok(paths)
}

fn load_options(cfg: &Config) -> Result<(LoadOptions, Option<Quantization>), String> {
    let m = &cfg.model;
    let dtype = match m.dtype.as_str() {
        "f16" => DType::F16,
        "bf16" => DType::BF16,
        _ => DType::F32,
    };
    let device = match m.device.as_str() {
        "cpu" => Device::Cpu,
        d => {
            let ordinal = d
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            Device::new_cuda(ordinal).map_err(|e| format!("model.device = {d}: {e}"))?
        }
    };
    let media_rule = if m.media_rule == "previous_image" {
        MediaRule::PreviousImage
    } else {
        MediaRule::NextImage
    };
    let quant = match m.quantization.as_str() {
        "q8_0" => Some(Quantization::Q8_0),
        "q4k" => Some(Quantization::Q4K),
        _ => None,
    };
    Ok((
        LoadOptions {
            dtype,
            device,
            media_rule: Some(media_rule),
        },
        quant,
    ))
}

/// Loads the model and starts the worker; the state every route shares.
pub fn build_state(
    cfg: Config,
    prometheus: Option<metrics_exporter_prometheus::PrometheusHandle>,
) -> Result<AppState, String> {
    let paths = model_paths(&cfg)?;
    let (opts, quant) = load_options(&cfg)?;
    let started = Instant::now();
    let model =
        Flamingo::load_with(&paths, &opts, quant).map_err(|e| format!("loading the model: {e}"))?;
    let tokenizer = FlamingoTokenizer::from_file(&paths.tokenizer).map_err(|e| e.to_string())?;
    tracing::info!(
        llama = %paths.llama_dir.display(),
        checkpoint = %paths.checkpoint.display(),
        seconds = started.elapsed().as_secs_f64(),
        "model loaded"
    );
    crate::filter::warm_up();
    let model = Arc::new(model);
    let mc = model.config();
    let info = json!({
        "model_id": cfg.model.id,
        "model_dir": cfg.model.dir,
        "dtype": cfg.model.dtype,
        "device": cfg.model.device,
        "quantization": cfg.model.quantization,
        "media_rule": cfg.model.media_rule,
        "max_positions": model.max_positions(),
        "vocab_size": mc.vocab_size(),
        "vision": {"width": mc.vision.width, "layers": mc.vision.layers, "image_size": mc.vision.image_size},
        "llama": {"hidden_size": mc.llama.hidden_size, "layers": mc.llama.num_hidden_layers},
        "cross_attn_every_n_layers": mc.cross_attn_every_n_layers,
        "limits": {
            "max_batch_size": cfg.limits.max_batch_size,
            "max_batch_tokens": cfg.limits.max_batch_tokens,
            "max_queue": cfg.limits.max_queue,
            "max_input_tokens": cfg.limits.max_input_tokens,
            "max_new_tokens": cfg.limits.max_new_tokens,
            "max_images": cfg.limits.max_images,
            "max_image_bytes": cfg.limits.max_image_bytes,
            "max_body_bytes": cfg.server.max_body_bytes,
        },
        "filter": cfg.filter,
        "version": env!("CARGO_PKG_VERSION"),
    });
    let ctx = Context {
        tokenizer: Arc::new(
            FlamingoTokenizer::from_file(&paths.tokenizer).map_err(|e| e.to_string())?,
        ),
        limits: cfg.limits.clone(),
        max_positions: model.max_positions(),
        vocab_size: mc.vocab_size(),
    };
    let worker = worker::spawn(
        model.clone(),
        WorkerConfig {
            max_batch_size: cfg.limits.max_batch_size,
            max_batch_tokens: cfg.limits.max_batch_tokens,
            max_queue: cfg.limits.max_queue,
            image_cache_entries: cfg.limits.image_cache_entries,
            retry_after_s: cfg.server.retry_after_s,
        },
    )
    .map_err(|e| format!("starting the worker: {e}"))?;
    Ok(AppState {
        filter: ContentFilter::new(cfg.filter.clone()),
        cfg: Arc::new(cfg),
        tokenizer: Arc::new(tokenizer),
        ctx: Arc::new(ctx),
        worker,
        draining: Arc::new(AtomicBool::new(false)),
        prometheus,
        info: Arc::new(info),
    })
}

async fn require_api_key(State(s): State<AppState>, req: Request<Body>, next: Next) -> Response {
    let keys = &s.cfg.server.api_keys;
    if keys.is_empty() || req.method() == Method::OPTIONS || routes::is_public(req.uri().path()) {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given.is_some_and(|k| keys.iter().any(|key| key == k)) {
        return next.run(req).await;
    }
    let mut e = ApiError::new(
        ErrorKind::Unauthorized,
        "missing or invalid API key (Authorization: Bearer <key>)",
    );
    if req.uri().path().starts_with("/v1/") {
        e = e.openai();
    }
    e.into_response()
}

async fn record_metrics(req: Request<Body>, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let started = Instant::now();
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("flamingo_requests_total", "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("flamingo_request_duration_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

fn cors(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
            .allow_headers([
                header::CONTENT_TYPE,
                header::AUTHORIZATION,
                HeaderName::from_static("x-request-id"),
            ])
            .expose_headers([
                header::RETRY_AFTER,
                HeaderName::from_static("x-request-id"),
                HeaderName::from_static("server-timing"),
            ]),
    )
}

pub fn app(state: AppState) -> Router {
    let request_id = HeaderName::from_static("x-request-id");
    let mut router = routes::router()
        .fallback(routes::not_found)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            require_api_key,
        ))
        .route_layer(middleware::from_fn(record_metrics))
        .layer(DefaultBodyLimit::max(state.cfg.server.max_body_bytes))
        .with_state(state.clone());
    if let Some(c) = cors(&state.cfg.server.cors_origins) {
        router = router.layer(c);
    }
    router
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request<Body>| {
            let id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("-");
            tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %id)
        }))
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
}
