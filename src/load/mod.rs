//! Load: parse and validate `plugins.yaml` and `plugins.lock`.
//!
//! Nothing downstream ever sees an invalid document: every problem found is reported at
//! once, each with file, line, column and field path, before anything is resolved or written.

pub mod locate;
mod validate;

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Diagnostic, Diagnostics, Error};
use crate::model::{PluginLock, PluginSet};
pub use locate::{LocationIndex, Position};
pub use validate::{DeclaredPlugin, DeclaredSource, LoadedPluginSet};

/// Default name of the declared set, relative to the repository folder.
pub const PLUGINS_FILE: &str = "plugins.yaml";
/// Default name of the lockfile, next to the declared set.
pub const LOCK_FILE: &str = "plugins.lock";

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
    index: std::sync::OnceLock<LocationIndex>,
}

impl<T> Document<T> {
    fn index(&self) -> &LocationIndex {
        self.index.get_or_init(|| LocationIndex::build(&self.text))
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

/// Parses `text` strictly into `T`: unknown fields, wrong types and duplicate keys are errors,
/// including inside embedded Kubernetes types (which serde alone would accept silently).
pub fn parse_document<T>(file: &Path, text: &str) -> Result<Document<T>, Diagnostics>
where
    T: DeserializeOwned + Serialize,
{
    parse_checked(file, text, RoundTrip::Check)
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

fn parse_checked<T>(
    file: &Path,
    text: &str,
    round_trip: RoundTrip,
) -> Result<Document<T>, Diagnostics>
where
    T: DeserializeOwned + Serialize,
{
    let index = std::sync::OnceLock::new();
    let index_of = || index.get_or_init(|| LocationIndex::build(text));
    let located = |path: String, pos: Option<Position>, message: String| Diagnostic {
        file: file.to_path_buf(),
        line: pos.map(|p| p.line).unwrap_or(0),
        column: pos.map(|p| p.column).unwrap_or(0),
        path,
        message,
    };
    if text.trim().is_empty() {
        return Err(Diagnostics(vec![located(
            String::new(),
            None,
            "the file is empty".into(),
        )]));
    }
    // The fast path first: most documents are valid and within its subset. Anything else,
    // including every document that does not deserialize, takes the serde_yaml path below
    // unchanged, so its diagnostics (with line and column) are exactly what they were.
    let (value, unknown) = match crate::yaml::from_str::<T>(text) {
        Some((value, written)) => {
            let unknown = dropped_keys(&written, &value, round_trip);
            (value, unknown)
        }
        None => {
            let (value, written) = parse_slow(text, &located, &index_of)?;
            let unknown = dropped_keys(&written, &value, round_trip);
            (value, unknown)
        }
    };
    if !unknown.is_empty() {
        return Err(Diagnostics(
            unknown
                .into_iter()
                .map(|path| {
                    let pos = index_of().key(&path).or_else(|| index_of().value(&path));
                    let field = path.rsplit(['.', '[']).next().unwrap_or(&path).to_string();
                    located(path, pos, format!("unknown field `{field}`"))
                })
                .collect(),
        ));
    }

    Ok(Document {
        value,
        file: file.to_path_buf(),
        text: std::sync::Arc::from(text),
        index,
    })
}

/// The reference path: `serde_yaml` reads `text` into `T` (with the path and position of
/// any error) and, separately, into a JSON value for the round-trip check.
fn parse_slow<'t, T: DeserializeOwned>(
    text: &str,
    located: &impl Fn(String, Option<Position>, String) -> Diagnostic,
    index_of: &impl Fn() -> &'t LocationIndex,
) -> Result<(T, serde_json::Value), Diagnostics> {
    let deserializer = serde_yaml::Deserializer::from_str(text);
    let value: T = match serde_path_to_error::deserialize(deserializer) {
        Ok(v) => v,
        Err(e) => {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            let inner = e.into_inner();
            let message = clean_serde_message(&inner.to_string(), &path);
            // serde reports a duplicate key where the mapping started; the second occurrence
            // (the one to delete) is more useful, and the index remembers the last one.
            let duplicate = message
                .strip_prefix("duplicate field `")
                .and_then(|rest| rest.split('`').next())
                .and_then(|field| index_of().key(&locate::join_key(&path, field)));
            let pos = duplicate
                .or_else(|| {
                    inner.location().map(|l| Position {
                        line: l.line(),
                        column: l.column(),
                    })
                })
                .or_else(|| Some(index_of().nearest(&path)));
            return Err(Diagnostics(vec![located(path, pos, message)]));
        }
    };
    let written: serde_json::Value = serde_yaml::from_str(text).unwrap_or(serde_json::Value::Null);
    Ok((value, written))
}

/// Round-trip check: the paths of keys the user wrote (in `written`) that do not survive
/// deserialize + serialize of `value`: a lenient type (the embedded Kubernetes types)
/// ignored them, so they are unknown. None when `round_trip` says the check is skipped.
fn dropped_keys<W: Written, T: Serialize>(
    written: &W,
    value: &T,
    round_trip: RoundTrip,
) -> Vec<String> {
    if round_trip == RoundTrip::Skip {
        return Vec::new();
    }
    let understood = serde_json::to_value(value).unwrap_or(serde_json::Value::Null);
    let mut unknown = Vec::new();
    find_dropped_keys(written, &understood, "", &mut unknown);
    unknown
}

/// A document as written, in either form it is parsed into: the fast path's tree or
/// serde_yaml's value.
trait Written: Sized {
    fn is_null(&self) -> bool;
    /// The entries, when this is a mapping.
    fn entries(&self) -> Option<impl Iterator<Item = (&str, &Self)>>;
    /// The items, when this is a sequence.
    fn items(&self) -> Option<&[Self]>;
}

impl Written for serde_json::Value {
    fn is_null(&self) -> bool {
        self.is_null()
    }

    fn entries(&self) -> Option<impl Iterator<Item = (&str, &Self)>> {
        Some(self.as_object()?.iter().map(|(k, v)| (k.as_str(), v)))
    }

    fn items(&self) -> Option<&[Self]> {
        self.as_array().map(Vec::as_slice)
    }
}

impl Written for crate::yaml::Node<'_> {
    fn is_null(&self) -> bool {
        matches!(self, crate::yaml::Node::Null)
    }

    fn entries(&self) -> Option<impl Iterator<Item = (&str, &Self)>> {
        match self {
            crate::yaml::Node::Mapping(entries) => {
                Some(entries.iter().map(|(k, v)| (k.as_ref(), v)))
            }
            _ => None,
        }
    }

    fn items(&self) -> Option<&[Self]> {
        match self {
            crate::yaml::Node::Sequence(items) => Some(items),
            _ => None,
        }
    }
}

fn find_dropped_keys<W: Written>(
    written: &W,
    understood: &serde_json::Value,
    path: &str,
    out: &mut Vec<String>,
) {
    use serde_json::Value;
    match understood {
        Value::Object(u) => {
            let Some(w) = written.entries() else { return };
            for (k, wv) in w {
                let child = locate::join_key(path, k);
                match u.get(k) {
                    Some(uv) => find_dropped_keys(wv, uv, &child, out),
                    None if !wv.is_null() => out.push(child),
                    None => {}
                }
            }
        }
        Value::Array(u) => {
            let Some(w) = written.items() else { return };
            for (i, (wv, uv)) in w.iter().zip(u.iter()).enumerate() {
                find_dropped_keys(wv, uv, &locate::join_index(path, i), out);
            }
        }
        _ => {}
    }
}

/// serde_yaml appends " at line L column C" and sometimes prefixes the path; we print both
/// ourselves, in a fixed format.
fn clean_serde_message(message: &str, path: &str) -> String {
    let mut m = message.trim();
    if let Some(i) = m.rfind(" at line ") {
        if m[i..].contains(" column ") {
            m = &m[..i];
        }
    }
    // serde_yaml prefixes the path of the mapping it was in, which is ours or an ancestor.
    if let Some((prefix, rest)) = m.split_once(": ") {
        if !prefix.contains(' ') && path.starts_with(prefix) {
            m = rest;
        }
    }
    m.to_string()
}

/// Reads a file, naming it in the error.
pub fn read_file(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|e| Error::io(path, e))
}

