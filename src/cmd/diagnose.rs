//! `spinguard diagnose PID`: is this process in the bpf/signal livelock? The
//! incident's bpftrace session (EAGAIN returns, SIGPROF deliveries) as one
//! command, explained, with the command that fixes it.

use super::attach::{parse_duration, report as report_error, target};
use super::options::TargetOpts;
use anyhow::Result;
use clap::Args;
use serde_json::{json, Map, Value};
use spinguard::events_out::{self, EventsOut, LogStyle};
use spinguard::output;
use spinguard_common::bpf::command_name;
use spinguard_common::errno::errno_name;
use spinguard_common::events::now_us;
use spinguard_common::mechanism::{self, Choice, Mechanism};
use spinguard_common::signals::signal_name;
use spinguard_common::SigSet;
use spinguard_supervisor::diagnose::{self, Report, Sender, Verdict};
use spinguard_supervisor::session::process_name;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const EXIT_AT_RISK: i32 = 3;
pub const EXIT_LIVELOCK: i32 = 4;

#[derive(Args)]
#[command(
    about = "Watch a process's bpf calls and signals, change nothing, and give a verdict",
    long_about = "Watch a process's bpf calls and the signals it gets for a while, change \
nothing, and say whether it is in the livelock spinguard fixes.\n\n\
spinguard traces every thread of PID, stopping at every syscall (which slows it while \
watched), and counts: per bpf command, the calls that returned in the window, their results \
(ok, each errno) and the time spent inside; per signal, the deliveries, how many arrived \
during a BPF_PROG_LOAD/BPF_PROG_TEST_RUN, and who sent them (tgkill from which thread, kill \
from which process, a timer, the kernel). No mask is changed, no call restarted, every signal \
is delivered as it came. A call still running when the window ends is waited for and counted; \
calls already running when diagnose starts are not seen.\n\n\
Verdicts:\n  \
livelock  guarded calls failed with EAGAIN/EINTR at least twice, more often than they succeeded\n  \
at-risk   they complete, but signals arrive during them (or some fail first)\n  \
healthy   bpf calls, none interrupted\n  \
idle      no bpf call in the window",
    after_help = "Exit status: 0 healthy or idle; 3 at-risk; 4 livelock; 1 when the process cannot be\n\
watched (no such process, not permitted, already traced, a zombie, spinguard itself), or\n\
--comm NAME names no process or more than one (the message lists them); 2 for a usage error.\n\n\
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

    /// Send events (attach, detach or child_exit, a summary of the guarded-command
    /// calls seen; one JSON datagram each, never blocking) to the Unix socket PATH
    /// of a `spinguard listen`, when the window ends
    #[arg(long, value_name = "PATH", value_parser = events_out::parse_path)]
    events: Option<PathBuf>,

    #[command(flatten)]
    target: TargetOpts,
}

