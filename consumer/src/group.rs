//! Grouping: which group key a series' partials are merged under. No I/O.
//!
//! Without rules every series is its own group (the key as the gateway sent it). A rule is a glob
//! over the series key (`*` matches any run of characters, shortest first) and a template for the
//! group key, where `{1}`, `{2}`, ... are what the pattern's stars matched and `{series}` is the
//! whole series key. The first rule (in file order) that matches wins. A series no rule matches
//! is its own group, or (`unmatched = "dead_letter"`) is refused and its partial dead-lettered.
//!
//! Example: `match = "plant7.*.temp*"`, `key = "plant7.{1}.temperature"` merges every
//! temperature sensor of a line into one group per line.
//!
//! The glob and the template scanner are `edge_config_toml`'s, shared with the agent's
//! `[[pipeline]] sensors` and `[[sensor]] id` (a run of stars is one star; captures take the
//! shortest run first). What stays here is the consumer's own reading of a template, which
//! differs from the agent's on purpose (see `edge_config_toml::template`): names are `series` or
//! a star number (`usize` syntax), and a `}` outside a placeholder is literal text.

use edge_config_toml::{segments, Glob, Segment, Unclosed};

/// One rule: glob and template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pattern: Glob,
    template: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Capture(usize),
    Series,
}

impl Rule {
    /// Builds a rule; the reason when the template refers to a star the pattern does not have, or
    /// has an unclosed brace.
    pub fn new(pattern: &str, template: &str) -> Result<Rule, &'static str> {
        let pattern = Glob::parse(pattern).map_err(|_| "the pattern must not be empty")?;
        let mut parts = Vec::new();
        for segment in segments(template) {
            match segment.map_err(|Unclosed| "an unclosed `{` in the key template")? {
                Segment::Text(text) => parts.push(Part::Literal(text.to_owned())),
                Segment::Placeholder("series") => parts.push(Part::Series),
                Segment::Placeholder(name) => {
                    let n: usize = name
                        .parse()
                        .map_err(|_| "the key template knows only {series} and {1}, {2}, ...")?;
                    if n == 0 || n > pattern.stars() {
                        return Err("the key template names a star the pattern does not have");
                    }
                    parts.push(Part::Capture(n));
                }
            }
        }
        if parts.is_empty() {
            return Err("the key template must not be empty");
        }
        Ok(Rule {
            pattern,
            template: parts,
        })
    }

    /// The group key of `series`, when the pattern matches it.
    pub fn apply(&self, series: &str) -> Option<String> {
        let captures = self.pattern.captures(series)?;
        let mut out = String::new();
        for part in &self.template {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Series => out.push_str(series),
                Part::Capture(n) => out.push_str(captures.get(n - 1).copied().unwrap_or("")),
            }
        }
        Some(out)
    }
}

/// The configured rules.
#[derive(Debug, Clone, Default)]
pub struct Grouping {
    rules: Vec<Rule>,
    refuse_unmatched: bool,
}

impl Grouping {
    pub fn new(rules: Vec<Rule>, refuse_unmatched: bool) -> Grouping {
        Grouping {
            rules,
            refuse_unmatched,
        }
    }

    /// The group of `series`; `None` when no rule matches and unmatched series are refused.
    pub fn group(&self, series: &str) -> Option<String> {
        for rule in &self.rules {
            if let Some(key) = rule.apply(series) {
                return Some(key);
            }
        }
        (!self.refuse_unmatched).then(|| series.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_rules_each_series_is_its_own_group() {
        assert_eq!(Grouping::default().group("a.b").as_deref(), Some("a.b"));
    }

    #[test]
    fn stars_capture_into_the_template() {
        let rule = Rule::new("plant7.*.temp*", "plant7.{1}.temperature").unwrap();
        assert_eq!(
            rule.apply("plant7.line2.temp3").as_deref(),
            Some("plant7.line2.temperature")
        );
        assert_eq!(rule.apply("plant7.line2.pressure"), None);
        let site = Rule::new("*.*", "{1}").unwrap();
        assert_eq!(site.apply("siteA.x.y").as_deref(), Some("siteA"));
    }

    #[test]
    fn the_first_matching_rule_wins_and_unmatched_series_may_be_refused() {
        let g = Grouping::new(
            vec![
                Rule::new("a.*", "A").unwrap(),
                Rule::new("*", "{series}!").unwrap(),
            ],
            true,
        );
        assert_eq!(g.group("a.1").as_deref(), Some("A"));
        assert_eq!(g.group("b").as_deref(), Some("b!"));
        let strict = Grouping::new(vec![Rule::new("a.*", "A").unwrap()], true);
        assert_eq!(strict.group("b"), None);
    }

    #[test]
    fn templates_naming_missing_stars_are_refused() {
        assert!(Rule::new("a.*", "{2}").is_err());
        assert!(Rule::new("a.*", "{x}").is_err());
        assert!(Rule::new("a.*", "{1").is_err());
    }
}
