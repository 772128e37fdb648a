//! The `plugsync` command.

/// mimalloc: rendering and diffing allocate many small strings and maps on several
/// threads, where it is markedly faster than the system allocator (see the README's
/// performance figures).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    plugsync::cli::main()
}
