//! Tracing a process we did not start: checking the target, seizing every
//! thread, the stop loop with a wake-up, and a detach that leaves the process
//! exactly as it was. `attach` runs on it; what happens at each stop is an
//! [`Engine`]'s business.
//!
//! Seizing: PTRACE_SEIZE each tid in /proc/PID/task, PTRACE_INTERRUPT it (a
//! seized thread runs on without stops until then; resuming it from that
//! first stop with PTRACE_SYSCALL is what starts the syscall stops), and wait
//! until every seized thread has reported a stop; then list the tasks again,
//! until a listing shows nothing new. PTRACE_O_TRACECLONE on each thread
//! catches the threads it creates after its seize. A clone that was already
//! under way when its caller was seized is not caught by the option (kernel
//! `kernel_clone()` decides whether to trace the child before copying it), but
//! it has finished, child listed in /proc, by the time its caller reaches the
//! first stop, which is taken on the way back to user space: hence "wait for
//! every first stop, then list again". No thread escapes.
//!
//! Every waitpid goes through one [`Reaper`] (seize, stop loop and detach
//! alike): plain `waitpid(-1)` keeps reporting a thread that stops again at
//! once (any busy thread under PTRACE_SYSCALL) and never the others, which
//! left 30 busy threads unseized forever. The stop flag of [`Wakeup`] is
//! looked at between any two stops, in the seize too: a SIGINT/SIGTERM/SIGHUP
//! that comes before every thread is seized ends the seize (a deadline, only
//! once the seize has overrun it by [`SEIZE_OVERRUN`]), and what was seized
//! is detached.
//!
//! Detaching: PTRACE_DETACH needs the tracee stopped. A task inside a call the
//! engine must finish (a guarded load: its mask is ours until the exit stop)
//! is not interrupted; it is detached at its first stop after the call. Every
//! other task first gets a short grace period to stop by itself (most threads
//! of a busy process make a syscall within microseconds), then a
//! PTRACE_INTERRUPT. At its stop: a signal-delivery-stop detaches with that
//! signal (so it is delivered, not lost); a group-stop detaches with none and
//! stays stopped, as it would without us ("__ptrace_unlink() ... reinstate
//! JOBCTL_STOP_PENDING if group stop is in effect", kernel/ptrace.c); a clone
//! event adds the new thread, whose own first stop comes next; a
//! syscall-enter-stop is never detached at (see `detach`: the call would run
//! with TIF_SIGPENDING set, and a load would fail with EAGAIN).
//!
//! Our own interrupts must not fail a load either: one that lands inside the
//! verifier makes it return EAGAIN; the first stop after the seize catches
//! that and runs the call again ([`undo_our_interruption`]).

use crate::exit::ExitStatus;
use crate::ptrace::{
    self, Options, PtraceError, Reaped, Reaper, Resume, SyscallInfo, Tid, WaitStatus,
};
use crate::stop::{self, Stop};
use crate::{arch, procfs, Error, GuardPolicy};
use spinguard_common::bpf;
use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Options for a seized process: follow its threads and execs, tell syscall
/// stops from SIGTRAP. No TRACEFORK/VFORK: the children it forks are not ours
/// to adopt (they keep running untraced). No EXITKILL: if we die, the target
/// must live on (the kernel detaches it).
pub const ATTACH_OPTIONS: Options = Options::TRACESYSGOOD
    .union(Options::TRACECLONE)
    .union(Options::TRACEEXEC);

/// How long, at detach, threads get to reach a stop by themselves before
/// they are interrupted (an interrupt can make an epoll_wait return EINTR, as
/// `strace -p` attaching does; a syscall stop does not).
const DETACH_GRACE: Duration = Duration::from_millis(20);

/// How long a seize may go on after the deadline has passed (see
/// `seize_all`); a signal ends it at once.
const SEIZE_OVERRUN: Duration = Duration::from_secs(1);

