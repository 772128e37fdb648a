//! `plugsync lock` end to end: the real binary against real HTTP servers on loopback.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use assert_cmd::Command;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use sha2::{Digest as _, Sha256};

#[path = "common/fs.rs"]
mod fs;
use fs::copy_dir;

const GOLDEN: &str = "tests/fixtures/packages/langgenius-agent_0.0.14.difypkg";
const GOLDEN_SHA256: &str = "a58786359976dbbc96b353c9fc0e9ced05a3f5ee51995424c527934add9d323f";
const GOLDEN_UID: &str =
    "langgenius/agent:0.0.14@26958a0e80a10655ce73812bdb7c35a66ce7b16f5ac346d298bda17ff85efd1e";

/// A package server whose served bytes can be swapped mid-test, counting requests.
#[derive(Clone)]
struct PackageServer {
    body: Arc<Mutex<Vec<u8>>>,
    requests: Arc<AtomicUsize>,
    addr: SocketAddr,
}

impl PackageServer {
    fn start(body: Vec<u8>) -> PackageServer {
        let body = Arc::new(Mutex::new(body));
        let requests = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = std::sync::mpsc::channel();
        let state = (body.clone(), requests.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                type S = (Arc<Mutex<Vec<u8>>>, Arc<AtomicUsize>);
                async fn package(State((body, n)): State<S>) -> Vec<u8> {
                    n.fetch_add(1, Ordering::SeqCst);
                    body.lock().expect("lock").clone()
                }
                async fn market(
                    State((body, n)): State<S>,
                    UrlPath((author, name, version)): UrlPath<(String, String, String)>,
                ) -> Result<Vec<u8>, StatusCode> {
                    n.fetch_add(1, Ordering::SeqCst);
                    if (author.as_str(), name.as_str(), version.as_str())
                        == ("langgenius", "agent", "0.0.14")
                    {
                        Ok(body.lock().expect("lock").clone())
                    } else {
                        Err(StatusCode::NOT_FOUND)
                    }
                }
                let app = Router::new()
                    .route("/pkg/agent.difypkg", get(package))
                    .route(
                        "/api/v1/plugins/{author}/{name}/{version}/download",
                        get(market),
                    )
                    .with_state(state);
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                tx.send(listener.local_addr().expect("addr")).expect("send");
                axum::serve(listener, app).await.expect("serve");
            });
        });
        let addr = rx.recv().expect("server address");
        PackageServer {
            body,
            requests,
            addr,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/pkg/agent.difypkg", self.addr)
    }

    fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    fn serve(&self, bytes: Vec<u8>) {
        *self.body.lock().expect("lock") = bytes;
    }
}

struct Repo {
    dir: tempfile::TempDir,
    cache: tempfile::TempDir,
}

impl Repo {
    fn new(plugins_yaml: &str) -> Repo {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("plugins.yaml"), plugins_yaml).expect("write");
        Repo {
            dir,
            cache: tempfile::tempdir().expect("cache"),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn lock_path(&self) -> PathBuf {
        self.path().join("plugins.lock")
    }

    fn lock_text(&self) -> Option<String> {
        std::fs::read_to_string(self.lock_path()).ok()
    }

    fn plugsync(&self, args: &[&str]) -> assert_cmd::assert::Assert {
        Command::cargo_bin("plugsync")
            .expect("binary")
            .args(args)
            .arg("--repo")
            .arg(self.path())
            .env("PLUGSYNC_CACHE_DIR", self.cache.path())
            .env_remove("PLUGSYNC_PLUGIN_DIRS")
            .timeout(std::time::Duration::from_secs(60))
            .assert()
    }

    fn new_cache(&mut self) {
        self.cache = tempfile::tempdir().expect("cache");
    }
}

fn set_with(plugins: &str, extra_spec: &str) -> String {
    format!(
        "apiVersion: plugsync.dev/v1alpha1
kind: PluginSet
metadata:
  name: test
spec:
  registry:
    prefix: registry.local:5000/plugins
{extra_spec}  plugins:
{plugins}"
    )
}

fn golden() -> Vec<u8> {
    std::fs::read(GOLDEN).expect("golden package")
}

fn stdout(a: &assert_cmd::assert::Assert) -> String {
    String::from_utf8_lossy(&a.get_output().stdout).into_owned()
}

fn stderr(a: &assert_cmd::assert::Assert) -> String {
    String::from_utf8_lossy(&a.get_output().stderr).into_owned()
}

/// A second, different but valid package: the golden one with a changed README.
fn tampered() -> Vec<u8> {
    use std::io::{Read, Write};
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(golden())).expect("zip");
    let mut out = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for i in 0..archive.len() {
        let mut f = archive.by_index(i).expect("entry");
        let name = f.name().to_string();
        let mut data = Vec::new();
        f.read_to_end(&mut data).expect("read");
        if name == "README.md" {
            data.extend_from_slice(b"\nmalicious change\n");
        }
        out.start_file(name, zip::write::SimpleFileOptions::default())
            .expect("start");
        out.write_all(&data).expect("write");
    }
    out.finish().expect("finish").into_inner()
}

