//! HTTP routes. [`ROUTES`] is the one table the router is built from; a test in `api::openapi`
//! compares it with the operations of the generated OpenAPI document (the handlers'
//! `#[utoipa::path]` annotations), so the spec cannot drift from the server.

pub mod assets;
pub mod chat;
pub mod compat;
pub mod completions;
pub mod generate;
pub mod info;
pub mod openai;
pub mod tokenize;

use axum::http::Uri;
use axum::routing::{get, post, MethodRouter};
use axum::Router;

use crate::error::{ApiError, ErrorKind};
use crate::state::AppState;

pub struct Route {
    pub method: &'static str,
    /// OpenAPI path syntax (`{name}` parameters; `/assets/{path}` matches nested paths).
    pub path: &'static str,
    /// Served without an API key even when keys are configured.
    pub public: bool,
}

const fn route(method: &'static str, path: &'static str, public: bool) -> Route {
    Route {
        method,
        path,
        public,
    }
}

pub const ROUTES: &[Route] = &[
    route("GET", "/", true),
    route("POST", "/", false),
    route("GET", "/assets/{path}", true),
    route("POST", "/generate", false),
    route("POST", "/generate_stream", false),
    route("POST", "/v1/chat/completions", false),
    route("POST", "/v1/completions", false),
    route("GET", "/v1/models", false),
    route("POST", "/tokenize", false),
    route("GET", "/health", true),
    route("GET", "/ready", true),
    route("GET", "/info", true),
    route("GET", "/metrics", true),
    route("GET", "/openapi.yaml", true),
];

fn handler(r: &Route) -> MethodRouter<AppState> {
    match (r.method, r.path) {
        ("GET", "/") => get(assets::index),
        ("POST", "/") => post(compat::compat_generate),
        ("GET", "/assets/{path}") => get(assets::asset),
        ("POST", "/generate") => post(generate::generate),
        ("POST", "/generate_stream") => post(generate::generate_stream),
        ("POST", "/v1/chat/completions") => post(chat::chat_completions),
        ("POST", "/v1/completions") => post(completions::completions),
        ("POST", "/tokenize") => post(tokenize::tokenize),
        ("GET", "/v1/models") => get(info::models),
        ("GET", "/health") => get(info::health),
        ("GET", "/ready") => get(info::ready),
        ("GET", "/info") => get(info::info),
        ("GET", "/metrics") => get(info::metrics),
        ("GET", "/openapi.yaml") => get(info::openapi),
        (m, p) => unreachable!("ROUTES lists {m} {p} without a handler"),
    }
}

/// `/assets/{path}` is a catch-all in axum's syntax.
fn axum_path(path: &str) -> String {
    path.replace("{path}", "{*path}")
}

pub fn router() -> Router<AppState> {
    ROUTES
        .iter()
        .fold(Router::new(), |r, route| {
            r.route(&axum_path(route.path), handler(route))
        })
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
}

/// Whether a request may skip the API key: by method and path (`GET /` is the public demo page,
/// `POST /` is TGI's generation route).
pub fn is_public(method: &str, path: &str) -> bool {
    ROUTES.iter().any(|r| {
        r.public
            && r.method == method
            && match r.path.strip_suffix("{path}") {
                Some(prefix) => path.starts_with(prefix),
                None => path == r.path,
            }
    })
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::new(
        ErrorKind::NotFound,
        format!("no route {}; see /openapi.yaml", uri.path()),
    )
}

async fn method_not_allowed(uri: Uri) -> ApiError {
    ApiError::new(
        ErrorKind::MethodNotAllowed,
        format!("method not allowed on {}; see /openapi.yaml", uri.path()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_has_a_handler_and_public_paths_are_exact() {
        let _ = router();
        assert!(is_public("GET", "/health"));
        assert!(is_public("GET", "/assets/app.js"));
        assert!(is_public("GET", "/"));
        assert!(!is_public("POST", "/"));
        assert!(!is_public("POST", "/generate"));
        assert!(!is_public("GET", "/v1/models"));
        assert!(!is_public("GET", "/healthz"));
    }
}
