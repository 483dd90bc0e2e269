//! Benchmark: how soon finals resume after a Kafka broker restart, for a group of 1 or 3
//! `edge-consumer` instances (exactly-once on, static members).
//!
//! ```text
//! cargo run --release -p edge-consumer --example bench_recovery -- [CONSUMERS] [RUNS] [OUTAGE_S] [PROTOCOL]
//! ```
//! Defaults: 1 consumer, 5 runs, 15 s outage (longer than the consumer's 10 s bound on a
//! transaction call, so its session fails and a new one starts: the slow path). The program starts a private single-node Kafka
//! (`tests/services/services.sh` with a state directory and ports of its own, so the shared
//! test broker is never touched; `EDGE_KAFKA_PORT_OFFSET` moves it). Each run has its own
//! topics and group: an input topic of 6 partitions fed with 600 partials/s (one gateway, 60
//! series, a new 1 s window per series every 100 ms: each partial finalizes its window), and
//! `CONSUMERS` instances running in this process. Once every instance commits finals, the
//! broker is stopped (SIGTERM), kept down for `OUTAGE_S`, and started again with its data.
//!
//! The figure: from the moment the broker's port accepts connections again (polled every
//! 10 ms) to the first transaction with finals committed after it (`finals_resume`), and to
//! the moment every instance has committed one (`finals_resume_all`, 3 consumers only). Median
//! and maximum over the runs. A run that does not resume within 120 s fails the program.
//!
//! `PROTOCOL` is the group protocol: `classic` (the default, what the consumer ships with: a
//! static member) or `consumer` (KIP-848, `group.protocol = "consumer"`, where the broker owns
//! the session timeout), to compare the two.
//!
//! Beside its human output it prints one `BENCH {json}` line per figure for the suite runner
//! (`scripts/bench.sh`; the line format is documented in `bench/src/line.rs`).

use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use edge_bench::line::Family;
use edge_consumer::config::Config;
use edge_consumer::run::{run, Metrics};
use edge_protocol::aggregate::Aggregate;
use edge_protocol::partial::{Partial, MAX_ENCODED_LEN};
use edge_tests::cluster::KafkaCluster;
use rdkafka::admin::{NewTopic, TopicReplication};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

/// This program's `BENCH` lines for the suite runner (`edge-bench`).
const FIGURES: Family = Family("recovery");
const PARTITIONS: i32 = 6;
const SERIES: usize = 60;
const TICK: Duration = Duration::from_millis(100);
/// A run that has not resumed by then fails.
const RESUME_LIMIT: Duration = Duration::from_secs(120);

/// One gateway's partial for `series`, window `[start, start + 1 s)`, watermark at its end.
fn partial(series: &str, start: i64) -> Partial {
    let mut aggregate = Aggregate::new();
    for i in 0..4 {
        let _ = aggregate.add(start + i * 100, 20.0 + i as f64);
    }
    Partial {
        series: series.try_into().unwrap_or_default(),
        window_start_ms: start,
        window_end_ms: start + 1000,
        agent: "gw".try_into().unwrap_or_default(),
        watermark_ms: start + 1000,
        revision: 0,
        aggregate,
    }
}

/// Feeds `input` until `stop`: every tick a new window for each series. The producer is
/// idempotent and retries without a deadline, so the partials of the outage arrive after it.
fn feed(bootstrap: &str, input: &str, stop: Arc<AtomicBool>) -> JoinHandle<u64> {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "0")
        .set("reconnect.backoff.max.ms", "200")
        .create()
        .expect("producer");
    let input = input.to_owned();
    std::thread::spawn(move || {
        let base = unix_ms() / 1000 * 1000;
        let mut buf = vec![0u8; MAX_ENCODED_LEN];
        let mut sent = 0u64;
        let mut tick = 0i64;
        while !stop.load(Ordering::Relaxed) {
            for s in 0..SERIES {
                let series = format!("recovery.s{s:02}");
                let n = partial(&series, base + tick * 1000)
                    .encode(&mut buf)
                    .expect("encode");
                let record = BaseRecord::to(&input).key(&series).payload(&buf[..n]);
                if producer.send(record).is_ok() {
                    sent += 1;
                }
            }
            tick += 1;
            producer.poll(TICK);
        }
        let _ = producer.flush(Duration::from_secs(30));
        sent
    })
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn create_topic(bootstrap: &str, topic: &str, partitions: i32) {
    let config = edge_kafka::client_config(bootstrap);
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    edge_kafka::create_topics(
        &config,
        [&new],
        &edge_kafka::admin_options(Duration::from_secs(30)),
    )
    .unwrap_or_else(|e| panic!("create topic {topic}: {e}"));
}

