//! Real git servers on loopback for `plugsync_core::source::remote`: `git daemon` (git://),
//! `git http-backend` behind a small CGI bridge that demands Basic auth and counts requests
//! (https semantics over plain http), and OpenSSH's `sshd` with its own host key.
//!
//! Tests call [`tools_or_skip`] first: without the tools (install them with
//! `.ci/install-test-deps`) they print a SKIPPED note and return, unless
//! `PLUGSYNC_REQUIRE_GIT_SERVER_TESTS=1`, which turns the skip into a failure so CI cannot
//! pass silently without them. Every server is a child process (or thread) killed on drop.
#![allow(dead_code)] // not every test uses every helper

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use base64::Engine as _;
use tempfile::TempDir;

/// Set to `1` to fail, rather than skip, when git or sshd is missing.
pub const REQUIRE_ENV: &str = "PLUGSYNC_REQUIRE_GIT_SERVER_TESTS";

/// What a server test needs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// `git daemon` (and git itself).
    Daemon,
    /// `git http-backend`.
    HttpBackend,
    /// `sshd` and `ssh-keygen`, plus git.
    Sshd,
}

/// `program` on `PATH`, if any.
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// The sshd binary: on `PATH` or Debian's `/usr/sbin/sshd`.
pub fn sshd_path() -> Option<PathBuf> {
    which("sshd").or_else(|| {
        let p = PathBuf::from("/usr/sbin/sshd");
        p.is_file().then_some(p)
    })
}

/// A helper program of git (`git-daemon`, `git-http-backend`), from its exec path.
fn git_helper(program: &str) -> Option<PathBuf> {
    let out = Command::new("git").arg("--exec-path").output().ok()?;
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let path = Path::new(&dir).join(program);
    path.is_file().then_some(path)
}

fn git_exec_path_has(program: &str) -> bool {
    git_helper(program).is_some()
}

/// `true` when what `need` lists is installed; otherwise prints why `test` is skipped (or
/// panics, see the module docs).
pub fn tools_or_skip(test: &str, need: Need) -> bool {
    let mut missing = Vec::new();
    if which("git").is_none() {
        missing.push("git");
    } else {
        match need {
            Need::Daemon if !git_exec_path_has("git-daemon") => missing.push("git-daemon"),
            Need::HttpBackend if !git_exec_path_has("git-http-backend") => {
                missing.push("git-http-backend")
            }
            _ => {}
        }
    }
    if need == Need::Sshd {
        if sshd_path().is_none() {
            missing.push("sshd (openssh-server)");
        }
        if which("ssh-keygen").is_none() {
            missing.push("ssh-keygen (openssh-client)");
        }
    }
    if missing.is_empty() {
        return true;
    }
    let message = format!(
        "SKIPPED {test}: {} not installed (run .ci/install-test-deps)",
        missing.join(", ")
    );
    if std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1") {
        panic!("{message}, and {REQUIRE_ENV}=1");
    }
    // Straight to the stderr handle: libtest captures `eprintln!` of passing tests, and a
    // skip must not look like a silent pass.
    let _ = writeln!(std::io::stderr(), "{message}");
    false
}

/// Runs git with a fixed identity and no user or system config, panicking on failure.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "plugsync test")
        .env("GIT_AUTHOR_EMAIL", "test@plugsync.invalid")
        .env("GIT_COMMITTER_NAME", "plugsync test")
        .env("GIT_COMMITTER_EMAIL", "test@plugsync.invalid")
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A served repository: a normal (non-bare) repo at `<root>/<name>`, committed to directly,
/// which every server here exposes under `/<name>`.
pub struct SourceRepo {
    /// The directory servers export (`--base-path`, `GIT_PROJECT_ROOT`).
    pub root: PathBuf,
    /// The repository's name below `root`.
    pub name: String,
    /// The repository's working tree.
    pub path: PathBuf,
    _dir: TempDir,
}

impl SourceRepo {
    /// A repository with branch `main` and no commits.
    pub fn new() -> SourceRepo {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().join("srv");
        let name = "plugins".to_string();
        let path = root.join(&name);
        std::fs::create_dir_all(&path).expect("repo dir");
        git(&path, &["init", "-q", "-b", "main"]);
        // Marks it exportable for git daemon / http-backend even without --export-all.
        std::fs::write(path.join(".git/git-daemon-export-ok"), "").expect("export-ok");
        SourceRepo {
            root,
            name,
            path,
            _dir: dir,
        }
    }

