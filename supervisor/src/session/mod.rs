//! The one wait loop, for `run` and `attach` alike.
//!
//! A [`Session`] owns the tracees of the thread that created it: the fair
//! [`Reaper`] every waitpid goes through, the per-task bookkeeping, and what
//! every tracer owes its tracees whatever the engine: new threads and
//! processes, exec, exits, job control, signals passed on. What a seccomp,
//! syscall or signal-delivery stop means is the [`Engine`]'s business.
//!
//! A session is not `Send`: ptrace answers only the thread that attached.
//! Several sessions may live in one process, each on its own thread (every
//! wait is `__WNOTHREAD`), each stoppable from anywhere through its
//! [`StopHandle`].
//!
//! | file | what |
//! | --- | --- |
//! | `mod.rs` | the loop: [`Session::run`], tasks, exits, job control |
//! | [`spawn`] | starting a program traced (`run`) |
//! | [`target`], `seize.rs` | checking and seizing a running process (`attach`) |
//! | `detach.rs` | letting go, every mask exact |
//! | `jobs.rs` | job control: group-stops, Ctrl-Z |
//! | [`handle`] | stopping a session from another thread |
//! | [`forward`] | `run`'s signal forwarding to its child |

mod detach;
pub mod forward;
pub mod handle;
mod jobs;
mod seize;
pub mod spawn;
pub mod target;

pub use detach::Detached;
pub use handle::{StopHandle, StopReason};
pub use seize::Seized;
pub use target::Target;

use crate::engine::{Cx, Engine};
use crate::error::Error;
use crate::event::{Event, Observer, Stats, TaskKind};
use crate::exit::ExitStatus;
use crate::sys::ptrace::{PtraceError, Resume};
use crate::sys::signal::ChildSignaller;
use crate::sys::wait::{Reaped, Reaper, WaitStatus};
use crate::sys::Tid;
use crate::tracee::{self, Report, Stop, Stopped, SyscallState};
use handle::Stopper;
use spinguard_common::signals::signal_name;
use std::collections::HashMap;
use std::marker::PhantomData;

/// How a session's [`Session::run`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// The main process ended (the program `run` started, or the process
    /// attached to).
    Exited(ExitStatus),
    /// Its [`StopHandle`] asked it to stop; every task is still traced.
    Stopped(StopReason),
}

#[derive(Clone, Copy, Debug)]
struct Task {
    /// Thread-group id (process id) this task belongs to.
    pid: Tid,
    sys: SyscallState,
    group_stopped: bool,
    /// Counted and reported as a new task (its creator's event was seen, or
    /// it was seized or spawned).
    announced: bool,
    /// Seized from outside; its first stop (the seize interrupt's) not seen.
    first_stop: bool,
}

impl Task {
    fn new(pid: Tid, announced: bool) -> Task {
        Task {
            pid,
            sys: SyscallState::default(),
            group_stopped: false,
            announced,
            first_stop: false,
        }
    }
}

/// Whether a task its creator's event names is still to be served.
///
/// The new task's own reports can come before its creator's event (the
/// reaper serves tasks in turn): its first stop, and even its exit,
/// reaped already. Registered again then, it would be a task that never
/// reports, and a detach would wait for it forever. A task not reaped
/// yet (alive, or a zombie whose exit is still to come) still exists.
fn is_alive(tasks: &HashMap<Tid, Task>, tid: Tid) -> bool {
    tasks.contains_key(&tid) || crate::sys::signal::task_exists(tid)
}

/// How long threads already stopped are kept at their stop while the
/// others stop, when seizing (their first stop) and detaching (the stop they
/// are let go at). A thread let go at once competes for the CPU with the
/// tracer: 100 busy threads on 2 cores left it 1/101 of the time, and a
/// seize or a detach took most of a second instead of milliseconds. Bounded,
/// because a thread in uninterruptible sleep stops only when it wakes, and
/// the others must not wait for it.
const HOLD_FOR: std::time::Duration = std::time::Duration::from_millis(100);

const _: () = {
    const fn send_and_sync<T: Send + Sync>() {}
    send_and_sync::<StopHandle>();
};

