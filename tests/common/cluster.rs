//! The real Kubernetes control plane under the cluster tests (`tests/cluster/up`): one per
//! test binary, started on first use and stopped when the binary exits, a namespace per test.
//!
//! `PLUGSYNC_TEST_CLUSTER=DIR` points every test binary at a control plane already running in
//! DIR (`tests/cluster/up DIR`), which saves the start-up per binary while developing.
//!
//! The node side is kwok plus the Kaniko stand-in (`tests/cluster/testcluster`): pods become
//! Running and Ready, build Job pods push a real image to the registry their `--destination`
//! names and end with its digest as termination message. Labels on a plugin's pods steer it
//! (see [`labels`]).
#![allow(dead_code)] // not every test uses every helper

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use tokio::sync::OnceCell;

/// Set to a folder where `tests/cluster/up` already runs, to share one control plane.
pub const CLUSTER_ENV: &str = "PLUGSYNC_TEST_CLUSTER";
/// Set to `1` to keep a test binary's own cluster folder (logs, etcd data) after it exits;
/// by default the reaper that stops the cluster deletes it.
pub const KEEP_ENV: &str = "PLUGSYNC_KEEP_TEST_CLUSTER";

/// Pod labels the node side reads (put them on a plugin through plugins.yaml's
/// `runtime.labels`; they reach both the build Job's and the Deployment's pod template).
pub mod labels {
    /// `"N"`: the build pods of attempts 1..=N fail (exit 1, with a message).
    pub const FAIL_BUILD_ATTEMPTS: &str = "cluster.plugsync.test/fail-build-attempts";
    /// `"S"`: a build takes S seconds (fractions allowed) before it pushes.
    pub const BUILD_SECONDS: &str = "cluster.plugsync.test/build-seconds";
    /// Present: the pod runs but never becomes Ready (a crash-looping plugin).
    pub const UNREADY: &str = "cluster.plugsync.test/unready";
}

/// A running control plane: its folder, admin kubeconfig and registry.
#[derive(Debug)]
pub struct TestCluster {
    dir: PathBuf,
    registry: String,
}

static CLUSTER: OnceCell<TestCluster> = OnceCell::const_new();

/// The control plane of this test binary, started on first use (about ten seconds), or the
/// one `PLUGSYNC_TEST_CLUSTER` names.
pub async fn cluster() -> &'static TestCluster {
    CLUSTER
        .get_or_init(|| async {
            tokio::task::spawn_blocking(TestCluster::start)
                .await
                .expect("start task")
        })
        .await
}

