//! Letting go of every task, each left exactly as it would be without us.
//!
//! PTRACE_DETACH needs the tracee stopped. Threads that are ready are kept
//! at their stop (up to 100 ms) until all are, then let go together: a
//! thread let go competes for the CPU with the tracer still waiting for the
//! others.
//! A task inside a call the engine
//! must finish (a guarded load: its mask is ours until the exit stop) is not
//! interrupted; it is detached at its exit stop, mask restored (a load that
//! fails there with EAGAIN is rewound instead of restarted: the program runs
//! it again, untraced). A task the engine resumes with PTRACE_SYSCALL gets a
//! short grace to stop by itself (a busy thread makes a syscall within
//! microseconds, and a syscall stop costs it nothing); every other task gets
//! a PTRACE_INTERRUPT. At its stop: a signal-delivery-stop detaches with
//! that signal (delivered, not lost); a group-stop detaches with none and
//! stays stopped, as it would without us ("__ptrace_unlink() ... reinstate
//! JOBCTL_STOP_PENDING if group stop is in effect", kernel/ptrace.c); a clone
//! event adds the new thread, whose own first stop comes next.
//!
//! Never at a syscall-enter-stop: PTRACE_DETACH wakes the tracee with
//! TIF_SIGPENDING set ("ptrace_signal_wake_up(child, true)" in
//! `__ptrace_unlink`), so the syscall would run with a signal "pending": the
//! verifier fails the load with EAGAIN, an epoll_wait returns EINTR. The call
//! is skipped instead (orig_rax = -1), and at its exit stop the thread is put
//! back before the syscall instruction and detached there: on its way out
//! the kernel finds no signal, clears the flag, and the call runs for real,
//! untraced.

use super::{Session, HOLD_FOR};
use crate::engine::{Cx, Engine};
use crate::error::Error;
use crate::event::Observer;
use crate::sys::ptrace::{self, Resume};
use crate::sys::wait::Reaped;
use crate::sys::Tid;
use crate::tracee::{Call, Report, Stop, Stopped};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// How long, at detach, threads resumed with PTRACE_SYSCALL get to reach a
/// stop by themselves before they are interrupted (an interrupt can make an
/// epoll_wait return EINTR, as `strace -p` attaching does; a syscall stop
/// does not).
const DETACH_GRACE: Duration = Duration::from_millis(20);

/// How the detach went.
#[derive(Clone, Copy, Debug, Default)]
pub struct Detached {
    pub threads: usize,
    /// Threads that were inside a call the engine had to let finish first.
    pub waited_for: usize,
    /// Threads that needed a PTRACE_INTERRUPT.
    pub interrupted: usize,
    /// Threads detached in a group-stop (the process stays stopped, as it was
    /// asked to by whoever sent the stop signal).
    pub left_group_stopped: usize,
    pub elapsed: Duration,
}