/// What runs each stop while attached.
pub trait Engine {
    /// Registers a thread the session has just seized.
    fn adopt(&mut self, tid: Tid, pid: Tid);
    /// Handles one stop (or exit) of a traced task and resumes it with
    /// PTRACE_SYSCALL. `Some` when the target process has ended.
    fn dispatch(&mut self, tid: Tid, status: WaitStatus) -> Result<Option<ExitStatus>, Error>;
    /// Whether the task is inside a call that must reach its exit stop before
    /// the task may be interrupted or detached.
    fn busy(&self, tid: Tid) -> bool;
    /// The stop at which `tid` is about to be detached (for counting).
    fn detaching(&mut self, _tid: Tid, _stop: &Stop) {}
}

impl Engine for crate::Tracer<'_> {
    fn adopt(&mut self, tid: Tid, pid: Tid) {
        crate::Tracer::adopt(self, tid, pid)
    }
    fn dispatch(&mut self, tid: Tid, status: WaitStatus) -> Result<Option<ExitStatus>, Error> {
        crate::Tracer::dispatch(self, tid, status)
    }
    fn busy(&self, tid: Tid) -> bool {
        self.in_call(tid)
    }
}

/// Why a process cannot be attached to.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("no process with pid {pid}")]
    NoSuchProcess { pid: Tid },
    #[error("pid {pid} is spinguard itself")]
    Ourselves { pid: Tid },
    #[error("pid {pid} ({name}) is a zombie: it has exited, and its parent (pid {parent}) has not reaped it yet")]
    Zombie { pid: Tid, name: String, parent: Tid },
    #[error("pid {pid} is a kernel thread")]
    KernelThread { pid: Tid },
    #[error("pid {pid} ({name}) is already traced by pid {tracer} ({tracer_name}): a thread can have one tracer only")]
    AlreadyTraced {
        pid: Tid,
        name: String,
        tracer: Tid,
        tracer_name: String,
    },
    #[error("not permitted to trace pid {pid} ({name}): {why}")]
    NotPermitted { pid: Tid, name: String, why: String },
    #[error("pid {pid} exited while we attached")]
    Exited { pid: Tid, status: ExitStatus },
    #[error("{0}")]
    Engine(#[from] Error),
}

impl From<PtraceError> for AttachError {
    fn from(e: PtraceError) -> Self {
        AttachError::Engine(e.into())
    }
}

/// What /proc says about the target before we touch it.
#[derive(Clone, Debug)]
pub struct Target {
    /// The process id (the thread-group id, also when a thread id was given).
    pub pid: Tid,
    /// The tid given, when it was a thread of `pid` rather than `pid` itself.
    pub given_thread: Option<Tid>,
    pub name: String,
    pub uid: u32,
}

/// `/proc/<tid>/status` as (field, value) lines.
fn status_of(tid: Tid) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{tid}/status")).ok()
}

fn field<'a>(status: &'a str, name: &str) -> Option<&'a str> {
    status.lines().find_map(|l| {
        l.strip_prefix(name)
            .and_then(|r| r.strip_prefix(':'))
            .map(str::trim)
    })
}

fn num(status: &str, name: &str) -> Option<i64> {
    field(status, name)?.split_whitespace().next()?.parse().ok()
}

/// The short name of a process (`comm`), or "?" when it is gone.
pub fn process_name(pid: Tid) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// The pid of the tracer of `tid`, 0 when none.
pub fn tracer_of(tid: Tid) -> Tid {
    status_of(tid)
        .and_then(|s| num(&s, "TracerPid"))
        .unwrap_or(0) as Tid
}

