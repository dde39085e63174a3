//! Starting a program under the tracer, with the seccomp filter in place
//! before its first instruction.
//!
//! Everything the child needs (C strings, argv, the filter) is built before
//! fork: between fork and exec the child makes raw, async-signal-safe calls
//! only, since another thread of ours may have held the allocator's lock at
//! the moment of fork.
//!
//! The handshake: the child blocks reading a pipe; the parent PTRACE_SEIZEs it
//! (a seized tracee can be PTRACE_LISTENed at group-stops, which is what job
//! control needs; PTRACE_TRACEME cannot give us that) and then writes one byte.
//! Only then does the child set no_new_privs (if it must), install the filter
//! and exec, so there is never a moment where the filter is in place and no
//! tracer answers it. A failure on the way is written to a CLOEXEC pipe as
//! (stage, errno): at a successful exec the kernel closes it and the pipe stays
//! empty.

use crate::ptrace::{self, Options, Tid};
use crate::seccomp::{self, Filter};
use crate::Error;
use spinguard_common::SigSet;
use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

extern "C" {
    static environ: *const *const libc::c_char;
}

/// What to run.
#[derive(Clone, Debug)]
pub struct Command {
    program: OsString,
    arg0: Option<OsString>,
    /// Interval timers (which, value) to arm in the child just before exec.
    itimers: Vec<(libc::c_int, ItimerVal)>,
    args: Vec<OsString>,
    child_mask: SigSet,
    guarded_commands: Vec<u32>,
}

impl Command {
    /// `program` is looked up in `PATH` when it has no slash, like execvp.
    pub fn new(program: impl Into<OsString>) -> Command {
        Command {
            program: program.into(),
            arg0: None,
            itimers: Vec::new(),
            args: Vec::new(),
            child_mask: SigSet::EMPTY,
            guarded_commands: spinguard_common::bpf::GUARDED_COMMANDS.to_vec(),
        }
    }

    pub fn args<I, S>(mut self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// The program's argv[0], when it is not the program's name (`exec -a`).
    pub fn arg0(mut self, arg0: impl Into<OsString>) -> Command {
        self.arg0 = Some(arg0.into());
        self
    }

    /// Interval timers to arm in the program as it starts (`setitimer(which,
    /// value)` right before exec): the ones its caller armed in spinguard's
    /// process, which survive an exec but not the fork that starts the program.
    pub fn itimers(mut self, timers: Vec<(libc::c_int, ItimerVal)>) -> Command {
        self.itimers = timers;
        self
    }

    /// The signal mask the program starts with (our own mask before we
    /// blocked the signals we forward, normally).
    pub fn child_mask(mut self, mask: SigSet) -> Command {
        self.child_mask = mask;
        self
    }

    /// The bpf commands the filter hands to the tracer.
    pub fn guarded_commands(mut self, commands: &[u32]) -> Command {
        self.guarded_commands = commands.to_vec();
        self
    }

    pub fn program(&self) -> &OsStr {
        &self.program
    }
}

/// `program`'s path the way execvp would find it: as given when it contains a
/// slash, else the first executable regular file of that name in `PATH`.
/// Errors are ENOENT (nowhere) or EACCES (found, but not executable).
pub fn resolve_program(program: &OsStr) -> io::Result<PathBuf> {
    if program.is_empty() {
        return Err(io::Error::from_raw_os_error(libc::ENOENT));
    }
    if program.as_bytes().contains(&b'/') {
        return Ok(PathBuf::from(program));
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    let mut denied = false;
    for dir in std::env::split_paths(&path) {
        let dir = if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir
        };
        let candidate = dir.join(program);
        match std::fs::metadata(&candidate) {
            Ok(m) if m.is_file() => {
                if is_executable(&candidate) {
                    return Ok(candidate);
                }
                denied = true;
            }
            _ => {}
        }
    }
    let errno = if denied { libc::EACCES } else { libc::ENOENT };
    Err(io::Error::from_raw_os_error(errno))
}

fn is_executable(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a valid C string.
    unsafe { libc::access(c.as_ptr(), libc::X_OK) == 0 }
}

/// An `itimerval` (a newtype, so `Command` stays `Debug`).
#[derive(Clone, Copy)]
pub struct ItimerVal(pub libc::itimerval);

impl std::fmt::Debug for ItimerVal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = &self.0.it_value;
        let i = &self.0.it_interval;
        write!(
            f,
            "{}.{:06}s every {}.{:06}s",
            v.tv_sec, v.tv_usec, i.tv_sec, i.tv_usec
        )
    }
}

/// What a child execs, built before fork (nothing is allocated after it):
/// the program, and `/bin/sh PROGRAM ARGS...` for when the kernel does not
/// recognise the file (ENOEXEC), which is what execvp does with a script
/// that has no `#!` line.
pub(crate) struct ExecArgs {
    path: CString,
    itimers: Vec<(libc::c_int, libc::itimerval)>,
    _strings: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    sh_argv: Vec<*const libc::c_char>,
}

const BIN_SH: &std::ffi::CStr = c"/bin/sh";

impl ExecArgs {
    pub(crate) fn new(cmd: &Command, path: &Path) -> Result<ExecArgs, Error> {
        let path = cstring(path.as_os_str())?;
        let mut strings = vec![cstring(cmd.arg0.as_deref().unwrap_or(&cmd.program))?];
        for a in &cmd.args {
            strings.push(cstring(a)?);
        }
        let mut argv: Vec<*const libc::c_char> = strings.iter().map(|c| c.as_ptr()).collect();
        argv.push(std::ptr::null());
        let mut sh_argv = vec![BIN_SH.as_ptr(), path.as_ptr()];
        sh_argv.extend(strings.iter().skip(1).map(|c| c.as_ptr()));
        sh_argv.push(std::ptr::null());
        Ok(ExecArgs {
            path,
            itimers: cmd.itimers.iter().map(|&(w, v)| (w, v.0)).collect(),
            _strings: strings,
            argv,
            sh_argv,
        })
    }

