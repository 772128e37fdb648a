//! Retrying Kubernetes API calls that failed for reasons that pass: 429, 5xx, timeouts and
//! connection errors. Conflicts (409), validation errors and 404s are answers, not failures to
//! retry.

use std::future::Future;
use std::time::Duration;

use tracing::warn;

use crate::error::{is_transient_kube, Error};

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
                Err(e) if attempt < self.attempts && is_transient_kube(&e) => {
                    warn!(operation = what, attempt, error = %e, "retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(self.cap);
                    attempt += 1;
                }
                Err(e) => return Err(Error::api(what, e)),
            }
        }
    }
}
