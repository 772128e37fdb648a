//! The pipeline from one revision of a repository to its desired state:
//! source (a [`Snapshot`]) → load → resolve → render.
//!
//! Used by `render`, by the pull-request `diff` (twice: base and head) and, later, by the
//! in-cluster git loop, so all three see exactly the same objects for the same commit.

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::Error;
use crate::load::{self, LoadedPluginSet, LOCK_FILE};
use crate::model::{LockState, PluginLock};
use crate::render::{self, PluginInput, RenderSettings, RenderedPlugin, Templates, TextFormat};
use crate::resolve::{Resolution, Resolver};
use crate::source::Snapshot;

/// Folder of a repository whose files override the built-in templates by name.
pub(crate) const TEMPLATES_DIR: &str = "templates";

/// What one revision declares, resolved and rendered.
#[derive(Debug, Clone)]
pub struct DesiredState {
    /// The revision, for messages (`working tree /x` or `origin/main (1a2b3c4d)`).
    pub source: String,
    /// The commit id, for git revisions.
    pub revision: Option<String>,
    /// The validated plugins.yaml.
    pub set: LoadedPluginSet,
    /// The exact packages.
    pub resolution: Resolution,
    /// The templates in effect.
    pub templates: Templates,
    /// Every plugin, rendered, in declaration order.
    pub rendered: Vec<RenderedPlugin>,
    /// How plugins.lock compares with what was resolved.
    pub lock: LockState,
}

impl DesiredState {
    /// The objects the git loop applies to a cluster: the templates ConfigMap (when the
    /// repository overrides templates), then the Plugins, which name it. Their Jobs,
    /// Deployments and Services are the controller's (it renders them with the same code and
    /// the templates of that ConfigMap, owned by each Plugin), so `apply` never competes with
    /// it for them.
    pub fn cluster_objects(&self) -> Vec<serde_json::Value> {
        self.templates_object()
            .into_iter()
            .chain(
                self.rendered
                    .iter()
                    .flat_map(|p| p.objects.iter().filter(|o| o["kind"] == "Plugin").cloned()),
            )
            .collect()
    }

    /// Every rendered Kubernetes object: the templates ConfigMap, then plugin by plugin.
    pub fn objects(&self) -> Vec<serde_json::Value> {
        self.templates_object()
            .into_iter()
            .chain(self.rendered.iter().flat_map(|p| p.objects.iter().cloned()))
            .collect()
    }

    /// The ConfigMap carrying the repository's template overrides to the controller
    /// ([`Templates::config_map`]); `None` with the built-in templates alone.
    pub fn templates_object(&self) -> Option<serde_json::Value> {
        self.templates.config_map(self.set.spec())
    }
}

/// Reads, validates, resolves and renders the plugins.yaml at `file` in `snapshot`.
/// Returns `Ok(None)` when the revision has no such file (a base before plugsync was adopted).
pub async fn desired_state(
    snapshot: &dyn Snapshot,
    file: &str,
    resolver: &Resolver,
    settings: &RenderSettings,
) -> Result<Option<DesiredState>, Error> {
    match resolved_state(snapshot, file, resolver).await? {
        Some(resolved) => Ok(Some(resolved.render(settings)?)),
        None => Ok(None),
    }
}

/// [`desired_state`] for a command working in `namespace` on a cluster: a set that names no
/// namespace takes it, as kubectl gives a manifest without one the command's namespace.
pub async fn desired_state_in(
    snapshot: &dyn Snapshot,
    file: &str,
    resolver: &Resolver,
    settings: &RenderSettings,
    namespace: &str,
) -> Result<Option<DesiredState>, Error> {
    match resolved_state(snapshot, file, resolver).await? {
        Some(mut resolved) => {
            resolved.in_namespace(namespace);
            Ok(Some(resolved.render(settings)?))
        }
        None => Ok(None),
    }
}

/// One revision read, validated and resolved, not yet rendered: the first half of
/// [`desired_state`], for callers that render it themselves (the benchmark times the
/// render stage alone on it).
#[derive(Debug, Clone)]
pub struct ResolvedState {
    /// The revision, for messages.
    pub source: String,
    /// The commit id, for git revisions.
    pub revision: Option<String>,
    /// The validated plugins.yaml.
    pub set: LoadedPluginSet,
    /// The exact packages.
    pub resolution: Resolution,
    /// The templates in effect.
    pub templates: Templates,
    /// How plugins.lock compares with what was resolved.
    pub lock: LockState,
    /// Digests already built, by build-inputs hash (plugins.lock `images`).
    pub built_images: BTreeMap<String, String>,
}

