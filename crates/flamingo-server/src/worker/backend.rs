//! What the worker needs from a model, as a trait: [`Engine`] in production, a scripted stand-in
//! (`scripted.rs`) in the worker's unit tests, and, in a binary built with the `test-hooks`
//! feature, a wrapper around the engine that bends its steps for the black-box tests
//! (`crate::testing`).
//!
//! Failures come back as `Err` with their message. A panic that escapes a method is a bug of the
//! worker's own kind: it ends the worker thread (marked dead; every request still waiting hears
//! of it). The [`Engine`] implementation therefore turns the model's panics into errors, so one
//! bad request or step cannot take the worker down.

use std::panic::AssertUnwindSafe;

use candle_core::Tensor;
use flamingo_model::engine::{Engine, Event, PrefixStats, SeqId, SequenceRequest};

/// A backend's failure: the message the affected requests' errors carry.
pub type BackendResult<T> = Result<T, String>;

/// The operations the batching worker runs on the model, one call per admission, step or eviction.
pub trait Backend {
    /// Sequences in the batch (a beam search counts once).
    fn len(&self) -> usize;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rows the next step runs (beams count each).
    fn rows(&self) -> usize;

    /// Tokens the next step processes (prompt tokens being prefilled plus one per decoding row).
    fn pending_tokens(&self) -> usize;

    /// The prompt-prefix cache's counters, for the metrics.
    fn prefix_stats(&self) -> PrefixStats;

    /// Resampled features of normalised images (see [`Engine::encode_images`]), one tensor per
    /// image, in order.
    fn encode_images(&self, images: &[&[f32]]) -> BackendResult<Vec<Tensor>>;

    /// Adds a sequence; the next step starts on its prompt. An error refuses this request only.
    fn add(&mut self, request: SequenceRequest) -> BackendResult<SeqId>;

    /// One step of every sequence in the batch; finished sequences leave it. An error fails the
    /// whole batch (its caches may be half updated), not the backend.
    fn step(&mut self) -> BackendResult<Vec<Event>>;

    /// Drops a sequence (cancelled, expired, failed); unknown ids are ignored.
    fn remove(&mut self, seq: SeqId);
}

impl Backend for Engine {
    fn len(&self) -> usize {
        Engine::len(self)
    }

    fn is_empty(&self) -> bool {
        Engine::is_empty(self)
    }

    fn rows(&self) -> usize {
        Engine::rows(self)
    }

    fn pending_tokens(&self) -> usize {
        Engine::pending_tokens(self)
    }

    fn prefix_stats(&self) -> PrefixStats {
        Engine::prefix_stats(self)
    }

    fn encode_images(&self, images: &[&[f32]]) -> BackendResult<Vec<Tensor>> {
        guarded(|| Engine::encode_images(self, images))
    }

    fn add(&mut self, request: SequenceRequest) -> BackendResult<SeqId> {
        guarded(|| Engine::add(self, request))
    }

    fn step(&mut self) -> BackendResult<Vec<Event>> {
        guarded(|| Engine::step(self))
    }

    fn remove(&mut self, seq: SeqId) {
        Engine::remove(self, seq);
    }
}

/// Runs a model call, turning both its error and a panic into a message.
fn guarded<T>(f: impl FnOnce() -> flamingo_model::Result<T>) -> BackendResult<T> {
    match std::panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(panic) => Err(format!(
            "panicked: {}",
            panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or(panic.downcast_ref::<&str>().copied())
                .unwrap_or("unknown")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flamingo_model::error::ModelError;

    #[test]
    fn a_model_call_reports_its_error_or_its_panic_as_a_message() {
        assert_eq!(guarded(|| Ok(7)), Ok(7));
        assert_eq!(
            guarded::<()>(|| Err(ModelError::Input("bad shape".into()))),
            Err(ModelError::Input("bad shape".into()).to_string())
        );
        let n = 3;
        assert_eq!(
            guarded::<()>(|| panic!("index {n} out of range")),
            Err("panicked: index 3 out of range".into())
        );
        assert_eq!(
            guarded::<()>(|| panic!("static")),
            Err("panicked: static".into())
        );
    }
}
