//! Recording built images and cleaning up failed attempts, as users run them: the real
//! `plugsync` binary against the API server double, with the controller running in-process
//! and a harness playing kubelet and job controller.
//!
//! - `plugsync lock --from-cluster` pins the digests the controller recorded, keyed by build
//!   inputs; the next render then runs them by digest and renders no build Job.
//! - `plugsync gc` removes failed attempts beyond `--keep`, never the latest.

use std::sync::Arc;
use std::time::Duration;

use plugsync::controller::{self, Context};
use plugsync::render::RenderSettings;
use plugsync::resolve::cache::Cache;
use plugsync::testkit::apiserver::workloads::WorkloadPolicy;
use serde_json::{json, Value};

#[path = "common/cli_env.rs"]
mod cli_env;

use cli_env::{Env, NS};

const PLUGIN: &str = "plugsync.dev/v1alpha1";

impl Env {
    async fn run(&self, args: &[&str]) -> (bool, String) {
        let mut cmd = tokio::process::Command::new(assert_cmd::cargo::cargo_bin("plugsync"));
        cmd.args(args)
            .env("KUBECONFIG", self.kubeconfig_path())
            .env("PLUGSYNC_CACHE_DIR", self.cache.path())
            .env_remove("PLUGSYNC_PLUGIN_DIRS");
        let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
            .await
            .expect("finishes")
            .expect("runs");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    fn repo(&self) -> &str {
        self.repo.path().to_str().expect("utf-8 path")
    }

    fn plugins(&self) -> Vec<Value> {
        self.server.store().list(PLUGIN, "Plugin", Some(NS))
    }
}

#[tokio::test]
async fn lock_from_cluster_pins_built_digests_and_the_next_render_builds_nothing() {
    let env = Env::new(2).await;
    let (ok, out) = env.run(&["apply", "--repo", env.repo()]).await;
    assert!(ok, "{out}");

    let _workloads = env.server.simulate_workloads(WorkloadPolicy::default());
    let cache = Cache::open(env.cache.path()).expect("cache");
    let ctx = Context::new(env.server.client(), cache, RenderSettings::default());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(controller::run(Arc::new(ctx), NS.to_string(), async move {
        let _ = stopped.await;
    }));
    let start = std::time::Instant::now();
    while !env
        .plugins()
        .iter()
        .all(|p| p["status"]["phase"] == "Running")
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{:#?}",
            env.plugins()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop.send(());

    let (ok, out) = env
        .run(&["lock", "--repo", env.repo(), "--from-cluster"])
        .await;
    assert!(ok, "{out}");
    let lock: Value = serde_yaml::from_str(
        &std::fs::read_to_string(env.repo.path().join("plugins.lock")).expect("lock"),
    )
    .expect("yaml");
    let images = lock["images"].as_array().expect("images pinned");
    assert_eq!(images.len(), 2, "{lock:#?}");
    for plugin in env.plugins() {
        let pinned = images
            .iter()
            .find(|i| i["inputsHash"] == plugin["spec"]["build"]["inputsHash"])
            .unwrap_or_else(|| panic!("no image pinned for {}", plugin["metadata"]["name"]));
        assert_eq!(pinned["digest"], plugin["status"]["imageDigest"]);
        assert_eq!(pinned["image"], plugin["spec"]["build"]["image"]);
    }

    // The lock is still up to date for plugins.yaml: recorded images are not a change.
    let (ok, out) = env.run(&["lock", "--repo", env.repo(), "--locked"]).await;
    assert!(ok, "{out}");

    // The next render runs the recorded digests and renders no build Job.
    let (ok, rendered) = env.run(&["render", "--repo", env.repo()]).await;
    assert!(ok, "{rendered}");
    assert!(!rendered.contains("kind: Job"), "{rendered}");
    for image in images {
        let digest = image["digest"].as_str().expect("digest");
        assert!(rendered.contains(&format!("@{digest}")), "{rendered}");
    }

    // And the git loop hands the digest to the Plugin, so a fresh cluster reuses it.
    let (ok, out) = env.run(&["apply", "--repo", env.repo()]).await;
    assert!(ok, "{out}");
    for plugin in env.plugins() {
        assert_eq!(
            plugin["spec"]["imageDigest"],
            plugin["status"]["imageDigest"]
        );
    }
}

fn attempt(plugin_id: &str, n: u32, phase: &str) -> (Value, Value) {
    let name = if n == 1 {
        plugin_id.to_string()
    } else {
        format!("{plugin_id}--{n}")
    };
    let plugin = json!({
        "apiVersion": PLUGIN,
        "kind": "Plugin",
        "metadata": {"name": name, "namespace": NS, "labels": {
            "plugsync.dev/pluginset": "synth", "plugsync.dev/plugin-id": plugin_id}},
        "spec": {
            "pluginSet": "synth", "name": "a/b", "version": "1.0.0",
            "uniqueIdentifier": "a/b:1.0.0@x", "pluginId": plugin_id, "attempt": n,
            "package": {"source": "path:b", "sha256": "0".repeat(64), "checksum": "1".repeat(64)},
            "runner": {"language": "python", "version": "3.12", "entrypoint": "main"},
            "build": {"contextSha256": "2".repeat(64), "inputsHash": "3".repeat(64),
                      "image": format!("r.local/b-{plugin_id}:1.0.0")},
            "runtime": {}
        },
        "status": {"phase": phase}
    });
    let job = json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"template": {"spec": {"containers": [{"name": "build", "image": "kaniko"}],
                                       "restartPolicy": "Never"}}}
    });
    (plugin, job)
}

