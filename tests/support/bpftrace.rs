//! bpftrace running the incident's one-liners beside spinguard, as the
//! reference its counts must agree with. bpftrace 0.17 may never exit under
//! a fast wall-clock signal, so it prints its maps on an interval and is
//! ended with SIGKILL (by [`Bpftrace::finish`], or on drop).

use super::{collect_lines, spawn_guarded, GroupGuard};
use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Bpftrace {
    guard: Option<GroupGuard>,
    lines: Arc<Mutex<Vec<String>>>,
}

/// The incident's two one-liners, limited to process `pid`, their maps
/// printed (cumulative) every `every_ms`: `@ret[RET]` bpf(2) return values,
/// `@sig[SIG]` signals delivered.
pub fn one_liners(pid: i32, every_ms: u64) -> String {
    format!(
        "t:syscalls:sys_exit_bpf /pid == {pid}/ {{ @ret[args->ret] = count(); }} \
         t:signal:signal_deliver /pid == {pid}/ {{ @sig[args->sig] = count(); }} \
         interval:ms:{every_ms} {{ printf(\"tick %lld\\n\", nsecs); print(@ret); print(@sig); }}"
    )
}

impl Bpftrace {
    /// Starts `bpftrace -e script` and waits until its probes are attached.
    pub fn start(script: &str) -> Bpftrace {
        if !std::path::Path::new("/sys/kernel/tracing/events").is_dir() {
            let _ = Command::new("mount")
                .args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"])
                .status();
        }
        let mut g = spawn_guarded(
            Command::new("bpftrace")
                .args(["-e", script])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
        );
        let lines = collect_lines(g.child.stdout.take().expect("piped"));
        let err = collect_lines(g.child.stderr.take().expect("piped"));
        let b = Bpftrace {
            guard: Some(g),
            lines,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !b.lines().iter().any(|l| l.starts_with("tick")) {
            assert!(
                Instant::now() < deadline,
                "bpftrace did not start: {:?} {:?}",
                b.lines(),
                err.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        b
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits for one more printout, then kills it; its output.
    pub fn finish(mut self) -> Vec<String> {
        let ticks = |l: &[String]| l.iter().filter(|l| l.starts_with("tick")).count();
        let n = ticks(&self.lines());
        let deadline = Instant::now() + Duration::from_secs(30);
        while ticks(&self.lines()) < n + 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(self.guard.take());
        self.lines()
    }
}

/// The last value printed for each key of map `@name` (cumulative printouts:
/// the totals).
pub fn totals(lines: &[String], name: &str) -> BTreeMap<i64, u64> {
    let prefix = format!("@{name}[");
    let mut out = BTreeMap::new();
    for l in lines {
        if let Some(rest) = l.strip_prefix(&prefix) {
            if let Some((k, v)) = rest.split_once("]: ") {
                if let (Ok(k), Ok(v)) = (k.parse(), v.trim().parse()) {
                    out.insert(k, v);
                }
            }
        }
    }
    out
}
