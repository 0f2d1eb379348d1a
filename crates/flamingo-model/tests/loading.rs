//! Loading what users have: both vision layouts, sharded LLaMA folders, separate paths, and clear
//! errors for wrong files.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use common::*;
use flamingo_model::{
    Flamingo, LoadError, LoadOptions, MediaRule, ModelError, ModelPaths, VisionWeights,
};

/// A fresh folder under the system temp dir, unique per test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("flamingo-loading-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The fixture's LLaMA folder with its weights replaced by `tensors` split over `shards` files.
fn llama_variant(dir: &Path, tensors: &HashMap<String, Tensor>, shards: usize) -> PathBuf {
    let llama = dir.join("llama");
    std::fs::create_dir_all(&llama).unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(fixture_dir().join("llama").join(f), llama.join(f)).unwrap();
    }
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    if shards == 1 {
        candle_core::safetensors::save(tensors, llama.join("model.safetensors")).unwrap();
        return llama;
    }
    let mut weight_map = serde_json::Map::new();
    for (i, chunk) in names.chunks(names.len().div_ceil(shards)).enumerate() {
        let file = format!("model-{:05}-of-{shards:05}.safetensors", i + 1);
        let part: HashMap<String, Tensor> = chunk
            .iter()
            .map(|n| ((*n).clone(), tensors[*n].clone()))
            .collect();
        candle_core::safetensors::save(&part, llama.join(&file)).unwrap();
        for n in chunk {
            weight_map.insert((*n).clone(), file.clone().into());
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(
        llama.join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    llama
}

fn fixture_llama() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture_dir().join("llama/model.safetensors"), &Device::Cpu)
        .unwrap()
}

fn paths_with_llama(llama: PathBuf) -> ModelPaths {
    let mut paths = ModelPaths::from_dir(&fixture_dir()).unwrap();
    paths.tokenizer = llama.join("tokenizer.json");
    paths.llama_dir = llama;
    paths
}

fn caption_logits(model: &Flamingo) -> Tensor {
    let pixels = reference_pixels("gradient");
    let latents = model.encode_images(&pixels).unwrap();
    model
        .score_prompt(&[1, 401, 308, 375], Some(&latents))
        .unwrap()
}

fn reference_model() -> Flamingo {
    Flamingo::load(
        &ModelPaths::from_dir(&fixture_dir()).unwrap(),
        &LoadOptions::default(),
    )
    .unwrap()
}

#[test]
fn hf_clip_vision_layout_matches_open_clip() {
    let mut paths = ModelPaths::from_dir(&fixture_dir()).unwrap();
    paths.vision = VisionWeights::HfClip {
        dir: fixture_dir().join("vision_hf"),
    };
    let model = Flamingo::load(&paths, &LoadOptions::default()).unwrap();
    let f = load(MediaRule::NextImage);
    let ours = model
        .vision_tokens(&reference_pixels("checker"))
        .unwrap()
        .squeeze(0)
        .unwrap();
    let diff = max_abs_diff(&ours, &f.tensors["vision_tokens.checker"]);
    assert!(diff <= 1e-4, "HF CLIP vision tokens differ by {diff}");
}

#[test]
fn sharded_llama_with_index_loads_identically() {
    let dir = scratch("sharded");
    let llama = llama_variant(&dir, &fixture_llama(), 3);
    let sharded = Flamingo::load(&paths_with_llama(llama), &LoadOptions::default()).unwrap();
    let diff = max_abs_diff(
        &caption_logits(&sharded),
        &caption_logits(&reference_model()),
    );
    assert_eq!(diff, 0.0);
}

#[test]
fn missing_tensor_names_key_and_file() {
    let dir = scratch("missing");
    let mut tensors = fixture_llama();
    tensors.remove("model.layers.2.mlp.up_proj.weight");
    let err = Flamingo::load(
        &paths_with_llama(llama_variant(&dir, &tensors, 1)),
        &LoadOptions::default(),
    )
    .err()
    .expect("a missing tensor must fail");
    match &err {
        ModelError::Load(LoadError::MissingTensor { key, files }) => {
            assert_eq!(key, "model.layers.2.mlp.up_proj.weight");
            assert!(files.contains("model.safetensors"), "{files}");
        }
        other => panic!("unexpected error {other}"),
    }
}

