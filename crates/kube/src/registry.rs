//! Asking an image registry whether an image is still there.
//!
//! plugsync reuses images instead of rebuilding them: when the lock (or an earlier `Plugin`)
//! already records an image digest for identical build inputs, and the registry still has that
//! manifest, no build runs at all. This module answers the "still has that manifest" part with
//! one `HEAD /v2/<repository>/manifests/<reference>` on the OCI distribution API, and nothing
//! more: it never pulls layers and never pushes.
//!
//! Credentials come only from a Kubernetes `kubernetes.io/dockerconfigjson` Secret
//! ([`DockerConfig::from_secret`]), the same Secret the build pushes with, so whatever can push
//! can also be checked. Credential helpers (`credsStore`, `credHelpers`) cannot run inside the
//! cluster and are ignored.
//!
//! Authentication follows the distribution spec: a request goes out anonymously first; a `401`
//! with `WWW-Authenticate: Basic` is retried with the Secret's username and password; a `401`
//! with `WWW-Authenticate: Bearer realm=…,service=…,scope=…` fetches a token from the realm
//! (with the Secret's credentials when it has some) and retries with it. Tokens are cached per
//! registry, scope and credentials until shortly before they expire, so checking many images
//! in one repository costs one token request.
//!
//! Secrets (passwords, identity tokens, bearer tokens) never appear in [`RegistryError`]
//! messages, in logs, or in `Debug` output.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;
use k8s_openapi::api::core::v1::Secret;
use reqwest::header::{ACCEPT, CONTENT_TYPE, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use url::Url;

use plugsync_core::redact::redact_url;

/// The name Docker Hub images carry in references (`docker.io/library/nginx:latest`).
pub(crate) const DOCKER_HUB: &str = "docker.io";

/// The host Docker Hub's registry API actually answers on.
pub(crate) const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// The Secret type whose `.dockerconfigjson` key holds registry credentials.
pub(crate) const DOCKERCONFIGJSON_TYPE: &str = "kubernetes.io/dockerconfigjson";

/// The data key of a [`DOCKERCONFIGJSON_TYPE`] Secret.
pub(crate) const DOCKERCONFIGJSON_KEY: &str = ".dockerconfigjson";

/// Every manifest type a reused image can have: single-platform OCI and Docker manifests and
/// their multi-platform indexes. Without an `Accept` the registry may answer with a converted
/// (and differently hashed) schema 1 manifest, so the digest would not match the build's.
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";

/// Extra attempts after a connection error or a 5xx answer.
const EXTRA_ATTEMPTS: u32 = 2;

/// Delay before the first retry; doubled for each further one.
const RETRY_BASE_DELAY: Duration = Duration::from_millis(200);

/// Upper bound on the connect phase of a request (the whole request is bounded by the
/// client's timeout).
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest manifest read when a registry omits `Docker-Content-Digest` (containerd's limit).
const MAX_MANIFEST_BYTES: usize = 4 << 20;

/// Largest token response read.
const MAX_TOKEN_RESPONSE_BYTES: usize = 1 << 20;

/// Token lifetime when the token server does not say (distribution token spec).
const DEFAULT_TOKEN_SECONDS: u64 = 60;

/// A token is dropped this long before it expires, so it does not expire in flight.
const TOKEN_EXPIRY_MARGIN: Duration = Duration::from_secs(10);

/// Sent as `client_id` in OAuth2 refresh-token requests.
const CLIENT_ID: &str = "plugsync";

/// What went wrong talking to (or preparing to talk to) a registry.
///
/// Every message that concerns a request names the registry and the repository, so an
/// operator knows which image and which Secret to look at; none ever contains a password,
/// identity token or bearer token.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The dockerconfigjson document is malformed. The reason says where, never what the
    /// value was (it may be a secret).
    #[error("invalid dockerconfigjson: {0}")]
    InvalidConfig(String),
    /// The Secret is not a usable `kubernetes.io/dockerconfigjson` Secret.
    #[error("Secret {secret}: {reason}")]
    Secret {
        /// `namespace/name` of the Secret.
        secret: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An image reference that is not `[registry/]repository[:tag][@digest]`.
    #[error("invalid image reference `{reference}`: {reason}")]
    InvalidReference {
        /// The reference as given.
        reference: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A digest that is not `sha256:<64 hex>` or `sha512:<128 hex>`.
    #[error("invalid digest `{digest}`: expected `sha256:` followed by 64 lowercase hex digits")]
    InvalidDigest {
        /// The digest as given.
        digest: String,
    },
    /// The HTTP client (its TLS backend) could not be set up.
    #[error("could not set up the HTTP client: {0}")]
    Client(String),
    /// The request never got an HTTP answer (connection refused, TLS failure, reset, …),
    /// after retries.
    #[error("registry {registry}, repository {repository}: {what} failed: {reason}")]
    Transport {
        /// `host[:port]` of the registry.
        registry: String,
        /// Repository path in the registry.
        repository: String,
        /// Which request, for example `HEAD manifest 0.0.14`.
        what: String,
        /// The transport error chain.
        reason: String,
    },
    /// The request did not finish within the client's timeout.
    #[error("registry {registry}, repository {repository}: {what} timed out after {after:?}")]
    Timeout {
        /// `host[:port]` of the registry.
        registry: String,
        /// Repository path in the registry.
        repository: String,
        /// Which request.
        what: String,
        /// The timeout that elapsed.
        after: Duration,
    },
    /// The registry wants credentials that are missing or that it rejected (HTTP 401).
    #[error("registry {registry}, repository {repository}: unauthorized: {reason}")]
    Unauthorized {
        /// `host[:port]` of the registry.
        registry: String,
        /// Repository path in the registry.
        repository: String,
        /// Why: no credentials, rejected credentials, unsupported challenge.
        reason: String,
    },
    /// The credentials were accepted but may not read this repository (HTTP 403).
    #[error("registry {registry}, repository {repository}: access denied (HTTP 403); the credentials in the Secret may not pull this repository")]
    Denied {
        /// `host[:port]` of the registry.
        registry: String,
        /// Repository path in the registry.
        repository: String,
    },
    /// The token server of a `Bearer` challenge refused or failed to issue a token.
    #[error(
        "registry {registry}, repository {repository}: token request to {realm} failed: {reason}"
    )]
    Token {
        /// `host[:port]` of the registry.
        registry: String,
        /// Repository path in the registry.
        repository: String,
        /// The realm (token endpoint), redacted.
        realm: String,
        /// Why; never the response body, which may echo credentials.
        reason: String,
    },
    /// An HTTP status this protocol does not expect (after retries for 5xx).
    #[error(
        "registry {registry}, repository {repository}: {what}: unexpected HTTP status {status}"
    )]
    Status {
        /// `host[:port]` of the registry.
        registry: String,
        /// Repository path in the registry.
        repository: String,
        /// Which request.
        what: String,
        /// The HTTP status code.
        status: u16,
    },
    /// The registry answered, but not as the distribution spec says it should.
    #[error("registry {registry}, repository {repository}: {reason}")]
    Protocol {
        /// `host[:port]` of the registry.
        registry: String,
        /// Repository path in the registry.
        repository: String,
        /// What was wrong with the answer.
        reason: String,
    },
}

