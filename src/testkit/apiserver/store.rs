//! The object store: every object as a `serde_json::Value`, a global resourceVersion counter
//! (like an etcd revision), a bounded event history for watches, and the write pipeline
//! (metadata, status subresource, defaults, managedFields, no-op detection, finalizers,
//! garbage collection).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{json, Map, Value};
use tokio::sync::broadcast;

use super::errors::{ApiError, Subject};
use super::meta::{apply_defaults, initial_status, now_rfc3339, validate_name};
use super::registry::{builtins, crd_status, from_crd, is_crd_key, ResourceType};
use super::ssa_glue as ssa;

/// `(group, plural)`: the key a resource type's objects are stored under.
pub(crate) type Key = (String, String);
type ObjKey = (String, String);

/// One change as watchers see it.
#[derive(Debug, Clone)]
pub(crate) struct Event {
    pub rv: u64,
    pub key: Key,
    pub namespace: String,
    pub etype: &'static str,
    pub object: Value,
    /// The object before a MODIFIED change (for selector transitions).
    pub prev: Option<Value>,
}

/// A started watch: its type, the events to send first, live events, and the RV it is at.
pub(crate) type WatchStart = (
    ResourceType,
    Vec<Arc<Event>>,
    broadcast::Receiver<Arc<Event>>,
    u64,
);

/// Where a request points: a resource at a version, maybe in a namespace.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Target {
    pub group: String,
    pub version: String,
    pub plural: String,
    pub namespace: Option<String>,
}

/// Options every write carries.
#[derive(Debug, Clone, Default)]
pub(crate) struct WriteOpts {
    pub dry_run: bool,
    pub manager: String,
    pub subresource: Option<String>,
}

/// What a write did.
#[derive(Debug, Clone)]
pub(crate) struct Outcome {
    /// The object after the write (or as it would be, for dry-run).
    pub object: Value,
    /// Whether the object was created.
    pub created: bool,
    /// Whether stored state changed (or would have, for dry-run).
    pub changed: bool,
    /// For DELETE: whether the object is gone (vs. marked with a deletionTimestamp).
    pub removed: bool,
}

/// How a patch body is interpreted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PatchKind {
    Merge,
    Strategic,
    Json,
}

/// DELETE propagation policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Propagation {
    /// Dependents are deleted after the owner.
    Background,
    /// The owner waits (finalizer `foregroundDeletion`) until its dependents are gone.
    Foreground,
    /// Dependents lose their ownerReference and stay.
    Orphan,
}

/// Parsed `DeleteOptions`.
#[derive(Debug, Clone)]
pub(crate) struct DeleteOpts {
    pub propagation: Propagation,
    pub precondition_uid: Option<String>,
    pub precondition_rv: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Create,
    Update,
    Apply,
}

struct Inner {
    rv: u64,
    seq: u64,
    seed: u64,
    ip_seq: u32,
    types: Vec<ResourceType>,
    objects: HashMap<Key, BTreeMap<ObjKey, Value>>,
    uids: HashMap<String, (Key, ObjKey)>,
    history: VecDeque<Arc<Event>>,
    history_limit: usize,
    compacted: u64,
    pending_removed: Vec<Value>,
    tx: broadcast::Sender<Arc<Event>>,
}

/// A handle to the double's object store, for test setup and assertions without HTTP.
///
/// Writes through it emit watch events like API writes do, but skip managedFields
/// bookkeeping, status-subresource rules and request statistics.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Mutex<Inner>>,
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn meta(obj: &Value) -> &Value {
    &obj["metadata"]
}

fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.is_object() {
        *obj = json!({});
    }
    let m = obj
        .as_object_mut()
        .expect("just made an object")
        .entry("metadata")
        .or_insert_with(|| json!({}));
    if !m.is_object() {
        *m = json!({});
    }
    m.as_object_mut().expect("just made an object")
}

fn str_of<'a>(obj: &'a Value, field: &str) -> &'a str {
    obj["metadata"][field].as_str().unwrap_or_default()
}

