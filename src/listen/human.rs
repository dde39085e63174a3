//! Events and notes as lines a person reads.

use spinguard_common::events::decode::{Decoded, Event, Outcome};
use spinguard_common::events::Source;

use super::origin::Origin;
use super::streams::SeqNote;
use super::sys::local_time;

/// Text from the wire, made safe for a terminal: control characters escaped.
fn clean(s: &str) -> String {
    if s.chars().any(char::is_control) {
        s.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect()
    } else {
        s.to_string()
    }
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// ` (pid 1 in its namespace, container 4f3c2b1a0e9d)`, or nothing on the host.
fn place(nspid: Option<i64>, container: Option<&str>) -> String {
    let mut place = Vec::new();
    if let Some(ns) = nspid {
        place.push(format!("pid {ns} in its namespace"));
    }
    if let Some(c) = container {
        place.push(format!("container {}", clean(c)));
    }
    if place.is_empty() {
        String::new()
    } else {
        format!(" ({})", place.join(", "))
    }
}

/// 119 ms, 3.2 ms, 0.4 ms, 12.5 s.
fn duration(us: u64) -> String {
    match us {
        0..=9_999 => format!("{}.{} ms", us / 1000, us % 1000 / 100),
        10_000..=9_999_999 => format!("{} ms", us / 1000),
        _ => format!("{}.{} s", us / 1_000_000, us % 1_000_000 / 100_000),
    }
}

/// e.g. `12:00:01.123 shim pid 4242 tid 4250: BPF_PROG_LOAD loaded (fd 7) in
/// 119 ms, 1 attempt, SIGPROF held back 118 times`.
pub fn event_line(e: &Event, origin: Option<&Origin>) -> String {
    let tid = (e.tid != e.pid && e.tid != 0).then_some(e.tid);
    format!(
        "{} {}: {}",
        local_time(e.ts_us),
        who(e.source, e.pid, tid, origin),
        what(&e.body)
    )
}

/// `shim pid 4242 tid 4250` as the event says it (pids in the sender's
/// namespace), then what only the listener knows, when it adds something:
/// `shim pid 1 tid 7 (host pid 23456, container 3f2a1b0c9d8e)`.
pub fn who(source: Source, pid: i32, tid: Option<i32>, origin: Option<&Origin>) -> String {
    let mut s = format!("{} pid {pid}", source.as_str());
    if let Some(t) = tid {
        s += &format!(" tid {t}");
    }
    let mut extra = Vec::new();
    if let Some(o) = origin {
        match o.pid {
            Some(p) if p != pid => extra.push(format!("host pid {p}")),
            None if o.sender > 0 && o.sender != pid => {
                extra.push(format!("sent by pid {}", o.sender))
            }
            _ => {}
        }
        if let Some(c) = &o.container {
            extra.push(format!("container {}", clean(c)));
        }
    }
    if !extra.is_empty() {
        s += &format!(" ({})", extra.join(", "));
    }
    s
}

fn what(body: &Decoded) -> String {
    match body {
        Decoded::ProgLoad {
            cmd,
            attempts,
            result,
            duration_us,
            held_back,
            held_back_signals,
        } => {
            let outcome = match result {
                Outcome::Fd(fd) => format!("loaded (fd {fd})"),
                Outcome::Ret(r) => format!("ran (ret {r})"),
                Outcome::Errno(e) => format!("failed ({})", clean(e)),
            };
            let held = match (*held_back, held_back_signals.as_slice()) {
                (0, _) => "nothing held back".to_string(),
                (n, []) => format!("{} held back", plural(n, "signal", "signals")),
                // Both sources count distinct pending signals today: say
                // "held back" without a count that would only repeat the list.
                (n, sigs) if n as usize <= sigs.len() => {
                    format!("{} held back", clean(&sigs.join(",")))
                }
                (n, sigs) => format!("{} held back {n} times", clean(&sigs.join(","))),
            };
            format!(
                "{} {outcome} in {}, {}, {held}",
                clean(cmd),
                duration(*duration_us),
                plural(*attempts, "attempt", "attempts")
            )
        }
        Decoded::Restart { cmd, errno, n } => format!(
            "restarted {} after {} (restart {n})",
            clean(cmd),
            clean(errno)
        ),
        Decoded::Attach { threads, comm } => format!(
            "attached to {} ({})",
            plural(*threads, "thread", "threads"),
            clean(comm)
        ),
        Decoded::Detach { threads, comm } => format!(
            "detached from {} ({})",
            plural(*threads, "thread", "threads"),
            clean(comm)
        ),
        Decoded::ChildExit { code: Some(c), .. } => format!("exited with code {c}"),
        Decoded::ChildExit {
            signal,
            core_dumped,
            ..
        } => format!(
            "killed by {}{}",
            clean(signal.as_deref().unwrap_or("a signal")),
            if *core_dumped { " (core dumped)" } else { "" }
        ),
        Decoded::Summary {
            guarded_calls,
            calls,
            retries,
            guarded_us,
            held_back,
            events_sent,
            events_dropped,
            send_failures,
        } => {
            let by_cmd: Vec<String> = calls
                .iter()
                .filter(|(_, n)| *n > 0)
                .map(|(c, n)| format!("{} {n}", clean(c)))
                .collect();
            format!(
                "summary: {}{}, {}, {} inside, {} held back, {} sent, {} dropped ({} send {})",
                plural(*guarded_calls, "guarded call", "guarded calls"),
                if by_cmd.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", by_cmd.join(", "))
                },
                plural(*retries, "retry", "retries"),
                duration(*guarded_us),
                plural(*held_back, "signal", "signals"),
                plural(*events_sent, "event", "events"),
                events_dropped,
                send_failures,
                if *send_failures == 1 {
                    "failure"
                } else {
                    "failures"
                }
            )
        }
        Decoded::Livelock {
            comm,
            cmd,
            errno,
            failures,
            ok,
            window_us,
            signals,
            nspid,
            container,
        } => {
            let place = place(*nspid, container.as_deref());
            let during = if signals.is_empty() {
                "no signal seen during the calls".to_string()
            } else {
                format!("{} during the calls", clean(&signals.join(",")))
            };
            format!(
                "livelock: {}{place} {} failed with {} {} in {}, {ok} ok; {during}",
                clean(comm),
                clean(cmd),
                clean(errno),
                plural(*failures, "time", "times"),
                duration(*window_us),
            )
        }
        Decoded::Rescue {
            comm,
            outcome,
            failures,
            ok,
            window_us,
            load_us,
            attach_us,
            attempts,
            threads,
            why,
            attached_us,
            loads,
            reason,
            tracer,
            tracer_comm,
            nspid,
            container,
            ..
        } => {
            let place = place(*nspid, container.as_deref());
            let before = format!(
                "{failures} EAGAIN/EINTR and {ok} ok in {} before",
                duration(*window_us)
            );
            let n = |v: &Option<u64>| v.unwrap_or(0);
            let what = match outcome.as_str() {
                "loaded" => format!(
                    "loaded {} after it was found livelocked ({} after the attach, {}; {} seized); {before}",
                    duration(n(load_us)),
                    duration(n(attach_us)),
                    plural(n(attempts), "attempt", "attempts"),
                    plural(n(threads), "thread", "threads"),
                ),
                "detached" => format!(
                    "let go ({}) after {} attached, {} loaded: {} detached",
                    match why.as_deref() {
                        Some("linger") => "no guarded call for the linger",
                        _ => "watch ended",
                    },
                    duration(n(attached_us)),
                    plural(n(loads), "guarded call", "guarded calls"),
                    plural(n(threads), "thread", "threads"),
                ),
                "exited" => format!(
                    "ended while attached, after {}; {} loaded",
                    duration(n(attached_us)),
                    plural(n(loads), "guarded call", "guarded calls"),
                ),
                "traced" => format!(
                    "livelocked, but traced by pid {} ({}): not touched; {before}",
                    tracer.unwrap_or(0),
                    clean(tracer_comm.as_deref().unwrap_or("?"))
                ),
                "failed" => format!(
                    "cannot rescue: {}",
                    clean(reason.as_deref().unwrap_or("?"))
                ),
                other => format!("{} (unknown to this listener)", clean(other)),
            };
            format!("rescue: {}{place} {what}", clean(comm))
        }
        Decoded::Other { event } => format!("event {:?} (unknown to this listener)", clean(event)),
    }
}

