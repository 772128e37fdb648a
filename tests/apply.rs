//! Apply against the real control plane (`tests/cluster`): create, update, prune,
//! idempotency, conflicts with another field manager, faults mid-apply (injected by the fault
//! proxy in front of the API server) and interrupted runs that must converge.
//!
//! Every test has its own namespace. The synthetic set keeps its `nodeSelector: {pool:
//! plugins}`, which the fake node does not carry: the Jobs and Deployments applied here get
//! Pending pods, so nothing builds and nothing these tests count depends on a build. What the
//! controllers of the real cluster do with the objects (ReplicaSets, pods, status) is theirs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
};
use plugsync_core::pipeline::{desired_state, DesiredState};
use plugsync_core::render::RenderSettings;
use plugsync_core::resolve::cache::Cache;
use plugsync_core::source::WorkTree;
use plugsync_kube::apply::{Applier, ApplyOptions, ApplyReport, Outcome, RetryPolicy};
use serde_json::{json, Value};

#[path = "common/cluster.rs"]
mod cluster;
#[path = "common/fault_proxy.rs"]
mod fault_proxy;

use cluster::cluster;
use fault_proxy::{FaultProxy, Match, Verb};

/// The kinds a synthetic plugin renders, in the order [`Env::counts`] reports them.
const KINDS: [(&str, &str); 4] = [
    ("plugsync.dev/v1alpha1", "Plugin"),
    ("batch/v1", "Job"),
    ("apps/v1", "Deployment"),
    ("v1", "Service"),
];
const SET: &str = "synth";

fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        attempts: 4,
        base: Duration::from_millis(10),
        cap: Duration::from_millis(50),
    }
}

fn resource(api_version: &str, kind: &str) -> ApiResource {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind))
}

/// One test's world: a fresh namespace, a synthetic repository of `n` plugins declared in
/// it, an admin client straight to the API server (for reading and for other actors), and an
/// applier with fast retries talking through a fault proxy (request counts and faults).
struct Env {
    ns: String,
    client: kube::Client,
    proxy: FaultProxy,
    applier: Applier,
    dir: tempfile::TempDir,
    cache: Cache,
    _cache_dir: tempfile::TempDir,
}

impl Env {
    async fn new(label: &str, n: usize) -> Env {
        let c = cluster().await;
        c.install_crds().await;
        let ns = c.namespace(label).await;
        let dir = tempfile::tempdir().expect("dir");
        let cache_dir = tempfile::tempdir().expect("cache");
        let cache = Cache::open(cache_dir.path()).expect("cache");
        plugsync_testkit::synth::generate_repo(dir.path(), n, &cache).expect("generate");
        // Only the namespace moves; registry and nodeSelector stay (see the module docs).
        let path = dir.path().join("plugins.yaml");
        let yaml = std::fs::read_to_string(&path).expect("read plugins.yaml");
        let moved = yaml.replace("  namespace: dify\n", &format!("  namespace: {ns}\n"));
        assert_ne!(moved, yaml, "the synthetic set declares namespace dify");
        std::fs::write(&path, moved).expect("write plugins.yaml");
        let proxy = FaultProxy::start(&c.kubeconfig()).await;
        // The client as every command builds it (kube's own retries off: one retry layer).
        let client = plugsync_kube::cluster::client_for(proxy.config(&ns)).expect("client");
        let applier = Applier::new(client).with_retry(fast_retry());
        Env {
            client: c.client().await,
            ns,
            proxy,
            applier,
            dir,
            cache,
            _cache_dir: cache_dir,
        }
    }

    async fn render(&self) -> DesiredState {
        render(self.dir.path(), &self.cache).await
    }

    async fn apply(
        &self,
        state: &DesiredState,
        objects: &[Value],
        options: ApplyOptions,
    ) -> ApplyReport {
        self.applier
            .apply_set(state.set.spec(), objects, options)
            .await
            .expect("apply runs")
    }

