//! The batching worker: one thread owns the model. Requests arrive through a bounded queue and
//! join the running batch between decode steps (continuous batching); finished, cancelled
//! (receiver dropped) and expired sequences leave it.

pub mod cache;
pub mod policy;

use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::Tensor;
use flamingo_model::engine::{Engine, Event, FinishReason, GeneratedToken, GenerationParams, Hypothesis, SeqId, SequenceRequest};
use flamingo_model::Flamingo;
use tokio::sync::mpsc::UnboundedSender;

use crate::error::{ApiError, ErrorKind};
use crate::prepare::ImageInput;
use cache::FeatureCache;
use policy::{admit, BatchLimits, Waiting};

pub struct WorkItem {
    pub tokens: Vec<u32>,
    pub images: Vec<ImageInput>,
    pub params: GenerationParams,
    pub events: UnboundedSender<WorkerEvent>,
    pub deadline: Instant,
    pub enqueued: Instant,
}

#[derive(Debug)]
pub enum WorkerEvent {
    /// The prompt was prefilled; `queued` is the time spent waiting.
    Started { queued: Duration },
    Token(GeneratedToken),
    Finished { reason: FinishReason, hypotheses: Vec<Hypothesis> },
    Error(ApiError),
}

/// Shared view of the worker for handlers, /ready and metrics.
#[derive(Clone)]
pub struct WorkerHandle {
    tx: SyncSender<WorkItem>,
    pub alive: Arc<AtomicBool>,
    pub queued: Arc<AtomicUsize>,
    pub active: Arc<AtomicUsize>,
    retry_after_s: u64,
}

impl WorkerHandle {
    /// Queues a request or refuses at once (429 when full, 503 when the worker is gone).
    pub fn submit(&self, item: WorkItem) -> Result<(), ApiError> {
        if !self.alive.load(Ordering::SeqCst) {
            return Err(ApiError::new(ErrorKind::Unavailable, "the model worker is not running").retry_after(self.retry_after_s));
        }
        self.queued.fetch_add(1, Ordering::SeqCst);
        match self.tx.try_send(item) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.queued.fetch_sub(1, Ordering::SeqCst);
                Err(match e {
                    TrySendError::Full(_) => ApiError::new(ErrorKind::Overloaded, "the request queue is full; retry later"),
                    TrySendError::Disconnected(_) => ApiError::new(ErrorKind::Unavailable, "the model worker is not running"),
                }
                .retry_after(self.retry_after_s))
            }
        }
    }
}

pub struct WorkerConfig {
    pub max_batch_size: usize,
    pub max_batch_tokens: usize,
    pub max_queue: usize,
    pub image_cache_entries: usize,
    pub retry_after_s: u64,
}

pub fn spawn(model: Arc<Flamingo>, cfg: WorkerConfig) -> std::io::Result<WorkerHandle> {
    // The channel holds the queue; the worker drains it into its own FIFO each iteration, so the
    // bound applies to requests not yet taken in.
    let (tx, rx) = std::sync::mpsc::sync_channel(cfg.max_queue);
    let handle = WorkerHandle {
        tx,
        alive: Arc::new(AtomicBool::new(true)),
        queued: Arc::new(AtomicUsize::new(0)),
        active: Arc::new(AtomicUsize::new(0)),
        retry_after_s: cfg.retry_after_s,
    };
    let h = handle.clone();
    std::thread::Builder::new().name("model-worker".into()).spawn(move || {
        let alive = h.alive.clone();
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| Worker::new(model, cfg, h).run(rx)));
        if result.is_err() {
            tracing::error!("model worker panicked outside a step; the server is no longer ready");
        }
        alive.store(false, Ordering::SeqCst);
    })?;
    Ok(handle)
}

struct Slot {
    events: UnboundedSender<WorkerEvent>,
    deadline: Instant,
    last_token: Option<Instant>,
}

struct Worker {
    engine: Engine,
    cache: FeatureCache,
    slots: HashMap<SeqId, Slot>,
    pending: VecDeque<WorkItem>,
    limits: BatchLimits,
    handle: WorkerHandle,
    /// Queue capacity: how many items the worker takes out of the channel at most.
    max_pending: usize,
}

impl Worker {
    fn new(model: Arc<Flamingo>, cfg: WorkerConfig, handle: WorkerHandle) -> Self {
        Self {
            engine: Engine::new(model),
            cache: FeatureCache::new(cfg.image_cache_entries),
            slots: HashMap::new(),
            pending: VecDeque::new(),
            limits: BatchLimits { max_batch_size: cfg.max_batch_size, max_batch_tokens: cfg.max_batch_tokens },
            handle,
            max_pending: cfg.max_queue,
        }
    }

