//! The git source stage: where the desired state is read from.
//!
//! Not to be confused with [`crate::fetch`], which downloads *packages*. This
//! module reads the *repository* holding `plugins.yaml`, either a folder on disk
//! ([`WorkTree`], for `plugsync lock --repo DIR`) or one git revision straight from the
//! object database ([`GitRevision`], for `plugsync diff --base origin/main`), so a diff
//! renders both sides without a checkout and without touching the working tree.
//!
//! Both implement [`Snapshot`] over one shared walker, so they agree on every edge case.
//! Repository content is untrusted (the controller reads it in-cluster), hence:
//! - paths are relative and `/`-separated; absolute paths, `..`, backslashes and NUL are
//!   refused ([`SnapshotError::InvalidPath`]), and so are such names found *in* a tree;
//! - symlinks and submodules are never followed: [`Snapshot::kind`] reports a symlink,
//!   everything else that would read through one fails;
//! - `.git` (any case) does not exist as far as a snapshot is concerned.

mod git;
pub mod remote;
mod worktree;

use std::io;
use std::path::{Path, PathBuf};

pub use git::{discover_repo_root, GitRevision};
pub use remote::{GitAuth, RemoteRepo, SyncOutcome};
pub use worktree::WorkTree;

/// A read-only view of the files of one revision (or of a working tree), rooted at the
/// folder holding `plugins.yaml`, so later stages never care where the bytes come from.
pub trait Snapshot: Send + Sync {
    /// For messages: `working tree /abs/path` or `origin/main (1a2b3c4d)`.
    fn describe(&self) -> String;
    /// The full commit id of a git revision, to record what was rendered; `None` for a
    /// working tree, which has no single commit.
    fn revision(&self) -> Option<String>;
    /// The contents of a file; `Ok(None)` when absent, so optional files (`plugins.lock`)
    /// need no separate existence check. A directory, symlink or submodule is an error.
    fn read(&self, rel: &str) -> Result<Option<Vec<u8>>, SnapshotError>;
    /// What is at `rel`, without following it, so callers can refuse a symlink by name.
    /// Errors for invalid paths, submodules, FIFOs and the like, and paths through a symlink.
    fn kind(&self, rel: &str) -> Result<EntryKind, SnapshotError>;
    /// Names of the direct children of a directory, sorted bytewise, so output is stable
    /// across backends; empty when the directory is missing.
    fn list(&self, rel_dir: &str) -> Result<Vec<String>, SnapshotError>;
    /// Writes the regular files under `rel_dir` into `dest` (created if needed) with mode
    /// 0o644, for packing a plugin directory. The whole subtree is checked before the
    /// first write, so a refused symlink leaves nothing half-written.
    fn materialize(&self, rel_dir: &str, dest: &Path) -> Result<(), SnapshotError>;
    /// The directory at `rel_dir` where it already is on disk, checked as
    /// [`Snapshot::materialize`] checks it (regular files and directories only, nothing
    /// leaving the snapshot), so a working tree's plugin directory is packed in place rather
    /// than copied first: creating the copies was most of a cold diff's time. `None` for a
    /// snapshot that is not on disk (a git revision), which is materialized instead.
    fn on_disk(&self, rel_dir: &str) -> Result<Option<std::path::PathBuf>, SnapshotError> {
        let _ = rel_dir;
        Ok(None)
    }
    /// The git blob id of the regular file at `rel` when the snapshot knows it without
    /// reading the file (a git revision's tree entry): a diff reads again at base none of
    /// the files it has already read at head. `None` when it does not know (a working
    /// tree), or when there is no regular file at `rel`.
    fn blob_id(&self, rel: &str) -> Result<Option<git2::Oid>, SnapshotError> {
        let _ = rel;
        Ok(None)
    }
    /// The git tree id of the directory at `rel`, so a diff packs again at base none of the
    /// plugin directories the pull request left alone: the same tree id is the same files,
    /// hence the same package. A git revision knows it from its tree entry; a working tree
    /// computes it from the files (as `git write-tree` would for them, every file of mode
    /// 0644, so an executable file only makes the ids differ, never wrongly agree). `None`
    /// when there is no directory at `rel`, or one holding what no package may (a symlink,
    /// a submodule): packing it reports why.
    fn tree_id(&self, rel: &str) -> Result<Option<git2::Oid>, SnapshotError> {
        let _ = rel;
        Ok(None)
    }
    /// How `rel` is named in messages (`file:line:column: …`): a path the user can open for a
    /// working tree, `<commit>:<path>` for a git revision.
    fn display_path(&self, rel: &str) -> std::path::PathBuf {
        std::path::PathBuf::from(rel)
    }
}

