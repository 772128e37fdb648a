//! `plugsync run`: the in-cluster process. The git loop, the plugin controller and the HTTP
//! server (build contexts, webhook, metrics, health) in one process; with leader election,
//! only the leader runs the loop and the controller, standbys serve health and wait.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use tracing::{error, info, warn};

use plugsync_core::error::Error;
use plugsync_core::render::RenderSettings;
use plugsync_core::resolve::cache::Cache;
use plugsync_core::resolve::Resolver;
use plugsync_kube::cluster::Cluster;
use plugsync_kube::connector::Connector;
use plugsync_kube::gitops::{GitOps, LockCommit, LoopConfig, RepoSource};
use plugsync_kube::leader::{set_pod_leader_label, LeaderElector, LeaseConfig};
use plugsync_kube::metrics::Metrics;
use plugsync_kube::server::{Readiness, ServerState, Webhook, WebhookAuth, WebhookAuthKind};

use super::shutdown::Shutdown;

/// Where the declared set comes from, as the user named it.
pub(crate) enum Origin {
    /// A folder on disk, watched.
    Folder(PathBuf),
    /// A git branch, polled (and pushed to by the webhook).
    Git {
        url: String,
        branch: String,
        /// The Secret with the git credentials, read at every fetch.
        secret: Option<String>,
    },
}

/// Leader election among replicas: only the holder of the Lease writes.
pub(crate) struct LeaderOptions {
    pub(crate) lease_name: String,
    /// How long a standby waits for a silent leader; renewals and retries follow client-go's
    /// ratios of it.
    pub(crate) lease_duration: Duration,
}

/// Everything `plugsync run` runs with, decided by the CLI from flags and environment.
pub(crate) struct RunOptions {
    pub(crate) cluster: Cluster,
    pub(crate) listen: SocketAddr,
    pub(crate) cache_dir: PathBuf,
    pub(crate) resolver: Resolver,
    pub(crate) render: RenderSettings,
    pub(crate) origin: Origin,
    /// How the loop polls, resyncs and records.
    pub(crate) settings: LoopSettings,
    /// The webhook's credential file and kind, when the webhook is on.
    pub(crate) webhook: Option<(PathBuf, WebhookAuthKind)>,
    /// Dify's serverless connector, when it is on.
    pub(crate) connector: Option<ConnectorOptions>,
    /// `None`: this is the only replica.
    pub(crate) leader: Option<LeaderOptions>,
}

/// The Dify connector's settings.
pub(crate) struct ConnectorOptions {
    /// The file holding the key the daemon presents.
    pub(crate) key_file: PathBuf,
    /// How long a launch waits for its plugin to run.
    pub(crate) launch_timeout: Duration,
}

/// The git loop's settings the user chooses (the rest of [`LoopConfig`] follows from the
/// origin and the cluster).
pub(crate) struct LoopSettings {
    /// The folder of the repository holding plugins.yaml.
    pub(crate) path: String,
    /// The declared set's file name.
    pub(crate) file: String,
    pub(crate) interval: Duration,
    /// The bound on each git fetch or push.
    pub(crate) git_timeout: Duration,
    pub(crate) jitter: f64,
    pub(crate) resync: Duration,
    pub(crate) suspend: bool,
    pub(crate) install_crds: bool,
    pub(crate) commit_lock: Option<LockCommit>,
}

/// How a run ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RunEnd {
    /// Told to stop (SIGTERM, Ctrl-C): the work in flight finished.
    Stopped,
    /// Another replica took the Lease: this one stopped writing at once.
    LeadershipLost,
}

/// The repository snapshot source for `origin`: git clones live next to the package cache
/// (an emptyDir in-cluster), one bare clone per URL.
pub(crate) fn repo_source(origin: &Origin, cache_dir: &Path) -> RepoSource {
    match origin {
        Origin::Folder(root) => RepoSource::Local { root: root.clone() },
        Origin::Git {
            url,
            branch,
            secret,
        } => RepoSource::Git {
            url: url.clone(),
            branch: branch.clone(),
            secret: secret.clone(),
            work_dir: cache_dir
                .join("git")
                .join(&hex::encode(Sha256::digest(url.as_bytes()))[..16]),
        },
    }
}

