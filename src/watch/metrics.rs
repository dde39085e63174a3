//! watch's metrics, in the Prometheus text format: to a file
//! (`--metrics FILE`, for node_exporter's textfile collector, replaced
//! atomically) and over HTTP (`--metrics-addr`, [`super::http`]). Labels are
//! the process name and its container, never the pid: a restarted agent
//! stays one series, and pids would grow the series count without bound.

use super::host::{End, Interval, Observer};
use crate::listen::metrics::{escape_label, write_atomic};
use spinguard_common::bpf::{command_name, is_guarded};
use spinguard_common::errno::errno_name;
use spinguard_common::signals::signal_name;
use spinguard_probe::Verdict;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Distinct (comm, container) label pairs kept; later ones are folded into
/// comm="other", container="other".
pub const MAX_SERIES: usize = 1000;

type Who = (String, String);

#[derive(Default)]
pub struct Metrics {
    /// (who, cmd, result) → calls.
    calls: BTreeMap<(Who, &'static str, String), u64>,
    /// (who, signal) → signals queued during guarded calls.
    during: BTreeMap<(Who, String), u64>,
    /// who → processes whose last verdict is livelock.
    livelocked: BTreeMap<Who, u64>,
    /// Every who seen, for the gauge's zeros and the series bound.
    seen: BTreeSet<Who>,
    /// verdict → processes with guarded calls in the last interval.
    verdicts: BTreeMap<&'static str, u64>,
    /// (who, outcome) → things that happened to rescues (`--rescue`).
    rescues: BTreeMap<(Who, &'static str), u64>,
    /// Rescues attached at the end of the last interval; None without `--rescue`.
    rescuing: Option<u64>,
    counting: bool,
    suspects: u64,
    map_full: u64,
    trigger_lost: u64,
    intervals: u64,
}

const VERDICTS: [Verdict; 4] = [
    Verdict::Livelock,
    Verdict::AtRisk,
    Verdict::Healthy,
    Verdict::Unknown,
];

impl Metrics {
    fn who(&mut self, comm: &str, container: Option<&str>) -> Who {
        let who = (comm.to_string(), container.unwrap_or("").to_string());
        if self.seen.contains(&who) || self.seen.len() < MAX_SERIES {
            self.seen.insert(who.clone());
            who
        } else {
            ("other".into(), "other".into())
        }
    }

    pub fn record(&mut self, i: &Interval) {
        self.intervals += 1;
        self.counting = i.counting.native;
        self.suspects += i.suspects.len() as u64;
        self.map_full = i.map_full;
        self.trigger_lost = i.trigger_lost;
        self.verdicts.clear();
        for v in self.livelocked.values_mut() {
            *v = 0;
        }
        for p in &i.processes {
            let who = self.who(&p.name, p.placement.container.as_deref());
            *self.verdicts.entry(p.verdict.as_str()).or_default() += 1;
            let ll = self.livelocked.entry(who.clone()).or_default();
            if p.verdict == Verdict::Livelock {
                *ll += 1;
            }
            for (&cmd, c) in &p.activity.bpf {
                if !is_guarded(cmd) {
                    continue;
                }
                let name = command_name(cmd);
                if c.ok > 0 {
                    *self
                        .calls
                        .entry((who.clone(), name, "ok".into()))
                        .or_default() += c.ok;
                }
                for (e, n) in &c.errors {
                    *self
                        .calls
                        .entry((who.clone(), name, errno_name(*e)))
                        .or_default() += n;
                }
            }
            for (&sig, s) in &p.activity.signals {
                if s.during_guarded > 0 {
                    *self
                        .during
                        .entry((who.clone(), signal_name(sig)))
                        .or_default() += s.during_guarded;
                }
            }
        }
        for r in &i.rescues {
            let who = self.who(&r.before.name, r.before.placement.container.as_deref());
            *self.rescues.entry((who, r.what.outcome())).or_default() += 1;
        }
    }

    /// `--rescue` is on: the in-flight gauge is exported from the start.
    pub fn rescuing(&mut self, n: usize) {
        self.rescuing = Some(n as u64);
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        let labels = |w: &Who| {
            format!(
                "comm=\"{}\",container=\"{}\"",
                escape_label(&w.0),
                escape_label(&w.1)
            )
        };
        let head = |s: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        head(
            &mut s,
            "spinguard_watch_livelocked_processes",
            "gauge",
            "Processes whose guarded bpf calls kept failing with EAGAIN/EINTR in the last interval (the livelock).",
        );
        for (w, n) in &self.livelocked {
            let _ = writeln!(
                s,
                "spinguard_watch_livelocked_processes{{{}}} {n}",
                labels(w)
            );
        }
        head(
            &mut s,
            "spinguard_watch_processes",
            "gauge",
            "Processes with guarded bpf calls in the last interval, by verdict.",
        );
        for v in VERDICTS {
            let n = self.verdicts.get(v.as_str()).copied().unwrap_or(0);
            let _ = writeln!(
                s,
                "spinguard_watch_processes{{verdict=\"{}\"}} {n}",
                v.as_str()
            );
        }
        head(
            &mut s,
            "spinguard_watch_guarded_calls_total",
            "counter",
            "Guarded bpf calls (BPF_PROG_LOAD, BPF_PROG_TEST_RUN) that returned while counted, by result.",
        );
        for ((w, cmd, result), n) in &self.calls {
            let _ = writeln!(
                s,
                "spinguard_watch_guarded_calls_total{{{},cmd=\"{cmd}\",result=\"{}\"}} {n}",
                labels(w),
                escape_label(result)
            );
        }
        head(
            &mut s,
            "spinguard_watch_signals_during_calls_total",
            "counter",
            "Signals queued for a process while one of its guarded bpf calls ran.",
        );
        for ((w, sig), n) in &self.during {
            let _ = writeln!(
                s,
                "spinguard_watch_signals_during_calls_total{{{},signal=\"{sig}\"}} {n}",
                labels(w)
            );
        }
        if let Some(n) = self.rescuing {
            head(
                &mut s,
                "spinguard_watch_rescues_total",
                "counter",
                "What happened to watch --rescue's rescues, by outcome: loaded (attached, and a guarded call succeeded), detached (let go), exited, failed, traced (traced by someone else: not touched).",
            );
            for ((w, outcome), c) in &self.rescues {
                let _ = writeln!(
                    s,
                    "spinguard_watch_rescues_total{{{},outcome=\"{outcome}\"}} {c}",
                    labels(w)
                );
            }
            head(
                &mut s,
                "spinguard_watch_rescues_in_flight",
                "gauge",
                "Processes watch --rescue is attached to.",
            );
            let _ = writeln!(s, "spinguard_watch_rescues_in_flight {n}");
        }
        head(
            &mut s,
            "spinguard_watch_counting",
            "gauge",
            "1 while bpf(2) calls are counted (a suspect was seen, or --trace-always).",
        );
        let _ = writeln!(s, "spinguard_watch_counting {}", u8::from(self.counting));
        head(
            &mut s,
            "spinguard_watch_suspects_total",
            "counter",
            "Threads that took a signal right after a syscall failed with EAGAIN or EINTR.",
        );
        let _ = writeln!(s, "spinguard_watch_suspects_total {}", self.suspects);
        head(
            &mut s,
            "spinguard_watch_lost_total",
            "counter",
            "What the probe could not count: map_full (a counter map was full), trigger (signal samples lost).",
        );
        let _ = writeln!(
            s,
            "spinguard_watch_lost_total{{what=\"map_full\"}} {}",
            self.map_full
        );
        let _ = writeln!(
            s,
            "spinguard_watch_lost_total{{what=\"trigger\"}} {}",
            self.trigger_lost
        );
        head(
            &mut s,
            "spinguard_watch_intervals_total",
            "counter",
            "Intervals reported since spinguard watch started.",
        );
        let _ = writeln!(s, "spinguard_watch_intervals_total {}", self.intervals);
        s
    }
}

/// The observer: records each interval, then writes the file and hands the
/// text to the HTTP server.
pub struct MetricsOut {
    pub metrics: Metrics,
    pub file: Option<PathBuf>,
    pub shared: Option<Arc<Mutex<String>>>,
    warned: bool,
}

impl MetricsOut {
    pub fn new(file: Option<PathBuf>, shared: Option<Arc<Mutex<String>>>) -> MetricsOut {
        MetricsOut {
            metrics: Metrics::default(),
            file,
            shared,
            warned: false,
        }
    }

    fn publish(&mut self) {
        let text = self.metrics.render();
        if let Some(f) = &self.file {
            match write_atomic(f, &text) {
                Ok(()) => self.warned = false,
                Err(e) if !self.warned => {
                    log::warn!(
                        "--metrics {}: {e} (still watching; retrying each interval)",
                        f.display()
                    );
                    self.warned = true;
                }
                Err(_) => {}
            }
        }
        if let Some(s) = &self.shared {
            *s.lock().unwrap_or_else(|p| p.into_inner()) = text;
        }
    }
}

impl Observer for MetricsOut {
    fn interval(&mut self, i: &Interval) -> anyhow::Result<()> {
        self.metrics.record(i);
        if self.metrics.rescuing.is_some() {
            self.metrics.rescuing(i.rescuing);
        }
        self.publish();
        Ok(())
    }

    fn finish(&mut self, _end: End) -> anyhow::Result<()> {
        self.publish();
        Ok(())
    }
}
