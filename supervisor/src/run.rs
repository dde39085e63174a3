//! `spinguard run` in one call: start a program traced, guard its loads,
//! forward signals to it, and return how it ended.

use crate::engine::policy::GuardPolicy;
use crate::engine::seccomp::SeccompGuard;
use crate::engine::signal::SignalGuard;
use crate::engine::Engine;
use crate::error::Error;
use crate::event::{Observer, Stats};
use crate::exit::ExitStatus;
use crate::session::forward::{self, Forwarder};
use crate::session::spawn::Command;
use crate::session::{End, Session};
use crate::sys::signal::SignalBlock;

/// Where `run` catches guarded calls (docs/supervisor.md has the numbers).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EngineKind {
    /// A seccomp filter stops exactly the guarded calls at their entry:
    /// every load is guarded from its first attempt; every syscall pays the
    /// filter; the program dies with us.
    #[default]
    Seccomp,
    /// No filter: the guard engages at the signal-delivery stop of a signal
    /// that cut a load short, then follows the loading thread. Syscalls pay
    /// nothing; the program outlives us (untraced) if we die.
    Signal,
}

#[derive(Clone, Debug, Default)]
pub struct RunConfig {
    pub policy: GuardPolicy,
    pub engine: EngineKind,
    /// See [`Session::follow_terminal_stops`].
    pub follow_terminal_stops: bool,
}

/// How a supervised run ended.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub status: ExitStatus,
    pub stats: Stats,
    /// Signals forwarded to the child.
    pub forwarded: u64,
}

/// Runs `cmd` under the guard until it exits: blocks the forwarded,
/// job-control and absorbed signals (call this before starting other threads), spawns the
/// program, forwards signals to it, and runs the session on the calling
/// thread. Processes the program leaves behind are killed with us under the
/// seccomp engine (they carry the filter), detached under the signal engine.
pub fn run(cmd: Command, config: RunConfig, observer: &mut dyn Observer) -> Result<Outcome, Error> {
    let forward = forward::forwarded();
    let block = SignalBlock::new(forward::blocked()).map_err(Error::setup("blocking signals"))?;
    let cmd = cmd.child_mask(block.previous());
    let mut engine: Box<dyn Engine> = match config.engine {
        EngineKind::Seccomp => Box::new(SeccompGuard::new(config.policy)),
        EngineKind::Signal => Box::new(SignalGuard::new(config.policy)),
    };
    let mut session = Session::new();
    session.follow_terminal_stops(config.follow_terminal_stops);
    session.spawn(&cmd, engine.as_ref())?;
    let child = session.child_signaller().expect("spawned above");
    let forwarder =
        Forwarder::start(child, forward).map_err(Error::setup("starting the signal forwarder"))?;
    let end = session.run(engine.as_mut(), observer)?;
    let forwarded = forwarder.forwarded();
    drop(forwarder);
    let End::Exited(status) = end else {
        unreachable!("run's session has no stop handle");
    };
    if config.engine == EngineKind::Signal && session.traced() > 0 {
        session.detach(engine.as_mut(), observer)?;
    }
    Ok(Outcome {
        status,
        stats: session.stats().clone(),
        forwarded,
    })
}
