//! A traced thread in a ptrace-stop, as a value, and what the stop was.
//!
//! A [`Stopped`] exists only for a stop the session's wait loop has just
//! taken from the kernel. Reading and changing the thread (mask, registers)
//! borrows it; resuming, listening or detaching consumes it, so a thread can
//! be let go only once per stop, and only while it is stopped. It is not
//! `Send`: ptrace answers only the thread that attached ("child->parent ==
//! current", `ptrace_check_attach()`), and a value that cannot leave that
//! thread turns a run-time ESRCH into a compile error.
//!
//! Exits are not stops: the wait loop reports them as
//! [`Report::Exited`], with no token, because there is nothing to resume.
//!
//! How a waitpid status tells the stops apart (ptrace(2), for a PTRACE_SEIZEd
//! tracee with PTRACE_O_TRACESYSGOOD):
//! - `WSTOPSIG == SIGTRAP|0x80`: syscall-enter- or syscall-exit-stop;
//! - `status>>8 == SIGTRAP | PTRACE_EVENT_foo<<8`: an event stop;
//! - `status>>16 == PTRACE_EVENT_STOP`: a group-stop when WSTOPSIG is a
//!   stopping signal, otherwise a PTRACE_INTERRUPT / new-tracee / LISTEN-wakeup
//!   trap;
//! - anything else stopped: a signal-delivery-stop.

use crate::exit::ExitStatus;
use crate::sys::arch::{Abi, Regs};
use crate::sys::ptrace::{self, PtraceError, Resume, SigInfo, SyscallInfo};
use crate::sys::seccomp::OUR_RET_DATA;
use crate::sys::wait::WaitStatus;
use crate::sys::Tid;
use spinguard_common::SigSet;
use std::marker::PhantomData;

pub use crate::sys::ptrace::RawCall as Call;

/// A thread stopped for us (see the module comment).
///
/// ```compile_fail
/// fn on_another_thread<T: Send>(_: T) {}
/// fn give_away(t: spinguard_supervisor::tracee::Stopped) { on_another_thread(t) }
/// ```
#[must_use = "a stopped thread stays stopped until it is resumed or detached"]
#[derive(Debug)]
pub struct Stopped {
    tid: Tid,
    /// Not Send, not Sync: ptrace's thread affinity.
    _bound: PhantomData<*const ()>,
}

impl Stopped {
    /// Only the wait loop makes these, from a stop it has just taken.
    pub(crate) fn new(tid: Tid) -> Stopped {
        Stopped {
            tid,
            _bound: PhantomData,
        }
    }

    pub fn tid(&self) -> Tid {
        self.tid
    }

    pub fn sigmask(&self) -> Result<SigSet, PtraceError> {
        ptrace::get_sigmask(self.tid)
    }

    pub fn set_sigmask(&self, mask: SigSet) -> Result<(), PtraceError> {
        ptrace::set_sigmask(self.tid, mask)
    }

    pub fn regs(&self) -> Result<Regs, PtraceError> {
        ptrace::get_regs(self.tid)
    }

    pub fn set_regs(&self, regs: &Regs) -> Result<(), PtraceError> {
        ptrace::set_regs(self.tid, regs)
    }

    /// The siginfo of the signal at a signal-delivery-stop.
    pub fn siginfo(&self) -> Result<SigInfo, PtraceError> {
        ptrace::get_siginfo(self.tid)
    }

    /// At any stop on the way back to user space (a signal-delivery stop, an
    /// interrupt): the syscall the thread last entered the kernel with, if
    /// it last entered by a syscall, with its result as the thread will see
    /// it. The ABI is told from the registers ([`Regs::abi`]), looking at the
    /// instruction before the stop only when the number is one `bpf` has in
    /// some ABI (`is_interesting`), so a stop costs one more request at most.
    pub fn last_syscall(
        &self,
        regs: &Regs,
        is_interesting: impl Fn(u64) -> bool,
    ) -> Option<LastSyscall> {
        let nr = regs.syscall_nr()?;
        if !is_interesting(nr) {
            return None;
        }
        let abi = regs.abi(ptrace::insn_before(self.tid, regs.ip()));
        Some(LastSyscall {
            call: Call {
                abi: Some(abi),
                nr,
                args: regs.args(abi),
                ip: regs.ip(),
                sp: regs.sp(),
            },
            ret: regs.ret(),
        })
    }