    /// Writes `files` (relative path, content), commits them on the current branch, and
    /// returns the new commit id.
    pub fn commit(&self, files: &[(&str, &str)], message: &str) -> String {
        for (rel, content) in files {
            let target = self.path.join(rel);
            std::fs::create_dir_all(target.parent().expect("parent")).expect("mkdir");
            std::fs::write(&target, content).expect("write file");
        }
        git(&self.path, &["add", "-A"]);
        git(
            &self.path,
            &["commit", "-q", "--allow-empty", "-m", message],
        );
        self.head()
    }

    /// The current commit of the checked-out branch.
    pub fn head(&self) -> String {
        git(&self.path, &["rev-parse", "HEAD"])
    }

    /// Lets clients push to it: the checked-out branch is updated with its working tree
    /// (`receive.denyCurrentBranch=updateInstead`, so [`SourceRepo::commit`] keeps working
    /// on top of pushed commits) and `git http-backend` serves `git-receive-pack`
    /// (`http.receivepack`). `git daemon` also needs [`GitDaemon::start_accepting_pushes`].
    pub fn accept_pushes(&self) {
        git(
            &self.path,
            &["config", "receive.denyCurrentBranch", "updateInstead"],
        );
        git(&self.path, &["config", "http.receivepack", "true"]);
    }

    /// Installs a `pre-receive` hook that refuses every push, as branch protection would.
    pub fn decline_pushes(&self) {
        use std::os::unix::fs::PermissionsExt as _;
        let hook = self.path.join(".git/hooks/pre-receive");
        std::fs::create_dir_all(hook.parent().expect("hooks dir")).expect("hooks dir");
        std::fs::write(&hook, "#!/bin/sh\necho 'branch is protected' >&2\nexit 1\n")
            .expect("write hook");
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }

    /// Runs git in the repository (see [`git`]).
    pub fn git(&self, args: &[&str]) -> String {
        git(&self.path, args)
    }

    /// Its URL on a server whose root URL is `base_url` (every server here exposes it as
    /// `/<name>`).
    pub fn url_on(&self, base_url: &str) -> String {
        format!("{base_url}/{}", self.name)
    }
}

/// A port free right now on 127.0.0.1 (another process can take it before it is used, so
/// servers started on it retry).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .expect("local addr")
        .port()
}

/// Waits until `port` accepts connections or `child` exits; `false` on exit or timeout.
fn wait_for_port(child: &mut Child, port: u16) -> bool {
    let deadline = Instant::now() + Duration::from_secs(15);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    false
}

/// A child process killed (and reaped) on drop.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `make(port)` on free ports until one accepts connections (a few tries: the port
/// can be taken between choosing and binding). Panics with the server's log otherwise.
fn start_on_free_port(what: &str, log: &Path, make: impl Fn(u16) -> Command) -> (Guard, u16) {
    for _ in 0..3 {
        let port = free_port();
        let log_file = std::fs::File::create(log).expect("log file");
        let child = make(port)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log file"))
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("start {what}: {e}"));
        let mut guard = Guard(child);
        if wait_for_port(&mut guard.0, port) {
            return (guard, port);
        }
    }
    panic!(
        "{what} did not start; its log:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// `git daemon` serving `root` on `git://127.0.0.1:<port>/`, read-only unless started with
/// [`GitDaemon::start_accepting_pushes`].
pub struct GitDaemon {
    /// `git://127.0.0.1:<port>`.
    pub base_url: String,
    _child: Guard,
    _logs: TempDir,
}

impl GitDaemon {
    /// Serves every repository under `root`, for fetching only.
    pub fn start(root: &Path) -> GitDaemon {
        GitDaemon::start_with(root, false)
    }

    /// Serves every repository under `root` and accepts pushes (`--enable=receive-pack`);
    /// the repositories must allow them too ([`SourceRepo::accept_pushes`]).
    pub fn start_accepting_pushes(root: &Path) -> GitDaemon {
        GitDaemon::start_with(root, true)
    }

    fn start_with(root: &Path, receive_pack: bool) -> GitDaemon {
        let logs = tempfile::tempdir().expect("temp dir");
        let log = logs.path().join("daemon.log");
        let program = git_helper("git-daemon").expect("git-daemon (checked by tools_or_skip)");
        let (child, port) = start_on_free_port("git daemon", &log, |port| {
            // `git-daemon` itself, not `git daemon`: the `git` wrapper would fork it as a child
            // and killing the wrapper on drop would leave the daemon running.
            let mut cmd = Command::new(&program);
            cmd.arg("--export-all")
                .arg("--reuseaddr")
                .arg("--listen=127.0.0.1")
                .arg(format!("--port={port}"))
                .arg(format!("--base-path={}", root.display()));
            if receive_pack {
                cmd.arg("--enable=receive-pack");
            }
            cmd.arg(root)
                .env("GIT_CONFIG_NOSYSTEM", "1")
                .env("GIT_CONFIG_GLOBAL", "/dev/null");
            cmd
        });
        GitDaemon {
            base_url: format!("git://127.0.0.1:{port}"),
            _child: child,
            _logs: logs,
        }
    }
}

/// One request the HTTP bridge received: `METHOD /path?query -> status`.
pub type RequestLog = Arc<Mutex<Vec<String>>>;

#[derive(Clone)]
struct Bridge {
    root: PathBuf,
    user: String,
    password: String,
    log: RequestLog,
}

/// `git http-backend` behind an axum CGI bridge on `http://127.0.0.1:<port>/`, demanding
/// Basic auth for every request and recording every request it receives.
pub struct HttpGitServer {
    /// `http://127.0.0.1:<port>`.
    pub base_url: String,
    /// Every request, in order.
    pub requests: RequestLog,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HttpGitServer {
    /// Serves the repositories under `root` to `user`/`password` only.
    pub fn start(root: &Path, user: &str, password: &str) -> HttpGitServer {
        let requests: RequestLog = Arc::default();
        let bridge = Bridge {
            root: root.to_path_buf(),
            user: user.to_string(),
            password: password.to_string(),
            log: requests.clone(),
        };
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let app = axum::Router::new().fallback(cgi_bridge).with_state(bridge);
                axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = rx.await;
                    })
                    .await
                    .expect("serve");
            });
        });
        HttpGitServer {
            base_url: format!("http://127.0.0.1:{port}"),
            requests,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    /// The requests received so far.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().expect("log").clone()
    }

    /// Forgets the requests received so far.
    pub fn clear(&self) {
        self.requests.lock().expect("log").clear();
    }
}

