//! A bounded cache of self-attention history at prompt boundaries, so a prompt that repeats an
//! earlier prompt's beginning (the history of a chat, the examples of a few-shot prompt) skips
//! prefilling it.
//!
//! A prefix's history depends on its tokens and, through the gated cross-attention, on the image
//! each of its tokens attends to. The key is both: the token ids and, per token, the caller's key
//! of the image it cross-attends to ([`crate::media::prompt_media_time`]; under the v1 rule a
//! text chunk attends to the *next* image, which may lie beyond the prefix). Equal text with
//! different images never shares. Only the self-attention history is stored: the image
//! keys/values of a sequence always come from its own images.
//!
//! Entries are exact copies of what a cold prefill computed, so a sequence that starts from one
//! computes the same numbers as one that prefills the whole prompt (the CPU kernels compute each
//! row independently of the rows around it).

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use crate::error::Result;
use crate::kv_cache::KvCache;

/// A caller's identity for an image (the server uses the SHA-256 of its bytes).
pub type ImageKey = [u8; 32];

/// Snapshots stored per prompt at most: its longest boundaries not cached yet. The longest
/// serves a later turn of the same chat; the one before it a few-shot prompt with the same
/// examples and a new query (under v1 the last example's text attends to the query image).
pub(crate) const SNAPSHOTS_PER_PROMPT: usize = 2;

/// Counters of a prefix cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrefixStats {
    /// Prompts looked up: those with a boundary before their end and a key for every image.
    pub lookups: u64,
    /// Lookups that found a cached prefix.
    pub hits: u64,
    /// Prompt tokens whose prefill the hits skipped.
    pub tokens_reused: u64,
    /// Snapshots stored.
    pub insertions: u64,
    /// Snapshots dropped to stay within the byte bound.
    pub evictions: u64,
    /// Snapshots held now.
    pub entries: usize,
    /// Bytes they hold.
    pub bytes: usize,
    /// The bound (0 = off).
    pub capacity_bytes: usize,
}

/// What a prompt's tokens see: ids, and per token the image it cross-attends to.
#[derive(Clone, Copy)]
pub(crate) struct PromptKey<'a> {
    pub tokens: &'a [u32],
    /// 1-based image per token (0 = none), as [`crate::media::prompt_media_time`].
    pub media_time: &'a [u32],
    /// One per image, in `<image>` order.
    pub image_keys: &'a [ImageKey],
}

impl PromptKey<'_> {
    fn image(&self, i: usize) -> Option<&ImageKey> {
        match self.media_time[i] as usize {
            0 => None,
            t => Some(&self.image_keys[t - 1]),
        }
    }

    /// Digest of `tokens[..k]` with their images, for each `k` of `ends` (ascending).
    fn digests(&self, ends: &[usize]) -> Vec<u64> {
        let mut h = DefaultHasher::new();
        let mut out = Vec::with_capacity(ends.len());
        let mut i = 0;
        for &k in ends {
            while i < k {
                self.tokens[i].hash(&mut h);
                self.image(i).hash(&mut h);
                i += 1;
            }
            let mut at = h.clone();
            k.hash(&mut at);
            out.push(at.finish());
        }
        out
    }
}

struct Entry {
    tokens: Vec<u32>,
    images: Vec<Option<ImageKey>>,
    kv: Vec<KvCache>,
    bytes: usize,
    last_used: u64,
}

impl Entry {
    /// Exact comparison (the digest only finds the candidate).
    fn matches(&self, key: &PromptKey, k: usize) -> bool {
        self.tokens.len() == k
            && self.tokens[..] == key.tokens[..k]
            && self
                .images
                .iter()
                .enumerate()
                .all(|(i, img)| img.as_ref() == key.image(i))
    }
}

pub(crate) struct PrefixCache {
    capacity: usize,
    entries: HashMap<u64, Entry>,
    clock: u64,
    stats: PrefixStats,
}

impl PrefixCache {
    pub fn new(capacity_bytes: usize) -> Self {
        Self {
            capacity: capacity_bytes,
            entries: HashMap::new(),
            clock: 0,
            stats: PrefixStats {
                capacity_bytes,
                ..Default::default()
            },
        }
    }

    pub fn enabled(&self) -> bool {
        self.capacity > 0
    }