/// What a path names inside a snapshot. Symlinks are reported, never followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file (executable or not).
    File,
    /// A directory (a tree in git).
    Dir,
    /// A symbolic link; plugsync refuses to read through it.
    Symlink,
    /// Nothing there.
    Missing,
}

/// Why a snapshot could not be read. Every variant names the snapshot (revision or
/// folder) and the path, so a CI log points at the offending file.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A required directory (the snapshot root, a subdir, a plugin folder) is absent.
    #[error("{snapshot}: {path} not found")]
    NotFound {
        /// The snapshot's [`Snapshot::describe`].
        snapshot: String,
        /// The path, relative to the snapshot root.
        path: String,
    },
    /// A path escapes the snapshot or cannot be represented safely.
    #[error("{snapshot}: invalid path {path:?}: {reason}")]
    InvalidPath {
        /// The snapshot's [`Snapshot::describe`].
        snapshot: String,
        /// The path as given (or as found in the tree).
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A symlink where content was needed; plugsync refuses symlinks in plugin sources.
    #[error("{snapshot}: {path} is a symlink; plugsync does not follow symlinks")]
    Symlink {
        /// The snapshot's [`Snapshot::describe`].
        snapshot: String,
        /// The symlink's path, relative to the snapshot root.
        path: String,
    },
    /// A git submodule where content was needed; its files are not in this repository.
    #[error("{snapshot}: {path} is a git submodule; plugsync does not read submodules")]
    Submodule {
        /// The snapshot's [`Snapshot::describe`].
        snapshot: String,
        /// The submodule's path, relative to the snapshot root.
        path: String,
    },
    /// A file where a directory was needed, or the other way round.
    #[error("{snapshot}: {path} is not a {expected}")]
    WrongKind {
        /// The snapshot's [`Snapshot::describe`].
        snapshot: String,
        /// The path, relative to the snapshot root.
        path: String,
        /// What was needed: `file` or `directory`.
        expected: &'static str,
    },
    /// libgit2 failed; `message` is its own wording (for example
    /// `revspec 'origin/nope' not found`).
    #[error("{what}: {message}")]
    Git {
        /// What plugsync was doing, naming the revision and repository.
        what: String,
        /// The message from libgit2.
        message: String,
    },
    /// Reading the working tree or writing a materialized file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The absolute path on disk.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

impl SnapshotError {
    /// Whether reading failed rather than the content: a libgit2 error reading an object
    /// (a pack being replaced, a full or failing disk, too many open files) or an I/O error.
    /// A symlink, a submodule, a bad path or a missing folder is the revision's content and
    /// stays so however often it is read.
    pub fn is_transient(&self) -> bool {
        match self {
            SnapshotError::Git { .. } | SnapshotError::Io { .. } => true,
            SnapshotError::NotFound { .. }
            | SnapshotError::InvalidPath { .. }
            | SnapshotError::Symlink { .. }
            | SnapshotError::Submodule { .. }
            | SnapshotError::WrongKind { .. } => false,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        SnapshotError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn git(what: impl Into<String>, err: &git2::Error) -> Self {
        SnapshotError::Git {
            what: what.into(),
            message: err.message().to_string(),
        }
    }
}

/// What the walker found at one path. `H` is the backend's handle: a git object id or a
/// path on disk.
#[derive(Clone)]
pub(crate) enum Found<H> {
    File(H),
    Dir(H),
    Symlink,
    Submodule,
    /// A FIFO, socket or device in a working tree: listed, never read.
    Special,
    Missing,
}

/// The entries of one directory: name and what it is.
pub(crate) type Entries<H> = Vec<(String, Found<H>)>;

/// The few primitives a backend provides; everything else (path checks, symlink and
/// submodule refusal, `.git` hiding, sorting, materialize) lives once in this module.
pub(crate) trait Backend {
    type Handle: Clone;
    fn label(&self) -> &str;
    fn root(&self) -> Self::Handle;
    /// The entry `name` in `dir`; `name` is already checked and never `.git`.
    fn child(&self, dir: &Self::Handle, name: &str) -> Result<Found<Self::Handle>, SnapshotError>;
    /// All entries of `dir`, in any order, including `.git`.
    fn children(&self, dir: &Self::Handle) -> Result<Entries<Self::Handle>, SnapshotError>;
    fn contents(&self, file: &Self::Handle) -> Result<Vec<u8>, SnapshotError>;
}

/// Splits a caller's path into checked components; `""` and `.` mean the root.
fn split_rel<'a>(label: &str, rel: &'a str) -> Result<Vec<&'a str>, SnapshotError> {
    let invalid = |reason| SnapshotError::InvalidPath {
        snapshot: label.to_string(),
        path: rel.to_string(),
        reason,
    };
    if rel.starts_with('/') {
        return Err(invalid("absolute paths are not allowed"));
    }
    let mut parts = Vec::new();
    for part in rel.split('/') {
        match part {
            "" | "." => {}
            _ => {
                check_name(part).map_err(invalid)?;
                parts.push(part);
            }
        }
    }
    Ok(parts)
}

/// Rejects names that could escape `dest` in [`Snapshot::materialize`] or mean something
/// else on another platform. Applied to caller paths and to names found in trees alike.
fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name == "." || name == ".." {
        Err("empty, `.` or `..` file name")
    } else if name.contains('\\') {
        Err("backslashes are not allowed")
    } else if name.contains('\0') {
        Err("NUL is not allowed")
    } else if name.contains('/') {
        Err("`/` inside a file name")
    } else {
        Ok(())
    }
}

