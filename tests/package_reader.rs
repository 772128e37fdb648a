//! Package reading, validation and packing, against a real published package and
//! against hostile archives built in each test.

#[path = "common/package_fixtures.rs"]
mod package_fixtures;

use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime};

use package_fixtures::{
    data_offset, rename_entry, set_compressed_size, set_compression_method, set_declared_size,
    set_flags, strip_comment, ZipFixture, MANIFEST,
};
use plugsync_core::package::{
    pack_dir, pack_dir_listing, plugin_id, Package, PackageError, COMPRESSION_RATIO_THRESHOLD,
    MAX_COMPRESSION_RATIO, MAX_ENTRIES, MAX_UNCOMPRESSED_SIZE,
};
use sha2::{Digest, Sha256};

const GOLDEN: &str = "tests/fixtures/packages/langgenius-agent_0.0.14.difypkg";
const GOLDEN_CHECKSUM: &str = "26958a0e80a10655ce73812bdb7c35a66ce7b16f5ac346d298bda17ff85efd1e";
const MIB: usize = 1024 * 1024;

fn golden() -> Vec<u8> {
    fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join(GOLDEN)).unwrap()
}

#[track_caller]
fn refused(bytes: &[u8]) -> PackageError {
    match Package::read(bytes) {
        Ok(p) => panic!("expected a refusal, read {}", p.unique_identifier()),
        Err(e) => e,
    }
}

/// Asserts the error's message names `entry` (quoted, as the messages print it).
#[track_caller]
fn assert_names(err: &PackageError, entry: &str) {
    let message = err.to_string();
    assert!(
        message.contains(&format!("{entry:?}")),
        "{message:?} does not name {entry:?}"
    );
}

// ---------------------------------------------------------------- golden package

#[test]
fn golden_package_has_difys_identity() {
    let bytes = golden();
    let package = Package::read(&bytes).unwrap();
    assert_eq!(package.checksum, GOLDEN_CHECKSUM);
    assert_eq!(
        package.sha256,
        "a58786359976dbbc96b353c9fc0e9ced05a3f5ee51995424c527934add9d323f"
    );
    assert_eq!(package.size, bytes.len() as u64);
    assert_eq!(package.name(), "langgenius/agent");
    assert_eq!(package.manifest.version, "0.0.14");
    assert_eq!(
        package.unique_identifier(),
        format!("langgenius/agent:0.0.14@{GOLDEN_CHECKSUM}")
    );
    assert_eq!(package.manifest.runner_language, "python");
    assert_eq!(package.manifest.runner_version, "3.12");
    assert_eq!(package.manifest.entrypoint, "main");
    assert_eq!(package.manifest.memory, 1_048_576);
    assert_eq!(package.manifest.arch, ["amd64", "arm64"]);
    assert_eq!(package.plugin_id(), plugin_id(&package.unique_identifier()));
    assert_eq!(package.plugin_id(), "d62e5e95afbb7da9993d56f58e120ce5");
}

#[test]
fn golden_checksum_does_not_cover_the_signature() {
    let unsigned = strip_comment(golden());
    let package = Package::read(&unsigned).unwrap();
    assert_eq!(package.checksum, GOLDEN_CHECKSUM);
    assert_ne!(package.sha256, Package::read(&golden()).unwrap().sha256);
}

#[test]
fn minimal_package_with_directories_reads() {
    let bytes = ZipFixture::new()
        .dir("provider/")
        .file("provider/hello.yaml", "identity: {}")
        .file("manifest.yaml", MANIFEST)
        .build();
    let package = Package::read(&bytes).unwrap();
    assert_eq!(package.name(), "plugsync/hello");
    assert_eq!(package.manifest.entrypoint, "main");
}

