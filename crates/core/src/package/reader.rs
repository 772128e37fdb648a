//! Reading a package archive fully in memory, treating it as hostile.
//!
//! Two passes over the central directory: the first checks names, entry types and the
//! declared sizes without inflating anything; the second inflates each file entry
//! through a hard byte limit (sizes in the archive can lie), hashing as it goes.

use std::borrow::Cow;
use std::collections::HashSet;
use std::io::Cursor;

use miniz_oxide::inflate::TINFLStatus;
use sha2::{Digest, Sha256};
use zip::read::ZipFile;
use zip::{CompressionMethod, ZipArchive};

use super::checksum::Checksum;
use super::signature::SignedContent;
use super::{
    manifest, sha256_hex, Package, PackageError, COMPRESSION_RATIO_THRESHOLD, MANIFEST_FILE,
    MAX_COMPRESSION_RATIO, MAX_ENTRIES, MAX_UNCOMPRESSED_SIZE,
};

/// The file-type bits of a unix mode, and the symlink type.
const S_IFMT: u32 = 0o170_000;
const S_IFLNK: u32 = 0o120_000;

/// Central directory file header: signature and fixed length.
const CDFH_SIGNATURE: [u8; 4] = *b"PK\x01\x02";
const CDFH_LEN: usize = 46;

/// Reads a package; `sha256` is the bytes' digest when the caller already knows it.
pub(super) fn read(bytes: &[u8], sha256: Option<String>) -> Result<Package, PackageError> {
    let mut archive = ZipArchive::new(Cursor::new(bytes)).map_err(|e| PackageError::Malformed {
        reason: e.to_string(),
    })?;
    check_entry_table(bytes, &archive)?;

    // Pass 1: metadata only.
    let mut declared_total: u64 = 0;
    for i in 0..archive.len() {
        let name = name_at(&archive, i);
        let entry = archive
            .by_index_raw(i)
            .map_err(|e| corrupt(name.clone(), e))?;
        check_path(&name, entry.name_raw())?;
        // Belt and braces: the zip crate's own containment check must agree.
        if entry.enclosed_name().is_none() {
            return Err(PackageError::UnsafePath {
                name,
                reason: "escapes the package root".to_string(),
            });
        }
        if entry.unix_mode().is_some_and(|m| m & S_IFMT == S_IFLNK) {
            return Err(PackageError::Symlink { name });
        }
        let (size, compressed) = (entry.size(), entry.compressed_size());
        if size > ratio_cap(compressed) {
            return Err(PackageError::ZipBomb {
                name,
                uncompressed: size,
                compressed,
                max_ratio: MAX_COMPRESSION_RATIO,
            });
        }
        declared_total = declared_total.saturating_add(size);
        if declared_total > MAX_UNCOMPRESSED_SIZE {
            return Err(PackageError::DeclaredTooLarge {
                entry: name,
                declared: declared_total,
                limit: MAX_UNCOMPRESSED_SIZE,
            });
        }
    }

    // Pass 2: inflate file entries through hard limits.
    let mut total: u64 = 0;
    let mut checksum = Checksum::default();
    let mut manifest_bytes = None;
    let mut signed = SignedContent {
        entry_digests: Vec::with_capacity(archive.len()),
        comment: archive.comment().to_vec(),
    };
    for i in 0..archive.len() {
        let name = name_at(&archive, i);
        if name.ends_with('/') {
            // Directories carry no content and do not count for the checksum; the
            // signature covers every entry, a directory as empty content.
            signed.entry_digests.push(Sha256::digest([]).into());
            continue;
        }
        let entry = archive
            .by_index_raw(i)
            .map_err(|e| corrupt(name.clone(), e))?;
        let remaining = MAX_UNCOMPRESSED_SIZE.saturating_sub(total);
        let content = read_limited(bytes, &entry, &name, remaining)?;
        total += content.len() as u64;
        let digest: [u8; 32] = Sha256::digest(&content).into();
        checksum.add(entry.name_raw(), digest);
        signed.entry_digests.push(digest);
        if name == MANIFEST_FILE {
            manifest_bytes = Some(content.into_owned());
        }
    }

    let manifest_bytes = manifest_bytes.ok_or(PackageError::MissingManifest)?;
    Ok(Package {
        manifest: manifest::parse(&manifest_bytes)?,
        checksum: checksum.finish(),
        sha256: sha256.unwrap_or_else(|| sha256_hex(bytes)),
        size: bytes.len() as u64,
        signed,
    })
}

