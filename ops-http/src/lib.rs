//! `edge-ops-http`: what the agent's and the consumer's ops endpoints share. Each service keeps
//! its own path table and routing (`ops/http.rs`) and its own metrics (`ops/metrics.rs`).
//!
//! # Map
//!
//! | module | does |
//! | --- | --- |
//! | [`server`] | the accept loop and hyper's HTTP/1 responder over a service's [`Router`]; the bounds [`MAX_REQUEST`], [`DEADLINE`], [`MAX_CONNECTIONS`] |
//! | [`prometheus`] | the Prometheus text exposition format 0.0.4: [`prometheus::Out`] writes families and samples (one at a time or from row tables: `counters`, `gauges`, `family`), label values escaped |
//! | [`signal`] | SIGTERM/SIGINT for a synchronous main loop: a thread that calls back once |
//! | `testing` (feature `test-util`) | a one-shot client for the services' endpoint tests |
#![forbid(unsafe_code)]

pub mod prometheus;
pub mod server;
pub mod signal;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;

pub use server::{
    serve, serve_with, verdict, Response, Router, DEADLINE, MAX_CONNECTIONS, MAX_REQUEST,
};
