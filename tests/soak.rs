//! Soak: the Rust loader loads over and over from 8 threads under a 1 kHz
//! SIGPROF storm, guarded by `spinguard run`, by the shim, and by
//! `spinguard attach`. Nothing may fail, the program may never see EAGAIN,
//! and the guard's own process must not grow or leak fds while it works.
//!
//! Short by default (`SOAK_DEFAULT_SECS` per mechanism, so the suite stays
//! fast); `SPINGUARD_SOAK_SECS=600 cargo test --test soak -- --nocapture` is
//! the 10-minute soak. Each test prints one `soak:` line with its numbers.

mod support;

use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{describe, require_privileged, spawn_guarded, wait_timeout, LoaderLine};

/// Seconds per mechanism when SPINGUARD_SOAK_SECS is not set.
const SOAK_DEFAULT_SECS: f64 = 8.0;
/// The guard's resident set may grow this much over a soak (heap arenas and
/// thread stacks warming up), no more. A leak per load or per signal would
/// pass it within seconds: a soak makes ~60 loads and ~10,000 signal stops a
/// second.
const RSS_GROWTH_LIMIT_KIB: u64 = 8 * 1024;
/// Samples taken before this are warm-up: the tracer's maps fill as threads appear.
const WARMUP: Duration = Duration::from_millis(1000);
const THREADS: &str = "8";
/// ~24 ms to verify alone; several times that with 8 threads on 2 cores.
const ITERS: &str = "20000";

fn soak_secs() -> f64 {
    match std::env::var("SPINGUARD_SOAK_SECS") {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("SPINGUARD_SOAK_SECS={v:?} is not a number of seconds")),
        Err(_) => SOAK_DEFAULT_SECS,
    }
}

/// The loader's flags: 8 threads, tgkill SIGPROF at 1 kHz to each, loading
/// repeatedly for `secs`; a single load may take at most 10 s.
fn loader_args(secs: f64) -> Vec<String> {
    [
        "--iters",
        ITERS,
        "--threads",
        THREADS,
        "--storm-hz",
        "1000",
        "--wait",
        "10",
        "--for",
        &secs.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn timeout(secs: f64) -> Duration {
    Duration::from_secs_f64(secs + 90.0)
}

/// One look at a process: memory from /proc/PID/status, and its open fds,
/// not counting eBPF program fds (a loader holds one for a moment per load).
#[derive(Clone, Copy, Debug)]
struct Sample {
    rss_kib: u64,
    hwm_kib: u64,
    fds: usize,
}

fn status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn sample(pid: i32) -> Option<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    if status
        .lines()
        .any(|l| l.starts_with("State:") && (l.contains('Z') || l.contains('X')))
    {
        return None;
    }
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| {
            std::fs::read_link(e.path())
                .map(|l| l.to_string_lossy() != "anon_inode:bpf-prog")
                .unwrap_or(false)
        })
        .count();
    Some(Sample {
        rss_kib: status_kib(&status, "VmRSS:")?,
        hwm_kib: status_kib(&status, "VmHWM:")?,
        fds,
    })
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| !r.trim_start().starts_with(['Z', 'X']))
        })
        .unwrap_or(false)
}

/// Samples `pid` every 100 ms while `load_pid` (the loader) is alive: the
/// first sample after the warm-up and the last one taken while the loader
/// still ran (a guard tearing down after its program exited is not a leak).
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(Option<Sample>, Option<Sample>, usize)>,
}

impl Sampler {
    fn start(pid: i32, load_pid: impl Fn() -> Option<i32> + Send + 'static) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let start = Instant::now();
            let (mut first, mut last, mut n) = (None, None, 0);
            while !flag.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                let Some(lp) = load_pid() else { continue };
                let s = sample(pid);
                if !alive(lp) {
                    if last.is_some() {
                        break;
                    }
                    continue;
                }
                let Some(s) = s else { break };
                if start.elapsed() < WARMUP {
                    continue;
                }
                first.get_or_insert(s);
                last = Some(s);
                n += 1;
            }
            (first, last, n)
        });
        Sampler { stop, thread }
    }

    fn finish(self) -> (Sample, Sample, usize) {
        self.stop.store(true, Ordering::Relaxed);
        let (first, last, n) = self.thread.join().expect("sampler thread");
        match (first, last) {
            (Some(f), Some(l)) if n >= 2 => (f, l, n),
            _ => panic!("too few samples of the guard while the loader ran ({n}): was it alive?"),
        }
    }
}

/// The loader's line must say: every thread loaded every time, no EAGAIN,
/// and the storm really reached it. Returns (loads, signals).
fn assert_clean(what: &str, out: &Output) -> (u64, u64) {
    let line = LoaderLine::parse(&String::from_utf8_lossy(&out.stdout));
    let loads = line.get("loads").unwrap_or(0);
    let eagain = line.get("eagain");
    let signals = line.get("signals").unwrap_or(0);
    assert!(
        out.status.success() && line.result == "loaded",
        "{what}: a load failed or spun: {}\n{}",
        line.line,
        describe(out)
    );
    assert_eq!(
        eagain,
        Some(0),
        "{what}: the program saw EAGAIN/EINTR: {}\n{}",
        line.line,
        describe(out)
    );
    assert!(
        loads >= 16,
        "{what}: only {loads} loads; the soak did not soak: {}",
        line.line
    );
    assert!(
        signals > 0,
        "{what}: no storm signal was handled, so no EAGAIN proves nothing: {}",
        line.line
    );
    (loads, signals)
}

