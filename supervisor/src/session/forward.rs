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
//! A signal sent to a whole process group reaches the child directly when it
//! is in our group: forwarding it too would deliver it twice (a second Ctrl-C
//! means "force quit" to many programs). Two cases are told apart:
//! terminal-generated signals (Ctrl-C, Ctrl-\, Ctrl-Z, SIGWINCH, hangup) arrive
//! with `si_code == SI_KERNEL`; a signal the program or anything it started
//! sent (`kill(0, SIGUSR1)`, `timeout -s ALRM`) comes from one of our
//! descendants. Both are dropped while the child is in our process group. A
//! group signal from outside (`kill -TERM -PGID`, systemd's KillMode=
//! control-group) cannot be told from one sent to us alone, and is forwarded.
//!
//! Every other signal that would end spinguard by default (SIGALRM, SIGPROF,
//! SIGPIPE, SIGSYS, the real-time ones...) is blocked and read here too, and
//! dropped: spinguard's death would kill the program (PTRACE_O_EXITKILL), so
//! a stray `kill(0, SIGALRM)` from the program must not end it.

use crate::sys::signal::{self, ChildSignaller, EventFd, SignalFd};
use crate::sys::{self, in_our_process_group, procfs};
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

/// Signals whose default action ends a process, that spinguard neither
/// forwards nor can block (SIGKILL, SIGSTOP), nor must block (glibc's
/// internal 32 and 33: setuid() in a threaded process waits on 33). Held
/// blocked in every thread of ours and dropped by the forwarder. A real fault
/// of our own (SIGSEGV...) still ends us: the kernel unblocks a synchronous
/// signal it forces.
pub fn absorbed() -> SigSet {
    let mut s = SigSet::EMPTY;
    for sig in [
        libc::SIGHUP,
        libc::SIGINT,
        libc::SIGQUIT,
        libc::SIGILL,
        libc::SIGTRAP,
        libc::SIGABRT,
        libc::SIGBUS,
        libc::SIGFPE,
        libc::SIGUSR1,
        libc::SIGSEGV,
        libc::SIGUSR2,
        libc::SIGPIPE,
        libc::SIGALRM,
        libc::SIGTERM,
        libc::SIGSTKFLT,
        libc::SIGXCPU,
        libc::SIGXFSZ,
        libc::SIGVTALRM,
        libc::SIGPROF,
        libc::SIGIO,
        libc::SIGPWR,
        libc::SIGSYS,
    ] {
        s.insert(sig);
    }
    for sig in 34..=spinguard_common::signals::MAX_SIGNAL {
        s.insert(sig);
    }
    s.difference(forwarded()).difference(job_control())
}

/// Everything `run` blocks before any thread starts: what it forwards, job
/// control, and the absorbed signals.
pub fn blocked() -> SigSet {
    forwarded().union(job_control()).union(absorbed())
}

/// The forwarder thread; stops (and joins) when dropped.
pub struct Forwarder {
    /// Notified to stop the thread for good.
    wake: EventFd,
    count: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Forwarder {
    /// Starts forwarding `forward` and the job-control set to the child, and
    /// dropping the [`absorbed`] signals. The signals must already be
    /// blocked (by a `SignalBlock` of [`blocked`] taken before any thread was
    /// started).
    pub fn start(child: ChildSignaller, forward: SigSet) -> io::Result<Forwarder> {
        let sigfd = SignalFd::new(forward.union(job_control()).union(absorbed()))?;
        let wake = EventFd::new()?;
        let wake_r = wake.try_clone()?;
        let count = Arc::new(AtomicU64::new(0));
        let count2 = count.clone();
        let thread = std::thread::Builder::new()
            .name("spinguard-signals".into())
            .spawn(move || forward_loop(&child, forward, &sigfd, &wake_r, &count2))?;
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

fn forward_loop(
    child: &ChildSignaller,
    forward: SigSet,
    sigfd: &SignalFd,
    wake: &EventFd,
    count: &AtomicU64,
) {
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
        let name = signal_name(info.signo);
        if !forward.contains(info.signo) && !job_control().contains(info.signo) {
            log::debug!(
                "{name} from pid {} not forwarded, and it does not end spinguard",
                info.pid
            );
            continue;
        }
        if in_our_process_group(pid) {
            if info.code == libc::SI_KERNEL {
                log::debug!("{name} from the terminal: the program got its own copy");
                continue;
            }
            let sender = info.pid as i32;
            // si_code <= 0: sent from user space (kill, sigqueue).
            if info.code <= 0 && procfs::descends_from(sender, sys::getpid()) {
                log::debug!(
                    "{name} from pid {sender}, in the program's own tree: sent to the \
                     process group, so the program got its own copy"
                );
                continue;
            }
        }
        if child.send(info.signo) {
            count.fetch_add(1, Ordering::Relaxed);
            log::debug!("forwarded {name} to {pid}");
        }
    }
}
