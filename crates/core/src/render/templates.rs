//! The templates in effect (the built-in ones, with a repository's overrides), compiled
//! into a minijinja environment, and the ConfigMap that carries the overrides into the
//! cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use minijinja::{Environment, UndefinedBehavior};
use serde::Serialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::json;
use super::{RenderError, LABEL_PLUGINSET};
use crate::model::PluginSet;

/// The templates plugsync renders, by file name, with the kind of object each must produce.
pub(crate) const TEMPLATES: [(&str, Option<&str>); 5] = [
    ("Dockerfile.j2", None),
    ("plugin.yaml.j2", Some("Plugin")),
    ("job.yaml.j2", Some("Job")),
    ("deployment.yaml.j2", Some("Deployment")),
    ("service.yaml.j2", Some("Service")),
];

const BUILTIN: [(&str, &str); 5] = [
    (
        "Dockerfile.j2",
        include_str!("../../../../templates/Dockerfile.j2"),
    ),
    (
        "plugin.yaml.j2",
        include_str!("../../../../templates/plugin.yaml.j2"),
    ),
    (
        "job.yaml.j2",
        include_str!("../../../../templates/job.yaml.j2"),
    ),
    (
        "deployment.yaml.j2",
        include_str!("../../../../templates/deployment.yaml.j2"),
    ),
    (
        "service.yaml.j2",
        include_str!("../../../../templates/service.yaml.j2"),
    ),
];

/// Prefix of the name of the ConfigMap that carries a set's template overrides into the
/// cluster: `plugsync-templates-<set>-<hash>` (see [`Templates::config_map_name`]).
pub const TEMPLATES_CONFIG_MAP_PREFIX: &str = "plugsync-templates-";
/// Label on that ConfigMap, with the hash of its content as value: the controller watches
/// the ConfigMaps that carry it.
pub const LABEL_TEMPLATES: &str = "plugsync.dev/templates";
/// Hex digits of the content's sha256 in the ConfigMap's name: 40 bits, and a reader checks
/// the whole content against them anyway ([`Templates::from_config_map`]).
const TEMPLATES_HASH_LEN: usize = 10;

/// The set of templates in effect: the built-in ones, with any user overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Templates {
    pub(super) sources: BTreeMap<String, String>,
    overridden: BTreeSet<String>,
}

impl Templates {
    /// The templates compiled into plugsync.
    pub fn builtin() -> Templates {
        Templates {
            sources: BUILTIN
                .iter()
                .map(|(n, s)| (n.to_string(), s.to_string()))
                .collect(),
            overridden: BTreeSet::new(),
        }
    }