impl Session {
    /// Detaches every task (see the module comment). The session is empty
    /// afterwards.
    pub fn detach(
        &mut self,
        engine: &mut dyn Engine,
        observer: &mut dyn Observer,
    ) -> Result<Detached, Error> {
        let start = Instant::now();
        let mut report = Detached::default();
        engine.releasing();
        let mut waited: HashSet<Tid> = HashSet::new();
        let mut interrupted: HashSet<Tid> = HashSet::new();
        // Calls skipped at their entry stop, until their exit stop.
        let mut skipping: HashMap<Tid, Call> = HashMap::new();
        // Stopped and ready to go (with the signal to pass on), until all are.
        let mut ready: Vec<(Stopped, i32)> = Vec::new();
        let mut holding = true;
        // The hold ends on time even if no stop comes to end the wait.
        let nudged = self.wake_at(start + HOLD_FOR.max(DETACH_GRACE));
        loop {
            if holding && (ready.len() >= self.tasks.len() || start.elapsed() >= HOLD_FOR) {
                holding = false;
            }
            if !holding {
                for (task, signal) in ready.drain(..) {
                    let tid = task.tid();
                    match task.detach(signal) {
                        Ok(()) => {
                            self.tasks.remove(&tid);
                            engine.left(tid);
                            report.threads += 1;
                        }
                        // Killed while stopped for us: its exit is still ours to reap.
                        Err(e) if e.is_gone() => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            if self.tasks.is_empty() {
                break;
            }
            let grace_over = start.elapsed() >= DETACH_GRACE
                || self
                    .tasks
                    .keys()
                    .all(|&t| engine.resume_mode(t) == Resume::Cont || engine.busy(t));
            if grace_over {
                let stopped: HashSet<Tid> = ready.iter().map(|(t, _)| t.tid()).collect();
                let tids: Vec<Tid> = self
                    .tasks
                    .keys()
                    .copied()
                    .filter(|t| !stopped.contains(t))
                    .collect();
                for tid in tids {
                    if engine.busy(tid) {
                        waited.insert(tid);
                        continue;
                    }
                    if skipping.contains_key(&tid) || !interrupted.insert(tid) {
                        continue;
                    }
                    match ptrace::interrupt(tid) {
                        Ok(()) => report.interrupted += 1,
                        // ESRCH: not our tracee. A tracee that died is ours
                        // until reaped ("child->ptrace && child->parent ==
                        // current", ptrace_check_attach in kernel/ptrace.c);
                        // this one was reaped (its exit waits in the
                        // reaper's queue, and is ignored when it comes) or
                        // never ours: waiting for a stop would wait forever.
                        Err(e) if e.is_gone() => {
                            log::debug!("tid {tid}: no longer traced; forgotten");
                            self.tasks.remove(&tid);
                            engine.left(tid);
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            let (tid, status) = if grace_over && (!holding || nudged) {
                match self.reaper.wait().map_err(Error::Wait)? {
                    Reaped::Report(tid, status) => (tid, status),
                    Reaped::NothingLeft => {
                        self.tasks.clear(); // every task is gone
                        break;
                    }
                }
            } else {
                match self.reaper.try_take().map_err(Error::Wait)? {
                    Some(r) => r,
                    None => {
                        std::thread::sleep(Duration::from_micros(if grace_over {
                            100
                        } else {
                            500
                        }));
                        continue;
                    }
                }
            };
            if self.is_waker(tid, status) {
                continue;
            }
            let (task, stop) = match self.decode(tid, status) {
                None => continue,
                Some(Report::Exited(tid, _)) => {
                    if self.tasks.remove(&tid).is_some() {
                        engine.left(tid);
                    }
                    continue;
                }
                Some(Report::Stopped(task, stop)) => (task, stop),
            };
            let pid = self.task(tid).pid;
            let mut cx = Cx {
                observer: &mut *observer,
                stats: &mut self.stats,
            };
            // Asked to stop while seizing: a thread's first stop may come
            // only now, and our interrupt may have failed its load.
            if std::mem::take(&mut self.tasks.get_mut(&tid).expect("decoded").first_stop)
                && stop == Stop::Interrupt
            {
                if let Err(e) = engine.first_stop(&mut cx, &task, pid) {
                    if !e.is_gone() {
                        return Err(e.into());
                    }
                    continue;
                }
            }
            if engine.busy(tid) {
                waited.insert(tid);
                let deliver = match engine.stop(&mut cx, &task, pid, &stop) {
                    Ok(sig) => sig,
                    Err(e) if e.is_gone() => continue,
                    Err(e) => return Err(e.into()),
                };
                if engine.busy(tid) {
                    let _ = task.resume(Resume::Syscall, deliver);
                    continue;
                }
                // Its call ended at this exit stop, mask restored: let go here.
            } else {
                match stop {
                    Stop::SyscallEntry(call) | Stop::Seccomp { call, .. } => {
                        let mut regs = match task.regs() {
                            Ok(r) => r,
                            Err(e) if e.is_gone() => continue,
                            Err(e) => return Err(e.into()),
                        };
                        if regs.skip_syscall() {
                            task.set_regs(&regs)?;
                            let _ = task.resume(Resume::Syscall, 0);
                            skipping.insert(tid, call);
                            continue;
                        }
                    }
                    Stop::SyscallExit { .. } => {
                        if let Some(call) = skipping.remove(&tid) {
                            // The exit of the call we skipped: back to just
                            // before the syscall instruction, so it runs for
                            // real after the detach.
                            let mut regs = task.regs()?;
                            regs.rewind_syscall(call.nr, &call.args);
                            task.set_regs(&regs)?;
                        }
                    }
                    // The new thread's own first stop comes next (unless it
                    // has come and gone already).
                    Stop::Clone(new) if super::is_alive(&self.tasks, new) => {
                        self.tasks.entry(new).or_insert(super::Task::new(pid, true));
                    }
                    Stop::Group(_) => report.left_group_stopped += 1,
                    _ => {}
                }
                match engine.detaching(&mut cx, &task, pid, &stop) {
                    Ok(()) => {}
                    Err(e) if e.is_gone() => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            let signal = match stop {
                Stop::Signal(sig) => sig,
                _ => 0,
            };
            ready.push((task, signal));
        }
        self.cancel_wake();
        report.waited_for = waited.len();
        report.elapsed = start.elapsed();
        Ok(report)
    }
}
