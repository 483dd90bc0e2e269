//! The real `edge-agent` binary talking to a stand-in for systemd: a datagram socket named by
//! `$NOTIFY_SOCKET`, with `$WATCHDOG_USEC` set as `WatchdogSec=2` would. The agent sends
//! `READY=1` once its pipeline runs, `WATCHDOG=1` every second while healthy, `RELOADING=1` and
//! `READY=1` again around a SIGHUP reload, and `STOPPING=1` on SIGTERM.

mod ops_support;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use edge_tests::Services;
use ops_support::*;

/// Every notification received within `d`.
fn collect(socket: &UnixDatagram, d: Duration) -> Vec<String> {
    collect_until(socket, None, d)
}

/// Every notification received within `d`, stopping early after the first `until`.
fn collect_until(socket: &UnixDatagram, until: Option<&str>, d: Duration) -> Vec<String> {
    let deadline = Instant::now() + d;
    let mut out = Vec::new();
    let mut buf = [0u8; 512];
    while Instant::now() < deadline {
        if until.is_some_and(|u| out.last().is_some_and(|m| m == u)) {
            break;
        }
        socket
            .set_read_timeout(Some(
                deadline
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(1)),
            ))
            .expect("timeout");
        if let Ok(n) = socket.recv(&mut buf) {
            out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_tells_systemd_ready_feeds_the_watchdog_while_healthy_and_announces_reload_and_stop(
) {
    let services = Services::from_env();
    let bin = agent_binary();
    let setup = Setup::new(&services.mqtt_url, &services.kafka_bootstrap);
    let path = setup.dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
    let path_str = path.display().to_string();
    let mut agent = setup.spawn_with_env(
        &bin,
        &[
            ("NOTIFY_SOCKET", path_str.as_str()),
            ("WATCHDOG_USEC", "2000000"),
        ],
    );
    // Start-up (opening the store, reaching both brokers) takes its time on a busy machine:
    // wait for READY, then count the pings of the next few seconds.
    let ready = collect_until(&socket, Some("READY=1"), Duration::from_secs(30));
    agent.assert_alive();
    assert_eq!(ready, ["READY=1"], "READY first, nothing before it");
    let first = collect(&socket, Duration::from_millis(4_500));
    let pings = first.iter().filter(|m| *m == "WATCHDOG=1").count();
    assert!(pings >= 3, "a ping about every second: {first:?}");

    agent.signal("HUP");
    let reload = collect_until(&socket, Some("READY=1"), Duration::from_secs(20));
    let at = |what: &str| reload.iter().position(|m| m == what);
    assert!(at("RELOADING=1").is_some(), "{reload:?}");
    assert!(
        at("READY=1") > at("RELOADING=1"),
        "ready again after the reload: {reload:?}"
    );
    let after = collect(&socket, Duration::from_millis(2_500));
    assert!(
        after.iter().any(|m| m == "WATCHDOG=1"),
        "pings continue: {after:?}"
    );

    agent.signal("TERM");
    let stop = collect_until(&socket, Some("STOPPING=1"), Duration::from_secs(10));
    assert!(stop.iter().any(|m| m == "STOPPING=1"), "{stop:?}");
    agent.terminate_waited(Duration::from_secs(20));
}