/// Checks the target: it exists, is a live user process, is not us, is not
/// traced by someone else. (Permission is only known when the seize is tried;
/// [`explain_eperm`] says why it failed.)
pub fn check_target(pid: Tid) -> Result<Target, AttachError> {
    if pid <= 0 {
        return Err(AttachError::NoSuchProcess { pid });
    }
    let status = status_of(pid).ok_or(AttachError::NoSuchProcess { pid })?;
    let tgid = num(&status, "Tgid").unwrap_or(pid as i64) as Tid;
    // SAFETY: getpid cannot fail.
    let me = unsafe { libc::getpid() };
    if tgid == me {
        return Err(AttachError::Ourselves { pid });
    }
    let status = if tgid != pid {
        status_of(tgid).ok_or(AttachError::NoSuchProcess { pid })?
    } else {
        status
    };
    let name = field(&status, "Name").unwrap_or("?").to_string();
    let state = field(&status, "State").unwrap_or("");
    if state.starts_with('Z') || state.starts_with('X') {
        // A zombie leader whose other threads still run is still a process.
        let live_threads = procfs::threads(tgid)
            .map(|t| t.into_iter().filter(|&t| t != tgid).count())
            .unwrap_or(0);
        if live_threads == 0 {
            return Err(AttachError::Zombie {
                pid: tgid,
                name,
                parent: num(&status, "PPid").unwrap_or(0) as Tid,
            });
        }
    }
    if field(&status, "Kthread") == Some("1") || num(&status, "PPid") == Some(2) || tgid == 2 {
        return Err(AttachError::KernelThread { pid: tgid });
    }
    let tracer = num(&status, "TracerPid").unwrap_or(0) as Tid;
    if tracer != 0 {
        return Err(AttachError::AlreadyTraced {
            pid: tgid,
            name,
            tracer,
            tracer_name: process_name(tracer),
        });
    }
    let uid = field(&status, "Uid")
        .and_then(|v| v.split_whitespace().nth(1)) // effective
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Ok(Target {
        pid: tgid,
        given_thread: (tgid != pid).then_some(pid),
        name,
        uid,
    })
}

/// linux/capability.h.
const CAP_SYS_PTRACE: u32 = 19;

/// Why PTRACE_SEIZE said EPERM, in the user's terms.
pub fn explain_eperm(target: &Target) -> AttachError {
    let tracer = tracer_of(target.pid);
    if tracer != 0 {
        return AttachError::AlreadyTraced {
            pid: target.pid,
            name: target.name.clone(),
            tracer,
            tracer_name: process_name(tracer),
        };
    }
    // SAFETY: geteuid cannot fail.
    let euid = unsafe { libc::geteuid() };
    let own = status_of(std::process::id() as Tid).unwrap_or_default();
    let cap_eff = field(&own, "CapEff")
        .and_then(|h| u64::from_str_radix(h, 16).ok())
        .unwrap_or(0);
    let has_cap_sys_ptrace = cap_eff & (1 << CAP_SYS_PTRACE) != 0;
    let scope = std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok());
    let why = if scope == Some(3) {
        "ptrace is disabled on this machine (kernel.yama.ptrace_scope = 3)".to_string()
    } else if !has_cap_sys_ptrace && euid != target.uid {
        format!(
            "spinguard runs as uid {euid} without CAP_SYS_PTRACE, and the process belongs to uid {} (run spinguard as root)",
            target.uid
        )
    } else if !has_cap_sys_ptrace && scope.unwrap_or(0) >= 1 {
        format!(
            "spinguard runs as uid {euid} without CAP_SYS_PTRACE, and kernel.yama.ptrace_scope = {} lets such a process trace only its own descendants (run spinguard as root)",
            scope.unwrap_or(0)
        )
    } else if !has_cap_sys_ptrace {
        format!(
            "spinguard runs as uid {euid} without CAP_SYS_PTRACE, and the process is not dumpable or changed credentials (setuid, file capabilities): run spinguard as root"
        )
    } else {
        "the kernel refused (a security module such as SELinux or AppArmor, or a process that is exiting)".to_string()
    };
    AttachError::NotPermitted {
        pid: target.pid,
        name: target.name.clone(),
        why,
    }
}

