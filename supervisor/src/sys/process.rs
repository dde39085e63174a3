//! fork(2), for the two children a session has: the program `run` traces,
//! and the waker a stop handle uses to end a blocking waitpid.
//!
//! Between fork and exec (or _exit) a child of a multi-threaded process may
//! only make async-signal-safe calls: another thread may have held the
//! allocator's lock at the moment of fork. Everything the children need is
//! built before fork; they make raw calls only.

use super::seccomp::{self, Filter};
use super::Tid;
use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

extern "C" {
    static environ: *const *const libc::c_char;
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into `fds`.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds are fresh and ours.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// What a child execs, built before fork: the program, and `/bin/sh
/// PROGRAM ARGS...` for when the kernel does not recognise the file
/// (ENOEXEC), which is what execvp does with a script that has no `#!` line.
pub struct ExecArgs {
    path: CString,
    /// Interval timers (which, value) to arm just before exec.
    itimers: Vec<(libc::c_int, libc::itimerval)>,
    _strings: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    sh_argv: Vec<*const libc::c_char>,
}

const BIN_SH: &CStr = c"/bin/sh";

impl ExecArgs {
    /// `argv` is `argv[0]` (the name the program sees) and its arguments;
    /// `itimers` are armed (`setitimer`) right before the exec.
    pub fn new(
        path: CString,
        argv: Vec<CString>,
        itimers: Vec<(libc::c_int, libc::itimerval)>,
    ) -> ExecArgs {
        let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|c| c.as_ptr()).collect();
        ptrs.push(std::ptr::null());
        let mut sh_argv = vec![BIN_SH.as_ptr(), path.as_ptr()];
        sh_argv.extend(argv.iter().skip(1).map(|c| c.as_ptr()));
        sh_argv.push(std::ptr::null());
        ExecArgs {
            path,
            itimers,
            _strings: argv,
            argv: ptrs,
            sh_argv,
        }
    }

    /// Execs the program with our environment; returns only on failure,
    /// with the errno to report (ENOEXEC when /bin/sh could not run it either).
    ///
    /// # Safety
    /// Only between fork and exec, in the child: async-signal-safe calls only.
    unsafe fn exec(&self) -> i32 {
        for (which, value) in &self.itimers {
            libc::setitimer(*which, value, std::ptr::null_mut());
        }
        libc::execve(self.path.as_ptr(), self.argv.as_ptr(), environ);
        let errno = *libc::__errno_location();
        if errno != libc::ENOEXEC {
            return errno;
        }
        libc::execve(BIN_SH.as_ptr(), self.sh_argv.as_ptr(), environ);
        libc::ENOEXEC
    }
}

/// Where in the child a failure happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChildStage {
    NoNewPrivs = 1,
    Seccomp = 2,
    Exec = 3,
}

/// What the traced child does after fork, all of it prepared before.
pub struct ChildPlan<'a> {
    pub exec: &'a ExecArgs,
    /// The signal mask the program starts with.
    pub mask: libc::sigset_t,
    /// Set no_new_privs before installing the filter (needed without
    /// CAP_SYS_ADMIN).
    pub no_new_privs: bool,
    pub filter: Option<&'a Filter>,
}

/// A forked child waiting on its go pipe.
pub struct Forked {
    pub pid: Tid,
    go: Option<OwnedFd>,
    report: OwnedFd,
}

/// Forks the child of `plan`. It blocks reading a pipe until
/// [`Forked::release`]; then sets no_new_privs (if asked), installs the filter
/// (if any) and execs. A failure on the way is written to a CLOEXEC pipe as
/// (stage, errno): at a successful exec the kernel closes it and the pipe stays
/// empty. The child exits 127 after a failure, or if we die before releasing it.
pub fn fork_child(plan: &ChildPlan) -> io::Result<Forked> {
    let (go_r, go_w) = pipe()?;
    let (report_r, report_w) = pipe()?;
    // SAFETY: the child branch calls only async-signal-safe functions and
    // never returns.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: we are the freshly forked child.
        unsafe {
            child(
                go_r.as_raw_fd(),
                go_w.as_raw_fd(),
                report_w.as_raw_fd(),
                plan,
            )
        }
    }
    drop(go_r);
    drop(report_w);
    Ok(Forked {
        pid,
        go: Some(go_w),
        report: report_r,
    })
}

impl Forked {
    /// Lets the child go on towards exec.
    pub fn release(&mut self) -> io::Result<()> {
        let Some(go) = self.go.take() else {
            return Ok(());
        };
        // SAFETY: one byte from a local buffer to our pipe.
        let n = unsafe { libc::write(go.as_raw_fd(), b"g".as_ptr().cast(), 1) };
        if n != 1 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The child's failure report, once it has exited without exec.
    pub fn failure(&self) -> Option<(ChildStage, io::Error)> {
        let mut buf = [0u8; 8];
        // SAFETY: reading into our own buffer from our own fd. The child has
        // exited, so the write end is closed: this never blocks.
        let n = unsafe { libc::read(self.report.as_raw_fd(), buf.as_mut_ptr().cast(), 8) };
        if n != 8 {
            return None;
        }
        let stage = match u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) {
            1 => ChildStage::NoNewPrivs,
            2 => ChildStage::Seccomp,
            _ => ChildStage::Exec,
        };
        let errno = i32::from_ne_bytes([buf[4], buf[5], buf[6], buf[7]]);
        Some((stage, io::Error::from_raw_os_error(errno)))
    }
}

