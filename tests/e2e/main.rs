//! The end-to-end tests: the whole GitOps loop as a user runs it.
//!
//! - [`the_gitops_loop_on_the_real_control_plane`] runs in every `cargo test`: plugsync
//!   installed from `deploy/` into the real control plane of `tests/cluster/up`, the `plugsync
//!   run` binary with the shipped arguments and the shipped ServiceAccount's rights, following a
//!   branch on a real `git daemon`, building into a real registry. See tests/e2e/README.md.
//! - [`kind_end_to_end`] (`tests/e2e/run.sh`) is opt-in, because it needs Docker, kind and
//!   network access and builds real images: `PLUGSYNC_E2E=1 cargo test --test e2e --
//!   --nocapture`. Without it that test says so and passes; the script's syntax is checked on
//!   every run all the same.

use std::path::PathBuf;
use std::process::Command;

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/run.sh")
}

#[test]
fn kind_end_to_end() {
    if std::env::var("PLUGSYNC_E2E").as_deref() != Ok("1") {
        eprintln!(
            "e2e: skipped, it is opt-in: PLUGSYNC_E2E=1 cargo test --test e2e -- --nocapture \
             (needs docker, kind, kubectl; see tests/e2e/README.md)"
        );
        return;
    }
    let status = Command::new("bash")
        .arg(script())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("run bash tests/e2e/run.sh");
    assert!(status.success(), "tests/e2e/run.sh failed: {status}");
}

#[test]
fn script_is_valid_bash() {
    let output = Command::new("bash")
        .arg("-n")
        .arg(script())
        .output()
        .expect("run bash -n");
    assert!(
        output.status.success(),
        "bash -n tests/e2e/run.sh: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The arguments the e2e gives `plugsync run` are the Deployment's, but for the git URL and
/// the interval: the test exercises the shipped configuration.
#[test]
fn script_runs_the_shipped_arguments() {
    let script = std::fs::read_to_string(script()).expect("read run.sh");
    let deployment = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/deployment.yaml"),
    )
    .expect("read deploy/deployment.yaml");
    let flags = |text: &str, prefix: &str| -> Vec<String> {
        text.lines()
            .map(str::trim)
            .filter_map(|l| l.strip_prefix(prefix))
            .filter(|a| a.starts_with("--") || *a == "run")
            .map(|a| a.split('=').next().unwrap_or(a).to_string())
            .collect()
    };
    let shipped = flags(&deployment, "- ");
    let e2e = flags(&script, "- ");
    assert!(!shipped.is_empty() && !e2e.is_empty());
    assert_eq!(
        e2e, shipped,
        "tests/e2e/run.sh runs plugsync with other flags than deploy/deployment.yaml"
    );
}

#[path = "../common/cluster.rs"]
mod cluster;
#[path = "../common/fs.rs"]
mod fs;
#[path = "../common/git_server.rs"]
mod git_server;

mod cluster_loop;