pub fn run(args: DiagnoseArgs) -> Result<i32> {
    let pid = match args.target.resolve() {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    let target = match target(pid) {
        Ok(t) => t,
        Err(code) => return Ok(code),
    };
    let events_path = args.events.clone();
    // Before watching: the process may be gone after.
    let program = Program::of(target.pid);
    let start_us = now_us();
    let report = match diagnose::diagnose(&target, args.duration) {
        Ok(r) => r,
        Err(e) => return Ok(report_error(&e)),
    };
    if let Some(path) = &events_path {
        send_events(path, start_us, &report)?;
    }
    let verdict = report.verdict();
    let advice = advice(&report, verdict, &program);
    let text = explain(&report, verdict);
    // The verdict is the exit status even when stdout's reader has gone.
    output::ignore_closed(if args.json {
        output::println(to_json(&report, verdict, &text, &advice))
    } else {
        output::print(human(&report, verdict, &text, &advice))
    })?;
    Ok(match verdict {
        Verdict::Livelock => EXIT_LIVELOCK,
        Verdict::AtRisk => EXIT_AT_RISK,
        Verdict::Healthy | Verdict::Idle => 0,
    })
}

/// What diagnose saw, as events, sent once the window is over (diagnose
/// reports no event per call: it guards nothing). `ts` of the attach is when
/// the seize completed.
fn send_events(path: &Path, start_us: u64, r: &Report) -> Result<()> {
    let Some(seized) = r.seized else {
        return Ok(()); // ended before we could seize it: nothing was traced
    };
    let events = EventsOut::start(Some(path), LogStyle::Run)?;
    let seized_us = start_us + seized.elapsed.as_micros() as u64;
    events.attached(seized_us, r.pid, seized.threads as u32, &r.name);
    events.add_counts(r.pid, |c| {
        for (&cmd, s) in r
            .bpf
            .iter()
            .filter(|(c, _)| spinguard_common::bpf::is_guarded(**c))
        {
            c.calls.add(cmd, s.calls);
            c.retries += s.signal_failures();
            c.guarded_us += s.inside.as_micros() as u64;
        }
    });
    match (r.exited, r.detached) {
        (Some(status), _) => events.exited(now_us(), r.pid, status),
        (None, Some(d)) => events.detached(now_us(), r.pid, d.threads as u32),
        (None, None) => {}
    }
    events.finish().log(Some(path));
    Ok(())
}

/// What the fix depends on: how the program is built, how it was started.
struct Program {
    choice: Choice,
    exe: Option<String>,
    cmdline: Vec<String>,
}

impl Program {
    fn of(pid: i32) -> Program {
        let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
            .ok()
            .map(|p| p.display().to_string());
        let exe_link = std::ffi::CString::new(format!("/proc/{pid}/exe")).unwrap_or_default();
        let choice = mechanism::choose(&exe_link);
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| {
                b.split(|&c| c == 0)
                    .filter(|a| !a.is_empty())
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect()
            })
            .unwrap_or_default();
        Program {
            choice,
            exe,
            cmdline,
        }
    }

    /// The command line as a shell would take it, argv[0] replaced by the
    /// executable's full path unless it is absolute (a relative one was
    /// relative to the program's working directory, not the user's).
    fn shell_command(&self) -> String {
        let mut argv = self.cmdline.clone();
        if argv.is_empty() {
            argv.push(self.exe.clone().unwrap_or_else(|| "PROGRAM".into()));
            argv.push("ARGS...".into());
        } else if !argv[0].starts_with('/') {
            if let Some(exe) = &self.exe {
                argv[0] = exe.clone();
            }
        }
        argv.iter().map(|a| quote(a)).collect::<Vec<_>>().join(" ")
    }

    fn preload_reaches_it(&self) -> bool {
        self.choice.mechanism() == Some(Mechanism::Preload)
    }
}

fn quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

struct Advice {
    now: String,
    next_start: String,
    why: String,
}

/// The guard set that covers every signal seen during a guarded call.
fn guard_needed(r: &Report) -> SigSet {
    // A signal that interrupts a call now and then (Go's SIGURG preemption)
    // is absorbed by the guard's restarts; one that interrupts a good share
    // of the calls must be blocked.
    let total = r.during_guarded();
    let mut set = SigSet::DEFAULT_GUARD;
    for (&sig, s) in &r.signals {
        if s.during_guarded > 0
            && s.during_guarded * 10 >= total
            && sig != libc::SIGKILL
            && sig != libc::SIGSTOP
        {
            set.insert(sig);
        }
    }
    set
}

fn advice(r: &Report, verdict: Verdict, p: &Program) -> Option<Advice> {
    if matches!(verdict, Verdict::Healthy | Verdict::Idle) {
        return None;
    }
    let guard = guard_needed(r);
    let custom = guard != SigSet::DEFAULT_GUARD;
    let flag = if custom {
        format!("--signals {guard} ")
    } else {
        String::new()
    };
    let now = format!("spinguard attach {flag}{}", r.pid);
    let cmd = p.shell_command();
    let (next_start, how) = if p.preload_reaches_it() {
        let env = if custom {
            format!("SPINGUARD_SIGNALS={guard} ")
        } else {
            String::new()
        };
        (
            format!("{env}LD_PRELOAD=$(spinguard shim-path) {cmd}"),
            ", so the LD_PRELOAD shim reaches its bpf calls",
        )
    } else {
        (
            format!("spinguard run {flag}-- {cmd}"),
            ": spinguard run traces only its guarded calls",
        )
    };
    Some(Advice {
        now,
        next_start,
        why: format!("the program is {}{how}", p.choice),
    })
}

fn plural(n: u64, one: &str) -> String {
    if n == 1 {
        format!("{n} {one}")
    } else {
        format!("{n} {one}s")
    }
}

