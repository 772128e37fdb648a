//! A document read into a `serde_json::Value` straight from the events of serde-saphyr's
//! parser (granit-parser, which serde-saphyr re-exports and reads with).
//!
//! Why: every object a template renders is read into a value to be checked and printed
//! again, and going through serde (`serde_saphyr::from_str::<Value>`) costs about three
//! times what the parser itself does. The grammar stays the library's: this only builds
//! the value from the parser's events, in the YAML 1.2 core schema as serde-saphyr
//! resolves it with plugsync's options. Whatever it is not sure to read exactly as
//! serde-saphyr does (tags, anchors and aliases, merge keys, duplicate keys, keys that are
//! not text, numbers other than JSON's, deep nesting, several documents, any syntax error)
//! it leaves to serde-saphyr, so the value and every error message are the library's.
//! Tests hold the two to the same value on every object the built-in templates render
//! and on the scalar spellings where the schema decides.

use serde_json::{Map, Number, Value};
use serde_saphyr::granit_parser::{Event, Parser, ScalarStyle, StrInput};

/// serde-saphyr's default nesting budget (`Budget::max_depth`): deeper documents go to it,
/// so it refuses them as it would have.
const MAX_DEPTH: usize = 64;

/// Larger texts go to serde-saphyr, whose budget caps scalar bytes in total (64 MiB).
const MAX_TEXT_BYTES: usize = 16 << 20;

/// A collection being built.
enum Frame {
    Seq(Vec<Value>),
    /// A mapping and the key whose value comes next, if its key has been read.
    Map(Map<String, Value>, Option<String>),
}

/// `text` (one document) as a value, or `None` when serde-saphyr must read it: outside
/// the plain subset described in the module's documentation, or not YAML at all.
pub(crate) fn from_events(text: &str) -> Option<Value> {
    build(text, false)
}

/// [`from_events`], stopping once the document has its `apiVersion`, `kind` and
/// `metadata` (its `name` and `namespace`, if it has both, when they are read before the
/// rest of `metadata`), which templates write first: what the pull-request diff needs of an
/// object it knows to be the same at both revisions (its key, and that it is the
/// template's object), without reading the rest (labels, annotations, spec). A document
/// that does not have them first is read whole.
pub(crate) fn identity_from_events(text: &str) -> Option<Value> {
    build(text, true)
}

/// The identity of the object being built, once [`identity_from_events`] has all of it:
/// the top-level mapping so far, with its `metadata` so far.
fn identified(stack: &mut [Frame]) -> Option<Value> {
    let has = |map: &Map<String, Value>, keys: &[&str]| keys.iter().all(|k| map.contains_key(*k));
    match stack {
        [Frame::Map(root, None)] if has(root, &["apiVersion", "kind", "metadata"]) => {
            Some(Value::Object(std::mem::take(root)))
        }
        [Frame::Map(root, Some(key)), Frame::Map(metadata, None)]
            if key == "metadata"
                && has(root, &["apiVersion", "kind"])
                && has(metadata, &["name", "namespace"]) =>
        {
            let mut root = std::mem::take(root);
            root.insert("metadata".into(), Value::Object(std::mem::take(metadata)));
            Some(Value::Object(root))
        }
        _ => None,
    }
}