    /// The built-in templates with `overrides` (file name → source) replacing them by name.
    /// Unknown names are refused: a misspelled override must not be silently ignored.
    pub fn with_overrides(
        overrides: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Templates, RenderError> {
        let mut templates = Templates::builtin();
        for (name, source) in overrides {
            if !templates.sources.contains_key(&name) {
                return Err(RenderError::UnknownTemplate {
                    name,
                    known: TEMPLATES.map(|(n, _)| n).join(", "),
                });
            }
            templates.overridden.insert(name.clone());
            templates.sources.insert(name, source);
        }
        Ok(templates)
    }

    /// Template file names overridden by the user.
    pub fn overridden(&self) -> impl Iterator<Item = &str> {
        self.overridden.iter().map(String::as_str)
    }

    /// The source of a template.
    pub fn source(&self, name: &str) -> Option<&str> {
        self.sources.get(name).map(String::as_str)
    }

    /// The overridden templates, file name and source, in name order: what the set's
    /// templates ConfigMap holds.
    pub fn overrides(&self) -> impl Iterator<Item = (&str, &str)> {
        self.overridden
            .iter()
            .filter_map(|name| Some((name.as_str(), self.source(name)?)))
    }

    /// The hash of the overrides (first hex digits of a sha256 over each name and source,
    /// length-prefixed), `None` without overrides: equal overrides, equal hash.
    fn overrides_hash(&self) -> Option<String> {
        if self.overridden.is_empty() {
            return None;
        }
        let mut hasher = Sha256::new();
        hasher.update(b"plugsync templates v1");
        for (name, source) in self.overrides() {
            for field in [name, source] {
                hasher.update((field.len() as u64).to_le_bytes());
                hasher.update(field.as_bytes());
            }
        }
        let mut hex = hex::encode(hasher.finalize());
        hex.truncate(TEMPLATES_HASH_LEN);
        Some(hex)
    }

    /// The name of the ConfigMap that carries these overrides for the PluginSet `set`:
    /// `plugsync-templates-<set>-<hash of the overrides>`; `None` with the built-in templates
    /// alone (then there is no ConfigMap). Content-addressed, so a Plugin that names it names
    /// exactly the templates its children were rendered from, and the set's name keeps two
    /// sets with the same overrides from claiming one object.
    pub fn config_map_name(&self, set: &str) -> Option<String> {
        self.overrides_hash()
            .map(|hash| format!("{TEMPLATES_CONFIG_MAP_PREFIX}{set}-{hash}"))
    }

    /// The ConfigMap that carries these overrides into the cluster for `set`, as applied
    /// with the set's objects (owned by the set, so prune removes it once no commit names
    /// it); `None` without overrides. Immutable: its name is the hash of its content.
    pub fn config_map(&self, set: &PluginSet) -> Option<Value> {
        let name = self.config_map_name(&set.metadata.name)?;
        let hash = self.overrides_hash()?;
        let data: serde_json::Map<String, Value> = self
            .overrides()
            .map(|(name, source)| (name.to_string(), Value::String(source.to_string())))
            .collect();
        Some(json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": name,
                "namespace": set.namespace(),
                "labels": {
                    "app.kubernetes.io/managed-by": "plugsync",
                    "app.kubernetes.io/part-of": set.metadata.name,
                    LABEL_PLUGINSET: set.metadata.name,
                    LABEL_TEMPLATES: hash,
                },
            },
            "immutable": true,
            "data": data,
        }))
    }

    /// The templates a ConfigMap named `name` carries (its `data`, file name to source),
    /// checked against the hash its name ends with: a ConfigMap made or changed by hand is
    /// refused, never rendered from.
    pub fn from_config_map(
        name: &str,
        data: &BTreeMap<String, String>,
    ) -> Result<Templates, RenderError> {
        let templates = Templates::with_overrides(data.clone()).map_err(|e| {
            RenderError::TemplatesConfigMap {
                name: name.to_string(),
                message: e.to_string(),
            }
        })?;
        let hash = templates.overrides_hash().unwrap_or_default();
        if !name.starts_with(TEMPLATES_CONFIG_MAP_PREFIX) || !name.ends_with(&format!("-{hash}")) {
            return Err(RenderError::TemplatesConfigMap {
                name: name.to_string(),
                message: format!(
                    "its content hashes to {hash}, which its name does not end with (made or \
                     changed by hand?); `plugsync apply` of the commit restores the set's own"
                ),
            });
        }
        Ok(templates)
    }

    /// A compiled environment; compile once, render many plugins. It owns copies of the
    /// sources, so it can outlive `self` (see [`EnvironmentCache`]).
    pub fn environment(&self) -> Result<Compiled, RenderError> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_keep_trailing_newline(true);
        env.add_filter("sh", shell_quote);
        env.add_filter("tojson", json::tojson);
        for (name, source) in &self.sources {
            env.add_template_owned(name.clone(), source.clone())
                .map_err(|e| template_error(name, &e))?;
        }
        Ok(Compiled {
            env,
            overrides_hash: self.overrides_hash(),
        })
    }
}

/// Templates compiled for rendering, with the hash of their overrides, from which each
/// rendered Plugin names the ConfigMap of its templates (`spec.templates`). Dereferences to
/// the minijinja environment.
#[derive(Debug)]
pub struct Compiled {
    env: Environment<'static>,
    overrides_hash: Option<String>,
}

impl Compiled {
    /// The name of the templates ConfigMap for the set `set` ([`Templates::config_map_name`]).
    pub(super) fn config_map_name(&self, set: &str) -> Option<String> {
        self.overrides_hash
            .as_ref()
            .map(|hash| format!("{TEMPLATES_CONFIG_MAP_PREFIX}{set}-{hash}"))
    }
}

impl std::ops::Deref for Compiled {
    type Target = Environment<'static>;

    fn deref(&self) -> &Environment<'static> {
        &self.env
    }
}

/// The compiled environments of the templates last asked for. A long-running process (the
/// plugin controller renders one plugin per reconcile) compiles each set of templates once,
/// not once per render; a few are kept, since the sets of a namespace (and a set between
/// two commits) may each have their own.
#[derive(Default)]
pub struct EnvironmentCache {
    /// Most recently used first, at most [`ENVIRONMENTS_KEPT`].
    kept: std::sync::Mutex<std::collections::VecDeque<(Templates, Arc<Compiled>)>>,
}

