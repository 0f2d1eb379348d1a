//! The assembled model: vision tower + resampler produce image latents; the LLaMA decoder with
//! gated xattn blocks runs over packed batches of sequences, each with its own caches.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Embedding, RmsNorm};

use crate::linear::{Linear, Quantization};

use crate::config::{
    FlamingoConfig, FlamingoOverrides, HfClipConfig, HfPreprocessorConfig, LlamaConfig, MediaRule,
    OpenClipConfig,
};
use crate::error::{LoadError, ModelError, Result};
use crate::kv_cache::KvCache;
use crate::llama::{AttnRows, DecoderLayer, Rotary};
use crate::nn::{activation_dtype, activation_vb, rms_norm};
use crate::paths::{ModelPaths, VisionWeights};
use crate::perceiver::PerceiverResampler;
use crate::preprocess::PixelSpec;
use crate::tokenizer::FlamingoTokenizer;
use crate::vision::VisionTransformer;
use crate::weights::{hf_weight_files, KeyLayout, StoreBackend, TensorStore};
use crate::xattn::{GatedCrossAttention, MediaKv, XattnRows};

const EMBED_KEY: &str = "lang_encoder.model.embed_tokens.weight";

#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub dtype: DType,
    pub device: Device,
    /// Overrides the media rule of the config (v1 "next image" by default).
    pub media_rule: Option<MediaRule>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            dtype: DType::F32,
            device: Device::Cpu,
            media_rule: None,
        }
    }
}

/// One decoder layer and the xattn block in front of it, if any.
struct FlamingoLayer {
    xattn: Option<GatedCrossAttention>,
    decoder: DecoderLayer,
}

pub struct Flamingo {
    vision: VisionTransformer,
    perceiver: PerceiverResampler,
    embed_tokens: Embedding,
    layers: Vec<FlamingoLayer>,
    norm: RmsNorm,
    lm_head: Linear,
    rotary: Rotary,
    cfg: FlamingoConfig,
    dtype: DType,
    device: Device,
}

/// A sequence's caches: self-attention history per layer and its images' xattn keys/values.
pub struct SequenceState {
    kv: Vec<KvCache>,
    media: Option<Arc<Vec<Option<MediaKv>>>>,
    num_images: usize,
}

impl SequenceState {
    /// Tokens already processed (the position of the next one).
    pub fn position(&self) -> usize {
        self.kv.first().map_or(0, KvCache::len)
    }

    pub fn num_images(&self) -> usize {
        self.num_images
    }

    /// Copies of the self-attention history's first `n` positions, every layer (not the image
    /// keys/values: those belong to each request's own images).
    pub(crate) fn history_prefix(&self, n: usize) -> Result<Vec<KvCache>> {
        Ok(self
            .kv
            .iter()
            .map(|c| c.prefix(n))
            .collect::<candle_core::Result<_>>()?)
    }

    /// Starts a fresh sequence from a copy of an earlier one's history (same layers).
    pub(crate) fn set_history(&mut self, kv: Vec<KvCache>) {
        debug_assert_eq!(kv.len(), self.kv.len());
        self.kv = kv;
    }

    /// An independent copy for a new beam; image keys/values are shared.
    pub fn fork(&self) -> Result<Self> {
        Ok(Self {
            kv: self
                .kv
                .iter()
                .map(KvCache::deep_copy)
                .collect::<candle_core::Result<_>>()?,
            media: self.media.clone(),
            num_images: self.num_images,
        })
    }
}

/// New tokens of one sequence in a packed forward.
pub struct PackedInput<'a> {
    pub state: &'a mut SequenceState,
    pub tokens: &'a [u32],
    /// Per token, the 1-based image it cross-attends to (0 = none); see [`crate::media`].
    pub media_time: &'a [u32],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogitsFor {
    /// One row per sequence (generation).
    LastToken,
    /// One row per input token (scoring, parity tests).
    AllTokens,
}

/// Intermediate activations for parity tests, packed like the input.
#[derive(Default)]
pub struct Trace {
    /// Embeddings, then the output of each decoder layer.
    pub hidden_states: Vec<Tensor>,
    /// Output of the xattn block in front of decoder layer `i`.
    pub after_xattn: BTreeMap<usize, Tensor>,
}

