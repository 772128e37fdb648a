//! Workload simulation: the parts of a cluster the API server double has no code for — the
//! job controller, the deployment controller and the kubelet — played just well enough that a
//! controller driving Kaniko build Jobs and plugin Deployments sees what a real cluster shows.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use std::time::Duration;
//! use plugsync::testkit::apiserver::{ApiServer, WorkloadPolicy};
//! let server = ApiServer::start().await?;
//! let sim = server.simulate_workloads(
//!     WorkloadPolicy::default()
//!         .build_duration(Duration::from_millis(200))
//!         .fail_builds_matching("broken")
//!         .fail_first_attempts(1),
//! );
//! // … create Jobs and Deployments with server.client() and watch them finish …
//! sim.stop().await;
//! # Ok(()) }
//! ```
//!
//! # What it does
//!
//! **Jobs** (`batch/v1`), each one not yet finished (no `Complete`/`Failed` condition), not
//! suspended and not being deleted:
//! - when first seen, if the build takes time (`build_duration > 0`): creates the build Pod
//!   (named `<job>-<5 chars>` through `generateName`, with the pod template's labels and
//!   annotations plus `batch.kubernetes.io/job-name`, `job-name`,
//!   `batch.kubernetes.io/controller-uid`, `controller-uid`, and a controlling
//!   `ownerReference` to the Job with `blockOwnerDeletion`), reports it `Running` as the
//!   kubelet would (init containers terminated with exit 0, containers running and ready), and
//!   sets the Job's `startTime`, `active: 1`, `ready: 1`, `terminating: 0`;
//! - `build_duration` after it was first seen: decides the [`BuildOutcome`] from the
//!   [`WorkloadPolicy`], creates the Pod if it does not exist yet, reports it `Succeeded` or
//!   `Failed` — the build container (the one named `build`, else the first) terminated with
//!   exit code 0 / reason `Completed` / message = the image digest (Kaniko runs with
//!   `--digest-file=/dev/termination-log`), or exit code 1 / the outcome's reason and message;
//!   other containers and every init container terminated with exit 0 — and finally writes the
//!   Job's status as the job controller of Kubernetes 1.31+ does: `startTime`,
//!   `completionTime` (success only), `succeeded: 1` or `failed: 1`, `ready: 0`,
//!   `terminating: 0`, `uncountedTerminatedPods: {}`, and conditions
//!   `SuccessCriteriaMet` + `Complete` (reason `CompletionsReached`) or `FailureTarget` +
//!   `Failed` (reason `BackoffLimitExceeded`).
//!
//! Every Job runs exactly one Pod: a failure fails the Job at once, as with the
//! `backoffLimit: 0` plugsync renders (a larger `backoffLimit` is not honoured, nor is
//! `activeDeadlineSeconds`). Pods carry no `batch.kubernetes.io/job-tracking` finalizer, so
//! deleting a Job (background or foreground) garbage-collects its Pod at once.
//!
//! **Deployments** (`apps/v1`), not being deleted. No ReplicaSets and no Pods are created:
//! only the Deployment's status is written, with the ReplicaSet name
//! `<deployment>-<pod-template-hash>` appearing in condition messages. For each new
//! `metadata.generation` (including the first):
//! - while the rollout runs (`rollout_duration`, skipped when zero): `observedGeneration` =
//!   the new generation at once (as the real controller does), `updatedReplicas` =
//!   `spec.replicas`, the previous generation's available pods still counted as ready and
//!   available, `Available` `True`/`MinimumReplicasAvailable` only while those old pods cover
//!   `spec.replicas` minus `maxUnavailable` (so never on the first rollout), and `Progressing`
//!   `True`/`ReplicaSetUpdated`;
//! - after it: `replicas`, `updatedReplicas`, `readyReplicas`, `availableReplicas` =
//!   `spec.replicas` (default 1), `Available` `True`/`MinimumReplicasAvailable`, `Progressing`
//!   `True`/`NewReplicaSetAvailable`;
//! - `spec.replicas: 0` is available at once with zero counts;
//! - a Deployment matched by [`WorkloadPolicy::unavailable_deployments_matching`] stays
//!   `Available` `False`/`MinimumReplicasUnavailable` with `unavailableReplicas` =
//!   `spec.replicas` and no ready pods, and after `spec.progressDeadlineSeconds` its
//!   `Progressing` turns `False`/`ProgressDeadlineExceeded`.
//!
//! Zero counts are left out of statuses as the real API does (its integer fields are
//! `omitempty`): "no ready replicas" is a missing `readyReplicas`, not `readyReplicas: 0`.
//! The Job's `ready` and `terminating` are pointers upstream and so are written as `0`.
//!
//! # How it runs
//!
//! One Tokio task, driven by the store's change notifications (the event stream watches are
//! fed from) rather than by polling: an event for a Job or Deployment reconciles that object;
//! a timer wakes the task when the next build or rollout is due; a lagging notification
//! receiver triggers a full re-list. Writes go through the store's status-subresource path,
//! exactly like `PUT …/status` from a client (manager `kube-controller-manager`, or `kubelet`
//! for Pod status), with the resourceVersion read as a precondition, so they bump
//! resourceVersions, record managedFields and fire watch events. The simulator only writes
//! when the status it wants differs from the stored one, and keeps condition timestamps when
//! a condition does not change, so a settled cluster stays quiet: no event storms. A write
//! that loses a race (409) or fails is retried on the next event or after 50 ms.
//!
//! Pod creation and status writes do not go through HTTP, so they appear in neither
//! [`Stats`](super::Stats) nor fault injection.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::errors::ApiError;
use super::meta::now_rfc3339;
use super::store::{Event, Store, Target, WriteOpts};
use crate::render::ANNOTATION_BUILD_INPUTS;

