//! The resource types the double serves: the built-in kinds plus those of established CRDs.

use serde_json::{json, Value};

use super::errors::Subject;

/// One served version of a resource.
#[derive(Debug, Clone, PartialEq)]
pub struct VersionInfo {
    /// e.g. `v1`.
    pub name: String,
    /// Whether `/status` is a subresource (status writes go only there).
    pub status_subresource: bool,
    /// CRD `additionalPrinterColumns` (empty for built-ins).
    pub printer_columns: Vec<Value>,
}

/// A resource type (`deployments.apps`), served at one or more versions.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceType {
    /// API group, "" for core.
    pub group: String,
    /// Served versions, the first is the preferred one.
    pub versions: Vec<VersionInfo>,
    /// Plural resource name (URL segment).
    pub plural: String,
    /// Singular name.
    pub singular: String,
    /// Kind.
    pub kind: String,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
    /// Short names (`deploy`).
    pub short_names: Vec<String>,
    /// Categories (`all`).
    pub categories: Vec<String>,
    /// Whether this type comes from a CRD.
    pub custom: bool,
}

/// The verbs every served resource supports.
pub const VERBS: [&str; 8] = [
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

impl ResourceType {
    /// The served version named `v`.
    pub fn version(&self, v: &str) -> Option<&VersionInfo> {
        self.versions.iter().find(|x| x.name == v)
    }

    /// `group/version` or `version` for core.
    pub fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() {
            version.to_string()
        } else {
            format!("{}/{}", self.group, version)
        }
    }

    /// The key objects of this type are stored under.
    pub fn key(&self) -> (String, String) {
        (self.group.clone(), self.plural.clone())
    }

    /// Error subject for an object of this type.
    pub fn subject(&self, name: &str) -> Subject {
        Subject {
            group: self.group.clone(),
            resource: self.plural.clone(),
            kind: self.kind.clone(),
            name: name.to_string(),
        }
    }

    /// Whether any served version has a status subresource.
    pub fn has_status(&self, version: &str) -> bool {
        self.version(version).is_some_and(|v| v.status_subresource)
    }
}

#[allow(clippy::too_many_arguments)]
fn builtin(
    group: &str,
    version: &str,
    plural: &str,
    singular: &str,
    kind: &str,
    namespaced: bool,
    short: &[&str],
    all: bool,
    status: bool,
) -> ResourceType {
    ResourceType {
        group: group.into(),
        versions: vec![VersionInfo {
            name: version.into(),
            status_subresource: status,
            printer_columns: vec![],
        }],
        plural: plural.into(),
        singular: singular.into(),
        kind: kind.into(),
        namespaced,
        short_names: short.iter().map(|s| s.to_string()).collect(),
        categories: if all { vec!["all".into()] } else { vec![] },
        custom: false,
    }
}

/// The built-in kinds.
pub fn builtins() -> Vec<ResourceType> {
    vec![
        builtin(
            "",
            "v1",
            "namespaces",
            "namespace",
            "Namespace",
            false,
            &["ns"],
            false,
            true,
        ),
        builtin(
            "",
            "v1",
            "configmaps",
            "configmap",
            "ConfigMap",
            true,
            &["cm"],
            false,
            false,
        ),
        builtin(
            "",
            "v1",
            "secrets",
            "secret",
            "Secret",
            true,
            &[],
            false,
            false,
        ),
        builtin(
            "",
            "v1",
            "services",
            "service",
            "Service",
            true,
            &["svc"],
            true,
            true,
        ),
        builtin(
            "",
            "v1",
            "serviceaccounts",
            "serviceaccount",
            "ServiceAccount",
            true,
            &["sa"],
            false,
            false,
        ),
        builtin("", "v1", "pods", "pod", "Pod", true, &["po"], true, true),
        builtin(
            "",
            "v1",
            "events",
            "event",
            "Event",
            true,
            &["ev"],
            false,
            false,
        ),
        builtin(
            "apps",
            "v1",
            "deployments",
            "deployment",
            "Deployment",
            true,
            &["deploy"],
            true,
            true,
        ),
        builtin("batch", "v1", "jobs", "job", "Job", true, &[], true, true),
        builtin(
            "coordination.k8s.io",
            "v1",
            "leases",
            "lease",
            "Lease",
            true,
            &[],
            false,
            false,
        ),
        builtin(
            "events.k8s.io",
            "v1",
            "events",
            "event",
            "Event",
            true,
            &["ev"],
            false,
            false,
        ),
        builtin(
            "apiextensions.k8s.io",
            "v1",
            "customresourcedefinitions",
            "customresourcedefinition",
            "CustomResourceDefinition",
            false,
            &["crd", "crds"],
            false,
            true,
        ),
    ]
}

