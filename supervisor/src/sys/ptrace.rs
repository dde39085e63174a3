//! The only ptrace(2) calls: one raw request helper and a typed function per
//! request. `ESRCH` is mapped to [`PtraceError::Gone`] here and only here:
//! ptrace(2), "ESRCH: The specified process does not exist, or is not
//! currently being traced by the caller, or is not stopped". For a tracee we
//! saw stop, that means it was killed (SIGKILL, a sibling's exit_group or
//! execve) in the meantime; its exit will be reported by waitpid.
//!
//! ptrace requests are accepted only from the thread that attached
//! ("tracee->parent == current", `ptrace_check_attach()`): the safe API above
//! this module ([`crate::tracee::Stopped`]) makes that a compile-time fact.

use super::arch::{Abi, Regs};
use super::fallback::{self, Feature};
use super::Tid;
use libc::{c_long, c_void};
use spinguard_common::SigSet;
use std::io;

#[derive(Debug, thiserror::Error)]
pub enum PtraceError {
    /// The thread no longer exists or is no longer stopped for us.
    #[error("{op} on thread {tid}: the thread is gone")]
    Gone { op: &'static str, tid: Tid },
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

    pub fn errno(&self) -> Option<i32> {
        match self {
            PtraceError::Gone { .. } => Some(libc::ESRCH),
            PtraceError::Failed { source, .. } => source.raw_os_error(),
        }
    }
}

/// A request number and its name (for errors).
#[derive(Clone, Copy)]
struct Req(libc::c_uint, &'static str);

const SEIZE: Req = Req(libc::PTRACE_SEIZE, "PTRACE_SEIZE");
const INTERRUPT: Req = Req(libc::PTRACE_INTERRUPT, "PTRACE_INTERRUPT");
const CONT: Req = Req(libc::PTRACE_CONT, "PTRACE_CONT");
const SYSCALL: Req = Req(libc::PTRACE_SYSCALL, "PTRACE_SYSCALL");
const LISTEN: Req = Req(libc::PTRACE_LISTEN, "PTRACE_LISTEN");
const DETACH: Req = Req(libc::PTRACE_DETACH, "PTRACE_DETACH");
const GETSIGMASK: Req = Req(libc::PTRACE_GETSIGMASK, "PTRACE_GETSIGMASK");
const SETSIGMASK: Req = Req(libc::PTRACE_SETSIGMASK, "PTRACE_SETSIGMASK");
const GETEVENTMSG: Req = Req(libc::PTRACE_GETEVENTMSG, "PTRACE_GETEVENTMSG");
const GETSIGINFO: Req = Req(libc::PTRACE_GETSIGINFO, "PTRACE_GETSIGINFO");
const GET_SYSCALL_INFO: Req = Req(libc::PTRACE_GET_SYSCALL_INFO, "PTRACE_GET_SYSCALL_INFO");
#[cfg(target_arch = "x86_64")]
const GETREGS: Req = Req(libc::PTRACE_GETREGS, "PTRACE_GETREGS");
#[cfg(target_arch = "x86_64")]
const SETREGS: Req = Req(libc::PTRACE_SETREGS, "PTRACE_SETREGS");
#[cfg(target_arch = "aarch64")]
const GETREGSET: Req = Req(libc::PTRACE_GETREGSET, "PTRACE_GETREGSET");
#[cfg(target_arch = "aarch64")]
const SETREGSET: Req = Req(libc::PTRACE_SETREGSET, "PTRACE_SETREGSET");
const PEEKTEXT: Req = Req(libc::PTRACE_PEEKTEXT, "PTRACE_PEEKTEXT");

/// The one raw call.
///
/// # Safety
/// `addr` and `data` must be what `req` expects: a pointer the kernel may
/// read or write for the size the request implies, or a plain integer.
unsafe fn request(
    req: Req,
    tid: Tid,
    addr: *mut c_void,
    data: *mut c_void,
) -> Result<c_long, PtraceError> {
    // PTRACE_PEEK* return the word read, so -1 can be data: clear errno first.
    *libc::__errno_location() = 0;
    let ret = libc::ptrace(req.0, tid, addr, data);
    if ret != -1 {
        return Ok(ret);
    }
    let source = io::Error::last_os_error();
    match source.raw_os_error() {
        Some(0) => Ok(ret),
        Some(libc::ESRCH) => Err(PtraceError::Gone { op: req.1, tid }),
        _ => Err(PtraceError::Failed {
            op: req.1,
            tid,
            source,
        }),
    }
}

/// A request whose `addr` and `data` are plain integers.
fn plain(req: Req, tid: Tid, addr: usize, data: usize) -> Result<c_long, PtraceError> {
    // SAFETY: no pointers: the requests passed here take integers only.
    unsafe { request(req, tid, addr as *mut c_void, data as *mut c_void) }
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

    pub const fn union(self, other: Options) -> Options {
        Options(self.0 | other.0)
    }

    pub const fn difference(self, other: Options) -> Options {
        Options(self.0 & !other.0)
    }
}

/// PTRACE_SEIZE: attach without stopping the tracee. Unlike PTRACE_ATTACH and
/// PTRACE_TRACEME, a seized tracee reports group-stops as PTRACE_EVENT_STOP and
/// can be PTRACE_LISTENed, which is what makes job control work under us.
pub fn seize(tid: Tid, options: Options) -> Result<(), PtraceError> {
    plain(SEIZE, tid, 0, options.0 as usize).map(drop)
}

/// PTRACE_INTERRUPT: stop a seized tracee (it reports PTRACE_EVENT_STOP).
pub fn interrupt(tid: Tid) -> Result<(), PtraceError> {
    plain(INTERRUPT, tid, 0, 0).map(drop)
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
pub(crate) fn resume(tid: Tid, how: Resume, signal: i32) -> Result<(), PtraceError> {
    let req = match how {
        Resume::Cont => CONT,
        Resume::Syscall => SYSCALL,
    };
    plain(req, tid, 0, signal as usize).map(drop)
}

/// PTRACE_LISTEN: leave a group-stopped tracee stopped, but let the kernel
/// wake it (and report PTRACE_EVENT_STOP) when SIGCONT or SIGKILL comes. Only
/// valid at a group-stop of a PTRACE_SEIZEd tracee.
pub(crate) fn listen(tid: Tid) -> Result<(), PtraceError> {
    plain(LISTEN, tid, 0, 0).map(drop)
}

/// PTRACE_DETACH, delivering `signal` (0 for none).
pub(crate) fn detach(tid: Tid, signal: i32) -> Result<(), PtraceError> {
    plain(DETACH, tid, 0, signal as usize).map(drop)
}

/// The kernel's sigset size. PTRACE_GETSIGMASK/SETSIGMASK insist on it
/// (kernel/ptrace.c: `if (addr != sizeof(sigset_t)) return -EINVAL`, the
/// kernel's 64-bit sigset_t), not glibc's 128-byte `sigset_t`.
const KERNEL_SIGSET_SIZE: usize = 8;

/// The tracee's blocked-signal mask.
pub(crate) fn get_sigmask(tid: Tid) -> Result<SigSet, PtraceError> {
    let mut bits: u64 = 0;
    // SAFETY: the kernel writes exactly KERNEL_SIGSET_SIZE bytes into `bits`.
    unsafe {
        request(
            GETSIGMASK,
            tid,
            KERNEL_SIGSET_SIZE as *mut c_void,
            (&mut bits as *mut u64).cast(),
        )
    }?;
    Ok(SigSet::from_bits(bits))
}

/// Replaces the tracee's blocked-signal mask (the kernel drops SIGKILL and
/// SIGSTOP from it). It does not recalculate TIF_SIGPENDING: "Every thread
/// does recalc_sigpending() after resume" (kernel/ptrace.c) only ever sets the
/// flag, so a signal that was already pending keeps it set.
pub(crate) fn set_sigmask(tid: Tid, mask: SigSet) -> Result<(), PtraceError> {
    let mut bits = mask.bits();
    // SAFETY: the kernel reads exactly KERNEL_SIGSET_SIZE bytes from `bits`.
    unsafe {
        request(
            SETSIGMASK,
            tid,
            KERNEL_SIGSET_SIZE as *mut c_void,
            (&mut bits as *mut u64).cast(),
        )
    }
    .map(drop)
}

/// PTRACE_GETEVENTMSG: the new tid at a clone/fork/vfork event, the former
/// tid at an exec event, SECCOMP_RET_DATA at a seccomp event.
pub(crate) fn event_msg(tid: Tid) -> Result<u64, PtraceError> {
    let mut msg: libc::c_ulong = 0;
    // SAFETY: the kernel writes one unsigned long into `msg`.
    unsafe {
        request(
            GETEVENTMSG,
            tid,
            std::ptr::null_mut(),
            (&mut msg as *mut libc::c_ulong).cast(),
        )
    }?;
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
    /// the timer id for SI_TIMER (same place in the kernel's union).
    pub pid: i32,
}

/// PTRACE_GETSIGINFO: the siginfo of the signal at a signal-delivery-stop.
pub(crate) fn get_siginfo(tid: Tid) -> Result<SigInfo, PtraceError> {
    // SAFETY: all-zero is a valid siginfo_t.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: the kernel writes one siginfo_t into `info`.
    unsafe {
        request(
            GETSIGINFO,
            tid,
            std::ptr::null_mut(),
            (&mut info as *mut libc::siginfo_t).cast(),
        )
    }?;
    Ok(SigInfo {
        signo: info.si_signo,
        code: info.si_code,
        // SAFETY: the union is initialised (zeroed, then written by the kernel).
        pid: unsafe { info.si_pid() },
    })
}

/// A syscall as PTRACE_GET_SYSCALL_INFO (or the registers) show it at an
/// entry or seccomp stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawCall {
    /// None: an architecture we do not know (not ours to judge).
    pub abi: Option<Abi>,
    pub nr: u64,
    pub args: [u64; 6],
    /// Just past the syscall instruction.
    pub ip: u64,
    pub sp: u64,
}

/// What PTRACE_GET_SYSCALL_INFO (Linux 5.3) says about the current stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyscallInfo {
    /// Not a syscall stop.
    None,
    Entry(RawCall),
    /// `ret` is the return value, `-errno` on error.
    Exit {
        ret: i64,
    },
    /// PTRACE_EVENT_SECCOMP stop; `ret_data` is SECCOMP_RET_DATA of the filter.
    Seccomp {
        call: RawCall,
        ret_data: u32,
    },
}

/// PTRACE_GET_SYSCALL_INFO; `Ok(None)` when this kernel has no such request
/// (before 5.3 it answers EIO) or the fallback is forced.
pub(crate) fn syscall_info(tid: Tid) -> Result<Option<SyscallInfo>, PtraceError> {
    if !fallback::available(Feature::SyscallInfo) {
        return Ok(None);
    }
    // SAFETY: all-zero is a valid ptrace_syscall_info.
    let mut info: libc::ptrace_syscall_info = unsafe { std::mem::zeroed() };
    // SAFETY: addr is the size of our buffer; the kernel writes at most that many bytes.
    let got = unsafe {
        request(
            GET_SYSCALL_INFO,
            tid,
            std::mem::size_of::<libc::ptrace_syscall_info>() as *mut c_void,
            (&mut info as *mut libc::ptrace_syscall_info).cast(),
        )
    };
    match got {
        Ok(_) => {}
        Err(e) if e.errno() == Some(libc::EIO) => {
            fallback::mark_missing(Feature::SyscallInfo);
            return Ok(None);
        }
        Err(e) => return Err(e),
    }
    let call = |nr: u64, args: [u64; 6]| RawCall {
        abi: Abi::from_audit(info.arch, nr),
        nr,
        args,
        ip: info.instruction_pointer,
        sp: info.stack_pointer,
    };
    // SAFETY: `op` says which member of the union the kernel filled in.
    Ok(Some(unsafe {
        match info.op {
            libc::PTRACE_SYSCALL_INFO_ENTRY => {
                SyscallInfo::Entry(call(info.u.entry.nr, info.u.entry.args))
            }
            libc::PTRACE_SYSCALL_INFO_EXIT => SyscallInfo::Exit {
                ret: info.u.exit.sval,
            },
            libc::PTRACE_SYSCALL_INFO_SECCOMP => SyscallInfo::Seccomp {
                call: call(info.u.seccomp.nr, info.u.seccomp.args),
                ret_data: info.u.seccomp.ret_data,
            },
            _ => SyscallInfo::None,
        }
    }))
}

/// The tracee's general registers, always in our own (64-bit) layout.
///
/// x86_64: PTRACE_GETREGS. PTRACE_GETREGSET would answer in the tracee's
/// view ("task_user_regset_view(child)"): for a 32-bit program, the i386
/// register file, 68 bytes in another order. PTRACE_GETREGS copies in the
/// tracer's view ("task_user_regset_view(current)", arch/x86/kernel/ptrace.c),
/// where an i386 task's eax is rax and its syscall number orig_rax.
/// aarch64 has only the regset (NT_PRSTATUS).
pub(crate) fn get_regs(tid: Tid) -> Result<Regs, PtraceError> {
    let mut regs = Regs::zeroed();
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the kernel writes one user_regs_struct into `regs`.
    unsafe {
        request(
            GETREGS,
            tid,
            std::ptr::null_mut(),
            (&mut regs.0 as *mut libc::user_regs_struct).cast(),
        )
    }?;
    #[cfg(target_arch = "aarch64")]
    {
        let mut iov = libc::iovec {
            iov_base: (&mut regs.0 as *mut libc::user_regs_struct).cast(),
            iov_len: Regs::SIZE,
        };
        // SAFETY: the iovec describes our Regs buffer; the kernel writes at most iov_len bytes.
        unsafe {
            request(
                GETREGSET,
                tid,
                libc::NT_PRSTATUS as usize as *mut c_void,
                (&mut iov as *mut libc::iovec).cast(),
            )
        }?;
    }
    Ok(regs)
}

/// Writes the tracee's general registers back, in the layout of [`get_regs`].
pub(crate) fn set_regs(tid: Tid, regs: &Regs) -> Result<(), PtraceError> {
    let mut copy = *regs;
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the kernel reads one user_regs_struct from `copy`.
    unsafe {
        request(
            SETREGS,
            tid,
            std::ptr::null_mut(),
            (&mut copy.0 as *mut libc::user_regs_struct).cast(),
        )
    }?;
    #[cfg(target_arch = "aarch64")]
    {
        let mut iov = libc::iovec {
            iov_base: (&mut copy.0 as *mut libc::user_regs_struct).cast(),
            iov_len: Regs::SIZE,
        };
        // SAFETY: the iovec describes a Regs buffer the kernel only reads.
        unsafe {
            request(
                SETREGSET,
                tid,
                libc::NT_PRSTATUS as usize as *mut c_void,
                (&mut iov as *mut libc::iovec).cast(),
            )
        }?;
    }
    Ok(())
}

/// One word of the tracee's memory (PTRACE_PEEKTEXT).
pub(crate) fn peek(tid: Tid, addr: u64) -> Result<u64, PtraceError> {
    plain(PEEKTEXT, tid, addr as usize, 0).map(|w| w as u64)
}

/// The two bytes right before `ip` (the syscall instruction, at a stop after
/// one), if readable.
pub(crate) fn insn_before(tid: Tid, ip: u64) -> Option<[u8; 2]> {
    let at = ip.checked_sub(2)?;
    // The word at ip-2 may cross into an unmapped page (the syscall was the
    // last instruction of its mapping); the one ending at ip cannot.
    if let Ok(w) = peek(tid, at) {
        let b = w.to_ne_bytes();
        return Some([b[0], b[1]]);
    }
    let w = peek(tid, ip.checked_sub(8)?).ok()?;
    let b = w.to_ne_bytes();
    Some([b[6], b[7]])
}
