//! Hyper-parameters. `FlamingoConfig::openflamingo_9b()` is the released model; a small
//! `openflamingo_config.json` (the fixture's format) overrides it field by field.

use serde::Deserialize;
use std::path::Path;

use crate::error::{ModelError, Result};
use crate::preprocess::PixelSpec;

/// Which image a text token cross-attends to (docs/architecture.md §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum MediaRule {
    /// open-flamingo 0.0.2 (the release the checkpoint shipped with): a token attends to the
    /// *next* image; generated tokens attend to none.
    #[default]
    NextImage,
    /// open-flamingo 2.0.x: a token attends to the most recent image at or before it;
    /// generated tokens attend to the last prompt image.
    PreviousImage,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VisionConfig {
    pub image_size: usize,
    pub patch_size: usize,
    pub width: usize,
    pub layers: usize,
    pub heads: usize,
    pub mlp_ratio: f64,
    pub layer_norm_eps: f64,
}

impl VisionConfig {
    /// CLIP ViT-L/14 at 224 px (open_clip `ViT-L-14`).
    pub fn vit_l_14() -> Self {
        Self {
            image_size: 224,
            patch_size: 14,
            width: 1024,
            layers: 24,
            heads: 16,
            mlp_ratio: 4.0,
            layer_norm_eps: 1e-5,
        }
    }
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }
    pub fn num_patches(&self) -> usize {
        self.grid() * self.grid()
    }
    pub fn mlp_width(&self) -> usize {
        (self.width as f64 * self.mlp_ratio) as usize
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ResamplerConfig {
    pub depth: usize,
    pub num_latents: usize,
    pub heads: usize,
    pub dim_head: usize,
    pub ff_mult: usize,
}

impl Default for ResamplerConfig {
    fn default() -> Self {
        Self {
            depth: 6,
            num_latents: 64,
            heads: 8,
            dim_head: 64,
            ff_mult: 4,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct XattnConfig {
    pub heads: usize,
    pub dim_head: usize,
    pub ff_mult: usize,
}

impl Default for XattnConfig {
    fn default() -> Self {
        Self {
            heads: 8,
            dim_head: 64,
            ff_mult: 4,
        }
    }
}

/// The fields of a HF LLaMA `config.json` that the decoder needs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct LlamaConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default = "default_rms_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    #[serde(default = "default_max_positions")]
    pub max_position_embeddings: usize,
    /// The base vocabulary (32000 for LLaMA); the model runs with 3 more rows.
    pub vocab_size: usize,
    #[serde(default = "default_bos")]
    pub bos_token_id: u32,
    #[serde(default = "default_eos")]
    pub eos_token_id: u32,
}

fn default_rms_eps() -> f64 {
    1e-6
}
fn default_rope_theta() -> f64 {
    10_000.0
}
fn default_max_positions() -> usize {
    2048
}
fn default_bos() -> u32 {
    1
}
fn default_eos() -> u32 {
    2
}

impl LlamaConfig {
    /// LLaMA-7B as converted by transformers 4.28.
    pub fn llama_7b() -> Self {
        Self {
            hidden_size: 4096,
            intermediate_size: 11008,
            num_hidden_layers: 32,
            num_attention_heads: 32,
            num_key_value_heads: None,
            rms_norm_eps: 1e-6,
            rope_theta: 10_000.0,
            max_position_embeddings: 2048,
            vocab_size: 32000,
            bos_token_id: 1,
            eos_token_id: 2,
        }
    }
    pub(crate) fn from_file(path: &Path) -> Result<Self> {
        read_json(path)
    }
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }
}

/// Everything needed to build the model.
#[derive(Debug, Clone, PartialEq)]
pub struct FlamingoConfig {
    pub vision: VisionConfig,
    pub resampler: ResamplerConfig,
    pub xattn: XattnConfig,
    pub llama: LlamaConfig,
    pub cross_attn_every_n_layers: usize,
    /// `<|endofchunk|>`, `<image>`, `<PAD>` are appended to the base vocabulary.
    pub added_tokens: usize,
    pub media_rule: MediaRule,
    /// How request images become the vision tower's input (size, mean, std), as the model files
    /// declare it.
    pub pixels: PixelSpec,
}

impl FlamingoConfig {
    /// OpenFlamingo-9B v1: CLIP ViT-L/14 + LLaMA-7B, xattn before every 4th layer.
    pub fn openflamingo_9b() -> Self {
        Self {
            vision: VisionConfig::vit_l_14(),
            resampler: ResamplerConfig::default(),
            xattn: XattnConfig::default(),
            llama: LlamaConfig::llama_7b(),
            cross_attn_every_n_layers: 4,
            added_tokens: 3,
            media_rule: MediaRule::NextImage,
            pixels: PixelSpec::CLIP_224,
        }
    }

    pub fn vocab_size(&self) -> usize {
        self.llama.vocab_size + self.added_tokens
    }

    pub fn vis_dim(&self) -> usize {
        self.vision.width
    }

    /// Decoder layer `i` (0-based) has a gated cross-attention block in front of it.
    pub fn has_xattn(&self, layer: usize) -> bool {
        (layer + 1).is_multiple_of(self.cross_attn_every_n_layers)
    }

    /// Applies an `openflamingo_config.json` (fixture format) on top of `self`.
    pub(crate) fn apply_overrides(&mut self, o: &FlamingoOverrides) {
        if let Some(n) = o.cross_attn_every_n_layers {
            self.cross_attn_every_n_layers = n;
        }
        if let Some(p) = &o.perceiver {
            set(&mut self.resampler.depth, p.depth);
            set(&mut self.resampler.num_latents, p.num_latents);
            set(&mut self.resampler.heads, p.heads);
            set(&mut self.resampler.dim_head, p.dim_head);
            set(&mut self.resampler.ff_mult, p.ff_mult);
        }
        if let Some(x) = &o.gated_xattn {
            set(&mut self.xattn.heads, x.heads);
            set(&mut self.xattn.dim_head, x.dim_head);
            set(&mut self.xattn.ff_mult, x.ff_mult);
        }
        if let Some(rule) = o.media_rule {
            self.media_rule = rule;
        }
        if let Some(p) = &o.image_preprocess {
            if let Some(size) = p.image_size {
                self.pixels.resize = size;
                self.pixels.size = size;
            }
            set(&mut self.pixels.size, p.center_crop);
            set(&mut self.pixels.mean, p.mean);
            set(&mut self.pixels.std, p.std);
        }
    }

    /// open_clip's `{model_cfg: {vision_cfg: ...}, preprocess_cfg: {...}}` (the
    /// `open_clip_config.json` of open_clip's Hugging Face uploads, and the fixture's). The image is
    /// resized and cropped to the tower's `image_size` (open_clip's eval transform).
    pub(crate) fn apply_open_clip_config(
        &mut self,
        c: &OpenClipConfig,
    ) -> std::result::Result<(), String> {
        let v = &c.model_cfg.vision_cfg;
        if let Some(size) = &v.image_size {
            self.vision.image_size = size.square("model_cfg.vision_cfg.image_size")?;
        }
        if let Some(size) = &v.patch_size {
            self.vision.patch_size = size.square("model_cfg.vision_cfg.patch_size")?;
        }
        set(&mut self.vision.width, v.width);
        set(&mut self.vision.layers, v.layers);
        if let Some(mlp) = v.mlp_ratio {
            self.vision.mlp_ratio = mlp;
        }
        if let Some(hw) = v.head_width {
            self.vision.heads = self.vision.width / hw;
        }
        self.pixels.resize = self.vision.image_size;
        self.pixels.size = self.vision.image_size;
        if let Some(p) = &c.preprocess_cfg {
            set(&mut self.pixels.mean, p.mean);
            set(&mut self.pixels.std, p.std);
            if let Some(i) = p.interpolation.as_deref().filter(|i| *i != "bicubic") {
                return Err(format!(
                    "preprocess_cfg.interpolation = {i:?}: only \"bicubic\" (open_clip's default) is supported"
                ));
            }
            if let Some(m) = p.resize_mode.as_deref().filter(|m| *m != "shortest") {
                return Err(format!(
                    "preprocess_cfg.resize_mode = {m:?}: only \"shortest\" (open_clip's default) is supported"
                ));
            }
        }
        Ok(())
    }

    /// HF `CLIPVisionConfig` json (`vision_hf/config.json`).
    pub(crate) fn apply_hf_clip_config(&mut self, c: &HfClipConfig) {
        let v = c.vision_config.as_ref().unwrap_or(&c.flat);
        set(&mut self.vision.image_size, v.image_size);
        set(&mut self.vision.patch_size, v.patch_size);
        set(&mut self.vision.width, v.hidden_size);
        set(&mut self.vision.layers, v.num_hidden_layers);
        set(&mut self.vision.heads, v.num_attention_heads);
        if let (Some(i), Some(h)) = (v.intermediate_size, v.hidden_size) {
            self.vision.mlp_ratio = i as f64 / h as f64;
        }
        if let Some(eps) = v.layer_norm_eps {
            self.vision.layer_norm_eps = eps;
        }
        self.pixels.resize = self.vision.image_size;
        self.pixels.size = self.vision.image_size;
    }

    /// HF `CLIPImageProcessor` json (`preprocessor_config.json` next to the HF CLIP weights): the
    /// resize target, crop and mean/std. Settings the eval transform cannot reproduce are errors.
    pub(crate) fn apply_hf_preprocessor_config(
        &mut self,
        c: &HfPreprocessorConfig,
    ) -> std::result::Result<(), String> {
        if let Some(r) = c.resample.filter(|&r| r != 3) {
            return Err(format!(
                "resample = {r}: only 3 (PIL bicubic, CLIP's) is supported"
            ));
        }
        if c.do_resize == Some(false) || c.do_center_crop == Some(false) {
            return Err(
                "do_resize / do_center_crop = false: images of any size need both to reach the vision tower's input size"
                    .into(),
            );
        }
        if let Some(f) = c.rescale_factor.filter(|f| (f - 1.0 / 255.0).abs() > 1e-12) {
            return Err(format!("rescale_factor = {f}: only 1/255 is supported"));
        }
        if c.do_rescale == Some(false) {
            return Err("do_rescale = false is not supported".into());
        }
        if let Some(size) = &c.size {
            self.pixels.resize = size.shortest_edge("size")?;
        }
        if let Some(crop) = &c.crop_size {
            self.pixels.size = crop.square("crop_size")?;
        }
        if c.do_normalize == Some(false) {
            self.pixels.mean = [0.0; 3];
            self.pixels.std = [1.0; 3];
        } else {
            set(&mut self.pixels.mean, c.image_mean);
            set(&mut self.pixels.std, c.image_std);
        }
        Ok(())
    }

    /// Why the loaded files describe a model the server cannot run, if they do: the crop must be
    /// the tower's input, the input a whole number of patches, the preprocessing well-formed.
    pub(crate) fn check_servable(&self) -> std::result::Result<(), String> {
        let v = &self.vision;
        if v.patch_size == 0 || v.image_size == 0 {
            return Err(format!(
                "vision image_size {} / patch_size {} must both be positive",
                v.image_size, v.patch_size
            ));
        }
        if !v.image_size.is_multiple_of(v.patch_size) {
            return Err(format!(
                "vision image_size {} is not a multiple of patch_size {}",
                v.image_size, v.patch_size
            ));
        }
        if self.pixels.size != v.image_size {
            return Err(format!(
                "image preprocessing crops to {} px but the vision tower takes {} px images",
                self.pixels.size, v.image_size
            ));
        }
        self.pixels
            .check()
            .map_err(|e| format!("image preprocessing: {e}"))
    }
}

fn set<T: Copy>(field: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *field = v;
    }
}

/// `openflamingo_config.json`: every field optional, unknown fields ignored (the fixture
/// carries descriptive strings too).
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct FlamingoOverrides {
    pub cross_attn_every_n_layers: Option<usize>,
    pub perceiver: Option<PerceiverOverrides>,
    pub gated_xattn: Option<XattnOverrides>,
    pub media_rule: Option<MediaRule>,
    pub image_preprocess: Option<ImagePreprocessOverrides>,
}

/// `image_preprocess` of `openflamingo_config.json` (the fixture format).
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct ImagePreprocessOverrides {
    pub image_size: Option<usize>,
    pub center_crop: Option<usize>,
    #[serde(default, deserialize_with = "rgb")]
    pub mean: Option<[f32; 3]>,
    #[serde(default, deserialize_with = "rgb")]
    pub std: Option<[f32; 3]>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct PerceiverOverrides {
    pub depth: Option<usize>,
    pub num_latents: Option<usize>,
    pub heads: Option<usize>,
    pub dim_head: Option<usize>,
    pub ff_mult: Option<usize>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct XattnOverrides {
    pub heads: Option<usize>,
    pub dim_head: Option<usize>,
    pub ff_mult: Option<usize>,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct OpenClipConfig {
    pub model_cfg: OpenClipModelCfg,
    #[serde(default)]
    pub preprocess_cfg: Option<OpenClipPreprocessCfg>,
}

/// open_clip's `preprocess_cfg` (`open_clip_config.json`).
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct OpenClipPreprocessCfg {
    #[serde(default, deserialize_with = "rgb")]
    pub mean: Option<[f32; 3]>,
    #[serde(default, deserialize_with = "rgb")]
    pub std: Option<[f32; 3]>,
    pub interpolation: Option<String>,
    pub resize_mode: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct OpenClipModelCfg {
    pub vision_cfg: OpenClipVisionCfg,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct OpenClipVisionCfg {
    /// open_clip accepts an int or `[height, width]`.
    pub image_size: Option<Side>,
    pub patch_size: Option<Side>,
    pub width: Option<usize>,
    pub layers: Option<usize>,
    pub head_width: Option<usize>,
    pub mlp_ratio: Option<f64>,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct HfClipConfig {
    pub vision_config: Option<HfClipVisionFields>,
    #[serde(flatten)]
    pub flat: HfClipVisionFields,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct HfClipVisionFields {
    pub image_size: Option<usize>,
    pub patch_size: Option<usize>,
    pub hidden_size: Option<usize>,
    pub intermediate_size: Option<usize>,
    pub num_hidden_layers: Option<usize>,
    pub num_attention_heads: Option<usize>,
    pub layer_norm_eps: Option<f64>,
}

/// An image side as configs write it: `224`, `[224, 224]`, `{"height": 224, "width": 224}` or
/// `{"shortest_edge": 224}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub(crate) enum Side {
    One(usize),
    Pair([usize; 2]),
    HeightWidth { height: usize, width: usize },
    ShortestEdge { shortest_edge: usize },
}

impl Side {
    /// The side of a square; `what` names the field in the error.
    pub(crate) fn square(&self, what: &str) -> std::result::Result<usize, String> {
        match *self {
            Side::One(n) | Side::ShortestEdge { shortest_edge: n } => Ok(n),
            Side::Pair([h, w])
            | Side::HeightWidth {
                height: h,
                width: w,
            } if h == w => Ok(h),
            Side::Pair([h, w])
            | Side::HeightWidth {
                height: h,
                width: w,
            } => Err(format!(
                "{what} = {h}x{w}: only square images are supported"
            )),
        }
    }

    /// The shorter side a resize targets (HF `size`).
    pub(crate) fn shortest_edge(&self, what: &str) -> std::result::Result<usize, String> {
        match self {
            Side::HeightWidth { .. } | Side::Pair(_) => Err(format!(
                "{what} = {self:?}: a fixed height x width resize (no aspect ratio kept) is not supported; use shortest_edge"
            )),
            _ => self.square(what),
        }
    }
}

/// HF `CLIPImageProcessor` / `CLIPFeatureExtractor` json (`preprocessor_config.json`).
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct HfPreprocessorConfig {
    pub size: Option<Side>,
    pub crop_size: Option<Side>,
    #[serde(default, deserialize_with = "rgb")]
    pub image_mean: Option<[f32; 3]>,
    #[serde(default, deserialize_with = "rgb")]
    pub image_std: Option<[f32; 3]>,
    pub resample: Option<u32>,
    pub do_resize: Option<bool>,
    pub do_center_crop: Option<bool>,
    pub do_normalize: Option<bool>,
    pub do_rescale: Option<bool>,
    pub rescale_factor: Option<f64>,
}

/// Three per-channel values, parsed as f64 (Python floats) and rounded to f32 the way
/// `torch.as_tensor` rounds them; a single number applies to every channel.
fn rgb<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Option<[f32; 3]>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Values {
        One(f64),
        Many(Vec<f64>),
    }
    Ok(match Option::<Values>::deserialize(d)? {
        None => None,
        Some(Values::One(v)) => Some([v as f32; 3]),
        Some(Values::Many(v)) => match v.as_slice() {
            [r, g, b] => Some([*r as f32, *g as f32, *b as f32]),
            [v] => Some([*v as f32; 3]),
            _ => {
                return Err(serde::de::Error::custom(format!(
                    "expected 3 channel values, got {}",
                    v.len()
                )))
            }
        },
    })
}

pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| ModelError::Config {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openflamingo_9b_places_eight_xattn_blocks() {
        let cfg = FlamingoConfig::openflamingo_9b();
        let layers: Vec<usize> = (0..cfg.llama.num_hidden_layers)
            .filter(|&i| cfg.has_xattn(i))
            .collect();
        assert_eq!(layers, vec![3, 7, 11, 15, 19, 23, 27, 31]);
        assert_eq!(cfg.vocab_size(), 32003);
        assert_eq!(cfg.vision.num_patches(), 256);
    }

    #[test]
    fn overrides_change_only_given_fields() {
        let mut cfg = FlamingoConfig::openflamingo_9b();
        let o: FlamingoOverrides = serde_json::from_str(
            r#"{"cross_attn_every_n_layers": 2, "perceiver": {"depth": 3}, "note": "x"}"#,
        )
        .unwrap();
        cfg.apply_overrides(&o);
        assert_eq!(cfg.cross_attn_every_n_layers, 2);
        assert_eq!(cfg.resampler.depth, 3);
        assert_eq!(cfg.resampler.num_latents, 64);
    }
}
