//! The controller's Kubernetes edge: gathers what [`lifecycle::decide`] needs about one
//! `Plugin`, carries out its decision (children by server-side apply, owned by the Plugin),
//! publishes the status, and records an Event on every phase change.
//!
//! Children are rendered by the same render code as `plugsync render` and the PR diff, from
//! the Plugin's spec, its PluginSet's spec, the package (from the content-addressed cache the
//! git loop fills) and the templates of the ConfigMap the Plugin names (read from the cluster,
//! see [`super::templates`]), so what the diff showed is what runs.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ObjectReference, Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, OwnerReference, Time};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action as RequeueAction;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};
use serde_json::{json, Value};
use tracing::{debug, info, warn};

use super::history::{self, Attempt, Removal};
use super::lifecycle::{
    self, Action, Backoff, Decision, DeploymentState, JobState, Observed, RetryView, Superseded,
};
use plugsync_core::crd::{BuildFailure, Plugin, PluginPhase, PluginSetResource, PluginStatus};
use plugsync_core::model::{LockedPlugin, PluginSet, PluginSetMetadata, API_VERSION};
use plugsync_core::package::Package;
use plugsync_core::render::{self, PluginInput, RenderSettings};
use plugsync_core::resolve::cache::Cache;

/// Field manager of everything the controller writes.
pub(crate) const CONTROLLER_MANAGER: &str = "plugsync-controller";

/// Answers "does the registry still have this digest?" for image reuse.
#[async_trait::async_trait]
pub trait RegistryCheck: Send + Sync {
    /// `Some(true)`/`Some(false)` when the registry answered; `None` when it could not be
    /// asked (then the known digest is trusted).
    async fn has_digest(&self, set: &PluginSetResource, image: &str, digest: &str) -> Option<bool>;
}

/// Shared state of the controller.
pub struct Context {
    /// The Kubernetes client.
    pub client: Client,
    /// Packages (and build contexts, which the context server serves) by sha256.
    pub cache: Cache,
    /// Where build Jobs fetch contexts.
    pub settings: RenderSettings,
    /// Registry check for image reuse (none: known digests are trusted).
    pub registry: Option<Arc<dyn RegistryCheck>>,
    /// Publishes Kubernetes Events.
    pub recorder: Recorder,
    /// Counts builds by result, when metrics are served.
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
    /// Whether the plugin loop keeps each PluginSet's status columns (plugin count, phases,
    /// conditions, message) current, as `plugsync controller` does for sets applied with
    /// `plugsync apply`. Off under `plugsync run`, whose git loop publishes them itself (it
    /// also knows each commit's fate): one writer per field.
    pub publish_set_status: bool,
    /// The templates ConfigMaps, watched, and compiled once each.
    pub(crate) templates: super::templates::TemplatesWatch,
}

impl Context {
    /// A context with the built-in templates and no registry check.
    pub fn new(client: Client, cache: Cache, settings: RenderSettings) -> Context {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: CONTROLLER_MANAGER.into(),
                instance: std::env::var("POD_NAME").ok(),
            },
        );
        Context {
            client,
            cache,
            settings,
            registry: None,
            recorder,
            metrics: None,
            publish_set_status: true,
            templates: super::templates::TemplatesWatch::default(),
        }
    }
}

