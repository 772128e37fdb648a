//! The git loop tells a failed read from a bad commit. A git object read that fails (here: one
//! blob of the commit missing from the loop's clone for one pass, as while a pack is being
//! replaced) is retried at the next poll, and the same commit is then applied; the PluginSet
//! status never calls that commit invalid. The loop runs in-process against the real control
//! plane and a real `git daemon`.
//!
//! Without git these tests skip with a note, unless `PLUGSYNC_REQUIRE_GIT_SERVER_TESTS=1`.

#[path = "common/cluster.rs"]
mod cluster;
#[path = "common/git_server.rs"]
mod git_server;

use std::path::Path;
use std::sync::Arc;

use git_server::{tools_or_skip, GitDaemon, Need, SourceRepo};
use kube::api::Api;
use plugsync_core::crd::PluginSetResource;
use plugsync_core::render::RenderSettings;
use plugsync_core::resolve::cache::Cache;
use plugsync_kube::gitops::status::PassResult;
use plugsync_kube::gitops::{GitOps, LoopConfig, RepoSource};
use plugsync_kube::metrics::{Metrics, ReconcileResult};

fn git(dir: &Path, args: &[&str]) -> String {
    git_server::git(dir, args)
}

/// Moves the clone's packs out and explodes them into loose objects, so one object can be
/// taken away (and put back) on its own; returns the loose file of `oid`.
fn loosen(clone: &Path, oid: &str) -> std::path::PathBuf {
    let packs = clone.join("objects/pack");
    let aside = tempfile::tempdir().expect("aside");
    for entry in std::fs::read_dir(&packs).expect("packs") {
        let path = entry.expect("entry").path();
        let target = aside.path().join(path.file_name().expect("name"));
        std::fs::rename(&path, &target).expect("move the pack out");
    }
    for entry in std::fs::read_dir(aside.path()).expect("aside") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "pack") {
            let pack = std::fs::File::open(&path).expect("pack");
            let status = std::process::Command::new("git")
                .args(["unpack-objects", "-q"])
                .current_dir(clone)
                .env("GIT_DIR", clone)
                .stdin(pack)
                .status()
                .expect("git unpack-objects");
            assert!(status.success());
        }
    }
    let loose = clone.join("objects").join(&oid[..2]).join(&oid[2..]);
    assert!(loose.is_file(), "{} is loose now", loose.display());
    loose
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_git_read_is_retried_and_the_same_commit_applies_at_the_next_poll() {
    if !tools_or_skip("gitops_transient", Need::Daemon) {
        return;
    }
    let c = cluster::cluster().await;
    let ns = c.namespace("gitops-transient").await;
    let client = c.client().await;
    c.install_crds().await;
    let cache_dir = tempfile::tempdir().expect("cache");
    let cache = Cache::open(cache_dir.path()).expect("cache");
    let generated = tempfile::tempdir().expect("generated");
    c.synthetic_repo(generated.path(), 2, &cache, &ns);
    let read = |name: &str| std::fs::read_to_string(generated.path().join(name)).expect("read");
    let (yaml, lock) = (read("plugins.yaml"), read("plugins.lock"));
    let source = SourceRepo::new();
    let daemon = GitDaemon::start(&source.root);
    let first = source.commit(
        &[("plugins.yaml", &yaml), ("plugins.lock", &lock)],
        "plugins",
    );

    let clone = tempfile::tempdir().expect("clone");
    let config = LoopConfig {
        source: RepoSource::Git {
            url: source.url_on(&daemon.base_url),
            branch: "main".into(),
            secret: None,
            work_dir: clone.path().to_path_buf(),
        },
        path: String::new(),
        file: "plugins.yaml".into(),
        namespace: ns.clone(),
        interval: std::time::Duration::from_secs(1),
        git_timeout: std::time::Duration::from_secs(60),
        jitter: 0.0,
        resync: std::time::Duration::from_secs(3600),
        suspend: false,
        install_crds: false,
        commit_lock: None,
    };
    let resolver = plugsync_testkit::resolver(cache.clone());
    let mut gitops = GitOps::new(
        client.clone(),
        config,
        resolver,
        RenderSettings::default(),
        cache.clone(),
        Arc::new(Metrics::new()),
    )
    .expect("git loop");
    let outcome = gitops.pass(true).await;
    assert_eq!(
        outcome,
        ReconcileResult::Applied,
        "{:?}",
        gitops.last_result()
    );
    gitops.refresh_status().await;

    // A config-only commit: its plugins.lock blob is the first commit's, which the clone
    // already has, so the fetch does not bring it again.
    let second = source.commit(
        &[(
            "plugins.yaml",
            &yaml.replace("    replicas: 1\n", "    replicas: 2\n"),
        )],
        "two replicas",
    );
    let lock_blob = git(
        &source.path,
        &["rev-parse", &format!("{second}:plugins.lock")],
    );
    assert_eq!(
        lock_blob,
        git(
            &source.path,
            &["rev-parse", &format!("{first}:plugins.lock")]
        )
    );
    let loose = loosen(clone.path(), &lock_blob);
    let aside = clone.path().join("lock-blob.aside");
    std::fs::rename(&loose, &aside).expect("take the blob away");

    // The poll fetches the new commit, and reading its plugins.lock fails.
    let outcome = gitops.pass(false).await;
    assert_eq!(
        outcome,
        ReconcileResult::Failed,
        "{:?}",
        gitops.last_result()
    );
    match gitops.last_result() {
        PassResult::ApplyFailed { commit, message } => {
            assert_eq!(commit, &second);
            assert!(message.contains(&lock_blob), "names the object: {message}");
        }
        other => panic!("a failed read is not a bad commit: {other:?}"),
    }
    gitops.refresh_status().await;
    let sets: Api<PluginSetResource> = Api::namespaced(client.clone(), &ns);
    let status =
        |set: PluginSetResource| serde_json::to_value(set.status.expect("status")).expect("json");
    let after_fault = status(sets.get("synth").await.expect("set"));
    let text = after_fault.to_string();
    assert!(!text.contains("invalid"), "{after_fault:#}");
    assert!(
        after_fault["errors"]
            .as_array()
            .is_none_or(|e| e.is_empty()),
        "{after_fault:#}"
    );
    assert_eq!(after_fault["lastAppliedCommit"], first.as_str());

    // The object is back: the next poll (the branch unchanged) applies the same commit.
    std::fs::rename(&aside, &loose).expect("put the blob back");
    let outcome = gitops.pass(false).await;
    assert_eq!(
        outcome,
        ReconcileResult::Applied,
        "{:?}",
        gitops.last_result()
    );
    gitops.refresh_status().await;
    let applied = status(sets.get("synth").await.expect("set"));
    assert_eq!(applied["lastAppliedCommit"], second.as_str(), "{applied:#}");
    assert!(!applied.to_string().contains("invalid"), "{applied:#}");
}
