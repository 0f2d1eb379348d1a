//! What the OpenAI routes (`/v1/chat/completions`, `/v1/completions`) share: sampling fields in
//! OpenAI's names, refusals of what this server cannot honour (a 422 naming the field), `n`
//! choices as independent generations with distinct seeds, their merged stream, and usage.
//!
//! Every token, text and alternative serialised here comes from the output gate (`output.rs`)
//! through [`Step`]/[`Final`]: these routes apply no filter decisions of their own.

use std::pin::Pin;

use futures::Stream;
use serde_json::Value;

use crate::api::{
    ChatLogprobs, ChatTokenLogprob, ChatTopLogprob, Envelope, Frame, LegacyLogprobs, Parameters,
    StopField, Usage,
};
use crate::error::ApiError;
use crate::pipeline::{self, Generation};
use crate::prompt::Rendered;
use crate::session::{Final, Step, TokenOut};
use crate::state::AppState;
use crate::validation::MAX_TOP_N_TOKENS;

/// Most choices (`n`) one request may ask for: each is a sequence in the batch.
pub const MAX_CHOICES: u32 = 16;

pub fn refuse<T>(name: &str, why: &str) -> Result<T, ApiError> {
    Err(ApiError::validation(format!("`{name}` {why}")).param(name))
}

/// The sampling fields both OpenAI routes share.
pub struct Sampling<'a> {
    pub max_tokens: Option<u32>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<i64>,
    pub repetition_penalty: Option<f64>,
    pub seed: Option<u64>,
    pub stop: Option<&'a StopField>,
    pub stop_token_ids: Option<&'a Vec<u32>>,
    pub frequency_penalty: Option<f64>,
    pub presence_penalty: Option<f64>,
    pub logit_bias: Option<&'a Value>,
    pub n: Option<u32>,
    /// Alternatives per token.
    pub top_n: u32,
}

/// OpenAI's sampling rules onto the generation parameters: greedy unless `temperature` (> 0) or
/// `top_p` (< 1) asks for sampling; `temperature: 0` is greedy. Returns the parameters and `n`.
pub fn params(s: &Sampling) -> Result<(Parameters, u32), ApiError> {
    let n = s.n.unwrap_or(1);
    if !(1..=MAX_CHOICES).contains(&n) {
        return refuse("n", &format!("must be between 1 and {MAX_CHOICES}"));
    }
    if s.presence_penalty.is_some_and(|p| p != 0.0) {
        return refuse(
            "presence_penalty",
            "is not supported; use repetition_penalty",
        );
    }
    if s.logit_bias
        .is_some_and(|b| !(b.is_null() || b.as_object().is_some_and(|m| m.is_empty())))
    {
        return refuse("logit_bias", "is not supported (only `{}` or null)");
    }
    if s.top_n > MAX_TOP_N_TOKENS {
        return refuse(
            "top_logprobs",
            &format!("must be between 0 and {MAX_TOP_N_TOKENS}"),
        );
    }
    let temperature = s.temperature;
    if temperature.is_some_and(|t| !(0.0..=2.0).contains(&t)) {
        return refuse("temperature", "must be between 0 and 2");
    }
    // Checked here because temperature 0 drops them below, before validation would see them.
    if s.top_k.is_some_and(|k| k < 1) {
        return refuse("top_k", "must be >= 1");
    }
    if s.top_p.is_some_and(|p| !(p > 0.0 && p <= 1.0)) {
        return refuse("top_p", "must be > 0 and <= 1");
    }
    let greedy = temperature == Some(0.0);
    let p = Parameters {
        max_new_tokens: s.max_tokens,
        do_sample: Some(!greedy && (temperature.is_some() || s.top_p.is_some_and(|p| p < 1.0))),
        temperature: temperature.filter(|_| !greedy),
        top_p: s.top_p.filter(|_| !greedy),
        top_k: s.top_k.filter(|_| !greedy),
        repetition_penalty: s.repetition_penalty,
        seed: s.seed,
        stop: s.stop.cloned().map(StopField::into_vec),
        stop_token_ids: s.stop_token_ids.cloned(),
        frequency_penalty: s.frequency_penalty,
        top_n_tokens: Some(s.top_n),
        ..Default::default()
    };
    Ok((p, n))
}

/// Validation speaks TGI's names (`max_new_tokens`, `inputs`); a `/v1` client sent OpenAI's.
pub fn openai_names(mut e: ApiError, inputs: &str) -> ApiError {
    e.param = e.param.map(|p| match p.as_str() {
        "max_new_tokens" => "max_tokens".to_string(),
        "top_n_tokens" => "top_logprobs".to_string(),
        "inputs" | "images" => inputs.to_string(),
        _ => p,
    });
    e.message = e
        .message
        .replace("`inputs`", &format!("`{inputs}`"))
        .replace("max_new_tokens", "max_tokens")
        .replace("top_n_tokens", "top_logprobs")
        .replace("limits.max_tokens", "limits.max_new_tokens");
    e
}

