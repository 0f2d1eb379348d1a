//! The web demo: `/` and `/assets/*path`, embedded in the binary so a single file deploys.

use axum::extract::Path;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use crate::error::{ApiError, ErrorKind};

static ASSETS: include_dir::Dir<'_> = include_dir::include_dir!("$CARGO_MANIFEST_DIR/assets");

pub fn content_type(path: &str) -> &'static str {
    match path
        .rsplit('.')
        .next()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("html" | "htm") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json" | "map") => "application/json",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("gif") => "image/gif",
        Some("webp") => "image/webp",
        Some("svg") => "image/svg+xml",
        Some("ico") => "image/x-icon",
        Some("txt") => "text/plain; charset=utf-8",
        Some("woff2") => "font/woff2",
        _ => "application/octet-stream",
    }
}

fn serve(path: &str) -> Response {
    match ASSETS.get_file(path) {
        Some(f) => (
            [
                (header::CONTENT_TYPE, content_type(path)),
                // Assets change with the binary; revalidate rather than cache stale demo code.
                (header::CACHE_CONTROL, "no-cache"),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            f.contents(),
        )
            .into_response(),
        None => ApiError::new(ErrorKind::NotFound, format!("no asset {path}")).into_response(),
    }
}

/// Web demo page
///
/// The web demo (caption, VQA, few-shot), served without an API key.
#[utoipa::path(get, path = "/", tag = "demo", security(()),
    responses((status = 200, description = "HTML page", body = String, content_type = "text/html")))]
pub async fn index() -> Response {
    serve("index.html")
}

/// Web demo assets embedded in the binary (nested paths allowed)
///
/// The demo's files, each with its content type.
#[utoipa::path(get, path = "/assets/{path}", tag = "demo", security(()),
    params(("path" = String, Path, example = "app.js")),
    responses(
        (status = 200, description = "The file, with its content type"),
        (status = 404, response = crate::api::openapi::ErrorResponse),
    ))]
pub async fn asset(Path(path): Path<String>) -> Response {
    serve(&path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        assert_eq!(content_type("app.js"), "text/javascript; charset=utf-8");
        assert_eq!(content_type("samples/cat.PNG"), "image/png");
        assert_eq!(content_type("style.css"), "text/css; charset=utf-8");
        assert_eq!(content_type("blob"), "application/octet-stream");
    }

    #[test]
    fn the_demo_is_embedded() {
        assert!(ASSETS.get_file("index.html").is_some());
    }
}
