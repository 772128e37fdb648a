//! External source clients: `plugsync-source-<scheme>` programs.
//!
//! Any URL scheme plugsync does not handle itself (`s3`, `oci`, `gs`, an in-house
//! artifact store, …) can be served by a small program, in any language, without
//! rebuilding plugsync.
//!
//! # Protocol, version 1
//!
//! **Naming.** An external source client is an executable file named
//! `plugsync-source-<scheme>`. It handles package URLs whose scheme is `<scheme>`: for
//! example `plugsync-source-s3` handles `s3://bucket/key.difypkg`. `<scheme>` must be a
//! lowercase URL scheme (a letter, then letters, digits, `+`, `-` or `.`).
//!
//! **Discovery.** plugsync searches each configured plugin directory in order, then each
//! directory of `PATH` in order. The first executable regular file (symlinks are
//! followed) with a given name wins; later ones are ignored. The in-tree schemes `file`,
//! `http` and `https`, and the name `marketplace`, cannot be taken over: such a program
//! is never run, and `plugsync sources` lists it as shadowed by the in-tree client.
//!
//! **Environment.** Every invocation inherits plugsync's environment, plus
//! `PLUGSYNC_SOURCE_PROTOCOL=1`. Stdin is empty. A client should check the protocol
//! version and fail if it does not know it.
//!
//! **`plugsync-source-<scheme> info`** prints one JSON object on stdout and exits 0:
//!
//! ```json
//! {"protocol": 1, "description": "S3 buckets", "version": "1.2.0", "attributes": {"region": "eu-west-1"}}
//! ```
//!
//! `protocol` is required and must be `1`; `description` (one line), `version` and
//! `attributes` (string values) are optional. It is run by `plugsync sources` only,
//! bounded by the smaller of the fetch timeout and 10 seconds. A client whose `info`
//! fails is still listed, with an `error` attribute saying why.
//!
//! **`plugsync-source-<scheme> fetch <url>`** writes the package bytes, and nothing
//! else, to stdout and exits 0. Diagnostics go to stderr. Failure is a non-zero exit:
//! plugsync reports the program, its exit status and the last lines of its stderr (at
//! most 2 KiB, with URLs redacted). Exiting 0 without writing anything is also a failure.
//!
//! **Limits.** The whole `fetch` run is bounded by the fetch timeout; when it expires
//! the client is killed (SIGKILL) and the fetch fails with a timeout. Writing more than
//! the package size cap to stdout fails the fetch and kills the client. The kill reaches
//! the client process only: a shell script should `exec` its last command so that the
//! kill reaches the process doing the work. plugsync does not retry external fetches; a
//! client that wants retries does them itself.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use url::Url;

use super::{FetchError, FetchSettings, FetcherInfo, FetcherOrigin, NoProgress, Progress};
use super::{IN_TREE_SCHEMES, MARKETPLACE};
use crate::redact::{redact_text, redact_url};

/// File name prefix of external clients.
pub(crate) const PROGRAM_PREFIX: &str = "plugsync-source-";

/// Environment variable telling a client which protocol version plugsync speaks.
pub(crate) const PROTOCOL_ENV: &str = "PLUGSYNC_SOURCE_PROTOCOL";

/// The protocol version described in this module.
pub(crate) const PROTOCOL_VERSION: u32 = 1;

/// How much of a client's stderr ends up in an error message.
const STDERR_TAIL: usize = 2 * 1024;

/// Upper bound for `info`, so `plugsync sources` stays responsive.
const INFO_TIMEOUT: Duration = Duration::from_secs(10);

/// Upper bound for `info`'s output.
const INFO_MAX_BYTES: u64 = 64 * 1024;

/// External clients found on disk.
#[derive(Debug, Default)]
pub(crate) struct Discovered {
    /// Usable clients by scheme.
    pub(crate) clients: BTreeMap<String, PathBuf>,
    /// Programs named after an in-tree scheme, which are never run.
    pub(crate) shadowed: BTreeMap<String, PathBuf>,
}

/// Finds `plugsync-source-*` executables in `dirs`, the first per scheme winning.
pub(crate) fn discover(dirs: &[PathBuf]) -> Discovered {
    let mut found = Discovered::default();
    for dir in dirs {
        let Ok(entries) = fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(scheme) = name.to_str().and_then(|n| n.strip_prefix(PROGRAM_PREFIX)) else {
                continue;
            };
            let path = entry.path();
            if !is_scheme(scheme) || !is_executable(&path) {
                continue;
            }
            let reserved = IN_TREE_SCHEMES.contains(&scheme) || scheme == MARKETPLACE;
            let map = if reserved {
                &mut found.shadowed
            } else {
                &mut found.clients
            };
            map.entry(scheme.to_owned()).or_insert(path);
        }
    }
    found
}

