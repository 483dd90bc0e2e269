//! SIGHUP reload of the grouping rules: what a reload may change ([`check`], no I/O), and the
//! slot ([`Rules`]) through which the loop picks up new rules between transactions.
//!
//! # What a reload applies
//!
//! Only `[grouping]` (its rules and `unmatched`). Every other table needs a restart, and a file
//! that changes one is refused whole (the running configuration is kept):
//!
//! | table | why it needs a restart |
//! | --- | --- |
//! | `[kafka]` | the clients, the static member id and the `transactional.id` are made when a session starts; a new id would leave the old producer unfenced |
//! | `[topics]` | the subscription, the outputs and the changelog a partition is restored from belong to the running session |
//! | `[window]`, `[revisions]`, `[limits]` | each partition's merge state machine is built with them when it is restored from the changelog; a restart restores it under the new settings |
//! | `[ops]` | the listener is bound at start |
//!
//! Values are compared, not text: comments, order and whitespace may change freely.
//!
//! # When new rules take effect, and for what
//!
//! The supervisor ([`crate::ops::supervise`]) validates the file ([`Config::load`]: a bad file
//! is refused with its file, line and field) and [`Rules::publish`]es the new grouping. The loop
//! ([`crate::run`]) checks the slot at the top of each iteration, before it polls the next batch
//! (never while a batch is merged or a transaction is open), so a batch is merged under one
//! grouping, and every partial merged after the check is grouped by the new rules. A session
//! that starts later (after a session error) takes the newest rules before its first batch, so
//! a batch aborted under the new rules is merged under them again, never under the old ones.
//!
//! Windows already open under the old grouping keep their old group key: they receive no more
//! partials from the series that moved (unless the old key is still some rule's result) and are
//! finalized as before, when the watermarks of their sources (which the moved series keep
//! advancing) pass their end, or when their sources go idle. Final windows of the old grouping
//! are revised under their old key only if a partial still maps to it. The changelog holds state
//! by group key, so a restart (which reads the same file) continues exactly where the reload
//! left off.
//!
//! Known limit (in [`crate::merge`]): a source (agent x series) stays registered under the
//! group of its first partial. After a reload moves a series to a new group, the new group has
//! no registered source, so each of its windows is final with its first partial and the
//! others' partials revise it (`revision` > 0). Every final's newest revision is exact; only the
//! first emission comes early. A restart with a changed grouping does the same (the changelog
//! restores the sources with their old group).
//!
//! Every instance of a group must run the same rules: reload them all (a partition that moves
//! in a rebalance is merged under its new owner's rules).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::config::{Config, ConfigError};
use crate::group::Grouping;

/// Why a SIGHUP did not apply the file.
#[derive(Debug, thiserror::Error)]
pub enum ReloadRefused {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Secret(String),
    #[error(
        "{file}: the file changes [{table}], which a reload cannot apply ({why}); only \
         [grouping] reloads: restart the consumer for the rest"
    )]
    NeedsRestart {
        file: String,
        table: &'static str,
        why: &'static str,
    },
}

/// Reads and validates `path`, and checks that it changes only what a reload applies.
pub fn load(path: &Path, running: &Config) -> Result<Config, ReloadRefused> {
    let mut new = Config::load(path)?;
    new.load_secrets().map_err(ReloadRefused::Secret)?;
    check(running, &new).map_err(|(table, why)| ReloadRefused::NeedsRestart {
        file: path.display().to_string(),
        table,
        why,
    })?;
    Ok(new)
}

