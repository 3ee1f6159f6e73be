//! The checker under the table parsers: typed look-ups in one spanned toml
//! table that record a located error (file, line, column, dotted key,
//! message with a hint) and return nothing, so that parsing carries on with
//! the default and every error in the file is found in one pass.
//! How values appear in those messages is `show.rs`'s.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::net::IpAddr;
use std::ops::{Range, RangeBounds};
use std::path::Path;
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeString, DeTable, DeValue};

use super::show::{
    MAX_SYNTAX_MESSAGE, bounds, closest, describe, key_segment, quote, show_size, truncate,
};
use super::{ConfigError, PluginConfig, parse_duration, parse_size};

/// A value in the document, with its byte span.
pub(super) type Value<'i> = Spanned<DeValue<'i>>;

/// One table of the document, with its dotted key and where it starts.
pub(super) struct Table<'t, 'i> {
    /// The dotted key, such as `listen[0]`; empty for the document.
    pub key: String,
    /// The table's header (or the whole inline table).
    pub span: Range<usize>,
    entries: &'t DeTable<'i>,
}

impl<'t, 'i> Table<'t, 'i> {
    /// A table without a dotted key of its own: the document, or
    /// `[plugins]`, whose entries are walked by hand.
    pub fn unnamed(entries: &'t DeTable<'i>) -> Self {
        Table {
            key: String::new(),
            span: 0..0,
            entries,
        }
    }

    /// The value of `name`, if present.
    pub fn get(&self, name: &str) -> Option<&'t Value<'i>> {
        self.entries.get(name)
    }

    /// The entries, in file order.
    pub fn entries(&self) -> Vec<(&'t Spanned<DeString<'i>>, &'t Value<'i>)> {
        let mut v: Vec<_> = self.entries.iter().collect();
        v.sort_by_key(|(k, _)| k.span().start);
        v
    }

    /// The dotted key of `name` in this table.
    pub fn field(&self, name: &str) -> String {
        if self.key.is_empty() {
            key_segment(name)
        } else {
            format!("{}.{}", self.key, key_segment(name))
        }
    }
}

/// Collects located errors while the table parsers walk the document.
pub(super) struct Checker<'a> {
    path: &'a Path,
    text: &'a str,
    /// Byte offset of each line's start.
    line_starts: Vec<usize>,
    /// Each error with its byte offset (`usize::MAX` when it has none).
    errors: Vec<(usize, ConfigError)>,
    /// The line and column of every key of every table opened, by dotted
    /// key, for errors found after parsing (such as the instance pool's).
    pub places: BTreeMap<String, (usize, usize)>,
}

impl<'a> Checker<'a> {
    pub fn new(path: &'a Path, text: &'a str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Checker {
            path,
            text,
            line_starts,
            errors: Vec::new(),
            places: BTreeMap::new(),
        }
    }

    /// The errors, in file order; unlocated ones last.
    pub fn finish(mut self) -> Vec<ConfigError> {
        self.errors.sort_by_key(|(at, _)| *at);
        self.errors.into_iter().map(|(_, e)| e).collect()
    }

    /// Whether any error has been recorded.
    pub fn has_errors(&self) -> bool {
        !self.errors.is_empty()
    }

    /// How many errors have been recorded (to tell whether a step added
    /// any).
    pub fn error_count(&self) -> usize {
        self.errors.len()
    }

