//! Scenarios for the eBPF probe: what `spinguard watch` (host-wide) and
//! `spinguard diagnose` (one process) cost processes they only watch, side
//! by side with bpftrace running the incident's one-liners (the method
//! spinguard's probe makes a tool), how soon watch names a spinner, and how
//! soon `watch --rescue` has it loaded.
//!
//! The cost rows compare the CPU time of the watched program (what the
//! probe adds runs in its context: the tracepoint paths, the programs), not
//! its wall time, which on a shared machine mostly measures the neighbours.

use super::{cmd, field, output, wait_limit, Opts, Scenario, Variant};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// Who watches while the program runs.
#[derive(Clone, Copy)]
enum Observer {
    Nobody,
    /// `spinguard watch`: bpf(2) counted only while a thread is suspect.
    Watch,
    /// `spinguard watch --trace-always`.
    WatchAlways,
    /// bpftrace with the incident's two one-liners, host-wide.
    Bpftrace,
}

/// The incident's method: bpf(2) results and signal deliveries, host-wide.
const ONE_LINERS: &str =
    "t:syscalls:sys_exit_bpf { @[args->ret] = count(); } t:signal:signal_deliver { @sigs[args->sig] = count(); }";

/// A background observer, ended on drop (watch with SIGINT, bpftrace, which
/// may never exit under a storm, with SIGKILL).
struct Running {
    child: Child,
    kill: i32,
    /// Set when watch switched bpf(2) counting on: someone on the host was
    /// suspect while the sample ran (another engineer's spinning loader, say).
    counted: Option<Arc<AtomicBool>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if self
            .counted
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed))
        {
            eprintln!("  (note: watch counted bpf(2) calls during this sample: a suspect elsewhere on the host)");
        }
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(self.child.id() as i32, self.kill) };
        let _ = wait_limit(
            std::mem::replace(&mut self.child, Command::new("true").spawn().unwrap()),
            Duration::from_secs(30),
        );
    }
}

/// Spawns `c` with its stdout and stderr read by threads: every line, with
/// when it came, on the channel.
fn spawn_lines(mut c: Command) -> Result<(Child, mpsc::Receiver<(Instant, String)>), String> {
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().map_err(|e| format!("spawn: {e}"))?;
    let (tx, rx) = mpsc::channel();
    for r in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(r).lines().map_while(Result::ok) {
                let _ = tx.send((Instant::now(), line));
            }
        });
    }
    Ok((child, rx))
}

/// The first line on `rx` that contains `want`, by `deadline`: when it came.
fn wait_line(
    rx: &mpsc::Receiver<(Instant, String)>,
    want: &dyn Fn(&str) -> bool,
    deadline: Instant,
    what: &str,
) -> Result<Instant, String> {
    loop {
        let (at, l) = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .map_err(|_| format!("no {what}"))?;
        if want(&l) {
            return Ok(at);
        }
    }
}

