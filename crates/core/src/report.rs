//! The diff report: what a change does, per plugin and per Kubernetes object. A presenter: a
//! plan already made between two sides (two revisions for a pull request, planned by
//! [`crate::diff`]; the cluster and the working tree for `diff --cluster`, by the applier's
//! dry run) and who the plugins of each side are, formatted as text (terminals, with colour),
//! markdown (PR comments, kept under GitHub's comment limit) or JSON (tools, versioned).
//!
//! An upgrade changes a plugin's id (it derives from `author/name:version@checksum`) and so
//! the names of all its objects: the plan creates the new objects and deletes the old ones.
//! The report pairs them ([`Replacement`]) so a reviewer reads the old version's object
//! against the new one's, a few changed lines, rather than every line removed and added.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;

use serde::Serialize;
use serde_json::{json, Value};

use crate::model::{LockChange, LockState};
use crate::plan::{self, Action, Change, Compare, ObjectKey, Plan};
use crate::render::LABEL_PLUGIN_ID;

/// The version of the JSON report's layout (`schemaVersion`), raised on any change a tool
/// reading it would notice. 1: the first versioned layout (structured lock entries,
/// `summary`, `replaces`/`replacedBy`, `cascade`).
pub(crate) const JSON_SCHEMA_VERSION: u32 = 1;

/// GitHub's limit on the body of a pull-request comment, in characters; the markdown report
/// stays under it by default (measured in bytes, which are never fewer than characters).
pub const GITHUB_COMMENT_LIMIT: usize = 65_536;

/// Room kept at the end of a truncated markdown report for the note saying what was left
/// out and where the rest is (an eighth of the limit, for limits under 16,000).
const TRUNCATION_NOTE_ROOM: usize = 2_000;

fn note_room(limit: usize) -> usize {
    TRUNCATION_NOTE_ROOM.min(limit / 8)
}

/// The name the report gives objects that carry no known plugin id.
const OTHER_OBJECTS: &str = "(other objects)";

/// The name the report gives the PluginSet object (a cluster diff applies it: it holds the
/// set's settings and inventory).
const THE_PLUGINSET: &str = "(the PluginSet)";

/// How one plugin changes between the two sides.
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
    /// The object changes that belong to it (never `Unchanged` ones), as the plan has them.
    pub objects: Vec<Change>,
    /// For an upgrade: the new version's objects paired with the old version's objects they
    /// replace, which is how the report shows them.
    pub replacements: Vec<Replacement>,
}

/// An object of a plugin's new version shown against the object of its old version it
/// replaces (the plan itself creates the one and deletes the other: their names differ).
#[derive(Debug, Clone, PartialEq)]
pub struct Replacement {
    /// The old version's object.
    pub base: ObjectKey,
    /// The comparison: `key` and `desired` are the new object's, `live` the old object;
    /// `action` is `Update` (their names differ, at least), `changed_paths` and `reason` say
    /// what differs.
    pub change: Change,
    /// The old object is kept for now rather than deleted (a cluster diff, while the new
    /// version is not Running yet).
    pub held: bool,
}

/// Who a plugin of one side is: what [`DiffReport::from_plan`] needs of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginIdentity {
    /// `author/name`.
    pub name: String,
    /// Version.
    pub version: String,
    /// The plugin id (objects carry it as a label).
    pub plugin_id: String,
}

/// What the two sides of a report are, which names the diff headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sides {
    /// Two git revisions: `base` and `head`.
    Revisions,
    /// The live cluster and the working tree: `live` and `desired`.
    Cluster,
}

impl Sides {
    /// The words for the old and the new side.
    pub fn names(self) -> (&'static str, &'static str) {
        match self {
            Sides::Revisions => ("base", "head"),
            Sides::Cluster => ("live", "desired"),
        }
    }
}

/// The whole report.
#[derive(Debug, Clone)]
pub struct DiffReport {
    /// Base revision, as described by its snapshot (or the cluster, for `diff --cluster`).
    pub base: String,
    /// Head revision (or the working tree).
    pub head: String,
    /// The declared set's file, relative to the repository root, for the header; `None`
    /// leaves it out.
    pub file: Option<String>,
    /// What the two sides are.
    pub sides: Sides,
    /// Per-plugin summary, by name.
    pub plugins: Vec<PluginChange>,
    /// Every object change, in apply order; unchanged objects are listed (and counted)
    /// without their objects (see [`plan::plan_refs_sparse`]).
    pub plan: Plan,
    /// State of the head's plugins.lock.
    pub head_lock: LockState,
    /// Lines of context in object diffs.
    pub context_lines: usize,
    /// For deletions: the objects Kubernetes' garbage collector deletes with them (their
    /// owner references lead to the deleted object), children and grandchildren alike.
    pub cascade: BTreeMap<ObjectKey, Vec<ObjectKey>>,
    /// Objects no longer desired but kept for now (old versions of plugins whose new version
    /// is not Running yet).
    pub held: Vec<ObjectKey>,
    /// Things the reader should know that are no object change (incomplete reads, …).
    pub notes: Vec<String>,
}

/// Options of the text form.
#[derive(Debug, Clone, Copy, Default)]
pub struct TextOptions {
    /// The summary only: per plugin, its objects with their added and removed line counts,
    /// and no diffs (as `git diff --stat`).
    pub stat: bool,
    /// ANSI colours (for a terminal).
    pub color: bool,
}

/// Options of the markdown form.
#[derive(Debug, Clone)]
pub struct MarkdownOptions {
    /// The summary table only, no object diffs.
    pub stat: bool,
    /// The largest output, in bytes: plugins' diffs that do not fit are left out (whole
    /// plugins at a time), and so, if it comes to that, rows of the summary table; the
    /// summary counts always stay. `usize::MAX`: no limit.
    pub limit: usize,
    /// Where the full diff can be read (a URL, or words), named when something was left out.
    pub full_diff_at: Option<String>,
}

impl Default for MarkdownOptions {
    fn default() -> Self {
        MarkdownOptions {
            stat: false,
            limit: GITHUB_COMMENT_LIMIT,
            full_diff_at: None,
        }
    }
}