/// Why a reconcile failed (it is retried with backoff by the controller runtime).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// A Kubernetes API call failed.
    #[error("{0}")]
    Kube(#[from] kube::Error),
    /// Rendering the children failed.
    #[error("{0}")]
    Render(#[from] render::RenderError),
    /// Something the reconcile needs is not there yet.
    #[error("{0}")]
    Waiting(String),
}

/// Reconciles one Plugin.
pub async fn reconcile(
    plugin: Arc<Plugin>,
    ctx: Arc<Context>,
) -> Result<RequeueAction, ReconcileError> {
    let namespace = plugin.namespace().unwrap_or_default();
    let name = plugin.name_any();
    let spec = &plugin.spec;
    let client = &ctx.client;
    if plugin.metadata.deletion_timestamp.is_some() {
        // Being deleted (its children go with it): nothing is started for it, ever.
        debug!(plugin = %name, "being deleted: nothing to do");
        return Ok(RequeueAction::await_change());
    }

    let sets: Api<PluginSetResource> = Api::namespaced(client.clone(), &namespace);
    let Some(set) = sets.get_opt(&spec.plugin_set).await? else {
        publish_status(
            &ctx,
            &plugin,
            &waiting(&format!("PluginSet {} not found", spec.plugin_set)),
            None,
        )
        .await?;
        return Ok(RequeueAction::requeue(Duration::from_secs(30)));
    };

    // The templates the Plugin was rendered with, from the cluster: without them nothing
    // can be rendered, and the Plugin says what it waits for.
    let templates = match ctx
        .templates
        .compiled(client, &namespace, spec.templates.as_deref())
        .await?
    {
        Ok(templates) => templates,
        Err(unavailable) => {
            publish_status(
                &ctx,
                &plugin,
                &templates_unavailable(&plugin, &unavailable),
                None,
            )
            .await?;
            // The ConfigMap's creation triggers a reconcile (the controller watches them);
            // the requeue is a backstop.
            return Ok(RequeueAction::requeue(Duration::from_secs(60)));
        }
    };

    let jobs: Api<Job> = Api::namespaced(client.clone(), &namespace);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
    let services: Api<Service> = Api::namespaced(client.clone(), &namespace);
    let plugins: Api<Plugin> = Api::namespaced(client.clone(), &namespace);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);

    let inputs = &spec.build.inputs_hash;
    let status = plugin.status.clone().unwrap_or_default();
    let mut job = observe_job(&jobs, &pods, &name, inputs).await?;
    let job_exists = job != JobState::Absent;
    if !job_exists {
        // A failed Job the history clean-up removed: the failure is remembered, not rebuilt.
        if let Some(failure) = status
            .last_failure
            .as_ref()
            .filter(|f| &f.inputs_hash == inputs)
        {
            job = JobState::Failed {
                reason: failure.reason.clone(),
                message: failure.message.clone(),
                age: Duration::MAX,
            };
        }
    }
    // A recorded digest counts only for the build inputs it was built from.
    let recorded = status
        .image_digest
        .clone()
        .filter(|_| status.built_inputs_hash.as_ref() == Some(inputs));
    let known = match &job {
        JobState::Succeeded { digest: Some(d) } => Some(d.clone()),
        _ => recorded.clone().or_else(|| spec.image_digest.clone()),
    };
    // The Deployment this Plugin wants, with the digest it would run: a live one rendered from
    // other settings (replicas, env, resources, labels, templates) is outdated like one on
    // another image.
    let wanted = match known.as_deref() {
        Some(digest) => {
            Some(render_children_blocking(&ctx, &plugin, &set, &templates, Some(digest)).await?)
        }
        None => None,
    };
    let wanted_hash = wanted.as_ref().and_then(rendered_deployment_hash);
    let deployment = observe_deployment(
        &deployments,
        &name,
        &spec.build.image,
        known.as_deref(),
        wanted_hash.as_deref(),
    )
    .await?;
    let service_exists = services
        .get_opt(&format!("svc-{}", spec.plugin_id))
        .await?
        .is_some();
    let attempts = plugins
        .list(&ListParams::default().labels(&format!(
            "{}={}",
            render::LABEL_PLUGIN_ID,
            spec.plugin_id
        )))
        .await?
        .items;
    let first = attempts
        .iter()
        .find(|p| p.spec.attempt <= 1 && p.spec.plugin_set == spec.plugin_set);
    let superseded = match first {
        Some(first) if spec.attempt >= 2 => {
            if &first.spec.build.inputs_hash != inputs {
                Some(Superseded::NewInputs)
            } else if runs_itself(first) {
                Some(Superseded::FirstAttemptRuns)
            } else {
                None
            }
        }
        _ => None,
    };
    let next_attempt_exists = attempts
        .iter()
        .any(|p| p.spec.attempt > spec.attempt && &p.spec.build.inputs_hash == inputs);
    let latest_retry = if spec.attempt <= 1 {
        attempts
            .iter()
            .filter(|p| {
                p.spec.attempt >= 2
                    && p.spec.plugin_set == spec.plugin_set
                    && &p.spec.build.inputs_hash == inputs
            })
            .max_by_key(|p| p.spec.attempt)
            .map(retry_view)
    } else {
        None
    };
    // Asked before a build, and after a failed one (a digest pinned since may run instead).
    // Without a registry check, known digests are trusted.
    let registry_has_digest = match (recorded.as_deref().or(spec.image_digest.as_deref()), &job) {
        (Some(digest), JobState::Absent | JobState::Failed { .. }) => match &ctx.registry {
            Some(check) => check.has_digest(&set, &spec.build.image, digest).await,
            None => Some(true),
        },
        _ => None,
    };

    let decision = lifecycle::decide(&Observed {
        spec,
        namespace: &namespace,
        recorded_digest: recorded.as_deref(),
        registry_has_digest,
        job: job.clone(),
        deployment,
        service_exists,
        next_attempt_exists,
        latest_retry,
        superseded,
        max_attempts: set.spec.build.max_attempts,
        backoff: Backoff {
            base: set.spec.build.backoff.base,
            cap: set.spec.build.backoff.cap,
        },
    });
    debug!(plugin = %name, phase = ?decision.phase, actions = ?decision.actions, "decided");

    // Children are rendered once per reconcile, however many of them the decision applies.
    let needs_children = decision
        .actions
        .iter()
        .any(|a| !matches!(a, Action::CreateNextAttempt { .. }));
    let rendered = match wanted {
        Some(r) if decision.image_digest == known => Some(r),
        _ if needs_children => Some(
            render_children_blocking(
                &ctx,
                &plugin,
                &set,
                &templates,
                decision.image_digest.as_deref(),
            )
            .await?,
        ),
        _ => None,
    };
    let starts_something = decision
        .actions
        .iter()
        .any(|a| matches!(a, Action::CreateJob | Action::CreateNextAttempt { .. }));
    if starts_something && !still_wanted(client, &plugin).await? {
        // Deleted (or being deleted) since this reconcile began: no attempt starts for it.
        info!(
            plugin = %format!("{}@{}", plugin.spec.name, plugin.spec.version),
            id = %name,
            "deleted meanwhile: no build and no new attempt"
        );
        return Ok(RequeueAction::await_change());
    }
    for action in &decision.actions {
        carry_out(&ctx, &plugin, action, rendered.as_ref()).await?;
    }
    let failure = match &job {
        JobState::Failed {
            reason, message, ..
        } => Some(BuildFailure {
            inputs_hash: inputs.clone(),
            reason: reason.clone(),
            message: message.clone(),
        }),
        _ => status
            .last_failure
            .clone()
            .filter(|f| &f.inputs_hash == inputs),
    };
    publish_status(&ctx, &plugin, &decision, failure).await?;
    if spec.attempt <= 1 {
        // The first attempt keeps the history of all attempts in bounds.
        let mut seen: Vec<Attempt> = attempts
            .iter()
            .filter(|p| p.spec.plugin_set == spec.plugin_set)
            .map(attempt_of)
            .collect();
        if let Some(me) = seen.iter_mut().find(|a| a.name == name) {
            me.phase = Some(own_phase(
                decision.phase,
                decision.current_attempt.as_deref(),
            ));
            me.has_job = job_exists;
        }
        let removals = history::plan(&seen, inputs, set.spec.build.failed_history_limit as usize);
        remove_attempts(client, &namespace, &removals).await?;
    }
    Ok(match decision.requeue_after {
        Some(after) => RequeueAction::requeue(after),
        None => RequeueAction::await_change(),
    })
}

