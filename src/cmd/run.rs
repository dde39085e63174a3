//! `spinguard run`: run a program with its bpf loads guarded, by LD_PRELOAD or
//! by ptrace (the supervisor crate), whichever reaches it.

use super::options::{verbosity, GuardOpts};
use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use spinguard::events_out::{self, EventsOut, LogStyle};
use spinguard::logging;
use spinguard_common::mechanism::{self, Choice, Mechanism};
use spinguard_common::{env, SigSet};
use spinguard_supervisor::{self as supervisor, spawn, Config, GuardPolicy};
use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// preload for a dynamically linked non-Go program, ptrace otherwise
    Auto,
    /// trace the program (and everything it starts) with ptrace + seccomp
    Ptrace,
    /// set LD_PRELOAD to the shim and exec the program
    Preload,
}

#[derive(Args)]
#[command(
    about = "Run a program with its bpf loads guarded against signal storms",
    long_about = "Run a program with its bpf loads guarded against signal storms.\n\n\
While a thread of the program is inside bpf(BPF_PROG_LOAD) or bpf(BPF_PROG_TEST_RUN), \
the guard signals are blocked on that thread; its own mask is restored exactly when the \
call returns. Other syscalls, and other bpf commands (map lookups), are not touched.",
    after_help = "Modes:\n  \
auto     (default) preload for a dynamically linked ELF that is not Go; ptrace for\n           \
everything else (static binaries, Go, scripts). -v says which and why.\n           \
Only the named program is inspected: `sh -c './go-agent'` gets preload (sh is dynamic)\n           \
and the Go agent stays unguarded; use --mode ptrace for shells and wrappers.\n  \
preload  LD_PRELOAD=<shim> (in front of any LD_PRELOAD you have), SPINGUARD_SIGNALS=<guard set>,\n           \
then exec: the program replaces spinguard, no tracer stays behind. Reaches only\n           \
programs that call libc's syscall() (libbpf, aya); never Go, never static binaries.\n  \
ptrace   spinguard stays as the parent and tracer. The program starts with a seccomp filter\n           \
that stops only the guarded bpf commands; the tracer blocks the guard set for the call\n           \
and restores the mask. Follows every thread, fork and exec. Signals sent to spinguard\n           \
(INT, TERM, HUP, QUIT, USR1, USR2, WINCH) are forwarded to the program; kill -STOP/-CONT\n           \
and Ctrl-Z work. When the program exits, processes it left behind are killed.\n\n\
setuid programs (ptrace mode): installing a seccomp filter needs CAP_SYS_ADMIN or\n\
no_new_privs. When spinguard lacks CAP_SYS_ADMIN, the program gets no_new_privs, so setuid\n\
and file-capability binaries it runs execute WITHOUT their extra privileges (sudo, ping...).\n\n\
Exit status: the program's own; 128+N when it dies of signal N; 127 when it cannot be\n\
found, 126 when it cannot be executed; 2 for a usage error; 1 when spinguard itself fails.\n\n\
With -v, ptrace mode ends with a summary on stderr:\n  \
spinguard: N guarded bpf calls, R restarts, S stops; ...\n\
(S counts seccomp stops: how often the filter handed a syscall to the tracer.)\n\n\
Example: spinguard run -v -- ./agent --config agent.yaml"
)]
pub struct RunArgs {
    #[command(flatten)]
    guard: GuardOpts,

    /// How to reach the program's bpf calls
    #[arg(long, value_enum, default_value_t = Mode::Auto)]
    mode: Mode,

    /// Send events (one JSON datagram each, never blocking) to the Unix socket
    /// PATH of a `spinguard listen`; also passed on to the program as
    /// SPINGUARD_EVENTS, for the shim in it or in programs it starts
    #[arg(long, value_name = "PATH", value_parser = events_out::parse_path)]
    events: Option<PathBuf>,

    /// The program and its arguments
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    command: Vec<OsString>,
}

