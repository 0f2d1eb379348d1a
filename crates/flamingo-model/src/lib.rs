//! OpenFlamingo (v1 release semantics) in candle.

pub mod beam;
pub mod config;
pub mod engine;
pub mod error;
pub mod flamingo;
pub mod kernels;
pub mod kv_cache;
pub mod linear;
pub mod llama;
pub mod media;
pub mod nn;
pub mod paths;
pub mod perceiver;
pub mod preprocess;
pub mod sampling;
pub mod tokenizer;
pub mod vision;
pub mod weights;
pub mod xattn;

pub use config::{FlamingoConfig, MediaRule};
pub use error::{LoadError, ModelError, Result};
pub use flamingo::{Flamingo, LoadOptions, LogitsFor, PackedInput, SequenceState, Trace};
pub use paths::{ModelPaths, VisionWeights};
