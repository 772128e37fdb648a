//! A folder on disk as a [`Snapshot`], for `--repo DIR`.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use super::{Backend, Entries, EntryKind, Found, Snapshot, SnapshotError};

/// The files of a folder on disk, with the same rules as a [`super::GitRevision`] so a
/// local run and a PR diff agree: symlinks are detected with `symlink_metadata` and
/// never followed, `.git` is hidden, and a nested folder holding `.git` is a submodule.
///
/// Each path component is checked as it is walked; a file swapped for a symlink between
/// the check and the read is not defended against (the controller owns its clone).
#[derive(Debug, Clone)]
pub struct WorkTree {
    root: PathBuf,
    label: String,
}

impl WorkTree {
    /// Opens `root`, canonicalized so messages show one unambiguous absolute path.
    pub fn new(root: &Path) -> Result<WorkTree, SnapshotError> {
        let canonical = fs::canonicalize(root).map_err(|e| match e.kind() {
            ErrorKind::NotFound => SnapshotError::NotFound {
                snapshot: format!("working tree {}", root.display()),
                path: ".".to_string(),
            },
            _ => SnapshotError::io(root, e),
        })?;
        let label = format!("working tree {}", canonical.display());
        if !canonical.is_dir() {
            return Err(SnapshotError::WrongKind {
                snapshot: label,
                path: ".".to_string(),
                expected: "directory",
            });
        }
        Ok(WorkTree {
            root: canonical,
            label,
        })
    }

    /// The canonical root folder.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

/// Classifies `path` without following it. A missing path, or one under a regular file,
/// is `Missing`.
fn classify(path: PathBuf) -> Result<Found<PathBuf>, SnapshotError> {
    let meta = match fs::symlink_metadata(&path) {
        Ok(meta) => meta,
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory) => {
            return Ok(Found::Missing)
        }
        Err(e) => return Err(SnapshotError::io(path, e)),
    };
    let ft = meta.file_type();
    Ok(if ft.is_symlink() {
        Found::Symlink
    } else if ft.is_file() {
        Found::File(path)
    } else if ft.is_dir() {
        // A checked-out (or absorbed) submodule has a `.git` file or folder of its own.
        match fs::symlink_metadata(path.join(".git")) {
            Ok(_) => Found::Submodule,
            Err(_) => Found::Dir(path),
        }
    } else {
        Found::Special
    })
}

impl Backend for WorkTree {
    type Handle = PathBuf;

    fn label(&self) -> &str {
        &self.label
    }

    fn root(&self) -> PathBuf {
        self.root.clone()
    }

    fn child(&self, dir: &PathBuf, name: &str) -> Result<Found<PathBuf>, SnapshotError> {
        classify(dir.join(name))
    }

    fn children(&self, dir: &PathBuf) -> Result<Entries<PathBuf>, SnapshotError> {
        let read = fs::read_dir(dir).map_err(|e| SnapshotError::io(dir, e))?;
        let mut out = Vec::new();
        for entry in read {
            let entry = entry.map_err(|e| SnapshotError::io(dir, e))?;
            let name =
                entry
                    .file_name()
                    .into_string()
                    .map_err(|raw| SnapshotError::InvalidPath {
                        snapshot: self.label.clone(),
                        path: dir.join(raw).display().to_string(),
                        reason: "file name is not UTF-8",
                    })?;
            if super::is_dot_git(&name) {
                // Never stat inside `.git`; the shared walker drops it anyway.
                out.push((name, Found::Missing));
                continue;
            }
            let found = classify(entry.path())?;
            out.push((name, found));
        }
        Ok(out)
    }

    fn contents(&self, file: &PathBuf) -> Result<Vec<u8>, SnapshotError> {
        fs::read(file).map_err(|e| SnapshotError::io(file, e))
    }
}

impl Snapshot for WorkTree {
    fn describe(&self) -> String {
        self.label.clone()
    }

    fn display_path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    fn revision(&self) -> Option<String> {
        None
    }

    fn read(&self, rel: &str) -> Result<Option<Vec<u8>>, SnapshotError> {
        super::read(self, rel)
    }

    fn kind(&self, rel: &str) -> Result<EntryKind, SnapshotError> {
        super::kind(self, rel)
    }

    fn list(&self, rel_dir: &str) -> Result<Vec<String>, SnapshotError> {
        super::list(self, rel_dir)
    }

    fn materialize(&self, rel_dir: &str, dest: &Path) -> Result<(), SnapshotError> {
        super::materialize(self, rel_dir, dest)
    }

    fn tree_id(&self, rel: &str) -> Result<Option<git2::Oid>, SnapshotError> {
        super::computed_tree_id(self, rel)
    }

    fn on_disk(&self, rel_dir: &str) -> Result<Option<PathBuf>, SnapshotError> {
        super::checked_dir(self, rel_dir).map(|(dir, _)| Some(dir))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> (tempfile::TempDir, WorkTree) {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("a/b")).unwrap();
        fs::write(dir.path().join("a/b/f.txt"), "hi").unwrap();
        fs::write(dir.path().join("top"), "t").unwrap();
        let wt = WorkTree::new(dir.path()).unwrap();
        (dir, wt)
    }

