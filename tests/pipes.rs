//! Closed pipes and full disks, for every subcommand: nothing panics (exit
//! 101), a closed stdout ends quietly (exit 0, or the status that carries a
//! result: diagnose's verdict, the program's own for run), a full stdout is a
//! one-line error (exit 1), and a closed or full stderr changes no status.
//!
//! "Closed" is a pipe whose read end is closed before the command starts, so
//! every write gets EPIPE (deterministic, unlike `| head -1`); "full" is
//! /dev/full, where every write gets ENOSPC.

mod support;

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use spinguard_common::events::{Body, ProgLoad, Sender, Source};
use spinguard_common::SigSet;
use support::*;

const T: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq)]
enum Sink {
    Closed,
    Full,
}

impl Sink {
    fn stdio(self) -> Stdio {
        match self {
            Sink::Closed => {
                let mut fds = [0; 2];
                // SAFETY: pipe2 fills two fds we then own.
                assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
                // SAFETY: both fds are ours and open.
                let (r, w) =
                    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
                drop(r);
                Stdio::from(w)
            }
            Sink::Full => Stdio::from(
                std::fs::File::options()
                    .write(true)
                    .open("/dev/full")
                    .unwrap(),
            ),
        }
    }
}

/// Runs `spinguard ARGS` with stdout into `out` (or captured) and stderr into
/// `err` (or captured).
fn run(args: &[&str], out: Option<Sink>, err: Option<Sink>) -> Output {
    let mut cmd = Command::new(spinguard_bin());
    cmd.args(args)
        .env("SPINGUARD_SHIM", shim_path())
        .stdin(Stdio::null());
    let g = spawn_guarded(
        cmd.stdout(out.map_or(Stdio::piped(), Sink::stdio))
            .stderr(err.map_or(Stdio::piped(), Sink::stdio)),
    );
    wait_timeout(g, T, &format!("spinguard {args:?}"))
}

/// The one line a full stdout gives, whatever the command.
const FULL: &str = "spinguard: error: writing to stdout: No space left on device (os error 28)\n";

/// Checks one command against every sink: stdout closed -> `closed`, stdout
/// full -> `full` (with the one-line error when that is what made it 1),
/// stderr closed or full -> `normal`.
fn check(args: &[&str], normal: i32, closed: i32, full: i32) {
    let what = |o: &Output, how: &str| format!("spinguard {args:?}, {how}: {}", describe(o));
    let o = run(args, None, None);
    assert_eq!(o.status.code(), Some(normal), "{}", what(&o, "as is"));

    let o = run(args, Some(Sink::Closed), None);
    assert_eq!(
        o.status.code(),
        Some(closed),
        "{}",
        what(&o, "stdout closed")
    );
    assert!(
        !String::from_utf8_lossy(&o.stderr).contains("panicked"),
        "{}",
        what(&o, "stdout closed")
    );

    let o = run(args, Some(Sink::Full), None);
    assert_eq!(o.status.code(), Some(full), "{}", what(&o, "stdout full"));
    if full == 1 && normal != 1 {
        assert_eq!(
            String::from_utf8_lossy(&o.stderr),
            FULL,
            "{}",
            what(&o, "stdout full")
        );
    }

    for sink in [Sink::Closed, Sink::Full] {
        let o = run(args, None, Some(sink));
        assert_eq!(
            o.status.code(),
            Some(normal),
            "{}",
            what(&o, &format!("stderr {sink:?}"))
        );
        let o = run(args, Some(sink), Some(sink));
        let want = if sink == Sink::Closed { closed } else { full };
        assert_eq!(
            o.status.code(),
            Some(want),
            "{}",
            what(&o, &format!("both {sink:?}"))
        );
    }
}

