//! The guard at signal-delivery stops (`attach`, and `run --engine signal`).
//!
//! No filter and no syscall stops: every thread runs under PTRACE_CONT, and
//! the only stops are signals (a traced thread stops for every signal it is
//! sent). A signal that cuts a guarded call short is dequeued by the loading
//! thread on its way back to user space, so its signal-delivery stop shows
//! the call in the registers: orig_rax is bpf, rax -EAGAIN (the verifier) or
//! -EINTR (BPF_PROG_TEST_RUN). There the call is rewound (the instruction
//! pointer back over the syscall instruction, as the kernel does for
//! -ERESTARTNOINTR) and the thread followed with PTRACE_SYSCALL. A signal we
//! hold (the guard set, or one the process ignores) is blocked before the
//! thread goes on, and passed back: "ptrace_signal() ... if the signal is
//! blocked, requeue it" (kernel/signal.c), so it waits, and the call runs
//! again at once with the mask held. Any other signal is delivered with the
//! thread's own mask; its handler returns into the rewound call, whose next
//! entry is caught like a seccomp stop. Either way the mask is held until
//! the call's exit and restored there ([`Calls`]).
//!
//! A thread seen in a guarded call (at such a stop, or at the first stop
//! after the seize) stays followed at syscall entry while it keeps loading,
//! and for [`FOLLOW_FOR`] after its last guarded call: its next loads are
//! guarded from their entry. That closes the gap a signal stop alone leaves
//! with process-directed signals: a timer's SIGALRM that wakes the loader
//! (the verifier gives up) can be dequeued by another thread before the
//! loader gets to it (`complete_signal()` wakes one thread, any thread that
//! does not block the signal may take it), and the loader then returns
//! EAGAIN with no stop of its own. A followed loader blocks the guard set for
//! the whole call, so the kernel never wakes it for a guard signal at all
//! (`wants_signal()` is false for a thread that blocks the signal).
//!
//! A loader not followed yet that lost its signal that way is found by a
//! sweep: when a process-directed guard signal (kill, a timer: not tgkill)
//! reaches a thread that is not followed, the other threads that are running
//! and not followed get a PTRACE_INTERRUPT, at most every [`SWEEP_EVERY`]. A
//! loader retries at once and is back in the verifier; our interrupt makes
//! that attempt fail, its stop shows it, and it is rewound (the program never
//! sees that one) and followed. A thread asleep in a syscall is never
//! interrupted (an epoll_wait would return EINTR); a computing one pays one
//! stop. What the sweep cannot undo is the one EAGAIN the loader already got
//! before it: measured in docs/supervisor.md.

use super::calls::{self, Calls};
use super::policy::GuardPolicy;
use super::{Cx, Engine};
use crate::event::Event;
use crate::sys::procfs;
use crate::sys::ptrace::{self, PtraceError, Resume};
use crate::sys::Tid;
use crate::tracee::{could_be_bpf, Stop, Stopped};
use spinguard_common::bpf;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// How long a loader stays followed at syscall entry after its last guarded
/// call. Loaders load in bursts (a program, its maps, the next program);
/// a thread that has stopped loading pays two stops per syscall for this
/// long, then nothing.
pub const FOLLOW_FOR: Duration = Duration::from_secs(2);

/// The most often a sweep interrupts the running threads: a loader that
/// lost its signal retries for as long as the verifier takes (milliseconds
/// at least), so it is still in the kernel at the next sweep.
pub const SWEEP_EVERY: Duration = Duration::from_millis(10);

/// A signal sent to the whole process rather than to one thread: kill(),
/// sigqueue(), the kernel's ITIMER_REAL (SI_KERNEL), a POSIX timer (which
/// may be either; counted as one).
fn process_directed(code: i32) -> bool {
    matches!(
        code,
        libc::SI_USER | libc::SI_KERNEL | libc::SI_QUEUE | libc::SI_TIMER
    )
}

pub struct SignalGuard {
    calls: Calls,
    /// Followed threads and when they last made a guarded call.
    followed: HashMap<Tid, Instant>,
    /// Every traced thread and its process.
    threads: HashMap<Tid, Tid>,
    /// Threads a sweep interrupted, their stop not seen yet.
    swept: HashSet<Tid>,
    last_sweep: Option<Instant>,
}

impl SignalGuard {
    pub fn new(policy: GuardPolicy) -> SignalGuard {
        SignalGuard {
            calls: Calls::new(policy),
            followed: HashMap::new(),
            threads: HashMap::new(),
            swept: HashSet::new(),
            last_sweep: None,
        }
    }

    /// A process-directed guard signal reached `tid`, not followed: a loader
    /// of `pid` may have been woken for it and lost it (see the module
    /// comment). Interrupt the running threads that are not followed.
    fn sweep(&mut self, pid: Tid, tid: Tid) {
        if self.last_sweep.is_some_and(|t| t.elapsed() < SWEEP_EVERY) {
            return;
        }
        self.last_sweep = Some(Instant::now());
        let candidates: Vec<Tid> = self
            .threads
            .iter()
            .filter(|&(&t, &p)| {
                p == pid
                    && t != tid
                    && !self.followed.contains_key(&t)
                    && !self.calls.pending(t)
                    && !self.swept.contains(&t)
            })
            .map(|(&t, _)| t)
            .collect();
        for t in candidates {
            if procfs::thread_state(pid, t) == Some('R') && ptrace::interrupt(t).is_ok() {
                self.swept.insert(t);
            }
        }
    }

