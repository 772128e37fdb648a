//! `plugsync diff`: both revisions rendered straight from git objects, no cluster.

use std::path::{Path, PathBuf};
use std::process::Command as Process;

use assert_cmd::Command;
use serde_json::Value;

#[path = "common/fs.rs"]
mod fs;
use fs::copy_dir;

#[path = "common/cluster.rs"]
mod cluster;
#[path = "common/fault_proxy.rs"]
mod fault_proxy;

#[path = "common/cli_env.rs"]
mod cli_env;

struct GitRepo {
    dir: tempfile::TempDir,
    cache: tempfile::TempDir,
}

impl GitRepo {
    /// A repository whose `main` holds the bundled example (or nothing, when `empty`).
    fn new(with_example: bool) -> GitRepo {
        let repo = GitRepo {
            dir: tempfile::tempdir().expect("tempdir"),
            cache: tempfile::tempdir().expect("cache"),
        };
        repo.git(&["init", "-q", "-b", "main"]);
        if with_example {
            copy_dir(Path::new("examples"), repo.path());
        } else {
            std::fs::write(repo.path().join("README.md"), "before plugsync\n").expect("write");
        }
        repo.commit("base");
        repo
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn file(&self, rel: &str) -> PathBuf {
        self.path().join(rel)
    }

    fn git(&self, args: &[&str]) {
        let status = Process::new("git")
            .args(args)
            .current_dir(self.path())
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.com")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.com")
            .status()
            .expect("git runs");
        assert!(status.success(), "git {args:?}");
    }

    fn commit(&self, message: &str) {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "--allow-empty", "-m", message]);
    }

    fn edit(&self, rel: &str, from: &str, to: &str) {
        let text = std::fs::read_to_string(self.file(rel)).expect("read");
        assert!(text.contains(from), "{rel} lacks {from:?}");
        std::fs::write(self.file(rel), text.replacen(from, to, 1)).expect("write");
    }

    fn plugsync(&self, args: &[&str]) -> std::process::Output {
        Command::cargo_bin("plugsync")
            .expect("binary")
            .args(args)
            .arg("--repo")
            .arg(self.path())
            .env("PLUGSYNC_CACHE_DIR", self.cache.path())
            .output()
            .expect("runs")
    }

    fn lock(&self) {
        let out = self.plugsync(&["lock"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs `diff --base main -o json`, returning the exit code and the report.
    fn diff_json(&self, extra: &[&str]) -> (i32, Value) {
        let mut args = vec!["diff", "--base", "main", "-o", "json"];
        args.extend_from_slice(extra);
        let out = self.plugsync(&args);
        let code = out.status.code().expect("exit code");
        assert!(
            code != 2,
            "diff failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            code,
            serde_json::from_slice(&out.stdout).expect("json report"),
        )
    }
}

fn plugin<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["plugins"]
        .as_array()
        .expect("plugins")
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("{name} not in {report:#}"))
}

fn actions(report: &Value) -> Vec<(String, String)> {
    report["objects"]
        .as_array()
        .expect("objects")
        .iter()
        .map(|o| {
            (
                o["action"].as_str().expect("action").to_string(),
                o["kind"].as_str().expect("kind").to_string(),
            )
        })
        .collect()
}

const HELLO_ID: &str = "78dfba95726c27f3d91ef59eda62e622";
const AGENT_ID: &str = "d62e5e95afbb7da9993d56f58e120ce5";

#[test]
fn no_changes_exits_0() {
    let repo = GitRepo::new(true);
    let (code, report) = repo.diff_json(&[]);
    assert_eq!(code, 0);
    assert_eq!(report["changed"], false);
    assert_eq!(report["lock"]["state"], "up-to-date");
    assert_eq!(plugin(&report, "langgenius/agent")["change"], "unchanged");
}

#[test]
fn base_without_plugins_yaml_shows_everything_added() {
    let repo = GitRepo::new(false);
    copy_dir(Path::new("examples"), repo.path());
    let (code, report) = repo.diff_json(&[]);
    assert_eq!(code, 1);
    assert!(report["base"]
        .as_str()
        .expect("base")
        .contains("no plugins.yaml"));
    assert_eq!(plugin(&report, "langgenius/agent")["change"], "added");
    assert_eq!(plugin(&report, "plugsync/hello-world")["change"], "added");
    let creates = actions(&report)
        .iter()
        .filter(|(a, _)| a == "create")
        .count();
    assert_eq!(creates, 8);
}

#[test]
fn removed_plugin_shows_deletions() {
    let repo = GitRepo::new(true);
    repo.edit(
        "plugins.yaml",
        "    - path: packages/langgenius-agent_0.0.14.difypkg\n",
        "",
    );
    repo.lock();
    let (code, report) = repo.diff_json(&[]);
    assert_eq!(code, 1);
    assert_eq!(plugin(&report, "langgenius/agent")["change"], "removed");
    assert_eq!(
        plugin(&report, "plugsync/hello-world")["change"],
        "unchanged"
    );
    let deleted: Vec<(String, String)> = actions(&report);
    assert_eq!(deleted.len(), 4);
    assert!(deleted.iter().all(|(a, _)| a == "delete"), "{deleted:?}");
    for o in report["objects"].as_array().expect("objects") {
        assert!(o["name"].as_str().expect("name").contains(AGENT_ID));
    }
}

