//! Dify plugin packages (`.difypkg`): reading, validating, checksumming and packing.
//!
//! A package is a zip archive with `manifest.yaml` at its root. Packages come from
//! untrusted places (marketplaces, GitHub releases, URLs), so [`Package::read`] treats
//! the archive as hostile: it bounds memory and CPU (size, ratio and entry-count caps,
//! counted on the bytes actually inflated), refuses anything that could escape an
//! extraction directory, and validates the manifest with Dify's own rules so that a
//! package plugsync accepts is one the Dify plugin daemon accepts too.

use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use regex::Regex;
use sha2::{Digest, Sha256};

mod checksum;
mod manifest;
mod pack;
mod reader;
pub mod signature;

pub use pack::pack_dir_listing;
pub(crate) use pack::PACKING_RULES;

/// Dify's cap on a package's total uncompressed size (50 MiB).
///
/// Enforced on the bytes actually inflated, not on the sizes the archive declares.
pub const MAX_UNCOMPRESSED_SIZE: u64 = 50 * 1024 * 1024;

/// Most entries (files and directories) a package may hold.
///
/// Real plugins hold tens to hundreds of files; the cap bounds the work a hostile
/// central directory can cause.
pub const MAX_ENTRIES: usize = 10_000;

/// Highest uncompressed/compressed ratio an entry may have once it is larger than
/// [`COMPRESSION_RATIO_THRESHOLD`].
///
/// Source code and images compress 2–20:1; a ratio beyond 100:1 on a large entry
/// betrays a zip bomb (deflate tops out near 1032:1 on runs of zeros).
pub const MAX_COMPRESSION_RATIO: u64 = 100;

/// Entries up to this many uncompressed bytes (1 MiB) are exempt from the ratio check,
/// because small, highly repetitive files (lock files, JSON) legitimately compress well
/// and cannot do harm at that size.
pub const COMPRESSION_RATIO_THRESHOLD: u64 = 1024 * 1024;

/// The manifest's path inside a package.
pub const MANIFEST_FILE: &str = "manifest.yaml";