    pub(crate) fn resume(self, how: Resume, signal: i32) -> Result<(), PtraceError> {
        ptrace::resume(self.tid, how, signal)
    }

    /// PTRACE_LISTEN (a group-stop only).
    pub(crate) fn listen(self) -> Result<(), PtraceError> {
        ptrace::listen(self.tid)
    }

    pub(crate) fn detach(self, signal: i32) -> Result<(), PtraceError> {
        ptrace::detach(self.tid, signal)
    }
}

/// A syscall a thread has returned from, seen at a later stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LastSyscall {
    pub call: Call,
    /// What the thread will see (`-errno` on error).
    pub ret: i64,
}

/// What a stop is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// PTRACE_EVENT_SECCOMP: a filter returned SECCOMP_RET_TRACE. The tracee
    /// is between syscall entry and the syscall itself. `ours`: our filter's
    /// verdict ([`OUR_RET_DATA`]); otherwise the program's own filter asked
    /// for a tracer it does not have.
    Seccomp {
        call: Call,
        ours: bool,
    },
    /// syscall-enter-stop (the thread was resumed with PTRACE_SYSCALL).
    SyscallEntry(Call),
    /// syscall-exit-stop; `ret` is `-errno` on error.
    SyscallExit {
        ret: i64,
    },
    /// The tracee is about to receive this signal; it is delivered only if
    /// it is passed to the resuming request.
    Signal(i32),
    /// The thread group stopped (SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU).
    Group(i32),
    /// PTRACE_EVENT_STOP that is not a group-stop: the first stop of a
    /// seized or auto-attached task, a PTRACE_INTERRUPT, or a LISTENing
    /// tracee woken by SIGCONT.
    Interrupt,
    /// PTRACE_EVENT_CLONE: a new thread (usually).
    Clone(Tid),
    /// PTRACE_EVENT_FORK: a new process.
    Fork(Tid),
    /// PTRACE_EVENT_VFORK: a new process; the parent waits for its exec or exit.
    Vfork(Tid),
    VforkDone,
    /// PTRACE_EVENT_EXEC, reported under the thread-group leader's tid.
    /// `former` is the tid of the thread that called execve: when it was not
    /// the leader, it has taken the leader's tid and every other thread is
    /// gone (their deaths are reported, the old leader's is not).
    Exec {
        former: Tid,
    },
    /// PTRACE_EVENT_EXIT (only with PTRACE_O_TRACEEXIT).
    Exit,
}

impl Stop {
    /// A stop inside a syscall, between its entry and exit stops (an event
    /// the syscall itself makes).
    fn keeps_syscall_state(&self) -> bool {
        matches!(
            self,
            Stop::Clone(_)
                | Stop::Fork(_)
                | Stop::Vfork(_)
                | Stop::VforkDone
                | Stop::Exec { .. }
                | Stop::Exit
        )
    }
}

/// One report from the wait loop.
#[derive(Debug)]
pub enum Report {
    Stopped(Stopped, Stop),
    Exited(Tid, ExitStatus),
}

pub(crate) fn is_stopping_signal(sig: i32) -> bool {
    matches!(
        sig,
        libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU
    )
}

/// Per task, what the decoder must remember when PTRACE_GET_SYSCALL_INFO is
/// missing (before Linux 5.3, or forced): whether the thread is between a
/// syscall's entry and exit stops, which is all that tells the two apart in
/// the registers (strace's way before 5.3).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyscallState {
    pub in_syscall: bool,
}

