//! The event stream: one JSON object per datagram, schema version 1
//! (docs/events.md documents every field).
//!
//! - [`encode`]: the allocation-free encoder. No heap, no locks, no `fmt`: the
//!   shim calls it from inside a hooked `syscall()`, which may itself run in a
//!   signal handler.
//! - [`sender`]: the non-blocking Unix datagram sender, equally async-signal-safe.
//! - `decode` (feature `decode`, serde_json): the listener's side. The shim never
//!   enables it, so its dependency graph stays free of serde.
//!
//! Wiring an emitter in is a few lines:
//! ```no_run
//! use spinguard_common::events::{Body, CallResult, ProgLoad, Sender, Source};
//! use spinguard_common::SigSet;
//! // once, at start-up:
//! let sender = Sender::new("/run/spinguard.sock").expect("path fits sockaddr_un");
//! // after each guarded call (never blocks; a failure is counted, not returned):
//! sender.emit(Source::Shim, &Body::ProgLoad(ProgLoad {
//!     cmd: 5,
//!     attempts: 1,
//!     result: CallResult::Ok(7),
//!     duration_us: 119_000,
//!     held_back: 1,
//!     held_back_signals: SigSet::from_bits(1 << 26),
//! }));
//! ```

mod encode;
mod sender;

#[cfg(feature = "decode")]
pub mod decode;

pub use encode::{encode, EventBuf, EVENT_BUF_LEN};
pub use sender::{now_us, SendStats, Sender, SenderError, SeqCounter};

use crate::SigSet;

/// The schema version every event carries as `"v"`.
pub const VERSION: u64 = 1;

/// Largest datagram a listener accepts. Emitters stay far below it (the shim's
/// events fit [`EVENT_BUF_LEN`]); anything longer is counted as oversized.
pub const MAX_DATAGRAM: usize = 64 * 1024;

/// Who sent an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    /// The LD_PRELOAD shim, inside the loading process.
    Shim,
    /// `spinguard run` / `attach`, the ptrace supervisor.
    Supervisor,
    /// `spinguard watch` / `diagnose`, the eBPF probe: it watches, and
    /// touches nothing.
    Probe,
}

impl Source {
    pub const fn as_str(self) -> &'static str {
        match self {
            Source::Shim => "shim",
            Source::Supervisor => "supervisor",
            Source::Probe => "probe",
        }
    }

    pub fn parse(s: &str) -> Option<Source> {
        match s {
            "shim" => Some(Source::Shim),
            "supervisor" => Some(Source::Supervisor),
            "probe" => Some(Source::Probe),
            _ => None,
        }
    }
}

/// A process name as the kernel keeps it (`comm`: at most 15 bytes), held by
/// value so a [`Header`] stays `Copy` and the shim can fill it without
/// allocating.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Comm {
    bytes: [u8; 16],
    len: u8,
}

impl Comm {
    /// No name: the event carries no `comm` in its header.
    pub const EMPTY: Comm = Comm {
        bytes: [0; 16],
        len: 0,
    };

    /// The name up to its first NUL, cut to 16 bytes.
    pub fn new(name: &[u8]) -> Comm {
        let name = name.split(|&b| b == 0).next().unwrap_or_default();
        let mut c = Comm::EMPTY;
        let n = name.len().min(c.bytes.len());
        c.bytes[..n].copy_from_slice(&name[..n]);
        c.len = n as u8;
        c
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl std::fmt::Debug for Comm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self.as_bytes()))
    }
}

/// The fields every event starts with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub source: Source,
    /// The process the event is about: the shim's host process, or the
    /// supervisor's tracee. With `source` it names the stream `seq` counts.
    pub pid: i32,
    /// The thread the event is about (equal to `pid` for process-wide events).
    pub tid: i32,
    /// Position in the (source, pid) stream, from 1; a jump shows lost events.
    pub seq: u64,
    /// Wall-clock time of the event, microseconds since the Unix epoch.
    pub ts_us: u64,
    /// The name of the process the event is about, when the sender knows it
    /// and the event has no `comm` of its own: the shim names its host, so
    /// that a listener learns the program of a loader that has exited by the
    /// time its events are read (its /proc entry is gone then).
    pub comm: Comm,
}

