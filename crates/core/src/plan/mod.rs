//! The plan stage: what to create, update and delete so the cluster matches the desired
//! objects, like `kubectl diff` or Argo CD's diff but without the noise.
//!
//! Pure functions over full Kubernetes objects (`serde_json::Value`): no I/O, no client.
//! Both sides are [`normalize`]d first, so fields the API server writes (`managedFields`,
//! `resourceVersion`, `status`, …) never show up as changes. Secret values never leave
//! this module in readable form: [`Change`]'s `Debug`, its `reason` and `changed_paths`,
//! and [`display_diff`] show `***` and key names only.

use std::cmp::Ordering;
use std::collections::btree_map::{BTreeMap, Entry};
use std::fmt;

use serde_json::Value;

mod diff;
mod display;
mod normalize;
mod path;
mod secret;

pub use display::{display_diff, display_diff_between};
pub use normalize::normalize;

/// How many changed paths an update's `reason` names before it says "and N more".
const REASON_PATHS: usize = 5;

/// Why a plan could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// An object lacks what identifies it; the message names the missing field.
    #[error("{0}")]
    Malformed(String),

    /// An object in the input lacks apiVersion, kind or metadata.name (or is not an object).
    #[error("{side} object #{index}: {reason}")]
    InvalidObject {
        /// Which input list the object is in.
        side: Side,
        /// Its 0-based position in that list.
        index: usize,
        /// What is missing or wrong.
        reason: String,
    },

    /// The same object appears twice in one input list: which copy is meant is unknowable.
    #[error("{side} objects hold {key} more than once")]
    DuplicateObject {
        /// Which input list holds the duplicate.
        side: Side,
        /// The repeated object.
        key: ObjectKey,
    },
}

/// Which input of [`plan`] an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The desired objects.
    Desired,
    /// The live (or "before") objects.
    Live,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Desired => "desired",
            Side::Live => "live",
        })
    }
}

/// Identifies one Kubernetes object, so desired and live objects can be paired.
///
/// The full `apiVersion` is part of the identity: pass live objects read with the same
/// versions the desired objects use. Ordering is the order objects are applied in:
/// by namespace (cluster-scoped first), then by kind (CustomResourceDefinition, Namespace,
/// ServiceAccount, Secret, ConfigMap, Plugin, Service, Job, Deployment, then the rest
/// alphabetically), then by name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectKey {
    /// `apiVersion`, such as `apps/v1`.
    pub api_version: String,
    /// `kind`, such as `Deployment`.
    pub kind: String,
    /// `metadata.namespace`; `None` for cluster-scoped objects (or when not given).
    pub namespace: Option<String>,
    /// `metadata.name`.
    pub name: String,
}

/// The kinds whose apply order matters: each may be needed by the ones after it.
const KIND_ORDER: &[&str] = &[
    "CustomResourceDefinition",
    "Namespace",
    "ServiceAccount",
    "Secret",
    "ConfigMap",
    "Plugin",
    "Service",
    "Job",
    "Deployment",
];

fn kind_rank(kind: &str) -> usize {
    KIND_ORDER
        .iter()
        .position(|k| *k == kind)
        .unwrap_or(KIND_ORDER.len())
}

impl ObjectKey {
    /// Reads the key of a full Kubernetes object; the error names the missing field.
    pub fn of(obj: &Value) -> Result<ObjectKey, PlanError> {
        if !obj.is_object() {
            return Err(PlanError::Malformed("not a JSON object".into()));
        }
        let metadata = obj.get("metadata");
        let namespace = match metadata.and_then(|m| m.get("namespace")) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.is_empty() => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                return Err(PlanError::Malformed(
                    "metadata.namespace is not a string".into(),
                ))
            }
        };
        Ok(ObjectKey {
            api_version: required(obj.get("apiVersion"), "apiVersion")?,
            kind: required(obj.get("kind"), "kind")?,
            namespace,
            name: required(metadata.and_then(|m| m.get("name")), "metadata.name")?,
        })
    }
}

