//! What people see in the logs while plugsync runs, on the real control plane: the real
//! `plugsync controller` binary, its text log on stderr as a user's terminal would get it
//! (piped here, so without colour), through a failed build, its retry, and the deletion of the
//! Plugin.

use std::process::Stdio;
use std::time::Duration;

use kube::Api;
use plugsync_core::crd::{Plugin, PluginPhase};

#[path = "common/cluster.rs"]
mod cluster;
#[path = "common/fault_proxy.rs"]
mod fault_proxy;

#[path = "common/cli_env.rs"]
mod cli_env;

use cli_env::{text, Env};

const WAIT: Duration = Duration::from_secs(120);

/// The build of attempt 1 fails (the node side's label), attempt 2 follows a second later.
fn first_build_fails(env: &Env) {
    let path = env.repo.path().join("plugins.yaml");
    let yaml = std::fs::read_to_string(&path).expect("read");
    let changed = yaml
        .replace(
            "    labels: {team: synth}\n",
            &format!(
                "    labels: {{team: synth, {}: \"1\"}}\n",
                cluster::labels::FAIL_BUILD_ATTEMPTS
            ),
        )
        .replace(
            "    maxAttempts: 3\n",
            "    maxAttempts: 3\n    backoff: {base: 1s, cap: 1s}\n",
        );
    assert_ne!(changed, yaml);
    std::fs::write(&path, changed).expect("write");
}

fn is_phase(phase: PluginPhase) -> impl Fn(Option<&Plugin>) -> bool {
    move |p: Option<&Plugin>| {
        p.and_then(|p| p.status.as_ref())
            .and_then(|s| s.phase)
            .is_some_and(|ph| ph == phase)
    }
}

#[tokio::test]
async fn a_failed_build_is_one_warn_line_with_its_reason_and_a_deletion_none() {
    let env = Env::new("logs", 1).await;
    first_build_fails(&env);
    // The Secret build pods push with (plugins.yaml's registry.secretName).
    env.c.kubectl_ok(&[
        "create",
        "secret",
        "docker-registry",
        "image-repo-secret",
        "-n",
        &env.ns,
        &format!("--docker-server={}", env.c.registry()),
        "--docker-username=logs",
        "--docker-password=logs",
    ]);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let url = format!("http://127.0.0.1:{port}");

    let mut apply = env.plugsync(&["apply", "--context-url", &url, "--repo"]);
    apply.arg(env.repo.path());
    let out = Env::output(apply).await;
    assert!(out.status.success(), "{}", text(&out.stderr));

    let log = tempfile::NamedTempFile::new().expect("log");
    let mut controller = env.plugsync(&[
        "controller",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--context-url",
        &url,
    ]);
    controller
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .env_remove("PLUGSYNC_LOG_FORMAT")
        .stdout(Stdio::null())
        .stderr(log.reopen().expect("log"));
    let mut controller = controller.spawn().expect("plugsync controller");

    let plugins: Api<Plugin> = Api::namespaced(env.client().await, &env.ns);
    let first = plugins.list(&Default::default()).await.expect("list").items;
    assert_eq!(first.len(), 1);
    let first = first[0].clone();
    let id = first.metadata.name.clone().expect("name");
    let retry = format!("{id}--2");
    let failed = cluster::wait_for(
        &plugins,
        &id,
        WAIT,
        "attempt 1 failed",
        |p: Option<&Plugin>| {
            p.and_then(|p| p.status.as_ref())
                .is_some_and(|s| s.last_failure.is_some())
        },
    )
    .await;
    cluster::wait_for(
        &plugins,
        &retry,
        WAIT,
        "attempt 2 running",
        is_phase(PluginPhase::Running),
    )
    .await;

    // Delete the Plugin git declared: its retry, Job, Deployment and Service go with it, and
    // their deletions queue reconciles of a Plugin no longer in the controller's store.
    env.c
        .kubectl_ok(&["delete", "plugin", &id, "-n", &env.ns, "--wait=true"]);
    cluster::eventually(WAIT, "every Plugin and Deployment gone", || async {
        let objects = env.plugsync_objects().await;
        objects
            .iter()
            .all(|(kind, _)| kind != "Plugin" && kind != "Deployment")
            .then_some(())
    })
    .await;
    // Time for the queued reconciles of the deleted Plugins to run.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _ = controller.kill().await;

    let log = std::fs::read_to_string(log.path()).expect("read log");
    let failure = failed
        .status
        .and_then(|s| s.last_failure)
        .expect("lastFailure");
    let who = format!("plugin={}@{}", first.spec.name, first.spec.version);
    let build_failed: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" WARN controller: build failed"))
        .collect();
    assert_eq!(
        build_failed.len(),
        1,
        "one line for the one failed build:\n{log}"
    );
    let line = build_failed[0];
    for part in [
        who.as_str(),
        "attempt=1",
        &format!("id={id}"),
        &format!("reason={}", failure.reason),
    ] {
        assert!(line.contains(part), "{part} in {line}");
    }
    assert!(
        line.contains(" detail=\"error building image: failed on purpose"),
        "the builder's last words: {line}"
    );
    // Every line about a plugin names it as people know it, with its id beside.
    let retry_created = log
        .lines()
        .find(|l| l.contains("next build attempt created"))
        .unwrap_or_else(|| panic!("the retry is logged:\n{log}"));
    assert!(
        retry_created.contains(&who) && retry_created.contains(&format!("next={retry}")),
        "{retry_created}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains(" applied ") && l.contains(&who) && l.contains("kind=Deployment")),
        "the Deployment applied, by plugin name:\n{log}"
    );
    for false_alarm in ["not found in local store", "reconcile error"] {
        assert!(
            !log.contains(false_alarm),
            "a deleted Plugin is no warning:\n{log}"
        );
    }
    // Text logs for people: a timestamp first, short targets, no colour when piped.
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let time = line.split(' ').next().unwrap_or_default();
        assert!(
            humantime::parse_rfc3339(time).is_ok(),
            "a timestamp first: {line}"
        );
        for crate_path in ["plugsync::", "plugsync_kube::", "plugsync_core::"] {
            assert!(!line.contains(crate_path), "short targets: {line}");
        }
        assert!(!line.contains('\x1b'), "no colour on a pipe: {line:?}");
    }
}
