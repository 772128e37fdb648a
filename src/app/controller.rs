//! `plugsync controller`: the plugin controller alone, with the build-context server beside it,
//! until SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::sync::Arc;

use plugsync_core::error::Error;
use plugsync_core::render::RenderSettings;
use plugsync_core::resolve::cache::Cache;
use plugsync_kube::cluster::Cluster;

use super::shutdown::Shutdown;

/// What the standalone controller runs with.
pub(crate) struct ControllerOptions {
    pub(crate) cluster: Cluster,
    pub(crate) listen: SocketAddr,
    pub(crate) cache: Cache,
    pub(crate) render: RenderSettings,
}

/// Runs the controller and the context server until a signal, then lets both finish.
pub(crate) async fn run(options: ControllerOptions) -> Result<(), Error> {
    let ControllerOptions {
        cluster,
        listen,
        cache,
        render,
    } = options;
    let context = super::controller_context(&cluster.client, &cache, render);
    let shutdown = Shutdown::on_signals();
    let server = tokio::spawn(plugsync_kube::server::serve(
        listen,
        cache,
        shutdown.stopped(),
    ));
    let controller = tokio::spawn(plugsync_kube::controller::run(
        Arc::new(context),
        cluster.namespace.clone(),
        shutdown.stopped(),
    ));
    tracing::info!(
        namespace = %cluster.namespace,
        source = %cluster.source,
        %listen,
        "controller running"
    );
    // The controller ends on the signal (or on its own if it fails): then the server stops too.
    let _ = controller.await;
    shutdown.trigger();
    match server.await {
        Ok(Err(e)) => Err(Error::Cluster(format!("context server on {listen}: {e}"))),
        _ => Ok(()),
    }
}
