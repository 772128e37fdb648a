//! The plugin controller (`plugsync_kube::controller::run`, in-process) against the real control
//! plane (`tests/cluster`): the real job, deployment, replicaset and garbage-collector
//! controllers act on what it creates, kwok runs the pods, and the Kaniko stand-in really
//! downloads each build context from this harness's context server (served as `plugsync
//! controller` serves it) and pushes a real image, whose digest the tests compare with what the
//! registry holds.
//!
//! Covered: the full lifecycle, a failed build retried as `--2`, max attempts reached, digest
//! reuse without a build (also against a real registry with basic auth), a digest gone from the
//! registry rebuilt, children garbage-collected with their Plugin, a new commit starting over,
//! superseded retries removed, and the failed-attempt history limit. Builds are steered by pod
//! labels on the plugin (`cluster::labels`), put in plugins.yaml's `spec.runtime.labels`.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::NamespaceResourceScope;
use kube::api::{Api, PostParams};
use kube::runtime::{watcher, WatchStreamExt as _};
use kube::{Resource, ResourceExt};
use plugsync_core::crd::PluginSetResource;
use plugsync_core::crd::{Plugin, PluginPhase};
use plugsync_core::model::PluginSet;
use plugsync_core::pipeline::{desired_state, DesiredState};
use plugsync_core::render::RenderSettings;
use plugsync_core::resolve::cache::Cache;
use plugsync_core::source::WorkTree;
use plugsync_kube::apply::{Applier, ApplyOptions};
use plugsync_kube::controller::{self, Context, RegistryCheck};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

#[path = "common/cluster.rs"]
mod cluster;
#[path = "common/fault_proxy.rs"]
mod fault_proxy;
#[path = "common/registry_fixture.rs"]
mod registry_fixture;

use cluster::{cluster, labels, TestCluster};

/// How long any one wait may take: a build takes a few seconds on the fake node, and the
/// garbage collector removes a Plugin's children within seconds (the test cluster starts with
/// the CRDs installed, so it follows Plugins from the start); the margin is for a loaded host.
const WAIT: Duration = Duration::from_secs(120);

/// The builder image a later commit switches to (the synthetic set builds with the default).
const NEWER_BUILDER: &str = "gcr.io/kaniko-project/executor:v1.24.0";

/// The registry check the controller runs with.
enum Check {
    /// None: known digests are trusted.
    Off,
    /// Always answers this.
    Fixed(bool),
    /// `SecretRegistryCheck`, as `plugsync controller` runs it: the real registry, asked with
    /// the credentials of the set's dockerconfigjson Secret.
    Secret,
}

/// Where the set's images go.
struct Registry {
    /// `host:port` (plain HTTP).
    host: String,
    /// `(user, password)` when it demands basic auth: they reach the build pods and the
    /// registry check only through the namespace's dockerconfigjson Secret.
    auth: Option<(String, String)>,
}

struct Harness {
    c: &'static TestCluster,
    ns: String,
    client: kube::Client,
    cache: Cache,
    settings: RenderSettings,
    state: DesiredState,
    registry: Registry,
    repo: tempfile::TempDir,
    _cache_dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    context_server: tokio::task::JoinHandle<()>,
}

/// Reads, resolves and renders the repository in `repo` as the git loop does.
async fn render(repo: &Path, cache: &Cache, settings: &RenderSettings) -> DesiredState {
    let resolver = plugsync_testkit::resolver(cache.clone());
    desired_state(
        &WorkTree::new(repo).expect("tree"),
        "plugins.yaml",
        &resolver,
        settings,
    )
    .await
    .expect("renders")
    .expect("present")
}

/// The synthetic set's `spec.runtime.labels` line with `pod_labels` added (or, with none, as
/// generated): they reach the build Job's and the Deployment's pod templates.
fn with_pod_labels(yaml: &str, pod_labels: &[(&str, &str)]) -> String {
    const START: &str = "    labels: {team: synth";
    let extra: String = pod_labels
        .iter()
        .map(|(k, v)| format!(", {k:?}: {v:?}"))
        .collect();
    let mut found = false;
    let out: String = yaml
        .lines()
        .map(|line| {
            if line.starts_with(START) {
                found = true;
                format!("{START}{extra}}}\n")
            } else {
                format!("{line}\n")
            }
        })
        .collect();
    assert!(found, "no runtime labels line in\n{yaml}");
    out
}

impl Harness {
    /// One synthetic plugin in a fresh namespace, its pods labelled `pod_labels`, its images
    /// pushed to the cluster's registry; its PluginSet (edited by `tune`) and Plugin applied as
    /// the git loop would, and the controller running.
    async fn start(
        test: &str,
        pod_labels: &[(&str, &str)],
        tune: impl Fn(&mut PluginSet),
        check: Check,
    ) -> Harness {
        let mut h = Harness::prepare(test, pod_labels, None).await;
        h.apply(tune, |_| {}).await;
        h.run(check);
        h
    }

