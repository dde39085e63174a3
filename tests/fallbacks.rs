//! The core `run` and `attach` cases with every kernel fallback forced
//! (`SPINGUARD_FORCE_FALLBACK=all`): what spinguard does on Linux 4.18, which
//! has neither PTRACE_GET_SYSCALL_INFO nor pidfds (both 5.3). Syscall stops
//! are then told apart and decoded from the registers (the ABI from the code
//! segment and the instruction before the stop), seccomp stops' data comes
//! from PTRACE_GETEVENTMSG, and signals reach the child by kill().

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use support::*;

const TIMEOUT: Duration = Duration::from_secs(120);
const FORCE: (&str, &str) = ("SPINGUARD_FORCE_FALLBACK", "all");

fn spinguard() -> Command {
    let mut c = Command::new(spinguard_bin());
    c.env(FORCE.0, FORCE.1);
    c
}

/// `spinguard -vv run --mode ptrace [--engine ENGINE] -- program args`.
fn run(engine: &str, program: &Path, args: &[&str]) -> Output {
    let out = run_timeout(
        spinguard()
            .args(["-vv", "run", "--mode", "ptrace", "--engine", engine, "--"])
            .arg(program)
            .args(args),
        TIMEOUT,
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("using the fallback for syscall-info, pidfd"),
        "the fallbacks must be in use: {}",
        describe(&out)
    );
    out
}

/// `N guarded bpf calls, R restarts, S stops` from the summary.
fn summary(out: &Output) -> (u64, u64, u64) {
    let n =
        supervisor_summary(&out.stderr).unwrap_or_else(|| panic!("no summary:\n{}", describe(out)));
    (n[0], n[1], n[2])
}