    pub fn stats(&self) -> PrefixStats {
        PrefixStats {
            entries: self.entries.len(),
            ..self.stats
        }
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// The longest of `boundaries` (ascending, each shorter than the prompt) whose prefix is
    /// cached, with a copy of its history; counts the lookup.
    pub fn lookup(
        &mut self,
        key: &PromptKey,
        boundaries: &[usize],
    ) -> Result<Option<(usize, Vec<KvCache>)>> {
        if boundaries.is_empty() {
            return Ok(None);
        }
        self.stats.lookups += 1;
        let digests = key.digests(boundaries);
        let now = self.tick();
        for (&k, d) in boundaries.iter().zip(&digests).rev() {
            if let Some(e) = self.entries.get_mut(d).filter(|e| e.matches(key, k)) {
                e.last_used = now;
                let kv =
                    e.kv.iter()
                        .map(KvCache::deep_copy)
                        .collect::<candle_core::Result<Vec<_>>>()?;
                self.stats.hits += 1;
                self.stats.tokens_reused += k as u64;
                return Ok(Some((k, kv)));
            }
        }
        Ok(None)
    }

    /// Which of `boundaries` (ascending) to snapshot: the longest [`SNAPSHOTS_PER_PROMPT`] not
    /// cached yet (cached ones count as used). Ascending.
    pub fn plan_snapshots(&mut self, key: &PromptKey, boundaries: &[usize]) -> Vec<usize> {
        let digests = key.digests(boundaries);
        let now = self.tick();
        let mut chosen = Vec::new();
        for (&k, d) in boundaries.iter().zip(&digests).rev() {
            if chosen.len() == SNAPSHOTS_PER_PROMPT {
                break;
            }
            match self.entries.get_mut(d).filter(|e| e.matches(key, k)) {
                Some(e) => e.last_used = now,
                None => chosen.push(k),
            }
        }
        chosen.reverse();
        chosen
    }

    /// Stores the history of `key.tokens[..k]` (already cut to `k` positions), evicting the
    /// least recently used snapshots to stay within the bound. A snapshot larger than the whole
    /// bound is not stored.
    pub fn insert(&mut self, key: &PromptKey, k: usize, kv: Vec<KvCache>) {
        let digest = key.digests(&[k])[0];
        let now = self.tick();
        if let Some(e) = self.entries.get_mut(&digest).filter(|e| e.matches(key, k)) {
            // Stored meanwhile by an identical prompt.
            e.last_used = now;
            return;
        }
        let bytes = kv.iter().map(KvCache::bytes).sum::<usize>()
            + k * (std::mem::size_of::<u32>() + std::mem::size_of::<Option<ImageKey>>());
        if bytes > self.capacity {
            return;
        }
        if let Some(old) = self.entries.remove(&digest) {
            // A different prefix with the same digest: the newer one wins.
            self.stats.bytes -= old.bytes;
        }
        while self.stats.bytes + bytes > self.capacity {
            let Some((&oldest, _)) = self.entries.iter().min_by_key(|(_, e)| e.last_used) else {
                break;
            };
            let e = self.entries.remove(&oldest).expect("present");
            self.stats.bytes -= e.bytes;
            self.stats.evictions += 1;
        }
        self.entries.insert(
            digest,
            Entry {
                tokens: key.tokens[..k].to_vec(),
                images: (0..k).map(|i| key.image(i).copied()).collect(),
                kv,
                bytes,
                last_used: now,
            },
        );
        self.stats.bytes += bytes;
        self.stats.insertions += 1;
    }
}

/// Positions just after each `<|endofchunk|>` of the prompt (ascending): where a few-shot
/// example or a chat turn ends, so where later prompts tend to diverge.
pub(crate) fn boundaries(tokens: &[u32], end_of_chunk: u32) -> Vec<usize> {
    tokens
        .iter()
        .enumerate()
        .filter(|&(_, &t)| t == end_of_chunk)
        .map(|(i, _)| i + 1)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key<'a>(tokens: &'a [u32], times: &'a [u32], images: &'a [ImageKey]) -> PromptKey<'a> {
        PromptKey {
            tokens,
            media_time: times,
            image_keys: images,
        }
    }

    #[test]
    fn digests_depend_on_tokens_and_images() {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let tokens = [1, 5, 9, 7];
        let times = [1, 1, 2, 2];
        let d = |imgs: &[ImageKey]| key(&tokens, &times, imgs).digests(&[2, 4]);
        assert_eq!(d(&[a, b]), d(&[a, b]));
        // The first two tokens see image 1 only.
        assert_eq!(d(&[a, b])[0], d(&[a, a])[0]);
        assert_ne!(d(&[a, b])[1], d(&[a, a])[1]);
        assert_ne!(
            key(&[1, 5, 9, 8], &times, &[a, b]).digests(&[4]),
            key(&tokens, &times, &[a, b]).digests(&[4])
        );
        // Same ids, one token that sees no image.
        assert_ne!(
            key(&tokens, &[1, 1, 2, 0], &[a, b]).digests(&[4]),
            key(&tokens, &times, &[a, b]).digests(&[4])
        );
    }

    #[test]
    fn boundaries_follow_end_of_chunk() {
        assert_eq!(boundaries(&[1, 3, 400, 4, 400, 5], 400), vec![3, 5]);
        assert!(boundaries(&[1, 3], 400).is_empty());
    }
}
