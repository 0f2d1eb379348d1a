//! `POST /v1/chat/completions` (OpenAI). Messages render into the interleaved prompt as
//! described in `prompt.rs`; sampling follows OpenAI's names, greedy unless `temperature` or
//! `top_p` asks for sampling (a captioning model is mostly used greedily, and greedy is
//! reproducible); `max_tokens` defaults to the configured default, clamped to the context left.
//! `n` choices are independent generations (`routes::openai`); `logprobs`/`top_logprobs` come
//! from the output gate's tokens and their alternatives.

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::response::Response;
use axum::Json;
use serde_json::{json, Value};

use crate::api::{
    AssistantMessage, ChatChoice, ChatChunkChoice, ChatCompletion, ChatCompletionChunk, ChatDelta,
    ChatRequest, Parameters,
};
use crate::error::ApiError;
use crate::pipeline::RequestId;
use crate::prompt::render_chat;
use crate::routes::openai::{self, refuse, Sampling, Update};
use crate::session::TokenOut;
use crate::state::AppState;

const ROUTE: &str = "/v1/chat/completions";

/// A field that is neither absent nor null.
fn set(v: &Option<Value>) -> bool {
    v.as_ref().is_some_and(|v| !v.is_null())
}

/// OpenAI's fields this server cannot honour are accepted with their neutral values only.
fn check_neutral(req: &ChatRequest) -> Result<(), ApiError> {
    let no_tools = req
        .tools
        .as_ref()
        .is_none_or(|t| t.is_null() || t.as_array().is_some_and(|a| a.is_empty()));
    if !no_tools
        || req
            .tool_choice
            .as_ref()
            .is_some_and(|t| !t.is_null() && t != "none")
    {
        return refuse("tools", "are not supported by this model");
    }
    if req
        .functions
        .as_ref()
        .is_some_and(|f| !(f.is_null() || f.as_array().is_some_and(|a| a.is_empty())))
    {
        return refuse("functions", "are not supported by this model");
    }
    if req
        .function_call
        .as_ref()
        .is_some_and(|f| !(f.is_null() || f == "none"))
    {
        return refuse(
            "function_call",
            "is not supported by this model (only \"none\")",
        );
    }
    if let Some(f) = &req.response_format {
        if !(f.is_null() || f["type"] == "text") {
            return refuse(
                "response_format",
                "only `{\"type\": \"text\"}` is supported",
            );
        }
    }
    if set(&req.audio) {
        return refuse("audio", "is not supported: this model answers in text");
    }
    if req
        .modalities
        .as_ref()
        .is_some_and(|m| !(m.is_null() || *m == json!(["text"])))
    {
        return refuse("modalities", "must be [\"text\"]");
    }
    if set(&req.prediction) {
        return refuse("prediction", "(predicted outputs) is not supported");
    }
    if req
        .service_tier
        .as_deref()
        .is_some_and(|t| !["auto", "default"].contains(&t))
    {
        return refuse("service_tier", "must be \"auto\" or \"default\"");
    }
    if req.store == Some(true) {
        return refuse("store", "is not supported: completions are not stored");
    }
    if req.reasoning_effort.is_some() {
        return refuse(
            "reasoning_effort",
            "is not supported: this is not a reasoning model",
        );
    }
    if set(&req.web_search_options) {
        return refuse("web_search_options", "is not supported");
    }
    if req.verbosity.as_deref().is_some_and(|v| v != "medium") {
        return refuse(
            "verbosity",
            "must be \"medium\" (the only level this model has)",
        );
    }
    if req
        .metadata
        .as_ref()
        .is_some_and(|m| !(m.is_null() || m.is_object()))
    {
        return refuse("metadata", "must be an object");
    }
    Ok(())
}

fn params(req: &ChatRequest) -> Result<(Parameters, u32), ApiError> {
    check_neutral(req)?;
    let want_logprobs = req.logprobs.unwrap_or(false);
    let top = req.top_logprobs.unwrap_or(0);
    if top > 0 && !want_logprobs {
        return refuse("top_logprobs", "needs `logprobs: true`");
    }
    openai::params(&Sampling {
        max_tokens: req.max_completion_tokens.or(req.max_tokens),
        temperature: req.temperature,
        top_p: req.top_p,
        top_k: req.top_k,
        repetition_penalty: req.repetition_penalty,
        seed: req.seed,
        stop: req.stop.as_ref(),
        stop_token_ids: req.stop_token_ids.as_ref(),
        frequency_penalty: req.frequency_penalty,
        presence_penalty: req.presence_penalty,
        logit_bias: req.logit_bias.as_ref(),
        n: req.n,
        top_n: if want_logprobs { top } else { 0 },
    })
}