#[test]
fn upgrade_shows_versions_and_replaces_objects_under_a_new_plugin_id() {
    let repo = GitRepo::new(true);
    repo.git(&["checkout", "-q", "-b", "feature"]);
    repo.edit(
        "plugins/hello-world/manifest.yaml",
        "version: 0.1.0",
        "version: 0.2.0",
    );
    repo.lock();
    repo.commit("upgrade hello-world");
    // Compare committed revisions (the working tree is clean anyway).
    let (code, report) = repo.diff_json(&["--head", "feature"]);
    assert_eq!(code, 1);
    let hello = plugin(&report, "plugsync/hello-world");
    assert_eq!(hello["change"], "upgraded");
    assert_eq!(
        (hello["from"].as_str(), hello["to"].as_str()),
        (Some("0.1.0"), Some("0.2.0"))
    );
    let objects = report["objects"].as_array().expect("objects");
    let deletes: Vec<&Value> = objects.iter().filter(|o| o["action"] == "delete").collect();
    let creates: Vec<&Value> = objects.iter().filter(|o| o["action"] == "create").collect();
    assert_eq!((creates.len(), deletes.len()), (4, 4));
    assert!(deletes
        .iter()
        .all(|o| o["name"].as_str().expect("name").contains(HELLO_ID)));
    assert!(creates
        .iter()
        .all(|o| !o["name"].as_str().expect("name").contains(HELLO_ID)));
}

