//! The plugin lifecycle, as a pure function: what the controller observed about one
//! `Plugin` and its children in, the actions to take and the status to publish out.
//!
//! No Kubernetes client, no clock, no I/O: the controller edge gathers [`Observed`], calls
//! [`decide`], and carries out the [`Decision`]. Every transition is therefore testable with
//! plain data, and the same observation always gives the same decision.
//!
//! Phases: `Pending` (accepted; deploying a known image) → `Building` (a build Job runs) →
//! `Running` (the Deployment is available), or `BuildFailed` (the build failed; a retry may
//! follow) / `Failed` (the Deployment cannot become available). Conditions follow kstatus:
//! `Ready`, `Reconciling` (work in progress) and `Stalled` (no progress without a change).
//!
//! The first attempt is the Plugin git declares, the one `kubectl get plugins`, health checks
//! and alerts look at. Once its own build failed and a retry (`<plugin-id>--N`) took over, it
//! reports that retry's phase, endpoint and readiness (`status.currentAttempt` names it), so a
//! plugin whose retry runs reads `Running`, not `BuildFailed` forever; its own failure stays
//! in `status.lastFailure` and its message. Exactly one attempt runs a plugin: a first attempt
//! that can run a known image (pinned in plugins.lock after a retry built it) runs it, and its
//! retries are then superseded.

use std::time::Duration;

use plugsync_core::crd::{PluginPhase, PluginSpec};
use plugsync_core::render::image_by_digest;

/// What the build Job of this attempt looks like, if it exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobState {
    /// No Job yet.
    Absent,
    /// Created, not finished.
    Running,
    /// Built from other build inputs than the spec's (a newer commit changed the Dockerfile,
    /// the builder or the destination): it must go, whatever its state, so the new inputs
    /// are built and an old build or its retries never block a newer commit.
    Stale,
    /// Finished successfully; `digest` from the build pod's termination message.
    Succeeded {
        /// `sha256:…` pushed by the builder, when the termination message had one.
        digest: Option<String>,
    },
    /// Failed; why, from the Job's condition and its pod.
    Failed {
        /// Short machine-readable reason (`BackoffLimitExceeded`, `DeadlineExceeded`, `Error`).
        reason: String,
        /// Human message (the builder's last words when available).
        message: String,
        /// Seconds since the failure (for the retry backoff).
        age: Duration,
    },
}

/// What the Deployment looks like, if it exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeploymentState {
    /// No Deployment yet.
    Absent,
    /// Exists and runs the expected image, rolling out.
    Progressing,
    /// Exists, runs the expected image, and is Available for its current generation.
    Available,
    /// Exists but was rendered otherwise (another image digest, or other settings: replicas,
    /// env, resources, labels, templates): it must be applied again.
    Outdated,
    /// Its rollout failed (`Progressing=False`, e.g. `ProgressDeadlineExceeded`).
    Failed {
        /// The Deployment condition's message.
        message: String,
    },
}

/// Everything the controller knows about one Plugin when it decides.
#[derive(Debug, Clone)]
pub struct Observed<'a> {
    /// The Plugin's spec.
    pub spec: &'a PluginSpec,
    /// Its namespace (for the endpoint).
    pub namespace: &'a str,
    /// The digest recorded in its status by an earlier reconcile, if any.
    pub recorded_digest: Option<&'a str>,
    /// Whether the registry still has the known digest (`None`: no digest to check, or the
    /// check could not be made).
    pub registry_has_digest: Option<bool>,
    /// The build Job of this attempt.
    pub job: JobState,
    /// The Deployment of this attempt.
    pub deployment: DeploymentState,
    /// Whether `svc-<plugin-id>` exists.
    pub service_exists: bool,
    /// Whether a later attempt's Plugin (`<plugin-id>--M`, M > N) for the same build inputs
    /// already exists.
    pub next_attempt_exists: bool,
    /// For a first attempt: the newest retry of the same build inputs, whose state it reports
    /// once its own build failed.
    pub latest_retry: Option<RetryView>,
    /// This is a retry (`--N`, N ≥ 2) that no longer has a part to play: it does nothing more
    /// (its Deployment, if running, stays until the history clean-up removes it).
    pub superseded: Option<Superseded>,
    /// `spec.build.maxAttempts` of the PluginSet.
    pub max_attempts: u32,
    /// Retry backoff of the PluginSet.
    pub backoff: Backoff,
}

