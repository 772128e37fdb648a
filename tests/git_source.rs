//! The git source stage against real repositories built with the `git` CLI.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use plugsync_core::source::{
    discover_repo_root, EntryKind, GitRevision, Snapshot, SnapshotError, WorkTree,
};
use tempfile::TempDir;

/// Runs `git` in `dir` isolated from the developer's configuration; returns stdout.
fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_string()
}

fn write(root: &Path, rel: &str, contents: &str) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    fs::write(path, contents).expect("write");
}

fn commit_all(dir: &Path, msg: &str) -> String {
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-qm", msg]);
    git(dir, &["rev-parse", "HEAD"])
}

/// A repository with two commits on `main`:
/// 1. `plugins.yaml` = "v1", tagged `v1` (annotated);
/// 2. `plugins.yaml` = "v2", plus `deploy/dify/...` and a plugin folder.
fn repo() -> TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    git(root, &["init", "-q", "-b", "main"]);
    write(root, "plugins.yaml", "v1");
    commit_all(root, "one");
    git(root, &["tag", "-a", "v1", "-m", "first"]);
    write(root, "plugins.yaml", "v2");
    write(root, "deploy/dify/plugins.yaml", "nested");
    write(
        root,
        "deploy/dify/plugins/agent/manifest.yaml",
        "name: agent",
    );
    write(root, "deploy/dify/plugins/agent/main.py", "print(1)");
    write(root, "deploy/dify/plugins/agent/_assets/icon.svg", "<svg/>");
    write(root, "deploy/dify/plugins/agent/provider/a.yaml", "a: 1");
    commit_all(root, "two");
    dir
}

fn read_str(snap: &dyn Snapshot, rel: &str) -> Option<String> {
    snap.read(rel)
        .expect("read")
        .map(|b| String::from_utf8(b).expect("utf-8"))
}

