//! watch's live table (a terminal, redrawn each interval like top) and its
//! plain lines (anything else: one line per process per interval).

use super::text::sender_text;
use super::{ProcessReport, Unseen};
use crate::listen::sys::local_time;
use crate::watch::host::Interval;
use spinguard_common::bpf::is_guarded;
use spinguard_common::signals::signal_name;
use spinguard_probe::activity::Sender;
use std::fmt::Write as _;

/// Calls per second of the guarded commands, and their EAGAIN and EINTR
/// results per second.
pub fn rates(r: &ProcessReport) -> (f64, f64, f64) {
    let secs = r.seconds().max(1e-3);
    let (mut calls, mut eagain, mut eintr) = (0, 0, 0);
    for (cmd, c) in &r.activity.bpf {
        if is_guarded(*cmd) {
            calls += c.calls;
            eagain += c.errors.get(&libc::EAGAIN).copied().unwrap_or(0);
            eintr += c.errors.get(&libc::EINTR).copied().unwrap_or(0);
        }
    }
    let per = |n: u64| n as f64 / secs;
    (per(calls), per(eagain), per(eintr))
}

/// The signal queued most often during guarded calls, with its count and
/// "pid 4325", or, for a process outside the PID namespace the probe names
/// processes in, that.
fn short_pid(pid: Option<i32>) -> String {
    pid.map_or("another PID namespace".into(), |p| format!("pid {p}"))
}

/// its main sender, shortly: "SIGPROF 998 (tgkill, thread 4325)".
pub fn during_short(r: &ProcessReport) -> Option<String> {
    let (&sig, s) = r
        .activity
        .signals
        .iter()
        .filter(|(_, s)| s.during_guarded > 0)
        .max_by_key(|(_, s)| s.during_guarded)?;
    let who = s
        .senders
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(snd, _)| match *snd {
            Sender::Tkill { pid } | Sender::Kill { pid } | Sender::Queue { pid }
                if pid == Some(r.pid) =>
            {
                let how = match snd {
                    Sender::Tkill { .. } => "tgkill",
                    Sender::Kill { .. } => "kill",
                    _ => "sigqueue",
                };
                match r
                    .activity
                    .sent_by_threads
                    .get(&sig)
                    .and_then(|m| m.keys().next())
                {
                    Some(t) => format!("{how}, thread {t}"),
                    None => format!("{how}, itself"),
                }
            }
            Sender::Tkill { pid } => format!("tgkill from {}", short_pid(pid)),
            Sender::Kill { pid } => format!("kill from {}", short_pid(pid)),
            Sender::Queue { pid } => format!("sigqueue from {}", short_pid(pid)),
            Sender::Timer => "timer".into(),
            Sender::Kernel => "kernel".into(),
            Sender::Child { pid } => format!("child {}", short_pid(pid)),
            Sender::Other { code } => format!("si_code {code}"),
        })
        .unwrap_or_else(|| "sender unseen".into());
    Some(format!("{} {} ({who})", signal_name(sig), s.during_guarded))
}

fn counting_text(i: &Interval) -> String {
    match (i.counting.native, i.counted.is_zero()) {
        (true, _) if i.counted >= i.length => "bpf(2) counted".into(),
        (_, false) => format!("bpf(2) counted for {:.1} s of it", i.counted.as_secs_f64()),
        _ => "bpf(2) not counted: no suspect, nothing is paid".into(),
    }
}

pub fn health_text(i: &Interval) -> String {
    let mut parts = Vec::new();
    if i.map_full > 0 {
        parts.push(format!("{} counts lost (map full)", i.map_full));
    }
    if i.trigger_lost > 0 {
        parts.push(format!("{} signal samples lost", i.trigger_lost));
    }
    parts.join(", ")
}

fn cut(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(width.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// The screen for one interval (without the clear-screen sequence).
pub fn table(i: &Interval) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "spinguard watch  {}  interval {:.1} s  {}  {} process{}",
        local_time(i.end_us),
        i.length.as_secs_f64(),
        counting_text(i),
        i.processes.len(),
        if i.processes.len() == 1 { "" } else { "es" }
    );
    let health = health_text(i);
    if !health.is_empty() {
        let _ = writeln!(o, "  {health}");
    }
    o.push('\n');
    if i.processes.is_empty() {
        o += "no process made a guarded bpf call (BPF_PROG_LOAD, BPF_PROG_TEST_RUN) in this interval\n";
        return o;
    }
    let ns = i.processes.iter().any(|p| p.placement.nspid.is_some());
    let ct = i.processes.iter().any(|p| p.placement.container.is_some());
    let mut head = format!("{:<8}", "PID");
    if ns {
        head += &format!("{:<7}", "NSPID");
    }
    if ct {
        head += &format!("{:<14}", "CONTAINER");
    }
    head += &format!(
        "{:<16} {:>8} {:>9} {:>8}  {:<34} {}",
        "COMM", "CALLS/s", "EAGAIN/s", "EINTR/s", "SIGNALS DURING CALLS (SENDER)", "VERDICT"
    );
    o += head.trim_end();
    o.push('\n');
    for p in &i.processes {
        let (calls, eagain, eintr) = rates(p);
        let mut row = format!("{:<8}", p.pid);
        if ns {
            row += &format!(
                "{:<7}",
                p.placement.nspid.map_or("-".into(), |n| n.to_string())
            );
        }
        if ct {
            row += &format!("{:<14}", p.placement.container.as_deref().unwrap_or("-"));
        }
        row += &format!(
            "{:<16} {:>8.0} {:>9.0} {:>8.0}  {:<34} {}",
            cut(&p.name, 16),
            calls,
            eagain,
            eintr,
            cut(&during_short(p).unwrap_or_else(|| "-".into()), 34),
            p.verdict.as_str()
        );
        o += row.trim_end();
        o.push('\n');
    }
    o
}

/// The plain lines for one interval: one per process.
pub fn lines(i: &Interval) -> String {
    let mut o = String::new();
    for p in &i.processes {
        let mut place = Vec::new();
        if let Some(n) = p.placement.nspid {
            place.push(format!("pid {n} in its namespace"));
        }
        if let Some(c) = &p.placement.container {
            place.push(format!("container {c}"));
        }
        let place = if place.is_empty() {
            String::new()
        } else {
            format!(", {}", place.join(", "))
        };
        let (calls, eagain, eintr) = rates(p);
        let during = p
            .activity
            .signals
            .iter()
            .filter(|(_, s)| s.during_guarded > 0)
            .map(|(&sig, s)| {
                let who: Vec<String> = s
                    .senders
                    .keys()
                    .map(|snd| sender_text(p, sig, *snd))
                    .collect();
                format!(
                    "{} {} ({})",
                    signal_name(sig),
                    s.during_guarded,
                    who.join("; ")
                )
            })
            .collect::<Vec<_>>();
        let during = if during.is_empty() {
            "no signal during the calls".to_string()
        } else {
            format!("during the calls: {}", during.join(", "))
        };
        let why = match p.unseen {
            Some(Unseen::NestedPidNs) => format!(
                " (in a PID namespace nested inside watch's: its calls cannot be counted here; `spinguard diagnose {}` can)",
                p.pid
            ),
            _ => String::new(),
        };
        let _ = writeln!(
            o,
            "{} pid {} ({}{place}): guarded calls {calls:.0}/s, EAGAIN {eagain:.0}/s, EINTR {eintr:.0}/s over {:.1} s; {during}; {}{why}",
            local_time(i.end_us),
            p.pid,
            p.name,
            p.seconds(),
            p.verdict.as_str()
        );
    }
    o
}
