//! The cluster edge: building a Kubernetes client, and choosing a namespace, the way kubectl
//! users expect.
//!
//! `--kubeconfig` (else `$KUBECONFIG`, else `~/.kube/config`), `--context` to pick a context,
//! and in-cluster service-account configuration when running in a pod. The namespace is
//! `-n/--namespace` (or `$PLUGSYNC_NAMESPACE`), else the kubeconfig context's, else in a pod
//! the service account's (the pod's own namespace), else `default`: kubectl's order.

use std::path::PathBuf;
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use plugsync_core::error::Error;

/// The environment variable every cluster command reads its namespace from when
/// `-n/--namespace` is not given (the only one: the Deployment in deploy/ sets it from the
/// downward API).
pub const NAMESPACE_ENV: &str = "PLUGSYNC_NAMESPACE";

/// Where to find the cluster.
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// A kubeconfig file; `None` means `$KUBECONFIG`, `~/.kube/config`, or in-cluster.
    pub kubeconfig: Option<PathBuf>,
    /// A kubeconfig context other than the current one.
    pub context: Option<String>,
    /// The namespace asked for with `-n/--namespace` (or [`NAMESPACE_ENV`]).
    pub namespace: Option<String>,
}

/// Why a command works in the namespace it does: printed next to it, so a user who expected
/// another one sees at once which setting to change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamespaceSource {
    /// `-n/--namespace` or [`NAMESPACE_ENV`].
    Flag,
    /// The declared set's `metadata.namespace` (plugins.yaml).
    Manifest,
    /// The kubeconfig context; `declared` is false when the context names no namespace and
    /// `default` was taken, as kubectl does.
    Context {
        /// The context's name.
        name: String,
        /// Whether the context sets a namespace.
        declared: bool,
    },
    /// The pod's own namespace (the service account's namespace file).
    InCluster,
}

impl std::fmt::Display for NamespaceSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NamespaceSource::Flag => write!(f, "from --namespace"),
            NamespaceSource::Manifest => write!(f, "from plugins.yaml"),
            NamespaceSource::Context {
                name,
                declared: true,
            } => write!(f, "from the kubeconfig context {name}"),
            NamespaceSource::Context {
                name,
                declared: false,
            } => write!(f, "the kubeconfig context {name} names none"),
            NamespaceSource::InCluster => write!(f, "this pod's namespace"),
        }
    }
}

/// A client, and the namespace the command works in.
#[derive(Clone)]
pub struct Cluster {
    /// The client; its default namespace is [`Cluster::namespace`].
    pub client: Client,
    /// The command's namespace (see the module doc for the order).
    pub namespace: String,
    /// Where [`Cluster::namespace`] came from.
    pub source: NamespaceSource,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("namespace", &self.namespace)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// `namespace X (why)`: the line cluster commands print on stderr before they start.
    pub fn namespace_line(&self) -> String {
        format!("namespace {} ({})", self.namespace, self.source)
    }
}

/// The outcome of [`namespace_for_set`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetNamespace {
    /// Work in this namespace.
    Use(String, NamespaceSource),
    /// plugins.yaml declares `declared`, but `-n` asked for `flag`: kubectl refuses such an
    /// apply, and so does plugsync.
    Conflict {
        /// `metadata.namespace` of the set.
        declared: String,
        /// The `-n/--namespace` value.
        flag: String,
    },
}

/// The namespace of a declared set on `cluster`, by kubectl's rule for a manifest: the
/// manifest's own namespace wins over the context's, and an explicit `-n` naming another one
/// is an error; a manifest without one takes `-n`, else the context's.
pub fn namespace_for_set(declared: Option<&str>, cluster: &Cluster) -> SetNamespace {
    match declared {
        Some(declared) if cluster.source == NamespaceSource::Flag => {
            if declared == cluster.namespace {
                SetNamespace::Use(declared.to_string(), NamespaceSource::Flag)
            } else {
                SetNamespace::Conflict {
                    declared: declared.to_string(),
                    flag: cluster.namespace.clone(),
                }
            }
        }
        Some(declared) => SetNamespace::Use(declared.to_string(), NamespaceSource::Manifest),
        None => SetNamespace::Use(cluster.namespace.clone(), cluster.source.clone()),
    }
}

