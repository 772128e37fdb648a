//! Synthetic repositories of N plugins, for the benchmark (`cargo bench --bench pipeline`)
//! and for scale tests.
//!
//! A synthetic repository is what a large real one looks like to the pipeline: a
//! `plugins.yaml` declaring N `url:` plugins, a `plugins.lock` pinning each of them, and
//! every pinned package already in the content-addressed [`Cache`]. Because every package
//! is pinned and cached, resolving it never touches the network (the URLs are under
//! `.invalid`, a top-level domain that never resolves, so an accidental fetch fails fast
//! instead of reaching someone's server).
//!
//! Packages are real, valid `.difypkg` zips built in memory, with fixed timestamps and
//! permissions, so the same N always gives the same bytes, lock and digests: benchmark
//! runs are comparable, and tests can assert exact outcomes.

use std::fmt::Write as _;
use std::io::{Cursor, Write as _};
use std::path::{Path, PathBuf};

use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, DateTime, ZipWriter};

use plugsync_core::error::Error;
use plugsync_core::load::{LOCK_FILE, PLUGINS_FILE};
use plugsync_core::model::{LockedPlugin, PluginLock};
use plugsync_core::package::{self, Package, PackageError};
use plugsync_core::resolve::cache::Cache;

/// Author of every synthetic plugin (`synth/p<i>`).
pub const AUTHOR: &str = "synth";

/// Where synthetic packages claim to come from. `.invalid` never resolves (RFC 2606), so
/// nothing is ever fetched from it: packages must come from the cache.
pub const URL_BASE: &str = "https://packages.example.invalid";

/// Every this many plugins, one carries a per-plugin runtime override (as real sets do),
/// so the merge of `spec.runtime` with overrides is part of what is measured.
const OVERRIDE_EVERY: usize = 10;

/// Most worker threads used to build and store packages.
const MAX_THREADS: usize = 4;

/// A generated repository.
#[derive(Debug, Clone)]
pub struct SynthRepo {
    /// The folder holding `plugins.yaml` and `plugins.lock`.
    pub dir: PathBuf,
    /// How many plugins it declares.
    pub n: usize,
    /// The lock written next to `plugins.yaml` (what `plugsync lock` would write).
    pub lock: PluginLock,
}

impl SynthRepo {
    /// Path of the generated `plugins.yaml`.
    pub fn plugins_file(&self) -> PathBuf {
        self.dir.join(PLUGINS_FILE)
    }

    /// Path of the generated `plugins.lock`.
    pub fn lock_file(&self) -> PathBuf {
        self.dir.join(LOCK_FILE)
    }
}

/// Where a synthetic repository keeps its packages: fetched by URL and cached (what most
/// sets do), or committed in the repository itself, which `plugsync diff` reads at both
/// revisions (the case the benchmark's committed rows measure).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SynthPackages {
    /// Declared by `url:`, pinned in the lock and already in the cache.
    #[default]
    Cached,
    /// Committed as `.difypkg` files, `packages/p<i>.difypkg`, declared by `path:`.
    Files,
    /// Committed unpacked, as plugin directories `plugins/p<i>/`, declared by `path:`.
    Dirs,
}

impl SynthPackages {
    /// Where plugin `i`'s package is committed, relative to `plugins.yaml` (`None` when it
    /// is fetched by URL).
    pub fn path(self, i: usize) -> Option<String> {
        match self {
            SynthPackages::Cached => None,
            SynthPackages::Files => Some(format!("packages/{}.difypkg", plugin_name(i))),
            SynthPackages::Dirs => Some(format!("plugins/{}", plugin_name(i))),
        }
    }

    /// The `spec.plugins` line declaring plugin `i` at `revision` (only URLs name the
    /// revision: a committed package changes under the same path).
    fn declaration(self, i: usize, revision: u32) -> String {
        match self.path(i) {
            None => format!("    - url: {}\n", package_url(i, revision)),
            Some(path) => format!("    - path: {path}\n"),
        }
    }

