//! Apply: make the cluster match the desired objects, safely and without noise.
//!
//! - **Server-side apply** with field manager `plugsync`; a field another manager owns is a
//!   reported conflict, never silently taken, with one exception: a field a person changed
//!   with kubectl's imperative commands (`kubectl edit`, `patch`, `scale`, `set`, `label`, …,
//!   recorded under `kubectl-<command>`) is drift, and is taken back (`force`) and reported,
//!   as Flux and Argo CD correct drift. A conflict with any other manager, kubectl's own
//!   server-side apply (`kubectl`) included, stays a reported conflict.
//! - **Zero writes when nothing changed.** Live objects are read with one LIST per kind
//!   (selected by the ownership label's presence), so reads do not grow with the number of
//!   plugins. An object whose `plugsync.dev/applied-hash` annotation matches and whose live
//!   state contains everything desired is skipped without any request; otherwise a dry-run
//!   apply tells what the server would store, and a write happens only when that normalized
//!   result differs from the live object. An unchanged repository never bumps a
//!   resourceVersion.
//! - **Prune** deletes objects this set applied before and no longer desires: objects carrying
//!   its ownership label, and objects in its inventory (`PluginSet.status.inventory`, as
//!   Flux's) so prune still works after labels change. An object is only ever deleted if
//!   plugsync's field manager applied it; anything else is left alone. A templates ConfigMap
//!   is pruned only once no Plugin of the set names it (an old version held for its upgrade
//!   and a retry keep rendering from the templates they were created with).
//! - **One owner per object.** An object labelled with another PluginSet of the namespace is
//!   never applied over (adopted) nor pruned: declaring it is a reported conflict, and it
//!   never enters this set's inventory. Plugins are named by plugin-id alone, so two sets
//!   cannot run the same package in one namespace; the first to apply it keeps it.
//! - **Crash-safe.** The inventory is widened to include every object about to be applied
//!   *before* the first write and narrowed after prune, so an interrupted apply leaves nothing
//!   the next run cannot find: no orphans; names are deterministic: no duplicates.
//! - **Retries** with exponential backoff on 429, 5xx, timeouts and connection errors.

pub mod retry;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch,
    PatchParams, PropagationPolicy,
};
use kube::Client;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tracing::{debug, info, warn};

use crate::error::Error;
use plugsync_core::crd::InventoryEntry;
use plugsync_core::model::{PluginSet, API_VERSION};
use plugsync_core::plan::{self, Action, Change, Compare, ObjectKey};
use plugsync_core::render::{LABEL_PLUGINSET, LABEL_TEMPLATES};
pub use retry::RetryPolicy;

/// The field manager plugsync applies with.
pub(crate) const FIELD_MANAGER: &str = "plugsync";

/// How long a newly applied CRD may take to be served before the apply gives up (the API
/// server establishes one in well under a second).
pub(crate) const CRD_ESTABLISHED_TIMEOUT: Duration = Duration::from_secs(30);
pub use plugsync_core::render::ANNOTATION_APPLIED_HASH;

/// What an apply run may do.
#[derive(Debug, Clone, Copy)]
pub struct ApplyOptions {
    /// Send every write with `dryRun=All` and delete nothing.
    pub dry_run: bool,
    /// Delete objects no longer desired.
    pub prune: bool,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions {
            dry_run: false,
            prune: true,
        }
    }
}

/// What one object's apply came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Did not exist; created.
    Created,
    /// Existed and differed; updated.
    Updated,
    /// Already as desired; no write.
    Unchanged,
    /// No longer desired; deleted.
    Pruned,
    /// No longer desired, but kept for now: the Plugin of an older version of a plugin whose
    /// new version is not Running yet (an upgrade never leaves a plugin without a runner), or
    /// a templates ConfigMap such a Plugin (or a retry) still renders from.
    Held,
}

/// The result of an apply run.
#[derive(Debug, Default)]
pub struct ApplyReport {
    /// Every object handled, with what happened to it.
    pub objects: Vec<(ObjectKey, Outcome)>,
    /// Objects that could not be applied or pruned, with the reason (conflicts included).
    pub failed: Vec<(ObjectKey, String)>,
    /// The would-be changes (live versus what the server would store).
    pub changes: Vec<Change>,
    /// Objects whose fields someone changed with kubectl's imperative commands, taken back
    /// (or, in a dry run, to be taken back), with those commands' field managers.
    pub drift: Vec<(ObjectKey, Vec<String>)>,
}

