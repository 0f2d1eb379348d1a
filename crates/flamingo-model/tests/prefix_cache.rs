//! Prefix cache: prompts that begin like an earlier one (same tokens, same images seen by every
//! token) start from its stored history and produce exactly what a cold prefill produces; equal
//! text with other images never shares; the byte bound holds, least recently used first out.

#[macro_use]
mod common;

use std::path::Path;
use std::sync::Arc;

use candle_core::Tensor;
use common::*;
use flamingo_model::engine::{
    Engine, Event, GenerationParams, ImageKey, PrefixStats, SequenceRequest,
};
use flamingo_model::MediaRule;
use serde_json::json;

const SHOTS: &str = "<image>Output:A red and green gradient.<|endofchunk|><image>Output:A checker board.<|endofchunk|>";

fn engine(f: &Fixture, rule: MediaRule, cache_bytes: usize, chunk: usize) -> Engine {
    let model = flamingo_model::Flamingo::load(
        &flamingo_model::ModelPaths::from_dir(&f.dir).unwrap(),
        &flamingo_model::LoadOptions {
            media_rule: Some(rule),
            ..Default::default()
        },
    )
    .unwrap();
    let mut e = Engine::new(Arc::new(model));
    e.set_prefix_cache(cache_bytes);
    e.set_prefill_chunk(chunk);
    e
}

fn image_key(name: &str) -> ImageKey {
    let mut k = [0u8; 32];
    k[..name.len()].copy_from_slice(name.as_bytes());
    k
}

struct Prompt {
    tokens: Vec<u32>,
    images: Option<Tensor>,
    keys: Vec<ImageKey>,
}

fn prompt(f: &Fixture, text: &str, images: &[&str]) -> Prompt {
    let tokens = f.tokenizer.encode(text).unwrap();
    Prompt {
        tokens,
        images: (!images.is_empty()).then(|| encode_named_images(f, &json!(images))),
        keys: images.iter().map(|n| image_key(n)).collect(),
    }
}

/// Positions just after each `<|endofchunk|>`.
fn boundaries(f: &Fixture, p: &Prompt) -> Vec<usize> {
    let eoc = f.model.end_of_chunk_token_id();
    (0..p.tokens.len())
        .filter(|&i| p.tokens[i] == eoc)
        .map(|i| i + 1)
        .collect()
}

/// Greedy (or beam) output of one request run alone: (token, logprob bits) of the best
/// hypothesis.
fn run(e: &mut Engine, p: &Prompt, keys: bool, num_beams: usize) -> Vec<(u32, u32)> {
    let seq = e
        .add(SequenceRequest {
            tokens: p.tokens.clone(),
            images: p.images.clone(),
            image_keys: if keys { p.keys.clone() } else { Vec::new() },
            params: GenerationParams {
                max_new_tokens: 6,
                num_beams,
                ..Default::default()
            },
        })
        .unwrap();
    let mut out = Vec::new();
    while e.contains(seq) {
        for ev in e.step().unwrap() {
            match ev {
                Event::Token { token, .. } => out.push((token.id, token.logprob.to_bits())),
                Event::Finished { hypotheses, .. } => {
                    if let Some(h) = hypotheses.first() {
                        out = h
                            .tokens
                            .iter()
                            .map(|t| (t.id, t.logprob.to_bits()))
                            .collect();
                    }
                }
            }
        }
    }
    assert!(!out.is_empty());
    out
}

fn stats_delta(after: PrefixStats, before: PrefixStats) -> (u64, u64, u64) {
    (
        after.lookups - before.lookups,
        after.hits - before.hits,
        after.tokens_reused - before.tokens_reused,
    )
}

fn repeated_few_shot_is_bit_identical(dir: &Path) {
    for rule in [MediaRule::NextImage, MediaRule::PreviousImage] {
        let f = load(dir, rule);
        let query = format!("{SHOTS}<image>Output:");
        let cold = prompt(&f, &query, &["gradient", "checker", "stripes"]);
        // The same examples, another question about the same query image.
        let other_question = prompt(
            &f,
            &format!("{SHOTS}<image>Question:What is it? Short Answer:"),
            &["gradient", "checker", "stripes"],
        );
        // The same examples, another query image.
        let other_image = prompt(&f, &query, &["gradient", "checker", "rings"]);
        let b = boundaries(&f, &cold);
        assert_eq!(b.len(), 2);
        let (first, both) = (b[0], b[1]);
        // Under v1 the second example's text attends to the query image: with another query
        // image only the first example is shared. Under v2 it attends to its own image.
        let other_image_reuse = match rule {
            MediaRule::NextImage => first,
            MediaRule::PreviousImage => both,
        };
        let mut reference = engine(&f, rule, 0, 0);
        for chunk in [0, 5] {
            let mut e = engine(&f, rule, 64 << 20, chunk);
            let cases = [
                (&cold, 0),
                (&cold, both),
                (&other_question, both),
                (&other_image, other_image_reuse),
            ];
            for (i, (p, reuse)) in cases.into_iter().enumerate() {
                let before = e.prefix_stats();
                let got = run(&mut e, p, true, 1);
                let (lookups, hits, reused) = stats_delta(e.prefix_stats(), before);
                assert_eq!(
                    got,
                    run(&mut reference, p, true, 1),
                    "{rule:?} chunk {chunk} request {i}: tokens and logprobs differ from a cold prefill"
                );
                assert_eq!(lookups, 1, "request {i}");
                assert_eq!(
                    (hits, reused),
                    ((reuse > 0) as u64, reuse as u64),
                    "{rule:?} request {i}: reused prefix"
                );
            }
            // Beam search starts from the cache too.
            let before = e.prefix_stats();
            assert_eq!(
                run(&mut e, &other_question, true, 3),
                run(&mut reference, &other_question, true, 3)
            );
            assert_eq!(stats_delta(e.prefix_stats(), before), (1, 1, both as u64));
            let s = e.prefix_stats();
            assert!(s.entries >= 2 && s.bytes > 0 && s.bytes <= s.capacity_bytes);
            assert_eq!(s.evictions, 0);
        }
        assert_eq!(reference.prefix_stats(), PrefixStats::default());
    }
}

