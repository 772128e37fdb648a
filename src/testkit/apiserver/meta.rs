//! Object metadata helpers: timestamps, name validation and the server-side defaults the
//! real apiserver fills in for the built-in kinds.

use std::time::{Duration, SystemTime};

use serde_json::{json, Map, Value};

/// Now as RFC 3339 with second precision (`2025-01-02T03:04:05Z`).
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// Age of a timestamp in kubectl's style (`5s`, `3m20s`, `2h`, `4d`).
pub fn age(ts: &str) -> String {
    let Ok(t) = humantime::parse_rfc3339_weak(ts) else {
        return "<unknown>".into();
    };
    match SystemTime::now().duration_since(t) {
        Ok(d) => human_duration(d),
        Err(e) if e.duration() < Duration::from_secs(2) => "0s".into(),
        Err(_) => "<invalid>".into(),
    }
}

/// Port of apimachinery's `duration.HumanDuration`.
pub fn human_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs < 120 {
        return format!("{secs}s");
    }
    let minutes = secs / 60;
    if minutes < 10 {
        let s = secs % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = secs / 3600;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{}h", hours / 24, h)
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let dy = (hours / 24) % 365;
        return if dy == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{}d", hours / 24 / 365, dy)
        };
    }
    format!("{}y", hours / 24 / 365)
}

/// Validates a DNS-1123 subdomain (or label, when `label`); returns the apiserver's message.
pub fn validate_name(name: &str, label: bool) -> Result<(), String> {
    let max = if label { 63 } else { 253 };
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || (!label && c == '.'));
    let ends = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .last()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if name.len() > max {
        return Err(format!(
            "Invalid value: \"{name}\": must be no more than {max} characters"
        ));
    }
    if !ok_chars || !ends {
        return Err(if label {
            format!("Invalid value: \"{name}\": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')")
        } else {
            format!("Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')")
        });
    }
    Ok(())
}

/// Sets `obj[key] = v` when absent (obj must be an object).
fn default(obj: &mut Value, key: &str, v: Value) {
    if let Some(m) = obj.as_object_mut() {
        m.entry(key.to_string()).or_insert(v);
    }
}

fn ensure_object<'a>(obj: &'a mut Value, key: &str) -> Option<&'a mut Value> {
    let m = obj.as_object_mut()?;
    let e = m
        .entry(key.to_string())
        .or_insert_with(|| Value::Object(Map::new()));
    e.is_object().then_some(e)
}

fn default_container(c: &mut Value) {
    if !c.is_object() {
        return;
    }
    default(c, "terminationMessagePath", json!("/dev/termination-log"));
    default(c, "terminationMessagePolicy", json!("File"));
    let image = c["image"].as_str().unwrap_or_default();
    let tag_latest = match image
        .rsplit_once('/')
        .map_or(image, |(_, last)| last)
        .split_once(':')
    {
        _ if image.contains('@') => false,
        Some((_, tag)) => tag == "latest",
        None => true,
    };
    default(
        c,
        "imagePullPolicy",
        json!(if tag_latest { "Always" } else { "IfNotPresent" }),
    );
}

/// Pod spec defaults (`restartPolicy`, `dnsPolicy`, container defaults, …).
pub fn default_pod_spec(spec: &mut Value, restart: &str) {
    if !spec.is_object() {
        return;
    }
    default(spec, "restartPolicy", json!(restart));
    default(spec, "terminationGracePeriodSeconds", json!(30));
    default(spec, "dnsPolicy", json!("ClusterFirst"));
    default(spec, "securityContext", json!({}));
    default(spec, "schedulerName", json!("default-scheduler"));
    for key in ["containers", "initContainers"] {
        if let Some(cs) = spec.get_mut(key).and_then(Value::as_array_mut) {
            for c in cs {
                default_container(c);
            }
        }
    }
}

