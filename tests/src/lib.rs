//! `edge-tests`: shared helpers for the end-to-end suites in `tests/tests/`.
//!
//! The suites talk to real brokers started by `tests/services/services.sh start`, which writes
//! their addresses to `.services/env` at the workspace root. [`Services::from_env`] reads the
//! process environment first, then that file, and a test that needs a broker that is not there
//! **fails with a message saying how to start it**: it never skips silently.
//!
//! # Map
//!
//! | module | holds |
//! | --- | --- |
//! | [`services`] | where the test brokers are ([`Services`]) |
//! | [`bins`] | the workspace binaries built on demand; `edge-agent run` spawned plain or with its stderr in a file ([`bins::AgentProc`]) |
//! | [`config`] | pieces of agent configuration the suites write: an MQTT JSON source, the `[kafka.topics]` table |
//! | [`modbus`] | the pymodbus peer (`tests/peers/modbus_server.py`) over TCP or a `socat` pty pair (RTU) |
//! | [`sparkplug`] | Sparkplug B payloads built by Google's protobuf from the checked-in `.proto` (`tests/peers/sparkplug_payloads.py`) |
//! | [`mqtt`] | client options, a persistent session created ahead of the agent, unique names, the PUBACK counter of every publisher |
//! | [`kafka`] | topics, committed reads, kcat counts |
//! | [`cluster`] | a private Kafka cluster for the fault suites |
//! | [`http`] | a free loopback port and a tiny GET for the ops endpoints |
//! | [`schedule`] | fault schedules: a printed clock seed, xorshift draws, the SIGKILL loop |
//! | [`check`] | assertions the accounting shares |
//! | [`venv`] | the Python virtualenvs of the peers (pymodbus, protobuf), made by `scripts/install-deps.sh` |
//! | [`upgrade`] | the previous release (`v0.1.0`) built from its release commit, for the rolling-upgrade suite |
//! | [`schema`] | the JSON Schemas of `protocol/schemas/` applied to the records a suite reads |
//!
//! Helpers used by one family of suites only stay in its `tests/tests/<family>_support/`.
#![forbid(unsafe_code)]

pub mod bins;
pub mod check;
pub mod cluster;
pub mod config;
pub mod http;
pub mod kafka;
pub mod modbus;
pub mod mqtt;
pub mod schedule;
pub mod schema;
pub mod services;
pub mod sparkplug;
pub mod upgrade;
pub mod venv;

pub use services::Services;