    /// Everything before the git loop applies: the namespace, the repository (its images under
    /// `<registry>/<namespace>/`, so no two tests share a repository), the namespace's registry
    /// Secret and the build-context server the rendered Jobs point at.
    async fn prepare(
        test: &str,
        pod_labels: &[(&str, &str)],
        registry: Option<Registry>,
    ) -> Harness {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let c = cluster().await;
        let ns = c.namespace(test).await;
        let client = c.client().await;
        let registry = registry.unwrap_or_else(|| Registry {
            host: c.registry().to_string(),
            auth: None,
        });

        let repo = tempfile::tempdir().expect("repo");
        let cache_dir = tempfile::tempdir().expect("cache");
        let cache = Cache::open(cache_dir.path()).expect("cache");
        c.synthetic_repo(repo.path(), 1, &cache, &ns);
        let yaml_path = repo.path().join("plugins.yaml");
        let yaml = std::fs::read_to_string(&yaml_path).expect("read");
        let retargeted = format!("prefix: {}/dify-plugins\n", c.registry());
        assert!(yaml.contains(&retargeted), "{yaml}");
        let yaml = yaml.replace(&retargeted, &format!("prefix: {}/{ns}\n", registry.host));
        std::fs::write(&yaml_path, with_pod_labels(&yaml, pod_labels)).expect("write");

        // The build-context server, the routes `plugsync controller` serves, on loopback.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let router = plugsync_kube::server::router(cache.clone());
        let context_server = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        let settings = RenderSettings {
            context_base_url: format!("http://{addr}"),
        };

        // The registry Secret the build pods mount (and the registry check reads).
        let mut secret = match &registry.auth {
            Some((user, password)) => {
                registry_fixture::basic_auth_secret(&registry.host, user, password)
            }
            None => registry_fixture::dockerconfig_secret(&json!({"auths": {}})),
        };
        secret.metadata.namespace = Some(ns.clone());
        Api::<Secret>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &secret)
            .await
            .expect("registry secret");

        c.install_crds().await;

        let state = render(repo.path(), &cache, &settings).await;
        Harness {
            c,
            ns,
            client,
            cache,
            settings,
            state,
            registry,
            repo,
            _cache_dir: cache_dir,
            stop: None,
            context_server,
        }
    }

    /// Applies the PluginSet (edited by `tune`) and the Plugins (each edited by `edit_plugin`)
    /// of the current render, as the git loop would.
    async fn apply(&self, tune: impl Fn(&mut PluginSet), edit_plugin: impl Fn(&mut Value)) {
        let mut set = self.state.set.spec().clone();
        tune(&mut set);
        let mut plugins = self.state.cluster_objects();
        plugins.iter_mut().for_each(edit_plugin);
        let report = Applier::new(self.client.clone())
            .apply_set(&set, &plugins, ApplyOptions::default())
            .await
            .expect("git loop applies");
        assert!(report.failed.is_empty(), "{:?}", report.failed);
    }

    /// Starts the controller on the namespace, with this harness's render settings.
    fn run(&mut self, check: Check) {
        self.run_with(self.client.clone(), check);
    }

    /// Starts the controller with `client` (the fault proxy's, say) for all its API calls.
    fn run_with(&mut self, client: kube::Client, check: Check) {
        let mut ctx = Context::new(client, self.cache.clone(), self.settings.clone());
        ctx.registry = match check {
            Check::Off => None,
            Check::Fixed(answer) => Some(Arc::new(RegistryHas(answer)) as Arc<dyn RegistryCheck>),
            Check::Secret => Some(Arc::new(
                plugsync_kube::controller::registry_check::SecretRegistryCheck::new(
                    self.client.clone(),
                    Duration::from_secs(5),
                ),
            )),
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(controller::run(
            Arc::new(ctx),
            self.ns.clone(),
            async move {
                let _ = rx.await;
            },
        ));
        self.stop = Some(tx);
    }

    fn plugin_id(&self) -> String {
        self.state.rendered[0].plugin_id.clone()
    }

    /// The image (`host/repository:tag`) the Plugin builds and runs.
    fn image(&self) -> String {
        let plugin = self
            .state
            .cluster_objects()
            .into_iter()
            .next()
            .expect("a Plugin");
        plugin["spec"]["build"]["image"]
            .as_str()
            .expect("image")
            .to_string()
    }

    /// A new commit: edits plugins.yaml (its pod labels become `pod_labels`), renders it and
    /// applies its Plugins as the git loop would, with `tune` applied to the set as at start.
    async fn recommit(
        &mut self,
        edit_yaml: impl FnOnce(&mut String),
        pod_labels: &[(&str, &str)],
        tune: impl Fn(&mut PluginSet),
    ) {
        let yaml_path = self.repo.path().join("plugins.yaml");
        let mut yaml = std::fs::read_to_string(&yaml_path).expect("read");
        edit_yaml(&mut yaml);
        std::fs::write(&yaml_path, with_pod_labels(&yaml, pod_labels)).expect("write");
        self.state = render(self.repo.path(), &self.cache, &self.settings).await;
        self.apply(tune, |_| {}).await;
    }

    fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// The object `name` as the API server has it now.
    async fn get<K>(&self, name: &str) -> Option<K>
    where
        K: Resource<Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Debug,
        K::DynamicType: Default,
    {
        self.api::<K>().get_opt(name).await.expect("get")
    }

    async fn plugin(&self, name: &str) -> Plugin {
        self.get::<Plugin>(name)
            .await
            .unwrap_or_else(|| panic!("no Plugin {name}\n{}", self.dump()))
    }

    /// Waits (a watch) until the Plugin `name` exists and meets `condition`; returns it.
    async fn wait_plugin(
        &self,
        name: &str,
        what: &str,
        condition: impl Fn(&Plugin) -> bool,
    ) -> Plugin {
        let watched = kube::runtime::wait::await_condition(
            self.api::<Plugin>(),
            name,
            move |p: Option<&Plugin>| p.is_some_and(&condition),
        );
        match tokio::time::timeout(WAIT, watched).await {
            Ok(Ok(Some(plugin))) => plugin,
            Ok(other) => panic!("watching {name} for {what}: {other:?}"),
            Err(_) => panic!(
                "timed out after {WAIT:?} waiting for {what} ({name})\n{}",
                self.dump()
            ),
        }
    }

    /// Waits (a watch of the collection) until `done` holds for the objects of kind `K` in the
    /// namespace, by name; returns them.
    async fn wait_all<K>(
        &self,
        what: &str,
        done: impl Fn(&BTreeMap<String, K>) -> bool,
    ) -> BTreeMap<String, K>
    where
        K: Resource<Scope = NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + Debug
            + Send
            + 'static,
        K::DynamicType: Default,
    {
        let mut events =
            std::pin::pin!(watcher(self.api::<K>(), watcher::Config::default()).default_backoff());
        let deadline = tokio::time::Instant::now() + WAIT;
        let (mut listing, mut seen, mut listed) = (BTreeMap::new(), BTreeMap::new(), false);
        loop {
            let event = match tokio::time::timeout_at(deadline, events.next()).await {
                Ok(Some(Ok(event))) => event,
                Ok(Some(Err(e))) => {
                    tracing::warn!(error = %e, "watch error; the watcher retries");
                    continue;
                }
                Ok(None) => panic!("the watch for {what} ended"),
                Err(_) => panic!(
                    "timed out after {WAIT:?} waiting for {what}; seen: {:?}\n{}",
                    seen.keys().collect::<Vec<_>>(),
                    self.dump()
                ),
            };
            match event {
                watcher::Event::Init => listing = BTreeMap::new(),
                watcher::Event::InitApply(o) => {
                    listing.insert(o.name_any(), o);
                }
                watcher::Event::InitDone => {
                    seen = std::mem::take(&mut listing);
                    listed = true;
                }
                watcher::Event::Apply(o) => {
                    seen.insert(o.name_any(), o);
                }
                watcher::Event::Delete(o) => {
                    seen.remove(&o.name_any());
                }
            }
            if listed && done(&seen) {
                return seen;
            }
        }
    }

    /// Waits until no object of kind `K` named `name` is left.
    async fn wait_gone<K>(&self, name: &str)
    where
        K: Resource<Scope = NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + Debug
            + Send
            + 'static,
        K::DynamicType: Default,
    {
        let what = format!("{} {name} to be gone", K::kind(&K::DynamicType::default()));
        self.wait_all::<K>(&what, |all| !all.contains_key(name))
            .await;
    }

    /// Waits until the Events about the object `name` include every reason in `reasons`.
    async fn wait_events(&self, name: &str, reasons: &[&str]) {
        self.wait_all::<Event>(&format!("{reasons:?} events for {name}"), |events| {
            let about: Vec<&str> = events
                .values()
                .filter(|e| {
                    e.regarding
                        .as_ref()
                        .is_some_and(|r| r.name.as_deref() == Some(name))
                })
                .filter_map(|e| e.reason.as_deref())
                .collect();
            reasons.iter().all(|r| about.contains(r))
        })
        .await;
    }

    /// The digest the registry serves for `image` (`host/repository:tag`), asked as a client
    /// with the registry's credentials would.
    async fn registry_digest(&self, image: &str) -> Option<String> {
        let (repository, tag) = image
            .strip_prefix(&format!("{}/", self.registry.host))
            .and_then(|rest| rest.rsplit_once(':'))
            .unwrap_or_else(|| panic!("{image} is not under {}", self.registry.host));
        let mut request = reqwest::Client::new()
            .head(format!(
                "http://{}/v2/{repository}/manifests/{tag}",
                self.registry.host
            ))
            .header(
                "accept",
                "application/vnd.docker.distribution.manifest.v2+json, \
                 application/vnd.oci.image.manifest.v1+json",
            )
            .timeout(Duration::from_secs(5));
        if let Some((user, password)) = &self.registry.auth {
            request = request.basic_auth(user, Some(password));
        }
        let response = request.send().await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        response
            .headers()
            .get("docker-content-digest")?
            .to_str()
            .ok()
            .map(str::to_string)
    }

    /// What the namespace holds, for failure messages.
    fn dump(&self) -> String {
        let run = |args: &[&str]| {
            let out = self.c.kubectl().args(args).output().expect("kubectl");
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        };
        format!(
            "{}\n{}",
            run(&[
                "-n",
                &self.ns,
                "get",
                "plugins.plugsync.dev,jobs,pods,deployments,services",
                "-o",
                "wide"
            ]),
            run(&[
                "-n",
                &self.ns,
                "get",
                "plugins.plugsync.dev",
                "-o",
                "jsonpath={range .items[*]}{.metadata.name}: {.status}{\"\\n\"}{end}"
            ])
        )
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.context_server.abort();
    }
}

