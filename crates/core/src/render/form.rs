//! The forms a rendered object is kept in ([`ObjectForm`]), each checked the same way.

use serde_json::Value;

use super::RenderError;

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
        read_checked(text, expected, crate::yaml::value_from_str)
    }
}

/// `text` read into a value by `parse` and checked against `expected`: the one reading of
/// [`AsValue`] and [`AsIdentity`], which differ only in how much of the object they read.
fn read_checked<E: std::fmt::Display>(
    text: &str,
    expected: &Expected<'_>,
    parse: impl FnOnce(&str) -> Result<Value, E>,
) -> Result<Value, RenderError> {
    let value = parse(text).map_err(|e| expected.invalid(format!("not YAML: {e}")))?;
    expected.check(|path| {
        path.iter()
            .try_fold(&value, |node, key| node.get(key))
            .and_then(Value::as_str)
    })?;
    Ok(value)
}

/// Objects read as far as their identity (`apiVersion`, `kind`, `metadata`; see
/// [`crate::yaml::identity_from_str`]), checked as [`AsValue`] checks them.
///
/// Why: the pull-request diff needs only the keys of a plugin whose render inputs are the
/// same at both revisions (it renders the same objects at both, so they are unchanged),
/// and reading each of those objects whole was most of the diff's time. What is left
/// unread is the same at both revisions; the plugins that differ are read whole.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AsIdentity;

impl ObjectForm for AsIdentity {
    type Object = Value;

    fn read(text: &str, expected: &Expected<'_>) -> Result<Value, RenderError> {
        read_checked(text, expected, crate::yaml::identity_from_str)
    }
}

/// Objects as YAML documents, the bytes [`objects_to_yaml`](super::objects_to_yaml) prints for the [`AsValue`]
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
