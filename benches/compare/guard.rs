//! Scenarios for the guard: the shim, `run` (both engines) and `attach`
//! against native runs and strace: loads under a storm, what a guarded
//! process pays between loads (getppid, map lookups, signals), how soon
//! attach rescues a spinner, and exec-heavy work under the default `run`.
//! The probe's scenarios (watch, diagnose, watch --rescue) are in
//! observers.rs; the driver that runs them all is compare.rs.

use super::{
    bin, cmd, example, field, loaded_ms, loaders, output, under_run, under_strace, wait_limit,
    with_shim, Opts, Scenario, Variant,
};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Starts `program` (which must wait for its tracer or spin), attaches
/// `spinguard attach` after `settle`, and returns the program's stdout plus the
/// time from the attach to the program's exit.
fn attached(program: &Path, args: &[&str], settle: Duration) -> Result<(String, f64), String> {
    let mut target = cmd(program, args);
    target.stdout(Stdio::piped()).stderr(Stdio::null());
    let target = target.spawn().map_err(|e| format!("spawn: {e}"))?;
    std::thread::sleep(settle);
    let t0 = Instant::now();
    let mut attach = Command::new(bin("spinguard"));
    attach
        .args(["attach", "-q", "--for", "120s"])
        .arg(target.id().to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let attach = attach.spawn().map_err(|e| format!("spawn attach: {e}"))?;
    let out = wait_limit(target, Duration::from_secs(120));
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    // SAFETY: plain kill of our own child.
    unsafe { libc::kill(attach.id() as i32, libc::SIGINT) };
    let a = wait_limit(attach, Duration::from_secs(10))?;
    let out = out?;
    if !a.status.success() {
        return Err(format!(
            "attach failed: {}",
            String::from_utf8_lossy(&a.stderr).trim()
        ));
    }
    Ok((String::from_utf8_lossy(&out.stdout).into_owned(), ms))
}

/// How a variant starts its program.
#[derive(Clone, Copy)]
enum Via {
    Native,
    Shim,
    /// `spinguard run --mode ptrace`: the default engine, the seccomp filter.
    Run,
    /// `spinguard run --mode ptrace --engine signal`.
    RunSignal,
    /// `spinguard run` (auto: the shim, following every exec)
    RunAuto,
    Strace,
}

/// What a variant reads from the program's output.
#[derive(Clone, Copy)]
enum Metric {
    /// The loader's `ms=` of a load that must have succeeded.
    LoadedMs,
    /// Any `key=` number.
    Field(&'static str),
    /// Milliseconds from start to exit.
    WallMs,
    /// CPU milliseconds (user + system) of the program and everything it
    /// waited for: what the work cost, whatever else the machine runs.
    CpuMs,
}

/// User + system CPU milliseconds of every child this process has waited for
/// (and of what they waited for), so far.
fn children_cpu_ms() -> f64 {
    // SAFETY: a zeroed rusage is a valid out-parameter.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes one rusage.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let ms = |t: libc::timeval| t.tv_sec as f64 * 1000.0 + t.tv_usec as f64 / 1000.0;
    ms(ru.ru_utime) + ms(ru.ru_stime)
}

/// A variant that runs `program args` the `via` way and reads `metric`.
fn variant(name: &'static str, via: Via, program: &Path, args: &[&str], metric: Metric) -> Variant {
    let program = program.to_path_buf();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    Variant {
        name,
        sample: Box::new(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let mut c = match via {
                Via::Native => cmd(&program, &args),
                Via::Shim => with_shim(&program, &args),
                Via::Run => under_run("seccomp", &program, &args),
                Via::RunSignal => under_run("signal", &program, &args),
                Via::RunAuto => {
                    let mut c = Command::new(bin("spinguard"));
                    c.args(["run", "-q", "--"]).arg(&program).args(&args);
                    c
                }
                Via::Strace => under_strace(&program, &args),
            };
            let cpu0 = children_cpu_ms();
            let t0 = Instant::now();
            let out = output(&mut c, Duration::from_secs(300))?;
            let wall = t0.elapsed().as_secs_f64() * 1000.0;
            match metric {
                Metric::LoadedMs => loaded_ms(&out),
                Metric::Field(key) => field(&out, key),
                Metric::WallMs => Ok(wall),
                Metric::CpuMs => Ok(children_cpu_ms() - cpu0),
            }
        }),
    }
}

/// A variant that starts `program args` and attaches to it after `settle`:
/// `Some(key)` reads `key=` from its output, `None` times attach-to-exit of a
/// load that must have succeeded.
fn attach_variant(
    name: &'static str,
    program: &Path,
    args: &[&str],
    settle: Duration,
    key: Option<&'static str>,
) -> Variant {
    let program = program.to_path_buf();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    Variant {
        name,
        sample: Box::new(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let (out, ms) = attached(&program, &args, settle)?;
            match key {
                Some(k) => field(&out, k),
                None => loaded_ms(&out).map(|_| ms),
            }
        }),
    }
}

