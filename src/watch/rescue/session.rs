//! One rescue: a thread that attaches to a livelocked process with the
//! engine's cheap guard (stops at signal deliveries only), lets it go once
//! no guarded call has come for the linger, and tells the rescuer what
//! happened as it happens.
//!
//! ptrace requests must come from the thread that attached, and an
//! [`Attachment`] is not `Send`: everything about one process lives on its
//! own thread, and the rescuer reaches it only through its [`Control`] (a
//! [`StopHandle`], which ends the session's blocking wait from any thread).

use spinguard_common::SigSet;
use spinguard_supervisor::attach::Attachment;
use spinguard_supervisor::session::{End, StopHandle, StopReason, Target};
use spinguard_supervisor::{AttachError, Event, ExitStatus, GuardPolicy, Observer};
use std::cell::OnceCell;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What a session tells the rescuer, in order.
#[derive(Clone, Debug)]
pub enum Note {
    /// Every thread seized.
    Seized { threads: usize, took: Duration },
    /// Its first guarded call that succeeded while attached, `after` the
    /// livelock was seen (`since_attach` after the seize began).
    Loaded {
        after: Duration,
        since_attach: Duration,
        attempts: u32,
    },
    /// The session is over (always the last note).
    Ended(Ended),
}

/// How a session ended.
#[derive(Clone, Debug)]
pub enum Ended {
    /// Let go: every thread detached, each with the mask it would have had
    /// without us.
    Detached {
        why: LetGo,
        threads: usize,
        attached: Duration,
        /// Guarded calls that finished while attached, and of those the
        /// ones that succeeded.
        calls: u64,
        loads: u64,
    },
    /// The process ended while attached.
    Exited {
        status: ExitStatus,
        attached: Duration,
        loads: u64,
    },
    /// It could not be attached to, or the engine failed.
    Failed(String),
}

/// Why a session let go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LetGo {
    /// No guarded call came for the linger.
    Linger(Duration),
    /// The rescuer asked: watch is ending (the signal that ends it, if one did).
    WatchEnded(Option<i32>),
}

/// The rescuer's hold on a session thread: a stop asked for before the
/// thread has its handle is passed on as soon as it does.
#[derive(Default)]
pub struct Control {
    inner: Mutex<(Option<StopHandle>, Option<StopReason>)>,
}

impl Control {
    /// Asks the session to let go (or not to start).
    pub fn stop(&self, reason: StopReason) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.1.get_or_insert(reason);
        if let Some(h) = &g.0 {
            h.stop(reason);
        }
    }

    fn install(&self, h: StopHandle) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = g.1 {
            h.stop(r);
        }
        g.0 = Some(h);
    }
}

/// What the session needs to know.
pub struct Plan {
    pub target: Target,
    pub guard: SigSet,
    /// None: stay until asked (`--stay`).
    pub linger: Option<Duration>,
    /// When the rescuer saw the livelock.
    pub detected: Instant,
}

/// Watches the engine's events: the first load, and the linger deadline
/// moved on by every guarded call. Runs on the session thread between a
/// stop and its resume: it only sends on a channel and moves a deadline.
struct Tracker<'a> {
    plan: &'a Plan,
    /// Set once the attachment (which holds this tracker) has made it.
    handle: &'a OnceCell<StopHandle>,
    attach_start: Instant,
    calls: u64,
    loads: u64,
    tx: &'a Sender<(i32, Note)>,
}

impl Tracker<'_> {
    /// A guarded call came: the linger starts again.
    fn activity(&self) {
        if let (Some(h), Some(l)) = (self.handle.get(), self.plan.linger) {
            h.stop_at(Some(Instant::now() + l));
        }
    }
}

