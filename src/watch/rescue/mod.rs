//! `watch --rescue`: every process the probe names livelocked is attached
//! with the engine's cheap guard (signal-delivery stops only, so a healthy
//! thread pays nothing between loads) until its guarded calls have
//! succeeded and none came for `--linger`, then let go with every thread's
//! mask exact; `--stay` keeps it attached until watch ends.
//!
//! Who is touched: only a process whose verdict is `livelock` in an
//! interval. A healthy one never is. One traced by someone else (strace,
//! gdb, a `spinguard run`) is reported once per livelock, not touched. Each
//! rescue runs on its own thread ([`session`]); whatever ends the watch,
//! [`Rescuer::finish`] asks every session to let go and waits for each.

pub mod session;

use crate::report::advice::guard_needed;
use crate::report::ProcessReport;
use session::{Control, Ended, Note, Plan};
use spinguard_common::events::now_us;
use spinguard_common::SigSet;
use spinguard_probe::procfs::Placement;
use spinguard_probe::Verdict;
use spinguard_supervisor::session::{target, StopReason};
use spinguard_supervisor::AttachError;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use session::LetGo;

#[derive(Clone, Debug)]
pub struct Options {
    /// Let go once no guarded call came for this long; None: stay (`--stay`).
    pub linger: Option<Duration>,
    /// Always blocked during a guarded call (`--signals`); the signals the
    /// probe saw interrupting the process's calls are added per process.
    pub signals: SigSet,
    /// Rescue only processes in this cgroup or below it (`--rescue-cgroup`).
    pub cgroup: Option<String>,
}

impl Options {
    /// Whether a process in `cgroup` (None: the root) may be rescued.
    pub fn in_scope(&self, cgroup: Option<&str>) -> bool {
        let Some(scope) = self.cgroup.as_deref() else {
            return true;
        };
        let scope = scope.trim_end_matches('/');
        let c = cgroup.unwrap_or("/");
        scope.is_empty() || c == scope || c.strip_prefix(scope).is_some_and(|r| r.starts_with('/'))
    }
}

/// What one process looked like when the rescue was decided.
#[derive(Clone, Debug)]
pub struct Before {
    pub name: String,
    pub placement: Placement,
    /// Its guarded calls that failed with EAGAIN/EINTR, and that succeeded,
    /// in the interval that found it livelocked, and how long that was counted.
    pub failures: u64,
    pub ok: u64,
    pub window: Duration,
    /// What the rescue blocks during its guarded calls.
    pub guard: SigSet,
}

impl Before {
    fn of(p: &ProcessReport, guard: SigSet) -> Before {
        Before {
            name: p.name.clone(),
            placement: p.placement.clone(),
            failures: p.activity.signal_failures(),
            ok: p.activity.guarded_ok(),
            window: p.window,
            guard,
        }
    }
}

/// Something that happened to a rescue, reported in the interval in which
/// it happened: one line each.
#[derive(Clone, Debug)]
pub struct Rescue {
    pub pid: i32,
    pub before: Before,
    pub what: What,
}

#[derive(Clone, Debug)]
pub enum What {
    /// Livelocked, but traced by someone else: not touched.
    Traced { tracer: i32, tracer_name: String },
    /// Attached, and a guarded call succeeded: the rescue worked.
    Loaded {
        /// From the interval's end that named it livelocked.
        after: Duration,
        /// From the start of the attach.
        since_attach: Duration,
        /// Times that call ran (more than 1: the guard restarted it).
        attempts: u32,
        threads: usize,
    },
    /// The session is over: let go, the process ended, or it failed.
    Ended(Ended),
}

impl What {
    /// The `outcome` of the `rescue` event and the metrics' label.
    pub fn outcome(&self) -> &'static str {
        match self {
            What::Traced { .. } => "traced",
            What::Loaded { .. } => "loaded",
            What::Ended(Ended::Detached { .. }) => "detached",
            What::Ended(Ended::Exited { .. }) => "exited",
            What::Ended(Ended::Failed(_)) => "failed",
        }
    }
}

struct Live {
    before: Before,
    ctl: Arc<Control>,
    thread: JoinHandle<()>,
    threads: usize,
}

