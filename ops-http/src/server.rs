//! The accept loop and the responder: hyper's HTTP/1 server on tokio's `TcpListener`, over a
//! [`Router`] the service provides (its path table).
//!
//! Only `GET` (and `HEAD`, which gets the same head without the body); one request per
//! connection (`Connection: close`). Parsing the request is hyper's; the bounds are ours:
//!
//! - a request head of at most [`MAX_REQUEST`] bytes (8 KiB, hyper's `max_buf_size`): a longer
//!   one is answered 431 by hyper;
//! - one [`DEADLINE`] (5 s) per connection, from its accept to its last byte written, routing
//!   included: a slow or silent client (or a slow route) is dropped without an answer;
//! - at most [`MAX_CONNECTIONS`] (32) connections at once: the loop accepts the next only when
//!   one of them ends, and more wait in the kernel's backlog.
//!
//! With a [`Token`] ([`Router::token`]) every path but `/healthz` and `/readyz` needs
//! `Authorization: Bearer <token>`; without it the answer is 401 with `WWW-Authenticate: Bearer`.
//!
//! The answer is `HTTP/1.1 {status} {reason}` (`HTTP/1.0` to an HTTP/1.0 request) with `content-type`, `content-length` and
//! `connection: close`, then the body. A method other than GET/HEAD is answered 400
//! `bad request`; a head that is not HTTP/1.x is answered 400 by hyper. The loop ends when the
//! stop future completes (connections already accepted finish within their deadline); a failed
//! accept is logged and retried after 100 ms.
//!
//! hyper replaced a hand-written head parser (issue 15): +192 KiB on the stripped aarch64 agent
//! (+256 KiB in a probe), under the 300 KiB a crate may add; its parser is fuzzed upstream.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{
    HeaderValue, AUTHORIZATION, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, WWW_AUTHENTICATE,
};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::token::Token;

pub const MAX_REQUEST: usize = 8 * 1024;
pub const DEADLINE: Duration = Duration::from_secs(5);
pub const MAX_CONNECTIONS: usize = 32;

/// An answer: status code, `Content-Type` and body.
pub type Response = (u16, &'static str, String);

/// A service's path table.
pub trait Router: Send + Sync + 'static {
    /// The answer to a `GET` (or `HEAD`) of `path` (the target without its query). It runs on
    /// the connection's task, within its [`DEADLINE`]: blocking work belongs in
    /// `tokio::task::spawn_blocking`.
    fn route(&self, path: &str) -> impl Future<Output = Response> + Send;

    /// The bearer token every path but the health probes needs ([`Token`]); none by default.
    fn token(&self) -> Option<&Token> {
        None
    }
}

/// Serves `router` until `stop` completes.
pub async fn serve<R: Router>(listener: TcpListener, router: R, stop: impl Future<Output = ()>) {
    serve_with(listener, router, stop, DEADLINE).await
}

