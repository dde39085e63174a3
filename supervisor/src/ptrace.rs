//! The one place that calls ptrace(2) and waitpid(2).
//!
//! Everything above this module sees typed requests and a typed [`PtraceError`];
//! nobody else touches a raw request number, status word or register file.
//! `ESRCH` is mapped to [`PtraceError::Gone`] here and only here: ptrace(2),
//! "ESRCH: The specified process does not exist, or is not currently being
//! traced by the caller, or is not stopped". For a tracee we saw stop, that
//! means it was killed (SIGKILL, a sibling's exit_group or execve) in the
//! meantime, and its exit will be reported by waitpid.

use crate::arch::Regs;
use libc::{c_long, c_void};
use spinguard_common::SigSet;
use std::io;

/// A kernel task id (thread id; the leader's tid is the process id).
pub type Tid = libc::pid_t;

#[derive(Debug, thiserror::Error)]
pub enum PtraceError {
    /// The thread no longer exists or is no longer stopped for us.
    #[error("thread {tid} is gone")]
    Gone { tid: Tid },
    #[error("{op} on thread {tid}: {source}")]
    Failed {
        op: &'static str,
        tid: Tid,
        #[source]
        source: io::Error,
    },
}

impl PtraceError {
    pub fn is_gone(&self) -> bool {
        matches!(self, PtraceError::Gone { .. })
    }
}

fn check(op: &'static str, tid: Tid, ret: c_long) -> Result<c_long, PtraceError> {
    if ret != -1 {
        return Ok(ret);
    }
    let source = io::Error::last_os_error();
    if source.raw_os_error() == Some(libc::ESRCH) {
        Err(PtraceError::Gone { tid })
    } else {
        Err(PtraceError::Failed { op, tid, source })
    }
}

/// # Safety
/// `addr` and `data` must be what `req` expects (a pointer the kernel may
/// read or write for the given size, or a plain integer).
unsafe fn raw(req: libc::c_uint, tid: Tid, addr: *mut c_void, data: *mut c_void) -> c_long {
    libc::ptrace(req, tid, addr, data)
}

/// PTRACE_O_* options, as a set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options(libc::c_int);

impl Options {
    pub const EXITKILL: Options = Options(libc::PTRACE_O_EXITKILL);
    pub const TRACESECCOMP: Options = Options(libc::PTRACE_O_TRACESECCOMP);
    pub const TRACESYSGOOD: Options = Options(libc::PTRACE_O_TRACESYSGOOD);
    pub const TRACECLONE: Options = Options(libc::PTRACE_O_TRACECLONE);
    pub const TRACEFORK: Options = Options(libc::PTRACE_O_TRACEFORK);
    pub const TRACEVFORK: Options = Options(libc::PTRACE_O_TRACEVFORK);
    pub const TRACEEXEC: Options = Options(libc::PTRACE_O_TRACEEXEC);

    /// What a guarding tracer needs: follow every new task and exec, see
    /// seccomp traps, tell syscall-stops from SIGTRAP, and make sure no tracee
    /// outlives us with a SECCOMP_RET_TRACE filter and nobody to answer it
    /// (seccomp(2): "If there is no tracer present, the system call is not
    /// executed and returns a failure status with errno set to ENOSYS").
    pub const GUARD: Options = Options(
        libc::PTRACE_O_EXITKILL
            | libc::PTRACE_O_TRACESECCOMP
            | libc::PTRACE_O_TRACESYSGOOD
            | libc::PTRACE_O_TRACECLONE
            | libc::PTRACE_O_TRACEFORK
            | libc::PTRACE_O_TRACEVFORK
            | libc::PTRACE_O_TRACEEXEC,
    );

    pub const fn union(self, other: Options) -> Options {
        Options(self.0 | other.0)
    }

    pub const fn difference(self, other: Options) -> Options {
        Options(self.0 & !other.0)
    }

