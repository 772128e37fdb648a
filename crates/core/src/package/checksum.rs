//! Dify's package checksum, the `@checksum` part of a plugin's unique identifier.
//!
//! The plugin daemon hashes each file entry's path and content separately, then hashes
//! the concatenation of those digests in path order. Only file entries count: directory
//! entries, timestamps, permissions, compression and the zip comment (where Dify keeps
//! its signature) do not, so re-zipping the same files keeps the identifier.

use sha2::{Digest, Sha256};

/// Accumulates `(path, content digest)` pairs and produces the checksum.
#[derive(Debug, Default)]
pub(super) struct Checksum {
    files: Vec<(Vec<u8>, [u8; 32])>,
}

impl Checksum {
    /// Records one file entry: its path as stored in the archive, and its content's SHA-256
    /// (computed once by the reader, which the signature needs too).
    pub(super) fn add(&mut self, path: &[u8], content_sha256: [u8; 32]) {
        self.files.push((path.to_vec(), content_sha256));
    }

    /// The lowercase hex checksum: `sha256(Σ sha256(path) ‖ sha256(content))` over the
    /// files sorted by path bytes (Go's string order, as in the daemon).
    pub(super) fn finish(mut self) -> String {
        self.files.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut outer = Sha256::new();
        for (path, content) in &self.files {
            outer.update(Sha256::digest(path));
            outer.update(content);
        }
        hex::encode(outer.finalize())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(data: &[u8]) -> [u8; 32] {
        Sha256::digest(data).into()
    }

    fn sha(data: &[u8]) -> Vec<u8> {
        Sha256::digest(data).to_vec()
    }

    /// The expected checksum, built by hand from first principles.
    fn expected(sorted: &[(&str, &[u8])]) -> String {
        let mut concat = Vec::new();
        for (path, content) in sorted {
            concat.extend(sha(path.as_bytes()));
            concat.extend(sha(content));
        }
        hex::encode(sha(&concat))
    }

    #[test]
    fn empty_set_is_sha256_of_nothing() {
        assert_eq!(
            Checksum::default().finish(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn order_of_addition_does_not_matter() {
        let mut a = Checksum::default();
        a.add(b"b.py", digest(b"print(2)"));
        a.add(b"a.py", digest(b"print(1)"));
        let mut b = Checksum::default();
        b.add(b"a.py", digest(b"print(1)"));
        b.add(b"b.py", digest(b"print(2)"));
        let want = expected(&[("a.py", b"print(1)"), ("b.py", b"print(2)")]);
        assert_eq!(a.finish(), want);
        assert_eq!(b.finish(), want);
    }

    #[test]
    fn sorts_by_bytes_not_by_path_components() {
        // Byte order puts "a-b" (0x2d) before "a/b" (0x2f) and "a/b" before "a0".
        let mut c = Checksum::default();
        c.add(b"a0", digest(b"3"));
        c.add(b"a/b", digest(b"2"));
        c.add(b"a-b", digest(b"1"));
        assert_eq!(
            c.finish(),
            expected(&[("a-b", b"1"), ("a/b", b"2"), ("a0", b"3")])
        );
    }

    #[test]
    fn path_and_content_both_count() {
        let one = |path: &[u8], content: &[u8]| {
            let mut c = Checksum::default();
            c.add(path, digest(content));
            c.finish()
        };
        assert_eq!(one(b"main.py", b"x"), expected(&[("main.py", b"x")]));
        assert_ne!(one(b"main.py", b"x"), one(b"main.py", b"y"));
        assert_ne!(one(b"main.py", b"x"), one(b"other.py", b"x"));
    }
}
