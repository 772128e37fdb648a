//! Errors of the Kubernetes layer, in the core's error type.

use plugsync_core::Error;

/// Wraps a kube client error with the operation it failed: an API status keeps its code and
/// message (conflicts name the fields and managers); anything else says what failed.
pub(crate) fn from_kube(what: &str, error: kube::Error) -> Error {
    match error {
        kube::Error::Api(status) => Error::ClusterApi {
            what: what.to_string(),
            code: status.code,
            message: status.message,
        },
        other => Error::Cluster(format!("{what}: {other}")),
    }
}
