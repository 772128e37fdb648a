//! The API server double driven by the real `kubectl` (through a written kubeconfig only).
//! Skipped, with a note, when kubectl is not installed. `KUBECTL=/path` picks another binary.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use kube::CustomResourceExt;
use plugsync::crd::Plugin;
use plugsync::testkit::apiserver::ApiServer;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

struct Kubectl {
    bin: PathBuf,
    dir: tempfile::TempDir,
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Kubectl {
    /// None (and a note) when no kubectl is installed.
    fn new(server: &ApiServer) -> Option<Kubectl> {
        let bin =
            PathBuf::from(std::env::var("KUBECTL").unwrap_or_else(|_| "/usr/bin/kubectl".into()));
        if !bin.exists() {
            eprintln!(
                "note: {} not found; skipping the kubectl test",
                bin.display()
            );
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        server
            .write_kubeconfig(dir.path().join("kubeconfig"), "dify")
            .unwrap();
        Some(Kubectl { bin, dir })
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.dir.path())
            .env("KUBECONFIG", self.dir.path().join("kubeconfig"))
            .kill_on_drop(true);
        c
    }

    async fn run_with(&self, args: &[&str], stdin: Option<&str>) -> Out {
        let mut c = self.command(args);
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().expect("kubectl starts");
        let mut input = child.stdin.take().unwrap();
        if let Some(s) = stdin {
            input.write_all(s.as_bytes()).await.unwrap();
        }
        drop(input);
        let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .expect("kubectl finished in time")
            .unwrap();
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    async fn run(&self, args: &[&str]) -> Out {
        self.run_with(args, None).await
    }

    /// Runs and asserts success.
    async fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args).await;
        assert_eq!(
            o.code, 0,
            "kubectl {args:?} failed: {}{}",
            o.stdout, o.stderr
        );
        o.stdout
    }

    async fn apply(&self, extra: &[&str], yaml: &str) -> Out {
        let mut args = vec!["apply", "--server-side", "-f", "-"];
        args.extend_from_slice(extra);
        self.run_with(&args, Some(yaml)).await
    }

    async fn get_json(&self, args: &[&str]) -> Value {
        let mut a = vec!["get"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["-o", "json", "--show-managed-fields"]);
        serde_json::from_str(&self.ok(&a).await).unwrap()
    }
}

fn web_yaml(replicas: u32) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: dify
  labels: {{app: web}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers:
      - name: web
        image: nginx:1.25
        ports: [{{containerPort: 80}}]
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: dify
  labels: {{app: web}}
spec:
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 80}}]
"
    )
}

fn plugin_crd_yaml() -> String {
    serde_yaml::to_string(&Plugin::crd()).unwrap()
}

const PLUGIN_YAML: &str = "apiVersion: plugsync.dev/v1alpha1
kind: Plugin
metadata: {name: hello, namespace: dify}
spec:
  pluginSet: team-a
  name: langgenius/hello
  version: 0.0.1
  uniqueIdentifier: 'langgenius/hello:0.0.1@abc'
  pluginId: 0123456789abcdef0123456789abcdef
  attempt: 1
  package: {source: 'file:hello.difypkg', sha256: aa, checksum: bb}
  runner: {language: python, version: '3.12', entrypoint: main}
  build: {contextSha256: cc, inputsHash: dd, image: 'registry.example.com/hello:0.0.1'}
";

