//! The Secret's `known_hosts`, parsed by `ssh-key` (plain and hashed `|1|` entries), and the
//! host-key check libgit2's ssh transport asks for.

use super::*;

/// One usable known_hosts line, as `ssh-key` parsed it.
#[derive(Debug)]
pub(super) struct KnownHost {
    pub(super) revoked: bool,
    /// Plain patterns (lowercased) or one hashed name.
    pub(super) hosts: HostPatterns,
    pub(super) key_type: String,
    /// The key blob, as the server sends it.
    pub(super) key: Vec<u8>,
}

/// Parses the Secret's `known_hosts` with `ssh-key`; errors name the line. `@cert-authority`
/// lines are skipped: a CA signs host certificates, which plain key comparison cannot use.
pub(super) fn parse_known_hosts(text: &str) -> Result<Vec<KnownHost>, RemoteError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let bad = |reason: String| RemoteError::KnownHosts {
            line: i + 1,
            reason,
        };
        // As OpenSSH and ssh-key: `#` starts a comment, blank lines are skipped.
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let entry: Entry = line
            .parse()
            .map_err(|e| bad(parse_error_reason(line, &e)))?;
        let revoked = match entry.marker() {
            Some(Marker::CertAuthority) => continue,
            Some(Marker::Revoked) => true,
            None => false,
        };
        let hosts = match entry.host_patterns() {
            HostPatterns::Patterns(patterns) => {
                HostPatterns::Patterns(patterns.iter().map(|p| p.to_ascii_lowercase()).collect())
            }
            hashed => hashed.clone(),
        };
        let key = entry
            .public_key()
            .to_bytes()
            .map_err(|e| bad(format!("the key cannot be encoded: {e}")))?;
        out.push(KnownHost {
            revoked,
            hosts,
            key_type: entry.public_key().algorithm().as_str().to_string(),
            key,
        });
    }
    Ok(out)
}

/// What is wrong with a line `ssh-key` refused, in known_hosts terms (its errors alone say
/// "invalid format").
pub(super) fn parse_error_reason(line: &str, e: &ssh_key::Error) -> String {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let fields = match fields.split_first() {
        Some((marker, rest)) if marker.starts_with('@') => {
            if !matches!(*marker, "@revoked" | "@cert-authority") {
                return "unknown marker (expected @revoked or @cert-authority)".into();
            }
            rest
        }
        _ => &fields[..],
    };
    if fields.len() < 3 {
        return "expected `host[,host…] keytype base64key`".into();
    }
    match e {
        ssh_key::Error::Encoding(_) if fields[0].starts_with("|1|") => {
            "the hashed host name is not `|1|base64salt|base64hash`".into()
        }
        ssh_key::Error::Encoding(_) => "the key is not valid base64 of an ssh public key".into(),
        // ssh-key's word for "the blob's type differs from the line's".
        ssh_key::Error::AlgorithmUnknown => {
            format!("the key does not match its key type `{}`", fields[1])
        }
        ssh_key::Error::AlgorithmUnsupported { .. } => {
            format!("unsupported key type `{}`", fields[1])
        }
        other => format!("the key of type `{}` cannot be read: {other}", fields[1]),
    }
}

/// `true` when `name` (known_hosts form, lowercase) is one of `hosts`: for patterns, at least
/// one positive match and no negated (`!`) match, as OpenSSH does; for a hashed name (`|1|`,
/// `ssh-keygen -H`), HMAC-SHA1 of the name keyed with the salt equals the hash.
pub(super) fn host_matches(hosts: &HostPatterns, name: &str) -> bool {
    match hosts {
        HostPatterns::Patterns(patterns) => {
            let mut matched = false;
            for pattern in patterns {
                if let Some(negated) = pattern.strip_prefix('!') {
                    if glob(negated.as_bytes(), name.as_bytes()) {
                        return false;
                    }
                } else if glob(pattern.as_bytes(), name.as_bytes()) {
                    matched = true;
                }
            }
            matched
        }
        HostPatterns::HashedName { salt, hash } => {
            let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(salt) else {
                return false;
            };
            mac.update(name.as_bytes());
            mac.verify_slice(hash).is_ok()
        }
    }
}

/// OpenSSH's wildcard match: `*` any run, `?` one character.
pub(super) fn glob(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len()).any(|i| glob(rest, &text[i..])),
        Some((b'?', rest)) => !text.is_empty() && glob(rest, &text[1..]),
        Some((c, rest)) => text.first() == Some(c) && glob(rest, &text[1..]),
    }
}

/// The host key the server presented: its blob, or only its SHA-256 when libgit2 has no raw
/// key.
pub(super) enum OfferedKey {
    Raw(Vec<u8>),
    Sha256([u8; 32]),
}

impl OfferedKey {
    /// `ssh-ed25519 SHA256:…`, as `ssh-keygen -lf` prints it.
    pub(super) fn describe(&self) -> String {
        let sha256: [u8; 32] = match self {
            OfferedKey::Raw(blob) => Sha256::digest(blob).into(),
            OfferedKey::Sha256(sha) => *sha,
        };
        let fingerprint = base64::engine::general_purpose::STANDARD_NO_PAD.encode(sha256);
        match self {
            OfferedKey::Raw(blob) => {
                let key_type = ssh_key::PublicKey::from_bytes(blob)
                    .map(|k| k.algorithm().as_str().to_string())
                    .unwrap_or_else(|_| "unknown".into());
                format!("{key_type} SHA256:{fingerprint}")
            }
            OfferedKey::Sha256(_) => format!("SHA256:{fingerprint}"),
        }
    }

    pub(super) fn is(&self, key: &[u8]) -> bool {
        match self {
            OfferedKey::Raw(blob) => blob == key,
            OfferedKey::Sha256(sha) => <[u8; 32]>::from(Sha256::digest(key)) == *sha,
        }
    }
}

/// Accepts the connection only if `host` (known_hosts form) has an entry with exactly the
/// offered key and that key is not revoked. The error says what the server offered.
pub(super) fn verify_host_key(
    known_hosts: &str,
    host: &str,
    offered: &OfferedKey,
) -> Result<(), String> {
    let parsed = parse_known_hosts(known_hosts).map_err(|e| e.to_string())?;
    let host = host.to_ascii_lowercase();
    if parsed.iter().any(|e| e.revoked && offered.is(&e.key)) {
        return Err(format!(
            "the server's key {} is marked @revoked in known_hosts",
            offered.describe()
        ));
    }
    let for_host: Vec<&KnownHost> = parsed
        .iter()
        .filter(|e| !e.revoked && host_matches(&e.hosts, &host))
        .collect();
    if for_host.iter().any(|e| offered.is(&e.key)) {
        return Ok(());
    }
    if for_host.is_empty() {
        return Err(format!(
            "{host} is not in known_hosts; the server offered {}",
            offered.describe()
        ));
    }
    let expected: Vec<&str> = for_host.iter().map(|e| e.key_type.as_str()).collect();
    Err(format!(
        "the server offered {}, which is not the key known_hosts has for {host} ({}); \
         refusing to connect",
        offered.describe(),
        expected.join(", ")
    ))
}
