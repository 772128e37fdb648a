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
