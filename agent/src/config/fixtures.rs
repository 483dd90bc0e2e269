//! Configurations for unit tests, so each test module does not write its own `[agent]` table
//! and parse boilerplate.
//!
//! - [`AGENT`]: the `[agent]` table alone (`id = "gw"`), the start of most test configurations;
//!   [`with_agent`] puts it before a test's own sections.
//! - [`MINIMAL`]: one MQTT source, one subscription and one sensor rule: the smallest
//!   configuration that exercises every cross-field rule of [`super::validate`].
//! - [`config`] parses and validates, panicking with the located message on a refusal.

use std::path::Path;

use super::Config;

/// The `[agent]` table every configuration needs.
pub(crate) const AGENT: &str = "[agent]\nid = \"gw\"\ndata_dir = \"/unused\"\n";

/// One MQTT source with one subscription and one sensor rule. Line numbers are pinned by the
/// config tests: append to it or replace within a line, do not insert lines.
pub(crate) const MINIMAL: &str = r#"
[agent]
id = "gw-1"
data_dir = "/tmp/edge"

[[mqtt]]
name = "broker"
url = "mqtt://127.0.0.1:1883"
client_id = "agent-gw-1"
payload = { format = "json", value = "/v", timestamp = "/ts" }
subscribe = [{ topic = "plant/+/+/temp", qos = 1 }]

[[sensor]]
source = "broker"
topic = "plant/{site}/{device}/temp"
id = "{site}.{device}.temp"
min = -40.0
max = 125.0
"#;

/// [`AGENT`] followed by `sections`.
pub(crate) fn with_agent(sections: &str) -> String {
    format!("{AGENT}{sections}")
}

/// `text` parsed and validated (named `t.toml` in errors); panics with the message otherwise.
pub(crate) fn config(text: &str) -> Config {
    Config::from_toml(Path::new("t.toml"), text).unwrap_or_else(|e| panic!("{e}"))
}

/// [`MINIMAL`], parsed.
pub(crate) fn minimal() -> Config {
    config(MINIMAL)
}
