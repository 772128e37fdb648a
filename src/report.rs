//! The pull-request diff report: what a change to plugins.yaml does, per plugin and per
//! Kubernetes object. A pure function of two rendered revisions, formatted as text (for
//! terminals), markdown (for PR comments) or JSON (for tools).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde::Serialize;
use serde_json::{json, Value};

use crate::pipeline::{DesiredState, LockState};
use crate::plan::{self, Action, Change, Compare, Plan, PlanError};
use crate::render::{RenderedPlugin, LABEL_PLUGIN_ID};

/// How one plugin changes between the two revisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PluginChangeKind {
    /// Declared at head only.
    Added,
    /// Declared at both, with a different version.
    Upgraded,
    /// Declared at base only: its objects are pruned.
    Removed,
    /// Same version, different objects (package bytes, runtime settings, templates, …).
    Reconfigured,
    /// No difference.
    Unchanged,
}

/// One plugin's line in the summary.
#[derive(Debug, Clone)]
pub struct PluginChange {
    /// `author/name`.
    pub name: String,
    /// What happens to it.
    pub kind: PluginChangeKind,
    /// Version at base.
    pub from: Option<String>,
    /// Version at head.
    pub to: Option<String>,
    /// The object changes that belong to it (never `Unchanged` ones).
    pub objects: Vec<Change>,
}

/// Who a plugin of one revision is: what [`DiffReport::from_plan`] needs of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginIdentity {
    /// `author/name`.
    pub name: String,
    /// Version.
    pub version: String,
    /// The plugin id (objects carry it as a label).
    pub plugin_id: String,
}

/// The whole report.
#[derive(Debug, Clone)]
pub struct DiffReport {
    /// Base revision, as described by its snapshot.
    pub base: String,
    /// Head revision.
    pub head: String,
    /// Per-plugin summary, by name.
    pub plugins: Vec<PluginChange>,
    /// Every object change, in apply order; unchanged objects are listed (and counted)
    /// without their objects (see [`plan::plan_refs_sparse`]).
    pub plan: Plan,
    /// State of the head's plugins.lock.
    pub head_lock: LockState,
    /// Lines of context in object diffs.
    pub context_lines: usize,
}

