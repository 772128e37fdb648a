//! Server-side apply semantics (managed fields, ownership, conflicts) for the API server double.
//!
//! The double's handlers call into this module; it is pure and synchronous and works on objects
//! as [`serde_json::Value`]:
//!
//! * `PATCH` with `application/apply-patch+yaml` → [`apply`] / [`apply_to`];
//! * `POST`, `PUT` and merge/JSON/strategic `PATCH` → [`record_update`] / [`record_update_to`],
//!   after the double has computed the new object;
//! * the main resource ignores `.status` and the status subresource only changes `.status`:
//!   [`strip_status`], [`with_live_status`] and [`only_status`] prepare the object, and
//!   [`Subresource`] tells the bookkeeping which part of the object is in play;
//! * [`check_target`] compares a request body with the URL it was sent to.
//!
//! Ownership is tracked as in Kubernetes: every `metadata.managedFields` entry is one
//! (manager, operation, subresource) with the set of fields it owns, encoded as `fieldsV1`.
//! An apply whose fields are owned by another manager with a different value fails with
//! [`ApplyError::Conflicts`] (HTTP 409) unless forced; equal values are shared. Fields a manager
//! applied before and no longer applies are removed unless someone else owns them. Non-apply
//! writes take ownership of what they change, without conflicts.
//!
//! Writes that change nothing return the object unchanged, `managedFields` timestamps included,
//! so the double can skip bumping `resourceVersion` — plugsync relies on that to prove an
//! unchanged repository causes no writes.
//!
//! # Simplifications versus a real kube-apiserver
//!
//! * **List types come from the data, not the OpenAPI schema.** A list whose elements are all
//!   objects with a string `name` is an associative list keyed by `name` (containers, env,
//!   volumes, volumeMounts, named ports, imagePullSecrets, …); every other list is atomic and
//!   replaced whole (args, command, tolerations, unnamed ports, …). The real server reads
//!   `x-kubernetes-list-type`/`-list-map-keys` per field: container ports are keyed by
//!   `containerPort`+`protocol`, Service ports by `port`+`protocol`, conditions by `type`,
//!   ownerReferences by `uid`, and some lists are sets (`v:` keys).
//! * **Maps are always granular.** Real structs marked `x-kubernetes-map-type: atomic` (for example
//!   a Deployment's `spec.selector`, recorded as `f:selector: {}`) are tracked field by field here.
//! * **One version per object.** Field sets are never converted between API versions; an apply
//!   must use the stored object's `apiVersion`.
//! * **Empty containers left by pruning are dropped.** Removing the last label removes `labels`
//!   too (built-in types omit empty maps and lists; real custom resources may keep `{}`).
//! * **`null` in an apply configuration** removes the field but is still recorded as owned.
//! * Not modelled: the `before-first-apply` entry for objects without managedFields, the cap on
//!   the number of Update entries, `resourceVersion` preconditions (the double checks those),
//!   and entry order (entries are sorted by manager, operation and subresource here; the real
//!   server keeps its own order).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde_json::{json, Map, Value};

/// Metadata fields the server owns: never in a field set, never taken from an apply
/// configuration (the live or skeleton value is kept).
const UNTRACKED_METADATA: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "managedFields",
    "deletionTimestamp",
    "selfLink",
];

/// The key field of associative lists (see the module docs for why there is only one).
const LIST_KEY: &str = "name";

// ----------------------------------------------------------------------------------------------
// Paths and field sets
// ----------------------------------------------------------------------------------------------

/// One step of a [`FieldPath`]; the four kinds of step Kubernetes' `fieldsV1` can express, so
/// entries written by a real server (or echoed back by a client) can still be read.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PathElement {
    /// A field of a map: `.replicas`, fieldsV1 `f:replicas`.
    Field(String),
    /// An associative-list item, by the canonical JSON of its key object (`{"name":"plugin"}`):
    /// `[name="plugin"]`, fieldsV1 `k:{"name":"plugin"}`.
    Key(String),
    /// A set-list item, by the canonical JSON of its value: `[="a"]`, fieldsV1 `v:"a"`.
    /// Only read from existing entries; this module never produces it.
    SetValue(String),
    /// A list item by position: `[3]`, fieldsV1 `i:3`. Only read, never produced.
    Index(usize),
}

impl PathElement {
    /// The step to the associative-list item named `name`, as this module keys list items.
    pub fn key(name: &str) -> Self {
        let mut key = Map::new();
        key.insert(LIST_KEY.to_string(), Value::String(name.to_string()));
        PathElement::Key(Value::Object(key).to_string())
    }

    /// The fieldsV1 spelling of this step (`f:replicas`, `k:{"name":"plugin"}`).
    fn fields_v1_key(&self) -> String {
        match self {
            PathElement::Field(name) => format!("f:{name}"),
            PathElement::Key(key) => format!("k:{key}"),
            PathElement::SetValue(value) => format!("v:{value}"),
            PathElement::Index(index) => format!("i:{index}"),
        }
    }

    /// Parses a fieldsV1 key; JSON in `k:` and `v:` keys is canonicalised (sorted, compact).
    fn parse_fields_v1_key(key: &str) -> Result<Self, FieldsV1Error> {
        let bad = || FieldsV1Error(format!("unrecognised key {key:?}"));
        let (kind, rest) = key.split_once(':').ok_or_else(bad)?;
        match kind {
            "f" => Ok(PathElement::Field(rest.to_string())),
            "k" => match serde_json::from_str::<Value>(rest) {
                Ok(object @ Value::Object(_)) => Ok(PathElement::Key(object.to_string())),
                _ => Err(bad()),
            },
            "v" => serde_json::from_str::<Value>(rest)
                .map(|value| PathElement::SetValue(value.to_string()))
                .map_err(|_| bad()),
            "i" => rest.parse().map(PathElement::Index).map_err(|_| bad()),
            _ => Err(bad()),
        }
    }

    /// Whether list item `item` at position `index` is the one this step names.
    fn selects(&self, index: usize, item: &Value) -> bool {
        match self {
            PathElement::Field(_) => false,
            PathElement::Key(_) => list_key(item).as_ref() == Some(self),
            PathElement::SetValue(value) => {
                serde_json::from_str::<Value>(value).is_ok_and(|v| v == *item)
            }
            PathElement::Index(wanted) => index == *wanted,
        }
    }
}

/// Formats like the real apiserver's conflict messages: `.image`, `[name="plugin"]`, `[="a"]`, `[0]`.
impl fmt::Display for PathElement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathElement::Field(name) => write!(f, ".{name}"),
            PathElement::Key(key) => match serde_json::from_str::<Map<String, Value>>(key) {
                Ok(fields) => {
                    let parts: Vec<String> =
                        fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    write!(f, "[{}]", parts.join(","))
                }
                Err(_) => write!(f, "[{key}]"),
            },
            PathElement::SetValue(value) => write!(f, "[={value}]"),
            PathElement::Index(index) => write!(f, "[{index}]"),
        }
    }
}