    fn api(&self, api_version: &str, kind: &str) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), &self.ns, &resource(api_version, kind))
    }

    /// The objects of `kind` carrying the ownership label, read from the API server.
    async fn labelled(&self, api_version: &str, kind: &str) -> Vec<Value> {
        self.api(api_version, kind)
            .list(&ListParams::default().labels("plugsync.dev/pluginset"))
            .await
            .expect("list")
            .items
            .into_iter()
            .map(|o| serde_json::to_value(o).expect("json"))
            .collect()
    }

    /// How many Plugins, Jobs, Deployments and Services carry the ownership label.
    async fn counts(&self) -> [usize; 4] {
        let mut out = [0; 4];
        for (slot, (v, k)) in out.iter_mut().zip(KINDS) {
            *slot = self.labelled(v, k).await.len();
        }
        out
    }

    async fn get(&self, api_version: &str, kind: &str, name: &str) -> Option<Value> {
        self.api(api_version, kind)
            .get_opt(name)
            .await
            .expect("get")
            .map(|o| serde_json::to_value(o).expect("json"))
    }

    async fn plugin_set(&self) -> Value {
        self.get("plugsync.dev/v1alpha1", "PluginSet", SET)
            .await
            .expect("PluginSet applied")
    }

    /// `(kind, name)` of every entry of the PluginSet's inventory.
    async fn inventory(&self) -> BTreeSet<(String, String)> {
        self.plugin_set().await["status"]["inventory"]
            .as_array()
            .expect("inventory")
            .iter()
            .map(|e| {
                assert_eq!(e["namespace"], self.ns.as_str(), "{e}");
                (
                    e["kind"].as_str().expect("kind").to_string(),
                    e["name"].as_str().expect("name").to_string(),
                )
            })
            .collect()
    }

    /// `(kind, name)` of every labelled object of the four kinds.
    async fn live_keys(&self) -> BTreeSet<(String, String)> {
        let mut out = BTreeSet::new();
        for (v, k) in KINDS {
            for o in self.labelled(v, k).await {
                out.insert((k.to_string(), name(&o)));
            }
        }
        out
    }

    /// Exactly `per_kind` objects of each kind (no duplicates), and the inventory lists
    /// exactly what exists (no orphans, no stale entries).
    async fn assert_converged(&self, per_kind: usize) {
        assert_eq!(self.counts().await, [per_kind; 4], "one of each per plugin");
        assert_eq!(
            self.inventory().await,
            self.live_keys().await,
            "the inventory is exactly what exists"
        );
    }

    /// `metadata.resourceVersion` of the PluginSet, the Plugins and the Services: objects no
    /// controller of the cluster writes to, so only an apply could move them.
    async fn quiet_resource_versions(&self) -> BTreeMap<(String, String), String> {
        let mut out = BTreeMap::new();
        let set = self.plugin_set().await;
        out.insert(("PluginSet".into(), SET.into()), rv(&set));
        for (v, k) in [KINDS[0], KINDS[3]] {
            for o in self.labelled(v, k).await {
                out.insert((k.to_string(), name(&o)), rv(&o));
            }
        }
        out
    }
}

fn name(o: &Value) -> String {
    o["metadata"]["name"].as_str().expect("name").to_string()
}

fn rv(o: &Value) -> String {
    o["metadata"]["resourceVersion"]
        .as_str()
        .expect("resourceVersion")
        .to_string()
}

async fn render(dir: &Path, cache: &Cache) -> DesiredState {
    let resolver = plugsync_testkit::resolver(cache.clone());
    let snapshot = WorkTree::new(dir).expect("worktree");
    desired_state(
        &snapshot,
        "plugins.yaml",
        &resolver,
        &RenderSettings::default(),
    )
    .await
    .expect("renders")
    .expect("plugins.yaml present")
}

/// The managers of a live object's managedFields entries that own part of `spec`.
fn spec_managers(object: &Value) -> Vec<String> {
    object["metadata"]["managedFields"]
        .as_array()
        .expect("managedFields")
        .iter()
        .filter(|m| m["fieldsV1"].get("f:spec").is_some())
        .map(|m| m["manager"].as_str().expect("manager").to_string())
        .collect()
}

#[tokio::test]
async fn apply_creates_everything_and_records_the_inventory() {
    let env = Env::new("apply-creates", 3).await;
    let state = env.render().await;

    let report = env
        .apply(&state, &state.objects(), ApplyOptions::default())
        .await;
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(
        report.count(Outcome::Created),
        3 * 4 + 1,
        "{}",
        report.summary()
    );
    assert_eq!(env.counts().await, [3, 3, 3, 3]);
    assert_eq!(env.inventory().await.len(), 12);
    env.assert_converged(3).await;

    let deployment = env.labelled("apps/v1", "Deployment").await.remove(0);
    // The deployment controller writes status (and its revision annotation) under its own
    // manager; the spec is plugsync's alone, and plugsync is the only applier.
    assert_eq!(
        spec_managers(&deployment),
        vec!["plugsync"],
        "{deployment:#}"
    );
    let appliers: Vec<&str> = deployment["metadata"]["managedFields"]
        .as_array()
        .expect("managedFields")
        .iter()
        .filter(|m| m["operation"] == "Apply")
        .filter_map(|m| m["manager"].as_str())
        .collect();
    assert_eq!(appliers, vec!["plugsync"]);
    assert!(deployment
        .pointer("/metadata/annotations/plugsync.dev~1applied-hash")
        .is_some());
}