impl ApplyReport {
    /// How many objects came to `outcome`.
    pub fn count(&self, outcome: Outcome) -> usize {
        self.objects.iter().filter(|(_, o)| *o == outcome).count()
    }

    /// `2 created, 1 updated, 5 unchanged, 0 pruned, 0 held, 0 failed`.
    pub fn summary(&self) -> String {
        self.counted([
            "created",
            "updated",
            "unchanged",
            "pruned",
            "held",
            "failed",
        ])
    }

    /// The same counts for a dry run, in the future tense: `2 to create, 1 to update, …`.
    pub fn dry_run_summary(&self) -> String {
        self.counted([
            "to create",
            "to update",
            "unchanged",
            "to remove",
            "held",
            "failed",
        ])
    }

    /// The counts of created, updated, unchanged, pruned, held and failed objects, each
    /// followed by its word.
    fn counted(&self, words: [&str; 6]) -> String {
        let counts = [
            self.count(Outcome::Created),
            self.count(Outcome::Updated),
            self.count(Outcome::Unchanged),
            self.count(Outcome::Pruned),
            self.count(Outcome::Held),
            self.failed.len(),
        ];
        let parts: Vec<String> = counts
            .iter()
            .zip(words)
            .map(|(n, word)| format!("{n} {word}"))
            .collect();
        parts.join(", ")
    }
}

/// Applies objects to one cluster.
pub struct Applier {
    client: Client,
    retry: RetryPolicy,
}

/// The desired `PluginSet` object for a declared set: the inventory holder, applied first.
pub(crate) fn plugin_set_object(set: &PluginSet) -> Value {
    json!({
        "apiVersion": API_VERSION,
        "kind": "PluginSet",
        "metadata": {
            "name": set.metadata.name,
            "namespace": set.namespace(),
            "labels": {
                "app.kubernetes.io/managed-by": "plugsync",
                LABEL_PLUGINSET: set.metadata.name,
            },
        },
        "spec": serde_json::to_value(&set.spec).unwrap_or(Value::Null),
    })
}

/// `sha256` of the canonical JSON of an object (annotation excluded), as stamped on it.
pub(crate) fn applied_hash(object: &Value) -> String {
    let mut copy = object.clone();
    if let Some(annotations) = copy
        .pointer_mut("/metadata/annotations")
        .and_then(Value::as_object_mut)
    {
        annotations.remove(ANNOTATION_APPLIED_HASH);
    }
    hex::encode(Sha256::digest(copy.to_string().as_bytes()))
}

/// `object` with its [`applied_hash`] stamped in its `plugsync.dev/applied-hash` annotation.
pub fn with_applied_hash(object: &Value) -> Value {
    let hash = applied_hash(object);
    let mut out = object.clone();
    if let Some(meta) = out.get_mut("metadata").and_then(Value::as_object_mut) {
        let annotations = meta.entry("annotations").or_insert_with(|| json!({}));
        if let Some(a) = annotations.as_object_mut() {
            a.insert(ANNOTATION_APPLIED_HASH.to_string(), Value::String(hash));
        }
    }
    out
}

fn managed_by_plugsync(object: &Value) -> bool {
    object
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .is_some_and(|entries| {
            entries
                .iter()
                .any(|e| e.get("manager").and_then(Value::as_str) == Some(FIELD_MANAGER))
        })
}

fn inventory_entry(key: &ObjectKey) -> InventoryEntry {
    InventoryEntry {
        api_version: key.api_version.clone(),
        kind: key.kind.clone(),
        namespace: key.namespace.clone().unwrap_or_default(),
        name: key.name.clone(),
    }
}

fn entry_key(entry: &InventoryEntry) -> ObjectKey {
    ObjectKey {
        api_version: entry.api_version.clone(),
        kind: entry.kind.clone(),
        namespace: (!entry.namespace.is_empty()).then(|| entry.namespace.clone()),
        name: entry.name.clone(),
    }
}

/// `(group, version)` of an apiVersion.
fn group_version(api_version: &str) -> (&str, &str) {
    match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    }
}