/// A lowercase URL scheme: `url` lowercases schemes, so anything else could never match.
fn is_scheme(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c))
}

#[cfg(unix)]
fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(not(unix))]
fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file())
}

/// `FetcherInfo` for every discovered client, running `info` concurrently.
pub(crate) async fn list(found: &Discovered, timeout: Duration) -> Vec<FetcherInfo> {
    let timeout = timeout.min(INFO_TIMEOUT);
    let mut infos =
        futures::future::join_all(found.clients.iter().map(|(scheme, path)| async move {
            let (description, attributes) = match info(path, timeout).await {
                Ok(reply) => reply,
                Err(error) => (
                    "external source client (info failed)".to_owned(),
                    BTreeMap::from([("error".to_owned(), error)]),
                ),
            };
            FetcherInfo {
                scheme: scheme.clone(),
                origin: FetcherOrigin::External { path: path.clone() },
                description,
                attributes,
            }
        }))
        .await;
    infos.extend(found.shadowed.iter().map(|(scheme, path)| FetcherInfo {
        scheme: scheme.clone(),
        origin: FetcherOrigin::External { path: path.clone() },
        description: "shadowed by the in-tree client; never run".to_owned(),
        attributes: BTreeMap::from([("shadowed".to_owned(), "in-tree".to_owned())]),
    }));
    infos
}

/// The reply to `info`.
#[derive(serde::Deserialize)]
struct InfoReply {
    protocol: u32,
    description: Option<String>,
    version: Option<String>,
    /// Strings by protocol; other JSON values are shown as JSON rather than refused.
    #[serde(default)]
    attributes: BTreeMap<String, serde_json::Value>,
}

/// Runs `info`: the description and attributes, or why they could not be had.
async fn info(
    path: &Path,
    timeout: Duration,
) -> Result<(String, BTreeMap<String, String>), String> {
    let done = run(path, &["info"], timeout, INFO_MAX_BYTES, &NoProgress)
        .await
        .map_err(|failure| match failure {
            Failure::Timeout => format!(
                "info timed out after {}",
                humantime::format_duration(timeout)
            ),
            Failure::TooLarge(_) => format!("info wrote more than {INFO_MAX_BYTES} bytes"),
            Failure::Io(e) => format!("info could not run: {e}"),
        })?;
    if !done.status.success() {
        let mut message = format!("info failed: {}", done.status);
        if !done.stderr.is_empty() {
            message = format!("{message}: {}", done.stderr);
        }
        return Err(message);
    }
    let reply: InfoReply = serde_json::from_slice(&done.stdout)
        .map_err(|e| format!("info printed invalid JSON: {e}"))?;
    if reply.protocol != PROTOCOL_VERSION {
        return Err(format!(
            "info speaks protocol {}, plugsync speaks {PROTOCOL_VERSION}",
            reply.protocol
        ));
    }
    let mut attributes: BTreeMap<String, String> = reply
        .attributes
        .into_iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => (k, s),
            other => (k, other.to_string()),
        })
        .collect();
    if let Some(version) = reply.version {
        attributes.insert("version".to_owned(), version);
    }
    let description = reply
        .description
        .unwrap_or_else(|| "external source client".to_owned());
    Ok((description, attributes))
}

/// Runs `fetch <url>` and returns stdout.
pub(crate) async fn fetch(
    path: &Path,
    url: &Url,
    settings: &FetchSettings,
    progress: &dyn Progress,
) -> Result<Vec<u8>, FetchError> {
    let shown = redact_url(url);
    let done = run(
        path,
        &["fetch", url.as_str()],
        settings.timeout,
        settings.max_bytes,
        progress,
    )
    .await
    .map_err(|failure| match failure {
        Failure::Timeout => FetchError::Timeout {
            what: format!("{} fetch {shown}", path.display()),
            after: settings.timeout,
        },
        Failure::TooLarge(seen) => FetchError::TooLarge {
            url: shown.clone(),
            limit: settings.max_bytes,
            seen,
            declared: false,
        },
        Failure::Io(source) => FetchError::Io {
            what: format!("running {} fetch {shown}", path.display()),
            source,
        },
    })?;
    let reason = if !done.status.success() {
        done.status.to_string()
    } else if done.stdout.is_empty() {
        "exited 0 but wrote nothing on stdout".to_owned()
    } else {
        if !done.stderr.is_empty() {
            tracing::debug!(program = %path.display(), stderr = %done.stderr, "source client stderr");
        }
        return Ok(done.stdout);
    };
    Err(FetchError::External {
        program: path.to_path_buf(),
        url: shown,
        reason,
        stderr: done.stderr,
    })
}