/// The field manager of the job and deployment controllers' writes.
const CONTROLLER_MANAGER: &str = "kube-controller-manager";
/// The field manager of Pod status writes.
const KUBELET: &str = "kubelet";
/// The node every simulated Pod is bound to.
const NODE_NAME: &str = "simulated-node";
/// The node's IP.
const HOST_IP: &str = "10.0.0.10";
/// How soon a failed write is retried when no event comes first.
const RETRY: Duration = Duration::from_millis(50);
/// Generated names keep at most this much of the base (`<job>-`), as the apiserver does.
const MAX_GENERATE_BASE: usize = 58;
/// The characters of generated name suffixes and pod-template hashes.
const SAFE_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// How a simulated build ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildOutcome {
    /// The build container exits 0 with reason `Completed`; its termination message is the
    /// digest (as Kaniko writes it with `--digest-file=/dev/termination-log`).
    Succeed {
        /// The pushed image's digest, `sha256:<hex>`.
        digest: String,
    },
    /// The build container exits 1; the Job fails with reason `BackoffLimitExceeded`.
    Fail {
        /// The container's termination reason (what the kubelet reports, e.g. `Error`).
        reason: String,
        /// The container's termination message.
        message: String,
    },
}

/// Which Jobs or Deployments a policy rule applies to: a substring of `metadata.name`
/// (`From<&str>`/`From<String>`) or any predicate over the whole object.
#[derive(Clone)]
pub struct WorkloadMatcher {
    describe: String,
    test: Arc<dyn Fn(&Value) -> bool + Send + Sync>,
}

impl WorkloadMatcher {
    /// Objects whose `metadata.name` contains `substring` (an empty one matches everything).
    pub fn name_contains(substring: impl Into<String>) -> Self {
        let s: String = substring.into();
        WorkloadMatcher {
            describe: format!("name contains {s:?}"),
            test: Arc::new(move |obj: &Value| {
                obj["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.contains(s.as_str()))
            }),
        }
    }

    /// Objects for which `f` (given the whole Job or Deployment as JSON) returns true.
    pub fn predicate(f: impl Fn(&Value) -> bool + Send + Sync + 'static) -> Self {
        WorkloadMatcher {
            describe: "predicate".into(),
            test: Arc::new(f),
        }
    }

    /// Every object.
    pub fn any() -> Self {
        WorkloadMatcher {
            describe: "any".into(),
            test: Arc::new(|_: &Value| true),
        }
    }

    /// Whether `obj` matches.
    pub fn matches(&self, obj: &Value) -> bool {
        (self.test)(obj)
    }
}

impl fmt::Debug for WorkloadMatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WorkloadMatcher({})", self.describe)
    }
}

impl From<&str> for WorkloadMatcher {
    fn from(s: &str) -> Self {
        WorkloadMatcher::name_contains(s)
    }
}

impl From<String> for WorkloadMatcher {
    fn from(s: String) -> Self {
        WorkloadMatcher::name_contains(s)
    }
}

impl From<&String> for WorkloadMatcher {
    fn from(s: &String) -> Self {
        WorkloadMatcher::name_contains(s.as_str())
    }
}

/// A custom build decision: `Some(outcome)` decides, `None` falls through to the other rules.
type Decider = Arc<dyn Fn(&Value) -> Option<BuildOutcome> + Send + Sync>;

/// How simulated workloads behave; builder-style.
///
/// [`default`](Default::default): every build succeeds after 100 ms with the digest
/// [`simulated_digest`], every rollout takes 100 ms. A build's outcome is decided by the first
/// rule that applies: [`decide_builds`](Self::decide_builds), then the
/// [`fail_builds_matching`](Self::fail_builds_matching)/[`fail_builds_with`](Self::fail_builds_with)
/// rules in the order added, then [`fail_first_attempts`](Self::fail_first_attempts), else success.
#[derive(Clone)]
pub struct WorkloadPolicy {
    build_duration: Duration,
    rollout_duration: Duration,
    failing: Vec<(WorkloadMatcher, String, String)>,
    fail_first_attempts: u32,
    unavailable: Vec<WorkloadMatcher>,
    decide: Option<Decider>,
}

impl Default for WorkloadPolicy {
    fn default() -> Self {
        WorkloadPolicy {
            build_duration: Duration::from_millis(100),
            rollout_duration: Duration::from_millis(100),
            failing: Vec::new(),
            fail_first_attempts: 0,
            unavailable: Vec::new(),
            decide: None,
        }
    }
}

impl fmt::Debug for WorkloadPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadPolicy")
            .field("build_duration", &self.build_duration)
            .field("rollout_duration", &self.rollout_duration)
            .field(
                "failing",
                &self.failing.iter().map(|(m, _, _)| m).collect::<Vec<_>>(),
            )
            .field("fail_first_attempts", &self.fail_first_attempts)
            .field("unavailable", &self.unavailable)
            .field("decide", &self.decide.is_some())
            .finish()
    }
}

impl WorkloadPolicy {
    /// How long a build runs, from when the simulator first sees the Job (default 100 ms).
    /// Zero finishes Jobs at once, without the intermediate running state.
    pub fn build_duration(mut self, d: Duration) -> Self {
        self.build_duration = d;
        self
    }

    /// How long a rollout takes, from when the simulator first sees a generation (default
    /// 100 ms). Zero makes Deployments available at once, without the progressing state.
    pub fn rollout_duration(mut self, d: Duration) -> Self {
        self.rollout_duration = d;
        self
    }

    /// Builds of matching Jobs fail with reason `Error` and a Kaniko-like message.
    /// Takes a name substring (`"broken"`) or a [`WorkloadMatcher`].
    pub fn fail_builds_matching(self, m: impl Into<WorkloadMatcher>) -> Self {
        self.fail_builds_with(
            m,
            "Error",
            "error building image: error building stage: failed to execute command: waiting for process to exit: exit status 1 (simulated build failure)",
        )
    }

    /// Builds of matching Jobs fail with this termination reason and message.
    pub fn fail_builds_with(
        mut self,
        m: impl Into<WorkloadMatcher>,
        reason: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        self.failing.push((m.into(), reason.into(), message.into()));
        self
    }

    /// The first `n` attempts of every build fail: a Job named `abc` is attempt 1, `abc--N`
    /// (N a number) is attempt N, and attempts up to `n` fail.
    pub fn fail_first_attempts(mut self, n: u32) -> Self {
        self.fail_first_attempts = n;
        self
    }