    pub const fn contains(self, other: Options) -> bool {
        self.0 & other.0 == other.0
    }
}

/// PTRACE_SEIZE: attach without stopping the tracee. Unlike PTRACE_ATTACH and
/// PTRACE_TRACEME, a seized tracee reports group-stops as PTRACE_EVENT_STOP and
/// can be PTRACE_LISTENed, which is what makes job control work under us.
pub fn seize(tid: Tid, options: Options) -> Result<(), PtraceError> {
    // SAFETY: PTRACE_SEIZE takes addr 0 and the options as data.
    let ret = unsafe {
        raw(
            libc::PTRACE_SEIZE,
            tid,
            std::ptr::null_mut(),
            options.0 as usize as *mut c_void,
        )
    };
    check("PTRACE_SEIZE", tid, ret).map(drop)
}

/// PTRACE_INTERRUPT: stop a seized tracee (it reports PTRACE_EVENT_STOP).
pub fn interrupt(tid: Tid) -> Result<(), PtraceError> {
    // SAFETY: no pointers.
    let ret = unsafe {
        raw(
            libc::PTRACE_INTERRUPT,
            tid,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
    };
    check("PTRACE_INTERRUPT", tid, ret).map(drop)
}

/// How to let a stopped tracee go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resume {
    /// PTRACE_CONT: run until the next event or signal. With a seccomp filter
    /// this means no syscall-stops at all: only SECCOMP_RET_TRACE stops.
    Cont,
    /// PTRACE_SYSCALL: also stop at the next syscall entry or exit.
    Syscall,
}

/// Resumes a stopped tracee, delivering `signal` (0 for none). The signal is
/// only delivered from a signal-delivery-stop; elsewhere the kernel ignores it.
pub fn resume(tid: Tid, how: Resume, signal: i32) -> Result<(), PtraceError> {
    let (req, op) = match how {
        Resume::Cont => (libc::PTRACE_CONT, "PTRACE_CONT"),
        Resume::Syscall => (libc::PTRACE_SYSCALL, "PTRACE_SYSCALL"),
    };
    // SAFETY: addr is ignored; data is the signal number.
    let ret = unsafe {
        raw(
            req,
            tid,
            std::ptr::null_mut(),
            signal as usize as *mut c_void,
        )
    };
    check(op, tid, ret).map(drop)
}