/// The second apply of an unchanged set: no writes at all, no resourceVersion moved, and
/// reads that do not depend on the number of plugins. Returns (writes, reads, dry-run writes).
async fn second_apply_requests(n: usize) -> (u64, u64, u64) {
    let env = Env::new(&format!("apply-unchanged-{n}"), n).await;
    let state = env.render().await;
    let first = env
        .apply(&state, &state.objects(), ApplyOptions::default())
        .await;
    assert!(first.failed.is_empty(), "{:?}", first.failed);
    let rvs_before = env.quiet_resource_versions().await;
    env.proxy.reset_stats();
    let report = env
        .apply(&state, &state.objects(), ApplyOptions::default())
        .await;
    let stats = env.proxy.stats();
    assert_eq!(
        report.count(Outcome::Unchanged),
        n * 4 + 1,
        "{}",
        report.summary()
    );
    assert_eq!(
        env.quiet_resource_versions().await,
        rvs_before,
        "no resourceVersion bumped"
    );
    let reads = stats.real.get + stats.real.list + stats.real.other;
    (stats.real.writes(), reads, stats.dry_run.writes())
}

#[tokio::test]
async fn an_unchanged_set_costs_zero_writes_and_constant_reads() {
    let (writes_10, reads_10, dry_10) = second_apply_requests(10).await;
    let (writes_100, reads_100, dry_100) = second_apply_requests(100).await;
    assert_eq!((writes_10, writes_100), (0, 0), "zero writes");
    assert_eq!((dry_10, dry_100), (0, 0), "not even dry runs");
    assert_eq!(
        reads_10, reads_100,
        "reads do not grow with the number of plugins"
    );
    assert!(reads_100 <= 12, "a handful of reads: {reads_100}");
}

#[tokio::test]
async fn a_changed_plugin_updates_only_its_deployment_and_the_set() {
    let env = Env::new("apply-changed", 3).await;
    let state = env.render().await;
    env.apply(&state, &state.objects(), ApplyOptions::default())
        .await;

    plugsync_testkit::synth::change_one(
        env.dir.path(),
        &env.cache,
        plugsync_testkit::synth::SynthChange::Reconfigure,
    )
    .expect("change");
    let state = env.render().await;
    env.proxy.reset_stats();
    let report = env
        .apply(&state, &state.objects(), ApplyOptions::default())
        .await;
    let updated: Vec<String> = report
        .objects
        .iter()
        .filter(|(_, o)| *o == Outcome::Updated)
        .map(|(k, _)| k.kind.clone())
        .collect();
    // plugins.yaml changed, so the PluginSet (whose spec mirrors it) changes too, and the
    // Plugin carries its merged runtime settings.
    assert_eq!(
        updated,
        vec!["PluginSet", "Plugin", "Deployment"],
        "{}",
        report.summary()
    );
    assert_eq!(env.proxy.stats().real.writes(), 3);
    let deployment = env
        .get("apps/v1", "Deployment", &state.rendered[0].resource_name)
        .await
        .expect("deployment");
    assert_eq!(deployment["spec"]["replicas"], 3, "the override reached it");
}

#[tokio::test]
async fn prune_removes_undeclared_objects_by_label_and_by_inventory_but_nothing_else() {
    let env = Env::new("apply-prune", 3).await;
    let state = env.render().await;
    env.apply(&state, &state.objects(), ApplyOptions::default())
        .await;

    // Someone else's Service in the same namespace, with a look-alike name: never touched.
    let services = env.api("v1", "Service");
    let foreign: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "svc-mine", "namespace": env.ns},
        "spec": {"ports": [{"port": 80}]}
    }))
    .expect("service");
    services
        .create(&PostParams::default(), &foreign)
        .await
        .expect("foreign service");
    // One of plugsync's objects loses its ownership label (someone edits it): the inventory
    // still knows it.
    let service_name = format!("svc-{}", state.rendered[2].plugin_id);
    services
        .patch(
            &service_name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"plugsync.dev/pluginset": null}}})),
        )
        .await
        .expect("relabel");
    assert!(
        env.get("v1", "Service", &service_name).await.expect("svc")["metadata"]["labels"]
            .get("plugsync.dev/pluginset")
            .is_none()
    );

    // Declare only the first plugin.
    let keep: Vec<Value> = state.rendered[0].objects.clone();
    let report = env.apply(&state, &keep, ApplyOptions::default()).await;
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(report.count(Outcome::Pruned), 8, "{}", report.summary());
    assert_eq!(env.counts().await, [1, 1, 1, 1]);
    assert!(
        env.get("v1", "Service", &service_name).await.is_none(),
        "pruned through the inventory"
    );
    assert!(
        env.get("v1", "Service", "svc-mine").await.is_some(),
        "foreign object kept"
    );
    assert_eq!(env.inventory().await.len(), 4);
    env.assert_converged(1).await;
}

