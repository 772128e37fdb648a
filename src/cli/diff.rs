//! What `plugsync diff` and `plugsync diff --cluster` share: printing a report in the format
//! asked for, the colour decision, the labels of the sides, and the cluster read that tells
//! what a deletion cascades to.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams};
use serde_json::Value;

use super::{ColorWhen, DiffArgs, DiffFormat};
use plugsync_core::pipeline::DesiredState;
use plugsync_core::render::LABEL_PLUGINSET;
use plugsync_core::report::{
    ClusterDiffInputs, DiffReport, MarkdownOptions, PluginIdentity, TextOptions,
};
use plugsync_kube::apply::{ApplyReport, Outcome};

/// How long one read of the cluster may take before the cascade is reported incomplete.
const LIST_TIMEOUT: Duration = Duration::from_secs(30);

/// The kinds a plugin's objects and their descendants are: Plugins (retries are owned by the
/// first attempt), the controller's Jobs, Deployments and Services (owned by a Plugin), and
/// what Kubernetes makes of them (ReplicaSets, Pods). All carry the set's label.
const CASCADE_KINDS: [(&str, &str, &str); 6] = [
    ("plugsync.dev", "v1alpha1", "Plugin"),
    ("batch", "v1", "Job"),
    ("apps", "v1", "Deployment"),
    ("apps", "v1", "ReplicaSet"),
    ("", "v1", "Service"),
    ("", "v1", "Pod"),
];

/// Whether the text report is coloured: `--color`, and for `auto` what clap decides for its
/// own output (stdout a terminal, `NO_COLOR`, `CLICOLOR_FORCE`, `TERM=dumb`).
pub(super) fn color_enabled(when: ColorWhen) -> bool {
    match when {
        ColorWhen::Always => true,
        ColorWhen::Never => false,
        ColorWhen::Auto => !matches!(
            anstream::AutoStream::choice(&std::io::stdout()),
            anstream::ColorChoice::Never
        ),
    }
}

/// The declared set's file as the header shows it: relative to the repository root, or
/// outside a git work tree to `--repo`; never the runner's absolute checkout path.
pub(super) fn file_label(repo: &Path, file: &Path) -> String {
    let relative = match plugsync_core::source::discover_repo_root(repo) {
        Ok((_, Some(subdir))) => Path::new(&subdir).join(file),
        Ok((_, None)) | Err(_) => file.to_path_buf(),
    };
    relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .filter(|c| c != ".")
        .collect::<Vec<_>>()
        .join("/")
}

/// Prints `report` as `args` ask, then says whether anything changes (exit 1) or not (0).
pub(super) fn print_report(report: &DiffReport, args: &DiffArgs) -> ExitCode {
    match args.output {
        DiffFormat::Text => print!(
            "{}",
            report.to_text_with(TextOptions {
                stat: args.stat,
                color: color_enabled(args.color),
            })
        ),
        DiffFormat::Markdown => print!(
            "{}",
            report.to_markdown_with(&MarkdownOptions {
                stat: args.stat,
                limit: match args.markdown_limit {
                    0 => usize::MAX,
                    n => n,
                },
                full_diff_at: args.full_diff_at.clone(),
            })
        ),
        DiffFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&report.to_json_with(args.stat)).unwrap_or_default()
        ),
    }
    if report.has_changes() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// The report of `diff --cluster` from the applier's dry run (`applied`) of `state` in
/// `namespace`, with the set's live objects read (Plugins and their descendants) to name who
/// runs now and what each deletion cascades to. A kind that cannot be read (RBAC, timeout)
/// is named in the report's notes, not an error: the diff itself does not depend on it.
pub(super) async fn cluster_report(
    client: &kube::Client,
    namespace: &str,
    state: &DesiredState,
    applied: ApplyReport,
    file: String,
    context_lines: usize,
) -> DiffReport {
    let set = &state.set.spec().metadata.name;
    let mut notes = Vec::new();
    let mut live_objects = Vec::new();
    let params = ListParams::default().labels(&format!("{LABEL_PLUGINSET}={set}"));
    for (group, version, kind) in CASCADE_KINDS {
        let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind));
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
        match tokio::time::timeout(LIST_TIMEOUT, api.list(&params)).await {
            Ok(Ok(list)) => {
                for item in list.items {
                    let mut value = serde_json::to_value(item).unwrap_or(Value::Null);
                    value["apiVersion"] = Value::from(resource.api_version.clone());
                    value["kind"] = Value::from(kind);
                    live_objects.push(value);
                }
            }
            Ok(Err(e)) => notes.push(format!(
                "could not list {kind}s in {namespace} ({e}): what deletions cascade to may be incomplete"
            )),
            Err(_) => notes.push(format!(
                "listing {kind}s in {namespace} took over {}s: what deletions cascade to may be incomplete",
                LIST_TIMEOUT.as_secs()
            )),
        }
    }
    let with = |outcome: Outcome| {
        applied
            .objects
            .iter()
            .filter(move |(_, o)| *o == outcome)
            .map(|(k, _)| k.clone())
            .collect::<Vec<_>>()
    };
    let (unchanged, held) = (with(Outcome::Unchanged), with(Outcome::Held));
    let desired = state
        .rendered
        .iter()
        .map(|p| PluginIdentity {
            name: p.name.clone(),
            version: p.version.clone(),
            plugin_id: p.plugin_id.clone(),
        })
        .collect();
    let mut report = DiffReport::for_cluster(ClusterDiffInputs {
        live_label: format!("cluster, namespace {namespace}"),
        desired_label: "working tree".into(),
        desired,
        live_objects,
        changes: applied.changes,
        unchanged,
        held,
        notes,
        context_lines,
    });
    report.file = Some(file);
    report
}