impl Applier {
    /// An applier using `client`, with the default retry policy.
    pub fn new(client: Client) -> Applier {
        Applier {
            client,
            retry: RetryPolicy::default(),
        }
    }

    /// Uses another retry policy (tests make it fast).
    pub fn with_retry(mut self, retry: RetryPolicy) -> Applier {
        self.retry = retry;
        self
    }

    async fn resource(&self, api_version: &str, kind: &str) -> Result<ApiResource, Error> {
        let (group, version) = group_version(api_version);
        let gvk = GroupVersionKind::gvk(group, version, kind);
        let client = self.client.clone();
        let (resource, _caps) = self
            .retry
            .run(&format!("discover {api_version} {kind}"), || {
                kube::discovery::pinned_kind(&client, &gvk)
            })
            .await?;
        Ok(resource)
    }

    fn api(&self, resource: &ApiResource, namespace: Option<&str>) -> Api<DynamicObject> {
        match namespace {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, resource),
            None => Api::all_with(self.client.clone(), resource),
        }
    }

    /// Applies CRDs (only when they differ) and waits until the API server serves them.
    pub async fn ensure_crds(
        &self,
        crds: &[CustomResourceDefinition],
        options: ApplyOptions,
    ) -> Result<ApplyReport, Error> {
        let mut report = ApplyReport::default();
        let resource = self
            .resource("apiextensions.k8s.io/v1", "CustomResourceDefinition")
            .await?;
        let api = self.api(&resource, None);
        for crd in crds {
            let desired = serde_json::to_value(crd).unwrap_or(Value::Null);
            let key = ObjectKey::of(&desired).map_err(Error::Malformed)?;
            let live = self.get(&api, &key.name).await?;
            self.apply_one(&api, &key, &desired, live.as_ref(), options, &mut report)
                .await;
            if !options.dry_run {
                self.wait_established(&key.name).await?;
            }
        }
        if let Some((key, why)) = report.failed.first() {
            return Err(Error::Refused {
                object: key.to_string(),
                reason: why.clone(),
            });
        }
        Ok(report)
    }

    /// Waits (a watch, not a poll) until the CRD `name` is Established, for at most
    /// [`CRD_ESTABLISHED_TIMEOUT`].
    async fn wait_established(&self, name: &str) -> Result<(), Error> {
        use kube::runtime::wait::{await_condition, conditions};
        let crds: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        let established = await_condition(crds, name, conditions::is_crd_established());
        match tokio::time::timeout(CRD_ESTABLISHED_TIMEOUT, established).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(Error::CrdNotEstablished {
                name: name.to_string(),
                reason: format!("waiting for it: {e}"),
            }),
            Err(_) => Err(Error::CrdNotEstablished {
                name: name.to_string(),
                reason: format!("not within {}s", CRD_ESTABLISHED_TIMEOUT.as_secs()),
            }),
        }
    }

    async fn get(&self, api: &Api<DynamicObject>, name: &str) -> Result<Option<Value>, Error> {
        let object = self
            .retry
            .run(&format!("get {name}"), || api.get_opt(name))
            .await?;
        Ok(object.map(|o| serde_json::to_value(o).unwrap_or(Value::Null)))
    }

    /// Applies a declared set's objects (the PluginSet itself first, then `objects` in the
    /// given order) and prunes what the set no longer declares.
    pub async fn apply_set(
        &self,
        set: &PluginSet,
        objects: &[Value],
        options: ApplyOptions,
    ) -> Result<ApplyReport, Error> {
        let name = &set.metadata.name;
        let namespace = set.namespace();
        let mut report = ApplyReport::default();

        // The PluginSet holds the inventory.
        let set_object = plugin_set_object(set);
        let set_resource = match self.resource(API_VERSION, "PluginSet").await {
            Ok(r) => r,
            // A dry run on a cluster without the CRDs yet (`apply --dry-run` before the first
            // apply): no server can dry-run objects of kinds it does not serve, and there is
            // nothing live to compare with, so everything would be created.
            Err(e) if options.dry_run && e.code() == Some(404) => {
                return Ok(all_new(&set_object, objects));
            }
            Err(e) => return Err(e),
        };
        let set_api = self.api(&set_resource, Some(namespace));
        let live_set = self.get(&set_api, name).await?;
        let old_inventory: BTreeSet<InventoryEntry> = live_set
            .as_ref()
            .and_then(|s| s.pointer("/status/inventory"))
            .and_then(|i| serde_json::from_value::<Vec<InventoryEntry>>(i.clone()).ok())
            .unwrap_or_default()
            .into_iter()
            .collect();
        let set_key = ObjectKey::of(&set_object).map_err(Error::Malformed)?;
        self.apply_one(
            &set_api,
            &set_key,
            &set_object,
            live_set.as_ref(),
            options,
            &mut report,
        )
        .await;
        if let Some((key, why)) = report.failed.first() {
            return Err(Error::Refused {
                object: key.to_string(),
                reason: why.clone(),
            });
        }

        // Live objects: one LIST per kind, by ownership label.
        let mut desired_keys = Vec::with_capacity(objects.len());
        let mut kinds: BTreeMap<(String, String), ApiResource> = BTreeMap::new();
        for object in objects {
            let key = ObjectKey::of(object).map_err(Error::Malformed)?;
            if let std::collections::btree_map::Entry::Vacant(slot) =
                kinds.entry((key.api_version.clone(), key.kind.clone()))
            {
                slot.insert(self.resource(&key.api_version, &key.kind).await?);
            }
            desired_keys.push(key);
        }
        for entry in &old_inventory {
            if let std::collections::btree_map::Entry::Vacant(slot) =
                kinds.entry((entry.api_version.clone(), entry.kind.clone()))
            {
                match self.resource(&entry.api_version, &entry.kind).await {
                    Ok(r) => {
                        slot.insert(r);
                    }
                    Err(e) => {
                        warn!(kind = %entry.kind, error = %e, "kind from the inventory is no longer served")
                    }
                }
            }
        }
        // Every set's objects (the label exists), so one LIST per kind also finds what
        // another PluginSet of the namespace owns: never adopted, never pruned.
        let mut live: BTreeMap<ObjectKey, Value> = BTreeMap::new();
        let mut foreign: BTreeMap<ObjectKey, String> = BTreeMap::new();
        for ((api_version, kind), resource) in &kinds {
            let api = self.api(resource, Some(namespace));
            let params = ListParams::default().labels(LABEL_PLUGINSET);
            let list = self
                .retry
                .run(&format!("list {kind}"), || api.list(&params))
                .await?;
            for item in list.items {
                let mut value = serde_json::to_value(item).unwrap_or(Value::Null);
                value["apiVersion"] = json!(api_version);
                value["kind"] = json!(kind);
                let Ok(key) = ObjectKey::of(&value) else {
                    continue;
                };
                match owning_set(&value) {
                    Some(owner) if owner != name.as_str() => {
                        foreign.insert(key, owner.to_string());
                    }
                    _ => {
                        live.insert(key, value);
                    }
                }
            }
        }

        // An object another set owns is a conflict: reported, not applied, not inventoried.
        let mut owned_elsewhere: BTreeSet<&ObjectKey> = BTreeSet::new();
        for (object, key) in objects.iter().zip(&desired_keys) {
            if let Some(owner) = foreign.get(key) {
                warn!(object = %key, owner = %owner, "owned by another PluginSet: not applied");
                report
                    .failed
                    .push((key.clone(), ownership_conflict(object, name, owner)));
                owned_elsewhere.insert(key);
            }
        }

        // Widen the inventory before the first write, so an interrupted run orphans nothing.
        let desired_inventory: BTreeSet<InventoryEntry> = desired_keys
            .iter()
            .filter(|k| !owned_elsewhere.contains(k))
            .map(inventory_entry)
            .collect();
        let widened: BTreeSet<InventoryEntry> =
            old_inventory.union(&desired_inventory).cloned().collect();
        if !options.dry_run && widened != old_inventory {
            self.write_inventory(&set_api, name, &widened).await?;
        }

        for (object, key) in objects.iter().zip(&desired_keys) {
            if owned_elsewhere.contains(key) {
                continue;
            }
            let resource = &kinds[&(key.api_version.clone(), key.kind.clone())];
            let api = self.api(resource, key.namespace.as_deref());
            self.apply_one(&api, key, object, live.get(key), options, &mut report)
                .await;
        }

        // Prune: labelled objects and inventory entries that are no longer desired.
        let desired_set: BTreeSet<&ObjectKey> = desired_keys.iter().collect();
        let mut kept_inventory = desired_inventory.clone();
        if options.prune {
            let mut candidates: BTreeSet<ObjectKey> = live
                .keys()
                .filter(|k| !desired_set.contains(k))
                .cloned()
                .collect();
            candidates.extend(
                old_inventory
                    .iter()
                    .map(entry_key)
                    .filter(|k| !desired_set.contains(k)),
            );
            // Templates ConfigMaps last: whether a Plugin still names one depends on which
            // Plugins this prune removes.
            let is_config_map = |k: &&ObjectKey| k.api_version == "v1" && k.kind == "ConfigMap";
            let ordered = candidates
                .iter()
                .rev()
                .filter(|k| !is_config_map(k))
                .chain(candidates.iter().rev().filter(is_config_map));
            let mut pruned_plugins: BTreeSet<String> = BTreeSet::new();
            for key in ordered {
                let Some(resource) = kinds.get(&(key.api_version.clone(), key.kind.clone())) else {
                    continue;
                };
                let api = self.api(resource, key.namespace.as_deref());
                let object = match live.get(key) {
                    Some(o) => Some(o.clone()),
                    None => self.get(&api, &key.name).await?,
                };
                let Some(object) = object else { continue };
                if let Some(owner) = owning_set(&object).filter(|o| *o != name.as_str()) {
                    // Another set took it over (or was given it): its object now, not ours
                    // to prune, and no longer in our inventory.
                    info!(object = %key, owner = %owner, "not pruned: owned by another PluginSet");
                    continue;
                }
                if !managed_by_plugsync(&object) {
                    // Retries the controller created, or someone else's object: not ours to prune.
                    debug!(object = %key, "not pruned: plugsync never applied it");
                    continue;
                }
                if replacement_not_running(&object, objects, &live) {
                    info!(object = %key, "kept until the new version of its plugin is Running");
                    kept_inventory.insert(inventory_entry(key));
                    report.objects.push((key.clone(), Outcome::Held));
                    continue;
                }
                if key.kind == "ConfigMap"
                    && is_templates_config_map(&object)
                    && templates_in_use(objects, &live, &report.failed, &pruned_plugins)
                        .contains(key.name.as_str())
                {
                    // A held old version or a retry still renders from it: pruned by the
                    // first apply after the last Plugin naming it is gone.
                    info!(object = %key, "kept while a Plugin of the set still names it");
                    kept_inventory.insert(inventory_entry(key));
                    report.objects.push((key.clone(), Outcome::Held));
                    continue;
                }
                report.changes.push(deletion_change(key, &object));
                if options.dry_run {
                    report.objects.push((key.clone(), Outcome::Pruned));
                    if key.kind == "Plugin" {
                        pruned_plugins.insert(key.name.clone());
                    }
                    continue;
                }
                let params = DeleteParams {
                    propagation_policy: Some(PropagationPolicy::Background),
                    ..DeleteParams::default()
                };
                let result = self
                    .retry
                    .run(&format!("delete {key}"), || api.delete(&key.name, &params))
                    .await;
                match result {
                    Ok(_) => {
                        info!(object = %key, "pruned");
                        report.objects.push((key.clone(), Outcome::Pruned));
                        if key.kind == "Plugin" {
                            pruned_plugins.insert(key.name.clone());
                        }
                    }
                    Err(e) if e.code() == Some(404) => {
                        report.objects.push((key.clone(), Outcome::Pruned));
                        if key.kind == "Plugin" {
                            pruned_plugins.insert(key.name.clone());
                        }
                    }
                    Err(e) => {
                        kept_inventory.insert(inventory_entry(key));
                        report.failed.push((key.clone(), e.to_string()));
                    }
                }
            }
        } else {
            kept_inventory = widened.clone();
        }
        // Objects that failed to apply stay in the inventory (they may exist half-applied);
        // another set's objects never enter it.
        for (key, _) in &report.failed {
            if desired_set.contains(key) && !owned_elsewhere.contains(key) {
                kept_inventory.insert(inventory_entry(key));
            }
        }
        if !options.dry_run && kept_inventory != widened {
            self.write_inventory(&set_api, name, &kept_inventory)
                .await?;
        }
        Ok(report)
    }

    async fn write_inventory(
        &self,
        api: &Api<DynamicObject>,
        name: &str,
        inventory: &BTreeSet<InventoryEntry>,
    ) -> Result<(), Error> {
        let body = json!({"status": {"inventory": inventory.iter().collect::<Vec<_>>()}});
        let patch = Patch::Merge(&body);
        let params = PatchParams::default();
        self.retry
            .run("write inventory", || {
                api.patch_status(name, &params, &patch)
            })
            .await?;
        debug!(entries = inventory.len(), "inventory written");
        Ok(())
    }

    /// Applies one object: skip, dry-run then write, recording the outcome. Failures are
    /// recorded in the report so one bad object does not stop the others.
    async fn apply_one(
        &self,
        api: &Api<DynamicObject>,
        key: &ObjectKey,
        object: &Value,
        live: Option<&Value>,
        options: ApplyOptions,
        report: &mut ApplyReport,
    ) {
        let desired = with_applied_hash(object);
        if let Some(live) = live {
            let hash_matches = live
                .pointer("/metadata/annotations")
                .and_then(|a| a.get(ANNOTATION_APPLIED_HASH))
                .and_then(Value::as_str)
                == desired
                    .pointer("/metadata/annotations")
                    .and_then(|a| a.get(ANNOTATION_APPLIED_HASH))
                    .and_then(Value::as_str);
            if hash_matches && contains_desired(&desired, live, key) {
                report.objects.push((key.clone(), Outcome::Unchanged));
                return;
            }
        }
        let patch = Patch::Apply(&desired);
        let dry = PatchParams::apply(FIELD_MANAGER).dry_run();
        let forced_dry = PatchParams::apply(FIELD_MANAGER).dry_run().force();
        let mut force = false;
        let mut attempt = self
            .retry
            .run(&format!("dry-run apply {key}"), || {
                api.patch(&key.name, &dry, &patch)
            })
            .await;
        if let Err(e) = &attempt {
            if let Some(editors) = conflicting_managers(e).filter(|m| is_drift(m)) {
                info!(object = %key, edited_by = %editors.join(", "), "taking back fields changed by hand (drift)");
                report.drift.push((key.clone(), editors));
                force = true;
                attempt = self
                    .retry
                    .run(&format!("dry-run apply {key}"), || {
                        api.patch(&key.name, &forced_dry, &patch)
                    })
                    .await;
            }
        }
        let would_be = match attempt {
            Ok(o) => serde_json::to_value(o).unwrap_or(Value::Null),
            Err(e) => {
                report.failed.push((key.clone(), e.to_string()));
                return;
            }
        };
        // One comparison decides (unchanged: no write) and, when it differs, is the change
        // reported. List items may lack identity fields; the caller matched them by key.
        let would_be = with_identity(would_be, key);
        let live_now = live.map(|l| with_identity(l.clone(), key));
        let change = plan::plan(
            std::slice::from_ref(&would_be),
            live_now.as_slice(),
            Compare::Exact,
        )
        .ok()
        .and_then(|p| p.changes.into_iter().next());
        if live.is_some()
            && change
                .as_ref()
                .is_some_and(|c| c.action == Action::Unchanged)
        {
            report.objects.push((key.clone(), Outcome::Unchanged));
            return;
        }
        report
            .changes
            .extend(change.filter(|c| c.action != Action::Unchanged));
        let outcome = if live.is_some() {
            Outcome::Updated
        } else {
            Outcome::Created
        };
        if options.dry_run {
            report.objects.push((key.clone(), outcome));
            return;
        }
        let params = if force {
            PatchParams::apply(FIELD_MANAGER).force()
        } else {
            PatchParams::apply(FIELD_MANAGER)
        };
        match self
            .retry
            .run(&format!("apply {key}"), || {
                api.patch(&key.name, &params, &patch)
            })
            .await
        {
            Ok(_) => {
                debug!(object = %key, ?outcome, "applied");
                report.objects.push((key.clone(), outcome));
            }
            Err(e) => report.failed.push((key.clone(), e.to_string())),
        }
    }
}

