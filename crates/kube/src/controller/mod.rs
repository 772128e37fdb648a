//! The plugin controller: drives each `Plugin` from package to a running endpoint.
//!
//! [`lifecycle`] is the pure core (observations in, decisions out); the Kubernetes edge
//! gathers observations and carries decisions out.

pub mod history;
pub mod lifecycle;
pub mod reconcile;
pub mod registry_check;
pub(crate) mod set_status;
pub(crate) mod templates;

use std::sync::Arc;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{watcher, Controller};
use kube::{Api, ResourceExt};
use tracing::{debug, warn};

use plugsync_core::crd::Plugin;
pub use reconcile::{Context, RegistryCheck};

/// Runs the plugin loop in `namespace` until `shutdown` resolves: watches Plugins, the
/// Jobs, Deployments and Services they own and the templates ConfigMaps they name, and
/// reconciles each Plugin on every change. With
/// [`Context::publish_set_status`], it also keeps each PluginSet's status columns current.
pub async fn run(
    ctx: Arc<Context>,
    namespace: String,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let shutdown = shutdown.shared();
    let sets = {
        let (ctx, namespace, shutdown) = (ctx.clone(), namespace.clone(), shutdown.clone());
        async move {
            if ctx.publish_set_status {
                set_status::run(ctx, namespace, shutdown).await;
            }
        }
    };
    futures::join!(plugin_loop(ctx.clone(), &namespace, shutdown), sets);
}

async fn plugin_loop(
    ctx: Arc<Context>,
    namespace: &str,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let plugins: Api<Plugin> = Api::namespaced(client.clone(), namespace);
    let shutdown = shutdown.shared();
    let controller = Controller::new(plugins, watcher::Config::default());
    let store = controller.store();
    // The templates ConfigMaps: a store that reconciles read (fed here), and a trigger, so
    // a Plugin waiting for its ConfigMap reconciles when it appears.
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let feed = ctx
        .templates
        .feed(config_maps.clone())
        .take_until(shutdown.clone())
        .for_each(|()| async {});
    let naming = store.clone();
    let done = controller
        .watches(
            config_maps,
            templates::watch_config(),
            move |config_map: ConfigMap| {
                let name = config_map.name_any();
                naming
                    .state()
                    .into_iter()
                    .filter(|p| p.spec.templates.as_deref() == Some(name.as_str()))
                    .map(|p| ObjectRef::from_obj(&*p))
                    .collect::<Vec<_>>()
            },
        )
        .owns(
            Api::<Job>::namespaced(client.clone(), namespace),
            watcher::Config::default(),
        )
        .owns(
            Api::<Deployment>::namespaced(client.clone(), namespace),
            watcher::Config::default(),
        )
        .owns(
            Api::<Service>::namespaced(client.clone(), namespace),
            watcher::Config::default(),
        )
        .owns(
            Api::<Plugin>::namespaced(client, namespace),
            watcher::Config::default(),
        )
        .graceful_shutdown_on(shutdown.clone())
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(|result| async move {
            use kube::runtime::controller::Error;
            match result {
                Ok((object, _)) => debug!(plugin = %object.name, "reconciled"),
                // A deleted Plugin left the local store while a reconcile of it was queued
                // (its children's deletions queue one): nothing to do, and no error.
                Err(Error::ObjectNotFound(object)) => {
                    debug!(plugin = %object.name, "deleted before its queued reconcile")
                }
                // error_policy has logged it, naming the Plugin.
                Err(Error::ReconcilerFailed(..)) => {}
                Err(e) => warn!(error = %e, "reconcile error"),
            }
        });
    futures::join!(until_stopped(done, store, shutdown), feed);
}

/// Drives a controller until it ends after `shutdown`. kube-runtime holds a controller's
/// reconciles until its store has listed once, and keeps holding them after a shutdown
/// signal: a process told to stop during its first list would never exit. Nothing has been
/// reconciled then, so the controller is dropped at once; otherwise the reconciles in flight
/// finish first (graceful shutdown).
pub(crate) async fn until_stopped<K>(
    done: impl std::future::Future<Output = ()>,
    store: kube::runtime::reflector::Store<K>,
    shutdown: impl std::future::Future<Output = ()>,
) where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    let stopped_before_listing = async {
        shutdown.await;
        if store.wait_until_ready().now_or_never().is_none() {
            return;
        }
        std::future::pending::<()>().await
    };
    tokio::select! {
        () = done => {}
        () = stopped_before_listing => debug!("stopped before the first list completed"),
    }
}
