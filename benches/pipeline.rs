//! Wall time and peak memory of `render` and of the pull-request `diff` on synthetic
//! repositories of N plugins (see `plugsync_testkit::synth`).
//!
//! Run with `cargo bench --bench pipeline`; `PLUGSYNC_BENCH_N=10,100` picks the sizes
//! (default 10, 100, 1000, 10000).
//!
//! The diff is also measured on repositories whose packages are committed (`.difypkg`
//! files, and unpacked plugin directories: `synth::SynthPackages`), which `plugsync diff`
//! reads at both revisions. Beside the stages, `kubectl kustomize` builds the objects
//! `plugsync render` prints, written as a kustomize base (one file per plugin, listed in
//! `kustomization.yaml`), and both are timed side by side with their ratio printed; the
//! outputs are checked to hold the same objects. kustomize is slow (about 90 s at N =
//! 1000): it runs once at N ≥ 1000 and only up to N = 1000 unless
//! `PLUGSYNC_BENCH_KUSTOMIZE=<largest N>`; `PLUGSYNC_BENCH_KUSTOMIZE=0` skips it.
//!
//! Every (N, stage) measurement runs in a fresh child process (this binary, re-executed
//! with `__child` arguments), so the peak RSS it reports (`VmHWM` from `/proc/self/status`,
//! reset through `/proc/self/clear_refs` just before the stage starts, read after its first
//! run) belongs to that measurement alone, not to the generator or an earlier, larger N.
//! The render stages measure what `plugsync render` runs: every plugin rendered and turned
//! into its YAML text on the rendering thread (`ResolvedState::render_text`), then the text
//! emitted in order (`pipeline::emit_text`, into a byte counter here). The pure render's
//! inputs are loaded and resolved without rendering, so its peak is the render's with its
//! inputs held; `render-set` is the former whole-set render (`render::render_set`, every
//! plugin's objects held at once), kept as a reference. `plugsync render` and
//! `plugsync diff` run the released binary itself, start-up and exit included, with
//! stdout to a file; their peak RSS is the child process's (`getrusage`). The
//! parent generates each repository once, commits it on `main` in a throwaway git
//! repository and upgrades one plugin in the working tree, so `diff` compares like a pull
//! request with one plugin changed.
//!
//! To profile one measurement: `target/release/deps/pipeline-<hash> __prepare 1000 /tmp/b`,
//! then `perf record -g target/release/deps/pipeline-<hash> __child diff 1000 /tmp/b/repo
//! /tmp/b/cache` (stages: `render-pure`, `render-pipeline`, `render-command`,
//! `render-set`, `diff`, `diff-lean`, `diff-command`; `__prepare 1000 /tmp/b files` (or
//! `dirs`) commits the packages, for `diff-lean-files`, `diff-command-files`,
//! `diff-lean-dirs` and `diff-command-dirs`).

/// The allocator of the `plugsync` binary (src/main.rs), so the figures are the command's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use nix::sys::resource::{getrusage, UsageWho};
use plugsync_core::diff;
use plugsync_core::pipeline::{self, DesiredState};
use plugsync_core::render::{self, RenderSettings, TextFormat};
use plugsync_core::report::{DiffReport, PluginChangeKind};
use plugsync_core::resolve::cache::Cache;
use plugsync_core::resolve::Resolver;
use plugsync_core::source::{GitRevision, Snapshot, WorkTree};
use plugsync_testkit::synth::{self, SynthChange, SynthPackages};

/// Sizes measured when `PLUGSYNC_BENCH_N` is not set.
const DEFAULT_SIZES: [usize; 4] = [10, 100, 1000, 10_000];
/// First argument of a child invocation.
const CHILD: &str = "__child";
/// First argument of a `__prepare N DIR` invocation, which only generates (for profiling
/// one child by hand: `__child STAGE N DIR/repo DIR/cache` under `perf record`).
const PREPARE: &str = "__prepare";
/// Prefix of the one line a child prints for its parent.
const RESULT: &str = "PLUGSYNC_BENCH_RESULT";
/// The plugins file of the synthetic repository.
const FILE: &str = "plugins.yaml";
/// The size the targets are stated for.
const TARGET_N: usize = 1000;
/// Targets at [`TARGET_N`] on a 2-core machine.
const RENDER_TARGET: Duration = Duration::from_millis(100);
const DIFF_TARGET: Duration = Duration::from_millis(250);
const RSS_TARGET_BYTES: u64 = 100_000_000;
/// The diff's memory target: 64 MiB.
const DIFF_RSS_TARGET_BYTES: u64 = 64 << 20;
/// `plugsync render` must be at least this many times faster than `kubectl kustomize` on
/// the same objects at [`TARGET_N`].
const KUSTOMIZE_RATIO_TARGET: f64 = 100.0;
/// Largest N kustomize is run at when `PLUGSYNC_BENCH_KUSTOMIZE` does not say.
const KUSTOMIZE_DEFAULT_MAX_N: usize = TARGET_N;
/// "Linear": the per-plugin cost at the largest N may exceed the one at [`TARGET_N`] by
/// at most this factor (noise, allocator and cache effects).
const LINEAR_SLACK: f64 = 1.5;

