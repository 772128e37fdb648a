//! Dify package signatures on the golden case (a real package signed by Dify's official key)
//! and on packages signed here by openssl, an independent implementation of the scheme's
//! signing side.

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;

use base64::Engine as _;
use plugsync_core::package::signature::{TrustedKey, Verification, DIFY_OFFICIAL_SIGNER};
use plugsync_core::package::Package;
use sha2::{Digest, Sha256};

const GOLDEN: &str = "tests/fixtures/packages/langgenius-agent_0.0.14.difypkg";

fn golden() -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(GOLDEN);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The archive's entries (name, content) in order, and its comment.
fn entries(bytes: &[u8]) -> (Vec<(String, Vec<u8>)>, Vec<u8>) {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).expect("zip");
    let comment = archive.comment().to_vec();
    let mut out = Vec::new();
    for i in 0..archive.len() {
        let mut file = archive.by_index(i).expect("entry");
        let mut content = Vec::new();
        file.read_to_end(&mut content).expect("read");
        out.push((file.name().to_string(), content));
    }
    (out, comment)
}

/// A zip of `entries`, in that order, with `comment`.
fn zip(entries: &[(String, Vec<u8>)], comment: &[u8]) -> Vec<u8> {
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, content) in entries {
        writer.start_file(name.as_str(), options).expect("start");
        writer.write_all(content).expect("write");
    }
    writer.set_raw_comment(comment.to_vec().into_boxed_slice());
    writer.finish().expect("finish").into_inner()
}

fn verify(bytes: &[u8], keys: &[TrustedKey]) -> Verification {
    Package::read(bytes)
        .expect("a valid package")
        .verify_signature(keys)
}

#[test]
fn the_golden_package_verifies_with_dify_s_official_key() {
    let bytes = golden();
    let (_, comment) = entries(&bytes);
    let time = serde_json::from_slice::<serde_json::Value>(&comment).expect("json comment")["time"]
        .as_i64()
        .expect("time");
    assert_eq!(
        verify(&bytes, &[TrustedKey::dify_official()]),
        Verification::Signed {
            signer: DIFY_OFFICIAL_SIGNER.to_string(),
            signed_at: time,
        }
    );
}

#[test]
fn one_changed_byte_in_one_entry_breaks_the_signature() {
    let (mut files, comment) = entries(&golden());
    // The re-zipped original still verifies: the signature covers contents, not the zip.
    let rezipped = zip(&files, &comment);
    assert!(matches!(
        verify(&rezipped, &[TrustedKey::dify_official()]),
        Verification::Signed { .. }
    ));
    let (name, content) = files
        .iter_mut()
        .find(|(name, _)| name.ends_with(".py"))
        .expect("a python file");
    content[0] ^= 1;
    let name = name.clone();
    match verify(&zip(&files, &comment), &[TrustedKey::dify_official()]) {
        Verification::Invalid { reason } => {
            assert!(reason.contains("dify-official"), "{reason}");
            assert!(reason.contains("changed after signing"), "{reason}");
        }
        other => panic!("changing {name} gave {other:?}"),
    }
}

#[test]
fn a_package_without_a_comment_is_unsigned() {
    let (files, _) = entries(&golden());
    assert_eq!(
        verify(&zip(&files, b""), &[TrustedKey::dify_official()]),
        Verification::Unsigned
    );
}