/// PTRACE_LISTEN: leave a group-stopped tracee stopped, but let the kernel
/// wake it (and report PTRACE_EVENT_STOP) when SIGCONT or SIGKILL comes. Only
/// valid at a group-stop of a PTRACE_SEIZEd tracee.
pub fn listen(tid: Tid) -> Result<(), PtraceError> {
    // SAFETY: no pointers.
    let ret = unsafe {
        raw(
            libc::PTRACE_LISTEN,
            tid,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
    };
    check("PTRACE_LISTEN", tid, ret).map(drop)
}

/// PTRACE_DETACH, delivering `signal` (0 for none).
pub fn detach(tid: Tid, signal: i32) -> Result<(), PtraceError> {
    // SAFETY: data is the signal number.
    let ret = unsafe {
        raw(
            libc::PTRACE_DETACH,
            tid,
            std::ptr::null_mut(),
            signal as usize as *mut c_void,
        )
    };
    check("PTRACE_DETACH", tid, ret).map(drop)
}

/// The kernel's sigset size. PTRACE_GETSIGMASK/SETSIGMASK insist on it
/// (kernel/ptrace.c: `if (addr != sizeof(sigset_t)) return -EINVAL`, the
/// kernel's 64-bit sigset_t), not glibc's 128-byte `sigset_t`.
const KERNEL_SIGSET_SIZE: usize = 8;

/// The tracee's blocked-signal mask.
pub fn get_sigmask(tid: Tid) -> Result<SigSet, PtraceError> {
    let mut bits: u64 = 0;
    // SAFETY: the kernel writes exactly KERNEL_SIGSET_SIZE bytes into `bits`.
    let ret = unsafe {
        raw(
            libc::PTRACE_GETSIGMASK,
            tid,
            KERNEL_SIGSET_SIZE as *mut c_void,
            (&mut bits as *mut u64).cast(),
        )
    };
    check("PTRACE_GETSIGMASK", tid, ret)?;
    Ok(SigSet::from_bits(bits))
}

/// Replaces the tracee's blocked-signal mask (the kernel drops SIGKILL and
/// SIGSTOP from it). It does not recalculate TIF_SIGPENDING: "Every thread
/// does recalc_sigpending() after resume" (kernel/ptrace.c) only ever sets the
/// flag, so a signal that was already pending keeps it set (see guard.rs).
pub fn set_sigmask(tid: Tid, mask: SigSet) -> Result<(), PtraceError> {
    let mut bits = mask.bits();
    // SAFETY: the kernel reads exactly KERNEL_SIGSET_SIZE bytes from `bits`.
    let ret = unsafe {
        raw(
            libc::PTRACE_SETSIGMASK,
            tid,
            KERNEL_SIGSET_SIZE as *mut c_void,
            (&mut bits as *mut u64).cast(),
        )
    };
    check("PTRACE_SETSIGMASK", tid, ret).map(drop)
}

/// PTRACE_GETEVENTMSG: the new tid at a clone/fork/vfork event, the former
/// tid at an exec event, the filter's data at a seccomp event.
pub fn event_msg(tid: Tid) -> Result<u64, PtraceError> {
    let mut msg: libc::c_ulong = 0;
    // SAFETY: the kernel writes one unsigned long into `msg`.
    let ret = unsafe {
        raw(
            libc::PTRACE_GETEVENTMSG,
            tid,
            std::ptr::null_mut(),
            (&mut msg as *mut libc::c_ulong).cast(),
        )
    };
    check("PTRACE_GETEVENTMSG", tid, ret)?;
    Ok(msg as u64)
}

/// The facts of a `siginfo_t` that say where a signal came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SigInfo {
    pub signo: i32,
    /// `si_code`: SI_USER (kill), SI_TKILL (tkill/tgkill), SI_TIMER (POSIX
    /// timer), SI_QUEUE (sigqueue), SI_KERNEL, or a positive signal-specific
    /// code (the kernel: faults, SIGCHLD's CLD_*, SIGIO's POLL_*).
    pub code: i32,
    /// `si_pid` for kill/tkill/sigqueue/SIGCHLD (the sender's process id);
    /// `si_timerid` for SI_TIMER. Same offset in the kernel's union.
    pub pid_or_timer: i32,
    /// `si_uid` for kill/tkill/sigqueue; `si_overrun` for SI_TIMER.
    pub uid_or_overrun: i32,
}

/// PTRACE_GETSIGINFO: the siginfo of the signal at a signal-delivery-stop.
pub fn get_siginfo(tid: Tid) -> Result<SigInfo, PtraceError> {
    // The kernel's siginfo is 128 bytes: signo, errno, code (ints), then on
    // 64-bit a union aligned to 8 at offset 16 whose first two ints are
    // {si_pid, si_uid} for kill-like signals and {si_tid, si_overrun} for timers.
    let mut buf = [0i32; 32];
    // SAFETY: the kernel writes one 128-byte siginfo into `buf`.
    let ret = unsafe {
        raw(
            libc::PTRACE_GETSIGINFO,
            tid,
            std::ptr::null_mut(),
            buf.as_mut_ptr().cast(),
        )
    };
    check("PTRACE_GETSIGINFO", tid, ret)?;
    Ok(SigInfo {
        signo: buf[0],
        code: buf[2],
        pid_or_timer: buf[4],
        uid_or_overrun: buf[5],
    })
}

