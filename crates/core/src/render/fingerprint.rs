//! Digests of what rendering reads: equal digests, byte-identical output (render is a pure
//! function of its inputs), so the pull-request diff renders what two revisions share once.

use std::collections::BTreeMap;

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{PluginInput, RenderSettings, Templates};
use crate::model::PluginSet;

/// A digest of everything [`render_plugin`](super::render_plugin) reads that is the same for every plugin of a
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
