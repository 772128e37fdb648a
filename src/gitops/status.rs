//! The PluginSet status the git loop publishes, as a pure function of what the last pass
//! did and what the Plugins report: no client, no clock, tested with plain data.
//!
//! Conditions follow kstatus: `Ready` (every declared plugin runs), `Reconciling` (work in
//! progress: a fetch, an apply, builds and rollouts) and `Stalled` (nothing moves without a
//! change: a bad commit, a plugin out of attempts).

use std::collections::BTreeMap;

use crate::controller::lifecycle::ConditionSpec;
use crate::crd::{Plugin, PluginPhase, StatusError};
use crate::error::Error;

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
}

/// Plugins by phase, each plugin (plugin-id) counted once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PhaseCounts {
    /// Phase name → number of plugins.
    pub phases: BTreeMap<String, i64>,
    /// Plugins whose latest attempt is `Stalled=True` (out of attempts, rollout failed).
    pub stalled: Vec<String>,
}

impl PhaseCounts {
    /// Counts `plugins` (every attempt of every plugin of one set): a plugin is Running if
    /// any attempt runs, else it is where its latest attempt is.
    pub fn of(plugins: &[Plugin]) -> PhaseCounts {
        let mut by_id: BTreeMap<&str, Vec<&Plugin>> = BTreeMap::new();
        for p in plugins {
            by_id.entry(&p.spec.plugin_id).or_default().push(p);
        }
        let mut counts = PhaseCounts::default();
        for attempts in by_id.values() {
            let phase_of = |p: &Plugin| p.status.as_ref().and_then(|s| s.phase);
            let running = attempts
                .iter()
                .any(|p| phase_of(p) == Some(PluginPhase::Running));
            let Some(latest) = attempts.iter().max_by_key(|p| p.spec.attempt) else {
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

/// The name a phase has in the API (`Running`, `BuildFailed`, …).
pub fn phase_name(phase: PluginPhase) -> &'static str {
    match phase {
        PluginPhase::Pending => "Pending",
        PluginPhase::Building => "Building",
        PluginPhase::Running => "Running",
        PluginPhase::BuildFailed => "BuildFailed",
        PluginPhase::Failed => "Failed",
    }
}

/// The problems of a bad commit, located where the error knows the position.
pub fn status_errors(error: &Error) -> Vec<StatusError> {
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
pub fn compose(
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
    let (message, ready, reconciling, stalled) = match result {
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
        PassResult::Applied { commit, held } => {
            let mut message = format!("applied {}; {plugins_line}", short(commit));
            if *held > 0 {
                message.push_str(&format!(
                    "; {held} old versions held until their upgrades run"
                ));
            }
            if !counts.stalled.is_empty() {
                message.push_str(&format!("; stalled: {}", counts.stalled.join(", ")));
            }
            let (ready, reconciling, stalled) = if !counts.stalled.is_empty() {
                ((false, "PluginsStalled"), None, Some("PluginsStalled"))
            } else if all_run && *held == 0 {
                ((true, "Running"), None, None)
            } else {
                ((false, "Progressing"), Some("Progressing"), None)
            };
            (message, ready, reconciling, stalled)
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::PluginStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    fn plugin(id: &str, attempt: u32, phase: PluginPhase, stalled: bool) -> Plugin {
        let mut spec: crate::crd::PluginSpec = serde_json::from_value(serde_json::json!({
            "pluginSet": "s", "name": format!("a/{id}"), "version": "1", "uniqueIdentifier": "u",
            "pluginId": id, "attempt": attempt,
            "package": {"source": "x", "sha256": "", "checksum": ""},
            "runner": {"language": "python", "version": "3.12", "entrypoint": "main"},
            "build": {"contextSha256": "", "inputsHash": "", "image": "i"},
            "runtime": {}
        }))
        .expect("spec");
        spec.attempt = attempt;
        let mut p = Plugin::new(id, spec);
        p.status = Some(PluginStatus {
            phase: Some(phase),
            conditions: vec![Condition {
                type_: "Stalled".into(),
                status: if stalled { "True" } else { "False" }.into(),
                reason: "R".into(),
                message: String::new(),
                observed_generation: None,
                last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
            }],
            ..Default::default()
        });
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
