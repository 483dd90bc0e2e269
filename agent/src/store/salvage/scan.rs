//! Reading what is still readable in a damaged database: the read-only view and the two scans.
//!
//! # The view
//!
//! redb refuses a read-only open of a file that needs recovery (`RepairAborted`), and recovery
//! verifies every page checksum, which is exactly what a damaged file fails. [`Source`] opens
//! the file read-only through [`CleanHeaderView`], a storage backend that reads the file as it
//! is except for two flag bits of redb's header ("god") byte: *recovery required* and *primary
//! unflushed*. redb then reads the primary commit slot's trees without verifying them. The view
//! never writes: the damaged file stays byte for byte as it was found.
//!
//! # What a damaged page does to a read (redb 4.6, measured)
//!
//! redb verifies page checksums only when it repairs, not on reads. Descending into a page
//! whose bytes were overwritten panics (`unreachable!` on an unknown page type byte, index
//! checks), or returns `StorageError::Corrupted`, or (rarely) reads garbage. So every read here
//! runs inside [`std::panic::catch_unwind`] (the release profile unwinds), the handle is
//! reopened after a panic, and every row is checked before it is kept (by the caller's `keep`:
//! its key in the range `meta` says the table covers, its value decoded by the record's own
//! decoder), so garbage is refused rather than invented. A page of garbage whose type byte
//! survived reads without an error, so a scan also counts as failed where its keys stop
//! ascending or pass the last key `meta` allows, and where it ends before that key. The panics
//! are not printed: a hook sends those of the salvaging thread to the debug log.
//!
//! # Skipping a damaged range
//!
//! A range scan that meets a damaged leaf fails there, and so does a new scan started just
//! after the last good key: it descends into the same leaf. So:
//!
//! - **`u64` tables** ([`scan_seq`]: `readings`, `dead_letters`, `dedupe_age`, `outbox`) probe
//!   keys after the failure, in steps doubling up to [`MAX_STEP`] (smaller than the rows of one
//!   leaf, so no readable leaf is stepped over) while the table's last key is known, then
//!   bisect back to the first key whose descent succeeds, and resume the scan there.
//! - **Other tables** ([`scan_ends`]: `meta`, `dedupe`, string-keyed state) have keys that
//!   cannot be stepped through; they are read forwards until a failure, then backwards from the
//!   end until a failure or the forward scan's last key. What lies between is lost.

use std::cell::Cell;
use std::fs::File;
use std::ops::Bound;
use std::os::unix::fs::FileExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Once;

use redb::{
    Builder, DatabaseError, Key, ReadOnlyDatabase, ReadTransaction, ReadableDatabase,
    ReadableTable, StorageBackend, TableDefinition, TableError, TableHandle, Value,
};

/// Offset of redb's header flag byte (after its 9-byte magic number) and the two bits the view
/// clears (redb 4.x, `tree_store/page_store/header.rs`; pinned by the unit tests).
const GOD_BYTE_OFFSET: u64 = 9;
const RECOVERY_REQUIRED: u8 = 2;
const PRIMARY_UNFLUSHED: u8 = 8;

/// Rows read per attempt (and written per salvage transaction): bounded memory.
pub const BATCH: usize = 4096;
/// Largest probe step while the table's last key is known: well under the 60-odd rows of one
/// 4 KiB leaf of the smallest records, so a readable leaf is never stepped over.
pub const MAX_STEP: u64 = 16;

/// A row as redb stores it: key bytes, value bytes.
pub type RawRow = (Vec<u8>, Vec<u8>);

/// A row of a `u64`-keyed table: its key, its value bytes.
pub type SeqRow = (u64, Vec<u8>);

/// The damaged file, read through a backend that clears the recovery flags (module doc).
#[derive(Debug)]
pub struct CleanHeaderView {
    file: File,
}

impl StorageBackend for CleanHeaderView {
    fn len(&self) -> Result<u64, std::io::Error> {
        Ok(self.file.metadata()?.len())
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.file.read_exact_at(out, offset)?;
        if let Some(i) = GOD_BYTE_OFFSET.checked_sub(offset) {
            if let Some(byte) = out.get_mut(i as usize) {
                *byte &= !(RECOVERY_REQUIRED | PRIMARY_UNFLUSHED);
            }
        }
        Ok(())
    }

    fn set_len(&self, _len: u64) -> Result<(), std::io::Error> {
        Err(read_only())
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        Ok(())
    }

    fn write(&self, _offset: u64, _data: &[u8]) -> Result<(), std::io::Error> {
        Err(read_only())
    }
}