/// What a `diff --cluster` report is made of: the applier's dry run and a read of the
/// cluster. See [`DiffReport::for_cluster`].
#[derive(Debug, Clone, Default)]
pub struct ClusterDiffInputs {
    /// The live side, e.g. `cluster (context kind), namespace dify`.
    pub live_label: String,
    /// The desired side, e.g. `working tree`.
    pub desired_label: String,
    /// The plugins the working tree declares.
    pub desired: Vec<PluginIdentity>,
    /// The set's live objects (Plugins and their children), as read from the cluster: who
    /// runs now, and what a deletion cascades to.
    pub live_objects: Vec<Value>,
    /// The changes the dry run reported (live against what the server would store).
    pub changes: Vec<Change>,
    /// Objects the dry run found unchanged.
    pub unchanged: Vec<ObjectKey>,
    /// Objects kept although no longer desired.
    pub held: Vec<ObjectKey>,
    /// Notes for the reader (a kind that could not be read, …).
    pub notes: Vec<String>,
    /// Lines of context in object diffs.
    pub context_lines: usize,
}

impl DiffReport {
    /// The report of a plan already made between two revisions, each given by its source
    /// (as its snapshot describes it) and its plugins (`None`: a base without
    /// plugins.yaml). Objects are assigned to plugins by their plugin-id label.
    pub(crate) fn from_plan(
        base_label: &str,
        base: Option<(&str, Vec<PluginIdentity>)>,
        head: (&str, Vec<PluginIdentity>),
        head_lock: LockState,
        plan: Plan,
        context_lines: usize,
    ) -> DiffReport {
        let empty = Vec::new();
        let base_plugins: &[PluginIdentity] = base.as_ref().map_or(&empty, |(_, p)| p);
        let plugins = summarize(base_plugins, &head.1, &plan, &BTreeMap::new());
        DiffReport {
            base: match &base {
                Some((source, _)) => source.to_string(),
                None => format!("{base_label} (no plugins.yaml)"),
            },
            head: head.0.to_string(),
            file: None,
            sides: Sides::Revisions,
            plugins,
            plan,
            head_lock,
            context_lines,
            cascade: BTreeMap::new(),
            held: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// The report of `diff --cluster`: the dry run's changes with plugsync's own bookkeeping
    /// (the `plugsync.dev/applied-hash` annotation) taken out, summarized per plugin like the
    /// pull-request diff (the live Plugins are the base side), with the objects each
    /// deletion cascades to, found through the owner references of `live_objects`.
    pub fn for_cluster(inputs: ClusterDiffInputs) -> DiffReport {
        let ClusterDiffInputs {
            live_label,
            desired_label,
            desired,
            live_objects,
            changes,
            unchanged,
            held,
            notes,
            context_lines,
        } = inputs;
        let mut kept = Vec::with_capacity(changes.len() + unchanged.len());
        for change in changes {
            kept.push(without_bookkeeping(change));
        }
        kept.extend(unchanged.into_iter().map(unchanged_change));
        for change in &mut kept {
            if change.action == Action::Unchanged {
                change.desired = None;
                change.live = None;
            }
        }
        let (mut changes, mut deletes): (Vec<Change>, Vec<Change>) =
            kept.into_iter().partition(|c| c.action != Action::Delete);
        changes.sort_by(|a, b| a.key.cmp(&b.key));
        deletes.sort_by(|a, b| b.key.cmp(&a.key));
        changes.extend(deletes);
        let plan = Plan { changes };

        let mut base_plugins = live_plugins(live_objects.iter());
        // A deleted Plugin the read missed (no right to list, say) still names its plugin.
        let known: HashSet<String> = base_plugins.iter().map(|p| p.plugin_id.clone()).collect();
        for extra in live_plugins(plan.deletes().filter_map(|c| c.live.as_ref())) {
            if !known.contains(&extra.plugin_id) {
                base_plugins.push(extra);
            }
        }
        let held_objects: BTreeMap<ObjectKey, Value> = live_objects
            .iter()
            .filter_map(|o| ObjectKey::of(o).ok().map(|k| (k, o)))
            .filter(|(k, _)| held.contains(k))
            .map(|(k, o)| (k, strip_bookkeeping(o.clone())))
            .collect();
        let plugins = summarize(&base_plugins, &desired, &plan, &held_objects);
        let cascade = cascade(plan.deletes(), &live_objects);
        DiffReport {
            base: live_label,
            head: desired_label,
            file: None,
            sides: Sides::Cluster,
            plugins,
            plan,
            head_lock: LockState::UpToDate,
            context_lines,
            cascade,
            held,
            notes,
        }
    }

    /// Whether anything changes: the exit code of `plugsync diff` (1 if so).
    pub fn has_changes(&self) -> bool {
        !self.plan.is_empty_of_changes()
    }

    /// How many plugins change so; objects of no plugin (the PluginSet, extras of a
    /// template) are listed but are no plugin.
    fn count(&self, kind: PluginChangeKind) -> usize {
        self.plugins
            .iter()
            .filter(|p| p.kind == kind && (p.from.is_some() || p.to.is_some()))
            .count()
    }

    /// `1 added, 1 upgraded, 0 removed, 2 reconfigured, 3 unchanged`.
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

    fn changed_plugins(&self) -> impl Iterator<Item = &PluginChange> + '_ {
        self.plugins
            .iter()
            .filter(|p| p.kind != PluginChangeKind::Unchanged)
    }

    fn title(&self) -> &'static str {
        match self.sides {
            Sides::Revisions => "plugsync diff",
            Sides::Cluster => "plugsync diff --cluster",
        }
    }