/// A finished run.
struct Done {
    status: ExitStatus,
    stdout: Vec<u8>,
    /// The tail of stderr, redacted.
    stderr: String,
}

/// Why a run did not finish.
enum Failure {
    Timeout,
    TooLarge(u64),
    Io(std::io::Error),
}

/// Runs `program args…` with the protocol environment, reading stdout (capped) and
/// stderr (tail) concurrently so neither pipe can fill up and block the child. The child
/// is killed and reaped on every early exit.
async fn run(
    program: &Path,
    args: &[&str],
    timeout: Duration,
    max_stdout: u64,
    progress: &dyn Progress,
) -> Result<Done, Failure> {
    let mut child = Command::new(program)
        .args(args)
        .env(PROTOCOL_ENV, PROTOCOL_VERSION.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(Failure::Io)?;
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(Failure::Io(std::io::Error::other("child pipes missing")));
    };
    let work = async {
        tokio::try_join!(
            read_capped(stdout, max_stdout, progress),
            async { read_tail(stderr).await.map_err(Failure::Io) },
            async { child.wait().await.map_err(Failure::Io) },
        )
    };
    // Written so `work` (which borrows `child`) is gone before the kill below.
    let outcome = tokio::time::timeout(timeout, work)
        .await
        .unwrap_or(Err(Failure::Timeout));
    match outcome {
        Ok((stdout, stderr, status)) => Ok(Done {
            status,
            stdout,
            stderr,
        }),
        Err(failure) => {
            // Already exited or already killed: nothing left to do either way.
            let _ = child.kill().await;
            Err(failure)
        }
    }
}

/// All of `reader`, failing as soon as it exceeds `max` bytes.
async fn read_capped(
    mut reader: impl AsyncRead + Unpin,
    max: u64,
    progress: &dyn Progress,
) -> Result<Vec<u8>, Failure> {
    progress.start(None);
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = reader.read(&mut buf).await.map_err(Failure::Io)?;
        if n == 0 {
            return Ok(out);
        }
        let seen = (out.len() + n) as u64;
        if seen > max {
            return Err(Failure::TooLarge(seen));
        }
        out.extend_from_slice(&buf[..n]);
        progress.advance(n as u64);
    }
}

/// The last lines of `reader`, at most [`STDERR_TAIL`] bytes, with URLs redacted.
async fn read_tail(mut reader: impl AsyncRead + Unpin) -> std::io::Result<String> {
    let keep = 4 * STDERR_TAIL;
    let mut tail = Vec::new();
    let mut truncated = false;
    let mut buf = vec![0u8; 8 * 1024];
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        tail.extend_from_slice(&buf[..n]);
        if tail.len() > 2 * keep {
            tail.drain(..tail.len() - keep);
            truncated = true;
        }
    }
    let text = String::from_utf8_lossy(&tail);
    // A cut first line may hold half a URL, which redaction would not recognise.
    let text = match text.split_once('\n') {
        Some((_, rest)) if truncated => rest,
        _ => &text,
    };
    Ok(last_lines(&redact_text(text.trim_end()), STDERR_TAIL))
}

/// The longest suffix of whole lines within `max` bytes (or the end of the last line).
fn last_lines(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    let suffix = &text[start..];
    let suffix = match suffix.split_once('\n') {
        Some((_, whole_lines)) if !whole_lines.is_empty() => whole_lines,
        _ => suffix,
    };
    format!("…\n{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_must_be_lowercase_url_schemes() {
        assert!(is_scheme("s3"));
        assert!(is_scheme("git+ssh"));
        assert!(!is_scheme(""));
        assert!(!is_scheme("S3"));
        assert!(!is_scheme("3s"));
        assert!(!is_scheme("a_b"));
    }

    #[test]
    fn last_lines_keeps_whole_lines() {
        let text = "first line\nsecond\nthird";
        assert_eq!(last_lines(text, 100), text);
        assert_eq!(last_lines(text, 14), "…\nsecond\nthird");
        assert_eq!(last_lines(text, 6), "…\nthird");
        assert_eq!(last_lines("abcdefgh", 3), "…\nfgh");
    }
}
