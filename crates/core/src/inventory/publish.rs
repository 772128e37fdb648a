//! `plugsync inventory publish` and `plugsync inventory group`: push packages, add them (and
//! groups) to the inventory, push the inventory and its signature.
//!
//! Publishing reads the current inventory at the tag first (verified with the publishing
//! key's public half: nobody publishes over an inventory they cannot vouch for), adds to
//! it, and pushes only what is missing:
//! - a package whose artifact manifest (its digest is computed locally, the bytes being
//!   deterministic) is already in the registry is not pushed again: one HEAD;
//! - an inventory with nothing new is not pushed again at all.
//!
//! A published version is immutable: the same `author/name` and version with other bytes,
//! or a group version with other contents, is refused.
//!
//! Order of writes: package artifacts, then the inventory by digest, its signature, and the
//! tag last, so a reader following the tag never finds an unsigned inventory.

use std::time::Duration;

use serde::Serialize;
use serde_json::{json, Value};
use tokio::runtime::Handle;

use super::cache::pull;
use super::oci::{Registry, Repo};
use super::sign::{self, PrivateKey};
use super::{
    db, Group, Inventory, InventoryError, InventoryRef, Login, PluginRow, EMPTY_CONFIG_MEDIA_TYPE,
    INVENTORY_ARTIFACT_TYPE, INVENTORY_LAYER_MEDIA_TYPE, PACKAGE_ARTIFACT_TYPE,
    PACKAGE_LAYER_MEDIA_TYPE,
};
use crate::package::signature::TrustedKey;
use crate::package::Package;

/// The OCI empty JSON, config of every artifact.
const EMPTY_CONFIG: &[u8] = b"{}";

/// Where and how to publish.
#[derive(Debug, Clone)]
pub struct PublishOptions {
    /// The inventory tag to publish to (`oci://host/repo:tag`; not a digest).
    pub target: InventoryRef,
    /// Signs the inventory.
    pub key: PrivateKey,
    /// Plain HTTP allowed to the registry.
    pub insecure: bool,
    /// Credentials, if the registry asks.
    pub login: Option<Login>,
    /// Bound on each registry request.
    pub timeout: Duration,
    /// Keys the packages' Dify signatures are checked with (the status is recorded).
    pub trusted_keys: Vec<TrustedKey>,
}

/// A package to publish: where it came from (for messages) and its bytes.
#[derive(Debug, Clone)]
pub struct PackageInput {
    /// The file or the plugins.yaml entry it came from.
    pub label: String,
    /// The `.difypkg` bytes.
    pub bytes: Vec<u8>,
}

/// What happened to one package.
#[derive(Debug, Clone, Serialize)]
pub struct PackageOutcome {
    /// `author/name`.
    pub name: String,
    /// Version.
    pub version: String,
    /// `sha256:` of the package.
    pub digest: String,
    /// `host/path@sha256:…` of its artifact.
    pub artifact: String,
    /// Whether it was pushed now (else it was already there).
    pub pushed: bool,
    /// Whether the inventory gained it now (else it was already listed).
    pub added: bool,
    /// Its Dify signature status.
    pub signature: String,
}

/// What a publish did.
#[derive(Debug, Clone, Serialize)]
pub struct PublishReport {
    /// `host/repo:tag`.
    pub reference: String,
    /// The inventory's manifest digest after the publish.
    pub digest: String,
    /// Each package.
    pub packages: Vec<PackageOutcome>,
    /// Groups added now (`name:version`).
    pub groups_added: Vec<String>,
    /// Whether a new inventory was pushed (false: nothing new, nothing pushed).
    pub inventory_pushed: bool,
}