/// The first table other than `[grouping]` that `new` changes, with why it needs a restart.
pub fn check(running: &Config, new: &Config) -> Result<(), (&'static str, &'static str)> {
    let clients = "the clients and the transactional.id are made at the start of a session";
    let merge = "each partition's merge state is built with it when it is restored";
    let changed = [
        (running.kafka != new.kafka, "kafka", clients),
        (
            running.topics != new.topics,
            "topics",
            "the subscription and the output topics belong to the running session",
        ),
        (running.window != new.window, "window", merge),
        (running.revisions != new.revisions, "revisions", merge),
        (running.limits != new.limits, "limits", merge),
        (
            running.ops != new.ops,
            "ops",
            "the listener is bound at start",
        ),
    ];
    match changed.into_iter().find(|(changed, _, _)| *changed) {
        Some((_, table, why)) => Err((table, why)),
        None => Ok(()),
    }
}

/// The grouping rules the loop merges under, as reloads replace them, and the reload counters.
/// Lives in [`crate::telemetry::Metrics`] (shared by the loop, the supervisor and `/metrics`).
#[derive(Debug, Default)]
pub struct Rules {
    /// Reloads applied (published to the loop).
    pub reloads: AtomicU64,
    /// Reloads refused: a bad file, or one changing more than `[grouping]`.
    pub failures: AtomicU64,
    /// The generation of the newest published rules (0: the file read at start).
    generation: AtomicU64,
    /// The newest published rules, with their generation.
    published: Mutex<Option<(u64, Grouping)>>,
    /// The generation the loop took last (it merges under it from its next batch on).
    taken: AtomicU64,
}

impl Rules {
    /// Hands `grouping` to the loop; returns its generation (see [`Rules::taken`]).
    pub fn publish(&self, grouping: Grouping) -> u64 {
        let mut published = self.published.lock().unwrap_or_else(|p| p.into_inner());
        let generation = self.generation.load(Ordering::Relaxed) + 1;
        *published = Some((generation, grouping));
        self.generation.store(generation, Ordering::Release);
        self.reloads.fetch_add(1, Ordering::Relaxed);
        generation
    }

    /// The loop's check between transactions: the newest rules, when they are newer than
    /// `seen` (the generation this session merges under; 0 when it started), and `seen`
    /// advanced. One atomic load when nothing changed.
    pub fn newer(&self, seen: &mut u64) -> Option<Grouping> {
        if self.generation.load(Ordering::Acquire) == *seen {
            return None;
        }
        let published = self.published.lock().unwrap_or_else(|p| p.into_inner());
        let (generation, grouping) = published.as_ref()?;
        *seen = *generation;
        self.taken.fetch_max(*generation, Ordering::Relaxed);
        Some(grouping.clone())
    }

