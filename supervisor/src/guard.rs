//! The guard policy: which calls to guard, with which signals, and when to
//! run a call again rather than let the program see its failure.
//!
//! The mechanism (tracer.rs) at a guarded call: save the thread's mask, block
//! `mask | guard`, let the syscall run to its exit stop, and restore the saved
//! mask. Blocking is a complete fix because the verifier's bail-out tests
//! `signal_pending(current)` (kernel/bpf/verifier.c, `do_check()`), and a
//! blocked signal does not make a task's signal pending.
//!
//! Why a restart is still sometimes needed: PTRACE_SETSIGMASK does not clear
//! TIF_SIGPENDING. A guard signal that arrived before the mask changed (while
//! the thread sat in the seccomp stop waiting for us, say) leaves the flag set,
//! so the verifier sees a pending signal once and returns EAGAIN. The return to
//! user space then runs `get_signal()`, finds nothing deliverable, and clears
//! the flag, so the same call made again, with the mask still held, succeeds.
//! A non-guard signal (SIGURG, SIGCHLD...) does the same until it is delivered.

use spinguard_common::{bpf, SigSet};

/// What to do at the syscall-exit stop of a guarded call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitVerdict {
    /// The call is done: restore the mask, let the program see the result.
    Finish,
    /// Run the call again with the mask still held.
    Restart,
    /// The call failed the way a signal makes it fail, but it has been
    /// restarted `max_restarts` times already: give the program the failure.
    GiveUp,
}

#[derive(Clone, Debug)]
pub struct GuardPolicy {
    /// Signals blocked for the duration of a guarded call.
    pub signals: SigSet,
    /// bpf commands that are guarded (`bpf::GUARDED_COMMANDS` by default).
    pub commands: Vec<u32>,
    /// Restarts of one call before its EAGAIN/EINTR is passed through.
    pub max_restarts: u32,
}

impl Default for GuardPolicy {
    fn default() -> Self {
        GuardPolicy {
            signals: SigSet::DEFAULT_GUARD,
            commands: bpf::GUARDED_COMMANDS.to_vec(),
            max_restarts: 16,
        }
    }
}

impl GuardPolicy {
    pub fn with_signals(signals: SigSet) -> GuardPolicy {
        GuardPolicy {
            signals,
            ..GuardPolicy::default()
        }
    }

    /// The bpf command when `nr(args)` is a call this policy guards.
    pub fn guarded_command(&self, arch: u32, nr: u64, args: &[u64; 6]) -> Option<u32> {
        if arch != crate::arch::AUDIT_ARCH || nr != crate::arch::NR_BPF {
            return None;
        }
        let cmd = args[0] as u32; // `int cmd`: the upper half is junk
        self.commands.contains(&cmd).then_some(cmd)
    }

    /// The mask to hold during the call.
    pub fn held_mask(&self, saved: SigSet) -> SigSet {
        saved.union(self.signals)
    }

    /// Whether the return value looks like a signal cut the call short
    /// (EAGAIN from the verifier, EINTR from BPF_PROG_TEST_RUN).
    pub fn is_signal_failure(rval: i64) -> bool {
        bpf::is_signal_failure_ret(rval)
    }

    pub fn at_exit(&self, rval: i64, restarts_so_far: u32) -> ExitVerdict {
        if !Self::is_signal_failure(rval) {
            ExitVerdict::Finish
        } else if restarts_so_far < self.max_restarts {
            ExitVerdict::Restart
        } else {
            ExitVerdict::GiveUp
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::{AUDIT_ARCH, NR_BPF};

    #[test]
    fn guards_prog_load_not_map_lookup() {
        let p = GuardPolicy::default();
        let a = |cmd| [cmd, 0, 0, 0, 0, 0];
        assert_eq!(p.guarded_command(AUDIT_ARCH, NR_BPF, &a(5)), Some(5));
        assert_eq!(p.guarded_command(AUDIT_ARCH, NR_BPF, &a(10)), Some(10));
        assert_eq!(p.guarded_command(AUDIT_ARCH, NR_BPF, &a(1)), None);
        assert_eq!(p.guarded_command(AUDIT_ARCH, 39, &a(5)), None);
        assert_eq!(p.guarded_command(0x4000_0003, NR_BPF, &a(5)), None);
    }

    #[test]
    fn restarts_are_bounded() {
        let p = GuardPolicy::default();
        let eagain = -(libc::EAGAIN as i64);
        assert_eq!(p.at_exit(3, 0), ExitVerdict::Finish);
        assert_eq!(p.at_exit(-(libc::EINVAL as i64), 0), ExitVerdict::Finish);
        assert_eq!(p.at_exit(eagain, 0), ExitVerdict::Restart);
        assert_eq!(p.at_exit(eagain, 15), ExitVerdict::Restart);
        assert_eq!(p.at_exit(eagain, 16), ExitVerdict::GiveUp);
        let mut m = SigSet::EMPTY;
        m.insert(libc::SIGUSR1);
        assert_eq!(p.held_mask(m).len(), 4);
    }
}
