//! `manifest.yaml`: parsing (tolerant of fields plugsync does not use) and validation
//! with the plugin daemon's rules.
//!
//! Character classes are ASCII-only on purpose: Go's `\d` and `\w` (which Dify's
//! patterns use) are ASCII, while Rust's are Unicode.

use std::sync::LazyLock;

use regex::Regex;
use serde::Deserialize;

use super::{Manifest, PackageError};

/// Longest `meta.runner.entrypoint` accepted; it ends up on a command line.
const MAX_ENTRYPOINT_LEN: usize = 256;

/// Architectures the plugin daemon can run.
const ARCHES: [&str; 2] = ["amd64", "arm64"];

fn regex(pattern: &str) -> Regex {
    Regex::new(pattern).expect("constant regex compiles")
}

static VERSION: LazyLock<Regex> =
    LazyLock::new(|| regex(r"^[0-9]{1,4}(\.[0-9]{1,4}){2}(-[0-9A-Za-z_]{1,16})?$"));
static AUTHOR: LazyLock<Regex> = LazyLock::new(|| regex(r"^[a-z0-9_-]{1,64}$"));
static NAME: LazyLock<Regex> = LazyLock::new(|| regex(r"^[a-z0-9_-]{1,128}$"));
static RUNNER_VERSION: LazyLock<Regex> = LazyLock::new(|| regex(r"^3\.[0-9]+$"));
/// A dotted Python module path: it is run as `python -m <entrypoint>`, so anything
/// else (spaces, `;`, `-`, `/`) is refused outright.
static ENTRYPOINT: LazyLock<Regex> =
    LazyLock::new(|| regex(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$"));

#[derive(Debug, Default, PartialEq, Deserialize)]
struct RawManifest {
    version: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    author: Option<String>,
    name: Option<String>,
    #[serde(default)]
    label: serde_json::Value,
    #[serde(default)]
    description: serde_json::Value,
    icon: Option<String>,
    created_at: Option<String>,
    resource: Option<RawResource>,
    #[serde(default)]
    plugins: serde_json::Value,
    meta: Option<RawMeta>,
}

#[derive(Debug, Default, PartialEq, Deserialize)]
struct RawResource {
    memory: Option<i64>,
    #[serde(default)]
    permission: serde_json::Value,
}

#[derive(Debug, Default, PartialEq, Deserialize)]
struct RawMeta {
    version: Option<String>,
    arch: Option<Vec<String>>,
    runner: Option<RawRunner>,
    minimum_dify_version: Option<String>,
}

#[derive(Debug, Default, PartialEq, Deserialize)]
struct RawRunner {
    language: Option<String>,
    version: Option<String>,
    entrypoint: Option<String>,
}

fn invalid(field: &str, message: impl Into<String>) -> PackageError {
    PackageError::InvalidManifest {
        field: field.to_string(),
        message: message.into(),
    }
}

fn required(field: &str, value: Option<String>) -> Result<String, PackageError> {
    match value {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(invalid(field, "is required")),
    }
}

fn matching(
    field: &str,
    value: Option<String>,
    pattern: &Regex,
    expected: &str,
) -> Result<String, PackageError> {
    let value = required(field, value)?;
    if pattern.is_match(&value) {
        Ok(value)
    } else {
        Err(invalid(field, format!("{value:?} is invalid ({expected})")))
    }
}

/// Parses and validates `manifest.yaml` content.
pub(super) fn parse(bytes: &[u8]) -> Result<Manifest, PackageError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(PackageError::ManifestYaml {
            message: "is empty".to_string(),
        });
    }
    validate(read_raw(bytes)?)
}

/// The manifest's fields; an error names the field, line and column.
fn read_raw(bytes: &[u8]) -> Result<RawManifest, PackageError> {
    crate::yaml::from_slice(bytes).map_err(|e| PackageError::ManifestYaml {
        message: e.to_string(),
    })
}