/// Why a retry is superseded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Superseded {
    /// Its first attempt now has other build inputs: a newer commit started over at attempt
    /// 1 (its running Deployment stays until the new build runs).
    NewInputs,
    /// Its first attempt runs its own Deployment (of a known image, e.g. pinned in
    /// plugins.lock): one attempt runs a plugin, so this one goes.
    FirstAttemptRuns,
}

/// What a first attempt knows of its newest retry, from that retry's status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryView {
    /// `<plugin-id>--N`.
    pub name: String,
    /// N.
    pub attempt: u32,
    /// Its phase, once it published one.
    pub phase: Option<PluginPhase>,
    /// `Ready=True`.
    pub ready: bool,
    /// `Reconciling=True` (or no status yet).
    pub reconciling: bool,
    /// `Stalled=True`.
    pub stalled: bool,
    /// Its status message.
    pub message: String,
}

/// Exponential backoff between build attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay before attempt 2.
    pub base: Duration,
    /// Longest delay.
    pub cap: Duration,
}

impl Backoff {
    /// Delay before attempt `next` (2, 3, …): `base * 2^(next-2)`, capped.
    pub(crate) fn before_attempt(&self, next: u32) -> Duration {
        let doublings = next.saturating_sub(2).min(30);
        self.base
            .checked_mul(1u32 << doublings)
            .unwrap_or(self.cap)
            .min(self.cap)
    }
}

/// One thing for the controller edge to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Create the build Job of this attempt.
    CreateJob,
    /// Delete this attempt's build Job (built from stale inputs), with its pods.
    DeleteJob,
    /// Create or update the Deployment to run `image` (by digest).
    ApplyDeployment {
        /// `repository@sha256:…`.
        image: String,
    },
    /// Create the Service `svc-<plugin-id>`.
    CreateService,
    /// Create the Plugin of the next attempt (`<plugin-id>--N`).
    CreateNextAttempt {
        /// N.
        attempt: u32,
    },
}

/// A condition to publish (kstatus types: `Ready`, `Reconciling`, `Stalled`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConditionSpec {
    /// Condition type.
    pub type_: &'static str,
    /// `True` or `False`.
    pub status: bool,
    /// CamelCase reason.
    pub reason: &'static str,
    /// Human message.
    pub message: String,
}

/// The outcome of one decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The phase to publish.
    pub phase: PluginPhase,
    /// The endpoint, once Running.
    pub endpoint: Option<String>,
    /// The image digest to record, once known.
    pub image_digest: Option<String>,
    /// Why the plugin is where it is.
    pub message: String,
    /// `Ready`, `Reconciling` and `Stalled`, always all three.
    pub conditions: Vec<ConditionSpec>,
    /// What to do now.
    pub actions: Vec<Action>,
    /// When to look again even if nothing changes (`None`: wait for a watch event).
    pub requeue_after: Option<Duration>,
    /// The retry whose state a first attempt reports (`None`: it reports its own).
    pub current_attempt: Option<String>,
}

impl Decision {
    /// A decision with no endpoint, digest, actions or requeue yet, whose three conditions
    /// follow from the arguments: `Ready` = `ready`; `Reconciling` and `Stalled` are `True`
    /// (with `message`) exactly when given a reason.
    pub fn new(
        phase: PluginPhase,
        message: String,
        ready: (bool, &'static str),
        reconciling: Option<&'static str>,
        stalled: Option<&'static str>,
    ) -> Decision {
        let flag = |type_, reason: Option<&'static str>, idle| ConditionSpec {
            type_,
            status: reason.is_some(),
            reason: reason.unwrap_or(idle),
            message: if reason.is_some() {
                message.clone()
            } else {
                String::new()
            },
        };
        let conditions = vec![
            ConditionSpec {
                type_: "Ready",
                status: ready.0,
                reason: ready.1,
                message: message.clone(),
            },
            flag("Reconciling", reconciling, "Idle"),
            flag("Stalled", stalled, "Progressing"),
        ];
        Decision {
            phase,
            endpoint: None,
            image_digest: None,
            message,
            conditions,
            actions: Vec::new(),
            requeue_after: None,
            current_attempt: None,
        }
    }
}