/// Publishes `packages` and `groups` into the inventory at `options.target`.
///
/// Blocking (SQLite): call from `spawn_blocking`; `handle` drives the registry requests.
pub fn publish(
    handle: &Handle,
    options: &PublishOptions,
    packages: Vec<PackageInput>,
    groups: Vec<Group>,
) -> Result<PublishReport, InventoryError> {
    if options.target.digest.is_some() {
        return Err(InventoryError::Reference {
            reference: options.target.to_string(),
            reason: "publish to a tag (oci://host/repo:tag), not a digest".into(),
        });
    }
    let registry = Registry::new(
        &options.target.registry,
        options.insecure,
        options.login.as_ref(),
        options.timeout,
    );
    let repo = options.target.repo();
    let tag = options
        .target
        .tag
        .clone()
        .unwrap_or_else(|| "latest".into());

    let current = handle.block_on(pull(&registry, &options.target, &options.key.public()))?;
    let mut inventory = match &current {
        Some(pulled) => from_bytes(&pulled.database)?,
        None => Inventory::default(),
    };
    let mut changed = current.is_none();

    let mut outcomes: Vec<PackageOutcome> = Vec::new();
    for input in packages {
        let package = Package::read(&input.bytes).map_err(|e| InventoryError::Package {
            path: input.label.clone(),
            reason: e.to_string(),
        })?;
        let name = package.name();
        let version = package.manifest.version.clone();
        let digest = format!("sha256:{}", package.sha256);
        if outcomes
            .iter()
            .any(|o| o.name == name && o.version == version && o.digest == digest)
        {
            continue;
        }
        let package_repo = Repo {
            registry: repo.registry.clone(),
            repository: format!("{}/packages/{}", repo.repository, name.to_lowercase()),
        };
        let (manifest, manifest_digest) = package_manifest(&package, &input.bytes);
        let listed = inventory.find(&name, &version).cloned();
        if let Some(row) = &listed {
            if row.digest != digest {
                return Err(InventoryError::Conflict(format!(
                    "{name} {version} is already in the inventory {} with package digest {}, but {} has digest {digest}; published versions never change: publish it as a new version",
                    options.target, row.digest, input.label
                )));
            }
        }
        let present = handle.block_on(registry.head(&package_repo.digest(&manifest_digest)))?;
        let pushed = present.is_none();
        if pushed {
            handle.block_on(async {
                registry.push_blob(&package_repo, EMPTY_CONFIG).await?;
                registry.push_blob(&package_repo, &input.bytes).await?;
                registry
                    .push_manifest(&package_repo.digest(&manifest_digest), manifest)
                    .await
            })?;
        }
        let signature = package
            .verify_signature(&options.trusted_keys)
            .recorded_as()
            .to_owned();
        if listed.is_none() {
            inventory.plugins.push(PluginRow {
                name: name.clone(),
                version: version.clone(),
                description: description(&package.manifest.description),
                checksum: package.checksum.clone(),
                unique_identifier: package.unique_identifier(),
                digest: digest.clone(),
                size: package.size,
                repository: package_repo.name(),
                manifest_digest: manifest_digest.clone(),
                signature: signature.clone(),
            });
            changed = true;
        }
        outcomes.push(PackageOutcome {
            name,
            version,
            digest,
            artifact: format!("{}@{manifest_digest}", package_repo.name()),
            pushed,
            added: listed.is_none(),
            signature,
        });
    }

    let mut groups_added = Vec::new();
    for group in groups {
        for entry in &group.entries {
            if inventory.find(&entry.plugin, &entry.version).is_none() {
                return Err(InventoryError::Group {
                    group: group.id(),
                    reason: format!(
                        "{}@{} is not in the inventory {}; publish it first (plugsync inventory publish)",
                        entry.plugin, entry.version, options.target
                    ),
                });
            }
        }
        match inventory.group(&group.name, &group.version) {
            Some(existing) if same_group(existing, &group) => {}
            Some(_) => {
                return Err(InventoryError::Conflict(format!(
                    "group {} is already in the inventory {} with other contents; published group versions never change: define it as a new version",
                    group.id(),
                    options.target
                )))
            }
            None => {
                groups_added.push(group.id());
                inventory.groups.push(group);
                changed = true;
            }
        }
    }

    if !changed {
        let digest = current.map(|c| c.digest).unwrap_or_default();
        return Ok(PublishReport {
            reference: options.target.tagged(),
            digest,
            packages: outcomes,
            groups_added,
            inventory_pushed: false,
        });
    }

    let database = db::to_bytes(&inventory)?;
    let digest = handle.block_on(push_inventory(
        &registry,
        &repo,
        &tag,
        &database,
        &options.key,
    ))?;
    Ok(PublishReport {
        reference: options.target.tagged(),
        digest,
        packages: outcomes,
        groups_added,
        inventory_pushed: true,
    })
}

fn from_bytes(database: &[u8]) -> Result<Inventory, InventoryError> {
    let dir = tempfile::tempdir().map_err(|e| InventoryError::Io {
        what: "a temporary directory for the inventory database".into(),
        reason: e.to_string(),
    })?;
    let path = dir.path().join("inventory.db");
    std::fs::write(&path, database).map_err(|e| InventoryError::Io {
        what: path.display().to_string(),
        reason: e.to_string(),
    })?;
    db::read(&path)
}

fn same_group(a: &Group, b: &Group) -> bool {
    let key = |g: &Group| {
        let mut e: Vec<_> = g
            .entries
            .iter()
            .map(|e| (e.plugin.clone(), e.version.clone(), e.mandatory))
            .collect();
        e.sort();
        e
    };
    key(a) == key(b)
}

