//! The plan stage: desired against live objects, classified, ordered, diffed, secrets masked.

use plugsync_core::plan::{
    display_diff, display_diff_between, normalize, plan, Action, Change, Compare, ObjectKey, Plan,
    PlanError, Side,
};
use serde_json::{json, Value};

const ID: &str = "d62e5e95afbb7da9993d56f58e120ce5";

/// A plugin Deployment as plugsync renders it.
const DEPLOYMENT: &str = "
apiVersion: apps/v1
kind: Deployment
metadata:
  name: d62e5e95afbb7da9993d56f58e120ce5
  namespace: dify
  labels:
    app.kubernetes.io/part-of: team-a
    team: a
spec:
  replicas: 1
  selector:
    matchLabels:
      app: d62e5e95afbb7da9993d56f58e120ce5
  template:
    metadata:
      labels:
        app: d62e5e95afbb7da9993d56f58e120ce5
    spec:
      containers:
      - name: plugin
        image: registry.example.com/dify-plugins/agent-d62e5e95:0.0.14
        ports:
        - containerPort: 5003
        resources:
          requests:
            cpu: 100m
";

/// The same Deployment as the API server returns it: server fields, defaults, status.
const LIVE_DEPLOYMENT: &str = "
apiVersion: apps/v1
kind: Deployment
metadata:
  name: d62e5e95afbb7da9993d56f58e120ce5
  namespace: dify
  uid: 5f0c7c3e-8d4e-4a63-9f0e-2b7c1f4e9a11
  resourceVersion: '918273'
  generation: 3
  creationTimestamp: '2025-01-02T03:04:05Z'
  managedFields:
  - manager: plugsync
    operation: Apply
    fieldsType: FieldsV1
    fieldsV1: {f:spec: {f:replicas: {}}}
  annotations:
    deployment.kubernetes.io/revision: '3'
  labels:
    app.kubernetes.io/part-of: team-a
    team: a
spec:
  replicas: 1
  progressDeadlineSeconds: 600
  revisionHistoryLimit: 10
  strategy:
    type: RollingUpdate
    rollingUpdate: {maxSurge: 25%, maxUnavailable: 25%}
  selector:
    matchLabels:
      app: d62e5e95afbb7da9993d56f58e120ce5
  template:
    metadata:
      creationTimestamp: null
      labels:
        app: d62e5e95afbb7da9993d56f58e120ce5
    spec:
      containers:
      - name: plugin
        image: registry.example.com/dify-plugins/agent-d62e5e95:0.0.14
        imagePullPolicy: IfNotPresent
        ports:
        - containerPort: 5003
          protocol: TCP
        resources:
          requests:
            cpu: 100m
        terminationMessagePath: /dev/termination-log
        terminationMessagePolicy: File
      dnsPolicy: ClusterFirst
      restartPolicy: Always
      schedulerName: default-scheduler
      securityContext: {}
      terminationGracePeriodSeconds: 30
status:
  availableReplicas: 1
  readyReplicas: 1
  observedGeneration: 3
";

const SERVICE: &str = "
apiVersion: v1
kind: Service
metadata:
  name: svc-d62e5e95afbb7da9993d56f58e120ce5
  namespace: dify
spec:
  selector:
    app: d62e5e95afbb7da9993d56f58e120ce5
  ports:
  - port: 5003
    targetPort: 5003
";

const LIVE_SERVICE: &str = "
apiVersion: v1
kind: Service
metadata:
  name: svc-d62e5e95afbb7da9993d56f58e120ce5
  namespace: dify
  uid: 0a1b2c3d
  resourceVersion: '77'
  creationTimestamp: '2025-01-02T03:04:05Z'
spec:
  clusterIP: 10.96.12.34
  clusterIPs: [10.96.12.34]
  internalTrafficPolicy: Cluster
  ipFamilies: [IPv4]
  ipFamilyPolicy: SingleStack
  sessionAffinity: None
  type: ClusterIP
  selector:
    app: d62e5e95afbb7da9993d56f58e120ce5
  ports:
  - port: 5003
    protocol: TCP
    targetPort: 5003
