//! The host program is never harmed by the shim. A C program
//! (tests/c/host_probe.c, built here with cc) runs with and without
//! `LD_PRELOAD=libspinguard_shim.so` under a 1 kHz tgkill SIGPROF storm:
//!
//! - fork and vfork+exec, from an unguarded thread while another thread is
//!   inside a guarded load, and from a thread that just made one: the child
//!   has its parent thread's own mask (fork copies the calling thread's mask
//!   only), never the guard; so does a program it execs; the child's own
//!   guarded load works and leaves its mask as it was;
//! - its own SIGPROF handler under a 1 kHz POSIX timer while loading: every
//!   timer expiry is either a handled tick or counted in a handled tick's
//!   timer_getoverrun() (standard signals coalesce while blocked: at most one
//!   pending), and every load is followed by a tick before syscall() returns;
//! - dlopen/dlclose, 30 times, of a library (tests/c/syscaller.c) whose own
//!   code calls syscall(): its loads are guarded, its other calls work;
//! - errno after guarded calls that fail is the kernel's; after one that
//!   succeeds it is what the program left there.
//!
//! `syscall()` from signal handlers is tests/shim.rs's
//! `syscall_from_signal_handlers_under_the_shim` (20,000 signals).

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use support::{describe, require_privileged, run_timeout, serial};

const TIMEOUT: Duration = Duration::from_secs(120);
const SIGUSR1_BIT: u64 = 1 << (libc::SIGUSR1 - 1);
const SIGUSR2_BIT: u64 = 1 << (libc::SIGUSR2 - 1);
const SIGPROF_BIT: u64 = 1 << (libc::SIGPROF - 1);

fn c_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c")
}

/// Compiles with cc into target/<profile>/test-host/, to a per-process
/// temporary name renamed into place (two test processes may build at once).
fn cc(out_name: &str, args: &[&str]) -> PathBuf {
    let dir = support::target_dir().join("test-host");
    std::fs::create_dir_all(&dir).expect("test-host dir");
    let dest = dir.join(out_name);
    let tmp = dir.join(format!("{out_name}.{}.tmp", std::process::id()));
    let out = run_timeout(
        Command::new("cc").args(args).arg("-o").arg(&tmp),
        Duration::from_secs(120),
    );
    assert!(
        out.status.success(),
        "cc {args:?} failed (install gcc and linux-libc-dev):\n{}",
        describe(&out)
    );
    std::fs::rename(&tmp, &dest).expect("rename into place");
    dest
}

fn probe() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let src = c_dir().join("host_probe.c");
        cc(
            "host_probe",
            &["-O1", "-Wall", "-pthread", src.to_str().unwrap(), "-ldl"],
        )
    })
}

fn syscaller() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let src = c_dir().join("syscaller.c");
        cc(
            "libsyscaller.so",
            &["-O1", "-Wall", "-shared", "-fPIC", src.to_str().unwrap()],
        )
    })
}

/// Runs the probe with or without the shim; returns its lines as maps of
/// `key=value` (the first bare word kept under `what`).
fn run_probe(args: &[&str], shim: bool) -> (Vec<HashMap<String, String>>, Output) {
    let mut cmd = Command::new(probe());
    cmd.args(args).env_remove("LD_PRELOAD");
    for v in [
        "SPINGUARD_SIGNALS",
        "SPINGUARD_MODE",
        "SPINGUARD_LOG",
        "SPINGUARD_EVENTS",
    ] {
        cmd.env_remove(v);
    }
    if shim {
        cmd.env("LD_PRELOAD", support::shim_path());
    }
    let out = run_timeout(&mut cmd, TIMEOUT);
    assert!(
        out.status.success(),
        "host_probe {args:?} (shim: {shim}) failed:\n{}",
        describe(&out)
    );
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let mut m = HashMap::new();
            for (i, w) in l.split_whitespace().enumerate() {
                match w.split_once('=') {
                    Some((k, v)) => m.insert(k.to_string(), v.to_string()),
                    None if i == 0 => m.insert("what".to_string(), w.to_string()),
                    None => None,
                };
            }
            m
        })
        .collect();
    (lines, out)
}

fn find<'a>(lines: &'a [HashMap<String, String>], key: &str) -> &'a HashMap<String, String> {
    lines
        .iter()
        .find(|m| m.contains_key(key) || m.get("what").map(String::as_str) == Some(key))
        .unwrap_or_else(|| panic!("no line with {key} in {lines:?}"))
}

fn val<'a>(m: &'a HashMap<String, String>, k: &str) -> &'a str {
    m.get(k)
        .map(String::as_str)
        .unwrap_or_else(|| panic!("no {k}= in {m:?}"))
}

fn num(m: &HashMap<String, String>, k: &str) -> i64 {
    val(m, k).parse().unwrap_or_else(|_| panic!("{k} in {m:?}"))
}

