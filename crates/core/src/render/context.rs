//! The build context: a deterministic tar of the package and its Dockerfile.
//!
//! Content-addressed by its sha256, so the build Job's init container can verify what it
//! fetched, and identical inputs map to the identical context everywhere.

use sha2::{Digest, Sha256};

/// File name of the package inside the context (the Dockerfile `COPY`s it).
pub(crate) const PACKAGE_ENTRY: &str = "plugin.difypkg";
/// File name of the Dockerfile inside the context.
pub(crate) const DOCKERFILE_ENTRY: &str = "Dockerfile";

/// A build context, ready to be served to a build Job.
#[derive(Clone, PartialEq, Eq)]
pub struct BuildContext {
    /// sha256 of `bytes` (hex).
    pub sha256: String,
    /// The tar archive.
    pub bytes: Vec<u8>,
}

impl std::fmt::Debug for BuildContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuildContext")
            .field("sha256", &self.sha256)
            .field("len", &self.bytes.len())
            .finish()
    }
}

/// Builds the context tar: entries in a fixed order, with fixed mtime, owner and mode, so the
/// same package and Dockerfile give the same bytes on every machine.
pub fn build_context(package: &[u8], dockerfile: &str) -> BuildContext {
    let mut builder =
        tar::Builder::new(Vec::with_capacity(package.len() + dockerfile.len() + 3072));
    for (name, data) in [
        (DOCKERFILE_ENTRY, dockerfile.as_bytes()),
        (PACKAGE_ENTRY, package),
    ] {
        let mut header = tar::Header::new_ustar();
        // Static, valid ASCII names: setting them cannot fail.
        let _ = header.set_path(name);
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        // Writing into a Vec cannot fail.
        let _ = builder.append(&header, data);
    }
    let bytes = builder.into_inner().unwrap_or_default();
    let sha256 = hex::encode(Sha256::digest(&bytes));
    BuildContext { sha256, bytes }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn same_inputs_same_bytes_and_digest() {
        let a = build_context(b"pkg", "FROM x\n");
        let b = build_context(b"pkg", "FROM x\n");
        assert_eq!(a, b);
        assert_eq!(a.sha256, hex::encode(Sha256::digest(&a.bytes)));
        assert_ne!(a.sha256, build_context(b"pkg", "FROM y\n").sha256);
        assert_ne!(a.sha256, build_context(b"pkh", "FROM x\n").sha256);
    }

    #[test]
    fn entries_have_fixed_metadata_and_content() {
        let ctx = build_context(b"package-bytes", "FROM x\n");
        let mut archive = tar::Archive::new(&ctx.bytes[..]);
        let mut seen = Vec::new();
        for entry in archive.entries().expect("entries") {
            let mut entry = entry.expect("entry");
            let header = entry.header().clone();
            assert_eq!(header.mtime().expect("mtime"), 0);
            assert_eq!(header.uid().expect("uid"), 0);
            assert_eq!(header.mode().expect("mode"), 0o644);
            let mut data = Vec::new();
            entry.read_to_end(&mut data).expect("read");
            seen.push((entry.path().expect("path").display().to_string(), data));
        }
        assert_eq!(
            seen,
            vec![
                ("Dockerfile".to_string(), b"FROM x\n".to_vec()),
                ("plugin.difypkg".to_string(), b"package-bytes".to_vec())
            ]
        );
    }
}
