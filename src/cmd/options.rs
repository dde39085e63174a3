//! Options several subcommands share, so they read and behave the same.

use clap::Args;
use log::LevelFilter;
use spinguard::logging::{self, Format};
use spinguard_common::cli::parse_pid;
use spinguard_common::{env, parse_signal_list, SigSet};
use std::sync::OnceLock;

/// `--signals LIST`, falling back to `$SPINGUARD_SIGNALS`, then the default.
#[derive(Args, Clone, Debug)]
pub struct GuardOpts {
    /// Signals to block during guarded calls: names (PROF, SIGPROF) or numbers,
    /// comma-separated, or `all` [default: $SPINGUARD_SIGNALS, else SIGPROF,SIGVTALRM,SIGALRM]
    #[arg(long, value_name = "LIST", value_parser = parse_guard)]
    pub signals: Option<SigSet>,
}

pub(crate) fn parse_guard(s: &str) -> Result<SigSet, String> {
    parse_signal_list(s).map_err(|e| e.to_string())
}

impl GuardOpts {
    /// The guard set; Err is a one-line message for a bad `$SPINGUARD_SIGNALS`
    /// (not UTF-8 included; empty means unset). A bad `--signals` never gets
    /// here: clap rejects it.
    pub fn resolve(&self) -> Result<SigSet, String> {
        if let Some(s) = self.signals {
            return Ok(s);
        }
        let bad = |e: &dyn std::fmt::Display| format!("invalid {}: {e}", env::SIGNALS);
        match env::text(std::env::var_os(env::SIGNALS)).map_err(|e| bad(&e))? {
            Some(v) => parse_signal_list(&v).map_err(|e| bad(&e)),
            None => Ok(SigSet::DEFAULT_GUARD),
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
            logging::error(e);
            EXIT_NO_TARGET
        })
    }
}

/// `-v`/`-q` and `--log-format`, global: accepted before or after any
/// subcommand (`spinguard -v attach 5`, `spinguard attach -v 5`). Main reads
/// them once and starts the logger once ([`LogOpts::init`]); a subcommand that
/// needs the level (run passes `-v` on to the shim as SPINGUARD_LOG=summary)
/// asks [`verbosity`].
#[derive(Args, Clone, Copy, Debug, Default)]
pub struct LogOpts {
    /// Say what is happening: what spinguard chose and why, each guarded call, a summary (-vv: more)
    #[arg(short, long, action = clap::ArgAction::Count, conflicts_with = "quiet", global = true, display_order = 900)]
    pub verbose: u8,

    /// Print nothing but errors
    #[arg(short, long, global = true, display_order = 901)]
    pub quiet: bool,

    /// How log lines on stderr look: text (`spinguard: LEVEL: ...`), journal
    /// (`<N>` priority prefixes for journald), json (one object per line);
    /// auto is journal when stderr is the journal ($JOURNAL_STREAM), else text
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = Format::Auto, global = true, display_order = 902)]
    pub log_format: Format,
}

static LOG_OPTS: OnceLock<LogOpts> = OnceLock::new();

impl LogOpts {
    /// Records the options for [`verbosity`] and starts the logger: `normal`
    /// is the level without -v/-q (a command's own default), each -v one more,
    /// -q errors only; `RUST_LOG` overrides. Main calls it once, before the
    /// subcommand runs; a second call changes nothing.
    pub fn init(self, normal: LevelFilter) {
        if LOG_OPTS.set(self).is_err() {
            return;
        }
        let more = [
            LevelFilter::Error,
            LevelFilter::Warn,
            LevelFilter::Info,
            LevelFilter::Debug,
            LevelFilter::Trace,
        ];
        let level = if self.quiet {
            LevelFilter::Error
        } else {
            let at = more.iter().position(|&l| l == normal).unwrap_or(1);
            more[(at + self.verbose as usize).min(more.len() - 1)]
        };
        logging::init(self.log_format, level);
    }
}

/// The `-v`/`-q` main was given (none before [`LogOpts::init`]).
pub fn verbosity() -> LogOpts {
    LOG_OPTS.get().copied().unwrap_or_default()
}