/// What a child measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// `plugsync render` on the working tree: load, resolve (lock + cache), render to
    /// YAML text plugin by plugin, emit the text.
    RenderPipeline,
    /// `plugsync render`'s render to YAML text and emit alone, on inputs resolved beforehand.
    RenderPure,
    /// Reference: `render::render_set` on the same inputs, every plugin's objects held at
    /// once (what `plugsync render` did before rendering to text plugin by plugin).
    RenderSet,
    /// The straightforward diff, from the repository on: both revisions' full desired
    /// states, then `diff::diff_states` (kept as the reference the lean path is held to).
    Diff,
    /// What `plugsync diff --base main -o markdown` runs: the same report through
    /// `diff::diff_report`, which renders what the revisions share once and never holds
    /// a whole rendered revision.
    DiffLean,
    /// `plugsync render --repo REPO` itself, as a user runs it: the released binary in a
    /// process of its own (start-up and exit included), stdout to a file.
    RenderCommand,
    /// `plugsync diff --base main -o markdown --repo REPO` itself, likewise.
    DiffCommand,
    /// [`Stage::DiffLean`] with every package committed as a `.difypkg` file.
    DiffLeanFiles,
    /// [`Stage::DiffCommand`] with every package committed as a `.difypkg` file.
    DiffCommandFiles,
    /// [`Stage::DiffLean`] with every package committed as a plugin directory.
    DiffLeanDirs,
    /// [`Stage::DiffCommand`] with every package committed as a plugin directory.
    DiffCommandDirs,
}

impl Stage {
    const ALL: [Stage; 11] = [
        Stage::RenderPure,
        Stage::RenderPipeline,
        Stage::RenderCommand,
        Stage::RenderSet,
        Stage::Diff,
        Stage::DiffLean,
        Stage::DiffCommand,
        Stage::DiffLeanFiles,
        Stage::DiffCommandFiles,
        Stage::DiffLeanDirs,
        Stage::DiffCommandDirs,
    ];

    fn arg(self) -> &'static str {
        match self {
            Stage::RenderPipeline => "render-pipeline",
            Stage::RenderPure => "render-pure",
            Stage::RenderSet => "render-set",
            Stage::Diff => "diff",
            Stage::DiffLean => "diff-lean",
            Stage::RenderCommand => "render-command",
            Stage::DiffCommand => "diff-command",
            Stage::DiffLeanFiles => "diff-lean-files",
            Stage::DiffCommandFiles => "diff-command-files",
            Stage::DiffLeanDirs => "diff-lean-dirs",
            Stage::DiffCommandDirs => "diff-command-dirs",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Stage::RenderPipeline => "render (pipeline)",
            Stage::RenderPure => "render (pure)",
            Stage::RenderSet => "render_set (whole)",
            Stage::Diff => "diff (1 changed)",
            Stage::DiffLean => "diff, lean (1 chg)",
            Stage::RenderCommand => "plugsync render",
            Stage::DiffCommand => "plugsync diff",
            Stage::DiffLeanFiles => "diff, lean, .difypkg",
            Stage::DiffCommandFiles => "plugsync diff, .difypkg",
            Stage::DiffLeanDirs => "diff, lean, dirs",
            Stage::DiffCommandDirs => "plugsync diff, dirs",
        }
    }

    /// Where the repository this stage runs on keeps its packages.
    fn packages(self) -> SynthPackages {
        match self {
            Stage::DiffLeanFiles | Stage::DiffCommandFiles => SynthPackages::Files,
            Stage::DiffLeanDirs | Stage::DiffCommandDirs => SynthPackages::Dirs,
            _ => SynthPackages::Cached,
        }
    }

    /// Runs the `plugsync` binary rather than measuring in process.
    fn is_command(self) -> bool {
        matches!(
            self,
            Stage::RenderCommand
                | Stage::DiffCommand
                | Stage::DiffCommandFiles
                | Stage::DiffCommandDirs
        )
    }

    /// Kept to compare against, not held to the targets: what the commands did before.
    fn is_reference(self) -> bool {
        matches!(self, Stage::RenderSet | Stage::Diff)
    }

    fn parse(s: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|st| st.arg() == s)
    }
}

