//! `spinguard diagnose`: watch a running process's bpf calls and the signals
//! it gets, change nothing, and say whether it is in (or near) the livelock.
//!
//! The same seize as attach ([`crate::session`]), stopping at every syscall
//! entry and exit, but no mask is touched and no call restarted: each stop is
//! counted and the task resumed with PTRACE_SYSCALL, each signal re-injected
//! as it came. What is counted, per thread:
//! - a bpf call from its entry stop to its exit stop (command, result, time);
//! - a signal-delivery-stop, with PTRACE_GETSIGINFO's `si_code`/`si_pid` to
//!   say who sent it. A signal delivered right after a guarded call returned,
//!   with no syscall in between, was pending when the call ended: it arrived
//!   during the call (a signal pending before the call would have been
//!   delivered before it). That is what makes the verifier give up;
//! - tgkill/tkill/kill made by the process's own threads, to name the thread
//!   that sends a storm (siginfo only has the sender's process id).
//!
//! The window: every call that returns and every signal delivered from each
//! thread's first stop until detach starts. A call in progress when the
//! window ends is waited for and counted (interrupting it would make the
//! verifier fail it: diagnose would cause what it looks for). Calls that were
//! in progress at the attach finish before the thread's first stop (which is
//! taken on the way back to user space) and are not counted.

use crate::exit::ExitStatus;
use crate::ptrace::{self, Resume, SyscallInfo, Tid, WaitStatus};
use crate::session::{AttachError, Detached, Engine, Seized, Session, Target, Wakeup};
use crate::stop::{self, Stop};
use crate::{arch, Error};
use spinguard_common::bpf;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// Who sent a signal, from its siginfo.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Sender {
    /// tkill/tgkill (SI_TKILL) from process `pid`.
    Tkill { pid: Tid },
    /// kill (SI_USER) from process `pid`.
    Kill { pid: Tid },
    /// sigqueue (SI_QUEUE) from process `pid`.
    Queue { pid: Tid },
    /// A POSIX timer (SI_TIMER, timer_create), by timer id.
    Timer,
    /// The kernel (SI_KERNEL: setitimer, a fault, the terminal...).
    Kernel,
    /// SIGCHLD about child `pid`.
    Child { pid: Tid },
    /// Any other si_code (SI_SIGIO, SI_ASYNCIO, SI_MESGQ...).
    Other { code: i32 },
}

impl Sender {
    fn of(info: &ptrace::SigInfo) -> Sender {
        let pid = info.pid_or_timer;
        match info.code {
            libc::SI_USER => Sender::Kill { pid },
            libc::SI_TKILL => Sender::Tkill { pid },
            libc::SI_QUEUE => Sender::Queue { pid },
            libc::SI_TIMER => Sender::Timer,
            libc::SI_KERNEL => Sender::Kernel,
            c if c > 0 && info.signo == libc::SIGCHLD => Sender::Child { pid },
            c if c > 0 => Sender::Kernel,
            code => Sender::Other { code },
        }
    }
}

/// One bpf command's calls in the window.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CmdStats {
    pub calls: u64,
    pub ok: u64,
    /// errno -> count.
    pub errors: BTreeMap<i32, u64>,
    /// Summed time from entry stop to exit stop.
    pub inside: Duration,
}

impl CmdStats {
    /// Calls that failed the way a pending signal makes them fail.
    pub fn signal_failures(&self) -> u64 {
        self.errors
            .iter()
            .filter(|(&e, _)| bpf::is_signal_failure(e))
            .map(|(_, n)| n)
            .sum()
    }
}

/// One signal's deliveries in the window.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SigStats {
    pub delivered: u64,
    /// Delivered right after a guarded bpf call returned: it arrived during it.
    pub during_guarded: u64,
    pub senders: BTreeMap<Sender, u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Guarded calls keep failing with EAGAIN/EINTR (at least twice, and
    /// more often than they succeed).
    Livelock,
    /// Guarded calls complete, but signals arrive during them, or some fail
    /// with EAGAIN/EINTR before one succeeds.
    AtRisk,
    /// bpf activity, and no signal arrived during a guarded call.
    Healthy,
    /// No bpf call at all in the window.
    Idle,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Livelock => "livelock",
            Verdict::AtRisk => "at-risk",
            Verdict::Healthy => "healthy",
            Verdict::Idle => "idle",
        }
    }
}

/// What was seen.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub pid: Tid,
    pub name: String,
    /// The window: from the first seize to the end of the detach.
    pub window: Duration,
    pub threads: usize,
    /// bpf command -> its calls.
    pub bpf: BTreeMap<u32, CmdStats>,
    /// signal -> its deliveries.
    pub signals: BTreeMap<i32, SigStats>,
    /// signal -> thread of the process -> tgkill/tkill/kill calls it made
    /// with that signal (to anyone).
    pub sent_by_threads: BTreeMap<i32, BTreeMap<Tid, u64>>,
    /// The process ended while watched.
    pub exited: Option<ExitStatus>,
    pub seized: Option<Seized>,
    pub detached: Option<Detached>,
}

