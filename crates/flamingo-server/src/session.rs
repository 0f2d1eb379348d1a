//! One request's generation as the routes see it: worker events in, filtered text out.
//! Incremental detokenization, stop sequences (cut, and never half-sent in a stream) and the
//! output content filter all happen here, once, for every route and both response forms, so no
//! generated text can leave the server unfiltered. Dropping the session drops the event receiver,
//! which makes the worker evict the sequence at its next step.

use std::sync::Arc;
use std::time::{Duration, Instant};

use flamingo_model::engine::{FinishReason, GeneratedToken, Hypothesis};
use flamingo_model::tokenizer::FlamingoTokenizer;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::error::{ApiError, ErrorKind};
use crate::filter::ContentFilter;
use crate::metrics as m;
pub use crate::output::{Finish, TokenOut};
use crate::output::{OutputGate, Release};
use crate::worker::WorkerEvent;

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

/// What one call to [`Session::next`] produced: the tokens the output gate released (none
/// while it holds text back, several when it lets held text go), the end, or both.
#[derive(Debug)]
pub struct Step {
    pub tokens: Vec<TokenOut>,
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
    gate: OutputGate,
    tokens: Vec<TokenOut>,
    generated: usize,
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
    pub retry_after_s: u64,
    pub timings: Timings,
}

impl Session {
    pub fn new(rx: UnboundedReceiver<WorkerEvent>, cfg: SessionConfig) -> Self {
        Self {
            rx: Some(rx),
            gate: OutputGate::new(cfg.tokenizer, &cfg.filter, cfg.stop),
            tokens: Vec::new(),
            generated: 0,
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
                WorkerEvent::Error(e) => return Some(Err(self.fail(e.into()))),
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
        let release = self.process(token, finish);
        self.step(release)
    }

    /// A beam search's best hypothesis goes through the same gate as streamed tokens, so stop
    /// sequences and the filter treat it identically.
    fn on_beams(&mut self, reason: FinishReason, hypotheses: Vec<Hypothesis>) -> Step {
        let best = hypotheses
            .into_iter()
            .next()
            .map(|h| h.tokens)
            .unwrap_or_default();
        let n = best.len();
        let mut released = Vec::new();
        for (i, token) in best.into_iter().enumerate() {
            let engine_finish = (i + 1 == n).then_some(reason);
            let release = self.process(token, engine_finish);
            released.extend(release.tokens);
            if let Some(r) = release.finish {
                return Step {
                    tokens: Vec::new(),
                    end: Some(self.finish(r, released)),
                };
            }
        }
        // Only reached with no tokens: the last one above always ends the generation.
        Step {
            tokens: Vec::new(),
            end: Some(self.finish(engine_reason(reason), released)),
        }
    }

    fn process(&mut self, token: GeneratedToken, engine_finish: Option<FinishReason>) -> Release {
        self.generated += 1;
        self.gate.push(token, engine_finish.map(engine_reason))
    }

    fn step(&mut self, release: Release) -> Step {
        match release.finish {
            Some(r) => {
                let tokens = release.tokens.clone();
                Step {
                    end: Some(self.finish(r, release.tokens)),
                    tokens,
                }
            }
            None => {
                self.tokens.extend(release.tokens.iter().cloned());
                Step {
                    tokens: release.tokens,
                    end: None,
                }
            }
        }
    }

    fn finish(&mut self, reason: Finish, last: Vec<TokenOut>) -> Final {
        self.tokens.extend(last);
        // The worker may still be generating (stop sequence, filter block, script end): dropping
        // the receiver evicts the sequence at its next step.
        self.done = true;
        self.rx = None;
        self.stage = tracing::Span::none();
        self.timings.finished = Some(Instant::now());
        let filtered = self.gate.filtered;
        if filtered {
            let action = if reason == Finish::ContentFilter {
                "block"
            } else {
                "censor"
            };
            metrics::counter!(m::FILTER_ACTIONS, "action" => action).increment(1);
        }
        metrics::counter!(m::FINISHED, "finish_reason" => reason.as_str()).increment(1);
        metrics::histogram!(m::GENERATED_PER_REQUEST).record(self.generated as f64);
        metrics::histogram!(m::GENERATION_SECONDS)
            .record(self.timings.arrived.elapsed().as_secs_f64());
        Final {
            generated_text: self.gate.released_text().to_string(),
            finish_reason: reason,
            generated_tokens: self.generated,
            tokens: std::mem::take(&mut self.tokens),
            filtered,
        }
    }
}

fn engine_reason(r: FinishReason) -> Finish {
    match r {
        FinishReason::Length => Finish::Length,
        FinishReason::StopToken => Finish::EosToken,
    }
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

    type Events = tokio::sync::mpsc::UnboundedSender<WorkerEvent>;

    /// A session with this filter mode and stop sequences, and the worker's end of its channel.
    fn open(mode: FilterMode, stop: &[&str], deadline: Duration) -> (Session, Events) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let now = Instant::now();
        let cfg = SessionConfig {
            tokenizer: tokenizer(),
            filter: ContentFilter::new(FilterConfig {
                mode,
                ..FilterConfig::default()
            }),
            stop: stop.iter().map(|s| s.to_string()).collect(),
            deadline: now + deadline,
            retry_after_s: 1,
            timings: Timings::new(now, now),
        };
        (Session::new(rx, cfg), tx)
    }

