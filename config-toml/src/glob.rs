//! The one glob language: `*` matches any run of characters (possibly empty); every other
//! character, `?`, `[`, `{` and `\` included, matches itself. A run of stars is one star.
//!
//! Used for the agent's `[[pipeline]] sensors` (does a sensor id belong to the pipeline?) and the
//! consumer's `[[grouping.rule]] match` (which series key goes to which group, with what the
//! stars matched as `{1}`, `{2}`, ... of the key template).
//!
//! # Captures
//!
//! When several splits of the text fit, the captures are those where the first star takes the
//! shortest run it can, then the second, and so on (the order a backtracking matcher trying
//! shortest runs first would find them): `*.*` on `siteA.x.y` captures `siteA` and `x.y`.
//! [`Glob::captures`] finds that split without backtracking: for each star in turn it takes the
//! first place its next literal fits such that the rest still matches, which is checked by the
//! linear [`Glob::matches`] scan (leftmost fit for every middle literal, the last at the end).
//! So matching is linear and capturing quadratic in the text at worst, never exponential.
//!
//! See the crate doc for why this is not `globset`.

/// A compiled glob. Two globs that differ only in runs of stars are equal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    /// The literal before the first star.
    head: String,
    /// For each star, the literal after it (empty only after the last star).
    tails: Vec<String>,
}

impl Glob {
    /// Compiles `glob`; the only refusal is an empty one ("empty").
    pub fn parse(glob: &str) -> Result<Glob, &'static str> {
        if glob.is_empty() {
            return Err("empty");
        }
        let mut pieces = glob.split('*');
        let head = pieces.next().unwrap_or_default().to_owned();
        let mut tails: Vec<String> = Vec::new();
        for piece in pieces {
            match tails.last_mut() {
                // `**`: the star before this empty piece and the next one are one star.
                Some(last) if last.is_empty() => last.push_str(piece),
                _ => tails.push(piece.to_owned()),
            }
        }
        Ok(Glob { head, tails })
    }

    /// How many stars (runs of stars count once): the number of captures.
    pub fn stars(&self) -> usize {
        self.tails.len()
    }

    /// Whether `text` matches.
    pub fn matches(&self, text: &str) -> bool {
        text.strip_prefix(self.head.as_str())
            .is_some_and(|rest| tails_match(&self.tails, rest))
    }

    /// What each star matched, when `text` matches (see the module doc for which split).
    pub fn captures<'t>(&self, text: &'t str) -> Option<Vec<&'t str>> {
        let mut rest = text.strip_prefix(self.head.as_str())?;
        if !tails_match(&self.tails, rest) {
            return None;
        }
        let mut captures = Vec::with_capacity(self.tails.len());
        for (i, literal) in self.tails.iter().enumerate() {
            let after = &self.tails[i + 1..];
            if after.is_empty() {
                // The last star: its literal ends the text (tails_match said it fits).
                captures.push(&rest[..rest.len() - literal.len()]);
                break;
            }
            let cut = rest.char_indices().map(|(at, _)| at).find(|&at| {
                rest[at..].starts_with(literal.as_str())
                    && tails_match(after, &rest[at + literal.len()..])
            })?;
            captures.push(&rest[..cut]);
            rest = &rest[cut + literal.len()..];
        }
        Some(captures)
    }
}

/// Whether `text` matches `*tails[0]*tails[1]...*tails[n-1]` (nothing when `tails` is empty).
fn tails_match(tails: &[String], text: &str) -> bool {
    let Some((last, middle)) = tails.split_last() else {
        return text.is_empty();
    };
    let mut remaining = text;
    for literal in middle {
        match remaining.find(literal.as_str()) {
            Some(i) => remaining = &remaining[i + literal.len()..],
            None => return false,
        }
    }
    remaining.ends_with(last.as_str())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn stars_match_any_run_and_everything_else_itself() {
        let g = Glob::parse("plant.*.temp*").unwrap();
        assert!(g.matches("plant.a.temp"));
        assert!(g.matches("plant.a.b.temp2"));
        assert!(!g.matches("plant.temp"));
        assert!(!g.matches("xplant.a.temp"));
        assert!(Glob::parse("*").unwrap().matches(""));
        assert!(!Glob::parse("ab*ba").unwrap().matches("aba"));
        assert!(Glob::parse("a?[b]{c}\\").unwrap().matches("a?[b]{c}\\"));
        assert!(!Glob::parse("a?").unwrap().matches("ab"));
        assert_eq!(Glob::parse(""), Err("empty"));
    }

    #[test]
    fn captures_take_the_shortest_run_first() {
        let site = Glob::parse("*.*").unwrap();
        assert_eq!(site.captures("siteA.x.y"), Some(vec!["siteA", "x.y"]));
        let g = Glob::parse("plant7.*.temp*").unwrap();
        assert_eq!(g.captures("plant7.line2.temp3"), Some(vec!["line2", "3"]));
        assert_eq!(g.captures("plant7.line2.pressure"), None);
        assert_eq!(Glob::parse("a**b").unwrap().stars(), 1);
        assert_eq!(
            Glob::parse("a**b").unwrap().captures("axyb"),
            Some(vec!["xy"])
        );
        assert_eq!(Glob::parse("é*").unwrap().captures("éü"), Some(vec!["ü"]));
        assert_eq!(
            Glob::parse("*aa*").unwrap().captures("aaa"),
            Some(vec!["", "a"])
        );
    }

    /// The consumer's matcher before the fold: backtracking, shortest run first. The model the
    /// new one must agree with.
    fn model<'a>(pieces: &[Option<&str>], text: &'a str, captures: &mut Vec<&'a str>) -> bool {
        match pieces.split_first() {
            None => text.is_empty(),
            Some((Some(l), rest)) => text.starts_with(l) && model(rest, &text[l.len()..], captures),
            Some((None, rest)) => {
                for cut in text.char_indices().map(|(i, _)| i).chain([text.len()]) {
                    captures.push(&text[..cut]);
                    if model(rest, &text[cut..], captures) {
                        return true;
                    }
                    captures.pop();
                }
                false
            }
        }
    }

    fn model_pieces(pattern: &str) -> Vec<Option<&str>> {
        let mut pieces = Vec::new();
        for (i, literal) in pattern.split('*').enumerate() {
            if i > 0 && pieces.last() != Some(&None) {
                pieces.push(None);
            }
            if !literal.is_empty() {
                pieces.push(Some(literal));
            }
        }
        pieces
    }

    proptest! {
        #[test]
        fn captures_agree_with_the_backtracking_model(
            pattern in "[ab.*é]{1,8}",
            text in "[ab.é]{0,12}",
        ) {
            let glob = Glob::parse(&pattern).unwrap();
            let mut expected = Vec::new();
            let matched = model(&model_pieces(&pattern), &text, &mut expected);
            prop_assert_eq!(glob.matches(&text), matched);
            prop_assert_eq!(glob.captures(&text), matched.then_some(expected));
        }
    }
}
