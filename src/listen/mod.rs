//! `spinguard listen`: receives events on a Unix datagram socket and prints
//! them, tracks lost events per stream, and keeps a metrics file.
//!
//! One thread, one poll loop over two fds: the socket and a signalfd for
//! SIGINT/SIGTERM. Nothing a sender does can stop it: every datagram is
//! either an event or a counted, ignored, malformed one.
//!
//! - [`socket`]: taking the path (0600, stale takeover, refusals), removal.
//! - [`streams`]: sequence gaps per stream (source, sending process, pid).
//! - [`origin`]: who sent it, whatever its PID namespace: the pid here, the
//!   container, the program.
//! - [`metrics`]: counters and the atomically replaced metrics file.
//! - [`human`]: the readable lines.
//! - [`sys`]: the raw calls.

pub mod human;
pub mod metrics;
pub mod origin;
pub mod socket;
pub mod streams;
pub mod sys;

use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::json;
use spinguard_common::events::decode::{decode, DecodeError, Decoded, Event};
use spinguard_common::events::{now_us, MAX_DATAGRAM};

use metrics::{Malformed, Metrics};
use origin::Origin;
use socket::{BoundSocket, Taken};
use streams::{SeqNote, StreamKey, Streams};
use sys::{Received, SignalFd};

/// Rewrite the metrics file at most this often (and at exit).
const METRICS_EVERY: Duration = Duration::from_secs(1);
/// Report newly ignored datagrams at most this often (and at exit).
const MALFORMED_EVERY: Duration = Duration::from_secs(1);

pub struct Options {
    pub path: PathBuf,
    pub json: bool,
    pub metrics: Option<PathBuf>,
}

/// Where lines go: stdout for events and notes, stderr (the log) for the
/// listener's own status. A closed stdout (`listen | head`) ends the listener
/// cleanly (exit 0). Any other write error (a full disk) costs one warning,
/// then silence until a write works again: the events are still counted in
/// the metrics, and the senders never notice.
struct Out {
    json: bool,
    /// fd 1, unbuffered: a line is written whole or fails whole, and a failed
    /// one is not retried later out of order from a buffer.
    stdout: std::fs::File,
    failing: bool,
}

impl Out {
    fn new(json: bool) -> io::Result<Out> {
        use std::os::fd::AsFd;
        let fd = io::stdout().as_fd().try_clone_to_owned()?;
        Ok(Out {
            json,
            stdout: fd.into(),
            failing: false,
        })
    }

    /// Err only for a closed stdout.
    fn line(&mut self, s: &str) -> io::Result<()> {
        let mut l = String::with_capacity(s.len() + 1);
        l.push_str(s);
        l.push('\n');
        match self.stdout.write_all(l.as_bytes()) {
            Ok(()) => {
                if std::mem::take(&mut self.failing) {
                    log::info!("writing events to stdout works again");
                }
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Err(e),
            Err(e) => {
                if !std::mem::replace(&mut self.failing, true) {
                    log::warn!("cannot write events to stdout: {e}; still listening and counting");
                }
                Ok(())
            }
        }
    }

    /// A listener note: a human line, or a JSON object with `"source":"listener"`.
    fn note(
        &mut self,
        human: impl FnOnce() -> String,
        mut fields: serde_json::Value,
    ) -> io::Result<()> {
        if self.json {
            if let Some(o) = fields.as_object_mut() {
                o.insert("ts".into(), now_us().into());
            }
            self.line(&fields.to_string())
        } else {
            self.line(&human())
        }
    }
}

struct Listener {
    out: Out,
    streams: Streams,
    metrics: Metrics,
    metrics_path: Option<PathBuf>,
    metrics_dirty: bool,
    metrics_written: Option<Instant>,
    metrics_failing: bool,
    /// Malformed count at the last report, and the last reason seen.
    malformed_reported: u64,
    malformed_at: Option<Instant>,
    last_error: String,
}

/// Runs until SIGINT or SIGTERM (exit 0), or a fatal socket error.
pub fn run(opts: Options) -> anyhow::Result<i32> {
    // Block the signals before the socket exists, so no SIGTERM can kill us
    // between creating the file and being ready to remove it.
    let signals = SignalFd::new(&[libc::SIGINT, libc::SIGTERM])?;
    let (sock, taken) = BoundSocket::take(&opts.path)?;
    log::info!(
        "listening on {}{}",
        sock.path().display(),
        if taken == Taken::Stale {
            " (took over a stale socket)"
        } else {
            ""
        }
    );
    let mut l = Listener {
        out: Out::new(opts.json)?,
        streams: Streams::default(),
        metrics: Metrics::default(),
        metrics_dirty: opts.metrics.is_some(),
        metrics_path: opts.metrics,
        metrics_written: None,
        metrics_failing: false,
        malformed_reported: 0,
        malformed_at: None,
        last_error: String::new(),
    };
    l.flush_metrics();
    // One byte more than we accept, and MSG_TRUNC for the true length.
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    let result = loop {
        let timeout = l.next_timeout();
        let [readable, signalled] = sys::poll_readable(
            [sock.as_raw_fd(), signals.as_raw_fd()],
            timeout.as_millis().min(i32::MAX as u128) as i32,
        )?;
        if signalled {
            if let Some(sig) = signals.read() {
                log::info!(
                    "{}, removing {}",
                    spinguard_common::signals::signal_name(sig),
                    sock.path().display()
                );
                break Ok(());
            }
        }
        if readable {
            if let Err(e) = l.drain(sock.as_raw_fd(), &mut buf) {
                break Err(e);
            }
        }
        if let Err(e) = l.tick(false) {
            break Err(e);
        }
    };
    let end = match result {
        Ok(()) => l.tick(true),
        // A closed stdout ends the listener, but what it counted is kept.
        Err(e) => {
            if l.metrics_dirty {
                l.flush_metrics();
            }
            Err(e)
        }
    };
    drop(sock);
    match end {
        Ok(()) => Ok(0),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(0),
        Err(e) => Err(e.into()),
    }
}

impl Listener {
    fn next_timeout(&self) -> Duration {
        let mut t = Duration::from_secs(1);
        if self.metrics_dirty {
            if let Some(at) = self.metrics_written {
                t = t.min(METRICS_EVERY.saturating_sub(at.elapsed()));
            }
        }
        if self.metrics.malformed_total() > self.malformed_reported {
            if let Some(at) = self.malformed_at {
                t = t.min(MALFORMED_EVERY.saturating_sub(at.elapsed()));
            }
        }
        t
    }

