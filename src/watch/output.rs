//! What watch prints and sends each interval: the live table on a terminal,
//! plain lines elsewhere, JSON lines with `--json`, `livelock` and `rescue`
//! events with `--events`.

use super::events::ProbeEvents;
use super::host::{End, Interval, Observer};
use crate::report::{advice, json, rescue, table};
use spinguard_probe::Verdict;
use std::collections::{BTreeSet, HashMap, VecDeque};

/// How the intervals are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// Redrawn in place, like top.
    Table,
    /// One line per process per interval.
    Lines,
    /// One JSON document per process per interval.
    Json,
}

/// Prints each interval on stdout. A closed stdout (`watch | head`) ends the
/// watch quietly, a full one with an error (see `crate::output`).
pub struct Printer {
    style: Style,
    /// The last totals of what was lost, so each loss is said once.
    lost: (u64, u64),
    /// Each process's program, read once: the advice in JSON needs it, and
    /// /proc may be gone when it spins no more.
    programs: HashMap<i32, advice::Program>,
    /// The table's last rescue lines (a redraw would wipe a log line).
    recent: VecDeque<String>,
}

/// Rescue lines kept under the table.
const RECENT_RESCUES: usize = 6;

impl Printer {
    pub fn new(style: Style) -> Printer {
        Printer {
            style,
            lost: (0, 0),
            programs: HashMap::new(),
            recent: VecDeque::new(),
        }
    }

    fn text(&mut self, i: &Interval) -> String {
        match self.style {
            Style::Table => {
                let time = crate::listen::sys::local_time(i.end_us);
                for r in &i.rescues {
                    self.recent.push_back(format!("{time} {}", rescue::line(r)));
                    if self.recent.len() > RECENT_RESCUES {
                        self.recent.pop_front();
                    }
                }
                let mut t = table::table(i);
                if i.rescuing > 0 || !self.recent.is_empty() {
                    t += &format!("\nrescues ({} attached now):\n", i.rescuing);
                    for l in &self.recent {
                        t += l;
                        t.push('\n');
                    }
                }
                // Home, clear to the end: no flicker from a full clear.
                format!("\x1b[H{}\x1b[J", t.replace('\n', "\x1b[K\n"))
            }
            Style::Lines => {
                let mut s = table::lines(i);
                if (i.map_full, i.trigger_lost) != self.lost {
                    s += &format!(
                        "{} spinguard watch: {}\n",
                        crate::listen::sys::local_time(i.end_us),
                        table::health_text(i)
                    );
                }
                for r in &i.rescues {
                    s += &format!(
                        "{} {}\n",
                        crate::listen::sys::local_time(i.end_us),
                        rescue::line(r)
                    );
                }
                s
            }
            Style::Json => {
                let mut s = String::new();
                for p in &i.processes {
                    let prog = self
                        .programs
                        .entry(p.pid)
                        .or_insert_with(|| advice::Program::of(p.pid));
                    let mut doc = json::document(p, &advice::advice(p, prog));
                    doc["ts"] = i.end_us.into();
                    doc["interval_seconds"] =
                        ((i.length.as_secs_f64() * 1000.0).round() / 1000.0).into();
                    s += &doc.to_string();
                    s.push('\n');
                }
                for r in &i.rescues {
                    let mut doc = rescue::document(r);
                    doc["ts"] = i.end_us.into();
                    s += &doc.to_string();
                    s.push('\n');
                }
                s
            }
        }
    }
}

impl Observer for Printer {
    fn interval(&mut self, i: &Interval) -> anyhow::Result<()> {
        let text = self.text(i);
        self.lost = (i.map_full, i.trigger_lost);
        let live: BTreeSet<i32> = i.processes.iter().map(|p| p.pid).collect();
        self.programs.retain(|pid, _| live.contains(pid));
        // A closed stdout ends watch quietly, a full one is an error
        // (crate::output); either way the interval's text is not kept.
        crate::output::print_bytes(text.as_bytes())
    }
}

/// `--events`: a `livelock` event when a process turns livelocked (again
/// only after an interval in which it was not), and a `rescue` event for
/// each thing that happened to a rescue.
pub struct LivelockEvents {
    events: ProbeEvents,
    livelocked: BTreeSet<i32>,
}

impl LivelockEvents {
    pub fn new(events: ProbeEvents) -> LivelockEvents {
        LivelockEvents {
            events,
            livelocked: BTreeSet::new(),
        }
    }
}

impl Observer for LivelockEvents {
    fn interval(&mut self, i: &Interval) -> anyhow::Result<()> {
        let now: BTreeSet<i32> = i
            .processes
            .iter()
            .filter(|p| p.verdict == Verdict::Livelock)
            .map(|p| p.pid)
            .collect();
        for p in &i.processes {
            if p.verdict == Verdict::Livelock && !self.livelocked.contains(&p.pid) {
                self.events.livelock(p);
            }
        }
        for r in &i.rescues {
            self.events.rescue(r);
        }
        self.livelocked = now;
        Ok(())
    }

    fn finish(&mut self, _end: End) -> anyhow::Result<()> {
        let st = self.events.stats();
        if st.send_failures + st.too_big > 0 {
            log::warn!(
                "events: {} sent, {} not sent (last error {})",
                st.sent,
                st.send_failures + st.too_big,
                spinguard_common::errno::errno_name(st.last_errno)
            );
        } else {
            log::info!("events: {} sent", st.sent);
        }
        Ok(())
    }
}
