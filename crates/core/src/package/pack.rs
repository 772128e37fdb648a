//! Packing a plugin source directory into a deterministic `.difypkg`.
//!
//! Determinism is the point: the same files must give the same bytes on every run and
//! machine, so a package built in CI can be pinned by its sha256. Hence: entries sorted
//! by `/`-separated path, no directory entries, a fixed timestamp (1980-01-01 00:00:00,
//! the zip epoch), fixed permissions (always 0o644: the source's executable bits vary
//! with checkouts and umasks, and the daemon runs `python -m`, which needs none), Deflate
//! at a fixed level, no comment and no extra fields.

use std::fs;
use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};

use ignore::WalkBuilder;
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, DateTime, ZipWriter};

use super::{Package, PackageError, MAX_ENTRIES, MAX_UNCOMPRESSED_SIZE};

/// Ignore file that, when present at the root, decides what is left out.
const DIFYIGNORE: &str = ".difyignore";
/// Ignore file used when there is no `.difyignore` at the root.
const GITIGNORE: &str = ".gitignore";
/// Always left out, whatever the ignore files say.
const GIT_DIR: &str = ".git";
/// Deflate level (flate2's default); fixed so output does not drift.
const DEFLATE_LEVEL: i64 = 6;
/// Unix permissions of every packed file.
const FILE_MODE: u32 = 0o644;

/// The version of the rules above (and of the deflate backend's output): the package
/// cache remembers which package a directory's git tree packed to under this name, so a
/// change that alters packed bytes must change it, or old records would be trusted.
/// `tests/package_reader.rs` pins the example's packed digest, which fails first.
pub(crate) const PACKING_RULES: &str = "v1";

/// The sorted, `/`-separated relative paths [`pack_dir`](super::pack_dir) would pack
/// from `dir`, for diagnostics ("why is this file in my package?").
pub fn pack_dir_listing(dir: &Path) -> Result<Vec<String>, PackageError> {
    Ok(collect(dir)?.into_iter().map(|(rel, _)| rel).collect())
}

pub(super) fn pack_dir(dir: &Path) -> Result<Vec<u8>, PackageError> {
    let files = collect(dir)?;
    if files.len() > MAX_ENTRIES {
        return Err(PackageError::TooManyEntries {
            count: files.len(),
            limit: MAX_ENTRIES,
        });
    }

    let options = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Deflated)
        .compression_level(Some(DEFLATE_LEVEL))
        .last_modified_time(DateTime::default())
        .unix_permissions(FILE_MODE);
    let mut zip = ZipWriter::new(Cursor::new(Vec::new()));
    let mut total: u64 = 0;
    for (rel, path) in &files {
        let content = fs::read(path).map_err(|source| PackageError::Io {
            path: path.clone(),
            source,
        })?;
        total = total.saturating_add(content.len() as u64);
        if total > MAX_UNCOMPRESSED_SIZE {
            // Stop before reading (and compressing) the rest of an oversized tree.
            return Err(PackageError::TooLarge {
                entry: rel.clone(),
                total,
                limit: MAX_UNCOMPRESSED_SIZE,
            });
        }
        zip.start_file(rel.as_str(), options)
            .and_then(|()| zip.write_all(&content).map_err(Into::into))
            .map_err(|e| write_error(dir, &e))?;
    }
    let bytes = zip.finish().map_err(|e| write_error(dir, &e))?.into_inner();

    Package::read(&bytes)?;
    Ok(bytes)
}

fn write_error(dir: &Path, e: &zip::result::ZipError) -> PackageError {
    PackageError::Walk {
        dir: dir.to_path_buf(),
        reason: format!("writing the package failed: {e}"),
    }
}

/// Walks `dir` with the ignore rules and returns `(relative path, full path)` for every
/// file to pack, sorted by relative path bytes.
fn collect(dir: &Path) -> Result<Vec<(String, PathBuf)>, PackageError> {
    let meta = fs::metadata(dir).map_err(|source| PackageError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(PackageError::UnsupportedSource {
            path: dir.to_path_buf(),
            reason: "is not a directory".to_string(),
        });
    }
    let ignore_file = if dir.join(DIFYIGNORE).is_file() {
        DIFYIGNORE
    } else {
        GITIGNORE
    };

    let walk = WalkBuilder::new(dir)
        .standard_filters(false)
        .hidden(false)
        .parents(false)
        .require_git(false)
        .follow_links(false)
        .add_custom_ignore_filename(ignore_file)
        .filter_entry(|e| e.file_name() != GIT_DIR)
        .build();

    let mut files = Vec::new();
    for entry in walk {
        let entry = entry.map_err(|e| PackageError::Walk {
            dir: dir.to_path_buf(),
            reason: e.to_string(),
        })?;
        if entry.depth() == 0 {
            continue;
        }
        let path = entry.path();
        let Some(file_type) = entry.file_type() else {
            continue;
        };
        if file_type.is_symlink() {
            return Err(PackageError::SourceSymlink {
                path: path.to_path_buf(),
            });
        }
        if file_type.is_dir() {
            continue;
        }
        if !file_type.is_file() {
            return Err(PackageError::UnsupportedSource {
                path: path.to_path_buf(),
                reason: "is not a regular file, directory or symlink".to_string(),
            });
        }
        files.push((relative(dir, path)?, path.to_path_buf()));
    }
    files.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    Ok(files)
}

