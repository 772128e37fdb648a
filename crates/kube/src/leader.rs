//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several replicas of
//! `plugsync run` only one writes to the cluster at a time.
//!
//! The protocol is client-go's `leaderelection` (so `kubectl get lease` and other tools read the
//! Lease the same way): the Lease names the holder (`holderIdentity`) and how long its claim
//! lasts (`leaseDurationSeconds`), the holder rewrites `renewTime` every `retry_period`, and a
//! candidate takes over only once the lease has gone unrenewed for `leaseDurationSeconds`
//! **by the candidate's own clock**, counted from when it last saw the record change (so no
//! clock synchronisation between nodes is needed). Every write is a replace carrying the
//! `resourceVersion` that was read, so of two candidates racing for an expired lease only one
//! write succeeds; the other gets 409 Conflict and stays a follower.
//!
//! The leader stops considering itself leader `renew_deadline` after the start of its last
//! successful renewal, which is strictly before any other candidate can see the lease expire
//! (`renew_deadline < lease_duration`). [`LeaderHandle::is_leader`] checks that deadline itself,
//! so it is accurate even if the election task has not been scheduled.
//!
//! The decision is a pure function ([`decide`]) of what was observed and when; the I/O loop
//! around it only reads and writes the Lease.
//!
//! Graceful shutdown (SIGTERM): stop starting new work, let the write in flight finish, then
//! call [`LeaderHandle::shutdown`], which releases the lease (empty `holderIdentity`,
//! `leaseDurationSeconds: 1`, like client-go's `ReleaseOnCancel`) so a standby takes over
//! within a retry period instead of a whole lease duration.
//!
//! ```no_run
//! # async fn demo(client: kube::Client) -> Result<(), plugsync_kube::leader::LeaderError> {
//! use plugsync_kube::leader::{LeaderElector, LeaseConfig};
//! let config = LeaseConfig::new("plugsync", "dify", "plugsync-0_1a2b3c");
//! let leader = LeaderElector::new(client, config).spawn();
//! let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
//!     .expect("a SIGTERM handler");
//! loop {
//!     tokio::select! {
//!         _ = sigterm.recv() => break,
//!         became = leader.became_leader() => if became.is_err() { break },
//!     }
//!     // Leader: apply until leadership is lost or SIGTERM; an apply in flight finishes first.
//!     tokio::select! {
//!         _ = leader.lost_leadership() => continue,
//!         _ = sigterm.recv() => break,
//!     }
//! }
//! leader.shutdown().await // releases the lease
//! # }
//! ```

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use rand::Rng;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

/// The Pod label a Service selects to send webhooks and build-context downloads to the leader.
pub const LEADER_LABEL: &str = "plugsync.dev/leader";

/// client-go's jitter factor for the follower's retry period: spreads candidates out so they
/// do not all hit the API server in the same instant.
const JITTER_FACTOR: f64 = 1.2;

/// Errors of leader election.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// The timings cannot guarantee a single leader (see [`LeaseConfig::validate`]).
    #[error("invalid leader election config: {0}")]
    Config(String),
    /// Releasing the lease on shutdown failed; standbys take over once it expires.
    #[error("releasing lease {namespace}/{name}: {source}")]
    Release {
        /// Lease namespace.
        namespace: String,
        /// Lease name.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Releasing the lease on shutdown did not finish within `renew_deadline`.
    #[error("releasing lease {namespace}/{name}: timed out")]
    ReleaseTimeout {
        /// Lease namespace.
        namespace: String,
        /// Lease name.
        name: String,
    },
    /// The election task is gone (it finished, panicked or was aborted).
    #[error("the leader election task has stopped")]
    Stopped,
}

