//! A fault-injecting proxy in front of the real API server: clients talk plain HTTP to it on
//! loopback, it forwards every request to kube-apiserver with the admin client certificate,
//! and on the way it counts requests by verb, fails or delays the next matching ones, and
//! closes open watches on demand. Everything else (storage, server-side apply, conflicts,
//! garbage collection) is the real server's.
#![allow(dead_code)] // not every test uses every helper

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use base64::Engine as _;
use futures::StreamExt as _;
use kube::config::Kubeconfig;
use serde_json::json;
use tokio::sync::watch;

/// The verb of an API request, as the apiserver's audit log names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// GET of one object (or a subresource of it).
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
    /// Whether the verb writes.
    pub fn is_write(self) -> bool {
        matches!(
            self,
            Verb::Create | Verb::Update | Verb::Patch | Verb::Apply | Verb::Delete
        )
    }
}

/// Request counts per verb.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VerbCounts {
    pub get: u64,
    pub list: u64,
    pub watch: u64,
    pub create: u64,
    pub update: u64,
    pub patch: u64,
    pub apply: u64,
    pub delete: u64,
    pub other: u64,
}

impl VerbCounts {
    fn slot(&mut self, v: Verb) -> &mut u64 {
        match v {
            Verb::Get => &mut self.get,
            Verb::List => &mut self.list,
            Verb::Watch => &mut self.watch,
            Verb::Create => &mut self.create,
            Verb::Update => &mut self.update,
            Verb::Patch => &mut self.patch,
            Verb::Apply => &mut self.apply,
            Verb::Delete => &mut self.delete,
            Verb::Other => &mut self.other,
        }
    }

    /// create + update + patch + apply + delete.
    pub fn writes(&self) -> u64 {
        self.create + self.update + self.patch + self.apply + self.delete
    }
}

/// What passed through the proxy since it started (or the last reset).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Requests without `dryRun`, including the ones answered by an injected fault.
    pub real: VerbCounts,
    /// Requests with `dryRun=All`.
    pub dry_run: VerbCounts,
    /// Requests answered by an injected failure instead of the server.
    pub injected_failures: u64,
}

impl Stats {
    /// Requests of one verb, dry-run or not.
    pub fn total(&self, v: Verb) -> u64 {
        let (mut real, mut dry) = (self.real, self.dry_run);
        *real.slot(v) + *dry.slot(v)
    }

    /// Non-dry-run writes.
    pub fn writes(&self) -> u64 {
        self.real.writes()
    }
}

/// Which requests a fault applies to; the default matches every resource request.
#[derive(Debug, Clone, Default)]
pub struct Match {
    verb: Option<Verb>,
    path: Option<String>,
}

impl Match {
    /// Only requests with this verb.
    pub fn verb(v: Verb) -> Self {
        Match {
            verb: Some(v),
            path: None,
        }
    }

    /// Only requests whose path contains `p`.
    pub fn path(p: impl Into<String>) -> Self {
        Match {
            verb: None,
            path: Some(p.into()),
        }
    }

    /// Also require the path to contain `p`.
    pub fn and_path(mut self, p: impl Into<String>) -> Self {
        self.path = Some(p.into());
        self
    }

    fn matches(&self, verb: Verb, path: &str) -> bool {
        verb != Verb::Other
            && self.verb.is_none_or(|v| v == verb)
            && self.path.as_deref().is_none_or(|p| path.contains(p))
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
    on: Match,
    action: Action,
}

/// What to do with the watches open now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WatchCut {
    /// Close them (clients see the stream end).
    Close,
    /// Send an `ERROR` event with a 410 Expired Status, then close them.
    Gone,
}

/// The handle tests inject faults through.
#[derive(Clone)]
pub struct Faults {
    rules: Arc<Mutex<Vec<Rule>>>,
    /// Bumped with each cut; every open watch ends at the next bump after it opened.
    cuts: watch::Sender<(u64, WatchCut)>,
}

