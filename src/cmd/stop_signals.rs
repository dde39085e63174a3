//! SIGINT, SIGTERM and SIGHUP end `attach` cleanly (watch and diagnose,
//! which trace nothing, use `watch::stop`): the supervisor library has no
//! process-wide signal handling of its own, so the command
//! blocks the three before any thread starts, and a small thread turns each
//! one into a stop of the session (its `StopHandle`).

use anyhow::{Context, Result};
use spinguard_common::SigSet;
use spinguard_supervisor::session::{StopHandle, StopReason};
use spinguard_supervisor::sys::signal::{self, EventFd, SignalBlock, SignalFd};
use std::thread::JoinHandle;

/// The blocked signals, then the thread that passes them on.
pub struct StopSignals {
    thread: Option<(EventFd, JoinHandle<()>)>,
}

fn stop_set() -> SigSet {
    let mut s = SigSet::EMPTY;
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        s.insert(sig);
    }
    s
}

impl StopSignals {
    /// Blocks the signals on the calling thread: call it first, before any
    /// other thread exists (threads inherit the block). They stay blocked
    /// for the rest of the command: one that comes while it finishes (the
    /// target exited, and a Ctrl-C crossed it) must not kill it with its
    /// report half written.
    pub fn block() -> Result<StopSignals> {
        let block = SignalBlock::new(stop_set()).context("blocking SIGINT/SIGTERM/SIGHUP")?;
        std::mem::forget(block);
        Ok(StopSignals { thread: None })
    }

    /// From now on each of the signals stops the session behind `handle`.
    pub fn stop(&mut self, handle: StopHandle) -> Result<()> {
        let sigfd = SignalFd::new(stop_set()).context("signalfd")?;
        let done = EventFd::new().context("eventfd")?;
        let done_r = done.try_clone().context("eventfd")?;
        let thread = std::thread::Builder::new()
            .name("spinguard-stop".into())
            .spawn(move || loop {
                let ready = signal::poll2(Some(&sigfd), &done_r, -1);
                if ready.event {
                    return;
                }
                if let Some(info) = sigfd.read() {
                    handle.stop(StopReason::Signal(info.signo));
                }
            })
            .context("starting the signal thread")?;
        self.thread = Some((done, thread));
        Ok(())
    }
}

impl Drop for StopSignals {
    fn drop(&mut self) {
        if let Some((done, thread)) = self.thread.take() {
            done.notify();
            let _ = thread.join();
        }
    }
}
