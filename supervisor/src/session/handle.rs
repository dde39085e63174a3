//! Stopping a session from another thread.
//!
//! A session blocks in waitpid, and a waitpid ends only with a report (or a
//! signal that runs a handler, which would mean process-wide signal state in
//! a library). So the session keeps a child of its own, the waker
//! ([`sys::process::fork_waker`]): [`StopHandle::stop`] writes a byte to the
//! waker's pipe, the waker exits, and its exit is the report that ends the
//! wait. The flag is looked at between any two reports, so a stop asked for
//! while the session is busy is seen as soon as it is back.
//!
//! The CLI turns SIGINT/SIGTERM/SIGHUP into [`StopHandle::stop`] itself, and
//! `--for` (or `watch --rescue`'s linger) into [`StopHandle::stop_at`].

use crate::sys::{self, signal, Tid};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

/// Why a session was asked to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The caller got this signal (SIGINT, SIGTERM…) and passed it on.
    Signal(i32),
    /// The deadline of [`StopHandle::stop_at`] passed.
    Deadline,
    /// [`StopHandle::stop`] for any other reason.
    Requested,
}

/// What the timer thread waits for.
#[derive(Clone, Copy, Debug, Default)]
struct Timers {
    /// Stop the session then (`stop_at`).
    deadline: Option<Instant>,
    /// Only end its wait then, no stop (the session's own bounded holds).
    nudge: Option<Instant>,
}

#[derive(Default)]
struct Shared {
    reason: Mutex<Option<StopReason>>,
    asked: AtomicBool,
    /// The write end of the current waker's pipe.
    waker: Mutex<Option<OwnedFd>>,
    timers: Mutex<Timers>,
    timer: Condvar,
    timer_started: AtomicBool,
    ended: AtomicBool,
}

/// Stops a session from any thread (Send + Sync, cheap to clone).
#[derive(Clone)]
pub struct StopHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for StopHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StopHandle({:?})", self.requested())
    }
}

impl Default for StopHandle {
    fn default() -> Self {
        StopHandle::new()
    }
}

impl StopHandle {
    /// A handle for a session still to be made (`Session::with_handle`): an
    /// observer can hold it before the session exists.
    pub fn new() -> StopHandle {
        StopHandle {
            shared: Arc::new(Shared::default()),
        }
    }

    /// Asks the session to stop at its next chance (its `run` returns, a
    /// seize in progress ends). The first reason given is kept.
    pub fn stop(&self, reason: StopReason) {
        {
            let mut r = self.shared.reason.lock().unwrap_or_else(|p| p.into_inner());
            if r.is_none() {
                *r = Some(reason);
            }
        }
        self.shared.asked.store(true, Ordering::SeqCst);
        self.wake();
    }

    /// Why it was asked to stop, if it was.
    pub fn requested(&self) -> Option<StopReason> {
        if !self.shared.asked.load(Ordering::SeqCst) {
            return None;
        }
        *self.shared.reason.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stops the session at `when` (replacing any deadline set before), or
    /// never (`None`). Re-arm it as often as needed: a caller that lets go
    /// once loads have been quiet for a while moves it on each load.
    pub fn stop_at(&self, when: Option<Instant>) {
        self.set_timer(|t| t.deadline = when);
    }

    /// Ends the session's wait at `when` without asking it to stop.
    fn nudge_at(&self, when: Instant) {
        self.set_timer(|t| t.nudge = Some(when));
    }

    fn set_timer(&self, f: impl FnOnce(&mut Timers)) {
        let armed = {
            let mut t = self.shared.timers.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut t);
            t.deadline.is_some() || t.nudge.is_some()
        };
        self.shared.timer.notify_all();
        if armed && !self.shared.timer_started.swap(true, Ordering::SeqCst) {
            let me = self.clone();
            let spawned = std::thread::Builder::new()
                .name("spinguard-deadline".into())
                .spawn(move || me.timer());
            if spawned.is_err() {
                self.shared.timer_started.store(false, Ordering::SeqCst);
                log::error!("cannot start the deadline thread: stopping now");
                self.stop(StopReason::Deadline);
            }
        }
    }

