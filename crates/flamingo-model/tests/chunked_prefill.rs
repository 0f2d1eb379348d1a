//! Chunked prefill: a long prompt prefilled over several steps gives exactly the output of a
//! one-step prefill, and decoding rows keep producing a token every step meanwhile.

#[macro_use]
mod common;

use std::path::Path;
use std::sync::Arc;

use candle_core::Tensor;
use common::*;
use flamingo_model::engine::{Engine, Event, GeneratedToken, GenerationParams, SequenceRequest};
use flamingo_model::MediaRule;
use serde_json::Value;

/// Every golden case row: prompt tokens and image latents.
fn rows(f: &Fixture) -> Vec<(Vec<u32>, Option<Tensor>)> {
    let mut out = Vec::new();
    for case in f.goldens["cases"].as_array().unwrap() {
        let prompts: Vec<String> = match &case["prompt"] {
            Value::String(s) => vec![s.clone()],
            Value::Array(a) => a.iter().map(|p| p.as_str().unwrap().to_string()).collect(),
            _ => continue,
        };
        for (p, imgs) in prompts.iter().zip(case["images"].as_array().unwrap()) {
            let tokens = f.tokenizer.encode(p).unwrap();
            let latents = tokens
                .contains(&f.model.image_token_id())
                .then(|| encode_named_images(f, imgs));
            out.push((tokens, latents));
        }
    }
    out
}

fn engine(f: &Fixture, chunk: usize) -> Engine {
    let model = flamingo_model::Flamingo::load(
        &flamingo_model::ModelPaths::from_dir(&f.dir).unwrap(),
        &flamingo_model::LoadOptions {
            media_rule: Some(MediaRule::NextImage),
            ..Default::default()
        },
    )
    .unwrap();
    let mut e = Engine::new(Arc::new(model));
    e.set_prefill_chunk(chunk);
    e
}

fn params(max_new_tokens: usize) -> GenerationParams {
    GenerationParams {
        max_new_tokens,
        ..Default::default()
    }
}

/// Runs all rows together (joining at once) and returns each row's tokens in order of adding.
fn generate(f: &Fixture, chunk: usize) -> Vec<Vec<GeneratedToken>> {
    let mut e = engine(f, chunk);
    let mut ids = Vec::new();
    for (tokens, images) in rows(f) {
        ids.push(
            e.add(SequenceRequest {
                tokens,
                images,
                image_keys: Vec::new(),
                params: params(8),
            })
            .unwrap(),
        );
    }
    let mut out = vec![Vec::new(); ids.len()];
    while !e.is_empty() {
        for ev in e.step().unwrap() {
            if let Event::Token { seq, token } = ev {
                let i = ids.iter().position(|&s| s == seq).unwrap();
                out[i].push(token);
            }
        }
    }
    out
}

fn chunked_prefill_is_bit_identical(dir: &Path) {
    let f = load(dir, MediaRule::NextImage);
    let whole = generate(&f, 0);
    assert!(whole.iter().all(|r| r.len() == 8));
    for chunk in [1, 3, 7] {
        let chunked = generate(&f, chunk);
        for (a, b) in whole.iter().zip(&chunked) {
            let bits = |r: &Vec<GeneratedToken>| -> Vec<(u32, u32)> {
                r.iter().map(|t| (t.id, t.logprob.to_bits())).collect()
            };
            assert_eq!(
                bits(a),
                bits(b),
                "chunk {chunk}: tokens and logprobs differ"
            );
        }
    }
}

fn a_long_prefill_does_not_stall_decoding(dir: &Path) {
    let f = load(dir, MediaRule::NextImage);
    let chunk = 4;
    let mut e = engine(&f, chunk);
    let all = rows(&f);
    let (short, short_images) = all.iter().min_by_key(|(t, _)| t.len()).unwrap().clone();
    let (long, long_images) = all.iter().max_by_key(|(t, _)| t.len()).unwrap().clone();
    assert!(
        long.len() > 3 * chunk,
        "a prompt long enough to need chunks"
    );
    let decoding = e
        .add(SequenceRequest {
            tokens: short,
            images: short_images,
            image_keys: Vec::new(),
            params: params(100),
        })
        .unwrap();
    // Until the short one decodes.
    while !e
        .step()
        .unwrap()
        .iter()
        .any(|ev| matches!(ev, Event::Token { seq, .. } if *seq == decoding))
    {}
    let long_len = long.len();
    let late = e
        .add(SequenceRequest {
            tokens: long,
            images: long_images,
            image_keys: Vec::new(),
            params: params(2),
        })
        .unwrap();
    let mut steps = 0;
    loop {
        assert!(
            e.pending_tokens() <= chunk + 1,
            "a step processes at most the chunk plus one token per decoding row"
        );
        let events = e.step().unwrap();
        steps += 1;
        let short_token = events
            .iter()
            .any(|ev| matches!(ev, Event::Token { seq, .. } if *seq == decoding));
        assert!(
            short_token,
            "the decoding row got its token on step {steps}"
        );
        if events
            .iter()
            .any(|ev| matches!(ev, Event::Token { seq, .. } if *seq == late))
        {
            break;
        }
    }
    assert_eq!(
        steps,
        long_len.div_ceil(chunk),
        "the long prompt took its chunks, in order"
    );
}

per_fixture!(
    chunked_prefill_is_bit_identical,
    a_long_prefill_does_not_stall_decoding
);
