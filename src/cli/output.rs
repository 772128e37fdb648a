//! Standard output of every command, safe against a reader that leaves early.
//!
//! Rust ignores SIGPIPE, so writing to a closed pipe (`plugsync diff --cluster | head`) is an
//! `EPIPE` error, on which `println!` panics (exit 101). Restoring SIGPIPE's default instead
//! would let any closed socket kill the long-running commands, so the CLI writes through
//! here: this module's `print!` and `println!` shadow std's for all of `src/cli` (declared
//! first, with `#[macro_use]`), so every command is covered without changing its code.
//!
//! A closed pipe means the reader has all it wanted: from then on output is dropped
//! silently and the command runs to its end, keeping its exit code (`diff` still exits 1 on
//! changes). Any other write error (a full disk) also stops output; [`finish`] reports it
//! and turns the exit code into 2.

use std::fmt;
use std::io::{self, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use plugsync_core::error::Error;

/// Set once stdout cannot take more (closed pipe, or another error).
static STOPPED: AtomicBool = AtomicBool::new(false);

/// The first write error other than a closed pipe, for [`finish`].
static FAILURE: Mutex<Option<String>> = Mutex::new(None);

/// `print!` for the CLI: std's, except that a closed stdout ends output instead of panicking.
macro_rules! print {
    ($($arg:tt)*) => {
        $crate::cli::output::write_fmt(format_args!($($arg)*))
    };
}

/// `println!` for the CLI: std's, except that a closed stdout ends output instead of
/// panicking.
macro_rules! println {
    () => {
        $crate::cli::output::write_fmt(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::cli::output::write_line(format_args!($($arg)*))
    };
}

/// Records a failed write: a closed pipe quietly, anything else for [`finish`].
fn stop(error: io::Error) {
    STOPPED.store(true, Ordering::Relaxed);
    if error.kind() != io::ErrorKind::BrokenPipe {
        if let Ok(mut failure) = FAILURE.lock() {
            failure.get_or_insert_with(|| error.to_string());
        }
    }
}

/// Writes formatted text to stdout, unless output has stopped.
pub(crate) fn write_fmt(args: fmt::Arguments<'_>) {
    if STOPPED.load(Ordering::Relaxed) {
        return;
    }
    if let Err(e) = io::stdout().lock().write_fmt(args) {
        stop(e);
    }
}

/// [`write_fmt`] and a newline, under one lock so lines of two threads never interleave.
pub(crate) fn write_line(args: fmt::Arguments<'_>) {
    if STOPPED.load(Ordering::Relaxed) {
        return;
    }
    let mut stdout = io::stdout().lock();
    if let Err(e) = stdout
        .write_fmt(args)
        .and_then(|()| stdout.write_all(b"\n"))
    {
        stop(e);
    }
}

/// Writes `pieces` in order, many per system call (a rendered set is a thousand pieces of a
/// few kilobytes, each a `write` of its own through `print!`), then flushes. A closed pipe
/// is not an error (see the module); any other failure is, naming stdout.
pub(crate) fn write_pieces(pieces: &[&str]) -> Result<(), Error> {
    if STOPPED.load(Ordering::Relaxed) {
        return Ok(());
    }
    let mut slices: Vec<io::IoSlice<'_>> = pieces
        .iter()
        .filter(|piece| !piece.is_empty())
        .map(|piece| io::IoSlice::new(piece.as_bytes()))
        .collect();
    let mut stdout = io::stdout().lock();
    let mut rest = &mut slices[..];
    let result = (|| {
        while !rest.is_empty() {
            match stdout.write_vectored(rest) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => io::IoSlice::advance_slices(&mut rest, written),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        stdout.flush()
    })();
    match result {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
            stop(e);
            Ok(())
        }
        other => other.map_err(|e| Error::io("stdout", e)),
    }
}

/// Flushes stdout at the end of a command and settles the exit code: `code` as it was,
/// unless a write failed for a reason other than a closed pipe (then an error and 2).
pub(crate) fn finish(code: ExitCode) -> ExitCode {
    if !STOPPED.load(Ordering::Relaxed) {
        if let Err(e) = io::stdout().lock().flush() {
            stop(e);
        }
    }
    let failure = FAILURE.lock().ok().and_then(|mut f| f.take());
    match failure {
        Some(e) => {
            eprintln!("error: writing to stdout: {e}");
            ExitCode::from(2)
        }
        None => code,
    }
}