#[test]
fn printing_commands_end_quietly_on_a_closed_stdout_and_fail_on_a_full_one() {
    for args in [
        &["shim-path"][..],
        &["man"],
        &["completions", "bash"],
        &["completions", "zsh"],
        &["--help"],
        &["--version"],
        &["attach", "--help"],
        &["help", "run"],
    ] {
        check(args, 0, 0, 1);
    }
    // The loader's exit status is its result: 0 loaded (no storm here).
    if privileged() {
        check(&["__load", "--iters", "10"], 0, 0, 0);
    }
}

#[test]
fn errors_keep_their_status_whatever_happens_to_stdout_and_stderr() {
    // Nothing goes to stdout; the messages to a closed or full stderr are
    // lost, the status stays.
    check(&["run", "--", "/nonexistent/program"], 127, 127, 127);
    check(&["attach", "2147483647"], 1, 1, 1);
    check(&["attach", "--signals", "NOPE", "1"], 2, 2, 2);
    check(&["-v", "-q", "shim-path"], 2, 2, 2);
}

/// The case: `run -v --mode ptrace -- sh -c 'exit 3' 2>/dev/full`
/// exited 101. run always exits with the program's status.
#[test]
fn run_exits_with_the_programs_status_whatever_stdout_and_stderr_are() {
    require_privileged!();
    let _s = serial();
    for mode in ["ptrace", "preload", "auto"] {
        check(
            &["run", "-v", "--mode", mode, "--", "sh", "-c", "exit 3"],
            3,
            3,
            3,
        );
    }
    // What the program itself prints is the program's business: killed by
    // SIGPIPE on a closed stdout, exactly as without spinguard (128+13).
    let o = run(
        &[
            "run",
            "--mode",
            "ptrace",
            "--",
            "sh",
            "-c",
            "echo hi; exit 3",
        ],
        Some(Sink::Closed),
        None,
    );
    assert_eq!(o.status.code(), Some(141), "{}", describe(&o));
}

#[test]
fn diagnose_keeps_its_verdict_on_a_closed_stdout() {
    require_privileged!();
    let _s = serial();
    let target = spawn_guarded(Command::new("sleep").arg("60"));
    let pid = target.pid().to_string();
    // idle: exit 0; a full stdout loses the report: exit 1.
    check(&["diagnose", "--for", "0.1", &pid], 0, 0, 1);
    check(&["diagnose", "--json", "--for", "0.1", &pid], 0, 0, 1);
    check(&["attach", "-v", "--for", "0.1", &pid], 0, 0, 0);
}

#[test]
fn watch_stops_at_a_closed_stdout_and_fails_on_a_full_one() {
    require_privileged!();
    let _s = serial();
    // A loader spinning under a storm, so that every interval has a line to
    // print (watch prints only processes with guarded-command activity).
    // --trace-always: its calls are counted from the first interval, not
    // from its first suspicious signal, which a loaded machine may delay past
    // a short --for (then nothing is printed and a full stdout goes unseen).
    let _spinner = spawn_guarded(Command::new(example_bin("rust-loader")).args([
        "--storm-hz",
        "1000",
        "--wait",
        "120",
    ]));
    std::thread::sleep(Duration::from_millis(300));
    let every = ["--trace-always", "--for", "2", "--interval", "0.2"];
    check(&[&["watch"][..], &every].concat(), 0, 0, 1);
    check(&[&["watch", "--json"][..], &every].concat(), 0, 0, 1);
}

#[test]
fn demo_stops_at_a_closed_stdout_and_fails_on_a_full_one() {
    require_privileged!();
    let _s = serial();
    // Both end at the first line, long before the table would be done.
    let start = Instant::now();
    let o = run(&["demo"], Some(Sink::Closed), None);
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    let o = run(&["demo"], Some(Sink::Full), None);
    assert_eq!(o.status.code(), Some(1), "{}", describe(&o));
    assert_eq!(String::from_utf8_lossy(&o.stderr), FULL);
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
}

