//! `edge-agent inspect`: the buffer state in the database file, without disturbing a running
//! agent.
//!
//! # How it reads a database the agent has open
//!
//! The agent opens redb in its default `ExclusiveWriter` mode, which locks the whole file; a
//! second process's [`redb::ReadOnlyDatabase::open`] then fails with `DatabaseAlreadyOpen`
//! (`tests/tests/ops_inspect.rs` shows it). So `inspect` first tries the file read-only (a
//! stopped agent: the usual case for recovery work) and, when the file is locked, asks the
//! running agent for the same [`Snapshot`] over its metrics listener (`GET /inspect`), saying so.
//! The agent computes it in a read transaction on its own handle: redb's MVCC means it never
//! blocks the writer. A read-only open holds a shared lock: while `inspect` reads, an agent
//! starting up would be refused, so the read is short and the file is closed at once.
//!
//! # What it reads
//!
//! Tables and `meta` keys are the store's ([`crate::store::tables`], [`crate::store::meta`],
//! `store/FORMAT.md`; read only: this module never writes): `meta` (`next_seq`, `log_bytes`,
//! the persisted counters, `outbox_next_seq`, `outbox_trimmed_through`, `window_next_reading`,
//! `window_next_dead_letter`), `readings`, `dead_letters`, `outbox`, `window_series`. A missing
//! table reads as empty (a database the stage or forwarder never ran on).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};
use serde::{Deserialize, Serialize};

use crate::outbox::OutboxRecord;
use crate::store::meta as keys;
use crate::store::tables::{DEAD_LETTERS, META, OUTBOX, READINGS, WINDOW_SERIES};
use crate::store::{open_if_exists, redb_errors_into, StoreError};

/// Why `inspect` could not show the state.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("{}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: redb::DatabaseError,
    },
    /// redb refuses a read-only open of a file that was not closed cleanly: only a writer
    /// may repair it.
    #[error(
        "{}: the database was not closed cleanly (the agent was killed or the gateway lost \
         power). `edge-agent run` repairs it when it starts, keeping every committed \
         transaction; `inspect` opens the file read-only and cannot. Start the agent, then \
         inspect again (it asks the running agent).",
        path.display()
    )]
    NeedsRepair { path: PathBuf },
    #[error("reading the database: {0}")]
    Read(#[from] StoreError),
    #[error("outbox record {seq} does not decode")]
    Corrupt { seq: u64 },
    #[error("the database is locked by a running agent, and its metrics listener {addr} did not answer: {source}")]
    Agent {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the running agent at {addr} answered with something that is not a snapshot")]
    BadAnswer { addr: SocketAddr },
}

redb_errors_into!(InspectError);

/// The buffer state: depths, cursors, oldest unsent, last committed progress.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Readings waiting in the ingest log (not yet windowed), and their estimated bytes.
    pub log_readings: u64,
    pub log_bytes: u64,
    pub log_first_seq: Option<u64>,
    /// The seq the next ingested reading gets.
    pub log_next_seq: u64,
    pub dead_letters: u64,
    /// The windowing stage's cursors: the next reading / dead letter it consumes.
    pub window_next_reading: u64,
    pub window_next_dead_letter: u64,
    /// Open window series (state rows).
    pub window_series: u64,
    /// Records waiting for Kafka.
    pub outbox_records: u64,
    pub outbox_first_seq: Option<u64>,
    pub outbox_next_seq: u64,
    /// Last outbox seq known committed to Kafka and trimmed here (the local copy of progress;
    /// the truth is the marker in Kafka).
    pub outbox_trimmed_through: u64,
    /// `created_ms` of the oldest waiting outbox record.
    pub oldest_unsent_created_ms: Option<u64>,
    /// Persisted ingest counters (since the database was created).
    pub accepted: u64,
    pub duplicate: u64,
    pub rejected: u64,
    pub dropped: u64,
    pub upstream_gaps: u64,
}

/// Reads a [`Snapshot`] in one read transaction of `db`.
pub fn snapshot(db: &impl ReadableDatabase) -> Result<Snapshot, InspectError> {
    let txn = db.begin_read()?;
    let mut s = Snapshot::default();
    if let Some(meta) = open_if_exists(&txn, META)? {
        let get = |k: &str| keys::get(&meta, k);
        s.log_next_seq = get(keys::NEXT_SEQ)?;
        s.log_bytes = get(keys::LOG_BYTES)?;
        s.accepted = get(keys::ACCEPTED)?;
        s.duplicate = get(keys::DUPLICATE)?;
        s.rejected = get(keys::REJECTED)?;
        s.dropped = get(keys::DROPPED)?;
        s.upstream_gaps = get(keys::UPSTREAM_GAPS)?;
        s.outbox_next_seq = get(keys::OUTBOX_NEXT_SEQ)?.max(1);
        s.outbox_trimmed_through = get(keys::OUTBOX_TRIMMED_THROUGH)?;
        s.window_next_reading = get(keys::WINDOW_NEXT_READING)?;
        s.window_next_dead_letter = get(keys::WINDOW_NEXT_DEAD_LETTER)?;
    }
    if let Some(t) = open_if_exists(&txn, READINGS)? {
        s.log_readings = t.len()?;
        s.log_first_seq = t.first()?.map(|(k, _)| k.value());
    }
    if let Some(t) = open_if_exists(&txn, DEAD_LETTERS)? {
        s.dead_letters = t.len()?;
    }
    if let Some(t) = open_if_exists(&txn, WINDOW_SERIES)? {
        s.window_series = t.len()?;
    }
    if let Some(t) = open_if_exists(&txn, OUTBOX)? {
        s.outbox_records = t.len()?;
        if let Some((k, v)) = t.first()? {
            let seq = k.value();
            let record =
                OutboxRecord::decode(v.value()).map_err(|_| InspectError::Corrupt { seq })?;
            s.outbox_first_seq = Some(seq);
            s.oldest_unsent_created_ms = Some(record.created_ms);
        }
    }
    Ok(s)
}

