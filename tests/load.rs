//! plugins.yaml and plugins.lock validation: every error names file, line, column and field.

use std::path::Path;

use plugsync_core::load::{load_lock, load_plugin_set, DeclaredSource};
use plugsync_core::{Diagnostic, Diagnostics, Error};

const HEADER: &str = "\
apiVersion: plugsync.dev/v1alpha1
kind: PluginSet
metadata:
  name: team-a
  namespace: dify
spec:
  registry:
    prefix: registry.example.com/dify-plugins
";

fn diagnostics(text: &str) -> Vec<Diagnostic> {
    match load_plugin_set(Path::new("plugins.yaml"), text) {
        Err(Error::Invalid(d)) => d.0,
        Err(other) => panic!("expected located diagnostics, got {other}"),
        Ok(_) => panic!("expected the document to be refused:\n{text}"),
    }
}

fn only(text: &str) -> Diagnostic {
    let mut d = diagnostics(text);
    assert_eq!(d.len(), 1, "expected one diagnostic, got {d:?}");
    d.remove(0)
}

#[test]
fn a_valid_set_loads_with_normalized_sources_and_merged_runtime() {
    let text = format!(
        "{HEADER}  runtime:
    replicas: 1
    labels: {{team: a}}
    env: [{{name: A, value: '1'}}, {{name: B, value: '2'}}]
  plugins:
    - marketplace: langgenius/agent
      version: 0.0.14
    - url: https://example.com/p.difypkg
    - path: ./plugins//hello/
      runtime:
        replicas: 3
        labels: {{tier: x}}
        env: [{{name: B, value: override}}]
"
    );
    let set = load_plugin_set(Path::new("plugins.yaml"), &text).expect("valid");
    assert_eq!(set.plugins.len(), 3);
    assert_eq!(
        set.plugins[0].source,
        DeclaredSource::Marketplace {
            author: "langgenius".into(),
            name: "agent".into(),
            version: "0.0.14".into()
        }
    );
    assert_eq!(
        set.plugins[2].source,
        DeclaredSource::Path("plugins/hello".into())
    );
    let rt = &set.plugins[2].runtime;
    assert_eq!(rt.replicas, Some(3));
    let labels = rt.labels.as_ref().expect("labels");
    assert_eq!(labels.get("team").map(String::as_str), Some("a"));
    assert_eq!(labels.get("tier").map(String::as_str), Some("x"));
    let env: Vec<(String, Option<String>)> = rt
        .env
        .as_ref()
        .expect("env")
        .iter()
        .map(|e| (e.name.clone(), e.value.clone()))
        .collect();
    assert_eq!(
        env,
        vec![
            ("A".to_string(), Some("1".to_string())),
            ("B".to_string(), Some("override".to_string()))
        ]
    );
    assert_eq!(set.plugins[1].runtime.replicas, Some(1));
    assert_eq!(set.spec().spec.build.max_attempts, 3, "defaults apply");
}

#[test]
fn unknown_field_is_located_at_its_key() {
    let d = only(&format!("{HEADER}    insecur: true\n"));
    assert_eq!(d.file, Path::new("plugins.yaml"));
    assert_eq!((d.line, d.column), (9, 5), "{d}");
    assert_eq!(d.path, "spec.registry.insecur");
    assert!(d.message.starts_with("unknown field `insecur`"), "{d}");
    assert!(
        d.message.contains("insecure"),
        "suggests the known fields: {d}"
    );
}

#[test]
fn unknown_field_inside_an_embedded_kubernetes_type_is_refused() {
    let d = only(&format!(
        "{HEADER}  runtime:\n    tolerations:\n      - key: gpu\n        efect: NoSchedule\n"
    ));
    assert_eq!(d.path, "spec.runtime.tolerations[0].efect");
    assert_eq!((d.line, d.column), (12, 9), "{d}");
    assert!(d.message.contains("unknown field"), "{d}");
}

#[test]
fn wrong_type_names_field_and_position() {
    let d = only(&format!("{HEADER}  build:\n    maxAttempts: lots\n"));
    assert_eq!(d.path, "spec.build.maxAttempts");
    assert_eq!(d.line, 10, "{d}");
    assert!(d.message.contains("invalid type"), "{d}");
}