fn read_only() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::PermissionDenied,
        "the damaged database is read only",
    )
}

/// Why one read attempt stopped early.
#[derive(Debug)]
pub enum Failure {
    /// redb returned an error (`Corrupted`, mostly).
    Error(redb::Error),
    /// redb panicked on a damaged page.
    Panic,
    /// Keys out of order: redb read a page of garbage.
    Disorder,
}

impl<E: Into<redb::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure::Error(e.into())
    }
}

thread_local! {
    /// Set while this thread reads the damaged file: its panics go to the debug log.
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

/// Installs (once) the panic hook that keeps the salvaging thread's expected panics off stderr.
fn quiet_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if QUIET.with(Cell::get) {
                tracing::debug!(panic = %info, "salvage: redb panicked on a damaged page");
            } else {
                previous(info);
            }
        }));
    });
}

/// The damaged database, open read-only through [`CleanHeaderView`]; reopened after a panic.
pub struct Source {
    path: PathBuf,
    db: Option<ReadOnlyDatabase>,
    /// Failed read attempts (errors and panics), for the log.
    pub failures: u64,
}

impl Source {
    /// Opens the view; an error means redb cannot read even the header and the table directory.
    pub fn open(path: &Path) -> Result<Source, DatabaseError> {
        quiet_hook();
        let mut source = Source {
            path: path.to_owned(),
            db: None,
            failures: 0,
        };
        source.handle()?;
        Ok(source)
    }

    fn handle(&mut self) -> Result<&ReadOnlyDatabase, DatabaseError> {
        if self.db.is_none() {
            let file = File::open(&self.path)?;
            let opened = quietly(|| {
                Builder::new()
                    .set_cache_size(crate::ingest::CACHE_BYTES)
                    .open_read_only_with_backend(CleanHeaderView { file })
            });
            self.db = Some(match opened {
                Some(result) => result?,
                None => {
                    return Err(DatabaseError::Storage(redb::StorageError::Corrupted(
                        "redb panicked opening the damaged file".into(),
                    )))
                }
            });
        }
        Ok(self.db.as_ref().expect("opened above"))
    }

    /// Runs `read` on a fresh read transaction. A redb error or panic is a [`Failure`]; after a
    /// panic the handle is dropped and reopened on the next attempt.
    pub fn attempt<T>(
        &mut self,
        read: impl FnOnce(&ReadTransaction) -> Result<T, Failure>,
    ) -> Result<T, Failure> {
        let db = self.handle().map_err(Failure::from)?;
        let result = quietly(AssertUnwindSafe(|| {
            let txn = db.begin_read()?;
            read(&txn)
        }));
        let result = match result {
            Some(result) => result,
            None => {
                self.db = None;
                Err(Failure::Panic)
            }
        };
        if result.is_err() {
            self.failures += 1;
        }
        result
    }

    /// The names of the tables in the primary commit (empty when the directory is unreadable).
    pub fn table_names(&mut self) -> Vec<String> {
        self.attempt(|txn| Ok(txn.list_tables()?.map(|t| t.name().to_owned()).collect()))
            .unwrap_or_default()
    }
}

/// Runs `f` with this thread's panics quiet; `None` when it panicked.
fn quietly<T>(f: impl FnOnce() -> T) -> Option<T> {
    QUIET.with(|q| q.set(true));
    let result = catch_unwind(AssertUnwindSafe(f)).ok();
    QUIET.with(|q| q.set(false));
    result
}

