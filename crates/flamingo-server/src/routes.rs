//! HTTP routes. `ROUTES` is the one list the router is built from and the OpenAPI test reads.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::{Json, Router};
use futures::Stream;
use serde_json::{json, Value};

use crate::api::{render_chat, ChatRequest, GenerateRequest, Parameters, Rendered};
use crate::error::{ApiError, ErrorKind};
use crate::prepare::{prepare, Prepared};
use crate::session::{Final, Output, Session};
use crate::state::AppState;
use crate::worker::WorkItem;

/// (method, path) of every route, in OpenAPI path syntax.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/"),
    ("GET", "/assets/{path}"),
    ("POST", "/generate"),
    ("POST", "/generate_stream"),
    ("POST", "/v1/chat/completions"),
    ("GET", "/v1/models"),
    ("GET", "/health"),
    ("GET", "/ready"),
    ("GET", "/info"),
    ("GET", "/metrics"),
    ("GET", "/openapi.yaml"),
];

/// Routes that need no API key.
pub fn is_public(path: &str) -> bool {
    matches!(
        path,
        "/" | "/health" | "/ready" | "/metrics" | "/openapi.yaml"
    ) || path.starts_with("/assets/")
}

fn handler(path: &str) -> MethodRouter<AppState> {
    match path {
        "/" => get(index),
        "/assets/{path}" => get(asset),
        "/generate" => post(generate),
        "/generate_stream" => post(generate_stream),
        "/v1/chat/completions" => post(chat),
        "/v1/models" => get(models),
        "/health" => get(health),
        "/ready" => get(ready),
        "/info" => get(info),
        "/metrics" => get(metrics_text),
        "/openapi.yaml" => get(openapi),
        other => unreachable!("no handler for {other}"),
    }
}

pub fn router() -> Router<AppState> {
    ROUTES.iter().fold(Router::new(), |r, (_, path)| {
        // axum spells a catch-all `{*path}`; the spec spells it `{path}`.
        let axum_path = path.replace("{path}", "{*path}");
        r.route(&axum_path, handler(path))
    })
}

static ASSETS: include_dir::Dir<'_> = include_dir::include_dir!("$CARGO_MANIFEST_DIR/assets");

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("png") => "image/png",
        Some("svg") => "image/svg+xml",
        Some("json") => "application/json",
        Some("ico") => "image/x-icon",
        _ => "application/octet-stream",
    }
}

fn serve_asset(path: &str) -> Response {
    match ASSETS.get_file(path) {
        Some(f) => ([(header::CONTENT_TYPE, content_type(path))], f.contents()).into_response(),
        None => ApiError::new(ErrorKind::NotFound, format!("no asset {path}")).into_response(),
    }
}

async fn index() -> Response {
    serve_asset("index.html")
}

async fn asset(Path(path): Path<String>) -> Response {
    serve_asset(&path)
}

async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/yaml")],
        include_str!("../../../openapi.yaml"),
    )
        .into_response()
}

async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn ready(State(s): State<AppState>) -> Response {
    let worker = s.worker.alive.load(Ordering::SeqCst);
    let draining = s.draining.load(Ordering::SeqCst);
    if worker && !draining {
        Json(json!({"status": "ready"})).into_response()
    } else {
        let why = if draining {
            "shutting down"
        } else {
            "model worker not running"
        };
        ApiError::new(ErrorKind::Unavailable, why)
            .retry_after(s.cfg.server.retry_after_s)
            .into_response()
    }
}

async fn info(State(s): State<AppState>) -> Json<Value> {
    let mut v = (*s.info).clone();
    v["queued"] = json!(s.worker.queued.load(Ordering::SeqCst));
    v["active_sequences"] = json!(s.worker.active.load(Ordering::SeqCst));
    Json(v)
}

