//! Server configuration: the layout of `config/default.toml`, overridden by
//! `FLAMINGO_<SECTION>_<KEY>` environment variables, then by CLI flags (in `main.rs`).
//! Unknown keys in a file and invalid values stop startup with a message naming them.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::filter::{FilterConfig, FilterMode, Severity};

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub model: ModelConfig,
    pub limits: Limits,
    pub filter: FilterSection,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub host: String,
    pub port: u16,
    /// Deadline of a request from arrival to its last token (504 after it).
    pub request_timeout_s: u64,
    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish.
    pub drain_timeout_s: u64,
    pub log_format: LogFormat,
    /// Bearer keys accepted on the API routes; empty = no authentication.
    pub api_keys: Vec<String>,
    /// Origins allowed by CORS (`*` for any); empty = no CORS headers (same origin only).
    pub cors_origins: Vec<String>,
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
    /// Seconds suggested in `Retry-After` on 429 and 503.
    pub retry_after_s: u64,
    /// Fetch http(s) image URLs (chat `image_url`, markdown `![](url)`, `images`, few-shot
    /// images). Off: such URLs get 422. See `fetch/` for the guards.
    pub allow_image_urls: bool,
    /// Which hosts: `allowlist` (only `image_url_allowlist`) or `public` (any host). In both,
    /// only public addresses are connected to unless `image_url_allow_private` holds them.
    pub image_url_mode: ImageUrlMode,
    /// Hosts fetched in `allowlist` mode: `images.example.com` exactly, `*.example.com` its
    /// subdomains.
    pub image_url_allowlist: Vec<String>,
    /// Non-public address ranges that may be fetched anyway (CIDRs such as `10.1.2.0/24` or
    /// single addresses); never cloud metadata, unspecified, multicast or broadcast addresses.
    pub image_url_allow_private: Vec<String>,
    /// Refuse `http://` image URLs (https only).
    pub image_url_https_only: bool,
    /// Name lookup + TCP connect + TLS handshake of one fetch (504 after it).
    pub image_url_connect_timeout_ms: u64,
    /// Whole fetch of one image, redirects and body included (504 after it).
    pub image_url_timeout_ms: u64,
    /// Largest fetched image in bytes; 0 = limits.max_image_bytes (413 over it).
    pub image_url_max_bytes: u64,
    /// Image fetches in flight at once in the process; more wait (until their request's deadline).
    pub image_url_max_concurrent: usize,
    /// Redirects followed per image (each target is checked again).
    pub image_url_max_redirects: usize,
    /// Open client connections at most; more are closed at once (slow clients cannot hold every
    /// file descriptor).
    pub max_connections: usize,
    /// A client must send a request's headers within this many seconds (slow-loris).
    pub header_read_timeout_s: u64,
    /// A keep-alive connection with no request in flight is closed after this many seconds.
    pub keep_alive_timeout_s: u64,
    /// On SIGTERM, seconds during which `/ready` answers 503 while requests are still accepted
    /// (the load balancer's time to notice), before the drain starts. 0 = drain at once.
    pub prestop_s: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8080,
            request_timeout_s: 300,
            drain_timeout_s: 30,
            log_format: LogFormat::Text,
            api_keys: Vec::new(),
            cors_origins: Vec::new(),
            max_body_bytes: 25 * 1024 * 1024,
            retry_after_s: 1,
            allow_image_urls: false,
            image_url_mode: ImageUrlMode::Allowlist,
            image_url_allowlist: Vec::new(),
            image_url_allow_private: Vec::new(),
            image_url_https_only: false,
            image_url_connect_timeout_ms: 5_000,
            image_url_timeout_ms: 15_000,
            image_url_max_bytes: 0,
            image_url_max_concurrent: 16,
            image_url_max_redirects: 3,
            max_connections: 1024,
            header_read_timeout_s: 10,
            keep_alive_timeout_s: 60,
            prestop_s: 0,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// A folder laid out like the fixture (llama/, vision/ or vision_hf/, checkpoint.pt).
    pub dir: PathBuf,
    /// Separate paths; each one set overrides the folder's part.
    pub llama_dir: Option<PathBuf>,
    pub vision_weights: Option<PathBuf>,
    pub vision_hf_dir: Option<PathBuf>,
    pub checkpoint: Option<PathBuf>,
    pub flamingo_config: Option<PathBuf>,
    pub tokenizer: Option<PathBuf>,
    /// Name reported by /info and /v1/models.
    pub id: String,
    pub dtype: DTypeName,
    /// `cpu`, `cuda` or `cuda:N` (needs the `cuda` build feature).
    pub device: String,
    pub media_rule: MediaRuleName,
    pub quantization: QuantizationName,
}