/// Why a package was refused.
///
/// Every variant names the offending entry (or field) and the numbers involved, so the
/// user can fix the package without unpacking it by hand.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    /// A reason of the caller's own (kept for callers that refuse a package on grounds
    /// this module does not know about).
    #[error("{0}")]
    Other(String),

    /// The bytes are not a readable zip archive (not a zip, truncated, inconsistent
    /// central directory).
    #[error("not a valid zip archive: {reason}")]
    Malformed {
        /// What the zip reader tripped over.
        reason: String,
    },

    /// An entry could not be read back (bad CRC, corrupt deflate stream, encrypted,
    /// unsupported compression).
    #[error("entry {name:?} is unreadable: {reason}")]
    CorruptEntry {
        /// The entry's name.
        name: String,
        /// What went wrong.
        reason: String,
    },

    /// An entry's name could escape an extraction directory or is not a clean relative
    /// path (absolute, `..`, backslash, NUL, `.` or empty components).
    #[error("entry {name:?} has an unsafe path: {reason}")]
    UnsafePath {
        /// The entry's name.
        name: String,
        /// Which rule it breaks.
        reason: String,
    },

    /// An entry is a symbolic link, which could point outside the plugin directory once
    /// extracted.
    #[error("entry {name:?} is a symbolic link; packages must not contain symlinks")]
    Symlink {
        /// The entry's name.
        name: String,
    },

    /// The archive holds more than [`MAX_ENTRIES`] entries.
    #[error("package has {count} entries, more than the limit of {limit}")]
    TooManyEntries {
        /// How many entries the central directory lists.
        count: usize,
        /// [`MAX_ENTRIES`].
        limit: usize,
    },

    /// Two entries share a name; extraction and checksums would disagree on which wins.
    #[error("entry {name:?} appears more than once")]
    DuplicateEntry {
        /// The repeated name.
        name: String,
    },

    /// The sizes the archive declares already exceed [`MAX_UNCOMPRESSED_SIZE`]; refused
    /// before inflating anything.
    #[error(
        "package declares {declared} uncompressed bytes by entry {entry:?}, \
         over the limit of {limit} bytes"
    )]
    DeclaredTooLarge {
        /// The entry at which the running total crossed the limit.
        entry: String,
        /// The running total of declared sizes at that entry.
        declared: u64,
        /// [`MAX_UNCOMPRESSED_SIZE`].
        limit: u64,
    },

    /// The bytes actually inflated exceed [`MAX_UNCOMPRESSED_SIZE`].
    #[error(
        "package inflates to at least {total} bytes by entry {entry:?}, \
         over the limit of {limit} bytes"
    )]
    TooLarge {
        /// The entry being read when the limit was crossed.
        entry: String,
        /// Bytes inflated so far (a lower bound: reading stops at the limit).
        total: u64,
        /// [`MAX_UNCOMPRESSED_SIZE`].
        limit: u64,
    },

    /// An entry larger than [`COMPRESSION_RATIO_THRESHOLD`] inflates more than
    /// [`MAX_COMPRESSION_RATIO`] times its compressed size.
    #[error(
        "entry {name:?} inflates to at least {uncompressed} bytes from {compressed} \
         compressed bytes (ratio over {max_ratio}:1): refusing a likely zip bomb"
    )]
    ZipBomb {
        /// The entry's name.
        name: String,
        /// Its uncompressed size (declared, or bytes inflated before reading stopped).
        uncompressed: u64,
        /// Its compressed size.
        compressed: u64,
        /// [`MAX_COMPRESSION_RATIO`].
        max_ratio: u64,
    },

    /// There is no `manifest.yaml` at the archive root.
    #[error("package has no manifest.yaml at its root")]
    MissingManifest,

    /// `manifest.yaml` is not valid YAML or a field has the wrong type.
    #[error("manifest.yaml: {message}")]
    ManifestYaml {
        /// The parser's message, prefixed with the field path when known.
        message: String,
    },

    /// A `manifest.yaml` field breaks one of Dify's rules.
    #[error("manifest.yaml: {field}: {message}")]
    InvalidManifest {
        /// The field path, such as `meta.runner.language`.
        field: String,
        /// What is wrong, and what would be right.
        message: String,
    },

    /// A string is not a Dify plugin unique identifier.
    #[error(
        "{value:?} is not a valid plugin unique identifier \
         (expected author/name:version@checksum)"
    )]
    InvalidUniqueIdentifier {
        /// The string given.
        value: String,
    },

    /// A plugin source directory contains a symbolic link (packing refuses rather than
    /// follows them, so the package never depends on files outside the directory).
    #[error("{}: symbolic links are not allowed in a plugin directory", path.display())]
    SourceSymlink {
        /// The link's path.
        path: PathBuf,
    },

    /// A plugin source directory contains something that cannot be packed (a special
    /// file, a name that is not UTF-8).
    #[error("{}: {reason}", path.display())]
    UnsupportedSource {
        /// The offending path.
        path: PathBuf,
        /// Why it cannot be packed.
        reason: String,
    },

    /// Walking a plugin source directory failed (unreadable directory, broken
    /// `.difyignore`/`.gitignore` pattern).
    #[error("{}: {reason}", dir.display())]
    Walk {
        /// The directory being packed.
        dir: PathBuf,
        /// What went wrong.
        reason: String,
    },

    /// A filesystem operation failed while packing.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// The parts of `manifest.yaml` that plugsync uses.
///
/// Built only by validation ([`Manifest::from_yaml`]), so holding one means every field
/// below satisfies Dify's rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// Plugin version (`0.0.14`).
    pub version: String,
    /// Author (`langgenius`); may be empty, as Dify allows.
    pub author: String,
    /// Name (`agent`).
    pub name: String,
    /// Memory in bytes from `resource.memory`.
    pub memory: i64,
    /// `meta.runner.language` (always `python` once validated).
    pub runner_language: String,
    /// `meta.runner.version` (`3.12`).
    pub runner_version: String,
    /// `meta.runner.entrypoint` (`main`).
    pub entrypoint: String,
    /// `meta.arch` (`amd64`, `arm64`).
    pub arch: Vec<String>,
    /// `meta.minimum_dify_version`, when declared.
    pub minimum_dify_version: Option<String>,
    /// `meta.version`: the manifest format version (`0.0.1`).
    pub meta_version: String,
    /// `label` (localized names, `{en_US: ...}`), `null` when absent; for display.
    pub label: serde_json::Value,
    /// `description` (localized), `null` when absent; for display.
    pub description: serde_json::Value,
    /// `icon` (a path inside the package), when declared.
    pub icon: Option<String>,
    /// `created_at`, as written, when declared.
    pub created_at: Option<String>,
    /// `plugins` (the kinds the package provides: `tools`, `models`, ...), `null` when
    /// absent.
    pub plugins: serde_json::Value,
    /// `resource.permission` (what the plugin may call back into Dify), `null` when
    /// absent; surfaced so reviewers can see what a plugin asks for.
    pub permission: serde_json::Value,
}

/// A read and validated package.
#[derive(Debug, Clone)]
pub struct Package {
    /// The validated manifest.
    pub manifest: Manifest,
    /// Dify's checksum (hex).
    pub checksum: String,
    /// sha256 of the archive bytes (hex).
    pub sha256: String,
    /// Archive size in bytes.
    pub size: u64,
    /// What its signature covers; [`Package::verify_signature`] checks it.
    signed: signature::SignedContent,
}

