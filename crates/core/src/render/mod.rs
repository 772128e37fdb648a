//! Render: a pure function from a locked PluginSet to everything that will run.
//!
//! Inputs are plain data (the declared set, each plugin's lock entry, manifest and package
//! bytes, and the templates); outputs are the Dockerfile, the build context and the
//! Kubernetes objects of each plugin. No I/O (but one warning logged per package that asks
//! for implausibly little memory, see `resources::memory_warning`), no clock, no randomness, and every
//! map is ordered, so identical inputs give byte-identical output on every machine: that is
//! what makes the pull-request diff trustworthy and cheap.
//!
//! Templates are minijinja, embedded in the binary (`templates/` in this repository); a
//! `templates/` folder in the user's repository overrides any of them by file name. Values
//! are interpolated with `tojson` (JSON is YAML), so no value can break the YAML structure.
//!
//! One step a file: `templates` compiles the templates; per plugin (`plugin`), `values`
//! gathers what the templates see, `build` renders the Dockerfile and hashes the build
//! inputs, `labels` makes the objects' labels and annotations, and `objects` renders each
//! object template into an [`ObjectForm`]; `set` shares a set's plugins out over the cores;
//! `fingerprint` digests render's inputs and `text` prints its output.

mod build;
pub mod context;
mod fingerprint;
mod form;
mod json;
mod labels;
mod objects;
mod plugin;
mod resources;
mod set;
mod templates;
mod text;
mod values;

use std::collections::BTreeMap;

use serde_json::Value;

pub use context::{build_context, BuildContext};
pub use fingerprint::{plugin_fingerprint, set_fingerprint};
pub(crate) use form::AsIdentity;
pub use form::{AsValue, AsYaml, Expected, ObjectForm};
pub use plugin::{image_by_digest, render_plugin, resource_name};
pub use resources::{memory_quantity, MEMORY_FLOOR};
pub use set::render_set;
pub(crate) use set::render_set_map_as;
pub use templates::{
    Compiled, EnvironmentCache, Templates, LABEL_TEMPLATES, TEMPLATES_CONFIG_MAP_PREFIX,
};
pub(crate) use text::documents_to_yaml;
pub use text::{json_list, objects_to_json_items, objects_to_yaml, TextFormat};

use crate::model::{LockedPlugin, RuntimeSpec};
use crate::package::Manifest;

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
