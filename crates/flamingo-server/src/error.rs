//! One error type for every route, with its HTTP status and two body shapes: TGI's
//! `{error, error_type}` and OpenAI's `{error: {message, type, param, code}}`. The shape is
//! chosen by path in one middleware ([`openai_shape`]), so handlers, extractors, the API-key check
//! and the fallbacks need not know which family a route belongs to.

use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::http::{header, HeaderValue, Request, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::api::{ErrorBody, OpenAIErrorBody, OpenAIErrorDetail};

/// What went wrong: `error_type` in TGI's error shape, `error.type` in OpenAI's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    InvalidRequest,
    Unauthorized,
    NotFound,
    MethodNotAllowed,
    PayloadTooLarge,
    Validation,
    Overloaded,
    Unavailable,
    Timeout,
    Internal,
}

impl ErrorKind {
    /// Every kind.
    pub const ALL: [ErrorKind; 10] = [
        ErrorKind::InvalidRequest,
        ErrorKind::Unauthorized,
        ErrorKind::NotFound,
        ErrorKind::MethodNotAllowed,
        ErrorKind::PayloadTooLarge,
        ErrorKind::Validation,
        ErrorKind::Overloaded,
        ErrorKind::Unavailable,
        ErrorKind::Timeout,
        ErrorKind::Internal,
    ];

    pub fn status(self) -> StatusCode {
        match self {
            ErrorKind::InvalidRequest => StatusCode::BAD_REQUEST,
            ErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorKind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::Validation => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorKind::Overloaded => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest => "invalid_request",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::NotFound => "not_found",
            ErrorKind::MethodNotAllowed => "method_not_allowed",
            ErrorKind::PayloadTooLarge => "payload_too_large",
            ErrorKind::Validation => "validation",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Internal => "internal",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
    pub retry_after_s: Option<u64>,
    /// The request parameter at fault, when known (OpenAI's `param`).
    pub param: Option<String>,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: capped(message.into()),
            retry_after_s: None,
            param: None,
        }
    }
    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Validation, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }
    pub fn unavailable(message: impl Into<String>, retry_after_s: u64) -> Self {
        Self::new(ErrorKind::Unavailable, message).retry_after(retry_after_s)
    }
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after_s = Some(seconds);
        self
    }
    pub fn param(mut self, name: impl Into<String>) -> Self {
        self.param = Some(capped(name.into()));
        self
    }

    /// `{"error": "...", "error_type": "..."}` (TGI).
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: self.message.clone(),
            error_type: self.kind,
        }
    }

    /// `{"error": {"message", "type", "param", "code"}}` (OpenAI).
    pub fn openai_body(&self) -> OpenAIErrorBody {
        OpenAIErrorBody {
            error: OpenAIErrorDetail {
                message: self.message.clone(),
                kind: self.kind,
                param: self.param.clone(),
                code: None,
            },
        }
    }

    fn response_with(&self, body: impl serde::Serialize) -> Response {
        let mut response = (self.kind.status(), Json(body)).into_response();
        if let Some(s) = self.retry_after_s {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if self.kind == ErrorKind::PayloadTooLarge {
            // The rest of an oversized body is never read, so the connection cannot carry another
            // request; saying so stops clients from reusing it and failing their next request.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        // Lets `openai_shape` re-render the body without parsing it.
        response.extensions_mut().insert(self.clone());
        response
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.response_with(self.body())
    }
}

/// axum's JSON extractor errors in our shape: syntax and content-type problems are 400, a body
/// that parses but does not fit the schema is 422 (TGI does the same), an oversized body 413.
impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        let kind = match &r {
            JsonRejection::JsonDataError(_) => ErrorKind::Validation,
            JsonRejection::BytesRejection(b) if b.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                ErrorKind::PayloadTooLarge
            }
            _ => ErrorKind::InvalidRequest,
        };
        let message = match &r {
            JsonRejection::MissingJsonContentType(_) => {
                "expected a JSON body with `Content-Type: application/json`".into()
            }
            JsonRejection::BytesRejection(b) if b.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                "the request body is larger than the server's limit (server.max_body_bytes)".into()
            }
            _ => r.body_text(),
        };
        ApiError::new(kind, message)
    }
}

/// Messages quote the client's input (a role, a type name, a JSON error's excerpt); a 1 MB
/// value must not come back as a 1 MB error.
pub const MAX_MESSAGE_CHARS: usize = 512;

fn capped(mut s: String) -> String {
    if let Some((cut, _)) = s.char_indices().nth(MAX_MESSAGE_CHARS) {
        s.truncate(cut);
        s.push_str("… (truncated)");
    }
    s
}

/// Middleware: errors on `/v1/*` leave in the OpenAI shape.
pub async fn openai_shape(req: Request<Body>, next: Next) -> Response {
    let openai = req.uri().path().starts_with("/v1/");
    let response = next.run(req).await;
    if !openai {
        return response;
    }
    match response.extensions().get::<ApiError>().cloned() {
        Some(e) => {
            let mut shaped = e.response_with(e.openai_body());
            for name in [
                "x-request-id",
                "x-timings",
                "server-timing",
                "www-authenticate",
            ] {
                if let Some(v) = response.headers().get(name) {
                    shaped.headers_mut().insert(name, v.clone());
                }
            }
            shaped
        }
        None => response,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_serialise_as_their_names() {
        for kind in ErrorKind::ALL {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
        }
    }

    #[test]
    fn shapes_and_statuses() {
        let e = ApiError::validation("bad").param("top_p");
        assert_eq!(
            serde_json::to_value(e.body()).unwrap(),
            serde_json::json!({"error": "bad", "error_type": "validation"})
        );
        assert_eq!(e.kind.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let o = serde_json::to_value(ApiError::new(ErrorKind::Overloaded, "full").openai_body())
            .unwrap();
        assert_eq!(
            o,
            serde_json::json!({"error": {"message": "full", "type": "overloaded", "param": null, "code": null}})
        );
        assert_eq!(
            serde_json::to_value(e.openai_body()).unwrap()["error"]["param"],
            "top_p"
        );
        let r = ApiError::new(ErrorKind::Overloaded, "full")
            .retry_after(2)
            .into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "2");
    }
}
