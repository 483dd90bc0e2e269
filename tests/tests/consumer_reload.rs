//! SIGHUP on the real `edge-consumer` binary against the real broker, under a stand-in for
//! systemd (a datagram socket named by `$NOTIFY_SOCKET`, `$WATCHDOG_USEC` as `WatchdogSec=2`
//! sets it), logging JSON:
//! - `READY=1` once the first session started, `WATCHDOG=1` about every second;
//! - a file with a bad grouping rule is refused (file, line and field in the log), and so is a
//!   file changing `[topics]`; both are counted in `edge_consumer_reload_failures_total`, each
//!   framed by `RELOADING=1` / `READY=1`, and the consumer keeps merging under its old rules;
//! - a file that adds a grouping rule applies between transactions: partials produced after it
//!   merge into the new group, partials before it stay in their series' groups, and every
//!   final equals the batch computation over its readings (none lost, none doubled);
//! - SIGTERM: `STOPPING=1`, exit 0.

mod consumer_support;

use std::collections::BTreeMap;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use consumer_support::{
    cells, check_final, consumer_binary, now_ms, produce_by_gateway, reference, terminate, Cell,
    Reference, Rng, Running, Setup,
};
use edge_tests::http::{free_port, get as http_get};
use edge_tests::kafka::read_committed;
use edge_tests::Services;

