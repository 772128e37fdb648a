//! Dify's serverless plugin connector, answered from git's Plugins.
//!
//! The plugin daemon (`PLATFORM=serverless`) asks its connector three things: `POST /ping`
//! once at startup, `GET /v1/runner/instances?filename=…` (is this package running, and
//! where?) and `POST /v1/launch` (run this package), then stores the endpoint it gets and
//! calls the plugin there. Dify Enterprise's connector builds whatever it is sent; this one
//! answers from the Plugins plugsync applied from git, so a package reaches a workspace only
//! if the repository declares it: an undeclared upload is refused with a message saying to
//! add it to plugins.yaml. A launch never starts a build of its own (the controller builds
//! every declared Plugin), so any number of concurrent launches of one package wait on the
//! same build.
//!
//! The wire formats are the daemon's (langgenius/dify-plugin-daemon
//! `internal/core/serverless_connector`): the raw key in `Authorization`, the JSON string
//! `"pong"`, `{"error","Items":[{"ID","Name","Endpoint","ResourceName","Status"}]}`, and a
//! 200 stream of `{"Stage","Obj","State","Message"}` lines, ending with an `end` line.

use std::path::Path as FsPath;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Multipart, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::{Stream, StreamExt};
use kube::runtime::reflector::{self, reflector, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, ResourceExt};
use plugsync_core::crd::{Plugin, PluginPhase};
use plugsync_core::package::signature::TrustedKey;
use plugsync_core::package::{Package, MAX_UNCOMPRESSED_SIZE};
use serde::Deserialize;
use serde_json::json;
use tracing::{info, warn};

/// The largest launch upload read: a package is at most 50 MiB uncompressed, and the
/// compressed file sent is smaller; the rest is multipart framing and the two fields.
const LAUNCH_BODY_LIMIT: usize = MAX_UNCOMPRESSED_SIZE as usize + 1024 * 1024;

/// How long a request waits for the Plugin store's first list.
const STORE_READY_TIMEOUT: Duration = Duration::from_secs(10);

/// The bound on one read from the API server.
const API_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest endpoint the daemon stores (its `function_url` column).
const MAX_ENDPOINT_LEN: usize = 255;

/// How the connector answers: the key the daemon presents, the Plugins it reads (a watched
/// store), and how long a launch waits for a build before telling the daemon it failed.
#[derive(Clone)]
pub struct Connector {
    key: Arc<Vec<u8>>,
    plugins: Store<Plugin>,
    client: kube::Client,
    /// The namespace the store watches: where the git loop applies the Plugins.
    namespace: String,
    launch_timeout: Duration,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("key", &"***")
            .field("launch_timeout", &self.launch_timeout)
            .finish_non_exhaustive()
    }
}

/// Reads the connector key from a file (a mounted Secret), without its trailing newline.
/// The error names the file, never its content.
pub fn read_key(path: &FsPath) -> std::io::Result<Vec<u8>> {
    let mut bytes = std::fs::read(path)?;
    while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        bytes.pop();
    }
    if bytes.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "{} is empty: put the key the daemon sends \
                 (DIFY_PLUGIN_SERVERLESS_CONNECTOR_API_KEY) in it",
                path.display()
            ),
        ));
    }
    Ok(bytes)
}

impl Connector {
    /// A connector answering with `plugins` (a reflector store of `namespace`'s Plugins the
    /// caller keeps running, so answers come from a watch, not a list per request) and
    /// waiting at most
    /// `launch_timeout` for a launch: below the daemon's own launch timeout (240 s by
    /// default), so the daemon hears why rather than timing out.
    pub fn new(
        key: Vec<u8>,
        plugins: Store<Plugin>,
        client: kube::Client,
        namespace: &str,
        launch_timeout: Duration,
    ) -> Connector {
        Connector {
            key: Arc::new(key),
            plugins,
            client,
            namespace: namespace.to_string(),
            launch_timeout,
        }
    }

