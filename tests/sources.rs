//! Package sources against real servers and programs on this machine: an axum server on
//! loopback for http and the marketplace, shell scripts for external clients.

#[path = "common/http_fixtures.rs"]
mod http_fixtures;

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use http_fixtures::{chunked_body, closed_port, golden_package, golden_package_path};
use http_fixtures::{stalling_body, within, Recorder, Server};
use plugsync_core::fetch::{
    marketplace_download_url, Backoff, FetchError, FetchSettings, FetcherOrigin, Fetchers,
    NoProgress,
};
use tempfile::TempDir;
use url::Url;

/// The longest any test may take; the code under test must finish far sooner.
const BOUND: Duration = Duration::from_secs(20);

fn settings() -> FetchSettings {
    FetchSettings {
        timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(2),
        retries: 3,
        max_bytes: 1024 * 1024,
        plugin_dirs: Vec::new(),
        registry_logins: Default::default(),
    }
}

/// A registry that sees no external clients unless `path` says otherwise.
fn registry_with(settings: FetchSettings, path: Option<OsString>) -> Fetchers {
    let market = Url::parse("https://marketplace.example/").unwrap();
    Fetchers::discover_with_path(settings, market, path).with_backoff(Backoff {
        base: Duration::from_millis(10),
        max: Duration::from_secs(2),
    })
}

fn registry(settings: FetchSettings) -> Fetchers {
    registry_with(settings, None)
}

/// Responds with `failures` 503s, then the golden package.
async fn flaky(State(left): State<Arc<AtomicUsize>>) -> Response {
    let failed = left
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if failed {
        StatusCode::SERVICE_UNAVAILABLE.into_response()
    } else {
        golden_package().into_response()
    }
}

/// Responds 429 with `Retry-After: 1` once, then the golden package.
async fn rate_limited(State(left): State<Arc<AtomicUsize>>) -> Response {
    let limited = left
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if limited {
        (StatusCode::TOO_MANY_REQUESTS, [(header::RETRY_AFTER, "1")]).into_response()
    } else {
        golden_package().into_response()
    }
}

async fn marketplace(
    UrlPath((author, name, version)): UrlPath<(String, String, String)>,
) -> Response {
    if (author.as_str(), name.as_str(), version.as_str()) == ("langgenius", "agent", "0.0.14") {
        golden_package().into_response()
    } else {
        StatusCode::NOT_FOUND.into_response()
    }
}

