//! Asking an image registry whether an image is still there.
//!
//! plugsync reuses images instead of rebuilding them: when the lock (or an earlier `Plugin`)
//! already records an image digest for identical build inputs, and the registry still has that
//! manifest, no build runs at all. This module answers the "still has that manifest" part with
//! oras-project's `oci-client`: one `HEAD /v2/<repository>/manifests/<reference>` (a `GET` when
//! the registry leaves out `Docker-Content-Digest`), after the client's `GET /v2/` discovers
//! how the registry wants to be authenticated. It never pulls layers and never pushes.
//!
//! What stays here is what the crate cannot know: credentials come only from a Kubernetes
//! `kubernetes.io/dockerconfigjson` Secret ([`DockerConfig::from_secret`]), the same Secret the
//! build pushes with, mapped to registry hosts the way Docker does (scheme and path dropped,
//! Docker Hub's aliases folded, `auth` base64-decoded). Credential helpers (`credsStore`,
//! `credHelpers`) cannot run inside the cluster and are ignored. `oci-client` answers a
//! `Basic` challenge with the Secret's username and password, and a `Bearer` challenge by
//! fetching a token from the realm with them (anonymously without credentials); tokens are
//! cached per registry and repository until they expire.
//!
//! Secrets (passwords, identity tokens, bearer tokens) never appear in [`RegistryError`]
//! messages, logs or `Debug` output: errors are built here from the kind of failure, never
//! from the registry's or token server's answer (token servers echo requests back), and
//! `oci-client` runs with logging off, since its debug lines quote those answers.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;
use k8s_openapi::api::core::v1::Secret;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::RegistryOperation;
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use tracing::instrument::WithSubscriber as _;
use tracing::subscriber::NoSubscriber;

pub use oci_client::Reference;

/// The name Docker Hub images carry in references (`docker.io/library/nginx:latest`).
pub(crate) const DOCKER_HUB: &str = "docker.io";

/// The Secret type whose `.dockerconfigjson` key holds registry credentials.
pub(crate) const DOCKERCONFIGJSON_TYPE: &str = "kubernetes.io/dockerconfigjson";

/// The data key of a [`DOCKERCONFIGJSON_TYPE`] Secret.
pub(crate) const DOCKERCONFIGJSON_KEY: &str = ".dockerconfigjson";

/// Extra attempts after a connection error or a 5xx answer.
const EXTRA_ATTEMPTS: u32 = 2;

/// Delay before the first retry; doubled for each further one.
const RETRY_BASE_DELAY: Duration = Duration::from_millis(200);