    fn run(mut self, rx: Receiver<WorkItem>) {
        loop {
            if self.engine.is_empty() && self.pending.is_empty() {
                match rx.recv_timeout(Duration::from_millis(200)) {
                    Ok(item) => self.take(item),
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
            while self.pending.len() < self.max_pending {
                match rx.try_recv() {
                    Ok(item) => self.take(item),
                    Err(_) => break,
                }
            }
            self.drop_abandoned_pending();
            self.admit_pending();
            if !self.engine.is_empty() {
                self.step();
            }
            self.evict_cancelled_and_expired();
            self.publish();
        }
    }

    fn take(&mut self, item: WorkItem) {
        self.handle.queued.fetch_sub(1, Ordering::SeqCst);
        self.pending.push_back(item);
    }

    fn publish(&self) {
        self.handle.active.store(self.engine.len(), Ordering::SeqCst);
        metrics::gauge!("flamingo_batch_size").set(self.engine.len() as f64);
        metrics::gauge!("flamingo_queue_depth")
            .set((self.pending.len() + self.handle.queued.load(Ordering::SeqCst)) as f64);
        metrics::gauge!("flamingo_image_cache_entries").set(self.cache.len() as f64);
    }

    fn drop_abandoned_pending(&mut self) {
        let now = Instant::now();
        self.pending.retain(|item| {
            if item.events.is_closed() {
                return false;
            }
            if now > item.deadline {
                let _ = item.events.send(WorkerEvent::Error(ApiError::new(ErrorKind::Timeout, "the request waited past its deadline")));
                return false;
            }
            true
        });
    }

    fn admit_pending(&mut self) {
        let waiting: Vec<Waiting> = self
            .pending
            .iter()
            .map(|i| Waiting { prompt_tokens: i.tokens.len(), rows: i.params.num_beams })
            .collect();
        let n = admit(&waiting, self.engine.len(), self.engine.rows(), self.limits);
        for _ in 0..n {
            let Some(item) = self.pending.pop_front() else { break };
            let started = Instant::now();
            match self.start(&item) {
                Ok(seq) => {
                    let _ = item.events.send(WorkerEvent::Started { queued: started.duration_since(item.enqueued) });
                    metrics::histogram!("flamingo_queue_seconds").record(started.duration_since(item.enqueued).as_secs_f64());
                    self.slots.insert(seq, Slot { events: item.events, deadline: item.deadline, last_token: None });
                }
                Err(e) => {
                    let _ = item.events.send(WorkerEvent::Error(e));
                }
            }
        }
    }

    /// Image features (cached by hash) and the sequence's entry in the engine.
    fn start(&mut self, item: &WorkItem) -> Result<SeqId, ApiError> {
        let _span = tracing::info_span!("prefill_prepare", images = item.images.len()).entered();
        let mut latents: Vec<Option<Tensor>> = item.images.iter().map(|i| self.cache.get(&i.hash)).collect();
        let missing: Vec<usize> = (0..latents.len()).filter(|&i| latents[i].is_none()).collect();
        if !missing.is_empty() {
            let pixels: Vec<&[f32]> = missing.iter().map(|&i| item.images[i].pixels.as_slice()).collect();
            let encoded = self.engine.encode_images(&pixels).map_err(|e| ApiError::internal(format!("image encoding failed: {e}")))?;
            for (&i, t) in missing.iter().zip(encoded) {
                self.cache.insert(item.images[i].hash, t.clone());
                latents[i] = Some(t);
            }
        }
        let latents: Vec<Tensor> = latents.into_iter().flatten().collect();
        let images = if latents.is_empty() {
            None
        } else {
            Some(Tensor::stack(&latents, 0).map_err(|e| ApiError::internal(e.to_string()))?)
        };
        self.engine
            .add(SequenceRequest { tokens: item.tokens.clone(), images, params: item.params.clone() })
            .map_err(|e| ApiError::validation(e.to_string()))
    }

    fn step(&mut self) {
        let rows = self.engine.rows();
        let started = Instant::now();
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| self.engine.step()));
        metrics::histogram!("flamingo_step_seconds").record(started.elapsed().as_secs_f64());
        metrics::histogram!("flamingo_step_rows").record(rows as f64);
        let events = match outcome {
            Ok(Ok(events)) => events,
            Ok(Err(e)) => return self.fail_all(format!("model step failed: {e}")),
            Err(_) => return self.fail_all("model step panicked".into()),
        };
        let now = Instant::now();
        for event in events {
            match event {
                Event::Token { seq, token } => {
                    if let Some(slot) = self.slots.get_mut(&seq) {
                        if let Some(prev) = slot.last_token {
                            metrics::histogram!("flamingo_inter_token_seconds").record(now.duration_since(prev).as_secs_f64());
                        }
                        slot.last_token = Some(now);
                        metrics::counter!("flamingo_generated_tokens_total").increment(1);
                        if slot.events.send(WorkerEvent::Token(token)).is_err() {
                            self.engine.remove(seq);
                            self.slots.remove(&seq);
                        }
                    }
                }
                Event::Finished { seq, reason, hypotheses } => {
                    if let Some(slot) = self.slots.remove(&seq) {
                        let _ = slot.events.send(WorkerEvent::Finished { reason, hypotheses });
                    }
                }
            }
        }
    }

    /// A step failed for a reason we cannot pin on one request: fail the batch, keep serving.
    fn fail_all(&mut self, message: String) {
        tracing::error!("{message}; failing {} sequences", self.slots.len());
        for (seq, slot) in self.slots.drain() {
            self.engine.remove(seq);
            let _ = slot.events.send(WorkerEvent::Error(ApiError::internal(message.clone())));
        }
    }

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
            self.engine.remove(seq);
            if let Some(slot) = self.slots.remove(&seq) {
                if expired {
                    let _ = slot.events.send(WorkerEvent::Error(ApiError::new(ErrorKind::Timeout, "the request passed its deadline")));
                } else {
                    metrics::counter!("flamingo_cancelled_total").increment(1);
                }
            }
        }
    }
}
