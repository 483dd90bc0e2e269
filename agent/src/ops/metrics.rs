//! The Prometheus text exposition (format 0.0.4) of [`Telemetry`] and the health view.
//!
//! Counters are process-lifetime (they start at 0 with the process and survive SIGHUP reloads);
//! the persisted, since-creation counters are in `edge-agent inspect`. Gauges about the buffer
//! come from the health sampler's last read (at most about a second old). The full list, with
//! what each alert-worthy value looks like, is in `deploy/OPERATIONS.md`; `metrics/tests.rs`
//! pins the whole page against `metrics/exposition.golden`.
//!
//! One block per stage, in page order: `agent` (build, uptime, health, reloads), `ingest`,
//! `window`, `kafka` (the forwarder), `buffer` (the sampler's database read), then the
//! sources: their states ([`crate::source::render_states`]) and every kind's own families
//! ([`crate::source::render_families`], from the kind's file).

use std::sync::atomic::{AtomicU64, Ordering};

use edge_ops_http::prometheus::Out;

use super::health::Health;
use crate::forward::ForwardMetrics;
use crate::ingest::Counters;
use crate::stage::StageCounters;
use crate::store::salvage::{SalvageCounters, LOST_TABLES, METRIC_TABLES};
use crate::telemetry::Telemetry;

