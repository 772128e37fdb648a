//! One git revision as a [`Snapshot`], read from the object database without a checkout.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use git2::{Commit, ObjectType, Oid, Repository, TreeEntry};

use super::{Backend, Entries, EntryKind, Found, Snapshot, SnapshotError};

/// The git file mode of a symbolic link blob.
const SYMLINK_MODE: i32 = 0o120000;

/// The files of one commit (optionally of a folder inside it), so `plugsync diff` can
/// render the base and head of a PR side by side without touching the working tree.
pub struct GitRevision {
    /// `git2::Repository` is `Send` but not `Sync`, and [`Snapshot`] must be `Sync`.
    /// Reads are lazy behind a mutex rather than eager: opening stays O(1) whatever the
    /// repository size, only the objects actually asked for are loaded, and each locked
    /// section is a single object lookup, so contention is negligible.
    repo: Mutex<Repository>,
    commit: String,
    /// The tree of the selected subdir (or of the commit).
    tree: Oid,
    label: String,
    /// Trees read so far, by id. libgit2 caches no tree over 4 KiB, so without this a
    /// folder of a thousand committed packages was inflated and parsed again for each
    /// file looked up in it (twice per package: its kind, then its contents).
    trees: Mutex<HashMap<Oid, Arc<TreeEntries>>>,
}

/// One tree's entries: raw name (sorted bytewise, for lookups) and what each is.
type TreeEntries = Vec<(Vec<u8>, Found<Oid>)>;

impl std::fmt::Debug for GitRevision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitRevision")
            .field("label", &self.label)
            .field("commit", &self.commit)
            .finish_non_exhaustive()
    }
}

impl GitRevision {
    /// Opens `rev` (anything `git rev-parse` accepts: branch, `origin/main`, tag, sha,
    /// `HEAD~1`) in the repository at `repo_dir`, peeled to its commit. `subdir` selects
    /// the folder holding `plugins.yaml`, like Flux's `--path`; it must exist at `rev`.
    pub fn open(
        repo_dir: &Path,
        rev: &str,
        subdir: Option<&str>,
    ) -> Result<GitRevision, SnapshotError> {
        let repo = open_repo(repo_dir)?;
        let (commit, tree) = {
            let commit = peel_commit(&repo, repo_dir, rev)?;
            (commit.id().to_string(), commit.tree_id())
        };
        let short: String = commit.chars().take(8).collect();
        let mut this = GitRevision {
            repo: Mutex::new(repo),
            label: format!("{rev} ({short})"),
            commit,
            tree,
            trees: Mutex::new(HashMap::new()),
        };
        let Some(subdir) = subdir else {
            return Ok(this);
        };
        this.tree = match super::locate(&this, subdir)? {
            (path, _) if path.is_empty() => return Ok(this),
            (path, Found::Dir(oid)) => {
                this.label = format!("{} in {path}", this.label);
                oid
            }
            (path, other) => return Err(super::unexpected(&this, &path, &other, "directory")),
        };
        Ok(this)
    }

    /// The merge base of `a` and `b` (a full commit id), so a PR diff compares against
    /// where the branch forked, like `git diff a...b`, not against a moving target.
    pub fn merge_base(repo_dir: &Path, a: &str, b: &str) -> Result<String, SnapshotError> {
        let repo = open_repo(repo_dir)?;
        let one = peel_commit(&repo, repo_dir, a)?.id();
        let two = peel_commit(&repo, repo_dir, b)?.id();
        repo.merge_base(one, two)
            .map(|oid| oid.to_string())
            .map_err(|e| {
                SnapshotError::git(
                    format!("merge base of '{a}' and '{b}' in {}", repo_dir.display()),
                    &e,
                )
            })
    }

    /// The full commit id, for recording exactly what was rendered.
    pub fn commit_id(&self) -> &str {
        &self.commit
    }

    fn repo(&self) -> MutexGuard<'_, Repository> {
        // A panic while holding the lock cannot leave a read-only Repository inconsistent.
        self.repo.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The entries of tree `id`, read once per revision.
    fn tree_entries(&self, id: Oid) -> Result<Arc<TreeEntries>, SnapshotError> {
        let cached = || self.trees.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entries) = cached().get(&id) {
            return Ok(Arc::clone(entries));
        }
        let mut entries: TreeEntries = {
            let repo = self.repo();
            let tree = repo
                .find_tree(id)
                .map_err(|e| self.git_err("reading a tree", &e))?;
            tree.iter()
                .map(|entry| (entry.name_bytes().to_vec(), self.entry_found(&entry)))
                .collect()
        };
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let entries = Arc::new(entries);
        cached().insert(id, Arc::clone(&entries));
        Ok(entries)
    }

    fn entry_found(&self, entry: &TreeEntry<'_>) -> Found<Oid> {
        match entry.kind() {
            Some(ObjectType::Tree) => Found::Dir(entry.id()),
            Some(ObjectType::Commit) => Found::Submodule,
            Some(ObjectType::Blob) if entry.filemode() == SYMLINK_MODE => Found::Symlink,
            Some(ObjectType::Blob) => Found::File(entry.id()),
            _ => Found::Special,
        }
    }

    fn git_err(&self, what: &str, err: &git2::Error) -> SnapshotError {
        SnapshotError::git(format!("{}: {what}", self.label), err)
    }
}

