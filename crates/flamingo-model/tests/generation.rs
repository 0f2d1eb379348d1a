//! Generation against the reference: greedy tokens and per-step logits (KV-cache decode),
//! 3-beam search with length_penalty -2.0, v1 and v2 media rules, and batch invariance.

#[macro_use]
mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::{IndexOp, Tensor};
use common::*;
use flamingo_model::engine::{Engine, Event, GenerationParams, SeqId, SequenceRequest};
use flamingo_model::media::{generated_media_time, prompt_media_time};
use flamingo_model::{LogitsFor, MediaRule, PackedInput};
use serde_json::Value;

/// Real tokens and image latents of each row of a case.
fn requests(f: &Fixture, case: &Value) -> Vec<(Vec<u32>, Option<Tensor>)> {
    let masks = case["attention_mask"].as_array();
    let images = case["images"].as_array().unwrap();
    let prompts: Vec<String> = match &case["prompt"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a.iter().map(|p| p.as_str().unwrap().to_string()).collect(),
        _ => unreachable!(),
    };
    let _ = masks;
    prompts
        .iter()
        .zip(images)
        .map(|(p, imgs)| {
            let tokens = f.tokenizer.encode(p).unwrap();
            let latents = tokens
                .contains(&f.model.image_token_id())
                .then(|| encode_named_images(f, imgs));
            (tokens, latents)
        })
        .collect()
}

fn golden_case<'a>(goldens: &'a Value, name: &str) -> Option<&'a Value> {
    goldens["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
}

type Outputs = HashMap<(String, usize), Vec<Vec<u32>>>;

/// Runs every case's rows through one engine, each joining while earlier ones are decoding,
/// and collects the generated tokens (beam search: every returned hypothesis, best first).
fn run_engine(f: &Fixture, params: &GenerationParams, cases: &[&str], goldens: &Value) -> Outputs {
    let model = Arc::new(
        flamingo_model::Flamingo::load(
            &flamingo_model::ModelPaths::from_dir(&f.dir).unwrap(),
            &flamingo_model::LoadOptions {
                media_rule: Some(f.model.config().media_rule),
                ..Default::default()
            },
        )
        .unwrap(),
    );
    let mut engine = Engine::new(model);
    let mut owner: HashMap<SeqId, (String, usize)> = HashMap::new();
    let mut streamed: HashMap<SeqId, Vec<u32>> = HashMap::new();
    let mut results = Outputs::new();
    let mut drain = |events: Vec<Event>, owner: &HashMap<SeqId, (String, usize)>| {
        for e in events {
            match e {
                Event::Token { seq, token } => streamed.entry(seq).or_default().push(token.id),
                Event::Finished {
                    seq, hypotheses, ..
                } => {
                    let out = if hypotheses.is_empty() {
                        vec![streamed.remove(&seq).unwrap()]
                    } else {
                        hypotheses
                            .iter()
                            .map(|h| h.tokens.iter().map(|t| t.id).collect())
                            .collect()
                    };
                    results.insert(owner[&seq].clone(), out);
                }
            }
        }
    };
    for &name in cases {
        for (row, (tokens, images)) in requests(f, golden_case(goldens, name).unwrap())
            .into_iter()
            .enumerate()
        {
            let id = engine
                .add(SequenceRequest {
                    tokens,
                    images,
                    image_keys: Vec::new(),
                    params: params.clone(),
                })
                .unwrap();
            owner.insert(id, (name.to_string(), row));
            let events = engine.step().unwrap();
            drain(events, &owner);
        }
    }
    while !engine.is_empty() {
        let events = engine.step().unwrap();
        drain(events, &owner);
    }
    results
}

fn greedy_params(f: &Fixture) -> GenerationParams {
    GenerationParams {
        max_new_tokens: 8,
        stop_tokens: vec![f.tokenizer.end_of_chunk_id],
        ..Default::default()
    }
}

fn beam_params(f: &Fixture) -> GenerationParams {
    GenerationParams {
        num_beams: 3,
        length_penalty: -2.0,
        ..greedy_params(f)
    }
}

fn expected_rows(v: &Value) -> Vec<Vec<u32>> {
    v.as_array().unwrap().iter().map(ids).collect()
}