#[test]
fn url_plugin_is_pinned_then_served_from_cache() {
    let server = PackageServer::start(golden());
    let repo = Repo::new(&set_with(&format!("    - url: {}\n", server.url()), ""));

    let first = repo.plugsync(&["lock"]).success();
    assert!(
        stdout(&first).contains("+ langgenius/agent 0.0.14"),
        "{}",
        stdout(&first)
    );
    assert_eq!(server.requests(), 1);
    let lock = repo.lock_text().expect("lock written");
    assert!(lock.contains(&format!("sha256: {GOLDEN_SHA256}")), "{lock}");
    assert!(
        lock.contains(&format!("unique_identifier: {GOLDEN_UID}")),
        "{lock}"
    );
    assert!(
        lock.contains(&format!("source: {}", server.url())),
        "{lock}"
    );
    assert!(lock.contains(&format!(
        "plugin_id: {}",
        plugsync_core::package::plugin_id(GOLDEN_UID)
    )));

    // A second lock downloads nothing and changes nothing.
    let second = repo.plugsync(&["lock"]).success();
    assert!(
        stdout(&second).contains("up to date"),
        "{}",
        stdout(&second)
    );
    assert_eq!(server.requests(), 1, "second lock must come from the cache");
    assert_eq!(repo.lock_text().as_deref(), Some(lock.as_str()));

    repo.plugsync(&["lock", "--locked"]).success();
    assert_eq!(server.requests(), 1);
}

#[test]
fn tampered_package_is_refused_and_nothing_changes() {
    let server = PackageServer::start(golden());
    let mut repo = Repo::new(&set_with(&format!("    - url: {}\n", server.url()), ""));
    repo.plugsync(&["lock"]).success();
    let lock = repo.lock_text().expect("lock");

    server.serve(tampered());
    repo.new_cache();
    let refused = repo.plugsync(&["lock"]).code(2);
    let err = stderr(&refused);
    let actual = plugsync_core::package::sha256_hex(&tampered());
    assert!(err.contains("langgenius/agent"), "names the plugin: {err}");
    assert!(
        err.contains(GOLDEN_SHA256),
        "names the expected digest: {err}"
    );
    assert!(err.contains(&actual), "names the actual digest: {err}");
    assert_eq!(
        repo.lock_text().as_deref(),
        Some(lock.as_str()),
        "lock untouched"
    );

    repo.plugsync(&["lock", "--locked"]).code(2);

    // An explicit update accepts the new bytes.
    let updated = repo
        .plugsync(&["lock", "--update", "langgenius/agent"])
        .success();
    assert!(
        stdout(&updated).contains("~ langgenius/agent 0.0.14 sha256:"),
        "{}",
        stdout(&updated)
    );
    let new_lock = repo.lock_text().expect("lock");
    assert!(new_lock.contains(&actual), "{new_lock}");
    assert!(!new_lock.contains(GOLDEN_SHA256));
}

#[test]
fn locked_mode_reports_missing_and_stale_locks_without_writing() {
    let server = PackageServer::start(golden());
    let repo = Repo::new(&set_with(&format!("    - url: {}\n", server.url()), ""));
    let missing = repo.plugsync(&["lock", "--locked"]).code(1);
    assert!(
        stderr(&missing).contains("does not exist"),
        "{}",
        stderr(&missing)
    );
    assert!(repo.lock_text().is_none());
    assert_eq!(server.requests(), 0, "nothing fetched for a missing lock");

    repo.plugsync(&["lock"]).success();
    let lock = repo.lock_text().expect("lock");
    // Declare a second plugin: the lock no longer matches.
    let hello = repo.path().join("hello");
    copy_dir(Path::new("examples/plugins/hello-world"), &hello);
    std::fs::write(
        repo.path().join("plugins.yaml"),
        set_with(
            &format!("    - url: {}\n    - path: hello\n", server.url()),
            "",
        ),
    )
    .expect("write");
    let stale = repo.plugsync(&["lock", "--locked"]).code(1);
    assert!(
        stderr(&stale).contains("+ plugsync/hello-world 0.1.0"),
        "{}",
        stderr(&stale)
    );
    assert_eq!(repo.lock_text().as_deref(), Some(lock.as_str()));

    repo.plugsync(&["lock"]).success();
    repo.plugsync(&["lock", "--locked"]).success();

    // Editing the in-repo plugin re-pins it with `lock`, and `--locked` notices.
    std::fs::write(hello.join("README.md"), "changed\n").expect("write");
    let changed = repo.plugsync(&["lock", "--locked"]).code(1);
    assert!(
        stderr(&changed).contains("~ plugsync/hello-world 0.1.0 sha256:"),
        "{}",
        stderr(&changed)
    );
    repo.plugsync(&["lock"]).success();
    repo.plugsync(&["lock", "--locked"]).success();
}

