//! The labels and annotations of a plugin's objects: plugsync's own (the set, the plugin id,
//! the build inputs) over the recommended `app.kubernetes.io` ones and the user's.

use std::collections::BTreeMap;

use super::json::prepared;
use super::{
    PluginInput, ANNOTATION_BUILD_INPUTS, ANNOTATION_UNIQUE_IDENTIFIER, LABEL_PLUGINSET,
    LABEL_PLUGIN_ID,
};
use crate::model::PluginSet;

/// The labels and annotations the object templates see, each written to JSON once (see
/// `json`).
pub(super) struct ObjectLabels {
    /// Every object's (and its pods') labels.
    pub(super) labels: minijinja::Value,
    /// The Deployment's selector.
    pub(super) selector_labels: minijinja::Value,
    /// The Service's labels: without the attempt's instance, since it outlives retries.
    pub(super) service_labels: minijinja::Value,
    /// The Service's selector: any attempt of the plugin.
    pub(super) service_selector: minijinja::Value,
    /// Every object's annotations but the Service's.
    pub(super) annotations: minijinja::Value,
    /// The Service's annotations.
    pub(super) service_annotations: minijinja::Value,
}

impl ObjectLabels {
    /// The labels of `input`'s objects in `set`, rendered as `resource_name` from build
    /// inputs hashing to `inputs_hash`.
    pub(super) fn new(
        set: &PluginSet,
        input: &PluginInput<'_>,
        resource_name: &str,
        inputs_hash: &str,
    ) -> ObjectLabels {
        let locked = input.locked;
        let plugin_id = &locked.plugin_id;
        let mut labels: BTreeMap<String, String> = input.runtime.labels.clone().unwrap_or_default();
        let k8s_name = label_safe(&input.manifest.name);
        for (k, v) in [
            ("app.kubernetes.io/name", k8s_name.as_str()),
            ("app.kubernetes.io/instance", resource_name),
            ("app.kubernetes.io/version", &label_safe(&locked.version)),
            ("app.kubernetes.io/managed-by", "plugsync"),
            ("app.kubernetes.io/part-of", &set.metadata.name),
            (LABEL_PLUGINSET, &set.metadata.name),
            (LABEL_PLUGIN_ID, plugin_id),
        ] {
            labels.insert(k.to_string(), v.to_string());
        }
        // What templates print through `tojson` is written to JSON here, once (see `json`).
        let selector_labels = prepared(BTreeMap::from([
            ("app.kubernetes.io/instance", resource_name.to_string()),
            (LABEL_PLUGIN_ID, plugin_id.clone()),
        ]));
        let mut service_labels = labels.clone();
        service_labels.remove("app.kubernetes.io/instance");
        let (labels, service_labels) = (prepared(labels), prepared(service_labels));
        let service_selector = prepared(BTreeMap::from([
            (LABEL_PLUGINSET, set.metadata.name.clone()),
            (LABEL_PLUGIN_ID, plugin_id.clone()),
        ]));
        let annotations = prepared(BTreeMap::from([
            (
                ANNOTATION_UNIQUE_IDENTIFIER,
                locked.unique_identifier.clone(),
            ),
            (ANNOTATION_BUILD_INPUTS, inputs_hash.to_string()),
        ]));
        // The Service outlives rebuilds and retries: only the identity, so a rebuild does not
        // touch it.
        let service_annotations = prepared(BTreeMap::from([(
            ANNOTATION_UNIQUE_IDENTIFIER,
            locked.unique_identifier.clone(),
        )]));
        ObjectLabels {
            labels,
            selector_labels,
            service_labels,
            service_selector,
            annotations,
            service_annotations,
        }
    }
}

/// A Dify name (`[a-z0-9_-]{1,128}`) made into a valid label value (≤ 63, alphanumeric ends).
fn label_safe(value: &str) -> String {
    let cut: String = value.chars().take(63).collect();
    cut.trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_made_valid() {
        assert_eq!(label_safe("_agent-"), "agent");
        assert_eq!(label_safe(&"a".repeat(100)).len(), 63);
    }
}
