//! Command-line interface: argument parsing, output formatting and exit codes.
//!
//! Exit codes follow `kubectl diff`: 0 success and nothing to change, 1 something is out of
//! date (`lock --locked`), 2 an error (invalid input, failed fetch, digest mismatch).

// First, so its `print!`/`println!` (safe on a closed pipe) replace std's in every module
// below, the commands' own code included.
#[macro_use]
mod output;
mod diff;
mod inventory;
mod logging;
mod progress;
mod run;

use crate::app;
use crate::app::lock::{LockError, LockOutcome, LockStatus};

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use plugsync_core::error::Error;
use plugsync_core::fetch::{FetchSettings, FetcherOrigin, Fetchers};
use plugsync_core::load::{self, LOCK_FILE, PLUGINS_FILE};
use plugsync_core::model::LockState;
use plugsync_core::package::{self, Package};
use plugsync_core::pipeline;
use plugsync_core::render::{self, RenderSettings};
use plugsync_core::resolve::cache::Cache;
use plugsync_core::resolve::Resolver;
use plugsync_core::source::WorkTree;
use plugsync_kube::apply::{Applier, ApplyOptions, Outcome};

/// The help section of the flags every command takes: listed after the command's own.
const GLOBAL_OPTIONS: &str = "Global options";
/// The help section of the flags that choose the cluster and namespace (as kubectl's).
const CLUSTER_OPTIONS: &str = "Cluster options";

/// plugsync: GitOps for Dify plugins on Kubernetes.
#[derive(Debug, Parser)]
#[command(name = "plugsync", version, about, long_about = None, args_override_self = true)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true, env = "PLUGSYNC_LOG_FORMAT", help_heading = GLOBAL_OPTIONS)]
    log_format: LogFormat,
    /// More logging (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true, help_heading = GLOBAL_OPTIONS)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum OutputFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write a minimal plugins.yaml to start from (refuses to overwrite one).
    Init(InitArgs),
    /// Pin every plugin in plugins.yaml to exact package bytes in plugins.lock.
    Lock(LockArgs),
    /// Check plugins.yaml, and plugins.lock against it, without fetching anything: exit 1
    /// when the lock is out of date, 2 on an error.
    Validate(ValidateArgs),
    /// Render the Dockerfiles, build contexts and Kubernetes objects of every plugin.
    Render(RenderArgs),
    /// Show what a change does, per plugin and per object, straight from git (no cluster),
    /// or with --cluster what applying the working tree would change in the cluster.
    /// Exit 0: no changes, 1: changes, 2: error.
    Diff(DiffArgs),
    /// Apply the working tree's PluginSet and Plugins to the cluster once (server-side apply,
    /// then prune); the controller builds and runs them.
    Apply(ApplyArgs),
    /// Run the plugin controller (build, run, retry each Plugin) and the build-context server.
    Controller(ControllerArgs),
    /// Run in the cluster: follow a git branch (or watch a folder), apply each good commit,
    /// and drive its plugins with the controller; with leader election, webhook, metrics.
    Run(Box<run::RunArgs>),
    /// Remove failed build attempts (their Plugins, Jobs and pods) and attempts superseded by
    /// newer build inputs, keeping --keep failed attempts per plugin.
    Gc(GcArgs),
    /// List the package source clients, in-tree and external (`plugsync-source-<scheme>`).
    Sources(SourcesArgs),
    /// Work with single `.difypkg` packages.
    #[command(subcommand)]
    Package(PackageCommand),
    /// Publish packages and groups to a private plugin inventory in an OCI registry.
    #[command(subcommand)]
    Inventory(inventory::InventoryCommand),
    /// List a private inventory's plugins with their newest versions.
    Search(inventory::SearchArgs),
    /// List a private inventory's groups and their plugins.
    Groups(inventory::GroupsArgs),
    /// List declared plugins that have newer versions in a private inventory.
    Outdated(inventory::OutdatedArgs),
}

/// Where the declared set lives.
#[derive(Debug, Args)]
struct RepoArgs {
    /// The folder holding plugins.yaml and plugins.lock.
    #[arg(long, default_value = ".")]
    repo: PathBuf,
    /// The declared set, relative to --repo.
    #[arg(long, default_value = PLUGINS_FILE)]
    file: PathBuf,
}

impl RepoArgs {
    fn plugins_path(&self) -> PathBuf {
        self.repo.join(&self.file)
    }
    fn lock_path(&self) -> PathBuf {
        let plugins = self.plugins_path();
        plugins
            .parent()
            .map(|p| p.join(LOCK_FILE))
            .unwrap_or_else(|| PathBuf::from(LOCK_FILE))
    }
    /// The declared set's file name inside [`RepoArgs::root`].
    fn file_name(&self) -> String {
        self.file
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_else(|| PLUGINS_FILE.to_string())
    }
    fn root(&self) -> PathBuf {
        self.plugins_path()
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."))
    }
}

/// How packages are fetched.
#[derive(Debug, Args)]
struct FetchArgs {
    /// Package cache folder [default: $PLUGSYNC_CACHE_DIR, else the user cache dir].
    #[arg(long, env = "PLUGSYNC_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Folders searched for `plugsync-source-<scheme>` clients before PATH.
    #[arg(
        long = "plugin-dir",
        env = "PLUGSYNC_PLUGIN_DIRS",
        value_delimiter = ':'
    )]
    plugin_dirs: Vec<PathBuf>,
    /// Timeout of one download attempt, e.g. `2m`.
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Extra attempts after a retryable failure (timeouts, 429, 5xx).
    #[arg(long, default_value_t = 3)]
    retries: u32,
    /// Largest package accepted, in MiB.
    #[arg(long, default_value_t = 64)]
    max_size_mib: u64,
}

impl FetchArgs {
    fn settings(&self) -> FetchSettings {
        FetchSettings {
            timeout: self.timeout,
            retries: self.retries,
            max_bytes: self.max_size_mib * 1024 * 1024,
            plugin_dirs: self.plugin_dirs.clone(),
            // `oci` package artifacts and the private inventory, as `docker login` left them.
            registry_logins: app::inventory::docker_logins(),
            ..FetchSettings::default()
        }
    }
}