#[tokio::test]
async fn a_field_owned_by_another_manager_is_a_reported_conflict() {
    let env = Env::new("apply-conflict", 1).await;
    let state = env.render().await;
    env.apply(&state, &state.objects(), ApplyOptions::default())
        .await;

    // An operator scales the Deployment with their own field manager, taking the field.
    let name = state.rendered[0].resource_name.clone();
    let deployments = env.api("apps/v1", "Deployment");
    let scale: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name}, "spec": {"replicas": 5}
    }))
    .expect("patch");
    deployments
        .patch(
            &name,
            &PatchParams::apply("operator").force(),
            &Patch::Apply(&scale),
        )
        .await
        .expect("operator applies");

    // plugsync wants replicas 2 now: a conflict with "operator", reported, not stolen.
    let mut objects = state.objects();
    for o in objects.iter_mut().filter(|o| o["kind"] == "Deployment") {
        o["spec"]["replicas"] = json!(2);
    }
    let report = env.apply(&state, &objects, ApplyOptions::default()).await;
    assert_eq!(report.failed.len(), 1, "{}", report.summary());
    let (key, why) = &report.failed[0];
    assert_eq!(key.kind, "Deployment");
    assert!(
        why.contains("operator") && why.contains(".spec.replicas"),
        "{why}"
    );
    let live = env
        .get("apps/v1", "Deployment", &name)
        .await
        .expect("deployment");
    assert_eq!(live["spec"]["replicas"], 5, "not silently taken");
}

#[tokio::test]
async fn transient_faults_are_retried() {
    let env = Env::new("apply-transient", 2).await;
    let state = env.render().await;
    let faults = env.proxy.faults();
    faults.fail_next_matching(2, 503, Match::verb(Verb::Apply));
    faults.fail_next_matching(1, 429, Match::verb(Verb::List));
    let report = env
        .apply(&state, &state.objects(), ApplyOptions::default())
        .await;
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(faults.pending(), 0, "every fault was hit");
    assert_eq!(env.proxy.stats().injected_failures, 3);
    env.assert_converged(2).await;

    // A re-run without faults has nothing left to do.
    env.proxy.reset_stats();
    let report = env
        .apply(&state, &state.objects(), ApplyOptions::default())
        .await;
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(report.count(Outcome::Unchanged), 2 * 4 + 1);
    assert_eq!(env.proxy.stats().real.writes(), 0);
    env.assert_converged(2).await;
}

/// One retry layer, the applier's: a write failing with 503 is sent `attempts` times in all,
/// then reported with its status; fewer failures than that converge. (With kube's client
/// retries under it as well, each attempt was up to 16 requests.)
#[tokio::test]
async fn retries_stop_at_the_applier_bound_and_below_it_converge() {
    let env = Env::new("apply-retry-bound", 1).await;
    let state = env.render().await;
    let bound = u64::from(fast_retry().attempts);
    let faults = env.proxy.faults();
    let deployments = || Match::verb(Verb::Apply).and_path("/deployments/");

    // Beyond the bound: the Deployment fails, after exactly `bound` requests.
    faults.fail_next_matching(1000, 503, deployments());
    let report = env
        .apply(&state, &state.objects(), ApplyOptions::default())
        .await;
    assert_eq!(report.failed.len(), 1, "{}", report.summary());
    let (key, why) = &report.failed[0];
    assert!(key.to_string().contains("Deployment"), "{key}");
    assert!(why.contains("503"), "says the server's answer: {why}");
    assert_eq!(
        env.proxy.stats().injected_failures,
        bound,
        "one layer of retries"
    );
    faults.clear();

    // Below it: `bound - 1` failures, then the server's answer; it converges.
    env.proxy.reset_stats();
    faults.fail_next_matching((bound - 1) as u32, 503, deployments());
    let report = env
        .apply(&state, &state.objects(), ApplyOptions::default())
        .await;
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(faults.pending(), 0);
    assert_eq!(env.proxy.stats().injected_failures, bound - 1);
    env.assert_converged(1).await;
}

