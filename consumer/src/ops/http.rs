//! The consumer's ops endpoints: its path table over the shared responder ([`edge_ops_http`]:
//! GET and HEAD, one request per connection, 8 KiB heads, a 5 s deadline, 32 connections).
//!
//! | path | answer |
//! | --- | --- |
//! | `/metrics` | Prometheus text format 0.0.4 ([`super::metrics`]) |
//! | `/healthz` | 200 `ok` while the loop progresses, else 503 with the reasons ([`super::health`]) |
//! | `/readyz` | 200 `ready` once the assigned partitions are restored, else 503 with the reasons |
//! | anything else | 404 with the list of paths |
//!
//! With `[ops] token_file`, `/metrics` needs `Authorization: Bearer <token>` (401 without).

use edge_ops_http::{prometheus, verdict, Response, Router, Token};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::health::View;
use super::Shared;

/// The status, content type and body for `path`, from what the loop shows now. No I/O.
pub fn route(path: &str, shared: &Shared) -> Response {
    let view = View::of(&shared.metrics, shared.stall);
    match path {
        "/metrics" => (
            200,
            prometheus::CONTENT_TYPE,
            super::metrics::render(&shared.metrics, &view),
        ),
        "/healthz" => verdict(view.unhealthy(), "ok"),
        "/readyz" => verdict(view.unready(), "ready"),
        _ => (
            404,
            "text/plain",
            "not found; try /metrics /healthz /readyz\n".to_owned(),
        ),
    }
}

impl Router for Shared {
    async fn route(&self, path: &str) -> Response {
        route(path, self)
    }

    fn token(&self) -> Option<&Token> {
        self.token.as_ref()
    }
}

/// Serves until `stop` turns true (or its sender is dropped).
pub async fn serve(listener: TcpListener, shared: Shared, mut stop: watch::Receiver<bool>) {
    let stopped = async move {
        let _ = stop.wait_for(|stop| *stop).await;
    };
    edge_ops_http::serve(listener, shared, stopped).await
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    use std::time::Duration;

    use edge_ops_http::testing::exchange;
    use tokio::net::TcpStream;

    use super::*;
    use crate::telemetry::Metrics;

    /// A server over fresh metrics; dropping the returned sender stops it.
    async fn server() -> (std::net::SocketAddr, Arc<Metrics>, watch::Sender<bool>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let metrics = Arc::new(Metrics::default());
        let shared = Shared {
            metrics: metrics.clone(),
            stall: Duration::from_secs(300),
            token: None,
        };
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(serve(listener, shared, stopped));
        (addr, metrics, stop)
    }

    #[tokio::test]
    async fn metrics_are_prometheus_text_and_readiness_waits_for_the_assignment() {
        let (addr, metrics, _stop) = server().await;
        metrics.merged.store(12, Ordering::Relaxed);
        let m = exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(m.starts_with("HTTP/1.1 200 OK\r\n"), "{m}");
        assert!(
            m.contains("content-type: text/plain; version=0.0.4\r\n"),
            "{m}"
        );
        assert!(m.contains("\nedge_consumer_merged_total 12\n"), "{m}");
        let h = exchange(addr, b"GET /healthz HTTP/1.1\r\n\r\n").await;
        assert!(
            h.starts_with("HTTP/1.1 200 OK\r\n") && h.ends_with("\r\n\r\nok\n"),
            "{h}"
        );
        let r = exchange(addr, b"GET /readyz HTTP/1.1\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{r}");
        assert!(r.contains("starting a session"), "{r}");
        let n = exchange(addr, b"GET /nope HTTP/1.1\r\n\r\n").await;
        assert!(n.starts_with("HTTP/1.1 404 Not Found\r\n"), "{n}");
        assert!(n.ends_with("try /metrics /healthz /readyz\n"), "{n}");
        let head = exchange(addr, b"HEAD /metrics HTTP/1.0\r\n\r\n").await;
        assert!(
            head.starts_with("HTTP/1.0 200 OK\r\n") && head.ends_with("\r\n\r\n"),
            "{head}"
        );
        let bad = exchange(addr, b"POST /metrics HTTP/1.1\r\n\r\n").await;
        assert!(bad.starts_with("HTTP/1.1 400"), "{bad}");
    }

    #[tokio::test]
    async fn the_listener_closes_when_told_to_stop() {
        let (addr, _metrics, stop) = server().await;
        assert!(exchange(addr, b"GET /healthz HTTP/1.1\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 200"));
        stop.send(true).expect("server listening");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(addr).await.is_ok() {
            assert!(std::time::Instant::now() < deadline, "still listening");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn with_a_token_metrics_needs_it_and_the_probes_do_not() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("ops-token");
        std::fs::write(&file, "c-token").expect("write");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shared = Shared {
            metrics: Arc::new(Metrics::default()),
            stall: Duration::from_secs(300),
            token: Some(Token::read(&file).expect("token")),
        };
        let (_stop, stopped) = watch::channel(false);
        tokio::spawn(serve(listener, shared, stopped));
        let bare = exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await;
        assert!(bare.starts_with("HTTP/1.1 401"), "{bare}");
        let m = exchange(
            addr,
            b"GET /metrics HTTP/1.1\r\nAuthorization: Bearer c-token\r\n\r\n",
        )
        .await;
        assert!(m.contains("\nedge_consumer_merged_total 0\n"), "{m}");
        let h = exchange(addr, b"GET /healthz HTTP/1.1\r\n\r\n").await;
        assert!(h.starts_with("HTTP/1.1 200 OK\r\n"), "{h}");
    }
}
