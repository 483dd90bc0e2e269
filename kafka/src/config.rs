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
