//! plugsync's resources as a kubectl user sees them on a real API server: the shipped CRDs
//! install without a warning, kubectl discovers and explains them, prints their columns,
//! enforces their schema, and watches what plugsync applies. kubectl is the independent
//! client here; the server is the real kube-apiserver of `tests/cluster/up`.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[path = "common/cluster.rs"]
mod cluster;
#[path = "common/fault_proxy.rs"]
mod fault_proxy;
#[path = "common/fs.rs"]
mod fs;

use cluster::{cluster, TestCluster};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Applies `deploy/crds/` with kubectl, server-side, and waits until both are Established;
/// returns kubectl's stderr.
fn install_shipped_crds(c: &TestCluster) -> String {
    let out = c
        .kubectl()
        .args(["apply", "--server-side", "-f"])
        .arg(root().join("deploy/crds"))
        .output()
        .expect("kubectl");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{stderr}");
    c.kubectl_ok(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/plugins.plugsync.dev",
        "crd/pluginsets.plugsync.dev",
    ]);
    stderr
}

/// Runs kubectl with `input` on stdin; returns (success, stdout, stderr).
async fn kubectl_stdin(c: &TestCluster, args: &[&str], input: &str) -> (bool, String, String) {
    let mut child = tokio::process::Command::new("kubectl")
        .args(args)
        .env("KUBECONFIG", c.kubeconfig())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(input.as_bytes()).await.expect("write");
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("kubectl finishes")
        .expect("kubectl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn words(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

fn plugin_yaml(namespace: &str, attempt: &str) -> String {
    format!(
        "apiVersion: plugsync.dev/v1alpha1
kind: Plugin
metadata: {{name: hello, namespace: {namespace}}}
spec:
  pluginSet: team-a
  name: langgenius/hello
  version: 0.0.1
  uniqueIdentifier: 'langgenius/hello:0.0.1@abc'
  pluginId: 0123456789abcdef0123456789abcdef
  attempt: {attempt}
  package: {{source: 'file:hello.difypkg', sha256: aa, checksum: bb}}
  runner: {{language: python, version: '3.12', entrypoint: main}}
  build: {{contextSha256: cc, inputsHash: dd, image: 'registry.example.com/hello:0.0.1'}}
"
    )
}

#[tokio::test]
async fn the_shipped_crds_install_without_a_warning_and_kubectl_discovers_and_explains_them() {
    let c = cluster().await;
    let stderr = install_shipped_crds(c);
    assert!(
        !stderr.contains("Warning"),
        "the real API server warned about the shipped CRDs:\n{stderr}"
    );
    let resources = c.kubectl_ok(&["api-resources", "--api-group=plugsync.dev", "--no-headers"]);
    let mut rows: Vec<Vec<&str>> = resources.lines().map(words).collect();
    rows.sort();
    assert_eq!(
        rows,
        [
            vec!["plugins", "plg", "plugsync.dev/v1alpha1", "true", "Plugin"],
            vec![
                "pluginsets",
                "pset",
                "plugsync.dev/v1alpha1",
                "true",
                "PluginSet"
            ],
        ],
        "{resources}"
    );
    // kubectl explain reads the OpenAPI the server publishes from the CRD's schema: the doc
    // comments of src/crd.rs reach users.
    let explain = c.kubectl_ok(&["explain", "plugins.spec.attempt"]);
    assert!(explain.contains("integer"), "{explain}");
    assert!(
        explain.contains("1 for the first build attempt"),
        "{explain}"
    );
}

#[tokio::test]
async fn kubectl_get_plugins_prints_the_printer_columns() {
    let c = cluster().await;
    install_shipped_crds(c);
    let ns = c.namespace("kubectl-columns").await;
    let (ok, _, err) = kubectl_stdin(
        c,
        &["apply", "--server-side", "-f", "-"],
        &plugin_yaml(&ns, "1"),
    )
    .await;
    assert!(ok, "{err}");
    let status = r#"{"status":{"phase":"Running","endpoint":"http://svc-0123.dify:8080","conditions":[{"type":"Reconciling","status":"False","reason":"Done","message":"","lastTransitionTime":"2025-01-01T00:00:00Z"},{"type":"Ready","status":"True","reason":"Available","message":"ok","lastTransitionTime":"2025-01-01T00:00:00Z"}]}}"#;
    c.kubectl_ok(&[
        "patch",
        "plugin",
        "hello",
        "-n",
        &ns,
        "--subresource=status",
        "--type=merge",
        "-p",
        status,
    ]);
    // Beside the id, which plugin (author/name), which version and which build attempt.
    let table = c.kubectl_ok(&["get", "plugins", "-n", &ns]);
    let mut lines = table.lines();
    let header = words(lines.next().expect("header"));
    assert_eq!(
        header,
        ["NAME", "PLUGIN", "VERSION", "ATTEMPT", "STATUS", "READY", "AGE"],
        "{table}"
    );
    let row = words(lines.next().expect("row"));
    assert_eq!(
        row[..6],
        ["hello", "langgenius/hello", "0.0.1", "1", "Running", "True"],
        "{table}"
    );
    // The endpoint, long, with -o wide (as kubectl shows a pod's IP).
    let wide = c.kubectl_ok(&["get", "plugins", "-n", &ns, "-o", "wide"]);
    let mut lines = wide.lines();
    let header = words(lines.next().expect("header"));
    assert_eq!(
        header,
        ["NAME", "PLUGIN", "VERSION", "ATTEMPT", "STATUS", "READY", "ENDPOINT", "AGE"],
        "{wide}"
    );
    let row = words(lines.next().expect("row"));
    assert_eq!(row[6], "http://svc-0123.dify:8080", "{wide}");
    // The short name and the category resolve too.
    assert!(c.kubectl_ok(&["get", "plg", "-n", &ns]).contains("hello"));
    assert!(c
        .kubectl_ok(&["get", "plugsync", "-n", &ns])
        .contains("plugin.plugsync.dev/hello"));
}

#[tokio::test]
async fn the_server_refuses_a_plugin_that_breaks_the_crd_schema() {
    let c = cluster().await;
    install_shipped_crds(c);
    let ns = c.namespace("kubectl-schema").await;
    let (ok, _, err) = kubectl_stdin(
        c,
        &["apply", "--server-side", "-f", "-"],
        &plugin_yaml(&ns, "-1"),
    )
    .await;
    assert!(!ok, "a negative attempt is refused");
    assert!(err.contains("spec.attempt"), "{err}");
    assert!(err.contains("greater than or equal to 0"), "{err}");
    let (ok, _, err) = kubectl_stdin(
        c,
        &["apply", "--server-side", "-f", "-"],
        &plugin_yaml(&ns, "1").replace("  pluginId: 0123456789abcdef0123456789abcdef\n", ""),
    )
    .await;
    assert!(!ok, "a missing required field is refused");
    assert!(
        err.contains("spec.pluginId") && err.contains("Required"),
        "{err}"
    );
    assert_eq!(
        c.kubectl_ok(&["get", "plugins", "-n", &ns, "-o", "name"]),
        "",
        "nothing was stored"
    );
}

#[tokio::test]
async fn kubectl_watches_what_plugsync_applies() {
    let c = cluster().await;
    let ns = c.namespace("kubectl-watch").await;
    // The bundled example, moved into this test's namespace.
    let repo = tempfile::tempdir().expect("repo");
    fs::copy_dir(&root().join("examples"), repo.path());
    let yaml_path = repo.path().join("plugins.yaml");
    let yaml = std::fs::read_to_string(&yaml_path).expect("read");
    std::fs::write(
        &yaml_path,
        yaml.replace("  namespace: dify\n", &format!("  namespace: {ns}\n")),
    )
    .expect("write");
    let kubeconfig = repo.path().join("kubeconfig");
    c.write_kubeconfig(&kubeconfig, &ns);
    install_shipped_crds(c);

    // kubectl watches through the fault proxy (no faults), which tells when its watch is open.
    let proxy = fault_proxy::FaultProxy::start(&c.kubeconfig()).await;
    let proxy_kubeconfig = repo.path().join("proxy-kubeconfig");
    proxy.write_kubeconfig(&proxy_kubeconfig, &ns);
    let mut watch = tokio::process::Command::new("kubectl")
        .args([
            "get",
            "plugins",
            "-w",
            "--output-watch-events",
            "--no-headers",
        ])
        .env("KUBECONFIG", &proxy_kubeconfig)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("kubectl watch");
    let mut lines = BufReader::new(watch.stdout.take().expect("stdout")).lines();
    cluster::eventually(
        Duration::from_secs(30),
        "kubectl to open its watch",
        || async { (proxy.stats().real.watch > 0).then_some(()) },
    )
    .await;

    let cache = tempfile::tempdir().expect("cache");
    let out = tokio::process::Command::new(assert_cmd::cargo::cargo_bin("plugsync"))
        .args(["apply", "--repo"])
        .arg(repo.path())
        .env("KUBECONFIG", &kubeconfig)
        .env("PLUGSYNC_CACHE_DIR", cache.path())
        .output()
        .await
        .expect("plugsync apply");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let applied: Vec<String> = c
        .kubectl_ok(&[
            "get",
            "plugins",
            "-n",
            &ns,
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ])
        .split_whitespace()
        .map(str::to_string)
        .collect();
    assert_eq!(applied.len(), 2, "the example declares two plugins");

    let mut added = Vec::new();
    while added.len() < applied.len() {
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("watch output in time")
            .expect("read")
            .expect("kubectl still watching");
        let w = words(&line);
        if w.first() == Some(&"ADDED") {
            added.push(w[1].to_string());
        }
    }
    added.sort();
    let mut applied = applied;
    applied.sort();
    assert_eq!(added, applied);
}