pub fn scenarios(o: &Opts) -> Vec<Scenario> {
    let reps = o.reps;
    let loader = example("rust-loader");
    let syscall_loop = example("syscall-loop");
    let burn = example("cpu-burn");
    let storm = ["--storm-hz", "1000", "--wait", "30"];
    let lookups: u64 = if o.quick { 50_000 } else { 500_000 };
    let nulls: u64 = if o.quick { 500_000 } else { 5_000_000 };
    let ns = Metric::Field("ns_per_call");
    let mut v = Vec::new();

    // 1. The point of it all: a guarded load under a storm vs the floor.
    v.push(Scenario {
        title: "load under a 1 kHz SIGPROF storm (Rust loader, 120 ms program)",
        unit: "ms to load",
        goal: "each guarded row at most 1.05x the unguarded no-storm floor; attach is timed from the attach, so it includes seizing the threads",
        reps,
        difference: false,
        variants: vec![
            variant("unguarded, no storm (floor)", Via::Native, &loader, &[], Metric::LoadedMs),
            variant("LD_PRELOAD shim, storm", Via::Shim, &loader, &storm, Metric::LoadedMs),
            variant("spinguard run, storm", Via::Run, &loader, &storm, Metric::LoadedMs),
            variant(
                "spinguard run --engine signal, storm",
                Via::RunSignal,
                &loader,
                &storm,
                Metric::LoadedMs,
            ),
            attach_variant(
                "spinguard attach (spinning), storm",
                &loader,
                &storm,
                Duration::from_millis(300),
                None,
            ),
        ],
    });

    // 2. The static Go loader on cilium/ebpf 0.9.1: the incident itself.
    if let Ok(go) = std::panic::catch_unwind(loaders::go_loader) {
        v.push(Scenario {
            title: "static Go loader (cilium/ebpf 0.9.1) under a 1 kHz storm",
            unit: "ms to load",
            goal: "run at most 1.05x the unguarded no-storm floor",
            reps,
            difference: false,
            variants: vec![
                variant(
                    "unguarded, no storm (floor)",
                    Via::Native,
                    &go,
                    &[],
                    Metric::LoadedMs,
                ),
                variant(
                    "spinguard run, storm",
                    Via::Run,
                    &go,
                    &storm,
                    Metric::LoadedMs,
                ),
                variant(
                    "spinguard run --engine signal, storm",
                    Via::RunSignal,
                    &go,
                    &storm,
                    Metric::LoadedMs,
                ),
            ],
        });
    }

    // 3. Map lookups: the bpf() calls agents make all day must never stop.
    // CPU time (user + system of the program, the tracer's excluded: between
    // loads it has nothing to do) rather than wall time, which the other
    // work on a shared machine makes swing by 2x from run to run.
    let cpu = Metric::Field("cpu_ns_per_call");
    let n = lookups.to_string();
    let strace_n = (lookups / 10).to_string();
    let lookup = ["--call", "map-lookup", "--n", &n];
    v.push(Scenario {
        title: "BPF_MAP_LOOKUP_ELEM loop",
        unit: "CPU ns per lookup, the program's own",
        goal: "run at most 1.05x native; \"the filter alone\" is the floor any bpf-command filter costs (strace --seccomp-bpf -e trace=bpf stops on every lookup; measured on a tenth of the calls); run --engine signal and attach between loads at most 1.05x native",
        reps,
        difference: false,
        variants: vec![
            variant("native", Via::Native, &syscall_loop, &lookup, cpu),
            variant(
                "the filter alone, no tracer",
                Via::Native,
                &syscall_loop,
                &["--call", "map-lookup", "--n", &n, "--seccomp-floor"],
                cpu,
            ),
            variant("spinguard run", Via::Run, &syscall_loop, &lookup, cpu),
            variant(
                "spinguard run --engine signal",
                Via::RunSignal,
                &syscall_loop,
                &lookup,
                cpu,
            ),
            attach_variant(
                "spinguard attach (between loads)",
                &syscall_loop,
                &["--call", "map-lookup", "--n", &n, "--wait-traced"],
                Duration::from_millis(50),
                Some("cpu_ns_per_call"),
            ),
            variant(
                "strace --seccomp-bpf -e trace=bpf",
                Via::Strace,
                &syscall_loop,
                &["--call", "map-lookup", "--n", &strace_n],
                cpu,
            ),
        ],
    });

    // 4. The null syscall: the floor any seccomp filter costs.
    let n = nulls.to_string();
    let null = ["--n", n.as_str()];
    v.push(Scenario {
        title: "null syscall loop (getppid)",
        unit: "CPU ns per call, the program's own",
        goal: "run no worse than strace --seccomp-bpf (both pay the seccomp filter); run --engine signal and attach (no filter, no syscall stop between loads) at most 1.05x native",
        reps,
        difference: false,
        variants: vec![
            variant("native", Via::Native, &syscall_loop, &null, cpu),
            variant("LD_PRELOAD shim", Via::Shim, &syscall_loop, &null, cpu),
            variant("spinguard run", Via::Run, &syscall_loop, &null, cpu),
            variant(
                "spinguard run --engine signal",
                Via::RunSignal,
                &syscall_loop,
                &null,
                cpu,
            ),
            variant("strace --seccomp-bpf -e trace=bpf", Via::Strace, &syscall_loop, &null, cpu),
            attach_variant(
                "spinguard attach (between loads)",
                &syscall_loop,
                &["--n", &n, "--wait-traced"],
                Duration::from_millis(50),
                Some("cpu_ns_per_call"),
            ),
        ],
    });

    // 5. Signals: under ptrace every delivered signal is a stop.
    let ms = Metric::Field("ms");
    v.push(Scenario {
        title: "4 CPU-bound threads, SIGPROF 1 kHz per thread",
        unit: "ms",
        goal: "run at most 1.05x native",
        reps,
        difference: false,
        variants: vec![
            variant("native", Via::Native, &burn, &[], ms),
            variant("spinguard run", Via::Run, &burn, &[], ms),
            variant(
                "spinguard run --engine signal",
                Via::RunSignal,
                &burn,
                &[],
                ms,
            ),
            variant(
                "strace --seccomp-bpf -e trace=bpf",
                Via::Strace,
                &burn,
                &[],
                ms,
            ),
        ],
    });

    // 6. What the shim adds to every syscall() it passes through.
    let n = (nulls * 2).to_string();
    let null = ["--n", n.as_str()];
    v.push(Scenario {
        title: "shim pass-through cost per syscall() call",
        unit: "ns per getppid call",
        goal: "shim minus native at most 5 ns",
        reps: reps.max(15),
        difference: true,
        variants: vec![
            variant("native", Via::Native, &syscall_loop, &null, ns),
            variant("LD_PRELOAD shim", Via::Shim, &syscall_loop, &null, ns),
        ],
    });

    // 7. Exec-heavy work under the default run: the shim is loaded into every
    // process and its exec hooks decide for every exec.
    let execs = if o.quick { 200 } else { 1000 };
    let script =
        format!("i=0; while [ $i -lt {execs} ]; do sh -c true; i=$((i+1)); done; echo done");
    let sh = Path::new("/bin/sh");
    for (title, unit, metric) in [
        (
            "exec-heavy: `sh -c true` in a loop, CPU",
            "CPU ms (user+sys) for the loop",
            Metric::CpuMs,
        ),
        (
            "exec-heavy: `sh -c true` in a loop, wall",
            "ms for the loop",
            Metric::WallMs,
        ),
    ] {
        v.push(Scenario {
            title,
            unit,
            goal: "spinguard run (the shim in every process, deciding every exec) at most 1.10x native",
            reps,
            difference: false,
            variants: vec![
                variant("native", Via::Native, sh, &["-c", &script], metric),
                variant("spinguard run", Via::RunAuto, sh, &["-c", &script], metric),
            ],
        });
    }

    // 8. attach's rescue: how long after the attach a spinning loader loads,
    // beyond what its load takes without a storm.
    v.push(Scenario {
        title: "attach: time to rescue a spinning loader (Rust loader, 120 ms program)",
        unit: "ms",
        goal: "attach at most the no-storm verification time + 20 ms (the difference column)",
        reps,
        difference: true,
        variants: vec![
            variant(
                "unguarded, no storm (floor)",
                Via::Native,
                &loader,
                &[],
                Metric::LoadedMs,
            ),
            attach_variant(
                "attach to the spinning loader, storm",
                &loader,
                &storm,
                Duration::from_millis(300),
                None,
            ),
        ],
    });

    // 9. attach to a big process: how long until every thread is guarded.
    let t = syscall_loop.clone();
    v.push(Scenario {
        title: "attach to a 100-thread process",
        unit: "ms until every thread is seized",
        goal: "reported, no goal",
        reps,
        difference: false,
        variants: vec![Variant {
            name: "spinguard attach",
            sample: Box::new(move || attach_time(&t)),
        }],
    });
    v
}

/// Time `spinguard attach -v` reports for seizing every thread of a
/// 100-thread process (its "seized N threads … in X ms" line).
fn attach_time(syscall_loop: &Path) -> Result<f64, String> {
    let mut target = cmd(
        syscall_loop,
        &["--threads", "100", "--forever", "--call", "getppid"],
    );
    target.stdout(Stdio::null());
    let mut target = target.spawn().map_err(|e| e.to_string())?;
    std::thread::sleep(Duration::from_millis(300));
    let attach = Command::new(bin("spinguard"))
        .args(["attach", "-v", "--for", "1s"])
        .arg(target.id().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn();
    let out = attach
        .map_err(|e| e.to_string())
        .and_then(|a| wait_limit(a, Duration::from_secs(60)));
    let _ = target.kill();
    let _ = target.wait();
    let out = out?;
    let err = String::from_utf8_lossy(&out.stderr);
    err.lines()
        .find(|l| l.contains("seized"))
        .and_then(|l| {
            let i = l.find(" in ")?;
            l[i + 4..].split_whitespace().next()?.parse().ok()
        })
        .ok_or_else(|| format!("no 'seized … in X ms' line from attach -v: {err}"))
}
