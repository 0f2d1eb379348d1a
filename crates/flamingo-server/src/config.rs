//! Server configuration: `config/default.toml` layout, overridden by `FLAMINGO_<SECTION>_<KEY>`
//! environment variables, then by CLI flags. Unknown keys and invalid values stop startup.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::filter::FilterConfig;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub model: ModelConfig,
    pub limits: Limits,
    pub filter: FilterConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server: ServerConfig::default(),
            model: ModelConfig::default(),
            limits: Limits::default(),
            filter: FilterConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub host: String,
    pub port: u16,
    /// Deadline of a request from arrival to its last token (504 after it).
    pub request_timeout_s: u64,
    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish.
    pub drain_timeout_s: u64,
    /// `text` or `json`.
    pub log_format: String,
    /// Bearer keys accepted on the API routes; empty = no authentication.
    pub api_keys: Vec<String>,
    /// Origins allowed by CORS (`*` for any); empty = same-origin only.
    pub cors_origins: Vec<String>,
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
    /// Seconds suggested in `Retry-After` when the queue is full.
    pub retry_after_s: u64,
    /// Fetch http(s) image URLs. Not supported: such URLs are refused with 422.
    pub allow_image_urls: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8080,
            request_timeout_s: 300,
            drain_timeout_s: 30,
            log_format: "text".into(),
            api_keys: Vec::new(),
            cors_origins: Vec::new(),
            max_body_bytes: 25 * 1024 * 1024,
            retry_after_s: 1,
            allow_image_urls: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// A folder laid out like the fixture (llama/, vision/ or vision_hf/, checkpoint.pt).
    pub dir: PathBuf,
    /// Separate paths; each one set overrides the folder's.
    pub llama_dir: Option<PathBuf>,
    pub vision_weights: Option<PathBuf>,
    pub vision_hf_dir: Option<PathBuf>,
    pub checkpoint: Option<PathBuf>,
    pub flamingo_config: Option<PathBuf>,
    pub tokenizer: Option<PathBuf>,
    /// Name reported by /info and /v1/models.
    pub id: String,
    /// `f32`, `f16` or `bf16`.
    pub dtype: String,
    /// `cpu` or `cuda` / `cuda:N` (needs the `cuda` build feature).
    pub device: String,
    /// `next_image` (v1 release semantics) or `previous_image` (v2).
    pub media_rule: String,
    /// `none`, `q8_0` or `q4k`: quantize the LLaMA projections, xattn feed-forwards and lm_head.
    pub quantization: String,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("tests/fixtures/tiny-openflamingo"),
            llama_dir: None,
            vision_weights: None,
            vision_hf_dir: None,
            checkpoint: None,
            flamingo_config: None,
            tokenizer: None,
            id: "openflamingo-9b".into(),
            dtype: "f32".into(),
            device: "cpu".into(),
            media_rule: "next_image".into(),
            quantization: "none".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Sequences decoded together in one step.
    pub max_batch_size: usize,
    /// Tokens processed in one step (prompts being prefilled + one per decoding sequence).
    pub max_batch_tokens: usize,
    /// Requests waiting for the batch; more get 429.
    pub max_queue: usize,
    pub max_input_tokens: usize,
    pub max_new_tokens: usize,
    pub max_images: usize,
    pub max_image_bytes: usize,
    pub max_image_side: u32,
    pub max_image_pixels: u64,
    pub max_beams: usize,
    pub max_stop_sequences: usize,
    /// Resampled image features kept for reuse (few-shot prompts resend their examples).
    pub image_cache_entries: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_batch_size: 32,
            max_batch_tokens: 4096,
            max_queue: 128,
            max_input_tokens: 1024,
            max_new_tokens: 512,
            max_images: 16,
            max_image_bytes: 20 * 1024 * 1024,
            max_image_side: 8192,
            max_image_pixels: 40_000_000,
            max_beams: 8,
            max_stop_sequences: 4,
            image_cache_entries: 256,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("invalid value for {key}: {message}")]
    Invalid { key: String, message: String },
}