    /// The layout whose declaration of plugin 0 at revision 1 `plugins_yaml` holds.
    fn of(plugins_yaml: &str) -> Option<SynthPackages> {
        [
            SynthPackages::Cached,
            SynthPackages::Files,
            SynthPackages::Dirs,
        ]
        .into_iter()
        .find(|p| plugins_yaml.contains(&p.declaration(0, 1)))
    }
}

/// The one-plugin edits [`change_one`] can make, so both kinds of per-plugin change a
/// pull request can show are covered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SynthChange {
    /// Plugin 0 gets a runtime override (`replicas: 3`): same package, different
    /// Deployment, so the diff reports it as reconfigured. The lock does not change.
    Reconfigure,
    /// Plugin 0 moves to a new version with a new package (put in the cache and pinned in
    /// the lock), so the diff reports it as upgraded.
    Upgrade,
}

/// `synth/p<i>`'s plugin name without the author (`p<i>`).
pub fn plugin_name(i: usize) -> String {
    format!("p{i}")
}

/// The version of plugin `i` at `revision` (1 for generated repos, 2 after an upgrade):
/// `<revision>.<i / 1000>.<i % 1000>`, distinct per plugin and valid for Dify (at most
/// four digits per component).
pub fn plugin_version(i: usize, revision: u32) -> String {
    format!("{revision}.{}.{}", (i / 1000) % 10_000, i % 1000)
}

/// The URL plugin `i` at `revision` is declared with (and pinned under).
pub fn package_url(i: usize, revision: u32) -> String {
    format!(
        "{URL_BASE}/{AUTHOR}/{}/{}.difypkg",
        plugin_name(i),
        plugin_version(i, revision)
    )
}

/// The files of plugin `i` at `revision` (manifest, `main.py`, `requirements.txt`), as a
/// plugin's source directory holds them and its package packs them.
pub fn package_files(i: usize, revision: u32) -> [(&'static str, String); 3] {
    let name = plugin_name(i);
    let version = plugin_version(i, revision);
    // Shaped like the manifests Dify's own tooling writes (block style, quoted strings,
    // labels in English and Chinese), so reading them costs what reading real ones does.
    let manifest = format!(
        r#"version: {version}
type: plugin
author: "{AUTHOR}"
name: "{name}"
label:
  en_US: "Synthetic plugin {i}"
  zh_Hans: "合成插件 {i}"
description:
  en_US: Plugin {i} of a synthetic set, for benchmarks
  zh_Hans: 用于基准测试的合成插件 {i}
icon: icon.svg
created_at: "2026-01-01T00:00:00.000000000Z"
tags:
  - "utilities"
resource:
  memory: 268435456
  permission:
    tool:
      enabled: true
plugins:
  tools:
    - "provider/{name}.yaml"
meta:
  version: 0.0.1
  arch:
    - "amd64"
    - "arm64"
  runner:
    language: "python"
    version: "3.12"
    entrypoint: "main"
"#
    );
    let main = format!(
        "from dify_plugin import DifyPluginEnv, Plugin\n\n\
         # {AUTHOR}/{name} {version}\n\
         plugin = Plugin(DifyPluginEnv(MAX_REQUEST_TIMEOUT=120))\n\n\
         if __name__ == \"__main__\":\n    plugin.run()\n"
    );
    let requirements = format!("dify_plugin>=0.4.0,<0.5.0\n# {name}=={version}\n");
    [
        (package::MANIFEST_FILE, manifest),
        ("main.py", main),
        ("requirements.txt", requirements),
    ]
}

/// The package of plugin `i` at `revision`: a small, valid `.difypkg` of its
/// [`package_files`] whose bytes depend only on `i` and `revision`.
pub fn package_bytes(i: usize, revision: u32) -> Vec<u8> {
    let options = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Deflated)
        .compression_level(Some(6))
        .last_modified_time(DateTime::default())
        .unix_permissions(0o644);
    let mut zip = ZipWriter::new(Cursor::new(Vec::with_capacity(2048)));
    for (entry, content) in package_files(i, revision) {
        // Writing into memory cannot fail, and these entries are few, small and distinct.
        zip.start_file(entry, options)
            .and_then(|()| zip.write_all(content.as_bytes()).map_err(Into::into))
            .expect("in-memory zip write");
    }
    zip.finish().expect("in-memory zip finish").into_inner()
}

