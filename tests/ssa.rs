//! Server-side apply and managedFields bookkeeping of the API server double, on realistic
//! Deployments.

use plugsync::testkit::ssa::{
    apply, apply_to, check_target, field_set, only_status, record_update, record_update_to,
    strip_status, with_live_status, ApplyError, FieldPath, FieldSet, Subresource,
};
use serde_json::{json, Value};

const T1: &str = "2026-05-01T10:00:00Z";
const T2: &str = "2026-05-01T11:00:00Z";
const T3: &str = "2026-05-01T12:00:00Z";

fn yaml(text: &str) -> Value {
    serde_yaml::from_str(text).unwrap()
}

/// The Deployment plugsync renders for one plugin, with `replicas` and extra labels.
fn plugin_deployment(replicas: u32, extra_labels: &str) -> Value {
    yaml(&format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: langgenius-openai
  namespace: dify
  labels:
    app: langgenius-openai
    {extra_labels}
spec:
  replicas: {replicas}
  selector:
    matchLabels:
      app: langgenius-openai
  template:
    metadata:
      labels:
        app: langgenius-openai
    spec:
      containers:
        - name: plugin
          image: registry.local/dify-plugins/langgenius-openai:0.2.1
          args: ["--port", "5003"]
"#
    ))
}

/// A config for a second manager that sets only `spec` (plus the identifying fields).
fn partial(spec: Value) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "langgenius-openai", "namespace": "dify"},
        "spec": spec,
    })
}

fn entries(obj: &Value) -> Vec<(String, String)> {
    obj["metadata"]["managedFields"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|e| {
                    (
                        e["manager"].as_str().unwrap().to_string(),
                        e["operation"].as_str().unwrap().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn entry<'a>(obj: &'a Value, manager: &str, operation: &str) -> &'a Value {
    obj["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["manager"] == manager && e["operation"] == operation)
        .unwrap_or_else(|| panic!("no {operation} entry for {manager}"))
}

fn owned(obj: &Value, manager: &str, operation: &str) -> FieldSet {
    FieldSet::from_fields_v1(&entry(obj, manager, operation)["fieldsV1"]).unwrap()
}

fn replicas() -> FieldPath {
    FieldPath::root().field("spec").field("replicas")
}

fn label(name: &str) -> FieldPath {
    FieldPath::root()
        .field("metadata")
        .field("labels")
        .field(name)
}

fn containers() -> FieldPath {
    FieldPath::root()
        .field("spec")
        .field("template")
        .field("spec")
        .field("containers")
}

#[test]
fn create_via_apply_records_exactly_the_config() {
    let config = plugin_deployment(1, "");
    let created = apply(None, &config, "plugsync", false, T1).unwrap();
    let mut expected = config.clone();
    expected["metadata"]["managedFields"] = json!([{
        "manager": "plugsync",
        "operation": "Apply",
        "apiVersion": "apps/v1",
        "time": T1,
        "fieldsType": "FieldsV1",
        "fieldsV1": {
            "f:metadata": {"f:labels": {"f:app": {}}},
            "f:spec": {
                "f:replicas": {},
                "f:selector": {"f:matchLabels": {"f:app": {}}},
                "f:template": {
                    "f:metadata": {"f:labels": {"f:app": {}}},
                    "f:spec": {"f:containers": {"k:{\"name\":\"plugin\"}": {
                        ".": {}, "f:args": {}, "f:image": {}, "f:name": {}
                    }}}
                }
            }
        }
    }]);
    assert_eq!(created, expected);
    assert_eq!(
        owned(&created, "plugsync", "Apply"),
        field_set(&config),
        "the entry is the config's field set"
    );
}

#[test]
fn reapplying_the_same_config_is_byte_identical() {
    let config = plugin_deployment(1, "");
    let created = apply(None, &config, "plugsync", false, T1).unwrap();
    let other = apply(
        Some(&created),
        &partial(json!({"paused": false})),
        "other",
        false,
        T2,
    )
    .unwrap();
    for live in [created, other] {
        let again = apply(Some(&live), &config, "plugsync", false, T3).unwrap();
        assert_eq!(
            serde_json::to_string(&again).unwrap(),
            serde_json::to_string(&live).unwrap()
        );
        assert_eq!(entry(&again, "plugsync", "Apply")["time"], T1);
    }
}

#[test]
fn changing_an_owned_value_bumps_only_the_appliers_time() {
    let live = apply(None, &plugin_deployment(1, ""), "plugsync", false, T1).unwrap();
    let live = apply(
        Some(&live),
        &partial(json!({"paused": false})),
        "other",
        false,
        T1,
    )
    .unwrap();
    let scaled = apply(
        Some(&live),
        &plugin_deployment(2, ""),
        "plugsync",
        false,
        T2,
    )
    .unwrap();
    assert_eq!(scaled["spec"]["replicas"], 2);
    assert_eq!(entry(&scaled, "plugsync", "Apply")["time"], T2);
    assert_eq!(entry(&scaled, "other", "Apply")["time"], T1);
}

#[test]
fn dropping_a_label_removes_it_unless_someone_else_owns_it() {
    let live = apply(
        None,
        &plugin_deployment(1, "tier: plugins\n    team: ai"),
        "plugsync",
        false,
        T1,
    )
    .unwrap();
    // Another manager applies `team` with the same value: shared ownership.
    let shared = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "langgenius-openai", "namespace": "dify", "labels": {"team": "ai"}},
    });
    let live = apply(Some(&live), &shared, "labeller", false, T2).unwrap();
    assert!(owned(&live, "plugsync", "Apply").contains(&label("team")));
    assert!(owned(&live, "labeller", "Apply").contains(&label("team")));

    let dropped = apply(
        Some(&live),
        &plugin_deployment(1, ""),
        "plugsync",
        false,
        T3,
    )
    .unwrap();
    assert_eq!(
        dropped["metadata"]["labels"],
        json!({"app": "langgenius-openai", "team": "ai"})
    );
    let mine = owned(&dropped, "plugsync", "Apply");
    assert!(!mine.contains(&label("tier")) && !mine.contains(&label("team")));
    assert!(owned(&dropped, "labeller", "Apply").contains(&label("team")));
}

