//! Package source clients, chosen by URL scheme.
//!
//! CONTRACT STUB: the bodies are filled in by the sources work; signatures are fixed.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use url::Url;

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Placeholder until the sources work lands.
    #[error("{0}")]
    Other(String),
}

/// Where a source client comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceOrigin {
    /// Compiled into plugsync.
    InTree,
    /// An executable `plugsync-source-<scheme>`.
    External {
        /// Its path.
        path: PathBuf,
    },
}

/// What `plugsync plugins` shows about a source client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceInfo {
    /// The URL scheme handled (`https`, `s3`, …; `marketplace` for the Dify marketplace).
    pub scheme: String,
    /// In-tree or external.
    pub origin: SourceOrigin,
    /// One line about it.
    pub description: String,
    /// Extra attributes (timeouts, size cap, version of an external client, …).
    pub attributes: BTreeMap<String, String>,
}

/// Receives download progress (an indicatif bar on a terminal, nothing elsewhere).
pub trait Progress: Send + Sync {
    /// Called once when the total size is known (or not).
    fn start(&self, total: Option<u64>);
    /// Called as bytes arrive.
    fn advance(&self, bytes: u64);
}

/// Progress sink that ignores everything.
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _total: Option<u64>) {}
    fn advance(&self, _bytes: u64) {}
}

/// Limits that apply to every fetch.
#[derive(Debug, Clone)]
pub struct FetchSettings {
    /// Whole-request timeout (and idle timeout for external clients).
    pub timeout: Duration,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Extra attempts after a retryable failure (5xx, 429, timeouts, resets).
    pub retries: u32,
    /// Refuse bodies larger than this.
    pub max_bytes: u64,
    /// Directories searched for `plugsync-source-<scheme>` before `PATH`.
    pub plugin_dirs: Vec<PathBuf>,
}

impl Default for FetchSettings {
    fn default() -> Self {
        FetchSettings {
            timeout: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(10),
            retries: 3,
            max_bytes: 64 * 1024 * 1024,
            plugin_dirs: Vec::new(),
        }
    }
}

/// All source clients known to this process.
pub struct SourceRegistry {
    _settings: FetchSettings,
}

impl SourceRegistry {
    /// In-tree clients plus every external client found in the plugin dirs and on `PATH`.
    pub fn discover(settings: FetchSettings, _marketplace: Url) -> Self {
        SourceRegistry {
            _settings: settings,
        }
    }

    /// Fetches the package bytes at `url` with the client for its scheme.
    pub async fn fetch(&self, _url: &Url, _progress: &dyn Progress) -> Result<Vec<u8>, SourceError> {
        Err(SourceError::Other("not implemented yet".into()))
    }

    /// Every client, for `plugsync plugins`.
    pub fn list(&self) -> Vec<SourceInfo> {
        Vec::new()
    }
}

/// The Dify marketplace download URL for an exact version.
pub fn marketplace_download_url(_base: &Url, _author: &str, _name: &str, _version: &str) -> Url {
    Url::parse("http://invalid").expect("static")
}