/// Where a snapshot came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The file, opened read-only (no agent had it open).
    File(PathBuf),
    /// The running agent, over its metrics listener (the file was locked).
    Agent(SocketAddr),
}

/// Opens `path` read-only; when a running agent holds the lock, asks it at `agent` instead.
pub fn inspect(
    path: &Path,
    agent: SocketAddr,
    token: Option<&edge_ops_http::Token>,
) -> Result<(Snapshot, Origin), InspectError> {
    let open = redb::Builder::new()
        .set_cache_size(1024 * 1024)
        .open_read_only(path);
    match open {
        Ok(db) => Ok((snapshot(&db)?, Origin::File(path.to_owned()))),
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
            Ok((from_agent(agent, token)?, Origin::Agent(agent)))
        }
        Err(redb::DatabaseError::RepairAborted) => Err(InspectError::NeedsRepair {
            path: path.to_owned(),
        }),
        Err(source) => Err(InspectError::Open {
            path: path.to_owned(),
            source,
        }),
    }
}

/// `GET /inspect` from a running agent (blocking, 5 s timeouts), with its `[ops] token_file`'s
/// token when it has one.
///
/// A plain socket rather than `ureq` (which the tests and the demo use): `ureq` 3 without TLS
/// grew a stripped release binary by 437 KB in a probe (issue 15), over the 300 KiB a crate may
/// add to the gateway binary, for one GET to a loopback port the agent serves itself.
pub fn from_agent(
    addr: SocketAddr,
    token: Option<&edge_ops_http::Token>,
) -> Result<Snapshot, InspectError> {
    let io = |source| InspectError::Agent { addr, source };
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(io)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(io)?;
    let authorization = token
        .map(|t| format!("Authorization: {}\r\n", t.header()))
        .unwrap_or_default();
    let request = format!(
        "GET /inspect HTTP/1.1\r\nHost: edge-agent\r\nConnection: close\r\n{authorization}\r\n"
    );
    stream.write_all(request.as_bytes()).map_err(io)?;
    let mut answer = Vec::new();
    stream
        .take(1024 * 1024)
        .read_to_end(&mut answer)
        .map_err(io)?;
    let text = String::from_utf8_lossy(&answer);
    let body = match text.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => body,
        _ => return Err(InspectError::BadAnswer { addr }),
    };
    serde_json::from_str(body).map_err(|_| InspectError::BadAnswer { addr })
}

/// The human-readable form `edge-agent inspect` prints.
pub fn render(s: &Snapshot, origin: &Origin, now_ms: u64) -> String {
    let source = match origin {
        Origin::File(p) => format!("{} (read-only; no agent had it open)", p.display()),
        Origin::Agent(a) => {
            format!("the running agent at http://{a}/inspect (the database file is locked by it)")
        }
    };
    let opt = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
    let age = s.oldest_unsent_created_ms.map_or_else(
        || "-".to_owned(),
        |c| format!("{:.1} s", now_ms.saturating_sub(c) as f64 / 1000.0),
    );
    format!(
        "source:                 {source}\n\
         ingest log:             {} readings, {} bytes (first seq {}, next seq {})\n\
         dead letters:           {}\n\
         window cursors:         next reading {}, next dead letter {}; {} open series\n\
         outbox:                 {} records (first seq {}, next seq {})\n\
         committed to Kafka:     through seq {} (local copy; Kafka's marker is the truth)\n\
         oldest unsent:          {age}\n\
         counters (persisted):   accepted {} duplicate {} rejected {} dropped {} upstream gaps {}\n",
        s.log_readings,
        s.log_bytes,
        opt(s.log_first_seq),
        s.log_next_seq,
        s.dead_letters,
        s.window_next_reading,
        s.window_next_dead_letter,
        s.window_series,
        s.outbox_records,
        opt(s.outbox_first_seq),
        s.outbox_next_seq,
        s.outbox_trimmed_through,
        s.accepted,
        s.duplicate,
        s.rejected,
        s.dropped,
        s.upstream_gaps,
    )
}