fn wait_for_socket(path: &Path) {
    let deadline = Instant::now() + T;
    while !std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        assert!(Instant::now() < deadline, "no socket at {}", path.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn an_event() -> Body<'static> {
    Body::ProgLoad(ProgLoad {
        cmd: spinguard_common::bpf::BPF_PROG_LOAD,
        attempts: 1,
        result: spinguard_common::events::CallResult::Ok(3),
        duration_us: 10,
        held_back: 0,
        held_back_signals: SigSet::EMPTY,
    })
}

/// `listen | head`: the first event after the reader has gone ends the
/// listener cleanly (exit 0, socket removed, that event in the metrics).
#[test]
fn listen_ends_cleanly_when_its_stdout_is_closed() {
    let scratch = Scratch::new("pipes-listen");
    let path = scratch.path("s.sock");
    let metrics = scratch.path("m.prom");
    let g = spawn_guarded(
        Command::new(spinguard_bin())
            .args(["listen", "--metrics"])
            .arg(&metrics)
            .arg(&path)
            .stdout(Sink::Closed.stdio())
            .stderr(Stdio::piped()),
    );
    wait_for_socket(&path);
    let sender = Sender::new(&path).unwrap();
    assert!(sender.emit(Source::Shim, &an_event()));
    let o = wait_timeout(g, T, "listen");
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    assert!(!path.exists(), "socket left behind");
    let text = std::fs::read_to_string(&metrics).unwrap();
    assert!(
        text.lines()
            .any(|l| l.starts_with("spinguard_loads_total{") && l.ends_with(" 1")),
        "{text}"
    );
}

/// A full stdout loses the event lines, not the listener: one warning, and it
/// goes on receiving and counting (the metrics file shows every event).
#[test]
fn listen_survives_a_full_stdout_and_keeps_counting() {
    let scratch = Scratch::new("pipes-listen-full");
    let path = scratch.path("s.sock");
    let metrics = scratch.path("m.prom");
    let mut g = spawn_guarded(
        Command::new(spinguard_bin())
            .args(["listen", "--metrics"])
            .arg(&metrics)
            .arg(&path)
            .stdout(Sink::Full.stdio())
            .stderr(Stdio::piped()),
    );
    let err = collect_lines(g.child.stderr.take().unwrap());
    wait_for_socket(&path);
    let sender = Sender::new(&path).unwrap();
    for _ in 0..3 {
        assert!(sender.emit(Source::Shim, &an_event()));
    }
    let deadline = Instant::now() + T;
    let counted = || {
        std::fs::read_to_string(&metrics)
            .unwrap_or_default()
            .lines()
            .any(|l| l.starts_with("spinguard_loads_total{") && l.ends_with(" 3"))
    };
    while !counted() {
        assert!(
            Instant::now() < deadline,
            "metrics never counted 3 calls: {}\nstderr: {:#?}",
            std::fs::read_to_string(&metrics).unwrap_or_default(),
            err.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(g.pid(), libc::SIGTERM) };
    let o = wait_timeout(g, T, "listen");
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    std::thread::sleep(Duration::from_millis(50));
    let err = err.lock().unwrap().clone();
    let warnings: Vec<_> = err
        .iter()
        .filter(|l| l.contains("cannot write events to stdout: No space left on device"))
        .collect();
    assert_eq!(
        warnings.len(),
        1,
        "one warning, not one per event: {err:#?}"
    );
    assert!(warnings[0].starts_with("spinguard: warning: "), "{err:#?}");
}

/// Every subcommand `--help` lists is exercised above; a new one must be
/// added here and given its closed-pipe and full-disk cases.
#[test]
fn every_subcommand_is_covered() {
    let covered = [
        "shim-path",
        "demo",
        "run",
        "attach",
        "diagnose",
        "watch",
        "listen",
        "completions",
        "man",
    ];
    let listed = subcommands();
    for c in &listed {
        assert!(
            covered.contains(&c.as_str()),
            "spinguard {c} has no closed-pipe and full-disk test in tests/pipes.rs"
        );
    }
    assert_eq!(listed.len(), covered.len(), "{listed:?}");
}
