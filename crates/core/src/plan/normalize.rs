//! Normalization: drop what the API server writes, so only intent is compared and shown.

use std::borrow::Cow;

use serde_json::{Map, Value};

use super::secret;

/// `metadata` fields the API server populates; none of them is something a user declares.
/// (`ownerReferences` is not among them: it is declared on purpose.)
const SERVER_METADATA: &[&str] = &[
    "managedFields",
    "resourceVersion",
    "uid",
    "generation",
    "creationTimestamp",
    "selfLink",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
];

/// Written by `kubectl apply`: a copy of the whole object (Secret values included).
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Returns `obj` without the fields the API server populates, ready to compare or show.
///
/// Removes `status`, the server-written `metadata` fields (`managedFields`,
/// `resourceVersion`, `uid`, `generation`, `creationTimestamp`, `selfLink`,
/// `deletionTimestamp`, `deletionGracePeriodSeconds`), the
/// `kubectl.kubernetes.io/last-applied-configuration` annotation (and `annotations` if
/// that leaves it empty), and map entries set to `null` (Kubernetes reads them as absent).
/// Keeps `ownerReferences`. Sorts map keys. Masks every value under a Secret's `data` and
/// `stringData` as `***`, so a normalized object is always safe to print; any object of
/// kind `Secret` counts, whatever its apiVersion, erring on the side of not leaking.
pub fn normalize(obj: &Value) -> Value {
    let mut out = canonical(obj);
    if let Value::Object(top) = &mut out {
        top.remove("status");
        if let Some(Value::Object(meta)) = top.get_mut("metadata") {
            for field in SERVER_METADATA {
                meta.remove(*field);
            }
            if let Some(Value::Object(annotations)) = meta.get_mut("annotations") {
                annotations.remove(LAST_APPLIED);
                if annotations.is_empty() {
                    meta.remove("annotations");
                }
            }
        }
        if secret::is_secret(obj) {
            secret::mask_values(top);
        }
    }
    out
}

/// A copy with keys sorted (whatever serde_json's map order) and `null` map entries dropped.
fn canonical(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> =
                map.iter().filter(|(_, v)| !v.is_null()).collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k.clone(), canonical(v)))
                    .collect::<Map<String, Value>>(),
            )
        }
        Value::Array(items) => Value::Array(items.iter().map(canonical).collect()),
        other => other.clone(),
    }
}

/// `obj` itself, or its normalized (masked) form if it is a Secret: for `Debug` output.
pub(crate) fn redact(obj: &Value) -> Cow<'_, Value> {
    if secret::is_secret(obj) {
        Cow::Owned(normalize(obj))
    } else {
        Cow::Borrowed(obj)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn removes_server_fields_and_status_but_keeps_owner_references() {
        let live = json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": "abc", "namespace": "dify",
                "managedFields": [{"manager": "kubectl"}],
                "resourceVersion": "123", "uid": "u-1", "generation": 4,
                "creationTimestamp": "2024-01-01T00:00:00Z", "selfLink": "/apis/x",
                "deletionTimestamp": "2024-01-02T00:00:00Z", "deletionGracePeriodSeconds": 30,
                "ownerReferences": [{"kind": "Plugin", "name": "abc", "uid": "p-1"}],
                "annotations": {LAST_APPLIED: "{}", "team": "a"},
                "labels": {"app": "abc"}
            },
            "spec": {"replicas": 1},
            "status": {"readyReplicas": 1}
        });
        assert_eq!(
            normalize(&live),
            json!({
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {
                    "name": "abc", "namespace": "dify",
                    "ownerReferences": [{"kind": "Plugin", "name": "abc", "uid": "p-1"}],
                    "annotations": {"team": "a"},
                    "labels": {"app": "abc"}
                },
                "spec": {"replicas": 1}
            })
        );
    }

    #[test]
    fn drops_annotations_left_empty_and_null_entries() {
        let obj = json!({
            "kind": "ConfigMap",
            "metadata": {"name": "a", "annotations": {LAST_APPLIED: "{}"}, "labels": null},
            "data": {"k": null, "j": "v"},
            "list": [null, {"x": null}]
        });
        assert_eq!(
            normalize(&obj),
            json!({"kind": "ConfigMap", "metadata": {"name": "a"}, "data": {"j": "v"}, "list": [null, {}]})
        );
    }

    #[test]
    fn masks_every_secret_value_and_leaves_other_kinds_alone() {
        let secret = json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
            "type": "Opaque",
            "data": {"password": "aHVudGVyMg=="},
            "stringData": {"token": "tok-123"}
        });
        let text = normalize(&secret).to_string();
        assert!(
            !text.contains("aHVudGVyMg==") && !text.contains("tok-123"),
            "{text}"
        );
        assert_eq!(
            normalize(&secret),
            json!({
                "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
                "type": "Opaque",
                "data": {"password": "***"},
                "stringData": {"token": "***"}
            })
        );
        let config = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "b"}});
        assert_eq!(normalize(&config), config);
    }

    #[test]
    fn is_deterministic_and_idempotent() {
        let obj = json!({"b": 1, "a": {"d": [1, 2], "c": "x"}, "status": {}});
        let once = normalize(&obj);
        assert_eq!(once, normalize(&once));
        assert_eq!(once.to_string(), r#"{"a":{"c":"x","d":[1,2]},"b":1}"#);
    }
}
