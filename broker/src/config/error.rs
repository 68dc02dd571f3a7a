//! [`ConfigError`], and finding the line and dotted key each configuration error is about.
//!
//! Every error about the file's content renders as `file:line: key: message`, where `key` is
//! the dotted path of the setting (`limits.receive_maximum`, `listener[1].bind`). The three
//! kinds of error get their line and key differently:
//! - syntax errors: `toml_edit` gives the byte span; the key is read back from the text (the
//!   last table header above the line and the key before its `=`), best effort;
//! - deserialization errors: `toml_edit` gives the span and `serde_path_to_error` the key;
//! - semantic errors: the validator gives the key, and its span is looked up in the parsed
//!   document ([`locate`]); a key left at its default points at its table's header instead.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::path::PathBuf;

use toml_edit::{Item, Table, TomlError, Value};

use super::validate;

/// Why the configuration could not be loaded.
#[derive(Debug)]
pub enum ConfigError {
    /// The file could not be read.
    Read {
        /// The path as given.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The file is not TOML, or not a valid configuration. Displays as `file:line: key: message`.
    Invalid {
        /// The file name as given to the loader.
        file: String,
        /// The 1-based line, when known.
        line: Option<usize>,
        /// The dotted key, such as `limits.receive_maximum` or `listener[0].bind`, when known.
        key: Option<String>,
        /// What is wrong.
        message: String,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read { path, source } => {
                write!(f, "{}: cannot read: {source}", path.display())
            }
            ConfigError::Invalid {
                file,
                line,
                key,
                message,
            } => {
                write!(f, "{file}")?;
                if let Some(line) = line {
                    write!(f, ":{line}")?;
                }
                if let Some(key) = key {
                    write!(f, ": {key}")?;
                }
                write!(f, ": {message}")
            }
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::Read { source, .. } => Some(source),
            ConfigError::Invalid { .. } => None,
        }
    }
}

/// One step of a key path: a table key or an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Seg {
    Key(String),
    Index(usize),
}

/// A path into the document, displayed as `listener[1].bind`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct KeyPath(pub(super) Vec<Seg>);

impl KeyPath {
    /// A path of plain keys, such as `["limits", "receive_maximum"]`.
    pub(super) fn keys(keys: &[&str]) -> KeyPath {
        KeyPath(keys.iter().map(|k| Seg::Key((*k).to_owned())).collect())
    }

    /// `self` followed by `seg`.
    pub(super) fn with(mut self, seg: Seg) -> KeyPath {
        self.0.push(seg);
        self
    }

