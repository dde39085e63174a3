//! The LD_PRELOAD shim on the real kernel: the Rust loader spins under a
//! 1 kHz SIGPROF storm without it and loads on its first attempt with it; the
//! probe (examples/shim-probe.rs) checks masks, errno, signal delivery and
//! signal handlers from inside a preloaded process.

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use support::{require_privileged, LoaderLine};

const TIMEOUT: Duration = Duration::from_secs(60);
const STORM: [&str; 2] = ["--storm-hz", "1000"];
const SPINGUARD_VARS: [&str; 5] = [
    "SPINGUARD_SIGNALS",
    "SPINGUARD_MODE",
    "SPINGUARD_LOG",
    "SPINGUARD_EVENTS",
    "SPINGUARD_SHIM",
];
const DEFAULT_GUARD: &str = "SIGALRM,SIGVTALRM,SIGPROF";

/// `program args` with a clean SPINGUARD_* environment plus `env`, preloading
/// the shim when `shim`; run to completion with a hard timeout.
fn run(program: &Path, args: &[&str], shim: bool, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(program);
    cmd.args(args).env_remove("LD_PRELOAD");
    for v in SPINGUARD_VARS {
        cmd.env_remove(v);
    }
    if shim {
        cmd.env("LD_PRELOAD", support::shim_path());
    }
    cmd.envs(env.iter().copied());
    support::run_timeout(&mut cmd, TIMEOUT)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn loader(args: &[&str], shim: bool, env: &[(&str, &str)]) -> (LoaderLine, Output) {
    let out = run(&support::example_bin("rust-loader"), args, shim, env);
    (LoaderLine::parse(&stdout(&out)), out)
}

fn probe_bin() -> PathBuf {
    support::example_bin("shim-probe")
}

/// Runs the probe and returns its stdout lines, each as `key=value` fields
/// (the first word of a line is kept under `mode`).
fn probe(
    args: &[&str],
    shim: bool,
    env: &[(&str, &str)],
) -> (Vec<HashMap<String, String>>, Output) {
    let out = run(&probe_bin(), args, shim, env);
    assert!(
        out.status.success(),
        "shim-probe {args:?} failed:\n{}",
        support::describe(&out)
    );
    (parse_fields(&stdout(&out)), out)
}

fn parse_fields(text: &str) -> Vec<HashMap<String, String>> {
    text.lines()
        .map(|l| {
            let mut m = HashMap::new();
            for (i, w) in l.split_whitespace().enumerate() {
                match w.split_once('=') {
                    Some((k, v)) => m.insert(k.to_string(), v.to_string()),
                    None if i == 0 => m.insert("mode".to_string(), w.to_string()),
                    None => None,
                };
            }
            m
        })
        .collect()
}

fn field<'a>(m: &'a HashMap<String, String>, k: &str) -> &'a str {
    m.get(k)
        .map(String::as_str)
        .unwrap_or_else(|| panic!("no {k}= in {m:?}"))
}

fn num(m: &HashMap<String, String>, k: &str) -> i64 {
    let v = field(m, k);
    v.parse()
        .unwrap_or_else(|_| panic!("{k}={v} is not a number in {m:?}"))
}

/// The probe confirms `syscall` resolves into the shim (a test whose outputs
/// look the same with and without the shim must know the shim was there).
fn assert_hooked() {
    let (lines, out) = probe(&["hooked"], true, &[]);
    assert_eq!(
        lines.first().map(|l| field(l, "hooked")),
        Some("1"),
        "the probe's syscall does not come from the shim:\n{}",
        support::describe(&out)
    );
}

/// The shim's one summary line on stderr.
fn summary_line(out: &Output) -> String {
    let err = stderr(out);
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("spinguard-shim: pid "))
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "expected exactly one summary line:\n{}",
        support::describe(out)
    );
    lines[0].to_string()
}

// ---- the incident: spin without, load with --------------------------------------

