//! Prometheus metrics of an in-cluster plugsync, served as OpenMetrics text on `/metrics`.
//!
//! One [`Metrics`] lives for the whole process, shared in an `Arc` between the reconciler
//! (which records) and the HTTP server (which encodes). Every series is prefixed `plugsync_`.
//! Label values are closed enums, so the number of series is fixed and small: a scrape never
//! grows with the number of plugins, commits or errors seen.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// The `Content-Type` of [`Metrics::encode`]'s output, for the `/metrics` response.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds (seconds) of the duration histograms: a no-op reconcile takes milliseconds, a
/// large first apply or a slow git host minutes; past 5 minutes only `+Inf` matters.
const DURATION_BUCKETS: [f64; 14] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// The plugin phases always exported by `plugsync_plugins`, so a phase that empties drops to
/// 0 instead of keeping its last value (or vanishing, which breaks `sum` over time).
pub(crate) const PLUGIN_PHASES: [&str; 5] =
    ["Pending", "Building", "Running", "BuildFailed", "Failed"];

/// How one reconcile of the declared state ended: the `result` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReconcileResult {
    /// Changes were applied to the cluster.
    Applied,
    /// The cluster already matched the commit.
    Unchanged,
    /// The commit itself is bad (invalid plugins.yaml, stale lock): fixing needs a new commit.
    Invalid,
    /// The commit is fine but the cluster or the apply failed: a retry may succeed.
    Failed,
    /// Reconciling is suspended by configuration; nothing was attempted.
    Suspended,
}

impl ReconcileResult {
    /// Every value, to pre-create the series at 0.
    pub const ALL: [Self; 5] = [
        Self::Applied,
        Self::Unchanged,
        Self::Invalid,
        Self::Failed,
        Self::Suspended,
    ];

    /// The label value, stable for dashboards and alerts.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Unchanged => "unchanged",
            Self::Invalid => "invalid",
            Self::Failed => "failed",
            Self::Suspended => "suspended",
        }
    }
}

/// How one git fetch ended: the `outcome` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FetchOutcome {
    /// The branch still points at the commit already seen.
    Unchanged,
    /// A new commit was fetched.
    Fetched,
    /// The fetch failed (network, auth, missing branch).
    Failed,
}

impl FetchOutcome {
    /// Every value, to pre-create the series at 0.
    pub const ALL: [Self; 3] = [Self::Unchanged, Self::Fetched, Self::Failed];

    /// The label value, stable for dashboards and alerts.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unchanged => "unchanged",
            Self::Fetched => "fetched",
            Self::Failed => "failed",
        }
    }
}

/// How one plugin image build ended: the `result` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BuildResult {
    /// The build Job pushed the image.
    Succeeded,
    /// The build Job failed or timed out.
    Failed,
    /// No build ran: an image built from the same inputs was found in the registry.
    Reused,
}

impl BuildResult {
    /// Every value, to pre-create the series at 0.
    pub const ALL: [Self; 3] = [Self::Succeeded, Self::Failed, Self::Reused];

    /// The label value, stable for dashboards and alerts.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Reused => "reused",
        }
    }
}

