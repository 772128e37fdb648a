//! A private plugin inventory in an OCI registry, for sites that cannot reach the
//! marketplace (issue #18; the design follows the Tanzu CLI's plugin inventory).
//!
//! - Each `.difypkg` is an OCI artifact of its own, pushed by digest ([`publish`]).
//! - The inventory is one SQLite file ([`db`]): plugins (name, version, description, Dify
//!   checksum and unique identifier, package digest, repository, signature status) and
//!   groups (named, versioned sets of plugin versions). It is an OCI artifact too, tagged and
//!   by digest, and signed with cosign's key-pair scheme ([`sign`]).
//! - Readers pull it into a cache with a time-to-live ([`cache`]): after expiry one HEAD of
//!   the tag, and nothing is downloaded when the digest is unchanged. Every pull verifies
//!   the signature with the key the user names; an unsigned or wrongly signed inventory is
//!   refused.
//!
//! The registry work is async (`oci-client`); SQLite and files are blocking. The public
//! entry points are synchronous and take a [`tokio::runtime::Handle`] to drive the registry
//! calls: call them from `spawn_blocking`, as `pipeline` is called. `docs/inventory.md`
//! describes the media types, the schema and the cache protocol.

mod artifact;
pub mod cache;
pub mod db;
mod oci;
pub mod publish;
pub mod sign;

use std::cmp::Ordering;
use std::sync::LazyLock;
use std::time::Duration;

use serde::Serialize;

pub use artifact::fetch_package;
pub use cache::{load, LoadOptions, Loaded};
pub use publish::{publish, PublishOptions, PublishReport};

/// The artifact type of a package artifact.
pub const PACKAGE_ARTIFACT_TYPE: &str = "application/vnd.dify.plugin.v1";
/// The media type of a package artifact's one layer: the `.difypkg` bytes.
pub const PACKAGE_LAYER_MEDIA_TYPE: &str = "application/vnd.dify.plugin.package.v1+zip";
/// The artifact type of the inventory artifact.
pub const INVENTORY_ARTIFACT_TYPE: &str = "application/vnd.plugsync.inventory.v1";
/// The media type of the inventory artifact's one layer: the SQLite file.
pub const INVENTORY_LAYER_MEDIA_TYPE: &str = "application/vnd.plugsync.inventory.v1+sqlite3";
/// The OCI empty config (`{}`) artifacts carry.
pub const EMPTY_CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
/// The default time-to-live of a cached inventory.
pub const DEFAULT_TTL: Duration = Duration::from_secs(30 * 60);
/// The default bound on each registry request.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// A repository path, as the OCI distribution spec allows it.
static REPOSITORY: LazyLock<regex::Regex> = LazyLock::new(|| {
    regex::Regex::new(
        r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$",
    )
    .expect("a valid regex")
});

