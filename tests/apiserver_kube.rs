//! The API server double driven by the real `kube` client: CRUD, server-side apply, dry-run,
//! the status subresource, watches (incl. 410 recovery), garbage collection and faults.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Client, CustomResourceExt};
use plugsync::crd::Plugin;
use plugsync::testkit::apiserver::{ApiServer, Match, Options, Verb};
use serde_json::{json, Value};

async fn json_of(r: reqwest::Response) -> Value {
    serde_json::from_slice(&r.bytes().await.unwrap()).unwrap()
}

type Events =
    futures::stream::BoxStream<'static, Result<watcher::Event<ConfigMap>, watcher::Error>>;

async fn next_event(s: &mut Events) -> watcher::Event<ConfigMap> {
    tokio::time::timeout(Duration::from_secs(5), s.try_next())
        .await
        .expect("watcher event in time")
        .expect("no watcher error")
        .expect("stream not ended")
}

fn api_err(e: kube::Error) -> Box<kube::core::Status> {
    match e {
        kube::Error::Api(s) => s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

async fn namespace(client: &Client, name: &str) {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
}

fn deployment(name: &str, replicas: i64) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "main", "image": "nginx:1.25"}]}
            }
        }
    })
}

fn plugin(name: &str) -> Value {
    json!({
        "apiVersion": "plugsync.dev/v1alpha1",
        "kind": "Plugin",
        "metadata": {"name": name},
        "spec": {
            "pluginSet": "team-a", "name": "langgenius/hello", "version": "0.0.1",
            "uniqueIdentifier": "langgenius/hello:0.0.1@abc", "pluginId": "0123456789abcdef0123456789abcdef",
            "attempt": 1,
            "package": {"source": "file:hello.difypkg", "sha256": "aa", "checksum": "bb"},
            "runner": {"language": "python", "version": "3.12", "entrypoint": "main"},
            "build": {"contextSha256": "cc", "inputsHash": "dd", "image": "registry.example.com/hello:0.0.1"}
        }
    })
}

async fn install_plugin_crd(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &Plugin::crd())
        .await
        .unwrap();
}

#[tokio::test]
async fn typed_deployment_crud_and_errors() {
    let server = ApiServer::start().await.unwrap();
    let client = server.client();
    namespace(&client, "dify").await;
    let api: Api<Deployment> = Api::namespaced(client.clone(), "dify");

    let d: Deployment = serde_json::from_value(deployment("web", 1)).unwrap();
    let created = api.create(&PostParams::default(), &d).await.unwrap();
    let meta = &created.metadata;
    assert_eq!(meta.generation, Some(1));
    assert!(meta.uid.as_deref().is_some_and(|u| u.len() == 36));
    assert!(meta.creation_timestamp.is_some());
    let rv1 = meta.resource_version.clone().unwrap();

    let again = api.create(&PostParams::default(), &d).await.unwrap_err();
    let s = api_err(again);
    assert_eq!((s.code, s.reason.as_str()), (409, "AlreadyExists"));
    assert_eq!(s.message, "deployments.apps \"web\" already exists");

    let other: Deployment = serde_json::from_value(deployment("api", 1)).unwrap();
    api.create(&PostParams::default(), &other).await.unwrap();
    let listed = api
        .list(&ListParams::default().labels("app=web"))
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 1);
    assert_eq!(listed.items[0].metadata.name.as_deref(), Some("web"));
    let set = api
        .list(&ListParams::default().labels("app in (web,api),!nope"))
        .await
        .unwrap();
    assert_eq!(set.items.len(), 2);
    let all: Api<Deployment> = Api::all(client.clone());
    assert_eq!(
        all.list(&ListParams::default()).await.unwrap().items.len(),
        2
    );

    // Replace with the current RV works and bumps generation; with a stale one it conflicts.
    let mut current = api.get("web").await.unwrap();
    current.spec.as_mut().unwrap().replicas = Some(3);
    let replaced = api
        .replace("web", &PostParams::default(), &current)
        .await
        .unwrap();
    assert_eq!(replaced.metadata.generation, Some(2));
    assert_ne!(
        replaced.metadata.resource_version.as_deref(),
        Some(rv1.as_str())
    );
    let s = api_err(
        api.replace("web", &PostParams::default(), &current)
            .await
            .unwrap_err(),
    );
    assert_eq!((s.code, s.reason.as_str()), (409, "Conflict"));
    assert_eq!(
        s.message,
        "Operation cannot be fulfilled on deployments.apps \"web\": the object has been modified; please apply your changes to the latest version and try again"
    );

    api.delete("web", &DeleteParams::default()).await.unwrap();
    let s = api_err(api.get("web").await.unwrap_err());
    assert_eq!((s.code, s.reason.as_str()), (404, "NotFound"));
    assert_eq!(s.message, "deployments.apps \"web\" not found");
    let s = api_err(
        api.delete("web", &DeleteParams::default())
            .await
            .unwrap_err(),
    );
    assert_eq!(s.code, 404);

    // Creating in a namespace that does not exist.
    let missing: Api<Deployment> = Api::namespaced(client.clone(), "nope");
    let s = api_err(
        missing
            .create(&PostParams::default(), &d)
            .await
            .unwrap_err(),
    );
    assert_eq!((s.code, s.reason.as_str()), (404, "NotFound"));
    assert_eq!(s.message, "namespaces \"nope\" not found");
    server.shutdown().await;
}

