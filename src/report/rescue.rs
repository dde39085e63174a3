//! `watch --rescue`'s lines and JSON documents: one per thing that happened
//! to a rescue (refused, loaded, let go, ended, failed).

use crate::watch::rescue::session::Ended;
use crate::watch::rescue::{LetGo, Rescue, What};
use serde_json::{json, Value};
use spinguard_common::signals::signal_name;
use spinguard_supervisor::ExitStatus;
use std::time::Duration;

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e4).round() / 10.0
}

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e3).round() / 1e3
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// `pid 4242 (go-loader, container 4f3c2b1a0e9d)`.
fn who(r: &Rescue) -> String {
    let b = &r.before;
    let mut place = Vec::new();
    if let Some(n) = b.placement.nspid {
        place.push(format!("pid {n} in its namespace"));
    }
    if let Some(c) = &b.placement.container {
        place.push(format!("container {c}"));
    }
    let place: String = place.iter().map(|p| format!(", {p}")).collect();
    format!("pid {} ({}{place})", r.pid, b.name)
}

/// What the probe saw before: `1968 EAGAIN/EINTR and 0 ok in 1.0 s`.
fn before(r: &Rescue) -> String {
    let b = &r.before;
    format!(
        "{} EAGAIN/EINTR and {} ok in {:.1} s",
        b.failures,
        b.ok,
        b.window.as_secs_f64()
    )
}

fn loads(calls: u64, loads: u64) -> String {
    format!(
        "{}, {} succeeded",
        plural(calls, "guarded call", "guarded calls"),
        loads
    )
}

/// One line, no timestamp.
pub fn line(r: &Rescue) -> String {
    let who = who(r);
    match &r.what {
        What::Traced {
            tracer,
            tracer_name,
        } => format!(
            "{who}: livelocked ({}), but traced by pid {tracer} ({tracer_name}): not touched",
            before(r)
        ),
        What::Loaded {
            after,
            since_attach,
            attempts,
            threads,
        } => format!(
            "{who}: rescued: loaded {:.0} ms after it was found livelocked ({:.0} ms after the attach, {}; {} seized); before: {}; guarding {}",
            ms(*after),
            ms(*since_attach),
            plural(u64::from(*attempts), "attempt", "attempts"),
            plural(*threads as u64, "thread", "threads"),
            before(r),
            r.before.guard
        ),
        What::Ended(Ended::Detached {
            why,
            threads,
            attached,
            calls,
            loads: n,
        }) => {
            let why = match why {
                LetGo::Linger(l) => format!("no guarded call for {:.1} s", l.as_secs_f64()),
                LetGo::WatchEnded(Some(s)) => format!("watch ends on {}", signal_name(*s)),
                LetGo::WatchEnded(None) => "watch ends".to_string(),
            };
            format!(
                "{who}: let go ({why}) after {:.1} s attached, {}: {} detached, each with the mask it had",
                attached.as_secs_f64(),
                loads(*calls, *n),
                plural(*threads as u64, "thread", "threads"),
            )
        }
        What::Ended(Ended::Exited {
            status,
            attached,
            loads: n,
        }) => format!(
            "{who}: ended ({status}) while attached, after {:.1} s; {} loaded while attached",
            attached.as_secs_f64(),
            plural(*n, "guarded call", "guarded calls")
        ),
        What::Ended(Ended::Failed(why)) => format!("{who}: cannot rescue: {why}"),
    }
}

fn status_json(s: &ExitStatus) -> Value {
    match *s {
        ExitStatus::Code(c) => json!({ "code": c }),
        ExitStatus::Signal {
            signal,
            core_dumped,
        } => json!({ "signal": signal_name(signal), "core_dumped": core_dumped }),
    }
}

