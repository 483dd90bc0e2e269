//! The Python virtualenvs `scripts/install-deps.sh` makes in the project's cache
//! (`$EDGE_CACHE`, default `~/.cache/edge-ingest`) for the peers of the suites.

use std::path::{Path, PathBuf};

/// `<cache>/<venv>/bin/python`; panics, naming the command that makes it, when it is missing
/// (a suite never skips silently). `what` says what the virtualenv holds.
pub fn python(venv: &str, what: &str) -> PathBuf {
    let cache = std::env::var_os("EDGE_CACHE").map_or_else(
        || {
            let home = std::env::var_os("HOME").expect("HOME is set");
            Path::new(&home).join(".cache/edge-ingest")
        },
        PathBuf::from,
    );
    let python = cache.join(venv).join("bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `bash scripts/install-deps.sh` (it makes the {what} virtualenv)",
        python.display()
    );
    python
}
