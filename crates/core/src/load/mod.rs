//! Load: parse and validate `plugins.yaml` and `plugins.lock`.
//!
//! Nothing downstream ever sees an invalid document: every problem found is reported at
//! once, each with file, line, column and field path, before anything is resolved or written.

mod conflict;
mod salvage;
mod validate;

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_path_to_error::Segment;

use crate::error::{Diagnostic, Diagnostics, Error};
use crate::model::{PluginLock, PluginSet};
pub use crate::yaml::Position;
use crate::yaml::{join_index, join_key, parent_path, Index, Node, ReadError, Tree};
pub use validate::{DeclaredPlugin, DeclaredSource, InventoryEntry, LoadedPluginSet};

/// Default name of the declared set, relative to the repository folder.
pub const PLUGINS_FILE: &str = "plugins.yaml";
/// Default name of the lockfile, next to the declared set.
pub const LOCK_FILE: &str = "plugins.lock";

/// The `metadata.name` written in a PluginSet file that may not load otherwise, so the git
/// loop can still say on the set's status why a bad commit was refused.
pub fn written_set_name(bytes: &[u8]) -> Option<String> {
    let doc = crate::yaml::from_slice::<serde_json::Value>(bytes).ok()?;
    doc["metadata"]["name"].as_str().map(str::to_string)
}

/// A parsed document that still knows where each of its fields was written.
#[derive(Debug, Clone)]
pub struct Document<T> {
    /// The typed value.
    pub value: T,
    /// The file it came from (for messages).
    pub file: PathBuf,
    /// The source text, kept so positions can be computed when (and only when) a message
    /// needs one: most documents are valid, and indexing a large one costs more than parsing.
    text: std::sync::Arc<str>,
    index: std::sync::OnceLock<Index>,
}

impl<T> Document<T> {
    fn index(&self) -> &Index {
        self.index.get_or_init(|| Index::build(&self.text))
    }

    /// A diagnostic at the value of `path` (or its nearest ancestor).
    pub fn error_at(&self, path: &str, message: impl Into<String>) -> Diagnostic {
        let pos = self.index().nearest(path);
        Diagnostic {
            file: self.file.clone(),
            line: pos.line,
            column: pos.column,
            path: path.to_string(),
            message: message.into(),
        }
    }

    /// Where the value at `path` was written.
    pub fn position(&self, path: &str) -> Position {
        self.index().nearest(path)
    }
}

/// Whether loading checks that every key written survives deserialize + serialize.
#[derive(Clone, Copy, PartialEq, Eq)]
enum RoundTrip {
    /// For types with lenient parts (the embedded Kubernetes types ignore unknown keys).
    Check,
    /// For types that refuse unknown fields at every level themselves (every struct
    /// `deny_unknown_fields`, no lenient type inside): the check could find nothing.
    /// plugins.lock is one, and the largest document loaded.
    Skip,
}

/// A text read as far as it goes.
struct Parsed<T> {
    /// The document: exactly what was written when `errors` is empty; else, when it could
    /// be had, what remains once every field with an error is left out (so the semantic
    /// checks can still run on the rest, and report their findings in the same pass).
    doc: Option<Document<T>>,
    /// Every problem found, in the order found.
    errors: Vec<Diagnostic>,
    /// The paths (as written) of the fields left out of `doc`.
    removed: Vec<String>,
    /// Which sequence items were left out, to map `doc`'s paths back to the text's.
    shifts: Shifts,
}

