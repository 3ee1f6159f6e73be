//! How values appear in config errors: [`quote`] and [`key_segment`] cut
//! long values short and escape control characters, so that neither a
//! 10 MB string nor a name holding a newline reaches the terminal whole;
//! sizes, ranges and TOML types are described in words; a misspelt key gets
//! the closest known one as a hint.

use std::fmt::Display;
use std::ops::{Bound, RangeBounds};

use toml::de::DeValue;

/// How much of a value a message shows.
const QUOTE_CHARS: usize = 60;

/// The longest message kept from the TOML parser.
pub(super) const MAX_SYNTAX_MESSAGE: usize = 300;

/// `s` cut to [`QUOTE_CHARS`] characters, its full length in bytes after it.
pub(super) fn truncate(s: &str) -> String {
    match s.char_indices().nth(QUOTE_CHARS) {
        None => s.to_string(),
        Some((i, _)) => format!("{}… ({} bytes)", &s[..i], s.len()),
    }
}

/// `s` in double quotes with control characters escaped, cut short like
/// [`truncate`]: `"aaaa…" (10000000 bytes)`.
pub fn quote(s: &str) -> String {
    match s.char_indices().nth(QUOTE_CHARS) {
        None => format!("\"{}\"", s.escape_debug()),
        Some((i, _)) => format!("\"{}…\" ({} bytes)", s[..i].escape_debug(), s.len()),
    }
}

/// A path or name as written in a message: bare when short and free of
/// control characters, else [`quote`]d.
pub(super) fn show(s: &str) -> String {
    if s.chars().count() <= QUOTE_CHARS && !s.chars().any(char::is_control) {
        s.to_string()
    } else {
        quote(s)
    }
}

/// A table name as it appears in a dotted key: bare when it is a short
/// identifier, else [`quote`]d.
pub(super) fn key_segment(name: &str) -> String {
    let bare = !name.is_empty()
        && name.len() <= super::MAX_PLUGIN_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare { name.to_string() } else { quote(name) }
}

/// A size for a message: `64KiB`, `4GiB`, or a byte count.
pub(super) fn show_size(n: u64) -> String {
    for (unit, shift) in [("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        if n >= 1 << shift && n.is_multiple_of(1 << shift) {
            return format!("{}{unit}", n >> shift);
        }
    }
    if n == 1 {
        "1 byte".to_string()
    } else {
        format!("{n} bytes")
    }
}

/// "must be between A and B" or "must be at least A".
pub(super) fn bounds<T: Display>(
    range: &impl RangeBounds<T>,
    show: impl Fn(&T) -> String,
) -> String {
    let min = match range.start_bound() {
        Bound::Included(m) | Bound::Excluded(m) => Some(show(m)),
        Bound::Unbounded => None,
    };
    match (min, range.end_bound()) {
        (Some(min), Bound::Included(max) | Bound::Excluded(max)) => {
            format!("must be between {min} and {}", show(max))
        }
        (Some(min), Bound::Unbounded) => format!("must be at least {min}"),
        (None, Bound::Included(max) | Bound::Excluded(max)) => {
            format!("must be at most {}", show(max))
        }
        (None, Bound::Unbounded) => "is out of range".to_string(),
    }
}

/// What a value is, for a type error: `the string "abc"`.
pub(super) fn describe(v: &DeValue<'_>) -> String {
    match v {
        DeValue::String(s) => format!("the string {}", quote(s)),
        DeValue::Integer(i) => format!("the integer {}", truncate(&i.to_string())),
        DeValue::Float(f) => format!("the float {}", truncate(&f.to_string())),
        DeValue::Boolean(b) => format!("the boolean {b}"),
        DeValue::Datetime(_) => "a date-time".to_string(),
        DeValue::Array(_) => "an array".to_string(),
        DeValue::Table(_) => "a table".to_string(),
    }
}

/// The edit distance between two short strings.
pub(super) fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let here = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != cb)).min(row[j] + 1).min(here + 1);
            prev = here;
        }
    }
    row[b.len()]
}

/// The known key `name` is most likely a misspelling of, if any: one edit
/// away, or a few edits (a third of the length, at least two) with the
/// first letter right (`colck` → `clock`, but not `port` → `host`).
pub(super) fn closest<'k>(name: &str, known: &[&'k str]) -> Option<&'k str> {
    if name.len() > 64 {
        return None;
    }
    known
        .iter()
        .map(|k| (distance(name, k), *k))
        .filter(|(d, k)| {
            *d <= 1
                || (*d <= 2.max(name.len().max(k.len()) / 3)
                    && name.chars().next() == k.chars().next())
        })
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}