impl ResolvedState {
    /// Gives a set that names no namespace `namespace` (see [`desired_state_in`]).
    pub fn in_namespace(&mut self, namespace: &str) {
        self.set
            .doc
            .value
            .metadata
            .namespace
            .get_or_insert_with(|| namespace.to_string());
    }

    /// Renders every plugin (see [`render_resolution`]) into a [`DesiredState`].
    pub fn render(self, settings: &RenderSettings) -> Result<DesiredState, Error> {
        let rendered = render_resolution(
            &self.set,
            &self.resolution,
            &self.templates,
            settings,
            &self.built_images,
        )?;
        Ok(DesiredState {
            source: self.source,
            revision: self.revision,
            set: self.set,
            resolution: self.resolution,
            templates: self.templates,
            rendered,
            lock: self.lock,
        })
    }
}

/// What `plugsync render` keeps of one rendered plugin: its output as text, and with
/// `--out` its files; never its objects.
#[derive(Debug, Clone)]
pub struct RenderedText {
    /// `<plugin-id>` (the folder of its files).
    pub resource_name: String,
    /// Its objects as YAML documents ([`render::objects_to_yaml`]): printed for
    /// [`TextFormat::Yaml`], written as `objects.yaml` with files.
    pub yaml: Option<String>,
    /// Its objects as items of the JSON List ([`render::objects_to_json_items`]), for
    /// [`TextFormat::Json`].
    pub json: Option<String>,
    /// With files: the Dockerfile and the build context.
    pub files: Option<(String, render::BuildContext)>,
}

impl ResolvedState {
    /// What [`ResolvedState::render`] renders, each plugin handed to `map` on the thread
    /// that rendered it (see [`render::render_set_map`]), so only what `map` returns is
    /// ever held for the whole set. Results are in declaration order.
    pub fn render_map<T: Send>(
        &self,
        settings: &RenderSettings,
        map: impl Fn(usize, RenderedPlugin) -> T + Sync,
    ) -> Result<Vec<T>, Error> {
        self.render_map_as::<render::AsValue, T>(settings, map)
    }

    /// [`ResolvedState::render_map`], with the objects in form `F`.
    pub(crate) fn render_map_as<F: render::ObjectForm, T: Send>(
        &self,
        settings: &RenderSettings,
        map: impl Fn(usize, RenderedPlugin<F::Object>) -> T + Sync,
    ) -> Result<Vec<T>, Error> {
        let inputs = plugin_inputs(&self.resolution, &self.built_images);
        Ok(render::render_set_map_as::<F, T>(
            self.set.spec(),
            &inputs,
            &self.templates,
            settings,
            map,
        )?)
    }