    /// Matching Deployments never become available (`Available=False`, no ready replicas).
    /// Takes a name substring or a [`WorkloadMatcher`]; may be called more than once.
    pub fn unavailable_deployments_matching(mut self, m: impl Into<WorkloadMatcher>) -> Self {
        self.unavailable.push(m.into());
        self
    }

    /// A custom decision, consulted before every other rule: given the Job, `Some(outcome)`
    /// decides its build, `None` leaves it to the other rules.
    pub fn decide_builds(
        mut self,
        f: impl Fn(&Value) -> Option<BuildOutcome> + Send + Sync + 'static,
    ) -> Self {
        self.decide = Some(Arc::new(f));
        self
    }

    /// How the build of `job` ends under this policy.
    pub fn outcome_for(&self, job: &Value) -> BuildOutcome {
        if let Some(outcome) = self.decide.as_ref().and_then(|f| f(job)) {
            return outcome;
        }
        if let Some((_, reason, message)) = self.failing.iter().find(|(m, _, _)| m.matches(job)) {
            return BuildOutcome::Fail {
                reason: reason.clone(),
                message: message.clone(),
            };
        }
        let name = job["metadata"]["name"].as_str().unwrap_or_default();
        let attempt = attempt_of(name);
        if attempt <= self.fail_first_attempts {
            return BuildOutcome::Fail {
                reason: "Error".into(),
                message: format!(
                    "error building image: simulated failure of attempt {attempt} (the first {} attempts fail)",
                    self.fail_first_attempts
                ),
            };
        }
        BuildOutcome::Succeed {
            digest: simulated_digest(job),
        }
    }

    /// Whether `deployment` is kept unavailable under this policy.
    pub fn is_unavailable(&self, deployment: &Value) -> bool {
        self.unavailable.iter().any(|m| m.matches(deployment))
    }
}

/// The attempt number in a Job name: `abc--3` is 3, anything without a numeric `--N` suffix 1.
pub fn attempt_of(job_name: &str) -> u32 {
    job_name
        .rsplit_once("--")
        .and_then(|(_, n)| n.parse::<u32>().ok())
        .unwrap_or(1)
}

/// The digest a successful simulated build reports: `sha256:` and the SHA-256 of the Job's
/// `plugsync.dev/build-inputs` annotation, or of its name when it has none. Retries of the
/// same inputs therefore report the same digest, as a reproducible build would.
pub fn simulated_digest(job: &Value) -> String {
    let key = job["metadata"]["annotations"][ANNOTATION_BUILD_INPUTS]
        .as_str()
        .or_else(|| job["metadata"]["name"].as_str())
        .unwrap_or_default();
    format!("sha256:{}", sha_hex(key))
}

/// What a simulator has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimulatorStats {
    /// Build Pods created.
    pub pods_created: u64,
    /// Jobs finished with `Complete`.
    pub builds_succeeded: u64,
    /// Jobs finished with `Failed`.
    pub builds_failed: u64,
    /// Deployment rollouts finished (`Available` with `NewReplicaSetAvailable`).
    pub rollouts_completed: u64,
    /// Status writes that changed an object (Jobs, Pods and Deployments).
    pub status_writes: u64,
}

#[derive(Default)]
struct Counters {
    pods_created: AtomicU64,
    builds_succeeded: AtomicU64,
    builds_failed: AtomicU64,
    rollouts_completed: AtomicU64,
    status_writes: AtomicU64,
}

impl Counters {
    fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> SimulatorStats {
        SimulatorStats {
            pods_created: self.pods_created.load(Ordering::Relaxed),
            builds_succeeded: self.builds_succeeded.load(Ordering::Relaxed),
            builds_failed: self.builds_failed.load(Ordering::Relaxed),
            rollouts_completed: self.rollouts_completed.load(Ordering::Relaxed),
            status_writes: self.status_writes.load(Ordering::Relaxed),
        }
    }
}

/// A running workload simulation (see the [module docs](self)). Dropping it, or
/// [`stop`](Self::stop), ends the background task; objects keep the state they reached.
pub struct WorkloadSimulator {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    counters: Arc<Counters>,
}

impl fmt::Debug for WorkloadSimulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadSimulator")
            .field(
                "running",
                &self.task.as_ref().is_some_and(|t| !t.is_finished()),
            )
            .field("stats", &self.counters.snapshot())
            .finish()
    }
}

impl WorkloadSimulator {
    /// Spawns the simulation task on the current Tokio runtime (panics outside one, like
    /// `tokio::spawn`).
    pub(crate) fn start(store: Store, policy: WorkloadPolicy) -> Self {
        let counters = Arc::new(Counters::default());
        let (stop, stopped) = oneshot::channel();
        let engine = Engine {
            store,
            policy,
            counters: counters.clone(),
            jobs: HashMap::new(),
            deployments: HashMap::new(),
        };
        let task = tokio::spawn(engine.run(stopped));
        WorkloadSimulator {
            stop: Some(stop),
            task: Some(task),
            counters,
        }
    }

    /// What the simulator has done so far.
    pub fn stats(&self) -> SimulatorStats {
        self.counters.snapshot()
    }

    /// Ends the simulation and waits until the task has stopped: no writes happen after this
    /// returns.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for WorkloadSimulator {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Which controller an object belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Job,
    Deployment,
}

/// `(namespace, name)`.
type ObjRef = (String, String);

struct JobTrack {
    uid: String,
    seen: Instant,
    due: Option<Instant>,
}

struct DeploymentTrack {
    uid: String,
    generation: i64,
    since: Instant,
    /// Available pods of the previous generation, still serving during the rollout.
    old_available: i64,
    due: Option<Instant>,
}

struct Engine {
    store: Store,
    policy: WorkloadPolicy,
    counters: Arc<Counters>,
    jobs: HashMap<ObjRef, JobTrack>,
    deployments: HashMap<ObjRef, DeploymentTrack>,
}