#[tokio::test]
async fn a_run_that_fails_half_way_converges_on_the_next_run() {
    let mut env = Env::new("apply-half-way", 3).await;
    let client = plugsync_kube::cluster::client_for(env.proxy.config(&env.ns)).expect("client");
    env.applier = Applier::new(client).with_retry(RetryPolicy {
        attempts: 1,
        ..fast_retry()
    });
    let state = env.render().await;
    // Every Deployment write fails: Plugins, Jobs and Services land, Deployments do not.
    env.proxy.faults().fail_next_matching(
        1000,
        500,
        Match::verb(Verb::Apply).and_path("/deployments/"),
    );
    let report = env
        .apply(&state, &state.objects(), ApplyOptions::default())
        .await;
    assert!(
        !report.failed.is_empty(),
        "the fault bit: {}",
        report.summary()
    );
    assert_eq!(env.counts().await, [3, 3, 0, 3], "half-applied");
    // Everything that exists is in the inventory: nothing is orphaned.
    let inventory = env.inventory().await;
    let live = env.live_keys().await;
    assert!(
        live.is_subset(&inventory),
        "{live:?} not all in {inventory:?}"
    );

    env.proxy.faults().clear();
    let report = env
        .apply(&state, &state.objects(), ApplyOptions::default())
        .await;
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(report.count(Outcome::Created), 3, "{}", report.summary());
    env.assert_converged(3).await;
}

#[tokio::test]
async fn dry_run_persists_nothing() {
    let env = Env::new("apply-dry-run", 2).await;
    let state = env.render().await;
    env.proxy.reset_stats();
    let report = env
        .apply(
            &state,
            &state.objects(),
            ApplyOptions {
                dry_run: true,
                prune: true,
            },
        )
        .await;
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(report.count(Outcome::Created), 2 * 4 + 1);
    let stats = env.proxy.stats();
    assert_eq!(stats.real.writes(), 0, "{stats:?}");
    assert!(stats.dry_run.apply > 0, "the server was asked: {stats:?}");
    assert!(
        env.get("plugsync.dev/v1alpha1", "PluginSet", SET)
            .await
            .is_none(),
        "no PluginSet"
    );
    assert_eq!(env.counts().await, [0, 0, 0, 0]);
}

#[tokio::test]
async fn an_upgraded_plugin_keeps_its_old_version_until_the_new_one_runs() {
    let env = Env::new("apply-upgrade", 2).await;
    let plugins_of = |state: &DesiredState| -> Vec<Value> {
        state
            .objects()
            .into_iter()
            .filter(|o| o["kind"] == "Plugin")
            .collect()
    };
    let before = env.render().await;
    env.apply(&before, &plugins_of(&before), ApplyOptions::default())
        .await;
    let old_id = before.rendered[0].plugin_id.clone();

    plugsync_testkit::synth::change_one(
        env.dir.path(),
        &env.cache,
        plugsync_testkit::synth::SynthChange::Upgrade,
    )
    .expect("upgrade plugin 0");
    let after = env.render().await;
    let new_id = after.rendered[0].plugin_id.clone();
    assert_ne!(old_id, new_id);

    // The new version exists but does not run yet: the old one is held, not pruned.
    let report = env
        .apply(&after, &plugins_of(&after), ApplyOptions::default())
        .await;
    assert_eq!(report.count(Outcome::Held), 1, "{}", report.summary());
    assert_eq!(report.count(Outcome::Pruned), 0);
    let plugin = |id: String| {
        let env = &env;
        async move { env.get("plugsync.dev/v1alpha1", "Plugin", &id).await }
    };
    assert!(plugin(old_id.clone()).await.is_some());
    assert!(plugin(new_id.clone()).await.is_some());
    assert!(
        env.inventory()
            .await
            .contains(&("Plugin".to_string(), old_id.clone())),
        "still inventoried"
    );

    // Once the new version is Running (the controller would say so), the next apply prunes
    // the old one.
    env.api("plugsync.dev/v1alpha1", "Plugin")
        .patch_status(
            &new_id,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Running"}})),
        )
        .await
        .expect("running");
    let report = env
        .apply(&after, &plugins_of(&after), ApplyOptions::default())
        .await;
    assert_eq!(report.count(Outcome::Pruned), 1, "{}", report.summary());
    assert!(plugin(old_id.clone()).await.is_none());

    // A plugin removed (not upgraded) is pruned at once.
    let only_second: Vec<Value> = plugins_of(&after)
        .into_iter()
        .filter(|o| o["metadata"]["name"] != new_id.as_str())
        .collect();
    let report = env
        .apply(&after, &only_second, ApplyOptions::default())
        .await;
    assert_eq!(report.count(Outcome::Pruned), 1, "{}", report.summary());
    assert_eq!(report.count(Outcome::Held), 0);
    assert!(plugin(new_id).await.is_none());
}

