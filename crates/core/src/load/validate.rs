//! Semantic rules that the schema alone cannot express, and the typed view of each entry.

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};

use regex::Regex;
use url::Url;

use super::Document;
use crate::error::{Diagnostic, Diagnostics};
use crate::model::{
    LockedImage, LockedPlugin, PluginLock, PluginSet, RegistryType, RuntimeSpec, API_VERSION,
};
use crate::redact::redact_url;
use crate::yaml::{join_index, join_key};

static DNS_LABEL: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$").expect("static regex"));
static AUTHOR: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[a-z0-9_-]{1,64}$").expect("static regex"));
static PLUGIN_NAME: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[a-z0-9_-]{1,128}$").expect("static regex"));
static VERSION: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^\d{1,4}(\.\d{1,4}){2}(-\w{1,16})?$").expect("static regex"));
static IMAGE_PREFIX: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]{1,5})?(/[a-z0-9]+([._-]+[a-z0-9]+)*)*$")
        .expect("static regex")
});
static PYTHON_VERSION: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^3\.[0-9]{1,2}$").expect("static regex"));
static LABEL_NAME: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)$").expect("static regex")
});
static LABEL_VALUE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?)$").expect("static regex")
});
static DNS_SUBDOMAIN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
        .expect("static regex")
});
static ENV_NAME: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$").expect("static regex"));

/// Where one declared plugin's package comes from, checked and normalized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeclaredSource {
    /// A Dify marketplace package at an exact version.
    Marketplace {
        /// Author, e.g. `langgenius`.
        author: String,
        /// Name, e.g. `agent`.
        name: String,
        /// Exact version.
        version: String,
    },
    /// A package URL (any scheme with a source client).
    Url(Url),
    /// A plugin directory or `.difypkg` file, relative to the plugins.yaml folder,
    /// normalized to `/`-separated components with no `.` or `..`.
    Path(String),
}

impl DeclaredSource {
    /// The exact source string recorded in the lock (`source:`), which is also how a lock
    /// entry is matched to its declaration.
    pub(crate) fn lock_source(&self, marketplace: &Url) -> String {
        match self {
            DeclaredSource::Marketplace {
                author,
                name,
                version,
            } => crate::model::marketplace_download_url(marketplace, author, name, version)
                .to_string(),
            DeclaredSource::Url(u) => u.to_string(),
            DeclaredSource::Path(p) => format!("path:{p}"),
        }
    }

    /// The plugins.yaml field this source was declared in (`marketplace`, `url`, `path`),
    /// so a failure to fetch or read its package can point at that line.
    pub fn field(&self) -> &'static str {
        match self {
            DeclaredSource::Marketplace { .. } => "marketplace",
            DeclaredSource::Url(_) => "url",
            DeclaredSource::Path(_) => "path",
        }
    }

    /// How to name this entry in messages before its package is known (secrets redacted).
    pub fn describe(&self) -> String {
        match self {
            DeclaredSource::Marketplace {
                author,
                name,
                version,
            } => format!("{author}/{name}@{version}"),
            DeclaredSource::Url(u) => redact_url(u),
            DeclaredSource::Path(p) => format!("path:{p}"),
        }
    }
}

/// One entry of `spec.plugins`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct DeclaredPlugin {
    /// Position in `spec.plugins`.
    pub index: usize,
    /// Field path of the entry (`spec.plugins[3]`), for messages.
    pub path: String,
    /// Where the package comes from.
    pub source: DeclaredSource,
    /// `spec.runtime` with this entry's overrides applied. Shared: every entry without
    /// overrides holds the same one, and resolving or rendering a plugin never copies it.
    pub runtime: Arc<RuntimeSpec>,
}

/// An `inventory:` or `group:` entry: what it names in the private inventory, expanded
/// into [`DeclaredPlugin`]s (`crate::expand`) before the set is resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct InventoryEntry {
    /// Position in `spec.plugins`.
    pub index: usize,
    /// Field path of the entry (`spec.plugins[3]`), for messages.
    pub path: String,
    /// `true` for `group:`, `false` for `inventory:`.
    pub group: bool,
    /// `author/name` of the plugin, or the group's name.
    pub name: String,
    /// The exact version of the plugin or the group.
    pub version: String,
    /// `spec.runtime` with this entry's overrides applied.
    pub runtime: Arc<RuntimeSpec>,
}

