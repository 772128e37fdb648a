//! The `Plugin` custom resource (`plugins.plugsync.dev`): one install of one plugin package.
//!
//! The git loop writes one `Plugin` per declared plugin; the plugin loop drives each through
//! build and run. Its spec carries everything the plugin loop needs, so the plugin loop never
//! has to read git: what the PR diff showed is exactly what runs.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::model::PluginSetSpec;

/// Desired state of one plugin install.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "plugsync.dev",
    version = "v1alpha1",
    kind = "Plugin",
    namespaced,
    status = "PluginStatus",
    shortname = "plg",
    category = "plugsync",
    printcolumn = r#"{"name":"Plugin","type":"string","description":"author/name of the package","jsonPath":".spec.name"}"#,
    printcolumn = r#"{"name":"Version","type":"string","jsonPath":".spec.version"}"#,
    printcolumn = r#"{"name":"Attempt","type":"integer","description":"build attempt (retry N is named <plugin-id>--N)","jsonPath":".spec.attempt"}"#,
    printcolumn = r#"{"name":"Status","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Endpoint","type":"string","priority":1,"jsonPath":".status.endpoint"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct PluginSpec {
    /// The PluginSet (`metadata.name` of plugins.yaml) this install belongs to.
    pub plugin_set: String,
    /// `author/name` from the package manifest.
    pub name: String,
    /// Version from the package manifest.
    pub version: String,
    /// Dify's `author/name:version@checksum`.
    pub unique_identifier: String,
    /// 32-hex id derived from the unique identifier; names every child object.
    pub plugin_id: String,
    /// 1 for the first build attempt, N for retry N (named `<plugin-id>--N`).
    pub attempt: u32,
    /// The exact package.
    pub package: PackageRef,
    /// How the plugin is run, from the package manifest.
    pub runner: RunnerSpec,
    /// What is built and where it is pushed.
    pub build: BuildRef,
    /// `spec.runtime` of the PluginSet merged with this plugin's overrides: everything the
    /// Deployment needs, so the controller renders it from the Plugin alone.
    #[serde(default)]
    pub runtime: crate::model::RuntimeSpec,
    /// The pushed image's digest (`sha256:…`) when already known: the Deployment runs it
    /// and no build runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_digest: Option<String>,
    /// The ConfigMap (`plugsync-templates-<set>-<hash of its content>`, applied with the
    /// set) holding the repository's template overrides this Plugin was rendered with; the
    /// controller renders its children from it. Absent: the built-in templates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub templates: Option<String>,
}

/// The package an install is built from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PackageRef {
    /// Exact source, as in plugins.lock.
    pub source: String,
    /// sha256 of the package file.
    pub sha256: String,
    /// Dify's checksum of the package contents.
    pub checksum: String,
}

/// Runner settings from the package manifest (`meta.runner`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunnerSpec {
    /// Always `python` today.
    pub language: String,
    /// Python version, e.g. `3.12`.
    pub version: String,
    /// Module run with `python -m`.
    pub entrypoint: String,
}

/// Build inputs and output location.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BuildRef {
    /// sha256 of the deterministic build context tar (package + Dockerfile).
    pub context_sha256: String,
    /// Hash of everything that determines the image (context, builder, destination): two
    /// installs with the same hash need only one build.
    pub inputs_hash: String,
    /// Destination `<prefix>/<plugin-name>-<plugin-id>:<version>`.
    pub image: String,
}

/// Lifecycle phase of a plugin install.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
pub enum PluginPhase {
    /// Accepted, nothing started yet.
    #[default]
    Pending,
    /// The build Job is running.
    Building,
    /// The Deployment is available behind its Service.
    Running,
    /// The last build failed; a retry may follow.
    BuildFailed,
    /// The Deployment cannot become available.
    Failed,
}

