//! A real OCI registry on loopback (Debian's `docker-registry`), images pushed to it with
//! `skopeo` from an OCI layout written here (no Docker daemon), and small axum servers for
//! the protocol corners a real registry cannot be made to show.
//!
//! Tests that need the real registry call [`tools_or_skip`] first: without `docker-registry`
//! and `skopeo` (install them with `.ci/install-test-deps`) they print a SKIPPED note and
//! return, unless `PLUGSYNC_REQUIRE_REGISTRY_TESTS=1`, which turns the skip into a failure
//! so CI cannot pass silently without them.
#![allow(dead_code)] // not every test uses every helper

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use serde_json::json;
use sha2::{Digest as _, Sha256};
use tempfile::TempDir;

/// Set to `1` to fail, rather than skip, when the registry tools are missing.
pub const REQUIRE_ENV: &str = "PLUGSYNC_REQUIRE_REGISTRY_TESTS";

/// `program` on `PATH`, if any.
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

fn skip_or_fail(test: &str, missing: &[&str]) {
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
}

/// `true` when `docker-registry` and `skopeo` (and, with `basic_auth`, `htpasswd`) are
/// installed; otherwise prints why `test` is skipped (or panics, see the module docs).
pub fn tools_or_skip(test: &str, basic_auth: bool) -> bool {
    let mut missing = Vec::new();
    for tool in ["docker-registry", "skopeo"] {
        if which(tool).is_none() {
            missing.push(tool);
        }
    }
    if basic_auth && which("htpasswd").is_none() {
        missing.push("htpasswd (apache2-utils)");
    }
    if missing.is_empty() {
        true
    } else {
        skip_or_fail(test, &missing);
        false
    }
}

/// A `docker-registry` process serving plain HTTP on `127.0.0.1:<free port>`; killed on drop.
pub struct RegistryServer {
    /// `127.0.0.1:<port>`: the registry part of image references.
    pub host: String,
    /// Basic-auth user and password, when started with them.
    pub credentials: Option<(String, String)>,
    /// The registry's storage root (`docker/registry/v2/...`), for tests that damage it.
    pub storage: PathBuf,
    child: Child,
    log: PathBuf,
    _dir: TempDir,
}

impl RegistryServer {
    /// An open registry.
    pub fn start() -> RegistryServer {
        Self::start_inner(None, false)
    }

    /// An open registry that logs every request (see [`RegistryServer::requests`]).
    pub fn start_with_access_log() -> RegistryServer {
        Self::start_inner(None, true)
    }

    /// A registry that demands HTTP basic auth (htpasswd, bcrypt) for everything.
    pub fn start_with_basic_auth(user: &str, password: &str) -> RegistryServer {
        Self::start_inner(Some((user.to_owned(), password.to_owned())), false)
    }

    fn start_inner(credentials: Option<(String, String)>, access_log: bool) -> RegistryServer {
        let mut last_log = String::new();
        // The free port is found by binding and releasing it; another process can grab it in
        // between, so try a few times.
        for _ in 0..3 {
            let dir = tempfile::tempdir().expect("temp dir");
            let port = free_port();
            let host = format!("127.0.0.1:{port}");
            let storage = dir.path().join("storage");
            std::fs::create_dir_all(&storage).expect("storage dir");
            let mut config = format!(
                "version: 0.1\n\
                 log:\n  level: warn\n  accesslog:\n    disabled: {}\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                 http:\n  addr: {host}\n  secret: plugsync-test-secret\n",
                !access_log,
                storage.display()
            );
            if let Some((user, password)) = &credentials {
                let htpasswd = dir.path().join("htpasswd");
                let out = Command::new("htpasswd")
                    .args(["-Bbn", user, password])
                    .output()
                    .expect("run htpasswd");
                assert!(out.status.success(), "htpasswd failed: {out:?}");
                std::fs::write(&htpasswd, &out.stdout).expect("write htpasswd");
                config.push_str(&format!(
                    "auth:\n  htpasswd:\n    realm: plugsync-test\n    path: {}\n",
                    htpasswd.display()
                ));
            }
            let config_path = dir.path().join("config.yml");
            std::fs::write(&config_path, config).expect("write registry config");
            let log = dir.path().join("registry.log");
            let log_file = std::fs::File::create(&log).expect("log file");
            let child = Command::new("docker-registry")
                .arg("serve")
                .arg(&config_path)
                .stdin(Stdio::null())
                .stdout(log_file.try_clone().expect("log file"))
                .stderr(log_file)
                .spawn()
                .expect("start docker-registry");
            let mut server = RegistryServer {
                host,
                credentials: credentials.clone(),
                storage: storage.clone(),
                child,
                log,
                _dir: dir,
            };
            if server.wait_ready(Duration::from_secs(20)) {
                return server;
            }
            last_log = server.log();
            // Dropping `server` kills it; try another port.
        }
        panic!("docker-registry did not start; its log:\n{last_log}");
    }

