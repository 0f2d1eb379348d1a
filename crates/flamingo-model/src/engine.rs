//! Step-by-step generation over a changing set of sequences, for a batching worker: add a
//! sequence, step the whole batch (prefills and decode tokens in one packed forward), remove a
//! sequence. Each sequence keeps its own caches, sampler and stop rules, so its output does not
//! depend on what else is in the batch.

use std::sync::Arc;

use candle_core::{Device, Tensor};

use crate::beam::{top_candidates, BeamHypotheses, Candidate};
use crate::error::{ModelError, Result};
use crate::flamingo::{Flamingo, LogitsFor, PackedInput, SequenceState};
use crate::media::{generated_media_time, prompt_media_time};
use crate::prefix_cache::{boundaries, PrefixCache, PromptKey};
pub use crate::prefix_cache::{ImageKey, PrefixStats};
pub use crate::sampling::TopLogprob;
use crate::sampling::{log_softmax, Sampler, SamplingParams};

pub type SeqId = u64;

#[derive(Debug, Clone, PartialEq)]
pub struct GenerationParams {
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    /// 1 = greedy or sampling; more = beam search (deterministic, no sampling).
    pub num_beams: usize,
    pub length_penalty: f64,
    /// Generation stops after any of these (the reference stops on `<|endofchunk|>`).
    pub stop_tokens: Vec<u32>,
    /// Report this many most likely tokens with each generated token (greedy and sampling;
    /// beam search reports none). 0 costs nothing.
    pub top_n: usize,
}

impl Default for GenerationParams {
    fn default() -> Self {
        Self {
            max_new_tokens: 20,
            sampling: SamplingParams::default(),
            num_beams: 1,
            length_penalty: 1.0,
            stop_tokens: Vec::new(),
            top_n: 0,
        }
    }
}

pub struct SequenceRequest {
    /// Prompt token ids, BOS first.
    pub tokens: Vec<u32>,
    /// Resampled latents of the prompt's images in `<image>` order, [T_img, latents, dim].
    pub images: Option<Tensor>,
    /// One key per image, in order (e.g. the SHA-256 of its bytes): what lets the prefix cache
    /// (see [`Engine::set_prefix_cache`]) tell images apart. Empty: a prompt with images is
    /// neither looked up nor stored.
    pub image_keys: Vec<ImageKey>,
    pub params: GenerationParams,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// `max_new_tokens` reached.
    Length,
    /// A stop token was generated (it is the last token).
    StopToken,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GeneratedToken {
    pub id: u32,
    /// Log-probability under the distribution the token was chosen from (see
    /// [`Sampler::next_with_top`]).
    pub logprob: f32,
    /// The `GenerationParams::top_n` most likely tokens of that same distribution, best first.
    pub top: Vec<TopLogprob>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Hypothesis {
    pub tokens: Vec<GeneratedToken>,
    pub score: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A new token of a greedy/sampled sequence (beam search reports only at the end).
    Token { seq: SeqId, token: GeneratedToken },
    /// The sequence is done and has left the batch. For beam search `hypotheses` holds the
    /// finished beams, best first; otherwise it is empty (the tokens were already reported).
    Finished {
        seq: SeqId,
        reason: FinishReason,
        hypotheses: Vec<Hypothesis>,
    },
}

struct Single {
    state: SequenceState,
    sampler: Sampler,
    generated: Vec<u32>,
}

struct BeamRow {
    state: SequenceState,
    tokens: Vec<u32>,
    logprobs: Vec<f32>,
    score: f32,
}

struct BeamSearch {
    /// Holds the prompt's caches until the first step forks them into beams.
    prompt_state: Option<SequenceState>,
    rows: Vec<BeamRow>,
    hypotheses: BeamHypotheses,
    steps: usize,
}

enum Decoding {
    Single(Box<Single>),
    Beam(Box<BeamSearch>),
}

struct Active {
    id: SeqId,
    prompt: Vec<u32>,
    /// Prompt tokens already in the caches (a long prompt is prefilled in chunks).
    fed: usize,
    prompt_media_time: Vec<u32>,
    num_images: usize,
    params: GenerationParams,
    decoding: Decoding,
    /// Image keys for the prefix cache (empty when it does not apply).
    image_keys: Vec<ImageKey>,
    /// Boundaries (ascending) whose history is stored once the prefill passes them.
    snapshots: Vec<usize>,
}

impl Active {
    fn prefilled(&self) -> bool {
        match &self.decoding {
            Decoding::Single(s) => !s.generated.is_empty(),
            Decoding::Beam(b) => b.prompt_state.is_none(),
        }
    }
}

pub struct Engine {
    model: Arc<Flamingo>,
    active: Vec<Active>,
    next_id: SeqId,
    /// Prompt tokens one step may prefill, over all sequences (0 = no limit).
    prefill_chunk: usize,
    prefix: PrefixCache,
}

/// What one sequence contributes to a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Feed {
    /// Waits for prefill budget; not in this forward.
    Idle,
    /// The next `n` prompt tokens, not the last ones: their logits are not used.
    PromptChunk(usize),
    /// The rest of the prompt (then the first token is chosen), or decoding.
    Complete,
}

impl Engine {
    pub fn new(model: Arc<Flamingo>) -> Self {
        Self {
            model,
            active: Vec::new(),
            next_id: 1,
            prefill_chunk: 0,
            prefix: PrefixCache::new(0),
        }
    }