    /// What the worker sends for a generated token without alternatives.
    fn send(tx: &Events, id: u32, finish: Option<FinishReason>) {
        let token = GeneratedToken {
            id,
            logprob: -1.0,
            top: Vec::new(),
        };
        tx.send(WorkerEvent::Token { token, finish }).unwrap();
    }

    fn ids_of(text: &str) -> Vec<u32> {
        tokenizer()
            .encode(text)
            .unwrap()
            .into_iter()
            .skip(1)
            .collect()
    }

    /// A session fed with the real token ids of `text` (as a model would have generated them),
    /// the last one ending the sequence with `end`.
    fn session_with(
        mode: FilterMode,
        stop: &[&str],
        text: &str,
        end: FinishReason,
    ) -> (Session, Vec<u32>) {
        let ids = ids_of(text);
        let (s, tx) = open(mode, stop, Duration::from_secs(10));
        for (i, &id) in ids.iter().enumerate() {
            send(&tx, id, (i + 1 == ids.len()).then_some(end));
        }
        (s, ids)
    }

    fn session(mode: FilterMode, stop: &[&str], text: &str) -> (Session, Vec<u32>) {
        session_with(mode, stop, text, FinishReason::StopToken)
    }

    async fn run(s: &mut Session) -> (String, Vec<TokenOut>, Final) {
        let mut streamed = String::new();
        let mut tokens = Vec::new();
        while let Some(step) = s.next().await {
            let step = step.unwrap();
            for t in step.tokens {
                streamed.push_str(&t.text);
                tokens.push(t);
            }
            if let Some(end) = step.end {
                return (streamed, tokens, end);
            }
        }
        panic!("no end");
    }

    fn decoded(ids: impl IntoIterator<Item = u32>) -> String {
        let ids: Vec<u32> = ids.into_iter().collect();
        tokenizer().decode(&ids, true).unwrap()
    }

    #[tokio::test]
    async fn censors_across_token_boundaries_and_redacts_the_ids() {
        let (mut s, ids) = session(FilterMode::Censor, &[], "what a fucking mess");
        assert!(
            decoded(ids.clone()).contains("fucking"),
            "the ids carry the word"
        );
        let (streamed, tokens, end) = run(&mut s).await;
        assert_eq!(streamed, end.generated_text);
        assert!(
            !end.generated_text.contains("fucking"),
            "{}",
            end.generated_text
        );
        assert!(end.generated_text.starts_with("what a f"));
        assert!(end.generated_text.ends_with(" mess"));
        assert!(end.filtered);
        assert_eq!(end.finish_reason, Finish::EosToken);
        assert_eq!(end.generated_tokens, ids.len());
        assert_eq!(end.tokens, tokens, "details list what the stream released");
        assert_eq!(tokens.len(), ids.len(), "every token leaves, some redacted");
        let leaked = decoded(tokens.iter().map(|t| t.id));
        assert!(!leaked.contains("fuck"), "ids decode to {leaked:?}");
        assert!(
            tokens.iter().any(|t| t.id == ids[0]),
            "clean tokens keep their ids"
        );
    }

    #[tokio::test]
    async fn top_tokens_leave_with_their_token_and_are_redacted_with_it() {
        let tok = tokenizer();
        let text = "what a fucking mess";
        let ids: Vec<u32> = tok.encode(text).unwrap().into_iter().skip(1).collect();
        // An alternative that is a masked word on its own ("shit" is one token here or not; either
        // way its text as a whole alternative would be masked if it is one piece).
        let bad: Vec<u32> = tok.encode(" shit").unwrap().into_iter().skip(1).collect();
        let (mut s, tx) = open(FilterMode::Censor, &[], Duration::from_secs(10));
        for (i, &id) in ids.iter().enumerate() {
            let finish = (i + 1 == ids.len()).then_some(FinishReason::StopToken);
            let top = vec![
                flamingo_model::engine::TopLogprob { id, logprob: -0.5 },
                flamingo_model::engine::TopLogprob {
                    id: bad[0],
                    logprob: -1.5,
                },
            ];
            tx.send(WorkerEvent::Token {
                token: GeneratedToken {
                    id,
                    logprob: -0.5,
                    top,
                },
                finish,
            })
            .unwrap();
        }
        let (_, tokens, end) = run(&mut s).await;
        assert_eq!(end.tokens, tokens);
        let unk = tok.unk_id();
        let redacted: Vec<&TokenOut> = tokens.iter().filter(|t| t.id == unk).collect();
        assert!(
            !redacted.is_empty(),
            "the masked word's tokens are redacted"
        );
        for t in &tokens {
            if t.id == unk {
                assert!(
                    t.top_tokens.is_empty(),
                    "a redacted token keeps no alternatives: {t:?}"
                );
                continue;
            }
            assert_eq!(t.top_tokens.len(), 2, "{t:?}");
            assert_eq!(
                t.top_tokens[0].id, t.id,
                "its own alternative leaves with it"
            );
            assert_eq!(t.top_tokens[0].logprob, -0.5);
        }
        let leaked: Vec<u32> = tokens
            .iter()
            .flat_map(|t| t.top_tokens.iter().map(|a| a.id))
            .collect();
        assert!(
            !decoded(leaked.iter().copied()).contains("fuck"),
            "no alternative spells the masked word"
        );
        if bad.len() == 1 {
            // One piece: the alternative is masked on its own.
            let alt = &tokens[0].top_tokens[1];
            assert_eq!(alt.id, unk, "{alt:?}");
            assert!(!alt.text.contains("shit"), "{alt:?}");
            assert_eq!(alt.logprob, 0.0);
        }
    }