    /// Everything one object entry shows: its title line, reason, diff and cascade.
    fn shown(&self, entry: Entry<'_>) -> Shown {
        let (old, new) = self.sides.names();
        match entry {
            Entry::Object(c) => {
                let key = c.key.to_string();
                Shown {
                    marker: action_marker(c.action),
                    title: key.clone(),
                    reason: c.reason.clone(),
                    diff: plan::display_diff_between(
                        c,
                        self.context_lines,
                        &format!("{old}/{key}"),
                        &format!("{new}/{key}"),
                    ),
                    cascade: self.cascade.get(&c.key).cloned().unwrap_or_default(),
                }
            }
            Entry::Replaced(r) => {
                let kept = if r.held {
                    ", which is kept until this one runs"
                } else {
                    ""
                };
                Shown {
                    marker: "~",
                    title: format!("{} (replaces {}{kept})", r.change.key, r.base),
                    reason: r.change.reason.clone(),
                    diff: plan::display_diff_between(
                        &r.change,
                        self.context_lines,
                        &format!("{old}/{}", r.base),
                        &format!("{new}/{}", r.change.key),
                    ),
                    cascade: self.cascade.get(&r.base).cloned().unwrap_or_default(),
                }
            }
        }
    }

    fn note_lines(&self) -> Vec<String> {
        let mut lines: Vec<String> = self
            .held
            .iter()
            .map(|k| format!("{k} is kept until the new version of its plugin is Running"))
            .collect();
        lines.extend(self.notes.iter().cloned());
        lines
    }

    /// Plain text for terminals and CI logs: header, per-plugin summary, then each changed
    /// plugin's object diffs.
    pub fn to_text(&self) -> String {
        self.to_text_with(TextOptions::default())
    }

    /// [`DiffReport::to_text`] with options: `stat` (summary only), `color`.
    pub fn to_text_with(&self, options: TextOptions) -> String {
        let paint = Painter { on: options.color };
        let (old, new) = self.sides.names();
        let mut out = String::new();
        let title = match &self.file {
            Some(file) => format!("{} of {file}", self.title()),
            None => self.title().to_string(),
        };
        let _ = writeln!(out, "{}", paint.bold(&title));
        let _ = writeln!(out, "{old}: {}", self.base);
        let _ = writeln!(out, "{new}: {}", self.head);
        if let Some(w) = self.lock_warning() {
            let _ = writeln!(out, "{}", paint.warning(&format!("warning: {w}")));
        }
        let _ = writeln!(out, "plugins: {}", self.summary_line());
        let mut lines = (0, 0);
        for p in self.changed_plugins() {
            let marker = paint.kind(p.kind, marker(p.kind));
            let _ = writeln!(out, "  {marker} {:<40} {}", p.name, describe(p));
            if options.stat {
                for entry in entries(p) {
                    let shown = self.shown(entry);
                    let (added, removed) = line_counts(&shown.diff);
                    lines = (lines.0 + added, lines.1 + removed);
                    let _ = writeln!(
                        out,
                        "      {} {}  {} {}",
                        paint.action(shown.marker),
                        shown.title,
                        paint.added(&format!("+{added}")),
                        paint.removed(&format!("-{removed}"))
                    );
                }
            }
        }
        if options.stat {
            let _ = writeln!(
                out,
                "objects: {}; {} lines added, {} removed",
                self.plan.counts(),
                lines.0,
                lines.1
            );
        } else {
            let _ = writeln!(out, "objects: {}", self.plan.counts());
        }
        for line in self.note_lines() {
            let _ = writeln!(out, "note: {line}");
        }
        if options.stat {
            return out;
        }
        for p in self.plugins.iter().filter(|p| !p.objects.is_empty()) {
            let heading = format!("{} {}: {}", marker(p.kind), p.name, describe(p));
            let _ = writeln!(out, "\n{}", paint.bold(&heading));
            for entry in entries(p) {
                let shown = self.shown(entry);
                let _ = writeln!(
                    out,
                    "\n{} {}: {}",
                    paint.action(shown.marker),
                    shown.title,
                    shown.reason
                );
                if !shown.cascade.is_empty() {
                    let _ = writeln!(
                        out,
                        "  deleting it also deletes (owner references): {}",
                        join_keys(&shown.cascade)
                    );
                }
                out.push_str(&paint.diff(&shown.diff));
            }
        }
        out
    }

    /// Markdown that fits a pull-request comment: a summary table, then one collapsible
    /// section per changed plugin with its object diffs, under GitHub's comment limit.
    pub fn to_markdown(&self) -> String {
        self.to_markdown_with(&MarkdownOptions::default())
    }

    /// [`DiffReport::to_markdown`] with options: `stat` (the table only), the size limit and
    /// where the full diff is (for the note when plugins' diffs are left out).
    pub fn to_markdown_with(&self, options: &MarkdownOptions) -> String {
        let (old, new) = self.sides.names();
        let mut out = String::new();
        let _ = writeln!(out, "### {}\n", self.title());
        let file = self
            .file
            .as_ref()
            .map(|f| format!("`{f}`: "))
            .unwrap_or_default();
        let _ = writeln!(out, "{file}{old} `{}` → {new} `{}`\n", self.base, self.head);
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
        for line in self.note_lines() {
            let _ = writeln!(out, "- {}", html_escape(&line));
        }
        if !self.held.is_empty() || !self.notes.is_empty() {
            out.push('\n');
        }
        // What must fit under the limit besides what is built here: the note on omissions.
        let budget = options.limit.saturating_sub(note_room(options.limit));
        let _ = writeln!(out, "| | Plugin | Change | Version | Objects |");
        let _ = writeln!(out, "|---|---|---|---|---|");
        let mut rows_left_out = 0;
        for p in self.changed_plugins() {
            let row = format!(
                "| {} | `{}` | {:?} | {} | {} |\n",
                marker(p.kind),
                p.name,
                p.kind,
                versions(p),
                object_counts(&p.objects)
            );
            if rows_left_out > 0 || out.len() + row.len() > budget {
                rows_left_out += 1;
            } else {
                out.push_str(&row);
            }
        }
        if rows_left_out > 0 {
            let _ = writeln!(out, "| … | {rows_left_out} more plugins | | | |");
        }
        let mut diffs_left_out = Vec::new();
        if !options.stat {
            for p in self.plugins.iter().filter(|p| !p.objects.is_empty()) {
                let section = self.markdown_section(p);
                if out.len() + section.len() > budget {
                    diffs_left_out.push(p.name.as_str());
                } else {
                    out.push_str(&section);
                }
            }
        }
        if rows_left_out > 0 || !diffs_left_out.is_empty() {
            out.push_str(&truncation_note(options, rows_left_out, &diffs_left_out));
        }
        out
    }

