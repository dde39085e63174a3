//! The spinguard CLI's library half: finding the shim, the real bpf loader
//! used by `demo`, the examples and the tests, watching with the eBPF probe
//! (`watch`), and rendering what it saw (`report`).

pub mod events_out;
pub mod listen;
pub mod loader;
pub mod logging;
pub mod output;
pub mod process;
pub mod report;
pub mod run;
pub mod shim;
pub mod watch;
