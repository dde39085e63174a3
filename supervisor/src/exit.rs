//! How a process ended, and the exit status a wrapper should report for it.

use spinguard_common::signals::signal_name;
use std::fmt;

/// How a task ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    /// exit(code), 0..=255.
    Code(i32),
    /// Killed by `signal`; `core_dumped` is WCOREDUMP of the wait status.
    Signal { signal: i32, core_dumped: bool },
}

impl ExitStatus {
    /// The status a shell would show for the process: the code, or 128+N for
    /// death by signal N. A wrapper exits with this rather than re-raising the
    /// signal on itself: re-raising could dump our core or be ignored by our
    /// own disposition, and shells and tini agree on 128+N.
    pub fn shell_code(self) -> i32 {
        match self {
            ExitStatus::Code(c) => c,
            ExitStatus::Signal { signal, .. } => 128 + signal,
        }
    }

    pub fn success(self) -> bool {
        self == ExitStatus::Code(0)
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ExitStatus::Code(c) => write!(f, "exit code {c}"),
            ExitStatus::Signal {
                signal,
                core_dumped,
            } => {
                write!(f, "killed by {}", signal_name(signal))?;
                if core_dumped {
                    write!(f, " (core dumped)")?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_codes() {
        let killed = |signal| ExitStatus::Signal {
            signal,
            core_dumped: false,
        };
        assert_eq!(ExitStatus::Code(0).shell_code(), 0);
        assert_eq!(ExitStatus::Code(255).shell_code(), 255);
        assert_eq!(killed(libc::SIGTERM).shell_code(), 143);
        assert_eq!(killed(libc::SIGKILL).shell_code(), 137);
        assert_eq!(killed(libc::SIGSEGV).to_string(), "killed by SIGSEGV");
        let core = ExitStatus::Signal {
            signal: libc::SIGSEGV,
            core_dumped: true,
        };
        assert_eq!(core.to_string(), "killed by SIGSEGV (core dumped)");
        assert_eq!(core.shell_code(), 139);
    }
}
