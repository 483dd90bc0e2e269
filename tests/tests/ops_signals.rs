//! Signals on the real `edge-agent` binary, with the real Mosquitto and Kafka, accounted by the
//! value each message carries, in Kafka (`read_committed`):
//! - SIGTERM in the middle of a stream drains within its bound, and a restart delivers
//!   everything exactly once; `edge-agent inspect` reads through the running agent while redb
//!   locks the file, and the file itself once the agent stopped;
//! - SIGHUP with a bad file is refused (file, line, field in the log) and the agent keeps
//!   running; SIGHUP with a good file applies mid-stream, exactly once;
//! - SIGHUP that changes the sensor mapping mid-stream stores each reading once, under the old
//!   id or the new one, never both: the drain flushes the acks of what it committed before the
//!   MQTT source disconnects (a regression test below).

mod ops_support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use edge_tests::Services;
use ops_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_stream_then_restart_loses_nothing_and_duplicates_nothing() {
    const N: u64 = 4000;
    let services = Services::from_env();
    let (bin, setup, mut agent) = ready_agent(&services).await;
    // About 4 s of traffic; the agent is stopped after 1.5 s, while it streams.
    let publisher = {
        let s = clone_setup(&setup);
        tokio::spawn(async move { publish(&s, 0, N, Duration::from_millis(100)).await })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let accepted_before = setup.metric("edge_ingest_accepted_total").unwrap_or(0.0);
    let drain = agent.terminate(Duration::from_secs(30));
    println!("SIGTERM after {accepted_before} readings accepted; drained and exited in {drain:?}");
    assert!(
        accepted_before > 0.0 && accepted_before < N as f64,
        "stopped mid-stream"
    );
    assert!(
        drain < Duration::from_secs(20),
        "within the configured bound"
    );
    assert!(
        agent.stderr().contains("pipeline drained"),
        "{}",
        agent.stderr()
    );
    assert_eq!(publisher.await.expect("publisher"), N);

    let mut agent = setup.spawn(&bin);
    setup.wait_drained(&mut agent, N, Duration::from_secs(60));
    // redb locks the file for the running agent: `inspect` asks the agent instead, and says so.
    let live = inspect_cli(&bin, &setup);
    assert!(
        live.contains("locked by it") && live.contains("0 records"),
        "{live}"
    );
    agent.terminate(Duration::from_secs(30));
    let offline = inspect_cli(&bin, &setup);
    assert!(offline.contains("read-only"), "{offline}");
    assert!(offline.contains(&format!("accepted {N} ")), "{offline}");
    account(&setup, N, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_a_bad_file_is_refused_and_with_a_good_one_applied_mid_stream_exactly_once() {
    const N: u64 = 4000;
    let services = Services::from_env();
    let (_, setup, mut agent) = ready_agent(&services).await;

    // A bad file: refused with file, line and field; the agent keeps running the old one.
    setup.write_config("{dev}", "bogus_key = 1");
    agent.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while setup.metric("edge_agent_reload_failures_total") != Some(1.0) {
        assert!(Instant::now() < deadline, "reload failure not counted");
        std::thread::sleep(Duration::from_millis(50));
    }
    agent.assert_alive();
    let log = agent.stderr();
    assert!(log.contains("reload refused"), "{log}");
    assert!(
        log.contains("agent.toml:") && log.contains("bogus_key"),
        "names file, line and field: {log}"
    );
    assert_eq!(setup.get("/readyz").map(|r| r.0), Some(200), "still ready");
    assert_eq!(setup.metric("edge_agent_reloads_total"), Some(0.0));

    // A good file (one more pipeline) while a stream flows: applied, nothing lost or doubled.
    let publisher = {
        let s = clone_setup(&setup);
        tokio::spawn(async move { publish(&s, 0, N, Duration::from_millis(100)).await })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    setup.write_config(
        "{dev}",
        "[[pipeline]]\nname = \"spare\"\nsensors = [\"spare.*\"]",
    );
    agent.signal("HUP");
    assert_eq!(publisher.await.expect("publisher"), N);
    setup.wait_drained(&mut agent, N, Duration::from_secs(60));
    assert_eq!(setup.metric("edge_agent_reloads_total"), Some(1.0));
    assert!(agent.stderr().contains("reload applied"));
    agent.terminate(Duration::from_secs(30));
    account(&setup, N, 0);
}

/// Regression: a reload that changed the sensor mapping stored the drain's last messages under
/// both the old and the new id (0 to 260 of 4,000 at about 1,000 messages/s). The MQTT source
/// stopped polling before the PUBACKs of messages already committed had reached the broker, the
/// broker redelivered them to the next session, and the new id made a new dedupe key (sensor id
/// + timestamp). The source now flushes those acks and disconnects cleanly before it stops. The
/// stream has no quiet gap (bursts of 10 every 10 ms), so the signal lands with messages in
/// flight; counted by timestamp across both ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_changing_the_sensor_mapping_mid_stream_stores_each_reading_once_under_one_id() {
    const N: u64 = 4000;
    let services = Services::from_env();
    let (_, setup, mut agent) = ready_agent(&services).await;
    let publisher = {
        let s = clone_setup(&setup);
        tokio::spawn(async move { publish_paced(&s, 0, N, 10, Duration::from_millis(10)).await })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    setup.write_config("v2-{dev}", "");
    agent.signal("HUP");
    assert_eq!(publisher.await.expect("publisher"), N);
    let deadline = Instant::now() + Duration::from_secs(60);
    while setup.metric("edge_agent_reloads_total") != Some(1.0) {
        assert!(Instant::now() < deadline, "reload not applied");
        std::thread::sleep(Duration::from_millis(50));
    }
    setup.wait_drained(&mut agent, N, Duration::from_secs(60));
    agent.terminate(Duration::from_secs(30));
    let log = agent.stderr();
    for line in log.lines().filter(|l| l.contains("MQTT source stopped")) {
        println!("{line}");
    }

    let records = delivered(&setup);
    let mut ids_by_ts: BTreeMap<u64, Vec<&str>> = BTreeMap::new();
    for r in &records {
        assert_eq!(r.ts, TS0 + r.value, "{r:?}");
        ids_by_ts.entry(r.ts).or_default().push(&r.sensor);
    }
    let is_new = |id: &&str| id.starts_with("v2-");
    let both: Vec<u64> = ids_by_ts
        .iter()
        .filter(|(_, ids)| ids.iter().any(is_new) && !ids.iter().all(is_new))
        .map(|(ts, _)| ts - TS0)
        .collect();
    let old = ids_by_ts
        .values()
        .filter(|ids| !ids.iter().any(is_new))
        .count();
    let new = ids_by_ts
        .values()
        .filter(|ids| ids.iter().all(is_new))
        .count();
    println!(
        "{old} readings stored under the old mapping only, {new} under the new only, {} under both",
        both.len()
    );
    assert!(
        both.is_empty(),
        "{} readings stored under both the old and the new id (values, first 20): {:?}",
        both.len(),
        &both[..both.len().min(20)]
    );
    let sensors = account_delivered(&records, N, 0);
    assert!(old > 0 && new > 0, "the reload landed mid-stream");
    assert!(
        sensors
            .get(&(N - 1))
            .is_some_and(|s| s.iter().all(|id| id.starts_with("v2-"))),
        "the last reading uses the new mapping"
    );
    assert!(
        log.contains("MQTT source stopped") && !log.contains("acks not confirmed"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_after_a_sigkill_says_the_agent_must_repair_the_file_first() {
    const N: u64 = 200;
    let services = Services::from_env();
    let (bin, setup, mut agent) = ready_agent(&services).await;
    assert_eq!(publish(&setup, 0, N, Duration::ZERO).await, N);
    setup.wait_drained(&mut agent, N, Duration::from_secs(60));
    agent.signal("KILL");
    let _ = agent.child.wait();
    let out = std::process::Command::new(&bin)
        .args(["inspect", "--config"])
        .arg(&setup.config_path)
        .output()
        .expect("run inspect");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a file that needs repair is not read"
    );
    assert!(
        stderr.contains("not closed cleanly") && stderr.contains("edge-agent run"),
        "{stderr}"
    );
    // The agent repairs it on start; afterwards the file reads, with nothing lost.
    let mut agent = setup.spawn(&bin);
    setup.wait_ready(&mut agent, Duration::from_secs(30));
    agent.terminate(Duration::from_secs(30));
    let offline = inspect_cli(&bin, &setup);
    assert!(offline.contains(&format!("accepted {N} ")), "{offline}");
}

/// `edge-agent inspect --config` (text output).
fn inspect_cli(bin: &std::path::Path, setup: &Setup) -> String {
    let out = std::process::Command::new(bin)
        .args(["inspect", "--config"])
        .arg(&setup.config_path)
        .output()
        .expect("run inspect");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The same agent's names, for a task that outlives a borrow (the directory stays with `s`).
fn clone_setup(s: &Setup) -> Setup {
    Setup {
        dir: tempfile::tempdir().expect("tempdir"),
        config_path: s.config_path.clone(),
        id: s.id.clone(),
        client_id: s.client_id.clone(),
        root: s.root.clone(),
        url: s.url.clone(),
        bootstrap: s.bootstrap.clone(),
        topic: s.topic.clone(),
        metrics: s.metrics,
    }
}
