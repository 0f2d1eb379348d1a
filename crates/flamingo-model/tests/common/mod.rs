#![allow(dead_code)]
//! Fixture access shared by the parity tests. Every parity test runs on each fixture in
//! [`FIXTURES`] (same goldens format, different shapes): see [`per_fixture!`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use flamingo_model::preprocess::PixelSpec;
use flamingo_model::tokenizer::FlamingoTokenizer;
use flamingo_model::{Flamingo, LoadOptions, MediaRule, ModelPaths};
use serde_json::Value;

/// `tiny-openflamingo`: 224 px / 14 px patches, OpenAI CLIP mean/std, xattn every 2nd layer,
/// one LLaMA file. `tiny-openflamingo-b`: 112 px / 16 px patches, ImageNet mean/std, xattn every
/// 3rd layer, two LLaMA shards, base vocabulary 360.
pub const FIXTURES: [&str; 2] = ["tiny-openflamingo", "tiny-openflamingo-b"];

pub fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures")).join(name)
}

/// The first fixture (the tests that exist for its extra files only).
pub fn fixture_dir() -> PathBuf {
    fixture_path(FIXTURES[0])
}

/// For each `fn name(dir: &Path)` listed, one `#[test]` per fixture: `tiny::name`, `tiny_b::name`.
#[macro_export]
macro_rules! per_fixture {
    ($($name:ident),* $(,)?) => {
        mod tiny {
            $(
                #[test]
                fn $name() {
                    super::$name(&$crate::common::fixture_path($crate::common::FIXTURES[0]));
                }
            )*
        }
        mod tiny_b {
            $(
                #[test]
                fn $name() {
                    super::$name(&$crate::common::fixture_path($crate::common::FIXTURES[1]));
                }
            )*
        }
    };
}

pub struct Fixture {
    pub dir: PathBuf,
    pub model: Flamingo,
    pub tokenizer: FlamingoTokenizer,
    pub goldens: Value,
    pub tensors: HashMap<String, Tensor>,
}

impl Fixture {
    /// The reference's crop of a fixture image, normalised as this model's files declare.
    pub fn reference_pixels(&self, name: &str) -> Tensor {
        reference_pixels(&self.dir, &self.model.pixel_spec(), name)
    }
}

pub fn load(dir: &Path, rule: MediaRule) -> Fixture {
    let dir = dir.to_path_buf();
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
    model
        .check_tokenizer(&tokenizer)
        .expect("tokenizer fits the model");
    Fixture {
        dir,
        model,
        tokenizer,
        goldens,
        tensors,
    }
}

/// The reference's uint8 crop, normalised: isolates model error from resize error.
pub fn reference_pixels(dir: &Path, spec: &PixelSpec, name: &str) -> Tensor {
    let path = dir.join(format!("images/preprocessed/{name}.png"));
    let img = image::open(path).unwrap().to_rgb8();
    let (w, h) = img.dimensions();
    let data = flamingo_model::preprocess::normalize(&img, spec);
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
pub fn encode_named_images(f: &Fixture, names: &Value) -> Tensor {
    let pixels: Vec<Tensor> = names
        .as_array()
        .unwrap()
        .iter()
        .map(|n| f.reference_pixels(n.as_str().unwrap()))
        .collect();
    f.model
        .encode_images(&Tensor::cat(&pixels, 0).unwrap())
        .unwrap()
}
