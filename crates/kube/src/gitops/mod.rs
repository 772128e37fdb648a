//! The git loop of `plugsync run`: follow a branch (or watch a folder), and apply each good
//! commit's PluginSet and Plugins to the cluster; the plugin controller does the rest.
//!
//! One pass: fetch (an unchanged branch costs one round trip and ends the pass) → load,
//! resolve and render with the same [`pipeline`](plugsync_core::pipeline) as `plugsync diff` → apply
//! by server-side apply and prune → publish the PluginSet status. A bad commit (invalid
//! plugins.yaml, stale lock, template error) changes nothing in the cluster: the status says
//! which commit, file, line and why, and the next good commit proceeds.
//!
//! Between passes the loop watches the PluginSet and its Plugins (`set_watch.rs`): on a change it
//! recomputes the status (written only when it differs), re-applies while old versions are
//! held for upgrades, and honours the `plugsync.dev/suspend` and
//! `plugsync.dev/reconcile-requested-at` annotations; nothing is polled but git. It wakes at
//! once on a webhook or a folder change (local mode) too. A pass is never interrupted: on
//! shutdown the apply in flight finishes first.

mod set_watch;
pub mod status;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};
use rand::SeedableRng;
use serde_json::{json, Value};
use tokio::sync::{watch, Notify};
use tracing::{debug, info, warn};

use crate::apply::{Applier, ApplyOptions, Outcome};
use crate::controller::reconcile::{kube_conditions, status_merge_patch};
use crate::error::GitError;
use crate::metrics::{FetchOutcome, Metrics, ReconcileResult};
use crate::server::Readiness;
use plugsync_core::crd::PluginSetResource;
use plugsync_core::crd::{Plugin, PluginPhase, PluginSetStatus};
use plugsync_core::error::Error;
use plugsync_core::model::LockState;
use plugsync_core::model::PluginSet;
use plugsync_core::pipeline::{self, join, parent_dir};
use plugsync_core::render::{RenderSettings, LABEL_PLUGINSET};
use plugsync_core::resolve::cache::Cache;
use plugsync_core::resolve::Resolver;
use plugsync_core::source::remote::{
    poll_delay, CommitAuthor, GitAuth, RemoteError, RemoteRepo, SyncOutcome,
};
use plugsync_core::source::{GitRevision, Snapshot, SnapshotError, WorkTree};
use status::{compose, status_errors, PassResult, PhaseCounts};

/// Set to `"true"` on the PluginSet to pause the loop (nothing fetched or applied).
pub(crate) const ANNOTATION_SUSPEND: &str = "plugsync.dev/suspend";
/// Set to any new value on the PluginSet to request a reconcile now (as Flux's
/// `reconcile.fluxcd.io/requestedAt`).
pub(crate) const ANNOTATION_RECONCILE_REQUESTED: &str = "plugsync.dev/reconcile-requested-at";

/// Where the declared set comes from.
#[derive(Debug, Clone)]
pub enum RepoSource {
    /// A folder on disk, watched for changes (development).
    Local {
        /// The repository folder.
        root: PathBuf,
    },
    /// A branch of a remote git repository.
    Git {
        /// `https://`, `ssh://`, `git@host:path` or `git://` URL (no credentials in it).
        url: String,
        /// The branch to follow.
        branch: String,
        /// A Secret in the loop's namespace with the credentials (Flux's key names).
        secret: Option<String>,
        /// Where the bare clone is kept.
        work_dir: PathBuf,
    },
}

/// How the loop runs.
#[derive(Debug, Clone)]
pub struct LoopConfig {
    /// The repository.
    pub source: RepoSource,
    /// The folder of the repository holding plugins.yaml (`""` for the top).
    pub path: String,
    /// The declared set's file name.
    pub file: String,
    /// The namespace plugsync manages; the set must declare it.
    pub namespace: String,
    /// Time between polls of the remote.
    pub interval: Duration,
    /// Bound on each git network operation (listing the branch, fetching, pushing).
    pub git_timeout: Duration,
    /// Random spread of the poll interval (0.1: ±10 %), so replicas of many installs do not
    /// poll a git server in lockstep.
    pub jitter: f64,
    /// Time between full passes even when nothing changed (drift correction).
    pub resync: Duration,
    /// Suspended by flag: nothing is fetched or applied.
    pub suspend: bool,
    /// Install or update the CRDs before the first apply (needs cluster-wide RBAC).
    pub install_crds: bool,
    /// Commit built image digests back to the branch's plugins.lock (git mode only).
    pub commit_lock: Option<LockCommit>,
}

