//! Package source clients, chosen by URL scheme.
//!
//! A package URL's scheme picks the client that downloads it:
//!
//! - `file`: a local file, `file:///abs/path`, under the same size cap.
//! - `http`, `https` ([`http`]): one shared HTTP client with timeouts, a size cap and
//!   retries with exponential backoff. The Dify marketplace is reached through it, at
//!   [`marketplace_download_url`].
//! - `oci`, `oci+http`: a package artifact of a private inventory pulled by digest from an
//!   OCI registry (`crate::inventory::fetch_package`), what `inventory:` and
//!   `group:` entries expand to.
//! - any other scheme: an external program `plugsync-source-<scheme>` ([`external`]),
//!   found in [`FetchSettings::plugin_dirs`] and then on `PATH`. The protocol it speaks
//!   is documented in [`external`].
//!
//! The in-tree schemes `file`, `http`, `https`, `oci` and `oci+http` (the package artifacts
//! of a private inventory, `crate::inventory`), and the name `marketplace`, cannot be
//! overridden by an external client: a `plugsync-source-https` found on disk is never
//! run; [`Fetchers::list`] shows it as shadowed so the user sees why.
//!
//! Every URL in every message is passed through [`crate::redact`], so presigned URLs and
//! credentials do not leak into logs.

pub mod external;
mod file;
pub mod http;
pub mod marketplace;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use url::Url;

use crate::redact::redact_url;

pub use http::Backoff;

/// Why a fetch failed. Retry decisions use [`FetchError::is_retryable`], never the text.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// No client handles this URL's scheme: says how to get one, since a new user meets
    /// this the first time they declare an `s3://` (or any other) package.
    #[error(
        "{url}: no source client for scheme `{scheme}` (known schemes: {}); install one: an \
         executable named `{}{scheme}` in a directory on PATH or given with --plugin-dir \
         (README, \"External source clients\"; `plugsync sources` lists the clients found)",
        known.join(", "),
        external::PROGRAM_PREFIX
    )]
    UnsupportedScheme {
        /// The scheme asked for.
        scheme: String,
        /// The URL, redacted.
        url: String,
        /// The schemes that would have worked, sorted.
        known: Vec<String>,
    },
    /// The server answered with a non-success status.
    #[error("GET {url}: {}", status_text(*status))]
    Status {
        /// The URL, redacted.
        url: String,
        /// The HTTP status code.
        status: u16,
        /// The server's `Retry-After`, in seconds form, when it sent one.
        retry_after: Option<Duration>,
    },
    /// The request (or the external client) did not finish in time.
    #[error("{what}: timed out after {}", humantime::format_duration(*after))]
    Timeout {
        /// What timed out: `GET <url>` or `<program> fetch <url>`, redacted.
        what: String,
        /// The limit that was hit.
        after: Duration,
    },
    /// The connection failed or broke (refused, reset, DNS, TLS).
    #[error("GET {url}: {message}")]
    Network {
        /// The URL, redacted.
        url: String,
        /// The cause chain, redacted.
        message: String,
    },
    /// The package is larger than [`FetchSettings::max_bytes`].
    #[error(
        "{url}: package too large: {seen} bytes {}, limit is {limit} bytes",
        if *declared { "declared" } else { "received before giving up" }
    )]
    TooLarge {
        /// The URL, redacted.
        url: String,
        /// The configured limit.
        limit: u64,
        /// The declared size (Content-Length, file size) or the bytes received so far.
        seen: u64,
        /// Whether `seen` was declared up front rather than counted.
        declared: bool,
    },
    /// Reading a local file or talking to a child process failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, with the URL or path redacted.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The URL is not one this client can use (a `file` URL with a host, for example).
    #[error("{url}: {reason}")]
    InvalidUrl {
        /// The URL, redacted.
        url: String,
        /// What is wrong and what would be right.
        reason: String,
    },
    /// A marketplace's version lookup failed (`plugsync outdated`).
    #[error("POST {url}: {reason}")]
    Lookup {
        /// The URL, redacted.
        url: String,
        /// What went wrong: the status, or what the answer lacked.
        reason: String,
    },
    /// An external client exited unsuccessfully or broke the protocol.
    #[error("{} fetch {url}: {reason}{}", program.display(), stderr_suffix(stderr))]
    External {
        /// The client's path.
        program: PathBuf,
        /// The URL, redacted.
        url: String,
        /// What went wrong: the exit status, or the protocol violation.
        reason: String,
        /// The last lines of its stderr (at most ~2 KiB), redacted.
        stderr: String,
    },
}