/// Text that is not YAML is refused at its place, and the message shows the line with a
/// caret under the column, as a compiler does.
#[test]
fn a_syntax_error_shows_the_line_and_a_caret() {
    let d = only(&format!("{HEADER}  plugins:\n    - path: a: b\n"));
    assert_eq!(d.file, Path::new("plugins.yaml"));
    assert_eq!(d.line, 10, "{d}");
    let lines: Vec<&str> = d.message.lines().collect();
    assert!(lines[0].starts_with("not valid YAML"), "{d}");
    assert_eq!(lines[1], " 10 |     - path: a: b", "{d}");
    let caret = lines[2].find('^').expect("a caret") - lines[2].find('|').unwrap() - 1;
    assert_eq!(caret, d.column, "{d}");
}

/// A tab used to indent (YAML allows only spaces there) is named as a tab.
#[test]
fn a_tab_used_for_indentation_is_named() {
    let d = only(&format!("{HEADER}  plugins:\n\t- path: a\n"));
    assert_eq!(d.line, 10, "{d}");
    assert!(d.message.contains("a tab"), "{d}");
    assert!(d.message.contains("spaces"), "{d}");
}

/// Wrong shapes are told in YAML's words, never with a Rust type name.
#[test]
fn a_wrong_shape_names_no_rust_type() {
    for (body, path) in [
        ("  plugins:\n    - just a string\n", "spec.plugins[0]"),
        ("  plugins: {a: b}\n", "spec.plugins"),
        ("  build: [1]\n", "spec.build"),
        ("  runtime:\n    replicas: many\n", "spec.runtime.replicas"),
    ] {
        let d = only(&format!("{HEADER}{body}"));
        assert_eq!(d.path, path, "{d}");
        assert!(d.line >= 9, "{d}");
        for rust in [
            "PluginSpec",
            "Spec",
            "struct",
            "enum",
            "u32",
            "i32",
            "Option",
            "Vec",
        ] {
            assert!(!d.message.contains(rust), "{body}: {d}");
        }
        assert!(d.message.starts_with("invalid type"), "{d}");
    }
}

#[test]
fn missing_required_field_is_reported() {
    let d =
        only("apiVersion: plugsync.dev/v1alpha1\nkind: PluginSet\nmetadata: {name: a}\nspec: {}\n");
    assert!(d.message.contains("missing field `registry`"), "{d}");
    assert_eq!(d.line, 4, "{d}");
}

#[test]
fn two_kinds_of_source_in_one_entry() {
    let d = only(&format!(
        "{HEADER}  plugins:\n    - url: https://example.com/a.difypkg\n      path: plugins/a\n"
    ));
    assert_eq!(d.path, "spec.plugins[0]");
    assert_eq!((d.line, d.column), (10, 7), "{d}");
    assert!(d.message.contains("url and path"), "{d}");
}

#[test]
fn entry_without_a_source() {
    let d = only(&format!(
        "{HEADER}  plugins:\n    - runtime: {{replicas: 1}}\n"
    ));
    assert!(d.message.contains("exactly one source"), "{d}");
}

#[test]
fn duplicate_plugins_point_at_the_first_declaration() {
    let d = only(&format!(
        "{HEADER}  plugins:\n    - marketplace: langgenius/agent\n      version: 0.0.14\n    - marketplace: langgenius/agent\n      version: 0.0.15\n"
    ));
    assert_eq!(d.path, "spec.plugins[1]");
    assert_eq!(d.line, 12);
    assert!(d.message.contains("duplicate plugin"), "{d}");
    assert!(d.message.contains("spec.plugins[0] (line 10)"), "{d}");
}

#[test]
fn duplicate_yaml_keys_are_refused() {
    let d = only(&format!("{HEADER}    prefix: other.example.com/x\n"));
    assert!(d.message.contains("duplicate"), "{d}");
    assert_eq!(d.line, 9, "{d}");
}

