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
