//! The git loop's PluginSet status follows the set's Plugins through watches, not polling: a
//! Plugin's status change (written as the controller writes it) reaches the PluginSet's status
//! with no GET or LIST at all, a watch that fails is restarted with backoff, and the loop stops
//! at once on shutdown even while its watches are backing off. The loop runs in-process
//! against the real control plane, through the fault proxy (which counts requests by verb and
//! injects the failures).

#[path = "common/cluster.rs"]
mod cluster;
#[path = "common/fault_proxy.rs"]
mod fault_proxy;

use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster::eventually;
use fault_proxy::{FaultProxy, Match, Verb};
use kube::api::{Api, Patch, PatchParams};
use plugsync_core::crd::{Plugin, PluginSetResource};
use plugsync_core::render::RenderSettings;
use plugsync_core::resolve::cache::Cache;
use plugsync_kube::apply::{Applier, ApplyOptions};
use plugsync_kube::gitops::{GitOps, LoopConfig, RepoSource};
use plugsync_kube::metrics::Metrics;
use plugsync_kube::server::Readiness;
use serde_json::{json, Value};
use tokio::sync::{watch, Notify};

/// Long enough that neither a poll nor a resync happens during a test: only the first pass.
const NEVER: Duration = Duration::from_secs(3600);
/// How long a watch event may take on a loaded host.
const WAIT: Duration = Duration::from_secs(60);

/// A running loop over a synthetic set of two plugins (a folder, never polled again after
/// the first pass), talking to the API server through `proxy`.
struct Running {
    ns: String,
    admin: kube::Client,
    proxy: FaultProxy,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    repo: tempfile::TempDir,
    cache: Cache,
    _cache_dir: tempfile::TempDir,
}

impl Running {
    async fn start(label: &str) -> Running {
        let c = cluster::cluster().await;
        let ns = c.namespace(label).await;
        let admin = c.client().await;
        Applier::new(admin.clone())
            .ensure_crds(&plugsync_core::crd::definitions(), ApplyOptions::default())
            .await
            .expect("crds");
        let cache_dir = tempfile::tempdir().expect("cache");
        let cache = Cache::open(cache_dir.path()).expect("cache");
        let repo = tempfile::tempdir().expect("repo");
        c.synthetic_repo(repo.path(), 2, &cache, &ns);
        let proxy = FaultProxy::start(&c.kubeconfig()).await;
        let client = plugsync_kube::cluster::client_for(proxy.config(&ns)).expect("client");
        let config = LoopConfig {
            source: RepoSource::Local {
                root: repo.path().to_path_buf(),
            },
            path: String::new(),
            file: "plugins.yaml".into(),
            namespace: ns.clone(),
            interval: NEVER,
            git_timeout: Duration::from_secs(60),
            jitter: 0.0,
            resync: NEVER,
            suspend: false,
            install_crds: false,
            commit_lock: None,
        };
        let resolver = plugsync_testkit::resolver(cache.clone());
        let gitops = GitOps::new(
            client,
            config,
            resolver,
            RenderSettings::default(),
            cache.clone(),
            Arc::new(Metrics::new()),
        )
        .expect("git loop");
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(gitops.run(Arc::new(Notify::new()), stopped, Readiness::new()));
        let running = Running {
            ns,
            admin,
            proxy,
            stop,
            task,
            repo,
            cache,
            _cache_dir: cache_dir,
        };
        // The first pass applied both Plugins, and the status counts them (no controller
        // runs here: they have no phase yet, so they count as Pending).
        running
            .status_where("both Plugins counted Pending", |s| {
                s["lastAppliedCommit"] == "working tree" && s["phases"] == json!({"Pending": 2})
            })
            .await;
        running
    }

    /// The PluginSet's status, read directly from the API server (not through the proxy).
    async fn status(&self) -> Value {
        let sets: Api<PluginSetResource> = Api::namespaced(self.admin.clone(), &self.ns);
        let set = sets.get_opt("synth").await.expect("get the PluginSet");
        set.and_then(|s| s.status)
            .map(|s| serde_json::to_value(s).expect("json"))
            .unwrap_or(Value::Null)
    }

    async fn status_where(&self, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        eventually(WAIT, what, || async {
            let status = self.status().await;
            check(&status).then_some(status)
        })
        .await
    }

    /// The set's Plugins, by name.
    async fn plugins(&self) -> Vec<Plugin> {
        let plugins: Api<Plugin> = Api::namespaced(self.admin.clone(), &self.ns);
        let mut list = plugins
            .list(&Default::default())
            .await
            .expect("list Plugins")
            .items;
        list.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        list
    }

    /// Sets the phase of the `index`th Plugin (by name) as the controller does.
    async fn set_phase(&self, index: usize, phase: &str) -> String {
        let name = self.plugins().await[index]
            .metadata
            .name
            .clone()
            .expect("name");
        self.set_phase_of(&name, phase).await;
        name
    }