    /// What `plugsync render` prints (and, with `files`, writes), plugin by plugin: the
    /// same objects as [`ResolvedState::render`], turned into text on the rendering
    /// threads and freed there, after the templates ConfigMap when there is one (an entry
    /// without files). [`emit_text`] prints it.
    pub fn render_text(
        &self,
        settings: &RenderSettings,
        format: TextFormat,
        files: bool,
    ) -> Result<Vec<RenderedText>, Error> {
        let mut rendered = if format == TextFormat::Yaml {
            // Objects straight to YAML, never built as values.
            self.render_map_as::<render::AsYaml, _>(settings, |_, plugin| RenderedText {
                yaml: Some(render::documents_to_yaml(&plugin.objects)),
                json: None,
                files: files.then_some((plugin.dockerfile, plugin.context)),
                resource_name: plugin.resource_name,
            })?
        } else {
            self.render_map(settings, |_, plugin| RenderedText {
                yaml: files.then(|| render::objects_to_yaml(&plugin.objects)),
                json: Some(render::objects_to_json_items(&plugin.objects)),
                files: files.then_some((plugin.dockerfile, plugin.context)),
                resource_name: plugin.resource_name,
            })?
        };
        if let Some(config_map) = self.templates.config_map(self.set.spec()) {
            let objects = [config_map];
            let text = RenderedText {
                resource_name: objects[0]["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                yaml: (format == TextFormat::Yaml).then(|| render::objects_to_yaml(&objects)),
                json: (format == TextFormat::Json).then(|| render::objects_to_json_items(&objects)),
                files: None,
            };
            rendered.insert(0, text);
        }
        Ok(rendered)
    }
}

/// Emits, piece by piece and in order, what `plugsync render -o FORMAT` prints for
/// `rendered` (from [`ResolvedState::render_text`] with the same format): the same bytes
/// as [`render::objects_to_yaml`] on every object, or the JSON List of every object
/// pretty-printed with a newline.
pub fn emit_text<'a>(
    rendered: &'a [RenderedText],
    format: TextFormat,
    mut emit: impl FnMut(&'a str),
) {
    match format {
        TextFormat::Yaml => {
            for text in rendered.iter().filter_map(|p| p.yaml.as_deref()) {
                emit(text);
            }
        }
        TextFormat::Json => {
            render::json_list(rendered.iter().filter_map(|p| p.json.as_deref()), emit)
        }
    }
}

/// Size of plugins.yaml from which it and plugins.lock are loaded on two threads (below,
/// starting a thread costs about what it saves).
const PARALLEL_LOAD_BYTES: usize = 16 * 1024;

/// One revision's plugins.yaml, plugins.lock and templates, read and validated: the part of
/// [`resolved_state`] before the packages, synchronous (repository reads and parsing), so
/// callers on an async runtime run it on a blocking thread.
#[derive(Debug, Clone)]
pub struct LoadedRevision {
    /// The revision, for messages.
    pub source: String,
    /// The commit id, for git revisions.
    pub revision: Option<String>,
    /// The validated plugins.yaml.
    pub set: LoadedPluginSet,
    /// The revision's plugins.lock, if it has one.
    pub old_lock: Option<PluginLock>,
    /// The templates in effect.
    pub templates: Templates,
    /// The folder holding plugins.yaml (`path:` entries are relative to it).
    pub dir: String,
}

/// Reads and validates the plugins.yaml at `file` in `snapshot`, its lock and templates.
/// Synchronous: repository reads and parsing. Returns `Ok(None)` when the revision has no
/// such file.
pub fn load_revision(snapshot: &dyn Snapshot, file: &str) -> Result<Option<LoadedRevision>, Error> {
    let snap = |e: crate::source::SnapshotError| Error::snapshot(snapshot.describe(), e);
    let Some(text) = snapshot.read(file).map_err(snap)? else {
        return Ok(None);
    };
    let display = snapshot.display_path(file);
    let text = String::from_utf8(text)
        .map_err(|_| Error::Usage(format!("{}: not UTF-8 text", display.display())))?;
    let dir = parent_dir(file);
    let lock_file = join(&dir, LOCK_FILE);
    let load_old_lock = || -> Result<Option<PluginLock>, Error> {
        match snapshot.read(&lock_file).map_err(snap)? {
            Some(bytes) => {
                let text = String::from_utf8(bytes)
                    .map_err(|_| Error::Usage(format!("{lock_file}: not UTF-8 text")))?;
                Ok(Some(
                    load::load_lock(&snapshot.display_path(&lock_file), &text)?.value,
                ))
            }
            None => Ok(None),
        }
    };
    // plugins.yaml and plugins.lock are independent until resolve: large ones load on two
    // cores. plugins.yaml's errors still come first, as when they loaded one after the other.
    let (set, old) = if text.len() >= PARALLEL_LOAD_BYTES {
        let (lock, set) = rayon::join(load_old_lock, || load::load_plugin_set(&display, &text));
        (set, lock)
    } else {
        match load::load_plugin_set(&display, &text) {
            Ok(set) => (Ok(set), load_old_lock()),
            Err(e) => (Err(e), Ok(None)),
        }
    };
    let (set, old_lock) = (set?, old?);
    let templates = read_templates(snapshot, &join(&dir, TEMPLATES_DIR))?;
    Ok(Some(LoadedRevision {
        source: snapshot.describe(),
        revision: snapshot.revision(),
        set,
        old_lock,
        templates,
        dir,
    }))
}

impl LoadedRevision {
    /// Resolves the declared plugins against the lock. Async only for the package downloads;
    /// packages already in the cache are read and checked by the resolver without waiting.
    /// `snapshot` is the one [`load_revision`] read (`path:` entries come from it).
    pub async fn resolve(
        self,
        snapshot: &dyn Snapshot,
        resolver: &Resolver,
    ) -> Result<ResolvedState, Error> {
        let expanded = crate::expand::expand_from(
            &self.set,
            snapshot,
            &self.dir,
            self.old_lock.as_ref(),
            resolver.cache().root(),
            false,
            &resolver.fetchers().settings().registry_logins,
        )
        .await?;
        // `inventory:` and `group:` entries become the package artifacts they name.
        let (set, pin) = match expanded {
            Some(e) => (e.set, Some(e.pin)),
            None => (self.set, None),
        };
        let mut resolution = resolver
            .resolve(
                &SubdirSnapshot {
                    inner: snapshot,
                    dir: &self.dir,
                },
                &set,
                self.old_lock.as_ref(),
                &[],
            )
            .await?;
        resolution.lock.inventory = pin;
        let lock = match &self.old_lock {
            None => LockState::Missing,
            Some(_) if resolution.changes.is_empty() => LockState::UpToDate,
            Some(_) => LockState::Stale(resolution.changes.clone()),
        };
        let built_images = self
            .old_lock
            .as_ref()
            .map(PluginLock::built_images)
            .unwrap_or_default();
        Ok(ResolvedState {
            source: self.source,
            revision: self.revision,
            set,
            resolution,
            templates: self.templates,
            lock,
            built_images,
        })
    }
}

/// Reads, validates and resolves the plugins.yaml at `file` in `snapshot`, without
/// rendering. Returns `Ok(None)` when the revision has no such file.
pub async fn resolved_state(
    snapshot: &dyn Snapshot,
    file: &str,
    resolver: &Resolver,
) -> Result<Option<ResolvedState>, Error> {
    match load_revision(snapshot, file)? {
        Some(loaded) => Ok(Some(loaded.resolve(snapshot, resolver).await?)),
        None => Ok(None),
    }
}

/// [`desired_state_in`] (or, without a namespace, [`desired_state`]) for a thread that may
/// block: call it inside `tokio::task::spawn_blocking`, never on an async worker. Loading
/// and rendering run on this thread; the resolution is driven here by `runtime.block_on`,
/// its downloads asynchronous on `runtime`'s I/O driver, its cache reads on this thread.
pub fn desired_state_blocking(
    runtime: &tokio::runtime::Handle,
    snapshot: &dyn Snapshot,
    file: &str,
    resolver: &Resolver,
    settings: &RenderSettings,
    namespace: Option<&str>,
) -> Result<Option<DesiredState>, Error> {
    let Some(loaded) = load_revision(snapshot, file)? else {
        return Ok(None);
    };
    let mut resolved = runtime.block_on(loaded.resolve(snapshot, resolver))?;
    if let Some(namespace) = namespace {
        resolved.in_namespace(namespace);
    }
    Ok(Some(resolved.render(settings)?))
}

/// [`resolved_state`] for a thread that may block (see [`desired_state_blocking`]).
pub fn resolved_state_blocking(
    runtime: &tokio::runtime::Handle,
    snapshot: &dyn Snapshot,
    file: &str,
    resolver: &Resolver,
) -> Result<Option<ResolvedState>, Error> {
    match load_revision(snapshot, file)? {
        Some(loaded) => Ok(Some(runtime.block_on(loaded.resolve(snapshot, resolver))?)),
        None => Ok(None),
    }
}

/// Each resolved plugin as render's input: the first attempt, running the digest recorded
/// in `built_images` where the build inputs match. Public so tests and benchmarks render
/// exactly what the commands render.
pub fn plugin_inputs<'a>(
    resolution: &'a Resolution,
    built_images: &'a BTreeMap<String, String>,
) -> Vec<PluginInput<'a>> {
    resolution
        .plugins
        .iter()
        .map(|p| PluginInput {
            locked: &p.locked,
            manifest: &p.package.manifest,
            package: p.bytes.as_slice(),
            runtime: &p.declared.runtime,
            attempt: 1,
            image_digest: None,
            built_images: Some(built_images),
        })
        .collect()
}

