//! Restart with a backlog (issue 18, item 3): a benchmark program that prints figures.
//!
//! Prepares a database holding `records` ingested readings (default 1,000,000; in the ingest
//! log, written through [`IngestLog::commit`] as the writer writes them, with their dedupe rows,
//! not yet consumed by the windowing stage) and `records` outbox records (not yet forwarded),
//! closes it cleanly as a stopped agent leaves it, then starts the `edge-agent` binary
//! (`target/release/edge-agent`) on a copy of it and measures:
//!
//! - **ready**: from the spawn until `GET /readyz` on the ops listener answers 200 (healthy, the
//!   pipeline running, the forwarder connected to the broker at `$KAFKA_BOOTSTRAP`, default
//!   `127.0.0.1:19092`, without a session error);
//! - **rss_ready**: the agent's peak resident set (VmHWM) from the spawn until ready: what the
//!   start itself costs (with a backlog the stage and the forwarder start on it at once, so
//!   their first batches are in it);
//! - **rss**: VmHWM from the spawn until [`AFTER_READY`] after ready. With a backlog that window
//!   holds the first seconds of draining it at full speed (the stage windows 1,000 readings per
//!   transaction, the forwarder sends 10,000-record Kafka transactions), whose working set is
//!   bounded by those batch sizes, not by the backlog (the `forward_drain` benchmark's peak RSS
//!   is the same figure); an empty database does nothing in it. Both are compared with the empty
//!   database (`_of_empty`, the issue's +-10 %).
//!
//! - **rss_open**: the VmHWM of a process of this program's own that only opens a cleanly
//!   closed copy of the database as the agent does (`IngestLog::open`) and reads its counters:
//!   the start's own cost, without the pipeline's first batches (`_of_empty`: against the same
//!   open of the empty database).
//!
//! The same is measured on an empty database (`_empty` figures), and the backlog run is made
//! three times: after a clean stop (the copy gets the clean-close mark a stopped agent writes,
//! `store::salvage::clean`) with the database file dropped from the page cache first (`dd
//! iflag=nocache`: a start after a reboot, the figure the targets apply to); the same with the
//! file cached (`ready_warm`: a service restart); and without the mark (`ready_unclean`: a start
//! after a crash, when the full integrity check runs as redb's own recovery does). Every run
//! gets its own copy of the prepared file, agent id and topics.
//!
//! ```text
//! . .services/env
//! cargo build --release -p edge-agent --bin edge-agent --example bench_restart
//! target/release/examples/bench_restart [records]        # quick: 100000
//! ```
//!
//! Beside its human output it prints one `BENCH {json}` line per figure for the suite runner
//! (`scripts/bench.sh`; the line format is documented in `bench/src/line.rs`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use edge_agent::config::OnFull;
use edge_agent::ingest::{Dedupe, IngestLog, Limits, Submission};
use edge_agent::outbox::{self, OutboxRecord, RecordKind};
use edge_agent::reading::Reading;
use edge_agent::store::salvage;
use edge_bench::line::Family;
use edge_bench::program::{arg, status_kib, Process};
use edge_tests::config::kafka_topics;

/// This program's `BENCH` lines for the suite runner (`edge-bench`).
const FIGURES: Family = Family("restart");
/// How long after ready the peak RSS is still watched.
const AFTER_READY: Duration = Duration::from_secs(3);
/// Give up on readiness after this long.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// Rows per fill transaction.
const CHUNK: u64 = 10_000;
/// The quota of the prepared database and of the agent's configuration: far above the backlog,
/// so the runs measure a normal state, not backpressure.
const QUOTA: u64 = 8 << 30;