/// The PluginSet a live object belongs to, by its `plugsync.dev/pluginset` label.
fn owning_set(object: &Value) -> Option<&str> {
    object
        .pointer("/metadata/labels")
        .and_then(|labels| labels.get(LABEL_PLUGINSET))
        .and_then(Value::as_str)
}

/// Why `object`, which the set `set` declares, is not applied: the set `owner` owns it. A
/// Plugin is named by its plugin-id alone, so two sets declaring the same package in one
/// namespace would otherwise take each other's Plugin over.
fn ownership_conflict(object: &Value, set: &str, owner: &str) -> String {
    let what = match (
        object["spec"]["name"].as_str(),
        object["spec"]["version"].as_str(),
    ) {
        (Some(plugin), Some(version)) if object["kind"] == "Plugin" => {
            format!("the same package ({plugin} {version})")
        }
        _ => "an object of the same name".to_string(),
    };
    format!(
        "owned by PluginSet {owner:?} (label {LABEL_PLUGINSET}={owner}), and PluginSet {set:?} \
         declares {what}: plugsync never takes over or prunes another set's objects. Two \
         PluginSets of one namespace cannot run the same package: declare it in one of them, \
         or give each set its own namespace"
    )
}

/// The report of a dry run where nothing exists yet: every object would be created.
fn all_new(set_object: &Value, objects: &[Value]) -> ApplyReport {
    let all: Vec<Value> = std::iter::once(set_object.clone())
        .chain(objects.iter().cloned())
        .collect();
    let mut report = ApplyReport::default();
    for object in &all {
        if let Ok(key) = ObjectKey::of(object) {
            report.objects.push((key, Outcome::Created));
        }
    }
    if let Ok(plan) = plan::plan(&all, &[], Compare::Exact) {
        report.changes = plan.changes;
    }
    report
}