/// Where the lease lives, who we are, and the timings (client-go's names and meanings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseConfig {
    /// Lease name; every replica must use the same one.
    pub name: String,
    /// Lease namespace.
    pub namespace: String,
    /// This replica's identity, unique among replicas (e.g. pod name plus a random suffix, so
    /// that a restarted pod does not mistake its predecessor's lease for its own).
    pub identity: String,
    /// How long a follower waits, after last seeing the lease change, before taking it over.
    /// Written to the lease in whole seconds (rounded up).
    pub lease_duration: Duration,
    /// How long the leader keeps trying to renew before it gives up leadership.
    pub renew_deadline: Duration,
    /// How often candidates try to acquire and the leader renews.
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// client-go's defaults: 15 s lease, 10 s renew deadline, 2 s retry period.
    pub fn new(
        name: impl Into<String>,
        namespace: impl Into<String>,
        identity: impl Into<String>,
    ) -> Self {
        LeaseConfig {
            name: name.into(),
            namespace: namespace.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    /// Checks what mutual exclusion relies on (client-go's checks): the leader must give up
    /// (`renew_deadline`) before followers can take over (`lease_duration`), and must get more
    /// than one (jittered) retry within its deadline.
    pub fn validate(&self) -> Result<(), LeaderError> {
        let bad = |m: String| Err(LeaderError::Config(m));
        if self.name.is_empty() || self.namespace.is_empty() {
            return bad("lease name and namespace must not be empty".into());
        }
        if self.identity.is_empty() {
            return bad("identity must not be empty".into());
        }
        if self.retry_period.is_zero() {
            return bad("retry_period must be positive".into());
        }
        if self.lease_duration <= self.renew_deadline {
            return bad(format!(
                "lease_duration ({:?}) must be greater than renew_deadline ({:?})",
                self.lease_duration, self.renew_deadline
            ));
        }
        if self.renew_deadline <= self.retry_period.mul_f64(JITTER_FACTOR) {
            return bad(format!(
                "renew_deadline ({:?}) must be greater than {JITTER_FACTOR} × retry_period ({:?})",
                self.renew_deadline, self.retry_period
            ));
        }
        if lease_seconds(self.lease_duration) == i32::MAX {
            return bad("lease_duration is too long".into());
        }
        Ok(())
    }
}

/// `leaseDurationSeconds` for a duration: rounded up, so a follower never waits less than
/// the leader's configured duration.
fn lease_seconds(d: Duration) -> i32 {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    i32::try_from(s).unwrap_or(i32::MAX)
}

/// Now, truncated to microseconds: the Lease stores MicroTime, and a record compared with
/// what the server echoes back must not differ in the nanoseconds.
fn micro_now() -> Timestamp {
    let now = Timestamp::now();
    Timestamp::from_microsecond(now.as_microsecond()).unwrap_or(now)
}

/// The leader election fields of a Lease (client-go's `LeaderElectionRecord`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaderRecord {
    /// The holder; empty when nobody holds the lease (e.g. after a release).
    pub holder_identity: String,
    /// How long followers wait, after last seeing a change, before taking over.
    pub lease_duration_seconds: i32,
    /// When the current holder acquired it.
    pub acquire_time: Option<Timestamp>,
    /// When the holder last renewed it.
    pub renew_time: Option<Timestamp>,
    /// How many times the lease changed hands.
    pub lease_transitions: i32,
}

impl LeaderRecord {
    /// Reads the record from a Lease (missing fields read as empty/zero).
    pub fn from_lease(lease: &Lease) -> Self {
        let spec = lease.spec.clone().unwrap_or_default();
        LeaderRecord {
            holder_identity: spec.holder_identity.unwrap_or_default(),
            lease_duration_seconds: spec.lease_duration_seconds.unwrap_or(0),
            acquire_time: spec.acquire_time.map(|t| t.0),
            renew_time: spec.renew_time.map(|t| t.0),
            lease_transitions: spec.lease_transitions.unwrap_or(0),
        }
    }

    /// Writes the record into a lease spec, keeping the fields leader election does not own
    /// (`strategy`, `preferredHolder`).
    fn write_to(&self, spec: &mut LeaseSpec) {
        spec.holder_identity = Some(self.holder_identity.clone());
        spec.lease_duration_seconds = Some(self.lease_duration_seconds);
        spec.acquire_time = self.acquire_time.map(MicroTime);
        spec.renew_time = self.renew_time.map(MicroTime);
        spec.lease_transitions = Some(self.lease_transitions);
    }

