//! `plugsync run`: the in-cluster process. The git loop, the plugin controller and the HTTP
//! server (build contexts, webhook, metrics, health) in one process; with leader election,
//! only the leader runs the loop and the controller, standbys serve health and wait.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use sha2::{Digest, Sha256};
use tokio::sync::{watch, Notify};
use tracing::{error, info, warn};

use super::{
    controller_context, default_listen, resolver_for, stopped, FetchArgs, KubeArgs,
    RenderSettingsArgs,
};
use crate::error::Error;
use crate::gitops::{GitOps, LockCommit, LoopConfig, RepoSource};
use crate::leader::{set_pod_leader_label, LeaderElector, LeaseConfig};
use crate::load::PLUGINS_FILE;
use crate::metrics::Metrics;
use crate::resolve::cache::Cache;
use crate::server::{Readiness, ServerState, Webhook, WebhookAuth, WebhookAuthKind};
use crate::source::remote::CommitAuthor;

#[derive(Debug, Args)]
pub(super) struct RunArgs {
    /// Follow this folder on disk instead of git (watched; reconciles on save).
    #[arg(long, conflicts_with = "git_url", required_unless_present = "git_url")]
    repo: Option<PathBuf>,
    /// The git repository to follow (https://, ssh://, git@host:path or git://).
    #[arg(long, env = "PLUGSYNC_GIT_URL")]
    git_url: Option<String>,
    /// The branch to follow.
    #[arg(long, env = "PLUGSYNC_GIT_BRANCH", default_value = "main")]
    branch: String,
    /// The folder of the repository holding plugins.yaml.
    #[arg(long, env = "PLUGSYNC_GIT_PATH", default_value = ".")]
    path: String,
    /// The declared set's file name.
    #[arg(long, default_value = PLUGINS_FILE)]
    file: String,
    /// A Secret in the namespace with git credentials (`username`/`password`, `bearerToken`,
    /// or `identity` + `known_hosts`), read at every fetch.
    #[arg(long, env = "PLUGSYNC_GIT_SECRET")]
    git_secret: Option<String>,
    /// Time between polls of the remote branch.
    #[arg(long, default_value = "1m", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Bound on each git network operation (listing the branch, fetching, pushing): a server
    /// that stops answering fails the poll with an error naming the remote, and does not
    /// hold up shutdown.
    #[arg(long, env = "PLUGSYNC_GIT_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    git_timeout: Duration,
    /// Random spread of the poll interval, as a fraction (0.1: ±10 %).
    #[arg(long, default_value_t = 0.1)]
    jitter: f64,
    /// Time between full passes when nothing changed (corrects drift in the cluster).
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    resync: Duration,
    /// Time between PluginSet status refreshes from the Plugins.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    status_interval: Duration,
    /// Address of the HTTP server: `/contexts/<sha256>`, `POST /webhook`, `/metrics`,
    /// `/healthz`, `/readyz` [default: 0.0.0.0:8080 in a pod, else 127.0.0.1:8080].
    #[arg(long, env = "PLUGSYNC_LISTEN")]
    listen: Option<SocketAddr>,
    /// File holding the GitHub webhook secret (`X-Hub-Signature-256` HMAC).
    #[arg(long, conflicts_with = "webhook_token_file")]
    webhook_secret_file: Option<PathBuf>,
    /// File holding a token for generic webhooks (`Authorization: Bearer`).
    #[arg(long)]
    webhook_token_file: Option<PathBuf>,
    /// Elect a leader among replicas with a Lease; only the leader writes.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// Name of the Lease.
    #[arg(long, default_value = "plugsync")]
    lease_name: String,
    /// How long a standby waits for a silent leader before taking over.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    lease_duration: Duration,
    /// Fetch and apply nothing (the annotation `plugsync.dev/suspend: "true"` on the
    /// PluginSet does the same without a restart).
    #[arg(long)]
    suspend: bool,
    /// Install or update the CRDs before the first apply (needs cluster-wide RBAC; off in
    /// the bundled deploy/, where the platform team installs them).
    #[arg(long)]
    install_crds: bool,
    /// Commit the image digests the controller built back to the branch's plugins.lock
    /// (needs write access in --git-secret).
    #[arg(long, requires = "git_url")]
    commit_lock: bool,
    /// Author (and committer) of those commits, `Name <email>`.
    #[arg(long, default_value = "plugsync <plugsync@noreply.invalid>")]
    commit_author: String,
    /// Message of those commits.
    #[arg(
        long,
        default_value = "plugsync: record built image digests in plugins.lock"
    )]
    commit_message: String,
    #[command(flatten)]
    fetch: FetchArgs,
    #[command(flatten)]
    render: RenderSettingsArgs,
    #[command(flatten)]
    kube: KubeArgs,
}

