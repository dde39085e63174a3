//! What a process did between two snapshots: its bpf calls by command and
//! result, the signals sent to it (by whom, and how many while it was inside
//! a guarded call) and the ones it took. The verdict rule lives here too:
//! one place says what a livelock looks like, for watch and diagnose alike.

use crate::maps::{CallKey, CallVal, DeliveredKey, SigKey};
use crate::probe::Snapshot;
use spinguard_common::bpf;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

/// Who sent a signal, from its si_code and the thread that sent it. A
/// sending process is `Some(pid)` as the probe names it, or `None` when it
/// runs in another PID namespace than that one: its pid there would name
/// nothing (or someone else) here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Sender {
    /// tkill/tgkill (SI_TKILL) from process `pid`.
    Tkill { pid: Option<i32> },
    /// kill (SI_USER) from process `pid`.
    Kill { pid: Option<i32> },
    /// sigqueue (SI_QUEUE) from process `pid`.
    Queue { pid: Option<i32> },
    /// A POSIX timer (SI_TIMER, timer_create).
    Timer,
    /// The kernel (SI_KERNEL: setitimer, the terminal, a fault…).
    Kernel,
    /// SIGCHLD: child `pid` changed state.
    Child { pid: Option<i32> },
    /// Any other si_code (SI_SIGIO, SI_ASYNCIO, SI_MESGQ…).
    Other { code: i32 },
}

const SI_USER: i32 = 0;
const SI_QUEUE: i32 = -1;
const SI_TIMER: i32 = -2;
const SI_TKILL: i32 = -6;
const SI_KERNEL: i32 = 0x80;

impl Sender {
    pub fn of(code: i32, sig: i32, pid: Option<i32>) -> Sender {
        match code {
            SI_USER => Sender::Kill { pid },
            SI_TKILL => Sender::Tkill { pid },
            SI_QUEUE => Sender::Queue { pid },
            SI_TIMER => Sender::Timer,
            SI_KERNEL => Sender::Kernel,
            c if c > 0 && sig == libc::SIGCHLD => Sender::Child { pid },
            c if c > 0 => Sender::Kernel,
            code => Sender::Other { code },
        }
    }

    /// The sending process, for the kinds that have one, when it is in the
    /// probe's PID namespace.
    pub fn pid(self) -> Option<i32> {
        self.process().flatten()
    }

    /// For the kinds that have a sending process: `Some(its pid)`, or
    /// `Some(None)` when it is outside the probe's PID namespace.
    pub fn process(self) -> Option<Option<i32>> {
        match self {
            Sender::Tkill { pid }
            | Sender::Kill { pid }
            | Sender::Queue { pid }
            | Sender::Child { pid } => Some(pid),
            _ => None,
        }
    }
}

/// One bpf command's calls.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CmdStats {
    pub calls: u64,
    pub ok: u64,
    /// errno → count.
    pub errors: BTreeMap<i32, u64>,
    /// Time inside the calls, summed over threads.
    pub inside: Duration,
}

impl CmdStats {
    /// EAGAIN and EINTR: what a pending signal makes a guarded call return
    /// ([`bpf::is_signal_failure`]).
    pub fn signal_failures(&self) -> u64 {
        self.errors
            .iter()
            .filter(|(e, _)| bpf::is_signal_failure(**e))
            .map(|(_, n)| n)
            .sum()
    }
}

/// One signal, sent to or taken by the process.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SigStats {
    /// Taken: a handler ran, or the default action (signal:signal_deliver).
    pub delivered: u64,
    /// Sent to it (signal:signal_generate), whatever became of them.
    pub generated: u64,
    /// Of those, ignored on arrival (SIG_IGN, or a default action of
    /// ignore): they never make a call fail.
    pub ignored: u64,
    /// Of those, merged into the same signal already pending (the kernel
    /// keeps one of each standard signal): never delivered on their own.
    pub merged: u64,
    /// Queued while the thread it was sent to was inside a guarded call (a
    /// process-directed signal: while one of its threads was). These are the
    /// ones that make the verifier give up.
    pub during_guarded: u64,
    pub senders: BTreeMap<Sender, u64>,
}

