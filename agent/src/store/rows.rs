//! The small row values the store encodes itself: the `window_shape` value, the `dedupe_age`
//! value and the `dedupe_group` value. The larger records live with their types (`Reading` in
//! [`crate::reading`], `DeadLetter` in [`crate::ingest`], `OutboxRecord` in [`crate::outbox`],
//! the window state in [`crate::window`]); all are written with [`super::codec`] and laid out
//! in `FORMAT.md`.

use super::codec::{ByteReader, ByteWriter, Truncated};

/// Version byte of the `window_shape` value.
pub const WINDOW_SHAPE_VERSION: u8 = 1;

/// `window_shape` value v1: the size and slide a pipeline's `window_series` rows were written
/// with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowShape {
    pub size_ms: i64,
    pub slide_ms: i64,
}

/// Why a `window_shape` value is unreadable; carries the version byte seen (0 when empty).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadShape {
    pub version: u8,
}

impl WindowShape {
    /// `u8 version = 1`, `i64 size_ms LE`, `i64 slide_ms LE`.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = ByteWriter::with_capacity(17);
        w.u8(WINDOW_SHAPE_VERSION)
            .i64(self.size_ms)
            .i64(self.slide_ms);
        w.into_vec()
    }

    /// Reads a v1 value. Bytes after the 17 are ignored (as they always were).
    pub fn decode(bytes: &[u8]) -> Result<WindowShape, BadShape> {
        let mut r = ByteReader::new(bytes);
        let version = r.u8().map_err(|Truncated| BadShape { version: 0 })?;
        let bad = BadShape { version };
        if version != WINDOW_SHAPE_VERSION {
            return Err(bad);
        }
        let size_ms = r.i64().map_err(|Truncated| bad)?;
        let slide_ms = r.i64().map_err(|Truncated| bad)?;
        Ok(WindowShape { size_ms, slide_ms })
    }
}

/// `dedupe_age` value: when a dedupe key was inserted, and the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DedupeAge<'a> {
    pub inserted_ms: u64,
    pub key: &'a [u8],
}

impl<'a> DedupeAge<'a> {
    /// `u64 inserted_unix_ms LE` ++ the dedupe key bytes (no length: the rest of the value).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = ByteWriter::with_capacity(8 + self.key.len());
        w.u64(self.inserted_ms).bytes(self.key);
        w.into_vec()
    }

    /// Never fails: a value shorter than 8 bytes reads as inserted at 0 (evicted first) with
    /// an empty key, which matches no `dedupe` row.
    pub fn decode(bytes: &'a [u8]) -> DedupeAge<'a> {
        let mut r = ByteReader::new(bytes);
        match r.u64() {
            Ok(inserted_ms) => DedupeAge {
                inserted_ms,
                key: r.rest(),
            },
            Err(Truncated) => DedupeAge {
                inserted_ms: 0,
                key: &[],
            },
        }
    }
}

/// Version byte of the `dedupe_group` value.
pub const DEDUPE_GROUP_VERSION: u8 = 1;

/// `dedupe_group` value v1: the dedupe keys one ingest commit inserted, when, and the last seq
/// they point at (the row's key is the first). The index's eviction order since v0.2: one row
/// per commit instead of one `dedupe_age` row per key.
///
/// Built key by key with [`DedupeGroup::push`]; read back with [`DedupeGroup::decode`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DedupeGroup {
    pub inserted_ms: u64,
    pub last_seq: u64,
    count: u32,
    /// `count` times (`u16 len LE`, key), as stored.
    keys: ByteWriter,
}

/// A `dedupe_group` value that is not version 1 or is cut short.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("dedupe group value unreadable (version byte {version})")]
pub struct BadGroup {
    pub version: u8,
}

impl DedupeGroup {
    pub fn new(inserted_ms: u64) -> DedupeGroup {
        DedupeGroup {
            inserted_ms,
            last_seq: 0,
            count: 0,
            keys: ByteWriter::default(),
        }
    }

    /// Adds `key`, which points at `seq` (seqs are pushed in increasing order).
    pub fn push(&mut self, key: &[u8], seq: u64) {
        self.keys.bytes_u16(key);
        self.count += 1;
        self.last_seq = seq;
    }

    pub fn len(&self) -> u32 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The keys, in the order they were pushed.
    pub fn keys(&self) -> impl Iterator<Item = &[u8]> {
        let mut r = ByteReader::new(self.keys.as_slice());
        (0..self.count).map_while(move |_| r.bytes_u16().ok())
    }

    /// `u8 version = 1`, `u64 inserted_unix_ms LE`, `u64 last_seq LE`, `u32 count LE`, then
    /// `count` times `u16 key_len LE` and the key bytes.
    pub fn encode(&self) -> Vec<u8> {
        let keys = self.keys.as_slice();
        let mut w = ByteWriter::with_capacity(21 + keys.len());
        w.u8(DEDUPE_GROUP_VERSION)
            .u64(self.inserted_ms)
            .u64(self.last_seq)
            .u32(self.count)
            .bytes(keys);
        w.into_vec()
    }

    /// Reads a v1 value; every key must be there and nothing after the last.
    pub fn decode(bytes: &[u8]) -> Result<DedupeGroup, BadGroup> {
        let mut r = ByteReader::new(bytes);
        let version = r.u8().map_err(|Truncated| BadGroup { version: 0 })?;
        let bad = BadGroup { version };
        if version != DEDUPE_GROUP_VERSION {
            return Err(bad);
        }
        let inserted_ms = r.u64().map_err(|Truncated| bad)?;
        let last_seq = r.u64().map_err(|Truncated| bad)?;
        let count = r.u32().map_err(|Truncated| bad)?;
        let keys = r.rest();
        let mut check = ByteReader::new(keys);
        for _ in 0..count {
            check.bytes_u16().map_err(|Truncated| bad)?;
        }
        check.finish().map_err(|_| bad)?;
        let mut stored = ByteWriter::with_capacity(keys.len());
        stored.bytes(keys);
        Ok(DedupeGroup {
            inserted_ms,
            last_seq,
            count,
            keys: stored,
        })
    }
}