/// Opens `table`, `None` when the primary commit has no such table.
fn table_in<K: Key + 'static, V: Value + 'static>(
    txn: &ReadTransaction,
    table: TableDefinition<K, V>,
) -> Result<Option<redb::ReadOnlyTable<K, V>>, Failure> {
    match txn.open_table(table) {
        Ok(t) => Ok(Some(t)),
        Err(TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// What a scan read and where it could not.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Scanned {
    /// Rows read (kept or not).
    pub read: u64,
    /// Damaged ranges skipped.
    pub unreadable_ranges: u64,
    /// Whether the first rows of the table were read without a failure before them, so the
    /// first key read is the table's first key.
    pub start_read: bool,
}

/// Reads every readable row of a `u64`-keyed table in key order, handing them to `sink` in
/// batches of at most [`BATCH`]; `last_hint` is the highest key the table may hold (from
/// `meta`), when known. Skips damaged ranges as the module doc says. A scan that yields a key
/// not above the one before, or ends before the table's last key, went through a page of
/// garbage (a damaged page whose type byte survived): it counts as a failure there.
pub fn scan_seq<E>(
    source: &mut Source,
    table: TableDefinition<u64, &[u8]>,
    last_hint: Option<u64>,
    sink: &mut dyn FnMut(Vec<SeqRow>) -> Result<(), E>,
) -> Result<Scanned, E> {
    let mut scanned = Scanned::default();
    let last = source
        .attempt(|txn| {
            let Some(t) = table_in(txn, table)? else {
                return Ok(None);
            };
            let last = t.last()?.map(|(k, _)| k.value());
            Ok(last)
        })
        .ok()
        .flatten();
    // `meta`'s word first: a last key read through a damaged page may be garbage.
    let last = last_hint.or(last);
    let mut from = 0u64;
    let mut first_attempt = true;
    loop {
        let mut batch: Vec<SeqRow> = Vec::new();
        let outcome = source.attempt(|txn| {
            let Some(t) = table_in(txn, table)? else {
                return Ok(true);
            };
            for row in t.range(from..)? {
                let (k, v) = row?;
                let k = k.value();
                let out_of_order = batch.last().is_some_and(|&(prev, _)| k <= prev);
                if k < from || out_of_order || last.is_some_and(|last| k > last) {
                    return Err(Failure::Disorder);
                }
                batch.push((k, v.value().to_vec()));
                if batch.len() == BATCH {
                    return Ok(false);
                }
            }
            Ok(true)
        });
        if first_attempt && (!batch.is_empty() || outcome.is_ok()) {
            scanned.start_read = true;
        }
        first_attempt = false;
        let resume = match batch.last() {
            Some(&(k, _)) => match k.checked_add(1) {
                Some(next) => Some(next),
                None => {
                    sink(batch)?;
                    return Ok(scanned);
                }
            },
            None => None,
        };
        scanned.read += batch.len() as u64;
        sink(batch)?;
        // Ended before the last key the table is known to hold: a failure too.
        let short = last.is_some_and(|last| resume.unwrap_or(from) <= last);
        match (outcome, resume) {
            (Ok(true), _) if !short => return Ok(scanned),
            // More rows, or a failure after some: a fresh scan from just after the last row
            // read (it fails at once, reading nothing, when the next leaf is the damaged one).
            (_, Some(next)) => from = next,
            (Ok(false), None) => return Ok(scanned),
            // Nothing readable from `from` on: skip the damaged range.
            (Ok(true) | Err(_), None) => {
                scanned.unreadable_ranges += 1;
                match next_readable(source, table, from, last) {
                    Some(next) => from = next,
                    None => return Ok(scanned),
                }
            }
        }
    }
}

/// Whether a scan starting at `key` can take its first step: `Some(first key at or after
/// key)`, `Some(None)` when readable and nothing is there, `None` when damaged.
fn probe(source: &mut Source, table: TableDefinition<u64, &[u8]>, key: u64) -> Option<Option<u64>> {
    source
        .attempt(|txn| {
            let Some(t) = table_in(txn, table)? else {
                return Ok(None);
            };
            let first = t.range(key..)?.next().transpose()?;
            Ok(first.map(|(k, _)| k.value()))
        })
        .ok()
}

/// Whether a scan from `key` reads a plausible first row: a key at or after `key` and not past
/// the table's last key (garbage reads as anything).
fn readable(
    source: &mut Source,
    table: TableDefinition<u64, &[u8]>,
    key: u64,
    last: Option<u64>,
) -> Readable {
    match probe(source, table, key) {
        Some(Some(k)) if k >= key && last.is_none_or(|l| k <= l) => Readable::Yes,
        Some(None) if last.is_none_or(|l| key > l) => Readable::End,
        _ => Readable::No,
    }
}

enum Readable {
    Yes,
    /// Readable, and nothing at or after the key.
    End,
    No,
}

/// The first key after `failed` (where a scan failed) from which a scan succeeds; `None` when
/// none does or nothing is left.
fn next_readable(
    source: &mut Source,
    table: TableDefinition<u64, &[u8]>,
    failed: u64,
    last: Option<u64>,
) -> Option<u64> {
    let mut bad = failed;
    let mut step = 1u64;
    let good = loop {
        let key = bad.checked_add(step)?;
        if last.is_some_and(|last| key > last) {
            // Past the last key: only the last key itself can still be reached.
            let last = last.expect("checked");
            if last > bad && matches!(readable(source, table, last, Some(last)), Readable::Yes) {
                break last;
            }
            return None;
        }
        match readable(source, table, key, last) {
            Readable::Yes => break key,
            Readable::End => return None,
            Readable::No => {
                bad = key;
                step = match last {
                    Some(_) => (step * 2).min(MAX_STEP),
                    None => step.saturating_mul(2),
                };
            }
        }
    };
    // `bad` fails, `good` reads: bisect for the first key that reads.
    let (mut bad, mut good) = (bad, good);
    while good - bad > 1 {
        let mid = bad + (good - bad) / 2;
        match readable(source, table, mid, last) {
            Readable::Yes => good = mid,
            _ => bad = mid,
        }
    }
    Some(good)
}

/// Reads every row of a table it can reach from either end (module doc): forwards until a
/// failure, then backwards until a failure or the forward scan's last key. Rows go to `sink`
/// as redb's bytes, in batches of at most [`BATCH`].
pub fn scan_ends<K: Key + 'static, V: Value + 'static, E>(
    source: &mut Source,
    table: TableDefinition<K, V>,
    sink: &mut dyn FnMut(Vec<RawRow>) -> Result<(), E>,
) -> Result<Scanned, E> {
    let mut scanned = Scanned::default();
    let mut after: Option<Vec<u8>> = None;
    let mut first_attempt = true;
    let forward_done = loop {
        let mut batch: Vec<RawRow> = Vec::new();
        let outcome = source.attempt(|txn| {
            let Some(t) = table_in(txn, table)? else {
                return Ok(true);
            };
            let lower = match &after {
                Some(k) => Bound::Excluded(K::from_bytes(k)),
                None => Bound::Unbounded,
            };
            for row in t.range::<K::SelfType<'_>>((lower, Bound::Unbounded))? {
                let (k, v) = row?;
                let key = K::as_bytes(&k.value()).as_ref().to_vec();
                let previous = batch.last().map(|r: &RawRow| &r.0).or(after.as_ref());
                if previous.is_some_and(|p| K::compare(&key, p) != std::cmp::Ordering::Greater) {
                    return Err(Failure::Disorder);
                }
                batch.push((key, V::as_bytes(&v.value()).as_ref().to_vec()));
                if batch.len() == BATCH {
                    return Ok(false);
                }
            }
            Ok(true)
        });
        if first_attempt && (!batch.is_empty() || outcome.is_ok()) {
            scanned.start_read = true;
        }
        first_attempt = false;
        let read_some = !batch.is_empty();
        if let Some((k, _)) = batch.last() {
            after = Some(k.clone());
        }
        scanned.read += batch.len() as u64;
        sink(batch)?;
        match outcome {
            Ok(true) => break true,
            // After a failure with rows read, a fresh scan from the last of them first.
            Ok(false) => continue,
            Err(_) if read_some => continue,
            Err(_) => break false,
        }
    };
    if forward_done {
        return Ok(scanned);
    }
    scanned.unreadable_ranges += 1;
    let mut before: Option<Vec<u8>> = None;
    loop {
        let mut batch: Vec<RawRow> = Vec::new();
        let outcome = source.attempt(|txn| {
            let Some(t) = table_in(txn, table)? else {
                return Ok(true);
            };
            let upper = match &before {
                Some(k) => Bound::Excluded(K::from_bytes(k)),
                None => Bound::Unbounded,
            };
            for row in t.range::<K::SelfType<'_>>((Bound::Unbounded, upper))?.rev() {
                let (k, v) = row?;
                let key = K::as_bytes(&k.value()).as_ref().to_vec();
                let previous = batch.last().map(|r: &RawRow| &r.0).or(before.as_ref());
                if previous.is_some_and(|p| K::compare(&key, p) != std::cmp::Ordering::Less) {
                    return Err(Failure::Disorder);
                }
                if after
                    .as_ref()
                    .is_some_and(|a| K::compare(&key, a) != std::cmp::Ordering::Greater)
                {
                    return Ok(true);
                }
                batch.push((key, V::as_bytes(&v.value()).as_ref().to_vec()));
                if batch.len() == BATCH {
                    return Ok(false);
                }
            }
            Ok(true)
        });
        let read_some = !batch.is_empty();
        if let Some((k, _)) = batch.last() {
            before = Some(k.clone());
        }
        scanned.read += batch.len() as u64;
        sink(batch)?;
        match outcome {
            // Met the forward scan's last key (or the table's start), or nothing more readable.
            Ok(true) => return Ok(scanned),
            Err(_) if !read_some => return Ok(scanned),
            Ok(false) | Err(_) => continue,
        }
    }
}