fn is_dot_git(name: &str) -> bool {
    name.eq_ignore_ascii_case(".git")
}

/// Walks `rel` from the root, refusing to go through a symlink or submodule. Returns the
/// normalized path (`""` for the root) and what is there.
fn locate<B: Backend>(b: &B, rel: &str) -> Result<(String, Found<B::Handle>), SnapshotError> {
    let parts = split_rel(b.label(), rel)?;
    let mut found = Found::Dir(b.root());
    for (i, name) in parts.iter().enumerate() {
        let dir = match found {
            Found::Dir(h) => h,
            Found::File(_) | Found::Special | Found::Missing => {
                return Ok((parts.join("/"), Found::Missing));
            }
            other => return Err(unexpected(b, &parts[..i].join("/"), &other, "directory")),
        };
        found = if is_dot_git(name) {
            Found::Missing
        } else {
            b.child(&dir, name)?
        };
    }
    Ok((parts.join("/"), found))
}

/// `parent/name`, where `""` is the root.
fn child_path(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}/{name}")
    }
}

/// The error for finding `found` at `path` where an `expected` was needed: one place
/// decides how symlinks, submodules and absent paths are reported.
fn unexpected<B: Backend>(
    b: &B,
    path: &str,
    found: &Found<B::Handle>,
    expected: &'static str,
) -> SnapshotError {
    let snapshot = b.label().to_string();
    let path = if path.is_empty() { "." } else { path }.to_string();
    match found {
        Found::Symlink => SnapshotError::Symlink { snapshot, path },
        Found::Submodule => SnapshotError::Submodule { snapshot, path },
        Found::Missing => SnapshotError::NotFound { snapshot, path },
        Found::File(_) | Found::Dir(_) | Found::Special => SnapshotError::WrongKind {
            snapshot,
            path,
            expected,
        },
    }
}

pub(crate) fn read<B: Backend>(b: &B, rel: &str) -> Result<Option<Vec<u8>>, SnapshotError> {
    match locate(b, rel)? {
        (_, Found::File(h)) => b.contents(&h).map(Some),
        (_, Found::Missing) => Ok(None),
        (path, other) => Err(unexpected(b, &path, &other, "file")),
    }
}