/// A copy of `env`'s repository whose PluginSet is named `name`: another set declaring the
/// same packages in the same namespace.
async fn other_set(env: &Env, name: &str) -> (tempfile::TempDir, DesiredState) {
    let dir = tempfile::tempdir().expect("dir");
    for file in ["plugins.yaml", "plugins.lock"] {
        let text = std::fs::read_to_string(env.dir.path().join(file)).expect("read");
        let text = if file == "plugins.yaml" {
            let renamed = text.replace("\n  name: synth\n", &format!("\n  name: {name}\n"));
            assert_ne!(renamed, text, "the synthetic set is named synth");
            renamed
        } else {
            text
        };
        std::fs::write(dir.path().join(file), text).expect("write");
    }
    let state = render(dir.path(), &env.cache).await;
    (dir, state)
}

fn plugins_of(state: &DesiredState) -> Vec<Value> {
    state.cluster_objects()
}

#[tokio::test]
async fn a_package_another_set_declares_is_a_conflict_never_a_takeover() {
    let env = Env::new("apply-two-sets", 2).await;
    let mine = env.render().await;
    let report = env
        .apply(&mine, &plugins_of(&mine), ApplyOptions::default())
        .await;
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    let ids: Vec<String> = mine.rendered.iter().map(|r| r.plugin_id.clone()).collect();

    // Another set in the namespace declares the same two packages (and so the same Plugin
    // names). A dry run and the apply both report the conflict; nothing is taken over.
    let (_dir, theirs) = other_set(&env, "other").await;
    let applier = || {
        Applier::new(plugsync_kube::cluster::client_for(env.proxy.config(&env.ns)).expect("client"))
            .with_retry(fast_retry())
    };
    for dry_run in [true, false] {
        let report = applier()
            .apply_set(
                theirs.set.spec(),
                &plugins_of(&theirs),
                ApplyOptions {
                    dry_run,
                    prune: true,
                },
            )
            .await
            .expect("apply runs");
        assert_eq!(
            report.failed.len(),
            2,
            "dry run {dry_run}: {}",
            report.summary()
        );
        for (key, why) in &report.failed {
            assert_eq!(key.kind, "Plugin");
            assert!(ids.contains(&key.name), "{key}");
            assert!(
                why.contains(r#"owned by PluginSet "synth""#)
                    && why.contains(r#"PluginSet "other" declares the same package"#)
                    && why.contains("one namespace cannot run the same package"),
                "{why}"
            );
        }
        assert_eq!(
            report.count(Outcome::Created),
            1,
            "the PluginSet only: {}",
            report.summary()
        );
    }
    for id in &ids {
        let plugin = env
            .get("plugsync.dev/v1alpha1", "Plugin", id)
            .await
            .expect("still there");
        assert_eq!(plugin["metadata"]["labels"]["plugsync.dev/pluginset"], SET);
        assert_eq!(plugin["spec"]["pluginSet"], SET);
    }
    let other_set = env
        .get("plugsync.dev/v1alpha1", "PluginSet", "other")
        .await
        .expect("the other set exists");
    assert!(
        other_set["status"]["inventory"].is_null(),
        "another set's objects never enter the inventory: {other_set:#}"
    );

    // Emptying the other set prunes nothing of this one's.
    let report = applier()
        .apply_set(theirs.set.spec(), &[], ApplyOptions::default())
        .await
        .expect("apply runs");
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(report.count(Outcome::Pruned), 0, "{}", report.summary());
    for id in &ids {
        assert!(env
            .get("plugsync.dev/v1alpha1", "Plugin", id)
            .await
            .is_some());
    }
}

#[tokio::test]
async fn an_object_another_set_took_over_is_never_pruned() {
    let env = Env::new("apply-taken-over", 2).await;
    let mine = env.render().await;
    env.apply(&mine, &plugins_of(&mine), ApplyOptions::default())
        .await;
    // What an older plugsync let happen: another set applied over one of this set's Plugins
    // and now labels it. This set's inventory still lists it.
    let taken = mine.rendered[0].plugin_id.clone();
    let (_dir, theirs) = other_set(&env, "other").await;
    let their_plugin = plugins_of(&theirs)
        .into_iter()
        .find(|p| p["metadata"]["name"] == taken.as_str())
        .expect("their Plugin");
    env.api("plugsync.dev/v1alpha1", "Plugin")
        .patch(
            &taken,
            &PatchParams::apply("plugsync").force(),
            &Patch::Apply(&plugsync_kube::apply::with_applied_hash(&their_plugin)),
        )
        .await
        .expect("taken over");
    assert!(env
        .inventory()
        .await
        .contains(&("Plugin".to_string(), taken.clone())));

    // This set is emptied: its own Plugin goes, the one the other set owns stays, and leaves
    // the inventory.
    let report = env.apply(&mine, &[], ApplyOptions::default()).await;
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(report.count(Outcome::Pruned), 1, "{}", report.summary());
    let kept = env
        .get("plugsync.dev/v1alpha1", "Plugin", &taken)
        .await
        .expect("the other set's Plugin is not pruned");
    assert_eq!(
        kept["metadata"]["labels"]["plugsync.dev/pluginset"],
        "other"
    );
    assert!(env
        .get(
            "plugsync.dev/v1alpha1",
            "Plugin",
            &mine.rendered[1].plugin_id
        )
        .await
        .is_none());
    let inventory = env.plugin_set().await["status"]["inventory"].clone();
    assert!(
        inventory.is_null() || inventory == json!([]),
        "nothing left to own: {inventory}"
    );
}

/// Writes `templates/deployment.yaml.j2` into the repository: the built-in Deployment
/// template with `revisionHistoryLimit: history`, so each value is another templates
/// ConfigMap (named by the hash of its content).
fn write_deployment_template(dir: &Path, history: u32) {
    let built_in = include_str!("../templates/deployment.yaml.j2");
    let text = built_in.replace(
        "revisionHistoryLimit: 3",
        &format!("revisionHistoryLimit: {history}"),
    );
    assert_ne!(
        text, built_in,
        "the built-in template sets revisionHistoryLimit"
    );
    std::fs::create_dir_all(dir.join("templates")).expect("templates/");
    std::fs::write(dir.join("templates/deployment.yaml.j2"), text).expect("write");
}

/// The name of the templates ConfigMap a render applies.
fn templates_config_map(state: &DesiredState) -> String {
    let objects = state.cluster_objects();
    let config_maps: Vec<&Value> = objects
        .iter()
        .filter(|o| o["kind"] == "ConfigMap")
        .collect();
    assert_eq!(config_maps.len(), 1, "one templates ConfigMap");
    name(config_maps[0])
}

#[tokio::test]
async fn a_templates_config_map_is_kept_while_an_old_version_held_for_its_upgrade_names_it() {
    let env = Env::new("apply-templates-held", 2).await;
    write_deployment_template(env.dir.path(), 5);
    let before = env.render().await;
    let old_cm = templates_config_map(&before);
    env.apply(&before, &before.cluster_objects(), ApplyOptions::default())
        .await;
    let old_id = before.rendered[0].plugin_id.clone();

    // One commit upgrades plugin 0 and changes the templates.
    plugsync_testkit::synth::change_one(
        env.dir.path(),
        &env.cache,
        plugsync_testkit::synth::SynthChange::Upgrade,
    )
    .expect("upgrade plugin 0");
    write_deployment_template(env.dir.path(), 6);
    let after = env.render().await;
    let new_cm = templates_config_map(&after);
    let new_id = after.rendered[0].plugin_id.clone();
    assert_ne!(old_cm, new_cm);
    assert_ne!(old_id, new_id);
    let report = env
        .apply(&after, &after.cluster_objects(), ApplyOptions::default())
        .await;

    // The old version is held, and the controller keeps rendering it from the templates it
    // names: they stay, inventoried, until it goes.
    let held = env
        .get("plugsync.dev/v1alpha1", "Plugin", &old_id)
        .await
        .expect("the old version is held");
    assert_eq!(held["spec"]["templates"], old_cm.as_str());
    assert!(
        env.get("v1", "ConfigMap", &old_cm).await.is_some(),
        "the templates a held Plugin names are not pruned: {}",
        report.summary()
    );
    assert!(env.get("v1", "ConfigMap", &new_cm).await.is_some());
    assert_eq!(report.count(Outcome::Pruned), 0, "{}", report.summary());
    assert_eq!(report.count(Outcome::Held), 2, "{}", report.summary());
    assert!(env
        .inventory()
        .await
        .contains(&("ConfigMap".to_string(), old_cm.clone())));

    // Once the new version runs, one apply prunes the old version and its templates.
    env.api("plugsync.dev/v1alpha1", "Plugin")
        .patch_status(
            &new_id,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Running"}})),
        )
        .await
        .expect("running");
    let report = env
        .apply(&after, &after.cluster_objects(), ApplyOptions::default())
        .await;
    assert_eq!(report.count(Outcome::Pruned), 2, "{}", report.summary());
    assert_eq!(report.count(Outcome::Held), 0, "{}", report.summary());
    assert!(env
        .get("plugsync.dev/v1alpha1", "Plugin", &old_id)
        .await
        .is_none());
    assert!(env.get("v1", "ConfigMap", &old_cm).await.is_none());
    assert!(!env
        .inventory()
        .await
        .contains(&("ConfigMap".to_string(), old_cm)));
    assert!(env.get("v1", "ConfigMap", &new_cm).await.is_some());
}

#[tokio::test]
async fn a_templates_config_map_is_kept_while_a_retry_of_the_controller_names_it() {
    let env = Env::new("apply-templates-retry", 1).await;
    write_deployment_template(env.dir.path(), 5);
    let before = env.render().await;
    let old_cm = templates_config_map(&before);
    env.apply(&before, &before.cluster_objects(), ApplyOptions::default())
        .await;
    let first = env
        .get(
            "plugsync.dev/v1alpha1",
            "Plugin",
            &before.rendered[0].plugin_id,
        )
        .await
        .expect("first attempt");

    // A retry, as the controller creates one: the first attempt's labels and spec (its
    // templates too), attempt 2, owned by the first attempt, under the controller's manager.
    let retry_name = plugsync_core::render::resource_name(&before.rendered[0].plugin_id, 2);
    let mut spec = first["spec"].clone();
    spec["attempt"] = json!(2);
    let retry = json!({
        "apiVersion": "plugsync.dev/v1alpha1",
        "kind": "Plugin",
        "metadata": {
            "name": retry_name,
            "labels": first["metadata"]["labels"],
            "ownerReferences": [{
                "apiVersion": "plugsync.dev/v1alpha1",
                "kind": "Plugin",
                "name": name(&first),
                "uid": first["metadata"]["uid"],
                "controller": true,
            }],
        },
        "spec": spec,
    });
    env.api("plugsync.dev/v1alpha1", "Plugin")
        .patch(
            &retry_name,
            &PatchParams::apply("plugsync-controller"),
            &Patch::Apply(&retry),
        )
        .await
        .expect("the retry");

    // Only the templates change: the first attempt names the new ConfigMap, the retry still
    // the old one, which stays.
    write_deployment_template(env.dir.path(), 6);
    let after = env.render().await;
    let new_cm = templates_config_map(&after);
    assert_ne!(old_cm, new_cm);
    let report = env
        .apply(&after, &after.cluster_objects(), ApplyOptions::default())
        .await;
    let first = env
        .get("plugsync.dev/v1alpha1", "Plugin", &name(&first))
        .await
        .expect("first attempt");
    assert_eq!(first["spec"]["templates"], new_cm.as_str());
    assert!(
        env.get("v1", "ConfigMap", &old_cm).await.is_some(),
        "the templates a retry names are not pruned: {}",
        report.summary()
    );
    assert_eq!(report.count(Outcome::Held), 1, "{}", report.summary());

    // The retry gone (superseded, or removed by the history limit), the next apply prunes them.
    env.api("plugsync.dev/v1alpha1", "Plugin")
        .delete(&retry_name, &Default::default())
        .await
        .expect("delete the retry");
    let report = env
        .apply(&after, &after.cluster_objects(), ApplyOptions::default())
        .await;
    assert_eq!(report.count(Outcome::Pruned), 1, "{}", report.summary());
    assert!(env.get("v1", "ConfigMap", &old_cm).await.is_none());
    assert!(env.get("v1", "ConfigMap", &new_cm).await.is_some());
}