#[test]
fn invalid_names_are_all_reported_at_once() {
    let text = "\
apiVersion: plugsync.dev/v1alpha1
kind: PluginSet
metadata:
  name: Team_A
  namespace: dify
spec:
  registry:
    prefix: https://registry.example.com/x
  plugins:
    - marketplace: LangGenius/agent
      version: 0.0.14
    - marketplace: langgenius/agent2
      version: latest
    - path: ../outside
    - url: https://user:hunter2@example.com/p.difypkg
";
    let d = diagnostics(text);
    let paths: Vec<&str> = d.iter().map(|d| d.path.as_str()).collect();
    assert_eq!(
        paths,
        vec![
            "metadata.name",
            "spec.registry.prefix",
            "spec.plugins[0].marketplace",
            "spec.plugins[1].version",
            "spec.plugins[2].path",
            "spec.plugins[3].url",
        ]
    );
    assert_eq!(d[0].line, 4);
    assert_eq!(d[4].line, 14);
    let all = d
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        !all.contains("hunter2"),
        "secrets never appear in errors:\n{all}"
    );
}

#[test]
fn version_only_goes_with_marketplace() {
    let d = only(&format!(
        "{HEADER}  plugins:\n    - path: plugins/a\n      version: 1.0.0\n"
    ));
    assert_eq!(d.path, "spec.plugins[0].version");
}

#[test]
fn ecr_needs_a_region() {
    let d = only(&format!("{HEADER}    type: ecr\n"));
    assert_eq!(d.path, "spec.registry");
    assert!(d.message.contains("ecrRegion"), "{d}");
}

#[test]
fn invalid_labels_and_env_names() {
    let d = diagnostics(&format!(
        "{HEADER}  runtime:\n    labels: {{'bad key!': x}}\n    env: [{{name: '1=2', value: x}}]\n"
    ));
    let paths: Vec<&str> = d.iter().map(|d| d.path.as_str()).collect();
    assert_eq!(
        paths,
        vec!["spec.runtime.labels.bad key!", "spec.runtime.env[0].name"]
    );
}

#[test]
fn wrong_api_version_and_kind() {
    let d = diagnostics("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\nspec: {registry: {prefix: r.io/x}}\n");
    assert_eq!(d.len(), 2);
    assert_eq!((d[0].path.as_str(), d[0].line), ("apiVersion", 1));
    assert_eq!((d[1].path.as_str(), d[1].line), ("kind", 2));
}

#[test]
fn empty_and_unparsable_files() {
    assert!(only("").message.contains("empty"));
    let d = only("apiVersion: [unclosed\n");
    assert!(d.line >= 1, "{d}");
}

#[test]
fn diagnostics_render_as_file_line_column_path_message() {
    let d = only(&format!("{HEADER}    insecur: true\n"));
    let text = d.to_string();
    assert!(
        text.starts_with("plugins.yaml:9:5: spec.registry.insecur: unknown field `insecur`"),
        "{text}"
    );
}

const LOCK: &str = "\
apiVersion: plugsync.dev/v1alpha1
kind: PluginLock
plugins:
- name: langgenius/agent
  version: 0.0.14
  source: path:packages/langgenius-agent_0.0.14.difypkg
  sha256: a58786359976dbbc96b353c9fc0e9ced05a3f5ee51995424c527934add9d323f
  checksum: 26958a0e80a10655ce73812bdb7c35a66ce7b16f5ac346d298bda17ff85efd1e
  unique_identifier: langgenius/agent:0.0.14@26958a0e80a10655ce73812bdb7c35a66ce7b16f5ac346d298bda17ff85efd1e
  plugin_id: PLUGIN_ID
";

fn golden_plugin_id() -> String {
    plugsync_core::package::plugin_id(
        "langgenius/agent:0.0.14@26958a0e80a10655ce73812bdb7c35a66ce7b16f5ac346d298bda17ff85efd1e",
    )
}

#[test]
fn a_consistent_lock_loads() {
    let text = LOCK.replace("PLUGIN_ID", &golden_plugin_id());
    let lock = load_lock(Path::new("plugins.lock"), &text).expect("valid lock");
    assert_eq!(lock.value.plugins.len(), 1);
    assert_eq!(
        lock.value
            .to_yaml()
            .lines()
            .skip(1)
            .collect::<Vec<_>>()
            .join("\n")
            + "\n",
        // Written by serde-saphyr, a version that YAML 1.1 could misread is quoted.
        text.replace("version: 0.0.14", "version: \"0.0.14\"")
    );
}

