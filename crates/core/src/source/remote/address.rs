//! Remote URLs as people write them (https, ssh, scp-like `git@host:path`, `git://`, local
//! paths), reduced to what the credential and host-key checks need.

use super::*;

/// How the URL is reached, which decides the credentials that fit it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Transport {
    Http,
    Ssh,
    /// `git://`, `file://` and local paths: no authentication.
    Plain,
}

/// The parts of the URL the checks need.
#[derive(Debug, Clone)]
pub(super) struct RemoteUrl {
    pub(super) transport: Transport,
    /// For ssh: the host and port, for the known_hosts lookup.
    pub(super) host: Option<String>,
    pub(super) port: u16,
    /// The user named in an ssh URL.
    pub(super) user: Option<String>,
    pub(super) redacted: String,
}

impl RemoteUrl {
    pub(super) fn parse(raw: &str) -> Result<RemoteUrl, RemoteError> {
        let refuse = |redacted: String, reason: &str| RemoteError::Url {
            url: redacted,
            reason: reason.into(),
        };
        if raw.contains("://") {
            let url = url::Url::parse(raw)
                .map_err(|e| refuse(redact_text(raw), &format!("not a valid URL: {e}")))?;
            let redacted = redact_url(&url);
            let has_userinfo = !url.username().is_empty() || url.password().is_some();
            let transport = match url.scheme() {
                "http" | "https" => Transport::Http,
                "ssh" | "git+ssh" | "ssh+git" => Transport::Ssh,
                "git" | "file" => Transport::Plain,
                other => {
                    return Err(refuse(redacted, &format!("unsupported scheme {other:?}")));
                }
            };
            if url.password().is_some() || (transport == Transport::Http && has_userinfo) {
                return Err(refuse(
                    redacted,
                    "credentials in the URL are refused; put them in the Secret",
                ));
            }
            Ok(RemoteUrl {
                transport,
                host: url.host_str().map(|h| {
                    h.trim_start_matches('[')
                        .trim_end_matches(']')
                        .to_ascii_lowercase()
                }),
                port: url.port().unwrap_or(22),
                user: (!url.username().is_empty()).then(|| url.username().to_string()),
                redacted,
            })
        } else if let Some((authority, path)) = scp_like(raw) {
            // `[user@]host:path`, git's scp-like ssh syntax.
            let (user, host) = match authority.rsplit_once('@') {
                Some((user, host)) => (Some(user.to_string()), host),
                None => (None, authority),
            };
            if user.as_deref().is_some_and(|u| u.contains(':')) {
                return Err(refuse(
                    format!("***@{host}:{path}"),
                    "credentials in the URL are refused; put them in the Secret",
                ));
            }
            let redacted = match &user {
                Some(_) => format!("***@{host}:{path}"),
                None => raw.to_string(),
            };
            Ok(RemoteUrl {
                transport: Transport::Ssh,
                host: Some(host.to_ascii_lowercase()),
                port: 22,
                user,
                redacted,
            })
        } else {
            Ok(RemoteUrl {
                transport: Transport::Plain,
                host: None,
                port: 22,
                user: None,
                redacted: raw.to_string(),
            })
        }
    }

    /// The host as known_hosts names it: `host`, or `[host]:port` off port 22.
    pub(super) fn known_hosts_name(&self) -> String {
        let host = self.host.as_deref().unwrap_or_default();
        if self.port == 22 {
            host.to_string()
        } else {
            format!("[{host}]:{}", self.port)
        }
    }
}

/// `(authority, path)` of an scp-like URL: a `:` before any `/`, and not a Windows drive.
pub(super) fn scp_like(raw: &str) -> Option<(&str, &str)> {
    let colon = raw.find(':')?;
    let slash = raw.find('/').unwrap_or(usize::MAX);
    (colon < slash && colon > 1).then(|| (&raw[..colon], &raw[colon + 1..]))
}