#[test]
fn marketplace_plugins_resolve_through_the_download_endpoint() {
    let server = PackageServer::start(golden());
    let sources = format!("  sources:\n    marketplace: {}\n", server.base());
    let repo = Repo::new(&set_with(
        "    - marketplace: langgenius/agent\n      version: 0.0.14\n",
        &sources,
    ));
    repo.plugsync(&["lock"]).success();
    let lock = repo.lock_text().expect("lock");
    let expected = format!(
        "source: {}/api/v1/plugins/langgenius/agent/0.0.14/download",
        server.base()
    );
    assert!(lock.contains(&expected), "{lock}");

    // A version the marketplace does not have is a clear fetch error.
    let missing = Repo::new(&set_with(
        "    - marketplace: langgenius/agent\n      version: 9.9.9\n",
        &sources,
    ));
    let out = missing.plugsync(&["lock"]).code(2);
    assert!(stderr(&out).contains("404"), "{}", stderr(&out));
    assert!(missing.lock_text().is_none());
}

#[test]
fn marketplace_serving_another_plugin_is_refused() {
    // For a marketplace entry the package's manifest must match the declaration.
    let server = PackageServer::start(golden());
    let repo = Repo::new(&set_with(
        "    - marketplace: langgenius/agent\n      version: 0.0.14\n",
        &format!("  sources:\n    marketplace: {}\n", server.base()),
    ));
    server.serve(golden_with_manifest_version("0.0.15"));
    let out = repo.plugsync(&["lock"]).code(2);
    let err = stderr(&out);
    assert!(err.contains("langgenius/agent:0.0.15"), "{err}");
    assert!(err.contains("declares langgenius/agent:0.0.14"), "{err}");
    assert!(repo.lock_text().is_none());
}

fn golden_with_manifest_version(version: &str) -> Vec<u8> {
    use std::io::{Read, Write};
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(golden())).expect("zip");
    let mut out = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for i in 0..archive.len() {
        let mut f = archive.by_index(i).expect("entry");
        let name = f.name().to_string();
        let mut data = Vec::new();
        f.read_to_end(&mut data).expect("read");
        if name == "manifest.yaml" {
            data = String::from_utf8(data)
                .expect("utf8")
                .replacen("version: 0.0.14", &format!("version: {version}"), 1)
                .into_bytes();
        }
        out.start_file(name, zip::write::SimpleFileOptions::default())
            .expect("start");
        out.write_all(&data).expect("write");
    }
    out.finish().expect("finish").into_inner()
}

#[test]
fn invalid_plugins_yaml_fetches_and_writes_nothing() {
    let server = PackageServer::start(golden());
    let repo = Repo::new(&set_with(
        &format!("    - url: {}\n      path: also/a/path\n", server.url()),
        "",
    ));
    let out = repo.plugsync(&["lock"]).code(2);
    let err = stderr(&out);
    assert!(err.contains("plugins.yaml:9:7: spec.plugins[0]:"), "{err}");
    assert!(err.contains("url and path"), "{err}");
    assert_eq!(server.requests(), 0);
    assert!(repo.lock_text().is_none());
}

#[test]
fn the_bundled_example_locks_offline_and_matches_the_committed_lock() {
    let tmp = tempfile::tempdir().expect("tempdir");
    copy_dir(Path::new("examples"), tmp.path());
    let committed =
        std::fs::read_to_string(tmp.path().join("plugins.lock")).expect("committed lock");
    std::fs::remove_file(tmp.path().join("plugins.lock")).expect("rm");
    let cache = tempfile::tempdir().expect("cache");
    Command::cargo_bin("plugsync")
        .expect("binary")
        .args(["lock", "--repo"])
        .arg(tmp.path())
        .env("PLUGSYNC_CACHE_DIR", cache.path())
        .assert()
        .success();
    let regenerated = std::fs::read_to_string(tmp.path().join("plugins.lock")).expect("lock");
    assert_eq!(
        regenerated, committed,
        "packing is deterministic across paths and machines"
    );
    assert!(regenerated.contains(GOLDEN_UID));
}

const EXAMPLE_DIR_SHA256: &str = "270c657d676f76b780a8f823fda8b52f50352b46c3edda4baeee6183a9e0044f";

/// `plugsync lock --locked` on a copy of the bundled example with `cache` as the package
/// cache: whether the lock still matches what the repository resolves to.
fn example_locked(repo: &Path, cache: &Path) -> assert_cmd::assert::Assert {
    Command::cargo_bin("plugsync")
        .expect("binary")
        .args(["lock", "--locked", "--repo"])
        .arg(repo)
        .env("PLUGSYNC_CACHE_DIR", cache)
        .assert()
}

/// The records of packed plugin directories in `cache`: (tree id, the sha256 it packed to).
fn packed_records(cache: &Path) -> Vec<(String, String)> {
    let dir = cache.join("packed/v1");
    let mut records: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let e = e.expect("entry");
            let sha = std::fs::read_to_string(e.path()).expect("record");
            (e.file_name().to_string_lossy().into_owned(), sha)
        })
        .collect();
    records.sort();
    records
}

