//! Operational routes: `/health`, `/ready`, `/info`, `/metrics`, `/v1/models`, `/openapi.yaml`.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::api::{Info, InfoLimits, ModelCard, ModelList, Status};
use crate::error::ApiError;
use crate::metrics as m;
use crate::state::AppState;

/// Process alive (also while the model loads)
///
/// Liveness: fails once the model worker has died (it is not restarted in-process), so a
/// liveness probe restarts the process instead of leaving a replica that can never serve.
#[utoipa::path(get, path = "/health", tag = "operations",
    security(()),
    responses(
        (status = 200, description = "OK", body = Status, example = json!({"status": "ok"})),
        (status = 503, response = crate::api::openapi::RetryResponse),
    ))]
pub async fn health(State(s): State<AppState>) -> Response {
    match s.try_runtime() {
        Some(rt) if !rt.worker.alive() => ApiError::unavailable(
            "the model worker died; this process cannot serve generations any more",
            s.cfg.server.retry_after_s,
        )
        .into_response(),
        _ => Json(Status { status: "ok" }).into_response(),
    }
}

/// Model loaded, worker alive and not draining
///
/// Readiness: the model is loaded, the worker alive and the server not draining.
#[utoipa::path(get, path = "/ready", tag = "operations",
    security(()),
    responses(
        (status = 200, description = "Ready", body = Status, example = json!({"status": "ready"})),
        (status = 503, response = crate::api::openapi::RetryResponse),
    ))]
pub async fn ready(State(s): State<AppState>) -> Response {
    match s.not_ready() {
        None => {
            metrics::gauge!(m::READY).set(1.0);
            Json(Status { status: "ready" }).into_response()
        }
        Some(why) => {
            metrics::gauge!(m::READY).set(0.0);
            ApiError::unavailable(format!("not ready: {why}"), s.cfg.server.retry_after_s)
                .into_response()
        }
    }
}

/// Model, dtype, device, limits, version, queue state
///
/// The model (its shape once loaded), the limits, version, filter settings and queue state,
/// then the fields TGI's `/info` has, under TGI's names.
#[utoipa::path(get, path = "/info", tag = "operations",
    security(()),
    responses((status = 200, description = "Server information", body = Info)))]
pub async fn info(State(s): State<AppState>) -> Json<Info> {
    let cfg = &s.cfg;
    let l = &cfg.limits;
    let model = s.try_runtime().map(|rt| rt.model_info.clone());
    let max_total = model
        .as_ref()
        .map_or(l.max_input_tokens + l.max_new_tokens, |m| m.max_positions);
    let (queued, active_sequences, steps) = match s.try_runtime() {
        Some(rt) => {
            let w = &rt.worker.shared;
            (
                w.waiting.load(Ordering::SeqCst),
                w.active.load(Ordering::SeqCst),
                w.steps.load(Ordering::SeqCst),
            )
        }
        None => (0, 0, 0),
    };
    Json(Info {
        model_id: cfg.model.id.clone(),
        dtype: cfg.model.dtype,
        device: cfg.model.device.clone(),
        quantization: model.as_ref().map(|m| m.quantization),
        media_rule: model.as_ref().map(|m| m.media_rule),
        max_positions: model.as_ref().map(|m| m.max_positions),
        vocab_size: model.as_ref().map(|m| m.vocab_size),
        architecture: model.map(|m| m.architecture),
        version: env!("CARGO_PKG_VERSION").to_string(),
        ready: s.not_ready().is_none(),
        status: s.not_ready().unwrap_or("ready").to_string(),
        uptime_s: s.started.elapsed().as_secs(),
        limits: InfoLimits {
            max_batch_size: l.max_batch_size,
            max_batch_tokens: l.max_batch_tokens,
            max_queue: l.max_queue,
            max_input_tokens: l.max_input_tokens,
            max_new_tokens: l.max_new_tokens,
            default_max_new_tokens: l.default_max_new_tokens,
            max_images: l.max_images,
            max_image_bytes: l.max_image_bytes,
            max_image_side: l.max_image_side,
            max_image_pixels: l.max_image_pixels,
            max_beams: l.max_beams,
            max_stop_sequences: l.max_stop_sequences,
            max_body_bytes: cfg.server.max_body_bytes,
            request_timeout_s: cfg.server.request_timeout_s,
        },
        filter: cfg.filter.clone(),
        auth: !cfg.server.api_keys.is_empty(),
        test_hooks: s.hooks.any(),
        queued,
        active_sequences,
        steps,
        // TGI's fields, for its clients (`text-generation`, `huggingface_hub`, routers and
        // dashboards that read them).
        model_sha: None,
        model_dtype: cfg.model.dtype,
        model_device_type: cfg.model.device.clone(),
        model_pipeline_tag: "image-text-to-text",
        max_concurrent_requests: l.max_queue,
        max_best_of: 1,
        max_stop_sequences: l.max_stop_sequences,
        max_input_tokens: l.max_input_tokens,
        max_input_length: l.max_input_tokens,
        max_total_tokens: max_total,
        max_batch_total_tokens: l.max_batch_tokens,
        max_batch_size: l.max_batch_size,
        max_client_batch_size: 1,
        max_top_n_tokens: crate::validation::MAX_TOP_N_TOKENS,
        waiting_served_ratio: 0.0,
        max_waiting_tokens: 0,
        validation_workers: match l.preprocess_slots {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        },
        router: "flamingo-serve",
        sha: None,
        docker_label: None,
    })
}

