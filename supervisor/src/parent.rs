//! The program's parent without a tracer: preload mode when spinguard must
//! stay, as a container's PID 1 or with `run --subreaper`. tini's duties:
//! start the program (fork and exec; the shim, already in the environment,
//! does the guarding), forward signals ([`crate::forward`], which also keeps
//! a stray default-fatal signal from ending us), reap every zombie (orphans
//! are reparented to PID 1 or to a subreaper: nobody else will), and report
//! how the program ended.
//!
//! Job control: the program is in our process group, so Ctrl-Z stops it
//! directly; when it stops and we are the terminal's foreground job, we stop
//! too, so the shell gets its prompt back (its `fg` continues the group).

use crate::exit::ExitStatus;
use crate::forward::{self, Forwarder, SignalBlock};
use crate::spawn::{self, Command, ExecArgs};
use crate::Error;
use std::io;
use std::os::fd::AsRawFd;

/// How to be the parent.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// Become a child subreaper (PR_SET_CHILD_SUBREAPER), so orphans of the
    /// program's tree are reparented to us; PID 1 is one without asking.
    pub subreaper: bool,
    /// Stop ourselves when the program stops (Ctrl-Z at a terminal).
    pub follow_terminal_stops: bool,
}

/// How the run ended.
#[derive(Clone, Copy, Debug)]
pub struct Outcome {
    pub status: ExitStatus,
    /// Zombies reaped that were not the program (its orphans).
    pub orphans_reaped: u64,
    /// Signals forwarded to the program.
    pub forwarded: u64,
}

/// Runs `cmd` as our child with our environment until it ends.
pub fn run(cmd: &Command, opts: Options) -> Result<Outcome, Error> {
    let setup = |what| move |source| Error::Setup { what, source };
    if opts.subreaper {
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
            return Err(setup("becoming a child subreaper")(
                io::Error::last_os_error(),
            ));
        }
    }
    let block = SignalBlock::new(
        forward::forwarded()
            .union(forward::job_control())
            .union(forward::absorbed()),
    )
    .map_err(setup("blocking signals"))?;
    let path = spawn::resolve_program(cmd.program()).map_err(|source| Error::CannotRun {
        program: cmd.program().to_string_lossy().into_owned(),
        source,
    })?;
    let exec = ExecArgs::new(cmd, &path)?;
    let child_mask = block.previous().to_libc();
    let (report_r, report_w) = spawn::pipe().map_err(setup("pipe"))?;

    // SAFETY: the child branch calls only async-signal-safe functions on
    // memory prepared before the fork, and never returns.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(setup("fork")(io::Error::last_os_error()));
    }
    if pid == 0 {
        // SAFETY: in the fresh child.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            libc::pthread_sigmask(libc::SIG_SETMASK, &child_mask, std::ptr::null_mut());
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
    if let Some(errno) = exec_failure(&report_r) {
        let _ = wait(pid, 0);
        return Err(Error::CannotRun {
            program: cmd.program().to_string_lossy().into_owned(),
            source: io::Error::from_raw_os_error(errno),
        });
    }
    let forwarder = Forwarder::start(pid, forward::forwarded())
        .map_err(setup("starting the signal forwarder"))?;
    let mut orphans = 0;
    let status = loop {
        match wait(-1, libc::WUNTRACED) {
            Ok((p, st)) if p == pid => {
                if libc::WIFSTOPPED(st) {
                    if opts.follow_terminal_stops {
                        // SAFETY: stopping ourselves; the shell's SIGCONT to
                        // the group continues both of us.
                        unsafe { libc::kill(libc::getpid(), libc::SIGSTOP) };
                    }
                    continue;
                }
                break decode(st);
            }
            Ok((p, _)) => {
                orphans += 1;
                log::debug!("reaped pid {p}, an orphan of the program's");
            }
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => return Err(Error::Wait(e)),
        }
    };
    // Orphans that died meanwhile: no zombie is left behind.
    while let Ok((p, _)) = wait(-1, libc::WNOHANG) {
        if p <= 0 {
            break;
        }
        orphans += 1;
    }
    let forwarded = forwarder.forwarded();
    drop(forwarder);
    drop(block);
    Ok(Outcome {
        status,
        orphans_reaped: orphans,
        forwarded,
    })
}

/// The errno the child reported, or None once it exec'd (the kernel closed
/// the CLOEXEC pipe without a byte in it).
fn exec_failure(r: &std::os::fd::OwnedFd) -> Option<i32> {
    let mut errno = 0i32;
    loop {
        // SAFETY: reading at most 4 bytes into a local.
        let n = unsafe {
            libc::read(
                r.as_raw_fd(),
                (&mut errno as *mut i32).cast(),
                std::mem::size_of::<i32>(),
            )
        };
        if n < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        return (n == std::mem::size_of::<i32>() as isize).then_some(errno);
    }
}

/// waitpid(pid, flags): (pid, status); pid 0 with WNOHANG when none is ready.
fn wait(pid: libc::pid_t, flags: libc::c_int) -> io::Result<(libc::pid_t, libc::c_int)> {
    let mut st = 0;
    // SAFETY: waitpid writes one int.
    let r = unsafe { libc::waitpid(pid, &mut st, flags) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((r, st))
}

fn decode(st: libc::c_int) -> ExitStatus {
    if libc::WIFSIGNALED(st) {
        ExitStatus::Signal(libc::WTERMSIG(st))
    } else {
        ExitStatus::Code(libc::WEXITSTATUS(st))
    }
}
