//! `POST /tokenize` (TGI): the prompt's tokens as generation would see them, each with its text
//! and byte range in `inputs` (`[{"id", "text", "start", "stop"}]`). `<image>` and
//! `<|endofchunk|>` are single special tokens; `<s>` (added unless `add_special_tokens` is false)
//! has the empty range at 0. Markdown images are not extracted here.

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use crate::api::TokenizeRequest;
use crate::error::ApiError;
use crate::state::AppState;

pub async fn tokenize(
    State(s): State<AppState>,
    body: Result<Json<TokenizeRequest>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(req) = body?;
    let rt = s.runtime()?;
    let tokenizer = rt.tokenizer.clone();
    let add_special = req.add_special_tokens.unwrap_or(true);
    // The tokenizer's time grows with the text: off the async threads.
    let tokens = tokio::task::spawn_blocking(move || {
        let text = req.inputs;
        tokenizer
            .encode_with_offsets(&text, add_special)
            .map(|tokens| {
                tokens
                    .into_iter()
                    .map(|(id, (start, stop))| {
                        let piece = text.get(start..stop).unwrap_or_default();
                        json!({"id": id, "text": piece, "start": start, "stop": stop})
                    })
                    .collect::<Vec<_>>()
            })
    })
    .await
    .map_err(|e| ApiError::internal(format!("the tokenizer task failed: {e}")))?
    .map_err(|e| ApiError::validation(format!("cannot tokenize `inputs`: {e}")).param("inputs"))?;
    Ok(Json(Value::Array(tokens)))
}