impl Observer for Tracker<'_> {
    fn event(&mut self, e: &Event) {
        match e {
            Event::GuardStart { .. } | Event::Restart { .. } => self.activity(),
            Event::Guarded(call) => {
                self.calls += 1;
                if call.result >= 0 {
                    self.loads += 1;
                    if self.loads == 1 {
                        let now = Instant::now();
                        let _ = self.tx.send((
                            self.plan.target.pid,
                            Note::Loaded {
                                after: now - self.plan.detected,
                                since_attach: now - self.attach_start,
                                attempts: call.attempts,
                            },
                        ));
                    }
                }
                self.activity();
            }
            _ => {}
        }
    }
}

/// Starts the session thread for `plan`.
pub fn start(
    plan: Plan,
    tx: Sender<(i32, Note)>,
) -> std::io::Result<(Arc<Control>, std::thread::JoinHandle<()>)> {
    let ctl = Arc::new(Control::default());
    let c = ctl.clone();
    let pid = plan.target.pid;
    let t = std::thread::Builder::new()
        .name(format!("rescue-{pid}"))
        .spawn(move || {
            // The rescuer waits for every session's Ended: a panic must not
            // keep it waiting (a panic past the seize leaves the threads
            // traced until watch exits, when the kernel lets them go).
            let ended =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rescue(&plan, &c, &tx)))
                    .unwrap_or_else(|_| Ended::Failed("the rescue thread panicked".into()));
            let _ = tx.send((pid, Note::Ended(ended)));
        })?;
    Ok((ctl, t))
}

/// Seize, guard until the linger passes (or the rescuer asks, or the
/// process ends), detach.
fn rescue(plan: &Plan, ctl: &Control, tx: &Sender<(i32, Note)>) -> Ended {
    let pid = plan.target.pid;
    let start = Instant::now();
    let handle = OnceCell::new();
    let mut tracker = Tracker {
        plan,
        handle: &handle,
        attach_start: start,
        calls: 0,
        loads: 0,
        tx,
    };
    let failed = |e: &dyn std::fmt::Display| Ended::Failed(e.to_string());
    let policy = GuardPolicy::with_signals(plan.guard);
    let mut a = match Attachment::new(plan.target.clone(), policy, &mut tracker) {
        Ok(a) => a,
        Err(e) => return failed(&e),
    };
    let h = a.handle();
    // The linger counts from the attach: a process that makes no guarded
    // call at all once attached (it gave up, or stopped loading) is let go too.
    if let Some(l) = plan.linger {
        h.stop_at(Some(start + l));
    }
    let _ = handle.set(h.clone());
    ctl.install(h);
    let exited = |status, loads| Ended::Exited {
        status,
        attached: start.elapsed(),
        loads,
    };
    match a.seize() {
        Ok(s) => {
            let _ = tx.send((
                pid,
                Note::Seized {
                    threads: s.threads,
                    took: s.elapsed,
                },
            ));
        }
        Err(AttachError::Exited { status, .. }) => return exited(status, 0),
        Err(e) => return failed(&e),
    }
    let (reason, broke) = match a.run() {
        Ok(End::Exited(status)) => {
            drop(a);
            return exited(status, tracker.loads);
        }
        Ok(End::Stopped(reason)) => (reason, None),
        // Whatever went wrong, what is still traced is let go.
        Err(e) => (StopReason::Requested, Some(e)),
    };
    let d = a.detach();
    drop(a);
    let why = match reason {
        StopReason::Deadline => LetGo::Linger(plan.linger.unwrap_or_default()),
        StopReason::Signal(s) => LetGo::WatchEnded(Some(s)),
        StopReason::Requested => LetGo::WatchEnded(None),
    };
    match (d, broke) {
        (Ok(d), None) => Ended::Detached {
            why,
            threads: d.threads,
            attached: start.elapsed(),
            calls: tracker.calls,
            loads: tracker.loads,
        },
        (Ok(d), Some(e)) => failed(&format_args!("{e} (let go of its {} threads)", d.threads)),
        (Err(e), broke) => failed(&format_args!(
            "{}letting go: {e}",
            broke.map_or(String::new(), |b| format!("{b}; "))
        )),
    }
}