impl Package {
    /// Reads and validates a package from its archive bytes.
    ///
    /// Never panics, whatever the input: packages are untrusted, and this is the fuzz
    /// target's entry point.
    pub fn read(bytes: &[u8]) -> Result<Package, PackageError> {
        reader::read(bytes, None)
    }

    /// [`Package::read`] for bytes whose sha256 (lowercase hex) the caller has just
    /// computed or verified, such as the cache's verified reads: a large package is then
    /// hashed once instead of twice. Only correct with the bytes' true digest.
    pub(crate) fn read_hashed(bytes: &[u8], sha256: String) -> Result<Package, PackageError> {
        reader::read(bytes, Some(sha256))
    }

    /// Who signed the package, checked against `keys` (Dify's official key first, then
    /// the keys the repository names), as the plugin daemon checks it before installing.
    pub fn verify_signature(&self, keys: &[signature::TrustedKey]) -> signature::Verification {
        signature::verify(&self.signed, keys)
    }

    /// `author/name` (or `name` when the author is empty): the name Dify shows and
    /// installs under.
    pub fn name(&self) -> String {
        if self.manifest.author.is_empty() {
            self.manifest.name.clone()
        } else {
            format!("{}/{}", self.manifest.author, self.manifest.name)
        }
    }

    /// Dify's unique identifier `author/name:version@checksum` (`name:version@checksum`
    /// when the author is empty): what Dify records for an installed plugin.
    pub fn unique_identifier(&self) -> String {
        format!(
            "{}:{}@{}",
            self.name(),
            self.manifest.version,
            self.checksum
        )
    }

    /// The 32-hex plugin id derived from the unique identifier (see [`plugin_id`]).
    pub fn plugin_id(&self) -> String {
        plugin_id(&self.unique_identifier())
    }
}

/// The 32-hex plugin id for a unique identifier.
///
/// Derivation: the first 32 lowercase hex characters (128 bits) of
/// `sha256(unique_identifier as UTF-8)`. Why this way:
/// - deterministic and stateless: every replica and every machine derives the same id
///   from the same package, with no registry to consult or keep in sync;
/// - a valid Kubernetes name segment (lowercase alphanumerics, short enough to combine
///   with a prefix within the 63-character label limit);
/// - 128 bits make an accidental collision negligible (birthday bound ~2^64 plugins),
///   and any change to the package contents changes the checksum and so the id.
pub fn plugin_id(unique_identifier: &str) -> String {
    let mut id = sha256_hex(unique_identifier.as_bytes());
    id.truncate(32);
    id
}

/// sha256 of bytes, lowercase hex: the digest plugsync pins packages by.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Whether `s` is a digest as [`sha256_hex`] writes it: exactly 64 lowercase hex digits.
/// Everything that names content by digest (the lock, the cache, the build-context server,
/// a builder's termination message) accepts only this form, so `..`, separators and upper-case
/// aliases never reach a path or a comparison.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Dify's unique identifier pattern (`PluginUniqueIdentifierRegex` in the plugin daemon),
/// with ASCII-only classes as in Go.
static UNIQUE_IDENTIFIER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"^(?:([a-z0-9_-]{1,64})/)?([a-z0-9_-]{1,255}):([0-9]{1,4}(?:\.[0-9]{1,4}){2}(?:-[0-9A-Za-z_]{1,16})?)@([a-f0-9]{32,64})$",
    )
    .expect("constant regex compiles")
});

/// Splits a unique identifier into `(author, name, version, checksum)`, validating it
/// against Dify's pattern; `author` is empty when the identifier has none.
///
/// Used to check identifiers that come from users or lockfiles before they reach Dify.
pub fn parse_unique_identifier(s: &str) -> Result<(String, String, String, String), PackageError> {
    let invalid = || PackageError::InvalidUniqueIdentifier {
        value: s.to_string(),
    };
    let caps = UNIQUE_IDENTIFIER.captures(s).ok_or_else(invalid)?;
    let group = |i| caps.get(i).map_or("", |m| m.as_str()).to_string();
    Ok((group(1), group(2), group(3), group(4)))
}

/// Packs a plugin directory into `.difypkg` bytes, deterministically.
///
/// The same files give byte-identical archives on every run and machine (sorted
/// entries, fixed timestamps and permissions, fixed compression), so a package built in
/// CI can be pinned by digest. `.difyignore` (or, without one, `.gitignore`) decides
/// what is left out; `.git/` always is; symlinks are refused. The result is read back
/// with [`Package::read`], so a directory that would not make a valid package fails
/// here with the same errors.
pub fn pack_dir(dir: &Path) -> Result<Vec<u8>, PackageError> {
    pack::pack_dir(dir)
}

