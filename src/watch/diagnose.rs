//! `spinguard diagnose PID`'s window: the probe scoped to one process,
//! bpf(2) counting on from the start, the counters read at the end. The
//! process is never touched: no ptrace, no signal, nothing in its memory.
//!
//! In a PID namespace of its own (a container, `kubectl debug --target`),
//! the probe names the process by its ids in the process's own PID
//! namespace (spinguard's, or one nested below it), and what it counted is
//! turned back into the pids spinguard sees; where the kernel cannot do
//! that, the probe refuses ([`spinguard_probe::pidns`]).

use super::stop::Stop;
use crate::report::{ProcessReport, Unseen};
use spinguard_probe::pidns;
use spinguard_probe::procfs::{self, Target};
use spinguard_probe::{activity, Counting, Ids, Probe, ProbeError, Scope, Verdict};
use std::collections::HashMap;
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
    let ours = pidns::ours()?;
    // `id`: the process as the probe names it (its pid here, unless it
    // lives in a namespace nested below ours).
    let (ids, id) = pidns::ids_of(pid, ours)?;
    let nested = match ids {
        Ids::Ns(ns) if ids != ours => Some(ns),
        _ => None,
    };
    let mut probe = Probe::open(Scope::Process(id), ids)?;
    let id = id as i32;
    let threads = procfs::threads(pid);
    probe.watch_process(id, &threads)?;
    // A nested namespace's ids back to ours: known at the start and at the
    // end (a sender that lived only in between cannot be named).
    let mut ours_of = nested.map(pidns::ids_in);
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
        probe.watch_process(id, &procfs::threads(pid))?;
    }
    let after = probe.snapshot()?;
    if let (Some(map), Some(ns)) = (&mut ours_of, nested) {
        map.extend(pidns::ids_in(ns));
    }
    let elapsed = start.elapsed();
    if after.map_full > before.map_full {
        log::warn!(
            "{} updates were lost: a probe map was full",
            after.map_full - before.map_full
        );
    }
    let mut activity = activity::between(&before, &after)
        .remove(&id)
        .unwrap_or_default();
    if let Some(map) = &ours_of {
        activity = activity.renamed(&in_view(map, id, pid));
    }
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
        unseen: (verdict == Verdict::Unknown).then_some(Unseen::Compat),
    })
}

/// The ids of a nested namespace as we see them, the process itself
/// certain (`id` there is `pid` here) even if it has just ended.
fn in_view(map: &HashMap<i32, i32>, id: i32, pid: i32) -> HashMap<i32, i32> {
    let mut m = map.clone();
    m.insert(id, pid);
    m
}