    /// Sets a Plugin's phase as the controller does (a status merge patch), directly.
    async fn set_phase_of(&self, name: &str, phase: &str) {
        let plugins: Api<Plugin> = Api::namespaced(self.admin.clone(), &self.ns);
        plugins
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"phase": phase}})),
            )
            .await
            .expect("patch the Plugin's status");
    }

    /// Stops the loop and says how long it took to end.
    async fn stop(self) -> Duration {
        let started = Instant::now();
        self.stop.send(true).expect("the loop listens");
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("the loop stops")
            .expect("the loop did not panic");
        started.elapsed()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_status_change_reaches_the_set_status_through_watches_with_no_get_or_list() {
    let running = Running::start("gitops-watch").await;
    // Whatever the first pass left to settle (its own status writes echoing back) settles.
    tokio::time::sleep(Duration::from_secs(1)).await;
    running.proxy.reset_stats();

    let started = Instant::now();
    running.set_phase(0, "Running").await;
    let status = running
        .status_where("one Plugin counted Running", |s| {
            s["phases"] == json!({"Pending": 1, "Running": 1})
        })
        .await;
    let took = started.elapsed();
    let stats = running.proxy.stats();
    println!(
        "a Plugin's phase reached the PluginSet status in {took:?}; requests meanwhile: {stats:?}"
    );
    assert!(
        status["message"]
            .as_str()
            .is_some_and(|m| m.contains("1 of 2 plugins running")),
        "{status:#}"
    );
    // Nothing polled: the change came by the watches, and the only request was the write.
    assert_eq!(stats.total(Verb::Get), 0, "{stats:?}");
    assert_eq!(stats.total(Verb::List), 0, "{stats:?}");
    assert_eq!(stats.real.patch, 1, "one status write: {stats:?}");

    // A burst of changes: few writes, and none once nothing changes.
    running.proxy.reset_stats();
    running.set_phase(1, "Building").await;
    running.set_phase(0, "Building").await;
    running.set_phase(1, "Running").await;
    running.set_phase(0, "Running").await;
    running
        .status_where("both Plugins counted Running", |s| {
            s["phases"] == json!({"Running": 2})
                && s["conditions"].as_array().is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                })
        })
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stats = running.proxy.stats();
    println!("four Plugin changes in a burst: {stats:?}");
    assert!(
        (1..=4).contains(&stats.real.patch),
        "at most one write per change: {stats:?}"
    );
    assert_eq!(stats.total(Verb::Get) + stats.total(Verb::List), 0);
    let quiet = running.proxy.stats();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        running.proxy.stats().real.patch,
        quiet.real.patch,
        "no write without a change"
    );

    let took = running.stop().await;
    println!("stopped in {took:?}");
    assert!(took < Duration::from_secs(2), "stops promptly: {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_watch_is_restarted_with_backoff_and_shutdown_does_not_wait_for_it() {
    let running = Running::start("gitops-watch-fault").await;
    let faults = running.proxy.faults();

    // Every watch is cut with 410 Gone, and the re-lists that follow fail three times.
    let relists = Match::verb(Verb::List).and_path(format!("/namespaces/{}/plugin", running.ns));
    faults.fail_next_matching(3, 500, relists.clone());
    faults.fail_watches_with_gone();
    eventually(WAIT, "the three failed re-lists", || async {
        (faults.pending() == 0).then_some(())
    })
    .await;
    let stats = running.proxy.stats();
    assert!(stats.injected_failures >= 3, "{stats:?}");

    // The watches came back: a change still reaches the status.
    running.set_phase(1, "Running").await;
    running
        .status_where("one Plugin counted Running after the restart", |s| {
            s["phases"] == json!({"Pending": 1, "Running": 1})
        })
        .await;

    // Watches failing for good (every re-list refused) back off; shutdown does not wait.
    faults.fail_next_matching(10_000, 500, relists);
    faults.fail_watches_with_gone();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let took = running.stop().await;
    println!("stopped in {took:?} while the watches backed off");
    assert!(took < Duration::from_secs(2), "stops promptly: {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_held_for_its_new_version_is_released_as_soon_as_the_watch_sees_it_run() {
    let running = Running::start("gitops-watch-upgrade").await;
    let before: Vec<String> = running
        .plugins()
        .await
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();

    // Plugin 0 upgraded in the folder: the loop applies the new version, and holds the old
    // one until the new one runs.
    plugsync_testkit::synth::change_one(
        running.repo.path(),
        &running.cache,
        plugsync_testkit::synth::SynthChange::Upgrade,
    )
    .expect("upgrade plugin 0");
    running
        .status_where("the old version held", |s| {
            s["message"]
                .as_str()
                .is_some_and(|m| m.contains("1 old versions held"))
        })
        .await;
    let plugins = running.plugins().await;
    let new = plugins
        .iter()
        .find(|p| !before.contains(p.metadata.name.as_ref().expect("name")))
        .expect("the new version's Plugin");
    let old = plugins
        .iter()
        .find(|p| p.spec.name == new.spec.name && p.metadata.name != new.metadata.name)
        .expect("the old version's Plugin")
        .metadata
        .name
        .clone()
        .expect("name");

    // The new version runs (as the controller would say): with no poll due, the watch sees
    // it, and the loop applies again, which prunes the old version.
    let started = Instant::now();
    running
        .set_phase_of(new.metadata.name.as_deref().expect("name"), "Running")
        .await;
    eventually(WAIT, "the old version pruned", || async {
        let names: Vec<String> = running
            .plugins()
            .await
            .into_iter()
            .filter_map(|p| p.metadata.name)
            .collect();
        (!names.contains(&old)).then_some(())
    })
    .await;
    println!(
        "held version released {:?} after its replacement ran",
        started.elapsed()
    );
    running
        .status_where("nothing held", |s| {
            s["message"]
                .as_str()
                .is_some_and(|m| !m.contains("held") && m.contains("1 of 2 plugins running"))
        })
        .await;
    running.stop().await;
}
