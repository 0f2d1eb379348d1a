//! The batching worker: one thread owns the model and its device. Requests arrive prepared
//! (tokens, preprocessed pixels) through a bounded queue and join the running batch between
//! decode steps (continuous batching); finished, cancelled (the request's event receiver was
//! dropped) and expired sequences leave it. The thread only does tensor work: image features
//! (cached by image hash), `Backend::add`, `Backend::step`. The model sits behind the
//! [`Backend`] trait (`backend.rs`): the engine in production, a scripted stand-in in this
//! module's tests.

pub mod backend;
pub mod cache;
pub mod error;
pub mod policy;
#[cfg(test)]
pub(crate) mod scripted;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::Tensor;
use flamingo_model::engine::{
    Engine, Event, FinishReason, GeneratedToken, GenerationParams, Hypothesis, SeqId,
    SequenceRequest,
};
use flamingo_model::Flamingo;
use tokio::sync::mpsc::UnboundedSender;

use crate::images::ImageInput;
use crate::metrics as m;
use crate::testing::TestHooks;
use backend::Backend;
use cache::SharedFeatureCache;
pub use error::WorkerError;
use policy::{admit, BatchLimits, Running, Waiting};

/// Images resampled per call at most, so a burst of few-shot requests cannot ask the device for
/// one huge vision batch.
const MAX_IMAGES_PER_ENCODE: usize = 32;

pub struct WorkItem {
    pub request_id: String,
    pub tokens: Vec<u32>,
    pub images: Vec<ImageInput>,
    pub params: GenerationParams,
    /// KV-cache bytes the sequence reserves while it runs.
    pub kv_bytes: usize,
    pub events: UnboundedSender<WorkerEvent>,
    pub deadline: Instant,
    pub enqueued: Instant,
}

#[derive(Debug)]
pub enum WorkerEvent {
    /// The request left the queue and joined the batch.
    Started {
        queued: Duration,
    },
    /// A generated token; `finish` is set on the last one (so a stream's final event carries
    /// the last token, as TGI's does).
    Token {
        token: GeneratedToken,
        finish: Option<FinishReason>,
    },
    /// The end of a beam search (`hypotheses` best first), which reports no tokens on the way.
    Finished {
        reason: FinishReason,
        hypotheses: Vec<Hypothesis>,
    },
    Error(WorkerError),
}

/// State shared between the worker, the handlers, `/ready`, `/info` and metrics.
pub struct WorkerShared {
    pub alive: AtomicBool,
    /// Submitted and not yet admitted or dropped; bounded by `max_queue`.
    pub waiting: AtomicUsize,
    /// Sequences in the batch.
    pub active: AtomicUsize,
    pub steps: AtomicU64,
    /// KV-cache bytes reserved by the sequences in the batch.
    pub kv_reserved: AtomicUsize,
    pub max_kv_bytes: usize,
    max_queue: usize,
    retry_after_s: u64,
}

/// A place in the queue, taken before any preprocessing so that a full server answers 429
/// before decoding anything; given back on drop unless the request was submitted.
pub struct QueueTicket {
    shared: Arc<WorkerShared>,
    held: bool,
}