impl DiffReport {
    /// Compares `head` with `base` (`None`: a base without plugins.yaml, so all is new).
    pub fn build(
        base_label: &str,
        base: Option<&DesiredState>,
        head: &DesiredState,
        context_lines: usize,
    ) -> Result<DiffReport, PlanError> {
        // Borrowed, not collected with `DesiredState::objects`: copying every object of
        // both sides cost as much time and memory as planning them.
        let plan = plan::plan_refs_sparse(
            head.rendered.iter().flat_map(|p| &p.objects),
            base.into_iter()
                .flat_map(|b| b.rendered.iter().flat_map(|p| &p.objects)),
            Compare::Exact,
        )?;
        let side = |rendered: &'_ [RenderedPlugin]| -> Vec<PluginIdentity> {
            rendered
                .iter()
                .map(|p| PluginIdentity {
                    name: p.name.clone(),
                    version: p.version.clone(),
                    plugin_id: p.plugin_id.clone(),
                })
                .collect()
        };
        Ok(DiffReport::from_plan(
            base_label,
            base.map(|b| (b.source.as_str(), side(&b.rendered))),
            (head.source.as_str(), side(&head.rendered)),
            head.lock.clone(),
            plan,
            context_lines,
        ))
    }

    /// The report of a plan already made between two revisions, each given by its source
    /// (as its snapshot describes it) and its plugins (`None`: a base without
    /// plugins.yaml). Objects are assigned to plugins by their plugin-id label.
    pub fn from_plan(
        base_label: &str,
        base: Option<(&str, Vec<PluginIdentity>)>,
        head: (&str, Vec<PluginIdentity>),
        head_lock: LockState,
        plan: Plan,
        context_lines: usize,
    ) -> DiffReport {
        let empty = Vec::new();
        let base_plugins: &[PluginIdentity] = base.as_ref().map_or(&empty, |(_, p)| p);
        let head_plugins: &[PluginIdentity] = &head.1;
        let mut owner: BTreeMap<&str, &str> = BTreeMap::new();
        for p in base_plugins.iter().chain(head_plugins) {
            owner.insert(&p.plugin_id, &p.name);
        }
        let mut by_plugin: BTreeMap<String, Vec<Change>> = BTreeMap::new();
        for change in plan.changed() {
            let object = change.desired.as_ref().or(change.live.as_ref());
            let id = object
                .and_then(|o| o.pointer("/metadata/labels"))
                .and_then(|l| l.get(LABEL_PLUGIN_ID))
                .and_then(Value::as_str)
                .unwrap_or_default();
            let name = owner.get(id).copied().unwrap_or("(other objects)");
            by_plugin
                .entry(name.to_string())
                .or_default()
                .push(change.clone());
        }

        let base_versions: BTreeMap<&str, &str> = base_plugins
            .iter()
            .map(|p| (p.name.as_str(), p.version.as_str()))
            .collect();
        let head_versions: BTreeMap<&str, &str> = head_plugins
            .iter()
            .map(|p| (p.name.as_str(), p.version.as_str()))
            .collect();
        let names: BTreeSet<&str> = base_versions
            .keys()
            .chain(head_versions.keys())
            .copied()
            .collect();
        let mut plugins: Vec<PluginChange> = names
            .into_iter()
            .map(|name| {
                let from = base_versions.get(name).map(|v| v.to_string());
                let to = head_versions.get(name).map(|v| v.to_string());
                let objects = by_plugin.remove(name).unwrap_or_default();
                let kind = match (&from, &to) {
                    (None, _) => PluginChangeKind::Added,
                    (_, None) => PluginChangeKind::Removed,
                    (Some(f), Some(t)) if f != t => PluginChangeKind::Upgraded,
                    _ if objects.is_empty() => PluginChangeKind::Unchanged,
                    _ => PluginChangeKind::Reconfigured,
                };
                PluginChange {
                    name: name.to_string(),
                    kind,
                    from,
                    to,
                    objects,
                }
            })
            .collect();
        // Objects that belong to no plugin (a hand-written template producing extras).
        for (name, objects) in by_plugin {
            plugins.push(PluginChange {
                name,
                kind: PluginChangeKind::Reconfigured,
                from: None,
                to: None,
                objects,
            });
        }
        DiffReport {
            base: match &base {
                Some((source, _)) => source.to_string(),
                None => format!("{base_label} (no plugins.yaml)"),
            },
            head: head.0.to_string(),
            plugins,
            plan,
            head_lock,
            context_lines,
        }
    }

    /// Whether anything changes: the exit code of `plugsync diff` (1 if so).
    pub fn has_changes(&self) -> bool {
        !self.plan.is_empty_of_changes()
    }

    fn count(&self, kind: PluginChangeKind) -> usize {
        self.plugins.iter().filter(|p| p.kind == kind).count()
    }

    /// `1 added, 1 upgraded, 0 removed, 2 reconfigured`.
    pub fn summary_line(&self) -> String {
        format!(
            "{} added, {} upgraded, {} removed, {} reconfigured, {} unchanged",
            self.count(PluginChangeKind::Added),
            self.count(PluginChangeKind::Upgraded),
            self.count(PluginChangeKind::Removed),
            self.count(PluginChangeKind::Reconfigured),
            self.count(PluginChangeKind::Unchanged),
        )
    }

    fn lock_warning(&self) -> Option<String> {
        match &self.head_lock {
            LockState::UpToDate => None,
            LockState::Missing => Some("plugins.lock is missing at head; packages were resolved without pins. Run `plugsync lock` and commit plugins.lock.".into()),
            LockState::Stale(changes) => Some(format!(
                "plugins.lock is out of date at head ({}); run `plugsync lock` and commit it.",
                changes.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
            )),
        }
    }

    /// Plain text for terminals and CI logs.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "plugsync diff: {} -> {}", self.base, self.head);
        if let Some(w) = self.lock_warning() {
            let _ = writeln!(out, "warning: {w}");
        }
        let _ = writeln!(out, "plugins: {}", self.summary_line());
        for p in self
            .plugins
            .iter()
            .filter(|p| p.kind != PluginChangeKind::Unchanged)
        {
            let _ = writeln!(out, "  {} {:<40} {}", marker(p.kind), p.name, describe(p));
        }
        let _ = writeln!(out, "objects: {}", self.plan.counts());
        for change in self.plan.changed() {
            let _ = writeln!(
                out,
                "\n{} {}: {}",
                action_marker(change.action),
                change.key,
                change.reason
            );
            out.push_str(&plan::render_diff(change, self.context_lines));
        }
        out
    }

    /// Markdown that fits a pull-request comment: a summary table, then one collapsible
    /// section per changed plugin with its object diffs.
    pub fn to_markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "### plugsync diff\n");
        let _ = writeln!(out, "`{}` → `{}`\n", self.base, self.head);
        if let Some(w) = self.lock_warning() {
            let _ = writeln!(out, "> [!WARNING]\n> {w}\n");
        }
        if !self.has_changes() {
            let _ = writeln!(
                out,
                "No changes: {} plugins, all unchanged.",
                self.plugins.len()
            );
            return out;
        }
        let _ = writeln!(
            out,
            "**Plugins:** {}  \n**Objects:** {}\n",
            self.summary_line(),
            self.plan.counts()
        );
        let _ = writeln!(out, "| | Plugin | Change | Version | Objects |");
        let _ = writeln!(out, "|---|---|---|---|---|");
        for p in self
            .plugins
            .iter()
            .filter(|p| p.kind != PluginChangeKind::Unchanged)
        {
            let _ = writeln!(
                out,
                "| {} | `{}` | {:?} | {} | {} |",
                marker(p.kind),
                p.name,
                p.kind,
                versions(p),
                object_counts(&p.objects)
            );
        }
        for p in self.plugins.iter().filter(|p| !p.objects.is_empty()) {
            let _ = writeln!(
                out,
                "\n<details><summary><code>{}</code>: {}</summary>\n",
                p.name,
                describe(p)
            );
            for change in &p.objects {
                let _ = writeln!(
                    out,
                    "**{} {}**: {}\n",
                    action_marker(change.action),
                    change.key,
                    change.reason
                );
                let _ = writeln!(
                    out,
                    "```diff\n{}```\n",
                    plan::render_diff(change, self.context_lines)
                );
            }
            let _ = writeln!(out, "</details>");
        }
        out
    }

    /// Machine-readable form.
    pub fn to_json(&self) -> Value {
        json!({
            "base": self.base,
            "head": self.head,
            "changed": self.has_changes(),
            "lock": match &self.head_lock {
                LockState::UpToDate => json!("up-to-date"),
                LockState::Missing => json!("missing"),
                LockState::Stale(c) => json!({"stale": c.iter().map(ToString::to_string).collect::<Vec<_>>()}),
            },
            "plugins": self.plugins.iter().map(|p| json!({
                "name": p.name,
                "change": p.kind,
                "from": p.from,
                "to": p.to,
                "objects": p.objects.iter().map(|c| c.key.to_string()).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "objects": self.plan.changed().map(|c| change_json(c, self.context_lines)).collect::<Vec<_>>(),
        })
    }
}

/// One object change as JSON, the same in the PR diff and the cluster diff, so tools read
/// both alike. The diff text masks Secret values, as [`plan::render_diff`] does.
pub fn change_json(c: &Change, context_lines: usize) -> Value {
    json!({
        "apiVersion": c.key.api_version,
        "kind": c.key.kind,
        "namespace": c.key.namespace,
        "name": c.key.name,
        "action": c.action.to_string(),
        "reason": c.reason,
        "changedPaths": c.changed_paths,
        "diff": plan::render_diff(c, context_lines),
    })
}

fn marker(kind: PluginChangeKind) -> &'static str {
    match kind {
        PluginChangeKind::Added => "+",
        PluginChangeKind::Upgraded => "~",
        PluginChangeKind::Removed => "-",
        PluginChangeKind::Reconfigured => "*",
        PluginChangeKind::Unchanged => "=",
    }
}

fn action_marker(action: Action) -> &'static str {
    match action {
        Action::Create => "+",
        Action::Update => "~",
        Action::Delete => "-",
        Action::Unchanged => "=",
    }
}

