//! Dify's serverless connector over real HTTP, answering from Plugins on a real control
//! plane. The requests are shaped as the plugin daemon sends them
//! (langgenius/dify-plugin-daemon `internal/core/serverless_connector`: the raw key in
//! `Authorization`, a url-encoded `filename`, a chunked multipart launch with `context`,
//! `verified` and `metadata`). The daemon itself cannot be built here (the Go module proxy
//! refuses its module), so it is not the client; see docs/dify.md.

use std::time::Duration;

use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use plugsync_core::package::Package;
use plugsync_kube::connector::Connector;
use plugsync_kube::server::ServerState;
use serde_json::{json, Value};

#[path = "common/cluster.rs"]
mod cluster;
use cluster::cluster;

const KEY: &str = "connector-key-0123456789";
const GOLDEN: &str = "tests/fixtures/packages/langgenius-agent_0.0.14.difypkg";

struct Env {
    ns: String,
    plugins: Api<DynamicObject>,
    base: String,
    http: reqwest::Client,
    _stop: tokio::sync::oneshot::Sender<()>,
    _dir: tempfile::TempDir,
}

impl Env {
    async fn new(label: &str, launch_timeout: Duration) -> Env {
        let c = cluster().await;
        c.install_crds().await;
        let ns = c.namespace(label).await;
        let client = c.client().await;
        let resource =
            ApiResource::from_gvk(&GroupVersionKind::gvk("plugsync.dev", "v1alpha1", "Plugin"));
        let plugins = Api::namespaced_with(client.clone(), &ns, &resource);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let stopped = async move {
            let _ = stopped.await;
        };
        let (watch_stop, watch_stopped) = tokio::sync::oneshot::channel::<()>();
        let connector = Connector::start(
            KEY.as_bytes().to_vec(),
            client,
            &ns,
            launch_timeout,
            async move {
                let _ = watch_stopped.await;
            },
        );
        let dir = tempfile::tempdir().expect("dir");
        let mut state = ServerState::new(
            plugsync_core::resolve::cache::Cache::open(dir.path()).expect("cache"),
        );
        state.connector = Some(connector);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move {
            let _keep = watch_stop;
            plugsync_kube::server::serve_on(listener, state, stopped).await
        });
        Env {
            ns,
            plugins,
            base,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("client"),
            _stop: stop,
            _dir: dir,
        }
    }

    /// A Plugin for the golden package, as `plugsync apply` declares it.
    async fn declare(&self, package: &Package) -> String {
        let id = package.plugin_id();
        let plugin: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "plugsync.dev/v1alpha1",
            "kind": "Plugin",
            "metadata": {"name": id, "labels": {
                "plugsync.dev/pluginset": "team", "plugsync.dev/plugin-id": id}},
            "spec": {
                "pluginSet": "team", "name": package.name(),
                "version": package.manifest.version,
                "uniqueIdentifier": package.unique_identifier(), "pluginId": id, "attempt": 1,
                "package": {"source": "path:agent.difypkg", "sha256": package.sha256,
                            "checksum": package.checksum},
                "runner": {"language": "python", "version": "3.12", "entrypoint": "main"},
                "build": {"contextSha256": "2".repeat(64), "inputsHash": "3".repeat(64),
                          "image": format!("r.local/agent-{id}:0.0.14")},
                "runtime": {}
            }
        }))
        .expect("plugin");
        self.plugins
            .create(&PostParams::default(), &plugin)
            .await
            .expect("create plugin");
        id
    }

    /// Sets the Plugin's status as the controller would.
    async fn status(&self, name: &str, status: Value) {
        self.plugins
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": status })),
            )
            .await
            .expect("status");
    }

    fn endpoint(&self, id: &str) -> String {
        format!("http://svc-{id}.{}:8080", self.ns)
    }

    fn running(&self, id: &str) -> Value {
        json!({
            "phase": "Running",
            "endpoint": self.endpoint(id),
            "conditions": [{"type": "Ready", "status": "True", "reason": "Available",
                "message": "", "lastTransitionTime": "2026-12-04T00:00:00Z"}]
        })
    }

    async fn instances(&self, filename: &str) -> Value {
        let response = self
            .http
            .get(format!("{}/v1/runner/instances", self.base))
            .query(&[("filename", filename)])
            .header("Authorization", KEY)
            .send()
            .await
            .expect("instances");
        assert_eq!(response.status(), 200);
        response.json().await.expect("json")
    }

    /// `POST /v1/launch` as the daemon sends it (chunked: the body is a stream of unknown
    /// length), returning each JSON line of the 200 stream.
    async fn launch(&self, filename: &str, package: Vec<u8>, uid: &str) -> Vec<Value> {
        let boundary = "plugsyncboundary7MA4YWxkTrZu0gW";
        let mut body = Vec::new();
        body.extend(format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"context\"; filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        ).as_bytes());
        body.extend(package);
        body.extend(format!(
            "\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"verified\"\r\n\r\nfalse\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"metadata\"\r\n\r\n{}\r\n--{boundary}--\r\n",
            json!({"plugin_unique_identifier": uid})
        ).as_bytes());
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
            body.chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
        let response = self
            .http
            .post(format!("{}/v1/launch", self.base))
            .header("Authorization", KEY)
            .header(
                "Content-Type",
                format!("multipart/form-data; boundary={boundary}"),
            )
            .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
            .send()
            .await
            .expect("launch");
        assert_eq!(response.status(), 200);
        let text = response.text().await.expect("stream");
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
            .collect()
    }
}

