//! Leader election on a Lease against the API server double: one leader at a time, handover
//! on release and on expiry, stepping down when renewals fail, and the leader Pod label.
//!
//! Timings are short (lease 2–5 s) but every assertion about *when* something happens is
//! either a safety bound that load cannot break (load only delays a takeover) or a generous
//! upper bound reached by polling.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use plugsync::leader::{
    set_pod_leader_label, LeaderElector, LeaderError, LeaderHandle, LeaderRecord, LeaseConfig,
    LEADER_LABEL,
};
use plugsync::testkit::apiserver::{ApiServer, Match};
use serde_json::{json, Value};

const NS: &str = "default";
const POLL: Duration = Duration::from_millis(10);

/// A config with short timings: `lease` s lease, renew deadline `lease` × 0.75 (at least
/// 1.2 × retry), 200 ms retry period.
fn config(lease_name: &str, identity: &str, lease_secs: u64) -> LeaseConfig {
    LeaseConfig {
        lease_duration: Duration::from_secs(lease_secs),
        renew_deadline: Duration::from_millis(lease_secs * 750),
        retry_period: Duration::from_millis(200),
        ..LeaseConfig::new(lease_name, NS, identity)
    }
}

fn spawn(server: &ApiServer, lease_name: &str, identity: &str, lease_secs: u64) -> LeaderHandle {
    LeaderElector::new(server.client(), config(lease_name, identity, lease_secs)).spawn()
}

/// The lease as stored (bypassing HTTP and faults).
fn stored(server: &ApiServer, name: &str) -> Option<Value> {
    server
        .store()
        .get("coordination.k8s.io/v1", "Lease", Some(NS), name)
}

fn record(server: &ApiServer, name: &str) -> LeaderRecord {
    let v = stored(server, name).expect("the lease exists");
    LeaderRecord::from_lease(&serde_json::from_value::<Lease>(v).unwrap())
}

/// Polls `f` until it is true; panics with `what` after `within`.
async fn eventually(within: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < within, "timed out waiting for: {what}");
        tokio::time::sleep(POLL).await;
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

#[tokio::test]
async fn two_electors_one_leader_named_by_the_lease() -> anyhow::Result<()> {
    let server = ApiServer::start().await?;
    let a = spawn(&server, "two", "a", 2);
    let b = spawn(&server, "two", "b", 2);

    eventually(Duration::from_secs(10), "a leader", || {
        a.is_leader() || b.is_leader()
    })
    .await;
    assert_never_two_leaders(&[&a, &b], Duration::from_secs(3)).await;

    // The lease names whichever replica says it leads, and the other one says it does not.
    eventually(
        Duration::from_secs(10),
        "lease holder == the leader",
        || {
            let holder = record(&server, "two").holder_identity;
            match holder.as_str() {
                "a" => a.is_leader() && !b.is_leader(),
                "b" => b.is_leader() && !a.is_leader(),
                _ => false,
            }
        },
    )
    .await;
    let rec = record(&server, "two");
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
    let server = ApiServer::start().await?;
    let handles: Vec<LeaderHandle> = (0..5)
        .map(|i| spawn(&server, "race", &format!("c{i}"), 2))
        .collect();
    let refs: Vec<&LeaderHandle> = handles.iter().collect();
    eventually(Duration::from_secs(10), "a leader", || {
        refs.iter().any(|h| h.is_leader())
    })
    .await;
    assert_never_two_leaders(&refs, Duration::from_secs(2)).await;
    let holder = record(&server, "race").holder_identity;
    assert!(holder.starts_with('c'), "holder {holder:?}");
    for h in handles {
        h.shutdown().await?;
    }
    Ok(())
}

#[tokio::test]
async fn shutdown_releases_the_lease_like_release_on_cancel() -> anyhow::Result<()> {
    let server = ApiServer::start().await?;
    let a = spawn(&server, "rel", "a", 5);
    let mut rx = a.subscribe();
    tokio::time::timeout(Duration::from_secs(10), a.became_leader()).await??;
    let before = record(&server, "rel");
    a.shutdown().await?;
    assert!(!*rx.borrow_and_update(), "leadership published as lost");
    assert!(
        rx.changed().await.is_err(),
        "the channel closes with the task"
    );

    let after = record(&server, "rel");
    assert_eq!(after.holder_identity, "");
    assert_eq!(after.lease_duration_seconds, 1);
    assert_eq!(after.lease_transitions, before.lease_transitions);
    assert!(after.renew_time > before.renew_time);
    Ok(())
}

