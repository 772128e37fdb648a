//! `plugsync_core::source::remote`: following a branch of a remote repository, and committing
//! back to it, over git:// (`git daemon`), smart http with Basic auth (`git http-backend`
//! behind a counting CGI bridge) and ssh (OpenSSH's `sshd`), all real servers on loopback.
//!
//! Without git or sshd these tests skip with a note, unless
//! `PLUGSYNC_REQUIRE_GIT_SERVER_TESTS=1` (see `tests/common/git_server.rs`).

#[path = "common/git_server.rs"]
mod git_server;

use std::collections::BTreeMap;

use git2::{Oid, Repository};
use git_server::{
    ssh_keygen, tools_or_skip, GitDaemon, HttpGitServer, Need, SourceRepo, SshServer,
};
use plugsync_core::source::remote::{CommitAuthor, GitAuth, RemoteError, RemoteRepo, SyncOutcome};
use plugsync_core::source::{GitRevision, Snapshot};

fn oid(s: &str) -> Oid {
    Oid::from_str(s).expect("commit id")
}

/// A fresh cache of `url`'s branch `main` (the cache directory lives as long as the first
/// value).
fn open_main(url: &str) -> (tempfile::TempDir, RemoteRepo) {
    let cache = tempfile::tempdir().unwrap();
    let repo = RemoteRepo::open(cache.path(), url, "main").unwrap();
    (cache, repo)
}

/// Commits reachable from `commit` in the repository at `path` (shallow boundaries stop
/// the walk).
fn reachable(path: &std::path::Path, commit: Oid) -> usize {
    let repo = Repository::open(path).expect("open cache repo");
    let mut walk = repo.revwalk().expect("revwalk");
    walk.push(commit).expect("push");
    walk.count()
}

// ---------------------------------------------------------------------------------------------
// git:// (git daemon)

#[test]
fn daemon_sync_fetches_then_reports_unchanged_then_fetches_the_new_commit() {
    if !tools_or_skip("daemon_sync_fetches_then_reports_unchanged", Need::Daemon) {
        return;
    }
    let source = SourceRepo::new();
    let first = oid(&source.commit(&[("plugins.yaml", "v: 1\n")], "first"));
    let daemon = GitDaemon::start(&source.root);
    let url = source.url_on(&daemon.base_url);
    let cache = tempfile::tempdir().unwrap();
    let dir = cache.path().join("repo.git");

    let mut repo = RemoteRepo::open(&dir, &url, "main").unwrap();
    assert_eq!(repo.last_commit(), None);
    assert_eq!(repo.remote_head(&GitAuth::None).unwrap(), first);
    assert_eq!(
        repo.sync(&GitAuth::None).unwrap(),
        SyncOutcome::Fetched {
            previous: None,
            commit: first
        }
    );
    assert_eq!(
        repo.sync(&GitAuth::None).unwrap(),
        SyncOutcome::Unchanged(first)
    );

    let second = oid(&source.commit(&[("plugins.yaml", "v: 2\n")], "second"));
    assert_eq!(
        repo.sync(&GitAuth::None).unwrap(),
        SyncOutcome::Fetched {
            previous: Some(first),
            commit: second
        }
    );
    assert_eq!(repo.last_commit(), Some(second));

    // A reopened cache remembers the commit from its ref and asks nothing more of the server.
    drop(repo);
    let mut reopened = RemoteRepo::open(&dir, &url, "main").unwrap();
    assert_eq!(reopened.last_commit(), Some(second));
    assert_eq!(
        reopened.sync(&GitAuth::None).unwrap(),
        SyncOutcome::Unchanged(second)
    );
}

#[test]
fn daemon_sync_is_shallow_and_full_fetch_is_not() {
    if !tools_or_skip("daemon_sync_is_shallow_and_full_fetch_is_not", Need::Daemon) {
        return;
    }
    let source = SourceRepo::new();
    for i in 0..3 {
        source.commit(&[("plugins.yaml", &format!("v: {i}\n"))], "c");
    }
    let head = oid(&source.head());
    let daemon = GitDaemon::start(&source.root);
    let url = source.url_on(&daemon.base_url);

    let shallow = tempfile::tempdir().unwrap();
    let mut repo = RemoteRepo::open(shallow.path(), &url, "main").unwrap();
    assert_eq!(repo.sync(&GitAuth::None).unwrap().commit(), head);
    assert!(Repository::open(repo.path()).unwrap().is_shallow());
    assert_eq!(reachable(repo.path(), head), 1, "depth 1: the commit alone");

    // A new commit on a shallow cache: still one commit deep.
    let next = oid(&source.commit(&[("plugins.yaml", "v: 9\n")], "next"));
    assert_eq!(repo.sync(&GitAuth::None).unwrap().commit(), next);
    assert!(Repository::open(repo.path()).unwrap().is_shallow());

    let full = tempfile::tempdir().unwrap();
    let repo = RemoteRepo::open(full.path(), &url, "main").unwrap();
    assert_eq!(repo.fetch(&GitAuth::None, None).unwrap(), next);
    assert!(!Repository::open(repo.path()).unwrap().is_shallow());
    assert_eq!(reachable(repo.path(), next), 4);
}

