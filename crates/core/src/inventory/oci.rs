//! The registry side of the inventory, through oras-project's `oci-client`: HEAD a manifest,
//! pull a manifest or blob (checked against its digest here, whatever the registry says),
//! push a blob or manifest. Every call is bounded by the timeout; `oci-client` runs with
//! logging off, as in `plugsync_kube::registry`, since its debug lines quote registry answers
//! (which may echo credentials).

use std::time::Duration;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::{
    OciDescriptor, OciImageManifest, IMAGE_MANIFEST_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE,
};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use tracing::instrument::WithSubscriber as _;
use tracing::subscriber::NoSubscriber;

use super::{InventoryError, Login};

/// Where an inventory or package lives: `host[:port]` and repository path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Repo {
    pub registry: String,
    pub repository: String,
}

impl Repo {
    pub(crate) fn tag(&self, tag: &str) -> Reference {
        Reference::with_tag(
            self.registry.clone(),
            self.repository.clone(),
            tag.to_owned(),
        )
    }
    pub(crate) fn digest(&self, digest: &str) -> Reference {
        Reference::with_digest(
            self.registry.clone(),
            self.repository.clone(),
            digest.to_owned(),
        )
    }
    /// `host/path`, as cosign's payload names it.
    pub(crate) fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }
}

/// One registry client with its credentials and limits.
pub(crate) struct Registry {
    client: Client,
    auth: RegistryAuth,
    timeout: Duration,
}

/// The manifest media types read back (OCI, and Docker's for cosign signatures written by
/// older tools).
const MANIFEST_TYPES: &[&str] = &[OCI_IMAGE_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE];

impl Registry {
    /// A client for `registry`; `insecure` allows plain HTTP to it (loopback test registries,
    /// air-gapped mirrors without TLS).
    pub(crate) fn new(
        registry: &str,
        insecure: bool,
        login: Option<&Login>,
        timeout: Duration,
    ) -> Registry {
        let config = ClientConfig {
            protocol: if insecure {
                ClientProtocol::HttpsExcept(vec![registry.to_owned()])
            } else {
                ClientProtocol::Https
            },
            read_timeout: Some(timeout),
            connect_timeout: Some(timeout.min(Duration::from_secs(10))),
            // One request per blob: the packages are small, and a counted publish is easy to
            // read (POST, PUT per blob).
            use_monolithic_push: true,
            ..ClientConfig::default()
        };
        let auth = match login {
            Some(l) => RegistryAuth::Basic(l.username.clone(), l.password.clone()),
            None => RegistryAuth::Anonymous,
        };
        Registry {
            client: Client::new(config),
            auth,
            timeout,
        }
    }

    async fn bounded<T>(
        &self,
        what: &Reference,
        future: impl std::future::Future<Output = Result<T, OciDistributionError>>,
    ) -> Result<T, InventoryError> {
        match tokio::time::timeout(
            self.timeout,
            future.with_subscriber(NoSubscriber::default()),
        )
        .await
        {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(registry_error(what, &e)),
            Err(_) => Err(InventoryError::Registry {
                reference: what.whole(),
                reason: format!("no answer within {:?}", self.timeout),
            }),
        }
    }

    /// Hands the credentials to the client (no request): it logs in (token or basic) for
    /// each repository and operation on first use, and keeps the token.
    async fn auth(&self, reference: &Reference) {
        self.client
            .store_auth_if_needed(reference.resolve_registry(), &self.auth)
            .await;
    }

    /// The digest of `reference`'s manifest, `None` when the registry has none (404).
    pub(crate) async fn head(
        &self,
        reference: &Reference,
    ) -> Result<Option<String>, InventoryError> {
        match tokio::time::timeout(
            self.timeout,
            self.client
                .fetch_manifest_digest(reference, &self.auth)
                .with_subscriber(NoSubscriber::default()),
        )
        .await
        {
            Ok(Ok(d)) => Ok(Some(d)),
            Ok(Err(e)) if is_not_found(&e) => Ok(None),
            Ok(Err(e)) => Err(registry_error(reference, &e)),
            Err(_) => Err(InventoryError::Registry {
                reference: reference.whole(),
                reason: format!("no answer within {:?}", self.timeout),
            }),
        }
    }

    /// The manifest bytes and their sha256 digest (computed here); `None` on 404. When
    /// `reference` names a digest, the bytes must hash to it.
    pub(crate) async fn manifest(
        &self,
        reference: &Reference,
    ) -> Result<Option<(Vec<u8>, String)>, InventoryError> {
        let pulled = tokio::time::timeout(
            self.timeout,
            self.client
                .pull_manifest_raw(reference, &self.auth, MANIFEST_TYPES)
                .with_subscriber(NoSubscriber::default()),
        )
        .await;
        let (bytes, _) = match pulled {
            Ok(Ok(v)) => v,
            Ok(Err(e)) if is_not_found(&e) => return Ok(None),
            Ok(Err(e)) => return Err(registry_error(reference, &e)),
            Err(_) => {
                return Err(InventoryError::Registry {
                    reference: reference.whole(),
                    reason: format!("no answer within {:?}", self.timeout),
                })
            }
        };
        let digest = format!("sha256:{}", crate::package::sha256_hex(&bytes));
        if let Some(expected) = reference.digest() {
            if expected != digest {
                return Err(InventoryError::Tampered {
                    what: format!("manifest {}", reference.whole()),
                    expected: expected.to_owned(),
                    actual: digest,
                });
            }
        }
        Ok(Some((bytes, digest)))
    }