/// SIGKILLs a child of ours and reaps it (a child that must not run on).
pub fn kill_and_reap(pid: Tid) {
    // SAFETY: our own child, unreaped: its pid is still its own.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let _ = super::wait::wait_tid(pid);
}

/// The traced child between fork and exec.
///
/// # Safety
/// Call only in a freshly forked child; every pointer in `plan` must stay
/// valid (they point into the parent's memory, which the child has a copy of).
unsafe fn child(go_r: libc::c_int, go_w: libc::c_int, report: libc::c_int, plan: &ChildPlan) -> ! {
    let fail = |stage: ChildStage, err: Option<i32>| -> ! {
        let errno = err.unwrap_or(libc::EIO);
        let mut buf = [0u8; 8];
        buf[0..4].copy_from_slice(&(stage as u32).to_ne_bytes());
        buf[4..8].copy_from_slice(&errno.to_ne_bytes());
        libc::write(report, buf.as_ptr().cast(), 8);
        libc::_exit(127)
    };
    libc::close(go_w);
    // The Rust runtime ignores SIGPIPE; a program expects the default (std's
    // Command does the same reset). Our blocked forwarding signals go too.
    libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    libc::pthread_sigmask(libc::SIG_SETMASK, &plan.mask, std::ptr::null_mut());
    let mut byte = 0u8;
    loop {
        let n = libc::read(go_r, (&mut byte as *mut u8).cast(), 1);
        if n == 1 {
            break;
        }
        if n < 0 && *libc::__errno_location() == libc::EINTR {
            continue;
        }
        // The parent went away before attaching: run nothing unguarded.
        libc::_exit(127);
    }
    libc::close(go_r);
    if plan.no_new_privs {
        if let Err(e) = seccomp::set_no_new_privs() {
            fail(ChildStage::NoNewPrivs, e.raw_os_error());
        }
    }
    if let Some(filter) = plan.filter {
        if let Err(e) = filter.install() {
            fail(ChildStage::Seccomp, e.raw_os_error());
        }
    }
    fail(ChildStage::Exec, Some(plan.exec.exec()))
}

/// Forks a child that execs `exec` with `mask` and no tracer (`run`'s
/// preload parent). Returns once the exec happened, or the errno it failed
/// with (the child then exited 127 and is reaped).
pub fn fork_exec(exec: &ExecArgs, mask: &libc::sigset_t) -> io::Result<Result<Tid, i32>> {
    let (report_r, report_w) = pipe()?;
    // SAFETY: the child branch calls only async-signal-safe functions on
    // memory prepared before the fork, and never returns.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: in the fresh child.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            libc::pthread_sigmask(libc::SIG_SETMASK, mask, std::ptr::null_mut());
            let errno = exec.exec();
            libc::write(
                report_w.as_raw_fd(),
                (&errno as *const i32).cast(),
                std::mem::size_of::<i32>(),
            );
            libc::_exit(127);
        }
    }
    drop(report_w);
    let mut errno = 0i32;
    loop {
        // SAFETY: reading at most 4 bytes into a local. At a successful exec
        // the kernel closes the CLOEXEC pipe with nothing in it.
        let n = unsafe {
            libc::read(
                report_r.as_raw_fd(),
                (&mut errno as *mut i32).cast(),
                std::mem::size_of::<i32>(),
            )
        };
        if n < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        if n == std::mem::size_of::<i32>() as isize {
            let _ = super::wait::wait_tid(pid);
            return Ok(Err(errno));
        }
        return Ok(Ok(pid));
    }
}

/// PR_SET_CHILD_SUBREAPER: orphans of our descendants are reparented to us.
pub fn become_subreaper() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Forks the waker: a child that does nothing but wait to be told to exit.
/// Its exit is a report in its parent thread's waitpid, which is how another
/// thread ends that thread's blocking wait without any signal handler (a
/// handler would be process-wide state in a library). Returns its pid and
/// the pipe end that tells it to go: a byte, or the pipe closing (our whole
/// process died). It blocks every signal it can.
pub fn fork_waker() -> io::Result<(Tid, OwnedFd)> {
    let (r, w) = pipe()?;
    // SAFETY: the full set; built before fork.
    let all: libc::sigset_t = unsafe {
        let mut s = std::mem::zeroed();
        libc::sigfillset(&mut s);
        s
    };
    // SAFETY: the child branch calls only async-signal-safe functions and
    // never returns.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: we are the freshly forked child; raw calls only.
        unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, &all, std::ptr::null_mut());
            let rfd = r.as_raw_fd();
            libc::close(w.as_raw_fd());
            // Hold nothing of the parent's (a pipe a test reads to its end,
            // say): close_range (5.9) where there is one; without it the fds
            // stay open until we exit, which we do when the parent dies.
            if rfd > 0 {
                libc::syscall(libc::SYS_close_range, 0u32, (rfd - 1) as u32, 0u32);
            }
            libc::syscall(libc::SYS_close_range, (rfd + 1) as u32, u32::MAX, 0u32);
            let mut byte = 0u8;
            loop {
                let n = libc::read(rfd, (&mut byte as *mut u8).cast(), 1);
                if n < 0 && *libc::__errno_location() == libc::EINTR {
                    continue;
                }
                libc::_exit(0);
            }
        }
    }
    drop(r);
    Ok((pid, w))
}

/// Tells the waker to exit (one byte; never blocks: the pipe holds 64 KiB).
pub fn wake(w: &OwnedFd) {
    // SAFETY: one byte from a local buffer to our own pipe.
    unsafe { libc::write(w.as_raw_fd(), b"w".as_ptr().cast(), 1) };
}
