//! Counters for guarded calls, and the one-line summary printed at exit.
//!
//! Plain relaxed atomics: updated from any thread (and from signal handlers
//! that load programs), read once at exit. The summary is formatted into a
//! stack buffer with `core::fmt` and written with one write(2) (see
//! [`crate::line`]).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use spinguard_common::bpf::{self, CommandCounts, GUARDED_COMMANDS, GUARDED_COUNT};
use spinguard_common::SigSet;

use crate::call::GuardedCall;
use crate::config::{self, Mode};
use crate::line::Line;
use crate::sys;

/// Calls per guarded command, in `bpf::GUARDED_COMMANDS` order.
static CALLS: [AtomicU64; GUARDED_COUNT] = [const { AtomicU64::new(0) }; GUARDED_COUNT];
/// Calls that returned EAGAIN or EINTR: each one is a retry the loader must make.
static RETRIES: AtomicU64 = AtomicU64::new(0);
static NANOS: AtomicU64 = AtomicU64::new(0);
/// Sum of `held_back` (only counted while events are on).
static HELD_BACK: AtomicU64 = AtomicU64::new(0);

/// A snapshot of the counters, for the `summary` event.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Counters {
    pub calls: CommandCounts,
    pub retries: u64,
    pub nanos: u64,
    pub held_back: u64,
}

pub(crate) fn counters() -> Counters {
    Counters {
        calls: CommandCounts::from_array(CALLS.each_ref().map(|c| c.load(Relaxed))),
        retries: RETRIES.load(Relaxed),
        nanos: NANOS.load(Relaxed),
        held_back: HELD_BACK.load(Relaxed),
    }
}

/// In a fork()ed child: its summary is about its own calls, not the ones its
/// parent made before the fork (the child's events are a new stream, seq 1).
/// A pthread_atfork child handler: atomics only.
pub(crate) extern "C" fn reset_after_fork() {
    for c in &CALLS {
        c.store(0, Relaxed);
    }
    RETRIES.store(0, Relaxed);
    NANOS.store(0, Relaxed);
    HELD_BACK.store(0, Relaxed);
}

pub(crate) fn record(call: &GuardedCall) {
    if let Some(c) = bpf::guarded_index(call.cmd).and_then(|i| CALLS.get(i)) {
        c.fetch_add(1, Relaxed);
    }
    if call.interrupted() {
        RETRIES.fetch_add(1, Relaxed);
    }
    NANOS.fetch_add(call.ns, Relaxed);
    if !call.held_back.is_empty() {
        HELD_BACK.fetch_add(call.held_back.len() as u64, Relaxed);
    }
}

/// e.g. `3 guarded bpf calls (BPF_PROG_LOAD 3), 0 EAGAIN/EINTR, 361.2 ms inside,
/// guarding SIGALRM,SIGVTALRM,SIGPROF`.
fn format_summary(
    w: &mut impl fmt::Write,
    pid: i32,
    calls: [u64; GUARDED_COUNT],
    retries: u64,
    nanos: u64,
    mode: Mode,
    guard: SigSet,
) -> fmt::Result {
    let total: u64 = calls.iter().sum();
    write!(
        w,
        "pid {pid}: {total} guarded bpf call{}",
        if total == 1 { "" } else { "s" }
    )?;
    let mut first = true;
    for (&cmd, &n) in GUARDED_COMMANDS.iter().zip(calls.iter()) {
        if n > 0 {
            w.write_str(if first { " (" } else { ", " })?;
            write!(w, "{} {n}", bpf::command_name(cmd))?;
            first = false;
        }
    }
    if !first {
        w.write_str(")")?;
    }
    let tenths = nanos / 100_000;
    write!(
        w,
        ", {retries} EAGAIN/EINTR, {}.{} ms inside, ",
        tenths / 10,
        tenths % 10
    )?;
    match mode {
        Mode::Guard => write!(w, "guarding {guard}")?,
        Mode::Observe => write!(w, "observe mode, blocking nothing (would guard {guard})")?,
    }
    Ok(())
}

pub(crate) fn write_summary() {
    let cfg = config::current();
    let mut line = Line::new();
    let _ = format_summary(
        &mut line,
        sys::getpid(),
        CALLS.each_ref().map(|c| c.load(Relaxed)),
        RETRIES.load(Relaxed),
        NANOS.load(Relaxed),
        cfg.mode,
        cfg.guard,
    );
    line.emit();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fmt(calls: [u64; GUARDED_COUNT], retries: u64, nanos: u64, mode: Mode) -> String {
        let mut s = String::new();
        format_summary(
            &mut s,
            123,
            calls,
            retries,
            nanos,
            mode,
            SigSet::DEFAULT_GUARD,
        )
        .unwrap();
        s
    }

    #[test]
    fn summary_line() {
        assert_eq!(
            fmt([3, 0], 0, 361_249_999, Mode::Guard),
            "pid 123: 3 guarded bpf calls (BPF_PROG_LOAD 3), 0 EAGAIN/EINTR, \
             361.2 ms inside, guarding SIGALRM,SIGVTALRM,SIGPROF"
        );
        assert_eq!(
            fmt([1, 2], 2, 50_000, Mode::Observe),
            "pid 123: 3 guarded bpf calls (BPF_PROG_LOAD 1, BPF_PROG_TEST_RUN 2), \
             2 EAGAIN/EINTR, 0.0 ms inside, observe mode, blocking nothing (would guard \
             SIGALRM,SIGVTALRM,SIGPROF)"
        );
        assert!(fmt([1, 0], 0, 0, Mode::Guard).contains(": 1 guarded bpf call ("));
        assert!(fmt([0, 0], 0, 0, Mode::Guard).contains(": 0 guarded bpf calls, 0 EAGAIN"));
    }
}
