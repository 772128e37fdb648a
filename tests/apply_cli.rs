//! `plugsync apply` and `plugsync diff --cluster` as users run them: the real binary against
//! the real control plane (through the fault proxy, which counts and delays requests), kubectl
//! as the other client, and a process killed mid-apply.

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Duration;

use futures::TryStreamExt as _;
use kube::api::{Api, DynamicObject, ResourceExt as _};
use kube::runtime::{watcher, WatchStreamExt as _};
use serde_json::{json, Value};

#[path = "common/cluster.rs"]
mod cluster;
#[path = "common/fault_proxy.rs"]
mod fault_proxy;

#[path = "common/cli_env.rs"]
mod cli_env;

use cli_env::{text, Env, PLUGSYNC, SET};
use fault_proxy::{Match, Verb};

impl Env {
    /// `plugsync <args> --repo <the synthetic repository>`.
    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = self.plugsync(args);
        cmd.arg("--repo").arg(self.repo.path());
        cmd
    }

    async fn run(&self, args: &[&str]) -> std::process::Output {
        Env::output(self.command(args)).await
    }

    async fn replicas(&self, plugin: &str) -> Value {
        self.get(PLUGSYNC, "Plugin", plugin).await.expect("plugin")["spec"]["runtime"]["replicas"]
            .clone()
    }
}

