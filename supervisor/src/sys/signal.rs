//! Signals from our own side: the calling thread's mask, signalfd and
//! eventfd for helper threads, and sending a signal to a process (pidfd, or
//! kill() where pidfds do not exist).

use super::fallback::{self, Feature};
use super::Tid;
use spinguard_common::SigSet;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

fn owned(fd: libc::c_int) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// pthread_sigmask(how, set) on the calling thread; returns the mask before.
pub fn thread_sigmask(how: libc::c_int, set: SigSet) -> io::Result<SigSet> {
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

/// Signals blocked on the calling thread until dropped (threads created
/// meanwhile inherit the block).
pub struct SignalBlock {
    previous: SigSet,
}

impl SignalBlock {
    /// Blocks `set` on the calling thread. Call it before starting any other
    /// thread, or those threads will still take the signals.
    pub fn new(set: SigSet) -> io::Result<SignalBlock> {
        let previous = thread_sigmask(libc::SIG_BLOCK, set)?;
        Ok(SignalBlock { previous })
    }

    /// The mask from before: what a spawned child should start with.
    pub fn previous(&self) -> SigSet {
        self.previous
    }
}

impl Drop for SignalBlock {
    fn drop(&mut self) {
        let _ = thread_sigmask(libc::SIG_SETMASK, self.previous);
    }
}

/// What a signalfd read says about one signal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SignalInfo {
    pub signo: i32,
    /// `si_code`: SI_KERNEL for the terminal's signals, SI_USER for kill().
    pub code: i32,
    pub pid: u32,
}

/// A non-blocking signalfd for a set of signals (which must be blocked in
/// every thread, or they are delivered instead).
pub struct SignalFd(OwnedFd);

impl SignalFd {
    pub fn new(set: SigSet) -> io::Result<SignalFd> {
        let mask = set.to_libc();
        // Non-blocking: a pending stop signal (SIGTSTP from the terminal) can
        // vanish between poll and read, flushed by a SIGCONT (kernel
        // prepare_signal()), and a blocking read would then never return.
        // SAFETY: `mask` is a valid sigset_t.
        owned(unsafe { libc::signalfd(-1, &mask, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) })
            .map(SignalFd)
    }

    /// One signal, or None when there is none now.
    pub fn read(&self) -> Option<SignalInfo> {
        // SAFETY: zeroed signalfd_siginfo is a valid buffer.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: reading at most one record into `info`, which we own.
        let got = unsafe {
            libc::read(
                self.0.as_raw_fd(),
                (&mut info as *mut libc::signalfd_siginfo).cast(),
                size,
            )
        };
        (got == size as isize).then_some(SignalInfo {
            signo: info.ssi_signo as i32,
            code: info.ssi_code,
            pid: info.ssi_pid,
        })
    }
}

/// An eventfd: one thread tells another (blocked in [`poll2`]) to stop.
pub struct EventFd(OwnedFd);

impl EventFd {
    pub fn new() -> io::Result<EventFd> {
        // SAFETY: plain integer arguments.
        owned(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) }).map(EventFd)
    }

    pub fn try_clone(&self) -> io::Result<EventFd> {
        self.0.try_clone().map(EventFd)
    }

    pub fn notify(&self) {
        let one: u64 = 1;
        // SAFETY: eight bytes to our own eventfd.
        unsafe { libc::write(self.0.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }
}

/// Which of the two became readable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ready {
    pub signal: bool,
    pub event: bool,
}

/// Waits (up to `timeout_ms`, -1 for ever) until `signals` or `event` is
/// readable. A signal interrupting the wait counts as nothing ready.
pub fn poll2(signals: Option<&SignalFd>, event: &EventFd, timeout_ms: i32) -> Ready {
    let mut fds = [
        libc::pollfd {
            fd: event.0.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: signals.map_or(-1, |s| s.0.as_raw_fd()),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    // SAFETY: two live pollfds (a negative fd is ignored by poll).
    let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout_ms) };
    if n <= 0 {
        return Ready::default();
    }
    Ready {
        event: fds[0].revents != 0,
        signal: fds[1].revents != 0,
    }
}

