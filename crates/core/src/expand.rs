//! `inventory:` and `group:` entries of plugins.yaml: expanded, against the verified
//! inventory, into ordinary `url:` declarations of the package artifacts
//! (`oci://host/repo/packages/author/name@sha256:<manifest>`), which the resolver then
//! fetches ([`crate::inventory::fetch_package`]) and pins like any other package.
//!
//! The lock records the inventory's digest (`inventory:` in plugins.lock). A locked
//! repository expands against exactly that inventory (pulled by digest, cached forever),
//! so the tag moving changes nothing; only when an entry is not in the pinned inventory
//! (a version bump) is the tag read, and the lock then pins the new digest.

use std::collections::BTreeMap;
use std::path::PathBuf;

use url::Url;

use crate::error::{Diagnostics, Error};
use crate::inventory::sign::PublicKey;
use crate::inventory::{
    load, Inventory, InventoryRef, LoadOptions, Login, PluginRow, DEFAULT_TIMEOUT, DEFAULT_TTL,
};
use crate::load::{DeclaredPlugin, DeclaredSource, LoadedPluginSet};
use crate::model::{LockedInventory, PluginLock};

/// A set whose inventory entries are expanded, and the inventory they came from.
#[derive(Debug, Clone)]
pub struct Expanded {
    /// The set, every entry now a [`DeclaredPlugin`] (in declaration order).
    pub set: LoadedPluginSet,
    /// What the lock pins.
    pub pin: LockedInventory,
}

/// Expands `set`'s `inventory:` and `group:` entries; `None` when it has none.
///
/// `key_pem` is the verification key file's text (read from the repository by the caller),
/// `cache_dir` the package cache's root. Loads the inventory on a blocking thread.
pub async fn expand(
    set: &LoadedPluginSet,
    key_pem: Option<Vec<u8>>,
    old_lock: Option<&PluginLock>,
    cache_dir: PathBuf,
    offline: bool,
    logins: &BTreeMap<String, Login>,
) -> Result<Option<Expanded>, Error> {
    if set.inventory_entries.is_empty() {
        return Ok(None);
    }
    let Some(source) = set.spec().spec.sources.inventory.clone() else {
        return Err(Error::Usage(
            "inventory entries without spec.sources.inventory".into(),
        ));
    };
    let key_error = |reason: String| {
        Error::Invalid(Diagnostics(vec![set
            .doc
            .error_at("spec.sources.inventory.key", reason)]))
    };
    let key_pem = key_pem.ok_or_else(|| {
        key_error(format!(
            "`{}` is not in the repository: commit the inventory's public key (PEM) there",
            source.key
        ))
    })?;
    let key = PublicKey::from_pem(&String::from_utf8_lossy(&key_pem), &source.key)
        .map_err(|e| key_error(e.to_string()))?;
    let declared = InventoryRef::parse(&source.url).map_err(|e| {
        Error::Invalid(Diagnostics(vec![set
            .doc
            .error_at("spec.sources.inventory.url", e.to_string())]))
    })?;
    let options = |reference: InventoryRef| LoadOptions {
        reference,
        key: key.clone(),
        insecure: source.insecure,
        login: logins.get(&declared.registry).cloned(),
        ttl: source.ttl.unwrap_or(DEFAULT_TTL),
        refresh: false,
        offline,
        cache_dir: cache_dir.clone(),
        timeout: DEFAULT_TIMEOUT,
    };
    let run = |options: LoadOptions| async move {
        tokio::task::spawn_blocking(move || load(&tokio::runtime::Handle::current(), &options))
            .await
            .map_err(|e| Error::Usage(format!("internal error: the inventory thread failed: {e}")))?
            .map_err(Error::from)
    };

    // The pinned inventory first, when the lock has one for this url.
    let pinned = old_lock
        .and_then(|l| l.inventory.as_ref())
        .filter(|p| p.url == source.url);
    let mut loaded = None;
    if let Some(pin) = pinned {
        let mut reference = declared.clone();
        reference.digest = Some(pin.digest.clone());
        let inventory = run(options(reference)).await?;
        if expand_in(set, &inventory.inventory, source.insecure).is_ok() {
            loaded = Some(inventory);
        }
    }
    let loaded = match loaded {
        Some(l) => l,
        None if offline => {
            return Err(Error::Usage(format!(
                "the inventory entries of plugins.yaml need the inventory plugins.lock pins, {}; run `plugsync lock`",
                match pinned {
                    Some(p) => format!("{} (not in the cache, or without an entry)", p.digest),
                    None => "and it pins none".to_owned(),
                }
            )))
        }
        None => {
            let cached = run(options(declared.clone())).await?;
            // A copy within its TTL that lacks an entry may just predate a publish: ask
            // the registry (a HEAD; a download only if the tag moved) before refusing.
            if cached.origin == crate::inventory::cache::Origin::Cache
                && expand_in(set, &cached.inventory, source.insecure).is_err()
            {
                let mut now = options(declared.clone());
                now.ttl = std::time::Duration::ZERO;
                run(now).await?
            } else {
                cached
            }
        }
    };
    let plugins = expand_in(set, &loaded.inventory, source.insecure).map_err(|found| {
        Error::Invalid(Diagnostics(
            found
                .into_iter()
                .map(|(path, message)| {
                    set.doc.error_at(
                        &path,
                        format!(
                            "{message} in the inventory {} (digest {}); `plugsync search` lists what it has",
                            declared, loaded.digest
                        ),
                    )
                })
                .collect(),
        ))
    })?;
    let mut expanded = set.clone();
    expanded.plugins = plugins;
    expanded.inventory_entries.clear();
    Ok(Some(Expanded {
        set: expanded,
        pin: LockedInventory {
            url: source.url,
            digest: loaded.digest,
        },
    }))
}