/// A tag, as the OCI distribution spec allows it.
static TAG: LazyLock<regex::Regex> = LazyLock::new(|| {
    regex::Regex::new(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$").expect("a valid regex")
});

/// What can go wrong with an inventory. Messages name the reference, file or plugin, and
/// say what to do; none contains a credential.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// An inventory reference that is not `oci://host/repo[:tag][@sha256:…]`.
    #[error("invalid inventory reference `{reference}`: {reason}")]
    Reference {
        /// As given.
        reference: String,
        /// What is wrong.
        reason: String,
    },
    /// A signing or verification key that cannot be used.
    #[error("key {path}: {reason}")]
    Key {
        /// The key file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The registry failed or refused.
    #[error("registry, {reference}: {reason}")]
    Registry {
        /// The reference asked for.
        reference: String,
        /// What happened (never the registry's body).
        reason: String,
    },
    /// No inventory at the reference.
    #[error("no inventory at {reference}: the registry has no such tag or digest (publish one with `plugsync inventory publish --to oci://{reference}`)")]
    NotFound {
        /// The reference.
        reference: String,
    },
    /// The registry lacks a blob a manifest names.
    #[error("{what} is incomplete in the registry: blob {digest} is missing from {repository}; publish it again")]
    MissingBlob {
        /// What the blob is (the inventory database, a package, a signature payload).
        what: String,
        /// `host/path`.
        repository: String,
        /// The missing digest.
        digest: String,
    },
    /// Bytes that do not hash to the digest that names them.
    #[error(
        "{what} was tampered with or corrupted: expected {expected}, got {actual}; refusing it"
    )]
    Tampered {
        /// What was read.
        what: String,
        /// The digest that names it.
        expected: String,
        /// What the bytes hash to.
        actual: String,
    },
    /// The inventory is not signed by the key, or not signed at all.
    #[error("the inventory {reference} (digest {digest}) is not signed by the key {key}: {reason}; refusing to use it (check the key, or publish it again signed with the right one)")]
    Untrusted {
        /// The reference.
        reference: String,
        /// The manifest digest.
        digest: String,
        /// Why: no signature, or none that verifies.
        reason: String,
        /// The key file.
        key: String,
    },
    /// The artifact is not an inventory (another media type, or a broken manifest).
    #[error("{reference} is not a plugsync inventory: {reason}")]
    NotInventory {
        /// The reference.
        reference: String,
        /// Why.
        reason: String,
    },
    /// The SQLite file cannot be read or written.
    #[error("inventory database {path}: {reason}")]
    Database {
        /// The file.
        path: String,
        /// SQLite's error.
        reason: String,
    },
    /// A package file that cannot be read as a Dify package.
    #[error("package {path}: {reason}")]
    Package {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// A publish that would change what is already published (versions are immutable).
    #[error("{0}")]
    Conflict(String),
    /// A group that cannot be defined as asked.
    #[error("group {group}: {reason}")]
    Group {
        /// `name:version`.
        group: String,
        /// Why.
        reason: String,
    },
    /// A local file or directory (the cache) failed.
    #[error("{what}: {reason}")]
    Io {
        /// The file or what it is for.
        what: String,
        /// The I/O error.
        reason: String,
    },
}

/// Registry credentials (from the user's docker config), used when the registry asks.
#[derive(Clone)]
pub struct Login {
    /// The username.
    pub username: String,
    /// The password or access token.
    pub password: String,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("username", &self.username)
            .field("password", &"***")
            .finish()
    }
}

/// Where an inventory is: `oci://host[:port]/repository[:tag][@sha256:<hex>]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InventoryRef {
    /// `host[:port]`.
    pub registry: String,
    /// The repository path.
    pub repository: String,
    /// The tag (`latest` when neither tag nor digest is given).
    pub tag: Option<String>,
    /// A pinned manifest digest: used instead of the tag, and never refreshed.
    pub digest: Option<String>,
}

impl InventoryRef {
    /// Parses `oci://host/repo:tag`, `oci://host/repo@sha256:…` or both.
    pub fn parse(s: &str) -> Result<InventoryRef, InventoryError> {
        let bad = |reason: &str| InventoryError::Reference {
            reference: s.to_owned(),
            reason: reason.to_owned(),
        };
        let rest = s.strip_prefix("oci://").ok_or_else(|| {
            bad("it must start with oci://, as in oci://registry.example.com/dify/inventory:latest")
        })?;
        let (host, path) = rest
            .split_once('/')
            .ok_or_else(|| bad("expected oci://host/repository[:tag]"))?;
        if host.is_empty() || path.is_empty() {
            return Err(bad("expected oci://host/repository[:tag]"));
        }
        let (path, digest) = match path.split_once('@') {
            Some((p, d)) => {
                let hex = d.strip_prefix("sha256:").unwrap_or("");
                if !crate::package::is_sha256_hex(hex) {
                    return Err(bad(
                        "the digest must be sha256: followed by 64 lowercase hex digits",
                    ));
                }
                (p, Some(d.to_owned()))
            }
            None => (path, None),
        };
        let (repository, tag) = match path.rsplit_once(':') {
            Some((r, t)) if !t.contains('/') => (r, Some(t.to_owned())),
            _ => (path, None),
        };
        if !REPOSITORY.is_match(repository) {
            return Err(bad(
                "the repository must be lowercase path components (a-z, 0-9, . _ -)",
            ));
        }
        if let Some(t) = &tag {
            if !TAG.is_match(t) {
                return Err(bad("the tag must be 1-128 letters, digits, _ . -"));
            }
        }
        let tag = if tag.is_none() && digest.is_none() {
            Some("latest".to_owned())
        } else {
            tag
        };
        Ok(InventoryRef {
            registry: host.to_owned(),
            repository: repository.to_owned(),
            tag,
            digest,
        })
    }

