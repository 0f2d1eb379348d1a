//! The HTTP API as types: request bodies (`request`), response bodies (`response`) and the
//! OpenAPI document generated from them and the route table (`openapi`), which `openapi.yaml`
//! at the repository root must equal.

pub mod openapi;
mod request;
mod response;
mod schemas;

pub use request::*;
pub use response::*;
pub use schemas::{ChatCompletionChunkSse, CompletionSse, StreamEventSse};