/// "SIGPROF 1233 times" for the signals delivered during guarded calls.
fn during_summary(r: &Report) -> String {
    let parts: Vec<String> = r
        .signals
        .iter()
        .filter(|(_, s)| s.during_guarded > 0)
        .map(|(&sig, s)| format!("{} {}", signal_name(sig), plural(s.during_guarded, "time")))
        .collect();
    parts.join(", ")
}

fn explain(r: &Report, verdict: Verdict) -> String {
    let secs = r.window.as_secs_f64();
    let fails = r.signal_failures();
    let ok = r.guarded_ok();
    let during = during_summary(r);
    match verdict {
        Verdict::Livelock => {
            let (cmd, errno) = r
                .bpf
                .iter()
                .filter(|(c, _)| spinguard_common::bpf::is_guarded(**c))
                .flat_map(|(c, s)| s.errors.iter().map(move |(e, n)| (*c, *e, *n)))
                .filter(|(_, e, _)| spinguard_common::bpf::is_signal_failure(*e))
                .max_by_key(|(_, _, n)| *n)
                .map(|(c, e, _)| (command_name(c), errno_name(e)))
                .unwrap_or(("BPF_PROG_LOAD", "EAGAIN".into()));
            let success = if ok == 0 {
                "and never succeeded".to_string()
            } else {
                format!("and succeeded only {}", plural(ok, "time"))
            };
            let signals = if during.is_empty() {
                "No signal was seen arriving during the calls: something else keeps a signal pending for the thread (a signal it blocks, or task work).".to_string()
            } else {
                format!("A signal arrived during the calls: {during}.")
            };
            format!(
                "{cmd} returned {errno} {} in {secs:.1} s {success}. The kernel verifier gives up \
with EAGAIN (BPF_PROG_TEST_RUN with EINTR) whenever a signal is pending for the loading \
thread. {signals} The loader retries at once, and the next signal interrupts it again: it spins.",
                plural(fails, "time")
            )
        }
        Verdict::AtRisk => {
            let first = if fails > 0 {
                format!(" ({} failed with EAGAIN/EINTR first)", plural(fails, "attempt"))
            } else {
                String::new()
            };
            let signals = if during.is_empty() {
                String::new()
            } else {
                format!(", but signals arrived during them: {during}")
            };
            format!(
                "{} completed{first}{signals}. A signal pending while the verifier runs makes \
the load fail with EAGAIN; a slower program or a faster signal source, and the loader spins.",
                plural(ok, "guarded bpf call")
            )
        }
        Verdict::Healthy => {
            let calls: u64 = r.bpf.values().map(|c| c.calls).sum();
            format!(
                "{} in {secs:.1} s, none interrupted by a signal.",
                plural(calls, "bpf call")
            )
        }
        Verdict::Idle => format!(
            "No bpf call in {secs:.1} s (diagnose sees the calls made while it watches; run it while the program loads)."
        ),
    }
}

/// "tgkill from this process (thread 4250)" etc.
fn sender_text(r: &Report, sig: i32, sender: Sender) -> String {
    let threads = |sig: i32| -> String {
        match r.sent_by_threads.get(&sig) {
            Some(m) if !m.is_empty() => {
                let list: Vec<String> = m.keys().map(|t| t.to_string()).collect();
                format!(
                    " (thread{} {})",
                    if list.len() == 1 { "" } else { "s" },
                    list.join(", ")
                )
            }
            _ => String::new(),
        }
    };
    let who = |pid: i32| {
        if pid == r.pid {
            format!("this process{}", threads(sig))
        } else {
            format!("pid {pid} ({})", process_name(pid))
        }
    };
    match sender {
        Sender::Tkill { pid } => format!("tgkill from {}", who(pid)),
        Sender::Kill { pid } => format!("kill from {}", who(pid)),
        Sender::Queue { pid } => format!("sigqueue from {}", who(pid)),
        Sender::Timer => "a POSIX timer (timer_create)".into(),
        Sender::Kernel => "the kernel (setitimer, a fault, the terminal)".into(),
        Sender::Child { pid } => format!("child {pid}"),
        Sender::Other { code } => format!("si_code {code}"),
    }
}

