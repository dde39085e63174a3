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

#[derive(Default)]
struct Shared {
    reason: Mutex<Option<StopReason>>,
    asked: AtomicBool,
    /// The write end of the current waker's pipe.
    waker: Mutex<Option<OwnedFd>>,
    deadline: Mutex<Option<Instant>>,
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
        if let Some(w) = &*self.shared.waker.lock().unwrap_or_else(|p| p.into_inner()) {
            sys::process::wake(w);
        }
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
        *self
            .shared
            .deadline
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = when;
        self.shared.timer.notify_all();
        if when.is_some() && !self.shared.timer_started.swap(true, Ordering::SeqCst) {
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

    fn timer(&self) {
        // Take no signal meant for the program this library lives in.
        let _ =
            signal::thread_sigmask(libc::SIG_SETMASK, spinguard_common::SigSet::all_blockable());
        let mut deadline = self
            .shared
            .deadline
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        loop {
            if self.shared.ended.load(Ordering::SeqCst) {
                return;
            }
            match *deadline {
                Some(t) if Instant::now() >= t => {
                    // Fired: a later stop_at starts a new timer.
                    *deadline = None;
                    self.shared.timer_started.store(false, Ordering::SeqCst);
                    drop(deadline);
                    self.stop(StopReason::Deadline);
                    return;
                }
                Some(t) => {
                    deadline = self
                        .shared
                        .timer
                        .wait_timeout(deadline, t.saturating_duration_since(Instant::now()))
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
                None => {
                    deadline = self
                        .shared
                        .timer
                        .wait(deadline)
                        .unwrap_or_else(|p| p.into_inner());
                }
            }
        }
    }
}

/// The session's side: the handle and its waker child.
pub(crate) struct Stopper {
    handle: StopHandle,
    waker: Option<Tid>,
}

impl Stopper {
    /// The session's side of `handle`: forks its waker.
    pub fn new(handle: StopHandle) -> std::io::Result<Stopper> {
        let mut s = Stopper {
            handle,
            waker: None,
        };
        s.fork_waker()?;
        // A stop asked for before this waker existed.
        if s.handle.shared.asked.load(Ordering::SeqCst) {
            if let Some(w) = &*s
                .handle
                .shared
                .waker
                .lock()
                .unwrap_or_else(|p| p.into_inner())
            {
                sys::process::wake(w);
            }
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

    /// A stop has been asked for, but the session goes on until `at` (a
    /// seize lets a deadline overrun a little): a new waker, woken at `at`.
    pub fn wake_at(&mut self, at: Instant) -> std::io::Result<()> {
        if self.waker.is_none() {
            self.fork_waker()?;
        }
        self.handle.stop_at(Some(at));
        Ok(())
    }

    pub fn handle(&self) -> StopHandle {
        self.handle.clone()
    }

    pub fn requested(&self) -> Option<StopReason> {
        self.handle.requested()
    }

    /// Whether `tid` is the waker. When it has exited (`exited`) without a
    /// stop asked for (someone killed it), a new one takes its place.
    pub fn is_waker(&mut self, tid: Tid, exited: bool) -> bool {
        if self.waker != Some(tid) {
            return false;
        }
        if exited {
            self.waker = None;
            if self.requested().is_none() {
                if let Err(e) = self.fork_waker() {
                    log::error!("cannot replace the waker ({e}): stopping");
                    self.handle.stop(StopReason::Requested);
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
