//! `POST /`: TGI's compatibility route. The body is a `/generate` body; `"stream": true` in it
//! answers as `/generate_stream` (server-sent events), anything else as `/generate`. This is the
//! URL `huggingface_hub.InferenceClient(base_url).text_generation(...)` posts to.

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::api::GenerateRequest;
use crate::error::{ApiError, ErrorKind};
use crate::pipeline::RequestId;
use crate::routes::generate;
use crate::state::AppState;

pub async fn compat_generate(
    state: State<AppState>,
    headers: HeaderMap,
    id: RequestId,
    body: Result<Json<GenerateRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    // `GET /` (the demo page) is public, and the API-key middleware decides by path alone, so
    // this operation on the same path checks the key itself.
    if !authorized(&state.cfg.server.api_keys, &headers) {
        let mut response = ApiError::new(
            ErrorKind::Unauthorized,
            "missing or invalid API key (send `Authorization: Bearer <key>`)",
        )
        .into_response();
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return Ok(response);
    }
    // A body that does not parse goes to `/generate`, which answers its error.
    let stream = matches!(&body, Ok(Json(req)) if req.stream == Some(true));
    if stream {
        generate::generate_stream(state, id, body).await
    } else {
        generate::generate(state, id, body).await
    }
}

/// The same rule as the API-key middleware: no keys configured, or `Bearer <one of them>`.
fn authorized(keys: &[String], headers: &HeaderMap) -> bool {
    if keys.is_empty() {
        return true;
    }
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
    else {
        return false;
    };
    // Every key is compared in full, without an early exit, so timing does not reveal a match.
    keys.iter().fold(false, |ok, k| ok | same_bytes(k, given))
}

fn same_bytes(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_auth(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn key_check_matches_the_middleware_rule() {
        let none: Vec<String> = Vec::new();
        let keys = vec!["k1".to_string(), "k2".to_string()];
        assert!(authorized(&none, &HeaderMap::new()));
        assert!(!authorized(&keys, &HeaderMap::new()));
        assert!(authorized(&keys, &with_auth("Bearer k1")));
        assert!(authorized(&keys, &with_auth("bearer k2")));
        assert!(!authorized(&keys, &with_auth("Bearer k")));
        assert!(!authorized(&keys, &with_auth("Bearer k12")));
        assert!(!authorized(&keys, &with_auth("Basic azE6")));
    }
}
