//! Resolve: turn each declared plugin into exact package bytes, verified against the lock.
//!
//! Rules, in the spirit of `cargo` and Carvel's `kbld` lock:
//! - An entry whose declaration is unchanged since the lock was written (same `source`) is
//!   pinned: its bytes must hash to the pinned sha256, or the whole run fails with
//!   [`Error::DigestMismatch`] and nothing is written. Pinned bytes come from the cache when
//!   present, so a second `lock` downloads nothing.
//! - An entry that is new or whose declaration changed is resolved afresh.
//! - `--update NAME` resolves NAME afresh even though it is pinned.
//! - An in-repo `path:` plugin is read from the snapshot each time; its content is part of
//!   the commit, so a changed directory is re-pinned by `lock` and reported as out of date
//!   by `lock --locked`. A directory whose git tree packed before is read from the cache
//!   ([`cache::Cache::packed_sha256`]) rather than packed again: same tree, same bytes.

pub mod cache;
mod check;
mod signatures;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};

use futures::stream::{self, StreamExt, TryStreamExt};

use crate::error::{Diagnostics, Error};
use crate::fetch::{Fetchers, NoProgress, Progress};
use crate::load::{DeclaredPlugin, DeclaredSource, LoadedPluginSet, SalvagedLock};
use crate::model::{LockChange, LockedPlugin, PluginLock};
use crate::package::{self, Package};
use crate::source::{EntryKind, Snapshot};
use cache::Cache;
pub use check::OfflineCheck;

/// How many packages are fetched at once.
const CONCURRENT_FETCHES: usize = 4;

/// Another thread takes at least this many cached packages (reading one takes about as
/// long as handing work to a thread).
const MIN_READS_PER_THREAD: usize = 16;

/// Hands out a progress sink per download (a terminal bar in the CLI, nothing in tests).
pub trait ProgressReporter: Send + Sync {
    /// A sink for one download, labelled for the user.
    fn download(&self, label: &str) -> Box<dyn Progress>;
}

/// Reports nothing.
pub struct Quiet;

impl ProgressReporter for Quiet {
    fn download(&self, _label: &str) -> Box<dyn Progress> {
        Box::new(NoProgress)
    }
}

/// A declared plugin with its exact package.
#[derive(Debug, Clone)]
pub struct ResolvedPlugin {
    /// The declaration it came from.
    pub declared: DeclaredPlugin,
    /// Its lock entry.
    pub locked: LockedPlugin,
    /// The package, read and validated; shared with the resolver's memo, which a diff's
    /// second resolution reads from.
    pub package: Arc<Package>,
    /// The package bytes (they go into the build context).
    pub bytes: Arc<Vec<u8>>,
}

/// The outcome of resolving a whole set.
#[derive(Debug, Clone)]
pub struct Resolution {
    /// Every plugin, in declaration order.
    pub plugins: Vec<ResolvedPlugin>,
    /// The lock that pins exactly these packages.
    pub lock: PluginLock,
    /// How it differs from the lock that existed before.
    pub changes: Vec<LockChange>,
}

/// The differences between two locks, by plugin name, in name order.
pub(crate) fn lock_changes(old: &PluginLock, new: &PluginLock) -> Vec<LockChange> {
    // Indexed by name (first entry of a name wins, as a linear search would find it), so
    // comparing locks of thousands of plugins stays linear.
    let old_by_name = first_by(&old.plugins, |p| p.name.as_str());
    let new_names: HashSet<&str> = new.plugins.iter().map(|p| p.name.as_str()).collect();
    let mut changes = Vec::new();
    for after in &new.plugins {
        match old_by_name.get(after.name.as_str()).copied() {
            None => changes.push(LockChange::Added(after.clone())),
            Some(before) if !before.pins(after) => changes.push(LockChange::Changed {
                before: before.clone(),
                after: after.clone(),
            }),
            Some(_) => {}
        }
    }
    for before in &old.plugins {
        if !new_names.contains(before.name.as_str()) {
            changes.push(LockChange::Removed(before.clone()));
        }
    }
    changes.sort_by(|a, b| change_name(a).cmp(change_name(b)));
    changes
}

/// Each key's first item, by key.
fn first_by<'a, T>(items: &'a [T], key: impl Fn(&'a T) -> &'a str) -> HashMap<&'a str, &'a T> {
    let mut map = HashMap::with_capacity(items.len());
    for item in items {
        map.entry(key(item)).or_insert(item);
    }
    map
}

