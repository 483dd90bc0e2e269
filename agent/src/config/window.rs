//! `[pipeline.window]`: a pipeline's event-time windows (see [`crate::window`] for what each key
//! does). A pipeline without this table passes its readings through unchanged.
//!
//! Rules checked by [`validate_window`]: `size_ms` in `1..=MAX_SPAN_MS`; `kind = "tumbling"`
//! takes no `slide_ms`; `kind = "hopping"` needs `slide_ms` with `size_ms` a multiple of it and
//! at most [`MAX_WINDOWS_PER_READING`] windows per reading; every duration at most
//! [`MAX_SPAN_MS`]; `idle_timeout_ms >= 1`; `revision_horizon_ms` only with `revisions = true`;
//! `max_open_windows >= 1`; and `agent.id` fits the partial envelope (64 bytes).

use serde::Deserialize;
use toml::Spanned;

use super::Invalid;
use crate::window::{Grouping, LatePolicy, WindowSpec};

/// Longest window, lateness, idle timeout or horizon: 366 days.
pub const MAX_SPAN_MS: u64 = 366 * 24 * 3600 * 1000;
/// Most windows one reading may belong to (`size_ms / slide_ms`).
pub const MAX_WINDOWS_PER_READING: u64 = 1000;
/// Default `max_open_windows` (about 4.3 KiB of memory each at most; see `window`).
pub const DEFAULT_MAX_OPEN_WINDOWS: usize = 10_000;
/// Default `revision_horizon_ms` when `revisions = true`: one hour.
pub const DEFAULT_REVISION_HORIZON_MS: u64 = 3600 * 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowKind {
    Tumbling,
    Hopping,
}

/// `[pipeline.window]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowConfig {
    pub kind: Spanned<WindowKind>,
    pub size_ms: Spanned<u64>,
    /// Hopping only.
    pub slide_ms: Option<Spanned<u64>>,
    /// Default 0.
    pub allowed_lateness_ms: Option<Spanned<u64>>,
    /// Default `size_ms + allowed_lateness_ms`.
    pub idle_timeout_ms: Option<Spanned<u64>>,
    /// Default `forward`.
    #[serde(default = "default_late")]
    pub late: LatePolicy,
    #[serde(default)]
    pub revisions: bool,
    /// Default one hour when `revisions = true`.
    pub revision_horizon_ms: Option<Spanned<u64>>,
    /// Default `DEFAULT_MAX_OPEN_WINDOWS` (10,000).
    pub max_open_windows: Option<Spanned<usize>>,
    #[serde(default)]
    pub group_by: Grouping,
}

fn default_late() -> LatePolicy {
    LatePolicy::Forward
}

type Failure = (std::ops::Range<usize>, Invalid);

fn bad<T>(value: &Spanned<T>, field: &'static str, reason: &'static str) -> Failure {
    (value.span(), Invalid::BadWindow { field, reason })
}

fn get<T: Copy>(value: &Option<Spanned<T>>, default: T) -> T {
    value.as_ref().map_or(default, |v| *v.get_ref())
}

/// Checks the rules of the module doc; `agent_id` is `[agent] id`.
pub fn validate_window(w: &WindowConfig, agent_id: &Spanned<String>) -> Result<(), Failure> {
    let size = *w.size_ms.get_ref();
    if size == 0 || size > MAX_SPAN_MS {
        return Err(bad(&w.size_ms, "size_ms", "must be 1 ms to 366 days"));
    }
    match (w.kind.get_ref(), &w.slide_ms) {
        (WindowKind::Tumbling, Some(slide)) => {
            return Err(bad(slide, "slide_ms", "is for `kind = \"hopping\"` only"));
        }
        (WindowKind::Hopping, None) => {
            return Err(bad(
                &w.kind,
                "slide_ms",
                "`kind = \"hopping\"` needs `slide_ms`",
            ));
        }
        (WindowKind::Hopping, Some(slide)) => {
            let s = *slide.get_ref();
            if s == 0 || s > size || size % s != 0 {
                return Err(bad(slide, "slide_ms", "must divide `size_ms` evenly"));
            }
            if size / s > MAX_WINDOWS_PER_READING {
                return Err(bad(slide, "slide_ms", "at most 1000 windows per reading"));
            }
        }
        (WindowKind::Tumbling, None) => {}
    }
    for (value, field) in [
        (&w.allowed_lateness_ms, "allowed_lateness_ms"),
        (&w.idle_timeout_ms, "idle_timeout_ms"),
        (&w.revision_horizon_ms, "revision_horizon_ms"),
    ] {
        if let Some(v) = value.as_ref().filter(|v| *v.get_ref() > MAX_SPAN_MS) {
            return Err(bad(v, field, "must be at most 366 days"));
        }
    }
    if let Some(idle) = w.idle_timeout_ms.as_ref().filter(|v| *v.get_ref() == 0) {
        return Err(bad(idle, "idle_timeout_ms", "must be at least 1"));
    }
    if let Some(h) = w.revision_horizon_ms.as_ref().filter(|_| !w.revisions) {
        return Err(bad(h, "revision_horizon_ms", "needs `revisions = true`"));
    }
    if let Some(cap) = w.max_open_windows.as_ref().filter(|v| *v.get_ref() == 0) {
        return Err(bad(cap, "max_open_windows", "must be at least 1"));
    }
    if agent_id.get_ref().len() > edge_protocol::partial::MAX_AGENT_LEN {
        return Err(bad(
            agent_id,
            "agent.id",
            "must be at most 64 bytes for windowed pipelines",
        ));
    }
    Ok(())
}

