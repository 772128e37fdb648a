//! YAML in and out, through one maintained library: `serde-saphyr` (the one kube uses).
//!
//! This facade keeps the call sites short and the library's settings in one place:
//! [`from_str`] reads a document into a type (errors name the field path, line and column,
//! in user words: no Rust type names, a tab called a tab), [`to_string`] prints a value,
//! and [`Tree`] is the document as written (scalars as their text, with positions), for
//! what serde cannot say: where a field path was written, which keys a lenient type
//! dropped, and the document with fields in error left out.

pub(crate) mod tree;
mod value;

use std::borrow::Cow;

use serde::de::DeserializeOwned;
use serde::Serialize;

pub use tree::Position;
pub(crate) use tree::{join_index, join_key, parent_path, Entry, Index, Kind, Node, Tree};

/// The reading options used everywhere: YAML 1.2 booleans only (`yes` is text, as for
/// kubectl), duplicate keys refused, no snippets from the library (we print our own).
/// The budget against hostile input keeps the library's defaults except its node and
/// event counts, sized for config files: a plugins.lock of 10,000 plugins with their
/// images is about 250,000 nodes, the default limit.
fn options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        strict_booleans: true,
        with_snippet: false,
        emit_comments: false,
        budget: serde_saphyr::budget! {
            max_nodes: 20_000_000,
            max_events: 80_000_000,
        },
    }
}

/// Why a text did not read into a type: where and what, ready for a diagnostic.
#[derive(Debug, Clone)]
pub(crate) struct ReadError {
    /// The field path (`spec.plugins[2].version`), empty for the document.
    pub path: String,
    /// The same path as serde's segments (to find the field in a [`Node`] tree).
    pub segments: Vec<serde_path_to_error::Segment>,
    /// Where, when known.
    pub at: Option<Position>,
    /// What is wrong, in user words; for a syntax error, followed by the line and a caret.
    pub message: String,
    /// Whether the text is not YAML at all (so no field can be read from it).
    pub syntax: bool,
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        match self.at {
            // The caret ends the message: the place goes first.
            Some(at) if self.syntax => {
                write!(
                    f,
                    "line {}, column {}: {}",
                    at.line, at.column, self.message
                )
            }
            Some(at) => write!(
                f,
                "{} (line {}, column {})",
                self.message, at.line, at.column
            ),
            None => f.write_str(&self.message),
        }
    }
}

/// Reads `text` into `T`: duplicate keys, wrong types and (for types that deny them)
/// unknown fields are errors, with the path of the field in error.
pub(crate) fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, ReadError> {
    // Most texts read: tracking the path of every field costs a fifth of reading, so it is
    // only done again for a text that failed, to name the field in error.
    match serde_saphyr::from_str_with_options(text, options()) {
        Ok(value) => Ok(value),
        Err(_) => from_str_tracked(text),
    }
}

/// [`from_str`] into an untyped value, the form every rendered object is read into: built
/// from the parser's events where that gives serde-saphyr's value, by serde-saphyr (and its
/// errors) everywhere else (see `value.rs`).
pub(crate) fn value_from_str(text: &str) -> Result<serde_json::Value, ReadError> {
    match value::from_events(text) {
        Some(value) => Ok(value),
        None => from_str(text),
    }
}

/// What the pull-request diff reads of an object it knows to be the same at both
/// revisions: its `apiVersion`, `kind` and `metadata` when written first (the rest left
/// unread), else the whole object as [`value_from_str`] reads it.
pub(crate) fn identity_from_str(text: &str) -> Result<serde_json::Value, ReadError> {
    match value::identity_from_events(text) {
        Some(value) => Ok(value),
        None => from_str(text),
    }
}

/// [`from_str`] tracking the path of the field being read, for its error.
fn from_str_tracked<T: DeserializeOwned>(text: &str) -> Result<T, ReadError> {
    let mut segments = Vec::new();
    let result = serde_saphyr::with_deserializer_from_str_with_options(text, options(), |de| {
        serde_path_to_error::deserialize(de).map_err(|e| {
            segments = e.path().iter().cloned().collect();
            e.into_inner()
        })
    });
    result.map_err(|e| {
        // A key being read is `?` to serde: the error is its mapping's.
        while let Some(serde_path_to_error::Segment::Unknown) = segments.last() {
            segments.pop();
        }
        read_error(text, segments, &e)
    })
}

/// [`from_str`] on bytes, which must be UTF-8.
pub(crate) fn from_slice<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ReadError> {
    match std::str::from_utf8(bytes) {
        Ok(text) => from_str(text),
        Err(e) => Err(ReadError {
            path: String::new(),
            segments: Vec::new(),
            at: None,
            message: format!(
                "not UTF-8 text (invalid byte at offset {})",
                e.valid_up_to()
            ),
            syntax: true,
        }),
    }
}