impl Config {
    /// File (if any), then `FLAMINGO_*` environment overrides, then validation.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let mut table: toml::Table = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| ConfigError::File { path: p.to_path_buf(), message: e.to_string() })?;
                text.parse().map_err(|e: toml::de::Error| ConfigError::File { path: p.to_path_buf(), message: e.to_string() })?
            }
            None => toml::Table::new(),
        };
        apply_env(&mut table, std::env::vars())?;
        let cfg: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::File {
                path: path.map(Path::to_path_buf).unwrap_or_else(|| "<defaults + environment>".into()),
                message: e.to_string(),
            })?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, message: &str| Err(ConfigError::Invalid { key: key.into(), message: message.into() });
        let l = &self.limits;
        for (key, v) in [
            ("limits.max_batch_size", l.max_batch_size),
            ("limits.max_batch_tokens", l.max_batch_tokens),
            ("limits.max_queue", l.max_queue),
            ("limits.max_input_tokens", l.max_input_tokens),
            ("limits.max_new_tokens", l.max_new_tokens),
            ("limits.max_beams", l.max_beams),
        ] {
            if v == 0 {
                return bad(key, "must be at least 1");
            }
        }
        if !["f32", "f16", "bf16"].contains(&self.model.dtype.as_str()) {
            return bad("model.dtype", "expected f32, f16 or bf16");
        }
        if !(self.model.device == "cpu" || self.model.device.starts_with("cuda")) {
            return bad("model.device", "expected cpu, cuda or cuda:N");
        }
        if !["next_image", "previous_image"].contains(&self.model.media_rule.as_str()) {
            return bad("model.media_rule", "expected next_image or previous_image");
        }
        if !["none", "q8_0", "q4k"].contains(&self.model.quantization.as_str()) {
            return bad("model.quantization", "expected none, q8_0 or q4k");
        }
        if !["text", "json"].contains(&self.server.log_format.as_str()) {
            return bad("server.log_format", "expected text or json");
        }
        if self.server.max_body_bytes < 1024 {
            return bad("server.max_body_bytes", "must be at least 1024");
        }
        if self.server.allow_image_urls {
            return bad("server.allow_image_urls", "fetching image URLs is not supported by this build");
        }
        Ok(())
    }
}

/// `FLAMINGO_LIMITS_MAX_QUEUE=4` sets `limits.max_queue`. Values parse as TOML when they can
/// (numbers, booleans, arrays), else are taken as strings.
fn apply_env(table: &mut toml::Table, vars: impl Iterator<Item = (String, String)>) -> Result<(), ConfigError> {
    const SECTIONS: [&str; 4] = ["server", "model", "limits", "filter"];
    for (var, value) in vars {
        let Some(rest) = var.strip_prefix("FLAMINGO_") else { continue };
        let lower = rest.to_ascii_lowercase();
        let Some(section) = SECTIONS.iter().find(|s| lower.starts_with(&format!("{s}_"))) else {
            continue;
        };
        let key = lower[section.len() + 1..].to_string();
        let parsed = format!("v = {value}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or(toml::Value::String(value.clone()));
        let entry = table.entry(section.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        match entry {
            toml::Value::Table(t) => {
                t.insert(key, parsed);
            }
            _ => return Err(ConfigError::Env { var, message: format!("`{section}` is not a section") }),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_overrides_and_unknown_keys() {
        let mut t = toml::Table::new();
        let vars = vec![
            ("FLAMINGO_LIMITS_MAX_QUEUE".to_string(), "4".to_string()),
            ("FLAMINGO_MODEL_DTYPE".to_string(), "f16".to_string()),
            ("OTHER".to_string(), "x".to_string()),
        ];
        apply_env(&mut t, vars.into_iter()).unwrap();
        let cfg: Config = toml::Value::Table(t).try_into().unwrap();
        assert_eq!(cfg.limits.max_queue, 4);
        assert_eq!(cfg.model.dtype, "f16");
        let unknown: Result<Config, _> = toml::from_str("[limits]\nmax_qeue = 3\n");
        assert!(unknown.unwrap_err().to_string().contains("max_qeue"));
    }

    #[test]
    fn invalid_values_are_named() {
        let mut cfg = Config::default();
        cfg.limits.max_batch_size = 0;
        assert!(cfg.validate().unwrap_err().to_string().contains("limits.max_batch_size"));
        let mut cfg = Config::default();
        cfg.model.dtype = "f64".into();
        assert!(cfg.validate().unwrap_err().to_string().contains("model.dtype"));
    }

    #[test]
    fn default_toml_matches_the_struct() {
        let text = include_str!("../../../config/default.toml");
        let cfg: Config = toml::from_str(text).expect("config/default.toml parses with no unknown keys");
        cfg.validate().unwrap();
    }
}
