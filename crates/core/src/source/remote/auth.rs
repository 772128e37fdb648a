//! Git credentials from a Secret: which fields make which credentials, and that nothing
//! secret reaches an error, a log line or `Debug`.

use super::*;

/// Credentials for the remote, from a Secret; one value per repository so the poll loop
/// re-reads a rotated Secret by building a new one.
#[derive(Clone, PartialEq, Eq)]
pub enum GitAuth {
    /// Anonymous access (public https, `git://`, local paths).
    None,
    /// https Basic auth. A token is a password with any username (`git`,
    /// `x-access-token`, …), which is what GitHub, GitLab and Gitea accept.
    Basic {
        /// The user name.
        username: String,
        /// The password or token.
        password: String,
    },
    /// An ssh key, with the server's host keys it must present.
    Ssh {
        /// The ssh user when the URL names none (default `git`).
        username: String,
        /// The private key, PEM or OpenSSH format.
        private_key: String,
        /// The private key's passphrase, if it is encrypted.
        passphrase: Option<String>,
        /// `known_hosts` content: the host keys the server may present.
        known_hosts: String,
    },
}

impl fmt::Debug for GitAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GitAuth::None => f.write_str("None"),
            GitAuth::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &"***")
                .finish(),
            GitAuth::Ssh {
                username,
                passphrase,
                known_hosts,
                ..
            } => f
                .debug_struct("Ssh")
                .field("username", username)
                .field("private_key", &"***")
                .field("passphrase", &passphrase.as_ref().map(|_| "***"))
                .field(
                    "known_hosts",
                    &format_args!("{} lines", known_hosts.lines().count()),
                )
                .finish(),
        }
    }
}

impl GitAuth {
    /// Reads a Flux-compatible git credentials Secret (`data`, already base64-decoded):
    /// - `username` + `password`: https Basic auth;
    /// - `bearerToken` or `token` (+ optional `username`, default `git`): a token, sent as
    ///   Basic auth, which is what git hosts accept for tokens over https;
    /// - `identity` (private key) + `known_hosts` (required: ssh without host key
    ///   verification is refused) + optional `password` (the key's passphrase) and
    ///   `username` (default `git`);
    /// - nothing of the above: anonymous. `identity.pub` and unknown keys are ignored.
    ///
    /// Errors name the missing or conflicting key, never a value.
    pub fn from_secret_data(data: &BTreeMap<String, Vec<u8>>) -> Result<GitAuth, RemoteError> {
        let get = |key: &str| -> Result<Option<String>, RemoteError> {
            let Some(bytes) = data.get(key) else {
                return Ok(None);
            };
            let text = String::from_utf8(bytes.clone())
                .map_err(|_| RemoteError::Secret(format!("key {key:?} is not UTF-8")))?;
            if text.trim().is_empty() {
                return Err(RemoteError::Secret(format!("key {key:?} is empty")));
            }
            Ok(Some(text))
        };
        let username = get("username")?;
        let password = get("password")?;
        let bearer = get("bearerToken")?;
        let token = get("token")?;
        let identity = get("identity")?;
        let known_hosts = get("known_hosts")?;

        let conflict = |a: &str, b: &str| {
            RemoteError::Secret(format!(
                "keys {a:?} and {b:?} are both set; use one kind of credential"
            ))
        };
        if bearer.is_some() && token.is_some() {
            return Err(conflict("bearerToken", "token"));
        }
        let token_key = if bearer.is_some() {
            "bearerToken"
        } else {
            "token"
        };
        let token = bearer.or(token);

        if let Some(private_key) = identity {
            if token.is_some() {
                return Err(conflict("identity", token_key));
            }
            let Some(known_hosts) = known_hosts else {
                return Err(RemoteError::Secret(
                    "key \"identity\" needs \"known_hosts\": ssh without host key \
                     verification is refused"
                        .into(),
                ));
            };
            if !private_key.trim_start().starts_with("-----BEGIN ") {
                return Err(RemoteError::Secret(
                    "key \"identity\" is not a PEM or OpenSSH private key".into(),
                ));
            }
            let parsed = parse_known_hosts(&known_hosts)?;
            if parsed.is_empty() {
                return Err(RemoteError::Secret(
                    "key \"known_hosts\" holds no host key".into(),
                ));
            }
            return Ok(GitAuth::Ssh {
                username: username.unwrap_or_else(|| "git".into()),
                private_key,
                passphrase: password,
                known_hosts,
            });
        }
        if let Some(token) = token {
            if password.is_some() {
                return Err(conflict("password", token_key));
            }
            return Ok(GitAuth::Basic {
                username: username.unwrap_or_else(|| "git".into()),
                password: token,
            });
        }
        match (username, password) {
            (Some(username), Some(password)) => Ok(GitAuth::Basic { username, password }),
            (Some(_), None) => Err(RemoteError::Secret(
                "key \"username\" is set without \"password\" (or \"bearerToken\")".into(),
            )),
            (None, Some(_)) => Err(RemoteError::Secret(
                "key \"password\" is set without \"username\" or \"identity\"".into(),
            )),
            (None, None) => Ok(GitAuth::None),
        }
    }

    pub(super) fn kind(&self) -> &'static str {
        match self {
            GitAuth::None => "no credentials",
            GitAuth::Basic { .. } => "username/password credentials",
            GitAuth::Ssh { .. } => "an ssh identity",
        }
    }
}