impl Flamingo {
    pub fn load(paths: &ModelPaths, opts: &LoadOptions) -> Result<Self> {
        Self::load_with(paths, opts, None)
    }

    /// Like [`Flamingo::load`], quantizing the LLaMA projections, xattn feed-forwards and lm_head.
    pub fn load_with(
        paths: &ModelPaths,
        opts: &LoadOptions,
        quant: Option<Quantization>,
    ) -> Result<Self> {
        let cfg = resolve_config(paths, opts)?;
        let llama = Arc::new(TensorStore::open_hf_dir(&paths.llama_dir)?);
        let checkpoint = Arc::new(TensorStore::open(std::slice::from_ref(&paths.checkpoint))?);
        let (vision_store, vision_layout, vision_prefix) = match &paths.vision {
            VisionWeights::OpenClip { weights, .. } => {
                let store = TensorStore::open(std::slice::from_ref(weights))?;
                // A bare `VisionTransformer` state dict has no `visual.` prefix.
                let prefix = if store.contains("visual.conv1.weight") {
                    "visual"
                } else {
                    ""
                };
                (store, KeyLayout::Identity, prefix)
            }
            VisionWeights::HfClip { dir } => (
                TensorStore::open(&hf_weight_files(dir)?)?,
                KeyLayout::HfClipAsOpenClip,
                "visual",
            ),
        };
        let first_error = Arc::new(Mutex::new(None::<LoadError>));
        let vb = |store: &Arc<TensorStore>, layout| {
            StoreBackend::var_builder(
                store.clone(),
                layout,
                opts.dtype,
                &opts.device,
                first_error.clone(),
            )
        };
        let build = || -> candle_core::Result<Self> {
            let vision_vb = vb(&Arc::new(vision_store), vision_layout);
            let vision_vb = if vision_prefix.is_empty() {
                vision_vb
            } else {
                vision_vb.pp(vision_prefix)
            };
            Self::assemble(
                &cfg,
                vision_vb,
                vb(&llama, KeyLayout::Identity),
                vb(&checkpoint, KeyLayout::FlamingoCheckpoint),
                opts,
                quant,
            )
        };
        build().map_err(|e| {
            let typed = first_error.lock().unwrap_or_else(|p| p.into_inner()).take();
            typed.map_or_else(|| ModelError::from(e), ModelError::Load)
        })
    }

    /// Random weights in the given shape (benchmarks of configurations we have no files for).
    pub fn random(
        cfg: &FlamingoConfig,
        opts: &LoadOptions,
        quant: Option<Quantization>,
    ) -> Result<Self> {
        let vb = candle_nn::VarBuilder::from_backend(
            Box::new(crate::weights::RandomWeights),
            opts.dtype,
            opts.device.clone(),
        );
        Ok(Self::assemble(
            cfg,
            vb.pp("visual"),
            vb.clone(),
            vb,
            opts,
            quant,
        )?)
    }

