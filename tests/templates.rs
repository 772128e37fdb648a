//! A repository's `templates/` overrides reach the plugin controller through the cluster, on
//! the real control plane: a ConfigMap named by the hash of its content, applied with the set
//! and named by each Plugin (`spec.templates`), read by the controller through a watch. So a
//! standalone `plugsync controller` beside `plugsync apply` renders what `plugsync run` renders,
//! and both apply the children `plugsync render` showed.
//!
//! The repository overrides the Dockerfile (a changed build context: a controller with other
//! templates would never build, its build inputs differing from the Plugin's) and the
//! Deployment (`revisionHistoryLimit`, the mark looked for in the live Deployment).

#[path = "common/cluster.rs"]
mod cluster;
#[path = "common/fault_proxy.rs"]
mod fault_proxy;

#[path = "common/cli_env.rs"]
mod cli_env;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use cli_env::{text, Env, SET};
use cluster::eventually;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use serde_json::{json, Value};

/// How long a build, a rollout or a watch event may take on a loaded host.
const WAIT: Duration = Duration::from_secs(120);

/// The line of the built-in Deployment template the override changes.
const BUILT_IN_HISTORY: &str = "revisionHistoryLimit: 3";

/// A test's namespace and synthetic repository, with the registry Secret the set names
/// (the test registry is plain HTTP without auth: an empty dockerconfigjson).
async fn env(label: &str) -> Env {
    let env = Env::new(label, 1).await;
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "image-repo-secret"},
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": "eyJhdXRocyI6e319"}
    }))
    .expect("secret");
    Api::<Secret>::namespaced(env.client().await, &env.ns)
        .create(&PostParams::default(), &secret)
        .await
        .expect("registry secret");
    env
}

/// Writes `templates/` into `repo`: the built-in Dockerfile with a label more, and the
/// built-in Deployment with `revisionHistoryLimit: history`.
fn write_templates(repo: &Path, history: u32) {
    let dir = repo.join("templates");
    std::fs::create_dir_all(&dir).expect("templates/");
    let dockerfile = format!(
        "{}LABEL dev.plugsync.test.mark=\"custom\"\n",
        include_str!("../templates/Dockerfile.j2")
    );
    let deployment = include_str!("../templates/deployment.yaml.j2").replace(
        BUILT_IN_HISTORY,
        &format!("revisionHistoryLimit: {history}"),
    );
    assert!(deployment.contains(&format!("revisionHistoryLimit: {history}")));
    // Written beside, then renamed: `plugsync run --repo` may read the folder at any time.
    for (name, text) in [
        ("Dockerfile.j2", dockerfile),
        ("deployment.yaml.j2", deployment),
    ] {
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).expect("write");
        std::fs::rename(&tmp, dir.join(name)).expect("rename");
    }
}

/// `plugsync render -o json` of `repo` with build contexts at `context_url`: its objects.
async fn render(env: &Env, repo: &Path, context_url: &str) -> Vec<Value> {
    let mut cmd = env.plugsync(&["render", "-o", "json", "--context-url", context_url]);
    cmd.arg("--repo").arg(repo);
    let out = Env::output(cmd).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let list: Value = serde_json::from_slice(&out.stdout).expect("a JSON List");
    list["items"].as_array().expect("items").clone()
}

fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

fn name(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or_default()
}

/// The templates ConfigMaps in the namespace, by name.
async fn config_maps(env: &Env) -> Vec<String> {
    let mut names: Vec<String> = env
        .list("v1", "ConfigMap")
        .await
        .iter()
        .map(name)
        .filter(|n| n.starts_with("plugsync-templates-"))
        .map(str::to_string)
        .collect();
    names.sort();
    names
}

