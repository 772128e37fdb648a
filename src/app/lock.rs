//! `plugsync lock`: pin what plugins.yaml declares in plugins.lock, repairing a lock that
//! does not load (a hand edit, a merge conflict), or, with `--locked`, only check that the
//! lock is up to date. In steps, so the CLI prints what each one tells between them: [`read`]
//! the files, [`LockRun::resolve`] the packages, [`LockRun::record_cluster_images`] from a cluster
//! (`--from-cluster`), then [`LockRun::finish`], which writes or checks.

use std::path::{Path, PathBuf};

use plugsync_core::error::Error;
use plugsync_core::load::{self, LoadedPluginSet, SalvagedLock};
use plugsync_core::model::{LockChange, LockState, PluginLock};
use plugsync_core::resolve::{Resolution, Resolver};
use plugsync_core::source::WorkTree;

/// What `plugsync lock` is asked to do.
#[derive(Debug, Clone)]
pub(crate) struct LockRequest {
    /// plugins.yaml.
    pub(crate) plugins_path: PathBuf,
    /// The plugins.lock beside it.
    pub(crate) lock_path: PathBuf,
    /// The folder `path:` plugins are relative to.
    pub(crate) root: PathBuf,
    /// `--locked`: change nothing, fail unless the lock is up to date.
    pub(crate) locked: bool,
    /// `--update`: plugins resolved afresh though pinned.
    pub(crate) update: Vec<String>,
}

/// Why `lock` did not do what was asked.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LockError {
    /// `--locked`, and the lock is missing or does not pin what plugins.yaml declares: what
    /// CI checks (exit code 1, not an error of plugsync's).
    #[error("{} is out of date: {why}", path.display())]
    OutOfDate {
        /// The lock.
        path: PathBuf,
        /// How, and what to run about it.
        why: String,
    },
    /// Anything else: reading, resolving, writing.
    #[error(transparent)]
    Failed(#[from] Error),
}

/// A lock run between its steps: the files read, then the packages resolved.
#[derive(Debug)]
pub(crate) struct LockRun {
    request: LockRequest,
    set: LoadedPluginSet,
    old: Option<PluginLock>,
    salvaged: Option<SalvagedLock>,
    /// What the CLI warns about before resolving: a lock that did not load and how it is
    /// repaired, one line each.
    pub(crate) warnings: Vec<String>,
    resolution: Option<Resolution>,
}

/// Reads plugins.yaml and plugins.lock. A lock that does not load is repaired from what can
/// still be read of it (its [`LockRun::warnings`] say how); with `--locked`, which changes
/// nothing, it is the error, and so is a missing lock.
pub(crate) fn read(request: LockRequest) -> Result<LockRun, LockError> {
    let set = load::load_plugin_set(
        &request.plugins_path,
        &load::read_file(&request.plugins_path)?,
    )?;
    let lock_path = &request.lock_path;
    let mut warnings = Vec::new();
    let (old, salvaged) = match read_lock_text(lock_path)? {
        None => (None, None),
        Some(text) => match load::load_lock(lock_path, &text) {
            Ok(doc) => (Some(doc.value), None),
            Err(refused @ Error::Invalid(_)) if !request.locked => {
                let salvaged = load::salvage_lock(lock_path, &text);
                warnings = salvage_warnings(lock_path, &salvaged, &refused);
                (Some(salvaged.lock.clone()), Some(salvaged))
            }
            Err(e) => return Err(e.into()),
        },
    };
    if request.locked && old.is_none() {
        return Err(LockError::OutOfDate {
            path: request.lock_path,
            why: "it does not exist; run `plugsync lock` and commit it".into(),
        });
    }
    Ok(LockRun {
        request,
        set,
        old,
        salvaged,
        warnings,
        resolution: None,
    })
}

/// How `lock` left plugins.lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LockStatus {
    /// It pinned what plugins.yaml declares already (and, unless `--locked`, its bytes were
    /// those plugsync writes).
    UpToDate,
    /// It was written.
    Written,
    /// It did not load, and was repaired and written.
    Repaired,
}

/// What `lock` did, for the CLI to print.
#[derive(Debug)]
pub(crate) struct LockOutcome {
    /// The lock.
    pub(crate) path: PathBuf,
    /// How it was left.
    pub(crate) status: LockStatus,
    /// The pins that changed.
    pub(crate) changes: Vec<LockChange>,
    /// For a repaired lock: each plugin two entries pinned differently, with the sha256 of
    /// the package kept (the one its source serves).
    pub(crate) kept: Vec<(String, String)>,
    /// How many plugins the lock pins.
    pub(crate) plugins: usize,
}

impl LockRun {
    /// The declared set.
    pub(crate) fn set(&self) -> &LoadedPluginSet {
        &self.set
    }

    /// Resolves every declared plugin: what is pinned stays, unless named in `--update`.
    pub(crate) async fn resolve(&mut self, resolver: &Resolver) -> Result<(), Error> {
        let snapshot =
            WorkTree::new(&self.request.root).map_err(|e| Error::Usage(e.to_string()))?;
        let update = &self.request.update;
        // `inventory:` and `group:` entries become the package artifacts they name; the
        // lock pins the inventory's digest.
        let expanded = plugsync_core::expand::expand_from(
            &self.set,
            &snapshot,
            "",
            self.old.as_ref(),
            resolver.cache().root(),
            false,
            &resolver.fetchers().settings().registry_logins,
        )
        .await?;
        let (set, pin) = match &expanded {
            Some(e) => (&e.set, Some(e.pin.clone())),
            None => (&self.set, None),
        };
        let mut resolution = match &self.salvaged {
            Some(salvaged) => {
                resolver
                    .resolve_salvaged(&snapshot, set, salvaged, update)
                    .await?
            }
            None => {
                resolver
                    .resolve(&snapshot, set, self.old.as_ref(), update)
                    .await?
            }
        };
        resolution.lock.inventory = pin;
        tracing::debug!(plugins = resolution.plugins.len(), "resolved");
        self.resolution = Some(resolution);
        Ok(())
    }