/// What one process did in a window.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Activity {
    /// bpf command → its calls that returned in the window.
    pub bpf: BTreeMap<u32, CmdStats>,
    /// signal → what happened with it.
    pub signals: BTreeMap<i32, SigStats>,
    /// signal → thread of this process → signals it sent (tgkill, kill,
    /// sigqueue) to this process.
    pub sent_by_threads: BTreeMap<i32, BTreeMap<i32, u64>>,
    /// Threads that made a bpf call that returned in the window.
    pub threads: BTreeSet<i32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verdict {
    /// Guarded calls keep failing with EAGAIN/EINTR: at least twice, and
    /// more often than they succeed.
    Livelock,
    /// Guarded calls complete, but signals arrive during them, or some fail
    /// with EAGAIN/EINTR before one succeeds.
    AtRisk,
    /// bpf calls, none cut short, no signal queued during a guarded one.
    Healthy,
    /// No bpf call returned in the window.
    Idle,
    /// Its bpf calls cannot be seen (32-bit calls on a kernel without the
    /// raw_syscalls tracepoints): it may be spinning.
    Unknown,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Livelock => "livelock",
            Verdict::AtRisk => "at-risk",
            Verdict::Healthy => "healthy",
            Verdict::Idle => "idle",
            Verdict::Unknown => "unknown",
        }
    }
}

impl Activity {
    fn guarded(&self) -> impl Iterator<Item = (&u32, &CmdStats)> {
        self.bpf.iter().filter(|(cmd, _)| bpf::is_guarded(**cmd))
    }

    /// Guarded calls that failed the way a pending signal makes them fail.
    pub fn signal_failures(&self) -> u64 {
        self.guarded().map(|(_, c)| c.signal_failures()).sum()
    }

    pub fn guarded_ok(&self) -> u64 {
        self.guarded().map(|(_, c)| c.ok).sum()
    }

    pub fn guarded_calls(&self) -> u64 {
        self.guarded().map(|(_, c)| c.calls).sum()
    }

    pub fn calls(&self) -> u64 {
        self.bpf.values().map(|c| c.calls).sum()
    }

    /// Signals queued during guarded calls, all signals.
    pub fn during_guarded(&self) -> u64 {
        self.signals.values().map(|s| s.during_guarded).sum()
    }

    /// The verdict. `guarded`: spinguard already guards the process (the
    /// shim, or `run`/`attach`): a signal queued during a call waits for its
    /// end, and a call cut short by one that came just before the guard went
    /// up is run again, so neither is a risk; only calls that keep failing
    /// are (a signal outside its guard set).
    pub fn verdict(&self, guarded: bool) -> Verdict {
        if self.calls() == 0 {
            return Verdict::Idle;
        }
        let (fails, ok) = (self.signal_failures(), self.guarded_ok());
        if fails >= 2 && fails > ok {
            Verdict::Livelock
        } else if !guarded && (fails > 0 || self.during_guarded() > 0) {
            Verdict::AtRisk
        } else {
            Verdict::Healthy
        }
    }

    /// The same, every process and thread id renamed by `to` (ids of a
    /// PID namespace to ours, say). A sending process `to` does not know
    /// becomes one of another namespace (`None`); a thread it does not know
    /// is left out.
    pub fn renamed(&self, to: &HashMap<i32, i32>) -> Activity {
        let name = |p: Option<i32>| p.and_then(|p| to.get(&p).copied());
        let mut out = Activity {
            bpf: self.bpf.clone(),
            threads: self
                .threads
                .iter()
                .filter_map(|t| to.get(t).copied())
                .collect(),
            ..Activity::default()
        };
        for (&sig, s) in &self.signals {
            let mut r = SigStats {
                senders: BTreeMap::new(),
                ..s.clone()
            };
            for (&snd, &n) in &s.senders {
                let snd = match snd {
                    Sender::Tkill { pid } => Sender::Tkill { pid: name(pid) },
                    Sender::Kill { pid } => Sender::Kill { pid: name(pid) },
                    Sender::Queue { pid } => Sender::Queue { pid: name(pid) },
                    Sender::Child { pid } => Sender::Child { pid: name(pid) },
                    other => other,
                };
                *r.senders.entry(snd).or_default() += n;
            }
            out.signals.insert(sig, r);
        }
        for (&sig, by) in &self.sent_by_threads {
            let m: BTreeMap<i32, u64> = by
                .iter()
                .filter_map(|(t, &n)| Some((*to.get(t)?, n)))
                .collect();
            out.sent_by_threads.insert(sig, m);
        }
        out
    }

    fn is_empty(&self) -> bool {
        self.bpf.is_empty() && self.signals.is_empty()
    }
}

/// `enum trace_signal_result`: ignored on arrival; merged with one pending.
const TRACE_SIGNAL_IGNORED: u32 = 1;
const TRACE_SIGNAL_ALREADY_PENDING: u32 = 2;