    /// 1-based line and column (in characters) of a byte offset.
    fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = self.line_starts.partition_point(|&s| s <= offset);
        let start = self.line_starts[line - 1];
        let col = self
            .text
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count());
        (line, col + 1)
    }

    /// The config file, as errors name it.
    pub fn file(&self) -> String {
        self.path.display().to_string()
    }

    /// 1-based line of a span.
    pub fn line(&self, span: &Range<usize>) -> usize {
        self.line_col(span.start).0
    }

    /// Records an error at `span` on `key` (both optional).
    pub fn error(&mut self, span: Option<Range<usize>>, key: &str, message: impl Into<String>) {
        let (at, line, column) = match span {
            Some(s) => {
                let (l, c) = self.line_col(s.start);
                (s.start, Some(l), Some(c))
            }
            None => (usize::MAX, None, None),
        };
        let error = ConfigError {
            file: self.path.to_path_buf(),
            line,
            column,
            key: (!key.is_empty()).then(|| key.to_string()),
            message: message.into(),
        };
        self.errors.push((at, error));
    }

    /// Records a TOML syntax error, the one error of a file that cannot be
    /// parsed at all.
    pub fn syntax_error(&mut self, e: &toml::de::Error) {
        let mut message = e.message().trim_end().to_string();
        if message.len() > MAX_SYNTAX_MESSAGE {
            message = truncate(&message);
        }
        self.error(e.span(), "", message);
    }

    /// Records a type error: `expected` names the type, with an example.
    pub fn type_error(&mut self, v: &Value<'_>, key: &str, expected: &str) {
        self.error(
            Some(v.span()),
            key,
            format!("expected {expected}, found {}", describe(v.get_ref())),
        );
    }

    /// Opens `v` as the table `key`: a type error if it is not a table,
    /// and an error for each of its keys not in `known`.
    pub fn table<'t, 'i>(
        &mut self,
        key: String,
        v: &'t Value<'i>,
        known: &[&str],
    ) -> Option<Table<'t, 'i>> {
        let DeValue::Table(entries) = v.get_ref() else {
            self.type_error(v, &key, "a table");
            return None;
        };
        let table = Table {
            key,
            span: v.span(),
            entries,
        };
        self.unknown_keys(&table, known, "key");
        for (k, _) in table.entries() {
            let place = self.line_col(k.span().start);
            self.places.insert(table.field(k.get_ref()), place);
        }
        Some(table)
    }

    /// Records an error for each key of `table` not in `known`, with a
    /// "did you mean" or the list of valid keys.
    pub fn unknown_keys(&mut self, table: &Table<'_, '_>, known: &[&str], what: &str) {
        for (k, _) in table.entries() {
            if known.contains(&k.get_ref().as_ref()) {
                continue;
            }
            let hint = match closest(k.get_ref(), known) {
                Some(c) => format!("did you mean `{c}`?"),
                None => format!("valid {what}s here: {}", known.join(", ")),
            };
            // A long or odd name is already in the (quoted) key.
            let named = key_segment(k.get_ref());
            let named = if named == **k.get_ref() {
                format!(" `{named}`")
            } else {
                String::new()
            };
            self.error(
                Some(k.span()),
                &table.field(k.get_ref()),
                format!("unknown {what}{named}: {hint}"),
            );
        }
    }

    /// A required key: an error on the table if it is missing.
    pub fn required<'t, 'i>(
        &mut self,
        t: &Table<'t, 'i>,
        name: &str,
        example: &str,
    ) -> Option<&'t Value<'i>> {
        let v = t.get(name);
        if v.is_none() {
            self.error(
                Some(t.span.clone()),
                &t.field(name),
                format!("missing key `{name}`: add e.g. {example}"),
            );
        }
        v
    }

    /// An integer in `range`.
    pub fn int<T>(&mut self, t: &Table<'_, '_>, name: &str, range: impl RangeBounds<T>) -> Option<T>
    where
        T: TryFrom<i64> + PartialOrd + Display,
    {
        let v = t.get(name)?;
        let key = t.field(name);
        let DeValue::Integer(i) = v.get_ref() else {
            self.type_error(v, &key, "an integer (such as 10)");
            return None;
        };
        let n = i64::from_str_radix(i.as_str(), i.radix())
            .ok()
            .and_then(|n| T::try_from(n).ok())
            .filter(|n| range.contains(n));
        if n.is_none() {
            let message = format!(
                "{}, got {}",
                bounds(&range, T::to_string),
                truncate(&i.to_string())
            );
            self.error(Some(v.span()), &key, message);
        }
        n
    }

    /// A size in `range`: a byte count or a string such as `"16MiB"`.
    /// `hint` follows an out-of-range message.
    pub fn size(
        &mut self,
        t: &Table<'_, '_>,
        name: &str,
        range: impl RangeBounds<u64>,
        hint: &str,
    ) -> Option<u64> {
        let v = t.get(name)?;
        let key = t.field(name);
        let n = match v.get_ref() {
            DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
                .ok()
                .and_then(|n| u64::try_from(n).ok())
                .ok_or_else(|| format!("size {} is negative or too large", truncate(i.as_str()))),
            DeValue::String(s) => parse_size(s),
            _ => {
                self.type_error(v, &key, "a size (such as \"16MiB\" or 65536)");
                return None;
            }
        };
        match n {
            Ok(n) if range.contains(&n) => Some(n),
            Ok(n) => {
                let message = format!(
                    "{}, got {}{hint}",
                    bounds(&range, |s| show_size(*s)),
                    show_size(n)
                );
                self.error(Some(v.span()), &key, message);
                None
            }
            Err(m) => {
                self.error(Some(v.span()), &key, m);
                None
            }
        }
    }

    /// A duration of at least `min`, such as `"5s"`.
    pub fn duration(&mut self, t: &Table<'_, '_>, name: &str, min: Duration) -> Option<Duration> {
        let v = t.get(name)?;
        let key = t.field(name);
        let DeValue::String(s) = v.get_ref() else {
            self.type_error(v, &key, "a duration (such as \"5s\" or \"100ms\")");
            return None;
        };
        match parse_duration(s) {
            Ok(d) if d >= min => Some(d),
            Ok(_) => {
                self.error(Some(v.span()), &key, format!("must be at least {min:?}"));
                None
            }
            Err(m) => {
                self.error(Some(v.span()), &key, m);
                None
            }
        }
    }

    /// A number in `range` (an integer is accepted too).
    pub fn float(
        &mut self,
        t: &Table<'_, '_>,
        name: &str,
        range: std::ops::RangeInclusive<f64>,
    ) -> Option<f64> {
        let v = t.get(name)?;
        let key = t.field(name);
        let n = match v.get_ref() {
            DeValue::Float(f) => f.as_str().parse::<f64>().ok(),
            DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
                .ok()
                .map(|n| n as f64),
            _ => {
                self.type_error(v, &key, "a number (such as 2.5)");
                return None;
            }
        };
        match n {
            Some(n) if range.contains(&n) => Some(n),
            _ => {
                let message = format!("must be a number from {} to {}", range.start(), range.end());
                self.error(Some(v.span()), &key, message);
                None
            }
        }
    }

    /// `true` or `false`.
    pub fn bool(&mut self, t: &Table<'_, '_>, name: &str) -> Option<bool> {
        let v = t.get(name)?;
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            _ => {
                self.type_error(v, &t.field(name), "true or false");
                None
            }
        }
    }

    /// A string, with its span.
    pub fn string<'t>(&mut self, t: &Table<'t, '_>, name: &str) -> Option<(&'t str, Range<usize>)> {
        let v = t.get(name)?;
        match v.get_ref() {
            DeValue::String(s) => Some((s.as_ref(), v.span())),
            _ => {
                self.type_error(v, &t.field(name), "a string (in double quotes)");
                None
            }
        }
    }

    /// The required key `name`, naming a plugin defined in `plugins`.
    pub fn plugin_ref(
        &mut self,
        t: &Table<'_, '_>,
        name: &str,
        plugins: &BTreeMap<String, PluginConfig>,
    ) -> Option<String> {
        self.required(t, name, "plugin = \"echo\"")?;
        let (p, span) = self.string(t, name)?;
        if !plugins.contains_key(p) {
            let q = quote(p);
            let message = if plugins.is_empty() {
                format!(
                    "plugin {q} is not defined: add a [plugins.{}] table",
                    key_segment(p)
                )
            } else {
                let mut known: Vec<String> =
                    plugins.keys().take(10).map(|k| key_segment(k)).collect();
                if plugins.len() > known.len() {
                    known.push(format!("and {} more", plugins.len() - known.len()));
                }
                format!("plugin {q} is not defined (defined: {})", known.join(", "))
            };
            self.error(Some(span), &t.field(name), message);
        }
        Some(p.to_string())
    }

    /// The required key `name`: a port in `range`.
    pub fn port(
        &mut self,
        t: &Table<'_, '_>,
        name: &str,
        range: impl RangeBounds<u16>,
    ) -> Option<u16> {
        let v = self.required(t, name, "port = 9000")?;
        let key = t.field(name);
        let DeValue::Integer(i) = v.get_ref() else {
            self.type_error(v, &key, "a port number (such as 9000, without quotes)");
            return None;
        };
        let n = i64::from_str_radix(i.as_str(), i.radix())
            .ok()
            .and_then(|n| u16::try_from(n).ok());
        match n {
            Some(n) if range.contains(&n) => Some(n),
            Some(0) => {
                self.error(Some(v.span()), &key, "cannot connect to port 0");
                None
            }
            _ => {
                let message = format!(
                    "port {}, got {}",
                    bounds(&range, u16::to_string),
                    truncate(&i.to_string())
                );
                self.error(Some(v.span()), &key, message);
                None
            }
        }
    }

    /// A local unicast IP address to bind, IPv4-mapped IPv6 addresses
    /// turned into IPv4.
    pub fn interface(&mut self, t: &Table<'_, '_>, name: &str) -> Option<IpAddr> {
        const HINT: &str = "use \"127.0.0.1\", \"::1\", \"0.0.0.0\" or \"::\"";
        let (s, span) = self.string(t, name)?;
        let key = t.field(name);
        let Ok(ip) = s.parse::<IpAddr>() else {
            self.error(
                Some(span),
                &key,
                format!("{} is not an IP address: {HINT}", quote(s)),
            );
            return None;
        };
        let ip = ip.to_canonical();
        let kind = match ip {
            IpAddr::V4(v4) if v4.is_broadcast() => Some("the broadcast address"),
            _ if ip.is_multicast() => Some("a multicast address"),
            _ => None,
        };
        if let Some(kind) = kind {
            self.error(
                Some(span),
                &key,
                format!("{ip} is {kind}; a listener binds a unicast address: {HINT}"),
            );
            return None;
        }
        Some(ip)
    }
}