#[test]
fn rust_loader_spins_without_the_shim_and_loads_first_time_with_it() {
    require_privileged!();
    let _serial = support::serial();

    let (l, out) = loader(&[&STORM[..], &["--wait", "2"]].concat(), false, &[]);
    let attempts = l.get("attempts").unwrap_or(0);
    assert!(
        l.result == "spinning" && attempts >= 10,
        "expected a spin without the shim, got {} attempts={attempts} in {:?} ms:\n{}",
        l.result,
        l.get("ms"),
        support::describe(&out)
    );
    assert_eq!(out.status.code(), Some(2), "{}", support::describe(&out));

    let (l, out) = loader(&[&STORM[..], &["--max-attempts", "2"]].concat(), false, &[]);
    assert!(
        l.result == "failed" && l.str("errno") == Some("EAGAIN") && l.get("attempts") == Some(2),
        "expected aya-style failure (EAGAIN after 2 attempts) without the shim, got: {}",
        support::describe(&out)
    );

    let (l, out) = loader(&[&STORM[..], &["--wait", "20"]].concat(), true, &[]);
    assert!(
        l.result == "loaded" && l.get("attempts") == Some(1),
        "expected a first-attempt load with the shim, got {} attempts={:?} ms={:?}:\n{}",
        l.result,
        l.get("attempts"),
        l.get("ms"),
        support::describe(&out)
    );
    assert!(
        l.get("signals").unwrap_or(0) >= 1,
        "the storm delivered no signal at all, so this proves nothing: {}",
        l.line
    );
    assert_eq!(stderr(&out), "", "the shim printed something unasked");
}

#[test]
fn four_loading_threads_each_load_first_time_with_the_shim() {
    require_privileged!();
    let _serial = support::serial();
    let args = [&STORM[..], &["--threads", "4", "--wait", "20"]].concat();
    let (l, out) = loader(&args, true, &[]);
    assert!(
        l.result == "loaded" && l.get("attempts") == Some(4) && l.get("max_attempts") == Some(1),
        "expected 4 threads x 1 attempt with the shim, got {} attempts={:?} max_attempts={:?}:\n{}",
        l.result,
        l.get("attempts"),
        l.get("max_attempts"),
        support::describe(&out)
    );
}

#[test]
fn timer_storm_spins_without_the_shim_and_loads_with_it() {
    require_privileged!();
    let _serial = support::serial();
    let timer = [&STORM[..], &["--storm", "timer"]].concat();
    let (l, out) = loader(&[&timer[..], &["--wait", "1"]].concat(), false, &[]);
    assert!(
        l.result == "spinning" && l.get("attempts").unwrap_or(0) >= 5,
        "expected a spin under a timer storm without the shim, got: {}\n{}",
        l.line,
        support::describe(&out)
    );
    let (l, out) = loader(&[&timer[..], &["--wait", "20"]].concat(), true, &[]);
    assert!(
        l.result == "loaded" && l.get("attempts") == Some(1),
        "expected a first-attempt load under a timer storm with the shim, got: {}\n{}",
        l.line,
        support::describe(&out)
    );
}

// ---- masks and delivery ------------------------------------------------------------

#[test]
fn the_old_mask_comes_back_bit_for_bit() {
    require_privileged!();
    assert_hooked();
    // "" = nothing blocked; SIGPROF alone (a guard signal the caller had blocked
    // must stay blocked: no SIG_UNBLOCK); a guard and a non-guard signal; and
    // glibc's internal 33, which pthread_sigmask(SIG_SETMASK) would silently drop.
    for list in [
        "",
        "SIGPROF",
        "SIGPROF,SIGUSR1",
        "SIGUSR1,SIGUSR2",
        "SIGUSR1,33",
    ] {
        let (lines, out) = probe(&["mask", list], true, &[]);
        let l = lines
            .iter()
            .find(|l| l.get("mode").map(String::as_str) == Some("mask"))
            .unwrap_or_else(|| panic!("no mask line:\n{}", support::describe(&out)));
        let (req, before, after) = (field(l, "requested"), field(l, "before"), field(l, "after"));
        assert_eq!(before, req, "[{list}] the probe could not set up its mask");
        assert_eq!(
            after, before,
            "[{list}] mask changed across a guarded load: before={before} after={after}"
        );
        assert_eq!(
            field(l, "pthread_after"),
            field(l, "pthread_before"),
            "[{list}] pthread_sigmask view changed across a guarded load"
        );
        assert!(
            num(l, "ret") >= 0,
            "[{list}] the guarded load itself failed: {l:?}"
        );
    }
}

