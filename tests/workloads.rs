//! The workload simulator of the API server double, driven through the real `kube` client:
//! build Jobs get a Pod with the image digest in its termination message and complete or fail,
//! Deployments become available (again, after a new generation) or stay unavailable, watch
//! events fire, a settled cluster stays quiet, and deleting a Job collects its Pod.

use std::future::Future;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Client;
use plugsync::testkit::apiserver::{ApiServer, WorkloadPolicy, WorkloadSimulator};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

const NS: &str = "dify";

/// Polls `f` every 10 ms until it yields a value; panics after 10 s.
async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

struct Env {
    server: ApiServer,
    client: Client,
    sim: WorkloadSimulator,
}

async fn env(policy: WorkloadPolicy) -> Env {
    let server = ApiServer::start().await.unwrap();
    let client = server.client();
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": NS}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    let sim = server.simulate_workloads(policy);
    Env {
        server,
        client,
        sim,
    }
}

impl Env {
    fn jobs(&self) -> Api<Job> {
        Api::namespaced(self.client.clone(), NS)
    }
    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), NS)
    }
    fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), NS)
    }

    async fn create_job(&self, name: &str, inputs: &str) -> Job {
        self.jobs()
            .create(&PostParams::default(), &kaniko_job(name, inputs))
            .await
            .unwrap()
    }

    /// Waits until the Job has a `Complete` or `Failed` condition; returns it.
    async fn finished_job(&self, name: &str) -> Job {
        let jobs = self.jobs();
        eventually(&format!("job {name} to finish"), || {
            let jobs = jobs.clone();
            async move {
                let job = jobs.get(name).await.ok()?;
                let done = conditions(&job).iter().any(|c| {
                    (c["type"] == "Complete" || c["type"] == "Failed") && c["status"] == "True"
                });
                done.then_some(job)
            }
        })
        .await
    }

    async fn pods_of(&self, job: &str) -> Vec<Pod> {
        self.pods()
            .list(&ListParams::default().labels(&format!("batch.kubernetes.io/job-name={job}")))
            .await
            .unwrap()
            .items
    }

    async fn create_deployment(&self, name: &str, replicas: i32, extra_spec: Value) -> Deployment {
        let mut d = deployment(name, replicas);
        json_patch::merge(&mut d, &json!({"spec": extra_spec}));
        self.deployments()
            .create(&PostParams::default(), &serde_json::from_value(d).unwrap())
            .await
            .unwrap()
    }

    /// Waits until `pred` holds for the Deployment; returns it.
    async fn deployment_where(
        &self,
        name: &str,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let api = self.deployments();
        let pred = &pred;
        eventually(&format!("deployment {name}: {what}"), || {
            let api = api.clone();
            async move {
                let d = serde_json::to_value(api.get(name).await.ok()?).unwrap();
                pred(&d).then_some(d)
            }
        })
        .await
    }
}

