//! One guarded call, from the stop that catches an attempt to the exit stop
//! that ends it, for both guard engines.
//!
//! An attempt is caught at its entry (our seccomp stop, or the entry stop of
//! a followed thread): the thread's own mask is saved, `saved | guard |
//! ignored` held, and the thread resumed with PTRACE_SYSCALL to its exit
//! stop. There the call ends (the saved mask restored, exactly) or is
//! restarted: the mask restored first, then the instruction pointer stepped
//! back over the syscall instruction. The thread then takes whatever signal
//! cut the attempt short with its own mask, runs its handler, and comes back
//! to the syscall, whose next entry is caught like the first.
//!
//! Why the mask is restored before a restart rather than kept: a handler
//! that runs between two attempts must run with the program's mask, not
//! ours. Its frame saves the mask it interrupted, and sigreturn restores it;
//! a handler that leaves by siglongjmp restores the mask of its sigsetjmp; a
//! handler that loads makes a guarded call of its own. If our mask were in
//! place, each of these would carry it into the program (a saved mask
//! restored over a newer one, or the guard set blocked for good). So no
//! handler ever sees a mask of ours, and each attempt saves the thread's mask
//! afresh.
//!
//! A restarted call is remembered (a [`Retry`]) only to count its attempts:
//! when the same syscall comes back (same ABI, number, arguments, instruction
//! and stack pointer: a returning handler restores them exactly) it is the
//! same call. A nested call (a handler that loads) has a deeper stack; a
//! retry whose thread never comes back (siglongjmp) is dropped as abandoned.
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

/// An attempt in the kernel, mask held.
#[derive(Clone, Copy, Debug)]
struct InCall {
    call: Progress,
    /// The thread's own mask: restored at the exit stop.
    saved: SigSet,
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

    /// `call`'s attempt got `ret` and was rewound: count and report the
    /// restart, and (`keep`) remember the call for when it comes back.
    fn rewound(
        &mut self,
        cx: &mut Cx,
        who: (Tid, Tid),
        guard: SigSet,
        call: Progress,
        ret: i64,
        keep: bool,
    ) {
        let retry = Retry {
            call: Progress {
                restarts: call.restarts + 1,
                ..call
            },
            errno: (-ret) as i32,
        };
        cx.stats.restarts += 1;
        cx.emit(Event::Restart {
            pid: who.0,
            tid: who.1,
            cmd: call.cmd,
            errno: retry.errno,
            n: retry.call.restarts,
        });
        if keep {
            self.retries.push(retry);
            if self.retries.len() > MAX_RETRIES {
                self.retries.remove(0).abandon(cx, who, guard);
            }
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

    /// A mask of ours is in place on `tid` until its exit stop.
    pub fn busy(&self, tid: Tid) -> bool {
        self.threads.get(&tid).is_some_and(|t| t.call.is_some())
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
        if let Some(stale) = th.call.take() {
            // An entry while we waited for an exit: the exit was lost (the
            // kernel always reports it). Give the thread its mask back.
            log::warn!("pid {pid} tid {tid}: a guarded call's exit was never seen");
            task.set_sigmask(stale.saved)?;
        }
        let call = th.attempt(cx, (pid, tid), guard, site, cmd);
        let saved = task.sigmask()?;
        task.set_sigmask(self.policy.held_mask(saved, pid))?;
        th.call = Some(InCall { call, saved });
        Ok(())
    }

    /// The exit stop of `tid`'s call (a no-op for a thread not in one).
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
        let Some(InCall { call, saved }) = th.call.take() else {
            return Ok(());
        };
        let how = match self.policy.at_exit(ret, call.restarts) {
            ExitVerdict::Finish => Ending::Done,
            ExitVerdict::GiveUp => Ending::GaveUp,
            ExitVerdict::Restart => {
                // Mask first: if rewinding fails (the thread died), it must
                // not be left holding ours.
                task.set_sigmask(saved)?;
                rewind(task, &call.site)?;
                th.rewound(cx, (pid, tid), guard, call, ret, !self.releasing);
                return Ok(());
            }
        };
        let held_back = SigSet::from_bits(procfs::pending_signals(tid).bits() & guard.bits());
        task.set_sigmask(saved)?;
        call.end(cx, (pid, tid), guard, ret, how, held_back);
        Ok(())
    }

    /// The signal-stop guard: `task` is on its way back to user space with
    /// `ret` (EAGAIN/EINTR) from guarded call `site` that no stop of ours
    /// caught at its entry. Rewind it so that it runs again (the signal is
    /// delivered first, with the thread's own mask), and count it as a
    /// restarted attempt. False when the call's restarts are used up: the
    /// program then sees the failure. While releasing (detach), the call is
    /// rewound and not followed: it runs again once we are gone.
    pub fn interrupted(
        &mut self,
        cx: &mut Cx,
        task: &Stopped,
        pid: Tid,
        site: &Call,
        cmd: u32,
        ret: i64,
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
        rewind(task, site)?;
        th.rewound(cx, (pid, tid), guard, call, ret, !self.releasing);
        Ok(true)
    }
}

/// Back to just before the syscall instruction, number in place, at a stop
/// after `call` returned.
pub fn rewind(task: &Stopped, call: &Call) -> Result<(), PtraceError> {
    let mut regs = task.regs()?;
    regs.rewind_syscall(call.nr, &call.args);
    task.set_regs(&regs)
}