fn change_name(c: &LockChange) -> &str {
    match c {
        LockChange::Added(p) | LockChange::Removed(p) => &p.name,
        LockChange::Changed { after, .. } => &after.name,
    }
}

/// Packages read, by sha256: the bytes (alive while some resolution holds them) and what
/// reading them gave.
type ReadPackages = HashMap<String, (Weak<Vec<u8>>, Arc<Package>)>;

/// Packages committed in the repository, by the git id of what they were read from (the
/// blob of a `.difypkg` file, the tree of a plugin directory): the bytes (alive while some
/// resolution holds them) and what reading them gave.
type CommittedPackages = HashMap<git2::Oid, (Weak<Vec<u8>>, Arc<Package>)>;

/// Fetches, verifies and caches packages.
pub struct Resolver {
    sources: Fetchers,
    cache: Cache,
    max_bytes: u64,
    progress: Arc<dyn ProgressReporter>,
    /// Packages already read, by sha256, while a resolution still holds their bytes.
    read: Mutex<ReadPackages>,
    /// Packages already read from the repository, by git object id, while a resolution
    /// still holds their bytes: a diff resolves base after head, and the packages the pull
    /// request left alone have the same id at both.
    committed: Mutex<CommittedPackages>,
}

impl Resolver {
    /// A resolver fetching through `sources`, caching in `cache`, refusing packages over
    /// `max_bytes`.
    pub fn new(sources: Fetchers, cache: Cache, max_bytes: u64) -> Resolver {
        Resolver {
            sources,
            cache,
            max_bytes,
            progress: Arc::new(Quiet),
            read: Mutex::new(HashMap::new()),
            committed: Mutex::new(HashMap::new()),
        }
    }

    /// The package cache (the private inventory's cache lives under its root).
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// The package source clients (their settings carry registry credentials).
    pub fn fetchers(&self) -> &Fetchers {
        &self.sources
    }

    /// Shows download progress through `progress`.
    pub fn with_progress(mut self, progress: Arc<dyn ProgressReporter>) -> Resolver {
        self.progress = progress;
        self
    }

    /// Resolves every declared plugin. `snapshot` is the revision the set was read from
    /// (`path:` entries are read from it); `old` is its lock, if any; `update` names plugins
    /// (`author/name`) to resolve afresh even though they are pinned.
    pub async fn resolve(
        &self,
        snapshot: &dyn Snapshot,
        set: &LoadedPluginSet,
        old: Option<&PluginLock>,
        update: &[String],
    ) -> Result<Resolution, Error> {
        self.resolve_contested(snapshot, set, old, &BTreeMap::new(), update)
            .await
    }

    /// [`Resolver::resolve`] against what `plugsync lock` could read of a damaged lock
    /// ([`crate::load::salvage_lock`]): its pins hold as any lock's do, and a source it
    /// pins to several packages (the two sides of a merge conflict) is fetched and must
    /// serve one of them, which is kept; serving neither is a digest mismatch, as for any
    /// pin. `--update` still takes what the source serves.
    pub async fn resolve_salvaged(
        &self,
        snapshot: &dyn Snapshot,
        set: &LoadedPluginSet,
        salvaged: &SalvagedLock,
        update: &[String],
    ) -> Result<Resolution, Error> {
        self.resolve_contested(
            snapshot,
            set,
            Some(&salvaged.lock),
            &salvaged.contested,
            update,
        )
        .await
    }

