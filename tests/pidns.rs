//! `spinguard diagnose` and `watch` run inside a PID namespace of their own,
//! as in a container or `kubectl debug --target`: `unshare --pid --fork
//! --mount-proc`, so spinguard sees that namespace's /proc and pids, and its
//! eBPF probe must name processes as that namespace does. The probe used to
//! key them by their pids on the host and said `idle` of a spinning loader
//! there. Everything here is started by the test: loaders inside the
//! namespace, spinguard beside them, and the same spinguard on the host
//! watching the same loader at the same time as the reference. Spinners
//! verify for ~360 ms (`--iters 300000`), so a storm starved on a busy
//! machine cannot let one load by itself.

mod support;

use serde_json::Value;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use support::*;

const T: Duration = Duration::from_secs(120);

/// `sh -c SCRIPT` running as pid 1 of a new PID namespace with its own
/// /proc, with `$SG` (spinguard), `$LOADER` (the Rust loader), `$LOG` (a
/// file for the loaders' output, shown when a test fails) and `env` set.
/// Killing the group ends everything in it (`--kill-child` for the rest).
struct Ns {
    guard: GroupGuard,
    scratch: Scratch,
}

/// What the script printed, and what its loaders did.
struct NsOut {
    out: Output,
    loaders: String,
}

impl NsOut {
    fn why(&self) -> String {
        format!(
            "{}
the loaders: {}",
            describe(&self.out),
            self.loaders.trim()
        )
    }
}

fn in_pidns(script: &str, env: &[(&str, &str)]) -> Ns {
    let scratch = Scratch::new("pidns");
    let mut cmd = Command::new("unshare");
    cmd.args(["--pid", "--fork", "--mount-proc", "--kill-child"])
        .args(["sh", "-c", script])
        .env("SG", spinguard_bin())
        .env("LOADER", example_bin("rust-loader"))
        .env("LOG", scratch.path("loaders"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    Ns {
        guard: spawn_guarded(&mut cmd),
        scratch,
    }
}

impl Ns {
    fn pid(&self) -> i32 {
        self.guard.pid()
    }

    fn wait(self, what: &str) -> NsOut {
        let out = wait_timeout(self.guard, T, what);
        let loaders = std::fs::read_to_string(self.scratch.path("loaders")).unwrap_or_default();
        NsOut { out, loaders }
    }
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
        "\"$LOADER\" --storm-hz 1000 --iters 300000 --wait 3 --delay-ms 3000 >>\"$LOG\" 2>&1 &
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
    let ran = ns.wait("diagnose inside");
    let inside = &ran.out;
    let outside = wait_timeout(host, T, "diagnose on the host");
    assert!(
        String::from_utf8_lossy(&inside.stderr).contains("exit 4"),
        "livelock exits 4 inside: {}",
        ran.why()
    );
    assert_eq!(outside.status.code(), Some(4), "{}", describe(&outside));
    let (i, o) = (json(inside), json(&outside));
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
        "\"$LOADER\" --storm-hz 1000 --storm-signal SIGUSR1 --storm-ignored --for 4 --wait 10 >>\"$LOG\" 2>&1 &
         sleep 0.3; \"$SG\" diagnose --json --for 2s $!; echo \"exit $?\" >&2; wait",
        &[],
    );
    let ran = ns.wait("diagnose inside");
    let out = &ran.out;
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("exit 0"),
        "{}",
        ran.why()
    );
    let v = json(out);
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
        "\"$LOADER32\" --storm-hz 1000 --iters 300000 --wait 10 >>\"$LOG\" 2>&1 &
         sleep 0.3; \"$SG\" diagnose --json --for 1s $!; echo \"exit $?\" >&2; kill $!",
        &[("LOADER32", i386_loader().to_str().unwrap())],
    );
    let ran = ns.wait("diagnose inside");
    let out = &ran.out;
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("exit 4"),
        "{}",
        ran.why()
    );
    let v = json(out);
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
        "unshare --pid --fork --kill-child \"$LOADER\" --storm-hz 1000 --iters 300000 --wait 10 >>\"$LOG\" 2>&1 &
         while ! L=$(pidof rust-loader); do sleep 0.05; done; sleep 0.5
         \"$SG\" diagnose --json --for 1s $L; echo \"exit $? pid $L\" >&2; kill %1",
        &[],
    );
    let ran = ns.wait("diagnose inside");
    let out = &ran.out;
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let mid: i64 = err
        .split("pid ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("{}", ran.why()));
    assert!(err.contains("exit 4"), "{}", ran.why());
    let v = json(out);
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
/// `idle`. watch the same. On the host the variable changes nothing: the
/// host's pids need no helper.
#[test]
fn diagnose_and_watch_inside_a_pid_namespace_refuse_where_the_kernel_cannot_name_pids() {
    require_privileged!();
    let _s = serial();
    let ns = in_pidns(
        "\"$LOADER\" --storm-hz 1000 --iters 300000 --wait 10 >>\"$LOG\" 2>&1 &
         sleep 0.3; \"$SG\" diagnose --for 1s $!; echo \"exit $?\" >&2; kill $!",
        &[("SPINGUARD_PROBE_NO_NS_PIDS", "1")],
    );
    let ran = ns.wait("diagnose inside");
    let out = &ran.out;
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.stdout.is_empty(), "no verdict at all: {}", ran.why());
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
            .args(["--storm-hz", "1000", "--iters", "300000", "--wait", "10"])
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

    // watch inside the namespace: the same line, exit 1, nothing listed.
    let ns = in_pidns(
        "\"$SG\" watch --for 2s; echo \"exit $?\" >&2",
        &[("SPINGUARD_PROBE_NO_NS_PIDS", "1")],
    );
    let ran = ns.wait("watch inside");
    let out = &ran.out;
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.stdout.is_empty(), "{}", ran.why());
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "one line, then our exit: {err}");
    assert!(lines[1].contains("exit 1"), "{err}");
    assert!(lines[0].contains("bpf_get_ns_current_pid_tgid"), "{err}");
}

