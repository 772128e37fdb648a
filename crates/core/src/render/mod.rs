//! Render: a pure function from a locked PluginSet to everything that will run.
//!
//! Inputs are plain data (the declared set, each plugin's lock entry, manifest and package
//! bytes, and the templates); outputs are the Dockerfile, the build context and the
//! Kubernetes objects of each plugin. No I/O (but one warning logged per package that asks
//! for implausibly little memory, see [`memory_warning`]), no clock, no randomness, and every
//! map is ordered, so identical inputs give byte-identical output on every machine: that is
//! what makes the pull-request diff trustworthy and cheap.
//!
//! Templates are minijinja, embedded in the binary (`templates/` in this repository); a
//! `templates/` folder in the user's repository overrides any of them by file name. Values
//! are interpolated with `tojson` (JSON is YAML), so no value can break the YAML structure.

pub mod context;
mod json;

use json::{prepared, prepared_entries};

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{EnvVar, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use minijinja::{Environment, UndefinedBehavior};
use serde::Serialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

pub use context::{build_context, BuildContext};

use crate::crd::{BuildRef, PackageRef, PluginSpec, RunnerSpec};
use crate::model::{LockedPlugin, PluginSet, RegistryType, RuntimeSpec};
use crate::package::Manifest;

/// The templates plugsync renders, by file name, with the kind of object each must produce.
pub(crate) const TEMPLATES: [(&str, Option<&str>); 5] = [
    ("Dockerfile.j2", None),
    ("plugin.yaml.j2", Some("Plugin")),
    ("job.yaml.j2", Some("Job")),
    ("deployment.yaml.j2", Some("Deployment")),
    ("service.yaml.j2", Some("Service")),
];

const BUILTIN: [(&str, &str); 5] = [
    (
        "Dockerfile.j2",
        include_str!("../../../../templates/Dockerfile.j2"),
    ),
    (
        "plugin.yaml.j2",
        include_str!("../../../../templates/plugin.yaml.j2"),
    ),
    (
        "job.yaml.j2",
        include_str!("../../../../templates/job.yaml.j2"),
    ),
    (
        "deployment.yaml.j2",
        include_str!("../../../../templates/deployment.yaml.j2"),
    ),
    (
        "service.yaml.j2",
        include_str!("../../../../templates/service.yaml.j2"),
    ),
];

/// Label that marks every object plugsync owns, with the PluginSet's name as value; prune
/// only ever considers objects that carry it.
pub const LABEL_PLUGINSET: &str = "plugsync.dev/pluginset";
/// Annotation with a hash of the applied configuration, so unchanged objects cost no request
/// (set by apply; diffs hide it, since it is bookkeeping, not configuration).
pub const ANNOTATION_APPLIED_HASH: &str = "plugsync.dev/applied-hash";
/// Label with the plugin id, stable across retries (the Service selects on it).
pub const LABEL_PLUGIN_ID: &str = "plugsync.dev/plugin-id";
/// Annotation with Dify's unique identifier.
pub(crate) const ANNOTATION_UNIQUE_IDENTIFIER: &str = "plugsync.dev/unique-identifier";
/// Annotation with the hash of the build inputs.
pub const ANNOTATION_BUILD_INPUTS: &str = "plugsync.dev/build-inputs";

/// Why rendering failed. Nothing is applied when it does.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// A template does not parse or fails while rendering.
    #[error("template {name}{}: {message}", line.map(|l| format!(" line {l}")).unwrap_or_default())]
    Template {
        /// Template file name.
        name: String,
        /// 1-based line in the template, when known.
        line: Option<usize>,
        /// What went wrong.
        message: String,
    },
    /// A file in the user's `templates/` folder that plugsync does not use (likely a typo).
    #[error("templates/{name}: not a plugsync template; overridable templates are {known}")]
    UnknownTemplate {
        /// The file name.
        name: String,
        /// The names plugsync uses.
        known: String,
    },
    /// A templates ConfigMap the controller read is not one plugsync wrote for its content.
    #[error("ConfigMap {name}: {message}")]
    TemplatesConfigMap {
        /// The ConfigMap's name.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// The package's Python version has no base image configured.
    #[error("{plugin}: no base image for Python {version} in spec.build.python.baseImages (configured: {known})")]
    MissingBaseImage {
        /// The plugin.
        plugin: String,
        /// `meta.runner.version` of its manifest.
        version: String,
        /// The configured versions.
        known: String,
    },
    /// A template produced something that is not the object it must produce.
    #[error("{plugin}: template {template} produced an invalid object: {message}")]
    InvalidOutput {
        /// The plugin.
        plugin: String,
        /// Template file name.
        template: String,
        /// What is wrong.
        message: String,
    },
}

/// Prefix of the name of the ConfigMap that carries a set's template overrides into the
/// cluster: `plugsync-templates-<set>-<hash>` (see [`Templates::config_map_name`]).
pub const TEMPLATES_CONFIG_MAP_PREFIX: &str = "plugsync-templates-";
/// Label on that ConfigMap, with the hash of its content as value: the controller watches
/// the ConfigMaps that carry it.
pub const LABEL_TEMPLATES: &str = "plugsync.dev/templates";
/// Hex digits of the content's sha256 in the ConfigMap's name: 40 bits, and a reader checks
/// the whole content against them anyway ([`Templates::from_config_map`]).
const TEMPLATES_HASH_LEN: usize = 10;

/// The set of templates in effect: the built-in ones, with any user overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Templates {
    sources: BTreeMap<String, String>,
    overridden: BTreeSet<String>,
}

impl Templates {
    /// The templates compiled into plugsync.
    pub fn builtin() -> Templates {
        Templates {
            sources: BUILTIN
                .iter()
                .map(|(n, s)| (n.to_string(), s.to_string()))
                .collect(),
            overridden: BTreeSet::new(),
        }
    }

