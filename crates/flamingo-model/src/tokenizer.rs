//! The LLaMA tokenizer with OpenFlamingo's added tokens (docs/architecture.md §8):
//! `<|endofchunk|>`, `<image>`, `<PAD>` appended to the base vocabulary as special,
//! non-normalised tokens; BOS prepended.

use std::path::Path;

use tokenizers::{AddedToken, Tokenizer};

use crate::error::{ModelError, Result};

pub const END_OF_CHUNK: &str = "<|endofchunk|>";
pub const IMAGE: &str = "<image>";
pub const PAD: &str = "<PAD>";

pub struct FlamingoTokenizer {
    inner: Tokenizer,
    pub end_of_chunk_id: u32,
    pub image_id: u32,
    pub pad_id: u32,
    pub bos_id: u32,
    pub eos_id: u32,
}

fn err(e: impl std::fmt::Display) -> ModelError {
    ModelError::Tokenizer(e.to_string())
}

impl FlamingoTokenizer {
    pub fn from_file(path: &Path) -> Result<Self> {
        let mut inner =
            Tokenizer::from_file(path).map_err(|e| err(format!("{}: {e}", path.display())))?;
        // Same order as the reference: the two "additional special tokens", then the pad token.
        for token in [END_OF_CHUNK, IMAGE, PAD] {
            if inner.token_to_id(token).is_none() {
                inner
                    .add_special_tokens([AddedToken::from(token, true).normalized(false)])
                    .map_err(err)?;
            }
        }
        let id = |t: &str| {
            inner
                .token_to_id(t)
                .ok_or_else(|| err(format!("no `{t}` token")))
        };
        Ok(Self {
            end_of_chunk_id: id(END_OF_CHUNK)?,
            image_id: id(IMAGE)?,
            pad_id: id(PAD)?,
            bos_id: id("<s>")?,
            eos_id: id("</s>")?,
            inner,
        })
    }

    /// Token ids of a prompt, BOS first.
    pub fn encode(&self, prompt: &str) -> Result<Vec<u32>> {
        Ok(self
            .inner
            .encode(prompt, true)
            .map_err(err)?
            .get_ids()
            .to_vec())
    }

    /// Token ids of a text with each token's byte range in it (`(0, 0)` for added `<s>`).
    pub fn encode_with_offsets(
        &self,
        text: &str,
        add_special_tokens: bool,
    ) -> Result<Vec<(u32, (usize, usize))>> {
        let e = self.inner.encode(text, add_special_tokens).map_err(err)?;
        Ok(e.get_ids()
            .iter()
            .copied()
            .zip(e.get_offsets().iter().copied())
            .collect())
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner.decode(ids, skip_special).map_err(err)
    }

    /// The vocabulary piece of a token (e.g. `▁cat`), empty if unknown.
    pub fn token_piece(&self, id: u32) -> String {
        self.inner.id_to_token(id).unwrap_or_default()
    }

    pub fn is_special(&self, id: u32) -> bool {
        id == self.bos_id
            || id == self.eos_id
            || id == self.end_of_chunk_id
            || id == self.image_id
            || id == self.pad_id
            || self.inner.id_to_token(id).is_some_and(|t| t == "<unk>")
    }

    /// `<unk>`'s id: what a redacted token is reported as (0 when the vocabulary lacks it).
    pub fn unk_id(&self) -> u32 {
        self.inner.token_to_id("<unk>").unwrap_or(0)
    }

    /// The most input bytes one token can stand for: the longest vocabulary piece (pieces spell
    /// their text with `▁` for a space and `<0x..>` for a byte, never shorter than the text),
    /// so `max_tokens * max_piece_bytes()` bounds the text that can fit in `max_tokens`.
    pub fn max_piece_bytes(&self) -> usize {
        self.inner
            .get_vocab(true)
            .keys()
            .map(String::len)
            .max()
            .unwrap_or(1)
            .max(1)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Left-pads a batch with `<PAD>`; returns ids and attention masks.
    pub fn left_pad(&self, batch: &[Vec<u32>]) -> (Vec<Vec<u32>>, Vec<Vec<u32>>) {
        let width = batch.iter().map(Vec::len).max().unwrap_or(0);
        batch
            .iter()
            .map(|ids| {
                let pad = width - ids.len();
                let mut padded = vec![self.pad_id; pad];
                padded.extend_from_slice(ids);
                let mut mask = vec![0; pad];
                mask.extend(std::iter::repeat_n(1, ids.len()));
                (padded, mask)
            })
            .unzip()
    }
}

/// Turns a token stream into text pieces without splitting multi-byte characters or losing the
/// leading-space rules of SentencePiece (decode a window, emit what it added).
#[derive(Debug, Default, Clone)]
pub struct IncrementalDecoder {
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
}

impl IncrementalDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Text newly completed by `id` (possibly empty while a character is incomplete).
    pub fn push(&mut self, tok: &FlamingoTokenizer, id: u32) -> Result<String> {
        self.ids.push(id);
        let prefix = tok.decode(&self.ids[self.prefix_offset..self.read_offset], true)?;
        let full = tok.decode(&self.ids[self.prefix_offset..], true)?;
        if full.len() > prefix.len() && !full.ends_with('\u{fffd}') && full.starts_with(&prefix) {
            let text = full[prefix.len()..].to_string();
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
            Ok(text)
        } else {
            Ok(String::new())
        }
    }

    /// Whatever is still pending at the end (e.g. an incomplete byte sequence).
    pub fn finish(&mut self, tok: &FlamingoTokenizer) -> Result<String> {
        let prefix = tok.decode(&self.ids[self.prefix_offset..self.read_offset], true)?;
        let full = tok.decode(&self.ids[self.prefix_offset..], true)?;
        let rest = match full.strip_prefix(prefix.as_str()) {
            Some(rest) => rest.to_string(),
            // Invalid byte sequences decode differently in and out of context; what was never
            // released is then the decoding of the unreleased ids themselves.
            None => self.decode_unreleased(tok)?,
        };
        self.prefix_offset = self.ids.len();
        self.read_offset = self.ids.len();
        Ok(rest)
    }

    fn decode_unreleased(&self, tok: &FlamingoTokenizer) -> Result<String> {
        tok.decode(&self.ids[self.read_offset..], true)
    }
}