    /// Forgets a nudge not fired yet.
    fn cancel_nudge(&self) {
        self.shared
            .timers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .nudge = None;
    }

    fn wake(&self) {
        if let Some(w) = &*self.shared.waker.lock().unwrap_or_else(|p| p.into_inner()) {
            sys::process::wake(w);
        }
    }

    fn timer(&self) {
        // Take no signal meant for the program this library lives in.
        let _ =
            signal::thread_sigmask(libc::SIG_SETMASK, spinguard_common::SigSet::all_blockable());
        let mut t = self.shared.timers.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if self.shared.ended.load(Ordering::SeqCst) {
                self.shared.timer_started.store(false, Ordering::SeqCst);
                return;
            }
            let now = Instant::now();
            if t.nudge.is_some_and(|n| now >= n) {
                t.nudge = None;
                self.wake();
            }
            if t.deadline.is_some_and(|d| now >= d) {
                t.deadline = None;
                drop(t);
                self.stop(StopReason::Deadline);
                t = self.shared.timers.lock().unwrap_or_else(|p| p.into_inner());
                continue;
            }
            let next = match (t.deadline, t.nudge) {
                (Some(d), Some(n)) => Some(d.min(n)),
                (d, n) => d.or(n),
            };
            t = match next {
                Some(at) => {
                    self.shared
                        .timer
                        .wait_timeout(t, at.saturating_duration_since(Instant::now()))
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
                None => {
                    // Nothing armed: let a later one start a new thread (the
                    // flag changes under the lock set_timer arms under).
                    self.shared.timer_started.store(false, Ordering::SeqCst);
                    return;
                }
            };
        }
    }
}

/// The session's side: the handle and its waker child.
pub(crate) struct Stopper {
    handle: StopHandle,
    waker: Option<Tid>,
    /// The time a nudge promised to end the session's wait (`wake_at`).
    nudge: Option<Instant>,
}

impl Stopper {
    /// The session's side of `handle`: forks its waker.
    pub fn new(handle: StopHandle) -> std::io::Result<Stopper> {
        let mut s = Stopper {
            handle,
            waker: None,
            nudge: None,
        };
        s.fork_waker()?;
        // A stop asked for before this waker existed.
        if s.handle.shared.asked.load(Ordering::SeqCst) {
            s.handle.wake();
        }
        Ok(s)
    }

    fn fork_waker(&mut self) -> std::io::Result<()> {
        let (pid, w) = sys::process::fork_waker()?;
        self.waker = Some(pid);
        *self
            .handle
            .shared
            .waker
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(w);
        Ok(())
    }

    /// Ends the session's wait at `at`, whether or not a stop was asked for
    /// (a seize lets a deadline overrun a little; holds are bounded).
    pub fn wake_at(&mut self, at: Instant) -> std::io::Result<()> {
        if self.waker.is_none() {
            self.fork_waker()?;
        }
        self.nudge = Some(at);
        self.handle.nudge_at(at);
        Ok(())
    }

    pub fn cancel_wake(&mut self) {
        self.nudge = None;
        self.handle.cancel_nudge();
    }

    pub fn handle(&self) -> StopHandle {
        self.handle.clone()
    }

    pub fn requested(&self) -> Option<StopReason> {
        self.handle.requested()
    }