#[tokio::test]
async fn server_side_apply_dry_run_and_no_op() {
    let server = ApiServer::start().await.unwrap();
    let client = server.client();
    namespace(&client, "dify").await;
    let api: Api<Deployment> = Api::namespaced(client.clone(), "dify");
    let pp = PatchParams::apply("plugsync");

    let dry = api
        .patch(
            "web",
            &pp.clone().dry_run(),
            &Patch::Apply(deployment("web", 2)),
        )
        .await
        .unwrap();
    assert_eq!(dry.spec.unwrap().replicas, Some(2));
    assert!(server
        .store()
        .get("apps/v1", "Deployment", Some("dify"), "web")
        .is_none());
    assert_eq!(server.stats().dry_run.apply, 1);

    let applied = api
        .patch("web", &pp, &Patch::Apply(deployment("web", 2)))
        .await
        .unwrap();
    let rv = applied.metadata.resource_version.clone();
    let mf = applied.metadata.managed_fields.clone().unwrap();
    assert_eq!(mf[0].manager.as_deref(), Some("plugsync"));
    assert_eq!(mf[0].operation.as_deref(), Some("Apply"));

    server.reset_stats();
    let again = api
        .patch("web", &pp, &Patch::Apply(deployment("web", 2)))
        .await
        .unwrap();
    assert_eq!(
        again.metadata.resource_version, rv,
        "a no-op apply must not bump resourceVersion"
    );
    assert_eq!(again.metadata.managed_fields.unwrap(), mf);
    let stats = server.stats();
    assert_eq!((stats.real.apply, stats.writes, stats.mutations), (1, 1, 0));

    // A dry-run change is reported but not persisted.
    let dry = api
        .patch(
            "web",
            &pp.clone().dry_run(),
            &Patch::Apply(deployment("web", 5)),
        )
        .await
        .unwrap();
    assert_eq!(dry.spec.unwrap().replicas, Some(5));
    assert_eq!(
        api.get("web").await.unwrap().spec.unwrap().replicas,
        Some(2)
    );
    assert_eq!(server.stats().mutations, 0);

    // A change bumps generation; a conflicting second manager gets 409 unless forced.
    let changed = api
        .patch("web", &pp, &Patch::Apply(deployment("web", 3)))
        .await
        .unwrap();
    assert_eq!(changed.metadata.generation, Some(2));
    let other = PatchParams::apply("other");
    let s = api_err(
        api.patch(
            "web",
            &other,
            &Patch::Apply(json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web"}, "spec": {"replicas": 4}})),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(s.code, 409);
    assert!(s.message.contains("conflict"), "{}", s.message);
    let forced = api
        .patch(
            "web",
            &other.force(),
            &Patch::Apply(json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web"}, "spec": {"replicas": 4}})),
        )
        .await
        .unwrap();
    assert_eq!(forced.spec.unwrap().replicas, Some(4));

    // Merge patch with a label, no-op merge patch.
    let mp = PatchParams::default();
    let p1 = api
        .patch(
            "web",
            &mp,
            &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})),
        )
        .await
        .unwrap();
    let p2 = api
        .patch(
            "web",
            &mp,
            &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})),
        )
        .await
        .unwrap();
    assert_eq!(p1.metadata.resource_version, p2.metadata.resource_version);
    assert_eq!(
        p1.metadata.generation, p2.metadata.generation,
        "labels do not bump generation"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn apply_of_100_objects_is_fast() {
    let server = ApiServer::start().await.unwrap();
    let client = server.client();
    namespace(&client, "dify").await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "dify");
    let pp = PatchParams::apply("plugsync");
    let started = Instant::now();
    for round in 0..2 {
        for i in 0..100 {
            let name = format!("cm-{i}");
            let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"i": i.to_string()}});
            api.patch(&name, &pp, &Patch::Apply(cm)).await.unwrap();
        }
        if round == 0 {
            server.reset_stats();
        }
    }
    let stats = server.stats();
    assert_eq!((stats.real.apply, stats.mutations), (100, 0));
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    server.shutdown().await;
}