    pub(crate) fn repo(&self) -> oci::Repo {
        oci::Repo {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
        }
    }

    /// The OCI reference to read: the digest when pinned, else the tag.
    pub(crate) fn reference(&self) -> oci_client::Reference {
        match (&self.digest, &self.tag) {
            (Some(d), _) => self.repo().digest(d),
            (None, Some(t)) => self.repo().tag(t),
            (None, None) => self.repo().tag("latest"),
        }
    }

    /// The reference without the pinned digest (what a publish writes to).
    pub fn tagged(&self) -> String {
        format!(
            "{}/{}:{}",
            self.registry,
            self.repository,
            self.tag.as_deref().unwrap_or("latest")
        )
    }
}

impl std::fmt::Display for InventoryRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// One published plugin version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PluginRow {
    /// `author/name`.
    pub name: String,
    /// The plugin version.
    pub version: String,
    /// The manifest's description (English, else the first language).
    pub description: String,
    /// Dify's checksum of the package.
    pub checksum: String,
    /// `author/name:version@checksum`.
    pub unique_identifier: String,
    /// `sha256:<hex>` of the `.difypkg` bytes.
    pub digest: String,
    /// Package size in bytes.
    pub size: u64,
    /// `host/path` of the package artifact.
    pub repository: String,
    /// The package artifact's manifest digest.
    pub manifest_digest: String,
    /// The Dify signature as checked at publish: the signer's key name, `unsigned` or
    /// `invalid` (`package::signature::Verification::recorded_as`).
    pub signature: String,
}

/// One plugin version in a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupEntry {
    /// `author/name`.
    pub plugin: String,
    /// The exact version.
    pub version: String,
    /// Whether installing the group always installs it (else the user may leave it out).
    pub mandatory: bool,
}

/// A named, versioned set of plugin versions meant to be installed together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Group {
    /// The group name.
    pub name: String,
    /// The group version.
    pub version: String,
    /// What it is for.
    pub description: String,
    /// Its plugins.
    pub entries: Vec<GroupEntry>,
}

impl Group {
    /// `name:version`.
    pub fn id(&self) -> String {
        format!("{}:{}", self.name, self.version)
    }
}

/// The whole inventory, as read from (or written to) its database.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Inventory {
    /// Every plugin version, ordered by name and version.
    pub plugins: Vec<PluginRow>,
    /// Every group.
    pub groups: Vec<Group>,
}