    fn markdown_section(&self, p: &PluginChange) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\n<details><summary><code>{}</code>: {}</summary>\n",
            html_escape(&p.name),
            html_escape(&describe(p))
        );
        for entry in entries(p) {
            let shown = self.shown(entry);
            let _ = writeln!(
                out,
                "**{} {}**: {}\n",
                shown.marker, shown.title, shown.reason
            );
            if !shown.cascade.is_empty() {
                let _ = writeln!(
                    out,
                    "Deleting it also deletes (owner references): {}\n",
                    join_keys(&shown.cascade)
                );
            }
            let fence = fence_for(&shown.diff);
            let _ = writeln!(out, "{fence}diff\n{}{fence}\n", shown.diff);
        }
        let _ = writeln!(out, "</details>");
        out
    }

    /// Machine-readable form; `schemaVersion` says which layout (see
    /// [`JSON_SCHEMA_VERSION`]).
    pub fn to_json(&self) -> Value {
        self.to_json_with(false)
    }

    /// [`DiffReport::to_json`]; with `stat`, objects carry their line counts but no diff.
    pub fn to_json_with(&self, stat: bool) -> Value {
        let (old, new) = self.sides.names();
        let mut owner: HashMap<&ObjectKey, &str> = HashMap::new();
        let mut replacing: HashMap<&ObjectKey, &Replacement> = HashMap::new();
        let mut replaced_by: HashMap<&ObjectKey, &ObjectKey> = HashMap::new();
        for p in &self.plugins {
            for c in &p.objects {
                owner.insert(&c.key, &p.name);
            }
            for r in &p.replacements {
                replacing.insert(&r.change.key, r);
                replaced_by.insert(&r.base, &r.change.key);
            }
        }
        let objects: Vec<Value> = self
            .plan
            .changed()
            .map(|c| {
                let key = c.key.to_string();
                let (shown, diff) = match replacing.get(&c.key) {
                    Some(r) => (
                        &r.change,
                        plan::display_diff_between(
                            &r.change,
                            self.context_lines,
                            &format!("{old}/{}", r.base),
                            &format!("{new}/{key}"),
                        ),
                    ),
                    // Shown in the diff of the object replacing it.
                    None if replaced_by.contains_key(&c.key) => (c, String::new()),
                    None => (
                        c,
                        plan::display_diff_between(
                            c,
                            self.context_lines,
                            &format!("{old}/{key}"),
                            &format!("{new}/{key}"),
                        ),
                    ),
                };
                let (added, removed) = line_counts(&diff);
                let mut v = key_json(&c.key);
                v["action"] = json!(c.action.to_string());
                v["reason"] = json!(shown.reason);
                v["changedPaths"] = json!(shown.changed_paths);
                v["plugin"] = json!(owner.get(&c.key));
                v["linesAdded"] = json!(added);
                v["linesRemoved"] = json!(removed);
                if !stat {
                    v["diff"] = json!(diff);
                }
                if let Some(r) = replacing.get(&c.key) {
                    v["replaces"] = key_json(&r.base);
                    if r.held {
                        v["replacesHeld"] = json!(true);
                    }
                }
                if let Some(k) = replaced_by.get(&c.key) {
                    v["replacedBy"] = key_json(k);
                }
                if let Some(children) = self.cascade.get(&c.key) {
                    v["cascade"] = children.iter().map(key_json).collect();
                }
                v
            })
            .collect();
        let counts = self.plan.counts();
        let count = |k| self.count(k);
        json!({
            "schemaVersion": JSON_SCHEMA_VERSION,
            "compare": match self.sides {
                Sides::Revisions => "revisions",
                Sides::Cluster => "cluster",
            },
            "file": self.file,
            "base": self.base,
            "head": self.head,
            "changed": self.has_changes(),
            "lock": lock_json(&self.head_lock),
            "summary": {
                "plugins": {
                    "added": count(PluginChangeKind::Added),
                    "upgraded": count(PluginChangeKind::Upgraded),
                    "removed": count(PluginChangeKind::Removed),
                    "reconfigured": count(PluginChangeKind::Reconfigured),
                    "unchanged": count(PluginChangeKind::Unchanged),
                },
                "objects": {
                    "create": counts.create,
                    "update": counts.update,
                    "delete": counts.delete,
                    "unchanged": counts.unchanged,
                },
            },
            "plugins": self.plugins.iter().map(|p| json!({
                "name": p.name,
                "change": p.kind,
                "from": p.from,
                "to": p.to,
                "objects": p.objects.iter().map(|c| c.key.to_string()).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "objects": objects,
            "held": self.held.iter().map(key_json).collect::<Vec<_>>(),
            "notes": self.notes,
        })
    }
}

fn key_json(key: &ObjectKey) -> Value {
    json!({
        "apiVersion": key.api_version,
        "kind": key.kind,
        "namespace": key.namespace,
        "name": key.name,
    })
}

/// The lock state as JSON: `{"state": "up-to-date" | "missing" | "stale", "changes": [...]}`,
/// each change structured (`added`, `removed` or `changed`, with the pins before and after).
fn lock_json(lock: &LockState) -> Value {
    let pin = |p: &crate::model::LockedPlugin| {
        json!({
            "version": p.version,
            "source": p.source,
            "sha256": p.sha256,
            "pluginId": p.plugin_id,
        })
    };
    match lock {
        LockState::UpToDate => json!({"state": "up-to-date", "changes": []}),
        LockState::Missing => json!({"state": "missing", "changes": []}),
        LockState::Stale(changes) => json!({
            "state": "stale",
            "changes": changes.iter().map(|c| {
                let (change, name, from, to) = match c {
                    LockChange::Added(p) => ("added", &p.name, Value::Null, pin(p)),
                    LockChange::Removed(p) => ("removed", &p.name, pin(p), Value::Null),
                    LockChange::Changed { before, after } => {
                        ("changed", &after.name, pin(before), pin(after))
                    }
                };
                json!({"change": change, "name": name, "from": from, "to": to, "summary": c.to_string()})
            }).collect::<Vec<_>>(),
        }),
    }
}

/// The per-plugin summary of `plan` between two sides' plugins, with the objects of each
/// upgrade paired old with new. `held` are live objects kept rather than deleted, which an
/// upgrade's new objects may be paired with too.
fn summarize(
    base_plugins: &[PluginIdentity],
    head_plugins: &[PluginIdentity],
    plan: &Plan,
    held: &BTreeMap<ObjectKey, Value>,
) -> Vec<PluginChange> {
    let mut owner: HashMap<&str, &str> = HashMap::new();
    for p in base_plugins.iter().chain(head_plugins) {
        owner.insert(&p.plugin_id, &p.name);
    }
    let plugin_of = |object: Option<&Value>| -> &str {
        let id = object
            .and_then(|o| o.pointer("/metadata/labels"))
            .and_then(|l| l.get(LABEL_PLUGIN_ID))
            .and_then(Value::as_str)
            .unwrap_or_default();
        match owner.get(id) {
            Some(name) => name,
            None if object.is_some_and(|o| o["kind"] == "PluginSet") => THE_PLUGINSET,
            None => OTHER_OBJECTS,
        }
    };
    let mut by_plugin: BTreeMap<String, Vec<Change>> = BTreeMap::new();
    for change in plan.changed() {
        let name = plugin_of(change.desired.as_ref().or(change.live.as_ref()));
        by_plugin
            .entry(name.to_string())
            .or_default()
            .push(change.clone());
    }
    let mut held_by_plugin: BTreeMap<&str, Vec<(&ObjectKey, &Value)>> = BTreeMap::new();
    for (key, object) in held {
        held_by_plugin
            .entry(plugin_of(Some(object)))
            .or_default()
            .push((key, object));
    }

    let ids = |side: &[PluginIdentity]| -> BTreeMap<String, Vec<String>> {
        let mut ids: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for p in side {
            ids.entry(p.name.clone())
                .or_default()
                .push(p.plugin_id.clone());
        }
        ids
    };
    let (base_ids, head_ids) = (ids(base_plugins), ids(head_plugins));
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
    let no_ids = Vec::new();
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
            let replacements = if kind == PluginChangeKind::Upgraded {
                pair_replacements(
                    &objects,
                    base_ids.get(name).unwrap_or(&no_ids),
                    head_ids.get(name).unwrap_or(&no_ids),
                    held_by_plugin.get(name).map_or(&[][..], Vec::as_slice),
                )
            } else {
                Vec::new()
            };
            PluginChange {
                name: name.to_string(),
                kind,
                from,
                to,
                objects,
                replacements,
            }
        })
        .collect();
    // Objects that belong to no plugin: the PluginSet, or a hand-written template's extras.
    for (name, objects) in by_plugin {
        plugins.push(PluginChange {
            name,
            kind: PluginChangeKind::Reconfigured,
            from: None,
            to: None,
            objects,
            replacements: Vec::new(),
        });
    }
    plugins
}

