//! The private plugin inventory commands (`plugsync inventory publish|group`, `search`,
//! `groups`, `outdated`), wired from `plugsync_core::inventory`: registry credentials from
//! the user's docker config, the package cache's folder, and the blocking core run off the
//! async runtime (`spawn_blocking`, the registry calls driven through the runtime's handle).

use std::path::{Path, PathBuf};
use std::time::Duration;

use plugsync_core::error::Error;
use plugsync_core::inventory::publish::PackageInput;
use plugsync_core::inventory::sign::{PrivateKey, PublicKey};
use plugsync_core::inventory::{
    self, Group, InventoryRef, LoadOptions, Loaded, Login, PublishOptions, PublishReport,
};
use plugsync_core::package::signature::TrustedKey;
use plugsync_core::resolve::cache::Cache;
use plugsync_kube::registry::DockerConfig;

/// How to reach the registry.
#[derive(Debug, Clone)]
pub(crate) struct Access {
    /// Plain HTTP allowed.
    pub insecure: bool,
    /// Bound on each request.
    pub timeout: Duration,
}

/// Every registry's credentials in the user's docker config (see [`docker_login`]), for the
/// resolver's `oci` client and the inventory read before resolving. Unreadable: none (a
/// warning), since most runs never touch a registry.
pub(crate) fn docker_logins() -> std::collections::BTreeMap<String, Login> {
    match read_docker_config() {
        Ok(Some(config)) => config
            .hosts()
            .filter_map(|host| Some((host.to_owned(), login_of(&config, host)?)))
            .collect(),
        Ok(None) => Default::default(),
        Err(e) => {
            tracing::warn!("{e}; registries are read anonymously");
            Default::default()
        }
    }
}

/// The credentials the user's docker config (`$DOCKER_CONFIG/config.json`, else
/// `~/.docker/config.json`) holds for `registry`, as `docker login` wrote them. Credential
/// helpers are not run; a missing or unreadable file means anonymous access.
pub(crate) fn docker_login(registry: &str) -> Result<Option<Login>, Error> {
    Ok(read_docker_config()?.and_then(|config| login_of(&config, registry)))
}

/// The user's docker config, parsed; `None` when there is none to read.
fn read_docker_config() -> Result<Option<DockerConfig>, Error> {
    let path = match std::env::var_os("DOCKER_CONFIG") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir).join("config.json"),
        _ => match dirs::home_dir() {
            Some(home) => home.join(".docker/config.json"),
            None => return Ok(None),
        },
    };
    let Ok(bytes) = std::fs::read(&path) else {
        return Ok(None);
    };
    DockerConfig::parse(&bytes)
        .map(Some)
        .map_err(|e| Error::Usage(format!("{}: {e}", path.display())))
}

/// The basic-auth login `config` holds for `registry` (identity tokens are not used).
fn login_of(config: &DockerConfig, registry: &str) -> Option<Login> {
    let credentials = config.credentials_for(registry)?;
    Some(Login {
        username: credentials.username().to_owned(),
        password: credentials.password()?.to_owned(),
    })
}

/// Publishes package files (and already-read packages) and groups to `to`, signed with
/// the private key at `key`.
pub(crate) async fn publish(
    to: &str,
    key: &Path,
    access: Access,
    files: Vec<PathBuf>,
    packages: Vec<PackageInput>,
    groups: Vec<Group>,
) -> Result<PublishReport, Error> {
    let target = InventoryRef::parse(to)?;
    let key = PrivateKey::read(key)?;
    let login = docker_login(&target.registry)?;
    super::off_runtime(move |runtime| {
        let mut inputs = packages;
        for file in files {
            let bytes = std::fs::read(&file).map_err(|e| Error::io(&file, e))?;
            inputs.push(PackageInput {
                label: file.display().to_string(),
                bytes,
            });
        }
        let options = PublishOptions {
            target,
            key,
            insecure: access.insecure,
            login,
            timeout: access.timeout,
            trusted_keys: vec![TrustedKey::dify_official()],
        };
        Ok(inventory::publish(runtime, &options, inputs, groups)?)
    })
    .await
}