/// Orders plugin versions: semver when both parse, else dotted numbers, else text.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    if let (Ok(x), Ok(y)) = (semver::Version::parse(a), semver::Version::parse(b)) {
        return x.cmp(&y);
    }
    let parts = |s: &str| -> Vec<Result<u64, String>> {
        s.split(['.', '-'])
            .map(|p| p.parse::<u64>().map_err(|_| p.to_owned()))
            .collect()
    };
    let (pa, pb) = (parts(a), parts(b));
    for (x, y) in pa.iter().zip(pb.iter()) {
        let o = match (x, y) {
            (Ok(x), Ok(y)) => x.cmp(y),
            (Ok(_), Err(_)) => Ordering::Greater,
            (Err(_), Ok(_)) => Ordering::Less,
            (Err(x), Err(y)) => x.cmp(y),
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    pa.len().cmp(&pb.len())
}

/// A plugin with its newest version, for `plugsync search`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SearchHit {
    /// `author/name`.
    pub name: String,
    /// The newest version.
    pub newest: String,
    /// Every version, newest first.
    pub versions: Vec<String>,
    /// The newest version's description.
    pub description: String,
    /// The newest version's Dify signature status.
    pub signature: String,
}

impl Inventory {
    /// The newest published version of `name`.
    pub fn newest(&self, name: &str) -> Option<&PluginRow> {
        self.plugins
            .iter()
            .filter(|p| p.name == name)
            .max_by(|a, b| compare_versions(&a.version, &b.version))
    }

    /// The row of `name` at `version`.
    pub fn find(&self, name: &str, version: &str) -> Option<&PluginRow> {
        self.plugins
            .iter()
            .find(|p| p.name == name && p.version == version)
    }

    /// The group `name:version`.
    pub fn group(&self, name: &str, version: &str) -> Option<&Group> {
        self.groups
            .iter()
            .find(|g| g.name == name && g.version == version)
    }

    /// Plugins whose name or description contains `text` (case-insensitive; all when
    /// empty), one hit per plugin with its newest version, ordered by name.
    pub fn search(&self, text: &str) -> Vec<SearchHit> {
        let needle = text.to_lowercase();
        let mut names: Vec<&str> = self.plugins.iter().map(|p| p.name.as_str()).collect();
        names.sort();
        names.dedup();
        names
            .into_iter()
            .filter_map(|name| {
                let mut versions: Vec<&PluginRow> =
                    self.plugins.iter().filter(|p| p.name == name).collect();
                versions.sort_by(|a, b| compare_versions(&b.version, &a.version));
                let newest = versions[0];
                let matches = needle.is_empty()
                    || versions.iter().any(|p| {
                        p.name.to_lowercase().contains(&needle)
                            || p.description.to_lowercase().contains(&needle)
                    });
                matches.then(|| SearchHit {
                    name: name.to_owned(),
                    newest: newest.version.clone(),
                    versions: versions.iter().map(|p| p.version.clone()).collect(),
                    description: newest.description.clone(),
                    signature: newest.signature.clone(),
                })
            })
            .collect()
    }
}

/// Parses `name:version` (a group, or `author/name:version`).
pub fn parse_name_version(s: &str) -> Option<(String, String)> {
    let (n, v) = s.rsplit_once([':', '@'])?;
    (!n.is_empty() && !v.is_empty()).then(|| (n.to_owned(), v.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse() {
        let r = InventoryRef::parse("oci://127.0.0.1:5000/dify/inventory:v1").unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "dify/inventory");
        assert_eq!(r.tag.as_deref(), Some("v1"));
        let d = format!("sha256:{}", "a".repeat(64));
        let r = InventoryRef::parse(&format!("oci://h.example/inv@{d}")).unwrap();
        assert_eq!(r.digest.as_deref(), Some(d.as_str()));
        assert_eq!(r.tag, None);
        let r = InventoryRef::parse("oci://h.example/inv").unwrap();
        assert_eq!(r.tag.as_deref(), Some("latest"));
        for bad in ["h/inv", "oci://h", "oci://h/Inv", "oci://h/inv@sha256:12"] {
            assert!(InventoryRef::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn versions_order_numerically() {
        assert_eq!(compare_versions("0.0.10", "0.0.9"), Ordering::Greater);
        assert_eq!(compare_versions("1.2", "1.10"), Ordering::Less);
        assert_eq!(compare_versions("1.0.0-beta", "1.0.0"), Ordering::Less);
    }
}
