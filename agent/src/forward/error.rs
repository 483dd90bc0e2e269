//! The forwarder's errors, sorted into what a retry can fix and what it cannot.

use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use super::progress::InstanceId;
use crate::outbox::OutboxError;
use crate::store::codec::Truncated;
use crate::store::{redb_errors_into, StoreError};

/// Why a forwarding session (or the forwarder) stopped.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// Another producer with our transactional id initialised after us: a second agent started
    /// with the same id. Fatal: this agent stops rather than fight over the id.
    #[error("fenced: another agent with id {agent} took over (transactional id `{transactional_id}`); this agent stops")]
    Fenced {
        agent: String,
        transactional_id: String,
    },
    /// The committed progress of this agent id was written by another database.
    #[error("the progress of agent id `{agent}` in Kafka topic `{topic}` was committed by instance {theirs}, but this database is instance {ours}: two gateways share the id, or the database was replaced. Resuming from another instance's sequence would skip records, so the agent refuses to start; give this gateway its own id, or set `kafka.adopt_agent_id = true` to take the id over (this instance then forwards its whole outbox)")]
    ForeignInstance {
        agent: String,
        topic: String,
        ours: InstanceId,
        theirs: InstanceId,
    },
    /// The committed marker of this instance names a seq this outbox never reached: the
    /// database was restored from an older copy. Resuming would skip its new records.
    #[error("the progress of agent id `{agent}` in Kafka names outbox seq {marker_seq}, but this database's outbox has only reached {next_seq} (exclusive): it was restored from an older copy. Resuming would skip records; set `kafka.adopt_agent_id = true` to forward this outbox as it is")]
    MarkerAhead {
        agent: String,
        marker_seq: u64,
        next_seq: u64,
    },
    /// A topic is missing and `create_topics = false`.
    #[error("Kafka topic `{topic}` does not exist and `kafka.create_topics = false`: create it, or allow the agent to")]
    MissingTopic { topic: String },
    /// A committed progress marker cannot be read.
    #[error("the progress marker at {topic}/{partition}@{offset} is unreadable ({reason}); refusing to guess where to resume")]
    BadMarker {
        topic: String,
        partition: i32,
        offset: i64,
        reason: BadMarker,
    },
    /// Another producer's open transaction kept the progress partition unreadable.
    #[error("progress partition {topic}/{partition} stayed unreadable at offset {position} below its end {high} for {waited:?} (another agent's open transaction holds it back); retrying")]
    ProgressTimeout {
        topic: String,
        partition: i32,
        position: i64,
        high: i64,
        waited: Duration,
    },
    /// A Kafka call failed; [`ForwardError::is_retryable`] sorts it.
    #[error("Kafka, while {during}: {source}")]
    Kafka {
        during: &'static str,
        #[source]
        source: KafkaError,
    },
    /// The open transaction was aborted after an error; nothing of it is visible.
    #[error("transaction aborted after: {0}")]
    Aborted(#[source] Box<ForwardError>),
    #[error("outbox: {0}")]
    Outbox(#[from] OutboxError),
    #[error("forwarder state in the database: {0}")]
    Store(#[from] StoreError),
    #[error("cannot read /dev/urandom for the instance id: {0}")]
    Random(#[source] std::io::Error),
    #[error("cannot start the admin client's runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// Shutdown was asked for while waiting.
    #[error("cancelled")]
    Cancelled,
}

/// What is wrong with a stored marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadMarker {
    #[error("unknown version {0}")]
    Version(u8),
    #[error("truncated")]
    Truncated,
    #[error("trailing bytes")]
    Trailing,
    #[error("agent id is not UTF-8")]
    Agent,
}

impl From<Truncated> for BadMarker {
    fn from(_: Truncated) -> Self {
        BadMarker::Truncated
    }
}

redb_errors_into!(ForwardError);

/// Wraps a Kafka error with what was being done (for `map_err`).
pub fn kafka(during: &'static str) -> impl Fn(KafkaError) -> ForwardError {
    move |source| ForwardError::Kafka { during, source }
}

/// How far back a broker failure logged by librdkafka is taken as the reason of a Kafka error:
/// longer than the longest call that waits on a broker (15 s), shorter than an old outage.
const BROKER_FAILURE_WINDOW: Duration = Duration::from_secs(60);

impl ForwardError {
    /// For a failed Kafka call: why librdkafka's last broker connection failed, if it logged
    /// that lately (a SASL authentication error, a TLS handshake failure; the call itself says
    /// only `BrokerTransportFailure` or timed out).
    pub fn broker_failure(&self) -> Option<String> {
        match self {
            ForwardError::Kafka { .. } => edge_kafka::recent_failure(BROKER_FAILURE_WINDOW),
            ForwardError::Aborted(inner) => inner.broker_failure(),
            _ => None,
        }
    }

    /// Whether a new session (after a backoff) can succeed. Broker trouble, timeouts, aborted
    /// transactions and even a producer librdkafka declared unusable are retryable: a new
    /// producer resumes from the progress in Kafka. Not retryable: fencing, another instance's
    /// progress, a missing topic we may not create, an unreadable marker, a bad client
    /// configuration, a corrupt outbox. The database parts delegate to
    /// [`StoreError::is_retryable`]'s one rule.
    pub fn is_retryable(&self) -> bool {
        match self {
            ForwardError::Fenced { .. }
            | ForwardError::ForeignInstance { .. }
            | ForwardError::MarkerAhead { .. }
            | ForwardError::MissingTopic { .. }
            | ForwardError::BadMarker { .. }
            | ForwardError::Random(_)
            | ForwardError::Runtime(_) => false,
            ForwardError::Kafka { source, .. } => !matches!(
                source,
                KafkaError::ClientConfig(..) | KafkaError::ClientCreation(_)
            ),
            ForwardError::Outbox(e) => e.is_retryable(),
            ForwardError::Store(e) => e.is_retryable(),
            ForwardError::ProgressTimeout { .. }
            | ForwardError::Aborted(_)
            | ForwardError::Cancelled => true,
        }
    }

    /// Whether this says another producer fenced ours.
    pub fn is_fenced_code(code: RDKafkaErrorCode) -> bool {
        edge_kafka::FENCED.contains(&code)
    }
}

/// The fencing code inside a Kafka error, if librdkafka says it is fatal (one rule for both
/// services: [`edge_kafka::fenced_code`]).
pub use edge_kafka::fenced_code;

/// Whether a failed transactional call left a transaction that must be aborted before the
/// producer can be used again.
pub fn requires_abort(error: &KafkaError) -> bool {
    matches!(error, KafkaError::Transaction(e) if e.txn_requires_abort())
}