/// `plugsync validate`: the set, and what it may read on this machine (it fetches nothing).
#[derive(Debug, Args)]
struct ValidateArgs {
    #[command(flatten)]
    repo: RepoArgs,
    /// Package cache in which pinned remote packages are checked [default:
    /// $PLUGSYNC_CACHE_DIR, else the user cache dir].
    #[arg(long, env = "PLUGSYNC_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Folders searched for `plugsync-source-<scheme>` clients before PATH.
    #[arg(
        long = "plugin-dir",
        env = "PLUGSYNC_PLUGIN_DIRS",
        value_delimiter = ':'
    )]
    plugin_dirs: Vec<PathBuf>,
}

#[derive(Debug, Args)]
struct LockArgs {
    #[command(flatten)]
    repo: RepoArgs,
    #[command(flatten)]
    fetch: FetchArgs,
    /// Change nothing; exit 1 when plugins.lock is missing or does not match plugins.yaml.
    #[arg(long, conflicts_with = "update")]
    locked: bool,
    /// Resolve this plugin (`author/name`) afresh even though it is pinned; repeatable.
    #[arg(long, value_name = "NAME")]
    update: Vec<String>,
    /// Also pin the image digests the controller recorded in the cluster (Plugin status),
    /// keyed by build-inputs hash, so the next render runs them and nothing is rebuilt.
    #[arg(long, conflicts_with = "locked")]
    from_cluster: bool,
    #[command(flatten)]
    kube: KubeArgs,
}

#[derive(Debug, Args)]
struct GcArgs {
    #[command(flatten)]
    kube: KubeArgs,
    /// Only this PluginSet's plugins [default: every set in the namespace].
    #[arg(long, value_name = "NAME")]
    set: Option<String>,
    /// Failed attempts to keep per plugin, newest first (the latest is always kept: it holds
    /// the Stalled state).
    #[arg(long, default_value_t = 0)]
    keep: usize,
    /// Print what would be removed; remove nothing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Debug, Args)]
struct RenderArgs {
    #[command(flatten)]
    repo: RepoArgs,
    #[command(flatten)]
    fetch: FetchArgs,
    #[command(flatten)]
    render: RenderSettingsArgs,
    /// Output format of the objects on stdout.
    #[arg(short, long, value_enum, default_value_t = ObjectFormat::Yaml)]
    output: ObjectFormat,
    /// Also write `<plugin-id>/{Dockerfile,context.tar,objects.yaml}` per plugin into DIR.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Also fail (exit 1) when plugins.lock does not exist. A lock that is out of date
    /// always fails: what is rendered is what is pinned.
    #[arg(long)]
    locked: bool,
}

/// Settings of the plugsync installation that show up in rendered objects.
#[derive(Debug, Args)]
struct RenderSettingsArgs {
    /// Base URL at which plugsync serves build contexts to build Jobs.
    #[arg(
        long,
        visible_alias = "context-base-url",
        env = "PLUGSYNC_CONTEXT_URL",
        default_value = plugsync_core::render::DEFAULT_CONTEXT_BASE_URL
    )]
    context_url: String,
}

impl RenderSettingsArgs {
    fn settings(&self) -> RenderSettings {
        RenderSettings {
            context_base_url: self.context_url.clone(),
        }
    }
}

#[derive(Debug, Args)]
struct DiffArgs {
    /// The folder holding plugins.yaml, inside a git work tree.
    #[arg(long, default_value = ".")]
    repo: PathBuf,
    /// The declared set, relative to --repo.
    #[arg(long, default_value = PLUGINS_FILE)]
    file: PathBuf,
    /// Base revision (a branch, remote branch, tag or commit), e.g. `origin/main`.
    #[arg(long, required_unless_present = "cluster", conflicts_with = "cluster")]
    base: Option<String>,
    /// Compare the working tree with the live cluster instead of with a git revision.
    #[arg(long)]
    cluster: bool,
    #[command(flatten)]
    kube: KubeArgs,
    /// Head revision [default: the working tree, uncommitted changes included].
    #[arg(long)]
    head: Option<String>,
    /// Compare with the base revision itself rather than with the merge base of base and
    /// head (the default, which shows only what the head side changed, like a pull request).
    #[arg(long)]
    no_merge_base: bool,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = DiffFormat::Text)]
    output: DiffFormat,
    /// Lines of context around each object change.
    #[arg(long, default_value_t = 3)]
    context_lines: usize,
    /// Only the summary: per plugin, its objects with the lines added and removed, no diffs
    /// (as `git diff --stat`).
    #[arg(long)]
    stat: bool,
    /// Colour the text output: auto (when stdout is a terminal and NO_COLOR is unset),
    /// always or never.
    #[arg(long, value_enum, default_value_t = ColorWhen::Auto, value_name = "WHEN")]
    color: ColorWhen,
    /// Largest markdown output, in characters (GitHub's limit on a comment by default): the
    /// diffs of plugins that do not fit are left out, and named, the summary stays; 0: no
    /// limit.
    #[arg(long, default_value_t = plugsync_core::report::GITHUB_COMMENT_LIMIT, value_name = "CHARS")]
    markdown_limit: usize,
    /// Where the full diff can be read (a URL, or words), named in markdown output that had
    /// to leave diffs out [default: a hint to run `plugsync diff` locally].
    #[arg(long, value_name = "TEXT")]
    full_diff_at: Option<String>,
    #[command(flatten)]
    fetch: FetchArgs,
    #[command(flatten)]
    render: RenderSettingsArgs,
}

/// How to reach the cluster, and in which namespace, as kubectl users expect.
#[derive(Debug, Args)]
struct KubeArgs {
    /// The namespace to work in [default: the kubeconfig context's; in a pod, the pod's].
    /// A plugins.yaml naming another namespace is refused, as by `kubectl apply -n`.
    #[arg(
        short = 'n',
        long,
        env = plugsync_kube::cluster::NAMESPACE_ENV,
        value_name = "NAMESPACE",
        help_heading = CLUSTER_OPTIONS
    )]
    namespace: Option<String>,
    /// Path to a kubeconfig file [default: $KUBECONFIG, ~/.kube/config, or in-cluster].
    #[arg(long, help_heading = CLUSTER_OPTIONS)]
    kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use [default: the current context].
    #[arg(long, help_heading = CLUSTER_OPTIONS)]
    context: Option<String>,
}

