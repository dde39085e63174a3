//! Hostile input: property tests (proptest) of every parser that takes text
//! or bytes from outside, and a flood of garbage at `spinguard listen`.
//!
//! - the guard-list parser (`--signals`, SPINGUARD_SIGNALS): never panics;
//!   Display → parse gives the same set back for any valid set;
//! - the event decoder in `listen`: never panics on arbitrary bytes or on
//!   mangled events; encode → decode keeps every field; whatever the encoder
//!   makes (any comm bytes, any numbers) decodes;
//! - `--for` and PID parsing (attach, diagnose): never panic; garbage is a
//!   usage error (exit 2) with one `error:` line, never a panic;
//! - 1,000,000 garbage datagrams at `spinguard listen`: it survives, counts
//!   every one, and prints the good event sent after them.
//!
//! Findings fixed (each has a regression test here and in common/src/cli.rs):
//! `--for 99999999999999999999999h` panicked in `Duration::from_secs_f64`
//! (spinguard exited 101); `--for 10701606219ms` came back a nanosecond short
//! (f64 arithmetic). Both parsers now live in `spinguard_common::cli`.

mod support;
use support::Scratch;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use spinguard_common::bpf::{BPF_PROG_LOAD, BPF_PROG_TEST_RUN};
use spinguard_common::cli::{parse_duration, parse_pid, MAX_DURATION};
use spinguard_common::errno::static_errno_name;
use spinguard_common::events::decode::{decode, Decoded, Outcome};
use spinguard_common::events::{
    encode, Attach, Body, CallResult, ChildExit, Comm, EventBuf, Header, ProgLoad, Restart, Source,
    EVENT_BUF_LEN,
};
use spinguard_common::parse_signal_list;
use spinguard_common::signals::{parse_signal, signal_name, SigSet};

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Pieces a guard list is made of, so the fuzzer reaches deep paths
/// (`RTMIN+`, `SIG` prefixes, numbers at the edges) and not only junk.
fn list_token() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("SIGPROF".to_string()),
        Just("prof".to_string()),
        Just("all".to_string()),
        Just("ALL".to_string()),
        Just("KILL".to_string()),
        Just("32".to_string()),
        Just("RTMIN".to_string()),
        Just("SIGRTMAX-".to_string()),
        Just("RTMIN+".to_string()),
        Just(",".to_string()),
        Just(" ".to_string()),
        Just("+".to_string()),
        Just("-".to_string()),
        Just("SIG".to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        (0i32..70).prop_map(|n| n.to_string()),
        "\\PC{0,6}",
    ]
}

fn any_blockable_set() -> impl Strategy<Value = SigSet> {
    any::<u64>()
        .prop_map(|b| SigSet::from_bits(b & SigSet::all_blockable().bits()))
        .prop_filter("non-empty", |s| !s.is_empty())
}

proptest! {
    #![proptest_config(config(4000))]

    #[test]
    fn signal_list_parser_never_panics_on_any_text(s in "\\PC{0,40}") {
        let _ = parse_signal_list(&s);
        let _ = parse_signal(&s);
    }

    #[test]
    fn signal_list_parser_never_panics_on_lists_of_tokens(
        toks in proptest::collection::vec(list_token(), 0..8)
    ) {
        let s = toks.concat();
        if let Ok(set) = parse_signal_list(&s) {
            // Whatever it accepts is blockable and can be said back.
            prop_assert_eq!(set.bits() & !SigSet::all_blockable().bits(), 0, "{:?} -> {}", s, set);
            prop_assert!(!set.is_empty(), "{:?} parsed to an empty set", s);
        }
    }

    #[test]
    fn signal_set_display_parses_back_to_the_same_set(set in any_blockable_set()) {
        let text = set.to_string();
        prop_assert_eq!(parse_signal_list(&text), Ok(set), "{}", text);
        // Each name alone too, and numbers.
        for sig in set.iter() {
            prop_assert_eq!(parse_signal(&signal_name(sig)), Ok(sig));
            prop_assert_eq!(parse_signal(&sig.to_string()), Ok(sig));
        }
    }

    #[test]
    fn duration_parser_never_panics(s in "\\PC{0,30}") {
        let _ = parse_duration(&s);
    }

    #[test]
    fn duration_parser_never_panics_on_numbers_and_units(
        n in "[0-9.]{0,40}",
        unit in prop_oneof![Just(""), Just("s"), Just("ms"), Just("m"), Just("h"), Just("min"), Just("sec"), Just("x")]
    ) {
        let s = format!("{n}{unit}");
        if let Ok(d) = parse_duration(&s) {
            prop_assert!(d > Duration::ZERO && d <= MAX_DURATION, "{:?} -> {:?}", s, d);
            // A deadline from it can always be computed.
            prop_assert!(Instant::now().checked_add(d).is_some());
        }
    }

    #[test]
    fn durations_round_trip(ms in 1u64..=MAX_DURATION.as_millis() as u64) {
        prop_assert_eq!(parse_duration(&format!("{ms}ms")), Ok(Duration::from_millis(ms)));
        let secs = ms / 1000;
        if secs > 0 {
            prop_assert_eq!(parse_duration(&format!("{secs}s")), Ok(Duration::from_secs(secs)));
            prop_assert_eq!(parse_duration(&secs.to_string()), Ok(Duration::from_secs(secs)));
        }
    }

    #[test]
    fn pid_parser_never_panics_and_takes_only_pids(s in "\\PC{0,24}") {
        if let Ok(p) = parse_pid(&s) {
            prop_assert!(p > 0);
            prop_assert_eq!(p.to_string(), s);
        }
    }

    #[test]
    fn pids_round_trip(p in 1i32..=i32::MAX) {
        prop_assert_eq!(parse_pid(&p.to_string()), Ok(p));
        prop_assert!(parse_pid(&(-(p as i64)).to_string()).is_err());
    }
}