fn loaded_first_time(what: &str, out: &Output, threads: u64) {
    let l = LoaderLine::parse(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(l.result, "loaded", "{what}: {}", describe(out));
    // The Go loader cannot count cilium's retries ("?"); the summary does.
    if l.str("max_attempts") != Some("?") {
        assert_eq!(l.get("max_attempts"), Some(1), "{what}: {}", l.line);
    }
    let (guarded, restarts, stops) = summary(out);
    assert_eq!(
        guarded,
        threads,
        "{what}: one guarded call per loading thread: {}",
        describe(out)
    );
    assert_eq!(
        stops,
        guarded + restarts,
        "{what}: every attempt caught once"
    );
}

#[test]
fn run_guards_the_rust_and_go_loaders_without_syscall_info_or_pidfd() {
    require_privileged!();
    let _s = serial();
    let storm = ["--storm-hz", "1000", "--wait", "60", "--threads", "4"];
    let rust = example_bin("rust-loader");
    loaded_first_time("rust, seccomp", &run("seccomp", &rust, &storm), 4);
    let out = run("signal", &rust, &storm);
    let l = LoaderLine::parse(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(l.result, "loaded", "rust, signal: {}", describe(&out));
    assert_eq!(l.get("max_attempts"), Some(1), "rust, signal: {}", l.line);
    let go = go_loader();
    loaded_first_time("go, seccomp", &run("seccomp", &go, &storm), 4);
}

#[test]
fn restarts_abis_and_foreign_filters_without_syscall_info() {
    require_privileged!();
    let _s = serial();
    // A signal outside the guard set: restarts at exit stops told from
    // entries by our own bookkeeping.
    let out = run(
        "seccomp",
        &example_bin("rust-loader"),
        &[
            "--storm-signal",
            "SIGUSR1",
            "--storm-hz",
            "200",
            "--wait",
            "3",
        ],
    );
    let (_, restarts, _) = summary(&out);
    assert!(restarts >= 16, "{}", describe(&out));
    // int 0x80 from 64-bit code: the i386 ABI seen from the instruction.
    let corners = support::corners();
    for engine in ["seccomp", "signal"] {
        let out = run(engine, &corners, &["int80", "60"]);
        let l = LoaderLine::parse(&String::from_utf8_lossy(&out.stdout));
        assert_eq!(l.result, "loaded", "int80, {engine}: {}", describe(&out));
        assert_eq!(l.get("attempts"), Some(1), "int80, {engine}: {}", l.line);
    }
    // The program's own SECCOMP_RET_TRACE: its data from PTRACE_GETEVENTMSG.
    let out = run("seccomp", &corners, &["own-filter"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("getppid=-1 errno=38 load=0"),
        "{}",
        describe(&out)
    );
}

#[test]
fn sigterm_reaches_the_child_by_kill_without_pidfds() {
    require_privileged!();
    let _s = serial();
    let mut g = spawn_guarded(
        spinguard()
            .args(["run", "--mode", "ptrace", "--", "sh", "-c"])
            .arg("trap 'echo got TERM; exit 7' TERM; echo ready; while :; do sleep 0.05; done")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let mut out = BufReader::new(g.child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    // SAFETY: a signal to the spinguard we started.
    unsafe { libc::kill(g.pid(), libc::SIGTERM) };
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "got TERM");
    let o = wait_timeout(g, TIMEOUT, "spinguard run after SIGTERM");
    assert_eq!(o.status.code(), Some(7), "{}", describe(&o));
}

/// Blocked-signal masks of every thread of `pid`.
fn masks(pid: i32) -> Vec<(i32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let tid: i32 = e.file_name().to_string_lossy().parse().unwrap();
        let s = std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
        if let Some(m) = s.lines().find_map(|l| l.strip_prefix("SigBlk:")) {
            out.push((tid, m.trim().to_string()));
        }
    }
    out.sort();
    out
}

#[test]
fn attach_rescues_and_detaches_exactly_without_syscall_info() {
    require_privileged!();
    let _s = serial();
    // A spinning loader: rescued.
    let target = spawn_guarded(
        Command::new(example_bin("rust-loader"))
            .args(["--storm-hz", "1000", "--wait", "60"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    std::thread::sleep(Duration::from_millis(500));
    let a = spawn_guarded(
        spinguard()
            .args(["-vv", "attach", "--for", "60s"])
            .arg(target.pid().to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let out = wait_timeout(target, TIMEOUT, "the loader under attach");
    let a = wait_timeout(a, TIMEOUT, "attach");
    let l = LoaderLine::parse(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(l.result, "loaded", "{}\n{}", describe(&out), describe(&a));
    assert!(String::from_utf8_lossy(&a.stderr).contains("using the fallback for"));

    // Unusual masks mid-storm, loads going on: exactly the same after each
    // detach.
    let mut g = spawn_guarded(
        Command::new(example_bin("mask-threads"))
            .args(["--threads", "6", "--storm-hz", "1000"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit()),
    );
    let mut line = String::new();
    BufReader::new(g.child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("ready "), "{line:?}");
    let pid = g.pid();
    let before = masks(pid);
    let deadline = Instant::now() + TIMEOUT;
    for round in 0..10 {
        let out = run_timeout(
            spinguard()
                .args(["-v", "attach", "--for", "150ms"])
                .arg(pid.to_string()),
            TIMEOUT,
        );
        assert!(out.status.success(), "round {round}: {}", describe(&out));
        assert_eq!(before, masks(pid), "round {round}: {}", describe(&out));
        assert!(Instant::now() < deadline);
    }
}

#[test]
fn a_bad_force_fallback_value_is_a_usage_error() {
    for args in [
        &["run", "--mode", "ptrace", "--", "true"][..],
        &["attach", "1"][..],
    ] {
        let out = run_timeout(
            Command::new(spinguard_bin())
                .args(args)
                .env("SPINGUARD_FORCE_FALLBACK", "syscall-info,nope"),
            TIMEOUT,
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", describe(&out));
        assert!(err.contains("'nope'"), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: one line: {err}");
    }
}