    /// Keeps up to `bytes` of self-attention history at prompt boundaries (after each
    /// `<|endofchunk|>`) for later prompts that begin the same way, with the same images
    /// (0 = off, the default). Replaces the cache and its counters. Outputs are the same with
    /// or without it.
    pub fn set_prefix_cache(&mut self, bytes: usize) {
        self.prefix = PrefixCache::new(bytes);
    }

    /// The prefix cache's counters.
    pub fn prefix_stats(&self) -> PrefixStats {
        self.prefix.stats()
    }

    /// Bounds the prompt tokens one step prefills (over all sequences; 0 = no bound). Long
    /// prompts are then prefilled over several steps while decoding rows keep producing a token
    /// every step, so one long prompt no longer stalls every stream in the batch. The result
    /// of a sequence does not depend on the chunking.
    pub fn set_prefill_chunk(&mut self, tokens: usize) {
        self.prefill_chunk = tokens;
    }

    /// What each active sequence feeds into the next step, in order.
    fn plan(&self) -> Vec<Feed> {
        let mut budget = if self.prefill_chunk == 0 {
            usize::MAX
        } else {
            self.prefill_chunk
        };
        self.active
            .iter()
            .map(|a| {
                if a.prefilled() {
                    return Feed::Complete;
                }
                let rest = a.prompt.len() - a.fed;
                let take = rest.min(budget);
                budget -= take;
                match take {
                    0 => Feed::Idle,
                    n if n == rest => Feed::Complete,
                    n => Feed::PromptChunk(n),
                }
            })
            .collect()
    }

    pub fn model(&self) -> &Arc<Flamingo> {
        &self.model
    }

    /// Sequences in the batch (a beam search counts once).
    pub fn len(&self) -> usize {
        self.active.len()
    }

    pub fn is_empty(&self) -> bool {
        self.active.is_empty()
    }

    /// Rows the next forward will run (beams count each).
    pub fn rows(&self) -> usize {
        self.active
            .iter()
            .map(|a| match &a.decoding {
                Decoding::Beam(b) if b.prompt_state.is_none() => b.rows.len(),
                _ => 1,
            })
            .sum()
    }

    /// Tokens the next forward will process.
    pub fn pending_tokens(&self) -> usize {
        self.active
            .iter()
            .zip(self.plan())
            .map(|(a, feed)| match feed {
                Feed::Idle => 0,
                Feed::PromptChunk(n) => n,
                Feed::Complete if a.prefilled() => self.rows_of(a),
                Feed::Complete => a.prompt.len() - a.fed,
            })
            .sum()
    }