/// `value` as a YAML document: block style, keys in the value's order, strings quoted
/// where a YAML 1.1 or 1.2 reader (kubectl's included) would read them as something else,
/// multi-line strings as literal blocks, long lines never folded (a lock's identifiers
/// stay on one line, for grep and for diffs).
pub(crate) fn to_string<T: Serialize>(value: &T) -> Result<String, serde_saphyr::SerializeError> {
    let options = serde_saphyr::ser_options! {
        folded_wrap_chars: usize::MAX,
        min_fold_chars: usize::MAX,
    };
    serde_saphyr::to_string_with_options(value, options)
}

/// serde's path as it displays it (`spec.plugins[2].version`), empty for the document.
fn display_path(segments: &[serde_path_to_error::Segment]) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in segments {
        match segment {
            Segment::Seq { index } => out = join_index(&out, *index),
            Segment::Map { key } => out = join_key(&out, key),
            Segment::Enum { variant } => out = join_key(&out, variant),
            Segment::Unknown => out = join_key(&out, "?"),
        }
    }
    out
}

fn read_error(
    text: &str,
    segments: Vec<serde_path_to_error::Segment>,
    error: &serde_saphyr::Error,
) -> ReadError {
    let path = display_path(&segments);
    let error = error.without_snippet();
    let at = error.location().map(|l| Position {
        line: l.line() as usize,
        column: l.column() as usize,
    });
    let syntax = matches!(
        error,
        serde_saphyr::Error::ExternalMessage { source, .. }
            if matches!(**source, serde_saphyr::ExternalMessageSource::Parser(_))
    );
    let raw =
        serde_saphyr::MessageFormatter::format_message(&serde_saphyr::UserMessageFormatter, error);
    let mut message = user_words(&raw).into_owned();
    // A value of the wrong kind: say what was written.
    if message.starts_with("invalid type: expected") {
        if let Some(found) = error.location().and_then(|l| written_at(text, l.span())) {
            message.push_str(&format!(", found `{found}`"));
        }
    }
    if syntax {
        if let Some(at) = at {
            message = format!("not valid YAML: {message}{}", caret(text, at));
        } else {
            message = format!("not valid YAML: {message}");
        }
    }
    ReadError {
        path,
        segments,
        at,
        message,
        syntax,
    }
}

/// The text of a one-line scalar at `span`, when short enough to quote in a message.
fn written_at(text: &str, span: serde_saphyr::Span) -> Option<&str> {
    let start = usize::try_from(span.byte_offset()?).ok()?;
    let len = usize::try_from(span.byte_len()?).ok()?;
    let found = text.get(start..start + len)?;
    (!found.is_empty() && len <= 60 && !found.contains('\n') && !found.starts_with(['[', '{']))
        .then_some(found)
}

/// The source line at `at`, and a caret under its column (tabs kept, so the caret lines
/// up in a terminal), as a compiler shows it.
pub(crate) fn caret(text: &str, at: Position) -> String {
    let Some(line) = text.lines().nth(at.line.saturating_sub(1)) else {
        return String::new();
    };
    let number = at.line.to_string();
    let pad: String = line
        .chars()
        .take(at.column.saturating_sub(1))
        .map(|c| if c == '\t' { '\t' } else { ' ' })
        .collect();
    let gutter = " ".repeat(number.len());
    format!("\n {number} | {line}\n {gutter} | {pad}^")
}

/// A library message in the words of someone who wrote YAML, not Rust: no type names
/// (`struct PluginSpec`, `u32`, `Option<String>`), and a tab named as such.
fn user_words(message: &str) -> Cow<'_, str> {
    let m = message.trim();
    if m.contains("tab") && (m.contains("indentation") || m.contains("found a tab")) {
        return "a tab is used for indentation here; YAML allows only spaces there (replace \
                the tab with spaces)"
            .into();
    }
    if m.contains("found character that cannot start any token") && m.contains('\t') {
        return "a tab here; YAML allows only spaces for indentation".into();
    }
    let fixed = [
        (
            "expected mapping start",
            "invalid type: expected a mapping (`key: value` lines)",
        ),
        (
            "expected sequence start",
            "invalid type: expected a list (`- item` lines)",
        ),
        (
            "expected string scalar",
            "invalid type: expected a text value",
        ),
        ("expected scalar", "invalid type: expected a single value"),
    ];
    for (from, to) in fixed {
        if m.starts_with(from) {
            return to.into();
        }
    }
    if let Some(kind) = m.strip_prefix("invalid ") {
        let what = match kind {
            "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => Some("a whole number (0 or more)"),
            "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => Some("a whole number"),
            "f32" | "f64" => Some("a number"),
            "bool" | "boolean" => Some("`true` or `false`"),
            "char" => Some("a single character"),
            _ => None,
        };
        if let Some(what) = what {
            return format!("invalid type: expected {what}").into();
        }
    }
    // serde's own wording: "invalid type: map, expected struct PluginSpec".
    if let Some((head, expected)) = m.split_once(", expected ") {
        return format!("{head}, expected {}", expected_in_user_words(expected)).into();
    }
    Cow::Borrowed(m)
}