impl Drop for HttpGitServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn authorized(headers: &HeaderMap, user: &str, password: &str) -> bool {
    let expected = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    headers
        .get_all("authorization")
        .iter()
        .any(|v| v.to_str().ok() == Some(&format!("Basic {expected}")))
}

async fn cgi_bridge(State(bridge): State<Bridge>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let line = format!(
        "{} {}",
        parts.method,
        parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
    );
    let response = if !authorized(&parts.headers, &bridge.user, &bridge.password) {
        Response::builder()
            .status(StatusCode::UNAUTHORIZED)
            .header("WWW-Authenticate", "Basic realm=\"plugsync-test\"")
            .body(Body::from("authentication required\n"))
            .expect("response")
    } else {
        let body = axum::body::to_bytes(body, 64 << 20)
            .await
            .unwrap_or_default();
        run_http_backend(&bridge, &parts, body.to_vec()).await
    };
    bridge
        .log
        .lock()
        .expect("log")
        .push(format!("{line} -> {}", response.status().as_u16()));
    response
}

/// Runs one CGI request through `git http-backend` and turns its output into a response.
async fn run_http_backend(
    bridge: &Bridge,
    parts: &axum::http::request::Parts,
    body: Vec<u8>,
) -> Response {
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let mut cmd = tokio::process::Command::new("git");
    cmd.arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_PROJECT_ROOT", &bridge.root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .env("REQUEST_METHOD", parts.method.as_str())
        .env("PATH_INFO", parts.uri.path())
        .env("QUERY_STRING", parts.uri.query().unwrap_or_default())
        .env("CONTENT_TYPE", header("content-type"))
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("HTTP_CONTENT_ENCODING", header("content-encoding"))
        .env("GIT_PROTOCOL", header("git-protocol"))
        .env("REMOTE_USER", &bridge.user)
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => return plain(StatusCode::INTERNAL_SERVER_ERROR, format!("spawn: {e}")),
    };
    let mut stdin = child.stdin.take().expect("stdin");
    let writer = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt as _;
        let _ = stdin.write_all(&body).await;
    });
    let out = match child.wait_with_output().await {
        Ok(out) => out,
        Err(e) => return plain(StatusCode::INTERNAL_SERVER_ERROR, format!("wait: {e}")),
    };
    let _ = writer.await;
    parse_cgi(&out.stdout).unwrap_or_else(|| {
        plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "bad CGI output; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    })
}

fn plain(status: StatusCode, text: String) -> Response {
    Response::builder()
        .status(status)
        .body(Body::from(text))
        .expect("response")
}

/// CGI output: header lines, a blank line, the body. `Status:` sets the status.
fn parse_cgi(out: &[u8]) -> Option<Response> {
    let (head_len, sep) = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4))
        .or_else(|| out.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2)))?;
    let head = std::str::from_utf8(&out[..head_len]).ok()?;
    let mut builder = Response::builder().status(StatusCode::OK);
    for line in head.lines() {
        let (name, value) = line.split_once(':')?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code: u16 = value.split_whitespace().next()?.parse().ok()?;
            builder = builder.status(code);
        } else {
            builder = builder.header(name.trim(), HeaderValue::from_str(value).ok()?);
        }
    }
    builder
        .body(Body::from(out[head_len + sep..].to_vec()))
        .ok()
}

