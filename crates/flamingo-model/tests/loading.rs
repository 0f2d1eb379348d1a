//! Loading what users have: both vision layouts, sharded LLaMA folders, separate paths, and clear
//! errors for wrong files.

#[macro_use]
mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use common::*;
use flamingo_model::preprocess::PixelSpec;
use flamingo_model::resolve_config;
use flamingo_model::tokenizer::FlamingoTokenizer;
use flamingo_model::{
    Flamingo, LoadError, LoadOptions, MediaRule, ModelError, ModelPaths, VisionWeights,
};

per_fixture!(
    hf_clip_vision_layout_matches_open_clip,
    sharded_llama_with_index_loads_identically,
    half_precision_logits_stay_close,
    quantized_logits_stay_close,
    pixel_spec_is_what_the_files_declare,
);

/// A fresh folder under the system temp dir, unique per test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("flamingo-loading-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The first fixture's LLaMA folder with its weights replaced by `tensors` split over `shards`
/// files.
fn llama_variant(dir: &Path, tensors: &HashMap<String, Tensor>, shards: usize) -> PathBuf {
    llama_variant_of(&fixture_dir(), dir, tensors, shards)
}

/// `fixture`'s LLaMA folder with its weights replaced by `tensors` split over `shards` files.
fn llama_variant_of(
    fixture: &Path,
    dir: &Path,
    tensors: &HashMap<String, Tensor>,
    shards: usize,
) -> PathBuf {
    let llama = dir.join("llama");
    std::fs::create_dir_all(&llama).unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(fixture.join("llama").join(f), llama.join(f)).unwrap();
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

/// Every LLaMA tensor of a fixture, from its one file or all its shards.
fn llama_tensors(fixture: &Path) -> HashMap<String, Tensor> {
    let dir = fixture.join("llama");
    let index = dir.join("model.safetensors.index.json");
    let files: Vec<PathBuf> = if index.is_file() {
        let index: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(index).unwrap()).unwrap();
        let mut files: Vec<&str> = index["weight_map"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_str().unwrap())
            .collect();
        files.sort();
        files.dedup();
        files.into_iter().map(|f| dir.join(f)).collect()
    } else {
        vec![dir.join("model.safetensors")]
    };
    files
        .iter()
        .flat_map(|f| candle_core::safetensors::load(f, &Device::Cpu).unwrap())
        .collect()
}

fn fixture_llama() -> HashMap<String, Tensor> {
    llama_tensors(&fixture_dir())
}

fn paths_with_llama(llama: PathBuf) -> ModelPaths {
    paths_of_with_llama(&fixture_dir(), llama)
}

fn paths_of_with_llama(fixture: &Path, llama: PathBuf) -> ModelPaths {
    let mut paths = ModelPaths::from_dir(fixture).unwrap();
    paths.tokenizer = llama.join("tokenizer.json");
    paths.llama_dir = llama;
    paths
}

/// All logits of `<image>Output:` (tokenized by the first fixture's tokenizer) for its gradient
/// image.
fn caption_logits(model: &Flamingo) -> Tensor {
    caption_logits_of(&fixture_dir(), model)
}

/// All logits of `<image>Output:` for `fixture`'s gradient image.
fn caption_logits_of(fixture: &Path, model: &Flamingo) -> Tensor {
    let tok = FlamingoTokenizer::from_file(&fixture.join("llama/tokenizer.json")).unwrap();
    let tokens = tok.encode("<image>Output:").unwrap();
    assert!(tokens.contains(&model.image_token_id()), "{tokens:?}");
    let pixels = reference_pixels(fixture, &model.pixel_spec(), "gradient");
    let latents = model.encode_images(&pixels).unwrap();
    model.score_prompt(&tokens, Some(&latents)).unwrap()
}

fn reference_model() -> Flamingo {
    reference_model_of(&fixture_dir())
}