/// Builds plugin `i`'s package at `revision` where `packages` keeps it (in `cache`, or
/// committed under `dir`) and returns its lock entry, computed exactly as `plugsync lock`
/// computes it (from the package itself).
fn store_package(
    i: usize,
    revision: u32,
    dir: &Path,
    cache: &Cache,
    packages: SynthPackages,
) -> Result<LockedPlugin, Error> {
    let Some(rel) = packages.path(i) else {
        let bytes = package_bytes(i, revision);
        cache.put(&bytes).map_err(|e| Error::io(cache.root(), e))?;
        return lock_entry(&bytes, package_url(i, revision));
    };
    let path = dir.join(&rel);
    let bytes = if packages == SynthPackages::Dirs {
        std::fs::create_dir_all(&path).map_err(|e| Error::io(&path, e))?;
        for (name, content) in package_files(i, revision) {
            write(&path.join(name), content.as_bytes())?;
        }
        // Packed as `plugsync` packs a committed directory, so the lock pins its bytes.
        package::pack_dir(&path).map_err(|source| Error::Package {
            plugin: format!("path:{rel}"),
            source,
        })?
    } else {
        let bytes = package_bytes(i, revision);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        write(&path, &bytes)?;
        bytes
    };
    // The resolver caches committed packages itself on first read.
    lock_entry(&bytes, format!("path:{rel}"))
}

/// The lock entry pinning the package in `bytes`, declared as `source`.
fn lock_entry(bytes: &[u8], source: String) -> Result<LockedPlugin, Error> {
    let package = Package::read(bytes).map_err(|e| Error::Package {
        plugin: source.clone(),
        source: e,
    })?;
    let unique_identifier = package.unique_identifier();
    Ok(LockedPlugin {
        name: package.name(),
        version: package.manifest.version.clone(),
        source,
        sha256: package.sha256.clone(),
        checksum: package.checksum.clone(),
        plugin_id: package::plugin_id(&unique_identifier),
        unique_identifier,
        // As `plugsync lock` records it: synthetic packages carry no signature.
        signature: Some(package::signature::UNSIGNED.to_string()),
    })
}

/// Builds and stores the packages of plugins `0..n` in parallel, returning their lock
/// entries in index order. Storing fsyncs every entry, which dominates at large N, so the
/// work is split over a few threads.
fn store_packages(
    n: usize,
    dir: &Path,
    cache: &Cache,
    packages: SynthPackages,
) -> Result<Vec<LockedPlugin>, Error> {
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .clamp(1, MAX_THREADS)
        .min(n.max(1));
    let chunk = n.div_ceil(threads).max(1);
    let indices: Vec<usize> = (0..n).collect();
    std::thread::scope(|scope| {
        let workers: Vec<_> = indices
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|&i| store_package(i, 1, dir, cache, packages))
                        .collect::<Result<Vec<_>, Error>>()
                })
            })
            .collect();
        let mut all = Vec::with_capacity(n);
        for worker in workers {
            let part = worker.join().map_err(|_| Error::Package {
                plugin: "synthetic package".into(),
                source: PackageError::Other("a generator thread panicked".into()),
            })??;
            all.extend(part);
        }
        Ok(all)
    })
}

/// The text of `plugins.yaml` for `n` plugins (all at revision 1), fetched by URL.
pub fn plugins_yaml(n: usize) -> String {
    plugins_yaml_with(n, SynthPackages::Cached)
}

