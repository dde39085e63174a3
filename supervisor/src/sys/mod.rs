//! The unsafe edge of the supervisor: every raw ptrace(2), waitpid(2),
//! signal, seccomp, fork and /proc access, behind typed, safe wrappers.
//! Nothing above this module calls `libc` with a pointer or sees a raw status
//! word or register file.
//!
//! | file | what |
//! | --- | --- |
//! | [`ptrace`] | one raw request helper and the typed requests; `ESRCH` becomes [`ptrace::PtraceError::Gone`] here and nowhere else |
//! | [`wait`] | waitpid for this thread's tracees and children, the fair [`wait::Reaper`] |
//! | [`arch`] | registers, syscall ABIs (x86_64, i386, x32; aarch64), rewinding a syscall |
//! | [`signal`] | thread masks, signalfd, sending signals (pidfd or kill) |
//! | [`procfs`] | what /proc says about a task |
//! | [`seccomp`] | the classic-BPF filter, no_new_privs, capabilities |
//! | [`process`] | fork for the traced child and for the waker (nothing allocated after fork) |
//! | [`fallback`] | what this kernel lacks, and `SPINGUARD_FORCE_FALLBACK` |

pub mod arch;
pub mod fallback;
pub mod process;
pub mod procfs;
pub mod ptrace;
pub mod seccomp;
pub mod signal;
pub mod wait;

/// A kernel task id (thread id; the leader's tid is the process id).
pub type Tid = libc::pid_t;

/// Our effective user id.
pub fn geteuid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

/// Our process id.
pub fn getpid() -> Tid {
    // SAFETY: getpid cannot fail.
    unsafe { libc::getpid() }
}

/// Whether `tid` is in our process group (job control decisions).
pub fn in_our_process_group(tid: Tid) -> bool {
    // SAFETY: no pointers.
    unsafe { libc::getpgid(tid) == libc::getpgrp() }
}

/// Whether we are the foreground job of a terminal on stdin: the only case
/// where stopping ourselves when the child stops gives the shell its prompt
/// back (and someone will continue us).
pub fn in_foreground_of_terminal() -> bool {
    // SAFETY: no pointers.
    unsafe { libc::isatty(0) == 1 && libc::tcgetpgrp(0) == libc::getpgrp() }
}
