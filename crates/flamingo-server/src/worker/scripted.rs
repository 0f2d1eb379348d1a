//! A [`Backend`] that plays a script instead of running a model, for the worker's unit tests:
//! every sequence generates the ids [`ScriptedBackend::token_ids`] (one a step, the first in the
//! step that takes its prompt) until `max_new_tokens` or a stop token, a beam search reports one
//! hypothesis at the end. Through its [`Control`] a test makes it refuse a prompt, fail or panic
//! at a step, fail on an image, or wait for permission before each step, and reads back what
//! it saw.

use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use flamingo_model::engine::{
    Event, FinishReason, GeneratedToken, GenerationParams, Hypothesis, PrefixStats, SeqId,
    SequenceRequest,
};

use super::backend::{Backend, BackendResult};

/// An image whose first value is this fails to encode.
pub const BAD_PIXEL: f32 = -1.0;

struct Sequence {
    id: SeqId,
    prompt: Vec<u32>,
    prefilled: bool,
    generated: Vec<u32>,
    params: GenerationParams,
}

pub struct ScriptedBackend {
    control: Control,
    /// One message per step allowed (when the test paces the steps).
    gate: Option<Receiver<()>>,
    active: Vec<Sequence>,
    next_id: SeqId,
    steps: u64,
}

/// The test's side of a [`ScriptedBackend`].
#[derive(Clone)]
pub struct Control {
    state: Arc<Mutex<State>>,
    gate: Option<Sender<()>>,
}

#[derive(Default)]
struct State {
    refuse_first_token: Option<u32>,
    fail_at_step: Option<u64>,
    panic_at_step: Option<u64>,
    /// The step waiting for permission, if one is.
    at_gate: Option<u64>,
    /// The sequences of every step, in batch order.
    steps: Vec<Vec<SeqId>>,
    /// The prompts added, in order.
    added: Vec<Vec<u32>>,
    /// The sequences the worker removed (not those that finished on their own).
    removed: Vec<SeqId>,
    /// Images per `encode_images` call.
    encode_calls: Vec<usize>,
}

impl ScriptedBackend {
    /// Steps as fast as the worker asks.
    pub fn new() -> (Self, Control) {
        Self::build(None)
    }

    /// Each step waits for [`Control::allow_steps`].
    pub fn stepped() -> (Self, Control) {
        let (tx, rx) = std::sync::mpsc::channel();
        Self::build(Some((tx, rx)))
    }

    fn build(gate: Option<(Sender<()>, Receiver<()>)>) -> (Self, Control) {
        let (tx, rx) = gate.unzip();
        let control = Control {
            state: Arc::default(),
            gate: tx,
        };
        let backend = Self {
            control: control.clone(),
            gate: rx,
            active: Vec::new(),
            next_id: 1,
            steps: 0,
        };
        (backend, control)
    }

    /// The ids a greedy sequence generates: 100, 101, ...
    pub fn token_ids(n: usize) -> Vec<u32> {
        (0..n as u32).map(|k| 100 + k).collect()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.control.state()
    }
}

impl Backend for ScriptedBackend {
    fn len(&self) -> usize {
        self.active.len()
    }

    fn rows(&self) -> usize {
        self.active
            .iter()
            .map(|s| if s.prefilled { s.params.num_beams } else { 1 })
            .sum()
    }

    fn pending_tokens(&self) -> usize {
        self.active
            .iter()
            .map(|s| {
                if s.prefilled {
                    s.params.num_beams
                } else {
                    s.prompt.len()
                }
            })
            .sum()
    }

    fn prefix_stats(&self) -> PrefixStats {
        PrefixStats::default()
    }

    fn encode_images(&self, images: &[&[f32]]) -> BackendResult<Vec<Tensor>> {
        self.state().encode_calls.push(images.len());
        if images.iter().any(|img| img.first() == Some(&BAD_PIXEL)) {
            return Err("scripted bad image".into());
        }
        images
            .iter()
            .map(|_| Tensor::zeros((1, 1), DType::F32, &Device::Cpu).map_err(|e| e.to_string()))
            .collect()
    }

