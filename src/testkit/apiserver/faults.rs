//! Fault injection and request statistics.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// The verb of an API request, as the apiserver's audit log names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verb {
    /// GET of one object (or its status).
    Get,
    /// GET of a collection.
    List,
    /// GET of a collection with `watch=true`.
    Watch,
    /// POST.
    Create,
    /// PUT.
    Update,
    /// PATCH other than server-side apply.
    Patch,
    /// PATCH with `application/apply-patch+yaml`.
    Apply,
    /// DELETE (of one object or a collection).
    Delete,
    /// Discovery, `/version`, OpenAPI: anything that is not a resource request.
    Other,
}

impl Verb {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Watch => "watch",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Patch => "patch",
            Verb::Apply => "apply",
            Verb::Delete => "delete",
            Verb::Other => "other",
        }
    }

    /// Whether the verb writes.
    pub fn is_write(self) -> bool {
        matches!(
            self,
            Verb::Create | Verb::Update | Verb::Patch | Verb::Apply | Verb::Delete
        )
    }
}

/// Request counts per verb.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerbCounts {
    /// GET one.
    pub get: u64,
    /// GET collection.
    pub list: u64,
    /// Watches opened.
    pub watch: u64,
    /// POST.
    pub create: u64,
    /// PUT.
    pub update: u64,
    /// PATCH (not apply).
    pub patch: u64,
    /// Server-side apply.
    pub apply: u64,
    /// DELETE.
    pub delete: u64,
    /// Discovery, version, OpenAPI.
    pub other: u64,
}

impl VerbCounts {
    fn bump(&mut self, v: Verb) {
        let c = match v {
            Verb::Get => &mut self.get,
            Verb::List => &mut self.list,
            Verb::Watch => &mut self.watch,
            Verb::Create => &mut self.create,
            Verb::Update => &mut self.update,
            Verb::Patch => &mut self.patch,
            Verb::Apply => &mut self.apply,
            Verb::Delete => &mut self.delete,
            Verb::Other => &mut self.other,
        };
        *c += 1;
    }

    /// create + update + patch + apply + delete.
    pub fn writes(&self) -> u64 {
        self.create + self.update + self.patch + self.apply + self.delete
    }
}

/// A snapshot of request statistics since start (or the last reset).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Requests without `dryRun` (including ones that failed).
    pub real: VerbCounts,
    /// Requests with `dryRun=All`.
    pub dry_run: VerbCounts,
    /// Non-dry-run write requests (create, update, patch, apply, delete).
    pub writes: u64,
    /// Write requests that changed stored state (a no-op apply is a write but not a mutation).
    pub mutations: u64,
    /// Requests answered by an injected failure.
    pub injected_failures: u64,
}

impl Stats {
    /// Requests of one verb, dry-run or not.
    pub fn total(&self, v: Verb) -> u64 {
        let pick = |c: &VerbCounts| match v {
            Verb::Get => c.get,
            Verb::List => c.list,
            Verb::Watch => c.watch,
            Verb::Create => c.create,
            Verb::Update => c.update,
            Verb::Patch => c.patch,
            Verb::Apply => c.apply,
            Verb::Delete => c.delete,
            Verb::Other => c.other,
        };
        pick(&self.real) + pick(&self.dry_run)
    }
}

/// Shared, thread-safe statistics.
#[derive(Debug, Clone, Default)]
pub(crate) struct StatsCell(Arc<Mutex<Stats>>);

impl StatsCell {
    pub fn snapshot(&self) -> Stats {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
    pub fn update(&self, f: impl FnOnce(&mut Stats)) {
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
    pub fn count(&self, verb: Verb, dry_run: bool) {
        self.update(|s| {
            if dry_run {
                s.dry_run.bump(verb)
            } else {
                s.real.bump(verb);
                if verb.is_write() {
                    s.writes += 1;
                }
            }
        })
    }
    pub fn reset(&self) {
        self.update(|s| *s = Stats::default())
    }
}

/// Which requests a fault applies to; the default matches every API request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Match {
    /// Only requests with this verb.
    #[serde(default)]
    pub verb: Option<Verb>,
    /// Only requests whose path contains this string.
    #[serde(default)]
    pub path_contains: Option<String>,
}

impl Match {
    /// Matches one verb.
    pub fn verb(v: Verb) -> Self {
        Match {
            verb: Some(v),
            path_contains: None,
        }
    }

    /// Matches a path substring.
    pub fn path(p: impl Into<String>) -> Self {
        Match {
            verb: None,
            path_contains: Some(p.into()),
        }
    }

    fn matches(&self, verb: Verb, path: &str) -> bool {
        self.verb.is_none_or(|v| v == verb)
            && self
                .path_contains
                .as_deref()
                .is_none_or(|p| path.contains(p))
    }
}

#[derive(Debug, Clone)]
enum Action {
    Fail(u16),
    Delay(Duration),
}

#[derive(Debug, Clone)]
struct Rule {
    remaining: u32,
    action: Action,
    on: Match,
}

/// What to do with open watch streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WatchControl {
    /// Nothing (initial value).
    None,
    /// Close every open stream.
    Drop,
    /// Send an ERROR 410 event, then close.
    Gone,
}

