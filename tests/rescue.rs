//! `spinguard watch --rescue` on the real kernel: the incident fixed with no
//! PID. Spinning loaders (the Go one on cilium/ebpf 0.9.1 and the Rust one)
//! load once rescued and are let go after the linger, TracerPid back to 0
//! and every thread's mask as it was; a spinner started later is rescued
//! too; a healthy loader and idle bystanders are never traced; a spinner
//! under `strace -p` is reported, not touched; SIGTERM with rescues in
//! flight lets go of each cleanly; --stay keeps a rescued process attached.
//!
//! Other engineers' loaders spin on this host at the same time: every watch
//! here is confined with --rescue-cgroup to a cgroup of the test's own, and
//! every check selects the test's processes by pid.

mod support;

use serde_json::Value;
use std::collections::BTreeMap;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::cgroup::Cgroup;
use support::*;

const TIMEOUT: Duration = Duration::from_secs(120);
/// How long a test waits for watch to say something (detection takes 1-2
/// intervals of 1 s; the machine is shared).
const SAY_WITHIN: Duration = Duration::from_secs(60);

/// Every thread's mask once two reads 50 ms apart agree: a thread glibc
/// has just created runs with every signal blocked until its first
/// instructions restore its creator's mask, which a busy machine can delay.
fn settled_masks(pid: i32) -> BTreeMap<i32, String> {
    let mut last = task_field(pid, "SigBlk");
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(50));
        let now = task_field(pid, "SigBlk");
        if now == last {
            return now;
        }
        last = now;
    }
    panic!("the masks of {pid} never settled: {last:?}");
}

/// Threads of `pid` with a tracer, as (tid, TracerPid).
fn traced_threads(pid: i32) -> Vec<(i32, String)> {
    task_field(pid, "TracerPid")
        .into_iter()
        .filter(|(_, v)| v != "0")
        .collect()
}

