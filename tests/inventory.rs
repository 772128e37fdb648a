//! The private plugin inventory end to end: the real `plugsync` binary against a real OCI
//! registry (Debian's `docker-registry` on loopback), requests counted from the registry's
//! own access log. Without `docker-registry` these tests skip (fail with
//! `PLUGSYNC_REQUIRE_REGISTRY_TESTS=1`).

use std::path::{Path, PathBuf};
use std::process::Output;

use assert_cmd::Command;
use serde_json::Value;

#[path = "common/registry_fixture.rs"]
mod registry_fixture;
use registry_fixture::RegistryServer;

#[path = "common/package_fixtures.rs"]
#[allow(dead_code)]
mod package_fixtures;
use package_fixtures::ZipFixture;

#[path = "common/fs.rs"]
mod fs;

/// The real package Dify signed.
const SIGNED: &str = "examples/packages/langgenius-agent_0.0.14.difypkg";

fn registry_or_skip(test: &str) -> Option<RegistryServer> {
    // skopeo is not needed here, only the registry.
    if registry_fixture::which("docker-registry").is_none() {
        registry_fixture::tools_or_skip(test, false);
        return None;
    }
    Some(RegistryServer::start_with_access_log())
}

/// A P-256 key pair written as PEM (PKCS#8 private, SPKI public), as openssl writes them.
fn key_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    use p256::pkcs8::{EncodePrivateKey as _, EncodePublicKey as _, LineEnding};
    let secret = p256::SecretKey::from_slice(&rand::random::<[u8; 32]>()).expect("a P-256 scalar");
    let private = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub"));
    std::fs::write(
        &private,
        secret.to_pkcs8_pem(LineEnding::LF).expect("pem").as_bytes(),
    )
    .expect("write key");
    std::fs::write(
        &public,
        secret
            .public_key()
            .to_public_key_pem(LineEnding::LF)
            .expect("pem"),
    )
    .expect("write key");
    (private, public)
}

/// An unsigned package `author/name` at `version`, its description `description`.
fn package(dir: &Path, author: &str, name: &str, version: &str, description: &str) -> PathBuf {
    let manifest = package_fixtures::MANIFEST
        .replace("version: 0.1.0", &format!("version: {version}"))
        .replace("author: plugsync", &format!("author: {author}"))
        .replace("name: hello", &format!("name: {name}"))
        .replace("Says hello", description);
    let bytes = ZipFixture::new()
        .file("manifest.yaml", manifest)
        .file("main.py", format!("print('{name} {version}')\n"))
        .build();
    let path = dir.join(format!("{author}-{name}_{version}.difypkg"));
    std::fs::write(&path, bytes).expect("write package");
    path
}

/// One test's registry, keys, cache and scratch folder.
struct Env {
    registry: RegistryServer,
    dir: tempfile::TempDir,
    cache: tempfile::TempDir,
    key: PathBuf,
    public: PathBuf,
}

impl Env {
    fn new(test: &str) -> Option<Env> {
        Some(Env::with_registry(registry_or_skip(test)?))
    }

    /// An environment around `registry`; `DOCKER_CONFIG` is `<dir>/docker` (empty).
    fn with_registry(registry: RegistryServer) -> Env {
        let dir = tempfile::tempdir().expect("dir");
        let (key, public) = key_pair(dir.path(), "publisher");
        Env {
            registry,
            dir,
            cache: tempfile::tempdir().expect("cache"),
            key,
            public,
        }
    }