fn required(value: Option<&Value>, field: &str) -> Result<String, PlanError> {
    match value {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        None | Some(Value::Null) | Some(Value::String(_)) => {
            Err(PlanError::Malformed(format!("missing {field}")))
        }
        Some(_) => Err(PlanError::Malformed(format!("{field} is not a string"))),
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {}/{}", self.kind, ns, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

impl Ord for ObjectKey {
    fn cmp(&self, other: &Self) -> Ordering {
        self.namespace
            .cmp(&other.namespace)
            .then_with(|| kind_rank(&self.kind).cmp(&kind_rank(&other.kind)))
            .then_with(|| self.kind.cmp(&other.kind))
            .then_with(|| self.name.cmp(&other.name))
            .then_with(|| self.api_version.cmp(&other.api_version))
    }
}

impl PartialOrd for ObjectKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// What to do with one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Desired but not live.
    Create,
    /// Desired and live, but they differ.
    Update,
    /// Live but no longer desired.
    Delete,
    /// Desired and live, and they agree.
    Unchanged,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Create => "create",
            Action::Update => "update",
            Action::Delete => "delete",
            Action::Unchanged => "unchanged",
        })
    }
}

/// How desired objects are compared with live ones.
///
/// Both modes compare normalized objects ([`normalize`]), compare numbers by value
/// (`1 == 1.0`), and require lists to have equal lengths, comparing elements pairwise.
/// Kubernetes quantities are compared as written: `cpu: 100m` and `cpu: "0.1"`, or
/// `1Gi` and `1024Mi`, differ; write them the way the API server returns them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compare {
    /// Every field must be equal, including fields present only on the live side.
    /// For rendered-against-rendered diffs (pull requests), where neither side has defaults.
    Exact,
    /// Every field present in desired must equal live; fields only live has (API server
    /// defaults such as `spec.strategy`, `clusterIP`, `terminationMessagePath`) are ignored,
    /// at every depth, inside list elements too. For desired-against-cluster diffs.
    DesiredSubset,
}

/// One object's verdict: what to do, why, and both sides to act on or show.
///
/// `desired` and `live` hold the objects as given (Secret values included, since applying
/// needs them); `Debug` and [`display_diff`] mask Secret values. Print the objects yourself
/// only through [`normalize`], which masks them too.
#[derive(Clone, PartialEq)]
pub struct Change {
    /// The object.
    pub key: ObjectKey,
    /// What to do with it.
    pub action: Action,
    /// Human-readable: "not present", "no longer desired", "in sync", or
    /// "changed: spec.replicas, …".
    pub reason: String,
    /// The desired object; `None` for deletes.
    pub desired: Option<Value>,
    /// The live object; `None` for creates.
    pub live: Option<Value>,
    /// The differing field paths (`spec.template.spec.containers[0].image`), sorted;
    /// Secret values appear as `data.<key>` only. Empty unless `action` is `Update`.
    pub changed_paths: Vec<String>,
    /// How the two sides were compared; [`display_diff`] hides live-only fields under
    /// [`Compare::DesiredSubset`].
    pub compare: Compare,
}

impl fmt::Debug for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Change")
            .field("key", &self.key)
            .field("action", &self.action)
            .field("reason", &self.reason)
            .field("desired", &self.desired.as_ref().map(normalize::redact))
            .field("live", &self.live.as_ref().map(normalize::redact))
            .field("changed_paths", &self.changed_paths)
            .field("compare", &self.compare)
            .finish()
    }
}

/// What to do to bring live in line with desired, one [`Change`] per object.
///
/// Changes are in apply order ([`ObjectKey`]'s ordering), deletes last in reverse order,
/// so dependents go before what they depend on.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Every object of either side, unchanged ones included.
    pub changes: Vec<Change>,
}