#[tokio::test]
async fn status_subresource_for_custom_resources() {
    let server = ApiServer::start().await.unwrap();
    let client = server.client();
    namespace(&client, "dify").await;
    install_plugin_crd(&client).await;
    let api: Api<Plugin> = Api::namespaced(client.clone(), "dify");
    let mut with_status = plugin("hello");
    with_status["status"] = json!({"phase": "Running"});
    let created = api
        .patch(
            "hello",
            &PatchParams::apply("plugsync"),
            &Patch::Apply(with_status),
        )
        .await
        .unwrap();
    assert!(
        created.status.is_none(),
        "the main resource ignores .status"
    );

    let st = api
        .patch_status(
            "hello",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"status": {"phase": "Running", "endpoint": "http://svc-x.dify:8080"}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(
        st.metadata.generation, created.metadata.generation,
        "status does not bump generation"
    );
    assert_ne!(
        st.metadata.resource_version,
        created.metadata.resource_version
    );
    assert_eq!(
        st.status.as_ref().unwrap().endpoint.as_deref(),
        Some("http://svc-x.dify:8080")
    );

    // Writes to /status cannot change the spec.
    let st2 = api
        .patch_status(
            "hello",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"attempt": 9}})),
        )
        .await
        .unwrap();
    assert_eq!(st2.spec.attempt, 1);
    assert_eq!(
        st2.metadata.resource_version, st.metadata.resource_version,
        "no-op status patch"
    );

    // Status apply with its own manager.
    let applied = api
        .patch_status(
            "hello",
            &PatchParams::apply("plugsync-status").force(),
            &Patch::Apply(
                json!({"apiVersion": "plugsync.dev/v1alpha1", "kind": "Plugin",
                "metadata": {"name": "hello"}, "status": {"phase": "Failed"}}),
            ),
        )
        .await
        .unwrap();
    let mf = applied.metadata.managed_fields.unwrap();
    assert!(mf
        .iter()
        .any(|e| e.manager.as_deref() == Some("plugsync-status")
            && e.subresource.as_deref() == Some("status")));

    // Deleting the CRD stops serving the kind and removes its objects.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.delete("plugins.plugsync.dev", &DeleteParams::default())
        .await
        .unwrap();
    let s = api_err(api.get("hello").await.unwrap_err());
    assert_eq!(s.code, 404);
    assert!(server
        .store()
        .list("plugsync.dev/v1alpha1", "Plugin", None)
        .is_empty());
    server.shutdown().await;
}

/// Folds watcher events into the set of names it believes exist.
#[derive(Default)]
struct Mirror {
    names: BTreeSet<String>,
    buffer: BTreeSet<String>,
    inits: usize,
    log: Vec<String>,
}

