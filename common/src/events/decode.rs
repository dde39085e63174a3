//! Datagrams back into events, for `spinguard listen` (feature `decode`).
//!
//! Strict where a consumer relies on it (version, the common header, the
//! fields of the events we know), lenient where v1 may grow: unknown fields
//! are ignored and an unknown `event` name decodes to [`Decoded::Other`].

use serde_json::{Map, Value};

use super::{Source, VERSION};

/// One received event.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub source: Source,
    pub pid: i32,
    pub tid: i32,
    pub seq: u64,
    pub ts_us: u64,
    /// The name of the process the event is about, when the event carries
    /// one (the shim's header, `attach`/`detach`, `livelock`).
    pub comm: Option<String>,
    pub body: Decoded,
}

/// A `prog_load` or `restart` result as sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Fd(i64),
    Ret(i64),
    Errno(String),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Decoded {
    ProgLoad {
        cmd: String,
        attempts: u64,
        result: Outcome,
        duration_us: u64,
        held_back: u64,
        held_back_signals: Vec<String>,
    },
    Restart {
        cmd: String,
        errno: String,
        n: u64,
    },
    Attach {
        threads: u64,
        comm: String,
    },
    Detach {
        threads: u64,
        comm: String,
    },
    ChildExit {
        code: Option<i64>,
        signal: Option<String>,
        core_dumped: bool,
    },
    Summary {
        guarded_calls: u64,
        calls: Vec<(String, u64)>,
        retries: u64,
        guarded_us: u64,
        held_back: u64,
        events_sent: u64,
        events_dropped: u64,
        send_failures: u64,
    },
    Livelock {
        comm: String,
        cmd: String,
        errno: String,
        failures: u64,
        ok: u64,
        window_us: u64,
        signals: Vec<String>,
        nspid: Option<i64>,
        container: Option<String>,
    },
    /// `watch --rescue`: the fields of its outcome are there, the others not.
    Rescue {
        comm: String,
        outcome: String,
        failures: u64,
        ok: u64,
        window_us: u64,
        guard: Vec<String>,
        load_us: Option<u64>,
        attach_us: Option<u64>,
        attempts: Option<u64>,
        threads: Option<u64>,
        why: Option<String>,
        attached_us: Option<u64>,
        calls: Option<u64>,
        loads: Option<u64>,
        reason: Option<String>,
        tracer: Option<i64>,
        tracer_comm: Option<String>,
        nspid: Option<i64>,
        container: Option<String>,
    },
    /// An event name this listener does not know (a newer emitter).
    Other {
        event: String,
    },
}