/// A plugin directory is packed once: the cache records which package its git tree packed
/// to, and the next run reads that package instead of packing again (what keeps the
/// pull-request diff of a repository of committed directories fast). The record is read:
/// pointed at another package in the cache, the directory resolves to that one, and the
/// lock no longer matches.
#[test]
fn a_plugin_directory_packed_before_is_read_from_the_cache() {
    let repo = tempfile::tempdir().expect("tempdir");
    copy_dir(Path::new("examples"), repo.path());
    let cache = tempfile::tempdir().expect("cache");
    example_locked(repo.path(), cache.path()).success();
    let records = packed_records(cache.path());
    assert_eq!(
        records.len(),
        1,
        "one plugin directory in the example: {records:?}"
    );
    let (tree, sha) = &records[0];
    assert_eq!(
        sha, EXAMPLE_DIR_SHA256,
        "the record names the locked package"
    );

    std::fs::write(cache.path().join("packed/v1").join(tree), GOLDEN_SHA256).expect("write");
    let out = example_locked(repo.path(), cache.path()).failure();
    // The directory (spec.plugins[0]) now reads as the committed agent package.
    assert!(
        stderr(&out)
            .contains("this package is langgenius/agent, already declared at spec.plugins[0]"),
        "the directory resolved through the record: {}",
        stderr(&out)
    );
}

/// A record is only a hint: one naming a damaged cache entry, or holding garbage, costs a
/// packing and is written again; the lock still matches.
#[test]
fn a_damaged_packed_record_or_entry_falls_back_to_packing() {
    let repo = tempfile::tempdir().expect("tempdir");
    copy_dir(Path::new("examples"), repo.path());
    let cache = tempfile::tempdir().expect("cache");
    example_locked(repo.path(), cache.path()).success();
    let (tree, _) = packed_records(cache.path()).remove(0);

    let entry = cache.path().join("sha256").join(EXAMPLE_DIR_SHA256);
    std::fs::write(&entry, b"not the package").expect("damage the entry");
    example_locked(repo.path(), cache.path()).success();
    assert_eq!(
        hex::encode(Sha256::digest(std::fs::read(&entry).expect("entry"))),
        EXAMPLE_DIR_SHA256,
        "the entry was packed and stored again"
    );

    let record = cache.path().join("packed/v1").join(&tree);
    std::fs::write(&record, "../../etc/passwd").expect("garbage record");
    example_locked(repo.path(), cache.path()).success();
    assert_eq!(
        std::fs::read_to_string(&record).expect("record"),
        EXAMPLE_DIR_SHA256,
        "the record was written again"
    );
}

/// A plugins.lock written before plugsync printed YAML with serde-saphyr (same pins, the
/// old formatting: `version: 0.0.14` unquoted) is up to date for `lock --locked`, which
/// compares what the lock says, not its bytes; `plugsync lock` then rewrites it once in
/// the new format, with the same content.
#[test]
fn a_lock_in_the_old_format_is_up_to_date_and_rewritten_once() {
    let tmp = tempfile::tempdir().expect("tempdir");
    copy_dir(Path::new("examples"), tmp.path());
    let old = std::fs::read_to_string("tests/fixtures/lock-before-serde-saphyr/plugins.lock")
        .expect("old lock");
    std::fs::write(tmp.path().join("plugins.lock"), &old).expect("write old lock");
    let cache = tempfile::tempdir().expect("cache");
    let lock = |args: &[&str]| {
        Command::cargo_bin("plugsync")
            .expect("binary")
            .arg("lock")
            .args(args)
            .arg("--repo")
            .arg(tmp.path())
            .env("PLUGSYNC_CACHE_DIR", cache.path())
            .assert()
    };
    let checked = lock(&["--locked"]).success();
    assert!(
        stdout(&checked).contains("up to date"),
        "{}",
        stdout(&checked)
    );
    let still = std::fs::read_to_string(tmp.path().join("plugins.lock")).expect("lock");
    assert_eq!(still, old, "--locked writes nothing");

    lock(&[]).success();
    let rewritten = std::fs::read_to_string(tmp.path().join("plugins.lock")).expect("lock");
    let committed = std::fs::read_to_string("examples/plugins.lock").expect("example lock");
    assert_eq!(rewritten, committed, "rewritten in the current format");
    assert_ne!(rewritten, old, "the fixture holds the old bytes");
    lock(&["--locked"]).success();
}

#[test]
fn update_of_an_unknown_plugin_is_an_error() {
    let server = PackageServer::start(golden());
    let repo = Repo::new(&set_with(&format!("    - url: {}\n", server.url()), ""));
    let out = repo
        .plugsync(&["lock", "--update", "nobody/nothing"])
        .code(2);
    assert!(stderr(&out).contains("nobody/nothing"), "{}", stderr(&out));
}

/// Installs the demo external client and a package next to it in a fresh folder.
fn demo_client_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("plugin dir");
    let script = dir.path().join("plugsync-source-demo");
    std::fs::copy(
        "tests/fixtures/source-plugins/plugsync-source-demo",
        &script,
    )
    .expect("copy");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::create_dir(dir.path().join("packages")).expect("mkdir");
    std::fs::write(dir.path().join("packages/agent.difypkg"), golden()).expect("write");
    dir
}

