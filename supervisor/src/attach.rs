//! Guarding a process that is already running (`spinguard attach`, and
//! `watch --rescue`): a [`Session`] that seized it, the signal-stop guard
//! ([`SignalGuard`]), and the observer that sees each guarded call.
//!
//! ```no_run
//! use spinguard_supervisor::attach::Attachment;
//! use spinguard_supervisor::session::{target, End, StopReason};
//! use spinguard_supervisor::{Event, GuardPolicy};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let target = target::check_target(4242)?;
//! let mut seen = |e: &Event| {
//!     if let Event::Guarded(call) = e {
//!         println!("{call}"); // result, attempts, what was held back
//!     }
//! };
//! let mut a = Attachment::new(target, GuardPolicy::default(), &mut seen)?;
//! let handle = a.handle(); // Send + Sync: stop it from any thread
//! handle.stop_at(Some(std::time::Instant::now() + std::time::Duration::from_secs(60)));
//! a.seize()?;
//! match a.run()? {
//!     End::Exited(status) => println!("it ended: {status}"),
//!     End::Stopped(_) => println!("{:?}", a.detach()?), // every mask exact
//! }
//! # Ok(()) }
//! ```

use crate::engine::policy::GuardPolicy;
use crate::engine::signal::SignalGuard;
use crate::error::{AttachError, Error};
use crate::event::{Observer, Stats};
use crate::session::target::Target;
use crate::session::{Detached, End, Seized, Session, StopHandle};

/// One attached process (not `Send`: it belongs to the thread that made it).
pub struct Attachment<'o> {
    session: Session,
    engine: SignalGuard,
    observer: &'o mut dyn Observer,
    target: Target,
    handle: StopHandle,
}

impl<'o> Attachment<'o> {
    /// Prepares to attach to `target` (nothing touches it yet). Events go
    /// to `observer`, on this thread, between a stop and the resume that ends
    /// it: it must not block.
    pub fn new(
        target: Target,
        policy: GuardPolicy,
        observer: &'o mut dyn Observer,
    ) -> Result<Attachment<'o>, AttachError> {
        Attachment::with_handle(target, policy, observer, StopHandle::new())
    }

    /// [`Attachment::new`], stopped by `handle`, made beforehand: the
    /// observer can hold a clone (to let go once loads have been quiet for a
    /// while: `handle.stop_at(Some(Instant::now() + linger))` at each
    /// [`crate::Event::Guarded`]).
    pub fn with_handle(
        target: Target,
        policy: GuardPolicy,
        observer: &'o mut dyn Observer,
        handle: StopHandle,
    ) -> Result<Attachment<'o>, AttachError> {
        let mut session = Session::new();
        session.with_handle(handle.clone())?;
        Ok(Attachment {
            session,
            engine: SignalGuard::new(policy),
            observer,
            target,
            handle,
        })
    }

    /// Stops [`Attachment::seize`] or [`Attachment::run`] from any thread.
    pub fn handle(&self) -> StopHandle {
        self.handle.clone()
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Seizes every thread. A stop asked for meanwhile ends the seize early
    /// ([`Seized::complete`] false): detach then.
    pub fn seize(&mut self) -> Result<Seized, AttachError> {
        self.session
            .seize(&self.target, &mut self.engine, &mut *self.observer)
    }

    /// Guards until the process ends or the handle asks to stop.
    pub fn run(&mut self) -> Result<End, Error> {
        self.session.run(&mut self.engine, &mut *self.observer)
    }

    /// Lets go of every thread, each with exactly the mask it would have had
    /// without us; a thread inside a guarded call finishes it first.
    pub fn detach(&mut self) -> Result<Detached, Error> {
        self.session.detach(&mut self.engine, &mut *self.observer)
    }

    pub fn stats(&self) -> &Stats {
        self.session.stats()
    }
}