    fn follow(&mut self, cx: &mut Cx, pid: Tid, tid: Tid) {
        if self.followed.insert(tid, Instant::now()).is_none() {
            cx.stats.followed += 1;
            cx.emit(Event::Following {
                pid,
                tid,
                following: true,
            });
        }
    }

    /// At a stop on the way back to user space: was the thread returning
    /// from a guarded call? Follow it; rewind the call if `signal` (or, with
    /// `ours`, our own interrupt) cut it short. Returns the command when it
    /// was rewound.
    fn look_back(
        &mut self,
        cx: &mut Cx,
        task: &Stopped,
        pid: Tid,
        ours: bool,
        signal: i32,
    ) -> Result<Option<u32>, PtraceError> {
        let regs = task.regs()?;
        let Some(last) = task.last_syscall(&regs, could_be_bpf) else {
            return Ok(None);
        };
        let Some(cmd) = GuardPolicy::guarded_command(&last.call) else {
            return Ok(None);
        };
        self.follow(cx, pid, task.tid());
        if !bpf::is_signal_failure_ret(last.ret) || self.calls.busy(task.tid()) {
            return Ok(None);
        }
        if ours {
            // Our interrupt is not the program's storm: the call simply runs
            // again, as the kernel runs -ERESTARTNOINTR calls again.
            calls::rewind(task, &last.call)?;
            return Ok(Some(cmd));
        }
        let rewound = self
            .calls
            .interrupted(cx, task, pid, &last.call, cmd, last.ret, signal)?;
        Ok(rewound.then_some(cmd))
    }
}

impl Engine for SignalGuard {
    fn joined(&mut self, tid: Tid, pid: Tid) {
        self.threads.insert(tid, pid);
    }

    fn left(&mut self, tid: Tid) {
        self.calls.forget(tid);
        self.followed.remove(&tid);
        self.threads.remove(&tid);
        self.swept.remove(&tid);
    }

    fn exec(&mut self, pid: Tid, former: Tid) {
        self.left(pid);
        self.left(former);
        // The other threads are gone; their exits come as reports.
        self.threads.insert(pid, pid);
    }

    fn first_stop(&mut self, cx: &mut Cx, task: &Stopped, pid: Tid) -> Result<(), PtraceError> {
        // Our seize interrupt is a signal wake-up: inside the verifier it
        // made the load fail. The thread takes the interrupt's stop before
        // its code sees the result, so it is rewound like any other.
        if let Some(cmd) = self.look_back(cx, task, pid, true, 0)? {
            log::info!(
                "thread {} was inside {} when seized: running it again",
                task.tid(),
                bpf::command_name(cmd)
            );
        }
        Ok(())
    }

    fn stop(
        &mut self,
        cx: &mut Cx,
        task: &Stopped,
        pid: Tid,
        stop: &Stop,
    ) -> Result<i32, PtraceError> {
        let tid = task.tid();
        match *stop {
            Stop::Signal(sig) => {
                self.calls.signal(cx, task, pid)?;
                self.look_back(cx, task, pid, false, sig)?;
                if self.calls.policy.signals.contains(sig)
                    && !self.followed.contains_key(&tid)
                    && process_directed(task.siginfo()?.code)
                {
                    self.sweep(pid, tid);
                }
                Ok(sig)
            }
            Stop::Interrupt => {
                if self.swept.remove(&tid) {
                    if let Some(cmd) = self.look_back(cx, task, pid, true, 0)? {
                        log::debug!(
                            "pid {pid} tid {tid}: inside {} when swept: running it again",
                            bpf::command_name(cmd)
                        );
                    }
                }
                Ok(0)
            }
            Stop::SyscallEntry(call) => {
                if let Some(cmd) = GuardPolicy::guarded_command(&call) {
                    self.calls.enter(cx, task, pid, &call, cmd)?;
                    self.follow(cx, pid, tid);
                } else if !self.calls.pending(tid)
                    && self
                        .followed
                        .get(&tid)
                        .is_some_and(|t| t.elapsed() >= FOLLOW_FOR)
                {
                    self.followed.remove(&tid);
                    cx.emit(Event::Following {
                        pid,
                        tid,
                        following: false,
                    });
                }
                Ok(0)
            }
            Stop::SyscallExit { ret } => {
                if self.calls.busy(tid) {
                    self.calls.exit(cx, task, pid, ret)?;
                    self.followed.insert(tid, Instant::now());
                }
                Ok(0)
            }
            _ => Ok(0),
        }
    }

    fn resume_mode(&self, tid: Tid) -> Resume {
        if self.calls.pending(tid) || self.followed.contains_key(&tid) {
            Resume::Syscall
        } else {
            Resume::Cont
        }
    }

    fn busy(&self, tid: Tid) -> bool {
        self.calls.busy(tid)
    }

    fn releasing(&mut self) {
        self.calls.release();
    }

    fn detaching(
        &mut self,
        cx: &mut Cx,
        task: &Stopped,
        pid: Tid,
        stop: &Stop,
    ) -> Result<(), PtraceError> {
        // An interrupt of ours that landed inside a load we did not follow
        // (or a signal that did) must not reach the program as EAGAIN: the
        // call is rewound and runs again once we are gone.
        match stop {
            Stop::Interrupt => {
                self.look_back(cx, task, pid, true, 0)?;
            }
            Stop::Signal(sig) => {
                self.calls.signal(cx, task, pid)?;
                self.look_back(cx, task, pid, false, *sig)?;
            }
            _ => {}
        }
        Ok(())
    }
}