// ---------------------------------------------------------------------------------------------
// Credentials

/// The secret half of [`Credentials`].
#[derive(Clone, PartialEq, Eq)]
enum CredentialSecret {
    /// A password (or access token used as one), sent with HTTP basic auth.
    Password(String),
    /// An OAuth2 refresh token (`identitytoken`, as `docker login` stores for Azure and
    /// others), exchanged at the token realm for a bearer token.
    IdentityToken(String),
}

/// Credentials for one registry, as found in a dockerconfigjson document.
///
/// The fields are private and `Debug` prints `***` for the secret, so credentials can sit in
/// structs that get logged without leaking.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    username: String,
    secret: CredentialSecret,
}

impl Credentials {
    /// Username and password (basic auth, and basic auth at the token realm).
    pub fn basic(username: impl Into<String>, password: impl Into<String>) -> Credentials {
        Credentials {
            username: username.into(),
            secret: CredentialSecret::Password(password.into()),
        }
    }

    /// An identity (OAuth2 refresh) token, exchanged at the token realm for access tokens.
    pub fn identity_token(username: impl Into<String>, token: impl Into<String>) -> Credentials {
        Credentials {
            username: username.into(),
            secret: CredentialSecret::IdentityToken(token.into()),
        }
    }

    /// The username; not a secret, and useful in messages ("credentials for `ci-bot` were
    /// rejected").
    pub fn username(&self) -> &str {
        &self.username
    }

    /// A short fingerprint that tells credentials apart (keys the token cache, so a token
    /// fetched with one Secret is never reused for another) without holding the secret.
    fn fingerprint(&self) -> String {
        let (kind, secret) = match &self.secret {
            CredentialSecret::Password(p) => ("p", p),
            CredentialSecret::IdentityToken(t) => ("t", t),
        };
        let mut hasher = Sha256::new();
        hasher.update(self.username.as_bytes());
        hasher.update([0]);
        hasher.update(kind.as_bytes());
        hasher.update([0]);
        hasher.update(secret.as_bytes());
        hex::encode(&hasher.finalize()[..16])
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("Credentials");
        s.field("username", &self.username);
        match &self.secret {
            CredentialSecret::Password(_) => s.field("password", &"***"),
            CredentialSecret::IdentityToken(_) => s.field("identity_token", &"***"),
        };
        s.finish()
    }
}

/// Registry credentials parsed from a dockerconfigjson document, keyed by registry host.
///
/// Keys are normalised the way Docker looks them up: scheme and path are dropped
/// (`https://registry.example.com/v2/` → `registry.example.com`), hosts are lowercased, and
/// Docker Hub's many names (`https://index.docker.io/v1/`, `registry-1.docker.io`, …) all
/// become `docker.io`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DockerConfig {
    auths: BTreeMap<String, Credentials>,
}

impl DockerConfig {
    /// Parses `{"auths": {"host[:port]": {...}}}`, where each entry has `auth`
    /// (base64 of `user:password`), or `username` and `password`, or `identitytoken`.
    ///
    /// `auth` wins over `username`/`password` (as in Docker); `identitytoken` wins over a
    /// password. Entries with none of these (left by `docker login` with a credential
    /// helper) are skipped. Errors say which host's entry is wrong, never the value.
    pub fn parse(json: &[u8]) -> Result<DockerConfig, RegistryError> {
        let root: Value = serde_json::from_slice(json).map_err(|e| {
            // serde_json messages can quote the offending value; report only where it is.
            RegistryError::InvalidConfig(format!(
                "not valid JSON (line {}, column {})",
                e.line(),
                e.column()
            ))
        })?;
        let Value::Object(root) = root else {
            return Err(RegistryError::InvalidConfig(
                "expected a JSON object with an `auths` object".into(),
            ));
        };
        let auths = match root.get("auths") {
            Some(Value::Object(auths)) => auths,
            Some(_) => {
                return Err(RegistryError::InvalidConfig(
                    "`auths` must be an object".into(),
                ))
            }
            None => {
                return Err(RegistryError::InvalidConfig(
                    "missing `auths` (only the dockerconfigjson format is supported)".into(),
                ))
            }
        };
        let mut out = BTreeMap::new();
        for (key, entry) in auths {
            let host = normalize_host(key);
            if host.is_empty() {
                return Err(RegistryError::InvalidConfig(format!(
                    "auths: `{key}` does not name a registry host"
                )));
            }
            let Value::Object(entry) = entry else {
                return Err(RegistryError::InvalidConfig(format!(
                    "auths.{key}: expected an object"
                )));
            };
            let field = |name: &str| -> Result<Option<&str>, RegistryError> {
                match entry.get(name) {
                    None | Some(Value::Null) => Ok(None),
                    Some(Value::String(s)) if s.is_empty() => Ok(None),
                    Some(Value::String(s)) => Ok(Some(s.as_str())),
                    Some(_) => Err(RegistryError::InvalidConfig(format!(
                        "auths.{key}.{name}: expected a string"
                    ))),
                }
            };
            let (mut username, mut password) = (
                field("username")?.map(str::to_owned),
                field("password")?.map(str::to_owned),
            );
            if let Some(auth) = field("auth")? {
                let (u, p) = decode_auth(auth).map_err(|reason| {
                    RegistryError::InvalidConfig(format!("auths.{key}.auth: {reason}"))
                })?;
                username = Some(u);
                password = Some(p);
            }
            let credentials = if let Some(token) = field("identitytoken")? {
                Credentials::identity_token(username.unwrap_or_default(), token)
            } else {
                match (username, password) {
                    (Some(u), Some(p)) => Credentials::basic(u, p),
                    (None, None) => continue,
                    (Some(_), None) => {
                        return Err(RegistryError::InvalidConfig(format!(
                            "auths.{key}: `username` without `password`"
                        )))
                    }
                    (None, Some(_)) => {
                        return Err(RegistryError::InvalidConfig(format!(
                            "auths.{key}: `password` without `username`"
                        )))
                    }
                }
            };
            out.insert(host, credentials);
        }
        Ok(DockerConfig { auths: out })
    }

