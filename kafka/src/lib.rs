//! `edge-kafka`: the Kafka plumbing `edge-agent`'s forwarder and `edge-consumer`'s loop share,
//! and the end-to-end suites and the demo reuse. Blocking calls only (librdkafka's transaction
//! calls block): run them on a thread of their own, never on an async worker.
//!
//! # Map
//!
//! | module | holds |
//! | --- | --- |
//! | [`broker_log`] | the client context of every client: librdkafka's log lines to `tracing`, and the last broker failure it logged (why a connection failed) |
//! | [`config`] | the base client settings (bootstrap, the reconnect backoff), the transactional settings, and which passthrough settings each role reads |
//! | [`topics`] | does a topic exist (its partition count), create topics (an existing one is fine) |
//! | [`txn`] | the transactional producer's life cycle (init, begin, send, wait, commit, abort, all bounded) and fencing |
//! | [`errors`] | which `KafkaError`s are fatal, which mean another producer fenced ours, which are a lost connection; a throttle for logging those |
//! | [`records`] | an owned copy of a received record's headers |
//! | [`security`] | `[kafka.security]` of both services: typed TLS and SASL settings, their checks, and which librdkafka build features they need |
//!
//! Each service keeps its own settings (the agent's producer tuning, the consumer's group
//! settings) and its own error type; this crate has the pieces whose rules are the same for
//! both, so they are written once.
#![forbid(unsafe_code)]

pub mod broker_log;
pub mod config;
pub mod errors;
pub mod records;
pub mod security;
pub mod topics;
pub mod txn;

pub use broker_log::{recent_failure, BrokerLog};
pub use config::{applies_to, client_config, set_transactional, Role, RECONNECT_BACKOFF_MAX_MS};
pub use errors::{fenced_code, is_connection_loss, is_fatal, Throttle, FENCED};
pub use records::owned_headers;
pub use security::{missing_features, pem_files, Security, SECURITY_CLIENT_KEYS};
pub use topics::{admin_options, create_topics, partition_count, TopicError};
pub use txn::TxnProducer;