/// A `plugins.yaml` that passed every check.
#[derive(Debug, Clone)]
pub struct LoadedPluginSet {
    /// The document, with positions for later messages.
    pub doc: Document<PluginSet>,
    /// The entries, in declaration order.
    pub plugins: Vec<DeclaredPlugin>,
    /// The `inventory:` and `group:` entries, not yet expanded into `plugins`.
    pub inventory_entries: Vec<InventoryEntry>,
    /// The marketplace base URL, parsed.
    pub marketplace: Url,
}

impl LoadedPluginSet {
    /// The declared set.
    pub fn spec(&self) -> &PluginSet {
        &self.doc.value
    }

    /// A diagnostic at the source field of `plugin` (`spec.plugins[2].path`), so a problem
    /// with its package names the plugins.yaml line it was declared at.
    pub(crate) fn error_at_source(
        &self,
        plugin: &DeclaredPlugin,
        message: impl Into<String>,
    ) -> Diagnostic {
        self.doc
            .error_at(&join_key(&plugin.path, plugin.source.field()), message)
    }
}

struct Checker<'a, T> {
    doc: &'a Document<T>,
    found: Vec<Diagnostic>,
}

impl<T> Checker<'_, T> {
    fn error(&mut self, path: &str, message: impl Into<String>) {
        self.found.push(self.doc.error_at(path, message));
    }
}