#[tokio::test]
async fn gc_removes_failed_attempts_but_keeps_the_latest() {
    let env = Env::new(1).await;
    let (ok, out) = env
        .run(&["apply", "--repo", env.repo(), "--no-prune"])
        .await;
    assert!(ok, "{out}");
    // Another plugin, stalled after three failed attempts (no controller runs here).
    let id = "f".repeat(32);
    for n in 1..=3 {
        let (plugin, mut job) = attempt(&id, n, "BuildFailed");
        let stored = env.server.store().put(plugin).expect("plugin");
        // Owned by its attempt, as the controller creates it.
        job["metadata"]["ownerReferences"] = json!([{
            "apiVersion": PLUGIN, "kind": "Plugin", "controller": true,
            "name": stored["metadata"]["name"], "uid": stored["metadata"]["uid"]}]);
        env.server.store().put(job).expect("job");
    }
    let names = |env: &Env, kind: &str, version: &str| {
        let mut v: Vec<String> = env
            .server
            .store()
            .list(version, kind, Some(NS))
            .iter()
            .filter_map(|o| o["metadata"]["name"].as_str().map(str::to_string))
            .filter(|n| n.starts_with(&id))
            .collect();
        v.sort();
        v
    };

    let (ok, out) = env.run(&["gc", "--namespace", NS, "--dry-run"]).await;
    assert!(ok, "{out}");
    assert!(out.contains(&format!("removed plugin/{id}--2")), "{out}");
    assert!(out.contains(&format!("removed job/{id} ")), "{out}");
    assert!(out.contains("(dry run)"), "{out}");
    assert_eq!(
        names(&env, "Plugin", PLUGIN).len(),
        3,
        "dry run removes nothing"
    );

    let (ok, out) = env.run(&["gc", "--namespace", NS]).await;
    assert!(ok, "{out}");
    assert!(
        out.contains("2 failed or superseded attempts removed"),
        "{out}"
    );
    assert_eq!(
        names(&env, "Plugin", PLUGIN),
        vec![id.clone(), format!("{id}--3")],
        "the first attempt stays (it owns the set's place), the latest holds the Stalled state"
    );
    assert_eq!(names(&env, "Job", "batch/v1"), vec![format!("{id}--3")]);
    // The healthy synthetic plugin is untouched.
    assert_eq!(env.plugins().len(), 3);

    let (ok, out) = env.run(&["gc", "--namespace", NS]).await;
    assert!(ok, "{out}");
    assert!(
        out.contains("0 failed or superseded attempts removed"),
        "{out}"
    );
}
