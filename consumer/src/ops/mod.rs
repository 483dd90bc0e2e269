//! Operations: the HTTP endpoints a data centre scrapes and probes (`[ops]` in the
//! configuration), and the process's life under systemd.
//!
//! | module | does |
//! | --- | --- |
//! | [`health`] | the `/healthz` and `/readyz` predicates over the loop's [`Metrics`] (no I/O) |
//! | [`metrics`] | the Prometheus text exposition of [`Metrics`] |
//! | [`http`] | the endpoints' path table, served by the shared HTTP/1.1 responder of `edge-ops-http` on tokio's `TcpListener` (GET only, 8 KiB requests, 5 s deadline, 32 connections) |
//! | [`supervise`] | signals (SIGTERM/SIGINT: stop between transactions; SIGHUP: reload `[grouping]`), `sd_notify` READY/STOPPING/RELOADING and the watchdog (through `edge_ops_http::notify`, shared with the agent) |
//!
//! # Invariants
//!
//! - **Observing never disturbs the loop.** The listener runs on a thread of its own with a
//!   current-thread tokio runtime; it only loads the atomics of [`Metrics`] (and clones one
//!   small map under a lock the loop takes at most once per batch). The loop never waits on a
//!   scrape; nothing the endpoints do touches Kafka.
//! - **Metrics are optional for the data path.** A listener that cannot bind (port taken) is
//!   logged as an error and the consumer runs without it, as the agent does.

pub mod health;
pub mod http;
pub mod metrics;
pub mod supervise;

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use edge_ops_http::Token;
use tokio::sync::watch;

use crate::config::OpsSection;
use crate::telemetry::Metrics;

/// Why the ops listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error("metrics listener on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("[ops] {0}")]
    Token(String),
    #[error("starting an ops thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("installing the {signal} handler: {source}")]
    Signal {
        signal: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// What the endpoints read.
#[derive(Debug)]
pub struct Shared {
    pub metrics: Arc<Metrics>,
    /// `[ops] health_stall_s`.
    pub stall: Duration,
    /// `[ops] token_file`'s token: `/metrics` needs it.
    pub token: Option<Token>,
}

/// The running listener; dropping it (or [`Server::stop`]) stops it and joins its thread.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Binds `ops.metrics_listen` now (so a taken port is reported here) and serves from a
    /// thread of its own. `Ok(None)` when `ops.metrics` is false.
    pub fn start(ops: &OpsSection, metrics: Arc<Metrics>) -> Result<Option<Server>, OpsError> {
        if !ops.metrics {
            return Ok(None);
        }
        let token = match &ops.token_file {
            Some(path) => Some(Token::read(path).map_err(OpsError::Token)?),
            None => None,
        };
        let addr = ops.metrics_listen;
        let bind = |source| OpsError::Bind { addr, source };
        let listener = std::net::TcpListener::bind(addr).map_err(bind)?;
        listener.set_nonblocking(true).map_err(bind)?;
        let addr = listener.local_addr().map_err(bind)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(OpsError::Thread)?;
        let shared = Shared {
            metrics,
            stall: Duration::from_secs(*ops.health_stall_s.get_ref()),
            token,
        };
        let (stop, stopped) = watch::channel(false);
        let thread = std::thread::Builder::new()
            .name("ops-http".into())
            .spawn(move || {
                runtime.block_on(async move {
                    match tokio::net::TcpListener::from_std(listener) {
                        Ok(listener) => http::serve(listener, shared, stopped).await,
                        Err(error) => tracing::error!(%error, "metrics listener failed"),
                    }
                })
            })
            .map_err(OpsError::Thread)?;
        Ok(Some(Server {
            addr,
            stop,
            thread: Some(thread),
        }))
    }

    /// The address served (the configured one, with the port the kernel chose for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving and joins the thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let _ = self.stop.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::sync::atomic::Ordering;

    use super::*;

    fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        write!(s, "GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read");
        out
    }

    fn ops(listen: &str) -> OpsSection {
        OpsSection {
            metrics_listen: listen.parse().unwrap(),
            ..OpsSection::default()
        }
    }

    #[test]
    fn the_server_serves_the_shared_metrics_from_its_own_thread_until_stopped() {
        let metrics = Arc::new(Metrics::default());
        let server = Server::start(&ops("127.0.0.1:0"), metrics.clone())
            .unwrap()
            .expect("enabled");
        let addr = server.addr();
        assert_ne!(addr.port(), 0);
        metrics.merged.store(5, Ordering::Relaxed);
        assert!(get(addr, "/metrics").contains("\nedge_consumer_merged_total 5\n"));
        server.stop();
        assert!(std::net::TcpStream::connect(addr).is_err(), "closed");
    }

    #[test]
    fn a_taken_port_is_an_error_naming_the_address_and_disabled_metrics_serve_nothing() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        let e = Server::start(&ops(&addr), Arc::default()).unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("metrics listener on {addr}: ")),
            "{e}"
        );
        let off = OpsSection {
            metrics: false,
            ..ops(&addr)
        };
        assert!(Server::start(&off, Arc::default()).unwrap().is_none());
    }
}