fn open_repo(repo_dir: &Path) -> Result<Repository, SnapshotError> {
    Repository::open(repo_dir)
        .map_err(|e| SnapshotError::git(format!("opening repository {}", repo_dir.display()), &e))
}

fn peel_commit<'r>(
    repo: &'r Repository,
    repo_dir: &Path,
    rev: &str,
) -> Result<Commit<'r>, SnapshotError> {
    repo.revparse_single(rev)
        .and_then(|obj| obj.peel_to_commit())
        .map_err(|e| SnapshotError::git(format!("revision '{rev}' in {}", repo_dir.display()), &e))
}

impl Backend for GitRevision {
    type Handle = Oid;

    fn label(&self) -> &str {
        &self.label
    }

    fn root(&self) -> Oid {
        self.tree
    }

    fn child(&self, dir: &Oid, name: &str) -> Result<Found<Oid>, SnapshotError> {
        let entries = self.tree_entries(*dir)?;
        Ok(entries
            .binary_search_by(|(entry, _)| entry.as_slice().cmp(name.as_bytes()))
            .map_or(Found::Missing, |i| entries[i].1.clone()))
    }

    fn children(&self, dir: &Oid) -> Result<Entries<Oid>, SnapshotError> {
        self.tree_entries(*dir)?
            .iter()
            .map(|(name, found)| {
                let name = std::str::from_utf8(name).map_err(|_| SnapshotError::InvalidPath {
                    snapshot: self.label.clone(),
                    path: String::from_utf8_lossy(name).into_owned(),
                    reason: "file name is not UTF-8",
                })?;
                Ok((name.to_string(), found.clone()))
            })
            .collect()
    }

    fn contents(&self, file: &Oid) -> Result<Vec<u8>, SnapshotError> {
        let repo = self.repo();
        let blob = repo
            .find_blob(*file)
            .map_err(|e| self.git_err("reading a file", &e))?;
        Ok(blob.content().to_vec())
    }
}

impl Snapshot for GitRevision {
    fn describe(&self) -> String {
        self.label.clone()
    }

    fn display_path(&self, rel: &str) -> std::path::PathBuf {
        std::path::PathBuf::from(format!(
            "{}:{rel}",
            &self.commit[..self.commit.len().min(12)]
        ))
    }

    fn revision(&self) -> Option<String> {
        Some(self.commit.clone())
    }

    fn read(&self, rel: &str) -> Result<Option<Vec<u8>>, SnapshotError> {
        super::read(self, rel)
    }

    fn blob_id(&self, rel: &str) -> Result<Option<Oid>, SnapshotError> {
        match super::locate(self, rel)? {
            (_, Found::File(id)) => Ok(Some(id)),
            _ => Ok(None),
        }
    }

    fn tree_id(&self, rel: &str) -> Result<Option<Oid>, SnapshotError> {
        match super::locate(self, rel)? {
            (_, Found::Dir(id)) => Ok(Some(id)),
            _ => Ok(None),
        }
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
}

/// The working directory of the git repository containing `path`, and `path`'s folder
/// inside it (`None` at the top), so `--repo deploy/dify` inside a checkout can be
/// diffed with `GitRevision::open(root, rev, subdir)`. Both are canonicalized, so a
/// symlinked checkout location still yields a clean relative subdir.
pub fn discover_repo_root(path: &Path) -> Result<(PathBuf, Option<String>), SnapshotError> {
    let abs = std::fs::canonicalize(path).map_err(|e| SnapshotError::io(path, e))?;
    let what = || format!("finding the git repository containing {}", abs.display());
    let repo = Repository::discover(&abs).map_err(|e| SnapshotError::git(what(), &e))?;
    let workdir = repo.workdir().ok_or_else(|| SnapshotError::Git {
        what: what(),
        message: "the repository is bare and has no working tree".to_string(),
    })?;
    let root = std::fs::canonicalize(workdir).map_err(|e| SnapshotError::io(workdir, e))?;
    let rel = abs.strip_prefix(&root).map_err(|_| SnapshotError::Git {
        what: what(),
        message: format!(
            "{} is outside the working tree {}",
            abs.display(),
            root.display()
        ),
    })?;
    let mut parts = Vec::new();
    for comp in rel.components() {
        let part = comp
            .as_os_str()
            .to_str()
            .ok_or_else(|| SnapshotError::InvalidPath {
                snapshot: format!("working tree {}", root.display()),
                path: rel.display().to_string(),
                reason: "path is not UTF-8",
            })?;
        parts.push(part);
    }
    let subdir = (!parts.is_empty()).then(|| parts.join("/"));
    Ok((root, subdir))
}

#[cfg(test)]
mod tests {
    //! Hostile trees that `git` itself would not produce, written through the object
    //! database; the friendly cases are in `tests/git_source.rs`.
    use super::*;
    use git2::Signature;

