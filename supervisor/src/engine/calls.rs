//! One guarded call, from the stop that catches an attempt to the exit stop
//! that ends it, for both guard engines.
//!
//! An attempt is caught at its entry (our seccomp stop, or the entry stop of
//! a followed thread): the thread's own mask is saved, `saved | guard |
//! ignored` held, and the thread resumed to its exit stop. There the call
//! ends (the saved mask restored, exactly) or is restarted: the instruction
//! pointer stepped back over the syscall instruction (the kernel does the
//! same for -ERESTARTNOINTR), the mask still held, and the same call's next
//! entry continues it.
//!
//! No signal handler ever runs with a mask of ours. Between the rewind and
//! the next entry the thread can only run its own code by taking a signal,
//! and a traced thread takes every signal through a signal-delivery stop
//! first: there ([`Calls::signal`]) its own mask is put back before the
//! signal is delivered, and the call becomes a `Retry`. The handler's frame
//! then saves the program's mask, which sigreturn restores; a handler that
//! leaves by siglongjmp restores the mask of its sigsetjmp; a handler that
//! loads makes a guarded call of its own, saving the mask it runs with. When
//! the thread comes back to the rewound syscall, that entry starts a fresh
//! hold (and counts as the next attempt of the same call: same ABI, number,
//! arguments, instruction and stack pointer, which a returning handler
//! restores exactly). A retry whose thread never comes back (siglongjmp) is
//! dropped as abandoned.
//!
//! Keeping the mask over the rewind matters when we die (spinguard attach
//! SIGKILLed): the thread then runs its load again still guarded, rather than
//! unguarded under the storm.
//!
//! Why restarts happen at all: PTRACE_SETSIGMASK does not clear
//! TIF_SIGPENDING. A guard signal that arrived while the thread sat in the
//! entry stop leaves the flag set, the verifier sees `signal_pending()` and
//! returns EAGAIN once; and a signal outside the held set still interrupts.

use super::policy::{ExitVerdict, GuardPolicy};
use super::Cx;
use crate::event::{Event, GuardedCall};
use crate::sys::procfs;
use crate::sys::ptrace::PtraceError;
use crate::sys::Tid;
use crate::tracee::{Call, Stopped};
use spinguard_common::SigSet;
use std::collections::HashMap;
use std::time::Instant;

/// One guarded call so far, whichever attempt it is at.
#[derive(Clone, Copy, Debug)]
struct Progress {
    /// What makes a re-executed syscall the same call: every field of it
    /// (ABI, number, arguments, instruction and stack pointer).
    site: Call,
    cmd: u32,
    start: Instant,
    attempts: u32,
    restarts: u32,
}

/// How a call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ending {
    /// The program sees its result.
    Done,
    /// Its EAGAIN/EINTR passed through: the restarts were used up.
    GaveUp,
    /// Restarted, but its thread never came back to it.
    Abandoned,
}

impl Progress {
    fn new(site: Call, cmd: u32) -> Progress {
        Progress {
            site,
            cmd,
            start: Instant::now(),
            attempts: 1,
            restarts: 0,
        }
    }

    /// Counts the call and reports it.
    fn end(
        &self,
        cx: &mut Cx,
        (pid, tid): (Tid, Tid),
        guard: SigSet,
        result: i64,
        how: Ending,
        held_back: SigSet,
    ) {
        cx.stats.guarded_calls += 1;
        cx.stats.gave_up += u64::from(how == Ending::GaveUp);
        cx.emit(Event::Guarded(GuardedCall {
            pid,
            tid,
            cmd: self.cmd,
            result,
            elapsed: self.start.elapsed(),
            attempts: self.attempts,
            restarts: self.restarts,
            gave_up: how == Ending::GaveUp,
            abandoned: how == Ending::Abandoned,
            guard,
            held_back,
        }));
    }
}

/// Where a call with our mask in place is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// In the kernel: the next syscall stop is its exit.
    InKernel,
    /// Rewound, about to run again: the next entry is the same call.
    Rewound,
}

/// A call with our mask in place.
#[derive(Clone, Copy, Debug)]
struct InCall {
    call: Progress,
    /// The thread's own mask: restored at the exit stop.
    saved: SigSet,
    phase: Phase,
    /// What the last attempt got (for a Rewound call).
    errno: i32,
}

/// A call we rewound, the thread's own mask back in place.
#[derive(Clone, Copy, Debug)]
struct Retry {
    call: Progress,
    /// What its last attempt got.
    errno: i32,
}

/// Retries kept per thread: nested handlers that load, each cut short.
const MAX_RETRIES: usize = 4;

#[derive(Debug, Default)]
struct Thread {
    call: Option<InCall>,
    /// Innermost last.
    retries: Vec<Retry>,
}

