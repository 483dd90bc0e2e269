//! Where in a configuration file something is: the place both services name in their errors.
//!
//! toml reports a byte span; an operator wants "line 12, column 3, in `[[mqtt.subscribe]]`,
//! field `qos`". [`Location::of`] turns the one into the other. It reads the text only (no TOML
//! parse), so it works on files that do not parse.

use std::fmt;

/// A place in the file: 1-based line and column, and the table and key found there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub line: usize,
    /// 1-based, in characters (what an editor shows).
    pub column: usize,
    /// 1-based, in bytes. The consumer's messages have always counted bytes; they keep doing
    /// so (it differs from [`Location::column`] only after a non-ASCII character on the line).
    pub byte_column: usize,
    /// The `[table]` or `[[array]]` header the line is under, e.g. `[[mqtt.subscribe]]`.
    pub table: Option<String>,
    /// The key on that line, when the line is `key = value`.
    pub key: Option<String>,
}

impl Location {
    /// Locates byte `offset` in `text` (clamped to the text; inside a character it counts as
    /// that character's start for `column`, `table` and `key`).
    pub fn of(text: &str, offset: usize) -> Location {
        let raw = offset.min(text.len());
        let mut offset = raw;
        while !text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &text[..offset];
        // `\n` is ASCII, so no newline lies between `offset` and `raw`.
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let line = before.matches('\n').count() + 1;
        let column = before[line_start..].chars().count() + 1;
        let line_text = text[line_start..].lines().next().unwrap_or("");
        let key = line_text
            .split_once('=')
            .map(|(k, _)| k.trim())
            .filter(|k| !k.is_empty() && !k.starts_with('['))
            .map(str::to_owned);
        let table = text[..line_start]
            .lines()
            .chain(std::iter::once(line_text))
            .rfind(|l| l.trim_start().starts_with('['))
            .map(|l| l.trim().to_owned());
        Location {
            line,
            column,
            byte_column: raw - line_start + 1,
            table,
            key,
        }
    }
}

/// `line:column`, then `: in [table], field `key`` as far as they are known (the agent's form).
impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)?;
        match (&self.table, &self.key) {
            (Some(t), Some(k)) => write!(f, ": in {t}, field `{k}`"),
            (None, Some(k)) => write!(f, ": field `{k}`"),
            (Some(t), None) => write!(f, ": in {t}"),
            (None, None) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# c\n[agent]\nid = \"é-x\"\n\n[[mqtt.subscribe]]\nqos = 3\n";

    #[test]
    fn a_key_line_names_its_table_and_key() {
        let at = Location::of(TEXT, TEXT.find("3").unwrap());
        assert_eq!((at.line, at.column, at.byte_column), (6, 7, 7));
        assert_eq!(at.to_string(), "6:7: in [[mqtt.subscribe]], field `qos`");
    }

    #[test]
    fn columns_count_characters_and_byte_columns_count_bytes() {
        let at = Location::of(TEXT, TEXT.find("-x").unwrap());
        assert_eq!((at.line, at.column, at.byte_column), (3, 8, 9));
        assert_eq!(at.to_string(), "3:8: in [agent], field `id`");
    }

    #[test]
    fn a_header_line_names_itself_and_the_start_names_nothing() {
        let at = Location::of(TEXT, TEXT.find("[agent]").unwrap() + 1);
        assert_eq!(at.to_string(), "2:2: in [agent]");
        assert_eq!(Location::of(TEXT, 0).to_string(), "1:1");
        assert_eq!(Location::of("a = 1", 4).to_string(), "1:5: field `a`");
    }

    #[test]
    fn an_offset_past_the_end_or_inside_a_character_is_clamped() {
        let end = Location::of(TEXT, usize::MAX);
        assert_eq!((end.line, end.column), (7, 1));
        let inside = Location::of(TEXT, TEXT.find('é').unwrap() + 1);
        assert_eq!((inside.line, inside.column, inside.byte_column), (3, 7, 8));
    }
}
