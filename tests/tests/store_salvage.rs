//! A damaged database at start (issue 19): the `edge-agent` binary builds an outbox backlog
//! while Kafka is unreachable, is stopped cleanly (which writes the clean-close mark that skips
//! the start-up integrity check of an unchanged file), pages in the middle of its file are
//! overwritten, and it is started again with the real broker. It starts by itself (no one
//! deletes anything), the damaged file is kept beside the new one, and Kafka holds each
//! surviving record exactly once: every record the damaged file still holds readably, nothing
//! else, nothing twice; and the salvaged and lost counts on `/metrics` add up to the backlog.
//! Every record is counted.

mod forward_support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use edge_agent::store::salvage::scan::Source;
use edge_agent::store::tables::OUTBOX;
use edge_tests::check::assert_none;
use edge_tests::http::{free_port, metric};
use edge_tests::kafka::{kcat_count_committed, read_committed};
use edge_tests::Services;
use forward_support::{agent_binary, record, Agent};

const BACKLOG: u64 = 20_000;

/// Overwrites one 4 KiB page at each fraction of the file.
fn damage(path: &Path, fractions: &[f64]) {
    let len = std::fs::metadata(path).expect("database file").len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open for damage");
    for fraction in fractions {
        let offset = ((len as f64 * fraction) as u64) / 4096 * 4096;
        file.write_at(&[0x5a; 4096], offset).expect("overwrite");
        println!("overwrote the page at {offset} of {len} bytes");
    }
    file.sync_all().expect("sync");
}

/// The files `<name>.damaged-<ts>` beside the database.
fn damaged_beside(db: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(db.parent().expect("data dir"))
        .expect("read data dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.to_string_lossy().contains("ingest.redb.damaged-"))
        .collect()
}

/// The seqs whose record a point lookup in the damaged file still returns intact.
fn readable_in(damaged: &Path) -> BTreeSet<u64> {
    let mut source = Source::open(damaged).expect("the damaged file opens read-only");
    (1..=BACKLOG)
        .filter(|&seq| {
            let got = source.attempt(|txn| {
                let table = txn.open_table(OUTBOX)?;
                Ok(table.get(seq)?.map(|v| v.value().to_vec()))
            });
            matches!(got, Ok(Some(bytes)) if bytes == record(seq).encode().expect("encodes"))
        })
        .collect()
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not after {timeout:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_damaged_database_is_salvaged_at_start_and_kafka_gets_each_surviving_record_once() {
    let services = Services::from_env();
    let bin = agent_binary();
    let closed: SocketAddr = free_port();
    let ops = free_port();
    let agent = Agent::new(
        &closed.to_string(),
        &format!("\n[ops]\nmetrics_listen = \"{ops}\"\n"),
    );
    let db_path = agent.config().ingest_path();

    // The backlog: the outbox filled through the library, then the agent binary runs against a
    // closed port (it makes its instance id and delivers nothing) and is stopped.
    agent.prefill(BACKLOG);
    let t0 = Instant::now();
    let mut first = agent.spawn_binary(&bin);
    wait_for("the first run's /metrics", Duration::from_secs(30), || {
        metric(ops, "edge_buffer_outbox_records") == BACKLOG
    });
    first.assert_alive();
    let stop = first.terminate(Duration::from_secs(60));
    println!(
        "first run (Kafka unreachable): {:?}, its stop {stop:?}",
        t0.elapsed()
    );
    // The clean stop left the mark that lets a start skip the integrity check of an unchanged
    // file; the damage below changes the file, so the next start must check it all the same.
    let mark = edge_agent::store::salvage::clean::mark_path(&db_path);
    assert!(mark.exists(), "a clean stop writes {}", mark.display());

    damage(&db_path, &[0.35, 0.6]);
    let config = std::fs::read_to_string(&agent.config_path).expect("config");
    let config = config.replace(
        &format!("bootstrap_servers = \"{closed}\""),
        &format!("bootstrap_servers = \"{}\"", services.kafka_bootstrap),
    );
    std::fs::write(&agent.config_path, config).expect("rewrite config");

    let started = Instant::now();
    let mut second = agent.spawn_binary(&bin);
    wait_for("the salvage on /metrics", Duration::from_secs(60), || {
        metric(ops, "edge_store_salvages_total") == 1
    });
    let salvaged = metric(ops, "edge_store_salvaged_rows_total{table=\"outbox\"}");
    let lost = metric(ops, "edge_store_salvage_lost_rows_total{table=\"outbox\"}");
    println!(
        "started after {:?}: {salvaged} outbox records salvaged, {lost} lost",
        started.elapsed()
    );
    wait_for(
        "the salvaged backlog in Kafka",
        Duration::from_secs(180),
        || {
            second.assert_alive();
            metric(ops, "edge_kafka_records_committed_total") >= salvaged
        },
    );
    second.terminate(Duration::from_secs(60));
    println!("drained after {:?}", started.elapsed());
    let log = second.stderr();
    assert!(
        log.contains("database damaged"),
        "the damage is logged:\n{log}"
    );
    for line in log
        .lines()
        .filter(|l| l.contains("salvage") || l.contains("damaged"))
    {
        println!("agent: {line}");
    }

    let damaged = damaged_beside(&db_path);
    assert_eq!(
        damaged.len(),
        1,
        "the damaged file is kept beside the new one"
    );
    assert!(db_path.exists());
    let readable = readable_in(&damaged[0]);
    assert_eq!(salvaged + lost, BACKLOG, "salvaged + lost = the backlog");
    assert_eq!(
        salvaged,
        readable.len() as u64,
        "every readable record salvaged"
    );
    assert!(lost > 0, "the damage hit outbox pages");

    // Kafka: each surviving record exactly once, nothing else.
    let records = read_committed(
        &services.kafka_bootstrap,
        &agent.topic,
        Duration::from_secs(120),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut copies: BTreeMap<u64, u32> = BTreeMap::new();
    for r in &records {
        assert_eq!(r.header("agent"), Some(agent.id.as_bytes()));
        let seq: u64 = std::str::from_utf8(r.header("seq").expect("seq header"))
            .ok()
            .and_then(|s| s.parse().ok())
            .expect("seq header is a number");
        assert_eq!(r.payload.as_deref(), Some(format!("r{seq}").as_bytes()));
        *copies.entry(seq).or_default() += 1;
    }
    let twice: Vec<_> = copies.iter().filter(|(_, c)| **c > 1).collect();
    let missing: Vec<_> = readable
        .iter()
        .filter(|s| !copies.contains_key(s))
        .collect();
    let unexpected: Vec<_> = copies.keys().filter(|s| !readable.contains(s)).collect();
    println!(
        "accounted {} records: {} missing, {} more than once, {} not in the damaged file",
        records.len(),
        missing.len(),
        twice.len(),
        unexpected.len()
    );
    assert_none("surviving records missing from Kafka", &missing);
    assert_none("records in Kafka more than once", &twice);
    assert_none(
        "records in Kafka the damaged file did not hold",
        &unexpected,
    );
    assert_eq!(records.len() as u64, salvaged);
    let kcat = kcat_count_committed(&services.kafka_bootstrap, &agent.topic)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        kcat as u64, salvaged,
        "kcat (read_committed) counts the same"
    );
}
