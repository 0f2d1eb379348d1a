//! Turns one request's worker events into text: incremental detokenization, stop sequences
//! (cut, never half-sent in a stream), and the output content filter before anything leaves.

use std::sync::Arc;
use std::time::Instant;

use flamingo_model::engine::FinishReason;
use flamingo_model::tokenizer::{FlamingoTokenizer, IncrementalDecoder};
use serde::Serialize;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::error::{ApiError, ErrorKind};
use crate::filter::{ContentFilter, StreamFilter};
use crate::worker::WorkerEvent;

#[derive(Debug, Clone, Serialize)]
pub struct TokenOut {
    pub id: u32,
    pub text: String,
    pub logprob: f32,
    pub special: bool,
}

#[derive(Debug, Clone)]
pub struct Final {
    pub generated_text: String,
    pub finish_reason: &'static str,
    pub generated_tokens: usize,
    pub tokens: Vec<TokenOut>,
    pub filtered: bool,
    /// Text released only at the end (held back by the filter or a possible stop sequence).
    pub trailing_text: String,
}

pub enum Output {
    Token(TokenOut),
    Done(Final),
}

pub struct Session {
    rx: Option<UnboundedReceiver<WorkerEvent>>,
    tokenizer: Arc<FlamingoTokenizer>,
    filter: ContentFilter,
    decoder: IncrementalDecoder,
    stream_filter: StreamFilter,
    stop: Vec<String>,
    raw: String,
    released_raw: usize,
    text: String,
    filtered: bool,
    tokens: Vec<TokenOut>,
    scripted: Option<Vec<String>>,
    deadline: Instant,
    pending_final: Option<&'static str>,
    pub first_token_at: Option<Instant>,
    pub started_at: Option<Instant>,
}

/// Test hook (documented, off unless set): replaces each generated token's text by the next word
/// of this text, so tests can drive the filter through the real HTTP path.
pub const SCRIPTED_OUTPUT_ENV: &str = "FLAMINGO_TEST_SCRIPTED_OUTPUT";

impl Session {
    pub fn new(
        rx: UnboundedReceiver<WorkerEvent>,
        tokenizer: Arc<FlamingoTokenizer>,
        filter: ContentFilter,
        stop: Vec<String>,
        deadline: Instant,
    ) -> Self {
        let scripted = std::env::var(SCRIPTED_OUTPUT_ENV).ok().map(|s| {
            let mut words: Vec<String> = s.split_inclusive(' ').map(str::to_string).collect();
            words.reverse();
            words
        });
        Self {
            rx: Some(rx),
            stream_filter: filter.stream(),
            filter,
            tokenizer,
            decoder: IncrementalDecoder::new(),
            stop,
            raw: String::new(),
            released_raw: 0,
            text: String::new(),
            filtered: false,
            tokens: Vec::new(),
            scripted,
            deadline,
            pending_final: None,
            first_token_at: None,
            started_at: None,
        }
    }

    /// The next token or the end; `None` after the end.
    pub async fn next(&mut self) -> Option<Result<Output, ApiError>> {
        if let Some(reason) = self.pending_final.take() {
            return Some(Ok(Output::Done(self.finish_stream(reason))));
        }
        let rx = self.rx.as_mut()?;
        loop {
            let wait = self.deadline.saturating_duration_since(Instant::now());
            let event = match tokio::time::timeout(wait, rx.recv()).await {
                Err(_) => {
                    self.rx = None;
                    return Some(Err(ApiError::new(
                        ErrorKind::Timeout,
                        "the request passed its deadline",
                    )));
                }
                Ok(None) => {
                    self.rx = None;
                    return Some(Err(ApiError::new(
                        ErrorKind::Unavailable,
                        "the model worker stopped",
                    )
                    .retry_after(1)));
                }
                Ok(Some(e)) => e,
            };
            match event {
                WorkerEvent::Started { .. } => self.started_at = Some(Instant::now()),
                WorkerEvent::Token(t) => return Some(Ok(self.on_token(t.id, t.logprob))),
                WorkerEvent::Finished { reason, hypotheses } => {
                    self.rx = None;
                    let reason = match reason {
                        FinishReason::Length => "length",
                        FinishReason::StopToken => "eos_token",
                    };
                    if let Some(best) = hypotheses.into_iter().next() {
                        return Some(Ok(Output::Done(self.finish_beam(best.tokens, reason))));
                    }
                    return Some(Ok(Output::Done(self.finish_stream(reason))));
                }
                WorkerEvent::Error(e) => {
                    self.rx = None;
                    return Some(Err(e));
                }
            }
        }
    }

