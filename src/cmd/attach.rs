//! `spinguard attach PID`: guard the bpf loads of a process that is already
//! running (spinning, say), for a while or until Ctrl-C, then let it go with
//! every thread's signal mask exactly as it was.

use super::options::{GuardOpts, TargetOpts};
use super::stop_signals::StopSignals;
use anyhow::Result;
use clap::Args;
use spinguard::events_out::{self, EventsOut, LogStyle};
use spinguard::logging;
use spinguard_common::events::now_us;
use spinguard_common::signals::signal_name;
use spinguard_supervisor::attach::Attachment;
use spinguard_supervisor::session::{target as check, End, StopReason, Target};
use spinguard_supervisor::{AttachError, Event, GuardPolicy, Observer};
use std::cell::RefCell;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Args)]
#[command(
    about = "Guard the bpf loads of a running process (spinning right now, say)",
    long_about = "Guard the bpf loads of a running process, for --for or until Ctrl-C/SIGTERM.\n\n\
spinguard seizes every thread of PID with ptrace and stops them at nothing but signals (a \
traced thread stops for each signal it is sent). When a signal has cut a \
bpf(BPF_PROG_LOAD) or bpf(BPF_PROG_TEST_RUN) short, its stop shows it: the call is run \
again with the guard signals blocked on that thread, and its exact mask restored after. \
From then on that thread is followed at syscall entry while it keeps loading, so its next \
loads are guarded from their first attempt. A loader spinning in an EAGAIN retry loop loads \
on its next attempt.\n\n\
On detach (--for ran out, SIGINT, SIGTERM or SIGHUP), a thread inside a guarded load is let \
finish first; every thread is left running (or stopped, if someone stopped the process) \
with exactly the signal mask it had. spinguard never kills the target; if spinguard itself \
is killed with SIGKILL, the kernel detaches the target, but a thread that was inside a \
guarded load then keeps the guard signals blocked.",
    after_help = "Cost while attached:\n  \
between loads, nothing: no syscall stops and no filter (getppid and map lookups run at\n  \
their native speed). Each signal the process gets is one stop, as under any tracer; a thread\n  \
that loads pays two stops per syscall while it keeps loading (and 2 s after). Under a\n  \
process-directed storm (kill, ITIMER_REAL), running threads not followed are interrupted\n  \
at most every 10 ms, so that a loader the kernel woke for a signal another thread took is\n  \
found. BENCHMARKS.md has the numbers.\n\n\
Time to rescue: a loader spinning under a 1 kHz storm loads its verification time plus a\n  \
few milliseconds after the attach.\n\n\
Exit status: 0 after a clean detach, or when the process exited while attached; 1 when it\n\
cannot be attached to (no such process, not permitted, already traced, a zombie, spinguard\n\
itself), or --comm NAME names no process or more than one (the message lists them); 2 for a\n\
usage error.\n\n\
With -v: `spinguard: seized N threads of PID (NAME) in X ms`, a line per guarded call, and a\n\
summary at detach.\n\n\
Examples: spinguard attach -v --for 60s --comm agent\n          \
spinguard attach -p $(pidof agent)"
)]
pub struct AttachArgs {
    #[command(flatten)]
    guard: GuardOpts,

    /// Detach after this long (e.g. 30s, 500ms, 5m; a bare number is seconds) [default: until Ctrl-C]
    #[arg(long = "for", value_name = "DURATION", value_parser = parse_duration)]
    duration: Option<Duration>,

    /// Send events (attach, each guarded call, detach, a summary; one JSON
    /// datagram each, never blocking) to the Unix socket PATH of a `spinguard listen`
    #[arg(long, value_name = "PATH", value_parser = events_out::parse_path)]
    events: Option<PathBuf>,

    #[command(flatten)]
    target: TargetOpts,
}

use spinguard_common::cli::parse_duration;

/// Checks the pid to attach to: prints the error, returns its exit code.
fn target(pid: i32) -> std::result::Result<Target, i32> {
    match check::check_target(pid) {
        Ok(t) => {
            if let Some(tid) = t.given_thread {
                log::info!("{tid} is a thread of process {}: using the process", t.pid);
            }
            Ok(t)
        }
        Err(e) => Err(report(&e)),
    }
}

fn report(e: &AttachError) -> i32 {
    logging::error(e);
    1
}