fn reference_model_of(fixture: &Path) -> Flamingo {
    Flamingo::load(
        &ModelPaths::from_dir(fixture).unwrap(),
        &LoadOptions::default(),
    )
    .unwrap()
}

fn hf_clip_vision_layout_matches_open_clip(fixture: &Path) {
    let mut paths = ModelPaths::from_dir(fixture).unwrap();
    paths.vision = VisionWeights::HfClip {
        dir: fixture.join("vision_hf"),
    };
    // The HF folder alone (no `image_preprocess` override) declares the size and mean/std.
    let name = fixture.file_name().unwrap().to_string_lossy();
    paths.flamingo_config = Some(without_image_preprocess(
        fixture,
        &scratch(&format!("hf-{name}")),
    ));
    let model = Flamingo::load(&paths, &LoadOptions::default()).unwrap();
    let f = load(fixture, MediaRule::NextImage);
    assert_eq!(model.pixel_spec(), f.model.pixel_spec());
    for name in ["checker", "stripes"] {
        let ours = model
            .vision_tokens(&reference_pixels(fixture, &model.pixel_spec(), name))
            .unwrap()
            .squeeze(0)
            .unwrap();
        let diff = max_abs_diff(&ours, &f.tensors[&format!("vision_tokens.{name}")]);
        assert!(
            diff <= 1e-4,
            "{name}: HF CLIP vision tokens differ by {diff}"
        );
    }
}

fn sharded_llama_with_index_loads_identically(fixture: &Path) {
    let name = fixture.file_name().unwrap().to_string_lossy();
    let dir = scratch(&format!("sharded-{name}"));
    let llama = llama_variant_of(fixture, &dir, &llama_tensors(fixture), 3);
    let sharded = Flamingo::load(
        &paths_of_with_llama(fixture, llama),
        &LoadOptions::default(),
    )
    .unwrap();
    let diff = max_abs_diff(
        &caption_logits_of(fixture, &sharded),
        &caption_logits_of(fixture, &reference_model_of(fixture)),
    );
    assert_eq!(diff, 0.0);
}

/// Each vision layout on its own (without `openflamingo_config.json`) gives the image size,
/// mean and std the fixture was made with (its `openflamingo_config.json` `image_preprocess`
/// records what the reference used).
fn pixel_spec_is_what_the_files_declare(fixture: &Path) {
    let of: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture.join("openflamingo_config.json")).unwrap(),
    )
    .unwrap();
    let p = &of["image_preprocess"];
    let rgb = |v: &serde_json::Value| -> [f32; 3] {
        let v: Vec<f32> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        [v[0], v[1], v[2]]
    };
    let expected = PixelSpec {
        resize: p["image_size"].as_u64().unwrap() as usize,
        size: p["center_crop"].as_u64().unwrap() as usize,
        mean: rgb(&p["mean"]),
        std: rgb(&p["std"]),
    };
    let from_dir = ModelPaths::from_dir(fixture).unwrap();
    let name = fixture.file_name().unwrap().to_string_lossy();
    let open_clip = ModelPaths {
        flamingo_config: Some(without_image_preprocess(
            fixture,
            &scratch(&format!("spec-{name}")),
        )),
        ..from_dir.clone()
    };
    let hf = ModelPaths {
        vision: VisionWeights::HfClip {
            dir: fixture.join("vision_hf"),
        },
        ..open_clip.clone()
    };
    for (what, paths) in [("dir", &from_dir), ("open_clip", &open_clip), ("hf", &hf)] {
        let cfg = resolve_config(paths, &LoadOptions::default()).unwrap();
        assert_eq!(cfg.pixels, expected, "{what}");
        assert_eq!(cfg.vision.image_size, expected.size, "{what}");
    }
    let model = reference_model_of(fixture);
    assert_eq!(model.pixel_spec(), expected);
}