fn main() -> anyhow::Result<()> {
    if std::env::args().nth(1).as_deref() == Some(OPEN_ONLY) {
        return open_only();
    }
    let records = arg(1, 1_000_000);
    let bootstrap =
        std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:19092".to_owned());
    let bin = agent_binary()?;
    let work = tempfile::tempdir()?;
    let seed = work.path().join("seed").join("ingest.redb");
    let empty_seed = work.path().join("empty-seed").join("ingest.redb");

    let fill = Instant::now();
    prepare(&seed, records)?;
    prepare(&empty_seed, 0)?;
    let size = std::fs::metadata(&seed)?.len();
    println!(
        "prepared {records} ingested readings + {records} outbox records: {:.1} MB in {:.1} s",
        size as f64 / 1e6,
        fill.elapsed().as_secs_f64()
    );

    let empty = run(
        &bin,
        &bootstrap,
        work.path(),
        "empty",
        &empty_seed,
        Cache::Cold,
        true,
    )?;
    let cold = run(
        &bin,
        &bootstrap,
        work.path(),
        "backlog",
        &seed,
        Cache::Cold,
        true,
    )?;
    let warm = run(
        &bin,
        &bootstrap,
        work.path(),
        "backlog-warm",
        &seed,
        Cache::Warm,
        true,
    )?;
    let unclean = run(
        &bin,
        &bootstrap,
        work.path(),
        "backlog-unclean",
        &seed,
        Cache::Cold,
        false,
    )?;

    let open_kib = open_peak_kib(work.path(), "open-backlog", &seed)?;
    let open_empty_kib = open_peak_kib(work.path(), "open-empty", &empty_seed)?;
    println!(
        "the open alone (IngestLog::open after a clean stop, in a process of its own): VmHWM {:.1} MiB on the backlog, {:.1} MiB on the empty database",
        open_kib as f64 / 1024.0,
        open_empty_kib as f64 / 1024.0
    );

    let params = format!(
        "{} readings + {} outbox records ({:.0} MB), cold page cache",
        thousands(records),
        thousands(records),
        size as f64 / 1e6
    );
    let empty_params = "empty database".to_owned();
    let warm_params = params.replace("cold", "warm");
    let peak = format!("VmHWM until ready + {} s", AFTER_READY.as_secs());
    FIGURES.print_with_target("ready", cold.ready_s, "s", &params, "< 2");
    FIGURES.print("ready_warm", warm.ready_s, "s", &warm_params);
    FIGURES.print("ready_empty", empty.ready_s, "s", &empty_params);
    FIGURES.print(
        "ready_unclean",
        unclean.ready_s,
        "s",
        &format!("{params}, no clean-close mark (after a crash: full integrity check)"),
    );
    let at_ready = "VmHWM from the spawn until ready";
    FIGURES.print(
        "rss_ready",
        cold.ready_mib,
        "MiB",
        &format!("{params}; {at_ready}"),
    );
    FIGURES.print(
        "rss_ready_empty",
        empty.ready_mib,
        "MiB",
        &format!("{empty_params}; {at_ready}"),
    );
    FIGURES.print_with_target(
        "rss_ready_of_empty",
        100.0 * cold.ready_mib / empty.ready_mib.max(f64::MIN_POSITIVE),
        "%",
        &format!("{params}; {at_ready}"),
        "90 to 110",
    );
    let opened =
        "VmHWM of a process that only opens the database (the restart itself, no pipeline)";
    FIGURES.print(
        "rss_open",
        open_kib as f64 / 1024.0,
        "MiB",
        &format!("{params}; {opened}"),
    );
    FIGURES.print(
        "rss_open_of_empty",
        100.0 * open_kib as f64 / open_empty_kib.max(1) as f64,
        "%",
        &format!("{params}; {opened}"),
    );
    FIGURES.print("rss", cold.peak_mib, "MiB", &format!("{params}; {peak}"));
    FIGURES.print(
        "rss_empty",
        empty.peak_mib,
        "MiB",
        &format!("{empty_params}; {peak}"),
    );
    FIGURES.print_with_target(
        "rss_of_empty",
        100.0 * cold.peak_mib / empty.peak_mib.max(f64::MIN_POSITIVE),
        "%",
        &format!("{params}; {peak}"),
        "90 to 110",
    );
    Ok(())
}

