//! Opening the database, and salvaging it when it is damaged: the agent never needs a person to
//! delete its buffer.
//!
//! # What counts as damage
//!
//! The database is opened with redb's integrity check on open
//! (`Builder::set_check_integrity_on_open`): every page checksum of the committed trees is
//! verified, unless the clean-close mark proves the file unchanged since a clean close (next
//! section). Without the check a file altered since redb wrote it (a stray write, a restore, a
//! bad sector rewritten) opens as if healthy and the first read of a damaged page panics inside
//! redb, and then again at every restart. Damage is then:
//!
//! - the open returns `StorageError::Corrupted` (a page fails its checksum in both commit slots,
//!   a header field is impossible), or an I/O error of kind `InvalidData` (redb's "not a redb
//!   database: magic number mismatch": the header itself was overwritten), or
//! - the open panics inside redb.
//!
//! # When the full check runs
//!
//! The check reads every committed page, so its cost grows with the backlog. Measured (release
//! build, redb 4.6, this project's 2-core VM, `bench_restart`): a 291 MB file (1,000,000
//! readings + 1,000,000 outbox records) with a cold page cache is ready after 1.67 s with the
//! check and 0.07 s without (an empty database: 0.07 s); 68 MB of outbox took 0.26 s. On an SD
//! card it is about the file size over the card's read speed (some seconds at 20 MB/s). So it
//! runs only when the file may differ from what redb last committed and closed:
//!
//! - **After an unclean stop** (`kill -9`, power loss, a panic, an error stop): redb's own crash
//!   recovery verifies every checksum anyway, at the same cost, and the check finds the same.
//! - **When no clean-close mark proves the file unchanged** (`<name>.clean`, [`clean`]). A
//!   clean stop (the agent's run ended without error and the last handle closed,
//!   `service::run_with_telemetry`) writes the file's `stat` (device, inode, size, mtime,
//!   ctime) into the mark; [`open`] removes the mark before it opens the file and skips the check
//!   only when the `stat` still matches. Any write through the file system since the close (a
//!   stray write, a restore from a backup, a copy over the file, the tests' overwritten pages)
//!   changes the ctime or the inode, and a run that never reaches a clean stop leaves no mark.
//!
//! What a matching mark cannot rule out is damage below the file system after the clean close:
//! a medium that returns other bytes than were written (bit rot; a card that fails quietly).
//! Such a page is met when a stage first reads it; redb then panics or returns `Corrupted`, the
//! agent stops with an error (no clean stop, so no mark), and the next start runs the full check
//! and salvages. That is the one case the check at every start caught earlier: one failed run
//! instead of none, in exchange for a start time that does not grow with the backlog.
//!
//! Everything else keeps the old behaviour (a clear error and exit, so systemd retries): I/O
//! errors (a full disk, a permission, an SD card that fails reads), another process holding the
//! file, a file of a newer format. Those are facts about the machine, not the file, and moving
//! the file aside would not help. redb's own crash recovery is not damage either: a commit torn
//! by power loss fails its checksum and redb falls back to the previous commit, which it may,
//! because a torn commit never returned, so nothing in it was acknowledged.
//!
//! # Steps
//!
//! 1. **Finish an interrupted salvage** ([`finish_interrupted`]): a complete salvage exists
//!    only as `<name>.salvaged`; if one is there, the damaged file (if still at `<name>`) is
//!    moved aside and `<name>.salvaged` renamed into place. A partial `<name>.salvage` is
//!    deleted.
//! 2. **Open**, with the integrity check unless the clean-close mark proves the file unchanged
//!    (the mark is removed first, in every case). Healthy: done.
//! 3. **Salvage** the damaged `<name>` into a fresh `<name>.salvage`, reading through a
//!    read-only view that never writes the damaged file ([`scan`]): every table, row by row,
//!    skipping unreadable ranges, keeping a row only when it is in range and decodes
//!    (`salvage::copy`). Then `meta` is made consistent with what survived: every sequence stays
//!    above every surviving key, `log_bytes` is recounted.
//! 4. **Swap**, each step a rename followed by an fsync of the directory: `<name>.salvage` ->
//!    `<name>.salvaged` (complete), `<name>` -> `<name>.damaged-<unix seconds>` (kept for
//!    analysis, logged at error), `<name>.salvaged` -> `<name>`. Then the open of step 2 again.
//!
//! # Crash reasoning (`kill -9` or power loss at any instant)
//!
//! - During step 3: `<name>` is still the damaged file and `<name>.salvage` is partial; the next
//!   start deletes the partial copy, finds the damage again and salvages again from scratch. The
//!   view never writes the damaged file, so the redo reads the same bytes.
//! - After the first rename of step 4: `<name>.salvaged` is complete (its last commit, the
//!   `meta` fix-up, is `Durability::Immediate` and came before the rename); step 1 finishes the
//!   swap, whichever of the two other renames had happened.
//!
//! # Why nothing is sent twice and what can be lost
//!
//! Rows keep their keys, so outbox records keep their sequence numbers, and `forward_meta`'s
//! instance id is copied: Kafka's progress marker (the truth about what was delivered, see
//! [`crate::forward`]) still names this instance and a seq of this outbox. The forwarder's first
//! session trims the salvaged outbox through that marker, so a record that had reached Kafka
//! before the damage is dropped, not resent, and the rest are sent once. Readings keep their
//! seq and the windowing stage its cursor and window state (`window_series`), so a reading is
//! not windowed twice; the dedupe index is copied (a `dedupe` row only with its matching
//! `dedupe_age` row), so a redelivery of a stored reading is still recognised.
//!
//! Lost: the rows in unreadable ranges, counted per table (exactly for the dense sequences
//! `readings`, `dead_letters` and `outbox`, whose expected range `meta` states; the keyed
//! tables report unreadable ranges). Limits: if `forward_meta` itself is unreadable the
//! instance id is gone and the forwarder refuses Kafka's marker as another instance's
//! (`kafka.adopt_agent_id` takes it over); if `meta` is unreadable the sequences restart above
//! the surviving keys and the forwarder may refuse a marker ahead of the outbox. Both tables are
//! one small page each. And redb verifies page checksums only in its repair, which the damaged
//! file fails as a whole, so a few flipped bits inside a value that leave the page's structure
//! and the record's layout intact are copied as read; whole pages overwritten, zeroed or torn
//! (what storage failures look like) are refused. Counts go to the log and to `/metrics`
//! (`edge_store_salvaged_rows_total`, `edge_store_salvage_lost_rows_total`).

