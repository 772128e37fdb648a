//! HTTP routing: discovery, resource requests (all verbs), and the `/_double/` admin surface.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};

use super::discovery;
use super::errors::ApiError;
use super::faults::{FaultSpec, Faults, StatsCell, Verb};
use super::protobuf;
use super::registry::ResourceType;
use super::selector::{FieldSelector, LabelSelector};
use super::store::{DeleteOpts, PatchKind, Propagation, Store, Target, WriteOpts};
use super::table::{partial_metadata, table, IncludeObject};
use super::watch::{self, Render, WatchRequest};

/// Shared server state.
pub(crate) struct AppState {
    pub store: Store,
    pub faults: Faults,
    pub stats: StatsCell,
    pub addr: String,
    pub bookmark_interval: Duration,
}

/// The router serving everything.
pub(crate) fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .fallback(handle)
        .with_state(state)
        .layer(DefaultBodyLimit::max(64 << 20))
}

fn json_response(code: StatusCode, v: &Value) -> Response {
    json_typed(code, v, "application/json")
}

fn json_typed(code: StatusCode, v: &Value, content_type: &'static str) -> Response {
    let mut r = (code, serde_json::to_vec(v).unwrap_or_default()).into_response();
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static(content_type));
    r
}

struct Query(Vec<(String, String)>);

impl Query {
    fn parse(uri: &Uri) -> Self {
        Query(
            url::form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }
    fn get(&self, k: &str) -> Option<&str> {
        self.0.iter().find(|(a, _)| a == k).map(|(_, v)| v.as_str())
    }
    fn all<'a>(&'a self, k: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(a, _)| a == k)
            .map(|(_, v)| v.as_str())
    }
    fn flag(&self, k: &str) -> bool {
        matches!(self.get(k), Some("true" | "1"))
    }
}

/// A resource request, parsed from the path.
struct ResourcePath {
    target: Target,
    name: Option<String>,
    subresource: Option<String>,
    watch_prefix: bool,
}

enum Route {
    Version,
    Health,
    CoreVersions,
    Groups,
    Group(String),
    GroupVersion(String, String),
    OpenApiRoot,
    OpenApiGv(String, String),
    Resource(ResourcePath),
    Admin(String),
    Unknown,
}

fn route(path: &str) -> Route {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segs.as_slice() {
        ["_double", rest @ ..] => Route::Admin(rest.join("/")),
        ["version"] => Route::Version,
        ["healthz" | "livez" | "readyz", ..] => Route::Health,
        ["api"] => Route::CoreVersions,
        ["apis"] => Route::Groups,
        ["api", "v1"] => Route::GroupVersion(String::new(), "v1".into()),
        ["apis", g] => Route::Group(g.to_string()),
        ["apis", g, v] => Route::GroupVersion(g.to_string(), v.to_string()),
        ["openapi", "v3"] => Route::OpenApiRoot,
        ["openapi", "v3", "api", v] => Route::OpenApiGv(String::new(), v.to_string()),
        ["openapi", "v3", "apis", g, v] => Route::OpenApiGv(g.to_string(), v.to_string()),
        ["api", v, rest @ ..] => resource_route("", v, rest),
        ["apis", g, v, rest @ ..] => resource_route(g, v, rest),
        _ => Route::Unknown,
    }
}

fn resource_route(group: &str, version: &str, rest: &[&str]) -> Route {
    let mut rest = rest;
    let mut watch_prefix = false;
    if rest.first() == Some(&"watch") {
        watch_prefix = true;
        rest = &rest[1..];
    }
    let mut namespace = None;
    if rest.len() >= 3 && rest[0] == "namespaces" && !matches!(rest[2], "status" | "finalize") {
        namespace = Some(rest[1].to_string());
        rest = &rest[2..];
    }
    let (plural, name, sub) = match rest {
        [p] => (p, None, None),
        [p, n] => (p, Some(n.to_string()), None),
        [p, n, s] => (p, Some(n.to_string()), Some(s.to_string())),
        _ => return Route::Unknown,
    };
    Route::Resource(ResourcePath {
        target: Target {
            group: group.into(),
            version: version.into(),
            plural: plural.to_string(),
            namespace,
        },
        name,
        subresource: sub,
        watch_prefix,
    })
}

