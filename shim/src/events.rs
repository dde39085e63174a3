//! `SPINGUARD_EVENTS=PATH`: one datagram per guarded call, and a summary at
//! exit (docs/events.md).
//!
//! The sender is set once, in the constructor, and only when the variable is
//! set (never in a secure-execution process: `config` reads no `SPINGUARD_*`
//! there). Everything after that is the common crate's [`Sender`]: a stack
//! buffer, one `sendto(MSG_DONTWAIT)`, relaxed atomics. Safe in a signal
//! handler; never blocks; a failure is counted, never reported on the spot.
//!
//! Only the guarded path comes here: the pass-through in `hook.rs` does not
//! look at events at all.

use std::sync::OnceLock;

use spinguard_common::events::{Body, CallResult, ProgLoad, Sender, Source, Summary};

use crate::call::GuardedCall;
use crate::stats;
use crate::sys;

static EVENTS: OnceLock<Sender> = OnceLock::new();

/// Sets the destination; a path that cannot be a socket address costs one
/// warning line and no events. Called once, from the constructor.
pub(crate) fn init(path: &std::ffi::OsStr) -> Result<(), String> {
    let sender = Sender::new(path)
        .map(|s| s.with_comm(sys::comm()))
        .map_err(|e| {
            format!(
                "ignoring {}: {e}; sending no events",
                spinguard_common::env::EVENTS
            )
        })?;
    let _ = EVENTS.set(sender);
    Ok(())
}

/// pthread_atfork child handler: a forked child starts its own stream (seq
/// 1, by the sender's per-pid counter) and its own counters.
pub(crate) extern "C" fn after_fork() {
    stats::reset_after_fork();
    if let Some(sender) = EVENTS.get() {
        sender.reset_stats();
    }
}

/// Whether events are on: one atomic load (OnceLock::get).
#[inline]
pub(crate) fn enabled() -> bool {
    EVENTS.get().is_some()
}

/// The `prog_load` of one finished call.
pub(crate) fn prog_load(call: &GuardedCall) {
    let Some(sender) = EVENTS.get() else {
        return;
    };
    let result = if call.ret == -1 {
        CallResult::Err(call.errno)
    } else {
        CallResult::Ok(call.ret)
    };
    sender.emit(
        Source::Shim,
        &Body::ProgLoad(ProgLoad {
            cmd: call.cmd,
            attempts: 1,
            result,
            duration_us: call.ns / 1000,
            held_back: call.held_back.len() as u64,
            held_back_signals: call.held_back,
        }),
    );
}

/// The `summary`, from the exit handler. Sent by every process that had
/// events on, also one that made no guarded call (it says so: zeros).
pub(crate) fn summary() {
    let Some(sender) = EVENTS.get() else {
        return;
    };
    let c = stats::counters();
    let calls = c.calls.pairs();
    let s = sender.stats();
    sender.emit(
        Source::Shim,
        &Body::Summary(Summary {
            calls: &calls,
            retries: c.retries,
            guarded_us: c.nanos / 1000,
            held_back: c.held_back,
            events_sent: s.sent,
            events_dropped: s.send_failures + s.too_big,
            send_failures: s.send_failures,
        }),
    );
}
