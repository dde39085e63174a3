//! Faults around a guarded load, on the real kernel: the target killed in the
//! middle of one (under run and under attach), exit_group while threads are
//! inside loads, threads coming and going while traced, exec from a
//! non-leader thread while another thread is in the verifier, spinguard
//! itself SIGKILLed (run: PTRACE_O_EXITKILL takes the program with it;
//! attach: the target lives on), attach and detach in the middle of a load,
//! and two attaches at once.
//!
//! "Inside a guarded load" is observed, not assumed: the loading thread's
//! SigBlk in /proc shows SIGPROF, which only the guard blocks (the loaders
//! never block it themselves).

mod support;

use std::collections::BTreeMap;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::{
    children, describe, example_bin, require_privileged, run_timeout, serial, spawn_guarded,
    spinguard_bin, wait_timeout, GroupGuard, LoaderLine,
};

const TIMEOUT: Duration = Duration::from_secs(60);
/// How long a step may take before the test calls it a hang (not a timing
/// assertion: prompt answers take milliseconds).
const HANG: Duration = Duration::from_secs(15);
/// ~0.55 s to verify alone, longer under load: time to act while a thread is
/// inside. (The verifier walks 2 instructions per iteration and gives up with
/// E2BIG past 1,000,000, so 500,000 iterations is the ceiling.)
const LONG_LOAD: &str = "450000";
const SIGPROF_BIT: u64 = 1 << (libc::SIGPROF - 1);

fn task_status(pid: i32) -> BTreeMap<i32, String> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(tid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(s) = std::fs::read_to_string(e.path().join("status")) {
            out.insert(tid, s);
        }
    }
    out
}

fn field<'a>(status: &'a str, name: &str) -> Option<&'a str> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')))
        .map(str::trim)
}

fn sigblk(status: &str) -> u64 {
    field(status, "SigBlk")
        .and_then(|h| u64::from_str_radix(h, 16).ok())
        .unwrap_or(0)
}

/// Each thread's blocked-signal mask.
fn masks(pid: i32) -> BTreeMap<i32, u64> {
    task_status(pid)
        .into_iter()
        .map(|(t, s)| (t, sigblk(&s)))
        .collect()
}

/// Waits until a thread of `pid` has SIGPROF blocked but not SIGTERM: it is
/// inside a guarded load. (glibc's pthread_create blocks every signal in the
/// creating thread for a moment: that is not a guard.)
fn wait_guarded(pid: i32) -> i32 {
    let deadline = Instant::now() + HANG;
    let sigterm_bit = 1u64 << (libc::SIGTERM - 1);
    loop {
        if let Some((&tid, _)) = masks(pid)
            .iter()
            .find(|(_, &m)| m & SIGPROF_BIT != 0 && m & sigterm_bit == 0)
        {
            return tid;
        }
        assert!(
            Instant::now() < deadline,
            "no thread of {pid} ever entered a guarded load"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Gone or a zombie.
fn dead(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with(['Z', 'X']))
        })
        .unwrap_or(true)
}

