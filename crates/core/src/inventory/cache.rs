//! Pulling a verified inventory, and the local cache that spares the registry.
//!
//! Layout, under `<cache root>/inventory/<sha256 of the reference, 32 hex>/`:
//! - `lock`: held with `File::lock` (an OS advisory lock, released when the process exits,
//!   however it exits) for the whole check-and-refresh, so two processes sharing the cache
//!   never refresh it at once; the second finds the first's result.
//! - `state.json`: the reference, the inventory's manifest digest, its database digest, the
//!   fingerprint of the key that verified it, and when the registry was last asked.
//! - `<hex>.db`: the verified database, named by its sha256 and re-hashed on every read.
//!
//! Every file is written to a temporary file in the same directory and renamed into place,
//! so a reader (or a process killed mid-write) never leaves or sees a half-written file.
//!
//! Freshness: within the time-to-live the cached copy is used with no request at all. After
//! it, one HEAD of the tag: an unchanged digest downloads nothing and restarts the TTL; a
//! changed one is pulled and verified again. A digest-pinned reference never changes, so it
//! is never asked about again. `refresh` always pulls.

use std::fs::{self, File};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::runtime::Handle;

use super::oci::{image_manifest, layers_of, Registry, Repo};
use super::sign::{self, PublicKey};
use super::{db, Inventory, InventoryError, InventoryRef, Login, INVENTORY_LAYER_MEDIA_TYPE};

/// How to find, trust and cache an inventory.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// The inventory.
    pub reference: InventoryRef,
    /// The key its signature must verify with.
    pub key: PublicKey,
    /// Plain HTTP allowed to the registry.
    pub insecure: bool,
    /// Credentials, if the registry asks.
    pub login: Option<Login>,
    /// How long a cached copy is used without asking the registry.
    pub ttl: Duration,
    /// Pull again, whatever the cache holds.
    pub refresh: bool,
    /// Never ask the registry: only a cached copy will do (`plugsync validate`).
    pub offline: bool,
    /// The cache root (`resolve::cache::Cache::default_dir()` by default).
    pub cache_dir: PathBuf,
    /// Bound on each registry request.
    pub timeout: Duration,
}

/// Where a loaded inventory came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    /// The cache, within its time-to-live: no request.
    Cache,
    /// The cache, after a HEAD found the same digest.
    Revalidated,
    /// Pulled and verified now.
    Downloaded,
}

/// A verified inventory.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// Its contents.
    pub inventory: Inventory,
    /// Its manifest digest (what a lock pins).
    pub digest: String,
    /// Where it came from.
    pub origin: Origin,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct State {
    reference: String,
    manifest_digest: String,
    db_digest: String,
    key: String,
    checked_at: u64,
}

fn io_error(what: &Path, e: std::io::Error) -> InventoryError {
    InventoryError::Io {
        what: what.display().to_string(),
        reason: e.to_string(),
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), InventoryError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| io_error(dir, e))?;
    tmp.write_all(bytes).map_err(|e| io_error(path, e))?;
    tmp.as_file().sync_all().map_err(|e| io_error(path, e))?;
    tmp.persist(path).map_err(|e| io_error(path, e.error))?;
    Ok(())
}

/// The inventory of `options`, verified, from the cache when it may be used.
///
/// Blocking (file lock, SQLite): call from `spawn_blocking`; `handle` drives the registry
/// requests.
pub fn load(handle: &Handle, options: &LoadOptions) -> Result<Loaded, InventoryError> {
    let reference = options.reference.to_string();
    let dir = options
        .cache_dir
        .join("inventory")
        .join(&crate::package::sha256_hex(reference.as_bytes())[..32]);
    fs::create_dir_all(&dir).map_err(|e| io_error(&dir, e))?;
    let lock_path = dir.join("lock");
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| io_error(&lock_path, e))?;
    lock.lock().map_err(|e| io_error(&lock_path, e))?;
    let outcome = load_locked(handle, options, &dir, &reference);
    // Dropping the file releases the lock as well; unlocking first is explicit.
    let _ = lock.unlock();
    outcome
}