/// A body serde refused: name the unknown field (`param`), as OpenAI's API does.
pub fn body_error(e: ApiError) -> ApiError {
    let field = e
        .message
        .split("unknown field `")
        .nth(1)
        .and_then(|rest| rest.split('`').next())
        .map(str::to_string);
    match field {
        Some(f) if e.param.is_none() => e.param(f),
        _ => e,
    }
}

/// Starts `n` independent generations of the same prompt. With a seed, choice `i` samples with
/// `seed + i`; without one each draws its own random seed. Greedy choices are identical.
pub async fn start_choices<R>(
    s: &AppState,
    request_id: &str,
    render: R,
    p: &Parameters,
    n: u32,
    inputs: &str,
) -> Result<Vec<Generation>, ApiError>
where
    R: Fn() -> Result<Rendered, ApiError> + Clone + Send + 'static,
{
    let mut out = Vec::with_capacity(n as usize);
    for i in 0..n {
        let mut p = p.clone();
        p.seed = p.seed.map(|seed| seed.wrapping_add(u64::from(i)));
        let g = pipeline::start(s, request_id, render.clone(), &p)
            .await
            .map_err(|e| openai_names(e, inputs))?;
        out.push(g);
    }
    Ok(out)
}

/// Runs every choice to its end (non-streaming answers), logging each.
pub async fn collect_all(gens: &mut [Generation], route: &str) -> Result<Vec<Final>, ApiError> {
    let mut finals = Vec::with_capacity(gens.len());
    for g in gens.iter_mut() {
        let f = g.collect().await.inspect_err(|e| g.log_failed(route, e))?;
        g.log_finished(route, &f);
        finals.push(f);
    }
    Ok(finals)
}

/// One choice's step in a merged stream.
pub type ChoiceStep = (usize, Result<Step, ApiError>);

/// The choices' steps as they come, tagged with the choice index; each choice's stream ends
/// after its end or error (logged here).
pub fn merged(
    gens: Vec<Generation>,
    route: &'static str,
) -> Pin<Box<dyn Stream<Item = ChoiceStep> + Send>> {
    let streams = gens.into_iter().enumerate().map(|(index, mut g)| {
        Box::pin(async_stream::stream! {
            while let Some(step) = g.session.next().await {
                match &step {
                    Ok(Step { end: Some(f), .. }) => g.log_finished(route, f),
                    Err(e) => g.log_failed(route, e),
                    _ => {}
                }
                yield (index, step);
            }
        }) as Pin<Box<dyn Stream<Item = ChoiceStep> + Send>>
    });
    Box::pin(futures::stream::select_all(streams))
}

/// What identifies a response of either OpenAI route, and the prompt's size (for usage).
pub struct Head {
    pub frame: Frame,
    pub prompt_tokens: usize,
}

impl Head {
    /// A new response id (`{id_prefix}-…`), now, the served model, the prompt's size.
    pub fn new(s: &AppState, id_prefix: &str, object: &'static str, gens: &[Generation]) -> Self {
        Self {
            frame: Frame {
                id: format!("{id_prefix}-{}", uuid::Uuid::new_v4().simple()),
                object,
                created: now_unix(),
                model: s.cfg.model.id.clone(),
            },
            prompt_tokens: gens[0].prompt_tokens.len(),
        }
    }
}

/// `stream_options.include_usage`, false when absent.
pub fn include_usage(options: Option<&crate::api::StreamOptions>) -> bool {
    options.and_then(|o| o.include_usage).unwrap_or(false)
}

/// A non-streamed response: every choice run to its end, shaped by `choice(index, final)`,
/// with the usage summed over the choices.
pub async fn whole_response<E: Envelope>(
    gens: &mut [Generation],
    route: &str,
    head: Head,
    choice: impl Fn(usize, &Final) -> E::Choice,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let finals = collect_all(gens, route).await?;
    let choices = finals
        .iter()
        .enumerate()
        .map(|(i, f)| choice(i, f))
        .collect();
    let completion: usize = finals.iter().map(|f| f.generated_tokens).sum();
    let mut body = E::new(&head.frame, choices);
    body.set_usage(Some(Usage::new(head.prompt_tokens, completion)));
    body.set_filtered(finals.iter().any(|f| f.filtered));
    let mut response = axum::Json(body).into_response();
    crate::routes::generate::timing_headers(&mut response, &gens[0]);
    Ok(response)
}

/// What a stream chunk tells about one choice.
pub enum Update<'a> {
    /// Text the output gate released (may be empty when only log-probabilities are shown), with
    /// the tokens it came from.
    Release {
        text: &'a str,
        tokens: &'a [TokenOut],
    },
    /// The choice ended, for this reason (OpenAI's name).
    End(&'static str),
}

