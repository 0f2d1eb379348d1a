//! flamingo-eval: reproduces the OpenFlamingo-9B card's COCO CIDEr and VQAv2 accuracy through
//! the flamingo-serve HTTP API. See README.md.

pub mod cli;
pub mod client;
pub mod datasets;
pub mod metrics;
pub mod prompts;
pub mod pytext;
pub mod report;
pub mod runner;
pub mod sampling;
pub mod tasks;