/// Where and how to read an inventory.
#[derive(Debug, Clone)]
pub(crate) struct Source {
    /// `oci://…`.
    pub reference: String,
    /// The public key (PEM) its signature must verify with.
    pub key: PathBuf,
    /// Registry access.
    pub access: Access,
    /// Time-to-live of the cached copy.
    pub ttl: Duration,
    /// Pull again regardless of the cache.
    pub refresh: bool,
    /// Cache root (`PLUGSYNC_CACHE_DIR`, else the user cache dir).
    pub cache_dir: Option<PathBuf>,
}

/// The verified inventory of `source`, through the cache.
pub(crate) async fn load(source: Source) -> Result<Loaded, Error> {
    let reference = InventoryRef::parse(&source.reference)?;
    let key = PublicKey::read(&source.key)?;
    let login = docker_login(&reference.registry)?;
    let options = LoadOptions {
        reference,
        key,
        insecure: source.access.insecure,
        login,
        ttl: source.ttl,
        refresh: source.refresh,
        offline: false,
        cache_dir: source.cache_dir.unwrap_or_else(Cache::default_dir),
        timeout: source.access.timeout,
    };
    super::off_runtime(move |runtime| Ok(inventory::load(runtime, &options)?)).await
}

/// The plugins a repository declares, as `(author/name, version)`: what its plugins.lock
/// pins (every kind of entry), else its plugins.yaml's marketplace entries with a version.
pub(crate) fn declared_versions(plugins: &Path) -> Result<Vec<(String, String)>, Error> {
    let lock_path = plugins
        .parent()
        .map(|p| p.join(plugsync_core::load::LOCK_FILE))
        .unwrap_or_else(|| PathBuf::from(plugsync_core::load::LOCK_FILE));
    if lock_path.exists() {
        let text = plugsync_core::load::read_file(&lock_path)?;
        let lock = plugsync_core::load::load_lock(&lock_path, &text)?;
        let mut out = Vec::new();
        for p in &lock.value.plugins {
            if let Ok((author, name, version, _)) =
                plugsync_core::package::parse_unique_identifier(&p.unique_identifier)
            {
                let full = if author.is_empty() {
                    name
                } else {
                    format!("{author}/{name}")
                };
                out.push((full, version));
            }
        }
        return Ok(out);
    }
    let text = plugsync_core::load::read_file(plugins)?;
    let set = plugsync_core::load::load_plugin_set(plugins, &text)?;
    Ok(set
        .doc
        .value
        .spec
        .plugins
        .iter()
        .filter_map(|p| {
            let name = p.marketplace.clone().or_else(|| p.inventory.clone())?;
            Some((name, p.version.clone()?))
        })
        .collect())
}

/// plugins.yaml's `spec.sources.inventory`, if it names one.
pub(crate) fn declared_source(
    plugins: &Path,
) -> Result<Option<plugsync_core::model::InventorySource>, Error> {
    Ok(declared_sources(plugins)?.inventory)
}

/// Where plugins.yaml says packages come from (`spec.sources`): its inventory and its
/// marketplace.
pub(crate) fn declared_sources(plugins: &Path) -> Result<plugsync_core::model::SourcesSpec, Error> {
    let text = plugsync_core::load::read_file(plugins)?;
    let set = plugsync_core::load::load_plugin_set(plugins, &text)?;
    Ok(set.doc.value.spec.sources.clone())
}

/// The newest version the marketplace publishes of each plugin named, by `author/name`.
pub(crate) async fn marketplace_versions(
    marketplace: &str,
    names: &[String],
    timeout: std::time::Duration,
) -> Result<std::collections::BTreeMap<String, String>, Error> {
    let base = url::Url::parse(marketplace)
        .map_err(|e| Error::Usage(format!("spec.sources.marketplace `{marketplace}`: {e}")))?;
    plugsync_core::fetch::marketplace::latest_versions(&base, names, timeout)
        .await
        .map_err(|source| Error::Source {
            plugin: "the marketplace".to_owned(),
            source,
        })
}
