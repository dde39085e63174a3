//! A real eBPF loader with a cilium-style retry loop and a built-in signal
//! storm: the program `spinguard demo`, the examples and the tests load with.
//!
//! It prints one line, `RESULT key=value…`:
//! - RESULT: `loaded` (every thread loaded), `spinning` (still getting EAGAIN
//!   when `--wait` ran out), or `failed` (a thread hit `--max-attempts` or
//!   another error; `errno=` names it);
//! - `threads`, `attempts` (bpf calls made, all threads), `max_attempts` (the
//!   worst thread), `ms` (wall time), `signals` (storm signals handled).
//!
//! Exit status: 0 loaded, 2 spinning, 3 failed, 64 bad usage.

pub mod prog;
pub mod storm;

use clap::{Args, ValueEnum};
use spinguard_common::errno::errno_name;
use spinguard_common::signals::parse_signal;
use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

pub const EXIT_LOADED: i32 = 0;
pub const EXIT_SPINNING: i32 = 2;
pub const EXIT_FAILED: i32 = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StormKind {
    /// Another thread sends the signal to each loading thread with tgkill.
    Tgkill,
    /// Each loading thread arms a CLOCK_MONOTONIC timer aimed at itself.
    Timer,
    /// The process's ITIMER_REAL (setitimer): SIGALRM directed at the whole
    /// process, taken by whichever thread the kernel picks, as gperftools'
    /// CPUPROFILE_REALTIME profiler does (the storm signal is SIGALRM)
    Itimer,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Cmd {
    /// BPF_PROG_LOAD of the slow-to-verify loop program (EAGAIN on signals).
    Load,
    /// BPF_PROG_TEST_RUN of a trivial program, `--repeat` times (EINTR on signals).
    TestRun,
}

#[derive(Args, Clone, Debug)]
pub struct LoaderArgs {
    /// Iterations of the loop the verifier must walk (~1.2 ms per 1,000)
    #[arg(long, default_value_t = 100_000)]
    pub iters: u32,
    /// Threads loading at the same time
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub threads: u32,
    /// Storm rate per loading thread in Hz (0: no storm)
    #[arg(long, default_value_t = 0)]
    pub storm_hz: u32,
    /// How the storm is delivered
    #[arg(long, value_enum, default_value_t = StormKind::Tgkill)]
    pub storm: StormKind,
    /// Signal the storm sends
    #[arg(long, default_value = "SIGPROF", value_parser = parse_storm_signal)]
    pub storm_signal: i32,
    /// Give up after this many seconds and report `spinning`
    #[arg(long, default_value_t = 2.0)]
    pub wait: f64,
    /// Fail after this many EAGAIN/EINTR attempts (0: retry until --wait, like cilium/ebpf; 2: like aya)
    #[arg(long, default_value_t = 0)]
    pub max_attempts: u64,
    /// Which guarded bpf command to issue
    #[arg(long, value_enum, default_value_t = Cmd::Load)]
    pub cmd: Cmd,
    /// Repetitions for `--cmd test-run`
    #[arg(long, default_value_t = 2_000_000)]
    pub repeat: u32,
    /// Keep loading (each load retried as usual, --wait per load) until SECS
    /// have passed; the line then also gives `loads=` and `eagain=` (EAGAIN/EINTR
    /// results the program saw)
    #[arg(long = "for", value_name = "SECS")]
    pub for_secs: Option<f64>,
    /// Start (storm and loads) only once a tracer such as `spinguard attach` is
    /// attached, plus 200 ms for it to seize every thread
    #[arg(long)]
    pub wait_traced: bool,
    /// Ignore the storm's signal (SIG_IGN) instead of handling it: the kernel
    /// then drops it on arrival and it never interrupts a load, unless the
    /// process is traced (a tracer gets even ignored signals queued)
    #[arg(long)]
    pub storm_ignored: bool,
    /// Sleep this long before starting (storm and loads): time for an
    /// observer to get going
    #[arg(long, default_value_t = 0)]
    pub delay_ms: u64,
    /// Threads that compute beside the loaders while they load (they can
    /// take a process-directed signal meant to interrupt a load)
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=64))]
    pub busy_threads: u32,
    /// After the line, stay alive this many seconds before exiting, the
    /// loading threads still there (and still storm targets): a process that
    /// loaded and lives on, as an agent does
    #[arg(long, value_name = "SECS", default_value_t = 0.0)]
    pub hold: f64,
}

fn parse_storm_signal(s: &str) -> Result<i32, String> {
    parse_signal(s).map_err(|e| e.to_string())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Loaded,
    Spinning,
    Failed(i32),
}

