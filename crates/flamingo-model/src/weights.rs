//! Tensor files as a user of the real release has them: safetensors or torch pickles, single or
//! sharded, behind one lookup that reports the file a key came from.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::pickle::PthTensors;
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

use crate::error::{LoadError, ModelError, Result};

enum Reader {
    Safetensors(MmapedSafetensors),
    Pth(PthTensors),
}

struct WeightFile {
    path: PathBuf,
    reader: Reader,
}

/// A tensor name and its shape.
type KeyShape = (String, Vec<usize>);

/// Keys of torch checkpoints that wrap the state dict one level down.
const NESTED_STATE_DICT_KEYS: [&str; 3] = ["state_dict", "model_state_dict", "model"];

impl WeightFile {
    fn open(path: &Path) -> Result<(Self, Vec<KeyShape>)> {
        let bad = |message: String| LoadError::BadFile {
            file: path.to_path_buf(),
            message,
        };
        if !path.is_file() {
            return Err(ModelError::io(
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
            ));
        }
        let is_safetensors = path.extension().is_some_and(|e| e == "safetensors");
        if is_safetensors {
            // SAFETY: the file is mapped read-only; a weight file changed on disk while the
            // server runs is outside what we can defend against (as in every mmap loader).
            let st = unsafe { MmapedSafetensors::new(path) }.map_err(|e| bad(e.to_string()))?;
            let keys = st
                .tensors()
                .into_iter()
                .map(|(name, view)| (name, view.shape().to_vec()))
                .collect();
            return Ok((
                Self {
                    path: path.to_path_buf(),
                    reader: Reader::Safetensors(st),
                },
                keys,
            ));
        }
        let mut pth = PthTensors::new(path, None).map_err(|e| bad(e.to_string()))?;
        if pth.tensor_infos().is_empty() {
            for key in NESTED_STATE_DICT_KEYS {
                if let Ok(nested) = PthTensors::new(path, Some(key)) {
                    if !nested.tensor_infos().is_empty() {
                        pth = nested;
                        break;
                    }
                }
            }
        }
        let keys = pth
            .tensor_infos()
            .iter()
            .map(|(name, info)| (name.clone(), info.layout.shape().dims().to_vec()))
            .collect();
        Ok((
            Self {
                path: path.to_path_buf(),
                reader: Reader::Pth(pth),
            },
            keys,
        ))
    }

    fn load(&self, key: &str) -> Result<Tensor> {
        let bad = |message: String| LoadError::BadFile {
            file: self.path.clone(),
            message,
        };
        let tensor = match &self.reader {
            Reader::Safetensors(st) => {
                st.load(key, &Device::Cpu).map_err(|e| bad(e.to_string()))?
            }
            Reader::Pth(pth) => pth
                .get(key)
                .map_err(|e| bad(format!("{key}: {e}")))?
                .ok_or_else(|| bad(format!("{key}: listed but unreadable")))?,
        };
        Ok(tensor)
    }
}

/// A set of tensor files read as one state dict.
pub struct TensorStore {
    files: Vec<WeightFile>,
    location: HashMap<String, (usize, Vec<usize>)>,
}

impl TensorStore {
    pub fn open(paths: &[PathBuf]) -> Result<Self> {
        let mut files = Vec::with_capacity(paths.len());
        let mut location = HashMap::new();
        for path in paths {
            let (file, keys) = WeightFile::open(path)?;
            if keys.is_empty() {
                return Err(LoadError::NoTensors { file: path.clone() }.into());
            }
            for (key, shape) in keys {
                location.insert(key, (files.len(), shape));
            }
            files.push(file);
        }
        Ok(Self { files, location })
    }

    /// A HF model folder: sharded through `*.index.json`, or a single weights file.
    pub fn open_hf_dir(dir: &Path) -> Result<Self> {
        Self::open(&hf_weight_files(dir)?)
    }

    pub fn contains(&self, key: &str) -> bool {
        self.location.contains_key(key)
    }

    pub fn file_of(&self, key: &str) -> Option<&Path> {
        self.location
            .get(key)
            .map(|(i, _)| self.files[*i].path.as_path())
    }

    fn describe_files(&self) -> String {
        let names: Vec<String> = self
            .files
            .iter()
            .map(|f| f.path.display().to_string())
            .collect();
        names.join(", ")
    }

    /// The tensor in its stored dtype, on the CPU.
    pub fn load(&self, key: &str) -> Result<Tensor> {
        let (file, _) = self
            .location
            .get(key)
            .ok_or_else(|| LoadError::MissingTensor {
                key: key.to_string(),
                files: self.describe_files(),
            })?;
        self.files[*file].load(key)
    }
}

