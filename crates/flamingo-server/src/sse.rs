//! Server-sent events: the response wrapper and event builders shared by both stream routes.

use std::convert::Infallible;
use std::time::Duration;

use axum::http::{header, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;

use crate::error::ApiError;

/// A `data:` event holding one response body.
pub fn json(body: &impl serde::Serialize) -> Event {
    Event::default().data(serde_json::to_string(body).unwrap_or_default())
}

/// `event: error` with the route family's error body.
pub fn error(e: &ApiError, openai: bool) -> Event {
    let body = if openai {
        serde_json::to_string(&e.openai_body())
    } else {
        serde_json::to_string(&e.body())
    };
    Event::default()
        .event("error")
        .data(body.unwrap_or_default())
}

pub fn response<S>(stream: S) -> Response
where
    S: Stream<Item = Result<Event, Infallible>> + Send + 'static,
{
    // Comment lines every 15 s keep idle proxies from closing a long prefill.
    let mut r = Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response();
    let h = r.headers_mut();
    // nginx buffers responses unless told not to; a buffered stream arrives in one piece.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}
