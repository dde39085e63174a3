//! The stop loop: one thread owns every ptrace request, turns each waitpid
//! report into a [`Stop`], keeps a small state per traced task, and applies
//! the [`GuardPolicy`].
//!
//! Per task: running, or in a guarded call (saved mask, start, attempts), and
//! whether it is group-stopped. A guarded call starts at a seccomp stop (or,
//! for a tracee attached from outside, at a syscall-enter-stop), holds
//! `saved | guard` until the syscall-exit-stop, and there either ends (mask
//! restored, exactly as it was) or restarts: instruction pointer stepped back
//! over the syscall instruction, mask still held. The re-executed syscall
//! passes the filter again and brings a second seccomp stop: that one
//! continues the same call and keeps the ORIGINAL saved mask (reading the mask
//! again there would save the guarded one and leak the block forever).
//!
//! Resuming: a task in a guarded call before its exit resumes with
//! PTRACE_SYSCALL (to see the exit); every other task with PTRACE_CONT in
//! [`StopMode::Seccomp`], so it makes no syscall-stops at all, only seccomp
//! stops for guarded calls.

use crate::event::{Event, GuardedCall, Observer, Stats, TaskKind};
use crate::exit::ExitStatus;
use crate::guard::{ExitVerdict, GuardPolicy};
use crate::ptrace::{self, PtraceError, Reaped, Reaper, Resume, SyscallInfo, Tid};
use crate::spawn::{self, ChildStage, Command, Spawned};
use crate::stop::{self, Stop};
use crate::{procfs, Error};
use spinguard_common::SigSet;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// Where guarded calls are caught.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopMode {
    /// The tracees run our seccomp filter (spawned by us): PTRACE_CONT
    /// everywhere, a stop only for guarded bpf calls.
    Seccomp,
    /// No filter (a process attached from outside, which cannot be given one):
    /// PTRACE_SYSCALL everywhere, a stop at every syscall entry and exit.
    EverySyscall,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub policy: GuardPolicy,
    pub mode: StopMode,
    /// When the spawned program's leader group-stops on SIGTSTP/SIGTTIN/SIGTTOU
    /// (Ctrl-Z), stop ourselves too, so the shell sees its job stop and gives
    /// the terminal back; when continued, continue the program. Only sensible
    /// in the foreground of a terminal (see `forward::in_foreground_of_terminal`).
    pub follow_terminal_stops: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            policy: GuardPolicy::default(),
            mode: StopMode::Seccomp,
            follow_terminal_stops: false,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Resumed with PTRACE_SYSCALL; the next syscall stop is the exit.
    AwaitingExit,
    /// Rewound after EAGAIN/EINTR; the next seccomp (or syscall-enter) stop
    /// is the same call again.
    Restarting,
}

#[derive(Clone, Copy, Debug)]
struct InCall {
    /// The thread's own mask from before the call: restored at the end.
    saved: SigSet,
    start: Instant,
    cmd: u32,
    nr: u64,
    args: [u64; 6],
    attempts: u32,
    restarts: u32,
    phase: Phase,
}

#[derive(Clone, Debug)]
struct Task {
    /// Thread-group id (process id) this task belongs to.
    pid: Tid,
    call: Option<InCall>,
    group_stopped: bool,
    /// Counted and reported as a new task (its creator's event was seen, or
    /// it was the first one).
    announced: bool,
}

impl Task {
    fn new(pid: Tid, announced: bool) -> Task {
        Task {
            pid,
            call: None,
            group_stopped: false,
            announced,
        }
    }
}

fn is_stop_signal(sig: i32) -> bool {
    matches!(
        sig,
        libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU
    )
}

fn in_our_process_group(tid: Tid) -> bool {
    // SAFETY: no pointers.
    unsafe { libc::getpgid(tid) == libc::getpgrp() }
}

/// The stop loop and its per-task state.
pub struct Tracer<'o> {
    config: Config,
    observer: &'o mut dyn Observer,
    tasks: HashMap<Tid, Task>,
    stats: Stats,
    main: Option<Tid>,
    spawned: Option<Spawned>,
    main_execed: bool,
    /// We stopped ourselves for a terminal stop and have been continued:
    /// the reports already queued predate that SIGCONT (see `drain_stale`).
    self_stopped: bool,
    /// Handling those stale reports now.
    stale: bool,
    /// Every waitpid of `run`/`run_until` goes through it, so that a task
    /// that stops again at once cannot hide the others ([`ptrace::Reaper`]).
    reaper: Reaper,
}