/// [`serve`] with another per-connection deadline (tests).
pub async fn serve_with<R: Router>(
    listener: TcpListener,
    router: R,
    stop: impl Future<Output = ()>,
    deadline: Duration,
) {
    let router = Arc::new(router);
    let mut stop = std::pin::pin!(stop);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let accepted = tokio::select! {
            _ = &mut stop => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, _)) => {
                let router = router.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(deadline, answer(stream, router)).await;
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

/// One connection, one request: hyper reads the head within [`MAX_REQUEST`] bytes, the router
/// answers, and the connection closes.
async fn answer<R: Router>(stream: TcpStream, router: Arc<R>) {
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let router = router.clone();
        async move { Ok::<_, Infallible>(respond(&*router, &request).await) }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .max_buf_size(MAX_REQUEST)
        .auto_date_header(false)
        // The per-connection deadline bounds the head's reading too (hyper's own needs a timer).
        .header_read_timeout(None)
        .serve_connection(TokioIo::new(stream), service)
        .await;
    if let Err(error) = served {
        tracing::debug!(%error, "metrics listener: connection ended early");
    }
}

async fn respond<R: Router>(
    router: &R,
    request: &Request<Incoming>,
) -> hyper::Response<Full<Bytes>> {
    let path = request.uri().path();
    let authorization = request
        .headers()
        .get(AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    let refused = match router.token() {
        Some(token) => Token::guards(path) && !token.admits(authorization),
        None => false,
    };
    let (status, kind, body) = match *request.method() {
        Method::GET | Method::HEAD if refused => (401, "text/plain", UNAUTHORIZED.to_owned()),
        Method::GET | Method::HEAD => router.route(path).await,
        _ => (400, "text/plain", "bad request\n".to_owned()),
    };
    let length = body.len();
    let mut answer = hyper::Response::new(Full::new(Bytes::from(body)));
    *answer.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = answer.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(kind));
    headers.insert(CONTENT_LENGTH, HeaderValue::from(length));
    headers.insert(CONNECTION, HeaderValue::from_static("close"));
    if status == 401 {
        headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    answer
}

/// The body of a 401.
const UNAUTHORIZED: &str =
    "unauthorized: send `Authorization: Bearer <token>` ([ops] token_file); /healthz and /readyz are open\n";

/// A health answer: 200 with `good` while there is no reason against, else 503 with the
/// reasons, one a line.
pub fn verdict(why: Vec<String>, good: &str) -> Response {
    match why.is_empty() {
        true => (200, "text/plain", format!("{good}\n")),
        false => (503, "text/plain", why.join("\n") + "\n"),
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Instant;

    use tokio::sync::oneshot;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::testing::exchange;

    /// `/` is `root`, `/slow` outlasts any deadline, `/broken` is a 500, the rest 404.
    struct Paths;

    impl Router for Paths {
        async fn route(&self, path: &str) -> Response {
            match path {
                "/" => (200, "text/plain", "root\n".to_owned()),
                "/slow" => {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    (200, "text/plain", "late\n".to_owned())
                }
                "/broken" => (500, "text/plain", "broken\n".to_owned()),
                _ => (404, "text/plain", format!("no {path}\n")),
            }
        }
    }

    /// A server of [`Paths`]; sending on (or dropping) the returned sender stops it.
    async fn server(deadline: Duration) -> (SocketAddr, oneshot::Sender<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let stopped = async move {
            let _ = stopped.await;
        };
        tokio::spawn(serve_with(listener, Paths, stopped, deadline));
        (addr, stop)
    }

    #[tokio::test]
    async fn a_get_is_answered_with_status_type_length_and_close_and_a_head_without_the_body() {
        let (addr, _stop) = server(DEADLINE).await;
        // hyper writes header names in lower case (they are case-insensitive in HTTP/1.1).
        let head = "content-type: text/plain\r\ncontent-length: 5\r\nconnection: close\r\n\r\n";
        assert_eq!(
            exchange(addr, b"GET /?x=1 HTTP/1.1\r\nHost: x\r\n\r\n").await,
            format!("HTTP/1.1 200 OK\r\n{head}root\n")
        );
        assert_eq!(
            exchange(addr, b"HEAD / HTTP/1.0\r\n\r\n").await,
            format!("HTTP/1.0 200 OK\r\n{head}")
        );
        let n = exchange(addr, b"GET /nope HTTP/1.1\r\n\r\n").await;
        assert!(n.starts_with("HTTP/1.1 404 Not Found\r\n"), "{n}");
        assert!(n.ends_with("\r\n\r\nno /nope\n"), "{n}");
        let e = exchange(addr, b"GET /broken HTTP/1.1\r\n\r\n").await;
        assert!(
            e.starts_with("HTTP/1.1 500 Internal Server Error\r\n"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_head_written_in_pieces_is_read_to_its_blank_line_and_a_bad_one_is_400() {
        let (addr, _stop) = server(DEADLINE).await;
        let mut s = TcpStream::connect(addr).await.expect("connect");
        for piece in [&b"GET / HT"[..], b"TP/1.1\r\nHost: x\r", b"\n\r\n"] {
            s.write_all(piece).await.expect("write");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        assert!(out.ends_with("\r\n\r\nroot\n"), "{out}");
        let bad = exchange(addr, b"POST / HTTP/1.1\r\n\r\n").await;
        assert!(bad.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{bad}");
        assert!(bad.ends_with("\r\n\r\nbad request\n"), "{bad}");
    }

    #[tokio::test]
    async fn an_oversized_request_is_refused_and_a_silent_client_is_dropped_at_the_deadline() {
        let (addr, _stop) = server(Duration::from_millis(300)).await;
        let mut big = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        big.resize(MAX_REQUEST + 100, b'a');
        let r = exchange(addr, &big).await;
        assert!(r.starts_with("HTTP/1.1 431"), "{r}");
        let mut silent = TcpStream::connect(addr).await.expect("connect");
        let started = Instant::now();
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
    async fn the_deadline_covers_a_slow_route_too() {
        let (addr, _stop) = server(Duration::from_millis(300)).await;
        let started = Instant::now();
        assert_eq!(exchange(addr, b"GET /slow HTTP/1.1\r\n\r\n").await, "");
        assert!(started.elapsed() < Duration::from_secs(3), "dropped");
    }

    #[tokio::test]
    async fn a_connection_past_the_limit_waits_for_a_slot() {
        let deadline = Duration::from_millis(300);
        let (addr, _stop) = server(deadline).await;
        let started = Instant::now();
        let mut silent = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            silent.push(TcpStream::connect(addr).await.expect("connect"));
        }
        let r = exchange(addr, b"GET / HTTP/1.1\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(
            started.elapsed() >= deadline,
            "answered only once a silent connection was dropped"
        );
    }

    #[tokio::test]
    async fn the_listener_closes_when_stop_completes() {
        let (addr, stop) = server(DEADLINE).await;
        assert!(exchange(addr, b"GET / HTTP/1.1\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 200"));
        stop.send(()).expect("server listening");
        let give_up = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(addr).await.is_ok() {
            assert!(Instant::now() < give_up, "still listening");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// [`Paths`] behind a token read from a file.
    struct Guarded(Token);

    impl Router for Guarded {
        async fn route(&self, path: &str) -> Response {
            Paths.route(path).await
        }
        fn token(&self) -> Option<&Token> {
            Some(&self.0)
        }
    }

    #[tokio::test]
    async fn with_a_token_only_the_health_probes_answer_without_it() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("token");
        std::fs::write(&file, "t0ken\n").expect("write");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let router = Guarded(Token::read(&file).expect("token"));
        tokio::spawn(serve(listener, router, std::future::pending()));
        let bare = exchange(addr, b"GET / HTTP/1.1\r\n\r\n").await;
        assert!(bare.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{bare}");
        assert!(bare.contains("www-authenticate: Bearer\r\n"), "{bare}");
        let wrong = exchange(
            addr,
            b"GET / HTTP/1.1\r\nAuthorization: Bearer t0kem\r\n\r\n",
        )
        .await;
        assert!(wrong.starts_with("HTTP/1.1 401"), "{wrong}");
        let right = exchange(
            addr,
            b"GET / HTTP/1.1\r\nAuthorization: Bearer t0ken\r\n\r\n",
        )
        .await;
        assert!(right.ends_with("\r\n\r\nroot\n"), "{right}");
        // The probes are open (Paths answers them 404: routed, not refused).
        let probe = exchange(addr, b"GET /healthz HTTP/1.1\r\n\r\n").await;
        assert!(probe.starts_with("HTTP/1.1 404"), "{probe}");
    }

    #[test]
    fn health_is_200_with_the_word_or_503_with_every_reason() {
        assert_eq!(
            verdict(vec![], "ok"),
            (200, "text/plain", "ok\n".to_owned())
        );
        assert_eq!(
            verdict(vec!["a stalled".into(), "b away".into()], "ready"),
            (503, "text/plain", "a stalled\nb away\n".to_owned())
        );
    }
}