impl Mirror {
    fn apply(&mut self, ev: watcher::Event<ConfigMap>) {
        let name = |cm: &ConfigMap| cm.metadata.name.clone().unwrap_or_default();
        match ev {
            watcher::Event::Init => {
                self.inits += 1;
                self.buffer.clear();
                self.log.push("Init".into());
            }
            watcher::Event::InitApply(cm) => {
                self.buffer.insert(name(&cm));
                self.log.push(format!("InitApply {}", name(&cm)));
            }
            watcher::Event::InitDone => {
                self.names = std::mem::take(&mut self.buffer);
                self.log.push("InitDone".into());
            }
            watcher::Event::Apply(cm) => {
                self.names.insert(name(&cm));
                self.log.push(format!("Apply {}", name(&cm)));
            }
            watcher::Event::Delete(cm) => {
                self.names.remove(&name(&cm));
                self.log.push(format!("Delete {}", name(&cm)));
            }
        }
    }
}

async fn cm(api: &Api<ConfigMap>, name: &str) {
    let c: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": name}, "data": {"k": "v"}})).unwrap();
    api.create(&PostParams::default(), &c).await.unwrap();
}

#[tokio::test]
async fn watcher_sees_init_then_changes() {
    let server = ApiServer::start().await.unwrap();
    let client = server.client();
    namespace(&client, "dify").await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "dify");
    cm(&api, "before").await;
    let mut stream = watcher(api.clone(), watcher::Config::default().labels("")).boxed();
    let mut m = Mirror::default();
    for _ in 0..3 {
        m.apply(next_event(&mut stream).await);
    }
    assert_eq!(m.log, vec!["Init", "InitApply before", "InitDone"]);
    cm(&api, "after").await;
    m.apply(next_event(&mut stream).await);
    api.delete("before", &DeleteParams::default())
        .await
        .unwrap();
    m.apply(next_event(&mut stream).await);
    assert_eq!(m.log[3..], ["Apply after", "Delete before"]);
    assert_eq!(m.names, BTreeSet::from(["after".to_string()]));
    server.shutdown().await;
}

#[tokio::test]
async fn watcher_recovers_from_gone_by_relisting() {
    let server = ApiServer::start_with(Options {
        history: 5,
        ..Options::default()
    })
    .await
    .unwrap();
    let client = server.client();
    namespace(&client, "dify").await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "dify");
    cm(&api, "a").await;
    let mut stream = watcher(api.clone(), watcher::Config::default()).boxed();
    let mut m = Mirror::default();
    for _ in 0..3 {
        m.apply(stream.try_next().await.unwrap().unwrap());
    }
    assert_eq!(m.inits, 1);

    // Hold the re-watch back while more changes than the history holds happen.
    server
        .faults()
        .delay_next_matching(1, Duration::from_millis(800), Match::verb(Verb::Watch));
    server.faults().drop_watches();
    let writer = {
        let api = api.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            for i in 0..20 {
                cm(&api, &format!("n{i}")).await;
            }
            api.delete("a", &DeleteParams::default()).await.unwrap();
        })
    };
    let want: BTreeSet<String> = (0..20).map(|i| format!("n{i}")).collect();
    let deadline = Instant::now() + Duration::from_secs(15);
    while m.names != want || m.inits < 2 {
        assert!(
            Instant::now() < deadline,
            "watcher did not converge: {:?}",
            m.log
        );
        match tokio::time::timeout(Duration::from_secs(5), stream.next()).await {
            Ok(Some(Ok(ev))) => m.apply(ev),
            Ok(Some(Err(_))) => {} // the 410 surfaces as an error; the watcher then re-lists
            Ok(None) => panic!("watcher ended"),
            Err(_) => panic!("watcher stalled: {:?}", m.log),
        }
    }
    writer.await.unwrap();
    assert!(m.inits >= 2, "expected a re-list after 410: {:?}", m.log);
    assert!(server.stats().real.list >= 2);
    server.shutdown().await;
}

#[tokio::test]
async fn fail_watch_with_gone_forces_a_relist() {
    let server = ApiServer::start().await.unwrap();
    let client = server.client();
    namespace(&client, "dify").await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "dify");
    let mut stream = watcher(api.clone(), watcher::Config::default()).boxed();
    let mut m = Mirror::default();
    m.apply(stream.try_next().await.unwrap().unwrap()); // Init
    m.apply(stream.try_next().await.unwrap().unwrap()); // InitDone
                                                        // Drive the watcher until its watch request is open, then fail it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.stats().real.watch == 0 {
        assert!(Instant::now() < deadline);
        let _ = tokio::time::timeout(Duration::from_millis(50), stream.next()).await;
    }
    let _ = tokio::time::timeout(Duration::from_millis(100), stream.next()).await;
    server.faults().fail_watch_with_gone();
    let deadline = Instant::now() + Duration::from_secs(10);
    while m.inits < 2 {
        assert!(Instant::now() < deadline, "{:?}", m.log);
        if let Ok(Some(Ok(ev))) = tokio::time::timeout(Duration::from_secs(5), stream.next()).await
        {
            m.apply(ev);
        }
    }
    server.shutdown().await;
}

