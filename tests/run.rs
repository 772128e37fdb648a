//! `plugsync run` as it runs in a cluster: the real binary, following a branch served by a
//! real `git daemon` on loopback, against the API server double (with a harness playing
//! kubelet and job controller, so Plugins go Running).
//!
//! - a commit converges, and the PluginSet status says so;
//! - a bad commit changes nothing in the cluster and the status names commit, file and line;
//!   the next good commit proceeds;
//! - a webhook with a valid signature triggers a reconcile at once, a bad one is refused;
//! - two replicas: one leader, which alone writes; when it stops, the other takes over;
//! - SIGTERM mid-apply: the apply in flight finishes; a restart converges;
//! - `--repo DIR` reconciles on save.
//!
//! Without git these tests skip with a note, unless `PLUGSYNC_REQUIRE_GIT_SERVER_TESTS=1`.

#[path = "common/git_server.rs"]
mod git_server;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use git_server::{free_port, tools_or_skip, GitDaemon, Need, SourceRepo};
use hmac::{Hmac, Mac};
use kube::CustomResourceExt;
use plugsync::apply::{Applier, ApplyOptions};
use plugsync::crd::Plugin;
use plugsync::model::PluginSetResource;
use plugsync::resolve::cache::Cache;
use plugsync::testkit::apiserver::workloads::{WorkloadPolicy, WorkloadSimulator};
use plugsync::testkit::apiserver::{ApiServer, Match, Verb};
use serde_json::{json, Value};
use sha2::Sha256;

const NS: &str = "dify";
const SET: &str = "synth";
const PLUGIN: &str = "plugsync.dev/v1alpha1";

struct Env {
    server: ApiServer,
    _workloads: WorkloadSimulator,
    kubeconfig: tempfile::TempDir,
    cache: tempfile::TempDir,
    generated: tempfile::TempDir,
    source: SourceRepo,
    daemon: GitDaemon,
}

impl Env {
    /// The double with the CRDs and namespace, a served repository whose first commit
    /// declares `n` synthetic plugins, and the packages in the cache `plugsync run` uses.
    async fn new(n: usize) -> Option<Env> {
        Env::with_daemon(n, false).await
    }