impl SyscallState {
    /// After the thread was resumed: PTRACE_CONT means no exit stop will come
    /// for the syscall it is in.
    pub fn resumed(&mut self, how: Resume) {
        if how == Resume::Cont {
            self.in_syscall = false;
        }
    }

    fn after(&mut self, stop: &Stop) {
        match stop {
            Stop::Seccomp { .. } | Stop::SyscallEntry(_) => self.in_syscall = true,
            s if s.keeps_syscall_state() => {}
            _ => self.in_syscall = false,
        }
    }
}

fn call_from_regs(tid: Tid, regs: &Regs) -> Call {
    let abi = regs.abi(ptrace::insn_before(tid, regs.ip()));
    Call {
        abi: Some(abi),
        nr: regs.syscall_nr().unwrap_or(u64::MAX),
        args: regs.args(abi),
        ip: regs.ip(),
        sp: regs.sp(),
    }
}

/// Turns a waitpid report into a [`Report`]. Stops that carry data ask the
/// kernel for it, which fails with `Gone` if the task died meanwhile.
pub(crate) fn decode(
    tid: Tid,
    status: WaitStatus,
    state: &mut SyscallState,
) -> Result<Option<Report>, PtraceError> {
    let (sig, event) = match status {
        WaitStatus::Exited(s) => return Ok(Some(Report::Exited(tid, s))),
        WaitStatus::Continued => return Ok(None),
        WaitStatus::Stopped { sig, event } => (sig, event),
    };
    let new_tid = || ptrace::event_msg(tid).map(|m| m as Tid);
    let stop = if sig == libc::SIGTRAP | 0x80 {
        match ptrace::syscall_info(tid)? {
            Some(SyscallInfo::Entry(call)) => Stop::SyscallEntry(call),
            Some(SyscallInfo::Exit { ret }) => Stop::SyscallExit { ret },
            _ => {
                let regs = ptrace::get_regs(tid)?;
                if state.in_syscall {
                    Stop::SyscallExit { ret: regs.ret() }
                } else {
                    Stop::SyscallEntry(call_from_regs(tid, &regs))
                }
            }
        }
    } else {
        match event {
            0 => Stop::Signal(sig),
            libc::PTRACE_EVENT_SECCOMP => match ptrace::syscall_info(tid)? {
                Some(SyscallInfo::Seccomp { call, ret_data }) => Stop::Seccomp {
                    call,
                    ours: ret_data == u32::from(OUR_RET_DATA),
                },
                _ => {
                    let data = ptrace::event_msg(tid)?;
                    let regs = ptrace::get_regs(tid)?;
                    Stop::Seccomp {
                        call: call_from_regs(tid, &regs),
                        ours: data == u64::from(OUR_RET_DATA),
                    }
                }
            },
            libc::PTRACE_EVENT_CLONE => Stop::Clone(new_tid()?),
            libc::PTRACE_EVENT_FORK => Stop::Fork(new_tid()?),
            libc::PTRACE_EVENT_VFORK => Stop::Vfork(new_tid()?),
            libc::PTRACE_EVENT_VFORK_DONE => Stop::VforkDone,
            libc::PTRACE_EVENT_EXEC => Stop::Exec { former: new_tid()? },
            libc::PTRACE_EVENT_EXIT => Stop::Exit,
            libc::PTRACE_EVENT_STOP if is_stopping_signal(sig) => Stop::Group(sig),
            _ => Stop::Interrupt,
        }
    };
    state.after(&stop);
    Ok(Some(Report::Stopped(Stopped::new(tid), stop)))
}

/// Whether `abi`'s bpf number is `nr` for some ABI we guard: the cheap test
/// before looking closer at a stop.
pub fn could_be_bpf(nr: u64) -> bool {
    Abi::GUARDED.iter().any(|a| a.nr_bpf() == nr)
}
