//! `spinguard run`: run a program with its bpf loads guarded, by LD_PRELOAD or
//! by ptrace (the supervisor crate), whichever reaches it.

use super::options::{verbosity, GuardOpts};
use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use spinguard::events_out::{self, EventsOut, LogStyle};
use spinguard::logging;
use spinguard::run::{preload, timers};
use spinguard_common::mechanism::{self, Choice, Mechanism};
use spinguard_common::{env, SigSet};
use spinguard_supervisor::session::spawn;
use spinguard_supervisor::{
    self as supervisor, parent, EngineKind, ExitStatus, GuardPolicy, RunConfig,
};
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

/// `--engine`: where ptrace mode catches a guarded call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Engine {
    /// a seccomp filter stops each guarded call at its entry (every load
    /// guarded from its first attempt; every syscall pays the filter)
    Seccomp,
    /// no filter: guard at the stop of the signal that cut a load short,
    /// then follow the loading thread (syscalls pay nothing)
    Signal,
}

#[derive(Args)]
#[command(
    about = "Run a program with its bpf loads guarded against signal storms",
    long_about = "Run a program with its bpf loads guarded against signal storms.\n\n\
While a thread of the program is inside bpf(BPF_PROG_LOAD) or bpf(BPF_PROG_TEST_RUN), \
the guard signals are blocked on that thread; its own mask is restored exactly when the \
call returns. Other syscalls, and other bpf commands (map lookups), are not touched.",
    after_help = "Modes:\n  \
auto     (default) preload for a dynamically linked glibc program that is not Go; ptrace\n           \
for everything else (static binaries, Go, other C libraries). A script is decided by\n           \
its #! interpreter. The guard follows exec either way: the shim keeps itself in the\n           \
environment of everything the program starts, and hands a static or Go program to\n           \
`spinguard run --mode ptrace`, so `sh -c ./go-agent`, `env`, Python's subprocess and\n           \
make are guarded too. -v says, per exec, which mechanism guards which program; a program\n           \
nothing can guard gets one warning line.\n  \
preload  LD_PRELOAD=<shim> (in front of any LD_PRELOAD you have), SPINGUARD_SIGNALS=<guard set>,\n           \
then exec: the program replaces spinguard, no tracer stays behind. As PID 1 (a\n           \
container's init) or with --subreaper, spinguard stays as the parent instead, with no\n           \
tracer: it reaps every zombie, forwards signals and exits with the program's status.\n  \
ptrace   spinguard stays as the parent and tracer. The program starts with a seccomp filter\n           \
that stops only the guarded bpf commands (the default engine, see Engines); the tracer blocks the guard set for the call\n           \
and restores the mask. Follows every thread, fork and exec. kill -STOP/-CONT and Ctrl-Z\n           \
work. When the program exits, processes it left behind are killed.\n\n\
Signals (when spinguard stays): INT, TERM, HUP, QUIT, USR1, USR2 and WINCH are forwarded to\n\
the program, once: one the program sends to its own process group (kill(0, SIG)) is not\n\
forwarded again. Any other signal that would end spinguard (ALRM, PROF, PIPE, SYS...) is\n\
dropped: it never ends spinguard, and so never the program with it.\n\n\
Interval timers armed inside spinguard's own process (a profiler preloaded into spinguard)\n\
are stopped before the program starts: `LD_PRELOAD=$PROFILER spinguard run -- prog` runs prog\n\
as `spinguard run -- env LD_PRELOAD=$PROFILER prog` would. A script without #! runs with\n\
/bin/sh, as execvp does.\n\n\
Engines (ptrace mode, --engine):\n  \
seccomp  (default) the program starts with a seccomp filter that stops exactly the guarded\n           \
bpf calls, at their entry: every load is guarded from its first attempt, whatever\n           \
signal comes and whichever thread the kernel wakes for it. Every syscall pays the\n           \
filter (measured: getppid 1.15x, a map lookup 1.12x); the program dies with spinguard\n           \
(a filter with no tracer would fail its loads), and so do processes it leaves behind\n           \
when it exits.\n  \
signal   no filter: the guard engages at the stop of the signal that cut a load short\n           \
(the load is run again, guarded), then follows that thread at syscall entry while it\n           \
keeps loading. Other syscalls pay nothing (getppid, map lookups 1.00-1.01x), no\n           \
no_new_privs is needed, and the program outlives spinguard. A load's first attempt\n           \
is lost when a signal cuts it short (a storm's load: 1.02-1.08x the floor, 0.98-1.04x\n           \
with seccomp); under a process-directed storm (a timer, kill), running threads are\n           \
interrupted every 10 ms to find a loader the kernel woke for a signal another thread took.\n\n\
setuid programs (--engine seccomp): installing a seccomp filter needs CAP_SYS_ADMIN or\n\
no_new_privs. When spinguard lacks CAP_SYS_ADMIN, the program gets no_new_privs, so setuid\n\
and file-capability binaries it runs execute WITHOUT their extra privileges (sudo, ping...).\n\n\
Exit status: the program's own; 128+N when it dies of signal N (--raise-signal: dies of N);\n\
127 when it cannot be found, 126 when it cannot be executed; 2 for a usage error; 1 when\n\
spinguard itself fails.\n\n\
With -v, ptrace mode ends with a summary on stderr:\n  \
spinguard: N guarded bpf calls, R restarts, S stops; ...\n\
(S counts the stops at which an attempt of a guarded call was caught: S = N + R.)\n\n\
Example: spinguard run -v -- ./agent --config agent.yaml"
)]
pub struct RunArgs {
    #[command(flatten)]
    guard: GuardOpts,