/// How the loop commits recorded image digests back to the branch.
#[derive(Debug, Clone)]
pub struct LockCommit {
    /// Author and committer of the commit.
    pub author: CommitAuthor,
    /// The commit message.
    pub message: String,
}

impl LoopConfig {
    /// The declared set's path inside the repository.
    pub(crate) fn file_path(&self) -> String {
        let dir = self.path.trim_matches('/');
        if dir.is_empty() || dir == "." {
            self.file.clone()
        } else {
            format!("{dir}/{}", self.file)
        }
    }
}

/// What was last applied, kept to re-apply while upgrades are held.
struct Applied {
    set: PluginSet,
    objects: Vec<Value>,
    commit: String,
    /// The commit's lock (with the images it pins), and its path in the repository.
    lock: plugsync_core::model::PluginLock,
    lock_path: String,
}

/// The loop and its state between passes.
pub struct GitOps {
    client: Client,
    config: LoopConfig,
    resolver: Arc<Resolver>,
    settings: RenderSettings,
    cache: Cache,
    metrics: Arc<Metrics>,
    remote: Option<Arc<Mutex<RemoteRepo>>>,
    applier: Applier,
    crds_installed: bool,
    /// The commit whose pass completed (applied, or found bad): an unchanged branch skips.
    done_commit: Option<String>,
    last_fetched: Option<String>,
    last_full_pass: Option<Instant>,
    result: PassResult,
    applied: Option<Applied>,
    /// The set's name, from the last good commit (or read from a bad one when possible).
    set_name: Option<String>,
    suspended_by_annotation: bool,
    /// The commit whose recorded digests were pushed (its successor comes with a fetch).
    lock_pushed_for: Option<String>,
    /// Turns true on shutdown: git work in flight is then abandoned, not waited for.
    shutdown: Option<watch::Receiver<bool>>,
    /// The last status written, and the resourceVersion of the PluginSet it was computed
    /// against: until the watch shows the write, that version's status is this one.
    published: Option<(Option<String>, PluginSetStatus)>,
    /// The set's Running Plugins as last seen, and as at the last apply: a held upgrade can
    /// only be released once they differ (a replacement started running).
    running_now: BTreeSet<String>,
    running_at_apply: BTreeSet<String>,
}

/// How long the loop waits after a change of the PluginSet or a Plugin before recomputing
/// the status, so a burst (a thousand Plugins starting) costs one recomputation and at most
/// one write.
const STATUS_DEBOUNCE: Duration = Duration::from_millis(250);

impl GitOps {
    /// A loop over `config`. It shares nothing with the plugin controller: the templates of
    /// the commit it applies reach the controller as a ConfigMap applied with the set.
    pub fn new(
        client: Client,
        config: LoopConfig,
        resolver: Resolver,
        settings: RenderSettings,
        cache: Cache,
        metrics: Arc<Metrics>,
    ) -> Result<GitOps, Error> {
        let remote = match &config.source {
            RepoSource::Git {
                url,
                branch,
                work_dir,
                ..
            } => {
                std::fs::create_dir_all(work_dir).map_err(|e| Error::io(work_dir, e))?;
                let mut repo = RemoteRepo::open(work_dir, url, branch)
                    .map_err(|e| Error::Usage(format!("git repository: {e}")))?;
                repo.set_timeout(config.git_timeout);
                Some(Arc::new(Mutex::new(repo)))
            }
            RepoSource::Local { .. } => None,
        };
        Ok(GitOps {
            applier: Applier::new(client.clone()),
            client,
            config,
            resolver: Arc::new(resolver),
            settings,
            cache,
            metrics,
            remote,
            crds_installed: false,
            done_commit: None,
            last_fetched: None,
            last_full_pass: None,
            result: PassResult::Starting,
            applied: None,
            set_name: None,
            suspended_by_annotation: false,
            lock_pushed_for: None,
            shutdown: None,
            published: None,
            running_now: BTreeSet::new(),
            running_at_apply: BTreeSet::new(),
        })
    }

    /// What the last pass did (tests drive passes one at a time and read it).
    pub fn last_result(&self) -> &PassResult {
        &self.result
    }

