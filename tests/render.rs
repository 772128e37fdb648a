//! Render: golden output of the bundled example, validity of every object for its kind,
//! determinism across runs and checkout paths, template overrides and template errors.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Service;
use plugsync_core::crd::Plugin;
use plugsync_core::model::LockState;
use plugsync_core::pipeline::{
    desired_state, emit_text, resolved_state, DesiredState, ResolvedState,
};
use plugsync_core::render::{objects_to_yaml, RenderSettings, TextFormat};
use plugsync_core::resolve::cache::Cache;
use plugsync_core::source::WorkTree;
use serde_json::Value;

#[path = "common/fs.rs"]
mod fs;
use fs::copy_dir;

fn render_dir(dir: &Path) -> DesiredState {
    let cache = tempfile::tempdir().expect("cache");
    let resolver = plugsync_testkit::resolver(Cache::open(cache.path()).expect("cache"));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let snapshot = WorkTree::new(dir).expect("worktree");
    rt.block_on(desired_state(
        &snapshot,
        "plugins.yaml",
        &resolver,
        &RenderSettings::default(),
    ))
    .expect("renders")
    .expect("plugins.yaml present")
}

/// Compares with a committed golden file; `UPDATE_GOLDEN=1 cargo test` rewrites it.
fn check_golden(name: &str, actual: &str) {
    let path = PathBuf::from("tests/golden").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).expect("write golden");
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run with UPDATE_GOLDEN=1", path.display()));
    assert!(
        expected == actual,
        "{} differs from the rendered output; if the change is intended, rerun with UPDATE_GOLDEN=1 and review the diff",
        path.display()
    );
}

#[test]
fn bundled_example_matches_the_golden_files() {
    let state = render_dir(Path::new("examples"));
    assert_eq!(state.lock, LockState::UpToDate);
    check_golden("example-objects.yaml", &objects_to_yaml(&state.objects()));
    for plugin in &state.rendered {
        let file = format!("example-{}.Dockerfile", plugin.name.replace('/', "_"));
        check_golden(&file, &plugin.dockerfile);
    }
}

#[test]
fn every_object_is_valid_for_its_kind() {
    let state = render_dir(Path::new("examples"));
    let objects = state.objects();
    assert_eq!(
        objects.len(),
        8,
        "Plugin, Job, Deployment, Service for each of two plugins"
    );
    for object in objects {
        let kind = object["kind"].as_str().expect("kind").to_string();
        // Deserialize into the typed API object and back: a misspelled or misplaced field
        // is dropped (or refused) by the typed model, so the round trip would differ.
        let round_trip = match kind.as_str() {
            "Plugin" => serde_json::to_value(
                serde_json::from_value::<Plugin>(object.clone()).expect("Plugin"),
            ),
            "Job" => {
                serde_json::to_value(serde_json::from_value::<Job>(object.clone()).expect("Job"))
            }
            "Deployment" => serde_json::to_value(
                serde_json::from_value::<Deployment>(object.clone()).expect("Deployment"),
            ),
            "Service" => serde_json::to_value(
                serde_json::from_value::<Service>(object.clone()).expect("Service"),
            ),
            other => panic!("unexpected kind {other}"),
        }
        .expect("serializes");
        assert_eq!(
            round_trip, object,
            "{kind} does not survive its typed round trip"
        );
    }
}