#[test]
fn dropping_every_label_removes_the_map() {
    let config = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "c", "namespace": "dify", "labels": {"a": "1"}},
        "data": {"k": "v"},
    });
    let live = apply(None, &config, "plugsync", false, T1).unwrap();
    let mut without = config.clone();
    without["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("labels");
    let after = apply(Some(&live), &without, "plugsync", false, T2).unwrap();
    assert_eq!(after["metadata"].get("labels"), None);
    assert_eq!(after["data"], json!({"k": "v"}));
}

#[test]
fn disjoint_managers_keep_both_fields_and_entries() {
    let live = apply(None, &plugin_deployment(1, ""), "plugsync", false, T1).unwrap();
    let hpa = partial(json!({"revisionHistoryLimit": 3}));
    let both = apply(Some(&live), &hpa, "history-trimmer", false, T2).unwrap();
    assert_eq!(both["spec"]["replicas"], 1);
    assert_eq!(both["spec"]["revisionHistoryLimit"], 3);
    assert_eq!(
        entries(&both),
        [
            ("history-trimmer".to_string(), "Apply".to_string()),
            ("plugsync".to_string(), "Apply".to_string())
        ]
    );
    // Re-applying plugsync's config does not remove the other manager's field.
    let again = apply(
        Some(&both),
        &plugin_deployment(1, ""),
        "plugsync",
        false,
        T3,
    )
    .unwrap();
    assert_eq!(again, both);
}

#[test]
fn a_different_value_conflicts_and_force_takes_ownership() {
    let live = apply(None, &plugin_deployment(1, ""), "a", false, T1).unwrap();
    let config = partial(json!({"replicas": 3}));
    let error = apply(Some(&live), &config, "b", false, T2).unwrap_err();
    let ApplyError::Conflicts(conflicts) = &error else {
        panic!("expected conflicts, got {error}");
    };
    assert_eq!(conflicts.len(), 1);
    assert_eq!(conflicts[0].manager, "a");
    assert_eq!(conflicts[0].field, ".spec.replicas");
    assert_eq!(
        error.to_string(),
        "Apply failed with 1 conflict: conflict with \"a\": .spec.replicas"
    );
    let status = error.to_status();
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["status"], "Failure");
    assert_eq!(status["code"], 409);
    assert_eq!(status["reason"], "Conflict");
    assert_eq!(
        status["details"]["causes"],
        json!([{"reason": "FieldManagerConflict", "message": "conflict with \"a\"", "field": ".spec.replicas"}])
    );

    let forced = apply(Some(&live), &config, "b", true, T2).unwrap();
    assert_eq!(forced["spec"]["replicas"], 3);
    assert!(owned(&forced, "b", "Apply").contains(&replicas()));
    assert!(!owned(&forced, "a", "Apply").contains(&replicas()));
    assert!(owned(&forced, "a", "Apply").contains(&label("app")));
    assert_eq!(entry(&forced, "a", "Apply")["time"], T1);
}

