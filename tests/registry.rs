//! `plugsync_kube::registry`: image references, dockerconfigjson credentials, and manifest checks
//! (through `oci-client`) against a real registry on loopback (plus axum fakes for bearer
//! tokens, retries and timeouts).

#[path = "common/registry_fixture.rs"]
mod registry_fixture;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use base64::Engine as _;
use plugsync_kube::registry::{
    parse_image, with_digest, Credentials, DockerConfig, Reference, RegistryClient, RegistryError,
};
use registry_fixture::{
    basic_auth_secret, dockerconfig_secret, serve, sha256_digest, tools_or_skip, OciImage,
    RegistryServer,
};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(10);
const REPO: &str = "dify-plugins/agent-0123456789abcdef0123456789abcdef";

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn image(s: &str) -> Reference {
    parse_image(s).expect("valid image reference")
}

fn pin(image: &Reference, digest: &str) -> Reference {
    with_digest(image, digest).expect("valid digest")
}

fn random_digest() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    sha256_digest(format!("not pushed {nanos}").as_bytes())
}

// ---------------------------------------------------------------------------------------------
// Image references (oci-client's `Reference`, Docker's rules)

#[test]
fn image_ref_with_port_and_tag() {
    let r = image("registry.local:5000/dify-plugins/agent-abc:0.0.14");
    assert_eq!(r.registry(), "registry.local:5000");
    assert_eq!(r.repository(), "dify-plugins/agent-abc");
    assert_eq!((r.tag(), r.digest()), (Some("0.0.14"), None));
    assert_eq!(
        r.to_string(),
        "registry.local:5000/dify-plugins/agent-abc:0.0.14"
    );
    assert_eq!(r.resolve_registry(), "registry.local:5000");

    let r = image("127.0.0.1:5000/app");
    assert_eq!(r.registry(), "127.0.0.1:5000");
    assert_eq!(r.repository(), "app");
    assert_eq!(r.tag(), Some("latest"));

    let r = image("localhost/app:v1");
    assert_eq!((r.registry(), r.repository()), ("localhost", "app"));
    let r = image("localhost:5000/a/b:v1");
    assert_eq!((r.registry(), r.repository()), ("localhost:5000", "a/b"));
}

#[test]
fn image_ref_nested_repository() {
    let r = image("ghcr.io/org/team/sub/agent_x.y-z:1.2.3-rc.1");
    assert_eq!(r.registry(), "ghcr.io");
    assert_eq!(r.repository(), "org/team/sub/agent_x.y-z");
    assert_eq!(r.tag(), Some("1.2.3-rc.1"));
    // A first component without `.`/`:` and not `localhost` is a Docker Hub namespace.
    let r = image("org/team/app:1");
    assert_eq!(r.registry(), "docker.io");
    assert_eq!(r.repository(), "org/team/app");
}

#[test]
fn image_ref_digest() {
    let digest = format!("sha256:{}", "ab".repeat(32));
    let r = image(&format!(
        "registry.local:5000/dify-plugins/agent-abc@{digest}"
    ));
    assert_eq!((r.tag(), r.digest()), (None, Some(digest.as_str())));
    assert_eq!(
        r.to_string(),
        format!("registry.local:5000/dify-plugins/agent-abc@{digest}")
    );
    // Tag and digest: both kept; the registry is asked for the digest (oci-client's manifest
    // URL takes the digest when there is one).
    let r = image(&format!("registry.local:5000/a:0.0.14@{digest}"));
    assert_eq!(r.digest(), Some(digest.as_str()));
    assert_eq!(r.repository(), "a");

    let tagged = image("registry.local:5000/a:0.0.14");
    let pinned = pin(&tagged, &digest);
    assert_eq!(
        pinned.to_string(),
        format!("registry.local:5000/a@{digest}")
    );
    assert_eq!(
        parse_image(&pinned.to_string()).expect("round trip"),
        pinned
    );
    // A digest that is not lowercase hex of the right length is refused before any request.
    for bad in [
        "sha256:abc".to_owned(),
        format!("sha256:{}", "AB".repeat(32)),
        format!("md5:{}", "a".repeat(32)),
        "a".repeat(64),
    ] {
        let err = with_digest(&tagged, &bad).expect_err(&bad);
        assert!(
            matches!(err, RegistryError::InvalidDigest { .. }),
            "{bad}: {err}"
        );
    }
}

