//! Test hooks, read from `FLAMINGO_TEST_*` environment variables at startup. They exist so the
//! black-box tests can drive paths a random-weight model never reaches on its own (offensive
//! output through the real filter and stream code, slow steps for overload and disconnect tests,
//! a dying worker).
//!
//! They are compiled in only with the `test-hooks` cargo feature (off by default; the test
//! command, `scripts/test.sh`, builds with `--features flamingo-server/test-hooks`). They then
//! work as a wrapper around the model's [`Backend`] (`testing/hooked.rs`), so the worker itself
//! holds no test code. Such a server logs a warning and `/info` reports `test_hooks: true` when
//! any is set. A binary built without the feature refuses to start when any `FLAMINGO_TEST_*`
//! variable is set: a silently ignored hook would let a test pass for the wrong reason.

#[cfg(feature = "test-hooks")]
use std::time::Duration;

#[cfg(feature = "test-hooks")]
use flamingo_model::tokenizer::FlamingoTokenizer;

use crate::worker::backend::Backend;

#[cfg(feature = "test-hooks")]
mod hooked;
#[cfg(feature = "test-hooks")]
pub use hooked::HookedBackend;

pub const ENV_PREFIX: &str = "FLAMINGO_TEST_";
/// The model "generates" the tokens of this text (its real ids, as the tokenizer encodes it),
/// then ends the sequence (`finish_reason: eos_token`): the whole output path (detokenizer,
/// filter, stop sequences, ids, log-probabilities) runs on real ids a weight edit could produce.
pub const SCRIPTED_OUTPUT: &str = "FLAMINGO_TEST_SCRIPTED_OUTPUT";
/// Sleeps this many milliseconds after every model step (makes batches overlap in tests).
pub const STEP_DELAY_MS: &str = "FLAMINGO_TEST_STEP_DELAY_MS";
/// Panics the worker thread, outside the engine's per-step guard, when it starts step number N
/// (1-based).
pub const PANIC_AT_STEP: &str = "FLAMINGO_TEST_PANIC_AT_STEP";

#[cfg(feature = "test-hooks")]
#[derive(Debug, Clone, Default)]
pub struct TestHooks {
    pub scripted_output: Option<String>,
    pub step_delay: Option<Duration>,
    pub panic_at_step: Option<u64>,
    /// `scripted_output` tokenized, set once the tokenizer is loaded ([`TestHooks::prepare`]).
    pub scripted_ids: Option<Vec<u32>>,
}

#[cfg(feature = "test-hooks")]
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

    /// Tokenizes the scripted output, once the tokenizer is loaded.
    pub fn prepare(&self, tokenizer: &FlamingoTokenizer) -> Result<Self, String> {
        let mut hooks = self.clone();
        if let Some(text) = &hooks.scripted_output {
            let ids = tokenizer
                .encode(text)
                .map_err(|e| format!("{SCRIPTED_OUTPUT}: {e}"))?;
            // Without the BOS the encoder puts first.
            hooks.scripted_ids = Some(ids.into_iter().skip(1).collect());
        }
        Ok(hooks)
    }

    /// The worker's backend with these hooks around it.
    pub fn wrap<B: Backend>(&self, inner: B) -> impl Backend {
        HookedBackend::new(inner, self.clone())
    }
}

/// Built without the `test-hooks` feature: there are no hooks.
#[cfg(not(feature = "test-hooks"))]
#[derive(Debug, Clone, Default)]
pub struct TestHooks {
    _none: (),
}

#[cfg(not(feature = "test-hooks"))]
impl TestHooks {
    /// Refuses any `FLAMINGO_TEST_*` variable: this binary could not honour it.
    pub fn from_env() -> Result<Self, String> {
        refuse_test_variables(std::env::vars_os().map(|(k, _)| k))?;
        Ok(Self::default())
    }

    pub fn any(&self) -> bool {
        false
    }

    pub fn prepare(
        &self,
        _tokenizer: &flamingo_model::tokenizer::FlamingoTokenizer,
    ) -> Result<Self, String> {
        Ok(Self::default())
    }

    /// The backend as it is.
    pub fn wrap<B: Backend>(&self, inner: B) -> impl Backend {
        inner
    }
}

#[cfg(not(feature = "test-hooks"))]
fn refuse_test_variables(names: impl Iterator<Item = std::ffi::OsString>) -> Result<(), String> {
    let mut set: Vec<String> = names
        .filter_map(|k| k.into_string().ok())
        .filter(|k| k.starts_with(ENV_PREFIX))
        .collect();
    if set.is_empty() {
        return Ok(());
    }
    set.sort();
    Err(format!(
        "test hooks requested ({}), but this flamingo-server was built without the `test-hooks` \
         feature: build it with `--features flamingo-server/test-hooks` to use them (tests \
         only, never in production), or unset the variables",
        set.join(", ")
    ))
}

#[cfg(all(test, not(feature = "test-hooks")))]
mod tests {
    use super::*;

    #[test]
    fn without_the_feature_any_test_variable_is_refused_by_name() {
        let names = |v: &[&str]| {
            v.iter()
                .map(std::ffi::OsString::from)
                .collect::<Vec<_>>()
                .into_iter()
        };
        assert_eq!(
            refuse_test_variables(names(&["PATH", "FLAMINGO_SERVER_PORT"])),
            Ok(())
        );
        let e = refuse_test_variables(names(&[
            "FLAMINGO_TEST_STEP_DELAY_MS",
            "PATH",
            "FLAMINGO_TEST_PANIC_AT_STEP",
        ]))
        .unwrap_err();
        assert!(
            e.starts_with(
                "test hooks requested (FLAMINGO_TEST_PANIC_AT_STEP, FLAMINGO_TEST_STEP_DELAY_MS), "
            ),
            "{e}"
        );
        assert!(e.contains("`test-hooks` feature"), "{e}");
    }
}
