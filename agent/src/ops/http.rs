//! The agent's ops endpoints: its path table over the shared responder ([`edge_ops_http`]: GET
//! and HEAD, one request per connection, 8 KiB heads, a 5 s deadline, 32 connections).
//!
//! | path | answer |
//! | --- | --- |
//! | `/metrics` | Prometheus text format 0.0.4 ([`super::metrics`]) |
//! | `/healthz` | 200 `ok` while healthy, else 503 with the reasons ([`super::health`]) |
//! | `/readyz` | 200 `ready` while ready, else 503 with the reasons |
//! | `/inspect` | the buffer [`crate::inspect::Snapshot`] as JSON, read now (503 while no pipeline runs) |
//! | anything else | 404 with the list of paths |
//!
//! With `[ops] token_file` every path but `/healthz` and `/readyz` needs `Authorization: Bearer
//! <token>` (401 without; [`edge_ops_http::token`]).
//!
//! `/metrics` and `/inspect` are built on tokio's blocking pool (`/inspect` opens a redb read
//! transaction), off the runtime's workers.

use std::sync::Arc;

use edge_ops_http::{prometheus, verdict, Response, Router, Token};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::Shared;

/// The path table, over the process's telemetry and health view, behind the optional token.
struct Endpoints(Arc<Shared>, Option<Token>);

impl Router for Endpoints {
    fn token(&self) -> Option<&Token> {
        self.1.as_ref()
    }

    async fn route(&self, path: &str) -> Response {
        let shared = &self.0;
        let t = &shared.telemetry;
        let now = tokio::time::Instant::now();
        match path {
            "/metrics" => {
                let s2 = shared.clone();
                let text = tokio::task::spawn_blocking(move || {
                    super::metrics::render(&s2.telemetry, &s2.health())
                })
                .await
                .unwrap_or_default();
                (200, prometheus::CONTENT_TYPE, text)
            }
            "/healthz" => verdict(shared.health().unhealthy(now), "ok"),
            "/readyz" => verdict(shared.health().unready(now), "ready"),
            "/inspect" => {
                let t2 = t.clone();
                let snap = tokio::task::spawn_blocking(move || {
                    t2.database().map(|db| crate::inspect::snapshot(&*db))
                })
                .await
                .ok()
                .flatten();
                match snap {
                    Some(Ok(s)) => (
                        200,
                        "application/json",
                        serde_json::to_string(&s).unwrap_or_default(),
                    ),
                    Some(Err(e)) => (500, "text/plain", format!("{e}\n")),
                    None => (503, "text/plain", "no pipeline running\n".to_owned()),
                }
            }
            _ => (
                404,
                "text/plain",
                "not found; try /metrics /healthz /readyz /inspect\n".to_owned(),
            ),
        }
    }
}

/// Serves until `stop` fires; with `token`, `/metrics` and `/inspect` need it.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    token: Option<Token>,
    stop: CancellationToken,
) {
    edge_ops_http::serve(listener, Endpoints(shared, token), stop.cancelled_owned()).await
}

#[cfg(test)]
mod tests {
    use edge_ops_http::testing::exchange;

    use super::*;

    async fn server() -> (std::net::SocketAddr, CancellationToken) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stop = CancellationToken::new();
        tokio::spawn(serve(listener, Arc::default(), None, stop.clone()));
        (addr, stop)
    }

    #[tokio::test]
    async fn metrics_are_served_as_prometheus_text_and_health_needs_a_fresh_sample() {
        let (addr, _stop) = server().await;
        let m = exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await;
        assert!(m.starts_with("HTTP/1.1 200 OK\r\n"), "{m}");
        assert!(m.contains("\nedge_ingest_accepted_total 0\n"), "{m}");
        assert!(
            m.contains("# TYPE edge_kafka_commit_latency_seconds summary"),
            "{m}"
        );
        let h = exchange(addr, b"GET /healthz HTTP/1.1\r\n\r\n").await;
        assert!(h.starts_with("HTTP/1.1 503"), "no sample yet: {h}");
        let i = exchange(addr, b"GET /inspect HTTP/1.1\r\n\r\n").await;
        assert!(i.starts_with("HTTP/1.1 503"), "no pipeline: {i}");
        let n = exchange(addr, b"GET /nope HTTP/1.1\r\n\r\n").await;
        assert!(n.starts_with("HTTP/1.1 404"), "{n}");
    }

    #[tokio::test]
    async fn with_a_token_metrics_and_inspect_need_it_and_the_probes_do_not() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("ops-token");
        std::fs::write(&file, "gw-7-token\n").expect("write");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let token = Token::read(&file).expect("token");
        tokio::spawn(serve(
            listener,
            Arc::default(),
            Some(token),
            CancellationToken::new(),
        ));
        for path in ["/metrics", "/inspect"] {
            let bare = exchange(addr, format!("GET {path} HTTP/1.1\r\n\r\n").as_bytes()).await;
            assert!(bare.starts_with("HTTP/1.1 401"), "{path}: {bare}");
        }
        let m = exchange(
            addr,
            b"GET /metrics HTTP/1.1\r\nAuthorization: Bearer gw-7-token\r\n\r\n",
        )
        .await;
        assert!(m.starts_with("HTTP/1.1 200 OK\r\n"), "{m}");
        assert!(m.contains("\nedge_ingest_accepted_total 0\n"), "{m}");
        // Probes answer without it (503 here: no sample yet; never 401).
        for path in ["/healthz", "/readyz"] {
            let probe = exchange(addr, format!("GET {path} HTTP/1.1\r\n\r\n").as_bytes()).await;
            assert!(probe.starts_with("HTTP/1.1 503"), "{path}: {probe}");
        }
    }
}
