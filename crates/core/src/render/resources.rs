//! The environment and the resources of a plugin's container: Dify's serverless settings,
//! and the CPU and memory Dify's plugin connector gives, raised by what a package declares.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{EnvVar, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::model::{LockedPlugin, RuntimeSpec};

/// The serverless environment Dify's plugin runtime expects, then the user's variables
/// (a user variable of the same name wins).
pub(super) fn plugin_env(runtime: &RuntimeSpec) -> Vec<EnvVar> {
    let user = runtime.env.clone().unwrap_or_default();
    let mut env: Vec<EnvVar> = [
        ("INSTALL_METHOD", "serverless"),
        ("SERVERLESS_HOST", "0.0.0.0"),
        ("SERVERLESS_PORT", "8080"),
    ]
    .into_iter()
    .filter(|(n, _)| !user.iter().any(|u| u.name == *n))
    .map(|(name, value)| EnvVar {
        name: name.to_string(),
        value: Some(value.to_string()),
        value_from: None,
    })
    .collect();
    env.extend(user);
    env
}

/// One mebibyte.
const MI: i64 = 1024 * 1024;

/// The CPU request of a plugin container unless `runtime.resources` sets its CPU: what Dify
/// Enterprise's plugin connector gives plugin runner pods.
pub(crate) const DEFAULT_CPU_REQUEST: &str = "100m";
/// The CPU limit, likewise (Dify's `1000m`, as Kubernetes writes it back).
pub(crate) const DEFAULT_CPU_LIMIT: &str = "1";
/// The memory request, in bytes, likewise (Dify's `50Mi`), unless the package asks for more.
pub(crate) const DEFAULT_MEMORY_REQUEST: i64 = 50 * MI;
/// The memory limit, in bytes, likewise (Dify's `3000Mi`), unless the package asks for more.
pub(crate) const DEFAULT_MEMORY_LIMIT: i64 = 3000 * MI;
/// A package's `resource.memory` below this is no plugin's real need (published packages
/// declare 1 MiB, `langgenius/agent` among them): it is ignored, with a warning, and the pod
/// gets the defaults. At or above it, it raises the request (and the limit, when above it).
pub const MEMORY_FLOOR: i64 = DEFAULT_MEMORY_REQUEST;

/// `bytes` as Kubernetes writes a memory quantity back: whole `Gi` when it divides, else
/// `Mi`, rounded up (a memory request is better a little more than a little less).
pub fn memory_quantity(bytes: i64) -> String {
    const GI: i64 = 1024 * MI;
    if bytes > 0 && bytes % GI == 0 {
        format!("{}Gi", bytes / GI)
    } else {
        format!("{}Mi", mebibytes_up(bytes))
    }
}

/// Whole mebibytes in `bytes`, rounded up.
fn mebibytes_up(bytes: i64) -> i64 {
    let mebibytes = u64::try_from(bytes.max(0))
        .unwrap_or_default()
        .div_ceil(MI.unsigned_abs());
    i64::try_from(mebibytes).unwrap_or(i64::MAX)
}

/// The memory request and limit (bytes) for a package asking for `declared` bytes.
fn memory_for(declared: i64) -> (i64, i64) {
    if declared < MEMORY_FLOOR {
        (DEFAULT_MEMORY_REQUEST, DEFAULT_MEMORY_LIMIT)
    } else {
        let declared = mebibytes_up(declared) * MI;
        (declared, declared.max(DEFAULT_MEMORY_LIMIT))
    }
}

/// The user's resources, with defaults for CPU and memory where the user sets neither a
/// request nor a limit of that resource: theirs replace ours whole, per resource (Kubernetes
/// then defaults a missing request to the limit), so nothing of ours can contradict them.
/// The memory defaults come from [`memory_for`] the package's `resource.memory`.
pub(super) fn plugin_resources(runtime: &RuntimeSpec, memory: i64) -> ResourceRequirements {
    let mut resources = runtime.resources.clone().unwrap_or_default();
    let (memory_request, memory_limit) = memory_for(memory);
    for (name, request, limit) in [
        (
            "cpu",
            DEFAULT_CPU_REQUEST.to_string(),
            DEFAULT_CPU_LIMIT.to_string(),
        ),
        (
            "memory",
            memory_quantity(memory_request),
            memory_quantity(memory_limit),
        ),
    ] {
        let set_by_user = |m: &Option<BTreeMap<String, Quantity>>| {
            m.as_ref().is_some_and(|m| m.contains_key(name))
        };
        if set_by_user(&resources.requests) || set_by_user(&resources.limits) {
            continue;
        }
        resources
            .requests
            .get_or_insert_with(BTreeMap::new)
            .insert(name.to_string(), Quantity(request));
        resources
            .limits
            .get_or_insert_with(BTreeMap::new)
            .insert(name.to_string(), Quantity(limit));
    }
    resources
}