pub struct Rescuer {
    opts: Options,
    tx: Sender<(i32, Note)>,
    rx: Receiver<(i32, Note)>,
    live: BTreeMap<i32, Live>,
    /// Livelocked and traced by someone else, or outside `--rescue-cgroup`,
    /// already said.
    refused: BTreeSet<i32>,
    /// Could not be rescued in this livelock (not permitted, say): tried
    /// again only once it has been out of livelock for an interval.
    failed: BTreeSet<i32>,
    /// When each pid's last session ended (µs since the epoch): an interval
    /// that began before may still show it spinning from before the rescue.
    ended_us: HashMap<i32, u64>,
    me: i32,
    finished: bool,
}

impl Rescuer {
    pub fn new(opts: Options) -> Rescuer {
        let (tx, rx) = channel();
        Rescuer {
            opts,
            tx,
            rx,
            live: BTreeMap::new(),
            refused: BTreeSet::new(),
            failed: BTreeSet::new(),
            ended_us: HashMap::new(),
            me: std::process::id() as i32,
            finished: false,
        }
    }

    /// Rescues in flight.
    pub fn in_flight(&self) -> usize {
        self.live.len()
    }

    /// Starts a rescue for each process `processes` names livelocked that is
    /// not rescued yet; returns what happened since the last call.
    pub fn step(
        &mut self,
        end_us: u64,
        length: Duration,
        processes: &[ProcessReport],
    ) -> Vec<Rescue> {
        let mut out = Vec::new();
        let began_us = end_us.saturating_sub(length.as_micros() as u64);
        let livelocked: BTreeSet<i32> = processes
            .iter()
            .filter(|p| p.verdict == Verdict::Livelock)
            .map(|p| p.pid)
            .collect();
        self.refused.retain(|p| livelocked.contains(p));
        self.failed.retain(|p| livelocked.contains(p));
        for p in processes {
            if p.verdict != Verdict::Livelock
                || p.exited
                || p.pid == self.me
                || self.live.contains_key(&p.pid)
                || self.failed.contains(&p.pid)
                || self.ended_us.get(&p.pid).is_some_and(|&t| t > began_us)
            {
                continue;
            }
            if let Some(r) = self.start(p) {
                out.push(r);
            }
        }
        self.drain(&mut out);
        out
    }

    fn start(&mut self, p: &ProcessReport) -> Option<Rescue> {
        let guard = self
            .opts
            .signals
            .union(guard_needed(p))
            .difference(not_blockable());
        let before = Before::of(p, guard);
        if !self.opts.in_scope(p.placement.cgroup.as_deref()) {
            if self.refused.insert(p.pid) {
                log::info!(
                    "rescue: pid {} ({}) is livelocked, but its cgroup {} is outside --rescue-cgroup: not touched",
                    p.pid,
                    p.name,
                    p.placement.cgroup.as_deref().unwrap_or("/")
                );
            }
            return None;
        }
        let refuse = |this: &mut Rescuer, tracer: i32, tracer_name: String| {
            if !this.refused.insert(p.pid) {
                return None;
            }
            Some(Rescue {
                pid: p.pid,
                before: before.clone(),
                what: What::Traced {
                    tracer,
                    tracer_name,
                },
            })
        };
        // TracerPid names the tracing thread: one of ours is a rescue of ours.
        let ours = |tid: i32| std::path::Path::new(&format!("/proc/self/task/{tid}")).exists();
        if p.tracer != 0 && !ours(p.tracer) {
            let name = target::process_name(p.tracer);
            return refuse(self, p.tracer, name);
        }
        let target = match target::check_target(p.pid) {
            Ok(t) => t,
            Err(AttachError::AlreadyTraced {
                tracer,
                tracer_name,
                ..
            }) => return refuse(self, tracer, tracer_name),
            Err(AttachError::NoSuchProcess { .. } | AttachError::Zombie { .. }) => {
                log::info!("rescue: pid {} ({}) ended before the attach", p.pid, p.name);
                return None;
            }
            Err(e) => {
                self.failed.insert(p.pid);
                return Some(Rescue {
                    pid: p.pid,
                    before,
                    what: What::Ended(Ended::Failed(e.to_string())),
                });
            }
        };
        let plan = Plan {
            target,
            guard,
            linger: self.opts.linger,
            detected: Instant::now(),
        };
        match session::start(plan, self.tx.clone()) {
            Ok((ctl, thread)) => {
                log::info!(
                    "rescue: attaching to pid {} ({}): {} EAGAIN/EINTR and {} ok in {:.1} s; guarding {guard}",
                    p.pid,
                    p.name,
                    before.failures,
                    before.ok,
                    before.window.as_secs_f64()
                );
                self.live.insert(
                    p.pid,
                    Live {
                        before,
                        ctl,
                        thread,
                        threads: 0,
                    },
                );
                None
            }
            Err(e) => {
                self.failed.insert(p.pid);
                Some(Rescue {
                    pid: p.pid,
                    before,
                    what: What::Ended(Ended::Failed(format!("cannot start its thread: {e}"))),
                })
            }
        }
    }