/// Why a datagram is not an event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Not JSON (binary garbage, half an object), with serde_json's reason.
    Json(String),
    NotAnObject,
    /// `"v"` is missing or not one we read.
    Version(Option<u64>),
    /// A required field is missing or has the wrong type.
    Field(&'static str),
    UnknownSource(String),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Json(e) => write!(f, "not JSON: {e}"),
            DecodeError::NotAnObject => f.write_str("not a JSON object"),
            DecodeError::Version(None) => f.write_str("no \"v\""),
            DecodeError::Version(Some(v)) => write!(f, "unsupported version {v}"),
            DecodeError::Field(name) => write!(f, "missing or mistyped field {name:?}"),
            DecodeError::UnknownSource(s) => write!(f, "unknown source {s:?}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Decodes one datagram.
pub fn decode(datagram: &[u8]) -> Result<Event, DecodeError> {
    let value: Value =
        serde_json::from_slice(datagram).map_err(|e| DecodeError::Json(e.to_string()))?;
    let Value::Object(o) = value else {
        return Err(DecodeError::NotAnObject);
    };
    match o.get("v").and_then(Value::as_u64) {
        Some(VERSION) => {}
        v => return Err(DecodeError::Version(v)),
    }
    let source = text(&o, "source")?;
    let source = Source::parse(&source).ok_or(DecodeError::UnknownSource(source))?;
    let event = text(&o, "event")?;
    let body = match event.as_str() {
        "prog_load" => Decoded::ProgLoad {
            cmd: text(&o, "cmd")?,
            attempts: uint(&o, "attempts")?,
            result: outcome(&o)?,
            duration_us: uint(&o, "duration_us")?,
            held_back: uint(&o, "held_back")?,
            held_back_signals: strings(&o, "held_back_signals")?,
        },
        "restart" => Decoded::Restart {
            cmd: text(&o, "cmd")?,
            errno: text(&o, "errno")?,
            n: uint(&o, "n")?,
        },
        "attach" | "detach" => {
            let threads = uint(&o, "threads")?;
            let comm = opt_text(&o, "comm").unwrap_or_default();
            if event == "attach" {
                Decoded::Attach { threads, comm }
            } else {
                Decoded::Detach { threads, comm }
            }
        }
        "child_exit" => {
            let code = o.get("code").and_then(Value::as_i64);
            let signal = o.get("signal").and_then(Value::as_str).map(str::to_string);
            if code.is_none() == signal.is_none() {
                return Err(DecodeError::Field("code"));
            }
            Decoded::ChildExit {
                code,
                signal,
                core_dumped: o
                    .get("core_dumped")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
            }
        }
        "summary" => Decoded::Summary {
            guarded_calls: uint(&o, "guarded_calls")?,
            calls: o
                .get("calls")
                .and_then(Value::as_object)
                .ok_or(DecodeError::Field("calls"))?
                .iter()
                .map(|(k, v)| v.as_u64().map(|n| (k.clone(), n)))
                .collect::<Option<_>>()
                .ok_or(DecodeError::Field("calls"))?,
            retries: uint(&o, "retries")?,
            guarded_us: uint(&o, "guarded_us")?,
            held_back: uint(&o, "held_back")?,
            events_sent: uint(&o, "events_sent")?,
            events_dropped: uint(&o, "events_dropped")?,
            send_failures: uint(&o, "send_failures")?,
        },
        "livelock" => Decoded::Livelock {
            comm: opt_text(&o, "comm").unwrap_or_default(),
            cmd: text(&o, "cmd")?,
            errno: text(&o, "errno")?,
            failures: uint(&o, "failures")?,
            ok: uint(&o, "ok")?,
            window_us: uint(&o, "window_us")?,
            signals: strings(&o, "signals")?,
            nspid: o.get("nspid").and_then(Value::as_i64),
            container: o
                .get("container")
                .and_then(Value::as_str)
                .map(str::to_string),
        },
        "rescue" => Decoded::Rescue {
            comm: opt_text(&o, "comm").unwrap_or_default(),
            outcome: text(&o, "outcome")?,
            failures: uint(&o, "failures")?,
            ok: uint(&o, "ok")?,
            window_us: uint(&o, "window_us")?,
            guard: strings(&o, "guard")?,
            load_us: o.get("load_us").and_then(Value::as_u64),
            attach_us: o.get("attach_us").and_then(Value::as_u64),
            attempts: o.get("attempts").and_then(Value::as_u64),
            threads: o.get("threads").and_then(Value::as_u64),
            why: opt_text(&o, "why"),
            attached_us: o.get("attached_us").and_then(Value::as_u64),
            calls: o.get("calls").and_then(Value::as_u64),
            loads: o.get("loads").and_then(Value::as_u64),
            reason: opt_text(&o, "reason"),
            tracer: o.get("tracer").and_then(Value::as_i64),
            tracer_comm: opt_text(&o, "tracer_comm"),
            nspid: o.get("nspid").and_then(Value::as_i64),
            container: opt_text(&o, "container"),
        },
        _ => Decoded::Other { event },
    };
    Ok(Event {
        source,
        pid: int32(&o, "pid")?,
        tid: int32(&o, "tid")?,
        seq: uint(&o, "seq")?,
        ts_us: uint(&o, "ts")?,
        comm: opt_text(&o, "comm"),
        body,
    })
}

fn text(o: &Map<String, Value>, k: &'static str) -> Result<String, DecodeError> {
    o.get(k)
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or(DecodeError::Field(k))
}

fn opt_text(o: &Map<String, Value>, k: &str) -> Option<String> {
    o.get(k).and_then(Value::as_str).map(str::to_string)
}

fn strings(o: &Map<String, Value>, k: &'static str) -> Result<Vec<String>, DecodeError> {
    o.get(k)
        .and_then(Value::as_array)
        .ok_or(DecodeError::Field(k))?
        .iter()
        .map(|s| s.as_str().map(str::to_string))
        .collect::<Option<_>>()
        .ok_or(DecodeError::Field(k))
}

fn uint(o: &Map<String, Value>, k: &'static str) -> Result<u64, DecodeError> {
    o.get(k)
        .and_then(Value::as_u64)
        .ok_or(DecodeError::Field(k))
}

fn int32(o: &Map<String, Value>, k: &'static str) -> Result<i32, DecodeError> {
    o.get(k)
        .and_then(Value::as_i64)
        .and_then(|v| i32::try_from(v).ok())
        .ok_or(DecodeError::Field(k))
}

fn outcome(o: &Map<String, Value>) -> Result<Outcome, DecodeError> {
    let r = o
        .get("result")
        .and_then(Value::as_object)
        .ok_or(DecodeError::Field("result"))?;
    if let Some(fd) = r.get("fd").and_then(Value::as_i64) {
        Ok(Outcome::Fd(fd))
    } else if let Some(ret) = r.get("ret").and_then(Value::as_i64) {
        Ok(Outcome::Ret(ret))
    } else if let Some(e) = r.get("errno").and_then(Value::as_str) {
        Ok(Outcome::Errno(e.to_string()))
    } else {
        Err(DecodeError::Field("result"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bpf;
    use crate::events::{
        encode, Attach, Body, CallResult, ChildExit, EventBuf, Header, Livelock, ProgLoad, Rescue,
        RescueOutcome, Restart, Summary,
    };
    use crate::signals::signal_name;
    use crate::SigSet;

    fn header(seq: u64) -> Header {
        Header {
            source: Source::Supervisor,
            pid: 4242,
            tid: 4250,
            seq,
            ts_us: 1_718_000_000_123_456,
            comm: crate::events::Comm::EMPTY,
        }
    }

    fn round_trip(body: &Body<'_>) -> Event {
        let mut buf = EventBuf::<{ crate::events::EVENT_BUF_LEN }>::new();
        let bytes = encode(&mut buf, &header(7), body).expect("fits");
        let e = decode(bytes).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(bytes)));
        assert_eq!(
            (e.source, e.pid, e.tid, e.seq, e.ts_us),
            (Source::Supervisor, 4242, 4250, 7, 1_718_000_000_123_456)
        );
        e
    }

    #[test]
    fn prog_load_round_trip() {
        let set = SigSet::from_bits((1 << (libc::SIGPROF - 1)) | (1 << (libc::SIGRTMIN() + 2 - 1)));
        let e = round_trip(&Body::ProgLoad(ProgLoad {
            cmd: bpf::BPF_PROG_LOAD,
            attempts: 3,
            result: CallResult::Ok(7),
            duration_us: 119_000,
            held_back: 118,
            held_back_signals: set,
        }));
        assert_eq!(
            e.body,
            Decoded::ProgLoad {
                cmd: "BPF_PROG_LOAD".into(),
                attempts: 3,
                result: Outcome::Fd(7),
                duration_us: 119_000,
                held_back: 118,
                held_back_signals: set.iter().map(signal_name).collect(),
            }
        );
        let e = round_trip(&Body::ProgLoad(ProgLoad {
            cmd: bpf::BPF_PROG_TEST_RUN,
            attempts: 1,
            result: CallResult::Err(libc::EAGAIN),
            duration_us: 0,
            held_back: 0,
            held_back_signals: SigSet::EMPTY,
        }));
        let Decoded::ProgLoad {
            result,
            held_back_signals,
            ..
        } = e.body
        else {
            panic!()
        };
        assert_eq!(result, Outcome::Errno("EAGAIN".into()));
        assert!(held_back_signals.is_empty());
        let e = round_trip(&Body::ProgLoad(ProgLoad {
            cmd: bpf::BPF_PROG_TEST_RUN,
            attempts: 1,
            result: CallResult::Ok(0),
            duration_us: 0,
            held_back: 0,
            held_back_signals: SigSet::EMPTY,
        }));
        assert!(matches!(
            e.body,
            Decoded::ProgLoad {
                result: Outcome::Ret(0),
                ..
            }
        ));
    }

    #[test]
    fn livelock_round_trip() {
        let l = Livelock {
            comm: b"go-loader",
            cmd: bpf::BPF_PROG_LOAD,
            errno: libc::EAGAIN,
            failures: 1012,
            ok: 1,
            window_us: 1_000_000,
            signals: SigSet::from_bits((1 << (libc::SIGPROF - 1)) | (1 << (libc::SIGURG - 1))),
            nspid: Some(1),
            container: b"4f3c2b1a0e9d",
        };
        assert_eq!(
            round_trip(&Body::Livelock(l)).body,
            Decoded::Livelock {
                comm: "go-loader".into(),
                cmd: "BPF_PROG_LOAD".into(),
                errno: "EAGAIN".into(),
                failures: 1012,
                ok: 1,
                window_us: 1_000_000,
                signals: vec!["SIGURG".into(), "SIGPROF".into()],
                nspid: Some(1),
                container: Some("4f3c2b1a0e9d".into()),
            }
        );
        let host = Livelock {
            nspid: None,
            container: b"",
            ..l
        };
        match round_trip(&Body::Livelock(host)).body {
            Decoded::Livelock {
                nspid, container, ..
            } => assert_eq!((nspid, container), (None, None)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rescue_round_trip_each_outcome_with_its_fields() {
        let base = Rescue {
            comm: b"go-loader",
            outcome: RescueOutcome::Loaded {
                load_us: 131_000,
                attach_us: 122_000,
                attempts: 1,
                threads: 3,
            },
            failures: 1968,
            ok: 0,
            window_us: 1_000_000,
            guard: SigSet::DEFAULT_GUARD,
            nspid: None,
            container: b"",
        };
        match round_trip(&Body::Rescue(base)).body {
            Decoded::Rescue {
                comm,
                outcome,
                failures,
                guard,
                load_us,
                attach_us,
                attempts,
                threads,
                why,
                tracer,
                ..
            } => {
                assert_eq!((comm.as_str(), outcome.as_str()), ("go-loader", "loaded"));
                assert_eq!(failures, 1968);
                assert_eq!(guard, vec!["SIGALRM", "SIGVTALRM", "SIGPROF"]);
                assert_eq!(
                    (load_us, attach_us, attempts, threads),
                    (Some(131_000), Some(122_000), Some(1), Some(3))
                );
                assert_eq!((why, tracer), (None, None));
            }
            other => panic!("{other:?}"),
        }
        let detached = Rescue {
            outcome: RescueOutcome::Detached {
                linger: true,
                threads: 3,
                attached_us: 10_500_000,
                calls: 1,
                loads: 1,
            },
            ..base
        };
        match round_trip(&Body::Rescue(detached)).body {
            Decoded::Rescue {
                outcome,
                why,
                attached_us,
                load_us,
                ..
            } => {
                assert_eq!(outcome, "detached");
                assert_eq!(why.as_deref(), Some("linger"));
                assert_eq!((attached_us, load_us), (Some(10_500_000), None));
            }
            other => panic!("{other:?}"),
        }
        let traced = Rescue {
            outcome: RescueOutcome::Traced {
                tracer: 77,
                tracer_comm: b"strace",
            },
            nspid: Some(1),
            container: b"4f3c2b1a0e9d",
            ..base
        };
        match round_trip(&Body::Rescue(traced)).body {
            Decoded::Rescue {
                outcome,
                tracer,
                tracer_comm,
                nspid,
                container,
                ..
            } => {
                assert_eq!(outcome, "traced");
                assert_eq!((tracer, tracer_comm.as_deref()), (Some(77), Some("strace")));
                assert_eq!(
                    (nspid, container.as_deref()),
                    (Some(1), Some("4f3c2b1a0e9d"))
                );
            }
            other => panic!("{other:?}"),
        }
        let failed = Rescue {
            outcome: RescueOutcome::Failed {
                reason: b"not permitted",
            },
            ..base
        };
        match round_trip(&Body::Rescue(failed)).body {
            Decoded::Rescue {
                outcome, reason, ..
            } => {
                assert_eq!(
                    (outcome.as_str(), reason.as_deref()),
                    ("failed", Some("not permitted"))
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn other_events_round_trip() {
        assert_eq!(
            round_trip(&Body::Restart(Restart {
                cmd: bpf::BPF_PROG_LOAD,
                errno: libc::EAGAIN,
                n: 2
            }))
            .body,
            Decoded::Restart {
                cmd: "BPF_PROG_LOAD".into(),
                errno: "EAGAIN".into(),
                n: 2
            }
        );
        let comm = b"ag\"e\\nt\n\x01\xff";
        assert_eq!(
            round_trip(&Body::Attach(Attach { threads: 3, comm })).body,
            Decoded::Attach {
                threads: 3,
                comm: "ag\"e\\nt\n\x01\u{fffd}".into()
            }
        );
        assert_eq!(
            round_trip(&Body::Detach(Attach {
                threads: 1,
                comm: b""
            }))
            .body,
            Decoded::Detach {
                threads: 1,
                comm: String::new()
            }
        );
        assert_eq!(
            round_trip(&Body::ChildExit(ChildExit::Code(-1))).body,
            Decoded::ChildExit {
                code: Some(-1),
                signal: None,
                core_dumped: false
            }
        );
        assert_eq!(
            round_trip(&Body::ChildExit(ChildExit::Signal {
                signal: libc::SIGSEGV,
                core_dumped: true
            }))
            .body,
            Decoded::ChildExit {
                code: None,
                signal: Some("SIGSEGV".into()),
                core_dumped: true
            }
        );
        assert_eq!(
            round_trip(&Body::Summary(Summary {
                calls: &[(bpf::BPF_PROG_LOAD, 3), (bpf::BPF_PROG_TEST_RUN, 1)],
                retries: 2,
                guarded_us: 361_249,
                held_back: 118,
                events_sent: 4,
                events_dropped: 1,
                send_failures: 1,
            }))
            .body,
            Decoded::Summary {
                guarded_calls: 4,
                calls: vec![("BPF_PROG_LOAD".into(), 3), ("BPF_PROG_TEST_RUN".into(), 1)],
                retries: 2,
                guarded_us: 361_249,
                held_back: 118,
                events_sent: 4,
                events_dropped: 1,
                send_failures: 1,
            }
        );
    }

    #[test]
    fn rejects_what_is_not_an_event() {
        type Check = fn(&DecodeError) -> bool;
        let bad: [(&[u8], Check); 8] = [
            (b"\xff\x00\x13garbage", |e| matches!(e, DecodeError::Json(_))),
            (br#"{"v":1,"source":"shim","pid":1,"tid":1,"seq":1,"ts":1,"event":"prog_lo"#, |e| {
                matches!(e, DecodeError::Json(_))
            }),
            (b"[1,2]", |e| *e == DecodeError::NotAnObject),
            (br#"{"source":"shim"}"#, |e| *e == DecodeError::Version(None)),
            (br#"{"v":2,"source":"shim"}"#, |e| *e == DecodeError::Version(Some(2))),
            (br#"{"v":1,"source":"kernel","event":"x"}"#, |e| matches!(e, DecodeError::UnknownSource(_))),
            (br#"{"v":1,"source":"shim","pid":1,"tid":1,"seq":1,"ts":1,"event":"restart","cmd":"X","errno":"EAGAIN"}"#, |e| *e == DecodeError::Field("n")),
            (br#"{"v":1,"source":"shim","pid":-1e3,"tid":1,"seq":1,"ts":1,"event":"x"}"#, |e| *e == DecodeError::Field("pid")),
        ];
        for (bytes, ok) in bad {
            let e = decode(bytes).expect_err(&String::from_utf8_lossy(bytes));
            assert!(ok(&e), "{e:?} for {}", String::from_utf8_lossy(bytes));
        }
    }

    #[test]
    fn unknown_events_and_fields_are_accepted() {
        let e = decode(br#"{"v":1,"source":"shim","pid":1,"tid":2,"seq":3,"ts":4,"event":"future","extra":[1]}"#).unwrap();
        assert_eq!(
            e.body,
            Decoded::Other {
                event: "future".into()
            }
        );
    }
}