    /// How to reach the program's bpf calls
    #[arg(long, value_enum, default_value_t = Mode::Auto)]
    mode: Mode,

    /// In ptrace mode, where a guarded call is caught (see "Engines" below)
    #[arg(long, value_enum, default_value_t = Engine::Seccomp)]
    engine: Engine,

    /// Send events (one JSON datagram each, never blocking) to the Unix socket
    /// PATH of a `spinguard listen`; also passed on to the program as
    /// SPINGUARD_EVENTS, for the shim in it or in programs it starts
    /// [default: $SPINGUARD_EVENTS]
    #[arg(long, value_name = "PATH", value_parser = events_out::parse_path)]
    events: Option<PathBuf>,

    /// In preload mode, stay as the program's parent (with no tracer) and as a
    /// child subreaper: reap every orphan, forward signals, exit with the
    /// program's status (a container entrypoint's duties; implied when
    /// spinguard is PID 1; ptrace mode always stays as the parent)
    #[arg(long)]
    subreaper: bool,

    /// The name the program sees as its argv[0] (like `exec -a NAME`)
    #[arg(long, value_name = "NAME")]
    argv0: Option<OsString>,

    /// When the program dies of a signal, die of the same signal instead of
    /// exiting 128+N (the shim asks for this when it hands a program to run,
    /// so the program's caller sees the program's own status)
    #[arg(long)]
    raise_signal: bool,

    /// The program and its arguments
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    command: Vec<OsString>,
}

pub fn run(mut args: RunArgs) -> Result<i32> {
    let guard = match args.guard.resolve() {
        Ok(g) => g,
        Err(msg) => {
            logging::error(msg);
            return Ok(2);
        }
    };
    if args.events.is_none() {
        args.events = events_from_environment();
    }
    // Timers a library inside spinguard armed (a profiler preloaded into it)
    // are not the program's: it starts as it would without spinguard.
    for timer in timers::disarm_our_own() {
        log::info!("stopped {timer}, armed inside spinguard (a preloaded profiler?): not passed on to the program");
    }
    let program = args.command[0].clone();
    let path = match spawn::resolve_program(&program) {
        Ok(p) => p,
        Err(source) => return Ok(cannot_run(&program, source)),
    };
    let (mode, why) = match args.mode {
        Mode::Auto => choose(&path),
        m => (m, format!("as asked; it is {}", inspect(&path))),
    };
    let stay = mode == Mode::Preload && (args.subreaper || spinguard::run::is_pid1());
    log::info!(
        "{} mode for {}: {why}{}",
        if mode == Mode::Preload {
            "preload"
        } else {
            "ptrace"
        },
        path.display(),
        if stay {
            "; staying as its parent (reaping orphans, forwarding signals)"
        } else {
            ""
        }
    );
    let status = match mode {
        Mode::Preload => {
            let shim: PathBuf = spinguard::shim::locate().context("preload mode")?;
            warn_if_unreached(&path);
            let settings = preload::Settings {
                shim: &shim,
                guard,
                events: args.events.as_deref(),
                verbose: verbosity().verbose > 0,
            };
            let vars = preload::variables(
                &settings,
                std::env::var_os("LD_PRELOAD"),
                std::env::var_os(env::LOG),
            );
            if !stay {
                return Ok(exec_preloaded(&args, &vars));
            }
            match preload_parent(&args, &vars) {
                Ok(status) => status,
                Err(code) => return Ok(code),
            }
        }
        _ => match ptrace(&args, guard)? {
            Ok(status) => status,
            Err(code) => return Ok(code),
        },
    };
    if args.raise_signal {
        if let ExitStatus::Signal { signal, .. } = status {
            spinguard::run::die_of(signal);
        }
    }
    Ok(status.shell_code())
}