fn hex(m: &HashMap<String, String>, k: &str) -> u64 {
    u64::from_str_radix(val(m, k), 16).unwrap_or_else(|_| panic!("{k} in {m:?}"))
}

/// fork or vfork: the checks are the same, only how the child starts differs.
fn children_get_their_threads_mask(mode: &str) {
    require_privileged!();
    let _s = serial();
    // The control: the storm makes an unguarded load of this probe fail.
    let (lines, out) = run_probe(&[mode], false);
    assert!(
        num(find(&lines, "eagain"), "eagain") > 0,
        "without the shim the storm must cause EAGAIN:\n{}",
        describe(&out)
    );

    let (lines, out) = run_probe(&[mode], true);
    let ctx = describe(&out);
    assert_eq!(
        val(find(&lines, "during_load"), "during_load"),
        "1",
        "the fork must happen while the other thread is inside its load:\n{ctx}"
    );
    assert_eq!(val(find(&lines, "long_load"), "long_load"), "ok", "{ctx}");
    assert_eq!(num(find(&lines, "eagain"), "eagain"), 0, "{ctx}");
    for (what, own) in [
        ("unguarded_thread", SIGUSR2_BIT),
        ("guarded_thread", SIGUSR2_BIT | SIGUSR1_BIT),
    ] {
        let m = find(&lines, what);
        let expect = hex(m, "expect");
        assert_eq!(expect, own, "{what}: the parent thread's own mask:\n{ctx}");
        for k in ["child", "child_after_load", "exec"] {
            assert_eq!(
                hex(m, k),
                expect,
                "{what}: {k} mask differs from the forking thread's (guard bit {SIGPROF_BIT:x}):\n{ctx}"
            );
        }
        assert_eq!(num(m, "load_err"), 0, "{what}: the child's load:\n{ctx}");
    }
}

#[test]
fn fork_children_have_their_threads_mask_never_the_guard() {
    children_get_their_threads_mask("fork");
}

#[test]
fn vfork_and_exec_children_have_their_threads_mask_never_the_guard() {
    children_get_their_threads_mask("vfork");
}

#[test]
fn own_sigprof_handler_loses_no_timer_tick() {
    require_privileged!();
    let _s = serial();
    let (lines, out) = run_probe(&["ticks", "20"], true);
    let m = find(&lines, "ticks");
    let ctx = describe(&out);
    assert_eq!(
        num(m, "failed"),
        0,
        "every load must succeed first time:\n{ctx}"
    );
    assert_eq!(num(m, "eagain"), 0, "{ctx}");
    assert_eq!(
        num(m, "ticked_during_each"),
        num(m, "loads"),
        "each load must be followed by a tick before syscall() returns:\n{ctx}"
    );
    // Every expiry is accounted for: handled, or an overrun reported by a
    // handled tick. The only slack is the phase of the last period.
    let (accounted, expected) = (num(m, "accounted"), num(m, "expected"));
    assert!(
        (accounted - expected).abs() <= 1,
        "timer expiries lost: {accounted} accounted of {expected}:\n{ctx}"
    );
    assert!(
        num(m, "overruns") > 0,
        "ticks held back during loads must show as overruns, not vanish:\n{ctx}"
    );
    eprintln!(
        "ticks: {} loads ({} ms inside), {} ticks handled + {} overruns = {accounted} of {expected} expiries",
        num(m, "loads"),
        num(m, "in_loads_ms"),
        num(m, "ticks"),
        num(m, "overruns")
    );
}

#[test]
fn dlopen_dlclose_of_a_library_that_calls_syscall() {
    require_privileged!();
    let _s = serial();
    let lib = syscaller().to_str().unwrap().to_string();
    let (lines, out) = run_probe(&["dlopen", &lib, "30"], false);
    assert!(
        num(find(&lines, "rounds"), "eagain") > 0,
        "control: without the shim the library's loads see EAGAIN:\n{}",
        describe(&out)
    );
    let (lines, out) = run_probe(&["dlopen", &lib, "30"], true);
    let m = find(&lines, "rounds");
    let ctx = describe(&out);
    assert_eq!(num(m, "loaded"), 30, "{ctx}");
    assert_eq!(
        num(m, "eagain"),
        0,
        "the library's loads must be guarded:\n{ctx}"
    );
    assert_eq!(num(m, "getpid_ok"), 30, "{ctx}");
}

#[test]
fn errno_after_guarded_calls_is_the_kernels() {
    require_privileged!();
    let _s = serial();
    let (with, out) = run_probe(&["errno"], true);
    let (without, _) = run_probe(&["errno"], false);
    let m = find(&with, "success_keeps");
    assert_eq!(val(m, "success_keeps"), "yes", "{}", describe(&out));
    assert_eq!(
        with, without,
        "return values and errno must be the same with the shim as without"
    );
    assert_ne!(
        val(m, "empty_prog"),
        "-1/0",
        "a failing call must set errno"
    );
}
