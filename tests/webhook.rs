//! `POST /webhook` over real HTTP on loopback: signed and token requests wake the reconciler,
//! everything else is refused without waking it.

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use plugsync_core::resolve::cache::Cache;
use plugsync_kube::server::{ServerState, Webhook, WebhookAuth};
use sha2::Sha256;
use tokio::sync::Notify;

const SECRET: &str = "It's a Secret to Everybody";
const TOKEN: &str = "tok-0123456789abcdef";

struct Server {
    base: String,
    trigger: Arc<Notify>,
    _dir: tempfile::TempDir,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Server {
    fn url(&self) -> String {
        format!("{}/webhook", self.base)
    }

    /// Whether the trigger fired (consuming the permit), waiting briefly for it.
    async fn fired(&self) -> bool {
        tokio::time::timeout(Duration::from_millis(300), self.trigger.notified())
            .await
            .is_ok()
    }
}

async fn start(webhook: Option<(WebhookAuth, Option<&str>)>) -> Server {
    let dir = tempfile::tempdir().expect("dir");
    let mut state = ServerState::new(Cache::open(dir.path()).expect("cache"));
    let trigger = Arc::new(Notify::new());
    state.webhook = webhook.map(|(auth, branch)| Webhook {
        auth,
        branch: branch.map(str::to_owned),
        trigger: trigger.clone(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(plugsync_kube::server::serve_on(
        listener,
        state,
        async move {
            let _ = stopped.await;
        },
    ));
    Server {
        base,
        trigger,
        _dir: dir,
        _stop: stop,
    }
}

fn github() -> Option<(WebhookAuth, Option<&'static str>)> {
    Some((
        WebhookAuth::GitHubHmac(SECRET.as_bytes().to_vec()),
        Some("main"),
    ))
}

fn sign(body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("key");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn push(reference: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "ref": reference,
        "after": "0123456789abcdef0123456789abcdef01234567",
        "repository": {"full_name": "team-a/plugins"},
    }))
    .expect("json")
}

async fn post(url: &str, headers: &[(&str, &str)], body: Vec<u8>) -> (reqwest::StatusCode, String) {
    let mut request = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("send");
    let status = response.status();
    (status, response.text().await.expect("text"))
}

fn assert_no_secret(text: &str) {
    assert!(!text.contains(SECRET), "{text}");
    assert!(!text.contains(TOKEN), "{text}");
}

#[tokio::test]
async fn a_signed_push_to_the_followed_branch_triggers_a_reconcile() {
    let server = start(github()).await;
    let body = push("refs/heads/main");
    let signature = sign(&body);
    let (status, text) = post(
        &server.url(),
        &[
            ("x-github-event", "push"),
            ("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
            ("x-hub-signature-256", &signature),
        ],
        body,
    )
    .await;
    assert_eq!(status, 202, "{text}");
    assert_eq!(text, "reconcile requested\n");
    assert!(server.fired().await, "the reconciler was not woken");
    assert!(!server.fired().await, "one request, one wake-up");
}

#[tokio::test]
async fn bad_or_missing_signatures_are_401_and_trigger_nothing() {
    let server = start(github()).await;
    let body = push("refs/heads/main");
    let signed_other = sign(b"another body");
    let mut wrong_key = Hmac::<Sha256>::new_from_slice(b"guess").expect("key");
    wrong_key.update(&body);
    let wrong_key = format!("sha256={}", hex::encode(wrong_key.finalize().into_bytes()));
    let correct = sign(&body);
    let sha1_style = correct.replacen("sha256=", "sha1=", 1);
    let cases: Vec<Vec<(&str, &str)>> = vec![
        vec![],
        vec![("x-hub-signature-256", &signed_other)],
        vec![("x-hub-signature-256", &wrong_key)],
        vec![("x-hub-signature-256", &sha1_style)],
        vec![("x-hub-signature-256", "sha256=not-hex")],
        vec![("x-hub-signature-256", "")],
        // A token is no way in when the endpoint expects a signature.
        vec![("authorization", "Bearer It's a Secret to Everybody")],
    ];
    for headers in cases {
        let (status, text) = post(&server.url(), &headers, body.clone()).await;
        assert_eq!(status, 401, "{headers:?}: {text}");
        assert!(text.starts_with("unauthorized: "), "{text}");
        assert_no_secret(&text);
        assert!(
            !text.contains(&correct[7..]),
            "the expected digest leaked: {text}"
        );
    }
    assert!(
        !server.fired().await,
        "a rejected request woke the reconciler"
    );

    // An unsigned ping is refused too: only the secret holder learns the endpoint is live.
    let (status, _) = post(&server.url(), &[("x-github-event", "ping")], b"{}".to_vec()).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn pushes_to_other_refs_are_acknowledged_and_ignored() {
    let server = start(github()).await;
    for reference in [
        "refs/heads/feature",
        "refs/tags/v1.0.0",
        "refs/heads/main-old",
    ] {
        let body = push(reference);
        let signature = sign(&body);
        let (status, text) = post(
            &server.url(),
            &[
                ("x-github-event", "push"),
                ("x-hub-signature-256", &signature),
            ],
            body,
        )
        .await;
        assert_eq!(status, 202, "{text}");
        assert!(text.starts_with("ignored: "), "{text}");
        assert!(text.contains(reference), "{text}");
        assert!(text.contains("refs/heads/main"), "{text}");
    }
    assert!(!server.fired().await, "an ignored push woke the reconciler");

    // Without a `ref` (another event, or not JSON) there is nothing to filter on: reconcile.
    for body in [b"{\"zen\":\"ok\"}".to_vec(), b"payload=form".to_vec()] {
        let signature = sign(&body);
        let (status, _) = post(&server.url(), &[("x-hub-signature-256", &signature)], body).await;
        assert_eq!(status, 202);
        assert!(server.fired().await);
    }
}

#[tokio::test]
async fn without_a_branch_every_authenticated_push_triggers() {
    let server = start(Some((WebhookAuth::GitHubHmac(SECRET.into()), None))).await;
    let body = push("refs/heads/feature");
    let signature = sign(&body);
    let (status, text) = post(&server.url(), &[("x-hub-signature-256", &signature)], body).await;
    assert_eq!(
        (status.as_u16(), text.as_str()),
        (202, "reconcile requested\n")
    );
    assert!(server.fired().await);
}

#[tokio::test]
async fn a_signed_ping_is_answered_without_a_reconcile() {
    let server = start(github()).await;
    let body = br#"{"zen":"Design for failure.","hook_id":1}"#.to_vec();
    let signature = sign(&body);
    let (status, text) = post(
        &server.url(),
        &[
            ("x-github-event", "ping"),
            ("x-hub-signature-256", &signature),
        ],
        body,
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(text, "pong\n");
    assert!(!server.fired().await, "a ping woke the reconciler");
}

#[tokio::test]
async fn tokens_are_accepted_in_either_header_and_checked_exactly() {
    let server = start(Some((WebhookAuth::Token(TOKEN.into()), Some("main")))).await;
    let bearer = format!("Bearer {TOKEN}");
    for headers in [
        vec![("authorization", bearer.as_str())],
        vec![("x-plugsync-token", TOKEN)],
    ] {
        let (status, text) = post(&server.url(), &headers, Vec::new()).await;
        assert_eq!(status, 202, "{headers:?}: {text}");
        assert!(server.fired().await, "{headers:?}");
    }
    // The branch filter applies to token requests with a push body too.
    let (status, text) = post(
        &server.url(),
        &[("x-plugsync-token", TOKEN)],
        push("refs/heads/dev"),
    )
    .await;
    assert_eq!(status, 202);
    assert!(text.starts_with("ignored: "), "{text}");
    assert!(!server.fired().await);

    let prefix = &TOKEN[..TOKEN.len() - 1];
    let longer = format!("{TOKEN}0");
    let bearer_prefix = format!("Bearer {prefix}");
    for headers in [
        vec![],
        vec![("authorization", bearer_prefix.as_str())],
        vec![("x-plugsync-token", prefix)],
        vec![("x-plugsync-token", longer.as_str())],
        vec![("authorization", TOKEN)],
        vec![("x-hub-signature-256", "sha256=00")],
    ] {
        let (status, text) = post(&server.url(), &headers, push("refs/heads/main")).await;
        assert_eq!(status, 401, "{headers:?}: {text}");
        assert_no_secret(&text);
    }
    assert!(
        !server.fired().await,
        "a rejected token woke the reconciler"
    );
}

#[tokio::test]
async fn bodies_over_ten_mib_are_413_and_trigger_nothing() {
    let server = start(github()).await;
    let body = vec![b' '; 10 * 1024 * 1024 + 1];
    let signature = sign(&body);
    let (status, _) = post(&server.url(), &[("x-hub-signature-256", &signature)], body).await;
    assert_eq!(status, 413);
    assert!(!server.fired().await);

    // Exactly at the limit is still accepted (whitespace around the JSON is valid JSON).
    let mut body = push("refs/heads/main");
    body.resize(10 * 1024 * 1024, b' ');
    let signature = sign(&body);
    let (status, text) = post(&server.url(), &[("x-hub-signature-256", &signature)], body).await;
    assert_eq!(status, 202, "{text}");
    assert!(server.fired().await);
}

#[tokio::test]
async fn without_a_webhook_the_endpoint_is_404() {
    let server = start(None).await;
    let body = push("refs/heads/main");
    let signature = sign(&body);
    let (status, _) = post(&server.url(), &[("x-hub-signature-256", &signature)], body).await;
    assert_eq!(status, 404);
    assert!(!server.fired().await);
}
