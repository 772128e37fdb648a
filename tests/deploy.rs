//! The install manifests under `deploy/` (and the image and kind files around them): every
//! object is valid for its kind (a typed round trip, so a misspelled field fails), the
//! Deployment is hardened and runs `plugsync run` with known flags only, the Role is least
//! privilege and covers what plugsync does, the Services select what they should, and the
//! kustomization installs every file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, Namespace, Secret, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn deploy_dir() -> PathBuf {
    root().join("deploy")
}

/// Every `.yaml` file under `dir`, relative to it, sorted.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                walk(base, &path, out);
            } else if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml")
            ) {
                out.push(path.strip_prefix(base).expect("prefix").to_path_buf());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// The documents of a YAML file (empty documents, e.g. comment-only, skipped).
fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).expect("read");
    serde_saphyr::from_multiple::<Value>(&text)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .filter(|v| !v.is_null())
        .collect()
}

/// `value` as a `T`, checked to survive the typed round trip unchanged: a misspelled or
/// misplaced field is dropped by the typed model, so the round trip differs.
fn typed<T: DeserializeOwned + Serialize>(value: &Value, what: &str) -> T {
    let typed: T = serde_json::from_value(value.clone())
        .unwrap_or_else(|e| panic!("{what}: not a valid object of its kind: {e}"));
    let back = serde_json::to_value(&typed).expect("serialize");
    assert_eq!(
        &back, value,
        "{what} does not survive its typed round trip (a misspelled or misplaced field?)"
    );
    typed
}

/// Every object in deploy/ (samples included), by file, checked against its type.
struct Manifests {
    objects: Vec<(PathBuf, Value)>,
}

impl Manifests {
    fn load() -> Manifests {
        let dir = deploy_dir();
        let mut objects = Vec::new();
        for file in yaml_files(&dir) {
            if file == Path::new("kustomization.yaml") {
                continue;
            }
            for doc in documents(&dir.join(&file)) {
                let kind = doc["kind"].as_str().unwrap_or_default().to_string();
                let what = format!("{}: {kind} {}", file.display(), doc["metadata"]["name"]);
                match kind.as_str() {
                    "Namespace" => drop(typed::<Namespace>(&doc, &what)),
                    "ServiceAccount" => drop(typed::<ServiceAccount>(&doc, &what)),
                    "Role" => drop(typed::<Role>(&doc, &what)),
                    "RoleBinding" => drop(typed::<RoleBinding>(&doc, &what)),
                    "Deployment" => drop(typed::<Deployment>(&doc, &what)),
                    "Service" => drop(typed::<Service>(&doc, &what)),
                    "PodDisruptionBudget" => drop(typed::<PodDisruptionBudget>(&doc, &what)),
                    "Secret" => drop(typed::<Secret>(&doc, &what)),
                    "CustomResourceDefinition" => {
                        drop(typed::<CustomResourceDefinition>(&doc, &what))
                    }
                    other => panic!("{what}: no typed check for kind {other:?}; add one"),
                }
                objects.push((file.clone(), doc));
            }
        }
        Manifests { objects }
    }

    fn installed(&self) -> impl Iterator<Item = &Value> {
        self.objects
            .iter()
            .filter(|(file, _)| !file.starts_with("samples"))
            .map(|(_, v)| v)
    }

    fn one<T: DeserializeOwned>(&self, kind: &str, name: &str) -> T {
        let found: Vec<&Value> = self
            .installed()
            .filter(|v| v["kind"] == kind && v["metadata"]["name"] == name)
            .collect();
        assert_eq!(found.len(), 1, "exactly one {kind} {name} in deploy/");
        serde_json::from_value(found[0].clone()).expect("typed")
    }

    fn deployment(&self) -> Deployment {
        self.one("Deployment", "plugsync")
    }
}

fn container(deployment: &Deployment) -> Container {
    let spec = deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod spec");
    assert_eq!(spec.containers.len(), 1, "one container");
    spec.containers[0].clone()
}

fn pod_labels(deployment: &Deployment) -> BTreeMap<String, String> {
    deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .expect("pod template labels")
}