pub(super) fn validate_plugin_set(
    doc: Document<PluginSet>,
) -> Result<LoadedPluginSet, Diagnostics> {
    let mut c = Checker {
        doc: &doc,
        found: Vec::new(),
    };
    let set = &doc.value;
    if set.api_version != API_VERSION {
        c.error(
            "apiVersion",
            format!("must be `{API_VERSION}`, not `{}`", set.api_version),
        );
    }
    if set.kind != "PluginSet" {
        c.error("kind", format!("must be `PluginSet`, not `{}`", set.kind));
    }
    if !DNS_LABEL.is_match(&set.metadata.name) {
        c.error(
            "metadata.name",
            format!("`{}` is not a valid name: use lowercase letters, digits and `-`, at most 63 characters", set.metadata.name),
        );
    }
    if let Some(namespace) = set
        .metadata
        .namespace
        .as_deref()
        .filter(|n| !DNS_LABEL.is_match(n))
    {
        c.error(
            "metadata.namespace",
            format!("`{namespace}` is not a valid namespace name"),
        );
    }

    let reg = &set.spec.registry;
    if reg.prefix.contains("://") {
        c.error(
            "spec.registry.prefix",
            "write the registry prefix without a scheme, e.g. `registry.example.com/dify-plugins`",
        );
    } else if !IMAGE_PREFIX.is_match(&reg.prefix) {
        c.error(
            "spec.registry.prefix",
            format!("`{}` is not a valid image repository prefix (lowercase host[:port]/path, no tag, no trailing `/`)", reg.prefix),
        );
    }
    if !DNS_SUBDOMAIN.is_match(&reg.secret_name) {
        c.error(
            "spec.registry.secretName",
            format!("`{}` is not a valid Secret name", reg.secret_name),
        );
    }
    match (reg.kind, &reg.ecr_region) {
        (RegistryType::Ecr, None) => {
            c.error("spec.registry", "`ecrRegion` is required when `type: ecr`")
        }
        (RegistryType::Docker, Some(_)) => {
            c.error("spec.registry.ecrRegion", "only applies with `type: ecr`")
        }
        _ => {}
    }

    let build = &set.spec.build;
    if build.max_attempts == 0 || build.max_attempts > 20 {
        c.error(
            "spec.build.maxAttempts",
            format!("must be between 1 and 20, not {}", build.max_attempts),
        );
    }
    if build.timeout.is_zero() {
        c.error("spec.build.timeout", "must be longer than zero");
    }
    if build.backoff.base.is_zero() {
        c.error("spec.build.backoff.base", "must be longer than zero");
    }
    if build.backoff.cap < build.backoff.base {
        c.error("spec.build.backoff.cap", "must not be shorter than `base`");
    }
    for key in build.python.base_images.keys() {
        if !PYTHON_VERSION.is_match(key) {
            c.error(
                &join_key("spec.build.python.baseImages", key),
                format!("`{key}` is not a Python version like `3.12`"),
            );
        }
    }
    if let Some(mirror) = &build.python.pip_mirror {
        check_http_url(&mut c, "spec.build.python.pipMirror", mirror);
    }

    check_runtime(&mut c, "spec.runtime", &set.spec.runtime);

    let marketplace = match Url::parse(&set.spec.sources.marketplace) {
        Ok(u)
            if matches!(u.scheme(), "http" | "https")
                && u.username().is_empty()
                && u.password().is_none() =>
        {
            u
        }
        _ => {
            c.error(
                "spec.sources.marketplace",
                format!(
                    "`{}` is not an http(s) URL without credentials",
                    set.spec.sources.marketplace
                ),
            );
            crate::model::default_marketplace_url()
        }
    };

    let mut runtime_defaults = set.spec.runtime.clone();
    if let Some(dify) = &set.spec.dify {
        check_http_url(&mut c, "spec.dify.daemonUrl", &dify.daemon_url);
        with_daemon_url(&mut runtime_defaults, &dify.daemon_url);
    }

    if let Some(inventory) = &set.spec.sources.inventory {
        // The full parse is the inventory's (`inventory::InventoryRef`, which imports this
        // module): it reports at this line when the entries are expanded.
        let rest = inventory.url.strip_prefix("oci://").unwrap_or_default();
        if !rest.contains('/') || rest.starts_with('/') {
            c.error(
                "spec.sources.inventory.url",
                format!(
                    "`{}` must be oci://host/repository[:tag][@sha256:<hex>]",
                    inventory.url
                ),
            );
        }
        check_relative_path(&mut c, "spec.sources.inventory.key", &inventory.key);
    }

    let mut plugins = Vec::new();
    let mut inventory_entries = Vec::new();
    let defaults = Arc::new(runtime_defaults);
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for (i, entry) in set.spec.plugins.iter().enumerate() {
        let path = join_index("spec.plugins", i);
        let kinds: Vec<&str> = [
            ("marketplace", entry.marketplace.is_some()),
            ("url", entry.url.is_some()),
            ("path", entry.path.is_some()),
            ("inventory", entry.inventory.is_some()),
            ("group", entry.group.is_some()),
        ]
        .into_iter()
        .filter_map(|(k, set)| set.then_some(k))
        .collect();
        if kinds.len() != 1 {
            let msg = if kinds.is_empty() {
                "a plugin needs exactly one source: `marketplace` (with `version`), `url`, `path`, `inventory` (with `version`) or `group`"
                    .to_string()
            } else {
                format!(
                    "a plugin has exactly one source, but this entry has {}; keep one",
                    kinds.join(" and ")
                )
            };
            c.error(&path, msg);
            continue;
        }
        if entry.version.is_some() && entry.marketplace.is_none() && entry.inventory.is_none() {
            c.error(
                &join_key(&path, "version"),
                "`version` goes with `marketplace` or `inventory` only: a `url` or `path` package declares its own version, a `group` its own plugins' versions",
            );
        }
        if entry.inventory.is_some() || entry.group.is_some() {
            if let Some(over) = &entry.runtime {
                check_runtime(&mut c, &join_key(&path, "runtime"), over);
            }
            let runtime = entry_runtime(&defaults, entry);
            if let Some(found) = check_inventory_entry(&mut c, &path, entry, i, runtime) {
                if set.spec.sources.inventory.is_none() {
                    c.error(
                        &join_key(&path, if found.group { "group" } else { "inventory" }),
                        "needs a private inventory: add spec.sources.inventory (its url and key)",
                    );
                }
                inventory_entries.push(found);
            }
            continue;
        }
        let source = if let Some(m) = &entry.marketplace {
            check_marketplace(&mut c, &path, m, entry.version.as_deref())
        } else if let Some(u) = &entry.url {
            check_package_url(&mut c, &join_key(&path, "url"), u)
        } else if let Some(p) = &entry.path {
            check_relative_path(&mut c, &join_key(&path, "path"), p)
        } else {
            None
        };
        if let Some(runtime) = &entry.runtime {
            check_runtime(&mut c, &join_key(&path, "runtime"), runtime);
        }
        let Some(source) = source else { continue };
        let identity = match &source {
            DeclaredSource::Marketplace { author, name, .. } => {
                format!("marketplace {author}/{name}")
            }
            other => other.lock_source(&marketplace),
        };
        if let Some(first) = seen.get(&identity) {
            let pos = doc.position(first);
            c.error(
                &path,
                format!(
                    "duplicate plugin: {} is already declared at {first} (line {})",
                    source.describe(),
                    pos.line
                ),
            );
            continue;
        }
        seen.insert(identity, path.clone());
        let runtime = entry_runtime(&defaults, entry);
        plugins.push(DeclaredPlugin {
            index: i,
            path,
            source,
            runtime,
        });
    }

    if c.found.is_empty() {
        Ok(LoadedPluginSet {
            doc,
            plugins,
            inventory_entries,
            marketplace,
        })
    } else {
        Err(Diagnostics(c.found))
    }
}

