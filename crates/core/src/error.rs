//! The crate-wide error type.
//!
//! Every error a user can cause carries enough context to act on it: configuration
//! errors carry file, line, column and field path ([`Diagnostic`]); package and source
//! errors name the plugin or URL (with credentials redacted, see [`crate::redact`]).

use std::fmt;
use std::path::PathBuf;

use crate::fetch::FetchError;
use crate::package::PackageError;
use crate::source::SnapshotError;

/// Result alias used throughout the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One problem found in a user-authored file, located precisely enough for an editor
/// or a CI annotation to jump to it (`file:line:column: field.path: message`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file the problem is in, as the user named it.
    pub file: PathBuf,
    /// 1-based line, 0 when unknown (for example an empty file).
    pub line: usize,
    /// 1-based column, 0 when unknown.
    pub column: usize,
    /// The field path, such as `spec.plugins[2].version`; empty for the whole document.
    pub path: String,
    /// What is wrong, and where possible what would be right.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if !self.path.is_empty() {
            write!(f, ": {}", self.path)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// All problems found in one validation pass, so a user fixes them in one go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// The library's error type.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A user-authored file (plugins.yaml, plugins.lock) is invalid.
    #[error("{0}")]
    Invalid(Diagnostics),

    /// A package could not be read or failed validation.
    #[error("{plugin}: {source}")]
    Package {
        /// The plugin entry (or file) the package came from.
        plugin: String,
        /// What is wrong with the package.
        #[source]
        source: PackageError,
    },

    /// A package could not be fetched from its source.
    #[error("{plugin}: {source}")]
    Source {
        /// The plugin entry the fetch was for.
        plugin: String,
        /// Why the fetch failed.
        #[source]
        source: FetchError,
    },

    /// A package's bytes differ from what the lockfile pinned: refuse, never re-pin silently.
    #[error(
        "{plugin}: package digest mismatch: plugins.lock pins sha256:{expected} but {source_url} \
         served sha256:{actual}; if this change is intended, run `plugsync lock --update {plugin}`"
    )]
    DigestMismatch {
        /// The plugin entry.
        plugin: String,
        /// The digest recorded in the lock.
        expected: String,
        /// The digest of the bytes received.
        actual: String,
        /// Where the bytes came from (redacted).
        source_url: String,
    },

    /// The source served a different plugin or version than the entry declares.
    #[error("{plugin}: the source served {actual}, but plugins.yaml declares {expected}")]
    WrongPackage {
        /// The plugin entry.
        plugin: String,
        /// What plugins.yaml declares (`author/name:version`).
        expected: String,
        /// What the package's manifest says.
        actual: String,
    },

    /// A revision of the repository (or the working tree) could not be read. Keeps the
    /// [`SnapshotError`], which says whether the content is at fault (a symlink, a bad path)
    /// or the reading failed (a git object read, the disk): see [`Error::is_transient`].
    #[error("{snapshot}: {source}")]
    Snapshot {
        /// The snapshot's description (`origin/main (1a2b3c4d)`, `working tree /x`).
        snapshot: String,
        /// Why it could not be read.
        #[source]
        source: SnapshotError,
    },

    /// A request that cannot be carried out as asked (bad flag values, paths outside the
    /// repository, …).
    #[error("{0}")]
    Usage(String),

    /// Rendering failed (a template error, a missing base image, an invalid object).
    #[error(transparent)]
    Render(#[from] crate::render::RenderError),
    /// The private plugin inventory failed (registry, signature, cache, database).
    #[error(transparent)]
    Inventory(#[from] crate::inventory::InventoryError),

    /// The Kubernetes API answered with an error status.
    #[error("{what}: {message} ({code})")]
    ClusterApi {
        /// The operation (`apply Deployment dify/x`).
        what: String,
        /// HTTP status code.
        code: u16,
        /// The API server's message (conflicts name the fields and managers).
        message: String,
    },

    /// The cluster could not be reached or did not behave.
    #[error("{0}")]
    Cluster(String),

    /// `--locked` was given and the lock would change.
    #[error("plugins.lock is out of date:\n{0}")]
    LockOutOfDate(String),

    /// A filesystem operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Wraps a snapshot error with the snapshot it happened in.
    pub fn snapshot(snapshot: impl Into<String>, source: SnapshotError) -> Self {
        Error::Snapshot {
            snapshot: snapshot.into(),
            source,
        }
    }

    /// Whether the same request may succeed if simply tried again: a package server, the
    /// disk, a git object read or the cluster failed, not the input. The git loop retries a
    /// commit that failed this way at its next poll; any other error makes the commit bad
    /// (the status says why, and nothing is applied) until a new commit arrives.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Source { .. } | Error::Io { .. } | Error::Cluster(_) => true,
            Error::Snapshot { source, .. } => source.is_transient(),
            Error::ClusterApi { code, .. } => matches!(code, 429 | 500 | 502 | 503 | 504),
            // The registry or the local cache: a retry may get through; a signature or a
            // conflict will not change by itself.
            Error::Inventory(e) => matches!(
                e,
                crate::inventory::InventoryError::Registry { .. }
                    | crate::inventory::InventoryError::Io { .. }
            ),
            Error::Invalid(_)
            | Error::Package { .. }
            | Error::DigestMismatch { .. }
            | Error::WrongPackage { .. }
            | Error::Usage(_)
            | Error::Render(_)
            | Error::LockOutOfDate(_) => false,
        }
    }

    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