pub(crate) fn kind<B: Backend>(b: &B, rel: &str) -> Result<EntryKind, SnapshotError> {
    match locate(b, rel)? {
        (_, Found::File(_)) => Ok(EntryKind::File),
        (_, Found::Dir(_)) => Ok(EntryKind::Dir),
        (_, Found::Symlink) => Ok(EntryKind::Symlink),
        (_, Found::Missing) => Ok(EntryKind::Missing),
        (path, other) => Err(unexpected(b, &path, &other, "file or directory")),
    }
}

/// The children of the directory at `path` without `.git`, sorted bytewise, every name
/// checked (a crafted tree can hold `..` or `a/b`).
fn entries<B: Backend>(
    b: &B,
    dir: &B::Handle,
    path: &str,
) -> Result<Entries<B::Handle>, SnapshotError> {
    let mut out = Vec::new();
    for (name, found) in b.children(dir)? {
        if is_dot_git(&name) {
            continue;
        }
        if let Err(reason) = check_name(&name) {
            return Err(SnapshotError::InvalidPath {
                snapshot: b.label().to_string(),
                path: child_path(path, &name),
                reason,
            });
        }
        out.push((name, found));
    }
    out.sort_by(|x, y| x.0.cmp(&y.0));
    Ok(out)
}

pub(crate) fn list<B: Backend>(b: &B, rel_dir: &str) -> Result<Vec<String>, SnapshotError> {
    match locate(b, rel_dir)? {
        (path, Found::Dir(h)) => Ok(entries(b, &h, &path)?.into_iter().map(|e| e.0).collect()),
        (_, Found::Missing) => Ok(Vec::new()),
        (path, other) => Err(unexpected(b, &path, &other, "directory")),
    }
}

pub(crate) fn materialize<B: Backend>(
    b: &B,
    rel_dir: &str,
    dest: &Path,
) -> Result<(), SnapshotError> {
    // Plan first, write second: nothing lands in `dest` unless the whole tree is clean.
    let (_, files) = checked_dir(b, rel_dir)?;
    std::fs::create_dir_all(dest).map_err(|e| SnapshotError::io(dest, e))?;
    for (rel, handle) in files {
        let target = rel.split('/').fold(dest.to_path_buf(), |p, n| p.join(n));
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| SnapshotError::io(parent, e))?;
        }
        std::fs::write(&target, b.contents(&handle)?).map_err(|e| SnapshotError::io(&target, e))?;
        set_mode_644(&target)?;
    }
    Ok(())
}

/// Every file under a directory: its path below the directory, and its handle.
type FilesBelow<H> = Vec<(String, H)>;

/// The directory at `rel_dir` and every file under it, once the whole tree is known to hold
/// only regular files and directories.
pub(crate) fn checked_dir<B: Backend>(
    b: &B,
    rel_dir: &str,
) -> Result<(B::Handle, FilesBelow<B::Handle>), SnapshotError> {
    let (path, root) = match locate(b, rel_dir)? {
        (path, Found::Dir(h)) => (path, h),
        (path, other) => return Err(unexpected(b, &path, &other, "directory")),
    };
    let mut files = Vec::new();
    collect(b, &root, &path, "", &mut files)?;
    Ok((root, files))
}

/// The git tree id of the directory at `rel` computed from its files (see
/// [`Snapshot::tree_id`]), for backends whose trees have no stored id.
pub(crate) fn computed_tree_id<B: Backend>(
    b: &B,
    rel: &str,
) -> Result<Option<git2::Oid>, SnapshotError> {
    match locate(b, rel)? {
        (path, Found::Dir(h)) => tree_id_of(b, &h, &path),
        _ => Ok(None),
    }
}