/// One instance running in this process.
struct Instance {
    metrics: Arc<Metrics>,
    worker: JoinHandle<()>,
}

fn config(bootstrap: &str, tag: &str, instance: &str, protocol: &str) -> Config {
    // KIP-848 takes the session timeout from the broker; the client may not set it.
    let group = if protocol == "consumer" {
        "\"group.protocol\" = \"consumer\""
    } else {
        "\"session.timeout.ms\" = \"10000\""
    };
    let text = format!(
        r#"[kafka]
bootstrap_servers = "{bootstrap}"
group_id = "recovery-{tag}"
instance_id = "{instance}"
transaction_timeout_ms = 10000
[kafka.client]
{group}
[topics]
inputs = ["recovery-in-{tag}"]
finals = "recovery-finals-{tag}"
changelog = "recovery-changelog-{tag}"
dead_letters = "recovery-dead-{tag}"
[window]
idle_timeout_ms = 600000
[limits]
batch_max_records = 5000
batch_max_ms = 100
"#
    );
    Config::parse(Path::new("recovery.toml"), &text).expect("config")
}

fn spawn(config: Config, stop: Arc<AtomicBool>) -> Instance {
    let metrics = Arc::new(Metrics::default());
    let m = metrics.clone();
    let worker = std::thread::spawn(move || {
        if let Err(e) = run(&config, &stop, &m) {
            eprintln!("consumer stopped: {e}");
        }
    });
    Instance { metrics, worker }
}

fn finals(instances: &[Instance]) -> Vec<u64> {
    instances
        .iter()
        .map(|i| i.metrics.finals.load(Ordering::Relaxed))
        .collect()
}