    /// Reads every queued datagram.
    fn drain(&mut self, fd: i32, buf: &mut [u8]) -> io::Result<()> {
        loop {
            let (n, sender) = match sys::recv(fd, buf)? {
                Received::Empty => return Ok(()),
                Received::Datagram { len, sender } => (len, sender),
            };
            if n > MAX_DATAGRAM {
                self.ignore(
                    Malformed::Oversized,
                    format!("{n} bytes, more than {MAX_DATAGRAM}"),
                );
                continue;
            }
            let bytes = buf.get(..n).unwrap_or_default();
            match decode(bytes) {
                Ok(e) => self.event(&e, bytes, sender)?,
                Err(e @ DecodeError::Json(_)) => self.ignore(Malformed::NotJson, e.to_string()),
                Err(e) => self.ignore(Malformed::Invalid, e.to_string()),
            }
        }
    }

    fn ignore(&mut self, why: Malformed, error: String) {
        self.metrics.malformed(why);
        self.metrics_dirty = true;
        self.last_error = error;
    }

    /// `sender`: the sending process as the kernel gave it (see `sys::recv`).
    fn event(&mut self, e: &Event, raw: &[u8], sender: Option<i32>) -> io::Result<()> {
        let key = StreamKey {
            source: e.source,
            sender: sender.unwrap_or(0).max(0),
            pid: e.pid,
        };
        let (note, stream) = self.streams.observe(key, e.seq);
        // Once per stream (and after a restart: a new program), not per event.
        let origin = stream
            .origin
            // The name the event carries (the shim's header, the
            // supervisor's attach) beats /proc's: a short-lived loader may
            // have exited, its /proc entry gone, by the time we read this.
            .get_or_insert_with(|| origin::learn(e.source, key.sender, e.pid, e.comm.as_deref()))
            .clone();
        if let Some(note) = note {
            if let SeqNote::Gap { lost, .. } = note {
                self.metrics.lost(e.source, &origin, lost);
            }
            self.seq_note(&key, &origin, &note)?;
        }
        if matches!(e.body, Decoded::Summary { .. }) {
            // A stream's last event: a later seq 1 under this key is a new
            // process (a recycled pid), not a restart.
            self.streams.end(&key);
        }
        self.metrics.record(e, &origin);
        self.metrics_dirty = true;
        if self.out.json {
            self.out.line(&json_line(raw, &origin))
        } else {
            self.out.line(&human::event_line(e, Some(&origin)))
        }
    }

