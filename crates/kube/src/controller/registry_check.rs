//! Image reuse: asks the registry (OCI distribution API, through `oci-client`) whether a known digest is
//! still there, with credentials from the PluginSet's dockerconfigjson Secret only.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client, ResourceExt};
use tracing::warn;

use super::reconcile::RegistryCheck;
use crate::registry::{parse_image, DockerConfig, RegistryClient};
use plugsync_core::crd::PluginSetResource;

/// Checks digests against the registry of each PluginSet.
pub struct SecretRegistryCheck {
    client: Client,
    timeout: Duration,
}

impl SecretRegistryCheck {
    /// Reads Secrets with `client`; each registry request is bounded by `timeout`.
    pub fn new(client: Client, timeout: Duration) -> SecretRegistryCheck {
        SecretRegistryCheck { client, timeout }
    }
}

#[async_trait::async_trait]
impl RegistryCheck for SecretRegistryCheck {
    async fn has_digest(&self, set: &PluginSetResource, image: &str, digest: &str) -> Option<bool> {
        let image = match parse_image(image) {
            Ok(i) => i,
            Err(e) => {
                warn!(%image, error = %e, "cannot check the registry");
                return None;
            }
        };
        let secrets: Api<Secret> =
            Api::namespaced(self.client.clone(), &set.namespace().unwrap_or_default());
        let credentials = match secrets.get_opt(&set.spec.registry.secret_name).await {
            Ok(Some(secret)) => DockerConfig::from_secret(&secret)
                .map_err(|e| warn!(secret = %set.spec.registry.secret_name, error = %e, "unusable registry Secret"))
                .ok()
                .and_then(|c| c.credentials_for(image.registry())),
            Ok(None) => None,
            Err(e) => {
                warn!(error = %e, "cannot read the registry Secret");
                None
            }
        };
        let client = RegistryClient::new(set.spec.registry.insecure, self.timeout);
        match client
            .has_manifest(&image, digest, credentials.as_ref())
            .await
        {
            Ok(has) => Some(has),
            Err(e) => {
                warn!(error = %e, "registry check failed; trusting the known digest");
                None
            }
        }
    }
}