/// How the controller runtime retries a failed reconcile.
pub(crate) fn error_policy(
    plugin: Arc<Plugin>,
    error: &ReconcileError,
    _ctx: Arc<Context>,
) -> RequeueAction {
    warn!(
        plugin = %format!("{}@{}", plugin.spec.name, plugin.spec.version),
        id = %plugin.name_any(),
        %error,
        "reconcile failed"
    );
    RequeueAction::requeue(Duration::from_secs(match error {
        ReconcileError::Waiting(_) => 5,
        _ => 10,
    }))
}

/// Kubernetes conditions for `specs`, keeping each one's `lastTransitionTime` from `old`
/// unless its status flipped (as kstatus readers expect).
pub(crate) fn kube_conditions(
    specs: &[lifecycle::ConditionSpec],
    old: &[Condition],
    generation: Option<i64>,
) -> Vec<Condition> {
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    specs
        .iter()
        .map(|c| {
            let status = if c.status { "True" } else { "False" }.to_string();
            let previous = old.iter().find(|o| o.type_ == c.type_);
            Condition {
                type_: c.type_.to_string(),
                status: status.clone(),
                reason: c.reason.to_string(),
                message: c.message.clone(),
                observed_generation: generation,
                last_transition_time: previous
                    .filter(|p| p.status == status)
                    .map(|p| p.last_transition_time.clone())
                    .unwrap_or_else(|| now.clone()),
            }
        })
        .collect()
}

/// The body of a JSON merge patch (RFC 7386) that makes a status `new`: a merge patch keeps
/// the fields it does not mention, at every depth, so each field `old` had and `new` dropped
/// is set to null, inside nested objects too (a map of counts that loses a key must lose it
/// on the server). Lists are replaced whole, as merge patches do. Top-level fields in `others`
/// belong to another writer and are left out entirely.
pub(crate) fn status_merge_patch(
    new: &impl serde::Serialize,
    old: &impl serde::Serialize,
    others: &[&str],
) -> Value {
    let mut body = serde_json::to_value(new).unwrap_or_default();
    if let Ok(previous) = serde_json::to_value(old) {
        null_dropped_fields(&mut body, &previous);
    }
    if let Value::Object(fields) = &mut body {
        for key in others {
            fields.remove(*key);
        }
    }
    body
}

/// Sets to null, in `new`, every object field `old` has and `new` lacks, recursively.
fn null_dropped_fields(new: &mut Value, old: &Value) {
    if let (Value::Object(fields), Value::Object(previous)) = (new, old) {
        for (key, old_value) in previous {
            match fields.get_mut(key) {
                None => {
                    fields.insert(key.clone(), Value::Null);
                }
                Some(new_value) => null_dropped_fields(new_value, old_value),
            }
        }
    }
}

/// Deletes in the background: the Job's pods (or a Plugin's children) go with it.
fn background() -> kube::api::DeleteParams {
    kube::api::DeleteParams {
        propagation_policy: Some(kube::api::PropagationPolicy::Background),
        ..Default::default()
    }
}