fn phase(p: &Plugin) -> Option<PluginPhase> {
    p.status.as_ref().and_then(|s| s.phase)
}

/// `(status, reason)` of the condition `type_`.
fn condition(p: &Plugin, type_: &str) -> Option<(String, String)> {
    p.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

fn container_image(d: &Deployment) -> String {
    d.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.clone())
        .expect("image")
}

fn annotation(o: &impl Resource, key: &str) -> Option<String> {
    o.meta().annotations.as_ref()?.get(key).cloned()
}

fn fast_retries(set: &mut PluginSet) {
    set.spec.build.backoff.base = Duration::from_secs(1);
    set.spec.build.backoff.cap = Duration::from_secs(1);
}

/// Every build of the plugin fails (the node side fails attempts 1..=9).
const EVERY_BUILD_FAILS: (&str, &str) = (labels::FAIL_BUILD_ATTEMPTS, "9");

#[tokio::test]
async fn a_plugin_is_built_deployed_and_running() {
    let h = Harness::start("ctl-lifecycle", &[], |_| {}, Check::Off).await;
    let id = h.plugin_id();
    let plugin = h
        .wait_plugin(&id, "Running", |p| phase(p) == Some(PluginPhase::Running))
        .await;

    let status = plugin.status.as_ref().expect("status");
    let digest = status.image_digest.clone().expect("digest recorded");
    assert!(digest.starts_with("sha256:"));
    assert_eq!(
        h.registry_digest(&plugin.spec.build.image).await.as_deref(),
        Some(digest.as_str()),
        "the recorded digest is the one the build pushed to the registry"
    );
    assert_eq!(
        status.endpoint.as_deref(),
        Some(format!("http://svc-{id}.{}:8080", h.ns).as_str())
    );
    assert_eq!(
        status.built_inputs_hash.as_ref(),
        Some(&plugin.spec.build.inputs_hash)
    );
    assert_eq!(
        condition(&plugin, "Ready"),
        Some(("True".into(), "Available".into()))
    );
    assert_eq!(
        condition(&plugin, "Reconciling").map(|c| c.0),
        Some("False".into())
    );
    assert_eq!(
        condition(&plugin, "Stalled").map(|c| c.0),
        Some("False".into())
    );

    let job: Job = h.get(&id).await.expect("build job");
    assert_eq!(
        job.metadata.owner_references.as_ref().expect("owner")[0].name,
        id
    );
    assert!(
        job.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs
                .iter()
                .any(|c| c.type_ == "Complete" && c.status == "True")),
        "the job controller completed the build: {:?}",
        job.status
    );
    let deployment: Deployment = h.get(&id).await.expect("deployment");
    let image = container_image(&deployment);
    assert!(
        image.ends_with(&format!("@{digest}")),
        "runs by digest: {image}"
    );
    assert!(h.get::<Service>(&format!("svc-{id}")).await.is_some());
    // The build context the Job verifies is served from the cache by the context server,
    // where the Job says it is (the build pod downloaded and checked it to succeed).
    let env: BTreeMap<String, String> = job
        .spec
        .as_ref()
        .expect("spec")
        .template
        .spec
        .as_ref()
        .expect("pod spec")
        .init_containers
        .as_ref()
        .expect("init containers")[0]
        .env
        .iter()
        .flatten()
        .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
        .collect();
    let context = &env["CONTEXT_SHA256"];
    assert_eq!(context, &plugin.spec.build.context_sha256);
    assert_eq!(
        env["CONTEXT_URL"],
        format!("{}/contexts/{context}", h.settings.context_base_url)
    );
    assert!(h.cache.get(context).expect("cache").is_some());

    // The Event follows the status write; wait for it rather than race it.
    h.wait_events(&id, &["Building", "Running"]).await;
}

