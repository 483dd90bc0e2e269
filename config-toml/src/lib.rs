//! What the agent's and the consumer's TOML configurations share, so both locate an error the
//! same way and speak one pattern language.
//!
//! # Map
//!
//! | module | holds |
//! | --- | --- |
//! | [`location`] | [`Location`]: a byte offset of the file as line, column, `[table]` and key |
//! | [`load`] | [`read`] and [`parse`]: the file as text, the text as a typed value, a syntax error located ([`LoadError`]) |
//! | [`defaults`] | `#[serde(default = "...")]` helpers for [`toml::Spanned`] fields with a constant default |
//! | [`glob`] | [`Glob`]: `*` matches any run of characters; captures, shortest run first |
//! | [`template`] | [`Template`] and [`segments`]: literal text with `{name}` placeholders |
//! | [`secret`] | [`secret::check_private`]: a secret file (password, key, token) that every user may read is refused |
//!
//! Each service keeps its own error enum and its own messages (they are pinned by tests and read
//! by operators): this crate gives them the parts, not the wording. The one exception is
//! [`secret`]: a secret file readable by every user is refused in the same words wherever it is
//! named (`[kafka.security]`, an MQTT source, `[ops] token_file`).
//!
//! # Why no `globset`
//!
//! `globset` was considered for [`Glob`] and not taken: it has no captures (the consumer's
//! grouping rules need `{1}`, `{2}`, ...), and its syntax gives `?`, `[...]`, `{a,b}` and `\`
//! a meaning, so a sensor id or series key holding one of them would match differently from
//! today. Escaping them first would leave `globset` doing what the thirty lines of [`glob`]
//! do, at the price of a regex engine in the gateway binary.

pub mod defaults;
pub mod glob;
pub mod load;
pub mod location;
pub mod secret;
pub mod template;

pub use defaults::{default_true, unspanned};
pub use glob::Glob;
pub use load::{parse, read, LoadError};
pub use location::Location;
pub use template::{segments, valid_name, Segment, Template, Unclosed};
