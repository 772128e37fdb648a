//! Dify's marketplace: where a declared `author/name@version` is downloaded from. Model data,
//! since validation (load) names the URL in its errors and resolution fetches it.

use url::Url;

/// The Dify marketplace download URL for an exact version:
/// `<base>/api/v1/plugins/<author>/<name>/<version>/download`.
///
/// The base may end in a slash or not and may carry a path prefix (a mirror behind a
/// reverse proxy). Each part is percent-encoded as one path segment, so a `/` in a name
/// cannot change the path; `.` and `..` parts are dropped by URL normalisation. A base
/// that cannot have a path (`mailto:`) is returned unchanged and fails at fetch time.
pub fn marketplace_download_url(base: &Url, author: &str, name: &str, version: &str) -> Url {
    let mut url = base.clone();
    url.set_fragment(None);
    if let Ok(mut segments) = url.path_segments_mut() {
        segments
            .pop_if_empty()
            .extend(["api", "v1", "plugins", author, name, version, "download"]);
    }
    url
}

/// The marketplace's batch lookup, `<base>/api/v1/plugins/batch`: one POST of
/// `{"plugin_ids": ["author/name", …]}` answers each plugin's newest version
/// (`data.plugins[].latest_version`), as Dify's own API asks it
/// (`core/helper/marketplace.py`, `batch_fetch_plugin_manifests`).
pub fn marketplace_batch_url(base: &Url) -> Url {
    let mut url = base.clone();
    url.set_fragment(None);
    if let Ok(mut segments) = url.path_segments_mut() {
        segments
            .pop_if_empty()
            .extend(["api", "v1", "plugins", "batch"]);
    }
    url
}