/// Every file under `dir`, relative path → contents.
fn tree_of(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for entry in fs::read_dir(dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                walk(base, &path, out);
            } else {
                let rel = path.strip_prefix(base).expect("prefix");
                out.insert(
                    rel.to_string_lossy().replace('\\', "/"),
                    fs::read(&path).expect("read"),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

#[test]
fn reads_a_file_at_head_and_reports_the_commit() {
    let dir = repo();
    let head = git(dir.path(), &["rev-parse", "HEAD"]);
    let rev = GitRevision::open(dir.path(), "HEAD", None).expect("open");
    assert_eq!(read_str(&rev, "plugins.yaml").as_deref(), Some("v2"));
    assert_eq!(rev.commit_id(), head);
    assert_eq!(rev.revision().as_deref(), Some(head.as_str()));
    assert_eq!(rev.describe(), format!("HEAD ({})", &head[..8]));
}

#[test]
fn reads_a_file_at_an_older_commit() {
    let dir = repo();
    let rev = GitRevision::open(dir.path(), "HEAD~1", None).expect("open");
    assert_eq!(read_str(&rev, "plugins.yaml").as_deref(), Some("v1"));
    assert_eq!(rev.kind("deploy").expect("kind"), EntryKind::Missing);
    assert_eq!(rev.commit_id(), git(dir.path(), &["rev-parse", "HEAD~1"]));
}

#[test]
fn reads_a_file_at_a_branch_and_an_annotated_tag() {
    let dir = repo();
    git(dir.path(), &["branch", "old", "HEAD~1"]);
    let branch = GitRevision::open(dir.path(), "old", None).expect("branch");
    let tag = GitRevision::open(dir.path(), "v1", None).expect("tag");
    let main = GitRevision::open(dir.path(), "main", None).expect("main");
    assert_eq!(read_str(&branch, "plugins.yaml").as_deref(), Some("v1"));
    assert_eq!(read_str(&tag, "plugins.yaml").as_deref(), Some("v1"));
    assert_eq!(read_str(&main, "plugins.yaml").as_deref(), Some("v2"));
    // The tag is peeled to the commit, not the tag object.
    assert_eq!(
        tag.commit_id(),
        git(dir.path(), &["rev-parse", "v1^{commit}"])
    );
    assert_ne!(tag.commit_id(), git(dir.path(), &["rev-parse", "v1"]));
}

#[test]
fn reads_a_remote_tracking_branch_of_a_clone() {
    let upstream = repo();
    let clone = tempfile::tempdir().expect("tempdir");
    git(
        clone.path(),
        &["clone", "-q", &upstream.path().to_string_lossy(), "c"],
    );
    let clone_dir = clone.path().join("c");
    write(&clone_dir, "plugins.yaml", "local edit");
    commit_all(&clone_dir, "local");
    let remote = GitRevision::open(&clone_dir, "origin/main", None).expect("origin/main");
    assert_eq!(read_str(&remote, "plugins.yaml").as_deref(), Some("v2"));
    assert!(
        remote.describe().starts_with("origin/main ("),
        "{}",
        remote.describe()
    );
}

#[test]
fn uncommitted_file_is_in_the_worktree_only() {
    let dir = repo();
    write(dir.path(), "new.yaml", "draft");
    write(dir.path(), "plugins.yaml", "edited");
    let wt = WorkTree::new(dir.path()).expect("worktree");
    let rev = GitRevision::open(dir.path(), "HEAD", None).expect("open");
    assert_eq!(read_str(&wt, "new.yaml").as_deref(), Some("draft"));
    assert_eq!(read_str(&rev, "new.yaml"), None);
    assert_eq!(read_str(&wt, "plugins.yaml").as_deref(), Some("edited"));
    assert_eq!(read_str(&rev, "plugins.yaml").as_deref(), Some("v2"));
    assert_eq!(wt.revision(), None);
    let canonical = fs::canonicalize(dir.path()).expect("canonical");
    assert_eq!(
        wt.describe(),
        format!("working tree {}", canonical.display())
    );
}

#[test]
fn reading_a_revision_leaves_the_working_tree_alone() {
    let dir = repo();
    write(dir.path(), "plugins.yaml", "edited");
    let rev = GitRevision::open(dir.path(), "HEAD~1", None).expect("open");
    let out = tempfile::tempdir().expect("tempdir");
    rev.materialize("", out.path()).expect("materialize");
    assert_eq!(
        fs::read_to_string(dir.path().join("plugins.yaml")).expect("read"),
        "edited"
    );
    assert_eq!(
        git(dir.path(), &["status", "--porcelain"]),
        "M plugins.yaml"
    );
}

#[test]
fn missing_file_is_none_in_both() {
    let dir = repo();
    let rev = GitRevision::open(dir.path(), "HEAD", None).expect("open");
    let wt = WorkTree::new(dir.path()).expect("worktree");
    for snap in [&rev as &dyn Snapshot, &wt] {
        assert_eq!(
            snap.read("nope.yaml").expect("read"),
            None,
            "{}",
            snap.describe()
        );
        assert_eq!(snap.read("deploy/nope/x").expect("read"), None);
        assert_eq!(snap.kind("nope.yaml").expect("kind"), EntryKind::Missing);
        assert!(snap.list("nope").expect("list").is_empty());
        let err = snap
            .materialize(
                "nope",
                &tempfile::tempdir().expect("tempdir").path().join("d"),
            )
            .expect_err("missing dir");
        assert!(
            matches!(&err, SnapshotError::NotFound { path, .. } if path == "nope"),
            "{err}"
        );
    }
}

#[test]
fn reading_a_directory_is_an_error_in_both() {
    let dir = repo();
    let rev = GitRevision::open(dir.path(), "HEAD", None).expect("open");
    let wt = WorkTree::new(dir.path()).expect("worktree");
    for snap in [&rev as &dyn Snapshot, &wt] {
        let err = snap.read("deploy").expect_err("directory");
        assert!(
            matches!(&err, SnapshotError::WrongKind { path, expected: "file", .. } if path == "deploy"),
            "{err}"
        );
        assert_eq!(snap.kind("deploy").expect("kind"), EntryKind::Dir);
        assert_eq!(snap.kind("plugins.yaml").expect("kind"), EntryKind::File);
    }
}

#[test]
fn missing_revision_error_names_it() {
    let dir = repo();
    let err = GitRevision::open(dir.path(), "origin/nope", None).expect_err("no such rev");
    assert!(matches!(err, SnapshotError::Git { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("origin/nope"), "{msg}");
    assert!(msg.contains("not found"), "{msg}");
}

#[test]
fn not_a_repository_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = GitRevision::open(dir.path(), "HEAD", None).expect_err("no repo");
    assert!(
        err.to_string().contains(&*dir.path().to_string_lossy()),
        "{err}"
    );
}

#[test]
fn subdir_selects_the_folder_holding_plugins_yaml() {
    let dir = repo();
    let rev = GitRevision::open(dir.path(), "main", Some("deploy/dify")).expect("open");
    assert_eq!(read_str(&rev, "plugins.yaml").as_deref(), Some("nested"));
    assert_eq!(
        read_str(&rev, "plugins/agent/main.py").as_deref(),
        Some("print(1)")
    );
    assert!(rev.describe().contains("deploy/dify"), "{}", rev.describe());
    // The root of the repository is out of reach from inside the subdir.
    let err = rev.read("../../plugins.yaml").expect_err("escape");
    assert!(matches!(err, SnapshotError::InvalidPath { .. }), "{err}");
}

#[test]
fn missing_subdir_error_names_revision_and_subdir() {
    let dir = repo();
    let err = GitRevision::open(dir.path(), "HEAD~1", Some("deploy/dify")).expect_err("missing");
    assert!(
        matches!(&err, SnapshotError::NotFound { path, .. } if path == "deploy/dify"),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("HEAD~1") && msg.contains("deploy/dify"),
        "{msg}"
    );
    let err = GitRevision::open(dir.path(), "HEAD", Some("plugins.yaml")).expect_err("file");
    assert!(matches!(err, SnapshotError::WrongKind { .. }), "{err}");
}

#[test]
fn list_is_sorted_and_hides_dot_git_in_both() {
    let dir = repo();
    write(dir.path(), "Zeta.yaml", "z");
    write(dir.path(), "alpha.yaml", "a");
    commit_all(dir.path(), "three");
    let rev = GitRevision::open(dir.path(), "HEAD", None).expect("open");
    let wt = WorkTree::new(dir.path()).expect("worktree");
    let expected = ["Zeta.yaml", "alpha.yaml", "deploy", "plugins.yaml"];
    assert_eq!(rev.list("").expect("list"), expected);
    assert_eq!(wt.list("").expect("list"), expected);
    // Git orders the tree `plugins` like `plugins/` (last here); snapshots sort bytewise.
    write(dir.path(), "deploy/dify/plugins.d", "x");
    write(dir.path(), "deploy/dify/plugins-x", "x");
    commit_all(dir.path(), "four");
    let rev = GitRevision::open(dir.path(), "HEAD", None).expect("open");
    let nested = ["plugins", "plugins-x", "plugins.d", "plugins.yaml"];
    assert_eq!(rev.list("deploy/dify").expect("list"), nested);
    assert_eq!(wt.list("deploy/dify").expect("list"), nested);
}

#[test]
fn materialize_is_identical_for_revision_and_worktree() {
    let dir = repo();
    let rev = GitRevision::open(dir.path(), "HEAD", Some("deploy/dify")).expect("open");
    let wt = WorkTree::new(&dir.path().join("deploy/dify")).expect("worktree");
    let (a, b) = (
        tempfile::tempdir().expect("a"),
        tempfile::tempdir().expect("b"),
    );
    rev.materialize("plugins/agent", a.path()).expect("git");
    wt.materialize("plugins/agent", b.path()).expect("worktree");
    let from_git = tree_of(a.path());
    assert_eq!(
        from_git.keys().collect::<Vec<_>>(),
        [
            "_assets/icon.svg",
            "main.py",
            "manifest.yaml",
            "provider/a.yaml"
        ]
    );
    assert_eq!(from_git["provider/a.yaml"], b"a: 1");
    assert_eq!(from_git, tree_of(b.path()));
}

#[cfg(unix)]
#[test]
fn materialize_writes_plain_0644_files() {
    use std::os::unix::fs::PermissionsExt;
    let dir = repo();
    let script = dir.path().join("deploy/dify/plugins/agent/main.py");
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).expect("chmod");
    commit_all(dir.path(), "exec");
    let rev = GitRevision::open(dir.path(), "HEAD", None).expect("open");
    let wt = WorkTree::new(dir.path()).expect("worktree");
    for snap in [&rev as &dyn Snapshot, &wt] {
        let out = tempfile::tempdir().expect("tempdir");
        // A stale executable file in `dest` is overwritten and made plain too.
        write(out.path(), "main.py", "stale");
        fs::set_permissions(
            out.path().join("main.py"),
            fs::Permissions::from_mode(0o755),
        )
        .expect("chmod");
        snap.materialize("deploy/dify/plugins/agent", out.path())
            .expect("materialize");
        let mode = fs::metadata(out.path().join("main.py"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644, "{}", snap.describe());
    }
}

#[cfg(unix)]
#[test]
fn symlinks_are_reported_and_refused_in_both() {
    let dir = repo();
    let agent = dir.path().join("deploy/dify/plugins/agent");
    std::os::unix::fs::symlink("/etc/passwd", agent.join("passwd")).expect("symlink");
    std::os::unix::fs::symlink("/etc", dir.path().join("etc")).expect("symlink");
    commit_all(dir.path(), "links");
    let rev = GitRevision::open(dir.path(), "HEAD", None).expect("open");
    let wt = WorkTree::new(dir.path()).expect("worktree");
    let link = "deploy/dify/plugins/agent/passwd";
    for snap in [&rev as &dyn Snapshot, &wt] {
        let who = snap.describe();
        assert_eq!(snap.kind(link).expect("kind"), EntryKind::Symlink, "{who}");
        assert_eq!(snap.kind("etc").expect("kind"), EntryKind::Symlink, "{who}");
        let err = snap.read(link).expect_err("symlink");
        assert!(
            matches!(&err, SnapshotError::Symlink { path, .. } if path == link),
            "{who}: {err}"
        );
        let err = snap.read("etc/passwd").expect_err("through a symlink");
        assert!(
            matches!(&err, SnapshotError::Symlink { path, .. } if path == "etc"),
            "{who}: {err}"
        );
        let out = tempfile::tempdir().expect("tempdir");
        let dest = out.path().join("agent");
        let err = snap
            .materialize("deploy/dify/plugins/agent", &dest)
            .expect_err("symlink");
        assert!(
            matches!(&err, SnapshotError::Symlink { path, .. } if path == link),
            "{who}: {err}"
        );
        assert!(!dest.exists(), "{who}: nothing written");
        assert!(err.to_string().contains(&who), "{err}");
        // Packing in place checks the directory as materializing does.
        match snap.on_disk("deploy/dify/plugins/agent") {
            Ok(None) => assert!(
                snap.revision().is_some(),
                "{who}: only a revision is not on disk"
            ),
            Ok(Some(path)) => panic!(
                "{who}: a directory holding a symlink is on disk at {}",
                path.display()
            ),
            Err(err) => assert!(
                matches!(&err, SnapshotError::Symlink { path, .. } if path == link),
                "{who}: {err}"
            ),
        }
    }
    assert_eq!(
        wt.on_disk("deploy/dify/plugins")
            .expect_err("a symlink below")
            .to_string(),
        wt.materialize(
            "deploy/dify/plugins",
            &tempfile::tempdir().expect("tmp").path().join("x")
        )
        .expect_err("a symlink below")
        .to_string(),
        "the same refusal, in the same words"
    );
}

#[test]
fn path_traversal_is_refused_in_both() {
    let dir = repo();
    let rev = GitRevision::open(dir.path(), "HEAD", Some("deploy")).expect("open");
    let wt = WorkTree::new(&dir.path().join("deploy")).expect("worktree");
    let out = tempfile::tempdir().expect("tempdir");
    for snap in [&rev as &dyn Snapshot, &wt] {
        for bad in [
            "../plugins.yaml",
            "/etc/passwd",
            "dify/../../plugins.yaml",
            "dify\\plugins.yaml",
            "a\0b",
        ] {
            let who = format!("{} {bad:?}", snap.describe());
            let invalid = |r: Result<(), SnapshotError>| match r {
                Err(SnapshotError::InvalidPath { path, .. }) => assert_eq!(path, bad, "{who}"),
                other => panic!("{who}: {other:?}"),
            };
            invalid(snap.read(bad).map(drop));
            invalid(snap.kind(bad).map(drop));
            invalid(snap.list(bad).map(drop));
            invalid(snap.materialize(bad, out.path()));
        }
    }
    let err = GitRevision::open(dir.path(), "HEAD", Some("../x")).expect_err("subdir");
    assert!(matches!(err, SnapshotError::InvalidPath { .. }), "{err}");
}

#[test]
fn merge_base_matches_git_merge_base() {
    let dir = repo();
    let fork = git(dir.path(), &["rev-parse", "HEAD"]);
    git(dir.path(), &["checkout", "-q", "-b", "feature"]);
    write(dir.path(), "feature.yaml", "f");
    commit_all(dir.path(), "feature");
    git(dir.path(), &["checkout", "-q", "main"]);
    write(dir.path(), "main.yaml", "m");
    commit_all(dir.path(), "main moves on");
    let expected = git(dir.path(), &["merge-base", "main", "feature"]);
    assert_eq!(expected, fork);
    assert_eq!(
        GitRevision::merge_base(dir.path(), "main", "feature").expect("merge base"),
        expected
    );
    let err = GitRevision::merge_base(dir.path(), "main", "nope").expect_err("missing");
    assert!(err.to_string().contains("'nope'"), "{err}");
}

#[test]
fn discover_repo_root_from_a_nested_folder() {
    let dir = repo();
    let root = fs::canonicalize(dir.path()).expect("canonical");
    let (found, subdir) = discover_repo_root(&dir.path().join("deploy/dify")).expect("discover");
    assert_eq!(found, root);
    assert_eq!(subdir.as_deref(), Some("deploy/dify"));
    let (found, subdir) = discover_repo_root(dir.path()).expect("discover");
    assert_eq!((found, subdir), (root, None));
    // The pair feeds straight into GitRevision::open.
    let (root, subdir) = discover_repo_root(&dir.path().join("deploy/dify")).expect("discover");
    let rev = GitRevision::open(&root, "HEAD", subdir.as_deref()).expect("open");
    assert_eq!(read_str(&rev, "plugins.yaml").as_deref(), Some("nested"));
}

#[test]
fn discover_outside_a_repository_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plain: PathBuf = dir.path().join("plain");
    fs::create_dir(&plain).expect("mkdir");
    // Unless the temp dir itself sits inside a checkout, there is nothing to find.
    if Command::new("git")
        .args(["rev-parse", "--show-toplevel"])
        .current_dir(&plain)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
    {
        return;
    }
    let err = discover_repo_root(&plain).expect_err("no repo");
    assert!(matches!(err, SnapshotError::Git { .. }), "{err}");
}

#[test]
fn submodule_is_refused_in_both() {
    let dir = repo();
    let sub = git(dir.path(), &["rev-parse", "HEAD~1"]);
    let gitlink = format!("160000,{sub},deploy/dify/plugins/agent/vendor");
    git(
        dir.path(),
        &["update-index", "--add", "--cacheinfo", &gitlink],
    );
    git(dir.path(), &["commit", "-qm", "submodule"]);
    // What a checked-out submodule looks like on disk.
    write(
        dir.path(),
        "deploy/dify/plugins/agent/vendor/.git",
        "gitdir: ../x",
    );
    let rev = GitRevision::open(dir.path(), "HEAD", None).expect("open");
    let wt = WorkTree::new(dir.path()).expect("worktree");
    let vendor = "deploy/dify/plugins/agent/vendor";
    for snap in [&rev as &dyn Snapshot, &wt] {
        let who = snap.describe();
        let err = snap.read(vendor).expect_err("submodule");
        assert!(
            matches!(&err, SnapshotError::Submodule { path, .. } if path == vendor),
            "{who}: {err}"
        );
        let out = tempfile::tempdir().expect("tempdir");
        let err = snap
            .materialize("deploy/dify/plugins/agent", out.path())
            .expect_err("submodule");
        assert!(
            matches!(err, SnapshotError::Submodule { .. }),
            "{who}: {err}"
        );
    }
}

#[test]
fn snapshots_are_shared_across_threads() {
    let dir = repo();
    let rev: Arc<dyn Snapshot> =
        Arc::new(GitRevision::open(dir.path(), "HEAD", None).expect("open"));
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let rev = Arc::clone(&rev);
            std::thread::spawn(move || rev.read("plugins.yaml").expect("read"))
        })
        .collect();
    for handle in handles {
        assert_eq!(handle.join().expect("thread").as_deref(), Some(&b"v2"[..]));
    }
}

/// A working tree's plugin directory is packed where it is: `on_disk` names it there, and
/// a git revision (nothing on disk) names none, so it is materialized.
#[test]
fn a_working_tree_directory_is_on_disk_and_a_revision_is_not() {
    let dir = repo();
    let wt = WorkTree::new(dir.path()).expect("worktree");
    let rev = GitRevision::open(dir.path(), "HEAD", None).expect("open");
    let agent = "deploy/dify/plugins/agent";
    assert_eq!(
        wt.on_disk(agent).expect("clean"),
        Some(wt.root().join(agent))
    );
    assert_eq!(rev.on_disk(agent).expect("clean"), None);
}