fn build(text: &str, identity: bool) -> Option<Value> {
    if text.len() > MAX_TEXT_BYTES {
        return None;
    }
    let mut options = serde_saphyr::granit_parser::Options::default();
    options.emit_comments = false;
    let mut parser = Parser::with_options(StrInput::new(text), options);
    let mut stack: Vec<Frame> = Vec::new();
    let mut root: Option<Value> = None;
    let mut documents = 0;
    while let Some(next) = parser.next_event() {
        let (event, _span) = next.ok()?;
        let value = match event {
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => continue,
            Event::DocumentStart(..) => {
                documents += 1;
                if documents > 1 {
                    return None;
                }
                continue;
            }
            Event::Scalar(text, style, anchor, tag) => {
                if anchor != 0 || tag.is_some() {
                    return None;
                }
                scalar(text, style)?
            }
            Event::SequenceStart(_, anchor, ref tag) | Event::MappingStart(_, anchor, ref tag) => {
                if anchor != 0 || tag.is_some() || stack.len() >= MAX_DEPTH {
                    return None;
                }
                stack.push(match event {
                    Event::SequenceStart(..) => Frame::Seq(Vec::new()),
                    _ => Frame::Map(Map::new(), None),
                });
                continue;
            }
            Event::SequenceEnd => match stack.pop()? {
                Frame::Seq(items) => Value::Array(items),
                Frame::Map(..) => return None,
            },
            Event::MappingEnd => match stack.pop()? {
                Frame::Map(map, None) => Value::Object(map),
                _ => return None,
            },
            // Aliases, and whatever else the parser may report.
            _ => return None,
        };
        match stack.last_mut() {
            None if root.is_none() => root = Some(value),
            None => return None,
            Some(Frame::Seq(items)) => items.push(value),
            Some(Frame::Map(map, key)) => match key.take() {
                Some(key) => {
                    map.insert(key, value);
                }
                None => {
                    // Only text keys; `<<` is a merge key to serde-saphyr; a duplicate is
                    // its error to report.
                    let Value::String(name) = value else {
                        return None;
                    };
                    if name == "<<" || map.contains_key(&name) {
                        return None;
                    }
                    *key = Some(name);
                }
            },
        }
        if identity {
            if let Some(value) = identified(&mut stack) {
                return Some(value);
            }
        }
    }
    if !stack.is_empty() {
        return None;
    }
    root
}

/// A scalar's value in the core schema, as serde-saphyr resolves it for an untyped value
/// with `strict_booleans`; `None` for the spellings left to it (numbers other than
/// JSON's, `.inf`, `.nan`).
fn scalar(text: std::borrow::Cow<'_, str>, style: ScalarStyle) -> Option<Value> {
    if style != ScalarStyle::Plain {
        return Some(Value::String(text.into_owned()));
    }
    match &*text {
        "" | "~" | "null" | "Null" | "NULL" => return Some(Value::Null),
        "true" | "True" | "TRUE" => return Some(Value::Bool(true)),
        "false" | "False" | "FALSE" => return Some(Value::Bool(false)),
        _ => {}
    }
    // A number starts with a digit, after an optional sign; a sign before a letter is
    // text (`-ec`; `-inf` too, to serde-saphyr).
    let bytes = text.as_bytes();
    let unsigned = match bytes[0] {
        b'-' | b'+' => &bytes[1..],
        _ => bytes,
    };
    match unsigned {
        [b'0'..=b'9', ..] => json_number(&text),
        // `.5`, `.inf`, `.NaN`; other text after a dot (`.dockerconfigjson`) is text.
        [b'.', b'0'..=b'9', ..] | [] => None,
        [b'.', rest @ ..]
            if rest.eq_ignore_ascii_case(b"inf") || rest.eq_ignore_ascii_case(b"nan") =>
        {
            None
        }
        _ => Some(Value::String(text.into_owned())),
    }
}