/// Declares a configuration enum: its TOML/CLI spellings, `as_str`, `Display`.
macro_rules! config_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
        pub enum $name {
            $($(#[$vdoc])* #[serde(rename = $text)] #[value(name = $text)] $variant),+
        }

        impl $name {
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text),+
                }
            }
        }

        // By hand: utoipa's derive does not see `serde(rename)` written by a macro.
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::Type::String)
                    .enum_values(Some([$($text),+]))
                    .into()
            }
        }

        impl utoipa::ToSchema for $name {}

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

config_enum!(
    /// Activation and weight dtype.
    DTypeName { F32 = "f32", F16 = "f16", Bf16 = "bf16" }
);
config_enum!(
    /// Which image a text token cross-attends to.
    MediaRuleName {
        /// open-flamingo 0.0.2, the released checkpoint: the next image.
        NextImage = "next_image",
        /// open-flamingo 2.x: the previous image.
        PreviousImage = "previous_image",
    }
);
config_enum!(
    /// Weight quantization of the LLaMA projections, xattn feed-forwards and lm_head.
    QuantizationName { None = "none", Q8_0 = "q8_0", Q4k = "q4k" }
);
config_enum!(
    /// Which hosts image URLs may name.
    ImageUrlMode {
        /// Only `image_url_allowlist`.
        Allowlist = "allowlist",
        /// Any host (public addresses only, unless `image_url_allow_private` says otherwise).
        Public = "public",
    }
);
config_enum!(
    /// Log line format.
    LogFormat { Text = "text", Json = "json" }
);

pub const DEFAULT_MODEL_DIR: &str = "tests/fixtures/tiny-openflamingo";

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from(DEFAULT_MODEL_DIR),
            llama_dir: None,
            vision_weights: None,
            vision_hf_dir: None,
            checkpoint: None,
            flamingo_config: None,
            tokenizer: None,
            id: "openflamingo-9b".into(),
            dtype: DTypeName::F32,
            device: "cpu".into(),
            media_rule: MediaRuleName::NextImage,
            quantization: QuantizationName::None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Rows decoded together in one step (a beam search takes one row per beam).
    pub max_batch_size: usize,
    /// Tokens processed in one step (prompts being prefilled + one per decoding row).
    pub max_batch_tokens: usize,
    /// Requests waiting to join the batch; more get 429.
    pub max_queue: usize,
    pub max_input_tokens: usize,
    pub max_new_tokens: usize,
    /// `max_new_tokens` when a request does not say (clamped to the context left).
    pub default_max_new_tokens: usize,
    pub max_images: usize,
    pub max_image_bytes: usize,
    pub max_image_side: u32,
    pub max_image_pixels: u64,
    pub max_beams: usize,
    pub max_stop_sequences: usize,
    /// Resampled image features kept for reuse (few-shot prompts resend their examples).
    pub image_cache_entries: usize,
    /// KV-cache bytes the running batch may reserve; 0 = automatic (CPU: half the memory
    /// available at startup; CUDA: 16 GiB).
    pub max_kv_bytes: u64,
    /// Requests preprocessed (tokenized, images decoded) at once; 0 = one per CPU.
    pub preprocess_slots: usize,
    /// Memory that concurrent image decodes may hold together (estimated from each header).
    pub preprocess_memory_bytes: u64,
    /// Prompt tokens one step prefills at most (over all joining requests); longer prompts are
    /// prefilled over several steps so decoding streams keep their pace. 0 = whole prompts.
    pub max_prefill_chunk_tokens: usize,
    /// Run the vision tower for a request's new images on its preprocessing thread instead of
    /// the model worker, so a newcomer's images never stall the batch's streams.
    pub encode_images_in_preprocessing: bool,
    /// Self-attention history kept at prompt boundaries (after each `<|endofchunk|>`) for
    /// later prompts that begin the same way with the same images: repeated few-shot examples
    /// and chat history skip their prefill. Outputs are identical with it. Held besides
    /// `max_kv_bytes`. 0 = off.
    pub prefix_cache_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_batch_size: 32,
            max_batch_tokens: 4096,
            max_queue: 128,
            max_input_tokens: 1024,
            max_new_tokens: 512,
            default_max_new_tokens: 20,
            max_images: 16,
            max_image_bytes: 20 * 1024 * 1024,
            max_image_side: 8192,
            max_image_pixels: 40_000_000,
            max_beams: 8,
            max_stop_sequences: 4,
            image_cache_entries: 256,
            max_kv_bytes: 0,
            preprocess_slots: 0,
            preprocess_memory_bytes: 1 << 30,
            max_prefill_chunk_tokens: 64,
            encode_images_in_preprocessing: false,
            prefix_cache_bytes: 1 << 30,
        }
    }
}

