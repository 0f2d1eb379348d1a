//! Where the release files are: one directory laid out like the fixture, or separate paths.

use std::path::{Path, PathBuf};

use crate::error::{ModelError, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VisionWeights {
    /// open_clip state dict (`visual.*` keys, packed `in_proj_weight`); safetensors or torch pickle.
    OpenClip {
        weights: PathBuf,
        config: Option<PathBuf>,
    },
    /// HF `CLIPVisionModel(WithProjection)` / `CLIPModel` folder (`openai/clip-vit-large-patch14`).
    HfClip { dir: PathBuf },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelPaths {
    /// LLaMA in HF format: config.json, tokenizer.json, (sharded) weights.
    pub llama_dir: PathBuf,
    pub vision: VisionWeights,
    /// OpenFlamingo `checkpoint.pt`.
    pub checkpoint: PathBuf,
    /// Optional `openflamingo_config.json` overriding the OpenFlamingo-9B hyper-parameters.
    pub flamingo_config: Option<PathBuf>,
    /// tokenizer.json; defaults to the one in `llama_dir`.
    pub tokenizer: PathBuf,
}

const OPEN_CLIP_FILES: [&str; 4] = [
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.bin",
    "model.safetensors",
    "pytorch_model.bin",
];

impl ModelPaths {
    /// `dir/{llama/, vision/ or vision_hf/, checkpoint.pt, openflamingo_config.json?}`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let missing = |what: &str| ModelError::Layout(format!("{}: no {what}", dir.display()));
        let llama_dir = dir.join("llama");
        if !llama_dir.is_dir() {
            return Err(missing("llama/ folder"));
        }
        let vision = if dir.join("vision").is_dir() {
            open_clip_in(&dir.join("vision"))?
        } else if dir.join("vision_hf").is_dir() {
            VisionWeights::HfClip {
                dir: dir.join("vision_hf"),
            }
        } else {
            return Err(missing("vision/ or vision_hf/ folder"));
        };
        let checkpoint = dir.join("checkpoint.pt");
        if !checkpoint.is_file() {
            return Err(missing("checkpoint.pt"));
        }
        let config = dir.join("openflamingo_config.json");
        Ok(Self {
            tokenizer: llama_dir.join("tokenizer.json"),
            llama_dir,
            vision,
            checkpoint,
            flamingo_config: config.is_file().then_some(config),
        })
    }
}

/// An open_clip weights file: a path to the file itself, or a folder holding one.
pub fn open_clip_in(path: &Path) -> Result<VisionWeights> {
    if path.is_file() {
        return Ok(VisionWeights::OpenClip {
            weights: path.to_path_buf(),
            config: None,
        });
    }
    let config = path.join("open_clip_config.json");
    let config = config.is_file().then_some(config);
    let known = OPEN_CLIP_FILES
        .iter()
        .map(|f| path.join(f))
        .find(|p| p.is_file());
    let any = || {
        std::fs::read_dir(path)
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| {
                p.extension()
                    .is_some_and(|e| e == "safetensors" || e == "bin" || e == "pt" || e == "pth")
            })
    };
    match known.or_else(any) {
        Some(weights) => Ok(VisionWeights::OpenClip { weights, config }),
        None => Err(ModelError::Layout(format!(
            "{}: no vision weights file",
            path.display()
        ))),
    }
}