fn kind_of(ev: &Event) -> Option<Kind> {
    match (ev.key.0.as_str(), ev.key.1.as_str()) {
        ("batch", "jobs") => Some(Kind::Job),
        ("apps", "deployments") => Some(Kind::Deployment),
        _ => None,
    }
}

impl Engine {
    async fn run(mut self, mut stopped: oneshot::Receiver<()>) {
        let mut rx = self.store.subscribe();
        self.resync();
        loop {
            let due = self.next_due();
            let timer = async move {
                match due {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = &mut stopped => break,
                ev = rx.recv() => {
                    let mut dirty = BTreeSet::new();
                    let mut lagged = false;
                    match ev {
                        Ok(ev) => collect(&ev, &mut dirty),
                        Err(RecvError::Lagged(_)) => lagged = true,
                        Err(RecvError::Closed) => break,
                    }
                    loop {
                        match rx.try_recv() {
                            Ok(ev) => collect(&ev, &mut dirty),
                            Err(TryRecvError::Lagged(_)) => lagged = true,
                            Err(_) => break,
                        }
                    }
                    if lagged {
                        self.resync();
                    } else {
                        let now = Instant::now();
                        for (kind, ns, name) in dirty {
                            self.reconcile(kind, &ns, &name, now);
                        }
                    }
                }
                _ = timer => {}
            }
            self.run_due();
        }
    }

    /// Reconciles every Job and Deployment in the store.
    fn resync(&mut self) {
        let now = Instant::now();
        let mut all = BTreeSet::new();
        for (kind, av, k) in [
            (Kind::Job, "batch/v1", "Job"),
            (Kind::Deployment, "apps/v1", "Deployment"),
        ] {
            for obj in self.store.list(av, k, None) {
                all.insert((kind, text(&obj, "namespace"), text(&obj, "name")));
            }
        }
        // Forget objects that are gone.
        for (ns, name) in self.jobs.keys() {
            all.insert((Kind::Job, ns.clone(), name.clone()));
        }
        for (ns, name) in self.deployments.keys() {
            all.insert((Kind::Deployment, ns.clone(), name.clone()));
        }
        for (kind, ns, name) in all {
            self.reconcile(kind, &ns, &name, now);
        }
    }

    fn next_due(&self) -> Option<Instant> {
        let jobs = self.jobs.values().filter_map(|t| t.due);
        let deployments = self.deployments.values().filter_map(|t| t.due);
        jobs.chain(deployments).min()
    }

    fn run_due(&mut self) {
        let now = Instant::now();
        let jobs: Vec<ObjRef> = self
            .jobs
            .iter()
            .filter(|(_, t)| t.due.is_some_and(|d| d <= now))
            .map(|(k, _)| k.clone())
            .collect();
        let deployments: Vec<ObjRef> = self
            .deployments
            .iter()
            .filter(|(_, t)| t.due.is_some_and(|d| d <= now))
            .map(|(k, _)| k.clone())
            .collect();
        for (ns, name) in jobs {
            self.reconcile(Kind::Job, &ns, &name, now);
        }
        for (ns, name) in deployments {
            self.reconcile(Kind::Deployment, &ns, &name, now);
        }
    }

    fn reconcile(&mut self, kind: Kind, ns: &str, name: &str, now: Instant) {
        match kind {
            Kind::Job => self.reconcile_job(ns, name, now),
            Kind::Deployment => self.reconcile_deployment(ns, name, now),
        }
    }

    // ---- Jobs ---------------------------------------------------------------------------

    fn reconcile_job(&mut self, ns: &str, name: &str, now: Instant) {
        let key = (ns.to_string(), name.to_string());
        let Some(job) = self.store.get("batch/v1", "Job", Some(ns), name) else {
            self.jobs.remove(&key);
            return;
        };
        if is_deleting(&job) || job_finished(&job) || job["spec"]["suspend"] == json!(true) {
            self.jobs.remove(&key);
            return;
        }
        let uid = text(&job, "uid");
        let seen = match self.jobs.get(&key) {
            Some(t) if t.uid == uid => t.seen,
            _ => now,
        };
        let finish_at = seen + self.policy.build_duration;
        let due = if now >= finish_at {
            match self.finish_job(&job) {
                Ok(()) => None,
                Err(e) => {
                    tracing::debug!(job = %name, namespace = %ns, error = ?e.status["message"], "simulated build: finishing failed, retrying");
                    Some(now + RETRY)
                }
            }
        } else if job["status"]["startTime"].is_null() {
            match self.start_job(&job) {
                Ok(()) => Some(finish_at),
                Err(e) => {
                    tracing::debug!(job = %name, namespace = %ns, error = ?e.status["message"], "simulated build: starting failed, retrying");
                    Some(finish_at.min(now + RETRY))
                }
            }
        } else {
            Some(finish_at)
        };
        self.jobs.insert(key, JobTrack { uid, seen, due });
    }

    /// The running state: build Pod created and `Running`, Job `active`.
    fn start_job(&self, job: &Value) -> Result<(), ApiError> {
        let pod = self.ensure_pod(job)?;
        if pod["status"]["phase"] == json!("Pending") {
            let ts = now_rfc3339();
            let status = pod_status(&pod, None, &ts);
            self.write_status(&pod, "", "v1", "pods", status, KUBELET)?;
        }
        let ts = now_rfc3339();
        let mut status = Map::new();
        status.insert("startTime".into(), json!(ts));
        status.insert("active".into(), json!(1));
        status.insert("ready".into(), json!(1));
        status.insert("terminating".into(), json!(0));
        status.insert("uncountedTerminatedPods".into(), json!({}));
        self.write_job_status(job, Value::Object(status))
    }

    /// The end state: Pod terminated, Job `Complete` or `Failed`.
    fn finish_job(&self, job: &Value) -> Result<(), ApiError> {
        let outcome = self.policy.outcome_for(job);
        let pod = self.ensure_pod(job)?;
        let phase = pod["status"]["phase"].as_str().unwrap_or_default();
        if phase != "Succeeded" && phase != "Failed" {
            let ts = now_rfc3339();
            let status = pod_status(&pod, Some(&outcome), &ts);
            self.write_status(&pod, "", "v1", "pods", status, KUBELET)?;
        }
        let ts = now_rfc3339();
        let start = job["status"]["startTime"]
            .as_str()
            .map(String::from)
            .unwrap_or_else(|| ts.clone());
        let cond = |ctype: &str, reason: &str, message: &str| {
            json!({
                "type": ctype,
                "status": "True",
                "lastProbeTime": ts,
                "lastTransitionTime": ts,
                "reason": reason,
                "message": message,
            })
        };
        let mut status = Map::new();
        let succeeded = matches!(outcome, BuildOutcome::Succeed { .. });
        if succeeded {
            let msg = "Reached expected number of succeeded pods";
            status.insert(
                "conditions".into(),
                json!([
                    cond("SuccessCriteriaMet", "CompletionsReached", msg),
                    cond("Complete", "CompletionsReached", msg),
                ]),
            );
            status.insert("startTime".into(), json!(start));
            status.insert("completionTime".into(), json!(ts));
            status.insert("succeeded".into(), json!(1));
        } else {
            let msg = "Job has reached the specified backoff limit";
            status.insert(
                "conditions".into(),
                json!([
                    cond("FailureTarget", "BackoffLimitExceeded", msg),
                    cond("Failed", "BackoffLimitExceeded", msg),
                ]),
            );
            status.insert("startTime".into(), json!(start));
            status.insert("failed".into(), json!(1));
        }
        status.insert("ready".into(), json!(0));
        status.insert("terminating".into(), json!(0));
        status.insert("uncountedTerminatedPods".into(), json!({}));
        self.write_job_status(job, Value::Object(status))?;
        if succeeded {
            Counters::bump(&self.counters.builds_succeeded);
        } else {
            Counters::bump(&self.counters.builds_failed);
        }
        tracing::debug!(
            job = %text(job, "name"),
            namespace = %text(job, "namespace"),
            ?outcome,
            "simulated build finished"
        );
        Ok(())
    }

    /// Writes a Job's status; when the Job vanished meanwhile, removes the Pods created for it
    /// (their owner is gone, so the garbage collector would).
    fn write_job_status(&self, job: &Value, status: Value) -> Result<(), ApiError> {
        match self.write_status(job, "batch", "v1", "jobs", status, CONTROLLER_MANAGER) {
            Err(e) if e.code == 404 => {
                let ns = text(job, "namespace");
                for pod in self.owned_pods(job) {
                    self.store
                        .delete("v1", "Pod", Some(&ns), &text(&pod, "name"));
                }
                Err(e)
            }
            other => other.map(|_| ()),
        }
    }

    /// Pods controlled by `job` (by uid).
    fn owned_pods(&self, job: &Value) -> Vec<Value> {
        let uid = text(job, "uid");
        let ns = text(job, "namespace");
        self.store
            .list("v1", "Pod", Some(&ns))
            .into_iter()
            .filter(|p| {
                p["metadata"]["ownerReferences"]
                    .as_array()
                    .is_some_and(|refs| refs.iter().any(|r| r["uid"] == json!(uid)))
            })
            .collect()
    }

    /// The Job's Pod: the existing one, or a new one from the pod template.
    fn ensure_pod(&self, job: &Value) -> Result<Value, ApiError> {
        if let Some(pod) = self.owned_pods(job).into_iter().next() {
            return Ok(pod);
        }
        let ns = text(job, "namespace");
        let name = text(job, "name");
        let uid = text(job, "uid");
        let tpl = &job["spec"]["template"];
        let mut labels = tpl["metadata"]["labels"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        for (k, v) in [
            ("batch.kubernetes.io/controller-uid", &uid),
            ("batch.kubernetes.io/job-name", &name),
            ("controller-uid", &uid),
            ("job-name", &name),
        ] {
            labels.insert(k.into(), json!(v));
        }
        let mut metadata = Map::new();
        let base: String = name.chars().take(MAX_GENERATE_BASE).collect();
        metadata.insert("generateName".into(), json!(format!("{base}-")));
        metadata.insert("namespace".into(), json!(ns));
        metadata.insert("labels".into(), Value::Object(labels));
        if let Some(a) = tpl["metadata"]["annotations"].as_object() {
            metadata.insert("annotations".into(), Value::Object(a.clone()));
        }
        metadata.insert(
            "ownerReferences".into(),
            json!([{
                "apiVersion": "batch/v1",
                "kind": "Job",
                "name": name,
                "uid": uid,
                "controller": true,
                "blockOwnerDeletion": true,
            }]),
        );
        let mut spec = tpl["spec"].clone();
        if let Some(s) = spec.as_object_mut() {
            s.insert("nodeName".into(), json!(NODE_NAME));
        }
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec});
        let opts = WriteOpts {
            dry_run: false,
            manager: CONTROLLER_MANAGER.into(),
            subresource: None,
        };
        let out = self
            .store
            .create(&target("", "v1", "pods", &ns), pod, &opts)?;
        Counters::bump(&self.counters.pods_created);
        Ok(out.object)
    }

