//! Apply against the API server double: create, update, prune, idempotency, conflicts,
//! faults mid-apply and interrupted runs that must converge.

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams};
use kube::CustomResourceExt;
use plugsync::apply::{Applier, ApplyOptions, Outcome, RetryPolicy};
use plugsync::crd::Plugin;
use plugsync::model::PluginSetResource;
use plugsync::pipeline::{desired_state, DesiredState};
use plugsync::render::RenderSettings;
use plugsync::resolve::cache::Cache;
use plugsync::resolve::source::{FetchSettings, SourceRegistry};
use plugsync::resolve::Resolver;
use plugsync::source::WorkTree;
use plugsync::testkit::apiserver::{ApiServer, Match, Verb};
use serde_json::{json, Value};

const NS: &str = "dify";

fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        attempts: 4,
        base: Duration::from_millis(10),
        cap: Duration::from_millis(50),
    }
}

async fn render(dir: &Path, cache: &Cache) -> DesiredState {
    let resolver = Resolver::new(
        SourceRegistry::discover(
            FetchSettings::default(),
            url::Url::parse("https://marketplace.dify.ai").expect("url"),
        ),
        cache.clone(),
        64 << 20,
    );
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

/// A synthetic repository of `n` plugins in namespace `dify`, rendered.
async fn synthetic(n: usize) -> (tempfile::TempDir, Cache, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("dir");
    let cache_dir = tempfile::tempdir().expect("cache");
    let cache = Cache::open(cache_dir.path()).expect("cache");
    plugsync::synth::generate_repo(dir.path(), n, &cache).expect("generate");
    (dir, cache, cache_dir)
}

async fn server_with_namespace() -> ApiServer {
    let server = ApiServer::start().await.expect("double starts");
    server
        .store()
        .put(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}))
        .expect("namespace");
    server
}

/// A double with the namespace, an applier with fast retries, and the plugsync CRDs.
async fn cluster() -> (ApiServer, Applier) {
    let server = server_with_namespace().await;
    let applier = Applier::new(server.client()).with_retry(fast_retry());
    install_crds(&applier).await;
    (server, applier)
}

async fn install_crds(applier: &Applier) {
    applier
        .ensure_crds(
            &[Plugin::crd(), PluginSetResource::crd()],
            ApplyOptions::default(),
        )
        .await
        .expect("CRDs installed");
}

fn labelled(server: &ApiServer, api_version: &str, kind: &str) -> Vec<Value> {
    server
        .store()
        .list(api_version, kind, Some(NS))
        .into_iter()
        .filter(|o| {
            o.pointer("/metadata/labels/plugsync.dev~1pluginset")
                .is_some()
        })
        .collect()
}

fn count_objects(server: &ApiServer) -> usize {
    [
        ("plugsync.dev/v1alpha1", "Plugin"),
        ("batch/v1", "Job"),
        ("apps/v1", "Deployment"),
        ("v1", "Service"),
    ]
    .iter()
    .map(|(v, k)| labelled(server, v, k).len())
    .sum()
}

fn set_ns(state: &DesiredState) -> plugsync::model::PluginSet {
    let mut set = state.set.spec().clone();
    set.metadata.namespace = NS.to_string();
    set
}

#[tokio::test]
async fn apply_creates_everything_and_records_the_inventory() {
    let (dir, cache, _c) = synthetic(3).await;
    let state = render(dir.path(), &cache).await;
    let (server, applier) = cluster().await;

    let report = applier
        .apply_set(&set_ns(&state), &state.objects(), ApplyOptions::default())
        .await
        .expect("applies");
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(
        report.count(Outcome::Created),
        3 * 4 + 1,
        "{}",
        report.summary()
    );
    assert_eq!(count_objects(&server), 12);

    let set = server
        .store()
        .get("plugsync.dev/v1alpha1", "PluginSet", Some(NS), "synth")
        .expect("PluginSet applied");
    let inventory = set["status"]["inventory"].as_array().expect("inventory");
    assert_eq!(inventory.len(), 12);
    let deployment = labelled(&server, "apps/v1", "Deployment").remove(0);
    let managers: Vec<&str> = deployment["metadata"]["managedFields"]
        .as_array()
        .expect("managedFields")
        .iter()
        .filter_map(|m| m["manager"].as_str())
        .collect();
    assert_eq!(managers, vec!["plugsync"]);
    assert!(deployment
        .pointer("/metadata/annotations/plugsync.dev~1applied-hash")
        .is_some());
}

