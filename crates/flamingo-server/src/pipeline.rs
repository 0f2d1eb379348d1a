//! The path every generation route shares: validate parameters, prepare the prompt and images on
//! the blocking pool (never on the async threads, never on the model worker), queue the work and
//! hand back a [`Session`] to read the output from.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use tracing::Instrument;

use crate::api::Parameters;
use crate::error::{ApiError, ErrorKind};
use crate::fetch;
use crate::metrics as m;
use crate::prompt::Rendered;
use crate::session::{Final, Session, SessionConfig, Timings};
use crate::state::AppState;
use crate::validation::{self, Resolved};
use crate::worker::WorkItem;

/// The request id set (or echoed) by the request-id middleware.
pub struct RequestId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for RequestId {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let id = parts
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-");
        Ok(RequestId(id.to_string()))
    }
}

pub struct Generation {
    pub session: Session,
    pub request_id: String,
    /// The rendered prompt (with `<image>` markers) and its tokens.
    pub prompt: String,
    pub prompt_tokens: Vec<u32>,
    pub resolved: Resolved,
    /// The cache-affinity key of the request's images (`x-flamingo-affinity`).
    pub affinity: Option<String>,
    _in_flight: InFlight,
}

/// Sets the flag when dropped: the request's future is dropped when its client disconnects, and
/// the blocking preprocessing task checks the flag between expensive steps.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Validates, takes a queue place (429 before any work when the server is full), waits for a
/// preprocessing slot, renders, tokenizes and decodes on the blocking pool, then queues.
/// `render` runs on the blocking pool too: every step whose cost grows with the request is
/// kept off the async threads that serve everyone else.
pub async fn start<R>(
    s: &AppState,
    request_id: &str,
    render: R,
    params: &Parameters,
) -> Result<Generation, ApiError>
where
    R: FnOnce() -> Result<Rendered, ApiError> + Send + 'static,
{
    let arrived = Instant::now();
    let rt = accepting(s)?;
    let resolved =
        tracing::debug_span!("validate").in_scope(|| validation::resolve(params, &s.cfg.limits))?;
    let ticket = rt.worker.reserve()?;
    let deadline = arrived + Duration::from_secs(s.cfg.server.request_timeout_s);
    let in_flight = InFlight::enter(&s.in_flight);
    let cancelled = Arc::new(AtomicBool::new(false));
    let _cancel_on_drop = CancelOnDrop(cancelled.clone());
    let prepared = preprocess(rt, render, resolved, deadline, cancelled).await?;
    let prepared_at = Instant::now();
    metrics::histogram!(m::PREPARE_SECONDS).record((prepared_at - arrived).as_secs_f64());
    let hashes: Vec<[u8; 32]> = prepared.images.iter().map(|i| i.hash).collect();
    let affinity = crate::affinity::request_key(&hashes);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    rt.worker.submit(
        WorkItem {
            request_id: request_id.to_string(),
            tokens: prepared.tokens.clone(),
            images: prepared.images,
            params: prepared.params,
            kv_bytes: prepared.kv_bytes,
            events: tx,
            deadline,
            enqueued: prepared_at,
        },
        ticket,
    )?;
    metrics::counter!(m::PROMPT_TOKENS).increment(prepared.tokens.len() as u64);
    let session = Session::new(
        rx,
        SessionConfig {
            tokenizer: rt.tokenizer.clone(),
            filter: s.filter.clone(),
            stop: prepared.resolved.stop.clone(),
            deadline,
            retry_after_s: s.cfg.server.retry_after_s,
            timings: Timings::new(arrived, prepared_at),
        },
    );
    Ok(Generation {
        session,
        request_id: request_id.to_string(),
        prompt: prepared.prompt,
        prompt_tokens: prepared.tokens,
        resolved: prepared.resolved,
        affinity,
        _in_flight: in_flight,
    })
}