    #[test]
    fn reads_and_classifies() {
        let (_dir, wt) = tree();
        assert_eq!(wt.read("a/b/f.txt").unwrap().as_deref(), Some(&b"hi"[..]));
        assert_eq!(
            wt.read("./a//b/f.txt").unwrap().as_deref(),
            Some(&b"hi"[..])
        );
        assert_eq!(wt.kind("a").unwrap(), EntryKind::Dir);
        assert_eq!(wt.kind("top").unwrap(), EntryKind::File);
        assert_eq!(wt.kind("nope").unwrap(), EntryKind::Missing);
        // Under a regular file is simply absent, not an I/O error.
        assert_eq!(wt.kind("top/x").unwrap(), EntryKind::Missing);
        assert_eq!(wt.read("top/x").unwrap(), None);
    }

    #[test]
    fn read_of_directory_and_list_of_file_are_errors() {
        let (_dir, wt) = tree();
        let err = wt.read("a").unwrap_err();
        assert!(
            matches!(
                err,
                SnapshotError::WrongKind {
                    expected: "file",
                    ..
                }
            ),
            "{err}"
        );
        let err = wt.list("top").unwrap_err();
        assert!(
            matches!(
                err,
                SnapshotError::WrongKind {
                    expected: "directory",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn dot_git_is_hidden_even_in_a_plain_folder() {
        let (dir, wt) = tree();
        fs::create_dir(dir.path().join(".git")).unwrap();
        fs::write(dir.path().join(".git/config"), "[remote]").unwrap();
        assert_eq!(wt.list("").unwrap(), vec!["a", "top"]);
        assert_eq!(wt.read(".git/config").unwrap(), None);
        assert_eq!(wt.kind(".GIT").unwrap(), EntryKind::Missing);
    }

    #[test]
    fn nested_git_folder_is_a_submodule() {
        let (dir, wt) = tree();
        fs::write(dir.path().join("a/.git"), "gitdir: ../.git/modules/a").unwrap();
        let err = wt.read("a/b/f.txt").unwrap_err();
        assert!(
            matches!(&err, SnapshotError::Submodule { path, .. } if path == "a"),
            "{err}"
        );
        let out = tempfile::tempdir().unwrap();
        let err = wt.materialize("", out.path()).unwrap_err();
        assert!(
            matches!(&err, SnapshotError::Submodule { path, .. } if path == "a"),
            "{err}"
        );
    }

    /// The computed tree id is git's own, so a working tree's plugin directory is known to
    /// be the one a revision holds; names sorting differently as directories, nested
    /// folders and an empty folder (which git does not store) included.
    #[test]
    fn tree_id_is_the_one_git_writes() {
        let (dir, wt) = tree();
        fs::write(dir.path().join("a.txt"), "x").unwrap();
        fs::write(dir.path().join("a-b"), "y").unwrap();
        fs::write(dir.path().join("a/z"), "z").unwrap();
        fs::create_dir_all(dir.path().join("a/empty/deeper")).unwrap();
        let repo = git2::Repository::init(dir.path()).unwrap();
        let mut index = repo.index().unwrap();
        index
            .add_all(["*"], git2::IndexAddOption::DEFAULT, None)
            .unwrap();
        let root = index.write_tree().unwrap();
        let tree = repo.find_tree(root).unwrap();
        let a = tree.get_name("a").unwrap().id();
        assert_eq!(wt.tree_id("").unwrap(), Some(root));
        assert_eq!(wt.tree_id("a").unwrap(), Some(a));
        assert_eq!(wt.tree_id("a/empty").unwrap(), None);
        assert_eq!(wt.tree_id("top").unwrap(), None);

        // A changed file changes the id; a symlink inside leaves none.
        fs::write(dir.path().join("a/z"), "zz").unwrap();
        assert_ne!(wt.tree_id("a").unwrap(), Some(a));
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink("/etc", dir.path().join("a/etc")).unwrap();
            assert_eq!(wt.tree_id("a").unwrap(), None);
        }
    }

    #[test]
    fn missing_root_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let err = WorkTree::new(&dir.path().join("gone")).unwrap_err();
        assert!(matches!(err, SnapshotError::NotFound { .. }), "{err}");
        assert!(err.to_string().contains("gone"), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn symlinked_directory_is_not_walked_through() {
        let (dir, wt) = tree();
        std::os::unix::fs::symlink("/etc", dir.path().join("etc")).unwrap();
        assert_eq!(wt.kind("etc").unwrap(), EntryKind::Symlink);
        let err = wt.read("etc/passwd").unwrap_err();
        assert!(
            matches!(&err, SnapshotError::Symlink { path, .. } if path == "etc"),
            "{err}"
        );
        let err = wt.list("etc").unwrap_err();
        assert!(matches!(err, SnapshotError::Symlink { .. }), "{err}");
    }
}