pub mod clean;
mod copy;
pub mod scan;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use redb::{Builder, Database, DatabaseError, StorageError};

pub use copy::{SalvageReport, TableReport};

/// The tables `/metrics` shows salvage counts for: those holding data not yet in Kafka (the
/// log line of [`SalvageReport::log`] names every table).
pub const METRIC_TABLES: [&str; 4] = ["readings", "dead_letters", "outbox", "window_series"];

/// The tables whose losses `/metrics` counts: the dense sequences, whose expected range `meta`
/// states (`window_series` keys are not a sequence: what an unreadable range held is unknown).
pub const LOST_TABLES: [&str; 3] = ["readings", "dead_letters", "outbox"];

/// Salvages in this process, for `/metrics` (process-lifetime like every agent counter).
#[derive(Debug, Default)]
pub struct SalvageCounters {
    /// Damaged databases moved aside and salvaged.
    pub salvages: AtomicU64,
    /// Rows salvaged, per [`METRIC_TABLES`] entry.
    pub salvaged: [AtomicU64; METRIC_TABLES.len()],
    /// Rows lost, per [`LOST_TABLES`] entry.
    pub lost: [AtomicU64; LOST_TABLES.len()],
}

impl SalvageCounters {
    /// Adds one salvage's counts.
    pub fn record(&self, report: &SalvageReport) {
        self.salvages.fetch_add(1, Ordering::Relaxed);
        for (i, name) in METRIC_TABLES.iter().enumerate() {
            let salvaged = report.table(name).map_or(0, |t| t.salvaged);
            self.salvaged[i].fetch_add(salvaged, Ordering::Relaxed);
        }
        for (i, name) in LOST_TABLES.iter().enumerate() {
            let lost = report.table(name).and_then(|t| t.lost).unwrap_or(0);
            self.lost[i].fetch_add(lost, Ordering::Relaxed);
        }
    }
}

/// Why opening (or salvaging) the database failed.
#[derive(Debug, thiserror::Error)]
pub enum SalvageError {
    /// Not damage: keeps the old behaviour (exit with the error).
    #[error(transparent)]
    Open(#[from] DatabaseError),
    /// A rename, a directory sync or removing a partial copy failed.
    #[error("salvage of {path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Writing the fresh database failed.
    #[error("salvage: writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: redb::Error,
    },
}

/// The database opened, and the salvage report when it had to be salvaged first.
pub struct Opened {
    pub db: Database,
    pub salvage: Option<SalvageReport>,
    /// Whether the open ran the full integrity check (no clean-close mark proved the file).
    pub checked: bool,
}