    async fn resolve_contested(
        &self,
        snapshot: &dyn Snapshot,
        set: &LoadedPluginSet,
        old: Option<&PluginLock>,
        contested: &BTreeMap<String, Vec<LockedPlugin>>,
        update: &[String],
    ) -> Result<Resolution, Error> {
        let empty = PluginLock::default();
        let old = old.unwrap_or(&empty);
        check_update_names(set, old, update)?;
        let update: BTreeSet<&str> = update.iter().map(String::as_str).collect();
        let pins = first_by(&old.plugins, |p| p.source.as_str());
        self.read_packages()
            .retain(|_, (bytes, _)| bytes.strong_count() > 0);
        self.committed_packages()
            .retain(|_, (bytes, _)| bytes.strong_count() > 0);

        // A contested source is resolved unpinned (fetched, never taken from the cache)
        // and then checked against every candidate pin.
        let mut candidates: Vec<Option<&[LockedPlugin]>> = Vec::with_capacity(set.plugins.len());
        let entries: Vec<(String, Option<LockedPlugin>)> = set
            .plugins
            .iter()
            .map(|declared| {
                let source = declared.source.lock_source(&set.marketplace);
                let pinned = pins
                    .get(source.as_str())
                    .filter(|p| !update.contains(p.name.as_str()))
                    .map(|p| (*p).clone());
                let contest = contested
                    .get(&source)
                    .filter(|_| pinned.is_some())
                    .filter(|_| !matches!(declared.source, DeclaredSource::Path(_)))
                    .map(Vec::as_slice);
                candidates.push(contest);
                let pinned = if contest.is_some() { None } else { pinned };
                (source, pinned)
            })
            .collect();
        // Pinned packages already in the cache are read on all cores first; the stream then
        // takes each one's result in declaration order, exactly where it would have read it.
        let prefetched = self.read_ahead(snapshot, &set.plugins, &entries);

        let keys = signatures::trusted_keys(snapshot, set)?;
        let mut results: Vec<Resolved> = stream::iter(
            set.plugins
                .iter()
                .zip(entries)
                .zip(prefetched)
                .zip(candidates),
        )
        .map(
            |(((declared, (source, pinned)), prefetched), contest)| async move {
                let resolved = self
                    .resolve_one(snapshot, declared, source, pinned.as_ref(), prefetched)
                    .await
                    .map_err(|e| at_declaration(set, declared, e))?;
                match contest {
                    Some(pins) if !pins.iter().any(|p| p.sha256 == resolved.0.sha256) => {
                        Err(Error::DigestMismatch {
                            plugin: resolved.0.name.clone(),
                            expected: pins
                                .iter()
                                .map(|p| p.sha256.as_str())
                                .collect::<Vec<_>>()
                                .join(" or sha256:"),
                            actual: resolved.0.sha256.clone(),
                            source_url: declared.source.describe(),
                        })
                    }
                    _ => Ok(resolved),
                }
            },
        )
        .buffered(CONCURRENT_FETCHES)
        .try_collect()
        .await?;

        // Who signed each package, recorded in the lock, and what the set's policy refuses.
        let mut diagnostics: Vec<_> = set
            .plugins
            .iter()
            .zip(results.iter_mut())
            .filter_map(|(declared, (locked, package, _))| {
                signatures::check(set, declared, locked, package, &keys)
            })
            .collect();
        // Two entries may turn out to be the same plugin only once their packages are known.
        let mut first_of: HashMap<&str, usize> = HashMap::with_capacity(results.len());
        for (i, (locked, _, _)) in results.iter().enumerate() {
            if let Some(&j) = first_of.get(locked.name.as_str()) {
                let first = &set.plugins[j].path;
                diagnostics.push(set.doc.error_at(
                    &set.plugins[i].path,
                    format!(
                        "duplicate plugin: this package is {}, already declared at {first} (line {})",
                        locked.name,
                        set.doc.position(first).line
                    ),
                ));
            } else {
                first_of.insert(&locked.name, i);
            }
        }
        if !diagnostics.is_empty() {
            return Err(Error::Invalid(Diagnostics(diagnostics)));
        }

        let plugins: Vec<ResolvedPlugin> = set
            .plugins
            .iter()
            .zip(results)
            .map(|(declared, (locked, package, bytes))| ResolvedPlugin {
                declared: declared.clone(),
                locked,
                package,
                bytes,
            })
            .collect();
        let mut lock = PluginLock::new(plugins.iter().map(|p| p.locked.clone()).collect());
        // Recorded image digests carry over, for the plugins still pinned.
        lock.record_images(old.images.iter().cloned());
        let changes = lock_changes(old, &lock);
        Ok(Resolution {
            plugins,
            lock,
            changes,
        })
    }

    async fn resolve_one(
        &self,
        snapshot: &dyn Snapshot,
        declared: &DeclaredPlugin,
        source: String,
        pinned: Option<&LockedPlugin>,
        prefetched: Option<Prefetched>,
    ) -> Result<Resolved, Error> {
        // Read ahead (and checked) on all cores: complete already.
        if let Some(resolved) = prefetched {
            return resolved;
        }
        // A pinned package this resolver has read before (a diff resolves base and head
        // with one resolver, and they share all but the changed packages): the same
        // verified bytes, so the same package, without reading the cache or the archive.
        let remembered = match (&declared.source, pinned) {
            (DeclaredSource::Path(_), _) | (_, None) => None,
            (_, Some(pin)) => self
                .read_packages()
                .get(&pin.sha256)
                .and_then(|(bytes, package)| {
                    bytes.upgrade().map(|bytes| (Arc::clone(package), bytes))
                }),
        };
        let (package, bytes) = match remembered {
            Some(found) => found,
            None => {
                let label = declared.source.describe();
                self.read_one(snapshot, declared, &source, &label, pinned)
                    .await?
            }
        };
        lock_entry(declared, source, package, bytes)
    }