    /// Runs passes until `shutdown` turns true: on the poll interval, at once on `trigger`
    /// (webhook, folder change) or a reconcile request; recomputes the status whenever the
    /// PluginSet or one of its Plugins changes (watched, not polled). A pass in progress
    /// always finishes.
    pub async fn run(
        mut self,
        trigger: Arc<Notify>,
        mut shutdown: watch::Receiver<bool>,
        readiness: Readiness,
    ) {
        let _watcher = match &self.config.source {
            RepoSource::Local { root } => watch_folder(root, trigger.clone()),
            RepoSource::Git { .. } => None,
        };
        self.shutdown = Some(shutdown.clone());
        let watched = set_watch::SetWatch::start(self.client.clone(), &self.config.namespace);
        let mut rng = rand::rngs::StdRng::from_os_rng();
        let mut force = true;
        let mut next_poll = Instant::now();
        loop {
            let requested = self.publish_watched(&watched).await;
            force |= requested;
            if force || Instant::now() >= next_poll {
                let resync_due = self
                    .last_full_pass
                    .is_none_or(|t| t.elapsed() >= self.config.resync);
                let started = Instant::now();
                self.running_at_apply = self.running_now.clone();
                let outcome = self.pass(force || resync_due).await;
                self.metrics.observe_reconcile(started.elapsed(), outcome);
                force = false;
                next_poll =
                    Instant::now() + poll_delay(self.config.interval, self.config.jitter, &mut rng);
                readiness.set_ready();
                self.publish_watched(&watched).await;
                if self.record_digests().await {
                    // Our own commit: fetch and apply it at the next turn.
                    force = true;
                }
            } else if matches!(self.result, PassResult::Applied { held, .. } if held > 0)
                && self.running_now != self.running_at_apply
            {
                // Upgrades wait for their replacements, and one started running: apply again
                // to release it.
                self.running_at_apply = self.running_now.clone();
                self.reapply().await;
            }
            if *shutdown.borrow() {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(next_poll.into()) => {}
                _ = trigger.notified() => {
                    // Coalesce a burst (an editor's save, several webhooks) into one pass.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    force = true;
                }
                () = watched.changed() => {
                    // Coalesce a burst of changes into one recomputation.
                    tokio::select! {
                        _ = tokio::time::sleep(STATUS_DEBOUNCE) => {}
                        _ = shutdown.changed() => {}
                    }
                }
                _ = shutdown.changed() => {}
            }
            if *shutdown.borrow() {
                break;
            }
        }
        info!("git loop stopped");
    }

