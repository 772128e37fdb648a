//! The set-up of tests that run the real `plugsync` binary against the test control plane:
//! a fresh namespace per test, a synthetic repository of N plugins declared in it (images
//! pushed to the test registry, schedulable on the fake node), its packages in a cache, and
//! a kubeconfig pointing at a fault proxy in front of the API server (request counts, faults).
//!
//! The plugsync CRDs are installed once per test binary as a platform team does it,
//! `kubectl apply --server-side -f deploy/crds/`, before any plugsync process runs.
//!
//! The including test binary declares `cluster` (`common/cluster.rs`) and `fault_proxy`
//! (`common/fault_proxy.rs`) at its root.
#![allow(dead_code)] // not every test binary uses every helper

use std::path::{Path, PathBuf};
use std::time::Duration;

use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams};
use plugsync_core::resolve::cache::Cache;
use serde_json::Value;

use crate::cluster::{cluster, TestCluster};
use crate::fault_proxy::FaultProxy;

/// The name of the synthetic PluginSet.
pub const SET: &str = "synth";
/// The apiVersion of plugsync's kinds.
pub const PLUGSYNC: &str = "plugsync.dev/v1alpha1";

/// The cluster, the namespace, the proxy, the repository, the cache and the kubeconfig of
/// one test.
pub struct Env {
    /// The control plane of this test binary.
    pub c: &'static TestCluster,
    /// This test's namespace, where the synthetic set lives.
    pub ns: String,
    /// The fault proxy the kubeconfig points at.
    pub proxy: FaultProxy,
    /// The synthetic repository (plugins.yaml and plugins.lock).
    pub repo: tempfile::TempDir,
    /// The package cache (`PLUGSYNC_CACHE_DIR`).
    pub cache: tempfile::TempDir,
    /// Holds `config`, the kubeconfig.
    pub kubeconfig: tempfile::TempDir,
}

static CRDS: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();

/// `deploy/crds/`, server-side applied with kubectl (once per test binary) and Established.
pub async fn install_crds_with_kubectl(c: &'static TestCluster) {
    CRDS.get_or_init(|| async {
        tokio::task::spawn_blocking(move || {
            c.kubectl_ok(&["apply", "--server-side", "-f", &crds_dir()]);
            c.kubectl_ok(&[
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                "crd/plugins.plugsync.dev",
                "crd/pluginsets.plugsync.dev",
            ]);
        })
        .await
        .expect("kubectl");
    })
    .await;
}

/// The shipped CRDs.
pub fn crds_dir() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/crds")
        .to_str()
        .expect("utf-8 path")
        .to_string()
}

/// The `ApiResource` of `kind` in `api_version`.
pub fn resource(api_version: &str, kind: &str) -> ApiResource {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind))
}

impl Env {
    /// A fresh namespace named after `label` and a synthetic repository of `n` plugins in it.
    pub async fn new(label: &str, n: usize) -> Env {
        let c = cluster().await;
        install_crds_with_kubectl(c).await;
        let ns = c.namespace(label).await;
        let repo = tempfile::tempdir().expect("repo");
        let cache = tempfile::tempdir().expect("cache");
        c.synthetic_repo(
            repo.path(),
            n,
            &Cache::open(cache.path()).expect("cache"),
            &ns,
        );
        let proxy = FaultProxy::start(&c.kubeconfig()).await;
        let kubeconfig = tempfile::tempdir().expect("kubeconfig");
        proxy.write_kubeconfig(kubeconfig.path().join("config"), &ns);
        Env {
            c,
            ns,
            proxy,
            repo,
            cache,
            kubeconfig,
        }
    }

    /// The kubeconfig file (through the proxy, this test's namespace).
    pub fn kubeconfig_path(&self) -> PathBuf {
        self.kubeconfig.path().join("config")
    }

    /// `plugsync` with `args`, the kubeconfig and the cache of this test.
    pub fn plugsync(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(assert_cmd::cargo::cargo_bin("plugsync"));
        cmd.args(args)
            .env("KUBECONFIG", self.kubeconfig_path())
            .env("PLUGSYNC_CACHE_DIR", self.cache.path())
            .env_remove("PLUGSYNC_PLUGIN_DIRS")
            .env_remove("PLUGSYNC_CONTEXT_URL")
            .kill_on_drop(true);
        cmd
    }

    /// Runs `cmd` to its end (at most two minutes).
    pub async fn output(mut cmd: tokio::process::Command) -> std::process::Output {
        tokio::time::timeout(Duration::from_secs(120), cmd.output())
            .await
            .expect("finishes")
            .expect("runs")
    }

    /// An admin client straight to the API server (not through the proxy).
    pub async fn client(&self) -> kube::Client {
        self.c.client().await
    }

    /// `kind` in this test's namespace, straight to the API server.
    pub async fn api(&self, api_version: &str, kind: &str) -> Api<DynamicObject> {
        Api::namespaced_with(self.client().await, &self.ns, &resource(api_version, kind))
    }

    /// Every object of `kind` in the namespace, as JSON.
    pub async fn list(&self, api_version: &str, kind: &str) -> Vec<Value> {
        self.api(api_version, kind)
            .await
            .list(&ListParams::default())
            .await
            .expect("list")
            .items
            .into_iter()
            .map(|o| serde_json::to_value(o).expect("json"))
            .collect()
    }

    /// One object of `kind`, if it exists.
    pub async fn get(&self, api_version: &str, kind: &str, name: &str) -> Option<Value> {
        self.api(api_version, kind)
            .await
            .get_opt(name)
            .await
            .expect("get")
            .map(|o| serde_json::to_value(o).expect("json"))
    }

    /// The Plugins in the namespace.
    pub async fn plugins(&self) -> Vec<Value> {
        self.list(PLUGSYNC, "Plugin").await
    }

    /// `(kind, name)` of every Plugin, Job, Deployment and Service in the namespace, sorted.
    pub async fn plugsync_objects(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (v, k) in [
            (PLUGSYNC, "Plugin"),
            ("batch/v1", "Job"),
            ("apps/v1", "Deployment"),
            ("v1", "Service"),
        ] {
            for o in self.list(v, k).await {
                out.push((k.to_string(), name(&o).to_string()));
            }
        }
        out.sort();
        out
    }

    /// The names in the synthetic PluginSet's inventory (empty when it does not exist).
    pub async fn inventory(&self) -> Vec<String> {
        let Some(set) = self.get(PLUGSYNC, "PluginSet", SET).await else {
            return Vec::new();
        };
        let mut names: Vec<String> = set["status"]["inventory"]
            .as_array()
            .map(|entries| {
                entries
                    .iter()
                    .filter_map(|e| e["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }
}

/// `metadata.name` of an object.
pub fn name(o: &Value) -> &str {
    o["metadata"]["name"].as_str().expect("name")
}

/// Lossy UTF-8 of process output.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
