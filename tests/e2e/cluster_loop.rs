//! The GitOps loop on the real control plane, as a platform engineer would run it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, ListParams};
use plugsync_core::crd::Plugin;
use plugsync_core::crd::PluginSetResource;
use serde_json::Value;

use crate::cluster::{self, cluster, TestCluster};
use crate::fs;
use crate::git_server::{self, tools_or_skip, GitDaemon, Need, SourceRepo};

/// Where deploy/ installs plugsync, and so the namespace the example set must declare.
const NS: &str = "plugsync-system";
const SET: &str = "example";
/// A Plugin build, push and rollout on the fake node takes a second or two.
const WAIT: Duration = Duration::from_secs(120);

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The `plugsync run` process; killed (SIGTERM, then SIGKILL) when dropped.
struct Running {
    child: Child,
    log: PathBuf,
}

impl Running {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..100 {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The arguments of the shipped Deployment's container (deploy/deployment.yaml), with
/// `$(PLUGSYNC_NAMESPACE)` expanded as the kubelet does.
fn shipped_args() -> Vec<String> {
    let text = std::fs::read_to_string(root().join("deploy/deployment.yaml")).expect("deployment");
    let yaml: Value = serde_saphyr::from_str(&text).expect("yaml");
    yaml["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| {
            a.as_str()
                .expect("string")
                .replace("$(PLUGSYNC_NAMESPACE)", NS)
        })
        .collect()
}

/// The shipped arguments, but for what only a process outside the cluster must change: the
/// git URL, a short poll interval, a loopback listen address with the matching context URL
/// (build pods here reach the host's loopback), a local cache, and `--commit-lock`.
fn run_args(git_url: &str, listen: &str, cache: &Path) -> Vec<String> {
    let mut args: Vec<String> = shipped_args()
        .into_iter()
        .map(|a| {
            let flag = a.split('=').next().unwrap_or(&a).to_string();
            match flag.as_str() {
                "--git-url" => format!("--git-url={git_url}"),
                "--interval" => "--interval=1s".to_string(),
                "--listen" => format!("--listen={listen}"),
                "--context-base-url" | "--context-url" => format!("--context-url=http://{listen}"),
                "--cache-dir" => format!("--cache-dir={}", cache.display()),
                _ => a,
            }
        })
        .collect();
    args.push("--commit-lock".to_string());
    args
}

/// A kubeconfig holding a token of the shipped `plugsync` ServiceAccount: the loop runs with
/// exactly the rights deploy/role.yaml grants, enforced by the real authorizer.
fn service_account_kubeconfig(c: &TestCluster, path: &Path) {
    let token = c.kubectl_ok(&["create", "token", "plugsync", "-n", NS, "--duration=2h"]);
    let admin = std::fs::read_to_string(c.kubeconfig()).expect("kubeconfig");
    let value = |key: &str| {
        admin
            .lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .expect(key)
            .trim()
            .to_string()
    };
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\n    \
         certificate-authority-data: {}\nusers:\n- name: plugsync\n  user:\n    token: {}\n\
         contexts:\n- name: plugsync\n  context:\n    cluster: test\n    user: plugsync\n    \
         namespace: {NS}\ncurrent-context: plugsync\n",
        value("server:"),
        value("certificate-authority-data:"),
        token.trim()
    );
    std::fs::write(path, text).expect("write kubeconfig");
}

/// The bundled example, as a team's repository for this cluster: its set in `plugsync-system`
/// and its images pushed to the test registry.
fn example_files(c: &TestCluster, work: &Path) -> PathBuf {
    let repo = work.join("example");
    fs::copy_dir(&root().join("examples"), &repo);
    let path = repo.join("plugins.yaml");
    let yaml = std::fs::read_to_string(&path).expect("read");
    let retargeted = yaml
        .replace("  namespace: dify\n", &format!("  namespace: {NS}\n"))
        .replace(
            "prefix: registry.local:5000/dify-plugins",
            &format!("prefix: {}/dify-plugins", c.registry()),
        );
    assert_ne!(retargeted, yaml);
    std::fs::write(&path, retargeted).expect("write");
    repo
}

/// Commits every file of `from` (recursively) into the served repository.
fn commit_tree(source: &SourceRepo, from: &Path, message: &str) -> String {
    fs::copy_dir(from, &source.path);
    source.commit(&[], message)
}