/// What `plugsync render` showed for the repository, checked: one templates ConfigMap first,
/// holding the two overrides, named by the one Plugin; returns (ConfigMap name, the Plugin,
/// the Deployment).
fn rendered_parts(objects: &[Value], history: u32) -> (String, Value, Value) {
    assert_eq!(objects[0]["kind"], "ConfigMap", "the ConfigMap comes first");
    let config_map = &objects[0];
    let cm_name = name(config_map).to_string();
    assert!(
        cm_name.starts_with(&format!("plugsync-templates-{SET}-")),
        "{cm_name}"
    );
    assert_eq!(
        config_map["metadata"]["labels"]["plugsync.dev/pluginset"],
        SET
    );
    assert_eq!(config_map["immutable"], true);
    let data = config_map["data"].as_object().expect("data");
    assert_eq!(
        data.keys().collect::<Vec<_>>(),
        ["Dockerfile.j2", "deployment.yaml.j2"]
    );
    let plugins = of_kind(objects, "Plugin");
    assert_eq!(plugins.len(), 1);
    assert_eq!(plugins[0]["spec"]["templates"], cm_name.as_str());
    let deployments = of_kind(objects, "Deployment");
    assert_eq!(deployments[0]["spec"]["revisionHistoryLimit"], history);
    (cm_name, plugins[0].clone(), deployments[0].clone())
}