#[tokio::test]
async fn owner_references_are_garbage_collected() {
    let server = ApiServer::start().await.unwrap();
    let client = server.client();
    namespace(&client, "dify").await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "dify");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "dify");
    let dependent = |name: &str, owner: &ConfigMap| {
        json!({"metadata": {"name": name, "ownerReferences": [{
            "apiVersion": "v1", "kind": "ConfigMap", "name": owner.metadata.name,
            "uid": owner.metadata.uid}]}})
    };
    let mk_owner =
        |n: &str| serde_json::from_value::<ConfigMap>(json!({"metadata": {"name": n}})).unwrap();

    // Background: dependents go with the owner.
    let owner = cms
        .create(&PostParams::default(), &mk_owner("owner"))
        .await
        .unwrap();
    let s: Secret = serde_json::from_value(dependent("dep-secret", &owner)).unwrap();
    secrets.create(&PostParams::default(), &s).await.unwrap();
    let c: ConfigMap = serde_json::from_value(dependent("dep-cm", &owner)).unwrap();
    cms.create(&PostParams::default(), &c).await.unwrap();
    cms.delete("owner", &DeleteParams::background())
        .await
        .unwrap();
    assert_eq!(
        api_err(secrets.get("dep-secret").await.unwrap_err()).code,
        404
    );
    assert_eq!(api_err(cms.get("dep-cm").await.unwrap_err()).code, 404);

    // Orphan: dependents stay, without the reference.
    let owner = cms
        .create(&PostParams::default(), &mk_owner("owner2"))
        .await
        .unwrap();
    let c: ConfigMap = serde_json::from_value(dependent("kept", &owner)).unwrap();
    cms.create(&PostParams::default(), &c).await.unwrap();
    cms.delete("owner2", &DeleteParams::orphan()).await.unwrap();
    let kept = cms.get("kept").await.unwrap();
    assert!(kept
        .metadata
        .owner_references
        .unwrap_or_default()
        .is_empty());

    // Foreground: the owner waits for a dependent held by a finalizer.
    let owner = cms
        .create(&PostParams::default(), &mk_owner("owner3"))
        .await
        .unwrap();
    let mut d = dependent("slow", &owner);
    d["metadata"]["finalizers"] = json!(["example.com/hold"]);
    let c: ConfigMap = serde_json::from_value(d).unwrap();
    cms.create(&PostParams::default(), &c).await.unwrap();
    cms.delete("owner3", &DeleteParams::foreground())
        .await
        .unwrap();
    let waiting = cms.get("owner3").await.unwrap();
    assert!(waiting.metadata.deletion_timestamp.is_some());
    assert_eq!(
        waiting.metadata.finalizers.unwrap(),
        vec!["foregroundDeletion".to_string()]
    );
    assert!(cms
        .get("slow")
        .await
        .unwrap()
        .metadata
        .deletion_timestamp
        .is_some());
    cms.patch(
        "slow",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert_eq!(api_err(cms.get("slow").await.unwrap_err()).code, 404);
    assert_eq!(api_err(cms.get("owner3").await.unwrap_err()).code, 404);

    // Deleting the namespace deletes its content.
    Api::<Namespace>::all(client.clone())
        .delete("dify", &DeleteParams::default())
        .await
        .unwrap();
    assert!(server
        .store()
        .list("v1", "ConfigMap", Some("dify"))
        .is_empty());
    assert!(server
        .store()
        .get("v1", "Namespace", None, "dify")
        .is_none());
    server.shutdown().await;
}

