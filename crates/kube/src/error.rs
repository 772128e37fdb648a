//! The Kubernetes layer's errors: what failed, with the error that caused it kept as its
//! source, and [`Error::is_transient`] deciding retry versus give up.
//!
//! - [`Error`]: the applier's and the git loop's (an API call, an object the server refused,
//!   a CRD that is not served, git, or the core's own error passed through);
//! - [`GitError`]: the git loop's network operations (every one retried at the next poll);
//! - per-module enums where they carry their module's meaning:
//!   [`crate::controller::reconcile::ReconcileError`] (the controller runtime retries it),
//!   [`crate::leader::LeaderError`], [`crate::registry::RegistryError`] (redacted by
//!   construction).
//!
//! At the binary's edge an [`Error`] becomes a [`plugsync_core::Error`] (the one type the CLI
//! reports): an API status keeps its code and message there.

use std::time::Duration;

use plugsync_core::plan::PlanError;
use plugsync_core::source::remote::RemoteError;

/// What the Kubernetes layer could not do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed (after the applier's bounded retries, where it retries).
    #[error("{what}: {}", describe(source))]
    Api {
        /// The operation (`apply Deployment dify/x`, `list Plugin`).
        what: String,
        /// The client's error: an API status (code, reason, message) or a transport failure.
        #[source]
        source: kube::Error,
    },
    /// The API server refused an object the apply had to write first (the PluginSet, a
    /// CRD): a conflict or a validation error, reported per object otherwise.
    #[error("{object}: {reason}")]
    Refused {
        /// The object (`PluginSet dify/plugins`).
        object: String,
        /// Why, as the server said it.
        reason: String,
    },
    /// An object to apply is not a Kubernetes object (no kind, name, …): a bug upstream.
    #[error("not a Kubernetes object: {0}")]
    Malformed(#[source] PlanError),
    /// A CRD applied did not become Established.
    #[error("CustomResourceDefinition {name} did not become Established: {reason}")]
    CrdNotEstablished {
        /// The CRD's name.
        name: String,
        /// The watch's error, or the time waited.
        reason: String,
    },
    /// A git network operation failed.
    #[error(transparent)]
    Git(#[from] GitError),
    /// The core failed (loading, resolving, rendering), or the request was not usable.
    #[error(transparent)]
    Core(#[from] plugsync_core::Error),
}

/// An API status as `message (code)`, anything else as the client says it.
fn describe(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => format!("{} ({})", status.message, status.code),
        other => other.to_string(),
    }
}

/// Whether a kube client error may pass if the same call is made again: 429, 5xx but 501,
/// and failures to get an answer at all (connection refused or reset, a timeout).
pub fn is_transient_kube(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(status) => matches!(status.code, 429 | 500 | 502 | 503 | 504),
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        _ => false,
    }
}

impl Error {
    /// `error` from the API call `what`.
    pub(crate) fn api(what: impl Into<String>, error: kube::Error) -> Error {
        Error::Api {
            what: what.into(),
            source: error,
        }
    }

    /// Whether the same request may succeed if simply made again (the server or the network
    /// failed, not the request): the applier retries these, and the git loop tries the pass
    /// again at its next poll rather than calling the commit bad.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Api { source, .. } => is_transient_kube(source),
            Error::Git(_) => true,
            Error::Core(e) => e.is_transient(),
            Error::Refused { .. } | Error::Malformed(_) | Error::CrdNotEstablished { .. } => false,
        }
    }

    /// The HTTP status code the API server answered with, if it answered with an error.
    pub fn code(&self) -> Option<u16> {
        match self {
            Error::Api {
                source: kube::Error::Api(status),
                ..
            } => Some(status.code),
            Error::Core(plugsync_core::Error::ClusterApi { code, .. }) => Some(*code),
            _ => None,
        }
    }
}

