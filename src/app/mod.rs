//! The application layer: what each command does that is more than a call (the long-running
//! ones, the lock flow, the diff's choice of revisions), wired from the core and the
//! Kubernetes layer. The CLI (`crate::cli`) parses arguments into these options, calls in, and
//! prints; nothing here parses a flag or writes to stdout.
pub(crate) mod controller;
pub(crate) mod diff;
pub(crate) mod files;
pub(crate) mod inventory;
pub(crate) mod lock;
pub(crate) mod run;
pub(crate) mod shutdown;

use std::sync::Arc;
use std::time::Duration;

use plugsync_core::render::RenderSettings;
use plugsync_core::resolve::cache::Cache;
use plugsync_core::Error;
use plugsync_kube::controller::registry_check::SecretRegistryCheck;
use plugsync_kube::controller::Context;

/// How long one registry question (does this image exist?) may take before the controller
/// builds instead.
const REGISTRY_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// The plugin controller's context as `controller` and `run` start it: the cache the build
/// contexts are served from, and image reuse checked against the registry.
pub(crate) fn controller_context(
    client: &kube::Client,
    cache: &Cache,
    settings: RenderSettings,
) -> Context {
    let mut context = Context::new(client.clone(), cache.clone(), settings);
    context.registry = Some(Arc::new(SecretRegistryCheck::new(
        client.clone(),
        REGISTRY_CHECK_TIMEOUT,
    )));
    context
}

/// Runs `work` on a blocking thread, with the runtime's handle for the downloads it awaits:
/// loading, reading the cache, SQLite and rendering never run on the runtime's workers.
pub(crate) async fn off_runtime<T: Send + 'static>(
    work: impl FnOnce(&tokio::runtime::Handle) -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || work(&runtime))
        .await
        .map_err(|e| Error::Usage(format!("internal error: the work thread failed: {e}")))?
}
