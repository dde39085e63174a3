//! `spinguard diagnose PID`: is this process in the bpf/signal livelock? The
//! incident's bpftrace session (EAGAIN returns, SIGPROF deliveries) as one
//! command, explained, with the command that fixes it. The work is in
//! `spinguard::watch::diagnose`, the words in `spinguard::report`.

use super::options::TargetOpts;
use anyhow::Result;
use clap::Args;
use spinguard::report::{advice, json, text};
use spinguard::watch::{diagnose, events::ProbeEvents, stop::Stop};
use spinguard::{logging, output};
use spinguard_common::cli::parse_duration;
use spinguard_probe::procfs;
use spinguard_probe::Verdict;
use std::path::PathBuf;
use std::time::Duration;

pub const EXIT_AT_RISK: i32 = 3;
pub const EXIT_LIVELOCK: i32 = 4;

#[derive(Args)]
#[command(
    about = "Watch a process's bpf calls and signals, change nothing, and give a verdict",
    long_about = "Watch a process's bpf calls and the signals it gets for a while, change \
nothing, and say whether it is in the livelock spinguard fixes.\n\n\
spinguard counts with eBPF, in the kernel: every bpf(2) call of PID that returns in the \
window (per command: the results, ok or each errno, and the time spent inside), and every \
signal sent to it (who sent it: tgkill from which thread, kill from which process, a timer, \
the kernel; whether it was queued while the thread was inside a BPF_PROG_LOAD or \
BPF_PROG_TEST_RUN) or taken by it. The process is not traced, stopped or signalled: it runs \
exactly as before, and it may already be traced (strace, gdb, spinguard run). While the \
window lasts, every syscall on the host takes the kernel's syscall-tracepoint path (a few \
nanoseconds each), as it does under bpftrace.\n\n\
In a container (kubectl debug --target, docker run --pid container:...), PID is a pid of \
that container's PID namespace, and the report names processes by their pids there; a \
sender outside it is said to be. That takes Linux 5.7 or newer; before, diagnose says so and \
exits 1: run it in the node's PID namespace.\n\n\
Verdicts:\n  \
livelock  guarded calls failed with EAGAIN/EINTR at least twice, more often than they succeeded\n  \
at-risk   they complete, but signals arrive during them (or some fail first)\n  \
healthy   bpf calls, none cut short (or spinguard already holds the signals back)\n  \
idle      no bpf call in the window\n  \
unknown   a 32-bit process on a kernel where its bpf calls cannot be counted",
    after_help = "Exit status: 0 healthy or idle; 3 at-risk; 4 livelock; 1 when the process cannot be\n\
watched (no such process, a zombie, a kernel thread, spinguard itself; not root; no eBPF or\n\
tracefs; in a PID namespace of its own, a kernel before 5.7), its calls cannot be seen\n\
(unknown), or --comm NAME names no process or more than one (the message lists them); 2 for\n\
a usage error.\n\n\
Examples: spinguard diagnose --for 10s --comm agent\n          \
spinguard diagnose -p $(pidof agent)"
)]
pub struct DiagnoseArgs {
    /// How long to watch (e.g. 5s, 500ms, 1m; a bare number is seconds)
    #[arg(long = "for", value_name = "DURATION", value_parser = parse_duration, default_value = "5s")]
    duration: Duration,

    /// Print one JSON document instead of the explanation
    #[arg(long)]
    json: bool,

    /// Send events (a `livelock` event when that is the verdict, then a
    /// `summary` of the guarded-command calls seen; one JSON datagram each,
    /// never blocking) to the Unix socket PATH of a `spinguard listen`, when
    /// the window ends
    #[arg(long, value_name = "PATH", value_parser = spinguard::events_out::parse_path)]
    events: Option<PathBuf>,

    #[command(flatten)]
    target: TargetOpts,
}

pub fn run(args: DiagnoseArgs) -> Result<i32> {
    if let Err(e) = spinguard_probe::pidns::check_env() {
        logging::error(e);
        return Ok(2);
    }
    // Before PID is looked up in /proc: a /proc of another namespace would
    // name another process (or spinguard itself) by it.
    if let Err(e) = spinguard_probe::pidns::ours() {
        logging::error(format_args!("diagnose: {e}"));
        return Ok(1);
    }
    let pid = match args.target.resolve() {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    let target = match procfs::check_target(pid) {
        Ok(t) => t,
        Err(e) => {
            logging::error(&e);
            return Ok(1);
        }
    };
    if let Some(tid) = target.given_thread {
        log::info!(
            "{tid} is a thread of process {}: using the process",
            target.pid
        );
    }
    let stop = Stop::new()?;
    let mut events = args.events.as_deref().map(ProbeEvents::new).transpose()?;
    // Before watching: the process may be gone after.
    let program = advice::Program::of(target.pid);
    let report = match diagnose::diagnose(&target, args.duration, &stop) {
        Ok(r) => r,
        Err(e) => {
            logging::error(format_args!("diagnose: {e}"));
            return Ok(1);
        }
    };
    let adv = advice::advice(&report, &program);
    if let Some(ev) = &mut events {
        if report.verdict == Verdict::Livelock {
            ev.livelock(&report);
        }
        ev.summary(&report);
    }
    // The verdict is the exit status even when stdout's reader has gone.
    output::ignore_closed(if args.json {
        output::println(json::document(&report, &adv))
    } else {
        output::print(text::human(&report, &adv))
    })?;
    Ok(match report.verdict {
        Verdict::Livelock => EXIT_LIVELOCK,
        Verdict::AtRisk => EXIT_AT_RISK,
        Verdict::Healthy | Verdict::Idle => 0,
        Verdict::Unknown => 1,
    })
}
