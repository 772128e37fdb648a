//! `plugins.lock`: every declared plugin pinned to exact package bytes.
//!
//! Written by `plugsync lock`, committed next to `plugins.yaml`. Entries are sorted by plugin
//! name and fields are in a fixed order, so a one-plugin change is a one-entry git diff.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::API_VERSION;

/// The lockfile document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(
    title = "PluginLock",
    description = "plugsync plugins.lock: plugins pinned by digest"
)]
pub struct PluginLock {
    /// Must be `plugsync.dev/v1alpha1`.
    pub api_version: String,
    /// Must be `PluginLock`.
    pub kind: String,
    /// One entry per declared plugin, sorted by `name`.
    #[serde(default)]
    pub plugins: Vec<LockedPlugin>,
    /// Images already built, keyed by build-inputs hash (written by
    /// `plugsync lock --from-cluster` or the in-cluster loop): a render whose build inputs
    /// match one runs that digest and renders no build Job. Sorted by image, then hash.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<LockedImage>,
    /// The private inventory `inventory:` and `group:` entries were resolved in, pinned by
    /// digest: a locked repository reads exactly this inventory, whatever its tag says now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inventory: Option<LockedInventory>,
}

/// The private inventory a lock was resolved in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LockedInventory {
    /// `spec.sources.inventory.url` as declared.
    pub url: String,
    /// `sha256:…` of the inventory manifest used.
    pub digest: String,
}

/// One built image, pinned by digest, for the exact build inputs that produced it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LockedImage {
    /// `spec.build.inputsHash` of the Plugin that built it (64 hex): the key.
    pub inputs_hash: String,
    /// The image repository and tag it was pushed to (for people; not part of the key).
    pub image: String,
    /// `sha256:…` of the pushed manifest.
    pub digest: String,
}

impl Default for PluginLock {
    fn default() -> Self {
        PluginLock {
            api_version: API_VERSION.to_string(),
            kind: "PluginLock".to_string(),
            plugins: Vec::new(),
            images: Vec::new(),
            inventory: None,
        }
    }
}

/// One pinned plugin package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LockedPlugin {
    /// `author/name` from the package manifest.
    pub name: String,
    /// Version from the package manifest.
    pub version: String,
    /// Exact source: the URL fetched, or `path:<dir>` for an in-repo plugin.
    pub source: String,
    /// sha256 of the package file (hex): what plugsync verifies on every fetch.
    pub sha256: String,
    /// Dify's checksum of the package contents (hex).
    pub checksum: String,
    /// Dify's unique identifier `author/name:version@checksum`.
    pub unique_identifier: String,
    /// The 32-hex id that names the plugin's Kubernetes objects.
    pub plugin_id: String,
    /// Who signed the package: the name of the trusted key that verifies it
    /// (`dify-official`, or a key plugins.yaml names), `unsigned`, or `invalid` (a
    /// signature no trusted key verifies). Absent in locks written before plugsync checked
    /// signatures; `plugsync lock` fills it in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

impl LockedPlugin {
    /// Whether `self` (the entry in plugins.lock) pins what `now` (resolved afresh) pins: an
    /// old entry that records no signature still matches, so upgrading plugsync does not
    /// make every lock stale.
    pub fn pins(&self, now: &LockedPlugin) -> bool {
        let signature_matches = self.signature.is_none() || self.signature == now.signature;
        signature_matches
            && LockedPlugin {
                signature: None,
                ..self.clone()
            } == LockedPlugin {
                signature: None,
                ..now.clone()
            }
    }
}

impl PluginLock {
    /// A lock holding `plugins`, in canonical order.
    pub fn new(mut plugins: Vec<LockedPlugin>) -> PluginLock {
        plugins.sort_by(|a, b| a.name.cmp(&b.name).then(a.source.cmp(&b.source)));
        PluginLock {
            plugins,
            ..PluginLock::default()
        }
    }

    /// Whether this lock (as read from plugins.lock) pins what `now` (resolved afresh) pins,
    /// entry by entry ([`LockedPlugin::pins`]), with the same recorded images.
    pub fn pins(&self, now: &PluginLock) -> bool {
        self.api_version == now.api_version
            && self.kind == now.kind
            && self.images == now.images
            && self.inventory == now.inventory
            && self.plugins.len() == now.plugins.len()
            && self
                .plugins
                .iter()
                .zip(&now.plugins)
                .all(|(a, b)| a.pins(b))
    }

    /// Built image digests by build-inputs hash, for render.
    pub fn built_images(&self) -> std::collections::BTreeMap<String, String> {
        self.images
            .iter()
            .map(|i| (i.inputs_hash.clone(), i.digest.clone()))
            .collect()
    }

    /// Records built images (replacing any entry with the same inputs hash) and keeps only
    /// images of plugins still pinned (`…-<plugin-id>:<version>`), in canonical order.
    /// Returns whether anything changed.
    pub fn record_images(&mut self, images: impl IntoIterator<Item = LockedImage>) -> bool {
        let before = self.images.clone();
        for image in images {
            self.images.retain(|i| i.inputs_hash != image.inputs_hash);
            self.images.push(image);
        }
        let pinned: Vec<String> = self
            .plugins
            .iter()
            .map(|p| format!("-{}:{}", p.plugin_id, p.version))
            .collect();
        self.images.retain(|i| {
            pinned
                .iter()
                .any(|suffix| i.image.ends_with(suffix.as_str()))
        });
        self.images.sort_by(|a, b| {
            a.image
                .cmp(&b.image)
                .then_with(|| a.inputs_hash.cmp(&b.inputs_hash))
        });
        self.images != before
    }

    /// The entry pinned for a source, if any.
    pub fn find_by_source(&self, source: &str) -> Option<&LockedPlugin> {
        self.plugins.iter().find(|p| p.source == source)
    }

    /// The canonical text of the lockfile (what `plugsync lock` writes).
    pub fn to_yaml(&self) -> String {
        // As `yaml::to_string` prints (the model imports no other module): identifiers
        // stay on one line, never folded.
        let options = serde_saphyr::ser_options! {
            folded_wrap_chars: usize::MAX,
            min_fold_chars: usize::MAX,
        };
        let body = serde_saphyr::to_string_with_options(self, options).unwrap_or_default();
        format!("# Generated by `plugsync lock`. Do not edit by hand; commit it next to plugins.yaml.\n{body}")
    }
}