fn versions(p: &PluginChange) -> String {
    match (&p.from, &p.to) {
        (Some(f), Some(t)) if f != t => format!("{f} → {t}"),
        (_, Some(t)) => t.clone(),
        (Some(f), None) => f.clone(),
        (None, None) => String::new(),
    }
}

fn object_counts(objects: &[Change]) -> String {
    let n = |a: Action| objects.iter().filter(|c| c.action == a).count();
    format!(
        "+{} ~{} -{}",
        n(Action::Create),
        n(Action::Update),
        n(Action::Delete)
    )
}

fn describe(p: &PluginChange) -> String {
    match p.kind {
        PluginChangeKind::Added => format!("added ({})", versions(p)),
        PluginChangeKind::Removed => format!("removed ({}); its objects are pruned", versions(p)),
        PluginChangeKind::Upgraded => format!(
            "upgraded {}; the old version is removed once the new one runs",
            versions(p)
        ),
        PluginChangeKind::Unchanged => "unchanged".into(),
        PluginChangeKind::Reconfigured => {
            let paths: BTreeSet<String> = p
                .objects
                .iter()
                .map(|c| format!("{} {}", c.key.kind, c.action))
                .collect();
            format!(
                "reconfigured: {}",
                paths.into_iter().collect::<Vec<_>>().join(", ")
            )
        }
    }
}