/// The runtime, when the server takes generations: loaded, not draining, the worker alive.
fn accepting(s: &AppState) -> Result<&crate::state::Runtime, ApiError> {
    if s.draining() {
        return Err(ApiError::unavailable(
            "the server is shutting down",
            s.cfg.server.retry_after_s,
        ));
    }
    let rt = s.runtime()?;
    if !rt.worker.alive() {
        return Err(ApiError::unavailable(
            "the model worker is not running",
            s.cfg.server.retry_after_s,
        ));
    }
    Ok(rt)
}

/// Renders, tokenizes and checks the prompt, then loads its images, on the blocking pool under
/// a preprocessing slot. Text checks come first; a request with image URLs then gives its slot
/// back while the URLs are fetched (network time must not hold the CPU slots), and decodes
/// under a new one.
async fn preprocess<R>(
    rt: &crate::state::Runtime,
    render: R,
    resolved: Resolved,
    deadline: Instant,
    cancelled: Arc<AtomicBool>,
) -> Result<validation::Prepared, ApiError>
where
    R: FnOnce() -> Result<Rendered, ApiError> + Send + 'static,
{
    let blocking_failed = |e: tokio::task::JoinError| {
        ApiError::internal(format!("the preprocessing task failed: {e}"))
    };
    let permit = preprocessing_slot(rt, deadline).await?;
    let prep = rt.prep.clone();
    let span = tracing::debug_span!("preprocess");
    let (prep2, cancelled2, span2) = (prep.clone(), cancelled.clone(), span.clone());
    let first = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        span.in_scope(|| -> Result<Result<_, (_, Vec<String>)>, ApiError> {
            let rendered = render()?;
            let (text, payloads) = validation::prepare_text(rendered, resolved, &prep)?;
            if !payloads.iter().any(|p| fetch::is_url(p)) {
                let done =
                    validation::load_images(text, &payloads, &prep, &cancelled, deadline, &[])?;
                return Ok(Ok(done));
            }
            Ok(Err((text, payloads)))
        })
    })
    .await
    .map_err(blocking_failed)??;
    let (text, payloads) = match first {
        Ok(done) => return Ok(done),
        Err(pending) => pending,
    };
    let fetched = fetch::fetch_images(rt.fetcher.as_deref(), &payloads, deadline)
        .instrument(tracing::debug_span!("fetch_images"))
        .await?;
    let permit = preprocessing_slot(rt, deadline).await?;
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        span2.in_scope(|| {
            validation::load_images(text, &payloads, &prep2, &cancelled2, deadline, &fetched)
        })
    })
    .await
    .map_err(blocking_failed)?
}

/// One of the `limits.preprocess_slots`, waited for until the request's deadline.
async fn preprocessing_slot(
    rt: &crate::state::Runtime,
    deadline: Instant,
) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
    tokio::time::timeout_at(deadline.into(), rt.prep_slots.clone().acquire_owned())
        .await
        .map_err(|_| {
            ApiError::new(
                ErrorKind::Timeout,
                "the request passed its deadline waiting for a preprocessing slot",
            )
        })?
        .map_err(|_| ApiError::internal("the preprocessing slots are closed"))
}

/// Counts a generation from validation to its last byte: the drain waits for these, not for
/// connections (a client that never finishes sending its request must not hold a shutdown).
pub struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    pub fn enter(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        Self(counter.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Generation {
    /// Runs to the end inside a `generate` span (non-streaming responses).
    pub async fn collect(&mut self) -> Result<Final, ApiError> {
        let span = tracing::debug_span!("generate", request_id = %self.request_id);
        self.session.collect().instrument(span).await
    }

    /// The access-log line of a finished generation.
    pub fn log_finished(&self, route: &str, f: &Final) {
        tracing::info!(
            request_id = %self.request_id,
            route,
            prompt_tokens = self.prompt_tokens.len(),
            generated_tokens = f.generated_tokens,
            finish_reason = f.finish_reason.as_str(),
            filtered = f.filtered,
            timings = %self.session.timings.header(),
            "generation finished"
        );
    }

    pub fn log_failed(&self, route: &str, e: &ApiError) {
        tracing::warn!(request_id = %self.request_id, route, error = %e, "generation failed");
    }
}
