//! `spinguard watch`'s loop: the probe over the whole host, one report per
//! interval, handed to observers (the table, JSON lines, metrics, events);
//! with `--rescue`, the rescuer ([`super::rescue`]) acts on each interval
//! first, and what it did travels in the interval to the observers.
//!
//! bpf(2) calls are counted only while someone may be spinning. The signal
//! programs and the trigger run all the time and cost only signals; the
//! syscall tracepoints, which make every syscall on the host take the
//! kernel's slow path, are switched on when a thread takes a signal right
//! after a syscall failed with EAGAIN or EINTR (a suspect: what a loader
//! whose verifier just gave up looks like), and off again after
//! [`QUIET_INTERVALS`] intervals with no suspect and no guarded call cut
//! short. A process in the livelock always takes such signals, so it is
//! always counted; docs/watch.md says what this costs and misses.

use super::rescue::{Rescue, Rescuer};
use super::stop::Stop;
use crate::report::{ProcessReport, Unseen};
use spinguard_common::events::now_us;
use spinguard_probe::pidns::{self, PidNs};
use spinguard_probe::procfs;
use spinguard_probe::trigger::Suspect;
use spinguard_probe::{
    activity, Activity, Counting, Ids, Probe, ProbeError, Scope, Snapshot, Verdict,
};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// How often suspects are read and `--for` and stop signals are checked.
const TICK: Duration = Duration::from_millis(100);
/// Intervals without a suspect or a cut-short guarded call before counting
/// is switched off again.
pub const QUIET_INTERVALS: u32 = 3;

#[derive(Clone, Copy, Debug)]
pub struct Options {
    pub interval: Duration,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// Count bpf(2) calls all the time, not only while there are suspects.
    pub always: bool,
}

/// Why the watch ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// `--for` ran out.
    Time,
    /// This stop signal came.
    Signal(i32),
    /// An observer failed (its output was closed, say).
    Failed,
}

impl End {
    /// The stop signal that ended it, if one did.
    pub fn signal(self) -> Option<i32> {
        match self {
            End::Signal(s) => Some(s),
            _ => None,
        }
    }
}

/// One interval: what each process with guarded calls did, and the probe's
/// own state.
#[derive(Clone, Debug)]
pub struct Interval {
    /// When it ended, wall clock, microseconds since the epoch.
    pub end_us: u64,
    pub length: Duration,
    /// The part of it in which bpf(2) calls were counted.
    pub counted: Duration,
    /// Counting at its end.
    pub counting: Counting,
    /// One per process whose guarded calls returned in it (verdict
    /// livelock, at-risk or healthy), or whose calls cannot be counted
    /// (unknown), by pid.
    pub processes: Vec<ProcessReport>,
    /// Threads suspected in it.
    pub suspects: Vec<Suspect>,
    /// Since the start: counter updates lost to a full map, and trigger
    /// samples lost to a full perf buffer.
    pub map_full: u64,
    pub trigger_lost: u64,
    /// `--rescue`: what happened to the rescues in it (a process attached
    /// and loading, let go, refused…), and how many are in flight at its end.
    pub rescues: Vec<Rescue>,
    pub rescuing: usize,
}

/// What watch feeds each interval to; `finish` comes once, whatever ended
/// the watch (`--for`, Ctrl-C, SIGTERM, SIGHUP, an observer's error).
pub trait Observer {
    fn interval(&mut self, i: &Interval) -> anyhow::Result<()>;
    fn finish(&mut self, _end: End) -> anyhow::Result<()> {
        Ok(())
    }
}