/// A streamed response: the `opening` choices first (chat's role, completions' echo), then one
/// chunk per release of a choice (when it has text, or log-probabilities to show), then each
/// choice's final chunk (with `filtered`), the usage chunk when asked, and `[DONE]` (also after
/// an error event: clients wait for it). `choice(index, update)` shapes each chunk's choice.
pub fn streamed_response<E: Envelope>(
    gens: Vec<Generation>,
    route: &'static str,
    head: Head,
    include_usage: bool,
    want_logprobs: bool,
    opening: Vec<E::Choice>,
    mut choice: impl FnMut(usize, Update<'_>) -> E::Choice + Send + 'static,
) -> axum::response::Response {
    use futures::StreamExt;
    let affinity = gens[0].affinity.clone();
    let choices = gens.len();
    let Head {
        frame,
        prompt_tokens,
    } = head;
    let chunk = move |choices: Vec<E::Choice>| {
        let mut c = E::new(&frame, choices);
        if include_usage {
            c.set_usage(None);
        }
        c
    };
    let mut steps = merged(gens, route);
    let stream = async_stream::stream! {
        for c in opening {
            yield Ok::<_, std::convert::Infallible>(crate::sse::json(&chunk(vec![c])));
        }
        let (mut finished, mut completion, mut filtered) = (0, 0, false);
        while let Some((index, step)) = steps.next().await {
            let step = match step {
                Ok(step) => step,
                Err(e) => {
                    yield Ok(crate::sse::error(&e, true));
                    break;
                }
            };
            // One chunk per release: its text, and (when asked) the log-probabilities of every
            // token in it (a token may carry no text of its own; its text left with a later one).
            let text: String = step.tokens.iter().map(|t| t.text.as_str()).collect();
            if !text.is_empty() || (want_logprobs && text_tokens(&step.tokens).next().is_some()) {
                let update = Update::Release { text: &text, tokens: &step.tokens };
                yield Ok(crate::sse::json(&chunk(vec![choice(index, update)])));
            }
            if let Some(f) = step.end {
                let mut last = chunk(vec![choice(index, Update::End(f.finish_reason.openai()))]);
                last.set_filtered(f.filtered);
                yield Ok(crate::sse::json(&last));
                finished += 1;
                completion += f.generated_tokens;
                filtered |= f.filtered;
                if finished == choices {
                    if include_usage {
                        let mut u = chunk(Vec::new());
                        u.set_usage(Some(Usage::new(prompt_tokens, completion)));
                        u.set_filtered(filtered);
                        yield Ok(crate::sse::json(&u));
                    }
                    break;
                }
            }
        }
        yield Ok(axum::response::sse::Event::default().data("[DONE]"));
    };
    let mut response = crate::sse::response(stream);
    set_affinity(&mut response, affinity);
    response
}

/// Tokens that stand for text in OpenAI's logprobs (special tokens such as `</s>` add none).
pub fn text_tokens(tokens: &[TokenOut]) -> impl Iterator<Item = &TokenOut> {
    tokens.iter().filter(|t| !t.special)
}

/// Chat's `logprobs`.
pub fn chat_logprobs(tokens: &[TokenOut]) -> ChatLogprobs {
    let content = text_tokens(tokens)
        .map(|t| ChatTokenLogprob {
            token: t.text.clone(),
            logprob: t.logprob,
            bytes: t.text.as_bytes().to_vec(),
            top_logprobs: t
                .top_tokens
                .iter()
                .map(|a| ChatTopLogprob {
                    token: a.text.clone(),
                    logprob: a.logprob,
                    bytes: a.text.as_bytes().to_vec(),
                })
                .collect(),
        })
        .collect();
    ChatLogprobs { content }
}

/// Legacy completions' `logprobs` object; `offset` is where the tokens' text starts in `text`.
pub fn legacy_logprobs(tokens: &[TokenOut], mut offset: usize) -> LegacyLogprobs {
    let mut lp = LegacyLogprobs {
        tokens: Vec::new(),
        token_logprobs: Vec::new(),
        top_logprobs: Vec::new(),
        text_offset: Vec::new(),
    };
    for t in text_tokens(tokens) {
        lp.tokens.push(t.text.clone());
        lp.token_logprobs.push(t.logprob);
        lp.top_logprobs.push(
            t.top_tokens
                .iter()
                .map(|a| (a.text.clone(), a.logprob))
                .collect(),
        );
        lp.text_offset.push(offset);
        offset += t.text.len();
    }
    lp
}

pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The `x-flamingo-affinity` header of the first choice (all choices share the images).
pub fn set_affinity(response: &mut axum::response::Response, affinity: Option<String>) {
    if let Some(v) = affinity.and_then(|a| axum::http::HeaderValue::from_str(&a).ok()) {
        response
            .headers_mut()
            .insert(crate::affinity::RESPONSE_HEADER, v);
    }
}