/// Handle for injecting faults into a running [`ApiServer`](super::ApiServer).
#[derive(Debug, Clone)]
pub struct Faults {
    rules: Arc<Mutex<Vec<Rule>>>,
    watch_ctl: Arc<watch::Sender<(u64, WatchControl)>>,
}

/// A fault in the JSON form `POST /_double/faults` accepts (one object or an array).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum FaultSpec {
    /// `{"action":"fail_next","count":2,"code":503,"verb":"get","pathContains":"/deployments"}`
    FailNext {
        /// How many requests fail.
        count: u32,
        /// HTTP status code returned.
        code: u16,
        /// Only this verb.
        #[serde(default)]
        verb: Option<Verb>,
        /// Only paths containing this.
        #[serde(default, rename = "pathContains")]
        path_contains: Option<String>,
    },
    /// `{"action":"delay_next","count":1,"millis":500}`
    DelayNext {
        /// How many requests are delayed.
        count: u32,
        /// Delay in milliseconds.
        millis: u64,
        /// Only this verb.
        #[serde(default)]
        verb: Option<Verb>,
        /// Only paths containing this.
        #[serde(default, rename = "pathContains")]
        path_contains: Option<String>,
    },
    /// Close every open watch now.
    DropWatches,
    /// Send every open watch an ERROR 410 event and close it.
    FailWatchWithGone,
    /// Remove all pending faults.
    Clear,
}

/// What the server does with a request before serving it.
pub(crate) struct Decision {
    pub delay: Option<Duration>,
    pub fail: Option<u16>,
}

impl Faults {
    pub(crate) fn new() -> Self {
        let (tx, _rx) = watch::channel((0, WatchControl::None));
        Faults {
            rules: Arc::new(Mutex::new(Vec::new())),
            watch_ctl: Arc::new(tx),
        }
    }

    fn push(&self, n: u32, action: Action, on: Match) {
        if n > 0 {
            self.rules
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(Rule {
                    remaining: n,
                    action,
                    on,
                });
        }
    }

    /// The next `n` API requests fail with `code` and a matching `metav1.Status` body
    /// (429 also gets `Retry-After: 1`).
    pub fn fail_next(&self, n: u32, code: u16) {
        self.fail_next_matching(n, code, Match::default())
    }

    /// Like [`fail_next`](Self::fail_next), only for requests that match.
    pub fn fail_next_matching(&self, n: u32, code: u16, on: Match) {
        self.push(n, Action::Fail(code), on)
    }

    /// The next `n` API requests are answered only after `delay`.
    pub fn delay_next(&self, n: u32, delay: Duration) {
        self.delay_next_matching(n, delay, Match::default())
    }

    /// Like [`delay_next`](Self::delay_next), only for requests that match.
    pub fn delay_next_matching(&self, n: u32, delay: Duration, on: Match) {
        self.push(n, Action::Delay(delay), on)
    }

    /// Closes every open watch stream now (clients see a clean end of stream).
    pub fn drop_watches(&self) {
        self.signal(WatchControl::Drop)
    }

    /// Sends every open watch stream an `ERROR` event with a 410 Expired Status, then closes it.
    pub fn fail_watch_with_gone(&self) {
        self.signal(WatchControl::Gone)
    }

    /// Forgets all pending request faults.
    pub fn clear(&self) {
        self.rules.lock().unwrap_or_else(|e| e.into_inner()).clear()
    }

    /// Applies a fault given in its JSON form.
    pub fn apply_spec(&self, spec: &FaultSpec) {
        match spec {
            FaultSpec::FailNext {
                count,
                code,
                verb,
                path_contains,
            } => self.fail_next_matching(
                *count,
                *code,
                Match {
                    verb: *verb,
                    path_contains: path_contains.clone(),
                },
            ),
            FaultSpec::DelayNext {
                count,
                millis,
                verb,
                path_contains,
            } => self.delay_next_matching(
                *count,
                Duration::from_millis(*millis),
                Match {
                    verb: *verb,
                    path_contains: path_contains.clone(),
                },
            ),
            FaultSpec::DropWatches => self.drop_watches(),
            FaultSpec::FailWatchWithGone => self.fail_watch_with_gone(),
            FaultSpec::Clear => self.clear(),
        }
    }

    fn signal(&self, c: WatchControl) {
        self.watch_ctl.send_modify(|(n, v)| {
            *n += 1;
            *v = c;
        });
    }

    pub(crate) fn watch_control(&self) -> watch::Receiver<(u64, WatchControl)> {
        self.watch_ctl.subscribe()
    }

    /// Consumes the matching rules for one request: the first matching delay and failure.
    pub(crate) fn decide(&self, verb: Verb, path: &str) -> Decision {
        let mut rules = self.rules.lock().unwrap_or_else(|e| e.into_inner());
        let mut d = Decision {
            delay: None,
            fail: None,
        };
        for r in rules.iter_mut() {
            if r.remaining == 0 || !r.on.matches(verb, path) {
                continue;
            }
            match r.action {
                Action::Delay(x) if d.delay.is_none() => {
                    d.delay = Some(x);
                    r.remaining -= 1;
                }
                Action::Fail(c) if d.fail.is_none() => {
                    d.fail = Some(c);
                    r.remaining -= 1;
                }
                _ => {}
            }
        }
        rules.retain(|r| r.remaining > 0);
        d
    }
}