    /// One pass; `force` re-renders and re-applies even when the commit is unchanged.
    pub async fn pass(&mut self, force: bool) -> ReconcileResult {
        if self.config.suspend || self.suspended_by_annotation {
            self.result = PassResult::Suspended;
            return ReconcileResult::Suspended;
        }
        let file = self.config.file_path();
        let (opener, commit) = match &self.config.source {
            RepoSource::Local { root } => {
                (Opener::Folder(root.clone()), "working tree".to_string())
            }
            RepoSource::Git { .. } => match self.fetch().await {
                Ok((outcome, path)) => {
                    let commit = outcome.commit().to_string();
                    self.last_fetched = Some(commit.clone());
                    if !force && self.done_commit.as_deref() == Some(commit.as_str()) {
                        debug!(%commit, "branch unchanged");
                        return ReconcileResult::Unchanged;
                    }
                    (Opener::Commit(path, commit.clone()), commit)
                }
                Err(e) => {
                    warn!(error = %e, "fetch failed");
                    self.result = PassResult::FetchFailed {
                        message: e.to_string(),
                    };
                    return ReconcileResult::Failed;
                }
            },
        };
        // Repository reads, loading, resolving from the cache and rendering are blocking
        // work: on a blocking thread, so the runtime's workers (one, with `cpu: "1"`) keep
        // serving probes, the lease and the controller meanwhile.
        let read = {
            let (file, namespace) = (file.clone(), self.config.namespace.clone());
            let (resolver, settings) = (self.resolver.clone(), self.settings.clone());
            let want_name = self.set_name.is_none();
            let runtime = tokio::runtime::Handle::current();
            tokio::task::spawn_blocking(move || {
                read_commit(
                    &runtime, opener, &file, &resolver, &settings, &namespace, want_name,
                )
            })
            .await
        };
        let read = match read {
            Ok(Ok(read)) => read,
            Ok(Err(e)) => {
                self.result = PassResult::FetchFailed {
                    message: e.to_string(),
                };
                return ReconcileResult::Failed;
            }
            Err(e) => {
                self.result = PassResult::FetchFailed {
                    message: format!("reading the commit: {e}"),
                };
                return ReconcileResult::Failed;
            }
        };
        self.last_full_pass = Some(Instant::now());

        let state = match read.state {
            Ok(Some(state)) => state,
            Ok(None) => {
                let message = format!("{} not found", read.display_file);
                return self.bad_commit(commit, message, Vec::new());
            }
            Err(e) if e.is_transient() => {
                // Not the commit's fault: a package server, the disk or a git object read.
                // Nothing is marked done: the next poll reads the same commit again.
                warn!(%commit, error = %e, "reading the commit failed; retrying at the next poll");
                self.result = PassResult::ApplyFailed {
                    commit,
                    message: e.to_string(),
                };
                return ReconcileResult::Failed;
            }
            Err(e) => {
                if self.set_name.is_none() {
                    self.set_name = read.set_name;
                }
                let errors = status_errors(&e);
                return self.bad_commit(commit, e.to_string(), errors);
            }
        };
        let lock_file = join(&parent_dir(&file), plugsync_core::load::LOCK_FILE);
        let lock_path = read.display_lock;
        let set = state.set.spec().clone();
        self.set_name = Some(set.metadata.name.clone());
        match &state.lock {
            LockState::UpToDate => {}
            LockState::Missing => {
                let message =
                    format!("{lock_path} does not exist; run `plugsync lock` and commit it");
                return self.bad_commit(commit, message, Vec::new());
            }
            LockState::Stale(changes) => {
                let list: Vec<String> = changes.iter().map(|c| c.to_string()).collect();
                let message = format!(
                    "{lock_path} is out of date (run `plugsync lock` and commit it): {}",
                    list.join("; ")
                );
                return self.bad_commit(commit, message, Vec::new());
            }
        }
        if set.namespace() != self.config.namespace {
            let message = format!(
                "{}: metadata.namespace is `{}`, but this plugsync manages namespace `{}`",
                read.display_file,
                set.namespace(),
                self.config.namespace
            );
            return self.bad_commit(commit, message, Vec::new());
        }

        // Build Jobs fetch their contexts from this replica's cache. (The commit's templates
        // reach the controller as a ConfigMap among the applied objects.)
        let cache = self.cache.clone();
        let state = match tokio::task::spawn_blocking(move || {
            cache_contexts(&cache, &state);
            state
        })
        .await
        {
            Ok(state) => state,
            Err(e) => {
                self.result = PassResult::ApplyFailed {
                    commit,
                    message: format!("caching the build contexts: {e}"),
                };
                return ReconcileResult::Failed;
            }
        };

        let objects = state.cluster_objects();
        info!(%commit, objects = objects.len(), "applying");
        self.applied = Some(Applied {
            set,
            objects,
            commit: commit.clone(),
            lock: state.resolution.lock.clone(),
            lock_path: lock_file,
        });
        self.apply().await
    }

    async fn apply(&mut self) -> ReconcileResult {
        let Some(applied) = &self.applied else {
            return ReconcileResult::Unchanged;
        };
        let options = ApplyOptions {
            dry_run: false,
            prune: true,
        };
        if self.config.install_crds && !self.crds_installed {
            let crds = plugsync_core::crd::definitions();
            if let Err(e) = self.applier.ensure_crds(&crds, options).await {
                warn!(error = %e, "cannot install the CRDs");
                self.result = PassResult::ApplyFailed {
                    commit: applied.commit.clone(),
                    message: e.to_string(),
                };
                return ReconcileResult::Failed;
            }
            self.crds_installed = true;
        }
        let commit = applied.commit.clone();
        match self
            .applier
            .apply_set(&applied.set, &applied.objects, options)
            .await
        {
            Ok(report) if report.failed.is_empty() => {
                info!(%commit, summary = %report.summary(), "applied");
                let changed = report
                    .objects
                    .iter()
                    .any(|(_, o)| *o != Outcome::Unchanged && *o != Outcome::Held);
                self.done_commit = Some(commit.clone());
                // Old versions held for their upgrades (a templates ConfigMap kept for a
                // Plugin that names it is not one).
                let held = report
                    .objects
                    .iter()
                    .filter(|(key, o)| *o == Outcome::Held && key.kind == "Plugin")
                    .count();
                self.result = PassResult::Applied { commit, held };
                if changed {
                    ReconcileResult::Applied
                } else {
                    ReconcileResult::Unchanged
                }
            }
            Ok(report) => {
                let message = report
                    .failed
                    .iter()
                    .take(3)
                    .map(|(key, why)| format!("{key}: {why}"))
                    .collect::<Vec<_>>()
                    .join("; ");
                warn!(%commit, %message, "apply failed");
                self.result = PassResult::ApplyFailed { commit, message };
                ReconcileResult::Failed
            }
            Err(e) => {
                warn!(%commit, error = %e, "apply failed");
                self.result = PassResult::ApplyFailed {
                    commit,
                    message: e.to_string(),
                };
                ReconcileResult::Failed
            }
        }
    }