/// Spawns `c` and waits until a line of its output contains `ready`.
fn start(c: Command, ready: &'static str, kill: i32) -> Result<Running, String> {
    let (child, rx) = spawn_lines(c)?;
    let counted = Arc::new(AtomicBool::new(false));
    let running = Running {
        child,
        kill,
        counted: Some(counted.clone()),
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    wait_line(&rx, &|l| l.contains(ready), deadline, ready)?;
    // Keep draining (a full pipe would stop the observer), and note when
    // watch starts counting bpf(2) calls.
    std::thread::spawn(move || {
        while let Ok((_, l)) = rx.recv() {
            if l.contains("counting bpf(2) calls") {
                counted.store(true, Ordering::Relaxed);
            }
        }
    });
    Ok(running)
}

fn observe(o: Observer, spinguard: &Path) -> Result<Option<Running>, String> {
    let watch = |extra: &[&str]| {
        let mut c = Command::new(spinguard);
        c.args(["-v", "watch"]).args(extra);
        start(c, "watching every process", libc::SIGINT).map(Some)
    };
    match o {
        Observer::Nobody => Ok(None),
        Observer::Watch => watch(&[]),
        Observer::WatchAlways => watch(&["--trace-always"]),
        Observer::Bpftrace => {
            let mut c = Command::new("bpftrace");
            c.args(["-e", ONE_LINERS]);
            start(c, "Attaching", libc::SIGKILL).map(Some)
        }
    }
}

/// `program args` run while `o` watches the host; its `key=` value.
fn observed(
    name: &'static str,
    o: Observer,
    spinguard: &Path,
    program: &Path,
    args: &[&str],
    key: &'static str,
) -> Variant {
    let (spinguard, program) = (spinguard.to_path_buf(), program.to_path_buf());
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    Variant {
        name,
        sample: Box::new(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            // "spinguard watch" is the cost while nobody on the host is
            // suspect: a sample during which another process made it count
            // bpf(2) calls (the --trace-always row's cost) is taken again,
            // up to 5 times.
            let mut attempt = 0;
            loop {
                attempt += 1;
                let observer = observe(o, &spinguard)?;
                let out = output(&mut cmd(&program, &args), Duration::from_secs(300))?;
                let counted = observer
                    .as_ref()
                    .and_then(|r| r.counted.as_ref())
                    .is_some_and(|c| c.load(Ordering::Relaxed));
                if !counted || attempt == 5 || !matches!(o, Observer::Watch) {
                    return field(&out, key);
                }
                if let Some(r) = &observer {
                    r.counted.as_ref().unwrap().store(false, Ordering::Relaxed);
                }
            }
        }),
    }
}

/// The getppid loop of syscall-loop while `spinguard diagnose` watches that
/// very process (it starts counting during the loop's 1.5 s delay).
fn diagnosed(name: &'static str, spinguard: &Path, syscall_loop: &Path, n: &str) -> Variant {
    let (spinguard, syscall_loop, n) = (
        spinguard.to_path_buf(),
        syscall_loop.to_path_buf(),
        n.to_string(),
    );
    Variant {
        name,
        sample: Box::new(move || {
            let mut target = cmd(&syscall_loop, &["--n", &n, "--delay-ms", "1500"]);
            target.stdout(Stdio::piped()).stderr(Stdio::null());
            let target = target.spawn().map_err(|e| e.to_string())?;
            let diag = Command::new(&spinguard)
                .args(["diagnose", "--for", "120s", "-p"])
                .arg(target.id().to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| e.to_string())?;
            let _d = Running {
                child: diag,
                kill: libc::SIGINT,
                counted: None,
            };
            let out = wait_limit(target, Duration::from_secs(300))?;
            field(&String::from_utf8_lossy(&out.stdout), "cpu_ns_per_call")
        }),
    }
}

/// `spinguard -v watch --json ARGS`, once its probe is in place: it, and
/// its output lines.
fn watch_json(
    spinguard: &Path,
    args: &[&str],
    deadline: Instant,
) -> Result<(Running, mpsc::Receiver<(Instant, String)>), String> {
    let mut c = Command::new(spinguard);
    c.args(["-v", "watch", "--json"]).args(args);
    let (child, rx) = spawn_lines(c)?;
    let watch = Running {
        child,
        kill: libc::SIGINT,
        counted: None,
    };
    wait_line(
        &rx,
        &|l| l.contains("watching every process"),
        deadline,
        "start line from watch",
    )?;
    Ok((watch, rx))
}