/// The tracees of one thread and the loop that serves them. Not `Send`:
///
/// ```compile_fail
/// fn on_another_thread<T: Send>(_: T) {}
/// on_another_thread(spinguard_supervisor::session::Session::new());
/// ```
pub struct Session {
    tasks: HashMap<Tid, Task>,
    /// Every waitpid goes through it: see [`Reaper`] for why.
    reaper: Reaper,
    /// The process whose end ends [`Session::run`].
    main: Option<Tid>,
    /// The main process has exec'd (always true for a seized one).
    main_execed: bool,
    spawned: Option<spawn::Spawned>,
    signaller: Option<ChildSignaller>,
    follow_terminal_stops: bool,
    /// We stopped ourselves for a terminal stop and have been continued:
    /// the reports already queued predate that SIGCONT (see `drain_stale`).
    self_stopped: bool,
    /// Handling those stale reports now.
    stale: bool,
    stopper: Option<Stopper>,
    /// Seized threads kept at their first stop until the seize is complete
    /// (see `seize.rs`).
    held: Vec<Stopped>,
    holding: bool,
    stats: Stats,
    _bound: PhantomData<*const ()>,
}

impl Default for Session {
    fn default() -> Self {
        Session::new()
    }
}

impl Session {
    /// A session owned by the calling thread.
    pub fn new() -> Session {
        Session {
            tasks: HashMap::new(),
            reaper: Reaper::new(),
            main: None,
            main_execed: false,
            spawned: None,
            signaller: None,
            follow_terminal_stops: false,
            self_stopped: false,
            stale: false,
            stopper: None,
            held: Vec::new(),
            holding: false,
            stats: Stats::default(),
            _bound: PhantomData,
        }
    }

    /// When a task of the spawned program's job group-stops on
    /// SIGTSTP/SIGTTIN/SIGTTOU (Ctrl-Z), stop ourselves too, so the shell
    /// sees its job stop and gives the terminal back; when continued,
    /// continue the program. Only sensible in the foreground of a terminal
    /// ([`crate::sys::in_foreground_of_terminal`]).
    pub fn follow_terminal_stops(&mut self, on: bool) {
        self.follow_terminal_stops = on;
    }

    /// The handle that stops this session from any thread (made on first
    /// use: it forks the waker, see [`handle`]).
    pub fn handle(&mut self) -> Result<StopHandle, Error> {
        if self.stopper.is_none() {
            self.with_handle(StopHandle::new())?;
        }
        Ok(self.stopper.as_ref().expect("made above").handle())
    }

