//! The test control plane itself (`tests/cluster/up`): the real components answer, and the
//! node side behaves as kubelet and Kaniko would, so the tests built on it can trust it.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::wait::conditions;
use serde_json::json;

#[path = "common/cluster.rs"]
mod cluster;

use cluster::{cluster, labels, wait_for};

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn the_api_server_reports_the_pinned_kubernetes_version_and_a_ready_node() {
    let c = cluster().await;
    let client = c.client().await;
    let version = client.apiserver_version().await.expect("version");
    let pinned = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cluster/tools/go.mod"),
    )
    .expect("tools go.mod");
    let pinned = pinned
        .lines()
        .find_map(|l| l.trim().strip_prefix("k8s.io/kubernetes "))
        .expect("k8s.io/kubernetes pinned")
        .trim()
        .to_string();
    assert_eq!(version.git_version, pinned, "{version:?}");
    assert_eq!(version.git_tree_state, "clean");

    let nodes: Api<Node> = Api::all(client);
    let node = nodes.get("kwok-node-0").await.expect("node");
    let ready = node
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    assert!(ready, "the fake node is Ready");
}

fn deployment(name: &str, pod_labels: serde_json::Value) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": pod_labels},
                "spec": {"containers": [{"name": "main", "image": "registry.invalid/app@sha256:0000000000000000000000000000000000000000000000000000000000000000"}]}
            }
        }
    }))
    .expect("deployment")
}

#[tokio::test]
async fn pods_of_a_deployment_become_running_and_ready() {
    let c = cluster().await;
    let ns = c.namespace("deployment-ready").await;
    let deployments: Api<Deployment> = Api::namespaced(c.client().await, &ns);
    deployments
        .create(
            &PostParams::default(),
            &deployment("web", json!({"app": "web"})),
        )
        .await
        .expect("create");
    wait_for(
        &deployments,
        "web",
        WAIT,
        "2 available replicas",
        |d: Option<&Deployment>| {
            d.and_then(|d| d.status.as_ref())
                .and_then(|s| s.available_replicas)
                == Some(2)
        },
    )
    .await;
    // An independent client sees the same.
    let out = c.kubectl_ok(&[
        "-n",
        &ns,
        "get",
        "pods",
        "-l",
        "app=web",
        "-o",
        "jsonpath={.items[*].status.phase}",
    ]);
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        ["Running", "Running"]
    );
}

#[tokio::test]
async fn a_pod_labelled_unready_runs_but_never_becomes_ready() {
    let c = cluster().await;
    let ns = c.namespace("deployment-unready").await;
    let client = c.client().await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    deployments
        .create(
            &PostParams::default(),
            &deployment("crashy", json!({"app": "crashy", labels::UNREADY: "true"})),
        )
        .await
        .expect("create");
    let pods: Api<Pod> = Api::namespaced(client, &ns);
    let running = cluster::eventually(WAIT, "two running pods", || async {
        let list = pods
            .list(&ListParams::default().labels("app=crashy"))
            .await
            .ok()?;
        let running: Vec<Pod> = list
            .items
            .into_iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .collect();
        (running.len() == 2).then_some(running)
    })
    .await;
    for pod in running {
        let status = pod.status.expect("status");
        let ready = status
            .conditions
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.type_ == "Ready")
            .expect("Ready condition");
        assert_eq!(ready.status, "False");
        let waiting = status.container_statuses.expect("containers")[0]
            .state
            .clone()
            .and_then(|s| s.waiting)
            .expect("waiting");
        assert_eq!(waiting.reason.as_deref(), Some("CrashLoopBackOff"));
    }
    let d = deployments.get("crashy").await.expect("deployment");
    assert_eq!(d.status.and_then(|s| s.available_replicas), None);
}

fn build_job(name: &str, destination: &str, pod_labels: serde_json::Value) -> Job {
    serde_json::from_value(json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": pod_labels},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{
                        "name": "build",
                        "image": "gcr.io/kaniko-project/executor:v1.23.2",
                        "args": [
                            "--context=dir:///workspace",
                            format!("--destination={destination}"),
                            "--digest-file=/dev/termination-log",
                            "--insecure"
                        ],
                        "terminationMessagePolicy": "File"
                    }]
                }
            }
        }
    }))
    .expect("job")
}

/// The build container's termination message, once the Job's pod has ended.
async fn build_pod_end(client: kube::Client, ns: &str, job: &str) -> (String, i32, String) {
    let pods: Api<Pod> = Api::namespaced(client, ns);
    cluster::eventually(WAIT, "the build pod to end", || async {
        let list = pods
            .list(&ListParams::default().labels(&format!("batch.kubernetes.io/job-name={job}")))
            .await
            .ok()?;
        list.items.into_iter().find_map(|pod| {
            let status = pod.status?;
            let phase = status.phase?;
            if phase != "Succeeded" && phase != "Failed" {
                return None;
            }
            let terminated = status.container_statuses?[0].state.clone()?.terminated?;
            Some((
                phase,
                terminated.exit_code,
                terminated.message.unwrap_or_default(),
            ))
        })
    })
    .await
}

