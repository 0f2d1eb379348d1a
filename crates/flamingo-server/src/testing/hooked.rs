//! The test hooks as a [`Backend`] around the real one: it panics at a given step, sleeps after
//! each step, or replaces the generated token ids by the scripted ones and ends the sequence
//! after the last (as if it had generated a stop token).

use std::collections::HashMap;

use candle_core::Tensor;
use flamingo_model::engine::{Event, FinishReason, PrefixStats, SeqId, SequenceRequest};

use super::{TestHooks, PANIC_AT_STEP};
use crate::worker::backend::{Backend, BackendResult};

pub struct HookedBackend<B> {
    inner: B,
    hooks: TestHooks,
    /// Steps started so far.
    steps: u64,
    /// Tokens each sequence has generated so far (kept only with a scripted output).
    generated: HashMap<SeqId, usize>,
}

impl<B: Backend> HookedBackend<B> {
    pub fn new(inner: B, hooks: TestHooks) -> Self {
        Self {
            inner,
            hooks,
            steps: 0,
            generated: HashMap::new(),
        }
    }

    /// Gives each token of a sequence the next scripted id; after the last one the sequence
    /// leaves the batch, finished by a stop token (unless it finished this step anyway).
    fn script(&mut self, script: &[u32], events: &mut Vec<Event>) {
        let mut ended = Vec::new();
        for event in events.iter_mut() {
            if let Event::Token { seq, token } = event {
                let n = self.generated.entry(*seq).or_insert(0);
                if let Some(&id) = script.get(*n) {
                    token.id = id;
                }
                *n += 1;
                if *n >= script.len() {
                    ended.push(*seq);
                }
            }
        }
        for event in events.iter() {
            if let Event::Finished { seq, .. } = event {
                self.generated.remove(seq);
                ended.retain(|s| s != seq);
            }
        }
        for seq in ended {
            self.remove(seq);
            events.push(Event::Finished {
                seq,
                reason: FinishReason::StopToken,
                hypotheses: Vec::new(),
            });
        }
    }
}

impl<B: Backend> Backend for HookedBackend<B> {
    fn len(&self) -> usize {
        self.inner.len()
    }

    fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }

    fn rows(&self) -> usize {
        self.inner.rows()
    }

    fn pending_tokens(&self) -> usize {
        self.inner.pending_tokens()
    }

    fn prefix_stats(&self) -> PrefixStats {
        self.inner.prefix_stats()
    }

    fn encode_images(&self, images: &[&[f32]]) -> BackendResult<Vec<Tensor>> {
        self.inner.encode_images(images)
    }

    fn add(&mut self, request: SequenceRequest) -> BackendResult<SeqId> {
        self.inner.add(request)
    }

    fn step(&mut self) -> BackendResult<Vec<Event>> {
        self.steps += 1;
        if self.hooks.panic_at_step == Some(self.steps) {
            // Outside the engine's guard: the worker thread dies, as with a bug of its own.
            panic!("{PANIC_AT_STEP} reached step {}", self.steps);
        }
        let outcome = self.inner.step();
        if let Some(d) = self.hooks.step_delay {
            std::thread::sleep(d);
        }
        let mut events = outcome?;
        if let Some(script) = self.hooks.scripted_ids.take() {
            self.script(&script, &mut events);
            self.hooks.scripted_ids = Some(script);
        }
        Ok(events)
    }

    fn remove(&mut self, seq: SeqId) {
        self.generated.remove(&seq);
        self.inner.remove(seq);
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use flamingo_model::engine::GenerationParams;

    use super::*;
    use crate::worker::scripted::ScriptedBackend;

    fn request(max_new_tokens: usize) -> SequenceRequest {
        SequenceRequest {
            tokens: vec![1, 2, 3],
            images: None,
            image_keys: Vec::new(),
            params: GenerationParams {
                max_new_tokens,
                ..GenerationParams::default()
            },
        }
    }

    /// The (seq, id) of a step's tokens and the (seq, reason) of its finishes.
    type Split = (Vec<(SeqId, u32)>, Vec<(SeqId, FinishReason)>);

    fn split(events: Vec<Event>) -> Split {
        let (mut tokens, mut finished) = (Vec::new(), Vec::new());
        for e in events {
            match e {
                Event::Token { seq, token } => tokens.push((seq, token.id)),
                Event::Finished { seq, reason, .. } => finished.push((seq, reason)),
            }
        }
        (tokens, finished)
    }

    fn scripted(ids: &[u32]) -> TestHooks {
        TestHooks {
            scripted_ids: Some(ids.to_vec()),
            ..TestHooks::default()
        }
    }

    #[test]
    fn scripted_ids_replace_the_generated_ones_then_a_stop_ends_the_sequence() {
        let (inner, control) = ScriptedBackend::new();
        let mut b = HookedBackend::new(inner, scripted(&[7, 8, 9]));
        let a = b.add(request(10)).unwrap();
        assert_eq!(split(b.step().unwrap()), (vec![(a, 7)], vec![]));
        let c = b.add(request(10)).unwrap();
        assert_eq!(split(b.step().unwrap()), (vec![(a, 8), (c, 7)], vec![]));
        assert_eq!(
            split(b.step().unwrap()),
            (vec![(a, 9), (c, 8)], vec![(a, FinishReason::StopToken)])
        );
        assert_eq!(b.len(), 1, "the scripted end removed the sequence");
        assert_eq!(control.removed(), vec![a]);
        assert_eq!(
            split(b.step().unwrap()),
            (vec![(c, 9)], vec![(c, FinishReason::StopToken)])
        );
        assert!(b.is_empty());
    }

    #[test]
    fn a_sequence_that_ends_on_its_own_keeps_its_reason() {
        let (inner, control) = ScriptedBackend::new();
        let mut b = HookedBackend::new(inner, scripted(&[7, 8, 9]));
        let a = b.add(request(2)).unwrap();
        b.step().unwrap();
        assert_eq!(
            split(b.step().unwrap()),
            (vec![(a, 8)], vec![(a, FinishReason::Length)])
        );
        // Same step as the script's end: one finish, the model's own.
        let c = b.add(request(3)).unwrap();
        b.step().unwrap();
        b.step().unwrap();
        assert_eq!(
            split(b.step().unwrap()),
            (vec![(c, 9)], vec![(c, FinishReason::Length)])
        );
        assert!(control.removed().is_empty());
        assert!(b.generated.is_empty(), "no count outlives its sequence");
    }

    #[test]
    fn the_panic_hook_escapes_at_its_step_and_the_delay_slows_each_step() {
        let (inner, _control) = ScriptedBackend::new();
        let mut b = HookedBackend::new(
            inner,
            TestHooks {
                panic_at_step: Some(3),
                step_delay: Some(Duration::from_millis(30)),
                ..TestHooks::default()
            },
        );
        b.add(request(10)).unwrap();
        let started = Instant::now();
        b.step().unwrap();
        b.step().unwrap();
        assert!(started.elapsed() >= Duration::from_millis(60));
        let panic = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| b.step()))
            .expect_err("step 3 panics");
        assert_eq!(
            panic.downcast_ref::<String>().map(String::as_str),
            Some("FLAMINGO_TEST_PANIC_AT_STEP reached step 3")
        );
    }

    #[test]
    fn without_hooks_the_backend_passes_through() {
        let (inner, _control) = ScriptedBackend::new();
        let mut b = HookedBackend::new(inner, TestHooks::default());
        let a = b.add(request(2)).unwrap();
        let (tokens, _) = split(b.step().unwrap());
        let (more, finished) = split(b.step().unwrap());
        let ids: Vec<u32> = tokens.iter().chain(&more).map(|&(_, id)| id).collect();
        assert_eq!(ids, ScriptedBackend::token_ids(2));
        assert_eq!(finished, vec![(a, FinishReason::Length)]);
    }
}
