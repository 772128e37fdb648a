//! A content-addressed package cache on disk.
//!
//! Layout: `<root>/sha256/<64 lowercase hex>` holds the bytes whose sha256 is the file
//! name; `<root>/tmp/` holds writes in progress. Because an entry's name is its content
//! hash, concurrent writers (threads or processes) of the same content race harmlessly:
//! each writes a private temp file and renames it over the same final name, and readers
//! only ever see a complete file. Reads re-hash the bytes, so a corrupt entry (disk
//! error, manual edit) is detected, removed and reported as absent rather than trusted.
//!
//! `<root>/packed/<rules>/<git tree id>` records the sha256 a plugin directory with that
//! tree packed to. Packing is deterministic, so the same tree always gives the same bytes:
//! the record lets a repository's unchanged directories be read from the cache instead of
//! packed again (the pull-request diff of a working tree packs nothing it packed before).
//! A record only names an entry, which `get` still verifies; a missing, corrupt or
//! unreadable record is a miss, never an error.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

/// Packages stored by sha256.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

impl Cache {
    /// Opens (creating if needed) a cache rooted at `root`.
    pub fn open(root: &Path) -> io::Result<Cache> {
        let cache = Cache {
            root: root.to_path_buf(),
        };
        fs::create_dir_all(cache.entries_dir())?;
        fs::create_dir_all(cache.tmp_dir())?;
        fs::create_dir_all(cache.packed_dir())?;
        Ok(cache)
    }

    /// `$PLUGSYNC_CACHE_DIR` if set and non-empty, else the user cache dir's `plugsync`,
    /// else `./.plugsync-cache` (containers without a home directory).
    pub fn default_dir() -> PathBuf {
        match std::env::var_os("PLUGSYNC_CACHE_DIR") {
            Some(dir) if !dir.is_empty() => PathBuf::from(dir),
            _ => dirs::cache_dir()
                .map(|dir| dir.join("plugsync"))
                .unwrap_or_else(|| PathBuf::from(".plugsync-cache")),
        }
    }

    /// The cache root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The bytes stored under `sha256`, verified; `None` when absent or corrupt (a corrupt
    /// entry is deleted so the next `put` repairs it). A `sha256` that is not 64 lowercase
    /// hex digits is an `InvalidInput` error: it never reaches the file system.
    pub fn get(&self, sha256: &str) -> io::Result<Option<Vec<u8>>> {
        let path = self.entry_path(sha256)?;
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        if crate::package::sha256_hex(&bytes) == sha256 {
            return Ok(Some(bytes));
        }
        tracing::warn!(path = %path.display(), "corrupt cache entry removed");
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(None),
        }
    }

    /// Stores bytes atomically and returns their sha256 (lowercase hex).
    ///
    /// The bytes are written and fsynced to a temp file in `<root>/tmp/` (same file
    /// system as the entries, so the rename is atomic), then renamed to the final name.
    /// An existing entry is simply replaced by identical content.
    pub fn put(&self, bytes: &[u8]) -> io::Result<String> {
        let sha = crate::package::sha256_hex(bytes);
        let mut tmp = NamedTempFile::new_in(self.tmp_dir())?;
        tmp.write_all(bytes)?;
        tmp.as_file().sync_all()?;
        tmp.persist(self.entries_dir().join(&sha))
            .map_err(|e| e.error)?;
        Ok(sha)
    }

    /// Whether an entry for `sha256` is present (not verified; `get` verifies).
    pub fn contains(&self, sha256: &str) -> bool {
        self.path_of(sha256).is_some()
    }

    /// The file holding `sha256`, for callers that stream it (an upload) rather than load
    /// it; `None` when absent or when `sha256` is not a valid digest. Not verified.
    pub fn path_of(&self, sha256: &str) -> Option<PathBuf> {
        self.entry_path(sha256).ok().filter(|path| path.is_file())
    }

    /// The sha256 that a directory whose git tree id is `tree` packed to, when recorded
    /// under the current packing rules. A hint: the caller reads the entry with `get`.
    pub fn packed_sha256(&self, tree: git2::Oid) -> Option<String> {
        let text = fs::read_to_string(self.packed_dir().join(tree.to_string())).ok()?;
        let sha = text.trim();
        crate::package::is_sha256_hex(sha).then(|| sha.to_string())
    }

    /// Records that the directory with git tree id `tree` packs to `sha256`, atomically
    /// (a reader sees the whole record or none).
    pub fn record_packed(&self, tree: git2::Oid, sha256: &str) -> io::Result<()> {
        let mut tmp = NamedTempFile::new_in(self.tmp_dir())?;
        tmp.write_all(sha256.as_bytes())?;
        tmp.persist(self.packed_dir().join(tree.to_string()))
            .map_err(|e| e.error)?;
        Ok(())
    }

    fn packed_dir(&self) -> PathBuf {
        self.root.join("packed").join(crate::package::PACKING_RULES)
    }

    fn entries_dir(&self) -> PathBuf {
        self.root.join("sha256")
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// The entry path for a validated digest; rejecting anything but 64 lowercase hex
    /// digits keeps `..`, separators and aliases (upper case) out of the path.
    fn entry_path(&self, sha256: &str) -> io::Result<PathBuf> {
        if !crate::package::is_sha256_hex(sha256) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("not a sha256 digest (64 lowercase hex digits): {sha256:?}"),
            ));
        }
        Ok(self.entries_dir().join(sha256))
    }
}