#[test]
fn image_ref_docker_hub_defaults() {
    let r = image("nginx");
    assert_eq!(r.registry(), "docker.io");
    assert_eq!(r.repository(), "library/nginx");
    assert_eq!(r.tag(), Some("latest"));
    // Docker Hub's API host, as oci-client resolves it.
    assert_eq!(r.resolve_registry(), "index.docker.io");
    assert_eq!(r.to_string(), "docker.io/library/nginx:latest");

    assert_eq!(
        image("langgenius/plugin-build-base-python:3.12").repository(),
        "langgenius/plugin-build-base-python"
    );
    assert_eq!(image("docker.io/nginx:1.27").repository(), "library/nginx");
    assert_eq!(
        image("index.docker.io/library/busybox:1.36").registry(),
        "docker.io"
    );
    assert_eq!(
        image("busybox:1.36").to_string(),
        "docker.io/library/busybox:1.36"
    );
}

#[test]
fn image_ref_rejects_invalid() {
    for bad in [
        "",
        "https://registry.local/app:1",
        "registry.local/App:1",
        "registry.local/app:",
        "registry.local/app:-x",
        "registry.local/app@sha256:abc",
        "registry.local/app@md5:0123456789abcdef0123456789abcdef",
        "registry.local//app",
        "registry.local/app/",
        "app name",
    ] {
        let err = parse_image(bad).expect_err(bad);
        assert!(
            matches!(err, RegistryError::InvalidReference { .. }),
            "{bad}: {err}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// DockerConfig and Credentials

#[test]
fn docker_config_auth_base64() {
    let config = DockerConfig::parse(
        json!({"auths": {"registry.local:5000": {"auth": b64("ci-bot:pa:ss")}}})
            .to_string()
            .as_bytes(),
    )
    .expect("parse");
    assert_eq!(
        config.credentials_for("registry.local:5000"),
        Some(Credentials::basic("ci-bot", "pa:ss"))
    );
    assert_eq!(config.credentials_for("registry.local"), None);
    assert_eq!(config.credentials_for("other.example"), None);
    // Missing padding is tolerated; `auth` wins over username/password.
    let unpadded = b64("u:p1").trim_end_matches('=').to_owned();
    let config = DockerConfig::parse(
        json!({"auths": {"r.example": {"auth": unpadded, "username": "x", "password": "y"}}})
            .to_string()
            .as_bytes(),
    )
    .expect("parse");
    assert_eq!(
        config.credentials_for("r.example"),
        Some(Credentials::basic("u", "p1"))
    );
}

#[test]
fn docker_config_username_password_and_identity_token() {
    let config = DockerConfig::parse(
        json!({"auths": {
            "r1.example": {"username": "alice", "password": "s3cret"},
            "r2.example": {"username": "00000000-0000-0000-0000-000000000000", "identitytoken": "refresh-me"},
            "r3.example": {},
        }, "credsStore": "desktop"})
        .to_string()
        .as_bytes(),
    )
    .expect("parse");
    assert_eq!(
        config.credentials_for("r1.example"),
        Some(Credentials::basic("alice", "s3cret"))
    );
    assert_eq!(
        config.credentials_for("r2.example"),
        Some(Credentials::identity_token(
            "00000000-0000-0000-0000-000000000000",
            "refresh-me"
        ))
    );
    // An empty entry (credential helper) gives no credentials rather than an error.
    assert_eq!(config.credentials_for("r3.example"), None);
}

#[test]
fn docker_config_url_style_keys() {
    let config = DockerConfig::parse(
        json!({"auths": {
            "https://index.docker.io/v1/": {"auth": b64("hub:hubpw")},
            "https://Registry.Example.com:8443/v2/": {"auth": b64("r:rpw")},
            "http://plain.local:5000": {"auth": b64("p:ppw")},
        }})
        .to_string()
        .as_bytes(),
    )
    .expect("parse");
    assert_eq!(
        config.credentials_for("docker.io"),
        Some(Credentials::basic("hub", "hubpw"))
    );
    assert_eq!(
        config.credentials_for(image("nginx").registry()),
        Some(Credentials::basic("hub", "hubpw"))
    );
    assert_eq!(
        config.credentials_for("registry-1.docker.io"),
        Some(Credentials::basic("hub", "hubpw"))
    );
    assert_eq!(
        config.credentials_for("registry.example.com:8443"),
        Some(Credentials::basic("r", "rpw"))
    );
    assert_eq!(
        config.credentials_for("plain.local:5000"),
        Some(Credentials::basic("p", "ppw"))
    );
}

#[test]
fn docker_config_errors_do_not_echo_secrets() {
    let cases = [
        // Not JSON: serde_json would quote the text around the error.
        r#"{"auths": {"r.example": {"auth": "c2VjcmV0LXZhbHVl" oops}}}"#.to_owned(),
        // `auth` not base64.
        json!({"auths": {"r.example": {"auth": "secret-value!!"}}}).to_string(),
        // `auth` without a colon (base64 of "secret-value").
        json!({"auths": {"r.example": {"auth": b64("secret-value")}}}).to_string(),
        // Wrong type: serde would print the value.
        json!({"auths": "secret-value"}).to_string(),
        json!({"auths": {"r.example": {"password": "secret-value"}}}).to_string(),
        json!({"auths": {"r.example": {"username": "u", "password": ["secret-value"]}}})
            .to_string(),
        json!({"something": "secret-value"}).to_string(),
    ];
    for case in cases {
        let err = DockerConfig::parse(case.as_bytes()).expect_err(&case);
        let message = err.to_string();
        assert!(matches!(err, RegistryError::InvalidConfig(_)), "{message}");
        assert!(!message.contains("secret-value"), "{message}");
        assert!(!message.contains("c2VjcmV0LXZhbHVl"), "{message}");
    }
}

#[test]
fn docker_config_from_secret() {
    let secret = basic_auth_secret("registry.local:5000", "ci-bot", "hunter2");
    let config = DockerConfig::from_secret(&secret).expect("from secret");
    assert_eq!(
        config.credentials_for("registry.local:5000"),
        Some(Credentials::basic("ci-bot", "hunter2"))
    );

    let mut opaque = secret.clone();
    opaque.type_ = Some("Opaque".into());
    let err = DockerConfig::from_secret(&opaque).expect_err("opaque");
    assert!(err.to_string().contains("dify/image-repo-secret"), "{err}");
    assert!(
        err.to_string().contains("kubernetes.io/dockerconfigjson"),
        "{err}"
    );

    let mut empty = secret.clone();
    empty.data = None;
    let err = DockerConfig::from_secret(&empty).expect_err("no data");
    assert!(err.to_string().contains(".dockerconfigjson"), "{err}");

    let mut broken = dockerconfig_secret(&json!({"auths": {"r": {"auth": "hunter2!"}}}));
    broken.metadata.name = Some("broken".into());
    let err = DockerConfig::from_secret(&broken).expect_err("bad auth");
    assert!(err.to_string().contains("dify/broken"), "{err}");
    assert!(!err.to_string().contains("hunter2"), "{err}");
}

#[test]
fn credentials_debug_shows_no_secret() {
    let basic = Credentials::basic("ci-bot", "hunter2");
    let debug = format!("{basic:?}");
    assert!(debug.contains("ci-bot") && debug.contains("***"), "{debug}");
    assert!(!debug.contains("hunter2"), "{debug}");
    let token = Credentials::identity_token("u", "refresh-token-value");
    let debug = format!("{token:?} {token:#?}");
    assert!(!debug.contains("refresh-token-value"), "{debug}");

    let config = DockerConfig::from_secret(&basic_auth_secret("r.example", "ci-bot", "hunter2"))
        .expect("config");
    let debug = format!("{config:?} {config:#?}");
    assert!(
        !debug.contains("hunter2") && !debug.contains(&b64("ci-bot:hunter2")),
        "{debug}"
    );
}

// ---------------------------------------------------------------------------------------------
// A real registry (docker-registry + skopeo)

fn client() -> RegistryClient {
    RegistryClient::new(true, TIMEOUT)
}

#[tokio::test]
async fn pushed_tag_digest_matches_manifest_sha256() {
    if !tools_or_skip("pushed_tag_digest_matches_manifest_sha256", false) {
        return;
    }
    let registry = RegistryServer::start();
    let pushed = OciImage::new("pushed_tag_digest_matches_manifest_sha256");
    registry.push(&pushed, REPO, "0.0.14");
    assert_eq!(pushed.manifest_digest, sha256_digest(&pushed.manifest));

    let client = client();
    let tagged = image(&registry.image(REPO, "0.0.14"));
    let digest = client.manifest_digest(&tagged, None).await.expect("HEAD");
    assert_eq!(digest.as_deref(), Some(pushed.manifest_digest.as_str()));
    // Asking by digest answers the same digest; and again, from the remembered scheme.
    let pinned = pin(&tagged, &pushed.manifest_digest);
    for _ in 0..2 {
        assert_eq!(
            client
                .manifest_digest(&pinned, None)
                .await
                .expect("HEAD by digest"),
            Some(pushed.manifest_digest.clone())
        );
    }
}

#[tokio::test]
async fn has_manifest_true_for_pushed_digest_false_for_random() {
    if !tools_or_skip(
        "has_manifest_true_for_pushed_digest_false_for_random",
        false,
    ) {
        return;
    }
    let registry = RegistryServer::start();
    let pushed = OciImage::new("has_manifest");
    registry.push(&pushed, REPO, "0.0.14");
    let client = client();
    let tagged = image(&registry.image(REPO, "0.0.14"));
    assert!(client
        .has_manifest(&tagged, &pushed.manifest_digest, None)
        .await
        .expect("HEAD"));
    assert!(!client
        .has_manifest(&tagged, &random_digest(), None)
        .await
        .expect("HEAD"));
    // Another repository on the same registry does not have it.
    let other = image(&registry.image("dify-plugins/other", "0.0.14"));
    assert!(!client
        .has_manifest(&other, &pushed.manifest_digest, None)
        .await
        .expect("HEAD"));
    // A malformed digest is refused before any request.
    let err = client
        .has_manifest(&tagged, "sha256:nothex", None)
        .await
        .expect_err("invalid digest");
    assert!(matches!(err, RegistryError::InvalidDigest { .. }), "{err}");
}

#[tokio::test]
async fn missing_repository_or_tag_is_none() {
    if !tools_or_skip("missing_repository_or_tag_is_none", false) {
        return;
    }
    let registry = RegistryServer::start();
    registry.push(&OciImage::new("missing"), REPO, "0.0.14");
    let client = client();
    for missing in [
        registry.image("dify-plugins/never-pushed", "0.0.14"),
        registry.image(REPO, "9.9.9"),
    ] {
        assert_eq!(
            client
                .manifest_digest(&image(&missing), None)
                .await
                .expect(&missing),
            None,
            "{missing}"
        );
    }
}

#[tokio::test]
async fn basic_auth_registry_needs_the_secret_credentials() {
    if !tools_or_skip("basic_auth_registry_needs_the_secret_credentials", true) {
        return;
    }
    let registry = RegistryServer::start_with_basic_auth("ci-bot", "correct-horse");
    let pushed = OciImage::new("basic auth");
    registry.push(&pushed, REPO, "0.0.14");
    let tagged = image(&registry.image(REPO, "0.0.14"));

    // Anonymous: a 401 with a Basic challenge, and no credentials to answer it.
    let err = client()
        .manifest_digest(&tagged, None)
        .await
        .expect_err("anonymous");
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains(&registry.host) && message.contains(REPO),
        "{message}"
    );

    // Credentials from a dockerconfigjson Secret.
    let secret = basic_auth_secret(&registry.host, "ci-bot", "correct-horse");
    let config = DockerConfig::from_secret(&secret).expect("config");
    let credentials = config
        .credentials_for(tagged.registry())
        .expect("credentials for host");
    let client = client();
    assert_eq!(
        client
            .manifest_digest(&tagged, Some(&credentials))
            .await
            .expect("HEAD with credentials"),
        Some(pushed.manifest_digest.clone())
    );
    // Second call: basic auth is sent right away (remembered); same answer.
    assert!(client
        .has_manifest(&tagged, &pushed.manifest_digest, Some(&credentials))
        .await
        .expect("HEAD"));
    assert!(!client
        .has_manifest(&tagged, &random_digest(), Some(&credentials))
        .await
        .expect("HEAD"));
    // Missing repository behind auth is still Ok(None).
    let missing = image(&registry.image("dify-plugins/never-pushed", "1"));
    assert_eq!(
        client
            .manifest_digest(&missing, Some(&credentials))
            .await
            .expect("HEAD"),
        None
    );
}

#[tokio::test]
async fn basic_auth_wrong_password_error_hides_the_password() {
    if !tools_or_skip("basic_auth_wrong_password_error_hides_the_password", true) {
        return;
    }
    let registry = RegistryServer::start_with_basic_auth("ci-bot", "correct-horse");
    let tagged = image(&registry.image(REPO, "0.0.14"));
    let wrong = "WrongPassw0rd-do-not-print";
    let secret = basic_auth_secret(&registry.host, "ci-bot", wrong);
    let credentials = DockerConfig::from_secret(&secret)
        .expect("config")
        .credentials_for(&registry.host)
        .expect("credentials");
    let client = client();
    // Twice: the second time basic auth goes out first, and is rejected again.
    for _ in 0..2 {
        let err = client
            .manifest_digest(&tagged, Some(&credentials))
            .await
            .expect_err("wrong password");
        assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err}");
        let shown = format!("{err} {err:?}");
        assert!(
            shown.contains("ci-bot") && shown.contains(&registry.host),
            "{shown}"
        );
        assert!(!shown.contains(wrong), "{shown}");
        assert!(!shown.contains(&b64(&format!("ci-bot:{wrong}"))), "{shown}");
    }
}

// ---------------------------------------------------------------------------------------------
// Bearer tokens (axum token server + fake registry)

const TOKEN_USER: &str = "robot$plugsync";
const TOKEN_PASSWORD: &str = "t0ken-server-Passw0rd";
const FAKE_DIGEST: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

/// `(service, scope)` of one token request.
type TokenRequest = (Option<String>, Option<String>);

#[derive(Clone, Default)]
struct TokenServer {
    hits: Arc<AtomicUsize>,
    issued: Arc<Mutex<Vec<String>>>,
    queries: Arc<Mutex<Vec<TokenRequest>>>,
    expires_in: u64,
}

#[derive(serde::Deserialize)]
struct TokenQuery {
    service: Option<String>,
    scope: Option<String>,
}

async fn token_endpoint(
    State(server): State<TokenServer>,
    Query(query): Query<TokenQuery>,
    headers: HeaderMap,
) -> Response {
    let n = server.hits.fetch_add(1, Ordering::SeqCst) + 1;
    server
        .queries
        .lock()
        .expect("lock")
        .push((query.service, query.scope));
    let expected = format!("Basic {}", b64(&format!("{TOKEN_USER}:{TOKEN_PASSWORD}")));
    let sent = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if sent != expected {
        // Token servers echo what they got; the client must not pass that on (errors, logs).
        let decoded = sent
            .strip_prefix("Basic ")
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        return (
            StatusCode::UNAUTHORIZED,
            format!("bad credentials: {sent} ({decoded})"),
        )
            .into_response();
    }
    let token = jwt_shaped_token(n, server.expires_in);
    server.issued.lock().expect("lock").push(token.clone());
    axum::Json(json!({"token": token, "expires_in": server.expires_in})).into_response()
}

/// A token shaped like the JWTs real token servers issue (`header.claims.signature`), with
/// the `exp` claim: oci-client caches a token until its `exp` (60 s without one) and ignores
/// `expires_in`. The signature part carries `issued-token-<n>`, for leak checks.
fn jwt_shaped_token(n: usize, expires_in: u64) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    let claims = URL_SAFE_NO_PAD.encode(json!({"exp": now + expires_in}).to_string());
    format!(
        "{}.{claims}.issued-token-{n}",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#)
    )
}

