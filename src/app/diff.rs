//! `plugsync diff` against a git revision: which two revisions it compares, and their
//! report. Like a pull request, the head side (the working tree, uncommitted changes
//! included, or a revision) is compared with the merge base of the base revision and head,
//! so only what head changed shows; `--no-merge-base` compares with the base itself.

use std::path::Path;

use plugsync_core::error::Error;
use plugsync_core::render::RenderSettings;
use plugsync_core::report::DiffReport;
use plugsync_core::resolve::Resolver;
use plugsync_core::source::{discover_repo_root, GitRevision, Snapshot, SnapshotError, WorkTree};

/// The revisions `plugsync diff` is asked to compare.
#[derive(Debug, Clone)]
pub(crate) struct DiffRequest<'a> {
    /// The folder holding plugins.yaml, inside a git work tree.
    pub(crate) repo: &'a Path,
    /// The base revision (`--base`).
    pub(crate) base: &'a str,
    /// The head revision (`--head`); `None`: the working tree.
    pub(crate) head: Option<&'a str>,
    /// Compare with the merge base of base and head (the default), not the base itself.
    pub(crate) merge_base: bool,
}

/// The two sides chosen, as snapshots of the repository.
pub(crate) struct Revisions {
    /// The base side: the merge base, or the base revision itself.
    pub(crate) base: GitRevision,
    /// How the report names the base: the revision asked for (or the merge base of it and
    /// head) and its commit id, abbreviated.
    pub(crate) base_label: String,
    /// The head side: a revision, or the working tree.
    pub(crate) head: Box<dyn Snapshot>,
    /// Whether head is the working tree (which the report then names so).
    pub(crate) head_is_work_tree: bool,
}

/// Chooses and opens the two sides of `request`.
pub(crate) fn revisions(request: &DiffRequest<'_>) -> Result<Revisions, Error> {
    let snap = |e: SnapshotError| Error::Usage(e.to_string());
    let (root, subdir) = discover_repo_root(request.repo).map_err(snap)?;
    let base_arg = request.base;
    let head_rev = request.head.unwrap_or("HEAD");
    let base_rev = if request.merge_base {
        GitRevision::merge_base(&root, base_arg, head_rev).map_err(snap)?
    } else {
        base_arg.to_string()
    };
    // Name the base by its ref when the merge base is the base itself (the usual case).
    let base_tip = GitRevision::open(&root, base_arg, subdir.as_deref()).map_err(snap)?;
    let base = if base_tip.commit_id() == base_rev {
        base_tip
    } else {
        GitRevision::open(&root, &base_rev, subdir.as_deref()).map_err(snap)?
    };
    let base_label = if request.merge_base {
        format!("merge-base of {base_arg} and {head_rev}")
    } else {
        base_arg.to_string()
    };
    let head: Box<dyn Snapshot> = match request.head {
        Some(rev) => Box::new(GitRevision::open(&root, rev, subdir.as_deref()).map_err(snap)?),
        None => Box::new(WorkTree::new(request.repo).map_err(snap)?),
    };
    Ok(Revisions {
        base,
        base_label: format!("{base_label} ({})", &base_rev[..base_rev.len().min(12)]),
        head,
        head_is_work_tree: request.head.is_none(),
    })
}

/// The report of the plugins.yaml at `file` (relative to the repository folder) between
/// `revisions`: the plugins both share are rendered once, and neither revision is held
/// whole ([`plugsync_core::diff::diff_report`]). For a thread that may block: the
/// downloads run on `runtime`.
pub(crate) fn report(
    runtime: &tokio::runtime::Handle,
    revisions: &Revisions,
    file: &str,
    resolver: &Resolver,
    settings: &RenderSettings,
    context_lines: usize,
) -> Result<DiffReport, Error> {
    let mut report = runtime.block_on(plugsync_core::diff::diff_report(
        &revisions.base,
        revisions.head.as_ref(),
        file,
        resolver,
        settings,
        &revisions.base_label,
        context_lines,
    ))?;
    if revisions.head_is_work_tree {
        report.head = "working tree".into();
    }
    Ok(report)
}
