//! The cluster edge: building a Kubernetes client the way kubectl users expect.
//!
//! `--kubeconfig` (else `$KUBECONFIG`, else `~/.kube/config`), `--context` to pick a context,
//! and in-cluster service-account configuration when running in a pod.

use std::path::PathBuf;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use crate::error::Error;

/// Where to find the cluster.
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// A kubeconfig file; `None` means `$KUBECONFIG`, `~/.kube/config`, or in-cluster.
    pub kubeconfig: Option<PathBuf>,
    /// A kubeconfig context other than the current one.
    pub context: Option<String>,
}

/// A client for the cluster the options name.
pub async fn client(options: &ClusterOptions) -> Result<Client, Error> {
    let kube_options = KubeConfigOptions {
        context: options.context.clone(),
        ..KubeConfigOptions::default()
    };
    let config = match &options.kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .map_err(|e| Error::Usage(format!("{}: {e}", path.display())))?;
            Config::from_custom_kubeconfig(kubeconfig, &kube_options)
                .await
                .map_err(|e| Error::Usage(format!("{}: {e}", path.display())))?
        }
        None if options.context.is_some() => Config::from_kubeconfig(&kube_options)
            .await
            .map_err(|e| Error::Usage(format!("kubeconfig: {e}")))?,
        None => Config::infer()
            .await
            .map_err(|e| Error::Usage(format!("no cluster configuration found: {e}")))?,
    };
    Client::try_from(config).map_err(|e| Error::Usage(format!("kubernetes client: {e}")))
}
