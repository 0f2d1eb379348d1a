//! One error type for every route, with its HTTP status and two body shapes: TGI's
//! `{error, error_type}` and OpenAI's `{error: {message, type, param, code}}` on `/v1/*`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidRequest,
    Unauthorized,
    NotFound,
    PayloadTooLarge,
    Validation,
    Overloaded,
    Unavailable,
    Timeout,
    Internal,
}

impl ErrorKind {
    pub fn status(self) -> StatusCode {
        match self {
            ErrorKind::InvalidRequest => StatusCode::BAD_REQUEST,
            ErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
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
    pub openai: bool,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into(), retry_after_s: None, openai: false }
    }
    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Validation, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after_s = Some(seconds);
        self
    }
    /// Answer in the OpenAI shape (routes under `/v1`).
    pub fn openai(mut self) -> Self {
        self.openai = true;
        self
    }
    pub fn body(&self) -> serde_json::Value {
        if self.openai {
            serde_json::json!({"error": {"message": self.message, "type": self.kind.as_str(), "param": null, "code": null}})
        } else {
            serde_json::json!({"error": self.message, "error_type": self.kind.as_str()})
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.kind.status(), Json(self.body())).into_response();
        if let Some(s) = self.retry_after_s {
            if let Ok(v) = HeaderValue::from_str(&s.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        response
    }
}

impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(r: axum::extract::rejection::JsonRejection) -> Self {
        use axum::extract::rejection::JsonRejection as J;
        let kind = match &r {
            J::JsonDataError(_) => ErrorKind::Validation,
            J::BytesRejection(b) if b.status() == StatusCode::PAYLOAD_TOO_LARGE => ErrorKind::PayloadTooLarge,
            _ => ErrorKind::InvalidRequest,
        };
        ApiError::new(kind, r.body_text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_and_statuses() {
        let e = ApiError::validation("bad");
        assert_eq!(e.body(), serde_json::json!({"error": "bad", "error_type": "validation"}));
        assert_eq!(e.kind.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let o = ApiError::new(ErrorKind::Overloaded, "full").openai();
        assert_eq!(o.body()["error"]["type"], "overloaded");
        assert_eq!(o.kind.status(), StatusCode::TOO_MANY_REQUESTS);
    }
}
