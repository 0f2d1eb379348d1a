//! `POST /generate` and `POST /generate_stream` (TGI-compatible).

use std::convert::Infallible;

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::api::{Details, GenerateRequest, GenerateResponse, PrefillToken, StreamEvent};
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

/// Generate text (TGI-compatible)
///
/// Either `inputs` (+ `images`, or TGI's inline markdown images `![](data:...)`, each becoming
/// `<image>` in place) or the few-shot form (`task`, `examples`, `query`), rendered server-side.
/// Greedy unless sampling is asked for (`do_sample`, or `temperature` != 1, `top_k`, `top_p` < 1,
/// as in TGI); `num_beams` > 1 runs beam search (deterministic). Stop sequences are cut from the
/// text (not included).
#[utoipa::path(post, path = "/generate", tag = "TGI",
    request_body = GenerateRequest,
    responses(
        (status = 200, description = "Generated text", body = GenerateResponse, headers(
            ("x-timings" = String, description = "Where the time went, in ms: `prepare=..;queue=..;model=..;total=..` (see the API description)"),
            ("server-timing" = String, description = "The same durations as x-timings in Server-Timing syntax (prepare, queue, generate, total)"),
        )),
        crate::api::openapi::GenerationErrors,
    ))]
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
        f.generated_text
    };
    let details = if r.details {
        let rt = s.runtime()?;
        let prefill: Vec<PrefillToken> = if r.decoder_input_details {
            g.prompt_tokens
                .iter()
                .map(|&t| PrefillToken {
                    id: t,
                    text: rt.tokenizer.token_piece(t),
                    logprob: None,
                    special: rt.tokenizer.is_special(t),
                })
                .collect()
        } else {
            Vec::new()
        };
        let mut tokens = f.tokens;
        // TGI: one list per generated token, as the output gate released them (`tokens` does
        // not serialise its alternatives).
        let top_tokens = (r.top_n_tokens > 0).then(|| {
            tokens
                .iter_mut()
                .map(|t| std::mem::take(&mut t.top_tokens))
                .collect()
        });
        Some(Details {
            finish_reason: f.finish_reason.as_str(),
            generated_tokens: f.generated_tokens,
            seed: r.seed,
            tokens: Some(tokens),
            prefill: Some(prefill),
            top_tokens,
        })
    } else {
        None
    };
    let body = GenerateResponse {
        generated_text,
        filtered: f.filtered,
        details,
    };
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

/// Generate text as server-sent events (TGI event shape)
///
/// Same request as `/generate`. One `data:` event per generated token (`{"index", "token",
/// "generated_text": null, "details": null}`; `token.text` is already filtered and may be empty
/// while text is held back: a word the filter may still mask, or a possible stop sequence). The
/// last token's event is the final one: `generated_text` (the whole filtered text; empty when
/// blocked), `details` (`finish_reason`, `generated_tokens`, `seed`) and `filtered`; its
/// `token.text` includes any flushed remainder, so the token texts add up to `generated_text`. A
/// failure after the stream started is sent as `event: error` with `{"error", "error_type"}`, then
/// the stream ends. Errors before the stream (validation, 429, 503) are plain JSON responses.
/// `num_beams > 1` is refused (422). Keep-alive comments every 15 s; `X-Accel-Buffering: no`.
/// Closing the connection stops the generation at the next step.
#[utoipa::path(post, path = "/generate_stream", tag = "TGI",
    request_body = GenerateRequest,
    responses(
        (status = 200, description = "Event stream", body = crate::api::StreamEventSse, content_type = "text/event-stream"),
        crate::api::openapi::StreamErrors,
    ))]
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
            for mut t in tokens {
                index += 1;
                // `token` does not serialise its alternatives; the event carries them.
                let top_tokens = want_top.then(|| std::mem::take(&mut t.top_tokens));
                yield Ok(sse::json(&StreamEvent {
                    index,
                    token: Some(t),
                    generated_text: None,
                    details: None,
                    filtered: None,
                    top_tokens,
                }));
            }
            if let Some(f) = step.end {
                index += 1;
                g.log_finished("/generate_stream", &f);
                let mut last = last;
                let top_tokens = want_top.then(|| {
                    last.as_mut()
                        .map(|t| std::mem::take(&mut t.top_tokens))
                        .unwrap_or_default()
                });
                yield Ok(sse::json(&StreamEvent {
                    index,
                    token: last,
                    generated_text: Some(f.generated_text),
                    details: Some(Details {
                        finish_reason: f.finish_reason.as_str(),
                        generated_tokens: f.generated_tokens,
                        seed,
                        tokens: None,
                        prefill: None,
                        top_tokens: None,
                    }),
                    filtered: Some(f.filtered),
                    top_tokens,
                }));
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