#[test]
fn names_labels_and_build_context_follow_the_conventions() {
    let state = render_dir(Path::new("examples"));
    let agent = state
        .rendered
        .iter()
        .find(|p| p.name == "langgenius/agent")
        .expect("agent rendered");
    let id = "d62e5e95afbb7da9993d56f58e120ce5";
    assert_eq!(agent.plugin_id, id);
    let by_kind = |k: &str| -> &Value {
        agent
            .objects
            .iter()
            .find(|o| o["kind"] == k)
            .expect("object of kind")
    };
    for kind in ["Plugin", "Job", "Deployment"] {
        assert_eq!(by_kind(kind)["metadata"]["name"], id);
    }
    let service = by_kind("Service");
    assert_eq!(service["metadata"]["name"], format!("svc-{id}"));
    assert_eq!(service["spec"]["ports"][0]["port"], 8080);
    let labels = &by_kind("Deployment")["metadata"]["labels"];
    assert_eq!(labels["app.kubernetes.io/managed-by"], "plugsync");
    assert_eq!(labels["app.kubernetes.io/part-of"], "example");
    assert_eq!(labels["app.kubernetes.io/version"], "0.0.14");
    assert_eq!(labels["plugsync.dev/plugin-id"], id);
    let image = format!("registry.local:5000/dify-plugins/agent-{id}:0.0.14");
    let container = &by_kind("Deployment")["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], image.as_str());
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/health");
    // The package declares resource.memory 1048576 (1 MiB), on which no pod starts: the pod
    // gets what Dify Enterprise's connector gives plugin pods instead.
    assert_eq!(
        container["resources"],
        serde_json::json!({
            "requests": {"cpu": "100m", "memory": "50Mi"},
            "limits": {"cpu": "1", "memory": "3000Mi"},
        }),
        "not the manifest's 1 MiB"
    );
    assert_eq!(
        container["securityContext"]["allowPrivilegeEscalation"],
        false
    );
    // The Service selects pods of any attempt of this plugin.
    let pod_labels = &by_kind("Deployment")["spec"]["template"]["metadata"]["labels"];
    for (k, v) in service["spec"]["selector"].as_object().expect("selector") {
        assert_eq!(&pod_labels[k], v, "selector {k} must match the pods");
    }

    // The build context holds exactly the pinned package and the Dockerfile, and the Job
    // checks the digest the Plugin records.
    let mut archive = tar::Archive::new(&agent.context.bytes[..]);
    let mut files = std::collections::BTreeMap::new();
    for entry in archive.entries().expect("entries") {
        let mut entry = entry.expect("entry");
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut data).expect("read");
        files.insert(entry.path().expect("path").display().to_string(), data);
    }
    assert_eq!(
        plugsync_core::package::sha256_hex(&files["plugin.difypkg"]),
        "a58786359976dbbc96b353c9fc0e9ced05a3f5ee51995424c527934add9d323f"
    );
    assert_eq!(files["Dockerfile"], agent.dockerfile.as_bytes());
    assert_eq!(
        by_kind("Plugin")["spec"]["build"]["contextSha256"],
        agent.context.sha256.as_str()
    );
    let init = &by_kind("Job")["spec"]["template"]["spec"]["initContainers"][0];
    assert_eq!(init["env"][1]["value"], agent.context.sha256.as_str());
    assert_eq!(by_kind("Job")["spec"]["backoffLimit"], 0);
    assert_eq!(by_kind("Job")["spec"]["activeDeadlineSeconds"], 1800);

    assert!(agent
        .dockerfile
        .contains("FROM langgenius/plugin-build-base-python:3.12\n"));
    assert!(agent
        .dockerfile
        .contains("CMD [\"python\", \"-m\", \"main\"]"));
    assert!(agent.dockerfile.contains("python -m compileall"));
    assert!(agent.dockerfile.contains("USER 65532:65532"));
}

/// `plugsync render --repo DIR` with its own package cache, run to completion.
fn render_cmd(dir: &Path, cache: &Path) -> assert_cmd::assert::Assert {
    Command::cargo_bin("plugsync")
        .expect("binary")
        .args(["render", "--repo"])
        .arg(dir)
        .env("PLUGSYNC_CACHE_DIR", cache)
        .assert()
}

fn cli_render(dir: &Path, cache: &Path) -> Vec<u8> {
    render_cmd(dir, cache).success().get_output().stdout.clone()
}