/// Waits until `done` holds (polled every 10 ms) or `limit` passes; the time it took.
fn wait(limit: Duration, mut done: impl FnMut() -> bool) -> Option<Duration> {
    let t = Instant::now();
    while t.elapsed() < limit {
        if done() {
            return Some(t.elapsed());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// One outage: (first final, every instance's first final) after the port opened.
fn one_run(
    cluster: &KafkaCluster,
    consumers: usize,
    outage: Duration,
    protocol: &str,
    run_no: usize,
) -> (Duration, Duration) {
    let bootstrap = cluster.bootstrap();
    let tag = format!("{}-{run_no}", unix_ms());
    create_topic(&bootstrap, &format!("recovery-in-{tag}"), PARTITIONS);
    let stop_feed = Arc::new(AtomicBool::new(false));
    let feeder = feed(&bootstrap, &format!("recovery-in-{tag}"), stop_feed.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let instances: Vec<Instance> = (0..consumers)
        .map(|i| {
            spawn(
                config(&bootstrap, &tag, &format!("c{i}"), protocol),
                stop.clone(),
            )
        })
        .collect();
    wait(Duration::from_secs(120), || {
        finals(&instances).iter().all(|&f| f > 0)
    })
    .expect("every instance commits finals before the outage");
    // A steady state: a few more transactions.
    std::thread::sleep(Duration::from_secs(2));

    cluster.stop();
    let down = Instant::now();
    std::thread::sleep(outage.saturating_sub(down.elapsed()));
    let at_stop = finals(&instances);
    let port = bootstrap.rsplit(':').next().unwrap_or_default().to_owned();
    let addr = format!("127.0.0.1:{port}").parse().expect("address");
    let restart = std::thread::scope(|s| {
        let starter = s.spawn(|| cluster.restart_stopped());
        wait(Duration::from_secs(120), || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(50)).is_ok()
        })
        .expect("the broker's port opens");
        let open = Instant::now();
        let mut first = None;
        let all = wait(RESUME_LIMIT, || {
            let now = finals(&instances);
            let resumed = now.iter().zip(&at_stop).filter(|(n, a)| n > a).count();
            if resumed > 0 && first.is_none() {
                first = Some(open.elapsed());
            }
            resumed == consumers
        });
        starter.join().expect("restart");
        match (first, all) {
            (Some(first), Some(all)) => (first, all),
            _ => {
                eprintln!(
                    "run {run_no}: finals did not resume within {RESUME_LIMIT:?} of the broker's port opening (finals at the stop {at_stop:?}, now {:?})",
                    finals(&instances)
                );
                std::process::exit(1);
            }
        }
    });
    stop_feed.store(true, Ordering::Relaxed);
    let sent = feeder.join().expect("feeder");
    stop.store(true, Ordering::Relaxed);
    for i in instances {
        let _ = i.worker.join();
    }
    println!(
        "run {run_no}: broker down {:.1} s; finals resumed {:.2} s after its port opened, on every instance after {:.2} s ({sent} partials fed)",
        outage.as_secs_f64(),
        restart.0.as_secs_f64(),
        restart.1.as_secs_f64()
    );
    restart
}

fn median_max(mut xs: Vec<f64>) -> (f64, f64) {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    let median = if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    };
    (median, xs[n - 1])
}

fn main() {
    let mut args = std::env::args().skip(1);
    let consumers: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1);
    let runs: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let outage_s: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(15);
    let protocol = args.next().unwrap_or_else(|| "classic".to_owned());
    assert!(
        protocol == "classic" || protocol == "consumer",
        "PROTOCOL is classic or consumer"
    );
    assert!(
        consumers >= 1 && runs >= 1,
        "CONSUMERS and RUNS are at least 1"
    );
    // The consumers' warnings (a failed session, a retry) go to standard error.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing::Level::WARN)
        .init();
    let t0 = Instant::now();
    let cluster = KafkaCluster::start(1);
    println!(
        "private Kafka at {} up in {:.1} s",
        cluster.bootstrap(),
        t0.elapsed().as_secs_f64()
    );
    let outage = Duration::from_secs(outage_s);
    let (mut first, mut all) = (Vec::new(), Vec::new());
    for run_no in 1..=runs {
        let (f, a) = one_run(&cluster, consumers, outage, &protocol, run_no);
        first.push(f.as_secs_f64());
        all.push(a.as_secs_f64());
    }
    let plural = if consumers == 1 { "" } else { "s" };
    let kip848 = if protocol == "consumer" {
        ", KIP-848 group protocol"
    } else {
        ""
    };
    let params = format!(
        "{consumers} consumer{plural}, {PARTITIONS} partitions, {outage_s} s outage, {runs} runs{kip848}"
    );
    let (median, max) = median_max(first);
    println!(
        "finals resume after a broker restart: median {median:.2} s, max {max:.2} s ({params})"
    );
    // The issue's goal: finals catch up within 5 s (median) of Kafka being back.
    FIGURES.print_with_target("finals_resume", median, "s (median)", &params, "<= 5");
    FIGURES.print("finals_resume_max", max, "s", &params);
    if consumers > 1 {
        let (median, max) = median_max(all);
        println!("  on every instance: median {median:.2} s, max {max:.2} s");
        FIGURES.print_with_target("finals_resume_all", median, "s (median)", &params, "<= 5");
        FIGURES.print("finals_resume_all_max", max, "s", &params);
    }
}