#[test]
fn daemon_commit_is_read_from_a_subdir_with_git_revision() {
    if !tools_or_skip("daemon_commit_is_read_from_a_subdir", Need::Daemon) {
        return;
    }
    let source = SourceRepo::new();
    let commit = source.commit(
        &[
            ("README.md", "not plugsync's\n"),
            ("clusters/prod/plugins.yaml", "kind: PluginSet\n"),
            ("clusters/prod/plugins.lock", "kind: PluginLock\n"),
        ],
        "layout",
    );
    let daemon = GitDaemon::start(&source.root);
    let cache = tempfile::tempdir().unwrap();
    let mut repo =
        RemoteRepo::open(cache.path(), &source.url_on(&daemon.base_url), "main").unwrap();
    let fetched = repo.sync(&GitAuth::None).unwrap().commit();
    assert_eq!(fetched.to_string(), commit);

    let snapshot =
        GitRevision::open(repo.path(), &fetched.to_string(), Some("clusters/prod")).unwrap();
    assert_eq!(snapshot.revision().as_deref(), Some(commit.as_str()));
    assert_eq!(
        snapshot.read("plugins.yaml").unwrap().as_deref(),
        Some(&b"kind: PluginSet\n"[..])
    );
    assert_eq!(snapshot.list("").unwrap(), ["plugins.lock", "plugins.yaml"]);
    assert_eq!(snapshot.read("README.md").unwrap(), None);
}

#[test]
fn daemon_missing_branch_is_a_clear_error() {
    if !tools_or_skip("daemon_missing_branch_is_a_clear_error", Need::Daemon) {
        return;
    }
    let source = SourceRepo::new();
    source.commit(&[("plugins.yaml", "v: 1\n")], "first");
    let daemon = GitDaemon::start(&source.root);
    let cache = tempfile::tempdir().unwrap();
    let url = source.url_on(&daemon.base_url);
    let mut repo = RemoteRepo::open(cache.path(), &url, "release/v2").unwrap();
    let err = repo.sync(&GitAuth::None).unwrap_err();
    assert!(
        matches!(&err, RemoteError::BranchNotFound { branch, .. } if branch == "release/v2"),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!("branch \"release/v2\" not found in {url}")
    );
    let err = repo.fetch(&GitAuth::None, Some(1)).unwrap_err();
    assert!(matches!(err, RemoteError::BranchNotFound { .. }), "{err:?}");
    assert!(matches!(
        RemoteRepo::open(cache.path(), &url, "bad..name").unwrap_err(),
        RemoteError::InvalidBranch(_)
    ));
}