/// How the seize went.
#[derive(Clone, Copy, Debug)]
pub struct Seized {
    /// Threads traced once every one had stopped (auto-attached ones included).
    pub threads: usize,
    /// From the first PTRACE_SEIZE to the last first stop.
    pub elapsed: Duration,
    /// False when a stop signal (or a deadline long past) came before every
    /// thread was seized: the session is to be detached at once.
    pub complete: bool,
}

/// How the detach went.
#[derive(Clone, Copy, Debug, Default)]
pub struct Detached {
    pub threads: usize,
    /// Threads that were inside a call the engine had to let finish first.
    pub waited_for: usize,
    /// Threads that needed a PTRACE_INTERRUPT (did not stop within the grace).
    pub interrupted: usize,
    /// Threads detached in a group-stop (the process stays stopped, as it was
    /// asked to by whoever sent the stop signal).
    pub left_group_stopped: usize,
    pub elapsed: Duration,
}

/// A PTRACE_INTERRUPT that lands while the thread is inside the verifier
/// makes `signal_pending()` true (the interrupt is a signal wake-up), so the
/// load fails with EAGAIN (BPF_PROG_TEST_RUN with EINTR) because of us, and a
/// loader that does not retry would fail. The thread takes the interrupt's
/// stop on its way back from that syscall, before its code sees the result:
/// if the thread's last kernel entry was that bpf call (orig_rax; any later
/// entry, an interrupt included, would have overwritten it), run the call
/// again, as the kernel does for -ERESTARTNOINTR. `Some(cmd)` when it did.
fn undo_our_interruption(tid: Tid) -> Result<Option<u32>, PtraceError> {
    let mut regs = ptrace::get_regs(tid)?;
    let Some((nr, rval, arg0)) = regs.last_syscall() else {
        return Ok(None);
    };
    let cmd = arg0 as u32;
    if nr != arch::NR_BPF || !bpf::is_guarded(cmd) || !GuardPolicy::is_signal_failure(rval) {
        return Ok(None);
    }
    regs.rewind_syscall(nr, &[arg0, 0, 0, 0, 0, 0]);
    ptrace::set_regs(tid, &regs)?;
    Ok(Some(cmd))
}

/// At a syscall stop: the syscall number and arguments when it is an entry.
fn syscall_entry(tid: Tid) -> Result<Option<(u64, [u64; 6])>, PtraceError> {
    Ok(match ptrace::syscall_info(tid)? {
        SyscallInfo::Entry { nr, args, .. } => Some((nr, args)),
        _ => None,
    })
}

/// One traced process.
pub struct Session {
    pid: Tid,
    /// Every task we trace (a stop or exit of it may still be queued).
    known: HashSet<Tid>,
    /// Seized and interrupted, first stop not seen yet.
    pending: HashSet<Tid>,
    /// Every waitpid goes through it: see [`ptrace::Reaper`] for why.
    reaper: Reaper,
}

impl Session {
    pub fn pid(&self) -> Tid {
        self.pid
    }

    /// Seizes every thread of `target` for `engine`. On error, whatever was
    /// seized is detached again. When `wake` gets a signal before every
    /// thread is seized (or its deadline passed more than [`SEIZE_OVERRUN`]
    /// ago), seizing stops there ([`Seized::complete`] false): the caller's
    /// [`Session::run`] returns at once and [`Session::detach`] lets go of
    /// what was seized.
    pub fn attach(
        target: &Target,
        engine: &mut dyn Engine,
        wake: &Wakeup,
    ) -> Result<(Session, Seized), AttachError> {
        let mut session = Session {
            pid: target.pid,
            known: HashSet::new(),
            pending: HashSet::new(),
            reaper: Reaper::new(),
        };
        match session.seize_all(target, engine, wake) {
            Ok(seized) => Ok((session, seized)),
            Err(e) => {
                if !session.known.is_empty() && !matches!(e, AttachError::Exited { .. }) {
                    if let Err(d) = session.detach(engine) {
                        log::error!("detaching after a failed attach: {d}");
                    }
                }
                Err(e)
            }
        }
    }

