//! What spinguard prints on stdout, and what a closed or full stdout means.
//!
//! Rust ignores SIGPIPE, so a write to a pipe whose reader has gone fails
//! with EPIPE instead of killing us, and `println!` panics on it (exit 101).
//! Everything printed on stdout goes through [`print`] instead:
//! - EPIPE (`spinguard man | head -1`): the reader has seen what it wanted.
//!   [`print`] returns [`StdoutClosed`]; the command stops printing and main
//!   exits 0, as ripgrep and fd do. A command whose status means something
//!   (diagnose's verdict, the loader's result) keeps it: see [`ignore_closed`].
//! - Any other error (ENOSPC on `> /dev/full`, EIO): the output is lost, so
//!   it is an error: "writing to stdout: No space left on device", exit 1.
//!
//! Each call writes and flushes at once, so an error surfaces at the write
//! that caused it, not in a buffer flushed (and ignored) at exit.

use std::fmt;
use std::io::{self, Write};

/// stdout's reader has gone (EPIPE). Not a failure: the command stops
/// printing and main exits 0.
#[derive(Debug)]
pub struct StdoutClosed;

impl fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("stdout was closed")
    }
}

impl std::error::Error for StdoutClosed {}

/// Writes `bytes` to stdout and flushes.
pub fn print_bytes(bytes: &[u8]) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
        Err(e) => Err(anyhow::Error::new(e).context("writing to stdout")),
    }
}

/// Writes `s` to stdout and flushes (see the module's doc for the errors).
pub fn print(s: impl fmt::Display) -> anyhow::Result<()> {
    print_bytes(s.to_string().as_bytes())
}

/// `print` with a newline.
pub fn println(s: impl fmt::Display) -> anyhow::Result<()> {
    print(format_args!("{s}\n"))
}

/// True when `e` is (or was caused by) a closed stdout.
pub fn is_closed(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.is::<StdoutClosed>())
}

/// For a command whose exit status carries its result: a closed stdout is
/// not an error (the result stands); every other error still is.
pub fn ignore_closed(r: anyhow::Result<()>) -> anyhow::Result<()> {
    match r {
        Err(e) if is_closed(&e) => Ok(()),
        r => r,
    }
}

/// `println!` that never panics: `spinguard::outln!("{x}")?`.
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::output::println(format_args!($($arg)*))
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_is_found_through_context() {
        let e = anyhow::Error::new(StdoutClosed).context("printing the table");
        assert!(is_closed(&e));
        assert!(ignore_closed(Err(e)).is_ok());
        let full = anyhow::Error::new(io::Error::from_raw_os_error(libc::ENOSPC));
        assert!(!is_closed(&full));
        assert!(ignore_closed(Err(full)).is_err());
    }
}