/// Weight files of a HF folder, preferring safetensors, following the shard index if any.
pub fn hf_weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    for index in [
        "model.safetensors.index.json",
        "pytorch_model.bin.index.json",
    ] {
        let path = dir.join(index);
        if path.is_file() {
            let parsed: serde_json::Value = crate::config::read_json(&path)?;
            let map = parsed
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| LoadError::BadFile {
                    file: path.clone(),
                    message: "no `weight_map` object".into(),
                })?;
            let mut files: Vec<PathBuf> = map
                .values()
                .filter_map(|v| v.as_str())
                .map(|f| dir.join(f))
                .collect();
            files.sort();
            files.dedup();
            return Ok(files);
        }
    }
    for single in ["model.safetensors", "pytorch_model.bin"] {
        let path = dir.join(single);
        if path.is_file() {
            return Ok(vec![path]);
        }
    }
    Err(ModelError::Layout(format!(
        "{}: no model.safetensors, pytorch_model.bin or shard index",
        dir.display()
    )))
}

/// How module paths map onto the keys of a store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyLayout {
    /// Keys are used as they are.
    Identity,
    /// Modules are written against open_clip vision names (`visual.*`); the store holds a HF
    /// `CLIPVisionModel` (`vision_model.*`, split q/k/v).
    HfClipAsOpenClip,
    /// Gated xattn blocks are stored twice in `checkpoint.pt`; accept either name.
    FlamingoCheckpoint,
}

/// A `VarBuilder` backend over a [`TensorStore`]. Candle's errors are strings, so the typed
/// [`LoadError`] of the first failure is kept aside for the loader to report.
pub struct StoreBackend {
    store: Arc<TensorStore>,
    layout: KeyLayout,
    first_error: Arc<Mutex<Option<LoadError>>>,
}

impl StoreBackend {
    pub fn var_builder(
        store: Arc<TensorStore>,
        layout: KeyLayout,
        dtype: DType,
        device: &Device,
        first_error: Arc<Mutex<Option<LoadError>>>,
    ) -> VarBuilder<'static> {
        let backend = Self {
            store,
            layout,
            first_error,
        };
        VarBuilder::from_backend(Box::new(backend), dtype, device.clone())
    }

    fn record(&self, e: ModelError) -> candle_core::Error {
        let message = e.to_string();
        if let ModelError::Load(load) = e {
            let mut slot = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
            slot.get_or_insert(load);
        }
        candle_core::Error::Msg(message)
    }

    fn resolve(&self, name: &str) -> Result<Tensor> {
        match self.layout {
            KeyLayout::Identity => self.store.load(name),
            KeyLayout::FlamingoCheckpoint => match alternate_xattn_key(name) {
                Some(alt) if !self.store.contains(name) && self.store.contains(&alt) => {
                    self.store.load(&alt)
                }
                _ => self.store.load(name),
            },
            KeyLayout::HfClipAsOpenClip => match hf_clip_keys(name) {
                HfKey::One(key) => self.store.load(&key),
                HfKey::Concat(keys) => {
                    let parts = keys
                        .iter()
                        .map(|k| self.store.load(k))
                        .collect::<Result<Vec<_>>>()?;
                    Ok(Tensor::cat(&parts, 0)?)
                }
            },
        }
    }

    fn stored_key(&self, name: &str) -> String {
        match self.layout {
            KeyLayout::HfClipAsOpenClip => match hf_clip_keys(name) {
                HfKey::One(k) => k,
                HfKey::Concat(ks) => ks.join("+"),
            },
            _ => name.to_string(),
        }
    }
}

