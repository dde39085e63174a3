//! The ptrace engine behind `spinguard run` (and the base for `attach`).
//!
//! Layers, bottom up:
//! - [`ptrace`]: the only raw ptrace/waitpid calls, as typed requests;
//!   `ESRCH` becomes [`ptrace::PtraceError::Gone`].
//! - [`stop`]: a waitpid status as a [`stop::Stop`].
//! - [`seccomp`], [`spawn`]: the filter, and fork/seize/exec with it in place.
//! - [`guard`]: the policy (which calls, which signals, when to restart).
//! - [`tracer`]: the stop loop with per-task state; pushes [`event::Event`]s
//!   into an [`event::Observer`] and counts [`event::Stats`].
//! - [`forward`]: signals to the child, job control.
//! - [`run`]: all of it for one command, what `spinguard run` calls.
//!
//! See docs/supervisor.md for the design as built.

pub mod arch;
pub mod attach;
pub mod event;
pub mod exit;
pub mod forward;
pub mod guard;
pub mod parent;
pub mod procfs;
pub mod ptrace;
pub mod seccomp;
pub mod session;
pub mod spawn;
pub mod stop;
pub mod tracer;

pub use event::{Event, GuardedCall, LogObserver, NoObserver, Observer, Stats};
pub use exit::ExitStatus;
pub use guard::GuardPolicy;
pub use spawn::Command;
pub use tracer::{Config, StopMode, Tracer};

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
    Ptrace(#[from] ptrace::PtraceError),
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
}

/// "No such file or directory", without io::Error's " (os error 2)".
fn describe(e: &io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// How a supervised run ended.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub status: ExitStatus,
    pub stats: Stats,
    /// Signals forwarded to the child.
    pub forwarded: u64,
}

/// Runs `cmd` under the guard until it exits: blocks the forwarded,
/// job-control and absorbed signals (call this before starting other
/// threads), spawns the program with the filter, forwards signals to it, and
/// runs the stop loop on the calling thread.
pub fn run(cmd: Command, config: Config, observer: &mut dyn Observer) -> Result<Outcome, Error> {
    let forward = forward::forwarded();
    let block = forward::SignalBlock::new(
        forward
            .union(forward::job_control())
            .union(forward::absorbed()),
    )
    .map_err(|source| Error::Setup {
        what: "blocking signals",
        source,
    })?;
    let cmd = cmd.child_mask(block.previous());
    let mut tracer = Tracer::new(config, observer);
    let pid = tracer.spawn(&cmd)?;
    let forwarder = forward::Forwarder::start(pid, forward).map_err(|source| Error::Setup {
        what: "starting the signal forwarder",
        source,
    })?;
    let status = tracer.run()?;
    let forwarded = forwarder.forwarded();
    drop(forwarder);
    Ok(Outcome {
        status,
        stats: tracer.stats().clone(),
        forwarded,
    })
}