#[tokio::test]
async fn a_failed_build_is_retried_as_attempt_2() {
    let h = Harness::start(
        "ctl-retry",
        &[(labels::FAIL_BUILD_ATTEMPTS, "1")],
        fast_retries,
        Check::Off,
    )
    .await;
    let id = h.plugin_id();
    let retry = format!("{id}--2");
    let second = h
        .wait_plugin(&retry, "attempt 2 running", |p| {
            phase(p) == Some(PluginPhase::Running)
        })
        .await;
    // The first attempt is what git declares and what `kubectl get plugins`, health checks
    // and alerts read: once its retry runs, it reads Running (not BuildFailed forever), with
    // the endpoint, and says which attempt runs and why its own build failed.
    let first = h
        .wait_plugin(&id, "attempt 1 reporting its running retry", |p| {
            phase(p) == Some(PluginPhase::Running)
        })
        .await;
    let status = first.status.as_ref().expect("status");
    assert_eq!(status.current_attempt.as_deref(), Some(retry.as_str()));
    assert_eq!(
        status.endpoint.as_deref(),
        Some(format!("http://svc-{id}.{}:8080", h.ns).as_str())
    );
    assert_eq!(
        condition(&first, "Ready"),
        Some(("True".into(), "Available".into()))
    );
    assert_eq!(
        condition(&first, "Stalled").map(|c| c.0),
        Some("False".into())
    );
    let message = status.message.as_deref().unwrap_or_default();
    assert!(
        message.contains("build attempt 1 failed") && message.contains("attempt 2"),
        "{status:?}"
    );
    assert_eq!(status.image_digest, None, "the digest is the retry's");
    // The builder's last words reach the status.
    let failure = status.last_failure.as_ref().expect("last failure");
    assert!(failure.message.contains("failed on purpose"), "{failure:?}");
    assert_eq!(second.spec.attempt, 2);
    assert_eq!(
        second.metadata.owner_references.as_ref().expect("owner")[0].name,
        id
    );
    assert!(h.get::<Job>(&retry).await.is_some());
    assert!(h.get::<Deployment>(&retry).await.is_some());
    assert!(
        h.get::<Service>(&format!("svc-{id}")).await.is_some(),
        "one stable Service"
    );
    assert_eq!(
        h.registry_digest(&second.spec.build.image).await,
        second.status.as_ref().and_then(|s| s.image_digest.clone()),
        "attempt 2 runs what it pushed"
    );
    h.wait_events(&id, &["BuildFailed"]).await;
}

#[tokio::test]
async fn max_attempts_reached_stalls() {
    let h = Harness::start(
        "ctl-max-attempts",
        &[EVERY_BUILD_FAILS],
        |set| {
            set.spec.build.max_attempts = 2;
            fast_retries(set);
        },
        Check::Off,
    )
    .await;
    let id = h.plugin_id();
    let retry = format!("{id}--2");
    let stalled = h
        .wait_plugin(&retry, "stalled", |p| {
            condition(p, "Stalled").map(|c| c.0).as_deref() == Some("True")
        })
        .await;
    assert_eq!(
        condition(&stalled, "Stalled").map(|c| c.1).as_deref(),
        Some("MaxAttemptsReached")
    );
    // Longer than the backoff: a third attempt would have been started by now.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        h.get::<Plugin>(&format!("{id}--3")).await.is_none(),
        "no third attempt"
    );
    assert!(h.get::<Deployment>(&retry).await.is_none());
    assert!(h.get::<Deployment>(&id).await.is_none());
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
    let mut h = Harness::prepare("ctl-known-digest", &[], None).await;
    let id = h.plugin_id();
    let digest = format!("sha256:{}", "ab".repeat(32));
    // The digest an earlier install recorded (as the lock would carry it).
    h.apply(
        |_| {},
        |plugin| plugin["spec"]["imageDigest"] = json!(digest),
    )
    .await;
    h.run(Check::Fixed(true));
    h.wait_plugin(&id, "Running", |p| phase(p) == Some(PluginPhase::Running))
        .await;
    assert!(h.get::<Job>(&id).await.is_none(), "no build ran");
    let deployment: Deployment = h.get(&id).await.expect("deployment");
    let image = container_image(&deployment);
    assert!(image.ends_with(&format!("@{digest}")), "{image}");
}