/// One child's measurement.
#[derive(Debug, Clone, Copy)]
struct Measurement {
    stage: Stage,
    n: usize,
    median: Duration,
    best: Duration,
    runs: usize,
    /// VmHWM after the first (warm-up) run: the peak of one invocation.
    peak_rss_bytes: u64,
    /// VmHWM after every run.
    peak_rss_all_bytes: u64,
    /// Diff only: median time spent freeing the states and report (part of `median`).
    teardown: Duration,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some(CHILD) => child(&args[1..]),
        Some(PREPARE) => prepare_only(&args[1..]),
        _ => parent(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

fn sizes() -> BenchResult<Vec<usize>> {
    match std::env::var("PLUGSYNC_BENCH_N") {
        Ok(list) if !list.trim().is_empty() => Ok(list
            .split(',')
            .map(|s| s.trim().parse::<usize>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("PLUGSYNC_BENCH_N={list}: {e}"))?),
        _ => Ok(DEFAULT_SIZES.to_vec()),
    }
}

// ---------------------------------------------------------------------------------------
// Parent: generate, spawn children, print the table and the targets.

fn parent() -> BenchResult<()> {
    let sizes = sizes()?;
    let exe = std::env::current_exe()?;
    let mut results = Vec::new();
    eprintln!(
        "plugsync pipeline bench: N = {sizes:?}, {} cores",
        std::thread::available_parallelism().map_or(1, usize::from)
    );
    let kustomize_max_n = kustomize_max_n()?;
    let mut kustomize_rows = Vec::new();
    for &n in &sizes {
        let tmp = tempfile::tempdir()?;
        // One repository (and cache) per way of keeping packages, made when first needed.
        let mut prepared: Vec<(SynthPackages, PathBuf, PathBuf)> = Vec::new();
        for stage in Stage::ALL {
            let packages = stage.packages();
            if !prepared.iter().any(|p| p.0 == packages) {
                let name = format!("{packages:?}").to_lowercase();
                let repo = tmp.path().join(format!("repo-{name}"));
                let cache_dir = tmp.path().join(format!("cache-{name}"));
                let started = Instant::now();
                prepare(&repo, &cache_dir, n, packages)?;
                eprintln!(
                    "N={n}, packages {name}: generated, committed and changed one plugin in {}",
                    fmt_duration(started.elapsed())
                );
                prepared.push((packages, repo, cache_dir));
            }
            let (_, repo, cache_dir) = prepared
                .iter()
                .find(|p| p.0 == packages)
                .ok_or("prepared above")?;
            let m = run_child(&exe, stage, n, repo, cache_dir)?;
            eprintln!(
                "  {:<24} median {}, peak RSS {}",
                stage.label(),
                fmt_duration(m.median),
                fmt_bytes(m.peak_rss_bytes)
            );
            results.push(m);
        }
        if n <= kustomize_max_n {
            let (_, repo, cache_dir) = prepared
                .iter()
                .find(|p| p.0 == SynthPackages::Cached)
                .ok_or("the cached repository is always prepared")?;
            let row = kustomize_side_by_side(n, repo, cache_dir, &tmp.path().join("kustomize"))?;
            eprintln!("  {}", row.describe());
            kustomize_rows.push(row);
        }
    }
    print_table(&results);
    print_teardowns(&results);
    print_kustomize(&kustomize_rows);
    print_targets(&results, &kustomize_rows);
    Ok(())
}

/// The largest N `kubectl kustomize` runs at: `PLUGSYNC_BENCH_KUSTOMIZE` (0 skips it),
/// else [`KUSTOMIZE_DEFAULT_MAX_N`].
fn kustomize_max_n() -> BenchResult<usize> {
    match std::env::var("PLUGSYNC_BENCH_KUSTOMIZE") {
        Ok(v) if !v.trim().is_empty() => Ok(v
            .trim()
            .parse()
            .map_err(|e| format!("PLUGSYNC_BENCH_KUSTOMIZE={v}: {e} (a largest N, or 0)"))?),
        _ => Ok(KUSTOMIZE_DEFAULT_MAX_N),
    }
}

/// `kubectl kustomize` against `plugsync render` on the same objects at one N.
#[derive(Debug, Clone)]
struct KustomizeRow {
    n: usize,
    kustomize: Duration,
    kustomize_runs: usize,
    plugsync: Duration,
    plugsync_runs: usize,
    /// Objects in each output (checked equal, with the same kinds, namespaces and names).
    objects: usize,
}

impl KustomizeRow {
    fn ratio(&self) -> f64 {
        self.kustomize.as_secs_f64() / self.plugsync.as_secs_f64()
    }

    fn describe(&self) -> String {
        format!(
            "kubectl kustomize {} ({} run{}), plugsync render {} (median of {}): ×{:.0}, {} objects each",
            fmt_duration(self.kustomize),
            self.kustomize_runs,
            if self.kustomize_runs == 1 { "" } else { "s, median" },
            fmt_duration(self.plugsync),
            self.plugsync_runs,
            self.ratio(),
            self.objects
        )
    }
}

/// Writes what `plugsync render` prints for the repository at `repo` as a kustomize base
/// under `dir` (`plugins/<plugin-id>.yaml` per plugin, all listed as `resources` in
/// `kustomization.yaml`: the base a user would keep by hand), then times
/// `kubectl kustomize dir` and `plugsync render --repo repo`, each with stdout to a file,
/// and checks the two outputs hold the same objects.
fn kustomize_side_by_side(
    n: usize,
    repo: &Path,
    cache: &Path,
    dir: &Path,
) -> BenchResult<KustomizeRow> {
    // The base: every plugin's objects as `plugsync render` prints them.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let state = runtime
        .block_on(pipeline::resolved_state(
            &WorkTree::new(repo)?,
            FILE,
            &resolver(cache)?,
        ))?
        .ok_or("plugins.yaml missing")?;
    let rendered = state.render_text(&RenderSettings::default(), TextFormat::Yaml, false)?;
    let plugins_dir = dir.join("plugins");
    std::fs::create_dir_all(&plugins_dir)?;
    let mut kustomization = String::from(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n",
    );
    let mut written = String::new();
    for plugin in &rendered {
        let yaml = plugin.yaml.as_deref().ok_or("rendered without YAML")?;
        let file = format!("plugins/{}.yaml", plugin.resource_name);
        std::fs::write(dir.join(&file), yaml)?;
        kustomization.push_str(&format!("  - {file}\n"));
        written.push_str(yaml);
    }
    std::fs::write(dir.join("kustomization.yaml"), kustomization)?;
    drop((rendered, state, runtime));

    let time = |command: &mut Command, out: &Path, runs: usize| -> BenchResult<Duration> {
        let mut times = Vec::with_capacity(runs);
        for _ in 0..runs {
            command
                .stdout(std::fs::File::create(out)?)
                .stderr(Stdio::piped());
            let started = Instant::now();
            let output = command.output()?;
            times.push(started.elapsed());
            if !output.status.success() {
                return Err(format!(
                    "{command:?} failed ({}): {}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr)
                )
                .into());
            }
        }
        times.sort();
        Ok(times[times.len() / 2])
    };
    let plugsync_out = dir.join("plugsync.yaml");
    let kustomize_out = dir.join("kustomize.yaml");
    let plugsync_runs = 5;
    let plugsync = time(
        Command::new(env!("CARGO_BIN_EXE_plugsync"))
            .arg("render")
            .arg("--repo")
            .arg(repo)
            .env("PLUGSYNC_CACHE_DIR", cache),
        &plugsync_out,
        plugsync_runs,
    )?;
    let kustomize_runs = if n >= TARGET_N { 1 } else { 3 };
    let kustomize = time(
        Command::new("kubectl").arg("kustomize").arg(dir),
        &kustomize_out,
        kustomize_runs,
    )?;

    // Honest only if both build the same objects: the base is exactly what the command
    // printed, and kustomize's output names the same objects, as many.
    let printed = std::fs::read_to_string(&plugsync_out)?;
    if printed != written {
        return Err(format!(
            "N={n}: the kustomize base differs from what `plugsync render` printed"
        )
        .into());
    }
    let mut ours = object_identities(&printed);
    let mut theirs = object_identities(&std::fs::read_to_string(&kustomize_out)?);
    ours.sort();
    theirs.sort();
    if ours != theirs || ours.len() != 4 * n {
        return Err(format!(
            "N={n}: kustomize built {} objects, plugsync {} (expected {}), or not the same ones",
            theirs.len(),
            ours.len(),
            4 * n
        )
        .into());
    }
    Ok(KustomizeRow {
        n,
        kustomize,
        kustomize_runs,
        plugsync,
        plugsync_runs,
        objects: ours.len(),
    })
}

/// `apiVersion kind namespace/name` of every object in a multi-document YAML stream,
/// read from its lines (both printers indent by two spaces and start documents with
/// `---`), so no YAML library judges the comparison.
fn object_identities(yaml: &str) -> Vec<String> {
    #[derive(Default)]
    struct Doc<'a> {
        api_version: &'a str,
        kind: &'a str,
        namespace: &'a str,
        name: &'a str,
    }
    fn unquote(v: &str) -> &str {
        v.trim().trim_matches(|c| c == '"' || c == '\'')
    }
    let mut out = Vec::new();
    let mut doc = Doc::default();
    let mut in_metadata = false;
    let mut finish = |doc: &mut Doc<'_>| {
        if !doc.kind.is_empty() {
            out.push(format!(
                "{} {} {}/{}",
                doc.api_version, doc.kind, doc.namespace, doc.name
            ));
        }
        *doc = Doc::default();
    };
    for line in yaml.lines() {
        if line == "---" {
            finish(&mut doc);
            in_metadata = false;
        } else if let Some(v) = line.strip_prefix("kind:") {
            doc.kind = unquote(v);
        } else if let Some(v) = line.strip_prefix("apiVersion:") {
            doc.api_version = unquote(v);
        } else if !line.starts_with(' ') {
            in_metadata = line == "metadata:";
        } else if in_metadata {
            if let Some(v) = line.strip_prefix("  name:") {
                doc.name = unquote(v);
            } else if let Some(v) = line.strip_prefix("  namespace:") {
                doc.namespace = unquote(v);
            }
        }
    }
    finish(&mut doc);
    out
}

