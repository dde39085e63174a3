//! `spinguard diagnose PID`'s window: the probe scoped to one process,
//! bpf(2) counting on from the start, the counters read at the end. The
//! process is never touched: no ptrace, no signal, nothing in its memory.

use super::stop::Stop;
use crate::report::ProcessReport;
use spinguard_probe::procfs::{self, Target};
use spinguard_probe::{activity, Counting, Ids, Probe, ProbeError, Scope, Verdict};
use std::time::{Duration, Instant};

/// How often new threads of the target are looked for (a signal sent to a
/// thread the probe does not know yet is not attributed).
const TICK: Duration = Duration::from_millis(100);

/// Watches `target` for `window`, or until a stop signal, or until it ends.
pub fn diagnose(
    target: &Target,
    window: Duration,
    stop: &Stop,
) -> Result<ProcessReport, ProbeError> {
    let pid = target.pid;
    let compat = procfs::is_compat(pid);
    let mut probe = Probe::open(Scope::Process(pid as u32), Ids::Host)?;
    let threads = procfs::threads(pid);
    probe.watch_process(pid, &threads)?;
    let counting = probe.count(Counting {
        native: true,
        compat,
    })?;
    let start = Instant::now();
    let before = probe.snapshot()?;
    let mut exited = false;
    loop {
        let left = window.saturating_sub(start.elapsed());
        if left.is_zero() {
            break;
        }
        match stop.wait(left.min(TICK)) {
            Ok(Some(sig)) => {
                log::info!(
                    "got {}: ending the window early",
                    spinguard_common::signals::signal_name(sig)
                );
                break;
            }
            Ok(None) => {}
            Err(e) => {
                return Err(ProbeError::Io {
                    what: "waiting".into(),
                    source: e,
                })
            }
        }
        if !procfs::alive(pid) {
            exited = true;
            break;
        }
        probe.watch_process(pid, &procfs::threads(pid))?;
    }
    let after = probe.snapshot()?;
    let elapsed = start.elapsed();
    if after.map_full > before.map_full {
        log::warn!(
            "{} updates were lost: a probe map was full",
            after.map_full - before.map_full
        );
    }
    let activity = activity::between(&before, &after)
        .remove(&pid)
        .unwrap_or_default();
    let guard = procfs::guard(pid);
    let verdict = if compat && !counting.compat {
        Verdict::Unknown
    } else {
        activity.verdict(guard.is_some())
    };
    Ok(ProcessReport {
        pid,
        name: target.name.clone(),
        window: elapsed,
        threads: threads.len(),
        activity,
        verdict,
        exited,
        placement: procfs::placement(pid),
        tracer: procfs::tracer(pid),
        guard,
        compat,
    })
}