    // ---- Deployments ----------------------------------------------------------------------

    fn reconcile_deployment(&mut self, ns: &str, name: &str, now: Instant) {
        let key = (ns.to_string(), name.to_string());
        let Some(d) = self.store.get("apps/v1", "Deployment", Some(ns), name) else {
            self.deployments.remove(&key);
            return;
        };
        if is_deleting(&d) {
            self.deployments.remove(&key);
            return;
        }
        let uid = text(&d, "uid");
        let generation = d["metadata"]["generation"].as_i64().unwrap_or(1);
        let (since, old_available) = match self.deployments.get(&key) {
            Some(t) if t.uid == uid && t.generation == generation => (t.since, t.old_available),
            _ => {
                let observed = d["status"]["observedGeneration"].as_i64();
                let old = if observed.is_some_and(|g| g != generation) {
                    d["status"]["availableReplicas"].as_i64().unwrap_or(0)
                } else {
                    0
                };
                // Already rolled out (a simulator started after a previous one): stay done
                // rather than roll out again.
                let rolled_out = observed == Some(generation)
                    && d["status"]["conditions"].as_array().is_some_and(|cs| {
                        cs.iter().any(|c| {
                            c["type"] == "Progressing" && c["reason"] == "NewReplicaSetAvailable"
                        })
                    });
                let since = if rolled_out {
                    now.checked_sub(self.policy.rollout_duration).unwrap_or(now)
                } else {
                    now
                };
                (since, old)
            }
        };
        let replicas = d["spec"]["replicas"].as_i64().unwrap_or(1).max(0);
        let elapsed = now.saturating_duration_since(since);
        let deadline =
            Duration::from_secs(d["spec"]["progressDeadlineSeconds"].as_u64().unwrap_or(600));
        let ts = now_rfc3339();
        let (state, mut due) = if replicas == 0 {
            (Rollout::Complete, None)
        } else if self.policy.is_unavailable(&d) {
            if elapsed >= deadline {
                (Rollout::Stuck { timed_out: true }, None)
            } else {
                (Rollout::Stuck { timed_out: false }, Some(since + deadline))
            }
        } else if elapsed >= self.policy.rollout_duration {
            (Rollout::Complete, None)
        } else {
            (
                Rollout::Progressing { old_available },
                Some(since + self.policy.rollout_duration),
            )
        };
        let status = deployment_status(&d, replicas, generation, state, &ts);
        if status != d["status"] {
            match self.write_status(&d, "apps", "v1", "deployments", status, CONTROLLER_MANAGER) {
                Ok(true) if state == Rollout::Complete => {
                    Counters::bump(&self.counters.rollouts_completed);
                    tracing::debug!(deployment = %name, namespace = %ns, generation, "simulated rollout complete");
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(deployment = %name, namespace = %ns, error = ?e.status["message"], "simulated rollout: status write failed, retrying");
                    due = Some(due.map_or(now + RETRY, |d| d.min(now + RETRY)));
                }
            }
        }
        self.deployments.insert(
            key,
            DeploymentTrack {
                uid,
                generation,
                since,
                old_available,
                due,
            },
        );
    }