#[test]
fn all_conflicts_are_reported_sorted() {
    let live = apply(None, &plugin_deployment(1, ""), "a", false, T1).unwrap();
    let config = yaml(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: langgenius-openai, namespace: dify}
spec:
  replicas: 2
  template:
    spec:
      containers:
        - name: plugin
          image: registry.local/dify-plugins/langgenius-openai:0.3.0
"#,
    );
    let error = apply(Some(&live), &config, "b", false, T2).unwrap_err();
    assert_eq!(
        error.to_string(),
        "Apply failed with 2 conflicts: conflicts with \"a\":\n- .spec.replicas\n\
         - .spec.template.spec.containers[name=\"plugin\"].image"
    );
}

#[test]
fn the_same_value_is_shared_without_conflict() {
    let live = apply(None, &plugin_deployment(1, ""), "a", false, T1).unwrap();
    let shared = apply(
        Some(&live),
        &partial(json!({"replicas": 1})),
        "b",
        false,
        T2,
    )
    .unwrap();
    assert!(owned(&shared, "a", "Apply").contains(&replicas()));
    assert!(owned(&shared, "b", "Apply").contains(&replicas()));
    // Now a change by either one conflicts with the other.
    let error = apply(Some(&shared), &plugin_deployment(4, ""), "a", false, T3).unwrap_err();
    assert!(error
        .to_string()
        .contains("conflict with \"b\": .spec.replicas"));
}

#[test]
fn an_update_takes_ownership_and_a_later_apply_conflicts_with_it() {
    let live = apply(None, &plugin_deployment(1, ""), "plugsync", false, T1).unwrap();
    let mut edited = live.clone();
    edited["spec"]["replicas"] = json!(5);
    let edited = record_update(Some(&live), edited, "kubectl-edit", T2);
    assert_eq!(edited["spec"]["replicas"], 5);
    let update = entry(&edited, "kubectl-edit", "Update");
    assert_eq!(update["apiVersion"], "apps/v1");
    assert_eq!(update["time"], T2);
    assert_eq!(update["fieldsV1"], json!({"f:spec": {"f:replicas": {}}}));
    assert!(!owned(&edited, "plugsync", "Apply").contains(&replicas()));
    assert_eq!(entry(&edited, "plugsync", "Apply")["time"], T1);

    let error = apply(
        Some(&edited),
        &plugin_deployment(1, ""),
        "plugsync",
        false,
        T3,
    )
    .unwrap_err();
    assert_eq!(
        error.to_string(),
        "Apply failed with 1 conflict: conflict with \"kubectl-edit\" using apps/v1: .spec.replicas"
    );
    assert_eq!(
        error.to_status()["details"]["causes"][0]["message"],
        "conflict with \"kubectl-edit\" using apps/v1"
    );
    // Forcing hands it back; the Update entry, now empty, disappears.
    let forced = apply(
        Some(&edited),
        &plugin_deployment(1, ""),
        "plugsync",
        true,
        T3,
    )
    .unwrap();
    assert_eq!(forced["spec"]["replicas"], 1);
    assert_eq!(
        entries(&forced),
        [("plugsync".to_string(), "Apply".to_string())]
    );
}