    /// The blob `digest` of `repo`, checked against the digest.
    pub(crate) async fn blob(
        &self,
        repo: &Repo,
        digest: &str,
        what: &str,
    ) -> Result<Vec<u8>, InventoryError> {
        let reference = repo.digest(digest);
        let descriptor = OciDescriptor {
            digest: digest.to_owned(),
            ..OciDescriptor::default()
        };
        let mut out = Vec::new();
        let pulled = tokio::time::timeout(
            self.timeout,
            self.client
                .pull_blob(&reference, &descriptor, &mut out)
                .with_subscriber(NoSubscriber::default()),
        )
        .await;
        match pulled {
            Ok(Ok(())) => {}
            Ok(Err(e)) if is_not_found(&e) => {
                return Err(InventoryError::MissingBlob {
                    what: what.to_owned(),
                    repository: repo.name(),
                    digest: digest.to_owned(),
                })
            }
            // oci-client checks the digest itself while streaming.
            Ok(Err(OciDistributionError::DigestError(_))) => {
                return Err(InventoryError::Tampered {
                    what: format!("{what} ({})", repo.name()),
                    expected: digest.to_owned(),
                    actual: "other bytes".to_owned(),
                })
            }
            Ok(Err(e)) => return Err(registry_error(&reference, &e)),
            Err(_) => {
                return Err(InventoryError::Registry {
                    reference: reference.whole(),
                    reason: format!("no answer within {:?}", self.timeout),
                })
            }
        }
        let actual = format!("sha256:{}", crate::package::sha256_hex(&out));
        if actual != digest {
            return Err(InventoryError::Tampered {
                what: format!("{what} ({})", repo.name()),
                expected: digest.to_owned(),
                actual,
            });
        }
        Ok(out)
    }

    /// Pushes `bytes` as a blob of `repo` (the caller knows it is not there yet).
    pub(crate) async fn push_blob(
        &self,
        repo: &Repo,
        bytes: &[u8],
    ) -> Result<String, InventoryError> {
        let digest = format!("sha256:{}", crate::package::sha256_hex(bytes));
        let reference = repo.digest(&digest);
        self.auth(&reference).await;
        self.bounded(
            &reference,
            self.client.push_blob(&reference, bytes, &digest),
        )
        .await?;
        Ok(digest)
    }

    /// Pushes manifest `bytes` (OCI image manifest) under `reference` (a tag or its digest).
    pub(crate) async fn push_manifest(
        &self,
        reference: &Reference,
        bytes: Vec<u8>,
    ) -> Result<(), InventoryError> {
        self.auth(reference).await;
        let content_type = OCI_IMAGE_MEDIA_TYPE.parse().expect("a valid header value");
        self.bounded(
            reference,
            self.client
                .push_manifest_raw(reference, bytes, content_type),
        )
        .await
        .map(|_| ())
    }
}

fn is_not_found(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::ImageManifestNotFoundError(_) => true,
        OciDistributionError::RegistryError { envelope, .. } => envelope.errors.iter().any(|e| {
            matches!(
                e.code,
                OciErrorCode::ManifestUnknown
                    | OciErrorCode::BlobUnknown
                    | OciErrorCode::NameUnknown
            )
        }),
        OciDistributionError::ServerError { code, .. } => *code == 404,
        // A blob pull turns the status into a transport error.
        OciDistributionError::RequestError(r) => r.status() == Some(reqwest::StatusCode::NOT_FOUND),
        _ => false,
    }
}

/// A message naming the reference and the kind of failure, never a registry's body (token
/// servers echo requests, credentials included).
fn registry_error(reference: &Reference, e: &OciDistributionError) -> InventoryError {
    let reason = match e {
        OciDistributionError::AuthenticationFailure(_) => {
            "authentication failed: check the credentials for this registry in your docker config (~/.docker/config.json)".to_owned()
        }
        OciDistributionError::UnauthorizedError { .. } => {
            "unauthorized: log in to this registry (docker config) or check its permissions".to_owned()
        }
        OciDistributionError::RegistryError { envelope, .. } => {
            let codes: Vec<String> = envelope.errors.iter().map(|e| format!("{:?}", e.code)).collect();
            format!("the registry refused: {}", codes.join(", "))
        }
        OciDistributionError::ServerError { code, .. } => format!("HTTP {code}"),
        OciDistributionError::RequestError(r) => {
            if let Some(status) = r.status() {
                format!("HTTP {status}")
            } else if r.is_connect() {
                "cannot connect (is the registry up? plain-HTTP registries need --insecure)".to_owned()
            } else if r.is_timeout() {
                "timed out".to_owned()
            } else {
                "request failed (plain-HTTP registries need --insecure)".to_owned()
            }
        }
        other => {
            // Variant names only: messages may quote registry answers.
            let text = format!("{other:?}");
            let kind = text.split(['(', ' ', '{']).next().unwrap_or("error").to_owned();
            format!("registry client error ({kind})")
        }
    };
    InventoryError::Registry {
        reference: reference.whole(),
        reason,
    }
}

/// A manifest's bytes read as the OCI image manifest every artifact here is (oci-client's
/// own type); `None` when they are not one.
pub(crate) fn image_manifest(bytes: &[u8]) -> Option<OciImageManifest> {
    serde_json::from_slice(bytes).ok()
}

/// The layers of `manifest` whose media type is `media_type`, in order.
pub(crate) fn layers_of<'a>(
    manifest: &'a OciImageManifest,
    media_type: &'a str,
) -> impl Iterator<Item = &'a OciDescriptor> {
    manifest
        .layers
        .iter()
        .filter(move |layer| layer.media_type == media_type)
}
