//! Blocking the guard set around one call, and restoring the exact old mask.
//!
//! The only place the shim changes a signal mask. It calls the kernel's
//! `rt_sigprocmask` directly (through libc's `syscall`) rather than
//! `pthread_sigmask`: glibc's wrapper silently drops its internal signals 32 and
//! 33 from any set it is given, so `pthread_sigmask(SIG_SETMASK, &old)` would
//! unblock them if the thread had them blocked. The kernel call restores the
//! mask bit for bit, and takes the kernel's 8-byte set, which is what
//! [`SigSet`] already is.

use libc::c_long;
use spinguard_common::SigSet;

/// The kernel's `sizeof(sigset_t)` on x86_64 and aarch64 (`_NSIG / 8`); the
/// syscall rejects any other size with EINVAL.
const KERNEL_SIGSET_SIZE: c_long = 8;

use crate::hook::RealSyscall;

/// The thread's mask from before [`block`]. Not `Clone`: it is restored once.
#[must_use = "the old mask must be restored"]
pub(crate) struct SavedMask(u64);

/// Adds `set` to the calling thread's blocked signals (SIG_BLOCK), returning the
/// old mask; `None` if the kernel refused (it cannot for valid arguments), in
/// which case nothing changed and there is nothing to restore.
pub(crate) fn block(real: RealSyscall, set: SigSet) -> Option<SavedMask> {
    let new = set.bits();
    let mut old = 0u64;
    // SAFETY: rt_sigprocmask(2) reads 8 bytes from `new` and writes 8 to `old`,
    // both live locals; it affects only the calling thread.
    let r = unsafe {
        real(
            libc::SYS_rt_sigprocmask,
            libc::SIG_BLOCK as c_long,
            &new as *const u64 as c_long,
            &mut old as *mut u64 as c_long,
            KERNEL_SIGSET_SIZE,
            0,
            0,
        )
    };
    (r == 0).then_some(SavedMask(old))
}

impl SavedMask {
    /// The thread's own mask, in the kernel's layout.
    pub(crate) fn bits(&self) -> u64 {
        self.0
    }

    /// Sets the mask back to exactly what it was (SIG_SETMASK, never
    /// SIG_UNBLOCK: a guard signal the caller had blocked stays blocked). A guard
    /// signal that arrived meanwhile is delivered as this call returns to user
    /// space, before `syscall()` returns to its caller.
    pub(crate) fn restore(self, real: RealSyscall) {
        // SAFETY: as in `block`; `old` may be null per rt_sigprocmask(2).
        unsafe {
            real(
                libc::SYS_rt_sigprocmask,
                libc::SIG_SETMASK as c_long,
                &self.0 as *const u64 as c_long,
                0 as c_long,
                KERNEL_SIGSET_SIZE,
                0,
                0,
            );
        }
    }
}