/// Sends signals to one child process of ours, by pidfd (Linux 5.3) so that a
/// pid reused after the child is reaped can never receive one, or, without
/// pidfds, by kill() for as long as the child is not reaped: a zombie keeps
/// its pid, and the kernel hands pids out cyclically (`alloc_pid()`), so a
/// pid freed by the reap comes back only after pid_max others. The session
/// calls [`ChildSignaller::reaped`] as soon as it has reaped the child.
#[derive(Clone)]
pub struct ChildSignaller {
    pid: Tid,
    pidfd: Option<Arc<OwnedFd>>,
    reaped: Arc<Mutex<bool>>,
}

impl ChildSignaller {
    pub fn new(pid: Tid) -> ChildSignaller {
        let pidfd = if fallback::available(Feature::Pidfd) {
            // SAFETY: plain integer arguments; the fd is owned right away.
            match owned(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as libc::c_int) {
                Ok(fd) => Some(Arc::new(fd)),
                Err(e) => {
                    if e.raw_os_error() == Some(libc::ENOSYS) {
                        fallback::mark_missing(Feature::Pidfd);
                    }
                    None
                }
            }
        } else {
            None
        };
        ChildSignaller {
            pid,
            pidfd,
            reaped: Arc::new(Mutex::new(false)),
        }
    }

    pub fn pid(&self) -> Tid {
        self.pid
    }

    /// The child has been reaped: send nothing more.
    pub fn reaped(&self) {
        *self.reaped.lock().unwrap_or_else(|p| p.into_inner()) = true;
    }

    /// Sends `sig`; false when the child is gone.
    pub fn send(&self, sig: i32) -> bool {
        if let Some(fd) = &self.pidfd {
            // SAFETY: a pidfd we own, no siginfo, no flags.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd.as_raw_fd(),
                    sig,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                )
            };
            return rc == 0;
        }
        let reaped = self.reaped.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: plain kill(2) of our own unreaped child (see above).
        !*reaped && unsafe { libc::kill(self.pid, sig) } == 0
    }
}

/// kill(2); false when it failed.
pub fn kill(pid: Tid, sig: i32) -> bool {
    // SAFETY: no pointers.
    unsafe { libc::kill(pid, sig) == 0 }
}

/// Whether task `tid` still exists: tkill(2) with signal 0 checks without
/// sending. A task that has exited but is not reaped yet (a zombie, its exit
/// report still to come) exists. By tid alone: the caller may know the
/// task's process only by a guess (a thread whose first stop came before its
/// creator's event), and a tid is not reused before its task is reaped.
pub fn task_exists(tid: Tid) -> bool {
    // SAFETY: no pointers; signal 0 sends nothing.
    let r = unsafe { libc::syscall(libc::SYS_tkill, tid, 0) };
    r == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// Stops the whole of spinguard (SIGSTOP to ourselves), as a shell job
/// whose program stopped must. Returns when we are continued.
pub fn stop_ourselves() {
    // SAFETY: kill(2) on our own pid. The stop takes effect as this thread
    // returns from kill; we run again when the shell sends SIGCONT.
    unsafe { libc::kill(libc::getpid(), libc::SIGSTOP) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// What the session relies on when a clone event names a task whose
    /// reports may have come first: a zombie (its exit still to be reaped)
    /// exists, a reaped task does not.
    #[test]
    fn a_zombie_exists_and_a_reaped_child_does_not() {
        assert!(task_exists(crate::sys::getpid()));
        let mut child = std::process::Command::new("true")
            .spawn()
            .expect("spawn true");
        let pid = child.id() as Tid;
        let end = Instant::now() + Duration::from_secs(10);
        while crate::sys::procfs::status(pid).is_some_and(|s| !s.is_dead()) {
            assert!(Instant::now() < end, "true did not exit");
            std::thread::sleep(Duration::from_millis(2));
        }
        assert!(task_exists(pid), "a zombie still exists");
        child.wait().expect("reap");
        assert!(!task_exists(pid), "a reaped child is gone");
    }
}