/// The agent binary beside this example's directory (`target/release/edge-agent`).
fn agent_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .and_then(|p| p.parent())
        .ok_or_else(|| anyhow::anyhow!("no target directory above {}", exe.display()))?
        .join("edge-agent");
    anyhow::ensure!(
        bin.exists(),
        "{} missing: cargo build --release -p edge-agent --bin edge-agent",
        bin.display()
    );
    Ok(bin)
}

/// Writes `records` readings into the ingest log and `records` records into the outbox, then
/// closes the database (cleanly, as a stopped agent does).
fn prepare(path: &Path, records: u64) -> anyhow::Result<()> {
    let mut log = IngestLog::open(path, limits())?;
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64;
    let t0 = now_ms - 3_600_000;
    let mut seq = 0;
    while seq < records {
        let n = (records - seq).min(CHUNK);
        // One submission per reading, as MQTT messages arrive; 1,000 sensors.
        let batch: Vec<Submission> = (seq..seq + n)
            .map(|i| Submission {
                readings: vec![(
                    Reading {
                        sensor: format!("sensor-{}", i % 1000),
                        ts_ms: t0 + i,
                        value: i as f64 * 0.5,
                        seq: None,
                    },
                    Dedupe::SensorTs,
                )],
                dead_letters: Vec::new(),
                state: Vec::new(),
                ack: None,
            })
            .collect();
        let done = log.commit(&batch, now_ms)?;
        anyhow::ensure!(done.accepted == n, "fill refused: {done:?}");
        seq += n;
    }
    let db = log.database();
    drop(log);
    outbox::create(&db)?;
    let payload = vec![b'x'; 100];
    let mut seq = 0;
    while seq < records {
        let n = (records - seq).min(CHUNK);
        let chunk: Vec<OutboxRecord> = (seq..seq + n)
            .map(|i| OutboxRecord {
                kind: RecordKind::Reading,
                created_ms: now_ms,
                route: "p".to_owned(),
                key: format!("sensor-{}", i % 1000).into_bytes(),
                payload: payload.clone(),
            })
            .collect();
        let txn = db.begin_write()?;
        outbox::append(&txn, &chunk)?;
        txn.commit()?;
        seq += n;
    }
    drop(db);
    Ok(())
}

/// The limits of the prepared database.
fn limits() -> Limits {
    Limits {
        quota_bytes: QUOTA,
        on_full: OnFull::Backpressure,
        dedupe_max_entries: 1_000_000,
        dedupe_max_age_ms: 7 * 24 * 3600 * 1000,
    }
}

/// What one start measured.
struct Start {
    ready_s: f64,
    /// VmHWM at ready.
    ready_mib: f64,
    /// VmHWM [`AFTER_READY`] after ready.
    peak_mib: f64,
}

/// The first argument of this program's own child that only opens a database (`open_only`).
const OPEN_ONLY: &str = "--open-only";

/// The child: opens the database at the second argument as the agent does on start
/// (`IngestLog::open`: the clean-close check, redb's open, the table set-up commit), reads the
/// log's counters, and prints its own VmHWM in KiB.
fn open_only() -> anyhow::Result<()> {
    let path = PathBuf::from(
        std::env::args()
            .nth(2)
            .ok_or_else(|| anyhow::anyhow!("{OPEN_ONLY} PATH"))?,
    );
    let log = IngestLog::open(&path, limits())?;
    let stats = log.stats()?;
    anyhow::ensure!(stats.next_seq == stats.readings, "a fresh fill: {stats:?}");
    println!("{}", status_kib(Process::This, "VmHWM:"));
    Ok(())
}

/// Peak RSS (KiB) of a child that only opens a cleanly closed copy of `seed`.
fn open_peak_kib(work: &Path, name: &str, seed: &Path) -> anyhow::Result<u64> {
    let dir = work.join(name);
    std::fs::create_dir_all(&dir)?;
    let db = dir.join("ingest.redb");
    std::fs::copy(seed, &db)?;
    salvage::mark_clean(&db)?;
    let out = Command::new(std::env::current_exe()?)
        .arg(OPEN_ONLY)
        .arg(&db)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "the open-only child failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?.trim().parse()?)
}

/// Whether the database file is in the page cache at the start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cache {
    Cold,
    Warm,
}