    /// Waits until `GET /v2/` answers (200, or 401 with auth), or the process exits.
    fn wait_ready(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if let Some(status) = http_get_status(&self.host, "/v2/") {
                if status == 200 || status == 401 {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// What the registry has logged so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The requests the registry has answered so far, as `(method, path, status)`, from
    /// its access log (only with [`RegistryServer::start_with_access_log`]).
    pub fn requests(&self) -> Vec<(String, String, u16)> {
        let log = std::fs::read(&self.log).unwrap_or_default();
        String::from_utf8_lossy(&log)
            .lines()
            .filter_map(|line| {
                // `127.0.0.1 - - [date] "GET /v2/ HTTP/1.1" 200 2 "" "agent"`
                let request = line.split('"').nth(1)?;
                let mut parts = request.split(' ');
                let (method, path) = (parts.next()?, parts.next()?);
                let status = line
                    .split('"')
                    .nth(2)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()?;
                Some((method.to_owned(), path.to_owned(), status))
            })
            .collect()
    }

    /// `127.0.0.1:<port>/<repository>:<tag>`.
    pub fn image(&self, repository: &str, tag: &str) -> String {
        format!("{}/{repository}:{tag}", self.host)
    }

    /// Pushes `image` to `<host>/<repository>:<tag>` with skopeo (as the registry's user when
    /// it has one), keeping the manifest byte for byte.
    pub fn push(&self, image: &OciImage, repository: &str, tag: &str) {
        let mut command = Command::new("skopeo");
        command
            .arg("--insecure-policy")
            .arg("copy")
            .arg("--quiet")
            .arg("--preserve-digests")
            .arg("--dest-tls-verify=false");
        if let Some((user, password)) = &self.credentials {
            command.arg(format!("--dest-creds={user}:{password}"));
        }
        command
            .arg(format!(
                "oci:{}:{}",
                image.dir.path().display(),
                OciImage::TAG
            ))
            .arg(format!("docker://{}", self.image(repository, tag)));
        let out = command.output().expect("run skopeo");
        assert!(
            out.status.success(),
            "skopeo copy failed: {}\n{}\nregistry log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }
}

impl Drop for RegistryServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// The status of a plain `GET` (HTTP/1.0, no client library), or `None` when there is no
/// answer yet.
fn http_get_status(host: &str, path: &str) -> Option<u16> {
    let addr: SocketAddr = host.parse().ok()?;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// A one-layer image written as an OCI image layout, ready for `skopeo copy oci:…`.
pub struct OciImage {
    /// `sha256:<hex>` of [`OciImage::manifest`]: what the registry must report.
    pub manifest_digest: String,
    /// The manifest bytes, exactly as written.
    pub manifest: Vec<u8>,
    dir: TempDir,
}

impl OciImage {
    /// The tag in the layout's `index.json`.
    pub const TAG: &'static str = "latest";

    /// An image whose single (uncompressed tar) layer holds one file with `content`, so
    /// different contents give different digests.
    pub fn new(content: &str) -> OciImage {
        let dir = tempfile::tempdir().expect("temp dir");
        let blobs = dir.path().join("blobs/sha256");
        std::fs::create_dir_all(&blobs).expect("blobs dir");

        let layer = tar_with_file("plugsync-test.txt", content.as_bytes());
        let layer_digest = write_blob(&blobs, &layer);
        let config = serde_json::to_vec(&json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        }))
        .expect("config json");
        let config_digest = write_blob(&blobs, &config);
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": config.len(),
            },
            "layers": [{
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": layer_digest,
                "size": layer.len(),
            }],
        }))
        .expect("manifest json");
        let manifest_digest = write_blob(&blobs, &manifest);
        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest,
                "size": manifest.len(),
                "annotations": {"org.opencontainers.image.ref.name": Self::TAG},
            }],
        }))
        .expect("index json");
        std::fs::write(dir.path().join("index.json"), index).expect("index.json");
        std::fs::write(
            dir.path().join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .expect("oci-layout");
        OciImage {
            manifest_digest,
            manifest,
            dir,
        }
    }
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn write_blob(blobs: &Path, bytes: &[u8]) -> String {
    let digest = sha256_digest(bytes);
    let hex = digest.trim_start_matches("sha256:");
    std::fs::write(blobs.join(hex), bytes).expect("write blob");
    digest
}

fn tar_with_file(name: &str, content: &[u8]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(content.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header.set_entry_type(tar::EntryType::Regular);
    builder
        .append_data(&mut header, name, content)
        .expect("tar entry");
    builder.into_inner().expect("tar")
}

/// A `kubernetes.io/dockerconfigjson` Secret holding `document` under `.dockerconfigjson`.
pub fn dockerconfig_secret(document: &serde_json::Value) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some("image-repo-secret".to_owned()),
            namespace: Some("dify".to_owned()),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/dockerconfigjson".to_owned()),
        data: Some(BTreeMap::from([(
            ".dockerconfigjson".to_owned(),
            ByteString(serde_json::to_vec(document).expect("json")),
        )])),
        ..Secret::default()
    }
}

/// A dockerconfigjson Secret with `user:password` (as `auth`) for `host`.
pub fn basic_auth_secret(host: &str, user: &str, password: &str) -> Secret {
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    dockerconfig_secret(&json!({"auths": {host: {"auth": auth}}}))
}

/// Serves `router` on `127.0.0.1:<ephemeral>` until the returned task is aborted (or the
/// test's runtime ends).
pub async fn serve(router: axum::Router) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    (addr, task)
}
