//! `POST /generate` and `POST /generate_stream` (TGI-compatible).

use std::convert::Infallible;

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::api::GenerateRequest;
use crate::error::ApiError;
use crate::pipeline::{self, Generation, RequestId};
use crate::prompt::render_generate;
use crate::sse;
use crate::state::AppState;

async fn begin(
    s: &AppState,
    id: &RequestId,
    body: Result<Json<GenerateRequest>, JsonRejection>,
) -> Result<Generation, ApiError> {
    let Json(req) = body?;
    let params = req.parameters.clone().unwrap_or_default();
    pipeline::start(s, &id.0, move || render_generate(&req), &params).await
}

pub async fn generate(
    State(s): State<AppState>,
    id: RequestId,
    body: Result<Json<GenerateRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let mut g = begin(&s, &id, body).await?;
    let f = g
        .collect()
        .await
        .inspect_err(|e| g.log_failed("/generate", e))?;
    g.log_finished("/generate", &f);
    let r = &g.resolved;
    let generated_text = if r.return_full_text {
        format!("{}{}", g.prompt, f.generated_text)
    } else {
        f.generated_text.clone()
    };
    let mut body = json!({"generated_text": generated_text, "filtered": f.filtered});
    if r.details {
        let rt = s.runtime()?;
        let prefill: Vec<Value> = if r.decoder_input_details {
            // Prompt tokens are the client's own input; their log-probabilities would cost a
            // second forward pass, so they are null.
            g.prompt_tokens
                .iter()
                .map(|&t| json!({"id": t, "text": rt.tokenizer.token_piece(t), "logprob": null, "special": rt.tokenizer.is_special(t)}))
                .collect()
        } else {
            Vec::new()
        };
        body["details"] = json!({
            "finish_reason": f.finish_reason.as_str(),
            "generated_tokens": f.generated_tokens,
            "seed": r.seed,
            "tokens": f.tokens,
            "prefill": prefill,
        });
        if r.top_n_tokens > 0 {
            // TGI: one list per generated token, as the output gate released them.
            body["details"]["top_tokens"] =
                json!(f.tokens.iter().map(|t| &t.top_tokens).collect::<Vec<_>>());
        }
    }
    let mut response = Json(body).into_response();
    timing_headers(&mut response, &g);
    Ok(response)
}

/// `x-timings` (for clients and the benchmark) and the standard `Server-Timing`.
pub fn timing_headers(response: &mut Response, g: &Generation) {
    let t = g.session.timings.header();
    let server_timing = t
        .split(';')
        .filter_map(|kv| kv.split_once('='))
        // `generate` is the model time's name in Server-Timing (scripts/bench_server.py reads it).
        .map(|(k, v)| format!("{};dur={v}", if k == "model" { "generate" } else { k }))
        .collect::<Vec<_>>()
        .join(", ");
    let affinity = g.affinity.clone().unwrap_or_default();
    for (name, value) in [
        ("x-timings", t),
        ("server-timing", server_timing),
        (crate::affinity::RESPONSE_HEADER, affinity),
    ] {
        if value.is_empty() {
            continue;
        }
        if let Ok(v) = HeaderValue::from_str(&value) {
            response.headers_mut().insert(name, v);
        }
    }
}

pub async fn generate_stream(
    State(s): State<AppState>,
    id: RequestId,
    body: Result<Json<GenerateRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body?;
    let params = req.parameters.clone().unwrap_or_default();
    if params.num_beams.is_some_and(|b| b > 1) {
        return Err(ApiError::validation(
            "beam search (num_beams > 1) reports only at the end; use POST /generate",
        )
        .param("num_beams"));
    }
    let mut g = begin(&s, &id, Ok(Json(req))).await?;
    let seed = g.resolved.seed;
    let want_top = g.resolved.top_n_tokens > 0;
    let affinity = g.affinity.clone();
    let stream = async_stream::stream! {
        let mut index = 0usize;
        while let Some(step) = g.session.next().await {
            let step = match step {
                Ok(step) => step,
                Err(e) => {
                    g.log_failed("/generate_stream", &e);
                    yield Ok::<_, Infallible>(sse::error(&e, false));
                    break;
                }
            };
            // The last released token rides on the final event, as TGI's does.
            let mut tokens = step.tokens;
            let last = if step.end.is_some() { tokens.pop() } else { None };
            for t in tokens {
                index += 1;
                let mut event = json!({"index": index, "token": t, "generated_text": null, "details": null});
                if want_top {
                    event["top_tokens"] = json!(t.top_tokens);
                }
                yield Ok(sse::json(&event));
            }
            if let Some(f) = step.end {
                index += 1;
                g.log_finished("/generate_stream", &f);
                let top = last.as_ref().map(|t| t.top_tokens.clone()).unwrap_or_default();
                let mut event = json!({
                    "index": index,
                    "token": last.map(|t| json!(t)).unwrap_or(Value::Null),
                    "generated_text": f.generated_text,
                    "details": {"finish_reason": f.finish_reason.as_str(), "generated_tokens": f.generated_tokens, "seed": seed},
                    "filtered": f.filtered,
                });
                if want_top {
                    event["top_tokens"] = json!(top);
                }
                yield Ok(sse::json(&event));
                break;
            }
        }
    };
    let mut response = sse::response(stream);
    if let Some(v) = affinity.and_then(|a| axum::http::HeaderValue::from_str(&a).ok()) {
        response
            .headers_mut()
            .insert(crate::affinity::RESPONSE_HEADER, v);
    }
    Ok(response)
}