#[test]
fn updates_record_created_fields_and_stay_stable_when_nothing_changes() {
    let created = record_update(None, plugin_deployment(1, ""), "kubectl-create", T1);
    let fields = &entry(&created, "kubectl-create", "Update")["fieldsV1"];
    assert_eq!(
        fields["f:metadata"],
        json!({"f:labels": {".": {}, "f:app": {}}})
    );
    assert_eq!(fields["f:spec"]["f:replicas"], json!({}));
    assert!(owned(&created, "kubectl-create", "Update")
        .contains(&containers().item("plugin").field("image")));

    // A PUT echoing the object (managedFields included) changes nothing.
    let same = record_update(Some(&created), created.clone(), "kube-rs", T2);
    assert_eq!(same, created);
    // Without managedFields in the body, the live ones are kept.
    let mut bare = created.clone();
    bare["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("managedFields");
    assert_eq!(
        record_update(Some(&created), bare.clone(), "kube-rs", T2),
        created
    );
    // `[{}]` resets them; the writer then owns only what it changed (nothing).
    bare["metadata"]["managedFields"] = json!([{}]);
    let reset = record_update(Some(&created), bare, "kube-rs", T2);
    assert_eq!(reset["metadata"].get("managedFields"), None);
}

#[test]
fn an_update_removing_a_field_drops_it_from_every_owner() {
    let live = apply(
        None,
        &plugin_deployment(1, "tier: plugins"),
        "plugsync",
        false,
        T1,
    )
    .unwrap();
    let mut patched = live.clone();
    patched["metadata"]["labels"]
        .as_object_mut()
        .unwrap()
        .remove("tier");
    let patched = record_update(Some(&live), patched, "kubectl-label", T2);
    assert!(!owned(&patched, "plugsync", "Apply").contains(&label("tier")));
    assert_eq!(entries(&patched), [("plugsync".into(), "Apply".into())]);
    assert_eq!(entry(&patched, "plugsync", "Apply")["time"], T1);
}

#[test]
fn containers_merge_by_name() {
    let x = plugin_deployment(1, "");
    let live = apply(None, &x, "x", false, T1).unwrap();
    let sidecar = partial(json!({"template": {"spec": {"containers": [
        {"name": "sidecar", "image": "busybox:1.36"}
    ]}}}));
    let live = apply(Some(&live), &sidecar, "y", false, T2).unwrap();
    let names = |obj: &Value| -> Vec<String> {
        obj["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(&live), ["plugin", "sidecar"]);
    assert!(owned(&live, "y", "Apply").contains(&containers().item("sidecar")));

    // X changes its container: Y's container stays.
    let mut upgraded = x.clone();
    upgraded["spec"]["template"]["spec"]["containers"][0]["image"] = json!("plugin:0.3.0");
    let live = apply(Some(&live), &upgraded, "x", false, T3).unwrap();
    assert_eq!(names(&live), ["plugin", "sidecar"]);
    assert_eq!(
        live["spec"]["template"]["spec"]["containers"][0]["image"],
        "plugin:0.3.0"
    );
    assert_eq!(
        live["spec"]["template"]["spec"]["containers"][1]["image"],
        "busybox:1.36"
    );

    // Y drops its container from its config: it is removed.
    let live = apply(
        Some(&live),
        &partial(json!({"paused": false})),
        "y",
        false,
        T3,
    )
    .unwrap();
    assert_eq!(names(&live), ["plugin"]);
    assert!(!owned(&live, "y", "Apply").contains(&containers().item("sidecar")));
}

#[test]
fn status_is_separate_from_the_main_resource() {
    let mut config = plugin_deployment(1, "");
    config["status"] = json!({"replicas": 9});
    let live = apply(None, &config, "plugsync", false, T1).unwrap();
    assert_eq!(live.get("status"), None, "the main resource ignores status");

    let status_config = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "langgenius-openai", "namespace": "dify"},
        "spec": {"replicas": 7},
        "status": {"readyReplicas": 1, "replicas": 1},
    });
    let with_status = apply_to(
        Some(&live),
        &status_config,
        "controller",
        false,
        T2,
        Subresource::Status,
    )
    .unwrap();
    assert_eq!(
        with_status["spec"], live["spec"],
        "status writes leave spec alone"
    );
    assert_eq!(
        with_status["status"],
        json!({"readyReplicas": 1, "replicas": 1})
    );
    let controller = with_status["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["manager"] == "controller")
        .unwrap();
    assert_eq!(controller["subresource"], "status");
    assert_eq!(controller["operation"], "Apply");
    assert_eq!(
        controller["fieldsV1"],
        json!({"f:status": {"f:readyReplicas": {}, "f:replicas": {}}})
    );
    assert_eq!(
        entry(&with_status, "plugsync", "Apply").get("subresource"),
        None
    );

    // A main-resource apply keeps the live status.
    let reapplied = apply(Some(&with_status), &config, "plugsync", false, T3).unwrap();
    assert_eq!(reapplied, with_status);

    // Applying status to a missing object is a 404.
    let missing = apply_to(None, &status_config, "c", false, T2, Subresource::Status).unwrap_err();
    assert_eq!(missing.to_status()["code"], 404);
}

#[test]
fn status_helpers_pick_the_right_half() {
    let live = json!({"spec": {"replicas": 1}, "status": {"replicas": 1}});
    let incoming = json!({"spec": {"replicas": 5}, "status": {"replicas": 3}});

    let mut created = incoming.clone();
    strip_status(&mut created);
    assert_eq!(created, json!({"spec": {"replicas": 5}}));

    assert_eq!(
        with_live_status(Some(&live), incoming.clone()),
        json!({"spec": {"replicas": 5}, "status": {"replicas": 1}})
    );
    assert_eq!(
        only_status(&live, &incoming),
        json!({"spec": {"replicas": 1}, "status": {"replicas": 3}})
    );
    assert_eq!(
        only_status(&live, &json!({"spec": {}})),
        json!({"spec": {"replicas": 1}})
    );

    // A status update owns only what it changed under .status, with the subresource recorded.
    let old = json!({"apiVersion": "apps/v1", "kind": "Deployment",
                     "metadata": {"name": "d"}, "spec": {"replicas": 1}, "status": {"replicas": 1}});
    let new = only_status(
        &old,
        &json!({"status": {"replicas": 1, "readyReplicas": 1}}),
    );
    let recorded = record_update_to(Some(&old), new, "kcm", T1, Subresource::Status);
    let kcm = &recorded["metadata"]["managedFields"][0];
    assert_eq!(kcm["subresource"], "status");
    assert_eq!(
        kcm["fieldsV1"],
        json!({"f:status": {"f:readyReplicas": {}}})
    );
}

#[test]
fn invalid_configs_are_refused() {
    let live = apply(None, &plugin_deployment(1, ""), "plugsync", false, T1).unwrap();

    let mut with_managed_fields = plugin_deployment(1, "");
    with_managed_fields["metadata"]["managedFields"] = live["metadata"]["managedFields"].clone();
    let error = apply(Some(&live), &with_managed_fields, "plugsync", false, T2).unwrap_err();
    assert!(matches!(error, ApplyError::Invalid(_)), "{error:?}");
    assert_eq!(error.to_string(), "metadata.managedFields must be nil");
    assert_eq!(error.to_status()["code"], 400);
    assert_eq!(error.to_status()["reason"], "BadRequest");

    let mut renamed = plugin_deployment(1, "");
    renamed["metadata"]["name"] = json!("other");
    let error = apply(Some(&live), &renamed, "plugsync", false, T2).unwrap_err();
    assert_eq!(
        error.to_string(),
        "the name of the object (other) does not match the name on the URL (langgenius-openai)"
    );

    let mut duplicated = plugin_deployment(1, "");
    let container = duplicated["spec"]["template"]["spec"]["containers"][0].clone();
    duplicated["spec"]["template"]["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .push(container);
    let error = apply(None, &duplicated, "plugsync", false, T2).unwrap_err();
    assert!(error
        .to_string()
        .ends_with(".spec.template.spec.containers: duplicate entries for key [name=\"plugin\"]"));

    for bad in [
        json!("text"),
        json!({"kind": "Deployment", "metadata": {"name": "x"}}),
    ] {
        let error = apply(None, &bad, "plugsync", false, T2).unwrap_err();
        assert!(matches!(error, ApplyError::Invalid(_)), "{bad}");
    }
}

#[test]
fn check_target_compares_the_body_with_the_url() {
    let body = plugin_deployment(1, "");
    let target =
        |version, kind, namespace, name| check_target(&body, version, kind, namespace, name);
    assert!(target(
        "apps/v1",
        "Deployment",
        Some("dify"),
        Some("langgenius-openai")
    )
    .is_ok());
    assert!(target("apps/v1", "Deployment", Some("dify"), None).is_ok());
    let messages: Vec<String> = [
        target("apps/v1", "Deployment", Some("dify"), Some("x")),
        target("apps/v1", "Deployment", Some("default"), None),
        target("v1", "Deployment", Some("dify"), None),
        target("apps/v1", "StatefulSet", Some("dify"), None),
    ]
    .into_iter()
    .map(|result| result.unwrap_err().to_string())
    .collect();
    assert_eq!(
        messages,
        [
            "the name of the object (langgenius-openai) does not match the name on the URL (x)",
            "the namespace of the provided object does not match the namespace sent on the request",
            "the API version in the data (apps/v1) does not match the expected API version (v1)",
            "the kind in the data (Deployment) does not match the expected kind (StatefulSet)",
        ]
    );
}