#[test]
fn a_sigprof_sent_during_the_load_is_handled_right_after_it() {
    require_privileged!();
    let _serial = support::serial();

    // Control: without the shim the same SIGPROF makes the verifier give up.
    let (lines, out) = probe(&["deliver"], false, &[]);
    let l = &lines[0];
    assert_eq!(
        (field(l, "ret"), field(l, "errno")),
        ("-1", "EAGAIN"),
        "without the shim a SIGPROF during the load should cost EAGAIN:\n{}",
        support::describe(&out)
    );

    let (lines, out) = probe(&["deliver"], true, &[]);
    let l = &lines[0];
    let why = support::describe(&out);
    assert!(num(l, "ret") >= 0, "guarded load failed: {why}");
    assert!(
        num(l, "sent_in_call") >= 1 && num(l, "in_call_at_sample") == 1,
        "the probe's signals did not land inside the load (sent_in_call={}, \
         in_call_at_sample={}), so this run proves nothing: {why}",
        num(l, "sent_in_call"),
        num(l, "in_call_at_sample")
    );
    assert_eq!(
        num(l, "handled_during"),
        0,
        "SIGPROF was handled while the load was still running: {why}"
    );
    assert!(
        num(l, "handled_after") >= 1,
        "SIGPROF was not handled by the time syscall() returned (handled_after={}): {why}",
        num(l, "handled_after")
    );
    assert_eq!(
        num(l, "fd_at_handler"),
        1,
        "the handler ran before the kernel had installed the program's fd, i.e. during \
         the bpf() call: {why}"
    );
}

// ---- errno ---------------------------------------------------------------------------

/// What the kernel answers for each probe case (checked so that a case that
/// stopped failing, or failed differently, is noticed rather than compared
/// vacuously).
const EXPECTED_ERRNO: [(&str, &str); 10] = [
    ("load_zero_insn_cnt", "E2BIG|EINVAL"),
    ("load_bad_insns_ptr", "EFAULT"),
    ("load_bad_prog_type", "EINVAL"),
    ("load_bad_attr_ptr", "EFAULT"),
    ("load_attr_too_big", "E2BIG"),
    ("test_run_bad_fd", "EBADF"),
    ("map_lookup_bad_fd", "EBADF"),
    ("bpf_bad_cmd", "EINVAL"),
    ("close_minus_one", "EBADF"),
    ("no_such_syscall", "ENOSYS"),
];

#[test]
fn errno_and_return_values_are_the_kernels_own() {
    require_privileged!();
    assert_hooked();
    let (with, out) = probe(&["errno"], true, &[]);
    let (without, _) = probe(&["errno"], false, &[]);
    assert_eq!(with.len(), 14, "{}", support::describe(&out));
    assert_eq!(without.len(), with.len());
    for (l, bare) in with.iter().zip(&without) {
        let case = field(l, "case");
        let (ret, errno, raw) = (
            num(l, "hooked_ret"),
            field(l, "hooked_errno"),
            num(l, "raw_ret"),
        );
        if raw < 0 {
            let kernel = spinguard_common::errno::errno_name((-raw) as i32);
            assert_eq!(
                (ret, errno),
                (-1, kernel.as_str()),
                "{case}: through the shim ret={ret} errno={errno}, the kernel said -{kernel}"
            );
        } else {
            // Success: same value, and errno left as it was (libc's syscall
            // does not touch errno on success; the shim must not either).
            assert_eq!(
                (ret, errno),
                (raw, "unchanged"),
                "{case}: through the shim ret={ret} errno={errno}, the kernel returned {raw}"
            );
        }
        if let Some((_, want)) = EXPECTED_ERRNO.iter().find(|(c, _)| *c == case) {
            assert!(
                want.split('|').any(|w| w == errno),
                "{case}: expected the kernel to say {want}, got {errno} (ret={ret})"
            );
        }
        // Without the shim libc gives the same answer (pids differ between runs).
        assert_eq!(field(bare, "case"), case);
        assert_eq!(
            field(bare, "hooked_errno"),
            errno,
            "{case}: errno differs with and without the shim"
        );
    }
    let ok = with
        .iter()
        .find(|l| field(l, "case") == "load_ok")
        .expect("load_ok");
    assert!(num(ok, "hooked_ret") >= 0, "the good load failed: {ok:?}");
}

// ---- signal handlers -------------------------------------------------------------------

