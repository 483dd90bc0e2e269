//! A tiny HTTP/1.1 responder for the ops endpoints, on tokio's `TcpListener` (the same shape as
//! the agent's `ops::http`).
//!
//! Only `GET` (and `HEAD`) of three paths; one request per connection (`Connection: close`).
//! Bounds: a request head of at most [`MAX_REQUEST`] bytes, read within [`DEADLINE`] (a slow or
//! silent client is dropped), at most [`MAX_CONNECTIONS`] at once (more wait in the kernel's
//! backlog). The request parser ([`parse`]) does no I/O.
//!
//! | path | answer |
//! | --- | --- |
//! | `/metrics` | Prometheus text format 0.0.4 ([`super::metrics`]) |
//! | `/healthz` | 200 `ok` while the loop progresses, else 503 with the reasons ([`super::health`]) |
//! | `/readyz` | 200 `ready` once the assigned partitions are restored, else 503 with the reasons |
//! | anything else | 404 with the list of paths |

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use super::health::View;
use super::Shared;

pub const MAX_REQUEST: usize = 8 * 1024;
pub const DEADLINE: Duration = Duration::from_secs(5);
pub const MAX_CONNECTIONS: usize = 32;

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Request<'a> {
    /// The head is not complete yet.
    Incomplete,
    Get {
        path: &'a str,
        head_only: bool,
    },
    /// Not a GET/HEAD, or not HTTP/1.x.
    Bad,
}

/// Parses a request head from the bytes read so far.
pub fn parse(bytes: &[u8]) -> Request<'_> {
    let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Request::Incomplete;
    };
    let Ok(head) = std::str::from_utf8(&bytes[..end]) else {
        return Request::Bad;
    };
    let line = head.lines().next().unwrap_or("");
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next(), parts.next(), parts.next());
    let head_only = match method {
        Some("GET") => false,
        Some("HEAD") => true,
        _ => return Request::Bad,
    };
    match (target, version) {
        (Some(t), Some(v)) if v.starts_with("HTTP/1.") && parts.next().is_none() => Request::Get {
            path: t.split('?').next().unwrap_or(t),
            head_only,
        },
        _ => Request::Bad,
    }
}

/// The status, content type and body for `path`, from what the loop shows now. No I/O.
pub fn route(path: &str, shared: &Shared) -> (u16, &'static str, String) {
    let view = View::of(&shared.metrics, shared.stall);
    match path {
        "/metrics" => (
            200,
            "text/plain; version=0.0.4",
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

fn verdict(why: Vec<String>, good: &str) -> (u16, &'static str, String) {
    match why.is_empty() {
        true => (200, "text/plain", format!("{good}\n")),
        false => (503, "text/plain", why.join("\n") + "\n"),
    }
}

/// Serves until `stop` turns true (or its sender is dropped).
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    serve_with(listener, shared, stop, DEADLINE).await
}

/// [`serve`] with another per-connection deadline (tests).
pub async fn serve_with(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    deadline: Duration,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let accepted = tokio::select! {
            _ = stop.wait_for(|stop| *stop) => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, _)) => {
                let shared = shared.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(deadline, answer(stream, &shared)).await;
                    drop(permit);
                });
            }
            Err(error) => {
                tracing::warn!(%error, "metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn answer(mut stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    let (path, head_only) = loop {
        match parse(&buf) {
            Request::Get { path, head_only } => break (path.to_owned(), head_only),
            Request::Bad => {
                return respond(&mut stream, 400, "text/plain", "bad request\n", false).await
            }
            Request::Incomplete if buf.len() >= MAX_REQUEST => {
                return respond(&mut stream, 431, "text/plain", "request too large\n", false).await
            }
            Request::Incomplete => {}
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let (status, kind, body) = route(&path, shared);
    respond(&mut stream, status, kind, &body, head_only).await
}

async fn respond(
    stream: &mut TcpStream,
    status: u16,
    kind: &str,
    body: &str,
    head_only: bool,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    if !head_only {
        stream.write_all(body.as_bytes()).await?;
    }
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::telemetry::Metrics;

    /// A server over fresh metrics; dropping the returned sender stops it.
    async fn server(
        deadline: Duration,
    ) -> (std::net::SocketAddr, Arc<Shared>, watch::Sender<bool>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shared = Arc::new(Shared {
            metrics: Arc::new(Metrics::default()),
            stall: Duration::from_secs(300),
        });
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(serve_with(listener, shared.clone(), stopped, deadline));
        (addr, shared, stop)
    }

    async fn exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(request).await.expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        out
    }

    #[tokio::test]
    async fn metrics_are_prometheus_text_and_readiness_waits_for_the_assignment() {
        let (addr, shared, _stop) = server(DEADLINE).await;
        shared.metrics.merged.store(12, Ordering::Relaxed);
        let m = exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(m.starts_with("HTTP/1.1 200 OK\r\n"), "{m}");
        assert!(
            m.contains("Content-Type: text/plain; version=0.0.4\r\n"),
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
            head.starts_with("HTTP/1.1 200 OK\r\n") && head.ends_with("\r\n\r\n"),
            "{head}"
        );
        let bad = exchange(addr, b"POST /metrics HTTP/1.1\r\n\r\n").await;
        assert!(bad.starts_with("HTTP/1.1 400"), "{bad}");
    }

    #[tokio::test]
    async fn an_oversized_request_is_refused_and_a_silent_client_is_dropped_at_the_deadline() {
        let (addr, _shared, _stop) = server(Duration::from_millis(300)).await;
        let mut big = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        big.resize(MAX_REQUEST + 100, b'a');
        let r = exchange(addr, &big).await;
        assert!(r.starts_with("HTTP/1.1 431"), "{r}");
        let mut silent = TcpStream::connect(addr).await.expect("connect");
        let started = std::time::Instant::now();
        let mut out = Vec::new();
        let n = silent
            .read_to_end(&mut out)
            .await
            .expect("closed, not reset");
        assert_eq!(n, 0, "nothing answered");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "dropped at the deadline"
        );
    }

    #[tokio::test]
    async fn the_listener_closes_when_told_to_stop() {
        let (addr, _shared, stop) = server(DEADLINE).await;
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

    #[test]
    fn a_request_head_is_incomplete_until_its_blank_line() {
        assert_eq!(
            parse(b"GET /metrics HTTP/1.1\r\nHost: x\r\n"),
            Request::Incomplete
        );
        assert_eq!(
            parse(b"GET /metrics?x=1 HTTP/1.1\r\nHost: x\r\n\r\n"),
            Request::Get {
                path: "/metrics",
                head_only: false
            }
        );
    }

    #[test]
    fn only_get_and_head_over_http_1_are_served() {
        assert_eq!(parse(b"POST /metrics HTTP/1.1\r\n\r\n"), Request::Bad);
        assert_eq!(parse(b"GET /metrics SPDY/3\r\n\r\n"), Request::Bad);
        assert_eq!(parse(b"GET\r\n\r\n"), Request::Bad);
        assert_eq!(
            parse(b"HEAD /healthz HTTP/1.0\r\n\r\n"),
            Request::Get {
                path: "/healthz",
                head_only: true
            }
        );
    }
}