/// The flags of `plugsync run`, as the lead specified them (global `--log-format` included).
const RUN_FLAGS: &[&str] = &[
    "--git-url",
    "--branch",
    "--path",
    "--git-secret",
    "--interval",
    "--jitter",
    "--repo",
    "--namespace",
    "--listen",
    "--cache-dir",
    "--context-base-url",
    "--webhook-secret-file",
    "--webhook-token-file",
    "--leader-election",
    "--lease-name",
    "--suspend",
    "--log-format",
];

/// `plugsync run` arguments as flag → value (`--flag=value`; a bare `--flag` maps to "").
fn run_args(container: &Container) -> BTreeMap<String, String> {
    assert!(
        container.command.is_none(),
        "the image's ENTRYPOINT is plugsync; the Deployment passes args only"
    );
    let args = container.args.clone().expect("args");
    assert_eq!(
        args.first().map(String::as_str),
        Some("run"),
        "plugsync run"
    );
    let mut flags = BTreeMap::new();
    for arg in &args[1..] {
        let (flag, value) = arg.split_once('=').unwrap_or((arg.as_str(), ""));
        assert!(
            RUN_FLAGS.contains(&flag),
            "`{arg}`: not a flag of plugsync run (known: {RUN_FLAGS:?})"
        );
        assert!(
            flags.insert(flag.to_string(), value.to_string()).is_none(),
            "{flag} given twice"
        );
    }
    flags
}

#[test]
fn every_object_is_valid_for_its_kind() {
    let manifests = Manifests::load();
    let kinds: BTreeSet<&str> = manifests
        .installed()
        .map(|v| v["kind"].as_str().expect("kind"))
        .collect();
    for kind in [
        "CustomResourceDefinition",
        "Namespace",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
    ] {
        assert!(kinds.contains(kind), "deploy/ installs a {kind}");
    }
    // Namespaced only: plugsync gets no cluster-wide rights.
    for forbidden in ["ClusterRole", "ClusterRoleBinding", "Secret"] {
        assert!(
            !kinds.contains(forbidden),
            "deploy/ must not install a {forbidden}"
        );
    }
}

#[test]
fn everything_lives_in_the_namespace() {
    let manifests = Manifests::load();
    let namespace: Namespace = manifests.one("Namespace", "plugsync-system");
    let ns = namespace.metadata.name.expect("name");
    for object in manifests.objects.iter().map(|(_, v)| v) {
        let kind = object["kind"].as_str().expect("kind");
        if matches!(kind, "Namespace" | "CustomResourceDefinition") {
            continue;
        }
        assert_eq!(
            object["metadata"]["namespace"],
            ns.as_str(),
            "{kind} {} is in the plugsync namespace",
            object["metadata"]["name"]
        );
    }
    let binding: RoleBinding = manifests.one("RoleBinding", "plugsync");
    let subjects = binding.subjects.expect("subjects");
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].namespace.as_deref(), Some(ns.as_str()));
}

