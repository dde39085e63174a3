//! Events end to end on the real kernel: the shim (SPINGUARD_EVENTS) and the
//! supervisor (`run --events`, `attach --events`) send while real loaders load
//! under a 1 kHz SIGPROF storm, and a real `spinguard listen --json` receives.
//! Then what must never hurt the program: no listener, a stopped one, the
//! socket removed or replaced by a regular file mid-run. And `--metrics`
//! counting real loads, also on a full file system.

mod support;

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{
    c_loader, describe, example_bin, go_loader, require_privileged, run_timeout, serial, shim_path,
    spinguard_bin, LoaderLine, Scratch,
};

const TIMEOUT: Duration = Duration::from_secs(60);
/// How long to wait for a datagram that should already be on its way.
const WAIT: Duration = Duration::from_secs(10);
const STORM: [&str; 2] = ["--storm-hz", "1000"];

/// `spinguard listen --json PATH`, its lines collected as they come; killed
/// (with its group) when dropped.
struct Listener {
    guard: support::GroupGuard,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Listener {
    fn start(path: &Path, extra: &[&str]) -> Listener {
        let mut cmd = Command::new(spinguard_bin());
        cmd.args(["listen", "--json"])
            .args(extra)
            .arg(path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut guard = support::spawn_guarded(&mut cmd);
        let stdout = support::collect_lines(guard.child.stdout.take().unwrap());
        let stderr = support::collect_lines(guard.child.stderr.take().unwrap());
        let l = Listener {
            guard,
            stdout,
            stderr,
        };
        l.wait_until("the socket to appear", |_| {
            std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
        });
        l
    }

    fn pid(&self) -> i32 {
        self.guard.pid()
    }

    fn err(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    /// Every JSON line so far (events and the listener's own notes).
    fn events(&self) -> Vec<Value> {
        self.stdout
            .lock()
            .unwrap()
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    fn wait_until(&self, what: &str, done: impl Fn(&Listener) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !done(self) {
            assert!(
                Instant::now() < deadline,
                "gave up waiting for {what} after {WAIT:?}\nstdout: {:#?}\nstderr: {:#?}",
                self.stdout.lock().unwrap(),
                self.err()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for events from `n` processes as `source`; returns their pids.
    fn pids(&self, source: &str, n: usize) -> Vec<i64> {
        self.wait_until(&format!("events from {n} {source} pids"), |l| {
            pids_of(&l.events(), source).len() >= n
        });
        pids_of(&self.events(), source)
    }

    /// Waits for the summary of (`source`, `pid`) and returns that stream.
    fn stream_until_summary(&self, source: &str, pid: i64) -> Vec<Value> {
        self.wait_until(&format!("the summary of {source} pid {pid}"), |l| {
            stream(&l.events(), source, pid)
                .last()
                .is_some_and(|e| e["event"] == "summary")
        });
        stream(&self.events(), source, pid)
    }
}

/// The events of one (source, pid) stream, in arrival order.
fn stream(events: &[Value], source: &str, pid: i64) -> Vec<Value> {
    events
        .iter()
        .filter(|e| e["source"] == source && e["pid"] == pid)
        .cloned()
        .collect()
}

/// The pids that sent events as `source`.
fn pids_of(events: &[Value], source: &str) -> Vec<i64> {
    let mut p: Vec<i64> = events
        .iter()
        .filter(|e| e["source"] == source)
        .filter_map(|e| e["pid"].as_i64())
        .collect();
    p.sort_unstable();
    p.dedup();
    p
}

fn of<'a>(s: &'a [Value], event: &str) -> Vec<&'a Value> {
    s.iter().filter(|e| e["event"] == event).collect()
}

fn u(e: &Value, k: &str) -> u64 {
    e[k].as_u64()
        .unwrap_or_else(|| panic!("no integer {k:?} in {e}"))
}

fn seqs(s: &[Value]) -> Vec<u64> {
    s.iter().map(|e| u(e, "seq")).collect()
}

/// seq is 1, 2, 3… with no gap, and the summary says so too.
fn assert_gap_free(s: &[Value]) {
    let seq = seqs(s);
    let want: Vec<u64> = (1..=s.len() as u64).collect();
    assert_eq!(seq, want, "seq not gap-free: {s:#?}");
    let sum = s.last().unwrap();
    assert_eq!(sum["event"], "summary", "{s:#?}");
    assert_eq!(u(sum, "events_sent"), s.len() as u64 - 1, "{sum}");
    assert_eq!(u(sum, "events_dropped"), 0, "{sum}");
    assert_eq!(u(sum, "send_failures"), 0, "{sum}");
}

/// A prog_load that loaded first time with SIGPROF held back.
fn assert_loaded_held_back(e: &Value) {
    assert_eq!(e["cmd"], "BPF_PROG_LOAD", "{e}");
    assert!(e["result"]["fd"].as_i64().is_some_and(|fd| fd >= 0), "{e}");
    assert!(
        u(e, "held_back") >= 1,
        "no signal held back under a 1 kHz storm: {e}"
    );
    assert!(
        e["held_back_signals"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s == "SIGPROF"),
        "{e}"
    );
    assert!(u(e, "duration_us") > 0, "{e}");
    assert!(
        u(e, "ts") > 1_600_000_000_000_000,
        "ts in microseconds: {e}"
    );
}

fn loader_line(out: &Output) -> LoaderLine {
    LoaderLine::parse(&String::from_utf8_lossy(&out.stdout))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The loader under the shim, events to `events` (None: unset).
fn preloaded(loader: &Path, args: &[&str], events: Option<&Path>) -> Output {
    let mut cmd = Command::new(loader);
    cmd.args(args).env("LD_PRELOAD", shim_path());
    if let Some(p) = events {
        cmd.env("SPINGUARD_EVENTS", p);
    }
    run_timeout(&mut cmd, TIMEOUT)
}

/// `spinguard run --mode MODE -v [--events PATH] -- program args`.
fn supervised(mode: &str, events: Option<&Path>, program: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(spinguard_bin());
    cmd.args(["run", "-v", "--mode", mode]);
    if let Some(p) = events {
        cmd.arg("--events").arg(p);
    }
    cmd.arg("--").arg(program).args(args);
    run_timeout(&mut cmd, TIMEOUT)
}

fn assert_loaded_first_time(what: &str, out: &Output, threads: u64) -> u64 {
    let line = loader_line(out);
    assert_eq!(line.result, "loaded", "{what}: {}", describe(out));
    assert_eq!(out.status.code(), Some(0), "{what}: {}", describe(out));
    // The Go loader cannot see cilium's retries (`attempts=?`): there the
    // supervisor's one prog_load per thread says it.
    if line.str("attempts") != Some("?") {
        assert_eq!(
            line.get("attempts"),
            Some(threads),
            "{what}: a load needed a retry: {}",
            describe(out)
        );
    }
    line.get("ms").expect("ms=")
}

// ---- the shim ------------------------------------------------------------------------------------

#[test]
fn shim_sends_a_prog_load_per_load_and_a_summary() {
    require_privileged!();
    let _s = serial();
    let dir = Scratch::new("events-shim-rust");
    let path = dir.path("s.sock");
    let l = Listener::start(&path, &[]);
    let loader = example_bin("rust-loader");
    let out = preloaded(
        &loader,
        &["--threads", "2", STORM[0], STORM[1]],
        Some(&path),
    );
    assert_loaded_first_time("rust loader, shim", &out, 2);
    let pids = l.pids("shim", 1);
    assert_eq!(pids.len(), 1, "one process, one stream: {:#?}", l.events());
    let s = l.stream_until_summary("shim", pids[0]);
    let events = l.events();
    let loads = of(&s, "prog_load");
    assert_eq!(loads.len(), 2, "one prog_load per loading thread: {s:#?}");
    assert_ne!(loads[0]["tid"], loads[1]["tid"], "{s:#?}");
    for e in &loads {
        assert_loaded_held_back(e);
        assert_eq!(u(e, "attempts"), 1, "{e}");
    }
    assert_gap_free(&s);
    // Every shim event names its program: the listener needs the name of a
    // loader that has exited before its datagrams are read.
    assert!(s.iter().all(|e| e["comm"] == "rust-loader"), "{s:#?}");
    let sum = s.last().unwrap();
    assert_eq!(u(sum, "guarded_calls"), 2, "{sum}");
    assert_eq!(sum["calls"]["BPF_PROG_LOAD"], 2, "{sum}");
    assert_eq!(u(sum, "retries"), 0, "{sum}");
    assert_eq!(
        u(sum, "held_back"),
        loads.iter().map(|e| u(e, "held_back")).sum::<u64>(),
        "{sum}"
    );
    assert!(pids_of(&events, "supervisor").is_empty());
    eprintln!("shim, rust loader: {}", loads[0]);
}

#[test]
fn shim_in_the_libbpf_loader_sends_its_loads() {
    require_privileged!();
    let _s = serial();
    let dir = Scratch::new("events-shim-c");
    let path = dir.path("s.sock");
    let l = Listener::start(&path, &[]);
    let out = preloaded(&c_loader(), &STORM, Some(&path));
    assert_loaded_first_time("C loader (libbpf), shim", &out, 1);
    let pids = l.pids("shim", 1);
    assert_eq!(pids.len(), 1, "{:#?}", l.events());
    // libbpf probes kernel features with tiny loads of its own first; the
    // program's load is the one that waited out the storm (~120 ms).
    l.wait_until("the program's own load", |l| {
        of(&stream(&l.events(), "shim", pids[0]), "prog_load")
            .iter()
            .any(|e| u(e, "duration_us") >= 50_000)
    });
    // The loader leaves with _exit(): no exit handler, so no summary.
    std::thread::sleep(Duration::from_millis(300));
    let s = stream(&l.events(), "shim", pids[0]);
    assert!(of(&s, "summary").is_empty(), "{s:#?}");
    let loads = of(&s, "prog_load");
    assert_eq!(loads.len(), s.len(), "{s:#?}");
    let main = loads.iter().max_by_key(|e| u(e, "duration_us")).unwrap();
    assert_loaded_held_back(main);
    assert_eq!(u(main, "attempts"), 1, "{main}");
    assert!(
        loads.iter().all(|e| e["result"]["fd"].as_i64().is_some()),
        "a call failed under the shim: {s:#?}"
    );
    let want: Vec<u64> = (1..=s.len() as u64).collect();
    assert_eq!(seqs(&s), want, "{s:#?}");
    eprintln!("shim, C loader: {} prog_load events; {main}", loads.len());
}

// ---- the supervisor ------------------------------------------------------------------------------

/// `run --events` on a 4-thread loader: attach, one prog_load per thread
/// (restarts between), child_exit, summary; gap-free.
fn supervisor_stream(loader: &Path, what: &str) {
    let dir = Scratch::new("events-run");
    let path = dir.path("s.sock");
    let l = Listener::start(&path, &[]);
    let out = supervised(
        "ptrace",
        Some(&path),
        loader,
        // Four Go loads at once take 1.6 s here without a storm: room for more.
        &["--threads", "4", STORM[0], STORM[1], "--wait", "30"],
    );
    assert_loaded_first_time(what, &out, 4);
    let pids = l.pids("supervisor", 1);
    assert_eq!(pids.len(), 1, "one traced process: {:#?}", l.events());
    let s = l.stream_until_summary("supervisor", pids[0]);
    let events = l.events();
    assert_eq!(s[0]["event"], "attach", "{s:#?}");
    assert_eq!(u(&s[0], "threads"), 1, "{s:#?}");
    assert!(!s[0]["comm"].as_str().unwrap().is_empty(), "{s:#?}");
    let loads = of(&s, "prog_load");
    assert_eq!(loads.len(), 4, "one prog_load per loading thread: {s:#?}");
    let mut tids: Vec<i64> = loads.iter().map(|e| e["tid"].as_i64().unwrap()).collect();
    tids.sort_unstable();
    tids.dedup();
    assert_eq!(tids.len(), 4, "{s:#?}");
    for e in &loads {
        assert_loaded_held_back(e);
        assert!(u(e, "attempts") >= 1, "{e}");
    }
    // Every run of the kernel beyond the first is a restart event.
    let restarts = of(&s, "restart").len() as u64;
    assert_eq!(
        restarts,
        loads.iter().map(|e| u(e, "attempts") - 1).sum::<u64>(),
        "{s:#?}"
    );
    let exit = &s[s.len() - 2];
    assert_eq!(exit["event"], "child_exit", "{s:#?}");
    assert_eq!(exit["code"], 0, "{exit}");
    assert_gap_free(&s);
    let sum = s.last().unwrap();
    assert_eq!(u(sum, "guarded_calls"), 4, "{sum}");
    assert_eq!(u(sum, "retries"), restarts, "{sum}");
    assert!(
        pids_of(&events, "shim").is_empty(),
        "nothing preloaded the shim here: {events:#?}"
    );
    assert!(
        stderr(&out).contains("BPF_PROG_LOAD verified in"),
        "the human lines go on: {}",
        describe(&out)
    );
    eprintln!(
        "{what}: {} events, {restarts} restarts; {}",
        s.len(),
        loads[0]
    );
}

#[test]
fn run_events_from_the_static_go_loader() {
    require_privileged!();
    let _s = serial();
    supervisor_stream(&go_loader(), "Go loader (cilium/ebpf 0.9.1), run --events");
}

#[test]
fn run_events_from_the_rust_loader() {
    require_privileged!();
    let _s = serial();
    supervisor_stream(&example_bin("rust-loader"), "Rust loader, run --events");
}

#[test]
fn run_in_preload_mode_passes_the_socket_to_the_shim() {
    require_privileged!();
    let _s = serial();
    let dir = Scratch::new("events-run-preload");
    let path = dir.path("s.sock");
    let l = Listener::start(&path, &[]);
    let out = supervised("preload", Some(&path), &example_bin("rust-loader"), &STORM);
    assert_loaded_first_time("rust loader, run --mode preload", &out, 1);
    let pids = l.pids("shim", 1);
    assert_eq!(pids.len(), 1, "{:#?}", l.events());
    let s = l.stream_until_summary("shim", pids[0]);
    assert_eq!(of(&s, "prog_load").len(), 1, "{s:#?}");
    assert_loaded_held_back(of(&s, "prog_load")[0]);
    assert_gap_free(&s);
}

#[test]
fn attach_sends_attach_loads_and_detach() {
    require_privileged!();
    let _s = serial();
    let dir = Scratch::new("events-attach");
    let path = dir.path("s.sock");
    let l = Listener::start(&path, &[]);
    // Loads again and again for 4 s; attach for 1.5 s of it.
    let mut cmd = Command::new(example_bin("rust-loader"));
    cmd.args(["--for", "4", "--threads", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let target = support::spawn_guarded(&mut cmd);
    let pid = target.pid();
    std::thread::sleep(Duration::from_millis(300));
    let mut a = Command::new(spinguard_bin());
    a.args(["attach", "-v", "--for", "1500ms", "--events"])
        .arg(&path)
        .arg(pid.to_string());
    let out = run_timeout(&mut a, TIMEOUT);
    assert!(out.status.success(), "{}", describe(&out));
    let s = l.stream_until_summary("supervisor", pid as i64);
    let names: Vec<&str> = s.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(names[0], "attach", "{s:#?}");
    assert!(u(&s[0], "threads") >= 3, "main + 2 loading threads: {s:#?}");
    assert_eq!(s[0]["comm"], "rust-loader", "{s:#?}");
    assert_eq!(names[names.len() - 2], "detach", "{s:#?}");
    assert_eq!(u(&s[s.len() - 2], "threads"), u(&s[0], "threads"), "{s:#?}");
    assert!(!names.contains(&"child_exit"), "{s:#?}");
    let loads = of(&s, "prog_load");
    assert!(!loads.is_empty(), "1.5 s of back-to-back loads: {s:#?}");
    for e in &loads {
        assert!(e["result"]["fd"].as_i64().is_some(), "{e}");
    }
    assert_gap_free(&s);
    assert_eq!(
        u(s.last().unwrap(), "guarded_calls"),
        loads.len() as u64,
        "{s:#?}"
    );
    let err = stderr(&out);
    assert!(
        err.contains("ms after the attach)"),
        "attach's own wording of a load: {err}"
    );
    let done = support::wait_timeout(target, TIMEOUT, "the loader");
    assert_eq!(loader_line(&done).result, "loaded", "{}", describe(&done));
    eprintln!("attach --events: {} events, {} loads", s.len(), loads.len());
}

#[test]
fn attach_to_a_spinning_loader_ends_with_its_exit() {
    require_privileged!();
    let _s = serial();
    let dir = Scratch::new("events-attach-exit");
    let path = dir.path("s.sock");
    let l = Listener::start(&path, &[]);
    let mut cmd = Command::new(example_bin("rust-loader"));
    cmd.args([STORM[0], STORM[1], "--wait", "30"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let target = support::spawn_guarded(&mut cmd);
    let pid = target.pid();
    std::thread::sleep(Duration::from_millis(500));
    let mut a = Command::new(spinguard_bin());
    a.args(["attach", "--for", "60s", "--events"])
        .arg(&path)
        .arg(pid.to_string());
    let out = run_timeout(&mut a, TIMEOUT);
    assert!(out.status.success(), "{}", describe(&out));
    let done = support::wait_timeout(target, TIMEOUT, "the loader");
    assert_eq!(loader_line(&done).result, "loaded", "{}", describe(&done));
    let s = l.stream_until_summary("supervisor", pid as i64);
    let names: Vec<&str> = s.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(names[0], "attach", "{s:#?}");
    assert_eq!(names[names.len() - 2], "child_exit", "{s:#?}");
    assert_eq!(s[s.len() - 2]["code"], 0, "{s:#?}");
    assert!(!names.contains(&"detach"), "{s:#?}");
    let loads = of(&s, "prog_load");
    assert_eq!(loads.len(), 1, "{s:#?}");
    assert_loaded_held_back(loads[0]);
    assert_gap_free(&s);
}

#[test]
fn diagnose_sends_what_it_counted_and_attaches_to_nothing() {
    require_privileged!();
    let _s = serial();
    let dir = Scratch::new("events-diagnose");
    let path = dir.path("s.sock");
    let l = Listener::start(&path, &[]);
    let mut cmd = Command::new(example_bin("rust-loader"));
    cmd.args(["--for", "4"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let target = support::spawn_guarded(&mut cmd);
    let pid = target.pid();
    std::thread::sleep(Duration::from_millis(300));
    let mut d = Command::new(spinguard_bin());
    d.args(["diagnose", "--json", "--for", "1500ms", "--events"])
        .arg(&path)
        .arg(pid.to_string());
    let out = run_timeout(&mut d, TIMEOUT);
    let report: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", describe(&out)));
    assert_eq!(report["verdict"], "healthy", "{report}");
    let calls = report["bpf"]["BPF_PROG_LOAD"]["calls"]
        .as_u64()
        .unwrap_or(0);
    assert!(calls >= 1, "1.5 s of back-to-back loads: {report}");
    let s = l.stream_until_summary("probe", pid as i64);
    let names: Vec<&str> = s.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(names, ["summary"], "healthy: no livelock event: {s:#?}");
    assert_gap_free(&s);
    assert_eq!(u(&s[0], "guarded_calls"), calls, "{s:#?}");
    assert_eq!(u(&s[0], "retries"), 0, "{s:#?}");
    assert_eq!(
        u(&s[0], "held_back"),
        0,
        "diagnose holds nothing back: {s:#?}"
    );
    drop(target);
}

#[test]
fn diagnose_sends_livelock_for_a_spinning_loader() {
    require_privileged!();
    let _s = serial();
    let dir = Scratch::new("events-diagnose-spin");
    let path = dir.path("s.sock");
    let l = Listener::start(&path, &[]);
    let mut cmd = Command::new(example_bin("rust-loader"));
    cmd.args(["--storm-hz", "1000", "--wait", "10"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let target = support::spawn_guarded(&mut cmd);
    let pid = target.pid();
    std::thread::sleep(Duration::from_millis(300));
    let mut d = Command::new(spinguard_bin());
    d.args(["diagnose", "--json", "--for", "1s", "--events"])
        .arg(&path)
        .arg(pid.to_string());
    let out = run_timeout(&mut d, TIMEOUT);
    assert_eq!(out.status.code(), Some(4), "{}", describe(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let s = l.stream_until_summary("probe", pid as i64);
    let names: Vec<&str> = s.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(names, ["livelock", "summary"], "{s:#?}");
    let ll = &s[0];
    assert_eq!(ll["comm"], "rust-loader", "{ll}");
    assert_eq!(ll["cmd"], "BPF_PROG_LOAD", "{ll}");
    assert_eq!(ll["errno"], "EAGAIN", "{ll}");
    assert_eq!(
        u(ll, "failures"),
        report["bpf"]["BPF_PROG_LOAD"]["errors"]["EAGAIN"]
            .as_u64()
            .unwrap(),
        "the event and the report count the same window: {ll} {report}"
    );
    assert_eq!(ll["signals"], serde_json::json!(["SIGPROF"]), "{ll}");
    assert!(ll.get("nspid").is_none(), "a host process: {ll}");
    assert_gap_free(&s);
    drop(target);
}

// ---- never harm the program --------------------------------------------------------------------

/// The loader's `ms=` with and without events, for the report (no timed
/// assertion: a shared 2-core machine is too noisy for one).
fn timings(label: &str, without: u64, with: u64) {
    eprintln!("{label}: load took {without} ms without events, {with} ms with");
}

#[test]
fn no_listener_costs_the_program_nothing() {
    require_privileged!();
    let _s = serial();
    let dir = Scratch::new("events-nobody");
    let path = dir.path("nobody-here.sock");
    let loader = example_bin("rust-loader");

    let base = assert_loaded_first_time("shim", &preloaded(&loader, &STORM, None), 1);
    let out = preloaded(&loader, &STORM, Some(&path));
    let with = assert_loaded_first_time("shim, no listener", &out, 1);
    timings("shim, no listener", base, with);

    let base = assert_loaded_first_time("run", &supervised("ptrace", None, &loader, &STORM), 1);
    let out = supervised("ptrace", Some(&path), &loader, &STORM);
    let with = assert_loaded_first_time("run --events, no listener", &out, 1);
    timings("run, no listener", base, with);
    // attach, prog_load, child_exit, summary (and any restart): none delivered.
    let err = stderr(&out);
    assert!(
        err.contains(": 0 sent, ") && err.contains(" not sent (last error ENOENT)"),
        "the failed sends are counted: {err}"
    );
}

#[test]
fn a_stopped_listener_with_a_full_queue_costs_the_program_nothing() {
    require_privileged!();
    let _s = serial();
    let dir = Scratch::new("events-stopped");
    let path = dir.path("s.sock");
    let l = Listener::start(&path, &[]);
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(l.pid(), libc::SIGSTOP) };
    // Fill its receive queue (net.unix.max_dgram_qlen) so that every send
    // from now on meets a full queue.
    let filler = std::os::unix::net::UnixDatagram::unbound().unwrap();
    filler.set_nonblocking(true).unwrap();
    let mut queued = 0;
    while filler.send_to(b"{}", &path).is_ok() {
        queued += 1;
        assert!(queued < 100_000, "the queue never filled");
    }
    let loader = example_bin("rust-loader");

    let base = assert_loaded_first_time("shim", &preloaded(&loader, &STORM, None), 1);
    let out = preloaded(&loader, &STORM, Some(&path));
    let with = assert_loaded_first_time("shim, stopped listener", &out, 1);
    timings("shim, stopped listener", base, with);

    let base = assert_loaded_first_time("run", &supervised("ptrace", None, &loader, &STORM), 1);
    let out = supervised("ptrace", Some(&path), &loader, &STORM);
    let with = assert_loaded_first_time("run --events, stopped listener", &out, 1);
    timings("run, stopped listener", base, with);
    let err = stderr(&out);
    assert!(
        err.contains(": 0 sent, ") && err.contains(" not sent (last error EAGAIN)"),
        "the failed sends are counted: {err}"
    );
    // SAFETY: as above.
    unsafe { libc::kill(l.pid(), libc::SIGCONT) };
    eprintln!("the stopped listener's queue held {queued} datagrams");
}

#[test]
fn the_socket_removed_or_replaced_mid_run_never_harms_the_program() {
    require_privileged!();
    let _s = serial();
    let dir = Scratch::new("events-replaced");
    let path = dir.path("s.sock");
    let first = Listener::start(&path, &[]);
    // run traces `env`, which execs the loader with the shim preloaded: both
    // the supervisor and the shim (SPINGUARD_EVENTS passed on by run) send.
    let loader = example_bin("rust-loader");
    let mut cmd = Command::new(spinguard_bin());
    cmd.args(["run", "-v", "--mode", "ptrace", "--events"])
        .arg(&path)
        .arg("--")
        .arg("env")
        .arg(format!("LD_PRELOAD={}", shim_path().display()))
        .arg(&loader)
        .args(["--for", "8", "--threads", "2", STORM[0], STORM[1]]);
    let run = std::thread::spawn(move || run_timeout(&mut cmd, TIMEOUT));
    first.wait_until("a prog_load from each source", |l| {
        let e = l.events();
        let loads = of(&e, "prog_load");
        ["shim", "supervisor"]
            .iter()
            .all(|src| loads.iter().any(|e| e["source"] == *src))
    });
    // Two loading threads, each load 0.1 to 1 s: several fall in each window.
    std::fs::remove_file(&path).unwrap(); // ENOENT from now on
    std::thread::sleep(Duration::from_millis(1500));
    std::fs::write(&path, b"not a socket").unwrap(); // ECONNREFUSED
    std::thread::sleep(Duration::from_millis(1500));
    std::fs::remove_file(&path).unwrap();
    let second = Listener::start(&path, &[]);
    let out = run.join().unwrap();

    let line = loader_line(&out);
    assert_eq!(line.result, "loaded", "{}", describe(&out));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(line.str("eagain"), Some("0"), "{}", describe(&out));
    let loads: u64 = line.get("loads").unwrap();

    for source in ["shim", "supervisor"] {
        // Both streams are of the one process (env exec'd the loader).
        let pid = second.pids(source, 1)[0];
        let s = second.stream_until_summary(source, pid);
        let sum = s.last().unwrap();
        assert!(u(sum, "send_failures") >= 1, "{source}: {sum}");
        assert!(
            u(sum, "events_dropped") >= u(sum, "send_failures"),
            "{source}: {sum}"
        );
        // Everything before the summary was sent or failed.
        assert_eq!(
            u(sum, "events_sent") + u(sum, "events_dropped"),
            u(sum, "seq") - 1,
            "{source}: {sum}"
        );
        assert_eq!(u(sum, "guarded_calls"), loads, "{source}: {sum}");
        eprintln!("{source} after the socket came back: {sum}");
    }
    let err = stderr(&out);
    assert!(err.contains(" not sent (last error "), "{err}");
}

// ---- metrics -------------------------------------------------------------------------------------

fn metric(text: &str, name: &str, labels: &str) -> Option<u64> {
    let prefix = format!("{name}{{{labels}}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn metrics_count_real_loads_from_the_shim() {
    require_privileged!();
    let _s = serial();
    let dir = Scratch::new("events-metrics");
    let path = dir.path("s.sock");
    let prom = dir.path("spinguard.prom");
    let l = Listener::start(&path, &["--metrics", prom.to_str().unwrap()]);
    let loader = example_bin("rust-loader");
    let out = preloaded(
        &loader,
        &["--threads", "2", STORM[0], STORM[1]],
        Some(&path),
    );
    assert_loaded_first_time("shim", &out, 2);
    l.pids("shim", 1);
    // By program and container (none here), never by pid.
    let labels = "source=\"shim\",program=\"rust-loader\",container=\"\",cmd=\"BPF_PROG_LOAD\"";
    l.wait_until("2 loads in the metrics file", |_| {
        let text = std::fs::read_to_string(&prom).unwrap_or_default();
        metric(&text, "spinguard_loads_total", labels) == Some(2)
    });
    let text = std::fs::read_to_string(&prom).unwrap();
    assert_eq!(
        metric(&text, "spinguard_retries_total", labels),
        Some(0),
        "{text}"
    );
    let held = metric(&text, "spinguard_signals_held_back_total", labels).unwrap();
    assert!(held >= 2, "each thread held SIGPROF back: {text}");
}

/// A tmpfs of its own, unmounted (lazily) on drop.
struct Tmpfs(PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_under_metrics_costs_one_line_and_the_listener_keeps_going() {
    require_privileged!();
    let _s = serial();
    let dir = Scratch::new("events-enospc");
    let mnt = dir.path("tmpfs");
    std::fs::create_dir(&mnt).unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=16k", "tmpfs"])
        .arg(&mnt)
        .status()
        .expect("run mount");
    assert!(st.success(), "mount -t tmpfs failed: {st}");
    let _fs = Tmpfs(mnt.clone());
    let path = dir.path("s.sock");
    let prom = mnt.join("spinguard.prom");
    let l = Listener::start(&path, &["--metrics", prom.to_str().unwrap()]);
    l.wait_until("the first metrics file", |_| prom.exists());
    // Fill the file system.
    let filler = mnt.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = [0u8; 1024];
        let e = loop {
            if let Err(e) = f.write_all(&block).and_then(|_| f.sync_all()) {
                break e;
            }
        };
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
    }
    let loader = example_bin("rust-loader");
    let out = preloaded(&loader, &STORM, Some(&path));
    assert_loaded_first_time("shim", &out, 1);
    let pid = l.pids("shim", 1)[0];
    l.wait_until("the failure line", |l| {
        l.err().iter().any(|x| x.contains("cannot write metrics"))
    });
    // Another load: the listener still receives, and says nothing more.
    let out = preloaded(&loader, &STORM, Some(&path));
    assert_loaded_first_time("shim, disk full", &out, 1);
    let pid2 = l
        .pids("shim", 2)
        .into_iter()
        .find(|&p| p != pid)
        .expect("the second loader's events");
    l.stream_until_summary("shim", pid2);
    std::thread::sleep(Duration::from_millis(1200));
    let fails: Vec<String> = l
        .err()
        .into_iter()
        .filter(|x| x.contains("cannot write metrics"))
        .collect();
    assert_eq!(fails.len(), 1, "one line for the failure: {:#?}", l.err());
    assert!(fails[0].contains("No space left on device"), "{fails:?}");
    // Room again: the next write lands, with both loads counted.
    std::fs::remove_file(&filler).unwrap();
    let out = preloaded(&loader, &STORM, Some(&path));
    assert_loaded_first_time("shim, room again", &out, 1);
    // Three loaders, one program: one series, all three loads counted.
    l.wait_until("the metrics file to be written again", |_| {
        let text = std::fs::read_to_string(&prom).unwrap_or_default();
        metric(
            &text,
            "spinguard_loads_total",
            "source=\"shim\",program=\"rust-loader\",container=\"\",cmd=\"BPF_PROG_LOAD\"",
        ) == Some(3)
    });
    // Said right after the rename: the line may still be on its way.
    l.wait_until("the recovery line", |l| {
        l.err().iter().any(|x| x.contains("works again"))
    });
}
