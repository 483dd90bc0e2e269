//! [`StoreError`]: every redb failure, with the one rule for which of them a retry can fix.
//!
//! redb reports through seven error types (`Error`, `DatabaseError`, `TransactionError`,
//! `TableError`, `StorageError`, `CommitError`, `SetDurabilityError`); each converts into
//! `redb::Error` with the same message, so [`StoreError`] keeps that one form and the retry rule
//! needs to look at one enum. The stage errors (`IngestError`, `StageError`, `OutboxError`,
//! `ForwardError`, `InspectError`) wrap it with `#[from]` and get `?` on every redb call from
//! `redb_errors_into!`, then delegate to
//! [`StoreError::is_retryable`].

/// A failed database call.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Redb(redb::Error),
}

/// Implements `From<redb::…Error>` for an error type through [`StoreError`], so `?` works on
/// redb calls there: every redb error becomes `redb::Error` (same message) inside
/// `StoreError::Redb`. The type needs `From<StoreError>` (a `#[from] StoreError` variant); for
/// `StoreError` itself that is the identity.
macro_rules! redb_errors_into {
    ($t:ty) => {
        $crate::store::redb_errors_into!(
            @each $t: redb::Error, redb::DatabaseError, redb::TransactionError, redb::TableError,
            redb::StorageError, redb::CommitError, redb::SetDurabilityError
        );
    };
    (@each $t:ty: $($e:ty),*) => {$(
        impl From<$e> for $t {
            fn from(e: $e) -> Self {
                <$t>::from($crate::store::StoreError::Redb(e.into()))
            }
        }
    )*};
}
pub(crate) use redb_errors_into;

redb_errors_into!(StoreError);

impl StoreError {
    /// The one retry rule for the database: only I/O failures are worth retrying.
    ///
    /// - `Io` (a full disk, a flaky SD card, `EIO`) and `PreviousIo` (redb latched an earlier
    ///   I/O failure) can clear: space frees when the forwarder trims, the card recovers. A
    ///   failed commit leaves the last committed state (redb is copy-on-write), every caller
    ///   keeps its batch (and its acks) and redoes the whole transaction, so a retry repeats
    ///   nothing. After either, the handle must be reopened ([`StoreError::needs_reopen`]).
    /// - `LockPoisoned` is **not** retryable. redb returns it when one of the database's
    ///   internal locks is poisoned (std's `PoisonError`, converted in redb's `error.rs` with
    ///   the location the lock was taken): a thread panicked while holding it, in the middle of
    ///   changing that handle's in-memory state. A std lock stays poisoned for good, so every
    ///   retry on the handle fails the same way (the ingest writer used to retry it forever,
    ///   acking nothing, while it looked alive). Reopening is no way out either: the other
    ///   stages hold the same handle, and a second open fails as "already open". Fatal: the
    ///   agent stops, systemd restarts it, and the fresh process reads the last commit, which
    ///   the panic could not touch (copy-on-write).
    /// - Everything else (corruption, a database held by another process, a table of the
    ///   wrong type, an upgrade required, a value too large, a closed database) is a fact about
    ///   the file or the code that waiting will not change.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            StoreError::Redb(redb::Error::Io(_) | redb::Error::PreviousIo)
        )
    }

    /// Whether the database must be closed and opened again before a retry can succeed (redb
    /// latches an I/O failure until then).
    pub fn needs_reopen(&self) -> bool {
        self.is_retryable()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_failures_are_retried_and_a_poisoned_lock_is_not() {
        let io = StoreError::from(redb::StorageError::Io(std::io::Error::other("disk full")));
        assert!(io.is_retryable() && io.needs_reopen());
        assert!(StoreError::from(redb::StorageError::PreviousIo).is_retryable());
        let poisoned = StoreError::from(redb::StorageError::LockPoisoned(
            std::panic::Location::caller(),
        ));
        assert!(!poisoned.is_retryable());
        assert!(!StoreError::from(redb::StorageError::Corrupted("x".into())).is_retryable());
        assert!(!StoreError::from(redb::DatabaseError::DatabaseAlreadyOpen).is_retryable());
    }

    #[test]
    fn the_message_is_redbs_own() {
        let e = StoreError::from(redb::StorageError::PreviousIo);
        assert_eq!(e.to_string(), redb::Error::PreviousIo.to_string());
    }
}