/// A Job shaped like `templates/job.yaml.j2` renders it.
fn kaniko_job(name: &str, inputs: &str) -> Job {
    let yaml = format!(
        r#"
apiVersion: batch/v1
kind: Job
metadata:
  name: {name}
  namespace: {NS}
  labels: {{"app.kubernetes.io/instance": "{name}", "app.kubernetes.io/managed-by": "plugsync", "app.kubernetes.io/name": "hello-world", "plugsync.dev/plugin-id": "d62e5e95afbb7da9993d56f58e120ce5", "plugsync.dev/pluginset": "team-a"}}
  annotations: {{"plugsync.dev/build-inputs": "{inputs}", "plugsync.dev/unique-identifier": "acme/hello-world:0.1.0@abc"}}
spec:
  backoffLimit: 0
  activeDeadlineSeconds: 1800
  template:
    metadata:
      labels: {{"app.kubernetes.io/instance": "{name}", "app.kubernetes.io/managed-by": "plugsync", "app.kubernetes.io/name": "hello-world", "plugsync.dev/plugin-id": "d62e5e95afbb7da9993d56f58e120ce5", "plugsync.dev/pluginset": "team-a"}}
    spec:
      restartPolicy: Never
      automountServiceAccountToken: false
      initContainers:
        - name: fetch-context
          image: "busybox:1.36"
          command:
            - sh
            - -ec
            - |
              wget -q -O /workspace/context.tar "$CONTEXT_URL"
              echo "$CONTEXT_SHA256  /workspace/context.tar" | sha256sum -c -
              tar -xf /workspace/context.tar -C /workspace
              rm /workspace/context.tar
          env:
            - name: CONTEXT_URL
              value: "http://plugsync.dify.svc:8080/contexts/{inputs}.tar"
            - name: CONTEXT_SHA256
              value: "{inputs}"
          volumeMounts:
            - name: workspace
              mountPath: /workspace
      containers:
        - name: build
          image: "gcr.io/kaniko-project/executor:v1.23.2"
          args: ["--context=dir:///workspace", "--destination=registry.example.com/dify-plugins/hello-world:0.1.0", "--digest-file=/dev/termination-log"]
          terminationMessagePolicy: File
          volumeMounts:
            - name: workspace
              mountPath: /workspace
            - name: registry-credentials
              mountPath: /kaniko/.docker
              readOnly: true
      volumes:
        - name: workspace
          emptyDir: {{}}
        - name: registry-credentials
          secret:
            secretName: "image-repo-secret"
            optional: false
            items:
              - key: .dockerconfigjson
                path: config.json
"#
    );
    serde_yaml::from_str(&yaml).unwrap()
}

fn deployment(name: &str, replicas: i32) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": NS, "labels": {"app.kubernetes.io/instance": name}},
        "spec": {
            "replicas": replicas,
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": {"app.kubernetes.io/instance": name}},
            "template": {
                "metadata": {"labels": {"app.kubernetes.io/instance": name}},
                "spec": {"containers": [{"name": "plugin", "image": format!("registry.example.com/dify-plugins/{name}:0.1.0")}]}
            }
        }
    })
}

fn sha256_digest(s: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(s.as_bytes())))
}

fn conditions(obj: &impl serde::Serialize) -> Vec<Value> {
    serde_json::to_value(obj).unwrap()["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn condition(obj: &Value, ctype: &str) -> Value {
    obj["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == ctype).cloned())
        .unwrap_or(Value::Null)
}

fn available(d: &Value) -> bool {
    condition(d, "Available")["status"] == "True"
        && condition(d, "Progressing")["reason"] == "NewReplicaSetAvailable"
}

/// The terminated state of a named container in a Pod's (init)containerStatuses.
fn terminated(pod: &Value, list: &str, name: &str) -> Value {
    pod["status"][list]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == name))
        .map(|s| s["state"]["terminated"].clone())
        .unwrap_or(Value::Null)
}