/// `$SPINGUARD_EVENTS` when `--events` was not given (empty is unset; a path
/// that cannot be a socket address costs a warning, as in the shim).
fn events_from_environment() -> Option<PathBuf> {
    let v = match env::text(std::env::var_os(env::EVENTS)) {
        Ok(v) => v?,
        Err(e) => {
            log::warn!("ignoring {}: {e}", env::EVENTS);
            return None;
        }
    };
    match events_out::parse_path(&v) {
        Ok(p) => Some(p),
        Err(e) => {
            log::warn!("ignoring {}: {e}", env::EVENTS);
            None
        }
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

/// `--mode preload` on a program LD_PRELOAD cannot reach: one line.
fn warn_if_unreached(path: &Path) {
    let choice = inspect(path);
    if choice.mechanism() == Some(Mechanism::Ptrace) {
        log::warn!(
            "{} is {choice}: LD_PRELOAD will not reach its bpf calls (try --mode ptrace)",
            path.display(),
        );
    }
}

/// Preload mode: the program replaces spinguard (its exit status is ours
/// without a wrapper, and no process of ours stays behind). Returns only
/// when the exec failed, with 127/126.
fn exec_preloaded(args: &RunArgs, vars: &[(&'static str, OsString)]) -> i32 {
    let mut cmd = std::process::Command::new(&args.command[0]);
    cmd.args(&args.command[1..]);
    if let Some(a0) = &args.argv0 {
        cmd.arg0(a0);
    }
    for (k, v) in vars {
        log::debug!("{k}={}", v.to_string_lossy());
        cmd.env(k, v);
    }
    let err = cmd.exec();
    cannot_run(&args.command[0], err)
}

/// Preload mode as the program's parent (PID 1, --subreaper).
fn preload_parent(
    args: &RunArgs,
    vars: &[(&'static str, OsString)],
) -> std::result::Result<ExitStatus, i32> {
    for (k, v) in vars {
        // Still the only thread: the child inherits our environment.
        std::env::set_var(k, v);
    }
    let opts = parent::Options {
        subreaper: args.subreaper && !spinguard::run::is_pid1(),
        follow_terminal_stops: supervisor::sys::in_foreground_of_terminal(),
    };
    match parent::run(&command(args), opts) {
        Ok(o) => {
            log::info!(
                "program {}; {} orphans reaped, {} signals forwarded",
                o.status,
                o.orphans_reaped,
                o.forwarded
            );
            Ok(o.status)
        }
        Err(e @ supervisor::Error::CannotRun { .. }) => {
            logging::error(&e);
            Err(e.exit_code())
        }
        Err(e) => {
            logging::error(&e);
            Err(1)
        }
    }
}

/// The program to fork and exec, with the interval timers its caller armed
/// (which an exec would have kept, and fork does not).
fn command(args: &RunArgs) -> supervisor::Command {
    let mut timers = Vec::new();
    for (which, value, name) in timers::take_callers() {
        log::debug!("{name} was armed by spinguard's caller: the program gets it");
        timers.push((which, spawn::ItimerVal(value)));
    }
    let cmd = supervisor::Command::new(&args.command[0])
        .args(&args.command[1..])
        .itimers(timers);
    match &args.argv0 {
        Some(a0) => cmd.arg0(a0),
        None => cmd,
    }
}

/// ptrace mode: the program's status, or Err(exit code) when it could not run.
fn ptrace(args: &RunArgs, guard: SigSet) -> Result<std::result::Result<ExitStatus, i32>> {
    if let Err(e) = supervisor::sys::fallback::check_env() {
        logging::error(e);
        return Ok(Err(2));
    }
    let config = RunConfig {
        policy: GuardPolicy::with_signals(guard),
        engine: match args.engine {
            Engine::Seccomp => EngineKind::Seccomp,
            Engine::Signal => EngineKind::Signal,
        },
        follow_terminal_stops: supervisor::sys::in_foreground_of_terminal(),
    };
    if let Some(p) = &args.events {
        // For a program it starts that has the shim preloaded. Set here, while
        // we are the only thread; the child inherits our environment.
        std::env::set_var(env::EVENTS, p);
    }
    let events = EventsOut::start(args.events.as_deref(), LogStyle::Run)?;
    let result = supervisor::run(command(args), config, &mut &events);
    // Every queued line is logged (and datagram sent) before we go on.
    events.finish().log(args.events.as_deref());
    let outcome = match result {
        Ok(o) => o,
        Err(e @ supervisor::Error::CannotRun { .. }) => {
            logging::error(&e);
            return Ok(Err(e.exit_code()));
        }
        Err(e) => return Err(e.into()),
    };
    log::info!("program {}", outcome.status);
    log::info!("{}", outcome.stats.summary());
    Ok(Ok(outcome.status))
}
