//! The `tojson` filter, and template values whose JSON is written once.
//!
//! Templates interpolate nearly every value through `tojson` (JSON is YAML, so no value can
//! break the document), and a plugin's labels, annotations, environment, resources and
//! spec are printed by several templates each. Going through minijinja's dynamic values,
//! each one was converted from its Rust type into a tree of minijinja values, then
//! serialized from that tree to JSON at every use: most of the time of rendering them.
//!
//! A [`prepared`] value is written to JSON once, straight from its Rust type, and `tojson`
//! hands that text back. Anything else a template does with it (`labels.team`, a loop, a
//! test, `length`) sees the same minijinja value as before, built from the Rust value the
//! first time it is asked for, so templates cannot tell the difference: tests hold the
//! two forms to the same output.

use std::fmt;
use std::sync::{Arc, OnceLock};

use minijinja::value::{Enumerator, Kwargs, Object, ObjectRepr};
use minijinja::{Error, ErrorKind, Value};
use serde::Serialize;

/// `value` as a template value whose `tojson` output is computed now, once. Mappings and
/// sequences become a [`Prepared`] object; scalars (cheap to print, and compared with
/// `==` in templates, which an object cannot mimic) stay plain values.
pub(crate) fn prepared<T>(value: T) -> Value
where
    T: Serialize + Send + Sync + 'static,
{
    let Ok(json) = serde_json::to_string(&value) else {
        // Not representable as JSON: `tojson` reports it at the use, as it did before.
        return Value::from_serialize(&value);
    };
    let repr = match json.as_bytes().first() {
        Some(b'{') => ObjectRepr::Map,
        Some(b'[') => ObjectRepr::Seq,
        _ => return Value::from_serialize(&value),
    };
    Value::from_object(Prepared {
        json: Value::from_safe_string(escape_for_html(json)),
        repr,
        value: OnceLock::new(),
        build: Box::new(move || Value::from_serialize(&value)),
    })
}

/// A JSON object as a template mapping whose entries are each [`prepared`] (a JSON
/// object's keys are sorted, as a mapping built from it by minijinja sorts them); any
/// other value as is.
pub(crate) fn prepared_entries(value: serde_json::Value) -> Value {
    match value {
        serde_json::Value::Object(entries) => entries
            .into_iter()
            .map(|(key, value)| (key, prepared(value)))
            .collect(),
        other => Value::from_serialize(&other),
    }
}

/// A mapping or sequence with its `tojson` output ready; every other use goes to the
/// minijinja value of the same data, built on first use.
struct Prepared {
    /// What `tojson` gives for it: compact, HTML-escaped, marked safe.
    json: Value,
    repr: ObjectRepr,
    value: OnceLock<Value>,
    build: Box<dyn Fn() -> Value + Send + Sync>,
}

impl Prepared {
    fn value(&self) -> &Value {
        self.value.get_or_init(|| (self.build)())
    }
}

impl fmt::Debug for Prepared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.value(), f)
    }
}

impl Object for Prepared {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        self.repr
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        self.value().as_object()?.get_value(key)
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        match self.value().try_iter() {
            Ok(items) => Enumerator::Iter(Box::new(items)),
            Err(_) => Enumerator::NonEnumerable,
        }
    }

    fn enumerator_len(self: &Arc<Self>) -> Option<usize> {
        self.value().len()
    }
}