/// Resolves on SIGTERM or SIGINT.
async fn termination() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => info!("SIGTERM: finishing the work in flight"),
                    _ = tokio::signal::ctrl_c() => info!("interrupted: finishing the work in flight"),
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// `Name <email>`, as git writes it.
fn parse_author(text: &str) -> Result<CommitAuthor, Error> {
    let bad = || Error::Usage(format!("--commit-author `{text}`: expected `Name <email>`"));
    let (name, rest) = text.split_once('<').ok_or_else(bad)?;
    let email = rest.strip_suffix('>').ok_or_else(bad)?.trim();
    let name = name.trim();
    if name.is_empty() || email.is_empty() {
        return Err(bad());
    }
    Ok(CommitAuthor {
        name: name.to_string(),
        email: email.to_string(),
    })
}

pub(super) async fn run_command(args: RunArgs) -> Result<ExitCode, Error> {
    if !(0.0..1.0).contains(&args.jitter) {
        return Err(Error::Usage(
            "--jitter must be at least 0 and below 1".into(),
        ));
    }
    // The namespace plugsync manages: the PluginSet's, its Plugins', their children's.
    let cluster = args.kube.connect().await?;
    let (client, namespace) = (cluster.client.clone(), cluster.namespace.clone());
    let listen = args
        .listen
        .unwrap_or_else(|| default_listen(crate::cluster::running_in_pod()));
    let cache_dir = args
        .fetch
        .cache_dir
        .clone()
        .unwrap_or_else(Cache::default_dir);
    let cache = Cache::open(&cache_dir).map_err(|e| Error::io(&cache_dir, e))?;
    let resolver = resolver_for(&args.fetch)?;
    let metrics = Arc::new(Metrics::new());
    let readiness = Readiness::new();
    let trigger = Arc::new(Notify::new());

    let webhook = match (&args.webhook_secret_file, &args.webhook_token_file) {
        (Some(path), _) => Some((path, WebhookAuthKind::GitHubHmac)),
        (None, Some(path)) => Some((path, WebhookAuthKind::Token)),
        (None, None) => None,
    }
    .map(|(path, kind)| {
        WebhookAuth::from_file(path, kind)
            .map(|auth| Webhook {
                auth,
                branch: args.git_url.as_ref().map(|_| args.branch.clone()),
                trigger: trigger.clone(),
            })
            .map_err(|e| Error::io(path, e))
    })
    .transpose()?;

    let source = match (&args.repo, &args.git_url) {
        (Some(root), _) => RepoSource::Local { root: root.clone() },
        (None, Some(url)) => RepoSource::Git {
            url: url.clone(),
            branch: args.branch.clone(),
            secret: args.git_secret.clone(),
            // One bare clone per URL, next to the package cache (an emptyDir in-cluster).
            work_dir: cache_dir
                .join("git")
                .join(&hex::encode(Sha256::digest(url.as_bytes()))[..16]),
        },
        (None, None) => return Err(Error::Usage("give --git-url or --repo".into())),
    };
    let config = LoopConfig {
        source,
        path: args.path.clone(),
        file: args.file.clone(),
        namespace: namespace.clone(),
        interval: args.interval,
        git_timeout: args.git_timeout,
        jitter: args.jitter,
        resync: args.resync,
        status_interval: args.status_interval,
        suspend: args.suspend,
        install_crds: args.install_crds,
        commit_lock: if args.commit_lock {
            Some(LockCommit {
                author: parse_author(&args.commit_author)?,
                message: args.commit_message.clone(),
            })
        } else {
            None
        },
    };

    let (stop_tx, stop_rx) = watch::channel(false);
    let server_state = ServerState {
        cache: cache.clone(),
        metrics: metrics.clone(),
        readiness: readiness.clone(),
        webhook,
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| Error::Cluster(format!("cannot listen on {}: {e}", listen)))?;
    info!(listen = %listener.local_addr().unwrap_or(listen), "serving");
    let server = tokio::spawn(crate::server::serve_on(
        listener,
        server_state,
        stopped(stop_rx.clone()),
    ));
    {
        let stop_tx = stop_tx.clone();
        tokio::spawn(async move {
            termination().await;
            let _ = stop_tx.send(true);
        });
    }
    // Serving and waiting is ready: the leader-only Service routes by label, not readiness.
    readiness.set_ready();

    let pod_name = std::env::var("POD_NAME").ok().filter(|n| !n.is_empty());
    let election = if args.leader_election {
        let identity = format!(
            "{}_{:08x}",
            pod_name
                .clone()
                .or_else(|| std::env::var("HOSTNAME").ok())
                .unwrap_or_else(|| "plugsync".into()),
            rand::random::<u32>()
        );
        let mut lease = LeaseConfig::new(&args.lease_name, &namespace, identity);
        lease.lease_duration = args.lease_duration;
        lease.renew_deadline = args.lease_duration.mul_f64(2.0 / 3.0);
        lease.retry_period = args.lease_duration.mul_f64(2.0 / 15.0);
        lease
            .validate()
            .map_err(|e| Error::Usage(format!("leader election: {e}")))?;
        let handle = LeaderElector::new(client.clone(), lease).spawn();
        info!(lease = %args.lease_name, "waiting to become leader");
        let mut stop = stop_rx.clone();
        tokio::select! {
            result = handle.became_leader() => {
                if let Err(e) = result {
                    return Err(Error::Cluster(format!("leader election: {e}")));
                }
            }
            _ = stop.wait_for(|s| *s) => {
                let _ = handle.shutdown().await;
                let _ = server.await;
                return Ok(ExitCode::SUCCESS);
            }
        }
        Some(handle)
    } else {
        None
    };
    metrics.set_leader(true);
    if let (Some(pod), true) = (&pod_name, election.is_some()) {
        if let Err(e) = set_pod_leader_label(client.clone(), &namespace, pod, true).await {
            warn!(error = %e, "cannot label this pod as the leader; the leader Service will not route to it");
        }
    }

    let mut context = controller_context(&client, &cache, &args.render);
    context.metrics = Some(metrics.clone());
    // The git loop publishes the PluginSet status (it knows each commit's fate).
    context.publish_set_status = false;
    let templates = context.templates.clone();
    let controller = tokio::spawn(crate::controller::run(
        Arc::new(context),
        namespace.clone(),
        stopped(stop_rx.clone()),
    ));
    let gitops = GitOps::new(
        client.clone(),
        config,
        resolver,
        args.render.settings(),
        cache,
        templates,
        metrics.clone(),
    )?;
    // The loop runs on this task (not spawned): the applier's futures are not `Send`
    // across every lifetime the spawn bound asks for, and this task is where it ends anyway.
    let git_loop = gitops.run(trigger, stop_rx.clone(), readiness.clone());
    info!(%namespace, source = %cluster.source, "running");

    // Until told to stop, or until leadership is lost: then stop writing at once.
    let watchdog = async {
        let mut stop = stop_rx.clone();
        let mut lost = false;
        match &election {
            Some(handle) => {
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => {}
                    _ = handle.lost_leadership() => {
                        error!("leadership lost: stopping (the pod restarts as a standby)");
                        lost = true;
                    }
                }
            }
            None => {
                let _ = stop.wait_for(|s| *s).await;
            }
        }
        let _ = stop_tx.send(true);
        lost
    };
    // The pass in flight finishes before the loop returns.
    let ((), lost) = tokio::join!(git_loop, watchdog);
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
    Ok(if lost {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::parse_author;

    #[test]
    fn commit_authors_are_name_and_email() {
        let author = parse_author("Plugin Bot <bot@example.com>").expect("valid");
        assert_eq!(author.name, "Plugin Bot");
        assert_eq!(author.email, "bot@example.com");
        for bad in [
            "bot@example.com",
            "Bot <bot@example.com",
            "<bot@example.com>",
            "Bot <>",
        ] {
            assert!(parse_author(bad).is_err(), "{bad}");
        }
    }
}