fn finalizers(obj: &Value) -> Vec<String> {
    meta(obj)["finalizers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|f| f.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn owner_uids(obj: &Value) -> Vec<String> {
    meta(obj)["ownerReferences"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| r["uid"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// The object without `metadata` (and without `status` when it is a subresource).
fn spec_part(obj: &Value, exclude_status: bool) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        if exclude_status {
            m.remove("status");
        }
    }
    v
}

/// The object with managedFields timestamps removed (they alone never make a change).
fn without_mf_times(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(list) = v
        .get_mut("metadata")
        .and_then(|m| m.get_mut("managedFields"))
        .and_then(Value::as_array_mut)
    {
        for e in list {
            if let Some(e) = e.as_object_mut() {
                e.remove("time");
            }
        }
    }
    v
}

fn rv_of(obj: &Value) -> u64 {
    str_of(obj, "resourceVersion").parse().unwrap_or(0)
}

impl Inner {
    fn find_type(&self, group: &str, plural: &str) -> Option<&ResourceType> {
        self.types
            .iter()
            .find(|t| t.group == group && t.plural == plural)
    }

    fn resolve(&self, t: &Target) -> Result<ResourceType, ApiError> {
        let rt = self
            .find_type(&t.group, &t.plural)
            .filter(|rt| rt.version(&t.version).is_some())
            .ok_or_else(ApiError::no_route)?;
        if rt.namespaced != t.namespace.is_some() && t.namespace.is_some() {
            return Err(ApiError::no_route());
        }
        Ok(rt.clone())
    }

    fn get(&self, key: &Key, ns: &str, name: &str) -> Option<&Value> {
        self.objects
            .get(key)?
            .get(&(ns.to_string(), name.to_string()))
    }

    fn ns_key() -> Key {
        (String::new(), "namespaces".into())
    }

    fn next_uid(&mut self) -> String {
        self.seq += 1;
        let a = splitmix(self.seed ^ self.seq);
        let b = splitmix(a ^ self.seq.rotate_left(17));
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            (a >> 32) as u32,
            (a >> 16) as u16,
            (a & 0xfff) as u16,
            0x8000 | ((b >> 48) as u16 & 0x3fff),
            b & 0xffff_ffff_ffff
        )
    }

    fn random_suffix(&mut self) -> String {
        const ALPHA: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        self.seq += 1;
        let mut x = splitmix(self.seed.wrapping_add(self.seq));
        (0..5)
            .map(|_| {
                let c = ALPHA[(x % ALPHA.len() as u64) as usize] as char;
                x /= ALPHA.len() as u64;
                c
            })
            .collect()
    }

    fn alloc_ip(&mut self) -> String {
        self.ip_seq += 1;
        format!("10.96.{}.{}", self.ip_seq / 250, self.ip_seq % 250 + 1)
    }

    fn emit(
        &mut self,
        etype: &'static str,
        key: Key,
        ns: String,
        object: Value,
        prev: Option<Value>,
    ) {
        let ev = Arc::new(Event {
            rv: self.rv,
            key,
            namespace: ns,
            etype,
            object,
            prev,
        });
        self.history.push_back(ev.clone());
        while self.history.len() > self.history_limit.max(1) {
            if let Some(old) = self.history.pop_front() {
                self.compacted = old.rv;
            }
        }
        let _ = self.tx.send(ev);
    }

    /// Stores `obj` with a new resourceVersion and emits ADDED/MODIFIED.
    fn persist(&mut self, key: &Key, ns: &str, name: &str, mut obj: Value) -> Value {
        self.rv += 1;
        meta_mut(&mut obj).insert("resourceVersion".into(), json!(self.rv.to_string()));
        let ok = (ns.to_string(), name.to_string());
        let uid = str_of(&obj, "uid").to_string();
        let map = self.objects.entry(key.clone()).or_default();
        let prev = map.insert(ok.clone(), obj.clone());
        let etype = if prev.is_some() { "MODIFIED" } else { "ADDED" };
        if !uid.is_empty() {
            self.uids.insert(uid, (key.clone(), ok));
        }
        self.emit(etype, key.clone(), ns.to_string(), obj.clone(), prev);
        obj
    }

    /// Removes an object, emits DELETED and queues it for garbage collection.
    fn remove(&mut self, key: &Key, ns: &str, name: &str) -> Option<Value> {
        let mut obj = self
            .objects
            .get_mut(key)?
            .remove(&(ns.to_string(), name.to_string()))?;
        self.rv += 1;
        meta_mut(&mut obj).insert("resourceVersion".into(), json!(self.rv.to_string()));
        self.uids.remove(str_of(&obj, "uid"));
        self.emit("DELETED", key.clone(), ns.to_string(), obj.clone(), None);
        self.pending_removed.push(obj.clone());
        Some(obj)
    }

    fn namespace_check(&self, rt: &ResourceType, ns: &str) -> Result<(), ApiError> {
        if !rt.namespaced {
            return Ok(());
        }
        let subject = Subject {
            resource: "namespaces".into(),
            kind: "Namespace".into(),
            name: ns.to_string(),
            ..Default::default()
        };
        match self.get(&Self::ns_key(), "", ns) {
            None => Err(ApiError::not_found(&subject)),
            Some(n) if !meta(n)["deletionTimestamp"].is_null() => Err(ApiError::forbidden(
                &Subject {
                    name: String::new(),
                    ..rt.subject("")
                },
                format!(
                    "unable to create new content in namespace {ns} because it is being terminated"
                ),
            )),
            Some(_) => Ok(()),
        }
    }

    fn register_crd(&mut self, crd: &Value) {
        if let Ok(rt) = from_crd(crd) {
            if let Some(existing) = self
                .types
                .iter_mut()
                .find(|t| t.group == rt.group && t.plural == rt.plural)
            {
                if existing.custom {
                    *existing = rt;
                }
            } else {
                self.types.push(rt);
            }
        }
    }

    fn unregister_crd(&mut self, crd: &Value) {
        let group = crd["spec"]["group"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let plural = crd["spec"]["names"]["plural"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let before = self.types.len();
        self.types
            .retain(|t| !(t.custom && t.group == group && t.plural == plural));
        if before == self.types.len() {
            return;
        }
        let key = (group, plural);
        let names: Vec<ObjKey> = self
            .objects
            .get(&key)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        for (ns, name) in names {
            self.remove(&key, &ns, &name);
        }
        self.objects.remove(&key);
    }

    fn has_dependents(&self, uid: &str) -> bool {
        self.objects
            .values()
            .flat_map(|m| m.values())
            .any(|o| owner_uids(o).iter().any(|u| u == uid))
    }

    fn dependents(&self, uid: &str) -> Vec<(Key, ObjKey)> {
        let mut out = Vec::new();
        for (key, m) in &self.objects {
            for (ok, o) in m {
                if owner_uids(o).iter().any(|u| u == uid) {
                    out.push((key.clone(), ok.clone()));
                }
            }
        }
        out
    }

    fn namespace_empty(&self, ns: &str) -> bool {
        !self.objects.iter().any(|((g, p), m)| {
            !(g.is_empty() && p == "namespaces") && m.keys().any(|(n, _)| n == ns)
        })
    }

    /// Deletes one object without cascading: marks it (finalizers) or removes it.
    /// Returns the object and whether it is gone.
    fn delete_one(
        &mut self,
        key: &Key,
        ns: &str,
        name: &str,
        policy: Propagation,
        now: &str,
    ) -> Option<(Value, bool)> {
        let live = self.get(key, ns, name)?.clone();
        let uid = str_of(&live, "uid").to_string();
        if policy == Propagation::Orphan {
            for (dk, (dns, dname)) in self.dependents(&uid) {
                if let Some(mut d) = self.get(&dk, &dns, &dname).cloned() {
                    if let Some(refs) = meta_mut(&mut d)
                        .get_mut("ownerReferences")
                        .and_then(Value::as_array_mut)
                    {
                        refs.retain(|r| r["uid"].as_str() != Some(uid.as_str()));
                        if refs.is_empty() {
                            meta_mut(&mut d).remove("ownerReferences");
                        }
                    }
                    self.persist(&dk, &dns, &dname, d);
                }
            }
        }
        let is_ns = *key == Self::ns_key();
        let mut fins = finalizers(&live);
        if policy == Propagation::Foreground
            && self.has_dependents(&uid)
            && !fins.iter().any(|f| f == "foregroundDeletion")
        {
            fins.push("foregroundDeletion".into());
        }
        if fins.is_empty() && !is_ns {
            let obj = self.remove(key, ns, name)?;
            return Some((obj, true));
        }
        let mut marked = live.clone();
        let m = meta_mut(&mut marked);
        if m.get("deletionTimestamp").is_none_or(Value::is_null) {
            m.insert("deletionTimestamp".into(), json!(now));
            m.insert("deletionGracePeriodSeconds".into(), json!(0));
            let gen = m.get("generation").and_then(Value::as_i64).unwrap_or(0);
            if gen > 0 {
                m.insert("generation".into(), json!(gen + 1));
            }
        }
        if !fins.is_empty() {
            m.insert("finalizers".into(), json!(fins));
        }
        if is_ns {
            marked["status"]["phase"] = json!("Terminating");
        }
        let mut obj = live.clone();
        if marked != live {
            obj = self.persist(key, ns, name, marked);
        }
        if policy == Propagation::Foreground {
            for (dk, (dns, dname)) in self.dependents(&uid) {
                self.delete_one(&dk, &dns, &dname, Propagation::Background, now);
            }
        }
        if is_ns {
            let ns_name = name.to_string();
            let content: Vec<(Key, ObjKey)> = self
                .objects
                .iter()
                .filter(|(k, _)| **k != Self::ns_key())
                .flat_map(|(k, m)| {
                    m.keys()
                        .filter(|(n, _)| *n == ns_name)
                        .map(|ok| (k.clone(), ok.clone()))
                        .collect::<Vec<_>>()
                })
                .collect();
            for (k, (n, nm)) in content {
                self.delete_one(&k, &n, &nm, Propagation::Background, now);
            }
            if self.namespace_empty(name) && finalizers(&obj).is_empty() {
                let gone = self.remove(key, ns, name)?;
                return Some((gone, true));
            }
        }
        Some((obj, false))
    }

    /// Garbage collection after removals: dependents whose owners are all gone, owners in
    /// foreground deletion whose dependents are gone, terminating namespaces now empty,
    /// and the objects of a deleted CRD.
    fn cascade(&mut self, now: &str) {
        let mut guard = 0;
        while let Some(obj) = self.pending_removed.pop() {
            guard += 1;
            if guard > 1_000_000 {
                break;
            }
            let key_group = obj["apiVersion"]
                .as_str()
                .and_then(|a| a.split_once('/').map(|(g, _)| g.to_string()))
                .unwrap_or_default();
            if key_group == "apiextensions.k8s.io" && obj["kind"] == "CustomResourceDefinition" {
                self.unregister_crd(&obj);
            }
            let uid = str_of(&obj, "uid").to_string();
            if !uid.is_empty() {
                for (dk, (dns, dname)) in self.dependents(&uid) {
                    let Some(d) = self.get(&dk, &dns, &dname) else {
                        continue;
                    };
                    let all_gone = owner_uids(d).iter().all(|u| !self.uids.contains_key(u));
                    if all_gone {
                        self.delete_one(&dk, &dns, &dname, Propagation::Background, now);
                    }
                }
            }
            for owner in owner_uids(&obj) {
                let Some((ok, (ons, oname))) = self.uids.get(&owner).cloned() else {
                    continue;
                };
                let Some(o) = self.get(&ok, &ons, &oname).cloned() else {
                    continue;
                };
                let fins = finalizers(&o);
                if meta(&o)["deletionTimestamp"].is_null()
                    || !fins.iter().any(|f| f == "foregroundDeletion")
                    || self.has_dependents(&owner)
                {
                    continue;
                }
                let rest: Vec<String> = fins
                    .into_iter()
                    .filter(|f| f != "foregroundDeletion")
                    .collect();
                if rest.is_empty() {
                    self.remove(&ok, &ons, &oname);
                } else {
                    let mut o = o;
                    meta_mut(&mut o).insert("finalizers".into(), json!(rest));
                    self.persist(&ok, &ons, &oname, o);
                }
            }
            let ns = str_of(&obj, "namespace").to_string();
            if !ns.is_empty() {
                let terminating = self.get(&Self::ns_key(), "", &ns).is_some_and(|n| {
                    !meta(n)["deletionTimestamp"].is_null() && finalizers(n).is_empty()
                });
                if terminating && self.namespace_empty(&ns) {
                    self.remove(&Self::ns_key(), "", &ns);
                }
            }
        }
    }

    /// The shared tail of create, update, patch and apply.
    #[allow(clippy::too_many_arguments)]
    fn finish_write(
        &mut self,
        rt: &ResourceType,
        t: &Target,
        name: &str,
        live: Option<&Value>,
        mut new: Value,
        op: Op,
        opts: &WriteOpts,
        now: &str,
    ) -> Result<Outcome, ApiError> {
        let ns = t.namespace.clone().unwrap_or_default();
        if !new.is_object() {
            return Err(ApiError::bad_request("the object must be a JSON object"));
        }
        new["apiVersion"] = json!(rt.api_version(&t.version));
        new["kind"] = json!(rt.kind);
        {
            let m = meta_mut(&mut new);
            m.insert("name".into(), json!(name));
            if rt.namespaced {
                m.insert("namespace".into(), json!(ns));
            } else {
                m.remove("namespace");
            }
            m.remove("selfLink");
        }
        const SERVER_FIELDS: [&str; 6] = [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "resourceVersion",
        ];
        match live {
            Some(live) => {
                let lm = meta(live).clone();
                let m = meta_mut(&mut new);
                for f in SERVER_FIELDS {
                    match lm.get(f) {
                        Some(v) if !v.is_null() => {
                            m.insert(f.into(), v.clone());
                        }
                        _ => {
                            m.remove(f);
                        }
                    }
                }
                let empty_mf = m
                    .get("managedFields")
                    .is_none_or(|v| v.as_array().is_none_or(|a| a.is_empty()));
                if op == Op::Update && empty_mf {
                    match lm.get("managedFields") {
                        Some(v) => m.insert("managedFields".into(), v.clone()),
                        None => m.remove("managedFields"),
                    };
                }
            }
            None => {
                let uid = self.next_uid();
                let m = meta_mut(&mut new);
                for f in SERVER_FIELDS {
                    m.remove(f);
                }
                m.insert("uid".into(), json!(uid));
                m.insert("creationTimestamp".into(), json!(now));
                m.insert("generation".into(), json!(1));
            }
        }
        let status_sub = rt.has_status(&t.version);
        let to_status = opts.subresource.as_deref() == Some("status");
        if to_status {
            let Some(live) = live else {
                return Err(ApiError::not_found(&rt.subject(name)));
            };
            let mf = meta_mut(&mut new).remove("managedFields");
            new = ssa::only_status(live, &new);
            if op == Op::Apply {
                match mf {
                    Some(mf) => meta_mut(&mut new).insert("managedFields".into(), mf),
                    None => meta_mut(&mut new).remove("managedFields"),
                };
            }
        } else {
            if status_sub {
                match live {
                    Some(live) => match live.get("status") {
                        Some(s) => new["status"] = s.clone(),
                        None => ssa::strip_status(&mut new),
                    },
                    None => match initial_status(&rt.group, &rt.kind, rt.custom) {
                        Some(s) => new["status"] = s,
                        None => ssa::strip_status(&mut new),
                    },
                }
            }
            if !rt.custom {
                if rt.group.is_empty() && rt.kind == "Service" {
                    if let Some(live) = live {
                        for f in ["clusterIP", "clusterIPs"] {
                            if new["spec"].get(f).is_none() && live["spec"].get(f).is_some() {
                                if let Some(s) = new.get_mut("spec").and_then(Value::as_object_mut)
                                {
                                    s.insert(f.into(), live["spec"][f].clone());
                                }
                            }
                        }
                    }
                }
                let mut ip = None;
                if rt.kind == "Service" && new["spec"].get("clusterIP").is_none() {
                    ip = Some(self.alloc_ip());
                }
                apply_defaults(&rt.group, &rt.kind, &mut new, move || {
                    ip.unwrap_or_else(|| "10.96.0.1".into())
                });
            }
        }
        if is_crd_key(&rt.group, &rt.plural) {
            if let Err((field, detail)) = from_crd(&new) {
                return Err(ApiError::invalid(
                    &rt.subject(name),
                    &field,
                    "FieldValueInvalid",
                    &detail,
                ));
            }
            let since = live
                .and_then(|l| l["status"]["conditions"].as_array())
                .and_then(|c| c.iter().find(|c| c["type"] == "Established"))
                .and_then(|c| c["lastTransitionTime"].as_str())
                .map(String::from)
                .unwrap_or_else(|| now.to_string());
            new["status"] = crd_status(&new, &since);
        }
        if let Some(live) = live {
            if !meta(live)["deletionTimestamp"].is_null() {
                let old = finalizers(live);
                if finalizers(&new).iter().any(|f| !old.contains(f)) {
                    return Err(ApiError::invalid(
                        &rt.subject(name),
                        "metadata.finalizers",
                        "FieldValueForbidden",
                        "Forbidden: no new finalizers can be added if the object is being deleted",
                    ));
                }
            }
        }
        if op != Op::Apply {
            new = ssa::record_update(live, new, &opts.manager, now, opts.subresource.as_deref());
        }
        if let Some(live) = live {
            if without_mf_times(&new) == without_mf_times(live) {
                return Ok(Outcome {
                    object: live.clone(),
                    created: false,
                    changed: false,
                    removed: false,
                });
            }
            if spec_part(&new, status_sub) != spec_part(live, status_sub) {
                let gen = meta(live)["generation"].as_i64().unwrap_or(0);
                meta_mut(&mut new).insert("generation".into(), json!(gen + 1));
            }
        }
        let created = live.is_none();
        if opts.dry_run {
            return Ok(Outcome {
                object: new,
                created,
                changed: true,
                removed: false,
            });
        }
        let key = rt.key();
        let stored = self.persist(&key, &ns, name, new);
        if is_crd_key(&rt.group, &rt.plural) {
            self.register_crd(&stored);
        }
        if !meta(&stored)["deletionTimestamp"].is_null() && finalizers(&stored).is_empty() {
            let is_ns = key == Self::ns_key();
            if !is_ns || self.namespace_empty(name) {
                self.remove(&key, &ns, name);
                self.cascade(now);
            }
        }
        Ok(Outcome {
            object: stored,
            created,
            changed: true,
            removed: false,
        })
    }
}

/// Checks `apiVersion`/`kind` in a request body against the URL's resource.
fn check_type(rt: &ResourceType, t: &Target, body: &Value, required: bool) -> Result<(), ApiError> {
    let want = rt.api_version(&t.version);
    match body["apiVersion"].as_str() {
        Some(av) if av != want => {
            return Err(ApiError::bad_request(format!(
            "the API version in the data ({av}) does not match the expected API version ({want})"
        )))
        }
        None if required => {
            return Err(ApiError::bad_request(
                "invalid object: Object 'apiVersion' is missing",
            ))
        }
        _ => {}
    }
    match body["kind"].as_str() {
        Some(k) if k != rt.kind => Err(ApiError::bad_request(format!(
            "the kind in the data ({k}) does not match the expected kind ({})",
            rt.kind
        ))),
        None if required => Err(ApiError::bad_request(
            "invalid object: Object 'Kind' is missing",
        )),
        _ => Ok(()),
    }
}

fn check_namespace(t: &Target, body: &Value) -> Result<(), ApiError> {
    match (
        body["metadata"]["namespace"].as_str(),
        t.namespace.as_deref(),
    ) {
        (Some(b), Some(u)) if !b.is_empty() && b != u => Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        )),
        _ => Ok(()),
    }
}

fn check_name(body: &Value, name: &str) -> Result<(), ApiError> {
    match body["metadata"]["name"].as_str() {
        Some(b) if !b.is_empty() && b != name => Err(ApiError::bad_request(format!(
            "the name of the object ({b}) does not match the name on the URL ({name})"
        ))),
        _ => Ok(()),
    }
}

impl Store {
    pub(crate) fn new(history_limit: usize) -> Self {
        let (tx, _) = broadcast::channel(16384);
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(42);
        let store = Store {
            inner: Arc::new(Mutex::new(Inner {
                rv: 0,
                seq: 0,
                seed,
                ip_seq: 0,
                types: builtins(),
                objects: HashMap::new(),
                uids: HashMap::new(),
                history: VecDeque::new(),
                history_limit,
                compacted: 0,
                pending_removed: Vec::new(),
                tx,
            })),
        };
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let _ = store
                .put(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}));
        }
        store
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Change notifications: every event watchers get from now on, of every resource type
    /// (the workload simulator's trigger). A receiver that falls more than the channel's
    /// capacity behind gets `Lagged` and should re-list.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.lock().tx.subscribe()
    }

    /// The current (latest) resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.lock().rv
    }

    /// All served resource types.
    pub fn types(&self) -> Vec<ResourceType> {
        self.lock().types.clone()
    }

    fn type_for(&self, api_version: &str, kind: &str) -> Option<(ResourceType, String)> {
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        self.lock()
            .types
            .iter()
            .find(|t| t.group == group && t.kind == kind && t.version(version).is_some())
            .map(|t| (t.clone(), version.to_string()))
    }

    /// One object by `apiVersion`, `kind`, namespace (None for cluster-scoped) and name.
    pub fn get(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        let (rt, _) = self.type_for(api_version, kind)?;
        self.lock()
            .get(&rt.key(), namespace.unwrap_or_default(), name)
            .cloned()
    }

    /// All objects of a kind, in one namespace or (None) everywhere.
    pub fn list(&self, api_version: &str, kind: &str, namespace: Option<&str>) -> Vec<Value> {
        let Some((rt, _)) = self.type_for(api_version, kind) else {
            return vec![];
        };
        self.lock()
            .objects
            .get(&rt.key())
            .map(|m| {
                m.iter()
                    .filter(|((ns, _), _)| namespace.is_none_or(|n| n == ns))
                    .map(|(_, v)| v.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Creates or overwrites an object as given (status included), filling in server-set
    /// metadata and bumping resourceVersion/generation as the API would. Returns the stored object.
    pub fn put(&self, obj: Value) -> Result<Value, ApiError> {
        let api_version = obj["apiVersion"].as_str().unwrap_or_default().to_string();
        let kind = obj["kind"].as_str().unwrap_or_default().to_string();
        let Some((rt, version)) = self.type_for(&api_version, &kind) else {
            return Err(ApiError::bad_request(format!(
                "no resource type for {api_version}, Kind={kind}"
            )));
        };
        let name = str_of(&obj, "name").to_string();
        if name.is_empty() {
            return Err(ApiError::bad_request("metadata.name is required"));
        }
        let ns = rt.namespaced.then(|| {
            obj["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_string()
        });
        let t = Target {
            group: rt.group.clone(),
            version,
            plural: rt.plural.clone(),
            namespace: ns.clone(),
        };
        let now = now_rfc3339();
        let mut inner = self.lock();
        let live = inner
            .get(&rt.key(), ns.as_deref().unwrap_or_default(), &name)
            .cloned();
        let mut new = obj;
        if !rt.custom {
            let mut ip = None;
            if rt.kind == "Service" && new["spec"].get("clusterIP").is_none() {
                ip = Some(inner.alloc_ip());
            }
            apply_defaults(&rt.group, &rt.kind, &mut new, move || {
                ip.unwrap_or_else(|| "10.96.0.1".into())
            });
        }
        if live.is_none() && rt.has_status(&t.version) && new.get("status").is_none() {
            if let Some(s) = initial_status(&rt.group, &rt.kind, rt.custom) {
                new["status"] = s;
            }
        }
        if is_crd_key(&rt.group, &rt.plural) {
            new["status"] = crd_status(&new, &now);
        }
        if let Some(live) = &live {
            for f in [
                "uid",
                "creationTimestamp",
                "generation",
                "resourceVersion",
                "managedFields",
            ] {
                if meta(&new).get(f).is_none() {
                    if let Some(v) = meta(live).get(f) {
                        meta_mut(&mut new).insert(f.into(), v.clone());
                    }
                }
            }
            if is_crd_key(&rt.group, &rt.plural) && live.get("status").is_some() {
                new["status"] = live["status"].clone();
            }
            let status_sub = rt.has_status(&t.version);
            if spec_part(&new, status_sub) != spec_part(live, status_sub) {
                let gen = meta(live)["generation"].as_i64().unwrap_or(0);
                meta_mut(&mut new).insert("generation".into(), json!(gen + 1));
            }
            meta_mut(&mut new).insert(
                "resourceVersion".into(),
                meta(live)["resourceVersion"].clone(),
            );
            if new == *live {
                return Ok(new);
            }
        } else {
            let uid = inner.next_uid();
            let m = meta_mut(&mut new);
            m.entry("uid").or_insert(json!(uid));
            m.entry("creationTimestamp").or_insert(json!(now));
            m.entry("generation").or_insert(json!(1));
        }
        let stored = inner.persist(&rt.key(), ns.as_deref().unwrap_or_default(), &name, new);
        if is_crd_key(&rt.group, &rt.plural) {
            inner.register_crd(&stored);
        }
        Ok(stored)
    }

    /// Deletes an object like a background-propagation DELETE (finalizers honoured).
    /// Returns the object as deleted or marked, None when it does not exist.
    pub fn delete(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        let (rt, _) = self.type_for(api_version, kind)?;
        let now = now_rfc3339();
        let mut inner = self.lock();
        let out = inner.delete_one(
            &rt.key(),
            namespace.unwrap_or_default(),
            name,
            Propagation::Background,
            &now,
        );
        inner.cascade(&now);
        out.map(|(o, _)| o)
    }

    pub(crate) fn resolve(&self, t: &Target) -> Result<ResourceType, ApiError> {
        self.lock().resolve(t)
    }

    pub(crate) fn read(&self, t: &Target, name: &str) -> Result<Value, ApiError> {
        let inner = self.lock();
        let rt = inner.resolve(t)?;
        inner
            .get(&rt.key(), t.namespace.as_deref().unwrap_or_default(), name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(&rt.subject(name)))
    }

    /// Objects of a target (all namespaces when `t.namespace` is None) and the current RV.
    pub(crate) fn read_list(
        &self,
        t: &Target,
    ) -> Result<(ResourceType, Vec<Value>, u64), ApiError> {
        let inner = self.lock();
        let rt = inner.resolve(t)?;
        let items = inner
            .objects
            .get(&rt.key())
            .map(|m| match &t.namespace {
                Some(ns) => m
                    .range((ns.clone(), String::new())..)
                    .take_while(|((n, _), _)| n == ns)
                    .map(|(_, v)| v.clone())
                    .collect(),
                None => m.values().cloned().collect(),
            })
            .unwrap_or_default();
        Ok((rt, items, inner.rv))
    }

    pub(crate) fn create(
        &self,
        t: &Target,
        mut body: Value,
        opts: &WriteOpts,
    ) -> Result<Outcome, ApiError> {
        let now = now_rfc3339();
        let mut inner = self.lock();
        let rt = inner.resolve(t)?;
        if rt.namespaced && t.namespace.is_none() {
            return Err(ApiError::method_not_allowed());
        }
        if !body.is_object() {
            return Err(ApiError::bad_request("the body must be a JSON object"));
        }
        check_type(&rt, t, &body, false)?;
        check_namespace(t, &body)?;
        let mut name = str_of(&body, "name").to_string();
        if name.is_empty() {
            let gen = str_of(&body, "generateName").to_string();
            if gen.is_empty() {
                return Err(ApiError::invalid(
                    &rt.subject(""),
                    "metadata.name",
                    "FieldValueRequired",
                    "Required value: name or generateName is required",
                ));
            }
            name = format!("{gen}{}", inner.random_suffix());
            meta_mut(&mut body).insert("name".into(), json!(name));
        }
        let label = rt.group.is_empty() && matches!(rt.kind.as_str(), "Namespace" | "Service");
        if let Err(e) = validate_name(&name, label) {
            return Err(ApiError::invalid(
                &rt.subject(&name),
                "metadata.name",
                "FieldValueInvalid",
                &e,
            ));
        }
        let ns = t.namespace.clone().unwrap_or_default();
        inner.namespace_check(&rt, &ns)?;
        if inner.get(&rt.key(), &ns, &name).is_some() {
            return Err(ApiError::already_exists(&rt.subject(&name)));
        }
        inner.finish_write(&rt, t, &name, None, body, Op::Create, opts, &now)
    }

    pub(crate) fn update(
        &self,
        t: &Target,
        name: &str,
        body: Value,
        opts: &WriteOpts,
    ) -> Result<Outcome, ApiError> {
        let now = now_rfc3339();
        let mut inner = self.lock();
        let rt = inner.resolve(t)?;
        if !body.is_object() {
            return Err(ApiError::bad_request("the body must be a JSON object"));
        }
        check_type(&rt, t, &body, false)?;
        check_namespace(t, &body)?;
        check_name(&body, name)?;
        let ns = t.namespace.clone().unwrap_or_default();
        let live = inner
            .get(&rt.key(), &ns, name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(&rt.subject(name)))?;
        let want = str_of(&body, "resourceVersion");
        if !want.is_empty() && want != str_of(&live, "resourceVersion") {
            return Err(ApiError::stale(&rt.subject(name)));
        }
        inner.finish_write(&rt, t, name, Some(&live), body, Op::Update, opts, &now)
    }

    pub(crate) fn patch(
        &self,
        t: &Target,
        name: &str,
        kind: PatchKind,
        body: &Value,
        opts: &WriteOpts,
    ) -> Result<Outcome, ApiError> {
        let now = now_rfc3339();
        let mut inner = self.lock();
        let rt = inner.resolve(t)?;
        let ns = t.namespace.clone().unwrap_or_default();
        let live = inner
            .get(&rt.key(), &ns, name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(&rt.subject(name)))?;
        let mut candidate = live.clone();
        match kind {
            PatchKind::Merge | PatchKind::Strategic => {
                if !body.is_object() {
                    return Err(ApiError::bad_request(
                        "error decoding patch: the patch must be a JSON object",
                    ));
                }
                json_patch::merge(&mut candidate, body);
            }
            PatchKind::Json => {
                let ops: json_patch::Patch = serde_json::from_value(body.clone())
                    .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
                json_patch::patch(&mut candidate, &ops).map_err(|e| {
                    ApiError::new(
                        422,
                        "Invalid",
                        format!(
                            "the server rejected our request due to an error in our request: {e}"
                        ),
                        None,
                    )
                })?;
            }
        }
        let want = str_of(&candidate, "resourceVersion");
        if !want.is_empty() && want != str_of(&live, "resourceVersion") {
            return Err(ApiError::stale(&rt.subject(name)));
        }
        if str_of(&candidate, "name") != name {
            return Err(ApiError::invalid(
                &rt.subject(name),
                "metadata.name",
                "FieldValueInvalid",
                "Invalid value: field is immutable",
            ));
        }
        check_type(&rt, t, &candidate, false)?;
        inner.finish_write(&rt, t, name, Some(&live), candidate, Op::Update, opts, &now)
    }

    pub(crate) fn apply(
        &self,
        t: &Target,
        name: &str,
        config: &Value,
        force: bool,
        opts: &WriteOpts,
    ) -> Result<Outcome, ApiError> {
        let now = now_rfc3339();
        let mut inner = self.lock();
        let rt = inner.resolve(t)?;
        if !config.is_object() {
            return Err(ApiError::bad_request(
                "the applied configuration must be an object",
            ));
        }
        check_type(&rt, t, config, true)?;
        check_namespace(t, config)?;
        match config["metadata"]["name"].as_str() {
            Some(n) if n == name => {}
            Some(n) => {
                return Err(check_name(config, name).err().unwrap_or_else(|| {
                    ApiError::bad_request(format!("metadata.name {n:?} must match the URL"))
                }))
            }
            None => {
                return Err(ApiError::bad_request(
                    "metadata.name is required in an applied configuration",
                ))
            }
        }
        let ns = t.namespace.clone().unwrap_or_default();
        let live = inner.get(&rt.key(), &ns, name).cloned();
        if live.is_none() {
            if opts.subresource.is_some() {
                return Err(ApiError::not_found(&rt.subject(name)));
            }
            let label = rt.group.is_empty() && matches!(rt.kind.as_str(), "Namespace" | "Service");
            if let Err(e) = validate_name(name, label) {
                return Err(ApiError::invalid(
                    &rt.subject(name),
                    "metadata.name",
                    "FieldValueInvalid",
                    &e,
                ));
            }
            inner.namespace_check(&rt, &ns)?;
        }
        if let Some(live) = &live {
            let want = str_of(config, "resourceVersion");
            if !want.is_empty() && want != str_of(live, "resourceVersion") {
                return Err(ApiError::stale(&rt.subject(name)));
            }
        }
        let mut config = config.clone();
        if rt.namespaced {
            meta_mut(&mut config).insert("namespace".into(), json!(ns));
        }
        let new = ssa::apply(
            live.as_ref(),
            &config,
            &opts.manager,
            force,
            &now,
            opts.subresource.as_deref(),
        )?;
        let op = Op::Apply;
        inner.finish_write(&rt, t, name, live.as_ref(), new, op, opts, &now)
    }

    pub(crate) fn delete_request(
        &self,
        t: &Target,
        name: &str,
        del: &DeleteOpts,
        dry_run: bool,
    ) -> Result<Outcome, ApiError> {
        let now = now_rfc3339();
        let mut inner = self.lock();
        let rt = inner.resolve(t)?;
        let ns = t.namespace.clone().unwrap_or_default();
        let live = inner
            .get(&rt.key(), &ns, name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(&rt.subject(name)))?;
        if let Some(uid) = &del.precondition_uid {
            if uid != str_of(&live, "uid") {
                return Err(ApiError::conflict(
                    &rt.subject(name),
                    &format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                        str_of(&live, "uid")
                    ),
                ));
            }
        }
        if let Some(rv) = &del.precondition_rv {
            if rv != str_of(&live, "resourceVersion") {
                return Err(ApiError::conflict(
                    &rt.subject(name),
                    &format!(
                        "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                        str_of(&live, "resourceVersion")
                    ),
                ));
            }
        }
        if dry_run {
            let has_fins = !finalizers(&live).is_empty()
                || rt.kind == "Namespace"
                || (del.propagation == Propagation::Foreground
                    && inner.has_dependents(str_of(&live, "uid")));
            let mut obj = live.clone();
            if has_fins && meta(&obj)["deletionTimestamp"].is_null() {
                meta_mut(&mut obj).insert("deletionTimestamp".into(), json!(now));
                meta_mut(&mut obj).insert("deletionGracePeriodSeconds".into(), json!(0));
            }
            return Ok(Outcome {
                object: obj,
                created: false,
                changed: true,
                removed: !has_fins,
            });
        }
        let before = inner.rv;
        let (obj, removed) = inner
            .delete_one(&rt.key(), &ns, name, del.propagation, &now)
            .ok_or_else(|| ApiError::not_found(&rt.subject(name)))?;
        inner.cascade(&now);
        let changed = inner.rv != before;
        Ok(Outcome {
            object: obj,
            created: false,
            changed,
            removed,
        })
    }

    /// Starts a watch: the events to send first, a receiver for live events, and the RV
    /// the watch is at. `from`: None = synthetic ADDED for existing objects, then live.
    pub(crate) fn watch(&self, t: &Target, from: Option<u64>) -> Result<WatchStart, ApiError> {
        let inner = self.lock();
        let rt = inner.resolve(t)?;
        let key = rt.key();
        let in_ns = |ns: &str| t.namespace.as_deref().is_none_or(|n| n == ns);
        let initial: Vec<Arc<Event>> = match from {
            None => inner
                .objects
                .get(&key)
                .map(|m| {
                    m.iter()
                        .filter(|((ns, _), _)| in_ns(ns))
                        .map(|((ns, _), o)| {
                            Arc::new(Event {
                                rv: rv_of(o),
                                key: key.clone(),
                                namespace: ns.clone(),
                                etype: "ADDED",
                                object: o.clone(),
                                prev: None,
                            })
                        })
                        .collect()
                })
                .unwrap_or_default(),
            Some(rv) => {
                if rv < inner.compacted {
                    return Err(ApiError::expired(rv, inner.compacted + 1));
                }
                inner
                    .history
                    .iter()
                    .filter(|e| e.rv > rv && e.key == key && in_ns(&e.namespace))
                    .cloned()
                    .collect()
            }
        };
        Ok((rt, initial, inner.tx.subscribe(), inner.rv))
    }
}