/// `NAME PID` lines a namespace's script wrote to stderr: the pids there.
fn said(err: &str, name: &str) -> i64 {
    err.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} "))?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no '{name} PID' in: {err}"))
}

/// Inside a namespace: a spinner, a healthy loader storming itself with an
/// ignored signal, an idle bystander, and a spinner in a namespace nested
/// inside it; on the host, another spinner. `watch --json` there names its
/// spinner livelock by its pid there within 2 intervals, the healthy one
/// never livelock, the nested one unknown with why (never left out), and
/// lists nothing else: no process of the host.
#[test]
fn watch_inside_a_pid_namespace_names_its_spinner_by_its_pid_there_and_nothing_outside() {
    require_privileged!();
    let _s = serial();
    let host_spinner = spawn_guarded(
        Command::new(example_bin("rust-loader"))
            .args(["--storm-hz", "1000", "--iters", "300000", "--wait", "20"])
            .stdout(Stdio::null()),
    );
    let ns = in_pidns(
        "\"$LOADER\" --storm-hz 1000 --iters 300000 --wait 20 >>\"$LOG\" 2>&1 & echo \"spinner $!\" >&2
         \"$LOADER\" --storm-hz 1000 --storm-signal SIGUSR1 --storm-ignored --for 8 --wait 20 >>\"$LOG\" 2>&1 &
         echo \"healthy $!\" >&2
         unshare --pid --fork --kill-child \"$LOADER\" --storm-hz 1000 --iters 300000 --wait 20 >>\"$LOG\" 2>&1 & U=$!
         sleep 30 & echo \"idle $!\" >&2
         while [ -z \"$(cat /proc/$U/task/$U/children)\" ]; do sleep 0.01; done
         echo \"nested $(cat /proc/$U/task/$U/children)\" >&2
         \"$SG\" watch --json --for 4s; echo \"exit $?\" >&2; kill $(jobs -p)",
        &[],
    );
    let ran = ns.wait("watch inside");
    let out = &ran.out;
    drop(host_spinner);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(err.contains("exit 0"), "{}", ran.why());
    let (spinner, healthy, idle, nested) = (
        said(&err, "spinner"),
        said(&err, "healthy"),
        said(&err, "idle"),
        said(&err, "nested"),
    );
    let docs: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(!docs.is_empty(), "{}", ran.why());
    let ours = [spinner, healthy, nested];
    for d in &docs {
        let pid = d["pid"].as_i64().unwrap();
        assert!(
            ours.contains(&pid),
            "only the namespace's loaders (not the idle one {idle}, nothing of the host): {d:#}"
        );
        assert_eq!(d["name"], "rust-loader", "{d:#}");
    }
    // The spinner: livelock from the first or second interval on, its
    // storm's sender itself by its pid there.
    let of = |pid: i64| -> Vec<&Value> { docs.iter().filter(|d| d["pid"] == pid).collect() };
    let spin = of(spinner);
    assert!(
        spin.iter().take(2).any(|d| d["verdict"] == "livelock"),
        "{spin:#?}"
    );
    let d = spin.iter().find(|d| d["verdict"] == "livelock").unwrap();
    assert_eq!(d["nspid"], Value::Null, "{d:#}");
    assert_eq!(senders(d, "SIGPROF", "tkill")[0]["pid"], spinner, "{d:#}");
    assert!(
        of(healthy).iter().all(|d| d["verdict"] == "healthy"),
        "{docs:#?}"
    );
    // The nested spinner: unknown, its pid in its own namespace, and why.
    let nest = of(nested);
    assert!(!nest.is_empty(), "the nested spinner is named: {docs:#?}");
    for d in nest {
        assert_eq!(d["verdict"], "unknown", "{d:#}");
        assert_eq!(d["nspid"], 1, "{d:#}");
        let why = d["explanation"].as_str().unwrap();
        assert!(
            why.contains("nested") && why.contains(&format!("spinguard diagnose {nested}")),
            "{why}"
        );
    }
}

/// `watch --rescue` inside a namespace rescues its spinner, pid 2 there
/// (which attach once took for kthreadd, as it is on the host).
#[test]
fn watch_rescue_inside_a_pid_namespace_rescues_pid_2() {
    require_privileged!();
    let _s = serial();
    let ns = in_pidns(
        "\"$LOADER\" --storm-hz 1000 --iters 300000 --wait 20 &
         \"$SG\" watch --rescue --linger 1s --for 6s; echo \"exit $?\" >&2; wait",
        &[],
    );
    let ran = ns.wait("watch --rescue inside");
    let out = &ran.out;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("exit 0"),
        "{}",
        ran.why()
    );
    assert!(
        text.contains("pid 2 (rust-loader): rescued: loaded"),
        "{}",
        ran.why()
    );
    let l = LoaderLine::parse(&text);
    assert_eq!(l.result, "loaded", "{}", ran.why());
}