/// Decides what to do about one Plugin.
pub(crate) fn decide(o: &Observed<'_>) -> Decision {
    let endpoint = format!("http://svc-{}.{}:8080", o.spec.plugin_id, o.namespace);
    if let Some(why) = o.superseded {
        let running = o.deployment == DeploymentState::Available;
        let message = match why {
            Superseded::NewInputs => {
                "superseded: a newer commit changed the build inputs and started over at \
                 attempt 1"
            }
            Superseded::FirstAttemptRuns => {
                "superseded: attempt 1 runs a known image of the same build inputs"
            }
        };
        return Decision {
            endpoint: running.then_some(endpoint),
            ..Decision::new(
                if running {
                    PluginPhase::Running
                } else {
                    PluginPhase::Pending
                },
                message.into(),
                (running, "Superseded"),
                None,
                None,
            )
        };
    }
    if o.job == JobState::Stale {
        return Decision {
            actions: vec![Action::DeleteJob],
            requeue_after: Some(Duration::from_secs(2)),
            ..Decision::new(
                PluginPhase::Building,
                "the build inputs changed; replacing the build of the previous inputs".into(),
                (false, "InputsChanged"),
                Some("InputsChanged"),
                None,
            )
        };
    }
    // The digest to run: from this attempt's build, else recorded, else the spec's (reuse),
    // the last two only while the registry still has it.
    let built = match &o.job {
        JobState::Succeeded { digest: Some(d) } => Some(d.clone()),
        _ => None,
    };
    let known = o
        .recorded_digest
        .map(str::to_string)
        .or_else(|| o.spec.image_digest.clone());
    // A build Job of this attempt exists only because no known digest was usable when it
    // started (there was none, or the registry no longer had it): while it builds, this
    // attempt runs what it builds, never the digest the registry lost. Once the build failed,
    // a known digest runs only if the registry confirms it has it: one that arrived after the
    // failure (a retry built it and plugins.lock pins it), never the lost one.
    let usable_known = known.filter(|_| match &o.job {
        JobState::Absent => o.registry_has_digest != Some(false),
        JobState::Failed { .. } => o.registry_has_digest == Some(true),
        _ => false,
    });
    let digest = built.or(usable_known);

    if let Some(digest) = digest {
        let image = image_by_digest(&o.spec.build.image, &digest);
        let mut actions = Vec::new();
        if !o.service_exists {
            actions.push(Action::CreateService);
        }
        let decision = match &o.deployment {
            DeploymentState::Available => Decision {
                endpoint: Some(endpoint),
                ..Decision::new(
                    PluginPhase::Running,
                    "Deployment available".into(),
                    (true, "Available"),
                    None,
                    None,
                )
            },
            DeploymentState::Failed { message } => Decision::new(
                PluginPhase::Failed,
                format!("Deployment cannot become available: {message}"),
                (false, "DeploymentFailed"),
                None,
                Some("DeploymentFailed"),
            ),
            DeploymentState::Absent | DeploymentState::Outdated | DeploymentState::Progressing => {
                if o.deployment != DeploymentState::Progressing {
                    actions.insert(0, Action::ApplyDeployment { image });
                }
                let phase = if matches!(o.job, JobState::Succeeded { .. }) {
                    PluginPhase::Building
                } else {
                    PluginPhase::Pending
                };
                Decision::new(
                    phase,
                    "Deployment rolling out".into(),
                    (false, "RollingOut"),
                    Some("RollingOut"),
                    None,
                )
            }
        };
        return Decision {
            image_digest: Some(digest),
            actions,
            ..decision
        };
    }

    match &o.job {
        JobState::Absent => {
            let message = if o.registry_has_digest == Some(false) {
                "the recorded image is gone from the registry; building it again".to_string()
            } else {
                format!("building attempt {}", o.spec.attempt)
            };
            Decision {
                actions: vec![Action::CreateJob],
                ..Decision::new(
                    PluginPhase::Building,
                    message,
                    (false, "Building"),
                    Some("Building"),
                    None,
                )
            }
        }
        // A stale Job returned above.
        JobState::Running | JobState::Stale => Decision::new(
            PluginPhase::Building,
            format!("building attempt {}", o.spec.attempt),
            (false, "Building"),
            Some("Building"),
            None,
        ),
        // A success with a digest returned above; here the builder reported none.
        JobState::Succeeded { .. } => Decision::new(
            PluginPhase::BuildFailed,
            "the build succeeded but reported no image digest".into(),
            (false, "NoDigest"),
            None,
            Some("NoDigest"),
        ),
        JobState::Failed {
            reason,
            message,
            age,
        } => {
            let attempt = o.spec.attempt.max(1);
            let what = format!("build attempt {attempt} failed: {reason}: {message}");
            if let (1, Some(retry)) = (attempt, &o.latest_retry) {
                return reports_retry(what, retry, endpoint);
            }
            let failed = |message: String, reconciling, stalled| {
                Decision::new(
                    PluginPhase::BuildFailed,
                    message,
                    (false, "BuildFailed"),
                    reconciling,
                    stalled,
                )
            };
            if attempt >= o.max_attempts {
                return failed(
                    format!("{what}; no attempts left ({attempt} of {})", o.max_attempts),
                    None,
                    Some("MaxAttemptsReached"),
                );
            }
            let next = attempt + 1;
            let wait = o.backoff.before_attempt(next);
            if o.next_attempt_exists {
                return failed(format!("{what}; attempt {next} started"), None, None);
            }
            if *age >= wait {
                Decision {
                    actions: vec![Action::CreateNextAttempt { attempt: next }],
                    ..failed(
                        format!("{what}; starting attempt {next}"),
                        Some("Retrying"),
                        None,
                    )
                }
            } else {
                let remaining = wait - *age;
                Decision {
                    requeue_after: Some(remaining),
                    ..failed(
                        format!("{what}; attempt {next} in {}s", remaining.as_secs().max(1)),
                        Some("BackingOff"),
                        None,
                    )
                }
            }
        }
    }
}