impl KubeArgs {
    fn options(&self) -> plugsync_kube::cluster::ClusterOptions {
        plugsync_kube::cluster::ClusterOptions {
            kubeconfig: self.kubeconfig.clone(),
            context: self.context.clone(),
            namespace: self.namespace.clone(),
        }
    }

    /// The client and the namespace (nothing is sent yet).
    async fn connect(&self) -> Result<plugsync_kube::cluster::Cluster, Error> {
        plugsync_kube::cluster::connect(&self.options()).await
    }
}

/// The namespace a declared set works in on `cluster` (kubectl's rule, see
/// [`plugsync_kube::cluster::namespace_for_set`]), printed on stderr; `-n` naming another namespace
/// than plugins.yaml's is an error at its `metadata.namespace`.
fn set_namespace(
    set: &load::LoadedPluginSet,
    cluster: &plugsync_kube::cluster::Cluster,
) -> Result<String, Error> {
    use plugsync_kube::cluster::SetNamespace;
    match plugsync_kube::cluster::namespace_for_set(
        set.spec().metadata.namespace.as_deref(),
        cluster,
    ) {
        SetNamespace::Use(namespace, source) => {
            eprintln!("namespace {namespace} ({source})");
            Ok(namespace)
        }
        SetNamespace::Conflict { declared, flag } => {
            let message = format!(
                "the set is in namespace `{declared}`, but --namespace is `{flag}`: pass \
                 --namespace={declared}, or remove metadata.namespace to apply it to the \
                 namespace of the command"
            );
            let at = set.doc.error_at("metadata.namespace", message);
            Err(Error::Invalid(plugsync_core::error::Diagnostics(vec![at])))
        }
    }
}

/// Where `controller` and `run` listen unless told: every interface in a pod (build Jobs and
/// the kubelet's probes reach it there), loopback elsewhere (a laptop's server is not for the
/// network).
fn default_listen(in_pod: bool) -> std::net::SocketAddr {
    let ip = if in_pod {
        std::net::Ipv4Addr::UNSPECIFIED
    } else {
        std::net::Ipv4Addr::LOCALHOST
    };
    std::net::SocketAddr::from((ip, 8080))
}

#[derive(Debug, Args)]
struct ApplyArgs {
    #[command(flatten)]
    repo: RepoArgs,
    #[command(flatten)]
    fetch: FetchArgs,
    #[command(flatten)]
    render: RenderSettingsArgs,
    #[command(flatten)]
    kube: KubeArgs,
    /// Send every write as a server-side dry run; delete nothing.
    #[arg(long)]
    dry_run: bool,
    /// Do not delete objects the set no longer declares.
    #[arg(long)]
    no_prune: bool,
    /// Do not install or update the plugsync CRDs (when RBAC does not allow it).
    #[arg(long)]
    skip_crds: bool,
}

#[derive(Debug, Args)]
struct ControllerArgs {
    #[command(flatten)]
    kube: KubeArgs,
    /// Address of the build-context server (build Jobs fetch `/contexts/<sha256>` from it)
    /// [default: 0.0.0.0:8080 in a pod, else 127.0.0.1:8080].
    #[arg(long, env = "PLUGSYNC_LISTEN")]
    listen: Option<std::net::SocketAddr>,
    /// Package and build-context cache [default: $PLUGSYNC_CACHE_DIR, else the user cache dir].
    #[arg(long, env = "PLUGSYNC_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    #[command(flatten)]
    render: RenderSettingsArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum DiffFormat {
    Text,
    Json,
    Markdown,
}

/// When the text diff is coloured.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum ColorWhen {
    /// On a terminal, unless NO_COLOR is set (CLICOLOR_FORCE forces it).
    Auto,
    Always,
    Never,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum ObjectFormat {
    Yaml,
    Json,
}

#[derive(Debug, Args)]
struct InitArgs {
    #[command(flatten)]
    repo: RepoArgs,
    /// Name of the set [default: the folder's name, made a valid name, else `plugins`].
    #[arg(long)]
    name: Option<String>,
    /// Where built images are pushed (`registry.prefix`), e.g. `registry.example.com/dify`.
    #[arg(long, default_value = "registry.example.com/dify-plugins")]
    registry_prefix: String,
    /// Overwrite an existing file.
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Args)]
struct SourcesArgs {
    #[command(flatten)]
    fetch: FetchArgs,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Text)]
    output: OutputFormat,
    /// Marketplace base URL shown for the marketplace client.
    #[arg(long, default_value = plugsync_core::model::DEFAULT_MARKETPLACE)]
    marketplace: url::Url,
}

#[derive(Debug, Subcommand)]
enum PackageCommand {
    /// Show a package's identity: name, version, Dify checksum, unique identifier, plugin id.
    Inspect {
        /// A `.difypkg` file or a plugin directory (packed in memory first).
        path: PathBuf,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
    /// Pack a plugin directory into a `.difypkg`, byte-identical on every machine.
    Pack {
        /// The plugin directory (with manifest.yaml).
        dir: PathBuf,
        /// Where to write the package (no `-o`: that is always an output format).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

/// Runs the command line and maps the outcome to an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format, cli.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let code = match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    };
    output::finish(code)
}

fn init_logging(format: LogFormat, verbose: u8) {
    let default = match verbose {
        0 => "plugsync=info",
        1 => "plugsync=debug",
        _ => "plugsync=trace",
    };
    logging::init(format == LogFormat::Json, default);
}

async fn run(command: Command) -> Result<ExitCode, Error> {
    match command {
        Command::Lock(args) => lock(args).await,
        Command::Validate(args) => validate(args).await,
        Command::Render(args) => render_command(args).await,
        Command::Diff(args) if args.cluster => cluster_diff_command(args).await,
        Command::Diff(args) => diff_command(args).await,
        Command::Apply(args) => apply_command(args).await,
        Command::Controller(args) => controller_command(args).await,
        Command::Run(args) => run::run_command(*args).await,
        Command::Gc(args) => gc_command(args).await,
        Command::Sources(args) => sources(args).await,
        Command::Init(args) => init(args),
        Command::Package(cmd) => package_command(cmd),
        Command::Inventory(cmd) => inventory::inventory_command(cmd).await,
        Command::Search(args) => inventory::search_command(args).await,
        Command::Groups(args) => inventory::groups_command(args).await,
        Command::Outdated(args) => inventory::outdated_command(args).await,
    }
}

async fn lock(args: LockArgs) -> Result<ExitCode, Error> {
    match lock_flow(args).await {
        Ok(outcome) => {
            print_lock_outcome(&outcome);
            Ok(ExitCode::SUCCESS)
        }
        Err(e @ LockError::OutOfDate { .. }) => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(1))
        }
        Err(LockError::Failed(e)) => Err(e),
    }
}

