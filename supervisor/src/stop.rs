//! A waitpid status turned into what happened to the tracee.
//!
//! ptrace(2) distinguishes the stops by the status word alone (for a
//! PTRACE_SEIZEd tracee with PTRACE_O_TRACESYSGOOD):
//! - `WSTOPSIG == SIGTRAP|0x80`: syscall-enter- or syscall-exit-stop;
//! - `status>>8 == SIGTRAP | PTRACE_EVENT_foo<<8`: an event stop;
//! - `status>>16 == PTRACE_EVENT_STOP`: a group-stop when WSTOPSIG is a
//!   stopping signal, otherwise a PTRACE_INTERRUPT / new-tracee / LISTEN-wakeup
//!   trap ("If the tracee was attached using PTRACE_SEIZE, group-stop is
//!   indicated by PTRACE_EVENT_STOP: status>>16 == PTRACE_EVENT_STOP");
//! - anything else stopped: a signal-delivery-stop.

use crate::exit::ExitStatus;
use crate::ptrace::{self, PtraceError, Tid, WaitStatus};

/// One report from waitpid about one tracee.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// PTRACE_EVENT_SECCOMP: the filter returned SECCOMP_RET_TRACE. The tracee
    /// is between syscall entry and the syscall itself.
    Seccomp,
    /// A syscall-enter or syscall-exit stop; PTRACE_GET_SYSCALL_INFO or the
    /// tracer's own state says which.
    Syscall,
    /// The tracee is about to receive `signal`; it is delivered only if the
    /// tracer passes it to the resuming request.
    SignalDelivery(i32),
    /// The thread group stopped (SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU).
    GroupStop(i32),
    /// PTRACE_EVENT_STOP that is not a group-stop: the first stop of an
    /// auto-attached new task, a PTRACE_INTERRUPT, or a LISTENing tracee woken
    /// by SIGCONT.
    EventStop,
    /// PTRACE_EVENT_CLONE: `new` is the new task (usually a thread).
    Clone { new: Tid },
    /// PTRACE_EVENT_FORK: `new` is the child process.
    Fork { new: Tid },
    /// PTRACE_EVENT_VFORK: `new` is the child process; the parent stays
    /// blocked until the child execs or exits.
    Vfork { new: Tid },
    /// PTRACE_EVENT_VFORK_DONE.
    VforkDone,
    /// PTRACE_EVENT_EXEC, reported under the thread-group leader's tid.
    /// `former` is the tid of the thread that called execve: when it was not
    /// the leader, it has taken the leader's tid and every other thread is gone
    /// (their deaths are reported, the old leader's is not).
    Exec { former: Tid },
    /// PTRACE_EVENT_EXIT (only with PTRACE_O_TRACEEXIT).
    ExitEvent,
    /// The task is gone: exited, or killed by a signal. A tracee's exit status
    /// is the thread's; for a process leader it is the process's.
    Exited(ExitStatus),
}

impl Stop {
    /// A stop that leaves the task waiting for the tracer (everything but exits).
    pub fn is_stopped(&self) -> bool {
        !matches!(self, Stop::Exited(_))
    }
}

fn is_stopping_signal(sig: i32) -> bool {
    matches!(
        sig,
        libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU
    )
}

/// Decodes a status. Event stops that carry a tid ask the kernel for it
/// (PTRACE_GETEVENTMSG), which fails with `Gone` if the task died meanwhile.
pub fn decode(tid: Tid, status: WaitStatus) -> Result<Stop, PtraceError> {
    let s = status.0;
    if libc::WIFEXITED(s) {
        return Ok(Stop::Exited(ExitStatus::Code(libc::WEXITSTATUS(s))));
    }
    if libc::WIFSIGNALED(s) {
        return Ok(Stop::Exited(ExitStatus::Signal(libc::WTERMSIG(s))));
    }
    if !libc::WIFSTOPPED(s) {
        // WIFCONTINUED: we never ask for it (no WCONTINUED), so treat it as a
        // wake-up that needs nothing.
        return Ok(Stop::EventStop);
    }
    let sig = libc::WSTOPSIG(s);
    if sig == libc::SIGTRAP | 0x80 {
        return Ok(Stop::Syscall);
    }
    let event = (s >> 16) & 0xff;
    let new_tid = || ptrace::event_msg(tid).map(|m| m as Tid);
    Ok(match event {
        0 => Stop::SignalDelivery(sig),
        libc::PTRACE_EVENT_SECCOMP => Stop::Seccomp,
        libc::PTRACE_EVENT_CLONE => Stop::Clone { new: new_tid()? },
        libc::PTRACE_EVENT_FORK => Stop::Fork { new: new_tid()? },
        libc::PTRACE_EVENT_VFORK => Stop::Vfork { new: new_tid()? },
        libc::PTRACE_EVENT_VFORK_DONE => Stop::VforkDone,
        libc::PTRACE_EVENT_EXEC => Stop::Exec { former: new_tid()? },
        libc::PTRACE_EVENT_EXIT => Stop::ExitEvent,
        libc::PTRACE_EVENT_STOP if is_stopping_signal(sig) => Stop::GroupStop(sig),
        _ => Stop::EventStop,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stopped(sig: i32, event: i32) -> WaitStatus {
        WaitStatus((event << 16) | (sig << 8) | 0x7f)
    }

    #[test]
    fn decodes_without_asking_the_kernel() {
        let t = 1; // never asked: these stops carry no event message
        assert_eq!(
            decode(t, WaitStatus(3 << 8)).unwrap(),
            Stop::Exited(ExitStatus::Code(3))
        );
        assert_eq!(
            decode(t, WaitStatus(9)).unwrap(),
            Stop::Exited(ExitStatus::Signal(9))
        );
        assert_eq!(
            decode(t, WaitStatus(0x80 | 11)).unwrap(),
            Stop::Exited(ExitStatus::Signal(11))
        );
        assert_eq!(
            decode(t, stopped(libc::SIGTRAP | 0x80, 0)).unwrap(),
            Stop::Syscall
        );
        assert_eq!(
            decode(t, stopped(libc::SIGPROF, 0)).unwrap(),
            Stop::SignalDelivery(27)
        );
        assert_eq!(
            decode(t, stopped(libc::SIGTRAP, libc::PTRACE_EVENT_SECCOMP)).unwrap(),
            Stop::Seccomp
        );
        assert_eq!(
            decode(t, stopped(libc::SIGTSTP, libc::PTRACE_EVENT_STOP)).unwrap(),
            Stop::GroupStop(libc::SIGTSTP)
        );
        assert_eq!(
            decode(t, stopped(libc::SIGTRAP, libc::PTRACE_EVENT_STOP)).unwrap(),
            Stop::EventStop
        );
    }
}