fn golden() -> (Vec<u8>, Package) {
    let bytes = std::fs::read(GOLDEN).expect("golden");
    let package = Package::read(&bytes).expect("package");
    (bytes, package)
}

/// The daemon's filename for a package: `author@name@version@checksum.difypkg`.
fn filename(package: &Package) -> String {
    format!(
        "{}@{}@{}@{}.difypkg",
        package.manifest.author, package.manifest.name, package.manifest.version, package.checksum
    )
}

#[tokio::test]
async fn ping_answers_the_json_string_pong_and_only_to_the_key() {
    let env = Env::new("connector-ping", Duration::from_secs(5)).await;
    for method in [reqwest::Method::GET, reqwest::Method::POST] {
        let response = env
            .http
            .request(method.clone(), format!("{}/ping", env.base))
            .header("Authorization", KEY)
            .send()
            .await
            .expect("ping");
        assert_eq!(response.status(), 200, "{method}");
        assert_eq!(response.text().await.expect("body"), "\"pong\"");
    }
    for key in [None, Some("wrong"), Some("Bearer connector-key-0123456789")] {
        let mut request = env.http.post(format!("{}/ping", env.base));
        if let Some(key) = key {
            request = request.header("Authorization", key);
        }
        let response = request.send().await.expect("ping");
        assert_eq!(response.status(), 401, "{key:?}");
        assert!(!response.text().await.expect("body").contains(KEY));
    }
}

#[tokio::test]
async fn instances_names_the_endpoint_of_a_running_ready_plugin_only() {
    let env = Env::new("connector-instances", Duration::from_secs(5)).await;
    let (_, package) = golden();
    let name = filename(&package);
    // Not declared: no instance, so the daemon would launch.
    assert_eq!(
        env.instances(&name).await,
        json!({"error": "", "Items": []})
    );
    let id = env.declare(&package).await;
    env.status(&id, json!({"phase": "Building"})).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(env.instances(&name).await["Items"], json!([]));
    env.status(&id, env.running(&id)).await;
    let found = cluster::eventually(Duration::from_secs(10), "the instance", || async {
        let answer = env.instances(&name).await;
        (answer["Items"].as_array().map_or(0, Vec::len) == 1).then_some(answer)
    })
    .await;
    assert_eq!(found["error"], "");
    assert_eq!(found["Items"][0]["Endpoint"], env.endpoint(&id));
    assert_eq!(found["Items"][0]["Name"], id);
    // A name that is not a package filename is an error the daemon shows.
    let bad = env.instances("agent.zip").await;
    assert!(bad["error"]
        .as_str()
        .expect("error")
        .contains("not a package filename"));
}