impl From<Error> for plugsync_core::Error {
    /// For the binary, which reports one error type: an API status keeps its code and
    /// message (conflicts name the fields and managers); anything else says what failed.
    fn from(error: Error) -> Self {
        match error {
            Error::Api {
                what,
                source: kube::Error::Api(status),
            } => plugsync_core::Error::ClusterApi {
                what,
                code: status.code,
                message: status.message,
            },
            Error::Core(e) => e,
            other => plugsync_core::Error::Cluster(other.to_string()),
        }
    }
}

/// Why a git network operation of the loop (listing the branch, fetching, pushing) failed.
/// Each names the operation and the remote (redacted); the loop retries at its next poll.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    /// The remote answered with an error, or the repository could not be used.
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// No answer within `--git-timeout`; the operation is abandoned, not waited for.
    #[error("{what} {url}: no answer within {} (--git-timeout)", humantime::format_duration(*timeout))]
    Timeout {
        /// `fetching`, `pushing to`.
        what: String,
        /// The remote, redacted.
        url: String,
        /// The bound that passed.
        timeout: Duration,
    },
    /// An earlier operation whose server stopped answering still holds the repository.
    #[error(
        "{what} {url}: the previous git operation has not returned yet (its server accepted \
         the connection and stopped answering); retrying at the next poll"
    )]
    Busy {
        /// `fetching`, `pushing to`.
        what: String,
        /// The remote, redacted.
        url: String,
    },
    /// Shutdown began: the operation was abandoned.
    #[error("{what} {url}: abandoned at shutdown")]
    Abandoned {
        /// `fetching`, `pushing to`.
        what: String,
        /// The remote, redacted.
        url: String,
    },
    /// The thread doing the work could not start, or ended without an answer (it panicked).
    #[error("{what} {url}: the git thread {reason}")]
    Thread {
        /// `fetching`, `pushing to`.
        what: String,
        /// The remote, redacted.
        url: String,
        /// What happened to it.
        reason: String,
    },
    /// The loop follows a folder, not a branch: there is nothing to fetch or push.
    #[error("no git repository: the loop follows a folder")]
    NoRepository,
    /// The credentials Secret could not be read.
    #[error("reading Secret {secret}: {}", describe(source))]
    ReadSecret {
        /// `namespace/name`.
        secret: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// The credentials Secret is not usable.
    #[error("Secret {secret}: {source}")]
    Credentials {
        /// `namespace/name`.
        secret: String,
        /// What is wrong with it (never its values).
        #[source]
        source: RemoteError,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16) -> kube::Error {
        kube::Error::Api(Box::new(kube::core::Status {
            code,
            message: format!("status {code}"),
            ..Default::default()
        }))
    }

    #[test]
    fn server_and_network_failures_are_transient_answers_are_not() {
        for code in [429, 500, 502, 503, 504] {
            assert!(Error::api("get x", status(code)).is_transient(), "{code}");
        }
        for code in [400, 403, 404, 409, 422, 501] {
            assert!(!Error::api("get x", status(code)).is_transient(), "{code}");
        }
        let refused = Error::Refused {
            object: "PluginSet ns/s".into(),
            reason: "conflict".into(),
        };
        assert!(!refused.is_transient());
        assert!(Error::Core(plugsync_core::Error::Cluster("down".into())).is_transient());
        assert!(!Error::Core(plugsync_core::Error::Usage("bad".into())).is_transient());
    }

    #[test]
    fn an_api_status_keeps_its_code_message_and_source_and_becomes_the_cores_cluster_api() {
        let error = Error::api("apply Plugin ns/x", status(409));
        assert_eq!(error.code(), Some(409));
        assert_eq!(error.to_string(), "apply Plugin ns/x: status 409 (409)");
        assert!(
            std::error::Error::source(&error).is_some(),
            "the kube error is kept"
        );
        match plugsync_core::Error::from(error) {
            plugsync_core::Error::ClusterApi {
                what,
                code,
                message,
            } => {
                assert_eq!((what.as_str(), code), ("apply Plugin ns/x", 409));
                assert_eq!(message, "status 409");
            }
            other => panic!("{other:?}"),
        }
    }
}
