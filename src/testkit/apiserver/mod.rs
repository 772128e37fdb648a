//! The Kubernetes API server double: an in-process HTTP server on loopback that speaks
//! enough of the real kube-apiserver REST protocol for `kube::Client`, `kubectl` and
//! plugsync itself — discovery, CRUD with metav1.Status errors, watches with
//! resourceVersion semantics, server-side apply, dry-run, the status subresource,
//! finalizers, owner-reference garbage collection, Table output and fault injection.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use plugsync::testkit::apiserver::ApiServer;
//! let server = ApiServer::start().await?;
//! let client = server.client(); // a kube::Client pointed at it
//! server.write_kubeconfig("/tmp/kubeconfig", "default")?; // for kubectl
//! server.faults().fail_next(1, 503);
//! # let _ = client; server.shutdown().await; Ok(()) }
//! ```
//!
//! Simplifications versus a real kube-apiserver:
//! - one stored version per resource: CRD versions are relabelled, never converted;
//! - no schema validation, pruning or `fieldValidation` enforcement (kubectl is told through a
//!   minimal `/openapi/v3` that the server validates, so it sends `fieldValidation=Strict`);
//!   built-in defaulting covers a realistic subset (Deployment, Job, Pod, Service, Secret,
//!   Namespace), without port defaults (see `meta::apply_defaults`);
//! - `application/strategic-merge-patch+json` is applied as a JSON merge patch (lists are
//!   replaced, `$patch` directives are not understood);
//! - `limit`/`continue` are ignored (lists are complete), list `resourceVersion` is ignored
//!   (always the latest state);
//! - a watch with `resourceVersion` unset or `"0"` first sends synthetic ADDED events for the
//!   current objects (as the real server does); bookmarks come every second by default;
//! - `generation` is kept for every kind (the real ConfigMap, Secret, … have none);
//! - garbage collection runs synchronously inside the deleting request; Foreground deletion
//!   is modelled with the `foregroundDeletion` finalizer, Orphan strips the owner reference
//!   at once; deleting a CRD removes its objects immediately, finalizers notwithstanding;
//! - protobuf request bodies are decoded only for v1 Namespace, ConfigMap, Secret and
//!   ServiceAccount (what `kubectl create namespace|configmap|secret|serviceaccount` send);
//!   other protobuf bodies get 415; responses are always JSON;
//! - no authentication, authorization, admission webhooks, scale or log subresources.

mod discovery;
mod errors;
mod faults;
mod handlers;
mod jsonpath;
mod meta;
mod protobuf;
mod registry;
mod selector;
mod ssa_glue;
mod store;
mod table;
mod watch;
pub mod workloads;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use errors::ApiError;
pub use faults::{FaultSpec, Faults, Match, Stats, Verb, VerbCounts};
pub use registry::ResourceType;
pub use store::{Propagation, Store};
pub use workloads::{
    BuildOutcome, SimulatorStats, WorkloadMatcher, WorkloadPolicy, WorkloadSimulator,
};

/// Start-up options.
#[derive(Debug, Clone)]
pub struct Options {
    /// Port on 127.0.0.1; 0 picks a free one.
    pub port: u16,
    /// How many events the watch history keeps; a watch from an older resourceVersion gets
    /// an ERROR 410 Expired event.
    pub history: usize,
    /// How often watches with `allowWatchBookmarks=true` get a BOOKMARK.
    pub bookmark_interval: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            port: 0,
            history: 1000,
            bookmark_interval: Duration::from_secs(1),
        }
    }
}

/// A running API server double. Dropping it stops the server.
pub struct ApiServer {
    addr: SocketAddr,
    store: Store,
    faults: Faults,
    stats: faults::StatsCell,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl ApiServer {
    /// Starts on a random loopback port with default options.
    pub async fn start() -> std::io::Result<ApiServer> {
        Self::start_with(Options::default()).await
    }

    /// Starts on `127.0.0.1:port` (0 = random).
    pub async fn start_on(port: u16) -> std::io::Result<ApiServer> {
        Self::start_with(Options {
            port,
            ..Options::default()
        })
        .await
    }

    /// Starts with explicit options.
    pub async fn start_with(opts: Options) -> std::io::Result<ApiServer> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", opts.port)).await?;
        let addr = listener.local_addr()?;
        let store = Store::new(opts.history);
        let faults = Faults::new();
        let stats = faults::StatsCell::default();
        let state = Arc::new(handlers::AppState {
            store: store.clone(),
            faults: faults.clone(),
            stats: stats.clone(),
            addr: addr.to_string(),
            bookmark_interval: opts.bookmark_interval,
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let app = handlers::router(state);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(ApiServer {
            addr,
            store,
            faults,
            stats,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A kubeconfig with cluster, user and context all named `double`.
    pub fn kubeconfig_yaml(&self, namespace: &str) -> String {
        kubeconfig_yaml(&self.url(), namespace)
    }

    /// Writes [`kubeconfig_yaml`](Self::kubeconfig_yaml) to `path`.
    pub fn write_kubeconfig(&self, path: impl AsRef<Path>, namespace: &str) -> std::io::Result<()> {
        std::fs::write(path, self.kubeconfig_yaml(namespace))
    }

    /// A `kube::Config` pointed at the double (default namespace `default`, kube's default
    /// retries on 429/503/504 left on).
    pub fn config(&self) -> kube::Config {
        let uri = self.url().parse().expect("a loopback URL is a valid URI");
        kube::Config::new(uri)
    }

    /// A `kube::Client` for [`config`](Self::config). Must be called inside a Tokio runtime.
    pub fn client(&self) -> kube::Client {
        kube::Client::try_from(self.config()).expect("a plain-HTTP kube client always builds")
    }

    /// The fault-injection handle.
    pub fn faults(&self) -> Faults {
        self.faults.clone()
    }

    /// Request statistics so far.
    pub fn stats(&self) -> Stats {
        self.stats.snapshot()
    }

    /// Zeroes the statistics.
    pub fn reset_stats(&self) {
        self.stats.reset()
    }

    /// Direct access to stored objects (no HTTP, no stats).
    pub fn store(&self) -> Store {
        self.store.clone()
    }

    /// Starts playing the job controller, the deployment controller and the kubelet: Jobs
    /// get a build Pod and finish, Deployments become available, as `policy` says (see
    /// [`workloads`]). Runs until the returned handle is dropped or stopped. Must be called
    /// inside a Tokio runtime.
    pub fn simulate_workloads(&self, policy: WorkloadPolicy) -> WorkloadSimulator {
        WorkloadSimulator::start(self.store.clone(), policy)
    }

    /// Closes open watches and stops serving.
    pub async fn shutdown(mut self) {
        self.faults.drop_watches();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(2), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A kubeconfig for a server URL: cluster, user and context named `double`.
pub fn kubeconfig_yaml(server: &str, namespace: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: double
  cluster:
    server: {server}
users:
- name: double
  user: {{}}
contexts:
- name: double
  context:
    cluster: double
    user: double
    namespace: {namespace}
current-context: double
preferences: {{}}
"
    )
}
