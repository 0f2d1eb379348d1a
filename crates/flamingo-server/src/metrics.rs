//! Prometheus metrics: names in one place, histogram buckets (the exporter renders summaries
//! otherwise, which cannot be aggregated across replicas), and descriptions for `# HELP`.

use std::time::Duration;

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const REQUESTS: &str = "flamingo_requests_total";
pub const REQUEST_SECONDS: &str = "flamingo_request_duration_seconds";
pub const QUEUE_DEPTH: &str = "flamingo_queue_depth";
pub const ACTIVE_SEQUENCES: &str = "flamingo_active_sequences";
pub const BATCH_SIZE: &str = "flamingo_batch_size";
pub const BATCH_TOKENS: &str = "flamingo_batch_tokens";
pub const STEP_SECONDS: &str = "flamingo_step_duration_seconds";
pub const QUEUE_SECONDS: &str = "flamingo_queue_duration_seconds";
pub const PREFILL_SECONDS: &str = "flamingo_prefill_duration_seconds";
pub const ENCODE_SECONDS: &str = "flamingo_image_encode_duration_seconds";
pub const TTFT_SECONDS: &str = "flamingo_time_to_first_token_seconds";
pub const INTER_TOKEN_SECONDS: &str = "flamingo_inter_token_latency_seconds";
pub const GENERATION_SECONDS: &str = "flamingo_generation_duration_seconds";
pub const PREPARE_SECONDS: &str = "flamingo_prepare_duration_seconds";
pub const GENERATED_TOKENS: &str = "flamingo_generated_tokens_total";
pub const PROMPT_TOKENS: &str = "flamingo_prompt_tokens_total";
pub const GENERATED_PER_REQUEST: &str = "flamingo_request_generated_tokens";
pub const FILTER_ACTIONS: &str = "flamingo_filter_actions_total";
pub const EVICTED: &str = "flamingo_sequences_evicted_total";
pub const FINISHED: &str = "flamingo_requests_finished_total";
pub const IMAGE_CACHE_HITS: &str = "flamingo_image_cache_hits_total";
pub const IMAGE_CACHE_MISSES: &str = "flamingo_image_cache_misses_total";
pub const IMAGE_CACHE_ENTRIES: &str = "flamingo_image_cache_entries";
/// Prompts that started from a cached prefix's history / that were looked up and did not.
pub const PREFIX_CACHE_HITS: &str = "flamingo_prefix_cache_hits_total";
pub const PREFIX_CACHE_MISSES: &str = "flamingo_prefix_cache_misses_total";
pub const PREFIX_CACHE_REUSED_TOKENS: &str = "flamingo_prefix_cache_reused_tokens_total";
pub const PREFIX_CACHE_EVICTIONS: &str = "flamingo_prefix_cache_evictions_total";
pub const PREFIX_CACHE_ENTRIES: &str = "flamingo_prefix_cache_entries";
pub const PREFIX_CACHE_BYTES: &str = "flamingo_prefix_cache_bytes";
pub const WORKER_ALIVE: &str = "flamingo_worker_alive";
pub const READY: &str = "flamingo_ready";
pub const IMAGES_DECODED: &str = "flamingo_images_decoded_total";
/// Image URL fetches by `outcome` (ok, refused, too_large, timeout, error).
pub const IMAGE_FETCHES: &str = "flamingo_image_fetches_total";
/// Image URLs refused by `reason` (disabled, scheme, credentials, not_allowlisted,
/// forbidden_address, dns, too_many_redirects, invalid_url, content_type, too_large).
pub const IMAGE_FETCH_REFUSALS: &str = "flamingo_image_fetch_refusals_total";
pub const IMAGE_FETCH_SECONDS: &str = "flamingo_image_fetch_duration_seconds";
pub const IMAGE_FETCH_BYTES: &str = "flamingo_image_fetch_bytes_total";
pub const PREPROCESS_WAITING: &str = "flamingo_preprocess_waiting";
pub const OPEN_CONNECTIONS: &str = "flamingo_open_connections";
pub const CONNECTIONS_REFUSED: &str = "flamingo_connections_refused_total";
pub const KV_RESERVED_BYTES: &str = "flamingo_kv_reserved_bytes";
/// KV-cache use, 0..1 (memory held by running sequences' caches over the budget).
pub const KV_CACHE_USAGE: &str = "flamingo_kv_cache_usage_ratio";

