//! The set-up of tests that run the real `plugsync` binary against the API server double: a
//! namespace `dify`, a synthetic repository of N plugins with its packages in a cache, and a
//! kubeconfig pointing at the double.

use plugsync::resolve::cache::Cache;
use plugsync::testkit::apiserver::ApiServer;
use serde_json::json;

/// The namespace the synthetic set declares.
pub const NS: &str = "dify";

/// The double, the repository, the cache and the kubeconfig of one test.
pub struct Env {
    /// The API server double.
    pub server: ApiServer,
    /// The synthetic repository (plugins.yaml and plugins.lock).
    pub repo: tempfile::TempDir,
    /// The package cache (`PLUGSYNC_CACHE_DIR`).
    pub cache: tempfile::TempDir,
    /// Holds `config`, the kubeconfig.
    pub kubeconfig: tempfile::TempDir,
}

impl Env {
    /// A double with namespace `dify` and a synthetic repository of `n` plugins.
    pub async fn new(n: usize) -> Env {
        let server = ApiServer::start().await.expect("double");
        server
            .store()
            .put(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}))
            .expect("namespace");
        let repo = tempfile::tempdir().expect("repo");
        let cache = tempfile::tempdir().expect("cache");
        plugsync::synth::generate_repo(repo.path(), n, &Cache::open(cache.path()).expect("cache"))
            .expect("generate");
        let kubeconfig = tempfile::tempdir().expect("kubeconfig");
        server
            .write_kubeconfig(kubeconfig.path().join("config"), NS)
            .expect("kubeconfig");
        Env {
            server,
            repo,
            cache,
            kubeconfig,
        }
    }

    /// The kubeconfig file.
    pub fn kubeconfig_path(&self) -> std::path::PathBuf {
        self.kubeconfig.path().join("config")
    }
}
