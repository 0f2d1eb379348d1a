//! The model against the reference's outputs on each tiny fixture (f32, ≤ 1e-4).

#[macro_use]
mod common;

use std::path::Path;

use candle_core::{IndexOp, Tensor};
use common::*;
use flamingo_model::media::prompt_media_time;
use flamingo_model::{LogitsFor, MediaRule, PackedInput, Trace};

const TOL: f32 = 1e-4;

per_fixture!(
    vision_tokens_match,
    images_encoded_together_equal_images_encoded_alone,
    tokenizer_matches_reference_ids,
    media_times_match_reference,
    forward_matches_reference_v1,
);

fn vision_tokens_match(dir: &Path) {
    let f = load(dir, MediaRule::NextImage);
    for name in ["gradient", "checker", "stripes", "rings"] {
        let ours = f
            .model
            .vision_tokens(&f.reference_pixels(name))
            .unwrap()
            .squeeze(0)
            .unwrap();
        let diff = max_abs_diff(&ours, &f.tensors[&format!("vision_tokens.{name}")]);
        assert!(diff <= TOL, "{name}: vision tokens differ by {diff}");
    }
}

/// Encoding several images in one call (side by side on the pool's threads, the rest split over
/// them) gives each image the same bits as encoding it alone.
fn images_encoded_together_equal_images_encoded_alone(dir: &Path) {
    let f = load(dir, MediaRule::NextImage);
    let names = ["gradient", "checker", "stripes", "rings", "gradient"];
    let pixels: Vec<Tensor> = names.iter().map(|n| f.reference_pixels(n)).collect();
    let together = f
        .model
        .encode_images(&Tensor::cat(&pixels, 0).unwrap())
        .unwrap();
    for (i, (name, px)) in names.iter().zip(&pixels).enumerate() {
        let alone = f.model.encode_images(px).unwrap().squeeze(0).unwrap();
        let diff = max_abs_diff(&together.get(i).unwrap(), &alone);
        assert_eq!(
            diff, 0.0,
            "{name} (image {i}) differs by {diff} when encoded with others"
        );
    }
}

/// Per row of a case: its real tokens and the resampled latents of its images.
fn rows(f: &Fixture, case: &serde_json::Value) -> Vec<(Vec<u32>, Option<Tensor>)> {
    let all_ids = case["input_ids"].as_array().unwrap();
    let masks = case["attention_mask"].as_array().unwrap();
    let images = case["images"].as_array().unwrap();
    all_ids
        .iter()
        .zip(masks)
        .zip(images)
        .map(|((ids_row, mask), imgs)| {
            let tokens: Vec<u32> = ids(ids_row)
                .into_iter()
                .zip(ids(mask))
                .filter(|&(_, m)| m == 1)
                .map(|(t, _)| t)
                .collect();
            let has_image = tokens.contains(&f.model.image_token_id());
            let latents = has_image.then(|| encode_named_images(f, imgs));
            (tokens, latents)
        })
        .collect()
}

fn tokenizer_matches_reference_ids(dir: &Path) {
    let f = load(dir, MediaRule::NextImage);
    // The added tokens sit where the reference put them (base vocabulary + 0/1/2).
    let special = &f.goldens["special_tokens"];
    assert_eq!(
        [
            f.tokenizer.end_of_chunk_id,
            f.tokenizer.image_id,
            f.tokenizer.pad_id
        ],
        [
            special["<|endofchunk|>"].as_u64().unwrap() as u32,
            special["<image>"].as_u64().unwrap() as u32,
            special["<PAD>"].as_u64().unwrap() as u32,
        ]
    );
    assert_eq!(f.model.image_token_id(), f.tokenizer.image_id);
    for name in CASES {
        let case = case(&f.goldens, name);
        let prompts: Vec<String> = match &case["prompt"] {
            serde_json::Value::String(s) => vec![s.clone()],
            serde_json::Value::Array(a) => {
                a.iter().map(|p| p.as_str().unwrap().to_string()).collect()
            }
            _ => unreachable!(),
        };
        let encoded: Vec<Vec<u32>> = prompts
            .iter()
            .map(|p| f.tokenizer.encode(p).unwrap())
            .collect();
        let (padded, masks) = f.tokenizer.left_pad(&encoded);
        for (row, (p, m)) in padded.iter().zip(&masks).enumerate() {
            assert_eq!(p, &ids(&case["input_ids"][row]), "{name} row {row} ids");
            assert_eq!(
                m,
                &ids(&case["attention_mask"][row]),
                "{name} row {row} mask"
            );
        }
    }
}

