//! Recording built images and cleaning up failed attempts, as users run them: the real
//! `plugsync` binary against the real control plane, with the controller running in-process
//! and its build-context server on loopback, where the cluster's builder fetches contexts.
//!
//! - `plugsync lock --from-cluster` pins the digests the controller recorded (of images really
//!   pushed to the test registry), keyed by build inputs; the next render then runs them by
//!   digest and renders no build Job.
//! - `plugsync gc` removes failed attempts beyond `--keep`, never the latest.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use kube::api::ResourceExt as _;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use plugsync_core::render::RenderSettings;
use plugsync_core::resolve::cache::Cache;
use plugsync_kube::controller::{self, Context};
use serde_json::{json, Value};

#[path = "common/cluster.rs"]
mod cluster;
#[path = "common/fault_proxy.rs"]
mod fault_proxy;

#[path = "common/cli_env.rs"]
mod cli_env;

use cli_env::{name, Env, PLUGSYNC, SET};

const WAIT: Duration = Duration::from_secs(120);

impl Env {
    async fn run(&self, args: &[&str]) -> (bool, String) {
        let out = Env::output(self.plugsync(args)).await;
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    fn repo(&self) -> &str {
        self.repo.path().to_str().expect("utf-8 path")
    }

    /// Names of the objects of `kind` whose name starts with `prefix`, sorted.
    async fn names(&self, api_version: &str, kind: &str, prefix: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .list(api_version, kind)
            .await
            .iter()
            .map(|o| name(o).to_string())
            .filter(|n| n.starts_with(prefix))
            .collect();
        v.sort();
        v
    }
}

/// Waits, through a watch, until the objects of `api` satisfy `done`; returns them.
async fn until_all(
    api: Api<DynamicObject>,
    what: &str,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let stream = watcher(api, watcher::Config::default());
    let mut stream = std::pin::pin!(stream);
    // The objects by name, as the watch has them (a re-list replaces them).
    let mut objects: BTreeMap<String, Value> = BTreeMap::new();
    let mut listing: BTreeMap<String, Value> = BTreeMap::new();
    let found = &mut objects;
    let waited = tokio::time::timeout(WAIT, async {
        let objects = found;
        while let Some(event) = stream.next().await {
            let json = |o: &DynamicObject| serde_json::to_value(o).expect("json");
            match event.expect("watch") {
                watcher::Event::Init => listing.clear(),
                watcher::Event::InitApply(o) => {
                    listing.insert(o.name_any(), json(&o));
                    continue;
                }
                watcher::Event::InitDone => *objects = std::mem::take(&mut listing),
                watcher::Event::Apply(o) => {
                    objects.insert(o.name_any(), json(&o));
                }
                watcher::Event::Delete(o) => {
                    objects.remove(&o.name_any());
                }
            }
            let now: Vec<Value> = objects.values().cloned().collect();
            if done(&now) {
                return now;
            }
        }
        panic!("the watch ended waiting for {what}")
    })
    .await;
    waited.unwrap_or_else(|_| {
        panic!("timed out after {WAIT:?} waiting for {what}; last seen: {objects:#?}")
    })
}

#[tokio::test]
async fn lock_from_cluster_pins_built_digests_and_the_next_render_builds_nothing() {
    let env = Env::new("record-lock", 2).await;
    let (ok, out) = env.run(&["apply", "--repo", env.repo()]).await;
    assert!(ok, "{out}");

    // The registry credentials the build Jobs mount (the test registry needs none).
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(env.client().await, &env.ns);
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "image-repo-secret"},
                "type": "kubernetes.io/dockerconfigjson",
                "stringData": {".dockerconfigjson": r#"{"auths":{}}"#}
            }))
            .expect("secret"),
        )
        .await
        .expect("create secret");

    // The controller, and its build-context server where the builder can reach it.
    let cache = Cache::open(env.cache.path()).expect("cache");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut server_stop = stopped.clone();
    let router = plugsync_kube::server::router(cache.clone());
    let server = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = server_stop.wait_for(|s| *s).await;
            })
            .await
    });
    let ctx = Context::new(
        env.client().await,
        cache,
        RenderSettings {
            context_base_url: format!("http://{addr}"),
        },
    );
    let mut controller_stop = stopped;
    let controller = tokio::spawn(controller::run(Arc::new(ctx), env.ns.clone(), async move {
        let _ = controller_stop.wait_for(|s| *s).await;
    }));
    let plugins = until_all(
        env.api(PLUGSYNC, "Plugin").await,
        "both Plugins Running",
        |plugins| plugins.len() == 2 && plugins.iter().all(|p| p["status"]["phase"] == "Running"),
    )
    .await;
    let _ = stop.send(true);
    controller.await.expect("controller stops");
    server.await.expect("server task").expect("server");
    // Each build pushed a real image to the test registry: the digest is the registry's.
    for plugin in &plugins {
        let digest = plugin["status"]["imageDigest"].as_str().expect("digest");
        let image = plugin["spec"]["build"]["image"].as_str().expect("image");
        assert!(image.starts_with(env.c.registry()), "{image}");
        let (repository, tag) = image[env.c.registry().len() + 1..]
            .rsplit_once(':')
            .expect("tag");
        let served = reqwest::Client::new()
            .head(format!(
                "http://{}/v2/{repository}/manifests/{tag}",
                env.c.registry()
            ))
            .header(
                "accept",
                "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json",
            )
            .send()
            .await
            .expect("registry");
        assert_eq!(
            served
                .headers()
                .get("docker-content-digest")
                .and_then(|v| v.to_str().ok()),
            Some(digest),
            "{image}"
        );
    }

    let (ok, out) = env
        .run(&["lock", "--repo", env.repo(), "--from-cluster"])
        .await;
    assert!(ok, "{out}");
    let lock: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(env.repo.path().join("plugins.lock")).expect("lock"),
    )
    .expect("yaml");
    let images = lock["images"].as_array().expect("images pinned");
    assert_eq!(images.len(), 2, "{lock:#?}");
    for plugin in env.plugins().await {
        let pinned = images
            .iter()
            .find(|i| i["inputsHash"] == plugin["spec"]["build"]["inputsHash"])
            .unwrap_or_else(|| panic!("no image pinned for {}", plugin["metadata"]["name"]));
        assert_eq!(pinned["digest"], plugin["status"]["imageDigest"]);
        assert_eq!(pinned["image"], plugin["spec"]["build"]["image"]);
    }

    // The lock is still up to date for plugins.yaml: recorded images are not a change.
    let (ok, out) = env.run(&["lock", "--repo", env.repo(), "--locked"]).await;
    assert!(ok, "{out}");

    // The next render runs the recorded digests and renders no build Job.
    let (ok, rendered) = env.run(&["render", "--repo", env.repo()]).await;
    assert!(ok, "{rendered}");
    assert!(!rendered.contains("kind: Job"), "{rendered}");
    for image in images {
        let digest = image["digest"].as_str().expect("digest");
        assert!(rendered.contains(&format!("@{digest}")), "{rendered}");
    }

    // And the git loop hands the digest to the Plugin, so a fresh cluster reuses it.
    let (ok, out) = env.run(&["apply", "--repo", env.repo()]).await;
    assert!(ok, "{out}");
    let plugins = env.plugins().await;
    assert_eq!(plugins.len(), 2);
    for plugin in plugins {
        assert_eq!(
            plugin["spec"]["imageDigest"],
            plugin["status"]["imageDigest"]
        );
    }
}