/// Every declared plugin of `set` with its inventory entries expanded in place, or the
/// problems as `(field path, message)`.
fn expand_in(
    set: &LoadedPluginSet,
    inventory: &Inventory,
    insecure: bool,
) -> Result<Vec<DeclaredPlugin>, Vec<(String, String)>> {
    let mut problems = Vec::new();
    let mut expanded: Vec<(usize, DeclaredPlugin)> = Vec::new();
    let mut names: Vec<(String, String, String)> = Vec::new(); // name, version, path
    for entry in &set.inventory_entries {
        let rows: Vec<&PluginRow> = if entry.group {
            match inventory.group(&entry.name, &entry.version) {
                Some(group) => {
                    let mut rows = Vec::new();
                    for e in group.entries.iter().filter(|e| e.mandatory) {
                        match inventory.find(&e.plugin, &e.version) {
                            Some(row) => rows.push(row),
                            None => problems.push((
                                format!("{}.group", entry.path),
                                format!(
                                    "group {}:{} names {}@{}, which is missing",
                                    entry.name, entry.version, e.plugin, e.version
                                ),
                            )),
                        }
                    }
                    rows
                }
                None => {
                    problems.push((
                        format!("{}.group", entry.path),
                        format!("group {}:{} is not defined", entry.name, entry.version),
                    ));
                    continue;
                }
            }
        } else {
            match inventory.find(&entry.name, &entry.version) {
                Some(row) => vec![row],
                None => {
                    problems.push((
                        format!("{}.inventory", entry.path),
                        format!("{} {} is not published", entry.name, entry.version),
                    ));
                    continue;
                }
            }
        };
        for row in rows {
            if let Some((_, version, first)) = names.iter().find(|(n, _, _)| *n == row.name) {
                if *version != row.version {
                    problems.push((
                        entry.path.clone(),
                        format!(
                            "{} {} conflicts with {} {} from {first}",
                            row.name, row.version, row.name, version
                        ),
                    ));
                }
                continue;
            }
            names.push((row.name.clone(), row.version.clone(), entry.path.clone()));
            let url = package_url(row, insecure);
            expanded.push((
                entry.index,
                DeclaredPlugin {
                    index: entry.index,
                    path: entry.path.clone(),
                    source: DeclaredSource::Url(url),
                    runtime: entry.runtime.clone(),
                },
            ));
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let mut all: Vec<(usize, DeclaredPlugin)> =
        set.plugins.iter().map(|p| (p.index, p.clone())).collect();
    all.extend(expanded);
    all.sort_by_key(|(i, _)| *i);
    Ok(all.into_iter().map(|(_, p)| p).collect())
}

/// `oci://host/path@sha256:<manifest>` (`oci+http://` for a plain-HTTP registry).
fn package_url(row: &PluginRow, insecure: bool) -> Url {
    let scheme = if insecure { "oci+http" } else { "oci" };
    Url::parse(&format!(
        "{scheme}://{}@{}",
        row.repository, row.manifest_digest
    ))
    .expect("an inventory row names a valid repository and digest")
}

/// [`expand`] for a set read from `snapshot` (plugins.yaml in `dir`): the key file is read
/// from the same revision, the inventory cached under `cache_root` (the package cache's).
/// `offline`: only the inventory the lock pins, and only from the cache (`plugsync
/// validate` fetches nothing).
pub async fn expand_from(
    set: &LoadedPluginSet,
    snapshot: &dyn crate::source::Snapshot,
    dir: &str,
    old_lock: Option<&PluginLock>,
    cache_root: &std::path::Path,
    offline: bool,
    logins: &BTreeMap<String, Login>,
) -> Result<Option<Expanded>, Error> {
    let Some(source) = &set.spec().spec.sources.inventory else {
        return Ok(None);
    };
    if set.inventory_entries.is_empty() {
        return Ok(None);
    }
    let key_file = if dir.is_empty() {
        source.key.clone()
    } else {
        format!("{dir}/{}", source.key)
    };
    let key_pem = snapshot
        .read(&key_file)
        .map_err(|e| Error::snapshot(snapshot.describe(), e))?;
    expand(
        set,
        key_pem,
        old_lock,
        cache_root.to_path_buf(),
        offline,
        logins,
    )
    .await
}
