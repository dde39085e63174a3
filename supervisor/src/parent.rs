//! The program's parent without a tracer: preload mode when spinguard must
//! stay, as a container's PID 1 or with `run --subreaper`. tini's duties:
//! start the program (fork and exec; the shim, already in the environment,
//! does the guarding), forward signals ([`crate::session::forward`], which also keeps
//! a stray default-fatal signal from ending us), reap every zombie (orphans
//! are reparented to PID 1 or to a subreaper: nobody else will), and report
//! how the program ended.
//!
//! Job control: the program is in our process group, so Ctrl-Z stops it
//! directly; when it stops and we are the terminal's foreground job, we stop
//! too, so the shell gets its prompt back (its `fg` continues the group).

use crate::error::Error;
use crate::exit::ExitStatus;
use crate::session::forward::{self, Forwarder};
use crate::session::spawn::Command;
use crate::sys::process;
use crate::sys::signal::{self, ChildSignaller, SignalBlock};
use crate::sys::wait::{self, WaitStatus};
use std::io;

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
    if opts.subreaper {
        process::become_subreaper().map_err(Error::setup("becoming a child subreaper"))?;
    }
    let block = SignalBlock::new(forward::blocked()).map_err(Error::setup("blocking signals"))?;
    let (_, exec) = cmd.prepare()?;
    let pid = match process::fork_exec(&exec, &block.previous().to_libc())
        .map_err(Error::setup("fork"))?
    {
        Ok(pid) => pid,
        Err(errno) => {
            return Err(Error::CannotRun {
                program: cmd.program().to_string_lossy().into_owned(),
                source: io::Error::from_raw_os_error(errno),
            })
        }
    };
    let child = ChildSignaller::new(pid);
    let forwarder = Forwarder::start(child.clone(), forward::forwarded())
        .map_err(Error::setup("starting the signal forwarder"))?;
    let mut orphans = 0;
    let status = loop {
        match wait::wait_children(libc::WUNTRACED).map_err(Error::Wait)? {
            Some((p, WaitStatus::Stopped { .. })) if p == pid => {
                if opts.follow_terminal_stops {
                    // The shell's SIGCONT to the group continues both of us.
                    signal::stop_ourselves();
                }
            }
            Some((p, WaitStatus::Exited(status))) if p == pid => {
                child.reaped();
                break status;
            }
            Some((p, _)) if p == pid => {}
            Some((p, WaitStatus::Exited(_))) => {
                orphans += 1;
                log::debug!("reaped pid {p}, an orphan of the program's");
            }
            // An orphan stopped (WUNTRACED): nothing reaped.
            Some(_) => {}
            None => {
                return Err(Error::Wait(io::Error::from_raw_os_error(libc::ECHILD)));
            }
        }
    };
    // Orphans that died meanwhile: no zombie is left behind.
    while let Ok(Some(_)) = wait::wait_children(libc::WNOHANG) {
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
