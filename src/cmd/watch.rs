//! `spinguard watch`: every process on the host, watched with eBPF; the ones
//! spinning in bpf(BPF_PROG_LOAD) named, with no PID and no restart. The
//! loop is `spinguard::watch::host`, the output `spinguard::watch::output`
//! and `spinguard::report`.

use super::options::GuardOpts;
use anyhow::Result;
use clap::Args;
use spinguard::logging;
use spinguard::watch::events::ProbeEvents;
use spinguard::watch::host::{self, End, Observer, Options, WatchError};
use spinguard::watch::metrics::MetricsOut;
use spinguard::watch::output::{LivelockEvents, Printer, Style};
use spinguard::watch::rescue::{self, Rescuer};
use spinguard::watch::{http, stop::Stop};
use spinguard_common::cli::parse_duration;
use spinguard_common::SigSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Args)]
#[command(
    about = "Find the processes spinning in bpf(BPF_PROG_LOAD), host-wide, with no PID (eBPF)",
    long_about = "Find the processes spinning in bpf(BPF_PROG_LOAD) anywhere on the host, with no \
PID and no restart: the incident's bpftrace one-liners (bpf(2) results, signal deliveries) made \
a tool.\n\n\
Every --interval, one row per process whose guarded bpf calls (BPF_PROG_LOAD, \
BPF_PROG_TEST_RUN) returned: their rate, how many failed with EAGAIN/EINTR, the signals \
queued while they ran and who sent them, and a verdict: livelock (they keep failing), at-risk \
(signals arrive during them), healthy. The PID namespace pid and the container appear when \
they differ from the host's. Run in a container without the host's PID namespace, it watches \
that namespace's processes, by their pids there (Linux 5.7 or newer). On a terminal the table is redrawn in place; otherwise one line \
per process per interval; --json prints the document `spinguard diagnose --json` prints.\n\n\
Without --rescue, nothing is traced, stopped or signalled. Signals are counted all the time (a few hundred \
nanoseconds per signal, host-wide). bpf(2) calls are counted only once a thread takes a signal \
right after a syscall failed with EAGAIN or EINTR (what a loader whose verifier just gave up \
looks like), and until no such thread has been seen for 3 intervals: while they are, every \
syscall on the host takes the kernel's syscall-tracepoint path (a few nanoseconds each, as \
under bpftrace). --trace-always counts them all the time.\n\n\
With --rescue, each process found livelocked is attached with ptrace (it stops only when a \
signal is delivered to it, never per syscall): on each guarded call the guard signals are blocked \
on the calling thread for the call, so the spinning loader loads on its next attempt. Once its \
guarded calls have succeeded and none came for --linger (10 s), it is let go, every thread's \
signal mask as it was; --stay keeps it attached until watch ends. One line per rescue: refused \
(traced by someone else: strace, gdb, spinguard run; never touched), rescued (the EAGAIN before, \
the time to load after), let go, ended, failed. A healthy process is never traced. SIGINT, \
SIGTERM and SIGHUP let go of every rescue before watch exits.\n\n\
Needs root (CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN; --rescue also CAP_SYS_PTRACE) and \
tracefs (mounted at /sys/kernel/tracing if it is not).",
    after_help = "Exit status: 0 when --for runs out or on SIGINT/SIGTERM/SIGHUP (or when the reader of its\n\
output goes away); 1 when it cannot watch (not root, no eBPF, no tracefs, a tracepoint missing;\n\
in a PID namespace of its own, a kernel before 5.7);\n\
2 for a usage error (a bad duration, --metrics-addr busy or invalid).\n\n\
Examples: spinguard watch\n          \
spinguard watch --json --for 1m > watch.jsonl\n          \
spinguard watch --metrics-addr :9464 --events /run/spinguard.sock\n          \
spinguard watch --rescue --linger 30s --rescue-cgroup /system.slice/agent.service"
)]
pub struct WatchArgs {
    /// How often to report (e.g. 1s, 500ms, 2m; a bare number is seconds; at least 100ms)
    #[arg(long, value_name = "DURATION", value_parser = parse_interval, default_value = "1s")]
    interval: Duration,

    /// Stop after this long (e.g. 30s, 5m) [default: until Ctrl-C or SIGTERM]
    #[arg(long = "for", value_name = "DURATION", value_parser = parse_duration)]
    duration: Option<Duration>,

    /// Print one JSON document per process per interval: what `diagnose --json`
    /// prints, plus `ts` (microseconds since the epoch) and `interval_seconds`
    #[arg(long)]
    json: bool,

    /// Send a `livelock` event (one JSON datagram, never blocking) to the Unix
    /// socket PATH of a `spinguard listen` whenever a process turns livelocked
    #[arg(long, value_name = "PATH", value_parser = spinguard::events_out::parse_path)]
    events: Option<PathBuf>,

    /// Keep metrics in FILE, in the Prometheus text format (for node_exporter's
    /// textfile collector: name it *.prom), replaced atomically each interval
    #[arg(long, value_name = "FILE")]
    metrics: Option<PathBuf>,

    /// Serve the metrics over HTTP at ADDR (GET /metrics), for Prometheus to
    /// scrape: HOST:PORT, or :PORT for every interface [default: off]
    #[arg(long, value_name = "ADDR", value_parser = http::parse_addr)]
    metrics_addr: Option<SocketAddr>,

    /// Count bpf(2) calls all the time, not only while a thread looks like a
    /// loader the verifier gave up on: every process with guarded calls is
    /// listed, and every syscall on the host pays the tracepoint path for as
    /// long as watch runs (32-bit callers are still counted only once one is
    /// suspect: that costs every syscall a program run)
    #[arg(long)]
    trace_always: bool,