#[tokio::test]
async fn job_completes_with_a_pod_carrying_the_digest() {
    let env = env(WorkloadPolicy::default().build_duration(Duration::from_millis(50))).await;
    let created = env.create_job("hello-world-1a2b3c", "inputs-hash-1").await;
    let job = serde_json::to_value(env.finished_job("hello-world-1a2b3c").await).unwrap();
    let status = &job["status"];
    assert_eq!(condition(&job, "Complete")["status"], "True");
    assert_eq!(condition(&job, "Complete")["reason"], "CompletionsReached");
    assert_eq!(condition(&job, "SuccessCriteriaMet")["status"], "True");
    assert!(condition(&job, "Failed").is_null());
    assert_eq!(status["succeeded"], 1);
    assert!(status.get("failed").is_none() && status.get("active").is_none());
    assert_eq!(status["ready"], 0);
    assert_eq!(status["terminating"], 0);
    assert!(status["startTime"].is_string() && status["completionTime"].is_string());

    let pods = env.pods_of("hello-world-1a2b3c").await;
    assert_eq!(pods.len(), 1, "one build pod");
    let pod = serde_json::to_value(&pods[0]).unwrap();
    let name = pod["metadata"]["name"].as_str().unwrap();
    let suffix = name.strip_prefix("hello-world-1a2b3c-").unwrap();
    assert_eq!(suffix.len(), 5, "{name}");
    assert!(suffix
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()));
    let uid = created.metadata.uid.clone().unwrap();
    let labels = &pod["metadata"]["labels"];
    assert_eq!(labels["job-name"], "hello-world-1a2b3c");
    assert_eq!(labels["batch.kubernetes.io/controller-uid"], uid.as_str());
    assert_eq!(labels["controller-uid"], uid.as_str());
    assert_eq!(
        labels["plugsync.dev/pluginset"], "team-a",
        "template labels"
    );
    let owner = &pod["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "Job");
    assert_eq!(owner["uid"], uid.as_str());
    assert_eq!(owner["controller"], true);
    assert_eq!(owner["blockOwnerDeletion"], true);
    assert_eq!(
        pod["spec"]["containers"][0]["name"], "build",
        "template spec"
    );
    assert_eq!(pod["status"]["phase"], "Succeeded");
    let build = terminated(&pod, "containerStatuses", "build");
    assert_eq!(build["exitCode"], 0);
    assert_eq!(build["reason"], "Completed");
    assert_eq!(build["message"], sha256_digest("inputs-hash-1").as_str());
    let init = terminated(&pod, "initContainerStatuses", "fetch-context");
    assert_eq!(init["exitCode"], 0);
    assert_eq!(env.sim.stats().builds_succeeded, 1);
}

#[tokio::test]
async fn failing_build_fails_the_job_with_backoff_limit_exceeded() {
    let env = env(WorkloadPolicy::default()
        .build_duration(Duration::from_millis(20))
        .fail_builds_with(
            "broken",
            "Error",
            "error building image: no space left on device",
        ))
    .await;
    env.create_job("broken-tool-1", "h1").await;
    env.create_job("fine-tool-1", "h2").await;
    let job = serde_json::to_value(env.finished_job("broken-tool-1").await).unwrap();
    let failed = condition(&job, "Failed");
    assert_eq!(failed["status"], "True");
    assert_eq!(failed["reason"], "BackoffLimitExceeded");
    assert_eq!(condition(&job, "FailureTarget")["status"], "True");
    assert!(condition(&job, "Complete").is_null());
    assert_eq!(job["status"]["failed"], 1);
    assert!(job["status"].get("succeeded").is_none());
    assert!(job["status"].get("completionTime").is_none());

    let pods = env.pods_of("broken-tool-1").await;
    assert_eq!(pods.len(), 1);
    let pod = serde_json::to_value(&pods[0]).unwrap();
    assert_eq!(pod["status"]["phase"], "Failed");
    let build = terminated(&pod, "containerStatuses", "build");
    assert_eq!(build["exitCode"], 1);
    assert_eq!(build["reason"], "Error");
    assert_eq!(
        build["message"],
        "error building image: no space left on device"
    );

    let fine = serde_json::to_value(env.finished_job("fine-tool-1").await).unwrap();
    assert_eq!(
        condition(&fine, "Complete")["status"],
        "True",
        "only matching builds fail"
    );
}