/// Upper bound on the connect phase of a request (each attempt as a whole is bounded by the
/// client's timeout).
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// A digest that is not `<algorithm>:<hex>` with a supported algorithm and length.
    #[error("invalid digest `{digest}`: expected `sha256:` followed by 64 lowercase hex digits")]
    InvalidDigest {
        /// The digest as given.
        digest: String,
    },
    /// The credentials are of a kind this check cannot use.
    #[error("registry {registry}: {reason}")]
    Unsupported {
        /// `host[:port]` of the registry.
        registry: String,
        /// What is not supported, and what to do instead.
        reason: String,
    },
    /// The request never got an HTTP answer (connection refused, TLS failure, reset, …),
    /// after retries.
    #[error("registry {registry}, repository {repository}: request failed: {reason}")]
    Transport {
        /// `host[:port]` of the registry.
        registry: String,
        /// Repository path in the registry.
        repository: String,
        /// The transport error chain.
        reason: String,
    },
    /// The check did not finish within the client's timeout.
    #[error("registry {registry}, repository {repository}: no answer within {after:?}")]
    Timeout {
        /// `host[:port]` of the registry.
        registry: String,
        /// Repository path in the registry.
        repository: String,
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
        /// Why: no credentials, rejected credentials.
        reason: String,
    },
    /// The credentials were accepted but may not read this repository (HTTP 403).
    #[error("registry {registry}, repository {repository}: access denied; the credentials in the Secret may not pull this repository")]
    Denied {
        /// `host[:port]` of the registry.
        registry: String,
        /// Repository path in the registry.
        repository: String,
    },
    /// The token server of a `Bearer` challenge refused or failed to issue a token.
    #[error("registry {registry}, repository {repository}: token request failed: {reason}")]
    Token {
        /// `host[:port]` of the registry.
        registry: String,
        /// Repository path in the registry.
        repository: String,
        /// Why; never the response body, which may echo credentials.
        reason: String,
    },
    /// An HTTP status this protocol does not expect (after retries for 5xx).
    #[error("registry {registry}, repository {repository}: unexpected HTTP status {status}")]
    Status {
        /// `host[:port]` of the registry.
        registry: String,
        /// Repository path in the registry.
        repository: String,
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

    /// The password (or access token used as one), `None` for an identity token: what the
    /// CLI's private inventory (`plugsync inventory`, `search`) sends with basic auth.
    pub fn password(&self) -> Option<&str> {
        match &self.secret {
            CredentialSecret::Password(p) => Some(p),
            CredentialSecret::IdentityToken(_) => None,
        }
    }

    /// A short fingerprint that tells credentials apart (keys the `oci-client`s, so a token
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

    /// The registry hosts it holds credentials for (normalized as in
    /// [`DockerConfig::credentials_for`]): the CLI hands them all to the package clients.
    pub fn hosts(&self) -> impl Iterator<Item = &str> {
        self.auths.keys().map(String::as_str)
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

/// Parses `[registry/]repository[:tag][@digest]` with Docker's rules (`oci-client`'s
/// [`Reference`]): the first path component is a registry only when it has a `.` or `:` or is
/// `localhost`; otherwise the image is on Docker Hub (`docker.io`, with `library/` for
/// single-component names); no tag means `latest`. With both a tag and a digest, the digest
/// is what the registry is asked for.
pub fn parse_image(s: &str) -> Result<Reference, RegistryError> {
    s.parse::<Reference>()
        .map_err(|e| RegistryError::InvalidReference {
            reference: s.to_owned(),
            reason: e.to_string(),
        })
}

/// The same repository at `digest`, validated: what a reused image is checked (and run) as.
pub fn with_digest(image: &Reference, digest: &str) -> Result<Reference, RegistryError> {
    let invalid = || RegistryError::InvalidDigest {
        digest: digest.to_owned(),
    };
    let (algorithm, hex) = digest.split_once(':').ok_or_else(invalid)?;
    // Reference parsing checks the algorithm and the length; registries serve lowercase hex.
    if algorithm != "sha256" && algorithm != "sha512"
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(invalid());
    }
    format!("{}/{}@{digest}", image.registry(), image.repository())
        .parse()
        .map_err(|_| invalid())
}

// ---------------------------------------------------------------------------------------------
// The client

/// `https` (verified, or not with `insecure`) or plain `http`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Scheme {
    Https,
    Http,
}

/// One `oci-client` per scheme and credentials: the crate keeps the first credentials it
/// sees for a registry, so a client shared between Secrets would answer for the wrong one.
type ClientKey = (Scheme, String);

#[derive(Default)]
struct ClientState {
    clients: HashMap<ClientKey, Arc<oci_client::Client>>,
    /// `(scheme, credentials fingerprint, registry, repository)` whose authentication
    /// (`GET /v2/`, and a token for a Bearer challenge) already succeeded; later checks use
    /// the client's cached token or basic credentials, and it renews expired tokens itself.
    authenticated: HashSet<(Scheme, String, String, String)>,
    /// The scheme each insecure registry answered on, so the `https` probe runs once.
    schemes: HashMap<String, Scheme>,
}

/// Checks images on OCI distribution registries through `oci-client`, with a timeout on each
/// attempt and retries for transient failures.
///
/// One client is meant to be shared by a whole reconcile (it is `Send + Sync`): its token
/// cache then saves a token request per image. Each attempt (authentication and the manifest
/// request together) is bounded by the timeout given to [`RegistryClient::new`]; connection
/// errors and 5xx answers are retried twice, with a short backoff. Timeouts are not retried,
/// so a check never takes much more than one timeout.
pub struct RegistryClient {
    insecure: bool,
    timeout: Duration,
    state: Mutex<ClientState>,
}

