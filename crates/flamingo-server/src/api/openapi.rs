//! The OpenAPI document, generated from the request and response types and the handlers'
//! `#[utoipa::path]` annotations. `openapi.yaml` at the repository root is this document written
//! out; a test fails when they differ (`FLAMINGO_WRITE_OPENAPI=1 cargo test --release -p
//! flamingo-server openapi` rewrites it), and another when the router's `ROUTES` and the
//! document list different operations.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::Schema;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, HeaderBuilder, ObjectBuilder, Ref, RefOr, Type};
use utoipa::{IntoResponses, Modify, OpenApi, ToResponse};

use crate::routes;

const DESCRIPTION: &str = "\
OpenFlamingo-9B inference server (TGI- and OpenAI-compatible).

Prompts interleave text and images: `<image>` marks where an image goes (images are taken in order; \
no space after it), `<|endofchunk|>` closes each in-context example. Images are base64 (standard or \
URL-safe alphabet, padding optional) or `data:image/...;base64,` URLs: PNG, JPEG, WebP, GIF (first \
frame), BMP. Image dimensions are read from the header before decoding. http(s) image URLs (in \
`images`, few-shot images, TGI markdown `![](url)` and chat `image_url` parts) are refused (422) \
unless the server enables fetching (`server.allow_image_urls`, a host allowlist or public-only \
mode): only public addresses are connected to (every DNS answer and redirect checked), the content \
type must be `image/*` or `application/octet-stream`, size and time are capped. A refused or failed \
URL is 422 (naming the image), a too large image 413, a fetch timeout 504.

Errors: `{\"error\": \"...\", \"error_type\": \"...\"}` on non-`/v1` routes, the OpenAI shape \
`{\"error\": {\"message\", \"type\", \"param\", \"code\"}}` on `/v1/*` (same `type` values). Statuses: \
400 malformed JSON or wrong content type, 401 API key missing or wrong (only when keys are \
configured), 404 unknown route, 405 wrong method, 413 body or image too large (the response closes \
the connection), 422 invalid values, 429 queue full (`Retry-After`), 503 loading / draining / worker \
down (`Retry-After`), 504 deadline passed, 500 only for bugs. Bad input never yields 5xx.

Every response carries `x-request-id` (echoed from the request or generated). Every generated text \
passes the output content filter (`filtered: true` when it changed or stopped the text).

Generation responses carry `x-timings`, where the request's time went in milliseconds: \
`prepare=..;queue=..;model=..;total=..`. `prepare` is validation, tokenization and image decoding; \
`queue` the wait for a batch slot; `model` from joining the batch to the last token (image \
features, prefill, decoding); `total - queue - model` is the server's own overhead.

This document is generated from the server's types (`crates/flamingo-server/src/api`).";

#[derive(OpenApi)]
#[openapi(
    info(title = "flamingo-serve", description = DESCRIPTION),
    servers((url = "http://127.0.0.1:8080")),
    security((), ("bearer" = [])),
    paths(
        routes::assets::index,
        routes::compat::compat_generate,
        routes::assets::asset,
        routes::generate::generate,
        routes::generate::generate_stream,
        routes::chat::chat_completions,
        routes::completions::completions,
        routes::tokenize::tokenize,
        routes::info::models,
        routes::info::health,
        routes::info::ready,
        routes::info::info,
        routes::info::metrics,
        routes::info::openapi,
    ),
    components(
        schemas(super::Image, super::ErrorBody, super::OpenAIErrorBody),
        responses(ErrorResponse, RetryResponse, OpenAIErrorResponse),
    ),
    modifiers(&SharedParts),
)]
pub struct ApiDoc;

/// A rule between a schema's fields: wraps the derived schema.
type CrossFieldRule = fn(RefOr<Schema>) -> RefOr<Schema>;

const CROSS_FIELD_RULES: [(&str, CrossFieldRule); 2] = [
    ("GenerateRequest", super::schemas::generate_request),
    ("ChatMessage", super::schemas::chat_message),
];

/// The bearer scheme (API keys, when `server.api_keys` is set) and the rules between fields that
/// no field's type says.
struct SharedParts;

impl Modify for SharedParts {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        for (name, rule) in CROSS_FIELD_RULES {
            if let Some(fields) = components.schemas.remove(name) {
                components.schemas.insert(name.to_string(), rule(fields));
            }
        }
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "Required on the API routes only when `server.api_keys` is set.",
                    ))
                    .build(),
            ),
        );
    }
}