#[tokio::test]
async fn deleting_a_plugin_removes_its_children() {
    let h = Harness::start("ctl-delete", &[], |_| {}, Check::Off).await;
    let id = h.plugin_id();
    h.wait_plugin(&id, "Running", |p| phase(p) == Some(PluginPhase::Running))
        .await;
    let pods = h
        .wait_all::<Pod>("the build's and the Deployment's pods", |pods| {
            pods.len() >= 2
        })
        .await;
    h.api::<Plugin>()
        .delete(&id, &Default::default())
        .await
        .expect("delete");
    // The garbage collector removes what the Plugin owns, and what those own in turn.
    h.wait_gone::<Job>(&id).await;
    h.wait_gone::<Deployment>(&id).await;
    h.wait_gone::<Service>(&format!("svc-{id}")).await;
    for pod in pods.keys() {
        h.wait_gone::<Pod>(pod).await;
    }
}

/// A plugin whose Plugin already records `digest` (the one pushed when `record_pushed_digest`,
/// else one the registry never had), on a real registry demanding basic auth (credentials only
/// from the namespace's dockerconfigjson Secret) that holds an image under the Plugin's tag;
/// the controller checks reuse as `plugsync controller` does.
async fn reuse_against_a_real_registry(
    test: &str,
    record_pushed_digest: bool,
) -> Option<(Harness, String, registry_fixture::RegistryServer)> {
    if !registry_fixture::tools_or_skip(test, true) {
        return None;
    }
    let registry = registry_fixture::RegistryServer::start_with_basic_auth("plugsync", "s3cret-pw");
    let pushed_image = registry_fixture::OciImage::new(test);
    let pushed = pushed_image.manifest_digest.clone();
    let recorded = if record_pushed_digest {
        pushed.clone()
    } else {
        format!("sha256:{}", "0".repeat(64))
    };
    let mut h = Harness::prepare(
        test,
        &[],
        Some(Registry {
            host: registry.host.clone(),
            auth: Some(("plugsync".into(), "s3cret-pw".into())),
        }),
    )
    .await;
    // The image where the Plugin says it lives, before the controller first looks.
    let image = h.image();
    let (repository, tag) = image
        .strip_prefix(&format!("{}/", registry.host))
        .and_then(|rest| rest.rsplit_once(':'))
        .expect("image under the registry");
    registry.push(&pushed_image, repository, tag);
    assert_eq!(
        h.registry_digest(&image).await.as_deref(),
        Some(pushed.as_str())
    );
    h.apply(
        |_| {},
        |plugin| plugin["spec"]["imageDigest"] = json!(recorded),
    )
    .await;
    h.run(Check::Secret);
    Some((h, pushed, registry))
}

#[tokio::test]
async fn reuse_checks_the_real_registry_and_skips_the_build() {
    let Some((h, pushed, _registry)) = reuse_against_a_real_registry("reuse-present", true).await
    else {
        return;
    };
    let id = h.plugin_id();
    h.wait_plugin(&id, "Running", |p| phase(p) == Some(PluginPhase::Running))
        .await;
    assert!(h.get::<Job>(&id).await.is_none(), "no build ran");
    let deployment: Deployment = h.get(&id).await.expect("deployment");
    let image = container_image(&deployment);
    assert!(image.ends_with(&format!("@{pushed}")), "{image}");
}

#[tokio::test]
async fn a_digest_gone_from_the_real_registry_is_rebuilt() {
    let Some((h, pushed, _registry)) = reuse_against_a_real_registry("reuse-gone", false).await
    else {
        return;
    };
    let id = h.plugin_id();
    let plugin = h
        .wait_plugin(&id, "Running", |p| phase(p) == Some(PluginPhase::Running))
        .await;
    assert!(h.get::<Job>(&id).await.is_some(), "a build ran");
    // The build pushed (with the Secret's credentials) a new image over the tag, and the
    // plugin runs exactly that.
    let built = plugin
        .status
        .as_ref()
        .and_then(|s| s.image_digest.clone())
        .expect("digest recorded");
    assert_ne!(built, pushed);
    assert_eq!(
        h.registry_digest(&h.image()).await.as_deref(),
        Some(built.as_str())
    );
    let deployment: Deployment = h.get(&id).await.expect("deployment");
    assert!(container_image(&deployment).ends_with(&format!("@{built}")));
}

/// The fix lands: a newer builder image changes the build inputs of the same plugin-id, and
/// the builds no longer fail.
fn newer_builder(yaml: &mut String) {
    assert!(yaml.contains("  build:\n"));
    *yaml = yaml.replace(
        "  build:\n",
        &format!("  build:\n    builderImage: {NEWER_BUILDER}\n"),
    );
}

