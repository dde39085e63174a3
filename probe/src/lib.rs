//! spinguard's eBPF probe: counts, host-wide or for one process, every
//! bpf(2) call's command, result and time and every signal sent and
//! delivered, without touching the processes it watches (no ptrace, no
//! signal, nothing in their address space). `spinguard watch` and
//! `spinguard diagnose` are built on it.
//!
//! The programs are assembled in Rust ([`asm`]) against the tracepoint
//! layouts the running kernel publishes in tracefs ([`tracefs`]): plain
//! `cargo build`, no clang, no BTF. docs/watch.md says why and what it costs.
//!
//! - [`sys`]: every raw syscall (bpf, perf_event_open, ioctl, mmap, mount);
//! - [`asm`], [`programs`], [`maps`]: the programs and their maps;
//! - [`probe`]: load, attach, switch counting on and off, read;
//! - [`trigger`]: perf samples of signal deliveries, to suspect cheaply;
//! - [`activity`]: counters turned into what a process did, and its verdict;
//! - [`procfs`]: what /proc says about a process (namespace pid, cgroup…);
//! - [`pidns`]: which PID namespace spinguard stands in, and how the
//!   programs name tasks there.

pub mod activity;
pub mod asm;
mod error;
pub mod maps;
pub mod pidns;
pub mod probe;
pub mod procfs;
pub mod programs;
mod sys;
pub mod tracefs;
pub mod trigger;

pub use activity::{Activity, Verdict};
pub use error::ProbeError;
pub use pidns::Ids;
pub use probe::{Counting, Probe, Snapshot};
pub use programs::Scope;