fn print_kustomize(rows: &[KustomizeRow]) {
    if rows.is_empty() {
        return;
    }
    println!("\nside by side with kubectl kustomize (the same objects, written as a base of one file per plugin):");
    println!(
        "{:>6}   {:>17}   {:>15}   {:>8}   {:>7}",
        "N", "kubectl kustomize", "plugsync render", "ratio", "objects"
    );
    for r in rows {
        println!(
            "{:>6}   {:>17}   {:>15}   {:>8}   {:>7}",
            r.n,
            format!("{} ({}×)", fmt_duration(r.kustomize), r.kustomize_runs),
            format!("{} ({}×)", fmt_duration(r.plugsync), r.plugsync_runs),
            format!("×{:.0}", r.ratio()),
            r.objects
        );
    }
}

/// The synthetic repository of `n` plugins committed on `main`, with plugin 0 upgraded
/// in the working tree (a pull request's head); `packages` says where packages are kept.
fn prepare(repo: &Path, cache_dir: &Path, n: usize, packages: SynthPackages) -> BenchResult<()> {
    let cache = Cache::open(cache_dir)?;
    synth::generate_repo_with(repo, n, &cache, packages)?;
    git(repo, &["init", "-q", "-b", "main"])?;
    git(repo, &["add", "-A"])?;
    git(repo, &["commit", "-q", "-m", "synthetic base"])?;
    synth::change_one(repo, &cache, SynthChange::Upgrade)?;
    Ok(())
}

