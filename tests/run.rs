//! `spinguard run` on real loaders and a real kernel: the static Go loader on
//! cilium/ebpf 0.9.1 spins under a 1 kHz SIGPROF storm and loads on its first
//! attempt under ptrace mode, with one thread or eight, behind a shell, in a
//! forked child; the Rust loader too; and a map-lookup loop never stops.
//!
//! The supervisor's own counts come from the `-v` summary line on stderr:
//! `spinguard: N guarded bpf calls, R restarts, S stops; …` (S = seccomp stops).

mod support;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;
use support::*;

const TIMEOUT: Duration = Duration::from_secs(120);

/// The numbers of the supervisor's `-v` summary line.
#[derive(Debug, PartialEq, Eq)]
struct Summary {
    guarded: u64,
    restarts: u64,
    stops: u64,
}

fn summary(out: &Output) -> Summary {
    let nums = supervisor_summary(&out.stderr)
        .unwrap_or_else(|| panic!("no summary line on stderr:\n{}", describe(out)));
    Summary {
        guarded: nums[0],
        restarts: nums[1],
        stops: nums[2],
    }
}

/// `spinguard run -v --mode MODE -- program args…`
fn run_guarded(mode: &str, program: &Path, args: &[&str]) -> Output {
    run_timeout(
        Command::new(spinguard_bin())
            .args(["run", "-v", "--mode", mode, "--"])
            .arg(program)
            .args(args),
        TIMEOUT,
    )
}

fn storm_args(threads: u32) -> Vec<String> {
    let mut a: Vec<String> = ["--storm-hz", "1000", "--storm", "tgkill", "--wait", "60"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    if threads > 1 {
        a.extend(["--threads".to_string(), threads.to_string()]);
    }
    a
}

fn as_strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Asserts the loader loaded, and that the supervisor guarded exactly one call
/// per loading thread; prints the numbers for the report.
fn assert_guarded_load(what: &str, out: &Output, threads: u64) -> Summary {
    let line = LoaderLine::parse(&String::from_utf8_lossy(&out.stdout));
    let s = summary(out);
    eprintln!("{what}: {} | {s:?}", line.line);
    assert_eq!(line.result, "loaded", "{what}:\n{}", describe(out));
    assert_eq!(out.status.code(), Some(0), "{what}:\n{}", describe(out));
    assert_eq!(
        s.guarded,
        threads,
        "{what}: one guarded call per loading thread:\n{}",
        describe(out)
    );
    // Every attempt the kernel ran is one seccomp stop, and no more.
    assert_eq!(s.stops, s.guarded + s.restarts, "{what}: {s:?}");
    s
}

// ---- the incident: static Go on cilium/ebpf 0.9.1 ---------------------------------------------

#[test]
fn go_loader_spins_unguarded_and_loads_first_time_under_run() {
    require_privileged!();
    let _s = serial();
    let go = go_loader();
    let out = run_timeout(
        Command::new(&go).args(["--storm-hz", "1000", "--storm", "tgkill", "--wait", "2"]),
        TIMEOUT,
    );
    let line = LoaderLine::parse(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(
        line.result,
        "spinning",
        "without spinguard cilium/ebpf 0.9.1 must spin under the storm:\n{}",
        describe(&out)
    );

    let out = run_guarded("ptrace", &go, &as_strs(&storm_args(1)));
    let s = assert_guarded_load("go, 1 thread", &out, 1);
    // cilium retries EAGAIN itself; with the guard it never sees one. Our own
    // restarts (a SIGPROF that was already pending at the stop) are bounded.
    assert!(s.restarts <= 16, "{s:?}");
}

#[test]
fn go_loader_with_eight_threads_loads_each_once() {
    require_privileged!();
    let _s = serial();
    let out = run_guarded("ptrace", &go_loader(), &as_strs(&storm_args(8)));
    assert_guarded_load("go, 8 threads", &out, 8);
}

#[test]
fn auto_mode_picks_ptrace_for_go_and_guards_it() {
    require_privileged!();
    let _s = serial();
    let go = go_loader();
    let out = run_timeout(
        Command::new(spinguard_bin())
            .args(["run", "-v", "--"])
            .arg(&go)
            .args(storm_args(1)),
        TIMEOUT,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("ptrace mode") && stderr.contains("Go"),
        "-v must say ptrace and why:\n{}",
        describe(&out)
    );
    assert_guarded_load("go, auto", &out, 1);
}

#[test]
fn go_loader_behind_sh_exec() {
    require_privileged!();
    let _s = serial();
    let script = format!(
        "exec '{}' {}",
        go_loader().display(),
        storm_args(1).join(" ")
    );
    let out = run_guarded("ptrace", Path::new("sh"), &["-c", &script]);
    assert_guarded_load("go behind sh -c exec", &out, 1);
}

// ---- the Rust loader, forks and shells ---------------------------------------------------------

#[test]
fn rust_loader_under_ptrace_one_and_eight_threads() {
    require_privileged!();
    let _s = serial();
    let loader = example_bin("rust-loader");
    for threads in [1u32, 8] {
        let out = run_guarded("ptrace", &loader, &as_strs(&storm_args(threads)));
        let what = format!("rust loader, {threads} threads");
        assert_guarded_load(&what, &out, threads as u64);
        let line = LoaderLine::parse(&String::from_utf8_lossy(&out.stdout));
        assert_eq!(
            line.get("max_attempts"),
            Some(1),
            "{what}: the program itself must see one attempt per thread: {}",
            line.line
        );
    }
}

#[test]
fn loads_in_forked_and_spawned_children() {
    require_privileged!();
    let _s = serial();
    let fork_loader = example_bin("fork-loader");
    example_bin("rust-loader"); // --via spawn runs it from the same directory
    for via in ["fork", "spawn"] {
        let mut args = vec!["--via", via, "--"];
        let storm = storm_args(1);
        args.extend(as_strs(&storm));
        let out = run_guarded("ptrace", &fork_loader, &args);
        assert_guarded_load(&format!("loader in a child ({via})"), &out, 1);
    }
}

#[test]
fn loads_after_exec_from_a_non_leader_thread() {
    require_privileged!();
    let _s = serial();
    let fork_loader = example_bin("fork-loader");
    example_bin("rust-loader");
    let storm = storm_args(1);
    let out = run_timeout(
        Command::new(spinguard_bin())
            .args(["run", "-vv", "--mode", "ptrace", "--"])
            .arg(&fork_loader)
            .args(["--via", "thread-exec", "--"])
            .args(&storm),
        TIMEOUT,
    );
    // -vv logs the exec event; its former tid is the thread, not the leader.
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(": exec from thread "),
        "the exec must come from a non-leader thread:\n{}",
        describe(&out)
    );
    assert_guarded_load("loader exec'd by a non-leader thread", &out, 1);
}

#[test]
fn two_loads_run_by_a_shell() {
    require_privileged!();
    let _s = serial();
    let l = example_bin("rust-loader").display().to_string();
    let storm = storm_args(1).join(" ");
    let script = format!("'{l}' {storm} && '{l}' {storm}");
    let out = run_guarded("ptrace", Path::new("sh"), &["-c", &script]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("loaded")).count(),
        2,
        "{}",
        describe(&out)
    );
    assert_eq!(summary(&out).guarded, 2, "{}", describe(&out));
}

