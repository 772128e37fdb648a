//! The build step of a plugin: its Dockerfile, the build context made of it and the
//! package, the builder's arguments and the build-inputs hash over them, and the image
//! digest already built for those inputs, if any.

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::templates::render_template;
use super::values::PluginValues;
use super::{
    build_context, image_by_digest, BuildContext, Compiled, PluginInput, RenderError,
    RenderSettings,
};
use crate::model::PluginSet;

/// What the build step gives the rest of a plugin's render.
pub(super) struct BuildInputs<'a> {
    /// The rendered Dockerfile.
    pub(super) dockerfile: String,
    /// The build context (the package and the Dockerfile).
    pub(super) context: BuildContext,
    /// The hash of everything the build reads: the context, the builder image, its arguments.
    pub(super) inputs_hash: String,
    /// The digest of the image to run, when known (given, or recorded for these inputs):
    /// then there is nothing to build.
    pub(super) image_digest: Option<&'a str>,
}

/// Renders the Dockerfile with `values`, makes the build context and the build-inputs hash
/// from it, and adds them to `values` (`build.context_sha256`, `build.context_url`,
/// `build.inputs_hash`, `build.args`; `plugin.image_ref` by digest when one is known).
pub(super) fn build_inputs<'a>(
    env: &Compiled,
    set: &PluginSet,
    input: &PluginInput<'a>,
    settings: &RenderSettings,
    values: &mut PluginValues<'_>,
) -> Result<BuildInputs<'a>, RenderError> {
    let dockerfile = render_template(
        env,
        "Dockerfile.j2",
        &input.locked.name,
        minijinja::context! { plugin => &values.plugin, runner => &values.runner, build => &values.build, registry => &values.registry, set => &values.set },
    )?;
    let context = build_context(input.package, &dockerfile);
    let args = builder_args(set, values.plugin.image);
    let inputs_hash = inputs_hash(&context, &set.spec.build.builder_image, &args);
    if let Value::Object(b) = &mut values.build {
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
    if let Some(digest) = image_digest {
        values.plugin.image_ref = image_by_digest(values.plugin.image, digest);
    }
    Ok(BuildInputs {
        dockerfile,
        context,
        inputs_hash,
        image_digest,
    })
}

/// The builder's (Kaniko's) arguments for pushing `image`.
fn builder_args(set: &PluginSet, image: &str) -> Vec<String> {
    let mut args = vec![
        "--context=dir:///workspace".to_string(),
        "--dockerfile=/workspace/Dockerfile".to_string(),
        format!("--destination={image}"),
        "--digest-file=/dev/termination-log".to_string(),
        "--reproducible".to_string(),
    ];
    if set.spec.registry.insecure {
        args.push("--insecure".to_string());
        args.push("--skip-tls-verify".to_string());
    }
    args
}

/// The build-inputs hash: what identifies an image built from `context` by `builder_image`
/// with `args`, so a digest recorded for it is reused rather than built again.
fn inputs_hash(context: &BuildContext, builder_image: &str, args: &[String]) -> String {
    hex::encode(Sha256::digest(
        format!(
            "{}\n{}\n{}\n",
            context.sha256,
            builder_image,
            args.join(" ")
        )
        .as_bytes(),
    ))
}