/// Generates an ssh key pair at `path` (and `path.pub`); returns (private, public line).
pub fn ssh_keygen(path: &Path, key_type: &str, passphrase: &str) -> (String, String) {
    let out = Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            key_type,
            "-N",
            passphrase,
            "-C",
            "plugsync-test",
            "-f",
        ])
        .arg(path)
        .output()
        .expect("run ssh-keygen");
    assert!(out.status.success(), "ssh-keygen failed: {out:?}");
    let private = std::fs::read_to_string(path).expect("private key");
    let public = std::fs::read_to_string(path.with_extension("pub")).expect("public key");
    (private, public.trim().to_string())
}

/// OpenSSH's sshd on `127.0.0.1:<port>` with its own ed25519 host key, accepting one client
/// key for the current user; repositories are reached by absolute path.
pub struct SshServer {
    /// The port sshd listens on.
    pub port: u16,
    /// The user to log in as (the current user).
    pub user: String,
    /// The host's known_hosts line: `[127.0.0.1]:<port> ssh-ed25519 AAAA…`.
    pub known_hosts: String,
    /// The client's private key (OpenSSH format), authorized for `user`.
    pub client_key: String,
    dir: TempDir,
    _child: Guard,
}

impl SshServer {
    /// Starts sshd accepting the client key `client_public` (an `authorized_keys` line).
    pub fn start(client_private: &str, client_public: &str) -> SshServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let (_, host_public) = ssh_keygen(&dir.path().join("host_ed25519"), "ed25519", "");
        let authorized = dir.path().join("authorized_keys");
        std::fs::write(&authorized, format!("{client_public}\n")).expect("authorized_keys");
        // sshd refuses to start as root without its privilege separation directory, which
        // systemd's tmpfiles normally creates at boot.
        if current_uid() == 0 {
            let _ = std::fs::create_dir_all("/run/sshd");
        }
        let user = current_user();
        let sshd = sshd_path().expect("sshd present (checked by tools_or_skip)");
        let log = dir.path().join("sshd.log");
        let config = dir.path().join("sshd_config");
        let dir_path = dir.path().to_path_buf();
        let (child, port) = start_on_free_port("sshd", &log, |port| {
            std::fs::write(
                &config,
                format!(
                    "Port {port}\n\
                     ListenAddress 127.0.0.1\n\
                     HostKey {host_key}\n\
                     PidFile {pid}\n\
                     AuthorizedKeysFile {authorized}\n\
                     StrictModes no\n\
                     PermitRootLogin prohibit-password\n\
                     PubkeyAuthentication yes\n\
                     PasswordAuthentication no\n\
                     KbdInteractiveAuthentication no\n\
                     UsePAM no\n\
                     AllowUsers {user}\n\
                     LogLevel VERBOSE\n",
                    host_key = dir_path.join("host_ed25519").display(),
                    pid = dir_path.join("sshd.pid").display(),
                    authorized = authorized.display(),
                ),
            )
            .expect("sshd_config");
            let mut cmd = Command::new(&sshd);
            cmd.arg("-D").arg("-e").arg("-f").arg(&config);
            cmd
        });
        let mut fields = host_public.split_whitespace();
        let (key_type, key) = (fields.next().expect("type"), fields.next().expect("key"));
        SshServer {
            port,
            user,
            known_hosts: format!("[127.0.0.1]:{port} {key_type} {key}\n"),
            client_key: client_private.to_string(),
            dir,
            _child: child,
        }
    }

    /// `ssh://<user>@127.0.0.1:<port><path>`.
    pub fn url(&self, path: &Path) -> String {
        format!(
            "ssh://{}@127.0.0.1:{}{}",
            self.user,
            self.port,
            path.display()
        )
    }

    /// sshd's log so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }
}

fn current_uid() -> u32 {
    Command::new("id")
        .arg("-u")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(u32::MAX)
}

fn current_user() -> String {
    Command::new("id")
        .arg("-un")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|u| !u.is_empty())
        .expect("current user name (id -un)")
}