status:
  loadBalancer: {}
";

const JOB: &str = "
apiVersion: batch/v1
kind: Job
metadata:
  name: d62e5e95afbb7da9993d56f58e120ce5
  namespace: dify
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: build
        image: gcr.io/kaniko-project/executor:v1.23.2
        args: [--destination=registry.example.com/dify-plugins/agent-d62e5e95:0.0.14]
";

const PLUGIN: &str = "
apiVersion: plugsync.dev/v1alpha1
kind: Plugin
metadata:
  name: d62e5e95afbb7da9993d56f58e120ce5
  namespace: dify
spec:
  uniqueIdentifier: langgenius/agent:0.0.14@26958a0e80a10655ce73812bdb7c35a66ce7b16f5ac346d298bda17ff85efd1e
";

/// The secret strings that must never be printed.
const NEW_PASSWORD: &str = "correct-horse-battery-staple";
const NEW_PASSWORD_B64: &str = "Y29ycmVjdC1ob3JzZS1iYXR0ZXJ5LXN0YXBsZQ==";
const OLD_PASSWORD: &str = "Tr0ub4dor&3";
const OLD_PASSWORD_B64: &str = "VHIwdWI0ZG9yJjM=";
const USERNAME_B64: &str = "YWRtaW4=";

const SECRET: &str = "
apiVersion: v1
kind: Secret
metadata:
  name: plugin-env
  namespace: dify
type: Opaque
stringData:
  password: correct-horse-battery-staple
  username: admin
";

const LIVE_SECRET: &str = r#"
apiVersion: v1
kind: Secret
metadata:
  name: plugin-env
  namespace: dify
  resourceVersion: '42'
  annotations:
    kubectl.kubernetes.io/last-applied-configuration: '{"stringData":{"password":"Tr0ub4dor&3","username":"admin"}}'
type: Opaque
data:
  password: VHIwdWI0ZG9yJjM=
  username: YWRtaW4=
"#;

fn yaml(text: &str) -> Value {
    serde_saphyr::from_str(text).expect("test YAML parses")
}

/// Applies `edit` to a parsed copy of `text`.
fn edited(text: &str, edit: impl FnOnce(&mut Value)) -> Value {
    let mut v = yaml(text);
    edit(&mut v);
    v
}

fn with_image(text: &str, image: &str) -> Value {
    edited(text, |d| {
        d["spec"]["template"]["spec"]["containers"][0]["image"] = json!(image)
    })
}

fn only(p: &Plan) -> &Change {
    assert_eq!(p.changes.len(), 1, "expected one change: {p:?}");
    &p.changes[0]
}

fn single(desired: Value, live: Value, compare: Compare) -> Change {
    let p = plan(&[desired], &[live], compare).expect("plan");
    only(&p).clone()
}

fn shown(p: &Plan) -> Vec<String> {
    p.changes
        .iter()
        .map(|c| format!("{} {}", c.action, c.key))
        .collect()
}

#[test]
fn classifies_create_update_delete_and_unchanged() {
    let old_deployment = edited(DEPLOYMENT, |d| d["metadata"]["name"] = json!("0123old"));
    let desired = [
        yaml(PLUGIN),
        yaml(SERVICE),
        yaml(JOB),
        with_image(
            DEPLOYMENT,
            "registry.example.com/dify-plugins/agent-d62e5e95:0.0.15",
        ),
    ];
    let live = [yaml(LIVE_SERVICE), yaml(LIVE_DEPLOYMENT), old_deployment];
    let p = plan(&desired, &live, Compare::DesiredSubset).expect("plan");
    assert_eq!(
        shown(&p),
        [
            format!("create Plugin dify/{ID}"),
            format!("unchanged Service dify/svc-{ID}"),
            format!("create Job dify/{ID}"),
            format!("update Deployment dify/{ID}"),
            "delete Deployment dify/0123old".to_string(),
        ]
    );
    let reasons: Vec<&str> = p.changes.iter().map(|c| c.reason.as_str()).collect();
    assert_eq!(
        reasons,
        [
            "not present",
            "in sync",
            "not present",
            "changed: spec.template.spec.containers[0].image",
            "no longer desired",
        ]
    );
    let counts = p.counts();
    assert_eq!(
        (
            counts.create,
            counts.update,
            counts.delete,
            counts.unchanged
        ),
        (2, 1, 1, 1)
    );
    assert!(!p.is_empty_of_changes());
    let create = &p.changes[0];
    assert!(create.live.is_none() && create.desired == Some(yaml(PLUGIN)));
    let delete = &p.changes[4];
    assert!(delete.desired.is_none() && delete.live.is_some());
}

