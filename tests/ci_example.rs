//! The example CI workflow must keep working: every `plugsync` command it runs must parse
//! with the real command line, so renaming a flag breaks this test, not users' pipelines.

use clap::Parser;

#[test]
fn example_workflow_commands_parse() {
    let text =
        std::fs::read_to_string("examples/ci/github-actions-plugsync-diff.yml").expect("workflow");
    let workflow: serde_yaml::Value = serde_yaml::from_str(&text).expect("valid YAML");
    let steps = workflow["jobs"]["diff"]["steps"]
        .as_sequence()
        .expect("steps");
    let mut commands = Vec::new();
    for step in steps {
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
    for command in &commands {
        let args: Vec<&str> = command.split_whitespace().collect();
        if let Err(e) = plugsync::cli::Cli::try_parse_from(&args) {
            panic!("`{command}` no longer parses:\n{e}");
        }
    }
}
