//! `spinguard watch` and `spinguard diagnose`, the library half: the probe
//! driven over time. The commands in cmd/ parse arguments and print.

pub mod diagnose;
pub mod events;
pub mod host;
pub mod http;
pub mod metrics;
pub mod output;
pub mod rescue;
pub mod stop;
