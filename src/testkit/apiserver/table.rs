//! `meta.k8s.io/v1` Table output (what `kubectl get` asks for) and PartialObjectMetadata.

use serde_json::{json, Value};

use super::jsonpath::JsonPath;
use super::meta::age;
use super::registry::ResourceType;

/// What a Table row carries as `object` (`includeObject`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncludeObject {
    /// No object.
    None,
    /// PartialObjectMetadata (the default).
    Metadata,
    /// The full object.
    Object,
}

impl IncludeObject {
    /// Parses the `includeObject` query parameter.
    pub fn parse(s: Option<&str>) -> Self {
        match s {
            Some("None") => IncludeObject::None,
            Some("Object") => IncludeObject::Object,
            _ => IncludeObject::Metadata,
        }
    }
}

struct Column {
    name: String,
    typ: String,
    format: String,
    description: String,
    priority: i64,
    cell: Cell,
}

enum Cell {
    Name,
    Age,
    Path(Option<JsonPath>),
    Fn(fn(&Value) -> Value),
}

fn col(name: &str, typ: &str, description: &str, cell: Cell) -> Column {
    Column {
        name: name.into(),
        typ: typ.into(),
        format: if name == "Name" {
            "name".into()
        } else {
            String::new()
        },
        description: description.into(),
        priority: 0,
        cell,
    }
}

fn count(v: &Value) -> Value {
    json!(v.as_object().map_or(0, |m| m.len()))
}

fn int(v: &Value) -> i64 {
    v.as_i64().unwrap_or(0)
}