/// `<name><suffix>` beside `path`.
fn beside(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

/// The partial copy during step 3.
pub fn partial_path(path: &Path) -> PathBuf {
    beside(path, ".salvage")
}

/// The complete copy before its rename into place.
pub fn complete_path(path: &Path) -> PathBuf {
    beside(path, ".salvaged")
}

/// Opens (or creates) the database at `path`, salvaging it first when it is damaged (module
/// doc). `cache_bytes` is redb's page cache. The full integrity check runs unless the
/// clean-close mark ([`clean`]) proves the file unchanged since a clean close.
pub fn open(path: &Path, cache_bytes: usize) -> Result<Opened, SalvageError> {
    finish_interrupted(path)?;
    let checked = !clean::take(path)?;
    match open_db(path, cache_bytes, checked) {
        Ok(db) => Ok(Opened {
            db,
            salvage: None,
            checked,
        }),
        Err(Damage::Not(e)) => Err(e.into()),
        Err(Damage::Found(why)) => {
            tracing::error!(path = %path.display(), damage = why,
                "database damaged: salvaging every readable row into a new file");
            let report = salvage(path, cache_bytes)?;
            report.log();
            let db = open_db(path, cache_bytes, true).map_err(|d| match d {
                Damage::Not(e) => e,
                Damage::Found(why) => DatabaseError::Storage(StorageError::Corrupted(why)),
            })?;
            Ok(Opened {
                db,
                salvage: Some(report),
                checked: true,
            })
        }
    }
}

/// Records, after the last handle of the database at `path` was dropped at a clean stop, that
/// the file is as redb left it, so the next [`open`] may skip the full check ([`clean`]).
pub fn mark_clean(path: &Path) -> Result<(), SalvageError> {
    clean::write(path)
}

/// How an open failed.
enum Damage {
    /// Damage (module doc): salvage.
    Found(String),
    /// Any other failure: the caller's error.
    Not(DatabaseError),
}

/// Opens with redb's integrity check when `check`, else trusting a cleanly closed file (redb
/// still verifies every checksum when the file was not closed cleanly: its crash recovery).
fn open_db(path: &Path, cache_bytes: usize, check: bool) -> Result<Database, Damage> {
    let opened = std::panic::catch_unwind(|| {
        Builder::new()
            .set_cache_size(cache_bytes)
            .set_check_integrity_on_open(check)
            .create(path)
    });
    match opened {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(DatabaseError::Storage(StorageError::Corrupted(why)))) => Err(Damage::Found(why)),
        // redb's word for a file whose header is not redb's ("magic number mismatch").
        Ok(Err(DatabaseError::Storage(StorageError::Io(e))))
            if e.kind() == std::io::ErrorKind::InvalidData =>
        {
            Err(Damage::Found(e.to_string()))
        }
        Ok(Err(e)) => Err(Damage::Not(e)),
        Err(_) => Err(Damage::Found("redb panicked opening the file".into())),
    }
}

/// Step 1: completes a swap a crash interrupted, and removes a partial copy.
pub fn finish_interrupted(path: &Path) -> Result<(), SalvageError> {
    let complete = complete_path(path);
    if complete.exists() {
        if path.exists() {
            move_aside(path)?;
        }
        rename(&complete, path)?;
        tracing::warn!(path = %path.display(), "finished a salvage interrupted by a crash");
    }
    let partial = partial_path(path);
    if partial.exists() {
        std::fs::remove_file(&partial).map_err(file_error(&partial))?;
        tracing::warn!(path = %partial.display(), "removed the partial copy of an interrupted salvage (it is redone)");
    }
    Ok(())
}

/// Steps 3 and 4.
fn salvage(path: &Path, cache_bytes: usize) -> Result<SalvageReport, SalvageError> {
    let partial = partial_path(path);
    let mut report = {
        let fresh = Builder::new()
            .set_cache_size(cache_bytes)
            .create(&partial)
            .map_err(write_error(&partial))?;
        copy::copy_all(path, &fresh).map_err(write_error(&partial))?
        // `fresh` closes here, before the renames.
    };
    let complete = complete_path(path);
    rename(&partial, &complete)?;
    report.damaged = move_aside(path)?;
    rename(&complete, path)?;
    Ok(report)
}

/// Renames the damaged file to `<name>.damaged-<unix seconds>` (the first free second).
fn move_aside(path: &Path) -> Result<PathBuf, SalvageError> {
    let mut ts = crate::clock::unix_ms() / 1000;
    let target = loop {
        let target = beside(path, &format!(".damaged-{ts}"));
        if !target.exists() {
            break target;
        }
        ts += 1;
    };
    rename(path, &target)?;
    tracing::error!(damaged = %target.display(), "the damaged database is kept for analysis");
    Ok(target)
}

/// `from` -> `to`, then fsync of the directory so the rename survives power loss.
fn rename(from: &Path, to: &Path) -> Result<(), SalvageError> {
    std::fs::rename(from, to).map_err(file_error(to))?;
    sync_dir(to)
}

/// fsync of the directory holding `entry`, so a rename or removal there survives power loss.
fn sync_dir(entry: &Path) -> Result<(), SalvageError> {
    let dir = entry.parent().filter(|d| !d.as_os_str().is_empty());
    let dir = dir.unwrap_or(Path::new("."));
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(file_error(dir))
}

fn file_error(path: &Path) -> impl FnOnce(std::io::Error) -> SalvageError + '_ {
    move |source| SalvageError::File {
        path: path.to_owned(),
        source,
    }
}

fn write_error<E: Into<redb::Error>>(path: &Path) -> impl FnOnce(E) -> SalvageError + '_ {
    move |e| SalvageError::Write {
        path: path.to_owned(),
        source: e.into(),
    }
}

#[cfg(test)]
mod tests;