    /// As [`Env::new`], with a served repository that accepts pushes.
    async fn with_daemon(n: usize, pushes: bool) -> Option<Env> {
        if !tools_or_skip("run", Need::Daemon) {
            return None;
        }
        let server = ApiServer::start().await.expect("double");
        server
            .store()
            .put(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}))
            .expect("namespace");
        Applier::new(server.client())
            .ensure_crds(
                &[Plugin::crd(), PluginSetResource::crd()],
                ApplyOptions::default(),
            )
            .await
            .expect("crds");
        let workloads = server.simulate_workloads(WorkloadPolicy::default());
        let kubeconfig = tempfile::tempdir().expect("kubeconfig");
        server
            .write_kubeconfig(kubeconfig.path().join("config"), NS)
            .expect("kubeconfig");
        let cache = tempfile::tempdir().expect("cache");
        let generated = tempfile::tempdir().expect("generated");
        plugsync::synth::generate_repo(
            generated.path(),
            n,
            &Cache::open(cache.path()).expect("cache"),
        )
        .expect("generate");
        let source = SourceRepo::new();
        let daemon = if pushes {
            source.accept_pushes();
            GitDaemon::start_accepting_pushes(&source.root)
        } else {
            GitDaemon::start(&source.root)
        };
        let env = Env {
            server,
            _workloads: workloads,
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

    /// Commits the generated plugins.yaml and plugins.lock (as edited by `edit`).
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
        let port = free_port();
        let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("plugsync"));
        cmd.args([
            "run",
            "--git-url",
            &self.url(),
            "--namespace",
            NS,
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--interval",
            "1s",
            "--status-interval",
            "500ms",
        ])
        .args(extra)
        .env("KUBECONFIG", self.kubeconfig.path().join("config"))
        .env("PLUGSYNC_CACHE_DIR", self.cache.path())
        .env("RUST_LOG", "plugsync=debug")
        .env_remove("PLUGSYNC_PLUGIN_DIRS")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        if let Some(pod) = pod {
            cmd.env("POD_NAME", pod);
        }
        let child = cmd.spawn().expect("start plugsync run");
        Running {
            child: Some(child),
            port,
            logs: String::new(),
        }
    }

    fn set(&self) -> Value {
        self.server
            .store()
            .get(PLUGIN, "PluginSet", Some(NS), SET)
            .unwrap_or(Value::Null)
    }

    fn plugins(&self) -> Vec<Value> {
        self.server.store().list(PLUGIN, "Plugin", Some(NS))
    }

    async fn wait_for(&self, what: &str, timeout: Duration, mut check: impl FnMut(&Env) -> bool) {
        let start = Instant::now();
        while !check(self) {
            assert!(
                start.elapsed() < timeout,
                "timed out waiting for {what}\nset status: {:#}\nplugins: {:#?}",
                self.set()["status"],
                self.plugins()
                    .iter()
                    .map(|p| (p["metadata"]["name"].clone(), p["status"]["phase"].clone()))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn wait_applied(&self, commit: &str) {
        self.wait_for(
            &format!("commit {commit} applied"),
            Duration::from_secs(60),
            |env| env.set()["status"]["lastAppliedCommit"] == commit,
        )
        .await;
    }

    /// What the git loop writes of each Plugin: its spec (`generation`) and the hash of what
    /// it applied. The controller's status writes (which move `resourceVersion`) are not the
    /// loop's and do not count.
    fn resource_versions(&self) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = self
            .plugins()
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
            .collect();
        v.sort();
        v
    }
}

/// A `plugsync run` process, killed on drop.
struct Running {
    child: Option<Child>,
    port: u16,
    /// What it logged, once it has exited.
    logs: String,
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
                use std::io::Read;
                if let Some(mut err) = child.stderr.take() {
                    let _ = err.read_to_string(&mut self.logs);
                }
                return status;
            }
            assert!(start.elapsed() < Duration::from_secs(60), "did not stop");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// What it logged (stopping it first if it still runs).
    fn stderr(&mut self) -> String {
        use std::io::Read;
        let mut out = self.logs.clone();
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
            if let Some(mut err) = child.stderr.take() {
                let _ = err.read_to_string(&mut out);
            }
        }
        out
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

#[tokio::test]
async fn a_commit_converges_and_a_bad_commit_changes_nothing_until_a_good_one() {
    let Some(env) = Env::new(2).await else {
        return;
    };
    let first = env.source.head();
    let mut run = env.run(&["--leader-election", "false"], None);
    env.wait_applied(&first).await;
    env.wait_for(
        "2 plugins running and the set Ready",
        Duration::from_secs(60),
        |env| {
            let status = &env.set()["status"];
            status["phases"]["Running"] == 2
                && status["conditions"].as_array().is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                })
        },
    )
    .await;
    assert_eq!(env.set()["status"]["lastFetchedCommit"], first.as_str());
    assert_eq!(env.set()["status"]["pluginCount"], 2);
    let before = env.resource_versions();

    // A bad commit: an unknown field on line 9 of plugins.yaml.
    let yaml = env.generated_file("plugins.yaml");
    let mut lines: Vec<&str> = yaml.lines().collect();
    let spec_line = lines.iter().position(|l| *l == "spec:").expect("spec line");
    lines.insert(spec_line + 1, "  bogus: true");
    let bad_yaml = lines.join("\n") + "\n";
    let bad = env.commit_yaml(&bad_yaml, "a typo");
    env.wait_for("the bad commit reported", Duration::from_secs(30), |env| {
        env.set()["status"]["lastFetchedCommit"] == bad.as_str()
    })
    .await;
    env.wait_for("the status says why", Duration::from_secs(10), |env| {
        env.set()["status"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("invalid"))
    })
    .await;
    let status = env.set()["status"].clone();
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
    assert_eq!(env.resource_versions(), before, "the cluster is untouched");

    // The fix: the next good commit proceeds (and changes the Plugins).
    let good = env.commit_yaml(&reconfigured(&env.generated_file("plugins.yaml")), "fix");
    env.wait_applied(&good).await;
    assert_ne!(env.resource_versions(), before);
    assert!(env.set()["status"]["errors"].is_null(), "errors cleared");
    for plugin in env.plugins() {
        assert_eq!(plugin["spec"]["runtime"]["replicas"], 2);
    }
    let after = env.resource_versions();

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
    let start = Instant::now();
    let metrics = loop {
        let metrics = scrape().await;
        if count(
            &metrics,
            "plugsync_git_fetches_total{outcome=\"unchanged\"}",
        ) >= 2.0
        {
            break metrics;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{metrics}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
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
        env.resource_versions(),
        after,
        "unchanged polls write nothing"
    );
    let status = run.terminate().await;
    assert!(status.success(), "{status:?}: {}", run.stderr());
}

fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("key");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[tokio::test]
async fn a_signed_webhook_triggers_a_reconcile_and_a_bad_signature_is_refused() {
    let Some(env) = Env::new(1).await else {
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
        env.set()["status"]["lastAppliedCommit"],
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

#[tokio::test]
async fn two_replicas_elect_one_leader_which_alone_writes_and_a_standby_takes_over() {
    let Some(env) = Env::new(1).await else {
        return;
    };
    for pod in ["plugsync-a", "plugsync-b"] {
        env.server
            .store()
            .put(json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod, "namespace": NS, "labels": {"app": "plugsync"}},
                "spec": {"containers": [{"name": "plugsync", "image": "plugsync"}]}}))
            .expect("pod");
    }
    let flags = ["--lease-duration", "3s"];
    let mut a = env.run(&flags, Some("plugsync-a"));
    env.wait_applied(&env.source.head()).await;
    let mut b = env.run(&flags, Some("plugsync-b"));

    let leader_label = |env: &Env, pod: &str| {
        env.server
            .store()
            .get("v1", "Pod", Some(NS), pod)
            .map(|p| p["metadata"]["labels"]["plugsync.dev/leader"] == "true")
            .unwrap_or(false)
    };
    let holder = |env: &Env| {
        env.server
            .store()
            .get("coordination.k8s.io/v1", "Lease", Some(NS), "plugsync")
            .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_string))
            .unwrap_or_default()
    };
    env.wait_for("a leads", Duration::from_secs(20), |env| {
        leader_label(env, "plugsync-a")
    })
    .await;
    // For a few seconds: one leader, and it is a; b only waits.
    for _ in 0..20 {
        assert!(holder(&env).starts_with("plugsync-a_"), "{}", holder(&env));
        assert!(!leader_label(&env, "plugsync-b"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Only the leader writes: b's log (checked below) shows no apply before it led.
    let status = a.terminate().await;
    assert!(status.success(), "{status:?}");
    assert!(
        !leader_label(&env, "plugsync-a"),
        "a removed its label on the way out"
    );
    env.wait_for("b takes over", Duration::from_secs(20), |env| {
        leader_label(env, "plugsync-b") && holder(env).starts_with("plugsync-b_")
    })
    .await;
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
}

#[tokio::test]
async fn sigterm_mid_apply_finishes_the_apply_and_a_restart_converges() {
    let n = 12;
    let Some(env) = Env::new(n).await else {
        return;
    };
    // Every server-side apply takes 300 ms: the apply of 12 Plugins is in flight for seconds.
    env.server.faults().delay_next_matching(
        1000,
        Duration::from_millis(300),
        Match::verb(Verb::Apply),
    );
    let mut run = env.run(&["--leader-election", "false"], None);
    env.wait_for("the apply started", Duration::from_secs(60), |env| {
        !env.plugins().is_empty()
    })
    .await;
    let mid = env.plugins().len();
    assert!(mid < n, "still applying when stopped ({mid} of {n})");
    let status = run.terminate().await;
    assert!(status.success(), "{status:?}");
    assert_eq!(
        env.plugins().len(),
        n,
        "the apply in flight finished before the process exited"
    );
    env.server.faults().clear();

    let _restarted = env.run(&["--leader-election", "false"], None);
    env.wait_applied(&env.source.head()).await;
    env.wait_for("all running", Duration::from_secs(60), |env| {
        env.set()["status"]["phases"]["Running"] == n
    })
    .await;
    assert_eq!(env.plugins().len(), n, "no duplicates, nothing orphaned");
}

#[tokio::test]
async fn run_repo_reconciles_a_folder_on_save() {
    let Some(env) = Env::new(1).await else {
        return;
    };
    let folder = env.generated.path().to_path_buf();
    let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("plugsync"));
    let port = free_port();
    cmd.args([
        "run",
        "--repo",
        folder.to_str().expect("path"),
        "--namespace",
        NS,
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--interval",
        "1h",
        "--status-interval",
        "500ms",
        "--leader-election",
        "false",
    ])
    .env("KUBECONFIG", env.kubeconfig.path().join("config"))
    .env("PLUGSYNC_CACHE_DIR", env.cache.path())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let _run = Running {
        child: Some(cmd.spawn().expect("start")),
        port,
        logs: String::new(),
    };
    env.wait_for("the folder applied", Duration::from_secs(60), |env| {
        env.plugins().len() == 1
    })
    .await;
    let replicas = |env: &Env| env.plugins()[0]["spec"]["runtime"]["replicas"].clone();
    assert_eq!(replicas(&env), 1);
    save(
        &folder.join("plugins.yaml"),
        &reconfigured(&env.generated_file("plugins.yaml")),
    );
    env.wait_for("the saved change applied", Duration::from_secs(30), |env| {
        replicas(env) == 2
    })
    .await;
}

fn save(path: &Path, text: &str) {
    let tmp: PathBuf = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

fn annotate(env: &Env, key: &str, value: Option<&str>) {
    let mut set = env.set();
    set["metadata"]["annotations"][key] = match value {
        Some(v) => json!(v),
        None => Value::Null,
    };
    if value.is_none() {
        if let Some(a) = set["metadata"]["annotations"].as_object_mut() {
            a.remove(key);
        }
    }
    env.server.store().put(set).expect("annotate the PluginSet");
}

#[tokio::test]
async fn suspend_and_resume_by_annotation_and_an_immediate_reconcile_on_request() {
    let Some(env) = Env::new(1).await else {
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

    annotate(&env, "plugsync.dev/suspend", Some("true"));
    env.wait_for("suspended in status", Duration::from_secs(20), |env| {
        env.set()["status"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("suspended"))
    })
    .await;
    let second = env.commit_yaml(&reconfigured(&env.generated_file("plugins.yaml")), "change");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        env.set()["status"]["lastAppliedCommit"],
        first.as_str(),
        "nothing is applied while suspended"
    );
    annotate(&env, "plugsync.dev/suspend", None);
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
    assert_eq!(env.set()["status"]["lastAppliedCommit"], second.as_str());
    annotate(
        &env,
        "plugsync.dev/reconcile-requested-at",
        Some("2026-11-21T12:00:00Z"),
    );
    env.wait_applied(&third).await;
    env.wait_for("the request acknowledged", Duration::from_secs(10), |env| {
        env.set()["status"]["lastHandledReconcileAt"] == "2026-11-21T12:00:00Z"
    })
    .await;
}

#[tokio::test]
async fn https_credentials_come_from_a_secret_and_never_reach_the_status() {
    let Some(env) = Env::new(1).await else {
        return;
    };
    if !tools_or_skip("run over https", Need::HttpBackend) {
        return;
    }
    let http = git_server::HttpGitServer::start(&env.source.root, "bot", "pa55-word");
    let secret = |password: &str| {
        json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "git-creds", "namespace": NS},
            "type": "Opaque",
            "data": {"username": b64("bot"), "password": b64(password)}})
    };
    env.server.store().put(secret("wrong")).expect("secret");
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
    assert!(env.plugins().is_empty());
    // Rotated Secret: picked up at the next fetch, no restart.
    env.server.store().put(secret("pa55-word")).expect("secret");
    env.wait_applied(&env.source.head()).await;
    let status = env.set()["status"].to_string();
    assert!(!status.contains("pa55"), "{status}");
}