/// [`app::lock`]'s steps, with what each tells printed between them.
async fn lock_flow(args: LockArgs) -> Result<LockOutcome, LockError> {
    let mut run = app::lock::read(app::lock::LockRequest {
        plugins_path: args.repo.plugins_path(),
        lock_path: args.repo.lock_path(),
        root: args.repo.root(),
        locked: args.locked,
        update: args.update,
    })?;
    for warning in &run.warnings {
        eprintln!("warning: {warning}");
    }
    let resolver = resolver_for(&args.fetch)?;
    run.resolve(&resolver).await?;
    if args.from_cluster {
        let cluster = args.kube.connect().await?;
        let namespace = set_namespace(run.set(), &cluster)?;
        let (before, after) = run
            .record_cluster_images(&cluster.client, &namespace)
            .await?;
        println!("recorded image digests from the cluster: {after} pinned (was {before})");
    }
    run.finish()
}

fn print_lock_outcome(outcome: &LockOutcome) {
    for change in &outcome.changes {
        println!("{change}");
    }
    for (name, sha256) in &outcome.kept {
        println!(
            "{name}: kept sha256:{} (the package its source serves)",
            &sha256[..12]
        );
    }
    println!(
        "{}: {} ({} plugins)",
        outcome.path.display(),
        match outcome.status {
            LockStatus::Repaired => "repaired and written; commit it",
            LockStatus::UpToDate => "up to date",
            LockStatus::Written => "written",
        },
        outcome.plugins
    );
}

/// The resolver every command uses. Resolving fetches the exact URLs in the lock (a
/// marketplace entry's download URL included), so the registry's marketplace URL only matters
/// for `plugsync sources`, which builds its own.
fn resolver_for(fetch: &FetchArgs) -> Result<Resolver, Error> {
    let settings = fetch.settings();
    let max_bytes = settings.max_bytes;
    let cache_dir = fetch.cache_dir.clone().unwrap_or_else(Cache::default_dir);
    let cache = Cache::open(&cache_dir).map_err(|e| Error::io(&cache_dir, e))?;
    let mut resolver = Resolver::new(
        Fetchers::discover(settings, plugsync_core::model::default_marketplace_url()),
        cache,
        max_bytes,
    );
    if std::io::stderr().is_terminal() {
        resolver = resolver.with_progress(Arc::new(progress::TerminalProgress::new()));
    }
    Ok(resolver)
}

async fn render_command(args: RenderArgs) -> Result<ExitCode, Error> {
    crate::app::off_runtime(move |runtime| render_blocking(runtime, args)).await
}

/// `plugsync render`, on a thread that may block.
fn render_blocking(runtime: &tokio::runtime::Handle, args: RenderArgs) -> Result<ExitCode, Error> {
    let root = args.repo.root();
    let file = args.repo.file_name();
    let snapshot = WorkTree::new(&root).map_err(|e| Error::Usage(e.to_string()))?;
    let plugins_path = args.repo.plugins_path();
    let resolver = resolver_for(&args.fetch)?;
    let Some(state) = pipeline::resolved_state_blocking(runtime, &snapshot, &file, &resolver)?
    else {
        return Err(Error::Usage(format!(
            "{}: not found",
            plugins_path.display()
        )));
    };
    // What is rendered is what is pinned: a stale lock is refused, as `lock --locked` and
    // `apply` refuse it, rather than rendering packages nobody reviewed.
    let lock_path = args.repo.lock_path().display().to_string();
    match (&state.lock, state.lock.problem(&lock_path)) {
        (LockState::Stale(_), Some(problem)) => {
            eprintln!("error: {problem}, then render again");
            return Ok(ExitCode::from(1));
        }
        (LockState::Missing, Some(problem)) if args.locked => {
            eprintln!("error: {problem}");
            return Ok(ExitCode::from(1));
        }
        (LockState::Missing, Some(problem)) => {
            tracing::warn!(
                "{problem}; rendering the packages plugins.yaml resolves to now, unpinned"
            )
        }
        _ => {}
    }
    let format = match args.output {
        ObjectFormat::Yaml => render::TextFormat::Yaml,
        ObjectFormat::Json => render::TextFormat::Json,
    };
    // Plugin by plugin: each one's objects become the text to print (and, with --out, to
    // write) on the thread that rendered them, so the set's objects are never all held at
    // once. Nothing is printed or written unless every plugin renders.
    let rendered = state.render_text(&args.render.settings(), format, args.out.is_some())?;
    let mut pieces = Vec::with_capacity(rendered.len() + 8);
    pipeline::emit_text(&rendered, format, |text| pieces.push(text));
    write_to_stdout(&pieces)?;
    if let Some(out) = &args.out {
        for plugin in rendered {
            let (Some((dockerfile, context)), Some(yaml)) = (plugin.files, plugin.yaml) else {
                continue;
            };
            let dir = out.join(&plugin.resource_name);
            std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
            app::files::write_atomically(&dir.join("Dockerfile"), dockerfile.as_bytes())?;
            app::files::write_atomically(&dir.join("context.tar"), &context.bytes)?;
            app::files::write_atomically(&dir.join("objects.yaml"), yaml.as_bytes())?;
        }
    } else {
        // As after a diff: the process exits right after this, and the operating system
        // reclaims the set's packages and text at once, faster than freeing them one by one.
        std::mem::forget(rendered);
    }
    std::mem::forget((state, resolver));
    Ok(ExitCode::SUCCESS)
}

