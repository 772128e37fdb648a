//! `plugsync apply` and `plugsync diff --cluster` as users run them: the real binary, a
//! kubeconfig pointing at the API server double, and a process killed mid-apply.

use std::process::Stdio;
use std::time::Duration;

use plugsync::testkit::apiserver::{Match, Verb};
use serde_json::json;

#[path = "common/cli_env.rs"]
mod cli_env;

use cli_env::{Env, NS};

impl Env {
    fn command(&self, args: &[&str]) -> std::process::Command {
        let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("plugsync"));
        cmd.args(args)
            .arg("--repo")
            .arg(self.repo.path())
            .env("KUBECONFIG", self.kubeconfig_path())
            .env("PLUGSYNC_CACHE_DIR", self.cache.path())
            .env_remove("PLUGSYNC_PLUGIN_DIRS");
        cmd
    }

    async fn run(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = tokio::process::Command::from(self.command(args));
        tokio::time::timeout(Duration::from_secs(120), cmd.output())
            .await
            .expect("finishes")
            .expect("runs")
    }

    fn plugsync_objects(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (v, k) in [
            ("plugsync.dev/v1alpha1", "Plugin"),
            ("batch/v1", "Job"),
            ("apps/v1", "Deployment"),
            ("v1", "Service"),
        ] {
            for o in self.server.store().list(v, k, Some(NS)) {
                out.push((
                    k.to_string(),
                    o["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                ));
            }
        }
        out.sort();
        out
    }

    fn inventory_len(&self) -> usize {
        self.server
            .store()
            .get("plugsync.dev/v1alpha1", "PluginSet", Some(NS), "synth")
            .and_then(|s| s["status"]["inventory"].as_array().map(Vec::len))
            .unwrap_or(0)
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn apply_then_diff_cluster_then_change() {
    let env = Env::new(2).await;
    let out = env.run(&["apply"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("3 created, 0 updated, 0 unchanged, 0 pruned, 0 held, 0 failed"),
        "{}",
        text(&out.stdout)
    );
    // The PluginSet and one Plugin per plugin; Jobs, Deployments and Services are the
    // controller's.
    assert_eq!(env.plugsync_objects().len(), 2);

    let out = env.run(&["diff", "--cluster"]).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );

    // Someone edits a Plugin by hand: drift shows in the cluster diff and apply fixes it.
    let (_, name) = env
        .plugsync_objects()
        .into_iter()
        .find(|(k, _)| k == "Plugin")
        .expect("plugin");
    let replicas = |env: &Env| {
        env.server
            .store()
            .get("plugsync.dev/v1alpha1", "Plugin", Some(NS), &name)
            .expect("get")["spec"]["runtime"]["replicas"]
            .clone()
    };
    let mut p = env
        .server
        .store()
        .get("plugsync.dev/v1alpha1", "Plugin", Some(NS), &name)
        .expect("get");
    p["spec"]["runtime"]["replicas"] = json!(7);
    env.server.store().put(p).expect("drift");
    let out = env.run(&["diff", "--cluster", "-o", "json"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["objects"][0]["kind"], "Plugin");
    assert_eq!(
        report["objects"][0]["changedPaths"],
        json!(["spec.runtime.replicas"])
    );
    assert_eq!(replicas(&env), 7, "diff changed nothing");

    let out = env.run(&["apply"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("0 created, 1 updated"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(replicas(&env), 1);
}

#[tokio::test]
async fn a_stale_lock_changes_nothing_in_the_cluster() {
    let env = Env::new(2).await;
    let plugins = env.repo.path().join("plugins.yaml");
    let text_before = std::fs::read_to_string(&plugins).expect("read");
    // Drop the last plugin from plugins.yaml without re-locking: the lock no longer matches.
    let last = text_before.rfind("    - url: ").expect("an entry");
    std::fs::write(&plugins, &text_before[..last]).expect("write");
    let rv = env.server.store().resource_version();
    let out = env.run(&["apply"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("plugins.lock is out of date"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(env.server.store().resource_version(), rv, "nothing applied");
}

#[tokio::test]
async fn a_process_killed_mid_apply_converges_on_rerun() {
    let env = Env::new(6).await;
    // Slow every apply down so the kill lands in the middle of the run.
    env.server.faults().delay_next_matching(
        1000,
        Duration::from_millis(150),
        Match::verb(Verb::Apply),
    );
    let mut child = tokio::process::Command::from(env.command(&["apply"]))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    // Wait until some, but not all, objects exist, then kill -9.
    let started = std::time::Instant::now();
    loop {
        let n = env.plugsync_objects().len();
        if n >= 2 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "apply never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.start_kill().expect("kill");
    let _ = child.wait().await;
    let partial = env.plugsync_objects();
    assert!(
        partial.len() < 6,
        "killed before the end: {}",
        partial.len()
    );
    assert!(
        env.inventory_len() >= partial.len(),
        "everything created is in the inventory"
    );

    env.server.faults().clear();
    let out = env.run(&["apply"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let objects = env.plugsync_objects();
    assert_eq!(objects.len(), 6, "converged");
    let mut dedup = objects.clone();
    dedup.dedup();
    assert_eq!(dedup, objects, "no duplicates");
    assert_eq!(
        env.inventory_len(),
        6,
        "inventory narrowed to exactly what exists"
    );

    // And a further run is a no-op.
    env.server.reset_stats();
    let out = env.run(&["apply"]).await;
    assert!(out.status.success());
    assert_eq!(env.server.stats().writes, 0);
}

#[tokio::test]
async fn context_selects_the_cluster_like_kubectl() {
    let env = Env::new(1).await;
    // A kubeconfig whose current context points nowhere; --context picks the double.
    let config = format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: broken\nclusters:\n- name: broken\n  cluster: {{server: 'http://127.0.0.1:9'}}\n- name: double\n  cluster: {{server: '{}'}}\ncontexts:\n- name: broken\n  context: {{cluster: broken, user: u}}\n- name: double\n  context: {{cluster: double, user: u, namespace: {NS}}}\nusers:\n- name: u\n  user: {{}}\n",
        env.server.url()
    );
    let path = env.kubeconfig.path().join("two-contexts");
    std::fs::write(&path, config).expect("write");
    let path = path.to_str().expect("utf8").to_string();
    let out = env
        .run(&["apply", "--kubeconfig", &path, "--context", "double"])
        .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(env.plugsync_objects().len(), 1);
    let out = env.run(&["apply", "--kubeconfig", &path]).await;
    assert_eq!(
        out.status.code(),
        Some(2),
        "the current context is unreachable"
    );
}