#[tokio::test]
async fn a_new_commit_starts_over_and_is_never_blocked_by_old_retries() {
    let stuck = |set: &mut PluginSet| {
        set.spec.build.max_attempts = 3;
        // Attempt 2 of the old commit would only come in a minute.
        set.spec.build.backoff.base = Duration::from_secs(60);
        set.spec.build.backoff.cap = Duration::from_secs(60);
    };
    let mut h = Harness::start("ctl-new-commit", &[EVERY_BUILD_FAILS], stuck, Check::Off).await;
    let id = h.plugin_id();
    h.wait_plugin(&id, "attempt 1 failed", |p| {
        phase(p) == Some(PluginPhase::BuildFailed)
    })
    .await;
    let old_job: Job = h.get(&id).await.expect("job");
    let old_inputs = annotation(&old_job, "plugsync.dev/build-inputs").expect("inputs");

    h.recommit(newer_builder, &[], stuck).await;
    assert_eq!(h.plugin_id(), id, "same package, same plugin-id");
    let plugin = h
        .wait_plugin(&id, "the new inputs running at attempt 1", |p| {
            phase(p) == Some(PluginPhase::Running)
        })
        .await;
    let job: Job = h.get(&id).await.expect("rebuilt job");
    assert_ne!(
        annotation(&job, "plugsync.dev/build-inputs").as_deref(),
        Some(old_inputs.as_str()),
        "the stale Job was replaced, not waited for"
    );
    assert_ne!(job.metadata.uid, old_job.metadata.uid);
    assert!(
        h.get::<Plugin>(&format!("{id}--2")).await.is_none(),
        "no retry of the old commit was ever started"
    );
    let status = plugin.status.as_ref().expect("status");
    assert_eq!(
        status.built_inputs_hash.as_ref(),
        Some(&plugin.spec.build.inputs_hash),
        "the digest is recorded with the inputs it was built from"
    );
    assert!(status.last_failure.is_none(), "{status:?}");
    assert_eq!(
        h.registry_digest(&plugin.spec.build.image).await,
        status.image_digest
    );
}

#[tokio::test]
async fn retries_of_an_old_commit_are_superseded_and_removed() {
    let tune = |set: &mut PluginSet| {
        set.spec.build.max_attempts = 4;
        fast_retries(set);
    };
    let mut h = Harness::start("ctl-superseded", &[EVERY_BUILD_FAILS], tune, Check::Off).await;
    let id = h.plugin_id();
    let second = format!("{id}--2");
    h.wait_plugin(&second, "attempt 2 failed", |p| {
        phase(p) == Some(PluginPhase::BuildFailed)
    })
    .await;
    h.recommit(newer_builder, &[], tune).await;
    h.wait_plugin(&id, "the new inputs running", |p| {
        phase(p) == Some(PluginPhase::Running)
    })
    .await;
    h.wait_all::<Plugin>("old retries removed", |plugins| plugins.keys().eq([&id]))
        .await;
    // The garbage collector takes the removed attempts' Jobs with them.
    h.wait_all::<Job>("only attempt 1's Job left", |jobs| jobs.keys().eq([&id]))
        .await;
}

#[tokio::test]
async fn failed_attempts_beyond_the_history_limit_are_collected() {
    let h = Harness::start(
        "ctl-history",
        &[(labels::FAIL_BUILD_ATTEMPTS, "3")],
        |set| {
            set.spec.build.max_attempts = 5;
            set.spec.build.failed_history_limit = 1;
            fast_retries(set);
        },
        Check::Off,
    )
    .await;
    let id = h.plugin_id();
    let fourth = format!("{id}--4");
    h.wait_plugin(&fourth, "attempt 4 running", |p| {
        phase(p) == Some(PluginPhase::Running)
    })
    .await;
    // History trimmed to one failed attempt.
    h.wait_gone::<Plugin>(&format!("{id}--2")).await;
    h.wait_gone::<Job>(&id).await;
    h.wait_gone::<Job>(&format!("{id}--2")).await;
    // Kept: the newest failed attempt, with its Job for debugging; the first attempt's
    // Plugin (it owns the others) remembers its failure without its Job.
    let third = h.plugin(&format!("{id}--3")).await;
    assert_eq!(phase(&third), Some(PluginPhase::BuildFailed));
    assert!(h.get::<Job>(&format!("{id}--3")).await.is_some());
    // The first attempt reports the retry that runs; its own failure is remembered. Its
    // status follows attempt 4's by a reconcile: it may name attempt 4 while still showing
    // the Building it saw, so wait for both (a first attempt that never reports Running
    // still fails here, at the wait's deadline).
    let first = h
        .wait_plugin(&id, "attempt 1 reporting attempt 4 running", |p| {
            p.status
                .as_ref()
                .is_some_and(|s| s.current_attempt.as_deref() == Some(fourth.as_str()))
                && phase(p) == Some(PluginPhase::Running)
        })
        .await;
    let failure = first
        .status
        .as_ref()
        .and_then(|s| s.last_failure.as_ref())
        .expect("last failure");
    assert_eq!(failure.reason, "BackoffLimitExceeded", "{failure:?}");
    // Nothing is started again: no rebuild of attempt 1, no new attempt 2.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(h.get::<Job>(&id).await.is_none(), "attempt 1 not rebuilt");
    assert!(h.get::<Plugin>(&format!("{id}--2")).await.is_none());
    assert_eq!(phase(&h.plugin(&fourth).await), Some(PluginPhase::Running));
}