/// Renders a resolved set: the first attempt of every plugin, running the digest recorded
/// in `built_images` (plugins.lock `images`, by build-inputs hash) where the inputs match.
pub(crate) fn render_resolution(
    set: &LoadedPluginSet,
    resolution: &Resolution,
    templates: &Templates,
    settings: &RenderSettings,
    built_images: &BTreeMap<String, String>,
) -> Result<Vec<RenderedPlugin>, Error> {
    let inputs = plugin_inputs(resolution, built_images);
    Ok(render::render_set(
        set.spec(),
        &inputs,
        templates,
        settings,
    )?)
}

fn read_templates(snapshot: &dyn Snapshot, dir: &str) -> Result<Templates, Error> {
    let snap = |e: crate::source::SnapshotError| Error::snapshot(snapshot.describe(), e);
    let mut overrides = Vec::new();
    for name in snapshot.list(dir).map_err(snap)? {
        let path = join(dir, &name);
        let Some(bytes) = snapshot.read(&path).map_err(snap)? else {
            continue;
        };
        let text = String::from_utf8(bytes)
            .map_err(|_| Error::Usage(format!("{path}: not UTF-8 text")))?;
        overrides.push((name, text));
    }
    Ok(Templates::with_overrides(overrides)?)
}

/// The folder of a repository path (`""` at the top), for files next to plugins.yaml.
pub fn parent_dir(file: &str) -> String {
    match file.rfind('/') {
        Some(i) => file[..i].to_string(),
        None => String::new(),
    }
}