/// minijinja's built-in `tojson`, byte for byte (compact JSON, or pretty with `indent`;
/// `<`, `>`, `&` and `'` escaped as `\u003c`-style escapes so the output is safe in HTML
/// too), without its character-by-character copy when there is nothing to escape, and
/// without any work for a [`prepared`] value printed bare.
pub(crate) fn tojson(value: &Value, indent: Option<Value>, args: Kwargs) -> Result<Value, Error> {
    // Nearly always called bare (`value | tojson`): no keyword arguments to look up.
    let bare = args.args().next().is_none();
    if bare && indent.is_none() {
        if let Some(prepared) = value.downcast_object_ref::<Prepared>() {
            return Ok(prepared.json.clone());
        }
        // Names, images, hashes: a string with nothing to escape is itself in quotes.
        if let Some(text) = value.as_str().filter(|text| !needs_escaping(text)) {
            let mut json = String::with_capacity(text.len() + 2);
            json.push('"');
            json.push_str(text);
            json.push('"');
            return Ok(Value::from_safe_string(json));
        }
    }
    let indent = match indent {
        Some(indent) => Some(indent),
        None if bare => None,
        None => args.get("indent")?,
    };
    let indent = match indent {
        None => None,
        Some(val) => match bool::try_from(val.clone()).ok() {
            Some(true) => Some(2),
            Some(false) => None,
            None => Some(usize::try_from(val)?),
        },
    };
    if !bare {
        args.assert_all_used()?;
    }
    let json = match indent {
        Some(indent) => {
            let mut out = Vec::new();
            let indentation = " ".repeat(indent);
            let formatter = serde_json::ser::PrettyFormatter::with_indent(indentation.as_bytes());
            let mut ser = serde_json::Serializer::with_formatter(&mut out, formatter);
            value
                .serialize(&mut ser)
                .map_err(json_error)
                .and_then(|()| String::from_utf8(out).map_err(json_error))
        }
        None => serde_json::to_string(value).map_err(json_error),
    }?;
    Ok(Value::from_safe_string(escape_for_html(json)))
}

/// Whether `text` has a character JSON escapes (`"`, `\\`, controls) or `tojson` escapes
/// for HTML (`<`, `>`, `&`, `'`).
fn needs_escaping(text: &str) -> bool {
    text.bytes()
        .any(|b| b < 0x20 || matches!(b, b'"' | b'\\' | b'<' | b'>' | b'&' | b'\''))
}

/// `json` with `<`, `>`, `&` and `'` written as `\u003c`-style escapes (still the same
/// JSON), as minijinja's `tojson` writes them.
fn escape_for_html(json: String) -> String {
    let bytes = json.as_bytes();
    if memchr::memchr3(b'<', b'>', b'&', bytes).is_none() && memchr::memchr(b'\'', bytes).is_none()
    {
        return json;
    }
    let mut escaped = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        match c {
            '<' => escaped.push_str("\\u003c"),
            '>' => escaped.push_str("\\u003e"),
            '&' => escaped.push_str("\\u0026"),
            '\'' => escaped.push_str("\\u0027"),
            _ => escaped.push(c),
        }
    }
    escaped
}

