//! `spinguard`: keeps signal storms from livelocking eBPF program loads.

use clap::{CommandFactory, Parser, Subcommand};

mod cmd;

#[derive(Parser)]
#[command(
    name = "spinguard",
    version,
    about = "Keeps signal storms from livelocking eBPF program loads",
    long_about = "Keeps signal storms from livelocking eBPF program loads.\n\n\
The kernel verifier gives up a BPF_PROG_LOAD with EAGAIN whenever a signal is pending \
(SIGPROF from a profiler, SIGALRM from a timer). Loaders retry, the next signal interrupts \
them again, and the process spins at 100% CPU. spinguard blocks those signals on the loading \
thread for the duration of the syscall only, and restores the thread's exact mask after.",
    after_help = "Which mechanism to use:\n  \
dynamically linked loader (libbpf, aya, Python):  LD_PRELOAD=$(spinguard shim-path) ./agent\n  \
static Go binary (cilium/ebpf), or anything:        spinguard run -- ./agent ARGS\n  \
a process spinning right now:                      spinguard attach PID\n  \
is this my bug?                                    spinguard diagnose PID\n  \
is anything on this host spinning?                 spinguard watch\n  \
see it work:                                       spinguard demo"
)]
struct Cli {
    #[command(flatten)]
    log: cmd::options::LogOpts,

    #[command(subcommand)]
    command: Command,
}

// A doc comment on a variant would replace its command's own `about` and
// `long_about` (and so the long text of `--help` and the man page): the
// commands that have them say it themselves.
#[derive(Subcommand)]
enum Command {
    ShimPath(cmd::shim_path::ShimPathArgs),
    Demo(cmd::demo::DemoArgs),
    Run(cmd::run::RunArgs),
    Attach(cmd::attach::AttachArgs),
    Diagnose(cmd::diagnose::DiagnoseArgs),
    Watch(cmd::watch::WatchArgs),
    /// Receive and print the event stream of guarded programs (SPINGUARD_EVENTS, --events)
    Listen(cmd::listen::ListenArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completions(cmd::completions::CompletionsArgs),
    /// Print the man page (roff), e.g. spinguard man > spinguard.1; --dir DIR writes them all
    Man(cmd::man::ManArgs),
    /// The built-in Rust loader the demo runs (see examples/rust-loader)
    #[command(name = "__load", hide = true)]
    Load(cmd::load::LoadArgs),
}

fn main() {
    let cli = Cli::try_parse().unwrap_or_else(|e| exit_clap(e));
    // clap checks `conflicts_with` only among the arguments given at one
    // level: `spinguard -v shim-path -q` would get through.
    if cli.log.verbose > 0 && cli.log.quiet {
        Cli::command()
            .error(
                clap::error::ErrorKind::ArgumentConflict,
                "-v/--verbose and -q/--quiet cannot be used together",
            )
            .exit();
    }
    // listen's notes (listening on, removing the socket) are its normal
    // output; every other command says only what went wrong unless asked.
    let normal = match cli.command {
        Command::Listen(_) => log::LevelFilter::Info,
        _ => log::LevelFilter::Warn,
    };
    cli.log.init(normal);
    let result = match cli.command {
        Command::ShimPath(args) => cmd::shim_path::run(args),
        Command::Demo(args) => cmd::demo::run(args),
        Command::Load(args) => cmd::load::run(args),
        Command::Run(args) => cmd::run::run(args),
        Command::Listen(args) => cmd::listen::run(args),
        Command::Attach(args) => cmd::attach::run(args),
        Command::Diagnose(args) => cmd::diagnose::run(args),
        Command::Watch(args) => cmd::watch::run(args),
        Command::Completions(args) => cmd::completions::completions(args, Cli::command()),
        Command::Man(args) => cmd::man::man(args, Cli::command()),
    };
    match result {
        Ok(code) => std::process::exit(code),
        // The reader of stdout has seen what it wanted (`spinguard man | head`).
        Err(e) if spinguard::output::is_closed(&e) => std::process::exit(0),
        Err(e) => {
            spinguard::logging::error(format_args!("{e:#}"));
            std::process::exit(1);
        }
    }
}

/// clap's own exit (usage error, --help, --version), but a --help or
/// --version that cannot be written is not a success: like every other
/// output, a closed stdout ends quietly (0) and a full one is an error (1).
fn exit_clap(e: clap::Error) -> ! {
    use std::io::Write;
    if e.use_stderr() {
        // A usage error: exit 2 even if stderr cannot take the message.
        let _ = e.print();
        std::process::exit(e.exit_code());
    }
    let printed = e.print().and_then(|()| std::io::stdout().flush());
    match printed {
        Ok(()) => std::process::exit(e.exit_code()),
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(err) => {
            spinguard::logging::error(format_args!("writing to stdout: {err}"));
            std::process::exit(1);
        }
    }
}
