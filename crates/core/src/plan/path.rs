//! Field paths as the diff names them (`spec.template.spec.containers[0]`,
//! `metadata.labels["app.kubernetes.io/name"]`), shared by the field diff and the Secret
//! masking, which name the same fields.

use serde_json::Value;

/// Appends a map key to a path: `.key` for plain keys, `["key"]` for keys with dots,
/// slashes or other characters (`metadata.labels["app.kubernetes.io/name"]`).
pub(crate) fn join_key(path: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    match (plain, path.is_empty()) {
        (true, true) => key.to_string(),
        (true, false) => format!("{path}.{key}"),
        (false, _) => format!("{path}[{}]", Value::from(key)),
    }
}