/// A JSON error response: `schema` is the body's component, `retry` adds `Retry-After`.
fn error_response(description: &str, schema: &str, retry: bool) -> RefOr<Response> {
    let mut r = ResponseBuilder::new().description(description).content(
        "application/json",
        ContentBuilder::new()
            .schema(Some(RefOr::Ref(Ref::from_schema_name(schema))))
            .build(),
    );
    if retry {
        r = r.header(
            "Retry-After",
            HeaderBuilder::new()
                .schema(ObjectBuilder::new().schema_type(Type::Integer))
                .description(Some("seconds"))
                .build(),
        );
    }
    RefOr::T(r.build())
}

/// TGI's error shape (every route outside `/v1`).
pub struct ErrorResponse;
/// TGI's error shape with `Retry-After` (429, 503).
pub struct RetryResponse;
/// OpenAI's error shape (`/v1/*`); 429 and 503 carry `Retry-After`.
pub struct OpenAIErrorResponse;

impl<'r> ToResponse<'r> for ErrorResponse {
    fn response() -> (&'r str, RefOr<Response>) {
        ("Error", error_response("Error", "Error", false))
    }
}

impl<'r> ToResponse<'r> for RetryResponse {
    fn response() -> (&'r str, RefOr<Response>) {
        let description = "Overloaded (429) or unavailable (503); retry after the given seconds";
        ("Retry", error_response(description, "Error", true))
    }
}

impl<'r> ToResponse<'r> for OpenAIErrorResponse {
    fn response() -> (&'r str, RefOr<Response>) {
        let description = "Error (OpenAI shape); 429/503 carry Retry-After";
        (
            "OpenAIError",
            error_response(description, "OpenAIError", true),
        )
    }
}

/// The error statuses a route answers, each a reference to one of the shared responses.
fn error_refs(statuses: &[u16], family: Family) -> BTreeMap<String, RefOr<Response>> {
    statuses
        .iter()
        .map(|&status| {
            let name = match family {
                Family::OpenAI => "OpenAIError",
                Family::Tgi if matches!(status, 429 | 503) => "Retry",
                Family::Tgi => "Error",
            };
            (
                status.to_string(),
                RefOr::Ref(Ref::from_response_name(name)),
            )
        })
        .collect()
}

#[derive(Clone, Copy)]
enum Family {
    Tgi,
    OpenAI,
}

/// What a generation may answer besides 200: bad JSON, a missing key, too large, invalid,
/// overloaded, unavailable, past its deadline.
const GENERATION_STATUSES: [u16; 7] = [400, 401, 413, 422, 429, 503, 504];

/// The error responses of the TGI generation routes.
pub struct GenerationErrors;
/// The error responses of `/generate_stream`: past the deadline after the stream started is an
/// `event: error`, not a status.
pub struct StreamErrors;
/// The error responses of the OpenAI generation routes.
pub struct OpenAIErrors;

impl IntoResponses for GenerationErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        error_refs(&GENERATION_STATUSES, Family::Tgi)
    }
}

impl IntoResponses for StreamErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        error_refs(&GENERATION_STATUSES[..6], Family::Tgi)
    }
}

impl IntoResponses for OpenAIErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        error_refs(&GENERATION_STATUSES, Family::OpenAI)
    }
}

/// The document as YAML: what `GET /openapi.yaml` serves and `openapi.yaml` holds.
pub fn yaml() -> &'static str {
    static YAML: LazyLock<String> = LazyLock::new(|| {
        let text = ApiDoc::openapi()
            .to_yaml()
            .expect("the OpenAPI document serialises");
        text.lines()
            .map(yaml_1_1_safe)
            .collect::<Vec<_>>()
            .join("\n")
            + "\n"
    });
    &YAML
}

/// YAML 1.1 parsers (PyYAML, so most Python tooling) read `off`, `yes`, `no`, ... as booleans
/// and a float only with a signed exponent; the serialiser writes YAML 1.2. Such scalars are
/// quoted or given their sign, so every reader sees the same document.
fn yaml_1_1_safe(line: &str) -> String {
    const BOOLEAN_WORDS: [&str; 8] = ["y", "n", "yes", "no", "on", "off", "true", "false"];
    let (prefix, value) = match line.trim_start().strip_prefix("- ") {
        Some(item) => (&line[..line.len() - item.len()], item),
        None => match line.split_once(": ") {
            Some((key, value)) => (&line[..key.len() + 2], value),
            None => return line.to_string(),
        },
    };
    let lower = value.to_ascii_lowercase();
    if BOOLEAN_WORDS.contains(&lower.as_str()) && lower != "true" && lower != "false" {
        return format!("{prefix}'{value}'");
    }
    signed_exponent(line)
}

