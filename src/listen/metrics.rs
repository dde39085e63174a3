//! `--metrics FILE`: counters in the Prometheus text format (which
//! node_exporter's textfile collector reads), replaced atomically.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use spinguard_common::events::decode::{Decoded, Event, Outcome};
use spinguard_common::events::Source;

use super::origin::Origin;

/// Distinct (source, program, container) label sets kept before the rest are
/// folded into `program="other",container="other"`. Programs and containers
/// are few where pids are many, but containers come and go on a node for as
/// long as the listener runs: the file (and Prometheus's series count) must
/// not grow without bound.
pub const MAX_SERIES: usize = 1000;

/// Why a datagram was ignored; the `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Malformed {
    /// Longer than the listener accepts (events::MAX_DATAGRAM).
    Oversized,
    /// Not JSON at all: binary garbage, half an object.
    NotJson,
    /// JSON, but not a v1 event (wrong version, missing fields).
    Invalid,
}

impl Malformed {
    pub const ALL: [Malformed; 3] = [Malformed::Oversized, Malformed::NotJson, Malformed::Invalid];

    pub fn label(self) -> &'static str {
        match self {
            Malformed::Oversized => "oversized",
            Malformed::NotJson => "not_json",
            Malformed::Invalid => "invalid",
        }
    }
}

#[derive(Default, Clone, Copy)]
struct Loads {
    loads: u64,
    retries: u64,
    held_back: u64,
}

/// The labels of a process: its program name and its container (`""` when
/// it runs in none), never its pid.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Who {
    source: Source,
    program: String,
    container: String,
}

#[derive(Default)]
pub struct Metrics {
    loads: BTreeMap<(Who, String), Loads>,
    lost: BTreeMap<Who, u64>,
    malformed: BTreeMap<Malformed, u64>,
    series: HashSet<Who>,
}

impl Metrics {
    fn who(&mut self, source: Source, origin: &Origin) -> Who {
        let who = Who {
            source,
            program: match origin.program.as_str() {
                "" => "unknown".to_string(),
                p => p.to_string(),
            },
            container: origin.container.clone().unwrap_or_default(),
        };
        if self.series.contains(&who) || self.series.len() < MAX_SERIES {
            self.series.insert(who.clone());
            who
        } else {
            Who {
                source,
                program: "other".into(),
                container: "other".into(),
            }
        }
    }

    /// Counts a `prog_load`. A retry is a kernel run the caller had to repeat:
    /// the supervisor's restarts (`attempts - 1`), plus one when the call still
    /// ended in EAGAIN or EINTR (the loader itself will call again).
    pub fn record(&mut self, e: &Event, origin: &Origin) {
        let Decoded::ProgLoad {
            cmd,
            attempts,
            result,
            held_back,
            ..
        } = &e.body
        else {
            return;
        };
        let who = self.who(e.source, origin);
        let l = self.loads.entry((who, cmd.clone())).or_default();
        l.loads += 1;
        l.retries += attempts.saturating_sub(1);
        if matches!(result, Outcome::Errno(n) if n == "EAGAIN" || n == "EINTR") {
            l.retries += 1;
        }
        l.held_back += held_back;
    }

    pub fn lost(&mut self, source: Source, origin: &Origin, n: u64) {
        let who = self.who(source, origin);
        *self.lost.entry(who).or_default() += n;
    }

    pub fn malformed(&mut self, why: Malformed) {
        *self.malformed.entry(why).or_default() += 1;
    }

    pub fn malformed_total(&self) -> u64 {
        self.malformed.values().sum()
    }

    pub fn malformed_by(&self, why: Malformed) -> u64 {
        self.malformed.get(&why).copied().unwrap_or(0)
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        let header = |s: &mut String, name: &str, help: &str| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter");
        };
        type Get = fn(&Loads) -> u64;
        let per_load: [(&str, &str, Get); 3] = [
            (
                "spinguard_loads_total",
                "Guarded bpf calls reported (prog_load events).",
                |l| l.loads,
            ),
            (
                "spinguard_retries_total",
                "Kernel runs that had to be repeated: supervisor restarts, and calls that ended in EAGAIN or EINTR.",
                |l| l.retries,
            ),
            (
                "spinguard_signals_held_back_total",
                "Guard signals held back during guarded calls (see docs/events.md for what each source counts).",
                |l| l.held_back,
            ),
        ];
        for (name, help, get) in per_load {
            header(&mut s, name, help);
            for ((who, cmd), l) in &self.loads {
                let _ = writeln!(
                    s,
                    "{name}{{{},cmd=\"{}\"}} {}",
                    who.labels(),
                    escape_label(cmd),
                    get(l)
                );
            }
        }
        let name = "spinguard_events_lost_total";
        header(
            &mut s,
            name,
            "Events missing from a stream's sequence numbers.",
        );
        for (who, n) in &self.lost {
            let _ = writeln!(s, "{name}{{{}}} {n}", who.labels());
        }
        let name = "spinguard_malformed_datagrams_total";
        header(
            &mut s,
            name,
            "Datagrams ignored: oversized, not JSON, or not a v1 event.",
        );
        for why in Malformed::ALL {
            let _ = writeln!(
                s,
                "{name}{{reason=\"{}\"}} {}",
                why.label(),
                self.malformed_by(why)
            );
        }
        s
    }
}

