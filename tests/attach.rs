//! `spinguard attach PID` on real processes and a real kernel: a loader
//! spinning under a 1 kHz SIGPROF storm (the static Go one on cilium/ebpf
//! 0.9.1, and the Rust one) loads soon after the attach; every thread's
//! signal mask is the same after a detach as before, also mid-storm and with
//! unusual masks; fifty attach/detach cycles leave a busy process running;
//! a stopped process stays stopped; each refusal says why.

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use support::*;

const TIMEOUT: Duration = Duration::from_secs(60);

/// Generous room over the no-storm load time on this shared 2-core machine
/// (the 200 ms goal is measured by `cargo bench --bench compare`, not here).
const RESCUE_SLACK: Duration = Duration::from_secs(5);

fn attach_cmd(args: &[&str], pid: i32) -> Command {
    let mut c = Command::new(spinguard_bin());
    c.arg("attach").args(args).arg(pid.to_string());
    c
}

/// utime + stime of the whole process, in clock ticks.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime); `rest` starts at field 3.
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn process_state(pid: i32) -> String {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rfind(')')
        .map(|i| stat[i + 2..i + 3].to_string())
        .unwrap_or_default()
}

/// The loader's load time without a storm, in ms (its `ms=` field).
fn no_storm_ms(loader: &Path) -> u64 {
    let out = run_timeout(Command::new(loader).args(["--wait", "10"]), TIMEOUT);
    let l = LoaderLine::parse(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(l.result, "loaded", "{}", describe(&out));
    l.get("ms").expect("ms=")
}

/// Starts `loader` spinning under a 1 kHz storm, attaches after 0.5 s, and
/// checks that it loads within its no-storm time plus RESCUE_SLACK.
fn rescue(loader: &Path, extra: &[&str]) {
    let floor = no_storm_ms(loader);
    let mut cmd = Command::new(loader);
    cmd.args(["--storm-hz", "1000", "--wait", "30"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let target = spawn_guarded(&mut cmd);
    let pid = target.pid();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !Path::new(&format!("/proc/{pid}/task")).exists() || process_state(pid) != "Z",
        "the loader ended before the attach: it was not spinning"
    );
    let t0 = Instant::now();
    let attach = spawn_guarded(
        attach_cmd(&["-v", "--for", "60s"], pid)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let out = wait_timeout(target, TIMEOUT, "the loader under attach");
    let since_attach = t0.elapsed();
    let a = wait_timeout(attach, TIMEOUT, "spinguard attach");
    let line = LoaderLine::parse(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(
        line.result,
        "loaded",
        "the loader still spun after the attach\nloader: {}\nattach: {}",
        describe(&out),
        describe(&a)
    );
    assert!(
        since_attach <= Duration::from_millis(floor) + RESCUE_SLACK,
        "loaded {since_attach:?} after the attach; no-storm load takes {floor} ms\nattach: {}",
        describe(&a)
    );
    let err = String::from_utf8_lossy(&a.stderr);
    assert!(a.status.success(), "attach: {}", describe(&a));
    assert!(err.contains("seized "), "no seize line: {err}");
    assert!(
        err.contains("BPF_PROG_LOAD verified in"),
        "attach did not report the rescued load: {err}"
    );
    eprintln!(
        "rescued {} {extra:?} {:.0} ms after the attach (no-storm load {floor} ms): {}",
        loader.display(),
        since_attach.as_secs_f64() * 1000.0,
        line.line
    );
}

#[test]
fn attach_rescues_the_spinning_go_loader() {
    require_privileged!();
    let _s = serial();
    rescue(&go_loader(), &[]);
}

#[test]
fn attach_rescues_the_spinning_rust_loader_one_and_four_threads() {
    require_privileged!();
    let _s = serial();
    let loader = example_bin("rust-loader");
    rescue(&loader, &[]);
    rescue(&loader, &["--threads", "4"]);
}

/// Starts mask-threads and waits for its `ready` line.
fn mask_threads(args: &[&str]) -> GroupGuard {
    let mut g = spawn_guarded(
        Command::new(example_bin("mask-threads"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit()),
    );
    let mut line = String::new();
    BufReader::new(g.child.stdout.take().unwrap())
        .read_line(&mut line)
        .expect("read ready line");
    assert!(line.starts_with("ready "), "mask-threads said {line:?}");
    g
}

#[test]
fn masks_are_exactly_restored_after_each_detach_mid_storm() {
    require_privileged!();
    let _s = serial();
    let target = mask_threads(&["--threads", "6", "--storm-hz", "1000"]);
    let pid = target.pid();
    let before = task_field(pid, "SigBlk");
    let distinct: std::collections::BTreeSet<_> = before.values().collect();
    assert!(distinct.len() >= 6, "expected unusual masks: {before:?}");
    let mut guarded = 0;
    for round in 0..10 {
        let out = run_timeout(&mut attach_cmd(&["-v", "--for", "150ms"], pid), TIMEOUT);
        assert!(out.status.success(), "round {round}: {}", describe(&out));
        guarded += String::from_utf8_lossy(&out.stderr)
            .matches("BPF_PROG_LOAD verified")
            .count();
        // A loading thread takes the storm's SIGPROF in a handler, which
        // runs with SIGPROF blocked (no SA_NODEFER): a read in those
        // microseconds shows the bit (seen once in CI, on thread 0, whose
        // own mask is empty). So the masks are read again until they match,
        // for at most 1 s; a mask the detach left changed stays changed.
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut after = task_field(pid, "SigBlk");
        while after != before && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
            after = task_field(pid, "SigBlk");
        }
        assert_eq!(
            before,
            after,
            "round {round}: masks changed\n{}",
            describe(&out)
        );
        assert_eq!(
            task_field(pid, "TracerPid")
                .values()
                .filter(|v| *v != "0")
                .count(),
            0,
            "round {round}: a thread is still traced"
        );
    }
    // Otherwise the test proved nothing about masks held during loads.
    assert!(
        guarded >= 10,
        "only {guarded} loads were guarded in 10 attaches"
    );
}

#[test]
fn fifty_attach_detach_cycles_leave_a_busy_process_running() {
    require_privileged!();
    let _s = serial();
    let target = spawn_guarded(
        Command::new(example_bin("syscall-loop"))
            .args(["--threads", "8", "--forever"])
            .stdout(Stdio::null()),
    );
    let pid = target.pid();
    std::thread::sleep(Duration::from_millis(200));
    let threads = task_field(pid, "State").len();
    assert_eq!(threads, 9, "syscall-loop --threads 8 has 9 threads");
    for round in 0..50 {
        let out = run_timeout(&mut attach_cmd(&["-v", "--for", "20ms"], pid), TIMEOUT);
        assert!(out.status.success(), "round {round}: {}", describe(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("seized 9 threads"), "round {round}: {err}");
        let states = task_field(pid, "State");
        assert_eq!(states.len(), 9, "round {round}: threads died: {states:?}");
        for (tid, s) in &states {
            assert!(
                !s.starts_with('T') && !s.starts_with('t'),
                "round {round}: thread {tid} left stopped ({s})\n{err}"
            );
        }
    }
    let t0 = cpu_ticks(pid);
    std::thread::sleep(Duration::from_millis(300));
    let t1 = cpu_ticks(pid);
    assert!(t1 > t0, "no CPU time in 300 ms after the cycles: stuck");
}

#[test]
fn cycles_never_fail_a_load_of_a_loader_that_does_not_retry() {
    require_privileged!();
    let _s = serial();
    // syscall-loop exits on the first error: an EAGAIN caused by our
    // interrupt at the seize, or by a detach at a bpf entry, would end it.
    let mut target = spawn_guarded(
        Command::new(example_bin("syscall-loop"))
            .args(["--call", "prog-load", "--forever"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    let pid = target.pid();
    std::thread::sleep(Duration::from_millis(100));
    for round in 0..30 {
        let out = run_timeout(&mut attach_cmd(&["--for", "20ms"], pid), TIMEOUT);
        assert!(out.status.success(), "round {round}: {}", describe(&out));
        if let Some(status) = target.child.try_wait().expect("try_wait") {
            let mut err = String::new();
            use std::io::Read;
            let _ = target.child.stderr.take().unwrap().read_to_string(&mut err);
            panic!("round {round}: the loader ended ({status}): {err}");
        }
    }
}

#[test]
fn a_stopped_process_stays_stopped_and_continues_later() {
    require_privileged!();
    let _s = serial();
    let target = spawn_guarded(
        Command::new(example_bin("syscall-loop"))
            .args(["--threads", "2", "--forever"])
            .stdout(Stdio::null()),
    );
    let pid = target.pid();
    std::thread::sleep(Duration::from_millis(100));
    // SAFETY: signals to our own child.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(process_state(pid), "T");
    let out = run_timeout(&mut attach_cmd(&["--for", "200ms"], pid), TIMEOUT);
    assert!(out.status.success(), "{}", describe(&out));
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(process_state(pid), "T", "a stopped process was resumed");
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    std::thread::sleep(Duration::from_millis(100));
    let t0 = cpu_ticks(pid);
    std::thread::sleep(Duration::from_millis(300));
    assert!(cpu_ticks(pid) > t0, "no progress after SIGCONT");
    for (tid, s) in task_field(pid, "State") {
        assert!(!s.starts_with('T') && !s.starts_with('t'), "{tid}: {s}");
    }
}

#[test]
fn sigint_detaches_from_an_idle_process() {
    require_privileged!();
    let _s = serial();
    let target = spawn_guarded(Command::new("sleep").arg("30"));
    let pid = target.pid();
    std::thread::sleep(Duration::from_millis(100));
    let attach = spawn_guarded(
        attach_cmd(&["-v"], pid)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(attach.pid(), libc::SIGINT) };
    let out = wait_timeout(attach, Duration::from_secs(10), "attach after SIGINT");
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("got SIGINT"),
        "{}",
        describe(&out)
    );
    assert_eq!(
        task_field(pid, "TracerPid").get(&pid).map(String::as_str),
        Some("0")
    );
    assert_eq!(process_state(pid), "S", "sleep should be sleeping again");
}

/// `syscall-loop --threads N --forever`: N threads calling getppid nonstop.
/// Returns once all N + 1 threads are listed.
fn busy_threads(n: usize) -> GroupGuard {
    let target = spawn_guarded(
        Command::new(example_bin("syscall-loop"))
            .args(["--threads", &n.to_string(), "--forever"])
            .stdout(Stdio::null()),
    );
    let pid = target.pid();
    let deadline = Instant::now() + Duration::from_secs(10);
    while task_field(pid, "State").len() < n + 1 {
        assert!(
            Instant::now() < deadline,
            "syscall-loop did not start {n} threads"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    target
}

/// Every one of `threads` threads is still there, untraced, not stopped, and
/// the process makes progress.
fn left_running(pid: i32, threads: usize, log: &str) {
    let states = task_field(pid, "State");
    assert_eq!(states.len(), threads, "threads died: {states:?}\n{log}");
    for (tid, s) in &states {
        assert!(
            !s.starts_with('T') && !s.starts_with('t'),
            "thread {tid} left stopped ({s})\n{log}"
        );
    }
    for (tid, tracer) in task_field(pid, "TracerPid") {
        assert_eq!(tracer, "0", "thread {tid} still traced\n{log}");
    }
    let t0 = cpu_ticks(pid);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        cpu_ticks(pid) > t0,
        "no CPU time in 300 ms after the detach\n{log}"
    );
}

/// waitpid(-1) always reports the first ready tracee on the tracer's list,
/// and a thread in a getppid loop under PTRACE_SYSCALL is ready again at
/// once: without fair reaping the other threads' first stops were never
/// reported, the seize never ended (30 threads were enough on 2 cores) and
/// neither --for nor SIGTERM was noticed.
#[test]
fn attach_to_64_busy_threads_seizes_them_all_and_detaches_on_for() {
    require_privileged!();
    let _s = serial();
    let target = busy_threads(64);
    let pid = target.pid();
    let out = run_timeout(
        &mut attach_cmd(&["-v", "--for", "1s"], pid),
        Duration::from_secs(30),
    );
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{}", describe(&out));
    assert!(err.contains("seized 65 threads"), "{err}");
    assert!(err.contains("(--for ran out): 65 threads"), "{err}");
    left_running(pid, 65, &err);
    eprintln!("{err}");
}

#[test]
fn sigterm_detaches_from_64_busy_threads() {
    require_privileged!();
    let _s = serial();
    let target = busy_threads(64);
    let pid = target.pid();
    let mut attach = spawn_guarded(
        attach_cmd(&["-v"], pid)
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    // Read stderr as it comes: the seize line, then the rest after the exit.
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = attach.child.stderr.take().expect("piped stderr");
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line.clone());
            all += &line;
            all.push('\n');
        }
        all
    });
    let seized = rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("no line from attach in 30 s ({e}): the seize did not end"));
    assert!(seized.contains("seized 65 threads"), "{seized}");
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(attach.pid(), libc::SIGTERM) };
    let out = wait_timeout(attach, Duration::from_secs(30), "attach after SIGTERM");
    let err = reader.join().expect("stderr reader");
    assert!(out.status.success(), "{}\n{err}", describe(&out));
    assert!(err.contains("(got SIGTERM): 65 threads"), "{err}");
    left_running(pid, 65, &err);
    eprintln!("{err}");
}

/// A SIGTERM that comes while the threads are still being seized ends the
/// seize there: whatever was seized is let go, nothing is left stopped or
/// traced. It is sent the moment the leader (seized first) is traced, while
/// the other 64 are being seized; whether a round really ends mid-seize
/// depends on timing (the log says which), the outcome must not.
#[test]
fn sigterm_during_the_seize_of_busy_threads_lets_go_of_them_all() {
    require_privileged!();
    let _s = serial();
    let target = busy_threads(64);
    let pid = target.pid();
    let mut mid_seize = 0;
    for round in 0..5 {
        let mut attach = spawn_guarded(
            attach_cmd(&["-v"], pid)
                .stdout(Stdio::null())
                .stderr(Stdio::piped()),
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while task_field(pid, "TracerPid").get(&pid).map(String::as_str) == Some("0") {
            if let Some(status) = attach.child.try_wait().expect("try_wait") {
                panic!("round {round}: attach ended before tracing anything ({status})");
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: not traced in 30 s"
            );
        }
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(attach.pid(), libc::SIGTERM) };
        let out = wait_timeout(attach, Duration::from_secs(30), "attach after SIGTERM");
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "round {round}: {}", describe(&out));
        assert!(err.contains("(got SIGTERM)"), "round {round}: {err}");
        if err.contains("asked to stop before the seize was complete") {
            mid_seize += 1;
        }
        left_running(pid, 65, &format!("round {round}: {err}"));
    }
    eprintln!("{mid_seize} of 5 rounds ended during the seize");
}

fn refused(out: &Output, words: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{}", describe(out));
    for w in words {
        assert!(err.contains(w), "expected {w:?} in: {}", describe(out));
    }
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
}

#[test]
fn refusals_say_why() {
    // No such process (above any pid_max).
    let out = run_timeout(&mut attach_cmd(&[], 2_147_483_647), TIMEOUT);
    refused(&out, &["no process with pid 2147483647"]);

    // Ourselves: the shell's pid becomes spinguard's through exec.
    let out = run_timeout(
        Command::new("sh")
            .arg("-c")
            .arg(format!("exec '{}' attach $$", spinguard_bin().display())),
        TIMEOUT,
    );
    refused(&out, &["is spinguard itself"]);

    // A zombie: our own child, not yet reaped.
    let mut z = Command::new("true").spawn().expect("spawn true");
    let zpid = z.id() as i32;
    let deadline = Instant::now() + Duration::from_secs(10);
    while process_state(zpid) != "Z" && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let out = run_timeout(&mut attach_cmd(&[], zpid), TIMEOUT);
    let _ = z.wait();
    refused(&out, &["is a zombie", &format!("{}", std::process::id())]);
}

#[test]
fn already_traced_names_the_tracer() {
    require_privileged!();
    let _s = serial();
    let target = spawn_guarded(Command::new("sleep").arg("30"));
    let pid = target.pid();
    let first = spawn_guarded(
        attach_cmd(&["--for", "30s"], pid)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while task_field(pid, "TracerPid").get(&pid).map(String::as_str) == Some("0")
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    let out = run_timeout(&mut attach_cmd(&[], pid), TIMEOUT);
    refused(
        &out,
        &[
            "already traced by pid",
            &first.pid().to_string(),
            "(spinguard)",
        ],
    );
    // The first one is unharmed by the refusal and still detaches cleanly.
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(first.pid(), libc::SIGTERM) };
    let out = wait_timeout(first, Duration::from_secs(10), "first attach");
    assert!(out.status.success(), "{}", describe(&out));
}

#[test]
fn not_permitted_as_nobody_says_why() {
    require_privileged!();
    let _s = serial();
    if Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("SKIP: setpriv (util-linux) not installed");
        return;
    }
    let target = spawn_guarded(Command::new("sleep").arg("30"));
    let out = run_timeout(
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(spinguard_bin())
            .args(["attach", &target.pid().to_string()]),
        TIMEOUT,
    );
    refused(
        &out,
        &[
            "not permitted to trace pid",
            "without CAP_SYS_PTRACE",
            "uid 65534",
        ],
    );
}