#[test]
fn external_source_client_resolves_its_scheme_through_lock() {
    let clients = demo_client_dir();
    let repo = Repo::new(&set_with("    - url: demo://agent.difypkg\n", ""));
    let dir = clients.path().to_str().expect("utf8 path");
    repo.plugsync(&["lock", "--plugin-dir", dir]).success();
    let lock = repo.lock_text().expect("lock");
    assert!(lock.contains("source: demo://agent.difypkg"), "{lock}");
    assert!(lock.contains(GOLDEN_SHA256), "{lock}");

    // Without the client the scheme is unknown: a clear error listing the known schemes.
    let fresh = Repo::new(&set_with("    - url: demo://agent.difypkg\n", ""));
    let out = fresh.plugsync(&["lock"]).code(2);
    assert!(stderr(&out).contains("demo"), "{}", stderr(&out));
    assert!(stderr(&out).contains("https"), "{}", stderr(&out));
}

#[test]
fn sources_lists_in_tree_and_external_clients() {
    let clients = demo_client_dir();
    let out = Command::cargo_bin("plugsync")
        .expect("binary")
        .args(["sources", "-o", "json", "--plugin-dir"])
        .arg(clients.path())
        .assert()
        .success();
    let list: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).expect("json");
    let schemes: Vec<(&str, &str)> = list
        .as_array()
        .expect("array")
        .iter()
        .map(|s| {
            (
                s["scheme"].as_str().expect("scheme"),
                s["origin"].as_str().expect("origin"),
            )
        })
        .collect();
    for expected in [
        ("file", "in-tree"),
        ("http", "in-tree"),
        ("https", "in-tree"),
        ("oci", "in-tree"),
        ("oci+http", "in-tree"),
        ("marketplace", "in-tree"),
        ("demo", "external"),
    ] {
        assert!(
            schemes.contains(&expected),
            "{expected:?} missing from {schemes:?}"
        );
    }
    let demo = list
        .as_array()
        .expect("array")
        .iter()
        .find(|s| s["scheme"] == "demo")
        .expect("demo");
    assert_eq!(demo["attributes"]["version"], "1.2.3");
    assert!(demo["path"]
        .as_str()
        .expect("path")
        .ends_with("plugsync-source-demo"));
}

#[test]
fn package_inspect_prints_the_golden_identity() {
    let out = Command::cargo_bin("plugsync")
        .expect("binary")
        .args(["package", "inspect", GOLDEN, "-o", "json"])
        .assert()
        .success();
    let info: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).expect("json");
    assert_eq!(info["unique_identifier"], GOLDEN_UID);
    assert_eq!(info["sha256"], GOLDEN_SHA256);
    // Computed independently: python3 -c "import hashlib; print(hashlib.sha256(UID.encode()).hexdigest()[:32])"
    assert_eq!(info["plugin_id"], "d62e5e95afbb7da9993d56f58e120ce5");
}

/// The lock `plugsync lock` wrote for `repo` (a golden URL plugin from `server`), with
/// its one entry's lines, for tests that damage it.
fn locked_repo(server: &PackageServer) -> (Repo, String) {
    let repo = Repo::new(&set_with(&format!("    - url: {}\n", server.url()), ""));
    repo.plugsync(&["lock"]).success();
    let lock = repo.lock_text().expect("lock");
    (repo, lock)
}

/// A hand-damaged lock (an unknown field, a stray line that breaks the YAML) made `lock`
/// fail with the very error it was asked to fix. Now `lock` repairs it: the readable pin
/// is kept (the package must still hash to it), and the rest is written afresh.
#[test]
fn lock_repairs_a_damaged_lock_keeping_every_readable_pin() {
    let server = PackageServer::start(golden());
    let (mut repo, good) = locked_repo(&server);
    let damaged = good
        .replacen(
            "kind: PluginLock\n",
            "kind: PluginLock\nnotes: edited by hand\n",
            1,
        )
        .replacen("  plugin_id:", "  checksum_was: [unclosed\n  plugin_id:", 1);
    std::fs::write(repo.lock_path(), &damaged).expect("damage");

    // Anything that only reads the lock names the damage and says what to run.
    let refused = repo.plugsync(&["lock", "--locked"]).code(2);
    let err = stderr(&refused);
    assert!(err.contains("plugins.lock:"), "{err}");
    assert!(
        err.contains(
            "run `plugsync lock` to repair plugins.lock: it keeps every pin it can still read"
        ),
        "{err}"
    );
    assert_eq!(repo.lock_text().as_deref(), Some(damaged.as_str()));

    // The pin is kept: with the package gone from the cache and the server now serving
    // other bytes, the repair refuses them, as for any pinned plugin.
    server.serve(tampered());
    repo.new_cache();
    let out = repo.plugsync(&["lock"]).code(2);
    let err = stderr(&out);
    assert!(err.contains("does not load"), "{err}");
    assert!(
        err.contains(&format!("plugins.lock pins sha256:{GOLDEN_SHA256}")),
        "{err}"
    );
    assert_eq!(
        repo.lock_text().as_deref(),
        Some(damaged.as_str()),
        "nothing written"
    );

    // Served the pinned bytes again, the repaired lock is the lock as it was.
    server.serve(golden());
    let out = repo.plugsync(&["lock"]).success();
    assert!(
        stdout(&out).contains("repaired and written"),
        "{}",
        stdout(&out)
    );
    assert_eq!(repo.lock_text().as_deref(), Some(good.as_str()));
    repo.plugsync(&["lock", "--locked"]).success();
}

