//! `plugins.yaml`: the declared set of plugins (kind `PluginSet`).
//!
//! Field names and meanings mirror Dify Enterprise's plugin connector settings
//! (`imageRepoPrefix` → `registry.prefix`, `imageRepoType` → `registry.type`,
//! `imageRepoSecret` → `registry.secretName`, `insecureImageRepo` → `registry.insecure`,
//! `ecrRegion` → `registry.ecrRegion`, `pipMirror`, `preCompile`, …) so that values carry over.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Affinity, EnvVar, ResourceRequirements, Toleration};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The root document of `plugins.yaml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(
    title = "PluginSet",
    description = "plugsync plugins.yaml: the plugins to install"
)]
pub struct PluginSet {
    /// Must be `plugsync.dev/v1alpha1`.
    pub api_version: String,
    /// Must be `PluginSet`.
    pub kind: String,
    /// Name of the set, and the namespace its plugins run in when it names one.
    pub metadata: PluginSetMetadata,
    /// What to build and run.
    pub spec: PluginSetSpec,
}

/// Identity of a PluginSet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PluginSetMetadata {
    /// Name of the set (a DNS-1123 label); objects plugsync creates carry it as `app.kubernetes.io/part-of`.
    pub name: String,
    /// Namespace the plugins run in. Leave it out to take the command's, as a manifest
    /// without one does with kubectl: `-n/--namespace`, else the kubeconfig context's, else
    /// (in a pod) the pod's. With it, `-n` naming another namespace is an error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// The namespace of a set that names none, for commands that reach no cluster (`render`,
/// `diff --base`), as kubectl's own fallback.
pub(crate) const DEFAULT_NAMESPACE: &str = "default";

impl PluginSet {
    /// `metadata.namespace`, else [`DEFAULT_NAMESPACE`]. Cluster commands fill
    /// `metadata.namespace` in before rendering, so there it is always the declared or the
    /// command's namespace.
    pub fn namespace(&self) -> &str {
        self.metadata
            .namespace
            .as_deref()
            .unwrap_or(DEFAULT_NAMESPACE)
    }
}

/// The desired state. In the cluster, the same spec is the `PluginSet` custom resource
/// (`pluginsets.plugsync.dev`) that plugsync applies next to the plugins, and whose status
/// records what was applied (inventory, commits, conditions).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PluginSetSpec {
    /// Where built images are pushed.
    pub registry: RegistrySpec,
    /// How images are built.
    #[serde(default)]
    pub build: BuildSpec,
    /// Defaults for every plugin's Deployment; each plugin may override them.
    #[serde(default)]
    pub runtime: RuntimeSpec,
    /// Where packages come from.
    #[serde(default)]
    pub sources: SourcesSpec,
    /// The plugins to install.
    #[serde(default)]
    pub plugins: Vec<PluginEntry>,
    /// Which package signatures to trust, and what to refuse.
    #[serde(default, skip_serializing_if = "SignaturesSpec::is_default")]
    pub signatures: SignaturesSpec,
    /// The Dify installation the plugins serve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dify: Option<DifySpec>,
}

/// The Dify installation the plugins serve. Plugins run serverless: Dify's plugin daemon
/// calls each one at the endpoint plugsync's connector reports, and a plugin calls the
/// daemon back (models, tools, storage) at `daemonUrl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DifySpec {
    /// The plugin daemon's URL as plugin pods reach it, e.g.
    /// `http://dify-plugin-daemon.dify.svc:5002`. Every plugin gets it as
    /// `DIFY_PLUGIN_DAEMON_URL`, where the Dify plugin SDK looks for it (its default,
    /// `http://localhost:5002`, is never right in a pod); `runtime.env` may override it.
    pub daemon_url: String,
}

/// The variable the Dify plugin SDK reads the daemon's URL from.
pub const DAEMON_URL_ENV: &str = "DIFY_PLUGIN_DAEMON_URL";

/// Package signatures: Dify's official key is always trusted; `keys` adds the repository's
/// own (partners, an internal signing key). The result for each package is recorded in
/// plugins.lock (`signature`), so a review sees who vouches for what it installs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SignaturesSpec {
    /// What to refuse: `record` (refuse nothing; the default, since packages a repository
    /// packs from its own directories are unsigned), `refuseInvalid` (refuse a signature no
    /// trusted key verifies), `requireSigned` (refuse that and unsigned packages too, as the
    /// plugin daemon does with `FORCE_VERIFYING_SIGNATURE`).
    #[serde(default)]
    pub policy: SignaturePolicy,
    /// Public keys trusted besides Dify's official one, as PEM files in this repository.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<SignatureKey>,
}

impl SignaturesSpec {
    fn is_default(&self) -> bool {
        *self == SignaturesSpec::default()
    }
}

/// What a [`SignaturesSpec`] refuses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum SignaturePolicy {
    /// Verify and record; refuse nothing.
    #[default]
    Record,
    /// Refuse a package whose signature no trusted key verifies.
    RefuseInvalid,
    /// Refuse unsigned packages and invalid signatures.
    RequireSigned,
}

