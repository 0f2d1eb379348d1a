//! flamingo-serve: the HTTP server around the OpenFlamingo model crate.
//!
//! Request path: `routes` (HTTP shapes) -> `prompt` (rendering) -> `pipeline` (validation and
//! image preprocessing on the blocking pool, then the queue) -> `worker` (one thread owning the
//! model, continuous batching) -> `session` (detokenization, stop sequences, content filter) ->
//! back to `routes` as JSON or SSE.

pub mod affinity;
pub mod api;
pub mod app;
pub mod budget;
pub mod config;
pub mod error;
pub mod fetch;
pub mod filter;
pub mod images;
pub mod metrics;
pub mod output;
pub mod pipeline;
pub mod prompt;
pub mod routes;
pub mod server;
pub mod session;
pub mod sse;
pub mod startup;
pub mod state;
pub mod testing;
pub mod validation;
pub mod worker;
