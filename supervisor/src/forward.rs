//! What a supervisor owes its child besides the guard (tini is the model):
//! signals sent to us go on to the child.
//!
//! The signals are blocked in every thread of ours and collected by a small
//! forwarder thread with sigtimedwait(2), not by the tracer: the tracer's only
//! wait is a blocking waitpid (one syscall per stop, which matters under a
//! signal storm that makes thousands of stops a second), and it never blocks
//! on anything else. Sending is by pidfd, so a pid reused after the child is
//! reaped can never receive a stray signal.
//!
//! Terminal-generated signals (Ctrl-C, Ctrl-\, Ctrl-Z, SIGWINCH, hangup) go
//! to the whole foreground process group, child included: forwarding them too
//! would deliver each twice (a second Ctrl-C means "force quit" to many
//! programs). They arrive with `si_code == SI_KERNEL`, so those are dropped
//! when the child is still in our process group.

use crate::ptrace::Tid;
use spinguard_common::SigSet;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

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
/// first (the tracer then stops spinguard itself, see `Config::follow_terminal_stops`);
/// sent to us by someone else (`kill -TSTP <spinguard>`), forwarded.
pub fn job_control() -> SigSet {
    let mut s = SigSet::EMPTY;
    for sig in [libc::SIGTSTP, libc::SIGTTIN, libc::SIGTTOU] {
        s.insert(sig);
    }
    s
}

/// Signals blocked on the calling thread until dropped (threads created
/// meanwhile inherit the block).
pub struct SignalBlock {
    previous: SigSet,
}

impl SignalBlock {
    /// Blocks `set` on the calling thread. Call it before starting any other
    /// thread, or those threads will still take the signals.
    pub fn new(set: SigSet) -> io::Result<SignalBlock> {
        let previous = sigmask(libc::SIG_BLOCK, set)?;
        Ok(SignalBlock { previous })
    }

    /// The mask from before: what a spawned child should start with.
    pub fn previous(&self) -> SigSet {
        self.previous
    }
}

impl Drop for SignalBlock {
    fn drop(&mut self) {
        let _ = sigmask(libc::SIG_SETMASK, self.previous);
    }
}

fn sigmask(how: libc::c_int, set: SigSet) -> io::Result<SigSet> {
    let new = set.to_libc();
    // SAFETY: zeroed sigset_t is a valid out-parameter.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are to live sigset_t values.
    let rc = unsafe { libc::pthread_sigmask(how, &new, &mut old) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    let mut prev = SigSet::EMPTY;
    for sig in 1..=spinguard_common::signals::MAX_SIGNAL {
        // SAFETY: `old` is initialised; sigismember only reads it.
        if unsafe { libc::sigismember(&old, sig) } == 1 {
            prev.insert(sig);
        }
    }
    Ok(prev)
}

/// The forwarder thread; stops (and joins) when dropped.
pub struct Forwarder {
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Forwarder {
    /// Starts forwarding `forward` (and the job-control set, see
    /// [`job_control`]) to process `pid`. The signals must already be blocked
    /// (by a [`SignalBlock`] taken before any thread was started).
    pub fn start(pid: Tid, forward: SigSet) -> io::Result<Forwarder> {
        // SAFETY: plain integer arguments.
        let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if pidfd < 0 {
            return Err(io::Error::last_os_error());
        }
        let pidfd = pidfd as libc::c_int;
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicU64::new(0));
        let wait_set = forward.union(job_control());
        let (stop2, count2) = (stop.clone(), count.clone());
        let thread = std::thread::Builder::new()
            .name("spinguard-signals".into())
            .spawn(move || {
                forward_loop(pid, pidfd, wait_set, &stop2, &count2);
                // SAFETY: our own fd, closed once.
                unsafe { libc::close(pidfd) };
            })?;
        Ok(Forwarder {
            stop,
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
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn forward_loop(pid: Tid, pidfd: libc::c_int, set: SigSet, stop: &AtomicBool, count: &AtomicU64) {
    let set = set.to_libc();
    // The timeout is only how soon the thread notices `stop`.
    let timeout = libc::timespec {
        tv_sec: 0,
        tv_nsec: Duration::from_millis(100).as_nanos() as libc::c_long,
    };
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: zeroed siginfo_t is a valid out-parameter.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: all pointers are to live locals.
        let sig = unsafe { libc::sigtimedwait(&set, &mut info, &timeout) };
        if sig <= 0 {
            continue; // EAGAIN (timeout) or EINTR
        }
        if info.si_code == libc::SI_KERNEL && same_process_group(pid) {
            log::debug!(
                "{} from the terminal: the program got its own copy",
                spinguard_common::signals::signal_name(sig)
            );
            continue;
        }
        // SAFETY: a pidfd we own, no siginfo, no flags.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                pidfd,
                sig,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if rc == 0 {
            count.fetch_add(1, Ordering::Relaxed);
            log::debug!(
                "forwarded {} to {pid}",
                spinguard_common::signals::signal_name(sig)
            );
        }
    }
}

fn same_process_group(pid: Tid) -> bool {
    // SAFETY: no pointers.
    unsafe { libc::getpgid(pid) == libc::getpgrp() }
}

/// Whether we are the foreground job of a terminal on stdin: the only case
/// where stopping ourselves when the child stops gives the shell its prompt
/// back (and someone will continue us).
pub fn in_foreground_of_terminal() -> bool {
    // SAFETY: no pointers.
    unsafe { libc::isatty(0) == 1 && libc::tcgetpgrp(0) == libc::getpgrp() }
}
