//! Dify's package signatures: who vouches for a package, checked the way the plugin daemon
//! checks them, so that `plugsync lock` refuses what Dify would refuse before anything is
//! built, and records who signed what it accepts.
//!
//! A signed package carries `{"signature": "<base64>", "time": <unix seconds>}` as its zip
//! comment. The signature is RSA PKCS#1 v1.5 with SHA-256 over the SHA-256 digests of every
//! entry's content, in the archive's order, followed by the time as decimal text
//! (dify-plugin-daemon `pkg/plugin_packager/decoder/verifier.go`). The comment is not part of
//! Dify's checksum, so signing a package does not change its identifier.

use std::fmt;

use rsa::pkcs1::DecodeRsaPublicKey;
use rsa::pkcs8::DecodePublicKey;
use rsa::{Pkcs1v15Sign, RsaPublicKey};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Dify's official plugin-signing public key, as committed in langgenius/dify-plugin-daemon
/// at `pkg/license/public_key/PUBLIC_KEY.pem` (provenance: `keys/README.md`).
const DIFY_OFFICIAL_KEY_PEM: &str = include_str!("../../../../keys/dify-official.pem");

/// The name a package verified by Dify's official key is recorded under.
pub const DIFY_OFFICIAL_SIGNER: &str = "dify-official";

/// What the signature of a package covers, gathered while the package is read (the reader
/// already inflates and hashes every entry), so verifying against any key set costs no
/// second pass over the archive.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SignedContent {
    /// SHA-256 of each entry's content, in the archive's order (directories hash as empty).
    pub(super) entry_digests: Vec<[u8; 32]>,
    /// The archive's comment, where Dify keeps the signature.
    pub(super) comment: Vec<u8>,
}

/// A public key whose signatures plugsync accepts, and the name recorded in plugins.lock for
/// packages it verifies.
#[derive(Clone)]
pub struct TrustedKey {
    name: String,
    key: RsaPublicKey,
}

impl fmt::Debug for TrustedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustedKey")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// A key that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("public key {name:?} is not an RSA public key in PEM form ({reason}); give a PEM file starting with `-----BEGIN PUBLIC KEY-----` or `-----BEGIN RSA PUBLIC KEY-----`, as `dify signature generate` writes it")]
pub struct KeyError {
    name: String,
    reason: String,
}

impl TrustedKey {
    /// Dify's official key: packages published by langgenius and verified partners.
    pub fn dify_official() -> TrustedKey {
        TrustedKey::from_pem(DIFY_OFFICIAL_SIGNER, DIFY_OFFICIAL_KEY_PEM)
            .expect("the bundled official key is a valid PKCS#1 PEM")
    }

    /// Reads a key from PEM text: PKCS#1 (`BEGIN RSA PUBLIC KEY`, what the daemon ships) or
    /// SubjectPublicKeyInfo (`BEGIN PUBLIC KEY`, what `dify signature generate` and openssl
    /// write).
    pub fn from_pem(name: &str, pem: &str) -> Result<TrustedKey, KeyError> {
        let pem = pem.trim();
        let key = if pem.starts_with("-----BEGIN RSA PUBLIC KEY-----") {
            RsaPublicKey::from_pkcs1_pem(pem).map_err(|e| e.to_string())
        } else {
            RsaPublicKey::from_public_key_pem(pem).map_err(|e| e.to_string())
        };
        key.map(|key| TrustedKey {
            name: name.to_string(),
            key,
        })
        .map_err(|reason| KeyError {
            name: name.to_string(),
            reason,
        })
    }

    /// The name packages it verifies are recorded under.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// The outcome of checking a package's signature against a set of trusted keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    /// A trusted key verifies the signature.
    Signed {
        /// The name of the key that verified it.
        signer: String,
        /// When it was signed (unix seconds), as the signature states.
        signed_at: i64,
    },
    /// The package carries no signature (an empty zip comment).
    Unsigned,
    /// The package carries a signature that no trusted key verifies, or one that cannot be
    /// read: either it was changed after signing or it was signed by a key nobody trusts.
    Invalid {
        /// Why, for the person reading the error.
        reason: String,
    },
}

/// What plugins.lock records for a package with no signature.
pub const UNSIGNED: &str = "unsigned";
/// What plugins.lock records for a signature no trusted key verifies.
pub const INVALID: &str = "invalid";

impl Verification {
    /// The word plugins.lock and the logs record for it: the signer's key name,
    /// [`UNSIGNED`] or [`INVALID`].
    pub fn recorded_as(&self) -> &str {
        match self {
            Verification::Signed { signer, .. } => signer,
            Verification::Unsigned => UNSIGNED,
            Verification::Invalid { .. } => INVALID,
        }
    }
}

/// The zip comment of a signed package.
#[derive(Deserialize)]
struct SignatureComment {
    signature: String,
    time: i64,
}

/// Checks `signed` against `keys`, in order; the first key that verifies names the signer.
pub fn verify(signed: &SignedContent, keys: &[TrustedKey]) -> Verification {
    use base64::Engine as _;

    if signed.comment.iter().all(u8::is_ascii_whitespace) {
        return Verification::Unsigned;
    }
    let comment: SignatureComment = match serde_json::from_slice(&signed.comment) {
        Ok(comment) => comment,
        Err(_) => {
            return Verification::Invalid {
                reason: "the zip comment is not a Dify signature ({\"signature\", \"time\"})"
                    .to_string(),
            }
        }
    };
    let signature = match base64::engine::general_purpose::STANDARD.decode(&comment.signature) {
        Ok(signature) => signature,
        Err(_) => {
            return Verification::Invalid {
                reason: "the signature in the zip comment is not base64".to_string(),
            }
        }
    };
    let mut data = Sha256::new();
    for digest in &signed.entry_digests {
        data.update(digest);
    }
    data.update(comment.time.to_string().as_bytes());
    let hashed = data.finalize();
    for key in keys {
        if key
            .key
            .verify(Pkcs1v15Sign::new::<Sha256>(), &hashed, &signature)
            .is_ok()
        {
            return Verification::Signed {
                signer: key.name.clone(),
                signed_at: comment.time,
            };
        }
    }
    let names: Vec<&str> = keys.iter().map(|k| k.name.as_str()).collect();
    Verification::Invalid {
        reason: format!(
            "no trusted key ({}) verifies its signature: the package was changed after signing, or signed by a key the repository does not name",
            names.join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_comment_is_unsigned() {
        let signed = SignedContent::default();
        assert_eq!(
            verify(&signed, &[TrustedKey::dify_official()]),
            Verification::Unsigned
        );
    }

    #[test]
    fn a_comment_that_is_not_a_signature_is_invalid_and_says_so() {
        let signed = SignedContent {
            entry_digests: vec![[0; 32]],
            comment: b"made with zip 3.0".to_vec(),
        };
        match verify(&signed, &[TrustedKey::dify_official()]) {
            Verification::Invalid { reason } => assert!(reason.contains("not a Dify signature")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_key_that_is_not_pem_names_itself() {
        let err = TrustedKey::from_pem("team-key", "not a key").unwrap_err();
        assert!(err.to_string().contains("\"team-key\""), "{err}");
    }
}
