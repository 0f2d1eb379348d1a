//! The one gate every piece of generated content passes before a client sees it: token ids,
//! their text, log-probabilities, stop-sequence matches and the finish reason are released
//! together, after the content filter.
//!
//! Order of the stages, per generated token:
//! 1. detokenize (special tokens add no text);
//! 2. the streaming content filter, which may hold text back while a word is in flight;
//! 3. stop sequences, matched on the *filtered* text (matching the raw text would let `stop`
//!    probe for a masked word), holding back a possible stop prefix;
//! 4. release: a token leaves only once all of its text has passed both stages. A token whose
//!    text the filter masked (or that was released in the same filter chunk as a mask) leaves
//!    redacted: the tokenizer's unknown id, log-probability 0, the masked text. A blocked
//!    output leaves no tokens at all.
//!
//! Each token's most likely alternatives (`top_n_tokens`, `top_logprobs`) travel with it and
//! leave with it: empty when the token is redacted, and each alternative whose own text the
//! filter would change is redacted the same way (unknown id, log-probability 0, masked text).

use std::collections::VecDeque;
use std::sync::Arc;

use flamingo_model::engine::GeneratedToken;
use flamingo_model::tokenizer::{FlamingoTokenizer, IncrementalDecoder};
use serde::Serialize;

use crate::filter::{ContentFilter, StreamFilter};

/// A generated token as the client sees it.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
#[schema(as = Token)]
pub struct TokenOut {
    pub id: u32,
    /// The text this token released after filtering and stop-sequence handling; may be empty
    /// (its text left with a later token of the same release).
    pub text: String,
    pub logprob: f32,
    pub special: bool,
    /// The step's most likely tokens (as many as requested), best first; empty when none were
    /// requested or the token was redacted. Serialised by the routes in their own shape.
    #[serde(skip)]
    pub top_tokens: Vec<TopToken>,
}

/// One alternative of a step: TGI's token shape. `text` is the token's own text (its
/// vocabulary piece with `▁` as a space; special tokens as their piece), not filtered context.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct TopToken {
    pub id: u32,
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

/// What one generated token let out: the tokens now released (possibly none, possibly several
/// held earlier) and, at the end, why generation ended.
#[derive(Debug, Default)]
pub struct Release {
    pub tokens: Vec<TokenOut>,
    pub finish: Option<Finish>,
}

/// Tokens that cleared the filter together, with the end of their text in `OutputGate::text`.
struct Group {
    tokens: Vec<GeneratedToken>,
    text_end: usize,
    masked: bool,
}

pub struct OutputGate {
    tokenizer: Arc<FlamingoTokenizer>,
    decoder: IncrementalDecoder,
    filter: StreamFilter,
    /// Checks each alternative's text on its own.
    words: ContentFilter,
    stop: Vec<String>,
    /// Raw (unfiltered) text bytes fed to the filter so far.
    raw_len: usize,
    /// Tokens whose text the filter has not released yet, with the end of their raw text.
    unfiltered: VecDeque<(GeneratedToken, usize)>,
    /// A mask that may touch a token still in `unfiltered`.
    mask_pending: bool,
    /// Filtered text so far (stop sequences are looked for here).
    text: String,
    /// Groups waiting for the stop-sequence stage.
    groups: VecDeque<Group>,
    /// Bytes of `text` released to the client.
    released: usize,
    /// The filter changed the text.
    pub filtered: bool,
    done: bool,
    unk_id: u32,
}

impl OutputGate {
    pub fn new(
        tokenizer: Arc<FlamingoTokenizer>,
        filter: &ContentFilter,
        stop: Vec<String>,
    ) -> Self {
        Self {
            unk_id: tokenizer.unk_id(),
            tokenizer,
            decoder: IncrementalDecoder::new(),
            filter: filter.stream(),
            words: filter.clone(),
            stop,
            raw_len: 0,
            unfiltered: VecDeque::new(),
            mask_pending: false,
            text: String::new(),
            groups: VecDeque::new(),
            released: 0,
            filtered: false,
            done: false,
        }
    }

    /// The filtered text released so far.
    pub fn released_text(&self) -> &str {
        &self.text[..self.released]
    }