/// The warning for a package whose `resource.memory` is below [`MEMORY_FLOOR`] when the
/// plugin's runtime leaves the memory to plugsync; `None` otherwise.
pub(crate) fn memory_warning(runtime: &RuntimeSpec, memory: i64) -> Option<String> {
    let user_sets_memory = runtime.resources.as_ref().is_some_and(|r| {
        [&r.requests, &r.limits]
            .iter()
            .any(|m| m.as_ref().is_some_and(|m| m.contains_key("memory")))
    });
    (memory < MEMORY_FLOOR && !user_sets_memory).then(|| {
        format!(
            "the package asks for {} of memory (resource.memory {memory}), less than any \
             plugin runs in (floor {}): ignored; its pods get a request of {} and a limit of {} \
             (set runtime.resources to choose)",
            memory_quantity(memory),
            memory_quantity(MEMORY_FLOOR),
            memory_quantity(DEFAULT_MEMORY_REQUEST),
            memory_quantity(DEFAULT_MEMORY_LIMIT),
        )
    })
}

/// Logs [`memory_warning`] once per package and process: render runs for every diff side
/// and every reconcile, and the warning is about the package, not about each render.
pub(super) fn warn_low_memory(locked: &LockedPlugin, runtime: &RuntimeSpec, memory: i64) {
    static WARNED: std::sync::Mutex<BTreeSet<String>> = std::sync::Mutex::new(BTreeSet::new());
    let Some(warning) = memory_warning(runtime, memory) else {
        return;
    };
    let mut warned = WARNED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if warned.insert(locked.unique_identifier.clone()) {
        tracing::warn!(
            plugin = %format!("{}@{}", locked.name, locked.version),
            "{warning}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn memory_is_printed_as_kubernetes_writes_it_back() {
        assert_eq!(memory_quantity(50 * MI), "50Mi");
        assert_eq!(memory_quantity(3000 * MI), "3000Mi");
        assert_eq!(memory_quantity(1024 * MI), "1Gi");
        assert_eq!(memory_quantity(2048 * MI), "2Gi");
        assert_eq!(memory_quantity(1_048_576), "1Mi");
        // Rounded up to whole mebibytes: 100 MB is 95.37 MiB.
        assert_eq!(memory_quantity(100_000_000), "96Mi");
        assert_eq!(memory_quantity(1), "1Mi");
    }

    fn quantities(resources: &ResourceRequirements) -> Vec<(String, String, String)> {
        let mut out = Vec::new();
        for (side, map) in [
            ("requests", &resources.requests),
            ("limits", &resources.limits),
        ] {
            for (name, q) in map.iter().flatten() {
                out.push((side.to_string(), name.clone(), q.0.clone()));
            }
        }
        out
    }

    fn q(side: &str, name: &str, value: &str) -> (String, String, String) {
        (side.into(), name.into(), value.into())
    }

    #[test]
    fn a_tiny_declared_memory_gets_the_dify_defaults() {
        // langgenius/agent 0.0.14 declares 1048576 (1 MiB): it would never start.
        let resources = plugin_resources(&RuntimeSpec::default(), 1_048_576);
        assert_eq!(
            quantities(&resources),
            [
                q("requests", "cpu", "100m"),
                q("requests", "memory", "50Mi"),
                q("limits", "cpu", "1"),
                q("limits", "memory", "3000Mi"),
            ]
        );
        let warning = memory_warning(&RuntimeSpec::default(), 1_048_576).expect("a warning");
        assert!(
            warning.contains("1Mi") && warning.contains("floor 50Mi"),
            "{warning}"
        );
        assert!(warning.contains("3000Mi"), "{warning}");
    }

    #[test]
    fn a_plausible_declared_memory_raises_the_request() {
        let resources = plugin_resources(&RuntimeSpec::default(), 256 * MI);
        assert!(quantities(&resources).contains(&q("requests", "memory", "256Mi")));
        assert!(quantities(&resources).contains(&q("limits", "memory", "3000Mi")));
        assert_eq!(memory_warning(&RuntimeSpec::default(), 256 * MI), None);
        assert_eq!(memory_warning(&RuntimeSpec::default(), MEMORY_FLOOR), None);
        // Above the default limit, the limit follows: a request above it would be refused.
        let resources = plugin_resources(&RuntimeSpec::default(), 4 * 1024 * MI);
        assert!(quantities(&resources).contains(&q("requests", "memory", "4Gi")));
        assert!(quantities(&resources).contains(&q("limits", "memory", "4Gi")));
    }

    #[test]
    fn the_users_resources_replace_the_defaults_per_resource() {
        let runtime: RuntimeSpec = serde_json::from_value(json!({
            "resources": {"limits": {"memory": "512Mi"}, "requests": {"ephemeral-storage": "1Gi"}}
        }))
        .expect("runtime");
        let resources = plugin_resources(&runtime, 1_048_576);
        assert_eq!(
            quantities(&resources),
            [
                q("requests", "cpu", "100m"),
                q("requests", "ephemeral-storage", "1Gi"),
                q("limits", "cpu", "1"),
                q("limits", "memory", "512Mi"),
            ],
            "memory is the user's alone (Kubernetes takes the limit as the request)"
        );
        assert_eq!(
            memory_warning(&runtime, 1_048_576),
            None,
            "the package's number does not matter when the user sets the memory"
        );
        let runtime: RuntimeSpec = serde_json::from_value(json!({
            "resources": {"requests": {"cpu": "2"}}
        }))
        .expect("runtime");
        let resources = plugin_resources(&runtime, 0);
        assert_eq!(
            quantities(&resources),
            [
                q("requests", "cpu", "2"),
                q("requests", "memory", "50Mi"),
                q("limits", "memory", "3000Mi"),
            ]
        );
    }
}
