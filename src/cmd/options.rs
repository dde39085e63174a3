//! Options several subcommands share, so they read and behave the same.

use clap::Args;
use spinguard_common::cli::parse_pid;
use spinguard_common::{env, parse_signal_list, SigSet};
use std::io::Write;
use std::sync::OnceLock;

/// `--signals LIST`, falling back to `$SPINGUARD_SIGNALS`, then the default.
#[derive(Args, Clone, Debug)]
pub struct GuardOpts {
    /// Signals to block during guarded calls: names (PROF, SIGPROF) or numbers,
    /// comma-separated, or `all` [default: $SPINGUARD_SIGNALS, else SIGPROF,SIGVTALRM,SIGALRM]
    #[arg(long, value_name = "LIST", value_parser = parse_guard)]
    pub signals: Option<SigSet>,
}

fn parse_guard(s: &str) -> Result<SigSet, String> {
    parse_signal_list(s).map_err(|e| e.to_string())
}

impl GuardOpts {
    /// The guard set; Err is a one-line message for a bad `$SPINGUARD_SIGNALS`
    /// (a bad `--signals` never gets here: clap rejects it).
    pub fn resolve(&self) -> Result<SigSet, String> {
        if let Some(s) = self.signals {
            return Ok(s);
        }
        match std::env::var(env::SIGNALS) {
            Ok(v) if !v.trim().is_empty() => {
                parse_signal_list(&v).map_err(|e| format!("invalid {}: {e}", env::SIGNALS))
            }
            _ => Ok(SigSet::DEFAULT_GUARD),
        }
    }
}

/// Which process: a PID, positional or `-p/--pid` (the strace, gdb and perf
/// habit), or `--comm NAME`. Exactly one of the three.
#[derive(Args, Clone, Debug)]
#[group(required = true, multiple = false)]
pub struct TargetOpts {
    /// The process (a thread id means its process)
    #[arg(value_name = "PID", value_parser = parse_pid)]
    pid: Option<i32>,

    /// The process, as strace -p takes it (a thread id means its process)
    #[arg(short = 'p', long = "pid", value_name = "PID", value_parser = parse_pid)]
    pid_flag: Option<i32>,

    /// The process named NAME (its /proc/PID/comm, as ps shows it; a longer name
    /// matches the 15 bytes the kernel keeps). Exactly one process must match
    #[arg(long, value_name = "NAME", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    comm: Option<String>,
}

/// Exit status when `--comm NAME` names no process or more than one: the same
/// as for a PID that does not exist.
pub const EXIT_NO_TARGET: i32 = 1;

impl TargetOpts {
    /// The pid asked for. For `--comm`, Err is the exit status after the
    /// one-line error (which lists the candidates) is printed.
    pub fn resolve(&self) -> Result<i32, i32> {
        if let Some(pid) = self.pid.or(self.pid_flag) {
            return Ok(pid);
        }
        let name = self.comm.as_deref().unwrap_or_default();
        spinguard::process::by_name(name).map_err(|e| {
            eprintln!("spinguard: {e}");
            EXIT_NO_TARGET
        })
    }
}

/// `-v`/`-q`, global: accepted before or after any subcommand (`spinguard -v
/// attach 5`, `spinguard attach -v 5`). Main reads them once and starts the
/// logger once ([`Verbosity::init`]); a subcommand that needs the level (run
/// passes `-v` on to the shim as SPINGUARD_LOG=summary) asks [`verbosity`].
#[derive(Args, Clone, Copy, Debug, Default)]
pub struct Verbosity {
    /// Say what is happening: what spinguard chose and why, each guarded call, a summary (-vv: more)
    #[arg(short, long, action = clap::ArgAction::Count, conflicts_with = "quiet", global = true, display_order = 900)]
    pub verbose: u8,

    /// Print nothing but errors
    #[arg(short, long, global = true, display_order = 901)]
    pub quiet: bool,
}

static VERBOSITY: OnceLock<Verbosity> = OnceLock::new();

impl Verbosity {
    /// Records the level for [`verbosity`] and starts the logger. Main calls
    /// it once, before the subcommand runs; a second call changes nothing.
    pub fn init(self) {
        if VERBOSITY.set(self).is_ok() {
            init_logging(self.quiet, self.verbose);
        }
    }
}

/// The `-v`/`-q` main was given (none before [`Verbosity::init`]).
pub fn verbosity() -> Verbosity {
    VERBOSITY.get().copied().unwrap_or_default()
}

/// Logs go to stderr as `spinguard: …` lines: warnings by default, more with
/// each -v, errors only with -q; `RUST_LOG` (env_logger syntax) overrides.
fn init_logging(quiet: bool, verbose: u8) {
    let level = match (quiet, verbose) {
        (true, _) => log::LevelFilter::Error,
        (false, 0) => log::LevelFilter::Warn,
        (false, 1) => log::LevelFilter::Info,
        (false, 2) => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    };
    let _ = env_logger::Builder::new()
        .filter_level(level)
        .parse_env("RUST_LOG")
        .format(|buf, record| writeln!(buf, "spinguard: {}", record.args()))
        .try_init();
}