/// The English description, else the first one.
fn description(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Object(map) => map
            .get("en_US")
            .or_else(|| map.values().next())
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        _ => String::new(),
    }
}

fn descriptor(media_type: &str, bytes: &[u8]) -> Value {
    json!({
        "mediaType": media_type,
        "digest": format!("sha256:{}", crate::package::sha256_hex(bytes)),
        "size": bytes.len(),
    })
}

fn manifest_bytes(value: &Value) -> (Vec<u8>, String) {
    let bytes = serde_json::to_vec(value).expect("a JSON value serializes");
    let digest = format!("sha256:{}", crate::package::sha256_hex(&bytes));
    (bytes, digest)
}

/// The OCI manifest of a package artifact (deterministic: same package, same digest).
fn package_manifest(package: &Package, bytes: &[u8]) -> (Vec<u8>, String) {
    let mut layer = descriptor(PACKAGE_LAYER_MEDIA_TYPE, bytes);
    let file = format!(
        "{}_{}.difypkg",
        package.name().replace('/', "-"),
        package.manifest.version
    );
    layer["annotations"] = json!({"org.opencontainers.image.title": file});
    manifest_bytes(&json!({
        "schemaVersion": 2,
        "mediaType": oci_client::manifest::OCI_IMAGE_MEDIA_TYPE,
        "artifactType": PACKAGE_ARTIFACT_TYPE,
        "config": descriptor(EMPTY_CONFIG_MEDIA_TYPE, EMPTY_CONFIG),
        "layers": [layer],
        "annotations": {
            "dev.plugsync.plugin.unique-identifier": package.unique_identifier(),
            "org.opencontainers.image.version": package.manifest.version,
        },
    }))
}

/// Pushes the inventory database and manifest by digest, its cosign signature, then the
/// tag; returns the manifest digest.
async fn push_inventory(
    registry: &Registry,
    repo: &Repo,
    tag: &str,
    database: &[u8],
    key: &PrivateKey,
) -> Result<String, InventoryError> {
    let mut layer = descriptor(INVENTORY_LAYER_MEDIA_TYPE, database);
    layer["annotations"] = json!({"org.opencontainers.image.title": "inventory.db"});
    let (manifest, digest) = manifest_bytes(&json!({
        "schemaVersion": 2,
        "mediaType": oci_client::manifest::OCI_IMAGE_MEDIA_TYPE,
        "artifactType": INVENTORY_ARTIFACT_TYPE,
        "config": descriptor(EMPTY_CONFIG_MEDIA_TYPE, EMPTY_CONFIG),
        "layers": [layer],
        "annotations": {"dev.plugsync.inventory.schema-version": db::SCHEMA_VERSION.to_string()},
    }));
    registry.push_blob(repo, EMPTY_CONFIG).await?;
    registry.push_blob(repo, database).await?;
    registry
        .push_manifest(&repo.digest(&digest), manifest.clone())
        .await?;

    // cosign's signature artifact: the simple-signing payload as the one layer, the
    // signature in its annotation, a config naming the payload as cosign writes it.
    let payload = sign::payload(&repo.name(), &digest);
    let signature = key.sign(&payload);
    let payload_digest = format!("sha256:{}", crate::package::sha256_hex(&payload));
    let config = serde_json::to_vec(&json!({
        "architecture": "",
        "config": {},
        "created": "0001-01-01T00:00:00Z",
        "history": [{"created": "0001-01-01T00:00:00Z"}],
        "os": "",
        "rootfs": {"type": "layers", "diff_ids": [payload_digest]},
    }))
    .expect("a JSON value serializes");
    let mut sig_layer = descriptor(sign::SIMPLE_SIGNING_MEDIA_TYPE, &payload);
    sig_layer["annotations"] = json!({ sign::SIGNATURE_ANNOTATION: signature });
    let (sig_manifest, _) = manifest_bytes(&json!({
        "schemaVersion": 2,
        "mediaType": oci_client::manifest::OCI_IMAGE_MEDIA_TYPE,
        "config": descriptor(oci_client::manifest::IMAGE_CONFIG_MEDIA_TYPE, &config),
        "layers": [sig_layer],
    }));
    registry.push_blob(repo, &config).await?;
    registry.push_blob(repo, &payload).await?;
    registry
        .push_manifest(&repo.tag(&sign::signature_tag(&digest)), sig_manifest)
        .await?;

    registry.push_manifest(&repo.tag(tag), manifest).await?;
    Ok(digest)
}