    /// The memo of packages read, by sha256 (a poisoned lock still holds valid entries:
    /// each is inserted whole).
    fn read_packages(&self) -> std::sync::MutexGuard<'_, ReadPackages> {
        self.read
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The memo of packages read from the repository, by git object id.
    fn committed_packages(&self) -> std::sync::MutexGuard<'_, CommittedPackages> {
        self.committed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// An in-repo package: a plugin directory packed or a `.difypkg` file read, unless the
    /// same git object (the same blob, the same tree, so the same bytes) was read before
    /// while a resolution still holds it, whose package is taken as it is. Its lock entry
    /// is made from it and compared with this revision's lock all the same.
    fn read_committed(
        &self,
        snapshot: &dyn Snapshot,
        declared: &DeclaredPlugin,
        label: &str,
        rel: &str,
    ) -> Result<(Arc<Package>, Arc<Vec<u8>>), Error> {
        let snap = |e: crate::source::SnapshotError| Error::Usage(format!("{label}: {e}"));
        let kind = snapshot.kind(rel).map_err(snap)?;
        let known = match kind {
            EntryKind::File => snapshot.blob_id(rel).map_err(snap)?,
            EntryKind::Dir => snapshot.tree_id(rel).map_err(snap)?,
            _ => None,
        };
        if let Some(id) = known {
            let found = self
                .committed_packages()
                .get(&id)
                .and_then(|(bytes, package)| {
                    bytes.upgrade().map(|bytes| (Arc::clone(package), bytes))
                });
            if let Some(found) = found {
                tracing::debug!(path = rel, id = %id, "committed package unchanged, read before: reused");
                return Ok(found);
            }
        }
        let packed_before = match (kind, known) {
            (EntryKind::Dir, Some(tree)) => self.packed_before(tree),
            _ => None,
        };
        let (bytes, packed_now) = match packed_before {
            Some(bytes) => {
                tracing::debug!(
                    path = rel,
                    "plugin directory packed before: read from the cache"
                );
                (bytes, None)
            }
            None => {
                let bytes = self.read_local_as(snapshot, label, rel, kind)?;
                let packed_now = known.filter(|_| kind == EntryKind::Dir);
                (bytes, packed_now)
            }
        };
        // A working tree knows no blob ids: the file's is computed from what was read.
        let id = match (known, kind) {
            (Some(id), _) => Some(id),
            (None, EntryKind::File) => git2::Oid::hash_object(git2::ObjectType::Blob, &bytes).ok(),
            (None, _) => None,
        };
        // In-repo packages are cached too: the controller renders build contexts from
        // the cache, whatever the source.
        let sha = package::sha256_hex(&bytes);
        if !self.cache.contains(&sha) {
            self.cache
                .put(&bytes)
                .map_err(|e| Error::io(self.cache.root(), e))?;
        }
        if let Some(tree) = packed_now {
            // An optimisation only: failing to record costs the next run a packing.
            if let Err(e) = self.cache.record_packed(tree, &sha) {
                tracing::debug!(error = %e, "could not record a packed directory in the cache");
            }
        }
        let (package, bytes) = self.read_package(declared, bytes, sha)?;
        if let Some(id) = id {
            self.committed_packages()
                .insert(id, (Arc::downgrade(&bytes), Arc::clone(&package)));
        }
        Ok((package, bytes))
    }

    /// The package a plugin directory with git tree id `tree` packed to before, from the
    /// cache (verified there by its sha256), so an unchanged directory is not packed again.
    fn packed_before(&self, tree: git2::Oid) -> Option<Vec<u8>> {
        let sha = self.cache.packed_sha256(tree)?;
        self.cache.get(&sha).ok().flatten()
    }