    /// Reads `data[".dockerconfigjson"]` of a `kubernetes.io/dockerconfigjson` Secret (or
    /// `stringData`, for a Secret built locally and never sent to the API server).
    ///
    /// Other Secret types are refused: the kubelet only takes this type as an image pull
    /// secret, so accepting an `Opaque` one here would make checks pass that pulls then fail.
    pub fn from_secret(secret: &Secret) -> Result<DockerConfig, RegistryError> {
        let name = format!(
            "{}/{}",
            secret.metadata.namespace.as_deref().unwrap_or("default"),
            secret.metadata.name.as_deref().unwrap_or("<unnamed>")
        );
        let kind = secret.type_.as_deref().unwrap_or("Opaque");
        if kind != DOCKERCONFIGJSON_TYPE {
            return Err(RegistryError::Secret {
                secret: name,
                reason: format!("has type `{kind}`, expected `{DOCKERCONFIGJSON_TYPE}`"),
            });
        }
        let bytes: &[u8] = if let Some(b) = secret
            .data
            .as_ref()
            .and_then(|d| d.get(DOCKERCONFIGJSON_KEY))
        {
            &b.0
        } else if let Some(s) = secret
            .string_data
            .as_ref()
            .and_then(|d| d.get(DOCKERCONFIGJSON_KEY))
        {
            s.as_bytes()
        } else {
            return Err(RegistryError::Secret {
                secret: name,
                reason: format!("has no `{DOCKERCONFIGJSON_KEY}` key"),
            });
        };
        DockerConfig::parse(bytes).map_err(|e| RegistryError::Secret {
            secret: name,
            reason: e.to_string(),
        })
    }

    /// The credentials for `host` (`host[:port]`, as in [`ImageRef::registry`]), if any.
    ///
    /// Matching is exact after normalisation: `registry.local:5000` and `registry.local`
    /// are different registries, as they are for Docker.
    pub fn credentials_for(&self, host: &str) -> Option<Credentials> {
        self.auths.get(&normalize_host(host)).cloned()
    }
}

/// Decodes a dockerconfigjson `auth` value into `(username, password)`.
fn decode_auth(auth: &str) -> Result<(String, String), &'static str> {
    // Docker writes padded base64; some tools leave the padding off.
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let bytes = LENIENT
        .decode(auth.trim())
        .map_err(|_| "not valid base64")?;
    let text = String::from_utf8(bytes).map_err(|_| "does not decode to UTF-8 text")?;
    let (user, password) = text
        .split_once(':')
        .ok_or("does not decode to `username:password`")?;
    if user.is_empty() {
        return Err("decodes to an empty username");
    }
    Ok((user.to_owned(), password.to_owned()))
}

/// A registry host as Docker keys credentials: no scheme, no path, lowercase, Docker Hub
/// under one name.
fn normalize_host(key: &str) -> String {
    let key = key.trim();
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = key
        .split('/')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            DOCKER_HUB.to_owned()
        }
        _ => host,
    }
}

// ---------------------------------------------------------------------------------------------
// Image references

/// What an [`ImageRef`] points at in its repository.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reference {
    /// A tag such as `0.0.14`; tags move, so a tag is resolved to a digest before reuse.
    Tag(String),
    /// A content digest such as `sha256:…`; immutable.
    Digest(String),
}

impl Reference {
    /// The tag or digest, as it appears in the manifest URL.
    pub fn as_str(&self) -> &str {
        match self {
            Reference::Tag(t) | Reference::Digest(t) => t,
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed image reference: which registry, which repository, which tag or digest.
///
/// Parsing follows Docker's rules, so the same string means the same image here, in the
/// build and in the Deployment: the first path component is a registry only when it has a
/// `.` or `:` or is `localhost`; otherwise the image is on Docker Hub (`docker.io`, with
/// `library/` for single-component names); no tag means `latest`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    /// `host[:port]`, e.g. `registry.local:5000`; `docker.io` for Docker Hub.
    pub registry: String,
    /// Repository path, e.g. `dify-plugins/agent-abc`.
    pub repository: String,
    /// Tag or digest.
    pub reference: Reference,
}

impl ImageRef {
    /// Parses `[registry/]repository[:tag][@digest]`, for example
    /// `registry.local:5000/dify-plugins/agent-abc:0.0.14` or `…@sha256:<hex>`.
    ///
    /// When both a tag and a digest are given the digest wins and the tag is dropped, as
    /// when Docker pulls such a reference.
    pub fn parse(s: &str) -> Result<ImageRef, RegistryError> {
        let invalid = |reason: &str| RegistryError::InvalidReference {
            reference: s.to_owned(),
            reason: reason.to_owned(),
        };
        if s.is_empty() {
            return Err(invalid("empty"));
        }
        if s.contains("://") {
            return Err(invalid(
                "no URL scheme expected; write `host[:port]/repository:tag`",
            ));
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid("contains whitespace"));
        }
        let (name, digest) = match s.split_once('@') {
            Some((name, digest)) => (name, Some(digest)),
            None => (s, None),
        };
        let last_component_start = name.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name[last_component_start..].find(':') {
            Some(i) => (
                &name[..last_component_start + i],
                Some(&name[last_component_start + i + 1..]),
            ),
            None => (name, None),
        };
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.')
                    || first.contains(':')
                    || first == "localhost"
                    || first.starts_with('[') =>
            {
                (normalize_host(first), rest.to_owned())
            }
            _ => (DOCKER_HUB.to_owned(), name.to_owned()),
        };
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        validate_host(&registry).map_err(|r| invalid(&r))?;
        validate_repository(&repository).map_err(|r| invalid(&r))?;
        let reference = match (tag, digest) {
            (_, Some(digest)) => {
                if !is_valid_digest(digest) {
                    return Err(invalid(
                        "the digest must be `sha256:` followed by 64 lowercase hex digits",
                    ));
                }
                Reference::Digest(digest.to_owned())
            }
            (Some(tag), None) => {
                validate_tag(tag).map_err(|r| invalid(&r))?;
                Reference::Tag(tag.to_owned())
            }
            (None, None) => Reference::Tag("latest".to_owned()),
        };
        Ok(ImageRef {
            registry,
            repository,
            reference,
        })
    }

