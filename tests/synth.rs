//! The synthetic-repository generator behind `cargo bench --bench pipeline`, at small N:
//! what it writes locks, renders offline and diffs as exactly one changed plugin. No
//! timing here: performance is the benchmark's business, not the test suite's.

use std::path::Path;

use plugsync_core::diff::{diff_report, diff_states};
use plugsync_core::model::LockState;
use plugsync_core::pipeline::{desired_state, DesiredState};
use plugsync_core::render::RenderSettings;
use plugsync_core::report::{DiffReport, PluginChangeKind};
use plugsync_core::resolve::cache::Cache;
use plugsync_core::resolve::Resolver;
use plugsync_core::source::{Snapshot, WorkTree};
use plugsync_testkit::synth::{self, SynthChange};

const N: usize = 5;

fn resolver(cache: &Cache) -> Resolver {
    plugsync_testkit::resolver(cache.clone())
}

fn state_of(snapshot: &dyn Snapshot, cache: &Cache) -> DesiredState {
    tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(desired_state(
            snapshot,
            "plugins.yaml",
            &resolver(cache),
            &RenderSettings::default(),
        ))
        .expect("renders offline, from the lock and the cache")
        .expect("plugins.yaml present")
}

fn render(dir: &Path, cache: &Cache) -> DesiredState {
    state_of(&WorkTree::new(dir).expect("worktree"), cache)
}

#[test]
fn generated_repo_is_locked_and_renders_offline() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cache = Cache::open(&tmp.path().join("cache")).expect("cache");
    let repo = synth::generate_repo(&tmp.path().join("repo"), N, &cache).expect("generates");

    let state = render(&repo.dir, &cache);
    // What `plugsync lock --locked` checks: the lock pins exactly what is declared.
    assert_eq!(state.lock, LockState::UpToDate);
    assert_eq!(state.resolution.lock, repo.lock);
    assert_eq!(state.rendered.len(), N);
    let mut names: Vec<&str> = state.rendered.iter().map(|p| p.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["synth/p0", "synth/p1", "synth/p2", "synth/p3", "synth/p4"]
    );
    // Plugin, Job, Deployment, Service for each.
    assert_eq!(state.objects().len(), 4 * N);
}

#[test]
fn resolving_never_fetches() {
    // An empty cache: the packages exist nowhere else (their URLs are under .invalid), so
    // rendering must fail rather than succeed by reaching out.
    let tmp = tempfile::tempdir().expect("tempdir");
    let cache = Cache::open(&tmp.path().join("cache")).expect("cache");
    let repo = synth::generate_repo(&tmp.path().join("repo"), 2, &cache).expect("generates");
    let empty = Cache::open(&tmp.path().join("empty")).expect("cache");
    let result = tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(desired_state(
            &WorkTree::new(&repo.dir).expect("worktree"),
            "plugins.yaml",
            &resolver(&empty),
            &RenderSettings::default(),
        ));
    assert!(result.is_err(), "rendered without the cached packages");
}

fn diff_after(change: SynthChange) -> DiffReport {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cache = Cache::open(&tmp.path().join("cache")).expect("cache");
    let base_dir = tmp.path().join("base");
    let head_dir = tmp.path().join("head");
    synth::generate_repo(&base_dir, N, &cache).expect("generates base");
    synth::generate_repo(&head_dir, N, &cache).expect("generates head");
    synth::change_one(&head_dir, &cache, change).expect("changes one plugin");

    let base = render(&base_dir, &cache);
    let head = render(&head_dir, &cache);
    assert_eq!(head.lock, LockState::UpToDate, "change_one keeps the lock");
    diff_states("base", Some(&base), &head, 3).expect("report")
}

fn changed(report: &DiffReport) -> Vec<(&str, PluginChangeKind)> {
    report
        .plugins
        .iter()
        .filter(|p| p.kind != PluginChangeKind::Unchanged)
        .map(|p| (p.name.as_str(), p.kind))
        .collect()
}

#[test]
fn upgrading_one_plugin_changes_exactly_that_plugin() {
    let report = diff_after(SynthChange::Upgrade);
    assert_eq!(changed(&report), [("synth/p0", PluginChangeKind::Upgraded)]);
    let p0 = &report.plugins[0];
    assert_eq!(p0.from.as_deref(), Some("1.0.0"));
    assert_eq!(p0.to.as_deref(), Some("2.0.0"));
    assert_eq!(
        report.summary_line(),
        "0 added, 1 upgraded, 0 removed, 0 reconfigured, 4 unchanged"
    );
    assert!(report.to_markdown().contains("`synth/p0`"));
}

#[test]
fn reconfiguring_one_plugin_changes_exactly_that_plugin() {
    let report = diff_after(SynthChange::Reconfigure);
    assert_eq!(
        changed(&report),
        [("synth/p0", PluginChangeKind::Reconfigured)]
    );
    let paths: Vec<&str> = report.plugins[0]
        .objects
        .iter()
        .flat_map(|c| c.changed_paths.iter().map(String::as_str))
        .collect();
    // The Plugin (carrying the merged runtime) and its Deployment.
    assert_eq!(paths, ["spec.runtime.replicas", "spec.replicas"]);
}

