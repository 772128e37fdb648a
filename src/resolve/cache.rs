//! A content-addressed package cache on disk.
//!
//! CONTRACT STUB: the bodies are filled in by the sources work; signatures are fixed.

use std::io;
use std::path::{Path, PathBuf};

/// Packages stored by sha256.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

impl Cache {
    /// Opens (creating if needed) a cache rooted at `root`.
    pub fn open(root: &Path) -> io::Result<Cache> {
        Ok(Cache {
            root: root.to_path_buf(),
        })
    }

    /// `$PLUGSYNC_CACHE_DIR`, else the user cache dir's `plugsync`.
    pub fn default_dir() -> PathBuf {
        PathBuf::from(".plugsync-cache")
    }

    /// The cache root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The bytes stored under `sha256`, verified; `None` when absent or corrupt.
    pub fn get(&self, _sha256: &str) -> io::Result<Option<Vec<u8>>> {
        Ok(None)
    }

    /// Stores bytes atomically and returns their sha256.
    pub fn put(&self, _bytes: &[u8]) -> io::Result<String> {
        Ok(String::new())
    }
}