/// The field managers a server-side apply conflicted with, read from the API server's 409
/// (`Apply failed with 1 conflict: conflict with "kubectl-patch": .spec.x`), if that is what
/// `error` is.
fn conflicting_managers(error: &Error) -> Option<Vec<String>> {
    let Error::Api {
        source: kube::Error::Api(status),
        ..
    } = error
    else {
        return None;
    };
    if status.code != 409 {
        return None;
    }
    let message = &status.message;
    let mut managers: Vec<String> = message
        .split("conflict with \"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .map(str::to_string)
        .collect();
    managers.sort();
    managers.dedup();
    (!managers.is_empty()).then_some(managers)
}

/// Whether every manager is one of kubectl's imperative commands (`kubectl-edit`,
/// `kubectl-patch`, `kubectl-scale`, …): a person's change by hand, which GitOps undoes.
/// kubectl's server-side apply records `kubectl` and is a deliberate co-owner, not drift.
fn is_drift(managers: &[String]) -> bool {
    !managers.is_empty() && managers.iter().all(|m| m.starts_with("kubectl-"))
}

/// For a Plugin about to be pruned: whether a desired Plugin of the same plugin (`spec.name`)
/// exists whose install (any attempt) is not Running yet, so the old one must keep serving.
fn replacement_not_running(
    old: &Value,
    desired: &[Value],
    live: &BTreeMap<ObjectKey, Value>,
) -> bool {
    if old["kind"] != "Plugin" {
        return false;
    }
    let name = &old["spec"]["name"];
    let replacements: Vec<&Value> = desired
        .iter()
        .filter(|d| d["kind"] == "Plugin" && &d["spec"]["name"] == name)
        .collect();
    if replacements.is_empty() {
        return false; // removed, not upgraded: prune now
    }
    let running = |plugin_id: &Value| {
        live.values().any(|l| {
            l["kind"] == "Plugin"
                && &l["spec"]["pluginId"] == plugin_id
                && l["status"]["phase"] == "Running"
        })
    };
    !replacements.iter().any(|r| running(&r["spec"]["pluginId"]))
}

/// Whether a live ConfigMap is a templates ConfigMap (`plugsync.dev/templates` label).
fn is_templates_config_map(object: &Value) -> bool {
    object
        .pointer("/metadata/labels")
        .and_then(|labels| labels.get(LABEL_TEMPLATES))
        .is_some()
}

/// The templates ConfigMaps the set's Plugins name once this apply is done: each desired
/// Plugin's, and each live Plugin's that stays as it is — an old version held for its
/// upgrade, a retry the controller created (it keeps the templates it was created with), a
/// desired Plugin whose apply failed — but not one pruned now (`pruned`) nor a retry of one
/// pruned now (garbage-collected with it). The controller renders a Plugin's children from
/// the ConfigMap it names, so pruning one still named would leave that Plugin unmanaged
/// (`TemplatesMissing`).
fn templates_in_use<'a>(
    desired: &'a [Value],
    live: &'a BTreeMap<ObjectKey, Value>,
    failed: &[(ObjectKey, String)],
    pruned: &BTreeSet<String>,
) -> BTreeSet<&'a str> {
    let named = |plugin: &'a Value| plugin["spec"]["templates"].as_str();
    let mut in_use: BTreeSet<&str> = desired
        .iter()
        .filter(|d| d["kind"] == "Plugin")
        .filter_map(named)
        .collect();
    let replaced_by_apply = |key: &ObjectKey| {
        !failed.iter().any(|(k, _)| k == key)
            && desired.iter().any(|d| {
                d["kind"] == "Plugin" && d["metadata"]["name"].as_str() == Some(key.name.as_str())
            })
    };
    for (key, plugin) in live.iter().filter(|(k, _)| k.kind == "Plugin") {
        let owner_pruned = plugin["metadata"]["ownerReferences"]
            .as_array()
            .is_some_and(|refs| {
                refs.iter().any(|r| {
                    r["kind"] == "Plugin" && r["name"].as_str().is_some_and(|n| pruned.contains(n))
                })
            });
        if pruned.contains(&key.name) || owner_pruned || replaced_by_apply(key) {
            continue;
        }
        in_use.extend(named(plugin));
    }
    in_use
}

