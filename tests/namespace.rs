//! `-n/--namespace` on every command that touches a cluster, as kubectl users expect, on the
//! real control plane: a plugins.yaml without `metadata.namespace` goes to `-n` (or
//! `PLUGSYNC_NAMESPACE`), else to the kubeconfig context's namespace; one that names its
//! namespace goes there, and `-n` naming another one is refused before anything is written;
//! every command prints the namespace it looked at, and why.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

#[path = "common/cluster.rs"]
mod cluster;
#[path = "common/fault_proxy.rs"]
mod fault_proxy;

#[path = "common/cli_env.rs"]
mod cli_env;

use cli_env::{text, Env, PLUGSYNC, SET};

/// The context the proxy's kubeconfig names (tests/common/fault_proxy.rs).
const CONTEXT: &str = "proxy";

impl Env {
    /// `plugsync <args>`, without a namespace from the environment unless the test sets one.
    fn cmd(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = self.plugsync(args);
        cmd.env_remove("PLUGSYNC_NAMESPACE")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("KUBERNETES_SERVICE_PORT");
        cmd
    }

    /// `plugsync <args> --repo <the synthetic repository>`, run to its end.
    async fn run_repo(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = self.cmd(args);
        cmd.arg("--repo").arg(self.repo.path());
        Env::output(cmd).await
    }

    /// Drops `metadata.namespace` from the synthetic plugins.yaml.
    fn forget_namespace(&self) {
        let path = self.repo.path().join("plugins.yaml");
        let yaml = std::fs::read_to_string(&path).expect("read");
        let line = format!("  namespace: {}\n", self.ns);
        assert!(yaml.contains(&line), "{yaml}");
        std::fs::write(&path, yaml.replacen(&line, "", 1)).expect("write");
    }

    /// The names of the Plugins in `namespace`.
    async fn plugins_in(&self, namespace: &str) -> Vec<String> {
        let api: kube::Api<kube::api::DynamicObject> = kube::Api::namespaced_with(
            self.client().await,
            namespace,
            &cli_env::resource(PLUGSYNC, "Plugin"),
        );
        let mut names: Vec<String> = api
            .list(&Default::default())
            .await
            .expect("list")
            .items
            .into_iter()
            .filter_map(|p| p.metadata.name)
            .collect();
        names.sort();
        names
    }

    /// Whether the synthetic PluginSet exists in `namespace`.
    async fn set_in(&self, namespace: &str) -> bool {
        let api: kube::Api<kube::api::DynamicObject> = kube::Api::namespaced_with(
            self.client().await,
            namespace,
            &cli_env::resource(PLUGSYNC, "PluginSet"),
        );
        api.get_opt(SET).await.expect("get").is_some()
    }
}

#[tokio::test]
async fn a_set_without_a_namespace_goes_to_dash_n_else_to_the_contexts() {
    let env = Env::new("ns-undeclared", 2).await;
    env.forget_namespace();

    // No -n: the kubeconfig context's namespace, printed with where it came from.
    let out = env.run_repo(&["apply"]).await;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stderr.contains(&format!(
            "namespace {} (from the kubeconfig context {CONTEXT})",
            env.ns
        )),
        "{stderr}"
    );
    assert_eq!(env.plugins_in(&env.ns).await.len(), 2);
    assert!(env.set_in(&env.ns).await);

    // -n: that namespace, whatever the context says.
    let other = env.c.namespace("ns-undeclared-flag").await;
    let out = env.run_repo(&["apply", "-n", &other]).await;
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("namespace {other} (from --namespace)")),
        "{stderr}"
    );
    assert_eq!(
        env.plugins_in(&other).await,
        env.plugins_in(&env.ns).await,
        "the same plugins, in the namespace -n names"
    );

    // PLUGSYNC_NAMESPACE is -n's variable: diff --cluster looks there (nothing applied yet).
    let third = env.c.namespace("ns-undeclared-env").await;
    let mut cmd = env.cmd(&["diff", "--cluster", "-o", "json"]);
    cmd.arg("--repo")
        .arg(env.repo.path())
        .env("PLUGSYNC_NAMESPACE", &third);
    let out = Env::output(cmd).await;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(
        out.status.code(),
        Some(1),
        "changes to make: {stdout}{stderr}"
    );
    assert!(
        stderr.contains(&format!("namespace {third} (from --namespace)")),
        "{stderr}"
    );
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    let objects = report["objects"].as_array().expect("objects");
    assert!(!objects.is_empty(), "{stdout}");
    for object in objects {
        assert_eq!(object["namespace"], third.as_str(), "{object}");
    }
    assert!(
        env.plugins_in(&third).await.is_empty(),
        "a diff writes nothing"
    );
}