/// The runtime settings of one entry: the set's defaults (`spec.runtime`, with what
/// `spec.dify` adds) under the entry's own overrides.
fn entry_runtime(
    defaults: &Arc<RuntimeSpec>,
    entry: &crate::model::PluginEntry,
) -> Arc<RuntimeSpec> {
    match &entry.runtime {
        Some(over) => Arc::new(defaults.merged_with(over)),
        None => Arc::clone(defaults),
    }
}

/// Gives every plugin the daemon's URL ([`crate::model::DAEMON_URL_ENV`]), unless
/// `spec.runtime.env` sets the variable itself; a plugin's own `runtime.env` still wins
/// (environment lists merge by name).
fn with_daemon_url(runtime: &mut crate::model::RuntimeSpec, daemon_url: &str) {
    let env = runtime.env.get_or_insert_with(Vec::new);
    if !env.iter().any(|e| e.name == crate::model::DAEMON_URL_ENV) {
        env.push(k8s_openapi::api::core::v1::EnvVar {
            name: crate::model::DAEMON_URL_ENV.to_string(),
            value: Some(daemon_url.to_string()),
            value_from: None,
        });
    }
}

fn check_http_url<T>(c: &mut Checker<'_, T>, path: &str, value: &str) {
    match Url::parse(value) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => {
            if !u.username().is_empty() || u.password().is_some() {
                c.error(
                    path,
                    "credentials do not belong in plugins.yaml; remove them from the URL",
                );
            }
        }
        _ => c.error(path, "must be an http(s) URL"),
    }
}

fn check_marketplace<T>(
    c: &mut Checker<'_, T>,
    path: &str,
    id: &str,
    version: Option<&str>,
) -> Option<DeclaredSource> {
    let field = join_key(path, "marketplace");
    let Some((author, name)) = id.split_once('/') else {
        c.error(
            &field,
            format!("`{id}` must be `author/name`, e.g. `langgenius/agent`"),
        );
        return None;
    };
    let mut ok = true;
    if !AUTHOR.is_match(author) {
        c.error(
            &field,
            format!("author `{author}` must match [a-z0-9_-]{{1,64}}"),
        );
        ok = false;
    }
    if !PLUGIN_NAME.is_match(name) {
        c.error(
            &field,
            format!("name `{name}` must match [a-z0-9_-]{{1,128}}"),
        );
        ok = false;
    }
    let version = match version {
        None => {
            c.error(path, "a `marketplace` plugin needs an exact `version`");
            return None;
        }
        Some(v) if !VERSION.is_match(v) => {
            c.error(
                &join_key(path, "version"),
                format!("`{v}` is not an exact version like `1.2.3` or `1.2.3-beta`"),
            );
            return None;
        }
        Some(v) => v,
    };
    ok.then(|| DeclaredSource::Marketplace {
        author: author.to_string(),
        name: name.to_string(),
        version: version.to_string(),
    })
}