    /// The built-in templates with `overrides` (file name → source) replacing them by name.
    /// Unknown names are refused: a misspelled override must not be silently ignored.
    pub fn with_overrides(
        overrides: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Templates, RenderError> {
        let mut templates = Templates::builtin();
        for (name, source) in overrides {
            if !templates.sources.contains_key(&name) {
                return Err(RenderError::UnknownTemplate {
                    name,
                    known: TEMPLATES.map(|(n, _)| n).join(", "),
                });
            }
            templates.overridden.insert(name.clone());
            templates.sources.insert(name, source);
        }
        Ok(templates)
    }

    /// Template file names overridden by the user.
    pub fn overridden(&self) -> impl Iterator<Item = &str> {
        self.overridden.iter().map(String::as_str)
    }

    /// The source of a template.
    pub fn source(&self, name: &str) -> Option<&str> {
        self.sources.get(name).map(String::as_str)
    }

    /// The overridden templates, file name and source, in name order: what the set's
    /// templates ConfigMap holds.
    pub fn overrides(&self) -> impl Iterator<Item = (&str, &str)> {
        self.overridden
            .iter()
            .filter_map(|name| Some((name.as_str(), self.source(name)?)))
    }

    /// The hash of the overrides (first hex digits of a sha256 over each name and source,
    /// length-prefixed), `None` without overrides: equal overrides, equal hash.
    fn overrides_hash(&self) -> Option<String> {
        if self.overridden.is_empty() {
            return None;
        }
        let mut hasher = Sha256::new();
        hasher.update(b"plugsync templates v1");
        for (name, source) in self.overrides() {
            for field in [name, source] {
                hasher.update((field.len() as u64).to_le_bytes());
                hasher.update(field.as_bytes());
            }
        }
        let mut hex = hex::encode(hasher.finalize());
        hex.truncate(TEMPLATES_HASH_LEN);
        Some(hex)
    }

    /// The name of the ConfigMap that carries these overrides for the PluginSet `set`:
    /// `plugsync-templates-<set>-<hash of the overrides>`; `None` with the built-in templates
    /// alone (then there is no ConfigMap). Content-addressed, so a Plugin that names it names
    /// exactly the templates its children were rendered from, and the set's name keeps two
    /// sets with the same overrides from claiming one object.
    pub fn config_map_name(&self, set: &str) -> Option<String> {
        self.overrides_hash()
            .map(|hash| format!("{TEMPLATES_CONFIG_MAP_PREFIX}{set}-{hash}"))
    }

    /// The ConfigMap that carries these overrides into the cluster for `set`, as applied
    /// with the set's objects (owned by the set, so prune removes it once no commit names
    /// it); `None` without overrides. Immutable: its name is the hash of its content.
    pub fn config_map(&self, set: &PluginSet) -> Option<Value> {
        let name = self.config_map_name(&set.metadata.name)?;
        let hash = self.overrides_hash()?;
        let data: serde_json::Map<String, Value> = self
            .overrides()
            .map(|(name, source)| (name.to_string(), Value::String(source.to_string())))
            .collect();
        Some(json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": name,
                "namespace": set.namespace(),
                "labels": {
                    "app.kubernetes.io/managed-by": "plugsync",
                    "app.kubernetes.io/part-of": set.metadata.name,
                    LABEL_PLUGINSET: set.metadata.name,
                    LABEL_TEMPLATES: hash,
                },
            },
            "immutable": true,
            "data": data,
        }))
    }

    /// The templates a ConfigMap named `name` carries (its `data`, file name to source),
    /// checked against the hash its name ends with: a ConfigMap made or changed by hand is
    /// refused, never rendered from.
    pub fn from_config_map(
        name: &str,
        data: &BTreeMap<String, String>,
    ) -> Result<Templates, RenderError> {
        let templates = Templates::with_overrides(data.clone()).map_err(|e| {
            RenderError::TemplatesConfigMap {
                name: name.to_string(),
                message: e.to_string(),
            }
        })?;
        let hash = templates.overrides_hash().unwrap_or_default();
        if !name.starts_with(TEMPLATES_CONFIG_MAP_PREFIX) || !name.ends_with(&format!("-{hash}")) {
            return Err(RenderError::TemplatesConfigMap {
                name: name.to_string(),
                message: format!(
                    "its content hashes to {hash}, which its name does not end with (made or \
                     changed by hand?); `plugsync apply` of the commit restores the set's own"
                ),
            });
        }
        Ok(templates)
    }

    /// A compiled environment; compile once, render many plugins. It owns copies of the
    /// sources, so it can outlive `self` (see [`EnvironmentCache`]).
    pub fn environment(&self) -> Result<Compiled, RenderError> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_keep_trailing_newline(true);
        env.add_filter("sh", shell_quote);
        env.add_filter("tojson", json::tojson);
        for (name, source) in &self.sources {
            env.add_template_owned(name.clone(), source.clone())
                .map_err(|e| template_error(name, &e))?;
        }
        Ok(Compiled {
            env,
            overrides_hash: self.overrides_hash(),
        })
    }
}

/// Templates compiled for rendering, with the hash of their overrides, from which each
/// rendered Plugin names the ConfigMap of its templates (`spec.templates`). Dereferences to
/// the minijinja environment.
#[derive(Debug)]
pub struct Compiled {
    env: Environment<'static>,
    overrides_hash: Option<String>,
}

impl Compiled {
    /// The name of the templates ConfigMap for the set `set` ([`Templates::config_map_name`]).
    fn config_map_name(&self, set: &str) -> Option<String> {
        self.overrides_hash
            .as_ref()
            .map(|hash| format!("{TEMPLATES_CONFIG_MAP_PREFIX}{set}-{hash}"))
    }
}

impl std::ops::Deref for Compiled {
    type Target = Environment<'static>;

    fn deref(&self) -> &Environment<'static> {
        &self.env
    }
}

/// The compiled environments of the templates last asked for. A long-running process (the
/// plugin controller renders one plugin per reconcile) compiles each set of templates once,
/// not once per render; a few are kept, since the sets of a namespace (and a set between
/// two commits) may each have their own.
#[derive(Default)]
pub struct EnvironmentCache {
    /// Most recently used first, at most [`ENVIRONMENTS_KEPT`].
    kept: std::sync::Mutex<std::collections::VecDeque<(Templates, Arc<Compiled>)>>,
}

/// How many compiled environments an [`EnvironmentCache`] keeps.
const ENVIRONMENTS_KEPT: usize = 8;

impl EnvironmentCache {
    /// The environment of `templates`: the one compiled before when they are templates
    /// asked for lately, else compiled now (and kept). A template error is returned every
    /// time those templates are asked for, and nothing kept is dropped for it.
    pub fn environment(&self, templates: &Templates) -> Result<Arc<Compiled>, RenderError> {
        // A poisoned lock still holds whole entries: they are only ever inserted whole.
        let mut kept = self
            .kept
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let found = kept.iter().position(|(t, _)| t == templates);
        if let Some(entry) = found.and_then(|i| kept.remove(i)) {
            let env = Arc::clone(&entry.1);
            kept.push_front(entry);
            return Ok(env);
        }
        let env = Arc::new(templates.environment()?);
        kept.push_front((templates.clone(), Arc::clone(&env)));
        kept.truncate(ENVIRONMENTS_KEPT);
        Ok(env)
    }
}

impl std::fmt::Debug for EnvironmentCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnvironmentCache").finish_non_exhaustive()
    }
}

/// A digest of everything [`render_plugin`] reads that is the same for every plugin of a
/// set: the PluginSet without its `spec.plugins` list (each plugin's own entry reaches
/// render through its [`PluginInput`]), the templates, the settings and the recorded
/// image digests. With [`plugin_fingerprint`] it keys a memo of rendered plugins: equal
/// fingerprints, byte-identical output (render is a pure function of these inputs).
pub fn set_fingerprint(
    set: &PluginSet,
    templates: &Templates,
    settings: &RenderSettings,
    built_images: Option<&BTreeMap<String, String>>,
) -> [u8; 32] {
    let mut set_value = serde_json::to_value(set).unwrap_or(Value::Null);
    if let Some(spec) = set_value.get_mut("spec").and_then(Value::as_object_mut) {
        spec.remove("plugins");
    }
    let mut hasher = Sha256::new();
    let mut field = |bytes: &[u8]| {
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    };
    field(b"plugsync render set v1");
    field(set_value.to_string().as_bytes());
    for (name, source) in &templates.sources {
        field(name.as_bytes());
        field(source.as_bytes());
    }
    field(settings.context_base_url.as_bytes());
    field(
        serde_json::to_string(&built_images)
            .unwrap_or_default()
            .as_bytes(),
    );
    hasher.finalize().into()
}

