//! Package artifacts in the registry, fetched by the `oci` source client
//! (`crate::fetch`) for the `url:` declarations that `inventory:` and `group:` entries
//! expand to (`crate::expand`).

use std::collections::BTreeMap;

use url::Url;

use super::oci::{image_manifest, layers_of, Registry, Repo};
use super::{InventoryError, Login, PACKAGE_LAYER_MEDIA_TYPE};

/// The package bytes of the artifact at `url` (`oci://` or `oci+http://host/path@sha256:…`):
/// its manifest pulled by digest (checked), then its package layer (checked), with the
/// credentials `logins` holds for its registry (anonymous without).
pub async fn fetch_package(
    url: &Url,
    timeout: std::time::Duration,
    max_bytes: u64,
    logins: &BTreeMap<String, Login>,
) -> Result<Vec<u8>, InventoryError> {
    let bad = |reason: &str| InventoryError::Reference {
        reference: url.to_string(),
        reason: reason.to_owned(),
    };
    let insecure = url.scheme() == "oci+http";
    let host = url
        .host_str()
        .ok_or_else(|| bad("a package artifact URL needs a host"))?;
    let registry = match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    };
    let (repository, digest) = url
        .path()
        .trim_start_matches('/')
        .split_once('@')
        .ok_or_else(|| bad("expected oci://host/repository@sha256:<hex>"))?;
    let repo = Repo {
        registry: registry.clone(),
        repository: repository.to_owned(),
    };
    let client = Registry::new(&registry, insecure, logins.get(&registry), timeout);
    let (manifest, _) = client
        .manifest(&repo.digest(digest))
        .await?
        .ok_or_else(|| InventoryError::MissingBlob {
            what: "the package artifact".into(),
            repository: repo.name(),
            digest: digest.to_owned(),
        })?;
    let manifest = image_manifest(&manifest)
        .ok_or_else(|| bad("its manifest is not an OCI image manifest"))?;
    let layer = layers_of(&manifest, PACKAGE_LAYER_MEDIA_TYPE)
        .next()
        .ok_or_else(|| bad("not a Dify package artifact (no package layer)"))?;
    let size = u64::try_from(layer.size).unwrap_or(0);
    if size > max_bytes {
        return Err(bad(&format!(
            "package too large: {size} bytes, limit is {max_bytes}"
        )));
    }
    let layer_digest = layer.digest.as_str();
    client.blob(&repo, layer_digest, "the package").await
}
