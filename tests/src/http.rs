//! HTTP helpers for the suites that read the ops endpoints (`/metrics`, `/healthz`, `/readyz`)
//! of the real binaries.

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

/// A loopback port nobody listens on now.
pub fn free_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind :0");
    l.local_addr().expect("local addr")
}

/// A blocking HTTP/1.1 GET (ureq): (status, body) of any answer; `None` while nothing answers.
pub fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(2)))
        .timeout_global(Some(Duration::from_secs(5)))
        .http_status_as_error(false)
        .build()
        .into();
    let mut answer = agent.get(format!("http://{addr}{path}")).call().ok()?;
    let status = answer.status().as_u16();
    let body = answer.body_mut().read_to_string().ok()?;
    Some((status, body))
}

/// The value of the first `/metrics` sample at `addr` whose line starts with `sample` (a family
/// name with its labels, e.g. `edge_modbus_polls_total{source="plc"}`); 0 while the listener
/// does not answer or the sample is not there yet.
pub fn metric(addr: SocketAddr, sample: &str) -> u64 {
    let Some((200, body)) = get(addr, "/metrics") else {
        return 0;
    };
    body.lines()
        .find(|l| l.starts_with(sample))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
