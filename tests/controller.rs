//! The plugin controller against the API server double, with a harness playing kubelet and
//! job controller: the full lifecycle, a failed build retried as `--2`, max attempts reached,
//! digest reuse without a build, and children deleted with their Plugin.

use std::sync::Arc;
use std::time::Duration;

use kube::CustomResourceExt;
use plugsync::apply::{Applier, ApplyOptions};
use plugsync::controller::{self, Context, RegistryCheck};
use plugsync::crd::Plugin;
use plugsync::model::{PluginSet, PluginSetResource};
use plugsync::pipeline::{desired_state, DesiredState};
use plugsync::render::RenderSettings;
use plugsync::resolve::cache::Cache;
use plugsync::resolve::source::{FetchSettings, SourceRegistry};
use plugsync::resolve::Resolver;
use plugsync::source::WorkTree;
use plugsync::testkit::apiserver::workloads::WorkloadPolicy;
use plugsync::testkit::apiserver::ApiServer;
use serde_json::{json, Value};

#[path = "common/registry_fixture.rs"]
mod registry_fixture;

const NS: &str = "dify";

struct Harness {
    server: ApiServer,
    cache: Cache,
    state: DesiredState,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Harness {
    /// One synthetic plugin, its PluginSet and Plugin applied as the git loop would.
    async fn new(
        tune: impl FnOnce(&mut PluginSet),
        registry: Option<Arc<dyn RegistryCheck>>,
    ) -> Harness {
        Harness::with(|_| {}, tune, |_| {}, |_| registry).await
    }

    /// `edit_yaml` edits plugins.yaml before rendering, `edit_plugin` each Plugin before the
    /// git loop applies it, and `registry` builds the registry check from the double's client.
    async fn with(
        edit_yaml: impl FnOnce(&mut String),
        tune: impl FnOnce(&mut PluginSet),
        edit_plugin: impl Fn(&mut Value),
        registry: impl FnOnce(kube::Client) -> Option<Arc<dyn RegistryCheck>>,
    ) -> Harness {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let repo = tempfile::tempdir().expect("repo");
        let cache_dir = tempfile::tempdir().expect("cache");
        let cache = Cache::open(cache_dir.path()).expect("cache");
        plugsync::synth::generate_repo(repo.path(), 1, &cache).expect("generate");
        let yaml_path = repo.path().join("plugins.yaml");
        let mut yaml = std::fs::read_to_string(&yaml_path).expect("read");
        edit_yaml(&mut yaml);
        std::fs::write(&yaml_path, yaml).expect("write");
        let resolver = Resolver::new(
            SourceRegistry::discover(
                FetchSettings::default(),
                url::Url::parse("https://marketplace.dify.ai").expect("url"),
            ),
            cache.clone(),
            64 << 20,
        );
        let state = desired_state(
            &WorkTree::new(repo.path()).expect("tree"),
            "plugins.yaml",
            &resolver,
            &RenderSettings::default(),
        )
        .await
        .expect("renders")
        .expect("present");

        let server = ApiServer::start().await.expect("double");
        server
            .store()
            .put(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}))
            .expect("namespace");
        let applier = Applier::new(server.client());
        applier
            .ensure_crds(
                &[Plugin::crd(), PluginSetResource::crd()],
                ApplyOptions::default(),
            )
            .await
            .expect("crds");
        let mut set = state.set.spec().clone();
        tune(&mut set);
        let mut plugins: Vec<Value> = state
            .objects()
            .into_iter()
            .filter(|o| o["kind"] == "Plugin")
            .collect();
        plugins.iter_mut().for_each(&edit_plugin);
        let report = applier
            .apply_set(&set, &plugins, ApplyOptions::default())
            .await
            .expect("git loop applies");
        assert!(report.failed.is_empty(), "{:?}", report.failed);

