//! `plugsync run` as it runs in a cluster: the real binary, following a branch served by a
//! real `git daemon` on loopback, against the real control plane (`tests/cluster`): the
//! controllers, kwok and the Kaniko stand-in build the Plugins' images (from the build
//! contexts `plugsync run` serves on its listen address) and run them, so Plugins really go
//! Running. The binary talks to the API server through the fault proxy; the test's own reads
//! go straight to the API server.
//!
//! - a commit converges, and the PluginSet status says so;
//! - a bad commit changes nothing in the cluster and the status names commit, file and line;
//!   the next good commit proceeds;
//! - a webhook with a valid signature triggers a reconcile at once, a bad one is refused;
//! - two replicas: one leader, which alone writes; when it stops, the other takes over;
//! - SIGTERM mid-apply: the apply in flight finishes; a restart converges;
//! - `--repo DIR` reconciles on save;
//! - suspend and resume by annotation, and a reconcile on request;
//! - https credentials from a Secret (rotated without a restart), never in the status;
//! - `--commit-lock`: built digests committed back to the branch, and reused.
//!
//! Without git these tests skip with a note, unless `PLUGSYNC_REQUIRE_GIT_SERVER_TESTS=1`.

#[path = "common/cluster.rs"]
mod cluster;
#[path = "common/fault_proxy.rs"]
mod fault_proxy;
#[path = "common/git_server.rs"]
mod git_server;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cluster::{cluster, wait_for, TestCluster};
use fault_proxy::{FaultProxy, Match, Verb};
use futures::TryStreamExt as _;
use git_server::{free_port, tools_or_skip, GitDaemon, Need, SourceRepo};
use hmac::{Hmac, Mac};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use plugsync_core::crd::Plugin;
use plugsync_core::crd::PluginSetResource;
use plugsync_core::resolve::cache::Cache;
use serde_json::{json, Value};
use sha2::Sha256;

const SET: &str = "synth";
/// Image pull/push credentials the synthetic set names (`spec.registry.secretName`).
const REGISTRY_SECRET: &str = "image-repo-secret";

struct Env {
    c: &'static TestCluster,
    ns: String,
    /// Straight to the API server: the test's own reads and writes.
    client: kube::Client,
    /// In front of the API server for the binary: faults and request counts.
    proxy: FaultProxy,
    kubeconfig: tempfile::TempDir,
    cache: tempfile::TempDir,
    generated: tempfile::TempDir,
    source: SourceRepo,
    daemon: GitDaemon,
}

impl Env {
    /// A fresh namespace on the control plane with the CRDs and the registry Secret, a
    /// served repository whose first commit declares `n` synthetic plugins (in that
    /// namespace, pushing to the test registry), and the packages in the cache `plugsync run`
    /// uses.
    async fn new(label: &str, n: usize) -> Option<Env> {
        Env::with_daemon(label, n, false).await
    }