    /// The record a leader writes to give the lease up (client-go's `ReleaseOnCancel`):
    /// nobody holds it, and the 1 s duration makes followers that still saw a holder wait
    /// at most a second.
    fn released(&self, wall: Timestamp) -> Self {
        LeaderRecord {
            holder_identity: String::new(),
            lease_duration_seconds: 1,
            acquire_time: Some(wall),
            renew_time: Some(wall),
            lease_transitions: self.lease_transitions,
        }
    }
}

/// The last distinct record this candidate saw, and when, by its own monotonic clock.
#[derive(Debug, Clone, Default)]
struct Observer {
    last: Option<(LeaderRecord, Instant)>,
}

impl Observer {
    /// Notes a record read or written at `now`; the clock restarts only if it changed, so an
    /// unrenewed lease keeps ageing across reads. Returns whether it changed.
    fn observe(&mut self, record: &LeaderRecord, now: Instant) -> bool {
        match &self.last {
            Some((seen, _)) if seen == record => false,
            _ => {
                self.last = Some((record.clone(), now));
                true
            }
        }
    }

    /// Whether the observed record has gone unchanged for its own `leaseDurationSeconds`.
    fn expired(&self, now: Instant) -> bool {
        match &self.last {
            None => true,
            Some((record, seen_at)) => {
                let secs = u64::try_from(record.lease_duration_seconds).unwrap_or(0);
                now.saturating_duration_since(*seen_at) >= Duration::from_secs(secs)
            }
        }
    }

    fn holder(&self) -> Option<&str> {
        self.last.as_ref().map(|(r, _)| r.holder_identity.as_str())
    }
}

/// What a candidate does after reading the lease.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Action {
    /// No lease yet: create it, holding it.
    Create(LeaderRecord),
    /// We hold it: write a fresh `renewTime`.
    Renew(LeaderRecord),
    /// Free (released) or expired: take it over.
    Acquire(LeaderRecord),
    /// Someone else holds a live lease: stay a follower.
    Follow {
        /// The current holder.
        holder: String,
    },
}

/// The core of client-go's `tryAcquireOrRenew`, without I/O: given the lease just read
/// (`None` when there is none), what to write. Updates `observer` with what was read.
fn decide(
    observer: &mut Observer,
    current: Option<&LeaderRecord>,
    me: &str,
    lease_duration_seconds: i32,
    now: Instant,
    wall: Timestamp,
) -> Action {
    let fresh = |acquire_time, transitions| LeaderRecord {
        holder_identity: me.to_string(),
        lease_duration_seconds,
        acquire_time: Some(acquire_time),
        renew_time: Some(wall),
        lease_transitions: transitions,
    };
    let Some(current) = current else {
        return Action::Create(fresh(wall, 0));
    };
    observer.observe(current, now);
    if current.holder_identity == me {
        return Action::Renew(fresh(
            current.acquire_time.unwrap_or(wall),
            current.lease_transitions,
        ));
    }
    if !current.holder_identity.is_empty() && !observer.expired(now) {
        return Action::Follow {
            holder: current.holder_identity.clone(),
        };
    }
    Action::Acquire(fresh(wall, current.lease_transitions.saturating_add(1)))
}

/// The follower's wait between attempts: `retry_period` plus up to 120% jitter (client-go's
/// `JitterUntil(retryPeriod, 1.2)`). `r` is uniform in `[0, 1)`.
fn jittered(retry_period: Duration, r: f64) -> Duration {
    retry_period + retry_period.mul_f64(JITTER_FACTOR * r.clamp(0.0, 1.0))
}

/// While leader, the instant leadership lapses unless renewed; shared with handles so they
/// can answer "may I write now?" exactly, whatever the election task is doing.
#[derive(Debug, Clone, Default)]
struct Validity(Arc<Mutex<Option<Instant>>>);