struct Watcher {
    probe: Probe,
    opts: Options,
    prev: Snapshot,
    start: Instant,
    /// When counting last went on, if it is on.
    counting_since: Option<Instant>,
    quiet: u32,
    suspects: Vec<Suspect>,
    /// Suspects whose calls cannot be counted here (32-bit ones on a kernel
    /// without raw_syscalls; in a PID namespace, those of a namespace
    /// nested inside ours), by pid: why, and when last suspected.
    unknown: BTreeMap<i32, (Unseen, Instant)>,
    /// Our PID namespace, when it is not the initial one (the probe then
    /// names processes by their pids in it).
    ns: Option<PidNs>,
    names: HashMap<i32, String>,
    me: i32,
    /// Counting all the time: `--trace-always`, or the trigger was found blind.
    always: bool,
    /// Host-wide deliveries (counted by eBPF) and trigger samples (seen or
    /// lost) at the last interval, to check the trigger sees what happens.
    deliveries: u64,
    sampled: u64,
}

/// Watches until `--for` runs out or a stop signal comes, feeding every
/// observer each interval; then calls every observer's `finish`. A
/// `rescuer` acts on each interval before the observers see it, and lets go
/// of everything before the last one is reported (or, when an observer
/// failed, before watch returns).
pub fn watch(
    opts: Options,
    stop: &Stop,
    mut rescuer: Option<&mut Rescuer>,
    observers: &mut [&mut dyn Observer],
) -> Result<End, WatchError> {
    // In a PID namespace of our own, the processes of that namespace, named
    // by their pids there; none outside it (they are not ours to see).
    let ids = pidns::ours()?;
    let mut probe = Probe::open(Scope::Host, ids)?;
    probe.start_trigger()?;
    if opts.always {
        // 32-bit callers only once one is suspect, even so: their counting
        // runs a program on every syscall of the host.
        probe.count(Counting {
            native: true,
            compat: false,
        })?;
    }
    let now = Instant::now();
    let mut w = Watcher {
        prev: probe.snapshot()?,
        counting_since: opts.always.then_some(now),
        probe,
        opts,
        start: now,
        quiet: 0,
        suspects: Vec::new(),
        unknown: BTreeMap::new(),
        ns: match ids {
            Ids::Ns(ns) => Some(ns),
            Ids::Host => None,
        },
        names: HashMap::new(),
        me: std::process::id() as i32,
        always: opts.always,
        deliveries: 0,
        sampled: 0,
    };
    log::info!(
        "watching every process, reporting every {:.1} s",
        opts.interval.as_secs_f64()
    );
    let mut interval_start = now;
    let mut failed = None;
    let end = loop {
        let left = opts
            .duration
            .map(|d| d.saturating_sub(w.start.elapsed()))
            .unwrap_or(TICK);
        let wait = TICK
            .min(left)
            .min(opts.interval.saturating_sub(interval_start.elapsed()));
        let got = stop.wait(wait).map_err(|e| WatchError::Io("waiting", e))?;
        w.take_suspects()?;
        let end = match got {
            Some(sig) => Some(End::Signal(sig)),
            None if opts.duration.is_some_and(|d| w.start.elapsed() >= d) => Some(End::Time),
            None => None,
        };
        if end.is_some() || interval_start.elapsed() >= opts.interval {
            let mut i = w.interval(interval_start)?;
            interval_start = Instant::now();
            if let Some(r) = rescuer.as_deref_mut() {
                i.rescues = match end {
                    Some(e) => r.finish(e.signal()),
                    None => r.step(i.end_us, i.length, &i.processes),
                };
                i.rescuing = r.in_flight();
            }
            for o in observers.iter_mut() {
                if let Err(e) = o.interval(&i) {
                    failed = Some(e);
                    break;
                }
            }
        }
        if failed.is_some() {
            break End::Failed;
        }
        if let Some(end) = end {
            break end;
        }
    };
    // A rescuer lets go of what it holds even when an observer failed (a
    // closed stdout): its last lines can only be logged then.
    if let Some(r) = rescuer {
        for x in r.finish(end.signal()) {
            log::warn!("{}", crate::report::rescue::line(&x));
        }
    }
    // Every observer finishes, whatever ended the watch.
    for o in observers.iter_mut() {
        if let Err(e) = o.finish(end) {
            failed.get_or_insert(e);
        }
    }
    match failed {
        Some(e) => Err(WatchError::Observer(e)),
        None => Ok(end),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("{0}")]
    Probe(#[from] ProbeError),
    #[error("{0}: {1}")]
    Io(&'static str, std::io::Error),
    #[error("{0:#}")]
    Observer(anyhow::Error),
}

impl Watcher {
    /// Reads the trigger; counting goes on for a suspect (32-bit ones too,
    /// where the kernel allows).
    fn take_suspects(&mut self) -> Result<(), ProbeError> {
        let mut fresh: Vec<Suspect> = self
            .probe
            .suspects()
            .into_iter()
            // perf names a thread outside our PID namespace 0: not ours.
            .filter(|s| s.pid != self.me && s.pid != 0)
            .collect();
        if let Some(ns) = self.ns {
            // One of a namespace nested inside ours: visible, but the probe
            // cannot count its calls. Named, never left out; no reason to
            // count everyone else's.
            fresh.retain(|s| match PidNs::of(s.pid) {
                Ok(n) if n == ns => true,
                Ok(_) => {
                    self.unknown
                        .insert(s.pid, (Unseen::NestedPidNs, Instant::now()));
                    false
                }
                Err(_) => false,
            });
        }
        if fresh.is_empty() {
            return Ok(());
        }
        let now = self.probe.counting();
        let want = Counting {
            native: true,
            compat: now.compat || (fresh.iter().any(|s| s.compat) && self.probe.can_count_compat()),
        };
        if want != now {
            let got = self.probe.count(want)?;
            if !now.native && got.native {
                self.counting_since = Some(Instant::now());
                log::info!(
                    "counting bpf(2) calls: pid {} ({}) took a signal right after a syscall failed with {}",
                    fresh[0].pid,
                    procfs::comm(fresh[0].pid),
                    spinguard_common::errno::errno_name(fresh[0].errno)
                );
            }
        }
        for s in &fresh {
            if s.compat && !self.probe.can_count_compat() {
                self.unknown.insert(s.pid, (Unseen::Compat, Instant::now()));
            }
            if !self.suspects.iter().any(|o| o.tid == s.tid) {
                self.suspects.push(*s);
            }
        }
        Ok(())
    }

    /// A tracepoint program's result gates the perf samples of every user
    /// of that tracepoint (they are ANDed): another tool whose program on
    /// signal:signal_deliver returns 0 hides deliveries from the trigger.
    /// When the samples fall far behind the deliveries the probe counted,
    /// the trigger cannot be trusted: count all the time from then on.
    fn check_trigger(&mut self, deliveries: u64) -> Result<(), ProbeError> {
        let (samples, lost) = self.probe.trigger_stats();
        let sampled = samples + lost;
        let (d, s) = (
            deliveries.saturating_sub(self.deliveries),
            sampled.saturating_sub(self.sampled),
        );
        self.deliveries = deliveries;
        self.sampled = sampled;
        if !self.always && d >= 50 && s * 2 < d {
            log::warn!(
                "the trigger saw {s} of {d} signal deliveries: another program on signal:signal_deliver hides them from perf; counting bpf(2) calls all the time from now on"
            );
            self.always = true;
            let now = self.probe.counting();
            self.probe.count(Counting {
                native: true,
                compat: now.compat,
            })?;
            let was = now.native;
            if !was {
                self.counting_since = Some(Instant::now());
            }
        }
        Ok(())
    }

    fn name(&mut self, pid: i32) -> String {
        let n = procfs::comm(pid);
        if n != "?" {
            self.names.insert(pid, n.clone());
            return n;
        }
        self.names.get(&pid).cloned().unwrap_or(n)
    }

    fn report(
        &mut self,
        pid: i32,
        activity: Activity,
        counted: Duration,
        unseen: Option<Unseen>,
    ) -> ProcessReport {
        let guard = procfs::guard(pid);
        let compat = procfs::is_compat(pid);
        ProcessReport {
            pid,
            name: self.name(pid),
            window: counted,
            threads: activity.threads.len(),
            verdict: match unseen {
                Some(_) => Verdict::Unknown,
                None => activity.verdict(guard.is_some()),
            },
            unseen,
            activity,
            exited: !procfs::alive(pid),
            placement: procfs::placement(pid),
            tracer: procfs::tracer(pid),
            guard,
            compat,
        }
    }

    /// Closes the interval that began at `began`.
    fn interval(&mut self, began: Instant) -> Result<Interval, ProbeError> {
        let cur = self.probe.snapshot()?;
        let end = Instant::now();
        let length = end - began;
        let counted = self
            .counting_since
            .map_or(Duration::ZERO, |since| end - since.max(began));
        let acts = activity::between(&self.prev, &cur);
        let mut processes = Vec::new();
        let mut cut_short = false;
        for (pid, a) in acts {
            if pid == self.me || a.guarded_calls() == 0 {
                continue;
            }
            cut_short |= a.signal_failures() > 0;
            processes.push(self.report(pid, a, counted, None));
        }
        // Suspects whose calls cannot be counted here: never "idle", never
        // left out.
        self.unknown
            .retain(|_, (_, seen)| seen.elapsed() < 3 * self.opts.interval);
        let unknown: Vec<(i32, Unseen)> = self.unknown.iter().map(|(p, (u, _))| (*p, *u)).collect();
        for (pid, why) in unknown {
            if !processes.iter().any(|p| p.pid == pid) {
                processes.push(self.report(pid, Activity::default(), length, Some(why)));
            }
        }
        processes.sort_by_key(|p| p.pid);
        let suspects = std::mem::take(&mut self.suspects);

        self.check_trigger(cur.deliveries)?;
        // Counting off again when nothing has been suspicious for a while:
        // all of it, or with --trace-always (or a blinded trigger) the
        // 32-bit part, which a suspect switched on and which runs a program
        // on every syscall of the host.
        let counting = self.probe.counting();
        if (!self.always && counting.native) || (self.always && counting.compat) {
            if suspects.is_empty() && !cut_short {
                self.quiet += 1;
            } else {
                self.quiet = 0;
            }
            if self.quiet >= QUIET_INTERVALS {
                self.quiet = 0;
                if self.always {
                    self.probe.count(Counting {
                        native: true,
                        compat: false,
                    })?;
                    log::info!(
                        "no suspect for {QUIET_INTERVALS} intervals: 32-bit bpf(2) calls no longer counted"
                    );
                } else {
                    self.probe.count(Counting::default())?;
                    self.counting_since = None;
                    log::info!(
                        "no suspect for {QUIET_INTERVALS} intervals: bpf(2) calls no longer counted"
                    );
                }
            }
        }
        // Signals to every thread of a watched process are attributed; the
        // counters of the ones that ended are dropped (after this last read).
        let mut gone = Vec::new();
        for pid in self.probe.watched()? {
            if procfs::alive(pid) {
                self.probe.watch_process(pid, &procfs::threads(pid))?;
            } else {
                gone.push(pid);
            }
        }
        self.probe.forget(&gone)?;
        for pid in &gone {
            self.names.remove(pid);
        }
        let (_, trigger_lost) = self.probe.trigger_stats();
        let map_full = cur.map_full;
        // Their keys are gone from the maps: a recycled pid counts from zero.
        let mut cur = cur;
        let ended = |tgid: u32| gone.contains(&(tgid as i32));
        cur.calls.retain(|(k, _)| !ended(k.tgid));
        cur.sigs.retain(|(k, _)| !ended(k.tgid));
        cur.delivered.retain(|(k, _)| !ended(k.tgid));
        self.prev = cur;
        Ok(Interval {
            end_us: now_us(),
            length,
            counted,
            counting: self.probe.counting(),
            processes,
            suspects,
            map_full,
            trigger_lost,
            rescues: Vec::new(),
            rescuing: 0,
        })
    }
}