#[derive(Clone)]
struct FakeRegistry {
    hits: Arc<AtomicUsize>,
    realm: String,
    issued: Arc<Mutex<Vec<String>>>,
}

/// Demands `Bearer <issued token>` (the `GET /v2/` version check included, which is where
/// clients learn the challenge); has one manifest, `REPO:0.0.14` = `FAKE_DIGEST`.
async fn bearer_registry(
    State(fake): State<FakeRegistry>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    fake.hits.fetch_add(1, Ordering::SeqCst);
    let authorized = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| fake.issued.lock().expect("lock").iter().any(|i| i == t));
    if !authorized {
        let challenge = format!(
            r#"Bearer realm="{}",service="fake-registry",scope="repository:{REPO}:pull""#,
            fake.realm
        );
        return (
            StatusCode::UNAUTHORIZED,
            [("www-authenticate", challenge)],
            "",
        )
            .into_response();
    }
    let path = uri.path();
    if path == format!("/v2/{REPO}/manifests/0.0.14")
        || path == format!("/v2/{REPO}/manifests/{FAKE_DIGEST}")
    {
        (StatusCode::OK, [("docker-content-digest", FAKE_DIGEST)], "").into_response()
    } else {
        StatusCode::NOT_FOUND.into_response()
    }
}

async fn start_bearer_pair(expires_in: u64) -> (TokenServer, FakeRegistry, String) {
    start_bearer_pair_with(expires_in, true).await
}