fn prepare_only(args: &[String]) -> BenchResult<()> {
    let (n, dir, packages) = match args {
        [n, dir] => (n, dir, SynthPackages::Cached),
        [n, dir, p] if p == "files" => (n, dir, SynthPackages::Files),
        [n, dir, p] if p == "dirs" => (n, dir, SynthPackages::Dirs),
        _ => return Err(format!("usage: {PREPARE} N DIR [files|dirs] (got {args:?})").into()),
    };
    let dir = PathBuf::from(dir);
    prepare(&dir.join("repo"), &dir.join("cache"), n.parse()?, packages)?;
    println!("{}", dir.display());
    Ok(())
}

fn git(dir: &Path, args: &[&str]) -> BenchResult<()> {
    let status = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "bench")
        .env("GIT_AUTHOR_EMAIL", "bench@example.invalid")
        .env("GIT_COMMITTER_NAME", "bench")
        .env("GIT_COMMITTER_EMAIL", "bench@example.invalid")
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("git {args:?} failed: {status}").into())
    }
}

fn run_child(
    exe: &Path,
    stage: Stage,
    n: usize,
    repo: &Path,
    cache: &Path,
) -> BenchResult<Measurement> {
    let out = Command::new(exe)
        .arg(CHILD)
        .arg(stage.arg())
        .arg(n.to_string())
        .arg(repo)
        .arg(cache)
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "{} at N={n} failed ({}):\n{}{}",
            stage.label(),
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix(RESULT))
        .ok_or_else(|| format!("{} at N={n}: no result line in {stdout:?}", stage.label()))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad result line {line:?}: {e}"))?;
    let [median, best, runs, peak, peak_all, teardown] = fields[..] else {
        return Err(format!("bad result line {line:?}").into());
    };
    Ok(Measurement {
        stage,
        n,
        median: Duration::from_nanos(median),
        best: Duration::from_nanos(best),
        runs: runs as usize,
        peak_rss_bytes: peak,
        peak_rss_all_bytes: peak_all,
        teardown: Duration::from_nanos(teardown),
    })
}

fn print_table(results: &[Measurement]) {
    println!();
    println!(
        "{:<24} {:>6}   {:>13}   {:>11}   {:>4}   {:>17}   {:>18}",
        "stage",
        "N",
        "wall (median)",
        "wall (best)",
        "runs",
        "peak RSS (1 run)",
        "peak RSS (all runs)"
    );
    for m in results {
        println!(
            "{:<24} {:>6}   {:>13}   {:>11}   {:>4}   {:>17}   {:>18}",
            m.stage.label(),
            m.n,
            fmt_duration(m.median),
            fmt_duration(m.best),
            m.runs,
            fmt_bytes(m.peak_rss_bytes),
            fmt_bytes(m.peak_rss_all_bytes)
        );
    }
}

fn print_teardowns(results: &[Measurement]) {
    let diffs: Vec<String> = results
        .iter()
        .filter(|m| m.stage == Stage::Diff)
        .map(|m| format!("N={} {}", m.n, fmt_duration(m.teardown)))
        .collect();
    if !diffs.is_empty() {
        println!(
            "\nfreeing both states and the report after a diff (not counted: the CLI exits instead), median: {}",
            diffs.join(", ")
        );
    }
}