/// Aliases under the names the Gateway API Inference Extension endpoint picker reads by default
/// (its model-server protocol: queued requests, running requests, KV-cache utilisation) and the
/// vLLM production-stack dashboards and KEDA recipes query. Same values as ours, set together in
/// `publish_scheduler`; the colon is legal in Prometheus names and kept by the exporter.
pub const VLLM_WAITING: &str = "vllm:num_requests_waiting";
pub const VLLM_RUNNING: &str = "vllm:num_requests_running";
/// vLLM >= 0.10 name of the KV-cache use (0..1).
pub const VLLM_KV_USAGE: &str = "vllm:kv_cache_usage_perc";
/// The pre-0.10 name, still queried by older dashboards and endpoint-picker versions.
pub const VLLM_GPU_CACHE_USAGE: &str = "vllm:gpu_cache_usage_perc";

/// Latency buckets from 1 ms (tiny model, per-token on a GPU) to 10 min (a long CPU generation).
const SECONDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0,
];
const COUNTS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0,
];

/// Installs the global recorder; call once per process.
pub fn install() -> Result<PrometheusHandle, String> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(BATCH_SIZE.into()), COUNTS))
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(BATCH_TOKENS.into()), COUNTS))
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(GENERATED_PER_REQUEST.into()), COUNTS))
        .and_then(|b| b.install_recorder())
        .map_err(|e| format!("metrics: {e}"))?;
    describe();
    Ok(handle)
}

/// Scheduler state for scrapers: requests waiting to join the batch, sequences in it, and KV-cache
/// use (0..1, clamped), under our names and the vLLM/Inference Extension aliases.
pub fn publish_scheduler(waiting: usize, running: usize, kv_usage: f64) {
    let kv = if kv_usage.is_finite() {
        kv_usage.clamp(0.0, 1.0)
    } else {
        0.0
    };
    for name in [QUEUE_DEPTH, VLLM_WAITING] {
        metrics::gauge!(name).set(waiting as f64);
    }
    for name in [ACTIVE_SEQUENCES, VLLM_RUNNING] {
        metrics::gauge!(name).set(running as f64);
    }
    for name in [KV_CACHE_USAGE, VLLM_KV_USAGE, VLLM_GPU_CACHE_USAGE] {
        metrics::gauge!(name).set(kv);
    }
}

/// Histograms are drained into their buckets on upkeep; run it in the background.
pub fn spawn_upkeep(handle: PrometheusHandle) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            handle.run_upkeep();
        }
    });
}