/// How many objects a plan creates, updates, deletes and leaves alone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Objects to create.
    pub create: usize,
    /// Objects to update.
    pub update: usize,
    /// Objects to delete.
    pub delete: usize,
    /// Objects already in sync.
    pub unchanged: usize,
}

impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} to create, {} to update, {} to delete, {} unchanged",
            self.create, self.update, self.delete, self.unchanged
        )
    }
}

impl Plan {
    /// True when nothing needs doing (every object is unchanged, or there are none).
    pub fn is_empty_of_changes(&self) -> bool {
        self.changes.iter().all(|c| c.action == Action::Unchanged)
    }

    /// How many objects fall under each action, for summaries.
    pub fn counts(&self) -> Counts {
        let mut counts = Counts::default();
        for change in &self.changes {
            match change.action {
                Action::Create => counts.create += 1,
                Action::Update => counts.update += 1,
                Action::Delete => counts.delete += 1,
                Action::Unchanged => counts.unchanged += 1,
            }
        }
        counts
    }

    /// The changes that do something (all but the unchanged), in plan order.
    pub fn changed(&self) -> impl Iterator<Item = &Change> + '_ {
        self.changes
            .iter()
            .filter(|c| c.action != Action::Unchanged)
    }

    /// The creates, in apply order.
    pub fn creates(&self) -> impl Iterator<Item = &Change> + '_ {
        self.with_action(Action::Create)
    }

    /// The updates, in apply order.
    pub fn updates(&self) -> impl Iterator<Item = &Change> + '_ {
        self.with_action(Action::Update)
    }

    /// The deletes, in delete order (reverse apply order).
    pub fn deletes(&self) -> impl Iterator<Item = &Change> + '_ {
        self.with_action(Action::Delete)
    }

    fn with_action(&self, action: Action) -> impl Iterator<Item = &Change> + '_ {
        self.changes.iter().filter(move |c| c.action == action)
    }
}

/// Compares desired objects with live (or "before") ones and says what to do with each.
///
/// `live` must hold exactly the objects plugsync manages (the caller selects them, for
/// example by label): every live object without a desired counterpart is deleted.
/// Objects are paired by [`ObjectKey`], so desired objects of namespaced kinds must carry
/// their namespace. In both inputs a field set to `null` counts as absent.
pub fn plan(desired: &[Value], live: &[Value], compare: Compare) -> Result<Plan, PlanError> {
    plan_refs(desired, live, compare)
}

/// [`plan`] over borrowed objects, so callers whose objects are spread over several
/// owners (each rendered plugin holds its own) need not copy them all into one list.
pub(crate) fn plan_refs<'a>(
    desired: impl IntoIterator<Item = &'a Value>,
    live: impl IntoIterator<Item = &'a Value>,
    compare: Compare,
) -> Result<Plan, PlanError> {
    plan_indexed(desired, live, compare, true)
}

/// [`plan_refs`], except that `Unchanged` changes carry no objects (`desired` and `live`
/// are `None`): for reports, which count unchanged objects but never show them. In a pull
/// request almost every object is unchanged, and copying them all cost as much time and
/// memory as rendering them.
pub(crate) fn plan_refs_sparse<'a>(
    desired: impl IntoIterator<Item = &'a Value>,
    live: impl IntoIterator<Item = &'a Value>,
    compare: Compare,
) -> Result<Plan, PlanError> {
    plan_indexed(desired, live, compare, false)
}