/// One field path, as in Kubernetes' fieldsV1 (`.spec.replicas`,
/// `.spec.template.spec.containers[name="plugin"].image`) — the unit of ownership, and what
/// conflict messages name.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FieldPath(Vec<PathElement>);

impl FieldPath {
    /// The empty path (the object itself), to build paths from: `FieldPath::root().field("spec")`.
    pub fn root() -> Self {
        FieldPath(Vec::new())
    }

    /// This path extended by the map field `name`.
    pub fn field(mut self, name: &str) -> Self {
        self.0.push(PathElement::Field(name.to_string()));
        self
    }

    /// This path extended by the associative-list item named `name`.
    pub fn item(mut self, name: &str) -> Self {
        self.0.push(PathElement::key(name));
        self
    }

    /// The steps of this path, outermost first.
    pub fn elements(&self) -> &[PathElement] {
        &self.0
    }
}

impl From<Vec<PathElement>> for FieldPath {
    fn from(elements: Vec<PathElement>) -> Self {
        FieldPath(elements)
    }
}

/// kubectl-style: `.spec.template.spec.containers[name="plugin"].image`.
impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|element| write!(f, "{element}"))
    }
}

/// A fieldsV1 document that cannot be read (unknown key prefix, bad JSON in a key, a non-object).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid fieldsV1: {0}")]
pub struct FieldsV1Error(String);

/// A set of owned field paths: what one managedFields entry records.
///
/// Members are the leaves (scalars, atomic lists, empty maps), associative-list items (which also
/// list their own fields) and, in Update entries, maps that the write created (fieldsV1 `.`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSet(BTreeSet<FieldPath>);

impl FieldSet {
    /// The empty set.
    pub fn new() -> Self {
        FieldSet::default()
    }

    /// Adds `path`; returns whether it was new.
    pub fn insert(&mut self, path: FieldPath) -> bool {
        self.0.insert(path)
    }

    /// Whether `path` itself is a member.
    pub fn contains(&self, path: &FieldPath) -> bool {
        self.0.contains(path)
    }

    /// The members, in path order.
    pub fn iter(&self) -> impl Iterator<Item = &FieldPath> {
        self.0.iter()
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the set is empty (empty entries are dropped from managedFields).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Members of either set.
    pub fn union(&self, other: &FieldSet) -> FieldSet {
        FieldSet(self.0.union(&other.0).cloned().collect())
    }

    /// Members of `self` that are not in `other`.
    pub fn difference(&self, other: &FieldSet) -> FieldSet {
        FieldSet(self.0.difference(&other.0).cloned().collect())
    }

    /// Members of both sets.
    pub fn intersection(&self, other: &FieldSet) -> FieldSet {
        FieldSet(self.0.intersection(&other.0).cloned().collect())
    }

    /// Whether some member lies strictly below `path` (so the node at `path` must stay).
    fn has_below(&self, path: &FieldPath) -> bool {
        // Paths sharing a prefix are contiguous in lexicographic order, starting at the prefix.
        self.0
            .range(path.clone()..)
            .take_while(|member| member.0.starts_with(&path.0))
            .any(|member| member.0.len() > path.0.len())
    }

    /// The fieldsV1 encoding: nested `f:`/`k:` keys, `{}` for a leaf, `".": {}` for a member that
    /// also has members below it.
    pub fn to_fields_v1(&self) -> Value {
        #[derive(Default)]
        struct Node {
            member: bool,
            children: BTreeMap<String, Node>,
        }
        fn encode(node: Node) -> Value {
            let mut map = Map::new();
            if node.member && !node.children.is_empty() {
                map.insert(".".to_string(), json!({}));
            }
            for (key, child) in node.children {
                map.insert(key, encode(child));
            }
            Value::Object(map)
        }
        let mut root = Node::default();
        for path in &self.0 {
            let mut node = &mut root;
            for element in &path.0 {
                node = node.children.entry(element.fields_v1_key()).or_default();
            }
            node.member = !path.0.is_empty();
        }
        encode(root)
    }

    /// Reads a fieldsV1 document (the inverse of [`FieldSet::to_fields_v1`]).
    pub fn from_fields_v1(fields_v1: &Value) -> Result<FieldSet, FieldsV1Error> {
        fn decode(
            node: &Value,
            prefix: &mut Vec<PathElement>,
            out: &mut BTreeSet<FieldPath>,
        ) -> Result<(), FieldsV1Error> {
            let map = node.as_object().ok_or_else(|| {
                FieldsV1Error(format!("{}: expected an object", FieldPath(prefix.clone())))
            })?;
            if map.is_empty() && !prefix.is_empty() {
                out.insert(FieldPath(prefix.clone()));
            }
            for (key, child) in map {
                if key == "." {
                    if !prefix.is_empty() {
                        out.insert(FieldPath(prefix.clone()));
                    }
                    continue;
                }
                prefix.push(PathElement::parse_fields_v1_key(key)?);
                decode(child, prefix, out)?;
                prefix.pop();
            }
            Ok(())
        }
        let mut out = BTreeSet::new();
        decode(fields_v1, &mut Vec::new(), &mut out)?;
        Ok(FieldSet(out))
    }
}

impl FromIterator<FieldPath> for FieldSet {
    fn from_iter<I: IntoIterator<Item = FieldPath>>(iter: I) -> Self {
        FieldSet(iter.into_iter().collect())
    }
}

// ----------------------------------------------------------------------------------------------
// Scopes, entries
// ----------------------------------------------------------------------------------------------

/// Which part of the object a write targets; decides which fields are tracked and changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Subresource {
    /// The object itself: everything except `.status` (and the server-owned metadata).
    #[default]
    Main,
    /// The `/status` subresource: only `.status`.
    Status,
}

impl Subresource {
    /// The value of a managedFields entry's `subresource` (none for the main resource).
    pub fn name(self) -> Option<&'static str> {
        match self {
            Subresource::Main => None,
            Subresource::Status => Some("status"),
        }
    }

    /// From the URL's subresource segment: `None` → main, `"status"` → status; anything else is
    /// not a subresource this module models (`None`).
    pub fn from_name(name: Option<&str>) -> Option<Self> {
        match name {
            None | Some("") => Some(Subresource::Main),
            Some("status") => Some(Subresource::Status),
            Some(_) => None,
        }
    }
}

/// The operation that produced a managedFields entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operation {
    /// Server-side apply.
    Apply,
    /// Any other write: create, update, merge/JSON/strategic patch.
    Update,
}

impl Operation {
    /// The spelling in managedFields (`"Apply"`, `"Update"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Apply => "Apply",
            Operation::Update => "Update",
        }
    }
}

/// Identity of a managedFields entry: (manager, operation, subresource). Its order is the
/// order entries are written in.
type EntryId = (String, Operation, Option<String>);

/// The rest of a managedFields entry.
#[derive(Clone, Debug, PartialEq)]
struct Entry {
    api_version: String,
    time: Option<String>,
    fields: FieldSet,
}

type Entries = BTreeMap<EntryId, Entry>;

