//! `plugsync validate`'s check of plugins.lock against plugins.yaml, with no network.
//!
//! Everything that can be known offline is checked: which declared plugins the lock does
//! not pin and which pins nothing declares any more; every `path:` package, packed or
//! read from the repository as `lock` would (so a missing, unreadable or changed one is
//! found); and every remote pin whose package is in the cache, which must be the package
//! the entry describes (an entry whose `sha256` was edited by hand points at another
//! package, or at none). A remote pin whose bytes are not cached cannot be checked without
//! fetching it; those are listed, for `plugsync lock --locked` to check.

use super::{lock_entry, Resolver};
use crate::error::{Diagnostic, Error};
use crate::load::{DeclaredSource, Document, LoadedPluginSet};
use crate::model::PluginLock;
use crate::package::Package;
use crate::source::Snapshot;

/// What [`Resolver::check_offline`] found.
#[derive(Debug, Clone, Default)]
pub struct OfflineCheck {
    /// How plugins.lock would change, as `plugsync lock` prints it (`+ name`, `- name`,
    /// `~ name`); a declared plugin not pinned yet is named by its declaration.
    pub changes: Vec<String>,
    /// Problems to fix before anything can be locked or rendered: a `path:` package missing
    /// or unreadable (at its plugins.yaml line), a pin that is not the package its entry
    /// describes (at its plugins.lock line).
    pub problems: Vec<Diagnostic>,
    /// Declared URLs whose scheme no source client on this machine handles (at their
    /// plugins.yaml line): what works from the cache here fails on a fresh machine.
    pub warnings: Vec<Diagnostic>,
    /// Remote pins whose package is not in the cache, so not checked.
    pub unverified: Vec<String>,
}

impl OfflineCheck {
    /// Whether plugins.lock pins exactly what plugins.yaml declares, as far as is known.
    pub fn up_to_date(&self) -> bool {
        self.changes.is_empty()
    }
}