fn load_locked(
    handle: &Handle,
    options: &LoadOptions,
    dir: &Path,
    reference: &str,
) -> Result<Loaded, InventoryError> {
    let state_path = dir.join("state.json");
    let key = options.key.fingerprint();
    let state: Option<State> = fs::read(&state_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .filter(|s: &State| s.reference == reference && s.key == key);
    let cached = state
        .as_ref()
        .and_then(|s| read_cached(dir, &s.db_digest).map(|inv| (s, inv)));
    let registry = Registry::new(
        &options.reference.registry,
        options.insecure,
        options.login.as_ref(),
        options.timeout,
    );
    if options.offline {
        return match cached {
            Some((state, inventory)) => Ok(Loaded {
                inventory,
                digest: state.manifest_digest.clone(),
                origin: Origin::Cache,
            }),
            None => Err(InventoryError::Io {
                what: format!("the inventory {reference}"),
                reason: "not in the cache, and this command fetches nothing (run `plugsync lock` or `plugsync search` first)".into(),
            }),
        };
    }
    if let (Some((state, inventory)), false) = (cached, options.refresh) {
        let age = now().saturating_sub(state.checked_at);
        if options.reference.digest.is_some() || age < options.ttl.as_secs() {
            return Ok(Loaded {
                inventory,
                digest: state.manifest_digest.clone(),
                origin: Origin::Cache,
            });
        }
        let head = handle.block_on(registry.head(&options.reference.reference()))?;
        match head {
            Some(digest) if digest == state.manifest_digest => {
                let renewed = State {
                    checked_at: now(),
                    ..state.clone()
                };
                write_atomic(
                    &state_path,
                    &serde_json::to_vec_pretty(&renewed).expect("state serializes"),
                )?;
                return Ok(Loaded {
                    inventory,
                    digest,
                    origin: Origin::Revalidated,
                });
            }
            Some(_) => {}
            None => {
                return Err(InventoryError::NotFound {
                    reference: reference.to_owned(),
                })
            }
        }
    }
    let pulled = handle
        .block_on(pull(&registry, &options.reference, &options.key))?
        .ok_or_else(|| InventoryError::NotFound {
            reference: reference.to_owned(),
        })?;
    let db_hex = crate::package::sha256_hex(&pulled.database);
    let db_path = dir.join(format!("{db_hex}.db"));
    write_atomic(&db_path, &pulled.database)?;
    let inventory = db::read(&db_path)?;
    let state = State {
        reference: reference.to_owned(),
        manifest_digest: pulled.digest.clone(),
        db_digest: db_hex.clone(),
        key,
        checked_at: now(),
    };
    write_atomic(
        &state_path,
        &serde_json::to_vec_pretty(&state).expect("state serializes"),
    )?;
    // Older databases of this reference are no longer named by the state.
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".db") && name != format!("{db_hex}.db") {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
    Ok(Loaded {
        inventory,
        digest: pulled.digest,
        origin: Origin::Downloaded,
    })
}

/// The cached database `hex`, when present and intact.
fn read_cached(dir: &Path, hex: &str) -> Option<Inventory> {
    if !crate::package::is_sha256_hex(hex) {
        return None;
    }
    let path = dir.join(format!("{hex}.db"));
    let bytes = fs::read(&path).ok()?;
    if crate::package::sha256_hex(&bytes) != hex {
        let _ = fs::remove_file(&path);
        return None;
    }
    db::read(&path).ok()
}

/// A verified inventory artifact.
pub(crate) struct Pulled {
    /// The manifest digest.
    pub digest: String,
    /// The SQLite bytes.
    pub database: Vec<u8>,
}

/// Pulls the inventory at `reference`, verifies its signature with `key`, then pulls its
/// database (checked against its digest). `None` when there is no such tag or digest.
pub(crate) async fn pull(
    registry: &Registry,
    reference: &InventoryRef,
    key: &PublicKey,
) -> Result<Option<Pulled>, InventoryError> {
    let oci_ref = reference.reference();
    let Some((manifest, digest)) = registry.manifest(&oci_ref).await? else {
        return Ok(None);
    };
    let not_inventory = |reason: &str| InventoryError::NotInventory {
        reference: reference.to_string(),
        reason: reason.to_owned(),
    };
    let manifest = image_manifest(&manifest)
        .ok_or_else(|| not_inventory("its manifest is not an OCI image manifest"))?;
    let layer_digest = layers_of(&manifest, INVENTORY_LAYER_MEDIA_TYPE)
        .next()
        .ok_or_else(|| {
            not_inventory(&format!(
                "its manifest has no {INVENTORY_LAYER_MEDIA_TYPE} layer"
            ))
        })?
        .digest
        .clone();
    let repo = reference.repo();
    verify_signature(registry, &repo, reference, &digest, key).await?;
    let database = registry
        .blob(&repo, &layer_digest, "the inventory database")
        .await?;
    Ok(Some(Pulled { digest, database }))
}

/// Checks that a cosign signature of `digest` in `repo` verifies with `key`.
pub(crate) async fn verify_signature(
    registry: &Registry,
    repo: &Repo,
    reference: &InventoryRef,
    digest: &str,
    key: &PublicKey,
) -> Result<(), InventoryError> {
    let untrusted = |reason: &str| InventoryError::Untrusted {
        reference: reference.to_string(),
        digest: digest.to_owned(),
        reason: reason.to_owned(),
        key: key.source.clone(),
    };
    let tag = sign::signature_tag(digest);
    let Some((manifest, _)) = registry.manifest(&repo.tag(&tag)).await? else {
        return Err(untrusted(&format!("it has no signature (no tag {tag})")));
    };
    let manifest = image_manifest(&manifest)
        .ok_or_else(|| untrusted("its signature manifest is unreadable"))?;
    for layer in layers_of(&manifest, sign::SIMPLE_SIGNING_MEDIA_TYPE) {
        let payload_digest = &layer.digest;
        let Some(signature) = layer
            .annotations
            .as_ref()
            .and_then(|a| a.get(sign::SIGNATURE_ANNOTATION))
        else {
            continue;
        };
        let payload = registry
            .blob(repo, payload_digest, "the inventory's signature payload")
            .await?;
        if key.verifies(&payload, signature)
            && sign::payload_digest(&payload).as_deref() == Some(digest)
        {
            return Ok(());
        }
    }
    Err(untrusted("none of its signatures verifies with this key (signed with another key, or changed after signing)"))
}