/// A digest of one plugin's render inputs under a set's [`set_fingerprint`] (computed
/// with the same `built_images` as `input.built_images`): its lock entry, runtime,
/// manifest, attempt and known image digest. The package bytes are identified by the lock
/// entry's sha256, which is what resolve guarantees they hash to.
pub fn plugin_fingerprint(set_fingerprint: &[u8; 32], input: &PluginInput<'_>) -> [u8; 32] {
    let mut hasher = Sha256::new();
    let mut field = |bytes: &[u8]| {
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    };
    field(set_fingerprint);
    field(
        serde_json::to_string(input.locked)
            .unwrap_or_default()
            .as_bytes(),
    );
    field(
        serde_json::to_string(input.runtime)
            .unwrap_or_default()
            .as_bytes(),
    );
    field(format!("{:?}", input.manifest).as_bytes());
    field(&input.attempt.max(1).to_le_bytes());
    field(&[u8::from(input.image_digest.is_some())]);
    field(input.image_digest.unwrap_or_default().as_bytes());
    hasher.finalize().into()
}

/// Single-quotes a value for a POSIX shell (`'it'\''s'`).
fn shell_quote(value: String) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

fn template_error(name: &str, e: &minijinja::Error) -> RenderError {
    let message = match e.detail() {
        Some(detail) => format!("{}: {detail}", e.kind()),
        None => e.kind().to_string(),
    };
    RenderError::Template {
        name: e.name().unwrap_or(name).to_string(),
        line: e.line(),
        message,
    }
}

/// Settings of the plugsync installation (not of the PluginSet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderSettings {
    /// Base URL at which plugsync serves build contexts to build Jobs.
    pub context_base_url: String,
}

/// Where build Jobs download their contexts unless told otherwise: the `plugsync-leader`
/// Service that deploy/ installs in `plugsync-system` (only the leader's cache has them).
pub const DEFAULT_CONTEXT_BASE_URL: &str = "http://plugsync-leader.plugsync-system.svc:8080";

impl Default for RenderSettings {
    fn default() -> Self {
        RenderSettings {
            context_base_url: DEFAULT_CONTEXT_BASE_URL.to_string(),
        }
    }
}

/// Everything render needs to know about one plugin.
#[derive(Debug, Clone, Copy)]
pub struct PluginInput<'a> {
    /// Its lock entry.
    pub locked: &'a LockedPlugin,
    /// Its package manifest.
    pub manifest: &'a Manifest,
    /// The package bytes (they go into the build context).
    pub package: &'a [u8],
    /// `spec.runtime` merged with the entry's overrides.
    pub runtime: &'a RuntimeSpec,
    /// Build attempt, 1 for the first.
    pub attempt: u32,
    /// The image digest when it is already known (then no build Job is rendered).
    pub image_digest: Option<&'a str>,
    /// Digests already built, by build-inputs hash (plugins.lock `images`): used when
    /// `image_digest` is unset and the rendered build inputs match one, so what was built
    /// once is never built again.
    pub built_images: Option<&'a BTreeMap<String, String>>,
}

/// The rendered form of one plugin, its objects as `O` (see [`ObjectForm`]).
#[derive(Debug, Clone, PartialEq)]
pub struct RenderedPlugin<O = Value> {
    /// `author/name`.
    pub name: String,
    /// Version.
    pub version: String,
    /// The plugin id.
    pub plugin_id: String,
    /// `<plugin-id>` or `<plugin-id>--N`.
    pub resource_name: String,
    /// The Dockerfile.
    pub dockerfile: String,
    /// The build context.
    pub context: BuildContext,
    /// Plugin, Job (unless the image is known), Deployment and Service, in apply order.
    pub objects: Vec<O>,
}

/// What render keeps of each object a template produces. Every form checks the object
/// the same way (a YAML mapping of the template's kind, with an `apiVersion`, and the
/// plugin's name and namespace); they differ in what is kept.
pub trait ObjectForm {
    /// The kept object.
    type Object: Send;

    /// Reads and checks what a template rendered.
    fn read(text: &str, expected: &Expected<'_>) -> Result<Self::Object, RenderError>;
}

/// What a rendered object must be.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    /// The template's file name.
    pub template: &'a str,
    /// The object's kind.
    pub kind: &'a str,
    /// Its `metadata.name`.
    pub name: &'a str,
    /// Its `metadata.namespace`.
    pub namespace: &'a str,
    /// The plugin, for errors.
    pub plugin: &'a str,
}

/// Objects as `serde_json::Value`s: what planning, applying and diffing compare.
#[derive(Debug, Clone, Copy)]
pub struct AsValue;

impl ObjectForm for AsValue {
    type Object = Value;

    fn read(text: &str, expected: &Expected<'_>) -> Result<Value, RenderError> {
        let value: Value = crate::yaml::value_from_str(text)
            .map_err(|e| expected.invalid(format!("not YAML: {e}")))?;
        expected.check(|path| {
            path.iter()
                .try_fold(&value, |node, key| node.get(key))
                .and_then(Value::as_str)
        })?;
        Ok(value)
    }
}

/// Objects as YAML documents, the bytes [`objects_to_yaml`] prints for the [`AsValue`]
/// form of the same object (without the `---` line): what `plugsync render` prints.
#[derive(Debug, Clone, Copy)]
pub struct AsYaml;

impl ObjectForm for AsYaml {
    type Object = String;

    fn read(text: &str, expected: &Expected<'_>) -> Result<String, RenderError> {
        let value = AsValue::read(text, expected)?;
        crate::yaml::to_string(&value).map_err(|e| expected.unprintable(e))
    }
}

impl Expected<'_> {
    pub(crate) fn invalid(&self, message: String) -> RenderError {
        RenderError::InvalidOutput {
            plugin: self.plugin.to_string(),
            template: self.template.to_string(),
            message,
        }
    }

    fn unprintable(&self, error: serde_saphyr::SerializeError) -> RenderError {
        self.invalid(format!("not printable as YAML: {error}"))
    }

    /// Checks an object's kind, `apiVersion`, name and namespace; `field` gives the string
    /// at a path of keys (`None` when absent or not a string), whatever the object's form.
    pub(crate) fn check<'v>(
        &self,
        field: impl Fn(&[&str]) -> Option<&'v str>,
    ) -> Result<(), RenderError> {
        let kind = field(&["kind"]).unwrap_or_default();
        let api_version = field(&["apiVersion"]);
        let name = field(&["metadata", "name"]).unwrap_or_default();
        let namespace = field(&["metadata", "namespace"]).unwrap_or_default();
        if kind != self.kind {
            return Err(self.invalid(format!("kind is `{kind}`, must be `{}`", self.kind)));
        }
        if api_version.is_none() {
            return Err(self.invalid("apiVersion is missing".into()));
        }
        if name != self.name {
            return Err(self.invalid(format!(
                "metadata.name is `{name}`, must be `{}` (names are how plugsync finds its objects)",
                self.name
            )));
        }
        if namespace != self.namespace {
            return Err(self.invalid(format!(
                "metadata.namespace is `{namespace}`, must be `{}`",
                self.namespace
            )));
        }
        Ok(())
    }
}

