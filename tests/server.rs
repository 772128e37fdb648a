//! The build-context endpoint over real HTTP on loopback, fetched the way a build Job does.

use plugsync::render::build_context;
use plugsync::resolve::cache::Cache;

async fn start(cache: Cache) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, plugsync::server::router(cache)).await;
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
        plugsync::package::sha256_hex(&body),
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