/// What PTRACE_GET_SYSCALL_INFO (Linux 5.3) says about the current stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyscallInfo {
    /// Not a syscall stop.
    None,
    /// syscall-enter-stop.
    Entry { arch: u32, nr: u64, args: [u64; 6] },
    /// syscall-exit-stop; `rval` is the return value, `-errno` on error.
    Exit { rval: i64, is_error: bool },
    /// PTRACE_EVENT_SECCOMP stop; `ret_data` is SECCOMP_RET_DATA of the filter.
    Seccomp {
        arch: u32,
        nr: u64,
        args: [u64; 6],
        ret_data: u32,
    },
}

/// `struct ptrace_syscall_info` (include/uapi/linux/ptrace.h), our own copy:
/// the union is read by hand according to `op`.
#[repr(C)]
#[derive(Default)]
struct RawSyscallInfo {
    op: u8,
    pad: [u8; 3],
    arch: u32,
    instruction_pointer: u64,
    stack_pointer: u64,
    // entry: nr, args[6]; exit: rval (s64), is_error (u8); seccomp: nr, args[6], ret_data (u32).
    data: [u64; 8],
}

pub fn syscall_info(tid: Tid) -> Result<SyscallInfo, PtraceError> {
    let mut info = RawSyscallInfo::default();
    // SAFETY: addr is the size of our buffer; the kernel writes at most that many bytes.
    let ret = unsafe {
        raw(
            libc::PTRACE_GET_SYSCALL_INFO,
            tid,
            std::mem::size_of::<RawSyscallInfo>() as *mut c_void,
            (&mut info as *mut RawSyscallInfo).cast(),
        )
    };
    check("PTRACE_GET_SYSCALL_INFO", tid, ret)?;
    let d = &info.data;
    let args = [d[1], d[2], d[3], d[4], d[5], d[6]];
    Ok(match info.op {
        1 => SyscallInfo::Entry {
            arch: info.arch,
            nr: d[0],
            args,
        },
        // is_error is the low byte of the second word on little-endian, the
        // high byte on big-endian; any non-zero byte means true.
        2 => SyscallInfo::Exit {
            rval: d[0] as i64,
            is_error: d[1] != 0,
        },
        3 => SyscallInfo::Seccomp {
            arch: info.arch,
            nr: d[0],
            args,
            ret_data: d[7] as u32,
        },
        _ => SyscallInfo::None,
    })
}

/// The tracee's general registers (PTRACE_GETREGSET, NT_PRSTATUS).
pub fn get_regs(tid: Tid) -> Result<Regs, PtraceError> {
    let mut regs = Regs::zeroed();
    let mut iov = libc::iovec {
        iov_base: regs.as_mut_ptr(),
        iov_len: Regs::SIZE,
    };
    // SAFETY: the iovec describes our Regs buffer; the kernel writes at most iov_len bytes.
    let ret = unsafe {
        raw(
            libc::PTRACE_GETREGSET,
            tid,
            libc::NT_PRSTATUS as usize as *mut c_void,
            (&mut iov as *mut libc::iovec).cast(),
        )
    };
    check("PTRACE_GETREGSET", tid, ret)?;
    Ok(regs)
}

/// Writes the tracee's general registers back (PTRACE_SETREGSET, NT_PRSTATUS).
pub fn set_regs(tid: Tid, regs: &Regs) -> Result<(), PtraceError> {
    let mut copy = *regs;
    let mut iov = libc::iovec {
        iov_base: copy.as_mut_ptr(),
        iov_len: Regs::SIZE,
    };
    // SAFETY: the iovec describes a Regs buffer the kernel only reads.
    let ret = unsafe {
        raw(
            libc::PTRACE_SETREGSET,
            tid,
            libc::NT_PRSTATUS as usize as *mut c_void,
            (&mut iov as *mut libc::iovec).cast(),
        )
    };
    check("PTRACE_SETREGSET", tid, ret).map(drop)
}