    /// What the sessions said since the last call.
    fn drain(&mut self, out: &mut Vec<Rescue>) {
        while let Ok((pid, note)) = self.rx.try_recv() {
            self.note(pid, note, out);
        }
    }

    fn note(&mut self, pid: i32, note: Note, out: &mut Vec<Rescue>) {
        let Some(live) = self.live.get_mut(&pid) else {
            return;
        };
        match note {
            Note::Seized { threads, took } => {
                live.threads = threads;
                log::info!(
                    "rescue: seized {threads} threads of pid {pid} ({}) in {:.1} ms",
                    live.before.name,
                    took.as_secs_f64() * 1000.0
                );
            }
            Note::Loaded {
                after,
                since_attach,
                attempts,
            } => out.push(Rescue {
                pid,
                before: live.before.clone(),
                what: What::Loaded {
                    after,
                    since_attach,
                    attempts,
                    threads: live.threads,
                },
            }),
            Note::Ended(e) => {
                let live = self.live.remove(&pid).expect("looked up above");
                // It sent its last note: the thread is ending.
                let _ = live.thread.join();
                self.ended_us.insert(pid, now_us());
                if matches!(e, Ended::Failed(_)) {
                    self.failed.insert(pid);
                }
                out.push(Rescue {
                    pid,
                    before: live.before,
                    what: What::Ended(e),
                });
            }
        }
    }

    /// Lets go of every process (each session detaches, masks exact) and
    /// waits for all; returns what happened since the last call.
    pub fn finish(&mut self, signal: Option<i32>) -> Vec<Rescue> {
        let mut out = Vec::new();
        if self.finished {
            return out;
        }
        self.finished = true;
        let reason = signal.map_or(StopReason::Requested, StopReason::Signal);
        for live in self.live.values() {
            live.ctl.stop(reason);
        }
        while !self.live.is_empty() {
            match self.rx.recv() {
                Ok((pid, note)) => self.note(pid, note, &mut out),
                // Every session thread sends Ended before it ends, and we
                // hold a sender: recv cannot fail while any is live.
                Err(_) => break,
            }
        }
        out
    }
}

/// Whatever way watch ends (an error from the probe included), every
/// rescue is let go before the process exits: exiting with threads still
/// traced would leave the kernel to detach them, and a thread inside a
/// guarded call would keep the guard signals blocked.
impl Drop for Rescuer {
    fn drop(&mut self) {
        for r in self.finish(None) {
            log::warn!("{}", crate::report::rescue::line(&r));
        }
    }
}

/// Never blocked by a rescue: SIGKILL and SIGSTOP cannot be, and glibc's
/// own 32 and 33 (cancellation, setxid) must not be.
fn not_blockable() -> SigSet {
    SigSet::from_bits(u64::MAX).difference(SigSet::all_blockable())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rescue_cgroup_takes_the_cgroup_and_everything_below_it() {
        let o = |c: Option<&str>| Options {
            linger: None,
            signals: SigSet::DEFAULT_GUARD,
            cgroup: c.map(Into::into),
        };
        assert!(o(None).in_scope(None));
        assert!(o(None).in_scope(Some("/a")));
        assert!(o(Some("/")).in_scope(Some("/a/b")));
        let a = o(Some("/kubepods.slice/"));
        assert!(a.in_scope(Some("/kubepods.slice")));
        assert!(a.in_scope(Some("/kubepods.slice/pod1/cri-containerd-ab.scope")));
        assert!(!a.in_scope(Some("/kubepods.slicex")));
        assert!(!a.in_scope(Some("/system.slice")));
        assert!(!a.in_scope(None));
    }
}