fn check_greedy(dir: &Path, rule: MediaRule) {
    let f = load(dir, rule);
    let v1 = load(dir, MediaRule::NextImage).goldens;
    let out = run_engine(&f, &greedy_params(&f), &CASES, &v1);
    for name in CASES {
        let expected =
            expected_rows(&golden_case(&f.goldens, name).unwrap()["greedy"]["new_token_ids"]);
        for (row, exp) in expected.iter().enumerate() {
            assert_eq!(
                &out[&(name.to_string(), row)][0],
                exp,
                "{rule:?} {name} row {row} greedy tokens"
            );
        }
    }
}

fn check_beams(dir: &Path, rule: MediaRule) {
    let f = load(dir, rule);
    let v1 = load(dir, MediaRule::NextImage).goldens;
    let with_beams: Vec<&str> = CASES
        .iter()
        .copied()
        .filter(|n| golden_case(&f.goldens, n).is_some_and(|c| c.get("beam").is_some()))
        .collect();
    assert!(!with_beams.is_empty());
    let out = run_engine(&f, &beam_params(&f), &with_beams, &v1);
    for name in with_beams {
        let beam = &golden_case(&f.goldens, name).unwrap()["beam"];
        let expected: Vec<Vec<u32>> = match beam["new_token_ids"].as_array().unwrap()[0] {
            Value::Array(ref a) if a.first().is_some_and(Value::is_array) => beam["new_token_ids"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(expected_rows)
                .collect(),
            _ => expected_rows(&beam["new_token_ids"]),
        };
        let per_row = beam["num_return_sequences"].as_u64().unwrap() as usize;
        for (row, exp) in expected.chunks(per_row).enumerate() {
            let ours = &out[&(name.to_string(), row)];
            for (rank, e) in exp.iter().enumerate() {
                // The reference pads finished hypotheses with pad id 0 after the stop token.
                let e: Vec<u32> = trim_after_stop(e, f.tokenizer.end_of_chunk_id);
                assert_eq!(
                    &ours[rank], &e,
                    "{rule:?} {name} row {row} beam rank {rank}"
                );
            }
        }
    }
}

fn trim_after_stop(tokens: &[u32], stop: u32) -> Vec<u32> {
    match tokens.iter().position(|&t| t == stop) {
        Some(i) => tokens[..=i].to_vec(),
        None => tokens.to_vec(),
    }
}

per_fixture!(
    greedy_tokens_match_reference_v1,
    greedy_tokens_match_reference_v2,
    beam_search_matches_reference_v1,
    beam_search_matches_reference_v2,
    kv_cache_decode_logits_match_reference,
);

fn greedy_tokens_match_reference_v1(dir: &Path) {
    check_greedy(dir, MediaRule::NextImage);
}

fn greedy_tokens_match_reference_v2(dir: &Path) {
    check_greedy(dir, MediaRule::PreviousImage);
}

fn beam_search_matches_reference_v1(dir: &Path) {
    check_beams(dir, MediaRule::NextImage);
}

fn beam_search_matches_reference_v2(dir: &Path) {
    check_beams(dir, MediaRule::PreviousImage);
}

/// Each decode step processes one token against the cache; its logits equal the reference's
/// per-step logits.
fn kv_cache_decode_logits_match_reference(dir: &Path) {
    let f = load(dir, MediaRule::NextImage);
    for name in CASES {
        let case = golden_case(&f.goldens, name).unwrap();
        let golden = &f.tensors[&format!("{name}.greedy_step_logits")];
        for (row, (tokens, images)) in requests(&f, case).into_iter().enumerate() {
            let mut state = f.model.new_sequence(images.as_ref()).unwrap();
            let steps = golden.dim(1).unwrap();
            let mut feed = tokens.clone();
            let mut time =
                prompt_media_time(MediaRule::NextImage, &tokens, f.model.image_token_id());
            for step in 0..steps {
                let mut input = [PackedInput {
                    state: &mut state,
                    tokens: &feed,
                    media_time: &time,
                }];
                let logits = f
                    .model
                    .forward(&mut input, LogitsFor::LastToken, None)
                    .unwrap()
                    .i(0)
                    .unwrap();
                let diff = max_abs_diff(&logits, &golden.i((row, step)).unwrap());
                assert!(
                    diff <= 1e-4,
                    "{name} row {row} step {step}: logits differ by {diff}"
                );
                let next = logits.argmax(0).unwrap().to_scalar::<u32>().unwrap();
                feed = vec![next];
                time = vec![generated_media_time(
                    MediaRule::NextImage,
                    next,
                    f.model.image_token_id(),
                    state.num_images(),
                )];
            }
        }
    }
}
