//! `--events PATH` for watch and diagnose: `livelock` and `rescue` (and
//! diagnose's `summary`) as datagrams from source "probe", one stream per
//! process.
//! Sending never blocks (a missing or full listener is counted, not waited
//! for); docs/events.md says who sends what.

use super::rescue::session::Ended;
use super::rescue::{LetGo, Rescue, What};
use crate::report::ProcessReport;
use spinguard_common::bpf::{is_guarded, is_signal_failure, GUARDED_COMMANDS};
use spinguard_common::events::{
    now_us, Body, Comm, Header, Livelock, RescueOutcome, SendStats, Sender, Source, Summary,
};
use spinguard_common::SigSet;
use std::collections::HashMap;
use std::path::Path;

pub struct ProbeEvents {
    sender: Sender,
    seq: HashMap<i32, u64>,
}

impl ProbeEvents {
    pub fn new(path: &Path) -> anyhow::Result<ProbeEvents> {
        Ok(ProbeEvents {
            sender: Sender::new(path)
                .map_err(|e| anyhow::anyhow!("--events {}: {e}", path.display()))?,
            seq: HashMap::new(),
        })
    }

    fn send(&mut self, pid: i32, body: &Body<'_>) {
        let seq = self.seq.entry(pid).or_insert(0);
        *seq += 1;
        let h = Header {
            source: Source::Probe,
            pid,
            tid: pid,
            seq: *seq,
            ts_us: now_us(),
            comm: Comm::EMPTY,
        };
        self.sender.send_event(&h, body);
    }

    /// A `livelock` event for `r` (whose verdict is livelock).
    pub fn livelock(&mut self, r: &ProcessReport) {
        let a = &r.activity;
        // The guarded command and errno that failed most.
        let (cmd, errno, _) = a
            .bpf
            .iter()
            .filter(|(c, _)| is_guarded(**c))
            .flat_map(|(c, s)| s.errors.iter().map(move |(e, n)| (*c, *e, *n)))
            .filter(|(_, e, _)| is_signal_failure(*e))
            .max_by_key(|(_, _, n)| *n)
            .unwrap_or((GUARDED_COMMANDS[0], libc::EAGAIN, 0));
        let mut signals = SigSet::EMPTY;
        for (&sig, s) in &a.signals {
            if s.during_guarded > 0 {
                signals.insert(sig);
            }
        }
        let container = r.placement.container.clone().unwrap_or_default();
        let body = Body::Livelock(Livelock {
            comm: r.name.as_bytes(),
            cmd,
            errno,
            failures: a.signal_failures(),
            ok: a.guarded_ok(),
            window_us: r.window.as_micros() as u64,
            signals,
            nspid: r.placement.nspid,
            container: container.as_bytes(),
        });
        self.send(r.pid, &body);
    }

    /// A `rescue` event: what just happened to the rescue of `r.pid`.
    pub fn rescue(&mut self, r: &Rescue) {
        let us = |d: std::time::Duration| d.as_micros() as u64;
        // A datagram is whole or not sent: a long error is cut, not lost.
        let reason;
        let tracer_comm;
        let outcome = match &r.what {
            What::Loaded {
                after,
                since_attach,
                attempts,
                threads,
            } => RescueOutcome::Loaded {
                load_us: us(*after),
                attach_us: us(*since_attach),
                attempts: *attempts,
                threads: *threads as u32,
            },
            What::Ended(Ended::Detached {
                why,
                threads,
                attached,
                calls,
                loads,
            }) => RescueOutcome::Detached {
                linger: matches!(why, LetGo::Linger(_)),
                threads: *threads as u32,
                attached_us: us(*attached),
                calls: *calls,
                loads: *loads,
            },
            What::Ended(Ended::Exited {
                attached, loads, ..
            }) => RescueOutcome::Exited {
                attached_us: us(*attached),
                loads: *loads,
            },
            What::Ended(Ended::Failed(why)) => {
                reason = why.as_bytes()[..why.len().min(400)].to_vec();
                RescueOutcome::Failed { reason: &reason }
            }
            What::Traced {
                tracer,
                tracer_name,
            } => {
                tracer_comm = tracer_name.clone();
                RescueOutcome::Traced {
                    tracer: *tracer,
                    tracer_comm: tracer_comm.as_bytes(),
                }
            }
        };
        let b = &r.before;
        let container = b.placement.container.clone().unwrap_or_default();
        let body = Body::Rescue(spinguard_common::events::Rescue {
            comm: b.name.as_bytes(),
            outcome,
            failures: b.failures,
            ok: b.ok,
            window_us: us(b.window),
            guard: b.guard,
            nspid: b.placement.nspid,
            container: container.as_bytes(),
        });
        self.send(r.pid, &body);
    }

    /// diagnose's `summary`: the guarded-command calls it saw return.
    pub fn summary(&mut self, r: &ProcessReport) {
        let a = &r.activity;
        let calls: Vec<(u32, u64)> = GUARDED_COMMANDS
            .iter()
            .map(|c| (*c, a.bpf.get(c).map_or(0, |s| s.calls)))
            .collect();
        let guarded_us = a
            .bpf
            .iter()
            .filter(|(c, _)| is_guarded(**c))
            .map(|(_, s)| s.inside.as_micros() as u64)
            .sum();
        let st = self.sender.stats();
        let body = Body::Summary(Summary {
            calls: &calls,
            retries: a.signal_failures(),
            guarded_us,
            held_back: 0,
            events_sent: st.sent,
            events_dropped: st.send_failures + st.too_big,
            send_failures: st.send_failures,
        });
        self.send(r.pid, &body);
    }

    pub fn stats(&self) -> SendStats {
        self.sender.stats()
    }
}