fn parse_checked<T>(file: &Path, text: &str, round_trip: RoundTrip) -> Parsed<T>
where
    T: DeserializeOwned + Serialize,
{
    let index = std::sync::OnceLock::new();
    let index_of = || index.get_or_init(|| Index::build(text));
    let located = |path: String, pos: Option<Position>, message: String| Diagnostic {
        file: file.to_path_buf(),
        line: pos.map(|p| p.line).unwrap_or(0),
        column: pos.map(|p| p.column).unwrap_or(0),
        path,
        message,
    };
    let failed = |errors| Parsed {
        doc: None,
        errors,
        removed: Vec::new(),
        shifts: Shifts::default(),
    };
    if text.trim().is_empty() {
        return failed(vec![located(
            String::new(),
            None,
            "the file is empty".into(),
        )]);
    }
    let (value, written_unknown, mut errors, removed, shifts) =
        match crate::yaml::from_str::<T>(text) {
            Ok(value) => {
                // The document as written, for the keys a lenient type dropped; only read when
                // there can be such keys.
                let unknown = match round_trip {
                    RoundTrip::Skip => Vec::new(),
                    RoundTrip::Check => Tree::parse(text)
                        .map(|written| dropped_keys(&written, &value))
                        .unwrap_or_default(),
                };
                (value, unknown, Vec::new(), Vec::new(), Shifts::default())
            }
            Err(first) => {
                let found = every_error::<T>(text, first, &located, &index_of);
                let Some((value, written)) = found.rest else {
                    return failed(found.errors);
                };
                // Keys the lenient types dropped, in the document without the fields already
                // reported, mapped back to where they were written.
                let unknown = match round_trip {
                    RoundTrip::Skip => Vec::new(),
                    RoundTrip::Check => dropped_keys(&written, &value)
                        .into_iter()
                        .map(|path| found.shifts.original(&path))
                        .collect(),
                };
                (value, unknown, found.errors, found.removed, found.shifts)
            }
        };
    errors.extend(written_unknown.into_iter().map(|path| {
        let pos = index_of().key(&path).or_else(|| index_of().value(&path));
        let field = path.rsplit(['.', '[']).next().unwrap_or(&path).to_string();
        located(path, pos, format!("unknown field `{field}`"))
    }));

    Parsed {
        doc: Some(Document {
            value,
            file: file.to_path_buf(),
            text: std::sync::Arc::from(text),
            index,
        }),
        errors,
        removed,
        shifts,
    }
}

/// What reading a document that does not deserialize found.
struct Found<T> {
    /// Every error: serde's first, then each one found once the fields already reported
    /// are left out.
    errors: Vec<Diagnostic>,
    /// The document without those fields, with its tree, when it then deserializes.
    rest: Option<(T, Node)>,
    /// The paths (as written) of the fields left out.
    removed: Vec<String>,
    /// Sequence items left out.
    shifts: Shifts,
}

/// At most this many errors are collected from one document: each costs a deserialization.
const MAX_ERRORS: usize = 100;

/// serde stops at the first error (`first`). So that a user fixes every one in one go, the
/// document is read as a [`Node`] tree, the field in error is left out, and the rest is
/// printed back and read into `T` again, until it reads or an error repeats; an error that
/// only leaving a field out causes (`missing field`) ends the search unreported.
fn every_error<'t, T: DeserializeOwned>(
    text: &str,
    first: ReadError,
    located: &impl Fn(String, Option<Position>, String) -> Diagnostic,
    index_of: &impl Fn() -> &'t Index,
) -> Found<T> {
    let ReadError {
        mut path,
        mut segments,
        at,
        message,
        syntax,
    } = first;
    // A duplicate key is reported at its mapping, with the key in the message: point at
    // the second occurrence (the one to delete), which the index remembers.
    if let Some(field) = message
        .strip_prefix("duplicate mapping key `")
        .and_then(|rest| rest.split('`').next())
    {
        path = join_key(&path, field);
    }
    let pos = at
        .filter(|_| syntax || !message.starts_with("duplicate"))
        .or_else(|| index_of().key(&path))
        .or(at)
        .or_else(|| Some(index_of().nearest(&path)));
    let mut found = Found {
        errors: vec![located(path.clone(), pos, message.clone())],
        rest: None,
        removed: Vec::new(),
        shifts: Shifts::default(),
    };
    // Anything that is not even YAML (a syntax error, a duplicate key) has no further
    // field errors to find.
    if syntax || message.starts_with("duplicate") {
        return found;
    }
    let Some(mut tree) = Tree::parse(text) else {
        return found;
    };
    let mut seen = vec![(path.clone(), message)];
    let mut attempts = 0;
    while found.errors.len() < MAX_ERRORS && attempts < 4 * MAX_ERRORS {
        attempts += 1;
        if !tree.remove_at(&segments) {
            break;
        }
        found.removed.push(path.clone());
        if let Some((container, index)) = removed_item(&path, &segments) {
            found.shifts.remove(container, index);
        }
        let mut next = crate::yaml::from_str::<T>(&tree.to_yaml());
        // A required field left out: a neutral value in its place (the first of a few
        // that reads), so the search goes on past it. Its findings are not reported.
        if let Some((at, field)) = next
            .as_ref()
            .err()
            .and_then(|e| missing_removed(e, &found.shifts, &found.removed))
        {
            let placeholders = [
                Node::text(""),
                Node::plain("0"),
                Node::plain("false"),
                Node::empty(true),
                Node::empty(false),
            ];
            let mut unstuck = false;
            for placeholder in placeholders {
                if !tree.insert_at(&at, &field, placeholder) {
                    break;
                }
                next = crate::yaml::from_str::<T>(&tree.to_yaml());
                let still = next.as_ref().err().is_some_and(|e| {
                    let error_path = found.shifts.original(&e.path);
                    let field_path = found.shifts.original(&format!("{}", PathOf(&at, &field)));
                    error_path == field_path
                        || error_path.starts_with(&format!("{field_path}."))
                        || error_path.starts_with(&format!("{field_path}["))
                        || missing_removed(e, &found.shifts, &found.removed).is_some()
                });
                if !still {
                    unstuck = true;
                    break;
                }
            }
            if !unstuck {
                break;
            }
        }
        let next = match next {
            Ok(rest) => {
                found.rest = Some((rest, tree));
                break;
            }
            Err(e) => e,
        };
        let original = found.shifts.original(&next.path);
        if seen.contains(&(original.clone(), next.message.clone())) {
            break;
        }
        let pos = index_of()
            .key(&original)
            .filter(|_| next.message.starts_with("unknown field"))
            .or_else(|| index_of().value(&original))
            .unwrap_or_else(|| index_of().nearest(&original));
        found
            .errors
            .push(located(original.clone(), Some(pos), next.message.clone()));
        seen.push((original.clone(), next.message));
        segments = next.segments;
        path = original;
    }
    found
}