/// Pairs the objects an upgrade creates with the ones it deletes (or, in a cluster, keeps
/// for now: `held`): first by name, the new plugin id in place of the old one (which is how
/// the templates name objects), then, among what is left, the one object of a kind on each
/// side.
fn pair_replacements(
    objects: &[Change],
    base_ids: &[String],
    head_ids: &[String],
    held: &[(&ObjectKey, &Value)],
) -> Vec<Replacement> {
    let mut old: BTreeMap<&ObjectKey, (&Value, bool)> = objects
        .iter()
        .filter(|c| c.action == Action::Delete)
        .filter_map(|c| c.live.as_ref().map(|l| (&c.key, (l, false))))
        .collect();
    for (key, object) in held {
        old.insert(key, (object, true));
    }
    let creates: Vec<&Change> = objects
        .iter()
        .filter(|c| c.action == Action::Create && c.desired.is_some())
        .collect();
    let mut pairs: Vec<(&Change, &ObjectKey)> = Vec::new();
    let mut used: HashSet<&ObjectKey> = HashSet::new();
    let mut unpaired = Vec::new();
    for c in creates {
        let renamed = head_ids
            .iter()
            .filter(|h| c.key.name.contains(h.as_str()))
            .find_map(|h| {
                base_ids.iter().find_map(|b| {
                    let key = ObjectKey {
                        name: c.key.name.replace(h.as_str(), b),
                        ..c.key.clone()
                    };
                    old.get_key_value(&key)
                        .map(|(k, _)| *k)
                        .filter(|k| !used.contains(k))
                })
            });
        match renamed {
            Some(k) => {
                used.insert(k);
                pairs.push((c, k));
            }
            None => unpaired.push(c),
        }
    }
    let same_kind = |a: &ObjectKey, b: &ObjectKey| {
        a.api_version == b.api_version && a.kind == b.kind && a.namespace == b.namespace
    };
    for c in unpaired {
        let mut news = 0;
        for other in objects.iter().filter(|o| o.action == Action::Create) {
            if same_kind(&other.key, &c.key) {
                news += 1;
            }
        }
        let olds: Vec<&ObjectKey> = old
            .keys()
            .copied()
            .filter(|k| same_kind(k, &c.key))
            .collect();
        if news == 1 && olds.len() == 1 && !used.contains(olds[0]) {
            used.insert(olds[0]);
            pairs.push((c, olds[0]));
        }
    }
    pairs
        .into_iter()
        .filter_map(|(c, base)| {
            let (object, held) = old.get(base)?;
            let change = plan::compare_objects(
                c.key.clone(),
                c.desired.clone()?,
                (*object).clone(),
                Compare::Exact,
            );
            Some(Replacement {
                base: base.clone(),
                change,
                held: *held,
            })
        })
        .collect()
}

/// `object` without plugsync's `plugsync.dev/applied-hash` annotation.
fn strip_bookkeeping(mut object: Value) -> Value {
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        if let Some(annotations) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
            annotations.remove(crate::render::ANNOTATION_APPLIED_HASH);
            if annotations.is_empty() {
                meta.remove("annotations");
            }
        }
    }
    object
}

