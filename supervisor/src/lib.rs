//! The ptrace engine behind `spinguard run` and `spinguard attach`.
//!
//! Layers, bottom up (docs/supervisor.md tells the whole story):
//! - [`sys`]: every raw syscall (ptrace, waitpid, signals, seccomp, fork,
//!   /proc) behind typed, safe wrappers.
//! - [`tracee`]: a stopped thread as a value that resuming consumes, and
//!   what its stop was; exits are not stops.
//! - [`session`]: the one wait loop, for run and attach: spawn or seize,
//!   tasks, exits, job control, detach, and a [`session::StopHandle`] to stop
//!   it from any thread.
//! - [`engine`]: what a stop means: the guard at seccomp stops, the guard at
//!   signal-delivery stops, and the guarded call they share.
//! - [`event`]: what happens, pushed to an [`Observer`]; [`Stats`].
//! - [`run()`], [`attach::Attachment`]: the two commands' operations;
//!   [`parent`]: `run`'s preload mode when spinguard stays as the parent
//!   (no tracer).

pub mod attach;
pub mod engine;
pub mod error;
pub mod event;
pub mod exit;
pub mod parent;
pub mod run;
pub mod session;
pub mod sys;
pub mod tracee;

pub use engine::policy::GuardPolicy;
pub use error::{AttachError, Error};
pub use event::{Event, GuardedCall, LogObserver, NoObserver, Observer, Stats, TaskKind};
pub use exit::ExitStatus;
pub use run::{run, EngineKind, Outcome, RunConfig};
pub use session::spawn::Command;
