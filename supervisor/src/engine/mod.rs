//! What a stop means. The session ([`crate::session`]) owns the wait loop
//! and everything every tracer must do (new tasks, exec, exits, job control,
//! re-injecting signals); an [`Engine`] decides what the stops that matter
//! mean and how each thread is resumed:
//!
//! | engine | catches a guarded call at | between loads |
//! | --- | --- | --- |
//! | [`seccomp::SeccompGuard`] (`run`, default) | the seccomp stop our filter makes at its entry | no stop at all, a filter on every syscall |
//! | [`signal::SignalGuard`] (`attach`, `run --engine signal`) | the signal-delivery stop of the signal that cut it short, then at entry while the thread keeps loading | no stop, no filter |
//!
//! The guarded call itself (save the mask, hold, restart, restore) is the
//! same for both guards: [`calls::Calls`].

pub mod calls;
pub mod policy;
pub mod seccomp;
pub mod signal;

use crate::event::{Event, Observer, Stats};
use crate::sys::ptrace::{PtraceError, Resume};
use crate::sys::Tid;
use crate::tracee::{Stop, Stopped};

/// What an engine may use at a stop besides the thread: where events go and
/// the session's counters.
pub struct Cx<'a> {
    pub observer: &'a mut dyn Observer,
    pub stats: &'a mut Stats,
}

impl Cx<'_> {
    pub fn emit(&mut self, event: Event) {
        self.observer.event(&event);
    }
}

/// How a spawned program is started for an engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spawn {
    /// With our seccomp filter; killed with us (PTRACE_O_EXITKILL): a program
    /// left with the filter and no tracer would get ENOSYS from every load.
    Filtered,
    /// No filter; it outlives us, untraced, if we die.
    Plain,
}

/// What runs each stop of a session (see the module comment).
pub trait Engine {
    /// How `Session::spawn` starts a program for this engine.
    fn spawn(&self) -> Spawn {
        Spawn::Plain
    }

    /// A task joins the session: seized, spawned, or created by a traced one.
    fn joined(&mut self, _tid: Tid, _pid: Tid) {}

    /// A task left the session (exited, or detached).
    fn left(&mut self, _tid: Tid) {}

    /// Process `pid` executed a new program (from thread `former`): what was
    /// known about its threads is void.
    fn exec(&mut self, _pid: Tid, _former: Tid) {}

    /// The first stop of a task seized from outside: where was it?
    fn first_stop(&mut self, _cx: &mut Cx, _task: &Stopped, _pid: Tid) -> Result<(), PtraceError> {
        Ok(())
    }

    /// A seccomp, syscall or signal-delivery stop, or an interrupt stop
    /// (PTRACE_INTERRUPT, or a LISTENing task woken) other than a seized
    /// task's first. Returns the signal to deliver (the one of a
    /// signal-delivery stop, normally; 0 for none).
    fn stop(
        &mut self,
        cx: &mut Cx,
        task: &Stopped,
        pid: Tid,
        stop: &Stop,
    ) -> Result<i32, PtraceError>;

    /// How to resume `tid` now.
    fn resume_mode(&self, tid: Tid) -> Resume;

    /// Whether `tid` holds state only its syscall-exit stop can undo (a
    /// mask of ours): it must reach that stop before it is detached, and must
    /// not be interrupted (an interrupt inside the verifier is a pending
    /// signal to it: the load would fail).
    fn busy(&self, tid: Tid) -> bool;

    /// Detach has begun: finish what is in flight, start nothing new.
    fn releasing(&mut self) {}

    /// `task` is about to be detached at `stop` (a signal-delivery stop is
    /// detached with its signal, so it is still delivered). A last chance to
    /// undo what a stop of ours did to it (an interrupt inside a load).
    fn detaching(
        &mut self,
        _cx: &mut Cx,
        _task: &Stopped,
        _pid: Tid,
        _stop: &Stop,
    ) -> Result<(), PtraceError> {
        Ok(())
    }
}