/// Every route the HTTP tests use; `failures` feeds `/flaky` and `/limited`.
fn router(failures: usize) -> Router {
    let market = Router::new().route(
        "/api/v1/plugins/{author}/{name}/{version}/download",
        get(marketplace),
    );
    let left = Arc::new(AtomicUsize::new(failures));
    Router::new()
        .route("/pkg", get(|| async { golden_package() }))
        .route("/chunked", get(|| async { chunked_body(10, 1000) }))
        .route("/big", get(|| async { vec![0u8; 5000] }))
        .route("/missing", get(|| async { StatusCode::NOT_FOUND }))
        .route(
            "/ua",
            get(|headers: HeaderMap| async move {
                headers
                    .get(header::USER_AGENT)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned()
            }),
        )
        .route("/stall-body", get(|| async { stalling_body(b"PK") }))
        .route(
            "/never",
            get(|| async { std::future::pending::<&'static str>().await }),
        )
        .route("/flaky", get(flaky).with_state(left.clone()))
        .route("/limited", get(rate_limited).with_state(left))
        .merge(market.clone())
        .nest("/market", market)
}

// ---------------------------------------------------------------- http(s)

#[tokio::test]
async fn http_download_returns_bytes_and_reports_progress() {
    let server = Server::start(router(0)).await;
    let progress = Recorder::default();
    let bytes = within(
        BOUND,
        registry(settings()).fetch(&server.url("pkg"), &progress),
    )
    .await
    .unwrap();
    let golden = golden_package();
    assert_eq!(bytes, golden);
    assert_eq!(progress.starts(), vec![Some(golden.len() as u64)]);
    assert_eq!(progress.advanced(), golden.len() as u64);
    assert_eq!(server.hits(), 1);
}

#[tokio::test]
async fn http_download_without_content_length() {
    let server = Server::start(router(0)).await;
    let progress = Recorder::default();
    let bytes = within(
        BOUND,
        registry(settings()).fetch(&server.url("chunked"), &progress),
    )
    .await
    .unwrap();
    assert_eq!(bytes, vec![7u8; 10_000]);
    assert_eq!(progress.starts(), vec![None]);
    assert_eq!(progress.advanced(), 10_000);
}

#[tokio::test]
async fn http_sends_plugsync_user_agent() {
    let server = Server::start(router(0)).await;
    let bytes = within(
        BOUND,
        registry(settings()).fetch(&server.url("ua"), &NoProgress),
    )
    .await
    .unwrap();
    assert_eq!(
        String::from_utf8(bytes).unwrap(),
        format!("plugsync/{}", env!("CARGO_PKG_VERSION"))
    );
}

#[tokio::test]
async fn http_404_fails_at_once_without_retries() {
    let server = Server::start(router(0)).await;
    let err = within(
        BOUND,
        registry(settings()).fetch(&server.url("missing"), &NoProgress),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, FetchError::Status { status: 404, .. }),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(message.contains("404 Not Found"), "{message}");
    assert!(message.starts_with("GET http://127.0.0.1:"), "{message}");
    assert_eq!(server.hits(), 1);
}

#[tokio::test]
async fn http_503_twice_then_ok_succeeds_after_retries() {
    let server = Server::start(router(2)).await;
    let bytes = within(
        BOUND,
        registry(settings()).fetch(&server.url("flaky"), &NoProgress),
    )
    .await
    .unwrap();
    assert_eq!(bytes, golden_package());
    assert_eq!(server.hits(), 3);
}

#[tokio::test]
async fn http_503_twice_with_one_retry_fails() {
    let server = Server::start(router(2)).await;
    let settings = FetchSettings {
        retries: 1,
        ..settings()
    };
    let err = within(
        BOUND,
        registry(settings).fetch(&server.url("flaky"), &NoProgress),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, FetchError::Status { status: 503, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("503 Service Unavailable"), "{err}");
    assert_eq!(server.hits(), 2);
}

#[tokio::test]
async fn http_429_honours_retry_after() {
    let server = Server::start(router(1)).await;
    let started = Instant::now();
    let bytes = within(
        BOUND,
        registry(settings()).fetch(&server.url("limited"), &NoProgress),
    )
    .await
    .unwrap();
    assert_eq!(bytes, golden_package());
    assert_eq!(server.hits(), 2);
    // The backoff alone would be 10 ms; Retry-After asked for a second.
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn http_stalled_body_times_out() {
    let server = Server::start(router(0)).await;
    let settings = FetchSettings {
        timeout: Duration::from_millis(500),
        retries: 0,
        ..settings()
    };
    let started = Instant::now();
    let err = within(
        BOUND,
        registry(settings).fetch(&server.url("stall-body"), &NoProgress),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, FetchError::Timeout { .. }), "{err:?}");
    assert!(err.to_string().contains("timed out after 500ms"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn http_server_that_never_answers_times_out_and_is_retried() {
    let server = Server::start(router(0)).await;
    let settings = FetchSettings {
        timeout: Duration::from_millis(500),
        retries: 1,
        ..settings()
    };
    let started = Instant::now();
    let err = within(
        BOUND,
        registry(settings).fetch(&server.url("never"), &NoProgress),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, FetchError::Timeout { .. }), "{err:?}");
    assert_eq!(server.hits(), 2);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn http_too_large_by_content_length_is_refused_early() {
    let server = Server::start(router(0)).await;
    let settings = FetchSettings {
        max_bytes: 1000,
        ..settings()
    };
    let progress = Recorder::default();
    let err = within(
        BOUND,
        registry(settings).fetch(&server.url("big"), &progress),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            FetchError::TooLarge {
                limit: 1000,
                seen: 5000,
                declared: true,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(progress.advanced(), 0, "refused before reading the body");
    assert_eq!(server.hits(), 1, "too large is not retried");
}

#[tokio::test]
async fn http_too_large_while_streaming_is_refused() {
    let server = Server::start(router(0)).await;
    let settings = FetchSettings {
        max_bytes: 2500,
        ..settings()
    };
    let err = within(
        BOUND,
        registry(settings).fetch(&server.url("chunked"), &NoProgress),
    )
    .await
    .unwrap_err();
    match err {
        FetchError::TooLarge {
            limit: 2500,
            seen,
            declared: false,
            ..
        } => assert!(seen > 2500 && seen <= 10_000, "{seen}"),
        other => panic!("expected TooLarge while streaming, got {other:?}"),
    }
    assert_eq!(server.hits(), 1);
}

#[tokio::test]
async fn credentials_never_appear_in_errors() {
    let server = Server::start(router(0)).await;
    let port = server.base.port().unwrap();
    let url = Url::parse(&format!(
        "http://user:s3cret@127.0.0.1:{port}/missing?token=abc"
    ))
    .unwrap();
    let err = within(BOUND, registry(settings()).fetch(&url, &NoProgress))
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(message.contains("404"), "{message}");
    assert!(
        !message.contains("s3cret") && !message.contains("abc"),
        "{message}"
    );
    assert!(!format!("{err:?}").contains("s3cret"), "{err:?}");

    // A connection failure carries reqwest's own text: it must not leak either.
    let refused = Url::parse(&format!(
        "http://user:s3cret@127.0.0.1:{}/x?token=abc",
        closed_port().await
    ))
    .unwrap();
    let settings = FetchSettings {
        retries: 0,
        ..settings()
    };
    let err = within(BOUND, registry(settings).fetch(&refused, &NoProgress))
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::Network { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        !message.contains("s3cret") && !message.contains("abc"),
        "{message}"
    );
    assert!(message.contains("***@127.0.0.1"), "{message}");
}

// ---------------------------------------------------------------- marketplace

#[tokio::test]
async fn marketplace_download_through_http() {
    let server = Server::start(router(0)).await;
    let url = marketplace_download_url(&server.base, "langgenius", "agent", "0.0.14");
    assert_eq!(
        url.path(),
        "/api/v1/plugins/langgenius/agent/0.0.14/download"
    );
    let bytes = within(BOUND, registry(settings()).fetch(&url, &NoProgress))
        .await
        .unwrap();
    assert_eq!(bytes, golden_package());
}

#[tokio::test]
async fn marketplace_base_with_path_prefix() {
    let server = Server::start(router(0)).await;
    for prefix in ["market/", "market"] {
        let base = server.url(prefix);
        let url = marketplace_download_url(&base, "langgenius", "agent", "0.0.14");
        let bytes = within(BOUND, registry(settings()).fetch(&url, &NoProgress))
            .await
            .unwrap();
        assert_eq!(bytes, golden_package(), "base {base}");
    }
}

#[tokio::test]
async fn marketplace_unknown_version_is_404() {
    let server = Server::start(router(0)).await;
    let url = marketplace_download_url(&server.base, "langgenius", "agent", "9.9.9");
    let err = within(BOUND, registry(settings()).fetch(&url, &NoProgress))
        .await
        .unwrap_err();
    assert!(
        matches!(err, FetchError::Status { status: 404, .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("/agent/9.9.9/download: 404"),
        "{err}"
    );
}

// ---------------------------------------------------------------- file

#[tokio::test]
async fn file_url_of_golden_package() {
    let url = Url::from_file_path(golden_package_path()).unwrap();
    let progress = Recorder::default();
    let bytes = registry(settings()).fetch(&url, &progress).await.unwrap();
    let golden = golden_package();
    assert_eq!(bytes, golden);
    assert_eq!(progress.starts(), vec![Some(golden.len() as u64)]);
    assert_eq!(progress.advanced(), golden.len() as u64);
}

#[tokio::test]
async fn file_url_with_host_is_refused() {
    let url = Url::parse("file://otherhost/etc/hostname").unwrap();
    let err = registry(settings())
        .fetch(&url, &NoProgress)
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::InvalidUrl { .. }), "{err:?}");
    assert!(err.to_string().contains("file:///abs/path"), "{err}");
}

#[tokio::test]
async fn file_too_large_and_missing() {
    let url = Url::from_file_path(golden_package_path()).unwrap();
    let small = FetchSettings {
        max_bytes: 1000,
        ..settings()
    };
    let err = registry(small).fetch(&url, &NoProgress).await.unwrap_err();
    assert!(
        matches!(
            err,
            FetchError::TooLarge {
                limit: 1000,
                declared: true,
                ..
            }
        ),
        "{err:?}"
    );

    let missing = Url::parse("file:///nonexistent/plugsync/pkg.difypkg").unwrap();
    let err = registry(settings())
        .fetch(&missing, &NoProgress)
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::Io { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("/nonexistent/plugsync/pkg.difypkg"),
        "{err}"
    );
}

// ---------------------------------------------------------------- external

/// Writes an executable script `name` into `dir`.
fn install_script(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// A temp dir holding the demo client (made executable here: git may drop the bit) and
/// `packages/` with the golden package in it.
fn demo_dir() -> (TempDir, PathBuf) {
    let dir = TempDir::new().unwrap();
    let script = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/source-plugins/plugsync-source-demo"),
    )
    .unwrap();
    let path = install_script(dir.path(), "plugsync-source-demo", &script);
    std::fs::create_dir(dir.path().join("packages")).unwrap();
    std::fs::copy(
        golden_package_path(),
        dir.path().join("packages/agent.difypkg"),
    )
    .unwrap();
    (dir, path)
}

fn with_plugin_dir(dir: &Path) -> FetchSettings {
    FetchSettings {
        plugin_dirs: vec![dir.to_path_buf()],
        ..settings()
    }
}

fn demo_url(name: &str) -> Url {
    Url::parse(&format!("demo://{name}")).unwrap()
}

#[tokio::test]
async fn external_fetch_returns_stdout() {
    let (dir, _) = demo_dir();
    let progress = Recorder::default();
    let bytes = within(
        BOUND,
        registry(with_plugin_dir(dir.path())).fetch(&demo_url("agent.difypkg"), &progress),
    )
    .await
    .unwrap();
    assert_eq!(bytes, golden_package());
    assert_eq!(progress.advanced(), bytes.len() as u64);
}

#[tokio::test]
async fn external_failure_names_program_status_and_stderr() {
    let (dir, program) = demo_dir();
    let url = Url::parse("demo://fail?token=abc").unwrap();
    let err = within(
        BOUND,
        registry(with_plugin_dir(dir.path())).fetch(&url, &NoProgress),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, FetchError::External { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains(&program.display().to_string()),
        "{message}"
    );
    assert!(message.contains("exit status: 3"), "{message}");
    assert!(message.contains("boom"), "{message}");
    // The client echoed the URL on stderr; its token must not come through.
    assert!(
        message.contains("fetching demo://fail?token=***"),
        "{message}"
    );
    assert!(!message.contains("abc"), "{message}");
}

#[tokio::test]
async fn external_empty_output_is_a_failure() {
    let (dir, _) = demo_dir();
    let err = within(
        BOUND,
        registry(with_plugin_dir(dir.path())).fetch(&demo_url("empty"), &NoProgress),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, FetchError::External { .. }), "{err:?}");
    assert!(err.to_string().contains("wrote nothing"), "{err}");
}

#[tokio::test]
async fn external_output_over_the_cap_is_too_large() {
    let (dir, _) = demo_dir();
    let settings = FetchSettings {
        max_bytes: 1000,
        ..with_plugin_dir(dir.path())
    };
    let err = within(
        BOUND,
        registry(settings).fetch(&demo_url("agent.difypkg"), &NoProgress),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            FetchError::TooLarge {
                limit: 1000,
                declared: false,
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn external_client_past_the_timeout_is_killed() {
    let (dir, _) = demo_dir();
    let settings = FetchSettings {
        timeout: Duration::from_millis(500),
        ..with_plugin_dir(dir.path())
    };
    let started = Instant::now();
    let err = within(
        BOUND,
        registry(settings).fetch(&demo_url("slow"), &NoProgress),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, FetchError::Timeout { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("plugsync-source-demo fetch demo://slow"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let pid = std::fs::read_to_string(dir.path().join("slow.pid")).unwrap();
    let proc_dir = Path::new("/proc").join(pid.trim());
    if Path::new("/proc/self").exists() {
        assert!(!proc_dir.exists(), "client {} still running", pid.trim());
    }
}

#[tokio::test]
async fn list_shows_in_tree_and_external_clients() {
    let (dir, program) = demo_dir();
    install_script(
        dir.path(),
        "plugsync-source-broken",
        "#!/bin/sh\necho nope >&2\nexit 1\n",
    );
    install_script(dir.path(), "plugsync-source-https", "#!/bin/sh\nexit 0\n");
    // Not executable: not a client.
    std::fs::write(dir.path().join("plugsync-source-inert"), "#!/bin/sh\n").unwrap();

    let infos = within(BOUND, registry(with_plugin_dir(dir.path())).list()).await;
    let schemes: Vec<(&str, bool)> = infos
        .iter()
        .map(|i| (i.scheme.as_str(), i.origin == FetcherOrigin::InTree))
        .collect();
    assert_eq!(
        schemes,
        [
            ("broken", false),
            ("demo", false),
            ("file", true),
            ("http", true),
            ("https", true),
            ("https", false),
            ("marketplace", true),
            ("oci", true),
            ("oci+http", true),
        ]
    );

    let demo = &infos[1];
    assert_eq!(demo.origin, FetcherOrigin::External { path: program });
    assert_eq!(demo.description, "demo packages next to the script");
    assert_eq!(demo.attributes["version"], "1.2.3");
    assert!(
        demo.attributes["root"].ends_with("/packages"),
        "{:?}",
        demo.attributes
    );

    let broken = &infos[0];
    assert!(
        broken.attributes["error"].contains("exit status: 1"),
        "{broken:?}"
    );
    assert!(broken.attributes["error"].contains("nope"), "{broken:?}");

    let shadowed = &infos[5];
    assert_eq!(shadowed.attributes["shadowed"], "in-tree");

    assert_eq!(
        infos[6].attributes["base_url"],
        "https://marketplace.example/"
    );
    assert_eq!(infos[3].attributes["retries"], "3");
    assert_eq!(infos[3].attributes["timeout"], "5s");
    assert_eq!(infos[2].attributes["max_bytes"], "1048576");
}

#[tokio::test]
async fn in_tree_schemes_cannot_be_overridden() {
    let (dir, _) = demo_dir();
    install_script(
        dir.path(),
        "plugsync-source-file",
        "#!/bin/sh\necho hijacked\n",
    );
    let url = Url::from_file_path(golden_package_path()).unwrap();
    let bytes = registry(with_plugin_dir(dir.path()))
        .fetch(&url, &NoProgress)
        .await
        .unwrap();
    assert_eq!(bytes, golden_package());
}

#[tokio::test]
async fn external_found_on_path_and_plugin_dir_wins() {
    let (plugin_dir, plugin_program) = demo_dir();
    let path_dir = TempDir::new().unwrap();
    install_script(
        path_dir.path(),
        "plugsync-source-demo",
        "#!/bin/sh\nprintf 'from PATH'\n",
    );
    install_script(
        path_dir.path(),
        "plugsync-source-other",
        "#!/bin/sh\nprintf 'other from PATH'\n",
    );
    let path = std::env::join_paths([Path::new("/nonexistent"), path_dir.path()]).unwrap();

    // PATH alone: found there.
    let from_path = registry_with(settings(), Some(path.clone()));
    let bytes = from_path.fetch(&demo_url("x"), &NoProgress).await.unwrap();
    assert_eq!(bytes, b"from PATH");

    // The plugin dir comes first; PATH still serves the schemes it alone has.
    let both = registry_with(with_plugin_dir(plugin_dir.path()), Some(path));
    let bytes = both
        .fetch(&demo_url("agent.difypkg"), &NoProgress)
        .await
        .unwrap();
    assert_eq!(bytes, golden_package());
    let bytes = both
        .fetch(&Url::parse("other://y").unwrap(), &NoProgress)
        .await
        .unwrap();
    assert_eq!(bytes, b"other from PATH");
    let demo = both
        .list()
        .await
        .into_iter()
        .find(|i| i.scheme == "demo")
        .unwrap();
    assert_eq!(
        demo.origin,
        FetcherOrigin::External {
            path: plugin_program
        }
    );
}

#[tokio::test]
async fn unknown_scheme_lists_known_schemes() {
    let (dir, _) = demo_dir();
    let url = Url::parse("s3://bucket/key?X-Amz-Signature=abc").unwrap();
    let err = registry(with_plugin_dir(dir.path()))
        .fetch(&url, &NoProgress)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, FetchError::UnsupportedScheme { scheme, .. } if scheme == "s3"),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains("known schemes: demo, file, http, https, oci, oci+http"),
        "{message}"
    );
    assert!(!message.contains("abc"), "{message}");
    // And how to get a client for it.
    assert!(
        message.contains(
            "install one: an executable named `plugsync-source-s3` in a directory on PATH or given with --plugin-dir"
        ),
        "{message}"
    );
    assert!(message.contains("`plugsync sources`"), "{message}");
}
