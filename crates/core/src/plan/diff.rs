//! Field-level comparison: which paths of a desired object differ from the live one.

use serde_json::{Number, Value};

use super::path::join_key;
use super::{normalize, secret, Compare};

/// The sorted, deduplicated paths where `desired` and `live` differ after normalization.
///
/// Secret values are compared raw (see [`secret`]) and reported as `data.<key>`.
pub(crate) fn changed_paths(desired: &Value, live: &Value, compare: Compare) -> Vec<String> {
    let exact = compare == Compare::Exact;
    let (d, l) = (normalize(desired), normalize(live));
    let mut paths = Vec::new();
    if secret::is_secret(desired) || secret::is_secret(live) {
        walk(
            &secret::without_values(&d),
            &secret::without_values(&l),
            exact,
            "",
            &mut paths,
        );
        paths.extend(secret::changed_keys(desired, live, exact));
    } else {
        walk(&d, &l, exact, "", &mut paths);
    }
    paths.sort();
    paths.dedup();
    paths
}

/// Records in `out` every path under `path` where `desired` and `live` differ. Objects
/// recurse key by key (live-only keys count only when `exact`); lists of equal length
/// recurse pairwise; anything else must be equal.
fn walk(desired: &Value, live: &Value, exact: bool, path: &str, out: &mut Vec<String>) {
    match (desired, live) {
        (Value::Object(d), Value::Object(l)) => {
            for (k, dv) in d {
                match l.get(k) {
                    Some(lv) => walk(dv, lv, exact, &join_key(path, k), out),
                    None => out.push(join_key(path, k)),
                }
            }
            if exact {
                out.extend(
                    l.keys()
                        .filter(|k| !d.contains_key(*k))
                        .map(|k| join_key(path, k)),
                );
            }
        }
        (Value::Array(d), Value::Array(l)) if d.len() == l.len() => {
            for (i, (dv, lv)) in d.iter().zip(l).enumerate() {
                walk(dv, lv, exact, &format!("{path}[{i}]"), out);
            }
        }
        (Value::Number(d), Value::Number(l)) => {
            if !numbers_equal(d, l) {
                out.push(path.to_string());
            }
        }
        _ => {
            if desired != live {
                out.push(path.to_string());
            }
        }
    }
}

/// Numbers by value, so `1` (from YAML `1`) equals `1.0` (from a float somewhere).
fn numbers_equal(a: &Number, b: &Number) -> bool {
    if let (Some(x), Some(y)) = (a.as_i64(), b.as_i64()) {
        return x == y;
    }
    if let (Some(x), Some(y)) = (a.as_u64(), b.as_u64()) {
        return x == y;
    }
    a.as_f64() == b.as_f64()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn subset(d: Value, l: Value) -> Vec<String> {
        changed_paths(&d, &l, Compare::DesiredSubset)
    }

    fn exact(d: Value, l: Value) -> Vec<String> {
        changed_paths(&d, &l, Compare::Exact)
    }

    #[test]
    fn subset_ignores_fields_only_live_has_at_every_depth() {
        let desired = json!({"spec": {"containers": [{"name": "a", "image": "i:1"}]}});
        let live = json!({
            "spec": {
                "containers": [{"name": "a", "image": "i:1", "terminationMessagePath": "/dev/termination-log"}],
                "restartPolicy": "Always"
            }
        });
        assert!(subset(desired.clone(), live.clone()).is_empty());
        assert_eq!(
            exact(desired, live),
            [
                "spec.containers[0].terminationMessagePath",
                "spec.restartPolicy"
            ]
        );
    }

    #[test]
    fn subset_reports_missing_and_changed_fields() {
        let desired =
            json!({"spec": {"replicas": 2, "paused": false, "containers": [{"image": "i:2"}]}});
        let live = json!({"spec": {"replicas": 1, "containers": [{"image": "i:1", "name": "a"}]}});
        assert_eq!(
            subset(desired, live),
            ["spec.containers[0].image", "spec.paused", "spec.replicas"]
        );
    }

    #[test]
    fn lists_of_different_length_differ_as_a_whole() {
        let desired = json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}]}});
        let live = json!({"spec": {"containers": [{"name": "a", "extra": 1}]}});
        assert_eq!(subset(desired, live), ["spec.containers"]);
    }

    #[test]
    fn numbers_compare_by_value_but_not_across_types() {
        assert!(exact(json!({"n": 1}), json!({"n": 1.0})).is_empty());
        assert!(exact(json!({"n": u64::MAX}), json!({"n": u64::MAX})).is_empty());
        assert_eq!(exact(json!({"n": 1}), json!({"n": 2})), ["n"]);
        assert_eq!(exact(json!({"n": -1}), json!({"n": u64::MAX})), ["n"]);
        assert_eq!(exact(json!({"n": 80}), json!({"n": "80"})), ["n"]);
        // Quantities are strings and compared as written.
        assert_eq!(
            exact(json!({"cpu": "100m"}), json!({"cpu": "0.1"})),
            ["cpu"]
        );
    }

    #[test]
    fn type_changes_and_nulls() {
        assert_eq!(subset(json!({"a": {"b": 1}}), json!({"a": [1]})), ["a"]);
        assert!(subset(json!({"a": null}), json!({})).is_empty());
        assert!(exact(json!({}), json!({"a": null})).is_empty());
        // An empty map is not the same as an absent one (`emptyDir: {}` means something).
        assert_eq!(subset(json!({"emptyDir": {}}), json!({})), ["emptyDir"]);
    }

    #[test]
    fn odd_keys_are_quoted_in_paths() {
        assert_eq!(
            exact(
                json!({"metadata": {"labels": {"app.kubernetes.io/name": "a"}}}),
                json!({"metadata": {"labels": {"app.kubernetes.io/name": "b"}}})
            ),
            [r#"metadata.labels["app.kubernetes.io/name"]"#]
        );
        assert_eq!(join_key("", "spec"), "spec");
        assert_eq!(join_key("a", ""), r#"a[""]"#);
    }

    #[test]
    fn secrets_compare_values_by_key_and_the_rest_generically() {
        let desired = json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "stringData": {"password": "hunter2"}});
        let live = json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "data": {"password": "aHVudGVyMg=="}});
        assert_eq!(subset(desired, live), ["type"]);
    }
}