/// The second apply of an unchanged set: no writes at all, and reads that do not depend on
/// the number of plugins.
async fn second_apply_requests(n: usize) -> (u64, u64, u64) {
    let (dir, cache, _c) = synthetic(n).await;
    let state = render(dir.path(), &cache).await;
    let (server, applier) = cluster().await;
    applier
        .apply_set(&set_ns(&state), &state.objects(), ApplyOptions::default())
        .await
        .expect("first apply");
    let rv_before = server.store().resource_version();
    server.reset_stats();
    let report = applier
        .apply_set(&set_ns(&state), &state.objects(), ApplyOptions::default())
        .await
        .expect("second apply");
    let stats = server.stats();
    assert_eq!(
        report.count(Outcome::Unchanged),
        n * 4 + 1,
        "{}",
        report.summary()
    );
    assert_eq!(
        server.store().resource_version(),
        rv_before,
        "no resourceVersion bumped"
    );
    let reads = stats.real.get + stats.real.list + stats.real.other;
    (stats.writes, reads, stats.dry_run.writes())
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
    let (dir, cache, _c) = synthetic(3).await;
    let (server, applier) = cluster().await;
    let state = render(dir.path(), &cache).await;
    applier
        .apply_set(&set_ns(&state), &state.objects(), ApplyOptions::default())
        .await
        .expect("first apply");

    plugsync::synth::change_one(
        dir.path(),
        &cache,
        plugsync::synth::SynthChange::Reconfigure,
    )
    .expect("change");
    let state = render(dir.path(), &cache).await;
    server.reset_stats();
    let report = applier
        .apply_set(&set_ns(&state), &state.objects(), ApplyOptions::default())
        .await
        .expect("second apply");
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
    assert_eq!(server.stats().writes, 3);
}

#[tokio::test]
async fn prune_removes_undeclared_objects_by_label_and_by_inventory_but_nothing_else() {
    let (dir, cache, _c) = synthetic(3).await;
    let (server, applier) = cluster().await;
    let state = render(dir.path(), &cache).await;
    applier
        .apply_set(&set_ns(&state), &state.objects(), ApplyOptions::default())
        .await
        .expect("first apply");

    // Someone else's Service in the same namespace, with a look-alike name: never touched.
    server
        .store()
        .put(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "svc-mine", "namespace": NS}, "spec": {"ports": [{"port": 80}]}}))
        .expect("foreign service");
    // One of plugsync's objects loses its ownership label: the inventory still knows it.
    let plugin_two = &state.rendered[2];
    let service_name = format!("svc-{}", plugin_two.plugin_id);
    let mut svc = server
        .store()
        .get("v1", "Service", Some(NS), &service_name)
        .expect("service");
    svc["metadata"]["labels"]
        .as_object_mut()
        .expect("labels")
        .remove("plugsync.dev/pluginset");
    server.store().put(svc).expect("relabel");

    // Declare only the first plugin.
    let keep: Vec<Value> = state.rendered[0].objects.clone();
    let report = applier
        .apply_set(&set_ns(&state), &keep, ApplyOptions::default())
        .await
        .expect("apply with prune");
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(report.count(Outcome::Pruned), 8, "{}", report.summary());
    assert_eq!(count_objects(&server), 4);
    assert!(
        server
            .store()
            .get("v1", "Service", Some(NS), &service_name)
            .is_none(),
        "pruned through the inventory"
    );
    assert!(
        server
            .store()
            .get("v1", "Service", Some(NS), "svc-mine")
            .is_some(),
        "foreign object kept"
    );
    let set = server
        .store()
        .get("plugsync.dev/v1alpha1", "PluginSet", Some(NS), "synth")
        .expect("set");
    assert_eq!(
        set["status"]["inventory"]
            .as_array()
            .expect("inventory")
            .len(),
        4
    );
}

#[tokio::test]
async fn a_field_owned_by_another_manager_is_a_reported_conflict() {
    let (dir, cache, _c) = synthetic(1).await;
    let (server, applier) = cluster().await;
    let state = render(dir.path(), &cache).await;
    applier
        .apply_set(&set_ns(&state), &state.objects(), ApplyOptions::default())
        .await
        .expect("first apply");

    // An operator scales the Deployment with their own field manager, taking the field.
    let name = state.rendered[0].resource_name.clone();
    let deployments: Api<Deployment> = Api::namespaced(server.client(), NS);
    let scale = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name}, "spec": {"replicas": 5}});
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
    let report = applier
        .apply_set(&set_ns(&state), &objects, ApplyOptions::default())
        .await
        .expect("apply runs");
    assert_eq!(report.failed.len(), 1, "{}", report.summary());
    let (key, why) = &report.failed[0];
    assert_eq!(key.kind, "Deployment");
    assert!(
        why.contains("operator") && why.contains(".spec.replicas"),
        "{why}"
    );
    let live = deployments.get(&name).await.expect("get");
    assert_eq!(
        live.spec.and_then(|s| s.replicas),
        Some(5),
        "not silently taken"
    );
}

#[tokio::test]
async fn transient_faults_are_retried() {
    let (dir, cache, _c) = synthetic(2).await;
    let (server, applier) = cluster().await;
    let state = render(dir.path(), &cache).await;
    server
        .faults()
        .fail_next_matching(2, 503, Match::verb(Verb::Apply));
    server
        .faults()
        .fail_next_matching(1, 429, Match::verb(Verb::List));
    let report = applier
        .apply_set(&set_ns(&state), &state.objects(), ApplyOptions::default())
        .await
        .expect("applies despite faults");
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(count_objects(&server), 8);
    assert_eq!(server.stats().injected_failures, 3);
}