/// An entry whose `sha256` cannot be read has no pin left to keep: `lock` resolves that
/// plugin afresh, and says so on stderr rather than losing the pin silently.
#[test]
fn a_pin_that_cannot_be_read_is_reported_lost() {
    let server = PackageServer::start(golden());
    let (repo, good) = locked_repo(&server);
    std::fs::write(
        repo.lock_path(),
        good.replacen(&format!("sha256: {GOLDEN_SHA256}"), "sha256: a5878635", 1),
    )
    .expect("damage");
    let out = repo.plugsync(&["lock"]).success();
    let err = stderr(&out);
    assert!(err.contains("plugins.lock:5:1: plugins[0]: langgenius/agent: `sha256` is not 64 lowercase hex characters; dropped: its pin is lost"), "{err}");
    assert!(
        err.contains(&format!("pins what {} serves now", server.url())),
        "{err}"
    );
    assert_eq!(repo.lock_text().as_deref(), Some(good.as_str()));
}

/// Conflict markers in plugins.lock (two branches each adding a plugin) are named as a
/// merge conflict with their lines; `lock` resolves it by taking the entries of both
/// sides, keeping the remote pin it found there.
#[test]
fn a_merge_conflict_in_the_lock_is_named_and_resolved_by_lock() {
    let server = PackageServer::start(golden());
    let (mut repo, url_only) = locked_repo(&server);
    // The other branch: only the in-repo plugin.
    copy_dir(
        Path::new("examples/plugins/hello-world"),
        &repo.path().join("hello"),
    );
    let both = set_with(
        &format!("    - url: {}\n    - path: hello\n", server.url()),
        "",
    );
    std::fs::write(repo.path().join("plugins.yaml"), &both).expect("write");
    repo.plugsync(&["lock"]).success();
    let merged = repo.lock_text().expect("lock");
    let hello_entry = merged
        .split("\n- ")
        .find(|e| e.starts_with("name: plugsync/hello-world"))
        .expect("hello entry");
    let agent_entry = url_only.split("\n- ").nth(1).expect("agent entry");
    let conflicted = format!(
        "{}<<<<<<< HEAD\n- {agent_entry}=======\n- {hello_entry}>>>>>>> add-hello\n",
        url_only.split("- name:").next().expect("head")
    );
    std::fs::write(repo.lock_path(), &conflicted).expect("conflict");
    let first = conflicted
        .lines()
        .position(|l| l.starts_with("<<<<<<<"))
        .expect("marker")
        + 1;
    let middle = conflicted
        .lines()
        .position(|l| l == "=======")
        .expect("marker")
        + 1;
    let end = conflicted
        .lines()
        .position(|l| l.starts_with(">>>>>>>"))
        .expect("marker")
        + 1;
    let named = format!(
        "merge conflict: git conflict markers at lines {first} (<<<<<<<), {middle} (=======) and {end} (>>>>>>>)"
    );

    // Reading it names the conflict and what resolves it.
    let refused = repo.plugsync(&["validate"]).code(2);
    let err = stderr(&refused);
    assert!(
        err.contains(&format!("plugins.lock:{first}:1: {named}")),
        "{err}"
    );
    assert!(
        err.contains("run `plugsync lock` to resolve the merge conflict"),
        "{err}"
    );
    let refused = repo.plugsync(&["render"]).code(2);
    assert!(stderr(&refused).contains(&named), "{}", stderr(&refused));

    // `lock` takes both sides; the remote pin holds (other bytes are refused) ...
    server.serve(tampered());
    repo.new_cache();
    let out = repo.plugsync(&["lock"]).code(2);
    assert!(
        stderr(&out).contains(&format!("plugins.lock pins sha256:{GOLDEN_SHA256}")),
        "{}",
        stderr(&out)
    );
    // ... and with the pinned bytes served, the lock is the one both branches meant.
    server.serve(golden());
    let out = repo.plugsync(&["lock"]).success();
    assert!(stderr(&out).contains(&named), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("has a merge conflict"),
        "{}",
        stderr(&out)
    );
    assert_eq!(repo.lock_text().as_deref(), Some(merged.as_str()));
    assert!(
        !stdout(&out).lines().any(|l| l.starts_with(['+', '-', '~'])),
        "nothing changes: {}",
        stdout(&out)
    );
}