    /// Gets a package's bytes (packed, cached or fetched and verified) and reads them.
    async fn read_one(
        &self,
        snapshot: &dyn Snapshot,
        declared: &DeclaredPlugin,
        source: &str,
        label: &str,
        pinned: Option<&LockedPlugin>,
    ) -> Result<(Arc<Package>, Arc<Vec<u8>>), Error> {
        let label = label.to_string();
        // The bytes and their sha256, computed or verified once here, so a large package
        // is hashed once.
        let (bytes, sha256) = match &declared.source {
            DeclaredSource::Path(rel) => {
                return self.read_committed(snapshot, declared, &label, rel);
            }
            DeclaredSource::Marketplace { .. } | DeclaredSource::Url(_) => {
                let cached = match pinned {
                    Some(pin) => self
                        .cache
                        .get(&pin.sha256)
                        .map_err(|e| Error::io(self.cache.root(), e))?
                        .map(|bytes| (bytes, pin.sha256.clone())),
                    None => None,
                };
                match cached {
                    Some(verified) => verified,
                    None => {
                        let url = url::Url::parse(source).map_err(|e| {
                            Error::Usage(format!("{label}: invalid source URL: {e}"))
                        })?;
                        let progress = self.progress.download(&label);
                        let bytes =
                            self.sources
                                .fetch(&url, progress.as_ref())
                                .await
                                .map_err(|e| Error::Source {
                                    plugin: label.clone(),
                                    source: e,
                                })?;
                        let sha = package::sha256_hex(&bytes);
                        if let Some(pin) = pinned {
                            if pin.sha256 != sha {
                                return Err(Error::DigestMismatch {
                                    plugin: pin.name.clone(),
                                    expected: pin.sha256.clone(),
                                    actual: sha,
                                    source_url: label,
                                });
                            }
                        }
                        self.cache
                            .put(&bytes)
                            .map_err(|e| Error::io(self.cache.root(), e))?;
                        (bytes, sha)
                    }
                }
            }
        };
        self.read_package(declared, bytes, sha256)
    }

    /// Reads the package in `bytes` (whose sha256 was just computed or verified) for
    /// `declared`, and remembers it unless it comes from the repository (whose bytes the
    /// next revision may change under the same path).
    fn read_package(
        &self,
        declared: &DeclaredPlugin,
        bytes: Vec<u8>,
        sha256: String,
    ) -> Result<(Arc<Package>, Arc<Vec<u8>>), Error> {
        let package = Package::read_hashed(&bytes, sha256).map_err(|e| Error::Package {
            plugin: declared.source.describe(),
            source: e,
        })?;
        let (package, bytes) = (Arc::new(package), Arc::new(bytes));
        if !matches!(declared.source, DeclaredSource::Path(_)) {
            self.remember(&package, &bytes);
        }
        Ok((package, bytes))
    }

    /// Adds a package read from verified fetched or cached bytes to the memo.
    fn remember(&self, package: &Arc<Package>, bytes: &Arc<Vec<u8>>) {
        self.read_packages().insert(
            package.sha256.clone(),
            (Arc::downgrade(bytes), Arc::clone(package)),
        );
    }