/// A trusted public key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SignatureKey {
    /// The name plugins.lock records for packages this key verifies (`dify-official` is
    /// taken by Dify's key).
    pub name: String,
    /// The PEM file, relative to the repository root (`BEGIN PUBLIC KEY` or
    /// `BEGIN RSA PUBLIC KEY`).
    pub path: String,
}

/// The image registry (Dify connector: imageRepoPrefix, imageRepoType, imageRepoSecret,
/// insecureImageRepo, ecrRegion).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RegistrySpec {
    /// Repository prefix without scheme, e.g. `registry.example.com/dify-plugins`; images are
    /// `<prefix>/<plugin-name>-<plugin-id>:<version>`.
    pub prefix: String,
    /// `docker` (any OCI registry) or `ecr`.
    #[serde(rename = "type", default)]
    pub kind: RegistryType,
    /// A `kubernetes.io/dockerconfigjson` Secret with push credentials; the only place
    /// credentials come from.
    #[serde(default = "default_secret_name")]
    pub secret_name: String,
    /// Push and pull over plain HTTP or unverified TLS.
    #[serde(default)]
    pub insecure: bool,
    /// AWS region; required when `type: ecr`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ecr_region: Option<String>,
}

fn default_secret_name() -> String {
    "image-repo-secret".to_string()
}

/// Kind of image registry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RegistryType {
    /// Any registry speaking the OCI distribution API.
    #[default]
    Docker,
    /// Amazon ECR (credentials from the node role or the Secret).
    Ecr,
}

/// Build settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BuildSpec {
    /// The builder image (Kaniko executor by default; kept behind a setting because Kaniko's
    /// upstream is archived).
    #[serde(default = "default_builder_image")]
    pub builder_image: String,
    /// Image for the init container that fetches the build context.
    #[serde(default = "default_busybox_image")]
    pub busybox_image: String,
    /// Python build settings.
    #[serde(default)]
    pub python: PythonBuildSpec,
    /// Build attempts before a plugin is Stalled (first attempt included).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Deadline of one build Job, e.g. `30m`.
    #[serde(default = "default_build_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub timeout: Duration,
    /// Delay before retry N is `base * 2^(N-2)`, capped at `cap`.
    #[serde(default)]
    pub backoff: BackoffSpec,
    /// Failed build attempts kept for debugging (their Plugins, Jobs and pods), newest
    /// first; older ones are garbage-collected. `plugsync gc` removes them on demand.
    #[serde(default = "default_failed_history_limit")]
    pub failed_history_limit: u32,
}

impl Default for BuildSpec {
    fn default() -> Self {
        BuildSpec {
            builder_image: default_builder_image(),
            busybox_image: default_busybox_image(),
            python: PythonBuildSpec::default(),
            max_attempts: default_max_attempts(),
            timeout: default_build_timeout(),
            backoff: BackoffSpec::default(),
            failed_history_limit: default_failed_history_limit(),
        }
    }
}

fn default_builder_image() -> String {
    "gcr.io/kaniko-project/executor:v1.23.2".to_string()
}
fn default_busybox_image() -> String {
    "busybox:1.36".to_string()
}
fn default_max_attempts() -> u32 {
    3
}
fn default_failed_history_limit() -> u32 {
    3
}
fn default_build_timeout() -> Duration {
    Duration::from_secs(30 * 60)
}

/// Exponential backoff between build attempts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BackoffSpec {
    /// Delay before the second attempt, e.g. `30s`.
    #[serde(default = "default_backoff_base", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub base: Duration,
    /// Longest delay between attempts, e.g. `10m`.
    #[serde(default = "default_backoff_cap", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub cap: Duration,
}

impl Default for BackoffSpec {
    fn default() -> Self {
        BackoffSpec {
            base: default_backoff_base(),
            cap: default_backoff_cap(),
        }
    }
}

fn default_backoff_base() -> Duration {
    Duration::from_secs(30)
}
fn default_backoff_cap() -> Duration {
    Duration::from_secs(600)
}

/// Python build settings (Dify connector: pipMirror, preCompile, python base images).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PythonBuildSpec {
    /// A PyPI mirror index URL used by `pip install`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pip_mirror: Option<String>,
    /// Byte-compile the plugin at build time (`python -m compileall`) for faster cold starts.
    #[serde(default = "default_true")]
    pub pre_compile: bool,
    /// Base image per Python version from the package manifest's `meta.runner.version`.
    #[serde(default = "default_base_images")]
    pub base_images: BTreeMap<String, String>,
}