    fn from_serde(path: &serde_path_to_error::Path) -> KeyPath {
        use serde_path_to_error::Segment;
        KeyPath(
            path.iter()
                .filter_map(|seg| match seg {
                    Segment::Seq { index } => Some(Seg::Index(*index)),
                    Segment::Map { key } => Some(Seg::Key(key.clone())),
                    Segment::Enum { variant } => Some(Seg::Key(variant.clone())),
                    Segment::Unknown => None,
                })
                .collect(),
        )
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if i == 0 => write!(f, "{k}")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// A semantic error found by the validator: which key, and what is wrong with it.
#[derive(Debug)]
pub(super) struct Invalid {
    pub(super) path: KeyPath,
    pub(super) message: String,
}

/// A TOML syntax error.
pub(super) fn syntax_error(text: &str, file: &str, err: &TomlError) -> ConfigError {
    let line = err.span().map(|span| line_of(text, span.start));
    let message = err
        .message()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    ConfigError::Invalid {
        file: file.to_owned(),
        line,
        key: line.and_then(|line| guess_key(text, line)),
        message: format!("invalid TOML: {message}"),
    }
}

/// An error from deserializing the parsed document into the configuration types.
pub(super) fn serde_error(
    text: &str,
    file: &str,
    root: &Item,
    err: serde_path_to_error::Error<toml_edit::de::Error>,
) -> ConfigError {
    let mut path = KeyPath::from_serde(err.path());
    let inner = err.into_inner();
    let message = inner.message();
    if let Some(field) = unknown_field(message)
        && path.0.last() != Some(&Seg::Key(field.to_owned()))
    {
        path.0.push(Seg::Key(field.to_owned()));
    }
    let span = inner.span().or_else(|| locate(root, &path));
    let key = path.to_string();
    ConfigError::Invalid {
        file: file.to_owned(),
        line: span.map(|span| line_of(text, span.start)),
        message: rewrite_integer_range(message, &key),
        key: (!key.is_empty()).then_some(key),
    }
}

/// An error found by [`validate`] on the typed configuration.
pub(super) fn semantic_error(text: &str, file: &str, root: &Item, err: Invalid) -> ConfigError {
    let key = err.path.to_string();
    ConfigError::Invalid {
        file: file.to_owned(),
        line: locate(root, &err.path).map(|span| line_of(text, span.start)),
        key: (!key.is_empty()).then_some(key),
        message: err.message,
    }
}

/// The key named by serde's "unknown field `x`, expected ..." message.
fn unknown_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    Some(&rest[..rest.find('`')?])
}

/// Turns serde's "invalid value: integer `70000`, expected u16" for a ranged key into the same
/// "must be between ..." message the validator gives for values that fit the type.
fn rewrite_integer_range(message: &str, key: &str) -> String {
    let number = message
        .strip_prefix("invalid value: integer `")
        .and_then(|rest| rest.split_once('`'))
        .map(|(number, _)| number);
    match (number, validate::range_of(key)) {
        (Some(number), Some((min, max))) => {
            format!("must be between {min} and {max}, got {number}")
        }
        _ => message.to_owned(),
    }
}

/// The 1-based line containing byte `offset` of `text`.
pub(super) fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The span of the deepest part of `path` present in the document: the key itself when it is
/// there, otherwise the nearest enclosing table or array element that is.
pub(super) fn locate(root: &Item, path: &KeyPath) -> Option<Range<usize>> {
    /// Where the walk is: something that has keys or indices, or a scalar.
    enum Node<'a> {
        Table(&'a Table),
        Inline(&'a toml_edit::InlineTable),
        Tables(&'a toml_edit::ArrayOfTables),
        Array(&'a toml_edit::Array),
        Leaf,
    }
    fn of_value(value: &Value) -> Node<'_> {
        match value {
            Value::InlineTable(t) => Node::Inline(t),
            Value::Array(a) => Node::Array(a),
            _ => Node::Leaf,
        }
    }
    fn of_item(item: &Item) -> Node<'_> {
        match item {
            Item::Table(t) => Node::Table(t),
            Item::ArrayOfTables(a) => Node::Tables(a),
            Item::Value(v) => of_value(v),
            Item::None => Node::Leaf,
        }
    }

    let mut node = of_item(root);
    let mut best = None;
    for seg in &path.0 {
        let (span, next) = match (seg, node) {
            (Seg::Key(k), Node::Table(t)) => match t.get_key_value(k) {
                Some((key, item)) => (key.span().or_else(|| item.span()), of_item(item)),
                None => break,
            },
            (Seg::Key(k), Node::Inline(t)) => match t.get_key_value(k) {
                Some((key, item)) => (key.span().or_else(|| item.span()), of_item(item)),
                None => break,
            },
            (Seg::Index(i), Node::Tables(a)) => match a.get(*i) {
                Some(table) => (table.span(), Node::Table(table)),
                None => break,
            },
            (Seg::Index(i), Node::Array(a)) => match a.get(*i) {
                Some(value) => (value.span(), of_value(value)),
                None => break,
            },
            _ => break,
        };
        if span.is_some() {
            best = span;
        }
        node = next;
    }
    best
}

/// Best-effort dotted key of a syntax error on 1-based `line`: the key before `=` on that line
/// (or the header written there), prefixed by the last table header above it.
fn guess_key(text: &str, line: usize) -> Option<String> {
    let mut table: Option<String> = None;
    let mut array_counts: HashMap<String, usize> = HashMap::new();
    for (i, raw) in text.lines().enumerate().take(line) {
        let l = strip_comment(raw).trim();
        let on_error_line = i + 1 == line;
        if l.starts_with('[') {
            let name = l
                .trim_start_matches('[')
                .trim_end_matches(']')
                .trim()
                .to_owned();
            if l.starts_with("[[") {
                let n = array_counts.entry(name.clone()).or_insert(0);
                table = Some(format!("{name}[{n}]"));
                *n += 1;
            } else {
                table = Some(name);
            }
            if on_error_line {
                return table.filter(|t| !t.is_empty());
            }
        } else if on_error_line {
            let key = l.split_once('=').map(|(k, _)| k).unwrap_or(l);
            let key = key.trim().trim_matches(['"', '\'']);
            if key.is_empty() || key.contains(char::is_whitespace) {
                return table;
            }
            return Some(match table {
                Some(t) => format!("{t}.{key}"),
                None => key.to_owned(),
            });
        }
    }
    None
}

/// `line` without a trailing `# comment` (a `#` inside a quoted string is kept).
fn strip_comment(line: &str) -> &str {
    let mut quote = None;
    let mut escaped = false;
    for (i, c) in line.char_indices() {
        match (quote, c) {
            (Some('"'), '\\') if !escaped => {
                escaped = true;
                continue;
            }
            (Some(q), c) if c == q && !escaped => quote = None,
            (None, '"' | '\'') => quote = Some(c),
            (None, '#') => return &line[..i],
            _ => {}
        }
        escaped = false;
    }
    line
}