impl Validity {
    fn get(&self) -> Option<Instant> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is_leader(&self) -> bool {
        self.get().is_some_and(|t| Instant::now() < t)
    }
}

/// The election task's side of leadership: only the task holds the watch sender, so
/// receivers learn when the task is gone.
#[derive(Debug)]
struct Publisher {
    tx: watch::Sender<bool>,
    validity: Validity,
}

impl Publisher {
    fn new() -> Self {
        Publisher {
            tx: watch::channel(false).0,
            validity: Validity::default(),
        }
    }

    /// Leader until `until` (`Some`), or not leader (`None`).
    fn set(&self, until: Option<Instant>) {
        *self.validity.0.lock().unwrap_or_else(|e| e.into_inner()) = until;
        self.tx.send_if_modified(|v| {
            let changed = *v != until.is_some();
            *v = until.is_some();
            changed
        });
    }
}

impl Drop for Publisher {
    /// A task that ends however (shutdown, abort, panic) will not renew: not leader.
    fn drop(&mut self) {
        self.set(None);
    }
}

/// Outcome of one attempt to acquire or renew.
enum Attempt {
    /// We hold the lease now.
    Held,
    /// Someone else does.
    Follower(String),
    /// The attempt failed (API error, or lost a race: 409).
    Failed,
}

/// One replica's side of leader election; run it with [`run`](Self::run) or
/// [`spawn`](Self::spawn).
pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaseConfig,
    observer: Observer,
    /// The last lease read or written, for its resourceVersion (optimistic concurrency).
    lease: Option<Lease>,
    leadership: Publisher,
}

impl LeaderElector {
    /// An elector for `config`'s lease; does nothing until run.
    pub fn new(client: kube::Client, config: LeaseConfig) -> Self {
        LeaderElector {
            api: Api::namespaced(client, &config.namespace),
            config,
            observer: Observer::default(),
            lease: None,
            leadership: Publisher::new(),
        }
    }