fn with_identity(mut object: Value, key: &ObjectKey) -> Value {
    object["apiVersion"] = json!(key.api_version);
    object["kind"] = json!(key.kind);
    object
}

/// Whether `live` holds every field of `desired` (API-server defaults and fields of other
/// managers aside): the no-request idempotency check.
fn contains_desired(desired: &Value, live: &Value, key: &ObjectKey) -> bool {
    let desired = with_identity(desired.clone(), key);
    let live = with_identity(live.clone(), key);
    plan::plan(
        std::slice::from_ref(&desired),
        std::slice::from_ref(&live),
        Compare::DesiredSubset,
    )
    .is_ok_and(|p| p.changes.iter().all(|c| c.action == Action::Unchanged))
}

fn deletion_change(key: &ObjectKey, live: &Value) -> Change {
    let live = with_identity(live.clone(), key);
    plan::plan(&[], std::slice::from_ref(&live), Compare::Exact)
        .ok()
        .and_then(|p| p.changes.into_iter().next())
        .unwrap_or_else(|| Change {
            key: key.clone(),
            action: Action::Delete,
            reason: "no longer desired".into(),
            desired: None,
            live: Some(live),
            changed_paths: Vec::new(),
            compare: Compare::Exact,
        })
}

#[cfg(test)]
mod drift_tests {
    use super::*;