/// Parses and validates a `plugins.yaml` text. `file` is only used in messages.
pub fn load_plugin_set(file: &Path, text: &str) -> Result<LoadedPluginSet, Error> {
    let doc = parse_document::<PluginSet>(file, text).map_err(Error::Invalid)?;
    validate::validate_plugin_set(doc).map_err(Error::Invalid)
}

/// Parses and checks a `plugins.lock` text: format, digests, and that each entry's
/// identifier and plugin id agree with its name, version and checksum.
pub fn load_lock(file: &Path, text: &str) -> Result<Document<PluginLock>, Error> {
    let doc = parse_checked::<PluginLock>(file, text, RoundTrip::Skip).map_err(Error::Invalid)?;
    validate::validate_lock(&doc).map_err(Error::Invalid)?;
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::LockedPlugin;

    /// A document and its JSON value, as a path loads it.
    type Loaded<T> = (T, serde_json::Value);

    /// Both paths on one text: the fast one (if it answers) and the serde_yaml one.
    fn both<T: DeserializeOwned>(
        text: &str,
    ) -> (Option<Loaded<T>>, Result<Loaded<T>, Diagnostics>) {
        let index = std::sync::OnceLock::new();
        let index_of = || index.get_or_init(|| LocationIndex::build(text));
        let located = |path: String, pos: Option<Position>, message: String| Diagnostic {
            file: PathBuf::from("f"),
            line: pos.map(|p| p.line).unwrap_or(0),
            column: pos.map(|p| p.column).unwrap_or(0),
            path,
            message,
        };
        (
            crate::yaml::from_str(text).map(|(value, written)| (value, written.to_value())),
            parse_slow(text, &located, &index_of),
        )
    }

    /// Wherever the fast path answers, it answers what the serde_yaml path does; returns
    /// whether it answered.
    fn agree<T: DeserializeOwned + Serialize>(text: &str) -> bool {
        let (fast, slow) = both::<T>(text);
        let Some((value, written)) = fast else {
            return false;
        };
        let (slow_value, slow_written) = slow
            .unwrap_or_else(|e| panic!("fast path loaded what serde_yaml refuses ({e:?}): {text}"));
        assert_eq!(written, slow_written, "{text}");
        assert_eq!(
            serde_json::to_value(&value).unwrap(),
            serde_json::to_value(&slow_value).unwrap(),
            "{text}"
        );
        true
    }

    fn lock_entry(name: &str, version: &str, plugin_id: &str) -> LockedPlugin {
        LockedPlugin {
            name: name.into(),
            version: version.into(),
            source: format!("https://h.example:8443/{name}/{version}.difypkg"),
            sha256: "0b1b57fd4a506fba6c7bd97303771c29c51ecbf0dfd6e1432df01b242913b39b".into(),
            checksum: "2e18973c".into(),
            unique_identifier: format!("{name}:{version}@2e18973c"),
            plugin_id: plugin_id.into(),
        }
    }

    #[test]
    fn both_paths_load_the_same_documents() {
        let mut lock = PluginLock::new(vec![
            lock_entry("a/b", "2.0.0", "2e189731c2b8dbcecb2baf24747cd80e"),
            lock_entry("a/c", "1.0", "12345678901234567890123456789012"),
            lock_entry("a/d", "true", "null"),
            lock_entry("a/e", "it's # x", "0b101"),
        ]);
        lock.record_images([crate::model::LockedImage {
            inputs_hash: "5f30c23042195a597c676f807ab7c992".into(),
            image: "registry.example/p-12345678901234567890123456789012:1.0".into(),
            digest: "sha256:04ac00e1fe406a1483f762e49f06aac8".into(),
        }]);
        let written = lock.to_yaml();
        assert!(agree::<PluginLock>(&written), "{written}");
        assert_eq!(
            crate::yaml::from_str::<PluginLock>(&written).unwrap().0,
            lock
        );
        assert!(agree::<PluginLock>(include_str!(
            "../../examples/plugins.lock"
        )));
        assert!(agree::<PluginSet>(include_str!(
            "../../examples/plugins.yaml"
        )));
        // Hand-written flow style (`runtime: {replicas: 2, labels: {tier: t0}}`).
        let synthetic = crate::synth::plugins_yaml(30);
        assert!(agree::<PluginSet>(&synthetic), "{synthetic}");
        for file in ["/tmp/b/repo/plugins.lock", "/tmp/b/repo/plugins.yaml"] {
            if let Ok(text) = std::fs::read_to_string(file) {
                if file.ends_with(".lock") {
                    assert!(agree::<PluginLock>(&text));
                } else {
                    assert!(agree::<PluginSet>(&text));
                }
            }
        }
    }

    /// Documents the fast parser reads but whose type serde_yaml reads differently (or
    /// refuses) go the serde_yaml way.
    #[test]
    fn what_serde_yaml_reads_differently_goes_the_slow_way() {
        let head = "apiVersion: plugsync.dev/v1alpha1\nkind: PluginLock\n";
        let entry = "name: a\n  version: 1\n  source: s\n  sha256: h\n  checksum: c\n  \
                     unique_identifier: u\n  plugin_id: p\n";
        for (body, slow_ok) in [
            // A plain `1` is a string to serde_yaml, a number to the fast parser.
            (format!("plugins:\n- {entry}"), true),
            ("plugins: null\n".to_string(), false),
            (
                "plugins:\n- [\"a\",\"1\",\"s\",\"h\",\"c\",\"u\",\"p\"]\n".into(),
                false,
            ),
            ("plugins: {}\n".into(), false),
            (
                "images: [{\"inputsHash\":\"h\",\"image\":\"i\",\"digest\":1}]\n".into(),
                true,
            ),
        ] {
            let text = format!("{head}{body}");
            assert!(crate::yaml::parse(&text).is_some(), "{text}");
            let (fast, slow) = both::<PluginLock>(&text);
            assert!(fast.is_none(), "{text}");
            assert_eq!(slow.is_ok(), slow_ok, "{text}");
        }
    }
}
