//! Loading: model paths from the config, load options, tokenizer, worker; the `/info` summary.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use candle_core::{DType, Device};
use flamingo_model::config::FlamingoConfig;
use flamingo_model::engine::Engine;
use flamingo_model::linear::Quantization;
use flamingo_model::tokenizer::FlamingoTokenizer;
use flamingo_model::{Flamingo, LoadOptions, MediaRule, ModelPaths, VisionWeights};

use crate::api::{Architecture, LoadedModel};
use crate::budget::MemoryBudget;
use crate::config::{Config, DTypeName, MediaRuleName, QuantizationName, DEFAULT_MODEL_DIR};
use crate::state::Runtime;
use crate::testing::TestHooks;
use crate::validation::PrepContext;
use crate::worker::cache::{FeatureCache, SharedFeatureCache};
use crate::worker::policy::KvShape;
use crate::worker::{self, WorkerConfig};

/// A relative path is taken from the working directory; if it is not there, from the source
/// checkout the binary was built in, so the bundled tiny model is found from anywhere in a
/// fresh clone.
pub fn resolve(path: &Path) -> PathBuf {
    if path.is_absolute() || path.exists() {
        return path.to_path_buf();
    }
    let from_checkout = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path);
    if from_checkout.exists() {
        from_checkout
    } else {
        path.to_path_buf()
    }
}

pub fn model_paths(cfg: &Config) -> Result<ModelPaths, String> {
    let m = &cfg.model;
    let dir = resolve(&m.dir);
    let separate = m.llama_dir.is_some()
        && m.checkpoint.is_some()
        && (m.vision_weights.is_some() || m.vision_hf_dir.is_some());
    let mut paths = match ModelPaths::from_dir(&dir) {
        Ok(p) => p,
        Err(_) if separate => {
            let llama = resolve(m.llama_dir.as_deref().unwrap_or(Path::new("")));
            ModelPaths {
                tokenizer: llama.join("tokenizer.json"),
                llama_dir: llama,
                vision: VisionWeights::HfClip {
                    dir: PathBuf::new(),
                },
                checkpoint: PathBuf::new(),
                flamingo_config: None,
            }
        }
        Err(e) => {
            let hint = if m.dir == Path::new(DEFAULT_MODEL_DIR) {
                " (the default is the bundled tiny model; set model.dir / --model-dir, or llama_dir + checkpoint + vision_weights)"
            } else {
                ""
            };
            return Err(format!("model.dir = {}: {e}{hint}", dir.display()));
        }
    };
    if let Some(l) = &m.llama_dir {
        paths.llama_dir = resolve(l);
        paths.tokenizer = paths.llama_dir.join("tokenizer.json");
    }
    if let Some(v) = &m.vision_weights {
        paths.vision = flamingo_model::paths::open_clip_in(&resolve(v))
            .map_err(|e| format!("model.vision_weights: {e}"))?;
    }
    if let Some(v) = &m.vision_hf_dir {
        paths.vision = VisionWeights::HfClip { dir: resolve(v) };
    }
    if let Some(c) = &m.checkpoint {
        paths.checkpoint = resolve(c);
    }
    if let Some(c) = &m.flamingo_config {
        paths.flamingo_config = Some(resolve(c));
    }
    if let Some(t) = &m.tokenizer {
        paths.tokenizer = resolve(t);
    }
    Ok(paths)
}

fn device(name: &str) -> Result<Device, String> {
    if name == "cpu" {
        return Ok(Device::Cpu);
    }
    let ordinal = name
        .strip_prefix("cuda:")
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    Device::new_cuda(ordinal).map_err(|e| {
        format!("model.device = {name}: {e} (is this binary built with `--features cuda`, and is a GPU visible?)")
    })
}

fn load_options(cfg: &Config) -> Result<(LoadOptions, Option<Quantization>), String> {
    let m = &cfg.model;
    let dtype = match m.dtype {
        DTypeName::F32 => DType::F32,
        DTypeName::F16 => DType::F16,
        DTypeName::Bf16 => DType::BF16,
    };
    let media_rule = match m.media_rule {
        MediaRuleName::NextImage => MediaRule::NextImage,
        MediaRuleName::PreviousImage => MediaRule::PreviousImage,
    };
    let quant = match m.quantization {
        QuantizationName::None => None,
        QuantizationName::Q8_0 => Some(Quantization::Q8_0),
        QuantizationName::Q4k => Some(Quantization::Q4K),
    };
    Ok((
        LoadOptions {
            dtype,
            device: device(&m.device)?,
            media_rule: Some(media_rule),
        },
        quant,
    ))
}