    fn add(&mut self, request: SequenceRequest) -> BackendResult<SeqId> {
        let mut state = self.state();
        if request.tokens.first() == state.refuse_first_token.as_ref() {
            return Err(format!("scripted refusal of {:?}", request.tokens));
        }
        state.added.push(request.tokens.clone());
        drop(state);
        let id = self.next_id;
        self.next_id += 1;
        self.active.push(Sequence {
            id,
            prompt: request.tokens,
            prefilled: false,
            generated: Vec::new(),
            params: request.params,
        });
        Ok(id)
    }

    fn step(&mut self) -> BackendResult<Vec<Event>> {
        self.steps += 1;
        let n = self.steps;
        if let Some(gate) = &self.gate {
            self.control.state().at_gate = Some(n);
            // Disconnected: the test is over, run free.
            let _ = gate.recv();
            self.control.state().at_gate = None;
        }
        let (fail, panic) = {
            let mut state = self.state();
            state.steps.push(self.active.iter().map(|s| s.id).collect());
            (
                state.fail_at_step == Some(n),
                state.panic_at_step == Some(n),
            )
        };
        if panic {
            panic!("scripted panic at step {n}");
        }
        if fail {
            return Err(format!("scripted failure at step {n}"));
        }
        let (mut events, mut finished) = (Vec::new(), Vec::new());
        for s in &mut self.active {
            s.prefilled = true;
            let id = 100 + s.generated.len() as u32;
            s.generated.push(id);
            let beams = s.params.num_beams > 1;
            if !beams {
                events.push(Event::Token {
                    seq: s.id,
                    token: token(id),
                });
            }
            let reason = if !beams && s.params.stop_tokens.contains(&id) {
                FinishReason::StopToken
            } else if s.generated.len() >= s.params.max_new_tokens {
                FinishReason::Length
            } else {
                continue;
            };
            let hypotheses = if beams {
                vec![Hypothesis {
                    tokens: s.generated.iter().map(|&id| token(id)).collect(),
                    score: -1.0,
                }]
            } else {
                Vec::new()
            };
            finished.push(s.id);
            events.push(Event::Finished {
                seq: s.id,
                reason,
                hypotheses,
            });
        }
        self.active.retain(|s| !finished.contains(&s.id));
        Ok(events)
    }

    fn remove(&mut self, seq: SeqId) {
        self.state().removed.push(seq);
        self.active.retain(|s| s.id != seq);
    }
}

fn token(id: u32) -> GeneratedToken {
    GeneratedToken {
        id,
        logprob: -0.5,
        top: Vec::new(),
    }
}

impl Control {
    fn state(&self) -> MutexGuard<'_, State> {
        // A scripted panic never holds the lock, but a failed assertion elsewhere might.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `add` refuses prompts that begin with `token`.
    pub fn refuse_prompts_starting_with(&self, token: u32) {
        self.state().refuse_first_token = Some(token);
    }

    /// Step `n` (1-based) returns an error.
    pub fn fail_at_step(&self, n: u64) {
        self.state().fail_at_step = Some(n);
    }

    /// Step `n` (1-based) panics.
    pub fn panic_at_step(&self, n: u64) {
        self.state().panic_at_step = Some(n);
    }

    /// Lets `n` more steps run (a [`ScriptedBackend::stepped`] backend only).
    pub fn allow_steps(&self, n: usize) {
        let gate = self.gate.as_ref().expect("a stepped backend");
        for _ in 0..n {
            gate.send(()).expect("the backend is gone");
        }
    }

    /// Waits until step `n` waits for permission: the worker has admitted what it will admit
    /// before that step.
    pub fn wait_at_gate(&self, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.state().at_gate != Some(n) {
            assert!(
                Instant::now() < deadline,
                "step {n} never came (steps so far: {:?})",
                self.steps()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The sequences of every step so far, in batch order.
    pub fn steps(&self) -> Vec<Vec<SeqId>> {
        self.state().steps.clone()
    }

    pub fn added(&self) -> Vec<Vec<u32>> {
        self.state().added.clone()
    }

    pub fn removed(&self) -> Vec<SeqId> {
        self.state().removed.clone()
    }

    pub fn encode_calls(&self) -> Vec<usize> {
        self.state().encode_calls.clone()
    }
}
