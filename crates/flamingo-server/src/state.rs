//! What every handler shares.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use flamingo_model::tokenizer::FlamingoTokenizer;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::config::Config;
use crate::filter::ContentFilter;
use crate::prepare::Context;
use crate::worker::WorkerHandle;

#[derive(Clone)]
pub struct AppState {
    pub cfg: Arc<Config>,
    pub tokenizer: Arc<FlamingoTokenizer>,
    pub ctx: Arc<Context>,
    pub worker: WorkerHandle,
    pub filter: ContentFilter,
    /// Set on SIGTERM/SIGINT: /ready answers 503 and new generations are refused.
    pub draining: Arc<AtomicBool>,
    pub prometheus: Option<PrometheusHandle>,
    pub info: Arc<serde_json::Value>,
}