#[test]
fn identical_bytes_across_runs_and_checkout_paths() {
    let a = tempfile::tempdir().expect("a");
    let b = tempfile::tempdir().expect("b");
    let b_nested = b.path().join("some/deeper/checkout");
    copy_dir(Path::new("examples"), a.path());
    copy_dir(Path::new("examples"), &b_nested);
    let cache = tempfile::tempdir().expect("cache");
    let first = cli_render(a.path(), cache.path());
    let second = cli_render(a.path(), cache.path());
    let elsewhere = cli_render(&b_nested, cache.path());
    assert!(!first.is_empty());
    assert_eq!(first, second, "two runs");
    assert_eq!(first, elsewhere, "two checkout paths");

    let out = tempfile::tempdir().expect("out");
    Command::cargo_bin("plugsync")
        .expect("binary")
        .args(["render", "-o", "json", "--repo"])
        .arg(a.path())
        .arg("--out")
        .arg(out.path())
        .env("PLUGSYNC_CACHE_DIR", cache.path())
        .assert()
        .success();
    let context = std::fs::read(
        out.path()
            .join("d62e5e95afbb7da9993d56f58e120ce5/context.tar"),
    )
    .expect("context written");
    let state = render_dir(a.path());
    let agent = state
        .rendered
        .iter()
        .find(|p| p.name == "langgenius/agent")
        .expect("agent");
    assert_eq!(context, agent.context.bytes);
}

