//! `edge-ops-http`: what the agent's and the consumer's operations share: the ops endpoints'
//! plumbing, systemd notification and the log setup. Each service keeps its own path table and
//! routing (`ops/http.rs`), its own metrics (`ops/metrics.rs`) and its own rules for when it is
//! ready, healthy and reloaded (`ops/supervise.rs`, `ops/health.rs`).
//!
//! # Map
//!
//! | module | does |
//! | --- | --- |
//! | [`server`] | the accept loop and hyper's HTTP/1 responder over a service's [`Router`]; the bounds [`MAX_REQUEST`], [`DEADLINE`], [`MAX_CONNECTIONS`] |
//! | [`prometheus`] | the Prometheus text exposition format 0.0.4: [`prometheus::Out`] writes families and samples (one at a time or from row tables: `counters`, `gauges`, `family`), label values escaped |
//! | [`token`] | the optional bearer token of the endpoints that show data ([`Token`]): read from a file, compared in constant time; the health probes stay open |
//! | [`signal`] | SIGTERM/SIGINT for a synchronous main loop: a thread that calls back once |
//! | [`notify`] | `sd_notify` over `$NOTIFY_SOCKET` (READY, STOPPING, RELOADING, WATCHDOG) with a std `UnixDatagram`, abstract sockets included; the watchdog interval from `$WATCHDOG_USEC` |
//! | [`logging`] | `--log-format human\|json` on stderr, the level from `RUST_LOG` |
//! | `testing` (feature `test-util`) | a one-shot client for the services' endpoint tests |
#![forbid(unsafe_code)]

pub mod logging;
pub mod notify;
pub mod prometheus;
pub mod server;
pub mod signal;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;
pub mod token;

pub use server::{
    serve, serve_with, verdict, Response, Router, DEADLINE, MAX_CONNECTIONS, MAX_REQUEST,
};
pub use token::Token;