/// Reads `metadata.managedFields` of `obj` (none → empty).
fn read_entries(obj: &Value) -> Result<Entries, String> {
    match obj.pointer("/metadata/managedFields") {
        None | Some(Value::Null) => Ok(Entries::new()),
        Some(Value::Array(list)) => read_entry_list(list),
        Some(_) => Err("metadata.managedFields must be a list".to_string()),
    }
}

fn read_entry_list(list: &[Value]) -> Result<Entries, String> {
    let mut entries = Entries::new();
    for item in list {
        let string = |key: &str| item.get(key).and_then(Value::as_str).map(str::to_string);
        let operation = match string("operation").as_deref() {
            Some("Apply") => Operation::Apply,
            Some("Update") => Operation::Update,
            other => return Err(format!("managedFields: unknown operation {other:?}")),
        };
        let fields = match item.get("fieldsV1") {
            None | Some(Value::Null) => FieldSet::new(),
            Some(fields_v1) => FieldSet::from_fields_v1(fields_v1).map_err(|e| e.to_string())?,
        };
        let id = (
            string("manager").unwrap_or_default(),
            operation,
            string("subresource").filter(|s| !s.is_empty()),
        );
        let entry = Entry {
            api_version: string("apiVersion").unwrap_or_default(),
            time: string("time"),
            fields,
        };
        match entries.get_mut(&id) {
            Some(existing) => existing.fields = existing.fields.union(&entry.fields),
            None => {
                entries.insert(id, entry);
            }
        }
    }
    Ok(entries)
}

/// Writes `entries` (empty ones dropped) as `metadata.managedFields`, or removes the key.
fn write_entries(obj: &mut Value, entries: Entries) {
    let list: Vec<Value> = entries
        .into_iter()
        .filter(|(_, entry)| !entry.fields.is_empty())
        .map(|((manager, operation, subresource), entry)| {
            let mut map = Map::new();
            map.insert("manager".into(), Value::String(manager));
            map.insert("operation".into(), operation.as_str().into());
            map.insert("apiVersion".into(), Value::String(entry.api_version));
            if let Some(time) = entry.time {
                map.insert("time".into(), Value::String(time));
            }
            map.insert("fieldsType".into(), "FieldsV1".into());
            map.insert("fieldsV1".into(), entry.fields.to_fields_v1());
            if let Some(subresource) = subresource {
                map.insert("subresource".into(), Value::String(subresource));
            }
            Value::Object(map)
        })
        .collect();
    let Some(root) = obj.as_object_mut() else {
        return;
    };
    if list.is_empty() {
        if let Some(Value::Object(meta)) = root.get_mut("metadata") {
            meta.remove("managedFields");
        }
        return;
    }
    let meta = root
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(meta) = meta {
        meta.insert("managedFields".into(), Value::Array(list));
    }
}

// ----------------------------------------------------------------------------------------------
// Errors
// ----------------------------------------------------------------------------------------------

/// One field another manager owns with a different value than the apply wants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    /// The owning manager (`"kubectl-client-side-apply"`).
    pub manager: String,
    /// The field, kubectl-style (`.spec.replicas`).
    pub field: String,
    /// The owner's operation; Update owners are named with their API version in messages.
    pub operation: Operation,
    /// The owner entry's `apiVersion`.
    pub api_version: String,
    /// The owner entry's subresource, if any.
    pub subresource: Option<String>,
}

impl Conflict {
    /// The owner as the real apiserver names it: `"plugsync"` for an applier,
    /// `"kubectl-edit" using apps/v1` for an updater, with `with subresource "status"` when set.
    pub fn owner(&self) -> String {
        let mut owner = quote(&self.manager);
        if let Some(subresource) = &self.subresource {
            owner.push_str(&format!(" with subresource {}", quote(subresource)));
        }
        if self.operation == Operation::Update {
            owner.push_str(&format!(" using {}", self.api_version));
        }
        owner
    }
}

fn quote(text: &str) -> String {
    Value::String(text.to_string()).to_string()
}

/// Why an apply was refused; [`ApplyError::to_status`] turns it into the response body.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Fields owned by other managers would change (HTTP 409). Sorted by owner, then field.
    #[error("{}", conflicts_message(.0))]
    Conflicts(Vec<Conflict>),
    /// The request cannot be applied as sent (HTTP 400): not an object, managedFields set,
    /// kind/apiVersion/name/namespace not matching the target, duplicate list keys.
    #[error("{0}")]
    Invalid(String),
    /// The status subresource was applied to an object that does not exist (HTTP 404).
    #[error("{0}")]
    NotFound(String),
}

/// The real apiserver's wording (`k8s.io/apiserver` `NewConflictError`), which kubectl and
/// kube-rs print verbatim.
fn conflicts_message(conflicts: &[Conflict]) -> String {
    if let [only] = conflicts {
        return format!(
            "Apply failed with 1 conflict: conflict with {}: {}",
            only.owner(),
            only.field
        );
    }
    // Grouped by owner, in order of first appearance (apply reports them sorted by owner).
    let mut groups: Vec<(String, Vec<&str>)> = Vec::new();
    for conflict in conflicts {
        let owner = conflict.owner();
        match groups.iter_mut().find(|(seen, _)| *seen == owner) {
            Some((_, fields)) => fields.push(&conflict.field),
            None => groups.push((owner, vec![conflict.field.as_str()])),
        }
    }
    let mut lines = Vec::new();
    for (owner, fields) in groups {
        lines.push(format!("conflicts with {owner}:"));
        lines.extend(fields.into_iter().map(|field| format!("- {field}")));
    }
    format!(
        "Apply failed with {} conflicts: {}",
        conflicts.len(),
        lines.join("\n")
    )
}

impl ApplyError {
    /// The HTTP status code the double should answer with.
    pub fn code(&self) -> u16 {
        match self {
            ApplyError::Conflicts(_) => 409,
            ApplyError::Invalid(_) => 400,
            ApplyError::NotFound(_) => 404,
        }
    }

    /// The `metav1.Status` reason (`Conflict`, `BadRequest`, `NotFound`).
    pub fn reason(&self) -> &'static str {
        match self {
            ApplyError::Conflicts(_) => "Conflict",
            ApplyError::Invalid(_) => "BadRequest",
            ApplyError::NotFound(_) => "NotFound",
        }
    }

    /// The response body: a `metav1.Status` as the real apiserver sends it, with one
    /// `FieldManagerConflict` cause per conflict (kube-rs and kubectl show these).
    pub fn to_status(&self) -> Value {
        let mut status = Map::new();
        status.insert("kind".into(), "Status".into());
        status.insert("apiVersion".into(), "v1".into());
        status.insert("metadata".into(), json!({}));
        status.insert("status".into(), "Failure".into());
        status.insert("message".into(), self.to_string().into());
        status.insert("reason".into(), self.reason().into());
        status.insert("code".into(), self.code().into());
        if let ApplyError::Conflicts(conflicts) = self {
            let causes: Vec<Value> = conflicts
                .iter()
                .map(|c| {
                    json!({
                        "reason": "FieldManagerConflict",
                        "message": format!("conflict with {}", c.owner()),
                        "field": c.field,
                    })
                })
                .collect();
            status.insert("details".into(), json!({ "causes": causes }));
        }
        Value::Object(status)
    }
}