#[test]
fn a_hand_edited_lock_is_refused_with_positions() {
    let text = LOCK
        .replace("PLUGIN_ID", &golden_plugin_id())
        .replace("version: 0.0.14", "version: 0.0.15");
    let Err(Error::Invalid(d)) = load_lock(Path::new("plugins.lock"), &text) else {
        panic!("expected refusal")
    };
    assert_eq!(d.0[0].path, "plugins[0].unique_identifier");
    assert_eq!(d.0[0].line, 9);

    let text = LOCK.replace("PLUGIN_ID", "0123456789abcdef0123456789abcdef");
    let Err(Error::Invalid(d)) = load_lock(Path::new("plugins.lock"), &text) else {
        panic!("expected refusal")
    };
    assert_eq!(d.0[0].path, "plugins[0].plugin_id");
}

/// The lock's types refuse unknown fields themselves, at every level (loading relies on
/// it and skips the round-trip check it runs on plugins.yaml).
#[test]
fn unknown_lock_fields_are_refused_at_every_level() {
    let valid = LOCK.replace("PLUGIN_ID", &golden_plugin_id())
        + &format!(
            "images:\n- inputsHash: {}\n  image: r.local/agent:0.0.14\n  digest: sha256:{}\n",
            "a".repeat(64),
            "b".repeat(64)
        );
    load_lock(Path::new("plugins.lock"), &valid).expect("valid lock");
    for (edit, path) in [
        (("plugins:", "extra: 1\nplugins:"), "extra"),
        (
            ("  plugin_id:", "  extra: 1\n  plugin_id:"),
            "plugins[0].extra",
        ),
        (("  digest:", "  extra: 1\n  digest:"), "images[0].extra"),
    ] {
        let text = valid.replacen(edit.0, edit.1, 1);
        assert_ne!(text, valid);
        let Err(Error::Invalid(d)) = load_lock(Path::new("plugins.lock"), &text) else {
            panic!("unknown field at {path} loaded")
        };
        assert!(
            d.0[0].message.contains("unknown field `extra`"),
            "{path}: {d}"
        );
        assert!(
            d.0[0].path.starts_with(path.split('.').next().unwrap()),
            "{path}: {d}"
        );
    }
}

#[test]
fn recorded_images_load_and_a_bad_digest_names_its_line() {
    let hash = "a".repeat(64);
    let digest = format!("sha256:{}", "b".repeat(64));
    let images = format!(
        "images:\n- inputsHash: {hash}\n  image: r.local/agent:0.0.14\n  digest: {digest}\n"
    );
    let text = LOCK.replace("PLUGIN_ID", &golden_plugin_id()) + &images;
    let lock = load_lock(Path::new("plugins.lock"), &text).expect("valid lock");
    assert_eq!(lock.value.built_images().get(&hash), Some(&digest));

    let text = LOCK.replace("PLUGIN_ID", &golden_plugin_id()) + &images.replace("sha256:", "md5:");
    let Err(Error::Invalid(d)) = load_lock(Path::new("plugins.lock"), &text) else {
        panic!("expected refusal")
    };
    assert_eq!(d.0[0].path, "images[0].digest");
    assert_eq!(d.0[0].line, text.lines().count());
}