fn check_package_url<T>(c: &mut Checker<'_, T>, path: &str, value: &str) -> Option<DeclaredSource> {
    let url = match Url::parse(value) {
        Ok(u) => u,
        Err(e) => {
            c.error(
                path,
                format!("not a valid URL ({e}); use `path:` for files in the repository"),
            );
            return None;
        }
    };
    if !url.username().is_empty() || url.password().is_some() {
        c.error(path, "credentials do not belong in plugins.yaml (it is committed to git); remove them from the URL");
        return None;
    }
    match url.scheme() {
        "http" | "https" if url.host_str().is_none_or(str::is_empty) => {
            c.error(path, "an http(s) URL needs a host");
            None
        }
        "file" if url.host_str().is_some_and(|h| !h.is_empty()) => {
            c.error(path, "a file URL must be `file:///absolute/path`");
            None
        }
        _ => Some(DeclaredSource::Url(url)),
    }
}

/// An `inventory: author/name` (with `version`) or `group: name:version` entry.
fn check_inventory_entry<T>(
    c: &mut Checker<'_, T>,
    path: &str,
    entry: &crate::model::PluginEntry,
    index: usize,
    runtime: Arc<RuntimeSpec>,
) -> Option<InventoryEntry> {
    if let Some(group) = &entry.group {
        let field = join_key(path, "group");
        return match group.split_once(':') {
            Some((name, version)) if !name.is_empty() && !version.is_empty() => {
                Some(InventoryEntry {
                    index,
                    path: path.to_string(),
                    group: true,
                    name: name.to_string(),
                    version: version.to_string(),
                    runtime,
                })
            }
            _ => {
                c.error(
                    &field,
                    format!("`{group}` must be `name:version`, e.g. `base:1.0`"),
                );
                None
            }
        };
    }
    let id = entry.inventory.as_deref().unwrap_or_default();
    let field = join_key(path, "inventory");
    let Some((author, name)) = id.split_once('/') else {
        c.error(
            &field,
            format!("`{id}` must be `author/name`, e.g. `langgenius/agent`"),
        );
        return None;
    };
    if !AUTHOR.is_match(author) || !PLUGIN_NAME.is_match(name) {
        c.error(
            &field,
            format!("`{id}` must be `author/name` with [a-z0-9_-] in each part"),
        );
        return None;
    }
    let Some(version) = &entry.version else {
        c.error(path, "an `inventory` plugin needs an exact `version`");
        return None;
    };
    Some(InventoryEntry {
        index,
        path: path.to_string(),
        group: false,
        name: id.to_string(),
        version: version.clone(),
        runtime,
    })
}

fn check_relative_path<T>(
    c: &mut Checker<'_, T>,
    path: &str,
    value: &str,
) -> Option<DeclaredSource> {
    if value.starts_with('/') || value.contains('\\') || value.contains('\0') {
        c.error(
            path,
            format!("`{value}` must be a relative path with `/` separators, inside the repository"),
        );
        return None;
    }
    let mut parts = Vec::new();
    for part in value.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                c.error(
                    path,
                    format!("`{value}` must stay inside the repository (no `..`)"),
                );
                return None;
            }
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        c.error(path, "must name a plugin directory or .difypkg file");
        return None;
    }
    Some(DeclaredSource::Path(parts.join("/")))
}

fn check_labels<T>(
    c: &mut Checker<'_, T>,
    path: &str,
    labels: &BTreeMap<String, String>,
    values: bool,
) {
    for (k, v) in labels {
        let field = join_key(path, k);
        let (prefix, name) = match k.split_once('/') {
            Some((p, n)) => (Some(p), n),
            None => (None, k.as_str()),
        };
        let prefix_ok = prefix.is_none_or(|p| p.len() <= 253 && DNS_SUBDOMAIN.is_match(p));
        if !prefix_ok || !LABEL_NAME.is_match(name) {
            c.error(
                &field,
                format!("`{k}` is not a valid Kubernetes label or annotation key"),
            );
        }
        if values && !LABEL_VALUE.is_match(v) {
            c.error(&field, format!("`{v}` is not a valid label value (at most 63 characters of [A-Za-z0-9-_.], starting and ending alphanumeric)"));
        }
    }
}