/// The change without plugsync's `plugsync.dev/applied-hash` annotation on either side:
/// bookkeeping of the applier (a hash of what it applied), not something a reader changed.
/// An update that differed only there becomes unchanged.
fn without_bookkeeping(change: Change) -> Change {
    let strip = |object: Option<Value>| object.map(strip_bookkeeping);
    let desired = strip(change.desired);
    let live = strip(change.live);
    match (change.action, desired, live) {
        (Action::Update, Some(d), Some(l)) => {
            plan::compare_objects(change.key, d, l, change.compare)
        }
        (action, desired, live) => Change {
            action,
            desired,
            live,
            ..change
        },
    }
}

fn unchanged_change(key: ObjectKey) -> Change {
    Change {
        key,
        action: Action::Unchanged,
        reason: "in sync".into(),
        desired: None,
        live: None,
        changed_paths: Vec::new(),
        compare: Compare::Exact,
    }
}

/// The plugins the live Plugins are: first attempts only (retries, `<id>--2`, belong to
/// the same plugin).
fn live_plugins<'a>(objects: impl Iterator<Item = &'a Value>) -> Vec<PluginIdentity> {
    let mut seen = HashSet::new();
    objects
        .filter(|o| o["kind"] == "Plugin" && o["spec"]["attempt"].as_u64().unwrap_or(1) <= 1)
        .filter_map(|o| {
            let spec = &o["spec"];
            Some(PluginIdentity {
                name: spec["name"].as_str()?.to_string(),
                version: spec["version"].as_str()?.to_string(),
                plugin_id: spec["pluginId"].as_str()?.to_string(),
            })
        })
        .filter(|p| seen.insert(p.plugin_id.clone()))
        .collect()
}

/// For each deleted object, the objects whose owner references lead to it, directly or
/// through others (what Kubernetes' garbage collector deletes with it), in key order.
pub(crate) fn cascade<'a>(
    deleted: impl Iterator<Item = &'a Change>,
    live: &[Value],
) -> BTreeMap<ObjectKey, Vec<ObjectKey>> {
    let mut children: HashMap<&str, Vec<(&str, ObjectKey)>> = HashMap::new();
    for object in live {
        let (Some(uid), Ok(key)) = (
            object.pointer("/metadata/uid").and_then(Value::as_str),
            ObjectKey::of(object),
        ) else {
            continue;
        };
        let owners = object
            .pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        for owner in owners {
            if let Some(owner_uid) = owner.get("uid").and_then(Value::as_str) {
                children
                    .entry(owner_uid)
                    .or_default()
                    .push((uid, key.clone()));
            }
        }
    }
    let mut out = BTreeMap::new();
    for change in deleted {
        let Some(root) = change
            .live
            .as_ref()
            .and_then(|l| l.pointer("/metadata/uid"))
            .and_then(Value::as_str)
        else {
            continue;
        };
        let mut found = BTreeSet::new();
        let mut visited = HashSet::from([root]);
        let mut queue = vec![root];
        while let Some(uid) = queue.pop() {
            for (child_uid, key) in children.get(uid).map(Vec::as_slice).unwrap_or_default() {
                if visited.insert(child_uid) {
                    found.insert(key.clone());
                    queue.push(child_uid);
                }
            }
        }
        if !found.is_empty() {
            out.insert(change.key.clone(), found.into_iter().collect());
        }
    }
    out
}

/// One object as a plugin's section lists it: a change of its own, or a new object against
/// the old one it replaces.
#[derive(Clone, Copy)]
enum Entry<'a> {
    Object(&'a Change),
    Replaced(&'a Replacement),
}

/// A plugin's entries in plan order: each replacement where its new object is created, the
/// old objects it pairs with left out.
fn entries(p: &PluginChange) -> Vec<Entry<'_>> {
    let by_head: HashMap<&ObjectKey, &Replacement> =
        p.replacements.iter().map(|r| (&r.change.key, r)).collect();
    let bases: HashSet<&ObjectKey> = p.replacements.iter().map(|r| &r.base).collect();
    p.objects
        .iter()
        .filter_map(|c| match by_head.get(&c.key) {
            Some(r) if c.action == Action::Create => Some(Entry::Replaced(r)),
            _ if c.action == Action::Delete && bases.contains(&c.key) => None,
            _ => Some(Entry::Object(c)),
        })
        .collect()
}

/// What the formats show of one entry.
struct Shown {
    marker: &'static str,
    title: String,
    reason: String,
    diff: String,
    cascade: Vec<ObjectKey>,
}

/// Lines added and removed in a unified diff (its two header lines aside).
fn line_counts(diff: &str) -> (usize, usize) {
    let mut counts = (0, 0);
    for line in diff.lines().skip(2) {
        if line.starts_with('+') {
            counts.0 += 1;
        } else if line.starts_with('-') {
            counts.1 += 1;
        }
    }
    counts
}