/// Whether this process runs in a Kubernetes pod: the kubelet sets these two variables in
/// every container (with or without `enableServiceLinks`).
pub fn running_in_pod() -> bool {
    std::env::var_os("KUBERNETES_SERVICE_HOST").is_some_and(|v| !v.is_empty())
        && std::env::var_os("KUBERNETES_SERVICE_PORT").is_some_and(|v| !v.is_empty())
}

/// A client for the cluster the options name, and the namespace to work in. Nothing is sent
/// to the cluster yet.
pub async fn connect(options: &ClusterOptions) -> Result<Cluster, Error> {
    let kube_options = KubeConfigOptions {
        context: options.context.clone(),
        ..KubeConfigOptions::default()
    };
    let from_kubeconfig = |kubeconfig: Kubeconfig| {
        let context = options
            .context
            .clone()
            .or_else(|| kubeconfig.current_context.clone())
            .unwrap_or_default();
        let declared = kubeconfig
            .contexts
            .iter()
            .find(|c| c.name == context)
            .and_then(|c| c.context.as_ref())
            .is_some_and(|c| c.namespace.as_deref().is_some_and(|n| !n.is_empty()));
        (
            kubeconfig,
            NamespaceSource::Context {
                name: context,
                declared,
            },
        )
    };
    let (config, source) = match &options.kubeconfig {
        Some(path) => {
            let (kubeconfig, source) = from_kubeconfig(
                Kubeconfig::read_from(path)
                    .map_err(|e| Error::Usage(format!("{}: {e}", path.display())))?,
            );
            let config = Config::from_custom_kubeconfig(kubeconfig, &kube_options)
                .await
                .map_err(|e| Error::Usage(format!("{}: {e}", path.display())))?;
            (config, source)
        }
        None => match Kubeconfig::read() {
            Ok(kubeconfig) => {
                let (kubeconfig, source) = from_kubeconfig(kubeconfig);
                let config = Config::from_custom_kubeconfig(kubeconfig, &kube_options)
                    .await
                    .map_err(|e| Error::Usage(format!("kubeconfig: {e}")))?;
                (config, source)
            }
            Err(e) if options.context.is_some() => {
                return Err(Error::Usage(format!("kubeconfig: {e}")))
            }
            Err(kubeconfig_error) => match Config::incluster() {
                Ok(config) => (config, NamespaceSource::InCluster),
                Err(in_cluster_error) => {
                    return Err(Error::Usage(format!(
                        "no cluster configuration found: no kubeconfig ({kubeconfig_error}) \
                         and not in a pod ({in_cluster_error}); pass --kubeconfig or set \
                         KUBECONFIG"
                    )))
                }
            },
        },
    };
    let (namespace, source) = match options.namespace.as_deref().filter(|n| !n.is_empty()) {
        Some(namespace) => (namespace.to_string(), NamespaceSource::Flag),
        None => (config.default_namespace.clone(), source),
    };
    let mut config = config;
    config.default_namespace = namespace.clone();
    let client = client_for(config)?;
    Ok(Cluster {
        client,
        namespace,
        source,
    })
}

/// Longest wait for the API server to answer a request: above the 290 s a watch asks the
/// server to hold it open (kube-runtime's watcher), so a quiet watch is never cut, while a
/// server that stops answering is given up on instead of waited for forever (kube 5 sets no
/// read timeout by default).
pub const READ_TIMEOUT: Duration = Duration::from_secs(295);