/// Waits, through a watch, until at least `n` objects of `api` exist.
async fn until_at_least(api: Api<DynamicObject>, n: usize, timeout: Duration) {
    let mut seen = BTreeSet::new();
    let stream = watcher(api, watcher::Config::default()).applied_objects();
    let mut stream = std::pin::pin!(stream);
    tokio::time::timeout(timeout, async {
        while let Some(object) = stream.try_next().await.expect("watch") {
            seen.insert(object.name_any());
            if seen.len() >= n {
                return;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("fewer than {n} objects after {timeout:?}"));
}

#[tokio::test]
async fn apply_then_diff_cluster_then_change() {
    let env = Env::new("cli-apply-diff", 2).await;
    // A dry run says what it would do, naming each plugin as people know it, and does it not.
    let out = env.run(&["apply", "--dry-run"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lock: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(env.repo.path().join("plugins.lock")).expect("lock"),
    )
    .expect("lock yaml");
    let plugins: Vec<(String, String)> = lock["plugins"]
        .as_array()
        .expect("plugins")
        .iter()
        .map(|p| {
            let field = |k: &str| p[k].as_str().expect(k).to_string();
            (field("name"), field("version"))
        })
        .collect();
    assert_eq!(plugins.len(), 2, "{plugins:?}");
    for (name, version) in &plugins {
        assert!(
            stdout.lines().any(
                |l| l.starts_with(&format!("would create Plugin {}/", env.ns))
                    && l.ends_with(&format!("({name}@{version})"))
            ),
            "{name}@{version}: {stdout}"
        );
    }
    assert!(
        stdout.contains("dry run, nothing changed: 3 to create, 0 to update, 0 unchanged, 0 to remove, 0 held, 0 failed"),
        "{stdout}"
    );
    assert!(!stdout.contains("created"), "{stdout}");
    assert!(
        env.plugsync_objects().await.is_empty(),
        "the dry run wrote nothing"
    );

    let out = env.run(&["apply"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("3 created, 0 updated, 0 unchanged, 0 pruned, 0 held, 0 failed"),
        "{stdout}"
    );
    let (name, version) = &plugins[0];
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with(&format!("created Plugin {}/", env.ns))
                && l.ends_with(&format!("({name}@{version})"))),
        "{stdout}"
    );
    // The PluginSet and one Plugin per plugin; Jobs, Deployments and Services are the
    // controller's.
    assert_eq!(env.plugsync_objects().await.len(), 2);

    let out = env.run(&["diff", "--cluster"]).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );

    let (_, name) = env
        .plugsync_objects()
        .await
        .into_iter()
        .find(|(k, _)| k == "Plugin")
        .expect("plugin");

    // Someone changes a field plugsync applied, by hand: on a real API server the editor
    // (`kubectl-patch`) now owns the field. That is drift: the cluster diff shows it, and
    // apply takes the field back, as Flux and Argo CD do.
    env.c.kubectl_ok(&[
        "-n",
        &env.ns,
        "patch",
        &format!("plugin/{name}"),
        "--type=merge",
        "-p",
        r#"{"spec":{"runtime":{"replicas":7}}}"#,
    ]);
    let out = env.run(&["diff", "--cluster", "-o", "json"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        report["objects"].as_array().map(Vec::len),
        Some(1),
        "{report:#}"
    );
    assert_eq!(report["objects"][0]["kind"], "Plugin");
    assert_eq!(report["objects"][0]["name"], name.as_str());
    assert_eq!(
        report["objects"][0]["changedPaths"],
        json!(["spec.runtime.replicas"])
    );
    assert_eq!(env.replicas(&name).await, 7, "diff changed nothing");

    let out = env.run(&["apply"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("0 created, 1 updated"), "{stdout}");
    assert!(
        stdout.contains(&format!("took back Plugin {}/{name}", env.ns))
            && stdout.contains("kubectl-patch"),
        "{stdout}"
    );
    assert_eq!(env.replicas(&name).await, 1);
    // plugsync owns the field again; the editor's claim on it is gone.
    let live = env.c.kubectl_ok(&[
        "-n",
        &env.ns,
        "get",
        &format!("plugin/{name}"),
        "--show-managed-fields",
        "-o",
        "json",
    ]);
    let live: Value = serde_json::from_str(&live).expect("json");
    for m in live["metadata"]["managedFields"]
        .as_array()
        .expect("managedFields")
    {
        let owns_replicas = m.pointer("/fieldsV1/f:spec/f:runtime/f:replicas").is_some();
        assert_eq!(
            owns_replicas,
            m["manager"] == "plugsync",
            "{}",
            live["metadata"]["managedFields"]
        );
    }

    // A co-owner that applies with its own server-side apply is no drift: a reported
    // conflict (exit 2), the value left alone.
    let mut co_owner = env.c.kubectl();
    co_owner.args([
        "-n",
        &env.ns,
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager=operator",
        "-f",
        "-",
    ]);
    let manifest = format!(
        "apiVersion: plugsync.dev/v1alpha1\nkind: Plugin\nmetadata: {{name: {name}}}\nspec: {{runtime: {{replicas: 5}}}}\n"
    );
    let mut child = co_owner
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl");
    use std::io::Write as _;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(manifest.as_bytes())
        .expect("write");
    let applied = child.wait_with_output().expect("kubectl");
    assert!(applied.status.success(), "{}", text(&applied.stderr));
    for args in [&["diff", "--cluster"][..], &["apply"][..]] {
        let out = env.run(args).await;
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains(r#"conflict with "operator""#)
                && stderr.contains(".spec.runtime.replicas")
                && stderr.contains(&name),
            "{args:?}: {stderr}"
        );
        assert_eq!(env.replicas(&name).await, 5, "{args:?} changed nothing");
    }
}

#[tokio::test]
async fn a_stale_lock_changes_nothing_in_the_cluster() {
    let env = Env::new("cli-stale-lock", 2).await;
    let plugins = env.repo.path().join("plugins.yaml");
    let text_before = std::fs::read_to_string(&plugins).expect("read");
    // Drop the last plugin from plugins.yaml without re-locking: the lock no longer matches.
    let last = text_before.rfind("    - url: ").expect("an entry");
    std::fs::write(&plugins, &text_before[..last]).expect("write");
    let out = env.run(&["apply"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("plugins.lock is out of date"),
        "{}",
        text(&out.stderr)
    );
    let stats = env.proxy.stats();
    assert_eq!(
        (stats.real.writes(), stats.dry_run.writes()),
        (0, 0),
        "nothing applied: {stats:?}"
    );
    assert!(env.get(PLUGSYNC, "PluginSet", SET).await.is_none());
    assert_eq!(env.plugsync_objects().await, vec![]);
}

#[tokio::test]
async fn a_process_killed_mid_apply_converges_on_rerun() {
    let env = Env::new("cli-killed", 6).await;
    // Slow every apply down so the kill lands in the middle of the run.
    env.proxy.faults().delay_next_matching(
        1000,
        Duration::from_millis(150),
        Match::verb(Verb::Apply),
    );
    let mut child = env
        .command(&["apply"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    // Wait until some, but not all, Plugins exist, then kill -9.
    until_at_least(
        env.api(PLUGSYNC, "Plugin").await,
        2,
        Duration::from_secs(60),
    )
    .await;
    child.start_kill().expect("kill");
    let _ = child.wait().await;
    let partial = env.plugsync_objects().await;
    assert!(
        partial.len() < 6,
        "killed before the end: {}",
        partial.len()
    );
    let inventory = env.inventory().await;
    for (_, name) in &partial {
        assert!(
            inventory.contains(name),
            "{name} is in the inventory: {inventory:?}"
        );
    }

    env.proxy.faults().clear();
    let out = env.run(&["apply"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let objects = env.plugsync_objects().await;
    assert_eq!(objects.len(), 6, "converged: {objects:?}");
    assert!(objects.iter().all(|(k, _)| k == "Plugin"), "{objects:?}");
    let names: Vec<String> = objects.iter().map(|(_, n)| n.clone()).collect();
    assert_eq!(
        env.inventory().await,
        names,
        "inventory narrowed to exactly what exists"
    );
    let plugin_ids: BTreeSet<String> = env
        .plugins()
        .await
        .iter()
        .map(|p| {
            p["spec"]["pluginId"]
                .as_str()
                .expect("pluginId")
                .to_string()
        })
        .collect();
    assert_eq!(plugin_ids.len(), 6, "one Plugin per plugin: no duplicates");

    // And a further run is a no-op.
    env.proxy.reset_stats();
    let out = env.run(&["apply"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stats = env.proxy.stats();
    assert_eq!(
        (stats.real.writes(), stats.dry_run.writes()),
        (0, 0),
        "{stats:?}"
    );
}

#[tokio::test]
async fn context_selects_the_cluster_like_kubectl() {
    let env = Env::new("cli-context", 1).await;
    // The admin kubeconfig with a second context, the current one, pointing nowhere; and
    // the real one named `real`, in this test's namespace.
    let admin: serde_json::Value =
        serde_saphyr::from_str(&std::fs::read_to_string(env.c.kubeconfig()).expect("kubeconfig"))
            .expect("yaml");
    let real_cluster = admin["clusters"][0].clone();
    let user = admin["users"][0].clone();
    let config = serde_saphyr::to_string(&json!({
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "broken",
        "clusters": [
            {"name": "broken", "cluster": {"server": "http://127.0.0.1:9"}},
            real_cluster.clone(),
        ],
        "users": [user.clone()],
        "contexts": [
            {"name": "broken", "context": {"cluster": "broken", "user": user["name"]}},
            {"name": "real", "context": {
                "cluster": real_cluster["name"], "user": user["name"], "namespace": env.ns}},
        ],
    }))
    .expect("yaml");
    let path = env.kubeconfig.path().join("two-contexts");
    std::fs::write(&path, config).expect("write");
    let path = path.to_str().expect("utf8").to_string();

    let out = env
        .run(&["apply", "--kubeconfig", &path, "--context", "real"])
        .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(env.plugsync_objects().await.len(), 1);
    // kubectl, given the same flags, sees the same cluster and namespace.
    let seen = env.c.kubectl_ok(&[
        "--kubeconfig",
        &path,
        "--context",
        "real",
        "get",
        "plugins.plugsync.dev",
        "-o",
        "name",
    ]);
    assert_eq!(seen.lines().count(), 1, "{seen}");

    let out = env.run(&["apply", "--kubeconfig", &path]).await;
    assert_eq!(
        out.status.code(),
        Some(2),
        "the current context is unreachable: {}",
        text(&out.stderr)
    );
    let kubectl = env
        .c
        .kubectl()
        .args(["--kubeconfig", &path, "get", "plugins.plugsync.dev"])
        .output()
        .expect("kubectl");
    assert!(!kubectl.status.success(), "kubectl fails the same way");
}

/// The bug report: with the shipped CRDs applied by kubectl (`kubectl apply --server-side -f
/// deploy/crds/`), `plugsync apply` on the bundled example must not conflict with kubectl
/// over the CRDs. (The API server double reported one on
/// `.spec.versions[name="v1alpha1"]...attempt.minimum`: kubectl sends 0, plugsync 0.0.)
#[tokio::test]
async fn apply_of_the_example_after_kubectl_applied_the_shipped_crds_does_not_conflict() {
    let env = Env::new("cli-kubectl-crds", 1).await;
    // kubectl, an independent client, installs the shipped CRDs (this test binary's set-up
    // already did, before any plugsync process ran; again here, as the report says).
    let out = env
        .c
        .kubectl()
        .args(["apply", "--server-side", "-f", &cli_env::crds_dir()])
        .output()
        .expect("kubectl");
    assert!(out.status.success(), "{}", text(&out.stderr));

    // The bundled example, its namespace (fixed: dify) moved to this test's.
    let example = tempfile::tempdir().expect("dir");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    copy_dir(&root, example.path());
    let plugins = example.path().join("plugins.yaml");
    let yaml = std::fs::read_to_string(&plugins).expect("read");
    let moved = yaml.replace(
        "\n  namespace: dify\n",
        &format!("\n  namespace: {}\n", env.ns),
    );
    assert_ne!(moved, yaml, "the example declares namespace dify");
    std::fs::write(&plugins, moved).expect("write");

    let mut cmd = env.plugsync(&["apply"]);
    cmd.arg("--repo").arg(example.path());
    let out = Env::output(cmd).await;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        !stdout.contains("conflict") && !stderr.contains("conflict"),
        "{stdout}{stderr}"
    );
    assert!(stdout.contains(" 0 failed"), "{stdout}");
    let plugins = env.plugins().await;
    assert_eq!(plugins.len(), 2, "the example's two plugins");
    assert!(env.get(PLUGSYNC, "PluginSet", "example").await.is_some());

    // kubectl and plugsync now both manage the CRDs, each with its own server-side apply.
    for crd in ["plugins.plugsync.dev", "pluginsets.plugsync.dev"] {
        let live = env
            .c
            .kubectl_ok(&["get", "crd", crd, "--show-managed-fields", "-o", "json"]);
        let live: Value = serde_json::from_str(&live).expect("json");
        let appliers: BTreeSet<&str> = live["metadata"]["managedFields"]
            .as_array()
            .expect("managedFields")
            .iter()
            .filter(|m| m["operation"] == "Apply")
            .filter_map(|m| m["manager"].as_str())
            .collect();
        // (`testcluster` installed them before the controller manager started: see
        // tests/common/cluster.rs.)
        assert_eq!(
            appliers,
            BTreeSet::from(["kubectl", "plugsync", "testcluster"]),
            "{crd}: {:#}",
            live["metadata"]["managedFields"]
        );
        // `.spec.versions` is an atomic list to the real server: both own all of it, the
        // schema with `attempt.minimum` included, which they therefore sent equal.
        for m in live["metadata"]["managedFields"]
            .as_array()
            .expect("managedFields")
            .iter()
            .filter(|m| m["operation"] == "Apply")
        {
            assert!(
                m["fieldsV1"]["f:spec"].get("f:versions").is_some(),
                "{crd}: {m:#}"
            );
        }
    }
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

#[tokio::test]
async fn a_second_set_declaring_the_same_package_is_refused_with_exit_2() {
    let env = Env::new("cli-two-sets", 1).await;
    let out = env.run(&["apply"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (_, plugin) = env
        .plugsync_objects()
        .await
        .into_iter()
        .find(|(k, _)| k == "Plugin")
        .expect("plugin");

    // A copy of the repository whose set has another name: the same package, the same
    // Plugin name, in the same namespace.
    let other = tempfile::tempdir().expect("repo");
    for file in ["plugins.yaml", "plugins.lock"] {
        let text = std::fs::read_to_string(env.repo.path().join(file)).expect("read");
        let text = text.replace(&format!("\n  name: {SET}\n"), "\n  name: other\n");
        std::fs::write(other.path().join(file), text).expect("write");
    }
    for args in [
        &["diff", "--cluster"][..],
        &["apply", "--dry-run"][..],
        &["apply"][..],
    ] {
        let mut cmd = env.plugsync(args);
        cmd.arg("--repo").arg(other.path());
        let out = Env::output(cmd).await;
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            // `apply` names the plugin after its id: `Plugin ns/<id> (author/name@version)`.
            stderr.contains(&format!("error: Plugin {}/{plugin}", env.ns))
                && stderr.contains(&format!(": owned by PluginSet \"{SET}\""))
                && stderr.contains("PluginSet \"other\" declares the same package")
                && stderr.contains("declare it in one of them, or give each set its own namespace"),
            "{args:?}: {stderr}"
        );
    }
    let live = env.get(PLUGSYNC, "Plugin", &plugin).await.expect("plugin");
    assert_eq!(live["metadata"]["labels"]["plugsync.dev/pluginset"], SET);
    assert_eq!(live["spec"]["pluginSet"], SET);

    // The first set's own apply still has nothing to change: nothing was taken over.
    let out = env.run(&["diff", "--cluster"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

/// `apply --dry-run` before anything is installed, on a cluster without plugsync's CRDs (a
/// second control plane, started bare for this test): it says what it would create, CRDs
/// included, and creates nothing.
#[tokio::test]
async fn a_dry_run_on_a_cluster_without_the_crds_says_what_it_would_create() {
    let env = Env::new("cli-dry-run-bare", 2).await;
    let bare = tempfile::tempdir().expect("dir");
    let up = std::process::Command::new(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cluster/up"),
    )
    .arg(bare.path())
    .args(["--owner-pid", &std::process::id().to_string()])
    .output()
    .expect("up");
    assert!(up.status.success(), "{}", text(&up.stderr));
    let kubeconfig = bare.path().join("kubeconfig");
    let kubectl = |args: &[&str]| {
        let out = std::process::Command::new("kubectl")
            .args(args)
            .env("KUBECONFIG", &kubeconfig)
            .output()
            .expect("kubectl");
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    kubectl(&["create", "namespace", &env.ns]);

    let mut cmd = env.plugsync(&["apply", "--dry-run"]);
    cmd.arg("--repo")
        .arg(env.repo.path())
        .env("KUBECONFIG", &kubeconfig);
    let out = Env::output(cmd).await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    for crd in ["plugins.plugsync.dev", "pluginsets.plugsync.dev"] {
        assert!(
            stdout.contains(&format!("would create CustomResourceDefinition {crd}")),
            "{stdout}"
        );
    }
    assert!(
        stdout.contains(&format!("would create PluginSet {}/{SET}", env.ns)),
        "{stdout}"
    );
    assert!(
        stdout.contains("dry run, nothing changed: 3 to create"),
        "{stdout}"
    );
    assert_eq!(
        kubectl(&["get", "crd", "-o", "name"]),
        "",
        "the dry run installed nothing"
    );
    let down = std::process::Command::new(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cluster/down"),
    )
    .arg(bare.path())
    .output()
    .expect("down");
    assert!(down.status.success());
}