    /// Rescue each process found livelocked: attach with ptrace (stopping it
    /// only when a signal is delivered, never per syscall), block the guard
    /// signals on each guarded bpf call until the calls have succeeded and
    /// none came for --linger, then let go, every thread's signal mask as it
    /// was. A healthy process is never touched; one traced by someone else
    /// (strace, gdb, spinguard run) is reported, not touched
    #[arg(long)]
    rescue: bool,

    /// With --rescue: let go of a process once no guarded call has come for
    /// this long (e.g. 10s, 1m)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "10s", requires = "rescue")]
    linger: Duration,

    /// With --rescue: stay attached to every rescued process until watch ends
    /// (its next loads are guarded too; each signal it takes costs a stop)
    #[arg(long, requires = "rescue", conflicts_with = "linger")]
    stay: bool,

    /// With --rescue: signals always blocked during a rescued process's
    /// guarded calls, on top of the ones the probe saw interrupting them:
    /// names (PROF, SIGPROF) or numbers, comma-separated, or `all`
    /// [default: $SPINGUARD_SIGNALS, else SIGPROF,SIGVTALRM,SIGALRM]
    #[arg(long, value_name = "LIST", value_parser = super::options::parse_guard, requires = "rescue")]
    signals: Option<SigSet>,

    /// With --rescue: rescue only processes in this cgroup or below it (as
    /// /proc/PID/cgroup names it, e.g. /system.slice/agent.service or
    /// /kubepods.slice); others found livelocked are shown, not touched
    #[arg(long, value_name = "PATH", requires = "rescue", value_parser = parse_cgroup)]
    rescue_cgroup: Option<String>,
}

fn parse_cgroup(s: &str) -> Result<String, String> {
    if !s.starts_with('/') {
        return Err(format!(
            "bad cgroup {s:?}: a path from the root of the hierarchy, as /proc/PID/cgroup shows it (/system.slice/agent.service)"
        ));
    }
    Ok(s.to_string())
}

/// `--interval`: a duration of at least 100 ms (reports faster than the
/// probe's tick would be empty).
fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_millis(100) {
        return Err(format!("bad interval {s:?}: at least 100ms"));
    }
    Ok(d)
}

pub fn run(args: WatchArgs) -> Result<i32> {
    // Before any thread starts: every later thread inherits the blocked mask.
    let stop = Stop::new()?;
    if let Err(e) = spinguard_probe::pidns::check_env() {
        logging::error(e);
        return Ok(2);
    }
    let shared = Arc::new(Mutex::new(String::new()));
    if let Some(addr) = args.metrics_addr {
        match http::serve(addr, shared.clone()) {
            Ok(s) => log::info!("metrics at http://{}/metrics", s.addr),
            Err(e) => {
                logging::error(format_args!("--metrics-addr {addr}: {e}"));
                return Ok(2);
            }
        }
    }
    let style = if args.json {
        Style::Json
    } else if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        Style::Table
    } else {
        Style::Lines
    };
    let mut printer = Printer::new(style);
    let mut metrics = (args.metrics.is_some() || args.metrics_addr.is_some()).then(|| {
        MetricsOut::new(
            args.metrics.clone(),
            args.metrics_addr.is_some().then(|| shared.clone()),
        )
    });
    if let (Some(m), Some(path)) = (&metrics, &args.metrics) {
        // Say now, not after the first interval, that the file cannot be written.
        if let Err(e) = spinguard::listen::metrics::write_atomic(path, &m.metrics.render()) {
            logging::error(format_args!("--metrics {}: {e}", path.display()));
            return Ok(1);
        }
    }
    let mut events = match &args.events {
        Some(p) => Some(LivelockEvents::new(ProbeEvents::new(p)?)),
        None => None,
    };
    let mut rescuer = if args.rescue {
        let signals = match (GuardOpts {
            signals: args.signals,
        })
        .resolve()
        {
            Ok(s) => s,
            Err(msg) => {
                logging::error(msg);
                return Ok(2);
            }
        };
        if let Some(m) = &mut metrics {
            m.metrics.rescuing(0);
        }
        Some(Rescuer::new(rescue::Options {
            linger: (!args.stay).then_some(args.linger),
            signals,
            cgroup: args.rescue_cgroup.clone(),
        }))
    } else {
        None
    };
    let mut observers: Vec<&mut dyn Observer> = vec![&mut printer];
    if let Some(m) = &mut metrics {
        observers.push(m);
    }
    if let Some(e) = &mut events {
        observers.push(e);
    }
    let opts = Options {
        interval: args.interval,
        duration: args.duration,
        always: args.trace_always,
    };
    match host::watch(opts, &stop, rescuer.as_mut(), &mut observers) {
        Ok(End::Signal(sig)) => {
            log::info!("got {}: done", spinguard_common::signals::signal_name(sig));
            Ok(0)
        }
        Ok(_) => Ok(0),
        // Main ends quietly on a closed stdout and says "writing to stdout:
        // ..." for a full one, as every command does.
        Err(WatchError::Observer(e)) => Err(e),
        Err(e) => {
            logging::error(format_args!("watch: {e}"));
            // The file written above (all zeros, before the probe opened)
            // or by the intervals so far would go on saying "nothing
            // spins" to whoever collects it: a watch that failed says
            // nothing.
            if let Some(path) = &args.metrics {
                let _ = std::fs::remove_file(path);
            }
            Ok(1)
        }
    }
}
