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

    // Round-trip check: a key the user wrote that does not survive deserialize + serialize
    // was ignored by a lenient type (the embedded Kubernetes types), so it is unknown.
    let written: serde_json::Value = serde_yaml::from_str(text).unwrap_or(serde_json::Value::Null);
    let understood = serde_json::to_value(&value).unwrap_or(serde_json::Value::Null);
    let mut unknown = Vec::new();
    find_dropped_keys(&written, &understood, "", &mut unknown);
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

fn find_dropped_keys(
    written: &serde_json::Value,
    understood: &serde_json::Value,
    path: &str,
    out: &mut Vec<String>,
) {
    use serde_json::Value;
    match (written, understood) {
        (Value::Object(w), Value::Object(u)) => {
            for (k, wv) in w {
                let child = locate::join_key(path, k);
                match u.get(k) {
                    Some(uv) => find_dropped_keys(wv, uv, &child, out),
                    None if !wv.is_null() => out.push(child),
                    None => {}
                }
            }
        }
        (Value::Array(w), Value::Array(u)) => {
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
    let doc = parse_document::<PluginLock>(file, text).map_err(Error::Invalid)?;
    validate::validate_lock(&doc).map_err(Error::Invalid)?;
    Ok(doc)
}