/// Every notification received within `d`, stopping early once `until` arrived.
fn collect_until(socket: &UnixDatagram, until: &str, d: Duration) -> Vec<String> {
    let deadline = Instant::now() + d;
    let mut out = Vec::new();
    let mut buf = [0u8; 512];
    while Instant::now() < deadline && !out.iter().any(|m| m == until) {
        let left = deadline.saturating_duration_since(Instant::now());
        socket
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .expect("timeout");
        if let Ok(n) = socket.recv(&mut buf) {
            out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    out
}

/// `edge-consumer run --log-format json` with systemd's variables, its log in the setup's file.
fn spawn(setup: &Setup, config: &Path, notify: &Path) -> Child {
    let log = std::fs::File::create(setup.log_path("a")).expect("log file");
    Command::new(consumer_binary())
        .args(["run", "--log-format", "json", "--config"])
        .arg(config)
        .env("RUST_LOG", "info,rdkafka=warn")
        .env("NOTIFY_SOCKET", notify)
        .env("WATCHDOG_USEC", "2000000")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn edge-consumer")
}

/// The value of one series in a `/metrics` body.
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// `cells` with every series renamed to `group` (what a rule merging them all does).
fn grouped(cells: &[Cell], group: &str) -> Vec<Cell> {
    cells
        .iter()
        .map(|c| Cell {
            series: group.to_owned(),
            ..c.clone()
        })
        .collect()
}

#[test]
fn sighup_refuses_bad_files_and_regroups_only_partials_merged_after_a_good_one_exactly_once() {
    let started = Instant::now();
    let services = Services::from_env();
    let bootstrap = services.kafka_bootstrap.as_str();
    // One input partition: a group spanning series must have them on one partition.
    let setup = Setup::new(bootstrap, "cons-reload", 1);
    let addr = free_port();
    let ops = format!("[ops]\nmetrics_listen = \"{addr}\"\nhealth_stall_s = 120\n");
    let path = setup.config("a", 3_000, "", "", &ops);
    let base = std::fs::read_to_string(&path).expect("config");
    let notify_path = setup.dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&notify_path).expect("bind the notify socket");
    let mut consumer = Running(spawn(&setup, &path, &notify_path));
    let log = |what: &str| format!("{what}\n--- consumer log:\n{}", setup.log_tail("a", 30));
    let metric =
        |series: &str| http_get(addr, "/metrics").and_then(|(_, body)| sample(&body, series));
    let hup = |consumer: &Running| {
        let status = Command::new("kill")
            .args(["-HUP", &consumer.0.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    };

    let ready = collect_until(&socket, "READY=1", Duration::from_secs(60));
    assert_eq!(
        ready,
        ["READY=1"],
        "{}",
        log("READY first, nothing before it")
    );
    println!("READY=1 after {:?}", started.elapsed());
    let pings = collect_until(&socket, "never", Duration::from_millis(3_500));
    assert!(
        pings.iter().filter(|m| *m == "WATCHDOG=1").count() >= 2,
        "a ping about every second while healthy: {pings:?}"
    );
    setup.wait_for_assignments("a", 1, Duration::from_secs(60));
    // JSON logs: one object per line.
    let first = std::fs::read_to_string(setup.log_path("a")).expect("log");
    let line: serde_json::Value =
        serde_json::from_str(first.lines().next().expect("a line")).expect("JSON log line");
    assert_eq!(line["level"], "INFO", "{line}");

    // 2 gateways x 2 series, 3 phases of 6 windows of 10 s, a while ago.
    let gateways = ["gw-a", "gw-b"];
    let series = ["plant.t1", "plant.t2"];
    let size = 10_000;
    let t0 = (now_ms() / size - 60) * size;
    let mut rng = Rng(0x5eed_0016);
    let phase = |rng: &mut Rng, n: i64| cells(rng, &gateways, &series, 6, t0 + n * 6 * size, size);
    let (one, two, three) = (phase(&mut rng, 0), phase(&mut rng, 1), phase(&mut rng, 2));

    produce_by_gateway(bootstrap, &setup.input, &one, &gateways);
    setup.wait_for_finals(&reference(&one, None), Duration::from_secs(60));

    // A bad rule: refused with file, line and field; the running rules stay.
    let bad = format!("{base}[[grouping.rule]]\nmatch = \"plant.*\"\nkey = \"{{2}}\"\n");
    let key_line = bad.lines().count();
    std::fs::write(&path, &bad).expect("write");
    hup(&consumer);
    let framed = collect_until(&socket, "READY=1", Duration::from_secs(10));
    assert!(
        framed.iter().any(|m| m == "RELOADING=1")
            && framed.last().map(String::as_str) == Some("READY=1"),
        "{framed:?}"
    );
    let want = format!("{}:{key_line}: `grouping.rule`", path.display());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !setup.log_tail("a", 50).contains(&want) {
        assert!(
            Instant::now() < deadline,
            "{}",
            log(&format!("no `{want}`"))
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(setup.log_tail("a", 50).contains("reload refused"));
    // A file changing [topics]: refused too.
    std::fs::write(&path, base.replace(&setup.finals, "elsewhere")).expect("write");
    hup(&consumer);
    collect_until(&socket, "READY=1", Duration::from_secs(10));
    assert_eq!(metric("edge_consumer_reload_failures_total"), Some(2.0));
    assert_eq!(metric("edge_consumer_reloads_total"), Some(0.0));
    assert!(
        setup
            .log_tail("a", 50)
            .contains("the file changes [topics]"),
        "{}",
        log("no [topics] refusal")
    );
    assert!(
        consumer.0.try_wait().expect("poll").is_none(),
        "{}",
        log("exited")
    );

    // Still merging, under the old rules.
    produce_by_gateway(bootstrap, &setup.input, &two, &gateways);
    let mut expected = reference(&one, None);
    expected.extend(reference(&two, None));
    setup.wait_for_finals(&expected, Duration::from_secs(60));

    // A good file: every plant series into one group, from the next batch on.
    let good = format!("{base}[[grouping.rule]]\nmatch = \"plant.*\"\nkey = \"plant.all\"\n");
    std::fs::write(&path, good).expect("write");
    hup(&consumer);
    let framed = collect_until(&socket, "READY=1", Duration::from_secs(15));
    assert!(framed.iter().any(|m| m == "RELOADING=1"), "{framed:?}");
    assert_eq!(
        framed.last().map(String::as_str),
        Some("READY=1"),
        "{framed:?}"
    );
    assert_eq!(metric("edge_consumer_reloads_total"), Some(1.0));
    assert!(
        setup.log_tail("a", 50).contains("reload applied"),
        "{}",
        log("READY=1 came before the loop took the rules")
    );

    produce_by_gateway(bootstrap, &setup.input, &three, &gateways);
    let regrouped: BTreeMap<String, Reference> = reference(&grouped(&three, "plant.all"), None);
    expected.extend(regrouped.clone());
    let finals = setup.wait_for_finals(&expected, Duration::from_secs(90));
    assert_eq!(
        finals.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "no window under a series key after the reload, none under the group before it"
    );
    for (k, r) in &expected {
        check_final(k, &finals[k], r);
    }

    // Counted once each: every partial merged once, every final record emitted once.
    let produced = (one.len() + two.len() + three.len()) as f64;
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric("edge_consumer_merged_total") != Some(produced) {
        assert!(Instant::now() < deadline, "{}", log("merged_total"));
        std::thread::sleep(Duration::from_millis(100));
    }
    let body = http_get(addr, "/metrics").expect("metrics").1;
    let m = |series: &str| sample(&body, series).unwrap_or_else(|| panic!("{series}:\n{body}"));
    assert_eq!(m("edge_consumer_dead_letters_total"), 0.0);
    let records = read_committed(bootstrap, &setup.finals, Duration::from_secs(30))
        .expect("read finals")
        .len() as f64;
    assert_eq!(m("edge_consumer_finals_total"), records, "{body}");
    assert_eq!(
        m("edge_consumer_windows_finalized_total"),
        expected.len() as f64,
        "each window final once"
    );
    // A regrouped window is final with its first partial and revised by the others (a source
    // keeps the group of its first partial: see consumer/src/reload.rs); a batch emits the
    // newest state of a key once, so records lie between windows and windows + revisions.
    let revisions = m("edge_consumer_revisions_total");
    assert!(records >= expected.len() as f64 && records <= expected.len() as f64 + revisions);
    assert_eq!(m("edge_consumer_session_errors_total"), 0.0, "{body}");

    let after = collect_until(&socket, "never", Duration::from_millis(2_500));
    assert!(
        after.iter().any(|m| m == "WATCHDOG=1"),
        "pings go on: {after:?}"
    );
    terminate(&mut consumer.0);
    let status = consumer.0.wait().expect("exit status");
    assert!(status.success(), "{}", log(&format!("exit: {status}")));
    let stop = collect_until(&socket, "STOPPING=1", Duration::from_secs(2));
    assert!(stop.iter().any(|m| m == "STOPPING=1"), "{stop:?}");
    println!(
        "{} windows exact ({} regrouped); {records} final records, {revisions} revisions; {:?}",
        expected.len(),
        regrouped.len(),
        started.elapsed()
    );
}