/// `watch --json --rescue …`, its documents and stderr collected.
struct Watch {
    guard: Option<GroupGuard>,
    lines: Arc<Mutex<Vec<Value>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Watch {
    fn start(cg: &Cgroup, args: &[&str]) -> Watch {
        let mut g = spawn_guarded(
            Command::new(spinguard_bin())
                .args(["-v", "watch", "--json", "--interval", "1s", "--rescue"])
                .args(["--rescue-cgroup", &cg.name])
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
        );
        let out = g.child.stdout.take().unwrap();
        let err = g.child.stderr.take().unwrap();
        let stderr = collect_lines(err);
        let lines: Arc<Mutex<Vec<Value>>> = Arc::default();
        let l = lines.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
                l.lock().unwrap().push(v);
            }
        });
        Watch {
            guard: Some(g),
            lines,
            stderr,
        }
    }

    fn pid(&self) -> i32 {
        self.guard.as_ref().unwrap().pid()
    }

    /// The rescue documents about `pid`.
    fn rescues(&self, pid: i32) -> Vec<Value> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|v| v["event"] == "rescue" && v["pid"] == pid)
            .cloned()
            .collect()
    }

    fn outcome(&self, pid: i32, outcome: &str) -> Option<Value> {
        self.rescues(pid)
            .into_iter()
            .find(|v| v["outcome"] == outcome)
    }

    /// Waits for the rescue document of `pid` with this outcome.
    fn wait_outcome(&self, pid: i32, outcome: &str) -> Value {
        let deadline = Instant::now() + SAY_WITHIN;
        loop {
            if let Some(v) = self.outcome(pid, outcome) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "watch said no {outcome:?} rescue of {pid} in {SAY_WITHIN:?}; its rescues of it: {:#?}\nstderr: {:#?}",
                self.rescues(pid),
                self.stderr.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends `sig`; returns the exit status and stderr.
    fn stop(&mut self, sig: i32) -> (std::process::ExitStatus, String) {
        let g = self.guard.take().unwrap();
        // SAFETY: plain kill of our own child.
        unsafe { libc::kill(g.pid(), sig) };
        let out = wait_timeout(g, TIMEOUT, "watch after a stop signal");
        // The reader threads end at EOF.
        std::thread::sleep(Duration::from_millis(200));
        (out.status, self.stderr.lock().unwrap().join("\n"))
    }
}

/// A loader spinning under a 1 kHz SIGPROF storm, moved into `cg`, that
/// stays alive `hold` seconds once loaded; its stdout piped (its one line).
/// Its program takes ~360 ms to verify: a storm that falls behind on a busy
/// machine (the Go loader's storm goroutine does) never leaves a gap that
/// long, so it never gets through by itself.
fn spinner(cg: &Cgroup, program: &Path, hold: &str) -> GroupGuard {
    let g = spawn_guarded(
        Command::new(program)
            .args(["--storm-hz", "1000", "--wait", "60", "--hold", hold])
            .args(["--iters", "300000"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    );
    cg.add(g.pid());
    g
}

/// The loader's line, once printed (it prints it when it has loaded, and
/// lives on for its --hold).
fn loader_line(g: &mut GroupGuard) -> String {
    use std::io::BufRead;
    let mut line = String::new();
    let out = g.child.stdout.as_mut().expect("piped stdout");
    std::io::BufReader::new(out)
        .read_line(&mut line)
        .expect("read the loader's line");
    line
}

/// Samples TracerPid of `pids` until stopped; the (pid, tid, tracer) ever seen.
struct NeverTraced {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<(i32, i32, String)>>>,
    samples: Arc<Mutex<u64>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NeverTraced {
    fn watch(pids: Vec<i32>) -> NeverTraced {
        let stop = Arc::new(AtomicBool::new(false));
        let seen: Arc<Mutex<Vec<(i32, i32, String)>>> = Arc::default();
        let samples: Arc<Mutex<u64>> = Arc::default();
        let (s, v, n) = (stop.clone(), seen.clone(), samples.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                for &pid in &pids {
                    for (tid, t) in traced_threads(pid) {
                        v.lock().unwrap().push((pid, tid, t));
                    }
                }
                *n.lock().unwrap() += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        NeverTraced {
            stop,
            seen,
            samples,
            thread: Some(thread),
        }
    }

    fn check(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.thread.take().unwrap().join();
        let seen = self.seen.lock().unwrap();
        assert!(
            seen.is_empty(),
            "a process watch only watched was traced: {seen:?}"
        );
        assert!(*self.samples.lock().unwrap() > 100, "too few samples");
    }
}

/// Waits until every thread of `pid` is untraced.
fn wait_untraced(pid: i32) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !traced_threads(pid).is_empty() {
        assert!(
            Instant::now() < deadline,
            "still traced 5 s after the detach: {:?}",
            traced_threads(pid)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The incident fixed with no PID: the spinning Rust and Go loaders load once
/// rescued; each is let go after the 2 s linger with TracerPid 0 on every
/// thread and (Rust) every thread's mask as it was while spinning; a Rust
/// spinner started later is rescued too; the healthy loader (an ignored
/// SIGUSR1 storm) and the idle bystanders are never traced; the `rescue`
/// events reach a socket, the metrics count the rescues by name.
#[test]
fn rescue_loads_the_spinning_loaders_and_lets_go_after_the_linger() {
    require_privileged!();
    let _s = serial();
    let cg = Cgroup::new("linger");
    let scratch = Scratch::new("rescue");
    let sock = scratch.path("events.sock");
    let events = UnixDatagram::bind(&sock).expect("bind the events socket");
    events
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let metrics = scratch.path("watch.prom");

    let rust = example_bin("rust-loader");
    let mut rs = spinner(&cg, &rust, "30");
    let mut go = spinner(&cg, &go_loader(), "30");
    let healthy = spawn_guarded(
        Command::new(&rust)
            .args(["--storm-hz", "1000", "--storm-signal", "SIGUSR1"])
            .args(["--storm-ignored", "--for", "40", "--wait", "10"])
            .stdout(Stdio::null()),
    );
    cg.add(healthy.pid());
    let sleeper = spawn_guarded(Command::new("sleep").arg("60"));
    cg.add(sleeper.pid());
    let getppid = spawn_guarded(
        Command::new(example_bin("syscall-loop"))
            .arg("--forever")
            .stdout(Stdio::null()),
    );
    cg.add(getppid.pid());
    let bystanders = NeverTraced::watch(vec![healthy.pid(), sleeper.pid(), getppid.pid()]);
    std::thread::sleep(Duration::from_millis(500));
    let rs_masks = settled_masks(rs.pid());
    assert!(traced_threads(rs.pid()).is_empty() && traced_threads(go.pid()).is_empty());

    let mut w = Watch::start(
        &cg,
        &[
            "--linger",
            "2s",
            "--events",
            sock.to_str().unwrap(),
            "--metrics",
            metrics.to_str().unwrap(),
        ],
    );
    for (name, g) in [("rust", &mut rs), ("go", &mut go)] {
        let pid = g.pid();
        let loaded = w.wait_outcome(pid, "loaded");
        let line = loader_line(g);
        assert!(
            line.starts_with("loaded "),
            "{name}: the loader said {line:?} after the rescue {loaded}"
        );
        assert!(
            loaded["before"]["failures"].as_u64().unwrap() >= 2,
            "{name}: {loaded}"
        );
        assert!(loaded["load_ms"].as_f64().unwrap() > 0.0, "{loaded}");
        eprintln!("{name}: {loaded}");
    }
    // A spinner that starts now is found and rescued as well.
    let mut late = spinner(&cg, &rust, "30");
    let late_masks = settled_masks(late.pid());
    for (name, pid) in [("rust", rs.pid()), ("go", go.pid()), ("late", late.pid())] {
        let d = w.wait_outcome(pid, "detached");
        assert_eq!(d["why"], "linger", "{name}: {d}");
        assert!(d["attached_seconds"].as_f64().unwrap() >= 2.0, "{d}");
        assert!(d["loads"].as_u64().unwrap() >= 1, "{name}: {d}");
        wait_untraced(pid);
        assert!(
            task_field(pid, "State")
                .values()
                .all(|s| !s.starts_with('Z')),
            "{name}: it was to live on (--hold)"
        );
    }
    assert!(loader_line(&mut late).starts_with("loaded "));
    // Every thread that was there while spinning has its mask back.
    for (name, pid, before) in [
        ("rust", rs.pid(), rs_masks),
        ("late", late.pid(), late_masks),
    ] {
        let after = task_field(pid, "SigBlk");
        let common: Vec<i32> = before
            .keys()
            .filter(|t| after.contains_key(t))
            .copied()
            .collect();
        assert!(common.len() >= 3, "{name}: threads {before:?} / {after:?}");
        for t in common {
            assert_eq!(before[&t], after[&t], "{name}: thread {t}'s mask changed");
        }
    }
    // Nothing rescued twice, nobody else touched.
    for pid in [rs.pid(), go.pid(), late.pid()] {
        let n = w
            .rescues(pid)
            .iter()
            .filter(|v| v["outcome"] == "loaded")
            .count();
        assert_eq!(n, 1, "{:#?}", w.rescues(pid));
    }
    for pid in [healthy.pid(), sleeper.pid(), getppid.pid()] {
        assert!(w.rescues(pid).is_empty(), "{:#?}", w.rescues(pid));
    }
    std::thread::sleep(Duration::from_millis(1200));
    let (status, err) = w.stop(libc::SIGINT);
    assert!(status.success(), "{err}");
    bystanders.check();

    // The same story as events…
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = events.recv(&mut buf) {
        let v: Value = serde_json::from_slice(&buf[..n]).expect("an event is JSON");
        if v["event"] == "rescue" {
            got.push((
                v["pid"].as_i64().unwrap() as i32,
                v["outcome"].as_str().unwrap().to_string(),
            ));
        }
    }
    for pid in [rs.pid(), go.pid(), late.pid()] {
        for o in ["loaded", "detached"] {
            assert!(
                got.contains(&(pid, o.to_string())),
                "no {o} event for {pid}: {got:?}"
            );
        }
    }
    // …and as metrics, by name, never by pid.
    let m = std::fs::read_to_string(&metrics).expect("metrics file");
    assert!(
        m.contains(
            r#"spinguard_watch_rescues_total{comm="rust-loader",container="",outcome="loaded"} 2"#
        ),
        "{m}"
    );
    assert!(
        m.contains(
            r#"spinguard_watch_rescues_total{comm="go-loader",container="",outcome="detached"} 1"#
        ),
        "{m}"
    );
    assert!(m.contains("spinguard_watch_rescues_in_flight 0"), "{m}");
}

/// A spinner already under `strace -p` is reported once, with strace named,
/// and never touched: strace stays its tracer and it keeps spinning.
#[test]
fn a_spinner_under_strace_is_reported_not_touched() {
    require_privileged!();
    let _s = serial();
    let cg = Cgroup::new("strace");
    let target = spinner(&cg, &example_bin("rust-loader"), "0");
    let pid = target.pid();
    let strace = spawn_guarded(
        Command::new("strace")
            .args(["-qq", "-f", "-o", "/dev/null", "-p"])
            .arg(pid.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while task_field(pid, "TracerPid")
        .values()
        .any(|t| *t != strace.pid().to_string())
    {
        assert!(Instant::now() < deadline, "strace never attached");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut w = Watch::start(&cg, &["--linger", "1s"]);
    let t = w.wait_outcome(pid, "traced");
    assert_eq!(t["tracer"], strace.pid(), "{t}");
    assert_eq!(t["tracer_name"], "strace", "{t}");
    // Three more intervals: still strace's, still spinning, said once.
    std::thread::sleep(Duration::from_secs(3));
    let tracers: Vec<String> = task_field(pid, "TracerPid").into_values().collect();
    assert!(
        tracers.iter().all(|t| *t == strace.pid().to_string()),
        "{tracers:?}"
    );
    assert_eq!(w.rescues(pid).len(), 1, "{:#?}", w.rescues(pid));
    let (status, err) = w.stop(libc::SIGTERM);
    assert!(status.success(), "{err}");
    assert!(
        traced_threads(pid)
            .iter()
            .all(|(_, t)| *t == strace.pid().to_string()),
        "strace lost it when watch ended"
    );
}

/// SIGTERM to watch with several rescues in flight (--stay: each is held):
/// watch lets go of every one and exits 0; every thread is untraced with its
/// mask exactly as before, for two processes whose threads block unusual
/// signal sets and load under a storm the whole time. A loader that loaded
/// once is still attached well past the default linger (--stay).
#[test]
fn sigterm_lets_go_of_every_rescue_in_flight_masks_exact_and_stay_holds() {
    require_privileged!();
    let _s = serial();
    let cg = Cgroup::new("sigterm");
    let mask_threads = || {
        let mut g = spawn_guarded(
            Command::new(example_bin("mask-threads"))
                .args(["--threads", "6", "--storm-hz", "1000"])
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit()),
        );
        cg.add(g.pid());
        let line = loader_line(&mut g);
        assert!(line.starts_with("ready "), "mask-threads said {line:?}");
        g
    };
    let a = mask_threads();
    let b = mask_threads();
    let mut once = spinner(&cg, &example_bin("rust-loader"), "60");
    std::thread::sleep(Duration::from_millis(300));
    let before: Vec<BTreeMap<i32, String>> = [a.pid(), b.pid()]
        .iter()
        .map(|&p| settled_masks(p))
        .collect();
    for m in &before {
        let distinct: std::collections::BTreeSet<_> = m.values().collect();
        assert!(distinct.len() >= 6, "expected unusual masks: {m:?}");
    }
    let mut w = Watch::start(&cg, &["--stay"]);
    for pid in [a.pid(), b.pid(), once.pid()] {
        w.wait_outcome(pid, "loaded");
    }
    assert!(loader_line(&mut once).starts_with("loaded "));
    // Past the 10 s a --linger would have let it go after.
    std::thread::sleep(Duration::from_secs(11));
    // TracerPid names the tracing thread: one of watch's.
    let watch_task = |t: &String| Path::new(&format!("/proc/{}/task/{t}", w.pid())).exists();
    for pid in [a.pid(), b.pid(), once.pid()] {
        let t = task_field(pid, "TracerPid");
        assert!(t.values().all(watch_task), "pid {pid} not held: {t:?}");
        assert!(
            w.outcome(pid, "detached").is_none(),
            "{:#?}",
            w.rescues(pid)
        );
    }
    let (status, err) = w.stop(libc::SIGTERM);
    assert!(status.success(), "watch after SIGTERM: {err}");
    for (i, pid) in [a.pid(), b.pid()].into_iter().enumerate() {
        assert!(traced_threads(pid).is_empty(), "{:?}", traced_threads(pid));
        assert_eq!(
            before[i],
            task_field(pid, "SigBlk"),
            "pid {pid}: masks changed\n{err}"
        );
    }
    assert!(traced_threads(once.pid()).is_empty());
    for pid in [a.pid(), b.pid(), once.pid()] {
        let d = w
            .outcome(pid, "detached")
            .unwrap_or_else(|| panic!("no detach of {pid}: {:#?}\n{err}", w.rescues(pid)));
        assert_eq!(d["why"], "watch_ended", "{d}");
        assert_eq!(d["signal"], "SIGTERM", "{d}");
    }
}

/// The rescue's options are checked before anything is watched: each
/// mistake is a one-line usage error, exit 2.
#[test]
fn rescue_options_without_rescue_or_out_of_range_are_usage_errors() {
    for (args, says) in [
        (&["--linger", "3s"][..], "--rescue"),
        (&["--stay"][..], "--rescue"),
        (&["--signals", "PROF"][..], "--rescue"),
        (&["--rescue-cgroup", "/a"][..], "--rescue"),
        (
            &["--rescue", "--stay", "--linger", "3s"][..],
            "cannot be used with",
        ),
        (&["--rescue", "--linger", "0"][..], "more than 0"),
        (&["--rescue", "--linger", "soon"][..], "soon"),
        (
            &["--rescue", "--rescue-cgroup", "kubepods"][..],
            "from the root",
        ),
        (&["--rescue", "--signals", "NOPE"][..], "NOPE"),
    ] {
        let out = run_timeout(
            Command::new(spinguard_bin()).arg("watch").args(args),
            TIMEOUT,
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", describe(&out));
        assert!(err.contains(says), "{args:?}: {err}");
    }
}
