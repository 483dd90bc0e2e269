//! What a `KafkaError` means for the caller: another producer fenced ours, or fatal (no new
//! session can fix it), or worth retrying. Each service wraps these answers in its own error
//! type and decides what it does with them.

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

#[cfg(test)]
mod tests {
    use super::*;

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
