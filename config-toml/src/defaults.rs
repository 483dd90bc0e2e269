//! Defaults for `#[serde(default = "...")]` on fields that keep their span.
//!
//! A field that is validated keeps its place in the file as a [`Spanned`], so an error can name
//! the line. A default has no place: it gets the empty span `0..0` (a default that breaks a
//! rule is a bug, not an operator's mistake). serde's `default = "path"` takes a path, and a
//! path may carry const generics, so one function per type serves every constant:
//!
//! ```
//! # use serde::Deserialize;
//! # use toml::Spanned;
//! #[derive(Deserialize)]
//! struct Kafka {
//!     /// Default 60,000.
//!     #[serde(default = "edge_config_toml::defaults::u64::<60_000>")]
//!     transaction_timeout_ms: Spanned<u64>,
//!     #[serde(default = "edge_config_toml::default_true")]
//!     create_topics: bool,
//! }
//! let kafka: Kafka = toml::from_str("").unwrap();
//! assert_eq!((*kafka.transaction_timeout_ms.get_ref(), kafka.create_topics), (60_000, true));
//! assert_eq!(kafka.transaction_timeout_ms.span(), 0..0);
//! ```

use toml::Spanned;

/// `value` with the empty span of a default.
pub fn unspanned<T>(value: T) -> Spanned<T> {
    Spanned::new(0..0, value)
}

/// `true` (serde's own default for `bool` is `false`).
pub fn default_true() -> bool {
    true
}

/// A spanned `u8` default.
pub fn u8<const N: u8>() -> Spanned<u8> {
    unspanned(N)
}

/// A spanned `u64` default.
pub fn u64<const N: u64>() -> Spanned<u64> {
    unspanned(N)
}

/// A spanned `usize` default.
pub fn usize<const N: usize>() -> Spanned<usize> {
    unspanned(N)
}

/// A spanned `i64` default.
pub fn i64<const N: i64>() -> Spanned<i64> {
    unspanned(N)
}

/// Defaults of fields that are not spanned (nothing validates them).
pub mod plain {
    /// A `u32` default.
    pub fn u32<const N: u32>() -> u32 {
        N
    }

    /// A `u64` default.
    pub fn u64<const N: u64>() -> u64 {
        N
    }
}