/// Loads the model and tokenizer and starts the worker (blocking; minutes for the 9B model).
pub fn load_runtime(cfg: &Config, hooks: &TestHooks) -> Result<Runtime, String> {
    let paths = model_paths(cfg)?;
    let (opts, quant) = load_options(cfg)?;
    let started = Instant::now();
    tracing::info!(llama = %paths.llama_dir.display(), checkpoint = %paths.checkpoint.display(), dtype = %cfg.model.dtype, device = %cfg.model.device, "loading the model");
    let model =
        Flamingo::load_with(&paths, &opts, quant).map_err(|e| format!("loading the model: {e}"))?;
    let tokenizer = Arc::new(
        FlamingoTokenizer::from_file(&paths.tokenizer)
            .map_err(|e| format!("model.tokenizer ({}): {e}", paths.tokenizer.display()))?,
    );
    model
        .check_tokenizer(&tokenizer)
        .map_err(|e| format!("model.tokenizer ({}): {e}", paths.tokenizer.display()))?;
    crate::filter::warm_up();
    let hooks = hooks.prepare(&tokenizer)?;
    let model = Arc::new(model);
    let mc = model.config();
    let model_info = LoadedModel {
        quantization: cfg.model.quantization,
        media_rule: cfg.model.media_rule,
        max_positions: model.max_positions(),
        vocab_size: mc.vocab_size(),
        architecture: Architecture {
            vision_width: mc.vision.width,
            vision_layers: mc.vision.layers,
            image_size: mc.vision.image_size,
            hidden_size: mc.llama.hidden_size,
            layers: mc.llama.num_hidden_layers,
            cross_attn_every_n_layers: mc.cross_attn_every_n_layers,
        },
    };
    let kv = kv_shape(model.config(), model.dtype());
    let max_kv_bytes = kv_budget(cfg);
    let cache: SharedFeatureCache = Arc::new(Mutex::new(FeatureCache::new(
        cfg.limits.image_cache_entries,
    )));
    let prep = Arc::new(PrepContext {
        tokenizer: tokenizer.clone(),
        limits: cfg.limits.clone(),
        spec: model.spec(),
        max_prompt_bytes: cfg
            .limits
            .max_input_tokens
            .saturating_mul(tokenizer.max_piece_bytes()),
        kv,
        max_kv_bytes,
        cache: cache.clone(),
        decode_budget: MemoryBudget::new(cfg.limits.preprocess_memory_bytes as usize),
        encode_images: cfg
            .limits
            .encode_images_in_preprocessing
            .then(|| rayon::ThreadPoolBuilder::new().num_threads(1).build())
            .transpose()
            .map_err(|e| format!("starting the image encoding thread: {e}"))?
            .map(|pool| (pool, Engine::new(model.clone()))),
    });
    let l = &cfg.limits;
    let worker = worker::spawn(
        model,
        WorkerConfig {
            max_batch_size: l.max_batch_size,
            max_batch_tokens: l.max_batch_tokens,
            max_kv_bytes,
            max_prefill_chunk_tokens: l.max_prefill_chunk_tokens,
            prefix_cache_bytes: l.prefix_cache_bytes,
            cache,
            max_queue: l.max_queue,
            retry_after_s: cfg.server.retry_after_s,
            hooks,
        },
    )
    .map_err(|e| format!("starting the model worker: {e}"))?;
    tracing::info!(
        seconds = started.elapsed().as_secs_f64(),
        max_positions = prep.spec.max_positions,
        "model loaded"
    );
    let fetcher = crate::fetch::Fetcher::from_config(&cfg.server, &cfg.limits)?.map(Arc::new);
    if fetcher.is_some() {
        tracing::info!(
            mode = %cfg.server.image_url_mode,
            allowlist = ?cfg.server.image_url_allowlist,
            allow_private = ?cfg.server.image_url_allow_private,
            "image URL fetching is on"
        );
    }
    let slots = match l.preprocess_slots {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
        n => n,
    };
    tracing::info!(
        max_kv_bytes,
        kv_bytes_per_position = kv.per_token,
        kv_bytes_per_image = kv.per_image,
        preprocess_slots = slots,
        "admission budgets"
    );
    Ok(Runtime {
        tokenizer,
        prep,
        worker,
        prep_slots: Arc::new(tokio::sync::Semaphore::new(slots)),
        model_info,
        fetcher,
    })
}

/// KV-cache bytes per position and per image of one row, from the model's shape.
pub fn kv_shape(mc: &FlamingoConfig, dtype: DType) -> KvShape {
    let bytes = dtype.size_in_bytes();
    let ll = &mc.llama;
    let head_dim = ll.hidden_size / ll.num_attention_heads.max(1);
    let kv_heads = ll.num_key_value_heads.unwrap_or(ll.num_attention_heads);
    let per_token = ll.num_hidden_layers * 2 * kv_heads * head_dim * bytes;
    let xattn_layers = ll
        .num_hidden_layers
        .div_ceil(mc.cross_attn_every_n_layers.max(1));
    let per_image =
        xattn_layers * 2 * mc.resampler.num_latents * mc.xattn.heads * mc.xattn.dim_head * bytes;
    KvShape {
        per_token,
        per_image,
    }
}

/// `limits.max_kv_bytes`, or the automatic default: on the CPU half the memory available now
/// (the weights are loaded already), on a GPU 16 GiB.
fn kv_budget(cfg: &Config) -> usize {
    if cfg.limits.max_kv_bytes > 0 {
        return cfg.limits.max_kv_bytes as usize;
    }
    const GPU_DEFAULT: usize = 16 << 30;
    if cfg.model.device != "cpu" {
        return GPU_DEFAULT;
    }
    let available = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemAvailable:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        })
        .map(|kb| kb * 1024);
    available.map_or(4 << 30, |a| a / 2)
}