/// The JSON document `watch --json` prints for it: `"event": "rescue"`,
/// the process, what the probe saw before, and the outcome's numbers.
pub fn document(r: &Rescue) -> Value {
    let b = &r.before;
    let mut doc = json!({
        "event": "rescue",
        "outcome": r.what.outcome(),
        "pid": r.pid,
        "name": b.name,
        "before": {
            "failures": b.failures,
            "ok": b.ok,
            "seconds": secs(b.window),
        },
        "guard": b.guard.iter().map(signal_name).collect::<Vec<_>>(),
    });
    if let Some(n) = b.placement.nspid {
        doc["nspid"] = n.into();
    }
    if let Some(c) = &b.placement.container {
        doc["container"] = c.as_str().into();
    }
    let extra = match &r.what {
        What::Traced {
            tracer,
            tracer_name,
        } => json!({ "tracer": tracer, "tracer_name": tracer_name }),
        What::Loaded {
            after,
            since_attach,
            attempts,
            threads,
        } => json!({
            "load_ms": ms(*after),
            "since_attach_ms": ms(*since_attach),
            "attempts": attempts,
            "threads": threads,
        }),
        What::Ended(Ended::Detached {
            why,
            threads,
            attached,
            calls,
            loads,
        }) => {
            let mut v = json!({
                "threads": threads,
                "attached_seconds": secs(*attached),
                "calls": calls,
                "loads": loads,
            });
            match why {
                LetGo::Linger(l) => {
                    v["why"] = "linger".into();
                    v["linger_seconds"] = secs(*l).into();
                }
                LetGo::WatchEnded(s) => {
                    v["why"] = "watch_ended".into();
                    if let Some(s) = s {
                        v["signal"] = signal_name(*s).into();
                    }
                }
            }
            v
        }
        What::Ended(Ended::Exited {
            status,
            attached,
            loads,
        }) => json!({
            "status": status_json(status),
            "attached_seconds": secs(*attached),
            "loads": loads,
        }),
        What::Ended(Ended::Failed(why)) => json!({ "error": why }),
    };
    if let (Some(d), Value::Object(e)) = (doc.as_object_mut(), extra) {
        d.extend(e);
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watch::rescue::Before;
    use spinguard_common::SigSet;

    fn rescue(what: What) -> Rescue {
        Rescue {
            pid: 4242,
            before: Before {
                name: "go-loader".into(),
                placement: Default::default(),
                failures: 1968,
                ok: 0,
                window: Duration::from_millis(1000),
                guard: SigSet::DEFAULT_GUARD,
            },
            what,
        }
    }

    #[test]
    fn the_loaded_line_has_the_numbers_before_and_after() {
        let r = rescue(What::Loaded {
            after: Duration::from_millis(131),
            since_attach: Duration::from_millis(122),
            attempts: 1,
            threads: 3,
        });
        assert_eq!(
            line(&r),
            "pid 4242 (go-loader): rescued: loaded 131 ms after it was found livelocked (122 ms after the attach, 1 attempt; 3 threads seized); before: 1968 EAGAIN/EINTR and 0 ok in 1.0 s; guarding SIGALRM,SIGVTALRM,SIGPROF"
        );
        let d = document(&r);
        assert_eq!(d["outcome"], "loaded");
        assert_eq!(d["load_ms"], 131.0);
        assert_eq!(d["before"]["failures"], 1968);
        assert_eq!(d["guard"], json!(["SIGALRM", "SIGVTALRM", "SIGPROF"]));
    }

    #[test]
    fn a_refusal_names_the_tracer() {
        let r = rescue(What::Traced {
            tracer: 77,
            tracer_name: "strace".into(),
        });
        assert!(line(&r).ends_with("but traced by pid 77 (strace): not touched"));
        assert_eq!(document(&r)["tracer"], 77);
        assert_eq!(document(&r)["outcome"], "traced");
    }

    #[test]
    fn a_detach_says_why_and_how_many_threads() {
        let r = rescue(What::Ended(Ended::Detached {
            why: LetGo::WatchEnded(Some(libc::SIGTERM)),
            threads: 3,
            attached: Duration::from_millis(2500),
            calls: 1,
            loads: 1,
        }));
        assert_eq!(
            line(&r),
            "pid 4242 (go-loader): let go (watch ends on SIGTERM) after 2.5 s attached, 1 guarded call, 1 succeeded: 3 threads detached, each with the mask it had"
        );
        let d = document(&r);
        assert_eq!(d["why"], "watch_ended");
        assert_eq!(d["signal"], "SIGTERM");
    }
}