    #[tokio::test]
    async fn block_withholds_text_and_ids() {
        let (mut s, _) = session(FilterMode::Block, &[], "a nice shit day today");
        let (streamed, tokens, end) = run(&mut s).await;
        assert_eq!(end.finish_reason, Finish::ContentFilter);
        assert_eq!(end.generated_text, "");
        assert!(!streamed.contains("shit"));
        assert!(!decoded(tokens.iter().map(|t| t.id)).contains("shit"));
        assert!(!decoded(end.tokens.iter().map(|t| t.id)).contains("shit"));
        assert!(end.filtered);
    }

    #[tokio::test]
    async fn stop_sequences_cut_and_are_never_half_sent() {
        let (mut s, _) = session(FilterMode::Off, &["END here"], "one two END here three");
        let (streamed, _, end) = run(&mut s).await;
        assert_eq!(end.generated_text, "one two ");
        assert_eq!(streamed, "one two ");
        assert_eq!(end.finish_reason, Finish::StopSequence);
    }

    #[tokio::test]
    async fn stop_sequences_match_the_filtered_text_only() {
        // A stop sequence equal to the masked word must not fire: it would tell the client the
        // hidden word.
        let (mut s, _) = session(FilterMode::Censor, &["fucking"], "what a fucking mess");
        let (_, _, end) = run(&mut s).await;
        assert_eq!(
            end.finish_reason,
            Finish::EosToken,
            "{:?}",
            end.generated_text
        );
        assert!(end.generated_text.ends_with(" mess"));
        // The masked text itself can match.
        let (mut s, _) = session(FilterMode::Censor, &["*** "], "what a fucking mess");
        let (_, _, end) = run(&mut s).await;
        assert_eq!(end.finish_reason, Finish::StopSequence);
    }

    #[tokio::test]
    async fn clean_text_passes_unchanged_and_specials_add_no_text() {
        let (mut s, ids) = session(FilterMode::Censor, &[], "a cat on a mat");
        let (streamed, tokens, end) = run(&mut s).await;
        assert_eq!(end.generated_text, "a cat on a mat");
        assert_eq!(streamed, end.generated_text);
        assert!(!end.filtered);
        assert_eq!(tokens.iter().map(|t| t.id).collect::<Vec<_>>(), ids);

        let (mut s, tx) = open(FilterMode::Censor, &[], Duration::from_secs(10));
        for &id in &ids {
            send(&tx, id, None);
        }
        send(&tx, tokenizer().eos_id, Some(FinishReason::StopToken));
        let (_, tokens, end) = run(&mut s).await;
        assert_eq!(end.generated_text, "a cat on a mat", "no </s> in the text");
        assert!(tokens.last().unwrap().special);
    }

    #[tokio::test]
    async fn worker_loss_and_deadline_are_errors_not_hangs() {
        let make = |deadline: Duration| open(FilterMode::Censor, &[], deadline);
        let (mut s, tx) = make(Duration::from_secs(10));
        drop(tx);
        let e = s.next().await.unwrap().unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unavailable);
        assert!(s.next().await.is_none());
        let (mut s, _tx) = make(Duration::from_millis(20));
        assert_eq!(
            s.next().await.unwrap().unwrap_err().kind,
            ErrorKind::Timeout
        );
    }

    #[test]
    fn stop_helpers() {
        use crate::output::{first_stop, stop_prefix_len};
        let stops = vec!["\nQuestion".to_string()];
        assert_eq!(stop_prefix_len("a cat\nQue", &stops), 4);
        assert_eq!(stop_prefix_len("a cat", &stops), 0);
        assert_eq!(first_stop("ab\nQuestion", &stops, 0), Some(2));
        assert_eq!(first_stop("é\nQuestion", &stops, 3), Some(2));
    }
}
