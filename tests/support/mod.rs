//! Shared by every integration test: where the binaries are, running a process
//! with a hard timeout, the privileged-test gate, and the loader's output line.
//!
//! Each test binary includes this with `mod support;` and uses a part of it.
#![allow(dead_code, unused_macros, unused_imports)]

pub mod bpftrace;
pub mod cgroup;
mod dist;
mod docker;
mod loaders;
pub mod pod;
pub mod syscalls;
pub use dist::*;
pub use docker::*;
pub use loaders::*;

use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// True when this process can load eBPF programs and ptrace. Otherwise prints
/// why and returns false, or panics when CI demands privileged tests
/// (`SPINGUARD_REQUIRE_PRIVILEGED=1`): there, a skip is a failure.
pub fn privileged() -> bool {
    static REASON: OnceLock<Option<String>> = OnceLock::new();
    let reason = REASON.get_or_init(|| {
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return Some("not root (these tests load eBPF programs and use ptrace)".into());
        }
        let out = Command::new(example_bin("rust-loader"))
            .args(["--iters", "1", "--wait", "5"])
            .output();
        match out {
            Ok(o) if o.status.success() => None,
            Ok(o) => Some(format!(
                "cannot load a trivial eBPF program here: {}",
                String::from_utf8_lossy(&o.stdout).trim()
            )),
            Err(e) => Some(format!("cannot run the loader: {e}")),
        }
    });
    match reason {
        None => true,
        Some(r) if std::env::var_os("SPINGUARD_REQUIRE_PRIVILEGED").is_some_and(|v| v == "1") => {
            panic!("SPINGUARD_REQUIRE_PRIVILEGED=1 but this test would skip: {r}")
        }
        Some(r) => {
            eprintln!("SKIP: {r}");
            false
        }
    }
}

/// Returns from the calling test when it cannot run here (see [`privileged`]).
macro_rules! require_privileged {
    () => {
        if !support::privileged() {
            return;
        }
    };
}
pub(crate) use require_privileged;

/// Serialises the heavy tests of one test binary: storms, ptrace and timing
/// on a 2-core machine interfere with each other. A test that panicked while
/// holding it must not poison the rest.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// target/<profile>/, from this test binary's own path (target/<profile>/deps/x).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps")
        .to_path_buf()
}

fn profile_flag() -> Option<&'static str> {
    (target_dir().file_name().and_then(|n| n.to_str()) == Some("release")).then_some("--release")
}