#[test]
fn generation_is_deterministic() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let read = |dir: &Path, file: &str| std::fs::read(dir.join(file)).expect("read");
    let mut outputs = Vec::new();
    for run in ["a", "b"] {
        let cache = Cache::open(&tmp.path().join(run).join("cache")).expect("cache");
        let dir = tmp.path().join(run).join("repo");
        let repo = synth::generate_repo(&dir, N, &cache).expect("generates");
        let packages: Vec<Vec<u8>> = repo
            .lock
            .plugins
            .iter()
            .map(|p| {
                cache
                    .get(&p.sha256)
                    .expect("readable")
                    .expect("cached package")
            })
            .collect();
        outputs.push((
            read(&dir, "plugins.yaml"),
            read(&dir, "plugins.lock"),
            packages,
        ));
    }
    assert_eq!(outputs[0], outputs[1]);
    assert_eq!(outputs[0].2.len(), N);
}

/// The classic report (two desired states, `diff::diff_states`) and the lean one
/// (`diff::diff_report`, which renders what both revisions share once), for the same
/// two folders; they must agree in every format and object by object.
fn both_reports(base_dir: &Path, head_dir: &Path, cache: &Cache) -> (DiffReport, DiffReport) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let resolver = resolver(cache);
    let settings = RenderSettings::default();
    let base = WorkTree::new(base_dir).expect("worktree");
    let head = WorkTree::new(head_dir).expect("worktree");
    let base_state = rt
        .block_on(desired_state(&base, "plugins.yaml", &resolver, &settings))
        .expect("base renders");
    let head_state = state_of(&head, cache);
    let classic = diff_states("base", base_state.as_ref(), &head_state, 3).expect("report");
    let lean = rt
        .block_on(diff_report(
            &base,
            &head,
            "plugins.yaml",
            &resolver,
            &settings,
            "base",
            3,
        ))
        .expect("lean report");
    assert_eq!(lean.to_text(), classic.to_text());
    assert_eq!(lean.to_markdown(), classic.to_markdown());
    assert_eq!(lean.to_json(), classic.to_json());
    assert_eq!(lean.plan, classic.plan, "plans differ");
    (classic, lean)
}

fn two_repos(base_n: usize, head_n: usize) -> (tempfile::TempDir, Cache) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cache = Cache::open(&tmp.path().join("cache")).expect("cache");
    synth::generate_repo(&tmp.path().join("base"), base_n, &cache).expect("generates base");
    synth::generate_repo(&tmp.path().join("head"), head_n, &cache).expect("generates head");
    (tmp, cache)
}

#[test]
fn lean_diff_equals_the_classic_one_for_each_kind_of_change() {
    for change in [SynthChange::Upgrade, SynthChange::Reconfigure] {
        let (tmp, cache) = two_repos(N, N);
        synth::change_one(&tmp.path().join("head"), &cache, change).expect("changes one");
        let (classic, _) = both_reports(&tmp.path().join("base"), &tmp.path().join("head"), &cache);
        assert_eq!(changed(&classic).len(), 1, "{change:?}");
    }
    // Nothing changed.
    let (tmp, cache) = two_repos(N, N);
    let (classic, _) = both_reports(&tmp.path().join("base"), &tmp.path().join("head"), &cache);
    assert!(!classic.has_changes());
    // Plugins added, and plugins removed (deletes come last, in reverse apply order).
    let (tmp, cache) = two_repos(2, N);
    let (classic, _) = both_reports(&tmp.path().join("base"), &tmp.path().join("head"), &cache);
    assert_eq!(changed(&classic).len(), N - 2);
    let (classic, _) = both_reports(&tmp.path().join("head"), &tmp.path().join("base"), &cache);
    assert_eq!(classic.plan.deletes().count(), 4 * (N - 2));
    // A base without plugins.yaml: everything is new.
    let (tmp, cache) = two_repos(N, N);
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).expect("mkdir");
    let (classic, _) = both_reports(&empty, &tmp.path().join("head"), &cache);
    assert_eq!(classic.plan.creates().count(), 4 * N);
}

#[test]
fn lean_diff_sees_a_changed_template_in_every_plugin() {
    // Same plugins at both revisions, but head overrides a template: every plugin's inputs
    // fingerprint changes, so nothing may be taken as shared.
    let (tmp, cache) = two_repos(N, N);
    let head = tmp.path().join("head");
    let service = plugsync_core::render::Templates::builtin()
        .source("service.yaml.j2")
        .expect("built-in")
        .replace("spec:\n", "spec:\n  publishNotReadyAddresses: true\n");
    std::fs::create_dir_all(head.join("templates")).expect("mkdir");
    std::fs::write(head.join("templates/service.yaml.j2"), service).expect("write");
    let (classic, lean) = both_reports(&tmp.path().join("base"), &head, &cache);
    assert_eq!(
        lean.summary_line(),
        format!("0 added, 0 upgraded, 0 removed, {N} reconfigured, 0 unchanged")
    );
    // Each Plugin now names the templates ConfigMap, and each Service changed.
    assert_eq!(classic.plan.updates().count(), 2 * N);
    // The ConfigMap carrying the override is new.
    assert_eq!(classic.plan.creates().count(), 1);
}
