//! What can go wrong, in one place: running a program, and attaching to one.

use crate::exit::ExitStatus;
use crate::sys::ptrace::PtraceError;
use crate::sys::Tid;
use std::io;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The program could not be executed: not found (exit 127) or not
    /// executable (exit 126), as a shell would say.
    #[error("cannot run '{program}': {}", describe(source))]
    CannotRun {
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("{what}: {}", describe(source))]
    Setup {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Ptrace(#[from] PtraceError),
    #[error("waitpid: {}", describe(.0))]
    Wait(io::Error),
}

impl Error {
    /// The exit status a wrapper should use: 127 when the program was not
    /// found, 126 when it could not be executed, 1 for our own failures.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::CannotRun { source, .. } if source.raw_os_error() == Some(libc::ENOENT) => 127,
            Error::CannotRun { .. } => 126,
            _ => 1,
        }
    }

    pub(crate) fn setup(what: &'static str) -> impl FnOnce(io::Error) -> Error {
        move |source| Error::Setup { what, source }
    }
}

/// "No such file or directory", without io::Error's " (os error 2)".
fn describe(e: &io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// Why a process cannot be attached to.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("no process with pid {pid}")]
    NoSuchProcess { pid: Tid },
    #[error("pid {pid} is spinguard itself")]
    Ourselves { pid: Tid },
    #[error("pid {pid} ({name}) is a zombie: it has exited, and its parent (pid {parent}) has not reaped it yet")]
    Zombie { pid: Tid, name: String, parent: Tid },
    #[error("pid {pid} is a kernel thread")]
    KernelThread { pid: Tid },
    #[error("pid {pid} ({name}) is already traced by pid {tracer} ({tracer_name}): a thread can have one tracer only")]
    AlreadyTraced {
        pid: Tid,
        name: String,
        tracer: Tid,
        tracer_name: String,
    },
    #[error("not permitted to trace pid {pid} ({name}): {why}")]
    NotPermitted { pid: Tid, name: String, why: String },
    #[error("pid {pid} exited while we attached")]
    Exited { pid: Tid, status: ExitStatus },
    #[error("{0}")]
    Engine(#[from] Error),
}

impl From<PtraceError> for AttachError {
    fn from(e: PtraceError) -> Self {
        AttachError::Engine(e.into())
    }
}
