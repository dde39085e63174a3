//! What one guarded call did: the fact the hook produces and the counters and
//! events consume.

use libc::c_long;
use spinguard_common::bpf;
use spinguard_common::SigSet;

#[derive(Clone, Copy, Debug)]
pub(crate) struct GuardedCall {
    pub cmd: u32,
    /// The kernel's return value (-1 on failure, as libc reports it).
    pub ret: c_long,
    /// errno when `ret == -1`, else 0.
    pub errno: i32,
    /// Monotonic nanoseconds from before the mask change to after the restore.
    pub ns: u64,
    /// Guard signals pending when the guard came down that the thread had not
    /// blocked itself: what this call held back. Only looked at (one
    /// sigpending(2)) when events are on; empty otherwise.
    pub held_back: SigSet,
}

impl GuardedCall {
    /// Whether a signal cut the call short (each one is a retry the loader
    /// must make).
    pub fn interrupted(&self) -> bool {
        self.ret == -1 && bpf::is_signal_failure(self.errno)
    }
}