fn validate(raw: RawManifest) -> Result<Manifest, PackageError> {
    let kind = required("type", raw.kind)?;
    if kind != "plugin" {
        return Err(invalid(
            "type",
            format!("{kind:?} is not supported (only plugin)"),
        ));
    }
    let version = matching(
        "version",
        raw.version,
        &VERSION,
        "expected MAJOR.MINOR.PATCH of up to 4 digits each, optionally -suffix",
    )?;
    let author = match raw.author {
        None => String::new(),
        Some(a) if a.is_empty() => a,
        Some(a) => matching(
            "author",
            Some(a),
            &AUTHOR,
            "expected 1-64 of a-z, 0-9, _ and -",
        )?,
    };
    let name = matching(
        "name",
        raw.name,
        &NAME,
        "expected 1-128 of a-z, 0-9, _ and -",
    )?;

    let resource = raw.resource.unwrap_or_default();
    let memory = match resource.memory {
        None => return Err(invalid("resource.memory", "is required")),
        Some(m) if m <= 0 => {
            return Err(invalid(
                "resource.memory",
                format!("must be a positive number of bytes, got {m}"),
            ))
        }
        Some(m) => m,
    };

    let meta = raw.meta.unwrap_or_default();
    let meta_version = required("meta.version", meta.version)?;
    let arch = meta.arch.unwrap_or_default();
    if arch.is_empty() {
        return Err(invalid(
            "meta.arch",
            "is required (a list of amd64 and/or arm64)",
        ));
    }
    if let Some(bad) = arch.iter().find(|a| !ARCHES.contains(&a.as_str())) {
        return Err(invalid(
            "meta.arch",
            format!("{bad:?} is not supported (only amd64 and arm64)"),
        ));
    }

    let runner = meta.runner.unwrap_or_default();
    let runner_language = required("meta.runner.language", runner.language)?;
    if runner_language != "python" {
        return Err(invalid(
            "meta.runner.language",
            format!("{runner_language:?} is not supported (only python)"),
        ));
    }
    let runner_version = matching(
        "meta.runner.version",
        runner.version,
        &RUNNER_VERSION,
        "expected 3.<minor>, such as \"3.12\"",
    )?;
    let entrypoint = required("meta.runner.entrypoint", runner.entrypoint)?;
    let len = entrypoint.chars().count();
    if len > MAX_ENTRYPOINT_LEN {
        return Err(invalid(
            "meta.runner.entrypoint",
            format!("is {len} characters long (at most {MAX_ENTRYPOINT_LEN})"),
        ));
    }
    if !ENTRYPOINT.is_match(&entrypoint) {
        return Err(invalid(
            "meta.runner.entrypoint",
            format!("{entrypoint:?} is not a dotted Python module path (such as main or app.main)"),
        ));
    }

    Ok(Manifest {
        version,
        author,
        name,
        memory,
        runner_language,
        runner_version,
        entrypoint,
        arch,
        minimum_dify_version: meta.minimum_dify_version,
        meta_version,
        label: raw.label,
        description: raw.description,
        icon: raw.icon,
        created_at: raw.created_at,
        plugins: raw.plugins,
        permission: resource.permission,
    })
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(crate) const VALID: &str = r#"version: 0.1.0
type: plugin
author: plugsync
name: hello
label: {en_US: Hello}
description: {en_US: Says hello}
icon: icon.svg
created_at: "2026-01-01T00:00:00Z"
resource: {memory: 268435456, permission: {}}
plugins: {tools: [provider/hello.yaml]}
meta:
  version: 0.0.1
  arch: [amd64, arm64]
  runner: {language: python, version: "3.12", entrypoint: main}
"#;

    pub(crate) fn valid_manifest() -> Manifest {
        parse(VALID.as_bytes()).unwrap()
    }

    /// `VALID` with the first occurrence of `from` replaced by `to` (which must occur).
    fn with(from: &str, to: &str) -> String {
        assert!(VALID.contains(from), "fixture lacks {from:?}");
        VALID.replacen(from, to, 1)
    }

    fn parse_str(yaml: &str) -> Result<Manifest, PackageError> {
        parse(yaml.as_bytes())
    }

    /// Asserts `yaml` is refused on `field`, with a message containing `needle`.
    #[track_caller]
    fn assert_invalid(yaml: &str, field: &str, needle: &str) {
        match parse_str(yaml) {
            Err(PackageError::InvalidManifest { field: f, message }) => {
                assert_eq!(f, field, "message: {message}");
                assert!(message.contains(needle), "{message:?} lacks {needle:?}");
            }
            other => panic!("expected an invalid {field}, got {other:?}"),
        }
    }

    #[track_caller]
    fn assert_valid(yaml: &str) -> Manifest {
        match parse_str(yaml) {
            Ok(m) => m,
            Err(e) => panic!("expected valid, got {e}"),
        }
    }

    #[test]
    fn valid_manifest_fills_every_field() {
        let m = valid_manifest();
        assert_eq!(m.version, "0.1.0");
        assert_eq!(m.author, "plugsync");
        assert_eq!(m.name, "hello");
        assert_eq!(m.memory, 268_435_456);
        assert_eq!(m.runner_language, "python");
        assert_eq!(m.runner_version, "3.12");
        assert_eq!(m.entrypoint, "main");
        assert_eq!(m.arch, ["amd64", "arm64"]);
        assert_eq!(m.minimum_dify_version, None);
        assert_eq!(m.meta_version, "0.0.1");
        assert_eq!(m.label, serde_json::json!({"en_US": "Hello"}));
        assert_eq!(m.description, serde_json::json!({"en_US": "Says hello"}));
        assert_eq!(m.icon.as_deref(), Some("icon.svg"));
        assert_eq!(m.created_at.as_deref(), Some("2026-01-01T00:00:00Z"));
        assert_eq!(
            m.plugins,
            serde_json::json!({"tools": ["provider/hello.yaml"]})
        );
        assert_eq!(m.permission, serde_json::json!({}));
    }

    #[test]
    fn unknown_fields_are_tolerated() {
        let yaml = format!("{VALID}tags: [a, b]\nrepo: https://example.com\n");
        assert_valid(&yaml);
    }

    #[test]
    fn type_must_be_plugin() {
        assert_eq!(assert_valid(VALID).name, "hello");
        assert_invalid(
            &with("type: plugin", "type: bundle"),
            "type",
            r#""bundle" is not supported (only plugin)"#,
        );
        assert_invalid(&with("type: plugin\n", ""), "type", "is required");
    }

    #[test]
    fn version_must_be_semver_like() {
        assert_eq!(
            assert_valid(&with("version: 0.1.0", "version: 1234.0.9999-rc_1")).version,
            "1234.0.9999-rc_1"
        );
        for bad in [
            "0.1",
            "0.1.0.0",
            "12345.0.0",
            "v0.1.0",
            "0.1.0-",
            "0.1.0-a b",
        ] {
            assert_invalid(
                &with("version: 0.1.0", &format!("version: \"{bad}\"")),
                "version",
                "is invalid",
            );
        }
        assert_invalid(
            &with("version: 0.1.0", "version: 0.1.0-abcdefghijklmnopq"),
            "version",
            "is invalid",
        );
    }

    #[test]
    fn author_may_be_empty_but_otherwise_must_match() {
        assert_eq!(
            assert_valid(&with("author: plugsync", "author: \"\"")).author,
            ""
        );
        assert_eq!(assert_valid(&with("author: plugsync\n", "")).author, "");
        assert_eq!(
            assert_valid(&with("author: plugsync", "author: a-b_9")).author,
            "a-b_9"
        );
        assert_invalid(
            &with("author: plugsync", "author: PlugSync"),
            "author",
            r#""PlugSync" is invalid"#,
        );
        assert_invalid(
            &with("author: plugsync", &format!("author: {}", "a".repeat(65))),
            "author",
            "is invalid",
        );
    }

    #[test]
    fn name_must_match() {
        assert_eq!(
            assert_valid(&with("name: hello", &format!("name: {}", "a".repeat(128)))).name,
            "a".repeat(128)
        );
        assert_invalid(&with("name: hello", "name: he/llo"), "name", "is invalid");
        assert_invalid(
            &with("name: hello", &format!("name: {}", "a".repeat(129))),
            "name",
            "is invalid",
        );
        assert_invalid(&with("name: hello\n", ""), "name", "is required");
    }

    #[test]
    fn memory_is_required_and_positive() {
        assert_eq!(
            assert_valid(&with("memory: 268435456", "memory: 1")).memory,
            1
        );
        assert_invalid(
            &with("memory: 268435456", "memory: 0"),
            "resource.memory",
            "must be a positive number of bytes, got 0",
        );
        assert_invalid(
            &with("memory: 268435456, ", ""),
            "resource.memory",
            "is required",
        );
        assert_invalid(
            &with("resource: {memory: 268435456, permission: {}}\n", ""),
            "resource.memory",
            "is required",
        );
    }

    #[test]
    fn memory_of_the_wrong_type_names_the_field() {
        match parse_str(&with("memory: 268435456", "memory: lots")) {
            Err(PackageError::ManifestYaml { message }) => {
                assert!(message.starts_with("resource.memory: "), "{message}")
            }
            other => panic!("expected a YAML error, got {other:?}"),
        }
    }

    #[test]
    fn meta_version_is_required() {
        assert_eq!(
            assert_valid(&with("  version: 0.0.1", "  version: 0.0.2")).meta_version,
            "0.0.2"
        );
        assert_invalid(
            &with("  version: 0.0.1\n", ""),
            "meta.version",
            "is required",
        );
    }

    #[test]
    fn arch_must_be_non_empty_amd64_or_arm64() {
        assert_eq!(
            assert_valid(&with("arch: [amd64, arm64]", "arch: [arm64]")).arch,
            ["arm64"]
        );
        assert_invalid(
            &with("arch: [amd64, arm64]", "arch: []"),
            "meta.arch",
            "is required",
        );
        assert_invalid(
            &with("  arch: [amd64, arm64]\n", ""),
            "meta.arch",
            "is required",
        );
        assert_invalid(
            &with("arch: [amd64, arm64]", "arch: [amd64, riscv64]"),
            "meta.arch",
            r#""riscv64" is not supported (only amd64 and arm64)"#,
        );
    }

    #[test]
    fn runner_language_must_be_python() {
        assert_eq!(valid_manifest().runner_language, "python");
        let yaml = with("language: python", "language: node");
        assert_invalid(
            &yaml,
            "meta.runner.language",
            r#""node" is not supported (only python)"#,
        );
        assert_eq!(
            parse_str(&yaml).unwrap_err().to_string(),
            r#"manifest.yaml: meta.runner.language: "node" is not supported (only python)"#
        );
        assert_invalid(
            &with("language: python, ", ""),
            "meta.runner.language",
            "is required",
        );
    }

    #[test]
    fn runner_version_must_be_python3_minor() {
        // Unquoted, YAML would read 3.10 as a float; the field must keep its text.
        assert_eq!(
            assert_valid(&with(r#"version: "3.12""#, "version: 3.10")).runner_version,
            "3.10"
        );
        for bad in ["2.7", "3", "3.", "3.12.1", "python3.12", "3.x"] {
            assert_invalid(
                &with(r#"version: "3.12""#, &format!("version: \"{bad}\"")),
                "meta.runner.version",
                "expected 3.<minor>",
            );
        }
        assert_invalid(
            &with(r#"version: "3.12", "#, ""),
            "meta.runner.version",
            "is required",
        );
    }

    #[test]
    fn entrypoint_must_be_a_python_module_path() {
        assert_eq!(
            assert_valid(&with("entrypoint: main", "entrypoint: _app.v2.Main_1")).entrypoint,
            "_app.v2.Main_1"
        );
        for bad in [
            "main; rm -rf /",
            "-c",
            "main.",
            ".main",
            "a..b",
            "1main",
            "app/main",
            "main py",
            "máin",
        ] {
            assert_invalid(
                &with("entrypoint: main", &format!("entrypoint: \"{bad}\"")),
                "meta.runner.entrypoint",
                "is not a dotted Python module path",
            );
        }
        assert_invalid(
            &with(", entrypoint: main", ""),
            "meta.runner.entrypoint",
            "is required",
        );
    }

    #[test]
    fn entrypoint_length_is_capped() {
        let ok = "a".repeat(MAX_ENTRYPOINT_LEN);
        assert_eq!(
            assert_valid(&with("entrypoint: main", &format!("entrypoint: {ok}"))).entrypoint,
            ok
        );
        assert_invalid(
            &with(
                "entrypoint: main",
                &format!("entrypoint: {}", "a".repeat(MAX_ENTRYPOINT_LEN + 1)),
            ),
            "meta.runner.entrypoint",
            "is 257 characters long (at most 256)",
        );
    }

    #[test]
    fn minimum_dify_version_is_optional() {
        assert_eq!(valid_manifest().minimum_dify_version, None);
        let m = assert_valid(&with(
            "  version: 0.0.1\n",
            "  version: 0.0.1\n  minimum_dify_version: 1.0.0\n",
        ));
        assert_eq!(m.minimum_dify_version.as_deref(), Some("1.0.0"));
    }

    #[test]
    fn malformed_yaml_is_refused() {
        for bad in ["", " \n", "[1, 2]", "version: [", "\u{0}", "~"] {
            assert!(
                matches!(parse_str(bad), Err(PackageError::ManifestYaml { .. })),
                "{bad:?}"
            );
        }
        assert!(matches!(
            parse(&[0xff, 0xfe, 0x00]),
            Err(PackageError::ManifestYaml { .. })
        ));
    }

    /// The manifest of the real package in `tests/fixtures` (Dify's agent strategies).
    fn golden_manifest() -> String {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/packages/langgenius-agent_0.0.14.difypkg"
        );
        crate::package::manifest_text(&std::fs::read(path).unwrap())
    }

    #[test]
    fn real_manifests_read() {
        let golden = golden_manifest();
        // Block style as `dify plugin init` writes it, labels in several languages.
        let block = "version: 2.0.1\ntype: plugin\nauthor: synth\nname: p7\nlabel:\n  en_US: Synthetic plugin 7\n  zh_Hans: 合成插件 7\n  ja_JP: 合成プラグイン 7\ndescription:\n  en_US: Plugin 7 of a synthetic set, for benchmarks\nicon: icon.svg\ncreated_at: \"2026-01-01T00:00:00Z\"\nresource:\n  memory: 268435456\n  permission:\n    tool:\n      enabled: true\nplugins:\n  tools:\n    - provider/p7.yaml\nmeta:\n  version: 0.0.1\n  arch:\n    - amd64\n    - arm64\n  runner:\n    language: python\n    version: \"3.12\"\n    entrypoint: main\n";
        let m = parse_str(block).unwrap();
        assert_eq!(m.runner_version, "3.12");
        assert_eq!(m.label["ja_JP"], "合成プラグイン 7");
        let m = parse_str(&golden).unwrap();
        assert_eq!(m.label["zh_Hans"], "Dify Agent 策略");
        assert_eq!(m.description["zh_Hans"], "Dify 官方 Agent 策略集合");
    }

    /// A manifest field of the wrong shape is named with its line, in user words.
    #[test]
    fn a_bad_manifest_field_is_named_with_its_line() {
        let golden = golden_manifest();
        let at = golden
            .lines()
            .position(|l| l.starts_with("meta:"))
            .expect("a meta line");
        let text = golden.replacen("meta:\n", "meta: [not, a, mapping]\nx:\n", 1);
        let message = format!("{:?}", read_raw(text.as_bytes()).unwrap_err());
        assert!(message.contains(&format!("line {}", at + 1)), "{message}");
        assert!(message.contains("meta"), "{message}");
        assert!(
            !message.contains("RawMeta") && !message.contains("struct"),
            "{message}"
        );
    }
}