    /// Whether `tid` is the waker. When it has exited (`exited`), a new one
    /// takes its place if the session may still need one: no stop was asked
    /// for (it was nudged, or someone killed it), or a nudge is still to come.
    ///
    /// The second case is a hold that began while a stop request was on its
    /// way: the waker exits for the request before the hold's nudge time,
    /// and the nudge, written later into the dead waker's pipe, would wake
    /// nobody; the hold would wait forever for a report that never comes.
    pub fn is_waker(&mut self, tid: Tid, exited: bool) -> bool {
        if self.waker != Some(tid) {
            return false;
        }
        if exited {
            self.waker = None;
            // Its pipe has no reader any more.
            *self
                .handle
                .shared
                .waker
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = None;
            // Any waker exit ends the wait a nudge was for; one before the
            // nudge's time does not keep its promise.
            let early = self.nudge.filter(|&at| Instant::now() < at);
            if early.is_none() {
                self.nudge = None;
            }
            if self.requested().is_none() || early.is_some() {
                match self.fork_waker() {
                    Ok(()) => {
                        if let Some(at) = early {
                            self.handle.nudge_at(at);
                        }
                    }
                    Err(e) => {
                        log::error!("cannot replace the waker ({e}): stopping");
                        self.nudge = None;
                        self.handle.stop(StopReason::Requested);
                    }
                }
            }
        }
        true
    }
}

impl Drop for Stopper {
    fn drop(&mut self) {
        let shared = &self.handle.shared;
        shared.ended.store(true, Ordering::SeqCst);
        shared.timer.notify_all();
        let w = shared
            .waker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(w) = &w {
            sys::process::wake(w);
        }
        drop(w);
        if let Some(pid) = self.waker.take() {
            let _ = sys::wait::wait_tid(pid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Waits (polling, at most `limit`) for our child `pid` to exit.
    fn exited_within(pid: Tid, limit: Duration) -> Option<Instant> {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            match sys::wait::try_wait_tid(pid).expect("waitpid") {
                Some((_, sys::wait::WaitStatus::Exited(_))) => return Some(Instant::now()),
                _ => std::thread::sleep(Duration::from_millis(2)),
            }
        }
        None
    }

    /// The hang CI found: a hold began while a stop request was on its way;
    /// the waker exited for the request before the hold's nudge, and the
    /// nudge, written into the dead waker's pipe, woke nobody.
    #[test]
    fn a_nudge_outlives_the_waker_a_stop_request_ended() {
        let handle = StopHandle::new();
        let mut s = Stopper::new(handle.clone()).expect("fork the waker");
        let at = Instant::now() + Duration::from_millis(300);
        s.wake_at(at).expect("nudge");
        let first = s.waker.expect("a waker");
        handle.stop(StopReason::Requested);
        assert!(
            exited_within(first, Duration::from_secs(10)).is_some(),
            "the stop request ends the first waker"
        );
        assert!(s.is_waker(first, true));
        let second = s
            .waker
            .expect("a nudge still to come: the waker is replaced");
        assert_ne!(first, second);
        let woke = exited_within(second, Duration::from_secs(10))
            .expect("the nudge ends the new waker's wait");
        assert!(woke >= at, "woken before the nudge's time");
        assert!(s.is_waker(second, true));
        assert!(
            s.waker.is_none(),
            "the nudge is kept and a stop was asked for: no waker is needed"
        );
    }

    /// Without a stop request, a waker that exits (nudged, or killed) is
    /// replaced, so a later stop request still has one to wake.
    #[test]
    fn a_nudged_waker_is_replaced_while_no_stop_was_asked_for() {
        let handle = StopHandle::new();
        let mut s = Stopper::new(handle.clone()).expect("fork the waker");
        s.wake_at(Instant::now()).expect("nudge");
        let first = s.waker.expect("a waker");
        assert!(exited_within(first, Duration::from_secs(10)).is_some());
        assert!(s.is_waker(first, true));
        let second = s.waker.expect("replaced");
        handle.stop(StopReason::Requested);
        assert!(
            exited_within(second, Duration::from_secs(10)).is_some(),
            "the stop request reaches the new waker"
        );
        assert!(s.is_waker(second, true));
        assert_eq!(handle.requested(), Some(StopReason::Requested));
    }
}
