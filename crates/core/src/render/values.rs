//! What the templates of one plugin see: the plugin, its runner, build and registry
//! settings, its set, and the values that follow from its runtime settings; put together
//! with the `Plugin`'s spec into the template context once the build inputs are known.

use serde::Serialize;
use serde_json::{json, Value};

use super::json::{prepared, prepared_entries};
use super::labels::ObjectLabels;
use super::resources::{plugin_env, plugin_resources};
use super::{PluginInput, RenderError};
use crate::crd::PluginSpec;
use crate::model::{PluginSet, RegistryType, RuntimeSpec};

/// The image a plugin's build pushes: `<registry prefix>/<name>-<plugin id>:<version>`.
pub(super) fn image(set: &PluginSet, input: &PluginInput<'_>) -> String {
    format!(
        "{}/{}-{}:{}",
        set.spec.registry.prefix, input.manifest.name, input.locked.plugin_id, input.locked.version
    )
}

/// The values every template of a plugin sees of it and its set (the Dockerfile's whole
/// context); the build step adds to `build` and `plugin.image_ref`.
pub(super) struct PluginValues<'a> {
    /// `plugin`.
    pub(super) plugin: PluginContext<'a>,
    /// `runner`: the package's language, version and entrypoint.
    pub(super) runner: Value,
    /// `build`: the set's build settings, then the build context and inputs.
    pub(super) build: Value,
    /// `registry`: where images go.
    pub(super) registry: Value,
    /// `set`: the set's name and namespace.
    pub(super) set: Value,
}

impl<'a> PluginValues<'a> {
    /// The values of `input` in `set`, rendered as `resource_name`, its image `image`; an
    /// error when the set configures no base image for the package's Python version.
    pub(super) fn new(
        set: &'a PluginSet,
        input: &PluginInput<'a>,
        resource_name: &'a str,
        image: &'a str,
    ) -> Result<PluginValues<'a>, RenderError> {
        let locked = input.locked;
        let manifest = input.manifest;
        let spec = &set.spec;
        let namespace = set.namespace();
        let plugin_id = &locked.plugin_id;
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

        let service_name = format!("svc-{plugin_id}");
        let plugin = PluginContext {
            name: &manifest.name,
            author: &manifest.author,
            full_name: &locked.name,
            version: &locked.version,
            plugin_id,
            unique_identifier: &locked.unique_identifier,
            attempt: input.attempt.max(1),
            resource_name,
            endpoint: format!("http://{service_name}.{namespace}:8080"),
            service_name,
            image,
            // Set by the build step, once the build inputs (and so a recorded digest) are
            // known.
            image_ref: image.to_string(),
        };
        let runner = json!({
            "language": manifest.runner_language,
            "version": manifest.runner_version,
            "entrypoint": manifest.entrypoint,
        });
        let build = json!({
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
        let set = json!({ "name": set.metadata.name, "namespace": namespace });
        Ok(PluginValues {
            plugin,
            runner,
            build,
            registry,
            set,
        })
    }

    /// The context of the object templates: these values with the labels, the runtime
    /// values and the `Plugin`'s spec; and the name the Service must have.
    pub(super) fn into_context(
        self,
        labels: &ObjectLabels,
        shared: &RuntimeValues,
        plugin_spec: PluginSpec,
    ) -> (minijinja::Value, String) {
        let PluginValues {
            plugin,
            runner,
            build,
            registry,
            set,
        } = self;
        let ctx = minijinja::context! {
            set => &set,
            plugin => &plugin,
            runner => &runner,
            build => prepared_entries(build),
            registry => &registry,
            runtime => &shared.runtime,
            labels => &labels.labels,
            pod_labels => &labels.labels,
            selector_labels => &labels.selector_labels,
            service_labels => &labels.service_labels,
            service_selector => &labels.service_selector,
            annotations => &labels.annotations,
            service_annotations => &labels.service_annotations,
            env => &shared.env,
            resources => &shared.resources,
            plugin_spec => prepared(plugin_spec),
        };
        (ctx, plugin.service_name)
    }
}

/// What the templates see as `plugin`.
#[derive(Serialize)]
pub(super) struct PluginContext<'a> {
    pub(super) name: &'a str,
    pub(super) author: &'a str,
    pub(super) full_name: &'a str,
    pub(super) version: &'a str,
    pub(super) plugin_id: &'a str,
    pub(super) unique_identifier: &'a str,
    pub(super) attempt: u32,
    pub(super) resource_name: &'a str,
    pub(super) service_name: String,
    pub(super) endpoint: String,
    pub(super) image: &'a str,
    pub(super) image_ref: String,
}

/// The template values that follow from a plugin's runtime settings and its package's
/// memory alone. In a set, most plugins share both, so a run of plugins keeps the values
/// of the plugin before and builds them again only when either differs.
#[derive(Default)]
pub(super) struct RuntimeValues {
    /// The settings and memory the values were built for.
    built_for: Option<(RuntimeSpec, i64)>,
    pub(super) runtime: minijinja::Value,
    pub(super) env: minijinja::Value,
    pub(super) resources: minijinja::Value,
}

impl RuntimeValues {
    /// The values for `runtime` and `memory`, built now unless they are the last ones'.
    pub(super) fn for_plugin(&mut self, runtime: &RuntimeSpec, memory: i64) -> &Self {
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