/// Applies the defaults the real apiserver sets for the built-in kinds (a subset, enough that
/// clients comparing desired with live state see realistic server-filled fields).
///
/// Port defaults (`protocol: TCP`, a Service port's `targetPort`) are left out on purpose: the
/// SSA engine treats port lists as atomic, so a defaulted port would differ from every applied
/// configuration and make a second field manager conflict on `.ports` where the real server
/// (which keys ports by port+protocol) does not.
/// `service_ip` allocates a ClusterIP for a new Service.
pub fn apply_defaults(
    group: &str,
    kind: &str,
    obj: &mut Value,
    service_ip: impl FnOnce() -> String,
) {
    match (group, kind) {
        ("apps", "Deployment") => {
            let Some(spec) = ensure_object(obj, "spec") else {
                return;
            };
            default(spec, "replicas", json!(1));
            default(spec, "revisionHistoryLimit", json!(10));
            default(spec, "progressDeadlineSeconds", json!(600));
            default(
                spec,
                "strategy",
                json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}}),
            );
            if let Some(t) = spec.get_mut("template").and_then(|t| t.get_mut("spec")) {
                default_pod_spec(t, "Always");
            }
        }
        ("batch", "Job") => {
            let Some(spec) = ensure_object(obj, "spec") else {
                return;
            };
            default(spec, "parallelism", json!(1));
            default(spec, "completions", json!(1));
            default(spec, "backoffLimit", json!(6));
            default(spec, "completionMode", json!("NonIndexed"));
            default(spec, "suspend", json!(false));
            if let Some(t) = spec.get_mut("template").and_then(|t| t.get_mut("spec")) {
                default_pod_spec(t, "Never");
            }
        }
        ("", "Pod") => {
            if let Some(spec) = obj.get_mut("spec") {
                default_pod_spec(spec, "Always");
            }
        }
        ("", "Secret") => default(obj, "type", json!("Opaque")),
        ("", "Service") => {
            let Some(spec) = ensure_object(obj, "spec") else {
                return;
            };
            default(spec, "type", json!("ClusterIP"));
            default(spec, "sessionAffinity", json!("None"));
            if spec["type"] != json!("ExternalName") {
                if spec.get("clusterIP").is_none() {
                    let ip = service_ip();
                    spec["clusterIP"] = json!(ip);
                }
                let ip = spec["clusterIP"].clone();
                default(spec, "clusterIPs", json!([ip]));
                default(spec, "ipFamilies", json!(["IPv4"]));
                default(spec, "ipFamilyPolicy", json!("SingleStack"));
                default(spec, "internalTrafficPolicy", json!("Cluster"));
            }
        }
        ("", "Namespace") => {
            let name = obj["metadata"]["name"].clone();
            if let Some(meta) = ensure_object(obj, "metadata") {
                if let Some(labels) = ensure_object(meta, "labels") {
                    default(labels, "kubernetes.io/metadata.name", name);
                }
            }
            if let Some(spec) = ensure_object(obj, "spec") {
                default(spec, "finalizers", json!(["kubernetes"]));
            }
        }
        _ => {}
    }
}

/// The initial status of a new object of a kind with a status subresource.
pub fn initial_status(group: &str, kind: &str, custom: bool) -> Option<Value> {
    if custom {
        return None;
    }
    Some(match (group, kind) {
        ("", "Namespace") => json!({"phase": "Active"}),
        ("", "Pod") => json!({"phase": "Pending", "qosClass": "BestEffort"}),
        ("", "Service") => json!({"loadBalancer": {}}),
        _ => json!({}),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_durations() {
        assert_eq!(human_duration(Duration::from_secs(5)), "5s");
        assert_eq!(human_duration(Duration::from_secs(119)), "119s");
        assert_eq!(human_duration(Duration::from_secs(200)), "3m20s");
        assert_eq!(human_duration(Duration::from_secs(7200)), "120m");
        assert_eq!(human_duration(Duration::from_secs(4 * 3600)), "4h");
        assert_eq!(human_duration(Duration::from_secs(4 * 86400)), "4d");
    }

    #[test]
    fn names() {
        assert!(validate_name("a-b.c", false).is_ok());
        assert!(validate_name("a-b.c", true).is_err());
        assert!(validate_name("Abc", false).is_err());
        assert!(validate_name("", false).is_err());
        assert!(validate_name("-a", false).is_err());
    }

    #[test]
    fn deployment_defaults() {
        let mut d = json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "nginx:1.25", "ports": [{"containerPort": 80}]}]}}}});
        apply_defaults("apps", "Deployment", &mut d, || unreachable!());
        assert_eq!(d["spec"]["replicas"], 1);
        let c = &d["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["imagePullPolicy"], "IfNotPresent");
        let mut again = d.clone();
        apply_defaults("apps", "Deployment", &mut again, || unreachable!());
        assert_eq!(again, d);
    }
}
