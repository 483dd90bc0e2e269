//! Client settings every client of edge-ingest starts from, and the settings that make a
//! producer transactional. Callers add their own on top (and a user passthrough last, where the
//! service has one).

use rdkafka::config::ClientConfig;

/// Longest wait between two connection attempts to a broker, in ms. librdkafka's default
/// (10 s, plus up to 50 % jitter) is reached within a few seconds of an outage, so the first
/// attempt after the broker is back could come 15 s late; a second costs one failed connect a
/// second while the broker is away. A service's passthrough (`[kafka.client]`) may override it.
pub const RECONNECT_BACKOFF_MAX_MS: &str = "1000";

/// `bootstrap.servers` and `reconnect.backoff.max.ms` ([`RECONNECT_BACKOFF_MAX_MS`]).
pub fn client_config(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("reconnect.backoff.max.ms", RECONNECT_BACKOFF_MAX_MS);
    config
}

/// Which kind of client a passthrough setting is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Producer,
    Consumer,
}

/// librdkafka properties that only a consumer reads (scope `C` in librdkafka's
/// `CONFIGURATION.md`, 2.12). A producer given one logs a CONFWARN and ignores it.
const CONSUMER_ONLY: &[&str] = &[
    "group.id",
    "group.instance.id",
    "partition.assignment.strategy",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "group.protocol.type",
    "group.protocol",
    "group.remote.assignor",
    "coordinator.query.interval.ms",
    "max.poll.interval.ms",
    "enable.auto.commit",
    "auto.commit.interval.ms",
    "enable.auto.offset.store",
    "queued.min.messages",
    "queued.max.messages.kbytes",
    "fetch.wait.max.ms",
    "fetch.queue.backoff.ms",
    "fetch.message.max.bytes",
    "max.partition.fetch.bytes",
    "fetch.max.bytes",
    "fetch.min.bytes",
    "fetch.error.backoff.ms",
    "offset.store.method",
    "isolation.level",
    "enable.partition.eof",
    "check.crcs",
    "auto.offset.reset",
    "consume.callback.max.messages",
];

/// librdkafka properties that only a producer reads (scope `P`). A consumer given one logs a
/// CONFWARN and ignores it.
const PRODUCER_ONLY: &[&str] = &[
    "transactional.id",
    "transaction.timeout.ms",
    "enable.idempotence",
    "enable.gapless.guarantee",
    "queue.buffering.max.messages",
    "queue.buffering.max.kbytes",
    "queue.buffering.max.ms",
    "linger.ms",
    "message.send.max.retries",
    "retries",
    "queue.buffering.backpressure.threshold",
    "compression.codec",
    "compression.type",
    "compression.level",
    "batch.num.messages",
    "batch.size",
    "delivery.report.only.error",
    "sticky.partitioning.linger.ms",
    "request.required.acks",
    "acks",
    "request.timeout.ms",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "partitioner",
];

/// Whether a client of `role` reads property `key`: the other role's own properties are kept
/// from it, so a shared passthrough (`[kafka.client]`) makes no CONFWARN in either log.
pub fn applies_to(key: &str, role: Role) -> bool {
    let other = match role {
        Role::Producer => CONSUMER_ONLY,
        Role::Consumer => PRODUCER_ONLY,
    };
    !other.contains(&key)
}

/// Makes `config` a transactional producer's: `transactional.id`, idempotence, `acks=all` and
/// the transaction timeout. Set last, after any passthrough: exactly once depends on them, so no
/// user setting may change them.
pub fn set_transactional(config: &mut ClientConfig, transactional_id: &str, timeout_ms: u64) {
    config
        .set("transactional.id", transactional_id)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("transaction.timeout.ms", timeout_ms.to_string());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_client_starts_from_bootstrap_and_a_one_second_reconnect_backoff() {
        let c = client_config("h:1");
        assert_eq!(c.get("bootstrap.servers"), Some("h:1"));
        assert_eq!(c.get("reconnect.backoff.max.ms"), Some("1000"));
    }

    #[test]
    fn each_role_keeps_the_others_own_properties_out_and_shares_the_rest() {
        assert!(!applies_to("session.timeout.ms", Role::Producer));
        assert!(applies_to("session.timeout.ms", Role::Consumer));
        assert!(!applies_to("linger.ms", Role::Consumer));
        assert!(applies_to("linger.ms", Role::Producer));
        for shared in ["security.protocol", "sasl.username", "client.id", "debug"] {
            assert!(applies_to(shared, Role::Producer), "{shared}");
            assert!(applies_to(shared, Role::Consumer), "{shared}");
        }
    }

    #[test]
    fn transactional_settings_overwrite_what_was_there() {
        let mut c = client_config("h:1");
        c.set("acks", "1").set("enable.idempotence", "false");
        set_transactional(&mut c, "t.1", 60_000);
        assert_eq!(c.get("transactional.id"), Some("t.1"));
        assert_eq!(c.get("enable.idempotence"), Some("true"));
        assert_eq!(c.get("acks"), Some("all"));
        assert_eq!(c.get("transaction.timeout.ms"), Some("60000"));
    }
}