    /// The same repository at `digest`: what a reused image is checked (and run) as.
    pub fn with_digest(&self, digest: impl Into<String>) -> ImageRef {
        ImageRef {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            reference: Reference::Digest(digest.into()),
        }
    }

    /// The host the registry API is served on: the registry itself, except for Docker Hub,
    /// whose API lives on `registry-1.docker.io`.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// Checks fields set by hand (they are public) before they go into a URL.
    fn validate(&self) -> Result<(), RegistryError> {
        let invalid = |reason: String| RegistryError::InvalidReference {
            reference: self.to_string(),
            reason,
        };
        validate_host(&self.registry).map_err(invalid)?;
        validate_repository(&self.repository).map_err(invalid)?;
        match &self.reference {
            Reference::Tag(t) => validate_tag(t).map_err(invalid),
            Reference::Digest(d) if is_valid_digest(d) => Ok(()),
            Reference::Digest(d) => Err(RegistryError::InvalidDigest { digest: d.clone() }),
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        match &self.reference {
            Reference::Tag(t) => write!(f, ":{t}"),
            Reference::Digest(d) => write!(f, "@{d}"),
        }
    }
}

/// `host[:port]`: DNS labels (letters, digits, inner `-`) joined by `.`, or a bracketed IPv6
/// address, then an optional port.
fn validate_host(host: &str) -> Result<(), String> {
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let Some((addr, after)) = rest.split_once(']') else {
            return Err(format!("registry `{host}`: unclosed `[`"));
        };
        if addr.is_empty() || !addr.chars().all(|c| c.is_ascii_hexdigit() || c == ':') {
            return Err(format!("registry `{host}`: invalid IPv6 address"));
        }
        match after {
            "" => (None, None),
            p => match p.strip_prefix(':') {
                Some(p) => (None, Some(p)),
                None => return Err(format!("registry `{host}`: junk after `]`")),
            },
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) => (Some(name), Some(port)),
            None => (Some(host), None),
        }
    };
    if let Some(name) = name {
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if name.is_empty() || !name.split('.').all(label_ok) {
            return Err(format!("registry `{host}` is not a valid host name"));
        }
    }
    if let Some(port) = port {
        if port.is_empty()
            || port.len() > 5
            || !port.chars().all(|c| c.is_ascii_digit())
            || port.parse::<u32>().map_or(true, |p| p == 0 || p > 65535)
        {
            return Err(format!("registry `{host}`: invalid port"));
        }
    }
    Ok(())
}

/// Repository path components as in the distribution spec: lowercase alphanumerics separated
/// by `.`, `_`, `__` or runs of `-`, joined by `/`.
fn validate_repository(repository: &str) -> Result<(), String> {
    if repository.is_empty() {
        return Err("empty repository".to_owned());
    }
    if repository.len() > 255 {
        return Err("repository longer than 255 characters".to_owned());
    }
    for component in repository.split('/') {
        if !is_valid_path_component(component) {
            let reason = if component.chars().any(|c| c.is_ascii_uppercase()) {
                "must be lowercase"
            } else {
                "must be lowercase letters and digits separated by `.`, `_`, `__` or `-`"
            };
            return Err(format!("repository component `{component}` {reason}"));
        }
    }
    Ok(())
}

fn is_valid_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    if !alnum(first) || !alnum(last) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let separator = &component[start..i];
        let ok = matches!(separator, "." | "_" | "__") || separator.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn validate_tag(tag: &str) -> Result<(), String> {
    let ok = !tag.is_empty()
        && tag.len() <= 128
        && !tag.starts_with(['.', '-'])
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "tag `{tag}` must be up to 128 letters, digits, `_`, `.` or `-`, not starting with `.` or `-`"
        ))
    }
}

/// `sha256:<64 lowercase hex>` or `sha512:<128 lowercase hex>`: the digests registries
/// actually serve.
fn is_valid_digest(digest: &str) -> bool {
    let lower_hex = |h: &str, len: usize| {
        h.len() == len
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    match digest.split_once(':') {
        Some(("sha256", hex)) => lower_hex(hex, 64),
        Some(("sha512", hex)) => lower_hex(hex, 128),
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------------
// WWW-Authenticate

/// One challenge of a `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Challenge {
    /// Lowercased scheme: `basic`, `bearer`, …
    scheme: String,
    /// Lowercased parameter names → values (quotes removed).
    params: HashMap<String, String>,
}

/// Parses `Bearer realm="…",service="…",scope="…"` (several challenges per header allowed).
fn parse_challenges(header: &str) -> Vec<Challenge> {
    let chars: Vec<char> = header.chars().collect();
    let mut out: Vec<Challenge> = Vec::new();
    let mut i = 0;
    let skip = |i: &mut usize, pred: &dyn Fn(char) -> bool| {
        while *i < chars.len() && pred(chars[*i]) {
            *i += 1;
        }
    };
    while i < chars.len() {
        skip(&mut i, &|c| c.is_whitespace() || c == ',');
        let start = i;
        skip(&mut i, &|c| !(c.is_whitespace() || c == ',' || c == '='));
        let token: String = chars[start..i].iter().collect();
        if token.is_empty() {
            // A stray `=`: skip it.
            i += 1;
            continue;
        }
        let mut j = i;
        skip(&mut j, &|c| c.is_whitespace());
        if j < chars.len() && chars[j] == '=' {
            // `name=value` belongs to the current challenge.
            j += 1;
            skip(&mut j, &|c| c.is_whitespace());
            let mut value = String::new();
            if j < chars.len() && chars[j] == '"' {
                j += 1;
                while j < chars.len() && chars[j] != '"' {
                    if chars[j] == '\\' && j + 1 < chars.len() {
                        j += 1;
                    }
                    value.push(chars[j]);
                    j += 1;
                }
                j += 1; // closing quote
            } else {
                while j < chars.len() && chars[j] != ',' && !chars[j].is_whitespace() {
                    value.push(chars[j]);
                    j += 1;
                }
            }
            i = j;
            if let Some(current) = out.last_mut() {
                current.params.insert(token.to_ascii_lowercase(), value);
            }
        } else {
            out.push(Challenge {
                scheme: token.to_ascii_lowercase(),
                params: HashMap::new(),
            });
            i = j;
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The client

/// How a request is authorised.
#[derive(Clone)]
enum Auth<'a> {
    Anonymous,
    Basic(&'a str, &'a str),
    Bearer(String),
}

impl Auth<'_> {
    fn apply(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self {
            Auth::Anonymous => request,
            // Both helpers mark the header sensitive, so it is never printed by reqwest/hyper.
            Auth::Basic(user, password) => request.basic_auth(user, Some(password)),
            Auth::Bearer(token) => request.bearer_auth(token),
        }
    }
}

/// Tokens are cached per registry, scope and credentials (fingerprint).
type TokenKey = (String, String, String);

struct CachedToken {
    token: String,
    expires: Instant,
}

/// `https` or `http`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Https,
    Http,
}

impl Scheme {
    fn as_str(self) -> &'static str {
        match self {
            Scheme::Https => "https",
            Scheme::Http => "http",
        }
    }
}

#[derive(Default)]
struct ClientState {
    tokens: HashMap<TokenKey, CachedToken>,
    /// The scheme each insecure registry answered on, so the `https` probe runs once.
    schemes: HashMap<String, Scheme>,
    /// Registries that asked for basic auth: later requests send credentials right away.
    basic: HashSet<String>,
}

/// Which image a request is about, for error messages.
struct Target<'a> {
    image: &'a ImageRef,
    what: String,
}

