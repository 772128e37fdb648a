//! The pipeline from one revision of a repository to its desired state:
//! source (a [`Snapshot`]) → load → resolve → render.
//!
//! Used by `render`, by the pull-request `diff` (twice: base and head) and, later, by the
//! in-cluster git loop, so all three see exactly the same objects for the same commit.

use std::path::Path;

use crate::error::Error;
use crate::load::{self, LoadedPluginSet, LOCK_FILE};
use crate::model::PluginLock;
use crate::render::{self, PluginInput, RenderSettings, RenderedPlugin, Templates};
use crate::resolve::{LockChange, Resolution, Resolver};
use crate::source::Snapshot;

/// Folder of a repository whose files override the built-in templates by name.
pub const TEMPLATES_DIR: &str = "templates";

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

/// Whether the revision's plugins.lock pins what its plugins.yaml declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockState {
    /// It does.
    UpToDate,
    /// There is no plugins.lock; packages were resolved without pins.
    Missing,
    /// It does not: these entries would change.
    Stale(Vec<LockChange>),
}

impl DesiredState {
    /// The objects the git loop applies to a cluster: the Plugins. Their Jobs, Deployments and
    /// Services are the controller's (it renders them with the same code, owned by each
    /// Plugin), so `apply` never competes with it for them.
    pub fn cluster_objects(&self) -> Vec<serde_json::Value> {
        self.rendered
            .iter()
            .flat_map(|p| p.objects.iter().filter(|o| o["kind"] == "Plugin").cloned())
            .collect()
    }

    /// Every rendered Kubernetes object, plugin by plugin.
    pub fn objects(&self) -> Vec<serde_json::Value> {
        self.rendered
            .iter()
            .flat_map(|p| p.objects.iter().cloned())
            .collect()
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
    let snap =
        |e: crate::source::SnapshotError| Error::Usage(format!("{}: {e}", snapshot.describe()));
    let Some(text) = snapshot.read(file).map_err(snap)? else {
        return Ok(None);
    };
    let display = snapshot.display_path(file);
    let text = String::from_utf8(text)
        .map_err(|_| Error::Usage(format!("{}: not UTF-8 text", display.display())))?;
    let set = load::load_plugin_set(&display, &text)?;

    let dir = parent_dir(file);
    let lock_file = join(&dir, LOCK_FILE);
    let old: Option<PluginLock> = match snapshot.read(&lock_file).map_err(snap)? {
        Some(bytes) => {
            let text = String::from_utf8(bytes)
                .map_err(|_| Error::Usage(format!("{lock_file}: not UTF-8 text")))?;
            Some(load::load_lock(&snapshot.display_path(&lock_file), &text)?.value)
        }
        None => None,
    };

    let templates = read_templates(snapshot, &join(&dir, TEMPLATES_DIR))?;
    let resolution = resolver
        .resolve(
            &SubdirSnapshot {
                inner: snapshot,
                dir: &dir,
            },
            &set,
            old.as_ref(),
            &[],
        )
        .await?;
    let lock = match &old {
        None => LockState::Missing,
        Some(_) if resolution.changes.is_empty() => LockState::UpToDate,
        Some(_) => LockState::Stale(resolution.changes.clone()),
    };
    let built_images = old
        .as_ref()
        .map(PluginLock::built_images)
        .unwrap_or_default();
    let rendered = render_resolution(&set, &resolution, &templates, settings, &built_images)?;
    Ok(Some(DesiredState {
        source: snapshot.describe(),
        revision: snapshot.revision(),
        set,
        resolution,
        templates,
        rendered,
        lock,
    }))
}

/// Renders a resolved set: the first attempt of every plugin, running the digest recorded
/// in `built_images` (plugins.lock `images`, by build-inputs hash) where the inputs match.
pub fn render_resolution(
    set: &LoadedPluginSet,
    resolution: &Resolution,
    templates: &Templates,
    settings: &RenderSettings,
    built_images: &std::collections::BTreeMap<String, String>,
) -> Result<Vec<RenderedPlugin>, Error> {
    let inputs: Vec<PluginInput<'_>> = resolution
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
        .collect();
    Ok(render::render_set(
        set.spec(),
        &inputs,
        templates,
        settings,
    )?)
}

fn read_templates(snapshot: &dyn Snapshot, dir: &str) -> Result<Templates, Error> {
    let snap =
        |e: crate::source::SnapshotError| Error::Usage(format!("{}: {e}", snapshot.describe()));
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

fn parent_dir(file: &str) -> String {
    match file.rfind('/') {
        Some(i) => file[..i].to_string(),
        None => String::new(),
    }
}

fn join(dir: &str, name: &str) -> String {
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
    fn display_path(&self, rel: &str) -> std::path::PathBuf {
        self.inner.display_path(&join(self.dir, rel))
    }
}