macro_rules! label_value {
    ($($t:ty),*) => {$(
        impl EncodeLabelValue for $t {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
                encoder.write_str(self.as_str())
            }
        }
    )*};
}
label_value!(ReconcileResult, FetchOutcome, BuildResult);

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResultLabel {
    result: ReconcileResult,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct BuildLabel {
    result: BuildResult,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: FetchOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PhaseLabel {
    phase: String,
}

/// Builds the duration histograms of a family; a named type because `Family` needs one.
#[derive(Debug, Clone, Copy)]
struct DurationHistogram;

impl MetricConstructor<Histogram> for DurationHistogram {
    fn new_metric(&self) -> Histogram {
        Histogram::new(DURATION_BUCKETS)
    }
}

/// The process's metrics and their registry. Recording is lock-free (atomics) except for
/// [`Metrics::set_plugins_by_phase`]; share it as `Arc<Metrics>`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    reconcile_duration: Family<ResultLabel, Histogram, DurationHistogram>,
    reconciles: Family<ResultLabel, Counter>,
    git_fetch_duration: Family<OutcomeLabel, Histogram, DurationHistogram>,
    git_fetches: Family<OutcomeLabel, Counter>,
    git_fetch_failures: Counter,
    builds: Family<BuildLabel, Counter>,
    plugins: Family<PhaseLabel, Gauge>,
    /// Phases ever exported, so one that leaves the list is reset to 0. Also serializes
    /// concurrent [`Metrics::set_plugins_by_phase`] calls so their updates never interleave.
    phases_seen: Mutex<BTreeSet<String>>,
    leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every plugsync metric registered and the closed label sets at 0, so
    /// alerts on `rate(...)` and `absent(...)` work before the first event.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("plugsync");
        let reconcile_duration = Family::new_with_constructor(DurationHistogram);
        registry.register_with_unit(
            "reconcile_duration",
            "Time taken by one reconcile of the declared state, by result",
            Unit::Seconds,
            reconcile_duration.clone(),
        );
        let reconciles = Family::<ResultLabel, Counter>::default();
        registry.register("reconciles", "Reconciles, by result", reconciles.clone());
        let git_fetch_duration = Family::new_with_constructor(DurationHistogram);
        registry.register_with_unit(
            "git_fetch_duration",
            "Time taken by one git fetch, by outcome",
            Unit::Seconds,
            git_fetch_duration.clone(),
        );
        let git_fetches = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "git_fetches",
            "Git fetches, by outcome",
            git_fetches.clone(),
        );
        let git_fetch_failures = Counter::default();
        registry.register(
            "git_fetch_failures",
            "Git fetches that failed",
            git_fetch_failures.clone(),
        );
        let builds = Family::<BuildLabel, Counter>::default();
        registry.register("builds", "Plugin image builds, by result", builds.clone());
        let plugins = Family::<PhaseLabel, Gauge>::default();
        registry.register(
            "plugins",
            "Plugin installs, by lifecycle phase",
            plugins.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the leader lease, else 0",
            leader.clone(),
        );

        for result in ReconcileResult::ALL {
            let _ = reconciles.get_or_create(&ResultLabel { result });
        }
        for outcome in FetchOutcome::ALL {
            let _ = git_fetches.get_or_create(&OutcomeLabel { outcome });
        }
        for result in BuildResult::ALL {
            let _ = builds.get_or_create(&BuildLabel { result });
        }
        for phase in PLUGIN_PHASES {
            let _ = plugins.get_or_create(&PhaseLabel {
                phase: phase.to_owned(),
            });
        }
        Self {
            registry,
            reconcile_duration,
            reconciles,
            git_fetch_duration,
            git_fetches,
            git_fetch_failures,
            builds,
            plugins,
            phases_seen: Mutex::new(PLUGIN_PHASES.iter().map(|p| (*p).to_owned()).collect()),
            leader,
        }
    }

    /// Records one finished reconcile: its duration and its result.
    pub fn observe_reconcile(&self, duration: Duration, result: ReconcileResult) {
        let label = ResultLabel { result };
        self.reconcile_duration
            .get_or_create(&label)
            .observe(duration.as_secs_f64());
        self.reconciles.get_or_create(&label).inc();
    }

    /// Records one finished git fetch; a failed one also counts in
    /// `plugsync_git_fetch_failures_total`, the series to alert on.
    pub(crate) fn observe_git_fetch(&self, duration: Duration, outcome: FetchOutcome) {
        let label = OutcomeLabel { outcome };
        self.git_fetch_duration
            .get_or_create(&label)
            .observe(duration.as_secs_f64());
        self.git_fetches.get_or_create(&label).inc();
        if outcome == FetchOutcome::Failed {
            self.git_fetch_failures.inc();
        }
    }

    /// Records one finished (or skipped, [`BuildResult::Reused`]) plugin image build.
    pub fn build_finished(&self, result: BuildResult) {
        self.builds.get_or_create(&BuildLabel { result }).inc();
    }

    /// Replaces the plugin counts by phase with a fresh snapshot: every phase not in `counts`
    /// (the [`PLUGIN_PHASES`] and any phase set before) drops to 0. A phase listed twice
    /// counts the sum.
    pub fn set_plugins_by_phase(&self, counts: &[(&str, i64)]) {
        let mut seen = self
            .phases_seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut totals: std::collections::BTreeMap<&str, i64> =
            seen.iter().map(|p| (p.as_str(), 0)).collect();
        for (phase, count) in counts {
            *totals.entry(phase).or_insert(0) += count;
        }
        for (phase, total) in &totals {
            self.plugins
                .get_or_create(&PhaseLabel {
                    phase: (*phase).to_owned(),
                })
                .set(*total);
        }
        let new: Vec<String> = totals
            .keys()
            .filter(|p| !seen.contains(**p))
            .map(|p| (*p).to_owned())
            .collect();
        seen.extend(new);
    }

    /// Records whether this replica leads: exactly one replica should report 1.
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// Every metric in the OpenMetrics text format (ending in `# EOF`), for `/metrics`.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail; the encoder only fails on writer errors.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(text: &str, prefix: &str) -> Option<String> {
        text.lines()
            .find(|l| l.starts_with(prefix) && l[prefix.len()..].starts_with(' '))
            .map(str::to_owned)
    }

    fn value(text: &str, series: &str) -> f64 {
        let l = line(text, series).unwrap_or_else(|| panic!("no series {series} in\n{text}"));
        l[series.len()..].trim().parse().expect("number")
    }

    #[test]
    fn fresh_metrics_export_every_closed_series_at_zero() {
        let text = Metrics::new().encode();
        assert!(text.ends_with("# EOF\n"), "{text}");
        for r in ["applied", "unchanged", "invalid", "failed", "suspended"] {
            assert_eq!(
                value(
                    &text,
                    &format!("plugsync_reconciles_total{{result=\"{r}\"}}")
                ),
                0.0
            );
        }
        for o in ["unchanged", "fetched", "failed"] {
            assert_eq!(
                value(
                    &text,
                    &format!("plugsync_git_fetches_total{{outcome=\"{o}\"}}")
                ),
                0.0
            );
        }
        for r in ["succeeded", "failed", "reused"] {
            assert_eq!(
                value(&text, &format!("plugsync_builds_total{{result=\"{r}\"}}")),
                0.0
            );
        }
        for p in PLUGIN_PHASES {
            assert_eq!(
                value(&text, &format!("plugsync_plugins{{phase=\"{p}\"}}")),
                0.0
            );
        }
        assert_eq!(value(&text, "plugsync_git_fetch_failures_total"), 0.0);
        assert_eq!(value(&text, "plugsync_leader"), 0.0);
        assert!(text.contains("# TYPE plugsync_reconcile_duration_seconds histogram"));
        assert!(text.contains("# UNIT plugsync_reconcile_duration_seconds seconds"));
    }

    #[test]
    fn reconcile_is_a_histogram_and_a_counter_by_result() {
        let m = Metrics::new();
        m.observe_reconcile(Duration::from_millis(20), ReconcileResult::Applied);
        m.observe_reconcile(Duration::from_secs(90), ReconcileResult::Applied);
        m.observe_reconcile(Duration::from_secs(1), ReconcileResult::Invalid);
        let text = m.encode();
        let h = "plugsync_reconcile_duration_seconds";
        assert_eq!(
            value(&text, &format!("{h}_count{{result=\"applied\"}}")),
            2.0
        );
        assert_eq!(
            value(&text, &format!("{h}_sum{{result=\"applied\"}}")),
            90.02
        );
        assert_eq!(
            value(
                &text,
                &format!("{h}_bucket{{le=\"0.01\",result=\"applied\"}}")
            ),
            0.0
        );
        assert_eq!(
            value(
                &text,
                &format!("{h}_bucket{{le=\"0.025\",result=\"applied\"}}")
            ),
            1.0
        );
        assert_eq!(
            value(
                &text,
                &format!("{h}_bucket{{le=\"60.0\",result=\"applied\"}}")
            ),
            1.0
        );
        assert_eq!(
            value(
                &text,
                &format!("{h}_bucket{{le=\"120.0\",result=\"applied\"}}")
            ),
            2.0
        );
        assert_eq!(
            value(
                &text,
                &format!("{h}_bucket{{le=\"+Inf\",result=\"applied\"}}")
            ),
            2.0
        );
        assert_eq!(
            value(&text, &format!("{h}_count{{result=\"invalid\"}}")),
            1.0
        );
        assert_eq!(
            value(&text, "plugsync_reconciles_total{result=\"applied\"}"),
            2.0
        );
        assert_eq!(
            value(&text, "plugsync_reconciles_total{result=\"invalid\"}"),
            1.0
        );
        assert_eq!(
            value(&text, "plugsync_reconciles_total{result=\"failed\"}"),
            0.0
        );
    }

    #[test]
    fn failed_git_fetches_count_twice_and_others_once() {
        let m = Metrics::new();
        m.observe_git_fetch(Duration::from_millis(300), FetchOutcome::Fetched);
        m.observe_git_fetch(Duration::from_millis(100), FetchOutcome::Unchanged);
        m.observe_git_fetch(Duration::from_secs(30), FetchOutcome::Failed);
        m.observe_git_fetch(Duration::from_secs(30), FetchOutcome::Failed);
        let text = m.encode();
        for (o, n) in [("fetched", 1.0), ("unchanged", 1.0), ("failed", 2.0)] {
            assert_eq!(
                value(
                    &text,
                    &format!("plugsync_git_fetches_total{{outcome=\"{o}\"}}")
                ),
                n
            );
            assert_eq!(
                value(
                    &text,
                    &format!("plugsync_git_fetch_duration_seconds_count{{outcome=\"{o}\"}}")
                ),
                n
            );
        }
        assert_eq!(value(&text, "plugsync_git_fetch_failures_total"), 2.0);
        assert_eq!(
            value(
                &text,
                "plugsync_git_fetch_duration_seconds_sum{outcome=\"failed\"}"
            ),
            60.0
        );
    }

    #[test]
    fn builds_count_by_result() {
        let m = Metrics::new();
        m.build_finished(BuildResult::Succeeded);
        m.build_finished(BuildResult::Reused);
        m.build_finished(BuildResult::Reused);
        let text = m.encode();
        assert_eq!(
            value(&text, "plugsync_builds_total{result=\"succeeded\"}"),
            1.0
        );
        assert_eq!(
            value(&text, "plugsync_builds_total{result=\"reused\"}"),
            2.0
        );
        assert_eq!(
            value(&text, "plugsync_builds_total{result=\"failed\"}"),
            0.0
        );
    }

    #[test]
    fn plugins_by_phase_is_a_snapshot_that_resets_missing_phases() {
        let m = Metrics::new();
        m.set_plugins_by_phase(&[("Running", 3), ("Building", 1), ("Unknown", 2)]);
        let text = m.encode();
        assert_eq!(value(&text, "plugsync_plugins{phase=\"Running\"}"), 3.0);
        assert_eq!(value(&text, "plugsync_plugins{phase=\"Building\"}"), 1.0);
        assert_eq!(value(&text, "plugsync_plugins{phase=\"Unknown\"}"), 2.0);
        assert_eq!(value(&text, "plugsync_plugins{phase=\"Pending\"}"), 0.0);

        m.set_plugins_by_phase(&[("Running", 4), ("Failed", 1), ("Failed", 1)]);
        let text = m.encode();
        assert_eq!(value(&text, "plugsync_plugins{phase=\"Running\"}"), 4.0);
        assert_eq!(value(&text, "plugsync_plugins{phase=\"Failed\"}"), 2.0);
        assert_eq!(value(&text, "plugsync_plugins{phase=\"Building\"}"), 0.0);
        assert_eq!(value(&text, "plugsync_plugins{phase=\"Unknown\"}"), 0.0);
    }

    #[test]
    fn leader_flips_between_one_and_zero() {
        let m = Metrics::new();
        m.set_leader(true);
        assert_eq!(value(&m.encode(), "plugsync_leader"), 1.0);
        m.set_leader(false);
        assert_eq!(value(&m.encode(), "plugsync_leader"), 0.0);
    }
}