pub fn run(args: RunArgs) -> Result<i32> {
    let guard = match args.guard.resolve() {
        Ok(g) => g,
        Err(msg) => {
            logging::error(msg);
            return Ok(2);
        }
    };
    let program = args.command[0].clone();
    let path = match spawn::resolve_program(&program) {
        Ok(p) => p,
        Err(source) => return Ok(cannot_run(&program, source)),
    };
    let (mode, why) = match args.mode {
        Mode::Auto => choose(&path),
        m => (m, "as asked".to_string()),
    };
    log::info!(
        "{} mode for {}: {why}",
        if mode == Mode::Preload {
            "preload"
        } else {
            "ptrace"
        },
        path.display()
    );
    match mode {
        Mode::Preload => preload(&args, guard, &path),
        _ => ptrace(&args, guard),
    }
}

/// Prints the shell-style message for a program we cannot start; returns 127/126.
fn cannot_run(program: &std::ffi::OsStr, source: std::io::Error) -> i32 {
    let e = supervisor::Error::CannotRun {
        program: program.to_string_lossy().into_owned(),
        source,
    };
    logging::error(&e);
    e.exit_code()
}

/// What the program at `path` is (the one decision shared with the shim's
/// exec hooks and diagnose's advice).
fn inspect(path: &Path) -> Choice {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap_or_default();
    mechanism::choose(&c)
}

/// The auto rule, with the reason `-v` prints.
fn choose(path: &Path) -> (Mode, String) {
    let choice = inspect(path);
    match choice.mechanism() {
        Some(Mechanism::Preload) => match spinguard::shim::locate() {
            Ok(_) => (Mode::Preload, choice.to_string()),
            Err(e) => (
                Mode::Ptrace,
                format!("{choice}, but the shim is missing ({e:#})"),
            ),
        },
        _ => (Mode::Ptrace, choice.to_string()),
    }
}

fn preload(args: &RunArgs, guard: SigSet, path: &Path) -> Result<i32> {
    let shim: PathBuf = spinguard::shim::locate().context("preload mode")?;
    let choice = inspect(path);
    if choice.mechanism() == Some(Mechanism::Ptrace) {
        log::warn!(
            "{} is {choice}: LD_PRELOAD will not reach its bpf calls (try --mode ptrace)",
            path.display(),
        );
    }
    let mut preload = OsString::from(shim.as_os_str());
    if let Some(existing) = std::env::var_os("LD_PRELOAD").filter(|v| !v.is_empty()) {
        // Ours first, so our `syscall` is the one a lookup finds; keep theirs.
        let already = std::env::split_paths(&existing).any(|p| p == shim);
        if already {
            preload = existing;
        } else {
            preload.push(":");
            preload.push(&existing);
        }
    }
    let mut cmd = std::process::Command::new(&args.command[0]);
    cmd.args(&args.command[1..])
        .env("LD_PRELOAD", &preload)
        .env(env::SIGNALS, guard.to_string());
    if let Some(p) = &args.events {
        cmd.env(env::EVENTS, p);
    }
    // Unless SPINGUARD_LOG says otherwise (unset and empty say nothing).
    if verbosity().verbose > 0 && matches!(env::text(std::env::var_os(env::LOG)), Ok(None)) {
        cmd.env(env::LOG, "summary");
    }
    log::debug!("LD_PRELOAD={}", preload.to_string_lossy());
    // exec replaces us: the program's exit status is ours without a wrapper.
    let err = cmd.exec();
    Ok(cannot_run(&args.command[0], err))
}

fn ptrace(args: &RunArgs, guard: SigSet) -> Result<i32> {
    let config = Config {
        policy: GuardPolicy::with_signals(guard),
        follow_terminal_stops: supervisor::forward::in_foreground_of_terminal(),
        ..Config::default()
    };
    let cmd = supervisor::Command::new(&args.command[0]).args(&args.command[1..]);
    if let Some(p) = &args.events {
        // For a program it starts that has the shim preloaded. Set here, while
        // we are the only thread; the child inherits our environment.
        std::env::set_var(env::EVENTS, p);
    }
    let events = EventsOut::start(args.events.as_deref(), LogStyle::Run)?;
    let result = supervisor::run(cmd, config, &mut &events);
    // Every queued line is logged (and datagram sent) before we go on.
    events.finish().log(args.events.as_deref());
    let outcome = match result {
        Ok(o) => o,
        Err(e @ supervisor::Error::CannotRun { .. }) => {
            logging::error(&e);
            return Ok(e.exit_code());
        }
        Err(e) => return Err(e.into()),
    };
    log::info!("program {}", outcome.status);
    log::info!("{}", outcome.stats.summary());
    Ok(outcome.status.shell_code())
}