async fn metrics_text(State(s): State<AppState>) -> Response {
    let body = s
        .prometheus
        .as_ref()
        .map(|h| h.render())
        .unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

async fn models(State(s): State<AppState>) -> Json<Value> {
    Json(
        json!({"object": "list", "data": [{"id": s.cfg.model.id, "object": "model", "created": 0, "owned_by": "flamingo-serve"}]}),
    )
}

/// Prepares (blocking pool), queues, and returns the session plus timings.
async fn start(
    s: &AppState,
    rendered: Rendered,
    params: Parameters,
) -> Result<(Session, Prepared, Timings), ApiError> {
    if s.draining.load(Ordering::SeqCst) {
        return Err(
            ApiError::new(ErrorKind::Unavailable, "the server is shutting down")
                .retry_after(s.cfg.server.retry_after_s),
        );
    }
    let arrived = Instant::now();
    let ctx = s.ctx.clone();
    let prepared = tokio::task::spawn_blocking(move || {
        let _span = tracing::info_span!("validate_preprocess").entered();
        prepare(rendered, &params, &ctx)
    })
    .await
    .map_err(|e| ApiError::internal(format!("preprocessing task failed: {e}")))??;
    let prepared_at = Instant::now();
    let deadline = arrived + Duration::from_secs(s.cfg.server.request_timeout_s);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    s.worker.submit(WorkItem {
        tokens: prepared.tokens.clone(),
        images: prepared.images.clone(),
        params: prepared.params.clone(),
        events: tx,
        deadline,
        enqueued: prepared_at,
    })?;
    let session = Session::new(
        rx,
        s.tokenizer.clone(),
        s.filter.clone(),
        prepared.stop.clone(),
        deadline,
    );
    Ok((
        session,
        prepared,
        Timings {
            arrived,
            prepared_at,
        },
    ))
}

struct Timings {
    arrived: Instant,
    prepared_at: Instant,
}

impl Timings {
    /// `Server-Timing` header: preprocessing, queue wait, model time, total.
    fn header(&self, session: &Session) -> HeaderValue {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let started = session.started_at.unwrap_or(self.prepared_at);
        let now = Instant::now();
        let v = format!(
            "prepare;dur={:.2}, queue;dur={:.2}, generate;dur={:.2}, total;dur={:.2}",
            ms(self.prepared_at - self.arrived),
            ms(started.saturating_duration_since(self.prepared_at)),
            ms(now.saturating_duration_since(started)),
            ms(now - self.arrived)
        );
        HeaderValue::from_str(&v).unwrap_or(HeaderValue::from_static(""))
    }
}

async fn run_to_end(session: &mut Session) -> Result<Final, ApiError> {
    while let Some(out) = session.next().await {
        if let Output::Done(f) = out? {
            return Ok(f);
        }
    }
    Err(ApiError::internal("generation ended without a result"))
}

fn record_ttft(t: &Timings, session: &Session) {
    if let Some(first) = session.first_token_at {
        metrics::histogram!("flamingo_time_to_first_token_seconds")
            .record((first - t.arrived).as_secs_f64());
    }
}

fn prefill_details(s: &AppState, p: &Prepared) -> Value {
    let toks: Vec<Value> = p
        .tokens
        .iter()
        .map(|&id| json!({"id": id, "text": s.tokenizer.token_piece(id), "logprob": null, "special": s.tokenizer.is_special(id)}))
        .collect();
    Value::Array(toks)
}

async fn generate(
    State(s): State<AppState>,
    body: Result<Json<GenerateRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body?;
    let rendered = req.render()?;
    let params = req.parameters.clone().unwrap_or_default();
    let (mut session, prepared, timings) = start(&s, rendered, params).await?;
    let f = run_to_end(&mut session).await?;
    record_ttft(&timings, &session);
    let mut body = json!({"generated_text": f.generated_text, "filtered": f.filtered});
    if prepared.details {
        body["details"] = json!({
            "finish_reason": f.finish_reason,
            "generated_tokens": f.generated_tokens,
            "seed": prepared.seed,
            "tokens": f.tokens,
            "prefill": if prepared.decoder_input_details { prefill_details(&s, &prepared) } else { json!([]) },
        });
    } else {
        body["details"] = json!({"finish_reason": f.finish_reason, "generated_tokens": f.generated_tokens, "seed": prepared.seed});
    }
    let mut response = Json(body).into_response();
    response
        .headers_mut()
        .insert("server-timing", timings.header(&session));
    Ok(response)
}

fn sse_json(v: &Value) -> SseEvent {
    SseEvent::default().data(v.to_string())
}

fn sse_error(e: &ApiError) -> SseEvent {
    SseEvent::default()
        .event("error")
        .data(json!({"error": e.message, "error_type": e.kind.as_str()}).to_string())
}

async fn generate_stream(
    State(s): State<AppState>,
    body: Result<Json<GenerateRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body?;
    let rendered = req.render()?;
    let params = req.parameters.clone().unwrap_or_default();
    if params.num_beams.unwrap_or(1) > 1 {
        return Err(ApiError::validation(
            "beam search is not available on the stream route; use /generate",
        ));
    }
    let (mut session, prepared, timings) = start(&s, rendered, params).await?;
    let seed = prepared.seed;
    let stream = async_stream::stream! {
        let mut index = 0usize;
        while let Some(out) = session.next().await {
            match out {
                Ok(Output::Token(t)) => {
                    index += 1;
                    if index == 1 {
                        record_ttft(&timings, &session);
                    }
                    yield Ok::<_, Infallible>(sse_json(&json!({"index": index, "token": t, "generated_text": null, "details": null})));
                }
                Ok(Output::Done(f)) => {
                    let last = json!({"id": null, "text": f.trailing_text, "logprob": null, "special": true});
                    yield Ok(sse_json(&json!({
                        "index": index + 1,
                        "token": last,
                        "generated_text": f.generated_text,
                        "details": {"finish_reason": f.finish_reason, "generated_tokens": f.generated_tokens, "seed": seed},
                        "filtered": f.filtered,
                    })));
                    break;
                }
                Err(e) => {
                    yield Ok(sse_error(&e));
                    break;
                }
            }
        }
    };
    Ok(sse_response(stream))
}

fn sse_response<S: Stream<Item = Result<SseEvent, Infallible>> + Send + 'static>(
    stream: S,
) -> Response {
    let mut r = Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response();
    // Tell nginx not to buffer the stream even if the proxy config forgets to.
    r.headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}

