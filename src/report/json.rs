//! The JSON document `diagnose --json` prints and `watch --json` prints one
//! of per process per interval: the same fields, so one parser reads both.

use super::advice::Advice;
use super::text::{explain, sender_text};
use super::ProcessReport;
use serde_json::{json, Map, Value};
use spinguard_common::bpf::command_name;
use spinguard_common::errno::errno_name;
use spinguard_common::signals::signal_name;
use spinguard_probe::activity::Sender;
use spinguard_probe::procfs::Guard;

fn ms(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

pub fn document(r: &ProcessReport, advice: &Option<Advice>) -> Value {
    let a = &r.activity;
    let mut bpf = Map::new();
    for (&cmd, c) in &a.bpf {
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
                "ms_inside": ms(c.inside),
            }),
        );
    }
    let mut signals = Map::new();
    for (&sig, s) in &a.signals {
        let senders: Vec<Value> = s
            .senders
            .iter()
            .map(|(snd, n)| {
                let kind = match *snd {
                    Sender::Tkill { .. } => "tkill",
                    Sender::Kill { .. } => "kill",
                    Sender::Queue { .. } => "sigqueue",
                    Sender::Timer => "timer",
                    Sender::Kernel => "kernel",
                    Sender::Child { .. } => "child",
                    Sender::Other { .. } => "other",
                };
                let mut v = json!({ "kind": kind, "count": n, "text": sender_text(r, sig, *snd) });
                if snd.process() == Some(None) {
                    v["outside_pid_namespace"] = json!(true);
                }
                if let Some(pid) = snd.pid() {
                    v["pid"] = json!(pid);
                    if pid == r.pid && matches!(kind, "tkill" | "kill" | "sigqueue") {
                        let threads: Vec<i32> = a
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
                "sent": s.generated,
                "ignored": s.ignored,
                "merged": s.merged,
                "during_bpf": s.during_guarded,
                "senders": senders,
            }),
        );
    }
    let p = &r.placement;
    json!({
        "pid": r.pid,
        "nspid": p.nspid,
        "cgroup": p.cgroup,
        "container": p.container,
        "name": r.name,
        "seconds": (r.seconds() * 1000.0).round() / 1000.0,
        "threads": r.threads,
        // null, or a string (kept from the ptrace diagnose, which knew the
        // status; the probe only sees that the process is gone).
        "exited": r.exited.then_some("ended while watched"),
        "tracer": r.tracer,
        "guarded_by": r.guard.map(|g| match g {
            Guard::Shim => "shim".to_string(),
            Guard::Traced { by } => format!("spinguard pid {by}"),
        }),
        "bpf": bpf,
        "signals": signals,
        "verdict": r.verdict.as_str(),
        "explanation": explain(r),
        "advice": advice.as_ref().map(|a| json!({
            "now": a.now,
            "blocked": a.blocked,
            "next_start": a.next_start,
            "why": a.why,
        })),
    })
}
