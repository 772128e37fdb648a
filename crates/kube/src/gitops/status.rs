//! The PluginSet status, as a pure function of what the last pass did and what the Plugins
//! report: no client, no clock, tested with plain data.
//!
//! Under `plugsync run` the git loop publishes it (it alone knows a commit's fate); for a set
//! applied with `plugsync apply`, which no git loop follows, the plugin controller publishes
//! the same columns from the Plugins alone ([`PassResult::Unfollowed`]). Never both for one
//! set: each writes its fields by merge patch, and the inventory is the applier's.
//!
//! Conditions follow kstatus: `Ready` (every declared plugin runs), `Reconciling` (work in
//! progress: a fetch, an apply, builds and rollouts) and `Stalled` (nothing moves without a
//! change: a bad commit, a plugin out of attempts).

use std::collections::BTreeMap;

use crate::controller::lifecycle::ConditionSpec;
use plugsync_core::crd::{Plugin, PluginPhase, StatusError};
use plugsync_core::error::Error;

/// What the last pass of the loop did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PassResult {
    /// Nothing has run yet.
    Starting,
    /// The commit was applied (its Plugins are created, updated or unchanged).
    Applied {
        /// The commit (or `working tree`).
        commit: String,
        /// Old versions still held until their replacements run.
        held: usize,
    },
    /// The commit is bad (invalid plugins.yaml, lock mismatch, template error): nothing was
    /// applied and nothing will be until a new commit.
    Invalid {
        /// The bad commit.
        commit: String,
        /// Why, with files and lines.
        message: String,
        /// The located problems.
        errors: Vec<StatusError>,
    },
    /// The fetch failed (network, credentials); retried at the next poll.
    FetchFailed {
        /// Why (no credentials in it).
        message: String,
    },
    /// The apply failed part-way (API errors); retried at the next poll.
    ApplyFailed {
        /// The commit being applied.
        commit: String,
        /// Why.
        message: String,
    },
    /// Suspended by flag or annotation: nothing is fetched or applied.
    Suspended,
    /// No git loop follows the set (it was applied with `plugsync apply`): its state is what
    /// its Plugins report.
    Unfollowed {
        /// Old versions still held until their replacements run.
        held: usize,
    },
}

/// Plugins by phase, each plugin (`author/name`) counted once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PhaseCounts {
    /// Phase name → number of plugins.
    pub phases: BTreeMap<String, i64>,
    /// Plugins whose latest attempt is `Stalled=True` (out of attempts, rollout failed).
    pub stalled: Vec<String>,
}

impl PhaseCounts {
    /// Counts `plugins` (every attempt of every version of every plugin of one set): a plugin
    /// is Running if any attempt of any of its versions runs (an old version held during an
    /// upgrade serves it), else it is where the latest attempt of its newest version is.
    pub fn of(plugins: &[Plugin]) -> PhaseCounts {
        let mut by_name: BTreeMap<&str, Vec<&Plugin>> = BTreeMap::new();
        for p in plugins {
            by_name.entry(&p.spec.name).or_default().push(p);
        }
        let mut counts = PhaseCounts::default();
        for attempts in by_name.values() {
            let phase_of = |p: &Plugin| p.status.as_ref().and_then(|s| s.phase);
            let running = attempts
                .iter()
                .any(|p| phase_of(p) == Some(PluginPhase::Running));
            // The newest version is the plugin-id whose first attempt was created last.
            let newest = attempts
                .iter()
                .filter(|p| p.spec.attempt <= 1)
                .max_by_key(|p| &p.metadata.creation_timestamp)
                .map(|p| p.spec.plugin_id.as_str());
            let Some(latest) = attempts
                .iter()
                .filter(|p| newest.is_none_or(|id| p.spec.plugin_id == id))
                .max_by_key(|p| p.spec.attempt)
            else {
                continue;
            };
            let phase = if running {
                PluginPhase::Running
            } else {
                phase_of(latest).unwrap_or(PluginPhase::Pending)
            };
            *counts.phases.entry(phase_name(phase).into()).or_default() += 1;
            let stalled = latest.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Stalled" && c.status == "True")
            });
            if stalled && !running {
                counts.stalled.push(latest.spec.name.clone());
            }
        }
        counts
    }

    fn get(&self, phase: PluginPhase) -> i64 {
        self.phases.get(phase_name(phase)).copied().unwrap_or(0)
    }
}

