//! What the git loop's PluginSet status is made of, watched instead of polled: reflector
//! stores of the PluginSets and of the sets' Plugins (by the `plugsync.dev/pluginset` label)
//! of the namespace, and a signal raised on every change of either.
//!
//! The loop recomputes the status when the signal fires (after a short debounce, so a burst
//! of Plugin changes costs one recomputation), and writes it only when it differs. A watch
//! that fails is restarted with kube-runtime's default backoff; the stores keep their last
//! state meanwhile.

use std::sync::Arc;

use futures::{Stream, StreamExt};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use plugsync_core::crd::{Plugin, PluginSetResource};
use plugsync_core::render::LABEL_PLUGINSET;

/// The watched PluginSets and Plugins of one namespace. Dropping it stops the watches.
pub(crate) struct SetWatch {
    namespace: String,
    sets: Store<PluginSetResource>,
    plugins: Store<Plugin>,
    changed: Arc<Notify>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for SetWatch {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl SetWatch {
    /// Starts the two watches in `namespace` (on the runtime, until dropped).
    pub(crate) fn start(client: Client, namespace: &str) -> SetWatch {
        let changed = Arc::new(Notify::new());
        let (sets, sets_writer) = reflector::store();
        let (plugins, plugins_writer) = reflector::store();
        let set_events = reflector::reflector(
            sets_writer,
            watcher(
                Api::<PluginSetResource>::namespaced(client.clone(), namespace),
                watcher::Config::default(),
            )
            .default_backoff(),
        );
        let plugin_events = reflector::reflector(
            plugins_writer,
            watcher(
                Api::<Plugin>::namespaced(client, namespace),
                watcher::Config::default().labels(LABEL_PLUGINSET),
            )
            .default_backoff(),
        );
        let tasks = vec![
            tokio::spawn(signal_changes(set_events, changed.clone(), "PluginSets")),
            tokio::spawn(signal_changes(plugin_events, changed.clone(), "Plugins")),
        ];
        SetWatch {
            namespace: namespace.to_string(),
            sets,
            plugins,
            changed,
            tasks,
        }
    }

    /// Resolves at the next change of a PluginSet or a Plugin (at once if one happened since
    /// the last call).
    pub(crate) async fn changed(&self) {
        self.changed.notified().await;
    }

    /// Whether both stores have listed once (before, they know nothing, not "none").
    pub(crate) fn ready(&self) -> bool {
        use futures::FutureExt;
        self.sets.wait_until_ready().now_or_never().is_some()
            && self.plugins.wait_until_ready().now_or_never().is_some()
    }

    /// The PluginSet `name`, as last seen.
    pub(crate) fn set(&self, name: &str) -> Option<Arc<PluginSetResource>> {
        self.sets.get(&ObjectRef::new(name).within(&self.namespace))
    }

    /// Every PluginSet of the namespace, as last seen.
    pub(crate) fn sets(&self) -> Vec<Arc<PluginSetResource>> {
        self.sets.state()
    }

    /// The Plugins of the set `name` (every attempt of every version), as last seen.
    pub(crate) fn plugins_of(&self, name: &str) -> Vec<Plugin> {
        self.plugins
            .state_filter(|p| {
                p.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(LABEL_PLUGINSET))
                    .is_some_and(|set| set == name)
            })
            .iter()
            .map(|p| Plugin::clone(p))
            .collect()
    }
}

/// Drives a reflector's event stream, raising `changed` on every change the store took in
/// (an object applied or deleted, a re-list completed); logs the watch's errors, after which
/// the backoff restarts it.
async fn signal_changes<K>(
    events: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
    changed: Arc<Notify>,
    what: &'static str,
) where
    K: Resource + DeserializeOwned,
{
    let mut events = std::pin::pin!(events);
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
            Ok(watcher::Event::InitDone) => {
                debug!(watch = what, "listed");
                changed.notify_one();
            }
            Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => changed.notify_one(),
            Err(e) => warn!(watch = what, error = %e, "watch failed; restarting it with backoff"),
        }
    }
}