impl fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The clients hold credentials and tokens: never print them.
        f.debug_struct("RegistryClient")
            .field("insecure", &self.insecure)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Why one attempt failed, before it becomes a [`RegistryError`] with its context.
enum Failure {
    /// Authentication (`GET /v2/` and the token request).
    Auth(OciDistributionError),
    /// The manifest request.
    Manifest(OciDistributionError),
}

impl Failure {
    fn error(&self) -> &OciDistributionError {
        match self {
            Failure::Auth(e) | Failure::Manifest(e) => e,
        }
    }

    /// A connection that could not be made (refused, TLS handshake failed): the insecure
    /// fallback to plain HTTP, and a retry.
    fn is_connect(&self) -> bool {
        matches!(self.error(), OciDistributionError::RequestError(e) if e.is_connect())
    }

    fn is_transient(&self) -> bool {
        self.is_connect()
            || matches!(self.error(), OciDistributionError::ServerError { code, .. } if *code >= 500)
    }
}

impl RegistryClient {
    /// A client whose every attempt times out after `timeout`.
    ///
    /// `insecure` mirrors `spec.registry.insecure` and means what it means for the build
    /// (Kaniko's `--insecure --skip-tls-verify`): the registry is tried over HTTPS without
    /// certificate verification first, and over plain HTTP when no TLS connection can be
    /// made; the scheme that worked is remembered per registry. Without `insecure` only
    /// verified HTTPS is used.
    pub fn new(insecure: bool, timeout: Duration) -> RegistryClient {
        RegistryClient {
            insecure,
            timeout,
            state: Mutex::new(ClientState::default()),
        }
    }

    /// The digest of `image`'s manifest (OCI or Docker, single-platform or index):
    /// `Ok(Some(digest))` when it exists, `Ok(None)` when the registry says it does not
    /// (HTTP 404), and an error otherwise.
    ///
    /// `credentials` are used only if the registry asks for them (see the module docs).
    pub async fn manifest_digest(
        &self,
        image: &Reference,
        credentials: Option<&Credentials>,
    ) -> Result<Option<String>, RegistryError> {
        let auth = match credentials.map(|c| (&c.username, &c.secret)) {
            None => RegistryAuth::Anonymous,
            Some((user, CredentialSecret::Password(password))) => {
                RegistryAuth::Basic(user.clone(), password.clone())
            }
            Some((user, CredentialSecret::IdentityToken(_))) => {
                return Err(RegistryError::Unsupported {
                    registry: image.registry().to_owned(),
                    reason: format!(
                        "the Secret has an identity token for user `{user}`, which the registry check cannot exchange; put a username and password (or access token) in the Secret"
                    ),
                })
            }
        };
        let fingerprint = credentials
            .map(Credentials::fingerprint)
            .unwrap_or_default();
        let mut attempt = 0;
        loop {
            let outcome =
                tokio::time::timeout(self.timeout, self.attempt(image, &auth, &fingerprint)).await;
            let failure = match outcome {
                Err(_elapsed) => {
                    return Err(RegistryError::Timeout {
                        registry: image.registry().to_owned(),
                        repository: image.repository().to_owned(),
                        after: self.timeout,
                    })
                }
                Ok(Ok(found)) => return Ok(found),
                Ok(Err(failure)) => failure,
            };
            if !failure.is_transient() || attempt >= EXTRA_ATTEMPTS {
                return Err(describe(image, credentials, &failure, self.timeout));
            }
            let delay = RETRY_BASE_DELAY * 2u32.pow(attempt);
            attempt += 1;
            tracing::debug!(registry = %image.registry(), repository = %image.repository(), error = %describe(image, credentials, &failure, self.timeout), ?delay, attempt, "registry check failed; retrying");
            tokio::time::sleep(delay).await;
        }
    }

    /// Whether the manifest `digest` still exists in `image`'s repository (the tag or digest
    /// of `image` itself is ignored): the check that decides whether a recorded image can be
    /// reused instead of rebuilt. Registries garbage-collect, and people delete tags, so a
    /// digest in the lock is not proof that the image is still there.
    pub async fn has_manifest(
        &self,
        image: &Reference,
        digest: &str,
        credentials: Option<&Credentials>,
    ) -> Result<bool, RegistryError> {
        let pinned = with_digest(image, digest)?;
        Ok(self.manifest_digest(&pinned, credentials).await?.is_some())
    }

