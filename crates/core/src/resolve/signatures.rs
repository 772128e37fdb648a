//! Package signatures during resolution: the keys a revision trusts, what each package's
//! signature says (recorded in plugins.lock), and the set's policy on it.

use crate::error::{Diagnostic, Error};
use crate::load::{DeclaredPlugin, LoadedPluginSet};
use crate::model::{LockedPlugin, SignaturePolicy};
use crate::package::signature::{
    TrustedKey, Verification, DIFY_OFFICIAL_SIGNER, INVALID, UNSIGNED,
};
use crate::package::Package;
use crate::source::Snapshot;

/// The keys `set` trusts: Dify's official key, then the repository's own, read from
/// `snapshot` (the revision the set was read from, so a pull request that adds a key is
/// checked with it). A key that is missing, unreadable or badly named is a diagnostic at
/// its plugins.yaml field.
pub(crate) fn trusted_keys(
    snapshot: &dyn Snapshot,
    set: &LoadedPluginSet,
) -> Result<Vec<TrustedKey>, Error> {
    let mut keys = vec![TrustedKey::dify_official()];
    let mut problems = Vec::new();
    for (i, key) in set.spec().spec.signatures.keys.iter().enumerate() {
        let field = |name: &str| format!("spec.signatures.keys[{i}].{name}");
        if [DIFY_OFFICIAL_SIGNER, UNSIGNED, INVALID].contains(&key.name.as_str())
            || keys.iter().any(|k| k.name() == key.name)
        {
            problems.push(set.doc.error_at(
                &field("name"),
                format!(
                    "`{}` is taken (by Dify's official key, by another key, or by what \
                     plugins.lock records for unsigned and invalid packages); give the key \
                     another name",
                    key.name
                ),
            ));
            continue;
        }
        let pem = match snapshot.read(&key.path) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => {
                problems.push(set.doc.error_at(
                    &field("path"),
                    format!(
                        "{} is not in the repository; commit the public key there, or fix \
                         the path (relative to the repository root)",
                        key.path
                    ),
                ));
                continue;
            }
            Err(source) => return Err(Error::snapshot(snapshot.describe(), source)),
        };
        match TrustedKey::from_pem(&key.name, &String::from_utf8_lossy(&pem)) {
            Ok(trusted) => keys.push(trusted),
            Err(e) => problems.push(set.doc.error_at(&field("path"), e.to_string())),
        }
    }
    if problems.is_empty() {
        Ok(keys)
    } else {
        Err(Error::Invalid(crate::error::Diagnostics(problems)))
    }
}

/// Records in `locked` who signed `package`, and returns why the set's policy refuses it,
/// if it does, as a diagnostic at the plugin's declaration.
pub(crate) fn check(
    set: &LoadedPluginSet,
    declared: &DeclaredPlugin,
    locked: &mut LockedPlugin,
    package: &Package,
    keys: &[TrustedKey],
) -> Option<Diagnostic> {
    let policy = set.spec().spec.signatures.policy;
    let verification = package.verify_signature(keys);
    locked.signature = Some(verification.recorded_as().to_string());
    let refusal = match (&verification, policy) {
        (Verification::Invalid { reason }, SignaturePolicy::RefuseInvalid)
        | (Verification::Invalid { reason }, SignaturePolicy::RequireSigned) => {
            format!("its signature is invalid: {reason}")
        }
        (Verification::Unsigned, SignaturePolicy::RequireSigned) => {
            "it is unsigned, and spec.signatures.policy is requireSigned; use a signed \
             package, or sign it (`dify signature sign`) and add the public key to \
             spec.signatures.keys"
                .to_string()
        }
        _ => return None,
    };
    Some(set.error_at_source(
        declared,
        format!("refused {} {}: {refusal}", locked.name, locked.version),
    ))
}
