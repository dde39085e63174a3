//! Guard follows exec: under the default `spinguard run`, every program in
//! the tree is guarded by the cheapest mechanism that reaches it, however it
//! is started. The static Go loader on cilium/ebpf 0.9.1 (which spins under a
//! 1 kHz SIGPROF storm without spinguard, see tests/run.rs) behind every
//! kind of wrapper a container entrypoint uses, started every way a C program
//! can start another; dynamically linked programs with no tracer at all; a
//! profiler in the command and in spinguard itself.
//!
//! A handed-off program's supervisor prints its `-v` summary on stderr:
//! `spinguard: N guarded bpf calls, R restarts, S stops; …`. One guarded call
//! and S == N + R mean the loader's one BPF_PROG_LOAD ran to the end, first
//! time (cilium/ebpf retries EAGAIN itself: it never saw one).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;
use support::*;

const TIMEOUT: Duration = Duration::from_secs(120);

/// `cargo test` builds the CLI but not the shim beside it, which every
/// test here runs through `spinguard run`.
fn shim_built() {
    shim_path();
}

/// The Go loader's arguments: a 1 kHz tgkill SIGPROF storm, 60 s to load.
fn storm() -> Vec<String> {
    ["--storm-hz", "1000", "--storm", "tgkill", "--wait", "60"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// The Go loader and its storm arguments as one shell command line.
fn go_command_line() -> String {
    format!("'{}' {}", go_loader().display(), storm().join(" "))
}

/// `spinguard run -v -- ARGS…` (the default mode: auto).
fn run_v(args: &[&str]) -> Output {
    shim_built();
    run_timeout(
        Command::new(spinguard_bin())
            .args(["run", "-v", "--"])
            .args(args),
        TIMEOUT,
    )
}

/// The handed-off supervisor's `-v` summary: (guarded calls, restarts, stops).
fn supervisor_summary(out: &Output) -> (u64, u64, u64) {
    let n = support::supervisor_summary(&out.stderr).unwrap_or_else(|| {
        panic!(
            "no supervisor summary (was the Go loader handed to ptrace?):\n{}",
            describe(out)
        )
    });
    (n[0], n[1], n[2])
}

/// The Go loader loaded, on its first attempt, under ptrace.
fn assert_go_loaded_first_time(what: &str, out: &Output) {
    let line = LoaderLine::parse(&String::from_utf8_lossy(&out.stdout));
    let (guarded, restarts, stops) = supervisor_summary(out);
    eprintln!(
        "{what}: {} | guarded {guarded}, restarts {restarts}, stops {stops}",
        line.line
    );
    assert_eq!(line.result, "loaded", "{what}:\n{}", describe(out));
    assert_eq!(guarded, 1, "{what}: one guarded call:\n{}", describe(out));
    assert_eq!(stops, guarded + restarts, "{what}:\n{}", describe(out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("ptrace for ") && stderr.contains("a Go program"),
        "{what}: -v must say which mechanism guards the Go loader:\n{}",
        describe(out)
    );
}

// ---- wrappers under the default run --------------------------------------------------------

#[test]
fn go_loader_behind_sh_c_exec() {
    require_privileged!();
    let _s = serial();
    let out = run_v(&["sh", "-c", &format!("exec {}", go_command_line())]);
    assert_go_loaded_first_time("sh -c 'exec go-loader'", &out);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
}

#[test]
fn go_loader_behind_sh_c_and_the_shells_own_exit_code() {
    require_privileged!();
    let _s = serial();
    let out = run_v(&["sh", "-c", &format!("{}; exit 7", go_command_line())]);
    assert_go_loaded_first_time("sh -c 'go-loader; exit 7'", &out);
    assert_eq!(out.status.code(), Some(7), "{}", describe(&out));
    // The Go program's own code comes through the handoff unchanged (64:
    // its usage error).
    let out = run_v(&["sh", "-c", &format!("'{}' --bogus", go_loader().display())]);
    assert_eq!(out.status.code(), Some(64), "{}", describe(&out));
}

#[test]
fn go_loader_behind_a_bash_entrypoint_script() {
    require_privileged!();
    let _s = serial();
    let dir = Scratch::new("entrypoint");
    let script = dir.path("entrypoint.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/bash\nset -u\necho starting\n{}\nexit 3\n",
            go_command_line()
        ),
    )
    .unwrap();
    let out = run_v(&["bash", script.to_str().unwrap()]);
    assert_go_loaded_first_time("bash ./entrypoint.sh", &out);
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
}

#[test]
fn go_loader_behind_env() {
    require_privileged!();
    let _s = serial();
    let go = go_loader();
    let mut args = vec!["env".to_string(), go.display().to_string()];
    args.extend(storm());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run_v(&args);
    assert_go_loaded_first_time("env go-loader", &out);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
}

#[test]
fn go_loader_from_python_subprocess_and_both_exit_codes() {
    require_privileged!();
    let _s = serial();
    let py = format!(
        "import subprocess, sys\n\
         r = subprocess.run(['{}'] + {:?})\n\
         print('returncode', r.returncode)\n\
         sys.exit(5)\n",
        go_loader().display(),
        storm()
    );
    let out = run_v(&["/usr/bin/python3", "-c", &py]);
    assert_go_loaded_first_time("python3 subprocess.run", &out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("returncode 0"), "{}", describe(&out));
    assert_eq!(out.status.code(), Some(5), "{}", describe(&out));
}

#[test]
fn a_handed_off_program_killed_by_a_signal_is_seen_killed_by_it() {
    require_privileged!();
    let _s = serial();
    // Python sees its static child die of SIGTERM (-15), not exit 143: the
    // supervisor the shim handed it to dies of the same signal.
    let py = format!(
        "import subprocess, time\n\
         p = subprocess.Popen(['{}'])\n\
         time.sleep(0.5)\n\
         p.terminate()\n\
         print('returncode', p.wait())\n",
        static_pause().display(),
    );
    let out = run_v(&["/usr/bin/python3", "-c", &py]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("returncode -15"), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("statically linked"),
        "{}",
        describe(&out)
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
}

#[test]
fn a_timer_the_caller_armed_before_the_handoff_reaches_the_program() {
    require_privileged!();
    let _s = serial();
    // alarm-then-exec, a time limit on the exec'd program: natively the
    // static program's pause() ends by SIGALRM after 0.3 s. An interval
    // timer survives exec (into the handed-off spinguard), not fork (into the
    // program): spinguard passes it on.
    shim_built();
    let py = format!(
        "import os, signal\n\
         signal.setitimer(signal.ITIMER_REAL, 0.3)\n\
         os.execv('{0}', ['{0}'])\n",
        static_pause().display(),
    );
    let out = run_timeout(
        Command::new(spinguard_bin()).args(["run", "--", "/usr/bin/python3", "-c", &py]),
        Duration::from_secs(30),
    );
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGALRM),
        "{}",
        describe(&out)
    );
}

// ---- every way a C program starts another -----------------------------------------------------

const WAYS: [&str; 14] = [
    "execve",
    "execv",
    "execvp",
    "execvpe",
    "execl",
    "execlp",
    "execle",
    "fexecve",
    "execveat",
    "posix_spawn",
    "posix_spawnp",
    "system",
    "popen",
    "vfork",
];

/// `spinguard run -v -- starter [PRE…] HOW go-loader STORM…`, from the Go
/// loader's directory (so execveat and the PATH forms find `./go-loader`).
fn start_go(pre: &[&str], how: &str) -> Output {
    shim_built();
    let go = go_loader();
    let dir = go.parent().unwrap();
    let mut cmd = Command::new(spinguard_bin());
    cmd.args(["run", "-v", "--"])
        .arg(starter())
        .args(pre)
        .arg(how)
        // execvp, execvpe, execlp and posix_spawnp search PATH for a bare name.
        .arg(if how.ends_with('p') || how == "execvpe" {
            "go-loader"
        } else {
            "./go-loader"
        })
        .args(storm())
        .current_dir(dir)
        .env(
            "PATH",
            format!(
                "{}:{}",
                dir.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        );
    run_timeout(&mut cmd, TIMEOUT)
}

#[test]
fn go_loader_started_every_way_a_c_program_can() {
    require_privileged!();
    let _s = serial();
    for how in WAYS {
        let out = start_go(&[], how);
        assert_go_loaded_first_time(how, &out);
        assert_eq!(out.status.code(), Some(0), "{how}:\n{}", describe(&out));
    }
}

#[test]
fn the_path_search_skips_what_execve_refuses_as_execvp_does() {
    require_privileged!();
    let _s = serial();
    // PATH=a:b:c where a/go-loader is a directory and b/go-loader is not
    // executable: execvp goes on to c, where the real one is.
    let dir = Scratch::new("path-search");
    for d in ["a", "b", "c"] {
        std::fs::create_dir(dir.path(d)).unwrap();
    }
    std::fs::create_dir(dir.path("a").join("go-loader")).unwrap();
    std::fs::write(dir.path("b").join("go-loader"), "#!/bin/sh\nexit 99\n").unwrap();
    std::os::unix::fs::symlink(go_loader(), dir.path("c").join("go-loader")).unwrap();
    let path = ["a", "b", "c"]
        .map(|d| dir.path(d).display().to_string())
        .join(":");
    shim_built();
    for how in ["execvp", "execlp", "posix_spawnp"] {
        let out = run_timeout(
            Command::new(spinguard_bin())
                .args(["run", "-v", "--"])
                .arg(starter())
                .args([how, "go-loader"])
                .args(storm())
                .env("PATH", &path),
            TIMEOUT,
        );
        assert_go_loaded_first_time(
            &format!("{how} past a directory and a non-executable"),
            &out,
        );
        assert_eq!(out.status.code(), Some(0), "{how}:\n{}", describe(&out));
    }
}

#[test]
fn go_loader_started_after_the_program_replaced_or_dropped_ld_preload() {
    require_privileged!();
    let _s = serial();
    // libprofiler without CPUPROFILE does nothing: a stand-in for any
    // LD_PRELOAD a program sets for its children.
    let profiler = profiler();
    let replaced = ["--ld-preload", profiler.to_str().unwrap()];
    for how in ["execvp", "posix_spawn", "system", "popen", "vfork"] {
        let out = start_go(&replaced, how);
        assert_go_loaded_first_time(&format!("{how}, LD_PRELOAD replaced"), &out);
        let out = start_go(&["--unset-ld-preload"], how);
        assert_go_loaded_first_time(&format!("{how}, LD_PRELOAD unset"), &out);
    }
}

// ---- dynamically linked programs: the shim, no tracer ---------------------------------------------

#[test]
fn dynamic_programs_and_their_dynamic_children_have_no_tracer() {
    require_privileged!();
    let _s = serial();
    shim_built();
    let script = "grep TracerPid /proc/self/status; sh -c 'grep TracerPid /proc/self/status'";
    let out = run_timeout(
        Command::new(spinguard_bin()).args(["run", "--", "sh", "-c", script]),
        TIMEOUT,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let pids: Vec<&str> = stdout
        .lines()
        .map(|l| l.trim_start_matches("TracerPid:").trim())
        .collect();
    assert_eq!(pids, ["0", "0"], "{}", describe(&out));
    // The same check sees a tracer when there is one.
    let out = run_timeout(
        Command::new(spinguard_bin()).args(["run", "--mode", "ptrace", "--", "sh", "-c", script]),
        TIMEOUT,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.lines().all(|l| !l.ends_with("\t0")),
        "under ptrace mode the tracer shows:\n{}",
        describe(&out)
    );
}

#[test]
fn run_v_says_which_mechanism_guards_each_program() {
    require_privileged!();
    let _s = serial();
    let out = run_v(&["sh", "-c", &format!("ls /dev/null; {}", go_command_line())]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    for want in [
        "preload mode for /",
        "preload for /usr/bin/ls: dynamically linked, not Go",
        &format!("ptrace for {}: a Go program", go_loader().display()),
    ] {
        assert!(
            stderr.contains(want),
            "expected {want:?}:\n{}",
            describe(&out)
        );
    }
}

#[test]
fn a_program_nothing_can_guard_gets_exactly_one_warning_line() {
    require_privileged!();
    let _s = serial();
    // A copy of the shim with no spinguard binary next to it, none in
    // ../../bin, and no SPINGUARD_BIN: a Go program cannot be handed off.
    let dir = Scratch::new("lonely-shim");
    let shim = dir.path("libspinguard_shim.so");
    std::fs::copy(shim_path(), &shim).unwrap();
    let out = run_timeout(
        Command::new("sh")
            .args(["-c", &format!("'{}' --wait 30", go_loader().display())])
            .env("LD_PRELOAD", &shim)
            .env_remove("SPINGUARD_BIN")
            .env_remove("SPINGUARD_LOG"),
        TIMEOUT,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("spinguard")).collect();
    assert_eq!(lines.len(), 1, "{}", describe(&out));
    assert!(
        lines[0].contains("NOT guarded")
            && lines[0].contains(&go_loader().display().to_string())
            && lines[0].contains("SPINGUARD_BIN"),
        "{}",
        describe(&out)
    );
    // The program itself still runs.
    assert_eq!(
        LoaderLine::parse(&String::from_utf8_lossy(&out.stdout)).result,
        "loaded"
    );
}

#[test]
fn the_mechanism_of_the_test_loaders() {
    use spinguard_common::mechanism::{choose, Kind, Mechanism};
    let c = |p: &Path| choose(&std::ffi::CString::new(p.to_str().unwrap()).unwrap());
    let go = c(&go_loader());
    assert_eq!(
        (go.kind, go.mechanism()),
        (Kind::Go, Some(Mechanism::Ptrace))
    );
    let cl = c(&c_loader());
    assert_eq!(
        (cl.kind, cl.mechanism()),
        (Kind::Dynamic, Some(Mechanism::Preload))
    );
}

// ---- a secure-execution process is left alone ----------------------------------------------

#[test]
fn a_secure_execution_process_hands_nothing_off() {
    require_privileged!();
    let _s = serial();
    // The loader ignores LD_PRELOAD in a setgid program, so the starter
    // dlopen()s the shim and calls its execve: in the plain copy that hands
    // the Go loader to ptrace; in the setgid copy it must pass it through as
    // it is (and the loader spins, unguarded, as it would without spinguard).
    let dir = support::target_dir().join(format!("exec-secure-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    struct Cleanup(PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _c = Cleanup(dir.clone());
    let plain = dir.join("starter");
    let setgid = dir.join("starter-setgid");
    std::fs::copy(starter(), &plain).unwrap();
    std::fs::copy(starter(), &setgid).unwrap();
    std::os::unix::fs::chown(&setgid, Some(0), Some(65534)).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&setgid, std::fs::Permissions::from_mode(0o2755)).unwrap();
    let shim = shim_path();
    // Skip honestly where the setgid bit does not make a secure-execution
    // process (a nosuid mount): glibc drops TMPDIR from the environment only
    // in one.
    let probe = run_timeout(
        Command::new(&setgid)
            .args(["execve", "/usr/bin/env"])
            .env("TMPDIR", "/sg-secure-probe"),
        TIMEOUT,
    );
    if String::from_utf8_lossy(&probe.stdout).contains("/sg-secure-probe") {
        eprintln!("SKIP: the setgid copy did not run in secure-execution mode here");
        return;
    }
    let run = |starter: &Path| {
        run_timeout(
            Command::new(starter)
                .arg("--dlopen")
                .arg(&shim)
                .arg("execve")
                .arg(go_loader())
                .args(["--storm-hz", "1000", "--storm", "tgkill", "--wait", "2"])
                .env("SPINGUARD_LOG", "exec")
                .env("SPINGUARD_BIN", spinguard_bin()),
            TIMEOUT,
        )
    };
    let out = run(&plain);
    assert_eq!(
        LoaderLine::parse(&String::from_utf8_lossy(&out.stdout)).result,
        "loaded",
        "the control hands off:\n{}",
        describe(&out)
    );
    let out = run(&setgid);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("spinguard"), "{}", describe(&out));
    assert_eq!(
        LoaderLine::parse(&String::from_utf8_lossy(&out.stdout)).result,
        "spinning",
        "{}",
        describe(&out)
    );
}