    /// As [`Env::new`], with a served repository that accepts pushes.
    async fn with_daemon(label: &str, n: usize, pushes: bool) -> Option<Env> {
        if !tools_or_skip("run", Need::Daemon) {
            return None;
        }
        let c = cluster().await;
        let ns = c.namespace(label).await;
        let client = c.client().await;
        // The shipped CRDs (a fresh test cluster has them from the start; this keeps a shared
        // one started before that in step).
        c.install_crds().await;
        // The registry is plain HTTP without auth: an empty dockerconfigjson.
        let secret: Secret = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": REGISTRY_SECRET},
            "type": "kubernetes.io/dockerconfigjson",
            "data": {".dockerconfigjson": b64(r#"{"auths":{}}"#)}
        }))
        .expect("secret");
        Api::<Secret>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &secret)
            .await
            .expect("registry secret");
        let proxy = FaultProxy::start(&c.kubeconfig()).await;
        let kubeconfig = tempfile::tempdir().expect("kubeconfig");
        proxy.write_kubeconfig(kubeconfig.path().join("config"), &ns);
        let cache = tempfile::tempdir().expect("cache");
        let generated = tempfile::tempdir().expect("generated");
        c.synthetic_repo(
            generated.path(),
            n,
            &Cache::open(cache.path()).expect("cache"),
            &ns,
        );
        let source = SourceRepo::new();
        let daemon = if pushes {
            source.accept_pushes();
            GitDaemon::start_accepting_pushes(&source.root)
        } else {
            GitDaemon::start(&source.root)
        };
        let env = Env {
            c,
            ns,
            client,
            proxy,
            kubeconfig,
            cache,
            generated,
            source,
            daemon,
        };
        env.commit_generated("plugins: first commit");
        Some(env)
    }

    fn generated_file(&self, name: &str) -> String {
        std::fs::read_to_string(self.generated.path().join(name)).expect("generated file")
    }

    /// Commits the generated plugins.yaml and plugins.lock.
    fn commit_generated(&self, message: &str) -> String {
        self.commit_yaml(&self.generated_file("plugins.yaml"), message)
    }

    fn commit_yaml(&self, yaml: &str, message: &str) -> String {
        self.source.commit(
            &[
                ("plugins.yaml", yaml),
                ("plugins.lock", &self.generated_file("plugins.lock")),
            ],
            message,
        )
    }

    fn url(&self) -> String {
        self.source.url_on(&self.daemon.base_url)
    }

    /// `plugsync run` following the served branch; `extra` adds or overrides flags.
    fn run(&self, extra: &[&str], pod: Option<&str>) -> Running {
        self.run_on(free_port(), extra, pod)
    }

    /// `plugsync run` on `port`: it serves the build contexts there, and build Jobs fetch
    /// them from there (`--context-url`), as they would through the leader's Service.
    fn run_on(&self, port: u16, extra: &[&str], pod: Option<&str>) -> Running {
        self.start(port, &["--git-url", &self.url()], extra, pod)
    }

    /// `plugsync run` with `source` (`--git-url URL` or `--repo DIR`), the common flags, then
    /// `extra` (later flags override earlier ones), with the proxy's kubeconfig and the
    /// package cache.
    fn start(&self, port: u16, source: &[&str], extra: &[&str], pod: Option<&str>) -> Running {
        let kubeconfig = self.kubeconfig.path().join("config");
        self.start_with(&kubeconfig, port, source, extra, pod)
    }

    /// As [`start`](Self::start), talking to the API server as `kubeconfig` says.
    fn start_with(
        &self,
        kubeconfig: &Path,
        port: u16,
        source: &[&str],
        extra: &[&str],
        pod: Option<&str>,
    ) -> Running {
        self.start_with_env(kubeconfig, port, source, extra, pod, &[])
    }

    /// As [`start_with`](Self::start_with), with `vars` added to its environment.
    fn start_with_env(
        &self,
        kubeconfig: &Path,
        port: u16,
        source: &[&str],
        extra: &[&str],
        pod: Option<&str>,
        vars: &[(&str, &str)],
    ) -> Running {
        let logs = tempfile::NamedTempFile::new().expect("log file");
        let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("plugsync"));
        cmd.arg("run")
            .args(source)
            .args([
                "--namespace",
                &self.ns,
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--context-url",
                &format!("http://127.0.0.1:{port}"),
                "--interval",
                "1s",
            ])
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
            .env("PLUGSYNC_CACHE_DIR", self.cache.path())
            .env("RUST_LOG", "plugsync=debug")
            .env_remove("PLUGSYNC_PLUGIN_DIRS")
            .env_remove("PLUGSYNC_CONTEXT_URL")
            .stdout(Stdio::null())
            // To a file, not a pipe nobody reads while it runs: a full pipe would block it.
            .stderr(logs.reopen().expect("log file"));
        if let Some(pod) = pod {
            cmd.env("POD_NAME", pod);
        }
        cmd.envs(vars.iter().copied());
        let child = cmd.spawn().expect("start plugsync run");
        Running {
            child: Some(child),
            port,
            logs,
        }
    }

    fn sets(&self) -> Api<DynamicObject> {
        Api::namespaced_with(
            self.client.clone(),
            &self.ns,
            &ApiResource::erase::<PluginSetResource>(&()),
        )
    }

    fn plugins_api(&self) -> Api<DynamicObject> {
        Api::namespaced_with(
            self.client.clone(),
            &self.ns,
            &ApiResource::erase::<Plugin>(&()),
        )
    }

    /// The PluginSet as the API server has it (`null` before it exists).
    async fn set(&self) -> Value {
        match self.sets().get_opt(SET).await.expect("get the PluginSet") {
            Some(set) => serde_json::to_value(set).expect("json"),
            None => Value::Null,
        }
    }

    /// The Plugins as the API server has them, by name.
    async fn plugins(&self) -> Vec<Value> {
        let list = self
            .plugins_api()
            .list(&Default::default())
            .await
            .expect("list Plugins");
        let mut v: Vec<Value> = list
            .items
            .into_iter()
            .map(|p| serde_json::to_value(p).expect("json"))
            .collect();
        v.sort_by_key(|p| {
            p["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        });
        v
    }

    /// Waits (a watch on the PluginSet) until it meets `check`; returns it.
    async fn wait_set(
        &self,
        what: &str,
        timeout: Duration,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        let set = wait_for(
            &self.sets(),
            SET,
            timeout,
            what,
            |o: Option<&DynamicObject>| {
                o.is_some_and(|o| check(&serde_json::to_value(o).expect("json")))
            },
        )
        .await;
        serde_json::to_value(set).expect("json")
    }

    /// Waits (a watch on the namespace's Plugins) until the list meets `check`; returns it.
    async fn wait_plugins(
        &self,
        what: &str,
        timeout: Duration,
        check: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        self.wait_list(
            self.plugins_api(),
            watcher::Config::default(),
            what,
            timeout,
            check,
        )
        .await
    }

    /// Waits (a watch on the set's Deployments) until the list meets `check`; returns it.
    async fn wait_deployments(
        &self,
        what: &str,
        timeout: Duration,
        check: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let api = Api::namespaced_with(
            self.client.clone(),
            &self.ns,
            &ApiResource::erase::<Deployment>(&()),
        );
        let selector = watcher::Config::default().labels(&format!("plugsync.dev/pluginset={SET}"));
        self.wait_list(api, selector, what, timeout, check).await
    }

    /// Waits, through a watch of the collection, until the objects (by name) meet `check`.
    async fn wait_list(
        &self,
        api: Api<DynamicObject>,
        config: watcher::Config,
        what: &str,
        timeout: Duration,
        check: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let mut stream = Box::pin(watcher(api, config));
        let mut live: BTreeMap<String, Value> = BTreeMap::new();
        let mut initial: BTreeMap<String, Value> = BTreeMap::new();
        let key = |o: &DynamicObject| o.metadata.name.clone().unwrap_or_default();
        let json = |o: DynamicObject| serde_json::to_value(o).expect("json");
        let mut last = Vec::new();
        let watch = async {
            while let Some(event) = stream.try_next().await.expect("watch") {
                match event {
                    watcher::Event::Init => initial.clear(),
                    watcher::Event::InitApply(o) => {
                        initial.insert(key(&o), json(o));
                        continue;
                    }
                    watcher::Event::InitDone => live = std::mem::take(&mut initial),
                    watcher::Event::Apply(o) => {
                        live.insert(key(&o), json(o));
                    }
                    watcher::Event::Delete(o) => {
                        live.remove(&key(&o));
                    }
                }
                last = live.values().cloned().collect();
                if check(&last) {
                    return last.clone();
                }
            }
            panic!("the watch for {what} ended");
        };
        match tokio::time::timeout(timeout, watch).await {
            Ok(objects) => objects,
            Err(_) => panic!(
                "timed out after {timeout:?} waiting for {what}\nlast seen: {:#}\n\
                 set status: {:#}\nplugins: {:#?}",
                without_managed_fields(&last),
                self.set().await["status"],
                phases(&self.plugins().await)
            ),
        }
    }

    async fn wait_applied(&self, commit: &str) -> Value {
        self.wait_set(
            &format!("commit {commit} applied"),
            Duration::from_secs(90),
            |set| set["status"]["lastAppliedCommit"] == commit,
        )
        .await
    }

    /// What the git loop writes of each Plugin: its spec (`generation`) and the hash of what
    /// it applied. The controller's status writes (which move `resourceVersion`) are not the
    /// loop's and do not count.
    async fn resource_versions(&self) -> Vec<(String, String)> {
        self.plugins()
            .await
            .iter()
            .map(|p| {
                (
                    p["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    format!(
                        "{}/{}",
                        p["metadata"]["generation"],
                        p["metadata"]["annotations"]["plugsync.dev/applied-hash"]
                    ),
                )
            })
            .collect()
    }

    /// `status.availableReplicas` of the set's Deployments, as kubectl shows them.
    fn available_replicas(&self) -> Vec<String> {
        self.c
            .kubectl_ok(&[
                "-n",
                &self.ns,
                "get",
                "deployments",
                "-l",
                &format!("plugsync.dev/pluginset={SET}"),
                "-o",
                "jsonpath={.items[*].status.availableReplicas}",
            ])
            .split_whitespace()
            .map(str::to_string)
            .collect()
    }

    /// `kubectl annotate` on the PluginSet (`None` removes the annotation).
    fn annotate(&self, key: &str, value: Option<&str>) {
        let arg = match value {
            Some(v) => format!("{key}={v}"),
            None => format!("{key}-"),
        };
        self.c.kubectl_ok(&[
            "-n",
            &self.ns,
            "annotate",
            "--overwrite",
            &format!("pluginsets.plugsync.dev/{SET}"),
            &arg,
        ]);
    }
}

/// Objects without their `managedFields`, for failure messages.
fn without_managed_fields(objects: &[Value]) -> Value {
    let mut objects = objects.to_vec();
    for o in &mut objects {
        if let Some(meta) = o["metadata"].as_object_mut() {
            meta.remove("managedFields");
        }
    }
    Value::Array(objects)
}

/// Each Plugin's name and phase, for failure messages.
fn phases(plugins: &[Value]) -> Vec<(Value, Value)> {
    plugins
        .iter()
        .map(|p| (p["metadata"]["name"].clone(), p["status"]["phase"].clone()))
        .collect()
}

/// A `plugsync run` process, killed on drop.
struct Running {
    child: Option<Child>,
    port: u16,
    /// Where its stderr goes.
    logs: tempfile::NamedTempFile,
}

impl Running {
    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Sends SIGTERM and waits for the exit status.
    async fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill");
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            assert!(start.elapsed() < Duration::from_secs(60), "did not stop");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// What it logged so far.
    fn stderr(&self) -> String {
        std::fs::read_to_string(self.logs.path()).expect("read the log")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// plugins.yaml with the synthetic plugins' replicas changed: a config-only commit.
fn reconfigured(yaml: &str) -> String {
    let changed = yaml.replace("    replicas: 1\n", "    replicas: 2\n");
    assert_ne!(changed, yaml, "the synthetic plugins.yaml sets replicas");
    changed
}

fn is_ready(set: &Value) -> bool {
    set["status"]["conditions"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_converges_and_a_bad_commit_changes_nothing_until_a_good_one() {
    let Some(env) = Env::new("run-converges", 2).await else {
        return;
    };
    let first = env.source.head();
    let mut run = env.run(&["--leader-election", "false"], None);
    env.wait_applied(&first).await;
    let set = env
        .wait_set(
            "2 plugins running and the set Ready",
            Duration::from_secs(120),
            |set| set["status"]["phases"]["Running"] == 2 && is_ready(set),
        )
        .await;
    assert_eq!(set["status"]["lastFetchedCommit"], first.as_str());
    assert_eq!(set["status"]["pluginCount"], 2);
    // Really running: each Plugin's Deployment has its pod available on the node.
    assert_eq!(env.available_replicas(), ["1", "1"], "{set:#}");
    let before = env.resource_versions().await;

    // A bad commit: an unknown field on line 9 of plugins.yaml.
    let yaml = env.generated_file("plugins.yaml");
    let mut lines: Vec<&str> = yaml.lines().collect();
    let spec_line = lines.iter().position(|l| *l == "spec:").expect("spec line");
    lines.insert(spec_line + 1, "  bogus: true");
    let bad_yaml = lines.join("\n") + "\n";
    let bad = env.commit_yaml(&bad_yaml, "a typo");
    env.wait_set("the bad commit reported", Duration::from_secs(30), |set| {
        set["status"]["lastFetchedCommit"] == bad.as_str()
    })
    .await;
    let set = env
        .wait_set("the status says why", Duration::from_secs(10), |set| {
            set["status"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("invalid"))
        })
        .await;
    let status = set["status"].clone();
    let message = status["message"].as_str().expect("message");
    assert!(message.contains(&bad[..12]), "names the commit: {message}");
    assert!(
        message.contains("plugins.yaml"),
        "names the file: {message}"
    );
    assert!(message.contains("bogus"), "names the field: {message}");
    assert_eq!(status["errors"][0]["line"], spec_line + 2, "{status:#}");
    assert_eq!(
        status["lastAppliedCommit"],
        first.as_str(),
        "nothing applied"
    );
    let stalled = status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Stalled").cloned())
        .expect("Stalled");
    assert_eq!(stalled["status"], "True");
    assert_eq!(stalled["reason"], "InvalidCommit");
    assert_eq!(
        env.resource_versions().await,
        before,
        "the cluster is untouched"
    );

    // The fix: the next good commit proceeds (and changes the Plugins).
    let good = env.commit_yaml(&reconfigured(&env.generated_file("plugins.yaml")), "fix");
    let set = env.wait_applied(&good).await;
    assert_ne!(env.resource_versions().await, before);
    assert!(set["status"]["errors"].is_null(), "errors cleared: {set:#}");
    for plugin in env.plugins().await {
        assert_eq!(plugin["spec"]["runtime"]["replicas"], 2);
    }
    // And the cluster follows: two pods per plugin, Running on the node.
    env.wait_set("2 plugins running again", Duration::from_secs(120), |set| {
        set["status"]["phases"]["Running"] == 2 && is_ready(set)
    })
    .await;
    let after = env.resource_versions().await;

    // /metrics counts what happened; an unchanged branch is one round trip, nothing else.
    let scrape = || async {
        reqwest::get(format!("{}/metrics", run.base()))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    };
    let count = |metrics: &str, series: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let metrics = cluster::eventually(
        Duration::from_secs(20),
        "two unchanged fetches in /metrics",
        || async {
            let metrics = scrape().await;
            (count(
                &metrics,
                "plugsync_git_fetches_total{outcome=\"unchanged\"}",
            ) >= 2.0)
                .then_some(metrics)
        },
    )
    .await;
    let at = |series: &str| count(&metrics, series);
    assert_eq!(
        at("plugsync_reconciles_total{result=\"invalid\"}"),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        at("plugsync_reconciles_total{result=\"applied\"}"),
        2.0,
        "{metrics}"
    );
    assert_eq!(
        at("plugsync_git_fetches_total{outcome=\"fetched\"}"),
        3.0,
        "one fetch per commit: {metrics}"
    );
    assert!(
        at("plugsync_reconciles_total{result=\"unchanged\"}") >= 2.0,
        "{metrics}"
    );
    assert_eq!(at("plugsync_plugins{phase=\"Running\"}"), 2.0, "{metrics}");
    assert_eq!(
        env.resource_versions().await,
        after,
        "unchanged polls write nothing"
    );

    // And the cluster follows the commit: two pods per plugin, available on the node. (The set
    // is Ready meanwhile: a Deployment scaling up stays Available.) A config-only commit must
    // reach the Deployments, not only the Plugins' specs, as `plugsync diff` promised.
    env.wait_deployments(
        "the reconfigured commit rolled out: 2 available replicas per plugin",
        Duration::from_secs(60),
        |d| {
            d.len() == 2
                && d.iter()
                    .all(|d| d["spec"]["replicas"] == 2 && d["status"]["availableReplicas"] == 2)
        },
    )
    .await;
    assert_eq!(env.available_replicas(), ["2", "2"]);

    let status = run.terminate().await;
    assert!(status.success(), "{status:?}: {}", run.stderr());
}

fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("key");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_webhook_triggers_a_reconcile_and_a_bad_signature_is_refused() {
    let Some(env) = Env::new("run-webhook", 1).await else {
        return;
    };
    let secret_file = env.generated.path().join("webhook-secret");
    std::fs::write(&secret_file, "s3cret-value\n").expect("secret");
    let first = env.source.head();
    let run = env.run(
        &[
            "--leader-election",
            "false",
            "--interval",
            "1h",
            "--resync",
            "1h",
            "--webhook-secret-file",
            secret_file.to_str().expect("path"),
        ],
        None,
    );
    env.wait_applied(&first).await;

    let second = env.commit_yaml(&reconfigured(&env.generated_file("plugins.yaml")), "change");
    let body = json!({"ref": "refs/heads/main", "after": second}).to_string();
    let client = reqwest::Client::new();
    let post = |signature: String| {
        client
            .post(format!("{}/webhook", run.base()))
            .header("X-GitHub-Event", "push")
            .header("X-Hub-Signature-256", signature)
            .header("Content-Type", "application/json")
            .body(body.clone())
            .send()
    };
    let refused = post(sign(b"wrong", body.as_bytes())).await.expect("post");
    assert_eq!(refused.status(), 401);
    let text = refused.text().await.expect("text");
    assert!(!text.contains("s3cret"), "{text}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        env.set().await["status"]["lastAppliedCommit"],
        first.as_str(),
        "a refused webhook triggers nothing (and the poll is an hour away)"
    );

    let accepted = post(sign(b"s3cret-value", body.as_bytes()))
        .await
        .expect("post");
    assert_eq!(accepted.status(), 202);
    let start = Instant::now();
    env.wait_applied(&second).await;
    assert!(start.elapsed() < Duration::from_secs(30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_elect_one_leader_which_alone_writes_and_a_standby_takes_over() {
    let Some(env) = Env::new("run-replicas", 1).await else {
        return;
    };
    // Real Pods for the two replicas (scheduled onto the fake node), to carry the label.
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.ns);
    for pod in ["plugsync-a", "plugsync-b"] {
        let object: Pod = serde_json::from_value(json!({
            "metadata": {"name": pod, "labels": {"app": "plugsync"}},
            "spec": {"containers": [{"name": "plugsync", "image": "plugsync"}]}
        }))
        .expect("pod");
        pods.create(&PostParams::default(), &object)
            .await
            .expect("pod");
    }
    let flags = ["--lease-duration", "3s"];
    let mut a = env.run(&flags, Some("plugsync-a"));
    env.wait_applied(&env.source.head()).await;
    // b talks through a proxy of its own, which counts what it sends.
    let b_proxy = FaultProxy::start(&env.c.kubeconfig()).await;
    let b_kubeconfig = env.kubeconfig.path().join("b-config");
    b_proxy.write_kubeconfig(&b_kubeconfig, &env.ns);
    let url = env.url();
    let mut b = env.start_with(
        &b_kubeconfig,
        free_port(),
        &["--git-url", &url],
        &flags,
        Some("plugsync-b"),
    );

    let labelled = |p: &Pod| {
        p.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("plugsync.dev/leader"))
            .is_some_and(|v| v == "true")
    };
    let leader_label = |pod: &'static str| {
        let pods = pods.clone();
        async move { labelled(&pods.get(pod).await.expect("pod")) }
    };
    let leases: Api<Lease> = Api::namespaced(env.client.clone(), &env.ns);
    let holder_of = |l: &Lease| {
        l.spec
            .as_ref()
            .and_then(|s| s.holder_identity.clone())
            .unwrap_or_default()
    };
    let holder = || async {
        leases
            .get_opt("plugsync")
            .await
            .expect("lease")
            .map(|l| holder_of(&l))
            .unwrap_or_default()
    };
    wait_for(
        &pods,
        "plugsync-a",
        Duration::from_secs(30),
        "a leads",
        |p: Option<&Pod>| p.is_some_and(labelled),
    )
    .await;
    // For a few seconds: one leader, and it is a; b only waits.
    for _ in 0..20 {
        let h = holder().await;
        assert!(h.starts_with("plugsync-a_"), "{h}");
        assert!(!leader_label("plugsync-b").await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Only the leader writes: b has read the Lease but written nothing (its log, checked
    // below, shows no apply before it led).
    let stats = b_proxy.stats();
    assert!(stats.real.get > 0, "b reads the lease: {stats:?}");
    assert_eq!(stats.writes(), 0, "a standby writes nothing: {stats:?}");
    let status = a.terminate().await;
    assert!(status.success(), "{status:?}");
    assert!(
        !leader_label("plugsync-a").await,
        "a removed its label on the way out"
    );
    wait_for(
        &pods,
        "plugsync-b",
        Duration::from_secs(30),
        "b labelled as the leader",
        |p: Option<&Pod>| p.is_some_and(labelled),
    )
    .await;
    assert!(holder().await.starts_with("plugsync-b_"));
    let next = env.commit_yaml(&reconfigured(&env.generated_file("plugins.yaml")), "change");
    env.wait_applied(&next).await;
    let logs = b.stderr();
    assert!(logs.contains("became leader"), "{logs}");
    assert!(
        logs.contains("applying"),
        "b applied only after it led: {logs}"
    );
    let waited = logs.find("waiting to become leader").expect("waited");
    let applied = logs.find("applying").expect("applied");
    let led = logs.find("became leader").expect("led");
    assert!(waited < led && led < applied, "{logs}");
    let status = b.terminate().await;
    assert!(status.success(), "{status:?}");
    // b released the lease on the way out, as a did.
    let lease = leases.get("plugsync").await.expect("lease");
    assert_eq!(holder_of(&lease), "", "{lease:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_apply_finishes_the_apply_and_a_restart_converges() {
    let n = 12;
    let Some(env) = Env::new("run-sigterm", n).await else {
        return;
    };
    // Every server-side apply takes 300 ms: the apply of 12 Plugins is in flight for seconds.
    env.proxy.faults().delay_next_matching(
        1000,
        Duration::from_millis(300),
        Match::verb(Verb::Apply),
    );
    // The restart listens where the first process did: build Jobs the first one started
    // fetch their contexts from there, as they would from the Service in a cluster.
    let port = free_port();
    let mut run = env.run_on(port, &["--leader-election", "false"], None);
    let started = env
        .wait_plugins("the apply started", Duration::from_secs(60), |p| {
            !p.is_empty()
        })
        .await;
    assert!(
        started.len() < n,
        "still applying when stopped ({} of {n})",
        started.len()
    );
    let status = run.terminate().await;
    assert!(status.success(), "{status:?}");
    assert_eq!(
        env.plugins().await.len(),
        n,
        "the apply in flight finished before the process exited"
    );
    env.proxy.faults().clear();

    let _restarted = env.run_on(port, &["--leader-election", "false"], None);
    env.wait_applied(&env.source.head()).await;
    env.wait_set("all running", Duration::from_secs(180), |set| {
        set["status"]["phases"]["Running"] == n
    })
    .await;
    // No duplicates, nothing orphaned: one first attempt per declared plugin. On the real
    // cluster a build Job the stopped process had started may have fetched its context while
    // no process listened (the init container's `wget` does not retry), failed, and been
    // retried as `<plugin-id>--2`: such a retry belongs to a declared plugin.
    let plugins = env.plugins().await;
    let name = |p: &Value| {
        p["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let (first, retries): (Vec<&Value>, Vec<&Value>) =
        plugins.iter().partition(|p| !name(p).contains("--"));
    assert_eq!(first.len(), n, "{:#?}", phases(&plugins));
    let declared: Vec<String> = first.iter().map(|p| name(p)).collect();
    for retry in retries {
        let owner = retry["metadata"]["ownerReferences"][0]["name"]
            .as_str()
            .unwrap_or_default();
        assert!(
            declared.iter().any(|d| d == owner) && name(retry).starts_with(&format!("{owner}--")),
            "a retry of a declared plugin: {:#}",
            retry["metadata"]
        );
    }
    let inventory = env.set().await["status"]["inventory"].clone();
    assert_eq!(
        inventory.as_array().map(Vec::len),
        Some(n),
        "the set owns exactly what it declares: {inventory:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_repo_reconciles_a_folder_on_save() {
    let Some(env) = Env::new("run-folder", 1).await else {
        return;
    };
    let folder = env.generated.path().to_path_buf();
    let _run = env.start(
        free_port(),
        &["--repo", folder.to_str().expect("path")],
        &["--interval", "1h", "--leader-election", "false"],
        None,
    );
    env.wait_plugins("the folder applied", Duration::from_secs(60), |p| {
        p.len() == 1
    })
    .await;
    assert_eq!(env.plugins().await[0]["spec"]["runtime"]["replicas"], 1);
    save(
        &folder.join("plugins.yaml"),
        &reconfigured(&env.generated_file("plugins.yaml")),
    );
    env.wait_plugins("the saved change applied", Duration::from_secs(30), |p| {
        p.len() == 1 && p[0]["spec"]["runtime"]["replicas"] == 2
    })
    .await;
}

fn save(path: &Path, text: &str) {
    let tmp: PathBuf = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspend_and_resume_by_annotation_and_an_immediate_reconcile_on_request() {
    let Some(env) = Env::new("run-suspend", 1).await else {
        return;
    };
    let first = env.source.head();
    let mut run = env.run(
        &[
            "--leader-election",
            "false",
            "--log-format",
            "json",
            "--interval",
            "1s",
        ],
        None,
    );
    env.wait_applied(&first).await;

    env.annotate("plugsync.dev/suspend", Some("true"));
    env.wait_set("suspended in status", Duration::from_secs(20), |set| {
        set["status"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("suspended"))
    })
    .await;
    let second = env.commit_yaml(&reconfigured(&env.generated_file("plugins.yaml")), "change");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        env.set().await["status"]["lastAppliedCommit"],
        first.as_str(),
        "nothing is applied while suspended"
    );
    env.annotate("plugsync.dev/suspend", None);
    env.wait_applied(&second).await;
    let status = run.terminate().await;
    assert!(status.success());
    // Structured logs: every line is a JSON object with a level and a message.
    let logs = run.stderr();
    let lines: Vec<&str> = logs.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty());
    for line in &lines {
        let event: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(event["level"].is_string(), "{line}");
        assert!(event["fields"].is_object(), "{line}");
    }

    // With a poll an hour away, the annotation asks for a reconcile now.
    let _slow = env.run(
        &[
            "--leader-election",
            "false",
            "--interval",
            "1h",
            "--resync",
            "1h",
        ],
        None,
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let third = env.commit_generated("back to one replica");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        env.set().await["status"]["lastAppliedCommit"],
        second.as_str()
    );
    env.annotate(
        "plugsync.dev/reconcile-requested-at",
        Some("2026-11-21T12:00:00Z"),
    );
    env.wait_applied(&third).await;
    env.wait_set("the request acknowledged", Duration::from_secs(10), |set| {
        set["status"]["lastHandledReconcileAt"] == "2026-11-21T12:00:00Z"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_credentials_come_from_a_secret_and_never_reach_the_status() {
    let Some(env) = Env::new("run-https", 1).await else {
        return;
    };
    if !tools_or_skip("run over https", Need::HttpBackend) {
        return;
    }
    let http = git_server::HttpGitServer::start(&env.source.root, "bot", "pa55-word");
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &env.ns);
    let put_secret = |password: &str| {
        let secret = json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "git-creds"},
            "type": "Opaque",
            "data": {"username": b64("bot"), "password": b64(password)}});
        let secrets = secrets.clone();
        async move {
            secrets
                .patch(
                    "git-creds",
                    &PatchParams::apply("run-test").force(),
                    &Patch::Apply(&secret),
                )
                .await
                .expect("secret")
        }
    };
    put_secret("wrong").await;
    let url = env.source.url_on(&http.base_url);
    let _run = env.run(
        &[
            "--leader-election",
            "false",
            "--git-url",
            &url,
            "--git-secret",
            "git-creds",
        ],
        None,
    );
    // No PluginSet yet: the failure shows in the metrics and logs only; nothing applied.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(env.plugins().await.is_empty());
    assert!(env.set().await.is_null());
    assert!(
        http.requests().iter().any(|r| r.ends_with("401")),
        "the wrong password was tried: {:?}",
        http.requests()
    );
    // Rotated Secret: picked up at the next fetch, no restart.
    put_secret("pa55-word").await;
    let set = env.wait_applied(&env.source.head()).await;
    let status = set["status"].to_string();
    assert!(!status.contains("pa55"), "{status}");
}

fn b64(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn built_digests_are_committed_back_to_the_branch_and_reused() {
    let Some(env) = Env::with_daemon("run-commit-lock", 1, true).await else {
        return;
    };
    let first = env.source.head();
    let _run = env.run(
        &[
            "--leader-election",
            "false",
            "--commit-lock",
            "--commit-author",
            "Plugin Bot <bot@example.invalid>",
            "--commit-message",
            "chore: pin built images",
        ],
        None,
    );
    env.wait_applied(&first).await;
    env.wait_set("the plugin running", Duration::from_secs(120), |set| {
        set["status"]["phases"]["Running"] == 1
    })
    .await;
    // The loop pushes a commit on top of `first` and then applies it.
    let set = env
        .wait_set("the bot's commit applied", Duration::from_secs(60), |set| {
            let applied = set["status"]["lastAppliedCommit"]
                .as_str()
                .unwrap_or(&first);
            applied != first
        })
        .await;
    let head = env.source.head();
    assert_eq!(set["status"]["lastAppliedCommit"], head.as_str());
    let log = git_server::git(&env.source.path, &["log", "-1", "--format=%an <%ae>|%s|%P"]);
    assert_eq!(
        log,
        format!("Plugin Bot <bot@example.invalid>|chore: pin built images|{first}")
    );
    let lock: Value = serde_saphyr::from_str(&git_server::git(
        &env.source.path,
        &["show", &format!("{head}:plugins.lock")],
    ))
    .expect("lock yaml");
    let plugin = env.plugins().await.pop().expect("plugin");
    let digest = plugin["status"]["imageDigest"]
        .as_str()
        .expect("built digest");
    assert_eq!(lock["images"][0]["digest"], digest);
    assert_eq!(
        lock["images"][0]["inputsHash"],
        plugin["spec"]["build"]["inputsHash"]
    );
    // Applied from the bot's commit, the Plugin carries the digest: nothing to build again.
    assert_eq!(plugin["spec"]["imageDigest"], digest);
    // The digest is what the test registry really has under the Plugin's image (the Kaniko
    // stand-in pushed it).
    let image = plugin["spec"]["build"]["image"].as_str().expect("image");
    assert_eq!(
        registry_digest(image).await.as_deref(),
        Some(digest),
        "{image}: {plugin:#}"
    );
    // One build in all: the bot's commit did not start another.
    let jobs = env
        .c
        .kubectl_ok(&["-n", &env.ns, "get", "jobs", "-o", "name"]);
    assert_eq!(jobs.lines().count(), 1, "{jobs}");
    // And only one such commit: the next polls find nothing new to record.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(env.source.head(), head);
}

/// The digest the registry serves for `image` (`host:port/repository:tag`), from a manifest
/// HEAD.
async fn registry_digest(image: &str) -> Option<String> {
    let (host, rest) = image.split_once('/')?;
    let (repository, tag) = rest.rsplit_once(':')?;
    let response = reqwest::Client::new()
        .head(format!("http://{host}/v2/{repository}/manifests/{tag}"))
        .header(
            "accept",
            "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json",
        )
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    if !response.status().is_success() {
        return None;
    }
    response
        .headers()
        .get("docker-content-digest")?
        .to_str()
        .ok()
        .map(str::to_string)
}

/// With the shipped `cpu: "1"`, tokio runs one worker. A pass over 1000 plugins (load,
/// resolve from the cache, render, cache the build contexts, apply) and the controller's
/// first reconcile of each of them (read the package, render its children) run while
/// `/healthz` is polled: each answer comes within a second, because that work runs on
/// blocking threads, never on the one worker that also serves the probes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_answers_within_a_second_while_a_1000_plugin_pass_runs_on_one_worker() {
    let Some(env) = Env::new("run-one-worker", 1000).await else {
        return;
    };
    let first = env.source.head();
    let kubeconfig = env.kubeconfig.path().join("config");
    let url = env.url();
    let run = env.start_with_env(
        &kubeconfig,
        free_port(),
        &["--git-url", &url],
        &["--leader-election", "false"],
        None,
        &[("TOKIO_WORKER_THREADS", "1")],
    );
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client");
    let healthz = format!("{}/healthz", run.base());
    // Up: the server starts before the first pass.
    let started = Instant::now();
    while http.get(&healthz).send().await.is_err() {
        assert!(started.elapsed() < Duration::from_secs(30), "never served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Probe every 100 ms through the pass's blocking part (read, load, resolve, render: the
    // PluginSet is created right after it, as the apply starts) and on for 20 s while the
    // controller takes up the first Plugins and the apply goes on.
    let sets = env.sets();
    let mut slowest = Duration::ZERO;
    let mut probes = 0;
    let mut applied_at: Option<Instant> = None;
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let sent = Instant::now();
        let answer = http.get(&healthz).send().await;
        let took = sent.elapsed();
        let status = answer.map(|r| r.status().as_u16());
        assert_eq!(
            status.as_ref().ok(),
            Some(&200),
            "healthz after {took:?}: {status:?}"
        );
        slowest = slowest.max(took);
        probes += 1;
        if applied_at.is_none()
            && sets
                .get_opt(SET)
                .await
                .expect("get the PluginSet")
                .is_some()
        {
            applied_at = Some(Instant::now());
        }
        if applied_at.is_some_and(|t| t.elapsed() > Duration::from_secs(20)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the pass did not start applying {first} in time\n{}",
            run.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "healthz: {probes} probes during the pass, slowest {slowest:?}, apply began after {:?}",
        applied_at.map(|t| t - started)
    );
    assert!(
        slowest < Duration::from_secs(1),
        "/healthz took {slowest:?} while the pass ran on one worker"
    );
}

#[test]
fn the_deprecated_status_interval_flag_is_hidden_accepted_and_warned_about() {
    let plugsync = || {
        let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("plugsync"));
        cmd.env_remove("RUST_LOG")
            .env_remove("PLUGSYNC_PLUGIN_DIRS")
            .env_remove("PLUGSYNC_CONTEXT_URL");
        cmd
    };
    let help = plugsync()
        .args(["run", "--help"])
        .output()
        .expect("run --help");
    assert!(help.status.success());
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("--resync"), "{help}");
    assert!(!help.contains("status-interval"), "hidden: {help}");

    // Manifests that still give it keep starting: the flag parses, and the log says what to
    // do. (No cluster here: the run then stops at the missing kubeconfig.)
    let dir = tempfile::tempdir().expect("dir");
    let out = plugsync()
        .arg("run")
        .arg("--repo")
        .arg(dir.path())
        .args(["--status-interval", "5s", "--leader-election", "false"])
        .env("KUBECONFIG", dir.path().join("no-kubeconfig"))
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("--status-interval is deprecated and ignored"),
        "{stderr}"
    );
    assert!(!stderr.contains("unexpected argument"), "{stderr}");
}