fn wait_dead(pid: i32, what: &str) {
    let deadline = Instant::now() + HANG;
    while !dead(pid) {
        assert!(Instant::now() < deadline, "{what} (pid {pid}) still alive");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// True when no process is left in process group `pgid`.
fn group_empty(pgid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    unsafe { libc::kill(-pgid, 0) == -1 && *libc::__errno_location() == libc::ESRCH }
}

fn wait_group_empty(pgid: i32, what: &str) {
    let deadline = Instant::now() + HANG;
    while !group_empty(pgid) {
        assert!(
            Instant::now() < deadline,
            "{what}: processes left in group {pgid}: {}",
            group_members(pgid)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn group_members(pgid: i32) -> String {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            if let Some((name, rest)) = stat.rsplit_once(')') {
                let f: Vec<&str> = rest.split_whitespace().collect();
                if f.get(2).and_then(|g| g.parse::<i32>().ok()) == Some(pgid) {
                    v.push(format!("{pid} {}) {}", name, f[0]));
                }
            }
        }
    }
    v.join(", ")
}

fn wait_child(pid: i32, what: &str) -> i32 {
    let deadline = Instant::now() + HANG;
    loop {
        if let Some(&c) = children(pid).first() {
            return c;
        }
        assert!(Instant::now() < deadline, "{what}: no child of {pid}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn kill(pid: i32, sig: i32) {
    // SAFETY: a signal to a process this test started.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill({pid}, {sig})");
}

fn piped(cmd: &mut Command) -> &mut Command {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
}

/// Waits for the child of `g` itself (not its group) to exit, for at most HANG.
fn wait_exit(g: &mut GroupGuard, what: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + HANG;
    loop {
        if let Some(st) = g.child.try_wait().expect("try_wait") {
            return st;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: still running after {HANG:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn attach(args: &[&str], pid: i32) -> Command {
    let mut c = Command::new(spinguard_bin());
    c.arg("attach").args(args).arg(pid.to_string());
    c
}

fn long_storm_loader(extra: &[&str]) -> Command {
    let mut c = Command::new(example_bin("rust-loader"));
    c.args(["--iters", LONG_LOAD, "--storm-hz", "1000", "--wait", "30"])
        .args(extra);
    c
}

// ---- the target dies ---------------------------------------------------------

#[test]
fn target_sigkilled_mid_load_under_run_exits_137_and_leaves_nothing() {
    require_privileged!();
    let _s = serial();
    let loader = example_bin("rust-loader");
    let mut g = spawn_guarded(
        piped(Command::new(spinguard_bin()).args(["run", "--mode", "ptrace", "--"]))
            .arg(&loader)
            .args(["--iters", LONG_LOAD, "--storm-hz", "1000", "--wait", "30"]),
    );
    let sg = g.pid();
    let child = wait_child(sg, "spinguard run");
    let tid = wait_guarded(child);
    kill(child, libc::SIGKILL);
    let st = wait_exit(&mut g, "spinguard run after its program was SIGKILLed");
    assert_eq!(
        st.code(),
        Some(137),
        "spinguard must exit 128+9 (thread {tid} was inside a guarded load)"
    );
    assert!(dead(child), "the program is still there");
    wait_group_empty(sg, "after the target was killed");
    let out = wait_timeout(g, HANG, "spinguard run");
    assert!(!stderr(&out).contains("panicked"), "{}", describe(&out));
}

#[test]
fn target_sigkilled_mid_load_under_attach_ends_the_attach_cleanly() {
    require_privileged!();
    let _s = serial();
    let target = spawn_guarded(piped(&mut long_storm_loader(&["--wait-traced"])));
    let pid = target.pid();
    let mut a = spawn_guarded(piped(&mut attach(&["-v"], pid)));
    let tid = wait_guarded(pid);
    kill(pid, libc::SIGKILL);
    let st = wait_exit(&mut a, "attach after its target was SIGKILLed");
    let out = wait_timeout(a, HANG, "attach");
    assert!(
        st.success(),
        "attach must exit 0 when the target dies (thread {tid} was in a load):\n{}",
        describe(&out)
    );
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "pid {pid} ended while attached (killed by SIGKILL)"
        )),
        "attach must say the target was killed:\n{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    let t = wait_timeout(target, HANG, "target");
    assert_eq!(t.status.signal_code(), Some(libc::SIGKILL));
}

trait SignalCode {
    fn signal_code(&self) -> Option<i32>;
}

impl SignalCode for std::process::ExitStatus {
    fn signal_code(&self) -> Option<i32> {
        std::os::unix::process::ExitStatusExt::signal(self)
    }
}

#[test]
fn exit_group_while_threads_are_inside_guarded_loads() {
    require_privileged!();
    let _s = serial();
    let ft = example_bin("fault-target");
    // Under run: four threads in ~0.55 s loads (1 s or more on 2 cores) when
    // the main thread exits at 300 ms.
    let out = run_timeout(
        Command::new(spinguard_bin())
            .args(["run", "-v", "--mode", "ptrace", "--"])
            .arg(&ft)
            .args(["exit-mid-load", "--threads", "4", "--after-ms", "300"]),
        TIMEOUT,
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("exiting with 4 threads inside loads"),
        "{}",
        describe(&out)
    );
    assert!(
        stderr(&out).contains("0 guarded bpf calls"),
        "no load may have finished before the exit (else this tests nothing):\n{}",
        describe(&out)
    );

    // Under attach: the same, the exit arriving while attached.
    let mut t = spawn_guarded(piped(Command::new(&ft).args([
        "exit-mid-load",
        "--threads",
        "4",
        "--after-ms",
        "1500",
    ])));
    let pid = t.pid();
    std::thread::sleep(Duration::from_millis(300));
    let a = run_timeout(&mut attach(&["-v"], pid), TIMEOUT);
    assert!(a.status.success(), "{}", describe(&a));
    assert!(
        stderr(&a).contains(&format!("pid {pid} ended while attached (exit code 0)")),
        "{}",
        describe(&a)
    );
    assert_eq!(wait_exit(&mut t, "target").code(), Some(0));
}

#[test]
fn threads_that_come_and_go_while_traced() {
    require_privileged!();
    let _s = serial();
    let ft = example_bin("fault-target");
    // Under run: thousands of short threads beside a loading thread.
    let out = run_timeout(
        Command::new(spinguard_bin())
            .args(["run", "--mode", "ptrace", "--"])
            .arg(&ft)
            .args(["thread-churn", "--secs", "2"]),
        TIMEOUT,
    );
    let line = String::from_utf8_lossy(&out.stdout).to_string();
    let churn = LoaderLine::parse(&line.replace("churn", "loaded"));
    assert!(
        out.status.success() && churn.get("threads").unwrap_or(0) > 100,
        "{}",
        describe(&out)
    );
    assert!(churn.get("loads").unwrap_or(0) > 0, "{}", describe(&out));

    // Under attach: attach/detach cycles while threads start and end, some
    // of them between the listing and the seize, or while stopped.
    let mut t = spawn_guarded(piped(Command::new(&ft).args([
        "thread-churn",
        "--secs",
        "6",
    ])));
    let pid = t.pid();
    std::thread::sleep(Duration::from_millis(200));
    let mut rounds = 0;
    while t.child.try_wait().expect("try_wait").is_none() && rounds < 15 {
        let a = run_timeout(&mut attach(&["--for", "100ms"], pid), TIMEOUT);
        if dead(pid) {
            break; // it finished meanwhile: attach may report it ended
        }
        assert!(a.status.success(), "round {rounds}: {}", describe(&a));
        rounds += 1;
    }
    assert!(rounds >= 5, "only {rounds} attach rounds ran");
    let st = wait_exit(&mut t, "thread-churn");
    let out = wait_timeout(t, HANG, "thread-churn");
    assert!(
        st.success(),
        "a load failed or the target died after {rounds} attach rounds:\n{}",
        describe(&out)
    );
}

#[test]
fn exec_from_a_non_leader_thread_while_another_is_inside_a_load() {
    require_privileged!();
    let _s = serial();
    let loader = example_bin("rust-loader");
    let out = run_timeout(
        Command::new(spinguard_bin())
            .args(["run", "-vv", "--mode", "ptrace", "--"])
            .arg(example_bin("fault-target"))
            .args(["exec-mid-load", "--after-ms", "300", "--"])
            .arg(&loader)
            .args(["--storm-hz", "1000", "--wait", "10"]),
        TIMEOUT,
    );
    let err = stderr(&out);
    let guarded_before_exec = err
        .find("BPF_PROG_LOAD guarded")
        .zip(err.find(": exec from thread "))
        .is_some_and(|(g, e)| g < e);
    assert!(
        guarded_before_exec,
        "a thread must be inside a guarded load when a non-leader thread execs:\n{}",
        describe(&out)
    );
    let l = LoaderLine::parse(&String::from_utf8_lossy(&out.stdout));
    assert!(
        out.status.success() && l.result == "loaded" && l.get("attempts") == Some(1),
        "the exec'd loader must load first time under the storm:\n{}",
        describe(&out)
    );
}

// ---- spinguard dies ------------------------------------------------------------

#[test]
fn run_sigkilled_mid_load_takes_its_program_and_grandchild_with_it() {
    require_privileged!();
    let _s = serial();
    // fork-loader forks (no exec); the grandchild loads. Both carry the filter.
    let mut g = spawn_guarded(
        piped(Command::new(spinguard_bin()).args(["run", "--mode", "ptrace", "--"]))
            .arg(example_bin("fork-loader"))
            .args(["--via", "fork", "--"])
            .args(["--iters", LONG_LOAD, "--storm-hz", "1000", "--wait", "30"]),
    );
    let sg = g.pid();
    let parent = wait_child(sg, "spinguard run");
    let grandchild = wait_child(parent, "fork-loader");
    wait_guarded(grandchild);
    kill(sg, libc::SIGKILL);
    let st = wait_exit(&mut g, "spinguard");
    assert_eq!(st.signal_code(), Some(libc::SIGKILL));
    // PTRACE_O_EXITKILL: every tracee gets SIGKILL when its tracer exits.
    wait_dead(parent, "the program");
    wait_dead(
        grandchild,
        "the program's forked child, inside a guarded load",
    );
    wait_group_empty(sg, "after spinguard was SIGKILLed");
}

#[test]
fn attach_sigkilled_mid_load_leaves_the_target_running() {
    require_privileged!();
    let _s = serial();
    let target = spawn_guarded(piped(&mut long_storm_loader(&["--wait-traced"])));
    let pid = target.pid();
    let mut a = spawn_guarded(piped(&mut attach(&[], pid)));
    let tid = wait_guarded(pid);
    kill(a.pid(), libc::SIGKILL);
    wait_exit(&mut a, "attach");
    // No EXITKILL for attach: the kernel detaches, the process runs on, and
    // the load that was under way finishes (the thread keeps the guard set
    // blocked: the documented cost of killing attach with SIGKILL).
    let out = wait_timeout(target, TIMEOUT, "the target after attach was killed");
    let l = LoaderLine::parse(&String::from_utf8_lossy(&out.stdout));
    assert!(
        out.status.success() && l.result == "loaded",
        "the target must survive and load (thread {tid}):\n{}",
        describe(&out)
    );
}

// ---- attach and detach in the middle of a load ------------------------------------

#[test]
fn attach_and_detach_in_the_middle_of_a_load() {
    require_privileged!();
    let _s = serial();
    // No storm, no retry: one EAGAIN caused by the attach or the detach would
    // end the loader with `failed`. Loads of ~0.55 s, over and over for 4 s.
    let target = spawn_guarded(piped(Command::new(example_bin("rust-loader")).args([
        "--iters",
        LONG_LOAD,
        "--max-attempts",
        "1",
        "--wait",
        "30",
        "--for",
        "4",
    ])));
    let pid = target.pid();
    // Inside the verifier: the process has spent 100 ms in the kernel.
    let deadline = Instant::now() + HANG;
    while stime_ticks(pid) < 10 {
        assert!(
            Instant::now() < deadline,
            "the loader never started loading"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let before = masks(pid);
    let a = run_timeout(&mut attach(&["-v", "--for", "200ms"], pid), TIMEOUT);
    let err = stderr(&a);
    assert!(a.status.success(), "{}", describe(&a));
    assert!(
        err.contains("was inside BPF_PROG_LOAD when seized: running it again"),
        "the attach must land inside the load:\n{err}"
    );
    assert!(
        err.contains("1 let finish a guarded call first"),
        "the detach must come during the load:\n{err}"
    );
    let after = masks(pid);
    assert_eq!(before, after, "masks changed across attach/detach");
    let out = wait_timeout(target, TIMEOUT, "loader");
    let l = LoaderLine::parse(&String::from_utf8_lossy(&out.stdout));
    assert!(
        out.status.success() && l.result == "loaded" && l.get("eagain") == Some(0),
        "every load must succeed first time:\n{}",
        describe(&out)
    );
}

/// System time of the whole process, in clock ticks.
fn stime_ticks(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1.to_string();
            rest.split_whitespace().nth(12)?.parse().ok()
        })
        .unwrap_or(0)
}

#[test]
fn two_attaches_at_once_one_wins_the_other_names_it() {
    require_privileged!();
    let _s = serial();
    let target = spawn_guarded(
        Command::new(example_bin("syscall-loop"))
            .args(["--threads", "4", "--forever"])
            .stdout(Stdio::null()),
    );
    let pid = target.pid();
    std::thread::sleep(Duration::from_millis(100));
    for round in 0..5 {
        let a = spawn_guarded(piped(&mut attach(&["--for", "300ms"], pid)));
        let b = spawn_guarded(piped(&mut attach(&["--for", "300ms"], pid)));
        let (ap, bp) = (a.pid(), b.pid());
        let ao = wait_timeout(a, TIMEOUT, "attach a");
        let bo = wait_timeout(b, TIMEOUT, "attach b");
        let (win, lose, winner) = match (ao.status.success(), bo.status.success()) {
            (true, false) => (&ao, &bo, ap),
            (false, true) => (&bo, &ao, bp),
            _ => panic!(
                "round {round}: exactly one attach must win:\nA: {}\nB: {}",
                describe(&ao),
                describe(&bo)
            ),
        };
        assert_eq!(
            lose.status.code(),
            Some(1),
            "round {round}: {}",
            describe(lose)
        );
        let msg = stderr(lose);
        assert!(
            msg.contains(&format!("already traced by pid {winner}")) && msg.lines().count() == 1,
            "round {round}: the loser must name the winner in one line:\n{msg}\nwinner: {}",
            describe(win)
        );
        assert!(!dead(pid), "round {round}: the target died");
    }
    let masks_now = masks(pid);
    assert!(
        masks_now.values().all(|m| m & SIGPROF_BIT == 0),
        "a guard mask was left behind: {masks_now:?}"
    );
}
