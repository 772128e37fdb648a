//! The in-tree `http` and `https` client.
//!
//! One `reqwest::Client` per registry (connection pooling, one TLS setup), with a connect
//! timeout and a per-attempt timeout that covers the whole exchange, body included, so a
//! server that stalls mid-body ends in [`FetchError::Timeout`] instead of hanging.
//! The body is streamed into memory and capped by `max_bytes`, checked against
//! `Content-Length` before reading and against the running count while reading (the
//! header may be absent or lie). Connect failures, timeouts, 429 and 5xx are retried
//! with exponential [`Backoff`]; other statuses fail at once.

use std::sync::OnceLock;
use std::time::Duration;

use reqwest::header::RETRY_AFTER;
use url::Url;

use super::{FetchError, FetchSettings, Progress};
use crate::redact::{redact_text, redact_url};

/// Sent with every request, so server operators can tell plugsync traffic apart.
pub const USER_AGENT: &str = concat!("plugsync/", env!("CARGO_PKG_VERSION"));

/// Delay between HTTP retries: `base`, `2 × base`, `4 × base`, … capped at `max`.
/// A 429's `Retry-After` (in seconds) is honoured when longer, also capped at `max`, so a
/// server cannot park plugsync for an hour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay before the first retry.
    pub base: Duration,
    /// Upper bound on any single delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(200),
            max: Duration::from_secs(10),
        }
    }
}

impl Backoff {
    /// The delay before retry number `attempt` (0 for the first retry).
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let exponential = self
            .base
            .saturating_mul(2u32.saturating_pow(attempt))
            .min(self.max);
        match retry_after {
            Some(asked) => exponential.max(asked.min(self.max)),
            None => exponential,
        }
    }
}

/// The shared HTTP client and the limits it enforces.
pub(crate) struct HttpClient {
    /// Built on first use: setting up TLS (reading the system's root certificates) takes
    /// milliseconds that a run with every package in the cache never needs. `Err` only if
    /// the TLS backend could not be set up.
    client: OnceLock<Result<reqwest::Client, String>>,
    timeout: Duration,
    connect_timeout: Duration,
    retries: u32,
    max_bytes: u64,
    backoff: Backoff,
}

impl HttpClient {
    pub(crate) fn new(settings: &FetchSettings) -> Self {
        HttpClient {
            client: OnceLock::new(),
            timeout: settings.timeout,
            connect_timeout: settings.connect_timeout,
            retries: settings.retries,
            max_bytes: settings.max_bytes,
            backoff: Backoff::default(),
        }
    }

    pub(crate) fn set_backoff(&mut self, backoff: Backoff) {
        self.backoff = backoff;
    }

    /// Downloads `url`, retrying retryable failures up to `retries` extra times.
    pub(crate) async fn fetch(
        &self,
        url: &Url,
        progress: &dyn Progress,
    ) -> Result<Vec<u8>, FetchError> {
        let client = self.client.get_or_init(|| {
            reqwest::Client::builder()
                .user_agent(USER_AGENT)
                .connect_timeout(self.connect_timeout)
                .timeout(self.timeout)
                .build()
                .map_err(|e| error_chain(&e))
        });
        let client = client.as_ref().map_err(|message| FetchError::Io {
            what: "setting up the HTTP client".to_owned(),
            source: std::io::Error::other(message.clone()),
        })?;
        let mut attempt = 0;
        loop {
            match self.attempt(client, url, progress).await {
                Err(e) if e.is_retryable() && attempt < self.retries => {
                    let retry_after = match &e {
                        FetchError::Status { retry_after, .. } => *retry_after,
                        _ => None,
                    };
                    let delay = self.backoff.delay(attempt, retry_after);
                    attempt += 1;
                    tracing::warn!(error = %e, ?delay, attempt, "download failed, retrying");
                    tokio::time::sleep(delay).await;
                }
                result => return result,
            }
        }
    }

    async fn attempt(
        &self,
        client: &reqwest::Client,
        url: &Url,
        progress: &dyn Progress,
    ) -> Result<Vec<u8>, FetchError> {
        let shown = redact_url(url);
        let mut response = client
            .get(url.clone())
            .send()
            .await
            .map_err(|e| self.classify(&shown, e))?;
        let status = response.status();
        if !status.is_success() {
            let retry_after = response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse().ok())
                .map(Duration::from_secs);
            return Err(FetchError::Status {
                url: shown,
                status: status.as_u16(),
                retry_after,
            });
        }
        let total = response.content_length();
        if let Some(declared) = total.filter(|&n| n > self.max_bytes) {
            return Err(self.too_large(shown, declared, true));
        }
        progress.start(total);
        let mut body = Vec::with_capacity(total.and_then(|n| usize::try_from(n).ok()).unwrap_or(0));
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| self.classify(&shown, e))?
        {
            let seen = (body.len() + chunk.len()) as u64;
            if seen > self.max_bytes {
                return Err(self.too_large(shown, seen, false));
            }
            body.extend_from_slice(&chunk);
            progress.advance(chunk.len() as u64);
        }
        Ok(body)
    }

    fn too_large(&self, url: String, seen: u64, declared: bool) -> FetchError {
        FetchError::TooLarge {
            url,
            limit: self.max_bytes,
            seen,
            declared,
        }
    }

    /// Maps a reqwest error to a variant; the URL is left out of reqwest's own text
    /// (it would be unredacted) and given, redacted, by the variant.
    fn classify(&self, shown: &str, e: reqwest::Error) -> FetchError {
        if e.is_timeout() {
            let after = if e.is_connect() {
                self.connect_timeout
            } else {
                self.timeout
            };
            return FetchError::Timeout {
                what: format!("GET {shown}"),
                after,
            };
        }
        let is_builder = e.is_builder();
        let message = error_chain(&e.without_url());
        if is_builder {
            return FetchError::InvalidUrl {
                url: shown.to_owned(),
                reason: message,
            };
        }
        FetchError::Network {
            url: shown.to_owned(),
            message,
        }
    }
}

/// An error and its causes, `outer: inner: innermost`, redacted.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        source = cause.source();
    }
    redact_text(&parts.join(": "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let b = Backoff {
            base: Duration::from_millis(200),
            max: Duration::from_secs(1),
        };
        let ms = |n| Duration::from_millis(n);
        assert_eq!(b.delay(0, None), ms(200));
        assert_eq!(b.delay(1, None), ms(400));
        assert_eq!(b.delay(2, None), ms(800));
        assert_eq!(b.delay(3, None), ms(1000));
        assert_eq!(b.delay(40, None), ms(1000));
    }

    #[test]
    fn retry_after_is_honoured_but_capped() {
        let b = Backoff {
            base: Duration::from_millis(10),
            max: Duration::from_secs(5),
        };
        assert_eq!(
            b.delay(0, Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
        assert_eq!(
            b.delay(0, Some(Duration::from_secs(3600))),
            Duration::from_secs(5)
        );
        assert_eq!(b.delay(0, Some(Duration::ZERO)), Duration::from_millis(10));
    }

    #[test]
    fn user_agent_names_crate_and_version() {
        assert_eq!(
            USER_AGENT,
            format!("plugsync/{}", env!("CARGO_PKG_VERSION"))
        );
    }
}