    fn status(code: u16, message: &str) -> Error {
        Error::api(
            "dry-run apply Plugin ns/x",
            kube::Error::Api(Box::new(kube::core::Status {
                code,
                message: message.into(),
                ..Default::default()
            })),
        )
    }

    fn conflict(message: &str) -> Error {
        status(409, message)
    }

    #[test]
    fn the_managers_of_a_conflict_are_read_from_the_servers_message() {
        let e = conflict(
            "Apply failed with 2 conflicts: conflict with \"kubectl-patch\": .spec.runtime.replicas\n\
             conflict with \"kubectl-edit\" using plugsync.dev/v1alpha1: .spec.version",
        );
        assert_eq!(
            conflicting_managers(&e),
            Some(vec![
                "kubectl-edit".to_string(),
                "kubectl-patch".to_string()
            ])
        );
        let not_an_answer = Error::Core(plugsync_core::Error::Cluster("x".into()));
        assert_eq!(conflicting_managers(&not_an_answer), None);
        let not_a_conflict = status(422, "conflict with \"a\"");
        assert_eq!(conflicting_managers(&not_a_conflict), None);
    }

    #[test]
    fn only_kubectl_imperative_edits_are_drift() {
        let m = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        assert!(is_drift(&m(&["kubectl-edit", "kubectl-scale"])));
        assert!(
            !is_drift(&m(&["kubectl"])),
            "kubectl apply --server-side co-owns"
        );
        assert!(!is_drift(&m(&["kubectl-patch", "operator"])));
        assert!(!is_drift(&m(&["helm"])));
        assert!(!is_drift(&[]));
    }
}