impl Target<'_> {
    fn registry(&self) -> String {
        self.image.registry.clone()
    }

    fn repository(&self) -> String {
        self.image.repository.clone()
    }

    fn protocol(&self, reason: impl Into<String>) -> RegistryError {
        RegistryError::Protocol {
            registry: self.registry(),
            repository: self.repository(),
            reason: reason.into(),
        }
    }

    fn unauthorized(&self, reason: impl Into<String>) -> RegistryError {
        RegistryError::Unauthorized {
            registry: self.registry(),
            repository: self.repository(),
            reason: reason.into(),
        }
    }

    fn status(&self, status: StatusCode) -> RegistryError {
        match status {
            StatusCode::UNAUTHORIZED => self.unauthorized("the registry refused the request"),
            StatusCode::FORBIDDEN => RegistryError::Denied {
                registry: self.registry(),
                repository: self.repository(),
            },
            s => RegistryError::Status {
                registry: self.registry(),
                repository: self.repository(),
                what: self.what.clone(),
                status: s.as_u16(),
            },
        }
    }

    fn transport(&self, e: &reqwest::Error, timeout: Duration) -> RegistryError {
        if e.is_timeout() {
            RegistryError::Timeout {
                registry: self.registry(),
                repository: self.repository(),
                what: self.what.clone(),
                after: timeout,
            }
        } else {
            RegistryError::Transport {
                registry: self.registry(),
                repository: self.repository(),
                what: self.what.clone(),
                reason: error_chain(e),
            }
        }
    }
}

/// The error and its sources on one line; reqwest's own message repeats the URL, which the
/// caller already names, so it is dropped.
fn error_chain(e: &reqwest::Error) -> String {
    use std::error::Error as _;
    let mut out = String::new();
    let mut source = e.source();
    while let Some(s) = source {
        let message = s.to_string();
        if !out.contains(&message) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&message);
        }
        source = s.source();
    }
    if out.is_empty() {
        out = if e.is_connect() {
            "connection failed".to_owned()
        } else {
            "request failed".to_owned()
        };
    }
    out
}

/// Checks images on OCI distribution registries: `HEAD` a manifest, authenticate as the
/// registry asks, cache tokens, retry transient failures.
///
/// One client is meant to be shared by a whole reconcile (it is `Send + Sync`); its token
/// cache then saves a token request per image. Every request is bounded by the timeout given
/// to [`RegistryClient::new`]; connection errors and 5xx answers are retried twice, with a
/// short backoff. Timeouts are not retried, so a check never takes much more than three
/// timeouts.
pub struct RegistryClient {
    /// `Err` only if the TLS backend could not be set up; reported on first use.
    http: Result<reqwest::Client, String>,
    insecure: bool,
    timeout: Duration,
    state: Mutex<ClientState>,
}

