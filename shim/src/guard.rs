//! Blocking the guard set around one call, and restoring the exact old mask.
//!
//! The only place the shim changes a signal mask. It calls the kernel's
//! `rt_sigprocmask` directly (through libc's `syscall`) rather than
//! `pthread_sigmask`: glibc's wrapper silently drops its internal signals 32 and
//! 33 from any set it is given, so `pthread_sigmask(SIG_SETMASK, &old)` would
//! unblock them if the thread had them blocked. The kernel call restores the
//! mask bit for bit, and takes the kernel's 8-byte set, which is what
//! [`SigSet`] already is.

use spinguard_common::SigSet;

use crate::real::RealSyscall;
use crate::sys;

/// The thread's mask from before [`block`]. Not `Clone`: it is restored once.
#[must_use = "the old mask must be restored"]
pub(crate) struct SavedMask(u64);

/// Adds `set` to the calling thread's blocked signals (SIG_BLOCK), returning the
/// old mask; `None` if the kernel refused (it cannot for valid arguments), in
/// which case nothing changed and there is nothing to restore.
pub(crate) fn block(real: RealSyscall, set: SigSet) -> Option<SavedMask> {
    sys::sigprocmask(real, libc::SIG_BLOCK, set.bits()).map(SavedMask)
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
        let _ = sys::sigprocmask(real, libc::SIG_SETMASK, self.0);
    }
}