// `[filter]`; mirrors `FilterConfig` so that unknown keys are refused here too.
/// The output content filter's settings.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct FilterSection {
    pub mode: FilterMode,
    pub threshold: Severity,
    pub allowlist: bool,
}

impl Default for FilterSection {
    fn default() -> Self {
        let d = FilterConfig::default();
        Self {
            mode: d.mode,
            threshold: d.threshold,
            allowlist: d.allowlist,
        }
    }
}

impl FilterSection {
    pub fn to_filter_config(&self) -> FilterConfig {
        FilterConfig {
            mode: self.mode,
            threshold: self.threshold,
            allowlist: self.allowlist,
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

/// A loaded configuration plus what was ignored on the way (logged once tracing is up).
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<String>,
}

const SECTIONS: [&str; 4] = ["server", "model", "limits", "filter"];
/// Keys whose default is `None` (absent from the serialised defaults); all are paths.
const OPTIONAL_PATH_KEYS: [&str; 6] = [
    "llama_dir",
    "vision_weights",
    "vision_hf_dir",
    "checkpoint",
    "flamingo_config",
    "tokenizer",
];
/// `FLAMINGO_*` variables that are not configuration keys.
const NOT_CONFIG_VARS: [&str; 1] = ["FLAMINGO_CONFIG"];

impl Config {
    /// File (if any), then `FLAMINGO_*` environment overrides. Call [`Config::validate`] after the
    /// CLI flags are applied.
    pub fn load(
        path: Option<&Path>,
        env: impl Iterator<Item = (String, String)>,
    ) -> Result<Loaded, ConfigError> {
        let (mut table, origin) = match path {
            Some(p) => {
                let file_err = |message: String| ConfigError::File {
                    path: p.to_path_buf(),
                    message,
                };
                let text = std::fs::read_to_string(p).map_err(|e| file_err(e.to_string()))?;
                let table: toml::Table = text
                    .parse()
                    .map_err(|e: toml::de::Error| file_err(e.to_string()))?;
                // Checked before the environment is merged, so the message blames the file.
                Config::deserialize(toml::Value::Table(table.clone()))
                    .map_err(|e| file_err(e.to_string()))?;
                (table, p.display().to_string())
            }
            None => (toml::Table::new(), "<defaults>".to_string()),
        };
        let warnings = apply_env(&mut table, env)?;
        let config =
            Config::deserialize(toml::Value::Table(table)).map_err(|e| ConfigError::File {
                path: format!("{origin} + FLAMINGO_* environment").into(),
                message: e.to_string(),
            })?;
        Ok(Loaded { config, warnings })
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, message: String| {
            Err(ConfigError::Invalid {
                key: key.into(),
                message,
            })
        };
        let l = &self.limits;
        for (key, v) in [
            ("limits.max_batch_size", l.max_batch_size),
            ("limits.max_batch_tokens", l.max_batch_tokens),
            ("limits.max_queue", l.max_queue),
            ("limits.max_input_tokens", l.max_input_tokens),
            ("limits.max_new_tokens", l.max_new_tokens),
            ("limits.default_max_new_tokens", l.default_max_new_tokens),
            ("limits.max_beams", l.max_beams),
            ("limits.max_image_bytes", l.max_image_bytes),
            (
                "limits.preprocess_memory_bytes",
                l.preprocess_memory_bytes as usize,
            ),
            ("server.max_connections", self.server.max_connections),
            (
                "server.header_read_timeout_s",
                self.server.header_read_timeout_s as usize,
            ),
            (
                "server.keep_alive_timeout_s",
                self.server.keep_alive_timeout_s as usize,
            ),
        ] {
            if v == 0 {
                return bad(key, "must be at least 1".into());
            }
        }
        if l.default_max_new_tokens > l.max_new_tokens {
            return bad(
                "limits.default_max_new_tokens",
                format!(
                    "must not exceed limits.max_new_tokens ({})",
                    l.max_new_tokens
                ),
            );
        }
        if l.max_image_side == 0 || l.max_image_pixels == 0 {
            return bad(
                "limits.max_image_side / limits.max_image_pixels",
                "must be at least 1".into(),
            );
        }
        let device = self.model.device.as_str();
        let device_ok = device == "cpu"
            || device == "cuda"
            || device
                .strip_prefix("cuda:")
                .is_some_and(|n| n.parse::<usize>().is_ok());
        if !device_ok {
            return bad(
                "model.device",
                format!("`{device}`; expected cpu, cuda or cuda:N"),
            );
        }
        if self.model.id.trim().is_empty() {
            return bad("model.id", "must not be empty".into());
        }
        let s = &self.server;
        if s.host.trim().is_empty() {
            return bad("server.host", "must not be empty".into());
        }
        if s.request_timeout_s == 0 {
            return bad("server.request_timeout_s", "must be at least 1".into());
        }
        if s.max_body_bytes < 1024 {
            return bad("server.max_body_bytes", "must be at least 1024".into());
        }
        if s.api_keys
            .iter()
            .any(|k| k.trim().is_empty() || k.chars().any(char::is_whitespace))
        {
            return bad(
                "server.api_keys",
                "keys must be non-empty and contain no whitespace".into(),
            );
        }
        for o in &s.cors_origins {
            if o != "*" && !(o.starts_with("http://") || o.starts_with("https://")) {
                return bad(
                    "server.cors_origins",
                    format!("`{o}`: expected \"*\" or an origin like https://demo.example.com"),
                );
            }
            if axum::http::HeaderValue::from_str(o).is_err() {
                return bad(
                    "server.cors_origins",
                    format!("`{o}` is not a valid header value"),
                );
            }
        }
        for (key, v) in [
            (
                "server.image_url_connect_timeout_ms",
                s.image_url_connect_timeout_ms as usize,
            ),
            (
                "server.image_url_timeout_ms",
                s.image_url_timeout_ms as usize,
            ),
            (
                "server.image_url_max_concurrent",
                s.image_url_max_concurrent,
            ),
        ] {
            if v == 0 {
                return bad(key, "must be at least 1".into());
            }
        }
        if s.image_url_max_bytes > l.max_image_bytes as u64 {
            return bad(
                "server.image_url_max_bytes",
                format!(
                    "must not exceed limits.max_image_bytes ({}); 0 = that limit",
                    l.max_image_bytes
                ),
            );
        }
        if let Some(h) = s.image_url_allowlist.iter().find(|h| {
            let name = h.trim().strip_prefix("*.").unwrap_or(h.trim());
            let literal = name.trim_start_matches('[').trim_end_matches(']');
            literal.parse::<std::net::IpAddr>().is_err()
                && (name.is_empty()
                    || !name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')))
        }) {
            return bad(
                "server.image_url_allowlist",
                format!("`{h}`: expected a host name like images.example.com or *.example.com"),
            );
        }
        for c in &s.image_url_allow_private {
            if let Err(e) = crate::fetch::Cidr::parse(c) {
                return bad("server.image_url_allow_private", e);
            }
        }
        if s.allow_image_urls
            && s.image_url_mode == ImageUrlMode::Allowlist
            && s.image_url_allowlist.is_empty()
        {
            return bad(
                "server.image_url_allowlist",
                "server.allow_image_urls in allowlist mode needs at least one host (or server.image_url_mode = \"public\")".into(),
            );
        }
        Ok(())
    }

    /// The effective configuration as TOML (`--print-config`), API keys redacted: the output
    /// ends up in terminals, CI logs and support tickets.
    pub fn to_toml(&self) -> String {
        let mut shown = self.clone();
        for k in &mut shown.server.api_keys {
            *k = "<redacted>".into();
        }
        toml::to_string_pretty(&shown)
            .unwrap_or_else(|e| format!("# cannot render the configuration: {e}\n"))
    }
}

/// `FLAMINGO_LIMITS_MAX_QUEUE=4` sets `limits.max_queue`. The value is read with the type of the
/// key's default (numbers, booleans; arrays as TOML arrays or comma-separated lists). A variable
/// that names no key is reported back as a warning rather than refused: the environment is shared
/// with other tools (`FLAMINGO_SERVER_BIN` is the browser test's), and a file is where typos stop
/// startup.
fn apply_env(
    table: &mut toml::Table,
    vars: impl Iterator<Item = (String, String)>,
) -> Result<Vec<String>, ConfigError> {
    let defaults = match toml::Value::try_from(Config::default()) {
        Ok(toml::Value::Table(t)) => t,
        _ => toml::Table::new(),
    };
    let mut warnings = Vec::new();
    let mut vars: Vec<(String, String)> =
        vars.filter(|(k, _)| k.starts_with("FLAMINGO_")).collect();
    vars.sort();
    for (var, raw) in vars {
        if NOT_CONFIG_VARS.contains(&var.as_str()) || var.starts_with(crate::testing::ENV_PREFIX) {
            continue;
        }
        let lower = var["FLAMINGO_".len()..].to_ascii_lowercase();
        let found = SECTIONS.iter().find_map(|s| {
            lower
                .strip_prefix(&format!("{s}_"))
                .map(|k| (*s, k.to_string()))
        });
        let Some((section, key)) = found else {
            warnings.push(format!("ignoring {var}: it names no configuration section"));
            continue;
        };
        let default = defaults.get(section).and_then(|t| t.get(&key));
        let value = match default {
            Some(d) => typed(&raw, d).map_err(|message| ConfigError::Env {
                var: var.clone(),
                message,
            })?,
            None if section == "model" && OPTIONAL_PATH_KEYS.contains(&key.as_str()) => {
                toml::Value::String(raw.clone())
            }
            None => {
                warnings.push(format!("ignoring {var}: there is no key {section}.{key}"));
                continue;
            }
        };
        let entry = table
            .entry(section.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        match entry {
            toml::Value::Table(t) => {
                t.insert(key, value);
            }
            _ => {
                return Err(ConfigError::Env {
                    var,
                    message: format!("`{section}` is not a table in the file"),
                })
            }
        }
    }
    Ok(warnings)
}

fn typed(raw: &str, like: &toml::Value) -> Result<toml::Value, String> {
    let raw_t = raw.trim();
    Ok(match like {
        toml::Value::String(_) => toml::Value::String(raw.to_string()),
        toml::Value::Integer(_) => toml::Value::Integer(
            raw_t
                .parse()
                .map_err(|_| format!("expected an integer, got `{raw}`"))?,
        ),
        toml::Value::Float(_) => toml::Value::Float(
            raw_t
                .parse()
                .map_err(|_| format!("expected a number, got `{raw}`"))?,
        ),
        toml::Value::Boolean(_) => toml::Value::Boolean(match raw_t {
            "true" | "1" | "yes" | "on" => true,
            "false" | "0" | "no" | "off" => false,
            _ => return Err(format!("expected true or false, got `{raw}`")),
        }),
        toml::Value::Array(_) if raw_t.starts_with('[') => format!("v = {raw_t}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .ok_or_else(|| format!("expected a TOML array, got `{raw}`"))?,
        toml::Value::Array(_) => toml::Value::Array(
            raw_t
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.into()))
                .collect(),
        ),
        _ => toml::Value::String(raw.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Iterator<Item = (String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn env_overrides_are_typed_by_the_default() {
        let loaded = Config::load(
            None,
            env(&[
                ("FLAMINGO_LIMITS_MAX_QUEUE", "4"),
                ("FLAMINGO_MODEL_DTYPE", "f16"),
                ("FLAMINGO_MODEL_ID", "123"),
                ("FLAMINGO_SERVER_API_KEYS", "k1, k2"),
                ("FLAMINGO_SERVER_CORS_ORIGINS", "[\"https://a.example\"]"),
                ("FLAMINGO_FILTER_MODE", "block"),
                ("FLAMINGO_MODEL_CHECKPOINT", "/m/checkpoint.pt"),
                ("OTHER", "x"),
            ]),
        )
        .unwrap();
        let c = loaded.config;
        assert_eq!(c.limits.max_queue, 4);
        assert_eq!(c.model.dtype, DTypeName::F16);
        assert_eq!(c.model.id, "123");
        assert_eq!(c.server.api_keys, vec!["k1", "k2"]);
        assert_eq!(c.server.cors_origins, vec!["https://a.example"]);
        assert_eq!(c.filter.mode, FilterMode::Block);
        assert_eq!(c.model.checkpoint, Some(PathBuf::from("/m/checkpoint.pt")));
        assert!(loaded.warnings.is_empty());
    }

    #[test]
    fn bad_env_values_name_the_variable_and_unknown_ones_warn() {
        let e = Config::load(None, env(&[("FLAMINGO_SERVER_PORT", "eighty")]))
            .err()
            .unwrap();
        assert!(e.to_string().contains("FLAMINGO_SERVER_PORT"), "{e}");
        let e = Config::load(None, env(&[("FLAMINGO_FILTER_MODE", "loud")]))
            .err()
            .unwrap();
        assert!(e.to_string().contains("loud"), "{e}");
        let loaded = Config::load(
            None,
            env(&[
                ("FLAMINGO_SERVER_BIN", "x"),
                ("FLAMINGO_TEST_STEP_DELAY_MS", "5"),
            ]),
        )
        .unwrap();
        assert_eq!(loaded.warnings.len(), 1);
        assert!(loaded.warnings[0].contains("FLAMINGO_SERVER_BIN"));
    }

    #[test]
    fn unknown_keys_in_a_file_are_named() {
        let dir = std::env::temp_dir().join(format!("flamingo-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.toml");
        std::fs::write(&path, "[limits]\nmax_qeue = 3\n").unwrap();
        let e = Config::load(Some(&path), env(&[])).err().unwrap();
        assert!(e.to_string().contains("max_qeue"), "{e}");
        std::fs::write(&path, "[filter]\nmod = \"off\"\n").unwrap();
        let e = Config::load(Some(&path), env(&[])).err().unwrap();
        assert!(e.to_string().contains("mod"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn invalid_values_are_named() {
        let check = |f: &dyn Fn(&mut Config), key: &str| {
            let mut cfg = Config::default();
            f(&mut cfg);
            let e = cfg.validate().unwrap_err().to_string();
            assert!(e.contains(key), "{e} should name {key}");
        };
        check(&|c| c.limits.max_batch_size = 0, "limits.max_batch_size");
        check(&|c| c.model.device = "tpu".into(), "model.device");
        check(&|c| c.model.device = "cuda:x".into(), "model.device");
        check(
            &|c| c.server.cors_origins = vec!["demo.example".into()],
            "server.cors_origins",
        );
        check(
            &|c| c.server.allow_image_urls = true,
            "server.image_url_allowlist",
        );
        check(
            &|c| c.server.image_url_allow_private = vec!["localhost".into()],
            "server.image_url_allow_private",
        );
        check(
            &|c| c.server.image_url_allowlist = vec!["https://x.example/".into()],
            "server.image_url_allowlist",
        );
        check(
            &|c| c.server.image_url_max_bytes = 1 << 40,
            "server.image_url_max_bytes",
        );
        check(
            &|c| c.server.image_url_timeout_ms = 0,
            "server.image_url_timeout_ms",
        );
        let mut c = Config::default();
        c.server.allow_image_urls = true;
        c.server.image_url_mode = ImageUrlMode::Public;
        c.server.image_url_allow_private = vec!["127.0.0.1/32".into(), "::1".into()];
        c.validate().unwrap();
        c.server.image_url_mode = ImageUrlMode::Allowlist;
        c.server.image_url_allowlist = vec!["*.example.com".into(), "127.0.0.1".into()];
        c.validate().unwrap();
        Config::default().validate().unwrap();
        let mut c = Config::default();
        c.model.device = "cuda:1".into();
        c.validate().unwrap();
    }

    #[test]
    fn default_toml_is_the_defaults() {
        let text = include_str!("../../../config/default.toml");
        let written: toml::Table = text.parse().unwrap();
        let defaults = match toml::Value::try_from(Config::default()).unwrap() {
            toml::Value::Table(t) => t,
            _ => unreachable!(),
        };
        for (section, keys) in &defaults {
            for key in keys.as_table().unwrap().keys() {
                assert!(
                    written.get(section).and_then(|t| t.get(key)).is_some(),
                    "config/default.toml lacks {section}.{key}"
                );
            }
        }
        for key in OPTIONAL_PATH_KEYS {
            assert!(
                text.contains(&format!("# {key} = ")),
                "config/default.toml does not show model.{key}"
            );
        }
        let from_file: Config =
            toml::from_str(text).expect("config/default.toml parses with no unknown keys");
        from_file.validate().unwrap();
        assert_eq!(
            toml::Value::try_from(&from_file).unwrap(),
            toml::Value::try_from(Config::default()).unwrap(),
            "config/default.toml and the built-in defaults differ"
        );
    }
}
