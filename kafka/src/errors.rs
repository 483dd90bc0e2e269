//! What a `KafkaError` means for the caller: another producer fenced ours, or fatal (no new
//! session can fix it), or worth retrying; and which errors are a lost broker connection,
//! reported by librdkafka so often during an outage that they are logged through a
//! [`Throttle`]. Each service wraps these answers in its own error
//! type and decides what it does with them.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// Codes that mean another producer took our transactional id (bumped the epoch).
pub const FENCED: [RDKafkaErrorCode; 3] = [
    RDKafkaErrorCode::Fenced,
    RDKafkaErrorCode::ProducerFenced,
    RDKafkaErrorCode::InvalidProducerEpoch,
];

/// The fencing code inside a transactional call's error, when librdkafka says it is fatal.
pub fn fenced_code(error: &KafkaError) -> Option<RDKafkaErrorCode> {
    match error {
        KafkaError::Transaction(e) if e.is_fatal() && FENCED.contains(&e.code()) => Some(e.code()),
        _ => None,
    }
}

/// Whether no new session can fix `error`: a fatal transactional error (fencing included), a
/// client librdkafka refused to create or configure, fencing or an authorization failure on any
/// call, or librdkafka's own `Fatal`. Everything else (broker away, timeouts, an aborted
/// transaction, a rebalance race) is retryable.
pub fn is_fatal(error: &KafkaError) -> bool {
    match error {
        KafkaError::Transaction(t) => t.is_fatal(),
        KafkaError::ClientCreation(_) | KafkaError::ClientConfig(..) => true,
        other => other.rdkafka_error_code().is_some_and(|code| {
            FENCED.contains(&code)
                || matches!(
                    code,
                    RDKafkaErrorCode::TopicAuthorizationFailed
                        | RDKafkaErrorCode::GroupAuthorizationFailed
                        | RDKafkaErrorCode::TransactionalIdAuthorizationFailed
                        | RDKafkaErrorCode::ClusterAuthorizationFailed
                        | RDKafkaErrorCode::Fatal
                )
        }),
    }
}

/// Whether `code` says a broker connection failed: during an outage librdkafka reports these
/// on every failed reconnect of every client, several a second, and retries by itself.
pub fn is_connection_loss(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::AllBrokersDown
            | RDKafkaErrorCode::BrokerTransportFailure
            | RDKafkaErrorCode::Resolve
    )
}

/// Lets one report of each kind through per interval and counts the ones it holds back, so an
/// outage is logged as a few lines with counts instead of a flood.
#[derive(Debug)]
pub struct Throttle {
    every: Duration,
    /// Per code (as librdkafka numbers it): the last report and the count held back since.
    last: Mutex<HashMap<i32, (Instant, u64)>>,
}

impl Throttle {
    pub fn new(every: Duration) -> Throttle {
        Throttle {
            every,
            last: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(n)`: report this one, `n` of its kind were held back since the last report;
    /// `None`: hold it back.
    pub fn admit(&self, code: RDKafkaErrorCode) -> Option<u64> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let key = code as i32;
        match last.get_mut(&key) {
            Some((at, held)) if now.duration_since(*at) < self.every => {
                *held += 1;
                None
            }
            Some((at, held)) => {
                *at = now;
                Some(std::mem::take(held))
            }
            None => {
                last.insert(key, (now, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_throttle_admits_one_per_interval_and_kind_and_counts_the_rest() {
        let t = Throttle::new(Duration::from_millis(200));
        let down = RDKafkaErrorCode::AllBrokersDown;
        assert_eq!(t.admit(down), Some(0));
        assert_eq!(t.admit(down), None);
        assert_eq!(t.admit(down), None);
        // Another kind has its own interval.
        assert_eq!(t.admit(RDKafkaErrorCode::Resolve), Some(0));
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(
            t.admit(down),
            Some(2),
            "two held back since the last report"
        );
        assert_eq!(t.admit(down), None);
    }

    #[test]
    fn connection_losses_are_told_apart_from_other_errors() {
        assert!(is_connection_loss(RDKafkaErrorCode::AllBrokersDown));
        assert!(is_connection_loss(RDKafkaErrorCode::BrokerTransportFailure));
        assert!(!is_connection_loss(
            RDKafkaErrorCode::TopicAuthorizationFailed
        ));
        assert!(!is_connection_loss(
            RDKafkaErrorCode::UnknownTopicOrPartition
        ));
    }

    #[test]
    fn fencing_authorization_and_bad_configuration_are_fatal_broker_trouble_is_not() {
        for code in [
            RDKafkaErrorCode::ProducerFenced,
            RDKafkaErrorCode::InvalidProducerEpoch,
            RDKafkaErrorCode::TopicAuthorizationFailed,
            RDKafkaErrorCode::Fatal,
        ] {
            assert!(is_fatal(&KafkaError::MessageProduction(code)), "{code:?}");
        }
        assert!(is_fatal(&KafkaError::ClientCreation("x".into())));
        for code in [
            RDKafkaErrorCode::AllBrokersDown,
            RDKafkaErrorCode::OperationTimedOut,
            RDKafkaErrorCode::QueueFull,
        ] {
            assert!(!is_fatal(&KafkaError::MessageProduction(code)), "{code:?}");
        }
        // A plain (non-transactional) error is not "fenced" for the forwarder.
        let plain = KafkaError::MessageProduction(RDKafkaErrorCode::ProducerFenced);
        assert_eq!(fenced_code(&plain), None);
    }
}