impl WindowConfig {
    /// The machine's spec, defaults filled in. Valid once [`validate_window`] passed.
    pub fn spec(&self) -> WindowSpec {
        let size = *self.size_ms.get_ref();
        let slide = get(&self.slide_ms, size);
        let lateness = get(&self.allowed_lateness_ms, 0);
        let ms = |v: u64| i64::try_from(v.min(MAX_SPAN_MS)).unwrap_or(i64::MAX);
        WindowSpec {
            size_ms: ms(size),
            slide_ms: ms(slide),
            allowed_lateness_ms: ms(lateness),
            idle_timeout_ms: get(&self.idle_timeout_ms, size.saturating_add(lateness)).max(1),
            late: self.late,
            revision_horizon_ms: self
                .revisions
                .then(|| ms(get(&self.revision_horizon_ms, DEFAULT_REVISION_HORIZON_MS))),
            max_open_windows: get(&self.max_open_windows, DEFAULT_MAX_OPEN_WINDOWS),
            group_by: self.group_by,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::fixtures::with_agent;
    use crate::config::{Config, ConfigError, Invalid};

    fn parse(window: &str) -> Result<Config, ConfigError> {
        let pipeline = "\n[[pipeline]]\nname = \"p\"\nsensors = [\"*\"]\n[pipeline.window]\n";
        Config::from_toml(
            Path::new("a.toml"),
            &with_agent(&format!("{pipeline}{window}")),
        )
    }

    #[test]
    fn a_hopping_window_gets_its_defaults() {
        let config = parse("kind = \"hopping\"\nsize_ms = 10000\nslide_ms = 5000\nallowed_lateness_ms = 2000\nrevisions = true\n").unwrap();
        let spec = config.pipeline[0].window.as_ref().unwrap().spec();
        assert_eq!(
            (spec.size_ms, spec.slide_ms, spec.allowed_lateness_ms),
            (10_000, 5_000, 2_000)
        );
        assert_eq!(spec.idle_timeout_ms, 12_000);
        assert_eq!(spec.revision_horizon_ms, Some(3_600_000));
        assert_eq!(spec.max_open_windows, 10_000);
    }

    #[test]
    fn bad_window_values_are_refused_with_their_line_and_field() {
        for (window, field) in [
            ("kind = \"tumbling\"\nsize_ms = 0\n", "size_ms"),
            (
                "kind = \"tumbling\"\nsize_ms = 10\nslide_ms = 5\n",
                "slide_ms",
            ),
            ("kind = \"hopping\"\nsize_ms = 10\n", "slide_ms"),
            (
                "kind = \"hopping\"\nsize_ms = 10\nslide_ms = 3\n",
                "slide_ms",
            ),
            (
                "kind = \"tumbling\"\nsize_ms = 10\nidle_timeout_ms = 0\n",
                "idle_timeout_ms",
            ),
            (
                "kind = \"tumbling\"\nsize_ms = 10\nrevision_horizon_ms = 5\n",
                "revision_horizon_ms",
            ),
            (
                "kind = \"tumbling\"\nsize_ms = 10\nmax_open_windows = 0\n",
                "max_open_windows",
            ),
        ] {
            let error = parse(window).expect_err(window);
            assert!(
                matches!(error.problem(), Some(Invalid::BadWindow { field: f, .. }) if *f == field),
                "{window}: {error}"
            );
            let at = error.location().expect("a place");
            assert!(at.line >= 9, "{error}");
        }
    }

    #[test]
    fn unknown_window_keys_and_values_are_syntax_errors() {
        for window in [
            "kind = \"sliding\"\nsize_ms = 10\n",
            "kind = \"tumbling\"\nsize_ms = 10\nlate = \"keep\"\n",
            "kind = \"tumbling\"\nsize = 10\n",
        ] {
            assert!(
                matches!(parse(window), Err(ConfigError::Syntax { .. })),
                "{window}"
            );
        }
    }
}