/// When `error` is serde's `missing field` for a field that was left out: the segments of
/// its mapping and the field's name.
fn missing_removed(
    error: &ReadError,
    shifts: &Shifts,
    removed: &[String],
) -> Option<(Vec<Segment>, String)> {
    let field = error
        .message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next())?;
    let at = shifts.original(&error.path);
    removed
        .contains(&join_key(&at, field))
        .then(|| (error.segments.clone(), field.to_string()))
}

/// The path of field `field` of the mapping at `segments`, displayed as serde does.
struct PathOf<'a>(&'a [Segment], &'a str);

impl std::fmt::Display for PathOf<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut first = true;
        for segment in self.0.iter().chain([&Segment::Map {
            key: self.1.to_string(),
        }]) {
            match segment {
                Segment::Seq { index } => write!(f, "[{index}]")?,
                Segment::Map { key } if first => write!(f, "{key}")?,
                Segment::Map { key } => write!(f, ".{key}")?,
                Segment::Enum { variant } if first => write!(f, "{variant}")?,
                Segment::Enum { variant } => write!(f, ".{variant}")?,
                Segment::Unknown => write!(f, "{}?", if first { "" } else { "." })?,
            }
            first = false;
        }
        Ok(())
    }
}

/// When `segments` end at a sequence item: the path of its sequence and its index, both
/// as written (taken from `path`, the same node's path as written).
fn removed_item(path: &str, segments: &[Segment]) -> Option<(String, usize)> {
    let Some(Segment::Seq { .. }) = segments.last() else {
        return None;
    };
    let open = path.rfind('[')?;
    let index = path[open + 1..].strip_suffix(']')?.parse().ok()?;
    Some((path[..open].to_string(), index))
}

/// Sequence items left out of a document, so paths into what remains (`a[1]`) map back
/// to the paths as written (`a[2]` when `a[0]` was left out).
#[derive(Debug, Default, Clone)]
struct Shifts(Vec<(String, usize)>);

impl Shifts {
    /// Records that item `index` (as written) of the sequence at `container` (as written)
    /// was left out.
    fn remove(&mut self, container: String, index: usize) {
        self.0.push((container, index));
    }

    /// The path as written of `path` in the remaining document.
    fn original(&self, path: &str) -> String {
        if self.0.is_empty() {
            return path.to_string();
        }
        let mut out = String::with_capacity(path.len());
        let mut rest = path;
        while let Some(open) = rest.find('[') {
            let Some(close) = rest[open..].find(']').map(|c| open + c) else {
                break;
            };
            let Ok(index) = rest[open + 1..close].parse::<usize>() else {
                out.push_str(&rest[..=close]);
                rest = &rest[close + 1..];
                continue;
            };
            out.push_str(&rest[..open]);
            let mut gone: Vec<usize> = self
                .0
                .iter()
                .filter(|(container, _)| *container == out)
                .map(|(_, i)| *i)
                .collect();
            gone.sort_unstable();
            let mut original = index;
            for i in gone {
                if i <= original {
                    original += 1;
                }
            }
            out.push_str(&format!("[{original}]"));
            rest = &rest[close + 1..];
        }
        out.push_str(rest);
        out
    }
}

