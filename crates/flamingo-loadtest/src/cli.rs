//! Command-line interface.

use clap::Parser;
use std::path::PathBuf;

/// Drive a bounded, mixed workload against a flamingo-serve URL and report latency, time to
/// first token, errors and lost requests. Exits 1 when a pass condition is violated
/// (lost requests, contract failures, or a --max-*/--min-*/--expect-* limit), 2 on a usage
/// or setup error.
#[derive(Debug, Parser)]
#[command(name = "flamingo-loadtest", version)]
pub struct Args {
    /// Base URL of the server (or of the proxy in front of it).
    #[arg(
        long,
        default_value = "http://127.0.0.1:8080",
        env = "FLAMINGO_LOADTEST_URL"
    )]
    pub url: String,

    /// Sent as `Authorization: Bearer <key>` when the server has API keys configured.
    #[arg(long, env = "FLAMINGO_LOADTEST_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// Closed loop: this many clients, each sending its next request when the previous ends.
    /// Ignored when --rate is given.
    #[arg(short, long, default_value_t = 8)]
    pub concurrency: usize,

    /// Open loop: start requests at this rate (requests/s) whatever the server does, which is
    /// how overload is offered. In-flight requests are capped by --max-in-flight.
    #[arg(long)]
    pub rate: Option<f64>,

    /// Open-loop cap on requests in flight (keeps the tool itself bounded; hitting it shows up
    /// as send delay in the report).
    #[arg(long, default_value_t = 512)]
    pub max_in_flight: usize,

    /// Stop after this many requests (default 1000 when --duration is not given either).
    #[arg(short = 'n', long)]
    pub requests: Option<u64>,

    /// Stop starting requests after this many seconds (in-flight ones are awaited).
    #[arg(short, long)]
    pub duration: Option<f64>,

    /// Per-request deadline in seconds (headers and the whole body); past it the request is
    /// lost (timeout).
    #[arg(long, default_value_t = 120.0)]
    pub timeout: f64,

    /// Workload mix, kind=weight pairs. Kinds: generate, generate_stream, chat, chat_stream,
    /// fewshot, fewshot_stream, bad_base64, wrong_image_count, malformed_json, disconnect.
    #[arg(long, default_value = crate::workload::DEFAULT_MIX)]
    pub mix: String,

    /// Images used as payloads.
    #[arg(long, default_value = "tests/fixtures/tiny-openflamingo/images")]
    pub images_dir: PathBuf,

    /// Generation length is drawn uniformly from [--min-tokens, --max-tokens].
    #[arg(long, default_value_t = 4)]
    pub min_tokens: u32,
    #[arg(long, default_value_t = 24)]
    pub max_tokens: u32,

    /// Seed of the workload (same seed = same requests in the same order).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    /// Write the JSON report here.
    #[arg(long)]
    pub out: Option<PathBuf>,

    /// Write one JSON line per request here (index, kind, status, class, sent_at_s, latency_ms,
    /// ttft_ms, tokens): raw samples for pooling several runs (the proxy run's TTFT comparison).
    #[arg(long)]
    pub samples_out: Option<PathBuf>,

    /// Write the SVG plot (latency and throughput over time) here.
    #[arg(long)]
    pub plot: Option<PathBuf>,

    /// Width of the timeline buckets in seconds.
    #[arg(long, default_value_t = 1.0)]
    pub bucket: f64,

    /// Label stored in the report (e.g. "direct" / "via nginx").
    #[arg(long, default_value = "")]
    pub label: String,

    /// Fail when more requests than this are lost.
    #[arg(long, default_value_t = 0)]
    pub max_lost: u64,

    /// Fail when more requests than this break the contract (undocumented status, accepted bad
    /// input, 429/503 without Retry-After, wrong body shape).
    #[arg(long, default_value_t = 0)]
    pub max_failures: u64,

    /// Fail when the share of valid requests (not bad inputs, not disconnects) that did not
    /// succeed exceeds this fraction (0..1). Shed requests count as errors here.
    #[arg(long)]
    pub max_error_rate: Option<f64>,

    /// Fail when p99 latency of successful requests exceeds this (ms).
    #[arg(long)]
    pub max_p99_ms: Option<f64>,

    /// Fail when median time to first token exceeds this (ms).
    #[arg(long)]
    pub max_ttft_p50_ms: Option<f64>,

    /// Fail when successful requests per second are below this.
    #[arg(long)]
    pub min_throughput: Option<f64>,

    /// Fail unless at least this many requests were shed with 429/503 + Retry-After (overload
    /// tests: shedding must happen, and as statuses, not timeouts).
    #[arg(long)]
    pub expect_shed: Option<u64>,

    /// Do not fail when a response lacks the x-request-id header (or changed ours).
    #[arg(long)]
    pub no_check_request_id: bool,

    /// No progress bar (a line every 10 s is printed instead when stderr is not a terminal).
    #[arg(long)]
    pub no_progress: bool,

    /// Print no results table (the JSON report is still written).
    #[arg(short, long)]
    pub quiet: bool,
}

impl Args {
    /// The request budget: explicit, or 1000 when neither budget was given.
    pub fn request_budget(&self) -> Option<u64> {
        match (self.requests, self.duration) {
            (None, None) => Some(1000),
            (r, _) => r,
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.concurrency == 0 {
            return Err("--concurrency must be at least 1".into());
        }
        if let Some(r) = self.rate {
            if !(r.is_finite() && r > 0.0) {
                return Err("--rate must be a positive number".into());
            }
        }
        if self.max_in_flight == 0 {
            return Err("--max-in-flight must be at least 1".into());
        }
        if let Some(d) = self.duration {
            if !(d.is_finite() && d > 0.0) {
                return Err("--duration must be positive".into());
            }
        }
        if !(self.timeout.is_finite() && self.timeout > 0.0) {
            return Err("--timeout must be positive".into());
        }
        if !(self.bucket.is_finite() && self.bucket > 0.0) {
            return Err("--bucket must be positive".into());
        }
        if let Some(e) = self.max_error_rate {
            if !(0.0..=1.0).contains(&e) {
                return Err("--max-error-rate is a fraction in 0..=1".into());
            }
        }
        if let Some(k) = &self.api_key {
            if k.is_empty() || !k.bytes().all(|b| (0x21..0x7f).contains(&b)) {
                return Err("--api-key must be non-empty printable ASCII without spaces".into());
            }
        }
        // Built without a TLS stack: the tool targets loopback or the proxy under test.
        if !self.url.starts_with("http://") {
            return Err("--url must start with http:// (no TLS support built in)".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_budget() {
        let a = Args::parse_from(["flamingo-loadtest"]);
        assert_eq!(a.request_budget(), Some(1000));
        assert!(a.validate().is_ok());
        let a = Args::parse_from(["x", "--duration", "5"]);
        assert_eq!(a.request_budget(), None);
        let a = Args::parse_from(["x", "--duration", "5", "-n", "10"]);
        assert_eq!(a.request_budget(), Some(10));
        assert!(Args::parse_from(["x", "--rate", "0"]).validate().is_err());
        assert!(Args::parse_from(["x", "--max-error-rate", "2"])
            .validate()
            .is_err());
        assert!(Args::parse_from(["x", "--url", "localhost:1"])
            .validate()
            .is_err());
    }
}