impl SimpleBackend for StoreBackend {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let tensor = self.resolve(name).map_err(|e| self.record(e))?;
        if tensor.dims() != shape.dims() {
            let key = self.stored_key(name);
            let file = self.store.file_of(key.split('+').next().unwrap_or(&key));
            let e = LoadError::ShapeMismatch {
                key,
                file: file.map(Path::to_path_buf).unwrap_or_default(),
                expected: shape.dims().to_vec(),
                found: tensor.dims().to_vec(),
            };
            return Err(self.record(e.into()));
        }
        tensor.to_dtype(dtype)?.to_device(dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let tensor = self.resolve(name).map_err(|e| self.record(e))?;
        tensor.to_dtype(dtype)?.to_device(dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        match self.layout {
            KeyLayout::Identity => self.store.contains(name),
            KeyLayout::FlamingoCheckpoint => {
                self.store.contains(name)
                    || alternate_xattn_key(name).is_some_and(|k| self.store.contains(&k))
            }
            KeyLayout::HfClipAsOpenClip => match hf_clip_keys(name) {
                HfKey::One(k) => self.store.contains(&k),
                HfKey::Concat(ks) => ks.iter().all(|k| self.store.contains(k)),
            },
        }
    }
}

/// Weights drawn from N(0, 0.02) (norm scales 1), for benchmarking shapes without files.
#[derive(Default)]
pub struct RandomWeights;

impl SimpleBackend for RandomWeights {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let is_norm_scale = shape.rank() == 1 && name.ends_with("weight");
        let t = if is_norm_scale {
            Tensor::ones(shape, DType::F32, dev)?
        } else {
            Tensor::randn(0f32, 0.02, shape, dev)?
        };
        t.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("random weights need a shape for {name}")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

const XATTN_IN_LAYER: &str = "lang_encoder.model.layers.";
const XATTN_LIST: &str = "lang_encoder.gated_cross_attn_layers.";
const XATTN_SUFFIX: &str = ".gated_cross_attn_layer.";

/// `lang_encoder.model.layers.X.gated_cross_attn_layer.S` <-> `lang_encoder.gated_cross_attn_layers.X.S`
fn alternate_xattn_key(name: &str) -> Option<String> {
    if let Some(rest) = name.strip_prefix(XATTN_IN_LAYER) {
        let (layer, suffix) = rest.split_once(XATTN_SUFFIX)?;
        return Some(format!("{XATTN_LIST}{layer}.{suffix}"));
    }
    None
}

enum HfKey {
    One(String),
    Concat([String; 3]),
}

/// open_clip vision key -> HF CLIP key(s) (docs/architecture.md §12).
fn hf_clip_keys(name: &str) -> HfKey {
    let Some(rest) = name.strip_prefix("visual.") else {
        return HfKey::One(name.to_string());
    };
    let m = "vision_model.";
    let fixed = match rest {
        "class_embedding" => Some("embeddings.class_embedding"),
        "conv1.weight" => Some("embeddings.patch_embedding.weight"),
        "positional_embedding" => Some("embeddings.position_embedding.weight"),
        "ln_pre.weight" => Some("pre_layrnorm.weight"),
        "ln_pre.bias" => Some("pre_layrnorm.bias"),
        "ln_post.weight" => Some("post_layernorm.weight"),
        "ln_post.bias" => Some("post_layernorm.bias"),
        _ => None,
    };
    if let Some(f) = fixed {
        return HfKey::One(format!("{m}{f}"));
    }
    if let Some(block) = rest.strip_prefix("transformer.resblocks.") {
        if let Some((i, suffix)) = block.split_once('.') {
            let layer = format!("{m}encoder.layers.{i}.");
            if let Some(kind) = suffix.strip_prefix("attn.in_proj_") {
                return HfKey::Concat(
                    ["q", "k", "v"].map(|p| format!("{layer}self_attn.{p}_proj.{kind}")),
                );
            }
            let mapped = suffix
                .replace("attn.out_proj", "self_attn.out_proj")
                .replace("ln_1", "layer_norm1")
                .replace("ln_2", "layer_norm2")
                .replace("mlp.c_fc", "mlp.fc1")
                .replace("mlp.c_proj", "mlp.fc2");
            return HfKey::One(format!("{layer}{mapped}"));
        }
    }
    HfKey::One(format!("{m}{rest}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xattn_keys_have_an_alias() {
        assert_eq!(
            alternate_xattn_key(
                "lang_encoder.model.layers.3.gated_cross_attn_layer.attn.to_q.weight"
            )
            .as_deref(),
            Some("lang_encoder.gated_cross_attn_layers.3.attn.to_q.weight")
        );
        assert_eq!(alternate_xattn_key("perceiver.latents"), None);
    }

    #[test]
    fn open_clip_names_map_to_hf() {
        match hf_clip_keys("visual.transformer.resblocks.5.attn.in_proj_weight") {
            HfKey::Concat(k) => assert_eq!(
                k[1],
                "vision_model.encoder.layers.5.self_attn.k_proj.weight"
            ),
            HfKey::One(_) => panic!("in_proj must be split"),
        }
        match hf_clip_keys("visual.transformer.resblocks.0.mlp.c_proj.bias") {
            HfKey::One(k) => assert_eq!(k, "vision_model.encoder.layers.0.mlp.fc2.bias"),
            HfKey::Concat(_) => panic!(),
        }
        match hf_clip_keys("visual.ln_pre.weight") {
            HfKey::One(k) => assert_eq!(k, "vision_model.pre_layrnorm.weight"),
            HfKey::Concat(_) => panic!(),
        }
    }
}
