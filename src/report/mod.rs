//! Rendering what the probe saw, for `diagnose` and `watch` alike: the
//! explanation and the advice ([`text`], [`advice`]), the JSON document
//! ([`json`]), and watch's live table and plain lines ([`table`]). The
//! commands in cmd/ only choose which.

pub mod advice;
pub mod json;
pub mod rescue;
pub mod table;
pub mod text;

use spinguard_probe::procfs::{Guard, Placement};
use spinguard_probe::{Activity, Verdict};
use std::time::Duration;

/// What the probe saw of one process over a window (diagnose's whole
/// window, or one interval of watch), and what /proc says about it.
#[derive(Clone, Debug)]
pub struct ProcessReport {
    /// The process id on the host.
    pub pid: i32,
    pub name: String,
    /// How long its bpf calls were counted.
    pub window: Duration,
    /// Its threads (diagnose: when the window began; watch: those that made
    /// a bpf call in the interval).
    pub threads: usize,
    pub activity: Activity,
    pub verdict: Verdict,
    /// It ended while watched.
    pub exited: bool,
    /// Its namespace pid, cgroup and container.
    pub placement: Placement,
    /// The pid of its tracer (strace, gdb, `spinguard run`…), 0 when none.
    pub tracer: i32,
    /// How spinguard already guards it, if it does.
    pub guard: Option<Guard>,
    /// A 32-bit process (its bpf calls use the compat syscall table).
    pub compat: bool,
    /// Why its bpf calls cannot be counted, when they cannot (the verdict
    /// is then `unknown`).
    pub unseen: Option<Unseen>,
}

/// Why a process's bpf calls cannot be counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unseen {
    /// A 32-bit process on a kernel without raw_syscalls tracepoints.
    Compat,
    /// `watch` runs in a PID namespace of its own and the process in
    /// another, nested inside it: the probe names processes by their ids in
    /// watch's namespace only.
    NestedPidNs,
}

impl ProcessReport {
    pub fn seconds(&self) -> f64 {
        self.window.as_secs_f64()
    }
}

pub fn plural(n: u64, one: &str) -> String {
    if n == 1 {
        format!("{n} {one}")
    } else {
        format!("{n} {one}s")
    }
}
