//! `sd_notify` without a dependency: one datagram to `$NOTIFY_SOCKET` per state change. Shared
//! by the agent (`agent/src/ops/supervise.rs`, `health.rs`) and the consumer
//! (`consumer/src/ops/supervise.rs`); what each sends when is documented there and in its unit
//! file (`deploy/systemd/`).
//!
//! Both send `READY=1` once running, `RELOADING=1` when a SIGHUP reload starts (the units use
//! `Type=notify` with `ExecReload=kill -HUP`, so systemd needs no `MONOTONIC_USEC`) and
//! `READY=1` when it is done, `STOPPING=1` when a stop starts, and `WATCHDOG=1` (from the first
//! `READY=1` on) while their health rules find them healthy, at half of `WatchdogSec`
//! ([`watchdog_interval`], from `$WATCHDOG_USEC`).
//! Without `$NOTIFY_SOCKET` (not under systemd) every call is a no-op. Abstract sockets
//! (`@name`) are supported. Failures are logged, never fatal: the watchdog then restarts a
//! service that cannot report, which is what it is for.
//!
//! # Why not the `sd-notify` crate
//!
//! `sd-notify` 0.5 was measured for this (issue 15) and not taken: it connects to
//! `$NOTIFY_SOCKET` as a filesystem path only, so an abstract address (`@name`, which systemd
//! hands out in some containers and which systemd's own `sd_notify(3)` accepts) would fail and
//! the watchdog would restart a healthy service. What it would replace is the fifty lines below.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Sends one notification (`READY=1`, `WATCHDOG=1`, ...). Returns whether it was sent.
pub fn notify(state: &str) -> bool {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return false;
    };
    let result = UnixDatagram::unbound().and_then(|socket| {
        let bytes = path.as_encoded_bytes();
        match bytes.strip_prefix(b"@") {
            Some(name) => send_abstract(&socket, name, state),
            None => socket.send_to(state.as_bytes(), &path).map(|_| ()),
        }
    });
    match result {
        Ok(()) => true,
        Err(error) => {
            tracing::warn!(%error, state, "sd_notify failed");
            false
        }
    }
}

#[cfg(target_os = "linux")]
fn send_abstract(socket: &UnixDatagram, name: &[u8], state: &str) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    socket.send_to_addr(state.as_bytes(), &addr).map(|_| ())
}

#[cfg(not(target_os = "linux"))]
fn send_abstract(_: &UnixDatagram, _: &[u8], _: &str) -> std::io::Result<()> {
    Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
}

/// How often to feed the watchdog: half of `$WATCHDOG_USEC`, when systemd asked for one (and
/// `$WATCHDOG_PID`, when set, is this process).
pub fn watchdog_interval() -> Option<Duration> {
    interval_of(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    )
}

/// [`watchdog_interval`] from the variables' values and this process's id. No I/O.
fn interval_of(usec: Option<&str>, pid: Option<&str>, me: u32) -> Option<Duration> {
    let usec: u64 = usec?.parse().ok()?;
    if let Some(pid) = pid {
        if pid.parse::<u32>().ok()? != me {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notification_arrives_as_one_datagram_on_the_notify_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify");
        let receiver = UnixDatagram::bind(&path).expect("bind");
        // Env vars are process-wide: only this test sets NOTIFY_SOCKET.
        std::env::set_var("NOTIFY_SOCKET", &path);
        assert!(notify("READY=1"));
        std::env::remove_var("NOTIFY_SOCKET");
        let mut buf = [0u8; 64];
        let n = receiver.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"READY=1");
    }

    #[test]
    fn the_watchdog_is_fed_at_half_its_timeout_and_only_by_the_process_it_names() {
        let half = Some(Duration::from_secs(15));
        assert_eq!(interval_of(Some("30000000"), None, 7), half);
        assert_eq!(interval_of(Some("30000000"), Some("7"), 7), half);
        assert_eq!(interval_of(Some("30000000"), Some("8"), 7), None);
        assert_eq!(interval_of(Some("0"), None, 7), None);
        assert_eq!(interval_of(Some("soon"), None, 7), None);
        assert_eq!(interval_of(None, Some("7"), 7), None);
    }
}