    /// Prompt tokens not yet prefilled, over all sequences.
    pub fn unprefilled_tokens(&self) -> usize {
        self.active
            .iter()
            .filter(|a| !a.prefilled())
            .map(|a| a.prompt.len() - a.fed)
            .sum()
    }

    fn rows_of(&self, a: &Active) -> usize {
        match &a.decoding {
            Decoding::Beam(b) => b.rows.len().max(1),
            Decoding::Single(_) => 1,
        }
    }

    /// Resamples normalised images (each `3 * S * S` floats, CHW, S = the model's
    /// [`Flamingo::pixel_spec`] size) in one batch; returns one [latents, dim] tensor per image.
    pub fn encode_images(&self, images: &[&[f32]]) -> Result<Vec<Tensor>> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let side = self.model.pixel_spec().size;
        let per_image = 3 * side * side;
        let mut flat = Vec::with_capacity(images.len() * per_image);
        for img in images {
            if img.len() != per_image {
                return Err(ModelError::Input(format!(
                    "an image must have {per_image} values, got {}",
                    img.len()
                )));
            }
            flat.extend_from_slice(img);
        }
        let pixels = Tensor::from_vec(flat, (images.len(), 3, side, side), &Device::Cpu)?;
        let latents = self.model.encode_images(&pixels)?;
        (0..images.len()).map(|i| Ok(latents.get(i)?)).collect()
    }

    /// Checks a request against the model before it is queued.
    pub fn validate(
        &self,
        tokens: &[u32],
        num_images: usize,
        params: &GenerationParams,
    ) -> Result<()> {
        self.model.spec().validate(tokens, num_images, params)
    }

