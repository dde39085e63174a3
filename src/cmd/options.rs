//! Options several subcommands share, so they read and behave the same.

use clap::Args;
use spinguard_common::{env, parse_signal_list, SigSet};
use std::io::Write;

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

/// `-v`/`-q`, and `RUST_LOG` for the rest.
#[derive(Args, Clone, Debug)]
pub struct Verbosity {
    /// Say what is happening: what spinguard chose and why, each guarded call, a summary (-vv: more)
    #[arg(short, long, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,

    /// Print nothing but errors
    #[arg(short, long)]
    pub quiet: bool,
}

impl Verbosity {
    pub fn init_logging(&self) {
        init_logging(self.quiet, self.verbose);
    }
}

/// Logs go to stderr as `spinguard: …` lines: warnings by default, more with
/// each -v, errors only with -q; `RUST_LOG` (env_logger syntax) overrides.
pub fn init_logging(quiet: bool, verbose: u8) {
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
