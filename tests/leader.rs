//! Leader election on a Lease against the real control plane (`tests/cluster`): one leader at
//! a time, handover on release and on expiry, stepping down when renewals fail or hang (faults
//! through the fault proxy), and the leader Pod label on a real Pod.
//!
//! Timings are short (lease 2–5 s) but every assertion about *when* something happens is
//! either a safety bound that load cannot break (load only delays a takeover) or a generous
//! upper bound. The test's own reads of the Lease go straight to the API server (not through
//! the fault proxy), so injected faults only hit the electors.

#[path = "common/cluster.rs"]
mod cluster;
#[path = "common/fault_proxy.rs"]
mod fault_proxy;

use std::time::{Duration, Instant};

use cluster::{cluster, wait_for};
use fault_proxy::{FaultProxy, Match};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ListParams, PostParams};
use plugsync_kube::leader::{
    set_pod_leader_label, LeaderElector, LeaderError, LeaderHandle, LeaderRecord, LeaseConfig,
    LEADER_LABEL,
};
use serde_json::{json, Value};

const POLL: Duration = Duration::from_millis(10);
const WAIT: Duration = Duration::from_secs(30);

/// A config with short timings: `lease` s lease, renew deadline `lease` × 0.75 (at least
/// 1.2 × retry), 200 ms retry period.
fn config(ns: &str, lease_name: &str, identity: &str, lease_secs: u64) -> LeaseConfig {
    LeaseConfig {
        lease_duration: Duration::from_secs(lease_secs),
        renew_deadline: Duration::from_millis(lease_secs * 750),
        retry_period: Duration::from_millis(200),
        ..LeaseConfig::new(lease_name, ns, identity)
    }
}

/// A test's namespace on the shared control plane, and a client that goes straight to the
/// API server for the test's own reads.
struct Env {
    ns: String,
    client: kube::Client,
}

impl Env {
    async fn new(label: &str) -> Env {
        let c = cluster().await;
        Env {
            ns: c.namespace(label).await,
            client: c.client().await,
        }
    }

    /// An elector talking to the API server directly.
    fn spawn(&self, lease_name: &str, identity: &str, lease_secs: u64) -> LeaderHandle {
        self.spawn_with(self.client.clone(), lease_name, identity, lease_secs)
    }

    /// An elector talking through `client` (e.g. the fault proxy's).
    fn spawn_with(
        &self,
        client: kube::Client,
        lease_name: &str,
        identity: &str,
        lease_secs: u64,
    ) -> LeaderHandle {
        LeaderElector::new(client, config(&self.ns, lease_name, identity, lease_secs)).spawn()
    }

    fn leases(&self) -> Api<Lease> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// The lease as the API server has it.
    async fn record(&self, name: &str) -> LeaderRecord {
        let lease = self
            .leases()
            .get_opt(name)
            .await
            .expect("read the lease")
            .expect("the lease exists");
        LeaderRecord::from_lease(&lease)
    }

    /// Waits (through a watch on the Lease) until its record meets `condition`.
    async fn wait_record(
        &self,
        name: &str,
        what: &str,
        condition: impl Fn(&LeaderRecord) -> bool,
    ) -> LeaderRecord {
        let lease = wait_for(&self.leases(), name, WAIT, what, |l: Option<&Lease>| {
            l.is_some_and(|l| condition(&LeaderRecord::from_lease(l)))
        })
        .await;
        LeaderRecord::from_lease(&lease)
    }
}

/// Watches several candidates for `dur`, failing if two ever claim leadership at once.
async fn assert_never_two_leaders(handles: &[&LeaderHandle], dur: Duration) {
    let start = Instant::now();
    while start.elapsed() < dur {
        let leaders = handles.iter().filter(|h| h.is_leader()).count();
        assert!(leaders <= 1, "{leaders} replicas claim leadership at once");
        tokio::time::sleep(POLL).await;
    }
}

/// Waits for any of `handles` to lead (their leadership channels, no polling).
async fn any_leader(handles: &[&LeaderHandle]) {
    let waits = handles.iter().map(|h| Box::pin(h.became_leader()));
    let (first, _, _) = tokio::time::timeout(WAIT, futures::future::select_all(waits))
        .await
        .expect("a leader within 30 s");
    first.expect("an election task stopped");
}

