//! A tiny HTTP/1.1 responder for the ops endpoints, on tokio's `TcpListener`.
//!
//! Only `GET` (and `HEAD`) of four paths; one request per connection (`Connection: close`).
//! Bounds: a request head of at most [`MAX_REQUEST`] bytes, read within [`DEADLINE`] (a slow or
//! silent client is dropped), at most [`MAX_CONNECTIONS`] at once (more wait in the kernel's
//! backlog). The request parser ([`parse`]) does no I/O.
//!
//! | path | answer |
//! | --- | --- |
//! | `/metrics` | Prometheus text format 0.0.4 ([`super::metrics`]) |
//! | `/healthz` | 200 `ok` while healthy, else 503 with the reasons ([`super::health`]) |
//! | `/readyz` | 200 `ready` while ready, else 503 with the reasons |
//! | `/inspect` | the buffer [`crate::inspect::Snapshot`] as JSON, read now (503 while no pipeline runs) |

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::Telemetry;

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

/// Serves until `stop` fires.
pub async fn serve(listener: TcpListener, t: Arc<Telemetry>, stop: CancellationToken) {
    serve_with(listener, t, stop, DEADLINE).await
}

/// [`serve`] with another per-connection deadline (tests).
pub async fn serve_with(
    listener: TcpListener,
    t: Arc<Telemetry>,
    stop: CancellationToken,
    deadline: Duration,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, _)) => {
                let t = t.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(deadline, answer(stream, &t)).await;
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

async fn answer(mut stream: TcpStream, t: &Arc<Telemetry>) -> std::io::Result<()> {
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
    let now = tokio::time::Instant::now();
    let (status, kind, body) = match path.as_str() {
        "/metrics" => {
            let t2 = t.clone();
            let text = tokio::task::spawn_blocking(move || super::metrics::render(&t2))
                .await
                .unwrap_or_default();
            (200, "text/plain; version=0.0.4", text)
        }
        "/healthz" => verdict(t.health().unhealthy(now), "ok"),
        "/readyz" => verdict(t.health().unready(now), "ready"),
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
    };
    respond(&mut stream, status, kind, &body, head_only).await
}

fn verdict(why: Vec<String>, good: &str) -> (u16, &'static str, String) {
    match why.is_empty() {
        true => (200, "text/plain", format!("{good}\n")),
        false => (503, "text/plain", why.join("\n") + "\n"),
    }
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
    use super::*;

    async fn server(deadline: Duration) -> (std::net::SocketAddr, CancellationToken) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stop = CancellationToken::new();
        let t = Arc::new(Telemetry::default());
        tokio::spawn(serve_with(listener, t, stop.clone(), deadline));
        (addr, stop)
    }

    async fn exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(request).await.expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        out
    }

    #[tokio::test]
    async fn metrics_are_served_as_prometheus_text_and_health_needs_a_fresh_sample() {
        let (addr, _stop) = server(DEADLINE).await;
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
    async fn an_oversized_request_is_refused_and_a_silent_client_is_dropped_at_the_deadline() {
        let (addr, _stop) = server(Duration::from_millis(300)).await;
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
