//! What every handler shares. The model-dependent part (`Runtime`) is set once loading finishes:
//! the server listens before that, so `/health` answers and `/ready` says 503 during a
//! minutes-long model load instead of the port refusing connections.

use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use flamingo_model::tokenizer::FlamingoTokenizer;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::config::Config;
use crate::error::ApiError;
use crate::filter::ContentFilter;
use crate::testing::TestHooks;
use crate::validation::PrepContext;
use crate::worker::WorkerHandle;

pub struct Runtime {
    pub tokenizer: Arc<FlamingoTokenizer>,
    pub prep: Arc<PrepContext>,
    pub worker: WorkerHandle,
    /// Requests preprocessed at once (limits.preprocess_slots).
    pub prep_slots: Arc<tokio::sync::Semaphore>,
    /// The static part of `/info` (model, dtype, device, sizes).
    pub model_info: crate::api::LoadedModel,
    /// Image URL fetching; None when `server.allow_image_urls` is off.
    pub fetcher: Option<Arc<crate::fetch::Fetcher>>,
}

pub struct Shared {
    pub cfg: Config,
    pub filter: ContentFilter,
    pub hooks: TestHooks,
    pub prometheus: Option<PrometheusHandle>,
    /// Set on SIGTERM/SIGINT once the pre-stop window is over: new generations are refused.
    pub draining: AtomicBool,
    /// Set on SIGTERM/SIGINT at once: `/ready` answers 503 (the pre-stop window still serves).
    pub stopping: AtomicBool,
    /// Generations between validation and their last byte (the drain waits for these).
    pub in_flight: Arc<AtomicUsize>,
    pub started: Instant,
    runtime: OnceLock<Runtime>,
}

#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    pub fn new(cfg: Config, hooks: TestHooks, prometheus: Option<PrometheusHandle>) -> Self {
        Self(Arc::new(Shared {
            filter: ContentFilter::new(cfg.filter.to_filter_config()),
            cfg,
            hooks,
            prometheus,
            draining: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            in_flight: Arc::new(AtomicUsize::new(0)),
            started: Instant::now(),
            runtime: OnceLock::new(),
        }))
    }

    pub fn set_runtime(&self, rt: Runtime) {
        if self.0.runtime.set(rt).is_err() {
            tracing::error!("the model runtime was set twice; keeping the first");
        }
    }

    pub fn try_runtime(&self) -> Option<&Runtime> {
        self.0.runtime.get()
    }

    /// The loaded model, or 503 while it loads.
    pub fn runtime(&self) -> Result<&Runtime, ApiError> {
        self.try_runtime().ok_or_else(|| {
            ApiError::unavailable("the model is still loading", self.cfg.server.retry_after_s)
        })
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Why the server is not ready, if it is not.
    pub fn not_ready(&self) -> Option<&'static str> {
        if self.draining() || self.stopping.load(Ordering::SeqCst) {
            Some("shutting down")
        } else {
            match self.try_runtime() {
                None => Some("the model is still loading"),
                Some(rt) if !rt.worker.alive() => Some("the model worker is not running"),
                Some(_) => None,
            }
        }
    }
}