/// What the history plan needs to know about one attempt's Plugin: its own phase (a first
/// attempt reporting a retry's state failed its own build).
pub(crate) fn attempt_of(plugin: &Plugin) -> Attempt {
    let status = plugin.status.as_ref();
    Attempt {
        name: plugin.name_any(),
        attempt: plugin.spec.attempt.max(1),
        inputs_hash: plugin.spec.build.inputs_hash.clone(),
        phase: status.and_then(|s| {
            s.phase
                .map(|phase| own_phase(phase, s.current_attempt.as_deref()))
        }),
        // Unknown without a GET; deleting an absent Job is a harmless 404.
        has_job: true,
    }
}

/// An attempt's own phase: a first attempt that reports a retry (`current_attempt`) is there
/// because its own build failed.
fn own_phase(published: PluginPhase, current_attempt: Option<&str>) -> PluginPhase {
    match current_attempt {
        Some(_) => PluginPhase::BuildFailed,
        None => published,
    }
}

/// Whether a first attempt runs its own Deployment (not a retry's, which it may report).
fn runs_itself(first: &Plugin) -> bool {
    first.status.as_ref().is_some_and(|s| {
        s.phase == Some(PluginPhase::Running)
            && s.current_attempt.is_none()
            && s.built_inputs_hash.as_ref() == Some(&first.spec.build.inputs_hash)
    })
}

/// What a first attempt reports of a retry, from the retry's status.
fn retry_view(retry: &Plugin) -> RetryView {
    let status = retry.status.clone().unwrap_or_default();
    let is_true = |type_: &str| {
        status
            .conditions
            .iter()
            .any(|c| c.type_ == type_ && c.status == "True")
    };
    RetryView {
        name: retry.name_any(),
        attempt: retry.spec.attempt,
        phase: status.phase,
        ready: is_true("Ready"),
        // A retry that has not published yet is about to start.
        reconciling: status.phase.is_none() || is_true("Reconciling"),
        stalled: is_true("Stalled"),
        message: status.message.unwrap_or_default(),
    }
}

/// Whether `plugin` still exists as this reconcile saw it, not being deleted, and (for a
/// retry) so does the first attempt that owns it: a fresh read just before anything starts,
/// since the reconcile's copy may be older than a deletion.
async fn still_wanted(client: &Client, plugin: &Plugin) -> Result<bool, kube::Error> {
    let api: Api<Plugin> = Api::namespaced(client.clone(), &plugin.namespace().unwrap_or_default());
    let alive = |live: Option<Plugin>, uid: Option<&String>| {
        live.is_some_and(|p| {
            p.metadata.deletion_timestamp.is_none() && p.metadata.uid.as_ref() == uid
        })
    };
    if !alive(
        api.get_opt(&plugin.name_any()).await?,
        plugin.metadata.uid.as_ref(),
    ) {
        return Ok(false);
    }
    if plugin.spec.attempt >= 2 {
        if let Some(owner) = root_owner(plugin) {
            return Ok(alive(api.get_opt(&owner.name).await?, Some(&owner.uid)));
        }
    }
    Ok(true)
}