/// The most an entry with `compressed` bytes may inflate to before it counts as a bomb.
fn ratio_cap(compressed: u64) -> u64 {
    compressed
        .saturating_mul(MAX_COMPRESSION_RATIO)
        .max(COMPRESSION_RATIO_THRESHOLD)
}

/// The content of `entry` (of the archive `bytes`), inflated in one call straight from the
/// archive's bytes and checked against the entry's CRC-32, never past whichever limit is
/// tighter: the package's `remaining` budget or the entry's ratio cap (sizes in the
/// archive can lie, so the limit holds whatever the header says). A stored entry is
/// borrowed as is.
///
/// The zip crate's own reader would inflate through `Read` in small pieces, setting up a
/// 43 KB inflater for every entry; a cached package is read on every render.
fn read_limited<'b>(
    bytes: &'b [u8],
    entry: &ZipFile<'_, Cursor<&[u8]>>,
    name: &str,
    remaining: u64,
) -> Result<Cow<'b, [u8]>, PackageError> {
    let unreadable = |reason: &str| PackageError::CorruptEntry {
        name: name.to_string(),
        reason: reason.to_string(),
    };
    if entry.encrypted() {
        return Err(unreadable("is encrypted"));
    }
    let compressed = entry.compressed_size();
    let raw = usize::try_from(entry.data_start())
        .ok()
        .zip(usize::try_from(compressed).ok())
        .and_then(|(start, len)| bytes.get(start..start.checked_add(len)?))
        .ok_or_else(|| unreadable("its data runs past the end of the archive"))?;
    let ratio_cap = ratio_cap(compressed);
    let limit = remaining.min(ratio_cap);
    // One byte past the limit tells "at the limit" from "over it".
    let cap = usize::try_from(limit.saturating_add(1)).unwrap_or(usize::MAX);
    let content = match entry.compression() {
        CompressionMethod::Stored => Cow::Borrowed(&raw[..raw.len().min(cap)]),
        CompressionMethod::Deflated => {
            match miniz_oxide::inflate::decompress_to_vec_with_limit(raw, cap) {
                Ok(content) => Cow::Owned(content),
                Err(e) if e.status == TINFLStatus::HasMoreOutput => Cow::Owned(e.output),
                Err(e) => return Err(unreadable(&format!("invalid deflate data: {e}"))),
            }
        }
        other => {
            return Err(unreadable(&format!(
                "unsupported compression method {other}"
            )))
        }
    };
    let read = content.len() as u64;
    if read > ratio_cap {
        return Err(PackageError::ZipBomb {
            name: name.to_string(),
            uncompressed: read,
            compressed,
            max_ratio: MAX_COMPRESSION_RATIO,
        });
    }
    if read > limit {
        return Err(PackageError::TooLarge {
            entry: name.to_string(),
            total: MAX_UNCOMPRESSED_SIZE - remaining + read,
            limit: MAX_UNCOMPRESSED_SIZE,
        });
    }
    if crc32fast::hash(&content) != entry.crc32() {
        return Err(unreadable("CRC-32 checksum mismatch"));
    }
    Ok(content)
}

fn name_at(archive: &ZipArchive<Cursor<&[u8]>>, i: usize) -> String {
    archive.name_for_index(i).unwrap_or_default().to_string()
}

fn corrupt(name: String, e: zip::result::ZipError) -> PackageError {
    PackageError::CorruptEntry {
        name,
        reason: e.to_string(),
    }
}