fn plan_indexed<'a>(
    desired: impl IntoIterator<Item = &'a Value>,
    live: impl IntoIterator<Item = &'a Value>,
    compare: Compare,
    keep_unchanged: bool,
) -> Result<Plan, PlanError> {
    let desired = index(desired, Side::Desired)?;
    let live = index(live, Side::Live)?;
    let mut changes = Vec::with_capacity(desired.len() + live.len());
    for (key, &d) in &desired {
        let (action, reason, paths, l) = match live.get(key) {
            None => (Action::Create, "not present".to_string(), Vec::new(), None),
            Some(&l) => {
                // Identical objects (most of them, in a pull request) differ nowhere:
                // skip normalizing and walking them.
                let paths = if d == l {
                    Vec::new()
                } else {
                    diff::changed_paths(d, l, compare)
                };
                if paths.is_empty() {
                    (Action::Unchanged, "in sync".to_string(), paths, Some(l))
                } else {
                    (Action::Update, update_reason(&paths), paths, Some(l))
                }
            }
        };
        let keep = keep_unchanged || action != Action::Unchanged;
        changes.push(Change {
            key: key.clone(),
            action,
            reason,
            desired: keep.then(|| d.clone()),
            live: l.filter(|_| keep).cloned(),
            changed_paths: paths,
            compare,
        });
    }
    for (key, &l) in live.iter().rev() {
        if !desired.contains_key(key) {
            changes.push(Change {
                key: key.clone(),
                action: Action::Delete,
                reason: "no longer desired".into(),
                desired: None,
                live: Some(l.clone()),
                changed_paths: Vec::new(),
                compare,
            });
        }
    }
    Ok(Plan { changes })
}

/// Keys one input list, refusing invalid and repeated objects.
fn index<'a>(
    objects: impl IntoIterator<Item = &'a Value>,
    side: Side,
) -> Result<BTreeMap<ObjectKey, &'a Value>, PlanError> {
    let mut map = BTreeMap::new();
    for (index, obj) in objects.into_iter().enumerate() {
        let key = ObjectKey::of(obj).map_err(|e| PlanError::InvalidObject {
            side,
            index,
            reason: e.to_string(),
        })?;
        match map.entry(key) {
            Entry::Occupied(e) => {
                return Err(PlanError::DuplicateObject {
                    side,
                    key: e.key().clone(),
                })
            }
            Entry::Vacant(e) => {
                e.insert(obj);
            }
        }
    }
    Ok(map)
}

/// `live` and `desired` compared as one object even though their keys may differ (the
/// object of an upgraded plugin against the one it replaces, or an object with plugsync's
/// bookkeeping taken out): an `Update` of `key` with the differing paths, or `Unchanged`
/// when there are none.
pub(crate) fn compare_objects(
    key: ObjectKey,
    desired: Value,
    live: Value,
    compare: Compare,
) -> Change {
    let paths = if desired == live {
        Vec::new()
    } else {
        diff::changed_paths(&desired, &live, compare)
    };
    let (action, reason) = if paths.is_empty() {
        (Action::Unchanged, "in sync".to_string())
    } else {
        (Action::Update, update_reason(&paths))
    };
    Change {
        key,
        action,
        reason,
        desired: Some(desired),
        live: Some(live),
        changed_paths: paths,
        compare,
    }
}

