//! The router with its middleware: request ids, tracing, panic safety net, CORS, the OpenAI
//! error shape on `/v1`, per-route metrics, API keys, body limits and timeouts.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, MatchedPath, State};
use axum::http::{header, HeaderName, HeaderValue, Method, Request, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::timeout::{RequestBodyTimeoutLayer, TimeoutLayer};
use tower_http::trace::TraceLayer;

use crate::error::{openai_shape, ApiError, ErrorKind};
use crate::metrics as m;
use crate::routes;
use crate::state::AppState;

/// A client that stops sending its body for this long is cut off (slow-upload protection).
const BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Compares without an early exit, so response timing does not reveal how much of a key matched.
fn same_key(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn require_api_key(State(s): State<AppState>, req: Request<Body>, next: Next) -> Response {
    let keys = &s.cfg.server.api_keys;
    if keys.is_empty()
        || req.method() == Method::OPTIONS
        || routes::is_public(req.method().as_str(), req.uri().path())
    {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    if given.is_some_and(|g| {
        keys.iter()
            .fold(false, |ok, k| ok | same_key(k.as_bytes(), g.as_bytes()))
    }) {
        return next.run(req).await;
    }
    let mut response = ApiError::new(
        ErrorKind::Unauthorized,
        "missing or invalid API key (send `Authorization: Bearer <key>`)",
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
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
    metrics::counter!(m::REQUESTS, "route" => route.clone(), "status" => status).increment(1);
    metrics::histogram!(m::REQUEST_SECONDS, "route" => route)
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
    let request_id = HeaderName::from_static("x-request-id");
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
            // The demo on another origin sends its key and JSON; TGI's CORS forgets
            // `authorization`, which breaks exactly that case.
            .allow_headers([
                header::CONTENT_TYPE,
                header::AUTHORIZATION,
                header::ACCEPT,
                request_id.clone(),
            ])
            .expose_headers([
                header::RETRY_AFTER,
                request_id,
                HeaderName::from_static("x-timings"),
                HeaderName::from_static("server-timing"),
            ])
            .max_age(Duration::from_secs(600)),
    )
}

fn panic_response(err: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let what = err
        .downcast_ref::<String>()
        .map(String::as_str)
        .or(err.downcast_ref::<&str>().copied())
        .unwrap_or("unknown");
    tracing::error!(panic = what, "a request handler panicked");
    ApiError::internal("internal error (a bug: the handler panicked)").into_response()
}

/// `x-request-id` as sent, when it is safe to log and echo (`[A-Za-z0-9._-]{1,128}`); any other
/// value is replaced by a fresh id, so a client cannot forge log lines or bloat headers.
fn valid_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    (1..=128).contains(&b.len())
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

/// Sets (or keeps, when valid) the request's `x-request-id` and echoes it on the response.
async fn request_id(mut req: Request<Body>, next: Next) -> Response {
    let name = HeaderName::from_static("x-request-id");
    let id = match req.headers().get(&name) {
        Some(v) if valid_request_id(v) => v.clone(),
        _ => HeaderValue::from_str(&uuid::Uuid::new_v4().to_string())
            .expect("a UUID is a valid header value"),
    };
    req.headers_mut().insert(name.clone(), id.clone());
    let mut response = next.run(req).await;
    response.headers_mut().insert(name, id);
    response
}

/// A body announced larger than the limit is refused from its `Content-Length`, before any of
/// it is read. A client that waits for `100 Continue` gets the 413 instead and sends nothing.
/// A client that sends its body anyway must be able to read the 413: closing with unread data
/// makes the kernel reset the connection under it (a broken pipe instead of an answer), so the
/// rest of the body is read and discarded (bounded) while the answer goes out.
async fn refuse_oversized(State(s): State<AppState>, req: Request<Body>, next: Next) -> Response {
    let announced = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match announced {
        Some(n) if n > s.cfg.server.max_body_bytes as u64 => {
            let waits_for_continue = req
                .headers()
                .get(header::EXPECT)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
            let response = ApiError::new(
                ErrorKind::PayloadTooLarge,
                format!(
                    "the request body ({n} bytes) is larger than the server's limit (server.max_body_bytes = {})",
                    s.cfg.server.max_body_bytes
                ),
            )
            .into_response();
            let body = req.into_body();
            if waits_for_continue {
                // Dropped unread in hyper's "continue" state: no 100 is sent, nothing is read.
                drop(body);
            } else {
                tokio::spawn(discard(body, n.min(DISCARD_MAX_BYTES), DISCARD_MAX_TIME));
            }
            response
        }
        _ => next.run(req).await,
    }
}

/// At most this much of a refused body is read away before the connection is just closed.
const DISCARD_MAX_BYTES: u64 = 256 << 20;
const DISCARD_MAX_TIME: Duration = Duration::from_secs(10);

async fn discard(body: Body, max_bytes: u64, max_time: Duration) {
    use http_body_util::BodyExt;
    let mut body = body;
    let mut read = 0u64;
    let _ = tokio::time::timeout(max_time, async {
        while let Some(Ok(frame)) = body.frame().await {
            read += frame.data_ref().map_or(0, |d| d.len() as u64);
            if read >= max_bytes {
                break;
            }
        }
    })
    .await;
}

pub fn app(state: AppState) -> Router {
    let backstop = Duration::from_secs(state.cfg.server.request_timeout_s + 30);
    let mut router = routes::router()
        .layer(DefaultBodyLimit::max(state.cfg.server.max_body_bytes))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            require_api_key,
        ))
        .layer(middleware::from_fn(record_metrics))
        .layer(middleware::from_fn(openai_shape))
        .with_state(state.clone());
    if let Some(c) = cors(&state.cfg.server.cors_origins) {
        router = router.layer(c);
    }
    router
        .layer(RequestBodyTimeoutLayer::new(BODY_IDLE_TIMEOUT))
        // Our own deadline answers 504 with a JSON body first; this only catches what it cannot.
        .layer(TimeoutLayer::with_status_code(StatusCode::GATEWAY_TIMEOUT, backstop))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request<Body>| {
                    let id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("-");
                    let path = req.uri().path();
                    // Probes and scrapes would flood the log at info level. Client-chosen values
                    // are logged quoted (`?`), so they cannot pose as other fields or lines.
                    if matches!(path, "/health" | "/ready" | "/metrics") {
                        tracing::debug_span!("request", method = %req.method(), path = ?path, request_id = ?id)
                    } else {
                        tracing::info_span!("request", method = %req.method(), path = ?path, request_id = ?id)
                    }
                })
                // 5xx are logged where they arise (worker, handlers, panics), with their cause.
                .on_failure(()),
        )
        .layer(middleware::from_fn_with_state(
            state.clone(),
            refuse_oversized,
        ))
        .layer(middleware::from_fn(request_id))
}