/// Runs until a signal or until leadership is lost.
pub(crate) async fn run(options: RunOptions) -> Result<RunEnd, Error> {
    let RunOptions {
        cluster,
        listen,
        cache_dir,
        resolver,
        render,
        origin,
        settings,
        webhook,
        connector,
        leader,
    } = options;
    let (client, namespace) = (cluster.client.clone(), cluster.namespace.clone());
    let cache = Cache::open(&cache_dir).map_err(|e| Error::io(&cache_dir, e))?;
    let metrics = Arc::new(Metrics::new());
    let readiness = Readiness::new();
    let trigger = Arc::new(Notify::new());

    let following_branch = match &origin {
        Origin::Git { branch, .. } => Some(branch.clone()),
        Origin::Folder(_) => None,
    };
    let webhook = webhook
        .map(|(path, kind)| {
            WebhookAuth::from_file(&path, kind)
                .map(|auth| Webhook {
                    auth,
                    branch: following_branch.clone(),
                    trigger: trigger.clone(),
                })
                .map_err(|e| Error::io(&path, e))
        })
        .transpose()?;
    let config = LoopConfig {
        source: repo_source(&origin, &cache_dir),
        path: settings.path,
        file: settings.file,
        namespace: namespace.clone(),
        interval: settings.interval,
        git_timeout: settings.git_timeout,
        jitter: settings.jitter,
        resync: settings.resync,
        suspend: settings.suspend,
        install_crds: settings.install_crds,
        commit_lock: settings.commit_lock,
    };

    let shutdown = Shutdown::on_signals();
    let connector = match connector {
        Some(options) => Some(start_connector(options, &client, &namespace, &shutdown)?),
        None => None,
    };
    let server_state = ServerState {
        cache: cache.clone(),
        metrics: metrics.clone(),
        readiness: readiness.clone(),
        webhook,
        connector,
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| Error::Cluster(format!("cannot listen on {}: {e}", listen)))?;
    info!(listen = %listener.local_addr().unwrap_or(listen), "serving");
    let server = tokio::spawn(plugsync_kube::server::serve_on(
        listener,
        server_state,
        shutdown.stopped(),
    ));
    // Serving and waiting is ready: the leader-only Service routes by label, not readiness.
    readiness.set_ready();

    let pod_name = std::env::var("POD_NAME").ok().filter(|n| !n.is_empty());
    let election = match leader {
        Some(leader) => {
            let identity = format!(
                "{}_{:08x}",
                pod_name
                    .clone()
                    .or_else(|| std::env::var("HOSTNAME").ok())
                    .unwrap_or_else(|| "plugsync".into()),
                rand::random::<u32>()
            );
            let mut lease = LeaseConfig::new(&leader.lease_name, &namespace, identity);
            lease.lease_duration = leader.lease_duration;
            lease.renew_deadline = leader.lease_duration.mul_f64(2.0 / 3.0);
            lease.retry_period = leader.lease_duration.mul_f64(2.0 / 15.0);
            lease
                .validate()
                .map_err(|e| Error::Usage(format!("leader election: {e}")))?;
            let handle = LeaderElector::new(client.clone(), lease).spawn();
            info!(lease = %leader.lease_name, "waiting to become leader");
            tokio::select! {
                result = handle.became_leader() => {
                    if let Err(e) = result {
                        return Err(Error::Cluster(format!("leader election: {e}")));
                    }
                }
                _ = shutdown.stopped() => {
                    let _ = handle.shutdown().await;
                    let _ = server.await;
                    return Ok(RunEnd::Stopped);
                }
            }
            Some(handle)
        }
        None => None,
    };
    metrics.set_leader(true);
    if let (Some(pod), true) = (&pod_name, election.is_some()) {
        if let Err(e) = set_pod_leader_label(client.clone(), &namespace, pod, true).await {
            warn!(error = %e, "cannot label this pod as the leader; the leader Service will not route to it");
        }
    }

    let mut context = super::controller_context(&client, &cache, render.clone());
    context.metrics = Some(metrics.clone());
    // The git loop publishes the PluginSet status (it knows each commit's fate).
    context.publish_set_status = false;
    let controller = tokio::spawn(plugsync_kube::controller::run(
        Arc::new(context),
        namespace.clone(),
        shutdown.stopped(),
    ));
    let gitops = GitOps::new(
        client.clone(),
        config,
        resolver,
        render,
        cache,
        metrics.clone(),
    )?;
    // The loop runs on this task (not spawned): the applier's futures are not `Send`
    // across every lifetime the spawn bound asks for, and this task is where it ends anyway.
    let git_loop = gitops.run(trigger, shutdown.subscribe(), readiness.clone());
    info!(%namespace, source = %cluster.source, "running");

    // Until told to stop, or until leadership is lost: then stop writing at once.
    let watchdog = async {
        let mut end = RunEnd::Stopped;
        match &election {
            Some(handle) => {
                tokio::select! {
                    _ = shutdown.stopped() => {}
                    _ = handle.lost_leadership() => {
                        error!("leadership lost: stopping (the pod restarts as a standby)");
                        end = RunEnd::LeadershipLost;
                    }
                }
            }
            None => shutdown.stopped().await,
        }
        shutdown.trigger();
        end
    };
    // The pass in flight finishes before the loop returns.
    let ((), end) = tokio::join!(git_loop, watchdog);
    let _ = controller.await;
    metrics.set_leader(false);
    if let Some(handle) = election {
        if let Some(pod) = &pod_name {
            let _ = set_pod_leader_label(client.clone(), &namespace, pod, false).await;
        }
        if let Err(e) = handle.shutdown().await {
            warn!(error = %e, "could not release the lease; a standby takes over when it expires");
        }
    }
    match server.await {
        Ok(Err(e)) => warn!(error = %e, "server stopped with an error"),
        Err(e) => warn!(error = %e, "server task failed"),
        Ok(Ok(())) => {}
    }
    info!("stopped");
    Ok(end)
}

/// The Dify connector, reading the namespace's Plugins through a watch that runs until
/// shutdown.
fn start_connector(
    options: ConnectorOptions,
    client: &kube::Client,
    namespace: &str,
    shutdown: &Shutdown,
) -> Result<Connector, Error> {
    let key = plugsync_kube::connector::read_key(&options.key_file)
        .map_err(|e| Error::io(&options.key_file, e))?;
    info!("answering Dify's plugin daemon as its serverless connector");
    Ok(Connector::start(
        key,
        client.clone(),
        namespace,
        options.launch_timeout,
        shutdown.stopped(),
    ))
}