/// Signs `files` as `dify signature sign` does, with openssl doing the RSA part.
fn sign_with_openssl(dir: &Path, files: &[(String, Vec<u8>)], time: i64) -> Vec<u8> {
    let mut data = Vec::new();
    for (_, content) in files {
        data.extend_from_slice(&Sha256::digest(content));
    }
    data.extend_from_slice(time.to_string().as_bytes());
    std::fs::write(dir.join("data"), &data).expect("write data");
    let out = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(dir.join("private.pem"))
        .arg("-out")
        .arg(dir.join("sig"))
        .arg(dir.join("data"))
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let signature = std::fs::read(dir.join("sig")).expect("sig");
    serde_json::to_vec(&serde_json::json!({
        "signature": base64::engine::general_purpose::STANDARD.encode(signature),
        "time": time,
    }))
    .expect("json")
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_third_party_key_the_repository_names_verifies_its_packages_and_only_those() {
    let tmp = tempfile::tempdir().expect("tempdir");
    openssl(tmp.path(), &["genrsa", "-out", "private.pem", "2048"]);
    openssl(
        tmp.path(),
        &["rsa", "-in", "private.pem", "-pubout", "-out", "public.pem"],
    );
    openssl(
        tmp.path(),
        &[
            "rsa",
            "-in",
            "private.pem",
            "-RSAPublicKey_out",
            "-out",
            "public-pkcs1.pem",
        ],
    );
    let team = |file: &str| {
        TrustedKey::from_pem(
            "team",
            &std::fs::read_to_string(tmp.path().join(file)).expect("pem"),
        )
        .expect("openssl's public key reads")
    };

    let (files, _) = entries(&golden());
    let comment = sign_with_openssl(tmp.path(), &files, 1_764_806_400);
    let package = zip(&files, &comment);
    for key in ["public.pem", "public-pkcs1.pem"] {
        assert_eq!(
            verify(&package, &[TrustedKey::dify_official(), team(key)]),
            Verification::Signed {
                signer: "team".to_string(),
                signed_at: 1_764_806_400,
            },
            "{key}"
        );
    }
    // Dify's key alone does not vouch for it.
    assert!(matches!(
        verify(&package, &[TrustedKey::dify_official()]),
        Verification::Invalid { .. }
    ));
    // The time is signed too: the same signature with another time does not verify.
    let mut moved: serde_json::Value = serde_json::from_slice(&comment).expect("json");
    moved["time"] = serde_json::json!(1_764_806_401);
    let moved = zip(&files, &serde_json::to_vec(&moved).expect("json"));
    assert!(matches!(
        verify(&moved, &[team("public.pem")]),
        Verification::Invalid { .. }
    ));
}

/// A repository declaring the golden package (signed by Dify) and an in-repo plugin directory
/// (unsigned: plugsync packs it), with `signatures` as given.
fn repository(signatures: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    std::fs::create_dir_all(root.join("packages")).expect("mkdir");
    std::fs::write(root.join("packages/agent.difypkg"), golden()).expect("write");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/plugins/hello-world");
    let dest = root.join("plugins/hello-world");
    std::fs::create_dir_all(&dest).expect("mkdir");
    for entry in walk(&example) {
        let rel = entry.strip_prefix(&example).expect("inside");
        std::fs::create_dir_all(dest.join(rel).parent().expect("parent")).expect("mkdir");
        std::fs::copy(&entry, dest.join(rel)).expect("copy");
    }
    std::fs::write(
        root.join("plugins.yaml"),
        format!(
            "apiVersion: plugsync.dev/v1alpha1\nkind: PluginSet\nmetadata:\n  name: signed\n  \
             namespace: dify\nspec:\n  registry:\n    prefix: registry.local/dify\n{signatures}  \
             plugins:\n    - path: packages/agent.difypkg\n    - path: plugins/hello-world\n"
        ),
    )
    .expect("write");
    tmp
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read_dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn plugsync(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = assert_cmd::Command::cargo_bin("plugsync")
        .expect("binary")
        .args(args)
        .env("PLUGSYNC_CACHE_DIR", dir.join(".cache"))
        .current_dir(dir)
        .output()
        .expect("runs");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn lock_entries(dir: &Path) -> Vec<(String, Option<String>)> {
    let lock: serde_json::Value =
        serde_saphyr::from_slice(&std::fs::read(dir.join("plugins.lock")).expect("lock"))
            .expect("yaml");
    lock["plugins"]
        .as_array()
        .expect("plugins")
        .iter()
        .map(|p| {
            (
                p["name"].as_str().expect("name").to_string(),
                p["signature"].as_str().map(str::to_string),
            )
        })
        .collect()
}

#[test]
fn lock_records_who_signed_each_package() {
    let repo = repository("");
    let (ok, out) = plugsync(repo.path(), &["lock"]);
    assert!(ok, "{out}");
    assert_eq!(
        lock_entries(repo.path()),
        vec![
            (
                "langgenius/agent".to_string(),
                Some(DIFY_OFFICIAL_SIGNER.to_string())
            ),
            (
                "plugsync/hello-world".to_string(),
                Some("unsigned".to_string())
            ),
        ]
    );
    let (ok, out) = plugsync(repo.path(), &["lock", "--locked"]);
    assert!(ok, "{out}");
}

#[test]
fn a_lock_written_before_signatures_were_recorded_is_still_up_to_date() {
    let repo = repository("");
    assert!(plugsync(repo.path(), &["lock"]).0);
    let lock = std::fs::read_to_string(repo.path().join("plugins.lock")).expect("lock");
    let old: String = lock
        .lines()
        .filter(|l| !l.trim_start().starts_with("signature:"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_ne!(old, lock);
    std::fs::write(repo.path().join("plugins.lock"), &old).expect("write");
    let (ok, out) = plugsync(repo.path(), &["lock", "--locked"]);
    assert!(ok, "{out}");
    // `plugsync lock` fills the signatures in.
    assert!(plugsync(repo.path(), &["lock"]).0);
    assert_eq!(
        std::fs::read_to_string(repo.path().join("plugins.lock")).expect("lock"),
        lock
    );
}

#[test]
fn require_signed_refuses_the_unsigned_plugin_at_its_line_and_writes_nothing() {
    let repo = repository("  signatures:\n    policy: requireSigned\n");
    let (ok, out) = plugsync(repo.path(), &["lock"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("plugins.yaml:13:") && out.contains("spec.plugins[1].path"),
        "names the file, line and field: {out}"
    );
    assert!(
        out.contains("refused plugsync/hello-world 0.1.0: it is unsigned"),
        "{out}"
    );
    assert!(
        !out.contains("langgenius/agent"),
        "the signed one passes: {out}"
    );
    assert!(!repo.path().join("plugins.lock").exists());
}

#[test]
fn refuse_invalid_refuses_a_package_changed_after_signing() {
    let repo = repository("  signatures:\n    policy: refuseInvalid\n");
    let (mut files, comment) = entries(&golden());
    let (_, content) = files
        .iter_mut()
        .find(|(name, _)| name.ends_with(".py"))
        .expect("a python file");
    content.extend_from_slice(b"\n# changed after signing\n");
    std::fs::write(
        repo.path().join("packages/agent.difypkg"),
        zip(&files, &comment),
    )
    .expect("write");
    let (ok, out) = plugsync(repo.path(), &["lock"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("spec.plugins[0].path")
            && out.contains("refused langgenius/agent 0.0.14: its signature is invalid"),
        "{out}"
    );
    // Unsigned is allowed under refuseInvalid: the directory plugin is not named.
    assert!(!out.contains("hello-world"), "{out}");
}

#[test]
fn a_repository_key_that_is_missing_or_not_a_key_is_named_at_its_field() {
    let repo =
        repository("  signatures:\n    keys:\n      - name: team\n        path: keys/team.pem\n");
    let (ok, out) = plugsync(repo.path(), &["lock"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("spec.signatures.keys[0].path: keys/team.pem is not in the repository"),
        "{out}"
    );
    std::fs::create_dir_all(repo.path().join("keys")).expect("mkdir");
    std::fs::write(repo.path().join("keys/team.pem"), "not a key\n").expect("write");
    let (ok, out) = plugsync(repo.path(), &["lock"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("public key \"team\" is not an RSA public key"),
        "{out}"
    );
}

#[test]
fn a_package_signed_by_the_repository_s_key_is_recorded_under_its_name() {
    let repo = repository(
        "  signatures:\n    policy: refuseInvalid\n    keys:\n      - name: team\n        path: keys/team.pem\n",
    );
    let keys = repo.path().join("keys");
    std::fs::create_dir_all(&keys).expect("mkdir");
    openssl(&keys, &["genrsa", "-out", "private.pem", "2048"]);
    openssl(
        &keys,
        &["rsa", "-in", "private.pem", "-pubout", "-out", "team.pem"],
    );
    let (files, _) = entries(&golden());
    let comment = sign_with_openssl(&keys, &files, 1_764_806_400);
    std::fs::remove_file(keys.join("private.pem")).expect("rm");
    std::fs::write(
        repo.path().join("packages/agent.difypkg"),
        zip(&files, &comment),
    )
    .expect("write");
    let (ok, out) = plugsync(repo.path(), &["lock"]);
    assert!(ok, "{out}");
    assert_eq!(
        lock_entries(repo.path())[0],
        ("langgenius/agent".to_string(), Some("team".to_string()))
    );
}