    /// Leadership as a watch channel (`true` while leader), for callers of [`run`](Self::run).
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.leadership.tx.subscribe()
    }

    /// Runs the election on a task; the handle observes leadership and stops it.
    pub fn spawn(self) -> LeaderHandle {
        let rx = self.subscribe();
        let validity = self.leadership.validity.clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(self.run(async move {
            let _ = stopped.await;
        }));
        LeaderHandle {
            rx,
            validity,
            stop: Some(stop),
            task,
        }
    }

    /// Campaigns, holds and renews the lease until `shutdown` resolves, then releases it if
    /// held. Leadership is published on [`subscribe`](Self::subscribe) and goes `false` before
    /// the release is written. An attempt in flight when `shutdown` resolves finishes first (it
    /// is bounded by `renew_deadline`), so the release sees the lease as it really is.
    /// Fails only on an invalid config or a failed release.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<(), LeaderError> {
        self.config.validate()?;
        tokio::pin!(shutdown);
        info!(
            lease = %self.config.name, namespace = %self.config.namespace,
            identity = %self.config.identity, "leader election started"
        );
        loop {
            let started = Instant::now();
            let deadline = match self.leadership.validity.get() {
                Some(until) => until,
                None => started + self.config.renew_deadline,
            };
            let attempt = tokio::time::timeout_at(deadline.into(), self.try_acquire_or_renew())
                .await
                .unwrap_or_else(|_| {
                    warn!(lease = %self.config.name, "lease request timed out");
                    Attempt::Failed
                });
            let was_leader = *self.leadership.tx.borrow();
            match attempt {
                Attempt::Held => {
                    self.leadership
                        .set(Some(started + self.config.renew_deadline));
                    if !was_leader {
                        info!(
                            lease = %self.config.name, identity = %self.config.identity,
                            "became leader"
                        );
                    }
                }
                Attempt::Follower(holder) => {
                    if was_leader {
                        self.lose(&format!("lease taken over by {holder}"));
                    }
                }
                Attempt::Failed => {
                    if was_leader && Instant::now() >= deadline {
                        self.lose("could not renew within renew_deadline");
                    }
                }
            }
            // Wait for the next attempt; a leader also wakes at its deadline to step down on
            // time even if the next attempt were to hang.
            let until = self.leadership.validity.get();
            let next = match until {
                Some(t) => (Instant::now() + self.config.retry_period).min(t),
                None => Instant::now() + jittered(self.config.retry_period, rand::rng().random()),
            };
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                _ = tokio::time::sleep_until(next.into()) => {}
            }
            if until.is_some_and(|t| Instant::now() >= t) {
                self.lose("could not renew within renew_deadline");
            }
        }
        self.release().await
    }

    /// Steps down: flips leadership to false at once.
    fn lose(&self, why: &str) {
        if self.leadership.validity.get().is_some() {
            self.leadership.set(None);
            info!(
                lease = %self.config.name, identity = %self.config.identity, reason = why,
                "leadership lost"
            );
        }
    }

    /// One round of client-go's `tryAcquireOrRenew`: read, decide, write with the read
    /// resourceVersion.
    async fn try_acquire_or_renew(&mut self) -> Attempt {
        let current = match self.api.get_opt(&self.config.name).await {
            Ok(l) => l,
            Err(e) => {
                warn!(lease = %self.config.name, error = %e, "reading the lease failed");
                return Attempt::Failed;
            }
        };
        let now = Instant::now();
        let record = current.as_ref().map(LeaderRecord::from_lease);
        let before = self.observer.holder().map(str::to_string);
        let action = decide(
            &mut self.observer,
            record.as_ref(),
            &self.config.identity,
            lease_seconds(self.config.lease_duration),
            now,
            micro_now(),
        );
        if let Some(record) = &record {
            if before.as_deref() != Some(record.holder_identity.as_str())
                && record.holder_identity != self.config.identity
                && !record.holder_identity.is_empty()
            {
                info!(
                    lease = %self.config.name, leader = %record.holder_identity,
                    "observed leader"
                );
            }
        }
        self.lease = current;
        let (written, result) = match action {
            Action::Follow { holder } => return Attempt::Follower(holder),
            Action::Create(record) => {
                let mut spec = LeaseSpec::default();
                record.write_to(&mut spec);
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.config.name.clone()),
                        namespace: Some(self.config.namespace.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(spec),
                };
                (
                    record,
                    self.api.create(&PostParams::default(), &lease).await,
                )
            }
            Action::Renew(record) | Action::Acquire(record) => {
                let mut lease = self.lease.clone().unwrap_or_default();
                record.write_to(lease.spec.get_or_insert_with(LeaseSpec::default));
                (
                    record,
                    self.api
                        .replace(&self.config.name, &PostParams::default(), &lease)
                        .await,
                )
            }
        };
        match result {
            Ok(lease) => {
                self.observer.observe(&written, Instant::now());
                self.lease = Some(lease);
                Attempt::Held
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                debug!(lease = %self.config.name, "lost the race for the lease (409)");
                Attempt::Failed
            }
            Err(e) => {
                warn!(lease = %self.config.name, error = %e, "writing the lease failed");
                Attempt::Failed
            }
        }
    }

    /// Gives the lease up if the last lease we saw names us; a 409 means someone else has
    /// written it since, so there is nothing of ours to release.
    async fn release(mut self) -> Result<(), LeaderError> {
        self.lose("shutting down");
        let Some(mut lease) = self.lease.take() else {
            return Ok(());
        };
        let record = LeaderRecord::from_lease(&lease);
        if record.holder_identity != self.config.identity {
            return Ok(());
        }
        record
            .released(micro_now())
            .write_to(lease.spec.get_or_insert_with(LeaseSpec::default));
        let (name, namespace) = (self.config.name.clone(), self.config.namespace.clone());
        let pp = PostParams::default();
        let put = self.api.replace(&name, &pp, &lease);
        match tokio::time::timeout(self.config.renew_deadline, put).await {
            Ok(Ok(_)) => {
                info!(lease = %name, identity = %self.config.identity, "released the lease");
                Ok(())
            }
            Ok(Err(kube::Error::Api(s))) if s.code == 409 => Ok(()),
            Ok(Err(source)) => Err(LeaderError::Release {
                namespace,
                name,
                source,
            }),
            Err(_) => Err(LeaderError::ReleaseTimeout { namespace, name }),
        }
    }
}

