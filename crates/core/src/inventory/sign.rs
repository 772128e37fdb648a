//! The inventory's signature: cosign's key-pair scheme, so `cosign verify --key` checks what
//! plugsync signed and plugsync accepts what `cosign sign --key` signed.
//!
//! - The signed payload is cosign's "simple signing" JSON, naming the signed manifest's
//!   digest (`critical.image.docker-manifest-digest`) and repository.
//! - The signature is ECDSA P-256 over SHA-256 of the payload, ASN.1 DER, base64 in the
//!   layer annotation `dev.cosignproject.cosign/signature`.
//! - Signature manifests live in the same repository under the tag `sha256-<hex>.sig`.
//!
//! Keys are PEM files: a PKCS#8 (`BEGIN PRIVATE KEY`) or SEC1 (`BEGIN EC PRIVATE KEY`)
//! private key to sign, and a SubjectPublicKeyInfo public key (`BEGIN PUBLIC KEY`, what
//! `cosign generate-key-pair` writes as `cosign.pub`) to verify. A private key can also be
//! given to verify (its public half is used). cosign's own encrypted private keys are not
//! read: import an openssl key into cosign instead (`cosign import-key-pair`).

use std::path::Path;

use base64::Engine as _;
use p256::ecdsa::signature::{Signer as _, Verifier as _};
use p256::ecdsa::{DerSignature, Signature, SigningKey, VerifyingKey};
use p256::pkcs8::{DecodePrivateKey as _, DecodePublicKey as _, EncodePublicKey as _};
use serde_json::{json, Value};

use super::InventoryError;

/// The layer annotation holding the base64 signature (cosign's name).
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// The media type of the signed payload layer (cosign's simple signing).
pub const SIMPLE_SIGNING_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The `critical.type` of a cosign payload.
const PAYLOAD_TYPE: &str = "cosign container image signature";

/// A key that verifies inventory signatures, with a short fingerprint for messages and the
/// cache (which re-verifies when the key changes).
#[derive(Debug, Clone)]
pub struct PublicKey {
    key: VerifyingKey,
    /// Where it was read from, for messages.
    pub source: String,
}