// ---- restarts: the kernel may run the call more than once; the program must not notice ----------

#[test]
fn a_non_guard_signal_is_absorbed_by_restarts_and_the_limit_is_reported() {
    require_privileged!();
    let _s = serial();
    let loader = example_bin("rust-loader");
    // SIGUSR1 is not in the guard set: each one that lands during the verifier
    // fails the attempt with EAGAIN. The supervisor reruns the call with the
    // mask held (the signal is delivered in between), up to 16 times; past
    // that, the program sees the EAGAIN and the summary says so.
    let out = run_guarded(
        "ptrace",
        &loader,
        &[
            "--storm-signal",
            "SIGUSR1",
            "--storm-hz",
            "200",
            "--wait",
            "3",
        ],
    );
    let s = summary(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("SIGUSR1 storm: {s:?}");
    assert!(s.restarts >= 16, "expected restarts:\n{}", describe(&out));
    assert_eq!(s.stops, s.guarded + s.restarts, "{s:?}");
    assert!(
        stderr.contains("gave up") && stderr.contains("restart limit reached"),
        "the restart limit must be reported:\n{}",
        describe(&out)
    );
}

// ---- what must NOT stop --------------------------------------------------------------------------

#[test]
fn map_lookups_never_stop_but_a_load_does() {
    require_privileged!();
    let _s = serial();
    let sl = example_bin("syscall-loop");
    let out = run_guarded("ptrace", &sl, &["--call", "map-lookup", "--n", "100000"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(
        summary(&out),
        Summary {
            guarded: 0,
            restarts: 0,
            stops: 0
        },
        "100k BPF_MAP_LOOKUP_ELEM must not stop once:\n{}",
        describe(&out)
    );
    let out = run_guarded("ptrace", &sl, &["--call", "prog-load", "--n", "1"]);
    assert!(out.status.success(), "{}", describe(&out));
    let s = summary(&out);
    assert_eq!(
        (s.guarded, s.stops),
        (1, 1),
        "one load, one stop:\n{}",
        describe(&out)
    );
}

// ---- preload and auto ------------------------------------------------------------------------------

#[test]
fn auto_mode_preloads_a_dynamic_loader_and_it_loads() {
    require_privileged!();
    let _s = serial();
    shim_path();
    let loader = example_bin("rust-loader");
    let out = run_timeout(
        Command::new(spinguard_bin())
            .args(["run", "-v", "--"])
            .arg(&loader)
            .args(storm_args(1))
            .env_remove("LD_PRELOAD"),
        TIMEOUT,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("preload mode"), "{}", describe(&out));
    let line = LoaderLine::parse(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(line.result, "loaded", "{}", describe(&out));
    assert_eq!(line.get("attempts"), Some(1), "{}", line.line);
}

#[test]
fn preload_keeps_an_existing_ld_preload_behind_the_shim() {
    let shim = shim_path();
    let out = run_timeout(
        Command::new(spinguard_bin())
            .args([
                "run",
                "--mode",
                "preload",
                "--signals",
                "PROF,USR2",
                "--",
                "sh",
                "-c",
                "echo \"$LD_PRELOAD\"; echo \"$SPINGUARD_SIGNALS\"",
            ])
            .env("LD_PRELOAD", "/nonexistent/theirs.so"),
        TIMEOUT,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut lines = stdout.lines();
    assert_eq!(
        lines.next(),
        Some(format!("{}:/nonexistent/theirs.so", shim.display()).as_str()),
        "{}",
        describe(&out)
    );
    assert_eq!(lines.next(), Some("SIGUSR2,SIGPROF"), "{}", describe(&out));
}

#[test]
fn bad_signal_list_is_a_usage_error() {
    let out = run_timeout(
        Command::new(spinguard_bin()).args(["run", "--signals", "PROF,NOPE", "--", "true"]),
        TIMEOUT,
    );
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("NOPE"), "{}", describe(&out));
    let out = run_timeout(
        Command::new(spinguard_bin())
            .args(["run", "--", "true"])
            .env("SPINGUARD_SIGNALS", "KILL"),
        TIMEOUT,
    );
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).lines().count(),
        1,
        "one line:\n{}",
        describe(&out)
    );
}

// ---- no_new_privs only when it is needed --------------------------------------------------------

fn no_new_privs_line(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.starts_with("NoNewPrivs:"))
        .unwrap_or_else(|| panic!("no NoNewPrivs line:\n{}", describe(out)))
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn no_new_privs_only_without_cap_sys_admin() {
    require_privileged!();
    let _s = serial();
    let probe = ["sh", "-c", "grep NoNewPrivs /proc/self/status"];
    // Root has CAP_SYS_ADMIN: the filter needs no no_new_privs, setuid keeps working.
    let out = run_timeout(
        Command::new(spinguard_bin())
            .args(["run", "--mode", "ptrace", "--"])
            .args(probe),
        TIMEOUT,
    );
    assert_eq!(no_new_privs_line(&out), "NoNewPrivs: 0");
    // Without CAP_SYS_ADMIN, seccomp(2) demands no_new_privs; and a guarded
    // load still works (CAP_BPF is kept).
    if Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("SKIP part: no setpriv (util-linux)");
        return;
    }
    let drop_admin = ["--inh-caps=-sys_admin", "--bounding-set=-sys_admin", "--"];
    let out = run_timeout(
        Command::new("setpriv")
            .args(drop_admin)
            .arg(spinguard_bin())
            .args(["run", "--mode", "ptrace", "--"])
            .args(probe),
        TIMEOUT,
    );
    assert_eq!(no_new_privs_line(&out), "NoNewPrivs: 1");
    let out = run_timeout(
        Command::new("setpriv")
            .args(drop_admin)
            .arg(spinguard_bin())
            .args(["run", "-v", "--mode", "ptrace", "--"])
            .arg(example_bin("rust-loader"))
            .args(storm_args(1)),
        TIMEOUT,
    );
    assert_guarded_load("rust loader without CAP_SYS_ADMIN", &out, 1);
}