fn chat_params(req: &ChatRequest, s: &AppState) -> Result<Parameters, ApiError> {
    if req.n.is_some_and(|n| n != 1) {
        return Err(ApiError::validation("only n = 1 is supported"));
    }
    let greedy = req.temperature.is_some_and(|t| t == 0.0);
    Ok(Parameters {
        max_new_tokens: req
            .max_completion_tokens
            .or(req.max_tokens)
            .or(Some(s.cfg.limits.max_new_tokens.min(256) as u32)),
        do_sample: Some(!greedy && (req.temperature.is_some() || req.top_p.is_some())),
        temperature: req.temperature.filter(|t| *t > 0.0),
        top_p: req.top_p,
        seed: req.seed,
        stop: req.stop.clone().map(|s| s.into_vec()),
        ..Default::default()
    })
}

fn openai_reason(r: &str) -> &'static str {
    match r {
        "length" => "length",
        "content_filter" => "content_filter",
        _ => "stop",
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn chat(
    State(s): State<AppState>,
    body: Result<Json<ChatRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    chat_inner(s, body).await.map_err(ApiError::openai)
}

async fn chat_inner(
    s: AppState,
    body: Result<Json<ChatRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body?;
    let rendered = render_chat(&req.messages)?;
    let params = chat_params(&req, &s)?;
    let (mut session, prepared, timings) = start(&s, rendered, params).await?;
    let id = format!("chatcmpl-{}", uuid::Uuid::new_v4().simple());
    let model = s.cfg.model.id.clone();
    let created = now_unix();
    let prompt_tokens = prepared.tokens.len();
    if !req.stream.unwrap_or(false) {
        let f = run_to_end(&mut session).await?;
        record_ttft(&timings, &session);
        let body = json!({
            "id": id, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": f.generated_text},
                         "finish_reason": openai_reason(f.finish_reason), "logprobs": null}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": f.generated_tokens,
                      "total_tokens": prompt_tokens + f.generated_tokens},
            "filtered": f.filtered,
        });
        let mut response = Json(body).into_response();
        response
            .headers_mut()
            .insert("server-timing", timings.header(&session));
        return Ok(response);
    }
    let stream = async_stream::stream! {
        let chunk = |delta: Value, reason: Option<&str>| json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": reason, "logprobs": null}],
        });
        yield Ok::<_, Infallible>(sse_json(&chunk(json!({"role": "assistant", "content": ""}), None)));
        let mut first = true;
        while let Some(out) = session.next().await {
            match out {
                Ok(Output::Token(t)) => {
                    if first {
                        record_ttft(&timings, &session);
                        first = false;
                    }
                    if !t.text.is_empty() {
                        yield Ok(sse_json(&chunk(json!({"content": t.text}), None)));
                    }
                }
                Ok(Output::Done(f)) => {
                    if !f.trailing_text.is_empty() {
                        yield Ok(sse_json(&chunk(json!({"content": f.trailing_text}), None)));
                    }
                    let mut last = chunk(json!({}), Some(openai_reason(f.finish_reason)));
                    last["filtered"] = json!(f.filtered);
                    yield Ok(sse_json(&last));
                    break;
                }
                Err(e) => {
                    yield Ok(SseEvent::default().event("error").data(e.openai().body().to_string()));
                    break;
                }
            }
        }
        yield Ok(SseEvent::default().data("[DONE]"));
    };
    Ok(sse_response(stream))
}

/// 404 in our error shape.
pub async fn not_found() -> ApiError {
    ApiError::new(ErrorKind::NotFound, "no such route")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (METHOD, path) pairs under `paths:` in openapi.yaml.
    fn spec_operations(spec: &str) -> Vec<(String, String)> {
        let mut ops = Vec::new();
        let mut in_paths = false;
        let mut current = None;
        for line in spec.lines() {
            if !line.starts_with(' ') {
                in_paths = line.trim_end() == "paths:";
                continue;
            }
            if !in_paths {
                continue;
            }
            if let Some(p) = line.strip_prefix("  ").filter(|l| l.starts_with('/')) {
                current = Some(p.trim_end().trim_end_matches(':').to_string());
            } else if let Some(m) = line.strip_prefix("    ").filter(|l| !l.starts_with(' ')) {
                let method = m.trim_end().trim_end_matches(':');
                if ["get", "post", "put", "delete", "patch"].contains(&method) {
                    ops.push((
                        method.to_uppercase(),
                        current.clone().expect("method before path"),
                    ));
                }
            }
        }
        ops.sort();
        ops
    }

    #[test]
    fn router_and_openapi_list_the_same_operations() {
        let spec = spec_operations(include_str!("../../../openapi.yaml"));
        let mut ours: Vec<(String, String)> = ROUTES
            .iter()
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .collect();
        ours.sort();
        assert_eq!(ours, spec, "routes and openapi.yaml diverge");
    }

    #[test]
    fn every_route_has_a_handler() {
        let _ = router();
    }
}