/// `fixture`'s openflamingo_config.json without its `image_preprocess` (which overrides what
/// the vision files declare), written into `dir`.
fn without_image_preprocess(fixture: &Path, dir: &Path) -> PathBuf {
    let path = dir.join("openflamingo_config.json");
    std::fs::copy(fixture.join("openflamingo_config.json"), &path).unwrap();
    edit_json(&path, |v| {
        v.as_object_mut().unwrap().remove("image_preprocess");
    });
    path
}

/// A copy of the second fixture's vision configs (open_clip json, HF folder) to edit.
struct EditedVision {
    open_clip: ModelPaths,
    hf: ModelPaths,
    open_clip_config: PathBuf,
    hf_preprocessor: PathBuf,
}

fn edited_vision(name: &str) -> EditedVision {
    let fixture = fixture_path(FIXTURES[1]);
    let dir = scratch(name);
    let open_clip_config = dir.join("open_clip_config.json");
    std::fs::copy(
        fixture.join("vision/open_clip_config.json"),
        &open_clip_config,
    )
    .unwrap();
    let hf_dir = dir.join("vision_hf");
    std::fs::create_dir_all(&hf_dir).unwrap();
    for f in [
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    ] {
        std::fs::copy(fixture.join("vision_hf").join(f), hf_dir.join(f)).unwrap();
    }
    let base = ModelPaths {
        flamingo_config: Some(without_image_preprocess(&fixture, &dir)),
        ..ModelPaths::from_dir(&fixture).unwrap()
    };
    EditedVision {
        open_clip: ModelPaths {
            vision: VisionWeights::OpenClip {
                weights: fixture.join("vision/open_clip_model.safetensors"),
                config: Some(open_clip_config.clone()),
            },
            ..base.clone()
        },
        hf: ModelPaths {
            vision: VisionWeights::HfClip {
                dir: hf_dir.clone(),
            },
            ..base
        },
        open_clip_config,
        hf_preprocessor: hf_dir.join("preprocessor_config.json"),
    }
}

/// Rewrites a json file through `f`.
fn edit_json(path: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(path, v.to_string()).unwrap();
}

fn load_error(paths: &ModelPaths) -> ModelError {
    match Flamingo::load(paths, &LoadOptions::default()) {
        Ok(_) => panic!("must not load"),
        Err(e) => e,
    }
}

/// What the server could not serve is refused when the model loads, with the reason.
#[test]
fn unservable_preprocessing_is_refused_at_load() {
    // Unedited copies load.
    let ok = edited_vision("servable");
    for paths in [&ok.open_clip, &ok.hf] {
        let model = Flamingo::load(paths, &LoadOptions::default()).unwrap();
        assert_eq!(model.pixel_spec().size, 112);
    }

    let e = edited_vision("not-a-multiple");
    edit_json(&e.open_clip_config, |v| {
        v["model_cfg"]["vision_cfg"]["image_size"] = 100.into()
    });
    let err = load_error(&e.open_clip);
    assert!(
        matches!(&err, ModelError::Unsupported(m) if m.contains("100") && m.contains("multiple of patch_size 16")),
        "{err}"
    );

    let e = edited_vision("zero-std");
    edit_json(&e.open_clip_config, |v| {
        v["preprocess_cfg"]["std"] = serde_json::json!([0.2, 0.0, 0.2])
    });
    let err = load_error(&e.open_clip);
    assert!(
        matches!(&err, ModelError::Unsupported(m) if m.contains("std 0")),
        "{err}"
    );

    let e = edited_vision("bilinear");
    edit_json(&e.open_clip_config, |v| {
        v["preprocess_cfg"]["interpolation"] = "bilinear".into()
    });
    let err = load_error(&e.open_clip);
    assert!(
        matches!(&err, ModelError::Config { path, message } if path == &e.open_clip_config && message.contains("bilinear")),
        "{err}"
    );

    let e = edited_vision("non-square");
    edit_json(&e.open_clip_config, |v| {
        v["model_cfg"]["vision_cfg"]["image_size"] = serde_json::json!([112, 96])
    });
    let err = load_error(&e.open_clip);
    assert!(err.to_string().contains("112x96"), "{err}");

    let e = edited_vision("crop-mismatch");
    edit_json(&e.hf_preprocessor, |v| {
        v["crop_size"] = serde_json::json!({"height": 96, "width": 96})
    });
    let err = load_error(&e.hf);
    assert!(
        matches!(&err, ModelError::Unsupported(m) if m.contains("crops to 96 px") && m.contains("takes 112 px")),
        "{err}"
    );

    // A larger resize than crop is servable (HF's shortest_edge 128 -> crop 112).
    let e = edited_vision("resize-larger");
    edit_json(&e.hf_preprocessor, |v| {
        v["size"] = serde_json::json!({"shortest_edge": 128})
    });
    let cfg = resolve_config(&e.hf, &LoadOptions::default()).unwrap();
    assert_eq!((cfg.pixels.resize, cfg.pixels.size), (128, 112));
}

