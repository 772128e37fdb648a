//! The HTTP edge of an in-cluster plugsync: build contexts, probes, metrics and the webhook.
//!
//! A build Job's init container downloads `GET /contexts/<sha256>` and checks the digest itself
//! (`sha256sum -c`), so this endpoint needs no authentication to be safe against tampering:
//! it only ever serves content-addressed bytes, verified again on read from the cache.
//!
//! [`router_with`] adds what `plugsync run` needs next to it: `/healthz` (liveness), `/readyz`
//! (readiness, flipped by the reconciler through a [`Readiness`] handle), `/metrics`
//! (OpenMetrics text from [`Metrics`]) and `POST /webhook`, which lets a git host ask for a
//! reconcile at once instead of waiting for the next poll. The webhook only ever *wakes* the
//! reconciler (a [`Notify`]); it never carries desired state, so the worst a forged request
//! could do is cause an extra fetch, and even that needs the shared secret or token.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::Path as FsPath;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use hmac::{Hmac, Mac};

use crate::token::token_matches;
use sha2::Sha256;
use tokio::sync::Notify;

use crate::metrics::Metrics;
use plugsync_core::resolve::cache::Cache;

/// Largest webhook body accepted; GitHub caps its payloads at 25 MB but push events of a
/// config repository are a few KiB, and nothing bigger is worth buffering. Larger gets 413.
pub(crate) const WEBHOOK_BODY_LIMIT: usize = 10 * 1024 * 1024;

/// The GitHub signature header: `sha256=<hex of HMAC-SHA256(secret, raw body)>`.
const SIGNATURE_HEADER: &str = "x-hub-signature-256";
/// The header carrying a plain token, for senders that cannot sign (or use `Authorization`).
const TOKEN_HEADER: &str = "x-plugsync-token";

type HmacSha256 = Hmac<Sha256>;

/// The routes: `/contexts/{sha256}` and `/healthz`.
pub fn router(cache: Cache) -> Router {
    Router::new()
        .route("/contexts/{sha256}", get(context))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(cache)
}

async fn context(State(cache): State<Cache>, Path(sha256): Path<String>) -> Response {
    if !plugsync_core::package::is_sha256_hex(&sha256) {
        return (
            StatusCode::BAD_REQUEST,
            "a build context is named by 64 lowercase hex characters\n",
        )
            .into_response();
    }
    match tokio::task::spawn_blocking(move || cache.get(&sha256)).await {
        Ok(Ok(Some(bytes))) => {
            ([(header::CONTENT_TYPE, "application/x-tar")], bytes).into_response()
        }
        Ok(Ok(None)) => (StatusCode::NOT_FOUND, "no such build context\n").into_response(),
        _ => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot read the build context\n",
        )
            .into_response(),
    }
}

/// Serves [`router`] on `addr` until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    cache: Cache,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, router(cache))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Everything [`router_with`] serves from; the handles inside are shared with the reconciler,
/// which records metrics, flips readiness and waits on the webhook's trigger.
#[derive(Debug, Clone)]
pub struct ServerState {
    /// Build contexts for `/contexts/{sha256}`.
    pub cache: Cache,
    /// Encoded on every `/metrics` scrape.
    pub metrics: Arc<Metrics>,
    /// Answers `/readyz`.
    pub readiness: Readiness,
    /// `POST /webhook`; `None` answers 404 (the endpoint is off, not misconfigured).
    pub webhook: Option<Webhook>,
    /// Dify's serverless connector routes; `None` when it is off.
    pub connector: Option<crate::connector::Connector>,
}

impl ServerState {
    /// A state with fresh metrics, not ready ("starting"), no webhook and no connector.
    pub fn new(cache: Cache) -> Self {
        Self {
            cache,
            metrics: Arc::new(Metrics::new()),
            readiness: Readiness::new(),
            webhook: None,
            connector: None,
        }
    }
}

/// Whether this replica should receive traffic (`/readyz`): a cheap clonable handle, so the
/// reconciler flips it and the server reads it without either knowing the other.
///
/// The reason is shown to anyone who can reach `/readyz`: keep secrets out of it.
#[derive(Debug, Clone)]
pub struct Readiness {
    /// `None` when ready, else why not.
    not_ready: Arc<Mutex<Option<String>>>,
}

impl Default for Readiness {
    fn default() -> Self {
        Self::new()
    }
}

impl Readiness {
    /// Not ready, with reason "starting": nothing is served as ready before it was checked.
    pub fn new() -> Self {
        Self {
            not_ready: Arc::new(Mutex::new(Some("starting".to_owned()))),
        }
    }

    /// Marks this replica ready.
    pub fn set_ready(&self) {
        *self.lock() = None;
    }