/// Starts the agent on a copy of `seed` and measures its readiness and peak RSS. `clean`: the
/// copy gets the clean-close mark a cleanly stopped agent leaves (`store::salvage::clean`);
/// without it the agent checks the whole file, as after a crash.
fn run(
    bin: &Path,
    bootstrap: &str,
    work: &Path,
    name: &str,
    seed: &Path,
    cache: Cache,
    clean: bool,
) -> anyhow::Result<Start> {
    let dir = work.join(name);
    std::fs::create_dir_all(&dir)?;
    let db = dir.join("ingest.redb");
    std::fs::copy(seed, &db)?;
    std::fs::File::open(&db)?.sync_all()?;
    if clean {
        salvage::mark_clean(&db)?;
    }
    if cache == Cache::Cold {
        // Drops this one file from the page cache (GNU dd: `count=0` with `nocache` advises
        // the kernel to drop the whole file), leaving the rest of the machine's cache alone.
        let dropped = Command::new("dd")
            .arg(format!("if={}", db.display()))
            .args(["iflag=nocache", "count=0", "status=none"])
            .status()?;
        anyhow::ensure!(dropped.success(), "dd iflag=nocache failed");
    }
    let ops = free_port()?;
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
    let id = format!("restart-{name}-{nanos}");
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            r#"[agent]
id = "{id}"
data_dir = {data_dir:?}
[buffer]
quota_bytes = {QUOTA}
[ops]
metrics_listen = "{ops}"
[[pipeline]]
name = "p"
sensors = ["*"]
[kafka]
bootstrap_servers = "{bootstrap}"
{topics}"#,
            data_dir = dir.display().to_string(),
            topics = kafka_topics(&format!("{id}.readings"), &id, &format!("{id}.progress")),
        ),
    )?;
    let log = std::fs::File::create(dir.join("agent.log"))?;
    let started = Instant::now();
    let mut child = Command::new(bin)
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
    let result = measure(&mut child, ops, started);
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
    let start = match result {
        Ok(start) => start,
        Err(e) => {
            let log = std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default();
            anyhow::bail!("{name}: {e}\nagent log:\n{log}");
        }
    };
    let log = std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default();
    for line in log
        .lines()
        .filter(|l| l.contains("salvag") || l.contains("ERROR"))
    {
        println!("  agent: {line}");
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(start)
}

/// Polls `/readyz` until it answers 200, then watches the peak RSS for [`AFTER_READY`].
fn measure(child: &mut Child, ops: SocketAddr, started: Instant) -> anyhow::Result<Start> {
    let pid = Process::Pid(child.id());
    let ready = loop {
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("the agent exited before it was ready: {status}");
        }
        if readyz(ops) {
            break started.elapsed();
        }
        anyhow::ensure!(
            started.elapsed() < READY_TIMEOUT,
            "not ready after {READY_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let rss_ready = status_kib(pid, "VmRSS:");
    let hwm_ready = status_kib(pid, "VmHWM:");
    std::thread::sleep(AFTER_READY);
    let hwm = status_kib(pid, "VmHWM:");
    let rss_after = status_kib(pid, "VmRSS:");
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!(
        "  ready after {:.3} s: VmRSS {:.1} MiB, VmHWM {:.1} MiB; {} s later VmRSS {:.1} MiB, VmHWM {:.1} MiB",
        ready.as_secs_f64(),
        mib(rss_ready),
        mib(hwm_ready),
        AFTER_READY.as_secs(),
        mib(rss_after),
        mib(hwm),
    );
    Ok(Start {
        ready_s: ready.as_secs_f64(),
        ready_mib: mib(hwm_ready),
        peak_mib: mib(hwm),
    })
}

/// Whether `GET /readyz` answers 200.
fn readyz(ops: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&ops, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 200")
}

/// A loopback port nobody listens on now.
fn free_port() -> std::io::Result<SocketAddr> {
    TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// `1234567` as `1,234,567`.
fn thousands(n: u64) -> String {
    edge_bench::suite::thousands(n)
}
