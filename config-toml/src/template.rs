//! The one template language: literal text with `{name}` placeholders.
//!
//! Used for the agent's `[[sensor]] id` (`"{site}.{device}.temp"`, names from topic captures,
//! the payload and the source) and the consumer's `[[grouping.rule]] key` (`"plant7.{1}"`,
//! names are `series` and the star numbers of the glob).
//!
//! [`segments`] is the shared scanner: a placeholder runs from a `{` to the next `}` (its name
//! is what lies between, judged by the caller); text outside placeholders is passed on as it
//! is; a `{` without a later `}` is [`Unclosed`]. It yields in order, so a caller that refuses
//! the first bad name refuses it before a later unclosed brace, as both services always did.
//!
//! # Where the two services differ (kept as it was)
//!
//! - The agent's [`Template::parse`] refuses a `}` outside a placeholder and names outside
//!   `[A-Za-z0-9_]`; it renders by looking names up.
//! - The consumer accepts a stray `}` as text and resolves names itself (`series`, or a number
//!   that `usize` parses: `{1}`, `{01}`, `{+1}`), so it builds its own parts from [`segments`].

/// A piece of a template, borrowed from its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment<'a> {
    Text(&'a str),
    /// The name between `{` and `}` (may be empty or hold anything but `}`).
    Placeholder(&'a str),
}

/// A `{` with no `}` after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unclosed;

/// The segments of `template`, in order; after an [`Unclosed`] it yields nothing more.
pub fn segments(template: &str) -> Segments<'_> {
    Segments {
        rest: template,
        queued: None,
    }
}

/// The iterator of [`segments`].
#[derive(Debug, Clone)]
pub struct Segments<'a> {
    rest: &'a str,
    /// The placeholder (or error) after a text segment that was yielded first.
    queued: Option<Result<Segment<'a>, Unclosed>>,
}

impl<'a> Iterator for Segments<'a> {
    type Item = Result<Segment<'a>, Unclosed>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(queued) = self.queued.take() {
            return Some(queued);
        }
        if self.rest.is_empty() {
            return None;
        }
        let text = self.rest;
        let Some(open) = text.find('{') else {
            self.rest = "";
            return Some(Ok(Segment::Text(text)));
        };
        let after = &text[open + 1..];
        let brace = match after.find('}') {
            Some(close) => {
                self.rest = &after[close + 1..];
                Ok(Segment::Placeholder(&after[..close]))
            }
            None => {
                self.rest = "";
                Err(Unclosed)
            }
        };
        if open == 0 {
            return Some(brace);
        }
        self.queued = Some(brace);
        Some(Ok(Segment::Text(&text[..open])))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Var(String),
}

/// A compiled template with the agent's rules (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

/// `[A-Za-z0-9_]+`: the names of the agent's placeholders and topic captures.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl Template {
    /// Compiles `template`; the reason when it is empty, has a `}` outside a placeholder, an
    /// unclosed `{` or a name outside `[A-Za-z0-9_]`.
    pub fn parse(template: &str) -> Result<Template, &'static str> {
        if template.is_empty() {
            return Err("empty");
        }
        let mut parts = Vec::new();
        for segment in segments(template) {
            match segment.map_err(|Unclosed| "`{` without `}`")? {
                Segment::Text(text) if text.contains('}') => return Err("`}` without `{`"),
                Segment::Text(text) => parts.push(Part::Text(text.to_owned())),
                Segment::Placeholder(name) if !valid_name(name) => {
                    return Err("a placeholder is `{name}` with name in [A-Za-z0-9_]")
                }
                Segment::Placeholder(name) => parts.push(Part::Var(name.to_owned())),
            }
        }
        Ok(Template { parts })
    }

    /// The placeholder names, in order.
    pub fn placeholders(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Var(name) => Some(name.as_str()),
            Part::Text(_) => None,
        })
    }

    /// Fills the placeholders; the name of the first one `lookup` cannot supply is the error.
    pub fn render(&self, lookup: impl Fn(&str) -> Option<String>) -> Result<String, &str> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Var(name) => out.push_str(&lookup(name).ok_or(name.as_str())?),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(template: &str) -> Vec<Result<Segment<'_>, Unclosed>> {
        segments(template).collect()
    }

    #[test]
    fn segments_split_text_and_placeholders_in_order() {
        use Segment::*;
        assert_eq!(
            scan("a{b}c{}{d}"),
            [
                Ok(Text("a")),
                Ok(Placeholder("b")),
                Ok(Text("c")),
                Ok(Placeholder("")),
                Ok(Placeholder("d"))
            ]
        );
        assert_eq!(scan("x}{a{b}"), [Ok(Text("x}")), Ok(Placeholder("a{b"))]);
        assert_eq!(scan("{x}{1"), [Ok(Placeholder("x")), Err(Unclosed)]);
        assert_eq!(scan("ab{1"), [Ok(Text("ab")), Err(Unclosed)]);
        assert_eq!(scan(""), []);
    }

    #[test]
    fn the_agents_rules_refuse_stray_braces_and_bad_names() {
        for (bad, reason) in [
            ("", "empty"),
            ("{", "`{` without `}`"),
            ("}", "`}` without `{`"),
            ("a{b", "`{` without `}`"),
            (
                "{a-b}",
                "a placeholder is `{name}` with name in [A-Za-z0-9_]",
            ),
            ("{}", "a placeholder is `{name}` with name in [A-Za-z0-9_]"),
            ("a}{b}", "`}` without `{`"),
            (
                "{a-b}{",
                "a placeholder is `{name}` with name in [A-Za-z0-9_]",
            ),
        ] {
            assert_eq!(Template::parse(bad), Err(reason), "{bad}");
        }
    }

    #[test]
    fn templates_render_placeholders_and_name_the_missing_one() {
        let t = Template::parse("x.{a}.{b}").unwrap();
        assert_eq!(t.placeholders().collect::<Vec<_>>(), ["a", "b"]);
        let lookup = |n: &str| (n == "a").then(|| "1".to_owned());
        assert_eq!(t.render(lookup), Err("b"));
        assert_eq!(t.render(|n: &str| Some(n.to_uppercase())).unwrap(), "x.A.B");
    }
}