/// `dir/name`, or `name` at the top of the repository.
pub fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// A view of a snapshot's subfolder, so `path:` entries resolve relative to plugins.yaml.
struct SubdirSnapshot<'a> {
    inner: &'a dyn Snapshot,
    dir: &'a str,
}

impl Snapshot for SubdirSnapshot<'_> {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn revision(&self) -> Option<String> {
        self.inner.revision()
    }
    fn read(&self, rel: &str) -> Result<Option<Vec<u8>>, crate::source::SnapshotError> {
        self.inner.read(&join(self.dir, rel))
    }
    fn kind(&self, rel: &str) -> Result<crate::source::EntryKind, crate::source::SnapshotError> {
        self.inner.kind(&join(self.dir, rel))
    }
    fn list(&self, rel_dir: &str) -> Result<Vec<String>, crate::source::SnapshotError> {
        self.inner.list(&join(self.dir, rel_dir))
    }
    fn materialize(&self, rel_dir: &str, dest: &Path) -> Result<(), crate::source::SnapshotError> {
        self.inner.materialize(&join(self.dir, rel_dir), dest)
    }
    fn blob_id(&self, rel: &str) -> Result<Option<git2::Oid>, crate::source::SnapshotError> {
        self.inner.blob_id(&join(self.dir, rel))
    }
    fn tree_id(&self, rel: &str) -> Result<Option<git2::Oid>, crate::source::SnapshotError> {
        self.inner.tree_id(&join(self.dir, rel))
    }
    fn on_disk(
        &self,
        rel_dir: &str,
    ) -> Result<Option<std::path::PathBuf>, crate::source::SnapshotError> {
        self.inner.on_disk(&join(self.dir, rel_dir))
    }
    fn display_path(&self, rel: &str) -> std::path::PathBuf {
        self.inner.display_path(&join(self.dir, rel))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resolve::cache::Cache;
    use crate::source::WorkTree;

    /// A plugins.yaml large enough to load beside its lock on two threads still reports
    /// its own errors before the lock's, and loads what the sequential path loads.
    #[tokio::test]
    async fn large_sets_load_with_their_lock_and_report_plugins_yaml_first() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let cache = Cache::open(&tmp.path().join("cache")).expect("cache");
        let repo = crate::synth::generate_repo(&tmp.path().join("repo"), 300, &cache)
            .expect("synthetic repository");
        let plugins = std::fs::read_to_string(repo.plugins_file()).expect("plugins.yaml");
        assert!(
            plugins.len() >= PARALLEL_LOAD_BYTES,
            "{} bytes",
            plugins.len()
        );
        let resolver = crate::resolve::tests::resolver(&cache);
        let snapshot = WorkTree::new(&repo.dir).expect("worktree");
        let state = resolved_state(&snapshot, "plugins.yaml", &resolver)
            .await
            .expect("loads")
            .expect("present");
        assert_eq!(state.lock, LockState::UpToDate);
        assert_eq!(state.resolution.lock, repo.lock);

        // Both files broken: plugins.yaml's error, as when they load one after the other.
        let lock = std::fs::read_to_string(repo.lock_file()).expect("plugins.lock");
        std::fs::write(repo.lock_file(), lock.replacen("plugins:", "plugns:", 1))
            .expect("write lock");
        std::fs::write(
            repo.plugins_file(),
            plugins.replacen("spec:", "spec:\n  bogus: 1", 1),
        )
        .expect("write plugins.yaml");
        let err = resolved_state(&snapshot, "plugins.yaml", &resolver)
            .await
            .expect_err("invalid");
        let message = err.to_string();
        assert!(
            message.contains("plugins.yaml") && message.contains("bogus"),
            "{message}"
        );

        // plugins.yaml fixed: now the lock's error.
        std::fs::write(repo.plugins_file(), &plugins).expect("write plugins.yaml");
        let err = resolved_state(&snapshot, "plugins.yaml", &resolver)
            .await
            .expect_err("invalid lock");
        let message = err.to_string();
        assert!(
            message.contains("plugins.lock") && message.contains("plugns"),
            "{message}"
        );
    }
}
