//! `spinguard attach`: guard a process that is already running.
//!
//! A running process cannot be given a seccomp filter from outside, so the
//! whole process is traced with a stop at every syscall entry and exit
//! ([`StopMode::EverySyscall`]); the [`Tracer`] applies the same guard as
//! `spinguard run` at the entry stop of a guarded bpf command (save the
//! thread's mask, hold `saved | guard`, restart on EAGAIN/EINTR, restore the
//! exact saved mask at the exit stop). [`crate::session`] seizes and detaches.

use crate::event::{Observer, Stats};
use crate::exit::ExitStatus;
use crate::session::{AttachError, Detached, Seized, Session, Target, Wakeup};
use crate::tracer::{Config, StopMode, Tracer};
use crate::{Error, GuardPolicy};
use std::time::Duration;

/// How an attach session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// We detached: the deadline passed (`signal` None) or we got `signal`.
    Detached { signal: Option<i32> },
    /// The process ended while attached.
    Exited(ExitStatus),
}

#[derive(Clone, Debug)]
pub struct Outcome {
    pub seized: Seized,
    pub end: End,
    pub detached: Option<Detached>,
    pub stats: Stats,
}

/// Attaches to `target`, guards its loads until `deadline` (None: until
/// SIGINT/SIGTERM/SIGHUP) or its exit, then detaches. `on_seized` runs once
/// every thread is traced. Call on the main thread before starting others.
pub fn attach(
    target: &Target,
    policy: GuardPolicy,
    deadline: Option<Duration>,
    observer: &mut dyn Observer,
    on_seized: &mut dyn FnMut(&Seized),
) -> Result<Outcome, AttachError> {
    let wake = Wakeup::start(deadline).map_err(|source| Error::Setup {
        what: "setting up the signal handling",
        source,
    })?;
    let config = Config {
        policy,
        mode: StopMode::EverySyscall,
        follow_terminal_stops: false,
    };
    let mut tracer = Tracer::new(config, observer);
    let (mut session, seized) = match Session::attach(target, &mut tracer, &wake) {
        Ok(s) => s,
        Err(AttachError::Exited { status, .. }) => {
            return Ok(Outcome {
                seized: Seized {
                    threads: 0,
                    elapsed: Duration::ZERO,
                    complete: true,
                },
                end: End::Exited(status),
                detached: None,
                stats: tracer.stats().clone(),
            })
        }
        Err(e) => return Err(e),
    };
    on_seized(&seized);
    let end = session.run(&mut tracer, &wake)?;
    let (end, detached) = match end {
        Some(status) => (End::Exited(status), None),
        None => (
            End::Detached {
                signal: wake.signal(),
            },
            Some(session.detach(&mut tracer)?),
        ),
    };
    Ok(Outcome {
        seized,
        end,
        detached,
        stats: tracer.stats().clone(),
    })
}