#[test]
fn server_populated_fields_and_status_are_ignored() {
    let live = edited(DEPLOYMENT, |d| {
        let meta = &mut d["metadata"];
        meta["managedFields"] = json!([{"manager": "plugsync", "operation": "Apply"}]);
        meta["resourceVersion"] = json!("918273");
        meta["uid"] = json!("5f0c7c3e-8d4e-4a63-9f0e-2b7c1f4e9a11");
        meta["creationTimestamp"] = json!("2025-01-02T03:04:05Z");
        meta["generation"] = json!(3);
        meta["annotations"] = json!({"kubectl.kubernetes.io/last-applied-configuration": "{\"kind\":\"Deployment\"}"});
        d["status"] = json!({"readyReplicas": 1, "observedGeneration": 3});
    });
    for compare in [Compare::Exact, Compare::DesiredSubset] {
        let c = single(yaml(DEPLOYMENT), live.clone(), compare);
        assert_eq!(c.action, Action::Unchanged, "{compare:?}: {c:?}");
        assert_eq!(c.reason, "in sync");
        assert!(c.changed_paths.is_empty());
        assert_eq!(display_diff(&c, 3), "");
    }
    let p = plan(&[yaml(DEPLOYMENT)], &[live], Compare::Exact).expect("plan");
    assert!(p.is_empty_of_changes());
    assert_eq!(normalize(&yaml(DEPLOYMENT)), yaml(DEPLOYMENT));
}

#[test]
fn desired_subset_ignores_api_server_defaults() {
    for (desired, live) in [(DEPLOYMENT, LIVE_DEPLOYMENT), (SERVICE, LIVE_SERVICE)] {
        let c = single(yaml(desired), yaml(live), Compare::DesiredSubset);
        assert_eq!(c.action, Action::Unchanged, "{c:?}");
    }
}

#[test]
fn desired_subset_detects_a_changed_image() {
    let desired = with_image(
        DEPLOYMENT,
        "registry.example.com/dify-plugins/agent-d62e5e95:0.0.15",
    );
    let c = single(desired, yaml(LIVE_DEPLOYMENT), Compare::DesiredSubset);
    assert_eq!(c.action, Action::Update);
    assert_eq!(c.changed_paths, ["spec.template.spec.containers[0].image"]);
}

#[test]
fn desired_subset_detects_an_added_container() {
    let desired = edited(DEPLOYMENT, |d| {
        let containers = &mut d["spec"]["template"]["spec"]["containers"];
        if let Some(list) = containers.as_array_mut() {
            list.push(json!({"name": "sidecar", "image": "busybox:1.36"}));
        }
    });
    let c = single(desired, yaml(LIVE_DEPLOYMENT), Compare::DesiredSubset);
    assert_eq!(c.action, Action::Update);
    assert_eq!(c.changed_paths, ["spec.template.spec.containers"]);
}

#[test]
fn desired_subset_detects_a_changed_label() {
    let desired = edited(DEPLOYMENT, |d| d["metadata"]["labels"]["team"] = json!("b"));
    let c = single(desired, yaml(LIVE_DEPLOYMENT), Compare::DesiredSubset);
    assert_eq!(c.action, Action::Update);
    assert_eq!(c.changed_paths, ["metadata.labels.team"]);
    assert_eq!(c.reason, "changed: metadata.labels.team");
}

