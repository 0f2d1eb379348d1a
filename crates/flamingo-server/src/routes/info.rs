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