#[tokio::test]
async fn first_attempts_fail_and_the_retry_succeeds() {
    let env = env(WorkloadPolicy::default()
        .build_duration(Duration::ZERO)
        .fail_first_attempts(1))
    .await;
    env.create_job("abc", "same-inputs").await;
    let first = serde_json::to_value(env.finished_job("abc").await).unwrap();
    assert_eq!(
        condition(&first, "Failed")["reason"],
        "BackoffLimitExceeded"
    );
    let pod = serde_json::to_value(&env.pods_of("abc").await[0]).unwrap();
    assert_eq!(
        terminated(&pod, "containerStatuses", "build")["exitCode"],
        1
    );

    env.create_job("abc--2", "same-inputs").await;
    let second = serde_json::to_value(env.finished_job("abc--2").await).unwrap();
    assert_eq!(condition(&second, "Complete")["status"], "True");
    let pod = serde_json::to_value(&env.pods_of("abc--2").await[0]).unwrap();
    let build = terminated(&pod, "containerStatuses", "build");
    assert_eq!(build["exitCode"], 0);
    assert_eq!(build["message"], sha256_digest("same-inputs").as_str());
}

#[tokio::test]
async fn a_build_runs_for_its_duration_with_a_running_pod() {
    let env = env(WorkloadPolicy::default().build_duration(Duration::from_millis(700))).await;
    let start = Instant::now();
    env.create_job("slow", "h").await;
    let jobs = env.jobs();
    let running = eventually("the job to be active", || {
        let jobs = jobs.clone();
        async move {
            let job = serde_json::to_value(jobs.get("slow").await.ok()?).unwrap();
            (job["status"]["active"] == 1).then_some(job)
        }
    })
    .await;
    assert!(running["status"]["startTime"].is_string());
    assert!(conditions(&running).is_empty(), "{running}");
    let pods = env.pods_of("slow").await;
    assert_eq!(pods.len(), 1);
    let pod = serde_json::to_value(&pods[0]).unwrap();
    assert_eq!(pod["status"]["phase"], "Running");
    assert!(pod["status"]["containerStatuses"][0]["state"]["running"].is_object());

    env.finished_job("slow").await;
    assert!(
        start.elapsed() >= Duration::from_millis(600),
        "{:?}",
        start.elapsed()
    );
    let pods = env.pods_of("slow").await;
    assert_eq!(pods.len(), 1, "the running pod is the one that finished");
    assert_eq!(
        serde_json::to_value(&pods[0]).unwrap()["status"]["phase"],
        "Succeeded"
    );
}

#[tokio::test]
async fn deployment_becomes_available() {
    let env = env(WorkloadPolicy::default().rollout_duration(Duration::from_millis(100))).await;
    env.create_deployment("plugin-a", 2, json!({})).await;
    let d = env
        .deployment_where("plugin-a", "available", available)
        .await;
    let s = &d["status"];
    assert_eq!(s["observedGeneration"], d["metadata"]["generation"]);
    for field in [
        "replicas",
        "updatedReplicas",
        "readyReplicas",
        "availableReplicas",
    ] {
        assert_eq!(s[field], 2, "{field}: {s}");
    }
    assert!(s.get("unavailableReplicas").is_none());
    let available = condition(&d, "Available");
    assert_eq!(available["reason"], "MinimumReplicasAvailable");
    assert_eq!(condition(&d, "Progressing")["status"], "True");
}

#[tokio::test]
async fn a_new_generation_rolls_out_again() {
    let env = env(WorkloadPolicy::default().rollout_duration(Duration::from_millis(400))).await;
    env.create_deployment("plugin-b", 1, json!({})).await;
    env.deployment_where("plugin-b", "available", available)
        .await;
    let patched = env
        .deployments()
        .patch(
            "plugin-b",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"template": {"spec": {"containers": [
                {"name": "plugin", "image": "registry.example.com/dify-plugins/plugin-b:0.2.0"}
            ]}}}})),
        )
        .await
        .unwrap();
    let generation = patched.metadata.generation.unwrap();
    assert_eq!(generation, 2);
    let rolling = env
        .deployment_where("plugin-b", "rolling out generation 2", |d| {
            d["status"]["observedGeneration"] == 2
                && condition(d, "Progressing")["reason"] == "ReplicaSetUpdated"
        })
        .await;
    assert_eq!(rolling["status"]["updatedReplicas"], 1);
    assert_eq!(
        condition(&rolling, "Available")["status"],
        "True",
        "the old pod keeps serving: {rolling}"
    );
    let d = env
        .deployment_where("plugin-b", "available at generation 2", |d| {
            available(d) && d["status"]["observedGeneration"] == 2
        })
        .await;
    assert_eq!(d["status"]["readyReplicas"], 1);
    assert_eq!(d["status"]["replicas"], 1);
}

