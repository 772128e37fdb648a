//! The in-tree `file` client: `file:///abs/path`.
//!
//! Only local, absolute paths are accepted (`file://host/...` would silently mean a
//! different machine's file on some platforms). The size cap applies as for HTTP, so a
//! mistyped path to a huge file fails fast instead of filling memory.

use tokio::io::AsyncReadExt;
use url::Url;

use super::{FetchError, Progress};
use crate::redact::redact_url;

/// Reads the file at a `file:` URL, at most `max_bytes`.
pub(crate) async fn fetch(
    url: &Url,
    max_bytes: u64,
    progress: &dyn Progress,
) -> Result<Vec<u8>, FetchError> {
    let shown = redact_url(url);
    let has_host = url.host_str().is_some_and(|h| !h.is_empty());
    let path = match url.to_file_path() {
        Ok(path) if !has_host && path.is_absolute() => path,
        _ => {
            return Err(FetchError::InvalidUrl {
                url: shown,
                reason: "a file URL must be local and absolute, like file:///abs/path/pkg.difypkg"
                    .to_owned(),
            })
        }
    };
    let io_error = |source| FetchError::Io {
        what: format!("reading {}", redact_url(url)),
        source,
    };
    let file = tokio::fs::File::open(&path).await.map_err(io_error)?;
    let meta = file.metadata().await.map_err(io_error)?;
    if !meta.is_file() {
        return Err(FetchError::InvalidUrl {
            url: shown,
            reason: "not a regular file".to_owned(),
        });
    }
    if meta.len() > max_bytes {
        return Err(FetchError::TooLarge {
            url: shown,
            limit: max_bytes,
            seen: meta.len(),
            declared: true,
        });
    }
    progress.start(Some(meta.len()));
    // Read one byte past the cap so a file that grew since `metadata` is still refused.
    let mut reader = file.take(max_bytes.saturating_add(1));
    let mut body = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = reader.read(&mut buf).await.map_err(io_error)?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&buf[..n]);
        progress.advance(n as u64);
    }
    if body.len() as u64 > max_bytes {
        return Err(FetchError::TooLarge {
            url: shown,
            limit: max_bytes,
            seen: body.len() as u64,
            declared: false,
        });
    }
    Ok(body)
}