    /// Makes `handle` (made beforehand, with [`StopHandle::new`]) the one
    /// that stops this session. A session has one handle: a second call
    /// replaces the first.
    pub fn with_handle(&mut self, handle: StopHandle) -> Result<(), Error> {
        self.stopper = Some(Stopper::new(handle).map_err(Error::setup("starting the waker"))?);
        Ok(())
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Tasks traced now.
    pub fn traced(&self) -> usize {
        self.tasks.len()
    }

    /// A signal sender for the spawned program (for `run`'s forwarder).
    pub fn child_signaller(&self) -> Option<ChildSignaller> {
        self.signaller.clone()
    }

    /// Makes a blocking wait end at `at` (the waker, nudged), or false when
    /// this session has no waker: wait by polling then.
    fn wake_at(&mut self, at: std::time::Instant) -> bool {
        match self.stopper.as_mut() {
            Some(s) => match s.wake_at(at) {
                Ok(()) => true,
                Err(e) => {
                    log::debug!("no waker ({e}): polling");
                    false
                }
            },
            None => false,
        }
    }

    fn cancel_wake(&mut self) {
        if let Some(s) = &mut self.stopper {
            s.cancel_wake();
        }
    }

    fn stop_requested(&self) -> Option<StopReason> {
        self.stopper.as_ref().and_then(Stopper::requested)
    }

    /// Serves stops until the main process ends or a stop is asked for.
    pub fn run(
        &mut self,
        engine: &mut dyn Engine,
        observer: &mut dyn Observer,
    ) -> Result<End, Error> {
        loop {
            if let Some(reason) = self.stop_requested() {
                return Ok(End::Stopped(reason));
            }
            if let Some(end) = self.next(engine, observer)? {
                return Ok(end);
            }
            if let Some(end) = self.drain_stale(engine, observer)? {
                return Ok(end);
            }
        }
    }

    /// Waits for one report and handles it.
    fn next(
        &mut self,
        engine: &mut dyn Engine,
        observer: &mut dyn Observer,
    ) -> Result<Option<End>, Error> {
        match self.reaper.wait().map_err(Error::Wait)? {
            Reaped::Report(tid, status) => self.dispatch(engine, observer, tid, status),
            Reaped::NothingLeft => {
                Err(Error::Wait(std::io::Error::from_raw_os_error(libc::ECHILD)))
            }
        }
    }

    /// Whether a report is about our waker rather than a tracee.
    fn is_waker(&mut self, tid: Tid, status: WaitStatus) -> bool {
        let exited = matches!(status, WaitStatus::Exited(_));
        self.stopper
            .as_mut()
            .is_some_and(|s| s.is_waker(tid, exited))
    }

    /// Decodes a report, keeping the task's syscall bookkeeping.
    fn decode(&mut self, tid: Tid, status: WaitStatus) -> Option<Report> {
        let mut sys = self.tasks.get(&tid).map(|t| t.sys).unwrap_or_default();
        let report = match tracee::decode(tid, status, &mut sys) {
            Ok(r) => r,
            // Killed meanwhile: its exit comes later.
            Err(e) if e.is_gone() => return None,
            Err(e) => {
                log::error!("{e}; letting thread {tid} continue");
                let _ = Stopped::new(tid).resume(Resume::Cont, 0);
                return None;
            }
        };
        if let Some(Report::Stopped(..)) = report {
            self.task(tid).sys = sys;
        }
        report
    }

    /// Handles one waitpid report. `Some` when the main process ended.
    fn dispatch(
        &mut self,
        engine: &mut dyn Engine,
        observer: &mut dyn Observer,
        tid: Tid,
        status: WaitStatus,
    ) -> Result<Option<End>, Error> {
        if self.is_waker(tid, status) {
            return Ok(None);
        }
        match self.decode(tid, status) {
            None => Ok(None),
            Some(Report::Exited(tid, status)) => self.exited(engine, observer, tid, status),
            Some(Report::Stopped(task, stop)) => {
                match self.handle_stop(engine, observer, task, stop) {
                    Ok(()) => {}
                    Err(e) if e.is_gone() => {}
                    Err(e) => {
                        // One misbehaving request must not wedge the whole
                        // program: say so and let the task go on.
                        log::error!("{e}; letting thread {tid} continue");
                        let _ = Stopped::new(tid).resume(Resume::Cont, 0);
                    }
                }
                Ok(None)
            }
        }
    }

    /// The task's state, registering a task we have not heard of: the first
    /// stop of a new task can come before its creator's clone/fork event.
    fn task(&mut self, tid: Tid) -> &mut Task {
        self.tasks
            .entry(tid)
            .or_insert_with(|| Task::new(tid, false))
    }

    fn exited(
        &mut self,
        engine: &mut dyn Engine,
        observer: &mut dyn Observer,
        tid: Tid,
        status: ExitStatus,
    ) -> Result<Option<End>, Error> {
        let Some(task) = self.tasks.remove(&tid) else {
            return Ok(None); // not ours (any more)
        };
        let pid = task.pid;
        engine.left(tid);
        observer.event(&Event::TaskExit { pid, tid, status });
        let Some(main) = self.main else {
            return Ok(None);
        };
        // The main process ended: its leader's exit, or, when its leader is a
        // zombie we never traced (it called pthread_exit), its last thread's.
        let last_of_main = pid == main
            && !self.tasks.contains_key(&main)
            && !self.tasks.values().any(|t| t.pid == main);
        if tid != main && !last_of_main {
            return Ok(None);
        }
        if let Some(s) = &self.signaller {
            s.reaped();
        }
        if !self.main_execed {
            if let Some(e) = self.spawned.as_ref().and_then(spawn::Spawned::error) {
                return Err(e);
            }
        }
        observer.event(&Event::ChildExit { pid: main, status });
        Ok(Some(End::Exited(status)))
    }

    fn handle_stop(
        &mut self,
        engine: &mut dyn Engine,
        observer: &mut dyn Observer,
        task: Stopped,
        stop: Stop,
    ) -> Result<(), PtraceError> {
        let tid = task.tid();
        let pid = self.task(tid).pid;
        // The first stop after a seize is the interrupt's, or a group-stop
        // for a process that was stopped already.
        let first = std::mem::take(&mut self.task(tid).first_stop);
        let deliver = match stop {
            Stop::Group(sig) => return self.group_stop(observer, task, pid, sig),
            Stop::Interrupt => {
                let continued = std::mem::take(&mut self.task(tid).group_stopped);
                if continued {
                    observer.event(&Event::Continued { pid, tid });
                }
                let mut cx = Cx {
                    observer,
                    stats: &mut self.stats,
                };
                if first {
                    engine.first_stop(&mut cx, &task, pid)?;
                    if self.holding {
                        self.held.push(task);
                        return Ok(());
                    }
                } else {
                    engine.stop(&mut cx, &task, pid, &stop)?;
                }
                0
            }
            Stop::Clone(new) => {
                self.new_task(engine, observer, tid, new, TaskKind::Thread);
                0
            }
            Stop::Fork(new) => {
                self.new_task(engine, observer, tid, new, TaskKind::Fork);
                0
            }
            Stop::Vfork(new) => {
                self.new_task(engine, observer, tid, new, TaskKind::Vfork);
                0
            }
            Stop::Exec { former } => {
                self.exec(engine, observer, tid, former);
                0
            }
            Stop::VforkDone | Stop::Exit => 0,
            Stop::Seccomp { .. } | Stop::SyscallEntry(_) | Stop::SyscallExit { .. } => {
                if matches!(stop, Stop::Seccomp { .. }) {
                    self.stats.seccomp_stops += 1;
                } else {
                    self.stats.syscall_stops += 1;
                }
                let mut cx = Cx {
                    observer,
                    stats: &mut self.stats,
                };
                engine.stop(&mut cx, &task, pid, &stop)?
            }
            Stop::Signal(sig) => {
                if let Some(n) = self.stats.signals.get_mut(sig as usize) {
                    *n += 1;
                }
                if self.stale && tracee::is_stopping_signal(sig) {
                    log::debug!(
                        "pid {pid} tid {tid}: dropping {}: a SIGCONT came after it",
                        signal_name(sig)
                    );
                    0
                } else {
                    observer.event(&Event::Signal {
                        pid,
                        tid,
                        signal: sig,
                    });
                    let mut cx = Cx {
                        observer,
                        stats: &mut self.stats,
                    };
                    engine.stop(&mut cx, &task, pid, &stop)?
                }
            }
        };
        let how = engine.resume_mode(tid);
        self.task(tid).sys.resumed(how);
        task.resume(how, deliver)
    }

    fn new_task(
        &mut self,
        engine: &mut dyn Engine,
        observer: &mut dyn Observer,
        parent: Tid,
        new: Tid,
        kind: TaskKind,
    ) {
        let pid = match kind {
            TaskKind::Thread => self.task(parent).pid,
            TaskKind::Fork | TaskKind::Vfork => new,
        };
        if !is_alive(&self.tasks, new) {
            self.stats.tasks += 1;
            return;
        }
        let task = self.task(new);
        task.pid = pid; // its first stop may have registered it with a guess
        if !std::mem::replace(&mut task.announced, true) {
            self.stats.tasks += 1;
            engine.joined(new, pid);
            observer.event(&Event::NewTask {
                pid,
                tid: new,
                parent,
                kind,
            });
        }
    }

    fn exec(
        &mut self,
        engine: &mut dyn Engine,
        observer: &mut dyn Observer,
        tid: Tid,
        former: Tid,
    ) {
        // ptrace(2), "execve(2) under ptrace": a non-leader that execs takes
        // the leader's tid; the other threads are gone; the old leader's
        // death is not reported. Whatever we knew under `former` is stale.
        let announced = self.tasks.get(&former).is_some_and(|t| t.announced);
        if former != tid {
            self.tasks.remove(&former);
        }
        let task = self.task(tid);
        task.pid = tid;
        task.group_stopped = false;
        task.announced |= announced;
        // The event comes from inside execve: its exit stop (if asked for)
        // is next.
        task.sys.in_syscall = true;
        engine.exec(tid, former);
        if Some(tid) == self.main && !self.main_execed {
            self.main_execed = true;
            self.spawned = None; // closes the report pipe
        }
        self.stats.execs += 1;
        observer.event(&Event::Exec {
            pid: tid,
            former_tid: former,
        });
    }
}