fn describe() {
    describe_counter!(REQUESTS, "HTTP requests by route and status");
    describe_histogram!(
        REQUEST_SECONDS,
        Unit::Seconds,
        "HTTP request duration until the response head, by route"
    );
    describe_gauge!(QUEUE_DEPTH, "Requests waiting to join the batch");
    describe_gauge!(ACTIVE_SEQUENCES, "Sequences in the running batch");
    describe_histogram!(BATCH_SIZE, "Sequences per model step");
    describe_histogram!(
        BATCH_TOKENS,
        "Tokens processed per model step (prefill + decode)"
    );
    describe_histogram!(
        STEP_SECONDS,
        Unit::Seconds,
        "Model step duration, phase=prefill when a prompt joined"
    );
    describe_histogram!(
        QUEUE_SECONDS,
        Unit::Seconds,
        "Time from queueing to joining the batch"
    );
    describe_histogram!(
        PREFILL_SECONDS,
        Unit::Seconds,
        "Time from joining the batch to the first token"
    );
    describe_histogram!(
        ENCODE_SECONDS,
        Unit::Seconds,
        "Vision tower + resampler time per encode batch"
    );
    describe_histogram!(
        TTFT_SECONDS,
        Unit::Seconds,
        "Time from request arrival to the first generated token"
    );
    describe_histogram!(
        INTER_TOKEN_SECONDS,
        Unit::Seconds,
        "Time between two tokens of a sequence"
    );
    describe_histogram!(
        GENERATION_SECONDS,
        Unit::Seconds,
        "Time from request arrival to the last token"
    );
    describe_histogram!(
        PREPARE_SECONDS,
        Unit::Seconds,
        "Tokenization and image decoding per request"
    );
    describe_counter!(GENERATED_TOKENS, "Generated tokens");
    describe_counter!(PROMPT_TOKENS, "Prompt tokens of admitted requests");
    describe_histogram!(GENERATED_PER_REQUEST, "Generated tokens per request");
    describe_counter!(
        FILTER_ACTIONS,
        "Outputs the content filter acted on, by action (censor|block)"
    );
    describe_counter!(
        EVICTED,
        "Sequences removed before finishing, by reason (client_gone|deadline)"
    );
    describe_counter!(FINISHED, "Finished generations by finish_reason");
    describe_counter!(
        IMAGE_CACHE_HITS,
        "Images whose features came from the cache"
    );
    describe_counter!(IMAGE_CACHE_MISSES, "Images encoded by the vision tower");
    describe_gauge!(IMAGE_CACHE_ENTRIES, "Image features in the cache");
    describe_counter!(
        PREFIX_CACHE_HITS,
        "Prompts that started from the cached history of an earlier prompt's prefix"
    );
    describe_counter!(
        PREFIX_CACHE_MISSES,
        "Prompts with a reusable boundary (after an <|endofchunk|>) that found no cached prefix"
    );
    describe_counter!(
        PREFIX_CACHE_REUSED_TOKENS,
        "Prompt tokens whose prefill the prefix cache skipped"
    );
    describe_counter!(
        PREFIX_CACHE_EVICTIONS,
        "Prefix snapshots dropped to stay within limits.prefix_cache_bytes"
    );
    describe_gauge!(PREFIX_CACHE_ENTRIES, "Prefix snapshots in the cache");
    describe_gauge!(
        PREFIX_CACHE_BYTES,
        Unit::Bytes,
        "Bytes of KV history held by the prefix cache"
    );
    describe_gauge!(WORKER_ALIVE, "1 while the model worker thread runs");
    describe_counter!(
        IMAGES_DECODED,
        "Images decoded (neither cached nor repeated in their request)"
    );
    describe_counter!(
        IMAGE_FETCHES,
        "Image URL fetches by outcome (ok, refused, too_large, timeout, error)"
    );
    describe_counter!(
        IMAGE_FETCH_REFUSALS,
        "Image URLs refused by reason (disabled, scheme, not_allowlisted, forbidden_address, content_type, too_large, ...)"
    );
    describe_histogram!(
        IMAGE_FETCH_SECONDS,
        Unit::Seconds,
        "Duration of image URL fetches, redirects and body included"
    );
    describe_counter!(IMAGE_FETCH_BYTES, "Bytes of fetched image URL bodies");
    describe_gauge!(
        PREPROCESS_WAITING,
        "Requests holding a queue place while they wait for or run preprocessing"
    );
    describe_gauge!(OPEN_CONNECTIONS, "Open client connections");
    describe_counter!(
        CONNECTIONS_REFUSED,
        "Connections closed at once because server.max_connections were open"
    );
    describe_gauge!(
        KV_RESERVED_BYTES,
        "KV-cache bytes reserved by admitted sequences (limits.max_kv_bytes bounds it)"
    );
    describe_gauge!(READY, "1 when /ready answers 200");
    describe_gauge!(KV_CACHE_USAGE, "KV-cache use of the running batch, 0..1");
    describe_gauge!(
        VLLM_WAITING,
        "Alias of flamingo_queue_depth (vLLM / Gateway API Inference Extension name)"
    );
    describe_gauge!(
        VLLM_RUNNING,
        "Alias of flamingo_active_sequences (vLLM / Gateway API Inference Extension name)"
    );
    describe_gauge!(
        VLLM_KV_USAGE,
        "Alias of flamingo_kv_cache_usage_ratio, 0..1 (vLLM / Inference Extension name)"
    );
    describe_gauge!(
        VLLM_GPU_CACHE_USAGE,
        "Alias of flamingo_kv_cache_usage_ratio, 0..1 (pre-0.10 vLLM name)"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics_exporter_prometheus::PrometheusBuilder;

    #[test]
    fn scheduler_gauges_render_under_our_names_and_the_vllm_aliases() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || publish_scheduler(3, 5, 1.7));
        let text = handle.render();
        for line in [
            "flamingo_queue_depth 3",
            "vllm:num_requests_waiting 3",
            "flamingo_active_sequences 5",
            "vllm:num_requests_running 5",
            "flamingo_kv_cache_usage_ratio 1",
            "vllm:kv_cache_usage_perc 1",
            "vllm:gpu_cache_usage_perc 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing `{line}` in:\n{text}"
            );
        }
    }
}
