//! One module per subcommand: its clap arguments and its `run`, which returns
//! the process exit status.

pub mod attach;
pub mod completions;
pub mod demo;
pub mod diagnose;
pub mod listen;
pub mod load;
pub mod man;
pub mod options;
pub mod run;
pub mod shim_path;
pub mod stop_signals;
pub mod watch;
