//! What the tracer tells the world: typed events pushed to an [`Observer`],
//! and the counters of a whole run ([`Stats`]).
//!
//! Events are `Copy` and hold no heap data, so an observer that forwards them
//! to another thread (a channel to a socket writer) costs the tracer no
//! allocation. The observer runs on the tracer thread, between a stop and the
//! resume that ends it: it must not block.

use crate::exit::ExitStatus;
use crate::sys::Tid;
use spinguard_common::bpf::command_name;
use spinguard_common::errno::errno_name;
use spinguard_common::signals::signal_name;
use spinguard_common::SigSet;
use std::time::Duration;

/// How a new task came to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskKind {
    Thread,
    Fork,
    Vfork,
}

/// One guarded call, reported when it finishes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuardedCall {
    pub pid: Tid,
    pub tid: Tid,
    /// The bpf command (BPF_PROG_LOAD = 5, ...).
    pub cmd: u32,
    /// The syscall's return value as the program sees it (`-errno` on error).
    pub result: i64,
    /// From the first stop to the final exit stop.
    pub elapsed: Duration,
    /// Times the syscall ran: 1 + restarts.
    pub attempts: u32,
    /// Times we ran it again after EAGAIN/EINTR with the mask held.
    pub restarts: u32,
    /// The last attempt still failed with EAGAIN/EINTR, and the restart
    /// budget was spent: the program sees the failure.
    pub gave_up: bool,
    /// Restarted, but the thread never came back to it: a signal handler
    /// that ran in between left by siglongjmp. `result` is the failure the
    /// last attempt got, which the program never saw.
    pub abandoned: bool,
    /// The guard set (what was blocked on top of the thread's own mask).
    pub guard: SigSet,
    /// Guard signals that were pending, held back, when the call finished.
    pub held_back: SigSet,
}

impl std::fmt::Display for GuardedCall {
    /// `pid 4242 tid 4250: BPF_PROG_LOAD verified in 119 ms, 1 attempt, SIGPROF held back`
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = command_name(self.cmd);
        write!(f, "pid {} tid {}: {name} ", self.pid, self.tid)?;
        if self.result >= 0 {
            let verb = if self.cmd == spinguard_common::bpf::BPF_PROG_LOAD {
                "verified"
            } else {
                "done"
            };
            write!(f, "{verb} in {} ms", self.elapsed.as_millis())?;
        } else {
            let e = errno_name((-self.result) as i32);
            write!(f, "failed with {e} after {} ms", self.elapsed.as_millis())?;
        }
        let s = if self.attempts == 1 { "" } else { "s" };
        write!(f, ", {} attempt{s}", self.attempts)?;
        if self.gave_up {
            write!(f, " (restart limit reached)")?;
        }
        if self.abandoned {
            write!(f, " (abandoned: a signal handler did not return to it)")?;
        }
        if !self.held_back.is_empty() {
            write!(f, ", {} held back", self.held_back)?;
        }
        Ok(())
    }
}

/// What the tracer reports as it goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A task was traced from its first stop; `parent` is the task whose
    /// clone/fork/vfork created it (sent when that event comes).
    NewTask {
        pid: Tid,
        tid: Tid,
        parent: Tid,
        kind: TaskKind,
    },
    /// A process executed a new program. `former_tid` differs from `pid` when
    /// a non-leader thread called execve.
    Exec { pid: Tid, former_tid: Tid },
    /// A guarded call started (the mask is now held).
    GuardStart { pid: Tid, tid: Tid, cmd: u32 },
    /// A guarded call failed with EAGAIN/EINTR and is being run again;
    /// `n` counts the restarts of this one call (1 = the first).
    Restart {
        pid: Tid,
        tid: Tid,
        cmd: u32,
        errno: i32,
        n: u32,
    },
    /// A guarded call finished.
    Guarded(GuardedCall),
    /// A signal was delivered to (re-injected into) a tracee.
    Signal { pid: Tid, tid: Tid, signal: i32 },
    /// A task entered a group-stop (job control).
    GroupStop { pid: Tid, tid: Tid, signal: i32 },
    /// A task left a group-stop (SIGCONT).
    Continued { pid: Tid, tid: Tid },
    /// A task ended.
    TaskExit {
        pid: Tid,
        tid: Tid,
        status: ExitStatus,
    },
    /// The spawned program's process ended; the run is over.
    ChildExit { pid: Tid, status: ExitStatus },
    /// The program's own seccomp filter returned SECCOMP_RET_TRACE for
    /// syscall `nr`: answered with ENOSYS, as it would be without a tracer.
    ForeignTrace { pid: Tid, tid: Tid, nr: u64 },
    /// The signal-stop engine follows this thread at syscall entry from now
    /// on: it makes guarded calls (until it makes none for a while).
    Following { pid: Tid, tid: Tid, following: bool },
}

/// Receives the tracer's events. Runs on the tracer thread: never block.
pub trait Observer {
    fn event(&mut self, event: &Event);
}

impl<F: FnMut(&Event)> Observer for F {
    fn event(&mut self, event: &Event) {
        self(event)
    }
}

/// Ignores everything.
pub struct NoObserver;

impl Observer for NoObserver {
    fn event(&mut self, _: &Event) {}
}

/// Writes events to the `log` crate: guarded calls at info, restarts at
/// warn/info, task life at debug, signals at trace.
pub struct LogObserver;