/// `path` relative to `dir`, `/`-separated, as a UTF-8 zip entry name.
fn relative(dir: &Path, path: &Path) -> Result<String, PackageError> {
    let unsupported = |reason: &str| PackageError::UnsupportedSource {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    let rel = path
        .strip_prefix(dir)
        .map_err(|_| unsupported("is outside the plugin directory"))?;
    let parts = rel
        .components()
        .map(|c| c.as_os_str().to_str())
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| unsupported("has a name that is not valid UTF-8"))?;
    Ok(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::package::manifest::tests::VALID;

    fn plugin_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("manifest.yaml"), VALID).unwrap();
        fs::write(dir.path().join("main.py"), "print('hi')\n").unwrap();
        dir
    }

    #[test]
    fn entries_use_fixed_metadata() {
        let dir = plugin_dir();
        let bytes = pack_dir(dir.path()).unwrap();
        let mut archive = zip::ZipArchive::new(Cursor::new(&bytes)).unwrap();
        assert!(archive.comment().is_empty());
        let names: Vec<_> = archive.file_names().map(str::to_string).collect();
        assert_eq!(names, ["main.py", "manifest.yaml"]);
        for i in 0..archive.len() {
            let entry = archive.by_index(i).unwrap();
            assert_eq!(entry.compression(), CompressionMethod::Deflated);
            assert_eq!(entry.unix_mode(), Some(0o100_644));
            assert_eq!(entry.last_modified(), Some(DateTime::default()));
            assert_eq!(entry.extra_data().unwrap_or_default(), &[] as &[u8]);
        }
    }

    #[test]
    fn executable_bit_does_not_change_the_bytes() {
        use std::os::unix::fs::PermissionsExt;
        let dir = plugin_dir();
        let before = pack_dir(dir.path()).unwrap();
        let main = dir.path().join("main.py");
        fs::set_permissions(&main, fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(pack_dir(dir.path()).unwrap(), before);
    }

    #[test]
    fn nested_paths_are_slash_separated_and_sorted() {
        let dir = plugin_dir();
        fs::create_dir_all(dir.path().join("provider/sub")).unwrap();
        fs::write(dir.path().join("provider/sub/z.py"), "").unwrap();
        fs::write(dir.path().join("provider/a.py"), "").unwrap();
        fs::write(dir.path().join("provider-x.py"), "").unwrap();
        assert_eq!(
            pack_dir_listing(dir.path()).unwrap(),
            [
                "main.py",
                "manifest.yaml",
                "provider-x.py",
                "provider/a.py",
                "provider/sub/z.py"
            ]
        );
    }

    #[test]
    fn not_a_directory_is_refused() {
        let dir = plugin_dir();
        let file = dir.path().join("main.py");
        assert!(matches!(
            pack_dir(&file),
            Err(PackageError::UnsupportedSource { path, .. }) if path == file
        ));
        let missing = dir.path().join("missing");
        assert!(matches!(
            pack_dir(&missing),
            Err(PackageError::Io { path, .. }) if path == missing
        ));
    }

    #[test]
    fn oversized_tree_is_refused_before_compressing() {
        let dir = plugin_dir();
        let big = vec![b'x'; 26 * 1024 * 1024];
        fs::write(dir.path().join("a.bin"), &big).unwrap();
        fs::write(dir.path().join("b.bin"), &big).unwrap();
        match pack_dir(dir.path()) {
            Err(PackageError::TooLarge {
                entry,
                total,
                limit,
            }) => {
                assert_eq!(entry, "b.bin");
                assert_eq!(total, 2 * big.len() as u64);
                assert_eq!(limit, MAX_UNCOMPRESSED_SIZE);
            }
            other => panic!("{other:?}"),
        }
    }
}