    // ---- Writes ---------------------------------------------------------------------------

    /// `PUT <object>/status` through the store, with `live`'s resourceVersion as the
    /// precondition. Returns whether the object changed.
    fn write_status(
        &self,
        live: &Value,
        group: &str,
        version: &str,
        plural: &str,
        status: Value,
        manager: &str,
    ) -> Result<bool, ApiError> {
        let mut body = live.clone();
        body["status"] = status;
        let opts = WriteOpts {
            dry_run: false,
            manager: manager.into(),
            subresource: Some("status".into()),
        };
        let ns = text(live, "namespace");
        let out = self.store.update(
            &target(group, version, plural, &ns),
            &text(live, "name"),
            body,
            &opts,
        )?;
        if out.changed {
            Counters::bump(&self.counters.status_writes);
        }
        Ok(out.changed)
    }
}

fn collect(ev: &Event, dirty: &mut BTreeSet<(Kind, String, String)>) {
    if let Some(kind) = kind_of(ev) {
        dirty.insert((kind, ev.namespace.clone(), text(&ev.object, "name")));
    }
}

fn target(group: &str, version: &str, plural: &str, ns: &str) -> Target {
    Target {
        group: group.into(),
        version: version.into(),
        plural: plural.into(),
        namespace: Some(ns.into()),
    }
}

/// `metadata.<field>` as a String ("" when missing).
fn text(obj: &Value, field: &str) -> String {
    obj["metadata"][field]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn is_deleting(obj: &Value) -> bool {
    !obj["metadata"]["deletionTimestamp"].is_null()
}

/// Whether a Job has a `Complete` or `Failed` condition that is `True`.
fn job_finished(job: &Value) -> bool {
    job["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| (c["type"] == "Complete" || c["type"] == "Failed") && c["status"] == "True")
    })
}

fn sha_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

// ---- Pod status (the kubelet) ----------------------------------------------------------------

