//! The Kubernetes objects of a plugin: each object template rendered, in apply order, and
//! read into the form the caller keeps ([`ObjectForm`]).

use super::templates::{render_template, TEMPLATES};
use super::{Compiled, Expected, ObjectForm, RenderError};

/// What each object must be named, and where.
pub(super) struct ObjectNames<'a> {
    /// The Plugin's, the Job's and the Deployment's name: the attempt's resource name.
    pub(super) resource_name: &'a str,
    /// The Service's name (it outlives attempts).
    pub(super) service_name: &'a str,
    /// Every object's namespace.
    pub(super) namespace: &'a str,
    /// The plugin (`author/name`), for errors.
    pub(super) plugin: &'a str,
}

/// The plugin's objects from the object templates with `ctx`, in apply order; no Job when
/// the image is already known (`image_known`).
pub(super) fn render_objects<F: ObjectForm>(
    env: &Compiled,
    ctx: minijinja::Value,
    names: &ObjectNames<'_>,
    image_known: bool,
) -> Result<Vec<F::Object>, RenderError> {
    let mut objects = Vec::with_capacity(4);
    for (template, kind) in TEMPLATES.iter().skip(1) {
        if *template == "job.yaml.j2" && image_known {
            continue;
        }
        let text = render_template(env, template, names.plugin, ctx.clone())?;
        let expected_name = if *template == "service.yaml.j2" {
            names.service_name
        } else {
            names.resource_name
        };
        objects.push(F::read(
            &text,
            &Expected {
                template,
                kind: kind.unwrap_or_default(),
                name: expected_name,
                namespace: names.namespace,
                plugin: names.plugin,
            },
        )?);
    }
    Ok(objects)
}
