//! Operational routes: `/health`, `/ready`, `/info`, `/metrics`, `/v1/models`, `/openapi.yaml`.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::metrics as m;
use crate::state::AppState;

/// Liveness: fails once the model worker has died (it is not restarted in-process), so a
/// liveness probe restarts the process instead of leaving a replica that can never serve.
pub async fn health(State(s): State<AppState>) -> Response {
    match s.try_runtime() {
        Some(rt) if !rt.worker.alive() => ApiError::unavailable(
            "the model worker died; this process cannot serve generations any more",
            s.cfg.server.retry_after_s,
        )
        .into_response(),
        _ => Json(json!({"status": "ok"})).into_response(),
    }
}

pub async fn ready(State(s): State<AppState>) -> Response {
    match s.not_ready() {
        None => {
            metrics::gauge!(m::READY).set(1.0);
            Json(json!({"status": "ready"})).into_response()
        }
        Some(why) => {
            metrics::gauge!(m::READY).set(0.0);
            ApiError::unavailable(format!("not ready: {why}"), s.cfg.server.retry_after_s)
                .into_response()
        }
    }
}

pub async fn info(State(s): State<AppState>) -> Json<Value> {
    let cfg = &s.cfg;
    let l = &cfg.limits;
    let mut v = match s.try_runtime() {
        Some(rt) => rt.model_info.clone(),
        None => {
            json!({"model_id": cfg.model.id, "dtype": cfg.model.dtype, "device": cfg.model.device})
        }
    };
    v["version"] = json!(env!("CARGO_PKG_VERSION"));
    v["ready"] = json!(s.not_ready().is_none());
    v["status"] = json!(s.not_ready().unwrap_or("ready"));
    v["uptime_s"] = json!(s.started.elapsed().as_secs());
    v["limits"] = json!({
        "max_batch_size": l.max_batch_size,
        "max_batch_tokens": l.max_batch_tokens,
        "max_queue": l.max_queue,
        "max_input_tokens": l.max_input_tokens,
        "max_new_tokens": l.max_new_tokens,
        "default_max_new_tokens": l.default_max_new_tokens,
        "max_images": l.max_images,
        "max_image_bytes": l.max_image_bytes,
        "max_image_side": l.max_image_side,
        "max_image_pixels": l.max_image_pixels,
        "max_beams": l.max_beams,
        "max_stop_sequences": l.max_stop_sequences,
        "max_body_bytes": cfg.server.max_body_bytes,
        "request_timeout_s": cfg.server.request_timeout_s,
    });
    // The fields TGI's `/info` has, under TGI's names, for its clients (`text-generation`,
    // `huggingface_hub`, routers and dashboards that read them).
    let max_total = v["max_positions"]
        .as_u64()
        .unwrap_or((l.max_input_tokens + l.max_new_tokens) as u64);
    v["model_sha"] = Value::Null;
    v["model_dtype"] = v["dtype"].clone();
    v["model_device_type"] = v["device"].clone();
    v["model_pipeline_tag"] = json!("image-text-to-text");
    v["max_concurrent_requests"] = json!(l.max_queue);
    v["max_best_of"] = json!(1);
    v["max_stop_sequences"] = json!(l.max_stop_sequences);
    v["max_input_tokens"] = json!(l.max_input_tokens);
    v["max_input_length"] = json!(l.max_input_tokens);
    v["max_total_tokens"] = json!(max_total);
    v["max_batch_total_tokens"] = json!(l.max_batch_tokens);
    v["max_batch_size"] = json!(l.max_batch_size);
    v["max_client_batch_size"] = json!(1);
    v["max_top_n_tokens"] = json!(crate::validation::MAX_TOP_N_TOKENS);
    v["waiting_served_ratio"] = json!(0.0);
    v["max_waiting_tokens"] = json!(0);
    v["validation_workers"] = json!(match l.preprocess_slots {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
        n => n,
    });
    v["router"] = json!("flamingo-serve");
    v["sha"] = Value::Null;
    v["docker_label"] = Value::Null;
    v["filter"] = json!(cfg.filter);
    v["auth"] = json!(!cfg.server.api_keys.is_empty());
    v["test_hooks"] = json!(s.hooks.any());
    let (queued, active, steps) = match s.try_runtime() {
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
    v["queued"] = json!(queued);
    v["active_sequences"] = json!(active);
    v["steps"] = json!(steps);
    Json(v)
}

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

pub async fn models(State(s): State<AppState>) -> Json<Value> {
    Json(json!({"object": "list", "data": [
        {"id": s.cfg.model.id, "object": "model", "created": 0, "owned_by": "flamingo-serve"}
    ]}))
}

pub async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/yaml")],
        include_str!("../../../../openapi.yaml"),
    )
        .into_response()
}