/// Milliseconds from a loader starting to spin until `spinguard watch
/// --interval I --json` (already running) reports it as livelock.
fn detection(
    name: &'static str,
    spinguard: &Path,
    loader: &Path,
    interval: &'static str,
) -> Variant {
    let (spinguard, loader) = (spinguard.to_path_buf(), loader.to_path_buf());
    Variant {
        name,
        sample: Box::new(move || {
            let deadline = Instant::now() + Duration::from_secs(120);
            let (_watch, rx) = watch_json(&spinguard, &["--interval", interval], deadline)?;
            let t0 = Instant::now();
            let mut spinner = cmd(&loader, &["--storm-hz", "1000", "--wait", "60"]);
            spinner.stdout(Stdio::null()).stderr(Stdio::null());
            let spinner = spinner.spawn().map_err(|e| e.to_string())?;
            let want = format!("\"pid\":{},", spinner.id());
            let _spinner = Running {
                child: spinner,
                kill: libc::SIGKILL,
                counted: None,
            };
            let at = wait_line(
                &rx,
                &|l| l.contains(&want) && l.contains("\"verdict\":\"livelock\""),
                deadline,
                "livelock report of the spinner",
            )?;
            Ok((at - t0).as_secs_f64() * 1000.0)
        }),
    }
}

/// The rescue scenario's program: ~360 ms to verify, so that a storm that
/// falls behind on a busy machine (the Go loader's storm goroutine does) never
/// leaves a gap long enough for the loader to get through by itself.
const RESCUE_ITERS: &str = "300000";

/// Milliseconds from `watch --rescue` naming a spinning loader livelocked
/// to the loader's first successful load (the `load_ms` of its `loaded`
/// rescue document, measured by watch from the end of the interval that
/// named it). The rescue is confined to a cgroup of the bench's own: other
/// loaders may spin on this host.
fn rescued(name: &'static str, spinguard: &Path, loader: &Path) -> Variant {
    let (spinguard, loader) = (spinguard.to_path_buf(), loader.to_path_buf());
    Variant {
        name,
        sample: Box::new(move || {
            let cg = super::cgroup::Cgroup::new("bench");
            let deadline = Instant::now() + Duration::from_secs(120);
            let (_watch, rx) = watch_json(
                &spinguard,
                &["--interval", "1s", "--rescue", "--linger", "1s"]
                    .into_iter()
                    .chain(["--rescue-cgroup", cg.name.as_str()])
                    .collect::<Vec<_>>(),
                deadline,
            )?;
            let mut spinner = cmd(&loader, &["--storm-hz", "1000", "--wait", "60"]);
            spinner
                .args(["--iters", RESCUE_ITERS])
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let spinner = spinner.spawn().map_err(|e| e.to_string())?;
            cg.add(spinner.id() as i32);
            let want = format!("\"pid\":{},", spinner.id());
            let _spinner = Running {
                child: spinner,
                kill: libc::SIGKILL,
                counted: None,
            };
            let (tx, got) = mpsc::channel();
            wait_line(
                &rx,
                &|l| {
                    let hit = l.contains(&want) && l.contains("\"outcome\":\"loaded\"");
                    if hit {
                        let _ = tx.send(l.to_string());
                    }
                    hit
                },
                deadline,
                "loaded rescue of the spinner",
            )?;
            let doc = got.recv().map_err(|e| e.to_string())?;
            let v: serde_json::Value = serde_json::from_str(&doc).map_err(|e| e.to_string())?;
            v["load_ms"]
                .as_f64()
                .ok_or_else(|| format!("no load_ms in {doc}"))
        }),
    }
}