/// Refuses entry counts over [`MAX_ENTRIES`] and duplicate names.
///
/// The zip crate indexes entries by name and silently keeps one of each duplicate, so
/// the central directory is walked here to see every header as stored.
fn check_entry_table(
    bytes: &[u8],
    archive: &ZipArchive<Cursor<&[u8]>>,
) -> Result<(), PackageError> {
    let names = central_directory_names(bytes, archive.central_directory_start());
    let count = names.len().max(archive.len());
    if count > MAX_ENTRIES {
        return Err(PackageError::TooManyEntries {
            count,
            limit: MAX_ENTRIES,
        });
    }
    let mut seen = HashSet::with_capacity(names.len());
    for name in &names {
        if !seen.insert(*name) {
            return Err(PackageError::DuplicateEntry {
                name: String::from_utf8_lossy(name).into_owned(),
            });
        }
    }
    if names.len() != archive.len() {
        // Distinct stored names that decode to the same name, or a central directory
        // that does not match its end record: either way, not a package we trust.
        return Err(PackageError::Malformed {
            reason: format!(
                "central directory holds {} headers but {} distinct entries",
                names.len(),
                archive.len()
            ),
        });
    }
    Ok(())
}

/// The raw names of the consecutive central directory headers starting at `start`.
fn central_directory_names(bytes: &[u8], start: u64) -> Vec<&[u8]> {
    let mut names = Vec::new();
    let Ok(mut pos) = usize::try_from(start) else {
        return names;
    };
    while let Some(header) = pos
        .checked_add(CDFH_LEN)
        .and_then(|end| bytes.get(pos..end))
    {
        if header[..4] != CDFH_SIGNATURE {
            break;
        }
        let field = |at: usize| usize::from(u16::from_le_bytes([header[at], header[at + 1]]));
        let (name_len, extra_len, comment_len) = (field(28), field(30), field(32));
        let name_start = pos + CDFH_LEN;
        let Some(name) = bytes.get(name_start..name_start + name_len) else {
            break;
        };
        names.push(name);
        pos = name_start + name_len + extra_len + comment_len;
    }
    names
}