/// e.g. `12:00:02.000 listener: seq gap: 3 events lost from shim pid 4242 (seq 6 after 2)`;
/// `who` as [`who`] says it.
pub fn seq_line(now_us: u64, who: &str, note: &SeqNote) -> String {
    let text = match *note {
        SeqNote::Gap { lost, after, seq } => format!(
            "seq gap: {} lost from {who} (seq {seq} after {after})",
            plural(lost, "event", "events")
        ),
        SeqNote::Restart { after, seq } => format!(
            "{who} started a new sequence (seq {seq} after {after}: exec or a recycled pid)"
        ),
        SeqNote::LateStart { seq } => format!(
            "first event seen from {who} has seq {seq}: {} before it not seen",
            plural(seq - 1, "event", "events")
        ),
    };
    format!("{} listener: {text}", local_time(now_us))
}

#[cfg(test)]
mod tests {
    use super::*;
    use spinguard_common::events::decode::decode;

    fn line(json: &str) -> String {
        let e = decode(json.as_bytes()).unwrap();
        let l = event_line(&e, None);
        // Drop the local-time stamp, which depends on TZ.
        l.split_once(' ').unwrap().1.to_string()
    }

    #[test]
    fn prog_load_lines() {
        assert_eq!(
            line(r#"{"v":1,"source":"shim","pid":4242,"tid":4250,"seq":1,"ts":0,"event":"prog_load","cmd":"BPF_PROG_LOAD","attempts":1,"result":{"fd":7},"duration_us":119000,"held_back":118,"held_back_signals":["SIGPROF"]}"#),
            "shim pid 4242 tid 4250: BPF_PROG_LOAD loaded (fd 7) in 119 ms, 1 attempt, SIGPROF held back 118 times"
        );
        assert_eq!(
            line(r#"{"v":1,"source":"supervisor","pid":7,"tid":7,"seq":1,"ts":0,"event":"prog_load","cmd":"BPF_PROG_TEST_RUN","attempts":2,"result":{"errno":"EINTR\u001b[2J"},"duration_us":3250,"held_back":0,"held_back_signals":[]}"#),
            "supervisor pid 7: BPF_PROG_TEST_RUN failed (EINTR\\u{1b}[2J) in 3.2 ms, 2 attempts, nothing held back"
        );
    }

    #[test]
    fn other_lines() {
        assert_eq!(
            line(
                r#"{"v":1,"source":"supervisor","pid":7,"tid":7,"seq":1,"ts":0,"event":"child_exit","signal":"SIGKILL"}"#
            ),
            "supervisor pid 7: killed by SIGKILL"
        );
        assert_eq!(
            line(r#"{"v":1,"source":"shim","pid":7,"tid":7,"seq":9,"ts":0,"event":"summary","guarded_calls":3,"calls":{"BPF_PROG_LOAD":3,"BPF_PROG_TEST_RUN":0},"retries":0,"guarded_us":361249,"held_back":2,"events_sent":3,"events_dropped":1,"send_failures":1}"#),
            "shim pid 7: summary: 3 guarded calls (BPF_PROG_LOAD 3), 0 retries, 361 ms inside, 2 signals held back, 3 events sent, 1 dropped (1 send failure)"
        );
        assert_eq!(duration(12_500_000), "12.5 s");
        assert_eq!(
            line(r#"{"v":1,"source":"probe","pid":4323,"tid":4323,"seq":1,"ts":0,"event":"livelock","comm":"go-loader","cmd":"BPF_PROG_LOAD","errno":"EAGAIN","failures":1012,"ok":0,"window_us":1000000,"signals":["SIGPROF"],"nspid":1,"container":"4f3c2b1a0e9d"}"#),
            "probe pid 4323: livelock: go-loader (pid 1 in its namespace, container 4f3c2b1a0e9d) BPF_PROG_LOAD failed with EAGAIN 1012 times in 1000 ms, 0 ok; SIGPROF during the calls"
        );
        assert_eq!(
            line(r#"{"v":1,"source":"probe","pid":4323,"tid":4323,"seq":2,"ts":0,"event":"rescue","comm":"go-loader","outcome":"loaded","failures":1968,"ok":0,"window_us":1000000,"guard":["SIGALRM","SIGVTALRM","SIGPROF"],"load_us":131000,"attach_us":122000,"attempts":1,"threads":3}"#),
            "probe pid 4323: rescue: go-loader loaded 131 ms after it was found livelocked (122 ms after the attach, 1 attempt; 3 threads seized); 1968 EAGAIN/EINTR and 0 ok in 1000 ms before"
        );
        assert_eq!(
            line(r#"{"v":1,"source":"probe","pid":4323,"tid":4323,"seq":3,"ts":0,"event":"rescue","comm":"go-loader","outcome":"detached","failures":1968,"ok":0,"window_us":1000000,"guard":["SIGPROF"],"why":"linger","threads":3,"attached_us":10500000,"calls":1,"loads":1}"#),
            "probe pid 4323: rescue: go-loader let go (no guarded call for the linger) after 10.5 s attached, 1 guarded call loaded: 3 threads detached"
        );
        assert_eq!(
            line(r#"{"v":1,"source":"probe","pid":4323,"tid":4323,"seq":1,"ts":0,"event":"rescue","comm":"go-loader","outcome":"traced","failures":1968,"ok":0,"window_us":1000000,"guard":["SIGPROF"],"tracer":77,"tracer_comm":"strace","nspid":1}"#),
            "probe pid 4323: rescue: go-loader (pid 1 in its namespace) livelocked, but traced by pid 77 (strace): not touched; 1968 EAGAIN/EINTR and 0 ok in 1000 ms before"
        );
    }

    #[test]
    fn what_the_listener_adds() {
        let o = |pid, sender, container: Option<&str>| Origin {
            sender,
            pid,
            container: container.map(Into::into),
            program: "agent".into(),
        };
        let id = "3f2a1b0c9d8e";
        // Same namespace, no container: nothing to add.
        assert_eq!(
            who(Source::Shim, 42, None, Some(&o(Some(42), 42, None))),
            "shim pid 42"
        );
        assert_eq!(
            who(
                Source::Shim,
                1,
                Some(7),
                Some(&o(Some(23456), 23456, Some(id)))
            ),
            "shim pid 1 tid 7 (host pid 23456, container 3f2a1b0c9d8e)"
        );
        assert_eq!(
            who(Source::Supervisor, 2, None, Some(&o(None, 900, Some(id)))),
            "supervisor pid 2 (sent by pid 900, container 3f2a1b0c9d8e)"
        );
        assert_eq!(
            who(Source::Supervisor, 2, None, Some(&o(None, 0, None))),
            "supervisor pid 2"
        );
    }
}
