//! The `plugsync` command.
fn main() -> std::process::ExitCode {
    plugsync::cli::main()
}