/// Both sides of a conflict pin the same URL to different packages (one branch ran
/// `lock --update` after the server changed): `lock` fetches it and keeps the side whose
/// package the source serves; serving neither is a digest mismatch naming both.
#[test]
fn a_plugin_pinned_differently_by_the_two_sides_keeps_what_its_source_serves() {
    let server = PackageServer::start(golden());
    let (mut repo, ours) = locked_repo(&server);
    server.serve(tampered());
    repo.plugsync(&["lock", "--update", "langgenius/agent"])
        .success();
    let theirs = repo.lock_text().expect("lock");
    let entry = |lock: &str| lock.split("\n- ").nth(1).expect("entry").to_string();
    let conflicted = format!(
        "{}<<<<<<< HEAD\n- {}=======\n- {}>>>>>>> update-agent\n",
        ours.split("- name:").next().expect("head"),
        entry(&ours),
        entry(&theirs)
    );
    let tampered_sha = plugsync_core::package::sha256_hex(&tampered());

    std::fs::write(repo.lock_path(), &conflicted).expect("conflict");
    repo.new_cache();
    let requests = server.requests();
    let out = repo.plugsync(&["lock"]).success();
    assert_eq!(
        server.requests(),
        requests + 1,
        "re-checked against the source"
    );
    assert!(
        stderr(&out).contains("langgenius/agent is pinned to different packages"),
        "{}",
        stderr(&out)
    );
    assert!(
        stdout(&out).contains(&format!(
            "langgenius/agent: kept sha256:{}",
            &tampered_sha[..12]
        )),
        "{}",
        stdout(&out)
    );
    assert_eq!(repo.lock_text().as_deref(), Some(theirs.as_str()));

    // The same conflict while the server serves a third package: refused, naming both.
    std::fs::write(repo.lock_path(), &conflicted).expect("conflict");
    server.serve(golden_with_manifest_version("0.0.14-rc1"));
    repo.new_cache();
    let out = repo.plugsync(&["lock"]).code(2);
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "plugins.lock pins sha256:{GOLDEN_SHA256} or sha256:{tampered_sha}"
        )),
        "{err}"
    );
    assert_eq!(repo.lock_text().as_deref(), Some(conflicted.as_str()));
}

/// `validate` checks the lock against plugins.yaml offline: a new plugin, a changed
/// in-repo plugin, a missing or corrupt `path:` package and a hand-edited digest are all
/// found, and not one request reaches the package server.
#[test]
fn validate_finds_stale_locks_bad_packages_and_edited_digests_without_fetching() {
    let server = PackageServer::start(golden());
    let (repo, good) = locked_repo(&server);
    let requests = server.requests();
    let out = repo.plugsync(&["validate"]).success();
    assert!(
        stdout(&out).contains("plugins.lock: valid, up to date (1 plugins)"),
        "{}",
        stdout(&out)
    );

    // A plugin declared and not pinned: out of date (exit 1), saying what to run.
    let hello = repo.path().join("hello");
    copy_dir(Path::new("examples/plugins/hello-world"), &hello);
    let with_hello = set_with(
        &format!("    - url: {}\n    - path: hello\n", server.url()),
        "",
    );
    std::fs::write(repo.path().join("plugins.yaml"), &with_hello).expect("write");
    let stale = repo.plugsync(&["validate"]).code(1);
    let err = stderr(&stale);
    assert!(err.contains("+ plugsync/hello-world 0.1.0"), "{err}");
    assert!(err.contains("run `plugsync lock` and commit it"), "{err}");
    repo.plugsync(&["lock"]).success();
    repo.plugsync(&["validate"]).success();

    // The in-repo plugin changed: out of date.
    std::fs::write(hello.join("README.md"), "changed\n").expect("write");
    let stale = repo.plugsync(&["validate"]).code(1);
    assert!(
        stderr(&stale).contains("~ plugsync/hello-world 0.1.0 sha256:"),
        "{}",
        stderr(&stale)
    );
    repo.plugsync(&["lock"]).success();

    // Its manifest broken: an error at the plugins.yaml line and field that declares it.
    let manifest = std::fs::read_to_string(hello.join("manifest.yaml")).expect("manifest");
    std::fs::write(
        hello.join("manifest.yaml"),
        manifest.replacen("version:", "verzion:", 1),
    )
    .expect("write");
    let bad = repo.plugsync(&["validate"]).code(2);
    let err = stderr(&bad);
    assert!(
        err.contains("plugins.yaml:10:13: spec.plugins[1].path: path:hello: "),
        "{err}"
    );
    assert!(err.contains("manifest.yaml"), "{err}");
    std::fs::write(hello.join("manifest.yaml"), &manifest).expect("write");

    // Gone: the same place.
    std::fs::rename(&hello, repo.path().join("moved")).expect("move");
    let gone = repo.plugsync(&["validate"]).code(2);
    let err = stderr(&gone);
    assert!(
        err.contains(
            "plugins.yaml:10:13: spec.plugins[1].path: path:hello: `hello` does not exist"
        ),
        "{err}"
    );
    std::fs::rename(repo.path().join("moved"), &hello).expect("move back");
    repo.plugsync(&["validate"]).success();

    // A remote pin edited by hand to another package's digest (in the cache here) is
    // found at its plugins.lock line.
    let locked = repo.lock_text().expect("lock");
    let tampered_sha = plugsync_core::package::sha256_hex(&tampered());
    let cache = plugsync_core::resolve::cache::Cache::open(repo.cache.path()).expect("cache");
    cache.put(&tampered()).expect("put");
    let edited = locked.replacen(GOLDEN_SHA256, &tampered_sha, 1);
    std::fs::write(repo.lock_path(), &edited).expect("edit");
    let line = edited
        .lines()
        .position(|l| l.contains(&tampered_sha))
        .expect("line")
        + 1;
    let bad = repo.plugsync(&["validate"]).code(2);
    let err = stderr(&bad);
    assert!(
        err.contains(&format!("plugins.lock:{line}:11: plugins[0].sha256: this digest is the package langgenius/agent:0.0.14@")),
        "{err}"
    );
    assert!(err.contains("the entry was edited by hand"), "{err}");
    // Not cached, it cannot be checked offline: validate says so, and passes.
    let mut fresh = repo;
    fresh.new_cache();
    let out = fresh.plugsync(&["validate"]).success();
    assert!(
        stderr(&out).contains("not checked against their packages, which are not in the cache"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("langgenius/agent"),
        "{}",
        stderr(&out)
    );

    assert_eq!(server.requests(), requests, "validate fetched something");
    drop(good);
}

/// A package that cannot be read names the plugins.yaml line and field of the plugin it
/// was declared for, as a configuration error would.
#[test]
fn package_errors_name_the_declaring_line_and_field() {
    let server = PackageServer::start(b"not a package".to_vec());
    let repo = Repo::new(&set_with(&format!("    - url: {}\n", server.url()), ""));
    let out = repo.plugsync(&["lock"]).code(2);
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "plugins.yaml:9:12: spec.plugins[0].url: {}: not a valid zip archive",
            server.url()
        )),
        "{err}"
    );

    let missing = Repo::new(&set_with(
        &format!("    - url: {}\n    - path: plugins/nothing\n", server.url()),
        "",
    ));
    server.serve(golden());
    let out = missing.plugsync(&["lock"]).code(2);
    assert!(
        stderr(&out).contains("plugins.yaml:10:13: spec.plugins[1].path: path:plugins/nothing: `plugins/nothing` does not exist"),
        "{}",
        stderr(&out)
    );
}