#[test]
fn exact_detects_an_extra_field() {
    let before = edited(DEPLOYMENT, |d| {
        d["spec"]["template"]["spec"]["nodeSelector"] = json!({"pool": "plugins"})
    });
    let c = single(yaml(DEPLOYMENT), before.clone(), Compare::Exact);
    assert_eq!(c.action, Action::Update);
    assert_eq!(c.changed_paths, ["spec.template.spec.nodeSelector"]);
    // The same extra field is a default as far as DesiredSubset is concerned.
    let c = single(yaml(DEPLOYMENT), before, Compare::DesiredSubset);
    assert_eq!(c.action, Action::Unchanged);
}

#[test]
fn exact_reports_every_api_server_default() {
    let c = single(yaml(SERVICE), yaml(LIVE_SERVICE), Compare::Exact);
    assert_eq!(c.action, Action::Update);
    assert_eq!(
        c.changed_paths,
        [
            "spec.clusterIP",
            "spec.clusterIPs",
            "spec.internalTrafficPolicy",
            "spec.ipFamilies",
            "spec.ipFamilyPolicy",
            "spec.ports[0].protocol",
            "spec.sessionAffinity",
            "spec.type",
        ]
    );
    assert_eq!(
        c.reason,
        "changed: spec.clusterIP, spec.clusterIPs, spec.internalTrafficPolicy, \
         spec.ipFamilies, spec.ipFamilyPolicy and 3 more"
    );
}

/// Fails naming the first secret string found in `text`.
fn assert_no_secret(what: &str, text: &str) {
    for s in [
        NEW_PASSWORD,
        NEW_PASSWORD_B64,
        OLD_PASSWORD,
        OLD_PASSWORD_B64,
        USERNAME_B64,
    ] {
        assert!(!text.contains(s), "{what} leaks {s:?}:\n{text}");
    }
}

#[test]
fn a_changed_secret_is_reported_by_key_name_only() {
    for compare in [Compare::DesiredSubset, Compare::Exact] {
        let p = plan(&[yaml(SECRET)], &[yaml(LIVE_SECRET)], compare).expect("plan");
        let c = only(&p);
        assert_eq!(c.action, Action::Update, "{compare:?}");
        assert_eq!(c.changed_paths, ["data.password"], "{compare:?}");
        assert_eq!(c.reason, "changed: data.password");
        assert_no_secret("Debug of the plan", &format!("{p:?}"));
        assert_no_secret("Debug of the plan", &format!("{p:#?}"));
        assert_no_secret("reason", &c.reason);
        assert_no_secret("changed paths", &c.changed_paths.join(" "));
        let diff = display_diff(c, 3);
        assert_no_secret("display_diff", &diff);
        assert!(diff.contains("-  password: \"***\"\n"), "{diff}");
        assert!(diff.contains("+  password: \"*** (changed)\"\n"), "{diff}");
        assert!(diff.contains("   username: \"***\"\n"), "{diff}");
        // The objects themselves keep their values: applying needs them.
        assert_eq!(c.desired.as_ref(), Some(&yaml(SECRET)));
    }
}

#[test]
fn a_secret_is_unchanged_when_string_data_matches_live_data() {
    let desired = edited(SECRET, |s| {
        s["stringData"]["password"] = json!(OLD_PASSWORD)
    });
    let c = single(desired, yaml(LIVE_SECRET), Compare::DesiredSubset);
    assert_eq!(c.action, Action::Unchanged, "{c:?}");
}

#[test]
fn created_and_deleted_secrets_are_masked_too() {
    let p = plan(
        &[yaml(SECRET)],
        &[edited(LIVE_SECRET, |s| {
            s["metadata"]["name"] = json!("old")
        })],
        Compare::DesiredSubset,
    )
    .expect("plan");
    assert_eq!(
        shown(&p),
        ["create Secret dify/plugin-env", "delete Secret dify/old"]
    );
    assert_no_secret("Debug of the plan", &format!("{p:?}"));
    for c in &p.changes {
        let diff = display_diff(c, 3);
        assert_no_secret("display_diff", &diff);
        assert!(diff.contains("password: \"***\""), "{diff}");
    }
}