/// The text of `plugins.yaml` for `n` plugins (all at revision 1) kept as `packages` says.
pub fn plugins_yaml_with(n: usize, packages: SynthPackages) -> String {
    let mut out = String::with_capacity(256 + n * 96);
    let _ = write!(
        out,
        r#"# A synthetic PluginSet of {n} plugins, generated by plugsync::synth for benchmarks.
apiVersion: plugsync.dev/v1alpha1
kind: PluginSet
metadata:
  name: synth
  namespace: dify
spec:
  registry:
    prefix: registry.example.invalid/dify-plugins
    type: docker
    secretName: image-repo-secret
  build:
    maxAttempts: 3
    timeout: 30m
    python:
      pipMirror: https://pypi.example.invalid/simple
      preCompile: true
  runtime:
    replicas: 1
    resources: {{requests: {{cpu: 100m}}}}
    env: [{{name: LOG_LEVEL, value: info}}]
    nodeSelector: {{pool: plugins}}
    tolerations: [{{key: dedicated, value: plugins, effect: NoSchedule}}]
    labels: {{team: synth}}
  plugins:
"#
    );
    for i in 0..n {
        out.push_str(&packages.declaration(i, 1));
        if i % OVERRIDE_EVERY == OVERRIDE_EVERY - 1 {
            let _ = writeln!(
                out,
                "      runtime: {{replicas: 2, labels: {{tier: t{}}}}}",
                i % 3
            );
        }
    }
    out
}

/// Writes a repository of `n` plugins into `dir` (created if needed): `plugins.yaml`,
/// `plugins.lock`, and every package into `cache`.
///
/// Deterministic: the same `n` gives byte-identical files and packages. Existing files of
/// the same names are overwritten; other files in `dir` are left alone.
pub fn generate_repo(dir: &Path, n: usize, cache: &Cache) -> Result<SynthRepo, Error> {
    generate_repo_with(dir, n, cache, SynthPackages::Cached)
}

/// [`generate_repo`], with the packages kept as `packages` says: in `cache`, or committed
/// under `dir` (then `cache` is left alone; the resolver caches them on first read).
pub fn generate_repo_with(
    dir: &Path,
    n: usize,
    cache: &Cache,
    packages: SynthPackages,
) -> Result<SynthRepo, Error> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let lock = PluginLock::new(store_packages(n, dir, cache, packages)?);
    write(
        &dir.join(PLUGINS_FILE),
        plugins_yaml_with(n, packages).as_bytes(),
    )?;
    write(&dir.join(LOCK_FILE), lock.to_yaml().as_bytes())?;
    Ok(SynthRepo {
        dir: dir.to_path_buf(),
        n,
        lock,
    })
}