/// Refuses names that could escape an extraction directory or that are not a clean
/// relative `/`-separated path, so every tool sees the same files.
fn check_path(name: &str, raw: &[u8]) -> Result<(), PackageError> {
    let unsafe_path = |reason: &str| PackageError::UnsafePath {
        name: name.to_string(),
        reason: reason.to_string(),
    };
    if raw.contains(&0) || name.contains('\0') {
        return Err(unsafe_path("contains a NUL byte"));
    }
    if name.contains('\\') {
        return Err(unsafe_path("contains a backslash"));
    }
    if name.starts_with('/') {
        return Err(unsafe_path("is absolute"));
    }
    let body = name.strip_suffix('/').unwrap_or(name);
    if body.is_empty() {
        return Err(unsafe_path("is empty"));
    }
    for component in body.split('/') {
        match component {
            ".." => return Err(unsafe_path("contains a `..` component")),
            "." | "" => return Err(unsafe_path("contains an empty or `.` component")),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use sha2::{Digest, Sha256};
    use zip::write::SimpleFileOptions;
    use zip::ZipWriter;

    use super::*;
    use crate::package::manifest::tests::VALID;

    fn zip(entries: &[(&str, &[u8])], dirs: &[&str], comment: &str) -> Vec<u8> {
        let mut w = ZipWriter::new(Cursor::new(Vec::new()));
        for d in dirs {
            w.add_directory(*d, SimpleFileOptions::default()).unwrap();
        }
        for (name, content) in entries {
            w.start_file(*name, SimpleFileOptions::default()).unwrap();
            w.write_all(content).unwrap();
        }
        w.set_comment(comment);
        w.finish().unwrap().into_inner()
    }

    /// Dify's checksum from first principles, over entries already in byte order.
    fn expected_checksum(sorted: &[(&str, &[u8])]) -> String {
        let mut outer = Vec::new();
        for (path, content) in sorted {
            outer.extend_from_slice(&Sha256::digest(path.as_bytes()));
            outer.extend_from_slice(&Sha256::digest(content));
        }
        hex::encode(Sha256::digest(&outer))
    }

    #[test]
    fn checksum_of_a_synthetic_archive() {
        let bytes = zip(
            &[
                ("provider/hello.py", b"def hello(): ...\n"),
                (MANIFEST_FILE, VALID.as_bytes()),
                ("main.py", b"print('hi')\n"),
            ],
            &["provider/"],
            "",
        );
        let package = read(&bytes, None).unwrap();
        assert_eq!(
            package.checksum,
            expected_checksum(&[
                ("main.py", b"print('hi')\n"),
                (MANIFEST_FILE, VALID.as_bytes()),
                ("provider/hello.py", b"def hello(): ...\n"),
            ])
        );
        assert_eq!(package.size, bytes.len() as u64);
        assert_eq!(package.sha256, hex::encode(Sha256::digest(&bytes)));

        // A digest the caller verified is taken as is: the same package, hashed once.
        let hashed = read(&bytes, Some(package.sha256.clone())).unwrap();
        assert_eq!(format!("{hashed:?}"), format!("{package:?}"));
    }

    #[test]
    fn checksum_ignores_directories_order_and_comment() {
        let files: [(&str, &[u8]); 2] = [(MANIFEST_FILE, VALID.as_bytes()), ("a.py", b"a")];
        let plain = read(&zip(&files, &[], ""), None).unwrap();
        let reversed = [files[1], files[0]];
        let other = read(
            &zip(&reversed, &["x/", "x/y/"], "{\"signature\":\"...\"}"),
            None,
        )
        .unwrap();
        assert_eq!(plain.checksum, other.checksum);
        assert_ne!(plain.sha256, other.sha256);
    }

    #[test]
    fn checksum_changes_with_content() {
        let a = read(
            &zip(
                &[(MANIFEST_FILE, VALID.as_bytes()), ("a.py", b"1")],
                &[],
                "",
            ),
            None,
        );
        let b = read(
            &zip(
                &[(MANIFEST_FILE, VALID.as_bytes()), ("a.py", b"2")],
                &[],
                "",
            ),
            None,
        );
        assert_ne!(a.unwrap().checksum, b.unwrap().checksum);
    }

    #[test]
    fn path_rules() {
        for ok in ["a", "a/b.py", "dir/", "a.b/c..d", "...", "-x"] {
            assert!(check_path(ok, ok.as_bytes()).is_ok(), "{ok}");
        }
        for (bad, why) in [
            ("../evil.py", "`..`"),
            ("a/../../evil.py", "`..`"),
            ("a/..", "`..`"),
            ("/etc/passwd", "absolute"),
            ("a\\b", "backslash"),
            ("..\\evil", "backslash"),
            ("a\0b", "NUL"),
            ("", "empty"),
            ("/", "absolute"),
            ("a//b", "empty or `.`"),
            ("./a", "empty or `.`"),
        ] {
            match check_path(bad, bad.as_bytes()) {
                Err(PackageError::UnsafePath { name, reason }) => {
                    assert_eq!(name, bad);
                    assert!(reason.contains(why), "{bad:?}: {reason}");
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn central_directory_walk_survives_garbage() {
        assert!(central_directory_names(b"", 0).is_empty());
        assert!(central_directory_names(b"PK\x01\x02", 0).is_empty());
        assert!(central_directory_names(b"abc", u64::MAX).is_empty());
        let mut header = b"PK\x01\x02".to_vec();
        header.resize(CDFH_LEN, 0);
        header[28] = 0xff; // name runs past the end
        assert!(central_directory_names(&header, 0).is_empty());
    }

    #[test]
    fn ratio_cap_is_the_larger_of_threshold_and_ratio() {
        assert_eq!(ratio_cap(0), COMPRESSION_RATIO_THRESHOLD);
        assert_eq!(ratio_cap(10), COMPRESSION_RATIO_THRESHOLD);
        assert_eq!(ratio_cap(20_000), 2_000_000);
        assert_eq!(ratio_cap(u64::MAX), u64::MAX);
    }
}