/// Prometheus metrics
///
/// `flamingo_requests_total{route,status}`, `flamingo_request_duration_seconds{route}`,
/// `flamingo_queue_depth`, `flamingo_active_sequences`, `flamingo_batch_size`,
/// `flamingo_batch_tokens`, `flamingo_step_duration_seconds{phase}`,
/// `flamingo_queue_duration_seconds`, `flamingo_prefill_duration_seconds`,
/// `flamingo_image_encode_duration_seconds`, `flamingo_time_to_first_token_seconds`,
/// `flamingo_inter_token_latency_seconds`, `flamingo_generation_duration_seconds`,
/// `flamingo_prepare_duration_seconds`, `flamingo_generated_tokens_total`,
/// `flamingo_prompt_tokens_total`, `flamingo_request_generated_tokens`,
/// `flamingo_filter_actions_total{action}`, `flamingo_sequences_evicted_total{reason}`,
/// `flamingo_requests_finished_total{finish_reason}`, `flamingo_image_cache_{hits,misses}_total`,
/// `flamingo_image_cache_entries`,
/// `flamingo_prefix_cache_{hits,misses,reused_tokens,evictions}_total`,
/// `flamingo_prefix_cache_{entries,bytes}`, `flamingo_worker_alive`, `flamingo_ready`.
/// Histograms have buckets.
#[utoipa::path(get, path = "/metrics", tag = "operations", security(()),
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
pub async fn metrics(State(s): State<AppState>) -> Response {
    let body = s
        .prometheus
        .as_ref()
        .map(|h| h.render())
        .unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// The served model (OpenAI shape)
///
/// The one model this server serves, in OpenAI's list shape.
#[utoipa::path(get, path = "/v1/models", tag = "OpenAI",
    responses(
        (status = 200, description = "Model list", body = ModelList),
        (status = 401, response = crate::api::openapi::OpenAIErrorResponse),
    ))]
pub async fn models(State(s): State<AppState>) -> Json<ModelList> {
    Json(ModelList {
        object: "list",
        data: vec![ModelCard {
            id: s.cfg.model.id.clone(),
            object: "model",
            created: 0,
            owned_by: "flamingo-serve",
        }],
    })
}

/// This document
///
/// This OpenAPI document as YAML text, generated from the server's types.
#[utoipa::path(get, path = "/openapi.yaml", tag = "operations", security(()),
    responses((status = 200, description = "The OpenAPI document (YAML)", body = Object, content_type = "application/yaml")))]
pub async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/yaml")],
        crate::api::openapi::yaml(),
    )
        .into_response()
}