impl Default for PythonBuildSpec {
    fn default() -> Self {
        PythonBuildSpec {
            pip_mirror: None,
            pre_compile: true,
            base_images: default_base_images(),
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_base_images() -> BTreeMap<String, String> {
    ["3.10", "3.11", "3.12"]
        .into_iter()
        .map(|v| {
            (
                v.to_string(),
                format!("langgenius/plugin-build-base-python:{v}"),
            )
        })
        .collect()
}

/// Settings of a plugin's Deployment. In `spec.runtime` they are defaults for every plugin; in
/// a plugin entry's `runtime` they override those defaults: scalars and lists replace, maps
/// (`labels`, `annotations`, `nodeSelector`) merge key by key, and `env` merges by name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RuntimeSpec {
    /// Pod replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Container resources. For CPU and memory, each left out here (neither request nor
    /// limit), plugsync gives what Dify Enterprise's plugin connector gives plugin pods:
    /// requests `cpu: 100m`, `memory: 50Mi`, limits `cpu: 1`, `memory: 3000Mi`. A package's
    /// `resource.memory` of at least 50Mi raises the memory request to it (and the limit, if
    /// above 3000Mi); below, it is ignored with a warning (published packages declare 1 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Extra environment variables (use `valueFrom.secretKeyRef` for secrets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<EnvVar>>,
    /// Node selector of the plugin pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Affinity of the plugin pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Tolerations of the plugin pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    /// Extra labels on plugin pods and objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// Extra annotations on plugin pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

impl RuntimeSpec {
    /// These settings with `overrides` applied on top (see the type's doc for the rules).
    pub(crate) fn merged_with(&self, overrides: &RuntimeSpec) -> RuntimeSpec {
        fn merge_map(
            base: &Option<BTreeMap<String, String>>,
            over: &Option<BTreeMap<String, String>>,
        ) -> Option<BTreeMap<String, String>> {
            match (base, over) {
                (None, None) => None,
                (Some(b), None) => Some(b.clone()),
                (None, Some(o)) => Some(o.clone()),
                (Some(b), Some(o)) => {
                    let mut m = b.clone();
                    m.extend(o.iter().map(|(k, v)| (k.clone(), v.clone())));
                    Some(m)
                }
            }
        }
        let env = match (&self.env, &overrides.env) {
            (None, None) => None,
            (Some(b), None) => Some(b.clone()),
            (None, Some(o)) => Some(o.clone()),
            (Some(b), Some(o)) => {
                let mut merged: Vec<EnvVar> = b
                    .iter()
                    .filter(|e| !o.iter().any(|x| x.name == e.name))
                    .cloned()
                    .collect();
                merged.extend(o.iter().cloned());
                Some(merged)
            }
        };
        RuntimeSpec {
            replicas: overrides.replicas.or(self.replicas),
            resources: overrides
                .resources
                .clone()
                .or_else(|| self.resources.clone()),
            env,
            node_selector: merge_map(&self.node_selector, &overrides.node_selector),
            affinity: overrides.affinity.clone().or_else(|| self.affinity.clone()),
            tolerations: overrides
                .tolerations
                .clone()
                .or_else(|| self.tolerations.clone()),
            labels: merge_map(&self.labels, &overrides.labels),
            annotations: merge_map(&self.annotations, &overrides.annotations),
        }
    }
}

/// Where packages come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SourcesSpec {
    /// Base URL of the Dify marketplace; downloads are
    /// `<marketplace>/api/v1/plugins/<author>/<name>/<version>/download`.
    #[serde(default = "default_marketplace")]
    pub marketplace: String,
    /// A private plugin inventory in an OCI registry (`plugsync inventory publish`), for
    /// `inventory:` and `group:` entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inventory: Option<InventorySource>,
}

impl Default for SourcesSpec {
    fn default() -> Self {
        SourcesSpec {
            marketplace: default_marketplace(),
            inventory: None,
        }
    }
}

/// Where the private inventory is and how it is trusted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct InventorySource {
    /// `oci://host[:port]/repository:tag`, optionally pinned `…@sha256:<hex>`.
    pub url: String,
    /// The public key (PEM, P-256; `cosign.pub`) its signature must verify with: a file in
    /// the repository, relative to plugins.yaml.
    pub key: String,
    /// How long a cached copy is used before the registry is asked again (default `30m`).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<String>")]
    pub ttl: Option<Duration>,
    /// Plain HTTP to the registry (loopback or air-gapped registries without TLS).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure: bool,
}

/// The public Dify marketplace.
pub const DEFAULT_MARKETPLACE: &str = "https://marketplace.dify.ai";

/// [`DEFAULT_MARKETPLACE`], parsed.
pub fn default_marketplace_url() -> url::Url {
    url::Url::parse(DEFAULT_MARKETPLACE).expect("DEFAULT_MARKETPLACE is a valid URL")
}

fn default_marketplace() -> String {
    DEFAULT_MARKETPLACE.to_string()
}

/// One plugin to install: exactly one of `marketplace` (with `version`), `url` or `path`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PluginEntry {
    /// `author/name` on the Dify marketplace; needs `version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub marketplace: Option<String>,
    /// `author/name` in the private inventory (`spec.sources.inventory`); needs `version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inventory: Option<String>,
    /// A group of the private inventory, `name:version`: expands to its mandatory plugins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Exact version, with `marketplace` or `inventory` only (a `url` or `path` package
    /// names its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// A package URL: `https://`, `http://`, `file://`, or any scheme an external
    /// `plugsync-source-<scheme>` client handles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// A plugin directory (packed by plugsync) or a `.difypkg` file, relative to plugins.yaml.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Overrides of `spec.runtime` for this plugin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<RuntimeSpec>,
}