    /// The newest generation the loop has taken: at least a [`Rules::publish`]'s return value
    /// once every batch merged from then on uses those rules.
    pub fn taken(&self) -> u64 {
        self.taken.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::MINIMAL;

    fn config(text: &str) -> Config {
        Config::parse(Path::new("c.toml"), text).unwrap_or_else(|e| panic!("{e}"))
    }

    const RULE: &str = "[[grouping.rule]]\nmatch = \"plant.*\"\nkey = \"plant.all\"\n";

    #[test]
    fn a_file_changing_only_grouping_comments_or_order_is_accepted() {
        let running = config(MINIMAL);
        assert_eq!(
            check(&running, &config(&format!("{MINIMAL}{RULE}"))),
            Ok(())
        );
        let unmatched = format!("{MINIMAL}[grouping]\nunmatched = \"dead_letter\"\n");
        assert_eq!(check(&running, &config(&unmatched)), Ok(()));
        // Same values, other lines: spans differ, values do not.
        let moved = format!("# a comment\n\n{MINIMAL}")
            .replace("group_id = \"g\"\n", "")
            .replace("[kafka]\n", "[kafka]\ngroup_id = \"g\"\n");
        assert_eq!(check(&running, &config(&moved)), Ok(()));
        // Defaults written out are the same values.
        let explicit = format!("{MINIMAL}[window]\nidle_timeout_ms = 300000\n");
        assert_eq!(check(&running, &config(&explicit)), Ok(()));
    }

    #[test]
    fn a_file_changing_any_other_table_is_refused_naming_it() {
        let running = config(MINIMAL);
        for (text, table) in [
            (
                MINIMAL.replace("group_id = \"g\"", "group_id = \"h\""),
                "kafka",
            ),
            (
                MINIMAL.replace(
                    "[topics]",
                    "[kafka.client]\n\"linger.ms\" = \"5\"\n[topics]",
                ),
                "kafka",
            ),
            (
                MINIMAL.replace("finals = \"out\"", "finals = \"out2\""),
                "topics",
            ),
            (format!("{MINIMAL}[window]\nrollup_ms = 60000\n"), "window"),
            (
                format!("{MINIMAL}[revisions]\nenabled = false\n"),
                "revisions",
            ),
            (format!("{MINIMAL}[limits]\nbatch_max_ms = 100\n"), "limits"),
            (format!("{MINIMAL}[ops]\nmetrics = false\n"), "ops"),
        ] {
            let (got, why) = check(&running, &config(&text)).expect_err(table);
            assert_eq!(got, table, "{text}");
            assert!(!why.is_empty());
        }
        // With a grouping change beside it, still refused whole.
        let both = format!("{MINIMAL}{RULE}[ops]\nmetrics = false\n");
        assert_eq!(check(&running, &config(&both)).map_err(|e| e.0), Err("ops"));
    }

    #[test]
    fn load_names_the_file_and_line_of_a_bad_file_and_the_table_of_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("consumer.toml");
        std::fs::write(&path, MINIMAL).expect("write");
        let running = Config::load(&path).expect("valid");
        let bad = format!("{MINIMAL}[[grouping.rule]]\nmatch = \"a.*\"\nkey = \"{{2}}\"\n");
        std::fs::write(&path, bad).expect("write");
        let e = load(&path, &running).expect_err("bad template").to_string();
        assert_eq!(
            e,
            format!(
                "{}:13: `grouping.rule`: the key template names a star the pattern does not have",
                path.display()
            )
        );
        std::fs::write(&path, format!("{MINIMAL}[window]\nidle_timeout = 5\n")).expect("write");
        let e = load(&path, &running).expect_err("unknown key").to_string();
        assert!(e.starts_with(&format!("{}:12:", path.display())), "{e}");
        std::fs::write(&path, format!("{MINIMAL}{RULE}[limits]\nmax_sources = 9\n")).expect("w");
        let e = load(&path, &running).expect_err("limits").to_string();
        assert!(
            e.starts_with(&format!("{}: the file changes [limits]", path.display())),
            "{e}"
        );
        std::fs::write(&path, format!("{MINIMAL}{RULE}")).expect("write");
        let new = load(&path, &running).expect("grouping reloads");
        assert_eq!(
            new.grouping().group("plant.t1").as_deref(),
            Some("plant.all")
        );
    }

    #[test]
    fn the_loop_takes_published_rules_once_and_a_new_session_takes_the_newest() {
        let rules = Rules::default();
        let mut seen = 0;
        assert!(rules.newer(&mut seen).is_none(), "nothing published");
        let all = Grouping::new(
            vec![crate::group::Rule::new("plant.*", "plant.all").unwrap()],
            false,
        );
        let first = rules.publish(all.clone());
        assert_eq!(rules.taken(), 0, "not taken until the loop looks");
        let got = rules.newer(&mut seen).expect("newer");
        assert_eq!(got.group("plant.t1").as_deref(), Some("plant.all"));
        assert_eq!((seen, rules.taken()), (first, first));
        assert!(rules.newer(&mut seen).is_none(), "taken once");
        let second = rules.publish(Grouping::default());
        rules.publish(all);
        // A session that starts now (seen = 0) skips straight to the newest.
        let mut fresh = 0;
        let got = rules.newer(&mut fresh).expect("newest");
        assert_eq!(got.group("plant.t1").as_deref(), Some("plant.all"));
        assert_eq!(fresh, second + 1);
        assert_eq!(rules.reloads.load(Ordering::Relaxed), 3);
    }
}