#[tokio::test]
async fn unavailable_deployments_stay_unavailable() {
    let env = env(WorkloadPolicy::default()
        .rollout_duration(Duration::from_millis(50))
        .unavailable_deployments_matching("sick"))
    .await;
    env.create_deployment("sick-plugin", 2, json!({"progressDeadlineSeconds": 1}))
        .await;
    env.create_deployment("healthy-plugin", 1, json!({})).await;
    env.deployment_where("healthy-plugin", "available", available)
        .await;
    let d = env
        .deployment_where("sick-plugin", "timed out", |d| {
            condition(d, "Progressing")["reason"] == "ProgressDeadlineExceeded"
        })
        .await;
    let cond = condition(&d, "Available");
    assert_eq!(cond["status"], "False");
    assert_eq!(cond["reason"], "MinimumReplicasUnavailable");
    assert_eq!(condition(&d, "Progressing")["status"], "False");
    let s = &d["status"];
    assert_eq!(s["readyReplicas"].as_i64().unwrap_or(0), 0);
    assert_eq!(s["availableReplicas"].as_i64().unwrap_or(0), 0);
    assert_eq!(s["unavailableReplicas"], 2);
    assert_eq!(s["observedGeneration"], 1);
}

#[tokio::test]
async fn zero_replicas_are_available_at_once() {
    let env = env(WorkloadPolicy::default().rollout_duration(Duration::from_secs(30))).await;
    env.create_deployment("scaled-down", 0, json!({})).await;
    let d = env
        .deployment_where("scaled-down", "available", available)
        .await;
    for field in ["replicas", "readyReplicas", "availableReplicas"] {
        assert_eq!(d["status"][field].as_i64().unwrap_or(0), 0, "{field}");
    }
}

#[tokio::test]
async fn a_watcher_sees_the_job_finish() {
    let env = env(WorkloadPolicy::default().build_duration(Duration::from_millis(500))).await;
    let mut stream = watcher::watcher(env.jobs(), watcher::Config::default())
        .applied_objects()
        .boxed();
    env.create_job("watched", "h").await;
    let mut seen = Vec::new();
    let done = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(job) = stream.try_next().await.unwrap() {
            let finished = conditions(&job)
                .iter()
                .any(|c| c["type"] == "Complete" && c["status"] == "True");
            seen.push(finished);
            if finished {
                return job;
            }
        }
        panic!("watch ended")
    })
    .await
    .expect("the watcher saw the Job complete");
    assert_eq!(done.status.unwrap().succeeded, Some(1));
    assert_eq!(
        seen.first(),
        Some(&false),
        "the watch began before the build finished, so completion came as an event"
    );
}