    fn seq_note(&mut self, key: &StreamKey, origin: &Origin, note: &SeqNote) -> io::Result<()> {
        let (source, pid) = (key.source, key.pid);
        let (kind, extra) = match *note {
            SeqNote::Gap { lost, after, seq } => {
                ("seq_gap", json!({"lost": lost, "after": after, "seq": seq}))
            }
            SeqNote::Restart { after, seq } => ("seq_restart", json!({"after": after, "seq": seq})),
            SeqNote::LateStart { seq } => ("seq_late_start", json!({"seq": seq})),
        };
        let mut fields = json!({"v": 1, "source": "listener", "event": kind,
            "stream": source.as_str(), "pid": pid, "origin": origin_json(origin)});
        if let (Some(o), serde_json::Value::Object(x)) = (fields.as_object_mut(), extra) {
            o.extend(x);
        }
        let who = human::who(source, pid, None, Some(origin));
        self.out
            .note(|| human::seq_line(now_us(), &who, note), fields)
    }

    /// Periodic work: the malformed report and the metrics file. `last`: at
    /// exit, report everything now.
    fn tick(&mut self, last: bool) -> io::Result<()> {
        let total = self.metrics.malformed_total();
        let due = self
            .malformed_at
            .is_none_or(|at| at.elapsed() >= MALFORMED_EVERY);
        if total > self.malformed_reported && (due || last) {
            let new = total - self.malformed_reported;
            self.malformed_reported = total;
            self.malformed_at = Some(Instant::now());
            let m = &self.metrics;
            let (o, j, i) = (
                m.malformed_by(Malformed::Oversized),
                m.malformed_by(Malformed::NotJson),
                m.malformed_by(Malformed::Invalid),
            );
            let err = self.last_error.clone();
            self.out.note(
                || {
                    format!(
                        "{} listener: ignored {new} malformed datagram{} ({total} so far: {o} oversized, {j} not JSON, {i} not a v1 event; last: {err})",
                        sys::local_time(now_us()),
                        if new == 1 { "" } else { "s" }
                    )
                },
                json!({"v": 1, "source": "listener", "event": "malformed", "new": new,
                    "total": total, "oversized": o, "not_json": j, "invalid": i, "last_error": err}),
            )?;
        }
        if last && total > 0 {
            log::warn!("ignored {total} malformed datagrams in all");
        }
        let due = self
            .metrics_written
            .is_none_or(|at| at.elapsed() >= METRICS_EVERY);
        if self.metrics_dirty && (due || last) {
            self.flush_metrics();
        }
        Ok(())
    }

    /// Writes the metrics file. A failure (disk full, directory gone) costs
    /// one line on stderr, then silence until a write works again.
    fn flush_metrics(&mut self) {
        let Some(path) = &self.metrics_path else {
            return;
        };
        self.metrics_written = Some(Instant::now());
        match metrics::write_atomic(path, &self.metrics.render()) {
            Ok(()) => {
                self.metrics_dirty = false;
                if self.metrics_failing {
                    log::info!("writing {} works again", path.display());
                    self.metrics_failing = false;
                }
            }
            Err(e) => {
                if !self.metrics_failing {
                    log::warn!(
                        "cannot write metrics to {}: {e}; still listening, will retry",
                        path.display()
                    );
                    self.metrics_failing = true;
                }
            }
        }
    }
}

/// What the listener knows of an event's origin, as the `origin` object it
/// adds to each JSON line (docs/events.md): fields it does not know are left
/// out.
fn origin_json(o: &Origin) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    if o.sender > 0 {
        m.insert("sender_pid".into(), o.sender.into());
    }
    if let Some(p) = o.pid {
        m.insert("pid".into(), p.into());
    }
    if let Some(c) = &o.container {
        m.insert("container".into(), c.clone().into());
    }
    if !o.program.is_empty() {
        m.insert("program".into(), o.program.clone().into());
    }
    serde_json::Value::Object(m)
}

/// An event for `--json`: the datagram as received, with the listener's
/// `"origin"` object added as its last member. A datagram that spans lines
/// (valid JSON may hold raw newlines between tokens) is compacted first, one
/// line per event.
fn json_line(raw: &[u8], origin: &Origin) -> String {
    let origin = origin_json(origin);
    if let Ok(s) = std::str::from_utf8(raw) {
        let s = s.trim_end();
        // A decoded event is an object: it ends with '}'.
        if let (false, Some(body)) = (s.contains(['\n', '\r']), s.strip_suffix('}')) {
            return format!("{body},\"origin\":{origin}}}");
        }
    }
    let mut v: serde_json::Value = serde_json::from_slice(raw).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert("origin".into(), origin);
    }
    v.to_string()
}
