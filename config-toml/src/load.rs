//! Reading a configuration file and parsing it into the service's typed configuration, with a
//! syntax error located in the file.
//!
//! A "syntax" error is everything toml and serde refuse: bad TOML, a wrong type, an unknown key
//! (`deny_unknown_fields`), a missing key or an unknown enum value; toml's message names the keys
//! or values allowed. Rules between fields are the services' own (their `validate`), located with
//! [`Location::of`] on the span they keep in [`toml::Spanned`] fields.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use crate::Location;

/// Why a file did not become a configuration value. Both are fatal at start: retrying cannot
/// help. Each service maps them onto its own error enum, which words the message.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}:{}:{}: {}", path.display(), at.line, at.column, source.message())]
    Syntax {
        path: PathBuf,
        at: Location,
        #[source]
        source: Box<toml::de::Error>,
    },
}

/// The file's text.
pub fn read(path: &Path) -> Result<String, LoadError> {
    std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.to_owned(),
        source,
    })
}

/// `text` parsed as a `T`; `path` only names the file in the error. An error without a span
/// (rare: toml gives one for nearly everything) is located at the start of the file.
pub fn parse<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T, LoadError> {
    toml::from_str(text).map_err(|source: toml::de::Error| LoadError::Syntax {
        path: path.to_owned(),
        at: Location::of(text, source.span().map_or(0, |s| s.start)),
        source: Box::new(source),
    })
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Small {
        a: u8,
    }

    #[test]
    fn an_unknown_key_is_located_at_its_line_with_tomls_message() {
        let Err(LoadError::Syntax { at, source, .. }) =
            parse::<Small>(Path::new("x.toml"), "a = 1\nb = 2\n")
        else {
            panic!("accepted");
        };
        assert_eq!((at.line, at.column, at.key.as_deref()), (2, 1, Some("b")));
        assert_eq!(source.message(), "unknown field `b`, expected `a`");
    }

    #[test]
    fn a_missing_file_is_a_read_error_naming_it() {
        let error = read(Path::new("/nonexistent/x.toml")).unwrap_err();
        assert!(matches!(error, LoadError::Read { .. }));
        assert!(error
            .to_string()
            .starts_with("/nonexistent/x.toml: cannot read: "));
    }
}