/// The digest the registry holds for `repository@digest` (a manifest HEAD), if it does.
async fn registry_has(registry: &str, repository: &str, digest: &str) -> bool {
    reqwest::Client::new()
        .head(format!("http://{registry}/v2/{repository}/manifests/{digest}"))
        .header(
            "accept",
            "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json",
        )
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

async fn wait_set(
    sets: &Api<PluginSetResource>,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let found = cluster::wait_for(sets, SET, WAIT, what, |s: Option<&PluginSetResource>| {
        s.and_then(|s| serde_json::to_value(s).ok())
            .is_some_and(|v| check(&v))
    })
    .await;
    serde_json::to_value(found).expect("json")
}

fn plugin_names(plugins: &[Plugin]) -> Vec<String> {
    let mut names: Vec<String> = plugins
        .iter()
        .map(|p| p.metadata.name.clone().unwrap_or_default())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn the_gitops_loop_on_the_real_control_plane() {
    if !tools_or_skip("e2e", Need::Daemon) {
        return;
    }
    let c = cluster().await;
    let work = tempfile::tempdir().expect("work");

    // 1. Install plugsync as the platform team does, and the registry credentials its build
    //    Jobs mount (the Kaniko stand-in pushes with them, as Kaniko would).
    c.kubectl_ok(&[
        "apply",
        "--server-side",
        "-k",
        root().join("deploy").to_str().expect("utf-8"),
    ]);
    c.kubectl_ok(&[
        "create",
        "secret",
        "docker-registry",
        "image-repo-secret",
        "-n",
        NS,
        &format!("--docker-server={}", c.registry()),
        "--docker-username=e2e",
        "--docker-password=e2e-registry-password",
    ]);
    let kubeconfig = work.path().join("kubeconfig");
    service_account_kubeconfig(c, &kubeconfig);
    let client = c.client().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    // The shipped Deployment's pods run on the fake node; this process plays the first one.
    let plugsync_pods = cluster::eventually(WAIT, "the plugsync pods", || async {
        let list = pods
            .list(&ListParams::default().labels("app.kubernetes.io/name=plugsync"))
            .await
            .ok()?;
        (list.items.len() == 2).then_some(list.items)
    })
    .await;
    let pod_name = plugsync_pods[0].metadata.name.clone().expect("name");

    // 2. The team's repository on a real git server.
    let source = SourceRepo::new();
    source.accept_pushes();
    let daemon = GitDaemon::start_accepting_pushes(&source.root);
    let example = example_files(c, work.path());
    let first = commit_tree(&source, &example, "plugins: the example");

    // 3. plugsync run, as the shipped Deployment runs it.
    let listen = format!("127.0.0.1:{}", git_server::free_port());
    let log = work.path().join("plugsync.log");
    let child = Command::new(assert_cmd::cargo::cargo_bin("plugsync"))
        .args(run_args(
            &source.url_on(&daemon.base_url),
            &listen,
            &work.path().join("cache"),
        ))
        .env("KUBECONFIG", &kubeconfig)
        .env("POD_NAME", &pod_name)
        .env("PLUGSYNC_NAMESPACE", NS)
        .env("PLUGSYNC_LOG_FORMAT", "json")
        .env_remove("PLUGSYNC_PLUGIN_DIRS")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).expect("log"))
        .stderr(std::fs::File::create(work.path().join("plugsync.stderr")).expect("log"))
        .spawn()
        .expect("plugsync run");
    let running = Running {
        child,
        log: work.path().join("plugsync.stderr"),
    };

    // 4. Every example plugin reaches Running; its Deployment runs its image by digest, and
    //    the registry holds that image.
    let sets: Api<PluginSetResource> = Api::namespaced(client.clone(), NS);
    let plugins: Api<Plugin> = Api::namespaced(client.clone(), NS);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NS);
    wait_set(&sets, "every example plugin Running", |s| {
        s["status"]["lastAppliedCommit"]
            .as_str()
            .is_some_and(|c| !c.is_empty())
            && s["status"]["phases"] == serde_json::json!({"Running": 2})
    })
    .await;
    let all = plugins
        .list(&ListParams::default())
        .await
        .expect("plugins")
        .items;
    assert_eq!(all.len(), 2, "{}", running.log());
    for plugin in &all {
        let status = plugin.status.as_ref().expect("status");
        let digest = status.image_digest.clone().expect("a built digest");
        let name = plugin.metadata.name.clone().expect("name");
        let deployment = deployments.get(&name).await.expect("its Deployment");
        let image = deployment
            .spec
            .expect("spec")
            .template
            .spec
            .expect("pod")
            .containers[0]
            .image
            .clone()
            .expect("image");
        let (repository, by_digest) = image.split_once('@').expect("run by digest");
        assert_eq!(by_digest, digest, "{image}");
        let repository = repository
            .strip_prefix(&format!("{}/", c.registry()))
            .expect("pushed to the test registry");
        assert!(
            registry_has(c.registry(), repository, &digest).await,
            "{repository}@{digest} is in the registry"
        );
    }
    // The leader labelled its pod, so the plugsync-leader Service (build contexts) has it.
    let leader = pods.get(&pod_name).await.expect("pod");
    assert_eq!(
        leader
            .metadata
            .labels
            .unwrap_or_default()
            .get("plugsync.dev/leader")
            .map(String::as_str),
        Some("true")
    );

    // 5. --commit-lock: the loop pushes the built digests back to the branch (one commit per
    //    pass that finds new ones, so wait for the commit that holds them all).
    let locked_digests = |commit: &str| -> Vec<String> {
        let text = git_server::git(&source.path, &["show", &format!("{commit}:plugins.lock")]);
        let lock: Value = serde_saphyr::from_str(&text).expect("lock");
        let mut digests: Vec<String> = lock["images"]
            .as_array()
            .map(|images| {
                images
                    .iter()
                    .map(|i| i["digest"].as_str().expect("digest").to_string())
                    .collect()
            })
            .unwrap_or_default();
        digests.sort();
        digests
    };
    let pinned = cluster::eventually(WAIT, "every digest committed back", || async {
        let head = source.head();
        (head != first && locked_digests(&head).len() == all.len()).then_some(head)
    })
    .await;
    let locked = locked_digests(&pinned);
    let mut built: Vec<String> = all
        .iter()
        .map(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.image_digest.clone())
                .expect("digest")
        })
        .collect();
    built.sort();
    assert_eq!(locked, built);
    wait_set(&sets, "the bot's commit applied", |s| {
        s["status"]["lastAppliedCommit"] == pinned.as_str()
    })
    .await;

    // 6. A bad commit leaves the cluster as it was and says why in status.
    let set_generation = serde_json::to_value(sets.get(SET).await.expect("set")).expect("json")
        ["metadata"]["generation"]
        .clone();
    let before = plugins
        .list(&ListParams::default())
        .await
        .expect("plugins")
        .items;
    let yaml = std::fs::read_to_string(source.path.join("plugins.yaml")).expect("read");
    let bad = source.commit(
        &[(
            "plugins.yaml",
            &yaml.replace("maxAttempts: 3", "maxAttempts: three"),
        )],
        "plugins: a typo",
    );
    let status = wait_set(&sets, "the bad commit reported", |s| {
        s["status"]["lastFetchedCommit"] == bad.as_str() && s["status"]["message"].is_string()
    })
    .await;
    let message = status["status"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("plugins.yaml") && message.contains("maxAttempts"),
        "{status:#}"
    );
    assert_eq!(status["status"]["lastAppliedCommit"], pinned.as_str());
    let after = plugins
        .list(&ListParams::default())
        .await
        .expect("plugins")
        .items;
    // What git declares is unchanged: same Plugins, same generations, same specs (the
    // controller may still write their status).
    let declared = |ps: &[Plugin]| {
        ps.iter()
            .map(|p| {
                (
                    p.metadata.name.clone(),
                    p.metadata.generation,
                    serde_json::to_value(&p.spec).expect("spec"),
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(declared(&after), declared(&before), "nothing applied");
    assert_eq!(
        status["metadata"]["generation"], set_generation,
        "the PluginSet's spec is the last good commit's"
    );

    // 7. A commit that removes a plugin prunes it and its children.
    let removed = all
        .iter()
        .find(|p| p.spec.name == "plugsync/hello-world")
        .expect("hello-world")
        .metadata
        .name
        .clone()
        .expect("name");
    let without = yaml
        .lines()
        .collect::<Vec<_>>()
        .join("\n")
        .replace("    - path: plugins/hello-world\n      runtime:\n        env:\n          - name: LOG_LEVEL\n            value: info\n", "");
    assert_ne!(
        without,
        yaml.trim_end(),
        "the example's hello-world entry is as expected"
    );
    // As a user would: edit plugins.yaml, run `plugsync lock`, commit both.
    std::fs::write(source.path.join("plugins.yaml"), format!("{without}\n")).expect("write");
    let lock = Command::new(assert_cmd::cargo::cargo_bin("plugsync"))
        .args(["lock", "--repo"])
        .arg(&source.path)
        .env("PLUGSYNC_CACHE_DIR", work.path().join("cache"))
        .output()
        .expect("plugsync lock");
    assert!(
        lock.status.success(),
        "{}",
        String::from_utf8_lossy(&lock.stderr)
    );
    let prune = source.commit(&[], "plugins: drop hello-world");
    wait_set(&sets, "the removal applied", |s| {
        s["status"]["lastAppliedCommit"] == prune.as_str()
    })
    .await;
    let left = plugins
        .list(&ListParams::default())
        .await
        .expect("plugins")
        .items;
    assert!(
        !plugin_names(&left).contains(&removed),
        "{:?}",
        plugin_names(&left)
    );
    assert_eq!(left.len(), 1);
    let jobs: Api<Job> = Api::namespaced(client.clone(), NS);
    let services: Api<Service> = Api::namespaced(client.clone(), NS);
    cluster::eventually(WAIT, "the removed plugin's children gone", || async {
        let gone = deployments.get_opt(&removed).await.ok()?.is_none()
            && jobs.get_opt(&removed).await.ok()?.is_none()
            && services
                .get_opt(&format!("svc-{removed}"))
                .await
                .ok()?
                .is_none();
        gone.then_some(())
    })
    .await;
    drop(running);
    drop(daemon);
}