    /// Marks this replica not ready, `/readyz` answering 503 with `reason`.
    pub fn set_not_ready(&self, reason: impl Into<String>) {
        *self.lock() = Some(reason.into());
    }

    /// Whether this replica is ready.
    pub fn is_ready(&self) -> bool {
        self.lock().is_none()
    }

    /// Why this replica is not ready, or `None` when it is.
    pub fn reason(&self) -> Option<String> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        // A panic while holding this lock cannot leave the Option half-written.
        self.not_ready
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// How a webhook request proves it comes from whoever holds the shared secret.
///
/// `Debug` never prints the secret.
#[derive(Clone)]
pub enum WebhookAuth {
    /// GitHub (and Gitea, Forgejo) style: `X-Hub-Signature-256: sha256=<hex>` is
    /// HMAC-SHA256 of the raw body under this secret. Preferred: the secret never travels.
    GitHubHmac(Vec<u8>),
    /// A bearer token in `Authorization: Bearer <token>` or `X-Plugsync-Token: <token>`, for
    /// senders that cannot sign (CI jobs, curl). Use only over TLS.
    Token(String),
}

impl fmt::Debug for WebhookAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::GitHubHmac(_) => f.write_str("GitHubHmac(***)"),
            Self::Token(_) => f.write_str("Token(***)"),
        }
    }
}

/// Which [`WebhookAuth`] a secret file holds, for [`WebhookAuth::from_file`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookAuthKind {
    /// The file holds a GitHub webhook secret.
    GitHubHmac,
    /// The file holds a bearer token.
    Token,
}

impl WebhookAuth {
    /// Reads the secret from a file, as mounted from a Kubernetes Secret, dropping the trailing
    /// newline that `echo` and editors add (it would otherwise become part of the secret and
    /// silently fail every request). Errors name the file, never its content.
    pub fn from_file(path: &FsPath, kind: WebhookAuthKind) -> io::Result<Self> {
        let bytes = std::fs::read(path)?;
        let mut end = bytes.len();
        while end > 0 && matches!(bytes[end - 1], b'\n' | b'\r') {
            end -= 1;
        }
        let secret = &bytes[..end];
        if secret.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("webhook secret file {} is empty", path.display()),
            ));
        }
        Ok(match kind {
            WebhookAuthKind::GitHubHmac => Self::GitHubHmac(secret.to_vec()),
            WebhookAuthKind::Token => match std::str::from_utf8(secret) {
                Ok(token) => Self::Token(token.to_owned()),
                Err(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("webhook token file {} is not UTF-8", path.display()),
                    ))
                }
            },
        })
    }

    /// Checks the credentials a request carries; `Err` is a reason fit for logs and the
    /// 401 body (it never contains the secret or the expected value). An empty configured
    /// secret never authenticates: anyone can compute an HMAC under an empty key.
    fn verify(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), &'static str> {
        match self {
            Self::GitHubHmac(secret) => {
                if secret.is_empty() {
                    return Err("webhook secret is not configured");
                }
                let value = headers
                    .get(SIGNATURE_HEADER)
                    .ok_or("missing X-Hub-Signature-256 header")?;
                let signature = value
                    .to_str()
                    .ok()
                    .and_then(|v| v.trim().strip_prefix("sha256="))
                    .and_then(|hex_digest| hex::decode(hex_digest).ok())
                    .ok_or("malformed X-Hub-Signature-256 header (expected sha256=<hex>)")?;
                let mut mac = HmacSha256::new_from_slice(secret)
                    .map_err(|_| "webhook secret is not usable")?;
                mac.update(body);
                mac.verify_slice(&signature)
                    .map_err(|_| "X-Hub-Signature-256 does not match the body")
            }
            Self::Token(token) => {
                if token.is_empty() {
                    return Err("webhook token is not configured");
                }
                let bearer = headers
                    .get_all(header::AUTHORIZATION)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .filter_map(|v| v.trim().split_once(' '))
                    .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                    .map(|(_, t)| t.trim().as_bytes());
                let plain = headers
                    .get_all(TOKEN_HEADER)
                    .iter()
                    .map(|v| v.as_bytes().trim_ascii());
                let mut offered = false;
                let mut matched = false;
                // Every offered token is compared, so timing does not tell which header hit.
                for candidate in bearer.chain(plain) {
                    offered = true;
                    matched |= token_matches(token.as_bytes(), candidate);
                }
                match (offered, matched) {
                    (_, true) => Ok(()),
                    (false, _) => {
                        Err("missing token (Authorization: Bearer or X-Plugsync-Token header)")
                    }
                    (true, false) => Err("invalid token"),
                }
            }
        }
    }
}