pub fn scenarios(o: &Opts, spinguard: PathBuf, example: impl Fn(&str) -> PathBuf) -> Vec<Scenario> {
    let reps = o.reps;
    let syscall_loop = example("syscall-loop");
    let burn = example("cpu-burn");
    let loader = example("rust-loader");
    let nulls = if o.quick { "500000" } else { "5000000" };
    let lookups = if o.quick { "50000" } else { "500000" };
    let sg = spinguard.as_path();
    let host = |prog: &Path, args: &[&str], key: &'static str| {
        vec![
            observed("nothing watching", Observer::Nobody, sg, prog, args, key),
            observed("spinguard watch", Observer::Watch, sg, prog, args, key),
            observed(
                "spinguard watch --trace-always",
                Observer::WatchAlways,
                sg,
                prog,
                args,
                key,
            ),
            observed(
                "bpftrace, the 2 one-liners host-wide",
                Observer::Bpftrace,
                sg,
                prog,
                args,
                key,
            ),
        ]
    };
    vec![
        Scenario {
            title: "watching the host: null syscall loop (getppid), no bpf calls",
            unit: "CPU ns per call",
            goal: "spinguard watch at most 1.01x, no worse than bpftrace (--trace-always and bpftrace pay the syscall-tracepoint path on every syscall)",
            reps,
            difference: false,
            variants: host(&syscall_loop, &["--n", nulls], "cpu_ns_per_call"),
        },
        Scenario {
            title: "watching the host: 4 CPU-bound threads, SIGPROF 1 kHz per thread",
            unit: "CPU ms",
            goal: "spinguard watch at most 1.02x (the signal tracepoints fire on every signal), no worse than bpftrace",
            reps,
            difference: false,
            variants: host(&burn, &[], "cpu_ms"),
        },
        Scenario {
            title: "watching the host: BPF_MAP_LOOKUP_ELEM loop",
            unit: "CPU ns per lookup",
            goal: "spinguard watch at most 1.10x, no worse than bpftrace",
            reps,
            difference: false,
            variants: host(
                &syscall_loop,
                &["--call", "map-lookup", "--n", lookups],
                "cpu_ns_per_call",
            ),
        },
        Scenario {
            title: "a target under diagnose: null syscall loop (getppid)",
            unit: "CPU ns per call",
            goal: "at most 1.02x (the ptrace diagnose: 136x-422x); no worse than bpftrace",
            reps,
            difference: false,
            variants: vec![
                observed(
                    "not diagnosed",
                    Observer::Nobody,
                    sg,
                    &syscall_loop,
                    &["--n", nulls, "--delay-ms", "1500"],
                    "cpu_ns_per_call",
                ),
                diagnosed("spinguard diagnose -p PID", sg, &syscall_loop, nulls),
                observed(
                    "bpftrace, the 2 one-liners host-wide",
                    Observer::Bpftrace,
                    sg,
                    &syscall_loop,
                    &["--n", nulls, "--delay-ms", "1500"],
                    "cpu_ns_per_call",
                ),
            ],
        },
        Scenario {
            title: "watch: detection latency (a loader starts spinning under a 1 kHz storm)",
            unit: "ms until named livelock",
            goal: "within 2 intervals",
            reps,
            difference: false,
            variants: vec![
                detection("--interval 1s", sg, &loader, "1s"),
                detection("--interval 200ms", sg, &loader, "200ms"),
            ],
        },
        Scenario {
            title: "watch --rescue: detection to loaded (a loader spinning under a 1 kHz storm)",
            unit: "ms",
            goal: "the verification time (the floor) plus a few ms for the attach",
            reps,
            difference: false,
            variants: {
                let floor = |name, l: &Path| {
                    let l = l.to_path_buf();
                    Variant {
                        name,
                        sample: Box::new(move || {
                            let out = output(
                                &mut cmd(&l, &["--wait", "10", "--iters", RESCUE_ITERS]),
                                Duration::from_secs(60),
                            )?;
                            field(&out, "ms")
                        }),
                    }
                };
                let mut v = vec![
                    floor("Rust loader, no storm: the load itself (floor)", &loader),
                    rescued("watch --rescue, Rust loader", sg, &loader),
                ];
                if let Ok(go) = std::panic::catch_unwind(super::loaders::go_loader) {
                    v.push(floor("Go loader (cilium/ebpf 0.9.1), no storm: its load", &go));
                    v.push(rescued("watch --rescue, Go loader", sg, &go));
                }
                v
            },
        },
    ]
}
