//! `POST /v1/chat/completions` (OpenAI). Messages render into the interleaved prompt as
//! described in `prompt.rs`; sampling follows OpenAI's names, greedy unless `temperature` or
//! `top_p` asks for sampling (a captioning model is mostly used greedily, and greedy is
//! reproducible); `max_tokens` defaults to the configured default, clamped to the context left.

use std::convert::Infallible;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::api::{ChatRequest, Parameters};
use crate::error::ApiError;
use crate::pipeline::{self, RequestId};
use crate::prompt::render_chat;
use crate::routes::generate::timing_headers;
use crate::session::{Final, TokenOut};
use crate::sse;
use crate::state::AppState;

fn params(req: &ChatRequest) -> Result<Parameters, ApiError> {
    let refuse =
        |name: &str, why: &str| Err(ApiError::validation(format!("`{name}` {why}")).param(name));
    if req.n.is_some_and(|n| n != 1) {
        return refuse("n", "must be 1: one choice per request");
    }
    if req.presence_penalty.is_some_and(|p| p != 0.0) {
        return refuse(
            "presence_penalty",
            "is not supported; use repetition_penalty",
        );
    }
    if req.top_logprobs.is_some_and(|n| n > 0) {
        return refuse("top_logprobs", "is not supported");
    }
    if req.tools.as_ref().is_some_and(|t| !t.is_null())
        || req
            .tool_choice
            .as_ref()
            .is_some_and(|t| !t.is_null() && t != "none")
    {
        return refuse("tools", "are not supported by this model");
    }
    if let Some(f) = &req.response_format {
        if !(f.is_null() || f["type"] == "text") {
            return refuse(
                "response_format",
                "only `{\"type\": \"text\"}` is supported",
            );
        }
    }
    let temperature = req.temperature;
    let greedy = temperature == Some(0.0);
    if temperature.is_some_and(|t| !(0.0..=2.0).contains(&t)) {
        return refuse("temperature", "must be between 0 and 2");
    }
    Ok(Parameters {
        max_new_tokens: req.max_completion_tokens.or(req.max_tokens),
        do_sample: Some(!greedy && (temperature.is_some() || req.top_p.is_some_and(|p| p < 1.0))),
        temperature: temperature.filter(|_| !greedy),
        top_p: req.top_p.filter(|_| !greedy),
        top_k: req.top_k.filter(|_| !greedy),
        repetition_penalty: req.repetition_penalty,
        seed: req.seed,
        stop: req.stop.clone().map(|s| s.into_vec()),
        frequency_penalty: req.frequency_penalty,
        ..Default::default()
    })
}

/// Validation speaks TGI's names (`max_new_tokens`, `inputs`); a `/v1` client sent OpenAI's.
fn openai_names(mut e: ApiError) -> ApiError {
    e.param = e.param.map(|p| match p.as_str() {
        "max_new_tokens" => "max_tokens".to_string(),
        "inputs" | "images" => "messages".to_string(),
        _ => p,
    });
    e.message = e
        .message
        .replace("`inputs`", "`messages`")
        .replace("max_new_tokens", "max_tokens")
        .replace("limits.max_tokens", "limits.max_new_tokens");
    e
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn logprobs(tokens: &[TokenOut]) -> Value {
    json!({"content": tokens.iter().map(|t| json!({
        "token": t.text, "logprob": t.logprob, "bytes": t.text.as_bytes(), "top_logprobs": [],
    })).collect::<Vec<_>>()})
}

fn usage(prompt: usize, completion: usize) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}

pub async fn chat_completions(
    State(s): State<AppState>,
    id: RequestId,
    body: Result<Json<ChatRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(mut req) = body?;
    let p = params(&req)?;
    let messages = std::mem::take(&mut req.messages);
    let mut g = pipeline::start(&s, &id.0, move || render_chat(&messages), &p)
        .await
        .map_err(openai_names)?;
    let completion_id = format!("chatcmpl-{}", uuid::Uuid::new_v4().simple());
    let model = s.cfg.model.id.clone();
    let created = now_unix();
    let prompt_tokens = g.prompt_tokens.len();
    let want_logprobs = req.logprobs.unwrap_or(false);
    if !req.stream.unwrap_or(false) {
        let f: Final = g
            .collect()
            .await
            .inspect_err(|e| g.log_failed("/v1/chat/completions", e))?;
        g.log_finished("/v1/chat/completions", &f);
        let body = json!({
            "id": completion_id, "object": "chat.completion", "created": created, "model": model,
            "system_fingerprint": null,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": f.generated_text},
                "finish_reason": f.finish_reason.openai(),
                "logprobs": if want_logprobs { logprobs(&f.tokens) } else { Value::Null },
            }],
            "usage": usage(prompt_tokens, f.generated_tokens),
            "filtered": f.filtered,
        });
        let mut response = Json(body).into_response();
        timing_headers(&mut response, &g);
        return Ok(response);
    }
    let include_usage = req
        .stream_options
        .as_ref()
        .and_then(|o| o.include_usage)
        .unwrap_or(false);
    let affinity = g.affinity.clone();
    let stream = async_stream::stream! {
        let chunk = |delta: Value, reason: Option<&str>, lp: Value| json!({
            "id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
            "system_fingerprint": null,
            "choices": [{"index": 0, "delta": delta, "finish_reason": reason, "logprobs": lp}],
        });
        yield Ok::<_, Infallible>(sse::json(&chunk(json!({"role": "assistant", "content": ""}), None, Value::Null)));
        while let Some(step) = g.session.next().await {
            let step = match step {
                Ok(step) => step,
                Err(e) => {
                    g.log_failed("/v1/chat/completions", &e);
                    yield Ok(sse::error(&e, true));
                    break;
                }
            };
            for t in step.tokens.iter().filter(|t| !t.text.is_empty()) {
                let lp = if want_logprobs { logprobs(std::slice::from_ref(t)) } else { Value::Null };
                yield Ok(sse::json(&chunk(json!({"content": t.text}), None, lp)));
            }
            if let Some(f) = step.end {
                g.log_finished("/v1/chat/completions", &f);
                let mut last = chunk(json!({}), Some(f.finish_reason.openai()), Value::Null);
                last["filtered"] = json!(f.filtered);
                yield Ok(sse::json(&last));
                if include_usage {
                    let mut u = chunk(json!({}), None, Value::Null);
                    u["choices"] = json!([]);
                    u["usage"] = usage(prompt_tokens, f.generated_tokens);
                    yield Ok(sse::json(&u));
                }
                break;
            }
        }
        yield Ok(axum::response::sse::Event::default().data("[DONE]"));
    };
    let mut response = sse::response(stream);
    if let Some(v) = affinity.and_then(|a| axum::http::HeaderValue::from_str(&a).ok()) {
        response
            .headers_mut()
            .insert(crate::affinity::RESPONSE_HEADER, v);
    }
    Ok(response)
}