/// A spawned [`LeaderElector`]: observe leadership, await transitions, stop it.
#[derive(Debug)]
pub struct LeaderHandle {
    rx: watch::Receiver<bool>,
    validity: Validity,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), LeaderError>>,
}

impl LeaderHandle {
    /// Whether this replica may write now. Checks the renewal deadline itself, so it turns
    /// false on time even if the election task is starved or gone; check it right before
    /// each write.
    pub fn is_leader(&self) -> bool {
        self.validity.is_leader()
    }

    /// Leadership as a watch channel: `true` while leader. When the election task ends
    /// (shutdown, abort, panic) it goes `false` and the channel closes.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.rx.clone()
    }

    /// Resolves once this replica is leader (at once if it already is);
    /// [`LeaderError::Stopped`] if the election has ended instead.
    pub async fn became_leader(&self) -> Result<(), LeaderError> {
        let mut rx = self.subscribe();
        rx.wait_for(|l| *l)
            .await
            .map(|_| ())
            .map_err(|_| LeaderError::Stopped)
    }

    /// Resolves once this replica is not leader (at once if it is not), or the election has
    /// ended: the point where the caller must stop writing.
    pub async fn lost_leadership(&self) {
        let mut rx = self.subscribe();
        let _ = rx.wait_for(|l| !*l).await;
    }

    /// Stops the election after the attempt in flight and releases the lease if held, so a
    /// standby takes over within a retry period. Call after the last write has finished.
    pub async fn shutdown(mut self) -> Result<(), LeaderError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.map_err(|_| LeaderError::Stopped)?
    }

    /// Kills the election without releasing the lease (as a crash would): followers take
    /// over only once it expires. Leadership turns false as soon as the task is dropped.
    pub fn abort(&self) {
        self.task.abort();
    }
}