/// `SPINGUARD_PROBE_NO_NS_PIDS` takes 1 (or nothing): anything else is a
/// usage error, one line, exit 2, before anything is watched.
#[test]
fn a_bad_probe_no_ns_pids_value_is_a_usage_error() {
    for args in [&["diagnose", "1"][..], &["watch", "--for", "1s"][..]] {
        let out = run_timeout(
            Command::new(spinguard_bin())
                .args(args)
                .env("SPINGUARD_PROBE_NO_NS_PIDS", "yes"),
            T,
        );
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", describe(&out));
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.contains("SPINGUARD_PROBE_NO_NS_PIDS: 'yes' is not 1"),
            "{err}"
        );
        assert!(out.stdout.is_empty(), "{args:?}: {}", describe(&out));
    }
}

/// `unshare --pid --fork` without `--mount-proc`: spinguard is pid 1 of a
/// new namespace, but /proc is still the host's, so the pids it lists are
/// not spinguard's. diagnose and watch say so, one line, exit 1.
#[test]
fn a_proc_of_another_pid_namespace_is_refused() {
    require_privileged!();
    let _s = serial();
    for args in [
        &["diagnose", "--for", "1s", "1"][..],
        &["watch", "--for", "1s"][..],
    ] {
        let out = run_timeout(
            Command::new("unshare")
                .args(["--pid", "--fork", "--kill-child"])
                .arg(spinguard_bin())
                .args(args),
            T,
        );
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", describe(&out));
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.contains("/proc here is not of spinguard's PID namespace (spinguard is pid 1")
                && err.contains("--mount-proc"),
            "{err}"
        );
        assert!(out.stdout.is_empty(), "{args:?}: {}", describe(&out));
    }
}
