//! `spinguard listen`: receive the event stream of guarded programs.

use std::path::{Path, PathBuf};

use spinguard::listen::{run as listen, Options};
use spinguard::logging;

/// Receive events from the shim and the supervisor on a Unix datagram socket
#[derive(clap::Args)]
#[command(
    after_help = "Senders: LD_PRELOAD=$(spinguard shim-path) SPINGUARD_EVENTS=PATH ./agent, \
or spinguard run --events PATH -- ./agent. The socket is created with mode 0600: \
only its owner (and root) can send. Each sender's events are printed in the order it numbered \
them (seq): one that overtook another (two threads sending at once) waits for it, up to a \
second; what has not come by then is reported as lost. Event format: docs/events.md.\n\n\
Exit status: 0 after SIGINT or SIGTERM (the socket removed, the metrics written), or when \
stdout is closed; 1 when the socket path cannot be taken (another listener is alive on it, \
it is not a socket, a symlink); 2 for a usage error (--metrics at the socket path itself)."
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
    if let Some(m) = &args.metrics {
        if same_place(m, &args.path) {
            logging::error(format_args!(
                "--metrics {} is the socket PATH itself: the metrics file would replace the socket; name another file",
                m.display()
            ));
            return Ok(2);
        }
    }
    listen(Options {
        path: args.path,
        json: args.json,
        metrics: args.metrics,
    })
}

/// True when `a` and `b` name the same directory entry, however spelled
/// (`s`, `./s`, `/abs/s`, `d/../s`, a symlinked directory): the directories
/// are resolved, the last component is compared as is (the listener never
/// follows a symlink at its socket path).
fn same_place(a: &Path, b: &Path) -> bool {
    fn entry(p: &Path) -> Option<PathBuf> {
        let abs = std::path::absolute(p).ok()?;
        let dir = abs.parent()?;
        let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
        Some(dir.join(abs.file_name()?))
    }
    a == b || matches!((entry(a), entry(b)), (Some(x), Some(y)) if x == y)
}