impl Faults {
    fn push(&self, remaining: u32, on: Match, action: Action) {
        self.rules.lock().expect("rules").push(Rule {
            remaining,
            on,
            action,
        });
    }

    /// The next `n` resource requests fail with `code` and a matching `metav1.Status` (429
    /// also gets `Retry-After: 1`), without reaching the server.
    pub fn fail_next(&self, n: u32, code: u16) {
        self.push(n, Match::default(), Action::Fail(code));
    }

    /// Like [`fail_next`](Self::fail_next), only for the requests that match.
    pub fn fail_next_matching(&self, n: u32, code: u16, on: Match) {
        self.push(n, on, Action::Fail(code));
    }

    /// The next `n` resource requests reach the server only after `delay`.
    pub fn delay_next(&self, n: u32, delay: Duration) {
        self.push(n, Match::default(), Action::Delay(delay));
    }

    /// Like [`delay_next`](Self::delay_next), only for the requests that match.
    pub fn delay_next_matching(&self, n: u32, delay: Duration, on: Match) {
        self.push(n, on, Action::Delay(delay));
    }

    /// Closes every watch open now.
    pub fn drop_watches(&self) {
        self.cut(WatchCut::Close);
    }

    /// Sends every watch open now an `ERROR` event with a 410 Expired Status, then closes it.
    pub fn fail_watches_with_gone(&self) {
        self.cut(WatchCut::Gone);
    }

    /// Forgets the pending request faults.
    pub fn clear(&self) {
        self.rules.lock().expect("rules").clear();
    }

    /// Faults still waiting for a matching request.
    pub fn pending(&self) -> u32 {
        self.rules
            .lock()
            .expect("rules")
            .iter()
            .map(|r| r.remaining)
            .sum()
    }

    fn cut(&self, how: WatchCut) {
        self.cuts.send_modify(|(generation, cut)| {
            *generation += 1;
            *cut = how;
        });
    }

    /// Takes the first matching delay and the first matching failure for one request.
    fn take(&self, verb: Verb, path: &str) -> (Option<Duration>, Option<u16>) {
        let mut rules = self.rules.lock().expect("rules");
        let mut delay = None;
        let mut fail = None;
        for rule in rules.iter_mut() {
            if rule.remaining == 0 || !rule.on.matches(verb, path) {
                continue;
            }
            match rule.action {
                Action::Delay(d) if delay.is_none() => {
                    delay = Some(d);
                    rule.remaining -= 1;
                }
                Action::Fail(code) if fail.is_none() => {
                    fail = Some(code);
                    rule.remaining -= 1;
                }
                _ => {}
            }
        }
        rules.retain(|r| r.remaining > 0);
        (delay, fail)
    }
}

struct Upstream {
    server: String,
    http: reqwest::Client,
}

#[derive(Clone)]
struct Shared {
    upstream: Arc<Upstream>,
    faults: Faults,
    stats: Arc<Mutex<Stats>>,
}

