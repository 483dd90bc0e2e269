//! `edge-tests`: shared helpers for the end-to-end suites in `tests/tests/`.
//!
//! The suites talk to real brokers started by `tests/services/services.sh start`, which writes
//! their addresses to `.services/env` at the workspace root. [`Services::from_env`] reads the
//! process environment first, then that file, and a test that needs a broker that is not there
//! **fails with a message saying how to start it**: it never skips silently.
#![forbid(unsafe_code)]

pub mod bins;
pub mod check;
pub mod cluster;
pub mod config;
pub mod http;
pub mod kafka;
pub mod mqtt;
pub mod schedule;
pub mod services;

pub use services::Services;
