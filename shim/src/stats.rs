//! Counters for guarded calls, and the one-line summary printed at exit.
//!
//! Plain relaxed atomics: updated from any thread (and from signal handlers
//! that load programs), read once at exit. The summary is formatted into a
//! stack buffer with `core::fmt` and written with one write(2): no allocation,
//! no std io, which may already be torn down when `.fini_array` runs.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use spinguard_common::{bpf, SigSet};

use crate::config::{self, Mode};
use crate::hook::GuardedCall;

/// Calls per guarded command, in `bpf::GUARDED_COMMANDS` order.
static CALLS: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];
/// Calls that returned EAGAIN or EINTR: each one is a retry the loader must make.
static RETRIES: AtomicU64 = AtomicU64::new(0);
static NANOS: AtomicU64 = AtomicU64::new(0);
/// Sum of `held_back` (only counted while events are on).
static HELD_BACK: AtomicU64 = AtomicU64::new(0);

/// A snapshot of the counters, for the `summary` event.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Counters {
    pub calls: [u64; 2],
    pub retries: u64,
    pub nanos: u64,
    pub held_back: u64,
}

pub(crate) fn counters() -> Counters {
    Counters {
        calls: [CALLS[0].load(Relaxed), CALLS[1].load(Relaxed)],
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

/// CLOCK_MONOTONIC in nanoseconds (vDSO, async-signal-safe).
pub(crate) fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes into a local timespec; CLOCK_MONOTONIC cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64)
}

pub(crate) fn record(call: &GuardedCall) {
    if let Some(i) = bpf::GUARDED_COMMANDS.iter().position(|&c| c == call.cmd) {
        if let Some(c) = CALLS.get(i) {
            c.fetch_add(1, Relaxed);
        }
    }
    if call.ret == -1 && (call.errno == libc::EAGAIN || call.errno == libc::EINTR) {
        RETRIES.fetch_add(1, Relaxed);
    }
    NANOS.fetch_add(call.ns, Relaxed);
    if !call.held_back.is_empty() {
        HELD_BACK.fetch_add(call.held_back.len() as u64, Relaxed);
    }
}

/// A fixed buffer that keeps what fits and drops the rest (never fails, so a
/// `write!` into it never errors out half-way through the line).
struct LineBuf {
    buf: [u8; 512],
    len: usize,
}

impl fmt::Write for LineBuf {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = self.buf.len() - self.len;
        let n = s.len().min(room);
        if let (Some(dst), Some(src)) = (
            self.buf.get_mut(self.len..self.len + n),
            s.as_bytes().get(..n),
        ) {
            dst.copy_from_slice(src);
            self.len += n;
        }
        Ok(())
    }
}

/// e.g. `3 guarded bpf calls (BPF_PROG_LOAD 3), 0 EAGAIN/EINTR, 361.2 ms inside,
/// guarding SIGALRM,SIGVTALRM,SIGPROF`.
fn format_summary(
    w: &mut impl fmt::Write,
    pid: i32,
    calls: [u64; 2],
    retries: u64,
    nanos: u64,
    mode: Mode,
    guard: SigSet,
) -> fmt::Result {
    let total: u64 = calls.iter().sum();
    write!(
        w,
        "spinguard-shim: pid {pid}: {total} guarded bpf call{}",
        if total == 1 { "" } else { "s" }
    )?;
    let mut first = true;
    for (&cmd, &n) in bpf::GUARDED_COMMANDS.iter().zip(calls.iter()) {
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
    w.write_str("\n")
}

pub(crate) fn write_summary() {
    let cfg = config::current();
    let calls = [CALLS[0].load(Relaxed), CALLS[1].load(Relaxed)];
    let mut line = LineBuf {
        buf: [0; 512],
        len: 0,
    };
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    let _ = format_summary(
        &mut line,
        pid,
        calls,
        RETRIES.load(Relaxed),
        NANOS.load(Relaxed),
        cfg.mode,
        cfg.guard,
    );
    let bytes = line.buf.get(..line.len).unwrap_or(&[]);
    // SAFETY: writes from a live stack buffer; errors are ignored at exit.
    unsafe {
        libc::write(2, bytes.as_ptr().cast(), bytes.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt::Write as _;

    fn fmt(calls: [u64; 2], retries: u64, nanos: u64, mode: Mode) -> String {
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
            "spinguard-shim: pid 123: 3 guarded bpf calls (BPF_PROG_LOAD 3), 0 EAGAIN/EINTR, \
             361.2 ms inside, guarding SIGALRM,SIGVTALRM,SIGPROF\n"
        );
        assert_eq!(
            fmt([1, 2], 2, 50_000, Mode::Observe),
            "spinguard-shim: pid 123: 3 guarded bpf calls (BPF_PROG_LOAD 1, BPF_PROG_TEST_RUN 2), \
             2 EAGAIN/EINTR, 0.0 ms inside, observe mode, blocking nothing (would guard \
             SIGALRM,SIGVTALRM,SIGPROF)\n"
        );
        assert!(fmt([1, 0], 0, 0, Mode::Guard).contains(": 1 guarded bpf call ("));
        assert!(fmt([0, 0], 0, 0, Mode::Guard).contains(": 0 guarded bpf calls, 0 EAGAIN"));
    }

    #[test]
    fn line_buffer_truncates_without_failing() {
        let mut b = LineBuf {
            buf: [0; 512],
            len: 0,
        };
        for _ in 0..100 {
            b.write_str("0123456789").unwrap();
        }
        assert_eq!(b.len, 512);
    }
}