#[tokio::test]
async fn release_hands_over_within_a_few_retry_periods() -> anyhow::Result<()> {
    let server = ApiServer::start().await?;
    // A 5 s lease: a handover well under that can only have come from the release.
    let a = spawn(&server, "handover", "a", 5);
    tokio::time::timeout(Duration::from_secs(10), a.became_leader()).await??;
    let b = spawn(&server, "handover", "b", 5);
    // Let b read the lease and settle as a follower.
    assert_never_two_leaders(&[&a, &b], Duration::from_millis(800)).await;
    assert!(a.is_leader() && !b.is_leader());
    let first = record(&server, "handover");
    assert_eq!(
        (first.holder_identity.as_str(), first.lease_transitions),
        ("a", 0)
    );

    let released = Instant::now();
    a.shutdown().await?;
    tokio::time::timeout(Duration::from_secs(10), b.became_leader()).await??;
    let took = released.elapsed();
    assert!(
        took < Duration::from_millis(3500),
        "b took over {took:?} after the release; expected a few 200 ms retry periods"
    );

    let rec = record(&server, "handover");
    assert_eq!(rec.holder_identity, "b");
    assert_eq!(rec.lease_transitions, 1);
    assert_eq!(rec.lease_duration_seconds, 5);
    assert!(rec.acquire_time > first.acquire_time);
    b.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn a_crashed_leader_is_replaced_only_after_the_lease_expires() -> anyhow::Result<()> {
    let server = ApiServer::start().await?;
    let a = spawn(&server, "crash", "a", 2);
    tokio::time::timeout(Duration::from_secs(10), a.became_leader()).await??;
    let b = spawn(&server, "crash", "b", 2);
    assert_never_two_leaders(&[&a, &b], Duration::from_millis(800)).await;
    assert!(!b.is_leader());

    // Abort right after a renewal lands, so the lease's last change is "now": b may take
    // over no earlier than one lease duration (2 s) after it.
    let last = record(&server, "crash").renew_time;
    eventually(Duration::from_secs(10), "a renewal", || {
        record(&server, "crash").renew_time != last
    })
    .await;
    let renewed = Instant::now();
    a.abort();

    // The aborted task will never renew, so its handle stops claiming leadership at once.
    eventually(
        Duration::from_secs(5),
        "a steps down when its task dies",
        || !a.is_leader(),
    )
    .await;
    assert!(!*a.subscribe().borrow());
    let start = Instant::now();
    loop {
        if b.is_leader() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "b never took over"
        );
        tokio::time::sleep(POLL).await;
    }
    let took = renewed.elapsed();
    // 2 s lease minus the 10 ms poll that saw the renewal, with margin for a busy machine
    // (load can only make the takeover later).
    assert!(
        took >= Duration::from_millis(1500),
        "b took over {took:?} after a's last renewal, before the 2 s lease expired"
    );
    let rec = record(&server, "crash");
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
    let server = ApiServer::start().await?;
    // 4 s lease, 3 s renew deadline.
    let a = spawn(&server, "failing", "a", 4);
    let mut rx = a.subscribe();
    tokio::time::timeout(Duration::from_secs(10), a.became_leader()).await??;
    assert!(*rx.borrow_and_update());

    // 500 is not retried by the kube client: every lease request now fails.
    server
        .faults()
        .fail_next_matching(100_000, 500, Match::path("/leases/failing"));
    tokio::time::timeout(Duration::from_secs(15), rx.wait_for(|l| !*l)).await??;
    let flipped = Timestamp::now();
    assert!(!a.is_leader());

    // Stepped down before a follower could have seen the lease expire: within the lease
    // duration of the last successful renewal.
    let rec = record(&server, "failing");
    assert_eq!(rec.holder_identity, "a", "nobody else wrote the lease");
    let renewed = rec.renew_time.expect("renewTime");
    assert!(
        flipped < renewed + SignedDuration::from_secs(4),
        "stepped down at {flipped}, after the lease (renewed {renewed}, 4 s) expired"
    );

    // When the API server recovers, the lease still names a, so a renews it and leads
    // again without a transition.
    server.faults().clear();
    tokio::time::timeout(Duration::from_secs(15), rx.wait_for(|l| *l)).await??;
    let rec = record(&server, "failing");
    assert_eq!(rec.holder_identity, "a");
    assert_eq!(rec.lease_transitions, 0);
    a.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn hanging_renewals_step_down_at_the_renew_deadline() -> anyhow::Result<()> {
    let server = ApiServer::start().await?;
    let a = spawn(&server, "hang", "a", 4);
    tokio::time::timeout(Duration::from_secs(10), a.became_leader()).await??;

    server.faults().delay_next_matching(
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
    server.faults().clear();
    a.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn invalid_timings_are_rejected() -> anyhow::Result<()> {
    let server = ApiServer::start().await?;
    let mut cfg = config("bad", "a", 2);
    cfg.renew_deadline = cfg.lease_duration;
    let err = LeaderElector::new(server.client(), cfg)
        .run(std::future::pending())
        .await
        .unwrap_err();
    assert!(matches!(err, LeaderError::Config(_)), "{err}");
    assert!(stored(&server, "bad").is_none(), "no lease written");
    Ok(())
}

#[tokio::test]
async fn the_lease_reads_like_client_gos_for_kubectl() -> anyhow::Result<()> {
    let server = ApiServer::start().await?;
    let a = spawn(&server, "plugsync", "plugsync-0_abc", 2);
    tokio::time::timeout(Duration::from_secs(10), a.became_leader()).await??;

    // Raw JSON as any client reads it.
    let url = format!(
        "{}/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/plugsync",
        server.url()
    );
    let body = reqwest::get(&url)
        .await?
        .error_for_status()?
        .bytes()
        .await?;
    let lease: Value = serde_json::from_slice(&body)?;
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

    // And through kubectl, when it is installed.
    let bin = PathBuf::from(std::env::var("KUBECTL").unwrap_or_else(|_| "/usr/bin/kubectl".into()));
    if bin.exists() {
        let dir = tempfile::tempdir()?;
        let kubeconfig = dir.path().join("kubeconfig");
        server.write_kubeconfig(&kubeconfig, NS)?;
        let kubectl = |args: &[&str]| {
            let mut c = tokio::process::Command::new(&bin);
            c.args(args)
                .env_clear()
                .env("HOME", dir.path())
                .env("KUBECONFIG", &kubeconfig)
                .kill_on_drop(true);
            c
        };
        let out = kubectl(&["get", "lease", "plugsync"]).output().await?;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let table = String::from_utf8(out.stdout)?;
        assert!(table.contains("HOLDER"), "{table}");
        assert!(table.contains("plugsync-0_abc"), "{table}");
        let out = kubectl(&[
            "get",
            "lease",
            "plugsync",
            "-o",
            "jsonpath={.spec.holderIdentity} {.spec.renewTime}",
        ])
        .output()
        .await?;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout)?;
        let (holder, renew) = text.split_once(' ').unwrap_or_default();
        assert_eq!(holder, "plugsync-0_abc");
        assert!(micro.is_match(renew), "{renew:?}");
    } else {
        eprintln!(
            "note: {} not found; skipping the kubectl part",
            bin.display()
        );
    }
    a.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn pod_leader_label_is_set_and_removed() -> anyhow::Result<()> {
    let server = ApiServer::start().await?;
    let pods: Api<Pod> = Api::namespaced(server.client(), NS);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "plugsync-0", "labels": {"app": "plugsync"}},
        "spec": {"containers": [{"name": "main", "image": "plugsync:dev"}]}
    }))?;
    pods.create(&PostParams::default(), &pod).await?;
    let labels = |p: Pod| p.metadata.labels.unwrap_or_default();

    set_pod_leader_label(server.client(), NS, "plugsync-0", true).await?;
    let l = labels(pods.get("plugsync-0").await?);
    assert_eq!(l.get(LEADER_LABEL).map(String::as_str), Some("true"));
    assert_eq!(l.get("app").map(String::as_str), Some("plugsync"));

    // A Service selecting the label finds exactly the leader.
    let selected = pods
        .list(&kube::api::ListParams::default().labels("plugsync.dev/leader=true"))
        .await?;
    assert_eq!(selected.items.len(), 1);

    set_pod_leader_label(server.client(), NS, "plugsync-0", false).await?;
    let l = labels(pods.get("plugsync-0").await?);
    assert!(!l.contains_key(LEADER_LABEL), "{l:?}");
    assert_eq!(l.get("app").map(String::as_str), Some("plugsync"));
    // Removing it again is a no-op, not an error.
    set_pod_leader_label(server.client(), NS, "plugsync-0", false).await?;

    let err = set_pod_leader_label(server.client(), NS, "missing", true)
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 404),
        "{err}"
    );
    Ok(())
}