/// OpenAI-compatible chat completions
///
/// Messages render into the interleaved prompt in order: an `image_url` part becomes `<image>`, a
/// text part (or string content) its text, every `assistant` message is followed by
/// `<|endofchunk|>`, `system`/`developer` text is put in as it is; nothing else is added. So
/// `[{user: [image, "Output:"]}, {assistant: "A cat."}, {user: [image, "Output:"]}]` renders
/// `<image>Output:A cat.<|endofchunk|><image>Output:`. Texts may not contain the markers
/// themselves (422). `data:` image URLs are accepted; http(s) URLs only when the server fetches
/// them (`server.allow_image_urls`, else 422); only user messages carry images. Greedy unless
/// `temperature` (> 0) or `top_p` (< 1) is given; `temperature: 0` is greedy. `max_tokens` (or
/// `max_completion_tokens`) defaults to the server's default, clamped to the context the prompt
/// leaves. `model` is accepted and ignored. Optional fields accept `null`. `stream: true` sends
/// `chat.completion.chunk` events (the first with `role`, then `content` deltas, then one with
/// `finish_reason` and `filtered`, then a usage chunk if `stream_options.include_usage`) and
/// `data: [DONE]`; a failure after the stream started is `event: error` with the OpenAI error
/// body.
#[utoipa::path(post, path = "/v1/chat/completions", tag = "OpenAI",
    request_body = ChatRequest,
    responses(
        (status = 200, description = "A chat.completion object, or an event stream of chat.completion.chunk objects",
            headers(("x-timings" = String, description = "Where the time went, in ms: `prepare=..;queue=..;model=..;total=..` (see the API description)")),
            content(
                (ChatCompletion = "application/json"),
                (crate::api::ChatCompletionChunkSse = "text/event-stream"),
            )),
        crate::api::openapi::OpenAIErrors,
    ))]
pub async fn chat_completions(
    State(s): State<AppState>,
    id: RequestId,
    body: Result<Json<ChatRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(mut req) = body.map_err(|e| openai::body_error(e.into()))?;
    let (p, n) = params(&req)?;
    // `max_completion_tokens` wins, but a `max_tokens` sent beside it is still checked.
    if let (Some(_), Some(t)) = (req.max_completion_tokens, req.max_tokens) {
        let max = s.cfg.limits.max_new_tokens;
        if t == 0 || t as usize > max {
            return refuse(
                "max_tokens",
                &format!("must be between 1 and {max} (got {t})"),
            );
        }
    }
    let messages = std::sync::Arc::new(std::mem::take(&mut req.messages));
    let render = move || render_chat(&messages);
    let mut gens = openai::start_choices(&s, &id.0, render, &p, n, "messages").await?;
    let stream = req.stream.unwrap_or(false);
    let object = if stream {
        "chat.completion.chunk"
    } else {
        "chat.completion"
    };
    let head = openai::Head::new(&s, "chatcmpl", object, &gens);
    let want_logprobs = req.logprobs.unwrap_or(false);
    let logprobs = move |tokens: &[TokenOut]| want_logprobs.then(|| openai::chat_logprobs(tokens));
    if !stream {
        return openai::whole_response::<ChatCompletion>(&mut gens, ROUTE, head, |i, f| {
            ChatChoice {
                index: i,
                message: AssistantMessage {
                    role: "assistant",
                    content: f.generated_text.clone(),
                },
                finish_reason: f.finish_reason.openai(),
                logprobs: logprobs(&f.tokens),
            }
        })
        .await;
    }
    let include_usage = openai::include_usage(req.stream_options.as_ref());
    let opening = (0..gens.len())
        .map(|index| ChatChunkChoice {
            index,
            delta: ChatDelta {
                role: Some("assistant"),
                content: Some(String::new()),
            },
            finish_reason: None,
            logprobs: None,
        })
        .collect();
    Ok(openai::streamed_response::<ChatCompletionChunk>(
        gens,
        ROUTE,
        head,
        include_usage,
        want_logprobs,
        opening,
        move |index, update| match update {
            Update::Release { text, tokens } => ChatChunkChoice {
                index,
                delta: ChatDelta {
                    role: None,
                    content: Some(text.to_string()),
                },
                finish_reason: None,
                logprobs: logprobs(tokens),
            },
            Update::End(reason) => ChatChunkChoice {
                index,
                delta: ChatDelta::default(),
                finish_reason: Some(reason),
                logprobs: None,
            },
        },
    ))
}
