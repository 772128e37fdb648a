//! Wall time and peak memory of `render` and of the pull-request `diff` on synthetic
//! repositories of N plugins (see `plugsync_testkit::synth`).
//!
//! Run with `cargo bench --bench pipeline`; `PLUGSYNC_BENCH_N=10,100` picks the sizes
//! (default 10, 100, 1000, 10000).
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
//! `render-set`, `diff`, `diff-lean`, `diff-command`).

/// The allocator of the `plugsync` binary (src/main.rs), so the figures are the command's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use nix::sys::resource::{getrusage, UsageWho};
use plugsync_core::pipeline::{self, DesiredState};
use plugsync_core::render::{self, RenderSettings, TextFormat};
use plugsync_core::report::{DiffReport, PluginChangeKind};
use plugsync_core::resolve::cache::Cache;
use plugsync_core::resolve::fetch::{FetchSettings, Fetchers};
use plugsync_core::resolve::Resolver;
use plugsync_core::source::{GitRevision, Snapshot, WorkTree};
use plugsync_testkit::synth::{self, SynthChange};

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
    /// states, then `DiffReport::build` (kept as the reference the lean path is held to).
    Diff,
    /// What `plugsync diff --base main -o markdown` runs: the same report through
    /// `pipeline::diff_report`, which renders what the revisions share once and never holds
    /// a whole rendered revision.
    DiffLean,
    /// `plugsync render --repo REPO` itself, as a user runs it: the released binary in a
    /// process of its own (start-up and exit included), stdout to a file.
    RenderCommand,
    /// `plugsync diff --base main -o markdown --repo REPO` itself, likewise.
    DiffCommand,
}

impl Stage {
    const ALL: [Stage; 7] = [
        Stage::RenderPure,
        Stage::RenderPipeline,
        Stage::RenderCommand,
        Stage::RenderSet,
        Stage::Diff,
        Stage::DiffLean,
        Stage::DiffCommand,
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
        }
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
    for &n in &sizes {
        let tmp = tempfile::tempdir()?;
        let repo = tmp.path().join("repo");
        let cache_dir = tmp.path().join("cache");
        let started = Instant::now();
        prepare(&repo, &cache_dir, n)?;
        eprintln!(
            "N={n}: generated, committed and changed one plugin in {}",
            fmt_duration(started.elapsed())
        );
        for stage in Stage::ALL {
            let m = run_child(&exe, stage, n, &repo, &cache_dir)?;
            eprintln!(
                "  {:<18} median {}, peak RSS {}",
                stage.label(),
                fmt_duration(m.median),
                fmt_bytes(m.peak_rss_bytes)
            );
            results.push(m);
        }
    }
    print_table(&results);
    print_teardowns(&results);
    print_targets(&results);
    Ok(())
}

/// The synthetic repository of `n` plugins committed on `main`, with plugin 0 upgraded
/// in the working tree (a pull request's head).
fn prepare(repo: &Path, cache_dir: &Path, n: usize) -> BenchResult<()> {
    let cache = Cache::open(cache_dir)?;
    synth::generate_repo(repo, n, &cache)?;
    git(repo, &["init", "-q", "-b", "main"])?;
    git(repo, &["add", "-A"])?;
    git(repo, &["commit", "-q", "-m", "synthetic base"])?;
    synth::change_one(repo, &cache, SynthChange::Upgrade)?;
    Ok(())
}

fn prepare_only(args: &[String]) -> BenchResult<()> {
    let [n, dir] = args else {
        return Err(format!("usage: {PREPARE} N DIR (got {args:?})").into());
    };
    let dir = PathBuf::from(dir);
    prepare(&dir.join("repo"), &dir.join("cache"), n.parse()?)?;
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
        "{:<18} {:>6}   {:>13}   {:>11}   {:>4}   {:>17}   {:>18}",
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
            "{:<18} {:>6}   {:>13}   {:>11}   {:>4}   {:>17}   {:>18}",
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

fn print_targets(results: &[Measurement]) {
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
        let peak = find(stage, TARGET_N).map(|m| m.peak_rss_bytes);
        check(
            format!(
                "{} peak RSS of one run ≤ {}: {}",
                stage.label(),
                fmt_bytes(RSS_TARGET_BYTES),
                peak.map_or("-".into(), fmt_bytes)
            ),
            peak.map(|p| p <= RSS_TARGET_BYTES),
        );
    }

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
                if state.lock != pipeline::LockState::UpToDate {
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
        Stage::RenderCommand | Stage::DiffCommand => {
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
        Stage::Diff | Stage::DiffLean => {
            for _ in 0..=runs {
                let started = Instant::now();
                let run = runtime.block_on(diff(&repo, &cache, stage == Stage::DiffLean))?;
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
    let peak_all = match stage {
        Stage::RenderCommand | Stage::DiffCommand => children_peak_rss_bytes(),
        _ => peak_rss_bytes()?,
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
    Ok(Resolver::new(
        Fetchers::discover(
            FetchSettings::default(),
            url::Url::parse(plugsync_core::model::DEFAULT_MARKETPLACE)?,
        ),
        Cache::open(cache)?,
        64 << 20,
    ))
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
/// `cli::diff_command` does it, without printing; with `lean`, through
/// `pipeline::diff_report` instead of two desired states and `DiffReport::build`.
async fn diff(repo: &Path, cache: &Path, lean: bool) -> BenchResult<DiffRun> {
    let (root, subdir) = plugsync_core::source::discover_repo_root(repo)?;
    let base_rev = GitRevision::merge_base(&root, "main", "HEAD")?;
    let base = GitRevision::open(&root, &base_rev, subdir.as_deref())?;
    let head = WorkTree::new(repo)?;
    let resolver = resolver(cache)?;
    let settings = RenderSettings::default();
    let label = format!("merge-base of main and HEAD ({})", &base_rev[..12]);
    if lean {
        let report =
            pipeline::diff_report(&base, &head, FILE, &resolver, &settings, &label, 3).await?;
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
    let report = DiffReport::build(&label, base_state.as_ref(), &head_state, 3)?;
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