#[tokio::test]
async fn faults_in_the_middle_of_a_reconcile_end_in_one_running_install_and_no_duplicates() {
    use fault_proxy::{FaultProxy, Match, Verb};
    // A slow build, so the faults land while the controller is mid-way.
    let mut h = Harness::prepare("ctl-faults", &[(labels::BUILD_SECONDS, "2")], None).await;
    h.apply(|_| {}, |_| {}).await;
    let proxy = FaultProxy::start(&h.c.kubeconfig()).await;
    let faults = proxy.faults();
    faults.fail_next_matching(2, 409, Match::verb(Verb::Apply).and_path("/jobs/"));
    faults.fail_next_matching(2, 503, Match::verb(Verb::Apply).and_path("/deployments/"));
    faults.fail_next_matching(1, 500, Match::verb(Verb::Apply).and_path("/services/"));
    faults.fail_next_matching(2, 429, Match::verb(Verb::List));
    faults.fail_next_matching(2, 504, Match::verb(Verb::Patch).and_path("/status"));
    faults.delay_next_matching(4, Duration::from_millis(1500), Match::verb(Verb::Get));
    h.run_with(proxy.client(&h.ns), Check::Off);
    let id = h.plugin_id();
    // Watches dropped while the build runs and while the Deployment rolls out.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        faults.drop_watches();
    }
    let plugin = h
        .wait_plugin(&id, "Running despite the faults", |p| {
            phase(p) == Some(PluginPhase::Running)
        })
        .await;
    assert_eq!(faults.pending(), 0, "every injected fault was hit");
    assert!(proxy.stats().injected_failures >= 9, "{:?}", proxy.stats());
    // Converged: one install, no spurious retry attempt, one of each child.
    let plugins: BTreeMap<String, Plugin> = h.wait_all("the Plugins", |_| true).await;
    assert_eq!(
        plugins.keys().collect::<Vec<_>>(),
        [&id],
        "no attempt --2 for a transient fault"
    );
    let jobs: BTreeMap<String, Job> = h.wait_all("the Jobs", |_| true).await;
    assert_eq!(jobs.keys().collect::<Vec<_>>(), [&id]);
    let deployments: BTreeMap<String, Deployment> = h.wait_all("the Deployments", |_| true).await;
    assert_eq!(deployments.keys().collect::<Vec<_>>(), [&id]);
    let services: BTreeMap<String, Service> = h.wait_all("the Services", |_| true).await;
    assert_eq!(services.keys().collect::<Vec<_>>(), [&format!("svc-{id}")]);
    let digest = plugin
        .status
        .as_ref()
        .and_then(|s| s.image_digest.clone())
        .expect("digest");
    assert_eq!(
        h.registry_digest(&plugin.spec.build.image).await.as_deref(),
        Some(digest.as_str())
    );
    assert!(container_image(&deployments[&id]).ends_with(&format!("@{digest}")));
}

#[tokio::test]
async fn a_digest_pinned_after_a_retry_ran_leaves_exactly_one_running_attempt() {
    // Attempt 1 fails, attempt 2 builds and runs; then plugins.lock pins attempt 2's image
    // (`lock --from-cluster`, or `run --commit-lock`) and the next apply hands the digest to
    // the Plugin git declares.
    let h = Harness::start(
        "ctl-pinned",
        &[(labels::FAIL_BUILD_ATTEMPTS, "1")],
        fast_retries,
        Check::Secret,
    )
    .await;
    let id = h.plugin_id();
    let retry = format!("{id}--2");
    let second = h
        .wait_plugin(&retry, "attempt 2 running", |p| {
            phase(p) == Some(PluginPhase::Running)
        })
        .await;
    let digest = second
        .status
        .as_ref()
        .and_then(|s| s.image_digest.clone())
        .expect("attempt 2's digest");
    let failed_job: Job = h.get(&id).await.expect("attempt 1's failed Job");
    h.apply(fast_retries, |plugin| {
        plugin["spec"]["imageDigest"] = json!(digest)
    })
    .await;

    // Attempt 1 runs the pinned image itself (the registry has it), as a fresh cluster
    // would, and its retry is superseded and removed: one attempt runs the plugin.
    let first = h
        .wait_plugin(&id, "attempt 1 running the pinned image itself", |p| {
            phase(p) == Some(PluginPhase::Running)
                && p.status.as_ref().is_some_and(|s| {
                    s.current_attempt.is_none() && s.image_digest.as_ref() == Some(&digest)
                })
        })
        .await;
    assert_eq!(
        condition(&first, "Ready"),
        Some(("True".into(), "Available".into()))
    );
    h.wait_gone::<Plugin>(&retry).await;
    let deployments = h
        .wait_all::<Deployment>("only attempt 1's Deployment", |d| d.len() == 1)
        .await;
    assert_eq!(deployments.keys().collect::<Vec<_>>(), [&id]);
    assert!(container_image(&deployments[&id]).ends_with(&format!("@{digest}")));
    let services: BTreeMap<String, Service> = h.wait_all("the Services", |_| true).await;
    assert_eq!(services.keys().collect::<Vec<_>>(), [&format!("svc-{id}")]);
    // Nothing was built again: attempt 1's Job is still the one that failed.
    let job: Job = h.get(&id).await.expect("job");
    assert_eq!(job.metadata.uid, failed_job.metadata.uid);
    h.wait_gone::<Job>(&retry).await;
    // And it stays that way: no new attempt, no second Deployment.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let plugins: BTreeMap<String, Plugin> = h.wait_all("the Plugins", |_| true).await;
    assert_eq!(plugins.keys().collect::<Vec<_>>(), [&id]);
    let deployments: BTreeMap<String, Deployment> = h.wait_all("the Deployments", |_| true).await;
    assert_eq!(deployments.keys().collect::<Vec<_>>(), [&id]);
}