/// How many compiled environments an [`EnvironmentCache`] keeps.
const ENVIRONMENTS_KEPT: usize = 8;

impl EnvironmentCache {
    /// The environment of `templates`: the one compiled before when they are templates
    /// asked for lately, else compiled now (and kept). A template error is returned every
    /// time those templates are asked for, and nothing kept is dropped for it.
    pub fn environment(&self, templates: &Templates) -> Result<Arc<Compiled>, RenderError> {
        // A poisoned lock still holds whole entries: they are only ever inserted whole.
        let mut kept = self
            .kept
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let found = kept.iter().position(|(t, _)| t == templates);
        if let Some(entry) = found.and_then(|i| kept.remove(i)) {
            let env = Arc::clone(&entry.1);
            kept.push_front(entry);
            return Ok(env);
        }
        let env = Arc::new(templates.environment()?);
        kept.push_front((templates.clone(), Arc::clone(&env)));
        kept.truncate(ENVIRONMENTS_KEPT);
        Ok(env)
    }
}

impl std::fmt::Debug for EnvironmentCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnvironmentCache").finish_non_exhaustive()
    }
}

/// Single-quotes a value for a POSIX shell (`'it'\''s'`).
fn shell_quote(value: String) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

fn template_error(name: &str, e: &minijinja::Error) -> RenderError {
    let message = match e.detail() {
        Some(detail) => format!("{}: {detail}", e.kind()),
        None => e.kind().to_string(),
    };
    RenderError::Template {
        name: e.name().unwrap_or(name).to_string(),
        line: e.line(),
        message,
    }
}