/// Attempt `n` of a plugin `plugin_id` of the set (a Plugin as the controller creates retries).
fn attempt(plugin_id: &str, n: u32) -> Value {
    let name = if n == 1 {
        plugin_id.to_string()
    } else {
        format!("{plugin_id}--{n}")
    };
    json!({
        "apiVersion": PLUGSYNC,
        "kind": "Plugin",
        "metadata": {"name": name, "labels": {
            "plugsync.dev/pluginset": SET, "plugsync.dev/plugin-id": plugin_id}},
        "spec": {
            "pluginSet": SET, "name": "a/b", "version": "1.0.0",
            "uniqueIdentifier": "a/b:1.0.0@x", "pluginId": plugin_id, "attempt": n,
            "package": {"source": "path:b", "sha256": "0".repeat(64), "checksum": "1".repeat(64)},
            "runner": {"language": "python", "version": "3.12", "entrypoint": "main"},
            "build": {"contextSha256": "2".repeat(64), "inputsHash": "3".repeat(64),
                      "image": format!("r.local/b-{plugin_id}:1.0.0")},
            "runtime": {}
        }
    })
}

#[tokio::test]
async fn gc_removes_failed_attempts_but_keeps_the_latest() {
    let env = Env::new("record-gc", 1).await;
    let (ok, out) = env
        .run(&["apply", "--repo", env.repo(), "--no-prune"])
        .await;
    assert!(ok, "{out}");
    // Another plugin, stalled after three failed attempts (no controller runs here).
    let id = "f".repeat(32);
    let plugins = env.api(PLUGSYNC, "Plugin").await;
    let jobs = env.api("batch/v1", "Job").await;
    for n in 1..=3 {
        let plugin: DynamicObject = serde_json::from_value(attempt(&id, n)).expect("plugin");
        let created = plugins
            .create(&PostParams::default(), &plugin)
            .await
            .expect("create plugin");
        let plugin_name = created.metadata.name.clone().expect("name");
        plugins
            .patch_status(
                &plugin_name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"phase": "BuildFailed"}})),
            )
            .await
            .expect("status");
        // Its build Job, owned by its attempt as the controller creates it. Suspended: what
        // its pod would do is no matter here.
        let job: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": plugin_name, "ownerReferences": [{
                "apiVersion": PLUGSYNC, "kind": "Plugin", "controller": true,
                "name": plugin_name, "uid": created.metadata.uid}]},
            "spec": {"suspend": true, "template": {"spec": {
                "containers": [{"name": "build", "image": "kaniko"}],
                "restartPolicy": "Never"}}}
        }))
        .expect("job");
        jobs.create(&PostParams::default(), &job)
            .await
            .expect("create job");
    }

    let (ok, out) = env.run(&["gc", "--namespace", &env.ns, "--dry-run"]).await;
    assert!(ok, "{out}");
    let ns = &env.ns;
    assert!(
        out.contains(&format!("would remove Plugin {ns}/{id}--2 ")),
        "{out}"
    );
    assert!(
        out.contains(&format!("would remove Job {ns}/{id} ")),
        "{out}"
    );
    assert!(
        out.contains("dry run, nothing changed: 2 failed or superseded attempts to remove"),
        "{out}"
    );
    assert!(
        !out.contains("removed"),
        "a dry run says what it would do: {out}"
    );
    assert_eq!(
        env.names(PLUGSYNC, "Plugin", &id).await.len(),
        3,
        "dry run removes nothing"
    );
    assert_eq!(env.names("batch/v1", "Job", &id).await.len(), 3);

    let (ok, out) = env.run(&["gc", "--namespace", &env.ns]).await;
    assert!(ok, "{out}");
    assert!(
        out.contains("2 failed or superseded attempts removed"),
        "{out}"
    );
    assert_eq!(
        env.names(PLUGSYNC, "Plugin", &id).await,
        vec![id.clone(), format!("{id}--3")],
        "the first attempt stays (it owns the set's place), the latest holds the Stalled state"
    );
    // The removed attempt's Job goes with it through the garbage collector (background
    // propagation), a moment later on a real cluster.
    let remaining = until_all(jobs, "only the latest attempt's Job left", |jobs| {
        let mut names: Vec<&str> = jobs
            .iter()
            .map(name)
            .filter(|n| n.starts_with(&id))
            .collect();
        names.sort();
        names == [format!("{id}--3")]
    })
    .await;
    assert_eq!(remaining.len(), 1, "only the latest attempt's Job is left");
    // The healthy synthetic plugin is untouched.
    assert_eq!(env.plugins().await.len(), 3);

    let (ok, out) = env.run(&["gc", "--namespace", &env.ns]).await;
    assert!(ok, "{out}");
    assert!(
        out.contains("0 failed or superseded attempts removed"),
        "{out}"
    );
}