impl Observer for LogObserver {
    fn event(&mut self, event: &Event) {
        match *event {
            Event::Guarded(call) if call.gave_up => log::warn!("{call}"),
            Event::Guarded(call) => log::info!("{call}"),
            Event::Restart {
                pid,
                tid,
                cmd,
                errno,
                n,
            } => log::debug!(
                "pid {pid} tid {tid}: {} got {}, running it again (restart {n})",
                command_name(cmd),
                errno_name(errno)
            ),
            Event::GuardStart { pid, tid, cmd } => {
                log::debug!("pid {pid} tid {tid}: {} guarded", command_name(cmd))
            }
            Event::NewTask {
                pid,
                tid,
                parent,
                kind,
            } => log::debug!("pid {pid} tid {tid}: new {kind:?} of {parent}"),
            Event::Exec { pid, former_tid } if former_tid != pid => {
                log::debug!("pid {pid}: exec from thread {former_tid}")
            }
            Event::Exec { pid, .. } => log::debug!("pid {pid}: exec"),
            Event::Signal { pid, tid, signal } => {
                log::trace!("pid {pid} tid {tid}: {}", signal_name(signal))
            }
            Event::GroupStop { pid, tid, signal } => {
                log::debug!("pid {pid} tid {tid}: stopped by {}", signal_name(signal))
            }
            Event::Continued { pid, tid } => log::debug!("pid {pid} tid {tid}: continued"),
            Event::TaskExit { pid, tid, status } => {
                log::trace!("pid {pid} tid {tid}: {status}")
            }
            Event::ChildExit { pid, status } => log::debug!("pid {pid}: {status}"),
            Event::ForeignTrace { pid, tid, nr } => log::debug!(
                "pid {pid} tid {tid}: its own seccomp filter traced syscall {nr}: ENOSYS, as without a tracer"
            ),
            Event::Following { pid, tid, following } => log::debug!(
                "pid {pid} tid {tid}: {}",
                if following {
                    "makes guarded calls: following it at syscall entry"
                } else {
                    "no guarded call for a while: no longer followed"
                }
            ),
        }
    }
}

/// Counters of one tracing session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stats {
    /// Guarded calls finished.
    pub guarded_calls: u64,
    /// Runs of a guarded call after EAGAIN/EINTR (not counting the first).
    pub restarts: u64,
    /// Guarded calls whose EAGAIN/EINTR reached the program anyway.
    pub gave_up: u64,
    /// Stops at which an attempt of a guarded call was caught: our seccomp
    /// stops, the entry stops of guarded calls of followed threads, and the
    /// signal-delivery or interrupt stops that caught an interrupted one.
    /// Every attempt is caught once, so this is `guarded_calls + restarts`.
    pub guard_stops: u64,
    /// PTRACE_EVENT_SECCOMP stops, ours and the program's own filter's.
    pub seccomp_stops: u64,
    /// Of those, the program's own (answered ENOSYS).
    pub foreign_seccomp_stops: u64,
    /// syscall-enter/exit stops.
    pub syscall_stops: u64,
    /// Signal-delivery stops, i.e. signals re-injected, by signal number.
    pub signals: [u64; 65],
    pub group_stops: u64,
    /// Tasks followed, the first one included.
    pub tasks: u64,
    pub execs: u64,
    /// Threads the signal-stop engine started following as loaders.
    pub followed: u64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            guarded_calls: 0,
            restarts: 0,
            gave_up: 0,
            guard_stops: 0,
            seccomp_stops: 0,
            foreign_seccomp_stops: 0,
            syscall_stops: 0,
            signals: [0; 65],
            group_stops: 0,
            tasks: 0,
            execs: 0,
            followed: 0,
        }
    }
}

impl Stats {
    pub fn signals_total(&self) -> u64 {
        self.signals.iter().sum()
    }

    /// `N guarded bpf calls, R restarts, S stops; …`, the summary `spinguard
    /// run -v` prints; S counts [`Stats::guard_stops`].
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} guarded bpf calls, {} restarts, {} stops",
            self.guarded_calls, self.restarts, self.guard_stops
        );
        if self.gave_up > 0 {
            s += &format!(", {} gave up", self.gave_up);
        }
        s += &format!(
            "; {} signals re-injected, {} tasks, {} execs",
            self.signals_total(),
            self.tasks,
            self.execs
        );
        if self.syscall_stops > 0 {
            s += &format!(", {} syscall stops", self.syscall_stops);
        }
        if self.foreign_seccomp_stops > 0 {
            s += &format!(
                ", {} calls its own seccomp filter traced (ENOSYS)",
                self.foreign_seccomp_stops
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guarded_call_reads_like_the_docs() {
        let mut held = SigSet::EMPTY;
        held.insert(libc::SIGPROF);
        let call = GuardedCall {
            pid: 4242,
            tid: 4250,
            cmd: 5,
            result: 7,
            elapsed: Duration::from_millis(119),
            attempts: 1,
            restarts: 0,
            gave_up: false,
            abandoned: false,
            guard: SigSet::DEFAULT_GUARD,
            held_back: held,
        };
        assert_eq!(
            call.to_string(),
            "pid 4242 tid 4250: BPF_PROG_LOAD verified in 119 ms, 1 attempt, SIGPROF held back"
        );
    }
}
