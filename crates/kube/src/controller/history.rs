//! Which build attempts of one plugin to clean up, as a pure function.
//!
//! Failed attempts (`<plugin-id>--N` Plugins, each with its build Job and pod) are kept for
//! debugging up to a history limit, newest first; older ones are removed. Attempts built
//! from stale inputs (a newer commit started over at attempt 1) are removed once they no
//! longer serve, or once the current inputs run. Once the first attempt runs itself (a known
//! image, such as one pinned in plugins.lock after a retry built it), every retry is
//! superseded and removed: one attempt runs a plugin. The same plan serves the controller
//! (with the PluginSet's `failedHistoryLimit`) and `plugsync gc` (with `--keep`, 0 by
//! default).
//!
//! Two things are never removed: the first attempt's Plugin (it is what the git loop applied
//! and it owns the others; only its failed Job goes, its status remembers the failure), and
//! the latest failed attempt of the current inputs (it holds the Stalled state; removing it
//! would make the attempt before it start it again).

use plugsync_core::crd::PluginPhase;

/// One attempt of a plugin, as the controller sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// `<plugin-id>` or `<plugin-id>--N`.
    pub name: String,
    /// N (1 for the first).
    pub attempt: u32,
    /// `spec.build.inputsHash`.
    pub inputs_hash: String,
    /// Its own phase, if published (a first attempt reporting a retry's state: `BuildFailed`,
    /// as its own build failed).
    pub phase: Option<PluginPhase>,
    /// Whether its build Job still exists.
    pub has_job: bool,
}

/// Something to delete.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Removal {
    /// A retry's Plugin (its Job, pods and Deployment go with it by owner reference).
    Plugin(String),
    /// The first attempt's failed build Job (the Plugin stays).
    Job(String),
}

impl Removal {
    /// The object's name.
    pub fn name(&self) -> &str {
        match self {
            Removal::Plugin(n) | Removal::Job(n) => n,
        }
    }
}

