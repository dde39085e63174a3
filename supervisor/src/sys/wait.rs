//! waitpid(2) for the calling thread's own tracees and children, and fair
//! reaping.
//!
//! Every wait passes `__WNOTHREAD`: "Wait only for children of the calling
//! thread" (wait(2)). A tracee's tracer is the thread that attached it, and
//! a forked child's parent the thread that forked it, so each session sees
//! only its own tasks: several sessions, each on its own thread, can run in
//! one process without taking each other's reports.

use super::Tid;
use crate::exit::ExitStatus;
use std::io;

/// A waitpid(2) status word, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitStatus {
    /// The task is gone.
    Exited(ExitStatus),
    /// A ptrace stop: `sig` is WSTOPSIG, `event` is `status >> 16`
    /// (PTRACE_EVENT_*, 0 for none).
    Stopped { sig: i32, event: i32 },
    /// WIFCONTINUED: never asked for (no WCONTINUED).
    Continued,
}

impl WaitStatus {
    pub fn from_raw(s: libc::c_int) -> WaitStatus {
        if libc::WIFEXITED(s) {
            WaitStatus::Exited(ExitStatus::Code(libc::WEXITSTATUS(s)))
        } else if libc::WIFSIGNALED(s) {
            WaitStatus::Exited(ExitStatus::Signal {
                signal: libc::WTERMSIG(s),
                core_dumped: libc::WCOREDUMP(s),
            })
        } else if libc::WIFSTOPPED(s) {
            WaitStatus::Stopped {
                sig: libc::WSTOPSIG(s),
                event: (s >> 16) & 0xff,
            }
        } else {
            WaitStatus::Continued
        }
    }
}

/// waitpid(2) with exactly `flags`, EINTR retried. `Ok(None)`: nothing to
/// report yet (WNOHANG) or no such child (ECHILD).
fn raw_waitpid(which: Tid, flags: libc::c_int) -> io::Result<Option<(Tid, WaitStatus)>> {
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: waitpid writes one int into `status`.
        let tid = unsafe { libc::waitpid(which, &mut status, flags) };
        if tid > 0 {
            return Ok(Some((tid, WaitStatus::from_raw(status))));
        }
        if tid == 0 {
            return Ok(None);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::ECHILD) => return Ok(None),
            _ => return Err(err),
        }
    }
}

/// A tracee or child of this thread (`__WNOTHREAD`), clone children
/// included (`__WALL`).
fn waitpid(which: Tid, flags: libc::c_int) -> io::Result<Option<(Tid, WaitStatus)>> {
    raw_waitpid(which, flags | libc::__WALL | libc::__WNOTHREAD)
}

/// Any child of our whole process, traced or not (no `__WNOTHREAD`: orphans
/// reparented to a subreaper go to whichever thread the kernel picks), for
/// a parent that traces nothing. `flags`: WNOHANG, WUNTRACED.
pub fn wait_children(flags: libc::c_int) -> io::Result<Option<(Tid, WaitStatus)>> {
    raw_waitpid(-1, flags)
}

/// Waits for one particular task of ours. `Ok(None)`: not ours (ECHILD).
pub fn wait_tid(tid: Tid) -> io::Result<Option<(Tid, WaitStatus)>> {
    waitpid(tid, 0)
}

/// [`wait_tid`] without waiting: `Ok(None)` while it runs (or is not ours).
pub fn try_wait_tid(tid: Tid) -> io::Result<Option<(Tid, WaitStatus)>> {
    waitpid(tid, libc::WNOHANG)
}

/// What [`Reaper::wait`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reaped {
    Report(Tid, WaitStatus),
    /// No child or tracee left (ECHILD).
    NothingLeft,
}

/// Fair waiting for many tracees.
///
/// `waitpid(-1)` is not fair. It reports the first ready task on the
/// tracer's list ("list_for_each_entry(p, &tsk->ptraced, ptrace_entry)" in
/// `ptrace_do_wait()`, kernel/exit.c), and every attach puts the new tracee at
/// the head of that list ("list_add(&child->ptrace_entry,
/// &new_parent->ptraced)" in `__ptrace_link()`, kernel/ptrace.c). A tracee
/// that stops again at once after being resumed (a thread calling getppid in
/// a loop under PTRACE_SYSCALL is back at its next syscall stop within a
/// microsecond, before the tracer is back in waitpid) is therefore reported
/// again and again, and the tracees behind it on the list are never reported
/// at all. With 30 busy threads `spinguard attach` never finished seizing.
///
/// The reaper takes every report that is ready at once (`WNOHANG` until
/// none is left) and hands them out in that order before it waits again.
/// A tracee stays stopped until the tracer resumes it, so it is in a batch at
/// most once: every tracee that was ready is served before any is served
/// twice. Reports taken from the kernel but not yet handed out are stops like
/// any other: whoever owns the reaper must handle them (detach included)
/// before believing a task is running.
#[derive(Debug, Default)]
pub struct Reaper {
    batch: std::collections::VecDeque<(Tid, WaitStatus)>,
}

impl Reaper {
    pub fn new() -> Reaper {
        Reaper::default()
    }

    /// The next report, waiting for one if none is queued or ready.
    pub fn wait(&mut self) -> io::Result<Reaped> {
        if let Some((tid, status)) = self.batch.pop_front() {
            return Ok(Reaped::Report(tid, status));
        }
        match waitpid(-1, 0)? {
            Some((tid, status)) => {
                self.fill()?;
                Ok(Reaped::Report(tid, status))
            }
            None => Ok(Reaped::NothingLeft),
        }
    }

    /// The next report if one is queued or ready now; never waits.
    pub fn try_take(&mut self) -> io::Result<Option<(Tid, WaitStatus)>> {
        if self.batch.is_empty() {
            self.fill()?;
        }
        Ok(self.batch.pop_front())
    }

    /// Takes every report that is ready now.
    fn fill(&mut self) -> io::Result<()> {
        while let Some(report) = waitpid(-1, libc::WNOHANG)? {
            self.batch.push_back(report);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stopped(sig: i32, event: i32) -> libc::c_int {
        (event << 16) | (sig << 8) | 0x7f
    }

    #[test]
    fn decodes_status_words() {
        assert_eq!(
            WaitStatus::from_raw(3 << 8),
            WaitStatus::Exited(ExitStatus::Code(3))
        );
        assert_eq!(
            WaitStatus::from_raw(9),
            WaitStatus::Exited(ExitStatus::Signal {
                signal: 9,
                core_dumped: false
            })
        );
        assert_eq!(
            WaitStatus::from_raw(0x80 | 11),
            WaitStatus::Exited(ExitStatus::Signal {
                signal: 11,
                core_dumped: true
            })
        );
        assert_eq!(
            WaitStatus::from_raw(stopped(libc::SIGTRAP, libc::PTRACE_EVENT_SECCOMP)),
            WaitStatus::Stopped {
                sig: libc::SIGTRAP,
                event: libc::PTRACE_EVENT_SECCOMP
            }
        );
    }
}