#[test]
fn render_diff_of_an_image_change() {
    let desired = with_image(
        DEPLOYMENT,
        "registry.example.com/dify-plugins/agent-d62e5e95:0.0.15",
    );
    let c = single(desired, yaml(LIVE_DEPLOYMENT), Compare::DesiredSubset);
    let diff = display_diff(&c, 1);
    assert_eq!(
        diff,
        format!(
            "--- live/Deployment dify/{ID}
+++ desired/Deployment dify/{ID}
@@ -19,3 +19,3 @@
       containers:
-      - image: registry.example.com/dify-plugins/agent-d62e5e95:0.0.14
+      - image: registry.example.com/dify-plugins/agent-d62e5e95:0.0.15
         name: plugin
"
        )
    );
    assert_eq!(display_diff(&c, 1), diff, "deterministic");
    // Under Exact, the live-only defaults show up as removed lines.
    let c = single(
        with_image(
            DEPLOYMENT,
            "registry.example.com/dify-plugins/agent-d62e5e95:0.0.15",
        ),
        yaml(LIVE_DEPLOYMENT),
        Compare::Exact,
    );
    let diff = display_diff(&c, 3);
    assert!(
        diff.contains("-        terminationMessagePath: /dev/termination-log\n"),
        "{diff}"
    );
    assert!(
        diff.contains("+      - image: registry.example.com/dify-plugins/agent-d62e5e95:0.0.15\n"),
        "{diff}"
    );
}

#[test]
fn render_diff_of_create_and_delete_adds_or_removes_every_line() {
    let p = plan(&[yaml(SERVICE)], &[yaml(PLUGIN)], Compare::DesiredSubset).expect("plan");
    assert_eq!(p.changes.len(), 2);
    let create = display_diff(&p.changes[0], 3);
    let delete = display_diff(&p.changes[1], 3);
    assert!(create.starts_with(&format!(
        "--- live/Service dify/svc-{ID}\n+++ desired/Service dify/svc-{ID}\n@@ -0,0 +1,"
    )));
    assert!(delete.starts_with(&format!(
        "--- live/Plugin dify/{ID}\n+++ desired/Plugin dify/{ID}\n@@ -1,"
    )));
    let body = |diff: &str| diff.lines().skip(3).map(str::to_string).collect::<Vec<_>>();
    assert!(body(&create).iter().all(|l| l.starts_with('+')), "{create}");
    assert!(body(&delete).iter().all(|l| l.starts_with('-')), "{delete}");
    assert!(create.contains("+kind: Service\n"));
    assert!(delete.contains("-kind: Plugin\n"));
}

#[test]
fn changes_are_in_apply_order_with_deletes_last_in_reverse() {
    let named = |text: &str, name: &str| edited(text, |o| o["metadata"]["name"] = json!(name));
    let desired = [
        yaml(DEPLOYMENT),
        yaml(JOB),
        yaml(SERVICE),
        yaml(PLUGIN),
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "dify"}}),
    ];
    let live = [
        named(SERVICE, "svc-old"),
        named(DEPLOYMENT, "old"),
        named(PLUGIN, "old"),
        named(JOB, "old"),
    ];
    let p = plan(&desired, &live, Compare::DesiredSubset).expect("plan");
    assert_eq!(
        shown(&p),
        [
            "create Namespace dify".to_string(),
            format!("create Plugin dify/{ID}"),
            format!("create Service dify/svc-{ID}"),
            format!("create Job dify/{ID}"),
            format!("create Deployment dify/{ID}"),
            "delete Deployment dify/old".into(),
            "delete Job dify/old".into(),
            "delete Service dify/svc-old".into(),
            "delete Plugin dify/old".into(),
        ]
    );
    // Input order does not matter.
    let mut reversed = desired.to_vec();
    reversed.reverse();
    let again = plan(&reversed, &live, Compare::DesiredSubset).expect("plan");
    assert_eq!(shown(&again), shown(&p));
}