/// `<plugin-id>` for the first attempt, `<plugin-id>--N` for attempt N.
pub fn resource_name(plugin_id: &str, attempt: u32) -> String {
    if attempt <= 1 {
        plugin_id.to_string()
    } else {
        format!("{plugin_id}--{attempt}")
    }
}

/// The image reference that runs `digest`: the repository of `image` (its tag dropped)
/// `@digest`. The rendered Deployment and the controller's "is it running the right image?"
/// check both use it, so they cannot disagree.
pub fn image_by_digest(image: &str, digest: &str) -> String {
    let repository = match image.rfind(':') {
        Some(i) if !image[i..].contains('/') => &image[..i],
        _ => image,
    };
    format!("{repository}@{digest}")
}

/// Renders every plugin of a set. Plugins are independent, so errors name the plugin.
///
/// Sets of more than a few dozen plugins are split over the available cores; the output,
/// and the error when some plugin fails (the first one's), are the same as rendering the
/// plugins one by one.
pub fn render_set(
    set: &PluginSet,
    plugins: &[PluginInput<'_>],
    templates: &Templates,
    settings: &RenderSettings,
) -> Result<Vec<RenderedPlugin>, RenderError> {
    render_set_map(set, plugins, templates, settings, |_, rendered| rendered)
}

/// [`render_set`], handing each rendered plugin (with its index in `plugins`) to `map` on
/// the thread that rendered it, so what the caller keeps of it is extracted, and the rest
/// freed, in parallel too. Results are in the order of `plugins`.
pub(crate) fn render_set_map<T: Send>(
    set: &PluginSet,
    plugins: &[PluginInput<'_>],
    templates: &Templates,
    settings: &RenderSettings,
    map: impl Fn(usize, RenderedPlugin) -> T + Sync,
) -> Result<Vec<T>, RenderError> {
    render_set_map_as::<AsValue, T>(set, plugins, templates, settings, map)
}

/// [`render_set_map`], with the objects in form `F`.
pub(crate) fn render_set_map_as<F: ObjectForm, T: Send>(
    set: &PluginSet,
    plugins: &[PluginInput<'_>],
    templates: &Templates,
    settings: &RenderSettings,
    map: impl Fn(usize, RenderedPlugin<F::Object>) -> T + Sync,
) -> Result<Vec<T>, RenderError> {
    let env = templates.environment()?;
    let (env, map) = (&env, &map);
    // Plugins are independent and rendering is pure, so large sets are split over the
    // cores (rayon's pool, which steals work, so a thread that gets less of the CPU, or
    // harder plugins, does not leave the others idle at the end). Once a plugin fails,
    // later batches are skipped; every batch before it is rendered, and results are in
    // order, so the error returned is the first plugin's, as a sequential render's.
    use rayon::prelude::*;
    let failed = std::sync::atomic::AtomicUsize::new(usize::MAX);
    let results: Vec<Result<Vec<T>, RenderError>> = plugins
        .par_chunks(RENDER_BATCH)
        .with_min_len(MIN_PLUGINS_PER_THREAD / RENDER_BATCH)
        .enumerate()
        .map(|(batch, inputs)| {
            if batch > failed.load(std::sync::atomic::Ordering::Relaxed) {
                return Ok(Vec::new());
            }
            let start = batch * RENDER_BATCH;
            let mut shared = RuntimeValues::default();
            let part: Result<Vec<T>, RenderError> = inputs
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    render_plugin_sharing::<F>(set, p, env, settings, &mut shared)
                        .map(|r| map(start + i, r))
                })
                .collect();
            if part.is_err() {
                failed.fetch_min(batch, std::sync::atomic::Ordering::Relaxed);
            }
            part
        })
        .collect();
    let mut rendered = Vec::with_capacity(plugins.len());
    for part in results {
        rendered.extend(part?);
    }
    Ok(rendered)
}

/// Plugins a rendering thread takes at a time: small enough to even out the threads' ends,
/// large enough that taking one costs nothing next to rendering it.
const RENDER_BATCH: usize = 8;

/// Fewest plugins worth handing to another thread (below, it costs more than it saves).
const MIN_PLUGINS_PER_THREAD: usize = 16;

#[derive(Serialize)]
struct PluginContext<'a> {
    name: &'a str,
    author: &'a str,
    full_name: &'a str,
    version: &'a str,
    plugin_id: &'a str,
    unique_identifier: &'a str,
    attempt: u32,
    resource_name: &'a str,
    service_name: String,
    endpoint: String,
    image: &'a str,
    image_ref: String,
}

/// Renders one plugin with a compiled environment.
pub fn render_plugin(
    set: &PluginSet,
    input: &PluginInput<'_>,
    env: &Compiled,
    settings: &RenderSettings,
) -> Result<RenderedPlugin, RenderError> {
    render_plugin_as::<AsValue>(set, input, env, settings)
}

/// [`render_plugin`], with the objects in form `F`.
pub(crate) fn render_plugin_as<F: ObjectForm>(
    set: &PluginSet,
    input: &PluginInput<'_>,
    env: &Compiled,
    settings: &RenderSettings,
) -> Result<RenderedPlugin<F::Object>, RenderError> {
    render_plugin_sharing::<F>(set, input, env, settings, &mut RuntimeValues::default())
}

/// The template values that follow from a plugin's runtime settings and its package's
/// memory alone. In a set, most plugins share both, so a run of plugins keeps the values
/// of the plugin before and builds them again only when either differs.
#[derive(Default)]
struct RuntimeValues {
    /// The settings and memory the values were built for.
    built_for: Option<(RuntimeSpec, i64)>,
    runtime: minijinja::Value,
    env: minijinja::Value,
    resources: minijinja::Value,
}

impl RuntimeValues {
    /// The values for `runtime` and `memory`, built now unless they are the last ones'.
    fn for_plugin(&mut self, runtime: &RuntimeSpec, memory: i64) -> &Self {
        if self
            .built_for
            .as_ref()
            .is_some_and(|(r, m)| r == runtime && *m == memory)
        {
            return self;
        }
        let mut filled = runtime.clone();
        filled.replicas.get_or_insert(1);
        // Every runtime key is present (null when unset): templates run in strict mode,
        // where a misspelled variable is an error, and `{% if runtime.affinity %}` must
        // still work.
        let mut runtime_json = serde_json::to_value(&filled).unwrap_or(Value::Null);
        if let Value::Object(map) = &mut runtime_json {
            for key in [
                "replicas",
                "resources",
                "env",
                "nodeSelector",
                "affinity",
                "tolerations",
                "labels",
                "annotations",
            ] {
                map.entry(key).or_insert(Value::Null);
            }
        }
        self.env = prepared(plugin_env(&filled));
        self.resources = prepared(plugin_resources(&filled, memory));
        self.runtime = prepared_entries(runtime_json);
        self.built_for = Some((runtime.clone(), memory));
        self
    }
}