    /// Feeds one generated token; `end` is set when the engine ends the sequence with it.
    pub fn push(&mut self, token: GeneratedToken, end: Option<Finish>) -> Release {
        if self.done {
            return Release::default();
        }
        let mut piece = if self.tokenizer.is_special(token.id) {
            String::new()
        } else {
            self.decoder
                .push(&self.tokenizer, token.id)
                .unwrap_or_default()
        };
        if end.is_some() {
            piece.push_str(&self.decoder.finish(&self.tokenizer).unwrap_or_default());
        }
        self.raw_len += piece.len();
        self.unfiltered.push_back((token, self.raw_len));

        let mut chunk = self.filter.push(&piece);
        if end.is_some() && !chunk.blocked {
            let rest = self.filter.finish();
            chunk.text.push_str(&rest.text);
            chunk.acted |= rest.acted;
            chunk.blocked |= rest.blocked;
            chunk.masked |= rest.masked;
            chunk.released_input = rest.released_input;
        }
        self.filtered |= chunk.acted;
        if chunk.blocked {
            // Withheld whole: no text, no ids.
            self.done = true;
            self.released = 0;
            self.text.clear();
            return Release {
                tokens: Vec::new(),
                finish: Some(Finish::ContentFilter),
            };
        }
        self.text.push_str(&chunk.text);
        self.mask_pending |= chunk.masked;
        let mut cleared = Vec::new();
        let mut cleared_raw_end = None;
        while let Some(&(_, raw_end)) = self.unfiltered.front() {
            if raw_end > chunk.released_input && end.is_none() {
                break;
            }
            cleared.push(self.unfiltered.pop_front().expect("front exists").0);
            cleared_raw_end = Some(raw_end);
        }
        if let Some(cleared_raw_end) = cleared_raw_end {
            self.groups.push_back(Group {
                tokens: cleared,
                text_end: self.text.len(),
                masked: self.mask_pending,
            });
            // Released text beyond the cleared tokens belongs to the next, still held token,
            // which may then carry part of the mask.
            self.mask_pending &= chunk.released_input > cleared_raw_end;
        }

        let searched_from = self.released;
        if let Some(cut) = first_stop(&self.text, &self.stop, searched_from) {
            self.text.truncate(cut);
            return self.release_until(cut, Some(Finish::StopSequence));
        }
        if end.is_some() {
            let all = self.text.len();
            return self.release_until(all, end);
        }
        let hold = stop_prefix_len(&self.text, &self.stop);
        let until = self.text.len() - hold;
        self.release_until(until, None)
    }

    /// Releases the groups whose text ends at or before `until` (every group that cleared the
    /// filter when `finish` is set: their ids are safe, and their text is cut at `until`).
    fn release_until(&mut self, until: usize, finish: Option<Finish>) -> Release {
        let mut tokens = Vec::new();
        let mut start = self.released;
        while let Some(group) = self.groups.front() {
            if group.text_end > until && finish.is_none() {
                break;
            }
            let group = self.groups.pop_front().expect("front exists");
            let text_end = group.text_end.min(until);
            let text = self.text[start.min(text_end)..text_end].to_string();
            let last = group.tokens.len().saturating_sub(1);
            for (i, t) in group.tokens.into_iter().enumerate() {
                let text = if i == last {
                    text.clone()
                } else {
                    String::new()
                };
                tokens.push(if group.masked {
                    TokenOut {
                        id: self.unk_id,
                        text,
                        logprob: 0.0,
                        special: false,
                        top_tokens: Vec::new(),
                    }
                } else {
                    TokenOut {
                        id: t.id,
                        text,
                        logprob: t.logprob,
                        special: self.tokenizer.is_special(t.id),
                        top_tokens: t
                            .top
                            .iter()
                            .map(|a| self.alternative(a.id, a.logprob))
                            .collect(),
                    }
                });
            }
            start = start.max(text_end);
        }
        self.released = start;
        if finish.is_some() {
            // Tokens the filter still held never leave.
            self.done = true;
            self.unfiltered.clear();
        }
        Release { tokens, finish }
    }
}

impl OutputGate {
    /// An alternative token as it may leave: its own text, redacted if the filter would change it.
    fn alternative(&self, id: u32, logprob: f32) -> TopToken {
        let tok = &self.tokenizer;
        let special = tok.is_special(id);
        let piece = tok.token_piece(id);
        let text = if special {
            piece
        } else if piece.starts_with("<0x") {
            tok.decode(&[id], false).unwrap_or_default()
        } else {
            piece.replace('\u{2581}', " ")
        };
        if special {
            return TopToken {
                id,
                text,
                logprob,
                special,
            };
        }
        let checked = self.words.check(&text);
        if checked.acted {
            TopToken {
                id: self.unk_id,
                text: checked.text,
                logprob: 0.0,
                special: false,
            }
        } else {
            TopToken {
                id,
                text,
                logprob,
                special,
            }
        }
    }
}

/// Byte offset of the earliest stop sequence in `text`. Only matches that end after `released`
/// are new; anything earlier was already ruled out (it would have stopped the text then).
pub fn first_stop(text: &str, stops: &[String], released: usize) -> Option<usize> {
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
pub fn stop_prefix_len(text: &str, stops: &[String]) -> usize {
    stops
        .iter()
        .flat_map(|s| s.char_indices().skip(1).map(move |(i, _)| &s[..i]))
        .filter(|prefix| text.ends_with(prefix))
        .map(str::len)
        .max()
        .unwrap_or(0)
}