/// `render` on a stale lock fails (exit 1) saying what to run, rather than rendering
/// packages nobody pinned; without a lock it renders with a warning, or with `--locked`
/// fails as `lock --locked` does.
#[test]
fn render_refuses_a_stale_lock() {
    let tmp = tempfile::tempdir().expect("tempdir");
    copy_dir(Path::new("examples"), tmp.path());
    let cache = tempfile::tempdir().expect("cache");
    let render = |args: &[&str]| {
        Command::cargo_bin("plugsync")
            .expect("binary")
            .arg("render")
            .args(args)
            .arg("--repo")
            .arg(tmp.path())
            .env("PLUGSYNC_CACHE_DIR", cache.path())
            .assert()
    };
    let ok = render(&[]).success();
    assert!(stdout(&ok).contains("kind: Plugin"), "{}", stdout(&ok));

    std::fs::write(
        tmp.path().join("plugins/hello-world/README.md"),
        "changed\n",
    )
    .expect("write");
    let stale = render(&[]).code(1);
    let err = stderr(&stale);
    assert!(err.contains("plugins.lock is out of date"), "{err}");
    assert!(
        err.contains("~ plugsync/hello-world 0.1.0 sha256:"),
        "{err}"
    );
    assert!(err.contains("run `plugsync lock` and commit it"), "{err}");
    assert!(
        stdout(&stale).is_empty(),
        "nothing rendered: {}",
        stdout(&stale)
    );

    std::fs::remove_file(tmp.path().join("plugins.lock")).expect("rm");
    let missing = render(&[]).success();
    assert!(
        stderr(&missing).contains("does not exist; run `plugsync lock`"),
        "{}",
        stderr(&missing)
    );
    assert!(stdout(&missing).contains("kind: Plugin"));
    let locked = render(&["--locked"]).code(1);
    assert!(
        stderr(&locked).contains("does not exist; run `plugsync lock`"),
        "{}",
        stderr(&locked)
    );
    assert!(stdout(&locked).is_empty());
}

/// A lock emptied by an editor or a bad checkout holds no pin: `lock` says why it does not
/// load and writes it afresh.
#[test]
fn an_emptied_lock_is_written_afresh_saying_why() {
    let server = PackageServer::start(golden());
    let (repo, good) = locked_repo(&server);
    std::fs::write(repo.lock_path(), "\n").expect("empty");
    let refused = repo.plugsync(&["lock", "--locked"]).code(2);
    assert!(
        stderr(&refused).contains("the file is empty"),
        "{}",
        stderr(&refused)
    );
    let out = repo.plugsync(&["lock"]).success();
    let err = stderr(&out);
    assert!(err.contains("plugins.lock: the file is empty"), "{err}");
    assert!(err.contains("0 pins kept"), "{err}");
    assert!(
        stdout(&out).contains("+ langgenius/agent 0.0.14"),
        "{}",
        stdout(&out)
    );
    assert_eq!(repo.lock_text().as_deref(), Some(good.as_str()));
}