#[test]
fn misshaped_tensor_names_key_file_and_shapes() {
    let dir = scratch("misshaped");
    let mut tensors = fixture_llama();
    tensors.insert(
        "model.layers.1.self_attn.k_proj.weight".into(),
        Tensor::zeros((64, 32), DType::F32, &Device::Cpu).unwrap(),
    );
    let err = Flamingo::load(
        &paths_with_llama(llama_variant(&dir, &tensors, 1)),
        &LoadOptions::default(),
    )
    .err()
    .expect("a mis-shaped tensor must fail");
    match &err {
        ModelError::Load(LoadError::ShapeMismatch {
            key,
            file,
            expected,
            found,
        }) => {
            assert_eq!(key, "model.layers.1.self_attn.k_proj.weight");
            assert!(
                file.ends_with("llama/model.safetensors"),
                "{}",
                file.display()
            );
            assert_eq!(
                (expected.as_slice(), found.as_slice()),
                (&[64, 64][..], &[64, 32][..])
            );
        }
        other => panic!("unexpected error {other}"),
    }
    assert!(err.to_string().contains("k_proj"), "{err}");
}

/// A torch zip whose pickle is a dict without tensors (what candle reads from a nested or
/// non-state-dict checkpoint) must be an error, not an empty model.
#[test]
fn checkpoint_without_tensors_is_an_error() {
    use std::io::Write;
    let dir = scratch("empty-pt");
    let path = dir.join("checkpoint.pt");
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    zip.start_file("archive/data.pkl", zip::write::SimpleFileOptions::default())
        .unwrap();
    // protocol 2: {"epoch": 1}
    zip.write_all(b"\x80\x02}q\x00X\x05\x00\x00\x00epochq\x01K\x01s.")
        .unwrap();
    zip.finish().unwrap();
    let mut paths = ModelPaths::from_dir(&fixture_dir()).unwrap();
    paths.checkpoint = path.clone();
    match Flamingo::load(&paths, &LoadOptions::default()) {
        Err(ModelError::Load(LoadError::NoTensors { file })) => assert_eq!(file, path),
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("a checkpoint with no tensors must not load"),
    }
}

#[test]
fn missing_folder_is_a_layout_error() {
    let dir = scratch("no-llama");
    assert!(matches!(
        ModelPaths::from_dir(&dir),
        Err(ModelError::Layout(_))
    ));
}

/// Half precision runs and stays close to f32; the error is printed for the record.
#[test]
fn half_precision_logits_stay_close() {
    let reference = caption_logits(&reference_model());
    for dtype in [DType::F16, DType::BF16] {
        let opts = LoadOptions {
            dtype,
            ..Default::default()
        };
        let model = Flamingo::load(&ModelPaths::from_dir(&fixture_dir()).unwrap(), &opts).unwrap();
        let diff = max_abs_diff(&caption_logits(&model), &reference);
        println!("{dtype:?}: max |logit - f32 logit| = {diff}");
        let bound = if dtype == DType::F16 { 0.05 } else { 0.25 };
        assert!(diff < bound, "{dtype:?} logits differ by {diff}");
    }
}

/// Quantized projections run and stay near f32; the error is printed for the record.
#[test]
fn quantized_logits_stay_close() {
    use flamingo_model::linear::Quantization;
    let reference = caption_logits(&reference_model());
    let paths = ModelPaths::from_dir(&fixture_dir()).unwrap();
    for (q, bound) in [(Quantization::Q8_0, 0.1), (Quantization::Q4K, 0.5)] {
        let model = Flamingo::load_with(&paths, &LoadOptions::default(), Some(q)).unwrap();
        let diff = max_abs_diff(&caption_logits(&model), &reference);
        println!("{q:?}: max |logit - f32 logit| = {diff}");
        assert!(diff < bound, "{q:?} logits differ by {diff}");
        assert!(diff > 0.0, "{q:?} must actually quantize something");
    }
}

/// The tiny LLaMA as torch `pytorch_model-0000N-of-00002.bin` shards with an index (written by
/// torch 2.0.1, as transformers 4.28 conversions are) loads identically to the safetensors.
#[test]
fn sharded_pytorch_bin_llama_loads_identically() {
    let llama = fixture_dir().join("../llama-bin-sharded");
    let model = Flamingo::load(&paths_with_llama(llama), &LoadOptions::default()).unwrap();
    let diff = max_abs_diff(&caption_logits(&model), &caption_logits(&reference_model()));
    assert_eq!(diff, 0.0);
}

/// open_clip vision weights as a torch pickle (`open_clip_pytorch_model.bin`) load like the
/// safetensors copy.
#[test]
fn open_clip_torch_pickle_vision_matches() {
    let mut paths = ModelPaths::from_dir(&fixture_dir()).unwrap();
    paths.vision =
        flamingo_model::paths::open_clip_in(&fixture_dir().join("../vision-open-clip-bin"))
            .unwrap();
    let model = Flamingo::load(&paths, &LoadOptions::default()).unwrap();
    let diff = max_abs_diff(&caption_logits(&model), &caption_logits(&reference_model()));
    assert_eq!(diff, 0.0);
}