fn invalid(message: impl Into<String>) -> ApplyError {
    ApplyError::Invalid(message.into())
}

// ----------------------------------------------------------------------------------------------
// Walking objects
// ----------------------------------------------------------------------------------------------

/// The associative-list key step of `item`, if it has a string `name`.
fn list_key(item: &Value) -> Option<PathElement> {
    item.get(LIST_KEY)
        .and_then(Value::as_str)
        .map(PathElement::key)
}

/// Whether `items` is treated as an associative list: non-empty, every element keyed.
fn is_associative(items: &[Value]) -> bool {
    !items.is_empty() && items.iter().all(|item| list_key(item).is_some())
}

/// Whether the field `key` under `parent` is tracked (and written) in `scope`.
fn tracked(scope: Subresource, parent: &[PathElement], key: &str) -> bool {
    match parent {
        [] => match key {
            "apiVersion" | "kind" => false,
            "status" => scope == Subresource::Status,
            _ => scope == Subresource::Main,
        },
        [PathElement::Field(meta)] if meta == "metadata" => !UNTRACKED_METADATA.contains(&key),
        _ => true,
    }
}

/// The root and the top-level `metadata` are containers, never leaves, even when empty.
fn always_container(path: &[PathElement]) -> bool {
    match path {
        [] => true,
        [PathElement::Field(name)] => name == "metadata",
        _ => false,
    }
}

fn position(items: &[Value], element: &PathElement) -> Option<usize> {
    items
        .iter()
        .enumerate()
        .position(|(index, item)| element.selects(index, item))
}

fn get<'a>(mut node: &'a Value, path: &[PathElement]) -> Option<&'a Value> {
    for element in path {
        node = match (node, element) {
            (Value::Object(map), PathElement::Field(name)) => map.get(name)?,
            (Value::Array(items), element) => items.get(position(items, element)?)?,
            _ => return None,
        };
    }
    Some(node)
}

fn get_mut<'a>(mut node: &'a mut Value, path: &[PathElement]) -> Option<&'a mut Value> {
    for element in path {
        node = match (node, element) {
            (Value::Object(map), PathElement::Field(name)) => map.get_mut(name)?,
            (Value::Array(items), element) => {
                let index = position(items, element)?;
                items.get_mut(index)?
            }
            _ => return None,
        };
    }
    Some(node)
}

/// Removes the node at `path`; returns whether there was one.
fn remove_at(root: &mut Value, path: &[PathElement]) -> bool {
    let Some((last, parent)) = path.split_last() else {
        return false;
    };
    match (get_mut(root, parent), last) {
        (Some(Value::Object(map)), PathElement::Field(name)) => map.remove(name).is_some(),
        (Some(Value::Array(items)), element) => match position(items, element) {
            Some(index) => {
                items.remove(index);
                true
            }
            None => false,
        },
        _ => false,
    }
}

/// Apply-style field set of `node` at `path`: leaves and list items, no map members.
fn collect_applied(
    node: &Value,
    path: &mut Vec<PathElement>,
    scope: Subresource,
    out: &mut BTreeSet<FieldPath>,
) {
    match node {
        Value::Object(map) if !map.is_empty() || always_container(path) => {
            for (key, child) in map {
                if tracked(scope, path, key) {
                    path.push(PathElement::Field(key.clone()));
                    collect_applied(child, path, scope, out);
                    path.pop();
                }
            }
        }
        Value::Array(items) if is_associative(items) => {
            for item in items {
                if let Some(key) = list_key(item) {
                    path.push(key);
                    out.insert(FieldPath(path.clone()));
                    collect_applied(item, path, scope, out);
                    path.pop();
                }
            }
        }
        _ => {
            out.insert(FieldPath(path.clone()));
        }
    }
}

/// Every path below `node` (maps and list items included): what a write that creates `node`
/// takes ownership of.
fn collect_all(
    node: &Value,
    path: &mut Vec<PathElement>,
    scope: Subresource,
    out: &mut BTreeSet<FieldPath>,
) {
    let children: Vec<(PathElement, &Value)> = match node {
        Value::Object(map) => map
            .iter()
            .filter(|(key, _)| tracked(scope, path, key))
            .map(|(key, child)| (PathElement::Field(key.clone()), child))
            .collect(),
        Value::Array(items) if is_associative(items) => items
            .iter()
            .filter_map(|item| Some((list_key(item)?, item)))
            .collect(),
        _ => Vec::new(),
    };
    for (element, child) in children {
        path.push(element);
        out.insert(FieldPath(path.clone()));
        collect_all(child, path, scope, out);
        path.pop();
    }
}

/// The paths a non-apply write from `old` to `new` modified or added (Kubernetes'
/// `Comparison.Modified ∪ Comparison.Added`).
fn collect_changed(
    old: Option<&Value>,
    new: &Value,
    path: &mut Vec<PathElement>,
    scope: Subresource,
    out: &mut BTreeSet<FieldPath>,
) {
    match (old, new) {
        (Some(Value::Object(old)), Value::Object(new)) => {
            for (key, child) in new {
                if tracked(scope, path, key) {
                    path.push(PathElement::Field(key.clone()));
                    collect_changed(old.get(key), child, path, scope, out);
                    path.pop();
                }
            }
        }
        (Some(Value::Array(old)), Value::Array(new))
            if is_associative(new) && (old.is_empty() || is_associative(old)) =>
        {
            for item in new {
                if let Some(key) = list_key(item) {
                    let before = position(old, &key).and_then(|index| old.get(index));
                    path.push(key);
                    collect_changed(before, item, path, scope, out);
                    path.pop();
                }
            }
        }
        (Some(old), new) if old == new => {}
        (_, new) => {
            if !path.is_empty() {
                out.insert(FieldPath(path.clone()));
            }
            collect_all(new, path, scope, out);
        }
    }
}

/// Merges `config` into `out` (the live map at `path`): config wins, live-only fields stay.
fn merge_map(
    out: &mut Map<String, Value>,
    config: &Map<String, Value>,
    path: &mut Vec<PathElement>,
    scope: Subresource,
) {
    for (key, wanted) in config {
        if !tracked(scope, path, key) {
            continue;
        }
        path.push(PathElement::Field(key.clone()));
        let merged = merge_value(out.get(key), wanted, path, scope);
        path.pop();
        match merged {
            Some(value) => out.insert(key.clone(), value),
            None => out.remove(key),
        };
    }
}

/// The merge of `config` onto `live`; `None` when the result is "no field" (`null` in config).
fn merge_value(
    live: Option<&Value>,
    config: &Value,
    path: &mut Vec<PathElement>,
    scope: Subresource,
) -> Option<Value> {
    match config {
        Value::Null => None,
        Value::Object(wanted) => {
            let mut out = match live {
                Some(Value::Object(live)) => live.clone(),
                _ => Map::new(),
            };
            merge_map(&mut out, wanted, path, scope);
            Some(Value::Object(out))
        }
        Value::Array(wanted) if is_associative(wanted) => {
            let live: &[Value] = match live {
                Some(Value::Array(items)) if items.is_empty() || is_associative(items) => items,
                _ => &[],
            };
            Some(Value::Array(merge_lists(live, wanted, path, scope)))
        }
        other => Some(other.clone()),
    }
}

