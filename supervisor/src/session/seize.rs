//! Seizing a process we did not start.
//!
//! PTRACE_SEIZE each tid in /proc/PID/task, PTRACE_INTERRUPT it (a seized
//! thread runs on without stops until then), and wait until every seized
//! thread has reported its first stop; then list the tasks again, until a
//! listing shows nothing new. PTRACE_O_TRACECLONE on each thread catches the
//! threads it creates after its seize. A clone that was already under way
//! when its caller was seized is not caught by the option (`kernel_clone()`
//! decides whether to trace the child before copying it), but it has
//! finished, child listed in /proc, by the time its caller reaches the first
//! stop, which is taken on the way back to user space: hence "wait for every
//! first stop, then list again". No thread escapes.
//!
//! A zombie thread is not seized: "ptrace_attach() ... if (task->exit_state)
//! goto unlock" answers EPERM, and it runs nothing to guard. That is the
//! leader of a process whose main thread called pthread_exit: its other
//! threads are the process.
//!
//! The first stops go through the session's loop like any other (every wait
//! through the one reaper: plain `waitpid(-1)` keeps reporting a thread that
//! stops again at once and never the others), and the stop handle is looked
//! at between any two: a signal that comes before every thread is seized
//! ends the seize; a deadline, only once the seize has overrun it by
//! [`SEIZE_OVERRUN`] (a short `--for` still means "seize, then let go").

use super::target::{explain_eperm, tracer_of, Target};
use super::{End, Session, StopReason, Task, HOLD_FOR};
use crate::engine::Engine;
use crate::error::{AttachError, Error};
use crate::event::Observer;
use crate::sys::ptrace::{self, Options, PtraceError};
use crate::sys::{self, procfs, Tid};
use std::collections::HashSet;
use std::time::{Duration, Instant};

/// Options for a seized process: follow its threads and execs, tell syscall
/// stops from SIGTRAP. No TRACEFORK/VFORK: the children it forks are not ours
/// to adopt (they keep running untraced). No EXITKILL: if we die, the target
/// must live on (the kernel detaches it). No TRACESECCOMP: a filter of its
/// own that returns SECCOMP_RET_TRACE keeps getting ENOSYS, as without us.
pub const ATTACH_OPTIONS: Options = Options::TRACESYSGOOD
    .union(Options::TRACECLONE)
    .union(Options::TRACEEXEC);

/// How long a seize may go on after the deadline has passed; a signal ends
/// it at once.
const SEIZE_OVERRUN: Duration = Duration::from_secs(1);

/// How the seize went.
#[derive(Clone, Copy, Debug)]
pub struct Seized {
    /// Threads traced once every one had stopped (auto-attached ones included).
    pub threads: usize,
    /// From the first PTRACE_SEIZE to the last first stop.
    pub elapsed: Duration,
    /// False when a stop (or a deadline long past) came before every thread
    /// was seized: the session is to be detached at once.
    pub complete: bool,
}

impl Session {
    /// Seizes every thread of `target` for `engine`; it becomes the main
    /// process. On error, whatever was seized is let go again.
    pub fn seize(
        &mut self,
        target: &Target,
        engine: &mut dyn Engine,
        observer: &mut dyn Observer,
    ) -> Result<Seized, AttachError> {
        self.main = Some(target.pid);
        self.main_execed = true;
        self.holding = true;
        let result = self.seize_all(target, engine, observer);
        self.release_held(engine);
        self.cancel_wake();
        match result {
            Ok(seized) => Ok(seized),
            Err(e) => {
                if !self.tasks.is_empty() && !matches!(e, AttachError::Exited { .. }) {
                    if let Err(d) = self.detach(engine, observer) {
                        log::error!("detaching after a failed attach: {d}");
                    }
                }
                Err(e)
            }
        }
    }

    fn seize_cut_short(&mut self, start: Instant) -> bool {
        match self.stop_requested() {
            None => false,
            Some(StopReason::Deadline) if start.elapsed() < SEIZE_OVERRUN => {
                // Not yet: but the waker that told us is gone; a new one for
                // the end of the overrun.
                if let Some(s) = self.stopper.as_mut() {
                    if let Err(e) = s.wake_at(start + SEIZE_OVERRUN) {
                        log::error!("cannot start a waker ({e}): ending the seize");
                        return true;
                    }
                }
                false
            }
            Some(_) => true,
        }
    }

