//! Test-only hooks, read from `FLAMINGO_TEST_*` environment variables at startup. They exist so
//! the black-box tests can drive paths a random-weight model never reaches on its own (offensive
//! output through the real filter and stream code, slow steps for overload and disconnect tests,
//! a dying worker). Never set them in production: the server logs a warning and `/info` reports
//! `test_hooks: true` when any is set.

use std::time::Duration;

pub const ENV_PREFIX: &str = "FLAMINGO_TEST_";
/// The model "generates" the tokens of this text (its real ids, as the tokenizer encodes it),
/// then ends the sequence (`finish_reason: eos_token`): the whole output path (detokenizer,
/// filter, stop sequences, ids, log-probabilities) runs on real ids a weight edit could produce.
pub const SCRIPTED_OUTPUT: &str = "FLAMINGO_TEST_SCRIPTED_OUTPUT";
/// Sleeps this many milliseconds after every model step (makes batches overlap in tests).
pub const STEP_DELAY_MS: &str = "FLAMINGO_TEST_STEP_DELAY_MS";
/// Panics the worker thread, outside its per-step guard, when it starts step number N (1-based).
pub const PANIC_AT_STEP: &str = "FLAMINGO_TEST_PANIC_AT_STEP";

#[derive(Debug, Clone, Default)]
pub struct TestHooks {
    pub scripted_output: Option<String>,
    pub step_delay: Option<Duration>,
    pub panic_at_step: Option<u64>,
    /// `scripted_output` tokenized, set once the tokenizer is loaded.
    pub scripted_ids: Option<Vec<u32>>,
}

impl TestHooks {
    pub fn from_env() -> Result<Self, String> {
        let number = |var: &str| -> Result<Option<u64>, String> {
            match std::env::var(var) {
                Ok(v) => v
                    .trim()
                    .parse()
                    .map(Some)
                    .map_err(|_| format!("{var}: expected an integer, got `{v}`")),
                Err(_) => Ok(None),
            }
        };
        Ok(Self {
            scripted_output: std::env::var(SCRIPTED_OUTPUT).ok(),
            step_delay: number(STEP_DELAY_MS)?.map(Duration::from_millis),
            panic_at_step: number(PANIC_AT_STEP)?,
            scripted_ids: None,
        })
    }

    pub fn any(&self) -> bool {
        self.scripted_output.is_some() || self.step_delay.is_some() || self.panic_at_step.is_some()
    }
}
