//! `POST /tokenize` (TGI): the prompt's tokens as generation would see them, each with its text
//! and byte range in `inputs` (`[{"id", "text", "start", "stop"}]`). `<image>` and
//! `<|endofchunk|>` are single special tokens; `<s>` (added unless `add_special_tokens` is false)
//! has the empty range at 0. Markdown images are not extracted here.

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::Json;

use crate::api::{TokenSpan, TokenizeRequest};
use crate::error::ApiError;
use crate::state::AppState;

/// Tokenize a prompt (TGI)
///
/// The tokens generation would see for `inputs` (`<image>` and `<|endofchunk|>` are single
/// special tokens; markdown images are not extracted), each with its byte range in `inputs` and
/// that range's text. `<s>` is first (empty range at 0) unless `add_special_tokens` is false.
#[utoipa::path(post, path = "/tokenize", tag = "TGI",
    request_body = TokenizeRequest,
    responses(
        (status = 200, description = "The tokens", body = Vec<TokenSpan>),
        (status = 400, response = crate::api::openapi::ErrorResponse),
        (status = 401, response = crate::api::openapi::ErrorResponse),
        (status = 413, response = crate::api::openapi::ErrorResponse),
        (status = 422, response = crate::api::openapi::ErrorResponse),
        (status = 503, response = crate::api::openapi::RetryResponse),
    ))]
pub async fn tokenize(
    State(s): State<AppState>,
    body: Result<Json<TokenizeRequest>, JsonRejection>,
) -> Result<Json<Vec<TokenSpan>>, ApiError> {
    let Json(req) = body?;
    if let Some(p) = &req.parameters {
        // Refused exactly as /generate would refuse them, though nothing is generated.
        crate::validation::resolve(p, &s.cfg.limits)?;
    }
    let rt = s.runtime()?;
    // The tokenizer's time and memory grow with the text: the same size bound as generation
    // (nothing longer can be a prompt), a preprocessing slot, and off the async threads.
    if req.inputs.len() > rt.prep.max_prompt_bytes {
        return Err(ApiError::validation(format!(
            "`inputs` has {} bytes; no prompt over {} bytes fits in limits.max_input_tokens",
            req.inputs.len(),
            rt.prep.max_prompt_bytes
        ))
        .param("inputs"));
    }
    let permit = rt
        .prep_slots
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| ApiError::internal("the preprocessing slots are closed"))?;
    let tokenizer = rt.tokenizer.clone();
    let add_special = req.add_special_tokens.unwrap_or(true);
    let tokens = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let text = req.inputs;
        tokenizer
            .encode_with_offsets(&text, add_special)
            .map(|tokens| {
                tokens
                    .into_iter()
                    .map(|(id, (start, stop))| {
                        let piece = text.get(start..stop).unwrap_or_default();
                        TokenSpan {
                            id,
                            text: piece.to_string(),
                            start,
                            stop,
                        }
                    })
                    .collect::<Vec<_>>()
            })
    })
    .await
    .map_err(|e| ApiError::internal(format!("the tokenizer task failed: {e}")))?
    .map_err(|e| ApiError::validation(format!("cannot tokenize `inputs`: {e}")).param("inputs"))?;
    Ok(Json(tokens))
}