fn json_error(err: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::new(ErrorKind::InvalidOperation, "cannot serialize to JSON").with_source(err)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::{EnvVar, ResourceRequirements, Toleration};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use minijinja::{Environment, UndefinedBehavior};
    use serde_json::json;

    use super::*;

    fn environment() -> Environment<'static> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.add_filter("tojson", tojson);
        env
    }

    #[test]
    fn tojson_matches_the_builtin_byte_for_byte() {
        let builtin = Environment::new();
        let mut ours = Environment::new();
        ours.add_filter("tojson", tojson);
        let value = json!({
            "plain": "abc", "html": "<a href='x'>&amp;</a>", "unicode": "é ✓ \u{2028}",
            "escapes": "tab\there \"quoted\" back\\slash \u{1}\u{7f}\n",
            "each": ["", "\"", "\\", "<", ">", "&", "'", "\u{0}", "\u{1f}", " ", "~", "\u{7f}", "é"],
            "n": [1, -2, 3.5, null, true], "nested": {"b": {"c": []}, "a": {}},
        });
        for template in [
            "{{ v | tojson }}",
            "{{ v.plain | tojson }}",
            "{{ v.html | tojson }}",
            "{{ v.escapes | tojson }}",
            "{{ v.unicode | tojson }}",
            "{% for s in v.each %}{{ s | tojson }};{% endfor %}",
            "{{ v | tojson(indent=2) }}",
            "{{ v | tojson(true) }}",
            "{{ v | tojson(false) }}",
            "{{ v | tojson(4) }}",
            "{{ v.n | tojson }}",
        ] {
            let render = |env: &Environment<'_>| {
                env.render_str(template, minijinja::context! { v => &value })
                    .map_err(|e| e.to_string())
            };
            assert_eq!(render(&ours), render(&builtin), "{template}");
        }
        assert!(ours.render_str("{{ 1 | tojson(bogus=1) }}", ()).is_err());
    }

    /// Every use a template can make of a value gives the same text, or the same error,
    /// whether the value is prepared or plain.
    #[track_caller]
    fn assert_same_in_templates<T: Serialize + Clone + Send + Sync + 'static>(value: T) {
        let env = environment();
        let plain = Value::from_serialize(&value);
        let ready = prepared(value.clone());
        for template in [
            "{{ v | tojson }}",
            "{{ v | tojson(indent=2) }}",
            "{{ {'in': v} | tojson }}",
            "{{ [v, v] | tojson }}",
            "{{ v }}",
            "{{ v | pprint }}",
            "{% for x in v %}[{{ x }}]{% endfor %}",
            "{% for k, x in v | items %}[{{ k }}={{ x | tojson }}]{% endfor %}",
            "{% if v %}true{% else %}false{% endif %}",
            "{{ v | length }}",
            "{{ v | list | tojson }}",
            "{{ v | dictsort | tojson }}",
            "{{ v.team }}",
            "{{ v.name | tojson }}",
            "{{ v['app.kubernetes.io/name'] }}",
            "{{ v[0] | tojson }}",
            "{{ v[-1] | tojson }}",
            "{{ v[0].name }}",
            "{{ v.limits.memory }}",
            "{{ v is mapping }} {{ v is sequence }} {{ v is string }} {{ v is none }}",
            "{{ v == w }} {{ v != w }}",
            "{{ v | default('none') }}",
            "{{ 'team' in v }}",
        ] {
            let render = |v: &Value| {
                env.render_str(template, minijinja::context! { v => v, w => &plain })
                    .map_err(|e| e.to_string())
            };
            assert_eq!(render(&ready), render(&plain), "{template}");
        }
    }

    #[test]
    fn prepared_values_render_as_plain_ones() {
        assert_same_in_templates(BTreeMap::from([
            ("app.kubernetes.io/name", "agent".to_string()),
            ("team", "<a&b's>".to_string()),
        ]));
        assert_same_in_templates(BTreeMap::<String, String>::new());
        assert_same_in_templates(vec![
            EnvVar {
                name: "A".into(),
                value: Some("é ✓ \u{2028}".into()),
                value_from: None,
            },
            EnvVar {
                name: "B".into(),
                ..EnvVar::default()
            },
        ]);
        assert_same_in_templates(Vec::<EnvVar>::new());
        assert_same_in_templates(ResourceRequirements {
            limits: Some(BTreeMap::from([(
                "memory".into(),
                Quantity("256Mi".into()),
            )])),
            requests: Some(BTreeMap::from([("cpu".into(), Quantity("100m".into()))])),
            ..ResourceRequirements::default()
        });
        assert_same_in_templates(vec![Toleration {
            key: Some("dedicated".into()),
            operator: Some("Equal".into()),
            toleration_seconds: Some(30),
            ..Toleration::default()
        }]);
        assert_same_in_templates(json!({"nested": {"b": [1, 2.5, null, true]}, "a": {}}));
        // Scalars stay plain values.
        assert_same_in_templates("svc-1".to_string());
        assert_same_in_templates(3);
        assert_same_in_templates(serde_json::Value::Null);
    }

    #[test]
    fn only_mappings_and_sequences_are_prepared() {
        let is_prepared = |v: &Value| v.downcast_object_ref::<Prepared>().is_some();
        assert!(is_prepared(&prepared(BTreeMap::from([("a", 1)]))));
        assert!(is_prepared(&prepared(vec![1, 2])));
        assert!(!is_prepared(&prepared("a")));
        assert!(!is_prepared(&prepared(json!(null))));
        assert!(!is_prepared(&prepared(json!(7))));
    }

    #[test]
    fn entries_of_an_object_are_prepared_one_by_one() {
        let entries = prepared_entries(json!({"b": [1], "a": null, "c": {"x": "y"}}));
        let env = environment();
        let text = env
            .render_str(
                "{% for k in v %}{{ k }}={{ v[k] | tojson }};{% endfor %}",
                minijinja::context! { v => entries.clone() },
            )
            .unwrap();
        assert_eq!(
            text, r#"a=null;b=[1];c={"x":"y"};"#,
            "sorted keys, same JSON"
        );
        assert!(entries
            .get_attr("b")
            .unwrap()
            .downcast_object_ref::<Prepared>()
            .is_some());
        assert_eq!(prepared_entries(json!("s")), Value::from("s"));
    }
}
