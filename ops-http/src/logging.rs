//! The services' log setup, one for both binaries: `--log-format human|json` on stderr, the
//! level from `RUST_LOG` (default `info`).
//!
//! - `human`: one line per event; colours only when stderr is a terminal (journald and log
//!   files get none).
//! - `json`: one JSON object per line (tracing-subscriber's format: `timestamp`, `level`,
//!   `fields` with `message`, `target`), for a log shipper.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// The `--log-format` values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One line per event; colours only when stderr is a terminal (journald gets none).
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// Installs the global subscriber: `format` on stderr, filtered by `RUST_LOG` (else `info`).
/// Call once, first thing in `main`; a second call panics (tracing allows one global default).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs.json().init(),
    }
}
