//! `cargo bench --bench compare`: spinguard against native runs and strace,
//! side by side in one run.
//!
//! Every scenario runs its variants interleaved (A B C A B C …), so drift on a
//! shared machine hits them alike, and reports the median, the spread
//! (min–max) and the ratio of medians against the scenario's baseline. Nothing
//! here asserts a time: the goals are printed next to the ratios.
//!
//! Options (after `--`): `--reps N` (default 5), `--only WORD` (scenarios whose
//! title contains WORD), `--quick` (fewer calls, 3 reps: a smoke run).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[allow(dead_code)]
#[path = "../tests/support/loaders.rs"]
mod loaders;

#[allow(dead_code)]
#[path = "../tests/support/cgroup.rs"]
mod cgroup;

#[path = "compare/guard.rs"]
mod guard;
#[path = "compare/observers.rs"]
mod observers;

type Sample = Box<dyn Fn() -> Result<f64, String>>;

struct Variant {
    name: &'static str,
    sample: Sample,
}

struct Scenario {
    title: &'static str,
    unit: &'static str,
    goal: &'static str,
    /// Variant names compared against the baseline (the first variant).
    variants: Vec<Variant>,
    reps: usize,
    /// Print differences (variant - baseline) instead of ratios.
    difference: bool,
}

struct Opts {
    reps: usize,
    only: Option<String>,
    quick: bool,
}

fn main() {
    let opts = parse_opts();
    build_everything();
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("compare: these benchmarks load eBPF programs and use ptrace: run as root");
        std::process::exit(1);
    }
    println!(
        "spinguard benchmarks: {} reps each, interleaved; median [min–max], ratio = median / baseline median\n",
        opts.reps
    );
    // The guard's scenarios, then the probe's (watch, diagnose, watch --rescue).
    let all = guard::scenarios(&opts)
        .into_iter()
        .chain(observers::scenarios(&opts, bin("spinguard"), example));
    for s in all {
        if opts.only.as_deref().is_some_and(|w| !s.title.contains(w)) {
            continue;
        }
        run_scenario(s);
    }
}

fn parse_opts() -> Opts {
    let mut opts = Opts {
        reps: 5,
        only: None,
        quick: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--reps" => opts.reps = args.next().and_then(|v| v.parse().ok()).unwrap_or(5),
            "--only" => opts.only = args.next(),
            "--quick" => {
                opts.quick = true;
                opts.reps = 3;
            }
            _ => {} // cargo bench passes --bench; libtest flags do not apply here
        }
    }
    opts
}

fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("bench binary lives in target/<profile>/deps")
        .to_path_buf()
}

/// What tests/support/loaders.rs expects of its parent module.
fn run_timeout(cmd: &mut Command, limit: Duration) -> std::process::Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().expect("spawn");
    wait_limit(child, limit).unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

fn bin(name: &str) -> PathBuf {
    target_dir().join(name)
}

fn example(name: &str) -> PathBuf {
    target_dir().join("examples").join(name)
}

fn build_everything() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let st = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--workspace",
            "--lib",
            "--bins",
            "--examples",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("cargo build");
    assert!(st.success(), "cargo build --release failed");
    assert!(
        target_dir().ends_with("release"),
        "run with cargo bench (release build), not from {}",
        target_dir().display()
    );
}

fn run_scenario(s: Scenario) {
    println!("## {}  ({})", s.title, s.unit);
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); s.variants.len()];
    let mut errors: Vec<Option<String>> = vec![None; s.variants.len()];
    for _ in 0..s.reps {
        for (i, v) in s.variants.iter().enumerate() {
            if errors[i].is_some() {
                continue;
            }
            match (v.sample)() {
                Ok(x) => samples[i].push(x),
                Err(e) => errors[i] = Some(e),
            }
        }
    }
    let base = median(&samples[0]);
    let compare = if s.difference {
        "minus baseline"
    } else {
        "ratio"
    };
    println!(
        "  {:<34} {:>12} {:>25} {:>15}",
        "variant", "median", "spread", compare
    );
    for (i, v) in s.variants.iter().enumerate() {
        if let Some(e) = &errors[i] {
            println!("  {:<34} error: {e}", v.name);
            continue;
        }
        let m = median(&samples[i]);
        let (lo, hi) = min_max(&samples[i]);
        let cmp = match (i, s.difference) {
            (0, _) => "baseline".to_string(),
            (_, true) => format!("{:+.2}", m - base),
            (_, false) => format!("{:.3}x", m / base),
        };
        println!(
            "  {:<34} {:>12.2} {:>25} {:>15}",
            v.name,
            m,
            format!("[{lo:.2}–{hi:.2}]"),
            cmp
        );
    }
    println!("  goal: {}\n", s.goal);
}

fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn min_max(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        })
}

/// Runs `cmd` to completion (killing it after `limit`) and returns stdout.
fn output(cmd: &mut Command, limit: Duration) -> Result<String, String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().map_err(|e| format!("spawn: {e}"))?;
    let out = wait_limit(child, limit)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn wait_limit(mut child: Child, limit: Duration) -> Result<std::process::Output, String> {
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return child.wait_with_output().map_err(|e| e.to_string()),
            Ok(None) if start.elapsed() > limit => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("killed after {limit:?}"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(2)),
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// The value of `key=` in the last line that has it.
fn field(out: &str, key: &str) -> Result<f64, String> {
    out.lines()
        .rev()
        .find_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
        })
        .ok_or_else(|| format!("no {key}= in output {out:?}"))
}

/// A loader run that must have loaded; its own `ms=`.
fn loaded_ms(out: &str) -> Result<f64, String> {
    if !out.lines().any(|l| l.starts_with("loaded")) {
        return Err(format!("did not load: {}", out.trim()));
    }
    field(out, "ms")
}

fn cmd(program: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(program);
    c.args(args);
    c
}

/// `spinguard run --mode ptrace --engine ENGINE -q -- program args`
fn under_run(engine: &str, program: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(bin("spinguard"));
    c.args(["run", "--mode", "ptrace", "--engine", engine, "-q", "--"])
        .arg(program)
        .args(args);
    c
}

fn under_strace(program: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("strace");
    c.args([
        "-f",
        "-qq",
        "--seccomp-bpf",
        "-e",
        "trace=bpf",
        "-o",
        "/dev/null",
    ])
    .arg(program)
    .args(args);
    c
}

fn with_shim(program: &Path, args: &[&str]) -> Command {
    let mut c = cmd(program, args);
    c.env("LD_PRELOAD", bin("libspinguard_shim.so"));
    c
}