#[tokio::test]
async fn gc_removes_a_retry_its_running_first_attempt_superseded() {
    // What a controller older than this rule left behind: attempt 1 runs a pinned image
    // itself, and attempt 2 still runs too. No controller runs here.
    let h = Harness::prepare("ctl-gc-superseded", &[], None).await;
    let id = h.plugin_id();
    let digest = format!("sha256:{}", "ab".repeat(32));
    h.apply(
        |_| {},
        |plugin| plugin["spec"]["imageDigest"] = json!(digest),
    )
    .await;
    let plugins = h.api::<Plugin>();
    let first = h.plugin(&id).await;
    let inputs = first.spec.build.inputs_hash.clone();
    let running = json!({"status": {
        "phase": "Running", "imageDigest": digest, "builtInputsHash": inputs}});
    plugins
        .patch_status(&id, &Default::default(), &kube::api::Patch::Merge(&running))
        .await
        .expect("attempt 1 runs");
    let retry = format!("{id}--2");
    let mut second = serde_json::to_value(&first).expect("json");
    second["metadata"] = json!({
        "name": retry,
        "labels": first.metadata.labels,
        "ownerReferences": [first.controller_owner_ref(&()).expect("owner")],
    });
    second["spec"]["attempt"] = json!(2);
    second.as_object_mut().expect("object").remove("status");
    plugins
        .create(
            &PostParams::default(),
            &serde_json::from_value(second).expect("plugin"),
        )
        .await
        .expect("attempt 2");
    plugins
        .patch_status(
            &retry,
            &Default::default(),
            &kube::api::Patch::Merge(&running),
        )
        .await
        .expect("attempt 2 runs");

    let removals = controller::reconcile::collect_garbage(&h.client, &h.ns, None, 3, true)
        .await
        .expect("gc");
    assert_eq!(
        removals,
        vec![controller::history::Removal::Plugin(retry.clone())],
        "superseded, whatever --keep says"
    );
    assert!(h.get::<Plugin>(&retry).await.is_some(), "a dry run");
    controller::reconcile::collect_garbage(&h.client, &h.ns, None, 3, false)
        .await
        .expect("gc");
    h.wait_gone::<Plugin>(&retry).await;
    assert_eq!(phase(&h.plugin(&id).await), Some(PluginPhase::Running));
}

#[tokio::test]
async fn no_attempt_starts_for_a_plugin_being_deleted() {
    let slow_retries = |set: &mut PluginSet| {
        set.spec.build.backoff.base = Duration::from_secs(60);
        set.spec.build.backoff.cap = Duration::from_secs(60);
    };
    let h = Harness::start(
        "ctl-deleting",
        &[EVERY_BUILD_FAILS],
        slow_retries,
        Check::Off,
    )
    .await;
    let id = h.plugin_id();
    h.wait_plugin(&id, "attempt 1 failed", |p| {
        phase(p) == Some(PluginPhase::BuildFailed)
    })
    .await;
    // Deleted with foreground propagation: the garbage collector deletes the children (the
    // failed Job) first, while the Plugin, held by a finalizer, stays with its
    // deletionTimestamp. The Job's deletion wakes the controller, which sees no Job and a
    // remembered failure whose backoff has long passed.
    let plugins = h.api::<Plugin>();
    const HOLD: &str = "cluster.plugsync.test/hold";
    plugins
        .patch(
            &id,
            &Default::default(),
            &kube::api::Patch::Merge(json!({"metadata": {"finalizers": [HOLD]}})),
        )
        .await
        .expect("finalizer");
    plugins
        .delete(
            &id,
            &kube::api::DeleteParams {
                propagation_policy: Some(kube::api::PropagationPolicy::Foreground),
                ..Default::default()
            },
        )
        .await
        .expect("delete");
    h.wait_gone::<Job>(&id).await;
    h.wait_plugin(&id, "the Plugin being deleted", |p| {
        p.metadata.deletion_timestamp.is_some()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        h.get::<Plugin>(&format!("{id}--2")).await.is_none(),
        "no attempt 2 for a Plugin being deleted\n{}",
        h.dump()
    );
    assert!(h.get::<Job>(&id).await.is_none(), "no rebuild either");

    // Released, it is gone, and nothing was left behind.
    plugins
        .patch(
            &id,
            &Default::default(),
            &kube::api::Patch::Json::<()>(
                serde_json::from_value(json!([{"op": "remove", "path": "/metadata/finalizers"}]))
                    .expect("json patch"),
            ),
        )
        .await
        .expect("release");
    h.wait_all::<Plugin>("no Plugin left", |p| p.is_empty())
        .await;
}

#[tokio::test]
async fn the_pluginset_columns_are_filled_under_apply_and_controller() {
    // No git loop: the set was applied (as `plugsync apply` does) and `plugsync controller`
    // runs. The set's status columns still say how it is.
    let h = Harness::start("ctl-set-status", &[], |_| {}, Check::Off).await;
    let sets: Api<PluginSetResource> = h.api();
    let set_name = h.state.set.spec().metadata.name.clone();
    let ready = |s: &PluginSetResource| {
        s.status.as_ref().is_some_and(|st| {
            st.phases.get("Running") == Some(&1)
                && st
                    .conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
        })
    };
    let set = tokio::time::timeout(
        WAIT,
        kube::runtime::wait::await_condition(
            sets,
            &set_name,
            move |s: Option<&PluginSetResource>| s.is_some_and(ready),
        ),
    )
    .await
    .unwrap_or_else(|_| panic!("the set never read Ready\n{}", h.dump()))
    .expect("watch")
    .expect("set");
    let status = set.status.expect("status");
    assert_eq!(status.plugin_count, Some(1));
    assert_eq!(status.message.as_deref(), Some("1 of 1 plugins running"));
    assert_eq!(status.inventory.len(), 1, "the applier's inventory is kept");
    // As kubectl prints it: NAME READY PLUGINS RUNNING COMMIT AGE.
    let printed =
        h.c.kubectl_ok(&["-n", &h.ns, "get", "pluginsets", "--no-headers"]);
    let columns: Vec<&str> = printed.split_whitespace().collect();
    assert_eq!(
        columns[..4],
        [set_name.as_str(), "True", "1", "1"],
        "{printed}"
    );
}