/// Whether a finding at `path` may be an artifact of leaving the fields at `removed` out:
/// it is about one of them, inside one, one of their ancestors, or a field of the same
/// mapping (rules across fields, such as `ecrRegion` with `type`).
fn touches_removed(path: &str, removed: &[String]) -> bool {
    let under = |inner: &str, outer: &str| {
        outer.is_empty()
            || (inner.starts_with(outer)
                && matches!(inner.as_bytes().get(outer.len()), Some(b'.' | b'[')))
    };
    removed.iter().any(|r| {
        path == r
            || under(path, r)
            || under(r, path)
            || (!r.ends_with(']') && parent_path(r) == parent_path(path))
    })
}

/// Round-trip check: the paths of keys the user wrote (in `written`) that do not survive
/// deserialize + serialize of `value`: a lenient type (the embedded Kubernetes types)
/// ignored them, so they are unknown.
fn dropped_keys<T: Serialize>(written: &Node, value: &T) -> Vec<String> {
    let understood = serde_json::to_value(value).unwrap_or(serde_json::Value::Null);
    let mut unknown = Vec::new();
    find_dropped_keys(written, &understood, "", &mut unknown);
    unknown
}

fn find_dropped_keys(
    written: &Node,
    understood: &serde_json::Value,
    path: &str,
    out: &mut Vec<String>,
) {
    use serde_json::Value;
    match understood {
        Value::Object(u) => {
            let Some(w) = written.entries() else { return };
            for entry in w {
                let child = join_key(path, &entry.key);
                match u.get(&entry.key) {
                    Some(uv) => find_dropped_keys(&entry.value, uv, &child, out),
                    None if !entry.value.is_null() => out.push(child),
                    None => {}
                }
            }
        }
        Value::Array(u) => {
            let Some(w) = written.items() else { return };
            for (i, (wv, uv)) in w.iter().zip(u.iter()).enumerate() {
                find_dropped_keys(wv, uv, &join_index(path, i), out);
            }
        }
        _ => {}
    }
}

/// Reads a file, naming it in the error.
pub fn read_file(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|e| Error::io(path, e))
}

/// What to do about a merge conflict in plugins.yaml: only its author can choose between
/// two declarations.
const PLUGINS_CONFLICT_ADVICE: &str = "resolve the merge conflict by hand: keep the declarations \
     you want and delete the marker lines, then run `plugsync lock`";

/// What to do about a merge conflict in plugins.lock.
pub const LOCK_CONFLICT_ADVICE: &str = "run `plugsync lock` to resolve the merge conflict: it \
     reads both sides, keeps the pins plugins.yaml still declares (re-checking a plugin the two \
     sides pin differently against its source), and writes plugins.lock; then commit it";

/// What to do about a plugins.lock that does not read (a hand edit, a bad merge).
pub const LOCK_REPAIR_ADVICE: &str = "run `plugsync lock` to repair plugins.lock: it keeps \
     every pin it can still read, resolves the rest afresh and says which; then commit it";

/// A diagnostic about a whole file (no line): what to do about the ones before it.
fn advice(file: &Path, message: &str) -> Diagnostic {
    Diagnostic {
        file: file.to_path_buf(),
        line: 0,
        column: 0,
        path: String::new(),
        message: message.to_string(),
    }
}

/// Parses and validates a `plugins.yaml` text. `file` is only used in messages.
///
/// Every problem is reported in one pass, in the order of the file: those serde finds
/// (unknown fields, wrong types), and those the rules beyond the schema find in what
/// remains, except where a field already in error could be the cause.
pub fn load_plugin_set(file: &Path, text: &str) -> Result<LoadedPluginSet, Error> {
    if let Some(mut found) = conflict::diagnostics(file, text) {
        found.push(advice(file, PLUGINS_CONFLICT_ADVICE));
        return Err(Error::Invalid(Diagnostics(found)));
    }
    let parsed = parse_checked::<PluginSet>(file, text, RoundTrip::Check);
    let Some(doc) = parsed.doc else {
        return Err(Error::Invalid(Diagnostics(parsed.errors)));
    };
    if parsed.errors.is_empty() {
        return validate::validate_plugin_set(doc).map_err(Error::Invalid);
    }
    let mut found = parsed.errors;
    let more = match validate::validate_plugin_set(doc) {
        Ok(_) => Vec::new(),
        Err(d) => d.0,
    };
    found.extend(rest_findings(text, more, &parsed.removed, &parsed.shifts));
    found.sort_by_key(|d| (d.line == 0, d.line, d.column));
    Err(Error::Invalid(Diagnostics(found)))
}

