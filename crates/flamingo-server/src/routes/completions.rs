//! `POST /v1/completions` (OpenAI's legacy completions). `prompt` is one text in this server's
//! prompt format (`<image>`, `<|endofchunk|>`) with its images inline as TGI markdown
//! `![](data:image/png;base64,...)`, exactly like `/generate`'s `inputs`. Sampling, `n`, `stop`,
//! `seed` and streaming work as on `/v1/chat/completions` (`routes::openai`); `logprobs: k` gives
//! the legacy shape with `k` alternatives per token (from the output gate). `suffix` is refused
//! (no fill-in-the-middle), `echo` with `logprobs` too (prompt log-probabilities are not computed).

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::response::Response;
use axum::Json;

use crate::api::{
    Completion, CompletionChoice, CompletionRequest, GenerateRequest, Parameters, PromptField,
};
use crate::error::ApiError;
use crate::pipeline::RequestId;
use crate::prompt::render_generate;
use crate::routes::openai::{self, refuse, Sampling, Update};
use crate::session::TokenOut;
use crate::state::AppState;

const ROUTE: &str = "/v1/completions";

/// OpenAI's legacy range for `logprobs`.
pub const MAX_LOGPROBS: u32 = 5;

fn prompt_text(p: &PromptField) -> Result<String, ApiError> {
    match p {
        PromptField::One(s) => Ok(s.clone()),
        PromptField::Many(v) if v.len() == 1 => Ok(v[0].clone()),
        PromptField::Many(_) => refuse(
            "prompt",
            "must be one text (a list of several prompts is not supported; send one request each)",
        ),
    }
}

fn params(req: &CompletionRequest) -> Result<(Parameters, u32), ApiError> {
    if req.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return refuse("suffix", "is not supported (no fill-in-the-middle)");
    }
    let logprobs = req.logprobs;
    if logprobs.is_some_and(|k| k > MAX_LOGPROBS) {
        return refuse("logprobs", &format!("must be between 0 and {MAX_LOGPROBS}"));
    }
    if logprobs.is_some() && req.echo == Some(true) {
        return refuse(
            "echo",
            "cannot be combined with `logprobs`: prompt log-probabilities are not computed",
        );
    }
    let n = req.n.unwrap_or(1);
    if req.best_of.is_some_and(|b| b != n) {
        return refuse(
            "best_of",
            "is not supported except equal to `n` (every choice is returned)",
        );
    }
    openai::params(&Sampling {
        max_tokens: req.max_tokens,
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
        top_n: logprobs.unwrap_or(0),
    })
}

/// OpenAI-compatible legacy completions
///
/// `prompt` in this server's format with inline markdown images; `object: text_completion`.
/// `stream: true` sends `text_completion` chunks (choices interleaved, each with its `index`;
/// then, with `stream_options.include_usage`, a chunk with `choices: []` and `usage`) and
/// `data: [DONE]`.
#[utoipa::path(post, path = "/v1/completions", tag = "OpenAI",
    request_body = CompletionRequest,
    responses(
        (status = 200, description = "A text_completion object, or an event stream of them",
            headers(("x-timings" = String, description = "Where the time went, in ms: `prepare=..;queue=..;model=..;total=..` (see the API description)")),
            content(
                (Completion = "application/json"),
                (crate::api::CompletionSse = "text/event-stream"),
            )),
        crate::api::openapi::OpenAIErrors,
    ))]
pub async fn completions(
    State(s): State<AppState>,
    id: RequestId,
    body: Result<Json<CompletionRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body.map_err(|e| openai::body_error(e.into()))?;
    let (p, n) = params(&req)?;
    let prompt = prompt_text(&req.prompt)?;
    let inputs = std::sync::Arc::new(prompt.clone());
    let render = move || {
        render_generate(&GenerateRequest {
            inputs: Some(inputs.to_string()),
            ..Default::default()
        })
    };
    let mut gens = openai::start_choices(&s, &id.0, render, &p, n, "prompt").await?;
    let head = openai::Head::new(&s, "cmpl", "text_completion", &gens);
    let want_logprobs = req.logprobs.is_some();
    let echo = if req.echo == Some(true) {
        prompt
    } else {
        String::new()
    };
    let logprobs = move |tokens: &[TokenOut], offset: usize| {
        want_logprobs.then(|| openai::legacy_logprobs(tokens, offset))
    };
    if !req.stream.unwrap_or(false) {
        return openai::whole_response::<Completion>(&mut gens, ROUTE, head, |index, f| {
            CompletionChoice {
                index,
                text: format!("{echo}{}", f.generated_text),
                finish_reason: Some(f.finish_reason.openai()),
                logprobs: logprobs(&f.tokens, echo.len()),
            }
        })
        .await;
    }
    let include_usage = openai::include_usage(req.stream_options.as_ref());
    let choices = gens.len();
    let opening = if echo.is_empty() {
        Vec::new()
    } else {
        (0..choices)
            .map(|index| CompletionChoice {
                index,
                text: echo.clone(),
                finish_reason: None,
                logprobs: None,
            })
            .collect()
    };
    // Text sent per choice so far (legacy `text_offset` counts from the echoed prompt).
    let mut sent = vec![echo.len(); choices];
    Ok(openai::streamed_response::<Completion>(
        gens,
        ROUTE,
        head,
        include_usage,
        want_logprobs,
        opening,
        move |index, update| match update {
            Update::Release { text, tokens } => {
                let lp = logprobs(tokens, sent[index]);
                sent[index] += text.len();
                CompletionChoice {
                    index,
                    text: text.to_string(),
                    finish_reason: None,
                    logprobs: lp,
                }
            }
            Update::End(reason) => CompletionChoice {
                index,
                text: String::new(),
                finish_reason: Some(reason),
                logprobs: None,
            },
        },
    ))
}