/// A token server and a registry that demands its tokens (or, with `accept_tokens: false`,
/// refuses every token).
async fn start_bearer_pair_with(
    expires_in: u64,
    accept_tokens: bool,
) -> (TokenServer, FakeRegistry, String) {
    let tokens = TokenServer {
        expires_in,
        ..TokenServer::default()
    };
    let (token_addr, _) = serve(
        Router::new()
            .route("/token", get(token_endpoint))
            .with_state(tokens.clone()),
    )
    .await;
    let fake = FakeRegistry {
        hits: Arc::default(),
        realm: format!("http://{token_addr}/token"),
        issued: if accept_tokens {
            tokens.issued.clone()
        } else {
            Arc::default()
        },
    };
    let (registry_addr, _) = serve(
        Router::new()
            .route("/v2/", any(bearer_registry))
            .route("/v2/{*rest}", any(bearer_registry))
            .with_state(fake.clone()),
    )
    .await;
    (tokens, fake, registry_addr.to_string())
}

#[tokio::test]
async fn bearer_challenge_fetches_one_token_and_caches_it() {
    let (tokens, fake, host) = start_bearer_pair(300).await;
    let credentials =
        DockerConfig::from_secret(&basic_auth_secret(&host, TOKEN_USER, TOKEN_PASSWORD))
            .expect("config")
            .credentials_for(&host)
            .expect("credentials");
    let client = client();
    let tagged = image(&format!("{host}/{REPO}:0.0.14"));

    assert_eq!(
        client
            .manifest_digest(&tagged, Some(&credentials))
            .await
            .expect("first HEAD"),
        Some(FAKE_DIGEST.to_owned())
    );
    assert!(client
        .has_manifest(&tagged, FAKE_DIGEST, Some(&credentials))
        .await
        .expect("second HEAD"));
    assert!(!client
        .has_manifest(&tagged, &random_digest(), Some(&credentials))
        .await
        .expect("third HEAD"));

    assert_eq!(
        tokens.hits.load(Ordering::SeqCst),
        1,
        "one token for three HEADs"
    );
    // The version check's 401 (which names the token realm) and the first HEAD with the
    // token, then the cached token straight away; the missing digest costs a HEAD and a GET
    // (oci-client falls back to GET when a HEAD answer has no digest header, as a 404 has).
    assert_eq!(fake.hits.load(Ordering::SeqCst), 5);
    assert_eq!(
        tokens.queries.lock().expect("lock").as_slice(),
        [(
            Some("fake-registry".to_owned()),
            Some(format!("repository:{REPO}:pull"))
        )]
    );

    // Other credentials never reuse that token.
    let other = Credentials::basic(TOKEN_USER, "another-password");
    let err = client
        .manifest_digest(&tagged, Some(&other))
        .await
        .expect_err("other credentials");
    assert!(matches!(err, RegistryError::Token { .. }), "{err}");
    assert_eq!(tokens.hits.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn bearer_token_expiry_is_respected() {
    // Tokens that expire after a second: the second check, two seconds later, needs a fresh
    // token; a third one right after reuses it.
    let (tokens, _fake, host) = start_bearer_pair(1).await;
    let credentials = Credentials::basic(TOKEN_USER, TOKEN_PASSWORD);
    let client = client();
    let tagged = image(&format!("{host}/{REPO}:0.0.14"));
    for pause in [0, 2100, 0] {
        tokio::time::sleep(Duration::from_millis(pause)).await;
        assert!(client
            .manifest_digest(&tagged, Some(&credentials))
            .await
            .expect("HEAD")
            .is_some());
    }
    assert_eq!(tokens.hits.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn bearer_wrong_credentials_error_hides_secrets() {
    let (tokens, _fake, host) = start_bearer_pair(300).await;
    let wrong = "Wr0ng-bearer-password-do-not-print";
    let credentials = Credentials::basic(TOKEN_USER, wrong);
    let tagged = image(&format!("{host}/{REPO}:0.0.14"));
    let err = client()
        .manifest_digest(&tagged, Some(&credentials))
        .await
        .expect_err("wrong password");
    let shown = format!("{err} {err:?}");
    assert!(matches!(err, RegistryError::Token { .. }), "{shown}");
    assert!(shown.contains(&host) && shown.contains(REPO), "{shown}");
    assert!(!shown.contains(wrong), "{shown}");
    assert!(
        !shown.contains(&b64(&format!("{TOKEN_USER}:{wrong}"))),
        "{shown}"
    );
    assert_eq!(tokens.hits.load(Ordering::SeqCst), 1);

    // Anonymous: the token server refuses too; the message says there are no credentials.
    let err = client()
        .manifest_digest(&tagged, None)
        .await
        .expect_err("anonymous");
    assert!(err.to_string().contains("no credentials"), "{err}");

    assert!(tokens.issued.lock().expect("lock").is_empty());
}

#[tokio::test]
async fn refused_token_error_hides_the_token() {
    // The registry refuses every token the token server issues.
    let (tokens, fake, host) = start_bearer_pair_with(300, false).await;
    let tagged = image(&format!("{host}/{REPO}:0.0.14"));
    let err = client()
        .manifest_digest(
            &tagged,
            Some(&Credentials::basic(TOKEN_USER, TOKEN_PASSWORD)),
        )
        .await
        .expect_err("token refused");
    let shown = format!("{err} {err:?}");
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{shown}");
    assert!(!shown.contains("issued-token"), "{shown}");
    assert!(!shown.contains(TOKEN_PASSWORD), "{shown}");
    assert_eq!(tokens.hits.load(Ordering::SeqCst), 1);
    // The version check, then the HEAD and (no digest header on a 401) the GET, both refused.
    assert_eq!(fake.hits.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn identity_token_credentials_are_refused_before_any_request() {
    // oci-client cannot exchange an OAuth2 refresh token (`identitytoken`); the check says so
    // instead of sending it as a password. The controller then trusts the known digest.
    let (tokens, fake, host) = start_bearer_pair(300).await;
    let tagged = image(&format!("{host}/{REPO}:0.0.14"));
    let secret = "refresh-token-do-not-print";
    let err = client()
        .manifest_digest(&tagged, Some(&Credentials::identity_token("u", secret)))
        .await
        .expect_err("identity token");
    let shown = format!("{err} {err:?}");
    assert!(matches!(err, RegistryError::Unsupported { .. }), "{shown}");
    assert!(
        shown.contains(&host) && shown.contains("identity token"),
        "{shown}"
    );
    assert!(!shown.contains(secret), "{shown}");
    assert_eq!(fake.hits.load(Ordering::SeqCst), 0);
    assert_eq!(tokens.hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn secure_client_never_falls_back_to_plain_http() {
    let (tokens, fake, host) = start_bearer_pair(300).await;
    let secure = RegistryClient::new(false, Duration::from_secs(5));
    let tagged = image(&format!("{host}/{REPO}:0.0.14"));
    let err = secure
        .manifest_digest(
            &tagged,
            Some(&Credentials::basic(TOKEN_USER, TOKEN_PASSWORD)),
        )
        .await
        .expect_err("no TLS on the fake");
    assert!(matches!(err, RegistryError::Transport { .. }), "{err}");
    assert!(err.to_string().contains(&host), "{err}");
    // Nothing reached the plain-HTTP endpoints.
    assert_eq!(fake.hits.load(Ordering::SeqCst), 0);
    assert_eq!(tokens.hits.load(Ordering::SeqCst), 0);
}

// ---------------------------------------------------------------------------------------------
// Retries, timeouts, missing headers

#[tokio::test]
async fn server_errors_are_retried_twice() {
    // Counts attempts by their HEAD request (a HEAD without a digest header, as a 503 is, is
    // followed by a GET in the same attempt); `failures` attempts fail with 503 throughout.
    let hits = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(AtomicUsize::new(2));
    let attempt_fails = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let router = Router::new().route(
        "/v2/{*rest}",
        any({
            let (hits, failures, attempt_fails) =
                (hits.clone(), failures.clone(), attempt_fails.clone());
            move |method: axum::http::Method| async move {
                if method == axum::http::Method::HEAD {
                    hits.fetch_add(1, Ordering::SeqCst);
                    let failing = failures
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |f| f.checked_sub(1))
                        .is_ok();
                    attempt_fails.store(failing, Ordering::SeqCst);
                }
                if attempt_fails.load(Ordering::SeqCst) {
                    StatusCode::SERVICE_UNAVAILABLE.into_response()
                } else {
                    (StatusCode::OK, [("docker-content-digest", FAKE_DIGEST)]).into_response()
                }
            }
        }),
    );
    let (addr, _) = serve(router).await;
    let tagged = image(&format!("{addr}/{REPO}:0.0.14"));
    let client = client();
    assert_eq!(
        client
            .manifest_digest(&tagged, None)
            .await
            .expect("third attempt succeeds"),
        Some(FAKE_DIGEST.to_owned())
    );
    assert_eq!(hits.load(Ordering::SeqCst), 3);

    // Three failures: an error naming the status, after exactly three attempts.
    failures.store(3, Ordering::SeqCst);
    let err = client
        .manifest_digest(&tagged, None)
        .await
        .expect_err("503 x3");
    assert!(
        matches!(err, RegistryError::Status { status: 503, .. }),
        "{err}"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 6);
}

#[tokio::test]
async fn connection_refused_is_an_error_naming_the_registry() {
    let port = registry_fixture::free_port();
    let tagged = image(&format!("127.0.0.1:{port}/{REPO}:0.0.14"));
    let err = client()
        .manifest_digest(&tagged, None)
        .await
        .expect_err("refused");
    assert!(matches!(err, RegistryError::Transport { .. }), "{err}");
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
}

#[tokio::test]
async fn requests_time_out() {
    let router = Router::new().route(
        "/v2/{*rest}",
        any(|| async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            StatusCode::OK
        }),
    );
    let (addr, _) = serve(router).await;
    let tagged = image(&format!("{addr}/{REPO}:0.0.14"));
    let client = RegistryClient::new(true, Duration::from_millis(300));
    let started = Instant::now();
    let err = client
        .manifest_digest(&tagged, None)
        .await
        .expect_err("timeout");
    assert!(matches!(err, RegistryError::Timeout { .. }), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn missing_digest_header_falls_back_to_hashing_the_manifest() {
    let manifest =
        br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#;
    let router = Router::new().route(
        "/v2/{*rest}",
        any(move |uri: Uri| async move {
            if uri.path().ends_with("/manifests/0.0.14") {
                (StatusCode::OK, manifest.as_slice()).into_response()
            } else {
                StatusCode::NOT_FOUND.into_response()
            }
        }),
    );
    let (addr, _) = serve(router).await;
    let tagged = image(&format!("{addr}/{REPO}:0.0.14"));
    assert_eq!(
        client()
            .manifest_digest(&tagged, None)
            .await
            .expect("HEAD + GET"),
        Some(sha256_digest(manifest))
    );
}

#[tokio::test]
async fn a_digest_mismatch_is_an_error() {
    let router = Router::new().route(
        "/v2/{*rest}",
        any(|| async { (StatusCode::OK, [("docker-content-digest", FAKE_DIGEST)]) }),
    );
    let (addr, _) = serve(router).await;
    let tagged = image(&format!("{addr}/{REPO}:0.0.14"));
    let err = client()
        .has_manifest(&tagged, &random_digest(), None)
        .await
        .expect_err("mismatch");
    assert!(matches!(err, RegistryError::Protocol { .. }), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Logs

/// Collects everything a `tracing` subscriber writes.
#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn logs_carry_no_secrets() {
    let logs = LogBuffer::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer({
            let logs = logs.clone();
            move || logs.clone()
        })
        .finish();
    // Thread-local: the current-thread test runtime runs everything on this thread.
    let _guard = tracing::subscriber::set_default(subscriber);

    let (tokens, _fake, host) = start_bearer_pair(300).await;
    let client = client();
    let tagged = image(&format!("{host}/{REPO}:0.0.14"));
    let good = Credentials::basic(TOKEN_USER, TOKEN_PASSWORD);
    client
        .manifest_digest(&tagged, Some(&good))
        .await
        .expect("HEAD");
    client
        .manifest_digest(&tagged, Some(&good))
        .await
        .expect("HEAD");
    let _ = client
        .manifest_digest(
            &tagged,
            Some(&Credentials::basic(TOKEN_USER, "Wr0ng-in-logs")),
        )
        .await;
    let _ = client
        .manifest_digest(
            &tagged,
            Some(&Credentials::identity_token(TOKEN_USER, "refresh-in-logs")),
        )
        .await;

    let text = String::from_utf8(logs.0.lock().expect("lock").clone()).expect("utf-8 logs");
    assert!(
        text.contains("authenticating to the registry"),
        "nothing logged:\n{text}"
    );
    let issued = tokens.issued.lock().expect("lock").clone();
    assert!(!issued.is_empty());
    for secret in [TOKEN_PASSWORD, "Wr0ng-in-logs", "refresh-in-logs"]
        .into_iter()
        .map(str::to_owned)
        .chain(issued)
        .chain([b64(&format!("{TOKEN_USER}:{TOKEN_PASSWORD}"))])
    {
        assert!(!text.contains(&secret), "`{secret}` logged:\n{text}");
    }
}