/// Merges two associative lists by key. Items in both are merged; live-only items keep their
/// place; config items appear in config order (close to structured-merge-diff's ordering).
fn merge_lists(
    live: &[Value],
    config: &[Value],
    path: &mut Vec<PathElement>,
    scope: Subresource,
) -> Vec<Value> {
    let (live, config) = (keyed(live), keyed(config));
    let in_config = |key: &PathElement| config.iter().any(|(k, _)| k == key);
    let mut merge = |key: &PathElement, wanted: &Value, out: &mut Vec<Value>| {
        let before = live.iter().find(|(k, _)| k == key).map(|(_, item)| *item);
        path.push(key.clone());
        out.extend(merge_value(before, wanted, path, scope));
        path.pop();
    };
    let mut out = Vec::with_capacity(live.len() + config.len());
    let (mut l, mut c) = (0, 0);
    while l < live.len() || c < config.len() {
        if let Some((live_key, live_item)) = live.get(l) {
            match config.get(c) {
                Some((key, wanted)) if key == live_key => {
                    merge(key, wanted, &mut out);
                    l += 1;
                    c += 1;
                    continue;
                }
                _ if !in_config(live_key) => {
                    out.push((*live_item).clone());
                    l += 1;
                    continue;
                }
                _ if out
                    .iter()
                    .any(|item| list_key(item).as_ref() == Some(live_key)) =>
                {
                    // Config order already placed it.
                    l += 1;
                    continue;
                }
                _ => {}
            }
        }
        let Some((key, wanted)) = config.get(c) else {
            break;
        };
        merge(key, wanted, &mut out);
        c += 1;
    }
    out
}

/// The items of an associative list with their keys.
fn keyed(items: &[Value]) -> Vec<(PathElement, &Value)> {
    items
        .iter()
        .filter_map(|item| Some((list_key(item)?, item)))
        .collect()
}

/// Removes what `applier` owned before and no longer applies (`removable`), unless something in
/// `keep` lies below it; the key field of a kept item stays; containers emptied by the removal go.
fn prune(merged: &mut Value, removable: &FieldSet, keep: &FieldSet) {
    for path in removable.0.iter().rev() {
        let is_key_field = matches!(
            path.0.as_slice(),
            [.., PathElement::Key(_), PathElement::Field(name)] if name == LIST_KEY
        );
        if is_key_field || keep.has_below(path) || !remove_at(merged, &path.0) {
            continue;
        }
        for end in (1..path.0.len()).rev() {
            let ancestor = &path.0[..end];
            let empty = match get(merged, ancestor) {
                Some(Value::Object(map)) => map.is_empty(),
                Some(Value::Array(items)) => items.is_empty(),
                _ => false,
            };
            if !empty || always_container(ancestor) || keep.contains(&ancestor.to_vec().into()) {
                break;
            }
            remove_at(merged, ancestor);
        }
    }
}

/// Whether the value at `path` differs between `before` and `after`, as a leaf: two maps (or two
/// list items) are not a difference by themselves — their fields are compared on their own.
fn differs(before: &Value, after: &Value, path: &FieldPath) -> bool {
    match (get(before, &path.0), get(after, &path.0)) {
        (Some(Value::Object(_)), Some(Value::Object(_))) => false,
        (a, b) => a != b,
    }
}

/// Whether `path` existed in `before` and is gone in `after` (ownership of it ends).
fn removed(before: &Value, after: &Value, path: &FieldPath) -> bool {
    get(before, &path.0).is_some() && get(after, &path.0).is_none()
}

// ----------------------------------------------------------------------------------------------
// Public operations
// ----------------------------------------------------------------------------------------------

/// The fieldsV1 set of an object (what an Apply entry records for a config) for the main
/// resource: every set field except `apiVersion`, `kind`, server-owned metadata and `.status`.
pub fn field_set(config: &Value) -> FieldSet {
    field_set_for(config, Subresource::Main)
}

/// [`field_set`] for a given target: the status subresource tracks only `.status`.
pub fn field_set_for(config: &Value, subresource: Subresource) -> FieldSet {
    let mut out = BTreeSet::new();
    if config.is_object() {
        collect_applied(config, &mut Vec::new(), subresource, &mut out);
    }
    FieldSet(out)
}

/// Server-side apply of `config` by `manager` onto `live` (None when the object does not exist
/// yet), for the main resource. Returns the new object with `metadata.managedFields` updated;
/// `now` (RFC 3339) is stamped on this manager's entry only if the object or its set changed.
/// The double still has to set server fields (uid, resourceVersion, creationTimestamp, …).
pub fn apply(
    live: Option<&Value>,
    config: &Value,
    manager: &str,
    force: bool,
    now: &str,
) -> Result<Value, ApplyError> {
    apply_to(live, config, manager, force, now, Subresource::Main)
}

/// [`apply`] to a given target. For [`Subresource::Status`] only `.status` of `config` is merged
/// and owned (entry with `"subresource": "status"`), and the object must exist.
pub fn apply_to(
    live: Option<&Value>,
    config: &Value,
    manager: &str,
    force: bool,
    now: &str,
    subresource: Subresource,
) -> Result<Value, ApplyError> {
    let (config_map, api_version) = validate_apply(live, config, subresource)?;
    let before = match live {
        Some(live) => live.clone(),
        None if subresource == Subresource::Status => {
            return Err(ApplyError::NotFound(format!(
                "{} {} not found",
                text(config, "/kind"),
                quote(text(config, "/metadata/name"))
            )))
        }
        None => skeleton(config),
    };
    let mut entries = read_entries(&before)
        .map_err(|e| invalid(format!("failed to decode managed fields: {e}")))?;
    let id: EntryId = (
        manager.to_string(),
        Operation::Apply,
        subresource.name().map(str::to_string),
    );
    let applied = field_set_for(config, subresource);
    let previous = entries
        .get(&id)
        .map(|entry| entry.fields.clone())
        .unwrap_or_default();

    // Merge, then drop what this manager applied before, no longer applies, and nobody else owns.
    let mut after = before.clone();
    if let Value::Object(out) = &mut after {
        merge_map(out, config_map, &mut Vec::new(), subresource);
    }
    let others = entries
        .iter()
        .filter(|(other, _)| **other != id)
        .fold(FieldSet::new(), |acc, (_, entry)| acc.union(&entry.fields));
    let keep = applied.union(&others);
    prune(&mut after, &previous.difference(&keep), &keep);

    // Conflicts: applied fields another entry owns whose value this apply changes.
    let mut conflicts: BTreeSet<(EntryId, FieldPath)> = BTreeSet::new();
    for (other, entry) in entries.iter().filter(|(other, _)| **other != id) {
        for path in applied.intersection(&entry.fields).iter() {
            if differs(&before, &after, path) {
                conflicts.insert((other.clone(), path.clone()));
            }
        }
    }
    if !force && !conflicts.is_empty() {
        let describe =
            |((manager, operation, subresource), path): &(EntryId, FieldPath)| Conflict {
                manager: manager.clone(),
                field: path.to_string(),
                operation: *operation,
                api_version: entries
                    .get(&(manager.clone(), *operation, subresource.clone()))
                    .map(|entry| entry.api_version.clone())
                    .unwrap_or_default(),
                subresource: subresource.clone(),
            };
        return Err(ApplyError::Conflicts(
            conflicts.iter().map(describe).collect(),
        ));
    }

    // Ownership: forced fields and removed fields leave the other entries.
    for (other, entry) in entries.iter_mut().filter(|(other, _)| **other != id) {
        entry.fields.0.retain(|path| {
            !conflicts.contains(&(other.clone(), path.clone())) && !removed(&before, &after, path)
        });
    }
    let unchanged = after == before
        && entries
            .get(&id)
            .is_some_and(|entry| entry.fields == applied && entry.api_version == api_version);
    if !unchanged {
        let entry = Entry {
            api_version,
            time: Some(now.to_string()),
            fields: applied,
        };
        entries.insert(id, entry);
    }
    write_entries(&mut after, entries);
    Ok(after)
}