#[test]
fn the_deployment_is_hardened() {
    let manifests = Manifests::load();
    let deployment = manifests.deployment();
    let spec = deployment.spec.as_ref().expect("spec");
    assert_eq!(spec.replicas, Some(2), "two replicas, one leader");
    let selector = spec.selector.match_labels.clone().expect("matchLabels");
    let labels = pod_labels(&deployment);
    for (k, v) in &selector {
        assert_eq!(labels.get(k), Some(v), "the selector matches the pods: {k}");
    }
    let pod = spec.template.spec.as_ref().expect("pod spec");
    let grace = pod
        .termination_grace_period_seconds
        .expect("terminationGracePeriodSeconds");
    assert!(grace >= 60, "time for an apply to finish: {grace}s");

    let psc = pod.security_context.as_ref().expect("pod securityContext");
    assert_eq!(psc.run_as_non_root, Some(true));
    assert_eq!(psc.run_as_user, Some(65532));
    assert_eq!(psc.run_as_group, Some(65532));
    assert_eq!(
        psc.seccomp_profile.as_ref().map(|s| s.type_.as_str()),
        Some("RuntimeDefault")
    );

    let c = container(&deployment);
    let sc = c
        .security_context
        .as_ref()
        .expect("container securityContext");
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_ne!(sc.privileged, Some(true));
    assert_eq!(
        sc.capabilities.as_ref().and_then(|c| c.drop.clone()),
        Some(vec!["ALL".to_string()])
    );
    assert!(
        sc.capabilities
            .as_ref()
            .and_then(|c| c.add.as_ref())
            .is_none(),
        "no capability added"
    );

    let resources = c.resources.as_ref().expect("resources");
    let requests = resources.requests.clone().expect("requests");
    assert!(requests.contains_key("cpu") && requests.contains_key("memory"));
    let limits = resources.limits.clone().expect("limits");
    assert!(limits.contains_key("memory"), "a memory limit");

    // Writable places on a read-only root: emptyDirs for the cache and /tmp.
    let volumes = pod.volumes.clone().expect("volumes");
    let mounts = c.volume_mounts.clone().expect("volumeMounts");
    let empty_dir_at = |path: &str| {
        mounts.iter().any(|m| {
            m.mount_path == path
                && volumes
                    .iter()
                    .any(|v| v.name == m.name && v.empty_dir.is_some())
        })
    };
    assert!(empty_dir_at("/tmp"), "an emptyDir at /tmp");
    let args = run_args(&c);
    let cache = args.get("--cache-dir").expect("--cache-dir");
    assert!(empty_dir_at(cache), "an emptyDir at --cache-dir {cache}");

    // The downward API and the log format.
    let env = c.env.clone().expect("env");
    let field = |name: &str| {
        env.iter()
            .find(|e| e.name == name)
            .and_then(|e| e.value_from.as_ref())
            .and_then(|v| v.field_ref.as_ref())
            .map(|f| f.field_path.clone())
    };
    assert_eq!(field("POD_NAME").as_deref(), Some("metadata.name"));
    // The one variable every cluster command reads its namespace from: the pod's own.
    assert_eq!(
        field(plugsync_kube::cluster::NAMESPACE_ENV).as_deref(),
        Some("metadata.namespace")
    );
    assert!(
        env.iter()
            .any(|e| e.name == "PLUGSYNC_LOG_FORMAT" && e.value.as_deref() == Some("json")),
        "PLUGSYNC_LOG_FORMAT=json"
    );
    // `$(VAR)` in args is expanded by the kubelet only for variables the container defines.
    for arg in c.args.clone().expect("args") {
        let mut rest = arg.as_str();
        while let Some(start) = rest.find("$(") {
            let end = rest[start..].find(')').expect("closing )") + start;
            let var = &rest[start + 2..end];
            assert!(
                env.iter().any(|e| e.name == var),
                "`{arg}` uses $({var}), which the container does not define"
            );
            rest = &rest[end + 1..];
        }
    }

    // Identity: the ServiceAccount the RoleBinding binds, with its token mounted.
    let account: ServiceAccount = manifests.one("ServiceAccount", "plugsync");
    assert_eq!(pod.service_account_name, account.metadata.name);
    assert_eq!(pod.automount_service_account_token, Some(true));
    let binding: RoleBinding = manifests.one("RoleBinding", "plugsync");
    assert_eq!(binding.role_ref.kind, "Role");
    assert_eq!(binding.role_ref.name, "plugsync");
    let subject = &binding.subjects.expect("subjects")[0];
    assert_eq!(subject.kind, "ServiceAccount");
    assert_eq!(Some(&subject.name), account.metadata.name.as_ref());
}