/// Carries out a history plan: deletes retries' Plugins and first attempts' failed Jobs.
pub(crate) async fn remove_attempts(
    client: &Client,
    namespace: &str,
    removals: &[Removal],
) -> Result<(), kube::Error> {
    let plugins: Api<Plugin> = Api::namespaced(client.clone(), namespace);
    let jobs: Api<Job> = Api::namespaced(client.clone(), namespace);
    for removal in removals {
        let result = match removal {
            Removal::Plugin(name) => plugins.delete(name, &background()).await.map(|_| ()),
            Removal::Job(name) => jobs.delete(name, &background()).await.map(|_| ()),
        };
        match result {
            Ok(()) => info!(
                kind = match removal {
                    Removal::Plugin(_) => "Plugin",
                    Removal::Job(_) => "Job",
                },
                name = removal.name(),
                "failed or superseded attempt removed"
            ),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The status of a Plugin whose templates cannot be had: it keeps its phase (a running
/// plugin keeps running; nothing is changed for it) and says, in its `Stalled` condition,
/// which ConfigMap it waits for.
fn templates_unavailable(plugin: &Plugin, why: &super::templates::Unavailable) -> Decision {
    let old = plugin.status.clone().unwrap_or_default();
    let phase = old.phase.unwrap_or(PluginPhase::Pending);
    let reason = why.reason();
    let mut decision = Decision::new(
        phase,
        why.message(),
        (phase == PluginPhase::Running, reason),
        None,
        Some(reason),
    );
    decision.endpoint = old.endpoint;
    decision.current_attempt = old.current_attempt;
    decision
}

fn waiting(message: &str) -> Decision {
    Decision::new(
        PluginPhase::Pending,
        message.to_string(),
        (false, "Waiting"),
        Some("Waiting"),
        None,
    )
}

/// The `sha256:<64 hex>` a builder wrote to its termination message, if that is what it is.
pub(crate) fn digest_from_termination_message(message: &str) -> Option<String> {
    let m = message.trim();
    let hex = m.strip_prefix("sha256:")?;
    plugsync_core::package::is_sha256_hex(hex).then(|| m.to_string())
}

async fn observe_job(
    jobs: &Api<Job>,
    pods: &Api<Pod>,
    name: &str,
    inputs_hash: &str,
) -> Result<JobState, kube::Error> {
    let Some(job) = jobs.get_opt(name).await? else {
        return Ok(JobState::Absent);
    };
    let built_from = job
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(render::ANNOTATION_BUILD_INPUTS));
    if built_from.is_some_and(|b| b != inputs_hash) {
        return Ok(JobState::Stale);
    }
    let conditions = job
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let true_condition = |t: &str| {
        conditions
            .iter()
            .find(|c| c.type_ == t && c.status == "True")
    };
    let build_pod_message = || async {
        let params = ListParams::default().labels(&format!("batch.kubernetes.io/job-name={name}"));
        let list = pods.list(&params).await?;
        Ok::<Option<String>, kube::Error>(list.items.iter().find_map(|pod| {
            pod.status
                .as_ref()?
                .container_statuses
                .as_ref()?
                .iter()
                .find_map(|c| {
                    (c.name == "build").then_some(())?;
                    c.state.as_ref()?.terminated.as_ref()?.message.clone()
                })
        }))
    };
    if true_condition("Complete").is_some() {
        let digest = build_pod_message()
            .await?
            .and_then(|m| digest_from_termination_message(&m));
        return Ok(JobState::Succeeded { digest });
    }
    if let Some(failed) = true_condition("Failed") {
        let pod_message = build_pod_message().await?.unwrap_or_default();
        let message = if pod_message.trim().is_empty() {
            failed.message.clone().unwrap_or_default()
        } else {
            // The builder's last words, bounded.
            let tail: String = pod_message
                .chars()
                .rev()
                .take(1024)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            tail.trim().to_string()
        };
        let age = failed
            .last_transition_time
            .as_ref()
            .map(|t| {
                let now = k8s_openapi::jiff::Timestamp::now();
                let secs = (now.as_second() - t.0.as_second()).max(0);
                Duration::from_secs(u64::try_from(secs).unwrap_or(0))
            })
            .unwrap_or(Duration::ZERO);
        return Ok(JobState::Failed {
            reason: failed.reason.clone().unwrap_or_else(|| "Failed".into()),
            message,
            age,
        });
    }
    Ok(JobState::Running)
}

/// The applied hash of the Deployment among rendered children.
fn rendered_deployment_hash(rendered: &render::RenderedPlugin) -> Option<String> {
    rendered
        .objects
        .iter()
        .find(|o| o["kind"] == "Deployment")
        .map(crate::apply::applied_hash)
}

async fn observe_deployment(
    deployments: &Api<Deployment>,
    name: &str,
    image: &str,
    digest: Option<&str>,
    wanted_hash: Option<&str>,
) -> Result<DeploymentState, kube::Error> {
    let Some(d) = deployments.get_opt(name).await? else {
        return Ok(DeploymentState::Absent);
    };
    if let Some(wanted) = wanted_hash {
        let live = d
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(crate::apply::ANNOTATION_APPLIED_HASH));
        if live.map(String::as_str) != Some(wanted) {
            return Ok(DeploymentState::Outdated);
        }
    }
    let running = d
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default();
    if let Some(digest) = digest {
        if running != render::image_by_digest(image, digest) {
            return Ok(DeploymentState::Outdated);
        }
    }
    let generation = d.metadata.generation.unwrap_or(0);
    let status = d.status.unwrap_or_default();
    let conditions = status.conditions.unwrap_or_default();
    if let Some(c) = conditions
        .iter()
        .find(|c| c.type_ == "Progressing" && c.status == "False")
    {
        return Ok(DeploymentState::Failed {
            message: c
                .message
                .clone()
                .or_else(|| c.reason.clone())
                .unwrap_or_default(),
        });
    }
    let available = conditions
        .iter()
        .any(|c| c.type_ == "Available" && c.status == "True");
    let current = status.observed_generation.unwrap_or(0) >= generation;
    Ok(if available && current {
        DeploymentState::Available
    } else {
        DeploymentState::Progressing
    })
}

fn owner_reference(plugin: &Plugin) -> Option<OwnerReference> {
    plugin.controller_owner_ref(&())
}

/// The attempt-1 Plugin owns the retries, so deleting it (prune) removes every attempt.
fn root_owner(plugin: &Plugin) -> Option<OwnerReference> {
    if plugin.spec.attempt <= 1 {
        return owner_reference(plugin);
    }
    plugin
        .metadata
        .owner_references
        .as_ref()
        .and_then(|refs| refs.iter().find(|r| r.kind == "Plugin").cloned())
}

async fn carry_out(
    ctx: &Context,
    plugin: &Plugin,
    action: &Action,
    rendered: Option<&render::RenderedPlugin>,
) -> Result<(), ReconcileError> {
    let namespace = plugin.namespace().unwrap_or_default();
    let params = PatchParams::apply(CONTROLLER_MANAGER);
    match action {
        Action::DeleteJob => {
            let name = plugin.name_any();
            let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &namespace);
            match jobs.delete(&name, &background()).await {
                Ok(_) => info!(
                    plugin = %format!("{}@{}", plugin.spec.name, plugin.spec.version),
                    id = %name,
                    "build Job of stale inputs deleted"
                ),
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
        Action::CreateNextAttempt { attempt } => {
            let mut spec = plugin.spec.clone();
            spec.attempt = *attempt;
            let name = render::resource_name(&spec.plugin_id, *attempt);
            let mut labels = plugin.labels().clone();
            labels.insert("app.kubernetes.io/instance".into(), name.clone());
            let object = json!({
                "apiVersion": API_VERSION,
                "kind": "Plugin",
                "metadata": {
                    "name": name,
                    "namespace": namespace,
                    "labels": labels,
                    "annotations": plugin.annotations(),
                    "ownerReferences": root_owner(plugin).into_iter().collect::<Vec<_>>(),
                },
                "spec": spec,
            });
            let api: Api<Plugin> = Api::namespaced(ctx.client.clone(), &namespace);
            api.patch(&name, &params, &Patch::Apply(&object)).await?;
            info!(
                plugin = %format!("{}@{}", plugin.spec.name, plugin.spec.version),
                id = %plugin.name_any(),
                next = %name,
                "next build attempt created"
            );
        }
        Action::CreateJob | Action::ApplyDeployment { .. } | Action::CreateService => {
            let Some(rendered) = rendered else {
                return Err(ReconcileError::Waiting("children were not rendered".into()));
            };
            let kind = match action {
                Action::CreateJob => "Job",
                Action::ApplyDeployment { .. } => "Deployment",
                _ => "Service",
            };
            let Some(mut object) = rendered.objects.iter().find(|o| o["kind"] == kind).cloned()
            else {
                return Err(ReconcileError::Waiting(format!(
                    "render produced no {kind}"
                )));
            };
            if kind == "Job" {
                // The build Job fetches its context from plugsync by sha256.
                // A blocking write (it fsyncs): off the runtime's workers.
                let (cache, bytes) = (ctx.cache.clone(), rendered.context.bytes.clone());
                tokio::task::spawn_blocking(move || cache.put(&bytes))
                    .await
                    .map_err(|e| {
                        ReconcileError::Waiting(format!("storing the build context: {e}"))
                    })?
                    .map_err(|e| {
                        ReconcileError::Waiting(format!("cannot store the build context: {e}"))
                    })?;
            }
            let owner = if kind == "Service" {
                root_owner(plugin)
            } else {
                owner_reference(plugin)
            };
            if kind == "Deployment" {
                // Stamped so the next reconcile sees whether the rendered form changed.
                object = crate::apply::with_applied_hash(&object);
            }
            object["metadata"]["ownerReferences"] = json!(owner.into_iter().collect::<Vec<_>>());
            let name = object["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let api: Api<kube::api::DynamicObject> = match kind {
                "Job" => Api::namespaced_with(
                    ctx.client.clone(),
                    &namespace,
                    &kube::api::ApiResource::erase::<Job>(&()),
                ),
                "Deployment" => Api::namespaced_with(
                    ctx.client.clone(),
                    &namespace,
                    &kube::api::ApiResource::erase::<Deployment>(&()),
                ),
                _ => Api::namespaced_with(
                    ctx.client.clone(),
                    &namespace,
                    &kube::api::ApiResource::erase::<Service>(&()),
                ),
            };
            api.patch(&name, &params, &Patch::Apply(&object)).await?;
            info!(
                plugin = %format!("{}@{}", plugin.spec.name, plugin.spec.version),
                id = %plugin.name_any(),
                %kind,
                %name,
                "applied"
            );
        }
    }
    Ok(())
}

/// [`render_children`] on a blocking thread: reading the package from the cache and
/// rendering are disk and CPU work, which must not hold up the runtime's workers (one, with
/// the shipped `cpu: "1"`: probes, the lease and every other reconcile share it).
async fn render_children_blocking(
    ctx: &Arc<Context>,
    plugin: &Arc<Plugin>,
    set: &PluginSetResource,
    templates: &Arc<render::Compiled>,
    digest: Option<&str>,
) -> Result<render::RenderedPlugin, ReconcileError> {
    let (ctx, plugin, set) = (Arc::clone(ctx), Arc::clone(plugin), set.clone());
    let templates = Arc::clone(templates);
    let digest = digest.map(str::to_string);
    tokio::task::spawn_blocking(move || {
        render_children(&ctx, &plugin, &set, &templates, digest.as_deref())
    })
    .await
    .map_err(|e| ReconcileError::Waiting(format!("rendering the children: {e}")))?
}

/// Renders this Plugin's children with the same code as the PR diff.
fn render_children(
    ctx: &Context,
    plugin: &Plugin,
    set: &PluginSetResource,
    env: &render::Compiled,
    digest: Option<&str>,
) -> Result<render::RenderedPlugin, ReconcileError> {
    let spec = &plugin.spec;
    let bytes = ctx
        .cache
        .get(&spec.package.sha256)
        .map_err(|e| ReconcileError::Waiting(format!("package cache: {e}")))?
        .ok_or_else(|| {
            ReconcileError::Waiting(format!(
                "package sha256:{} not in the cache yet",
                spec.package.sha256
            ))
        })?;
    let package =
        Package::read(&bytes).map_err(|e| ReconcileError::Waiting(format!("package: {e}")))?;
    let locked = LockedPlugin {
        name: spec.name.clone(),
        version: spec.version.clone(),
        source: spec.package.source.clone(),
        sha256: spec.package.sha256.clone(),
        checksum: spec.package.checksum.clone(),
        unique_identifier: spec.unique_identifier.clone(),
        plugin_id: spec.plugin_id.clone(),
        // Not rendered into any object: the lock records it for people.
        signature: None,
    };
    let declared = PluginSet {
        api_version: API_VERSION.to_string(),
        kind: "PluginSet".to_string(),
        metadata: PluginSetMetadata {
            name: set.name_any(),
            namespace: set.namespace(),
        },
        spec: set.spec.0.clone(),
    };
    let rendered = render::render_plugin(
        &declared,
        &PluginInput {
            locked: &locked,
            manifest: &package.manifest,
            package: &bytes,
            runtime: &spec.runtime,
            attempt: spec.attempt,
            image_digest: digest,
            built_images: None,
        },
        env,
        &ctx.settings,
    )?;
    // Build only what was declared: with other templates than the ones the Plugin was
    // rendered with (built-in ones of another plugsync version), the build inputs differ
    // and the Job would be replaced as stale at once.
    let declared_inputs = rendered
        .objects
        .iter()
        .find(|o| o["kind"] == "Plugin")
        .and_then(|o| o["spec"]["build"]["inputsHash"].as_str());
    if declared_inputs != Some(spec.build.inputs_hash.as_str()) {
        return Err(ReconcileError::Waiting(format!(
            "the templates ({}) give other build inputs than the Plugin's ({}): was it \
             rendered by another version of plugsync?",
            spec.templates.as_deref().unwrap_or("built-in"),
            spec.build.inputs_hash
        )));
    }
    Ok(rendered)
}

fn phase_event(phase: PluginPhase, message: &str) -> Event {
    let (type_, reason) = match phase {
        PluginPhase::Pending => (EventType::Normal, "Pending"),
        PluginPhase::Building => (EventType::Normal, "Building"),
        PluginPhase::Running => (EventType::Normal, "Running"),
        PluginPhase::BuildFailed => (EventType::Warning, "BuildFailed"),
        PluginPhase::Failed => (EventType::Warning, "Failed"),
    };
    Event {
        type_,
        reason: reason.into(),
        note: Some(message.chars().take(1000).collect()),
        action: "Reconcile".into(),
        secondary: None,
    }
}

/// Writes the status when it changed (never a no-op write), keeping each condition's
/// `lastTransitionTime` unless its status flipped, and records an Event on a phase change.
async fn publish_status(
    ctx: &Context,
    plugin: &Plugin,
    decision: &Decision,
    last_failure: Option<BuildFailure>,
) -> Result<(), ReconcileError> {
    let old = plugin.status.clone().unwrap_or_default();
    let conditions = kube_conditions(
        &decision.conditions,
        &old.conditions,
        plugin.metadata.generation,
    );
    let new = PluginStatus {
        phase: Some(decision.phase),
        current_attempt: decision.current_attempt.clone(),
        endpoint: decision.endpoint.clone(),
        image_digest: decision.image_digest.clone().or(old.image_digest.clone()),
        built_inputs_hash: if decision.image_digest.is_some() {
            Some(plugin.spec.build.inputs_hash.clone())
        } else {
            old.built_inputs_hash.clone()
        },
        last_failure,
        observed_generation: plugin.metadata.generation,
        conditions,
        message: Some(decision.message.clone()),
    };
    if new == old {
        return Ok(());
    }
    let api: Api<Plugin> =
        Api::namespaced(ctx.client.clone(), &plugin.namespace().unwrap_or_default());
    let status = status_merge_patch(&new, &old, &[]);
    let patch: Value = json!({ "status": status });
    api.patch_status(
        &plugin.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    // Builds are counted by the attempt that ran them, not by a first attempt reporting one.
    let reports_itself = new.current_attempt.is_none() && old.current_attempt.is_none();
    if reports_itself && new.phase == Some(PluginPhase::BuildFailed) && old.phase != new.phase {
        // One line per failed build, with its reason: what a user tails the logs for.
        let failure = new.last_failure.as_ref();
        warn!(
            plugin = %format!("{}@{}", plugin.spec.name, plugin.spec.version),
            attempt = plugin.spec.attempt,
            id = %plugin.name_any(),
            reason = failure.map_or("unknown", |f| f.reason.as_str()),
            detail = failure.map_or(decision.message.as_str(), |f| f.message.trim()),
            "build failed"
        );
    }
    if let (Some(metrics), true) = (&ctx.metrics, reports_itself) {
        use crate::metrics::BuildResult;
        if new.phase == Some(PluginPhase::BuildFailed) && old.phase != new.phase {
            metrics.build_finished(BuildResult::Failed);
        } else if new.built_inputs_hash.is_some() && new.built_inputs_hash != old.built_inputs_hash
        {
            metrics.build_finished(if old.phase == Some(PluginPhase::Building) {
                BuildResult::Succeeded
            } else {
                BuildResult::Reused
            });
        }
    }
    if old.phase != new.phase {
        let reference: ObjectReference = plugin.object_ref(&());
        if let Err(e) = ctx
            .recorder
            .publish(&phase_event(decision.phase, &decision.message), &reference)
            .await
        {
            warn!(error = %e, "could not record an event");
        }
    }
    Ok(())
}

/// What `plugsync gc` removes in `namespace` (of one set, or all): for every plugin, failed
/// attempts beyond `keep` and attempts superseded by newer build inputs, by the same
/// [`history::plan`] the controller follows. Carries it out unless `dry_run`.
pub async fn collect_garbage(
    client: &Client,
    namespace: &str,
    set: Option<&str>,
    keep: usize,
    dry_run: bool,
) -> Result<Vec<Removal>, kube::Error> {
    let plugins: Api<Plugin> = Api::namespaced(client.clone(), namespace);
    let mut params = ListParams::default();
    if let Some(set) = set {
        params = params.labels(&format!("{}={set}", render::LABEL_PLUGINSET));
    }
    let jobs: Api<Job> = Api::namespaced(client.clone(), namespace);
    let job_names: std::collections::BTreeSet<String> = jobs
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .map(|j| j.name_any())
        .collect();
    let mut by_plugin: std::collections::BTreeMap<(String, String), Vec<&Plugin>> =
        Default::default();
    let all = plugins.list(&params).await?.items;
    for p in &all {
        by_plugin
            .entry((p.spec.plugin_set.clone(), p.spec.plugin_id.clone()))
            .or_default()
            .push(p);
    }
    let mut removals = Vec::new();
    for attempts in by_plugin.values() {
        // Without its first attempt a group is being deleted already: nothing to plan.
        let Some(first) = attempts.iter().find(|p| p.spec.attempt <= 1) else {
            continue;
        };
        let seen: Vec<Attempt> = attempts
            .iter()
            .map(|p| Attempt {
                has_job: job_names.contains(&p.name_any()),
                ..attempt_of(p)
            })
            .collect();
        removals.extend(history::plan(&seen, &first.spec.build.inputs_hash, keep));
    }
    if !dry_run {
        remove_attempts(client, namespace, &removals).await?;
    }
    Ok(removals)
}

/// The image digests the controller recorded for the Plugins of `set` in `namespace`, with
/// the build inputs they were built from: what `plugsync lock --from-cluster` pins.
pub async fn recorded_images(
    client: &Client,
    namespace: &str,
    set: &str,
) -> Result<Vec<plugsync_core::model::LockedImage>, kube::Error> {
    let plugins: Api<Plugin> = Api::namespaced(client.clone(), namespace);
    let params = ListParams::default().labels(&format!("{}={set}", render::LABEL_PLUGINSET));
    Ok(plugins
        .list(&params)
        .await?
        .items
        .into_iter()
        .filter_map(|p| {
            let status = p.status?;
            Some(plugsync_core::model::LockedImage {
                inputs_hash: status.built_inputs_hash?,
                image: p.spec.build.image,
                digest: status.image_digest?,
            })
        })
        .collect())
}

#[cfg(test)]
mod merge_patch_tests {
    use super::*;
    use serde_json::json;

    /// Applies a merge patch as RFC 7386 (and the API server) does.
    fn apply(target: &mut Value, patch: &Value) {
        match patch {
            Value::Object(fields) => {
                if !target.is_object() {
                    *target = json!({});
                }
                let map = target.as_object_mut().expect("object");
                for (k, v) in fields {
                    if v.is_null() {
                        map.remove(k);
                    } else {
                        apply(map.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
            other => *target = other.clone(),
        }
    }

    #[test]
    fn a_nested_key_the_new_status_dropped_is_removed_on_the_server() {
        let old =
            json!({"phases": {"Building": 2, "Pending": 1}, "message": "a", "inventory": [1]});
        let new = json!({"phases": {"Running": 2}, "inventory": [1]});
        let patch = status_merge_patch(&new, &old, &["inventory"]);
        let mut live = old.clone();
        apply(&mut live, &patch);
        assert_eq!(live, json!({"phases": {"Running": 2}, "inventory": [1]}));
    }

    #[test]
    fn lists_are_replaced_whole_and_other_writers_fields_are_left_alone() {
        let old = json!({"conditions": [{"type": "A"}, {"type": "B"}], "inventory": ["x"]});
        let new = json!({"conditions": [{"type": "B"}], "inventory": []});
        let patch = status_merge_patch(&new, &old, &["inventory"]);
        assert_eq!(patch, json!({"conditions": [{"type": "B"}]}));
    }
}