impl Thread {
    /// The call an attempt at `site` belongs to: one we restarted, coming
    /// back (retries above it were left by handlers that did not come back),
    /// or a new one.
    fn attempt(
        &mut self,
        cx: &mut Cx,
        who: (Tid, Tid),
        guard: SigSet,
        site: &Call,
        cmd: u32,
    ) -> Progress {
        let Some(i) = self.retries.iter().rposition(|r| r.call.site == *site) else {
            cx.emit(Event::GuardStart {
                pid: who.0,
                tid: who.1,
                cmd,
            });
            return Progress::new(*site, cmd);
        };
        for r in self.retries.drain(i + 1..) {
            r.abandon(cx, who, guard);
        }
        let mut call = self.retries.pop().expect("found above").call;
        call.attempts += 1;
        call
    }

    /// Remembers a restarted call for when its thread comes back to it.
    fn retry(&mut self, cx: &mut Cx, who: (Tid, Tid), guard: SigSet, retry: Retry) {
        self.retries.push(retry);
        if self.retries.len() > MAX_RETRIES {
            self.retries.remove(0).abandon(cx, who, guard);
        }
    }
}

impl Retry {
    /// Its thread never came back to it (its handler left by siglongjmp):
    /// it ends as the EAGAIN/EINTR it last got, which the program never saw.
    fn abandon(&self, cx: &mut Cx, who: (Tid, Tid), guard: SigSet) {
        let result = -(self.errno as i64);
        self.call
            .end(cx, who, guard, result, Ending::Abandoned, SigSet::EMPTY);
    }
}

/// The guarded calls of every thread.
#[derive(Debug, Default)]
pub struct Calls {
    pub policy: GuardPolicy,
    threads: HashMap<Tid, Thread>,
    releasing: bool,
}

impl Calls {
    pub fn new(policy: GuardPolicy) -> Calls {
        Calls {
            policy,
            ..Calls::default()
        }
    }

    /// A mask of ours is in place on `tid`.
    pub fn busy(&self, tid: Tid) -> bool {
        self.threads.get(&tid).is_some_and(|t| t.call.is_some())
    }

    /// `tid` is in the kernel in a guarded call: its next syscall stop is the
    /// exit (a rewound call comes back through an entry instead).
    pub fn in_kernel(&self, tid: Tid) -> bool {
        self.threads
            .get(&tid)
            .and_then(|t| t.call)
            .is_some_and(|c| c.phase == Phase::InKernel)
    }

    /// `tid` is in a call or has a restarted one coming back.
    pub fn pending(&self, tid: Tid) -> bool {
        self.threads
            .get(&tid)
            .is_some_and(|t| t.call.is_some() || !t.retries.is_empty())
    }

    pub fn forget(&mut self, tid: Tid) {
        self.threads.remove(&tid);
    }

    /// Finish what is in flight; restart nothing.
    pub fn release(&mut self) {
        self.releasing = true;
    }

    /// An attempt of guarded call `cmd` enters the kernel: hold the mask.
    pub fn enter(
        &mut self,
        cx: &mut Cx,
        task: &Stopped,
        pid: Tid,
        site: &Call,
        cmd: u32,
    ) -> Result<(), PtraceError> {
        let tid = task.tid();
        let guard = self.policy.signals;
        cx.stats.guard_stops += 1;
        let th = self.threads.entry(tid).or_default();
        if let Some(c) = th.call.as_mut() {
            if c.phase == Phase::Rewound && c.call.site == *site {
                // Our rewound call, back with our mask still in place.
                c.phase = Phase::InKernel;
                c.call.attempts += 1;
                return Ok(());
            }
            // Cannot happen (the thread had no way to run other code): give
            // it its mask back and start over.
            log::warn!("pid {pid} tid {tid}: a guarded call's exit was never seen");
            task.set_sigmask(c.saved)?;
            th.call = None;
        }
        let call = th.attempt(cx, (pid, tid), guard, site, cmd);
        let saved = task.sigmask()?;
        task.set_sigmask(self.policy.held_mask(saved, pid))?;
        th.call = Some(InCall {
            call,
            saved,
            phase: Phase::InKernel,
            errno: 0,
        });
        Ok(())
    }

