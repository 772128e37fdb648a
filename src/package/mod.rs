//! Dify plugin packages (`.difypkg`): reading, validating, checksumming and packing.
//!
//! CONTRACT STUB: the bodies are filled in by the package work; signatures are fixed.

use std::path::Path;

/// Dify's cap on a package's total uncompressed size.
pub const MAX_UNCOMPRESSED_SIZE: u64 = 50 * 1024 * 1024;

/// Why a package was refused.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    /// Placeholder until the package work lands.
    #[error("{0}")]
    Other(String),
}

/// The parts of `manifest.yaml` that plugsync uses.
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
}

impl Package {
    /// Reads and validates a package from its archive bytes.
    pub fn read(_bytes: &[u8]) -> Result<Package, PackageError> {
        Err(PackageError::Other("not implemented yet".into()))
    }

    /// `author/name` (or `name` when the author is empty).
    pub fn name(&self) -> String {
        String::new()
    }

    /// Dify's unique identifier `author/name:version@checksum`.
    pub fn unique_identifier(&self) -> String {
        String::new()
    }

    /// The 32-hex plugin id derived from the unique identifier.
    pub fn plugin_id(&self) -> String {
        plugin_id(&self.unique_identifier())
    }
}

/// The 32-hex plugin id for a unique identifier.
pub fn plugin_id(_unique_identifier: &str) -> String {
    String::new()
}

/// sha256 of bytes, lowercase hex.
pub fn sha256_hex(_bytes: &[u8]) -> String {
    String::new()
}

/// Packs a plugin directory into `.difypkg` bytes, deterministically.
pub fn pack_dir(_dir: &Path) -> Result<Vec<u8>, PackageError> {
    Err(PackageError::Other("not implemented yet".into()))
}