/// A first attempt whose own build failed reports its newest retry: what the plugin is, as
/// `kubectl get plugins`, a health check on the declared Plugin or an alert on
/// `phase=BuildFailed` should read it. It starts nothing; the retry carries on.
fn reports_retry(own_failure: String, retry: &RetryView, endpoint: String) -> Decision {
    let phase = retry.phase.unwrap_or(PluginPhase::Pending);
    let state = if retry.message.is_empty() {
        format!("{phase:?}")
    } else {
        retry.message.clone()
    };
    let message = format!(
        "{own_failure}; attempt {} ({}): {state}",
        retry.attempt, retry.name
    );
    let ready = if retry.ready {
        (true, "Available")
    } else if retry.stalled {
        (false, "RetryStalled")
    } else {
        (false, "Retrying")
    };
    let reconciling = (retry.reconciling && !retry.ready).then_some("Retrying");
    let stalled = retry.stalled.then_some("RetryStalled");
    Decision {
        endpoint: (phase == PluginPhase::Running).then_some(endpoint),
        current_attempt: Some(retry.name.clone()),
        ..Decision::new(phase, message, ready, reconciling, stalled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plugsync_core::crd::{BuildRef, PackageRef, RunnerSpec};

    fn spec(attempt: u32, image_digest: Option<&str>) -> PluginSpec {
        PluginSpec {
            plugin_set: "team".into(),
            name: "langgenius/agent".into(),
            version: "0.0.14".into(),
            unique_identifier: "langgenius/agent:0.0.14@abc".into(),
            plugin_id: "d62e5e95afbb7da9993d56f58e120ce5".into(),
            attempt,
            package: PackageRef {
                source: "path:x".into(),
                sha256: "a".repeat(64),
                checksum: "b".repeat(64),
            },
            runner: RunnerSpec {
                language: "python".into(),
                version: "3.12".into(),
                entrypoint: "main".into(),
            },
            build: BuildRef {
                context_sha256: "c".repeat(64),
                inputs_hash: "d".repeat(64),
                image: "registry.local:5000/plugins/agent-d62e:0.0.14".into(),
            },
            runtime: Default::default(),
            image_digest: image_digest.map(str::to_string),
            templates: None,
        }
    }

    fn observed(spec: &PluginSpec) -> Observed<'_> {
        Observed {
            spec,
            namespace: "dify",
            recorded_digest: None,
            registry_has_digest: None,
            job: JobState::Absent,
            deployment: DeploymentState::Absent,
            service_exists: false,
            next_attempt_exists: false,
            latest_retry: None,
            superseded: None,
            max_attempts: 3,
            backoff: Backoff {
                base: Duration::from_secs(30),
                cap: Duration::from_secs(600),
            },
        }
    }

    fn condition(d: &Decision, type_: &str) -> (bool, &'static str) {
        let c = d
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
            .expect("condition present");
        (c.status, c.reason)
    }

    const DIGEST: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

    #[test]
    fn a_new_plugin_starts_its_build() {
        let s = spec(1, None);
        let d = decide(&observed(&s));
        assert_eq!(d.phase, PluginPhase::Building);
        assert_eq!(d.actions, vec![Action::CreateJob]);
        assert_eq!(condition(&d, "Ready"), (false, "Building"));
        assert_eq!(condition(&d, "Reconciling"), (true, "Building"));
        assert!(!condition(&d, "Stalled").0);
    }

    #[test]
    fn a_running_build_waits_for_the_job() {
        let s = spec(1, None);
        let d = decide(&Observed {
            job: JobState::Running,
            ..observed(&s)
        });
        assert_eq!(d.phase, PluginPhase::Building);
        assert!(d.actions.is_empty());
        assert_eq!(d.requeue_after, None, "the Job watch wakes us");
    }

    #[test]
    fn a_finished_build_deploys_the_image_by_digest() {
        let s = spec(1, None);
        let d = decide(&Observed {
            job: JobState::Succeeded {
                digest: Some(DIGEST.into()),
            },
            ..observed(&s)
        });
        assert_eq!(d.image_digest.as_deref(), Some(DIGEST));
        assert_eq!(
            d.actions,
            vec![
                Action::ApplyDeployment {
                    image: format!("registry.local:5000/plugins/agent-d62e@{DIGEST}")
                },
                Action::CreateService,
            ]
        );
        assert_eq!(condition(&d, "Reconciling"), (true, "RollingOut"));
    }

    #[test]
    fn an_available_deployment_is_running_with_its_endpoint() {
        let s = spec(1, None);
        let d = decide(&Observed {
            job: JobState::Succeeded {
                digest: Some(DIGEST.into()),
            },
            deployment: DeploymentState::Available,
            service_exists: true,
            ..observed(&s)
        });
        assert_eq!(d.phase, PluginPhase::Running);
        assert_eq!(
            d.endpoint.as_deref(),
            Some("http://svc-d62e5e95afbb7da9993d56f58e120ce5.dify:8080")
        );
        assert!(d.actions.is_empty());
        assert_eq!(condition(&d, "Ready"), (true, "Available"));
        assert!(!condition(&d, "Reconciling").0);
        assert!(!condition(&d, "Stalled").0);
    }

    #[test]
    fn a_failed_build_backs_off_then_starts_the_next_attempt() {
        let s = spec(1, None);
        let failed = |age| JobState::Failed {
            reason: "BackoffLimitExceeded".into(),
            message: "error building image".into(),
            age: Duration::from_secs(age),
        };
        let d = decide(&Observed {
            job: failed(10),
            ..observed(&s)
        });
        assert_eq!(d.phase, PluginPhase::BuildFailed);
        assert!(d.actions.is_empty());
        assert_eq!(d.requeue_after, Some(Duration::from_secs(20)));
        assert_eq!(condition(&d, "Reconciling"), (true, "BackingOff"));
        assert!(d.message.contains("error building image"), "{}", d.message);

        let d = decide(&Observed {
            job: failed(30),
            ..observed(&s)
        });
        assert_eq!(d.actions, vec![Action::CreateNextAttempt { attempt: 2 }]);

        let d = decide(&Observed {
            job: failed(300),
            next_attempt_exists: true,
            ..observed(&s)
        });
        assert!(d.actions.is_empty(), "never two next attempts");
    }

    #[test]
    fn the_last_attempt_failing_stalls() {
        let s = spec(3, None);
        let d = decide(&Observed {
            job: JobState::Failed {
                reason: "Error".into(),
                message: "pip failed".into(),
                age: Duration::from_secs(9999),
            },
            ..observed(&s)
        });
        assert!(d.actions.is_empty());
        assert_eq!(condition(&d, "Stalled"), (true, "MaxAttemptsReached"));
        assert!(
            d.message.contains("no attempts left (3 of 3)"),
            "{}",
            d.message
        );
    }

    #[test]
    fn a_known_digest_still_in_the_registry_skips_the_build() {
        let s = spec(1, Some(DIGEST));
        let d = decide(&Observed {
            registry_has_digest: Some(true),
            ..observed(&s)
        });
        assert_eq!(d.phase, PluginPhase::Pending);
        assert!(!d.actions.contains(&Action::CreateJob));
        assert!(matches!(d.actions[0], Action::ApplyDeployment { .. }));
    }

    #[test]
    fn a_known_digest_gone_from_the_registry_is_rebuilt() {
        let s = spec(1, Some(DIGEST));
        let d = decide(&Observed {
            registry_has_digest: Some(false),
            ..observed(&s)
        });
        assert_eq!(d.actions, vec![Action::CreateJob]);
        assert!(d.message.contains("gone from the registry"));
    }

    #[test]
    fn a_digest_gone_from_the_registry_is_not_deployed_while_it_is_rebuilt() {
        // The registry said the known digest is gone, so a Job was created; the reconciles
        // after that see the Job (and no longer ask the registry).
        let s = spec(1, Some(DIGEST));
        let building = decide(&Observed {
            recorded_digest: Some(DIGEST),
            job: JobState::Running,
            ..observed(&s)
        });
        assert_eq!(building.phase, PluginPhase::Building);
        assert!(building.actions.is_empty(), "{:?}", building.actions);
        assert_eq!(building.image_digest, None);
        let failed = decide(&Observed {
            job: JobState::Failed {
                reason: "BackoffLimitExceeded".into(),
                message: "error building image".into(),
                age: Duration::ZERO,
            },
            ..observed(&s)
        });
        assert_eq!(failed.phase, PluginPhase::BuildFailed);
        assert!(failed.actions.is_empty(), "{:?}", failed.actions);
        let built = decide(&Observed {
            job: JobState::Succeeded {
                digest: Some(format!("sha256:{}", "2".repeat(64))),
            },
            ..observed(&s)
        });
        assert_eq!(
            built.image_digest,
            Some(format!("sha256:{}", "2".repeat(64))),
            "what it built, not the lost digest"
        );
    }

    #[test]
    fn a_build_without_a_digest_is_a_failure_not_a_loop() {
        let s = spec(1, None);
        let d = decide(&Observed {
            job: JobState::Succeeded { digest: None },
            ..observed(&s)
        });
        assert_eq!(d.phase, PluginPhase::BuildFailed);
        assert_eq!(condition(&d, "Stalled"), (true, "NoDigest"));
    }

    #[test]
    fn deployment_failures_and_outdated_images() {
        let s = spec(1, Some(DIGEST));
        let d = decide(&Observed {
            deployment: DeploymentState::Failed {
                message: "ProgressDeadlineExceeded".into(),
            },
            service_exists: true,
            ..observed(&s)
        });
        assert_eq!(d.phase, PluginPhase::Failed);
        assert_eq!(condition(&d, "Stalled"), (true, "DeploymentFailed"));
        let d = decide(&Observed {
            deployment: DeploymentState::Outdated,
            service_exists: true,
            ..observed(&s)
        });
        assert!(matches!(
            d.actions.as_slice(),
            [Action::ApplyDeployment { .. }]
        ));
    }

    #[test]
    fn a_job_built_from_stale_inputs_is_replaced_whatever_its_state() {
        let s = spec(1, None);
        let mut o = observed(&s);
        o.job = JobState::Stale;
        // Even with a recorded digest and a running Deployment: the digest belongs to the
        // old inputs only if the edge said so, and the stale Job must go first.
        o.deployment = DeploymentState::Available;
        let d = decide(&o);
        assert_eq!(d.actions, vec![Action::DeleteJob]);
        assert_eq!(d.phase, PluginPhase::Building);
        assert_eq!(condition(&d, "Reconciling"), (true, "InputsChanged"));
        assert!(d.requeue_after.is_some());
    }

    #[test]
    fn a_superseded_retry_does_nothing_more_but_reports_whether_it_still_serves() {
        let s = spec(2, None);
        let mut o = observed(&s);
        o.superseded = Some(Superseded::NewInputs);
        o.job = JobState::Failed {
            reason: "Error".into(),
            message: "pip failed".into(),
            age: Duration::from_secs(3600),
        };
        let idle = decide(&o);
        assert!(idle.actions.is_empty(), "no retry of an old commit");
        assert_eq!(idle.phase, PluginPhase::Pending);
        assert_eq!(condition(&idle, "Ready"), (false, "Superseded"));
        assert!(!condition(&idle, "Stalled").0);

        o.job = JobState::Succeeded {
            digest: Some(DIGEST.into()),
        };
        o.deployment = DeploymentState::Available;
        let serving = decide(&o);
        assert!(serving.actions.is_empty());
        assert_eq!(serving.phase, PluginPhase::Running);
        assert!(serving.endpoint.is_some());
    }

    fn failed_build() -> JobState {
        JobState::Failed {
            reason: "BackoffLimitExceeded".into(),
            message: "pip failed".into(),
            age: Duration::from_secs(3600),
        }
    }

    fn retry(
        phase: Option<PluginPhase>,
        ready: bool,
        reconciling: bool,
        stalled: bool,
    ) -> RetryView {
        RetryView {
            name: "d62e5e95afbb7da9993d56f58e120ce5--2".into(),
            attempt: 2,
            phase,
            ready,
            reconciling,
            stalled,
            message: "Deployment available".into(),
        }
    }

    #[test]
    fn a_first_attempt_whose_retry_runs_reads_running_not_build_failed() {
        let s = spec(1, None);
        let d = decide(&Observed {
            job: failed_build(),
            next_attempt_exists: true,
            latest_retry: Some(retry(Some(PluginPhase::Running), true, false, false)),
            ..observed(&s)
        });
        assert_eq!(d.phase, PluginPhase::Running);
        assert!(d.actions.is_empty(), "{:?}", d.actions);
        assert_eq!(
            d.endpoint.as_deref(),
            Some("http://svc-d62e5e95afbb7da9993d56f58e120ce5.dify:8080"),
            "the Service is the same for every attempt"
        );
        assert_eq!(condition(&d, "Ready"), (true, "Available"));
        assert!(!condition(&d, "Reconciling").0);
        assert!(!condition(&d, "Stalled").0);
        assert_eq!(
            d.current_attempt.as_deref(),
            Some("d62e5e95afbb7da9993d56f58e120ce5--2")
        );
        assert_eq!(d.image_digest, None, "the retry's digest is the retry's");
        assert!(
            d.message.contains("build attempt 1 failed") && d.message.contains("pip failed"),
            "its own failure is still said: {}",
            d.message
        );
        assert!(d.message.contains("attempt 2"), "{}", d.message);
    }

    #[test]
    fn a_first_attempt_reports_a_retry_in_progress_or_stalled() {
        let s = spec(1, None);
        let building = decide(&Observed {
            job: failed_build(),
            next_attempt_exists: true,
            latest_retry: Some(retry(Some(PluginPhase::Building), false, true, false)),
            ..observed(&s)
        });
        assert_eq!(building.phase, PluginPhase::Building);
        assert_eq!(condition(&building, "Ready"), (false, "Retrying"));
        assert_eq!(condition(&building, "Reconciling"), (true, "Retrying"));
        assert_eq!(building.endpoint, None);
        let fresh = decide(&Observed {
            job: failed_build(),
            next_attempt_exists: true,
            latest_retry: Some(retry(None, false, true, false)),
            ..observed(&s)
        });
        assert_eq!(fresh.phase, PluginPhase::Pending);
        assert!(condition(&fresh, "Reconciling").0);
        let stalled = decide(&Observed {
            job: failed_build(),
            next_attempt_exists: true,
            latest_retry: Some(retry(Some(PluginPhase::BuildFailed), false, false, true)),
            ..observed(&s)
        });
        assert_eq!(
            stalled.phase,
            PluginPhase::BuildFailed,
            "an alert on BuildFailed fires when no attempt runs"
        );
        assert_eq!(condition(&stalled, "Stalled"), (true, "RetryStalled"));
        assert!(stalled.actions.is_empty());
    }

    #[test]
    fn a_retry_reports_itself_not_its_successor() {
        let s = spec(2, None);
        let d = decide(&Observed {
            job: failed_build(),
            next_attempt_exists: true,
            latest_retry: Some(retry(Some(PluginPhase::Running), true, false, false)),
            ..observed(&s)
        });
        assert_eq!(d.phase, PluginPhase::BuildFailed);
        assert_eq!(d.current_attempt, None);
    }

    #[test]
    fn a_failed_first_attempt_runs_a_digest_pinned_after_the_failure() {
        // A retry built the image and plugins.lock pins it: attempt 1 runs it (as on a fresh
        // cluster) once the registry confirms it, and its retries are superseded.
        let s = spec(1, Some(DIGEST));
        let running_retry = Some(retry(Some(PluginPhase::Running), true, false, false));
        let d = decide(&Observed {
            job: failed_build(),
            registry_has_digest: Some(true),
            next_attempt_exists: true,
            latest_retry: running_retry.clone(),
            service_exists: true,
            ..observed(&s)
        });
        assert_eq!(
            d.actions,
            vec![Action::ApplyDeployment {
                image: format!("registry.local:5000/plugins/agent-d62e@{DIGEST}")
            }]
        );
        assert_eq!(d.image_digest.as_deref(), Some(DIGEST));
        assert_eq!(d.current_attempt, None, "it reports itself again");

        // Not a digest the registry lost (the build was its replacement), nor one it could
        // not confirm: then it keeps reporting the retry, and deploys nothing.
        for answer in [Some(false), None] {
            let d = decide(&Observed {
                job: failed_build(),
                registry_has_digest: answer,
                next_attempt_exists: true,
                latest_retry: running_retry.clone(),
                service_exists: true,
                ..observed(&s)
            });
            assert!(d.actions.is_empty(), "{answer:?}: {:?}", d.actions);
            assert!(d.current_attempt.is_some(), "{answer:?}");
        }
    }

    #[test]
    fn a_retry_superseded_by_its_running_first_attempt_does_nothing_more() {
        let s = spec(2, None);
        let mut o = observed(&s);
        o.superseded = Some(Superseded::FirstAttemptRuns);
        o.job = failed_build();
        let d = decide(&o);
        assert!(d.actions.is_empty(), "no attempt 3: {:?}", d.actions);
        assert!(d.message.contains("attempt 1 runs"), "{}", d.message);
        o.job = JobState::Running;
        assert!(decide(&o).actions.is_empty(), "no Deployment either");
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let b = Backoff {
            base: Duration::from_secs(30),
            cap: Duration::from_secs(600),
        };
        let secs: Vec<u64> = (2..=8).map(|n| b.before_attempt(n).as_secs()).collect();
        assert_eq!(secs, vec![30, 60, 120, 240, 480, 600, 600]);
        assert_eq!(b.before_attempt(100).as_secs(), 600);
    }
}