    /// The exit stop of `tid`'s call (a no-op for a thread not in the kernel
    /// in one).
    pub fn exit(
        &mut self,
        cx: &mut Cx,
        task: &Stopped,
        pid: Tid,
        ret: i64,
    ) -> Result<(), PtraceError> {
        let tid = task.tid();
        let guard = self.policy.signals;
        let Some(th) = self.threads.get_mut(&tid) else {
            return Ok(());
        };
        let Some(InCall {
            call,
            saved,
            phase: Phase::InKernel,
            ..
        }) = th.call
        else {
            return Ok(());
        };
        let how = match self.policy.at_exit(ret, call.restarts) {
            ExitVerdict::Finish => Ending::Done,
            ExitVerdict::GiveUp => Ending::GaveUp,
            ExitVerdict::Restart => {
                let errno = (-ret) as i32;
                let call = Progress {
                    restarts: call.restarts + 1,
                    ..call
                };
                rewound(cx, (pid, tid), &call, errno);
                if self.releasing {
                    // We are letting go: the thread runs it again on its own.
                    th.call = None;
                    task.set_sigmask(saved)?;
                } else {
                    th.call = Some(InCall {
                        call,
                        saved,
                        phase: Phase::Rewound,
                        errno,
                    });
                }
                return rewind(task, &call.site);
            }
        };
        th.call = None;
        let held_back = SigSet::from_bits(procfs::pending_signals(tid).bits() & guard.bits());
        task.set_sigmask(saved)?;
        call.end(cx, (pid, tid), guard, ret, how, held_back);
        Ok(())
    }

    /// At a signal-delivery stop: a thread whose call we rewound with our
    /// mask in place is about to run a handler. Its own mask goes back first,
    /// and the call waits as a `Retry` for the thread to come back to it.
    pub fn signal(&mut self, cx: &mut Cx, task: &Stopped, pid: Tid) -> Result<(), PtraceError> {
        let tid = task.tid();
        let guard = self.policy.signals;
        let Some(th) = self.threads.get_mut(&tid) else {
            return Ok(());
        };
        let Some(c) = th.call.filter(|c| c.phase == Phase::Rewound) else {
            return Ok(());
        };
        th.call = None;
        task.set_sigmask(c.saved)?;
        if !self.releasing {
            th.retry(
                cx,
                (pid, tid),
                guard,
                Retry {
                    call: c.call,
                    errno: c.errno,
                },
            );
        }
        Ok(())
    }

    /// The signal-stop guard: `task` is on its way back to user space with
    /// `ret` (EAGAIN/EINTR) from guarded call `site` that no stop of ours
    /// caught at its entry, about to take `signal`. Rewind it so that it runs
    /// again: with our mask held when `signal` is one we hold (the kernel
    /// requeues a signal that is blocked when it is passed on: `ptrace_signal()`),
    /// else after the signal's handler, with the thread's own mask. False
    /// when the call's restarts are used up: the program then sees the
    /// failure. While releasing (detach), the call is rewound and not
    /// followed: it runs again once we are gone.
    #[allow(clippy::too_many_arguments)]
    pub fn interrupted(
        &mut self,
        cx: &mut Cx,
        task: &Stopped,
        pid: Tid,
        site: &Call,
        cmd: u32,
        ret: i64,
        signal: i32,
    ) -> Result<bool, PtraceError> {
        let tid = task.tid();
        let guard = self.policy.signals;
        cx.stats.guard_stops += 1;
        let th = self.threads.entry(tid).or_default();
        let call = th.attempt(cx, (pid, tid), guard, site, cmd);
        if !self.releasing && self.policy.at_exit(ret, call.restarts) == ExitVerdict::GiveUp {
            call.end(cx, (pid, tid), guard, ret, Ending::GaveUp, SigSet::EMPTY);
            return Ok(false);
        }
        let errno = (-ret) as i32;
        let call = Progress {
            restarts: call.restarts + 1,
            ..call
        };
        // The mask before the rewind: if we die in between, the thread runs
        // the load again guarded, or gets the failure with the guard in place.
        let saved = task.sigmask()?;
        let held = self.policy.held_mask(saved, pid);
        let hold = !self.releasing && signal != 0 && held.contains(signal);
        if hold {
            task.set_sigmask(held)?;
        }
        rewind(task, site)?;
        rewound(cx, (pid, tid), &call, errno);
        if hold {
            th.call = Some(InCall {
                call,
                saved,
                phase: Phase::Rewound,
                errno,
            });
        } else if !self.releasing {
            th.retry(cx, (pid, tid), guard, Retry { call, errno });
        }
        Ok(true)
    }
}

/// Counts a restart and reports it.
fn rewound(cx: &mut Cx, (pid, tid): (Tid, Tid), call: &Progress, errno: i32) {
    cx.stats.restarts += 1;
    cx.emit(Event::Restart {
        pid,
        tid,
        cmd: call.cmd,
        errno,
        n: call.restarts,
    });
}

/// Back to just before the syscall instruction, number in place, at a stop
/// after `call` returned.
pub fn rewind(task: &Stopped, call: &Call) -> Result<(), PtraceError> {
    let mut regs = task.regs()?;
    regs.rewind_syscall(call.nr, &call.args);
    task.set_regs(&regs)
}
