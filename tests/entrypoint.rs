//! `spinguard run` does a container entrypoint's job (tini's): as PID 1 of a
//! new PID namespace it stays as the parent in preload mode too, reaps every
//! zombie, forwards signals and exits with the program's status; a signal the
//! program sends to its own process group reaches it once, and one that
//! would end spinguard by default never does; a script without `#!` runs;
//! and a profiler preloaded into spinguard itself, or set by the command,
//! does not stop a libbpf loader (bpftool) from loading.

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use support::*;

const TIMEOUT: Duration = Duration::from_secs(60);

/// `cargo test` builds the CLI but not the shim beside it, which preload
/// mode needs: build it before the first run.
fn spinguard() -> Command {
    shim_path();
    Command::new(spinguard_bin())
}

// ---- signals to the process group -------------------------------------------------------

/// Handles SIGUSR1 and SIGALRM, sends both to its own process group (which
/// spinguard is in), and reports how often each arrived.
const KILL_ZERO_PY: &str = r#"
import os, signal, sys, time
got = {"usr1": 0, "alrm": 0}
def h(sig, frame):
    got["usr1" if sig == signal.SIGUSR1 else "alrm"] += 1
signal.signal(signal.SIGUSR1, h)
signal.signal(signal.SIGALRM, h)
os.kill(0, signal.SIGALRM)
os.kill(0, signal.SIGUSR1)
end = time.time() + 1.0
while time.time() < end:
    time.sleep(0.05)
print("usr1=%d alrm=%d" % (got["usr1"], got["alrm"]), flush=True)
"#;

#[test]
fn kill_zero_from_the_program_reaches_it_once_and_never_ends_spinguard() {
    require_privileged!();
    let _s = serial();
    for flags in [&["--mode", "ptrace"][..], &["--subreaper"][..]] {
        let out = run_timeout(
            spinguard()
                .arg("run")
                .args(flags)
                .args(["--", "/usr/bin/python3", "-c", KILL_ZERO_PY]),
            TIMEOUT,
        );
        assert_eq!(out.status.code(), Some(0), "{flags:?}:\n{}", describe(&out));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "usr1=1 alrm=1",
            "{flags:?}:\n{}",
            describe(&out)
        );
    }
}

// ---- PID 1 ----------------------------------------------------------------------------------

/// Leaves two orphans (sleeps whose parent shell exits at once), waits until
/// they have exited, counts the zombies in its PID namespace and exits 3.
const ORPHANS_PY: &str = r#"
import glob, subprocess, sys, time
subprocess.run(["sh", "-c", "sleep 0.2 & sleep 0.3 & exit 0"])
time.sleep(1.0)
z = 0
for st in glob.glob("/proc/[0-9]*/status"):
    try:
        if "\nState:\tZ" in open(st).read():
            z += 1
    except OSError:
        pass
print("zombies=%d" % z, flush=True)
sys.exit(3)
"#;

fn unshare() -> Command {
    let mut c = Command::new("unshare");
    c.args(["--pid", "--fork", "--mount-proc"]);
    c
}

#[test]
fn as_pid_1_preload_mode_reaps_every_orphan_and_mirrors_the_status() {
    require_privileged!();
    let _s = serial();
    // Control: the program as PID 1 itself reaps nothing.
    let out = run_timeout(
        unshare().args(["/usr/bin/python3", "-c", ORPHANS_PY]),
        TIMEOUT,
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "zombies=2",
        "without spinguard the orphans stay zombies:\n{}",
        describe(&out)
    );
    let out = run_timeout(
        unshare().arg(spinguard_bin()).args([
            "run",
            "-v",
            "--",
            "/usr/bin/python3",
            "-c",
            ORPHANS_PY,
        ]),
        TIMEOUT,
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "zombies=0",
        "{}",
        describe(&out)
    );
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("preload mode") && stderr.contains("staying as its parent"),
        "{}",
        describe(&out)
    );
    assert!(!stderr.contains("ptrace"), "no tracer:\n{}", describe(&out));
}

/// Says "ready", then waits; on SIGTERM says so and exits 7 (with `handle`),
/// or dies of it.
fn waiter_py(handle: bool) -> String {
    let handler = if handle {
        "signal.signal(signal.SIGTERM, lambda *a: (print('got TERM', flush=True), sys.exit(7)))\n"
    } else {
        ""
    };
    format!("import signal, sys, time\n{handler}print('ready', flush=True)\ntime.sleep(30)\n")
}