#[test]
fn the_deployment_runs_plugsync_with_known_flags_and_probes() {
    let manifests = Manifests::load();
    let deployment = manifests.deployment();
    let c = container(&deployment);
    let args = run_args(&c);
    assert!(
        args.contains_key("--git-url") != args.contains_key("--repo"),
        "git mode (--git-url) or a local folder (--repo), not both"
    );
    assert!(args["--git-url"].contains("://"), "a placeholder URL");

    // One port for everything: contexts, webhook, metrics, probes.
    let port = c
        .ports
        .clone()
        .expect("ports")
        .into_iter()
        .find(|p| p.name.as_deref() == Some("http"))
        .expect("a port named http");
    let listen = args.get("--listen").expect("--listen");
    assert!(
        listen.ends_with(&format!(":{}", port.container_port)),
        "--listen {listen} is the container port {}",
        port.container_port
    );
    let probe_path = |probe: &Option<k8s_openapi::api::core::v1::Probe>| {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.clone())
            .expect("an httpGet probe");
        assert!(
            matches!(&get.port, k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s) if s == "http")
                || get.port
                    == k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(
                        port.container_port
                    ),
            "probes hit the plugsync port"
        );
        get.path.expect("path")
    };
    assert_eq!(probe_path(&c.liveness_probe), "/healthz");
    assert_eq!(probe_path(&c.readiness_probe), "/readyz");
    if c.startup_probe.is_some() {
        assert_eq!(probe_path(&c.startup_probe), "/healthz");
    }

    // Build Jobs fetch contexts from the leader Service.
    let leader: Service = manifests.one("Service", "plugsync-leader");
    let service_port = leader.spec.expect("spec").ports.expect("ports")[0].port;
    assert_eq!(
        args.get("--context-base-url").map(String::as_str),
        Some(format!("http://plugsync-leader.$(PLUGSYNC_NAMESPACE).svc:{service_port}").as_str()),
        "build Jobs download contexts through the plugsync-leader Service"
    );

    // The Lease plugsync uses is the one the Role names.
    let lease = args
        .get("--lease-name")
        .cloned()
        .unwrap_or_else(|| "plugsync".to_string());
    let role: Role = manifests.one("Role", "plugsync");
    assert!(
        role.rules.expect("rules").iter().any(|r| {
            r.api_groups.as_deref() == Some(&["coordination.k8s.io".to_string()])
                && r.resource_names.as_deref() == Some(std::slice::from_ref(&lease))
                && r.verbs.contains(&"update".to_string())
        }),
        "the Role lets plugsync update the Lease {lease}"
    );

    // The image is set by the kustomization.
    let kustomization = kustomization();
    let images = kustomization["images"].as_array().expect("images");
    assert!(
        images
            .iter()
            .any(|i| Some(i["name"].as_str().expect("name")) == c.image.as_deref()),
        "kustomization.yaml sets the image {:?}",
        c.image
    );
}

/// The build-context URL plugsync takes when not told (render, diff, apply, controller, run)
/// names a Service deploy/ ships, in its namespace, on its port; the Deployment passes the same
/// URL with its own namespace, and the command line's default is the same.
#[test]
fn the_default_context_url_is_the_shipped_leader_service() {
    let default = plugsync_core::render::DEFAULT_CONTEXT_BASE_URL;
    let manifests = Manifests::load();
    let url = url::Url::parse(default).expect("a URL");
    let host = url.host_str().expect("a host");
    let (service, rest) = host.split_once('.').expect("<service>.<namespace>.svc");
    let namespace = rest
        .strip_suffix(".svc")
        .expect("<service>.<namespace>.svc");
    let shipped: Service = manifests.one("Service", service);
    assert_eq!(shipped.metadata.namespace.as_deref(), Some(namespace));
    let _: Namespace = manifests.one("Namespace", namespace);
    let ports = shipped.spec.expect("spec").ports.expect("ports");
    assert!(
        ports
            .iter()
            .any(|p| u16::try_from(p.port).ok() == url.port()),
        "{default}: the Service {service} serves port {:?}",
        url.port()
    );
    let args = run_args(&container(&manifests.deployment()));
    assert_eq!(
        args["--context-base-url"].replace("$(PLUGSYNC_NAMESPACE)", namespace),
        default,
        "deploy/deployment.yaml passes the default URL, with the namespace it runs in"
    );
    for command in ["render", "controller", "run"] {
        let help = std::process::Command::new(env!("CARGO_BIN_EXE_plugsync"))
            .args([command, "--help"])
            .env_remove("PLUGSYNC_CONTEXT_URL")
            .output()
            .expect("plugsync --help");
        let help = String::from_utf8_lossy(&help.stdout);
        assert!(
            help.contains(&format!("[default: {default}]")),
            "plugsync {command} --help shows the default {default}:\n{help}"
        );
    }
}