/// A tokenizer whose OpenFlamingo tokens land elsewhere than the model's embedding rows is
/// refused (the first fixture's tokenizer has a base vocabulary of 400, the second model 360).
#[test]
fn tokenizer_of_another_model_is_refused() {
    let model = reference_model_of(&fixture_path(FIXTURES[1]));
    let own = FlamingoTokenizer::from_file(&fixture_path(FIXTURES[1]).join("llama/tokenizer.json"))
        .unwrap();
    model.check_tokenizer(&own).unwrap();
    let other = FlamingoTokenizer::from_file(&fixture_dir().join("llama/tokenizer.json")).unwrap();
    let err = model.check_tokenizer(&other).unwrap_err();
    assert!(
        matches!(&err, ModelError::Tokenizer(m) if m.contains("`<|endofchunk|>` has id 400") && m.contains("expects 360")),
        "{err}"
    );
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
fn half_precision_logits_stay_close(fixture: &Path) {
    let reference = caption_logits_of(fixture, &reference_model_of(fixture));
    for dtype in [DType::F16, DType::BF16] {
        let opts = LoadOptions {
            dtype,
            ..Default::default()
        };
        let model = Flamingo::load(&ModelPaths::from_dir(fixture).unwrap(), &opts).unwrap();
        let diff = max_abs_diff(&caption_logits_of(fixture, &model), &reference);
        println!("{dtype:?}: max |logit - f32 logit| = {diff}");
        let bound = if dtype == DType::F16 { 0.05 } else { 0.25 };
        assert!(diff < bound, "{dtype:?} logits differ by {diff}");
    }
}

/// Quantized projections run and stay near f32; the error is printed for the record.
fn quantized_logits_stay_close(fixture: &Path) {
    use flamingo_model::linear::Quantization;
    let reference = caption_logits_of(fixture, &reference_model_of(fixture));
    let paths = ModelPaths::from_dir(fixture).unwrap();
    // Only projections whose input width is a multiple of the block size are quantized (the
    // second fixture's widths 80/160/320 fit 32-blocks but no 256-block).
    let cfg = resolve_config(&paths, &LoadOptions::default()).unwrap();
    let l = &cfg.llama;
    let widths = [
        l.hidden_size,
        l.intermediate_size,
        l.hidden_size * cfg.xattn.ff_mult,
    ];
    for (q, block, bound) in [(Quantization::Q8_0, 32, 0.1), (Quantization::Q4K, 256, 0.5)] {
        let model = Flamingo::load_with(&paths, &LoadOptions::default(), Some(q)).unwrap();
        let diff = max_abs_diff(&caption_logits_of(fixture, &model), &reference);
        println!("{q:?}: max |logit - f32 logit| = {diff}");
        assert!(diff < bound, "{q:?} logits differ by {diff}");
        if widths.iter().any(|w| w % block == 0) {
            assert!(diff > 0.0, "{q:?} must actually quantize something");
        } else {
            assert_eq!(diff, 0.0, "{q:?}: nothing fits a block, nothing may change");
        }
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