/// A key that signs inventories at publish.
#[derive(Clone)]
pub struct PrivateKey {
    key: SigningKey,
    /// Where it was read from, for messages.
    pub source: String,
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrivateKey")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

fn key_error(path: &Path, reason: impl Into<String>) -> InventoryError {
    InventoryError::Key {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

fn read_pem(path: &Path) -> Result<String, InventoryError> {
    let text = std::fs::read_to_string(path).map_err(|e| key_error(path, e.to_string()))?;
    if text.contains("ENCRYPTED") {
        return Err(key_error(
            path,
            "an encrypted private key; plugsync reads unencrypted PEM keys (PKCS#8 or SEC1, P-256): \
             create one with `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out key.pem` \
             and give cosign the same key with `cosign import-key-pair --key key.pem`",
        ));
    }
    Ok(text)
}

fn private_from_text(text: &str) -> Option<SigningKey> {
    if let Ok(key) = SigningKey::from_pkcs8_pem(text) {
        return Some(key);
    }
    p256::SecretKey::from_sec1_pem(text)
        .ok()
        .map(SigningKey::from)
}

impl PrivateKey {
    /// Reads a P-256 private key (PKCS#8 or SEC1 PEM).
    pub fn read(path: &Path) -> Result<PrivateKey, InventoryError> {
        let text = read_pem(path)?;
        let key = private_from_text(&text).ok_or_else(|| {
            key_error(
                path,
                "not an unencrypted P-256 private key in PEM (`BEGIN PRIVATE KEY` or `BEGIN EC PRIVATE KEY`)",
            )
        })?;
        Ok(PrivateKey {
            key,
            source: path.display().to_string(),
        })
    }

    /// The public half, to verify what is already published before adding to it.
    pub fn public(&self) -> PublicKey {
        PublicKey {
            key: *self.key.verifying_key(),
            source: self.source.clone(),
        }
    }

    /// The base64 DER signature of `payload` (deterministic, RFC 6979).
    pub(crate) fn sign(&self, payload: &[u8]) -> String {
        let signature: Signature = self.key.sign(payload);
        let der: DerSignature = signature.to_der();
        base64::engine::general_purpose::STANDARD.encode(der.as_bytes())
    }
}

impl PublicKey {
    /// Reads a P-256 public key (`BEGIN PUBLIC KEY`), or the public half of a private key.
    pub fn read(path: &Path) -> Result<PublicKey, InventoryError> {
        let text = read_pem(path)?;
        Self::from_pem(&text, &path.display().to_string())
    }

    /// [`PublicKey::read`] for PEM text already read (from a repository); `source` names
    /// it in messages.
    pub fn from_pem(text: &str, source: &str) -> Result<PublicKey, InventoryError> {
        let path = Path::new(source);
        let key = match VerifyingKey::from_public_key_pem(text) {
            Ok(key) => key,
            Err(_) => match private_from_text(text) {
                Some(private) => *private.verifying_key(),
                None => {
                    return Err(key_error(
                        path,
                        "not a P-256 public key in PEM (`BEGIN PUBLIC KEY`, as `cosign.pub`)",
                    ))
                }
            },
        };
        Ok(PublicKey {
            key,
            source: source.to_owned(),
        })
    }

    /// sha256 (hex) of the key's SubjectPublicKeyInfo DER: tells keys apart in the cache.
    pub fn fingerprint(&self) -> String {
        let der = self
            .key
            .to_public_key_der()
            .map(|d| d.as_bytes().to_vec())
            .unwrap_or_default();
        crate::package::sha256_hex(&der)
    }

    /// Whether `signature_b64` (base64 DER, or raw r‖s) is this key's signature of
    /// `payload`.
    pub(crate) fn verifies(&self, payload: &[u8], signature_b64: &str) -> bool {
        let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(signature_b64.trim())
        else {
            return false;
        };
        let signature = match Signature::from_der(&bytes) {
            Ok(s) => s,
            Err(_) => match Signature::from_slice(&bytes) {
                Ok(s) => s,
                Err(_) => return false,
            },
        };
        self.key.verify(payload, &signature).is_ok()
    }
}

/// cosign's simple-signing payload for the manifest `digest` in `repository`
/// (`host/path`, no tag).
pub(crate) fn payload(repository: &str, digest: &str) -> Vec<u8> {
    // Field order and shape as cosign writes it (`optional: null`).
    let value = json!({
        "critical": {
            "identity": {"docker-reference": repository},
            "image": {"docker-manifest-digest": digest},
            "type": PAYLOAD_TYPE,
        },
        "optional": Value::Null,
    });
    serde_json::to_vec(&value).expect("a JSON value serializes")
}

/// The manifest digest a payload vouches for, when it is a cosign payload.
pub(crate) fn payload_digest(payload: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(payload).ok()?;
    let critical = value.get("critical")?;
    if critical.get("type")?.as_str()? != PAYLOAD_TYPE {
        return None;
    }
    Some(
        critical
            .get("image")?
            .get("docker-manifest-digest")?
            .as_str()?
            .to_owned(),
    )
}

/// The tag cosign stores the signatures of `digest` under: `sha256-<hex>.sig`.
pub fn signature_tag(digest: &str) -> String {
    format!("{}.sig", digest.replacen(':', "-", 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PKCS8: &str = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgqou45RiVav4iTNJe\n0DXCoiUYhCRWNp4HNGiwR3cplJuhRANCAAStX9yZpfwXoa5LvmcrxHmWXJmIaAff\nyTmVi2KAcJ2EyGCvNbY8c6o1XUuCknTLcc6g8SVkVJwUrKWt5X0olE7/\n-----END PRIVATE KEY-----\n";

    fn key() -> PrivateKey {
        PrivateKey {
            key: SigningKey::from_pkcs8_pem(PKCS8).expect("test key"),
            source: "test".into(),
        }
    }

    #[test]
    fn a_signature_verifies_only_its_payload() {
        let key = key();
        let payload = payload("example.com/inv", "sha256:00");
        let signature = key.sign(&payload);
        assert!(key.public().verifies(&payload, &signature));
        let other = super::payload("example.com/inv", "sha256:01");
        assert!(!key.public().verifies(&other, &signature));
        assert!(!key.public().verifies(&payload, "not base64!"));
        assert_eq!(payload_digest(&payload).as_deref(), Some("sha256:00"));
    }

    #[test]
    fn signature_tags_are_cosigns() {
        assert_eq!(signature_tag("sha256:abc"), "sha256-abc.sig");
    }
}