    /// With `--commit-lock`: commits the image digests the controller recorded, and the
    /// applied commit's plugins.lock does not pin yet, back to the branch (a fast-forward on
    /// top of that commit). Returns whether a commit was pushed.
    async fn record_digests(&mut self) -> bool {
        let (Some(settings), Some(remote), Some(applied)) = (
            self.config.commit_lock.clone(),
            self.remote.clone(),
            self.applied.as_ref(),
        ) else {
            return false;
        };
        if self.done_commit.as_deref() != Some(applied.commit.as_str())
            || self.lock_pushed_for.as_deref() == Some(applied.commit.as_str())
        {
            return false;
        }
        let images = match crate::controller::reconcile::recorded_images(
            &self.client,
            &self.config.namespace,
            &applied.set.metadata.name,
        )
        .await
        {
            Ok(images) => images,
            Err(e) => {
                debug!(error = %e, "cannot read recorded digests");
                return false;
            }
        };
        let mut lock = applied.lock.clone();
        if !lock.record_images(images) {
            return false;
        }
        let Ok(parent) = git2::Oid::from_str(&applied.commit) else {
            return false;
        };
        let commit = applied.commit.clone();
        let path = applied.lock_path.clone();
        let pinned = lock.images.len();
        let auth = match self.git_auth().await {
            Ok(auth) => auth,
            Err(e) => {
                warn!(error = %e, "cannot commit plugins.lock");
                return false;
            }
        };
        let text = lock.to_yaml();
        let pushed = self
            .git_work("pushing to", remote, move |repo| {
                Ok(repo.commit_and_push(
                    &auth,
                    parent,
                    &[(path.as_str(), text.as_bytes())],
                    &settings.author,
                    &settings.message,
                )?)
            })
            .await;
        match pushed {
            Ok(oid) if oid.to_string() != commit => {
                info!(commit = %oid, images = pinned, "recorded built image digests in plugins.lock");
                self.lock_pushed_for = Some(commit);
                true
            }
            Ok(_) => false,
            Err(e @ GitError::Remote(RemoteError::PushRejected { .. })) => {
                warn!(error = %e, "could not commit plugins.lock; retried after the next fetch");
                false
            }
            Err(e) => {
                warn!(error = %e, "could not commit plugins.lock");
                false
            }
        }
    }

    /// Applies the last good commit again (no fetch, no render): releases held upgrades.
    async fn reapply(&mut self) {
        let started = Instant::now();
        let outcome = self.apply().await;
        self.metrics.observe_reconcile(started.elapsed(), outcome);
    }

    fn bad_commit(
        &mut self,
        commit: String,
        message: String,
        errors: Vec<plugsync_core::crd::StatusError>,
    ) -> ReconcileResult {
        warn!(%commit, %message, "bad commit: nothing applied");
        self.done_commit = Some(commit.clone());
        self.result = PassResult::Invalid {
            commit,
            message,
            errors,
        };
        ReconcileResult::Invalid
    }