/// The string at `pointer` in `value`, or "".
fn text<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// A new object for a create-by-apply: the config's apiVersion, kind, name and namespace.
fn skeleton(config: &Value) -> Value {
    let mut meta = Map::new();
    for key in ["name", "namespace"] {
        let value = text(config, &format!("/metadata/{key}"));
        if !value.is_empty() {
            meta.insert(key.to_string(), value.into());
        }
    }
    json!({
        "apiVersion": text(config, "/apiVersion"),
        "kind": text(config, "/kind"),
        "metadata": meta,
    })
}

/// Checks an apply configuration (and that it targets `live`); returns its map and apiVersion.
fn validate_apply<'a>(
    live: Option<&Value>,
    config: &'a Value,
    subresource: Subresource,
) -> Result<(&'a Map<String, Value>, String), ApplyError> {
    let Value::Object(config_map) = config else {
        return Err(invalid("the apply configuration must be a JSON object"));
    };
    match config_map.get("metadata") {
        Some(Value::Object(meta)) if meta.get("managedFields").is_some_and(|v| !v.is_null()) => {
            return Err(invalid("metadata.managedFields must be nil"));
        }
        Some(Value::Object(_)) | None => {}
        Some(_) => return Err(invalid("metadata must be an object")),
    }
    let (api_version, kind) = (text(config, "/apiVersion"), text(config, "/kind"));
    if api_version.is_empty() || kind.is_empty() {
        return Err(invalid(
            "apiVersion and kind must be set in an apply configuration",
        ));
    }
    let name = text(config, "/metadata/name");
    if name.is_empty() {
        return Err(invalid("metadata.name: Required value: name is required"));
    }
    if let Some(live) = live {
        if !live.is_object() {
            return Err(invalid("the live object is not a JSON object"));
        }
        let live_kind = text(live, "/kind");
        if kind != live_kind {
            return Err(invalid(format!(
                "the kind in the apply configuration ({kind}) does not match the kind of the object ({live_kind})"
            )));
        }
        let live_version = text(live, "/apiVersion");
        if api_version != live_version {
            return Err(invalid(format!(
                "Incorrect version specified in apply patch. Specified patch version: {api_version}, expected: {live_version}"
            )));
        }
        let live_name = text(live, "/metadata/name");
        if name != live_name {
            return Err(invalid(format!(
                "the name of the object ({name}) does not match the name on the URL ({live_name})"
            )));
        }
        let namespace = text(config, "/metadata/namespace");
        if !namespace.is_empty() && namespace != text(live, "/metadata/namespace") {
            return Err(invalid(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
    }
    check_duplicate_keys(config, &mut Vec::new(), subresource).map_err(|e| {
        invalid(format!(
            "failed to create typed patch object ({api_version}, Kind={kind}): {e}"
        ))
    })?;
    Ok((config_map, api_version.to_string()))
}

/// Associative lists in an apply configuration must not repeat a key (as in Kubernetes).
fn check_duplicate_keys(
    node: &Value,
    path: &mut Vec<PathElement>,
    scope: Subresource,
) -> Result<(), String> {
    match node {
        Value::Object(map) => {
            for (key, child) in map {
                if tracked(scope, path, key) {
                    path.push(PathElement::Field(key.clone()));
                    check_duplicate_keys(child, path, scope)?;
                    path.pop();
                }
            }
        }
        Value::Array(items) if is_associative(items) => {
            let mut seen = BTreeSet::new();
            for item in items {
                if let Some(key) = list_key(item) {
                    if !seen.insert(key.clone()) {
                        return Err(format!(
                            "{}: duplicate entries for key {key}",
                            FieldPath(path.clone())
                        ));
                    }
                    path.push(key);
                    check_duplicate_keys(item, path, scope)?;
                    path.pop();
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// Bookkeeping for a non-apply write (create, update/PUT, merge/JSON/strategic patch) of the main
/// resource by `manager`: returns `new` with managedFields updated. The fields whose values
/// differ between `old` and `new` (all set fields on create) become owned by `manager` with
/// operation "Update" and leave other entries (non-apply writes take ownership without
/// conflicts); removed fields leave every entry; empty entries are dropped. Nothing changed →
/// managedFields unchanged (no `time` bump).
pub fn record_update(old: Option<&Value>, new: Value, manager: &str, now: &str) -> Value {
    record_update_to(old, new, manager, now, Subresource::Main)
}

/// [`record_update`] for a given target. Which managedFields it starts from follows the real
/// apiserver: those `new` carries if it has any (a client echoing them back, as `kubectl edit` and
/// kube-rs `replace` do), `[{}]` in `new` resets them, otherwise `old`'s; status writes always
/// start from `old`'s. For [`Subresource::Status`] only `.status` is compared.
pub fn record_update_to(
    old: Option<&Value>,
    new: Value,
    manager: &str,
    now: &str,
    subresource: Subresource,
) -> Value {
    let mut new = new;
    if !new.is_object() {
        return new;
    }
    let mut entries = base_entries(old, &new, subresource);
    let created = json!({ "metadata": {} });
    let before = old.unwrap_or(&created);
    let mut changed = BTreeSet::new();
    collect_changed(
        Some(before),
        &new,
        &mut Vec::new(),
        subresource,
        &mut changed,
    );
    let changed = FieldSet(changed);
    let id: EntryId = (
        manager.to_string(),
        Operation::Update,
        subresource.name().map(str::to_string),
    );
    for (other, entry) in entries.iter_mut() {
        let own = *other == id;
        entry
            .fields
            .0
            .retain(|path| (own || !changed.contains(path)) && !removed(before, &new, path));
    }
    if !changed.is_empty() {
        let fields = match entries.get(&id) {
            Some(entry) => entry.fields.union(&changed),
            None => changed,
        };
        let entry = Entry {
            api_version: text(&new, "/apiVersion").to_string(),
            time: Some(now.to_string()),
            fields,
        };
        entries.insert(id, entry);
    }
    write_entries(&mut new, entries);
    new
}

/// The managedFields an update starts from (Kubernetes' `decodeLiveOrNew`).
fn base_entries(old: Option<&Value>, new: &Value, subresource: Subresource) -> Entries {
    let from_old = || {
        old.and_then(|old| read_entries(old).ok())
            .unwrap_or_default()
    };
    if subresource == Subresource::Status {
        return from_old();
    }
    match new.pointer("/metadata/managedFields") {
        Some(Value::Array(list)) if matches!(list.as_slice(), [Value::Object(m)] if m.is_empty()) => {
            Entries::new()
        }
        Some(Value::Array(list)) if !list.is_empty() => match read_entry_list(list) {
            Ok(entries) if !entries.is_empty() => entries,
            _ => from_old(),
        },
        _ => from_old(),
    }
}

/// Removes `.status`: what the main resource does with the status of a created object.
pub fn strip_status(obj: &mut Value) {
    if let Some(map) = obj.as_object_mut() {
        map.remove("status");
    }
}

/// A main-resource update (PUT or non-apply PATCH) cannot change `.status`: `incoming` with the
/// status of `live` (none when there is no live object).
pub fn with_live_status(live: Option<&Value>, incoming: Value) -> Value {
    let mut out = incoming;
    strip_status(&mut out);
    if let (Some(status), Some(map)) = (live.and_then(|l| l.get("status")), out.as_object_mut()) {
        map.insert("status".to_string(), status.clone());
    }
    out
}

/// A status-subresource write changes only `.status`: `live` with the status of `incoming`
/// (removed if `incoming` has none).
pub fn only_status(live: &Value, incoming: &Value) -> Value {
    let mut out = live.clone();
    if let Some(map) = out.as_object_mut() {
        match incoming.get("status") {
            Some(status) => map.insert("status".to_string(), status.clone()),
            None => map.remove("status"),
        };
    }
    out
}

/// Checks a request body against the target of its URL (`name` is `None` for a POST to a
/// collection; `namespace` is `None` for cluster-scoped resources), with the real apiserver's
/// messages. An empty namespace in the body is fine: the server fills it in.
pub fn check_target(
    obj: &Value,
    api_version: &str,
    kind: &str,
    namespace: Option<&str>,
    name: Option<&str>,
) -> Result<(), ApplyError> {
    if !obj.is_object() {
        return Err(invalid("the request body must be a JSON object"));
    }
    let (obj_version, obj_kind) = (text(obj, "/apiVersion"), text(obj, "/kind"));
    if obj_kind.is_empty() {
        return Err(invalid("Object 'Kind' is missing in the request body"));
    }
    if obj_version != api_version {
        return Err(invalid(format!(
            "the API version in the data ({obj_version}) does not match the expected API version ({api_version})"
        )));
    }
    if obj_kind != kind {
        return Err(invalid(format!(
            "the kind in the data ({obj_kind}) does not match the expected kind ({kind})"
        )));
    }
    if let Some(name) = name {
        let obj_name = text(obj, "/metadata/name");
        if obj_name != name {
            return Err(invalid(format!(
                "the name of the object ({obj_name}) does not match the name on the URL ({name})"
            )));
        }
    }
    if let Some(namespace) = namespace {
        let obj_namespace = text(obj, "/metadata/namespace");
        if !obj_namespace.is_empty() && obj_namespace != namespace {
            return Err(invalid(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(text: &[&str]) -> FieldPath {
        text.iter()
            .fold(FieldPath::root(), |p, step| match step.strip_prefix('=') {
                Some(name) => p.item(name),
                None => p.field(step),
            })
    }

    fn merged(live: Value, config: Value) -> Value {
        let mut out = live;
        if let (Value::Object(out), Value::Object(config)) = (&mut out, &config) {
            merge_map(out, config, &mut Vec::new(), Subresource::Main);
        }
        out
    }

    #[test]
    fn fields_v1_round_trips() {
        let fields_v1 = json!({
            "f:metadata": {"f:labels": {".": {}, "f:app": {}}},
            "f:spec": {
                "f:replicas": {},
                "f:template": {"f:spec": {"f:containers": {
                    "k:{\"name\":\"plugin\"}": {".": {}, "f:image": {}, "f:name": {}}
                }}}
            }
        });
        let set = FieldSet::from_fields_v1(&fields_v1).unwrap();
        assert_eq!(set.to_fields_v1(), fields_v1);
        let containers = path(&["spec", "template", "spec", "containers"]);
        assert!(set.contains(&path(&["metadata", "labels"])));
        assert!(set.contains(&path(&["metadata", "labels", "app"])));
        assert!(set.contains(&containers.clone().item("plugin")));
        assert!(set.contains(&containers.clone().item("plugin").field("image")));
        assert!(!set.contains(&containers));
        assert!(!set.contains(&path(&["spec"])));
        assert_eq!(set.len(), 6);
    }

    #[test]
    fn fields_v1_reads_foreign_keys_canonically() {
        let fields_v1 = json!({"f:ports": {
            "k:{\"protocol\":\"TCP\", \"containerPort\":80}": {".": {}, "f:name": {}},
        }, "f:finalizers": {"v:\"a\"": {}}, "f:args": {"i:0": {}}});
        let set = FieldSet::from_fields_v1(&fields_v1).unwrap();
        let shown: Vec<String> = set.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                ".args[0]",
                ".finalizers[=\"a\"]",
                ".ports[containerPort=80,protocol=\"TCP\"]",
                ".ports[containerPort=80,protocol=\"TCP\"].name",
            ]
        );
        // Canonical (sorted, compact) key JSON on the way out.
        assert!(set.to_fields_v1()["f:ports"]
            .get("k:{\"containerPort\":80,\"protocol\":\"TCP\"}")
            .is_some());
    }

    #[test]
    fn fields_v1_rejects_what_it_cannot_read() {
        for bad in [
            json!({"x:y": {}}),
            json!({"f:a": 1}),
            json!({"k:[1]": {}}),
            json!({"i:z": {}}),
            json!([]),
        ] {
            assert!(FieldSet::from_fields_v1(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn paths_print_like_kubectl() {
        let image = path(&["spec", "template", "spec", "containers", "=plugin", "image"]);
        assert_eq!(
            image.to_string(),
            ".spec.template.spec.containers[name=\"plugin\"].image"
        );
        assert_eq!(path(&["spec", "replicas"]).to_string(), ".spec.replicas");
        assert_eq!(FieldPath::root().to_string(), "");
    }

    #[test]
    fn field_set_skips_server_fields_and_status() {
        let obj = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "x", "namespace": "n", "uid": "u", "resourceVersion": "1",
                         "generation": 1, "creationTimestamp": "t", "labels": {"a": "b"}},
            "data": {"k": "v"},
            "status": {"phase": "x"}
        });
        let fields_v1 = json!({"f:data": {"f:k": {}}, "f:metadata": {"f:labels": {"f:a": {}}}});
        assert_eq!(field_set(&obj).to_fields_v1(), fields_v1);
        assert_eq!(
            field_set_for(&obj, Subresource::Status).to_fields_v1(),
            json!({"f:status": {"f:phase": {}}})
        );
        assert!(field_set(&json!({"metadata": {}})).is_empty());
    }

    #[test]
    fn field_set_leaves_are_scalars_atomic_lists_and_empty_maps() {
        let obj = json!({"spec": {
            "args": ["a", "b"],
            "tolerations": [{"key": "k", "operator": "Exists"}],
            "resources": {},
            "empty": [],
            "env": [{"name": "A", "value": "1"}],
        }});
        let expected = json!({"f:spec": {
            "f:args": {},
            "f:empty": {},
            "f:env": {"k:{\"name\":\"A\"}": {".": {}, "f:name": {}, "f:value": {}}},
            "f:resources": {},
            "f:tolerations": {},
        }});
        assert_eq!(field_set(&obj).to_fields_v1(), expected);
    }

    #[test]
    fn associative_lists_merge_by_name_and_keep_live_only_items() {
        let live = json!({"spec": {"containers": [
            {"name": "a", "image": "a:1", "args": ["x"]},
            {"name": "b", "image": "b:1"},
        ]}});
        let config = json!({"spec": {"containers": [
            {"name": "a", "image": "a:2"},
            {"name": "c", "image": "c:1"},
        ]}});
        assert_eq!(
            merged(live.clone(), config),
            json!({"spec": {"containers": [
                {"name": "a", "image": "a:2", "args": ["x"]},
                {"name": "b", "image": "b:1"},
                {"name": "c", "image": "c:1"},
            ]}})
        );
        // The config's order wins for the items it names.
        let reorder = json!({"spec": {"containers": [{"name": "b"}, {"name": "a"}]}});
        let names: Vec<Value> = merged(live, reorder)["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].clone())
            .collect();
        assert_eq!(names, [json!("b"), json!("a")]);
    }

    #[test]
    fn atomic_lists_are_replaced_and_null_removes() {
        let live = json!({"spec": {"args": ["a", "b"], "paused": true,
                                   "ports": [{"containerPort": 80}]}});
        let config = json!({"spec": {"args": ["c"], "paused": null,
                                     "ports": [{"name": "http", "containerPort": 8080}]}});
        assert_eq!(
            merged(live, config),
            json!({"spec": {"args": ["c"], "ports": [{"name": "http", "containerPort": 8080}]}})
        );
    }

    #[test]
    fn merge_never_takes_server_fields_from_config() {
        let live = json!({"apiVersion": "v1", "kind": "ConfigMap",
                          "metadata": {"name": "x", "uid": "live", "resourceVersion": "7"}});
        let config = json!({"apiVersion": "v1", "kind": "ConfigMap",
                            "metadata": {"name": "x", "uid": "other", "resourceVersion": "1"},
                            "status": {"a": 1}});
        assert_eq!(merged(live.clone(), config), live);
    }

    #[test]
    fn changes_mark_created_maps_and_items_as_members() {
        let old = json!({"metadata": {"name": "x"}, "spec": {"replicas": 1, "paused": false}});
        let new = json!({"metadata": {"name": "x", "labels": {"app": "web"}},
                         "spec": {"replicas": 2, "paused": false,
                                  "containers": [{"name": "a", "image": "i"}]}});
        let mut out = BTreeSet::new();
        collect_changed(
            Some(&old),
            &new,
            &mut Vec::new(),
            Subresource::Main,
            &mut out,
        );
        assert_eq!(
            FieldSet(out).to_fields_v1(),
            json!({
                "f:metadata": {"f:labels": {".": {}, "f:app": {}}},
                "f:spec": {
                    "f:containers": {".": {}, "k:{\"name\":\"a\"}": {".": {}, "f:image": {}, "f:name": {}}},
                    "f:replicas": {},
                }
            })
        );
    }

    #[test]
    fn prune_drops_emptied_containers_but_keeps_owned_items() {
        let mut obj = json!({"metadata": {"name": "x", "labels": {"a": "1"}},
                             "spec": {"containers": [{"name": "c", "image": "i", "args": ["x"]}]}});
        let item = path(&["spec", "containers", "=c"]);
        let removable: FieldSet = [
            path(&["metadata", "labels", "a"]),
            item.clone(),
            item.clone().field("name"),
            item.clone().field("args"),
        ]
        .into_iter()
        .collect();
        let keep: FieldSet = [item.clone().field("image")].into_iter().collect();
        prune(&mut obj, &removable, &keep);
        assert_eq!(
            obj,
            json!({"metadata": {"name": "x"}, "spec": {"containers": [{"name": "c", "image": "i"}]}})
        );
        // Nobody owns the image any more: the item goes, and the emptied list and spec with it.
        let removable = removable.union(&keep);
        prune(&mut obj, &removable, &FieldSet::new());
        assert_eq!(obj, json!({"metadata": {"name": "x"}}));
    }

    #[test]
    fn conflict_messages_group_by_owner() {
        let conflict = |manager: &str, operation, field: &str| Conflict {
            manager: manager.into(),
            field: field.into(),
            operation,
            api_version: "apps/v1".into(),
            subresource: None,
        };
        let error = ApplyError::Conflicts(vec![
            conflict("a", Operation::Apply, ".spec.replicas"),
            conflict("a", Operation::Apply, ".spec.paused"),
            conflict("b", Operation::Update, ".metadata.labels.x"),
        ]);
        assert_eq!(
            error.to_string(),
            "Apply failed with 3 conflicts: conflicts with \"a\":\n- .spec.replicas\n- .spec.paused\n\
             conflicts with \"b\" using apps/v1:\n- .metadata.labels.x"
        );
        let single = ApplyError::Conflicts(vec![Conflict {
            subresource: Some("status".into()),
            ..conflict("c", Operation::Update, ".status.phase")
        }]);
        assert_eq!(
            single.to_string(),
            "Apply failed with 1 conflict: conflict with \"c\" with subresource \"status\" using apps/v1: .status.phase"
        );
    }

    #[test]
    fn invalid_becomes_bad_request() {
        let status = invalid("metadata.managedFields must be nil").to_status();
        assert_eq!(
            status,
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                   "message": "metadata.managedFields must be nil", "reason": "BadRequest", "code": 400})
        );
    }

    #[test]
    fn has_below_sees_only_descendants() {
        let set: FieldSet = [path(&["spec", "a", "b"]), path(&["spec", "ab"])]
            .into_iter()
            .collect();
        assert!(set.has_below(&path(&["spec", "a"])));
        assert!(!set.has_below(&path(&["spec", "a", "b"])));
        assert!(!set.has_below(&path(&["spec", "ab"])));
        assert!(!set.has_below(&path(&["spec", "aa"])));
    }
}