/// Renders the template `name` for `plugin` (named in its errors).
pub(super) fn render_template<S: Serialize>(
    env: &Environment<'_>,
    name: &str,
    plugin: &str,
    ctx: S,
) -> Result<String, RenderError> {
    let template = env
        .get_template(name)
        .map_err(|e| template_error(name, &e))?;
    template.render(ctx).map_err(|e| {
        let mut err = template_error(name, &e);
        if let RenderError::Template { message, .. } = &mut err {
            *message = format!("{message} (rendering {plugin})");
        }
        err
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quoting_survives_quotes() {
        assert_eq!(shell_quote("a b".into()), "'a b'");
        assert_eq!(shell_quote("it's".into()), r"'it'\''s'");
    }

    #[test]
    fn unknown_override_is_refused() {
        let err = Templates::with_overrides([("deploymnet.yaml.j2".to_string(), String::new())])
            .expect_err("typo refused");
        assert!(err.to_string().contains("deployment.yaml.j2"), "{err}");
    }

    #[test]
    fn template_syntax_error_names_template_and_line() {
        let t = Templates::with_overrides([(
            "service.yaml.j2".to_string(),
            "apiVersion: v1\nkind: Service\nmetadata: {{ oops(\n".to_string(),
        )])
        .expect("known name");
        let err = t.environment().expect_err("syntax error");
        let text = err.to_string();
        assert!(
            text.starts_with("template service.yaml.j2 line 3:"),
            "{text}"
        );
    }

    fn set_named(name: &str) -> PluginSet {
        serde_json::from_value(json!({
            "apiVersion": crate::model::API_VERSION,
            "kind": "PluginSet",
            "metadata": {"name": name, "namespace": "dify"},
            "spec": {"registry": {"prefix": "r.example/p"}},
        }))
        .expect("a PluginSet")
    }

    #[test]
    fn overrides_travel_in_a_configmap_named_by_their_hash() {
        let set = set_named("team");
        assert_eq!(
            Templates::builtin().config_map(&set),
            None,
            "no overrides, no ConfigMap"
        );
        assert_eq!(Templates::builtin().config_map_name("team"), None);

        let service = "apiVersion: v1\nkind: Service\n".to_string();
        let templates =
            Templates::with_overrides([("service.yaml.j2".to_string(), service.clone())])
                .expect("known name");
        let object = templates.config_map(&set).expect("a ConfigMap");
        let name = object["metadata"]["name"]
            .as_str()
            .expect("name")
            .to_string();
        let hash = name
            .strip_prefix("plugsync-templates-team-")
            .expect("prefix");
        assert_eq!(hash.len(), 10, "{name}");
        assert!(hash.bytes().all(|b| b.is_ascii_hexdigit()), "{name}");
        assert_eq!(
            templates.config_map_name("team").as_deref(),
            Some(name.as_str())
        );
        assert_eq!(object["metadata"]["namespace"], "dify");
        assert_eq!(object["metadata"]["labels"][LABEL_PLUGINSET], "team");
        assert_eq!(object["metadata"]["labels"][LABEL_TEMPLATES], hash);
        assert_eq!(object["immutable"], true);
        assert_eq!(object["data"], json!({"service.yaml.j2": service}));
        assert_eq!(
            templates
                .environment()
                .expect("compiles")
                .config_map_name("team"),
            Some(name.clone()),
            "what each rendered Plugin names"
        );

        // Same content, same name; other content, another; another set, another.
        let again = Templates::with_overrides([("service.yaml.j2".to_string(), service.clone())])
            .expect("known name");
        assert_eq!(again.config_map_name("team"), Some(name.clone()));
        let other = Templates::with_overrides([(
            "service.yaml.j2".to_string(),
            format!("{service}# changed\n"),
        )])
        .expect("known name");
        assert_ne!(other.config_map_name("team"), Some(name.clone()));
        assert_ne!(
            templates.config_map_name("ops").as_deref(),
            Some(name.as_str()),
            "two sets with the same overrides never claim one object"
        );

        // Read back: the same templates; content that does not match the name is refused.
        let data: BTreeMap<String, String> =
            serde_json::from_value(object["data"].clone()).expect("data");
        assert_eq!(
            Templates::from_config_map(&name, &data).expect("reads back"),
            templates
        );
        let mut edited = data.clone();
        edited.insert("service.yaml.j2".into(), "kind: Service\n".into());
        let err = Templates::from_config_map(&name, &edited).expect_err("edited by hand");
        let text = err.to_string();
        assert!(text.starts_with(&format!("ConfigMap {name}:")), "{text}");
        assert!(text.contains("by hand"), "{text}");
        let mut typo = data;
        typo.insert("deploymnet.yaml.j2".into(), String::new());
        let err = Templates::from_config_map(&name, &typo).expect_err("unknown template");
        assert!(err.to_string().contains("deployment.yaml.j2"), "{err}");
    }

    #[test]
    fn environment_cache_keeps_the_templates_of_several_sets() {
        let cache = EnvironmentCache::default();
        let variants: Vec<Templates> = (0..3)
            .map(|i| {
                Templates::with_overrides([(
                    "service.yaml.j2".to_string(),
                    format!("# {i}\napiVersion: v1\n"),
                )])
                .expect("known name")
            })
            .collect();
        let first: Vec<Arc<Compiled>> = variants
            .iter()
            .map(|t| cache.environment(t).expect("compiles"))
            .collect();
        for (t, env) in variants.iter().zip(&first) {
            let again = cache.environment(t).expect("compiles");
            assert!(
                Arc::ptr_eq(env, &again),
                "compiled once each, however they alternate"
            );
        }
    }

    #[test]
    fn environment_cache_compiles_once_per_change_of_templates() {
        let cache = EnvironmentCache::default();
        let builtin = Templates::builtin();
        let first = cache
            .environment(&builtin)
            .expect("built-in templates compile");
        let again = cache.environment(&Templates::builtin()).expect("compiles");
        assert!(
            Arc::ptr_eq(&first, &again),
            "same templates, same environment"
        );

        let service = "apiVersion: v1\nkind: Service\nmetadata: {name: other}\n";
        let changed =
            Templates::with_overrides([("service.yaml.j2".to_string(), service.to_string())])
                .expect("known name");
        let other = cache.environment(&changed).expect("compiles");
        assert!(!Arc::ptr_eq(&first, &other), "other templates, recompiled");
        let text = other
            .get_template("service.yaml.j2")
            .and_then(|t| t.render(()))
            .expect("renders");
        assert_eq!(text, service, "the new sources are the ones compiled");

        let broken =
            Templates::with_overrides([("service.yaml.j2".to_string(), "{{ oops(\n".to_string())])
                .expect("known name");
        for _ in 0..2 {
            let err = cache
                .environment(&broken)
                .expect_err("syntax error, every time");
            assert!(
                err.to_string().starts_with("template service.yaml.j2"),
                "{err}"
            );
        }
        let back = cache.environment(&changed).expect("compiles");
        assert!(
            Arc::ptr_eq(&back, &other),
            "an error keeps the last good environment"
        );
    }
}