#[test]
fn daemon_fetch_past_its_deadline_is_a_timeout_naming_the_remote() {
    if !tools_or_skip("daemon_fetch_past_its_deadline", Need::Daemon) {
        return;
    }
    let source = SourceRepo::new();
    let first = oid(&source.commit(&[("plugins.yaml", "v: 1\n")], "first"));
    let daemon = GitDaemon::start(&source.root);
    let cache = tempfile::tempdir().unwrap();
    let url = source.url_on(&daemon.base_url);
    let mut repo = RemoteRepo::open(cache.path(), &url, "main").unwrap();
    // A deadline already passed: the transfer is cut off at libgit2's first progress
    // callback (a hung server is bounded by the caller, see tests/git_timeout.rs).
    repo.set_timeout(std::time::Duration::ZERO);
    let err = repo.fetch(&GitAuth::None, None).unwrap_err();
    assert!(matches!(err, RemoteError::Timeout { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("fetching {url}: no answer within 0s")
    );
    assert_eq!(repo.last_commit(), None);
    // With time enough, the same repository fetches.
    repo.set_timeout(std::time::Duration::from_secs(30));
    assert_eq!(repo.fetch(&GitAuth::None, None).unwrap(), first);
}

// ---------------------------------------------------------------------------------------------
// smart http with Basic auth (git http-backend)

const USER: &str = "alice";
const PASSWORD: &str = "correct-horse-s3cret";

fn basic(password: &str) -> GitAuth {
    let data: BTreeMap<String, Vec<u8>> = [
        ("username".to_string(), USER.as_bytes().to_vec()),
        ("password".to_string(), password.as_bytes().to_vec()),
    ]
    .into();
    GitAuth::from_secret_data(&data).unwrap()
}

#[test]
fn http_unchanged_sync_is_exactly_one_request() {
    if !tools_or_skip(
        "http_unchanged_sync_is_exactly_one_request",
        Need::HttpBackend,
    ) {
        return;
    }
    let source = SourceRepo::new();
    let first = oid(&source.commit(&[("plugins.yaml", "v: 1\n")], "first"));
    let server = HttpGitServer::start(&source.root, USER, PASSWORD);
    let (_cache, mut repo) = open_main(&source.url_on(&server.base_url));
    let auth = basic(PASSWORD);

    assert_eq!(
        repo.sync(&auth).unwrap(),
        SyncOutcome::Fetched {
            previous: None,
            commit: first
        }
    );
    let requests = server.requests();
    assert!(
        requests.iter().all(|r| r.ends_with("-> 200")),
        "credentials go with the first request, no 401 round trip: {requests:#?}"
    );
    assert!(
        requests
            .iter()
            .any(|r| r.starts_with("POST /plugins/git-upload-pack")),
        "{requests:#?}"
    );

    server.clear();
    assert_eq!(repo.sync(&auth).unwrap(), SyncOutcome::Unchanged(first));
    assert_eq!(
        server.requests(),
        ["GET /plugins/info/refs?service=git-upload-pack -> 200"],
        "an unchanged poll is the ref advertisement and nothing else"
    );

    server.clear();
    let second = oid(&source.commit(&[("plugins.yaml", "v: 2\n")], "second"));
    assert_eq!(
        repo.sync(&auth).unwrap(),
        SyncOutcome::Fetched {
            previous: Some(first),
            commit: second
        }
    );
    assert!(server.requests().len() >= 3, "{:#?}", server.requests());
}

#[test]
fn http_wrong_password_is_an_auth_error_that_does_not_leak_it() {
    if !tools_or_skip("http_wrong_password_is_an_auth_error", Need::HttpBackend) {
        return;
    }
    let source = SourceRepo::new();
    source.commit(&[("plugins.yaml", "v: 1\n")], "first");
    let server = HttpGitServer::start(&source.root, USER, PASSWORD);
    let (_cache, mut repo) = open_main(&source.url_on(&server.base_url));

    let wrong = "wrong-battery-s3cret";
    let err = repo.sync(&basic(wrong)).unwrap_err();
    assert!(matches!(err, RemoteError::Auth { .. }), "{err:?}");
    let text = format!("{err} {err:?} {:?}", basic(wrong));
    assert!(
        text.contains("authentication failed for http://127.0.0.1:"),
        "{text}"
    );
    assert!(!text.contains(wrong) && !text.contains(PASSWORD), "{text}");
    // Rejected once, then plugsync gives up: no credential loop against the server.
    assert_eq!(server.requests().len(), 1, "{:#?}", server.requests());
    assert_eq!(repo.last_commit(), None);

    server.clear();
    let err = repo.sync(&GitAuth::None).unwrap_err();
    assert!(
        matches!(&err, RemoteError::Auth { reason, .. } if reason.contains("holds none")),
        "{err:?}"
    );
    assert_eq!(server.requests().len(), 1, "{:#?}", server.requests());

    // The right password on the same cache works.
    assert!(matches!(
        repo.sync(&basic(PASSWORD)).unwrap(),
        SyncOutcome::Fetched { previous: None, .. }
    ));
}

#[test]
fn credentials_that_do_not_fit_the_url_are_refused_before_connecting() {
    let cache = tempfile::tempdir().unwrap();
    // Nothing listens on port 9: any connection attempt would fail differently.
    let ssh = RemoteRepo::open(cache.path(), "ssh://git@127.0.0.1:9/r.git", "main").unwrap();
    let err = ssh.remote_head(&basic(PASSWORD)).unwrap_err();
    assert!(
        matches!(&err, RemoteError::Url { reason, .. } if reason.contains("known_hosts")),
        "{err:?}"
    );
    let err = ssh.remote_head(&GitAuth::None).unwrap_err();
    assert!(matches!(err, RemoteError::Url { .. }), "{err:?}");

    let err = RemoteRepo::open(
        cache.path(),
        &format!("https://{USER}:{PASSWORD}@example.com/r.git"),
        "main",
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("https://***@example.com/r.git"), "{text}");
    assert!(!text.contains(PASSWORD), "{text}");
}

// ---------------------------------------------------------------------------------------------
// ssh (sshd)

fn ssh_auth(key: &str, known_hosts: &str) -> GitAuth {
    let data: BTreeMap<String, Vec<u8>> = [
        ("identity".to_string(), key.as_bytes().to_vec()),
        ("known_hosts".to_string(), known_hosts.as_bytes().to_vec()),
    ]
    .into();
    GitAuth::from_secret_data(&data).unwrap()
}

#[test]
fn ssh_fetch_with_key_and_known_hosts() {
    if !tools_or_skip("ssh_fetch_with_key_and_known_hosts", Need::Sshd) {
        return;
    }
    let keys = tempfile::tempdir().unwrap();
    let (private, public) = ssh_keygen(&keys.path().join("client"), "ed25519", "");
    let server = SshServer::start(&private, &public);
    let source = SourceRepo::new();
    let first = oid(&source.commit(&[("plugins.yaml", "v: 1\n")], "first"));
    let cache = tempfile::tempdir().unwrap();
    let mut repo = RemoteRepo::open(cache.path(), &server.url(&source.path), "main").unwrap();
    let auth = ssh_auth(&server.client_key, &server.known_hosts);

    let outcome = repo
        .sync(&auth)
        .unwrap_or_else(|e| panic!("{e}\nsshd log:\n{}", server.log()));
    assert_eq!(
        outcome,
        SyncOutcome::Fetched {
            previous: None,
            commit: first
        }
    );
    assert_eq!(repo.sync(&auth).unwrap(), SyncOutcome::Unchanged(first));
    let second = oid(&source.commit(&[("plugins.yaml", "v: 2\n")], "second"));
    assert_eq!(
        repo.sync(&auth).unwrap(),
        SyncOutcome::Fetched {
            previous: Some(first),
            commit: second
        }
    );
}

/// `known_hosts` hashed by OpenSSH itself (`ssh-keygen -H`, what `HashKnownHosts yes` and
/// `ssh-keyscan -H` write): every host name becomes `|1|salt|hash`.
fn hash_known_hosts(dir: &std::path::Path, known_hosts: &str) -> String {
    let file = dir.join("known_hosts");
    std::fs::write(&file, known_hosts).unwrap();
    let out = std::process::Command::new("ssh-keygen")
        .arg("-H")
        .arg("-f")
        .arg(&file)
        .output()
        .expect("run ssh-keygen -H");
    assert!(out.status.success(), "ssh-keygen -H: {out:?}");
    let hashed = std::fs::read_to_string(&file).unwrap();
    assert!(
        hashed.lines().all(|l| l.starts_with("|1|")),
        "not hashed:\n{hashed}"
    );
    hashed
}

#[test]
fn ssh_fetch_with_a_hashed_known_hosts_entry() {
    if !tools_or_skip("ssh_fetch_with_a_hashed_known_hosts_entry", Need::Sshd) {
        return;
    }
    let keys = tempfile::tempdir().unwrap();
    let (private, public) = ssh_keygen(&keys.path().join("client"), "ed25519", "");
    let (_, impostor) = ssh_keygen(&keys.path().join("impostor"), "ed25519", "");
    let server = SshServer::start(&private, &public);
    let source = SourceRepo::new();
    let first = oid(&source.commit(&[("plugins.yaml", "v: 1\n")], "first"));
    let cache = tempfile::tempdir().unwrap();
    let mut repo = RemoteRepo::open(cache.path(), &server.url(&source.path), "main").unwrap();
    let real_key = server.known_hosts.split_whitespace().nth(2).unwrap();

    // The server's key filed under the hashed `[127.0.0.1]:<port>`: accepted.
    let hashed = hash_known_hosts(keys.path(), &server.known_hosts);
    let outcome = repo
        .sync(&ssh_auth(&private, &hashed))
        .unwrap_or_else(|e| panic!("{e}\nsshd log:\n{}", server.log()));
    assert_eq!(
        outcome,
        SyncOutcome::Fetched {
            previous: None,
            commit: first
        }
    );

    // A hashed entry for the right host with another key: a mismatch.
    let impostor_key = impostor.split_whitespace().nth(1).unwrap();
    let wrong = hash_known_hosts(
        keys.path(),
        &format!("[127.0.0.1]:{} ssh-ed25519 {impostor_key}\n", server.port),
    );
    let err = repo.sync(&ssh_auth(&private, &wrong)).unwrap_err();
    assert!(
        matches!(&err, RemoteError::HostKey { reason, .. } if reason.contains("not the key")),
        "{err:?}"
    );
    // The real key hashed under the same address on another port: unknown host.
    let elsewhere = hash_known_hosts(
        keys.path(),
        &format!("[127.0.0.1]:{} ssh-ed25519 {real_key}\n", server.port + 1),
    );
    let err = repo.sync(&ssh_auth(&private, &elsewhere)).unwrap_err();
    assert!(
        matches!(&err, RemoteError::HostKey { reason, .. } if reason.contains("not in known_hosts")),
        "{err:?}"
    );
}

#[test]
fn ssh_wrong_or_missing_host_key_refuses_the_connection() {
    if !tools_or_skip("ssh_wrong_or_missing_host_key_refuses", Need::Sshd) {
        return;
    }
    let keys = tempfile::tempdir().unwrap();
    let (private, public) = ssh_keygen(&keys.path().join("client"), "ed25519", "");
    let (_, impostor) = ssh_keygen(&keys.path().join("impostor"), "ed25519", "");
    let server = SshServer::start(&private, &public);
    let source = SourceRepo::new();
    source.commit(&[("plugins.yaml", "v: 1\n")], "first");
    let cache = tempfile::tempdir().unwrap();
    let mut repo = RemoteRepo::open(cache.path(), &server.url(&source.path), "main").unwrap();
    let impostor_key = impostor.split_whitespace().nth(1).unwrap();

    // The right host name with another key: a mismatch.
    let wrong = format!("[127.0.0.1]:{} ssh-ed25519 {impostor_key}\n", server.port);
    let err = repo.sync(&ssh_auth(&private, &wrong)).unwrap_err();
    match &err {
        RemoteError::HostKey { host, reason } => {
            assert_eq!(host, &format!("[127.0.0.1]:{}", server.port));
            assert!(reason.contains("not the key"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    // The server's real key, but filed under another host: unknown host.
    let real_key = server.known_hosts.split_whitespace().nth(2).unwrap();
    let elsewhere = format!("git.example.com ssh-ed25519 {real_key}\n");
    let err = repo.sync(&ssh_auth(&private, &elsewhere)).unwrap_err();
    assert!(
        matches!(&err, RemoteError::HostKey { reason, .. } if reason.contains("not in known_hosts")),
        "{err:?}"
    );
    assert_eq!(
        repo.last_commit(),
        None,
        "nothing fetched from an unverified host"
    );
    assert!(!err.to_string().contains("PRIVATE KEY"), "{err}");
}

#[test]
fn ssh_unauthorized_key_is_an_auth_error() {
    if !tools_or_skip("ssh_unauthorized_key_is_an_auth_error", Need::Sshd) {
        return;
    }
    let keys = tempfile::tempdir().unwrap();
    let (private, public) = ssh_keygen(&keys.path().join("client"), "ed25519", "");
    let (stranger, _) = ssh_keygen(&keys.path().join("stranger"), "ed25519", "");
    let server = SshServer::start(&private, &public);
    let source = SourceRepo::new();
    source.commit(&[("plugins.yaml", "v: 1\n")], "first");
    let cache = tempfile::tempdir().unwrap();
    let mut repo = RemoteRepo::open(cache.path(), &server.url(&source.path), "main").unwrap();
    let err = repo
        .sync(&ssh_auth(&stranger, &server.known_hosts))
        .unwrap_err();
    assert!(matches!(err, RemoteError::Auth { .. }), "{err:?}");
    assert!(!err.to_string().contains("PRIVATE KEY"), "{err}");
}

#[test]
fn ssh_key_with_a_passphrase_from_the_secret() {
    if !tools_or_skip("ssh_key_with_a_passphrase_from_the_secret", Need::Sshd) {
        return;
    }
    let keys = tempfile::tempdir().unwrap();
    let passphrase = "open-sesame-s3cret";
    let (private, public) = ssh_keygen(&keys.path().join("client"), "ed25519", passphrase);
    let server = SshServer::start(&private, &public);
    let source = SourceRepo::new();
    let first = oid(&source.commit(&[("plugins.yaml", "v: 1\n")], "first"));
    let cache = tempfile::tempdir().unwrap();
    let mut repo = RemoteRepo::open(cache.path(), &server.url(&source.path), "main").unwrap();
    let data: BTreeMap<String, Vec<u8>> = [
        ("identity".to_string(), private.as_bytes().to_vec()),
        (
            "known_hosts".to_string(),
            server.known_hosts.as_bytes().to_vec(),
        ),
        ("password".to_string(), passphrase.as_bytes().to_vec()),
    ]
    .into();
    let auth = GitAuth::from_secret_data(&data).unwrap();
    assert!(!format!("{auth:?}").contains(passphrase));
    let outcome = repo
        .sync(&auth)
        .unwrap_or_else(|e| panic!("{e}\nsshd log:\n{}", server.log()));
    assert_eq!(outcome.commit(), first);
}

// ---------------------------------------------------------------------------------------------
// committing back (commit_and_push)

fn bot() -> CommitAuthor {
    CommitAuthor {
        name: "plugsync bot".into(),
        email: "bot@plugsync.invalid".into(),
    }
}

/// What the server's repository records for `rev`: author, author email, committer,
/// committer email, parents, message.
fn server_commit(source: &SourceRepo, rev: &str) -> [String; 6] {
    let out = source.git(&[
        "log",
        "-1",
        "--format=%an%x00%ae%x00%cn%x00%ce%x00%P%x00%B",
        rev,
    ]);
    let fields: Vec<String> = out.split('\0').map(str::to_string).collect();
    fields.try_into().expect("six fields")
}

/// Asserts the server's `main` is `pushed`, made by [`bot`] on `parent` with `message`.
fn assert_pushed(source: &SourceRepo, pushed: Oid, parent: Oid, message: &str) {
    assert_eq!(oid(&source.git(&["rev-parse", "main"])), pushed);
    let [an, ae, cn, ce, parents, body] = server_commit(source, "main");
    assert_eq!(
        (an.as_str(), ae.as_str()),
        ("plugsync bot", "bot@plugsync.invalid")
    );
    assert_eq!(
        (cn.as_str(), ce.as_str()),
        ("plugsync bot", "bot@plugsync.invalid")
    );
    assert_eq!(parents, parent.to_string(), "one parent, the given one");
    assert_eq!(body.trim_end(), message);
    // Every object the new commit needs arrived.
    source.git(&["fsck", "--connectivity-only", "--no-dangling"]);
}

#[test]
fn daemon_commit_and_push_from_a_shallow_cache_then_sync_fetches_it() {
    if !tools_or_skip("daemon_commit_and_push_from_a_shallow_cache", Need::Daemon) {
        return;
    }
    let source = SourceRepo::new();
    source.accept_pushes();
    source.commit(&[("team/plugins.lock", "old: 0\n")], "history");
    source.commit(&[("README.md", "keep me\n")], "more history");
    let parent = oid(&source.commit(
        &[
            ("team/plugins.yaml", "kind: PluginSet\n"),
            ("team/plugins.lock", "old: 1\n"),
        ],
        "layout",
    ));
    let daemon = GitDaemon::start_accepting_pushes(&source.root);
    let (_cache, mut repo) = open_main(&source.url_on(&daemon.base_url));
    assert_eq!(repo.sync(&GitAuth::None).unwrap().commit(), parent);
    assert!(Repository::open(repo.path()).unwrap().is_shallow());
    assert_eq!(
        reachable(repo.path(), parent),
        1,
        "the parent alone is here"
    );

    let message = "plugsync: update team/plugins.lock\n\nResolved 3 plugins.";
    let pushed = repo
        .commit_and_push(
            &GitAuth::None,
            parent,
            &[
                ("team/plugins.lock", b"new: 2\n"),
                ("team/reports/new/summary.txt", b"3 plugins\n"),
            ],
            &bot(),
            message,
        )
        .unwrap();
    assert_ne!(pushed, parent);
    assert_pushed(&source, pushed, parent, message);
    assert_eq!(source.git(&["show", "main:team/plugins.lock"]), "new: 2");
    assert_eq!(
        source.git(&["show", "main:team/reports/new/summary.txt"]),
        "3 plugins"
    );
    // Nothing else changed, and the full history is still under the pushed commit.
    assert_eq!(
        source.git(&["diff", "--name-only", &parent.to_string(), "main"]),
        "team/plugins.lock\nteam/reports/new/summary.txt"
    );
    assert_eq!(source.git(&["rev-list", "--count", "main"]), "4");
    // `updateInstead` moved the server's working tree too: later test commits build on it.
    assert_eq!(
        std::fs::read_to_string(source.path.join("team/plugins.lock")).unwrap(),
        "new: 2\n"
    );

    // The pushed commit is not taken for fetched, not even by the remote-tracking ref a
    // restart reads: the next poll brings it in as new.
    assert_eq!(repo.last_commit(), Some(parent));
    assert_eq!(
        Repository::open(repo.path())
            .unwrap()
            .refname_to_id("refs/remotes/origin/main")
            .unwrap(),
        parent
    );
    assert_eq!(
        repo.sync(&GitAuth::None).unwrap(),
        SyncOutcome::Fetched {
            previous: Some(parent),
            commit: pushed
        }
    );
    let snapshot = GitRevision::open(repo.path(), &pushed.to_string(), Some("team")).unwrap();
    assert_eq!(
        snapshot.read("plugins.lock").unwrap().as_deref(),
        Some(&b"new: 2\n"[..])
    );
    assert_eq!(
        repo.sync(&GitAuth::None).unwrap(),
        SyncOutcome::Unchanged(pushed)
    );

    // And it is a normal base for the next write-back.
    let again = repo
        .commit_and_push(
            &GitAuth::None,
            pushed,
            &[("team/plugins.lock", b"new: 3\n")],
            &bot(),
            "again",
        )
        .unwrap();
    assert_pushed(&source, again, pushed, "again");
}

#[test]
fn daemon_push_after_the_branch_moved_is_rejected_and_changes_nothing() {
    if !tools_or_skip(
        "daemon_push_after_the_branch_moved_is_rejected",
        Need::Daemon,
    ) {
        return;
    }
    let source = SourceRepo::new();
    source.accept_pushes();
    let first = oid(&source.commit(&[("plugins.lock", "v: 1\n")], "first"));
    let daemon = GitDaemon::start_accepting_pushes(&source.root);
    let (_cache, mut repo) = open_main(&source.url_on(&daemon.base_url));
    assert_eq!(repo.sync(&GitAuth::None).unwrap().commit(), first);

    // Someone else pushes; the cache has not seen their commit.
    let theirs = oid(&source.commit(&[("plugins.yaml", "theirs\n")], "theirs"));
    let files: &[(&str, &[u8])] = &[("plugins.lock", b"v: 2\n")];
    let err = repo
        .commit_and_push(&GitAuth::None, first, files, &bot(), "ours")
        .unwrap_err();
    match &err {
        RemoteError::PushRejected { branch, reason } => {
            assert_eq!(branch, "main");
            assert!(reason.contains(&theirs.to_string()), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("rejected"), "{err}");
    assert_eq!(
        oid(&source.head()),
        theirs,
        "the server's branch is untouched"
    );

    // The cache has their commit now, but a commit on the old parent is still refused
    // (never force-pushed).
    assert_eq!(repo.sync(&GitAuth::None).unwrap().commit(), theirs);
    let err = repo
        .commit_and_push(&GitAuth::None, first, files, &bot(), "ours")
        .unwrap_err();
    assert!(matches!(err, RemoteError::PushRejected { .. }), "{err:?}");
    assert_eq!(oid(&source.head()), theirs);

    // Redone on the fetched commit, it goes through.
    let ours = repo
        .commit_and_push(&GitAuth::None, theirs, files, &bot(), "ours")
        .unwrap();
    assert_pushed(&source, ours, theirs, "ours");
    assert_eq!(source.git(&["show", "main:plugins.yaml"]), "theirs");
}

#[test]
fn daemon_push_to_a_branch_moved_back_or_deleted_is_rejected() {
    if !tools_or_skip(
        "daemon_push_to_a_branch_moved_back_or_deleted",
        Need::Daemon,
    ) {
        return;
    }
    let source = SourceRepo::new();
    source.accept_pushes();
    let older = oid(&source.commit(&[("plugins.lock", "v: 1\n")], "older"));
    let newer = oid(&source.commit(&[("plugins.lock", "v: 2\n")], "newer"));
    let daemon = GitDaemon::start_accepting_pushes(&source.root);
    let (_cache, mut repo) = open_main(&source.url_on(&daemon.base_url));
    assert_eq!(repo.sync(&GitAuth::None).unwrap().commit(), newer);
    let files: &[(&str, &[u8])] = &[("plugins.lock", b"v: 3\n")];

    // Force-pushed back to an ancestor: a fast-forward from there, but the commit was made
    // for `newer`, so it is refused.
    source.git(&["reset", "-q", "--hard", &older.to_string()]);
    let err = repo
        .commit_and_push(&GitAuth::None, newer, files, &bot(), "m")
        .unwrap_err();
    assert!(
        matches!(&err, RemoteError::PushRejected { reason, .. } if reason.contains(&older.to_string())),
        "{err:?}"
    );
    assert_eq!(oid(&source.git(&["rev-parse", "main"])), older);

    // Deleted: not re-created.
    source.git(&["checkout", "-q", "-b", "other"]);
    source.git(&["branch", "-q", "-D", "main"]);
    let err = repo
        .commit_and_push(&GitAuth::None, newer, files, &bot(), "m")
        .unwrap_err();
    assert!(
        matches!(&err, RemoteError::PushRejected { reason, .. } if reason.contains("no longer exists")),
        "{err:?}"
    );
    assert_eq!(source.git(&["branch", "--list", "main"]), "");
}

#[test]
fn daemon_push_refused_by_the_server_is_rejected() {
    if !tools_or_skip(
        "daemon_push_refused_by_the_server_is_rejected",
        Need::Daemon,
    ) {
        return;
    }
    let source = SourceRepo::new();
    source.accept_pushes();
    source.decline_pushes();
    let first = oid(&source.commit(&[("plugins.lock", "v: 1\n")], "first"));
    let daemon = GitDaemon::start_accepting_pushes(&source.root);
    let (_cache, mut repo) = open_main(&source.url_on(&daemon.base_url));
    repo.sync(&GitAuth::None).unwrap();
    let err = repo
        .commit_and_push(
            &GitAuth::None,
            first,
            &[("plugins.lock", b"v: 2\n")],
            &bot(),
            "blocked",
        )
        .unwrap_err();
    match &err {
        RemoteError::PushRejected { branch, reason } => {
            assert_eq!(branch, "main");
            assert!(
                reason.contains("refs/heads/main") && reason.contains("declined"),
                "{reason}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(oid(&source.head()), first);
}

#[test]
fn daemon_read_only_server_refuses_the_push() {
    if !tools_or_skip("daemon_read_only_server_refuses_the_push", Need::Daemon) {
        return;
    }
    let source = SourceRepo::new();
    let first = oid(&source.commit(&[("plugins.lock", "v: 1\n")], "first"));
    let daemon = GitDaemon::start(&source.root);
    let url = source.url_on(&daemon.base_url);
    let (_cache, mut repo) = open_main(&url);
    repo.sync(&GitAuth::None).unwrap();
    let err = repo
        .commit_and_push(
            &GitAuth::None,
            first,
            &[("plugins.lock", b"v: 2\n")],
            &bot(),
            "m",
        )
        .unwrap_err();
    // Not a rejection to retry: the server does not take pushes at all.
    assert!(
        matches!(&err, RemoteError::Git { what: "pushing to", url: u, .. } if *u == url),
        "{err:?}"
    );
    assert_eq!(oid(&source.head()), first);
}

#[test]
fn http_commit_and_push_with_basic_auth() {
    if !tools_or_skip("http_commit_and_push_with_basic_auth", Need::HttpBackend) {
        return;
    }
    let source = SourceRepo::new();
    source.accept_pushes();
    let first = oid(&source.commit(&[("team/plugins.lock", "v: 1\n")], "first"));
    let server = HttpGitServer::start(&source.root, USER, PASSWORD);
    let (_cache, mut repo) = open_main(&source.url_on(&server.base_url));
    let auth = basic(PASSWORD);
    assert_eq!(repo.sync(&auth).unwrap().commit(), first);

    // Already the content: no commit, no request.
    server.clear();
    let same: &[(&str, &[u8])] = &[("team/plugins.lock", b"v: 1\n")];
    assert_eq!(
        repo.commit_and_push(&auth, first, same, &bot(), "nothing")
            .unwrap(),
        first
    );
    assert_eq!(server.requests(), Vec::<String>::new());
    assert_eq!(oid(&source.head()), first);

    // A wrong password: one 401, then plugsync gives up; nothing leaks, nothing changes.
    let files: &[(&str, &[u8])] = &[("team/plugins.lock", b"v: 2\n")];
    let wrong = "wrong-battery-s3cret";
    let err = repo
        .commit_and_push(&basic(wrong), first, files, &bot(), "update")
        .unwrap_err();
    assert!(matches!(err, RemoteError::Auth { .. }), "{err:?}");
    let text = format!("{err} {err:?}");
    assert!(
        text.contains("authentication failed for http://127.0.0.1:"),
        "{text}"
    );
    assert!(!text.contains(wrong) && !text.contains(PASSWORD), "{text}");
    assert_eq!(
        server.requests(),
        ["GET /plugins/info/refs?service=git-receive-pack -> 401"]
    );
    assert_eq!(oid(&source.head()), first);

    // The right password: the credentials go with the first request, so the push is the
    // receive-pack advertisement and the pack, both accepted at once.
    server.clear();
    let pushed = repo
        .commit_and_push(&auth, first, files, &bot(), "update the lock")
        .unwrap();
    assert_eq!(
        server.requests(),
        [
            "GET /plugins/info/refs?service=git-receive-pack -> 200",
            "POST /plugins/git-receive-pack -> 200",
        ]
    );
    assert_pushed(&source, pushed, first, "update the lock");
    assert_eq!(source.git(&["show", "main:team/plugins.lock"]), "v: 2");
    assert_eq!(
        repo.sync(&auth).unwrap(),
        SyncOutcome::Fetched {
            previous: Some(first),
            commit: pushed
        }
    );
}

#[test]
fn ssh_commit_and_push_with_key_and_known_hosts() {
    if !tools_or_skip("ssh_commit_and_push_with_key_and_known_hosts", Need::Sshd) {
        return;
    }
    let keys = tempfile::tempdir().unwrap();
    let (private, public) = ssh_keygen(&keys.path().join("client"), "ed25519", "");
    let server = SshServer::start(&private, &public);
    let source = SourceRepo::new();
    source.accept_pushes();
    let first = oid(&source.commit(&[("plugins.lock", "v: 1\n")], "first"));
    let cache = tempfile::tempdir().unwrap();
    let mut repo = RemoteRepo::open(cache.path(), &server.url(&source.path), "main").unwrap();
    let auth = ssh_auth(&server.client_key, &server.known_hosts);
    repo.sync(&auth)
        .unwrap_or_else(|e| panic!("{e}\nsshd log:\n{}", server.log()));

    let pushed = repo
        .commit_and_push(
            &auth,
            first,
            &[("clusters/prod/plugins.lock", b"v: 2\n")],
            &bot(),
            "over ssh",
        )
        .unwrap_or_else(|e| panic!("{e}\nsshd log:\n{}", server.log()));
    assert_pushed(&source, pushed, first, "over ssh");
    assert_eq!(
        source.git(&["show", "main:clusters/prod/plugins.lock"]),
        "v: 2"
    );
    assert_eq!(source.git(&["show", "main:plugins.lock"]), "v: 1");

    // The host key is checked for pushes as for fetches.
    let real_key = server.known_hosts.split_whitespace().nth(2).unwrap();
    let elsewhere = format!("git.example.com ssh-ed25519 {real_key}\n");
    let err = repo
        .commit_and_push(
            &ssh_auth(&private, &elsewhere),
            pushed,
            &[("plugins.lock", b"v: 3\n")],
            &bot(),
            "unverified",
        )
        .unwrap_err();
    assert!(matches!(err, RemoteError::HostKey { .. }), "{err:?}");
    assert_eq!(oid(&source.head()), pushed);
}
