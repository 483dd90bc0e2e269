//! The small row values the store encodes itself: the `window_shape` value and the
//! `dedupe_age` value. The larger records live with their types (`Reading` in
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