/// Puts `plugsync.dev/leader: "true"` on the Pod (or removes it), so a Service selecting the
/// label routes webhooks and build-context downloads to the leader only. A JSON merge patch,
/// so other labels are left alone; removing an absent label is a no-op.
pub async fn set_pod_leader_label(
    client: kube::Client,
    namespace: &str,
    pod_name: &str,
    is_leader: bool,
) -> Result<(), kube::Error> {
    let value = if is_leader {
        serde_json::Value::from("true")
    } else {
        serde_json::Value::Null
    };
    let patch = serde_json::json!({"metadata": {"labels": {LEADER_LABEL: value}}});
    Api::<Pod>::namespaced(client, namespace)
        .patch(pod_name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    info!(
        pod = pod_name,
        namespace, is_leader, "set the pod's leader label"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: &str = "me";

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).unwrap()
    }

    fn held_by(holder: &str, renew: i64, transitions: i32) -> LeaderRecord {
        LeaderRecord {
            holder_identity: holder.into(),
            lease_duration_seconds: 15,
            acquire_time: Some(ts(0)),
            renew_time: Some(ts(renew)),
            lease_transitions: transitions,
        }
    }

    fn config() -> LeaseConfig {
        LeaseConfig::new("plugsync", "dify", ME)
    }

    #[test]
    fn defaults_are_client_go_and_valid() {
        let c = config();
        assert_eq!(c.lease_duration, Duration::from_secs(15));
        assert_eq!(c.renew_deadline, Duration::from_secs(10));
        assert_eq!(c.retry_period, Duration::from_secs(2));
        c.validate().unwrap();
    }

    #[test]
    fn validate_rejects_timings_that_allow_two_leaders() {
        let mut c = config();
        c.renew_deadline = c.lease_duration;
        assert!(matches!(c.validate(), Err(LeaderError::Config(_))));
        let mut c = config();
        c.retry_period = Duration::from_secs(9); // 1.2 × 9 > 10
        assert!(c.validate().is_err());
        let mut c = config();
        c.retry_period = Duration::ZERO;
        assert!(c.validate().is_err());
        let mut c = config();
        c.identity.clear();
        assert!(c.validate().is_err());
    }

    #[test]
    fn lease_seconds_round_up() {
        assert_eq!(lease_seconds(Duration::from_secs(15)), 15);
        assert_eq!(lease_seconds(Duration::from_millis(2500)), 3);
        assert_eq!(lease_seconds(Duration::from_millis(1)), 1);
    }

    #[test]
    fn micro_now_has_no_sub_microsecond_part() {
        assert_eq!(micro_now().subsec_nanosecond() % 1000, 0);
    }

    #[test]
    fn jitter_stays_within_client_go_bounds() {
        let p = Duration::from_secs(2);
        assert_eq!(jittered(p, 0.0), p);
        assert_eq!(jittered(p, 0.5), Duration::from_millis(3200));
        assert!(jittered(p, 0.999_999) < Duration::from_millis(4400));
    }

    #[test]
    fn no_lease_creates_one_held_by_me() {
        let mut o = Observer::default();
        let a = decide(&mut o, None, ME, 15, Instant::now(), ts(5));
        assert_eq!(
            a,
            Action::Create(LeaderRecord {
                holder_identity: ME.into(),
                lease_duration_seconds: 15,
                acquire_time: Some(ts(5)),
                renew_time: Some(ts(5)),
                lease_transitions: 0,
            })
        );
    }

    #[test]
    fn live_lease_of_another_is_followed() {
        let mut o = Observer::default();
        let t0 = Instant::now();
        let other = held_by("other", 0, 3);
        // First sight starts the clock: even a lease whose renewTime is old by the wall clock
        // is not taken over, because clocks of different nodes are not compared.
        let a = decide(&mut o, Some(&other), ME, 15, t0, ts(1000));
        assert_eq!(
            a,
            Action::Follow {
                holder: "other".into()
            }
        );
        let a = decide(
            &mut o,
            Some(&other),
            ME,
            15,
            t0 + Duration::from_secs(14),
            ts(1014),
        );
        assert!(matches!(a, Action::Follow { .. }));
    }

    #[test]
    fn unrenewed_lease_is_taken_over_after_its_duration_by_my_clock() {
        let mut o = Observer::default();
        let t0 = Instant::now();
        let other = held_by("other", 0, 3);
        decide(&mut o, Some(&other), ME, 15, t0, ts(0));
        let a = decide(
            &mut o,
            Some(&other),
            ME,
            15,
            t0 + Duration::from_secs(15),
            ts(15),
        );
        assert_eq!(
            a,
            Action::Acquire(LeaderRecord {
                holder_identity: ME.into(),
                lease_duration_seconds: 15,
                acquire_time: Some(ts(15)),
                renew_time: Some(ts(15)),
                lease_transitions: 4,
            })
        );
    }

    #[test]
    fn a_renewal_restarts_the_clock() {
        let mut o = Observer::default();
        let t0 = Instant::now();
        decide(&mut o, Some(&held_by("other", 0, 0)), ME, 15, t0, ts(0));
        // Renewed at t0+10: the lease is good until t0+25 by our clock.
        let renewed = held_by("other", 10, 0);
        let a = decide(
            &mut o,
            Some(&renewed),
            ME,
            15,
            t0 + Duration::from_secs(10),
            ts(10),
        );
        assert!(matches!(a, Action::Follow { .. }));
        let a = decide(
            &mut o,
            Some(&renewed),
            ME,
            15,
            t0 + Duration::from_secs(24),
            ts(24),
        );
        assert!(matches!(a, Action::Follow { .. }));
        let a = decide(
            &mut o,
            Some(&renewed),
            ME,
            15,
            t0 + Duration::from_secs(25),
            ts(25),
        );
        assert!(matches!(a, Action::Acquire(_)));
    }

    #[test]
    fn the_records_own_duration_counts_not_mine() {
        let mut o = Observer::default();
        let t0 = Instant::now();
        let mut other = held_by("other", 0, 0);
        other.lease_duration_seconds = 60;
        decide(&mut o, Some(&other), ME, 15, t0, ts(0));
        let a = decide(
            &mut o,
            Some(&other),
            ME,
            15,
            t0 + Duration::from_secs(30),
            ts(30),
        );
        assert!(matches!(a, Action::Follow { .. }));
    }

    #[test]
    fn released_lease_is_acquired_at_once() {
        let mut o = Observer::default();
        let t0 = Instant::now();
        decide(&mut o, Some(&held_by("other", 0, 2)), ME, 15, t0, ts(0));
        let released = held_by("other", 0, 2).released(ts(3));
        assert_eq!(released.holder_identity, "");
        assert_eq!(released.lease_duration_seconds, 1);
        assert_eq!(released.lease_transitions, 2);
        let a = decide(
            &mut o,
            Some(&released),
            ME,
            15,
            t0 + Duration::from_secs(3),
            ts(3),
        );
        match a {
            Action::Acquire(r) => {
                assert_eq!(r.holder_identity, ME);
                assert_eq!(r.lease_transitions, 3);
                assert_eq!(r.acquire_time, Some(ts(3)));
            }
            other => panic!("expected Acquire, got {other:?}"),
        }
    }

    #[test]
    fn my_lease_is_renewed_keeping_acquire_time_and_transitions() {
        let mut o = Observer::default();
        let mine = held_by(ME, 4, 7);
        let a = decide(&mut o, Some(&mine), ME, 15, Instant::now(), ts(6));
        assert_eq!(
            a,
            Action::Renew(LeaderRecord {
                holder_identity: ME.into(),
                lease_duration_seconds: 15,
                acquire_time: Some(ts(0)),
                renew_time: Some(ts(6)),
                lease_transitions: 7,
            })
        );
    }

    #[test]
    fn observer_ignores_rereads_of_the_same_record() {
        let mut o = Observer::default();
        let t0 = Instant::now();
        let r = held_by("other", 0, 0);
        assert!(o.observe(&r, t0));
        assert!(!o.observe(&r, t0 + Duration::from_secs(5)));
        assert!(!o.expired(t0 + Duration::from_secs(14)));
        assert!(o.expired(t0 + Duration::from_secs(15)));
        assert!(Observer::default().expired(t0));
    }

    #[test]
    fn record_round_trips_through_a_lease() {
        let rec = held_by("other", 9, 2);
        let mut spec = LeaseSpec {
            strategy: Some("OldestEmulationVersion".into()),
            ..LeaseSpec::default()
        };
        rec.write_to(&mut spec);
        assert_eq!(spec.strategy.as_deref(), Some("OldestEmulationVersion"));
        let lease = Lease {
            metadata: ObjectMeta::default(),
            spec: Some(spec),
        };
        assert_eq!(LeaderRecord::from_lease(&lease), rec);
        assert_eq!(
            LeaderRecord::from_lease(&Lease::default()),
            LeaderRecord::default()
        );
    }

    #[test]
    fn leadership_turns_false_at_the_deadline_without_the_task() {
        let p = Publisher::new();
        let rx = p.tx.subscribe();
        let v = p.validity.clone();
        assert!(!v.is_leader());
        p.set(Some(Instant::now() + Duration::from_secs(60)));
        assert!(v.is_leader());
        assert!(*rx.borrow());
        p.set(Some(Instant::now() - Duration::from_millis(1)));
        assert!(!v.is_leader(), "a past deadline is not leadership");
        p.set(None);
        assert!(!*rx.borrow());
        drop(p);
        assert!(rx.has_changed().is_err(), "receivers see the task end");
    }
}
