//! The example CI workflow must keep working: every `plugsync` command it runs must parse
//! with the real command line, so renaming a flag breaks this test, not users' pipelines; and
//! it must not compile plugsync on every pull request.

use clap::Parser;
use serde_json::Value;

const WORKFLOW: &str = "examples/ci/github-actions-plugsync-diff.yml";

fn steps() -> Vec<Value> {
    let text = std::fs::read_to_string(WORKFLOW).expect("workflow");
    let workflow: Value = serde_saphyr::from_str(&text).expect("valid YAML");
    workflow["jobs"]["diff"]["steps"]
        .as_array()
        .expect("steps")
        .clone()
}

/// A shell command line split into words as `sh` would for these simple lines: quotes group
/// words and are removed, nothing is expanded.
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut quote = None;
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.get_or_insert_with(String::new).push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                word.get_or_insert_with(String::new);
            }
            (None, c) if c.is_whitespace() => words.extend(word.take()),
            (None, c) => word.get_or_insert_with(String::new).push(c),
        }
    }
    assert!(quote.is_none(), "unbalanced quotes in {line}");
    words.extend(word);
    words
}

#[test]
fn example_workflow_commands_parse() {
    let mut commands = Vec::new();
    for step in steps() {
        if let Some(run) = step["run"].as_str() {
            for line in run
                .lines()
                .map(str::trim)
                .filter(|l| l.starts_with("plugsync "))
            {
                // Drop shell redirections and substitute GitHub expressions with a sample value.
                let line = line.split(" > ").next().unwrap_or(line);
                let line = line.replace("${{ github.base_ref }}", "main");
                commands.push(line);
            }
        }
    }
    assert!(
        commands
            .iter()
            .any(|c| c.starts_with("plugsync diff --base")),
        "{commands:?}"
    );
    assert!(
        commands
            .iter()
            .any(|c| c.starts_with("plugsync lock --locked")),
        "{commands:?}"
    );
    // The comment says where the full diff is when it has to leave some out.
    assert!(
        commands
            .iter()
            .any(|c| c.contains("-o markdown") && c.contains("--full-diff-at")),
        "{commands:?}"
    );
    for command in &commands {
        let args = shell_words(command);
        if let Err(e) = plugsync::cli::Cli::try_parse_from(&args) {
            panic!("`{command}` no longer parses:\n{e}");
        }
    }
}

#[test]
fn shell_words_group_quoted_words() {
    assert_eq!(
        shell_words(r#"plugsync diff --full-diff-at "the artifact of $URL" -o 'mark down'"#),
        [
            "plugsync",
            "diff",
            "--full-diff-at",
            "the artifact of $URL",
            "-o",
            "mark down"
        ]
    );
}

#[test]
fn plugsync_is_built_once_per_revision_not_on_every_pull_request() {
    let steps = steps();
    let installs: Vec<&Value> = steps
        .iter()
        .filter(|s| {
            s["run"]
                .as_str()
                .is_some_and(|r| r.contains("cargo install") || r.contains("cargo build"))
        })
        .collect();
    assert_eq!(installs.len(), 1, "one install step");
    let install = installs[0];
    let run = install["run"].as_str().expect("run");
    assert!(
        run.contains("--locked") && run.contains("--rev \"${{ steps.plugsync.outputs.rev }}\""),
        "{run}"
    );
    // It only runs when the cache of the binary missed …
    let condition = install["if"]
        .as_str()
        .expect("the install step is conditional");
    assert_eq!(condition, "steps.plugsync-bin.outputs.cache-hit != 'true'");
    // … and that cache holds the binary under the exact plugsync revision installed.
    let cache = steps
        .iter()
        .find(|s| s["id"] == "plugsync-bin")
        .expect("the binary's cache step");
    assert!(cache["uses"]
        .as_str()
        .is_some_and(|u| u.starts_with("actions/cache@")));
    assert_eq!(cache["with"]["path"], "~/.cargo/bin/plugsync");
    let key = cache["with"]["key"].as_str().expect("key");
    assert!(key.contains("${{ steps.plugsync.outputs.rev }}"), "{key}");
    assert!(
        cache["with"].get("restore-keys").is_none(),
        "a binary of another revision must not be restored"
    );
    // The revision is resolved before the cache is looked up.
    let position = |id: &str| steps.iter().position(|s| s["id"] == id).expect(id);
    assert!(position("plugsync") < position("plugsync-bin"));
    // The full diff is kept where the comment says it is.
    assert!(steps.iter().any(|s| s["uses"]
        .as_str()
        .is_some_and(|u| u.starts_with("actions/upload-artifact@"))
        && s["with"]["name"] == "plugsync-diff"));
}