impl Resolver {
    /// Checks `lock` against `set` (read from `snapshot`) without fetching anything; see
    /// the module documentation. Blocking: it packs `path:` plugins and reads the cache.
    pub fn check_offline(
        &self,
        snapshot: &dyn Snapshot,
        set: &LoadedPluginSet,
        lock: &Document<PluginLock>,
    ) -> OfflineCheck {
        let mut out = OfflineCheck::default();
        let keys = match super::signatures::trusted_keys(snapshot, set) {
            Ok(keys) => keys,
            Err(Error::Invalid(diagnostics)) => {
                out.problems.extend(diagnostics.0);
                return out;
            }
            Err(e) => {
                out.problems
                    .push(set.doc.error_at("spec.signatures", e.to_string()));
                return out;
            }
        };
        let pins = &lock.value.plugins;
        let mut declared_sources = std::collections::HashSet::new();
        for declared in &set.plugins {
            let source = declared.source.lock_source(&set.marketplace);
            let label = declared.source.describe();
            declared_sources.insert(source.clone());
            let pin = pins.iter().position(|p| p.source == source);
            if let DeclaredSource::Url(url) = &declared.source {
                let scheme = url.scheme();
                if !self.sources.schemes().iter().any(|s| s == scheme) {
                    out.warnings.push(set.error_at_source(
                        declared,
                        format!(
                            "no source client for scheme `{scheme}` on this machine: install an \
                             executable named `plugsync-source-{scheme}` on PATH or in a \
                             --plugin-dir (`plugsync sources` lists the clients found)"
                        ),
                    ));
                }
            }
            let problem = |e: Error| {
                let message = match e {
                    Error::Package { source, .. } => source.to_string(),
                    Error::Usage(m) => m
                        .strip_prefix(&format!("{label}: "))
                        .map(str::to_string)
                        .unwrap_or(m),
                    other => other.to_string(),
                };
                set.error_at_source(declared, format!("{label}: {message}"))
            };
            match &declared.source {
                DeclaredSource::Path(rel) => {
                    let read = self.read_local(snapshot, &label, rel).and_then(|bytes| {
                        let sha256 = crate::package::sha256_hex(&bytes);
                        Package::read_hashed(&bytes, sha256).map_err(|e| Error::Package {
                            plugin: label.clone(),
                            source: e,
                        })
                    });
                    let package = match read {
                        Ok(package) => package,
                        Err(e) => {
                            out.problems.push(problem(e));
                            continue;
                        }
                    };
                    let locked = match lock_entry(
                        declared,
                        source,
                        std::sync::Arc::new(package),
                        std::sync::Arc::new(Vec::new()),
                    ) {
                        Ok((mut locked, package, _)) => {
                            let refused = super::signatures::check(
                                set,
                                declared,
                                &mut locked,
                                &package,
                                &keys,
                            );
                            out.problems.extend(refused);
                            locked
                        }
                        Err(e) => {
                            out.problems.push(problem(e));
                            continue;
                        }
                    };
                    match pin.map(|i| (i, &pins[i])) {
                        None => out
                            .changes
                            .push(super::LockChange::Added(locked).to_string()),
                        // Same contents, other bytes: packing is deterministic, so the
                        // digest was edited (or the file re-zipped by hand).
                        Some((i, before))
                            if before.checksum == locked.checksum
                                && before.sha256 != locked.sha256 =>
                        {
                            out.problems.push(lock.error_at(
                                &format!("plugins[{i}].sha256"),
                                format!(
                                    "is not the digest of {label} (sha256:{}), whose contents \
                                     are the ones this entry pins: the digest was edited by \
                                     hand, or the package file re-zipped; run `plugsync lock` \
                                     to pin it again",
                                    locked.sha256
                                ),
                            ))
                        }
                        Some((_, before)) if !before.pins(&locked) => out.changes.push(
                            super::LockChange::Changed {
                                before: before.clone(),
                                after: locked,
                            }
                            .to_string(),
                        ),
                        Some(_) => {}
                    }
                }
                DeclaredSource::Marketplace { .. } | DeclaredSource::Url(_) => {
                    let Some(i) = pin else {
                        out.changes.push(format!("+ {label} (not pinned yet)"));
                        continue;
                    };
                    let before = &pins[i];
                    let cached = match self.cache.get(&before.sha256) {
                        Ok(Some(bytes)) => bytes,
                        Ok(None) | Err(_) => {
                            out.unverified.push(format!("{} ({label})", before.name));
                            continue;
                        }
                    };
                    let field = format!("plugins[{i}].sha256");
                    let package = match Package::read_hashed(&cached, before.sha256.clone()) {
                        Ok(package) => package,
                        Err(e) => {
                            out.problems.push(lock.error_at(
                                &field,
                                format!("the cached package with this digest does not read ({e}); run `plugsync lock --update {}`", before.name),
                            ));
                            continue;
                        }
                    };
                    let actual = package.unique_identifier();
                    if actual != before.unique_identifier {
                        out.problems.push(lock.error_at(
                            &field,
                            format!(
                                "this digest is the package {actual}, not {}: the entry was \
                                 edited by hand; restore it from git, or run `plugsync lock \
                                 --update {}` to pin what {label} serves now",
                                before.unique_identifier, before.name
                            ),
                        ));
                        continue;
                    }
                    let mut now = before.clone();
                    let refused =
                        super::signatures::check(set, declared, &mut now, &package, &keys);
                    out.problems.extend(refused);
                    if !before.pins(&now) {
                        out.changes.push(
                            super::LockChange::Changed {
                                before: before.clone(),
                                after: now,
                            }
                            .to_string(),
                        );
                    }
                }
            }
        }
        for before in pins {
            if !declared_sources.contains(&before.source) {
                out.changes
                    .push(super::LockChange::Removed(before.clone()).to_string());
            }
        }
        out
    }
}