/// Writes `pieces` to stdout in order, many per system call; a closed pipe is not an error
/// (see [`output`]).
fn write_to_stdout(pieces: &[&str]) -> Result<(), Error> {
    output::write_pieces(pieces)
}

async fn diff_command(args: DiffArgs) -> Result<ExitCode, Error> {
    crate::app::off_runtime(move |runtime| diff_blocking(runtime, args)).await
}

/// `plugsync diff`, on a thread that may block (git object reads, loading, rendering).
fn diff_blocking(runtime: &tokio::runtime::Handle, args: DiffArgs) -> Result<ExitCode, Error> {
    let Some(base) = args.base.as_deref() else {
        return Err(Error::Usage("--base is required without --cluster".into()));
    };
    let revisions = app::diff::revisions(&app::diff::DiffRequest {
        repo: &args.repo,
        base,
        head: args.head.as_deref(),
        merge_base: !args.no_merge_base,
    })?;
    let resolver = resolver_for(&args.fetch)?;
    let file = args.file.to_string_lossy().into_owned();
    let mut report = app::diff::report(
        runtime,
        &revisions,
        &file,
        &resolver,
        &args.render.settings(),
        args.context_lines,
    )?;
    // Repository-relative, as a reviewer knows the files: never the runner's checkout path.
    report.file = Some(diff::file_label(&args.repo, &args.file));
    let code = diff::print_report(&report, &args);
    // The process exits right after this: the operating system reclaims the report's memory
    // at once, faster than freeing it object by object.
    std::mem::forget(report);
    Ok(code)
}

/// Renders the working tree for a cluster operation on `cluster`, refusing a missing or stale
/// lock: what reaches a cluster is always pinned. The set works in [`set_namespace`]'s
/// namespace, printed on stderr.
async fn pinned_state(
    repo: &RepoArgs,
    fetch: &FetchArgs,
    render: &RenderSettingsArgs,
    cluster: &plugsync_kube::cluster::Cluster,
) -> Result<pipeline::DesiredState, Error> {
    let root = repo.root();
    let file = repo.file_name();
    let snapshot = WorkTree::new(&root).map_err(|e| Error::Usage(e.to_string()))?;
    let resolver = resolver_for(fetch)?;
    let plugins_path = repo.plugins_path();
    let mut resolved = crate::app::off_runtime(move |runtime| {
        pipeline::resolved_state_blocking(runtime, &snapshot, &file, &resolver)
    })
    .await?
    .ok_or_else(|| Error::Usage(format!("{}: not found", plugins_path.display())))?;
    let namespace = set_namespace(&resolved.set, cluster)?;
    resolved.in_namespace(&namespace);
    let settings = render.settings();
    let state = crate::app::off_runtime(move |_| resolved.render(&settings)).await?;
    app::lock::require_pinned(&state.lock, &repo.lock_path())?;
    Ok(state)
}

fn plugsync_crds(
) -> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>
{
    plugsync_core::crd::definitions().into()
}

async fn apply_command(args: ApplyArgs) -> Result<ExitCode, Error> {
    let cluster = args.kube.connect().await?;
    let state = pinned_state(&args.repo, &args.fetch, &args.render, &cluster).await?;
    let applier = Applier::new(cluster.client.clone());
    let options = ApplyOptions {
        dry_run: args.dry_run,
        prune: !args.no_prune,
    };
    let crd_report = if args.skip_crds {
        plugsync_kube::apply::ApplyReport::default()
    } else {
        applier.ensure_crds(&plugsync_crds(), options).await?
    };
    for (key, outcome) in &crd_report.objects {
        if *outcome != Outcome::Unchanged {
            println!("{} {key}", outcome_verb(*outcome, args.dry_run));
        }
    }
    let report = applier
        .apply_set(&state.set.spec().clone(), &state.cluster_objects(), options)
        .await?;
    // Plugins are named as people know them (`author/name@version`) beside their hex id:
    // desired ones from what is applied, removed ones from what the cluster had.
    let objects = state.cluster_objects();
    let plugin_names: std::collections::BTreeMap<plugsync_core::plan::ObjectKey, String> = objects
        .iter()
        .chain(report.changes.iter().filter_map(|c| c.live.as_ref()))
        .filter(|o| o["kind"] == "Plugin")
        .filter_map(|o| {
            let key = plugsync_core::plan::ObjectKey::of(o).ok()?;
            let spec = &o["spec"];
            Some((
                key,
                format!("{}@{}", spec["name"].as_str()?, spec["version"].as_str()?),
            ))
        })
        .collect();
    let named = |key: &plugsync_core::plan::ObjectKey| match plugin_names.get(key) {
        Some(plugin) => format!("{key} ({plugin})"),
        None => key.to_string(),
    };
    for (key, outcome) in &report.objects {
        if *outcome != Outcome::Unchanged {
            println!("{} {}", outcome_verb(*outcome, args.dry_run), named(key));
        }
    }
    for (key, editors) in &report.drift {
        let verb = if args.dry_run {
            "would take back"
        } else {
            "took back"
        };
        println!(
            "{verb} {}: fields changed by hand with {} (drift)",
            named(key),
            editors.join(", ")
        );
    }
    for (key, why) in &report.failed {
        eprintln!("error: {}: {why}", named(key));
    }
    if args.dry_run {
        println!("dry run, nothing changed: {}", report.dry_run_summary());
    } else {
        println!("{}", report.summary());
    }
    Ok(if report.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

/// What happened to an object, or in a dry run what would: `created`, `would create`, …
fn outcome_verb(outcome: Outcome, dry_run: bool) -> &'static str {
    match (outcome, dry_run) {
        (Outcome::Created, false) => "created",
        (Outcome::Created, true) => "would create",
        (Outcome::Updated, false) => "updated",
        (Outcome::Updated, true) => "would update",
        (Outcome::Unchanged, false) => "unchanged",
        (Outcome::Unchanged, true) => "would leave unchanged",
        (Outcome::Pruned, false) => "removed",
        (Outcome::Pruned, true) => "would remove",
        (Outcome::Held, false) => "kept until the new version runs",
        (Outcome::Held, true) => "would keep until the new version runs",
    }
}

async fn controller_command(args: ControllerArgs) -> Result<ExitCode, Error> {
    let cache_dir = args.cache_dir.clone().unwrap_or_else(Cache::default_dir);
    crate::app::controller::run(crate::app::controller::ControllerOptions {
        cluster: args.kube.connect().await?,
        listen: args
            .listen
            .unwrap_or_else(|| default_listen(plugsync_kube::cluster::running_in_pod())),
        cache: Cache::open(&cache_dir).map_err(|e| Error::io(&cache_dir, e))?,
        render: args.render.settings(),
    })
    .await?;
    Ok(ExitCode::SUCCESS)
}

async fn gc_command(args: GcArgs) -> Result<ExitCode, Error> {
    let cluster = args.kube.connect().await?;
    eprintln!("{}", cluster.namespace_line());
    let (client, namespace) = (&cluster.client, &cluster.namespace);
    let removals = plugsync_kube::controller::reconcile::collect_garbage(
        client,
        namespace,
        args.set.as_deref(),
        args.keep,
        args.dry_run,
    )
    .await
    .map_err(|e| Error::Cluster(format!("gc in namespace {namespace}: {e}")))?;
    let verb = outcome_verb(Outcome::Pruned, args.dry_run);
    for removal in &removals {
        match removal {
            plugsync_kube::controller::history::Removal::Plugin(name) => {
                println!("{verb} Plugin {namespace}/{name} with its build Job and Deployment")
            }
            plugsync_kube::controller::history::Removal::Job(name) => {
                println!("{verb} Job {namespace}/{name} (the Plugin keeps its failure)")
            }
        }
    }
    if args.dry_run {
        println!(
            "dry run, nothing changed: {} failed or superseded attempts to remove",
            removals.len()
        );
    } else {
        println!("{} failed or superseded attempts removed", removals.len());
    }
    Ok(ExitCode::SUCCESS)
}

async fn cluster_diff_command(args: DiffArgs) -> Result<ExitCode, Error> {
    let repo = RepoArgs {
        repo: args.repo.clone(),
        file: args.file.clone(),
    };
    let cluster = args.kube.connect().await?;
    let state = pinned_state(&repo, &args.fetch, &args.render, &cluster).await?;
    let applier = Applier::new(cluster.client.clone());
    let options = ApplyOptions {
        dry_run: true,
        prune: true,
    };
    let applied = applier
        .apply_set(&state.set.spec().clone(), &state.cluster_objects(), options)
        .await?;
    for (key, why) in &applied.failed {
        eprintln!("error: {key}: {why}");
    }
    let failed = !applied.failed.is_empty();
    let namespace = state
        .set
        .spec()
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| cluster.namespace.clone());
    let report = diff::cluster_report(
        &cluster.client,
        &namespace,
        &state,
        applied,
        diff::file_label(&args.repo, &args.file),
        args.context_lines,
    )
    .await;
    let code = diff::print_report(&report, &args);
    Ok(if failed { ExitCode::from(2) } else { code })
}

