//! librdkafka's log lines, and the last broker failure they reported.
//!
//! librdkafka says *why* a broker connection failed (a SASL authentication error naming the
//! mechanism, a TLS handshake failure, a refused connection) only in a `FAIL` log line, written
//! from its own broker thread; the call that was waiting on the broker gets a bare
//! `BrokerTransportFailure` or a timeout. [`BrokerLog`] is the client context that logs those
//! lines (target `librdkafka`, like rdkafka's default context) and remembers the last `FAIL`
//! line of the process, so a service can put the reason beside the error it reports
//! ([`recent_failure`]): `/readyz` then says "invalid credentials with SASL mechanism
//! SCRAM-SHA-512" instead of "transport failure".
//!
//! One slot for the whole process: each service talks to one Kafka cluster, and the reason is
//! only ever shown next to an error of the same moment ([`recent_failure`] takes a bound).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::ConsumerContext;
use rdkafka::producer::ProducerContext;
use rdkafka::ClientConfig;

/// The last `FAIL` line and when it was logged.
static LAST_FAILURE: Mutex<Option<(Instant, String)>> = Mutex::new(None);

/// The client context of every client made by [`create`]: librdkafka's log lines go to
/// `tracing` (target `librdkafka`), its `FAIL` lines are remembered.
#[derive(Debug, Clone, Copy, Default)]
pub struct BrokerLog;

impl ClientContext for BrokerLog {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        if fac == "FAIL" {
            if let Ok(mut last) = LAST_FAILURE.lock() {
                *last = Some((Instant::now(), message.to_owned()));
            }
        }
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", "librdkafka: {fac} {message}")
            }
            RDKafkaLogLevel::Warning => {
                tracing::warn!(target: "librdkafka", "librdkafka: {fac} {message}")
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", "librdkafka: {fac} {message}")
            }
            RDKafkaLogLevel::Debug => {
                tracing::debug!(target: "librdkafka", "librdkafka: {fac} {message}")
            }
        }
    }
}

impl ConsumerContext for BrokerLog {}

impl ProducerContext for BrokerLog {
    type DeliveryOpaque = ();

    /// Delivery reports are read from the transaction's outcome, not one by one.
    fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, _: ()) {}
}

/// Creates a client of any kind (producer, consumer, admin) with the [`BrokerLog`] context.
pub fn create<T>(config: &ClientConfig) -> rdkafka::error::KafkaResult<T>
where
    T: rdkafka::config::FromClientConfigAndContext<BrokerLog>,
{
    config.create_with_context(BrokerLog)
}

/// The last broker failure librdkafka logged, if it was logged within `within`.
pub fn recent_failure(within: Duration) -> Option<String> {
    let last = LAST_FAILURE.lock().ok()?;
    last.as_ref()
        .filter(|(at, _)| at.elapsed() <= within)
        .map(|(_, message)| message.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fail_line_is_remembered_and_other_lines_are_not() {
        BrokerLog.log(RDKafkaLogLevel::Info, "CONFWARN", "not a failure");
        BrokerLog.log(
            RDKafkaLogLevel::Error,
            "FAIL",
            "sasl_ssl://b:9095/bootstrap: SASL authentication error: invalid credentials",
        );
        BrokerLog.log(RDKafkaLogLevel::Info, "CONFWARN", "still not a failure");
        let recent = recent_failure(Duration::from_secs(60)).expect("remembered");
        assert!(recent.contains("SASL authentication error"), "{recent}");
        assert_eq!(recent_failure(Duration::ZERO), None, "older than the bound");
    }
}