fn stress(env: &[(&str, &str)]) -> HashMap<String, String> {
    let (lines, out) = probe(&["stress", "20000"], true, env);
    let l = lines.into_iter().next().expect("stress line");
    let why = support::describe(&out);
    assert_eq!(
        num(&l, "handled"),
        20_000,
        "not every signal was handled: {why}"
    );
    assert_eq!(
        num(&l, "handler_bad"),
        0,
        "syscall() from a handler gave a wrong answer: {why}"
    );
    assert_eq!(
        num(&l, "main_bad"),
        0,
        "syscall() on the main thread gave a wrong answer: {why}"
    );
    assert!(
        num(&l, "main_calls") >= 1_000 && num(&l, "guarded_loads") >= 1,
        "the main thread barely ran (main_calls={}, guarded_loads={}): {why}",
        num(&l, "main_calls"),
        num(&l, "guarded_loads")
    );
    l
}

#[test]
fn syscall_from_signal_handlers_under_the_shim() {
    require_privileged!();
    let _serial = support::serial();
    assert_hooked();
    // Default guard: SIGUSR1 is not guarded, so a load may see EAGAIN from it
    // (counted by the probe, not a fault); nothing else may go wrong.
    stress(&[]);
    // With both signals guarded, no guarded load may ever see EAGAIN.
    let l = stress(&[("SPINGUARD_SIGNALS", "SIGPROF,SIGUSR1")]);
    assert_eq!(
        num(&l, "load_eagain"),
        0,
        "a guarded load got EAGAIN with both storm signals guarded: {l:?}"
    );
}

// ---- configuration ---------------------------------------------------------------------

#[test]
fn a_bad_signal_list_warns_once_and_the_default_still_guards() {
    require_privileged!();
    let _serial = support::serial();
    let args = [&STORM[..], &["--wait", "20"]].concat();
    let (l, out) = loader(&args, true, &[("SPINGUARD_SIGNALS", "SIGPROF,SIGBOGUS")]);
    let err = stderr(&out);
    assert_eq!(
        err.lines().collect::<Vec<_>>(),
        vec![format!(
            "spinguard-shim: ignoring SPINGUARD_SIGNALS: bad signal \"SIGBOGUS\": unknown \
             signal name; guarding {DEFAULT_GUARD}"
        )],
        "expected exactly one warning line naming the token"
    );
    assert!(
        l.result == "loaded" && l.get("attempts") == Some(1),
        "the default guard should still load first time, got: {}",
        l.line
    );

    let (l, out) = loader(&args, true, &[("SPINGUARD_MODE", "bogus")]);
    let err = stderr(&out);
    assert!(
        err.lines().count() == 1 && err.contains("\"bogus\"") && err.contains(DEFAULT_GUARD),
        "expected one warning naming the bad mode, got: {err:?}"
    );
    assert!(
        l.result == "loaded" && l.get("attempts") == Some(1),
        "a bad mode must fall back to guarding, got: {}",
        l.line
    );
}

/// Parses `spinguard-shim: pid P: N guarded bpf call(s) (...), R EAGAIN/EINTR, T ms inside, TAIL`.
struct Summary {
    pid: u32,
    calls: u64,
    per_cmd: String,
    retries: u64,
    ms: f64,
    tail: String,
}

fn malformed<T>(line: &str) -> T {
    panic!("malformed summary line: {line:?}")
}

fn parse_summary(line: &str) -> Summary {
    let rest = line
        .strip_prefix("spinguard-shim: pid ")
        .unwrap_or_else(|| malformed(line));
    let (pid, rest) = rest.split_once(": ").unwrap_or_else(|| malformed(line));
    let (calls, rest) = rest
        .split_once(" guarded bpf call")
        .unwrap_or_else(|| malformed(line));
    let rest = rest.strip_prefix('s').unwrap_or(rest);
    let (per_cmd, rest) = match rest.strip_prefix(" (") {
        Some(r) => r.split_once("), ").unwrap_or_else(|| malformed(line)),
        None => (
            "",
            rest.strip_prefix(", ").unwrap_or_else(|| malformed(line)),
        ),
    };
    let (retries, rest) = rest
        .split_once(" EAGAIN/EINTR, ")
        .unwrap_or_else(|| malformed(line));
    let (ms, tail) = rest
        .split_once(" ms inside, ")
        .unwrap_or_else(|| malformed(line));
    Summary {
        pid: pid.parse().unwrap_or_else(|_| malformed(line)),
        calls: calls.parse().unwrap_or_else(|_| malformed(line)),
        per_cmd: per_cmd.to_string(),
        retries: retries.parse().unwrap_or_else(|_| malformed(line)),
        ms: ms.parse().unwrap_or_else(|_| malformed(line)),
        tail: tail.to_string(),
    }
}