fn check_runtime<T>(c: &mut Checker<'_, T>, path: &str, runtime: &RuntimeSpec) {
    if let Some(r) = runtime.replicas {
        if r < 0 {
            c.error(&join_key(path, "replicas"), "must not be negative");
        }
    }
    if let Some(labels) = &runtime.labels {
        check_labels(c, &join_key(path, "labels"), labels, true);
    }
    if let Some(selector) = &runtime.node_selector {
        check_labels(c, &join_key(path, "nodeSelector"), selector, true);
    }
    if let Some(annotations) = &runtime.annotations {
        check_labels(c, &join_key(path, "annotations"), annotations, false);
    }
    if let Some(env) = &runtime.env {
        for (i, var) in env.iter().enumerate() {
            if !ENV_NAME.is_match(&var.name) {
                c.error(
                    &join_key(&join_index(&join_key(path, "env"), i), "name"),
                    format!("`{}` is not a valid environment variable name", var.name),
                );
            }
        }
    }
}

/// What is wrong with one lock entry on its own, by field: digest formats, and an
/// identifier or plugin id that does not follow from its name, version and checksum.
pub(super) fn locked_plugin_problems(p: &LockedPlugin) -> Vec<(&'static str, String)> {
    let mut found = Vec::new();
    for (field, value) in [("sha256", &p.sha256), ("checksum", &p.checksum)] {
        if !crate::package::is_sha256_hex(value) {
            found.push((field, "must be 64 lowercase hex characters".to_string()));
        }
    }
    // `author/name:version@checksum`, or `name:version@checksum` for an author-less package.
    let expected_uid = format!("{}:{}@{}", p.name, p.version, p.checksum);
    if p.unique_identifier != expected_uid {
        found.push((
            "unique_identifier",
            format!("does not match name, version and checksum (expected `{expected_uid}`)"),
        ));
    } else if p.plugin_id != crate::package::plugin_id(&p.unique_identifier) {
        found.push((
            "plugin_id",
            "does not match unique_identifier; the lock was edited by hand or corrupted"
                .to_string(),
        ));
    }
    found
}

/// What is wrong with one recorded image on its own, by field.
pub(super) fn locked_image_problems(image: &LockedImage) -> Vec<(&'static str, String)> {
    let mut found = Vec::new();
    if !crate::package::is_sha256_hex(&image.inputs_hash) {
        found.push((
            "inputsHash",
            "must be 64 lowercase hex characters".to_string(),
        ));
    }
    let digest_ok = image
        .digest
        .strip_prefix("sha256:")
        .is_some_and(crate::package::is_sha256_hex);
    if !digest_ok {
        found.push((
            "digest",
            "must be `sha256:` followed by 64 lowercase hex characters".to_string(),
        ));
    }
    found
}

pub(super) fn validate_lock(doc: &Document<PluginLock>) -> Result<(), Diagnostics> {
    let mut c = Checker {
        doc,
        found: Vec::new(),
    };
    let lock = &doc.value;
    if lock.api_version != API_VERSION {
        c.error("apiVersion", format!("must be `{API_VERSION}`"));
    }
    if lock.kind != "PluginLock" {
        c.error("kind", "must be `PluginLock`");
    }
    let mut sources = BTreeMap::new();
    for (i, p) in lock.plugins.iter().enumerate() {
        let path = join_index("plugins", i);
        for (field, message) in locked_plugin_problems(p) {
            c.error(&join_key(&path, field), message);
        }
        if let Some(first) = sources.insert(p.source.clone(), path.clone()) {
            c.error(
                &join_key(&path, "source"),
                format!("duplicate source, also pinned at {first}"),
            );
        }
    }
    let mut hashes = BTreeMap::new();
    for (i, image) in lock.images.iter().enumerate() {
        let path = join_index("images", i);
        for (field, message) in locked_image_problems(image) {
            c.error(&join_key(&path, field), message);
        }
        if let Some(first) = hashes.insert(image.inputs_hash.clone(), path.clone()) {
            c.error(
                &join_key(&path, "inputsHash"),
                format!("duplicate build-inputs hash, also at {first}"),
            );
        }
    }
    if c.found.is_empty() {
        Ok(())
    } else {
        Err(Diagnostics(c.found))
    }
}