fn join_keys(keys: &[ObjectKey]) -> String {
    keys.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A code fence longer than any run of backticks in `text`, so nothing in a diff (a YAML
/// value holding ```) can close it early.
fn fence_for(text: &str) -> String {
    let mut longest = 0;
    let mut run = 0;
    for c in text.chars() {
        if c == '`' {
            run += 1;
            longest = longest.max(run);
        } else {
            run = 0;
        }
    }
    "`".repeat((longest + 1).max(3))
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The note closing a truncated markdown report: what was left out, and where it is.
fn truncation_note(options: &MarkdownOptions, rows: usize, diffs: &[&str]) -> String {
    let mut note = if options.limit == GITHUB_COMMENT_LIMIT {
        "\n> [!NOTE]\n> Shortened to fit GitHub's limit on a comment (65,536 characters):"
            .to_string()
    } else {
        format!(
            "\n> [!NOTE]\n> Shortened to stay under {} characters:",
            options.limit
        )
    };
    if rows > 0 {
        let _ = write!(note, " {rows} rows of the table");
        if !diffs.is_empty() {
            note.push_str(" and");
        }
    }
    if !diffs.is_empty() {
        let _ = write!(note, " the object diffs of {} plugins", diffs.len());
        // Name as many as fit in half the room kept for this note.
        let mut names = String::new();
        let mut named = 0;
        for name in diffs {
            if names.len() + name.len() + 4 > note_room(options.limit) / 2 {
                break;
            }
            if named > 0 {
                names.push_str(", ");
            }
            let _ = write!(names, "`{name}`");
            named += 1;
        }
        if named < diffs.len() {
            let _ = write!(names, " and {} more", diffs.len() - named);
        }
        let _ = write!(note, " ({names})");
    }
    note.push_str(" are left out.\n");
    match &options.full_diff_at {
        Some(at) => {
            let _ = writeln!(note, "> The full diff: {at}");
        }
        None => note.push_str(
            "> Run the same `plugsync diff` locally (`-o text`, or `--stat` for the summary) for the full diff.\n",
        ),
    }
    note
}

/// ANSI colours for the text form, or nothing.
struct Painter {
    on: bool,
}

impl Painter {
    fn paint(&self, style: anstyle::Style, text: &str) -> String {
        if self.on {
            format!("{style}{text}{style:#}")
        } else {
            text.to_string()
        }
    }

    fn fg(color: anstyle::AnsiColor) -> anstyle::Style {
        anstyle::Style::new().fg_color(Some(color.into()))
    }

    fn bold(&self, text: &str) -> String {
        self.paint(anstyle::Style::new().bold(), text)
    }

    fn warning(&self, text: &str) -> String {
        self.paint(Self::fg(anstyle::AnsiColor::Yellow).bold(), text)
    }

    fn added(&self, text: &str) -> String {
        self.paint(Self::fg(anstyle::AnsiColor::Green), text)
    }

    fn removed(&self, text: &str) -> String {
        self.paint(Self::fg(anstyle::AnsiColor::Red), text)
    }

    fn kind(&self, kind: PluginChangeKind, text: &str) -> String {
        match kind {
            PluginChangeKind::Added => self.added(text),
            PluginChangeKind::Removed => self.removed(text),
            PluginChangeKind::Unchanged => text.to_string(),
            _ => self.paint(Self::fg(anstyle::AnsiColor::Yellow), text),
        }
    }

    fn action(&self, marker: &str) -> String {
        match marker {
            "+" => self.added(marker),
            "-" => self.removed(marker),
            "=" => marker.to_string(),
            _ => self.paint(Self::fg(anstyle::AnsiColor::Yellow), marker),
        }
    }

    /// A unified diff with its headers bold, hunk lines cyan, additions green and removals
    /// red, as `git diff` colours them.
    fn diff(&self, diff: &str) -> String {
        if !self.on {
            return diff.to_string();
        }
        let mut out = String::with_capacity(diff.len() + diff.len() / 4);
        for (i, line) in diff.split_inclusive('\n').enumerate() {
            let (body, end) = match line.strip_suffix('\n') {
                Some(body) => (body, "\n"),
                None => (line, ""),
            };
            let painted = if i < 2 && (body.starts_with("--- ") || body.starts_with("+++ ")) {
                self.bold(body)
            } else if body.starts_with("@@") {
                self.paint(Self::fg(anstyle::AnsiColor::Cyan), body)
            } else if body.starts_with('+') {
                self.added(body)
            } else if body.starts_with('-') {
                self.removed(body)
            } else {
                body.to_string()
            };
            out.push_str(&painted);
            out.push_str(end);
        }
        out
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn object(kind: &str, name: &str, id: &str, extra: Value) -> Value {
        let mut o = json!({
            "apiVersion": "v1", "kind": kind,
            "metadata": {"name": name, "namespace": "dify", "labels": {LABEL_PLUGIN_ID: id}},
        });
        if let (Some(o), Some(extra)) = (o.as_object_mut(), extra.as_object()) {
            for (k, v) in extra {
                o.insert(k.clone(), v.clone());
            }
        }
        o
    }

    fn identity(name: &str, version: &str, id: &str) -> PluginIdentity {
        PluginIdentity {
            name: name.into(),
            version: version.into(),
            plugin_id: id.into(),
        }
    }

    fn upgrade_report(base: &[Value], head: &[Value]) -> DiffReport {
        let plan = plan::plan_refs_sparse(head, base, Compare::Exact).expect("plan");
        DiffReport::from_plan(
            "base",
            Some(("base", vec![identity("a/p", "1.0.0", "old1")])),
            ("head", vec![identity("a/p", "2.0.0", "new2")]),
            LockState::UpToDate,
            plan,
            3,
        )
    }

    #[test]
    fn an_upgrade_pairs_objects_by_name_with_the_new_id_in_place_of_the_old() {
        let base = [
            object("Service", "svc-old1", "old1", json!({"spec": {"port": 80}})),
            object("ConfigMap", "cm-old1", "old1", json!({"data": {"v": "1"}})),
        ];
        let head = [
            object("Service", "svc-new2", "new2", json!({"spec": {"port": 80}})),
            object("ConfigMap", "cm-new2", "new2", json!({"data": {"v": "2"}})),
        ];
        let report = upgrade_report(&base, &head);
        let p = &report.plugins[0];
        assert_eq!(p.kind, PluginChangeKind::Upgraded);
        let pairs: Vec<(String, String, Vec<String>)> = p
            .replacements
            .iter()
            .map(|r| {
                (
                    r.base.name.clone(),
                    r.change.key.name.clone(),
                    r.change.changed_paths.clone(),
                )
            })
            .collect();
        assert_eq!(
            pairs,
            [
                (
                    "cm-old1".to_string(),
                    "cm-new2".to_string(),
                    vec![
                        "data.v".to_string(),
                        r#"metadata.labels["plugsync.dev/plugin-id"]"#.to_string(),
                        "metadata.name".to_string()
                    ]
                ),
                (
                    "svc-old1".to_string(),
                    "svc-new2".to_string(),
                    vec![
                        r#"metadata.labels["plugsync.dev/plugin-id"]"#.to_string(),
                        "metadata.name".to_string()
                    ]
                ),
            ]
        );
        let text = report.to_text();
        assert!(
            text.contains("--- base/ConfigMap dify/cm-old1\n+++ head/ConfigMap dify/cm-new2\n"),
            "{text}"
        );
        assert!(text.contains("-  v: \"1\"\n+  v: \"2\"\n"), "{text}");
        // In apply order (ConfigMaps before Services). Two entries, not four: no object is shown wholly removed or wholly added.
        assert!(!text.contains("+kind: ConfigMap"), "{text}");
        assert!(!text.contains("-kind: ConfigMap"), "{text}");
    }

    #[test]
    fn an_object_named_otherwise_pairs_when_it_is_the_only_one_of_its_kind() {
        let base = [
            object("ConfigMap", "settings", "old1", json!({"data": {"v": "1"}})),
            object("Secret", "s-a", "old1", json!({})),
            object("Secret", "s-b", "old1", json!({})),
        ];
        let head = [
            object(
                "ConfigMap",
                "settings-v2",
                "new2",
                json!({"data": {"v": "2"}}),
            ),
            object("Secret", "t-a", "new2", json!({})),
            object("Secret", "t-b", "new2", json!({})),
        ];
        let report = upgrade_report(&base, &head);
        let pairs: Vec<(&str, &str)> = report.plugins[0]
            .replacements
            .iter()
            .map(|r| (r.base.name.as_str(), r.change.key.name.as_str()))
            .collect();
        // Two Secrets a side cannot be told apart: they stay a create and a delete each.
        assert_eq!(pairs, [("settings", "settings-v2")]);
        assert_eq!(entries(&report.plugins[0]).len(), 5);
    }

    #[test]
    fn bookkeeping_is_taken_out_and_an_update_of_it_alone_is_none() {
        let hash = crate::render::ANNOTATION_APPLIED_HASH;
        let key = ObjectKey::of(&object("Plugin", "x", "i", json!({}))).expect("key");
        let with = |h: &str, replicas: u32| {
            object(
                "Plugin",
                "x",
                "i",
                json!({"metadata": {"name": "x", "namespace": "dify", "annotations": {hash: h}},
                       "spec": {"replicas": replicas}}),
            )
        };
        let only_hash =
            plan::compare_objects(key.clone(), with("b", 1), with("a", 1), Compare::Exact);
        assert_eq!(only_hash.action, Action::Update);
        assert_eq!(without_bookkeeping(only_hash).action, Action::Unchanged);
        let both = plan::compare_objects(key, with("b", 2), with("a", 1), Compare::Exact);
        let shown = without_bookkeeping(both);
        assert_eq!(shown.changed_paths, ["spec.replicas"]);
        let diff = plan::display_diff(&shown, 3);
        assert!(!diff.contains(hash), "{diff}");
    }

    #[test]
    fn a_deletion_cascades_through_owner_references_transitively() {
        let owned = |kind: &str, name: &str, uid: &str, owner: &str| {
            json!({"apiVersion": "v1", "kind": kind,
                   "metadata": {"name": name, "namespace": "dify", "uid": uid,
                                "ownerReferences": [{"uid": owner}]}})
        };
        let root = json!({"apiVersion": "v1", "kind": "Plugin",
                          "metadata": {"name": "p", "namespace": "dify", "uid": "u-p"}});
        let live = vec![
            root.clone(),
            owned("Deployment", "d", "u-d", "u-p"),
            owned("ReplicaSet", "rs", "u-rs", "u-d"),
            owned("Pod", "pod", "u-pod", "u-rs"),
            owned("Service", "s", "u-s", "u-p"),
            owned("Pod", "elsewhere", "u-x", "u-other"),
        ];
        let plan = plan::plan(&[], &[root], Compare::Exact).expect("plan");
        let found = cascade(plan.deletes(), &live);
        let names: Vec<String> = found
            .values()
            .flatten()
            .map(|k| format!("{} {}", k.kind, k.name))
            .collect();
        assert_eq!(
            names,
            ["Service s", "Deployment d", "Pod pod", "ReplicaSet rs"]
        );
    }

    #[test]
    fn code_fences_outlast_backticks_in_the_diff() {
        assert_eq!(fence_for("a"), "```");
        assert_eq!(fence_for("x ```` y"), "`````");
    }

    #[test]
    fn the_truncation_note_names_what_is_left_out_and_where_the_rest_is() {
        let options = MarkdownOptions {
            full_diff_at: Some("https://ci.example/run/1".into()),
            ..MarkdownOptions::default()
        };
        let note = truncation_note(&options, 0, &["a/one", "a/two"]);
        assert!(
            note.contains("the object diffs of 2 plugins (`a/one`, `a/two`)"),
            "{note}"
        );
        assert!(
            note.contains("The full diff: https://ci.example/run/1"),
            "{note}"
        );
        let many: Vec<String> = (0..500).map(|i| format!("author/plugin-{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let note = truncation_note(&MarkdownOptions::default(), 3, &many);
        assert!(note.len() < TRUNCATION_NOTE_ROOM, "{}", note.len());
        assert!(
            note.contains("3 rows of the table and the object diffs of 500 plugins"),
            "{note}"
        );
        assert!(note.contains(" more)"), "{note}");
        assert!(
            note.contains("Run the same `plugsync diff` locally"),
            "{note}"
        );
    }

    #[test]
    fn colour_is_only_there_when_asked_for() {
        let base = [object(
            "ConfigMap",
            "c",
            "old1",
            json!({"data": {"v": "1"}}),
        )];
        let head = [object(
            "ConfigMap",
            "c",
            "old1",
            json!({"data": {"v": "2"}}),
        )];
        let plan = plan::plan_refs_sparse(&head, &base, Compare::Exact).expect("plan");
        let report = DiffReport::from_plan(
            "base",
            Some(("base", vec![identity("a/p", "1.0.0", "old1")])),
            ("head", vec![identity("a/p", "1.0.0", "old1")]),
            LockState::UpToDate,
            plan,
            3,
        );
        let plain = report.to_text();
        assert!(!plain.contains('\u{1b}'), "{plain}");
        let coloured = report.to_text_with(TextOptions {
            color: true,
            stat: false,
        });
        assert!(
            coloured.contains("\u{1b}[32m+  v: \"2\"\u{1b}[0m"),
            "{coloured}"
        );
        assert!(
            coloured.contains("\u{1b}[31m-  v: \"1\"\u{1b}[0m"),
            "{coloured}"
        );
        // Without the escapes, the same text.
        let stripped = regex::Regex::new("\u{1b}\\[[0-9;]*m")
            .expect("regex")
            .replace_all(&coloured, "");
        assert_eq!(stripped, plain);
    }
}