#[tokio::test]
async fn a_settled_cluster_stays_quiet() {
    let env = env(WorkloadPolicy::default()
        .build_duration(Duration::from_millis(30))
        .rollout_duration(Duration::from_millis(30))
        .fail_builds_matching("bad")
        .unavailable_deployments_matching("down"))
    .await;
    for (name, inputs) in [("good", "1"), ("bad", "2"), ("other", "3")] {
        env.create_job(name, inputs).await;
    }
    env.create_deployment("up", 2, json!({})).await;
    env.create_deployment("down", 1, json!({})).await;
    for name in ["good", "bad", "other"] {
        env.finished_job(name).await;
    }
    env.deployment_where("up", "available", available).await;
    env.deployment_where("down", "unavailable", |d| {
        condition(d, "Available")["status"] == "False"
    })
    .await;
    // Let the last writes' own events come back through the simulator.
    tokio::time::sleep(Duration::from_millis(100)).await;

    let store = env.server.store();
    let rv = store.resource_version();
    let writes = env.sim.stats().status_writes;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(store.resource_version(), rv, "no writes once settled");
    assert_eq!(env.sim.stats().status_writes, writes);

    // Unrelated and metadata-only changes get no status rewrite in response.
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "unrelated"}})).unwrap();
    Api::<ConfigMap>::namespaced(env.client.clone(), NS)
        .create(&PostParams::default(), &cm)
        .await
        .unwrap();
    for (api, name) in [("jobs", "good"), ("deployments", "up")] {
        let patch = Patch::Merge(json!({"metadata": {"labels": {"touched": "yes"}}}));
        if api == "jobs" {
            env.jobs()
                .patch(name, &PatchParams::default(), &patch)
                .await
                .unwrap();
        } else {
            env.deployments()
                .patch(name, &PatchParams::default(), &patch)
                .await
                .unwrap();
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        store.resource_version(),
        rv + 3,
        "only the three client writes"
    );
    assert_eq!(env.sim.stats().status_writes, writes);
}

#[tokio::test]
async fn deleting_the_job_collects_its_pod() {
    let env = env(WorkloadPolicy::default().build_duration(Duration::from_millis(20))).await;
    env.create_job("doomed", "h").await;
    env.finished_job("doomed").await;
    assert_eq!(env.pods_of("doomed").await.len(), 1);
    env.jobs()
        .delete("doomed", &DeleteParams::background())
        .await
        .unwrap();
    let pods = env.pods();
    eventually("the build pod to be collected", || {
        let pods = pods.clone();
        async move {
            let left = pods
                .list(&ListParams::default().labels("job-name=doomed"))
                .await
                .ok()?;
            left.items.is_empty().then_some(())
        }
    })
    .await;
}

#[tokio::test]
async fn objects_created_before_the_start_are_picked_up() {
    let server = ApiServer::start().await.unwrap();
    let client = server.client();
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let mut job = kaniko_job("early", "h");
    job.metadata.namespace = Some("default".into());
    jobs.create(&PostParams::default(), &job).await.unwrap();
    let _sim = server.simulate_workloads(WorkloadPolicy::default());
    eventually("the early job to complete", || {
        let jobs = jobs.clone();
        async move {
            let job = jobs.get("early").await.ok()?;
            (job.status?.succeeded == Some(1)).then_some(())
        }
    })
    .await;
}

#[tokio::test]
async fn a_stopped_simulator_leaves_objects_alone() {
    let env = env(WorkloadPolicy::default().build_duration(Duration::ZERO)).await;
    let Env {
        server,
        client,
        sim,
    } = env;
    sim.stop().await;
    let rv = server.store().resource_version();
    let jobs: Api<Job> = Api::namespaced(client, NS);
    jobs.create(&PostParams::default(), &kaniko_job("ignored", "h"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(server.store().resource_version(), rv + 1, "only the create");
    let job = jobs.get("ignored").await.unwrap();
    assert!(conditions(&job).is_empty());
}

#[tokio::test]
async fn a_second_simulator_leaves_settled_objects_alone() {
    let env = env(WorkloadPolicy::default()
        .build_duration(Duration::from_millis(20))
        .rollout_duration(Duration::from_millis(20)))
    .await;
    env.create_job("built", "h").await;
    env.create_deployment("running", 1, json!({})).await;
    env.finished_job("built").await;
    env.deployment_where("running", "available", available)
        .await;
    let Env { server, sim, .. } = env;
    sim.stop().await;
    let rv = server.store().resource_version();
    let again = server.simulate_workloads(
        WorkloadPolicy::default()
            .build_duration(Duration::from_secs(30))
            .rollout_duration(Duration::from_secs(30)),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        server.store().resource_version(),
        rv,
        "nothing rolled out again"
    );
    assert_eq!(again.stats().status_writes, 0);
}
