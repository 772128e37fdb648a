//! Writes (or with `--check`, verifies) the generated artifacts under the repository root.
use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
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
        } else {
            if let Some(dir) = path.parent() {
                if let Err(e) = std::fs::create_dir_all(dir) {
                    eprintln!("error: {}: {e}", dir.display());
                    return ExitCode::from(2);
                }
            }
            if let Err(e) = std::fs::write(&path, contents) {
                eprintln!("error: {}: {e}", path.display());
                return ExitCode::from(2);
            }
            println!("wrote {rel}");
        }
    }
    if drifted.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "error: generated files are out of date: {}\nrun `cargo run --bin codegen` and commit the result",
            drifted.join(", ")
        );
        ExitCode::from(1)
    }
}