#[test]
fn config_only_change_is_an_update_of_the_deployment() {
    let repo = GitRepo::new(true);
    repo.edit("plugins.yaml", "    replicas: 1\n", "    replicas: 3\n");
    let (code, report) = repo.diff_json(&[]);
    assert_eq!(code, 1);
    assert_eq!(
        report["lock"]["state"], "up-to-date",
        "runtime settings are not locked"
    );
    for name in ["plugsync/hello-world", "langgenius/agent"] {
        assert_eq!(plugin(&report, name)["change"], "reconfigured");
    }
    // Each plugin's Deployment changes, and its Plugin, which carries the runtime settings.
    let objects = report["objects"].as_array().expect("objects");
    let mut kinds: Vec<(&str, &str)> = objects
        .iter()
        .map(|o| {
            (
                o["action"].as_str().unwrap_or_default(),
                o["kind"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        vec![
            ("update", "Deployment"),
            ("update", "Deployment"),
            ("update", "Plugin"),
            ("update", "Plugin")
        ]
    );
    for o in objects {
        let expected = if o["kind"] == "Plugin" {
            "spec.runtime.replicas"
        } else {
            "spec.replicas"
        };
        assert_eq!(o["changedPaths"], serde_json::json!([expected]));
        if o["kind"] == "Deployment" {
            let diff = o["diff"].as_str().expect("diff");
            assert!(
                diff.contains("-  replicas: 1") && diff.contains("+  replicas: 3"),
                "{diff}"
            );
        }
    }
}

#[test]
fn template_override_change_shows_in_the_diff() {
    let repo = GitRepo::new(true);
    std::fs::create_dir(repo.file("templates")).expect("mkdir");
    let service =
        include_str!("../templates/service.yaml.j2").replace("type: ClusterIP", "type: NodePort");
    std::fs::write(repo.file("templates/service.yaml.j2"), service).expect("write");
    let (code, report) = repo.diff_json(&[]);
    assert_eq!(code, 1);
    let objects = report["objects"].as_array().expect("objects");
    let of_kind =
        |kind: &str| -> Vec<&Value> { objects.iter().filter(|o| o["kind"] == kind).collect() };
    // Each Service changes; the templates reach the cluster in a ConfigMap, created, which
    // each Plugin names (`spec.templates`), so the controller renders with them.
    assert_eq!(objects.len(), 5, "{objects:#?}");
    let services = of_kind("Service");
    assert_eq!(services.len(), 2);
    for o in services {
        assert_eq!(o["changedPaths"], serde_json::json!(["spec.type"]));
    }
    let plugins = of_kind("Plugin");
    assert_eq!(plugins.len(), 2);
    for o in plugins {
        assert_eq!(o["changedPaths"], serde_json::json!(["spec.templates"]));
    }
    let config_maps = of_kind("ConfigMap");
    assert_eq!(config_maps.len(), 1);
    assert_eq!(config_maps[0]["action"], "create", "{:#}", config_maps[0]);
    assert!(
        config_maps[0]["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("plugsync-templates-")),
        "{:#}",
        config_maps[0]
    );
}

#[test]
fn added_plugin_in_the_working_tree_without_a_new_lock_warns() {
    let repo = GitRepo::new(true);
    copy_dir(
        &repo.file("plugins/hello-world"),
        &repo.file("plugins/hello-two"),
    );
    repo.edit(
        "plugins/hello-two/manifest.yaml",
        "name: hello-world",
        "name: hello-two",
    );
    repo.edit(
        "plugins.yaml",
        "    - path: packages/",
        "    - path: plugins/hello-two\n    - path: packages/",
    );
    let (code, report) = repo.diff_json(&[]);
    assert_eq!(code, 1);
    assert_eq!(plugin(&report, "plugsync/hello-two")["change"], "added");
    // The stale lock, entry by entry, structured (schema version 1).
    assert_eq!(report["schemaVersion"], 1);
    assert_eq!(report["lock"]["state"], "stale");
    let entry = &report["lock"]["changes"][0];
    assert_eq!(
        (
            &entry["change"],
            &entry["name"],
            &entry["from"],
            &entry["to"]["version"]
        ),
        (
            &Value::from("added"),
            &Value::from("plugsync/hello-two"),
            &Value::Null,
            &Value::from("0.1.0")
        ),
        "{entry:#}"
    );
    assert!(entry["summary"]
        .as_str()
        .expect("summary")
        .contains("+ plugsync/hello-two"));

    let out = repo.plugsync(&["diff", "--base", "main", "-o", "markdown"]);
    assert_eq!(out.status.code(), Some(1));
    let md = String::from_utf8_lossy(&out.stdout);
    assert!(
        md.contains("| + | `plugsync/hello-two` | Added | 0.1.0 | +4 ~0 -0 |"),
        "{md}"
    );
    assert!(
        md.contains("<details><summary><code>plugsync/hello-two</code>"),
        "{md}"
    );
    assert!(md.contains("```diff\n"), "{md}");
    assert!(md.contains("plugins.lock is out of date"), "{md}");

    let out = repo.plugsync(&["diff", "--base", "main"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("+ plugsync/hello-two"), "{text}");
    assert!(
        text.contains("objects: 4 to create, 0 to update, 0 to delete, 8 unchanged"),
        "{text}"
    );
}

#[test]
fn malformed_plugins_yaml_at_head_exits_2_with_a_located_error() {
    let repo = GitRepo::new(true);
    repo.edit(
        "plugins.yaml",
        "    maxAttempts: 3\n",
        "    maxAttempts: three\n",
    );
    let out = repo.plugsync(&["diff", "--base", "main"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("plugins.yaml:14:18: spec.build.maxAttempts: invalid type"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn unknown_base_revision_exits_2() {
    let repo = GitRepo::new(true);
    let out = repo.plugsync(&["diff", "--base", "origin/nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("origin/nope"));
}

#[test]
fn the_diff_reads_git_objects_not_the_checkout() {
    // The base side is read from git even when the working tree has diverged completely.
    let repo = GitRepo::new(true);
    std::fs::remove_dir_all(repo.file("plugins")).expect("rm");
    std::fs::remove_dir_all(repo.file("packages")).expect("rm");
    std::fs::write(
        repo.file("plugins.yaml"),
        "apiVersion: plugsync.dev/v1alpha1\nkind: PluginSet\nmetadata: {name: example, namespace: dify}\nspec:\n  registry: {prefix: registry.local:5000/dify-plugins, insecure: true}\n",
    )
    .expect("write");
    std::fs::remove_file(repo.file("plugins.lock")).expect("rm");
    let (code, report) = repo.diff_json(&[]);
    assert_eq!(code, 1);
    assert_eq!(plugin(&report, "langgenius/agent")["change"], "removed");
    assert_eq!(plugin(&report, "plugsync/hello-world")["change"], "removed");
}

/// `plugsync <args>` in `dir` (its `--repo`), with `cache`, stdout to `stdout`.
fn plugsync_in(dir: &Path, cache: &Path, args: &[&str]) -> std::process::Output {
    Command::cargo_bin("plugsync")
        .expect("binary")
        .args(args)
        .arg("--repo")
        .arg(dir)
        .env("PLUGSYNC_CACHE_DIR", cache)
        .env_remove("NO_COLOR")
        .env_remove("CLICOLOR_FORCE")
        .output()
        .expect("runs")
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The example with hello-world upgraded (0.1.0 → 0.2.0) in the working tree, relocked.
fn upgraded_hello() -> GitRepo {
    let repo = GitRepo::new(true);
    repo.edit(
        "plugins/hello-world/manifest.yaml",
        "version: 0.1.0",
        "version: 0.2.0",
    );
    repo.lock();
    repo
}

#[test]
fn an_upgrade_shows_each_new_object_against_the_old_one_it_replaces() {
    let repo = upgraded_hello();
    let (_, report) = repo.diff_json(&[]);
    let objects = report["objects"].as_array().expect("objects");
    let new_id = objects
        .iter()
        .find(|o| o["action"] == "create" && o["kind"] == "Deployment")
        .and_then(|o| o["name"].as_str())
        .expect("the new Deployment")
        .to_string();
    assert_ne!(new_id, HELLO_ID);
    for o in objects {
        if o["action"] == "create" {
            // Each new object names the old one it replaces, and its diff is against it:
            // a handful of lines (the id, the version, digests), not the whole object.
            let name = o["name"].as_str().expect("name");
            assert_eq!(o["replaces"]["kind"], o["kind"], "{o:#}");
            assert_eq!(
                o["replaces"]["name"].as_str().expect("replaces"),
                name.replace(&new_id, HELLO_ID)
            );
            let diff = o["diff"].as_str().expect("diff");
            assert!(
                diff.starts_with(&format!(
                    "--- base/{} dify/{}\n+++ head/{} dify/{name}\n",
                    o["kind"].as_str().expect("kind"),
                    name.replace(&new_id, HELLO_ID),
                    o["kind"].as_str().expect("kind"),
                )),
                "{diff}"
            );
            assert!(!diff.contains("\n+kind:"), "{diff}");
            assert!(diff.contains(&format!("-  name: {}", name.replace(&new_id, HELLO_ID))));
            assert!(diff.contains(&format!("+  name: {name}")), "{diff}");
            let (added, removed) = (o["linesAdded"].as_u64(), o["linesRemoved"].as_u64());
            assert!(
                added.is_some_and(|n| (1..=16).contains(&n)) && added == removed,
                "{o:#}"
            );
            assert!(o["changedPaths"]
                .as_array()
                .expect("paths")
                .contains(&Value::from("metadata.name")));
        } else {
            assert_eq!(o["action"], "delete");
            // Shown in the diff of the object replacing it.
            assert_eq!(o["diff"], "", "{o:#}");
            assert_eq!(o["replacedBy"]["kind"], o["kind"]);
            assert!(o["replacedBy"]["name"]
                .as_str()
                .expect("replacedBy")
                .contains(&new_id));
        }
    }

    let out = repo.plugsync(&["diff", "--base", "main"]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(
        text.contains(&format!(
            "~ Deployment dify/{new_id} (replaces Deployment dify/{HELLO_ID}): changed:"
        )),
        "{text}"
    );
    assert!(
        text.contains("\n-  version: \"0.1.0\"\n") && text.contains("\n+  version: \"0.2.0\"\n"),
        "the Plugin's version line: {text}"
    );
    // No object appears wholly removed or wholly added.
    for kind in ["Plugin", "Job", "Deployment", "Service"] {
        assert!(!text.contains(&format!("\n+kind: {kind}\n")), "{text}");
        assert!(!text.contains(&format!("\n-kind: {kind}\n")), "{text}");
    }
}

#[test]
fn the_header_names_the_file_in_the_repository_and_the_sides_base_and_head() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = tempfile::tempdir().expect("cache");
    let repo = GitRepo {
        dir,
        cache: tempfile::tempdir().expect("unused"),
    };
    repo.git(&["init", "-q", "-b", "main"]);
    copy_dir(Path::new("examples"), &repo.file("deploy/plugsync"));
    repo.commit("base");
    repo.edit(
        "deploy/plugsync/plugins.yaml",
        "    replicas: 1\n",
        "    replicas: 3\n",
    );
    let sub = repo.file("deploy/plugsync");
    let absolute = repo.path().to_str().expect("utf-8").to_string();
    for format in ["text", "markdown", "json"] {
        let out = plugsync_in(
            &sub,
            cache.path(),
            &["diff", "--base", "main", "-o", format],
        );
        assert_eq!(out.status.code(), Some(1), "{format}");
        let shown = stdout(&out);
        assert!(
            !shown.contains(&absolute),
            "{format} shows the checkout's absolute path: {shown}"
        );
        assert!(
            !shown.contains("live/") && !shown.contains("desired/"),
            "{shown}"
        );
        assert!(
            shown.contains("--- base/Deployment dify/"),
            "{format}: {shown}"
        );
        assert!(
            shown.contains("+++ head/Deployment dify/"),
            "{format}: {shown}"
        );
        match format {
            "text" => {
                let head: Vec<&str> = shown.lines().take(3).collect();
                assert_eq!(
                    head,
                    [
                        "plugsync diff of deploy/plugsync/plugins.yaml",
                        head[1],
                        "head: working tree"
                    ]
                );
                assert!(head[1].starts_with("base: main ("), "{shown}");
            }
            "markdown" => assert!(
                shown.contains("`deploy/plugsync/plugins.yaml`: base `main ("),
                "{shown}"
            ),
            _ => {
                let report: Value = serde_json::from_str(&shown).expect("json");
                assert_eq!(report["file"], "deploy/plugsync/plugins.yaml");
                assert_eq!(report["head"], "working tree");
                assert_eq!(report["compare"], "revisions");
                assert_eq!(report["schemaVersion"], 1);
            }
        }
    }
}

#[test]
fn stat_is_the_summary_with_line_counts_and_no_diffs() {
    let repo = upgraded_hello();
    repo.edit("plugins.yaml", "    replicas: 1\n", "    replicas: 3\n");
    let out = repo.plugsync(&["diff", "--base", "main", "--stat"]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(
        !text.contains("@@") && !text.contains("--- base/"),
        "{text}"
    );
    assert!(
        text.contains(&format!("      ~ Deployment dify/{AGENT_ID}  +1 -1\n")),
        "{text}"
    );
    assert!(
        text.contains(&format!("(replaces Deployment dify/{HELLO_ID})  +")),
        "{text}"
    );
    assert!(
        text.contains("objects: 4 to create, 2 to update, 4 to delete, 2 unchanged; "),
        "{text}"
    );
    let out = repo.plugsync(&["diff", "--base", "main", "--stat", "-o", "markdown"]);
    let md = stdout(&out);
    assert!(
        md.contains("| ~ | `plugsync/hello-world` | Upgraded | 0.1.0 → 0.2.0 |"),
        "{md}"
    );
    assert!(!md.contains("```") && !md.contains("<details>"), "{md}");
    let (_, report) = repo.diff_json(&["--stat"]);
    for o in report["objects"].as_array().expect("objects") {
        assert!(o.get("diff").is_none(), "{o:#}");
        assert!(o["linesAdded"].is_u64(), "{o:#}");
    }
}

#[test]
fn colour_is_for_terminals_or_when_asked() {
    let repo = upgraded_hello();
    let run = |extra: &[&str], env: &[(&str, &str)]| {
        let mut cmd = Command::cargo_bin("plugsync").expect("binary");
        cmd.args(["diff", "--base", "main"])
            .args(extra)
            .arg("--repo")
            .arg(repo.path())
            .env("PLUGSYNC_CACHE_DIR", repo.cache.path())
            .env_remove("NO_COLOR")
            .env_remove("CLICOLOR_FORCE");
        for (k, v) in env {
            cmd.env(k, v);
        }
        stdout(&cmd.output().expect("runs"))
    };
    const ESC: char = '\u{1b}';
    // stdout is a pipe here: no colour unless asked for.
    let plain = run(&[], &[]);
    assert!(!plain.contains(ESC), "{plain}");
    let forced = run(&["--color", "always"], &[]);
    assert!(
        forced.contains(&format!("{ESC}[32m+  version: \"0.2.0\"{ESC}[0m")),
        "{forced}"
    );
    assert!(
        forced.contains(&format!("{ESC}[31m-  version: \"0.1.0\"{ESC}[0m")),
        "{forced}"
    );
    assert!(run(&[], &[("CLICOLOR_FORCE", "1")]).contains(ESC));
    assert!(!run(&["--color", "never"], &[("CLICOLOR_FORCE", "1")]).contains(ESC));
    // Colour never reaches the machine-readable formats.
    for format in ["markdown", "json"] {
        assert!(!run(&["--color", "always", "-o", format], &[]).contains(ESC));
    }
}

#[test]
fn markdown_stays_under_githubs_comment_limit_and_says_where_the_rest_is() {
    const N: usize = 200;
    const LIMIT: usize = 65_536;
    let repo = GitRepo {
        dir: tempfile::tempdir().expect("tempdir"),
        cache: tempfile::tempdir().expect("cache"),
    };
    let cache = plugsync_core::resolve::cache::Cache::open(repo.cache.path()).expect("cache");
    plugsync_testkit::synth::generate_repo(repo.path(), N, &cache).expect("synthetic repo");
    repo.git(&["init", "-q", "-b", "main"]);
    repo.commit("base");
    // A template change touches every plugin's Service.
    std::fs::create_dir(repo.file("templates")).expect("mkdir");
    let service =
        include_str!("../templates/service.yaml.j2").replace("type: ClusterIP", "type: NodePort");
    std::fs::write(repo.file("templates/service.yaml.j2"), service).expect("write");

    let full = repo.plugsync(&[
        "diff",
        "--base",
        "main",
        "-o",
        "markdown",
        "--markdown-limit",
        "0",
    ]);
    assert_eq!(full.status.code(), Some(1));
    let full = stdout(&full);
    // A section per plugin, and one for the templates ConfigMap the change creates.
    assert_eq!(full.matches("<details>").count(), N + 1);
    assert!(
        full.len() > LIMIT,
        "the test needs more than fits: {}",
        full.len()
    );

    let url = "https://github.example/o/r/actions/runs/7";
    let out = repo.plugsync(&[
        "diff",
        "--base",
        "main",
        "-o",
        "markdown",
        "--full-diff-at",
        url,
    ]);
    assert_eq!(out.status.code(), Some(1));
    let md = stdout(&out);
    assert!(md.len() <= LIMIT, "{} bytes", md.len());
    assert!(md.chars().count() <= LIMIT);
    // The summary stays whole.
    assert!(
        md.contains(&format!(
            "**Plugins:** 0 added, 0 upgraded, 0 removed, {N} reconfigured, 0 unchanged"
        )),
        "{md}"
    );
    // Each plugin's Service, and its Plugin, which names the new templates ConfigMap.
    assert!(md.contains(&format!(
        "**Objects:** 1 to create, {} to update, 0 to delete",
        2 * N
    )));
    assert_eq!(
        md.matches("| * | `synth/").count(),
        N,
        "every plugin has its row"
    );
    // Whole plugins are left out, and counted: none is cut in the middle.
    let shown = md.matches("<details>").count();
    assert!(shown > 0 && shown < N, "{shown}");
    assert_eq!(md.matches("</details>").count(), shown);
    assert_eq!(
        md.matches("```diff\n").count(),
        md.matches("\n```\n").count()
    );
    assert!(
        // Sections left out: the plugins' and the templates ConfigMap's ("other objects").
        md.contains(&format!("the object diffs of {} plugins", N + 1 - shown)),
        "{}",
        &md[md.len().saturating_sub(3000)..]
    );
    assert!(md.contains(&format!("> The full diff: {url}\n")), "{md}");
    // What is shown is exactly the start of the full report.
    let cut = md.find("\n> [!NOTE]").expect("note");
    assert!(full.starts_with(&md[..cut]));
}

/// A stdout whose reader is already gone, as `plugsync ... | head` ends up once head has
/// read enough: one end of a connected socket pair whose other end is closed, so the first
/// write fails with `EPIPE` (a pipe would too; `std::io::pipe` is newer than the MSRV).
fn closed_stdout() -> std::process::Stdio {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().expect("socket pair");
    drop(ours);
    std::process::Stdio::from(std::os::fd::OwnedFd::from(theirs))
}

/// Runs `plugsync <args>` in `dir` with [`closed_stdout`].
fn with_closed_stdout(dir: &Path, cache: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(assert_cmd::cargo::cargo_bin("plugsync"))
        .args(args)
        .env("PLUGSYNC_CACHE_DIR", cache)
        .current_dir(dir)
        .stdout(closed_stdout())
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("runs")
}

#[test]
fn no_command_panics_when_its_reader_goes_away() {
    let repo = upgraded_hello();
    let package = std::fs::canonicalize("tests/fixtures/packages/langgenius-agent_0.0.14.difypkg")
        .expect("fixture");
    let package = package.to_str().expect("utf-8");
    for (args, code) in [
        (&["diff", "--base", "main"][..], 1),
        (&["diff", "--base", "main", "-o", "json"][..], 1),
        (
            &["diff", "--base", "main", "-o", "markdown", "--stat"][..],
            1,
        ),
        (&["validate"][..], 0),
        (&["render"][..], 0),
        (&["sources"][..], 0),
        (&["package", "inspect", package][..], 0),
    ] {
        let out = with_closed_stdout(repo.path(), repo.cache.path(), args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        // The exit code is the command's own: `diff` still says that something changes.
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
    }
}

#[test]
fn a_stdout_that_fails_otherwise_is_an_error_not_a_panic() {
    let repo = GitRepo::new(true);
    let out = std::process::Command::new(assert_cmd::cargo::cargo_bin("plugsync"))
        .args(["validate"])
        .current_dir(repo.path())
        .stdout(
            std::fs::File::options()
                .write(true)
                .open("/dev/full")
                .expect("/dev/full"),
        )
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("error: writing to stdout: No space left on device"),
        "{stderr}"
    );
}

// `diff --cluster`: the working tree against the real control plane.

/// `plugsync diff --cluster <args> --repo <the synthetic repository>` of `env`.
async fn cluster_diff(env: &cli_env::Env, args: &[&str]) -> std::process::Output {
    let mut cmd = env.plugsync(&["diff", "--cluster"]);
    cmd.args(args).arg("--repo").arg(env.repo.path());
    cli_env::Env::output(cmd).await
}

async fn apply(env: &cli_env::Env) {
    let mut cmd = env.plugsync(&["apply"]);
    cmd.arg("--repo").arg(env.repo.path());
    let out = cli_env::Env::output(cmd).await;
    assert!(out.status.success(), "{}", cli_env::text(&out.stderr));
}

fn synth_cache(env: &cli_env::Env) -> plugsync_core::resolve::cache::Cache {
    plugsync_core::resolve::cache::Cache::open(env.cache.path()).expect("cache")
}

/// The live Plugin of `synth/p<i>` (first attempt).
async fn live_plugin(env: &cli_env::Env, i: usize) -> Value {
    let name = format!("synth/{}", plugsync_testkit::synth::plugin_name(i));
    env.plugins()
        .await
        .into_iter()
        .find(|p| p["spec"]["name"] == name.as_str())
        .unwrap_or_else(|| panic!("no Plugin of {name}"))
}

#[tokio::test]
async fn diff_cluster_summarizes_per_plugin_and_hides_plugsyncs_bookkeeping() {
    let env = cli_env::Env::new("diff-cluster-summary", 3).await;
    apply(&env).await;
    let out = cluster_diff(&env, &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", cli_env::text(&out.stderr));

    // A runtime change of one plugin: its Plugin changes, and so does the hash plugsync
    // stamps on what it applies; only the former is the reader's business.
    plugsync_testkit::synth::change_one(
        env.repo.path(),
        &synth_cache(&env),
        plugsync_testkit::synth::SynthChange::Reconfigure,
    )
    .expect("reconfigure");
    let out = cluster_diff(&env, &["-o", "json"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", cli_env::text(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["schemaVersion"], 1);
    assert_eq!(report["compare"], "cluster");
    assert_eq!(report["base"], format!("cluster, namespace {}", env.ns));
    assert_eq!(report["file"], "plugins.yaml");
    let objects = report["objects"].as_array().expect("objects");
    // The Plugin, and the PluginSet (it holds plugins.yaml's spec).
    assert_eq!(objects.len(), 2, "{report:#}");
    assert_eq!(objects[1]["kind"], "PluginSet");
    assert_eq!(objects[1]["plugin"], "(the PluginSet)");
    assert_eq!(
        objects[1]["changedPaths"],
        serde_json::json!(["spec.plugins[0].runtime"])
    );
    assert_eq!(objects[0]["kind"], "Plugin");
    assert_eq!(objects[0]["plugin"], "synth/p0");
    assert_eq!(
        objects[0]["changedPaths"],
        serde_json::json!(["spec.runtime.replicas"])
    );
    assert_eq!(report["summary"]["plugins"]["reconfigured"], 1);
    assert_eq!(report["summary"]["plugins"]["unchanged"], 2);
    let diff = objects[0]["diff"].as_str().expect("diff");
    assert!(!diff.contains("applied-hash"), "{diff}");
    assert!(diff.contains("--- live/Plugin ") && diff.contains("+++ desired/Plugin "));
    assert_eq!(plugin(&report, "synth/p0")["change"], "reconfigured");
    assert_eq!(plugin(&report, "synth/p1")["change"], "unchanged");

    let out = cluster_diff(&env, &[]).await;
    let text = cli_env::text(&out.stdout);
    let head: Vec<&str> = text.lines().take(4).collect();
    assert_eq!(
        head,
        [
            "plugsync diff --cluster of plugins.yaml",
            &format!("live: cluster, namespace {}", env.ns),
            "desired: working tree",
            "plugins: 0 added, 0 upgraded, 0 removed, 1 reconfigured, 2 unchanged",
        ],
        "{text}"
    );
    assert!(!text.contains("applied-hash"), "{text}");

    // An upgrade: the new version's Plugin is shown against the old one, which is kept
    // until the new one runs (no controller runs here, so it is held).
    plugsync_testkit::synth::change_one(
        env.repo.path(),
        &synth_cache(&env),
        plugsync_testkit::synth::SynthChange::Upgrade,
    )
    .expect("upgrade");
    let old = live_plugin(&env, 0).await;
    let old_name = cli_env::name(&old).to_string();
    let out = cluster_diff(&env, &["-o", "json"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", cli_env::text(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).expect("json");
    let p0 = plugin(&report, "synth/p0");
    assert_eq!(p0["change"], "upgraded", "{report:#}");
    assert_eq!(
        (p0["from"].as_str(), p0["to"].as_str()),
        (Some("1.0.0"), Some("2.0.0"))
    );
    assert_eq!(report["held"][0]["name"], old_name.as_str(), "{report:#}");
    let created = report["objects"]
        .as_array()
        .expect("objects")
        .iter()
        .find(|o| o["action"] == "create")
        .expect("the new Plugin");
    assert_eq!(
        created["replaces"]["name"],
        old_name.as_str(),
        "{created:#}"
    );
    assert_eq!(created["replacesHeld"], true);
    let diff = created["diff"].as_str().expect("diff");
    assert!(
        diff.starts_with(&format!("--- live/Plugin {}/{old_name}\n", env.ns)),
        "{diff}"
    );
    assert!(
        !diff.contains("\n+kind: Plugin"),
        "a few changed lines, not a whole new object: {diff}"
    );
    assert!(!diff.contains("applied-hash"), "{diff}");
}

#[tokio::test]
async fn diff_cluster_lists_what_a_deletion_cascades_to_and_survives_a_closed_pipe() {
    use kube::api::{DynamicObject, PostParams};
    let env = cli_env::Env::new("diff-cluster-cascade", 2).await;
    apply(&env).await;
    // What the controller makes of a Plugin: a Service and a Deployment it owns (and
    // Kubernetes a ReplicaSet and a Pod of the Deployment), with the set's labels.
    let owner = live_plugin(&env, 0).await;
    let owner_name = cli_env::name(&owner).to_string();
    let labels = serde_json::json!({
        "plugsync.dev/pluginset": cli_env::SET,
        "plugsync.dev/plugin-id": owner["spec"]["pluginId"],
    });
    let owned_by = serde_json::json!([{
        "apiVersion": cli_env::PLUGSYNC, "kind": "Plugin", "name": owner_name,
        "uid": owner["metadata"]["uid"], "controller": true,
    }]);
    let children = [
        serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": format!("svc-{owner_name}"), "labels": labels, "ownerReferences": owned_by},
            "spec": {"selector": labels, "ports": [{"port": 5003}]},
        }),
        serde_json::json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": owner_name, "labels": labels, "ownerReferences": owned_by},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{"name": "plugin", "image": "registry.invalid/p:1"}]},
                },
            },
        }),
    ];
    for child in children {
        let (api_version, kind) = (
            child["apiVersion"].as_str().expect("apiVersion"),
            child["kind"].as_str().expect("kind"),
        );
        let object: DynamicObject = serde_json::from_value(child.clone()).expect("object");
        env.api(api_version, kind)
            .await
            .create(&PostParams::default(), &object)
            .await
            .expect("create");
    }
    cluster::eventually(
        std::time::Duration::from_secs(60),
        "a Pod of the Deployment",
        || async {
            let pods = env.list("v1", "Pod").await;
            (!pods.is_empty()).then_some(())
        },
    )
    .await;
    let replica_set = cli_env::name(&env.list("apps/v1", "ReplicaSet").await[0]).to_string();
    let pod = cli_env::name(&env.list("v1", "Pod").await[0]).to_string();

    // Plugin 0 leaves the set.
    let plugins_path = env.repo.path().join("plugins.yaml");
    let text = std::fs::read_to_string(&plugins_path).expect("read");
    let line = format!(
        "    - url: {}\n",
        plugsync_testkit::synth::package_url(0, 1)
    );
    std::fs::write(&plugins_path, text.replacen(&line, "", 1)).expect("write");
    let mut lock = env.plugsync(&["lock"]);
    lock.arg("--repo").arg(env.repo.path());
    let out = cli_env::Env::output(lock).await;
    assert!(out.status.success(), "{}", cli_env::text(&out.stderr));

    let out = cluster_diff(&env, &["-o", "json"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", cli_env::text(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        plugin(&report, "synth/p0")["change"],
        "removed",
        "{report:#}"
    );
    assert_eq!(
        plugin(&report, "synth/p1")["change"],
        "unchanged",
        "{report:#}"
    );
    let deleted = report["objects"]
        .as_array()
        .expect("objects")
        .iter()
        .find(|o| o["action"] == "delete" && o["kind"] == "Plugin")
        .expect("the Plugin is pruned");
    assert_eq!(deleted["name"], owner_name.as_str());
    let cascade: Vec<String> = deleted["cascade"]
        .as_array()
        .unwrap_or_else(|| panic!("no cascade: {deleted:#}"))
        .iter()
        .map(|k| {
            format!(
                "{} {}",
                k["kind"].as_str().unwrap_or(""),
                k["name"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert_eq!(
        cascade,
        [
            format!("Service svc-{owner_name}"),
            format!("Deployment {owner_name}"),
            format!("Pod {pod}"),
            format!("ReplicaSet {replica_set}"),
        ]
    );
    let out = cluster_diff(&env, &[]).await;
    let text = cli_env::text(&out.stdout);
    assert!(
        text.contains(&format!(
            "deleting it also deletes (owner references): Service {ns}/svc-{owner_name}, Deployment {ns}/{owner_name}, Pod {ns}/{pod}, ReplicaSet {ns}/{replica_set}",
            ns = env.ns
        )),
        "{text}"
    );
    let summary = text
        .lines()
        .position(|l| l.starts_with("plugins: "))
        .expect("summary");
    let first_diff = text
        .lines()
        .position(|l| l.starts_with("--- live/"))
        .expect("a diff");
    assert!(summary < first_diff, "the summary comes first: {text}");

    // `plugsync diff --cluster | head`: the reader leaves early; no panic, same exit code.
    let mut cmd = env.plugsync(&["diff", "--cluster"]);
    cmd.arg("--repo")
        .arg(env.repo.path())
        .stdout(closed_stdout());
    let out = cli_env::Env::output(cmd).await;
    let stderr = cli_env::text(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    // Nothing was deleted by any of this.
    assert!(env
        .get(cli_env::PLUGSYNC, "Plugin", &owner_name)
        .await
        .is_some());
}

/// A repository of `n` synthetic plugins whose packages are committed (`packages`), on
/// `main`, with plugin 0 upgraded in the working tree: new package bytes under the same
/// path, plugins.yaml untouched, plugins.lock re-pinned.
fn committed_synth(n: usize, packages: plugsync_testkit::synth::SynthPackages) -> GitRepo {
    let repo = GitRepo {
        dir: tempfile::tempdir().expect("tempdir"),
        cache: tempfile::tempdir().expect("cache"),
    };
    let cache = plugsync_core::resolve::cache::Cache::open(repo.cache.path()).expect("cache");
    plugsync_testkit::synth::generate_repo_with(repo.path(), n, &cache, packages)
        .expect("synthetic repo");
    repo.git(&["init", "-q", "-b", "main"]);
    repo.commit("base");
    plugsync_testkit::synth::change_one(
        repo.path(),
        &cache,
        plugsync_testkit::synth::SynthChange::Upgrade,
    )
    .expect("upgrade plugin 0");
    repo
}

#[test]
fn one_changed_committed_package_among_many_is_the_one_the_diff_lists() {
    use plugsync_testkit::synth::SynthPackages;
    const N: usize = 40;
    for packages in [SynthPackages::Files, SynthPackages::Dirs] {
        let repo = committed_synth(N, packages);
        // Only the package itself (and its pin) changed: the diff must see it in its bytes.
        let status = Process::new("git")
            .args(["diff", "--quiet", "main", "--", "plugins.yaml"])
            .current_dir(repo.path())
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .status()
            .expect("git runs");
        assert!(status.success(), "{packages:?}: plugins.yaml changed");

        let (code, report) = repo.diff_json(&[]);
        assert_eq!(code, 1, "{packages:?}");
        let changed: Vec<(&str, &str)> = report["plugins"]
            .as_array()
            .expect("plugins")
            .iter()
            .filter(|p| p["change"] != "unchanged")
            .map(|p| {
                (
                    p["name"].as_str().expect("name"),
                    p["change"].as_str().expect("change"),
                )
            })
            .collect();
        assert_eq!(changed, [("synth/p0", "upgraded")], "{packages:?}");
        assert_eq!(plugin(&report, "synth/p0")["from"], "1.0.0");
        assert_eq!(plugin(&report, "synth/p0")["to"], "2.0.0");
        assert_eq!(report["lock"]["state"], "up-to-date", "{packages:?}");
        assert_eq!(
            report["plugins"].as_array().expect("plugins").len(),
            N,
            "{packages:?}"
        );
    }
}

#[test]
fn a_committed_package_replaced_without_relocking_is_caught_against_the_lock() {
    let repo = committed_synth(12, plugsync_testkit::synth::SynthPackages::Files);
    // Plugin 7's package replaced in the working tree, its pin left as it was.
    std::fs::write(
        repo.file("packages/p7.difypkg"),
        plugsync_testkit::synth::package_bytes(7, 2),
    )
    .expect("write");
    let (code, report) = repo.diff_json(&[]);
    assert_eq!(code, 1);
    assert_eq!(plugin(&report, "synth/p7")["change"], "upgraded");
    assert_eq!(plugin(&report, "synth/p1")["change"], "unchanged");
    assert_eq!(report["lock"]["state"], "stale", "{report:#}");
}

/// Committed plugin directories the pull request left alone (the same git tree at base as
/// in the working tree) are not packed again at base: head's package is reused, which the
/// resolver logs per directory. A directory with a file edited has another tree: it is
/// packed at base, and its package at head, no longer the one pinned, is caught against
/// the lock.
#[test]
fn an_edited_committed_directory_is_packed_again_and_the_others_reused() {
    const N: usize = 12;
    let repo = committed_synth(N, plugsync_testkit::synth::SynthPackages::Dirs);
    // Plugin 3's main.py edited in the working tree, its pin left as it was.
    let main = repo.file("plugins/p3/main.py");
    let text = std::fs::read_to_string(&main).expect("read");
    std::fs::write(&main, format!("{text}# edited\n")).expect("write");

    let out = Command::cargo_bin("plugsync")
        .expect("binary")
        .args(["diff", "--base", "main", "-o", "json", "--repo"])
        .arg(repo.path())
        .env("PLUGSYNC_CACHE_DIR", repo.cache.path())
        .env("RUST_LOG", "plugsync_core::resolve=debug")
        .env("NO_COLOR", "1")
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let report: Value = serde_json::from_slice(&out.stdout).expect("json report");
    assert_eq!(report["lock"]["state"], "stale", "{report:#}");
    let changed: Vec<&str> = report["lock"]["changes"]
        .as_array()
        .expect("lock changes")
        .iter()
        .map(|c| c["name"].as_str().expect("name"))
        .collect();
    assert_eq!(changed, ["synth/p3"], "{report:#}");
    assert_ne!(
        plugin(&report, "synth/p3")["change"],
        "unchanged",
        "{report:#}"
    );
    assert_eq!(plugin(&report, "synth/p1")["change"], "unchanged");

    let reused: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("committed package unchanged"))
        .map(|l| {
            l.split_whitespace()
                .find_map(|field| field.strip_prefix("path="))
                .unwrap_or_else(|| panic!("no path in {l}"))
        })
        .collect();
    let mut expected: Vec<String> = (0..N)
        .filter(|i| ![0, 3].contains(i))
        .map(|i| format!("plugins/p{i}"))
        .collect();
    let mut reused: Vec<String> = reused.into_iter().map(str::to_string).collect();
    reused.sort();
    expected.sort();
    assert_eq!(reused, expected, "{stderr}");
}
