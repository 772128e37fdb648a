//! The build-context endpoint over real HTTP on loopback, fetched the way a build Job does.

use plugsync_core::render::build_context;
use plugsync_core::resolve::cache::Cache;

async fn start(cache: Cache) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, plugsync_kube::server::router(cache)).await;
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn serves_stored_contexts_by_sha256_and_nothing_else() {
    let dir = tempfile::tempdir().expect("dir");
    let cache = Cache::open(dir.path()).expect("cache");
    let context = build_context(b"package bytes", "FROM python:3.12\n");
    assert_eq!(cache.put(&context.bytes).expect("put"), context.sha256);
    let base = start(cache).await;
    let client = reqwest::Client::new();

    let response = client
        .get(format!("{base}/contexts/{}", context.sha256))
        .send()
        .await
        .expect("get");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/x-tar");
    let body = response.bytes().await.expect("body");
    assert_eq!(body.as_ref(), context.bytes.as_slice());
    assert_eq!(
        plugsync_core::package::sha256_hex(&body),
        context.sha256,
        "what sha256sum -c checks"
    );

    let missing = client
        .get(format!("{base}/contexts/{}", "0".repeat(64)))
        .send()
        .await
        .expect("get");
    assert_eq!(missing.status(), 404);
    for bad in ["..%2F..%2Fetc%2Fpasswd", "ABC", &"A".repeat(64)] {
        let r = client
            .get(format!("{base}/contexts/{bad}"))
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), 400, "{bad}");
    }
    assert_eq!(
        client
            .get(format!("{base}/healthz"))
            .send()
            .await
            .expect("get")
            .status(),
        200
    );
}

/// Serves `router_with(state)` on a free loopback port; the server stops when the returned
/// sender is dropped.
async fn start_with(
    state: plugsync_kube::server::ServerState,
) -> (String, tokio::sync::oneshot::Sender<()>) {
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
    (base, stop)
}

#[tokio::test]
async fn the_full_router_still_serves_contexts_and_liveness() {
    let dir = tempfile::tempdir().expect("dir");
    let cache = Cache::open(dir.path()).expect("cache");
    let context = build_context(b"package bytes", "FROM python:3.12\n");
    cache.put(&context.bytes).expect("put");
    let (base, _stop) = start_with(plugsync_kube::server::ServerState::new(cache)).await;
    let client = reqwest::Client::new();
    let response = client
        .get(format!("{base}/contexts/{}", context.sha256))
        .send()
        .await
        .expect("get");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.bytes().await.expect("body").as_ref(),
        context.bytes.as_slice()
    );
    let bad = client
        .get(format!("{base}/contexts/ABC"))
        .send()
        .await
        .expect("get");
    assert_eq!(bad.status(), 400);
    // Liveness does not depend on readiness: a starting replica is alive.
    let health = client
        .get(format!("{base}/healthz"))
        .send()
        .await
        .expect("get");
    assert_eq!(health.status(), 200);
    let ready = client
        .get(format!("{base}/readyz"))
        .send()
        .await
        .expect("get");
    assert_eq!(ready.status(), 503);
}

#[tokio::test]
async fn readyz_follows_the_readiness_handle() {
    let dir = tempfile::tempdir().expect("dir");
    let state = plugsync_kube::server::ServerState::new(Cache::open(dir.path()).expect("cache"));
    let readiness = state.readiness.clone();
    let (base, _stop) = start_with(state).await;
    let client = reqwest::Client::new();
    let readyz = || async {
        let r = client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .expect("get");
        (r.status().as_u16(), r.text().await.expect("text"))
    };

    let (status, text) = readyz().await;
    assert_eq!(status, 503);
    assert!(text.contains("starting"), "{text}");
    readiness.set_ready();
    assert_eq!(readyz().await, (200, "ok\n".to_owned()));
    readiness.set_not_ready("git fetch failing for 5m");
    let (status, text) = readyz().await;
    assert_eq!(status, 503);
    assert!(text.contains("git fetch failing for 5m"), "{text}");
    readiness.set_ready();
    assert_eq!(readyz().await.0, 200);
}

#[tokio::test]
async fn metrics_are_served_as_openmetrics_text() {
    use plugsync_kube::metrics::{BuildResult, ReconcileResult};
    use std::time::Duration;

    let dir = tempfile::tempdir().expect("dir");
    let state = plugsync_kube::server::ServerState::new(Cache::open(dir.path()).expect("cache"));
    let metrics = state.metrics.clone();
    let (base, _stop) = start_with(state).await;
    metrics.observe_reconcile(Duration::from_millis(1500), ReconcileResult::Applied);
    metrics.build_finished(BuildResult::Succeeded);
    metrics.set_plugins_by_phase(&[("Running", 2)]);
    metrics.set_leader(true);

    let response = reqwest::get(format!("{base}/metrics")).await.expect("get");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let text = response.text().await.expect("text");
    for line in [
        "# TYPE plugsync_reconcile_duration_seconds histogram",
        "plugsync_reconcile_duration_seconds_count{result=\"applied\"} 1",
        "plugsync_reconcile_duration_seconds_sum{result=\"applied\"} 1.5",
        "plugsync_reconcile_duration_seconds_bucket{le=\"1.0\",result=\"applied\"} 0",
        "plugsync_reconcile_duration_seconds_bucket{le=\"2.5\",result=\"applied\"} 1",
        "plugsync_reconciles_total{result=\"applied\"} 1",
        "plugsync_builds_total{result=\"succeeded\"} 1",
        "plugsync_plugins{phase=\"Running\"} 2",
        "plugsync_plugins{phase=\"Pending\"} 0",
        "plugsync_leader 1",
        "# EOF",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
}
