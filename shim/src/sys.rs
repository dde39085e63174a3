//! The shim's raw calls, behind safe wrappers. Each is one syscall through
//! libc's `syscall` (see [`crate::real`]), or a libc function that is plain
//! code (`getauxval`, the vDSO clock): allocation-free, lock-free and
//! async-signal-safe, so a signal handler, a vfork child or the pass-through
//! itself may call any of them.

use libc::c_long;

use crate::real::{self, RealSyscall};

/// The kernel's `sizeof(sigset_t)` on x86_64 and aarch64 (`_NSIG / 8`); the
/// syscall rejects any other size with EINVAL.
const KERNEL_SIGSET_SIZE: c_long = 8;

/// One raw syscall through libc's `syscall`; -1 with errno set on failure, or
/// ENOSYS when libc's symbol cannot be found at all.
///
/// # Safety
/// The arguments must be valid for syscall `n` (live pointers of the right size).
unsafe fn raw(n: c_long, a: [c_long; 6]) -> c_long {
    match real::get() {
        Some(real) => real(n, a[0], a[1], a[2], a[3], a[4], a[5]),
        None => {
            set_errno(libc::ENOSYS);
            -1
        }
    }
}

pub(crate) fn errno() -> i32 {
    // SAFETY: the calling thread's errno, always valid.
    unsafe { *libc::__errno_location() }
}

pub(crate) fn set_errno(e: i32) {
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = e }
}

/// All of `bytes` to fd 2 if it takes them: one write(2) (a short or failed
/// write is dropped, there is nowhere to report it). One line in one write
/// is never interleaved with another process's output.
pub(crate) fn write_stderr(bytes: &[u8]) {
    let e = errno();
    // SAFETY: write(2) reads `bytes`, a live slice.
    unsafe {
        raw(
            libc::SYS_write,
            [2, bytes.as_ptr() as c_long, bytes.len() as c_long, 0, 0, 0],
        )
    };
    set_errno(e);
}

/// CLOCK_MONOTONIC in nanoseconds (vDSO, async-signal-safe).
pub(crate) fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes into a local timespec; CLOCK_MONOTONIC cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64)
}

pub(crate) fn getpid() -> i32 {
    // SAFETY: no arguments.
    unsafe { raw(libc::SYS_getpid, [0; 6]) as i32 }
}

/// Whether this is a secure-execution process (setuid, setgid, file
/// capabilities): `getauxval(AT_SECURE)`, which is what glibc itself trusts.
pub(crate) fn secure() -> bool {
    // SAFETY: getauxval has no preconditions; 0 also means "not present".
    unsafe { libc::getauxval(libc::AT_SECURE) != 0 }
}

/// `rt_sigprocmask(how, set)` on the calling thread, through `real` (the
/// guarded path already holds it); the old mask, or None if the kernel
/// refused (it cannot for valid arguments), in which case nothing changed.
pub(crate) fn sigprocmask(real: RealSyscall, how: i32, set: u64) -> Option<u64> {
    let mut old = 0u64;
    // SAFETY: rt_sigprocmask(2) reads 8 bytes from `set` and writes 8 to
    // `old`, both live locals; it affects only the calling thread.
    let r = unsafe {
        real(
            libc::SYS_rt_sigprocmask,
            how as c_long,
            &set as *const u64 as c_long,
            &mut old as *mut u64 as c_long,
            KERNEL_SIGSET_SIZE,
            0,
            0,
        )
    };
    (r == 0).then_some(old)
}
