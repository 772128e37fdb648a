//! The content-addressed package cache, on a real file system.

use std::io::ErrorKind;
use std::sync::Arc;
use std::thread;

use plugsync_core::resolve::cache::Cache;
use sha2::{Digest, Sha256};
use tempfile::TempDir;

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn cache() -> (TempDir, Cache) {
    let dir = TempDir::new().unwrap();
    let cache = Cache::open(&dir.path().join("cache")).unwrap();
    (dir, cache)
}

fn tmp_entries(cache: &Cache) -> usize {
    std::fs::read_dir(cache.root().join("tmp")).unwrap().count()
}

#[test]
fn put_then_get_round_trips() {
    let (_dir, cache) = cache();
    let bytes = b"a package".to_vec();
    let digest = cache.put(&bytes).unwrap();
    assert_eq!(digest, sha(&bytes));
    assert_eq!(cache.get(&digest).unwrap(), Some(bytes));
    assert!(cache.contains(&digest));
    let path = cache.path_of(&digest).unwrap();
    assert_eq!(path, cache.root().join("sha256").join(&digest));
}

#[test]
fn absent_entry_is_none() {
    let (_dir, cache) = cache();
    let digest = sha(b"never stored");
    assert_eq!(cache.get(&digest).unwrap(), None);
    assert!(!cache.contains(&digest));
    assert_eq!(cache.path_of(&digest), None);
}

#[test]
fn putting_the_same_bytes_twice_is_fine() {
    let (_dir, cache) = cache();
    let first = cache.put(b"same").unwrap();
    let second = cache.put(b"same").unwrap();
    assert_eq!(first, second);
    assert_eq!(cache.get(&first).unwrap().as_deref(), Some(&b"same"[..]));
}

#[test]
fn corrupt_entry_is_detected_and_removed() {
    let (_dir, cache) = cache();
    let digest = cache.put(b"original").unwrap();
    let path = cache.path_of(&digest).unwrap();
    std::fs::write(&path, b"tampered").unwrap();

    assert_eq!(cache.get(&digest).unwrap(), None);
    assert!(!path.exists(), "corrupt entry must be deleted");
    assert!(!cache.contains(&digest));

    // And a later put repairs it.
    cache.put(b"original").unwrap();
    assert_eq!(
        cache.get(&digest).unwrap().as_deref(),
        Some(&b"original"[..])
    );
}

#[test]
fn invalid_digests_are_rejected() {
    let (dir, cache) = cache();
    // A file outside the cache that traversal would reach.
    std::fs::write(dir.path().join("secret"), b"x").unwrap();
    let valid = sha(b"x");
    let invalid = [
        String::new(),
        "../../secret".to_owned(),
        "../secret".to_owned(),
        valid.to_uppercase(),
        valid[..63].to_owned(),
        format!("{valid}0"),
        format!("{}g", &valid[..63]),
        format!("{}/", &valid[..63]),
    ];
    for digest in &invalid {
        let err = cache.get(digest).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{digest:?}");
        assert!(!cache.contains(digest), "{digest:?}");
        assert_eq!(cache.path_of(digest), None, "{digest:?}");
    }
}

#[test]
fn concurrent_puts_and_gets_are_safe() {
    let (_dir, cache) = cache();
    let cache = Arc::new(cache);
    let shared = vec![42u8; 256 * 1024];
    let shared_sha = sha(&shared);
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let cache = Arc::clone(&cache);
            let shared = shared.clone();
            let shared_sha = shared_sha.clone();
            thread::spawn(move || {
                for i in 0..25 {
                    assert_eq!(cache.put(&shared).unwrap(), shared_sha);
                    let own = format!("thread {t} item {i}").repeat(1000).into_bytes();
                    let own_sha = cache.put(&own).unwrap();
                    assert_eq!(cache.get(&own_sha).unwrap(), Some(own));
                    // Another thread may be renaming over it right now: still whole.
                    assert_eq!(cache.get(&shared_sha).unwrap().as_ref(), Some(&shared));
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let entries = std::fs::read_dir(cache.root().join("sha256"))
        .unwrap()
        .count();
    assert_eq!(entries, 8 * 25 + 1);
    assert_eq!(tmp_entries(&cache), 0);
}

#[test]
fn concurrent_caches_on_one_dir_are_safe() {
    // Separate `Cache` values on one root, as two processes would have.
    let dir = TempDir::new().unwrap();
    let root = dir.path().join("cache");
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let root = root.clone();
            thread::spawn(move || {
                let cache = Cache::open(&root).unwrap();
                for i in 0..20 {
                    let bytes = format!("item {}", i % 5 + t).into_bytes();
                    let digest = cache.put(&bytes).unwrap();
                    assert_eq!(cache.get(&digest).unwrap(), Some(bytes));
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let cache = Cache::open(&root).unwrap();
    assert_eq!(tmp_entries(&cache), 0);
}

#[test]
fn no_temp_files_left_after_puts() {
    let (_dir, cache) = cache();
    for i in 0..10 {
        cache.put(format!("package {i}").as_bytes()).unwrap();
    }
    assert_eq!(tmp_entries(&cache), 0);
    let entries = std::fs::read_dir(cache.root().join("sha256"))
        .unwrap()
        .count();
    assert_eq!(entries, 10);
}