    /// [`Connector::new`] over a store of `namespace`'s Plugins that this starts and keeps
    /// current through a watch (restarted with backoff on errors) until `stopped` resolves.
    pub fn start(
        key: Vec<u8>,
        client: kube::Client,
        namespace: &str,
        launch_timeout: Duration,
        stopped: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Connector {
        let (store, writer) = reflector::store();
        let api: Api<Plugin> = Api::namespaced(client.clone(), namespace);
        let watch = reflector(writer, watcher(api, watcher::Config::default()))
            .default_backoff()
            .for_each(|_| std::future::ready(()));
        tokio::spawn(async move {
            tokio::select! {
                () = watch => {}
                () = stopped => {}
            }
        });
        Connector::new(key, store, client, namespace, launch_timeout)
    }

    /// The three calls, under the key.
    pub fn router(self) -> Router {
        Router::new()
            .route("/ping", get(ping).post(ping))
            .route("/v1/runner/instances", get(instances))
            .route(
                "/v1/launch",
                axum::routing::post(launch).layer(DefaultBodyLimit::max(LAUNCH_BODY_LIMIT)),
            )
            .layer(axum::middleware::from_fn_with_state(
                self.clone(),
                authorize,
            ))
            .with_state(self)
    }

    /// The Plugins (any attempt) installing `unique_identifier`, from the watched store
    /// once it holds its first list (a store still starting would answer "none").
    async fn plugins_of(&self, unique_identifier: &str) -> Vec<Arc<Plugin>> {
        let _ = tokio::time::timeout(STORE_READY_TIMEOUT, self.plugins.wait_until_ready()).await;
        self.plugins
            .state()
            .into_iter()
            .filter(|p| p.spec.unique_identifier == unique_identifier)
            .collect()
    }

    /// [`Connector::plugins_of`], confirmed by one read from the API server when the store
    /// has none: a refusal tells a person to change git, so it must not come from a watch
    /// a moment behind a Plugin just applied.
    async fn declared(&self, unique_identifier: &str) -> Result<Vec<Arc<Plugin>>, String> {
        let cached = self.plugins_of(unique_identifier).await;
        if !cached.is_empty() {
            return Ok(cached);
        }
        let api: Api<Plugin> = Api::namespaced(self.client.clone(), &self.namespace);
        let list = tokio::time::timeout(API_TIMEOUT, api.list(&Default::default()))
            .await
            .map_err(|_| format!("listing Plugins in {} timed out", self.namespace))?
            .map_err(|e| format!("listing Plugins in {}: {e}", self.namespace))?;
        let found = list
            .items
            .into_iter()
            .filter(|p| p.spec.unique_identifier == unique_identifier)
            .map(Arc::new)
            .collect();
        Ok(found)
    }
}

/// Refuses a request without the key, compared in constant time.
async fn authorize(
    State(connector): State<Connector>,
    headers: HeaderMap,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let presented = headers
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if crate::token::token_matches(&connector.key, presented) {
        next.run(request).await
    } else {
        warn!("connector: request without the connector key refused");
        (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "the Authorization header is not the connector key"})),
        )
            .into_response()
    }
}

async fn ping() -> Json<&'static str> {
    Json("pong")
}

/// `author@name@version@checksum.difypkg` → `author/name:version@checksum`.
fn unique_identifier_of(filename: &str) -> Option<String> {
    let stem = filename.strip_suffix(".difypkg")?;
    let parts: Vec<&str> = stem.split('@').collect();
    match parts.as_slice() {
        [author, name, version, checksum] if !name.is_empty() && !version.is_empty() => {
            let id = if author.is_empty() {
                format!("{name}:{version}@{checksum}")
            } else {
                format!("{author}/{name}:{version}@{checksum}")
            };
            Some(id)
        }
        _ => None,
    }
}

/// The endpoint the daemon may store for `plugin`: only a Running, Ready one, and only an
/// endpoint its comma parser and column can hold.
fn ready_endpoint(plugin: &Plugin) -> Option<&str> {
    let status = plugin.status.as_ref()?;
    let ready = status
        .conditions
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    let endpoint = status.endpoint.as_deref()?;
    let usable = !endpoint.contains(',')
        && !endpoint.contains('=')
        && !endpoint.contains('?')
        && endpoint.len() <= MAX_ENDPOINT_LEN;
    (status.phase == Some(PluginPhase::Running) && ready && usable).then_some(endpoint)
}

#[derive(Deserialize)]
struct InstancesQuery {
    filename: String,
}