#[tokio::test]
async fn two_electors_one_leader_named_by_the_lease() -> anyhow::Result<()> {
    let env = Env::new("leader-two").await;
    let a = env.spawn("two", "a", 2);
    let b = env.spawn("two", "b", 2);

    any_leader(&[&a, &b]).await;
    assert_never_two_leaders(&[&a, &b], Duration::from_secs(3)).await;

    // The lease names whichever replica says it leads, and the other one says it does not
    // (checked at each renewal the watch sees).
    env.wait_record("two", "lease holder == the leader", |rec| {
        match rec.holder_identity.as_str() {
            "a" => a.is_leader() && !b.is_leader(),
            "b" => b.is_leader() && !a.is_leader(),
            _ => false,
        }
    })
    .await;
    let rec = env.record("two").await;
    assert_eq!(rec.lease_duration_seconds, 2);
    assert!(rec.renew_time.is_some() && rec.acquire_time.is_some());

    // The watch channels agree with is_leader for a stable leader.
    let (leader, follower) = if a.is_leader() { (&a, &b) } else { (&b, &a) };
    assert!(*leader.subscribe().borrow());
    assert!(!*follower.subscribe().borrow());

    a.shutdown().await?;
    b.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn racing_candidates_on_a_new_lease_elect_exactly_one() -> anyhow::Result<()> {
    let env = Env::new("leader-race").await;
    let handles: Vec<LeaderHandle> = (0..5)
        .map(|i| env.spawn("race", &format!("c{i}"), 2))
        .collect();
    let refs: Vec<&LeaderHandle> = handles.iter().collect();
    any_leader(&refs).await;
    assert_never_two_leaders(&refs, Duration::from_secs(2)).await;
    let holder = env.record("race").await.holder_identity;
    assert!(holder.starts_with('c'), "holder {holder:?}");
    let leaders: Vec<usize> = (0..5).filter(|i| handles[*i].is_leader()).collect();
    assert_eq!(leaders.len(), 1, "{leaders:?}");
    for h in handles {
        h.shutdown().await?;
    }
    Ok(())
}

#[tokio::test]
async fn shutdown_releases_the_lease_like_release_on_cancel() -> anyhow::Result<()> {
    let env = Env::new("leader-release").await;
    let a = env.spawn("rel", "a", 5);
    let mut rx = a.subscribe();
    tokio::time::timeout(WAIT, a.became_leader()).await??;
    let before = env.record("rel").await;
    let rv_before = env.leases().get("rel").await?.metadata.resource_version;
    a.shutdown().await?;
    assert!(!*rx.borrow_and_update(), "leadership published as lost");
    assert!(
        rx.changed().await.is_err(),
        "the channel closes with the task"
    );

    let after = env.record("rel").await;
    assert_eq!(after.holder_identity, "");
    assert_eq!(after.lease_duration_seconds, 1);
    assert_eq!(after.lease_transitions, before.lease_transitions);
    assert!(after.renew_time > before.renew_time);
    assert_ne!(
        env.leases().get("rel").await?.metadata.resource_version,
        rv_before,
        "the release was written"
    );
    Ok(())
}

#[tokio::test]
async fn release_hands_over_within_a_few_retry_periods() -> anyhow::Result<()> {
    let env = Env::new("leader-handover").await;
    // A 5 s lease: a handover well under that can only have come from the release.
    let a = env.spawn("handover", "a", 5);
    tokio::time::timeout(WAIT, a.became_leader()).await??;
    let b = env.spawn("handover", "b", 5);
    // Let b read the lease and settle as a follower.
    assert_never_two_leaders(&[&a, &b], Duration::from_millis(800)).await;
    assert!(a.is_leader() && !b.is_leader());
    let first = env.record("handover").await;
    assert_eq!(
        (first.holder_identity.as_str(), first.lease_transitions),
        ("a", 0)
    );

    let released = Instant::now();
    a.shutdown().await?;
    tokio::time::timeout(WAIT, b.became_leader()).await??;
    let took = released.elapsed();
    assert!(
        took < Duration::from_millis(3500),
        "b took over {took:?} after the release; expected a few 200 ms retry periods"
    );

    let rec = env.record("handover").await;
    assert_eq!(rec.holder_identity, "b");
    assert_eq!(rec.lease_transitions, 1);
    assert_eq!(rec.lease_duration_seconds, 5);
    assert!(rec.acquire_time > first.acquire_time);
    b.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn a_crashed_leader_is_replaced_only_after_the_lease_expires() -> anyhow::Result<()> {
    let env = Env::new("leader-crash").await;
    let a = env.spawn("crash", "a", 2);
    tokio::time::timeout(WAIT, a.became_leader()).await??;
    let b = env.spawn("crash", "b", 2);
    assert_never_two_leaders(&[&a, &b], Duration::from_millis(800)).await;
    assert!(!b.is_leader());

    // Abort right after a renewal lands (seen through a watch), so the lease's last change
    // is "now": b may take over no earlier than one lease duration (2 s) after it.
    let last = env.record("crash").await.renew_time;
    env.wait_record("crash", "a renewal", |rec| rec.renew_time != last)
        .await;
    let renewed = Instant::now();
    a.abort();

    // The aborted task will never renew, so its handle stops claiming leadership at once.
    tokio::time::timeout(Duration::from_secs(5), a.lost_leadership())
        .await
        .expect("a steps down when its task dies");
    assert!(!a.is_leader());
    assert!(!*a.subscribe().borrow());
    tokio::time::timeout(Duration::from_secs(15), b.became_leader())
        .await
        .expect("b takes over")?;
    let took = renewed.elapsed();
    // 2 s lease minus the moment the watch took to deliver the renewal, with margin for a
    // busy machine (load can only make the takeover later).
    assert!(
        took >= Duration::from_millis(1500),
        "b took over {took:?} after a's last renewal, before the 2 s lease expired"
    );
    let rec = env.record("crash").await;
    assert_eq!(rec.holder_identity, "b");
    assert_eq!(rec.lease_transitions, 1);
    // The aborted task dropped its watch sender: waiters are not left hanging.
    assert!(matches!(a.became_leader().await, Err(LeaderError::Stopped)));
    a.lost_leadership().await;
    b.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn failing_renewals_step_down_before_the_lease_could_be_taken() -> anyhow::Result<()> {
    let env = Env::new("leader-failing").await;
    let proxy = FaultProxy::start(&cluster().await.kubeconfig()).await;
    // 4 s lease, 3 s renew deadline; the elector goes through the fault proxy.
    let a = env.spawn_with(proxy.client(&env.ns), "failing", "a", 4);
    let mut rx = a.subscribe();
    tokio::time::timeout(WAIT, a.became_leader()).await??;
    assert!(*rx.borrow_and_update());

    // 500 is not retried by the kube client: every lease request now fails.
    proxy
        .faults()
        .fail_next_matching(100_000, 500, Match::path("/leases/failing"));
    tokio::time::timeout(Duration::from_secs(15), rx.wait_for(|l| !*l)).await??;
    let flipped = Timestamp::now();
    assert!(!a.is_leader());
    assert!(
        proxy.stats().injected_failures > 0,
        "the renewals really failed"
    );

    // Stepped down before a follower could have seen the lease expire: within the lease
    // duration of the last successful renewal.
    let rec = env.record("failing").await;
    assert_eq!(rec.holder_identity, "a", "nobody else wrote the lease");
    let renewed = rec.renew_time.expect("renewTime");
    assert!(
        flipped < renewed + SignedDuration::from_secs(4),
        "stepped down at {flipped}, after the lease (renewed {renewed}, 4 s) expired"
    );

    // When the API server recovers, the lease still names a, so a renews it and leads
    // again without a transition.
    proxy.faults().clear();
    tokio::time::timeout(Duration::from_secs(15), rx.wait_for(|l| *l)).await??;
    let rec = env.record("failing").await;
    assert_eq!(rec.holder_identity, "a");
    assert_eq!(rec.lease_transitions, 0);
    a.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn hanging_renewals_step_down_at_the_renew_deadline() -> anyhow::Result<()> {
    let env = Env::new("leader-hang").await;
    let proxy = FaultProxy::start(&cluster().await.kubeconfig()).await;
    let a = env.spawn_with(proxy.client(&env.ns), "hang", "a", 4);
    tokio::time::timeout(WAIT, a.became_leader()).await??;

    proxy.faults().delay_next_matching(
        100_000,
        Duration::from_secs(60),
        Match::path("/leases/hang"),
    );
    let hung = Instant::now();
    tokio::time::timeout(Duration::from_secs(15), a.lost_leadership()).await?;
    let took = hung.elapsed();
    assert!(
        took < Duration::from_secs(4),
        "a hanging API server kept a leading for {took:?}, past the 4 s lease"
    );
    assert!(!a.is_leader());
    // The lease itself still names a: it was the requests that hung, not a rival.
    assert_eq!(env.record("hang").await.holder_identity, "a");
    proxy.faults().clear();
    a.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn invalid_timings_are_rejected() -> anyhow::Result<()> {
    let env = Env::new("leader-invalid").await;
    let mut cfg = config(&env.ns, "bad", "a", 2);
    cfg.renew_deadline = cfg.lease_duration;
    let err = LeaderElector::new(env.client.clone(), cfg)
        .run(std::future::pending())
        .await
        .unwrap_err();
    assert!(matches!(err, LeaderError::Config(_)), "{err}");
    assert!(
        env.leases().get_opt("bad").await?.is_none(),
        "no lease written"
    );
    assert!(
        env.leases()
            .list(&ListParams::default())
            .await?
            .items
            .is_empty(),
        "no lease at all in the namespace"
    );
    Ok(())
}

#[tokio::test]
async fn the_lease_reads_like_client_gos_for_kubectl() -> anyhow::Result<()> {
    let c = cluster().await;
    let env = Env::new("leader-kubectl").await;
    let ns = env.ns.as_str();
    let a = env.spawn("plugsync", "plugsync-0_abc", 2);
    tokio::time::timeout(WAIT, a.became_leader()).await??;

    // Raw JSON as the API server serves it to any client.
    let request = axum::http::Request::get(format!(
        "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/plugsync"
    ))
    .body(Vec::new())?;
    let body = env.client.request_text(request).await?;
    let lease: Value = serde_json::from_str(&body)?;
    assert_eq!(lease["apiVersion"], "coordination.k8s.io/v1");
    assert_eq!(lease["kind"], "Lease");
    let spec = &lease["spec"];
    assert_eq!(spec["holderIdentity"], "plugsync-0_abc");
    assert_eq!(spec["leaseDurationSeconds"], 2);
    assert_eq!(spec["leaseTransitions"], 0);
    let micro = regex::Regex::new(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")?;
    for field in ["renewTime", "acquireTime"] {
        let s = spec[field].as_str().unwrap_or_default();
        assert!(micro.is_match(s), "{field} {s:?} is not a MicroTime");
        let t: Timestamp = s.parse()?;
        let age = Timestamp::now().duration_since(t);
        assert!(
            age >= SignedDuration::ZERO - SignedDuration::from_secs(1)
                && age < SignedDuration::from_secs(60),
            "{field} {s} is not about now"
        );
    }

    // And through kubectl, an independent client: its table for Leases has a HOLDER column.
    let table = c.kubectl_ok(&["-n", ns, "get", "lease", "plugsync"]);
    let mut rows = table.lines();
    let header: Vec<&str> = rows.next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(header, ["NAME", "HOLDER", "AGE"], "{table}");
    let row: Vec<&str> = rows.next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(row[..2], ["plugsync", "plugsync-0_abc"], "{table}");
    let text = c.kubectl_ok(&[
        "-n",
        ns,
        "get",
        "lease",
        "plugsync",
        "-o",
        "jsonpath={.spec.holderIdentity} {.spec.renewTime} {.spec.leaseDurationSeconds}",
    ]);
    let fields: Vec<&str> = text.split(' ').collect();
    assert_eq!(fields.len(), 3, "{text:?}");
    assert_eq!(fields[0], "plugsync-0_abc");
    assert!(micro.is_match(fields[1]), "{text:?}");
    assert_eq!(fields[2], "2");
    a.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn pod_leader_label_is_set_and_removed() -> anyhow::Result<()> {
    let env = Env::new("leader-label").await;
    let ns = env.ns.as_str();
    let client = env.client.clone();
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "plugsync-0", "labels": {"app": "plugsync"}},
        "spec": {"containers": [{"name": "main", "image": "plugsync:dev"}]}
    }))?;
    pods.create(&PostParams::default(), &pod).await?;
    // A real Pod: scheduled onto the fake node and running, its status written by others
    // while the label is patched.
    wait_for(
        &pods,
        "plugsync-0",
        WAIT,
        "the pod running",
        |p: Option<&Pod>| {
            p.and_then(|p| p.status.as_ref())
                .and_then(|s| s.phase.as_deref())
                == Some("Running")
        },
    )
    .await;
    let labels = |p: Pod| p.metadata.labels.unwrap_or_default();

    set_pod_leader_label(client.clone(), ns, "plugsync-0", true).await?;
    let l = labels(pods.get("plugsync-0").await?);
    assert_eq!(l.get(LEADER_LABEL).map(String::as_str), Some("true"));
    assert_eq!(l.get("app").map(String::as_str), Some("plugsync"));

    // A Service selecting the label finds exactly the leader.
    let selected = pods
        .list(&ListParams::default().labels("plugsync.dev/leader=true"))
        .await?;
    assert_eq!(selected.items.len(), 1);

    set_pod_leader_label(client.clone(), ns, "plugsync-0", false).await?;
    let l = labels(pods.get("plugsync-0").await?);
    assert!(!l.contains_key(LEADER_LABEL), "{l:?}");
    assert_eq!(l.get("app").map(String::as_str), Some("plugsync"));
    // Removing it again is a no-op, not an error.
    set_pod_leader_label(client.clone(), ns, "plugsync-0", false).await?;
    let selected = pods
        .list(&ListParams::default().labels("plugsync.dev/leader=true"))
        .await?;
    assert!(selected.items.is_empty());

    let err = set_pod_leader_label(client, ns, "missing", true)
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 404),
        "{err}"
    );
    Ok(())
}
