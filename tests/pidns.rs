//! `spinguard diagnose` and `watch` run inside a PID namespace of their own,
//! as in a container or `kubectl debug --target`: `unshare --pid --fork
//! --mount-proc`, so spinguard sees that namespace's /proc and pids, and its
//! eBPF probe must name processes as that namespace does. The probe used to
//! key them by their pids on the host and said `idle` of a spinning loader
//! there. Everything here is started by the test: loaders inside the
//! namespace, spinguard beside them, and the same spinguard on the host
//! watching the same loader at the same time as the reference.

mod support;

use serde_json::Value;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use support::*;

const T: Duration = Duration::from_secs(120);

/// `sh -c SCRIPT` as pid 1 of a new PID namespace with its own /proc, with
/// `$SG` (spinguard), `$LOADER` (the Rust loader) and `env` set. Killing
/// the group ends everything in it (`--kill-child` for the rest).
fn in_pidns(script: &str, env: &[(&str, &str)]) -> GroupGuard {
    let mut cmd = Command::new("unshare");
    cmd.args(["--pid", "--fork", "--mount-proc", "--kill-child"])
        .args(["sh", "-c", script])
        .env("SG", spinguard_bin())
        .env("LOADER", example_bin("rust-loader"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    spawn_guarded(&mut cmd)
}

/// The children of `pid` (its main thread's).
fn children(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The host pid of the first process named `name` below `root`, waiting
/// (at most 30 s) for it to appear.
fn descendant(root: i32, name: &str) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut todo = vec![root];
        while let Some(p) = todo.pop() {
            if p != root && comm(p) == name {
                return p;
            }
            todo.extend(children(p));
        }
        assert!(Instant::now() < deadline, "no {name} below pid {root}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `NSpid:` of a host pid: its pid in each namespace, the host's first.
fn nspids(pid: i32) -> Vec<i64> {
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    st.lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .unwrap()
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect()
}

/// Waits until `pid` has at least `n` threads (the loader's storm runs).
fn wait_threads(pid: i32, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count()) < n {
        assert!(Instant::now() < deadline, "pid {pid} never had {n} threads");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not one JSON document ({e}): {}", describe(out)))
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// The senders of `sig` in a diagnose document, by kind.
fn senders<'a>(v: &'a Value, sig: &str, kind: &str) -> Vec<&'a Value> {
    v["signals"][sig]["senders"]
        .as_array()
        .map(|a| a.iter().filter(|s| s["kind"] == kind).collect())
        .unwrap_or_default()
}

/// A loader that starts spinning under its 1 kHz SIGPROF storm 3 s after it
/// starts (time for both diagnoses to get going), spins 3 s and exits,
/// inside a namespace where `spinguard diagnose` watches it by its pid
/// there; the same loader diagnosed from the host at the same time; and 20
/// SIGPROFs sent to it with kill(2) by this test, a process outside its
/// namespace. The same counts, each in its own pids; the test named as what
/// it is from inside.
#[test]
fn diagnose_inside_a_pid_namespace_sees_what_diagnose_on_the_host_sees() {
    require_privileged!();
    let _s = serial();
    let ns = in_pidns(
        "\"$LOADER\" --storm-hz 1000 --wait 3 --delay-ms 3000 >/dev/null 2>&1 &
         \"$SG\" diagnose --json --for 60s $!; echo \"exit $?\" >&2; wait",
        &[],
    );
    let loader = descendant(ns.pid(), "rust-loader");
    let ids = nspids(loader);
    assert_eq!(ids.len(), 2, "{ids:?}");
    let inner = ids[1];
    let host = spawn_guarded(
        Command::new(spinguard_bin())
            .args(["diagnose", "--json", "--for", "60s"])
            .arg(loader.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    // Once it spins (the storm thread is up), 20 kills from out here.
    wait_threads(loader, 3);
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..20 {
        // SAFETY: a signal the loader handles, to our own child's child.
        unsafe { libc::kill(loader, libc::SIGPROF) };
        std::thread::sleep(Duration::from_millis(20));
    }
    let inside = wait_timeout(ns, T, "diagnose inside");
    let outside = wait_timeout(host, T, "diagnose on the host");
    assert!(
        String::from_utf8_lossy(&inside.stderr).contains("exit 4"),
        "livelock exits 4 inside: {}",
        describe(&inside)
    );
    assert_eq!(outside.status.code(), Some(4), "{}", describe(&outside));
    let (i, o) = (json(&inside), json(&outside));
    // Inside, the loader lives in spinguard's own namespace: no nspid.
    assert_eq!(i["nspid"], Value::Null, "{i:#}");
    for (v, pid) in [(&i, inner), (&o, loader as i64)] {
        assert_eq!(v["verdict"], "livelock", "{v:#}");
        assert_eq!(v["pid"], pid, "{v:#}");
        assert_eq!(v["exited"], "ended while watched", "{v:#}");
        assert_eq!(v["advice"]["now"], format!("spinguard attach {pid}"));
        // The storm: tgkill from the process itself, one thread.
        let tk = senders(v, "SIGPROF", "tkill");
        assert_eq!(tk.len(), 1, "{v:#}");
        assert_eq!(tk[0]["pid"], pid, "{v:#}");
        assert_eq!(tk[0]["threads"].as_array().map(Vec::len), Some(1), "{v:#}");
    }
    let count = |v: &Value| {
        let load = &v["bpf"]["BPF_PROG_LOAD"];
        let prof = &v["signals"]["SIGPROF"];
        [
            n(&load["calls"]),
            n(&load["errors"]["EAGAIN"]),
            n(&load["ok"]),
            n(&prof["delivered"]),
            n(&prof["sent"]),
            n(&prof["during_bpf"]),
        ]
    };
    let (ci, co) = (count(&i), count(&o));
    let summary = format!(
        "[calls, EAGAIN, ok, SIGPROF delivered, sent, during]: inside {ci:?}, on the host {co:?}"
    );
    eprintln!("{summary}");
    assert!(ci[1] > 500, "{summary}");
    assert_eq!(ci[2], 0, "{summary}");
    // The same events on the same tracepoints, seen by two probes that were
    // both attached before the loader started and after it ended.
    for k in 0..5 {
        assert!(ci[k].abs_diff(co[k]) <= 2, "{summary}");
    }
    // "During" is each probe's own judgement against its own record of the
    // call in flight, which its program writes at the call's entry: the
    // storm thread, on the other CPU, can queue a signal between the two
    // probes' entry programs (or exit ones). A few in thousands.
    assert!(ci[5].abs_diff(co[5]) <= 2 + co[5] / 200, "{summary}");
    // The test's kills: from inside, a process outside this PID namespace,
    // never a host pid; from the host, this test's pid.
    let ki = senders(&i, "SIGPROF", "kill");
    assert_eq!(ki.len(), 1, "{i:#}");
    assert_eq!(ki[0]["outside_pid_namespace"], true, "{i:#}");
    assert!(ki[0].get("pid").is_none(), "{i:#}");
    assert_eq!(
        ki[0]["text"], "kill from a process outside this PID namespace",
        "{i:#}"
    );
    let ko = senders(&o, "SIGPROF", "kill");
    assert_eq!(ko.len(), 1, "{o:#}");
    assert_eq!(ko[0]["pid"], std::process::id(), "{o:#}");
    assert!(ko[0].get("outside_pid_namespace").is_none(), "{o:#}");
    assert_eq!((n(&ki[0]["count"]), n(&ko[0]["count"])), (20, 20));
}

/// A healthy loader inside the namespace (it storms itself with a signal it
/// ignores; no load fails): healthy, its signals counted as sent and
/// ignored, by its own pid there.
#[test]
fn diagnose_inside_a_pid_namespace_calls_a_healthy_loader_healthy() {
    require_privileged!();
    let _s = serial();
    let ns = in_pidns(
        "\"$LOADER\" --storm-hz 1000 --storm-signal SIGUSR1 --storm-ignored --for 4 --wait 10 >/dev/null 2>&1 &
         sleep 0.3; \"$SG\" diagnose --json --for 2s $!; echo \"exit $?\" >&2; wait",
        &[],
    );
    let out = wait_timeout(ns, T, "diagnose inside");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("exit 0"),
        "{}",
        describe(&out)
    );
    let v = json(&out);
    assert_eq!(v["verdict"], "healthy", "{v:#}");
    assert_eq!(v["pid"], 2, "the loader is pid 2 there (sh is 1): {v:#}");
    let load = &v["bpf"]["BPF_PROG_LOAD"];
    assert!(n(&load["calls"]) >= 1, "{v:#}");
    assert_eq!(load["calls"], load["ok"], "{v:#}");
    let usr1 = &v["signals"]["SIGUSR1"];
    assert!(n(&usr1["sent"]) > 500, "the storm runs: {v:#}");
    assert_eq!(usr1["ignored"], usr1["sent"], "{v:#}");
    assert_eq!(n(&usr1["delivered"]), 0, "{v:#}");
    assert_eq!(senders(&v, "SIGUSR1", "tkill")[0]["pid"], 2, "{v:#}");
}

/// A 32-bit loader inside the namespace: its calls (the compat syscall
/// table, counted on raw_syscalls) are named by its pid there too.
#[test]
fn diagnose_inside_a_pid_namespace_counts_a_32_bit_loader() {
    require_privileged!();
    let _s = serial();
    let ns = in_pidns(
        "\"$LOADER32\" --storm-hz 1000 --wait 10 >/dev/null 2>&1 &
         sleep 0.3; \"$SG\" diagnose --json --for 1s $!; echo \"exit $?\" >&2; kill $!",
        &[("LOADER32", i386_loader().to_str().unwrap())],
    );
    let out = wait_timeout(ns, T, "diagnose inside");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("exit 4"),
        "{}",
        describe(&out)
    );
    let v = json(&out);
    assert_eq!(v["verdict"], "livelock", "{v:#}");
    assert_eq!(v["pid"], 2, "{v:#}");
    assert!(
        n(&v["bpf"]["BPF_PROG_LOAD"]["errors"]["EAGAIN"]) > 50,
        "{v:#}"
    );
    assert!(n(&v["signals"]["SIGPROF"]["during_bpf"]) > 50, "{v:#}");
}

/// spinguard in one namespace, the loader in another nested inside it
/// (`unshare` again, as a container started inside a pod would be): the
/// probe names it by its ids in its own namespace; the report gives our
/// pid for it, its pid there, and our pids for its threads.
#[test]
fn diagnose_inside_a_pid_namespace_sees_a_loader_in_a_nested_one() {
    require_privileged!();
    let _s = serial();
    let ns = in_pidns(
        "unshare --pid --fork --kill-child \"$LOADER\" --storm-hz 1000 --wait 10 >/dev/null 2>&1 &
         while ! L=$(pidof rust-loader); do sleep 0.05; done; sleep 0.5
         \"$SG\" diagnose --json --for 1s $L; echo \"exit $? pid $L\" >&2; kill %1",
        &[],
    );
    let out = wait_timeout(ns, T, "diagnose inside");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let mid: i64 = err
        .split("pid ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("{}", describe(&out)));
    assert!(err.contains("exit 4"), "{}", describe(&out));
    let v = json(&out);
    assert_eq!(v["verdict"], "livelock", "{v:#}");
    assert_eq!(v["pid"], mid, "{v:#}");
    assert_eq!(v["nspid"], 1, "pid 1 of its own namespace: {v:#}");
    assert!(
        n(&v["bpf"]["BPF_PROG_LOAD"]["errors"]["EAGAIN"]) > 100,
        "{v:#}"
    );
    let tk = senders(&v, "SIGPROF", "tkill");
    assert_eq!(tk[0]["pid"], mid, "{v:#}");
    // Its storm thread, as our namespace numbers it: just after it.
    let t = tk[0]["threads"][0].as_i64().unwrap();
    assert!(t > mid && t < mid + 10, "{v:#}");
}

/// Where the kernel cannot name processes by their pid in a namespace
/// (before Linux 5.7; `SPINGUARD_PROBE_NO_NS_PIDS=1` pretends so), diagnose
/// inside one says why and what to do instead, in one line, exit 1; never
/// `idle`. On the host the variable changes nothing: the host's pids need
/// no helper.
#[test]
fn diagnose_inside_a_pid_namespace_refuses_where_the_kernel_cannot_name_pids() {
    require_privileged!();
    let _s = serial();
    let ns = in_pidns(
        "\"$LOADER\" --storm-hz 1000 --wait 10 >/dev/null 2>&1 &
         sleep 0.3; \"$SG\" diagnose --for 1s $!; echo \"exit $?\" >&2; kill $!",
        &[("SPINGUARD_PROBE_NO_NS_PIDS", "1")],
    );
    let out = wait_timeout(ns, T, "diagnose inside");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.stdout.is_empty(),
        "no verdict at all: {}",
        describe(&out)
    );
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "one line, then our exit: {err}");
    assert!(lines[1].contains("exit 1"), "{err}");
    for want in [
        "bpf_get_ns_current_pid_tgid",
        "Linux 5.7",
        "kubectl debug node/",
    ] {
        assert!(lines[0].contains(want), "{want:?} in: {err}");
    }

    let loader = spawn_guarded(
        Command::new(example_bin("rust-loader"))
            .args(["--storm-hz", "1000", "--wait", "10"])
            .stdout(Stdio::null()),
    );
    std::thread::sleep(Duration::from_millis(300));
    let out = run_timeout(
        Command::new(spinguard_bin())
            .args(["diagnose", "--for", "1s"])
            .arg(loader.pid().to_string())
            .env("SPINGUARD_PROBE_NO_NS_PIDS", "1"),
        T,
    );
    assert_eq!(out.status.code(), Some(4), "{}", describe(&out));
}