struct ThreadResult {
    outcome: Outcome,
    attempts: u64,
    /// Successful loads (more than one only with `--for`).
    loads: u64,
    /// EAGAIN/EINTR results the thread saw.
    eagain: u64,
}

impl ThreadResult {
    fn once(outcome: Outcome, attempts: u64) -> ThreadResult {
        let loaded = u64::from(outcome == Outcome::Loaded);
        ThreadResult {
            outcome,
            attempts,
            loads: loaded,
            eagain: attempts_failed(outcome, attempts),
        }
    }
}

/// How many of `attempts` ended in EAGAIN/EINTR: all but a successful or
/// otherwise failed last one.
fn attempts_failed(outcome: Outcome, attempts: u64) -> u64 {
    match outcome {
        Outcome::Loaded => attempts.saturating_sub(1),
        Outcome::Failed(e) if e != libc::EAGAIN && e != libc::EINTR => attempts.saturating_sub(1),
        _ => attempts,
    }
}

/// CPU time this process has used (all threads, user and system), in ns:
/// what a benchmark on a busy shared machine compares, where wall time also
/// counts the time other processes held the CPU.
pub fn cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: fills a local timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// True once /proc/self/status names a tracer.
pub fn traced() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("TracerPid:"))
                .map(|v| v.trim() != "0")
        })
        .unwrap_or(false)
}

/// Runs the loader and prints its line; returns the exit status.
pub fn run(args: &LoaderArgs) -> i32 {
    let storm_signal = match args.storm {
        StormKind::Itimer => libc::SIGALRM,
        _ => args.storm_signal,
    };
    if args.storm_ignored {
        storm::ignore(storm_signal);
    } else {
        storm::install_counter(storm_signal);
    }
    if args.wait_traced {
        while !traced() {
            std::thread::sleep(Duration::from_millis(1));
        }
        // attach seizes thread by thread: let it finish before the storm starts.
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(args.delay_ms));
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(args.wait.max(0.0));
    let tgkill = (args.storm_hz > 0 && args.storm == StormKind::Tgkill)
        .then(|| Arc::new(storm::TgkillStorm::start(args.storm_signal, args.storm_hz)));
    let busy = storm::BusyThreads::start(args.busy_threads);
    let itimer = match (args.storm_hz > 0 && args.storm == StormKind::Itimer)
        .then(|| storm::ProcessTimer::start(args.storm_hz))
    {
        Some(Err(e)) => {
            let _ = writeln!(std::io::stderr(), "loader: setitimer: {e}");
            return EXIT_FAILED;
        }
        other => other.map(Result::ok),
    };
    let barrier = Arc::new(Barrier::new(args.threads as usize));
    let handled_before = storm::HANDLED.load(Ordering::Relaxed);

    // Each thread hands its result over, then holds (`--hold`) before it ends.
    let (tx, rx) = std::sync::mpsc::channel();
    let hold = Duration::from_secs_f64(args.hold.max(0.0));
    let workers: Vec<_> = (0..args.threads)
        .map(|_| {
            let (args, barrier, tgkill) = (args.clone(), barrier.clone(), tgkill.clone());
            let tx = tx.clone();
            std::thread::spawn(move || {
                let tid = storm::gettid();
                let r = load_thread(&args, deadline, &barrier, tgkill.as_deref());
                let _ = tx.send(r);
                std::thread::sleep(hold);
                if let Some(s) = &tgkill {
                    s.remove(tid);
                }
            })
        })
        .collect();
    drop(tx);
    // A thread that panicked sends nothing: it counts as a failure.
    let mut results: Vec<ThreadResult> = rx.iter().take(args.threads as usize).collect();
    results.resize_with(args.threads as usize, || {
        ThreadResult::once(Outcome::Failed(0), 0)
    });
    let ms = start.elapsed().as_secs_f64() * 1000.0;

    let failed = results.iter().find_map(|r| match r.outcome {
        Outcome::Failed(e) => Some(e),
        _ => None,
    });
    let (word, code) = if let Some(e) = failed {
        (format!("failed errno={}", errno_name(e)), EXIT_FAILED)
    } else if results.iter().any(|r| r.outcome == Outcome::Spinning) {
        ("spinning".to_string(), EXIT_SPINNING)
    } else {
        ("loaded".to_string(), EXIT_LOADED)
    };
    let repeated = args.for_secs.map_or(String::new(), |_| {
        format!(
            " loads={} eagain={}",
            results.iter().map(|r| r.loads).sum::<u64>(),
            results.iter().map(|r| r.eagain).sum::<u64>()
        )
    });
    let printed = crate::outln!(
        "{word} threads={} attempts={} max_attempts={} ms={ms:.0} signals={}{repeated}",
        args.threads,
        results.iter().map(|r| r.attempts).sum::<u64>(),
        results.iter().map(|r| r.attempts).max().unwrap_or(0),
        storm::HANDLED.load(Ordering::Relaxed) - handled_before,
    );
    // The exit status is the result; a lost line does not change it.
    if let Err(e) = crate::output::ignore_closed(printed) {
        let _ = writeln!(std::io::stderr(), "loader: {e:#}");
    }
    for w in workers {
        let _ = w.join();
    }
    drop(tgkill);
    drop(itimer);
    drop(busy);
    code
}

