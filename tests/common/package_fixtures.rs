//! Test fixtures for packages: a builder for zip archives (good and hostile) and a few
//! byte-level patches for what the zip writer refuses to produce (duplicate names,
//! lying sizes).

use std::io::{Cursor, Write};

use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

/// A minimal manifest that passes every Dify rule.
pub const MANIFEST: &str = r#"version: 0.1.0
type: plugin
author: plugsync
name: hello
label: {en_US: Hello}
description: {en_US: Says hello}
icon: icon.svg
created_at: "2026-01-01T00:00:00Z"
resource: {memory: 268435456, permission: {}}
plugins: {tools: [provider/hello.yaml]}
meta:
  version: 0.0.1
  arch: [amd64, arm64]
  runner: {language: python, version: "3.12", entrypoint: main}
"#;

/// Builds a zip archive entry by entry, in the order given.
pub struct ZipFixture {
    writer: ZipWriter<Cursor<Vec<u8>>>,
}

impl ZipFixture {
    /// An empty archive.
    pub fn new() -> Self {
        Self {
            writer: ZipWriter::new(Cursor::new(Vec::new())),
        }
    }

    /// An archive holding just a valid `manifest.yaml`.
    pub fn with_manifest() -> Self {
        Self::new().file("manifest.yaml", MANIFEST)
    }

    fn entry(mut self, name: &str, content: &[u8], method: CompressionMethod) -> Self {
        let options = SimpleFileOptions::default().compression_method(method);
        self.writer.start_file(name, options).unwrap();
        self.writer.write_all(content).unwrap();
        self
    }

    /// A deflated file entry.
    pub fn file(self, name: &str, content: impl AsRef<[u8]>) -> Self {
        self.entry(name, content.as_ref(), CompressionMethod::Deflated)
    }

    /// A stored (uncompressed) file entry: its bytes appear verbatim in the archive.
    pub fn stored(self, name: &str, content: impl AsRef<[u8]>) -> Self {
        self.entry(name, content.as_ref(), CompressionMethod::Stored)
    }

    /// A directory entry (`name` should end with `/`).
    pub fn dir(mut self, name: &str) -> Self {
        self.writer
            .add_directory(name, SimpleFileOptions::default())
            .unwrap();
        self
    }

    /// A symlink entry (unix mode `S_IFLNK`).
    pub fn symlink(mut self, name: &str, target: &str) -> Self {
        self.writer
            .add_symlink(name, target, SimpleFileOptions::default())
            .unwrap();
        self
    }

    /// Sets the archive comment (where Dify keeps its signature).
    pub fn comment(mut self, comment: &str) -> Self {
        self.writer.set_comment(comment);
        self
    }

    /// The archive bytes.
    pub fn build(self) -> Vec<u8> {
        self.writer.finish().unwrap().into_inner()
    }
}

fn u16_at(bytes: &[u8], at: usize) -> usize {
    usize::from(u16::from_le_bytes([bytes[at], bytes[at + 1]]))
}

fn u32_at(bytes: &[u8], at: usize) -> usize {
    u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize
}

/// Position of the end of central directory record.
fn eocd(bytes: &[u8]) -> usize {
    bytes
        .windows(4)
        .rposition(|w| w == b"PK\x05\x06")
        .expect("archive has an end of central directory record")
}

/// For each entry: (central header position, local header position, name).
fn entries(bytes: &[u8]) -> Vec<(usize, usize, Vec<u8>)> {
    let end = eocd(bytes);
    let count = u16_at(bytes, end + 10);
    let mut pos = u32_at(bytes, end + 16);
    let mut out = Vec::new();
    for _ in 0..count {
        assert_eq!(&bytes[pos..pos + 4], b"PK\x01\x02");
        let (name_len, extra_len, comment_len) = (
            u16_at(bytes, pos + 28),
            u16_at(bytes, pos + 30),
            u16_at(bytes, pos + 32),
        );
        let local = u32_at(bytes, pos + 42);
        out.push((pos, local, bytes[pos + 46..pos + 46 + name_len].to_vec()));
        pos += 46 + name_len + extra_len + comment_len;
    }
    out
}

fn find(bytes: &[u8], name: &str) -> (usize, usize) {
    entries(bytes)
        .into_iter()
        .find(|(_, _, n)| n == name.as_bytes())
        .map(|(cd, local, _)| (cd, local))
        .unwrap_or_else(|| panic!("no entry {name:?}"))
}

/// Renames entry `from` to `to` (same length) in both its headers: the way to get names
/// the writer refuses (duplicates).
pub fn rename_entry(mut bytes: Vec<u8>, from: &str, to: &str) -> Vec<u8> {
    assert_eq!(from.len(), to.len(), "renames must keep the length");
    let (cd, local) = find(&bytes, from);
    bytes[cd + 46..cd + 46 + to.len()].copy_from_slice(to.as_bytes());
    bytes[local + 30..local + 30 + to.len()].copy_from_slice(to.as_bytes());
    bytes
}

/// Makes entry `name` declare `size` uncompressed bytes, whatever it really holds.
pub fn set_declared_size(mut bytes: Vec<u8>, name: &str, size: u32) -> Vec<u8> {
    let (cd, local) = find(&bytes, name);
    bytes[cd + 24..cd + 28].copy_from_slice(&size.to_le_bytes());
    bytes[local + 22..local + 26].copy_from_slice(&size.to_le_bytes());
    bytes
}

/// Writes `value` into a two-byte field of entry `name`'s headers, at `central` in its
/// central directory header and `local` in its local header.
fn set_u16(mut bytes: Vec<u8>, name: &str, central: usize, local: usize, value: u16) -> Vec<u8> {
    let (cd, lh) = find(&bytes, name);
    bytes[cd + central..cd + central + 2].copy_from_slice(&value.to_le_bytes());
    bytes[lh + local..lh + local + 2].copy_from_slice(&value.to_le_bytes());
    bytes
}

/// Makes entry `name` declare compression `method` (8 is deflate, 0 stored).
pub fn set_compression_method(bytes: Vec<u8>, name: &str, method: u16) -> Vec<u8> {
    set_u16(bytes, name, 10, 8, method)
}

/// Sets entry `name`'s general purpose flags (bit 0: encrypted).
pub fn set_flags(bytes: Vec<u8>, name: &str, flags: u16) -> Vec<u8> {
    set_u16(bytes, name, 8, 6, flags)
}

/// Makes entry `name` declare `size` compressed bytes, whatever it really holds.
pub fn set_compressed_size(mut bytes: Vec<u8>, name: &str, size: u32) -> Vec<u8> {
    let (cd, local) = find(&bytes, name);
    bytes[cd + 20..cd + 24].copy_from_slice(&size.to_le_bytes());
    bytes[local + 18..local + 22].copy_from_slice(&size.to_le_bytes());
    bytes
}

/// Where entry `name`'s (compressed) data starts in the archive.
pub fn data_offset(bytes: &[u8], name: &str) -> usize {
    let (_, local) = find(bytes, name);
    local + 30 + u16_at(bytes, local + 26) + u16_at(bytes, local + 28)
}

/// The archive without its comment (Dify's signature), as an unsigned re-release would be.
pub fn strip_comment(mut bytes: Vec<u8>) -> Vec<u8> {
    let end = eocd(&bytes);
    bytes.truncate(end + 22);
    bytes[end + 20..end + 22].copy_from_slice(&[0, 0]);
    bytes
}
