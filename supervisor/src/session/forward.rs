//! What `run` owes its child besides the guard (tini is the model): signals
//! sent to us go on to the child.
//!
//! The signals are blocked in every thread of ours and collected by a small
//! forwarder thread through a signalfd, not by the session: the session's
//! only wait is a blocking waitpid (one syscall per stop, which matters under
//! a signal storm that makes thousands of stops a second), and it never
//! blocks on anything else. Sending is by pidfd where the kernel has them
//! (a pid reused after the child is reaped can never receive a stray
//! signal), by kill() until the child is reaped otherwise
//! ([`ChildSignaller`]).
//!
//! Terminal-generated signals (Ctrl-C, Ctrl-\, Ctrl-Z, SIGWINCH, hangup) go
//! to the whole foreground process group, child included: forwarding them too
//! would deliver each twice (a second Ctrl-C means "force quit" to many
//! programs). They arrive with `si_code == SI_KERNEL`, so those are dropped
//! when the child is still in our process group.

use crate::sys::in_our_process_group;
use crate::sys::signal::{self, ChildSignaller, EventFd, SignalFd};
use spinguard_common::signals::signal_name;
use spinguard_common::SigSet;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// The signals forwarded to the child: those a process manager or user sends
/// to ask a program something (stop, reload, resize), as tini forwards them.
pub fn forwarded() -> SigSet {
    let mut s = SigSet::EMPTY;
    for sig in [
        libc::SIGINT,
        libc::SIGTERM,
        libc::SIGHUP,
        libc::SIGQUIT,
        libc::SIGUSR1,
        libc::SIGUSR2,
        libc::SIGWINCH,
    ] {
        s.insert(sig);
    }
    s
}

/// Terminal stop signals. Blocked in spinguard so that Ctrl-Z stops the child
/// first (the session then stops spinguard itself, see
/// `Session::follow_terminal_stops`); sent to us by someone else
/// (`kill -TSTP <spinguard>`), forwarded.
pub fn job_control() -> SigSet {
    let mut s = SigSet::EMPTY;
    for sig in [libc::SIGTSTP, libc::SIGTTIN, libc::SIGTTOU] {
        s.insert(sig);
    }
    s
}

/// The forwarder thread; stops (and joins) when dropped.
pub struct Forwarder {
    /// Notified to stop the thread for good.
    wake: EventFd,
    count: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Forwarder {
    /// Starts forwarding `forward` and the job-control set to the child. The
    /// signals must already be blocked (by a `SignalBlock` taken before any
    /// thread was started).
    pub fn start(child: ChildSignaller, forward: SigSet) -> io::Result<Forwarder> {
        let sigfd = SignalFd::new(forward.union(job_control()))?;
        let wake = EventFd::new()?;
        let wake_r = wake.try_clone()?;
        let count = Arc::new(AtomicU64::new(0));
        let count2 = count.clone();
        let thread = std::thread::Builder::new()
            .name("spinguard-signals".into())
            .spawn(move || forward_loop(&child, &sigfd, &wake_r, &count2))?;
        Ok(Forwarder {
            wake,
            count,
            thread: Some(thread),
        })
    }

    /// Signals forwarded so far.
    pub fn forwarded(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.wake.notify();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn forward_loop(child: &ChildSignaller, sigfd: &SignalFd, wake: &EventFd, count: &AtomicU64) {
    let pid = child.pid();
    loop {
        let ready = signal::poll2(Some(sigfd), wake, -1);
        if ready.event {
            return;
        }
        if !ready.signal {
            continue; // EINTR
        }
        // Non-blocking: a SIGCONT can flush a pending stop signal between
        // poll and read (kernel prepare_signal()).
        let Some(info) = sigfd.read() else {
            continue;
        };
        if info.code == libc::SI_KERNEL && in_our_process_group(pid) {
            log::debug!(
                "{} from the terminal: the program got its own copy",
                signal_name(info.signo)
            );
            continue;
        }
        if child.send(info.signo) {
            count.fetch_add(1, Ordering::Relaxed);
            log::debug!("forwarded {} to {pid}", signal_name(info.signo));
        }
    }
}
