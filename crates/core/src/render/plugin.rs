//! One plugin rendered, step by step: its template values, its build (the Dockerfile, the
//! build context and the build-inputs hash), the labels of its objects, then the objects.

use super::build::{build_inputs, BuildInputs};
use super::labels::ObjectLabels;
use super::objects::{render_objects, ObjectNames};
use super::resources::warn_low_memory;
use super::values::{self, PluginValues, RuntimeValues};
use super::{
    AsValue, Compiled, ObjectForm, PluginInput, RenderError, RenderSettings, RenderedPlugin,
};
use crate::crd::{BuildRef, PackageRef, PluginSpec, RunnerSpec};
use crate::model::PluginSet;

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

/// [`render_plugin_as`], taking the runtime values from `shared` when they are the same.
pub(super) fn render_plugin_sharing<F: ObjectForm>(
    set: &PluginSet,
    input: &PluginInput<'_>,
    env: &Compiled,
    settings: &RenderSettings,
    shared: &mut RuntimeValues,
) -> Result<RenderedPlugin<F::Object>, RenderError> {
    let locked = input.locked;
    let resource_name = resource_name(&locked.plugin_id, input.attempt);
    let image = values::image(set, input);
    let mut values = PluginValues::new(set, input, &resource_name, &image)?;

    // 1. The Dockerfile, and from it the build context and the build-inputs hash.
    let build = build_inputs(env, set, input, settings, &mut values)?;

    // 2. Labels, annotations, runtime settings.
    let labels = ObjectLabels::new(set, input, &resource_name, &build.inputs_hash);
    let shared = shared.for_plugin(input.runtime, input.manifest.memory);
    warn_low_memory(locked, input.runtime, input.manifest.memory);
    let plugin_spec = plugin_spec(set, input, env, &build, &image);
    let (ctx, service_name) = values.into_context(&labels, shared, plugin_spec);

    // 3. The objects, in apply order; no Job when the image is already known.
    let names = ObjectNames {
        resource_name: &resource_name,
        service_name: &service_name,
        namespace: set.namespace(),
        plugin: &locked.name,
    };
    let objects = render_objects::<F>(env, ctx, &names, build.image_digest.is_some())?;

    Ok(RenderedPlugin {
        name: locked.name.clone(),
        version: locked.version.clone(),
        plugin_id: locked.plugin_id.clone(),
        resource_name,
        dockerfile: build.dockerfile,
        context: build.context,
        objects,
    })
}

/// The spec of the plugin's `Plugin` resource, as the `plugin.yaml.j2` template writes it.
fn plugin_spec(
    set: &PluginSet,
    input: &PluginInput<'_>,
    env: &Compiled,
    build: &BuildInputs<'_>,
    image: &str,
) -> PluginSpec {
    let locked = input.locked;
    let manifest = input.manifest;
    PluginSpec {
        plugin_set: set.metadata.name.clone(),
        name: locked.name.clone(),
        version: locked.version.clone(),
        unique_identifier: locked.unique_identifier.clone(),
        plugin_id: locked.plugin_id.clone(),
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
            context_sha256: build.context.sha256.clone(),
            inputs_hash: build.inputs_hash.clone(),
            image: image.to_string(),
        },
        runtime: input.runtime.clone(),
        image_digest: build.image_digest.map(str::to_string),
        templates: env.config_map_name(&set.metadata.name),
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
    fn resource_names_follow_the_retry_convention() {
        assert_eq!(resource_name("abc", 1), "abc");
        assert_eq!(resource_name("abc", 0), "abc");
        assert_eq!(resource_name("abc", 2), "abc--2");
        assert_eq!(resource_name("abc", 10), "abc--10");
    }
}
