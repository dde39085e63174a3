//! The library interface `spinguard watch --rescue` builds on, used the way
//! a rescuer uses it: attachments made on threads other than main, two alive
//! at once in one process, each stopped from elsewhere through its
//! `StopHandle`, an observer that sees each guarded call end and lets go
//! once loads have been quiet for a while (a linger), and a detach that
//! leaves every thread's mask as it was.

mod support;

use spinguard_supervisor::attach::Attachment;
use spinguard_supervisor::session::{target, End, StopHandle, StopReason};
use spinguard_supervisor::{Event, GuardPolicy};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};
use support::*;

const LINGER: Duration = Duration::from_millis(500);

/// `SigBlk` and `TracerPid` of every thread of `pid`.
fn threads(pid: i32) -> BTreeMap<i32, (String, String)> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let tid: i32 = e.file_name().to_string_lossy().parse().unwrap();
        let s = std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
        let f = |k: &str| {
            s.lines()
                .find_map(|l| l.strip_prefix(k))
                .unwrap_or_default()
                .trim()
                .to_string()
        };
        out.insert(tid, (f("SigBlk:"), f("TracerPid:")));
    }
    out
}

/// What a rescuer thread saw.
#[derive(Debug)]
struct Rescue {
    loaded: u32,
    attempts: Vec<u32>,
    end: String,
    detached: usize,
}

/// Attaches to `pid` on the calling thread, lets go `LINGER` after the last
/// successful guarded call (or when `handle` is stopped from elsewhere).
fn rescue(pid: i32, handle: StopHandle, seized: &Barrier) -> Rescue {
    let t = target::check_target(pid).expect("target");
    let mut loaded = 0u32;
    let mut attempts = Vec::new();
    let linger = handle.clone();
    let mut observer = |e: &Event| {
        if let Event::Guarded(call) = e {
            attempts.push(call.attempts);
            if call.result >= 0 {
                loaded += 1;
                linger.stop_at(Some(Instant::now() + LINGER));
            }
        }
    };
    let mut a = Attachment::with_handle(t, GuardPolicy::default(), &mut observer, handle)
        .expect("attachment");
    let s = a.seize().expect("seize");
    assert!(s.complete && s.threads >= 1, "{s:?}");
    // Both attachments are alive from here on.
    seized.wait();
    let end = a.run().expect("run");
    let detached = match end {
        End::Stopped(_) => a.detach().expect("detach").threads,
        End::Exited(_) => 0,
    };
    drop(a);
    Rescue {
        loaded,
        attempts,
        end: format!("{end:?}"),
        detached,
    }
}

#[test]
fn two_attachments_on_two_threads_rescue_two_loaders_and_let_go_after_a_linger() {
    require_privileged!();
    let _s = serial();
    let corners = support::corners();
    // Two processes that load three times under a 1 kHz SIGPROF storm once
    // traced, then idle.
    let mut targets: Vec<GroupGuard> = (0..2)
        .map(|_| {
            spawn_guarded(
                Command::new(&corners)
                    .args(["--wait-traced", "load-idle", "3"])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::inherit()),
            )
        })
        .collect();
    let pids: Vec<i32> = targets.iter().map(|t| t.pid()).collect();
    let before: Vec<_> = pids.iter().map(|&p| threads(p)).collect();
    let handles: Vec<StopHandle> = (0..2).map(|_| StopHandle::new()).collect();
    let seized = Arc::new(Barrier::new(2));
    let rescuers: Vec<_> = pids
        .iter()
        .zip(&handles)
        .map(|(&pid, h)| {
            let (h, seized) = (h.clone(), seized.clone());
            std::thread::spawn(move || rescue(pid, h, &seized))
        })
        .collect();
    // Whatever happens, nothing outlives the test: a hard stop from here.
    let cap = Instant::now() + Duration::from_secs(60);
    while rescuers.iter().any(|r| !r.is_finished()) {
        if Instant::now() > cap {
            for h in &handles {
                h.stop(StopReason::Requested);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let results: Vec<Rescue> = rescuers.into_iter().map(|r| r.join().unwrap()).collect();
    for ((r, pid), before) in results.iter().zip(&pids).zip(&before) {
        assert_eq!(
            r.end, "Stopped(Deadline)",
            "pid {pid}: the linger ended it: {r:?}"
        );
        assert_eq!(r.loaded, 3, "pid {pid}: {r:?}");
        assert_eq!(r.attempts.len(), 3, "pid {pid}: one call per load: {r:?}");
        assert!(
            r.detached >= 2,
            "pid {pid}: the loader and its storm: {r:?}"
        );
        // Every thread there before is still there, untraced, with the same
        // mask (the storm thread started later).
        let after = threads(*pid);
        for (tid, (mask, _)) in before {
            let (m, tracer) = &after[tid];
            assert_eq!(m, mask, "pid {pid} tid {tid}: mask changed");
            assert_eq!(tracer, "0", "pid {pid} tid {tid}: still traced");
        }
        assert!(after.values().all(|(_, t)| t == "0"), "{after:?}");
        eprintln!("pid {pid}: {r:?}");
    }
    // The programs saw no EAGAIN: every load was guarded.
    for t in &mut targets {
        let mut line = String::new();
        BufReader::new(t.child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.starts_with("loaded loads=3 eagain=0"), "{line:?}");
    }
}

#[test]
fn a_stop_handle_ends_a_seize_and_a_run_from_another_thread() {
    require_privileged!();
    let _s = serial();
    // An idle process: no stop of its own would ever end the wait.
    let target = spawn_guarded(Command::new("sleep").arg("60"));
    let pid = target.pid();
    std::thread::sleep(Duration::from_millis(100));
    let handle = StopHandle::new();
    let h = handle.clone();
    let rescuer = std::thread::spawn(move || {
        let t = target::check_target(pid).unwrap();
        let mut quiet = |_: &Event| {};
        let mut a = Attachment::with_handle(t, GuardPolicy::default(), &mut quiet, h).unwrap();
        a.seize().unwrap();
        let end = a.run().unwrap();
        let d = a.detach().unwrap();
        (end, d.threads)
    });
    std::thread::sleep(Duration::from_millis(300));
    handle.stop(StopReason::Signal(libc::SIGTERM));
    let (end, threads) = rescuer.join().unwrap();
    assert_eq!(end, End::Stopped(StopReason::Signal(libc::SIGTERM)));
    assert_eq!(threads, 1);
    assert_eq!(self::threads(pid)[&pid].1, "0", "still traced");
}