/// Changes exactly one plugin (plugin 0) of the repository generated in `dir`, as a pull
/// request would, and keeps the lock up to date: after it, `plugsync lock --locked` still
/// passes and `plugsync diff` shows exactly one plugin changed. A committed package is
/// upgraded in place (new bytes under the same path, plugins.yaml unchanged), as a user
/// replacing a `.difypkg` or editing a plugin directory does.
pub fn change_one(dir: &Path, cache: &Cache, change: SynthChange) -> Result<(), Error> {
    let plugins_path = dir.join(PLUGINS_FILE);
    let lock_path = dir.join(LOCK_FILE);
    let text = std::fs::read_to_string(&plugins_path).map_err(|e| Error::io(&plugins_path, e))?;
    let lock_text = std::fs::read_to_string(&lock_path).map_err(|e| Error::io(&lock_path, e))?;
    let old = plugsync_core::load::load_lock(&lock_path, &lock_text)?.value;
    let not_generated = || {
        Error::Usage(format!(
            "{}: plugin 0 is not declared as generated (already changed?)",
            plugins_path.display()
        ))
    };
    let packages = SynthPackages::of(&text).ok_or_else(not_generated)?;
    let line = packages.declaration(0, 1);
    let source = packages
        .path(0)
        .map_or_else(|| package_url(0, 1), |p| format!("path:{p}"));
    let pinned = old.plugins.iter().find(|p| p.source == source);
    let reconfigured = text.contains(&format!("{line}      runtime: {{replicas: 3}}\n"));
    let upgraded = pinned.is_none_or(|p| p.version != plugin_version(0, 1));
    if upgraded || (reconfigured && change == SynthChange::Reconfigure) {
        return Err(not_generated());
    }
    match change {
        SynthChange::Reconfigure => {
            let with_override = format!("{line}      runtime: {{replicas: 3}}\n");
            write(
                &plugins_path,
                text.replacen(&line, &with_override, 1).as_bytes(),
            )
        }
        SynthChange::Upgrade => {
            if packages == SynthPackages::Dirs {
                // The new version's files replace the old ones.
                let plugin_dir = dir.join(packages.path(0).unwrap_or_default());
                std::fs::remove_dir_all(&plugin_dir).map_err(|e| Error::io(&plugin_dir, e))?;
            }
            let upgraded = store_package(0, 2, dir, cache, packages)?;
            let plugins = old
                .plugins
                .into_iter()
                .map(|p| {
                    if p.source == source {
                        upgraded.clone()
                    } else {
                        p
                    }
                })
                .collect();
            let new_line = packages.declaration(0, 2);
            write(&plugins_path, text.replacen(&line, &new_line, 1).as_bytes())?;
            write(&lock_path, PluginLock::new(plugins).to_yaml().as_bytes())
        }
    }
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    std::fs::write(path, bytes).map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packages_are_valid_distinct_and_deterministic() {
        let a = package_bytes(7, 1);
        assert_eq!(a, package_bytes(7, 1), "same input, same bytes");
        assert_ne!(a, package_bytes(8, 1));
        assert_ne!(a, package_bytes(7, 2));
        let package = Package::read(&a).expect("valid package");
        assert_eq!(package.name(), "synth/p7");
        assert_eq!(package.manifest.version, "1.0.7");
        assert_eq!(package.manifest.runner_version, "3.12");
        assert_eq!(package.manifest.entrypoint, "main");
        assert_eq!(package.manifest.label["zh_Hans"], "合成插件 7");
    }

    #[test]
    fn versions_stay_valid_for_large_indices() {
        assert_eq!(plugin_version(0, 1), "1.0.0");
        assert_eq!(plugin_version(12_345, 2), "2.12.345");
        let big = package_bytes(9_999_999, 1);
        assert!(Package::read(&big).is_ok());
    }

    #[test]
    fn yaml_declares_every_plugin_once() {
        let text = plugins_yaml(25);
        assert_eq!(text.matches("- url: ").count(), 25);
        assert_eq!(text.matches("runtime: {replicas: 2").count(), 2);
        assert!(text.contains(&package_url(24, 1)));
    }

    #[test]
    fn lock_entries_match_the_packages_and_cache() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = Cache::open(&dir.path().join("cache")).expect("cache");
        let repo = generate_repo(&dir.path().join("repo"), 12, &cache).expect("generates");
        assert_eq!(repo.lock.plugins.len(), 12);
        for entry in &repo.lock.plugins {
            let bytes = cache.get(&entry.sha256).expect("readable").expect("cached");
            let package = Package::read(&bytes).expect("valid");
            assert_eq!(entry.name, package.name());
            assert_eq!(entry.plugin_id, package.plugin_id());
        }
        let text = std::fs::read_to_string(repo.lock_file()).expect("lock written");
        assert_eq!(text, repo.lock.to_yaml());
    }

    #[test]
    fn change_one_refuses_a_second_change() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = Cache::open(&dir.path().join("cache")).expect("cache");
        generate_repo(dir.path(), 3, &cache).expect("generates");
        change_one(dir.path(), &cache, SynthChange::Upgrade).expect("first change");
        let err = change_one(dir.path(), &cache, SynthChange::Reconfigure)
            .expect_err("plugin 0 already changed");
        assert!(err.to_string().contains("already changed"), "{err}");
    }
}