/// serde's `expected …` clause without Rust names.
fn expected_in_user_words(expected: &str) -> Cow<'_, str> {
    let words: Vec<&str> = expected.split_whitespace().collect();
    match words.as_slice() {
        ["struct", ..] | ["map", ..] | ["a", "map", ..] => "a mapping (`key: value` lines)".into(),
        ["enum", ..] | ["variant", ..] => "one of the allowed values".into(),
        ["a", "sequence", ..] | ["sequence", ..] | ["tuple", ..] => {
            "a list (`- item` lines)".into()
        }
        [first, ..] if first.starts_with('u') || first.starts_with('i') => {
            match first.trim_end_matches(|c: char| c.is_ascii_digit()) {
                "u" | "i" | "usize" | "isize" => "a whole number".into(),
                _ => Cow::Borrowed(expected),
            }
        }
        _ if expected.contains('<') || expected.contains("::") => "a value of another kind".into(),
        _ => Cow::Borrowed(expected),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct PluginSpec {
        name: String,
        replicas: Option<u32>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Top {
        plugins: Vec<PluginSpec>,
    }

    #[test]
    fn a_syntax_error_shows_the_line_with_a_caret_under_the_column() {
        let text = "plugins:\n- name: a: b\n  replicas: 2\n";
        let e = from_str::<Top>(text).unwrap_err();
        assert!(e.syntax, "{e:?}");
        let at = e.at.expect("a position");
        let lines: Vec<&str> = e.message.lines().collect();
        assert!(lines[0].starts_with("not valid YAML: "), "{}", e.message);
        let source = text.lines().nth(at.line - 1).unwrap();
        assert_eq!(
            lines[1],
            format!(" {} | {source}", at.line),
            "{}",
            e.message
        );
        let caret_line = lines[2];
        let bar = caret_line.find('|').unwrap() + 2;
        assert_eq!(caret_line.len() - bar, at.column, "{}", e.message);
        assert!(caret_line.ends_with('^'));
    }

    #[test]
    fn a_tab_used_for_indentation_is_called_a_tab() {
        for text in [
            "plugins:\n\t- name: a\n",
            "plugins:\n- name: a\n\treplicas: 2\n",
        ] {
            let e = from_str::<Top>(text).unwrap_err();
            assert!(e.message.contains("tab"), "{text:?}: {}", e.message);
            assert!(e.message.contains("spaces"), "{text:?}: {}", e.message);
            assert!(e.message.contains('^'), "{text:?}: {}", e.message);
        }
    }

    #[test]
    fn messages_never_name_a_rust_type() {
        for text in [
            "plugins:\n- just a string\n",
            "plugins: 3\n",
            "plugins:\n- name: [a]\n",
            "plugins:\n- name: a\n  replicas: many\n",
            "plugins:\n- name: a\n  replicas: -1\n",
            "plugins:\n- name:\n",
            "plugins:\n- name: a\n  bogus: 1\n",
        ] {
            let e = from_str::<Top>(text).unwrap_err();
            for rust in ["PluginSpec", "struct", "u32", "Option", "String", "Vec"] {
                assert!(!e.message.contains(rust), "{text:?}: {}", e.message);
            }
            assert!(e.at.is_some(), "{text:?}");
        }
        let e = from_str::<Top>("plugins:\n- just a string\n").unwrap_err();
        assert_eq!(e.path, "plugins[0]");
        assert!(e.message.contains("mapping"), "{}", e.message);
    }

    /// Large sets are not hostile input: a document beyond the library's default node
    /// budget (250,000) reads.
    #[test]
    fn a_document_of_many_nodes_reads() {
        let text = format!("[{}0]", "0,".repeat(260_000));
        let list: Vec<u8> = from_str(&text).unwrap();
        assert_eq!(list.len(), 260_001);
    }

    #[test]
    fn serde_wording_loses_its_type_names() {
        assert_eq!(
            user_words("invalid type: map, expected struct PluginSpec"),
            "invalid type: map, expected a mapping (`key: value` lines)"
        );
        assert_eq!(
            user_words("invalid type: string \"x\", expected u32"),
            "invalid type: string \"x\", expected a whole number"
        );
    }
}