/// A waitpid(2) status word; only [`crate::stop`] looks inside.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WaitStatus(pub(crate) libc::c_int);

/// Waits for any child or tracee, threads included (`__WALL`). `Ok(None)`
/// when there is nothing left to wait for (ECHILD).
pub fn wait_any() -> io::Result<Option<(Tid, WaitStatus)>> {
    wait_impl(-1, libc::__WALL)
}

/// Like [`wait_any`] but returns `Ok(None)` at once when nothing is ready.
pub fn try_wait_any() -> io::Result<Option<(Tid, WaitStatus)>> {
    wait_impl(-1, libc::__WALL | libc::WNOHANG)
}

/// Like [`wait_any`], but `Ok(None)` also when a signal interrupted the wait
/// (so the caller can look at a stop flag).
pub fn wait_any_interruptible() -> io::Result<Option<(Tid, WaitStatus)>> {
    let mut status: libc::c_int = 0;
    // SAFETY: waitpid writes one int into `status`.
    let tid = unsafe { libc::waitpid(-1, &mut status, libc::__WALL) };
    if tid > 0 {
        return Ok(Some((tid, WaitStatus(status))));
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EINTR) => Ok(None),
        _ => Err(err),
    }
}

/// What [`Reaper::wait`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reaped {
    Report(Tid, WaitStatus),
    /// A signal interrupted the wait (look at your stop flag).
    Interrupted,
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
/// at all: they sit in their stops for as long as it keeps going. With 30
/// busy threads `spinguard attach` never finished seizing (the interrupt
/// stops of most threads were never reported), and took no notice of SIGTERM.
///
/// The reaper takes every report that is ready at once (`WNOHANG` until
/// none is left) and hands them out in that order before it waits again.
/// A tracee stays stopped until the tracer resumes it, so it is in a batch at
/// most once: every tracee that was ready is served before any is served
/// twice, and a batch is never longer than the number of tracees (plus their
/// exits). Reports already taken from the kernel but not yet handed out are
/// stops like any other: whoever owns the reaper must handle them (detach
/// included) before believing a task is running.
#[derive(Debug, Default)]
pub struct Reaper {
    batch: std::collections::VecDeque<(Tid, WaitStatus)>,
}

impl Reaper {
    pub fn new() -> Reaper {
        Reaper::default()
    }

    /// Reports taken from the kernel and not handed out yet.
    pub fn queued(&self) -> usize {
        self.batch.len()
    }

    /// The next report, waiting for one if none is queued or ready. A signal
    /// (handler without SA_RESTART) ends the wait with `Interrupted`.
    pub fn wait(&mut self) -> io::Result<Reaped> {
        if let Some((tid, status)) = self.batch.pop_front() {
            return Ok(Reaped::Report(tid, status));
        }
        let mut status: libc::c_int = 0;
        // SAFETY: waitpid writes one int into `status`.
        let tid = unsafe { libc::waitpid(-1, &mut status, libc::__WALL) };
        if tid > 0 {
            self.fill()?;
            return Ok(Reaped::Report(tid, WaitStatus(status)));
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => Ok(Reaped::Interrupted),
            Some(libc::ECHILD) => Ok(Reaped::NothingLeft),
            _ => Err(err),
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
        while let Some(report) = try_wait_any()? {
            self.batch.push_back(report);
        }
        Ok(())
    }
}

/// Waits for one particular task (`__WALL`).
pub fn wait_tid(tid: Tid) -> io::Result<Option<(Tid, WaitStatus)>> {
    wait_impl(tid, libc::__WALL)
}

fn wait_impl(which: Tid, flags: libc::c_int) -> io::Result<Option<(Tid, WaitStatus)>> {
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: waitpid writes one int into `status`.
        let tid = unsafe { libc::waitpid(which, &mut status, flags) };
        if tid > 0 {
            return Ok(Some((tid, WaitStatus(status))));
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