/// Observed state of a plugin install.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PluginStatus {
    /// Where the install is in its lifecycle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<PluginPhase>,
    /// `http://svc-<plugin-id>.<namespace>:8080` once running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Digest of the built image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_digest: Option<String>,
    /// The build inputs `imageDigest` was built from: a digest is reused only for the same
    /// inputs, and `plugsync lock --from-cluster` records it under this key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub built_inputs_hash: Option<String>,
    /// The last failed build of the current inputs, kept after its Job is garbage-collected
    /// so the failure is neither forgotten nor rebuilt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<BuildFailure>,
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// On a first attempt whose own build failed: the retry (`<plugin-id>--N`) whose phase,
    /// endpoint and conditions this status reports, so the Plugin git declares reads what the
    /// plugin is (`Running` once a retry runs), not its first build's failure forever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_attempt: Option<String>,
    /// `Ready`, `Reconciling`, `Stalled` (kstatus-compatible).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Why the install is where it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A failed build, as its Job reported it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BuildFailure {
    /// `spec.build.inputsHash` of the failed build.
    pub inputs_hash: String,
    /// Short reason (`Error`, `DeadlineExceeded`, …).
    pub reason: String,
    /// The builder's last words.
    pub message: String,
}

// A transparent wrapper of the model's spec: the CRD lives here beside the `Plugin` CRD, the
// file format in the model, and the model never imports the CRD back.
/// The desired state, exactly as plugins.yaml declares it; the status records what was applied
/// (inventory, commits, conditions).
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "plugsync.dev",
    version = "v1alpha1",
    kind = "PluginSet",
    root = "PluginSetResource",
    namespaced,
    status = "PluginSetStatus",
    shortname = "pset",
    category = "plugsync",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Plugins","type":"integer","jsonPath":".status.pluginCount"}"#,
    printcolumn = r#"{"name":"Running","type":"integer","jsonPath":".status.phases.Running"}"#,
    printcolumn = r#"{"name":"Commit","type":"string","jsonPath":".status.lastAppliedCommit"}"#,
    printcolumn = r#"{"name":"Status","type":"string","priority":1,"jsonPath":".status.message"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(transparent)]
pub struct PluginSetResourceSpec(pub PluginSetSpec);

impl std::ops::Deref for PluginSetResourceSpec {
    type Target = PluginSetSpec;
    fn deref(&self) -> &PluginSetSpec {
        &self.0
    }
}

impl From<PluginSetSpec> for PluginSetResourceSpec {
    fn from(spec: PluginSetSpec) -> Self {
        PluginSetResourceSpec(spec)
    }
}

/// Observed state of a PluginSet: what plugsync applied, and from which commit.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PluginSetStatus {
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The commit last read from git.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_fetched_commit: Option<String>,
    /// The commit whose objects were last applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_applied_commit: Option<String>,
    /// Number of plugins declared by the last applied commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin_count: Option<i64>,
    /// Plugins by phase (each plugin counted once, by its most advanced attempt), so
    /// `kubectl get pluginsets` answers "how many run?" without listing Plugins.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub phases: std::collections::BTreeMap<String, i64>,
    /// Why the set is where it is (for a bad commit: which commit, file, line and why).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The problems of the last bad commit, one per file position, for tools and UIs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<StatusError>,
    /// The last `plugsync.dev/reconcile-requested-at` annotation value acted upon (as
    /// Flux's `lastHandledReconcileAt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_reconcile_at: Option<String>,
    /// `Ready`, `Reconciling`, `Stalled` (kstatus-compatible).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Every object plugsync applied for this set (as Flux's `status.inventory`): prune deletes
    /// what is here but no longer desired, even if its labels were changed since.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inventory: Vec<InventoryEntry>,
}

/// One problem of a bad commit, located in its file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatusError {
    /// The file, as `<commit>:<path>` for a git revision.
    pub file: String,
    /// 1-based line (0 when unknown).
    pub line: usize,
    /// 1-based column (0 when unknown).
    pub column: usize,
    /// The field path, e.g. `spec.plugins[2].version`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// One applied object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InventoryEntry {
    /// `apiVersion` of the object.
    pub api_version: String,
    /// `kind` of the object.
    pub kind: String,
    /// Namespace (empty for cluster-scoped objects).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// Name.
    pub name: String,
}