impl Drop for QueueTicket {
    fn drop(&mut self) {
        if self.held {
            self.shared.waiting.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

#[derive(Clone)]
pub struct WorkerHandle {
    tx: SyncSender<WorkItem>,
    pub shared: Arc<WorkerShared>,
}

impl WorkerHandle {
    pub fn alive(&self) -> bool {
        self.shared.alive.load(Ordering::SeqCst)
    }

    fn unavailable(&self) -> WorkerError {
        WorkerError::Stopped {
            retry_after_s: self.shared.retry_after_s,
        }
    }

    /// Takes a place in the queue or refuses at once: 429 when the queue (requests being
    /// prepared included) is full, 503 when the worker is gone. Never blocks.
    pub fn reserve(&self) -> Result<QueueTicket, WorkerError> {
        let s = &self.shared;
        if !self.alive() {
            return Err(self.unavailable());
        }
        if s.waiting.fetch_add(1, Ordering::SeqCst) >= s.max_queue {
            s.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(overloaded(s));
        }
        Ok(QueueTicket {
            shared: s.clone(),
            held: true,
        })
    }

    /// Queues a prepared request in the place its ticket holds. Never blocks.
    pub fn submit(&self, item: WorkItem, mut ticket: QueueTicket) -> Result<(), WorkerError> {
        if !self.alive() {
            return Err(self.unavailable());
        }
        match self.tx.try_send(item) {
            Ok(()) => {
                // The worker gives the place back when the request leaves the queue.
                ticket.held = false;
                Ok(())
            }
            Err(TrySendError::Full(_)) => Err(overloaded(&self.shared)),
            Err(TrySendError::Disconnected(_)) => Err(self.unavailable()),
        }
    }
}

fn overloaded(s: &WorkerShared) -> WorkerError {
    WorkerError::QueueFull {
        max_queue: s.max_queue,
        retry_after_s: s.retry_after_s,
    }
}

pub struct WorkerConfig {
    pub max_batch_size: usize,
    pub max_batch_tokens: usize,
    pub max_kv_bytes: usize,
    /// The engine's prefill chunk (applied by [`spawn`]).
    pub max_prefill_chunk_tokens: usize,
    /// Bytes of prompt-prefix history kept for reuse (0 = off; applied by [`spawn`]).
    pub prefix_cache_bytes: usize,
    /// Shared with request preparation, which looks images up before decoding them.
    pub cache: SharedFeatureCache,
    pub max_queue: usize,
    pub retry_after_s: u64,
    /// Wrapped around the engine by [`spawn`] (they do nothing in a build without the
    /// `test-hooks` feature).
    pub hooks: TestHooks,
}

/// Starts the worker thread on the model.
pub fn spawn(model: Arc<Flamingo>, cfg: WorkerConfig) -> std::io::Result<WorkerHandle> {
    let (prefill_chunk, prefix_cache) = (cfg.max_prefill_chunk_tokens, cfg.prefix_cache_bytes);
    let hooks = cfg.hooks.clone();
    spawn_with(cfg, move || {
        let mut engine = Engine::new(model);
        engine.set_prefill_chunk(prefill_chunk);
        engine.set_prefix_cache(prefix_cache);
        hooks.wrap(engine)
    })
}

/// Starts the worker thread on the backend `make` builds there (so the backend itself need not
/// be `Send`).
fn spawn_with<B, F>(cfg: WorkerConfig, make: F) -> std::io::Result<WorkerHandle>
where
    B: Backend,
    F: FnOnce() -> B + Send + 'static,
{
    // The counter in `submit` enforces the bound; the channel's capacity is a backstop.
    let (tx, rx) = std::sync::mpsc::sync_channel(cfg.max_queue);
    let shared = Arc::new(WorkerShared {
        alive: AtomicBool::new(true),
        waiting: AtomicUsize::new(0),
        active: AtomicUsize::new(0),
        steps: AtomicU64::new(0),
        kv_reserved: AtomicUsize::new(0),
        max_kv_bytes: cfg.max_kv_bytes,
        max_queue: cfg.max_queue,
        retry_after_s: cfg.retry_after_s,
    });
    let handle = WorkerHandle {
        tx,
        shared: shared.clone(),
    };
    std::thread::Builder::new()
        .name("model-worker".into())
        .spawn(move || {
            metrics::gauge!(m::WORKER_ALIVE).set(1.0);
            // Unwinding drops the worker and the queue receiver, and with them every request's event
            // sender: waiting handlers see their channel close and answer 503 instead of hanging.
            let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
                Worker::new(make(), cfg, shared.clone()).run(rx)
            }));
            shared.mark_dead();
            if result.is_err() {
                // Logged by `DeadOnExit` already when the panic came from the loop.
                tracing::debug!("the model worker thread ended with a panic");
            }
        })?;
    Ok(handle)
}

struct Slot {
    request_id: String,
    events: UnboundedSender<WorkerEvent>,
    deadline: Instant,
    admitted: Instant,
    last_token: Option<Instant>,
    tokens: usize,
    kv_bytes: usize,
}

struct Worker<B> {
    backend: B,
    cache: SharedFeatureCache,
    slots: HashMap<SeqId, Slot>,
    pending: VecDeque<WorkItem>,
    limits: BatchLimits,
    shared: Arc<WorkerShared>,
    steps: u64,
}

impl<B: Backend> Worker<B> {
    fn new(backend: B, cfg: WorkerConfig, shared: Arc<WorkerShared>) -> Self {
        Self {
            backend,
            cache: cfg.cache,
            slots: HashMap::new(),
            pending: VecDeque::new(),
            limits: BatchLimits {
                max_batch_size: cfg.max_batch_size,
                max_batch_tokens: cfg.max_batch_tokens,
                max_kv_bytes: cfg.max_kv_bytes,
            },
            shared,
            steps: 0,
        }
    }