#[test]
fn zip_comment_does_not_change_the_checksum() {
    let build = |comment: &str| {
        ZipFixture::with_manifest()
            .file("main.py", "print('hi')\n")
            .comment(comment)
            .build()
    };
    let plain = Package::read(&build("")).unwrap();
    let signed = Package::read(&build(r#"{"signature":"c2lnbmVk","time":1}"#)).unwrap();
    assert_eq!(plain.checksum, signed.checksum);
    assert_ne!(plain.sha256, signed.sha256);
}

// ---------------------------------------------------------------- malformed zip

#[test]
fn non_zip_bytes_are_malformed() {
    for bytes in [&b""[..], b"hello", b"PK\x03\x04garbage", &[0u8; 4096]] {
        assert!(
            matches!(refused(bytes), PackageError::Malformed { .. }),
            "{bytes:?}"
        );
    }
}

#[test]
fn truncated_archive_is_malformed() {
    let bytes = golden();
    let err = refused(&bytes[..bytes.len() / 2]);
    assert!(matches!(err, PackageError::Malformed { .. }), "{err:?}");
    assert!(
        err.to_string().starts_with("not a valid zip archive"),
        "{err}"
    );
}

#[test]
fn bad_crc_is_refused_naming_the_entry() {
    let mut bytes = ZipFixture::with_manifest()
        .stored("main.py", "print('hello')\n")
        .build();
    let at = data_offset(&bytes, "main.py");
    assert_eq!(bytes[at], b'p');
    bytes[at] = b'P';
    let err = refused(&bytes);
    assert!(
        matches!(&err, PackageError::CorruptEntry { name, reason }
            if name == "main.py" && reason.contains("checksum")),
        "{err:?}"
    );
    assert_names(&err, "main.py");
}

#[track_caller]
fn assert_unreadable(bytes: &[u8], entry: &str, why: &str) {
    let err = refused(bytes);
    assert!(
        matches!(&err, PackageError::CorruptEntry { name, reason }
            if name == entry && reason.contains(why)),
        "{err:?}"
    );
    assert_names(&err, entry);
}

/// A package whose `main.py` is deflated (20 lines, so the deflate stream has some
/// length) or stored.
fn with_main_py(deflated: bool) -> Vec<u8> {
    let fixture = ZipFixture::with_manifest();
    if deflated {
        fixture
            .file("main.py", "print('hello')\n".repeat(20))
            .build()
    } else {
        fixture.stored("main.py", "print('hello')\n").build()
    }
}

#[test]
fn corrupt_deflate_data_is_refused_naming_the_entry() {
    let mut bytes = with_main_py(true);
    // Block type 3 is reserved: no inflater accepts it.
    let at = data_offset(&bytes, "main.py");
    bytes[at] = 0xff;
    assert_unreadable(&bytes, "main.py", "invalid deflate data");
}

#[test]
fn truncated_deflate_data_is_refused_naming_the_entry() {
    let bytes = set_compressed_size(with_main_py(true), "main.py", 3);
    assert_unreadable(&bytes, "main.py", "invalid deflate data");
}

#[test]
fn data_past_the_end_of_the_archive_is_refused_naming_the_entry() {
    let bytes = set_compressed_size(with_main_py(false), "main.py", 1 << 30);
    assert_unreadable(&bytes, "main.py", "past the end of the archive");
}

#[test]
fn unsupported_compression_is_refused_naming_the_entry() {
    // 12 is bzip2: valid zip, but not what a Dify package holds.
    let bytes = set_compression_method(with_main_py(false), "main.py", 12);
    assert_unreadable(&bytes, "main.py", "unsupported compression method");
}

#[test]
fn encrypted_entries_are_refused_naming_the_entry() {
    let bytes = set_flags(with_main_py(false), "main.py", 1);
    assert_unreadable(&bytes, "main.py", "encrypted");
}

// ---------------------------------------------------------------- unsafe names

#[track_caller]
fn assert_unsafe_path(entry: &str, why: &str) {
    let bytes = ZipFixture::with_manifest().file(entry, "x").build();
    let err = refused(&bytes);
    assert!(
        matches!(&err, PackageError::UnsafePath { name, reason }
            if name == entry && reason.contains(why)),
        "{entry:?}: {err:?}"
    );
    assert_names(&err, entry);
}

#[test]
fn parent_dir_entries_are_refused() {
    assert_unsafe_path("../evil.py", "`..`");
    assert_unsafe_path("provider/../../evil.py", "`..`");
}

#[test]
fn absolute_entries_are_refused() {
    assert_unsafe_path("/etc/cron.d/evil", "absolute");
}

#[test]
fn backslash_entries_are_refused() {
    assert_unsafe_path("..\\evil.py", "backslash");
    assert_unsafe_path("provider\\hello.py", "backslash");
}

#[test]
fn nul_entries_are_refused() {
    assert_unsafe_path("evil\0.py", "NUL");
}

#[test]
fn symlink_entries_are_refused() {
    let bytes = ZipFixture::with_manifest()
        .symlink("provider/link.py", "/etc/passwd")
        .build();
    let err = refused(&bytes);
    assert!(
        matches!(&err, PackageError::Symlink { name } if name == "provider/link.py"),
        "{err:?}"
    );
    assert_names(&err, "provider/link.py");
}

// ---------------------------------------------------------------- size and ratio

#[test]
fn declared_total_over_the_cap_is_refused_before_inflating() {
    // 51 entries declaring 1 MiB each (within the ratio rule), holding
    // only a few bytes: the refusal can only come from the declared sizes.
    let mut fixture = ZipFixture::with_manifest();
    for i in 0..51 {
        fixture = fixture.stored(&format!("data/{i:02}.bin"), vec![7u8; 64 * 1024]);
    }
    let mut bytes = fixture.build();
    for i in 0..51 {
        bytes = set_declared_size(bytes, &format!("data/{i:02}.bin"), MIB as u32);
    }
    let err = refused(&bytes);
    match &err {
        PackageError::DeclaredTooLarge {
            entry,
            declared,
            limit,
        } => {
            // The manifest's bytes tip the total over at the 50th MiB.
            assert_eq!(entry, "data/49.bin");
            assert_eq!(*declared, (MANIFEST.len() + 50 * MIB) as u64);
            assert_eq!(*limit, MAX_UNCOMPRESSED_SIZE);
        }
        other => panic!("{other:?}"),
    }
    assert_names(&err, "data/49.bin");
    assert!(err.to_string().contains(&MAX_UNCOMPRESSED_SIZE.to_string()));
}

#[test]
fn honest_entries_over_the_cap_are_refused() {
    let mut fixture = ZipFixture::with_manifest();
    for i in 0..60 {
        fixture = fixture.stored(&format!("data/{i:02}.bin"), vec![i as u8; MIB]);
    }
    let err = refused(&fixture.build());
    assert!(
        matches!(&err, PackageError::DeclaredTooLarge { entry, .. } if entry == "data/49.bin"),
        "{err:?}"
    );
}

#[test]
fn actual_bytes_over_the_cap_are_refused_despite_small_declared_sizes() {
    // One stored entry of 51 MiB that declares a single byte: only counting the bytes
    // actually read catches it.
    let bytes = ZipFixture::new()
        .stored("big.bin", vec![0x5a; 51 * MIB])
        .file("manifest.yaml", MANIFEST)
        .build();
    let bytes = set_declared_size(bytes, "big.bin", 1);
    let err = refused(&bytes);
    match &err {
        PackageError::TooLarge {
            entry,
            total,
            limit,
        } => {
            assert_eq!(entry, "big.bin");
            assert_eq!(*total, MAX_UNCOMPRESSED_SIZE + 1);
            assert_eq!(*limit, MAX_UNCOMPRESSED_SIZE);
        }
        other => panic!("{other:?}"),
    }
    assert_names(&err, "big.bin");
}

#[test]
fn zip_bomb_is_refused_from_declared_sizes() {
    let bytes = ZipFixture::with_manifest()
        .file("zeros.bin", vec![0u8; 2 * MIB])
        .build();
    let err = refused(&bytes);
    match &err {
        PackageError::ZipBomb {
            name,
            uncompressed,
            compressed,
            max_ratio,
        } => {
            assert_eq!(name, "zeros.bin");
            assert_eq!(*uncompressed, 2 * MIB as u64);
            assert!(*compressed * MAX_COMPRESSION_RATIO < *uncompressed);
            assert_eq!(*max_ratio, MAX_COMPRESSION_RATIO);
            assert!(err.to_string().contains(&uncompressed.to_string()));
        }
        other => panic!("{other:?}"),
    }
    assert_names(&err, "zeros.bin");
}

#[test]
fn zip_bomb_is_refused_from_inflated_bytes_when_sizes_lie() {
    let bytes = ZipFixture::with_manifest()
        .file("zeros.bin", vec![0u8; 8 * MIB])
        .build();
    let bytes = set_declared_size(bytes, "zeros.bin", 1000);
    let err = refused(&bytes);
    match &err {
        PackageError::ZipBomb {
            name, uncompressed, ..
        } => {
            assert_eq!(name, "zeros.bin");
            // Reading stops one byte past the 1 MiB exemption, not at 8 MiB.
            assert_eq!(*uncompressed, COMPRESSION_RATIO_THRESHOLD + 1);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn highly_compressible_entry_up_to_the_threshold_is_accepted() {
    let bytes = ZipFixture::with_manifest()
        .file("zeros.bin", vec![0u8; COMPRESSION_RATIO_THRESHOLD as usize])
        .build();
    Package::read(&bytes).unwrap();
}

// ---------------------------------------------------------------- entry table

#[test]
fn too_many_entries_are_refused() {
    let mut fixture = ZipFixture::with_manifest();
    for i in 0..MAX_ENTRIES {
        fixture = fixture.stored(&format!("f/{i}"), "");
    }
    let err = refused(&fixture.build());
    assert!(
        matches!(err, PackageError::TooManyEntries { count, limit }
            if count == MAX_ENTRIES + 1 && limit == MAX_ENTRIES),
        "{err:?}"
    );
    assert!(err.to_string().contains("10001") && err.to_string().contains("10000"));
}

#[test]
fn entries_up_to_the_limit_are_accepted() {
    let mut fixture = ZipFixture::with_manifest();
    for i in 1..MAX_ENTRIES {
        fixture = fixture.stored(&format!("f/{i}"), "");
    }
    Package::read(&fixture.build()).unwrap();
}

#[test]
fn duplicate_entries_are_refused() {
    let bytes = ZipFixture::with_manifest()
        .stored("a.py", "print(1)")
        .stored("b.py", "print(2)")
        .build();
    let bytes = rename_entry(bytes, "b.py", "a.py");
    let err = refused(&bytes);
    assert!(
        matches!(&err, PackageError::DuplicateEntry { name } if name == "a.py"),
        "{err:?}"
    );
    assert_names(&err, "a.py");
}

#[test]
fn duplicate_manifests_are_refused() {
    let bytes = ZipFixture::with_manifest()
        .file("manifesX.yaml", MANIFEST.replace("hello", "other"))
        .build();
    let bytes = rename_entry(bytes, "manifesX.yaml", "manifest.yaml");
    let err = refused(&bytes);
    assert!(
        matches!(&err, PackageError::DuplicateEntry { name } if name == "manifest.yaml"),
        "{err:?}"
    );
    assert_names(&err, "manifest.yaml");
}

#[test]
fn missing_manifest_is_refused() {
    let err = refused(&ZipFixture::new().file("main.py", "").build());
    assert!(matches!(err, PackageError::MissingManifest), "{err:?}");
    // Not at the root does not count.
    let nested = ZipFixture::new()
        .file("plugin/manifest.yaml", MANIFEST)
        .build();
    assert!(matches!(refused(&nested), PackageError::MissingManifest));
    // Nor does a directory of that name.
    let dir = ZipFixture::new().dir("manifest.yaml/").build();
    assert!(matches!(refused(&dir), PackageError::MissingManifest));
}

#[test]
fn invalid_manifest_is_refused_naming_the_field() {
    let manifest = MANIFEST.replace("language: python", "language: node");
    let err = refused(&ZipFixture::new().file("manifest.yaml", manifest).build());
    assert!(
        matches!(&err, PackageError::InvalidManifest { field, .. } if field == "meta.runner.language"),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        r#"manifest.yaml: meta.runner.language: "node" is not supported (only python)"#
    );
}

// ---------------------------------------------------------------- pack_dir

const TREE: &[(&str, &str)] = &[
    ("manifest.yaml", MANIFEST),
    ("main.py", "from dify_plugin import Plugin\n"),
    ("provider/hello.yaml", "identity: {name: hello}\n"),
    ("provider/hello.py", "class Hello: ...\n"),
    ("tools/deep/nested/tool.py", "def run(): ...\n"),
    ("_assets/icon.svg", "<svg/>\n"),
];

fn write_tree(root: &Path, files: &[(&str, &str)]) {
    for (rel, content) in files {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, content).unwrap();
    }
}

fn plugin_dir(extra: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_tree(dir.path(), TREE);
    write_tree(dir.path(), extra);
    dir
}

#[test]
fn packing_is_byte_identical_across_runs_and_locations() {
    let a = plugin_dir(&[]);
    let first = pack_dir(a.path()).unwrap();
    assert_eq!(pack_dir(a.path()).unwrap(), first);

    // A copy elsewhere, written in the opposite order, with other timestamps.
    let b = tempfile::tempdir().unwrap();
    let copy = b.path().join("some/other/place");
    let reversed: Vec<_> = TREE.iter().rev().copied().collect();
    write_tree(&copy, &reversed);
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    for (rel, _) in TREE {
        fs::File::options()
            .write(true)
            .open(copy.join(rel))
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
    assert_ne!(a.path(), copy);
    assert_eq!(pack_dir(&copy).unwrap(), first);
}

#[test]
fn packed_package_reads_back_with_the_checksum_of_its_files() {
    let dir = plugin_dir(&[]);
    let bytes = pack_dir(dir.path()).unwrap();
    let package = Package::read(&bytes).unwrap();

    let mut sorted: Vec<_> = TREE.to_vec();
    sorted.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut outer = Sha256::new();
    for (path, content) in &sorted {
        outer.update(Sha256::digest(path.as_bytes()));
        outer.update(Sha256::digest(content.as_bytes()));
    }
    assert_eq!(package.checksum, hex::encode(outer.finalize()));
    assert_eq!(package.name(), "plugsync/hello");
    assert_eq!(
        pack_dir_listing(dir.path()).unwrap(),
        sorted
            .iter()
            .map(|(p, _)| p.to_string())
            .collect::<Vec<_>>()
    );
}

#[test]
fn difyignore_excludes_files() {
    let dir = plugin_dir(&[
        (".difyignore", "*.log\nsecrets/\n"),
        ("debug.log", "noise"),
        ("secrets/token", "s3cr3t"),
        ("provider/.difyignore", "draft.py\n"),
        ("provider/draft.py", "wip"),
        ("tools/keep.log.py", "kept"),
    ]);
    let listing = pack_dir_listing(dir.path()).unwrap();
    for gone in ["debug.log", "secrets/token", "provider/draft.py"] {
        assert!(!listing.iter().any(|p| p == gone), "{gone} in {listing:?}");
    }
    assert!(listing.iter().any(|p| p == "tools/keep.log.py"));
    assert!(listing.iter().any(|p| p == ".difyignore"));

    let package = Package::read(&pack_dir(dir.path()).unwrap()).unwrap();
    let clean = Package::read(&pack_dir(plugin_dir(&[]).path()).unwrap()).unwrap();
    assert_ne!(package.checksum, clean.checksum);
}

#[test]
fn gitignore_is_used_without_a_difyignore() {
    let dir = plugin_dir(&[
        (".gitignore", "build/\n*.pyc\n"),
        ("build/out.txt", "artifact"),
        ("provider/hello.pyc", "bytecode"),
    ]);
    let listing = pack_dir_listing(dir.path()).unwrap();
    assert!(
        !listing.iter().any(|p| p.starts_with("build/")),
        "{listing:?}"
    );
    assert!(!listing.iter().any(|p| p.ends_with(".pyc")), "{listing:?}");
    assert!(listing.iter().any(|p| p == "provider/hello.py"));
}

#[test]
fn gitignore_is_not_used_when_a_difyignore_exists() {
    let dir = plugin_dir(&[
        (".difyignore", "notes.txt\n"),
        (".gitignore", "vendor/\n"),
        ("vendor/lib.py", "vendored"),
        ("notes.txt", "private"),
    ]);
    let listing = pack_dir_listing(dir.path()).unwrap();
    assert!(listing.iter().any(|p| p == "vendor/lib.py"), "{listing:?}");
    assert!(!listing.iter().any(|p| p == "notes.txt"), "{listing:?}");
}

#[test]
fn git_directory_is_always_excluded() {
    let dir = plugin_dir(&[(".git/HEAD", "ref: refs/heads/main\n"), (".git/config", "")]);
    let listing = pack_dir_listing(dir.path()).unwrap();
    assert!(
        !listing.iter().any(|p| p.starts_with(".git")),
        "{listing:?}"
    );
    assert_eq!(listing.len(), TREE.len());
}

#[test]
fn symlinks_are_refused_naming_the_path() {
    let dir = plugin_dir(&[]);
    let link = dir.path().join("provider/link.py");
    std::os::unix::fs::symlink("/etc/passwd", &link).unwrap();
    let err = pack_dir(dir.path()).unwrap_err();
    assert!(
        matches!(&err, PackageError::SourceSymlink { path } if *path == link),
        "{err:?}"
    );
    assert!(
        err.to_string().contains(&link.display().to_string()),
        "{err}"
    );
    assert!(matches!(
        pack_dir_listing(dir.path()),
        Err(PackageError::SourceSymlink { .. })
    ));
}

#[test]
fn ignored_symlinks_are_not_refused() {
    let dir = plugin_dir(&[(".difyignore", ".venv/\n")]);
    fs::create_dir(dir.path().join(".venv")).unwrap();
    std::os::unix::fs::symlink("/usr/bin/python3", dir.path().join(".venv/python")).unwrap();
    Package::read(&pack_dir(dir.path()).unwrap()).unwrap();
}

#[test]
fn packing_refuses_what_reading_refuses() {
    let bad = MANIFEST.replace("entrypoint: main", "entrypoint: \"main; rm -rf /\"");
    let dir = plugin_dir(&[("manifest.yaml", &bad)]);
    let err = pack_dir(dir.path()).unwrap_err();
    assert!(
        matches!(&err, PackageError::InvalidManifest { field, .. } if field == "meta.runner.entrypoint"),
        "{err:?}"
    );

    let dir = tempfile::tempdir().unwrap();
    write_tree(dir.path(), &[("main.py", "")]);
    assert!(matches!(
        pack_dir(dir.path()),
        Err(PackageError::MissingManifest)
    ));
}

// ---------------------------------------------------------------- robustness

/// A cheap, deterministic stand-in for the fuzz target (which needs nightly): corrupt a
/// small valid package at random and check that reading never panics.
#[test]
fn corrupted_packages_never_panic() {
    let original = ZipFixture::with_manifest()
        .dir("provider/")
        .file("provider/hello.py", "def hello():\n    return 'hi'\n")
        .stored("main.py", "print('hi')\n")
        .comment("{\"signature\":\"x\"}")
        .build();
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        // xorshift64
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut refused_count = 0;
    for _ in 0..3000 {
        let mut bytes = original.clone();
        for _ in 0..=(next() % 4) {
            let at = (next() % bytes.len() as u64) as usize;
            bytes[at] = next() as u8;
        }
        if next() % 8 == 0 {
            bytes.truncate((next() % bytes.len() as u64) as usize);
        }
        refused_count += usize::from(Package::read(&bytes).is_err());
    }
    // Most corruptions must be caught (CRC, headers, manifest), not silently accepted.
    assert!(refused_count > 2000, "only {refused_count} of 3000 refused");
}

/// Packing is reproducible across plugsync versions, not only across runs: the example's
/// in-repo plugin packs to the digest its committed lock pins. The bytes depend on the
/// deflate implementation too (another backend compresses the same files differently), so
/// a dependency change that alters them fails here, before it makes every user's
/// plugins.lock out of date.
#[test]
fn the_example_plugin_packs_to_the_digest_its_lock_pins() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let lock = fs::read_to_string(root.join("plugins.lock")).unwrap();
    let pinned = lock
        .split("source: path:plugins/hello-world\n")
        .nth(1)
        .and_then(|rest| rest.lines().next())
        .and_then(|line| line.trim().strip_prefix("sha256: "))
        .expect("examples/plugins.lock pins plugins/hello-world");
    let packed = pack_dir(&root.join("plugins/hello-world")).unwrap();
    assert_eq!(hex::encode(Sha256::digest(&packed)), pinned);
}
