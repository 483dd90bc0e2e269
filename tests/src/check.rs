//! Assertions the suites' accounting shares.

use std::fmt::Debug;

/// Fails with `what` and the first 20 of `items` unless `items` is empty (readings missing,
/// delivered twice, unexpected, ...).
#[track_caller]
pub fn assert_none<T: Debug>(what: &str, items: &[T]) {
    assert!(
        items.is_empty(),
        "{what} (first 20 of {}): {:?}",
        items.len(),
        &items[..items.len().min(20)]
    );
}