    async fn fetch(&mut self) -> Result<(SyncOutcome, PathBuf), GitError> {
        let Some(remote) = self.remote.clone() else {
            return Err(GitError::NoRepository);
        };
        let auth = self.git_auth().await?;
        let started = Instant::now();
        let result = self
            .git_work("fetching", remote, move |repo| {
                let outcome = repo.sync(&auth)?;
                Ok((outcome, repo.path().to_path_buf()))
            })
            .await;
        let outcome = match &result {
            Ok((SyncOutcome::Unchanged(_), _)) => FetchOutcome::Unchanged,
            Ok((SyncOutcome::Fetched { .. }, _)) => FetchOutcome::Fetched,
            Err(_) => FetchOutcome::Failed,
        };
        self.metrics.observe_git_fetch(started.elapsed(), outcome);
        result
    }

    /// Runs blocking git work on a thread of its own and waits at most the git timeout for
    /// it, or until shutdown.
    ///
    /// libgit2 cannot be interrupted while a server that accepted the connection stays
    /// silent (no callback runs), so the loop stops waiting instead: the pass fails with an
    /// error naming the remote, and shutdown does not wait. The thread is not the runtime's
    /// (a `spawn_blocking` task would hold the runtime's shutdown); it ends when the
    /// connection does. Until then the repository stays locked, and later operations fail at
    /// once saying so, rather than piling up threads.
    async fn git_work<T, F>(
        &self,
        what: &str,
        remote: Arc<Mutex<RemoteRepo>>,
        work: F,
    ) -> Result<T, GitError>
    where
        T: Send + 'static,
        F: FnOnce(&mut RemoteRepo) -> Result<T, GitError> + Send + 'static,
    {
        let url = match &self.config.source {
            RepoSource::Git { url, .. } => plugsync_core::redact::redact_text(url),
            RepoSource::Local { .. } => String::new(),
        };
        let what = what.to_string();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let busy = GitError::Busy {
            what: what.clone(),
            url: url.clone(),
        };
        let poisoned = GitError::Thread {
            what: what.clone(),
            url: url.clone(),
            reason: "panicked earlier, holding the repository".into(),
        };
        std::thread::Builder::new()
            .name("plugsync-git".into())
            .spawn(move || {
                let result = match remote.try_lock() {
                    Ok(mut repo) => work(&mut repo),
                    Err(std::sync::TryLockError::WouldBlock) => Err(busy),
                    Err(std::sync::TryLockError::Poisoned(_)) => Err(poisoned),
                };
                let _ = tx.send(result);
            })
            .map_err(|e| GitError::Thread {
                what: what.clone(),
                url: url.clone(),
                reason: format!("cannot start: {e}"),
            })?;
        let timeout = self.config.git_timeout;
        let mut shutdown = self.shutdown.clone();
        let stopping = async {
            match shutdown.as_mut() {
                Some(s) => {
                    let _ = s.wait_for(|stop| *stop).await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            answer = tokio::time::timeout(timeout, rx) => match answer {
                Ok(Ok(result)) => result,
                Ok(Err(_)) => Err(GitError::Thread {
                    what,
                    url,
                    reason: "ended without an answer".into(),
                }),
                Err(_) => Err(GitError::Timeout { what, url, timeout }),
            },
            () = stopping => Err(GitError::Abandoned { what, url }),
        }
    }

    /// The credentials, read from the Secret at every fetch so a rotation needs no restart.
    async fn git_auth(&self) -> Result<GitAuth, GitError> {
        let RepoSource::Git {
            secret: Some(name), ..
        } = &self.config.source
        else {
            return Ok(GitAuth::None);
        };
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &self.config.namespace);
        let secret_name = || format!("{}/{name}", self.config.namespace);
        let secret = secrets
            .get(name)
            .await
            .map_err(|source| GitError::ReadSecret {
                secret: secret_name(),
                source,
            })?;
        let data = secret
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect();
        GitAuth::from_secret_data(&data).map_err(|source| GitError::Credentials {
            secret: secret_name(),
            source,
        })
    }

    /// Reads the PluginSet (annotations) and its Plugins from the API, publishes the status
    /// when it changed, and says whether a reconcile was requested by annotation. One GET and
    /// one LIST: for driving the loop pass by pass ([`pass`](Self::pass)); [`run`](Self::run)
    /// reads both from its watches instead.
    pub async fn refresh_status(&mut self) -> bool {
        let sets: Api<PluginSetResource> =
            Api::namespaced(self.client.clone(), &self.config.namespace);
        if self.set_name.is_none() {
            // A first commit too broken to name its set: the one set already here, if any.
            if let Ok(list) = sets.list(&kube::api::ListParams::default()).await {
                if let [only] = list.items.as_slice() {
                    self.set_name = Some(only.name_any());
                }
            }
        }
        let Some(name) = self.set_name.clone() else {
            return false;
        };
        let live = match sets.get_opt(&name).await {
            Ok(Some(live)) => live,
            Ok(None) => return false,
            Err(e) => {
                debug!(error = %e, "cannot read the PluginSet");
                return false;
            }
        };
        let plugins: Api<Plugin> = Api::namespaced(self.client.clone(), &self.config.namespace);
        let list = plugins
            .list(&kube::api::ListParams::default().labels(&format!("{LABEL_PLUGINSET}={name}")))
            .await;
        match list {
            Ok(list) => self.publish(&live, Some(&list.items)).await,
            Err(e) => {
                debug!(error = %e, "cannot list Plugins");
                self.publish(&live, None).await
            }
        }
    }

    /// [`refresh_status`](Self::refresh_status) from the watched PluginSet and Plugins: no
    /// request but the status write, and that only when the status changed. Until the
    /// watches have listed once, nothing (the status would say no Plugin runs).
    async fn publish_watched(&mut self, watched: &set_watch::SetWatch) -> bool {
        if !watched.ready() {
            return false;
        }
        if self.set_name.is_none() {
            // A first commit too broken to name its set: the one set already here, if any.
            if let [only] = watched.sets().as_slice() {
                self.set_name = Some(only.name_any());
            }
        }
        let Some(name) = self.set_name.clone() else {
            return false;
        };
        let Some(live) = watched.set(&name) else {
            return false;
        };
        let plugins = watched.plugins_of(&name);
        self.publish(&live, Some(&plugins)).await
    }

    /// Takes in the live PluginSet's annotations, writes its status when it differs from
    /// what `plugins` (all of the set's; `None`: unknown, the status is left alone) and the
    /// last pass say, and says whether a reconcile was requested by annotation.
    async fn publish(&mut self, live: &PluginSetResource, plugins: Option<&[Plugin]>) -> bool {
        let name = live.name_any();
        let annotations = live.annotations();
        self.suspended_by_annotation = annotations
            .get(ANNOTATION_SUSPEND)
            .is_some_and(|v| v == "true");
        let request = annotations.get(ANNOTATION_RECONCILE_REQUESTED).cloned();
        // A watch may not show our last write yet: then that write is the status.
        let old = match &self.published {
            Some((version, status)) if *version == live.metadata.resource_version => status.clone(),
            _ => live.status.clone().unwrap_or_default(),
        };
        let requested = request.is_some() && request != old.last_handled_reconcile_at;
        if requested {
            info!(
                request = request.as_deref().unwrap_or_default(),
                "reconcile requested by annotation"
            );
        }
        let Some(plugins) = plugins else {
            return requested;
        };
        self.running_now = plugins
            .iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase) == Some(PluginPhase::Running))
            .map(|p| p.name_any())
            .collect();
        let counts = PhaseCounts::of(plugins);
        let phases: Vec<(&str, i64)> = counts
            .phases
            .iter()
            .map(|(k, v)| (k.as_str(), *v))
            .collect();
        self.metrics.set_plugins_by_phase(&phases);