impl fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The state holds tokens: never print it.
        f.debug_struct("RegistryClient")
            .field("insecure", &self.insecure)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RegistryClient {
    /// A client whose every request times out after `timeout`.
    ///
    /// `insecure` mirrors `spec.registry.insecure` and means what it means for the build
    /// (Kaniko's `--insecure --skip-tls-verify`): the registry is tried over HTTPS without
    /// certificate verification first, and over plain HTTP when no TLS connection can be
    /// made; the scheme that worked is remembered per registry. Without `insecure` only
    /// verified HTTPS is used, and credentials are never sent to a plain-HTTP token realm.
    pub fn new(insecure: bool, timeout: Duration) -> RegistryClient {
        let http = reqwest::Client::builder()
            .user_agent(concat!("plugsync/", env!("CARGO_PKG_VERSION")))
            .timeout(timeout)
            .connect_timeout(timeout.min(MAX_CONNECT_TIMEOUT))
            .danger_accept_invalid_certs(insecure)
            // reqwest drops Authorization on redirects to another host; a manifest HEAD has
            // no business redirecting far.
            .redirect(reqwest::redirect::Policy::limited(5))
            .build()
            .map_err(|e| error_chain(&e));
        RegistryClient {
            http,
            insecure,
            timeout,
            state: Mutex::new(ClientState::default()),
        }
    }

    /// `HEAD /v2/<repository>/manifests/<reference>` with the OCI and Docker manifest
    /// `Accept` types: `Ok(Some(digest))` when the manifest exists (from
    /// `Docker-Content-Digest`; when a registry leaves that header out, the digest reference
    /// itself, or for a tag the sha256 of the manifest fetched with `GET`), `Ok(None)` on
    /// `404`, and an error otherwise.
    ///
    /// `credentials` are used only if the registry asks for them (see the module docs).
    pub async fn manifest_digest(
        &self,
        image: &ImageRef,
        credentials: Option<&Credentials>,
    ) -> Result<Option<String>, RegistryError> {
        image.validate()?;
        let target = Target {
            image,
            what: format!("HEAD manifest {}", image.reference),
        };
        let response = self.authorized(&target, Method::HEAD, credentials).await?;
        let status = response.status();
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(target.status(status));
        }
        let header = response
            .headers()
            .get("docker-content-digest")
            .map(|v| v.to_str().map(str::trim).unwrap_or_default().to_owned());
        let digest = match (header, &image.reference) {
            (Some(d), _) => {
                if !is_valid_digest(&d) {
                    return Err(target.protocol(format!(
                        "the registry answered with an invalid Docker-Content-Digest `{d}`"
                    )));
                }
                d
            }
            (None, Reference::Digest(d)) => d.clone(),
            (None, Reference::Tag(_)) => {
                let target = Target {
                    image,
                    what: format!("GET manifest {}", image.reference),
                };
                match self.manifest_sha256(&target, credentials).await? {
                    Some(d) => d,
                    // Deleted between the HEAD and the GET.
                    None => return Ok(None),
                }
            }
        };
        if let Reference::Digest(want) = &image.reference {
            if *want != digest {
                return Err(target.protocol(format!(
                    "asked for manifest {want} but the registry answered with {digest}"
                )));
            }
        }
        Ok(Some(digest))
    }

    /// Whether the manifest `digest` still exists in `image`'s repository (the tag or digest
    /// of `image` itself is ignored): the check that decides whether a recorded image can be
    /// reused instead of rebuilt. Registries garbage-collect, and people delete tags, so a
    /// digest in the lock is not proof that the image is still there.
    pub async fn has_manifest(
        &self,
        image: &ImageRef,
        digest: &str,
        credentials: Option<&Credentials>,
    ) -> Result<bool, RegistryError> {
        if !is_valid_digest(digest) {
            return Err(RegistryError::InvalidDigest {
                digest: digest.to_owned(),
            });
        }
        let found = self
            .manifest_digest(&image.with_digest(digest), credentials)
            .await?;
        Ok(found.is_some())
    }

    /// `GET`s the manifest and hashes it, for registries that omit `Docker-Content-Digest`.
    async fn manifest_sha256(
        &self,
        target: &Target<'_>,
        credentials: Option<&Credentials>,
    ) -> Result<Option<String>, RegistryError> {
        let response = self.authorized(target, Method::GET, credentials).await?;
        let status = response.status();
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(target.status(status));
        }
        let body = self
            .read_limited(target, response, MAX_MANIFEST_BYTES)
            .await?
            .ok_or_else(|| {
                target.protocol(format!("manifest larger than {MAX_MANIFEST_BYTES} bytes"))
            })?;
        Ok(Some(format!(
            "sha256:{}",
            hex::encode(Sha256::digest(&body))
        )))
    }

    /// The body, or `None` when it exceeds `limit`.
    async fn read_limited(
        &self,
        target: &Target<'_>,
        mut response: reqwest::Response,
        limit: usize,
    ) -> Result<Option<Vec<u8>>, RegistryError> {
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| target.transport(&e, self.timeout))?
        {
            if body.len() + chunk.len() > limit {
                return Ok(None);
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Some(body))
    }

    fn state(&self) -> MutexGuard<'_, ClientState> {
        // A panic while holding the lock cannot leave the maps inconsistent (single inserts
        // and removes), so a poisoned lock is still usable.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn cached_token(&self, key: &TokenKey) -> Option<String> {
        let mut state = self.state();
        match state.tokens.get(key) {
            Some(t) if t.expires > Instant::now() => Some(t.token.clone()),
            Some(_) => {
                state.tokens.remove(key);
                None
            }
            None => None,
        }
    }

    /// A manifest request, authenticated as the registry demands.
    ///
    /// Returns the response for any status but 401; a 401 that survives authentication is an
    /// [`RegistryError::Unauthorized`] saying why.
    async fn authorized(
        &self,
        target: &Target<'_>,
        method: Method,
        credentials: Option<&Credentials>,
    ) -> Result<reqwest::Response, RegistryError> {
        let image = target.image;
        let fingerprint = credentials
            .map(Credentials::fingerprint)
            .unwrap_or_default();
        let pull_scope = format!("repository:{}:pull", image.repository);
        let password = credentials.and_then(|c| match &c.secret {
            CredentialSecret::Password(p) => Some((c.username.as_str(), p.as_str())),
            CredentialSecret::IdentityToken(_) => None,
        });

        // Start with what worked before: a cached token, or basic auth for a registry that
        // asked for it. Otherwise anonymous, as the spec says.
        let own_key: TokenKey = (
            image.registry.clone(),
            pull_scope.clone(),
            fingerprint.clone(),
        );
        let asked_for_basic = self.state().basic.contains(&image.registry);
        let first = match (self.cached_token(&own_key), password) {
            (Some(token), _) => Auth::Bearer(token),
            (None, Some((user, pw))) if asked_for_basic => Auth::Basic(user, pw),
            (None, _) => Auth::Anonymous,
        };
        let response = self.send_registry(target, &method, &first).await?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }

        let challenges: Vec<Challenge> = response
            .headers()
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(parse_challenges)
            .collect();
        let bearer = challenges.iter().find(|c| c.scheme == "bearer");
        let basic = challenges.iter().any(|c| c.scheme == "basic");

        let second = if let Some(bearer) = bearer {
            let realm = bearer
                .params
                .get("realm")
                .ok_or_else(|| target.protocol("Bearer challenge without a realm"))?;
            let scope = bearer
                .params
                .get("scope")
                .cloned()
                .unwrap_or_else(|| pull_scope.clone());
            let key: TokenKey = (image.registry.clone(), scope.clone(), fingerprint);
            let cached = if matches!(first, Auth::Bearer(_)) {
                // The token we sent was refused: forget it and fetch a fresh one.
                self.state().tokens.remove(&own_key);
                self.state().tokens.remove(&key);
                None
            } else {
                self.cached_token(&key)
            };
            let token = match cached {
                Some(token) => token,
                None => {
                    let service = bearer.params.get("service").map(String::as_str);
                    let (token, lifetime) = self
                        .fetch_token(target, realm, service, &scope, credentials)
                        .await?;
                    let now = Instant::now();
                    let mut state = self.state();
                    // One entry per repository: drop expired ones so a long-running
                    // controller does not accumulate them.
                    state.tokens.retain(|_, t| t.expires > now);
                    state.tokens.insert(
                        key,
                        CachedToken {
                            token: token.clone(),
                            expires: now + lifetime,
                        },
                    );
                    drop(state);
                    token
                }
            };
            Auth::Bearer(token)
        } else if basic {
            let Some(credentials) = credentials else {
                return Err(target.unauthorized(format!(
                    "the registry requires credentials and the Secret has none for `{}`",
                    image.registry
                )));
            };
            let Some((user, pw)) = password else {
                return Err(target.unauthorized(format!(
                    "the registry asks for basic auth, but the Secret only has an identity token for `{}` (user `{}`)",
                    image.registry,
                    credentials.username()
                )));
            };
            if matches!(first, Auth::Basic(..)) {
                return Err(target.unauthorized(format!(
                    "the registry rejected the credentials for user `{user}`"
                )));
            }
            self.state().basic.insert(image.registry.clone());
            Auth::Basic(user, pw)
        } else {
            return Err(target.unauthorized(
                "401 without a supported WWW-Authenticate challenge (Basic or Bearer)",
            ));
        };

        let response = self.send_registry(target, &method, &second).await?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        Err(target.unauthorized(match (&second, credentials) {
            (Auth::Basic(user, _), _) => {
                format!("the registry rejected the credentials for user `{user}`")
            }
            (_, Some(c)) => format!(
                "the registry rejected the token issued for user `{}`",
                c.username()
            ),
            (_, None) => format!(
                "anonymous access refused and the Secret has no credentials for `{}`",
                image.registry
            ),
        }))
    }

    /// Exchanges credentials (or nothing, for anonymous pulls) for a bearer token at `realm`.
    /// Returns the token and how long it may be cached.
    async fn fetch_token(
        &self,
        target: &Target<'_>,
        realm: &str,
        service: Option<&str>,
        scope: &str,
        credentials: Option<&Credentials>,
    ) -> Result<(String, Duration), RegistryError> {
        let mut url = Url::parse(realm)
            .map_err(|_| target.protocol("the Bearer challenge's realm is not an absolute URL"))?;
        let shown_realm = redact_url(&url);
        let token_error = |reason: String| RegistryError::Token {
            registry: target.registry(),
            repository: target.repository(),
            realm: shown_realm.clone(),
            reason,
        };
        match url.scheme() {
            "https" => {}
            "http" if self.insecure || credentials.is_none() => {}
            "http" => {
                return Err(token_error(
                    "refusing to send credentials to a plain-HTTP token realm (set registry.insecure to allow it)"
                        .to_owned(),
                ))
            }
            other => return Err(token_error(format!("unsupported realm scheme `{other}`"))),
        }
        let client = self.client()?;
        let token_target = Target {
            image: target.image,
            what: format!("token request for {scope}"),
        };

        let request = match credentials.map(|c| (&c.username, &c.secret)) {
            Some((user, CredentialSecret::IdentityToken(refresh))) => {
                // OAuth2 refresh-token grant (distribution's token spec, `docker login`'s
                // identity tokens).
                let mut form = url::form_urlencoded::Serializer::new(String::new());
                form.append_pair("grant_type", "refresh_token");
                if let Some(service) = service {
                    form.append_pair("service", service);
                }
                form.append_pair("scope", scope);
                form.append_pair("client_id", CLIENT_ID);
                form.append_pair("refresh_token", refresh);
                let body = form.finish();
                tracing::debug!(registry = %target.image.registry, user = %user, scope, "fetching registry token with an identity token");
                RequestSpec {
                    method: Method::POST,
                    url: url.clone(),
                    auth: Auth::Anonymous,
                    form: Some(body),
                }
            }
            other => {
                {
                    let mut query = url.query_pairs_mut();
                    if let Some(service) = service {
                        query.append_pair("service", service);
                    }
                    query.append_pair("scope", scope);
                }
                let auth = match other {
                    Some((user, CredentialSecret::Password(password))) => {
                        Auth::Basic(user.as_str(), password.as_str())
                    }
                    _ => Auth::Anonymous,
                };
                tracing::debug!(registry = %target.image.registry, scope, anonymous = matches!(auth, Auth::Anonymous), "fetching registry token");
                RequestSpec {
                    method: Method::GET,
                    url: url.clone(),
                    auth,
                    form: None,
                }
            }
        };
        let response = self
            .with_retries(&token_target, || {
                let mut builder = request
                    .auth
                    .apply(client.request(request.method.clone(), request.url.clone()));
                if let Some(form) = &request.form {
                    builder = builder
                        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                        .body(form.clone());
                }
                builder.send()
            })
            .await?;
        let status = response.status();
        if !status.is_success() {
            // Never the body: token servers echo request details back.
            return Err(token_error(match (status, credentials) {
                (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN, Some(c)) => format!(
                    "the token server rejected the credentials for user `{}` (HTTP {})",
                    c.username(),
                    status.as_u16()
                ),
                (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN, None) => format!(
                    "anonymous token refused (HTTP {}) and the Secret has no credentials for `{}`",
                    status.as_u16(),
                    target.image.registry
                ),
                _ => format!("HTTP {}", status.as_u16()),
            }));
        }
        let body = self
            .read_limited(&token_target, response, MAX_TOKEN_RESPONSE_BYTES)
            .await?
            .ok_or_else(|| token_error("token response too large".to_owned()))?;
        let json: Value = serde_json::from_slice(&body)
            .map_err(|_| token_error("token response is not JSON".to_owned()))?;
        let token = ["token", "access_token"]
            .iter()
            .find_map(|k| {
                json.get(k)
                    .and_then(Value::as_str)
                    .filter(|t| !t.is_empty())
            })
            .ok_or_else(|| token_error("token response has no `token`".to_owned()))?
            .to_owned();
        let seconds = json
            .get("expires_in")
            .and_then(Value::as_u64)
            .filter(|s| *s > 0)
            .unwrap_or(DEFAULT_TOKEN_SECONDS);
        let lifetime = Duration::from_secs(seconds).saturating_sub(TOKEN_EXPIRY_MARGIN);
        Ok((token, lifetime))
    }

    fn client(&self) -> Result<&reqwest::Client, RegistryError> {
        self.http
            .as_ref()
            .map_err(|message| RegistryError::Client(message.clone()))
    }

    /// One manifest request to the registry, with retries and (for insecure registries) the
    /// HTTPS → HTTP fallback.
    async fn send_registry(
        &self,
        target: &Target<'_>,
        method: &Method,
        auth: &Auth<'_>,
    ) -> Result<reqwest::Response, RegistryError> {
        let client = self.client()?;
        let image = target.image;
        let path = format!(
            "/v2/{}/manifests/{}",
            image.repository,
            image.reference.as_str()
        );
        let request = |scheme: Scheme| {
            let url = format!("{}://{}{}", scheme.as_str(), image.api_host(), path);
            auth.apply(client.request(method.clone(), url))
                .header(ACCEPT, MANIFEST_ACCEPT)
                .send()
        };
        let remember = |scheme: Scheme| {
            if self.insecure {
                self.state().schemes.insert(image.registry.clone(), scheme);
            }
        };
        let send = || async {
            let remembered = self.state().schemes.get(&image.registry).copied();
            let (first, fallback) = match remembered {
                Some(scheme) => (scheme, None),
                None if self.insecure => (Scheme::Https, Some(Scheme::Http)),
                None => (Scheme::Https, None),
            };
            match (request(first).await, fallback) {
                (Err(e), Some(fallback)) if e.is_connect() => {
                    tracing::debug!(registry = %image.registry, error = %error_chain(&e), "no TLS connection to the insecure registry; trying plain HTTP");
                    let response = request(fallback).await?;
                    remember(fallback);
                    Ok(response)
                }
                (result, _) => {
                    let response = result?;
                    if remembered.is_none() {
                        remember(first);
                    }
                    Ok(response)
                }
            }
        };
        self.with_retries(target, send).await
    }

    /// Runs `send` until it gets an answer that is not a 5xx, retrying connection errors and
    /// 5xx answers [`EXTRA_ATTEMPTS`] times with a doubling delay.
    async fn with_retries<F, Fut>(
        &self,
        target: &Target<'_>,
        send: F,
    ) -> Result<reqwest::Response, RegistryError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<reqwest::Response, reqwest::Error>>,
    {
        let mut attempt = 0;
        loop {
            let result = send().await;
            let retry = match &result {
                Ok(r) => r.status().is_server_error(),
                Err(e) => e.is_connect(),
            };
            if !retry || attempt >= EXTRA_ATTEMPTS {
                return result.map_err(|e| target.transport(&e, self.timeout));
            }
            let delay = RETRY_BASE_DELAY * 2u32.pow(attempt);
            attempt += 1;
            match &result {
                Ok(r) => {
                    tracing::debug!(registry = %target.image.registry, repository = %target.image.repository, what = %target.what, status = r.status().as_u16(), ?delay, attempt, "registry answered with a server error; retrying")
                }
                Err(e) => {
                    tracing::debug!(registry = %target.image.registry, repository = %target.image.repository, what = %target.what, error = %error_chain(e), ?delay, attempt, "registry request failed; retrying")
                }
            }
            tokio::time::sleep(delay).await;
        }
    }
}