    fn seize_all(
        &mut self,
        target: &Target,
        engine: &mut dyn Engine,
        observer: &mut dyn Observer,
    ) -> Result<Seized, AttachError> {
        let start = Instant::now();
        let pid = target.pid;
        let me = sys::getpid();
        // The hold ends on time even if no stop comes to end the wait.
        let nudged = self.wake_at(start + HOLD_FOR);
        let mut skipped: HashSet<Tid> = HashSet::new();
        let mut complete = true;
        loop {
            if self.seize_cut_short(start) {
                complete = false;
                break;
            }
            let tids = match procfs::threads(pid) {
                Ok(t) => t,
                Err(_) if self.tasks.is_empty() => return Err(AttachError::NoSuchProcess { pid }),
                Err(_) => Vec::new(), // gone: its exit is reported below
            };
            let mut new: Vec<Tid> = tids
                .into_iter()
                .filter(|t| !self.tasks.contains_key(t) && !skipped.contains(t))
                .collect();
            // The leader first: an EPERM on it is about the process, not a thread.
            new.sort_by_key(|&t| (t != pid, t));
            let pending = self.tasks.values().any(|t| t.first_stop);
            if new.is_empty() && !pending {
                break;
            }
            for tid in new {
                if procfs::thread_status(pid, tid).is_some_and(|s| s.is_dead()) {
                    skipped.insert(tid); // a zombie leader, or a thread on its way out
                    continue;
                }
                match ptrace::seize(tid, ATTACH_OPTIONS) {
                    Ok(()) => {
                        self.adopt(engine, tid, pid);
                        match ptrace::interrupt(tid) {
                            Ok(()) => {}
                            Err(e) if e.is_gone() => {} // its exit is reported
                            Err(e) => return Err(e.into()),
                        }
                    }
                    Err(PtraceError::Gone { .. }) => {} // exited before we got to it
                    Err(e) if e.errno() == Some(libc::EPERM) => {
                        if tracer_of(tid) == me {
                            // Created by a thread we had seized already
                            // (TRACECLONE): ours, its first stop will come.
                            self.adopt(engine, tid, pid);
                        } else if procfs::thread_status(pid, tid).is_none_or(|s| s.is_dead()) {
                            // Gone or dying (PF_EXITING refuses a seize): no loss.
                            skipped.insert(tid);
                        } else {
                            return Err(explain_eperm(target));
                        }
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            // Every seized thread's first stop: the clone it may have been in
            // the middle of is complete, its child listed. The threads whose
            // first stop has been seen run on meanwhile; the reaper serves
            // them in turn with the others.
            while self.tasks.values().any(|t| t.first_stop) && !self.seize_cut_short(start) {
                if self.tasks.is_empty() {
                    break;
                }
                if self.holding && start.elapsed() >= HOLD_FOR {
                    self.release_held(engine);
                }
                let end = if self.holding && !nudged {
                    // No waker to end the wait: polling, so that the hold
                    // can end on time.
                    match self.reaper.try_take().map_err(Error::Wait)? {
                        Some((tid, status)) => self.dispatch(engine, observer, tid, status)?,
                        None => {
                            if start.elapsed() >= HOLD_FOR {
                                self.release_held(engine);
                            } else {
                                std::thread::sleep(Duration::from_micros(100));
                            }
                            None
                        }
                    }
                } else {
                    self.next(engine, observer)?
                };
                match end {
                    Some(End::Exited(status)) => return Err(AttachError::Exited { pid, status }),
                    Some(End::Stopped(_)) | None => {}
                }
            }
            if self.tasks.is_empty() && !skipped.is_empty() {
                return Err(AttachError::NoSuchProcess { pid });
            }
        }
        Ok(Seized {
            threads: self.tasks.len(),
            elapsed: start.elapsed(),
            complete,
        })
    }

    /// Resumes the threads kept at their first stop, and keeps no more.
    fn release_held(&mut self, engine: &mut dyn Engine) {
        self.holding = false;
        for task in std::mem::take(&mut self.held) {
            let tid = task.tid();
            let how = engine.resume_mode(tid);
            if let Some(t) = self.tasks.get_mut(&tid) {
                t.sys.resumed(how);
            }
            // ESRCH: killed meanwhile; its exit comes as a report.
            let _ = task.resume(how, 0);
        }
    }

    fn adopt(&mut self, engine: &mut dyn Engine, tid: Tid, pid: Tid) {
        let mut task = Task::new(pid, true);
        task.first_stop = true;
        self.tasks.insert(tid, task);
        self.stats.tasks += 1;
        engine.joined(tid, pid);
    }
}
