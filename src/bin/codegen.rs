//! Writes (or with `--check`, verifies) the generated artifacts under the repository root.
//!
//! A developer tool whose errors go to a person: anyhow carries them with their context.
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;

fn main() -> anyhow::Result<ExitCode> {
    let check = std::env::args().any(|a| a == "--check");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut drifted = Vec::new();
    for (rel, contents) in plugsync_core::codegen::artifacts() {
        let path = root.join(rel);
        let current = std::fs::read_to_string(&path).unwrap_or_default();
        if current == contents {
            continue;
        }
        if check {
            drifted.push(rel);
            continue;
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {rel}");
    }
    if drifted.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!(
        "error: generated files are out of date: {}\nrun `cargo run --bin codegen` and commit the result",
        drifted.join(", ")
    );
    Ok(ExitCode::from(1))
}