/// The digest the registry serves for `repository:tag`, from its manifest HEAD.
async fn registry_digest(registry: &str, repository: &str, tag: &str) -> Option<String> {
    let response = reqwest::Client::new()
        .head(format!("http://{registry}/v2/{repository}/manifests/{tag}"))
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

#[tokio::test]
async fn a_build_pod_pushes_to_its_destination_and_reports_the_real_digest() {
    let c = cluster().await;
    let ns = c.namespace("build-push").await;
    let client = c.client().await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let repository = format!("{ns}/hello");
    let destination = format!("{}/{repository}:0.1.0", c.registry());
    jobs.create(
        &PostParams::default(),
        &build_job("hello", &destination, json!({})),
    )
    .await
    .expect("create job");
    let (phase, exit, message) = build_pod_end(client.clone(), &ns, "hello").await;
    assert_eq!((phase.as_str(), exit), ("Succeeded", 0), "{message}");
    let pushed = registry_digest(c.registry(), &repository, "0.1.0")
        .await
        .expect("the image exists in the registry");
    assert_eq!(
        message, pushed,
        "the termination message is the pushed digest"
    );
    wait_for(
        &jobs,
        "hello",
        WAIT,
        "the Job to complete",
        conditions::is_job_completed(),
    )
    .await;
}

#[tokio::test]
async fn a_build_pod_labelled_to_fail_fails_its_first_attempts_only() {
    let c = cluster().await;
    let ns = c.namespace("build-fail").await;
    let client = c.client().await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let fail_once = json!({labels::FAIL_BUILD_ATTEMPTS: "1"});
    let first = format!("{}/{ns}/flaky:1", c.registry());
    jobs.create(
        &PostParams::default(),
        &build_job("flaky", &first, fail_once.clone()),
    )
    .await
    .expect("create");
    let (phase, exit, message) = build_pod_end(client.clone(), &ns, "flaky").await;
    assert_eq!((phase.as_str(), exit), ("Failed", 1));
    assert!(message.contains("failed on purpose"), "{message}");
    assert!(registry_digest(c.registry(), &format!("{ns}/flaky"), "1")
        .await
        .is_none());
    let failed = wait_for(
        &jobs,
        "flaky",
        WAIT,
        "the Job to fail",
        |j: Option<&Job>| {
            j.and_then(|j| j.status.as_ref())
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Failed" && c.status == "True"))
        },
    )
    .await;
    assert_eq!(failed.status.and_then(|s| s.failed), Some(1));

    // Attempt 2 (plugsync's `<id>--2`) of the same build succeeds.
    let second = format!("{}/{ns}/flaky:2", c.registry());
    jobs.create(
        &PostParams::default(),
        &build_job("flaky--2", &second, fail_once),
    )
    .await
    .expect("create");
    let (phase, _, message) = build_pod_end(client, &ns, "flaky--2").await;
    assert_eq!(phase, "Succeeded");
    assert_eq!(
        Some(message),
        registry_digest(c.registry(), &format!("{ns}/flaky"), "2").await
    );
}

#[tokio::test]
async fn a_build_whose_context_does_not_match_its_digest_fails_like_sha256sum() {
    let c = cluster().await;
    let ns = c.namespace("build-context").await;
    let client = c.client().await;
    // A real HTTP server handing out a context whose digest is not the one the Job names.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let app = axum::Router::new().route(
            "/contexts/{sha}",
            axum::routing::get(|| async { "not the context" }),
        );
        let _ = axum::serve(listener, app).await;
    });
    let mut job = serde_json::to_value(build_job(
        "ctx",
        &format!("{}/{ns}/ctx:1", c.registry()),
        json!({}),
    ))
    .expect("json");
    job["spec"]["template"]["spec"]["initContainers"] = json!([{
        "name": "fetch-context",
        "image": "busybox:1.36",
        "env": [
            {"name": "CONTEXT_URL", "value": format!("http://{addr}/contexts/abc")},
            {"name": "CONTEXT_SHA256", "value": "0".repeat(64)}
        ]
    }]);
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    jobs.create(
        &PostParams::default(),
        &serde_json::from_value(job).expect("job"),
    )
    .await
    .expect("create");
    let (phase, exit, message) = build_pod_end(client, &ns, "ctx").await;
    assert_eq!((phase.as_str(), exit), ("Failed", 1));
    assert!(
        message.contains("sha256sum") && message.contains("FAILED"),
        "{message}"
    );
}

