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
    // The fast path first: most documents are valid and within its subset. Anything else,
    // including every document that does not deserialize, takes the serde_yaml path below
    // unchanged, so its diagnostics (with line and column) are exactly what they were.
    let (value, written) = match parse_fast::<T>(text) {
        Some(parsed) => parsed,
        None => parse_slow(text, &located, &index_of)?,
    };

    // Round-trip check: a key the user wrote that does not survive deserialize + serialize
    // was ignored by a lenient type (the embedded Kubernetes types), so it is unknown.
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

/// `text` parsed by the fast parser and read into `T` as `serde_yaml` would, with the
/// document as `serde_yaml` reads it into a JSON value (for the round-trip check);
/// `None` when either step is not certain, and the caller takes the serde_yaml path.
///
/// Why the two paths agree whenever this answers: [`crate::yaml::parse`] answers only
/// when its value equals what `serde_yaml` parses into a `serde_json::Value`, and the
/// fast parser produces only plain `true`/`false`/`null`, plain decimal integers, and
/// strings (plain words that `serde_yaml` resolves to strings, or quoted/literal
/// scalars), in block or compact-JSON mappings and sequences without tags, anchors or
/// duplicate keys. [`strict::Strict`] then answers each request the way `serde_yaml`'s
/// deserializer answers it for such a node (a bool from a bool, an integer from an
/// integer visited as `u64` unless negative, a string from a string, `None` from null,
/// a struct or map from a mapping, a list from a sequence, a unit enum variant from a
/// string) and refuses everything where the two could differ, e.g. a `String` field
/// holding `1` or `true` (serde_yaml reads the plain scalar as a string; the value holds
/// a number or bool, so this refuses and the slow path gives serde_yaml's answer), `null`
/// for a list, a struct written as a list, an enum variant written as a map, bytes.
/// Map order: `serde_json::Map` sorts keys (no `preserve_order`), so `T` sees a
/// mapping's keys sorted rather than as written. No key repeats, and the types loaded
/// here (`PluginSet`, `PluginLock` and the Kubernetes types inside, all derived or
/// field-by-field `visit_map` impls and `BTreeMap`s) do not depend on the order of
/// distinct keys; a `T` that did (an `IndexMap` field) should not come this way.
fn parse_fast<T: DeserializeOwned>(text: &str) -> Option<(T, serde_json::Value)> {
    let written = crate::yaml::parse(text)?;
    let value = T::deserialize(strict::Strict::Value(&written)).ok()?;
    Some((value, written))
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

/// Reading a fast-parsed document into its type exactly as `serde_yaml` reads the text.
///
/// `serde_json::Value`'s own deserializer is more lenient than `serde_yaml`'s (it reads a
/// struct from an array, an enum from a one-key map, bytes from a string; and
/// `serde_yaml::Value`'s reads `null` as an empty list), so a document `serde_yaml`
/// refuses could load. [`Strict`] answers only the requests `serde_yaml` answers the same
/// way for every scalar the fast parser produces, and refuses the rest, which sends the
/// document down the `serde_yaml` path (its diagnostics included).
mod strict {
    use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
    use serde_json::Value;

    /// Any refusal: the caller falls back to `serde_yaml`, so no detail is kept.
    #[derive(Debug)]
    pub(super) struct Refused;

    impl std::fmt::Display for Refused {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("not on the fast path")
        }
    }

    impl std::error::Error for Refused {}

    impl de::Error for Refused {
        fn custom<M: std::fmt::Display>(_: M) -> Self {
            Refused
        }
    }

    /// A node of the parsed document: a value, or a mapping key (always a string).
    #[derive(Clone, Copy)]
    pub(super) enum Strict<'a> {
        Value(&'a Value),
        Key(&'a str),
    }

    impl<'a> Strict<'a> {
        fn str(self) -> Option<&'a str> {
            match self {
                Strict::Value(Value::String(s)) => Some(s),
                Strict::Key(s) => Some(s),
                _ => None,
            }
        }

        /// Integers as `serde_yaml` visits a plain integer: `u64` unless negative.
        fn number<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Refused> {
            match self {
                Strict::Value(Value::Number(n)) => match (n.as_u64(), n.as_i64()) {
                    (Some(u), _) => visitor.visit_u64(u),
                    (None, Some(i)) => visitor.visit_i64(i),
                    _ => Err(Refused),
                },
                _ => Err(Refused),
            }
        }
    }

    macro_rules! numbers {
        ($($method:ident)*) => {
            $(fn $method<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Refused> {
                self.number(visitor)
            })*
        };
    }

    macro_rules! strings {
        ($($method:ident)*) => {
            $(fn $method<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Refused> {
                visitor.visit_borrowed_str(self.str().ok_or(Refused)?)
            })*
        };
    }

    impl<'a> Deserializer<'a> for Strict<'a> {
        type Error = Refused;

        fn deserialize_any<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Refused> {
            match self {
                Strict::Key(s) => visitor.visit_borrowed_str(s),
                Strict::Value(value) => match value {
                    Value::Null => visitor.visit_unit(),
                    Value::Bool(b) => visitor.visit_bool(*b),
                    Value::Number(_) => self.number(visitor),
                    Value::String(s) => visitor.visit_borrowed_str(s),
                    Value::Array(items) => visitor.visit_seq(Seq(items.iter())),
                    Value::Object(map) => visitor.visit_map(Map {
                        iter: map.iter(),
                        value: None,
                    }),
                },
            }
        }

        fn deserialize_bool<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Refused> {
            match self {
                Strict::Value(Value::Bool(b)) => visitor.visit_bool(*b),
                _ => Err(Refused),
            }
        }

        numbers! {
            deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64 deserialize_i128
            deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64 deserialize_u128
            deserialize_f32 deserialize_f64
        }

        strings! { deserialize_char deserialize_str deserialize_string deserialize_identifier }

        fn deserialize_bytes<V: Visitor<'a>>(self, _: V) -> Result<V::Value, Refused> {
            Err(Refused)
        }

        fn deserialize_byte_buf<V: Visitor<'a>>(self, _: V) -> Result<V::Value, Refused> {
            Err(Refused)
        }

        fn deserialize_option<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Refused> {
            match self {
                Strict::Value(Value::Null) => visitor.visit_none(),
                _ => visitor.visit_some(self),
            }
        }

        fn deserialize_unit<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Refused> {
            match self {
                Strict::Value(Value::Null) => visitor.visit_unit(),
                _ => Err(Refused),
            }
        }

        fn deserialize_unit_struct<V: Visitor<'a>>(
            self,
            _: &'static str,
            visitor: V,
        ) -> Result<V::Value, Refused> {
            self.deserialize_unit(visitor)
        }

        fn deserialize_newtype_struct<V: Visitor<'a>>(
            self,
            _: &'static str,
            visitor: V,
        ) -> Result<V::Value, Refused> {
            visitor.visit_newtype_struct(self)
        }

        fn deserialize_seq<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Refused> {
            match self {
                Strict::Value(Value::Array(items)) => visitor.visit_seq(Seq(items.iter())),
                _ => Err(Refused),
            }
        }

        fn deserialize_tuple<V: Visitor<'a>>(
            self,
            _: usize,
            visitor: V,
        ) -> Result<V::Value, Refused> {
            self.deserialize_seq(visitor)
        }

        fn deserialize_tuple_struct<V: Visitor<'a>>(
            self,
            _: &'static str,
            _: usize,
            visitor: V,
        ) -> Result<V::Value, Refused> {
            self.deserialize_seq(visitor)
        }

        fn deserialize_map<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Refused> {
            match self {
                Strict::Value(Value::Object(map)) => visitor.visit_map(Map {
                    iter: map.iter(),
                    value: None,
                }),
                _ => Err(Refused),
            }
        }

        fn deserialize_struct<V: Visitor<'a>>(
            self,
            _: &'static str,
            _: &'static [&'static str],
            visitor: V,
        ) -> Result<V::Value, Refused> {
            self.deserialize_map(visitor)
        }

        /// Only a unit variant written as a string: `serde_yaml` reads other variants
        /// from tags (`!Variant`), which the fast parser never accepts.
        fn deserialize_enum<V: Visitor<'a>>(
            self,
            _: &'static str,
            _: &'static [&'static str],
            visitor: V,
        ) -> Result<V::Value, Refused> {
            visitor.visit_enum(UnitVariant(self.str().ok_or(Refused)?))
        }

        fn deserialize_ignored_any<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Refused> {
            visitor.visit_unit()
        }
    }

    struct Seq<'a>(std::slice::Iter<'a, Value>);

    impl<'a> SeqAccess<'a> for Seq<'a> {
        type Error = Refused;

        fn next_element_seed<S: DeserializeSeed<'a>>(
            &mut self,
            seed: S,
        ) -> Result<Option<S::Value>, Refused> {
            self.0
                .next()
                .map(|v| seed.deserialize(Strict::Value(v)))
                .transpose()
        }

        fn size_hint(&self) -> Option<usize> {
            Some(self.0.len())
        }
    }

    struct Map<'a> {
        iter: serde_json::map::Iter<'a>,
        value: Option<&'a Value>,
    }

    impl<'a> MapAccess<'a> for Map<'a> {
        type Error = Refused;

        fn next_key_seed<S: DeserializeSeed<'a>>(
            &mut self,
            seed: S,
        ) -> Result<Option<S::Value>, Refused> {
            match self.iter.next() {
                Some((k, v)) => {
                    self.value = Some(v);
                    seed.deserialize(Strict::Key(k)).map(Some)
                }
                None => Ok(None),
            }
        }

        fn next_value_seed<S: DeserializeSeed<'a>>(
            &mut self,
            seed: S,
        ) -> Result<S::Value, Refused> {
            seed.deserialize(Strict::Value(self.value.take().ok_or(Refused)?))
        }

        fn size_hint(&self) -> Option<usize> {
            Some(self.iter.len())
        }
    }

    struct UnitVariant<'a>(&'a str);

    impl<'a> de::EnumAccess<'a> for UnitVariant<'a> {
        type Error = Refused;
        type Variant = Self;

        fn variant_seed<S: DeserializeSeed<'a>>(
            self,
            seed: S,
        ) -> Result<(S::Value, Self), Refused> {
            Ok((seed.deserialize(Strict::Key(self.0))?, self))
        }
    }

    impl<'a> de::VariantAccess<'a> for UnitVariant<'a> {
        type Error = Refused;

        fn unit_variant(self) -> Result<(), Refused> {
            Ok(())
        }

        fn newtype_variant_seed<S: DeserializeSeed<'a>>(self, _: S) -> Result<S::Value, Refused> {
            Err(Refused)
        }

        fn tuple_variant<V: Visitor<'a>>(self, _: usize, _: V) -> Result<V::Value, Refused> {
            Err(Refused)
        }

        fn struct_variant<V: Visitor<'a>>(
            self,
            _: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Refused> {
            Err(Refused)
        }
    }
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
        (parse_fast(text), parse_slow(text, &located, &index_of))
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
        assert_eq!(parse_fast::<PluginLock>(&written).unwrap().0, lock);
        assert!(agree::<PluginLock>(include_str!(
            "../../examples/plugins.lock"
        )));
        assert!(agree::<PluginSet>(include_str!(
            "../../examples/plugins.yaml"
        )));
        agree::<PluginSet>(&crate::synth::plugins_yaml(30));
        for file in ["/tmp/b/repo/plugins.lock", "/tmp/b/repo/plugins.yaml"] {
            if let Ok(text) = std::fs::read_to_string(file) {
                if file.ends_with(".lock") {
                    assert!(agree::<PluginLock>(&text));
                } else {
                    agree::<PluginSet>(&text);
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