        let declared = self.applied.as_ref().map(|a| {
            // Plugins only: the templates ConfigMap is applied with them.
            a.objects.iter().filter(|o| o["kind"] == "Plugin").count()
        });
        let (message, conditions) = compose(&self.result, declared, &counts);
        let conditions = kube_conditions(&conditions, &old.conditions, live.metadata.generation);
        let errors = match &self.result {
            PassResult::Invalid { errors, .. } => errors.clone(),
            _ => Vec::new(),
        };
        let new = PluginSetStatus {
            observed_generation: live.metadata.generation,
            last_fetched_commit: self
                .last_fetched
                .clone()
                .or(old.last_fetched_commit.clone()),
            last_applied_commit: match &self.applied {
                Some(a) if self.done_commit.as_deref() == Some(a.commit.as_str()) => {
                    Some(a.commit.clone())
                }
                _ => old.last_applied_commit.clone(),
            },
            plugin_count: declared.map(|d| d as i64).or(old.plugin_count),
            phases: counts.phases.clone(),
            message: Some(message),
            errors,
            last_handled_reconcile_at: if requested {
                request
            } else {
                old.last_handled_reconcile_at.clone()
            },
            conditions,
            inventory: old.inventory.clone(),
        };
        if new != old {
            // The inventory is the applier's: never written here.
            let body = status_merge_patch(&new, &old, &["inventory"]);
            let patch = json!({ "status": body });
            let sets: Api<PluginSetResource> =
                Api::namespaced(self.client.clone(), &self.config.namespace);
            match sets
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => self.published = Some((live.metadata.resource_version.clone(), new)),
                Err(e) => warn!(error = %e, "cannot write the PluginSet status"),
            }
        }
        requested
    }
}

