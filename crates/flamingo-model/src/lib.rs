//! OpenFlamingo (v1 release semantics) in candle.

pub(crate) mod beam;
pub mod config;
pub mod engine;
pub mod error;
pub(crate) mod flamingo;
#[doc(hidden)] // for bench_model only; not part of the API
pub mod kernels;
pub(crate) mod kv_cache;
pub mod linear;
pub(crate) mod llama;
pub mod media;
#[doc(hidden)] // for bench_model only; not part of the API
pub mod nn;
pub mod paths;
pub(crate) mod perceiver;
pub(crate) mod prefix_cache;
pub mod preprocess;
pub mod sampling;
pub mod spec;
pub mod tokenizer;
pub(crate) mod vision;
pub(crate) mod weights;
pub(crate) mod xattn;

pub use config::{FlamingoConfig, MediaRule};
pub use error::{LoadError, ModelError, Result};
pub use flamingo::{
    resolve_config, Flamingo, LoadOptions, LogitsFor, PackedInput, SequenceState, Trace,
};
pub use paths::{ModelPaths, VisionWeights};
pub use spec::ModelSpec;
