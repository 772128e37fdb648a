//! Unified diffs of normalized YAML, for people (pull request comments, `plan` output).

use serde_json::Value;
use similar::TextDiff;

use super::{normalize, secret, Action, Change, Compare};

/// Renders a change as a unified diff of normalized YAML, live side first:
/// `--- live/<key>` / `+++ desired/<key>` headers, `context_lines` lines of context.
///
/// A create shows every line added, a delete every line removed, an unchanged object
/// renders as the empty string. Under [`Compare::DesiredSubset`] fields only live has
/// (API server defaults) are left out, so the diff shows what plan compared. Secret
/// values show as `***`, or `*** (changed)` on the desired side when they differ
/// (`stringData` is shown folded into `data`). Keys are sorted and nothing depends on
/// time or environment, so equal input gives byte-identical output.
pub fn display_diff(change: &Change, context_lines: usize) -> String {
    let key = change.key.to_string();
    display_diff_between(
        change,
        context_lines,
        &format!("live/{key}"),
        &format!("desired/{key}"),
    )
}

/// [`display_diff`] with headers of the caller's choosing (`--- old_header` / `+++
/// new_header`): a pull-request diff names its sides `base/<key>` and `head/<key>`, and an
/// upgrade shows the old version's object (`change.live`) against the new one's
/// (`change.desired`), whose keys differ.
pub fn display_diff_between(
    change: &Change,
    context_lines: usize,
    old_header: &str,
    new_header: &str,
) -> String {
    if change.action == Action::Unchanged {
        return String::new();
    }
    let (desired, live) = display_forms(change);
    let old = to_yaml(live.as_ref());
    let new = to_yaml(desired.as_ref());
    TextDiff::from_lines(&old, &new)
        .unified_diff()
        .context_radius(context_lines)
        .header(old_header, new_header)
        .to_string()
}

/// The desired and live objects as the diff shows them: normalized, Secret values
/// masked, and under `DesiredSubset` live cut down to the fields desired has.
fn display_forms(change: &Change) -> (Option<Value>, Option<Value>) {
    let mut desired = change.desired.as_ref().map(normalize);
    let mut live = change.live.as_ref().map(normalize);
    if let (Some(shown), Some(raw)) = (&mut desired, &change.desired) {
        if secret::is_secret(raw) {
            secret::mask_for_display(shown, raw, change.live.as_ref());
        }
    }
    if let (Some(shown), Some(raw)) = (&mut live, &change.live) {
        if secret::is_secret(raw) {
            secret::mask_for_display(shown, raw, None);
        }
    }
    if change.compare == Compare::DesiredSubset {
        if let (Some(d), Some(l)) = (&desired, &live) {
            live = Some(project(l, d));
        }
    }
    (desired, live)
}

/// `live` restricted to the fields `shape` has: map keys only `live` has are dropped,
/// list elements are cut down pairwise (extra live elements stay whole).
fn project(live: &Value, shape: &Value) -> Value {
    match (live, shape) {
        (Value::Object(l), Value::Object(s)) => Value::Object(
            l.iter()
                .filter_map(|(k, v)| s.get(k).map(|sv| (k.clone(), project(v, sv))))
                .collect(),
        ),
        (Value::Array(l), Value::Array(s)) => Value::Array(
            l.iter()
                .enumerate()
                .map(|(i, v)| s.get(i).map_or_else(|| v.clone(), |sv| project(v, sv)))
                .collect(),
        ),
        _ => live.clone(),
    }
}

fn to_yaml(value: Option<&Value>) -> String {
    match value {
        None => String::new(),
        // A JSON value always serializes to YAML; say so rather than panic if it ever fails.
        Some(v) => {
            crate::yaml::to_string(v).unwrap_or_else(|e| format!("# cannot render as YAML: {e}\n"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn project_keeps_only_the_desired_shape() {
        let live = json!({"a": 1, "b": {"c": 2, "d": 3}, "l": [{"x": 1, "y": 2}, {"z": 3}]});
        let shape = json!({"b": {"c": 0}, "l": [{"x": 0}]});
        assert_eq!(
            project(&live, &shape),
            json!({"b": {"c": 2}, "l": [{"x": 1}, {"z": 3}]})
        );
    }
}