fn human(r: &Report, verdict: Verdict, text: &str, advice: &Option<Advice>) -> String {
    let mut o = String::new();
    let secs = r.window.as_secs_f64();
    o += &format!(
        "spinguard: watched pid {} ({}, {}) for {secs:.1} s\n",
        r.pid,
        r.name,
        plural(r.threads as u64, "thread")
    );
    if let Some(status) = r.exited {
        o += &format!("  the process ended while watched ({status})\n");
    }
    o += "\nbpf calls that returned:\n";
    if r.bpf.is_empty() {
        o += "  none\n";
    }
    for (&cmd, c) in &r.bpf {
        let mut results = vec![format!("{} ok", c.ok)];
        results.extend(
            c.errors
                .iter()
                .map(|(e, n)| format!("{n} {}", errno_name(*e))),
        );
        o += &format!(
            "  {:<20} {:>7} calls: {}; {:.3} s inside\n",
            command_name(cmd),
            c.calls,
            results.join(", "),
            c.inside.as_secs_f64()
        );
    }
    o += "\nsignals delivered:\n";
    if r.signals.is_empty() {
        o += "  none\n";
    }
    for (&sig, s) in &r.signals {
        let senders: Vec<String> = s
            .senders
            .iter()
            .map(|(snd, n)| format!("{n} by {}", sender_text(r, sig, *snd)))
            .collect();
        o += &format!(
            "  {:<10} {:>7} ({} during a guarded bpf call); sent: {}\n",
            signal_name(sig),
            s.delivered,
            s.during_guarded,
            senders.join("; ")
        );
    }
    o += &format!("\nverdict: {}\n  {text}\n", verdict.as_str());
    match advice {
        Some(a) => {
            o += &format!("\nfix it now:          {}\n", a.now);
            o += &format!("fix the next start:  {}\n", a.next_start);
            o += &format!("  ({})\n", a.why);
        }
        None => o += "\nnothing to fix.\n",
    }
    o
}

fn to_json(r: &Report, verdict: Verdict, text: &str, advice: &Option<Advice>) -> Value {
    let mut bpf = Map::new();
    for (&cmd, c) in &r.bpf {
        let errors: Map<String, Value> = c
            .errors
            .iter()
            .map(|(e, n)| (errno_name(*e), json!(n)))
            .collect();
        bpf.insert(
            command_name(cmd).to_string(),
            json!({
                "calls": c.calls,
                "ok": c.ok,
                "errors": errors,
                "ms_inside": (c.inside.as_secs_f64() * 1e6).round() / 1e3,
            }),
        );
    }
    let mut signals = Map::new();
    for (&sig, s) in &r.signals {
        let senders: Vec<Value> = s
            .senders
            .iter()
            .map(|(snd, n)| {
                let (kind, pid) = match *snd {
                    Sender::Tkill { pid } => ("tkill", Some(pid)),
                    Sender::Kill { pid } => ("kill", Some(pid)),
                    Sender::Queue { pid } => ("sigqueue", Some(pid)),
                    Sender::Timer => ("timer", None),
                    Sender::Kernel => ("kernel", None),
                    Sender::Child { pid } => ("child", Some(pid)),
                    Sender::Other { .. } => ("other", None),
                };
                let mut v = json!({ "kind": kind, "count": n, "text": sender_text(r, sig, *snd) });
                if let Some(pid) = pid {
                    v["pid"] = json!(pid);
                    if pid == r.pid && matches!(kind, "tkill" | "kill" | "sigqueue") {
                        let threads: Vec<i32> = r
                            .sent_by_threads
                            .get(&sig)
                            .map(|m| m.keys().copied().collect())
                            .unwrap_or_default();
                        v["threads"] = json!(threads);
                    }
                }
                v
            })
            .collect();
        signals.insert(
            signal_name(sig),
            json!({
                "delivered": s.delivered,
                "during_bpf": s.during_guarded,
                "senders": senders,
            }),
        );
    }
    json!({
        "pid": r.pid,
        "name": r.name,
        "seconds": (r.window.as_secs_f64() * 1000.0).round() / 1000.0,
        "threads": r.threads,
        "exited": r.exited.map(|s| s.to_string()),
        "bpf": bpf,
        "signals": signals,
        "verdict": verdict.as_str(),
        "explanation": text,
        "advice": advice.as_ref().map(|a| json!({
            "now": a.now,
            "next_start": a.next_start,
            "why": a.why,
        })),
    })
}