/// The `POST /webhook` endpoint's configuration.
#[derive(Debug, Clone)]
pub struct Webhook {
    /// How requests authenticate.
    pub auth: WebhookAuth,
    /// The followed branch: a push whose `ref` is another branch (or a tag) is acknowledged
    /// and ignored, so pushes to feature branches do not cause reconciles. `None` triggers on
    /// every authenticated request.
    pub branch: Option<String>,
    /// Woken (`notify_one`) by every accepted request; the reconcile loop waits on it next to
    /// its poll timer. Several requests before the loop wakes coalesce into one reconcile.
    pub trigger: Arc<Notify>,
}

/// Everything [`serve`] does, plus `/readyz`, `/metrics` and `POST /webhook`.
pub fn router_with(state: ServerState) -> Router {
    let ServerState {
        cache,
        metrics,
        readiness,
        webhook,
        connector,
    } = state;
    let connector = connector.map(crate::connector::Connector::router);
    router(cache)
        .merge(
            Router::new()
                .route("/readyz", get(readyz))
                .with_state(readiness),
        )
        .merge(
            Router::new()
                .route("/metrics", get(metrics_text))
                .with_state(metrics),
        )
        .merge(
            Router::new()
                .route("/webhook", post(webhook_request))
                .layer(DefaultBodyLimit::max(WEBHOOK_BODY_LIMIT))
                .with_state(webhook.map(Arc::new)),
        )
        .merge(connector.unwrap_or_default())
}

/// Serves [`router_with`] on a bound listener until `shutdown` resolves: binding first lets
/// tests (and callers) use port 0 and learn the port before serving.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    state: ServerState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    axum::serve(listener, router_with(state))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn readyz(State(readiness): State<Readiness>) -> Response {
    match readiness.reason() {
        None => "ok\n".into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        )
            .into_response(),
    }
}

async fn metrics_text(State(metrics): State<Arc<Metrics>>) -> Response {
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        metrics.encode(),
    )
        .into_response()
}

async fn webhook_request(
    State(webhook): State<Option<Arc<Webhook>>>,
    request: Request,
) -> Response {
    let Some(webhook) = webhook else {
        return (StatusCode::NOT_FOUND, "no webhook is configured\n").into_response();
    };
    let (parts, body) = request.into_parts();
    let event = header_str(&parts.headers, "x-github-event").to_owned();
    let delivery = header_str(&parts.headers, "x-github-delivery").to_owned();
    let unauthorized = |reason: &'static str| {
        tracing::warn!(%event, %delivery, reason, "webhook request rejected");
        (
            StatusCode::UNAUTHORIZED,
            format!("unauthorized: {reason}\n"),
        )
            .into_response()
    };
    // A token is checked before the body is read, so an unauthenticated sender cannot make
    // the server buffer up to the body limit; a signature needs the body.
    if matches!(webhook.auth, WebhookAuth::Token(_)) {
        if let Err(reason) = webhook.auth.verify(&parts.headers, &[]) {
            return unauthorized(reason);
        }
    }
    let headers = parts.headers.clone();
    let body = match Bytes::from_request(Request::from_parts(parts, body), &()).await {
        Ok(body) => body,
        Err(rejection) => {
            tracing::warn!(%event, %delivery, status = %rejection.status(), "webhook body rejected");
            return rejection.into_response();
        }
    };
    if let Err(reason) = webhook.auth.verify(&headers, &body) {
        return unauthorized(reason);
    }
    if event == "ping" {
        tracing::info!(%delivery, "webhook ping");
        return (StatusCode::OK, "pong\n").into_response();
    }
    if let Some(branch) = &webhook.branch {
        let pushed = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|json| json.get("ref")?.as_str().map(str::to_owned));
        let wanted = format!("refs/heads/{branch}");
        if let Some(pushed) = pushed.filter(|r| *r != wanted) {
            tracing::info!(%event, %delivery, %pushed, %wanted, "webhook ignored: another ref");
            return (
                StatusCode::ACCEPTED,
                format!("ignored: {pushed} is not {wanted}\n"),
            )
                .into_response();
        }
    }
    webhook.trigger.notify_one();
    tracing::info!(%event, %delivery, "webhook: reconcile requested");
    (StatusCode::ACCEPTED, "reconcile requested\n").into_response()
}