impl Report {
    /// Failures of guarded calls of the kind a pending signal causes.
    pub fn signal_failures(&self) -> u64 {
        self.guarded().map(CmdStats::signal_failures).sum()
    }

    pub fn guarded_ok(&self) -> u64 {
        self.guarded().map(|c| c.ok).sum()
    }

    fn guarded(&self) -> impl Iterator<Item = &CmdStats> {
        self.bpf
            .iter()
            .filter(|(cmd, _)| bpf::is_guarded(**cmd))
            .map(|(_, c)| c)
    }

    /// Signals delivered during guarded calls, all signals.
    pub fn during_guarded(&self) -> u64 {
        self.signals.values().map(|s| s.during_guarded).sum()
    }

    pub fn verdict(&self) -> Verdict {
        if self.bpf.values().all(|c| c.calls == 0) {
            return Verdict::Idle;
        }
        let (fails, ok) = (self.signal_failures(), self.guarded_ok());
        if fails >= 2 && fails > ok {
            Verdict::Livelock
        } else if fails > 0 || self.during_guarded() > 0 {
            Verdict::AtRisk
        } else {
            Verdict::Healthy
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Thread {
    /// In a bpf call: its command and when it entered.
    call: Option<(u32, Instant)>,
    /// The last syscall was a guarded bpf call that has returned, and no
    /// syscall since.
    after_guarded: bool,
}

struct Watcher {
    pid: Tid,
    threads: HashMap<Tid, Thread>,
    report: Report,
}

impl Watcher {
    fn thread(&mut self, tid: Tid) -> &mut Thread {
        self.threads.entry(tid).or_default()
    }

    fn count_signal(&mut self, tid: Tid, signal: i32) {
        let sender = match ptrace::get_siginfo(tid) {
            Ok(info) => Sender::of(&info),
            Err(_) => Sender::Other { code: 0 },
        };
        let during = self.thread(tid).after_guarded;
        let s = self.report.signals.entry(signal).or_default();
        s.delivered += 1;
        if during {
            s.during_guarded += 1;
        }
        *s.senders.entry(sender).or_default() += 1;
    }

    fn entry(&mut self, tid: Tid, arch_token: u32, nr: u64, args: [u64; 6]) {
        let t = self.thread(tid);
        t.after_guarded = false;
        if arch_token != arch::AUDIT_ARCH {
            return;
        }
        if nr == arch::NR_BPF {
            t.call = Some((args[0] as u32, Instant::now()));
            return;
        }
        let signal = match nr as i64 {
            libc::SYS_tgkill => args[2],
            libc::SYS_tkill | libc::SYS_kill => args[1],
            _ => return,
        } as i32;
        if signal > 0 {
            *self
                .report
                .sent_by_threads
                .entry(signal)
                .or_default()
                .entry(tid)
                .or_default() += 1;
        }
    }

    fn exit(&mut self, tid: Tid, rval: i64) {
        let t = self.thread(tid);
        let Some((cmd, start)) = t.call.take() else {
            return;
        };
        t.after_guarded = bpf::is_guarded(cmd);
        let c = self.report.bpf.entry(cmd).or_default();
        c.calls += 1;
        c.inside += start.elapsed();
        if rval >= 0 {
            c.ok += 1;
        } else {
            *c.errors.entry((-rval) as i32).or_default() += 1;
        }
    }

    fn handle(&mut self, tid: Tid, stop: Stop) -> Result<(), ptrace::PtraceError> {
        match stop {
            Stop::Syscall | Stop::Seccomp => match ptrace::syscall_info(tid)? {
                SyscallInfo::Entry { arch, nr, args }
                | SyscallInfo::Seccomp { arch, nr, args, .. } => self.entry(tid, arch, nr, args),
                SyscallInfo::Exit { rval, .. } => self.exit(tid, rval),
                SyscallInfo::None => {}
            },
            Stop::SignalDelivery(signal) => {
                self.count_signal(tid, signal);
                return ptrace::resume(tid, Resume::Syscall, signal);
            }
            // Stay stopped, but let SIGCONT wake it (see tracer.rs).
            Stop::GroupStop(_) => return ptrace::listen(tid),
            Stop::Exec { former } => {
                self.threads.remove(&former);
                self.threads.insert(tid, Thread::default());
            }
            _ => {}
        }
        ptrace::resume(tid, Resume::Syscall, 0)
    }
}

impl Engine for Watcher {
    fn adopt(&mut self, tid: Tid, _pid: Tid) {
        self.threads.insert(tid, Thread::default());
    }

    fn dispatch(&mut self, tid: Tid, status: WaitStatus) -> Result<Option<ExitStatus>, Error> {
        let stop = match stop::decode(tid, status) {
            Ok(s) => s,
            Err(e) if e.is_gone() => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        if let Stop::Exited(status) = stop {
            self.threads.remove(&tid);
            return Ok((tid == self.pid).then_some(status));
        }
        match self.handle(tid, stop) {
            Ok(()) => Ok(None),
            Err(e) if e.is_gone() => Ok(None),
            Err(e) => {
                log::error!("{e}; letting thread {tid} continue");
                let _ = ptrace::resume(tid, Resume::Syscall, 0);
                Ok(None)
            }
        }
    }

    fn busy(&self, tid: Tid) -> bool {
        self.threads.get(&tid).is_some_and(|t| t.call.is_some())
    }

    fn detaching(&mut self, tid: Tid, stop: &Stop) {
        // Delivered as we let go: still in the window.
        if let Stop::SignalDelivery(signal) = *stop {
            self.count_signal(tid, signal);
        }
    }
}

/// Watches `target` for `window`, or until SIGINT/SIGTERM/SIGHUP, or until
/// it exits. Call on the main thread before starting others.
pub fn diagnose(target: &Target, window: Duration) -> Result<Report, AttachError> {
    let wake = Wakeup::start(Some(window)).map_err(|source| Error::Setup {
        what: "setting up the signal handling",
        source,
    })?;
    let start = Instant::now();
    let mut w = Watcher {
        pid: target.pid,
        threads: HashMap::new(),
        report: Report {
            pid: target.pid,
            name: target.name.clone(),
            ..Report::default()
        },
    };
    match Session::attach(target, &mut w, &wake) {
        Ok((mut session, seized)) => {
            w.report.seized = Some(seized);
            w.report.threads = seized.threads;
            match session.run(&mut w, &wake)? {
                Some(status) => w.report.exited = Some(status),
                None => w.report.detached = Some(session.detach(&mut w)?),
            }
        }
        Err(AttachError::Exited { status, .. }) => w.report.exited = Some(status),
        Err(e) => return Err(e),
    }
    w.report.window = start.elapsed();
    Ok(w.report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(load: CmdStats, during: u64) -> Report {
        let mut r = Report::default();
        r.bpf.insert(bpf::BPF_PROG_LOAD, load);
        r.signals.insert(
            libc::SIGPROF,
            SigStats {
                delivered: during + 5,
                during_guarded: during,
                senders: BTreeMap::new(),
            },
        );
        r
    }

    fn load(ok: u64, eagain: u64) -> CmdStats {
        let mut c = CmdStats {
            calls: ok + eagain,
            ok,
            ..CmdStats::default()
        };
        if eagain > 0 {
            c.errors.insert(libc::EAGAIN, eagain);
        }
        c
    }

    #[test]
    fn verdicts() {
        assert_eq!(Report::default().verdict(), Verdict::Idle);
        assert_eq!(report(load(0, 1000), 1000).verdict(), Verdict::Livelock);
        assert_eq!(report(load(1, 50), 50).verdict(), Verdict::Livelock);
        assert_eq!(report(load(10, 3), 3).verdict(), Verdict::AtRisk);
        assert_eq!(report(load(10, 0), 2).verdict(), Verdict::AtRisk);
        assert_eq!(report(load(0, 1), 1).verdict(), Verdict::AtRisk);
        assert_eq!(report(load(10, 0), 0).verdict(), Verdict::Healthy);
        // Map lookups only: bpf activity, nothing to interrupt.
        let mut r = Report::default();
        r.bpf.insert(bpf::BPF_MAP_LOOKUP_ELEM, load(100, 0));
        assert_eq!(r.verdict(), Verdict::Healthy);
    }

    #[test]
    fn senders_from_siginfo() {
        let info = |signo, code, pid| ptrace::SigInfo {
            signo,
            code,
            pid_or_timer: pid,
            uid_or_overrun: 0,
        };
        assert_eq!(
            Sender::of(&info(27, libc::SI_TKILL, 42)),
            Sender::Tkill { pid: 42 }
        );
        assert_eq!(
            Sender::of(&info(27, libc::SI_USER, 7)),
            Sender::Kill { pid: 7 }
        );
        assert_eq!(Sender::of(&info(27, libc::SI_TIMER, 0)), Sender::Timer);
        assert_eq!(Sender::of(&info(14, libc::SI_KERNEL, 0)), Sender::Kernel);
        assert_eq!(Sender::of(&info(17, 1, 99)), Sender::Child { pid: 99 });
        assert_eq!(Sender::of(&info(11, 1, 0)), Sender::Kernel);
    }
}