fn b64(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[tokio::test]
async fn built_digests_are_committed_back_to_the_branch_and_reused() {
    let Some(env) = Env::with_daemon(1, true).await else {
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
    env.wait_for("the plugin running", Duration::from_secs(60), |env| {
        env.set()["status"]["phases"]["Running"] == 1
    })
    .await;
    // The loop pushes a commit on top of `first` and then applies it.
    env.wait_for("the bot's commit applied", Duration::from_secs(60), |env| {
        let head = env.source.head();
        head != first && env.set()["status"]["lastAppliedCommit"] == head.as_str()
    })
    .await;
    let head = env.source.head();
    let log = git_server::git(&env.source.path, &["log", "-1", "--format=%an <%ae>|%s|%P"]);
    assert_eq!(
        log,
        format!("Plugin Bot <bot@example.invalid>|chore: pin built images|{first}")
    );
    let lock: Value = serde_yaml::from_str(&git_server::git(
        &env.source.path,
        &["show", &format!("{head}:plugins.lock")],
    ))
    .expect("lock yaml");
    let plugin = env.plugins().pop().expect("plugin");
    assert_eq!(lock["images"][0]["digest"], plugin["status"]["imageDigest"]);
    assert_eq!(
        lock["images"][0]["inputsHash"],
        plugin["spec"]["build"]["inputsHash"]
    );
    // Applied from the bot's commit, the Plugin carries the digest: nothing to build again.
    assert_eq!(
        plugin["spec"]["imageDigest"],
        plugin["status"]["imageDigest"]
    );
    // And only one such commit: the next polls find nothing new to record.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(env.source.head(), head);
}