/// The host pid of `unshare --fork`'s child (spinguard, PID 1 inside).
fn child_of(pid: i32) -> i32 {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        if let Some(c) = children.split_whitespace().next() {
            return c.parse().unwrap();
        }
        assert!(Instant::now() < deadline, "unshare never forked");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs the waiter under spinguard as PID 1, sends SIGTERM to spinguard from
/// outside the namespace once the program is ready.
fn sigterm_pid_1(handle: bool) -> Output {
    let mut cmd = unshare();
    shim_path();
    cmd.arg(spinguard_bin())
        .args(["run", "--", "/usr/bin/python3", "-c", &waiter_py(handle)])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut g = spawn_guarded(&mut cmd);
    let mut stdout = BufReader::new(g.child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    assert_eq!(first.trim(), "ready");
    let spinguard = child_of(g.pid());
    // SAFETY: a process this test started.
    assert_eq!(unsafe { libc::kill(spinguard, libc::SIGTERM) }, 0);
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut stdout, &mut rest);
    let mut out = wait_timeout(g, TIMEOUT, "spinguard as PID 1");
    out.stdout = rest.into_bytes();
    out
}

#[test]
fn as_pid_1_sigterm_from_outside_is_forwarded_and_the_status_mirrored() {
    require_privileged!();
    let _s = serial();
    let out = sigterm_pid_1(true);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "got TERM",
        "{}",
        describe(&out)
    );
    assert_eq!(out.status.code(), Some(7), "{}", describe(&out));
    // Killed by it: 128+15 (PID 1 cannot die of a signal it sends itself).
    let out = sigterm_pid_1(false);
    assert_eq!(out.status.code(), Some(143), "{}", describe(&out));
}

// ---- a script without #! ---------------------------------------------------------------------

#[test]
fn a_script_without_a_shebang_runs_with_sh_in_every_mode() {
    require_privileged!();
    let _s = serial();
    let dir = Scratch::new("noshebang");
    let script = dir.path("script");
    std::fs::write(&script, "echo \"no shebang $1\"\nexit 4\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    for flags in [&[][..], &["--mode", "ptrace"][..], &["--subreaper"][..]] {
        let out = run_timeout(
            spinguard()
                .arg("run")
                .args(flags)
                .arg("--")
                .arg(&script)
                .arg("x"),
            TIMEOUT,
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "no shebang x",
            "{flags:?}:\n{}",
            describe(&out)
        );
        assert_eq!(out.status.code(), Some(4), "{flags:?}:\n{}", describe(&out));
    }
}

// ---- a profiler in the command, and in spinguard itself -------------------------------------

/// /sys/fs/bpf, mounted if need be (bpftool pins what it loads there).
fn bpffs() -> &'static Path {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    if !mounts
        .lines()
        .any(|l| l.split(' ').nth(1) == Some("/sys/fs/bpf") && l.contains(" bpf "))
    {
        let out = run_timeout(
            Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]),
            TIMEOUT,
        );
        assert!(out.status.success(), "mount bpffs: {}", describe(&out));
    }
    Path::new("/sys/fs/bpf")
}

/// `bpftool prog load` of the 100,000-iteration loop, under gperftools'
/// wall-clock profiler at 1 kHz (SIGALRM, process-directed ITIMER_REAL): the
/// profiler preloaded where `where_` says. Returns the output and whether the
/// program got pinned.
fn bpftool_under_profiler(where_: &str) -> (Output, bool) {
    let dir = Scratch::new(&format!("profiler-{where_}"));
    let pin = bpffs().join(format!("sg-test-{}-{where_}", std::process::id()));
    let _ = std::fs::remove_file(&pin);
    let profiler = profiler();
    let load = [
        bpftool().into_os_string(),
        "prog".into(),
        "load".into(),
        bpf_loop_object().into_os_string(),
        pin.clone().into_os_string(),
    ];
    let mut cmd = match where_ {
        "native" => {
            let mut c = Command::new("env");
            c.arg(format!("LD_PRELOAD={}", profiler.display()))
                .args(&load);
            c
        }
        "command" => {
            let mut c = spinguard();
            c.args(["run", "--", "env"])
                .arg(format!("LD_PRELOAD={}", profiler.display()))
                .args(&load);
            c
        }
        _ => {
            let mut c = spinguard();
            c.args(["run", "--"])
                .args(&load)
                .env("LD_PRELOAD", &profiler);
            c
        }
    };
    cmd.env("CPUPROFILE", dir.path("prof.out"))
        .env("CPUPROFILE_REALTIME", "1")
        .env("CPUPROFILE_FREQUENCY", "1000");
    let out = run_timeout(&mut cmd, TIMEOUT);
    let pinned = pin.exists();
    let _ = std::fs::remove_file(&pin);
    (out, pinned)
}

#[test]
fn bpftool_loads_with_a_profiler_set_in_the_command() {
    require_privileged!();
    let _s = serial();
    let (out, pinned) = bpftool_under_profiler("native");
    assert!(
        !out.status.success() && !pinned,
        "the profiler's SIGALRM must make libbpf give up without spinguard: {}",
        out.status
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("-11"),
        "EAGAIN expected"
    );
    let (out, pinned) = bpftool_under_profiler("command");
    assert!(
        out.status.success() && pinned,
        "spinguard run -- env LD_PRELOAD=$PROFILER bpftool: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .rev()
            .take(5)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn bpftool_loads_with_the_profiler_preloaded_into_spinguard_itself() {
    require_privileged!();
    let _s = serial();
    let (out, pinned) = bpftool_under_profiler("spinguard");
    assert!(
        out.status.success() && pinned,
        "LD_PRELOAD=$PROFILER spinguard run -- bpftool (142 = killed by the profiler's SIGALRM): {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr).lines().rev().take(5).collect::<Vec<_>>().join("\n")
    );
}