    /// Reads, in parallel, the cached bytes of each pinned package `read_one` would take
    /// from the cache, and the package of each `path:` plugin (packed or read from the
    /// repository, or reused: [`Resolver::read_committed`]), so a set of thousands of
    /// unchanged plugins is verified and parsed on all cores rather than one after another
    /// on the resolving task. One slot per declared plugin (`entries` holds each one's
    /// source and pin): `None` where the stream must go the usual way (unpinned downloads,
    /// packages the memo holds, a digest already read for an earlier plugin, which then
    /// finds the memo, cache misses, which are fetched, and everything after the first
    /// failure).
    ///
    /// A failure is kept in its plugin's slot and returned by the stream when it reaches
    /// that plugin, so the error is the first failing plugin's in declaration order, as
    /// before. Work stops at the first failure in declaration order; the only effect of
    /// reading ahead of an earlier plugin that fails otherwise (a download, say) is that a
    /// corrupt cache entry is removed, as the next run would anyway.
    ///
    /// Blocks the calling task while it runs, as the reads did before; it uses rayon's
    /// pool, not the runtime, so it works (and cannot deadlock) on any executor.
    fn read_ahead(
        &self,
        snapshot: &dyn Snapshot,
        plugins: &[DeclaredPlugin],
        entries: &[(String, Option<LockedPlugin>)],
    ) -> Vec<Option<Prefetched>> {
        let mut slots: Vec<Option<Prefetched>> = Vec::new();
        slots.resize_with(plugins.len(), || None);
        // `None` for the digest: a `path:` plugin, read from the repository.
        let jobs: Vec<(usize, Option<&str>, &DeclaredPlugin, &str)> = {
            let memo = self.read_packages();
            let mut seen = HashSet::new();
            plugins
                .iter()
                .zip(entries)
                .enumerate()
                .filter_map(
                    |(i, (declared, (source, pinned)))| match (&declared.source, pinned) {
                        (DeclaredSource::Path(_), _) => Some((i, None, declared, source.as_str())),
                        (_, None) => None,
                        (_, Some(pin)) => {
                            Some((i, Some(pin.sha256.as_str()), declared, source.as_str()))
                        }
                    },
                )
                .filter(|(_, sha, _, _)| {
                    sha.is_none_or(|sha| {
                        memo.get(sha)
                            .is_none_or(|(bytes, _)| bytes.strong_count() == 0)
                    })
                })
                .filter(|(_, sha, _, _)| sha.is_none_or(|sha| seen.insert(sha)))
                .collect()
        };
        // Once one fails, later ones are not needed (the stream stops at that plugin at the
        // latest) and are skipped; every one before it is read.
        use rayon::prelude::*;
        let failed = std::sync::atomic::AtomicUsize::new(usize::MAX);
        let done: Vec<Option<CachedRead>> = jobs
            .par_iter()
            .with_min_len(MIN_READS_PER_THREAD)
            .enumerate()
            .map(|(j, &(_, sha, declared, source))| {
                if j > failed.load(std::sync::atomic::Ordering::Relaxed) {
                    return None;
                }
                let read = match sha {
                    Some(sha) => self.read_cached_one(sha, declared, source),
                    None => self.read_path_one(snapshot, declared, source),
                };
                if read.is_err() {
                    failed.fetch_min(j, std::sync::atomic::Ordering::Relaxed);
                }
                Some(read)
            })
            .collect();
        for (job, read) in jobs.iter().zip(done) {
            if let Some(read) = read {
                slots[job.0] = read.transpose();
            }
        }
        slots
    }

    /// Reads and verifies one pinned package's cached bytes, reads the package, remembers
    /// it and makes its lock entry, failing as the stream would for `declared`.
    fn read_cached_one(&self, sha256: &str, declared: &DeclaredPlugin, source: &str) -> CachedRead {
        let cache = &self.cache;
        let Some(bytes) = cache.get(sha256).map_err(|e| Error::io(cache.root(), e))? else {
            return Ok(None);
        };
        let (package, bytes) = self.read_package(declared, bytes, sha256.to_string())?;
        lock_entry(declared, source.to_string(), package, bytes).map(Some)
    }

    /// Reads one `path:` plugin's package from the repository and makes its lock entry,
    /// failing as the stream would for `declared`.
    fn read_path_one(
        &self,
        snapshot: &dyn Snapshot,
        declared: &DeclaredPlugin,
        source: &str,
    ) -> CachedRead {
        let DeclaredSource::Path(rel) = &declared.source else {
            return Ok(None);
        };
        let label = declared.source.describe();
        let (package, bytes) = self.read_committed(snapshot, declared, &label, rel)?;
        lock_entry(declared, source.to_string(), package, bytes).map(Some)
    }

    /// Packs an in-repo plugin directory, or reads an in-repo `.difypkg`, from the snapshot
    /// (a working tree or a git revision; both refuse symlinks and paths leaving the repo).
    fn read_local(
        &self,
        snapshot: &dyn Snapshot,
        label: &str,
        rel: &str,
    ) -> Result<Vec<u8>, Error> {
        let kind = snapshot
            .kind(rel)
            .map_err(|e| Error::Usage(format!("{label}: {e}")))?;
        self.read_local_as(snapshot, label, rel, kind)
    }

    /// [`Resolver::read_local`] where `kind` is already known to be what is at `rel`.
    fn read_local_as(
        &self,
        snapshot: &dyn Snapshot,
        label: &str,
        rel: &str,
        kind: EntryKind,
    ) -> Result<Vec<u8>, Error> {
        let snap = |e: crate::source::SnapshotError| Error::Usage(format!("{label}: {e}"));
        match kind {
            EntryKind::Dir => {
                let package_error = |e| Error::Package {
                    plugin: label.to_string(),
                    source: e,
                };
                if let Some(dir) = snapshot.on_disk(rel).map_err(snap)? {
                    return package::pack_dir(&dir).map_err(package_error);
                }
                let tmp = tempfile::tempdir().map_err(|e| Error::io(std::env::temp_dir(), e))?;
                snapshot.materialize(rel, tmp.path()).map_err(snap)?;
                package::pack_dir(tmp.path()).map_err(package_error)
            }
            EntryKind::File => {
                let bytes = snapshot.read(rel).map_err(snap)?.ok_or_else(|| {
                    Error::Usage(format!("{label}: `{rel}` vanished while reading"))
                })?;
                if bytes.len() as u64 > self.max_bytes {
                    return Err(Error::Usage(format!(
                        "{label}: the package file is {} bytes, over the {} byte limit",
                        bytes.len(),
                        self.max_bytes
                    )));
                }
                Ok(bytes)
            }
            EntryKind::Missing => Err(Error::Usage(format!(
                "{label}: `{rel}` does not exist in {}",
                snapshot.describe()
            ))),
            other => Err(Error::Usage(format!(
                "{label}: `{rel}` is a {other:?}; use a plugin directory or a .difypkg file"
            ))),
        }
    }
}