async fn instances(
    State(connector): State<Connector>,
    Query(query): Query<InstancesQuery>,
) -> Json<serde_json::Value> {
    let Some(uid) = unique_identifier_of(&query.filename) else {
        return Json(json!({
            "error": format!("{:?} is not a package filename (author@name@version@checksum.difypkg)", query.filename),
            "Items": [],
        }));
    };
    let items: Vec<serde_json::Value> = connector
        .plugins_of(&uid)
        .await
        .iter()
        .filter_map(|p| {
            ready_endpoint(p).map(|endpoint| {
                json!({
                    "ID": p.spec.plugin_id,
                    "Name": p.name_any(),
                    "Endpoint": endpoint,
                    "ResourceName": format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any()),
                    "Status": {"State": "Running"},
                })
            })
        })
        .take(1)
        .collect();
    Json(json!({"error": "", "Items": items}))
}

/// One line of the launch stream.
fn line(stage: &str, state: &str, message: &str) -> Result<String, std::convert::Infallible> {
    Ok(format!(
        "{}\n",
        json!({"Stage": stage, "Obj": "", "State": state, "Message": message})
    ))
}

/// What a launch upload carries.
struct Upload {
    filename: String,
    package: Vec<u8>,
    metadata_uid: Option<String>,
}

async fn read_upload(mut multipart: Multipart) -> Result<Upload, String> {
    let mut upload = Upload {
        filename: String::new(),
        package: Vec::new(),
        metadata_uid: None,
    };
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(|e| format!("the upload is not readable multipart: {e}"))?
    {
        match field.name() {
            Some("context") => {
                upload.filename = field.file_name().unwrap_or_default().to_string();
                upload.package = field
                    .bytes()
                    .await
                    .map_err(|e| format!("the package part is not readable: {e}"))?
                    .to_vec();
            }
            Some("metadata") => {
                let text = field.text().await.map_err(|e| e.to_string())?;
                let value: serde_json::Value = serde_json::from_str(&text)
                    .map_err(|e| format!("metadata is not JSON: {e}"))?;
                upload.metadata_uid = value["plugin_unique_identifier"]
                    .as_str()
                    .map(str::to_string);
            }
            // `verified` is the daemon's own check; the connector checks the signature
            // itself.
            _ => {}
        }
    }
    if upload.package.is_empty() {
        return Err("the upload has no `context` part (the package)".to_string());
    }
    Ok(upload)
}

async fn launch(State(connector): State<Connector>, multipart: Multipart) -> Response {
    let stream = match read_upload(multipart).await {
        Ok(upload) => launch_stream(connector, upload).await,
        Err(message) => futures::stream::iter(vec![line("start", "failed", &message)]).boxed(),
    };
    (
        [(header::CONTENT_TYPE, "text/event-stream")],
        Body::from_stream(stream),
    )
        .into_response()
}

type Lines = futures::stream::BoxStream<'static, Result<String, std::convert::Infallible>>;

async fn launch_stream(connector: Connector, upload: Upload) -> Lines {
    let failed =
        |message: String| futures::stream::iter(vec![line("start", "failed", &message)]).boxed();
    let bytes = upload.package;
    // Reading a package inflates it: blocking work, off the runtime.
    let read = tokio::task::spawn_blocking(move || {
        Package::read(&bytes).map(|package| {
            let signature = package.verify_signature(&[TrustedKey::dify_official()]);
            (package, signature)
        })
    })
    .await;
    let (package, signature) = match read {
        Ok(Ok(read)) => read,
        Ok(Err(e)) => return failed(format!("the package is not valid: {e}")),
        Err(e) => return failed(format!("reading the package failed: {e}")),
    };
    let uid = package.unique_identifier();
    let named = unique_identifier_of(&upload.filename);
    if named.as_deref() != Some(uid.as_str()) {
        return failed(format!(
            "the package is {uid}, but its filename {:?} names {}: its checksum does not match",
            upload.filename,
            named.as_deref().unwrap_or("no package")
        ));
    }
    if let Some(meta) = &upload.metadata_uid {
        if *meta != uid {
            return failed(format!(
                "the package is {uid}, but the launch metadata names {meta}"
            ));
        }
    }
    let declared = match connector.declared(&uid).await {
        Ok(declared) => declared,
        Err(e) => return failed(format!("cannot read the declared Plugins: {e}")),
    };
    let Some(first) = declared
        .iter()
        .find(|p| p.spec.attempt <= 1)
        .or(declared.first())
        .cloned()
    else {
        info!(plugin = %uid, "connector: launch of a package git does not declare refused");
        return failed(format!(
            "{uid} is not declared in git: plugsync installs only the plugins its repository \
             declares. Add it to plugins.yaml (for example `- marketplace: {}` with `version: \
             {}`), run `plugsync lock`, and commit; it is then built and this install succeeds.",
            package.name(),
            package.manifest.version
        ));
    };
    info!(plugin = %uid, signature = signature.recorded_as(), "connector: launch of a declared package");
    follow(connector, first).await
}

