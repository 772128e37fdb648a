//! Secrets: compared on their raw values, shown only as `***`.
//!
//! A hash of a value would still tell a reader whether it changed, but a hash of a
//! low-entropy secret (a short password) falls to brute force. So nothing derived from a
//! value ever leaves this module: comparisons happen here, on the raw values, and what
//! comes out is key names (`data.password`) and fixed masks.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::path::join_key;

/// What every Secret value is shown as.
pub(crate) const MASK: &str = "***";

/// What a desired Secret value that differs from the live one is shown as.
pub(crate) const MASK_CHANGED: &str = "*** (changed)";

/// The sections of a Secret that hold values.
const SECTIONS: [&str; 2] = ["data", "stringData"];

/// Whether `obj` holds secret values to mask: any object of kind `Secret`.
pub(crate) fn is_secret(obj: &Value) -> bool {
    obj.get("kind").and_then(Value::as_str) == Some("Secret")
}

/// Replaces every value under `data` and `stringData` with [`MASK`].
pub(crate) fn mask_values(obj: &mut Map<String, Value>) {
    for section in SECTIONS {
        if let Some(Value::Object(values)) = obj.get_mut(section) {
            for value in values.values_mut() {
                *value = Value::from(MASK);
            }
        }
    }
}

/// A copy without `data` and `stringData`, to compare the rest of a Secret generically.
pub(crate) fn without_values(obj: &Value) -> Value {
    let mut copy = obj.clone();
    if let Some(map) = copy.as_object_mut() {
        for section in SECTIONS {
            map.remove(section);
        }
    }
    copy
}

/// The Secret's values as the API server stores them: `data`, with `stringData` entries
/// base64-encoded on top (they win, as on the server). Live Secrets never have
/// `stringData`, so this is what makes a desired `stringData` comparable.
fn effective_data(obj: &Value) -> BTreeMap<&str, Cow<'_, Value>> {
    let mut data = BTreeMap::new();
    if let Some(values) = obj.get("data").and_then(Value::as_object) {
        for (k, v) in values.iter().filter(|(_, v)| !v.is_null()) {
            data.insert(k.as_str(), Cow::Borrowed(v));
        }
    }
    if let Some(values) = obj.get("stringData").and_then(Value::as_object) {
        for (k, v) in values.iter().filter(|(_, v)| !v.is_null()) {
            let encoded = match v {
                Value::String(s) => Cow::Owned(Value::String(base64(s.as_bytes()))),
                other => Cow::Borrowed(other),
            };
            data.insert(k.as_str(), encoded);
        }
    }
    data
}

/// The `data.<key>` paths whose values differ between two Secrets. With `exact`, keys
/// only `live` has count too.
pub(crate) fn changed_keys(desired: &Value, live: &Value, exact: bool) -> Vec<String> {
    let (d, l) = (effective_data(desired), effective_data(live));
    let mut paths: Vec<String> = d
        .iter()
        .filter(|(k, v)| l.get(*k) != Some(*v))
        .map(|(k, _)| join_key("data", k))
        .collect();
    if exact {
        paths.extend(
            l.keys()
                .filter(|k| !d.contains_key(*k))
                .map(|k| join_key("data", k)),
        );
    }
    paths
}

/// Replaces the values of a normalized Secret with one masked `data` map of its effective
/// keys (`stringData` folded in), marking keys whose raw value differs from `before`'s as
/// [`MASK_CHANGED`], so a diff shows which values changed and nothing of them.
pub(crate) fn mask_for_display(normalized: &mut Value, raw: &Value, before: Option<&Value>) {
    let before = before.map(effective_data);
    let data: Map<String, Value> = effective_data(raw)
        .into_iter()
        .map(|(k, v)| {
            let changed = before
                .as_ref()
                .and_then(|b| b.get(k))
                .is_some_and(|b| *b != v);
            let mask = if changed { MASK_CHANGED } else { MASK };
            (k.to_string(), Value::from(mask))
        })
        .collect();
    if let Some(map) = normalized.as_object_mut() {
        map.remove("stringData");
        if data.is_empty() {
            map.remove("data");
        } else {
            map.insert("data".into(), Value::Object(data));
        }
    }
}

/// Standard base64 with padding (RFC 4648), as Kubernetes stores Secret `data`.
fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::normalize;
    use serde_json::json;

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
            ("hunter2", "aHVudGVyMg=="),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded, "{plain:?}");
        }
    }

    #[test]
    fn string_data_compares_equal_to_the_same_value_in_data() {
        let desired = json!({"kind": "Secret", "stringData": {"password": "hunter2"}});
        let live = json!({"kind": "Secret", "data": {"password": "aHVudGVyMg=="}});
        assert!(changed_keys(&desired, &live, true).is_empty());
        let other = json!({"kind": "Secret", "data": {"password": "b3RoZXI="}});
        assert_eq!(changed_keys(&desired, &other, false), ["data.password"]);
    }

    #[test]
    fn extra_live_keys_count_only_when_exact() {
        let desired = json!({"kind": "Secret", "data": {"a": "YQ=="}});
        let live = json!({"kind": "Secret", "data": {"a": "YQ==", "tls.crt": "Yg=="}});
        assert!(changed_keys(&desired, &live, false).is_empty());
        assert_eq!(changed_keys(&desired, &live, true), [r#"data["tls.crt"]"#]);
    }

    #[test]
    fn display_masks_mark_changed_keys_only() {
        let live = json!({"kind": "Secret", "data": {"same": "YQ==", "diff": "Yg=="}});
        let desired =
            json!({"kind": "Secret", "data": {"same": "YQ==", "diff": "Yw==", "new": "ZA=="}});
        let mut shown = normalize(&desired);
        mask_for_display(&mut shown, &desired, Some(&live));
        assert_eq!(
            shown["data"],
            json!({"same": MASK, "diff": MASK_CHANGED, "new": MASK})
        );
    }
}
