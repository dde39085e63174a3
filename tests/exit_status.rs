//! What `spinguard run` owes its child besides the guard (tini is the model):
//! its exit status, every code from 0 to 255 and 128+N for death by signal N;
//! signals sent to spinguard reach the child; `kill -STOP`/`-CONT` of the child
//! works under the tracer; a program that cannot run gives 127/126 and one line.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

const TIMEOUT: Duration = Duration::from_secs(60);

fn run(mode: &str, args: &[&str]) -> std::process::Output {
    run_timeout(
        Command::new(spinguard_bin())
            .args(["run", "--mode", mode, "--"])
            .args(args),
        TIMEOUT,
    )
}

#[test]
fn every_exit_code_passes_through_ptrace_mode() {
    require_privileged!();
    let _s = serial();
    for code in 0..=255 {
        let out = run("ptrace", &["sh", "-c", &format!("exit {code}")]);
        assert_eq!(
            out.status.code(),
            Some(code),
            "exit {code}:\n{}",
            describe(&out)
        );
    }
}

#[test]
fn exit_codes_pass_through_preload_mode() {
    shim_path();
    for code in [0, 1, 2, 42, 126, 127, 128, 255] {
        let out = run("preload", &["sh", "-c", &format!("exit {code}")]);
        assert_eq!(out.status.code(), Some(code), "{}", describe(&out));
    }
}

#[test]
fn death_by_signal_is_128_plus_n() {
    require_privileged!();
    let _s = serial();
    for (sig, name) in [(15, "TERM"), (9, "KILL"), (11, "SEGV"), (6, "ABRT")] {
        // The shell kills itself: no trap, default action.
        let out = run("ptrace", &["sh", "-c", &format!("kill -{name} $$")]);
        assert_eq!(
            out.status.code(),
            Some(128 + sig),
            "SIG{name}:\n{}",
            describe(&out)
        );
    }
}