#[test]
fn observe_mode_counts_the_spin_without_stopping_it() {
    require_privileged!();
    let _serial = support::serial();
    let env = [("SPINGUARD_MODE", "observe"), ("SPINGUARD_LOG", "summary")];
    let (l, out) = loader(&[&STORM[..], &["--wait", "1"]].concat(), true, &env);
    let attempts = l.get("attempts").unwrap_or(0);
    assert!(
        l.result == "spinning" && attempts >= 5,
        "observe mode must not guard: expected a spin, got {} attempts={attempts}:\n{}",
        l.result,
        support::describe(&out)
    );
    let line = summary_line(&out);
    let s = parse_summary(&line);
    assert_eq!(
        s.calls, attempts,
        "summary counts {} calls, loader made {attempts}: {line}",
        s.calls
    );
    assert_eq!(s.per_cmd, format!("BPF_PROG_LOAD {attempts}"), "{line}");
    assert_eq!(
        s.retries, attempts,
        "every spinning attempt was an EAGAIN: summary says {} of {attempts}: {line}",
        s.retries
    );
    assert!(s.tail.starts_with("observe mode"), "{line}");
}

#[test]
fn the_summary_line_tells_what_happened() {
    require_privileged!();
    let _serial = support::serial();
    let env = [("SPINGUARD_LOG", "summary")];
    let mut cmd_args = STORM.to_vec();
    cmd_args.extend(["--wait", "20"]);
    let out = {
        let mut cmd = Command::new(support::example_bin("rust-loader"));
        cmd.args(&cmd_args).env("LD_PRELOAD", support::shim_path());
        for v in SPINGUARD_VARS {
            cmd.env_remove(v);
        }
        cmd.envs(env);
        // The pid in the summary must be the loader's own.
        let g = support::spawn_guarded(
            cmd.stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped()),
        );
        let pid = g.pid() as u32;
        (
            pid,
            support::wait_timeout(g, TIMEOUT, "rust-loader with summary"),
        )
    };
    let (pid, out) = out;
    let l = LoaderLine::parse(&stdout(&out));
    assert!(
        l.result == "loaded" && l.get("attempts") == Some(1),
        "{}",
        l.line
    );
    let line = summary_line(&out);
    let s = parse_summary(&line);
    assert_eq!(s.pid, pid, "{line}");
    assert_eq!(
        (s.calls, s.per_cmd.as_str(), s.retries),
        (1, "BPF_PROG_LOAD 1", 0),
        "{line}"
    );
    assert!(
        s.ms > 0.0,
        "a 100,000-iteration verification cannot take 0.0 ms: {line}"
    );
    assert_eq!(s.tail, format!("guarding {DEFAULT_GUARD}"), "{line}");
    assert!(line.contains(": 1 guarded bpf call ("), "singular: {line}");

    // Both guarded commands are counted by name.
    let (l, out) = loader(&["--cmd", "test-run", "--wait", "20"], true, &env);
    assert_eq!(l.result, "loaded", "{}", support::describe(&out));
    let s = parse_summary(&summary_line(&out));
    assert_eq!(
        (s.calls, s.per_cmd.as_str()),
        (2, "BPF_PROG_LOAD 1, BPF_PROG_TEST_RUN 1"),
        "{}",
        stderr(&out)
    );
}

// ---- secure execution ------------------------------------------------------------------