/// The client every command uses for `config`, with plugsync's network settings:
/// - a read timeout ([`READ_TIMEOUT`], reset by each write) next to kube's connect (30 s)
///   and write (295 s) timeouts, so no call waits forever;
/// - kube's own retry layer off. It retries 429, 503 and 504 up to 15 times, backing off up
///   to 1000 s between tries, under every call: under the applier's bounded retry
///   ([`crate::apply::RetryPolicy`], 6 attempts, which also retries 500, 502 and broken
///   connections) that made up to 7 × 16 requests of one failing apply, and under the
///   leader's lease renewals it could outlast the renew deadline. Calls outside the applier
///   are retried by their loops (the controller's requeue, the git loop's next poll, the
///   leader's retry period).
pub fn client_for(mut config: Config) -> Result<Client, Error> {
    config.default_retry = false;
    config.read_timeout = Some(READ_TIMEOUT);
    config.reset_reader_on_write = true;
    Client::try_from(config).map_err(|e| Error::Usage(format!("kubernetes client: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on(namespace: &str, source: NamespaceSource) -> SetNamespace {
        let client = Client::try_from(Config::new("http://127.0.0.1:1".parse().expect("uri")))
            .expect("client");
        let cluster = Cluster {
            client,
            namespace: namespace.to_string(),
            source,
        };
        namespace_for_set(Some("dify"), &cluster)
    }

    #[tokio::test]
    async fn a_declared_namespace_follows_kubectl_rules() {
        let context = NamespaceSource::Context {
            name: "kind".into(),
            declared: true,
        };
        // The manifest's namespace wins over the context's.
        assert_eq!(
            on("team-a", context.clone()),
            SetNamespace::Use("dify".into(), NamespaceSource::Manifest)
        );
        // An explicit -n naming the same one is fine; another one is refused.
        assert_eq!(
            on("dify", NamespaceSource::Flag),
            SetNamespace::Use("dify".into(), NamespaceSource::Flag)
        );
        assert_eq!(
            on("team-a", NamespaceSource::Flag),
            SetNamespace::Conflict {
                declared: "dify".into(),
                flag: "team-a".into()
            }
        );
        // In a pod, the set's own namespace is used (`run` checks it is the pod's).
        assert_eq!(
            on("plugsync-system", NamespaceSource::InCluster),
            SetNamespace::Use("dify".into(), NamespaceSource::Manifest)
        );
    }

    #[tokio::test]
    async fn an_undeclared_namespace_is_the_commands() {
        let client = Client::try_from(Config::new("http://127.0.0.1:1".parse().expect("uri")))
            .expect("client");
        let source = NamespaceSource::Context {
            name: "kind".into(),
            declared: false,
        };
        let cluster = Cluster {
            client,
            namespace: "default".into(),
            source: source.clone(),
        };
        assert_eq!(
            namespace_for_set(None, &cluster),
            SetNamespace::Use("default".into(), source)
        );
        assert_eq!(
            cluster.namespace_line(),
            "namespace default (the kubeconfig context kind names none)"
        );
    }

    #[tokio::test]
    async fn the_flag_beats_the_kubeconfig_context() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config");
        std::fs::write(
            &path,
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: \
             https://127.0.0.1:6443\nusers:\n- name: u\n  user: {}\ncontexts:\n- name: one\n  \
             context:\n    cluster: c\n    user: u\n    namespace: team-a\n- name: two\n  \
             context:\n    cluster: c\n    user: u\ncurrent-context: one\n",
        )
        .expect("write");
        let options = |context: Option<&str>, namespace: Option<&str>| ClusterOptions {
            kubeconfig: Some(path.clone()),
            context: context.map(str::to_string),
            namespace: namespace.map(str::to_string),
        };
        let c = connect(&options(None, None)).await.expect("connect");
        assert_eq!(c.namespace, "team-a");
        assert_eq!(c.client.default_namespace(), "team-a");
        assert_eq!(
            c.namespace_line(),
            "namespace team-a (from the kubeconfig context one)"
        );
        let c = connect(&options(Some("two"), None)).await.expect("connect");
        assert_eq!(
            (c.namespace.as_str(), c.source.clone()),
            (
                "default",
                NamespaceSource::Context {
                    name: "two".into(),
                    declared: false
                }
            )
        );
        let c = connect(&options(Some("two"), Some("x")))
            .await
            .expect("connect");
        assert_eq!(
            (c.namespace.as_str(), c.source.clone()),
            ("x", NamespaceSource::Flag)
        );
        assert_eq!(c.client.default_namespace(), "x");
        assert_eq!(c.namespace_line(), "namespace x (from --namespace)");
    }
}
