//! Discovery (`/version`, `/api`, `/apis`, per-group-version resource lists, aggregated
//! discovery v2) and a minimal OpenAPI v3 that tells kubectl the server validates fields.

use serde_json::{json, Value};

use super::registry::{ResourceType, VERBS};

/// `version.Info` of the double (it claims Kubernetes v1.33.0).
pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "emulationMajor": "1",
        "emulationMinor": "33",
        "minCompatibilityMajor": "1",
        "minCompatibilityMinor": "32",
        "gitVersion": "v1.33.0",
        "gitCommit": "60a317eadfcb839692a68eab88b2096f4d708f4f",
        "gitTreeState": "clean",
        "buildDate": "2025-04-23T13:07:27Z",
        "goVersion": "go1.24.2",
        "compiler": "gc",
        "platform": "linux/amd64"
    })
}

/// The media type of aggregated discovery v2.
pub const AGGREGATED: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// Whether an `Accept` header asks for aggregated discovery v2.
pub fn wants_aggregated(accept: &str) -> bool {
    accept.split(',').any(|mt| {
        let params: Vec<&str> = mt.split(';').map(str::trim).collect();
        params.contains(&"g=apidiscovery.k8s.io")
            && params.contains(&"v=v2")
            && params.contains(&"as=APIGroupDiscoveryList")
    })
}

/// Groups in serving order with their served versions (core group excluded).
fn groups(types: &[ResourceType]) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for t in types
        .iter()
        .filter(|t| !t.group.is_empty() && !t.versions.is_empty())
    {
        let idx = match out.iter().position(|(g, _)| *g == t.group) {
            Some(i) => i,
            None => {
                out.push((t.group.clone(), vec![]));
                out.len() - 1
            }
        };
        for v in &t.versions {
            if !out[idx].1.contains(&v.name) {
                out[idx].1.push(v.name.clone());
            }
        }
    }
    out
}

/// `/api`.
pub fn core_versions(addr: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": addr}]
    })
}

/// `/apis`.
pub fn group_list(types: &[ResourceType]) -> Value {
    let groups: Vec<Value> = groups(types)
        .into_iter()
        .map(|(g, vs)| {
            let versions: Vec<Value> = vs
                .iter()
                .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
                .collect();
            let preferred = versions.first().cloned().unwrap_or(Value::Null);
            json!({"name": g, "versions": versions, "preferredVersion": preferred})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/{group}`, None when the group is not served.
pub fn group(types: &[ResourceType], name: &str) -> Option<Value> {
    let (g, vs) = groups(types).into_iter().find(|(g, _)| g == name)?;
    let versions: Vec<Value> = vs
        .iter()
        .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
        .collect();
    let preferred = versions.first().cloned()?;
    Some(
        json!({"kind": "APIGroup", "apiVersion": "v1", "name": g, "versions": versions,
                "preferredVersion": preferred}),
    )
}

fn served<'a>(
    types: &'a [ResourceType],
    group: &'a str,
    version: &'a str,
) -> impl Iterator<Item = &'a ResourceType> {
    types
        .iter()
        .filter(move |t| t.group == group && t.version(version).is_some())
}

/// `/api/v1` or `/apis/{group}/{version}`, None when not served.
pub fn resource_list(types: &[ResourceType], group: &str, version: &str) -> Option<Value> {
    let mut resources = Vec::new();
    for t in served(types, group, version) {
        let mut r = json!({
            "name": t.plural,
            "singularName": t.singular,
            "namespaced": t.namespaced,
            "kind": t.kind,
            "verbs": VERBS,
        });
        if !t.short_names.is_empty() {
            r["shortNames"] = json!(t.short_names);
        }
        if !t.categories.is_empty() {
            r["categories"] = json!(t.categories);
        }
        resources.push(r);
        if t.has_status(version) {
            resources.push(json!({
                "name": format!("{}/status", t.plural),
                "singularName": "",
                "namespaced": t.namespaced,
                "kind": t.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    if resources.is_empty() {
        return None;
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
    )
}

fn aggregated_resource(t: &ResourceType, version: &str) -> Value {
    let kind = json!({"group": t.group, "version": version, "kind": t.kind});
    let mut r = json!({
        "resource": t.plural,
        "responseKind": kind,
        "scope": if t.namespaced { "Namespaced" } else { "Cluster" },
        "singularResource": t.singular,
        "verbs": VERBS,
    });
    if !t.short_names.is_empty() {
        r["shortNames"] = json!(t.short_names);
    }
    if !t.categories.is_empty() {
        r["categories"] = json!(t.categories);
    }
    if t.has_status(version) {
        r["subresources"] = json!([{"subresource": "status", "responseKind": kind, "verbs": ["get", "patch", "update"]}]);
    }
    r
}

/// Aggregated discovery v2 for `/api` (core) or `/apis` (all groups).
pub fn aggregated(types: &[ResourceType], core: bool) -> Value {
    let item = |g: &str, versions: Vec<String>| {
        let vs: Vec<Value> = versions
            .iter()
            .map(|v| {
                let res: Vec<Value> = served(types, g, v)
                    .map(|t| aggregated_resource(t, v))
                    .collect();
                json!({"version": v, "resources": res, "freshness": "Current"})
            })
            .collect();
        json!({"metadata": {"name": g, "creationTimestamp": null}, "versions": vs})
    };
    let items: Vec<Value> = if core {
        vec![item("", vec!["v1".into()])]
    } else {
        groups(types)
            .into_iter()
            .map(|(g, vs)| item(&g, vs))
            .collect()
    };
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
}

fn fnv(s: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    format!("{h:016X}")
}

/// All served group-versions as OpenAPI v3 paths (`api/v1`, `apis/apps/v1`).
fn openapi_gvs(types: &[ResourceType]) -> Vec<(String, String, String)> {
    let mut out = vec![("api/v1".to_string(), String::new(), "v1".to_string())];
    for (g, vs) in groups(types) {
        for v in vs {
            out.push((format!("apis/{g}/{v}"), g.clone(), v));
        }
    }
    out
}

/// `/openapi/v3`: the index of group-version documents.
pub fn openapi_root(types: &[ResourceType]) -> Value {
    let mut paths = serde_json::Map::new();
    for (path, g, v) in openapi_gvs(types) {
        let hash = fnv(&openapi_gv(types, &g, &v).to_string());
        paths.insert(
            path.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={hash}")}),
        );
    }
    json!({"paths": paths})
}

/// `/openapi/v3/{api/v1 | apis/g/v}`: one PATCH operation per kind that declares the
/// `fieldValidation` parameter (so kubectl leaves validation to the server). No schemas.
pub fn openapi_gv(types: &[ResourceType], group: &str, version: &str) -> Value {
    let mut paths = serde_json::Map::new();
    let params = json!([
        {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
        {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
        {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
        {"name": "force", "in": "query", "schema": {"type": "boolean", "uniqueItems": true}}
    ]);
    for t in served(types, group, version) {
        let prefix = if group.is_empty() {
            "/api/v1".to_string()
        } else {
            format!("/apis/{group}/{version}")
        };
        let path = if t.namespaced {
            format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", t.plural)
        } else {
            format!("{prefix}/{}/{{name}}", t.plural)
        };
        paths.insert(
            path,
            json!({"patch": {
                "operationId": format!("patch{}", t.kind),
                "x-kubernetes-action": "patch",
                "x-kubernetes-group-version-kind": {"group": t.group, "version": version, "kind": t.kind},
                "parameters": params,
                "responses": {"200": {"description": "OK"}}
            }}),
        );
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.33.0"},
        "paths": paths,
        "components": {"schemas": {}}
    })
}