pub fn run(args: AttachArgs) -> Result<i32> {
    // Before any other thread exists: they must all inherit the block.
    let mut stop_signals = StopSignals::block()?;
    let guard = match args.guard.resolve() {
        Ok(g) => g,
        Err(msg) => {
            logging::error(msg);
            return Ok(2);
        }
    };
    if let Err(e) = spinguard_supervisor::sys::fallback::check_env() {
        logging::error(e);
        return Ok(2);
    }
    let pid = match args.target.resolve() {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    let target = match target(pid) {
        Ok(t) => t,
        Err(code) => return Ok(code),
    };
    let events_path = args.events.clone();
    let start = Instant::now();
    // The log lines of `run`, plus how long after the attach each load finished.
    let events = EventsOut::start(
        events_path.as_deref(),
        LogStyle::Attach { start_us: now_us() },
    )?;
    let pid = target.pid;
    let seizing = Seizing {
        out: &events,
        held: RefCell::new(Some(Vec::new())),
    };
    let mut observer = &seizing;
    let result = attach(
        target,
        guard,
        &args,
        start,
        &mut observer,
        &mut stop_signals,
    );
    // Ended during the seize: what it held still counts.
    seizing.release();
    if let Ok(Outcome::Detached { d, .. }) = &result {
        events.detached(now_us(), pid, d.threads as u32);
    }
    // Every queued line is logged (and datagram sent) before we go on.
    events.finish().log(events_path.as_deref());
    let outcome = match result {
        Ok(o) => o,
        Err(e) => return Ok(report(&e)),
    };
    let secs = start.elapsed().as_secs_f64();
    let stats = match outcome {
        Outcome::Exited { status, stats } => {
            log::info!("pid {pid} ended while attached ({status}) after {secs:.1} s");
            stats
        }
        Outcome::Detached { reason, d, stats } => {
            let why = match reason {
                StopReason::Signal(s) => format!("got {}", signal_name(s)),
                StopReason::Deadline => "--for ran out".to_string(),
                StopReason::Requested => "asked to".to_string(),
            };
            let mut extra = String::new();
            if d.waited_for > 0 {
                extra += &format!(", {} let finish a guarded call first", d.waited_for);
            }
            if d.left_group_stopped > 0 {
                extra += &format!(", {} left stopped as they were", d.left_group_stopped);
            }
            log::info!(
                "detached from pid {pid} after {secs:.1} s ({why}): {} threads in {:.1} ms{extra}",
                d.threads,
                d.elapsed.as_secs_f64() * 1000.0
            );
            stats
        }
    };
    log::info!(
        "{} guarded bpf calls, {} restarts; {} loading threads followed, {} syscall stops; {} signals re-injected",
        stats.guarded_calls,
        stats.restarts,
        stats.followed,
        stats.syscall_stops,
        stats.signals_total()
    );
    Ok(0)
}

/// How an attach ended, for the closing lines.
enum Outcome {
    Exited {
        status: spinguard_supervisor::ExitStatus,
        stats: spinguard_supervisor::Stats,
    },
    Detached {
        reason: StopReason,
        d: spinguard_supervisor::session::Detached,
        stats: spinguard_supervisor::Stats,
    },
}

/// The engine's events from the seize (a load rewound while other threads
/// are still being seized) held back until the stream has opened with its
/// `attach`, which counts every thread seized.
struct Seizing<'a> {
    out: &'a EventsOut,
    held: RefCell<Option<Vec<Event>>>,
}

impl Seizing<'_> {
    fn release(&self) {
        let held = self.held.borrow_mut().take();
        let mut out = self.out;
        for e in held.into_iter().flatten() {
            out.event(&e);
        }
    }
}

impl Observer for &Seizing<'_> {
    fn event(&mut self, e: &Event) {
        if let Some(held) = self.held.borrow_mut().as_mut() {
            held.push(*e);
            return;
        }
        let mut out = self.out;
        out.event(e);
    }
}

/// Seize, guard until the process ends or a stop comes, detach.
fn attach(
    target: Target,
    guard: spinguard_common::SigSet,
    args: &AttachArgs,
    start: Instant,
    observer: &mut &Seizing,
    stop_signals: &mut StopSignals,
) -> std::result::Result<Outcome, AttachError> {
    let seizing: &Seizing = observer;
    let events = seizing.out;
    let (pid, name) = (target.pid, target.name.clone());
    let mut a = Attachment::new(target, GuardPolicy::with_signals(guard), observer)?;
    let handle = a.handle();
    stop_signals.stop(handle.clone()).map_err(|e| {
        AttachError::Engine(spinguard_supervisor::Error::Setup {
            what: "passing signals on",
            source: std::io::Error::other(e),
        })
    })?;
    // --for counts from the start of spinguard.
    handle.stop_at(args.duration.map(|d| start + d));
    let seized = match a.seize() {
        Ok(s) => s,
        Err(AttachError::Exited { status, .. }) => {
            return Ok(Outcome::Exited {
                status,
                stats: a.stats().clone(),
            })
        }
        Err(e) => return Err(e),
    };
    events.attached(now_us(), pid, seized.threads as u32, &name);
    seizing.release();
    let ms = seized.elapsed.as_secs_f64() * 1000.0;
    if seized.complete {
        log::info!(
            "seized {} threads of {pid} ({name}) in {ms:.1} ms; guarding {guard}",
            seized.threads
        );
    } else {
        log::info!(
            "seized {} threads of {pid} ({name}) in {ms:.1} ms, but was asked to stop before the seize was complete: letting go",
            seized.threads
        );
    }
    let reason = match a.run()? {
        End::Exited(status) => {
            return Ok(Outcome::Exited {
                status,
                stats: a.stats().clone(),
            })
        }
        End::Stopped(reason) => reason,
    };
    let d = a.detach()?;
    Ok(Outcome::Detached {
        reason,
        d,
        stats: a.stats().clone(),
    })
}
