//! Retrying Kubernetes API calls that failed for reasons that pass: 429, 5xx, timeouts and
//! connection errors. Conflicts (409), validation errors and 404s are answers, not failures to
//! retry.

use std::future::Future;
use std::time::Duration;

use tracing::warn;

use plugsync_core::error::Error;

/// How often and how patiently to retry.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts in total (1 = no retry).
    pub attempts: u32,
    /// Delay before the first retry; doubles each time.
    pub base: Duration,
    /// Longest delay between attempts.
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 6,
            base: Duration::from_millis(200),
            cap: Duration::from_secs(5),
        }
    }
}

/// Whether a kube error is worth another attempt.
pub fn is_retryable(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(status) => matches!(status.code, 429 | 500 | 502 | 503 | 504),
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        _ => false,
    }
}

impl RetryPolicy {
    /// Runs `op` until it succeeds, fails for good, or attempts run out. `what` names the
    /// operation in logs and errors.
    pub async fn run<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, kube::Error>>,
    {
        let mut delay = self.base;
        let mut attempt = 1;
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(e) if attempt < self.attempts && is_retryable(&e) => {
                    warn!(operation = what, attempt, error = %e, "retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(self.cap);
                    attempt += 1;
                }
                Err(e) => return Err(crate::error::from_kube(what, e)),
            }
        }
    }
}