/// The running proxy. Dropping it stops it.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Shared,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl FaultProxy {
    /// Starts a proxy on a free loopback port in front of the API server of the admin
    /// kubeconfig at `kubeconfig`. Must be called inside a Tokio runtime.
    pub async fn start(kubeconfig: &Path) -> FaultProxy {
        let upstream = Arc::new(upstream(kubeconfig));
        let (cuts, _) = watch::channel((0, WatchCut::Close));
        let shared = Shared {
            upstream,
            faults: Faults {
                rules: Arc::default(),
                cuts,
            },
            stats: Arc::default(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(shared.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
        });
        FaultProxy {
            addr,
            shared,
            _stop: stop,
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A `kube::Config` through the proxy, `namespace` its default namespace. kube's own
    /// retries (429, 503, 504) are left on, as in production.
    pub fn config(&self, namespace: &str) -> kube::Config {
        let mut config = kube::Config::new(self.url().parse().expect("uri"));
        config.default_namespace = namespace.to_string();
        config
    }

    /// A kube client through the proxy. Must be called inside a Tokio runtime.
    pub fn client(&self, namespace: &str) -> kube::Client {
        kube::Client::try_from(self.config(namespace)).expect("client")
    }

    /// Writes a kubeconfig that points at the proxy, with `namespace` as its namespace, for
    /// the plugsync binary and kubectl.
    pub fn write_kubeconfig(&self, path: impl AsRef<Path>, namespace: &str) {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: proxy\n  cluster:\n    server: {}\n\
             users:\n- name: proxy\n  user: {{}}\ncontexts:\n- name: proxy\n  context:\n    \
             cluster: proxy\n    user: proxy\n    namespace: {namespace}\ncurrent-context: proxy\n",
            self.url()
        );
        std::fs::write(path, text).expect("write kubeconfig");
    }

    /// The fault-injection handle.
    pub fn faults(&self) -> &Faults {
        &self.shared.faults
    }

    /// What passed through so far.
    pub fn stats(&self) -> Stats {
        *self.shared.stats.lock().expect("stats")
    }

    /// Zeroes the statistics.
    pub fn reset_stats(&self) {
        *self.shared.stats.lock().expect("stats") = Stats::default();
    }
}

/// The API server's URL and an HTTP client holding the admin client certificate.
fn upstream(kubeconfig: &Path) -> Upstream {
    let config = Kubeconfig::read_from(kubeconfig).expect("kubeconfig");
    let cluster = config.clusters[0].cluster.as_ref().expect("cluster");
    let user = config.auth_infos[0].auth_info.as_ref().expect("user");
    let decode = |field: Option<&str>, what: &str| {
        base64::engine::general_purpose::STANDARD
            .decode(field.unwrap_or_else(|| panic!("kubeconfig has no {what}")))
            .expect("base64")
    };
    let ca = decode(cluster.certificate_authority_data.as_deref(), "CA");
    let mut identity = decode(
        user.client_certificate_data.as_deref(),
        "client certificate",
    );
    let key = user.client_key_data.as_ref().expect("client key");
    use secrecy::ExposeSecret as _;
    identity.extend(decode(Some(key.expose_secret()), "client key"));
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("CA"))
        .tls_built_in_root_certs(false)
        .identity(reqwest::Identity::from_pem(&identity).expect("identity"))
        .connect_timeout(Duration::from_secs(5))
        .build()
        .expect("http client");
    Upstream {
        server: cluster
            .server
            .clone()
            .expect("server")
            .trim_end_matches('/')
            .to_string(),
        http,
    }
}

/// The verb of a request, from its method, path and query, as the apiserver decides it.
pub fn classify(method: &Method, path: &str, query: &str, headers: &HeaderMap) -> Verb {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    // /api/v1/... or /apis/<group>/<version>/...
    let rest = match segments.as_slice() {
        ["api", _version, rest @ ..] => rest,
        ["apis", _group, _version, rest @ ..] => rest,
        _ => return Verb::Other,
    };
    // namespaces/<ns>/<resource>[/<name>...] or <resource>[/<name>...]; namespaces[/<name>]
    // is the namespaces resource itself.
    let named = match rest {
        [] => return Verb::Other,
        ["namespaces", _ns, _resource, name @ ..] => !name.is_empty(),
        [_resource, name @ ..] => !name.is_empty(),
    };
    let watch = query
        .split('&')
        .any(|kv| kv == "watch=true" || kv == "watch=1");
    match *method {
        Method::GET if named => Verb::Get,
        Method::GET if watch => Verb::Watch,
        Method::GET => Verb::List,
        Method::POST => Verb::Create,
        Method::PUT => Verb::Update,
        Method::PATCH => {
            let apply = headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/apply-patch"));
            if apply {
                Verb::Apply
            } else {
                Verb::Patch
            }
        }
        Method::DELETE => Verb::Delete,
        _ => Verb::Other,
    }
}

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "host",
    "content-length",
];

