//! Starting a program under the tracer (`spinguard run`), with the seccomp
//! filter in place before its first instruction when the engine wants one.
//!
//! The handshake: the child blocks reading a pipe; we PTRACE_SEIZE it (a
//! seized tracee can be PTRACE_LISTENed at group-stops, which is what job
//! control needs; PTRACE_TRACEME cannot give us that) and then release it.
//! Only then does the child set no_new_privs (if it must), install the
//! filter and exec, so there is never a moment where the filter is in place
//! and no tracer answers it. Everything the child needs is built before fork
//! ([`crate::sys::process`]).

use super::{Session, Task};
use crate::engine::{Engine, Spawn};
use crate::error::Error;
use crate::sys::process::{self, ChildPlan, ChildStage, ExecArgs, Forked};
use crate::sys::ptrace::{self, Options};
use crate::sys::seccomp::{self, Filter};
use crate::sys::signal::ChildSignaller;
use crate::sys::Tid;
use spinguard_common::SigSet;
use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Options for a program we start with our filter: follow every new task
/// and exec, see seccomp traps, tell syscall-stops from SIGTRAP, and make
/// sure no tracee outlives us with a SECCOMP_RET_TRACE filter and nobody to
/// answer it (seccomp(2): "If there is no tracer present, the system call is
/// not executed and returns a failure status with errno set to ENOSYS").
pub const FILTERED_OPTIONS: Options = Options::EXITKILL
    .union(Options::TRACESECCOMP)
    .union(Options::TRACESYSGOOD)
    .union(Options::TRACECLONE)
    .union(Options::TRACEFORK)
    .union(Options::TRACEVFORK)
    .union(Options::TRACEEXEC);

/// Options for a program we start without a filter: the same, but it may
/// outlive us (no EXITKILL), and a filter of its own that returns
/// SECCOMP_RET_TRACE gets ENOSYS as without a tracer (no TRACESECCOMP:
/// "if the tracer did not ask for seccomp stops, the system call fails with
/// ENOSYS", `__seccomp_filter()`).
pub const PLAIN_OPTIONS: Options = FILTERED_OPTIONS
    .difference(Options::EXITKILL)
    .difference(Options::TRACESECCOMP);

/// What to run.
#[derive(Clone, Debug)]
pub struct Command {
    program: OsString,
    arg0: Option<OsString>,
    /// Interval timers (which, value) to arm in the child just before exec.
    itimers: Vec<(libc::c_int, ItimerVal)>,
    args: Vec<OsString>,
    child_mask: SigSet,
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

    /// The program's `argv[0]`, when it is not the program's name (`exec -a`).
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

    pub fn program(&self) -> &OsStr {
        &self.program
    }

    /// The program found in PATH and what it execs, built before any fork.
    pub(crate) fn prepare(&self) -> Result<(PathBuf, ExecArgs), Error> {
        let path = resolve_program(&self.program).map_err(|source| Error::CannotRun {
            program: self.program.to_string_lossy().into_owned(),
            source,
        })?;
        let mut argv = vec![cstring(self.arg0.as_deref().unwrap_or(&self.program))?];
        for a in &self.args {
            argv.push(cstring(a)?);
        }
        let itimers = self.itimers.iter().map(|&(w, v)| (w, v.0)).collect();
        let exec = ExecArgs::new(cstring(path.as_os_str())?, argv, itimers);
        Ok((path, exec))
    }
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
    spinguard_common::sys::executable(&c)
}

/// A traced child on its way to exec.
pub(crate) struct Spawned {
    /// The resolved path that was executed.
    path: PathBuf,
    forked: Forked,
}

impl Spawned {
    /// Why the child exited before exec, once it has.
    pub fn error(&self) -> Option<Error> {
        let (stage, source) = self.forked.failure()?;
        Some(match stage {
            ChildStage::Exec => Error::CannotRun {
                program: self.path.display().to_string(),
                source,
            },
            ChildStage::Seccomp => Error::Setup {
                what: "installing the seccomp filter",
                source,
            },
            ChildStage::NoNewPrivs => Error::Setup {
                what: "setting no_new_privs",
                source,
            },
        })
    }
}

fn cstring(s: &OsStr) -> Result<CString, Error> {
    CString::new(s.as_bytes()).map_err(|_| Error::Setup {
        what: "argument contains a NUL byte",
        source: io::Error::from_raw_os_error(libc::EINVAL),
    })
}

impl Session {
    /// Starts `cmd` traced, the way `engine` wants it ([`Spawn`]); it becomes
    /// the main process whose exit ends [`Session::run`]. Returns as soon as
    /// the child is released: the exec (or its failure, see
    /// [`Error::CannotRun`]) is reported through the wait loop, so a signal
    /// the child gets on the way is never stuck waiting for a tracer that is
    /// blocked reading a pipe.
    pub fn spawn(&mut self, cmd: &Command, engine: &dyn Engine) -> Result<Tid, Error> {
        let (path, exec) = cmd.prepare()?;
        let filtered = engine.spawn() == Spawn::Filtered;
        let filter = filtered.then(Filter::guard);
        let plan = ChildPlan {
            exec: &exec,
            mask: cmd.child_mask.to_libc(),
            no_new_privs: filtered && !seccomp::have_cap_sys_admin(),
            filter: filter.as_ref(),
        };
        let mut forked = process::fork_child(&plan).map_err(Error::setup("fork"))?;
        let pid = forked.pid;
        let options = if filtered {
            FILTERED_OPTIONS
        } else {
            PLAIN_OPTIONS
        };
        if let Err(e) = ptrace::seize(pid, options) {
            process::kill_and_reap(pid);
            return Err(Error::Setup {
                what: "PTRACE_SEIZE of the child",
                source: io::Error::other(e),
            });
        }
        if let Err(e) = forked.release() {
            process::kill_and_reap(pid);
            return Err(Error::Setup {
                what: "releasing the child",
                source: e,
            });
        }
        self.spawned = Some(Spawned { path, forked });
        self.signaller = Some(ChildSignaller::new(pid));
        self.main = Some(pid);
        self.main_execed = false;
        self.tasks.insert(pid, Task::new(pid, true));
        self.stats.tasks += 1;
        Ok(pid)
    }
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