#[test]
fn a_template_override_in_the_repository_changes_the_output() {
    let dir = tempfile::tempdir().expect("dir");
    copy_dir(Path::new("examples"), dir.path());
    let base = render_dir(dir.path());
    std::fs::create_dir(dir.path().join("templates")).expect("mkdir");
    let service =
        include_str!("../templates/service.yaml.j2").replace("type: ClusterIP", "type: NodePort");
    std::fs::write(dir.path().join("templates/service.yaml.j2"), service).expect("write");
    let overridden = render_dir(dir.path());
    assert_eq!(
        overridden.templates.overridden().collect::<Vec<_>>(),
        vec!["service.yaml.j2"]
    );
    let types = |s: &DesiredState| -> Vec<String> {
        s.objects()
            .iter()
            .filter(|o| o["kind"] == "Service")
            .map(|o| o["spec"]["type"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    assert_eq!(types(&base), vec!["ClusterIP", "ClusterIP"]);
    assert_eq!(types(&overridden), vec!["NodePort", "NodePort"]);
}

#[test]
fn template_errors_name_the_template_and_line_and_exit_2() {
    let dir = tempfile::tempdir().expect("dir");
    copy_dir(Path::new("examples"), dir.path());
    std::fs::create_dir(dir.path().join("templates")).expect("mkdir");
    std::fs::write(
        dir.path().join("templates/deployment.yaml.j2"),
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {{ plugin.resource_nme }}\n",
    )
    .expect("write");
    let cache = tempfile::tempdir().expect("cache");
    let out = render_cmd(dir.path(), cache.path()).code(2);
    let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(err.contains("template deployment.yaml.j2 line 4"), "{err}");
    assert!(
        out.get_output().stdout.is_empty(),
        "nothing rendered on error"
    );

    // A template that renders the wrong kind of object is refused too.
    std::fs::write(
        dir.path().join("templates/deployment.yaml.j2"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x, namespace: dify}\n",
    )
    .expect("write");
    let out = render_cmd(dir.path(), cache.path()).code(2);
    let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(
        err.contains("kind is `ConfigMap`, must be `Deployment`"),
        "{err}"
    );
}

/// The bundled langgenius/agent declares `resource.memory: 1048576` (1 MiB): render says,
/// once, on one WARN line naming the plugin, that the number is ignored and what the pod gets
/// instead; hello-world's 256 MiB is plausible and raises its request without a warning; and a
/// memory the user sets makes the package's number moot, so no warning then.
#[test]
fn a_package_asking_for_too_little_memory_is_warned_about_once() {
    let dir = tempfile::tempdir().expect("dir");
    copy_dir(Path::new("examples"), dir.path());
    let cache = tempfile::tempdir().expect("cache");
    let out = render_cmd(dir.path(), cache.path()).success();
    let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    let warnings: Vec<&str> = err.lines().filter(|l| l.contains(" WARN ")).collect();
    assert_eq!(warnings.len(), 1, "{err}");
    let warning = warnings[0];
    for expected in [
        "render:",
        "plugin=langgenius/agent@0.0.14",
        "asks for 1Mi of memory",
        "floor 50Mi",
        "a request of 50Mi and a limit of 3000Mi",
    ] {
        assert!(warning.contains(expected), "{expected}: {warning}");
    }
    assert!(
        !warning.contains('\x1b'),
        "no colour when stderr is not a terminal"
    );
    let stdout = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    assert!(stdout.contains("memory: 256Mi"), "hello-world's own number");
    // `package inspect` prints the number the same way, and says it is below the floor.
    let out = Command::cargo_bin("plugsync")
        .expect("binary")
        .args(["package", "inspect"])
        .arg(dir.path().join("packages/langgenius-agent_0.0.14.difypkg"))
        .assert()
        .success();
    let inspect = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    assert!(
        inspect.contains("memory:            1Mi (below the floor"),
        "{inspect}"
    );

    let path = dir.path().join("plugins.yaml");
    let yaml = std::fs::read_to_string(&path).expect("read");
    let with_memory = yaml.replace(
        "  runtime:\n    replicas: 1\n",
        "  runtime:\n    replicas: 1\n    resources:\n      limits: {memory: 1Gi}\n",
    );
    assert_ne!(with_memory, yaml);
    std::fs::write(&path, with_memory).expect("write");
    let out = render_cmd(dir.path(), cache.path()).success();
    let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(!err.contains("WARN"), "{err}");
    let stdout = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    assert!(
        !stdout.contains("3000Mi") && stdout.contains("memory: 1Gi"),
        "{stdout}"
    );
}

#[test]
fn missing_base_image_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("dir");
    copy_dir(Path::new("examples"), dir.path());
    let yaml = std::fs::read_to_string(dir.path().join("plugins.yaml")).expect("read");
    let yaml = yaml.replace(
        "      preCompile: true\n",
        "      preCompile: true\n      baseImages: {\"3.11\": python:3.11-slim}\n",
    );
    std::fs::write(dir.path().join("plugins.yaml"), yaml).expect("write");
    let cache = tempfile::tempdir().expect("cache");
    let out = render_cmd(dir.path(), cache.path()).code(2);
    let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(err.contains("no base image for Python 3.12"), "{err}");
    assert!(err.contains("configured: 3.11"), "{err}");
}

/// Fingerprints key the lean diff's "render once what both revisions share": equal
/// fingerprints must mean byte-identical output, and any input render reads must change
/// them (a changed template above all).
#[test]
fn equal_fingerprints_render_equal_and_inputs_change_them() {
    use plugsync_core::render::{
        plugin_fingerprint, render_set, set_fingerprint, PluginInput, Templates,
    };
    let state = render_dir(Path::new("examples"));
    let settings = RenderSettings::default();
    let set = state.set.spec();
    let no_images = std::collections::BTreeMap::new();
    let inputs = plugsync_core::pipeline::plugin_inputs(&state.resolution, &no_images);
    let fingerprints = |templates: &Templates, settings: &RenderSettings| -> Vec<[u8; 32]> {
        let set_print = set_fingerprint(set, templates, settings, None);
        inputs
            .iter()
            .map(|i| plugin_fingerprint(&set_print, i))
            .collect()
    };
    let base = fingerprints(&state.templates, &settings);
    // Deterministic, and distinct per plugin.
    assert_eq!(base, fingerprints(&state.templates, &settings));
    assert_ne!(base[0], base[1]);
    // What a memo would hand out for an equal fingerprint is what a fresh render gives.
    let fresh = render_set(set, &inputs, &state.templates, &settings).expect("renders");
    assert_eq!(fresh, state.rendered);

    // A changed template, or setting, changes every fingerprint.
    let changed = Templates::with_overrides([(
        "service.yaml.j2".to_string(),
        format!(
            "{}# changed\n",
            state.templates.source("service.yaml.j2").expect("source")
        ),
    )])
    .expect("known template");
    let other_settings = RenderSettings {
        context_base_url: "http://elsewhere:8080".into(),
    };
    for other in [
        fingerprints(&changed, &settings),
        fingerprints(&state.templates, &other_settings),
    ] {
        assert!(base.iter().zip(&other).all(|(a, b)| a != b));
    }
    // So does a plugin's own input: another attempt, a known digest, another runtime,
    // recorded images.
    let set_print = set_fingerprint(set, &state.templates, &settings, None);
    let mut runtime = inputs[0].runtime.clone();
    runtime.replicas = Some(7);
    let images = std::collections::BTreeMap::from([("x".to_string(), "sha256:y".to_string())]);
    for input in [
        PluginInput {
            attempt: 2,
            ..inputs[0]
        },
        PluginInput {
            image_digest: Some("sha256:abc"),
            ..inputs[0]
        },
        PluginInput {
            runtime: &runtime,
            ..inputs[0]
        },
    ] {
        assert_ne!(plugin_fingerprint(&set_print, &input), base[0]);
    }
    assert_ne!(
        set_fingerprint(set, &state.templates, &settings, Some(&images)),
        set_print
    );
}

/// The plugins.yaml in `dir` read and resolved against the package cache at `cache`.
fn resolve_dir(dir: &Path, cache: &Path) -> ResolvedState {
    let resolver = plugsync_testkit::resolver(Cache::open(cache).expect("cache"));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let snapshot = WorkTree::new(dir).expect("worktree");
    rt.block_on(resolved_state(&snapshot, "plugins.yaml", &resolver))
        .expect("resolves")
        .expect("plugins.yaml present")
}

/// `plugsync render` renders to text plugin by plugin (`ResolvedState::render_text`, then
/// `pipeline::emit_text`); its output must be the whole rendered set's, byte for byte, in
/// both formats, with and without files, and so must the CLI's stdout and `--out` files.
fn check_streaming_matches_whole_set(dir: &Path, cache: &Path) {
    let state = resolve_dir(dir, cache);
    let settings = RenderSettings::default();
    let whole = state.clone().render(&settings).expect("renders");
    let objects = whole.objects();
    let yaml = objects_to_yaml(&objects);
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": objects});
    let json = format!("{}\n", serde_json::to_string_pretty(&list).expect("json"));
    assert!(!whole.rendered.is_empty());
    for (format, arg, expected) in [
        (TextFormat::Yaml, "yaml", &yaml),
        (TextFormat::Json, "json", &json),
    ] {
        for files in [false, true] {
            let rendered = state
                .render_text(&settings, format, files)
                .expect("renders to text");
            let mut streamed = String::new();
            emit_text(&rendered, format, |text| streamed.push_str(text));
            assert!(
                streamed == *expected,
                "{arg} (files: {files}) differs from the whole set's"
            );
            // The templates ConfigMap first when templates are overridden (no files: it is
            // printed, not written), then one entry per plugin.
            let (config_map, per_plugin) =
                rendered.split_at(rendered.len().saturating_sub(whole.rendered.len()));
            let templates = whole.templates_object();
            assert_eq!(config_map.len(), usize::from(templates.is_some()));
            if let (Some(text), Some(object)) = (config_map.first(), &templates) {
                assert_eq!(
                    text.resource_name,
                    object["metadata"]["name"].as_str().expect("name")
                );
                assert!(text.files.is_none());
            }
            assert_eq!(per_plugin.len(), whole.rendered.len());
            for (text, plugin) in per_plugin.iter().zip(&whole.rendered) {
                assert_eq!(text.resource_name, plugin.resource_name);
                if files {
                    let (dockerfile, context) = text.files.as_ref().expect("files");
                    assert_eq!(dockerfile, &plugin.dockerfile);
                    assert_eq!(context.bytes, plugin.context.bytes);
                    assert_eq!(
                        text.yaml.as_deref(),
                        Some(objects_to_yaml(&plugin.objects).as_str())
                    );
                } else {
                    assert!(text.files.is_none());
                }
            }
        }

        // The CLI, end to end: stdout, and every file of --out.
        let out = tempfile::tempdir().expect("out");
        let stdout = Command::cargo_bin("plugsync")
            .expect("binary")
            .args(["render", "-o", arg, "--repo"])
            .arg(dir)
            .arg("--out")
            .arg(out.path())
            .env("PLUGSYNC_CACHE_DIR", cache)
            .assert()
            .success()
            .get_output()
            .stdout
            .clone();
        assert!(
            stdout == expected.as_bytes(),
            "plugsync render -o {arg}: stdout differs from the whole set's"
        );
        let written = std::fs::read_dir(out.path()).expect("out").count();
        assert_eq!(written, whole.rendered.len());
        for plugin in &whole.rendered {
            let folder = out.path().join(&plugin.resource_name);
            let read = |name: &str| std::fs::read(folder.join(name)).expect(name);
            assert_eq!(read("Dockerfile"), plugin.dockerfile.as_bytes());
            assert_eq!(read("context.tar"), plugin.context.bytes);
            assert_eq!(
                read("objects.yaml"),
                objects_to_yaml(&plugin.objects).as_bytes()
            );
        }
    }
}

#[test]
fn streamed_render_output_equals_the_whole_set_on_the_example() {
    let cache = tempfile::tempdir().expect("cache");
    check_streaming_matches_whole_set(Path::new("examples"), cache.path());
}

#[test]
fn streamed_render_output_equals_the_whole_set_on_a_synthetic_repo() {
    // More plugins than one rendering thread takes, so the set is split over threads
    // wherever there are several cores.
    let (_dirs, repo, cache) = synthetic_repo(70);
    check_streaming_matches_whole_set(&repo, &cache);
}

/// Objects from user templates print alike in `plugsync render`'s output and in the whole
/// set's: one with a float and a tab escape, one with non-ASCII text.
#[test]
fn streamed_render_output_equals_the_whole_set_outside_the_fast_paths() {
    let (_dirs, repo, cache) = synthetic_repo(40);
    let templates = repo.join("templates");
    std::fs::create_dir_all(&templates).expect("templates/");
    // The built-in template `name` (its text `builtin`) with `from` replaced by `to`.
    let override_template = |name: &str, builtin: &str, from: &str, to: &str| {
        let changed = builtin.replace(from, to);
        assert!(
            changed.contains(to),
            "the override of {name} changed the template"
        );
        std::fs::write(templates.join(name), changed).expect("template override");
    };
    override_template(
        "service.yaml.j2",
        include_str!("../templates/service.yaml.j2"),
        "  annotations: {{ service_annotations | tojson }}\n",
        "  annotations:\n    note: \"tab\\there\"\n    weight: 0.5\n",
    );
    override_template(
        "plugin.yaml.j2",
        include_str!("../templates/plugin.yaml.j2"),
        "  annotations: {{ annotations | tojson }}\n",
        "  annotations:\n    owner: équipe plateforme\n    zh: 插件\n",
    );
    check_streaming_matches_whole_set(&repo, &cache);
}

/// A reader that stops reading (`plugsync render | head`) ends the output; it is not an
/// error and not a crash.
#[test]
fn render_into_a_closed_pipe_exits_quietly() {
    // Far more output than a pipe buffers, so writing meets the closed pipe.
    let (_dirs, repo, cache) = synthetic_repo(60);
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("plugsync"))
        .args(["render", "--repo"])
        .arg(&repo)
        .env("PLUGSYNC_CACHE_DIR", &cache)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starts");
    drop(child.stdout.take());
    let output = child.wait_with_output().expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{:?}: {stderr}", output.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// A synthetic repository of `n` plugins with its packages cached: the folders (kept
/// alive by the caller), the repository, the cache.
fn synthetic_repo(n: usize) -> ([tempfile::TempDir; 2], PathBuf, PathBuf) {
    let dir = tempfile::tempdir().expect("dir");
    let cache_dir = tempfile::tempdir().expect("cache");
    let cache = Cache::open(cache_dir.path()).expect("cache");
    let repo = dir.path().join("repo");
    plugsync_testkit::synth::generate_repo(&repo, n, &cache).expect("generates");
    let cache = cache_dir.path().to_path_buf();
    ([dir, cache_dir], repo, cache)
}

/// Rendering threads take plugins in small batches as they go: results still come back in
/// declaration order, and of several failing plugins the error is the first one's, as a
/// render one plugin after the other would report it.
#[test]
fn a_parallel_render_keeps_declaration_order_and_reports_the_first_failure() {
    let (_dirs, repo, cache) = synthetic_repo(300);
    let settings = RenderSettings::default();

    let state = resolve_dir(&repo, &cache);
    let order = state
        .render_map(&settings, |index, plugin| (index, plugin.name))
        .expect("renders");
    let declared: Vec<(usize, String)> = state
        .resolution
        .plugins
        .iter()
        .enumerate()
        .map(|(i, p)| (i, p.locked.name.clone()))
        .collect();
    assert_eq!(order, declared);

    // Three plugins fail (an undefined variable, in strict mode), declared far apart.
    std::fs::create_dir(repo.join("templates")).expect("mkdir");
    std::fs::write(
        repo.join("templates/service.yaml.j2"),
        format!(
            "{{% if plugin.name in [\"p250\", \"p61\", \"p137\"] %}}{{{{ no_such_variable }}}}{{% endif %}}{}",
            include_str!("../templates/service.yaml.j2")
        ),
    )
    .expect("write");
    let state = resolve_dir(&repo, &cache);
    for _ in 0..5 {
        let err = state
            .render_map(&settings, |_, plugin| plugin.name)
            .expect_err("p61 fails")
            .to_string();
        assert!(err.contains("synth/p61"), "{err}");
        assert!(!err.contains("p137") && !err.contains("p250"), "{err}");
    }
}

/// A rendering thread keeps the template values that follow from a plugin's runtime
/// settings and package memory for the next plugin, when those are the same: each plugin
/// of a set still renders exactly as it renders alone, whether its settings match the
/// plugin's before it or not.
#[test]
fn a_set_renders_each_plugin_as_it_renders_alone() {
    use plugsync_core::render::{render_plugin, render_set};
    let (_dirs, repo, cache) = synthetic_repo(40);
    let settings = RenderSettings::default();
    let state = resolve_dir(&repo, &cache);
    let set = state.set.spec();
    let no_images = std::collections::BTreeMap::new();
    let mut inputs = plugsync_core::pipeline::plugin_inputs(&state.resolution, &no_images);
    // Neighbours with other settings, and with the same settings but another memory.
    assert!(inputs.windows(2).any(|w| w[0].runtime != w[1].runtime));
    assert_eq!(inputs[1].runtime, inputs[2].runtime);
    let mut more_memory = inputs[2].manifest.clone();
    more_memory.memory *= 2;
    inputs[2].manifest = &more_memory;

    let together = render_set(set, &inputs, &state.templates, &settings).expect("renders");
    let env = state.templates.environment().expect("compiles");
    let alone: Vec<_> = inputs
        .iter()
        .map(|input| render_plugin(set, input, &env, &settings).expect("renders"))
        .collect();
    assert_eq!(together, alone);
}

#[test]
fn an_empty_json_list_matches_serde_json() {
    let mut text = String::new();
    plugsync_core::render::json_list(std::iter::empty(), |t| text.push_str(t));
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": []});
    let expected = format!("{}\n", serde_json::to_string_pretty(&list).expect("json"));
    assert_eq!(text, expected);
    // And a plugin without objects adds nothing to a List.
    assert_eq!(plugsync_core::render::objects_to_json_items(&[]), "");
}