    /// Execs the program with our environment; returns only on failure,
    /// with the errno to report (ENOEXEC when /bin/sh could not run it either).
    ///
    /// # Safety
    /// Only between fork and exec, in the child: async-signal-safe calls only.
    pub(crate) unsafe fn exec(&self) -> i32 {
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

/// A traced child that has been let go towards exec.
#[derive(Debug)]
pub struct Spawned {
    pub pid: Tid,
    /// The resolved path that was executed.
    pub path: PathBuf,
    report: OwnedFd,
}

impl Spawned {
    /// Reads the child's failure report, once it has exited without exec.
    pub(crate) fn failure(&self) -> Option<(ChildStage, io::Error)> {
        let mut buf = [0u8; 8];
        // SAFETY: reading into our own buffer from our own fd. The child has
        // exited, so the write end is closed: this never blocks.
        let n = unsafe { libc::read(self.report.as_raw_fd(), buf.as_mut_ptr().cast(), 8) };
        if n != 8 {
            return None;
        }
        let stage = match u32::from_ne_bytes(buf[0..4].try_into().unwrap()) {
            1 => ChildStage::NoNewPrivs,
            2 => ChildStage::Seccomp,
            _ => ChildStage::Exec,
        };
        let errno = i32::from_ne_bytes(buf[4..8].try_into().unwrap());
        Some((stage, io::Error::from_raw_os_error(errno)))
    }
}

pub(crate) fn cstring(s: &OsStr) -> Result<CString, Error> {
    CString::new(s.as_bytes()).map_err(|_| Error::Setup {
        what: "argument contains a NUL byte",
        source: io::Error::from_raw_os_error(libc::EINVAL),
    })
}

pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into `fds`.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds are fresh and ours.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Forks, seizes and releases the child towards exec. Returns as soon as the
/// child is released; the exec (or its failure) is reported through the
/// tracer's wait loop, so a signal the child gets on the way is never stuck
/// waiting for a tracer that is blocked reading a pipe.
///
/// Must be called on the thread that will run the tracer loop: ptrace requests
/// are only accepted from the thread that attached.
pub fn spawn(cmd: &Command) -> Result<Spawned, Error> {
    let path = resolve_program(&cmd.program).map_err(|source| Error::CannotRun {
        program: cmd.program.to_string_lossy().into_owned(),
        source,
    })?;
    let exec = ExecArgs::new(cmd, &path)?;
    let filter = Filter::trace_bpf_commands(&cmd.guarded_commands);
    let need_nnp = !seccomp::have_cap_sys_admin();
    let child_mask = cmd.child_mask.to_libc();
    let setup = |what| move |source| Error::Setup { what, source };
    let (go_r, go_w) = pipe().map_err(setup("pipe"))?;
    let (report_r, report_w) = pipe().map_err(setup("pipe"))?;

    // SAFETY: the child branch below calls only async-signal-safe functions
    // and never returns.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(Error::Setup {
            what: "fork",
            source: io::Error::last_os_error(),
        });
    }
    if pid == 0 {
        // SAFETY: we are the freshly forked child.
        unsafe {
            child(
                go_r.as_raw_fd(),
                go_w.as_raw_fd(),
                report_w.as_raw_fd(),
                &child_mask,
                need_nnp,
                &filter,
                &exec,
            )
        }
    }
    drop(go_r);
    drop(report_w);
    if let Err(e) = ptrace::seize(pid, Options::GUARD) {
        // SAFETY: our own child, which would otherwise wait forever.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let _ = ptrace::wait_tid(pid);
        return Err(Error::Setup {
            what: "PTRACE_SEIZE of the child",
            source: io::Error::other(e),
        });
    }
    // SAFETY: one byte from a local buffer to our pipe.
    let n = unsafe { libc::write(go_w.as_raw_fd(), b"g".as_ptr().cast(), 1) };
    if n != 1 {
        let err = io::Error::last_os_error();
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        return Err(Error::Setup {
            what: "releasing the child",
            source: err,
        });
    }
    Ok(Spawned {
        pid,
        path,
        report: report_r,
    })
}

/// The child between fork and exec.
///
/// # Safety
/// Call only in a freshly forked child; every pointer must stay valid (they
/// point into the parent's memory, which the child has a copy of).
#[allow(clippy::too_many_arguments)]
unsafe fn child(
    go_r: libc::c_int,
    go_w: libc::c_int,
    report: libc::c_int,
    mask: &libc::sigset_t,
    need_nnp: bool,
    filter: &Filter,
    exec: &ExecArgs,
) -> ! {
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
    libc::pthread_sigmask(libc::SIG_SETMASK, mask, std::ptr::null_mut());
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
    if need_nnp {
        if let Err(e) = seccomp::set_no_new_privs() {
            fail(ChildStage::NoNewPrivs, e.raw_os_error());
        }
    }
    if let Err(e) = filter.install() {
        fail(ChildStage::Seccomp, e.raw_os_error());
    }
    let errno = exec.exec();
    fail(ChildStage::Exec, Some(errno))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_like_execvp() {
        assert!(resolve_program(OsStr::new("sh")).unwrap().is_absolute());
        assert_eq!(
            resolve_program(OsStr::new("no-such-program-spinguard"))
                .unwrap_err()
                .raw_os_error(),
            Some(libc::ENOENT)
        );
        assert_eq!(
            resolve_program(OsStr::new("./x")).unwrap(),
            PathBuf::from("./x")
        );
    }
}