    /// Adds a sequence; its prompt is processed by the next [`Engine::step`].
    pub fn add(&mut self, req: SequenceRequest) -> Result<SeqId> {
        let num_images = match &req.images {
            Some(t) => t.dim(0)?,
            None => 0,
        };
        self.validate(&req.tokens, num_images, &req.params)?;
        let mut state = self.model.new_sequence(req.images.as_ref())?;
        let rule = self.model.config().media_rule;
        let media_time = prompt_media_time(rule, &req.tokens, self.model.image_token_id());
        let (mut fed, mut snapshots, mut image_keys) = (0, Vec::new(), Vec::new());
        if self.prefix.enabled() && (num_images == 0 || req.image_keys.len() == num_images) {
            let key = PromptKey {
                tokens: &req.tokens,
                media_time: &media_time,
                image_keys: &req.image_keys,
            };
            let ends = boundaries(&req.tokens, self.model.end_of_chunk_token_id());
            // The last prompt token is always fed: its logits choose the first token.
            let below: Vec<usize> = ends
                .iter()
                .copied()
                .filter(|&k| k < req.tokens.len())
                .collect();
            if let Some((k, kv)) = self.prefix.lookup(&key, &below)? {
                state.set_history(kv);
                fed = k;
            }
            let later: Vec<usize> = ends.into_iter().filter(|&k| k > fed).collect();
            snapshots = self.prefix.plan_snapshots(&key, &later);
            if !snapshots.is_empty() {
                image_keys = req.image_keys;
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        let decoding = if req.params.num_beams > 1 {
            Decoding::Beam(Box::new(BeamSearch {
                prompt_state: Some(state),
                rows: Vec::new(),
                hypotheses: BeamHypotheses::new(req.params.num_beams, req.params.length_penalty),
                steps: 0,
            }))
        } else {
            Decoding::Single(Box::new(Single {
                state,
                sampler: Sampler::new(req.params.sampling.clone()),
                generated: Vec::new(),
            }))
        };
        self.active.push(Active {
            id,
            prompt_media_time: media_time,
            prompt: req.tokens,
            fed,
            num_images,
            params: req.params,
            decoding,
            image_keys,
            snapshots,
        });
        Ok(id)
    }

    /// Drops a sequence (finished elsewhere, cancelled, client gone). Unknown ids are ignored.
    pub fn remove(&mut self, seq: SeqId) -> bool {
        let before = self.active.len();
        self.active.retain(|a| a.id != seq);
        before != self.active.len()
    }

    pub fn contains(&self, seq: SeqId) -> bool {
        self.active.iter().any(|a| a.id == seq)
    }

    /// One forward over every sequence; returns what happened. Finished sequences leave.
    pub fn step(&mut self) -> Result<Vec<Event>> {
        if self.active.is_empty() {
            return Ok(Vec::new());
        }
        let plan = self.plan();
        // Owned token/media-time lists first, so the packed inputs can borrow them.
        let feeds = self.feeds(&plan);
        let logits = self.forward_feeds(&plan, &feeds)?;
        self.advance(&plan, logits)
    }

    /// What each planned sequence feeds this step: tokens and their media times (a prompt part,
    /// or the last chosen token of the sequence or of each beam).
    fn feeds(&self, plan: &[Feed]) -> Vec<(Vec<u32>, Vec<u32>)> {
        let rule = self.model.config().media_rule;
        let image_token = self.model.image_token_id();
        let mut feeds = Vec::new();
        for (a, feed) in self.active.iter().zip(plan) {
            let prompt_part = |n: usize| {
                let range = a.fed..a.fed + n;
                (
                    a.prompt[range.clone()].to_vec(),
                    a.prompt_media_time[range].to_vec(),
                )
            };
            let last = |tokens: &[u32]| {
                let t = *tokens.last().expect("prefilled sequences have tokens");
                (
                    vec![t],
                    vec![generated_media_time(rule, t, image_token, a.num_images)],
                )
            };
            match &a.decoding {
                _ if *feed == Feed::Idle => {}
                _ if !a.prefilled() => feeds.push(prompt_part(match feed {
                    Feed::PromptChunk(n) => *n,
                    _ => a.prompt.len() - a.fed,
                })),
                Decoding::Single(s) => feeds.push(last(&s.generated)),
                Decoding::Beam(b) => feeds.extend(b.rows.iter().map(|r| last(&r.tokens))),
            }
        }
        feeds
    }

    /// One packed forward over the feeds, each against its row's caches; one logits row per
    /// feed.
    fn forward_feeds(
        &mut self,
        plan: &[Feed],
        feeds: &[(Vec<u32>, Vec<u32>)],
    ) -> Result<Vec<Vec<f32>>> {
        let mut states: Vec<&mut SequenceState> = Vec::with_capacity(feeds.len());
        for (a, feed) in self.active.iter_mut().zip(plan) {
            if *feed == Feed::Idle {
                continue;
            }
            match &mut a.decoding {
                Decoding::Single(s) => states.push(&mut s.state),
                Decoding::Beam(b) => match &mut b.prompt_state {
                    Some(state) => states.push(state),
                    None => states.extend(b.rows.iter_mut().map(|r| &mut r.state)),
                },
            }
        }
        let mut inputs: Vec<PackedInput> = states
            .into_iter()
            .zip(feeds)
            .map(|(state, (tokens, media_time))| PackedInput {
                state,
                tokens,
                media_time,
            })
            .collect();
        Ok(self
            .model
            .forward(&mut inputs, LogitsFor::LastToken, None)?
            .to_vec2::<f32>()?)
    }

    /// Takes each fed sequence one step on: a prompt chunk only moves `fed`; otherwise the next
    /// token is chosen (or the beams advance) and finished sequences leave.
    fn advance(&mut self, plan: &[Feed], logits: Vec<Vec<f32>>) -> Result<Vec<Event>> {
        let mut events = Vec::new();
        let mut rows = logits.into_iter();
        let mut finished = Vec::new();
        for (a, feed) in self.active.iter_mut().zip(plan) {
            match *feed {
                Feed::Idle => continue,
                Feed::PromptChunk(n) => {
                    // Mid-prompt: the caches grew; nothing to choose yet.
                    rows.next().expect("one row per fed sequence");
                    a.fed += n;
                    store_snapshots(&mut self.prefix, a)?;
                    continue;
                }
                Feed::Complete => {
                    a.fed = a.prompt.len();
                    store_snapshots(&mut self.prefix, a)?;
                }
            }
            let end = match &mut a.decoding {
                Decoding::Single(s) => {
                    let row = rows.next().expect("one row per sequence");
                    let token = choose_next(s, &a.prompt, &a.params, &row);
                    let id = token.id;
                    events.push(Event::Token { seq: a.id, token });
                    if a.params.stop_tokens.contains(&id) {
                        Some((FinishReason::StopToken, Vec::new()))
                    } else if s.generated.len() >= a.params.max_new_tokens {
                        Some((FinishReason::Length, Vec::new()))
                    } else {
                        None
                    }
                }
                Decoding::Beam(b) => {
                    let n = if b.prompt_state.is_some() {
                        1
                    } else {
                        b.rows.len()
                    };
                    let logits: Vec<Vec<f32>> = rows.by_ref().take(n).collect();
                    beam_step(b, &logits, a.prompt.len(), &a.params)?
                }
            };
            if let Some((reason, hypotheses)) = end {
                finished.push(a.id);
                events.push(Event::Finished {
                    seq: a.id,
                    reason,
                    hypotheses,
                });
            }
        }
        self.active.retain(|a| !finished.contains(&a.id));
        Ok(events)
    }
}

/// Samples (or picks greedily) a sequence's next token from its logits row and appends it.
fn choose_next(
    s: &mut Single,
    prompt: &[u32],
    params: &GenerationParams,
    row: &[f32],
) -> GeneratedToken {
    // Only the repetition penalty looks at history; don't copy it every step otherwise.
    let penalised = s
        .sampler
        .params()
        .repetition_penalty
        .is_some_and(|p| p != 1.0);
    let seen: Vec<u32> = if penalised {
        prompt.iter().chain(&s.generated).copied().collect()
    } else {
        Vec::new()
    };
    let (id, logprob, top) = s.sampler.next_with_top(row, &seen, params.top_n);
    s.generated.push(id);
    GeneratedToken { id, logprob, top }
}

/// Stores the prefix snapshots the prefill has passed (before the first step moves a beam
/// search's prompt caches into its beams).
fn store_snapshots(cache: &mut PrefixCache, a: &mut Active) -> Result<()> {
    let ready = a.snapshots.iter().take_while(|&&k| k <= a.fed).count();
    if ready == 0 {
        return Ok(());
    }
    let state = match &a.decoding {
        Decoding::Single(s) => Some(&s.state),
        Decoding::Beam(b) => b.prompt_state.as_ref(),
    };
    if let Some(state) = state {
        let key = PromptKey {
            tokens: &a.prompt,
            media_time: &a.prompt_media_time,
            image_keys: &a.image_keys,
        };
        for &k in &a.snapshots[..ready] {
            cache.insert(&key, k, state.history_prefix(k)?);
        }
    }
    a.snapshots.drain(..ready);
    Ok(())
}

/// One step of transformers 4.28 `beam_search` + `BeamSearchScorer.process` for one request.
/// Returns the finish reason and ranked hypotheses once the search is over.
fn beam_step(
    b: &mut BeamSearch,
    logits: &[Vec<f32>],
    prompt_len: usize,
    params: &GenerationParams,
) -> Result<Option<(FinishReason, Vec<Hypothesis>)>> {
    let logprobs: Vec<Vec<f32>> = logits.iter().map(|l| log_softmax(l)).collect();
    // At the first step every beam holds the prompt and all but the first score -1e9, so only
    // the first beam's continuations can win: run it alone.
    let scores: Vec<f32> = if b.rows.is_empty() {
        vec![0.0]
    } else {
        b.rows.iter().map(|r| r.score).collect()
    };
    let candidates = top_candidates(&scores, &logprobs, 2 * params.num_beams);
    let cur_len = prompt_len + b.steps;
    let chosen = choose_beams(b, &candidates, &logprobs, cur_len, params);
    let done = b.hypotheses.is_done(candidates[0].score, cur_len);
    b.rows = next_rows(b, chosen, params.num_beams)?;
    b.steps += 1;
    if !done && b.steps < params.max_new_tokens {
        return Ok(None);
    }
    Ok(Some(finish_search(b, done, prompt_len, params)))
}

/// The best candidates that continue (`num_beams` of them, with their token's log-probability);
/// a candidate ending in a stop token among the first `num_beams` becomes a hypothesis instead.
fn choose_beams(
    b: &mut BeamSearch,
    candidates: &[Candidate],
    logprobs: &[Vec<f32>],
    cur_len: usize,
    params: &GenerationParams,
) -> Vec<(Candidate, f32)> {
    let mut chosen: Vec<(Candidate, f32)> = Vec::with_capacity(params.num_beams);
    for (rank, c) in candidates.iter().enumerate() {
        let token_logprob = logprobs[c.beam][c.token as usize];
        if params.stop_tokens.contains(&c.token) {
            if rank >= params.num_beams {
                continue;
            }
            let (mut tokens, mut lps) = match b.rows.get(c.beam) {
                Some(r) => (r.tokens.clone(), r.logprobs.clone()),
                None => (Vec::new(), Vec::new()),
            };
            tokens.push(c.token);
            lps.push(token_logprob);
            b.hypotheses.add(tokens, lps, c.score, cur_len);
        } else {
            chosen.push((*c, token_logprob));
            if chosen.len() == params.num_beams {
                break;
            }
        }
    }
    chosen
}

/// The beams after this step: a parent's caches move to its last child and are copied for the
/// others (at the first step the prompt's caches are the only parent).
fn next_rows(
    b: &mut BeamSearch,
    chosen: Vec<(Candidate, f32)>,
    num_beams: usize,
) -> Result<Vec<BeamRow>> {
    let mut parents: Vec<Option<BeamRow>> = match b.prompt_state.take() {
        Some(state) => vec![Some(BeamRow {
            state,
            tokens: Vec::new(),
            logprobs: Vec::new(),
            score: 0.0,
        })],
        None => std::mem::take(&mut b.rows).into_iter().map(Some).collect(),
    };
    let mut uses = vec![0usize; parents.len()];
    chosen.iter().for_each(|(c, _)| uses[c.beam] += 1);
    let mut rows = Vec::with_capacity(num_beams);
    for (c, token_logprob) in chosen {
        uses[c.beam] -= 1;
        let mut row = if uses[c.beam] == 0 {
            parents[c.beam]
                .take()
                .expect("parent used once more than counted")
        } else {
            let p = parents[c.beam].as_ref().expect("parent present");
            BeamRow {
                state: p.state.fork()?,
                tokens: p.tokens.clone(),
                logprobs: p.logprobs.clone(),
                score: p.score,
            }
        };
        row.tokens.push(c.token);
        row.logprobs.push(token_logprob);
        row.score = c.score;
        rows.push(row);
    }
    Ok(rows)
}

/// The search's end: the hypotheses ranked (the running beams join them when the search ran
/// out of steps rather than being done), and why it ended.
fn finish_search(
    b: &mut BeamSearch,
    done: bool,
    prompt_len: usize,
    params: &GenerationParams,
) -> (FinishReason, Vec<Hypothesis>) {
    let mut hyps = std::mem::replace(
        &mut b.hypotheses,
        BeamHypotheses::new(params.num_beams, params.length_penalty),
    );
    if !done {
        for r in &b.rows {
            hyps.add(
                r.tokens.clone(),
                r.logprobs.clone(),
                r.score,
                prompt_len + b.steps,
            );
        }
    }
    let ranked: Vec<Hypothesis> = hyps
        .into_ranked()
        .into_iter()
        .map(|(score, tokens, lps)| Hypothesis {
            tokens: tokens
                .into_iter()
                .zip(lps)
                .map(|(id, logprob)| GeneratedToken {
                    id,
                    logprob,
                    top: Vec::new(),
                })
                .collect(),
            score,
        })
        .collect();
    let reason = match ranked.first().and_then(|h| h.tokens.last()) {
        Some(t) if params.stop_tokens.contains(&t.id) => FinishReason::StopToken,
        _ => FinishReason::Length,
    };
    (reason, ranked)
}