/// [`render_plugin_as`], taking the runtime values from `shared` when they are the same.
fn render_plugin_sharing<F: ObjectForm>(
    set: &PluginSet,
    input: &PluginInput<'_>,
    env: &Compiled,
    settings: &RenderSettings,
    shared: &mut RuntimeValues,
) -> Result<RenderedPlugin<F::Object>, RenderError> {
    let locked = input.locked;
    let manifest = input.manifest;
    let spec = &set.spec;
    let namespace = set.namespace();
    let plugin_id = &locked.plugin_id;
    let resource_name = resource_name(plugin_id, input.attempt);

    let base_image = spec
        .build
        .python
        .base_images
        .get(&manifest.runner_version)
        .ok_or_else(|| RenderError::MissingBaseImage {
            plugin: locked.name.clone(),
            version: manifest.runner_version.clone(),
            known: spec
                .build
                .python
                .base_images
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", "),
        })?;

    let image = format!(
        "{}/{}-{}:{}",
        spec.registry.prefix, manifest.name, plugin_id, locked.version
    );
    let service_name = format!("svc-{plugin_id}");
    let plugin = PluginContext {
        name: &manifest.name,
        author: &manifest.author,
        full_name: &locked.name,
        version: &locked.version,
        plugin_id,
        unique_identifier: &locked.unique_identifier,
        attempt: input.attempt.max(1),
        resource_name: &resource_name,
        endpoint: format!("http://{service_name}.{namespace}:8080"),
        service_name,
        image: &image,
        // Set below, once the build inputs (and so a recorded digest) are known.
        image_ref: image.clone(),
    };
    let runner = json!({
        "language": manifest.runner_language,
        "version": manifest.runner_version,
        "entrypoint": manifest.entrypoint,
    });
    let mut build = json!({
        "base_image": base_image,
        "builder_image": spec.build.builder_image,
        "busybox_image": spec.build.busybox_image,
        "pip_mirror": spec.build.python.pip_mirror,
        "pre_compile": spec.build.python.pre_compile,
        "timeout_seconds": spec.build.timeout.as_secs(),
    });
    let registry = json!({
        "prefix": spec.registry.prefix,
        "type": match spec.registry.kind { RegistryType::Docker => "docker", RegistryType::Ecr => "ecr" },
        "secret_name": spec.registry.secret_name,
        "insecure": spec.registry.insecure,
        "ecr_region": spec.registry.ecr_region,
    });
    let set_ctx = json!({ "name": set.metadata.name, "namespace": namespace });

    // 1. The Dockerfile, and from it the build context and the build-inputs hash.
    let dockerfile = render_template(
        env,
        "Dockerfile.j2",
        &locked.name,
        minijinja::context! { plugin => &plugin, runner => &runner, build => &build, registry => &registry, set => &set_ctx },
    )?;
    let context = build_context(input.package, &dockerfile);
    let mut args = vec![
        "--context=dir:///workspace".to_string(),
        "--dockerfile=/workspace/Dockerfile".to_string(),
        format!("--destination={image}"),
        "--digest-file=/dev/termination-log".to_string(),
        "--reproducible".to_string(),
    ];
    if spec.registry.insecure {
        args.push("--insecure".to_string());
        args.push("--skip-tls-verify".to_string());
    }
    let inputs_hash = hex::encode(Sha256::digest(
        format!(
            "{}\n{}\n{}\n",
            context.sha256,
            spec.build.builder_image,
            args.join(" ")
        )
        .as_bytes(),
    ));
    if let Value::Object(b) = &mut build {
        b.insert("context_sha256".into(), json!(context.sha256));
        b.insert(
            "context_url".into(),
            json!(format!(
                "{}/contexts/{}",
                settings.context_base_url.trim_end_matches('/'),
                context.sha256
            )),
        );
        b.insert("inputs_hash".into(), json!(inputs_hash));
        b.insert("args".into(), json!(args));
    }
    let image_digest = input.image_digest.or_else(|| {
        input
            .built_images
            .and_then(|images| images.get(&inputs_hash))
            .map(String::as_str)
    });
    let mut plugin = plugin;
    if let Some(digest) = image_digest {
        plugin.image_ref = image_by_digest(&image, digest);
    }

    // 2. Labels, annotations, runtime settings.
    let mut labels: BTreeMap<String, String> = input.runtime.labels.clone().unwrap_or_default();
    let k8s_name = label_safe(&manifest.name);
    for (k, v) in [
        ("app.kubernetes.io/name", k8s_name.as_str()),
        ("app.kubernetes.io/instance", resource_name.as_str()),
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
        ("app.kubernetes.io/instance", resource_name.clone()),
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
        (ANNOTATION_BUILD_INPUTS, inputs_hash.clone()),
    ]));
    // The Service outlives rebuilds and retries: only the identity, so a rebuild does not
    // touch it.
    let service_annotations = prepared(BTreeMap::from([(
        ANNOTATION_UNIQUE_IDENTIFIER,
        locked.unique_identifier.clone(),
    )]));

    let shared = shared.for_plugin(input.runtime, manifest.memory);
    warn_low_memory(locked, input.runtime, manifest.memory);

    let plugin_spec = PluginSpec {
        plugin_set: set.metadata.name.clone(),
        name: locked.name.clone(),
        version: locked.version.clone(),
        unique_identifier: locked.unique_identifier.clone(),
        plugin_id: plugin_id.clone(),
        attempt: input.attempt.max(1),
        package: PackageRef {
            source: locked.source.clone(),
            sha256: locked.sha256.clone(),
            checksum: locked.checksum.clone(),
        },
        runner: RunnerSpec {
            language: manifest.runner_language.clone(),
            version: manifest.runner_version.clone(),
            entrypoint: manifest.entrypoint.clone(),
        },
        build: BuildRef {
            context_sha256: context.sha256.clone(),
            inputs_hash: inputs_hash.clone(),
            image: image.clone(),
        },
        runtime: input.runtime.clone(),
        image_digest: image_digest.map(str::to_string),
        templates: env.config_map_name(&set.metadata.name),
    };

    let ctx = minijinja::context! {
        set => &set_ctx,
        plugin => &plugin,
        runner => &runner,
        build => prepared_entries(build),
        registry => &registry,
        runtime => &shared.runtime,
        labels => &labels,
        pod_labels => &labels,
        selector_labels => &selector_labels,
        service_labels => &service_labels,
        service_selector => &service_selector,
        annotations => &annotations,
        service_annotations => &service_annotations,
        env => &shared.env,
        resources => &shared.resources,
        plugin_spec => prepared(plugin_spec),
    };

    // 3. The objects, in apply order; no Job when the image is already known.
    let mut objects = Vec::with_capacity(4);
    for (template, kind) in TEMPLATES.iter().skip(1) {
        if *template == "job.yaml.j2" && image_digest.is_some() {
            continue;
        }
        let text = render_template(env, template, &locked.name, ctx.clone())?;
        let expected_name = if *template == "service.yaml.j2" {
            &plugin.service_name
        } else {
            &resource_name
        };
        objects.push(F::read(
            &text,
            &Expected {
                template,
                kind: kind.unwrap_or_default(),
                name: expected_name,
                namespace,
                plugin: &locked.name,
            },
        )?);
    }

    Ok(RenderedPlugin {
        name: locked.name.clone(),
        version: locked.version.clone(),
        plugin_id: plugin_id.clone(),
        resource_name,
        dockerfile,
        context,
        objects,
    })
}