#[tokio::test]
async fn launching_an_undeclared_package_is_refused_with_what_to_do() {
    let env = Env::new("connector-undeclared", Duration::from_secs(5)).await;
    let (bytes, package) = golden();
    let lines = env
        .launch(&filename(&package), bytes, &package.unique_identifier())
        .await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["State"], "failed");
    let message = lines[0]["Message"].as_str().expect("message");
    assert!(message.contains("is not declared in git"), "{message}");
    assert!(message.contains("plugins.yaml"), "{message}");
    // Nothing was created for it.
    let list = env.plugins.list(&Default::default()).await.expect("list");
    assert!(list.items.is_empty());
}

#[tokio::test]
async fn a_launch_whose_filename_checksum_is_not_the_package_s_is_refused() {
    let env = Env::new("connector-checksum", Duration::from_secs(5)).await;
    let (bytes, package) = golden();
    env.declare(&package).await;
    let wrong = filename(&package).replace(&package.checksum[..8], "00000000");
    let lines = env
        .launch(&wrong, bytes, &package.unique_identifier())
        .await;
    assert_eq!(lines[0]["State"], "failed", "{lines:?}");
    assert!(lines[0]["Message"]
        .as_str()
        .expect("message")
        .contains("checksum does not match"));
}

#[tokio::test]
async fn concurrent_launches_of_a_declared_package_wait_for_its_one_build_and_get_its_endpoint() {
    let env = Env::new("connector-launch", Duration::from_secs(60)).await;
    let (bytes, package) = golden();
    let id = env.declare(&package).await;
    env.status(&id, json!({"phase": "Building"})).await;
    let name = filename(&package);
    let uid = package.unique_identifier();
    let launches = futures::future::join(
        env.launch(&name, bytes.clone(), &uid),
        env.launch(&name, bytes.clone(), &uid),
    );
    let finish = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        env.status(&id, env.running(&id)).await;
    };
    let ((first, second), ()) = futures::future::join(launches, finish).await;
    for lines in [first, second] {
        let stages: Vec<(&str, &str)> = lines
            .iter()
            .map(|l| (l["Stage"].as_str().unwrap(), l["State"].as_str().unwrap()))
            .collect();
        assert_eq!(
            stages,
            vec![("build", "running"), ("run", "success"), ("end", "success")],
            "{lines:?}"
        );
        assert_eq!(
            lines[1]["Message"],
            format!("endpoint={},name={id},id={id}", env.endpoint(&id))
        );
    }
    // The connector started nothing of its own: one Plugin, as git declared it.
    let list = env.plugins.list(&Default::default()).await.expect("list");
    assert_eq!(list.items.len(), 1);
}

#[tokio::test]
async fn a_launch_of_a_failing_plugin_reports_the_plugin_s_own_message() {
    let env = Env::new("connector-failing", Duration::from_secs(30)).await;
    let (bytes, package) = golden();
    let id = env.declare(&package).await;
    env.status(
        &id,
        json!({"phase": "BuildFailed", "message": "pip install failed: no matching distribution",
               "conditions": [{"type": "Stalled", "status": "True", "reason": "MaxAttempts",
                 "message": "", "lastTransitionTime": "2026-12-04T00:00:00Z"}]}),
    )
    .await;
    let lines = env
        .launch(&filename(&package), bytes, &package.unique_identifier())
        .await;
    let last = lines.last().expect("a line");
    assert_eq!(last["State"], "failed", "{lines:?}");
    assert!(last["Message"]
        .as_str()
        .expect("message")
        .contains("pip install failed"));
}