/// Says that the lock at `lock_path` is out of date, and why: exit code 1, as `lock --locked`.
fn out_of_date(lock_path: &Path, why: &str) -> Result<ExitCode, Error> {
    eprintln!("error: {} is out of date: {why}", lock_path.display());
    Ok(ExitCode::from(1))
}

/// `plugsync validate`: plugins.yaml, plugins.lock, and the lock against the set as far as
/// it can be checked offline ([`Resolver::check_offline`]): packs `path:` plugins and reads
/// the cache, so it runs off the async runtime.
async fn validate(args: ValidateArgs) -> Result<ExitCode, Error> {
    tokio::task::spawn_blocking(move || validate_offline(&args))
        .await
        .map_err(|e| Error::Usage(format!("validate: {e}")))?
}

fn validate_offline(args: &ValidateArgs) -> Result<ExitCode, Error> {
    let plugins_path = args.repo.plugins_path();
    let set = load::load_plugin_set(&plugins_path, &load::read_file(&plugins_path)?)?;
    println!(
        "{}: valid ({} plugins)",
        plugins_path.display(),
        set.plugins.len() + set.inventory_entries.len()
    );
    let lock_path = args.repo.lock_path();
    let Some(text) = app::lock::read_lock_text(&lock_path)? else {
        eprintln!(
            "note: {} does not exist; run `plugsync lock` and commit it",
            lock_path.display()
        );
        return Ok(ExitCode::SUCCESS);
    };
    let lock = load::load_lock(&lock_path, &text)?;

    let cache_dir = args.cache_dir.clone().unwrap_or_else(Cache::default_dir);
    let cache = Cache::open(&cache_dir).map_err(|e| Error::io(&cache_dir, e))?;
    let settings = FetchSettings {
        plugin_dirs: args.plugin_dirs.clone(),
        ..FetchSettings::default()
    };
    let max_bytes = settings.max_bytes;
    let resolver = Resolver::new(
        Fetchers::discover(settings, plugsync_core::model::default_marketplace_url()),
        cache,
        max_bytes,
    );
    let snapshot = WorkTree::new(&args.repo.root()).map_err(|e| Error::Usage(e.to_string()))?;
    // `inventory:` and `group:` entries, expanded against the inventory the lock pins, from
    // the cache only.
    let expanded =
        tokio::runtime::Handle::current().block_on(plugsync_core::expand::expand_from(
            &set,
            &snapshot,
            "",
            Some(&lock.value),
            &cache_dir,
            true,
            &Default::default(),
        ))?;
    let set = expanded.map_or(set, |e| e.set);
    let check = resolver.check_offline(&snapshot, &set, &lock);
    for warning in &check.warnings {
        eprintln!("warning: {warning}");
    }
    let changes = check
        .changes
        .iter()
        .map(|c| format!("  {c}"))
        .collect::<Vec<_>>()
        .join("\n");
    let stale =
        format!("it differs from plugins.yaml:\n{changes}\nrun `plugsync lock` and commit it");
    if !check.problems.is_empty() {
        if !check.up_to_date() {
            eprintln!("{} is out of date: {stale}", lock_path.display());
        }
        return Err(Error::Invalid(plugsync_core::error::Diagnostics(
            check.problems,
        )));
    }
    if !check.up_to_date() {
        return out_of_date(&lock_path, &stale);
    }
    println!(
        "{}: valid, up to date ({} plugins)",
        lock_path.display(),
        lock.value.plugins.len()
    );
    if !check.unverified.is_empty() {
        eprintln!(
            "note: not checked against their packages, which are not in the cache (validate \
             fetches nothing; `plugsync lock --locked` does): {}",
            check.unverified.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The plugins.yaml `plugsync init` writes: what must be set, and commented examples of the
/// rest, so the next step is in the file itself.
fn scaffold(name: &str, registry_prefix: &str) -> String {
    // Plain when plainly safe; else a JSON string (JSON strings are YAML strings), so no
    // value can break the document.
    let quoted = |s: &str| {
        let plain = s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._/:-".contains(c));
        if plain {
            s.to_string()
        } else {
            serde_json::Value::from(s).to_string()
        }
    };
    format!(
        "# The Dify plugins to build and run (see README). Pin them with `plugsync lock` and commit
# both files; `plugsync diff --base main` shows what a change does.
apiVersion: plugsync.dev/v1alpha1
kind: PluginSet
metadata:
  name: {name}
  # namespace: dify   # Left out: the namespace of the command (-n, else the kubeconfig context's).
spec:
  registry:
    # Where built images are pushed, and the kubernetes.io/dockerconfigjson Secret with push
    # credentials (Dify connector: imageRepoPrefix, imageRepoSecret).
    prefix: {prefix}
    secretName: image-repo-secret
  # runtime:          # Defaults of every plugin's pods; each plugin may override them.
  #   resources:      # Left out: what Dify Enterprise's connector gives plugin pods.
  #     limits: {{memory: 1Gi}}
  plugins: []
  # plugins:
  #   - marketplace: langgenius/openai   # From the Dify marketplace.
  #     version: 0.2.7
  #   - path: plugins/my-plugin          # A plugin folder or .difypkg in this repository.
  #   - url: https://example.com/my-plugin-1.0.0.difypkg
",
        name = quoted(name),
        prefix = quoted(registry_prefix),
    )
}

/// A valid set name from a folder name: lowercase letters, digits and `-`, at most 63.
fn name_from_folder(folder: &Path) -> String {
    let folder = std::fs::canonicalize(folder).unwrap_or_else(|_| folder.to_path_buf());
    let raw = folder
        .file_name()
        .map(|f| f.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let mut name = String::new();
    for c in raw.chars() {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            name.push(c);
        } else if !name.is_empty() && !name.ends_with('-') {
            name.push('-');
        }
    }
    let name: String = name.chars().take(63).collect();
    let name = name.trim_matches('-');
    if name.is_empty() {
        "plugins".to_string()
    } else {
        name.to_string()
    }
}

fn init(args: InitArgs) -> Result<ExitCode, Error> {
    let path = args.repo.plugins_path();
    if path.exists() && !args.force {
        return Err(Error::Usage(format!(
            "{}: already exists; edit it, or pass --force to replace it",
            path.display()
        )));
    }
    let root = args.repo.root();
    let name = args.name.clone().unwrap_or_else(|| name_from_folder(&root));
    let text = scaffold(&name, &args.registry_prefix);
    // What init writes must load: a bad --name or --registry-prefix is reported as plugsync
    // reports it in plugins.yaml, and nothing is written.
    load::load_plugin_set(&path, &text)?;
    std::fs::create_dir_all(&root).map_err(|e| Error::io(&root, e))?;
    app::files::write_atomically(&path, text.as_bytes())?;
    println!("{}: written (set {name})", path.display());
    println!(
        "next: add plugins under spec.plugins, then `plugsync lock` and commit {} and {}",
        args.repo.file_name(),
        LOCK_FILE
    );
    Ok(ExitCode::SUCCESS)
}

async fn sources(args: SourcesArgs) -> Result<ExitCode, Error> {
    let registry = Fetchers::discover(args.fetch.settings(), args.marketplace.clone());
    let list = registry.list().await;
    match args.output {
        OutputFormat::Json => {
            let items: Vec<serde_json::Value> = list
                .iter()
                .map(|s| {
                    serde_json::json!({
                        "scheme": s.scheme,
                        "origin": match &s.origin { FetcherOrigin::InTree => "in-tree".to_string(), FetcherOrigin::External { .. } => "external".to_string() },
                        "path": match &s.origin { FetcherOrigin::InTree => None, FetcherOrigin::External { path } => Some(path.display().to_string()) },
                        "description": s.description,
                        "attributes": s.attributes,
                    })
                })
                .collect();
            println!(
                "{}",
                serde_json::to_string_pretty(&items).unwrap_or_default()
            );
        }
        OutputFormat::Text => {
            println!(
                "{:<12} {:<9} {:<44} ATTRIBUTES",
                "SCHEME", "ORIGIN", "DESCRIPTION"
            );
            for s in &list {
                let origin = match &s.origin {
                    FetcherOrigin::InTree => "in-tree".to_string(),
                    FetcherOrigin::External { path } => format!("external ({})", path.display()),
                };
                let attrs: Vec<String> = s
                    .attributes
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                println!(
                    "{:<12} {:<9} {:<44} {}",
                    s.scheme,
                    origin,
                    s.description,
                    attrs.join(" ")
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn package_command(cmd: PackageCommand) -> Result<ExitCode, Error> {
    match cmd {
        PackageCommand::Inspect { path, output } => {
            let label = path.display().to_string();
            let bytes = if path.is_dir() {
                package::pack_dir(&path).map_err(|e| Error::Package {
                    plugin: label.clone(),
                    source: e,
                })?
            } else {
                std::fs::read(&path).map_err(|e| Error::io(&path, e))?
            };
            let pkg = Package::read(&bytes).map_err(|e| Error::Package {
                plugin: label,
                source: e,
            })?;
            let info = serde_json::json!({
                "name": pkg.name(),
                "version": pkg.manifest.version,
                "sha256": pkg.sha256,
                "checksum": pkg.checksum,
                "unique_identifier": pkg.unique_identifier(),
                "plugin_id": pkg.plugin_id(),
                "runner": {"language": pkg.manifest.runner_language, "version": pkg.manifest.runner_version, "entrypoint": pkg.manifest.entrypoint},
                "memory": pkg.manifest.memory,
            });
            match output {
                OutputFormat::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&info).unwrap_or_default()
                ),
                OutputFormat::Text => {
                    println!("name:              {}", pkg.name());
                    println!("version:           {}", pkg.manifest.version);
                    println!("sha256:            {}", pkg.sha256);
                    println!("checksum:          {}", pkg.checksum);
                    println!("unique_identifier: {}", pkg.unique_identifier());
                    println!("plugin_id:         {}", pkg.plugin_id());
                    println!(
                        "runner:            python {} -m {}",
                        pkg.manifest.runner_version, pkg.manifest.entrypoint
                    );
                    let memory = pkg.manifest.memory;
                    let note = if memory < plugsync_core::render::MEMORY_FLOOR {
                        " (below the floor: its pods get the default memory)"
                    } else {
                        ""
                    };
                    println!(
                        "memory:            {}{note}",
                        plugsync_core::render::memory_quantity(memory)
                    );
                }
            }
        }
        PackageCommand::Pack { dir, out } => {
            let label = dir.display().to_string();
            let bytes = package::pack_dir(&dir).map_err(|e| Error::Package {
                plugin: label.clone(),
                source: e,
            })?;
            app::files::write_atomically(&out, &bytes)?;
            let pkg = Package::read(&bytes).map_err(|e| Error::Package {
                plugin: label,
                source: e,
            })?;
            println!(
                "{}: {} ({} bytes, sha256:{})",
                out.display(),
                pkg.unique_identifier(),
                bytes.len(),
                pkg.sha256
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    /// Every subcommand, with its path (`package inspect`).
    fn subcommands() -> Vec<(String, clap::Command)> {
        use clap::CommandFactory;
        fn walk(prefix: &str, command: &clap::Command, out: &mut Vec<(String, clap::Command)>) {
            // (clap's own `help` subcommands have no options.)
            for sub in command.get_subcommands().filter(|s| s.get_name() != "help") {
                let path = format!("{prefix} {}", sub.get_name()).trim().to_string();
                out.push((path.clone(), sub.clone()));
                walk(&path, sub, out);
            }
        }
        let mut root = Cli::command();
        root.build();
        let mut out = Vec::new();
        walk("", &root, &mut out);
        out
    }

    #[test]
    fn dash_o_is_always_an_output_format() {
        let mut seen = 0;
        for (path, command) in subcommands() {
            for arg in command.get_arguments() {
                if arg.get_short() == Some('o') {
                    seen += 1;
                    assert_eq!(arg.get_long(), Some("output"), "plugsync {path} -o");
                    assert!(
                        !arg.get_possible_values().is_empty(),
                        "plugsync {path} -o takes a format"
                    );
                }
            }
        }
        assert!(seen >= 4, "render, diff, sources, package inspect");
    }

    #[test]
    fn every_cluster_command_takes_dash_n() {
        let mut cluster_commands = Vec::new();
        for (path, command) in subcommands() {
            let has = |long: &str| command.get_arguments().any(|a| a.get_long() == Some(long));
            if has("kubeconfig") {
                cluster_commands.push(path.clone());
                let namespace = command
                    .get_arguments()
                    .find(|a| a.get_long() == Some("namespace"))
                    .unwrap_or_else(|| panic!("plugsync {path} has no --namespace"));
                assert_eq!(namespace.get_short(), Some('n'), "plugsync {path}");
                assert_eq!(
                    namespace.get_env().and_then(|e| e.to_str()),
                    Some(plugsync_kube::cluster::NAMESPACE_ENV),
                    "plugsync {path}: one variable for the namespace"
                );
            }
        }
        cluster_commands.sort();
        assert_eq!(
            cluster_commands,
            ["apply", "controller", "diff", "gc", "lock", "run"],
            "the commands that reach a cluster"
        );
    }

    #[test]
    fn global_options_are_listed_after_a_commands_own() {
        for (path, mut command) in subcommands() {
            if command.has_subcommands() {
                continue;
            }
            let help = command.render_help().to_string();
            let own = help
                .find("Options:")
                .unwrap_or_else(|| panic!("{path}: {help}"));
            let global = help
                .find("Global options:")
                .unwrap_or_else(|| panic!("plugsync {path}: no global options section\n{help}"));
            assert!(own < global, "plugsync {path}:\n{help}");
            assert!(
                !help[..global].contains("--log-format") && !help[..global].contains("--verbose"),
                "plugsync {path}: a global flag among the command's own\n{help}"
            );
            if let Some(cluster) = help.find("Cluster options:") {
                assert!(
                    own < cluster && cluster < global,
                    "plugsync {path}:\n{help}"
                );
            }
        }
    }

    #[test]
    fn the_default_listen_address_is_loopback_outside_a_pod() {
        assert_eq!(default_listen(false).to_string(), "127.0.0.1:8080");
        assert_eq!(default_listen(true).to_string(), "0.0.0.0:8080");
    }

    #[test]
    fn init_names_the_set_after_its_folder() {
        assert_eq!(
            name_from_folder(Path::new("/x/Team_A.Plugins")),
            "team-a-plugins"
        );
        assert_eq!(name_from_folder(Path::new("/x/--dify--")), "dify");
        assert_eq!(name_from_folder(Path::new("/x/___")), "plugins");
        assert_eq!(name_from_folder(Path::new(&"a".repeat(80))).len(), 63);
        let yaml = scaffold("team-a", "registry.example.com:5000/dify");
        assert!(yaml.contains("  name: team-a\n"), "{yaml}");
        assert!(
            yaml.contains("    prefix: registry.example.com:5000/dify\n"),
            "{yaml}"
        );
        let yaml = scaffold("a: b", "x");
        assert!(
            yaml.contains("  name: \"a: b\"\n"),
            "quoted when it must be: {yaml}"
        );
    }

    #[test]
    fn diff_needs_a_base_or_the_cluster() {
        assert!(Cli::try_parse_from(["plugsync", "diff"]).is_err());
        assert!(Cli::try_parse_from(["plugsync", "diff", "--base", "main"]).is_ok());
        assert!(
            Cli::try_parse_from(["plugsync", "diff", "--cluster", "--context", "kind"]).is_ok()
        );
        assert!(Cli::try_parse_from(["plugsync", "diff", "--cluster", "--base", "main"]).is_err());
    }
}