/// What each process did between snapshot `before` and `after` (counters
/// only grow; a key missing from `before` counts from zero). Processes with
/// nothing new are left out.
pub fn between(before: &Snapshot, after: &Snapshot) -> BTreeMap<i32, Activity> {
    let calls: HashMap<CallKey, CallVal> = before.calls.iter().copied().collect();
    let sigs: HashMap<SigKey, u64> = before.sigs.iter().copied().collect();
    let delivered: HashMap<DeliveredKey, u64> = before.delivered.iter().copied().collect();
    let mut out: BTreeMap<i32, Activity> = BTreeMap::new();

    for (k, v) in &after.calls {
        let was = calls.get(k).copied().unwrap_or_default();
        let (n, ns) = (
            v.count.saturating_sub(was.count),
            v.ns.saturating_sub(was.ns),
        );
        if n == 0 {
            continue;
        }
        let a = out.entry(k.tgid as i32).or_default();
        a.threads.insert(k.tid as i32);
        let c = a.bpf.entry(k.cmd).or_default();
        c.calls += n;
        c.inside += Duration::from_nanos(ns);
        if k.errno == 0 {
            c.ok += n;
        } else {
            *c.errors.entry(k.errno as i32).or_default() += n;
        }
    }
    for (k, v) in &after.sigs {
        let n = v.saturating_sub(sigs.get(k).copied().unwrap_or(0));
        if n == 0 {
            continue;
        }
        let (tgid, sig) = (k.tgid as i32, k.sig as i32);
        let a = out.entry(tgid).or_default();
        let s = a.signals.entry(sig).or_default();
        s.generated += n;
        match k.result() {
            TRACE_SIGNAL_IGNORED => s.ignored += n,
            TRACE_SIGNAL_ALREADY_PENDING => s.merged += n,
            _ => {}
        }
        if k.during() {
            s.during_guarded += n;
        }
        let from = (!k.sender_outside()).then_some(k.sender_tgid as i32);
        let sender = Sender::of(k.code, sig, from);
        *s.senders.entry(sender).or_default() += n;
        if from == Some(tgid)
            && matches!(
                sender,
                Sender::Tkill { .. } | Sender::Kill { .. } | Sender::Queue { .. }
            )
        {
            *a.sent_by_threads
                .entry(sig)
                .or_default()
                .entry(k.sender_tid as i32)
                .or_default() += n;
        }
    }
    for (k, v) in &after.delivered {
        let n = v.saturating_sub(delivered.get(k).copied().unwrap_or(0));
        if n > 0 {
            let a = out.entry(k.tgid as i32).or_default();
            a.signals.entry(k.sig as i32).or_default().delivered += n;
        }
    }
    out.retain(|_, a| !a.is_empty());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maps::{SIG_DURING, SIG_RESULT_SHIFT, SIG_SENDER_OUTSIDE};

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

    fn activity(load_stats: CmdStats, during: u64) -> Activity {
        let mut a = Activity::default();
        a.bpf.insert(bpf::BPF_PROG_LOAD, load_stats);
        a.signals.insert(
            libc::SIGPROF,
            SigStats {
                delivered: during + 5,
                during_guarded: during,
                ..SigStats::default()
            },
        );
        a
    }

    #[test]
    fn verdicts() {
        assert_eq!(Activity::default().verdict(false), Verdict::Idle);
        assert_eq!(
            activity(load(0, 1000), 1000).verdict(false),
            Verdict::Livelock
        );
        assert_eq!(activity(load(1, 50), 50).verdict(false), Verdict::Livelock);
        assert_eq!(activity(load(10, 3), 3).verdict(false), Verdict::AtRisk);
        assert_eq!(activity(load(10, 0), 2).verdict(false), Verdict::AtRisk);
        assert_eq!(activity(load(0, 1), 1).verdict(false), Verdict::AtRisk);
        assert_eq!(activity(load(10, 0), 0).verdict(false), Verdict::Healthy);
        // Under spinguard the signals queued during a load wait for its end,
        // and a load cut short before the guard went up is run again.
        assert_eq!(activity(load(10, 0), 2).verdict(true), Verdict::Healthy);
        assert_eq!(activity(load(10, 3), 3).verdict(true), Verdict::Healthy);
        // Failures are failures, guarded or not.
        assert_eq!(
            activity(load(0, 1000), 1000).verdict(true),
            Verdict::Livelock
        );
        // Map lookups only: bpf activity, nothing to interrupt.
        let mut a = Activity::default();
        a.bpf.insert(bpf::BPF_MAP_LOOKUP_ELEM, load(100, 0));
        assert_eq!(a.verdict(false), Verdict::Healthy);
    }

    #[test]
    fn senders_from_si_code() {
        assert_eq!(
            Sender::of(-6, 27, Some(42)),
            Sender::Tkill { pid: Some(42) }
        );
        assert_eq!(Sender::of(0, 27, Some(7)), Sender::Kill { pid: Some(7) });
        assert_eq!(Sender::of(0, 27, None), Sender::Kill { pid: None });
        assert_eq!(Sender::of(-2, 27, Some(0)), Sender::Timer);
        assert_eq!(Sender::of(0x80, 14, Some(0)), Sender::Kernel);
        assert_eq!(Sender::of(1, 17, Some(99)), Sender::Child { pid: Some(99) });
        assert_eq!(Sender::of(1, 11, Some(5)), Sender::Kernel);
        assert_eq!(Sender::of(-4, 29, Some(5)), Sender::Other { code: -4 });
        assert_eq!(Sender::Kill { pid: None }.pid(), None);
        assert_eq!(Sender::Kill { pid: None }.process(), Some(None));
        assert_eq!(Sender::Timer.process(), None);
    }

    #[test]
    fn differences_between_snapshots() {
        let ck = |errno| CallKey {
            tgid: 100,
            tid: 101,
            cmd: bpf::BPF_PROG_LOAD,
            errno,
        };
        let sk = SigKey {
            tgid: 100,
            sig: libc::SIGPROF as u32,
            sender_tgid: 100,
            sender_tid: 102,
            code: -6,
            flags: SIG_DURING,
        };
        let ignored = SigKey {
            sig: libc::SIGUSR1 as u32,
            flags: 1 << SIG_RESULT_SHIFT,
            ..sk
        };
        // kill(2) from a process of another PID namespace.
        let foreign = SigKey {
            sig: libc::SIGALRM as u32,
            sender_tgid: 0,
            sender_tid: 0,
            code: 0,
            flags: SIG_DURING | SIG_SENDER_OUTSIDE,
            ..sk
        };
        let before = Snapshot {
            calls: vec![(
                ck(11),
                CallVal {
                    count: 10,
                    ns: 1000,
                },
            )],
            sigs: vec![(sk, 10)],
            ..Snapshot::default()
        };
        let after = Snapshot {
            calls: vec![
                (
                    ck(11),
                    CallVal {
                        count: 30,
                        ns: 5000,
                    },
                ),
                (ck(0), CallVal { count: 1, ns: 100 }),
            ],
            sigs: vec![(sk, 30), (ignored, 7), (foreign, 3)],
            delivered: vec![(
                DeliveredKey {
                    tgid: 100,
                    sig: libc::SIGPROF as u32,
                },
                19,
            )],
            map_full: 0,
            deliveries: 0,
        };
        let acts = between(&before, &after);
        let a = &acts[&100];
        let load = &a.bpf[&bpf::BPF_PROG_LOAD];
        assert_eq!((load.calls, load.ok, load.signal_failures()), (21, 1, 20));
        assert_eq!(load.inside, Duration::from_nanos(4100));
        let prof = &a.signals[&libc::SIGPROF];
        assert_eq!(
            (prof.generated, prof.during_guarded, prof.delivered),
            (20, 20, 19)
        );
        assert_eq!(prof.senders[&Sender::Tkill { pid: Some(100) }], 20);
        assert_eq!(a.sent_by_threads[&libc::SIGPROF][&102], 20);
        assert_eq!(a.signals[&libc::SIGUSR1].ignored, 7);
        let alrm = &a.signals[&libc::SIGALRM];
        assert_eq!(alrm.senders[&Sender::Kill { pid: None }], 3);
        assert_eq!(alrm.during_guarded, 3);
        assert!(!a.sent_by_threads.contains_key(&libc::SIGALRM));
        assert_eq!(a.verdict(false), Verdict::Livelock);
        // Nothing new: nothing reported.
        assert!(between(&after, &after).is_empty());

        // Renamed (a nested namespace's ids to ours): 100 is 5100 and its
        // thread 102 is 5102; 101 is unknown.
        let to: HashMap<i32, i32> = [(100, 5100), (102, 5102)].into();
        let r = a.renamed(&to);
        assert_eq!(r.bpf, a.bpf);
        assert!(r.threads.is_empty(), "{r:?}");
        let prof = &r.signals[&libc::SIGPROF];
        assert_eq!(prof.senders[&Sender::Tkill { pid: Some(5100) }], 20);
        assert_eq!(r.sent_by_threads[&libc::SIGPROF][&5102], 20);
        assert_eq!(
            r.signals[&libc::SIGALRM].senders[&Sender::Kill { pid: None }],
            3
        );
        assert_eq!(r.verdict(false), Verdict::Livelock);
    }
}