// ---- the event decoder ---------------------------------------------------------

fn header() -> impl Strategy<Value = Header> {
    (
        any::<bool>(),
        any::<i32>(),
        any::<i32>(),
        any::<u64>(),
        any::<u64>(),
        proptest::collection::vec(any::<u8>(), 0..20),
    )
        .prop_map(|(shim, pid, tid, seq, ts_us, comm)| Header {
            source: if shim {
                Source::Shim
            } else {
                Source::Supervisor
            },
            pid,
            tid,
            seq,
            ts_us,
            comm: Comm::new(&comm),
        })
}

fn call_result() -> impl Strategy<Value = CallResult> {
    prop_oneof![
        (0i64..=i64::MAX).prop_map(CallResult::Ok),
        (1i32..200).prop_map(CallResult::Err),
        any::<i32>().prop_map(CallResult::Err),
    ]
}

fn prog_load() -> impl Strategy<Value = ProgLoad> {
    (
        prop_oneof![Just(BPF_PROG_LOAD), Just(BPF_PROG_TEST_RUN), any::<u32>()],
        any::<u32>(),
        call_result(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(
            |(cmd, attempts, result, duration_us, held_back, sigs)| ProgLoad {
                cmd,
                attempts,
                result,
                duration_us,
                held_back,
                held_back_signals: SigSet::from_bits(sigs),
            },
        )
}

fn encoded(h: &Header, body: &Body<'_>) -> Vec<u8> {
    let mut buf = EventBuf::<EVENT_BUF_LEN>::new();
    encode(&mut buf, h, body)
        .expect("every event fits the default buffer")
        .to_vec()
}

proptest! {
    #![proptest_config(config(3000))]

    #[test]
    fn decoder_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = decode(&bytes);
    }

    #[test]
    fn decoder_never_panics_on_mangled_events(
        h in header(),
        p in prog_load(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = encoded(&h, &Body::ProgLoad(p));
        for (at, b) in edits {
            let i = at.index(bytes.len());
            bytes[i] = b;
        }
        let _ = decode(&bytes);
        let _ = decode(&bytes[..cut.index(bytes.len())]);
    }

    #[test]
    fn prog_load_round_trips(h in header(), p in prog_load()) {
        let bytes = encoded(&h, &Body::ProgLoad(p));
        let e = decode(&bytes).map_err(|e| TestCaseError::fail(format!("{e}: {}", String::from_utf8_lossy(&bytes))))?;
        prop_assert_eq!((e.source, e.pid, e.tid, e.seq, e.ts_us), (h.source, h.pid, h.tid, h.seq, h.ts_us));
        let comm = (!h.comm.is_empty()).then(|| String::from_utf8_lossy(h.comm.as_bytes()).into_owned());
        prop_assert_eq!(e.comm, comm);
        let Decoded::ProgLoad { attempts, result, duration_us, held_back, held_back_signals, cmd } = e.body else {
            return Err(TestCaseError::fail(format!("not a prog_load: {:?}", e.body)));
        };
        prop_assert_eq!(attempts, p.attempts as u64);
        prop_assert_eq!(duration_us, p.duration_us);
        prop_assert_eq!(held_back, p.held_back);
        prop_assert_eq!(cmd, spinguard_common::bpf::command_name(p.cmd));
        let names: Vec<String> = p.held_back_signals.iter().map(signal_name).collect();
        prop_assert_eq!(held_back_signals, names);
        match (p.result, result) {
            (CallResult::Ok(v), Outcome::Fd(d)) if p.cmd == BPF_PROG_LOAD => prop_assert_eq!(v, d),
            (CallResult::Ok(v), Outcome::Ret(r)) if p.cmd != BPF_PROG_LOAD => prop_assert_eq!(v, r),
            (CallResult::Err(n), Outcome::Errno(name)) => match static_errno_name(n) {
                Some(known) => prop_assert_eq!(name, known),
                None => prop_assert_eq!(name, format!("E{n}")),
            },
            (a, b) => return Err(TestCaseError::fail(format!("{a:?} came back as {b:?}"))),
        }
    }

    #[test]
    fn other_events_round_trip(
        h in header(),
        comm in proptest::collection::vec(any::<u8>(), 0..16),
        threads in any::<u32>(),
        errno in any::<i32>(),
        n in any::<u32>(),
        code in any::<i32>(),
        signal in 1i32..=64,
    ) {
        let e = decode(&encoded(&h, &Body::Attach(Attach { threads, comm: &comm }))).expect("attach decodes");
        prop_assert_eq!(e.body, Decoded::Attach { threads: threads as u64, comm: String::from_utf8_lossy(&comm).into_owned() });
        let e = decode(&encoded(&h, &Body::Detach(Attach { threads, comm: &comm }))).expect("detach decodes");
        let ok = matches!(e.body, Decoded::Detach { .. });
        prop_assert!(ok, "{:?}", e.body);
        let e = decode(&encoded(&h, &Body::Restart(Restart { cmd: BPF_PROG_LOAD, errno, n }))).expect("restart decodes");
        let ok = matches!(e.body, Decoded::Restart { n: got, .. } if got == n as u64);
        prop_assert!(ok, "{:?}", e.body);
        let e = decode(&encoded(&h, &Body::ChildExit(ChildExit::Code(code)))).expect("exit decodes");
        let ok = matches!(e.body, Decoded::ChildExit { code: Some(c), signal: None, .. } if c == code as i64);
        prop_assert!(ok, "{:?}", e.body);
        let e = decode(&encoded(&h, &Body::ChildExit(ChildExit::Signal { signal, core_dumped: true }))).expect("signal exit decodes");
        prop_assert_eq!(e.body, Decoded::ChildExit { code: None, signal: Some(signal_name(signal)), core_dumped: true });
    }
}

// ---- the CLI end to end ----------------------------------------------------------

/// Garbage for `--for` and PID is a usage error: exit 2, a first line that
/// starts with `error:` and quotes the value, no panic.
#[test]
fn cli_rejects_garbage_durations_and_pids_with_one_line() {
    let huge = "9".repeat(400);
    // (arguments, the value the error line must quote)
    let cases: [(&[&str], &str); 18] = [
        (
            &["attach", "--for", "99999999999999999999999h", "1"],
            "99999999999999999999999h",
        ),
        (&["attach", "--for", &huge, "1"], &huge),
        (&["diagnose", "--for", "1e400", "1"], "1e400"),
        (&["attach", "--for", "-5s", "1"], "-5"), // clap: an unexpected flag
        (&["attach", "--for", "NaN", "1"], "NaN"),
        (
            &["attach", "--for", "0.0000000001ms", "1"],
            "0.0000000001ms",
        ),
        (&["diagnose", "--for", "8785h", "1"], "8785h"),
        (&["attach", "abc"], "abc"),
        (&["attach", "0"], "0"),
        (&["diagnose", "99999999999"], "99999999999"),
        (&["attach", "--", "-1"], "-1"),
        (&["attach", "１２３"], "１２３"),
        (
            &["run", "--signals", "SIGRTMIN+999999999999", "--", "true"],
            "SIGRTMIN+999999999999",
        ),
        (&["run", "--signals", ",,,", "--", "true"], ",,,"),
        (&["watch", "--interval", "1e400"], "1e400"),
        (&["watch", "--interval", "0"], "0"),
        (&["watch", "--for", &huge], &huge),
        (&["watch", "--metrics-addr", "[::1"], "[::1"),
    ];
    for (args, value) in cases {
        let out = support::run_timeout(
            Command::new(support::spinguard_bin()).args(args),
            Duration::from_secs(30),
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            support::describe(&out)
        );
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        let first = err.lines().next().unwrap_or_default();
        assert!(
            first.starts_with("error: ") && first.contains(value),
            "{args:?}: the first line must be the error and quote {value:?}:\n{err}"
        );
    }
}

// ---- a flood at `spinguard listen` -----------------------------------------------

const FLOOD: u64 = 1_000_000;

/// Lines of a pipe, as they come.
fn lines(r: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(r).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    rx
}

fn wait_line(
    rx: &mpsc::Receiver<String>,
    needle: &str,
    within: Duration,
    seen: &mut Vec<String>,
) -> String {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if l.contains(needle) => return l,
            Ok(l) => seen.push(l),
            Err(_) => panic!("no line with {needle:?} within {within:?}; saw: {seen:#?}"),
        }
    }
}