    fn run(mut self, rx: Receiver<WorkItem>) {
        // Declared in the body, so on a panic it drops before `self` and `rx` (parameters drop
        // last): the worker reads as dead before any waiting request sees its channel close.
        let _dead_on_exit = DeadOnExit(self.shared.clone());
        loop {
            if self.backend.is_empty() && self.pending.is_empty() {
                // Idle: sleep until a request arrives; all senders gone means the server is done.
                match rx.recv() {
                    Ok(item) => self.pending.push_back(item),
                    Err(_) => return,
                }
            }
            while let Ok(item) = rx.try_recv() {
                self.pending.push_back(item);
            }
            self.drop_abandoned_pending();
            self.admit_pending();
            if !self.backend.is_empty() {
                self.step();
            }
            self.evict_cancelled_and_expired();
            self.publish();
        }
    }

    fn kv_reserved(&self) -> usize {
        self.slots.values().map(|s| s.kv_bytes).sum()
    }

    fn left_queue(&self) {
        self.shared.waiting.fetch_sub(1, Ordering::SeqCst);
    }

    fn publish(&self) {
        self.shared
            .active
            .store(self.backend.len(), Ordering::SeqCst);
        let kv = self.kv_reserved();
        self.shared.kv_reserved.store(kv, Ordering::SeqCst);
        metrics::gauge!(m::KV_RESERVED_BYTES).set(kv as f64);
        m::publish_scheduler(
            self.shared.waiting.load(Ordering::SeqCst),
            self.backend.len(),
            kv as f64 / self.limits.max_kv_bytes.max(1) as f64,
        );
        let entries = self.cache.lock().unwrap_or_else(|e| e.into_inner()).len();
        metrics::gauge!(m::IMAGE_CACHE_ENTRIES).set(entries as f64);
        let prefix = self.backend.prefix_stats();
        metrics::counter!(m::PREFIX_CACHE_HITS).absolute(prefix.hits);
        metrics::counter!(m::PREFIX_CACHE_MISSES).absolute(prefix.lookups - prefix.hits);
        metrics::counter!(m::PREFIX_CACHE_REUSED_TOKENS).absolute(prefix.tokens_reused);
        metrics::counter!(m::PREFIX_CACHE_EVICTIONS).absolute(prefix.evictions);
        metrics::gauge!(m::PREFIX_CACHE_ENTRIES).set(prefix.entries as f64);
        metrics::gauge!(m::PREFIX_CACHE_BYTES).set(prefix.bytes as f64);
    }

    /// Requests whose client left or whose deadline passed while they waited never start.
    fn drop_abandoned_pending(&mut self) {
        let now = Instant::now();
        let before = self.pending.len();
        let mut kept = VecDeque::with_capacity(before);
        for item in self.pending.drain(..) {
            if item.events.is_closed() {
                metrics::counter!(m::EVICTED, "reason" => "client_gone").increment(1);
            } else if now > item.deadline {
                metrics::counter!(m::EVICTED, "reason" => "deadline").increment(1);
                let _ = item.events.send(WorkerEvent::Error(timeout_error()));
            } else {
                kept.push_back(item);
                continue;
            }
            self.shared.waiting.fetch_sub(1, Ordering::SeqCst);
        }
        self.pending = kept;
    }

