//! Keeping secrets out of logs, errors and diffs.
//!
//! CONTRACT STUB: filled in by the sources work.

use url::Url;

/// A URL safe to print: no password or user, no query values.
pub fn redact_url(url: &Url) -> String {
    url.to_string()
}
