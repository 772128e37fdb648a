//! `plugsync run` and `plugsync controller` stop the same way, on the real control plane:
//! SIGTERM (what the kubelet sends) or Ctrl-C, then the work in flight finishes and the
//! process exits 0. (`run`'s SIGTERM mid-apply is in tests/run.rs.)

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

#[path = "common/cluster.rs"]
mod cluster;
#[path = "common/fault_proxy.rs"]
mod fault_proxy;

#[path = "common/cli_env.rs"]
mod cli_env;

use cli_env::{text, Env};

/// Starts `plugsync controller`, waits for it to run, sends `signal`, and returns its exit
/// status and what it logged.
async fn controller_after(env: &Env, signal: &str) -> (std::process::ExitStatus, String) {
    let port = cluster::free_port();
    let mut cmd = env.plugsync(&["controller", "-n", &env.ns]);
    cmd.args(["--listen", &format!("127.0.0.1:{port}")])
        .env("PLUGSYNC_CACHE_DIR", env.cache.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("plugsync controller");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let mut log = String::new();
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.expect("read") {
            log.push_str(&line);
            log.push('\n');
            if line.contains("controller running") {
                return;
            }
        }
        panic!("plugsync controller ended without starting:\n{log}");
    })
    .await
    .expect("the controller starts");
    let pid = child.id().expect("running").to_string();
    let sent = std::process::Command::new("kill")
        .args([signal, &pid])
        .status()
        .expect("kill");
    assert!(sent.success());
    let status = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.expect("read") {
            log.push_str(&line);
            log.push('\n');
        }
        child.wait().await.expect("wait")
    })
    .await
    .unwrap_or_else(|_| panic!("plugsync controller did not stop on {signal}:\n{log}"));
    (status, log)
}

#[tokio::test]
async fn the_controller_stops_on_sigterm_as_on_ctrl_c() {
    let env = Env::new("shutdown", 1).await;
    for signal in ["-TERM", "-INT"] {
        let (status, log) = controller_after(&env, signal).await;
        assert!(
            status.success(),
            "{signal}: {status}\n{}",
            text(log.as_bytes())
        );
        let said = if signal == "-TERM" {
            "SIGTERM: finishing the work in flight"
        } else {
            "interrupted: finishing the work in flight"
        };
        assert!(log.contains(said), "{signal}:\n{log}");
    }
}