/// Where a pass reads its commit from: opened on the blocking thread.
enum Opener {
    /// The folder of `run --repo`.
    Folder(PathBuf),
    /// A commit of the bare clone at the path.
    Commit(PathBuf, String),
}

/// What a pass read of its commit.
struct CommitRead {
    /// The commit loaded, resolved and rendered; `None` without a plugins.yaml.
    state: Result<Option<pipeline::DesiredState>, Error>,
    /// plugins.yaml as messages name it (`<commit>:<path>` or a path on disk).
    display_file: String,
    /// plugins.lock as messages name it.
    display_lock: String,
    /// A bad commit's `metadata.name`, when it still has one, so its status can say why.
    set_name: Option<String>,
}

/// Opens the commit (or the folder) and loads, resolves and renders its set: blocking work,
/// run on a blocking thread. `Err` when the snapshot cannot even be opened (retried at the
/// next poll: a commit just fetched that cannot be opened is the clone's fault, not its own).
fn read_commit(
    runtime: &tokio::runtime::Handle,
    opener: Opener,
    file: &str,
    resolver: &Resolver,
    settings: &RenderSettings,
    namespace: &str,
    want_name: bool,
) -> Result<CommitRead, SnapshotError> {
    let snapshot: Box<dyn Snapshot> = match opener {
        Opener::Folder(root) => Box::new(WorkTree::new(&root)?),
        Opener::Commit(path, commit) => Box::new(GitRevision::open(&path, &commit, None)?),
    };
    let state = pipeline::desired_state_blocking(
        runtime,
        snapshot.as_ref(),
        file,
        resolver,
        settings,
        Some(namespace),
    );
    let set_name = match &state {
        Err(e) if want_name && !e.is_transient() => snapshot
            .read(file)
            .ok()
            .flatten()
            .and_then(|bytes| plugsync_core::load::written_set_name(&bytes)),
        _ => None,
    };
    let lock_file = join(&parent_dir(file), plugsync_core::load::LOCK_FILE);
    Ok(CommitRead {
        state,
        display_file: snapshot.display_path(file).display().to_string(),
        display_lock: snapshot.display_path(&lock_file).display().to_string(),
        set_name,
    })
}

/// Puts the build contexts of the plugins that build into the cache (build Jobs fetch them
/// from this replica). Blocking: each put fsyncs, so one already cached is not rewritten.
fn cache_contexts(cache: &Cache, state: &pipeline::DesiredState) {
    for rendered in &state.rendered {
        let needed = rendered.objects.iter().any(|o| o["kind"] == "Job")
            && !cache.contains(&rendered.context.sha256);
        if needed {
            if let Err(e) = cache.put(&rendered.context.bytes) {
                warn!(error = %e, plugin = %rendered.name, "cannot cache the build context");
            }
        }
    }
}

/// Watches `root` and notifies on every change outside `.git`, for `run --repo`.
fn watch_folder(root: &Path, trigger: Arc<Notify>) -> Option<notify::RecommendedWatcher> {
    use notify::{RecursiveMode, Watcher};
    let mut watcher =
        match notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if let Ok(event) = event {
                let relevant = event
                    .paths
                    .iter()
                    .any(|p| !p.components().any(|c| c.as_os_str() == ".git"));
                if relevant && !matches!(event.kind, notify::EventKind::Access(_)) {
                    trigger.notify_one();
                }
            }
        }) {
            Ok(w) => w,
            Err(e) => {
                warn!(error = %e, "cannot watch the folder; polling only");
                return None;
            }
        };
    if let Err(e) = watcher.watch(root, RecursiveMode::Recursive) {
        warn!(error = %e, folder = %root.display(), "cannot watch the folder; polling only");
        return None;
    }
    info!(folder = %root.display(), "watching for changes");
    Some(watcher)
}