/// Multi-document YAML, one object per document, in the given (apply) order.
pub fn objects_to_yaml(objects: &[Value]) -> String {
    let documents: Vec<String> = objects
        .iter()
        .map(|object| crate::yaml::to_string(object).unwrap_or_default())
        .collect();
    documents_to_yaml(&documents)
}

/// Multi-document YAML from objects in the [`AsYaml`] form: the same bytes as
/// [`objects_to_yaml`] on the same objects as values.
pub(crate) fn documents_to_yaml(documents: &[String]) -> String {
    let mut out = String::with_capacity(documents.iter().map(|d| d.len() + 4).sum());
    for document in documents {
        out.push_str("---\n");
        out.push_str(document);
    }
    out
}

/// The format of what `plugsync render` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextFormat {
    /// Multi-document YAML ([`render::objects_to_yaml`]).
    Yaml,
    /// One pretty-printed JSON List ([`render::json_list`]).
    Json,
}

/// `objects` as items of the pretty-printed JSON List `plugsync render -o json` prints
/// (`{"apiVersion": "v1", "items": [...], "kind": "List"}`): each object as
/// `serde_json::to_string_pretty` writes it at that depth, joined by `,\n`, so the items
/// of several plugins joined the same way inside [`json_list`] are byte-identical to the
/// whole List pretty-printed at once.
pub fn objects_to_json_items(objects: &[Value]) -> String {
    let mut out = String::new();
    for object in objects {
        if !out.is_empty() {
            out.push_str(",\n");
        }
        let text = serde_json::to_string_pretty(object).unwrap_or_default();
        // A List's items are two levels deep; JSON strings hold no raw newlines, so every
        // line break is an indentation point.
        out.push_str(JSON_ITEM_INDENT);
        out.push_str(&text.replace('\n', "\n    "));
    }
    out
}

/// Indentation of a JSON List's items (two levels of two spaces).
const JSON_ITEM_INDENT: &str = "    ";

/// Emits, piece by piece, the pretty-printed JSON List of `items` (each from
/// [`objects_to_json_items`], in order; empty ones are skipped) followed by a newline:
/// the same bytes as `println!("{}", to_string_pretty(&json!({"apiVersion": "v1",
/// "kind": "List", "items": objects})))` on all the objects at once.
pub fn json_list<'a>(items: impl IntoIterator<Item = &'a str>, mut emit: impl FnMut(&'a str)) {
    emit("{\n  \"apiVersion\": \"v1\",\n  \"items\": [");
    let mut any = false;
    for item in items.into_iter().filter(|item| !item.is_empty()) {
        emit(if any { ",\n" } else { "\n" });
        emit(item);
        any = true;
    }
    if any {
        emit("\n  ]");
    } else {
        emit("]");
    }
    emit(",\n  \"kind\": \"List\"\n}\n");
}

fn render_template<S: Serialize>(
    env: &Environment<'_>,
    name: &str,
    plugin: &str,
    ctx: S,
) -> Result<String, RenderError> {
    let template = env
        .get_template(name)
        .map_err(|e| template_error(name, &e))?;
    template.render(ctx).map_err(|e| {
        let mut err = template_error(name, &e);
        if let RenderError::Template { message, .. } = &mut err {
            *message = format!("{message} (rendering {plugin})");
        }
        err
    })
}