/// `error`, a failure to get or read the package of `declared`, with the plugins.yaml line
/// and field it was declared at in place of the bare label (`plugins.yaml:14:13:
/// spec.plugins[2].path: path:plugins/hello: …`). Digest mismatches keep naming the plugin,
/// which `--update` takes.
fn at_declaration(set: &LoadedPluginSet, declared: &DeclaredPlugin, error: Error) -> Error {
    let label = declared.source.describe();
    let located = || set.error_at_source(declared, label.clone()).to_string();
    match error {
        Error::Package { plugin, source } if plugin == label => Error::Package {
            plugin: located(),
            source,
        },
        Error::Source { plugin, source } if plugin == label => Error::Source {
            plugin: located(),
            source,
        },
        Error::WrongPackage {
            plugin,
            expected,
            actual,
        } if plugin == label => Error::WrongPackage {
            plugin: located(),
            expected,
            actual,
        },
        Error::Usage(message) => match message.strip_prefix(&format!("{label}: ")) {
            Some(rest) => Error::Usage(format!("{}: {rest}", located())),
            None => Error::Usage(message),
        },
        other => other,
    }
}

/// A package read ahead from the cache for one plugin, or why reading it failed.
type Prefetched = Result<Resolved, Error>;

/// One plugin resolved: its lock entry, its package and the package bytes.
type Resolved = (LockedPlugin, Arc<Package>, Arc<Vec<u8>>);

/// What reading one pinned package from the cache gave: `None` when it is not there (or
/// was corrupt and removed), so the stream fetches it.
type CachedRead = Result<Option<Resolved>, Error>;

/// The lock entry of `declared` (from `source`) for the package it resolved to, refusing a
/// marketplace package that is not the one declared.
fn lock_entry(
    declared: &DeclaredPlugin,
    source: String,
    package: Arc<Package>,
    bytes: Arc<Vec<u8>>,
) -> Result<Resolved, Error> {
    if let DeclaredSource::Marketplace {
        author,
        name,
        version,
    } = &declared.source
    {
        let declared_id = format!("{author}/{name}:{version}");
        let served = format!("{}:{}", package.name(), package.manifest.version);
        if declared_id != served {
            return Err(Error::WrongPackage {
                plugin: declared.source.describe(),
                expected: declared_id,
                actual: served,
            });
        }
    }
    let unique_identifier = package.unique_identifier();
    let locked = LockedPlugin {
        name: package.name(),
        version: package.manifest.version.clone(),
        source,
        sha256: package.sha256.clone(),
        checksum: package.checksum.clone(),
        plugin_id: package::plugin_id(&unique_identifier),
        unique_identifier,
        // Set by the signature check, once the set's trusted keys are known.
        signature: None,
    };
    Ok((locked, package, bytes))
}