#[test]
fn down_stops_exactly_the_processes_up_started() {
    let dir = tempfile::tempdir().expect("dir");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cluster");
    // A process that is not the cluster's, started before it: down must leave it alone.
    let mut bystander = std::process::Command::new("sleep")
        .arg("300")
        .spawn()
        .expect("sleep");
    let up = std::process::Command::new(root.join("up"))
        .arg(dir.path())
        .output()
        .expect("up runs");
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    let pids = std::fs::read_to_string(dir.path().join("pids")).expect("pids");
    let listed: Vec<(u32, String)> = pids
        .lines()
        .map(|l| {
            let mut f = l.split_whitespace();
            let pid = f.next().expect("pid").parse().expect("number");
            let name = f.nth(1).expect("name").to_string();
            (pid, name)
        })
        .collect();
    let names: Vec<&str> = listed.iter().map(|(_, n)| n.as_str()).collect();
    for component in [
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kwok",
        "docker-registry",
        "kaniko",
    ] {
        assert!(names.contains(&component), "{component} in {names:?}");
    }
    let alive = |pid: u32| {
        std::path::Path::new(&format!("/proc/{pid}")).exists()
            && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap_or_default()
                .contains(") Z ")
    };
    assert!(listed.iter().all(|(pid, _)| alive(*pid)));
    let kubeconfig = dir.path().join("kubeconfig");
    let get = std::process::Command::new("kubectl")
        .args(["get", "serviceaccount", "default", "-o", "name"])
        .env("KUBECONFIG", &kubeconfig)
        .output()
        .expect("kubectl");
    assert_eq!(
        String::from_utf8_lossy(&get.stdout).trim(),
        "serviceaccount/default"
    );

    let down = std::process::Command::new(root.join("down"))
        .arg(dir.path())
        .output()
        .expect("down runs");
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    for (pid, name) in &listed {
        assert!(!alive(*pid), "{name} (pid {pid}) still runs after down");
    }
    assert!(!dir.path().join("pids").exists());
    assert!(
        bystander.try_wait().expect("wait").is_none(),
        "down left other processes alone"
    );
    bystander.kill().expect("kill");
    let _ = bystander.wait();
    // down of a cluster that is down is a no-op.
    let again = std::process::Command::new(root.join("down"))
        .arg(dir.path())
        .output()
        .expect("down");
    assert!(again.status.success());
}

#[path = "common/fault_proxy.rs"]
mod fault_proxy;

#[tokio::test]
async fn the_fault_proxy_counts_verbs_and_fails_only_what_it_is_told_to() {
    use fault_proxy::{FaultProxy, Match, Verb};
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::{Patch, PatchParams};
    let c = cluster().await;
    let ns = c.namespace("fault-proxy").await;
    let proxy = FaultProxy::start(&c.kubeconfig()).await;
    let config_maps: Api<ConfigMap> = Api::namespaced(proxy.client(&ns), &ns);
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"a": "1"}});
    proxy
        .faults()
        .fail_next_matching(1, 409, Match::verb(Verb::Apply));
    let err = config_maps
        .patch("x", &PatchParams::apply("test"), &Patch::Apply(&cm))
        .await
        .expect_err("injected conflict");
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 409),
        "{err}"
    );
    assert_eq!(
        c.kubectl_ok(&[
            "-n",
            &ns,
            "get",
            "configmaps",
            "-o",
            "name",
            "--field-selector",
            "metadata.name=x"
        ]),
        "",
        "the failed request never reached the server"
    );
    config_maps
        .patch("x", &PatchParams::apply("test"), &Patch::Apply(&cm))
        .await
        .expect("the next apply reaches the real server");
    config_maps.get("x").await.expect("get");
    config_maps.list(&Default::default()).await.expect("list");
    let stats = proxy.stats();
    assert_eq!(
        (
            stats.real.apply,
            stats.real.get,
            stats.real.list,
            stats.injected_failures
        ),
        (2, 1, 1, 1)
    );
    // A dropped watch ends the stream the client holds.
    let mut events = Box::pin(
        kube::runtime::watcher(config_maps.clone(), Default::default()).map(|e| e.map(|_| ())),
    );
    use futures::StreamExt as _;
    events.next().await.expect("first event").expect("ok");
    let deadline = tokio::time::Instant::now() + WAIT;
    while proxy.stats().real.watch == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the watcher never watched"
        );
        let _ = tokio::time::timeout(Duration::from_millis(100), events.next()).await;
    }
    let watches = proxy.stats().real.watch + proxy.stats().real.list;
    proxy.faults().drop_watches();
    // The watcher re-lists or re-watches: a new request reaches the proxy.
    let deadline = tokio::time::Instant::now() + WAIT;
    while proxy.stats().real.watch + proxy.stats().real.list <= watches {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the watcher never reconnected"
        );
        let _ = tokio::time::timeout(Duration::from_millis(200), events.next()).await;
    }
}