/// A Pod's status: `Running` (`outcome` None) or terminated with `outcome`.
fn pod_status(pod: &Value, outcome: Option<&BuildOutcome>, ts: &str) -> Value {
    let uid = text(pod, "uid");
    let prev = &pod["status"];
    let started = prev["startTime"].as_str().unwrap_or(ts).to_string();
    let spec = &pod["spec"];
    let containers: Vec<&Value> = spec["containers"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let main = containers
        .iter()
        .position(|c| c["name"] == "build")
        .unwrap_or(0);
    let cid = |name: &str| format!("containerd://{}", sha_hex(&format!("{uid}/{name}")));
    let base = |c: &Value| {
        let image = c["image"].as_str().unwrap_or_default();
        let name = c["name"].as_str().unwrap_or_default();
        json!({
            "name": name,
            "image": image,
            "imageID": image_id(image),
            "containerID": cid(name),
            "restartCount": 0,
            "lastState": {},
        })
    };
    let prev_started_at = |name: &str| {
        prev["containerStatuses"]
            .as_array()
            .and_then(|a| a.iter().find(|s| s["name"] == name))
            .and_then(|s| s["state"]["running"]["startedAt"].as_str())
            .unwrap_or(&started)
            .to_string()
    };
    let terminated = |c: &Value, code: i64, reason: &str, message: &str| {
        let name = c["name"].as_str().unwrap_or_default();
        let mut t = Map::new();
        t.insert("exitCode".into(), json!(code));
        t.insert("reason".into(), json!(reason));
        if !message.is_empty() {
            t.insert("message".into(), json!(message));
        }
        t.insert("startedAt".into(), json!(prev_started_at(name)));
        t.insert("finishedAt".into(), json!(ts));
        t.insert("containerID".into(), json!(cid(name)));
        json!({"terminated": t})
    };
    let init: Vec<Value> = spec["initContainers"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| {
                    let mut s = base(c);
                    let name = c["name"].as_str().unwrap_or_default();
                    s["ready"] = json!(true);
                    s["started"] = json!(false);
                    s["state"] = json!({"terminated": {
                        "exitCode": 0,
                        "reason": "Completed",
                        "startedAt": started,
                        "finishedAt": started,
                        "containerID": cid(name),
                    }});
                    s
                })
                .collect()
        })
        .unwrap_or_default();
    let main_status: Vec<Value> = containers
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut s = base(c);
            s["ready"] = json!(outcome.is_none());
            s["started"] = json!(outcome.is_none());
            s["state"] = match outcome {
                None => json!({"running": {"startedAt": started}}),
                Some(_) if i != main => terminated(c, 0, "Completed", ""),
                Some(BuildOutcome::Succeed { digest }) => terminated(c, 0, "Completed", digest),
                Some(BuildOutcome::Fail { reason, message }) => terminated(c, 1, reason, message),
            };
            s
        })
        .collect();
    let cond = |ctype: &str, status: bool, reason: Option<&str>| {
        let mut c = Map::new();
        c.insert("type".into(), json!(ctype));
        c.insert(
            "status".into(),
            json!(if status { "True" } else { "False" }),
        );
        c.insert("lastProbeTime".into(), Value::Null);
        c.insert(
            "lastTransitionTime".into(),
            json!(if status { started.as_str() } else { ts }),
        );
        if let Some(r) = reason {
            c.insert("reason".into(), json!(r));
        }
        Value::Object(c)
    };
    let (phase, conditions) = match outcome {
        None => (
            "Running",
            vec![
                cond("PodReadyToStartContainers", true, None),
                cond("Initialized", true, None),
                cond("Ready", true, None),
                cond("ContainersReady", true, None),
                cond("PodScheduled", true, None),
            ],
        ),
        Some(o) => {
            let (phase, reason) = match o {
                BuildOutcome::Succeed { .. } => ("Succeeded", "PodCompleted"),
                BuildOutcome::Fail { .. } => ("Failed", "PodFailed"),
            };
            let init_reason = (phase == "Succeeded").then_some("PodCompleted");
            (
                phase,
                vec![
                    cond("PodReadyToStartContainers", false, None),
                    cond("Initialized", true, init_reason),
                    cond("Ready", false, Some(reason)),
                    cond("ContainersReady", false, Some(reason)),
                    cond("PodScheduled", true, None),
                ],
            )
        }
    };
    let ip = pod_ip(&uid);
    let mut status = Map::new();
    status.insert("phase".into(), json!(phase));
    status.insert("conditions".into(), json!(conditions));
    status.insert("hostIP".into(), json!(HOST_IP));
    status.insert("hostIPs".into(), json!([{"ip": HOST_IP}]));
    status.insert("podIP".into(), json!(ip));
    status.insert("podIPs".into(), json!([{"ip": ip}]));
    status.insert("startTime".into(), json!(started));
    if !init.is_empty() {
        status.insert("initContainerStatuses".into(), json!(init));
    }
    status.insert("containerStatuses".into(), json!(main_status));
    status.insert(
        "qosClass".into(),
        prev.get("qosClass")
            .cloned()
            .unwrap_or_else(|| json!("BestEffort")),
    );
    Value::Object(status)
}

/// `repo@sha256:…` for an image reference (the digest made up from the reference).
fn image_id(image: &str) -> String {
    let repo = match image.split_once('@') {
        Some((repo, _)) => repo.to_string(),
        None => match image.rsplit_once(':') {
            Some((repo, tag)) if !tag.contains('/') => repo.to_string(),
            _ => image.to_string(),
        },
    };
    format!("{repo}@sha256:{}", sha_hex(image))
}

fn pod_ip(uid: &str) -> String {
    let h = Sha256::digest(uid.as_bytes());
    format!("10.244.{}.{}", h[0], h[1].clamp(2, 254))
}

// ---- Deployment status (the deployment controller) -------------------------------------------

/// Where a Deployment's rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rollout {
    /// New pods created, not ready yet; `old_available` pods of the previous generation serve.
    Progressing { old_available: i64 },
    /// All replicas updated and available.
    Complete,
    /// Never becomes available (policy); `timed_out` once past `progressDeadlineSeconds`.
    Stuck { timed_out: bool },
}

/// `<deployment>-<pod-template-hash>`: the hash as the deployment controller spells it (the
/// decimal digits of a 32-bit hash of the template, mapped onto the safe alphabet).
fn replica_set_name(d: &Value) -> String {
    let tpl = serde_json::to_string(&d["spec"]["template"]).unwrap_or_default();
    let h = Sha256::digest(tpl.as_bytes());
    let n = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
    let hash: String = n
        .to_string()
        .bytes()
        .map(|b| SAFE_ALPHABET[b as usize % SAFE_ALPHABET.len()] as char)
        .collect();
    format!("{}-{hash}", text(d, "name"))
}

/// `spec.strategy.rollingUpdate.maxUnavailable` resolved against `replicas` (rounded down, as
/// upstream); everything for `Recreate`.
fn max_unavailable(d: &Value, replicas: i64) -> i64 {
    let strategy = &d["spec"]["strategy"];
    if strategy["type"] == "Recreate" {
        return replicas;
    }
    let v = &strategy["rollingUpdate"]["maxUnavailable"];
    if let Some(n) = v.as_i64() {
        return n.clamp(0, replicas);
    }
    let pct = v
        .as_str()
        .and_then(|s| s.strip_suffix('%'))
        .and_then(|p| p.parse::<i64>().ok())
        .unwrap_or(25);
    (replicas * pct / 100).clamp(0, replicas)
}