    fn seize_all(
        &mut self,
        target: &Target,
        engine: &mut dyn Engine,
        wake: &Wakeup,
    ) -> Result<Seized, AttachError> {
        let start = Instant::now();
        let pid = target.pid;
        // SAFETY: getpid cannot fail.
        let me = unsafe { libc::getpid() };
        // A signal ends the seize at once. The deadline lets it finish
        // (milliseconds, even with 100 busy threads), so that a short --for
        // still means "seize, then let go" rather than depending on how
        // quickly we got here; but not for longer than SEIZE_OVERRUN, in case
        // it cannot finish (a thread in uninterruptible sleep never takes its
        // first stop).
        let cut_short =
            || wake.requested() && (wake.signal().is_some() || start.elapsed() >= SEIZE_OVERRUN);
        let mut complete = true;
        loop {
            if cut_short() {
                complete = false;
                break;
            }
            let tids = match procfs::threads(pid) {
                Ok(t) => t,
                Err(_) if self.known.is_empty() => return Err(AttachError::NoSuchProcess { pid }),
                Err(_) => Vec::new(), // gone: its exit is reported below
            };
            let mut new: Vec<Tid> = tids
                .into_iter()
                .filter(|t| !self.known.contains(t))
                .collect();
            // The leader first: an EPERM on it is about the process, not a thread.
            new.sort_by_key(|&t| (t != pid, t));
            if new.is_empty() && self.pending.is_empty() {
                break;
            }
            for tid in new {
                match ptrace::seize(tid, ATTACH_OPTIONS) {
                    Ok(()) => {
                        self.known.insert(tid);
                        self.pending.insert(tid);
                        engine.adopt(tid, pid);
                        match ptrace::interrupt(tid) {
                            Ok(()) => {}
                            Err(e) if e.is_gone() => {} // its exit is reported
                            Err(e) => return Err(e.into()),
                        }
                    }
                    Err(PtraceError::Gone { .. }) => {} // exited before we got to it
                    Err(PtraceError::Failed { source, .. })
                        if source.raw_os_error() == Some(libc::EPERM) =>
                    {
                        if tracer_of(tid) == me {
                            // Created by a thread we had seized already
                            // (TRACECLONE): ours, its first stop will come.
                            self.known.insert(tid);
                            self.pending.insert(tid);
                        } else {
                            // A thread on its way out (PF_EXITING refuses a
                            // seize) is no loss; any other refusal is.
                            let exiting = !status_of(tid).is_some_and(|s| {
                                !field(&s, "State").unwrap_or("").starts_with(['Z', 'X'])
                            });
                            if self.known.is_empty() || !exiting {
                                return Err(explain_eperm(target));
                            }
                        }
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            // Every seized thread's first stop: the clone it may have been in
            // the middle of is complete, its child listed. The threads whose
            // first stop has been seen run on under PTRACE_SYSCALL meanwhile
            // and stop at every syscall: the reaper serves them in turn with
            // the others, so their stops cannot hide the first stops still
            // to come, and `wake` is looked at between any two stops.
            while !self.pending.is_empty() && !cut_short() {
                let (tid, status) = match self.reaper.wait().map_err(Error::Wait)? {
                    Reaped::Report(tid, status) => (tid, status),
                    Reaped::Interrupted => continue, // a wake-up: look at the flag
                    Reaped::NothingLeft => {
                        // Nothing traced is left: every thread is gone.
                        self.pending.clear();
                        self.known.clear();
                        break;
                    }
                };
                let stop = self.note(tid, status);
                self.first_stop(tid, stop)?;
                if let Some(status) = engine.dispatch(tid, status)? {
                    if tid == pid {
                        return Err(AttachError::Exited { pid, status });
                    }
                }
            }
        }
        Ok(Seized {
            threads: self.known.len(),
            elapsed: start.elapsed(),
            complete,
        })
    }

    /// At any report: if it is the first stop of a thread we seized, undo
    /// what our interrupt may have done to a load ([`undo_our_interruption`]).
    fn first_stop(&mut self, tid: Tid, stop: Option<Stop>) -> Result<(), PtraceError> {
        if !self.pending.remove(&tid) || stop != Some(Stop::EventStop) {
            return Ok(());
        }
        match undo_our_interruption(tid) {
            Ok(Some(cmd)) => {
                log::info!(
                    "thread {tid} was inside {} when seized: running it again",
                    bpf::command_name(cmd)
                );
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) if e.is_gone() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Keeps the set of traced tasks up to date from one waitpid report.
    fn note(&mut self, tid: Tid, status: WaitStatus) -> Option<Stop> {
        match stop::decode(tid, status) {
            Ok(Stop::Exited(s)) => {
                self.known.remove(&tid);
                Some(Stop::Exited(s))
            }
            Ok(s) => {
                self.known.insert(tid);
                match s {
                    Stop::Clone { new } => {
                        self.known.insert(new);
                    }
                    Stop::Exec { former } if former != tid => {
                        self.known.remove(&former);
                    }
                    _ => {}
                }
                Some(s)
            }
            Err(_) => None, // gone meanwhile: its exit comes later
        }
    }

    /// Runs stops until `stop` is set (see [`Wakeup`]) or the process ends.
    /// `Ok(Some(status))`: the process ended while traced; nothing to detach.
    pub fn run(
        &mut self,
        engine: &mut dyn Engine,
        wake: &Wakeup,
    ) -> Result<Option<ExitStatus>, Error> {
        loop {
            if wake.requested() {
                wake.acknowledge();
                return Ok(None);
            }
            let (tid, status) = match self.reaper.wait().map_err(Error::Wait)? {
                Reaped::Report(tid, status) => (tid, status),
                Reaped::Interrupted => continue, // a wake-up signal: look at the flag
                Reaped::NothingLeft => {
                    return Err(Error::Wait(io::Error::from_raw_os_error(libc::ECHILD)))
                }
            };
            self.note(tid, status);
            if let Some(end) = engine.dispatch(tid, status)? {
                if tid == self.pid {
                    self.known.clear();
                    return Ok(Some(end));
                }
            }
        }
    }

    /// Detaches every task; see the module comment.
    pub fn detach(&mut self, engine: &mut dyn Engine) -> Result<Detached, Error> {
        let start = Instant::now();
        let mut report = Detached::default();
        let mut waited: HashSet<Tid> = HashSet::new();
        let mut interrupted = false;
        // Never detach at a syscall-enter-stop: PTRACE_DETACH wakes the
        // tracee with TIF_SIGPENDING set ("ptrace_signal_wake_up(child,
        // true)" in __ptrace_unlink), so the syscall would then run with a
        // signal "pending": the verifier fails the load with EAGAIN, an
        // epoll_wait returns EINTR. The call is skipped instead (orig_rax =
        // -1), and at its exit stop the thread is put back before the syscall
        // instruction and detached there: on its way out the kernel finds no
        // signal, clears the flag, and the call runs for real, untraced.
        // `skipping` holds such calls until their exit stop.
        let mut skipping: HashMap<Tid, (u64, [u64; 6])> = HashMap::new();
        while !self.known.is_empty() {
            if !interrupted && start.elapsed() >= DETACH_GRACE {
                interrupted = true;
                for &tid in &self.known {
                    if engine.busy(tid) {
                        waited.insert(tid);
                        continue;
                    }
                    match ptrace::interrupt(tid) {
                        Ok(()) => report.interrupted += 1,
                        Err(e) if e.is_gone() => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            let (tid, status) = if interrupted {
                match self.reaper.wait().map_err(Error::Wait)? {
                    Reaped::Report(tid, status) => (tid, status),
                    Reaped::Interrupted => continue,
                    Reaped::NothingLeft => {
                        // Nothing left to wait for: every task is gone.
                        self.known.clear();
                        break;
                    }
                }
            } else {
                match self.reaper.try_take().map_err(Error::Wait)? {
                    Some(r) => r,
                    None => {
                        std::thread::sleep(Duration::from_micros(500));
                        continue;
                    }
                }
            };
            let stop = self.note(tid, status);
            // Asked to stop while seizing: a thread's first stop may come
            // only now, and our interrupt may have failed its load.
            self.first_stop(tid, stop)?;
            let Some(stop) = stop else {
                continue;
            };
            if matches!(stop, Stop::Exited(_)) || engine.busy(tid) {
                if engine.busy(tid) {
                    waited.insert(tid);
                }
                engine.dispatch(tid, status)?;
                // Finished its call and resumed: bring it back to detach it.
                if interrupted && self.known.contains(&tid) && !engine.busy(tid) {
                    match ptrace::interrupt(tid) {
                        Ok(()) => report.interrupted += 1,
                        Err(e) if e.is_gone() => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                continue;
            }
            if let Some((nr, args)) = skipping.remove(&tid) {
                // The exit stop of the call we skipped: back to just before
                // the syscall instruction, so it runs for real after the
                // detach, when the interrupt's TIF_SIGPENDING is gone.
                if stop == Stop::Syscall {
                    let mut regs = ptrace::get_regs(tid)?;
                    regs.rewind_syscall(nr, &args);
                    ptrace::set_regs(tid, &regs)?;
                }
            } else if stop == Stop::Syscall {
                if let Some((nr, args)) = syscall_entry(tid)? {
                    let mut regs = ptrace::get_regs(tid)?;
                    if regs.skip_syscall() {
                        ptrace::set_regs(tid, &regs)?;
                        ptrace::resume(tid, Resume::Syscall, 0)?;
                        skipping.insert(tid, (nr, args));
                        continue;
                    }
                }
            }
            engine.detaching(tid, &stop);
            let signal = match stop {
                Stop::SignalDelivery(sig) => sig,
                _ => 0,
            };
            if let Stop::GroupStop(_) = stop {
                report.left_group_stopped += 1;
            }
            match ptrace::detach(tid, signal) {
                Ok(()) => {
                    self.known.remove(&tid);
                    report.threads += 1;
                }
                // Killed while stopped for us: its exit is still ours to reap.
                Err(e) if e.is_gone() => {}
                Err(e) => return Err(e.into()),
            }
        }
        report.waited_for = waited.len();
        report.elapsed = start.elapsed();
        Ok(report)
    }
}

/// When to stop tracing: SIGINT, SIGTERM or SIGHUP to spinguard, or a
/// deadline. A watcher thread reads the signals from a signalfd (they are
/// blocked in every thread) and, when it is time, sets the flag and wakes the
/// tracer thread out of its blocking waitpid with a signal whose handler has
/// no SA_RESTART. It repeats the wake-up until the tracer acknowledges: a
/// signal that lands just before the tracer enters waitpid would otherwise
/// be lost, and an idle target makes no stop that would end the wait.
pub struct Wakeup {
    flag: Arc<AtomicBool>,
    ack: Arc<AtomicBool>,
    /// Which signal ended it (0: the deadline).
    by: Arc<std::sync::atomic::AtomicI32>,
    wake_fd: std::os::fd::OwnedFd,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The signal that interrupts the tracer's waitpid.
const WAKE_SIGNAL: i32 = libc::SIGUSR1;

extern "C" fn on_wake(_: libc::c_int) {}

impl Wakeup {
    /// Call on the tracer thread before any other thread exists (the block
    /// must be inherited by every thread). `deadline` None: until a signal.
    pub fn start(deadline: Option<Duration>) -> io::Result<Wakeup> {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        let mut stop_set = spinguard_common::SigSet::EMPTY;
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            stop_set.insert(s);
        }
        let mask = stop_set.to_libc();
        // SAFETY: plain signal-mask and sigaction calls with valid structs;
        // the handler does nothing (its only job is to end a waitpid).
        unsafe {
            if libc::pthread_sigmask(libc::SIG_BLOCK, &mask, std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error());
            }
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_wake as *const () as usize;
            sa.sa_flags = 0; // no SA_RESTART: waitpid returns EINTR
            libc::sigemptyset(&mut sa.sa_mask);
            if libc::sigaction(WAKE_SIGNAL, &sa, std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        // SAFETY: a valid sigset; the fd is owned at once.
        let sigfd = unsafe { libc::signalfd(-1, &mask, libc::SFD_CLOEXEC) };
        if sigfd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fresh fd.
        let sigfd = unsafe { OwnedFd::from_raw_fd(sigfd) };
        // SAFETY: plain integer arguments.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if efd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fresh fd.
        let wake_fd = unsafe { OwnedFd::from_raw_fd(efd) };
        let wake_r = wake_fd.try_clone()?;
        let flag = Arc::new(AtomicBool::new(false));
        let ack = Arc::new(AtomicBool::new(false));
        let by = Arc::new(std::sync::atomic::AtomicI32::new(0));
        let tracer = spinguard_common::gettid();
        // SAFETY: getpid cannot fail.
        let me = unsafe { libc::getpid() };
        let (f, a, b) = (flag.clone(), ack.clone(), by.clone());
        let end = deadline.map(|d| Instant::now() + d);
        let thread = std::thread::Builder::new()
            .name("spinguard-wakeup".into())
            .spawn(move || {
                // The wake signal is for the tracer thread only.
                let mut w = spinguard_common::SigSet::EMPTY;
                w.insert(WAKE_SIGNAL);
                let w = w.to_libc();
                // SAFETY: valid sigset.
                unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &w, std::ptr::null_mut()) };
                loop {
                    let timeout = match end {
                        None => -1,
                        Some(e) => {
                            let left = e.saturating_duration_since(Instant::now());
                            if left.is_zero() {
                                break;
                            }
                            left.as_millis().clamp(1, i32::MAX as u128) as i32
                        }
                    };
                    let mut fds = [
                        libc::pollfd {
                            fd: sigfd.as_raw_fd(),
                            events: libc::POLLIN,
                            revents: 0,
                        },
                        libc::pollfd {
                            fd: wake_r.as_raw_fd(),
                            events: libc::POLLIN,
                            revents: 0,
                        },
                    ];
                    // SAFETY: two live pollfds.
                    let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout) };
                    if n <= 0 {
                        continue; // timeout (checked above) or EINTR
                    }
                    if fds[1].revents != 0 {
                        return; // dropped before anything happened
                    }
                    if let Some(info) = crate::forward::read_signalfd(&sigfd) {
                        b.store(info.ssi_signo as i32, Ordering::Relaxed);
                        break;
                    }
                }
                f.store(true, Ordering::SeqCst);
                while !a.load(Ordering::SeqCst) {
                    // SAFETY: tgkill to a thread of our own process.
                    unsafe { libc::syscall(libc::SYS_tgkill, me, tracer, WAKE_SIGNAL) };
                    let mut fds = [libc::pollfd {
                        fd: wake_r.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    }];
                    // SAFETY: one live pollfd.
                    if unsafe { libc::poll(fds.as_mut_ptr(), 1, 2) } > 0 {
                        return;
                    }
                }
            })?;
        Ok(Wakeup {
            flag,
            ack,
            by,
            wake_fd,
            thread: Some(thread),
        })
    }

    pub fn requested(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    fn acknowledge(&self) {
        self.ack.store(true, Ordering::SeqCst);
    }

    /// The signal that ended the session, or None for the deadline.
    pub fn signal(&self) -> Option<i32> {
        match self.by.load(Ordering::Relaxed) {
            0 => None,
            s => Some(s),
        }
    }
}

impl Drop for Wakeup {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        self.ack.store(true, Ordering::SeqCst);
        let one: u64 = 1;
        // SAFETY: eight bytes to our own eventfd.
        unsafe { libc::write(self.wake_fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