/// A setgid copy of the probe, run by root, is a secure-execution process
/// (the kernel sets AT_SECURE when the effective gid differs from the real
/// one). LD_PRELOAD by path is ignored there, so the probe dlopen()s the shim;
/// its constructor must then read no SPINGUARD_* variable: no warning for a
/// bad value, no summary although one was asked for.
#[test]
fn a_secure_execution_process_reads_no_spinguard_variable() {
    require_privileged!();
    let shim = support::shim_path();
    let shim = shim.to_str().expect("utf-8 path");
    let dir = support::target_dir().join(format!("shim-secure-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    struct Cleanup(PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Cleanup(dir.clone());
    let plain = dir.join("probe");
    let setgid = dir.join("probe-setgid");
    std::fs::copy(probe_bin(), &plain).expect("copy probe");
    std::fs::copy(probe_bin(), &setgid).expect("copy probe");
    let nogroup = 65534;
    std::os::unix::fs::chown(&setgid, Some(0), Some(nogroup)).expect("chown");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&setgid, std::fs::Permissions::from_mode(0o2755)).expect("chmod");

    let env = [
        ("SPINGUARD_SIGNALS", "SIGBOGUS"),
        ("SPINGUARD_MODE", "bogus"),
        ("SPINGUARD_LOG", "summary"),
    ];
    // Control: the same program without the setgid bit reads all three.
    let out = run(&plain, &["dlopen", shim], false, &env);
    let l = &parse_fields(&stdout(&out))[0];
    assert_eq!(field(l, "at_secure"), "0", "{}", support::describe(&out));
    assert!(num(l, "ret") >= 0, "{}", support::describe(&out));
    let err = stderr(&out);
    assert!(
        err.contains("\"SIGBOGUS\"")
            && err.contains("\"bogus\"")
            && err.contains(": 1 guarded bpf call"),
        "the non-secure control should warn twice and print a summary, got: {err:?}"
    );

    let out = run(&setgid, &["dlopen", shim], false, &env);
    let l = &parse_fields(&stdout(&out))[0];
    if field(l, "at_secure") != "1" {
        // e.g. a nosuid mount or no_new_privs: honest skip, not a pass.
        eprintln!("SKIP: the setgid copy did not run in secure-execution mode here");
        return;
    }
    assert!(num(l, "ret") >= 0, "{}", support::describe(&out));
    assert_eq!(
        stderr(&out),
        "",
        "in a secure-execution process the shim must read no SPINGUARD_* variable"
    );
}

// ---- before our constructor -------------------------------------------------------------

/// A library whose constructor calls `syscall()`: listed after the shim in
/// LD_PRELOAD, glibc initialises it first, so its calls reach the hook before
/// the shim's constructor has resolved libc's `syscall` (the lazy fallback).
const EARLY_LIB_C: &str = r#"
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>
__attribute__((constructor)) static void early(void) {
    long pid = syscall(SYS_getpid);
    errno = 0;
    long bad = syscall(SYS_bpf, 5 /* BPF_PROG_LOAD */, (void *)16, 72);
    int e = errno;
    errno = 0;
    long closed = syscall(SYS_close, -1);
    int e2 = errno;
    fprintf(stderr, "early pid_ok=%d load=%ld load_errno=%d close=%ld close_errno=%d\n",
            pid == getpid(), bad, e, closed, e2);
}
"#;

#[test]
fn calls_made_before_the_shims_constructor_still_work() {
    require_privileged!();
    let dir = support::target_dir().join("shim-early");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let src = dir.join("early.c");
    let lib = dir.join(format!("libearly.{}.so", std::process::id()));
    std::fs::write(&src, EARLY_LIB_C).expect("write early.c");
    let mut cc = Command::new("cc");
    cc.args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&lib)
        .arg(&src);
    let out = support::run_timeout(&mut cc, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "cc (Debian: gcc) failed: {}",
        support::describe(&out)
    );

    let preload = format!("{}:{}", support::shim_path().display(), lib.display());
    let mut cmd = Command::new(probe_bin());
    cmd.arg("hooked");
    for v in SPINGUARD_VARS {
        cmd.env_remove(v);
    }
    cmd.env("LD_PRELOAD", &preload)
        .env("SPINGUARD_LOG", "summary")
        // glibc's loader names each initialiser it calls, in order.
        .env("LD_DEBUG", "files");
    let out = support::run_timeout(&mut cmd, TIMEOUT);
    let _ = std::fs::remove_file(&lib);
    let err = stderr(&out);
    let init_pos = |name: &str| {
        err.lines()
            .position(|l| l.contains("calling init:") && l.contains(name))
            .unwrap_or_else(|| panic!("no 'calling init: …{name}' in LD_DEBUG output:\n{err}"))
    };
    assert!(
        init_pos("libearly") < init_pos("libspinguard_shim"),
        "the early library was not initialised before the shim, so this proves nothing:\n{err}"
    );
    let early = err
        .lines()
        .find(|l| l.starts_with("early "))
        .unwrap_or_else(|| panic!("the early constructor printed nothing:\n{err}"));
    assert_eq!(
        early,
        format!(
            "early pid_ok=1 load=-1 load_errno={} close=-1 close_errno={}",
            libc::EFAULT,
            libc::EBADF
        ),
        "calls before the shim's constructor gave wrong answers"
    );
    assert!(
        stdout(&out).starts_with("hooked=1"),
        "{}",
        support::describe(&out)
    );
    // The guarded call made before the constructor was counted.
    let s = parse_summary(&summary_line(&out));
    assert_eq!((s.calls, s.retries), (1, 0), "{err}");
}