fn words(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_version_discovery_and_crds() {
    let server = ApiServer::start().await.unwrap();
    let Some(k) = Kubectl::new(&server) else {
        return;
    };
    let v = k.ok(&["version"]).await;
    assert!(v.contains("Server Version: v1.33.0"), "{v}");

    let res = k.ok(&["api-resources"]).await;
    let deploy = res
        .lines()
        .find(|l| l.starts_with("deployments "))
        .expect("deployments listed");
    assert_eq!(
        words(deploy),
        ["deployments", "deploy", "apps/v1", "true", "Deployment"]
    );
    assert!(!res.contains("plugins"));

    let o = k
        .run_with(&["create", "-f", "-"], Some(&plugin_crd_yaml()))
        .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    k.ok(&[
        "wait",
        "--for=condition=Established",
        "crd/plugins.plugsync.dev",
        "--timeout=10s",
    ])
    .await;
    let res = k.ok(&["api-resources"]).await;
    let line = res
        .lines()
        .find(|l| l.starts_with("plugins "))
        .expect("plugins listed");
    assert_eq!(
        words(line),
        ["plugins", "plg", "plugsync.dev/v1alpha1", "true", "Plugin"]
    );
    let res = k
        .ok(&["api-resources", "--api-group=plugsync.dev", "-o", "name"])
        .await;
    assert_eq!(res.trim(), "plugins.plugsync.dev");

    // Typed kubectl commands send protobuf bodies; the double decodes those kinds.
    assert!(k
        .ok(&["create", "namespace", "dify"])
        .await
        .contains("namespace/dify created"));
    k.ok(&["create", "configmap", "settings", "--from-literal=a=b"])
        .await;
    k.ok(&[
        "create",
        "secret",
        "docker-registry",
        "image-repo-secret",
        "--docker-server=r.example.com",
        "--docker-username=u",
        "--docker-password=p",
    ])
    .await;
    k.ok(&["create", "serviceaccount", "builder"]).await;
    let cm = k.get_json(&["configmap", "settings"]).await;
    assert_eq!(cm["data"], json!({"a": "b"}));
    let secret = k.get_json(&["secret", "image-repo-secret"]).await;
    assert_eq!(secret["type"], "kubernetes.io/dockerconfigjson");
    assert_eq!(
        secret["metadata"]["managedFields"][0]["manager"],
        "kubectl-create"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_server_side_apply() {
    let server = ApiServer::start().await.unwrap();
    let Some(k) = Kubectl::new(&server) else {
        return;
    };
    k.ok(&["create", "namespace", "dify"]).await;

    let o = k.apply(&[], &web_yaml(1)).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(
        o.stdout.contains("deployment.apps/web serverside-applied"),
        "{}",
        o.stdout
    );
    assert!(
        o.stdout.contains("service/web serverside-applied"),
        "{}",
        o.stdout
    );

    let d = k.get_json(&["deploy", "web", "-n", "dify"]).await;
    let meta = &d["metadata"];
    assert_eq!(meta["uid"].as_str().map(str::len), Some(36));
    assert!(meta["resourceVersion"]
        .as_str()
        .is_some_and(|rv| rv.parse::<u64>().is_ok()));
    assert_eq!(meta["generation"], 1);
    assert!(meta["creationTimestamp"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));
    let mf = &meta["managedFields"][0];
    assert_eq!(
        (mf["manager"].as_str(), mf["operation"].as_str()),
        (Some("kubectl"), Some("Apply"))
    );
    assert_eq!(d["spec"]["replicas"], 1);
    let svc = k.get_json(&["svc", "web"]).await;
    assert!(svc["spec"]["clusterIP"]
        .as_str()
        .is_some_and(|ip| ip.starts_with("10.96.")));
    let rv = meta["resourceVersion"].clone();

    // Identical re-apply: nothing changes.
    let mutations = server.stats().mutations;
    let o = k.apply(&[], &web_yaml(1)).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let d = k.get_json(&["deploy", "web"]).await;
    assert_eq!(d["metadata"]["resourceVersion"], rv);
    assert_eq!(server.stats().mutations, mutations);

    // A change bumps generation.
    assert_eq!(k.apply(&[], &web_yaml(2)).await.code, 0);
    let d = k.get_json(&["deploy", "web"]).await;
    assert_eq!(
        (
            d["metadata"]["generation"].as_i64(),
            d["spec"]["replicas"].as_i64()
        ),
        (Some(2), Some(2))
    );

    // Another manager conflicts on replicas unless it forces.
    let o = k.apply(&["--field-manager=other"], &web_yaml(3)).await;
    assert_ne!(o.code, 0);
    assert!(o.stderr.contains("conflict"), "{}", o.stderr);
    assert!(o.stderr.contains(".spec.replicas"), "{}", o.stderr);
    let o = k
        .apply(
            &["--field-manager=other", "--force-conflicts"],
            &web_yaml(3),
        )
        .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let d = k.get_json(&["deploy", "web"]).await;
    assert_eq!(d["spec"]["replicas"], 3);
    let managers: Vec<&str> = d["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["manager"].as_str())
        .collect();
    assert!(managers.contains(&"other"), "{managers:?}");

    // Server dry-run persists nothing.
    let before = server.stats();
    let rv = d["metadata"]["resourceVersion"].clone();
    let o = k
        .apply(&["--field-manager=other", "--dry-run=server"], &web_yaml(7))
        .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.contains("(server dry run)"), "{}", o.stdout);
    let d = k.get_json(&["deploy", "web"]).await;
    assert_eq!(
        (
            d["spec"]["replicas"].as_i64(),
            &d["metadata"]["resourceVersion"]
        ),
        (Some(3), &rv)
    );
    let after = server.stats();
    assert_eq!(after.dry_run.apply - before.dry_run.apply, 2);
    assert_eq!(after.mutations, before.mutations);

    // Label selectors.
    let out = k
        .ok(&["get", "deploy", "-l", "app=web", "-o", "name"])
        .await;
    assert_eq!(out.trim(), "deployment.apps/web");
    let o = k.run(&["get", "deploy", "-l", "app=nope"]).await;
    assert_eq!(o.code, 0);
    assert!(
        o.stderr.contains("No resources found in dify namespace."),
        "{}",
        o.stderr
    );
    let table = k.ok(&["get", "deploy", "web"]).await;
    assert_eq!(
        words(table.lines().next().unwrap()),
        ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    );
    assert_eq!(words(table.lines().nth(1).unwrap())[..2], ["web", "0/3"]);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_get_plugins_prints_printer_columns() {
    let server = ApiServer::start().await.unwrap();
    let Some(k) = Kubectl::new(&server) else {
        return;
    };
    k.ok(&["create", "namespace", "dify"]).await;
    assert_eq!(k.apply(&[], &plugin_crd_yaml()).await.code, 0);
    let o = k.apply(&[], PLUGIN_YAML).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let status = r#"{"status":{"phase":"Running","endpoint":"http://svc-0123.dify:8080","conditions":[{"type":"Reconciling","status":"False","reason":"Done","message":"","lastTransitionTime":"2025-01-01T00:00:00Z"},{"type":"Ready","status":"True","reason":"Available","message":"ok","lastTransitionTime":"2025-01-01T00:00:00Z"}]}}"#;
    let out = k
        .ok(&[
            "patch",
            "plugin",
            "hello",
            "-n",
            "dify",
            "--subresource=status",
            "--type=merge",
            "-p",
            status,
        ])
        .await;
    assert!(out.contains("plugin.plugsync.dev/hello patched"), "{out}");
    let p = k.get_json(&["plg", "hello"]).await;
    assert_eq!(p["metadata"]["generation"], 1);
    assert_eq!(p["status"]["phase"], "Running");

    let table = k.ok(&["get", "plugins", "-n", "dify"]).await;
    let mut lines = table.lines();
    assert_eq!(
        words(lines.next().unwrap()),
        ["NAME", "STATUS", "ENDPOINT", "READY", "AGE"]
    );
    let row = words(lines.next().unwrap());
    assert_eq!(
        row[..4],
        ["hello", "Running", "http://svc-0123.dify:8080", "True"]
    );
    let age = row[4];
    assert!(
        age.ends_with('s') && age[..age.len() - 1].parse::<u32>().is_ok(),
        "age {age}"
    );
    // The category and short name resolve too.
    assert!(k.ok(&["get", "plugsync"]).await.contains("hello"));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_delete_and_finalizers() {
    let server = ApiServer::start().await.unwrap();
    let Some(k) = Kubectl::new(&server) else {
        return;
    };
    k.ok(&["create", "namespace", "dify"]).await;
    assert_eq!(k.apply(&[], &web_yaml(1)).await.code, 0);
    let out = k.ok(&["delete", "deploy", "web", "-n", "dify"]).await;
    assert!(out.contains("deployment.apps \"web\" deleted"), "{out}");
    let o = k.run(&["get", "deploy", "web", "-n", "dify"]).await;
    assert_eq!(o.code, 1);
    assert!(
        o.stderr.contains("NotFound") && o.stderr.contains("not found"),
        "{}",
        o.stderr
    );

    k.ok(&["create", "configmap", "held", "--from-literal=a=b"])
        .await;
    k.ok(&[
        "patch",
        "configmap",
        "held",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":["example.com/hold"]}}"#,
    ])
    .await;
    k.ok(&["delete", "configmap", "held", "--wait=false"]).await;
    let cm = k.get_json(&["configmap", "held"]).await;
    assert!(cm["metadata"]["deletionTimestamp"].is_string());
    assert_eq!(cm["metadata"]["finalizers"], json!(["example.com/hold"]));
    k.ok(&[
        "patch",
        "configmap",
        "held",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
    ])
    .await;
    let o = k.run(&["get", "configmap", "held"]).await;
    assert_eq!(o.code, 1, "{}", o.stdout);
    assert!(o.stderr.contains("NotFound"), "{}", o.stderr);

    // Deleting the namespace removes what is in it.
    k.ok(&["create", "configmap", "inside", "--from-literal=a=b"])
        .await;
    k.ok(&["delete", "namespace", "dify"]).await;
    let o = k.run(&["get", "namespace", "dify"]).await;
    assert_eq!(o.code, 1, "{}", o.stdout);
    assert!(server
        .store()
        .list("v1", "ConfigMap", Some("dify"))
        .is_empty());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_watch_sees_added_then_modified() {
    let server = ApiServer::start().await.unwrap();
    let Some(k) = Kubectl::new(&server) else {
        return;
    };
    k.ok(&["create", "namespace", "dify"]).await;
    let mut child = k
        .command(&["get", "deploy", "-n", "dify", "-w", "--output-watch-events"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // Wait until the watch is open before changing anything.
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.stats().real.watch == 0 {
        assert!(Instant::now() < deadline, "kubectl never watched");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(k.apply(&[], &web_yaml(1)).await.code, 0);
    assert_eq!(k.apply(&[], &web_yaml(2)).await.code, 0);
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("watch output in time")
            .unwrap()
            .expect("kubectl still running");
        let w = words(&line);
        if w.first() == Some(&"EVENT") {
            continue;
        }
        seen.push((w[0].to_string(), w[1].to_string(), w[2].to_string()));
    }
    child.kill().await.unwrap();
    assert_eq!(
        seen,
        [
            ("ADDED".to_string(), "web".to_string(), "0/1".to_string()),
            ("MODIFIED".to_string(), "web".to_string(), "0/2".to_string())
        ]
    );
    server.shutdown().await;
}