fn assert_flat(what: &str, first: Sample, last: Sample) -> i64 {
    let growth = last.rss_kib as i64 - first.rss_kib as i64;
    assert!(
        growth < RSS_GROWTH_LIMIT_KIB as i64,
        "{what}: VmRSS grew {growth} KiB ({first:?} -> {last:?}), limit {RSS_GROWTH_LIMIT_KIB} KiB"
    );
    assert_eq!(
        first.fds, last.fds,
        "{what}: open fds went from {} to {} ({first:?} -> {last:?})",
        first.fds, last.fds
    );
    growth
}

fn report(what: &str, secs: f64, loads: u64, signals: u64, first: Sample, last: Sample, n: usize) {
    eprintln!(
        "soak: {what}: {secs} s, {loads} loads, 0 EAGAIN, {signals} SIGPROF handled; \
         guard process VmRSS {} -> {} KiB ({:+} KiB), VmHWM {} -> {} KiB, fds {} -> {} ({n} samples)",
        first.rss_kib,
        last.rss_kib,
        last.rss_kib as i64 - first.rss_kib as i64,
        first.hwm_kib,
        last.hwm_kib,
        first.fds,
        last.fds
    );
}

/// The first child of `pid` (spinguard run's tracee).
fn child_of(pid: i32) -> Option<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[test]
fn soak_under_run() {
    require_privileged!();
    let _s = support::serial();
    let secs = soak_secs();
    let loader = support::example_bin("rust-loader");
    let mut cmd = Command::new(support::spinguard_bin());
    cmd.args(["run", "--mode", "ptrace", "--"])
        .arg(&loader)
        .args(loader_args(secs))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let g = spawn_guarded(&mut cmd);
    let pid = g.pid();
    let sampler = Sampler::start(pid, move || child_of(pid));
    let out = wait_timeout(g, timeout(secs), "spinguard run soak");
    let (first, last, n) = sampler.finish();
    let (loads, signals) = assert_clean("run --mode ptrace", &out);
    assert_flat("spinguard run", first, last);
    report("run --mode ptrace", secs, loads, signals, first, last, n);
}

#[test]
fn soak_under_the_shim() {
    require_privileged!();
    let _s = support::serial();
    let secs = soak_secs();
    let loader = support::example_bin("rust-loader");
    // The control: the same storm without a guard makes the program see EAGAIN.
    let control = support::run_timeout(
        Command::new(&loader)
            .args(["--iters", ITERS, "--threads", THREADS, "--storm-hz", "1000"])
            .args(["--wait", "1", "--for", "1"])
            .env_remove("LD_PRELOAD"),
        Duration::from_secs(60),
    );
    let c = LoaderLine::parse(&String::from_utf8_lossy(&control.stdout));
    assert!(
        c.get("eagain").unwrap_or(0) > 0,
        "without a guard the storm must cause EAGAIN: {}",
        c.line
    );

    // With the shim there is no supervisor: the process to watch is the
    // program itself (the shim must leave no fd and no memory behind).
    let mut cmd = Command::new(&loader);
    cmd.args(loader_args(secs))
        .env("LD_PRELOAD", support::shim_path())
        .env_remove("SPINGUARD_EVENTS")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let g = spawn_guarded(&mut cmd);
    let pid = g.pid();
    let sampler = Sampler::start(pid, move || Some(pid));
    let out = wait_timeout(g, timeout(secs), "shim soak");
    let (first, last, n) = sampler.finish();
    let (loads, signals) = assert_clean("LD_PRELOAD shim", &out);
    assert_flat("the preloaded loader", first, last);
    report(
        "shim (the loader itself)",
        secs,
        loads,
        signals,
        first,
        last,
        n,
    );
    eprintln!(
        "soak: control without a guard: {} EAGAIN in 1 s ({})",
        c.get("eagain").unwrap_or(0),
        c.line
    );
}

#[test]
fn soak_under_attach() {
    require_privileged!();
    let _s = support::serial();
    let secs = soak_secs();
    let loader = support::example_bin("rust-loader");
    // The loader starts its storm and loads only once it is traced, so every
    // load it makes is made under attach.
    let mut lcmd = Command::new(&loader);
    lcmd.args(loader_args(secs))
        .arg("--wait-traced")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let lg = spawn_guarded(&mut lcmd);
    let lpid = lg.pid();
    let mut acmd = Command::new(support::spinguard_bin());
    acmd.args(["attach", &lpid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let ag = spawn_guarded(&mut acmd);
    let sampler = Sampler::start(ag.pid(), move || Some(lpid));
    let out = wait_timeout(lg, timeout(secs), "loader under attach");
    let aout = wait_timeout(ag, Duration::from_secs(30), "spinguard attach soak");
    let (first, last, n) = sampler.finish();
    let (loads, signals) = assert_clean("attach", &out);
    assert!(
        aout.status.success(),
        "attach must end cleanly when its target exits:\n{}",
        describe(&aout)
    );
    assert_flat("spinguard attach", first, last);
    report("attach", secs, loads, signals, first, last, n);
}