    fn inventory(&self) -> String {
        format!("oci://{}/dify/inventory:latest", self.registry.host)
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::cargo_bin("plugsync")
            .expect("binary")
            .args(args)
            .env("PLUGSYNC_CACHE_DIR", self.cache.path())
            .env("DOCKER_CONFIG", self.dir.path().join("docker"))
            .env_remove("PLUGSYNC_INVENTORY")
            .env_remove("PLUGSYNC_INVENTORY_KEY")
            .timeout(std::time::Duration::from_secs(60))
            .output()
            .expect("run plugsync")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "plugsync {args:?} failed:\n{}\n{}\nregistry log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.registry.log()
        );
        String::from_utf8(out.stdout).expect("utf-8")
    }

    /// `plugsync inventory publish`, its JSON report.
    fn publish(&self, packages: &[&Path]) -> Value {
        let mut args = vec![
            "inventory".to_owned(),
            "publish".into(),
            "--insecure".into(),
            "--to".into(),
            self.inventory(),
            "--key".into(),
            self.key.display().to_string(),
            "-o".into(),
            "json".into(),
        ];
        args.extend(packages.iter().map(|p| p.display().to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        serde_json::from_str(&self.ok(&args)).expect("json report")
    }

    /// A reading command (`search`, `groups`, `outdated`) with the inventory flags.
    fn read_args(&self, command: &[&str], extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = command.iter().map(|s| s.to_string()).collect();
        args.extend([
            "--insecure".into(),
            "--inventory".into(),
            self.inventory(),
            "--inventory-key".into(),
            self.public.display().to_string(),
        ]);
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    fn read_json(&self, command: &[&str], extra: &[&str]) -> Value {
        let mut args = self.read_args(command, extra);
        args.extend(["-o".into(), "json".into()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        serde_json::from_str(&self.ok(&args)).expect("json")
    }

    fn read_fails(&self, command: &[&str], extra: &[&str]) -> String {
        let args = self.read_args(command, extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.run(&args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "plugsync {args:?} should fail; stdout:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stderr).expect("utf-8")
    }

    /// Requests the registry answered since the last call.
    fn requests_since(&self, mark: &mut usize) -> Vec<(String, String, u16)> {
        let all = self.registry.requests();
        let new = all[*mark..].to_vec();
        *mark = all.len();
        new
    }

    /// The file of blob `digest` in the registry's storage.
    fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.registry
            .storage
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

fn writes(requests: &[(String, String, u16)]) -> Vec<&(String, String, u16)> {
    requests
        .iter()
        .filter(|(m, _, _)| matches!(m.as_str(), "POST" | "PUT" | "PATCH" | "DELETE"))
        .collect()
}

fn downloads(requests: &[(String, String, u16)]) -> Vec<&(String, String, u16)> {
    requests
        .iter()
        .filter(|(m, p, _)| m == "GET" && p != "/v2/")
        .collect()
}

fn names_and_newest(search: &Value) -> Vec<(String, String)> {
    search["plugins"]
        .as_array()
        .expect("plugins")
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_owned(),
                p["newest"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn publish_then_search_from_a_fresh_cache() {
    let Some(env) = Env::new("publish_then_search_from_a_fresh_cache") else {
        return;
    };
    let signed = Path::new(env!("CARGO_MANIFEST_DIR")).join(SIGNED);
    let v1 = package(
        env.dir.path(),
        "acme",
        "weather",
        "1.0.0",
        "Weather forecasts",
    );
    let v2 = package(
        env.dir.path(),
        "acme",
        "weather",
        "1.2.0",
        "Weather forecasts",
    );
    let report = env.publish(&[&signed, &v1, &v2]);
    assert_eq!(report["inventory_pushed"], true);
    let digest = report["digest"].as_str().expect("digest").to_owned();
    let packages = report["packages"].as_array().expect("packages");
    assert_eq!(packages.len(), 3);
    assert!(packages.iter().all(|p| p["pushed"] == true));

    let search = env.read_json(&["search"], &[]);
    assert_eq!(search["digest"], digest.as_str());
    assert_eq!(
        names_and_newest(&search),
        vec![
            ("acme/weather".to_owned(), "1.2.0".to_owned()),
            ("langgenius/agent".to_owned(), "0.0.14".to_owned())
        ]
    );
    let plugins = search["plugins"].as_array().unwrap();
    assert_eq!(
        plugins[0]["versions"],
        serde_json::json!(["1.2.0", "1.0.0"])
    );
    assert_eq!(plugins[0]["signature"], "unsigned");
    assert_eq!(plugins[1]["signature"], "dify-official");
    assert_eq!(
        plugins[1]["description"],
        "Dify official Agent strategies collection"
    );

    // Text search over names and descriptions, case-insensitive.
    let found = env.read_json(&["search", "FORECAST"], &[]);
    assert_eq!(
        names_and_newest(&found),
        vec![("acme/weather".to_owned(), "1.2.0".to_owned())]
    );
    // The table on the terminal.
    let args = env.read_args(&["search", "agent"], &[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let table = env.ok(&args);
    assert!(table.starts_with("NAME"), "{table}");
    assert!(table.contains("langgenius/agent  0.0.14"), "{table}");
    assert!(!table.contains("acme/weather"), "{table}");

    // The package artifact is the package, by digest.
    let agent = packages
        .iter()
        .find(|p| p["name"] == "langgenius/agent")
        .unwrap();
    let bytes = std::fs::read(&signed).unwrap();
    assert_eq!(
        agent["digest"].as_str().unwrap(),
        registry_fixture::sha256_digest(&bytes)
    );
    assert!(env.blob_file(agent["digest"].as_str().unwrap()).is_file());
}

#[test]
fn a_repeated_publish_pushes_nothing() {
    let Some(env) = Env::new("a_repeated_publish_pushes_nothing") else {
        return;
    };
    let signed = Path::new(env!("CARGO_MANIFEST_DIR")).join(SIGNED);
    let v1 = package(env.dir.path(), "acme", "weather", "1.0.0", "Weather");
    let mut mark = 0;
    let first = env.publish(&[&signed, &v1]);
    let first_writes = writes(&env.requests_since(&mut mark)).len();
    assert!(first_writes > 0, "the first publish pushes");

    let again = env.publish(&[&signed, &v1]);
    let requests = env.requests_since(&mut mark);
    assert_eq!(
        writes(&requests),
        Vec::<&(String, String, u16)>::new(),
        "a repeated publish must push nothing; it sent {requests:?}"
    );
    assert_eq!(again["inventory_pushed"], false);
    assert_eq!(again["digest"], first["digest"]);
    assert!(again["packages"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["pushed"] == false && p["added"] == false));
    // Only HEADs for the packages (one each): their bytes are never sent again.
    let heads = requests.iter().filter(|(m, _, _)| m == "HEAD").count();
    assert_eq!(heads, 2, "{requests:?}");

    // A published version never changes: other bytes under the same version are refused.
    let changed = package(env.dir.path(), "acme", "weather", "1.0.0", "Other weather");
    let out = env.run(&[
        "inventory",
        "publish",
        "--insecure",
        "--to",
        &env.inventory(),
        "--key",
        env.key.to_str().unwrap(),
        changed.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("acme/weather 1.0.0 is already in the inventory"),
        "{stderr}"
    );
}

#[test]
fn groups_and_outdated() {
    let Some(env) = Env::new("groups_and_outdated") else {
        return;
    };
    let signed = Path::new(env!("CARGO_MANIFEST_DIR")).join(SIGNED);
    let newer_agent = package(env.dir.path(), "langgenius", "agent", "0.0.15", "Agent");
    let tool = package(env.dir.path(), "acme", "weather", "1.0.0", "Weather");
    env.publish(&[&signed, &newer_agent, &tool]);
    let inventory = env.inventory();
    let key = env.key.to_str().unwrap();
    env.ok(&[
        "inventory",
        "group",
        "--insecure",
        "--to",
        &inventory,
        "--key",
        key,
        "base:1.0",
        "langgenius/agent@0.0.14",
        "--optional",
        "acme/weather@1.0.0",
        "--description",
        "What every workspace gets",
    ]);
    // A group may only name published plugin versions.
    let out = env.run(&[
        "inventory",
        "group",
        "--insecure",
        "--to",
        &inventory,
        "--key",
        key,
        "base:2.0",
        "acme/weather@9.9.9",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("group base:2.0: acme/weather@9.9.9 is not in the inventory"));

    let groups = env.read_json(&["groups"], &[]);
    assert_eq!(
        groups["groups"],
        serde_json::json!([{
            "name": "base",
            "version": "1.0",
            "description": "What every workspace gets",
            "entries": [
                {"plugin": "acme/weather", "version": "1.0.0", "mandatory": false},
                {"plugin": "langgenius/agent", "version": "0.0.14", "mandatory": true},
            ],
        }])
    );

    // The example repository pins langgenius/agent 0.0.14 (and a hello-world plugin the
    // inventory does not have); 0.0.15 is in the inventory.
    let repo = env.dir.path().join("repo");
    fs::copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("examples"),
        &repo,
    );
    let outdated = env.read_json(&["outdated"], &["--repo", repo.to_str().unwrap()]);
    assert_eq!(
        outdated["outdated"],
        serde_json::json!([{"name": "langgenius/agent", "declared": "0.0.14", "newest": "0.0.15", "source": "inventory"}])
    );
}

#[test]
fn the_cache_asks_the_registry_only_after_its_ttl_and_downloads_only_changes() {
    let Some(env) = Env::new("the_cache_asks_the_registry_only_after_its_ttl") else {
        return;
    };
    let v1 = package(env.dir.path(), "acme", "weather", "1.0.0", "Weather");
    env.publish(&[&v1]);
    let mut mark = 0;
    env.requests_since(&mut mark);

    // A fresh cache downloads.
    let first = env.read_json(&["search"], &["--inventory-ttl", "1h"]);
    assert!(!downloads(&env.requests_since(&mut mark)).is_empty());
    // Within the TTL: no request at all.
    let second = env.read_json(&["search"], &["--inventory-ttl", "1h"]);
    assert_eq!(env.requests_since(&mut mark), vec![]);
    assert_eq!(first, second);
    // After the TTL, unchanged: one HEAD of the tag, nothing downloaded.
    let third = env.read_json(&["search"], &["--inventory-ttl", "0s"]);
    let requests = env.requests_since(&mut mark);
    assert_eq!(downloads(&requests), Vec::<&(String, String, u16)>::new());
    assert_eq!(
        requests
            .iter()
            .filter(|(m, p, _)| m == "HEAD" && p == "/v2/dify/inventory/manifests/latest")
            .count(),
        1,
        "{requests:?}"
    );
    assert_eq!(first, third);
    // The HEAD restarted the TTL: a 1h TTL now asks nothing.
    env.read_json(&["search"], &["--inventory-ttl", "1h"]);
    assert_eq!(env.requests_since(&mut mark), vec![]);

    // A new version is published.
    let v2 = package(env.dir.path(), "acme", "weather", "2.0.0", "Weather");
    env.publish(&[&v2]);
    env.requests_since(&mut mark);
    // Within the TTL the cached copy is still used...
    let stale = env.read_json(&["search"], &["--inventory-ttl", "1h"]);
    assert_eq!(names_and_newest(&stale)[0].1, "1.0.0");
    assert_eq!(env.requests_since(&mut mark), vec![]);
    // ...after it, the change is picked up.
    let fresh = env.read_json(&["search"], &["--inventory-ttl", "0s"]);
    assert_eq!(names_and_newest(&fresh)[0].1, "2.0.0");
    assert!(!downloads(&env.requests_since(&mut mark)).is_empty());
    // --refresh pulls regardless of the TTL.
    env.read_json(&["search"], &["--inventory-ttl", "1h", "--refresh"]);
    assert!(!downloads(&env.requests_since(&mut mark)).is_empty());
}

#[test]
fn an_inventory_signed_with_another_key_or_unsigned_is_refused() {
    let Some(env) = Env::new("an_inventory_signed_with_another_key_or_unsigned") else {
        return;
    };
    let v1 = package(env.dir.path(), "acme", "weather", "1.0.0", "Weather");
    let report = env.publish(&[&v1]);
    let digest = report["digest"].as_str().unwrap().to_owned();

    let (_, other) = key_pair(env.dir.path(), "stranger");
    let args = [
        "--inventory-key".to_owned(),
        other.display().to_string(),
        "--refresh".to_owned(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let stderr = env.read_fails(&["search"], &args);
    assert!(
        stderr.contains(&format!("is not signed by the key {}", other.display()))
            && stderr.contains("none of its signatures verifies with this key"),
        "{stderr}"
    );
    // Publishing over an inventory the key cannot vouch for is refused too.
    let (stranger_key, _) = key_pair(env.dir.path(), "stranger2");
    let out = env.run(&[
        "inventory",
        "publish",
        "--insecure",
        "--to",
        &env.inventory(),
        "--key",
        stranger_key.to_str().unwrap(),
        v1.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not signed by the key"));

    // Remove the signature: the inventory is now unsigned.
    let sig_tag = format!("sha256-{}.sig", digest.trim_start_matches("sha256:"));
    let head = raw_http::blocking_head(
        &env.registry.host,
        &format!("/v2/dify/inventory/manifests/{sig_tag}"),
    );
    let deleted = raw_http::blocking_delete(
        &env.registry.host,
        &format!("/v2/dify/inventory/manifests/{head}"),
    );
    assert_eq!(deleted, 202);
    let stderr = env.read_fails(&["search"], &["--refresh"]);
    assert!(
        stderr.contains(&format!("it has no signature (no tag {sig_tag})")),
        "{stderr}"
    );
}

#[test]
fn a_tampered_inventory_database_and_a_missing_blob_are_refused() {
    let Some(env) = Env::new("a_tampered_inventory_database_and_a_missing_blob") else {
        return;
    };
    let v1 = package(env.dir.path(), "acme", "weather", "1.0.0", "Weather");
    let report = env.publish(&[&v1]);
    let digest = report["digest"].as_str().unwrap();
    // The database layer of the inventory manifest.
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(env.blob_file(digest)).expect("manifest blob"))
            .unwrap();
    let layer = manifest["layers"][0]["digest"].as_str().unwrap().to_owned();
    let data = env.blob_file(&layer);
    let mut bytes = std::fs::read(&data).unwrap();
    let original = bytes.clone();
    // Change one byte of the database in the registry's storage.
    let at = bytes.len() - 10;
    bytes[at] ^= 0xff;
    std::fs::write(&data, &bytes).unwrap();
    let stderr = env.read_fails(&["search"], &[]);
    assert!(
        stderr.contains("the inventory database (")
            && stderr.contains("was tampered with or corrupted"),
        "{stderr}"
    );
    // Nothing was cached from the refused pull.
    assert!(!std::fs::read_dir(env.cache.path().join("inventory"))
        .unwrap()
        .flatten()
        .any(|d| std::fs::read_dir(d.path())
            .unwrap()
            .flatten()
            .any(|f| f.file_name().to_string_lossy().ends_with(".db"))));

    // The blob gone altogether.
    std::fs::write(&data, &original).unwrap();
    std::fs::remove_dir_all(data.parent().unwrap()).unwrap();
    let stderr = env.read_fails(&["search"], &[]);
    assert!(
        stderr.contains(&format!(
            "the inventory database is incomplete in the registry: blob {layer} is missing"
        )),
        "{stderr}"
    );
}

#[test]
fn two_processes_refreshing_one_cache_at_once() {
    let Some(env) = Env::new("two_processes_refreshing_one_cache_at_once") else {
        return;
    };
    let mut paths = Vec::new();
    for i in 0..20 {
        paths.push(package(
            env.dir.path(),
            "acme",
            &format!("tool{i}"),
            "1.0.0",
            "A tool",
        ));
    }
    let refs: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
    env.publish(&refs);
    let mut mark = 0;
    env.requests_since(&mut mark);
    let bin = assert_cmd::cargo::cargo_bin("plugsync");
    for round in 0..3 {
        let extra: &[&str] = if round == 0 { &[] } else { &["--refresh"] };
        let spawn = || {
            let args = env.read_args(&["search"], extra);
            std::process::Command::new(&bin)
                .args(&args)
                .args(["-o", "json"])
                .env("PLUGSYNC_CACHE_DIR", env.cache.path())
                .env("DOCKER_CONFIG", env.dir.path().join("docker"))
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn plugsync")
        };
        let (a, b) = (spawn(), spawn());
        for child in [a, b] {
            let out = child.wait_with_output().expect("wait");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let json: Value = serde_json::from_slice(&out.stdout).expect("json");
            assert_eq!(json["plugins"].as_array().unwrap().len(), 20);
        }
        let requests = env.requests_since(&mut mark);
        let pulls = requests
            .iter()
            .filter(|(m, p, _)| m == "GET" && p.contains("/blobs/"))
            .count();
        if round == 0 {
            // Without --refresh the second process waits for the first and takes its
            // result: one database download, one signature payload download.
            assert_eq!(pulls, 2, "{requests:?}");
        } else {
            assert_eq!(pulls, 4, "{requests:?}");
        }
    }
    // One database in the cache, intact, no temporary files left.
    let dirs: Vec<_> = std::fs::read_dir(env.cache.path().join("inventory"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(dirs.len(), 1);
    let mut files: Vec<String> = std::fs::read_dir(dirs[0].path())
        .unwrap()
        .flatten()
        .map(|f| f.file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files.len(), 3, "{files:?}");
    assert_eq!(files[1], "lock");
    assert_eq!(files[2], "state.json");
    let db = &files[0];
    let bytes = std::fs::read(dirs[0].path().join(db)).unwrap();
    assert_eq!(
        format!(
            "{}.db",
            registry_fixture::sha256_digest(&bytes).trim_start_matches("sha256:")
        ),
        *db
    );
}

/// Minimal HTTP for the two registry calls the tests make themselves.
mod raw_http {
    use std::io::{Read, Write};
    use std::net::TcpStream;

    fn request(host: &str, method: &str, path: &str) -> String {
        let mut stream = TcpStream::connect(host).expect("connect");
        write!(
            stream,
            "{method} {path} HTTP/1.0\r\nHost: {host}\r\nAccept: application/vnd.oci.image.manifest.v1+json\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer
    }

    /// The `Docker-Content-Digest` of a HEAD.
    pub fn blocking_head(host: &str, path: &str) -> String {
        let answer = request(host, "HEAD", path);
        answer
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .starts_with("docker-content-digest:")
                    .then(|| l.split_once(':').unwrap().1.trim().to_owned())
            })
            .unwrap_or_else(|| panic!("no digest in {answer}"))
    }

    /// The status of a DELETE.
    pub fn blocking_delete(host: &str, path: &str) -> u16 {
        let answer = request(host, "DELETE", path);
        answer[9..12].parse().unwrap()
    }
}

/// The real cosign (`tests/cosign/build`): `$PLUGSYNC_COSIGN`, else `cosign` on PATH. Skips
/// without it unless `PLUGSYNC_REQUIRE_REGISTRY_TESTS=1`.
fn cosign_or_skip(test: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PLUGSYNC_COSIGN")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .or_else(|| registry_fixture::which("cosign"));
    if found.is_none() {
        let message =
            format!("SKIPPED {test}: cosign not found (build it with tests/cosign/build and set PLUGSYNC_COSIGN)");
        if std::env::var(registry_fixture::REQUIRE_ENV).is_ok_and(|v| v == "1") {
            panic!("{message}, and {}=1", registry_fixture::REQUIRE_ENV);
        }
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "{message}");
    }
    found
}

fn cosign(bin: &Path, home: &Path, args: &[&str]) -> Output {
    std::process::Command::new(bin)
        .args(args)
        .env("HOME", home)
        .env("COSIGN_PASSWORD", "plugsync-test")
        .env("COSIGN_YES", "true")
        .env("TUF_ROOT", home.join("tuf"))
        .output()
        .expect("run cosign")
}

#[test]
fn cosign_verifies_what_plugsync_signed() {
    let Some(bin) = cosign_or_skip("cosign_verifies_what_plugsync_signed") else {
        return;
    };
    let Some(env) = Env::new("cosign_verifies_what_plugsync_signed") else {
        return;
    };
    let v1 = package(env.dir.path(), "acme", "weather", "1.0.0", "Weather");
    let report = env.publish(&[&v1]);
    let digest = report["digest"].as_str().unwrap();
    let image = format!("{}/dify/inventory:latest", env.registry.host);
    let verify = |key: &Path| {
        cosign(
            &bin,
            env.dir.path(),
            &[
                "verify",
                "--key",
                key.to_str().unwrap(),
                "--insecure-ignore-tlog=true",
                "--allow-insecure-registry",
                &image,
            ],
        )
    };
    let out = verify(&env.public);
    assert!(
        out.status.success(),
        "cosign verify failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let claims: Value = serde_json::from_slice(&out.stdout).expect("cosign prints the claims");
    assert_eq!(
        claims[0]["critical"]["image"]["docker-manifest-digest"],
        digest
    );
    // And cosign does check: another key fails.
    let (_, other) = key_pair(env.dir.path(), "stranger");
    assert!(!verify(&other).status.success());
}

#[test]
fn plugsync_accepts_what_cosign_signed() {
    let Some(bin) = cosign_or_skip("plugsync_accepts_what_cosign_signed") else {
        return;
    };
    let Some(env) = Env::new("plugsync_accepts_what_cosign_signed") else {
        return;
    };
    let v1 = package(env.dir.path(), "acme", "weather", "1.0.0", "Weather");
    let report = env.publish(&[&v1]);
    let digest = report["digest"].as_str().unwrap().to_owned();
    // Drop plugsync's own signature, so only cosign's remains.
    let sig_tag = format!("sha256-{}.sig", digest.trim_start_matches("sha256:"));
    let sig = raw_http::blocking_head(
        &env.registry.host,
        &format!("/v2/dify/inventory/manifests/{sig_tag}"),
    );
    assert_eq!(
        raw_http::blocking_delete(
            &env.registry.host,
            &format!("/v2/dify/inventory/manifests/{sig}")
        ),
        202
    );
    // An openssl-style key imported into cosign (cosign's own keys are encrypted).
    let (ops_key, _) = key_pair(env.dir.path(), "ops");
    let prefix = env.dir.path().join("cosign-ops");
    let out = cosign(
        &bin,
        env.dir.path(),
        &[
            "import-key-pair",
            "--key",
            ops_key.to_str().unwrap(),
            "--output-key-prefix",
            prefix.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cosign(
        &bin,
        env.dir.path(),
        &[
            "sign",
            "--key",
            &format!("{}.key", prefix.display()),
            "--tlog-upload=false",
            "--allow-insecure-registry",
            "--yes",
            &format!("{}/dify/inventory@{digest}", env.registry.host),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let cosign_pub = format!("{}.pub", prefix.display());
    let search = env.read_json(&["search"], &["--inventory-key", &cosign_pub]);
    assert_eq!(search["digest"], digest.as_str());
    assert_eq!(names_and_newest(&search)[0].0, "acme/weather");
    // The publisher's key signed nothing now.
    let stderr = env.read_fails(&["search"], &["--refresh"]);
    assert!(
        stderr.contains("none of its signatures verifies with this key"),
        "{stderr}"
    );
}

/// A repository whose plugins.yaml takes `entries` from the inventory of `env`.
fn inventory_repo(env: &Env, entries: &str) -> PathBuf {
    let repo = env.dir.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::copy(&env.public, repo.join("inventory.pub")).unwrap();
    std::fs::write(
        repo.join("plugins.yaml"),
        format!(
            "apiVersion: plugsync.dev/v1alpha1\n\
             kind: PluginSet\n\
             metadata:\n  name: demo\n  namespace: dify\n\
             spec:\n  registry:\n    prefix: registry.local:5000/dify-plugins\n\
             \x20 sources:\n    inventory:\n      url: {}\n      key: inventory.pub\n      insecure: true\n\
             \x20 plugins:\n{entries}",
            env.inventory()
        ),
    )
    .unwrap();
    repo
}

fn plugsync_lock(env: &Env, repo: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["lock", "--repo", repo.to_str().unwrap()];
    args.extend(extra);
    env.run(&args)
}

#[test]
fn a_group_expands_into_the_lock_which_pins_the_inventory() {
    let Some(env) = Env::new("a_group_expands_into_the_lock") else {
        return;
    };
    let signed = Path::new(env!("CARGO_MANIFEST_DIR")).join(SIGNED);
    let weather = package(env.dir.path(), "acme", "weather", "1.0.0", "Weather");
    let extra = package(env.dir.path(), "acme", "extra", "1.0.0", "Extra");
    let report = env.publish(&[&signed, &weather, &extra]);
    let (inventory, key) = (env.inventory(), env.key.display().to_string());
    env.ok(&[
        "inventory",
        "group",
        "--insecure",
        "--to",
        &inventory,
        "--key",
        &key,
        "base:1.0",
        "langgenius/agent@0.0.14",
        "acme/weather@1.0.0",
        "--optional",
        "acme/extra@1.0.0",
    ]);
    let digest = env.read_json(&["search"], &["--refresh"])["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(digest, report["digest"].as_str().unwrap());

    let repo = inventory_repo(&env, "    - group: base:1.0\n");
    let out = plugsync_lock(&env, &repo, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(repo.join("plugins.lock")).unwrap();
    let lock: Value = serde_saphyr::from_str(&text).expect("lock yaml");
    // The mandatory plugins, pinned by their package digests; the optional one left out.
    let mut pinned: Vec<(String, String)> = lock["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_owned(),
                p["sha256"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    pinned.sort();
    let sha = |path: &Path| {
        registry_fixture::sha256_digest(&std::fs::read(path).unwrap())
            .trim_start_matches("sha256:")
            .to_owned()
    };
    assert_eq!(
        pinned,
        vec![
            ("acme/weather".to_owned(), sha(&weather)),
            ("langgenius/agent".to_owned(), sha(&signed)),
        ]
    );
    assert_eq!(lock["inventory"]["digest"], digest.as_str());
    assert_eq!(lock["inventory"]["url"], inventory.as_str());
    let agent = lock["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "langgenius/agent")
        .unwrap();
    assert_eq!(agent["signature"], "dify-official");
    assert!(agent["source"].as_str().unwrap().starts_with(&format!(
        "oci+http://{}/dify/inventory/packages/langgenius/agent@sha256:",
        env.registry.host
    )));

    // The tag moves (a new group version, a new plugin version): the locked repository
    // still reads the pinned inventory, and stays up to date.
    let newer = package(env.dir.path(), "acme", "weather", "2.0.0", "Weather");
    env.publish(&[&newer]);
    env.ok(&[
        "inventory",
        "group",
        "--insecure",
        "--to",
        &inventory,
        "--key",
        &key,
        "base:1.0.1",
        "acme/weather@2.0.0",
    ]);
    let out = plugsync_lock(&env, &repo, &["--locked"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = env.run(&["validate", "--repo", repo.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(repo.join("plugins.lock")).unwrap(),
        text
    );

    // `outdated` takes the inventory, its key and insecure from plugins.yaml, and compares
    // what the lock pins with the newest versions.
    let out = env.ok(&[
        "outdated",
        "--repo",
        repo.to_str().unwrap(),
        "--inventory-ttl",
        "0s",
        "-o",
        "json",
    ]);
    let outdated: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        outdated["outdated"],
        serde_json::json!([{"name": "acme/weather", "declared": "1.0.0", "newest": "2.0.0", "source": "inventory"}])
    );
    assert_eq!(outdated["inventory"], inventory.as_str());

    // Asking for what only the new inventory has moves the pin.
    inventory_repo(
        &env,
        "    - group: base:1.0.1\n    - inventory: langgenius/agent\n      version: 0.0.14\n",
    );
    let out = plugsync_lock(&env, &repo, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lock: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(repo.join("plugins.lock")).unwrap())
            .unwrap();
    assert_ne!(lock["inventory"]["digest"], digest.as_str());
    assert!(lock["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == "acme/weather" && p["version"] == "2.0.0"));

    // An entry the inventory lacks: an error at its plugins.yaml line.
    inventory_repo(
        &env,
        "    - inventory: acme/weather\n      version: 9.0.0\n",
    );
    let out = plugsync_lock(&env, &repo, &[]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("plugins.yaml:15:18: spec.plugins[0].inventory: acme/weather 9.0.0 is not published in the inventory"),
        "{stderr}"
    );
}

#[test]
fn a_tampered_package_is_refused() {
    let Some(env) = Env::new("a_tampered_package_is_refused") else {
        return;
    };
    let weather = package(env.dir.path(), "acme", "weather", "1.0.0", "Weather");
    let report = env.publish(&[&weather]);
    let digest = report["packages"][0]["digest"].as_str().unwrap();
    let data = env.blob_file(digest);
    let mut bytes = std::fs::read(&data).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0xff;
    std::fs::write(&data, &bytes).unwrap();

    let repo = inventory_repo(
        &env,
        "    - inventory: acme/weather\n      version: 1.0.0\n",
    );
    let out = plugsync_lock(&env, &repo, &[]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the package (") && stderr.contains("was tampered with or corrupted"),
        "{stderr}"
    );
    assert!(!repo.join("plugins.lock").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_copies_marketplace_plugins_and_a_repositorys_plugins() {
    let Some(env) = Env::new("mirror_copies_marketplace_plugins") else {
        return;
    };
    // A stand-in marketplace on loopback (this machine cannot reach marketplace.dify.ai):
    // the download path Dify's marketplace serves.
    let weather = std::fs::read(package(
        env.dir.path(),
        "acme",
        "weather",
        "1.0.0",
        "Weather",
    ))
    .unwrap();
    let router = axum::Router::new().route(
        "/api/v1/plugins/acme/weather/1.0.0/download",
        axum::routing::get(move || {
            let body = weather.clone();
            async move { body }
        }),
    );
    let (addr, _server) = registry_fixture::serve(router).await;

    let repo = env.dir.path().join("example");
    fs::copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("examples"),
        &repo,
    );
    let (inventory, key) = (env.inventory(), env.key.display().to_string());
    let marketplace = format!("http://{addr}");
    let out = tokio::task::block_in_place(|| {
        env.ok(&[
            "inventory",
            "mirror",
            "--insecure",
            "--to",
            &inventory,
            "--key",
            &key,
            "--marketplace",
            &marketplace,
            "acme/weather@1.0.0",
            "--repo",
            repo.to_str().unwrap(),
            "-o",
            "json",
        ])
    });
    let report: Value = serde_json::from_str(&out).unwrap();
    let mut mirrored: Vec<String> = report["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            format!(
                "{}@{}",
                p["name"].as_str().unwrap(),
                p["version"].as_str().unwrap()
            )
        })
        .collect();
    mirrored.sort();
    // The example repository resolves to its hello-world plugin and the agent package.
    let lock = std::fs::read_to_string(repo.join("plugins.lock")).unwrap();
    let lock: Value = serde_saphyr::from_str(&lock).unwrap();
    let mut expected: Vec<String> = lock["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            format!(
                "{}@{}",
                p["name"].as_str().unwrap(),
                p["version"].as_str().unwrap()
            )
        })
        .collect();
    expected.push("acme/weather@1.0.0".into());
    expected.sort();
    assert_eq!(mirrored, expected);

    let search = tokio::task::block_in_place(|| env.read_json(&["search"], &[]));
    let mut names: Vec<String> = names_and_newest(&search)
        .into_iter()
        .map(|(n, v)| format!("{n}@{v}"))
        .collect();
    names.sort();
    assert_eq!(names, expected);
}

#[test]
fn a_registry_that_wants_credentials_gets_them_from_the_docker_config() {
    if !registry_fixture::tools_or_skip("a_registry_that_wants_credentials", true) {
        return;
    }
    let env = Env::with_registry(RegistryServer::start_with_basic_auth("ci", "s3cret-pw"));
    let weather = package(env.dir.path(), "acme", "weather", "1.0.0", "Weather");
    let publish = [
        "inventory",
        "publish",
        "--insecure",
        "--to",
        &env.inventory(),
        "--key",
        env.key.to_str().unwrap(),
        weather.to_str().unwrap(),
    ];
    // No credentials: refused, and the message says what to do.
    let out = env.run(&publish);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("docker config"), "{stderr}");

    // `docker login` wrote them.
    let auth = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "ci:s3cret-pw");
    std::fs::create_dir_all(env.dir.path().join("docker")).unwrap();
    std::fs::write(
        env.dir.path().join("docker/config.json"),
        serde_json::json!({"auths": {env.registry.host.clone(): {"auth": auth}}}).to_string(),
    )
    .unwrap();
    let out = env.ok(&publish);
    assert!(!out.contains("s3cret-pw"));
    let search = env.read_json(&["search"], &[]);
    assert_eq!(names_and_newest(&search)[0].0, "acme/weather");
    // lock reads the inventory and pulls the package with them too.
    let repo = inventory_repo(
        &env,
        "    - inventory: acme/weather\n      version: 1.0.0\n",
    );
    let out = plugsync_lock(&env, &repo, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lock = std::fs::read_to_string(repo.join("plugins.lock")).unwrap();
    assert!(lock.contains("name: acme/weather"), "{lock}");
}

/// `plugsync outdated --marketplace` asks the marketplace plugins.yaml names, in one batch
/// lookup as Dify's API makes it, for the newest version of every declared plugin; with no
/// inventory declared, only the marketplace. A marketplace that fails says so and where.
/// (A stand-in on loopback: this machine cannot reach marketplace.dify.ai.)
#[tokio::test(flavor = "multi_thread")]
async fn outdated_asks_the_marketplace_for_newer_versions() {
    use std::sync::{Arc, Mutex};
    let asked: Arc<Mutex<Vec<Value>>> = Arc::default();
    let seen = Arc::clone(&asked);
    let router = axum::Router::new().route(
        "/api/v1/plugins/batch",
        axum::routing::post(move |body: axum::body::Bytes| {
            let seen = Arc::clone(&seen);
            async move {
                let body: Value = serde_json::from_slice(&body).expect("a JSON body");
                seen.lock().unwrap().push(body);
                axum::Json(serde_json::json!({"code": 0, "data": {"plugins": [
                    {"plugin_id": "langgenius/agent", "latest_version": "0.0.22",
                     "latest_package_identifier": "langgenius/agent:0.0.22@abc", "status": "active"},
                    {"plugin_id": "someone/else", "latest_version": "9.0.0",
                     "latest_package_identifier": "someone/else:9.0.0@def", "status": "active"},
                ]}}))
            }
        }),
    );
    let (addr, _server) = registry_fixture::serve(router).await;
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    fs::copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("examples"),
        &repo,
    );
    let plugins = repo.join("plugins.yaml");
    let text = std::fs::read_to_string(&plugins).unwrap().replace(
        "  plugins:\n",
        &format!("  sources:\n    marketplace: http://{addr}\n  plugins:\n"),
    );
    std::fs::write(&plugins, text).unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec![
            "outdated",
            "--marketplace",
            "--repo",
            repo.to_str().unwrap(),
        ];
        args.extend(extra);
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let cache = dir.path().join("cache");
        tokio::task::block_in_place(move || {
            Command::cargo_bin("plugsync")
                .expect("binary")
                .args(&args)
                .env("PLUGSYNC_CACHE_DIR", cache)
                .env_remove("PLUGSYNC_INVENTORY")
                .env_remove("PLUGSYNC_INVENTORY_KEY")
                .timeout(std::time::Duration::from_secs(60))
                .output()
                .expect("run plugsync")
        })
    };
    let out = run(&["-o", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["outdated"],
        serde_json::json!([{"name": "langgenius/agent", "declared": "0.0.14", "newest": "0.0.22", "source": "marketplace"}])
    );
    assert_eq!(
        report["inventory"],
        Value::Null,
        "no inventory declared, none asked"
    );
    let mut ids: Vec<String> = asked.lock().unwrap()[0]["plugin_ids"]
        .as_array()
        .expect("plugin_ids")
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        ["langgenius/agent", "plugsync/hello-world"],
        "one lookup of every declared plugin"
    );
    assert_eq!(asked.lock().unwrap().len(), 1);

    // The table names where the newer version is.
    let out = run(&[]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()
                == ["langgenius/agent", "0.0.14", "0.0.22", "marketplace"]),
        "{table}"
    );

    // A marketplace that cannot answer: a clear error naming it, no table.
    let text = std::fs::read_to_string(&plugins)
        .unwrap()
        .replace(&format!("http://{addr}"), &format!("http://{addr}/nowhere"));
    std::fs::write(&plugins, text).unwrap();
    let out = run(&[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "POST http://{addr}/nowhere/api/v1/plugins/batch: the marketplace answered 404"
        )),
        "{err}"
    );
}