/// (apiGroup, resource, verb) that `plugsync run` needs, from the lead's list.
fn required_permissions() -> BTreeSet<(String, String, String)> {
    let mut needed = BTreeSet::new();
    let mut add = |group: &str, resources: &[&str], verbs: &[&str]| {
        for r in resources {
            for v in verbs {
                needed.insert((group.to_string(), r.to_string(), v.to_string()));
            }
        }
    };
    add(
        "plugsync.dev",
        &["plugins", "pluginsets"],
        &[
            "get", "list", "watch", "create", "patch", "update", "delete",
        ],
    );
    add(
        "plugsync.dev",
        &["plugins/status", "pluginsets/status"],
        &["get", "patch", "update"],
    );
    add(
        "batch",
        &["jobs"],
        &["get", "list", "watch", "create", "patch", "delete"],
    );
    add(
        "apps",
        &["deployments"],
        &["get", "list", "watch", "create", "patch", "delete"],
    );
    add(
        "",
        &["services"],
        &["get", "list", "watch", "create", "patch", "delete"],
    );
    add("", &["pods"], &["get", "list", "watch", "patch"]);
    // The templates ConfigMap: applied and pruned with the set, watched by the controller.
    add(
        "",
        &["configmaps"],
        &["get", "list", "watch", "create", "patch", "delete"],
    );
    add("", &["secrets"], &["get"]);
    add("", &["events"], &["create", "patch"]);
    add("events.k8s.io", &["events"], &["create", "patch"]);
    add(
        "coordination.k8s.io",
        &["leases"],
        &["get", "create", "update"],
    );
    needed
}

#[test]
fn the_role_is_least_privilege_and_covers_plugsync() {
    let manifests = Manifests::load();
    let role: Role = manifests.one("Role", "plugsync");
    let mut granted = BTreeSet::new();
    for rule in role.rules.expect("rules") {
        assert!(
            rule.non_resource_urls.is_none(),
            "no non-resource URLs in a Role"
        );
        let groups = rule.api_groups.clone().expect("apiGroups");
        let resources = rule.resources.clone().expect("resources");
        for s in groups.iter().chain(&resources).chain(&rule.verbs) {
            assert!(!s.contains('*'), "no wildcards: {rule:?}");
        }
        if let Some(names) = &rule.resource_names {
            assert!(!names.is_empty());
            assert!(
                !rule
                    .verbs
                    .iter()
                    .any(|v| v == "create" || v == "list" || v == "watch"),
                "resourceNames cannot restrict create, list or watch: {rule:?}"
            );
        }
        for g in &groups {
            for r in &resources {
                for v in &rule.verbs {
                    granted.insert((g.clone(), r.clone(), v.clone()));
                }
            }
        }
    }
    let needed = required_permissions();
    let missing: Vec<_> = needed.difference(&granted).collect();
    assert!(missing.is_empty(), "the Role lacks {missing:?}");
    // Beyond the list, only what adds no power: updating the finalizers of Plugins (which
    // plugsync may update anyway), needed for blockOwnerDeletion where the
    // OwnerReferencesPermissionEnforcement admission plugin runs.
    let extra: Vec<_> = granted
        .difference(&needed)
        .filter(|p| {
            **p != (
                "plugsync.dev".to_string(),
                "plugins/finalizers".to_string(),
                "update".to_string(),
            )
        })
        .collect();
    assert!(
        extra.is_empty(),
        "the Role grants more than plugsync needs: {extra:?}"
    );
    // Secrets: read one by name, never enumerate.
    for v in ["list", "watch"] {
        assert!(!granted.contains(&("".into(), "secrets".into(), v.into())));
    }
}