fn same_text_other_images_do_not_share(dir: &Path) {
    for rule in [MediaRule::NextImage, MediaRule::PreviousImage] {
        let f = load(dir, rule);
        let query = format!("{SHOTS}<image>Output:");
        let seen = prompt(&f, &query, &["gradient", "checker", "stripes"]);
        let first = boundaries(&f, &seen)[0];
        let mut reference = engine(&f, rule, 0, 0);
        let mut e = engine(&f, rule, 64 << 20, 0);
        run(&mut e, &seen, true, 1);
        // Another first image: every token of every prefix sees something else.
        let other_first = prompt(&f, &query, &["rings", "checker", "stripes"]);
        // Another second image: under v1 the first example's caption attends to it, so even
        // the first example's prefix differs; under v2 that prefix is the same.
        let other_second = prompt(&f, &query, &["gradient", "rings", "stripes"]);
        let second_reuse = match rule {
            MediaRule::NextImage => 0,
            MediaRule::PreviousImage => first,
        };
        for (p, reuse) in [(&other_first, 0), (&other_second, second_reuse)] {
            let before = e.prefix_stats();
            assert_eq!(run(&mut e, p, true, 1), run(&mut reference, p, true, 1));
            assert_eq!(
                stats_delta(e.prefix_stats(), before),
                (1, (reuse > 0) as u64, reuse as u64),
                "{rule:?}"
            );
        }
        // Without keys for its images a prompt is neither looked up nor stored.
        let before = e.prefix_stats();
        assert_eq!(
            run(&mut e, &seen, false, 1),
            run(&mut reference, &seen, true, 1)
        );
        let after = e.prefix_stats();
        assert_eq!(stats_delta(after, before), (0, 0, 0));
        assert_eq!(after.insertions, before.insertions);
    }
}

fn eviction_keeps_the_byte_bound(dir: &Path) {
    let f = load(dir, MediaRule::NextImage);
    let texts = [
        "Question:Is it red? Answer:yes<|endofchunk|>Question:Is it blue? Answer:",
        "Question:Is it a cat? Answer:no<|endofchunk|>Question:Is it a dog? Answer:",
        "Question:How many? Answer:two<|endofchunk|>Question:Which one? Answer:",
    ];
    let prompts: Vec<Prompt> = texts.iter().map(|t| prompt(&f, t, &[])).collect();
    // Each prompt stores one snapshot; measure each alone.
    let sizes: Vec<usize> = prompts
        .iter()
        .map(|p| {
            let mut e = engine(&f, MediaRule::NextImage, 64 << 20, 0);
            run(&mut e, p, true, 1);
            let s = e.prefix_stats();
            assert_eq!((s.entries, s.insertions), (1, 1));
            s.bytes
        })
        .collect();
    // Room for any two, not three.
    let capacity = (0..3)
        .map(|i| sizes.iter().sum::<usize>() - sizes[i])
        .max()
        .unwrap();
    let mut reference = engine(&f, MediaRule::NextImage, 0, 0);
    let expected: Vec<_> = prompts
        .iter()
        .map(|p| run(&mut reference, p, true, 1))
        .collect();
    let mut e = engine(&f, MediaRule::NextImage, capacity, 0);
    // 0, 1, 0 (hit: 0 is now the most recent), 2 (evicts 1), 0 (hit), 1 (miss: evicted).
    let mut hits = Vec::new();
    for i in [0, 1, 0, 2, 0, 1] {
        let before = e.prefix_stats();
        assert_eq!(run(&mut e, &prompts[i], true, 1), expected[i]);
        let after = e.prefix_stats();
        hits.push(after.hits - before.hits);
        assert!(after.bytes <= capacity, "{} > {capacity}", after.bytes);
        assert!(after.entries <= 2);
    }
    assert_eq!(hits, vec![0, 0, 1, 0, 1, 0]);
    assert_eq!(e.prefix_stats().evictions, 2);
    // A snapshot larger than the whole bound is not stored.
    let mut tiny = engine(&f, MediaRule::NextImage, sizes[0] - 1, 0);
    run(&mut tiny, &prompts[0], true, 1);
    run(&mut tiny, &prompts[0], true, 1);
    let s = tiny.prefix_stats();
    assert_eq!((s.insertions, s.hits, s.bytes), (0, 0, 0));
}

per_fixture!(
    repeated_few_shot_is_bit_identical,
    same_text_other_images_do_not_share,
    eviction_keeps_the_byte_bound,
);