impl<'o> Tracer<'o> {
    pub fn new(config: Config, observer: &'o mut dyn Observer) -> Tracer<'o> {
        Tracer {
            config,
            observer,
            tasks: HashMap::new(),
            stats: Stats::default(),
            main: None,
            spawned: None,
            main_execed: false,
            self_stopped: false,
            stale: false,
            reaper: Reaper::new(),
        }
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The waitpid reports taken but not handled yet, and the way to wait
    /// for more (see [`Tracer::run_until`]).
    pub fn reaper(&mut self) -> &mut Reaper {
        &mut self.reaper
    }

    /// Whether `tid` is inside a guarded call (its mask is ours, not its own,
    /// until the call's exit stop). Such a task must not be detached, nor
    /// interrupted (an interrupt sets TIF_SIGPENDING: the verifier would give
    /// up with EAGAIN): let it reach its exit stop first (attach's detach).
    pub fn in_call(&self, tid: Tid) -> bool {
        self.tasks.get(&tid).is_some_and(|t| t.call.is_some())
    }

    /// Spawns `cmd` traced, with the seccomp filter; it becomes the main
    /// process whose exit ends [`Tracer::run`]. Call on the thread that runs
    /// the loop.
    pub fn spawn(&mut self, cmd: &Command) -> Result<Tid, Error> {
        let cmd = cmd.clone().guarded_commands(&self.config.policy.commands);
        let spawned = spawn::spawn(&cmd)?;
        let pid = spawned.pid;
        self.spawned = Some(spawned);
        self.main = Some(pid);
        self.adopt(pid, pid);
        Ok(pid)
    }

    /// Registers a task that the caller has PTRACE_SEIZEd itself (attach: one
    /// call per thread of the target). `pid` is its thread-group id. The
    /// first adopted process leader becomes the main process.
    pub fn adopt(&mut self, tid: Tid, pid: Tid) {
        if self.main.is_none() && tid == pid {
            self.main = Some(pid);
            self.main_execed = true;
        }
        self.tasks.insert(tid, Task::new(pid, true));
        self.stats.tasks += 1;
    }

    /// Runs until the main process is gone; returns how it ended.
    pub fn run(&mut self) -> Result<ExitStatus, Error> {
        loop {
            let (tid, status) = match self.reaper.wait().map_err(Error::Wait)? {
                Reaped::Report(tid, status) => (tid, status),
                Reaped::Interrupted => continue,
                Reaped::NothingLeft => {
                    return Err(Error::Setup {
                        what: "waiting for the program",
                        source: std::io::Error::from_raw_os_error(libc::ECHILD),
                    })
                }
            };
            if let Some(end) = self.dispatch(tid, status)? {
                return Ok(end);
            }
            if let Some(end) = self.drain_stale()? {
                return Ok(end);
            }
        }
    }

    /// Like [`Tracer::run`], but also returns `Ok(None)` when `stop` is set
    /// and the wait was interrupted by a signal (send the tracer thread a
    /// signal with a no-SA_RESTART handler after setting `stop`). The tasks
    /// are still traced and stopped where they were: detaching is up to the
    /// caller (attach: restore masks of tasks in a call, then PTRACE_DETACH).
    /// Stops already taken from the kernel and not handled yet stay in
    /// [`Tracer::reaper`]: wait through it afterwards, or they are lost.
    pub fn run_until(&mut self, stop: &AtomicBool) -> Result<Option<ExitStatus>, Error> {
        loop {
            if stop.load(Ordering::Relaxed) {
                return Ok(None);
            }
            let (tid, status) = match self.reaper.wait().map_err(Error::Wait)? {
                Reaped::Report(tid, status) => (tid, status),
                Reaped::Interrupted => continue, // check the flag
                Reaped::NothingLeft => {
                    return Err(Error::Wait(std::io::Error::from_raw_os_error(libc::ECHILD)))
                }
            };
            if let Some(end) = self.dispatch(tid, status)? {
                return Ok(Some(end));
            }
            if let Some(end) = self.drain_stale()? {
                return Ok(Some(end));
            }
        }
    }

    /// Handles one waitpid report. `Some(status)` when the main process ended.
    pub fn dispatch(
        &mut self,
        tid: Tid,
        status: ptrace::WaitStatus,
    ) -> Result<Option<ExitStatus>, Error> {
        let stop = match stop::decode(tid, status) {
            Ok(s) => s,
            Err(e) if e.is_gone() => {
                self.forget(tid);
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        };
        if let Stop::Exited(status) = stop {
            return self.exited(tid, status);
        }
        match self.handle(tid, stop) {
            Ok(()) => {}
            Err(e) if e.is_gone() => self.forget(tid),
            Err(e) => {
                // One misbehaving request must not wedge the whole program:
                // say so and let the task go on.
                log::error!("{e}; letting thread {tid} continue");
                let _ = ptrace::resume(tid, Resume::Cont, 0);
            }
        }
        Ok(None)
    }

    /// After we stopped ourselves for Ctrl-Z and the shell continued us, the
    /// reports waiting in the kernel were made before that SIGCONT: a
    /// signal-delivery-stop for a stop signal that the SIGCONT would have
    /// flushed had it still been pending (inject it now and the task stops
    /// for good), or a group-stop of another task of the job (stopping
    /// ourselves again would make `fg` look like it did nothing). Handle them
    /// with that in mind, then go back to normal.
    fn drain_stale(&mut self) -> Result<Option<ExitStatus>, Error> {
        if !std::mem::take(&mut self.self_stopped) {
            return Ok(None);
        }
        self.stale = true;
        let result = loop {
            // Reports the reaper has taken but not handed out yet are as
            // old as the ones still waiting in the kernel.
            match self.reaper.try_take() {
                Ok(Some((tid, status))) => match self.dispatch(tid, status) {
                    Ok(None) => continue,
                    other => break other,
                },
                Ok(None) => break Ok(None),
                Err(e) => break Err(Error::Wait(e)),
            }
        };
        self.stale = false;
        result
    }

    fn forget(&mut self, tid: Tid) {
        self.tasks.remove(&tid);
    }

    fn emit(&mut self, event: Event) {
        self.observer.event(&event);
    }

    fn exited(&mut self, tid: Tid, status: ExitStatus) -> Result<Option<ExitStatus>, Error> {
        let pid = self.tasks.remove(&tid).map_or(tid, |t| t.pid);
        self.emit(Event::TaskExit { pid, tid, status });
        if Some(tid) != self.main {
            return Ok(None);
        }
        if !self.main_execed {
            if let Some((stage, source)) = self.spawned.as_ref().and_then(Spawned::failure) {
                let spawned = self.spawned.as_ref().expect("checked above");
                return Err(match stage {
                    ChildStage::Exec => Error::CannotRun {
                        program: spawned.path.display().to_string(),
                        source,
                    },
                    ChildStage::Seccomp => Error::Setup {
                        what: "installing the seccomp filter",
                        source,
                    },
                    ChildStage::NoNewPrivs => Error::Setup {
                        what: "setting no_new_privs",
                        source,
                    },
                });
            }
        }
        self.emit(Event::ChildExit { pid: tid, status });
        Ok(Some(status))
    }

    /// The task's state, registering a task we have not heard of: the first
    /// stop of a new task can come before its creator's clone/fork event.
    fn task(&mut self, tid: Tid) -> &mut Task {
        self.tasks
            .entry(tid)
            .or_insert_with(|| Task::new(tid, false))
    }

    fn resume_how(&self, tid: Tid) -> Resume {
        let awaiting_exit = self
            .tasks
            .get(&tid)
            .and_then(|t| t.call)
            .is_some_and(|c| c.phase == Phase::AwaitingExit);
        if awaiting_exit || self.config.mode == StopMode::EverySyscall {
            Resume::Syscall
        } else {
            Resume::Cont
        }
    }

    fn resume(&mut self, tid: Tid, signal: i32) -> Result<(), PtraceError> {
        ptrace::resume(tid, self.resume_how(tid), signal)
    }

    fn handle(&mut self, tid: Tid, stop: Stop) -> Result<(), PtraceError> {
        match stop {
            Stop::Seccomp => {
                self.stats.seccomp_stops += 1;
                match ptrace::syscall_info(tid)? {
                    SyscallInfo::Seccomp { arch, nr, args, .. }
                    | SyscallInfo::Entry { arch, nr, args } => {
                        self.syscall_entry(tid, arch, nr, args)
                    }
                    _ => self.resume(tid, 0),
                }
            }
            Stop::Syscall => {
                self.stats.syscall_stops += 1;
                match ptrace::syscall_info(tid)? {
                    SyscallInfo::Entry { arch, nr, args }
                    | SyscallInfo::Seccomp { arch, nr, args, .. } => {
                        self.syscall_entry(tid, arch, nr, args)
                    }
                    SyscallInfo::Exit { rval, .. } => self.syscall_exit(tid, rval),
                    SyscallInfo::None => self.resume(tid, 0),
                }
            }
            Stop::SignalDelivery(signal) => {
                if let Some(n) = self.stats.signals.get_mut(signal as usize) {
                    *n += 1;
                }
                let pid = self.task(tid).pid;
                if self.stale && is_stop_signal(signal) {
                    log::debug!(
                        "pid {pid} tid {tid}: dropping {}: a SIGCONT came after it",
                        spinguard_common::signals::signal_name(signal)
                    );
                    return self.resume(tid, 0);
                }
                self.emit(Event::Signal { pid, tid, signal });
                self.resume(tid, signal)
            }
            Stop::GroupStop(signal) => self.group_stop(tid, signal),
            Stop::EventStop => {
                let task = self.task(tid);
                let pid = task.pid;
                if std::mem::take(&mut task.group_stopped) {
                    self.emit(Event::Continued { pid, tid });
                }
                self.resume(tid, 0)
            }
            Stop::Clone { new } => self.new_task(tid, new, TaskKind::Thread),
            Stop::Fork { new } => self.new_task(tid, new, TaskKind::Fork),
            Stop::Vfork { new } => self.new_task(tid, new, TaskKind::Vfork),
            Stop::Exec { former } => self.exec(tid, former),
            Stop::VforkDone | Stop::ExitEvent => self.resume(tid, 0),
            Stop::Exited(_) => unreachable!("handled by dispatch"),
        }
    }

    fn syscall_entry(
        &mut self,
        tid: Tid,
        arch: u32,
        nr: u64,
        args: [u64; 6],
    ) -> Result<(), PtraceError> {
        let task = self.task(tid);
        let pid = task.pid;
        if let Some(call) = task.call.as_mut() {
            if call.phase == Phase::Restarting {
                // Our own restart coming round again: the same call, and the
                // mask we hold is ours, not the thread's.
                call.attempts += 1;
                call.phase = Phase::AwaitingExit;
                return self.resume(tid, 0);
            }
            // An entry while we waited for an exit: the exit was lost (cannot
            // happen with a well-behaved kernel). Give the thread its mask back.
            let saved = call.saved;
            task.call = None;
            ptrace::set_sigmask(tid, saved)?;
        }
        let policy = &self.config.policy;
        if let Some(cmd) = policy.guarded_command(arch, nr, &args) {
            let saved = ptrace::get_sigmask(tid)?;
            ptrace::set_sigmask(tid, policy.held_mask(saved))?;
            self.task(tid).call = Some(InCall {
                saved,
                start: Instant::now(),
                cmd,
                nr,
                args,
                attempts: 1,
                restarts: 0,
                phase: Phase::AwaitingExit,
            });
            self.emit(Event::GuardStart { pid, tid, cmd });
        }
        self.resume(tid, 0)
    }

    fn syscall_exit(&mut self, tid: Tid, rval: i64) -> Result<(), PtraceError> {
        let task = self.task(tid);
        let pid = task.pid;
        let Some(call) = task.call.filter(|c| c.phase == Phase::AwaitingExit) else {
            return self.resume(tid, 0);
        };
        let verdict = self.config.policy.at_exit(rval, call.restarts);
        if verdict == ExitVerdict::Restart {
            let mut regs = ptrace::get_regs(tid)?;
            regs.rewind_syscall(call.nr, &call.args);
            ptrace::set_regs(tid, &regs)?;
            if let Some(c) = self.task(tid).call.as_mut() {
                c.restarts += 1;
                c.phase = Phase::Restarting;
            }
            self.stats.restarts += 1;
            self.emit(Event::Restart {
                pid,
                tid,
                cmd: call.cmd,
                errno: (-rval) as i32,
            });
            return self.resume(tid, 0);
        }
        let guard = self.config.policy.signals;
        let held_back = SigSet::from_bits(procfs::pending_signals(tid).bits() & guard.bits());
        ptrace::set_sigmask(tid, call.saved)?;
        self.task(tid).call = None;
        self.stats.guarded_calls += 1;
        let gave_up = verdict == ExitVerdict::GiveUp;
        if gave_up {
            self.stats.gave_up += 1;
        }
        self.emit(Event::Guarded(GuardedCall {
            pid,
            tid,
            cmd: call.cmd,
            result: rval,
            elapsed: call.start.elapsed(),
            attempts: call.attempts,
            restarts: call.restarts,
            gave_up,
            guard,
            held_back,
        }));
        self.resume(tid, 0)
    }

    fn group_stop(&mut self, tid: Tid, signal: i32) -> Result<(), PtraceError> {
        self.stats.group_stops += 1;
        let task = self.task(tid);
        task.group_stopped = true;
        let pid = task.pid;
        self.emit(Event::GroupStop { pid, tid, signal });
        // Stay stopped, but let SIGCONT (or SIGKILL) wake the task: with
        // PTRACE_CONT it would run on, stop or no stop; left alone it would
        // not notice SIGCONT until we resumed it.
        ptrace::listen(tid)?;
        // Any task of the job counts, not only the main process: a shell that
        // is inside vfork() cannot stop until its child execs, but the child
        // can, and without us stopping too nobody would tell the shell.
        let terminal_stop = matches!(signal, libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU);
        if self.config.follow_terminal_stops
            && terminal_stop
            && !self.stale
            && in_our_process_group(tid)
        {
            log::info!(
                "pid {pid} stopped by {}: stopping too",
                spinguard_common::signals::signal_name(signal)
            );
            // SAFETY: plain kill(2) on ourselves, then on our child. The stop
            // takes effect as this thread returns from kill; we run again when
            // the shell sends SIGCONT (fg/bg), and pass it on in case it was
            // sent to us alone.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGSTOP);
                if let Some(main) = self.main {
                    libc::kill(main, libc::SIGCONT);
                }
            }
            self.self_stopped = true;
        }
        Ok(())
    }

    fn new_task(&mut self, parent: Tid, new: Tid, kind: TaskKind) -> Result<(), PtraceError> {
        let pid = match kind {
            TaskKind::Thread => self.task(parent).pid,
            TaskKind::Fork | TaskKind::Vfork => new,
        };
        let task = self.task(new);
        task.pid = pid; // its first stop may have registered it with a guess
        if !std::mem::replace(&mut task.announced, true) {
            self.stats.tasks += 1;
            self.emit(Event::NewTask {
                pid,
                tid: new,
                parent,
                kind,
            });
        }
        self.resume(parent, 0)
    }

    fn exec(&mut self, tid: Tid, former: Tid) -> Result<(), PtraceError> {
        // ptrace(2), "execve(2) under ptrace": a non-leader that execs takes
        // the leader's tid; the other threads are gone; the old leader's
        // death is not reported. Whatever we knew under `former` is stale.
        if former != tid {
            self.tasks.remove(&former);
        }
        let task = self.task(tid);
        task.pid = tid;
        task.call = None;
        task.group_stopped = false;
        task.announced = true;
        if Some(tid) == self.main && !self.main_execed {
            self.main_execed = true;
            self.spawned = None; // closes the report pipe
        }
        self.stats.execs += 1;
        self.emit(Event::Exec {
            pid: tid,
            former_tid: former,
        });
        self.resume(tid, 0)
    }
}