/// The id git gives the tree of `dir`'s files, or `None` if it holds something else. An
/// empty directory has none (git stores no empty tree inside another).
fn tree_id_of<B: Backend>(
    b: &B,
    dir: &B::Handle,
    path: &str,
) -> Result<Option<git2::Oid>, SnapshotError> {
    let git_err = |e: git2::Error| SnapshotError::git(format!("{}: hashing {path}", b.label()), &e);
    // Git orders entries by name, a directory's name followed by `/`.
    let mut items: Vec<(Vec<u8>, &'static str, git2::Oid)> = Vec::new();
    for (name, found) in entries(b, dir, path)? {
        let child = child_path(path, &name);
        let (mode, id) = match found {
            Found::File(h) => {
                let id = git2::Oid::hash_object(git2::ObjectType::Blob, &b.contents(&h)?)
                    .map_err(git_err)?;
                ("100644", id)
            }
            Found::Dir(h) => match tree_id_of(b, &h, &child)? {
                Some(id) => ("40000", id),
                None if collect_is_empty(b, &h, &child) => continue,
                None => return Ok(None),
            },
            _ => return Ok(None),
        };
        let mut key = name.into_bytes();
        if mode == "40000" {
            key.push(b'/');
        }
        items.push((key, mode, id));
    }
    if items.is_empty() {
        return Ok(None);
    }
    items.sort_unstable_by(|x, y| x.0.cmp(&y.0));
    let mut data = Vec::new();
    for (mut key, mode, id) in items {
        if mode == "40000" {
            key.pop();
        }
        data.extend_from_slice(mode.as_bytes());
        data.push(b' ');
        data.extend_from_slice(&key);
        data.push(0);
        data.extend_from_slice(id.as_bytes());
    }
    git2::Oid::hash_object(git2::ObjectType::Tree, &data)
        .map(Some)
        .map_err(git_err)
}

/// Whether `dir` holds no file at any depth (only empty directories), which git does not
/// store, as opposed to holding something a tree id cannot be computed for.
fn collect_is_empty<B: Backend>(b: &B, dir: &B::Handle, path: &str) -> bool {
    let mut files = Vec::new();
    collect(b, dir, path, "", &mut files).is_ok() && files.is_empty()
}

/// Every file under `dir` as `(path below the materialized dir, handle)`; `path` is
/// `dir`'s path in the snapshot, for messages.
fn collect<B: Backend>(
    b: &B,
    dir: &B::Handle,
    path: &str,
    below: &str,
    out: &mut Vec<(String, B::Handle)>,
) -> Result<(), SnapshotError> {
    for (name, found) in entries(b, dir, path)? {
        let (path, below) = (child_path(path, &name), child_path(below, &name));
        match found {
            Found::File(h) => out.push((below, h)),
            Found::Dir(h) => collect(b, &h, &path, &below, out)?,
            other => return Err(unexpected(b, &path, &other, "file or directory")),
        }
    }
    Ok(())
}

#[cfg(unix)]
fn set_mode_644(path: &Path) -> Result<(), SnapshotError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
        .map_err(|e| SnapshotError::io(path, e))
}

#[cfg(not(unix))]
fn set_mode_644(_path: &Path) -> Result<(), SnapshotError> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_rel_normalizes_and_refuses_escapes() {
        assert_eq!(split_rel("t", "a//./b/").unwrap(), vec!["a", "b"]);
        assert!(split_rel("t", "").unwrap().is_empty());
        assert!(split_rel("t", ".").unwrap().is_empty());
        for bad in ["../x", "/etc/passwd", "a/../../b", "a\\b", "a\0b", "a/.."] {
            let err = split_rel("snap", bad).unwrap_err();
            assert!(
                matches!(&err, SnapshotError::InvalidPath { path, snapshot, .. } if path == bad && snapshot == "snap"),
                "{bad:?}: {err:?}"
            );
        }
    }

    #[test]
    fn check_name_refuses_tree_names_that_escape() {
        for bad in ["", ".", "..", "a/b", "a\\b", "a\0"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_name(".hidden").is_ok());
        assert!(check_name("..data").is_ok());
    }

    #[test]
    fn dot_git_is_matched_in_any_case() {
        assert!(is_dot_git(".git") && is_dot_git(".GIT") && is_dot_git(".Git"));
        assert!(!is_dot_git(".github") && !is_dot_git("git"));
    }
}