    /// One attempt, over HTTPS or (insecure registries) the scheme that worked before, with
    /// the fall back to plain HTTP when no TLS connection can be made.
    async fn attempt(
        &self,
        image: &Reference,
        auth: &RegistryAuth,
        fingerprint: &str,
    ) -> Result<Option<String>, Failure> {
        let registry = image.registry();
        let remembered = self.state().schemes.get(registry).copied();
        let (first, fallback) = match remembered {
            Some(scheme) => (scheme, None),
            None if self.insecure => (Scheme::Https, Some(Scheme::Http)),
            None => (Scheme::Https, None),
        };
        let (scheme, result) = match (
            self.attempt_with(first, image, auth, fingerprint).await,
            fallback,
        ) {
            (Err(failure), Some(fallback)) if failure.is_connect() => {
                tracing::debug!(%registry, "no TLS connection to the insecure registry; trying plain HTTP");
                (
                    fallback,
                    self.attempt_with(fallback, image, auth, fingerprint).await,
                )
            }
            (result, _) => (first, result),
        };
        let reached = !matches!(&result, Err(f) if f.is_connect());
        if self.insecure && remembered.is_none() && reached {
            self.state().schemes.insert(registry.to_owned(), scheme);
        }
        result
    }

    async fn attempt_with(
        &self,
        scheme: Scheme,
        image: &Reference,
        auth: &RegistryAuth,
        fingerprint: &str,
    ) -> Result<Option<String>, Failure> {
        let client = self
            .oci_client(scheme, fingerprint)
            .map_err(Failure::Auth)?;
        let key = (
            scheme,
            fingerprint.to_owned(),
            image.registry().to_owned(),
            image.repository().to_owned(),
        );
        if !self.state().authenticated.contains(&key) {
            tracing::debug!(registry = %image.registry(), repository = %image.repository(), anonymous = matches!(auth, RegistryAuth::Anonymous), "authenticating to the registry");
            client
                .auth(image, auth, RegistryOperation::Pull)
                .with_subscriber(NoSubscriber::new())
                .await
                .map_err(Failure::Auth)?;
            self.state().authenticated.insert(key);
        }
        match client
            .fetch_manifest_digest(image, auth)
            .with_subscriber(NoSubscriber::new())
            .await
        {
            Ok(digest) => Ok(Some(digest)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(Failure::Manifest(e)),
        }
    }

    /// The `oci-client` for `scheme` and these credentials, created on first use.
    fn oci_client(
        &self,
        scheme: Scheme,
        fingerprint: &str,
    ) -> Result<Arc<oci_client::Client>, OciDistributionError> {
        let key = (scheme, fingerprint.to_owned());
        if let Some(client) = self.state().clients.get(&key) {
            return Ok(client.clone());
        }
        let config = ClientConfig {
            protocol: match scheme {
                Scheme::Https => ClientProtocol::Https,
                Scheme::Http => ClientProtocol::Http,
            },
            accept_invalid_certificates: self.insecure,
            connect_timeout: Some(self.timeout.min(MAX_CONNECT_TIMEOUT)),
            read_timeout: Some(self.timeout),
            user_agent: concat!("plugsync/", env!("CARGO_PKG_VERSION")),
            // Registries serve whatever the reference names; a check never picks a platform.
            platform_resolver: None,
            ..ClientConfig::default()
        };
        let client = Arc::new(oci_client::Client::try_from(config)?);
        self.state().clients.insert(key, client.clone());
        Ok(client)
    }

    fn state(&self) -> MutexGuard<'_, ClientState> {
        // A panic while holding the lock cannot leave the maps inconsistent (single inserts),
        // so a poisoned lock is still usable.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// HTTP 404, or the distribution spec's "no such manifest / repository" codes.
fn is_not_found(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::ServerError { code, .. } => *code == 404,
        OciDistributionError::ImageManifestNotFoundError(_) => true,
        OciDistributionError::RegistryError { envelope, .. } => envelope.errors.iter().any(|e| {
            matches!(
                e.code,
                OciErrorCode::ManifestUnknown | OciErrorCode::NameUnknown | OciErrorCode::NotFound
            )
        }),
        _ => false,
    }
}

/// The [`RegistryError`] for a failed attempt: built from the kind of failure and what this
/// side knows (registry, repository, user name), never from an answer's body or a URL with
/// query (token servers echo credentials back).
fn describe(
    image: &Reference,
    credentials: Option<&Credentials>,
    failure: &Failure,
    timeout: Duration,
) -> RegistryError {
    let registry = image.registry().to_owned();
    let repository = image.repository().to_owned();
    let rejected = |what: &str| match credentials {
        Some(c) => format!(
            "the registry rejected the {what} for user `{}`",
            c.username()
        ),
        None => {
            format!("anonymous access refused and the Secret has no credentials for `{registry}`")
        }
    };
    match failure.error() {
        OciDistributionError::RequestError(e) if e.is_timeout() => RegistryError::Timeout {
            registry,
            repository,
            after: timeout,
        },
        OciDistributionError::RequestError(e) => RegistryError::Transport {
            registry,
            repository,
            reason: error_chain(e, e.is_connect()),
        },
        OciDistributionError::AuthenticationFailure(_) => RegistryError::Token {
            reason: match credentials {
                Some(c) => format!(
                    "the token server rejected the credentials for user `{}`",
                    c.username()
                ),
                None => format!(
                    "anonymous token refused and the Secret has no credentials for `{registry}`"
                ),
            },
            registry,
            repository,
        },
        OciDistributionError::RegistryTokenDecodeError(_) => RegistryError::Token {
            registry,
            repository,
            reason: "the token server's answer is not a token".to_owned(),
        },
        OciDistributionError::UnauthorizedError { .. } => RegistryError::Unauthorized {
            reason: match failure {
                // A token was issued (or basic auth offered) and the registry still refused.
                Failure::Manifest(_) => rejected("credentials or the token issued with them"),
                Failure::Auth(_) => rejected("credentials"),
            },
            registry,
            repository,
        },
        OciDistributionError::ServerError { code: 401, .. } => RegistryError::Unauthorized {
            reason: rejected("credentials"),
            registry,
            repository,
        },
        OciDistributionError::ServerError { code: 403, .. } => RegistryError::Denied {
            registry,
            repository,
        },
        OciDistributionError::ServerError { code, .. } => RegistryError::Status {
            registry,
            repository,
            status: *code,
        },
        OciDistributionError::RegistryError { envelope, .. } => {
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
            if codes.contains(&&OciErrorCode::Denied) {
                RegistryError::Denied {
                    registry,
                    repository,
                }
            } else if codes.contains(&&OciErrorCode::Unauthorized) {
                RegistryError::Unauthorized {
                    reason: rejected("credentials"),
                    registry,
                    repository,
                }
            } else {
                RegistryError::Protocol {
                    registry,
                    repository,
                    reason: format!("the registry answered with error codes {codes:?}"),
                }
            }
        }
        OciDistributionError::DigestError(e) => RegistryError::Protocol {
            registry,
            repository,
            reason: format!("the manifest digest does not match: {e}"),
        },
        // The rest (spec violations, header encodings) carry no credentials: the crate builds
        // them from what it parsed.
        other => RegistryError::Protocol {
            registry,
            repository,
            reason: other.to_string(),
        },
    }
}

/// The error and its sources on one line; reqwest's own message repeats the URL, which the
/// caller already names, so it is dropped.
fn error_chain(e: &(dyn std::error::Error + 'static), connect: bool) -> String {
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
        out = if connect {
            "connection failed".to_owned()
        } else {
            "request failed".to_owned()
        };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_futures_are_send() {
        // The controller spawns reconciles on a multi-threaded runtime: no lock guard may be
        // held across an await.
        fn is_send<T: Send>(_: T) {}
        let client = RegistryClient::new(false, Duration::from_secs(1));
        let image = parse_image("r.example/a:1").expect("reference");
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
