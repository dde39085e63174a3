//! The spinguard CLI's library half: finding the shim, and the real bpf loader
//! used by `demo`, the examples and the tests.

pub mod events_out;
pub mod listen;
pub mod loader;
pub mod logging;
pub mod output;
pub mod process;
pub mod run;
pub mod shim;
