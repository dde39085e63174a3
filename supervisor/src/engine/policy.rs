//! The guard policy: which calls are guarded, which signals are held back,
//! and when to run a call again rather than let the program see its failure.
//!
//! Blocking is a complete fix because the verifier's bail-out tests
//! `signal_pending(current)` (kernel/bpf/verifier.c, `do_check()`), and a
//! blocked signal does not make a task's signal pending.
//!
//! What is held during a call: the thread's own mask, the guard set, and
//! every signal the process ignores. Under ptrace the kernel queues even
//! ignored signals ("Tracers may want to know about even ignored signal",
//! `sig_ignored()` in kernel/signal.c), so a SIGCHLD from an exiting child or
//! a SIG_IGN'd SIGUSR1 interrupts a traced verifier that it never interrupts
//! untraced. Held back, they are discarded at delivery as they would have
//! been at generation: nothing the program can see changes.

use crate::sys::arch::Abi;
use crate::sys::procfs;
use crate::sys::Tid;
use crate::tracee::Call;
use spinguard_common::{bpf, SigSet};

/// What to do at the syscall-exit stop of a guarded call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitVerdict {
    /// The call is done: restore the mask, let the program see the result.
    Finish,
    /// Run the call again.
    Restart,
    /// The call failed the way a signal makes it fail, but it has been
    /// restarted `max_restarts` times already: give the program the failure.
    GiveUp,
}

#[derive(Clone, Debug)]
pub struct GuardPolicy {
    /// Signals blocked for the duration of a guarded call.
    pub signals: SigSet,
    /// Restarts of one call before its EAGAIN/EINTR is passed through.
    pub max_restarts: u32,
}

impl Default for GuardPolicy {
    fn default() -> Self {
        GuardPolicy {
            signals: SigSet::DEFAULT_GUARD,
            max_restarts: 16,
        }
    }
}

/// Signals whose default action is to do nothing (signal(7): "Ign").
fn default_ignored() -> SigSet {
    let mut s = SigSet::EMPTY;
    for sig in [libc::SIGCHLD, libc::SIGURG, libc::SIGWINCH, libc::SIGCONT] {
        s.insert(sig);
    }
    s
}

/// The signals process `pid` ignores right now: SIG_IGN, and SIG_DFL where
/// the default is to ignore. Empty when /proc cannot say.
pub fn ignored_by(pid: Tid) -> SigSet {
    let Some(s) = procfs::status(pid) else {
        return SigSet::EMPTY;
    };
    let dfl_ignored = default_ignored().difference(s.caught).difference(s.ignored);
    s.ignored.union(dfl_ignored)
}

impl GuardPolicy {
    pub fn with_signals(signals: SigSet) -> GuardPolicy {
        GuardPolicy {
            signals,
            ..GuardPolicy::default()
        }
    }

    /// The bpf command when `call` is a guarded bpf call, in any ABI we guard.
    pub fn guarded_command(call: &Call) -> Option<u32> {
        let abi: Abi = call.abi?;
        if call.nr != abi.nr_bpf() {
            return None;
        }
        let cmd = call.args[0] as u32; // `int cmd`: the upper half is junk
        bpf::is_guarded(cmd).then_some(cmd)
    }

    /// The mask to hold during a call of a thread of `pid` whose own mask is
    /// `saved`.
    pub fn held_mask(&self, saved: SigSet, pid: Tid) -> SigSet {
        saved.union(self.signals).union(ignored_by(pid))
    }

    pub fn at_exit(&self, ret: i64, restarts_so_far: u32) -> ExitVerdict {
        if !bpf::is_signal_failure_ret(ret) {
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

    fn call(abi: Abi, nr: u64, cmd: u64) -> Call {
        Call {
            abi: Some(abi),
            nr,
            args: [cmd, 0, 0, 0, 0, 0],
            ip: 0,
            sp: 0,
        }
    }

    #[test]
    fn guards_prog_load_not_map_lookup_in_every_abi() {
        let g = |c| GuardPolicy::guarded_command(&c);
        let bpf = Abi::Native.nr_bpf();
        assert_eq!(g(call(Abi::Native, bpf, 5)), Some(5));
        assert_eq!(g(call(Abi::Native, bpf, 10)), Some(10));
        assert_eq!(g(call(Abi::Native, bpf, 1)), None);
        assert_eq!(g(call(Abi::Native, 39, 5)), None);
        assert_eq!(g(call(Abi::Native, bpf, 0xffff_ffff_0000_0005)), Some(5));
        assert_eq!(
            g(Call {
                abi: None,
                ..call(Abi::Native, bpf, 5)
            }),
            None
        );
        #[cfg(target_arch = "x86_64")]
        {
            assert_eq!(g(call(Abi::I386, 357, 5)), Some(5));
            assert_eq!(g(call(Abi::I386, bpf, 5)), None, "i386 321 is not bpf");
            assert_eq!(g(call(Abi::X32, Abi::X32.nr_bpf(), 5)), Some(5));
        }
    }

    #[test]
    fn restarts_are_bounded() {
        let p = GuardPolicy::default();
        let eagain = -(libc::EAGAIN as i64);
        assert_eq!(p.at_exit(3, 0), ExitVerdict::Finish);
        assert_eq!(p.at_exit(-(libc::EINVAL as i64), 0), ExitVerdict::Finish);
        assert_eq!(p.at_exit(eagain, 0), ExitVerdict::Restart);
        assert_eq!(p.at_exit(-(libc::EINTR as i64), 15), ExitVerdict::Restart);
        assert_eq!(p.at_exit(eagain, 16), ExitVerdict::GiveUp);
    }

    #[test]
    fn held_mask_adds_what_we_ignore() {
        // This test process: SIGPIPE is SIG_IGN (the Rust runtime), SIGCHLD
        // and SIGURG are SIG_DFL (default: ignore).
        let me = std::process::id() as Tid;
        let ign = ignored_by(me);
        assert!(
            ign.contains(libc::SIGPIPE) && ign.contains(libc::SIGCHLD),
            "{ign}"
        );
        assert!(!ign.contains(libc::SIGTERM));
        let mut saved = SigSet::EMPTY;
        saved.insert(libc::SIGUSR2);
        let held = GuardPolicy::default().held_mask(saved, me);
        assert!(held.contains(libc::SIGUSR2) && held.contains(libc::SIGPROF));
        assert!(held.contains(libc::SIGCHLD));
    }
}