/// Streams `plugin`'s progress, from a watch on it, until it runs (`run`/`success` with its
/// endpoint, then `end`), fails, or the launch timeout passes.
async fn follow(connector: Connector, plugin: Arc<Plugin>) -> Lines {
    let name = plugin.name_any();
    let namespace = plugin.namespace().unwrap_or_default();
    let api: Api<Plugin> = Api::namespaced(connector.client.clone(), &namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let events = watcher(api, config)
        .default_backoff()
        .filter_map(|event| async move {
            match event {
                Ok(watcher::Event::Apply(p)) | Ok(watcher::Event::InitApply(p)) => Some(p),
                _ => None,
            }
        });
    let deadline = tokio::time::sleep(connector.launch_timeout);
    let timeout = connector.launch_timeout;
    progress_lines(events, deadline, timeout).boxed()
}

/// The launch lines for a stream of a Plugin's states: a progress line per phase change,
/// then success with the endpoint, or failure with the Plugin's own message.
fn progress_lines(
    states: impl Stream<Item = Plugin> + Send + 'static,
    deadline: tokio::time::Sleep,
    timeout: Duration,
) -> impl Stream<Item = Result<String, std::convert::Infallible>> + Send + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        let mut states = std::pin::pin!(states);
        let mut deadline = std::pin::pin!(deadline);
        let mut last_phase = None;
        loop {
            let plugin = tokio::select! {
                next = states.next() => match next {
                    Some(plugin) => plugin,
                    None => break,
                },
                () = &mut deadline => {
                    let _ = tx.send(line("build", "failed", &format!(
                        "the plugin did not become ready within {}s; its Plugin's status says why \
                         (`kubectl get plugins`); installing again later finds it once it runs",
                        timeout.as_secs()
                    ))).await;
                    break;
                }
            };
            if let Some(endpoint) = ready_endpoint(&plugin) {
                let message = format!(
                    "endpoint={endpoint},name={},id={}",
                    plugin.name_any(),
                    plugin.spec.plugin_id
                );
                let _ = tx.send(line("run", "success", &message)).await;
                let _ = tx.send(line("end", "success", "")).await;
                break;
            }
            let status = plugin.status.clone().unwrap_or_default();
            let phase = status.phase.unwrap_or_default();
            let stalled = status
                .conditions
                .iter()
                .any(|c| c.type_ == "Stalled" && c.status == "True");
            if stalled || phase == PluginPhase::Failed {
                let why = status
                    .message
                    .unwrap_or_else(|| format!("the plugin is {phase:?}"));
                let _ = tx.send(line("build", "failed", &why)).await;
                break;
            }
            if last_phase != Some(phase) {
                last_phase = Some(phase);
                let (stage, message) = match phase {
                    PluginPhase::Running => ("run", "starting the plugin"),
                    PluginPhase::Building => ("build", "building the image"),
                    _ => ("start", "waiting for the build"),
                };
                if tx.send(line(stage, "running", message)).await.is_err() {
                    break; // the daemon went away
                }
            }
        }
    });
    let mut rx = rx;
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filenames_map_to_unique_identifiers() {
        assert_eq!(
            unique_identifier_of("langgenius@agent@0.0.14@abc.difypkg").as_deref(),
            Some("langgenius/agent:0.0.14@abc")
        );
        assert_eq!(
            unique_identifier_of("@agent@0.0.14@abc.difypkg").as_deref(),
            Some("agent:0.0.14@abc")
        );
        assert_eq!(unique_identifier_of("agent.difypkg"), None);
        assert_eq!(unique_identifier_of("a@b@c@d.zip"), None);
    }
}
