//! The templates a Plugin's children are rendered from, read from the cluster: the ConfigMap
//! its `spec.templates` names (applied with its PluginSet by `plugsync apply` or the git loop),
//! or the built-in templates when it names none. Nothing is handed over in memory, so a
//! standalone `plugsync controller` renders exactly what `plugsync run` would.
//!
//! The ConfigMaps are read through a watch (a reflector store of the ConfigMaps labelled
//! [`LABEL_TEMPLATES`]); one the store does not hold yet is read once more directly, since a
//! Plugin's reconcile may run on the event of the ConfigMap's creation before the store saw it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::reflector::{self, store::Writer, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Api;
use tracing::warn;

use plugsync_core::render::{self, Compiled, Templates, LABEL_TEMPLATES};

/// Why a Plugin's templates cannot be had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Unavailable {
    /// The ConfigMap does not exist (not applied yet, or pruned).
    Missing(String),
    /// It exists, but is not what plugsync wrote for its name, or does not compile.
    Invalid(String),
}

impl Unavailable {
    /// The condition reason a Plugin shows.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            Unavailable::Missing(_) => "TemplatesMissing",
            Unavailable::Invalid(_) => "TemplatesInvalid",
        }
    }

    /// What the Plugin's status says.
    pub(crate) fn message(&self) -> String {
        match self {
            Unavailable::Missing(name) => format!(
                "waiting for ConfigMap {name}, which holds this Plugin's templates (it is \
                 applied with the PluginSet: run `plugsync apply` of the commit, or let the \
                 git loop apply it)"
            ),
            Unavailable::Invalid(message) => message.clone(),
        }
    }
}

/// The watched templates ConfigMaps of the controller's namespace.
pub(crate) struct TemplatesWatch {
    /// The store reconciles read, and the writer that fills it until a controller run
    /// takes it ([`TemplatesWatch::feed`]).
    store: Mutex<(Store<ConfigMap>, Option<Writer<ConfigMap>>)>,
    /// Compiled once per set of templates, not once per reconcile.
    compiled: render::EnvironmentCache,
}

impl Default for TemplatesWatch {
    fn default() -> Self {
        let (reader, writer) = reflector::store();
        TemplatesWatch {
            store: Mutex::new((reader, Some(writer))),
            compiled: render::EnvironmentCache::default(),
        }
    }
}

impl std::fmt::Debug for TemplatesWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TemplatesWatch").finish_non_exhaustive()
    }
}

/// The watcher configuration of the templates ConfigMaps: only those plugsync labelled.
pub(crate) fn watch_config() -> watcher::Config {
    watcher::Config::default().labels(LABEL_TEMPLATES)
}

impl TemplatesWatch {
    /// The watch that keeps the store current, to be driven for as long as the controller
    /// runs. A second run (with the same context) gets a store of its own.
    pub(crate) fn feed(&self, api: Api<ConfigMap>) -> impl Stream<Item = ()> + Send + 'static {
        let mut slot = self.store.lock().unwrap_or_else(PoisonError::into_inner);
        let writer = match slot.1.take() {
            Some(writer) => writer,
            None => {
                let (reader, writer) = reflector::store();
                slot.0 = reader;
                writer
            }
        };
        reflector::reflector(writer, watcher(api, watch_config()).default_backoff()).map(|event| {
            if let Err(e) = event {
                warn!(error = %e, "watching the templates ConfigMaps");
            }
        })
    }

    fn cached(&self, namespace: &str, name: &str) -> Option<Arc<ConfigMap>> {
        let store = self
            .store
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .0
            .clone();
        store.get(&ObjectRef::new(name).within(namespace))
    }

    /// The compiled templates named `name` (none: the built-in ones) in `namespace`, or why
    /// they cannot be had. `Err` only when the cluster could not be asked.
    pub(crate) async fn compiled(
        &self,
        client: &kube::Client,
        namespace: &str,
        name: Option<&str>,
    ) -> Result<Result<Arc<Compiled>, Unavailable>, kube::Error> {
        let Some(name) = name else {
            return Ok(self
                .compiled
                .environment(&Templates::builtin())
                .map_err(|e| Unavailable::Invalid(format!("the built-in templates: {e}"))));
        };
        let config_map = match self.cached(namespace, name) {
            Some(config_map) => config_map,
            None => {
                let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
                match api.get_opt(name).await? {
                    Some(config_map) => Arc::new(config_map),
                    None => return Ok(Err(Unavailable::Missing(name.to_string()))),
                }
            }
        };
        let empty = BTreeMap::new();
        let data = config_map.data.as_ref().unwrap_or(&empty);
        Ok(Templates::from_config_map(name, data)
            .and_then(|templates| self.compiled.environment(&templates))
            .map_err(|e| {
                Unavailable::Invalid(match e {
                    render::RenderError::TemplatesConfigMap { .. } => e.to_string(),
                    other => format!("ConfigMap {name}: {other}"),
                })
            }))
    }
}
