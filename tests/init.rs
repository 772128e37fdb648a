//! `plugsync init`: a minimal plugins.yaml that the next commands accept as it is, that never
//! replaces a file by accident, and whose values are checked as plugins.yaml's are.

use std::path::Path;

use assert_cmd::Command;

fn plugsync(dir: &Path, args: &[&str]) -> assert_cmd::assert::Assert {
    Command::cargo_bin("plugsync")
        .expect("binary")
        .args(args)
        .arg("--repo")
        .arg(dir)
        .env("PLUGSYNC_CACHE_DIR", dir.join(".cache"))
        .assert()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn init_writes_a_set_that_validates_locks_and_renders() {
    let parent = tempfile::tempdir().expect("dir");
    let dir = parent.path().join("Team_A.Plugins");
    let out = plugsync(&dir, &["init"]).success();
    let stdout = text(&out.get_output().stdout);
    assert!(stdout.contains("written (set team-a-plugins)"), "{stdout}");
    assert!(
        stdout.contains("plugsync lock"),
        "says what is next: {stdout}"
    );
    let yaml = std::fs::read_to_string(dir.join("plugins.yaml")).expect("written");
    assert!(yaml.contains("kind: PluginSet"), "{yaml}");
    assert!(
        yaml.contains("  name: team-a-plugins\n"),
        "named after the folder: {yaml}"
    );
    assert!(
        !yaml.contains("\n  namespace:"),
        "no namespace: the command's is taken: {yaml}"
    );

    plugsync(&dir, &["validate"]).success();
    plugsync(&dir, &["lock"]).success();
    assert!(dir.join("plugins.lock").exists());
    plugsync(&dir, &["lock", "--locked"]).success();
    plugsync(&dir, &["render"]).success();
}

#[test]
fn init_never_replaces_a_file_unless_forced() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("plugins.yaml");
    std::fs::write(&path, "# mine\n").expect("write");
    let out = plugsync(dir.path(), &["init"]).code(2);
    let stderr = text(&out.get_output().stderr);
    assert!(
        stderr.contains("already exists") && stderr.contains("--force"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(&path).expect("read"), "# mine\n");

    plugsync(
        dir.path(),
        &[
            "init",
            "--force",
            "--name",
            "team-b",
            "--registry-prefix",
            "reg.example:5000/dify",
        ],
    )
    .success();
    let yaml = std::fs::read_to_string(&path).expect("read");
    assert!(yaml.contains("  name: team-b\n"), "{yaml}");
    assert!(yaml.contains("prefix: reg.example:5000/dify\n"), "{yaml}");
    plugsync(dir.path(), &["validate"]).success();
}

#[test]
fn a_bad_name_is_reported_like_plugins_yaml_errors_and_nothing_is_written() {
    let dir = tempfile::tempdir().expect("dir");
    let out = plugsync(dir.path(), &["init", "--name", "Team B"]).code(2);
    let stderr = text(&out.get_output().stderr);
    assert!(
        stderr.contains("plugins.yaml:") && stderr.contains("metadata.name"),
        "{stderr}"
    );
    assert!(stderr.contains("`Team B` is not a valid name"), "{stderr}");
    assert!(!dir.path().join("plugins.yaml").exists());
}