#[test]
fn a_million_garbage_datagrams_do_not_stop_listen() {
    let dir = Scratch::new("fuzz");
    let path = dir.path("flood.sock");
    let mut g = support::spawn_guarded(
        Command::new(support::spinguard_bin())
            .arg("listen")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let out = lines(g.child.stdout.take().unwrap());
    let err = lines(g.child.stderr.take().unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_socket()) {
        assert!(Instant::now() < deadline, "listen never created its socket");
        std::thread::sleep(Duration::from_millis(5));
    }
    // A blocking socket: when the listener's queue is full the sender waits,
    // so every datagram arrives and the count can be exact.
    let tx = UnixDatagram::unbound().expect("socket");
    tx.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    let start = Instant::now();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut buf = [0u8; 64];
    for i in 0..FLOOD {
        // xorshift64: varied lengths and bytes, some that look like JSON.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let len = 1 + (x % 64) as usize;
        for (j, b) in buf[..len].iter_mut().enumerate() {
            *b = (x >> ((j % 8) * 8)) as u8 ^ j as u8;
        }
        let d: &[u8] = match i % 5 {
            0 => b"{\"v\":1,\"source\":\"shim\"}",
            1 => &buf[..len],
            2 => b"{\"v\":2}",
            _ => &buf[..len],
        };
        // A send with a timeout (SO_SNDTIMEO) fails with EINTR, whatever
        // SA_RESTART says, after any stop and continue of this process
        // (signal(7)); a blocking sender retries it.
        loop {
            match tx.send_to(d, &path) {
                Ok(_) => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => panic!("datagram {i}: {e}"),
            }
        }
    }
    let sent_in = start.elapsed();
    // Then one good event: it must still be heard.
    let good = encoded(
        &Header {
            source: Source::Shim,
            pid: 5,
            tid: 6,
            seq: 1,
            ts_us: 1,
            comm: Comm::EMPTY,
        },
        &Body::ProgLoad(ProgLoad {
            cmd: BPF_PROG_LOAD,
            attempts: 1,
            result: CallResult::Ok(7),
            duration_us: 120_000,
            held_back: 0,
            held_back_signals: SigSet::EMPTY,
        }),
    );
    tx.send_to(&good, &path).expect("good event");
    let mut seen = Vec::new();
    // pid 5 as the event says; the sender, as the kernel says, is this test.
    wait_line(
        &out,
        &format!(
            "shim pid 5 tid 6 (host pid {}): BPF_PROG_LOAD loaded",
            std::process::id()
        ),
        Duration::from_secs(60),
        &mut seen,
    );
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(g.pid(), libc::SIGTERM) };
    let total = wait_line(
        &err,
        "malformed datagrams in all",
        Duration::from_secs(30),
        &mut seen,
    );
    assert_eq!(
        total,
        format!("spinguard: warning: ignored {FLOOD} malformed datagrams in all"),
        "every garbage datagram must be counted"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = g.child.try_wait().expect("try_wait") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "listen did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(status.success(), "{status:?}");
    assert!(!path.exists(), "the socket must be removed");
    eprintln!(
        "flood: {FLOOD} garbage datagrams sent in {:.1} s, all counted; the good event after them was printed",
        sent_in.as_secs_f64()
    );
}