        let mut ctx = Context::new(server.client(), cache.clone(), RenderSettings::default());
        ctx.registry = registry(server.client());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(controller::run(Arc::new(ctx), NS.to_string(), async move {
            let _ = rx.await;
        }));
        Harness {
            server,
            cache,
            state,
            _dirs: (repo, cache_dir),
            stop: Some(tx),
        }
    }

    fn plugin_id(&self) -> String {
        self.state.rendered[0].plugin_id.clone()
    }

    /// A new commit: edits plugins.yaml, renders it and applies its Plugins as the git loop
    /// would, with `tune` applied to the set as at start.
    async fn recommit(
        &mut self,
        edit_yaml: impl FnOnce(&mut String),
        tune: impl FnOnce(&mut PluginSet),
    ) {
        let repo = self._dirs.0.path();
        let yaml_path = repo.join("plugins.yaml");
        let mut yaml = std::fs::read_to_string(&yaml_path).expect("read");
        edit_yaml(&mut yaml);
        std::fs::write(&yaml_path, yaml).expect("write");
        let resolver = Resolver::new(
            SourceRegistry::discover(
                FetchSettings::default(),
                url::Url::parse("https://marketplace.dify.ai").expect("url"),
            ),
            self.cache.clone(),
            64 << 20,
        );
        self.state = desired_state(
            &WorkTree::new(repo).expect("tree"),
            "plugins.yaml",
            &resolver,
            &RenderSettings::default(),
        )
        .await
        .expect("renders")
        .expect("present");
        let mut set = self.state.set.spec().clone();
        tune(&mut set);
        let report = Applier::new(self.server.client())
            .apply_set(&set, &self.state.cluster_objects(), ApplyOptions::default())
            .await
            .expect("git loop applies");
        assert!(report.failed.is_empty(), "{:?}", report.failed);
    }

    fn get(&self, api_version: &str, kind: &str, name: &str) -> Option<Value> {
        self.server.store().get(api_version, kind, Some(NS), name)
    }

    async fn wait_for(&self, what: &str, mut check: impl FnMut(&Harness) -> bool) {
        let start = std::time::Instant::now();
        while !check(self) {
            if start.elapsed() > Duration::from_secs(30) {
                let dump = |v: &str, k: &str| {
                    self.server
                        .store()
                        .list(v, k, Some(NS))
                        .iter()
                        .map(|o| format!("{k} {}: status={}", o["metadata"]["name"], o["status"]))
                        .collect::<Vec<_>>()
                        .join("\n")
                };
                panic!(
                    "timed out waiting for {what}\n{}\n{}\n{}\n{}",
                    dump("plugsync.dev/v1alpha1", "Plugin"),
                    dump("batch/v1", "Job"),
                    dump("v1", "Pod"),
                    dump("apps/v1", "Deployment")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn phase(&self, name: &str) -> Option<String> {
        self.get("plugsync.dev/v1alpha1", "Plugin", name)
            .and_then(|p| p["status"]["phase"].as_str().map(str::to_string))
    }

    fn condition(&self, name: &str, type_: &str) -> Option<(String, String)> {
        let p = self.get("plugsync.dev/v1alpha1", "Plugin", name)?;
        p["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == type_)
            .map(|c| {
                (
                    c["status"].as_str().unwrap_or_default().to_string(),
                    c["reason"].as_str().unwrap_or_default().to_string(),
                )
            })
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn events_for(server: &ApiServer, name: &str) -> Vec<String> {
    let mut reasons: Vec<String> = server
        .store()
        .list("events.k8s.io/v1", "Event", Some(NS))
        .into_iter()
        .chain(server.store().list("v1", "Event", Some(NS)))
        .filter(|e| e["regarding"]["name"] == name || e["involvedObject"]["name"] == name)
        .filter_map(|e| e["reason"].as_str().map(str::to_string))
        .collect();
    reasons.sort();
    reasons
}

#[tokio::test]
async fn a_plugin_is_built_deployed_and_running() {
    let h = Harness::new(|_| {}, None).await;
    let _workloads = h.server.simulate_workloads(WorkloadPolicy::default());
    let id = h.plugin_id();
    h.wait_for("Running", |h| h.phase(&id).as_deref() == Some("Running"))
        .await;

    let plugin = h
        .get("plugsync.dev/v1alpha1", "Plugin", &id)
        .expect("plugin");
    let digest = plugin["status"]["imageDigest"]
        .as_str()
        .expect("digest recorded")
        .to_string();
    assert!(digest.starts_with("sha256:"));
    assert_eq!(
        plugin["status"]["endpoint"],
        format!("http://svc-{id}.{NS}:8080")
    );
    assert_eq!(
        h.condition(&id, "Ready"),
        Some(("True".into(), "Available".into()))
    );
    assert_eq!(
        h.condition(&id, "Stalled").map(|c| c.0),
        Some("False".into())
    );

    let job = h.get("batch/v1", "Job", &id).expect("build job");
    assert_eq!(job["metadata"]["ownerReferences"][0]["name"], id.as_str());
    let deployment = h.get("apps/v1", "Deployment", &id).expect("deployment");
    let image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .expect("image");
    assert!(
        image.ends_with(&format!("@{digest}")),
        "runs by digest: {image}"
    );
    assert!(h.get("v1", "Service", &format!("svc-{id}")).is_some());
    // The build context the Job verifies is served from the cache.
    let context = job["spec"]["template"]["spec"]["initContainers"][0]["env"][1]["value"]
        .as_str()
        .expect("sha");
    assert!(h.cache.get(context).expect("cache").is_some());

    // The Event follows the status write; wait for it rather than race it.
    h.wait_for("Building and Running events", |h| {
        let events = events_for(&h.server, &id);
        events.contains(&"Building".to_string()) && events.contains(&"Running".to_string())
    })
    .await;
}

#[tokio::test]
async fn a_failed_build_is_retried_as_attempt_2() {
    let h = Harness::new(
        |set| {
            set.spec.build.backoff.base = Duration::from_secs(1);
            set.spec.build.backoff.cap = Duration::from_secs(1);
        },
        None,
    )
    .await;
    let _workloads = h
        .server
        .simulate_workloads(WorkloadPolicy::default().fail_first_attempts(1));
    let id = h.plugin_id();
    let retry = format!("{id}--2");
    h.wait_for("attempt 2 running", |h| {
        h.phase(&retry).as_deref() == Some("Running")
    })
    .await;
    assert_eq!(h.phase(&id).as_deref(), Some("BuildFailed"));
    let first = h
        .get("plugsync.dev/v1alpha1", "Plugin", &id)
        .expect("first");
    assert!(
        first["status"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("attempt 2"),
        "{}",
        first["status"]
    );
    let second = h
        .get("plugsync.dev/v1alpha1", "Plugin", &retry)
        .expect("second");
    assert_eq!(second["spec"]["attempt"], 2);
    assert_eq!(
        second["metadata"]["ownerReferences"][0]["name"],
        id.as_str()
    );
    assert!(h.get("batch/v1", "Job", &retry).is_some());
    assert!(h.get("apps/v1", "Deployment", &retry).is_some());
    assert!(
        h.get("v1", "Service", &format!("svc-{id}")).is_some(),
        "one stable Service"
    );
    h.wait_for("a BuildFailed event", |h| {
        events_for(&h.server, &id).contains(&"BuildFailed".to_string())
    })
    .await;
}

#[tokio::test]
async fn max_attempts_reached_stalls() {
    let h = Harness::new(
        |set| {
            set.spec.build.max_attempts = 2;
            set.spec.build.backoff.base = Duration::from_secs(1);
            set.spec.build.backoff.cap = Duration::from_secs(1);
        },
        None,
    )
    .await;
    let _workloads = h
        .server
        .simulate_workloads(WorkloadPolicy::default().fail_builds_matching(""));
    let id = h.plugin_id();
    let retry = format!("{id}--2");
    h.wait_for("stalled", |h| {
        h.condition(&retry, "Stalled").map(|c| c.0).as_deref() == Some("True")
    })
    .await;
    assert_eq!(
        h.condition(&retry, "Stalled").map(|c| c.1).as_deref(),
        Some("MaxAttemptsReached")
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        h.get("plugsync.dev/v1alpha1", "Plugin", &format!("{id}--3"))
            .is_none(),
        "no third attempt"
    );
    assert!(h.get("apps/v1", "Deployment", &retry).is_none());
}

struct RegistryHas(bool);

#[async_trait::async_trait]
impl RegistryCheck for RegistryHas {
    async fn has_digest(
        &self,
        _set: &PluginSetResource,
        _image: &str,
        _digest: &str,
    ) -> Option<bool> {
        Some(self.0)
    }
}

#[tokio::test]
async fn a_known_digest_still_in_the_registry_skips_the_build() {
    let h = Harness::new(|_| {}, Some(Arc::new(RegistryHas(true)))).await;
    let id = h.plugin_id();
    let digest = format!("sha256:{}", "ab".repeat(32));
    // The digest an earlier install recorded (as the lock would carry it).
    let mut plugin = h
        .get("plugsync.dev/v1alpha1", "Plugin", &id)
        .expect("plugin");
    plugin["spec"]["imageDigest"] = json!(digest);
    h.server.store().put(plugin).expect("record digest");
    let _workloads = h.server.simulate_workloads(WorkloadPolicy::default());
    h.wait_for("Running", |h| h.phase(&id).as_deref() == Some("Running"))
        .await;
    assert!(h.get("batch/v1", "Job", &id).is_none(), "no build ran");
    let deployment = h.get("apps/v1", "Deployment", &id).expect("deployment");
    let image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .expect("image");
    assert!(image.ends_with(&digest), "{image}");
}

#[tokio::test]
async fn deleting_a_plugin_removes_its_children() {
    let h = Harness::new(|_| {}, None).await;
    let _workloads = h.server.simulate_workloads(WorkloadPolicy::default());
    let id = h.plugin_id();
    h.wait_for("Running", |h| h.phase(&id).as_deref() == Some("Running"))
        .await;
    let plugins: kube::Api<Plugin> = kube::Api::namespaced(h.server.client(), NS);
    plugins
        .delete(&id, &Default::default())
        .await
        .expect("delete");
    h.wait_for("children gone", |h| {
        h.get("batch/v1", "Job", &id).is_none()
            && h.get("apps/v1", "Deployment", &id).is_none()
            && h.get("v1", "Service", &format!("svc-{id}")).is_none()
    })
    .await;
}

/// Runs a plugin whose Plugin already records `digest` against a real registry (basic auth,
/// credentials only from the dockerconfigjson Secret) that holds `pushed` under its image.
async fn reuse_against_a_real_registry(
    test: &str,
    record_pushed_digest: bool,
) -> Option<(Harness, String, registry_fixture::RegistryServer)> {
    if !registry_fixture::tools_or_skip(test, true) {
        return None;
    }
    let registry = registry_fixture::RegistryServer::start_with_basic_auth("plugsync", "s3cret-pw");
    let host = registry.host.clone();
    let image = registry_fixture::OciImage::new(test);
    let pushed = image.manifest_digest.clone();
    let recorded = if record_pushed_digest {
        pushed.clone()
    } else {
        format!("sha256:{}", "0".repeat(64))
    };
    let h = Harness::with(
        |yaml| {
            *yaml = yaml.replace(
                "    prefix: registry.example.invalid/dify-plugins\n",
                &format!("    prefix: {host}/dify-plugins\n    insecure: true\n"),
            );
            assert!(yaml.contains(&host), "prefix replaced");
        },
        |_| {},
        |plugin| plugin["spec"]["imageDigest"] = json!(recorded),
        |client| {
            Some(Arc::new(
                plugsync::controller::registry_check::SecretRegistryCheck::new(
                    client,
                    Duration::from_secs(5),
                ),
            ) as Arc<dyn RegistryCheck>)
        },
    )
    .await;
    // Push the image where the Plugin says it lives, and give the namespace the Secret.
    let plugin = h
        .get("plugsync.dev/v1alpha1", "Plugin", &h.plugin_id())
        .expect("plugin");
    let spec_image = plugin["spec"]["build"]["image"]
        .as_str()
        .expect("image")
        .to_string();
    let (repository, tag) = spec_image
        .strip_prefix(&format!("{host}/"))
        .and_then(|rest| rest.rsplit_once(':'))
        .expect("image under the registry");
    registry.push(&image, repository, tag);
    let secret = registry_fixture::basic_auth_secret(&host, "plugsync", "s3cret-pw");
    h.server
        .store()
        .put(serde_json::to_value(secret).expect("json"))
        .expect("secret");
    Some((h, pushed, registry))
}

#[tokio::test]
async fn reuse_checks_the_real_registry_and_skips_the_build() {
    let Some((h, pushed, _registry)) = reuse_against_a_real_registry("reuse_present", true).await
    else {
        return;
    };
    let _workloads = h.server.simulate_workloads(WorkloadPolicy::default());
    let id = h.plugin_id();
    h.wait_for("Running", |h| h.phase(&id).as_deref() == Some("Running"))
        .await;
    assert!(h.get("batch/v1", "Job", &id).is_none(), "no build ran");
    let deployment = h.get("apps/v1", "Deployment", &id).expect("deployment");
    let image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .expect("image");
    assert!(image.ends_with(&format!("@{pushed}")), "{image}");
}

#[tokio::test]
async fn a_digest_gone_from_the_real_registry_is_rebuilt() {
    let Some((h, _pushed, _registry)) = reuse_against_a_real_registry("reuse_gone", false).await
    else {
        return;
    };
    let _workloads = h.server.simulate_workloads(WorkloadPolicy::default());
    let id = h.plugin_id();
    h.wait_for("a build", |h| h.get("batch/v1", "Job", &id).is_some())
        .await;
    h.wait_for("Running", |h| h.phase(&id).as_deref() == Some("Running"))
        .await;
}

fn fast_retries(set: &mut PluginSet) {
    set.spec.build.backoff.base = Duration::from_secs(1);
    set.spec.build.backoff.cap = Duration::from_secs(1);
}

/// Fails every build Job whose builder is the default Kaniko image, so a commit that
/// changes the builder (and so the build inputs) builds successfully.
fn fail_default_builder() -> WorkloadPolicy {
    WorkloadPolicy::default().fail_builds_matching(
        plugsync::testkit::apiserver::workloads::WorkloadMatcher::predicate(|job| {
            job.to_string().contains("executor:v1.23.2")
        }),
    )
}

#[tokio::test]
async fn a_new_commit_starts_over_and_is_never_blocked_by_old_retries() {
    let stuck = |set: &mut PluginSet| {
        set.spec.build.max_attempts = 3;
        // Attempt 2 of the old commit would only come in a minute.
        set.spec.build.backoff.base = Duration::from_secs(60);
        set.spec.build.backoff.cap = Duration::from_secs(60);
    };
    let mut h = Harness::new(stuck, None).await;
    let _workloads = h.server.simulate_workloads(fail_default_builder());
    let id = h.plugin_id();
    h.wait_for("attempt 1 failed", |h| {
        h.phase(&id).as_deref() == Some("BuildFailed")
    })
    .await;
    let old_inputs = h.get("batch/v1", "Job", &id).expect("job")["metadata"]["annotations"]
        ["plugsync.dev/build-inputs"]
        .clone();

    // The fix lands: a newer builder image changes the build inputs of the same plugin-id.
    h.recommit(
        |yaml| {
            *yaml = yaml.replace(
                "  build:\n",
                "  build:\n    builderImage: gcr.io/kaniko-project/executor:v1.24.0\n",
            )
        },
        stuck,
    )
    .await;
    assert_eq!(h.plugin_id(), id, "same package, same plugin-id");
    h.wait_for("the new inputs running at attempt 1", |h| {
        h.phase(&id).as_deref() == Some("Running")
    })
    .await;
    let job = h.get("batch/v1", "Job", &id).expect("rebuilt job");
    assert_ne!(
        job["metadata"]["annotations"]["plugsync.dev/build-inputs"], old_inputs,
        "the stale Job was replaced, not waited for"
    );
    assert!(
        h.get("plugsync.dev/v1alpha1", "Plugin", &format!("{id}--2"))
            .is_none(),
        "no retry of the old commit was ever started"
    );
    let plugin = h
        .get("plugsync.dev/v1alpha1", "Plugin", &id)
        .expect("plugin");
    assert_eq!(
        plugin["status"]["builtInputsHash"], plugin["spec"]["build"]["inputsHash"],
        "the digest is recorded with the inputs it was built from"
    );
    assert!(
        plugin["status"].get("lastFailure").is_none() || plugin["status"]["lastFailure"].is_null()
    );
}

#[tokio::test]
async fn retries_of_an_old_commit_are_superseded_and_removed() {
    let tune = |set: &mut PluginSet| {
        set.spec.build.max_attempts = 4;
        fast_retries(set);
    };
    let mut h = Harness::new(tune, None).await;
    let _workloads = h.server.simulate_workloads(fail_default_builder());
    let id = h.plugin_id();
    let second = format!("{id}--2");
    h.wait_for("attempt 2 failed", |h| {
        h.phase(&second).as_deref() == Some("BuildFailed")
    })
    .await;
    h.recommit(
        |yaml| {
            *yaml = yaml.replace(
                "  build:\n",
                "  build:\n    builderImage: gcr.io/kaniko-project/executor:v1.24.0\n",
            )
        },
        tune,
    )
    .await;
    h.wait_for("the new inputs running", |h| {
        h.phase(&id).as_deref() == Some("Running")
    })
    .await;
    h.wait_for("old retries removed", |h| {
        h.server
            .store()
            .list("plugsync.dev/v1alpha1", "Plugin", Some(NS))
            .len()
            == 1
    })
    .await;
    assert!(
        h.get("batch/v1", "Job", &second).is_none(),
        "its Job went with it"
    );
}

#[tokio::test]
async fn failed_attempts_beyond_the_history_limit_are_collected() {
    let h = Harness::new(
        |set| {
            set.spec.build.max_attempts = 5;
            set.spec.build.failed_history_limit = 1;
            fast_retries(set);
        },
        None,
    )
    .await;
    let _workloads = h
        .server
        .simulate_workloads(WorkloadPolicy::default().fail_first_attempts(3));
    let id = h.plugin_id();
    let fourth = format!("{id}--4");
    h.wait_for("attempt 4 running", |h| {
        h.phase(&fourth).as_deref() == Some("Running")
    })
    .await;
    h.wait_for("history trimmed to one failed attempt", |h| {
        h.get("plugsync.dev/v1alpha1", "Plugin", &format!("{id}--2"))
            .is_none()
            && h.get("batch/v1", "Job", &id).is_none()
    })
    .await;
    // Kept: the newest failed attempt, with its Job for debugging; the first attempt's
    // Plugin (it owns the others) remembers its failure without its Job.
    assert_eq!(h.phase(&format!("{id}--3")).as_deref(), Some("BuildFailed"));
    assert!(h.get("batch/v1", "Job", &format!("{id}--3")).is_some());
    let first = h
        .get("plugsync.dev/v1alpha1", "Plugin", &id)
        .expect("first");
    assert_eq!(first["status"]["phase"], "BuildFailed");
    assert_eq!(
        first["status"]["lastFailure"]["reason"], "BackoffLimitExceeded",
        "{}",
        first["status"]
    );
    // Nothing is started again: no rebuild of attempt 1, no new attempt 2.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        h.get("batch/v1", "Job", &id).is_none(),
        "attempt 1 not rebuilt"
    );
    assert!(h
        .get("plugsync.dev/v1alpha1", "Plugin", &format!("{id}--2"))
        .is_none());
    assert_eq!(h.phase(&fourth).as_deref(), Some("Running"));
}
