//! `plugsync run` against a git server that accepts connections and never answers: each
//! poll fails within `--git-timeout` with an error naming the remote, later polls do not pile
//! up threads behind the stuck one, and SIGTERM stops the process at once instead of waiting
//! for the stuck fetch. The server is a bare TCP listener (fault injection in front of
//! nothing); the binary is the real one, against the real control plane (`tests/cluster`).

#[path = "common/cluster.rs"]
mod cluster;

use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster::cluster;

/// Accepts every connection and keeps it open without a byte: a git server that hangs.
fn silent_server() -> (u16, Arc<Mutex<Vec<TcpStream>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = held.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            keep.lock().expect("lock").push(stream);
        }
    });
    (port, held)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_git_server_fails_each_poll_within_the_timeout_and_sigterm_stops_at_once() {
    let c = cluster().await;
    let ns = c.namespace("git-timeout").await;
    // The shipped CRDs, as `plugsync run` finds them installed.
    c.install_crds().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let kubeconfig = dir.path().join("kubeconfig");
    c.write_kubeconfig(&kubeconfig, &ns);
    let (port, held) = silent_server();
    let url = format!("git://127.0.0.1:{port}/plugins.git");
    let logs = tempfile::NamedTempFile::new().expect("log file");
    let started = Instant::now();
    let mut child = Command::new(assert_cmd::cargo::cargo_bin("plugsync"))
        .args(["run", "--git-url", &url, "--namespace", &ns])
        .args(["--listen", &format!("127.0.0.1:{}", cluster::free_port())])
        .args(["--git-timeout", "2s", "--interval", "1s"])
        .args(["--leader-election", "false"])
        .env("KUBECONFIG", &kubeconfig)
        .env("PLUGSYNC_CACHE_DIR", dir.path().join("cache"))
        .env("RUST_LOG", "plugsync=debug")
        .stdout(Stdio::null())
        .stderr(logs.reopen().expect("log file"))
        .spawn()
        .expect("start plugsync run");
    let log = || std::fs::read_to_string(logs.path()).expect("read the log");

    // The first fetch: connected (the server holds the connection), then given up on.
    let timed_out = format!("fetching {url}: no answer within 2s");
    let busy = "the previous git operation has not returned yet";
    while !(log().contains(&timed_out) && log().contains(busy)) {
        if let Some(status) = child.try_wait().expect("wait") {
            panic!("plugsync run exited ({status}):\n{}", log());
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no timeout error, or no second poll, within 30 s:\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // One connection: the later polls found the repository still busy and did not connect
    // again (no thread piles up behind a hung server).
    assert_eq!(held.lock().expect("lock").len(), 1, "{}", log());

    // SIGTERM while the fetch thread is still stuck on the silent connection.
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    let signalled = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if signalled.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("plugsync run still running 10 s after SIGTERM:\n{}", log());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let stop = signalled.elapsed();
    assert!(status.success(), "{status}:\n{}", log());
    assert!(stop < Duration::from_secs(5), "stopped after {stop:?}");
    eprintln!("stopped {stop:?} after SIGTERM, with the fetch still hanging");
}