async fn forward(State(shared): State<Shared>, request: Request<Body>) -> Response<Body> {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_string();
    let query = parts.uri.query().unwrap_or("").to_string();
    let verb = classify(&parts.method, &path, &query, &parts.headers);
    let dry_run = query.split('&').any(|kv| kv.starts_with("dryRun="));
    let (delay, fail) = shared.faults.take(verb, &path);
    {
        let mut stats = shared.stats.lock().expect("stats");
        let counts = if dry_run {
            &mut stats.dry_run
        } else {
            &mut stats.real
        };
        *counts.slot(verb) += 1;
        if fail.is_some() {
            stats.injected_failures += 1;
        }
    }
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    if let Some(code) = fail {
        return status_response(code);
    }
    // Watches opened before a cut end at it; ones opened after do not.
    let mut cuts = shared.faults.cuts.subscribe();
    cuts.mark_unchanged();

    let body = match axum::body::to_bytes(body, 64 << 20).await {
        Ok(b) => b,
        Err(e) => return plain(StatusCode::BAD_REQUEST, format!("reading the request: {e}")),
    };
    let url = if query.is_empty() {
        format!("{}{path}", shared.upstream.server)
    } else {
        format!("{}{path}?{query}", shared.upstream.server)
    };
    let mut upstream_request = shared
        .upstream
        .http
        .request(parts.method.clone(), url)
        .body(body);
    for (name, value) in parts.headers.iter() {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            upstream_request = upstream_request.header(name, value);
        }
    }
    let response = match upstream_request.send().await {
        Ok(r) => r,
        Err(e) => return plain(StatusCode::BAD_GATEWAY, format!("proxy: {e}")),
    };
    let mut builder = Response::builder().status(response.status().as_u16());
    for (name, value) in response.headers() {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            builder = builder.header(name, value);
        }
    }
    let upstream_body = response.bytes_stream();
    if verb != Verb::Watch {
        return builder
            .body(Body::from_stream(upstream_body))
            .expect("response");
    }
    // A watch: pass events through until the stream ends or a cut comes.
    let stream = futures::stream::unfold(
        (upstream_body.boxed(), cuts, false),
        |(mut upstream, mut cuts, done)| async move {
            if done {
                return None;
            }
            tokio::select! {
                chunk = upstream.next() => chunk.map(|c| (c, (upstream, cuts, false))),
                changed = cuts.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                    let (_, how) = *cuts.borrow();
                    match how {
                        WatchCut::Close => None,
                        WatchCut::Gone => {
                            let event = json!({"type": "ERROR", "object": status_body(410)});
                            let line = format!("{event}\n");
                            Some((Ok(bytes::Bytes::from(line)), (upstream, cuts, true)))
                        }
                    }
                }
            }
        },
    );
    builder.body(Body::from_stream(stream)).expect("response")
}

fn status_body(code: u16) -> serde_json::Value {
    let (reason, message) = match code {
        409 => ("Conflict", "injected conflict"),
        410 => ("Expired", "too old resource version (injected)"),
        429 => (
            "TooManyRequests",
            "injected: too many requests, please try again later",
        ),
        500 => ("InternalError", "injected internal error"),
        503 => (
            "ServiceUnavailable",
            "injected: the server is currently unable to handle the request",
        ),
        504 => (
            "Timeout",
            "injected: the server was unable to return a response in the time allotted",
        ),
        _ => ("", "injected failure"),
    };
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

fn status_response(code: u16) -> Response<Body> {
    let mut response = Response::builder()
        .status(code)
        .header("content-type", "application/json");
    if code == 429 {
        response = response.header("retry-after", HeaderValue::from_static("1"));
    }
    response
        .body(Body::from(status_body(code).to_string()))
        .expect("response")
}

fn plain(code: StatusCode, text: String) -> Response<Body> {
    Response::builder()
        .status(code)
        .body(Body::from(text))
        .expect("response")
}