    fn admit_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let waiting: Vec<Waiting> = self
            .pending
            .iter()
            .map(|i| Waiting {
                prompt_tokens: i.tokens.len(),
                rows: i.params.num_beams,
                kv_bytes: i.kv_bytes,
            })
            .collect();
        let running = Running {
            rows: self.backend.rows(),
            tokens: self.backend.pending_tokens(),
            kv_bytes: self.kv_reserved(),
        };
        let n = admit(&waiting, running, self.limits);
        if n == 0 {
            return;
        }
        let admitted: Vec<WorkItem> = self.pending.drain(..n).collect();
        let now = Instant::now();
        for item in &admitted {
            self.left_queue();
            let queued = now.saturating_duration_since(item.enqueued);
            metrics::histogram!(m::QUEUE_SECONDS).record(queued.as_secs_f64());
            let _ = item.events.send(WorkerEvent::Started { queued });
        }
        let features = self.encode_features(&admitted);
        for item in admitted {
            let span = tracing::debug_span!("prefill", request_id = %item.request_id, prompt_tokens = item.tokens.len(), images = item.images.len());
            let _entered = span.enter();
            match self.start(&item, &features) {
                Ok(seq) => {
                    self.slots.insert(
                        seq,
                        Slot {
                            request_id: item.request_id,
                            events: item.events,
                            deadline: item.deadline,
                            admitted: now,
                            last_token: None,
                            tokens: 0,
                            kv_bytes: item.kv_bytes,
                        },
                    );
                }
                Err(e) => {
                    tracing::warn!(request_id = %item.request_id, error = %e, "request failed to start");
                    let _ = item.events.send(WorkerEvent::Error(e));
                }
            }
        }
    }

    /// Features of every image the admitted requests need that the cache lacks, computed in
    /// batches (identical images once). A failed batch is retried image by image so one bad
    /// image fails only its own requests.
    fn encode_features(
        &mut self,
        items: &[WorkItem],
    ) -> HashMap<cache::Key, Result<Tensor, String>> {
        let mut out = HashMap::new();
        let mut seen = HashSet::new();
        let mut missing: Vec<&ImageInput> = Vec::new();
        for img in items.iter().flat_map(|i| &i.images) {
            if !seen.insert(img.hash) {
                continue;
            }
            if let Some(features) = &img.features {
                // Found in the cache before decoding (and already counted as a hit there).
                out.insert(img.hash, Ok(features.clone()));
                continue;
            }
            let cached = self
                .cache
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&img.hash);
            match cached {
                Some(t) => {
                    metrics::counter!(m::IMAGE_CACHE_HITS).increment(1);
                    out.insert(img.hash, Ok(t));
                }
                None => {
                    metrics::counter!(m::IMAGE_CACHE_MISSES).increment(1);
                    missing.push(img);
                }
            }
        }
        for chunk in missing.chunks(MAX_IMAGES_PER_ENCODE) {
            let started = Instant::now();
            let pixels: Vec<&[f32]> = chunk.iter().map(|i| i.pixels.as_slice()).collect();
            let encoded = match self.backend.encode_images(&pixels) {
                Ok(latents) => latents.into_iter().map(Ok).collect::<Vec<_>>(),
                Err(_) if chunk.len() > 1 => chunk
                    .iter()
                    .map(|i| {
                        self.backend
                            .encode_images(&[i.pixels.as_slice()])
                            .map(|mut v| v.remove(0))
                    })
                    .collect(),
                Err(e) => vec![Err(e)],
            };
            metrics::histogram!(m::ENCODE_SECONDS).record(started.elapsed().as_secs_f64());
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            for (img, latent) in chunk.iter().zip(encoded) {
                if let Ok(t) = &latent {
                    cache.insert(img.hash, t.clone());
                }
                out.insert(img.hash, latent);
            }
        }
        out
    }

    fn start(
        &mut self,
        item: &WorkItem,
        features: &HashMap<cache::Key, Result<Tensor, String>>,
    ) -> Result<SeqId, WorkerError> {
        let mut latents = Vec::with_capacity(item.images.len());
        for img in &item.images {
            match features.get(&img.hash) {
                Some(Ok(t)) => latents.push(t.clone()),
                Some(Err(e)) => {
                    return Err(WorkerError::ModelFailed(format!(
                        "image encoding failed: {e}"
                    )))
                }
                None => return Err(WorkerError::ModelFailed("image features missing".into())),
            }
        }
        let images =
            if latents.is_empty() {
                None
            } else {
                Some(Tensor::stack(&latents, 0).map_err(|e| {
                    WorkerError::ModelFailed(format!("stacking image features: {e}"))
                })?)
            };
        let request = SequenceRequest {
            tokens: item.tokens.clone(),
            images,
            image_keys: item.images.iter().map(|img| img.hash).collect(),
            params: item.params.clone(),
        };
        self.backend.add(request).map_err(WorkerError::Refused)
    }

    fn step(&mut self) {
        self.steps += 1;
        self.shared.steps.store(self.steps, Ordering::SeqCst);
        let (sequences, rows, tokens) = (
            self.backend.len(),
            self.backend.rows(),
            self.backend.pending_tokens(),
        );
        let phase = if tokens > rows { "prefill" } else { "decode" };
        let span = tracing::debug_span!("step", n = self.steps, sequences, rows, tokens, phase);
        let _entered = span.enter();
        let started = Instant::now();
        let outcome = self.backend.step();
        let elapsed = started.elapsed();
        metrics::histogram!(m::STEP_SECONDS, "phase" => phase).record(elapsed.as_secs_f64());
        metrics::histogram!(m::BATCH_SIZE).record(sequences as f64);
        metrics::histogram!(m::BATCH_TOKENS).record(tokens as f64);
        match outcome {
            Ok(events) => self.dispatch(events),
            // A failed step may have left some caches half-updated, so nothing in the batch can
            // continue; the worker itself keeps serving.
            Err(e) => self.fail_all(format!("model step failed: {e}")),
        }
    }

    fn dispatch(&mut self, events: Vec<Event>) {
        let now = Instant::now();
        let mut finishes: HashMap<SeqId, (FinishReason, Vec<Hypothesis>)> = HashMap::new();
        let mut tokens = Vec::new();
        for event in events {
            match event {
                Event::Token { seq, token } => tokens.push((seq, token)),
                Event::Finished {
                    seq,
                    reason,
                    hypotheses,
                } => {
                    finishes.insert(seq, (reason, hypotheses));
                }
            }
        }
        for (seq, token) in tokens {
            let finish = finishes.remove(&seq).map(|(reason, _)| reason);
            let Some(slot) = self.slots.get_mut(&seq) else {
                continue;
            };
            match slot.last_token {
                Some(prev) => metrics::histogram!(m::INTER_TOKEN_SECONDS)
                    .record(now.duration_since(prev).as_secs_f64()),
                None => metrics::histogram!(m::PREFILL_SECONDS)
                    .record(now.duration_since(slot.admitted).as_secs_f64()),
            }
            slot.last_token = Some(now);
            slot.tokens += 1;
            metrics::counter!(m::GENERATED_TOKENS).increment(1);
            let gone = slot
                .events
                .send(WorkerEvent::Token { token, finish })
                .is_err();
            if finish.is_some() || gone {
                if gone {
                    metrics::counter!(m::EVICTED, "reason" => "client_gone").increment(1);
                    self.backend.remove(seq);
                }
                self.finish_slot(seq);
            }
        }
        for (seq, (reason, hypotheses)) in finishes {
            if let Some(slot) = self.slots.get(&seq) {
                let _ = slot
                    .events
                    .send(WorkerEvent::Finished { reason, hypotheses });
                self.finish_slot(seq);
            }
        }
    }

    fn finish_slot(&mut self, seq: SeqId) {
        if let Some(slot) = self.slots.remove(&seq) {
            tracing::debug!(
                request_id = %slot.request_id,
                tokens = slot.tokens,
                decode_ms = slot.admitted.elapsed().as_secs_f64() * 1e3,
                "decode finished"
            );
        }
    }

    fn fail_all(&mut self, message: String) {
        tracing::error!(
            "{message}; failing the {} sequences of this batch",
            self.slots.len()
        );
        for (seq, slot) in self.slots.drain() {
            self.backend.remove(seq);
            let _ = slot
                .events
                .send(WorkerEvent::Error(WorkerError::ModelFailed(
                    message.clone(),
                )));
        }
    }

    /// Sequences whose client is gone (response dropped: closed connection, aborted stream,
    /// stop sequence or filter block decided by the handler) or whose deadline passed.
    fn evict_cancelled_and_expired(&mut self) {
        let now = Instant::now();
        let gone: Vec<(SeqId, bool)> = self
            .slots
            .iter()
            .filter_map(|(&seq, slot)| {
                if slot.events.is_closed() {
                    Some((seq, false))
                } else if now > slot.deadline {
                    Some((seq, true))
                } else {
                    None
                }
            })
            .collect();
        for (seq, expired) in gone {
            self.backend.remove(seq);
            if let Some(slot) = self.slots.remove(&seq) {
                if expired {
                    metrics::counter!(m::EVICTED, "reason" => "deadline").increment(1);
                    let _ = slot.events.send(WorkerEvent::Error(timeout_error()));
                } else {
                    metrics::counter!(m::EVICTED, "reason" => "client_gone").increment(1);
                    tracing::debug!(request_id = %slot.request_id, "sequence evicted: its client is gone");
                }
            }
        }
    }
}

struct DeadOnExit(Arc<WorkerShared>);

impl Drop for DeadOnExit {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!(
                "the model worker died; /ready now answers 503 and generation requests get 503"
            );
        }
        self.0.mark_dead();
    }
}

impl WorkerShared {
    /// Nothing runs or waits any more: `/health` fails from now on, and `/info` and the gauges
    /// stop showing the last batch.
    fn mark_dead(&self) {
        self.alive.store(false, Ordering::SeqCst);
        self.active.store(0, Ordering::SeqCst);
        self.waiting.store(0, Ordering::SeqCst);
        self.kv_reserved.store(0, Ordering::SeqCst);
        metrics::gauge!(m::WORKER_ALIVE).set(0.0);
        metrics::gauge!(m::QUEUE_DEPTH).set(0.0);
        metrics::gauge!(m::ACTIVE_SEQUENCES).set(0.0);
    }
}

fn timeout_error() -> WorkerError {
    WorkerError::DeadlinePassed
}