fn media_times_match_reference(dir: &Path) {
    let f = load(dir, MediaRule::NextImage);
    for name in CASES {
        let case = case(&f.goldens, name);
        for (row, ids_row) in case["input_ids"].as_array().unwrap().iter().enumerate() {
            let tokens = ids(ids_row);
            let ours = prompt_media_time(MediaRule::NextImage, &tokens, f.model.image_token_id());
            // Pads are stripped before the model runs, so compare the real tokens.
            let mask = ids(&case["attention_mask"][row]);
            let expected = ids(&case["v1_attended_image_index"][row]);
            let real = |v: &[u32]| {
                v.iter()
                    .zip(&mask)
                    .filter(|(_, &m)| m == 1)
                    .map(|(x, _)| *x)
                    .collect::<Vec<_>>()
            };
            if mask.iter().all(|&m| m == 1) {
                assert_eq!(ours, expected, "{name} row {row}");
            } else {
                let stripped = prompt_media_time(
                    MediaRule::NextImage,
                    &real(&tokens),
                    f.model.image_token_id(),
                );
                assert_eq!(stripped, real(&expected), "{name} row {row}");
            }
        }
    }
}

/// Runs every case (all rows of a case packed into one forward) and compares perceiver output,
/// the state after each xattn block, every hidden state and all logits of the real tokens.
fn check_forward(dir: &Path, rule: MediaRule) {
    let f = load(dir, rule);
    for name in CASES {
        let case = case(&f.goldens, name);
        let rows = rows(&f, case);
        let masks: Vec<Vec<u32>> = case["attention_mask"]
            .as_array()
            .unwrap()
            .iter()
            .map(ids)
            .collect();
        // Perceiver output [B, T_img, 1, n, W].
        let golden_perceiver = &f.tensors[&format!("{name}.perceiver_out")];
        for (b, (_, latents)) in rows.iter().enumerate() {
            if let Some(l) = latents {
                let diff = max_abs_diff(l, &golden_perceiver.i(b).unwrap().squeeze(1).unwrap());
                assert!(diff <= TOL, "{name} row {b}: perceiver differs by {diff}");
            }
        }
        let mut states: Vec<_> = rows
            .iter()
            .map(|(_, l)| f.model.new_sequence(l.as_ref()).unwrap())
            .collect();
        let times: Vec<Vec<u32>> = rows
            .iter()
            .map(|(t, _)| prompt_media_time(rule, t, f.model.image_token_id()))
            .collect();
        let mut inputs: Vec<PackedInput> = states
            .iter_mut()
            .zip(&rows)
            .zip(&times)
            .map(|((state, (tokens, _)), time)| PackedInput {
                state,
                tokens,
                media_time: time,
            })
            .collect();
        let mut trace = Trace::default();
        let logits = f
            .model
            .forward(&mut inputs, LogitsFor::AllTokens, Some(&mut trace))
            .unwrap();
        let compare = |packed: &Tensor, golden: &Tensor, what: &str| {
            let mut start = 0;
            for (b, mask) in masks.iter().enumerate() {
                let real: Vec<usize> = mask
                    .iter()
                    .enumerate()
                    .filter(|(_, &m)| m == 1)
                    .map(|(i, _)| i)
                    .collect();
                let n = real.len();
                let ours = packed.narrow(0, start, n).unwrap();
                let theirs = golden.i(b).unwrap().narrow(0, real[0], n).unwrap();
                let diff = max_abs_diff(&ours, &theirs);
                assert!(diff <= TOL, "{name} row {b}: {what} differs by {diff}");
                start += n;
            }
        };
        for (layer, x) in &trace.after_xattn {
            compare(
                x,
                &f.tensors[&format!("{name}.after_xattn_layer{layer}")],
                &format!("after xattn {layer}"),
            );
        }
        let layers = trace.hidden_states.len() - 1;
        for (i, h) in trace.hidden_states.iter().enumerate().take(layers) {
            compare(
                h,
                &f.tensors[&format!("{name}.hidden_states.{i}")],
                &format!("hidden state {i}"),
            );
        }
        compare(&logits, &f.tensors[&format!("{name}.logits_all")], "logits");
        // logits_last in the json (the padded case: with generate's cumsum positions).
        let key = if masks.iter().any(|m| m.contains(&0)) {
            "logits_last_mask_positions"
        } else {
            "logits_last"
        };
        let mut end = 0;
        for (b, (tokens, _)) in rows.iter().enumerate() {
            end += tokens.len();
            let expected: Vec<f32> = case[key][b]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect();
            let expected = Tensor::new(expected.as_slice(), &candle_core::Device::Cpu).unwrap();
            let diff = max_abs_diff(&logits.i(end - 1).unwrap(), &expected);
            assert!(diff <= TOL, "{name} row {b}: last logits differ by {diff}");
        }
    }
}

fn forward_matches_reference_v1(dir: &Path) {
    check_forward(dir, MediaRule::NextImage);
}
