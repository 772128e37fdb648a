//! The PluginSet status columns (`kubectl get pluginsets`: READY, PLUGINS, RUNNING, and the
//! message) for sets no git loop follows: applied with `plugsync apply`, driven by
//! `plugsync controller`.
//!
//! Who writes what, so no two writers ever fight over a field (each writes only its own
//! fields, by JSON merge patch):
//! - the applier: `inventory`;
//! - under `plugsync run`, the git loop: everything else (it alone knows a commit's fate, and
//!   this loop is then off: [`super::Context::publish_set_status`]);
//! - otherwise this loop: [`OWNED`], composed from the set's Plugins alone by the same pure
//!   [`compose`] as the git loop's. The git loop's own fields (commits, errors, handled
//!   reconcile requests) are never touched.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action as RequeueAction;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{watcher, Controller};
use kube::ResourceExt;
use serde_json::{json, Value};
use tracing::{debug, warn};

use super::reconcile::{kube_conditions, status_merge_patch, Context};
use crate::gitops::status::{compose, declared_and_held, PassResult, PhaseCounts};
use plugsync_core::crd::PluginSetResource;
use plugsync_core::crd::{Plugin, PluginSetStatus};
use plugsync_core::render::LABEL_PLUGINSET;

/// The status fields this loop writes (JSON names).
pub(crate) const OWNED: [&str; 5] = [
    "observedGeneration",
    "pluginCount",
    "phases",
    "message",
    "conditions",
];

/// Keeps the status of every PluginSet in `namespace` current until `shutdown` resolves: on
/// every change of a set and of any of its Plugins (all attempts, all versions).
pub(crate) async fn run(
    ctx: Arc<Context>,
    namespace: String,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let sets: Api<PluginSetResource> = Api::namespaced(client.clone(), &namespace);
    let plugins: Api<Plugin> = Api::namespaced(client, &namespace);
    let shutdown = futures::FutureExt::shared(shutdown);
    let controller = Controller::new(sets, watcher::Config::default());
    let store = controller.store();
    let done = controller
        .watches(plugins, watcher::Config::default(), |plugin: Plugin| {
            plugin
                .namespace()
                .map(|ns| ObjectRef::new(&plugin.spec.plugin_set).within(&ns))
        })
        .graceful_shutdown_on(shutdown.clone())
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((set, _)) => debug!(set = %set.name, "set status refreshed"),
                Err(e) => warn!(error = %e, "set status refresh failed"),
            }
        });
    super::until_stopped(done, store, shutdown).await;
}

async fn reconcile(
    set: Arc<PluginSetResource>,
    ctx: Arc<Context>,
) -> Result<RequeueAction, kube::Error> {
    if set.metadata.deletion_timestamp.is_some() {
        return Ok(RequeueAction::await_change());
    }
    let namespace = set.namespace().unwrap_or_default();
    let name = set.name_any();
    let plugins: Api<Plugin> = Api::namespaced(ctx.client.clone(), &namespace);
    let list = plugins
        .list(&ListParams::default().labels(&format!("{LABEL_PLUGINSET}={name}")))
        .await?
        .items;
    let old = set.status.clone().unwrap_or_default();
    let new = compose_status(&list, &old, set.metadata.generation);
    if let Some(patch) = owned_patch(&new, &old) {
        let sets: Api<PluginSetResource> = Api::namespaced(ctx.client.clone(), &namespace);
        sets.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&json!({ "status": patch })),
        )
        .await?;
    }
    Ok(RequeueAction::await_change())
}

fn error_policy(
    set: Arc<PluginSetResource>,
    error: &kube::Error,
    _ctx: Arc<Context>,
) -> RequeueAction {
    warn!(set = %set.name_any(), %error, "cannot refresh the PluginSet status");
    RequeueAction::requeue(Duration::from_secs(10))
}

/// `old` with the fields this loop owns made to say what `plugins` (every Plugin of the set)
/// say, for a set of `generation`.
pub(crate) fn compose_status(
    plugins: &[Plugin],
    old: &PluginSetStatus,
    generation: Option<i64>,
) -> PluginSetStatus {
    let (declared, held) = declared_and_held(plugins);
    let counts = PhaseCounts::of(plugins);
    let (message, conditions) = compose(&PassResult::Unfollowed { held }, Some(declared), &counts);
    PluginSetStatus {
        observed_generation: generation,
        plugin_count: Some(declared as i64),
        phases: counts.phases,
        message: Some(message),
        conditions: kube_conditions(&conditions, &old.conditions, generation),
        ..old.clone()
    }
}

/// The merge patch of the [`OWNED`] fields that makes `old` into `new`, or `None` when they
/// already agree (no write). Fields outside [`OWNED`] are never in it, so another writer's
/// concurrent change to them is never undone.
pub(crate) fn owned_patch(new: &PluginSetStatus, old: &PluginSetStatus) -> Option<Value> {
    let owned = |status: &PluginSetStatus| -> Value {
        let mut value = serde_json::to_value(status).unwrap_or_default();
        if let Value::Object(fields) = &mut value {
            fields.retain(|k, _| OWNED.contains(&k.as_str()));
        }
        value
    };
    let (new, old) = (owned(new), owned(old));
    (new != old).then(|| status_merge_patch(&new, &old, &[]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use plugsync_core::crd::{InventoryEntry, PluginPhase};

    use plugsync_testkit::plugin;

    #[test]
    fn the_patch_holds_only_this_loops_fields_and_none_when_nothing_changed() {
        let old = PluginSetStatus {
            last_applied_commit: Some("abc".into()),
            inventory: vec![InventoryEntry {
                api_version: "plugsync.dev/v1alpha1".into(),
                kind: "Plugin".into(),
                namespace: "ns".into(),
                name: "a".into(),
            }],
            phases: [("Building".to_string(), 1)].into(),
            ..Default::default()
        };
        let plugins = [plugin("a", 1, PluginPhase::Running)];
        let new = compose_status(&plugins, &old, Some(3));
        assert_eq!(new.inventory, old.inventory);
        assert_eq!(new.last_applied_commit, old.last_applied_commit);
        let patch = owned_patch(&new, &old).expect("a change");
        let mut keys: Vec<&str> = patch
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "conditions",
                "message",
                "observedGeneration",
                "phases",
                "pluginCount"
            ]
        );
        assert_eq!(patch["phases"], json!({"Building": null, "Running": 1}));
        assert_eq!(patch["pluginCount"], 1);
        assert_eq!(patch["message"], "1 of 1 plugins running");
        // Applied as the server would, the next refresh has nothing to write.
        let again = compose_status(&plugins, &new, Some(3));
        assert_eq!(owned_patch(&again, &new), None);
    }
}