fn load_thread(
    args: &LoaderArgs,
    deadline: Instant,
    barrier: &Barrier,
    tgkill: Option<&storm::TgkillStorm>,
) -> ThreadResult {
    // test-run needs a program first; a trivial one verifies in microseconds,
    // before this thread is a storm target.
    let test_prog = match args.cmd {
        Cmd::Load => None,
        Cmd::TestRun => match load_until(&prog::loop_program(1), deadline, 0) {
            (Outcome::Loaded, _, fd) => fd,
            (outcome, attempts, _) => return ThreadResult::once(outcome, attempts),
        },
    };
    let insns = prog::loop_program(args.iters);
    let tid = storm::gettid();
    let _timer = if args.storm_hz > 0 && args.storm == StormKind::Timer {
        match storm::ThreadTimer::start(args.storm_signal, args.storm_hz) {
            Ok(t) => Some(t),
            Err(e) => {
                let _ = writeln!(std::io::stderr(), "loader: timer_create: {e}");
                return ThreadResult::once(Outcome::Failed(e.raw_os_error().unwrap_or(0)), 0);
            }
        }
    } else {
        None
    };
    if let Some(s) = tgkill {
        s.add(tid);
    }
    barrier.wait();
    let result = match (&test_prog, args.for_secs) {
        (None, Some(secs)) => load_repeatedly(&insns, args, secs),
        (None, None) => {
            let (o, a, _fd) = load_until(&insns, deadline, args.max_attempts);
            ThreadResult::once(o, a)
        }
        (Some(p), _) => {
            let (o, a) = retry(deadline, args.max_attempts, || {
                prog::prog_test_run(p, args.repeat)
            });
            ThreadResult::once(o, a)
        }
    };
    // It stays a storm target until it ends (`--hold`): run() removes it.
    result
}

/// `--for`: load, close, load again until `secs` have passed; stops at the
/// first load that does not succeed (each gets `--wait` of its own).
fn load_repeatedly(insns: &[u64], args: &LoaderArgs, secs: f64) -> ThreadResult {
    let end = Instant::now() + Duration::from_secs_f64(secs.max(0.0));
    let wait = Duration::from_secs_f64(args.wait.max(0.0));
    let mut total = ThreadResult::once(Outcome::Loaded, 0);
    total.loads = 0;
    loop {
        let (o, a, fd) = load_until(insns, Instant::now() + wait, args.max_attempts);
        drop(fd);
        let one = ThreadResult::once(o, a);
        total.outcome = o;
        total.attempts += one.attempts;
        total.loads += one.loads;
        total.eagain += one.eagain;
        if o != Outcome::Loaded || Instant::now() >= end {
            return total;
        }
    }
}

fn load_until(
    insns: &[u64],
    deadline: Instant,
    max_attempts: u64,
) -> (Outcome, u64, Option<prog::ProgFd>) {
    let mut fd = None;
    let (o, a) = retry(deadline, max_attempts, || {
        prog::prog_load(insns).map(|f| fd = Some(f))
    });
    (o, a, fd)
}

/// The retry loop of cilium/ebpf's `internal/sys.BPF()`: go again on EAGAIN
/// (and EINTR) at once, until it works, `max_attempts` (if not 0) or the deadline.
fn retry(
    deadline: Instant,
    max_attempts: u64,
    mut call: impl FnMut() -> std::io::Result<()>,
) -> (Outcome, u64) {
    let mut attempts = 0;
    loop {
        attempts += 1;
        match call() {
            Ok(()) => return (Outcome::Loaded, attempts),
            Err(e) => {
                let errno = e.raw_os_error().unwrap_or(0);
                if errno != libc::EAGAIN && errno != libc::EINTR {
                    return (Outcome::Failed(errno), attempts);
                }
                if max_attempts != 0 && attempts >= max_attempts {
                    return (Outcome::Failed(errno), attempts);
                }
                if Instant::now() >= deadline {
                    return (Outcome::Spinning, attempts);
                }
            }
        }
    }
}

/// Loads a trivial program once: Ok when this process may load eBPF here.
pub fn probe() -> std::io::Result<()> {
    prog::prog_load(&prog::loop_program(1)).map(drop)
}
