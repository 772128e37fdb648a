//! `plugsync diff`: both revisions rendered straight from git objects, no cluster.

use std::path::{Path, PathBuf};
use std::process::Command as Process;

use assert_cmd::Command;
use serde_json::Value;

#[path = "common/fs.rs"]
mod fs;
use fs::copy_dir;

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
    assert_eq!(report["lock"], "up-to-date");
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
        report["lock"], "up-to-date",
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
    assert_eq!(objects.len(), 2);
    for o in objects {
        assert_eq!(o["kind"], "Service");
        assert_eq!(o["changedPaths"], serde_json::json!(["spec.type"]));
    }
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
    assert!(report["lock"]["stale"][0]
        .as_str()
        .expect("stale")
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
