//! One request's generation as the routes see it: worker events in, filtered text out.
//! Incremental detokenization, stop sequences (cut, and never half-sent in a stream) and the
//! output content filter all happen here, once, for every route and both response forms, so no
//! generated text can leave the server unfiltered. Dropping the session drops the event receiver,
//! which makes the worker evict the sequence at its next step.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flamingo_model::engine::{FinishReason, GeneratedToken, Hypothesis};
use flamingo_model::tokenizer::{FlamingoTokenizer, IncrementalDecoder};
use serde::Serialize;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::error::{ApiError, ErrorKind};
use crate::filter::{ContentFilter, StreamFilter};
use crate::metrics as m;
use crate::worker::WorkerEvent;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TokenOut {
    pub id: u32,
    /// The text this token released after stop-sequence handling and filtering; may be empty
    /// while text is held back, and holds the flushed remainder on the last token.
    pub text: String,
    pub logprob: f32,
    pub special: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    Length,
    EosToken,
    StopSequence,
    ContentFilter,
}

impl Finish {
    /// TGI's names.
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Length => "length",
            Finish::EosToken => "eos_token",
            Finish::StopSequence => "stop_sequence",
            Finish::ContentFilter => "content_filter",
        }
    }

    /// OpenAI's names.
    pub fn openai(self) -> &'static str {
        match self {
            Finish::Length => "length",
            Finish::EosToken | Finish::StopSequence => "stop",
            Finish::ContentFilter => "content_filter",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Final {
    /// The whole output, filtered; empty when the filter blocked it.
    pub generated_text: String,
    pub finish_reason: Finish,
    pub generated_tokens: usize,
    pub tokens: Vec<TokenOut>,
    /// The content filter changed or stopped the text.
    pub filtered: bool,
}

/// What one call to [`Session::next`] produced: a token, the end, or both (the last token).
#[derive(Debug)]
pub struct Step {
    pub token: Option<TokenOut>,
    pub end: Option<Final>,
}

/// Where the request's time went (the `x-timings` header and the access log).
#[derive(Debug, Clone, Copy)]
pub struct Timings {
    pub arrived: Instant,
    pub prepared: Instant,
    pub queued: Option<Duration>,
    pub started: Option<Instant>,
    pub first_token: Option<Instant>,
    pub finished: Option<Instant>,
}

impl Timings {
    pub fn new(arrived: Instant, prepared: Instant) -> Self {
        Self {
            arrived,
            prepared,
            queued: None,
            started: None,
            first_token: None,
            finished: None,
        }
    }

    /// `prepare=..;queue=..;model=..;total=..` in milliseconds. `model` runs from joining the
    /// batch to the last token; `total - queue - model` is the server's own overhead.
    pub fn header(&self) -> String {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let now = Instant::now();
        let started = self.started.unwrap_or(now);
        let finished = self.finished.unwrap_or(now);
        format!(
            "prepare={:.3};queue={:.3};model={:.3};total={:.3}",
            ms(self.prepared - self.arrived),
            ms(self.queued.unwrap_or_default()),
            ms(finished.saturating_duration_since(started)),
            ms(now - self.arrived)
        )
    }
}

pub struct Session {
    rx: Option<UnboundedReceiver<WorkerEvent>>,
    tokenizer: Arc<FlamingoTokenizer>,
    decoder: IncrementalDecoder,
    filter: StreamFilter,
    stop: Vec<String>,
    /// Decoded text, cut at a stop sequence.
    raw: String,
    /// Bytes of `raw` handed to the filter.
    released_raw: usize,
    /// Filtered text released so far.
    text: String,
    tokens: Vec<TokenOut>,
    filtered: bool,
    script: Option<VecDeque<String>>,
    deadline: Instant,
    done: bool,
    retry_after_s: u64,
    /// `queue` until the worker takes the request, then `decode`; closed at the end, so with
    /// span-close logging each stage's duration shows up per request.
    stage: tracing::Span,
    pub timings: Timings,
}

pub struct SessionConfig {
    pub tokenizer: Arc<FlamingoTokenizer>,
    pub filter: ContentFilter,
    pub stop: Vec<String>,
    pub deadline: Instant,
    pub script: Option<Vec<String>>,
    pub retry_after_s: u64,
    pub timings: Timings,
}

impl Session {
    pub fn new(rx: UnboundedReceiver<WorkerEvent>, cfg: SessionConfig) -> Self {
        Self {
            rx: Some(rx),
            tokenizer: cfg.tokenizer,
            decoder: IncrementalDecoder::new(),
            filter: cfg.filter.stream(),
            stop: cfg.stop,
            raw: String::new(),
            released_raw: 0,
            text: String::new(),
            tokens: Vec::new(),
            filtered: false,
            script: cfg.script.map(VecDeque::from),
            deadline: cfg.deadline,
            done: false,
            retry_after_s: cfg.retry_after_s,
            stage: tracing::debug_span!("queue"),
            timings: cfg.timings,
        }
    }

    /// The next token and/or the end; `None` once the end or an error was returned.
    pub async fn next(&mut self) -> Option<Result<Step, ApiError>> {
        if self.done {
            return None;
        }
        loop {
            let rx = self.rx.as_mut()?;
            let wait = self.deadline.saturating_duration_since(Instant::now());
            let event = match tokio::time::timeout(wait, rx.recv()).await {
                Err(_) => {
                    return Some(Err(self.fail(ApiError::new(
                        ErrorKind::Timeout,
                        "the request passed its deadline (server.request_timeout_s)",
                    ))))
                }
                Ok(None) => {
                    return Some(Err(self.fail(ApiError::unavailable(
                        "the model worker stopped before this request finished",
                        self.retry_after_s,
                    ))))
                }
                Ok(Some(e)) => e,
            };
            match event {
                WorkerEvent::Started { queued } => {
                    self.timings.started = Some(Instant::now());
                    self.timings.queued = Some(queued);
                    self.stage = tracing::debug_span!("decode");
                }
                WorkerEvent::Token { token, finish } => {
                    return Some(Ok(self.on_token(token, finish)))
                }
                WorkerEvent::Finished { reason, hypotheses } => {
                    return Some(Ok(self.on_beams(reason, hypotheses)))
                }
                WorkerEvent::Error(e) => return Some(Err(self.fail(e))),
            }
        }
    }

    /// Runs to the end (non-streaming responses).
    pub async fn collect(&mut self) -> Result<Final, ApiError> {
        while let Some(step) = self.next().await {
            if let Some(end) = step?.end {
                return Ok(end);
            }
        }
        Err(ApiError::internal("the generation ended without a result"))
    }

    fn fail(&mut self, e: ApiError) -> ApiError {
        self.done = true;
        self.rx = None;
        self.stage = tracing::Span::none();
        e
    }

    fn on_token(&mut self, token: GeneratedToken, finish: Option<FinishReason>) -> Step {
        let now = Instant::now();
        if self.timings.first_token.is_none() {
            self.timings.first_token = Some(now);
            metrics::histogram!(m::TTFT_SECONDS).record((now - self.timings.arrived).as_secs_f64());
        }
        let (out, reason) = self.process(token, finish);
        match reason {
            Some(r) => Step {
                token: Some(out),
                end: Some(self.finish(r)),
            },
            None => Step {
                token: Some(out),
                end: None,
            },
        }
    }

    /// A beam search's best hypothesis goes through the same path as streamed tokens, so stop
    /// sequences and the filter treat it identically.
    fn on_beams(&mut self, reason: FinishReason, hypotheses: Vec<Hypothesis>) -> Step {
        let best = hypotheses
            .into_iter()
            .next()
            .map(|h| h.tokens)
            .unwrap_or_default();
        let n = best.len();
        for (i, token) in best.into_iter().enumerate() {
            let engine_finish = (i + 1 == n).then_some(reason);
            if let (_, Some(r)) = self.process(token, engine_finish) {
                return Step {
                    token: None,
                    end: Some(self.finish(r)),
                };
            }
        }
        // Only reached with no tokens: the last one above always ends the generation.
        Step {
            token: None,
            end: Some(self.finish(engine_reason(reason))),
        }
    }

    /// Text of one token through detokenization, stop sequences and the filter.
    fn process(
        &mut self,
        token: GeneratedToken,
        engine_finish: Option<FinishReason>,
    ) -> (TokenOut, Option<Finish>) {
        let mut reason = engine_finish.map(engine_reason);
        let piece = match &mut self.script {
            Some(words) => {
                let w = words.pop_front().unwrap_or_default();
                if words.is_empty() && reason.is_none() {
                    reason = Some(Finish::EosToken);
                }
                w
            }
            None => {
                let mut p = self
                    .decoder
                    .push(&self.tokenizer, token.id)
                    .unwrap_or_default();
                if reason.is_some() {
                    p.push_str(&self.decoder.finish(&self.tokenizer).unwrap_or_default());
                }
                p
            }
        };
        self.raw.push_str(&piece);
        if let Some(pos) = first_stop(&self.raw, &self.stop, self.released_raw) {
            self.raw.truncate(pos);
            reason = Some(Finish::StopSequence);
        }
        let hold = if reason.is_some() {
            0
        } else {
            stop_prefix_len(&self.raw, &self.stop)
        };
        let end = (self.raw.len() - hold).max(self.released_raw);
        let chunk = self.filter.push(&self.raw[self.released_raw..end]);
        self.released_raw = end;
        let (mut text, mut acted, mut blocked) = (chunk.text, chunk.acted, chunk.blocked);
        if reason.is_some() && !blocked {
            let rest = self.filter.finish();
            text.push_str(&rest.text);
            acted |= rest.acted;
            blocked |= rest.blocked;
        }
        if blocked {
            reason = Some(Finish::ContentFilter);
        }
        self.filtered |= acted;
        self.text.push_str(&text);
        let out = TokenOut {
            id: token.id,
            text,
            logprob: token.logprob,
            special: self.tokenizer.is_special(token.id),
        };
        self.tokens.push(out.clone());
        (out, reason)
    }

    fn finish(&mut self, reason: Finish) -> Final {
        // The worker may still be generating (stop sequence, filter block, script end): dropping
        // the receiver evicts the sequence at its next step.
        self.done = true;
        self.rx = None;
        self.stage = tracing::Span::none();
        self.timings.finished = Some(Instant::now());
        if self.filtered {
            let action = if reason == Finish::ContentFilter {
                "block"
            } else {
                "censor"
            };
            metrics::counter!(m::FILTER_ACTIONS, "action" => action).increment(1);
        }
        metrics::counter!(m::FINISHED, "finish_reason" => reason.as_str()).increment(1);
        metrics::histogram!(m::GENERATED_PER_REQUEST).record(self.tokens.len() as f64);
        metrics::histogram!(m::GENERATION_SECONDS)
            .record(self.timings.arrived.elapsed().as_secs_f64());
        Final {
            generated_text: if reason == Finish::ContentFilter {
                String::new()
            } else {
                self.text.clone()
            },
            finish_reason: reason,
            generated_tokens: self.tokens.len(),
            tokens: std::mem::take(&mut self.tokens),
            filtered: self.filtered,
        }
    }
}

fn engine_reason(r: FinishReason) -> Finish {
    match r {
        FinishReason::Length => Finish::Length,
        FinishReason::StopToken => Finish::EosToken,
    }
}

/// Byte offset of the earliest stop sequence in `text`. Only matches that end after `released`
/// are new; anything earlier was already ruled out (it would have stopped the text then).
fn first_stop(text: &str, stops: &[String], released: usize) -> Option<usize> {
    stops
        .iter()
        .filter_map(|s| {
            let from = floor_char_boundary(text, released.saturating_sub(s.len()));
            text[from..].find(s.as_str()).map(|p| from + p)
        })
        .min()
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Length of the longest suffix of `text` that starts one of the stop sequences: held back in a
/// stream until it is known whether the stop sequence completes.
fn stop_prefix_len(text: &str, stops: &[String]) -> usize {
    stops
        .iter()
        .flat_map(|s| s.char_indices().skip(1).map(move |(i, _)| &s[..i]))
        .filter(|prefix| text.ends_with(prefix))
        .map(str::len)
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::{FilterConfig, FilterMode};
    use crate::worker::WorkerEvent;

    fn tokenizer() -> Arc<FlamingoTokenizer> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/tiny-openflamingo/llama/tokenizer.json"
        );
        Arc::new(FlamingoTokenizer::from_file(std::path::Path::new(path)).unwrap())
    }

    fn session(
        mode: FilterMode,
        stop: &[&str],
        script: &str,
    ) -> (Session, tokio::sync::mpsc::UnboundedSender<WorkerEvent>) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let now = Instant::now();
        let cfg = SessionConfig {
            tokenizer: tokenizer(),
            filter: ContentFilter::new(FilterConfig {
                mode,
                ..FilterConfig::default()
            }),
            stop: stop.iter().map(|s| s.to_string()).collect(),
            deadline: now + Duration::from_secs(10),
            script: Some(script.split_inclusive(' ').map(str::to_string).collect()),
            retry_after_s: 1,
            timings: Timings::new(now, now),
        };
        (Session::new(rx, cfg), tx)
    }

    fn send_tokens(tx: &tokio::sync::mpsc::UnboundedSender<WorkerEvent>, n: usize) {
        for i in 0..n {
            let finish = (i + 1 == n).then_some(FinishReason::Length);
            tx.send(WorkerEvent::Token {
                token: GeneratedToken {
                    id: 10,
                    logprob: -1.0,
                },
                finish,
            })
            .unwrap();
        }
    }

    async fn run(s: &mut Session) -> (String, Final) {
        let mut streamed = String::new();
        while let Some(step) = s.next().await {
            let step = step.unwrap();
            if let Some(t) = step.token {
                streamed.push_str(&t.text);
            }
            if let Some(end) = step.end {
                return (streamed, end);
            }
        }
        panic!("no end");
    }

    #[tokio::test]
    async fn censors_across_token_boundaries() {
        let (mut s, tx) = session(FilterMode::Censor, &[], "what a fucking mess");
        send_tokens(&tx, 10);
        let (streamed, end) = run(&mut s).await;
        assert_eq!(streamed, end.generated_text);
        assert!(
            !end.generated_text.contains("fucking"),
            "{}",
            end.generated_text
        );
        assert!(end.generated_text.starts_with("what a f"));
        assert!(end.filtered);
        assert_eq!(
            end.finish_reason,
            Finish::EosToken,
            "the script ended the generation"
        );
        assert_eq!(end.generated_tokens, 4);
    }

    #[tokio::test]
    async fn block_withholds_and_stops() {
        let (mut s, tx) = session(FilterMode::Block, &[], "a nice shit day today");
        send_tokens(&tx, 10);
        let (_, end) = run(&mut s).await;
        assert_eq!(end.finish_reason, Finish::ContentFilter);
        assert_eq!(end.generated_text, "");
        assert!(end.filtered);
        assert!(
            end.generated_tokens < 5,
            "generation stopped at the offending word"
        );
    }

    #[tokio::test]
    async fn stop_sequences_cut_and_are_never_half_sent() {
        let (mut s, tx) = session(FilterMode::Off, &["END here"], "one two END here three");
        send_tokens(&tx, 10);
        let (streamed, end) = run(&mut s).await;
        assert_eq!(end.generated_text, "one two ");
        assert_eq!(streamed, "one two ");
        assert_eq!(end.finish_reason, Finish::StopSequence);
    }

    #[tokio::test]
    async fn clean_text_passes_unchanged() {
        let (mut s, tx) = session(FilterMode::Censor, &[], "a cat on a mat");
        send_tokens(&tx, 3);
        let (streamed, end) = run(&mut s).await;
        assert_eq!(end.generated_text, "a cat on ");
        assert_eq!(streamed, end.generated_text);
        assert!(!end.filtered);
        assert_eq!(end.finish_reason, Finish::Length);
    }

    #[tokio::test]
    async fn worker_loss_and_deadline_are_errors_not_hangs() {
        let (mut s, tx) = session(FilterMode::Off, &[], "x y");
        drop(tx);
        let e = s.next().await.unwrap().unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unavailable);
        assert!(s.next().await.is_none());
        let (mut s, _tx) = session(FilterMode::Off, &[], "x y");
        s.deadline = Instant::now() + Duration::from_millis(20);
        assert_eq!(
            s.next().await.unwrap().unwrap_err().kind,
            ErrorKind::Timeout
        );
    }

    #[test]
    fn stop_helpers() {
        let stops = vec!["\nQuestion".to_string()];
        assert_eq!(stop_prefix_len("a cat\nQue", &stops), 4);
        assert_eq!(stop_prefix_len("a cat", &stops), 0);
        assert_eq!(first_stop("ab\nQuestion", &stops, 0), Some(2));
        assert_eq!(first_stop("é\nQuestion", &stops, 3), Some(2));
    }
}
