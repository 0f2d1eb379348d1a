//! `POST /`: TGI's compatibility route. The body is a `/generate` body; `"stream": true` in it
//! answers as `/generate_stream` (server-sent events), anything else as `/generate`. This is the
//! URL `huggingface_hub.InferenceClient(base_url).text_generation(...)` posts to.

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::response::Response;
use axum::Json;

use crate::api::GenerateRequest;
use crate::error::ApiError;
use crate::pipeline::RequestId;
use crate::routes::generate;
use crate::state::AppState;

/// TGI compatibility route (generate or stream, chosen by the body's `stream`)
///
/// What TGI serves at `/` and `huggingface_hub.InferenceClient(base_url).text_generation(...)`
/// posts to. The body is a `/generate` body; `"stream": true` answers exactly as
/// `/generate_stream` (server-sent events), anything else (false, null, absent) exactly as
/// `/generate`. Needs the API key when keys are configured (unlike `GET /`).
#[utoipa::path(post, path = "/", tag = "TGI",
    request_body = GenerateRequest,
    responses(
        (status = 200, description = "`stream` not true: the `/generate` response; `stream: true`: the `/generate_stream` event stream",
            headers(("x-timings" = String, description = "Where the time went, in ms: `prepare=..;queue=..;model=..;total=..` (see the API description)")),
            content(
                (crate::api::GenerateResponse = "application/json"),
                (crate::api::StreamEventSse = "text/event-stream"),
            )),
        crate::api::openapi::GenerationErrors,
    ))]
pub async fn compat_generate(
    state: State<AppState>,
    id: RequestId,
    body: Result<Json<GenerateRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    // A body that does not parse goes to `/generate`, which answers its error.
    let stream = matches!(&body, Ok(Json(req)) if req.stream == Some(true));
    if stream {
        generate::generate_stream(state, id, body).await
    } else {
        generate::generate(state, id, body).await
    }
}
