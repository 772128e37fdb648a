//! The object form of the pull-request diff's unchanged plugins.

use serde_json::Value;

use crate::render::{Expected, ObjectForm, RenderError};

/// Objects read as far as their identity (`apiVersion`, `kind`, `metadata`; see
/// [`super::identity_from_str`]), checked as [`crate::render::AsValue`] checks them.
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
        let value = super::identity_from_str(text)
            .map_err(|e| expected.invalid(format!("not YAML: {e}")))?;
        expected.check(|path| {
            path.iter()
                .try_fold(&value, |node, key| node.get(key))
                .and_then(Value::as_str)
        })?;
        Ok(value)
    }
}