#[tokio::test]
async fn injected_faults_surface_as_real_statuses() {
    let server = ApiServer::start().await.unwrap();
    namespace(&server.client(), "dify").await;
    let mut config = server.config();
    config.default_retry = false;
    let plain = Client::try_from(config).unwrap();
    let api: Api<ConfigMap> = Api::namespaced(plain, "dify");
    cm(&api, "x").await;

    server.faults().fail_next(2, 503);
    let s = api_err(api.get("x").await.unwrap_err());
    assert_eq!((s.code, s.reason.as_str()), (503, "ServiceUnavailable"));
    assert_eq!(api_err(api.get("x").await.unwrap_err()).code, 503);
    assert!(api.get("x").await.is_ok());

    // kube's default client retries 503 by itself.
    server.reset_stats();
    server.faults().fail_next(2, 503);
    let retrying: Api<ConfigMap> = Api::namespaced(server.client(), "dify");
    assert!(retrying.get("x").await.is_ok());
    let stats = server.stats();
    assert_eq!((stats.real.get, stats.injected_failures), (3, 2));

    server.faults().fail_next(1, 429);
    let s = api_err(api.get("x").await.unwrap_err());
    assert_eq!((s.code, s.reason.as_str()), (429, "TooManyRequests"));
    server.faults().fail_next(1, 429);
    let resp = reqwest::get(format!(
        "{}/api/v1/namespaces/dify/configmaps/x",
        server.url()
    ))
    .await
    .unwrap();
    assert_eq!(resp.status().as_u16(), 429);
    assert_eq!(resp.headers()["retry-after"], "1");
    let body = json_of(resp).await;
    assert_eq!(
        (body["kind"].as_str(), body["code"].as_u64()),
        (Some("Status"), Some(429))
    );

    // Only matching requests fail.
    server
        .faults()
        .fail_next_matching(1, 500, Match::verb(Verb::List));
    assert!(api.get("x").await.is_ok());
    let s = api_err(api.list(&ListParams::default()).await.unwrap_err());
    assert_eq!((s.code, s.reason.as_str()), (500, "InternalError"));
    server
        .faults()
        .fail_next_matching(1, 409, Match::path("/configmaps/x"));
    assert_eq!(api_err(api.get("x").await.unwrap_err()).code, 409);

    // Delays hold the request back.
    server.faults().delay_next(1, Duration::from_millis(300));
    let t = Instant::now();
    api.get("x").await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(300));
    server.shutdown().await;
}

#[tokio::test]
async fn admin_surface_scripts_faults_and_reads_stats() {
    let server = ApiServer::start().await.unwrap();
    let http = reqwest::Client::new();
    let url = server.url();
    let r = http
        .post(format!("{url}/_double/faults"))
        .body(r#"[{"action":"fail_next","count":1,"code":503,"verb":"get"}]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = http
        .get(format!("{url}/api/v1/namespaces/default"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    let r = http
        .get(format!("{url}/api/v1/namespaces/default"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let stats = json_of(
        http.get(format!("{url}/_double/stats"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(stats["real"]["get"], 2);
    assert_eq!(stats["injected_failures"], 1);
    http.post(format!("{url}/_double/reset-stats"))
        .send()
        .await
        .unwrap();
    let stats = json_of(
        http.get(format!("{url}/_double/stats"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(stats["real"]["get"], 0);
    let bad = http
        .post(format!("{url}/_double/faults"))
        .body("{nope")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 400);

    // Malformed bodies are 400 Status, never a crash.
    for body in ["{", "[1,2]", "kind: [", ""] {
        let r = http
            .post(format!("{url}/api/v1/namespaces/default/configmaps"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400, "{body:?}");
        let s = json_of(r).await;
        assert_eq!(s["kind"], "Status");
    }
    let r = http
        .patch(format!("{url}/api/v1/namespaces/default"))
        .header("content-type", "application/apply-patch+yaml")
        .body("apiVersion: v1\nkind: Namespace\nmetadata: {name: default}\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400, "apply needs a fieldManager");
    let r = http
        .patch(format!("{url}/api/v1/namespaces/default"))
        .header("content-type", "application/json-patch+json")
        .body(r#"[{"op":"test","path":"/metadata/name","value":"x"}]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 422);
    server.shutdown().await;
}