fn print_targets(results: &[Measurement], kustomize: &[KustomizeRow]) {
    let find = |stage: Stage, n: usize| results.iter().find(|m| m.stage == stage && m.n == n);
    println!();
    println!("targets (N = {TARGET_N}, 2 cores):");
    let check = |what: String, ok: Option<bool>| {
        let verdict = match ok {
            Some(true) => "PASS",
            Some(false) => "FAIL",
            None => "SKIP (N not measured)",
        };
        println!("  {verdict:<5} {what}");
    };
    // The render stage (render and print, on locked inputs), the pipeline in process
    // (read, load and resolve first), and the command itself, all held to the render
    // target; the diff in process and the command to the diff target. The reference
    // stages are printed, not held to anything.
    for (stage, target) in [
        (Stage::RenderPure, RENDER_TARGET),
        (Stage::RenderPipeline, RENDER_TARGET),
        (Stage::RenderCommand, RENDER_TARGET),
        (Stage::DiffLean, DIFF_TARGET),
        (Stage::DiffCommand, DIFF_TARGET),
        (Stage::DiffLeanFiles, DIFF_TARGET),
        (Stage::DiffCommandFiles, DIFF_TARGET),
        (Stage::DiffLeanDirs, DIFF_TARGET),
        (Stage::DiffCommandDirs, DIFF_TARGET),
    ] {
        let m = find(stage, TARGET_N);
        check(
            format!(
                "{} ≤ {}: {}",
                stage.label(),
                fmt_duration(target),
                m.map_or("-".into(), |m| fmt_duration(m.median))
            ),
            m.map(|m| m.median <= target),
        );
    }
    let held = || Stage::ALL.into_iter().filter(|s| !s.is_reference());
    for stage in held() {
        // The diff's memory target is tighter than render's.
        let target = match stage {
            Stage::DiffLean
            | Stage::DiffCommand
            | Stage::DiffLeanFiles
            | Stage::DiffCommandFiles
            | Stage::DiffLeanDirs
            | Stage::DiffCommandDirs => DIFF_RSS_TARGET_BYTES,
            _ => RSS_TARGET_BYTES,
        };
        let peak = find(stage, TARGET_N).map(|m| m.peak_rss_bytes);
        check(
            format!(
                "{} peak RSS of one run ≤ {}: {}",
                stage.label(),
                fmt_bytes(target),
                peak.map_or("-".into(), fmt_bytes)
            ),
            peak.map(|p| p <= target),
        );
    }
    let row = kustomize.iter().find(|r| r.n == TARGET_N);
    check(
        format!(
            "plugsync render ≥ ×{KUSTOMIZE_RATIO_TARGET:.0} faster than kubectl kustomize: {}",
            row.map_or("-".into(), |r| format!("×{:.0}", r.ratio()))
        ),
        row.map(|r| r.ratio() >= KUSTOMIZE_RATIO_TARGET),
    );

    // Linear growth: per-plugin time and memory (above the smallest N's baseline) at the
    // largest N against the same at TARGET_N.
    let largest = results.iter().map(|m| m.n).max().unwrap_or(0);
    let smallest = results.iter().map(|m| m.n).min().unwrap_or(0);
    for stage in held() {
        let (Some(at), Some(big), Some(base)) = (
            find(stage, TARGET_N),
            find(stage, largest),
            find(stage, smallest),
        ) else {
            check(format!("{} grows linearly", stage.label()), None);
            continue;
        };
        if largest <= TARGET_N || smallest >= TARGET_N {
            check(format!("{} grows linearly", stage.label()), None);
            continue;
        }
        let scale = largest as f64 / TARGET_N as f64;
        let time_ratio = big.median.as_secs_f64() / at.median.as_secs_f64() / scale;
        let mem = |m: &Measurement| m.peak_rss_bytes.saturating_sub(base.peak_rss_bytes) as f64;
        let mem_ratio = mem(big) / mem(at).max(1.0) / scale;
        check(
            format!(
                "{} grows linearly (N {TARGET_N} → {largest}): time per plugin ×{time_ratio:.2}, \
                 memory per plugin ×{mem_ratio:.2} (≤ ×{LINEAR_SLACK})",
                stage.label()
            ),
            Some(time_ratio <= LINEAR_SLACK && mem_ratio <= LINEAR_SLACK),
        );
    }
}

fn fmt_duration(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if ms >= 1000.0 {
        format!("{:.2} s", ms / 1e3)
    } else {
        format!("{ms:.1} ms")
    }
}

fn fmt_bytes(b: u64) -> String {
    format!("{:.1} MB", b as f64 / 1e6)
}

// ---------------------------------------------------------------------------------------
// Child: one stage at one N, timed; prints one result line.

