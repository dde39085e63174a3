//! diagnose's explanation, for people: what was seen, the verdict in words,
//! the fix.

use super::advice::Advice;
use super::{plural, ProcessReport, Unseen};
use spinguard_common::bpf::{command_name, is_guarded, is_signal_failure};
use spinguard_common::errno::errno_name;
use spinguard_common::signals::signal_name;
use spinguard_probe::activity::Sender;
use spinguard_probe::procfs::{self, Guard};
use spinguard_probe::Verdict;

/// "SIGPROF 1233 times" for the signals queued during guarded calls.
fn during_summary(r: &ProcessReport) -> String {
    let parts: Vec<String> = r
        .activity
        .signals
        .iter()
        .filter(|(_, s)| s.during_guarded > 0)
        .map(|(&sig, s)| format!("{} {}", signal_name(sig), plural(s.during_guarded, "time")))
        .collect();
    parts.join(", ")
}

/// The verdict in a paragraph.
pub fn explain(r: &ProcessReport) -> String {
    let a = &r.activity;
    let secs = r.seconds();
    let fails = a.signal_failures();
    let ok = a.guarded_ok();
    let during = during_summary(r);
    match r.verdict {
        Verdict::Livelock => {
            let (cmd, errno) = a
                .bpf
                .iter()
                .filter(|(c, _)| is_guarded(**c))
                .flat_map(|(c, s)| s.errors.iter().map(move |(e, n)| (*c, *e, *n)))
                .filter(|(_, e, _)| is_signal_failure(*e))
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
        Verdict::Healthy => match r.guard {
            Some(g) => format!(
                "{} in {secs:.1} s; {} guards it: {} arrived during guarded calls and waited for their end{}.",
                plural(a.calls(), "bpf call"),
                guard_name(g),
                plural(a.during_guarded(), "signal"),
                if fails > 0 {
                    format!(", {} cut short just before the guard went up ran again", plural(fails, "call"))
                } else {
                    String::new()
                }
            ),
            None => format!(
                "{} in {secs:.1} s, none cut short by a signal.",
                plural(a.calls(), "bpf call")
            ),
        },
        Verdict::Idle => format!(
            "No bpf call in {secs:.1} s (diagnose sees the calls made while it watches; run it while the program loads)."
        ),
        Verdict::Unknown if r.unseen == Some(Unseen::NestedPidNs) => format!(
            "It runs in a PID namespace nested inside spinguard's{}, and watch names processes by their pids in its own namespace only: its bpf calls cannot be counted here, so whether it spins is unknown (it took a signal right after a syscall failed with EAGAIN or EINTR). `spinguard diagnose {}` counts them, as does watch run in its namespace or on the host.",
            r.placement
                .nspid
                .map_or(String::new(), |n| format!(" (pid {n} there)")),
            r.pid
        ),
        Verdict::Unknown => format!(
            "It is a 32-bit program, and this kernel has no raw_syscalls tracepoints: its bpf calls cannot be counted, so whether it spins is unknown ({} signals taken in {secs:.1} s).",
            a.signals.values().map(|s| s.delivered).sum::<u64>()
        ),
    }
}

fn guard_name(g: Guard) -> String {
    match g {
        Guard::Shim => "the spinguard shim".into(),
        Guard::Traced { by } => format!("spinguard (pid {by})"),
    }
}

/// "tgkill from this process (thread 4250)" etc.
pub fn sender_text(r: &ProcessReport, sig: i32, sender: Sender) -> String {
    let threads = |sig: i32| -> String {
        match r.activity.sent_by_threads.get(&sig) {
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
    let who = |pid: Option<i32>| match pid {
        Some(pid) if pid == r.pid => format!("this process{}", threads(sig)),
        Some(pid) => format!("pid {pid} ({})", procfs::comm(pid)),
        None => outside(r).into(),
    };
    match sender {
        Sender::Tkill { pid } => format!("tgkill from {}", who(pid)),
        Sender::Kill { pid } => format!("kill from {}", who(pid)),
        Sender::Queue { pid } => format!("sigqueue from {}", who(pid)),
        Sender::Timer => "a POSIX timer (timer_create)".into(),
        Sender::Kernel => "the kernel (setitimer, a fault, the terminal)".into(),
        Sender::Child { pid: Some(pid) } => format!("child {pid}"),
        Sender::Child { pid: None } => format!("a child, {}", outside(r)),
        Sender::Other { code } => format!("si_code {code}"),
    }
}

/// A sender whose own PID namespace is not the one the probe named the
/// process in (only when spinguard runs in a PID namespace of its own): its
/// pid there would mean nothing here. That namespace is spinguard's, or,
/// for a process in a namespace nested below it, the process's.
fn outside(r: &ProcessReport) -> &'static str {
    if r.placement.nspid.is_some() {
        "a process outside its PID namespace"
    } else {
        "a process outside this PID namespace"
    }
}

/// Where the process lives, where that differs from spinguard's own place:
/// "pid 1 in its PID namespace, container 4f3c2b1a0e9d, cgroup /…".
pub fn placement_text(r: &ProcessReport) -> Option<String> {
    let p = &r.placement;
    let mut parts = Vec::new();
    if let Some(ns) = p.nspid {
        parts.push(format!("pid {ns} in its PID namespace"));
    }
    if let Some(c) = &p.container {
        parts.push(format!("container {c}"));
    }
    let ours = procfs::placement(std::process::id() as i32).cgroup;
    if let Some(cg) = p.cgroup.as_ref().filter(|&cg| Some(cg) != ours.as_ref()) {
        parts.push(format!("cgroup {cg}"));
    }
    (!parts.is_empty()).then(|| parts.join(", "))
}

/// diagnose's report, for a terminal.
pub fn human(r: &ProcessReport, advice: &Option<Advice>) -> String {
    let mut o = String::new();
    let a = &r.activity;
    o += &format!(
        "spinguard: watched pid {} ({}, {}) for {:.1} s\n",
        r.pid,
        r.name,
        plural(r.threads as u64, "thread"),
        r.seconds()
    );
    if let Some(place) = placement_text(r) {
        o += &format!("  {place}\n");
    }
    if r.tracer != 0 {
        o += &format!(
            "  traced by pid {} ({}); watched without touching it\n",
            r.tracer,
            procfs::comm(r.tracer)
        );
    }
    if r.exited {
        o += "  the process ended while watched\n";
    }
    o += "\nbpf calls that returned:\n";
    if a.bpf.is_empty() {
        o += "  none\n";
    }
    for (&cmd, c) in &a.bpf {
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
    if a.signals.is_empty() {
        o += "  none\n";
    }
    for (&sig, s) in &a.signals {
        let mut senders: Vec<String> = s
            .senders
            .iter()
            .map(|(snd, n)| format!("{n} by {}", sender_text(r, sig, *snd)))
            .collect();
        if senders.is_empty() {
            senders.push("not seen".into());
        }
        let ignored = if s.ignored > 0 {
            format!(" ({} ignored on arrival)", s.ignored)
        } else {
            String::new()
        };
        o += &format!(
            "  {:<10} {:>7} ({} during a guarded bpf call); sent: {}{ignored}\n",
            signal_name(sig),
            s.delivered,
            s.during_guarded,
            senders.join("; ")
        );
    }
    o += &format!("\nverdict: {}\n  {}\n", r.verdict.as_str(), explain(r));
    match advice {
        Some(adv) => {
            o += &format!("\nfix it now:          {}\n", adv.now);
            if let Some(b) = &adv.blocked {
                o += &format!("  (not yet: {b})\n");
            }
            o += &format!("fix the next start:  {}\n", adv.next_start);
            o += &format!("  ({})\n", adv.why);
        }
        None if r.verdict == Verdict::Unknown => {
            o += "\nto see its calls: a kernel with raw_syscalls tracepoints (CONFIG_FTRACE_SYSCALLS).\n"
        }
        None => o += "\nnothing to fix.\n",
    }
    o
}