#[test]
fn the_services_select_the_leader_and_all_replicas() {
    let manifests = Manifests::load();
    let deployment = manifests.deployment();
    let labels = pod_labels(&deployment);
    let c = container(&deployment);
    let port_names: Vec<String> = c
        .ports
        .clone()
        .expect("ports")
        .into_iter()
        .filter_map(|p| p.name)
        .collect();
    let check = |name: &str| {
        let service: Service = manifests.one("Service", name);
        let spec = service.spec.expect("spec");
        let selector = spec.selector.clone().expect("selector");
        for port in spec.ports.expect("ports") {
            assert_eq!(port.port, 8080, "{name} serves on 8080");
            match port.target_port {
                Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(p)) => {
                    assert!(port_names.contains(&p), "{name} targets a container port")
                }
                other => panic!("{name}: target the named container port, not {other:?}"),
            }
        }
        selector
    };
    let leader = check("plugsync-leader");
    assert_eq!(
        leader.get("plugsync.dev/leader").map(String::as_str),
        Some("true"),
        "plugsync-leader selects the leader label"
    );
    for (k, v) in &leader {
        if k != "plugsync.dev/leader" {
            assert_eq!(
                labels.get(k),
                Some(v),
                "plugsync-leader selects plugsync pods"
            );
        }
    }
    assert!(
        !labels.contains_key("plugsync.dev/leader"),
        "the pod template must not carry the leader label: plugsync sets it on the leader"
    );
    let metrics = check("plugsync-metrics");
    assert!(!metrics.contains_key("plugsync.dev/leader"));
    for (k, v) in &metrics {
        assert_eq!(
            labels.get(k),
            Some(v),
            "plugsync-metrics selects every replica"
        );
    }

    let pdb: PodDisruptionBudget = manifests.one("PodDisruptionBudget", "plugsync");
    let spec = pdb.spec.expect("spec");
    for (k, v) in spec
        .selector
        .and_then(|s| s.match_labels)
        .expect("selector")
    {
        assert_eq!(
            labels.get(&k),
            Some(&v),
            "the PodDisruptionBudget selects plugsync"
        );
    }
    assert!(spec.min_available.is_some() || spec.max_unavailable.is_some());
}

fn kustomization() -> Value {
    let docs = documents(&deploy_dir().join("kustomization.yaml"));
    assert_eq!(docs.len(), 1);
    let k = docs[0].clone();
    assert_eq!(k["kind"], "Kustomization");
    k
}