impl TestCluster {
    fn start() -> TestCluster {
        if let Some(dir) = std::env::var_os(CLUSTER_ENV).filter(|d| !d.is_empty()) {
            let dir = PathBuf::from(dir);
            let registry = std::fs::read_to_string(dir.join("registry")).unwrap_or_else(|e| {
                panic!(
                    "{CLUSTER_ENV}={}: no registry file ({e}); start it with tests/cluster/up {}",
                    dir.display(),
                    dir.display()
                )
            });
            return TestCluster {
                dir,
                registry: registry.trim().to_string(),
            };
        }
        // Not a TempDir: this lives in a static, which is never dropped. The reaper that
        // stops the cluster when this process exits deletes the folder.
        let dir = tempfile::Builder::new()
            .prefix("plugsync-cluster-")
            .tempdir()
            .expect("cluster dir")
            .keep();
        let keep = std::env::var(KEEP_ENV).is_ok_and(|v| v == "1");
        let up = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cluster/up");
        // plugsync's CRDs are there from the start, as on a cluster where the platform team
        // installed them: the garbage collector then follows Plugins' children at once (it
        // learns of CRDs created later only at its next discovery sync, 30 s on).
        let mut command = Command::new(&up);
        command
            .arg(&dir)
            .arg("--owner-pid")
            .arg(std::process::id().to_string())
            .arg("--crds")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/crds"));
        if !keep {
            command.arg("--remove-on-exit");
        }
        let output = command
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", up.display()));
        assert!(
            output.status.success(),
            "tests/cluster/up failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let registry = std::fs::read_to_string(dir.join("registry")).expect("registry");
        TestCluster {
            dir,
            registry: registry.trim().to_string(),
        }
    }

    /// The folder `tests/cluster/up` ran in (logs under `logs/`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The admin kubeconfig.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// `host:port` of the registry (plain HTTP on loopback).
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// A kube client with admin rights. Must be called inside a Tokio runtime.
    pub async fn client(&self) -> kube::Client {
        kube::Client::try_from(self.config(None).await).expect("client")
    }

    /// The admin `kube::Config`, with `namespace` as its default namespace when given.
    pub async fn config(&self, namespace: Option<&str>) -> kube::Config {
        let kubeconfig = Kubeconfig::read_from(self.kubeconfig()).expect("kubeconfig");
        let mut config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .expect("kube config");
        if let Some(ns) = namespace {
            config.default_namespace = ns.to_string();
        }
        config
    }

    /// Writes a copy of the admin kubeconfig whose context's namespace is `namespace`.
    pub fn write_kubeconfig(&self, path: impl AsRef<Path>, namespace: &str) {
        let text = std::fs::read_to_string(self.kubeconfig()).expect("kubeconfig");
        let text = text.replace(
            "    namespace: default\n",
            &format!("    namespace: {namespace}\n"),
        );
        std::fs::write(path, text).expect("write kubeconfig");
    }

    /// The shipped CRDs, applied once per test binary as plugsync applies them (cluster
    /// scoped, shared by every test; once in place later calls find them unchanged).
    pub async fn install_crds(&self) {
        static CRDS: OnceCell<()> = OnceCell::const_new();
        CRDS.get_or_init(|| async {
            plugsync_kube::apply::Applier::new(self.client().await)
                .ensure_crds(
                    &plugsync_core::crd::definitions(),
                    plugsync_kube::apply::ApplyOptions::default(),
                )
                .await
                .expect("CRDs installed");
        })
        .await;
    }

    /// A fresh namespace for one test, named after it (`label`) with a random suffix.
    pub async fn namespace(&self, label: &str) -> String {
        let suffix: String = (0..5)
            .map(|_| char::from(b"bcdfghjklmnpqrstvwxz2456789"[rand::random_range(0..27)]))
            .collect();
        let mut base: String = label
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect();
        base.truncate(50);
        let name = format!("{}-{suffix}", base.trim_matches('-'));
        let api: Api<Namespace> = Api::all(self.client().await);
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}
        }))
        .expect("namespace");
        api.create(&PostParams::default(), &ns)
            .await
            .expect("create namespace");
        // The ServiceAccount admission plugin refuses pods until the namespace's default
        // ServiceAccount exists, which the controller manager creates a moment later.
        let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(self.client().await, &name);
        for _ in 0..200 {
            if sas.get_opt("default").await.expect("get sa").is_some() {
                return name;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("namespace {name}: no default ServiceAccount after 10 s");
    }

    /// `kubectl` with this cluster's admin kubeconfig.
    pub fn kubectl(&self) -> Command {
        let mut cmd = Command::new("kubectl");
        cmd.env("KUBECONFIG", self.kubeconfig());
        cmd
    }

    /// Runs kubectl with `args`, panicking with its output unless it succeeds; returns stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let output = self.kubectl().args(args).output().expect("kubectl runs");
        assert!(
            output.status.success(),
            "kubectl {}: {}\n{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("utf-8")
    }

    /// The end of a component's log, for failure messages.
    pub fn log_tail(&self, component: &str, lines: usize) -> String {
        let text = std::fs::read_to_string(self.dir.join("logs").join(format!("{component}.log")))
            .unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// Waits, up to `timeout`, until the object `name` meets `condition`, through a watch
/// (kube's `await_condition`); returns it.
pub async fn wait_for<K>(
    api: &Api<K>,
    name: &str,
    timeout: Duration,
    what: &str,
    condition: impl kube::runtime::wait::Condition<K>,
) -> K
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    match tokio::time::timeout(
        timeout,
        kube::runtime::wait::await_condition(api.clone(), name, condition),
    )
    .await
    {
        Ok(Ok(Some(object))) => object,
        Ok(Ok(None)) => panic!("{name} was deleted while waiting for {what}"),
        Ok(Err(e)) => panic!("watching {name} for {what}: {e}"),
        Err(_) => {
            let last = api.get_opt(name).await.ok().flatten();
            panic!("timed out after {timeout:?} waiting for {what}; last seen: {last:#?}")
        }
    }
}

/// Waits, up to `timeout`, until `check` answers `Some`: for what no watch can follow (a
/// registry, a process's output).
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl TestCluster {
    /// `plugins.yaml` of `plugsync_testkit::synth` moved onto this cluster: the set in `namespace`,
    /// images pushed to this cluster's registry (plain HTTP, so `insecure`), and no
    /// `nodeSelector` (the fake node has no `pool` label), so builds and pods really run.
    pub fn retarget_synth_yaml(&self, yaml: &str, namespace: &str) -> String {
        let prefix = format!(
            "prefix: {}/dify-plugins\n    insecure: true",
            self.registry()
        );
        let out = yaml
            .replace(
                "  namespace: dify\n",
                &format!("  namespace: {namespace}\n"),
            )
            .replace("prefix: registry.example.invalid/dify-plugins", &prefix)
            .replace("    nodeSelector: {pool: plugins}\n", "");
        assert_ne!(out, yaml, "not a plugsync_testkit::synth plugins.yaml");
        out
    }

    /// A synthetic repository of `n` plugins (`plugsync_testkit::synth`) in `dir`, its packages in
    /// `cache`, retargeted onto this cluster (see [`retarget_synth_yaml`](Self::retarget_synth_yaml)).
    pub fn synthetic_repo(
        &self,
        dir: &Path,
        n: usize,
        cache: &plugsync_core::resolve::cache::Cache,
        namespace: &str,
    ) {
        plugsync_testkit::synth::generate_repo(dir, n, cache).expect("generate");
        let path = dir.join("plugins.yaml");
        let yaml = std::fs::read_to_string(&path).expect("read plugins.yaml");
        std::fs::write(&path, self.retarget_synth_yaml(&yaml, namespace)).expect("write");
    }
}

/// A port free right now on 127.0.0.1, for a `plugsync` process's `--listen` (tests run in
/// parallel, so none may take the default 8080).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
