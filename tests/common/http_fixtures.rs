//! Loopback HTTP servers and progress recorders for the source tests.
#![allow(dead_code)] // each test binary uses a different subset

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::Router;
use futures::StreamExt;
use plugsync_core::fetch::Progress;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use url::Url;

/// The golden package from `tests/fixtures/packages`.
pub fn golden_package() -> Vec<u8> {
    std::fs::read(golden_package_path()).expect("golden package fixture")
}

/// Absolute path of the golden package.
pub fn golden_package_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/packages/langgenius-agent_0.0.14.difypkg")
}

/// A server on `127.0.0.1:<ephemeral>` that counts every request it receives.
pub struct Server {
    /// `http://127.0.0.1:<port>/`.
    pub base: Url,
    hits: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Server {
    /// Serves `router` until dropped.
    pub async fn start(router: Router) -> Server {
        let hits = Arc::new(AtomicUsize::new(0));
        let router = router.layer(middleware::from_fn_with_state(hits.clone(), count));
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Server {
            base: Url::parse(&format!("http://{addr}/")).expect("base url"),
            hits,
            task,
        }
    }

    /// `base` joined with `path`.
    pub fn url(&self, path: &str) -> Url {
        self.base.join(path).expect("url")
    }

    /// Requests received so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn count(State(hits): State<Arc<AtomicUsize>>, request: Request, next: Next) -> Response {
    hits.fetch_add(1, Ordering::SeqCst);
    next.run(request).await
}

/// A chunked body (no Content-Length) of `chunks` pieces of `size` bytes.
pub fn chunked_body(chunks: usize, size: usize) -> Body {
    let stream = futures::stream::iter(
        (0..chunks).map(move |_| Ok::<_, Infallible>(Bytes::from(vec![7u8; size]))),
    );
    Body::from_stream(stream)
}

/// A body that sends `first` and then never another byte nor its end.
pub fn stalling_body(first: &'static [u8]) -> Body {
    let stream =
        futures::stream::once(async move { Ok::<_, Infallible>(Bytes::from_static(first)) })
            .chain(futures::stream::pending());
    Body::from_stream(stream)
}

/// An unused loopback port (bound, then released), for connection-refused cases.
pub async fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("addr").port()
}

/// Records what a fetch reported.
#[derive(Default)]
pub struct Recorder {
    /// Every `start` call's total.
    pub starts: Mutex<Vec<Option<u64>>>,
    /// Sum of `advance` calls.
    pub advanced: AtomicU64,
}

impl Progress for Recorder {
    fn start(&self, total: Option<u64>) {
        self.starts.lock().expect("lock").push(total);
    }
    fn advance(&self, bytes: u64) {
        self.advanced.fetch_add(bytes, Ordering::SeqCst);
    }
}

impl Recorder {
    /// The `start` totals seen.
    pub fn starts(&self) -> Vec<Option<u64>> {
        self.starts.lock().expect("lock").clone()
    }
    /// Bytes advanced.
    pub fn advanced(&self) -> u64 {
        self.advanced.load(Ordering::SeqCst)
    }
}

/// Runs `fut`, failing the test if it takes longer than `bound` (a safety net: the code
/// under test must end on its own, well before).
pub async fn within<T>(bound: Duration, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(bound, fut)
        .await
        .unwrap_or_else(|_| panic!("did not finish within {bound:?}"))
}