/// What to remove of `attempts` (all attempts of one plugin-id), given the first attempt's
/// current build inputs and how many failed attempts to keep.
pub fn plan(attempts: &[Attempt], current_inputs: &str, keep_failed: usize) -> Vec<Removal> {
    let current_runs = attempts
        .iter()
        .any(|a| a.inputs_hash == current_inputs && a.phase == Some(PluginPhase::Running));
    let first_runs = attempts.iter().any(|a| {
        a.attempt <= 1 && a.inputs_hash == current_inputs && a.phase == Some(PluginPhase::Running)
    });
    let mut removals = Vec::new();

    // Retries of a first attempt that runs itself: superseded, running or not.
    if first_runs {
        for a in attempts
            .iter()
            .filter(|a| a.attempt >= 2 && a.inputs_hash == current_inputs)
        {
            removals.push(Removal::Plugin(a.name.clone()));
        }
    }

    // Stale retries: gone unless they still serve and nothing current does yet.
    for a in attempts
        .iter()
        .filter(|a| a.attempt >= 2 && a.inputs_hash != current_inputs)
    {
        if a.phase != Some(PluginPhase::Running) || current_runs {
            removals.push(Removal::Plugin(a.name.clone()));
        }
    }

    // Failed attempts of the current inputs, newest first.
    let mut failed: Vec<&Attempt> = attempts
        .iter()
        .filter(|a| a.inputs_hash == current_inputs && a.phase == Some(PluginPhase::BuildFailed))
        .collect();
    failed.sort_by_key(|a| std::cmp::Reverse(a.attempt));
    let latest = attempts
        .iter()
        .filter(|a| a.inputs_hash == current_inputs)
        .map(|a| a.attempt)
        .max();
    for a in failed.into_iter().skip(keep_failed) {
        if Some(a.attempt) == latest || (first_runs && a.attempt >= 2) {
            continue;
        }
        if a.attempt >= 2 {
            removals.push(Removal::Plugin(a.name.clone()));
        } else if a.has_job {
            removals.push(Removal::Job(a.name.clone()));
        }
    }
    removals.sort();
    removals.dedup();
    removals
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: &str = "new";
    const OLD: &str = "old";

    fn attempt(n: u32, inputs: &str, phase: PluginPhase) -> Attempt {
        Attempt {
            name: if n == 1 {
                "p".to_string()
            } else {
                format!("p--{n}")
            },
            attempt: n,
            inputs_hash: inputs.to_string(),
            phase: Some(phase),
            has_job: true,
        }
    }

    #[test]
    fn failed_attempts_beyond_the_limit_go_newest_kept() {
        use PluginPhase::*;
        let attempts = [
            attempt(1, NOW, BuildFailed),
            attempt(2, NOW, BuildFailed),
            attempt(3, NOW, BuildFailed),
            attempt(4, NOW, Running),
        ];
        assert_eq!(
            plan(&attempts, NOW, 1),
            vec![Removal::Plugin("p--2".into()), Removal::Job("p".into())]
        );
        assert_eq!(plan(&attempts, NOW, 3), vec![]);
        assert_eq!(
            plan(&attempts, NOW, 0),
            vec![
                Removal::Plugin("p--2".into()),
                Removal::Plugin("p--3".into()),
                Removal::Job("p".into())
            ]
        );
    }

    #[test]
    fn the_latest_failed_attempt_stays_so_a_stalled_plugin_stays_stalled() {
        use PluginPhase::*;
        let attempts = [
            attempt(1, NOW, BuildFailed),
            attempt(2, NOW, BuildFailed),
            attempt(3, NOW, BuildFailed),
        ];
        assert_eq!(
            plan(&attempts, NOW, 0),
            vec![Removal::Plugin("p--2".into()), Removal::Job("p".into())]
        );
    }

    #[test]
    fn a_first_attempt_whose_job_is_already_gone_needs_nothing() {
        use PluginPhase::*;
        let mut first = attempt(1, NOW, BuildFailed);
        first.has_job = false;
        let attempts = [first, attempt(2, NOW, Running)];
        assert_eq!(plan(&attempts, NOW, 0), vec![]);
    }

    #[test]
    fn stale_retries_go_unless_they_still_serve_alone() {
        use PluginPhase::*;
        let building = [
            attempt(1, NOW, Building),
            attempt(2, OLD, Running),
            attempt(3, OLD, BuildFailed),
        ];
        assert_eq!(
            plan(&building, NOW, 5),
            vec![Removal::Plugin("p--3".into())],
            "the old version keeps serving while the new inputs build"
        );
        let running = [attempt(1, NOW, Running), attempt(2, OLD, Running)];
        assert_eq!(plan(&running, NOW, 5), vec![Removal::Plugin("p--2".into())]);
    }

    #[test]
    fn retries_of_a_first_attempt_that_runs_itself_are_superseded() {
        use PluginPhase::*;
        // Attempt 1 failed, attempt 2 built and ran; plugins.lock pinned that image and
        // attempt 1 now runs it: attempt 2 goes, running or not.
        let attempts = [
            attempt(1, NOW, Running),
            attempt(2, NOW, Running),
            attempt(3, OLD, BuildFailed),
        ];
        assert_eq!(
            plan(&attempts, NOW, 5),
            vec![
                Removal::Plugin("p--2".into()),
                Removal::Plugin("p--3".into())
            ]
        );
        let failed_retries = [
            attempt(1, NOW, Running),
            attempt(2, NOW, BuildFailed),
            attempt(3, NOW, BuildFailed),
        ];
        assert_eq!(
            plan(&failed_retries, NOW, 5),
            vec![
                Removal::Plugin("p--2".into()),
                Removal::Plugin("p--3".into())
            ],
            "no Stalled state to hold: the plugin runs"
        );
        // While attempt 1 only reports its running retry (its own phase is BuildFailed), the
        // retry serves and stays.
        let reporting = [attempt(1, NOW, BuildFailed), attempt(2, NOW, Running)];
        assert_eq!(plan(&reporting, NOW, 5), vec![]);
    }

    #[test]
    fn nothing_to_do_for_a_healthy_plugin() {
        assert_eq!(
            plan(&[attempt(1, NOW, PluginPhase::Running)], NOW, 0),
            vec![]
        );
    }
}