/// `(declared, held)` from the live Plugins of one set: the plugins its last apply declared
/// (first attempts, one per plugin name) and the old versions held until their upgrades run
/// (further first attempts of a name: prune removes them once the new version runs).
pub(crate) fn declared_and_held(plugins: &[Plugin]) -> (usize, usize) {
    let firsts: Vec<&Plugin> = plugins.iter().filter(|p| p.spec.attempt <= 1).collect();
    let names: std::collections::BTreeSet<&str> =
        firsts.iter().map(|p| p.spec.name.as_str()).collect();
    (names.len(), firsts.len() - names.len())
}

/// The name a phase has in the API (`Running`, `BuildFailed`, …).
pub(crate) fn phase_name(phase: PluginPhase) -> &'static str {
    match phase {
        PluginPhase::Pending => "Pending",
        PluginPhase::Building => "Building",
        PluginPhase::Running => "Running",
        PluginPhase::BuildFailed => "BuildFailed",
        PluginPhase::Failed => "Failed",
    }
}

/// The problems of a bad commit, located where the error knows the position.
pub(crate) fn status_errors(error: &Error) -> Vec<StatusError> {
    match error {
        Error::Invalid(diagnostics) => diagnostics
            .0
            .iter()
            .map(|d| StatusError {
                file: d.file.display().to_string(),
                line: d.line,
                column: d.column,
                field: d.path.clone(),
                message: d.message.clone(),
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The status message and conditions for a pass result and the Plugins' phases.
/// `declared` is the number of plugins the applied commit declares.
pub(crate) fn compose(
    result: &PassResult,
    declared: Option<usize>,
    counts: &PhaseCounts,
) -> (String, Vec<ConditionSpec>) {
    let running = counts.get(PluginPhase::Running);
    let declared = declared.map(|d| d as i64);
    let all_run = declared.is_some_and(|d| running >= d);
    let cond = |type_, status, reason, message: &str| ConditionSpec {
        type_,
        status,
        reason,
        message: message.to_string(),
    };
    let short = |commit: &str| commit.chars().take(12).collect::<String>();
    let plugins_line = match declared {
        Some(d) => format!("{running} of {d} plugins running"),
        None => format!("{running} plugins running"),
    };
    let (message, ready, reconciling, stalled): Outcome = match result {
        PassResult::Starting => (
            "starting".to_string(),
            (false, "Starting"),
            Some("Starting"),
            None,
        ),
        PassResult::Suspended => (
            format!("suspended; {plugins_line}"),
            (all_run, if all_run { "Running" } else { "Suspended" }),
            None,
            None,
        ),
        PassResult::Invalid {
            commit, message, ..
        } => (
            format!(
                "commit {} is invalid, nothing was applied: {message}",
                short(commit)
            ),
            (false, "InvalidCommit"),
            None,
            Some("InvalidCommit"),
        ),
        PassResult::FetchFailed { message } => (
            format!("fetch failed (retrying): {message}"),
            (false, "FetchFailed"),
            Some("FetchFailed"),
            None,
        ),
        PassResult::ApplyFailed { commit, message } => (
            format!("applying {} failed (retrying): {message}", short(commit)),
            (false, "ApplyFailed"),
            Some("ApplyFailed"),
            None,
        ),
        PassResult::Applied { commit, held } => progress(
            format!("applied {}; {plugins_line}", short(commit)),
            *held,
            all_run,
            counts,
        ),
        PassResult::Unfollowed { held } => progress(plugins_line, *held, all_run, counts),
    };
    let conditions = vec![
        cond("Ready", ready.0, ready.1, &message),
        match reconciling {
            Some(reason) => cond("Reconciling", true, reason, &message),
            None => cond("Reconciling", false, "Idle", ""),
        },
        match stalled {
            Some(reason) => cond("Stalled", true, reason, &message),
            None => cond("Stalled", false, "Progressing", ""),
        },
    ];
    (message, conditions)
}

/// What a pass's outcome says of the set besides its message: `Ready`, and the reasons of
/// `Reconciling` and `Stalled` when true.
type Outcome = (
    String,
    (bool, &'static str),
    Option<&'static str>,
    Option<&'static str>,
);

/// The outcome of an applied set whose Plugins are on their way: `message` says how many run,
/// and this adds what holds it up.
fn progress(mut message: String, held: usize, all_run: bool, counts: &PhaseCounts) -> Outcome {
    if held > 0 {
        message.push_str(&format!(
            "; {held} old versions held until their upgrades run"
        ));
    }
    if !counts.stalled.is_empty() {
        message.push_str(&format!("; stalled: {}", counts.stalled.join(", ")));
    }
    let (ready, reconciling, stalled) = if !counts.stalled.is_empty() {
        ((false, "PluginsStalled"), None, Some("PluginsStalled"))
    } else if all_run && held == 0 {
        ((true, "Running"), None, None)
    } else {
        ((false, "Progressing"), Some("Progressing"), None)
    };
    (message, ready, reconciling, stalled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    fn plugin(id: &str, attempt: u32, phase: PluginPhase, stalled: bool) -> Plugin {
        let mut p = plugsync_testkit::plugin(id, attempt, phase);
        if let Some(status) = p.status.as_mut() {
            status.conditions = vec![Condition {
                type_: "Stalled".into(),
                status: if stalled { "True" } else { "False" }.into(),
                reason: "R".into(),
                message: String::new(),
                observed_generation: None,
                last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
            }];
        }
        p
    }

    fn condition(conditions: &[ConditionSpec], type_: &str) -> (bool, &'static str) {
        let c = conditions
            .iter()
            .find(|c| c.type_ == type_)
            .expect("present");
        (c.status, c.reason)
    }

    #[test]
    fn each_plugin_counts_once_running_if_any_attempt_runs() {
        use PluginPhase::*;
        let counts = PhaseCounts::of(&[
            plugin("a", 1, BuildFailed, false),
            plugin("a", 2, Running, false),
            plugin("b", 1, Building, false),
            plugin("c", 1, BuildFailed, false),
            plugin("c", 2, BuildFailed, true),
        ]);
        assert_eq!(counts.phases.get("Running"), Some(&1));
        assert_eq!(counts.phases.get("Building"), Some(&1));
        assert_eq!(counts.phases.get("BuildFailed"), Some(&1));
        assert_eq!(counts.stalled, vec!["a/c".to_string()]);
    }

    #[test]
    fn applied_and_all_running_is_ready() {
        let counts = PhaseCounts::of(&[plugin("a", 1, PluginPhase::Running, false)]);
        let result = PassResult::Applied {
            commit: "0123456789abcdef".into(),
            held: 0,
        };
        let (message, conditions) = compose(&result, Some(1), &counts);
        assert_eq!(message, "applied 0123456789ab; 1 of 1 plugins running");
        assert_eq!(condition(&conditions, "Ready"), (true, "Running"));
        assert!(!condition(&conditions, "Reconciling").0);
        assert!(!condition(&conditions, "Stalled").0);
    }

    #[test]
    fn applied_with_builds_or_holds_is_reconciling() {
        let counts = PhaseCounts::of(&[plugin("a", 1, PluginPhase::Building, false)]);
        let building = PassResult::Applied {
            commit: "c".into(),
            held: 0,
        };
        let (_, conditions) = compose(&building, Some(1), &counts);
        assert_eq!(condition(&conditions, "Reconciling"), (true, "Progressing"));
        assert_eq!(condition(&conditions, "Ready"), (false, "Progressing"));

        let counts = PhaseCounts::of(&[plugin("a", 1, PluginPhase::Running, false)]);
        let holding = PassResult::Applied {
            commit: "c".into(),
            held: 1,
        };
        let (message, conditions) = compose(&holding, Some(1), &counts);
        assert!(message.contains("1 old versions held"), "{message}");
        assert!(condition(&conditions, "Reconciling").0);
    }

    #[test]
    fn a_bad_commit_stalls_with_its_reason_and_a_stalled_plugin_is_named() {
        let result = PassResult::Invalid {
            commit: "feedfacecafebeef00".into(),
            message: "feedface:plugins.yaml:3:1: spec.plugins: missing".into(),
            errors: Vec::new(),
        };
        let (message, conditions) = compose(&result, Some(1), &PhaseCounts::default());
        assert!(
            message.starts_with("commit feedfacecafe is invalid"),
            "{message}"
        );
        assert!(message.contains("plugins.yaml:3:1"), "{message}");
        assert_eq!(condition(&conditions, "Stalled"), (true, "InvalidCommit"));
        assert_eq!(condition(&conditions, "Ready"), (false, "InvalidCommit"));

        let counts = PhaseCounts::of(&[plugin("a", 3, PluginPhase::BuildFailed, true)]);
        let applied = PassResult::Applied {
            commit: "c".into(),
            held: 0,
        };
        let (message, conditions) = compose(&applied, Some(1), &counts);
        assert!(message.contains("stalled: a/a"), "{message}");
        assert_eq!(condition(&conditions, "Stalled"), (true, "PluginsStalled"));
    }

    #[test]
    fn a_set_no_git_loop_follows_reads_from_its_plugins() {
        use PluginPhase::*;
        let mut old = plugin("old", 1, Running, false);
        old.spec.name = "a/new".into(); // the version the upgrade replaces
        let plugins = [
            plugin("new", 1, BuildFailed, false),
            plugin("new", 2, Running, false),
            old,
            plugin("b", 1, Building, false),
        ];
        assert_eq!(declared_and_held(&plugins), (2, 1));
        let counts = PhaseCounts::of(&plugins);
        assert_eq!(counts.phases.get("Running"), Some(&1), "{counts:?}");
        assert_eq!(counts.phases.get("Building"), Some(&1), "{counts:?}");
        let (message, conditions) = compose(&PassResult::Unfollowed { held: 1 }, Some(2), &counts);
        assert_eq!(
            message,
            "1 of 2 plugins running; 1 old versions held until their upgrades run"
        );
        assert_eq!(condition(&conditions, "Reconciling"), (true, "Progressing"));

        let running = [plugin("a", 1, Running, false)];
        let (message, conditions) = compose(
            &PassResult::Unfollowed { held: 0 },
            Some(1),
            &PhaseCounts::of(&running),
        );
        assert_eq!(message, "1 of 1 plugins running");
        assert_eq!(condition(&conditions, "Ready"), (true, "Running"));
    }

    #[test]
    fn an_upgrade_counts_once_where_its_newest_version_is_unless_a_version_runs() {
        use PluginPhase::*;
        let created = |mut p: Plugin, second: i64| {
            p.spec.name = "a/x".into();
            p.metadata.creation_timestamp = Some(Time(
                k8s_openapi::jiff::Timestamp::from_second(second).expect("time"),
            ));
            p
        };
        let failing_upgrade = [
            created(plugin("old", 1, Failed, false), 1),
            created(plugin("new", 1, Building, false), 2),
        ];
        let counts = PhaseCounts::of(&failing_upgrade);
        assert_eq!(counts.phases, BTreeMap::from([("Building".into(), 1)]));
        let served = [
            created(plugin("old", 1, Running, false), 1),
            created(plugin("new", 1, BuildFailed, false), 2),
            created(plugin("new", 2, BuildFailed, true), 3),
        ];
        let counts = PhaseCounts::of(&served);
        assert_eq!(counts.phases, BTreeMap::from([("Running".into(), 1)]));
        assert!(counts.stalled.is_empty(), "the old version serves it");
    }

    #[test]
    fn transient_failures_are_reconciling_not_stalled() {
        for result in [
            PassResult::FetchFailed {
                message: "timeout".into(),
            },
            PassResult::ApplyFailed {
                commit: "c".into(),
                message: "503".into(),
            },
        ] {
            let (_, conditions) = compose(&result, None, &PhaseCounts::default());
            assert!(condition(&conditions, "Reconciling").0, "{result:?}");
            assert!(!condition(&conditions, "Stalled").0, "{result:?}");
        }
    }
}