/// A header's value for logs, `""` when missing or not text; capped so a hostile sender
/// cannot flood the logs through it.
fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> &'h str {
    let value = headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    match value.char_indices().nth(100) {
        Some((cut, _)) => &value[..cut],
        None => value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).expect("header"));
        }
        map
    }

    fn sign(secret: &[u8], body: &[u8]) -> String {
        let mut mac = HmacSha256::new_from_slice(secret).expect("key");
        mac.update(body);
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn github_signature_is_hmac_of_the_raw_body() {
        let auth = WebhookAuth::GitHubHmac(b"It's a Secret to Everybody".to_vec());
        // The example from GitHub's "Validating webhook deliveries" documentation.
        let good = headers(&[(
            SIGNATURE_HEADER,
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
        )]);
        assert_eq!(auth.verify(&good, b"Hello, World!"), Ok(()));
        assert!(auth.verify(&good, b"Hello, World?").is_err());
        assert!(auth.verify(&HeaderMap::new(), b"Hello, World!").is_err());
        let unprefixed = headers(&[(
            SIGNATURE_HEADER,
            "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
        )]);
        assert!(auth.verify(&unprefixed, b"Hello, World!").is_err());
        assert!(auth
            .verify(&headers(&[(SIGNATURE_HEADER, "sha256=zz")]), b"")
            .is_err());
        let empty = WebhookAuth::GitHubHmac(Vec::new());
        let signed_empty = headers(&[(SIGNATURE_HEADER, &sign(b"", b"x"))]);
        assert!(empty.verify(&signed_empty, b"x").is_err(), "empty key");
    }

    #[test]
    fn tokens_match_exactly_in_either_header() {
        let auth = WebhookAuth::Token("s3cret".into());
        for ok in [
            headers(&[("authorization", "Bearer s3cret")]),
            headers(&[("authorization", "bearer s3cret")]),
            headers(&[(TOKEN_HEADER, "s3cret")]),
            headers(&[(TOKEN_HEADER, "wrong"), ("authorization", "Bearer s3cret")]),
        ] {
            assert_eq!(auth.verify(&ok, b""), Ok(()), "{ok:?}");
        }
        for bad in [
            HeaderMap::new(),
            headers(&[("authorization", "Bearer s3cre")]),
            headers(&[("authorization", "Bearer s3cretx")]),
            headers(&[("authorization", "Basic s3cret")]),
            headers(&[("authorization", "s3cret")]),
            headers(&[(TOKEN_HEADER, "")]),
        ] {
            let reason = auth.verify(&bad, b"").expect_err("rejected");
            assert!(!reason.contains("s3cret"), "{reason}");
        }
        assert!(WebhookAuth::Token(String::new())
            .verify(&headers(&[(TOKEN_HEADER, "")]), b"")
            .is_err());
    }

    #[test]
    fn debug_redacts_secrets() {
        let text = format!(
            "{:?} {:?}",
            WebhookAuth::GitHubHmac(b"hmac-secret".to_vec()),
            Webhook {
                auth: WebhookAuth::Token("tok-secret".into()),
                branch: Some("main".into()),
                trigger: Arc::new(Notify::new()),
            }
        );
        assert!(!text.contains("secret"), "{text}");
        assert!(text.contains("***"), "{text}");
    }

    #[test]
    fn secret_files_lose_their_trailing_newline_only() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("secret");
        std::fs::write(&path, "  tok en \r\n").expect("write");
        match WebhookAuth::from_file(&path, WebhookAuthKind::Token).expect("read") {
            WebhookAuth::Token(t) => assert_eq!(t, "  tok en "),
            other => panic!("{other:?}"),
        }
        std::fs::write(&path, b"\xffkey\n").expect("write");
        match WebhookAuth::from_file(&path, WebhookAuthKind::GitHubHmac).expect("read") {
            WebhookAuth::GitHubHmac(k) => assert_eq!(k, b"\xffkey"),
            other => panic!("{other:?}"),
        }
        let err = WebhookAuth::from_file(&path, WebhookAuthKind::Token).expect_err("not utf-8");
        assert!(!err.to_string().contains("key"), "{err}");
        std::fs::write(&path, "\n").expect("write");
        let err = WebhookAuth::from_file(&path, WebhookAuthKind::Token).expect_err("empty");
        assert!(err.to_string().contains("empty"), "{err}");
        assert!(
            WebhookAuth::from_file(&dir.path().join("missing"), WebhookAuthKind::Token).is_err()
        );
    }

    #[test]
    fn readiness_starts_not_ready_and_flips() {
        let readiness = Readiness::new();
        let seen_by_server = readiness.clone();
        assert!(!seen_by_server.is_ready());
        assert_eq!(seen_by_server.reason().as_deref(), Some("starting"));
        readiness.set_ready();
        assert!(seen_by_server.is_ready());
        assert_eq!(seen_by_server.reason(), None);
        readiness.set_not_ready("lost the leader lease");
        assert_eq!(
            seen_by_server.reason().as_deref(),
            Some("lost the leader lease")
        );
    }
}