/// A Deployment condition, keeping the previous timestamps when nothing changed.
fn deployment_condition(
    prev: &Value,
    ctype: &str,
    status: bool,
    reason: &str,
    message: &str,
    ts: &str,
) -> Value {
    let status = if status { "True" } else { "False" };
    let old = prev["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == ctype));
    let same_status = old.is_some_and(|c| c["status"] == status);
    let same_all =
        same_status && old.is_some_and(|c| c["reason"] == reason && c["message"] == message);
    let keep = |field: &str, keep: bool| {
        old.filter(|_| keep)
            .and_then(|c| c[field].as_str())
            .unwrap_or(ts)
            .to_string()
    };
    json!({
        "type": ctype,
        "status": status,
        "lastUpdateTime": keep("lastUpdateTime", same_all),
        "lastTransitionTime": keep("lastTransitionTime", same_status),
        "reason": reason,
        "message": message,
    })
}

fn deployment_status(d: &Value, replicas: i64, generation: i64, state: Rollout, ts: &str) -> Value {
    let prev = &d["status"];
    let rs = replica_set_name(d);
    let (total, updated, ready, available, unavailable) = match state {
        Rollout::Complete => (replicas, replicas, replicas, replicas, 0),
        Rollout::Stuck { .. } => (replicas, replicas, 0, 0, replicas),
        Rollout::Progressing { old_available } => {
            let old = if d["spec"]["strategy"]["type"] == "Recreate" {
                0
            } else {
                old_available.clamp(0, replicas)
            };
            (replicas + old, replicas, old, old, (replicas - old).max(0))
        }
    };
    let is_available = match state {
        Rollout::Complete => true,
        Rollout::Stuck { .. } => false,
        Rollout::Progressing { .. } => available >= replicas - max_unavailable(d, replicas),
    };
    let available_cond = if is_available {
        deployment_condition(
            prev,
            "Available",
            true,
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.",
            ts,
        )
    } else {
        deployment_condition(
            prev,
            "Available",
            false,
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.",
            ts,
        )
    };
    let progressing_cond = match state {
        Rollout::Complete => deployment_condition(
            prev,
            "Progressing",
            true,
            "NewReplicaSetAvailable",
            &format!("ReplicaSet \"{rs}\" has successfully progressed."),
            ts,
        ),
        Rollout::Stuck { timed_out: true } => deployment_condition(
            prev,
            "Progressing",
            false,
            "ProgressDeadlineExceeded",
            &format!("ReplicaSet \"{rs}\" has timed out progressing."),
            ts,
        ),
        _ => deployment_condition(
            prev,
            "Progressing",
            true,
            "ReplicaSetUpdated",
            &format!("ReplicaSet \"{rs}\" is progressing."),
            ts,
        ),
    };
    let mut status = Map::new();
    status.insert("observedGeneration".into(), json!(generation));
    for (field, n) in [
        ("replicas", total),
        ("updatedReplicas", updated),
        ("readyReplicas", ready),
        ("availableReplicas", available),
        ("unavailableReplicas", unavailable),
    ] {
        if n != 0 {
            status.insert(field.into(), json!(n));
        }
    }
    status.insert(
        "conditions".into(),
        json!([available_cond, progressing_cond]),
    );
    Value::Object(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(name: &str, inputs: Option<&str>) -> Value {
        let mut j = json!({"metadata": {"name": name}});
        if let Some(i) = inputs {
            j["metadata"]["annotations"] = json!({ANNOTATION_BUILD_INPUTS: i});
        }
        j
    }

    #[test]
    fn attempts() {
        assert_eq!(attempt_of("abc"), 1);
        assert_eq!(attempt_of("abc--2"), 2);
        assert_eq!(attempt_of("a--b--3"), 3);
        assert_eq!(attempt_of("abc--x"), 1);
        assert_eq!(attempt_of("abc-2"), 1);
    }

    #[test]
    fn outcomes_follow_rule_order() {
        let p = WorkloadPolicy::default()
            .fail_builds_matching("broken")
            .fail_first_attempts(1);
        assert!(matches!(
            p.outcome_for(&job("broken--5", None)),
            BuildOutcome::Fail { .. }
        ));
        assert!(matches!(
            p.outcome_for(&job("abc", None)),
            BuildOutcome::Fail { .. }
        ));
        assert_eq!(
            p.outcome_for(&job("abc--2", Some("h"))),
            BuildOutcome::Succeed {
                digest: format!("sha256:{}", sha_hex("h"))
            }
        );
        let p = p.decide_builds(|j| {
            (j["metadata"]["name"] == "abc").then(|| BuildOutcome::Succeed {
                digest: "sha256:00".into(),
            })
        });
        assert_eq!(
            p.outcome_for(&job("abc", None)),
            BuildOutcome::Succeed {
                digest: "sha256:00".into()
            }
        );
    }

    #[test]
    fn digest_falls_back_to_the_name() {
        assert_eq!(
            simulated_digest(&job("abc", None)),
            format!("sha256:{}", sha_hex("abc"))
        );
        assert_ne!(
            simulated_digest(&job("abc", Some("x"))),
            simulated_digest(&job("abc", None))
        );
    }

    #[test]
    fn max_unavailable_resolves_percentages() {
        let d = |v: Value| json!({"spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": v}}}});
        assert_eq!(max_unavailable(&d(json!("25%")), 1), 0);
        assert_eq!(max_unavailable(&d(json!("25%")), 4), 1);
        assert_eq!(max_unavailable(&d(json!(2)), 4), 2);
        assert_eq!(
            max_unavailable(&json!({"spec": {"strategy": {"type": "Recreate"}}}), 3),
            3
        );
    }

    #[test]
    fn conditions_keep_timestamps_when_unchanged() {
        let d = json!({"metadata": {"name": "d", "generation": 1}, "spec": {}});
        let s1 = deployment_status(&d, 2, 1, Rollout::Complete, "2025-01-01T00:00:00Z");
        let d2 = json!({"metadata": {"name": "d", "generation": 1}, "spec": {}, "status": s1});
        let s2 = deployment_status(&d2, 2, 1, Rollout::Complete, "2025-01-01T00:00:09Z");
        assert_eq!(s2, d2["status"]);
        let s3 = deployment_status(
            &d2,
            2,
            2,
            Rollout::Stuck { timed_out: false },
            "2025-01-01T00:00:09Z",
        );
        assert_eq!(
            s3["conditions"][0]["lastTransitionTime"],
            "2025-01-01T00:00:09Z"
        );
        assert_eq!(
            s3["conditions"][1]["lastTransitionTime"],
            "2025-01-01T00:00:00Z"
        );
        assert!(s3.get("readyReplicas").is_none());
    }
}