impl FetchError {
    /// Whether another attempt may succeed: network failures, timeouts, 429 and 5xx.
    /// A 404, a size cap or a bad URL will fail the same way again.
    pub fn is_retryable(&self) -> bool {
        match self {
            FetchError::Network { .. } | FetchError::Timeout { .. } => true,
            FetchError::Status { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }
}

fn status_text(status: u16) -> String {
    match reqwest::StatusCode::from_u16(status) {
        Ok(code) => code.to_string(),
        Err(_) => status.to_string(),
    }
}

fn stderr_suffix(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!("; stderr:\n{stderr}")
    }
}

/// Where a source client comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetcherOrigin {
    /// Compiled into plugsync.
    InTree,
    /// An executable `plugsync-source-<scheme>`.
    External {
        /// Its path.
        path: PathBuf,
    },
}

/// What `plugsync sources` shows about a source client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetcherInfo {
    /// The URL scheme handled (`https`, `s3`, …; `marketplace` for the Dify marketplace).
    pub scheme: String,
    /// In-tree or external.
    pub origin: FetcherOrigin,
    /// One line about it.
    pub description: String,
    /// Extra attributes (timeouts, size cap, version of an external client, …).
    pub attributes: BTreeMap<String, String>,
}

/// Receives download progress (an indicatif bar on a terminal, nothing elsewhere).
pub trait Progress: Send + Sync {
    /// Called when a transfer starts, with the total size if known. A retry starts a new
    /// transfer, so implementations should reset their position here.
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
    /// Per-attempt HTTP timeout, from connecting to the last body byte (so a stalled
    /// server cannot hang a run), and the bound on a whole external `fetch` run.
    pub timeout: Duration,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Extra attempts after a retryable failure (5xx, 429, timeouts, resets).
    pub retries: u32,
    /// Refuse bodies larger than this.
    pub max_bytes: u64,
    /// Directories searched for `plugsync-source-<scheme>` before `PATH`.
    pub plugin_dirs: Vec<PathBuf>,
    /// Credentials by registry host (`host[:port]`) for `oci` package artifacts and the
    /// private inventory (from the user's docker config); anonymous where absent.
    pub registry_logins: BTreeMap<String, crate::inventory::Login>,
}

impl Default for FetchSettings {
    fn default() -> Self {
        FetchSettings {
            timeout: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(10),
            retries: 3,
            max_bytes: 64 * 1024 * 1024,
            plugin_dirs: Vec::new(),
            registry_logins: BTreeMap::new(),
        }
    }
}

/// Schemes served in-tree; external clients cannot take them over.
pub(crate) const IN_TREE_SCHEMES: [&str; 5] = ["file", "http", "https", "oci", "oci+http"];

/// The name the marketplace is listed under; reserved like the in-tree schemes.
pub(crate) const MARKETPLACE: &str = "marketplace";

/// All source clients known to this process.
pub struct Fetchers {
    settings: FetchSettings,
    marketplace: Url,
    http: http::HttpClient,
    /// Where external clients are looked for: the plugin dirs, then `PATH`.
    search: Vec<PathBuf>,
    /// The external clients in `search`, looked for on first need: a run whose packages
    /// are all cached or over HTTP never lists the `PATH` directories (a thousand
    /// entries in `/usr/bin` alone).
    external: std::sync::OnceLock<external::Discovered>,
}

impl Fetchers {
    /// In-tree clients plus every external client in the plugin dirs and on `PATH` (looked
    /// for when one is first needed).
    pub fn discover(settings: FetchSettings, marketplace: Url) -> Self {
        Self::discover_with_path(settings, marketplace, std::env::var_os("PATH"))
    }

    /// Like [`Fetchers::discover`] with an explicit `PATH`-style search list, so
    /// tests (and embedders) need not mutate the process environment.
    pub fn discover_with_path(
        settings: FetchSettings,
        marketplace: Url,
        path: Option<OsString>,
    ) -> Self {
        let mut search = settings.plugin_dirs.clone();
        search.extend(path.iter().flat_map(std::env::split_paths));
        Fetchers {
            http: http::HttpClient::new(&settings),
            search,
            external: std::sync::OnceLock::new(),
            settings,
            marketplace,
        }
    }

    fn external(&self) -> &external::Discovered {
        self.external
            .get_or_init(|| external::discover(&self.search))
    }

    /// The settings every fetch runs with.
    pub fn settings(&self) -> &FetchSettings {
        &self.settings
    }