fn child(args: &[String]) -> BenchResult<()> {
    let [stage, n, repo, cache] = args else {
        return Err(format!("usage: {CHILD} STAGE N REPO CACHE (got {args:?})").into());
    };
    let stage = Stage::parse(stage).ok_or_else(|| format!("unknown stage {stage}"))?;
    let n: usize = n.parse()?;
    let repo = PathBuf::from(repo);
    let cache = PathBuf::from(cache);
    // A warm-up run, then the measured ones: more at small N where noise dominates.
    let runs = if n <= TARGET_N { 5 } else { 2 };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut times = Vec::with_capacity(runs + 1);
    // Peak RSS after the first run: what one `plugsync` invocation needs. Later runs can
    // only raise it (allocator arenas keep freed memory of other threads).
    let mut first_peak = 0;
    // Diff only: the part of each run spent freeing the states and the report.
    let mut teardowns = Vec::new();
    // From here on the high-water mark is this stage's: forget what starting the process
    // (and, for the pure render, loading its inputs) peaked at.
    reset_peak_rss()?;
    match stage {
        Stage::RenderPipeline => {
            let resolver = resolver(&cache)?;
            let snapshot = WorkTree::new(&repo)?;
            let settings = RenderSettings::default();
            for _ in 0..=runs {
                let started = Instant::now();
                let state = runtime
                    .block_on(pipeline::resolved_state(&snapshot, FILE, &resolver))?
                    .ok_or("plugins.yaml missing")?;
                let rendered = state.render_text(&settings, TextFormat::Yaml, false)?;
                let bytes = emitted_bytes(&rendered);
                times.push(started.elapsed());
                if times.len() == 1 {
                    first_peak = peak_rss_bytes()?;
                }
                if state.lock != plugsync_core::model::LockState::UpToDate {
                    return Err(format!("lock is not up to date: {:?}", state.lock).into());
                }
                check_text(&rendered, bytes, n)?;
                drop((state, rendered));
            }
        }
        Stage::RenderPure => {
            let resolver = resolver(&cache)?;
            let snapshot = WorkTree::new(&repo)?;
            // Loaded and resolved, never rendered: the peak is the render's (with its
            // inputs held), not an earlier pipeline run's.
            let state = runtime
                .block_on(pipeline::resolved_state(&snapshot, FILE, &resolver))?
                .ok_or("plugins.yaml missing")?;
            let settings = RenderSettings::default();
            for _ in 0..=runs {
                let started = Instant::now();
                let rendered = state.render_text(&settings, TextFormat::Yaml, false)?;
                let bytes = emitted_bytes(&rendered);
                times.push(started.elapsed());
                if times.len() == 1 {
                    first_peak = peak_rss_bytes()?;
                }
                check_text(&rendered, bytes, n)?;
                drop(rendered);
            }
        }
        Stage::RenderSet => {
            let resolver = resolver(&cache)?;
            let snapshot = WorkTree::new(&repo)?;
            let state = runtime
                .block_on(pipeline::resolved_state(&snapshot, FILE, &resolver))?
                .ok_or("plugins.yaml missing")?;
            let inputs = pipeline::plugin_inputs(&state.resolution, &state.built_images);
            let settings = RenderSettings::default();
            for _ in 0..=runs {
                let started = Instant::now();
                let rendered =
                    render::render_set(state.set.spec(), &inputs, &state.templates, &settings)?;
                times.push(started.elapsed());
                if times.len() == 1 {
                    first_peak = peak_rss_bytes()?;
                }
                if rendered.len() != n {
                    return Err(format!("rendered {} plugins, expected {n}", rendered.len()).into());
                }
                drop(rendered);
            }
        }
        Stage::RenderCommand
        | Stage::DiffCommand
        | Stage::DiffCommandFiles
        | Stage::DiffCommandDirs => {
            let out_dir = tempfile::tempdir()?;
            let stdout_path = out_dir.path().join("stdout");
            for _ in 0..=runs {
                let mut command = Command::new(env!("CARGO_BIN_EXE_plugsync"));
                if stage == Stage::RenderCommand {
                    command.arg("render");
                } else {
                    command.args(["diff", "--base", "main", "-o", "markdown"]);
                }
                command
                    .arg("--repo")
                    .arg(&repo)
                    .env("PLUGSYNC_CACHE_DIR", &cache)
                    .stdout(std::fs::File::create(&stdout_path)?)
                    .stderr(Stdio::piped());
                let started = Instant::now();
                let output = command.output()?;
                times.push(started.elapsed());
                // `plugsync diff` exits 1 when there are changes, as `kubectl diff` does.
                let expected = if stage == Stage::RenderCommand { 0 } else { 1 };
                if output.status.code() != Some(expected) {
                    return Err(format!(
                        "{} exited with {}: {}",
                        stage.label(),
                        output.status,
                        String::from_utf8_lossy(&output.stderr)
                    )
                    .into());
                }
                let printed = std::fs::metadata(&stdout_path)?.len();
                if printed == 0 {
                    return Err(format!("{} printed nothing", stage.label()).into());
                }
                if times.len() == 1 {
                    first_peak = children_peak_rss_bytes();
                }
            }
        }
        Stage::Diff | Stage::DiffLean | Stage::DiffLeanFiles | Stage::DiffLeanDirs => {
            for _ in 0..=runs {
                let started = Instant::now();
                let run = runtime.block_on(diff(&repo, &cache, stage != Stage::Diff))?;
                let output = started.elapsed();
                let (report, markdown) = (&run.report, &run.markdown);
                let changed: Vec<_> = report
                    .plugins
                    .iter()
                    .filter(|p| p.kind != PluginChangeKind::Unchanged)
                    .collect();
                if changed.len() != 1 || changed[0].kind != PluginChangeKind::Upgraded {
                    return Err(format!(
                        "expected one upgraded plugin, got {}",
                        report.summary_line()
                    )
                    .into());
                }
                if report.plugins.len() != n || markdown.is_empty() {
                    return Err(format!("incomplete report: {}", report.summary_line()).into());
                }
                // `diff_command` does not free the states (the process exits right after), so
                // the user-visible time is `output`; freeing is still done here between runs,
                // and reported separately.
                let dropping = Instant::now();
                drop(run);
                let dropped = dropping.elapsed();
                times.push(output);
                teardowns.push(dropped);
                if times.len() == 1 {
                    first_peak = peak_rss_bytes()?;
                }
            }
        }
    }
    let mut measured = times.split_off(1); // drop the warm-up
    measured.sort();
    let median = measured[measured.len() / 2];
    let best = measured[0];
    let mut teardowns = teardowns.split_off(teardowns.len().min(1));
    teardowns.sort();
    let teardown = teardowns
        .get(teardowns.len() / 2)
        .copied()
        .unwrap_or_default();
    let peak_all = if stage.is_command() {
        children_peak_rss_bytes()
    } else {
        peak_rss_bytes()?
    };
    println!(
        "{RESULT} {} {} {} {} {} {}",
        median.as_nanos(),
        best.as_nanos(),
        measured.len(),
        first_peak,
        peak_all,
        teardown.as_nanos()
    );
    Ok(())
}