/// A Dify name (`[a-z0-9_-]{1,128}`) made into a valid label value (≤ 63, alphanumeric ends).
fn label_safe(value: &str) -> String {
    let cut: String = value.chars().take(63).collect();
    cut.trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

/// The serverless environment Dify's plugin runtime expects, then the user's variables
/// (a user variable of the same name wins).
fn plugin_env(runtime: &RuntimeSpec) -> Vec<EnvVar> {
    let user = runtime.env.clone().unwrap_or_default();
    let mut env: Vec<EnvVar> = [
        ("INSTALL_METHOD", "serverless"),
        ("SERVERLESS_HOST", "0.0.0.0"),
        ("SERVERLESS_PORT", "8080"),
    ]
    .into_iter()
    .filter(|(n, _)| !user.iter().any(|u| u.name == *n))
    .map(|(name, value)| EnvVar {
        name: name.to_string(),
        value: Some(value.to_string()),
        value_from: None,
    })
    .collect();
    env.extend(user);
    env
}

/// One mebibyte.
const MI: i64 = 1024 * 1024;

/// The CPU request of a plugin container unless `runtime.resources` sets its CPU: what Dify
/// Enterprise's plugin connector gives plugin runner pods.
pub(crate) const DEFAULT_CPU_REQUEST: &str = "100m";
/// The CPU limit, likewise (Dify's `1000m`, as Kubernetes writes it back).
pub(crate) const DEFAULT_CPU_LIMIT: &str = "1";
/// The memory request, in bytes, likewise (Dify's `50Mi`), unless the package asks for more.
pub(crate) const DEFAULT_MEMORY_REQUEST: i64 = 50 * MI;
/// The memory limit, in bytes, likewise (Dify's `3000Mi`), unless the package asks for more.
pub(crate) const DEFAULT_MEMORY_LIMIT: i64 = 3000 * MI;
/// A package's `resource.memory` below this is no plugin's real need (published packages
/// declare 1 MiB, `langgenius/agent` among them): it is ignored, with a warning, and the pod
/// gets the defaults. At or above it, it raises the request (and the limit, when above it).
pub const MEMORY_FLOOR: i64 = DEFAULT_MEMORY_REQUEST;

/// `bytes` as Kubernetes writes a memory quantity back: whole `Gi` when it divides, else
/// `Mi`, rounded up (a memory request is better a little more than a little less).
pub fn memory_quantity(bytes: i64) -> String {
    const GI: i64 = 1024 * MI;
    if bytes > 0 && bytes % GI == 0 {
        format!("{}Gi", bytes / GI)
    } else {
        format!("{}Mi", mebibytes_up(bytes))
    }
}

/// Whole mebibytes in `bytes`, rounded up.
fn mebibytes_up(bytes: i64) -> i64 {
    let mebibytes = u64::try_from(bytes.max(0))
        .unwrap_or_default()
        .div_ceil(MI.unsigned_abs());
    i64::try_from(mebibytes).unwrap_or(i64::MAX)
}

/// The memory request and limit (bytes) for a package asking for `declared` bytes.
fn memory_for(declared: i64) -> (i64, i64) {
    if declared < MEMORY_FLOOR {
        (DEFAULT_MEMORY_REQUEST, DEFAULT_MEMORY_LIMIT)
    } else {
        let declared = mebibytes_up(declared) * MI;
        (declared, declared.max(DEFAULT_MEMORY_LIMIT))
    }
}

/// The user's resources, with defaults for CPU and memory where the user sets neither a
/// request nor a limit of that resource: theirs replace ours whole, per resource (Kubernetes
/// then defaults a missing request to the limit), so nothing of ours can contradict them.
/// The memory defaults come from [`memory_for`] the package's `resource.memory`.
fn plugin_resources(runtime: &RuntimeSpec, memory: i64) -> ResourceRequirements {
    let mut resources = runtime.resources.clone().unwrap_or_default();
    let (memory_request, memory_limit) = memory_for(memory);
    for (name, request, limit) in [
        (
            "cpu",
            DEFAULT_CPU_REQUEST.to_string(),
            DEFAULT_CPU_LIMIT.to_string(),
        ),
        (
            "memory",
            memory_quantity(memory_request),
            memory_quantity(memory_limit),
        ),
    ] {
        let set_by_user = |m: &Option<BTreeMap<String, Quantity>>| {
            m.as_ref().is_some_and(|m| m.contains_key(name))
        };
        if set_by_user(&resources.requests) || set_by_user(&resources.limits) {
            continue;
        }
        resources
            .requests
            .get_or_insert_with(BTreeMap::new)
            .insert(name.to_string(), Quantity(request));
        resources
            .limits
            .get_or_insert_with(BTreeMap::new)
            .insert(name.to_string(), Quantity(limit));
    }
    resources
}

/// The warning for a package whose `resource.memory` is below [`MEMORY_FLOOR`] when the
/// plugin's runtime leaves the memory to plugsync; `None` otherwise.
pub(crate) fn memory_warning(runtime: &RuntimeSpec, memory: i64) -> Option<String> {
    let user_sets_memory = runtime.resources.as_ref().is_some_and(|r| {
        [&r.requests, &r.limits]
            .iter()
            .any(|m| m.as_ref().is_some_and(|m| m.contains_key("memory")))
    });
    (memory < MEMORY_FLOOR && !user_sets_memory).then(|| {
        format!(
            "the package asks for {} of memory (resource.memory {memory}), less than any \
             plugin runs in (floor {}): ignored; its pods get a request of {} and a limit of {} \
             (set runtime.resources to choose)",
            memory_quantity(memory),
            memory_quantity(MEMORY_FLOOR),
            memory_quantity(DEFAULT_MEMORY_REQUEST),
            memory_quantity(DEFAULT_MEMORY_LIMIT),
        )
    })
}

/// Logs [`memory_warning`] once per package and process: render runs for every diff side
/// and every reconcile, and the warning is about the package, not about each render.
fn warn_low_memory(locked: &LockedPlugin, runtime: &RuntimeSpec, memory: i64) {
    static WARNED: std::sync::Mutex<BTreeSet<String>> = std::sync::Mutex::new(BTreeSet::new());
    let Some(warning) = memory_warning(runtime, memory) else {
        return;
    };
    let mut warned = WARNED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if warned.insert(locked.unique_identifier.clone()) {
        tracing::warn!(
            plugin = %format!("{}@{}", locked.name, locked.version),
            "{warning}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_run_by_digest() {
        assert_eq!(
            image_by_digest("r:5000/a/b:1.0", "sha256:x"),
            "r:5000/a/b@sha256:x"
        );
        assert_eq!(
            image_by_digest("r:5000/a/b", "sha256:x"),
            "r:5000/a/b@sha256:x"
        );
        assert_eq!(image_by_digest("b:1", "sha256:x"), "b@sha256:x");
    }

    #[test]
    fn memory_is_printed_as_kubernetes_writes_it_back() {
        assert_eq!(memory_quantity(50 * MI), "50Mi");
        assert_eq!(memory_quantity(3000 * MI), "3000Mi");
        assert_eq!(memory_quantity(1024 * MI), "1Gi");
        assert_eq!(memory_quantity(2048 * MI), "2Gi");
        assert_eq!(memory_quantity(1_048_576), "1Mi");
        // Rounded up to whole mebibytes: 100 MB is 95.37 MiB.
        assert_eq!(memory_quantity(100_000_000), "96Mi");
        assert_eq!(memory_quantity(1), "1Mi");
    }

    fn quantities(resources: &ResourceRequirements) -> Vec<(String, String, String)> {
        let mut out = Vec::new();
        for (side, map) in [
            ("requests", &resources.requests),
            ("limits", &resources.limits),
        ] {
            for (name, q) in map.iter().flatten() {
                out.push((side.to_string(), name.clone(), q.0.clone()));
            }
        }
        out
    }

    fn q(side: &str, name: &str, value: &str) -> (String, String, String) {
        (side.into(), name.into(), value.into())
    }

    #[test]
    fn a_tiny_declared_memory_gets_the_dify_defaults() {
        // langgenius/agent 0.0.14 declares 1048576 (1 MiB): it would never start.
        let resources = plugin_resources(&RuntimeSpec::default(), 1_048_576);
        assert_eq!(
            quantities(&resources),
            [
                q("requests", "cpu", "100m"),
                q("requests", "memory", "50Mi"),
                q("limits", "cpu", "1"),
                q("limits", "memory", "3000Mi"),
            ]
        );
        let warning = memory_warning(&RuntimeSpec::default(), 1_048_576).expect("a warning");
        assert!(
            warning.contains("1Mi") && warning.contains("floor 50Mi"),
            "{warning}"
        );
        assert!(warning.contains("3000Mi"), "{warning}");
    }

    #[test]
    fn a_plausible_declared_memory_raises_the_request() {
        let resources = plugin_resources(&RuntimeSpec::default(), 256 * MI);
        assert!(quantities(&resources).contains(&q("requests", "memory", "256Mi")));
        assert!(quantities(&resources).contains(&q("limits", "memory", "3000Mi")));
        assert_eq!(memory_warning(&RuntimeSpec::default(), 256 * MI), None);
        assert_eq!(memory_warning(&RuntimeSpec::default(), MEMORY_FLOOR), None);
        // Above the default limit, the limit follows: a request above it would be refused.
        let resources = plugin_resources(&RuntimeSpec::default(), 4 * 1024 * MI);
        assert!(quantities(&resources).contains(&q("requests", "memory", "4Gi")));
        assert!(quantities(&resources).contains(&q("limits", "memory", "4Gi")));
    }

    #[test]
    fn the_users_resources_replace_the_defaults_per_resource() {
        let runtime: RuntimeSpec = serde_json::from_value(json!({
            "resources": {"limits": {"memory": "512Mi"}, "requests": {"ephemeral-storage": "1Gi"}}
        }))
        .expect("runtime");
        let resources = plugin_resources(&runtime, 1_048_576);
        assert_eq!(
            quantities(&resources),
            [
                q("requests", "cpu", "100m"),
                q("requests", "ephemeral-storage", "1Gi"),
                q("limits", "cpu", "1"),
                q("limits", "memory", "512Mi"),
            ],
            "memory is the user's alone (Kubernetes takes the limit as the request)"
        );
        assert_eq!(
            memory_warning(&runtime, 1_048_576),
            None,
            "the package's number does not matter when the user sets the memory"
        );
        let runtime: RuntimeSpec = serde_json::from_value(json!({
            "resources": {"requests": {"cpu": "2"}}
        }))
        .expect("runtime");
        let resources = plugin_resources(&runtime, 0);
        assert_eq!(
            quantities(&resources),
            [
                q("requests", "cpu", "2"),
                q("requests", "memory", "50Mi"),
                q("limits", "memory", "3000Mi"),
            ]
        );
    }

    #[test]
    fn resource_names_follow_the_retry_convention() {
        assert_eq!(resource_name("abc", 1), "abc");
        assert_eq!(resource_name("abc", 0), "abc");
        assert_eq!(resource_name("abc", 2), "abc--2");
        assert_eq!(resource_name("abc", 10), "abc--10");
    }

    #[test]
    fn shell_quoting_survives_quotes() {
        assert_eq!(shell_quote("a b".into()), "'a b'");
        assert_eq!(shell_quote("it's".into()), r"'it'\''s'");
    }

    #[test]
    fn label_values_are_made_valid() {
        assert_eq!(label_safe("_agent-"), "agent");
        assert_eq!(label_safe(&"a".repeat(100)).len(), 63);
    }

    #[test]
    fn unknown_override_is_refused() {
        let err = Templates::with_overrides([("deploymnet.yaml.j2".to_string(), String::new())])
            .expect_err("typo refused");
        assert!(err.to_string().contains("deployment.yaml.j2"), "{err}");
    }

    #[test]
    fn template_syntax_error_names_template_and_line() {
        let t = Templates::with_overrides([(
            "service.yaml.j2".to_string(),
            "apiVersion: v1\nkind: Service\nmetadata: {{ oops(\n".to_string(),
        )])
        .expect("known name");
        let err = t.environment().expect_err("syntax error");
        let text = err.to_string();
        assert!(
            text.starts_with("template service.yaml.j2 line 3:"),
            "{text}"
        );
    }

    fn set_named(name: &str) -> PluginSet {
        serde_json::from_value(json!({
            "apiVersion": crate::model::API_VERSION,
            "kind": "PluginSet",
            "metadata": {"name": name, "namespace": "dify"},
            "spec": {"registry": {"prefix": "r.example/p"}},
        }))
        .expect("a PluginSet")
    }

    #[test]
    fn overrides_travel_in_a_configmap_named_by_their_hash() {
        let set = set_named("team");
        assert_eq!(
            Templates::builtin().config_map(&set),
            None,
            "no overrides, no ConfigMap"
        );
        assert_eq!(Templates::builtin().config_map_name("team"), None);

        let service = "apiVersion: v1\nkind: Service\n".to_string();
        let templates =
            Templates::with_overrides([("service.yaml.j2".to_string(), service.clone())])
                .expect("known name");
        let object = templates.config_map(&set).expect("a ConfigMap");
        let name = object["metadata"]["name"]
            .as_str()
            .expect("name")
            .to_string();
        let hash = name
            .strip_prefix("plugsync-templates-team-")
            .expect("prefix");
        assert_eq!(hash.len(), 10, "{name}");
        assert!(hash.bytes().all(|b| b.is_ascii_hexdigit()), "{name}");
        assert_eq!(
            templates.config_map_name("team").as_deref(),
            Some(name.as_str())
        );
        assert_eq!(object["metadata"]["namespace"], "dify");
        assert_eq!(object["metadata"]["labels"][LABEL_PLUGINSET], "team");
        assert_eq!(object["metadata"]["labels"][LABEL_TEMPLATES], hash);
        assert_eq!(object["immutable"], true);
        assert_eq!(object["data"], json!({"service.yaml.j2": service}));
        assert_eq!(
            templates
                .environment()
                .expect("compiles")
                .config_map_name("team"),
            Some(name.clone()),
            "what each rendered Plugin names"
        );

        // Same content, same name; other content, another; another set, another.
        let again = Templates::with_overrides([("service.yaml.j2".to_string(), service.clone())])
            .expect("known name");
        assert_eq!(again.config_map_name("team"), Some(name.clone()));
        let other = Templates::with_overrides([(
            "service.yaml.j2".to_string(),
            format!("{service}# changed\n"),
        )])
        .expect("known name");
        assert_ne!(other.config_map_name("team"), Some(name.clone()));
        assert_ne!(
            templates.config_map_name("ops").as_deref(),
            Some(name.as_str()),
            "two sets with the same overrides never claim one object"
        );

        // Read back: the same templates; content that does not match the name is refused.
        let data: BTreeMap<String, String> =
            serde_json::from_value(object["data"].clone()).expect("data");
        assert_eq!(
            Templates::from_config_map(&name, &data).expect("reads back"),
            templates
        );
        let mut edited = data.clone();
        edited.insert("service.yaml.j2".into(), "kind: Service\n".into());
        let err = Templates::from_config_map(&name, &edited).expect_err("edited by hand");
        let text = err.to_string();
        assert!(text.starts_with(&format!("ConfigMap {name}:")), "{text}");
        assert!(text.contains("by hand"), "{text}");
        let mut typo = data;
        typo.insert("deploymnet.yaml.j2".into(), String::new());
        let err = Templates::from_config_map(&name, &typo).expect_err("unknown template");
        assert!(err.to_string().contains("deployment.yaml.j2"), "{err}");
    }

    #[test]
    fn environment_cache_keeps_the_templates_of_several_sets() {
        let cache = EnvironmentCache::default();
        let variants: Vec<Templates> = (0..3)
            .map(|i| {
                Templates::with_overrides([(
                    "service.yaml.j2".to_string(),
                    format!("# {i}\napiVersion: v1\n"),
                )])
                .expect("known name")
            })
            .collect();
        let first: Vec<Arc<Compiled>> = variants
            .iter()
            .map(|t| cache.environment(t).expect("compiles"))
            .collect();
        for (t, env) in variants.iter().zip(&first) {
            let again = cache.environment(t).expect("compiles");
            assert!(
                Arc::ptr_eq(env, &again),
                "compiled once each, however they alternate"
            );
        }
    }

    #[test]
    fn environment_cache_compiles_once_per_change_of_templates() {
        let cache = EnvironmentCache::default();
        let builtin = Templates::builtin();
        let first = cache
            .environment(&builtin)
            .expect("built-in templates compile");
        let again = cache.environment(&Templates::builtin()).expect("compiles");
        assert!(
            Arc::ptr_eq(&first, &again),
            "same templates, same environment"
        );

        let service = "apiVersion: v1\nkind: Service\nmetadata: {name: other}\n";
        let changed =
            Templates::with_overrides([("service.yaml.j2".to_string(), service.to_string())])
                .expect("known name");
        let other = cache.environment(&changed).expect("compiles");
        assert!(!Arc::ptr_eq(&first, &other), "other templates, recompiled");
        let text = other
            .get_template("service.yaml.j2")
            .and_then(|t| t.render(()))
            .expect("renders");
        assert_eq!(text, service, "the new sources are the ones compiled");

        let broken =
            Templates::with_overrides([("service.yaml.j2".to_string(), "{{ oops(\n".to_string())])
                .expect("known name");
        for _ in 0..2 {
            let err = cache
                .environment(&broken)
                .expect_err("syntax error, every time");
            assert!(
                err.to_string().starts_with("template service.yaml.j2"),
                "{err}"
            );
        }
        let back = cache.environment(&changed).expect("compiles");
        assert!(
            Arc::ptr_eq(&back, &other),
            "an error keeps the last good environment"
        );
    }
}