    /// Replaces the retry backoff of the HTTP client (the default starts at 200 ms);
    /// tests use a few milliseconds to stay fast.
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.http.set_backoff(backoff);
        self
    }

    /// Fetches the package bytes at `url` with the client for its scheme.
    pub async fn fetch(&self, url: &Url, progress: &dyn Progress) -> Result<Vec<u8>, FetchError> {
        tracing::debug!(url = %redact_url(url), "fetching package");
        match url.scheme() {
            "file" => file::fetch(url, self.settings.max_bytes, progress).await,
            "http" | "https" => self.http.fetch(url, progress).await,
            // Package artifacts of a private inventory (`inventory:` and `group:` entries).
            "oci" | "oci+http" => crate::inventory::fetch_package(
                url,
                self.settings.timeout,
                self.settings.max_bytes,
                &self.settings.registry_logins,
            )
            .await
            .map_err(|e| FetchError::Network {
                url: redact_url(url),
                message: e.to_string(),
            }),
            scheme => match self.external().clients.get(scheme) {
                Some(path) => external::fetch(path, url, &self.settings, progress).await,
                None => Err(FetchError::UnsupportedScheme {
                    scheme: scheme.to_owned(),
                    url: redact_url(url),
                    known: self.schemes(),
                }),
            },
        }
    }

    /// The schemes [`Fetchers::fetch`] accepts, sorted.
    pub fn schemes(&self) -> Vec<String> {
        let mut schemes: Vec<String> = IN_TREE_SCHEMES.iter().map(|s| s.to_string()).collect();
        schemes.extend(self.external().clients.keys().cloned());
        schemes.sort();
        schemes
    }

    /// Every client, for `plugsync sources`, sorted by scheme (in-tree first on a tie).
    /// Runs `info` on each external client, concurrently.
    pub async fn list(&self) -> Vec<FetcherInfo> {
        let s = &self.settings;
        let timeout = humantime::format_duration(s.timeout).to_string();
        let http_attrs = BTreeMap::from([
            ("timeout".to_owned(), timeout),
            (
                "connect_timeout".to_owned(),
                humantime::format_duration(s.connect_timeout).to_string(),
            ),
            ("retries".to_owned(), s.retries.to_string()),
            ("max_bytes".to_owned(), s.max_bytes.to_string()),
            ("user_agent".to_owned(), http::USER_AGENT.to_owned()),
        ]);
        let in_tree = |scheme: &str, description: &str, attributes| FetcherInfo {
            scheme: scheme.to_owned(),
            origin: FetcherOrigin::InTree,
            description: description.to_owned(),
            attributes,
        };
        let mut infos = vec![
            in_tree(
                "file",
                "local package files (file:///abs/path)",
                BTreeMap::from([("max_bytes".to_owned(), s.max_bytes.to_string())]),
            ),
            in_tree("http", "HTTP download with retries", http_attrs.clone()),
            in_tree("https", "HTTPS download with retries", http_attrs),
            in_tree(
                "oci",
                "package artifacts of a private plugin inventory (OCI registry, HTTPS)",
                BTreeMap::from([("max_bytes".to_owned(), s.max_bytes.to_string())]),
            ),
            in_tree(
                "oci+http",
                "package artifacts of a private plugin inventory (OCI registry, plain HTTP)",
                BTreeMap::from([("max_bytes".to_owned(), s.max_bytes.to_string())]),
            ),
            in_tree(
                MARKETPLACE,
                "Dify marketplace (downloaded over http/https)",
                BTreeMap::from([("base_url".to_owned(), redact_url(&self.marketplace))]),
            ),
        ];
        infos.extend(external::list(self.external(), s.timeout).await);
        infos.sort_by(|a, b| {
            let external = |i: &FetcherInfo| matches!(i.origin, FetcherOrigin::External { .. });
            (a.scheme.as_str(), external(a)).cmp(&(b.scheme.as_str(), external(b)))
        });
        infos
    }
}

pub use crate::model::marketplace_download_url;

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn marketplace_url_without_trailing_slash() {
        let u =
            marketplace_download_url(&url("https://m.example"), "langgenius", "agent", "0.0.14");
        assert_eq!(
            u.as_str(),
            "https://m.example/api/v1/plugins/langgenius/agent/0.0.14/download"
        );
    }

    #[test]
    fn marketplace_url_with_prefix_and_slash() {
        for base in ["https://m.example/market/", "https://m.example/market"] {
            let u = marketplace_download_url(&url(base), "a", "b", "1.0.0");
            assert_eq!(
                u.as_str(),
                "https://m.example/market/api/v1/plugins/a/b/1.0.0/download"
            );
        }
    }

    #[test]
    fn marketplace_url_encodes_segments() {
        let u = marketplace_download_url(&url("https://m.example/"), "a/../x", "b c", "1");
        assert_eq!(
            u.as_str(),
            "https://m.example/api/v1/plugins/a%2F..%2Fx/b%20c/1/download"
        );
    }

    #[test]
    fn retryable_by_variant() {
        let status = |status| FetchError::Status {
            url: String::new(),
            status,
            retry_after: None,
        };
        assert!(status(503).is_retryable());
        assert!(status(429).is_retryable());
        assert!(!status(404).is_retryable());
        assert!(!FetchError::TooLarge {
            url: String::new(),
            limit: 1,
            seen: 2,
            declared: true
        }
        .is_retryable());
    }

    #[test]
    fn status_message_has_code_and_reason() {
        let e = FetchError::Status {
            url: "http://h/x".into(),
            status: 404,
            retry_after: None,
        };
        assert_eq!(e.to_string(), "GET http://h/x: 404 Not Found");
    }
}