    /// A repository whose single commit has the given raw root tree bytes.
    fn repo_with_tree(build: impl FnOnce(&Repository) -> Oid) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(dir.path()).unwrap();
        let tree = build(&repo);
        let tree = repo.find_tree(tree).unwrap();
        let sig = Signature::now("t", "t@t").unwrap();
        repo.commit(Some("HEAD"), &sig, &sig, "c", &tree, &[])
            .unwrap();
        dir
    }

    /// A raw tree object: `<mode> <name>\0<20-byte id>` per entry.
    fn raw_tree(repo: &Repository, entries: &[(&str, &[u8], Oid)]) -> Oid {
        let mut data = Vec::new();
        for (mode, name, id) in entries {
            data.extend_from_slice(mode.as_bytes());
            data.push(b' ');
            data.extend_from_slice(name);
            data.push(0);
            data.extend_from_slice(id.as_bytes());
        }
        repo.odb().unwrap().write(ObjectType::Tree, &data).unwrap()
    }

    #[test]
    fn dot_dot_entry_in_a_tree_is_refused() {
        let dir = repo_with_tree(|repo| {
            let blob = repo.blob(b"pwned").unwrap();
            let inner = raw_tree(repo, &[("100644", b"x", blob)]);
            raw_tree(repo, &[("40000", b"..", inner), ("100644", b"ok", blob)])
        });
        let rev = GitRevision::open(dir.path(), "HEAD", None).unwrap();
        assert_eq!(rev.read("ok").unwrap().as_deref(), Some(&b"pwned"[..]));
        let err = rev.list("").unwrap_err();
        assert!(
            matches!(&err, SnapshotError::InvalidPath { path, .. } if path == ".."),
            "{err}"
        );
        let out = tempfile::tempdir().unwrap();
        let err = rev.materialize("", &out.path().join("dest")).unwrap_err();
        assert!(matches!(err, SnapshotError::InvalidPath { .. }), "{err}");
        assert!(
            !out.path().join("dest").exists(),
            "nothing is written before the check"
        );
    }

    #[test]
    fn dot_git_entry_in_a_tree_is_hidden() {
        let dir = repo_with_tree(|repo| {
            let blob = repo.blob(b"[core]").unwrap();
            let inner = raw_tree(repo, &[("100644", b"config", blob)]);
            raw_tree(repo, &[("40000", b".git", inner), ("100644", b"f", blob)])
        });
        let rev = GitRevision::open(dir.path(), "HEAD", None).unwrap();
        assert_eq!(rev.list("").unwrap(), vec!["f"]);
        assert_eq!(rev.read(".git/config").unwrap(), None);
    }

    #[test]
    fn gitlink_is_a_submodule_error() {
        let dir = repo_with_tree(|repo| {
            let blob = repo.blob(b"x").unwrap();
            let target = Oid::from_str("1234567890123456789012345678901234567890").unwrap();
            let plugin = raw_tree(
                repo,
                &[("100644", b"a", blob), ("160000", b"vendor", target)],
            );
            raw_tree(repo, &[("40000", b"plugin", plugin)])
        });
        let rev = GitRevision::open(dir.path(), "HEAD", None).unwrap();
        assert_eq!(rev.list("plugin").unwrap(), vec!["a", "vendor"]);
        for err in [
            rev.read("plugin/vendor").unwrap_err(),
            rev.kind("plugin/vendor").unwrap_err(),
            rev.materialize("plugin", tempfile::tempdir().unwrap().path())
                .unwrap_err(),
        ] {
            assert!(
                matches!(&err, SnapshotError::Submodule { path, .. } if path == "plugin/vendor"),
                "{err}"
            );
            assert!(err.to_string().contains("HEAD ("), "{err}");
        }
    }
}