/// A number in JSON's grammar (`-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`): an
/// integer that fits 64 bits, or a finite float; `None` for anything else.
fn json_number(text: &str) -> Option<Value> {
    let bytes = text.as_bytes();
    let digits = |from: usize| {
        bytes[from..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count()
    };
    let mut at = usize::from(bytes[0] == b'-');
    let whole = digits(at);
    if whole == 0 || (whole > 1 && bytes[at] == b'0') {
        return None;
    }
    at += whole;
    let integer = at == bytes.len();
    if bytes.get(at) == Some(&b'.') {
        let fraction = digits(at + 1);
        if fraction == 0 {
            return None;
        }
        at += 1 + fraction;
    }
    if matches!(bytes.get(at), Some(b'e' | b'E')) {
        at += 1;
        if matches!(bytes.get(at), Some(b'+' | b'-')) {
            at += 1;
        }
        let exponent = digits(at);
        if exponent == 0 {
            return None;
        }
        at += exponent;
    }
    if at != bytes.len() {
        return None;
    }
    if integer {
        return if bytes[0] == b'-' {
            text.parse::<i64>().ok().map(Value::from)
        } else {
            text.parse::<u64>().ok().map(Value::from)
        };
    }
    let float: f64 = text.parse().ok()?;
    Number::from_f64(float)
        .filter(|_| float.is_finite())
        .map(Value::Number)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What serde-saphyr reads `text` into, with plugsync's options.
    fn library(text: &str) -> Result<Value, String> {
        serde_saphyr::from_str_with_options(text, super::super::options())
            .map_err(|e| e.to_string())
    }

    /// Wherever the builder answers, it answers what serde-saphyr does.
    fn agrees(text: &str) -> bool {
        match from_events(text) {
            Some(value) => {
                assert_eq!(Ok(value), library(text), "{text}");
                true
            }
            None => false,
        }
    }

    #[test]
    fn scalars_resolve_as_serde_saphyr_resolves_them() {
        let answered = [
            "a",
            "text with spaces",
            "~",
            "null",
            "Null",
            "NULL",
            "",
            "true",
            "True",
            "TRUE",
            "false",
            "False",
            "FALSE",
            "yes",
            "no",
            "on",
            "off",
            "y",
            "n",
            "0",
            "1",
            "-0",
            "-1",
            "42",
            "18446744073709551615",
            "-9223372036854775808",
            "0.5",
            "-0.5",
            "1.0",
            "1e5",
            "1E5",
            "1e-5",
            "-2.5E+3",
            "1.25e2",
            "inf",
            "nan",
            "NaN",
            "Infinity",
            "\"quoted 1\"",
            "'single'",
            "\"true\"",
            "'null'",
            "\"\"",
            "v1.2.3",
            "http://x",
            "x-1",
            "-ec",
            "-inf",
            "+Infinity",
            "-nan",
            "--flag=1",
            ".dockerconfigjson",
            ".",
            ".in",
            "|\n  block\n",
            ">\n  folded\n  text\n",
        ];
        for scalar in answered {
            let text = format!("k: {scalar}\n");
            assert!(agrees(&text), "left to the library: {text}");
        }
        // Left to the library (its own answer or error), never answered differently.
        let left = [
            "0127",
            "+1",
            "0x1F",
            "0o17",
            "0b101",
            "1_000",
            ".5",
            "1.",
            ".5e3",
            ".inf",
            "-.inf",
            ".nan",
            ".NaN",
            "-.INF",
            "18446744073709551616",
            "-9223372036854775809",
            "1e999",
            "1.2.3",
            "1a",
            "!!str 1",
            "!!int \"3\"",
            "&a x",
            "0.",
            "1e",
            "1.e5",
        ];
        for scalar in left {
            let text = format!("k: {scalar}\n");
            assert!(!agrees(&text), "answered: {text}");
        }
    }

    #[test]
    fn structures_outside_the_plain_subset_go_to_the_library() {
        for text in [
            "a: &x 1\nb: *x\n",
            "base: &b {x: 1}\nc:\n  <<: *b\n",
            "a: 1\na: 2\n",
            "? [a]\n: 1\n",
            "1: one\n",
            "true: yes\n",
            "--- a\n--- b\n",
            "",
            "# only a comment\n",
            "a: [1, 2\n",
            "a:\n\t- b\n",
            "!!map {a: 1}\n",
        ] {
            assert!(from_events(text).is_none(), "{text:?}");
        }
        let deep = format!(
            "{}1{}",
            "[".repeat(MAX_DEPTH + 1),
            "]".repeat(MAX_DEPTH + 1)
        );
        assert!(from_events(&deep).is_none());
        let within = format!("{}1{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(agrees(&within));
    }

    #[test]
    fn documents_read_the_same_both_ways() {
        for text in [
            "# a comment\napiVersion: v1\nkind: Service # trailing\nmetadata:\n  name: a\n  \
             labels: {\"app\": \"a\", tier: t0}\nspec:\n  ports:\n  - port: 80\n    \
             targetPort: 8080\n  - {\"port\": 443, \"name\": \"tls\"}\n",
            "---\na: [1, -2, 3.5, \"x\", null, true, [], {}]\nb:\n- - nested\n  - 2\n...\n",
            "'quoted key': 1\n\"1\": one\nempty:\nlist:\n- \n- x\n",
            "script: |\n  #!/bin/sh\n  echo \"$1\"\nfolded: >-\n  a\n  b\n",
            "[1, 2, 3]\n",
            "plain scalar document\n",
            "{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"data\":{\"k\":\"v\\n\\u00e9\"}}\n",
        ] {
            assert!(agrees(text), "left to the library: {text}");
        }
    }

    #[test]
    fn the_identity_is_read_up_to_metadata_and_documents_without_it_whole() {
        let text = "apiVersion: v1\nkind: Service\nmetadata:\n  name: a\n  namespace: n\n\
                    spec: {ports: [{port: 80}]}\n";
        assert_eq!(
            identity_from_events(text),
            Some(serde_json::json!({
                "apiVersion": "v1", "kind": "Service", "metadata": {"name": "a", "namespace": "n"}
            }))
        );
        // Name and namespace first: the rest of metadata is not read either.
        let text = "apiVersion: v1\nkind: Service\nmetadata:\n  name: a\n  namespace: n\n  \
                    labels: {a: b}\n";
        assert_eq!(
            identity_from_events(text),
            Some(serde_json::json!({
                "apiVersion": "v1", "kind": "Service", "metadata": {"name": "a", "namespace": "n"}
            }))
        );
        // No namespace (cluster-scoped): all of metadata.
        let text = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n  labels: {a: b}\n\
                    spec: {}\n";
        assert_eq!(
            identity_from_events(text),
            Some(serde_json::json!({
                "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a", "labels": {"a": "b"}}
            }))
        );
        // Written in another order, or without all three: read whole.
        for text in [
            "kind: Service\nspec: {}\nmetadata: {name: a}\napiVersion: v1\n",
            "apiVersion: v1\nkind: Service\nspec: {a: 1}\n",
        ] {
            assert_eq!(identity_from_events(text), from_events(text), "{text}");
            assert!(agrees(text));
        }
    }

    /// Reads each object a template renders both ways, and requires the builder's answer.
    struct BothWays;

    impl crate::render::ObjectForm for BothWays {
        type Object = ();

        fn read(
            text: &str,
            _: &crate::render::Expected<'_>,
        ) -> Result<(), crate::render::RenderError> {
            assert!(agrees(text), "left to the library: {text}");
            Ok(())
        }
    }

    /// The built-in templates' objects, for plugins with and without runtime settings,
    /// never need serde-saphyr's slower reading, and read to its value.
    #[tokio::test]
    async fn every_object_the_built_in_templates_render_is_read_by_the_builder() {
        use crate::resolve::cache::Cache;
        let tmp = tempfile::tempdir().expect("tempdir");
        let cache = Cache::open(&tmp.path().join("cache")).expect("cache");
        let repo = crate::synth::generate_repo(&tmp.path().join("repo"), 40, &cache)
            .expect("synthetic repository");
        let resolver = crate::resolve::tests::resolver(&cache);
        let snapshot = crate::source::WorkTree::new(&repo.dir).expect("worktree");
        let state = crate::pipeline::resolved_state(&snapshot, "plugins.yaml", &resolver)
            .await
            .expect("loads")
            .expect("present");
        let settings = crate::render::RenderSettings::default();
        let objects: usize = state
            .render_map_as::<BothWays, usize>(&settings, |_, plugin| plugin.objects.len())
            .expect("renders")
            .into_iter()
            .sum();
        assert!(objects >= 3 * 40, "{objects} objects");
    }
}