/// Starts `spinguard run --mode ptrace -- sh -c SCRIPT` and returns the guard
/// plus a reader on its stdout.
fn start(script: &str) -> (GroupGuard, BufReader<std::process::ChildStdout>) {
    let mut g = spawn_guarded(
        Command::new(spinguard_bin())
            .args(["run", "--mode", "ptrace", "--", "sh", "-c", script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let out = BufReader::new(g.child.stdout.take().unwrap());
    (g, out)
}

/// Reads one line, failing the test (the guard kills everything) if none
/// comes within the timeout.
fn read_line(r: &mut BufReader<std::process::ChildStdout>) -> String {
    let fd = std::os::fd::AsRawFd::as_raw_fd(r.get_ref());
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    if r.buffer().is_empty() {
        // SAFETY: one live pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, TIMEOUT.as_millis() as i32) };
        assert!(n == 1, "no output within {TIMEOUT:?}");
    }
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    line.trim().to_string()
}

#[test]
fn sigterm_to_spinguard_reaches_the_childs_handler() {
    require_privileged!();
    let _s = serial();
    let (g, mut out) =
        start("trap 'echo got TERM; exit 0' TERM; echo ready; while :; do sleep 0.05; done");
    assert_eq!(read_line(&mut out), "ready");
    // SAFETY: signalling the spinguard process we started.
    unsafe { libc::kill(g.pid(), libc::SIGTERM) };
    assert_eq!(read_line(&mut out), "got TERM");
    let o = wait_timeout(g, TIMEOUT, "spinguard run after SIGTERM");
    assert_eq!(
        o.status.code(),
        Some(0),
        "the child handled TERM and exited 0:\n{}",
        describe(&o)
    );
}

#[test]
fn forwarded_signal_without_handler_kills_child_and_reports_it() {
    require_privileged!();
    let _s = serial();
    let (g, mut out) = start("echo ready; exec sleep 60");
    assert_eq!(read_line(&mut out), "ready");
    // `exec sleep` may not have happened yet; either way HUP (no trap) ends the child.
    // SAFETY: signalling the spinguard process we started.
    unsafe { libc::kill(g.pid(), libc::SIGHUP) };
    let o = wait_timeout(g, TIMEOUT, "spinguard run after SIGHUP");
    assert_eq!(
        o.status.code(),
        Some(128 + libc::SIGHUP),
        "{}",
        describe(&o)
    );
}

/// Field 3 of /proc/PID/stat: R, S, T (stopped), t (tracing stop)...
fn proc_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn kill_stop_and_cont_of_the_child() {
    require_privileged!();
    let _s = serial();
    let dir = std::env::temp_dir().join(format!("sg-jobctl-{}", std::process::id()));
    let _ = std::fs::remove_file(&dir);
    let ticks = dir.display().to_string();
    // A child that ticks into a file 20 times a second, 30 ticks in all.
    let (g, mut out) = start(&format!(
        "echo $$; i=0; while [ $i -lt 30 ]; do echo t >> '{ticks}'; i=$((i+1)); sleep 0.05; done; echo done"
    ));
    let child: i32 = read_line(&mut out).parse().unwrap();
    let count = || std::fs::read_to_string(&dir).map_or(0, |s| s.lines().count());
    wait_for("the first tick", || count() >= 1);

    // SAFETY: signalling the shell spinguard started for us.
    unsafe { libc::kill(child, libc::SIGSTOP) };
    // Under a tracer a group-stopped task shows as `t` (tracing stop): after
    // PTRACE_LISTEN it stays in TASK_TRACED. Untraced it would be `T`.
    wait_for("the child to stop", || {
        matches!(proc_state(child), Some('t' | 'T'))
    });
    // Stopped means stopped: no tick for a while (it ticks every 50 ms; the
    // `sleep` it may have been waiting for can finish, but the loop cannot go on).
    std::thread::sleep(Duration::from_millis(150));
    let frozen = count();
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(count(), frozen, "the child kept ticking while stopped");
    assert!(
        matches!(proc_state(child), Some('t' | 'T')),
        "state {:?}",
        proc_state(child)
    );

    // SAFETY: as above.
    unsafe { libc::kill(child, libc::SIGCONT) };
    wait_for("ticks to resume", || count() > frozen);
    assert_eq!(read_line(&mut out), "done");
    let o = wait_timeout(g, TIMEOUT, "spinguard run after STOP/CONT");
    let total = count();
    let _ = std::fs::remove_file(&dir);
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    assert_eq!(total, 30, "every tick, once");
}

#[test]
fn missing_program_is_127_with_one_line() {
    for mode in ["ptrace", "preload", "auto"] {
        let out = run(mode, &["spinguard-no-such-program"]);
        assert_eq!(out.status.code(), Some(127), "{mode}:\n{}", describe(&out));
        assert_eq!(
            String::from_utf8_lossy(&out.stderr).trim(),
            "spinguard: error: cannot run 'spinguard-no-such-program': No such file or directory",
            "{mode}"
        );
    }
    let out = run("ptrace", &["/nonexistent/dir/prog"]);
    assert_eq!(out.status.code(), Some(127), "{}", describe(&out));
}

#[test]
fn non_executable_file_is_126() {
    let file = std::env::temp_dir().join(format!("sg-noexec-{}", std::process::id()));
    std::fs::write(&file, "#!/bin/sh\nexit 0\n").unwrap();
    for mode in ["ptrace", "preload", "auto"] {
        let out = run(mode, &[file.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(126), "{mode}:\n{}", describe(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            stderr.trim(),
            format!(
                "spinguard: error: cannot run '{}': Permission denied",
                file.display()
            ),
            "{mode}"
        );
    }
    let _ = std::fs::remove_file(&file);
}

#[test]
fn exec_failure_after_fork_is_reported_too() {
    require_privileged!();
    let _s = serial();
    // A copy of a real program held open for writing: it resolves and is
    // executable, but execve fails with ETXTBSY in the traced child, after
    // fork; the report pipe carries it. (A file the kernel does not recognise
    // is no longer a failure: it runs with /bin/sh, as execvp runs it.)
    let file = std::env::temp_dir().join(format!("sg-txtbsy-{}", std::process::id()));
    std::fs::copy("/bin/true", &file).unwrap();
    let writer = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    let out = run("ptrace", &[file.to_str().unwrap()]);
    drop(writer);
    let _ = std::fs::remove_file(&file);
    assert_eq!(out.status.code(), Some(126), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Text file busy"),
        "{}",
        describe(&out)
    );
}

/// pid, state, wchan and command line of every process of session `sid`
/// (for failure messages).
fn session_processes(sid: i32) -> String {
    let mut out = String::new();
    for pid in session_pids(sid) {
        let read =
            |f: &str| std::fs::read_to_string(format!("/proc/{pid}/{f}")).unwrap_or_default();
        let stat = read("stat");
        let state = stat.rsplit_once(") ").map_or("?", |(_, r)| &r[..1]);
        let cmd = read("cmdline").replace('\0', " ");
        out += &format!("{pid} {state} {} {cmd}\n", read("wchan"));
    }
    out
}

fn session_pids(sid: i32) -> Vec<i32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the command: state ppid pgrp session ...
        let session = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split_whitespace().nth(3))
            .and_then(|s| s.parse::<i32>().ok());
        if session == Some(sid) {
            pids.push(pid);
        }
    }
    pids
}

/// Kills every process of session `sid` (an interactive shell and its jobs,
/// which live in their own process groups).
struct SessionGuard(i32);

impl Drop for SessionGuard {
    fn drop(&mut self) {
        for pid in session_pids(self.0) {
            // SAFETY: a process of the session this test created.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// Ctrl-Z in a terminal: an interactive bash on a pty runs spinguard as a job;
/// ^Z must stop the job (bash prints "Stopped") and `fg` must finish it.
#[test]
fn ctrl_z_in_a_terminal_stops_the_job_and_fg_resumes_it() {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::process::CommandExt;
    require_privileged!();
    let _s = serial();
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty writes two fds; the other pointers may be null.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty");
    // SAFETY: fresh fds owned here.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    let mut bash = Command::new("bash");
    bash.args(["--norc", "--noprofile", "-i"])
        .env("PS1", "$ ")
        .stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave.try_clone().unwrap());
    // SAFETY: setsid and TIOCSCTTY are async-signal-safe; the new session
    // makes the pty bash's controlling terminal, as a terminal emulator does.
    unsafe {
        bash.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = bash.spawn().expect("spawn bash");
    let sid = child.id() as i32;
    let _session = SessionGuard(sid);
    drop(slave);
    let fd = master.as_raw_fd();
    let send = |s: &str| {
        // SAFETY: writing our bytes to the pty master.
        let n = unsafe { libc::write(fd, s.as_ptr().cast(), s.len()) };
        assert_eq!(n, s.len() as isize, "write to pty");
    };
    let mut seen = String::new();
    let mut expect = |needle: &str| {
        let deadline = Instant::now() + TIMEOUT;
        while !seen.contains(needle) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no {needle:?} on the terminal; saw:\n{seen}\nprocesses:\n{}",
                session_processes(sid)
            );
            let mut pfd = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one live pollfd.
            if unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(1000) as i32) } == 1 {
                let mut buf = [0u8; 4096];
                // SAFETY: reading into our buffer.
                let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
                assert!(n > 0, "pty closed; saw:\n{seen}");
                seen.push_str(&String::from_utf8_lossy(&buf[..n as usize]));
            }
        }
        // Consume up to the needle so a later expect needs new output.
        let at = seen.find(needle).unwrap() + needle.len();
        seen.drain(..at);
    };
    // The job prints 5go, then 42done a second later; the echoed command
    // line shows the arithmetic, not the results, so the needles can only
    // come from the job. ^Z goes only after 5go: before the program exists,
    // the terminal's SIGTSTP would reach spinguard alone.
    send(&format!(
        "{} run -v --mode ptrace -- sh -c 'echo $((2+3))go; sleep 1; echo $((6*7))done'\n",
        spinguard_bin().display()
    ));
    expect("5go");
    send("\x1a");
    expect("Stopped");
    send("fg\n");
    expect("42done");
    // Type only at the prompt: bash may discard what was typed ahead while
    // the job owned the terminal.
    expect("$ ");
    send("echo st=$((0+$?))\n");
    expect("st=0");
    send("exit\n");
    let _ = child.wait();
}