/// The Plugin's condition of `type_`.
fn condition<'a>(plugin: &'a Value, type_: &str) -> Option<&'a Value> {
    plugin["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

/// Waits until the one Plugin is Running and its Deployment shows `history`; returns both.
async fn running_with(env: &Env, history: u32) -> (Value, Value) {
    eventually(
        WAIT,
        &format!("Running, revisionHistoryLimit {history}"),
        || async {
            let plugins = env.plugins().await;
            let plugin = plugins.first()?;
            if plugin["status"]["phase"] != "Running" {
                return None;
            }
            let deployment = env
                .get("apps/v1", "Deployment", name(plugin))
                .await
                .filter(|d| d["spec"]["revisionHistoryLimit"] == history)?;
            Some((plugin.clone(), deployment))
        },
    )
    .await
}

/// The build inputs the Plugin would have with the built-in templates.
async fn built_in_inputs(env: &Env, context_url: &str) -> Value {
    let plain = tempfile::tempdir().expect("dir");
    for file in ["plugins.yaml", "plugins.lock"] {
        std::fs::copy(env.repo.path().join(file), plain.path().join(file)).expect("copy");
    }
    let objects = render(env, plain.path(), context_url).await;
    assert!(
        of_kind(&objects, "ConfigMap").is_empty(),
        "no overrides, no ConfigMap"
    );
    let plugin = of_kind(&objects, "Plugin")[0].clone();
    assert!(plugin["spec"].get("templates").is_none(), "{plugin:#}");
    plugin["spec"]["build"]["inputsHash"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standalone_controller_builds_and_runs_with_the_templates_plugsync_apply_applied() {
    let env = env("tmpl-standalone").await;
    write_templates(env.repo.path(), 7);
    let port = cluster::free_port();
    let context_url = format!("http://127.0.0.1:{port}");
    let objects = render(&env, env.repo.path(), &context_url).await;
    let (cm_name, rendered_plugin, rendered_deployment) = rendered_parts(&objects, 7);
    let inputs = rendered_plugin["spec"]["build"]["inputsHash"].clone();
    assert_ne!(
        inputs,
        built_in_inputs(&env, &context_url).await,
        "the custom Dockerfile changes the build inputs"
    );

    // Applied, then the ConfigMap taken away before any controller runs.
    let apply = || async {
        let mut cmd = env.plugsync(&["apply", "--context-url", &context_url]);
        cmd.arg("--repo").arg(env.repo.path());
        let out = Env::output(cmd).await;
        assert!(
            out.status.success(),
            "{}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    };
    let stdout = apply().await;
    assert!(
        stdout.contains(&cm_name),
        "apply names the ConfigMap: {stdout}"
    );
    assert_eq!(config_maps(&env).await, std::slice::from_ref(&cm_name));
    assert!(
        env.inventory().await.contains(&cm_name),
        "the set owns its templates ConfigMap"
    );
    env.c
        .kubectl_ok(&["-n", &env.ns, "delete", "configmap", &cm_name, "--wait"]);

    let mut controller = env.plugsync(&["controller", "-n", &env.ns]);
    controller
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--context-url", &context_url])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _controller = controller.spawn().expect("plugsync controller");

    // The Plugin says what it waits for, and nothing is built meanwhile.
    let waiting = eventually(
        WAIT,
        "the Plugin to say its templates are missing",
        || async {
            let plugins = env.plugins().await;
            let plugin = plugins.first()?;
            let stalled = condition(plugin, "Stalled")?;
            (stalled["reason"] == "TemplatesMissing").then(|| plugin.clone())
        },
    )
    .await;
    let stalled = condition(&waiting, "Stalled").expect("Stalled");
    assert_eq!(stalled["status"], "True");
    let message = stalled["message"].as_str().unwrap_or_default();
    assert!(message.contains(&cm_name), "names the ConfigMap: {message}");
    assert_eq!(
        condition(&waiting, "Ready").expect("Ready")["status"],
        "False"
    );
    assert!(
        env.list("batch/v1", "Job").await.is_empty(),
        "no build without templates"
    );

    // Applied again: the ConfigMap appears, and the Plugin proceeds on its own.
    apply().await;
    let (plugin, deployment) = running_with(&env, 7).await;
    assert_eq!(plugin["spec"]["templates"], cm_name.as_str());
    assert_eq!(
        plugin["status"]["builtInputsHash"], inputs,
        "built from the custom Dockerfile"
    );
    // What the controller applied is what `plugsync render` showed (but the image, pinned
    // by the digest the build pushed).
    for path in [
        "/spec/revisionHistoryLimit",
        "/spec/template/spec/containers/0/resources",
        "/spec/template/spec/containers/0/env",
        "/spec/template/metadata/labels",
        "/metadata/labels",
    ] {
        assert_eq!(
            deployment.pointer(path),
            rendered_deployment.pointer(path),
            "{path}"
        );
    }
    for condition_type in ["Ready", "Stalled"] {
        let c = condition(&plugin, condition_type).expect("condition");
        assert_ne!(c["reason"], "TemplatesMissing", "{c:#}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugsync_run_renders_with_the_commits_templates_and_follows_a_change_of_them() {
    let env = env("tmpl-run").await;
    write_templates(env.repo.path(), 7);
    let port = cluster::free_port();
    let context_url = format!("http://127.0.0.1:{port}");
    let objects = render(&env, env.repo.path(), &context_url).await;
    let (first_cm, rendered_plugin, rendered_deployment) = rendered_parts(&objects, 7);

    let mut run = env.plugsync(&["run", "--namespace", &env.ns]);
    run.arg("--repo")
        .arg(env.repo.path())
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--context-url", &context_url])
        .args(["--interval", "2s", "--leader-election", "false"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _run = run.spawn().expect("plugsync run");

    let (plugin, deployment) = running_with(&env, 7).await;
    assert_eq!(plugin["spec"]["templates"], first_cm.as_str());
    assert_eq!(
        plugin["status"]["builtInputsHash"],
        rendered_plugin["spec"]["build"]["inputsHash"]
    );
    assert_eq!(
        deployment.pointer("/spec/template/spec/containers/0/env"),
        rendered_deployment.pointer("/spec/template/spec/containers/0/env")
    );
    assert_eq!(config_maps(&env).await, std::slice::from_ref(&first_cm));

    // A new Deployment template: a new ConfigMap, the Plugin names it, the controller
    // re-renders the Deployment from it, and the old ConfigMap is pruned.
    write_templates(env.repo.path(), 8);
    let objects = render(&env, env.repo.path(), &context_url).await;
    let (second_cm, _, _) = rendered_parts(&objects, 8);
    assert_ne!(second_cm, first_cm, "named by the hash of the content");
    let (plugin, _) = running_with(&env, 8).await;
    assert_eq!(plugin["spec"]["templates"], second_cm.as_str());
    eventually(WAIT, "the old templates ConfigMap pruned", || async {
        (config_maps(&env).await == [second_cm.clone()]).then_some(())
    })
    .await;
}
