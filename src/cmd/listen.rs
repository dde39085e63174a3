//! `spinguard listen`: receive the event stream of guarded programs.

use std::path::PathBuf;

use spinguard::listen::{run as listen, Options};

/// Receive events from the shim and the supervisor on a Unix datagram socket
#[derive(clap::Args)]
#[command(
    after_help = "Senders: LD_PRELOAD=$(spinguard shim-path) SPINGUARD_EVENTS=PATH ./agent, \
or spinguard run --events PATH -- ./agent. The socket is created with mode 0600: \
only its owner (and root) can send. Event format: docs/events.md."
)]
pub struct ListenArgs {
    /// Print each event as the JSON line it arrived as (and the listener's own
    /// notes as JSON objects with "source":"listener"), instead of readable lines
    #[arg(long)]
    pub json: bool,
    /// Keep Prometheus/OpenMetrics counters in FILE (rewritten atomically at most
    /// once a second and at exit; name it *.prom for node_exporter's textfile collector)
    #[arg(long, value_name = "FILE")]
    pub metrics: Option<PathBuf>,
    /// Socket path to create (e.g. /run/spinguard.sock)
    #[arg(value_name = "PATH")]
    pub path: PathBuf,
}

pub fn run(args: ListenArgs) -> anyhow::Result<i32> {
    listen(Options {
        path: args.path,
        json: args.json,
        metrics: args.metrics,
    })
}