    fn on_token(&mut self, id: u32, logprob: f32) -> Output {
        self.first_token_at.get_or_insert_with(Instant::now);
        let special = self.tokenizer.is_special(id);
        let piece = match &mut self.scripted {
            Some(words) => match words.pop() {
                Some(w) => w,
                None => {
                    self.pending_final = Some("eos_token");
                    String::new()
                }
            },
            None => self.decoder.push(&self.tokenizer, id).unwrap_or_default(),
        };
        self.raw.push_str(&piece);
        let mut stop_hit = false;
        if let Some(pos) = self
            .stop
            .iter()
            .filter_map(|s| self.raw.find(s.as_str()))
            .min()
        {
            self.raw.truncate(pos.max(self.released_raw));
            stop_hit = true;
        }
        let hold = if stop_hit {
            0
        } else {
            stop_prefix_len(&self.raw, &self.stop)
        };
        let end = (self.raw.len() - hold).max(self.released_raw);
        let releasable = self.raw[self.released_raw..end].to_string();
        self.released_raw = end;
        let chunk = self.stream_filter.push(&releasable);
        self.filtered |= chunk.acted;
        self.text.push_str(&chunk.text);
        let out = TokenOut {
            id,
            text: chunk.text,
            logprob,
            special,
        };
        self.tokens.push(out.clone());
        if chunk.blocked {
            self.pending_final = Some("content_filter");
        } else if stop_hit {
            self.pending_final = Some("stop_sequence");
        }
        if self.pending_final.is_some() {
            // Dropping the receiver makes the worker evict the sequence at its next step.
            self.rx = None;
        }
        Output::Token(out)
    }

    fn finish_stream(&mut self, reason: &'static str) -> Final {
        self.rx = None;
        let mut trailing = String::new();
        if reason != "content_filter" {
            let rest = self.raw[self.released_raw..].to_string();
            self.released_raw = self.raw.len();
            let chunk = self.stream_filter.push(&rest);
            trailing.push_str(&chunk.text);
            let end = self.stream_filter.finish();
            trailing.push_str(&end.text);
            self.filtered |= chunk.acted || end.acted;
            if chunk.blocked || end.blocked {
                return self.final_with("content_filter", String::new(), true);
            }
        } else {
            self.filtered = true;
        }
        self.text.push_str(&trailing);
        self.final_with(reason, trailing, self.filtered)
    }

    fn finish_beam(
        &mut self,
        best: Vec<flamingo_model::engine::GeneratedToken>,
        reason: &'static str,
    ) -> Final {
        let ids: Vec<u32> = best.iter().map(|t| t.id).collect();
        let mut raw = self.tokenizer.decode(&ids, true).unwrap_or_default();
        let mut reason = reason;
        if let Some(pos) = self.stop.iter().filter_map(|s| raw.find(s.as_str())).min() {
            raw.truncate(pos);
            reason = "stop_sequence";
        }
        let checked = self.filter.check(&raw);
        self.tokens = best
            .iter()
            .map(|t| TokenOut {
                id: t.id,
                text: if checked.acted {
                    String::new()
                } else {
                    self.tokenizer.decode(&[t.id], true).unwrap_or_default()
                },
                logprob: t.logprob,
                special: self.tokenizer.is_special(t.id),
            })
            .collect();
        self.text = checked.text.clone();
        let reason = if checked.blocked {
            "content_filter"
        } else {
            reason
        };
        self.final_with(reason, String::new(), checked.acted)
    }

    fn final_with(&mut self, reason: &'static str, trailing: String, filtered: bool) -> Final {
        if filtered {
            metrics::counter!("flamingo_filter_actions_total", "action" => if reason == "content_filter" { "block" } else { "censor" }).increment(1);
        }
        Final {
            generated_text: if reason == "content_filter"
                && self.filter.config().mode == crate::filter::FilterMode::Block
            {
                String::new()
            } else {
                self.text.clone()
            },
            finish_reason: reason,
            generated_tokens: self.tokens.len(),
            tokens: std::mem::take(&mut self.tokens),
            filtered,
            trailing_text: trailing,
        }
    }
}

/// Length of the longest suffix of `text` that starts one of the stop sequences (held back in
/// a stream until we know whether the stop sequence completes).
fn stop_prefix_len(text: &str, stops: &[String]) -> usize {
    let mut best = 0;
    for s in stops {
        for (i, _) in s.char_indices().skip(1) {
            if text.ends_with(&s[..i]) {
                best = best.max(i);
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_back_partial_stop_sequences() {
        let stops = vec!["\nQuestion".to_string()];
        assert_eq!(stop_prefix_len("a cat\nQue", &stops), 4);
        assert_eq!(stop_prefix_len("a cat", &stops), 0);
    }
}