fn builtin_columns(rt: &ResourceType) -> Vec<Column> {
    let name = col(
        "Name",
        "string",
        "Name must be unique within a namespace.",
        Cell::Name,
    );
    let age = col("Age", "string", "CreationTimestamp is a timestamp representing the server time when this object was created.", Cell::Age);
    let mut cols = vec![name];
    match (rt.group.as_str(), rt.kind.as_str()) {
        ("apps", "Deployment") => {
            cols.push(col(
                "Ready",
                "string",
                "Number of the pod with ready state",
                Cell::Fn(|o| {
                    json!(format!(
                        "{}/{}",
                        int(&o["status"]["readyReplicas"]),
                        o["spec"]["replicas"].as_i64().unwrap_or(1)
                    ))
                }),
            ));
            cols.push(col("Up-to-date", "integer", "Total number of non-terminated pods targeted by this deployment that have the desired template spec.", Cell::Fn(|o| json!(int(&o["status"]["updatedReplicas"])))));
            cols.push(col("Available", "integer", "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment.", Cell::Fn(|o| json!(int(&o["status"]["availableReplicas"])))));
        }
        ("", "Namespace") => cols.push(col(
            "Status",
            "string",
            "The status of the namespace",
            Cell::Path(JsonPath::parse(".status.phase").ok()),
        )),
        ("", "ConfigMap") => cols.push(col(
            "Data",
            "integer",
            "Number of data entries",
            Cell::Fn(|o| {
                json!(
                    count(&o["data"]).as_i64().unwrap_or(0)
                        + count(&o["binaryData"]).as_i64().unwrap_or(0)
                )
            }),
        )),
        ("", "Secret") => {
            cols.push(col(
                "Type",
                "string",
                "The type of the secret",
                Cell::Path(JsonPath::parse(".type").ok()),
            ));
            cols.push(col(
                "Data",
                "integer",
                "The number of data entries",
                Cell::Fn(|o| count(&o["data"])),
            ));
        }
        ("", "Service") => {
            cols.push(col(
                "Type",
                "string",
                "The type of service",
                Cell::Path(JsonPath::parse(".spec.type").ok()),
            ));
            cols.push(col(
                "Cluster-IP",
                "string",
                "The cluster IP",
                Cell::Fn(|o| o["spec"]["clusterIP"].clone()),
            ));
            cols.push(col(
                "External-IP",
                "string",
                "The external IPs",
                Cell::Fn(|_| json!("<none>")),
            ));
            cols.push(col(
                "Port(s)",
                "string",
                "The ports",
                Cell::Fn(|o| {
                    let ports: Vec<String> = o["spec"]["ports"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|p| {
                            format!("{}/{}", p["port"], p["protocol"].as_str().unwrap_or("TCP"))
                        })
                        .collect();
                    json!(if ports.is_empty() {
                        "<none>".to_string()
                    } else {
                        ports.join(",")
                    })
                }),
            ));
        }
        ("", "Pod") => {
            cols.push(col(
                "Ready",
                "string",
                "The aggregate readiness state",
                Cell::Fn(|o| {
                    let total = o["spec"]["containers"].as_array().map_or(0, |a| a.len());
                    let ready = o["status"]["containerStatuses"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|c| c["ready"] == json!(true))
                        .count();
                    json!(format!("{ready}/{total}"))
                }),
            ));
            cols.push(col(
                "Status",
                "string",
                "The aggregate status",
                Cell::Fn(|o| json!(o["status"]["phase"].as_str().unwrap_or("Pending"))),
            ));
            cols.push(col(
                "Restarts",
                "string",
                "The number of times the containers have restarted",
                Cell::Fn(|o| {
                    json!(o["status"]["containerStatuses"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|c| int(&c["restartCount"]))
                        .sum::<i64>()
                        .to_string())
                }),
            ));
        }
        ("batch", "Job") => {
            cols.push(col(
                "Status",
                "string",
                "Status of the job",
                Cell::Fn(|o| {
                    let conds = o["status"]["conditions"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default();
                    let has = |t: &str| {
                        conds
                            .iter()
                            .any(|c| c["type"] == t && c["status"] == "True")
                    };
                    json!(if has("Complete") {
                        "Complete"
                    } else if has("Failed") {
                        "Failed"
                    } else if o["spec"]["suspend"] == json!(true) {
                        "Suspended"
                    } else {
                        "Running"
                    })
                }),
            ));
            cols.push(col(
                "Completions",
                "string",
                "The desired number of successfully finished pods",
                Cell::Fn(|o| {
                    json!(format!(
                        "{}/{}",
                        int(&o["status"]["succeeded"]),
                        o["spec"]["completions"].as_i64().unwrap_or(1)
                    ))
                }),
            ));
        }
        ("coordination.k8s.io", "Lease") => cols.push(col(
            "Holder",
            "string",
            "The holder of the lease",
            Cell::Path(JsonPath::parse(".spec.holderIdentity").ok()),
        )),
        ("apiextensions.k8s.io", _) => {
            cols.push(col(
                "Created At",
                "date",
                "The creation time",
                Cell::Fn(|o| o["metadata"]["creationTimestamp"].clone()),
            ));
            return cols;
        }
        _ => {}
    }
    cols.push(age);
    cols
}

fn crd_columns(rt: &ResourceType, version: &str) -> Vec<Column> {
    let printer = rt
        .version(version)
        .map(|v| v.printer_columns.clone())
        .unwrap_or_default();
    let mut cols = vec![col(
        "Name",
        "string",
        "Name must be unique within a namespace.",
        Cell::Name,
    )];
    if printer.is_empty() {
        cols.push(col("Age", "date", "CreationTimestamp", Cell::Age));
        return cols;
    }
    for c in printer {
        let path = c["jsonPath"].as_str().unwrap_or_default();
        cols.push(Column {
            name: c["name"].as_str().unwrap_or_default().to_string(),
            typ: c["type"].as_str().unwrap_or("string").to_string(),
            format: c["format"].as_str().unwrap_or_default().to_string(),
            description: c["description"].as_str().unwrap_or_default().to_string(),
            priority: c["priority"].as_i64().unwrap_or(0),
            cell: Cell::Path(JsonPath::parse(path).ok()),
        });
    }
    cols
}

fn columns(rt: &ResourceType, version: &str) -> Vec<Column> {
    if rt.custom {
        crd_columns(rt, version)
    } else {
        builtin_columns(rt)
    }
}

fn render(c: &Column, obj: &Value) -> Value {
    let v = match &c.cell {
        Cell::Name => return obj["metadata"]["name"].clone(),
        Cell::Age => {
            return json!(age(obj["metadata"]["creationTimestamp"]
                .as_str()
                .unwrap_or_default()))
        }
        Cell::Fn(f) => f(obj),
        Cell::Path(None) => return Value::Null,
        Cell::Path(Some(p)) => match p.find(obj).first() {
            Some(v) => (*v).clone(),
            None => return Value::Null,
        },
    };
    match c.typ.as_str() {
        "date" => match v.as_str() {
            Some(ts) => json!(age(ts)),
            None => Value::Null,
        },
        "string" => match v {
            Value::String(_) | Value::Null => v,
            other => json!(other.to_string()),
        },
        "integer" => json!(v.as_i64()),
        "number" => json!(v.as_f64()),
        "boolean" => json!(v.as_bool()),
        _ => v,
    }
}

/// The PartialObjectMetadata view of an object.
pub fn partial_metadata(obj: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": obj["metadata"].clone(),
    })
}

/// A Table for objects; `with_columns` false leaves out columnDefinitions (watch events
/// after the first, as the real server does).
pub fn table(
    rt: &ResourceType,
    version: &str,
    objs: &[Value],
    include: IncludeObject,
    resource_version: Option<u64>,
    with_columns: bool,
) -> Value {
    let cols = columns(rt, version);
    let defs: Vec<Value> = if with_columns {
        cols.iter()
            .map(|c| {
                json!({"name": c.name, "type": c.typ,
                       "format": c.format, "description": c.description, "priority": c.priority})
            })
            .collect()
    } else {
        vec![]
    };
    let rows: Vec<Value> = objs
        .iter()
        .map(|o| {
            let cells: Vec<Value> = cols.iter().map(|c| render(c, o)).collect();
            let mut row = json!({"cells": cells});
            match include {
                IncludeObject::None => {}
                IncludeObject::Metadata => row["object"] = partial_metadata(o),
                IncludeObject::Object => row["object"] = o.clone(),
            }
            row
        })
        .collect();
    let mut meta = json!({});
    if let Some(rv) = resource_version {
        meta["resourceVersion"] = json!(rv.to_string());
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": meta,
        "columnDefinitions": defs,
        "rows": rows,
    })
}
