//! The Prometheus text exposition (format 0.0.4) of [`Telemetry`].
//!
//! Counters are process-lifetime (they start at 0 with the process and survive SIGHUP reloads);
//! the persisted, since-creation counters are in `edge-agent inspect`. Gauges about the buffer
//! come from the health sampler's last read (at most about a second old). The full list, with
//! what each alert-worthy value looks like, is in `deploy/OPERATIONS.md`.

use std::sync::atomic::{AtomicU64, Ordering};

use edge_ops_http::prometheus::{escape, Out};

use super::health::SourceState;
use super::Telemetry;

fn get(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// Renders every metric.
pub fn render(t: &Telemetry) -> String {
    let mut o = Out::with_capacity(8 * 1024);
    let now = tokio::time::Instant::now();
    let health = t.health();
    o.head("edge_agent_info", "gauge", "Build information.");
    o.labelled(
        "edge_agent_info",
        &format!("version=\"{}\"", crate::VERSION),
        1,
    );
    o.one(
        "edge_agent_uptime_seconds",
        "gauge",
        "Seconds since the process started.",
        t.started.elapsed().as_secs(),
    );
    o.one(
        "edge_agent_healthy",
        "gauge",
        "1 while /healthz answers 200.",
        u8::from(health.unhealthy(now).is_empty()),
    );
    o.one(
        "edge_agent_ready",
        "gauge",
        "1 while /readyz answers 200.",
        u8::from(health.unready(now).is_empty()),
    );
    o.one(
        "edge_agent_reloads_total",
        "counter",
        "SIGHUP reloads applied.",
        get(&t.reloads),
    );
    o.one(
        "edge_agent_reload_failures_total",
        "counter",
        "SIGHUP reloads refused (bad file or a key that needs a restart).",
        get(&t.reload_failures),
    );

    let i = &t.ingest;
    o.one(
        "edge_ingest_accepted_total",
        "counter",
        "Readings committed to the ingest log.",
        get(&i.accepted),
    );
    o.one(
        "edge_ingest_duplicates_total",
        "counter",
        "Redeliveries recognised by the dedupe index and dropped.",
        get(&i.duplicate),
    );
    o.one(
        "edge_ingest_dead_lettered_total",
        "counter",
        "Messages that failed parsing or mapping, kept as dead letters.",
        get(&i.rejected),
    );
    o.one("edge_ingest_acked_total", "counter", "Messages acknowledged to their source after their commit (accepted + duplicates + dead-lettered).", get(&i.accepted) + get(&i.duplicate) + get(&i.rejected));
    o.one(
        "edge_ingest_dropped_total",
        "counter",
        "Readings evicted at the quota (on_full = drop_oldest).",
        get(&i.dropped),
    );
    o.one(
        "edge_ingest_upstream_gaps_total",
        "counter",
        "Missing device sequence numbers (loss before the agent).",
        get(&i.upstream_gaps),
    );
    o.one(
        "edge_ingest_write_errors_total",
        "counter",
        "Failed ingest commits (retried).",
        get(&i.write_errors),
    );

    let s = &t.stage;
    o.one(
        "edge_window_readings_total",
        "counter",
        "Readings consumed by the windowing stage.",
        get(&s.readings),
    );
    o.one(
        "edge_window_partials_total",
        "counter",
        "Window partials written to the outbox.",
        get(&s.partials),
    );
    o.one(
        "edge_window_closed_total",
        "counter",
        "Windows closed (by watermark, idle timeout or cap).",
        get(&s.windows_closed),
    );
    o.one(
        "edge_window_forced_closes_total",
        "counter",
        "Windows closed early by the open-window cap.",
        get(&s.forced_closes),
    );
    o.one(
        "edge_window_revisions_total",
        "counter",
        "Revisions of closed windows (late data within the horizon).",
        get(&s.revisions),
    );
    o.head(
        "edge_window_late_total",
        "counter",
        "Readings behind the watermark, by what happened to them.",
    );
    o.labelled(
        "edge_window_late_total",
        "action=\"forwarded\"",
        get(&s.late_forwarded),
    );
    o.labelled(
        "edge_window_late_total",
        "action=\"dropped\"",
        get(&s.late_dropped),
    );
    o.one(
        "edge_window_unrouted_total",
        "counter",
        "Readings no pipeline selects (not forwarded).",
        get(&s.unrouted),
    );
    o.one(
        "edge_window_commits_total",
        "counter",
        "Windowing stage transactions.",
        get(&s.commits),
    );

    let f = &t.forward;
    o.one(
        "edge_kafka_transactions_committed_total",
        "counter",
        "Kafka transactions committed.",
        get(&f.transactions_committed),
    );
    o.one(
        "edge_kafka_transactions_aborted_total",
        "counter",
        "Kafka transactions aborted.",
        get(&f.transactions_aborted),
    );
    o.one(
        "edge_kafka_records_committed_total",
        "counter",
        "Outbox records committed to Kafka.",
        get(&f.records_committed),
    );
    o.one(
        "edge_kafka_bytes_committed_total",
        "counter",
        "Payload bytes committed to Kafka.",
        get(&f.bytes_committed),
    );
    o.one(
        "edge_kafka_session_errors_total",
        "counter",
        "Forwarder sessions ended by a retryable error.",
        get(&f.session_errors),
    );
    o.one(
        "edge_kafka_last_committed_seq",
        "gauge",
        "Highest outbox seq known committed in Kafka.",
        get(&f.last_committed_seq),
    );
    let us = |v: u64| v as f64 / 1e6;
    o.summary(
        "edge_kafka_commit_latency_seconds",
        "commit_transaction duration.",
        us(get(&f.commit_latency_us_sum)),
        get(&f.transactions_committed),
    );
    o.one(
        "edge_kafka_commit_latency_seconds_max",
        "gauge",
        "Longest commit_transaction.",
        us(get(&f.commit_latency_us_max)),
    );
    o.one(
        "edge_kafka_commit_latency_seconds_last",
        "gauge",
        "Last commit_transaction.",
        us(get(&f.commit_latency_us_last)),
    );
    o.one(
        "edge_forwarder_failing",
        "gauge",
        "1 after a forwarder session error within the last 30 s.",
        u8::from(health.forwarder_failing),
    );
    o.head(
        "edge_stage_stalled",
        "gauge",
        "1 while a stage with pending work shows no event for watchdog_stall_s.",
    );
    for stage in ["forwarder", "windowing"] {
        o.labelled(
            "edge_stage_stalled",
            &format!("stage=\"{stage}\""),
            u8::from(health.stalled.contains(&stage)),
        );
    }

    if let Some(b) = &health.snapshot {
        o.one(
            "edge_buffer_bytes",
            "gauge",
            "Estimated bytes of the ingest log and outbox (counted against quota_bytes).",
            b.log_bytes,
        );
        o.one(
            "edge_buffer_log_records",
            "gauge",
            "Readings waiting in the ingest log.",
            b.log_readings,
        );
        o.one(
            "edge_buffer_outbox_records",
            "gauge",
            "Records waiting for Kafka.",
            b.outbox_records,
        );
        o.one(
            "edge_buffer_dead_letters",
            "gauge",
            "Dead letters waiting in the log.",
            b.dead_letters,
        );
        o.one(
            "edge_buffer_open_series",
            "gauge",
            "Open window series.",
            b.window_series,
        );
        let age = b.oldest_unsent_created_ms.map_or(0.0, |c| {
            crate::stage::unix_ms().saturating_sub(c) as f64 / 1000.0
        });
        o.one(
            "edge_buffer_oldest_unsent_age_seconds",
            "gauge",
            "Age of the oldest outbox record (0 when empty).",
            age,
        );
    }
    o.one(
        "edge_database_read_errors",
        "gauge",
        "1 when the last read of the buffer state failed.",
        u8::from(health.db_error),
    );

    o.head(
        "edge_source_connected",
        "gauge",
        "1 while the source is connected (see ops::health for how it is derived).",
    );
    for (name, state) in &health.sources {
        o.labelled(
            "edge_source_connected",
            &format!("source=\"{}\"", escape(name)),
            u8::from(*state == SourceState::Connected),
        );
    }
    o.head(
        "edge_source_state",
        "gauge",
        "The source's connection state (one series per state, 1 for the current).",
    );
    for (name, state) in &health.sources {
        for s in [
            SourceState::Connecting,
            SourceState::Connected,
            SourceState::Disconnected,
        ] {
            let labels = format!("source=\"{}\",state=\"{}\"", escape(name), s.name());
            o.labelled("edge_source_state", &labels, u8::from(*state == s));
        }
    }
    let mqtt = t.mqtt.lock().unwrap_or_else(|p| p.into_inner()).clone();
    type M = fn(&crate::source::mqtt::SourceCounters) -> &AtomicU64;
    let mqtt_metrics: [(&str, &str, M); 4] = [
        (
            "edge_mqtt_received_total",
            "MQTT publishes received.",
            |c| &c.received,
        ),
        ("edge_mqtt_connects_total", "MQTT ConnAcks.", |c| {
            &c.connects
        }),
        (
            "edge_mqtt_connection_errors_total",
            "MQTT connection errors.",
            |c| &c.connection_errors,
        ),
        (
            "edge_mqtt_qos0_dropped_total",
            "QoS 0 publishes dropped under backpressure.",
            |c| &c.qos0_dropped,
        ),
    ];
    for (name, help, field) in mqtt_metrics {
        o.head(name, "counter", help);
        for (source, c) in &mqtt {
            o.labelled(
                name,
                &format!("source=\"{}\"", escape(source)),
                get(field(c)),
            );
        }
    }
    let serial = t.serial.lock().unwrap_or_else(|p| p.into_inner()).clone();
    type S = fn(&crate::source::serial::SerialCounters) -> &AtomicU64;
    let serial_metrics: [(&str, &str, S); 6] = [
        ("edge_serial_frames_total", "Serial frames received.", |c| {
            &c.frames
        }),
        (
            "edge_serial_duplicate_frames_total",
            "Serial frames received twice.",
            |c| &c.duplicate_frames,
        ),
        (
            "edge_serial_bad_frames_total",
            "Serial frames that failed decoding.",
            |c| &c.bad_frames,
        ),
        (
            "edge_serial_busy_total",
            "BUSY answers sent under backpressure.",
            |c| &c.busy,
        ),
        (
            "edge_serial_upstream_dropped_total",
            "Frames the firmware reports dropped.",
            |c| &c.upstream_dropped,
        ),
        (
            "edge_serial_port_errors_total",
            "Serial port errors (reopened with backoff).",
            |c| &c.port_errors,
        ),
    ];
    for (name, help, field) in serial_metrics {
        o.head(name, "counter", help);
        for (source, c) in &serial {
            o.labelled(
                name,
                &format!("source=\"{}\"", escape(source)),
                get(field(c)),
            );
        }
    }
    o.finish()
}

#[cfg(test)]
mod tests;
