//! What a supervisor owes its child besides the guard (tini is the model):
//! signals sent to us go on to the child.
//!
//! The signals are blocked in every thread of ours and collected by a small
//! forwarder thread through a signalfd, not by the tracer: the tracer's only
//! wait is a blocking waitpid (one syscall per stop, which matters under a
//! signal storm that makes thousands of stops a second), and it never blocks
//! on anything else. Sending is by pidfd, so a pid reused after the child is
//! reaped can never receive a stray signal.
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

use crate::ptrace::Tid;
use spinguard_common::SigSet;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
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
/// first (the tracer then stops spinguard itself, see `Config::follow_terminal_stops`);
/// sent to us by someone else (`kill -TSTP <spinguard>`), forwarded.
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
    /// Written to wake the thread for good.
    wake: OwnedFd,
    count: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Forwarder {
    /// Starts forwarding `forward` (and the job-control set, see
    /// [`job_control`]) to process `pid`, and dropping the [`absorbed`] ones.
    /// The signals must already be blocked (by a [`SignalBlock`] taken before
    /// any thread was started).
    pub fn start(pid: Tid, forward: SigSet) -> io::Result<Forwarder> {
        // SAFETY: plain integer arguments; each fd is owned right away.
        let pidfd = owned(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as libc::c_int)?;
        let wait_set = forward.union(job_control()).union(absorbed()).to_libc();
        // Non-blocking: a pending stop signal (SIGTSTP from the terminal) can
        // vanish between poll and read, flushed by a SIGCONT (kernel
        // prepare_signal()), and a blocking read would then never return.
        // SAFETY: `wait_set` is a valid sigset_t.
        let sigfd = owned(unsafe {
            libc::signalfd(-1, &wait_set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK)
        })?;
        // SAFETY: plain integer arguments.
        let wake = owned(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) })?;
        let wake_r = wake.try_clone()?;
        let count = Arc::new(AtomicU64::new(0));
        let count2 = count.clone();
        let thread = std::thread::Builder::new()
            .name("spinguard-signals".into())
            .spawn(move || forward_loop(pid, forward, &pidfd, &sigfd, &wake_r, &count2))?;
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

fn owned(fd: libc::c_int) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        let one: u64 = 1;
        // SAFETY: eight bytes to our own eventfd.
        unsafe { libc::write(self.wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn forward_loop(
    pid: Tid,
    forward: SigSet,
    pidfd: &OwnedFd,
    sigfd: &OwnedFd,
    wake: &OwnedFd,
    count: &AtomicU64,
) {
    loop {
        let mut fds = [
            libc::pollfd {
                fd: sigfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: wake.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two live pollfds.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n < 0 {
            continue; // EINTR
        }
        if fds[1].revents != 0 {
            return;
        }
        let Some(info) = read_signalfd(sigfd) else {
            continue; // EAGAIN: it was flushed meanwhile
        };
        let sig = info.ssi_signo as i32;
        let name = spinguard_common::signals::signal_name(sig);
        if !forward.contains(sig) && !job_control().contains(sig) {
            log::debug!(
                "{name} from pid {} not forwarded, and it does not end spinguard",
                info.ssi_pid
            );
            continue;
        }
        if same_process_group(pid) {
            if info.ssi_code == libc::SI_KERNEL {
                log::debug!("{name} from the terminal: the program got its own copy");
                continue;
            }
            let sender = info.ssi_pid as i32;
            // si_code <= 0: sent from user space (kill, sigqueue).
            if info.ssi_code <= 0 && crate::procfs::descends_from(sender, std::process::id() as i32)
            {
                log::debug!(
                    "{name} from pid {sender}, in the program's own tree: sent to the \
                     process group, so the program got its own copy"
                );
                continue;
            }
        }
        // SAFETY: a pidfd we own, no siginfo, no flags.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                pidfd.as_raw_fd(),
                sig,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if rc == 0 {
            count.fetch_add(1, Ordering::Relaxed);
            log::debug!("forwarded {name} to {pid}");
        }
    }
}

/// One record from a non-blocking signalfd; None when there is none
/// (EAGAIN: a SIGCONT can flush a pending stop signal between poll and read).
pub(crate) fn read_signalfd(sigfd: &OwnedFd) -> Option<libc::signalfd_siginfo> {
    // SAFETY: zeroed signalfd_siginfo is a valid buffer.
    let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::signalfd_siginfo>();
    // SAFETY: reading at most one record into `info`, which we own.
    let got = unsafe {
        libc::read(
            sigfd.as_raw_fd(),
            (&mut info as *mut libc::signalfd_siginfo).cast(),
            size,
        )
    };
    (got == size as isize).then_some(info)
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