#[tokio::test]
async fn gc_removes_retries_a_running_first_attempt_superseded() {
    let env = Env::new("record-gc-superseded", 1).await;
    // A plugin whose attempt 1 runs a pinned image itself while its attempt 2, which built
    // that image, still runs too (left so by a controller without the rule; no controller
    // runs here).
    let id = "e".repeat(32);
    let plugins = env.api(PLUGSYNC, "Plugin").await;
    for n in 1..=2 {
        let plugin: DynamicObject = serde_json::from_value(attempt(&id, n)).expect("plugin");
        let created = plugins
            .create(&PostParams::default(), &plugin)
            .await
            .expect("create plugin");
        plugins
            .patch_status(
                &created.name_any(),
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {
                    "phase": "Running",
                    "imageDigest": format!("sha256:{}", "4".repeat(64)),
                    "builtInputsHash": "3".repeat(64)}})),
            )
            .await
            .expect("status");
    }

    let (ok, out) = env
        .run(&["gc", "--namespace", &env.ns, "--keep", "5"])
        .await;
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!(
            "removed Plugin {}/{id}--2 with its build Job and Deployment",
            env.ns
        )),
        "{out}"
    );
    assert!(
        out.contains("1 failed or superseded attempts removed"),
        "{out}"
    );
    until_all(
        env.api(PLUGSYNC, "Plugin").await,
        "attempt 2 gone",
        |plugins| !plugins.iter().any(|p| name(p) == format!("{id}--2")),
    )
    .await;
    assert_eq!(env.names(PLUGSYNC, "Plugin", &id).await, vec![id.clone()]);
}
