//! Job control under the tracer: group-stops stay stops (PTRACE_LISTEN), and
//! Ctrl-Z stops spinguard with its program so the shell gets its prompt back.

use super::{End, Session};
use crate::engine::Engine;
use crate::error::Error;
use crate::event::{Event, Observer};
use crate::sys::ptrace::PtraceError;
use crate::sys::signal;
use crate::sys::{self, Tid};
use crate::tracee::Stopped;
use spinguard_common::signals::signal_name;

impl Session {
    pub(super) fn group_stop(
        &mut self,
        observer: &mut dyn Observer,
        task: Stopped,
        pid: Tid,
        signal: i32,
    ) -> Result<(), PtraceError> {
        let tid = task.tid();
        self.stats.group_stops += 1;
        self.task(tid).group_stopped = true;
        observer.event(&Event::GroupStop { pid, tid, signal });
        // Stay stopped, but let SIGCONT (or SIGKILL) wake the task: with
        // PTRACE_CONT it would run on, stop or no stop; left alone it would
        // not notice SIGCONT until we resumed it.
        task.listen()?;
        // Any task of the job counts, not only the main process: a shell that
        // is inside vfork() cannot stop until its child execs, but the child
        // can, and without us stopping too nobody would tell the shell.
        let terminal_stop = matches!(signal, libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU);
        if self.follow_terminal_stops
            && terminal_stop
            && !self.stale
            && sys::in_our_process_group(tid)
        {
            log::info!("pid {pid} stopped by {}: stopping too", signal_name(signal));
            signal::stop_ourselves();
            // Continued (fg/bg): pass it on, in case it was sent to us alone.
            if let Some(main) = self.main {
                signal::kill(main, libc::SIGCONT);
            }
            self.self_stopped = true;
        }
        Ok(())
    }

    /// After we stopped ourselves for Ctrl-Z and the shell continued us, the
    /// reports waiting in the kernel were made before that SIGCONT: a
    /// signal-delivery-stop for a stop signal that the SIGCONT would have
    /// flushed had it still been pending (inject it now and the task stops
    /// for good), or a group-stop of another task of the job (stopping
    /// ourselves again would make `fg` look like it did nothing). Handle them
    /// with that in mind, then go back to normal.
    pub(super) fn drain_stale(
        &mut self,
        engine: &mut dyn Engine,
        observer: &mut dyn Observer,
    ) -> Result<Option<End>, Error> {
        if !std::mem::take(&mut self.self_stopped) {
            return Ok(None);
        }
        self.stale = true;
        let result = loop {
            // Reports the reaper has taken but not handed out yet are as
            // old as the ones still waiting in the kernel.
            match self.reaper.try_take() {
                Ok(Some((tid, status))) => match self.dispatch(engine, observer, tid, status) {
                    Ok(None) => continue,
                    other => break other,
                },
                Ok(None) => break Ok(None),
                Err(e) => break Err(Error::Wait(e)),
            }
        };
        self.stale = false;
        result
    }
}