#[test]
fn duplicate_objects_are_refused_on_either_side() {
    let err = plan(&[yaml(SERVICE), yaml(SERVICE)], &[], Compare::Exact);
    match err {
        Err(PlanError::DuplicateObject { side, key }) => {
            assert_eq!(side, Side::Desired);
            assert_eq!(key.to_string(), format!("Service dify/svc-{ID}"));
        }
        other => panic!("expected a duplicate, got {other:?}"),
    }
    let err = plan(&[], &[yaml(JOB), yaml(JOB)], Compare::Exact);
    match err {
        Err(
            e @ PlanError::DuplicateObject {
                side: Side::Live, ..
            },
        ) => assert_eq!(
            e.to_string(),
            format!("live objects hold Job dify/{ID} more than once")
        ),
        other => panic!("expected a duplicate, got {other:?}"),
    }
}

#[test]
fn invalid_objects_are_refused_with_index_and_missing_field() {
    let nameless = edited(SERVICE, |s| {
        if let Some(meta) = s["metadata"].as_object_mut() {
            meta.remove("name");
        }
    });
    let kindless = edited(SERVICE, |s| {
        if let Some(obj) = s.as_object_mut() {
            obj.remove("kind");
        }
    });
    let cases = [
        (
            vec![yaml(PLUGIN), nameless],
            Side::Desired,
            1,
            "missing metadata.name",
        ),
        (vec![kindless], Side::Live, 0, "missing kind"),
    ];
    for (objects, want_side, want_index, want_reason) in cases {
        let result = match want_side {
            Side::Desired => plan(&objects, &[], Compare::Exact),
            Side::Live => plan(&[], &objects, Compare::Exact),
        };
        match result {
            Err(PlanError::InvalidObject {
                side,
                index,
                reason,
            }) => assert_eq!(
                (side, index, reason.as_str()),
                (want_side, want_index, want_reason)
            ),
            other => panic!("expected an invalid object, got {other:?}"),
        }
    }
    let e = plan(&[json!({"kind": "Job"})], &[], Compare::Exact).expect_err("invalid");
    assert_eq!(e.to_string(), "desired object #0: missing apiVersion");
}

#[test]
fn object_keys_display_kind_namespace_and_name() {
    let key = ObjectKey::of(&yaml(DEPLOYMENT)).expect("key");
    assert_eq!(key.to_string(), format!("Deployment dify/{ID}"));
    assert_eq!(key.api_version, "apps/v1");
}

#[test]
fn render_diff_between_names_its_sides_as_told_and_masks_secrets_the_same() {
    let c = single(
        with_image(
            DEPLOYMENT,
            "registry.example.com/dify-plugins/agent-d62e5e95:0.0.15",
        ),
        yaml(LIVE_DEPLOYMENT),
        Compare::DesiredSubset,
    );
    let between = display_diff_between(&c, 1, "base/old", "head/new");
    assert!(
        between.starts_with("--- base/old\n+++ head/new\n@@ -19,3 +19,3 @@\n"),
        "{between}"
    );
    // The same lines as display_diff, under other headers.
    let body = |d: &str| d.lines().skip(2).map(str::to_string).collect::<Vec<_>>();
    assert_eq!(body(&between), body(&display_diff(&c, 1)));

    let secret = single(yaml(SECRET), yaml(LIVE_SECRET), Compare::DesiredSubset);
    let shown = display_diff_between(&secret, 3, "base/s", "head/s");
    assert_no_secret("display_diff_between", &shown);
    let unchanged = single(yaml(SERVICE), yaml(SERVICE), Compare::Exact);
    assert_eq!(display_diff_between(&unchanged, 3, "a", "b"), "");
}
