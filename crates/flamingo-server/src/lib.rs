//! flamingo-serve: the HTTP server around the OpenFlamingo model crate.

pub mod api;
pub mod app;
pub mod config;
pub mod error;
pub mod filter;
pub mod prepare;
pub mod routes;
pub mod session;
pub mod state;
pub mod worker;