#[tokio::test]
async fn dash_n_naming_another_namespace_than_plugins_yaml_is_refused() {
    let env = Env::new("ns-declared", 1).await;
    let other = env.c.namespace("ns-declared-other").await;
    env.proxy.reset_stats();
    for command in [
        &["apply"][..],
        &["diff", "--cluster"][..],
        &["lock", "--from-cluster"][..],
    ] {
        let mut args = command.to_vec();
        args.extend(["-n", &other]);
        let out = env.run_repo(&args).await;
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{command:?}: {stderr}");
        // The file, the line of metadata.namespace, and what to do.
        let file = env.repo.path().join("plugins.yaml");
        let line = std::fs::read_to_string(&file)
            .expect("read")
            .lines()
            .position(|l| l.trim_start().starts_with("namespace:"))
            .expect("a namespace line")
            + 1;
        assert!(
            stderr.contains(&format!("{}:{line}", file.display())),
            "{command:?}: names plugins.yaml and its line {line}: {stderr}"
        );
        assert!(stderr.contains("metadata.namespace"), "{stderr}");
        assert!(
            stderr.contains(&format!("--namespace={}", env.ns)),
            "{command:?}: says what to pass: {stderr}"
        );
    }
    assert_eq!(env.proxy.stats().writes(), 0, "nothing written anywhere");
    assert!(!env.set_in(&other).await && !env.set_in(&env.ns).await);

    // The set's own namespace is used over the context's, and -n naming it is fine.
    let out = env.run_repo(&["apply", "-n", &env.ns]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut cmd = env.cmd(&["apply", "--repo"]);
    cmd.arg(env.repo.path());
    // A kubeconfig whose context is in another namespace.
    let elsewhere = tempfile::tempdir().expect("dir");
    let kubeconfig = elsewhere.path().join("config");
    env.proxy.write_kubeconfig(&kubeconfig, &other);
    cmd.env("KUBECONFIG", &kubeconfig);
    let out = Env::output(cmd).await;
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("namespace {} (from plugins.yaml)", env.ns)),
        "{stderr}"
    );
    assert!(!env.set_in(&other).await, "not the context's namespace");
}

#[tokio::test]
async fn gc_and_the_controller_take_their_namespace_like_kubectl() {
    let env = Env::new("ns-gc", 1).await;
    let other = env.c.namespace("ns-gc-other").await;
    let out = Env::output(env.cmd(&["gc", "--dry-run"])).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains(&format!(
            "namespace {} (from the kubeconfig context {CONTEXT})",
            env.ns
        )),
        "{}",
        text(&out.stderr)
    );
    let out = Env::output(env.cmd(&["gc", "--dry-run", "-n", &other])).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains(&format!("namespace {other} (from --namespace)")),
        "{}",
        text(&out.stderr)
    );

    // The controller: the context's namespace, and loopback outside a pod.
    let line = controller_start_line(&env, &[], false).await;
    assert!(
        line.contains(&format!("namespace={}", env.ns)) && line.contains("listen=127.0.0.1:8080"),
        "{line}"
    );
    // In a pod (the kubelet's variables), every interface: build Jobs must reach it.
    let line = controller_start_line(&env, &["-n", &other], true).await;
    assert!(
        line.contains(&format!("namespace={other}")) && line.contains("listen=0.0.0.0:8080"),
        "{line}"
    );
}

/// The `controller running` line of `plugsync controller <args>` (stopped once it is logged).
async fn controller_start_line(env: &Env, args: &[&str], in_pod: bool) -> String {
    let mut cmd = env.cmd(&["controller"]);
    cmd.args(args)
        .env("PLUGSYNC_CACHE_DIR", env.cache.path())
        .env_remove("PLUGSYNC_LISTEN")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if in_pod {
        // Still the kubeconfig for the connection; the variables say "in a pod".
        cmd.env("KUBERNETES_SERVICE_HOST", "10.96.0.1")
            .env("KUBERNETES_SERVICE_PORT", "443");
    }
    let mut child = cmd.spawn().expect("plugsync controller");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let found = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.expect("read") {
            if line.contains("controller running") {
                return line;
            }
        }
        panic!("plugsync controller ended without starting");
    })
    .await
    .expect("the controller starts");
    let _ = child.kill().await;
    found
}

/// `plugsync run` in folder mode follows a plugins.yaml without a namespace into the one it
/// manages (the context's here), as apply does.
#[tokio::test]
async fn run_gives_a_set_without_a_namespace_its_own() {
    let env = Env::new("ns-run", 1).await;
    env.forget_namespace();
    let port = cluster::free_port();
    let mut cmd = env.cmd(&["run"]);
    cmd.arg("--repo")
        .arg(env.repo.path())
        .args([
            "--leader-election=false",
            "--interval",
            "1s",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().expect("plugsync run");
    // The PluginSet is applied before its Plugins, so wait for both rather than the first.
    cluster::eventually(
        Duration::from_secs(60),
        "the set and its Plugin applied",
        || async {
            (env.set_in(&env.ns).await && env.plugins_in(&env.ns).await.len() == 1).then_some(())
        },
    )
    .await;
    let _ = child.kill().await;
    assert_eq!(env.plugins_in(&env.ns).await.len(), 1);
}