/// Every problem in plugins.yaml comes out of one run, in the order of the file: unknown
/// fields (in plugsync's own types and in the embedded Kubernetes ones), wrong types and
/// the rules beyond the schema, each at its own line.
#[test]
fn every_error_in_plugins_yaml_is_reported_at_once() {
    let text = "\
apiVersion: plugsync.dev/v1alpha1
kind: PluginSet
metadata:
  name: Team_A
spec:
  registry:
    prefix: registry.example.com/x
    insecur: true
  build:
    maxAttempt: 3
    timeout: soon
  runtime:
    replicas: many
    tolerations:
      - key: gpu
        efect: NoSchedule
  plugins:
    - url: https://example.com/a.difypkg
      path: plugins/a
    - marketplace: langgenius/agent
      verison: 0.0.14
";
    let d = diagnostics(text);
    let found: Vec<(usize, &str)> = d.iter().map(|d| (d.line, d.path.as_str())).collect();
    assert_eq!(
        found,
        vec![
            (4, "metadata.name"),
            (8, "spec.registry.insecur"),
            (10, "spec.build.maxAttempt"),
            (11, "spec.build.timeout"),
            (13, "spec.runtime.replicas"),
            (16, "spec.runtime.tolerations[0].efect"),
            (18, "spec.plugins[0]"),
            (21, "spec.plugins[1].verison"),
        ],
        "{}",
        Diagnostics(d.clone())
    );
    assert!(
        d[1].message
            .starts_with("unknown field `insecur`, expected one of"),
        "{}",
        d[1]
    );
    assert!(d[4].message.contains("invalid type"), "{}", d[4]);
    assert!(d[6].message.contains("url and path"), "{}", d[6]);
}

/// A field already in error is left out of the rules across fields: a misspelt registry
/// type does not also make `ecrRegion` "only for ecr", and a required field with a wrong
/// type is not then reported missing, nor does it stop the search for the errors after it.
#[test]
fn errors_are_not_reported_twice_through_the_rules_across_fields() {
    let text = "\
apiVersion: plugsync.dev/v1alpha1
kind: PluginSet
metadata:
  name: [team-a]
spec:
  registry:
    prefix: registry.example.com/x
    type: ECR
    ecrRegion: eu-west-1
  build:
    maxAttempts: 0
";
    let d = diagnostics(text);
    let found: Vec<(usize, &str)> = d.iter().map(|d| (d.line, d.path.as_str())).collect();
    assert_eq!(
        found,
        vec![
            (4, "metadata.name"),
            (8, "spec.registry.type"),
            (11, "spec.build.maxAttempts"),
        ],
        "{}",
        Diagnostics(d.clone())
    );
    assert!(d[0].message.contains("invalid type"), "{}", d[0]);
    assert!(d[1].message.contains("unknown variant `ECR`"), "{}", d[1]);
    assert!(d[2].message.contains("between 1 and 20"), "{}", d[2]);
}

/// A plugin entry that is not an entry at all (a bare string) is reported, and the
/// entries after it keep their own indexes and lines.
#[test]
fn an_entry_of_the_wrong_type_does_not_shift_the_others() {
    let d = diagnostics(&format!(
        "{HEADER}  plugins:
    - langgenius/agent
    - url: https://example.com/a.difypkg
      path: plugins/a
    - marketplace: langgenius/agent
"
    ));
    let found: Vec<(usize, &str)> = d.iter().map(|d| (d.line, d.path.as_str())).collect();
    assert_eq!(
        found,
        vec![
            (10, "spec.plugins[0]"),
            (11, "spec.plugins[1]"),
            (13, "spec.plugins[2]"),
        ],
        "{}",
        Diagnostics(d.clone())
    );
    assert!(d[0].message.contains("invalid type"), "{}", d[0]);
    assert!(d[1].message.contains("url and path"), "{}", d[1]);
    assert!(
        d[2].message.contains("needs an exact `version`"),
        "{}",
        d[2]
    );
}

/// Conflict markers a merge left in plugins.yaml are named as a merge conflict, with their
/// lines, rather than as whatever YAML error they cause.
#[test]
fn a_merge_conflict_in_plugins_yaml_is_named() {
    let text = format!(
        "{HEADER}  plugins:
<<<<<<< HEAD
    - marketplace: langgenius/agent
      version: 0.0.14
=======
    - marketplace: langgenius/agent
      version: 0.0.15
>>>>>>> upgrade-agent
"
    );
    let d = diagnostics(&text);
    assert_eq!(d.len(), 2, "{}", Diagnostics(d.clone()));
    assert_eq!(d[0].line, 10);
    assert_eq!(
        d[0].message,
        "merge conflict: git conflict markers at lines 10 (<<<<<<<), 13 (=======) and 16 (>>>>>>>)"
    );
    assert!(
        d[1].message.contains("resolve the merge conflict by hand"),
        "{}",
        d[1]
    );
    assert!(d[1].message.contains("`plugsync lock`"), "{}", d[1]);
}