#[tokio::test]
async fn a_run_that_fails_half_way_converges_on_the_next_run() {
    let (dir, cache, _c) = synthetic(3).await;
    let (server, applier) = cluster().await;
    let applier = applier.with_retry(RetryPolicy {
        attempts: 1,
        ..fast_retry()
    });
    let state = render(dir.path(), &cache).await;
    // Every Deployment write fails: Plugins, Jobs and Services land, Deployments do not.
    server.faults().fail_next_matching(
        1000,
        500,
        Match {
            verb: Some(Verb::Apply),
            path_contains: Some("/deployments/".to_string()),
        },
    );
    let report = applier
        .apply_set(&set_ns(&state), &state.objects(), ApplyOptions::default())
        .await
        .expect("runs");
    assert!(
        !report.failed.is_empty(),
        "the fault bit: {}",
        report.summary()
    );
    let partial = count_objects(&server);
    assert_eq!(partial, 9, "half-applied");
    // Everything that exists is in the inventory: nothing is orphaned.
    let set = server
        .store()
        .get("plugsync.dev/v1alpha1", "PluginSet", Some(NS), "synth")
        .expect("set");
    assert!(
        set["status"]["inventory"]
            .as_array()
            .expect("inventory")
            .len()
            >= partial
    );

    server.faults().clear();
    let report = applier
        .apply_set(&set_ns(&state), &state.objects(), ApplyOptions::default())
        .await
        .expect("re-run");
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(count_objects(&server), 12, "converged, no duplicates");
}

#[tokio::test]
async fn dry_run_persists_nothing() {
    let (dir, cache, _c) = synthetic(2).await;
    let (server, applier) = cluster().await;
    let state = render(dir.path(), &cache).await;
    server.reset_stats();
    let rv = server.store().resource_version();
    let report = applier
        .apply_set(
            &set_ns(&state),
            &state.objects(),
            ApplyOptions {
                dry_run: true,
                prune: true,
            },
        )
        .await
        .expect("dry run");
    assert_eq!(report.count(Outcome::Created), 2 * 4 + 1);
    assert_eq!(server.stats().writes, 0);
    assert_eq!(server.store().resource_version(), rv);
    assert_eq!(count_objects(&server), 0);
}

#[tokio::test]
async fn an_upgraded_plugin_keeps_its_old_version_until_the_new_one_runs() {
    let (dir, cache, _c) = synthetic(2).await;
    let (server, applier) = cluster().await;
    let plugins_of = |state: &DesiredState| -> Vec<Value> {
        state
            .objects()
            .into_iter()
            .filter(|o| o["kind"] == "Plugin")
            .collect()
    };
    let before = render(dir.path(), &cache).await;
    applier
        .apply_set(
            &set_ns(&before),
            &plugins_of(&before),
            ApplyOptions::default(),
        )
        .await
        .expect("first apply");
    let old_id = before.rendered[0].plugin_id.clone();

    plugsync::synth::change_one(dir.path(), &cache, plugsync::synth::SynthChange::Upgrade)
        .expect("upgrade plugin 0");
    let after = render(dir.path(), &cache).await;
    let new_id = after.rendered[0].plugin_id.clone();
    assert_ne!(old_id, new_id);

    // The new version exists but does not run yet: the old one is held, not pruned.
    let report = applier
        .apply_set(
            &set_ns(&after),
            &plugins_of(&after),
            ApplyOptions::default(),
        )
        .await
        .expect("apply the upgrade");
    assert_eq!(report.count(Outcome::Held), 1, "{}", report.summary());
    assert_eq!(report.count(Outcome::Pruned), 0);
    let plugin = |id: &str| {
        server
            .store()
            .get("plugsync.dev/v1alpha1", "Plugin", Some(NS), id)
    };
    assert!(plugin(&old_id).is_some() && plugin(&new_id).is_some());
    let set = server
        .store()
        .get("plugsync.dev/v1alpha1", "PluginSet", Some(NS), "synth")
        .expect("set");
    let inventory = set["status"]["inventory"].as_array().expect("inventory");
    assert!(
        inventory.iter().any(|e| e["name"] == old_id.as_str()),
        "still inventoried"
    );

    // Once the new version is Running, the next apply prunes the old one.
    let mut new_plugin = plugin(&new_id).expect("new");
    new_plugin["status"] = json!({"phase": "Running"});
    server.store().put(new_plugin).expect("running");
    let report = applier
        .apply_set(
            &set_ns(&after),
            &plugins_of(&after),
            ApplyOptions::default(),
        )
        .await
        .expect("apply again");
    assert_eq!(report.count(Outcome::Pruned), 1, "{}", report.summary());
    assert!(plugin(&old_id).is_none());

    // A plugin removed (not upgraded) is pruned at once.
    let only_second: Vec<Value> = plugins_of(&after)
        .into_iter()
        .filter(|o| o["metadata"]["name"] != new_id.as_str())
        .collect();
    let report = applier
        .apply_set(&set_ns(&after), &only_second, ApplyOptions::default())
        .await
        .expect("remove");
    assert_eq!(report.count(Outcome::Pruned), 1, "{}", report.summary());
    assert_eq!(report.count(Outcome::Held), 0);
}