/// Runs `cargo build` with `args` once per distinct `args` in this process.
fn cargo_build(args: &[&str]) {
    static BUILT: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let key = args.join(" ");
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if built.contains(&key) {
        return;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg("build").args(args).args(profile_flag());
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"));
    let out = cmd.output().expect("run cargo build");
    assert!(
        out.status.success(),
        "cargo build {key} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    built.push(key);
}

pub fn spinguard_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_spinguard"))
}

/// The subcommands `spinguard --help` lists (clap's `help` aside), for tests
/// that must cover every one of them.
pub fn subcommands() -> Vec<String> {
    let out = run_timeout(
        Command::new(spinguard_bin()).arg("--help"),
        Duration::from_secs(60),
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(String::from)
        .collect()
}

/// The LD_PRELOAD shim, built if need be.
pub fn shim_path() -> PathBuf {
    cargo_build(&["-p", "spinguard-shim"]);
    let p = target_dir().join("libspinguard_shim.so");
    assert!(p.is_file(), "no shim at {}", p.display());
    p
}

/// An example of the root package (target/<profile>/examples/NAME), built if need be.
pub fn example_bin(name: &str) -> PathBuf {
    cargo_build(&["--example", name]);
    let p = target_dir().join("examples").join(name);
    assert!(p.is_file(), "no example at {}", p.display());
    p
}

/// Kills the whole process group of a child on drop, so a failed assertion or
/// a timeout never leaves a storm or a tracee behind.
pub struct GroupGuard {
    pub child: Child,
    reaped: bool,
}

impl GroupGuard {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if !self.reaped {
            // SAFETY: the child leads its own group (process_group(0) at spawn).
            unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
            let _ = self.child.wait();
        }
    }
}

/// Starts `cmd` in a new process group with piped stdout/stderr (unless the
/// caller set them); the group is killed when the guard drops.
pub fn spawn_guarded(cmd: &mut Command) -> GroupGuard {
    cmd.process_group(0);
    if cmd.get_program().is_empty() {
        panic!("empty command");
    }
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {:?}: {e}", cmd.get_program()));
    GroupGuard {
        child,
        reaped: false,
    }
}

/// Waits for a guarded child for at most `timeout`, collecting its output.
/// On timeout the group is killed and the test panics with what it printed.
pub fn wait_timeout(mut g: GroupGuard, timeout: Duration, what: &str) -> Output {
    let deadline = Instant::now() + timeout;
    loop {
        match g.child.try_wait().expect("try_wait") {
            Some(_) => break,
            None if Instant::now() >= deadline => {
                // SAFETY: see GroupGuard::drop.
                unsafe { libc::kill(-(g.child.id() as i32), libc::SIGKILL) };
                g.reaped = true;
                let out = take_output(&mut g.child);
                panic!(
                    "{what}: still running after {timeout:?}; killed.\nstdout: {}\nstderr: {}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            None => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    g.reaped = true;
    // Grandchildren may still hold the group: end them too.
    // SAFETY: see GroupGuard::drop.
    unsafe { libc::kill(-(g.child.id() as i32), libc::SIGKILL) };
    take_output(&mut g.child)
}

fn take_output(child: &mut Child) -> Output {
    use std::io::Read;
    let status = child.wait().expect("wait");
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_end(&mut stdout);
    }
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_end(&mut stderr);
    }
    Output {
        status,
        stdout,
        stderr,
    }
}

/// Runs `cmd` to completion with a hard timeout (see [`wait_timeout`]).
/// stdout and stderr are captured in threads so a chatty child cannot block.
pub fn run_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let what = format!("{cmd:?}");
    let mut g = spawn_guarded(cmd);
    let drain = |r: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let so = drain(g.child.stdout.take().map(|s| Box::new(s) as _));
    let se = drain(g.child.stderr.take().map(|s| Box::new(s) as _));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = g.child.try_wait().expect("try_wait") {
            break Some(st);
        }
        if Instant::now() >= deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    // SAFETY: see GroupGuard::drop; this also ends grandchildren that kept
    // the group (and the pipes) alive after the child itself exited.
    unsafe { libc::kill(-(g.child.id() as i32), libc::SIGKILL) };
    g.reaped = true;
    let timed_out = status.is_none();
    let status = status.unwrap_or_else(|| g.child.wait().expect("wait"));
    let stdout = so.join().unwrap_or_default();
    let stderr = se.join().unwrap_or_default();
    if timed_out {
        panic!(
            "{what}: still running after {timeout:?}; killed.\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        );
    }
    Output {
        status,
        stdout,
        stderr,
    }
}

/// The loaders' one-line report: `RESULT key=value …`.
#[derive(Debug, Clone)]
pub struct LoaderLine {
    pub result: String,
    pub fields: HashMap<String, String>,
    pub line: String,
}

impl LoaderLine {
    /// Parses the last line of `stdout` that starts with a loader result word.
    pub fn parse(stdout: &str) -> LoaderLine {
        let line = stdout
            .lines()
            .rev()
            .find(|l| {
                ["loaded", "spinning", "failed"]
                    .iter()
                    .any(|w| l.starts_with(w))
            })
            .unwrap_or_else(|| panic!("no loader line in output: {stdout:?}"))
            .to_string();
        let mut words = line.split_whitespace();
        let result = words.next().unwrap_or_default().to_string();
        let fields = words
            .filter_map(|w| w.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        LoaderLine {
            result,
            fields,
            line,
        }
    }

    pub fn get(&self, key: &str) -> Option<u64> {
        self.fields.get(key).and_then(|v| v.parse().ok())
    }

    pub fn str(&self, key: &str) -> Option<&str> {
        self.fields.get(key).map(String::as_str)
    }
}

/// `field: value` of /proc/<pid>/task/<tid>/status for every thread.
pub fn task_field(pid: i32, name: &str) -> std::collections::BTreeMap<i32, String> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for e in dir.flatten() {
        let tid: i32 = e.file_name().to_string_lossy().parse().unwrap();
        if let Ok(s) = std::fs::read_to_string(e.path().join("status")) {
            if let Some(v) = s
                .lines()
                .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')))
            {
                out.insert(tid, v.trim().to_string());
            }
        }
    }
    out
}

/// The numbers of the supervisor's closing summary on `stderr` (`N guarded
/// bpf calls, R restarts, S stops; …`), in order; None without one. The
/// shim's summary (`N guarded bpf calls (…)`) is not it.
pub fn supervisor_summary(stderr: &[u8]) -> Option<Vec<u64>> {
    let stderr = String::from_utf8_lossy(stderr);
    let line = stderr
        .lines()
        .find(|l| l.contains(" guarded bpf calls, "))?;
    Some(
        line.split(|c: char| !c.is_ascii_digit())
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().unwrap())
            .collect(),
    )
}

/// Text of an Output, for assertion messages.
pub fn describe(out: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

/// A scratch directory for one test (under $TMPDIR, named after the test
/// binary's pid and `tag`), emptied at creation and removed on drop.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        let d = std::env::temp_dir().join(format!("spinguard-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("scratch dir {}: {e}", d.display()));
        Scratch(d)
    }

    pub fn dir(&self) -> &Path {
        &self.0
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The children of process `pid` (those of its main thread, as
/// /proc/PID/task/PID/children lists them); none once it is gone.
pub fn children(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// The lines `r` yields, gathered by a thread as they come (for a child's
/// stdout or stderr that a test reads while the child still runs).
pub fn collect_lines(r: impl std::io::Read + Send + 'static) -> std::sync::Arc<Mutex<Vec<String>>> {
    use std::io::BufRead;
    let lines = std::sync::Arc::new(Mutex::new(Vec::new()));
    let l = lines.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            l.lock().unwrap_or_else(|p| p.into_inner()).push(line);
        }
    });
    lines
}