/// The env of each loaded plugin, by plugin index: (name, value) pairs.
fn plugin_envs(text: &str) -> Vec<Vec<(String, String)>> {
    let set = load_plugin_set(Path::new("plugins.yaml"), text).expect("valid");
    set.plugins
        .iter()
        .map(|p| {
            p.runtime
                .env
                .iter()
                .flatten()
                .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
                .collect()
        })
        .collect()
}

#[test]
fn dify_daemon_url_reaches_every_plugin_unless_its_env_sets_it() {
    let envs = plugin_envs(&format!(
        "{HEADER}  dify:\n    daemonUrl: http://dify-plugin-daemon.dify.svc:5002\n  plugins:\n    - path: plugins/a\n    - path: plugins/b\n      runtime:\n        env:\n          - name: DIFY_PLUGIN_DAEMON_URL\n            value: http://elsewhere:5002\n    - path: plugins/c\n      runtime:\n        env:\n          - name: LOG_LEVEL\n            value: info\n"
    ));
    assert_eq!(
        envs,
        vec![
            vec![(
                "DIFY_PLUGIN_DAEMON_URL".to_string(),
                "http://dify-plugin-daemon.dify.svc:5002".to_string()
            )],
            vec![(
                "DIFY_PLUGIN_DAEMON_URL".to_string(),
                "http://elsewhere:5002".to_string()
            )],
            vec![
                (
                    "DIFY_PLUGIN_DAEMON_URL".to_string(),
                    "http://dify-plugin-daemon.dify.svc:5002".to_string()
                ),
                ("LOG_LEVEL".to_string(), "info".to_string()),
            ],
        ]
    );
    let without = plugin_envs(&format!("{HEADER}  plugins:\n    - path: plugins/a\n"));
    assert_eq!(without, vec![Vec::new()], "no dify section, no variable");
}

#[test]
fn a_dify_daemon_url_that_is_not_http_or_holds_credentials_is_refused_at_its_line() {
    let d = only(&format!(
        "{HEADER}  dify:\n    daemonUrl: dify-plugin-daemon:5002\n"
    ));
    assert_eq!(d.path, "spec.dify.daemonUrl");
    assert_eq!(d.line, 10, "{d}");
    assert!(d.message.contains("http(s) URL"), "{d}");
    let d = only(&format!(
        "{HEADER}  dify:\n    daemonUrl: http://admin:hunter2@daemon:5002\n"
    ));
    assert!(d.message.contains("credentials do not belong"), "{d}");
    assert!(
        !d.to_string().contains("hunter2"),
        "no secret in the error: {d}"
    );
}

/// `inventory:` and `group:` entries get the set's defaults too, `spec.dify`'s daemon URL
/// included, under their own overrides.
#[test]
fn inventory_entries_get_the_daemon_url_under_their_own_runtime() {
    let set = load_plugin_set(
        Path::new("plugins.yaml"),
        &format!(
            "{HEADER}  dify:\n    daemonUrl: http://daemon:5002\n  sources:\n    inventory:\n      url: oci://registry.example.com/dify/inventory:latest\n      key: inventory.pub\n  plugins:\n    - inventory: acme/weather\n      version: 1.0.0\n      runtime:\n        env:\n          - name: LOG_LEVEL\n            value: info\n    - group: base:1.0\n"
        ),
    )
    .expect("valid");
    let envs: Vec<Vec<(String, String)>> = set
        .inventory_entries
        .iter()
        .map(|e| {
            e.runtime
                .env
                .iter()
                .flatten()
                .map(|v| (v.name.clone(), v.value.clone().unwrap_or_default()))
                .collect()
        })
        .collect();
    let daemon = (
        "DIFY_PLUGIN_DAEMON_URL".to_string(),
        "http://daemon:5002".to_string(),
    );
    assert_eq!(
        envs,
        vec![
            vec![
                daemon.clone(),
                ("LOG_LEVEL".to_string(), "info".to_string())
            ],
            vec![daemon],
        ]
    );
}