/// A resolver like the CLI's: every in-tree source, the given cache, 64 MiB cap.
fn resolver(cache: &Path) -> BenchResult<Resolver> {
    Ok(plugsync_testkit::resolver(Cache::open(cache)?))
}

/// The bytes `plugsync render` would print for `rendered` (counted, not kept).
fn emitted_bytes(rendered: &[pipeline::RenderedText]) -> usize {
    let mut bytes = 0;
    pipeline::emit_text(rendered, TextFormat::Yaml, |text| bytes += text.len());
    bytes
}

fn check_text(rendered: &[pipeline::RenderedText], bytes: usize, n: usize) -> BenchResult<()> {
    if rendered.len() != n {
        return Err(format!("rendered {} plugins, expected {n}", rendered.len()).into());
    }
    if bytes == 0 {
        return Err("rendered no text".into());
    }
    Ok(())
}

/// Everything `diff_command` holds when it prints, and the report it prints.
struct DiffRun {
    report: DiffReport,
    markdown: String,
    _states: Option<(DesiredState, Option<DesiredState>)>,
}

/// `plugsync diff --base main -o markdown` in `repo` (head: the working tree), as
/// `app::diff` does it for the CLI, without printing; with `lean`, through
/// `diff::diff_report` instead of two desired states and `diff::diff_states`.
async fn diff(repo: &Path, cache: &Path, lean: bool) -> BenchResult<DiffRun> {
    let (root, subdir) = plugsync_core::source::discover_repo_root(repo)?;
    let base_rev = GitRevision::merge_base(&root, "main", "HEAD")?;
    let base = GitRevision::open(&root, &base_rev, subdir.as_deref())?;
    let head = WorkTree::new(repo)?;
    let resolver = resolver(cache)?;
    let settings = RenderSettings::default();
    let label = format!("merge-base of main and HEAD ({})", &base_rev[..12]);
    if lean {
        let report = diff::diff_report(&base, &head, FILE, &resolver, &settings, &label, 3).await?;
        let markdown = report.to_markdown();
        return Ok(DiffRun {
            report,
            markdown,
            _states: None,
        });
    }
    let head_state = pipeline::desired_state(&head, FILE, &resolver, &settings)
        .await?
        .ok_or_else(|| format!("{FILE}: not found in {}", head.describe()))?;
    let base_state = pipeline::desired_state(&base, FILE, &resolver, &settings).await?;
    let report = diff::diff_states(&label, base_state.as_ref(), &head_state, 3)?;
    let markdown = report.to_markdown();
    Ok(DiffRun {
        report,
        markdown,
        _states: Some((head_state, base_state)),
    })
}

/// Resets this process's `VmHWM` to its current resident set size (Linux
/// `/proc/self/clear_refs`, value 5), so the next [`peak_rss_bytes`] is the peak since.
fn reset_peak_rss() -> BenchResult<()> {
    std::fs::write("/proc/self/clear_refs", "5")
        .map_err(|e| format!("cannot reset the peak RSS (/proc/self/clear_refs): {e}").into())
}

/// The largest peak resident set size of the processes this one has started and waited
/// for (`getrusage(RUSAGE_CHILDREN)`), in bytes: each measurement runs in a child of its
/// own, so this is the largest `plugsync` run of the measurement so far.
fn children_peak_rss_bytes() -> u64 {
    getrusage(UsageWho::RUSAGE_CHILDREN).map_or(0, |usage| {
        // Linux reports `ru_maxrss` in KiB.
        u64::try_from(usage.max_rss()).unwrap_or(0) * 1024
    })
}

/// Peak resident set size of this process so far (`VmHWM`), in bytes.
fn peak_rss_bytes() -> BenchResult<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .ok_or("no VmHWM in /proc/self/status")?;
    Ok(kib * 1024)
}