/// `key: 3.4e38` -> `key: 3.4e+38`.
fn signed_exponent(line: &str) -> String {
    let Some((key, value)) = line.split_once(": ") else {
        return line.to_string();
    };
    let Some((mantissa, exponent)) = value.split_once('e') else {
        return line.to_string();
    };
    let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = mantissa.trim_start_matches('-').split('.').all(numeric);
    if mantissa_ok && numeric(exponent) {
        format!("{key}: {mantissa}e+{exponent}")
    } else {
        line.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::ROUTES;
    use std::collections::BTreeSet;

    const CHECKED_IN: &str = include_str!("../../../../openapi.yaml");
    const PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../openapi.yaml");

    #[test]
    fn openapi_yaml_is_the_generated_document() {
        if std::env::var_os("FLAMINGO_WRITE_OPENAPI").is_some() {
            std::fs::write(PATH, yaml()).expect("write openapi.yaml");
            return;
        }
        assert!(
            CHECKED_IN == yaml(),
            "openapi.yaml differs from the document the types generate; rewrite it with \
             FLAMINGO_WRITE_OPENAPI=1 cargo test --release -p flamingo-server openapi"
        );
    }

    #[test]
    fn exponents_are_signed_for_yaml_1_1_readers() {
        assert_eq!(signed_exponent("  maximum: 3.4e38"), "  maximum: 3.4e+38");
        assert_eq!(signed_exponent("  maximum: -1e38"), "  maximum: -1e+38");
        assert_eq!(signed_exponent("  minimum: 1.1e-38"), "  minimum: 1.1e-38");
        assert_eq!(signed_exponent("  example: see e38"), "  example: see e38");
        assert_eq!(signed_exponent("  maximum: 100"), "  maximum: 100");
        assert!(!yaml().contains("e38\n"));
        assert_eq!(yaml_1_1_safe("      - off"), "      - 'off'");
        assert_eq!(yaml_1_1_safe("  mode: on"), "  mode: 'on'");
        assert_eq!(yaml_1_1_safe("  - true"), "  - true");
        assert_eq!(yaml_1_1_safe("  - offset"), "  - offset");
        assert!(yaml().contains("- 'off'"));
    }

    #[test]
    fn the_router_and_the_document_list_the_same_operations() {
        let doc = ApiDoc::openapi();
        let mut documented = BTreeSet::new();
        for (path, item) in &doc.paths.paths {
            let methods = [("GET", &item.get), ("POST", &item.post)];
            for (method, op) in methods {
                if op.is_some() {
                    documented.insert((method.to_string(), path.clone()));
                }
            }
        }
        let served: BTreeSet<_> = ROUTES
            .iter()
            .map(|r| (r.method.to_string(), r.path.to_string()))
            .collect();
        assert_eq!(
            served, documented,
            "the router (ROUTES) and the OpenAPI document list different operations"
        );
    }

    #[test]
    fn every_operation_has_a_summary_and_refs_resolve() {
        let doc: serde_json::Value = serde_json::to_value(ApiDoc::openapi()).unwrap();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                assert!(
                    op["summary"].as_str().is_some_and(|s| !s.is_empty()),
                    "{method} {path} has no summary"
                );
                assert!(
                    op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                    "{method} {path} has no responses"
                );
            }
        }
        fn refs(v: &serde_json::Value, out: &mut Vec<String>) {
            match v {
                serde_json::Value::Object(m) => {
                    if let Some(serde_json::Value::String(r)) = m.get("$ref") {
                        out.push(r.clone());
                    }
                    m.values().for_each(|v| refs(v, out));
                }
                serde_json::Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
                _ => {}
            }
        }
        let mut all = Vec::new();
        refs(&doc, &mut all);
        assert!(!all.is_empty());
        for r in all {
            let target = r.strip_prefix("#/").expect("local ref");
            let node = target.split('/').fold(&doc, |node, part| &node[part]);
            assert!(!node.is_null(), "dangling $ref {r}");
        }
    }
}