#[test]
fn the_kustomization_installs_every_file() {
    let k = kustomization();
    let listed: Vec<PathBuf> = k["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|r| PathBuf::from(r.as_str().expect("a path")))
        .collect();
    let unique: BTreeSet<&PathBuf> = listed.iter().collect();
    assert_eq!(unique.len(), listed.len(), "a resource listed twice");
    let expected: BTreeSet<PathBuf> = yaml_files(&deploy_dir())
        .into_iter()
        .filter(|f| f != Path::new("kustomization.yaml") && !f.starts_with("samples"))
        .collect();
    let listed: BTreeSet<PathBuf> = listed.into_iter().collect();
    assert_eq!(
        listed, expected,
        "kustomization.yaml must list every file of deploy/ but samples/"
    );
    for crd in [
        "crds/plugins.plugsync.dev.yaml",
        "crds/pluginsets.plugsync.dev.yaml",
    ] {
        assert!(listed.contains(Path::new(crd)), "installs {crd}");
    }
}

#[test]
fn the_samples_hold_no_real_secrets() {
    let manifests = Manifests::load();
    let samples: Vec<&Value> = manifests
        .objects
        .iter()
        .filter(|(f, _)| f.starts_with("samples"))
        .map(|(_, v)| v)
        .collect();
    assert!(
        samples.iter().any(|v| v["kind"] == "Secret"),
        "deploy/samples has the Secret samples"
    );
    for secret in samples.iter().filter(|v| v["kind"] == "Secret") {
        let name = &secret["metadata"]["name"];
        assert!(
            secret.get("data").is_none(),
            "{name}: samples use stringData"
        );
        let values = secret["stringData"].as_object().expect("stringData");
        assert!(
            values
                .values()
                .any(|v| v.as_str().expect("string").contains("REPLACE")),
            "{name}: a placeholder to replace"
        );
    }
    // The keys plugsync reads from a git Secret (Flux's).
    let keys: BTreeSet<String> = samples
        .iter()
        .filter(|v| v["kind"] == "Secret")
        .flat_map(|v| {
            v["stringData"]
                .as_object()
                .expect("stringData")
                .keys()
                .cloned()
        })
        .collect();
    for key in [
        "username",
        "password",
        "bearerToken",
        "identity",
        "known_hosts",
    ] {
        assert!(keys.contains(key), "a sample with the git key {key}");
    }
}

#[test]
fn the_image_runs_plugsync_as_non_root() {
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).expect("Dockerfile");
    let lines: Vec<&str> = dockerfile
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    let stages: Vec<&&str> = lines.iter().filter(|l| l.starts_with("FROM ")).collect();
    assert!(stages.len() >= 2, "a multi-stage build");
    let last_stage = lines
        .iter()
        .rposition(|l| l.starts_with("FROM "))
        .expect("FROM");
    let runtime = &lines[last_stage..];
    assert!(runtime.contains(&"USER 65532:65532"), "runs as 65532");
    assert!(runtime
        .iter()
        .any(|l| l.starts_with("ENTRYPOINT [\"/usr/local/bin/plugsync\"]")));
    assert!(dockerfile.contains("cargo fetch --locked"));
    assert!(dockerfile.contains("cargo build --release --locked --bin plugsync"));

    // The build context: whatever the Dockerfile copies is let in by .dockerignore.
    let ignore = std::fs::read_to_string(root().join(".dockerignore")).expect(".dockerignore");
    for line in &lines {
        if let Some(rest) = line.strip_prefix("COPY ") {
            if rest.starts_with("--from") {
                continue;
            }
            let parts: Vec<&str> = rest.split_whitespace().collect();
            for source in &parts[..parts.len() - 1] {
                let source = source.trim_end_matches('/');
                assert!(
                    ignore
                        .lines()
                        .any(|l| l.trim() == format!("!{source}")
                            || l.trim() == format!("!{source}/")),
                    ".dockerignore lets {source} into the build context"
                );
                assert!(root().join(source).exists(), "{source} exists");
            }
        }
    }
    // Files compiled into the binary must be in the context too.
    for entry in ["src", "templates", "Cargo.toml", "Cargo.lock"] {
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("COPY ") && l.contains(entry)),
            "the Dockerfile copies {entry}"
        );
    }
}

#[test]
fn the_kind_config_enables_the_registry_mirror() {
    let docs = documents(&root().join("kind-config.yaml"));
    assert_eq!(docs.len(), 1);
    let config = &docs[0];
    assert_eq!(config["kind"], "Cluster");
    assert_eq!(config["apiVersion"], "kind.x-k8s.io/v1alpha4");
    let patches = config["containerdConfigPatches"]
        .as_array()
        .expect("containerdConfigPatches");
    assert!(patches.iter().any(|p| {
        let p = p.as_str().expect("a TOML string");
        p.contains(r#"[plugins."io.containerd.grpc.v1.cri".registry]"#)
            && p.contains(r#"config_path = "/etc/containerd/certs.d""#)
    }));
}

/// The real binary parses the shipped arguments: a flag renamed in the code fails here, not
/// in a cluster. (It then stops at the cluster connection, which this test does not have.)
#[test]
fn the_binary_accepts_the_deployment_args() {
    let deployment: Deployment = documents(&deploy_dir().join("deployment.yaml"))
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .map(|d| typed(d, "deployment.yaml"))
        .expect("a Deployment");
    let args = container(&deployment).args.expect("args");
    let home = tempfile::tempdir().expect("home");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_plugsync"))
        .args(&args)
        .env("KUBECONFIG", home.path().join("no-such-kubeconfig"))
        .env("HOME", home.path())
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("PLUGSYNC_CACHE_DIR", home.path().join("cache"))
        .output()
        .expect("run plugsync");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "no cluster here: {stderr}");
    assert!(
        !stderr.contains("Usage:") && !stderr.contains("unexpected argument"),
        "the arguments do not parse: {args:?}\n{stderr}"
    );
    assert!(
        stderr.to_lowercase().contains("kube") || stderr.contains("cluster"),
        "stopped at the cluster connection: {stderr}"
    );
}