/// The text of `manifest.yaml` in the package `bytes`, read straight from the archive
/// (tests that look at a manifest's YAML, not at what validation makes of it).
#[cfg(test)]
pub(crate) fn manifest_text(bytes: &[u8]) -> String {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).expect("a zip archive");
    let mut text = String::new();
    std::io::Read::read_to_string(
        &mut archive.by_name(MANIFEST_FILE).expect("manifest.yaml"),
        &mut text,
    )
    .expect("UTF-8 manifest");
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOLDEN_UID: &str =
        "langgenius/agent:0.0.14@26958a0e80a10655ce73812bdb7c35a66ce7b16f5ac346d298bda17ff85efd1e";

    #[test]
    fn plugin_id_is_stable() {
        // Computed once, independently, with:
        //   printf '%s' 'langgenius/agent:0.0.14@2695…fd1e' | sha256sum | cut -c1-32
        assert_eq!(plugin_id(GOLDEN_UID), "d62e5e95afbb7da9993d56f58e120ce5");
    }

    #[test]
    fn plugin_id_is_32_lowercase_hex() {
        for uid in [GOLDEN_UID, "", "x:1.0.0@abc", "Ünïcode"] {
            let id = plugin_id(uid);
            assert_eq!(id.len(), 32, "{uid}");
            assert!(
                id.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
                "{id}"
            );
        }
    }

    #[test]
    fn plugin_id_changes_with_checksum() {
        let other = GOLDEN_UID.replace("@2695", "@2696");
        assert_ne!(plugin_id(GOLDEN_UID), plugin_id(&other));
    }

    #[test]
    fn sha256_hex_matches_known_vector() {
        // FIPS 180-2 test vector for "abc".
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn only_64_lowercase_hex_digits_are_digests() {
        assert!(is_sha256_hex(&sha256_hex(b"x")));
        assert!(!is_sha256_hex(&sha256_hex(b"x").to_uppercase()));
        assert!(!is_sha256_hex(&"a".repeat(63)));
        assert!(!is_sha256_hex(&"a".repeat(65)));
        assert!(!is_sha256_hex(&format!("../{}", "a".repeat(61))));
        assert!(!is_sha256_hex(&"g".repeat(64)));
    }

    #[test]
    fn parse_unique_identifier_splits_parts() {
        let (author, name, version, checksum) = parse_unique_identifier(GOLDEN_UID).unwrap();
        assert_eq!(author, "langgenius");
        assert_eq!(name, "agent");
        assert_eq!(version, "0.0.14");
        assert_eq!(
            checksum,
            "26958a0e80a10655ce73812bdb7c35a66ce7b16f5ac346d298bda17ff85efd1e"
        );
    }

    #[test]
    fn parse_unique_identifier_without_author() {
        let (author, name, version, _) =
            parse_unique_identifier("agent:1.2.3-beta_1@0123456789abcdef0123456789abcdef").unwrap();
        assert_eq!((author.as_str(), name.as_str()), ("", "agent"));
        assert_eq!(version, "1.2.3-beta_1");
    }

    #[test]
    fn parse_unique_identifier_rejects_bad_input() {
        for bad in [
            "",
            "langgenius/agent:0.0.14",
            "langgenius/agent@26958a0e80a10655ce73812bdb7c35a66",
            "LangGenius/agent:0.0.14@26958a0e80a10655ce73812bdb7c35a66",
            "langgenius/agent:0.0@26958a0e80a10655ce73812bdb7c35a66",
            "langgenius/agent:0.0.14@26958a0e80a10655",
            "langgenius/agent:0.0.14@26958A0E80A10655CE73812BDB7C35A66",
            "a/b/agent:0.0.14@26958a0e80a10655ce73812bdb7c35a66",
            "langgenius/agent:٠.0.14@26958a0e80a10655ce73812bdb7c35a66",
            "langgenius/agent:0.0.14@26958a0e80a10655ce73812bdb7c35a66\n",
        ] {
            let err = parse_unique_identifier(bad).unwrap_err();
            assert!(
                matches!(err, PackageError::InvalidUniqueIdentifier { ref value } if value == bad),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn name_and_identifier_without_author() {
        let mut manifest = manifest::tests::valid_manifest();
        manifest.author = String::new();
        let package = Package {
            manifest,
            checksum: "ab".repeat(32),
            sha256: String::new(),
            size: 0,
            signed: Default::default(),
        };
        assert_eq!(package.name(), "hello");
        assert_eq!(
            package.unique_identifier(),
            format!("hello:0.1.0@{}", "ab".repeat(32))
        );
        assert_eq!(package.plugin_id(), plugin_id(&package.unique_identifier()));
    }
}