/// How a bpf(2) call ended: its non-negative return value, or an errno.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallResult {
    /// The return value: a program fd for BPF_PROG_LOAD, 0 for BPF_PROG_TEST_RUN.
    Ok(i64),
    /// The errno (positive), encoded by name (`"EAGAIN"`).
    Err(i32),
}

/// One guarded bpf(2) call as the emitter saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProgLoad {
    /// The bpf command number (`bpf::BPF_PROG_LOAD`); encoded by name.
    pub cmd: u32,
    /// Times the kernel ran the command for this event: 1 for the shim; 1 +
    /// restarts for the supervisor.
    pub attempts: u32,
    pub result: CallResult,
    /// From just before the guard went up to just after it came down.
    pub duration_us: u64,
    /// Guard signals held back: today, the number of distinct guard-set
    /// signals pending right before the guard came down, i.e.
    /// `held_back_signals.len()` (docs/events.md: standard signals do not
    /// queue, so instances cannot be counted).
    pub held_back: u64,
    /// Which guard signals those were ([`pending_in`] for the shim).
    pub held_back_signals: SigSet,
}

/// The supervisor restarted a guarded call the kernel cut short.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Restart {
    pub cmd: u32,
    /// Why the kernel gave up (EAGAIN, EINTR, ERESTART…).
    pub errno: i32,
    /// How many times this one call has been restarted so far (1 = first).
    pub n: u32,
}

/// The supervisor attached to, or detached from, a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attach<'a> {
    /// Threads traced at that moment.
    pub threads: u32,
    /// The process name (`/proc/PID/comm`), raw bytes; empty when unknown.
    pub comm: &'a [u8],
}

/// How a traced process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChildExit {
    /// `exit(code)`.
    Code(i32),
    /// Killed by this signal.
    Signal { signal: i32, core_dumped: bool },
}

/// Counters over an emitter's lifetime (sent once, at exit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Summary<'a> {
    /// Guarded calls by command: (`bpf` command number, count).
    pub calls: &'a [(u32, u64)],
    /// Guarded calls that ended in EAGAIN or EINTR, plus supervisor restarts.
    pub retries: u64,
    /// Total time inside guarded calls.
    pub guarded_us: u64,
    /// Sum of `held_back` over all calls.
    pub held_back: u64,
    /// Events handed to the socket successfully (not counting this one).
    pub events_sent: u64,
    /// Events that never reached the socket: send failures, a full internal
    /// queue, an event that did not fit the buffer.
    pub events_dropped: u64,
    /// Of those, sendto(2) failures (no listener, listener's queue full…).
    pub send_failures: u64,
}

/// The probe saw a process spinning: its guarded calls kept failing the way
/// a pending signal makes them fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Livelock<'a> {
    /// The process name (`/proc/PID/comm`), raw bytes.
    pub comm: &'a [u8],
    /// The guarded command that failed most, and how.
    pub cmd: u32,
    pub errno: i32,
    /// Guarded calls that failed with EAGAIN/EINTR in the window, and that succeeded.
    pub failures: u64,
    pub ok: u64,
    /// The window the counts cover.
    pub window_us: u64,
    /// Signals queued during its guarded calls.
    pub signals: SigSet,
    /// Its pid inside its own PID namespace, when that is not the host's.
    pub nspid: Option<i32>,
    /// The container its cgroup names (12 hex digits); empty when none.
    pub container: &'a [u8],
}

/// `watch --rescue`: something happened to a rescue of a livelocked process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rescue<'a> {
    /// The process name (`/proc/PID/comm`), raw bytes.
    pub comm: &'a [u8],
    pub outcome: RescueOutcome<'a>,
    /// What the probe saw in the interval that found it livelocked: guarded
    /// calls that failed with EAGAIN/EINTR, that succeeded, over this window.
    pub failures: u64,
    pub ok: u64,
    pub window_us: u64,
    /// What the rescue blocks during the process's guarded calls.
    pub guard: SigSet,
    pub nspid: Option<i32>,
    pub container: &'a [u8],
}

