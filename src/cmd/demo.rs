//! `spinguard demo`: the bug and its cure, side by side, in a few seconds.

use anyhow::{bail, Context, Result};
use clap::Args;
use spinguard::outln;
use std::process::{Command, Stdio};
use std::time::Duration;

#[derive(Args)]
#[command(
    about = "Show the bug and the cure side by side on this machine (needs root)",
    long_about = "Show the bug and the cure on this machine, in about 5 seconds.\n\n\
Loads a program that takes the verifier about 120 ms, while a storm thread sends \
the loading thread SIGPROF 1,000 times a second (as a wall-clock profiler would):\n  \
1. unguarded: every attempt ends in EAGAIN; the loader gives up after --wait\n  \
2. with the LD_PRELOAD shim: the signals are held back during the load\n  \
3. under `spinguard run --mode ptrace`: the same, from outside the process\n\n\
Needs root (or CAP_BPF and CAP_SYS_PTRACE).",
    after_help = "Exit status: 0 when both guarded runs loaded; 1 when one did not, or when \
eBPF cannot be loaded here (not root); 2 for a usage error."
)]
pub struct DemoArgs {
    /// Seconds the unguarded loader keeps retrying before it gives up
    #[arg(long, default_value_t = 2.0)]
    wait: f64,
    /// Storm rate in Hz
    #[arg(long, default_value_t = 1000)]
    storm_hz: u32,
    /// Verifier cost of the program (loop iterations, ~1.2 ms per 1,000)
    #[arg(long, default_value_t = 100_000)]
    iters: u32,
}

struct Row {
    mechanism: &'static str,
    result: String,
    attempts: String,
    ms: String,
    signals: String,
}

pub fn run(args: DemoArgs) -> Result<i32> {
    if let Err(e) = spinguard::loader::probe() {
        let why = match e.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) => {
                "loading eBPF programs needs root or CAP_BPF (and CAP_SYS_PTRACE for the ptrace row); try: sudo spinguard demo"
            }
            _ => "this kernel refused a trivial eBPF program",
        };
        bail!("cannot load eBPF here ({e}): {why}");
    }
    let exe = std::env::current_exe().context("where is this binary")?;
    let loader_args = [
        "__load".to_string(),
        format!("--iters={}", args.iters),
        format!("--storm-hz={}", args.storm_hz),
        "--storm=tgkill".to_string(),
        format!("--wait={}", args.wait),
    ];
    let budget = Duration::from_secs_f64(args.wait + 10.0);

    outln!(
        "spinguard demo: a program that takes the verifier ~{} ms, loaded under a {} Hz SIGPROF storm\n",
        args.iters * 12 / 10_000,
        args.storm_hz
    )?;

    outln!(
        "{:<24} {:>9} {:>9} {:>9}  result",
        "mechanism",
        "attempts",
        "time ms",
        "signals"
    )?;
    let shim = spinguard::shim::locate()?;
    let runs: [(&str, Command); 4] = [
        ("no storm (the floor)", {
            let mut c = Command::new(&exe);
            c.args(&loader_args[..2]).arg("--wait=10");
            c
        }),
        ("unguarded", {
            let mut c = Command::new(&exe);
            c.args(&loader_args);
            c
        }),
        ("LD_PRELOAD shim", {
            let mut c = Command::new(&exe);
            c.args(&loader_args).env("LD_PRELOAD", &shim);
            c
        }),
        ("spinguard run (ptrace)", {
            let mut c = Command::new(&exe);
            c.args(["run", "--mode", "ptrace", "-q", "--"])
                .arg(&exe)
                .args(&loader_args);
            c
        }),
    ];
    let mut rows = Vec::new();
    for (mechanism, mut cmd) in runs {
        // A run that breaks is a row that says so: the table is the point.
        let row = measure(mechanism, &mut cmd, budget).unwrap_or_else(|e| Row {
            mechanism,
            result: format!("error: {e:#}"),
            attempts: "-".into(),
            ms: "-".into(),
            signals: "-".into(),
        });
        outln!(
            "{:<24} {:>9} {:>9} {:>9}  {}",
            row.mechanism,
            row.attempts,
            row.ms,
            row.signals,
            row.result
        )?;
        rows.push(row);
    }
    let guarded_ok = rows[2..].iter().all(|r| r.result == "loaded");
    let bare = &rows[1];
    outln!("")?;
    if guarded_ok && bare.result != "loaded" {
        outln!(
            "Unguarded, the verifier gave up {} times in {} ms: each SIGPROF made it return EAGAIN. \
             Guarded, the signals waited until the syscall returned and the program loaded on the first try.",
            bare.attempts, bare.ms
        )?;
    } else if guarded_ok {
        outln!(
            "The unguarded load got through this time (a slow storm or a fast verifier); \
             the guarded loads worked as they should."
        )?;
    } else {
        outln!("A guarded load did not load: see the rows above. This is a spinguard bug; please report it.")?;
    }
    Ok(if guarded_ok { 0 } else { 1 })
}

fn measure(mechanism: &'static str, cmd: &mut Command, budget: Duration) -> Result<Row> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd
        .spawn()
        .with_context(|| format!("starting the {mechanism} run"))?;
    let out = wait_with_budget(child, budget)
        .with_context(|| format!("the {mechanism} run did not finish in {budget:?}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().find(|l| {
        ["loaded", "spinning", "failed"]
            .iter()
            .any(|w| l.starts_with(w))
    });
    let Some(line) = line else {
        bail!(
            "the {mechanism} run printed no result ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
        );
    };
    let field = |k: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
            .unwrap_or("?")
            .to_string()
    };
    let result = line.split_whitespace().next().unwrap_or("?").to_string();
    Ok(Row {
        mechanism,
        result: match result.as_str() {
            "spinning" => "spinning (gave up)".to_string(),
            "failed" => format!("failed ({})", field("errno")),
            _ => result,
        },
        attempts: field("attempts"),
        ms: field("ms"),
        signals: field("signals"),
    })
}

fn wait_with_budget(
    mut child: std::process::Child,
    budget: Duration,
) -> Result<std::process::Output> {
    let start = std::time::Instant::now();
    while child.try_wait()?.is_none() {
        if start.elapsed() > budget {
            let _ = child.kill();
            let _ = child.wait();
            bail!("killed after {budget:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(child.wait_with_output()?)
}