fn update_reason(paths: &[String]) -> String {
    let shown = paths[..paths.len().min(REASON_PATHS)].join(", ");
    match paths.len().checked_sub(REASON_PATHS) {
        Some(more) if more > 0 => format!("changed: {shown} and {more} more"),
        _ => format!("changed: {shown}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(kind: &str, ns: Option<&str>, name: &str) -> ObjectKey {
        ObjectKey {
            api_version: "v1".into(),
            kind: kind.into(),
            namespace: ns.map(Into::into),
            name: name.into(),
        }
    }

    #[test]
    fn object_key_reads_identity_and_displays_kind_then_namespace_and_name() {
        let k = ObjectKey::of(&json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "abc", "namespace": "dify"}
        }))
        .expect("valid key");
        assert_eq!(k.to_string(), "Deployment dify/abc");
        assert_eq!(k.api_version, "apps/v1");
        let ns = ObjectKey::of(
            &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "dify"}}),
        )
        .expect("valid key");
        assert_eq!(ns.namespace, None);
        assert_eq!(ns.to_string(), "Namespace dify");
    }

    #[test]
    fn object_key_errors_name_the_missing_field() {
        let cases = [
            (
                json!({"kind": "Job", "metadata": {"name": "a"}}),
                "missing apiVersion",
            ),
            (
                json!({"apiVersion": "v1", "metadata": {"name": "a"}}),
                "missing kind",
            ),
            (
                json!({"apiVersion": "v1", "kind": "Job"}),
                "missing metadata.name",
            ),
            (
                json!({"apiVersion": "v1", "kind": "Job", "metadata": {"name": ""}}),
                "missing metadata.name",
            ),
            (
                json!({"apiVersion": 1, "kind": "Job", "metadata": {"name": "a"}}),
                "apiVersion is not a string",
            ),
            (json!([1]), "not a JSON object"),
        ];
        for (obj, want) in cases {
            match ObjectKey::of(&obj) {
                Err(e) => assert_eq!(e.to_string(), want, "for {obj}"),
                Ok(k) => panic!("{obj} gave key {k}"),
            }
        }
    }

    #[test]
    fn keys_order_by_namespace_then_kind_rank_then_name() {
        let mut keys = vec![
            key("Deployment", Some("a"), "x"),
            key("Zebra", Some("a"), "x"),
            key("Job", Some("a"), "x"),
            key("Alpha", Some("a"), "x"),
            key("Service", Some("a"), "x"),
            key("Plugin", Some("a"), "y"),
            key("Plugin", Some("a"), "x"),
            key("Namespace", None, "a"),
            key("CustomResourceDefinition", None, "plugins.plugsync.dev"),
        ];
        keys.sort();
        let shown: Vec<String> = keys.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "CustomResourceDefinition plugins.plugsync.dev",
                "Namespace a",
                "Plugin a/x",
                "Plugin a/y",
                "Service a/x",
                "Job a/x",
                "Deployment a/x",
                "Alpha a/x",
                "Zebra a/x",
            ]
        );
    }

    #[test]
    fn update_reason_names_five_paths_then_counts_the_rest() {
        let paths: Vec<String> = (0..7).map(|i| format!("p{i}")).collect();
        assert_eq!(
            update_reason(&paths),
            "changed: p0, p1, p2, p3, p4 and 2 more"
        );
        assert_eq!(update_reason(&paths[..5]), "changed: p0, p1, p2, p3, p4");
        assert_eq!(update_reason(&paths[..1]), "changed: p0");
    }

    #[test]
    fn counts_and_iterators_follow_actions() {
        let desired = [
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "new", "namespace": "d"}}),
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "same", "namespace": "d"}}),
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "upd", "namespace": "d"}, "data": {"a": "2"}}),
        ];
        let live = [
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "same", "namespace": "d"}}),
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "upd", "namespace": "d"}, "data": {"a": "1"}}),
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "old", "namespace": "d"}}),
        ];
        let p = plan(&desired, &live, Compare::Exact).expect("plan");
        assert_eq!(
            p.counts(),
            Counts {
                create: 1,
                update: 1,
                delete: 1,
                unchanged: 1
            }
        );
        assert_eq!(
            p.counts().to_string(),
            "1 to create, 1 to update, 1 to delete, 1 unchanged"
        );
        assert_eq!(
            p.creates().map(|c| c.key.name.as_str()).collect::<Vec<_>>(),
            ["new"]
        );
        assert_eq!(
            p.updates().map(|c| c.key.name.as_str()).collect::<Vec<_>>(),
            ["upd"]
        );
        assert_eq!(
            p.deletes().map(|c| c.key.name.as_str()).collect::<Vec<_>>(),
            ["old"]
        );
        assert_eq!(p.changed().count(), 3);
        assert!(!p.is_empty_of_changes());
        assert!(Plan::default().is_empty_of_changes());
    }
}