/// Both plugsync CRDs, as they are installed and shipped in `deploy/crds/`.
///
/// schemars names Rust's unsigned integers with formats Kubernetes does not know (`uint32`,
/// `uint`), which a real API server answers with a warning on every apply
/// (`unrecognized format "uint32"`). Kubernetes knows `int32` and `int64`; each unsigned
/// integer becomes the signed format that holds all of its values, and its `minimum: 0` stays.
pub fn definitions() -> [CustomResourceDefinition; 2] {
    use kube::CustomResourceExt as _;
    let mut crds = [Plugin::crd(), PluginSetResource::crd()];
    for crd in &mut crds {
        for version in &mut crd.spec.versions {
            if let Some(schema) = version
                .schema
                .as_mut()
                .and_then(|s| s.open_api_v3_schema.as_mut())
            {
                kubernetes_integer_formats(schema);
            }
        }
    }
    crds
}

/// Rewrites schemars' unsigned integer formats into the ones Kubernetes validates.
fn kubernetes_integer_formats(schema: &mut JSONSchemaProps) {
    if let Some(format) = schema.format.as_mut() {
        let known = match format.as_str() {
            "uint8" | "uint16" | "int8" | "int16" => Some("int32"),
            "uint32" | "uint64" | "uint" => Some("int64"),
            _ => None,
        };
        if let Some(known) = known {
            *format = known.to_string();
        }
    }
    let children = schema
        .properties
        .iter_mut()
        .flat_map(|p| p.values_mut())
        .chain(schema.all_of.iter_mut().flatten())
        .chain(schema.any_of.iter_mut().flatten())
        .chain(schema.one_of.iter_mut().flatten())
        .chain(schema.not.as_deref_mut())
        .chain(match schema.items.as_mut() {
            Some(JSONSchemaPropsOrArray::Schema(s)) => vec![s.as_mut()],
            Some(JSONSchemaPropsOrArray::Schemas(v)) => v.iter_mut().collect(),
            None => vec![],
        })
        .chain(match schema.additional_properties.as_mut() {
            Some(JSONSchemaPropsOrBool::Schema(s)) => Some(s.as_mut()),
            _ => None,
        });
    for child in children {
        kubernetes_integer_formats(child);
    }
}

#[cfg(test)]
mod definition_tests {
    use super::*;

    fn formats(schema: &serde_json::Value, out: &mut Vec<String>) {
        match schema {
            serde_json::Value::Object(map) => {
                if let Some(f) = map.get("format").and_then(|f| f.as_str()) {
                    out.push(f.to_string());
                }
                map.values().for_each(|v| formats(v, out));
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| formats(v, out)),
            _ => {}
        }
    }

    #[test]
    fn every_format_in_the_crds_is_one_kubernetes_knows() {
        let mut seen = Vec::new();
        for crd in definitions() {
            formats(&serde_json::to_value(&crd.spec).expect("json"), &mut seen);
        }
        assert!(seen.iter().any(|f| f == "int64"), "{seen:?}");
        for f in &seen {
            assert!(
                ["int32", "int64", "date-time", "byte", "double", "float"].contains(&f.as_str()),
                "format {f:?} is not one Kubernetes validates"
            );
        }
    }

    #[test]
    fn unsigned_integers_keep_their_lower_bound() {
        let [plugin, _] = definitions();
        let schema = serde_json::to_value(&plugin.spec.versions[0].schema).expect("json");
        let attempt = &schema["openAPIV3Schema"]["properties"]["spec"]["properties"]["attempt"];
        assert_eq!(attempt["format"], "int64");
        assert_eq!(attempt["minimum"].as_f64(), Some(0.0));
    }
}