/// What happened to a rescue (the event's `outcome` and its own fields).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RescueOutcome<'a> {
    /// Attached, and a guarded call succeeded `load_us` after the livelock
    /// was seen (`attach_us` after the attach began), in `attempts` runs.
    Loaded {
        load_us: u64,
        attach_us: u64,
        attempts: u32,
        threads: u32,
    },
    /// Let go, every thread's mask exact: no guarded call came for the
    /// linger (`linger` true), or watch ended.
    Detached {
        linger: bool,
        threads: u32,
        attached_us: u64,
        calls: u64,
        loads: u64,
    },
    /// The process ended while attached.
    Exited { attached_us: u64, loads: u64 },
    /// It could not be attached to, or the engine failed.
    Failed { reason: &'a [u8] },
    /// Traced by someone else: not touched.
    Traced { tracer: i32, tracer_comm: &'a [u8] },
}

impl RescueOutcome<'_> {
    pub const fn name(&self) -> &'static str {
        match self {
            RescueOutcome::Loaded { .. } => "loaded",
            RescueOutcome::Detached { .. } => "detached",
            RescueOutcome::Exited { .. } => "exited",
            RescueOutcome::Failed { .. } => "failed",
            RescueOutcome::Traced { .. } => "traced",
        }
    }
}

/// Everything after the header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body<'a> {
    ProgLoad(ProgLoad),
    Restart(Restart),
    Attach(Attach<'a>),
    Detach(Attach<'a>),
    ChildExit(ChildExit),
    Summary(Summary<'a>),
    Livelock(Livelock<'a>),
    Rescue(Rescue<'a>),
}

impl Body<'_> {
    /// The `"event"` value.
    pub const fn name(&self) -> &'static str {
        match self {
            Body::ProgLoad(_) => "prog_load",
            Body::Restart(_) => "restart",
            Body::Attach(_) => "attach",
            Body::Detach(_) => "detach",
            Body::ChildExit(_) => "child_exit",
            Body::Summary(_) => "summary",
            Body::Livelock(_) => "livelock",
            Body::Rescue(_) => "rescue",
        }
    }
}

/// The signals of `guard` pending on the calling thread or its process, by
/// sigpending(2) (async-signal-safe). The shim calls it with the guard still
/// up, right before restoring the mask: that is `held_back_signals`.
pub fn pending_in(guard: SigSet) -> SigSet {
    // SAFETY: sigpending fills a local sigset_t; sigismember reads it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    if unsafe { libc::sigpending(&mut set) } != 0 {
        return SigSet::EMPTY;
    }
    let mut out = SigSet::EMPTY;
    for sig in guard.iter() {
        // SAFETY: as above; sig is in 1..=64.
        if unsafe { libc::sigismember(&set, sig) } == 1 {
            out.insert(sig);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_in_sees_a_blocked_raised_signal() {
        // A thread of our own, so the mask change touches no other test.
        std::thread::spawn(|| {
            let guard = SigSet::from_bits(1 << (libc::SIGPROF - 1));
            assert_eq!(pending_in(guard), SigSet::EMPTY);
            let block = guard.to_libc();
            let mut saved: libc::sigset_t = unsafe { std::mem::zeroed() };
            // SAFETY: blocks SIGPROF on this thread and sends it to this
            // thread only (tgkill). It is consumed with sigtimedwait below
            // before the mask is restored: unblocked, its default action
            // would end the test process.
            unsafe {
                libc::pthread_sigmask(libc::SIG_BLOCK, &block, &mut saved);
                libc::syscall(
                    libc::SYS_tgkill,
                    libc::getpid(),
                    crate::gettid(),
                    libc::SIGPROF,
                );
            }
            let other = SigSet::from_bits(1 << (libc::SIGALRM - 1));
            assert_eq!(pending_in(guard.union(other)), guard);
            assert_eq!(pending_in(other), SigSet::EMPTY);
            // SAFETY: waits (not at all) for the pending SIGPROF, then restores
            // the thread's mask.
            unsafe {
                let ts = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                };
                assert_eq!(
                    libc::sigtimedwait(&block, std::ptr::null_mut(), &ts),
                    libc::SIGPROF
                );
                libc::pthread_sigmask(libc::SIG_SETMASK, &saved, std::ptr::null_mut());
            }
            assert_eq!(pending_in(guard), SigSet::EMPTY);
        })
        .join()
        .unwrap();
    }
}