impl Who {
    fn labels(&self) -> String {
        format!(
            "source=\"{}\",program=\"{}\",container=\"{}\"",
            self.source.as_str(),
            escape_label(&self.program),
            escape_label(&self.container)
        )
    }
}

/// Label values escape `\`, `"` and newline (Prometheus exposition format).
pub fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Replaces `path` with `text` so a reader sees the old file or the new one,
/// never a partial one: write a temporary file in the same directory (rename
/// is atomic only within a file system), fsync it, rename it over `path`,
/// fsync the directory. The temporary name does not end in `.prom`, so the
/// textfile collector never reads it.
pub fn write_atomic(path: &Path, text: &str) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let tmp = dir.join(format!(
        ".{}.tmp.{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use spinguard_common::events::decode::decode;

    fn load(source: &str, pid: i32, result: &str, attempts: u64, held: u64) -> Event {
        decode(format!(
            r#"{{"v":1,"source":"{source}","pid":{pid},"tid":{pid},"seq":1,"ts":1,"event":"prog_load","cmd":"BPF_PROG_LOAD","attempts":{attempts},"result":{result},"duration_us":5,"held_back":{held},"held_back_signals":[]}}"#
        ).as_bytes())
        .unwrap()
    }

    fn origin(program: &str, container: Option<&str>) -> Origin {
        Origin {
            program: program.into(),
            container: container.map(Into::into),
            ..Origin::default()
        }
    }

    #[test]
    fn counts_and_renders() {
        let mut m = Metrics::default();
        let agent = origin("agent", None);
        m.record(&load("shim", 42, r#"{"fd":7}"#, 1, 3), &agent);
        m.record(&load("shim", 43, r#"{"errno":"EAGAIN"}"#, 1, 0), &agent);
        m.record(&load("supervisor", 42, r#"{"fd":8}"#, 4, 118), &agent);
        m.record(
            &load("shim", 1, r#"{"fd":8}"#, 1, 0),
            &origin("agent", Some("3f2a")),
        );
        m.record(&load("shim", 1, r#"{"fd":8}"#, 1, 0), &origin("", None));
        m.lost(Source::Shim, &agent, 3);
        m.malformed(Malformed::NotJson);
        m.malformed(Malformed::NotJson);
        let text = m.render();
        for line in [
            r#"spinguard_loads_total{source="shim",program="agent",container="",cmd="BPF_PROG_LOAD"} 2"#,
            r#"spinguard_loads_total{source="supervisor",program="agent",container="",cmd="BPF_PROG_LOAD"} 1"#,
            r#"spinguard_loads_total{source="shim",program="agent",container="3f2a",cmd="BPF_PROG_LOAD"} 1"#,
            r#"spinguard_loads_total{source="shim",program="unknown",container="",cmd="BPF_PROG_LOAD"} 1"#,
            r#"spinguard_retries_total{source="shim",program="agent",container="",cmd="BPF_PROG_LOAD"} 1"#,
            r#"spinguard_retries_total{source="supervisor",program="agent",container="",cmd="BPF_PROG_LOAD"} 3"#,
            r#"spinguard_signals_held_back_total{source="shim",program="agent",container="",cmd="BPF_PROG_LOAD"} 3"#,
            r#"spinguard_signals_held_back_total{source="supervisor",program="agent",container="",cmd="BPF_PROG_LOAD"} 118"#,
            r#"spinguard_events_lost_total{source="shim",program="agent",container=""} 3"#,
            r#"spinguard_malformed_datagrams_total{reason="not_json"} 2"#,
            r#"spinguard_malformed_datagrams_total{reason="oversized"} 0"#,
            "# TYPE spinguard_loads_total counter",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        assert!(!text.contains("pid="), "no pid label: {text}");
    }

    /// A thousand processes of one program in one container are one series.
    #[test]
    fn label_sets_are_capped_not_pids() {
        let mut m = Metrics::default();
        for pid in 0..5000 {
            m.record(
                &load("shim", pid, r#"{"fd":7}"#, 1, 0),
                &origin("agent", None),
            );
        }
        let text = m.render();
        assert!(text.contains(
            r#"spinguard_loads_total{source="shim",program="agent",container="",cmd="BPF_PROG_LOAD"} 5000"#
        ));
        for c in 0..MAX_SERIES + 5 {
            let o = origin("agent", Some(&format!("{c:012x}")));
            m.record(&load("shim", 1, r#"{"fd":7}"#, 1, 0), &o);
        }
        let text = m.render();
        assert!(text.contains(
            r#"spinguard_loads_total{source="shim",program="other",container="other",cmd="BPF_PROG_LOAD"} 6"#
        ), "{}", text.lines().filter(|l| l.contains("other")).collect::<Vec<_>>().join("\n"));
        assert_eq!(
            text.lines()
                .filter(|l| l.starts_with("spinguard_loads_total{"))
                .count(),
            MAX_SERIES + 1
        );
    }

    #[test]
    fn labels_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