    /// `--from-cluster`: also pins the image digests the controller recorded (Plugin
    /// status) for the set in `namespace`, by build-inputs hash, so the next render runs
    /// them and nothing is rebuilt. Returns how many were pinned before and after. Call
    /// after [`LockRun::resolve`].
    pub(crate) async fn record_cluster_images(
        &mut self,
        client: &kube::Client,
        namespace: &str,
    ) -> Result<(usize, usize), Error> {
        let name = &self.set.spec().metadata.name;
        let images = plugsync_kube::controller::reconcile::recorded_images(client, namespace, name)
            .await
            .map_err(|e| Error::Cluster(format!("reading Plugins of {namespace}/{name}: {e}")))?;
        let Some(resolution) = &mut self.resolution else {
            return Err(Error::Usage(
                "internal error: the lock was not resolved".into(),
            ));
        };
        let before = resolution.lock.images.len();
        resolution.lock.record_images(images);
        Ok((before, resolution.lock.images.len()))
    }

    /// Writes the lock (unless its bytes are already those), or with `--locked` only checks
    /// that it is up to date. Call after [`LockRun::resolve`].
    pub(crate) fn finish(self) -> Result<LockOutcome, LockError> {
        let Some(resolution) = self.resolution else {
            return Err(Error::Usage("internal error: the lock was not resolved".into()).into());
        };
        let path = self.request.lock_path;
        let plugins = resolution.lock.plugins.len();
        let unchanged = self.old.as_ref().is_some_and(|o| o.pins(&resolution.lock));
        if self.request.locked {
            if unchanged {
                return Ok(LockOutcome {
                    path,
                    status: LockStatus::UpToDate,
                    changes: Vec::new(),
                    kept: Vec::new(),
                    plugins,
                });
            }
            let changes: Vec<String> = resolution
                .changes
                .iter()
                .map(|c| format!("  {c}"))
                .collect();
            let why = format!(
                "it differs from plugins.yaml:\n{}\nrun `plugsync lock` and commit it",
                changes.join("\n")
            );
            return Err(LockError::OutOfDate { path, why });
        }
        let text = resolution.lock.to_yaml();
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        if on_disk != text {
            super::files::write_atomically(&path, text.as_bytes())?;
        }
        // Which of the packages the two sides pinned each contested plugin kept.
        let kept = self
            .salvaged
            .iter()
            .flat_map(|salvaged| salvaged.contested.keys())
            .filter_map(|source| resolution.lock.find_by_source(source))
            .map(|kept| (kept.name.clone(), kept.sha256.clone()))
            .collect();
        let status = if self.salvaged.is_some() {
            LockStatus::Repaired
        } else if unchanged && on_disk == text {
            LockStatus::UpToDate
        } else {
            LockStatus::Written
        };
        Ok(LockOutcome {
            path,
            status,
            changes: resolution.changes,
            kept,
            plugins,
        })
    }
}

/// A lock that a cluster operation may use: refused when missing or out of date, since what
/// reaches a cluster is always pinned.
pub(crate) fn require_pinned(lock: &LockState, lock_path: &Path) -> Result<(), Error> {
    match lock {
        LockState::UpToDate => Ok(()),
        LockState::Missing => Err(Error::LockOutOfDate(format!(
            "{} does not exist; run `plugsync lock` and commit it",
            lock_path.display()
        ))),
        LockState::Stale(changes) => Err(Error::LockOutOfDate(format!(
            "{}\nrun `plugsync lock` and commit it",
            changes
                .iter()
                .map(|c| format!("  {c}"))
                .collect::<Vec<_>>()
                .join("\n")
        ))),
    }
}

/// The text of plugins.lock, `None` when there is none.
pub(crate) fn read_lock_text(path: &Path) -> Result<Option<String>, Error> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// What `lock` tells the user it is about to do with a lock that does not load: the notes
/// of [`load::salvage_lock`] (or, when it read everything, why the file did not load).
fn salvage_warnings(lock_path: &Path, salvaged: &SalvagedLock, refused: &Error) -> Vec<String> {
    let what = if salvaged.conflict {
        "has a merge conflict"
    } else {
        "does not load (a hand edit or a bad merge)"
    };
    let mut warnings = vec![format!(
        "{} {what}; repairing it: {} pins kept, every other plugin resolved afresh",
        lock_path.display(),
        salvaged.lock.plugins.len()
    )];
    if salvaged.notes.is_empty() {
        if let Error::Invalid(found) = refused {
            let advice = [load::LOCK_REPAIR_ADVICE, load::LOCK_CONFLICT_ADVICE];
            warnings.extend(
                found
                    .0
                    .iter()
                    .filter(|d| !advice.contains(&d.message.as_str()))
                    .map(ToString::to_string),
            );
        }
    }
    warnings.extend(salvaged.notes.iter().map(ToString::to_string));
    warnings
}