fn get(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// Renders every metric; `health` is the sampler's latest view.
pub fn render(t: &Telemetry, health: &Health) -> String {
    let mut o = Out::with_capacity(8 * 1024);
    agent(&mut o, t, health);
    ingest(&mut o, &t.ingest);
    window(&mut o, &t.stage);
    kafka(&mut o, &t.forward, health);
    hops(&mut o, t);
    buffer(&mut o, health);
    store(&mut o, &t.salvage);
    crate::source::render_states(&mut o, &health.sources);
    crate::source::render_families(&mut o, &t.sources);
    o.finish()
}

/// The process: build, uptime, the health verdicts, reloads.
fn agent(o: &mut Out, t: &Telemetry, health: &Health) {
    let now = tokio::time::Instant::now();
    let version = format!("version=\"{}\"", crate::VERSION);
    o.family(
        "edge_agent_info",
        "gauge",
        "Build information.",
        [(version, 1)],
    );
    o.gauges(&[
        (
            "edge_agent_uptime_seconds",
            "Seconds since the process started.",
            t.started.elapsed().as_secs(),
        ),
        (
            "edge_agent_healthy",
            "1 while /healthz answers 200.",
            u64::from(health.unhealthy(now).is_empty()),
        ),
        (
            "edge_agent_ready",
            "1 while /readyz answers 200.",
            u64::from(health.unready(now).is_empty()),
        ),
    ]);
    o.counters(&[
        (
            "edge_agent_reloads_total",
            "SIGHUP reloads applied.",
            get(&t.reloads),
        ),
        (
            "edge_agent_reload_failures_total",
            "SIGHUP reloads refused (bad file or a key that needs a restart).",
            get(&t.reload_failures),
        ),
    ]);
}

/// The ingest writer's counters.
fn ingest(o: &mut Out, i: &Counters) {
    let acked = get(&i.accepted) + get(&i.duplicate) + get(&i.rejected);
    o.counters(&[
        (
            "edge_ingest_accepted_total",
            "Readings committed to the ingest log.",
            get(&i.accepted),
        ),
        (
            "edge_ingest_duplicates_total",
            "Redeliveries recognised by the dedupe index and dropped.",
            get(&i.duplicate),
        ),
        (
            "edge_ingest_dead_lettered_total",
            "Messages that failed parsing or mapping, kept as dead letters.",
            get(&i.rejected),
        ),
        (
            "edge_ingest_acked_total",
            "Messages acknowledged to their source after their commit (accepted + duplicates + dead-lettered).",
            acked,
        ),
        (
            "edge_ingest_dropped_total",
            "Readings evicted at the quota (on_full = drop_oldest).",
            get(&i.dropped),
        ),
        (
            "edge_ingest_upstream_gaps_total",
            "Missing device sequence numbers (loss before the agent).",
            get(&i.upstream_gaps),
        ),
        (
            "edge_ingest_write_errors_total",
            "Failed ingest commits (retried).",
            get(&i.write_errors),
        ),
    ]);
}

/// The windowing stage's counters.
fn window(o: &mut Out, s: &StageCounters) {
    o.counters(&[
        (
            "edge_window_readings_total",
            "Readings consumed by the windowing stage.",
            get(&s.readings),
        ),
        (
            "edge_window_partials_total",
            "Window partials written to the outbox.",
            get(&s.partials),
        ),
        (
            "edge_window_closed_total",
            "Windows closed (by watermark, idle timeout or cap).",
            get(&s.windows_closed),
        ),
        (
            "edge_window_forced_closes_total",
            "Windows closed early by the open-window cap.",
            get(&s.forced_closes),
        ),
        (
            "edge_window_revisions_total",
            "Revisions of closed windows (late data within the horizon).",
            get(&s.revisions),
        ),
    ]);
    o.family(
        "edge_window_late_total",
        "counter",
        "Readings behind the watermark, by what happened to them.",
        [
            ("action=\"forwarded\"", get(&s.late_forwarded)),
            ("action=\"dropped\"", get(&s.late_dropped)),
        ],
    );
    o.counters(&[
        (
            "edge_window_unrouted_total",
            "Readings no pipeline selects (not forwarded).",
            get(&s.unrouted),
        ),
        (
            "edge_window_commits_total",
            "Windowing stage transactions.",
            get(&s.commits),
        ),
    ]);
}

/// The forwarder's counters and latencies, its failing flag and the stall verdicts.
fn kafka(o: &mut Out, f: &ForwardMetrics, health: &Health) {
    o.counters(&[
        (
            "edge_kafka_transactions_committed_total",
            "Kafka transactions committed.",
            get(&f.transactions_committed),
        ),
        (
            "edge_kafka_transactions_aborted_total",
            "Kafka transactions aborted.",
            get(&f.transactions_aborted),
        ),
        (
            "edge_kafka_records_committed_total",
            "Outbox records committed to Kafka.",
            get(&f.records_committed),
        ),
        (
            "edge_kafka_bytes_committed_total",
            "Payload bytes committed to Kafka.",
            get(&f.bytes_committed),
        ),
        (
            "edge_kafka_session_errors_total",
            "Forwarder sessions ended by a retryable error.",
            get(&f.session_errors),
        ),
    ]);
    o.gauges(&[(
        "edge_kafka_last_committed_seq",
        "Highest outbox seq known committed in Kafka.",
        get(&f.last_committed_seq),
    )]);
    let us = |v: u64| v as f64 / 1e6;
    o.summary(
        "edge_kafka_commit_latency_seconds",
        "commit_transaction duration.",
        us(get(&f.commit_latency_us_sum)),
        get(&f.transactions_committed),
    );
    o.gauges(&[
        (
            "edge_kafka_commit_latency_seconds_max",
            "Longest commit_transaction.",
            us(get(&f.commit_latency_us_max)),
        ),
        (
            "edge_kafka_commit_latency_seconds_last",
            "Last commit_transaction.",
            us(get(&f.commit_latency_us_last)),
        ),
    ]);
    o.gauges(&[(
        "edge_forwarder_failing",
        "1 after a forwarder session error within the last 30 s.",
        u8::from(health.forwarder_failing),
    )]);
    o.family(
        "edge_stage_stalled",
        "gauge",
        "1 while a stage with pending work shows no event for watchdog_stall_s.",
        ["forwarder", "windowing"].map(|stage| {
            let stalled = u8::from(health.stalled.contains(&stage));
            (format!("stage=\"{stage}\""), stalled)
        }),
    );
}

/// Where a reading's time goes, one histogram series per hop: `ingest` (reaching the writer to
/// its durable commit and ack), `window` (that commit to the windowing stage's commit), `kafka`
/// (the stage's step to the Kafka commit). A reading's trip is about the sum of the three.
fn hops(o: &mut Out, t: &Telemetry) {
    o.histogram(
        "edge_hop_latency_seconds",
        "Time a reading spends in each hop of the agent.",
        [
            ("hop=\"ingest\"", &t.ingest.latency),
            ("hop=\"window\"", &t.stage.latency),
            ("hop=\"kafka\"", &t.forward.latency),
        ],
    );
}

/// The buffer gauges of the sampler's last database read (none before the first), and whether
/// that read failed.
fn buffer(o: &mut Out, health: &Health) {
    if let Some(b) = &health.snapshot {
        o.gauges(&[
            (
                "edge_buffer_bytes",
                "Estimated bytes of the ingest log and outbox (counted against quota_bytes).",
                b.log_bytes,
            ),
            (
                "edge_buffer_log_records",
                "Readings waiting in the ingest log.",
                b.log_readings,
            ),
            (
                "edge_buffer_outbox_records",
                "Records waiting for Kafka.",
                b.outbox_records,
            ),
            (
                "edge_buffer_dead_letters",
                "Dead letters waiting in the log.",
                b.dead_letters,
            ),
            (
                "edge_buffer_open_series",
                "Open window series.",
                b.window_series,
            ),
        ]);
        let age = b.oldest_unsent_created_ms.map_or(0.0, |c| {
            crate::clock::unix_ms().saturating_sub(c) as f64 / 1000.0
        });
        o.gauges(&[(
            "edge_buffer_oldest_unsent_age_seconds",
            "Age of the oldest outbox record (0 when empty).",
            age,
        )]);
    }
    o.gauges(&[(
        "edge_database_read_errors",
        "1 when the last read of the buffer state failed.",
        u8::from(health.db_error),
    )]);
}

/// Salvages of a damaged database at start (`store::salvage`): rows kept and lost per table.
fn store(o: &mut Out, s: &SalvageCounters) {
    o.counters(&[(
        "edge_store_salvages_total",
        "Damaged databases moved aside and salvaged into a new file.",
        get(&s.salvages),
    )]);
    let by_table = |tables: &[&str], counts: &[AtomicU64]| {
        tables
            .iter()
            .zip(counts)
            .map(|(table, n)| (format!("table=\"{table}\""), get(n)))
            .collect::<Vec<_>>()
    };
    o.family(
        "edge_store_salvaged_rows_total",
        "counter",
        "Rows of unsent data salvaged from a damaged database.",
        by_table(&METRIC_TABLES, &s.salvaged),
    );
    o.family(
        "edge_store_salvage_lost_rows_total",
        "counter",
        "Rows of unsent data a damaged database held that could not be read.",
        by_table(&LOST_TABLES, &s.lost),
    );
}

#[cfg(test)]
mod tests;