fn check_update_names(
    set: &LoadedPluginSet,
    old: &PluginLock,
    update: &[String],
) -> Result<(), Error> {
    let known: BTreeSet<String> = old
        .plugins
        .iter()
        .map(|p| p.name.clone())
        .chain(set.plugins.iter().filter_map(|d| match &d.source {
            DeclaredSource::Marketplace { author, name, .. } => Some(format!("{author}/{name}")),
            _ => None,
        }))
        .collect();
    let unknown: Vec<&String> = update.iter().filter(|n| !known.contains(*n)).collect();
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "--update names no declared or locked plugin: {} (known: {})",
            unknown
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            known.into_iter().collect::<Vec<_>>().join(", ")
        )))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::fetch::FetchSettings;
    use crate::source::WorkTree;
    use crate::synth;

    /// Enough plugins that cached packages are read on several threads.
    const N: usize = 4 * MIN_READS_PER_THREAD;

    struct Fixture {
        _tmp: tempfile::TempDir,
        cache: Cache,
        snapshot: WorkTree,
        set: LoadedPluginSet,
        lock: PluginLock,
    }

    fn fixture() -> Fixture {
        let tmp = tempfile::tempdir().expect("tempdir");
        let cache = Cache::open(&tmp.path().join("cache")).expect("cache");
        let repo = synth::generate_repo(&tmp.path().join("repo"), N, &cache).expect("repo");
        let text = std::fs::read_to_string(repo.plugins_file()).expect("plugins.yaml");
        let set = crate::load::load_plugin_set(&repo.plugins_file(), &text).expect("loads");
        let snapshot = WorkTree::new(&repo.dir).expect("worktree");
        Fixture {
            _tmp: tmp,
            cache,
            snapshot,
            set,
            lock: repo.lock,
        }
    }

    /// A resolver over `cache` with the default sources, for tests that fetch nothing.
    pub(crate) fn resolver(cache: &Cache) -> Resolver {
        let marketplace = url::Url::parse(crate::model::DEFAULT_MARKETPLACE).expect("url");
        Resolver::new(
            Fetchers::discover(FetchSettings::default(), marketplace),
            cache.clone(),
            64 << 20,
        )
    }

    /// Pins plugin `i` of the fixture to `sha256`.
    fn repin(lock: &mut PluginLock, i: usize, sha256: &str) {
        let name = synth::plugin_name(i);
        let pin = lock
            .plugins
            .iter_mut()
            .find(|p| p.name.rsplit('/').next() == Some(name.as_str()))
            .expect("plugin is locked");
        pin.sha256 = sha256.to_string();
    }

    #[tokio::test]
    async fn cached_packages_resolve_in_declaration_order() {
        let f = fixture();
        let resolver = resolver(&f.cache);
        let resolution = resolver
            .resolve(&f.snapshot, &f.set, Some(&f.lock), &[])
            .await
            .expect("resolves from the cache");
        assert_eq!(resolution.lock, f.lock);
        assert!(resolution.changes.is_empty());
        let names: Vec<String> = resolution
            .plugins
            .iter()
            .map(|p| {
                p.locked
                    .name
                    .rsplit('/')
                    .next()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect();
        assert_eq!(names, (0..N).map(synth::plugin_name).collect::<Vec<_>>());

        // A second resolution while the first is alive reads nothing: the memo hands back
        // the very same bytes.
        let again = resolver
            .resolve(&f.snapshot, &f.set, Some(&f.lock), &[])
            .await
            .expect("resolves again");
        for (a, b) in resolution.plugins.iter().zip(&again.plugins) {
            assert!(Arc::ptr_eq(&a.bytes, &b.bytes), "{}", a.locked.name);
        }
    }

    #[tokio::test]
    async fn the_first_bad_cached_package_in_declaration_order_is_reported() {
        let mut f = fixture();
        // Cached bytes that verify against their digest but are no package, pinned for
        // several plugins spread over the set (so over the reading threads), last first.
        let garbage = f.cache.put(b"not a zip").expect("put");
        for i in [N - 1, N / 2 + 3, N / 2, 7] {
            repin(&mut f.lock, i, &garbage);
        }
        let err = resolver(&f.cache)
            .resolve(&f.snapshot, &f.set, Some(&f.lock), &[])
            .await
            .expect_err("unreadable packages");
        // Named by its plugins.yaml line and field, and its URL.
        let url = f.set.plugins[7].source.describe();
        let text = std::fs::read_to_string(&f.set.doc.file).expect("plugins.yaml");
        let line = 1 + text
            .lines()
            .position(|l| l.ends_with(&format!("url: {url}")))
            .expect("declared");
        match err {
            Error::Package { plugin, .. } => assert_eq!(
                plugin,
                format!(
                    "{}:{line}:12: spec.plugins[7].url: {url}",
                    f.set.doc.file.display()
                )
            ),
            other => panic!("unexpected error: {other}"),
        }

        // An earlier plugin failing otherwise (a digest that is not one, so the cache
        // refuses it) is reported instead.
        repin(&mut f.lock, 5, "NOT-A-DIGEST");
        let err = resolver(&f.cache)
            .resolve(&f.snapshot, &f.set, Some(&f.lock), &[])
            .await
            .expect_err("bad digest");
        assert!(matches!(err, Error::Io { .. }), "{err}");
    }
}