/// The findings of the semantic checks on a document with fields left out: mapped back to
/// the paths and positions as written, without those the missing fields may have caused.
fn rest_findings(
    text: &str,
    findings: Vec<Diagnostic>,
    removed: &[String],
    shifts: &Shifts,
) -> Vec<Diagnostic> {
    let index = std::sync::OnceLock::new();
    findings
        .into_iter()
        .filter_map(|mut d| {
            let original = shifts.original(&d.path);
            if original != d.path {
                let pos = index.get_or_init(|| Index::build(text)).nearest(&original);
                (d.line, d.column, d.path) = (pos.line, pos.column, original);
            }
            (!touches_removed(&d.path, removed)).then_some(d)
        })
        .collect()
}

/// Parses and checks a `plugins.lock` text: format, digests, and that each entry's
/// identifier and plugin id agree with its name, version and checksum. Every problem is
/// reported, followed by what to run: `plugsync lock` repairs a damaged lock and resolves
/// a merge conflict in it (see [`salvage_lock`]).
pub fn load_lock(file: &Path, text: &str) -> Result<Document<PluginLock>, Error> {
    if let Some(mut found) = conflict::diagnostics(file, text) {
        found.push(advice(file, LOCK_CONFLICT_ADVICE));
        return Err(Error::Invalid(Diagnostics(found)));
    }
    let parsed = parse_checked::<PluginLock>(file, text, RoundTrip::Skip);
    let mut found = parsed.errors;
    if let Some(doc) = parsed.doc {
        match validate::validate_lock(&doc) {
            Ok(()) if found.is_empty() => return Ok(doc),
            Ok(()) => {}
            Err(more) if found.is_empty() => found = more.0,
            Err(more) => {
                found.extend(rest_findings(text, more.0, &parsed.removed, &parsed.shifts));
                found.sort_by_key(|d| (d.line == 0, d.line, d.column));
            }
        }
    }
    found.push(advice(file, LOCK_REPAIR_ADVICE));
    Err(Error::Invalid(Diagnostics(found)))
}

pub use salvage::{salvage_lock, SalvagedLock};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::LockedPlugin;

    fn lock_entry(name: &str, version: &str, plugin_id: &str) -> LockedPlugin {
        LockedPlugin {
            name: name.into(),
            version: version.into(),
            source: format!("https://h.example:8443/{name}/{version}.difypkg"),
            sha256: "0b1b57fd4a506fba6c7bd97303771c29c51ecbf0dfd6e1432df01b242913b39b".into(),
            checksum: "2e18973c".into(),
            unique_identifier: format!("{name}:{version}@2e18973c"),
            plugin_id: plugin_id.into(),
            signature: Some("unsigned".into()),
        }
    }

    /// What `plugsync lock` writes reads back as the same lock, whatever its strings look
    /// like to YAML (numbers, booleans, null, comment and mapping characters).
    #[test]
    fn a_written_lock_reads_back_as_written() {
        let mut lock = PluginLock::new(vec![
            lock_entry("a/b", "2.0.0", "2e189731c2b8dbcecb2baf24747cd80e"),
            lock_entry("a/c", "1.0", "12345678901234567890123456789012"),
            lock_entry("a/d", "true", "null"),
            lock_entry("a/e", "it's # x", "0b101"),
            lock_entry("a/f", "yes", "1e3"),
        ]);
        lock.record_images([crate::model::LockedImage {
            inputs_hash: "5f30c23042195a597c676f807ab7c992".into(),
            image: "registry.example/p-12345678901234567890123456789012:1.0".into(),
            digest: "sha256:04ac00e1fe406a1483f762e49f06aac8".into(),
        }]);
        let written = lock.to_yaml();
        let parsed = parse_checked::<PluginLock>(Path::new("f"), &written, RoundTrip::Skip);
        assert!(parsed.errors.is_empty(), "{:?}\n{written}", parsed.errors);
        assert_eq!(parsed.doc.unwrap().value, lock, "{written}");
    }

    /// A plain scalar written where text is expected reads as its text (`version: 1.0` is
    /// "1.0", not the number 1), also in what remains once fields in error are left out.
    #[test]
    fn plain_scalars_read_as_text_where_text_is_expected() {
        let head = "apiVersion: plugsync.dev/v1alpha1\nkind: PluginLock\n";
        let entry = "name: a\n  version: 1.10\n  source: s\n  sha256: h\n  checksum: c\n  \
                     unique_identifier: u\n  plugin_id: p\n";
        let text = format!("{head}plugins:\n- {entry}  extra: 1\n");
        let parsed = parse_checked::<PluginLock>(Path::new("f"), &text, RoundTrip::Skip);
        assert_eq!(parsed.errors.len(), 1, "{:?}", parsed.errors);
        assert_eq!(parsed.errors[0].path, "plugins[0].extra");
        assert_eq!(parsed.doc.unwrap().value.plugins[0].version, "1.10");
    }
}