/// A token request, built once and sent possibly several times.
struct RequestSpec<'a> {
    method: Method,
    url: Url,
    auth: Auth<'a>,
    form: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_challenge() {
        let c = parse_challenges(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:samalba/my-app:pull,push""#,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(c[0].params["realm"], "https://auth.docker.io/token");
        assert_eq!(c[0].params["service"], "registry.docker.io");
        assert_eq!(c[0].params["scope"], "repository:samalba/my-app:pull,push");
    }

    #[test]
    fn parses_basic_and_several_challenges() {
        let c = parse_challenges(
            r#"Basic realm="Registry Realm", Bearer realm=https://t/x , error = "invalid_token""#,
        );
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].scheme, "basic");
        assert_eq!(c[0].params["realm"], "Registry Realm");
        assert_eq!(c[1].scheme, "bearer");
        assert_eq!(c[1].params["realm"], "https://t/x");
        assert_eq!(c[1].params["error"], "invalid_token");
        let c = parse_challenges(r#"Bearer realm="a\"b""#);
        assert_eq!(c[0].params["realm"], "a\"b");
        assert!(parse_challenges("").is_empty());
        assert_eq!(parse_challenges("Basic")[0].scheme, "basic");
    }

    #[test]
    fn path_components() {
        for ok in ["a", "agent-abc", "a__b", "a.b", "a---b", "a_b", "0"] {
            assert!(is_valid_path_component(ok), "{ok}");
        }
        for bad in ["", "A", "-a", "a-", "a..b", "a___b", "a._b", "a b", "a/b"] {
            assert!(!is_valid_path_component(bad), "{bad}");
        }
    }

    #[test]
    fn hosts() {
        for ok in [
            "docker.io",
            "localhost",
            "registry.local:5000",
            "127.0.0.1:5000",
            "[::1]:5000",
            "[::1]",
            "My-Host.example",
        ] {
            assert!(validate_host(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "a..b",
            "-a.b",
            "a.b:",
            "a.b:0",
            "a.b:70000",
            "a.b:x",
            "[::1",
            "[zz]",
            "a_b.c",
        ] {
            assert!(validate_host(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn digests() {
        let hex64 = "a".repeat(64);
        assert!(is_valid_digest(&format!("sha256:{hex64}")));
        assert!(is_valid_digest(&format!("sha512:{}", "0".repeat(128))));
        assert!(!is_valid_digest(&format!("sha256:{}", "A".repeat(64))));
        assert!(!is_valid_digest(&format!("sha256:{}", "a".repeat(63))));
        assert!(!is_valid_digest(&format!("md5:{hex64}")));
        assert!(!is_valid_digest(&hex64));
    }

    #[test]
    fn client_futures_are_send() {
        // The controller spawns reconciles on a multi-threaded runtime: no lock guard may be
        // held across an await.
        fn is_send<T: Send>(_: T) {}
        let client = RegistryClient::new(false, Duration::from_secs(1));
        let image = ImageRef {
            registry: "r.example".into(),
            repository: "a".into(),
            reference: Reference::Tag("1".into()),
        };
        is_send(client.manifest_digest(&image, None));
        is_send(client.has_manifest(&image, "sha256:0", None));
    }

    #[test]
    fn credential_fingerprints_differ_and_hide_the_secret() {
        let a = Credentials::basic("u", "secret-1");
        let b = Credentials::basic("u", "secret-2");
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert!(!a.fingerprint().contains("secret"));
        assert_ne!(
            Credentials::basic("u", "x").fingerprint(),
            Credentials::identity_token("u", "x").fingerprint()
        );
    }
}