    fn assemble(
        cfg: &FlamingoConfig,
        vision_vb: candle_nn::VarBuilder,
        llama_vb: candle_nn::VarBuilder,
        ckpt_vb: candle_nn::VarBuilder,
        opts: &LoadOptions,
        quant: Option<Quantization>,
    ) -> candle_core::Result<Self> {
        let l = &cfg.llama;
        let (h, vocab) = (l.hidden_size, cfg.vocab_size());
        let vis_dim = cfg.vis_dim();
        let layers = (0..l.num_hidden_layers)
            .map(|i| {
                let xattn = cfg
                    .has_xattn(i)
                    .then(|| {
                        let vb = ckpt_vb.pp(format!(
                            "lang_encoder.model.layers.{i}.gated_cross_attn_layer"
                        ));
                        GatedCrossAttention::new(
                            h,
                            vis_dim,
                            cfg.resampler.num_latents,
                            &cfg.xattn,
                            vb,
                            quant,
                        )
                    })
                    .transpose()?;
                Ok(FlamingoLayer {
                    xattn,
                    decoder: DecoderLayer::new(l, llama_vb.pp(format!("model.layers.{i}")), quant)?,
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        // The three added tokens have no trained lm_head rows (docs/architecture.md §5); zeros, as
        // the fixtures.
        let act_dtype = activation_dtype(opts.dtype, &opts.device);
        let head = llama_vb.get((l.vocab_size, h), "lm_head.weight")?;
        let extra = Tensor::zeros((vocab - l.vocab_size, h), head.dtype(), head.device())?;
        Ok(Self {
            vision: VisionTransformer::new(&cfg.vision, vision_vb)?,
            perceiver: PerceiverResampler::new(vis_dim, &cfg.resampler, ckpt_vb.pp("perceiver"))?,
            embed_tokens: Embedding::new(activation_vb(&ckpt_vb).get((vocab, h), EMBED_KEY)?, h),
            layers,
            norm: rms_norm(h, l.rms_norm_eps, llama_vb.pp("model.norm"))?,
            lm_head: Linear::from_weights(Tensor::cat(&[&head, &extra], 0)?, None, quant)?,
            rotary: Rotary::new(l, l.max_position_embeddings, act_dtype, &opts.device)?,
            cfg: cfg.clone(),
            dtype: act_dtype,
            device: opts.device.clone(),
        })
    }

    pub fn config(&self) -> &FlamingoConfig {
        &self.cfg
    }

    /// How request images must be preprocessed for this model's vision tower (size, mean, std
    /// from its files); `3 * size * size` values per image.
    pub fn pixel_spec(&self) -> PixelSpec {
        self.cfg.pixels
    }

    /// The immutable facts request validation needs (no access to the weights).
    pub fn spec(&self) -> crate::spec::ModelSpec {
        crate::spec::ModelSpec {
            vocab_size: self.cfg.vocab_size(),
            image_token_id: self.image_token_id(),
            end_of_chunk_token_id: self.end_of_chunk_token_id(),
            pad_token_id: self.pad_token_id(),
            max_positions: self.max_positions(),
            pixels: self.cfg.pixels,
            media_rule: self.cfg.media_rule,
        }
    }

    /// Checks that a tokenizer puts OpenFlamingo's added tokens where this model's embedding rows
    /// are (`<|endofchunk|>`, `<image>`, `<PAD>` = base vocabulary + 0/1/2) and yields no id past
    /// the model's vocabulary.
    pub fn check_tokenizer(&self, tok: &FlamingoTokenizer) -> Result<()> {
        let expected = [
            (
                "<|endofchunk|>",
                tok.end_of_chunk_id,
                self.end_of_chunk_token_id(),
            ),
            ("<image>", tok.image_id, self.image_token_id()),
            ("<PAD>", tok.pad_id, self.pad_token_id()),
        ];
        for (name, got, want) in expected {
            if got != want {
                return Err(ModelError::Tokenizer(format!(
                    "`{name}` has id {got} but the model expects {want} (LLaMA config vocab_size {} + the 3 OpenFlamingo tokens); is the tokenizer from another model?",
                    self.cfg.llama.vocab_size
                )));
            }
        }
        let vocab = self.cfg.vocab_size();
        if tok.vocab_size() > vocab {
            return Err(ModelError::Tokenizer(format!(
                "the tokenizer has {} tokens but the model's vocabulary has {vocab} rows",
                tok.vocab_size()
            )));
        }
        Ok(())
    }

    /// The activation dtype: f32 on the CPU whatever the weights are stored in, the load dtype on
    /// other devices (see [`crate::nn::activation_dtype`]).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn max_positions(&self) -> usize {
        self.rotary.max_positions()
    }

    /// Normalised pixels [N, 3, S, S] (any float dtype) -> patch tokens [N, P, vis_dim].
    pub fn vision_tokens(&self, pixels: &Tensor) -> Result<Tensor> {
        let pixels = pixels.to_dtype(self.dtype)?.to_device(&self.device)?;
        Ok(self.vision.forward(&pixels)?)
    }

    /// Patch tokens -> resampled latents [N, num_latents, vis_dim].
    pub fn resample(&self, tokens: &Tensor) -> Result<Tensor> {
        Ok(self.perceiver.forward(tokens)?)
    }

    /// Pixels -> image latents, one row per image. Images are independent, so any batching of
    /// them gives the same latents.
    pub fn encode_images(&self, pixels: &Tensor) -> Result<Tensor> {
        crate::kernels::on_pool(|| self.encode_images_on_pool(pixels))
    }

    fn encode_images_on_pool(&self, pixels: &Tensor) -> Result<Tensor> {
        let n = pixels.dim(0)?;
        if !self.device.is_cpu() {
            // A GPU wants the whole batch at once.
            return self.resample(&self.vision_tokens(pixels)?);
        }
        // On the CPU one image per pass keeps every activation of the tower in cache (batching 16
        // images measured ~15-30 % slower per image). With several images, whole images run on
        // the pool's threads side by side (each kernel then runs single-threaded, with no hand-off
        // between threads inside the tower); the images left over split each kernel over the pool.
        let one = |i: usize| self.resample(&self.vision_tokens(&pixels.narrow(0, i, 1)?)?);
        let threads = rayon::current_num_threads().max(1);
        let side_by_side = if !crate::kernels::in_serial() {
            n - n % threads
        } else {
            0
        };
        let mut parts = {
            use rayon::prelude::*;
            (0..side_by_side)
                .into_par_iter()
                .with_max_len(1)
                .map(|i| crate::kernels::serial(|| one(i)))
                .collect::<Result<Vec<_>>>()?
        };
        for i in side_by_side..n {
            parts.push(one(i)?);
        }
        Ok(Tensor::cat(&parts, 0)?)
    }

    /// Caches for a new sequence whose prompt has these images (latents [T_img, L, D]).
    pub fn new_sequence(&self, images: Option<&Tensor>) -> Result<SequenceState> {
        let media = match images {
            Some(m) if m.dim(0)? > 0 => {
                let m = m.to_dtype(self.dtype)?.to_device(&self.device)?;
                let per_layer = self
                    .layers
                    .iter()
                    .map(|l| l.xattn.as_ref().map(|x| x.media_kv(&m)).transpose())
                    .collect::<candle_core::Result<Vec<_>>>()?;
                Some(Arc::new(per_layer))
            }
            _ => None,
        };
        let num_images = match images {
            Some(m) => m.dim(0)?,
            None => 0,
        };
        Ok(SequenceState {
            kv: vec![KvCache::default(); self.layers.len()],
            media,
            num_images,
        })
    }

    /// One forward over the new tokens of several sequences, appending to their caches.
    /// Returns logits (f32) for the last token of each input, or for every token.
    pub fn forward(
        &self,
        inputs: &mut [PackedInput],
        logits_for: LogitsFor,
        trace: Option<&mut Trace>,
    ) -> Result<Tensor> {
        crate::kernels::on_pool(|| self.forward_on_pool(inputs, logits_for, trace))
    }

    fn forward_on_pool(
        &self,
        inputs: &mut [PackedInput],
        logits_for: LogitsFor,
        mut trace: Option<&mut Trace>,
    ) -> Result<Tensor> {
        let mut all_tokens = Vec::new();
        let mut spans = Vec::with_capacity(inputs.len());
        for input in inputs.iter() {
            if input.tokens.is_empty() || input.tokens.len() != input.media_time.len() {
                return Err(ModelError::Input(
                    "each sequence needs tokens with one media time each".into(),
                ));
            }
            if input.state.position() + input.tokens.len() > self.max_positions() {
                return Err(ModelError::Input(format!(
                    "sequence of {} tokens exceeds the model's {} positions",
                    input.state.position() + input.tokens.len(),
                    self.max_positions()
                )));
            }
            spans.push((all_tokens.len(), input.tokens.len()));
            all_tokens.extend_from_slice(input.tokens);
        }
        let ids = Tensor::new(all_tokens.as_slice(), &self.device)?;
        let mut x = self.embed_tokens.forward(&ids)?;
        if let Some(t) = trace.as_deref_mut() {
            t.hidden_states.push(x.clone());
        }
        for (i, layer) in self.layers.iter().enumerate() {
            if let Some(xattn) = &layer.xattn {
                let rows: Vec<XattnRows> = inputs
                    .iter()
                    .zip(&spans)
                    .map(|(input, &(start, len))| XattnRows {
                        start,
                        len,
                        media_time: input.media_time,
                        media: input.state.media.as_ref().and_then(|m| m[i].as_ref()),
                    })
                    .collect();
                x = xattn.forward(&x, &rows)?;
                if let Some(t) = trace.as_deref_mut() {
                    t.after_xattn.insert(i, x.clone());
                }
            }
            let mut rows: Vec<AttnRows> = inputs
                .iter_mut()
                .zip(&spans)
                .map(|(input, &(start, len))| {
                    let cache = &mut input.state.kv[i];
                    AttnRows {
                        start,
                        len,
                        position: cache.len(),
                        cache,
                    }
                })
                .collect();
            x = layer.decoder.forward(&x, &mut rows, &self.rotary)?;
            if let Some(t) = trace.as_deref_mut() {
                t.hidden_states.push(x.clone());
            }
        }
        let x = match logits_for {
            LogitsFor::AllTokens => x,
            LogitsFor::LastToken => {
                let last: Vec<u32> = spans.iter().map(|&(s, n)| (s + n - 1) as u32).collect();
                x.index_select(&Tensor::new(last.as_slice(), &self.device)?, 0)?
            }
        };
        let logits = x.apply(&self.norm)?.apply(&self.lm_head)?;
        Ok(logits.to_dtype(DType::F32)?)
    }

    /// Convenience for tests and scoring: a fresh sequence, full prompt, all logits [T, V].
    pub fn score_prompt(&self, tokens: &[u32], images: Option<&Tensor>) -> Result<Tensor> {
        let mut state = self.new_sequence(images)?;
        let media_time =
            crate::media::prompt_media_time(self.cfg.media_rule, tokens, self.image_token_id());
        let mut input = [PackedInput {
            state: &mut state,
            tokens,
            media_time: &media_time,
        }];
        self.forward(&mut input, LogitsFor::AllTokens, None)
    }

    pub fn image_token_id(&self) -> u32 {
        self.cfg.llama.vocab_size as u32 + 1
    }

    pub fn end_of_chunk_token_id(&self) -> u32 {
        self.cfg.llama.vocab_size as u32
    }

    pub fn pad_token_id(&self) -> u32 {
        self.cfg.llama.vocab_size as u32 + 2
    }
}

/// OpenFlamingo-9B preset, then LLaMA's config.json, the vision config and the override file.
pub fn resolve_config(paths: &ModelPaths, opts: &LoadOptions) -> Result<FlamingoConfig> {
    let mut cfg = FlamingoConfig::openflamingo_9b();
    cfg.llama = LlamaConfig::from_file(&paths.llama_dir.join("config.json"))?;
    let invalid = |path: &std::path::Path| {
        let path = path.to_path_buf();
        move |message| ModelError::Config { path, message }
    };
    match &paths.vision {
        VisionWeights::OpenClip {
            config: Some(c), ..
        } => cfg
            .apply_open_clip_config(&crate::config::read_json::<OpenClipConfig>(c)?)
            .map_err(invalid(c))?,
        VisionWeights::HfClip { dir } => {
            let config = dir.join("config.json");
            if config.is_file() {
                cfg.apply_hf_clip_config(&crate::config::read_json::<HfClipConfig>(&config)?);
            }
            let pre = dir.join("preprocessor_config.json");
            if pre.is_file() {
                cfg.apply_hf_preprocessor_config(
                    &crate::config::read_json::<HfPreprocessorConfig>(&pre)?,
                )
                .map_err(invalid(&pre))?;
            }
        }
        _ => {}
    }
    if let Some(path) = &paths.flamingo_config {
        cfg.apply_overrides(&crate::config::read_json::<FlamingoOverrides>(path)?);
    }
    cfg.check_servable().map_err(ModelError::Unsupported)?;
    if let Some(rule) = opts.media_rule {
        cfg.media_rule = rule;
    }
    if cfg.cross_attn_every_n_layers == 0 {
        return Err(ModelError::Layout(
            "cross_attn_every_n_layers must be at least 1".into(),
        ));
    }
    Ok(cfg)
}