fn content_type(headers: &HeaderMap) -> String {
    headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

fn accept(headers: &HeaderMap) -> String {
    headers
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

fn verb_of(method: &Method, r: &Route, q: &Query, headers: &HeaderMap) -> Verb {
    let Route::Resource(rp) = r else {
        return Verb::Other;
    };
    match *method {
        Method::GET if rp.watch_prefix || q.flag("watch") => Verb::Watch,
        Method::GET if rp.name.is_some() => Verb::Get,
        Method::GET => Verb::List,
        Method::POST => Verb::Create,
        Method::PUT => Verb::Update,
        Method::PATCH if content_type(headers) == "application/apply-patch+yaml" => Verb::Apply,
        Method::PATCH => Verb::Patch,
        Method::DELETE => Verb::Delete,
        _ => Verb::Other,
    }
}

/// Parses a request body as JSON, protobuf (a few kinds), or YAML when allowed.
fn parse_body(body: &[u8], yaml_ok: bool, content_type: &str) -> Result<Value, ApiError> {
    if content_type == "application/vnd.kubernetes.protobuf" {
        return protobuf::decode(body)
            .map_err(|e| ApiError::new(415, "UnsupportedMediaType", e, None));
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("the request body is empty"));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(v) => Ok(v),
        Err(e) if !yaml_ok => Err(ApiError::bad_request(format!(
            "couldn't get version/kind; json parse error: {e}"
        ))),
        Err(_) => serde_yaml::from_slice::<Value>(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}"))),
    }
}

fn dry_run(q: &Query) -> Result<bool, ApiError> {
    let mut dry = false;
    for v in q.all("dryRun") {
        match v {
            "All" => dry = true,
            "" => {}
            other => {
                return Err(ApiError::bad_request(format!(
                    "Invalid dry run value: {other:?}; supported values: \"All\""
                )))
            }
        }
    }
    Ok(dry)
}

fn manager(q: &Query, headers: &HeaderMap) -> String {
    if let Some(m) = q.get("fieldManager").filter(|m| !m.is_empty()) {
        return m.to_string();
    }
    headers
        .get("user-agent")
        .and_then(|v| v.to_str().ok())
        .and_then(|ua| ua.split('/').next())
        .filter(|s| !s.is_empty())
        .unwrap_or("unknown")
        .to_string()
}

fn render_mode(accept: &str, q: &Query) -> Render {
    if accept.contains("as=Table") {
        Render::Table(IncludeObject::parse(q.get("includeObject")))
    } else if accept.contains("as=PartialObjectMetadata") {
        Render::Partial
    } else {
        Render::Full
    }
}

/// The object as served at the requested version.
fn at_version(rt: &ResourceType, version: &str, mut obj: Value) -> Value {
    if obj.is_object() {
        obj["apiVersion"] = json!(rt.api_version(version));
    }
    obj
}

async fn handle(
    State(st): State<Arc<AppState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let r = route(&path);
    let q = Query::parse(&uri);
    if let Route::Admin(what) = &r {
        return admin(&st, &method, what, &body);
    }
    let verb = verb_of(&method, &r, &q, &headers);
    let dry = matches!(dry_run(&q), Ok(true))
        || (verb == Verb::Delete
            && serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|b| b["dryRun"].as_array().cloned())
                .is_some_and(|a| a.iter().any(|v| v == "All")));
    st.stats.count(verb, dry);
    let decision = st.faults.decide(verb, &path);
    if let Some(d) = decision.delay {
        tokio::time::sleep(d).await;
    }
    if let Some(code) = decision.fail {
        st.stats.update(|s| s.injected_failures += 1);
        return ApiError::from_code(
            code,
            format!("injected failure ({code}) for {} {path}", method),
        )
        .into_response();
    }
    match serve(&st, &method, r, &q, &headers, &body, verb, dry) {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

#[allow(clippy::too_many_arguments)]
fn serve(
    st: &AppState,
    method: &Method,
    r: Route,
    q: &Query,
    headers: &HeaderMap,
    body: &[u8],
    verb: Verb,
    dry: bool,
) -> Result<Response, ApiError> {
    let accept = accept(headers);
    let types = || st.store.types();
    let get_only = |v: Value| {
        if method == Method::GET {
            Ok(json_response(StatusCode::OK, &v))
        } else {
            Err(ApiError::method_not_allowed())
        }
    };
    match r {
        Route::Version => get_only(discovery::version()),
        Route::Health => Ok((StatusCode::OK, "ok").into_response()),
        Route::CoreVersions => {
            if discovery::wants_aggregated(&accept) {
                Ok(json_typed(
                    StatusCode::OK,
                    &discovery::aggregated(&types(), true),
                    discovery::AGGREGATED,
                ))
            } else {
                get_only(discovery::core_versions(&st.addr))
            }
        }
        Route::Groups => {
            if discovery::wants_aggregated(&accept) {
                Ok(json_typed(
                    StatusCode::OK,
                    &discovery::aggregated(&types(), false),
                    discovery::AGGREGATED,
                ))
            } else {
                get_only(discovery::group_list(&types()))
            }
        }
        Route::Group(g) => discovery::group(&types(), &g)
            .ok_or_else(ApiError::no_route)
            .and_then(get_only),
        Route::GroupVersion(g, v) => discovery::resource_list(&types(), &g, &v)
            .ok_or_else(ApiError::no_route)
            .and_then(get_only),
        Route::OpenApiRoot => get_only(discovery::openapi_root(&types())),
        Route::OpenApiGv(g, v) => {
            if discovery::resource_list(&types(), &g, &v).is_none() {
                return Err(ApiError::no_route());
            }
            get_only(discovery::openapi_gv(&types(), &g, &v))
        }
        Route::Resource(rp) => resource(st, rp, q, headers, body, verb, dry, &accept),
        Route::Admin(_) | Route::Unknown => Err(ApiError::no_route()),
    }
}

#[allow(clippy::too_many_arguments)]
fn resource(
    st: &AppState,
    rp: ResourcePath,
    q: &Query,
    headers: &HeaderMap,
    body: &[u8],
    verb: Verb,
    dry: bool,
    accept: &str,
) -> Result<Response, ApiError> {
    let store = &st.store;
    let rt = store.resolve(&rp.target)?;
    let t = &rp.target;
    if rt.namespaced && t.namespace.is_none() && rp.name.is_some() {
        return Err(ApiError::no_route());
    }
    if !rt.namespaced && t.namespace.is_some() {
        return Err(ApiError::no_route());
    }
    match rp.subresource.as_deref() {
        None => {}
        Some("status") if rt.has_status(&t.version) => {}
        Some(_) => return Err(ApiError::no_route()),
    }
    dry_run(q)?;
    let opts = WriteOpts {
        dry_run: dry,
        manager: manager(q, headers),
        subresource: rp.subresource.clone(),
    };
    let count_mutation = |changed: bool| {
        if changed && !dry {
            st.stats.update(|s| s.mutations += 1);
        }
    };
    let render = render_mode(accept, q);
    let one = |obj: Value| -> Value {
        let obj = at_version(&rt, &t.version, obj);
        match render {
            Render::Full => obj,
            Render::Partial => partial_metadata(&obj),
            Render::Table(inc) => table(&rt, &t.version, &[obj], inc, None, true),
        }
    };
    match (verb, rp.name.as_deref()) {
        (Verb::Get, Some(name)) => {
            let obj = store.read(t, name)?;
            Ok(json_response(StatusCode::OK, &one(obj)))
        }
        (Verb::List, _) | (Verb::Watch, _) => {
            let labels = LabelSelector::parse(q.get("labelSelector").unwrap_or_default())
                .map_err(ApiError::bad_request)?;
            let mut fields = FieldSelector::parse(q.get("fieldSelector").unwrap_or_default())
                .map_err(ApiError::bad_request)?;
            if let Some(name) = &rp.name {
                fields = FieldSelector::parse(&format!("metadata.name={name}"))
                    .map_err(ApiError::bad_request)?;
            }
            if verb == Verb::Watch {
                let from = match q.get("resourceVersion").unwrap_or_default() {
                    "" | "0" => None,
                    rv => Some(rv.parse::<u64>().map_err(|_| {
                        ApiError::bad_request(format!("invalid resource version: {rv:?}"))
                    })?),
                };
                let timeout = q
                    .get("timeoutSeconds")
                    .and_then(|s| s.parse::<u64>().ok())
                    .map(Duration::from_secs)
                    .unwrap_or(Duration::from_secs(1800));
                let body = watch::start(
                    store,
                    &st.faults,
                    WatchRequest {
                        target: t.clone(),
                        from,
                        labels,
                        fields,
                        bookmarks: q.flag("allowWatchBookmarks"),
                        bookmark_interval: st.bookmark_interval,
                        timeout,
                        render,
                        send_initial_events: q.flag("sendInitialEvents"),
                    },
                )?;
                let mut resp = (StatusCode::OK, body).into_response();
                resp.headers_mut()
                    .insert("content-type", HeaderValue::from_static("application/json"));
                resp.headers_mut().insert(
                    "cache-control",
                    HeaderValue::from_static("no-cache, private"),
                );
                return Ok(resp);
            }
            let (rt, items, rv) = store.read_list(t)?;
            let items: Vec<Value> = items
                .into_iter()
                .filter(|o| labels.matches(o) && fields.matches(o))
                .map(|o| at_version(&rt, &t.version, o))
                .collect();
            let v = match render {
                Render::Table(inc) => table(&rt, &t.version, &items, inc, Some(rv), true),
                Render::Partial => json!({
                    "kind": "PartialObjectMetadataList",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": {"resourceVersion": rv.to_string()},
                    "items": items.iter().map(partial_metadata).collect::<Vec<_>>(),
                }),
                Render::Full => json!({
                    "kind": format!("{}List", rt.kind),
                    "apiVersion": rt.api_version(&t.version),
                    "metadata": {"resourceVersion": rv.to_string()},
                    "items": items,
                }),
            };
            Ok(json_response(StatusCode::OK, &v))
        }
        (Verb::Create, None) => {
            let obj = parse_body(
                body,
                content_type(headers).contains("yaml"),
                &content_type(headers),
            )?;
            let out = store.create(t, obj, &opts)?;
            count_mutation(out.changed);
            Ok(json_response(StatusCode::CREATED, &one(out.object)))
        }
        (Verb::Update, Some(name)) => {
            let obj = parse_body(
                body,
                content_type(headers).contains("yaml"),
                &content_type(headers),
            )?;
            let out = store.update(t, name, obj, &opts)?;
            count_mutation(out.changed);
            Ok(json_response(StatusCode::OK, &one(out.object)))
        }
        (Verb::Patch, Some(name)) => {
            let kind = match content_type(headers).as_str() {
                "application/merge-patch+json" => PatchKind::Merge,
                "application/strategic-merge-patch+json" => PatchKind::Strategic,
                "application/json-patch+json" => PatchKind::Json,
                other => return Err(ApiError::unsupported_media_type(other)),
            };
            let patch = parse_body(body, false, "")?;
            let out = store.patch(t, name, kind, &patch, &opts)?;
            count_mutation(out.changed);
            Ok(json_response(StatusCode::OK, &one(out.object)))
        }
        (Verb::Apply, Some(name)) => {
            if q.get("fieldManager").is_none_or(str::is_empty) {
                return Err(ApiError::bad_request(
                    "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
                ));
            }
            let config = parse_body(body, true, "")?;
            let out = store.apply(t, name, &config, q.flag("force"), &opts)?;
            count_mutation(out.changed);
            let code = if out.created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok(json_response(code, &one(out.object)))
        }
        (Verb::Delete, name) => {
            let del = delete_options(q, body)?;
            match name {
                Some(name) => {
                    let out = store.delete_request(t, name, &del, dry)?;
                    count_mutation(out.changed);
                    let obj = at_version(&rt, &t.version, out.object);
                    if !out.removed {
                        return Ok(json_response(StatusCode::ACCEPTED, &obj));
                    }
                    if rt.custom || matches!(rt.kind.as_str(), "Namespace" | "Pod") {
                        return Ok(json_response(StatusCode::OK, &obj));
                    }
                    let mut details =
                        json!({"name": name, "kind": rt.plural, "uid": obj["metadata"]["uid"]});
                    if !rt.group.is_empty() {
                        details["group"] = json!(rt.group);
                    }
                    Ok(json_response(
                        StatusCode::OK,
                        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}),
                    ))
                }
                None => {
                    let labels = LabelSelector::parse(q.get("labelSelector").unwrap_or_default())
                        .map_err(ApiError::bad_request)?;
                    let fields = FieldSelector::parse(q.get("fieldSelector").unwrap_or_default())
                        .map_err(ApiError::bad_request)?;
                    let (rt, items, _) = store.read_list(t)?;
                    let mut deleted = Vec::new();
                    let mut changed = false;
                    for o in items
                        .iter()
                        .filter(|o| labels.matches(o) && fields.matches(o))
                    {
                        let n = o["metadata"]["name"].as_str().unwrap_or_default();
                        let ns = o["metadata"]["namespace"].as_str().map(String::from);
                        let ot = Target {
                            namespace: ns.or(t.namespace.clone()),
                            ..t.clone()
                        };
                        if let Ok(out) = store.delete_request(&ot, n, &del, dry) {
                            changed |= out.changed;
                            deleted.push(at_version(&rt, &t.version, out.object));
                        }
                    }
                    count_mutation(changed);
                    Ok(json_response(
                        StatusCode::OK,
                        &json!({"kind": format!("{}List", rt.kind), "apiVersion": rt.api_version(&t.version),
                                "metadata": {"resourceVersion": store.resource_version().to_string()}, "items": deleted}),
                    ))
                }
            }
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

fn delete_options(q: &Query, body: &[u8]) -> Result<DeleteOpts, ApiError> {
    let b: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("invalid DeleteOptions: {e}")))?
    };
    let policy = b["propagationPolicy"]
        .as_str()
        .or_else(|| q.get("propagationPolicy"))
        .map(String::from);
    let orphan = b["orphanDependents"].as_bool() == Some(true) || q.flag("orphanDependents");
    let propagation = match policy.as_deref() {
        Some("Foreground") => Propagation::Foreground,
        Some("Orphan") => Propagation::Orphan,
        Some("Background") => Propagation::Background,
        None if orphan => Propagation::Orphan,
        None => Propagation::Background,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "propagationPolicy: Unsupported value: {other:?}: supported values: \"Foreground\", \"Background\", \"Orphan\""
            )))
        }
    };
    Ok(DeleteOpts {
        propagation,
        precondition_uid: b["preconditions"]["uid"].as_str().map(String::from),
        precondition_rv: b["preconditions"]["resourceVersion"]
            .as_str()
            .map(String::from),
    })
}

fn admin(st: &AppState, method: &Method, what: &str, body: &[u8]) -> Response {
    match (method.clone(), what) {
        (Method::GET, "stats") => json_response(
            StatusCode::OK,
            &serde_json::to_value(st.stats.snapshot()).unwrap_or_default(),
        ),
        (Method::POST, "reset-stats") => {
            st.stats.reset();
            json_response(StatusCode::OK, &json!({}))
        }
        (Method::POST, "faults") => {
            let specs: Result<Vec<FaultSpec>, _> = serde_json::from_slice::<Value>(body)
                .map_err(|e| e.to_string())
                .and_then(|v| {
                    let v = if v.is_array() { v } else { json!([v]) };
                    serde_json::from_value(v).map_err(|e| e.to_string())
                });
            match specs {
                Ok(specs) => {
                    for s in &specs {
                        st.faults.apply_spec(s);
                    }
                    json_response(StatusCode::OK, &json!({"applied": specs.len()}))
                }
                Err(e) => ApiError::bad_request(format!("invalid fault: {e}")).into_response(),
            }
        }
        (Method::GET, "healthz") => (StatusCode::OK, "ok").into_response(),
        _ => ApiError::no_route().into_response(),
    }
}
