#![allow(dead_code)]
//! Fixture access shared by the parity tests.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use flamingo_model::tokenizer::FlamingoTokenizer;
use flamingo_model::{Flamingo, LoadOptions, MediaRule, ModelPaths};
use serde_json::Value;

pub fn fixture_dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/tiny-openflamingo"
    ))
}

pub struct Fixture {
    pub model: Flamingo,
    pub tokenizer: FlamingoTokenizer,
    pub goldens: Value,
    pub tensors: HashMap<String, Tensor>,
}

pub fn load(rule: MediaRule) -> Fixture {
    let dir = fixture_dir();
    let paths = ModelPaths::from_dir(&dir).expect("fixture layout");
    let opts = LoadOptions {
        media_rule: Some(rule),
        ..Default::default()
    };
    let model = Flamingo::load(&paths, &opts).expect("load fixture model");
    let tokenizer = FlamingoTokenizer::from_file(&paths.tokenizer).expect("tokenizer");
    let goldens_file = match rule {
        MediaRule::NextImage => "goldens.json",
        MediaRule::PreviousImage => "goldens_v2_semantics.json",
    };
    let goldens: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(goldens_file)).unwrap()).unwrap();
    let tensors =
        candle_core::safetensors::load(dir.join("goldens.safetensors"), &Device::Cpu).unwrap();
    Fixture {
        model,
        tokenizer,
        goldens,
        tensors,
    }
}

/// The reference's uint8 crop, normalised: isolates model error from resize error.
pub fn reference_pixels(name: &str) -> Tensor {
    let path = fixture_dir().join(format!("images/preprocessed/{name}.png"));
    let img = image::open(path).unwrap().to_rgb8();
    let (w, h) = img.dimensions();
    let data = flamingo_model::preprocess::normalize(&img);
    Tensor::from_vec(data, (1, 3, h as usize, w as usize), &Device::Cpu).unwrap()
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

pub fn case<'a>(goldens: &'a Value, name: &str) -> &'a Value {
    goldens["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap()
}

pub const CASES: [&str; 4] = [
    "caption_1img",
    "interleaved_2shot",
    "text_only",
    "batch_left_pad",
];

/// Resampled latents of a case row's images (`["gradient", ...]`), in order.
pub fn encode_named_images(model: &Flamingo, names: &Value) -> Tensor {
    let pixels: Vec<Tensor> = names
        .as_array()
        .unwrap()
        .iter()
        .map(|n| reference_pixels(n.as_str().unwrap()))
        .collect();
    model
        .encode_images(&Tensor::cat(&pixels, 0).unwrap())
        .unwrap()
}