/// Whether `(group, plural)` names the CRD resource itself.
pub fn is_crd_key(group: &str, plural: &str) -> bool {
    group == "apiextensions.k8s.io" && plural == "customresourcedefinitions"
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Reads a CRD object into the resource type it defines, or says which field is wrong.
pub fn from_crd(crd: &Value) -> Result<ResourceType, (String, String)> {
    let spec = &crd["spec"];
    let group = spec["group"].as_str().unwrap_or_default().to_string();
    let names = &spec["names"];
    let plural = names["plural"].as_str().unwrap_or_default().to_string();
    let kind = names["kind"].as_str().unwrap_or_default().to_string();
    let name = crd["metadata"]["name"].as_str().unwrap_or_default();
    if group.is_empty() {
        return Err(("spec.group".into(), "Required value".into()));
    }
    if plural.is_empty() {
        return Err(("spec.names.plural".into(), "Required value".into()));
    }
    if kind.is_empty() {
        return Err(("spec.names.kind".into(), "Required value".into()));
    }
    if name != format!("{plural}.{group}") {
        return Err((
            "metadata.name".into(),
            format!("Invalid value: \"{name}\": must be spec.names.plural+\".\"+spec.group"),
        ));
    }
    let scope = spec["scope"].as_str().unwrap_or_default();
    let namespaced = match scope {
        "Namespaced" => true,
        "Cluster" => false,
        other => {
            return Err((
                "spec.scope".into(),
                format!(
                    "Unsupported value: \"{other}\": supported values: \"Cluster\", \"Namespaced\""
                ),
            ))
        }
    };
    let mut versions = Vec::new();
    let mut storage = 0;
    for v in spec["versions"].as_array().into_iter().flatten() {
        let Some(vname) = v["name"].as_str() else {
            return Err(("spec.versions[].name".into(), "Required value".into()));
        };
        if v["storage"].as_bool() == Some(true) {
            storage += 1;
        }
        if v["served"].as_bool() != Some(true) {
            continue;
        }
        versions.push(VersionInfo {
            name: vname.to_string(),
            status_subresource: v["subresources"]["status"].is_object(),
            printer_columns: v["additionalPrinterColumns"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
        });
    }
    if storage != 1 {
        return Err((
            "spec.versions".into(),
            "Invalid value: must have exactly one version marked as storage version".into(),
        ));
    }
    Ok(ResourceType {
        group,
        versions,
        singular: names["singular"]
            .as_str()
            .map(String::from)
            .unwrap_or_else(|| kind.to_lowercase()),
        plural,
        kind,
        namespaced,
        short_names: strings(&names["shortNames"]),
        categories: strings(&names["categories"]),
        custom: true,
    })
}

/// The status the CRD "controller" writes at once: names accepted and established.
pub fn crd_status(crd: &Value, now: &str) -> Value {
    let cond = |t: &str, reason: &str, msg: &str| json!({"type": t, "status": "True", "lastTransitionTime": now, "reason": reason, "message": msg});
    let mut accepted = crd["spec"]["names"].clone();
    if accepted["singular"].is_null() {
        if let Some(k) = accepted["kind"].as_str() {
            accepted["singular"] = json!(k.to_lowercase());
        }
    }
    if accepted["listKind"].is_null() {
        if let Some(k) = accepted["kind"].as_str() {
            accepted["listKind"] = json!(format!("{k}List"));
        }
    }
    let stored: Vec<Value> = crd["spec"]["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["storage"].as_bool() == Some(true))
        .map(|v| v["name"].clone())
        .collect();
    json!({
        "acceptedNames": accepted,
        "conditions": [
            cond("NamesAccepted", "NoConflicts", "no conflicts found"),
            cond("Established", "InitialNamesAccepted", "the initial names have been accepted"),
        ],
        "storedVersions": stored,
    })
}
