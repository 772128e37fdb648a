//! `plugsync run`'s flags, turned into the application layer's options (`crate::app::run`,
//! which wires the git loop, the controller, the server and leader election).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::{default_listen, resolver_for, FetchArgs, KubeArgs, RenderSettingsArgs};
use crate::app::run::{ConnectorOptions, LeaderOptions, LoopSettings, Origin, RunEnd, RunOptions};
use plugsync_core::error::Error;
use plugsync_core::load::PLUGINS_FILE;
use plugsync_core::resolve::cache::Cache;
use plugsync_core::source::remote::CommitAuthor;
use plugsync_kube::gitops::LockCommit;
use plugsync_kube::server::WebhookAuthKind;

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
    /// Deprecated and ignored (the PluginSet status follows watches of the set and its
    /// Plugins); accepted for one release so existing manifests keep starting.
    #[arg(long, hide = true, value_parser = humantime::parse_duration)]
    status_interval: Option<Duration>,
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
    /// Answer Dify's plugin daemon as its serverless connector (`/ping`,
    /// `/v1/runner/instances`, `/v1/launch`), with the key in this file (what the daemon
    /// sends as DIFY_PLUGIN_SERVERLESS_CONNECTOR_API_KEY).
    #[arg(long)]
    connector_key_file: Option<PathBuf>,
    /// How long a connector launch waits for the plugin to run before reporting failure;
    /// keep it below the daemon's DIFY_PLUGIN_SERVERLESS_CONNECTOR_LAUNCH_TIMEOUT (240s).
    #[arg(long, default_value = "230s", value_parser = humantime::parse_duration)]
    connector_launch_timeout: Duration,
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
    if let Some(interval) = args.status_interval {
        tracing::warn!(
            status_interval = %humantime::format_duration(interval),
            "--status-interval is deprecated and ignored: the PluginSet status follows watches \
             of the set and its Plugins; remove the flag (a later release will refuse it)"
        );
    }
    if !(0.0..1.0).contains(&args.jitter) {
        return Err(Error::Usage(
            "--jitter must be at least 0 and below 1".into(),
        ));
    }
    let origin = match (args.repo, args.git_url) {
        (Some(root), _) => Origin::Folder(root),
        (None, Some(url)) => Origin::Git {
            url,
            branch: args.branch,
            secret: args.git_secret,
        },
        (None, None) => return Err(Error::Usage("give --git-url or --repo".into())),
    };
    let commit_lock = if args.commit_lock {
        Some(LockCommit {
            author: parse_author(&args.commit_author)?,
            message: args.commit_message,
        })
    } else {
        None
    };
    let webhook = match (args.webhook_secret_file, args.webhook_token_file) {
        (Some(path), _) => Some((path, WebhookAuthKind::GitHubHmac)),
        (None, Some(path)) => Some((path, WebhookAuthKind::Token)),
        (None, None) => None,
    };
    let options = RunOptions {
        // The namespace plugsync manages: the PluginSet's, its Plugins', their children's.
        cluster: args.kube.connect().await?,
        listen: args
            .listen
            .unwrap_or_else(|| default_listen(plugsync_kube::cluster::running_in_pod())),
        cache_dir: args
            .fetch
            .cache_dir
            .clone()
            .unwrap_or_else(Cache::default_dir),
        resolver: resolver_for(&args.fetch)?,
        render: args.render.settings(),
        origin,
        settings: LoopSettings {
            path: args.path,
            file: args.file,
            interval: args.interval,
            git_timeout: args.git_timeout,
            jitter: args.jitter,
            resync: args.resync,
            suspend: args.suspend,
            install_crds: args.install_crds,
            commit_lock,
        },
        webhook,
        connector: args.connector_key_file.map(|key_file| ConnectorOptions {
            key_file,
            launch_timeout: args.connector_launch_timeout,
        }),
        leader: args.leader_election.then_some(LeaderOptions {
            lease_name: args.lease_name,
            lease_duration: args.lease_duration,
        }),
    };
    Ok(match crate::app::run::run(options).await? {
        RunEnd::Stopped => ExitCode::SUCCESS,
        RunEnd::LeadershipLost => ExitCode::from(1),
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
