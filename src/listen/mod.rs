//! `spinguard listen`: receives events on a Unix datagram socket and prints
//! them, tracks lost events per stream, and keeps a metrics file.
//!
//! One thread, one poll loop over two fds: the socket and a signalfd for
//! SIGINT/SIGTERM. Nothing a sender does can stop it: every datagram is
//! either an event or a counted, ignored, malformed one.
//!
//! - [`socket`]: taking the path (0600, stale takeover, refusals), removal.
//! - [`streams`]: the streams (source, sending process, pid), each one's
//!   events held in `seq` order while a missing one is awaited; [`sequence`]:
//!   what a `seq` out of turn means (a reorder, a loss, a new sequence).
//! - [`origin`]: who sent it, whatever its PID namespace: the pid here, the
//!   container, the program.
//! - [`metrics`]: counters and the atomically replaced metrics file.
//! - [`human`]: the readable lines.
//! - [`sys`]: the raw calls.

pub mod human;
pub mod metrics;
pub mod origin;
pub mod sequence;
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
use streams::{Arrival, Delivery, SeqNote, StreamKey, Streams};
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

/// What the listener keeps of an event until its stream delivers it (at
/// once, unless it waits for a missing one).
struct Pending {
    event: Event,
    /// The datagram as received, for `--json`; empty otherwise.
    raw: Vec<u8>,
    /// Its stream's origin when it arrived.
    origin: Origin,
}

struct Listener {
    out: Out,
    streams: Streams<Pending>,
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
    let mut result = l.serve(&sock, &signals);
    // Whatever still waits for a missing event is delivered with its holes
    // reported; after a closed stdout it is still counted.
    let rest = l.deliver(|streams, out| streams.flush(out));
    if result.is_ok() {
        result = rest;
    }
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
    /// The poll loop, until a signal (Ok) or an error.
    fn serve(&mut self, sock: &BoundSocket, signals: &SignalFd) -> io::Result<()> {
        // One byte more than we accept, and MSG_TRUNC for the true length.
        let mut buf = vec![0u8; MAX_DATAGRAM + 1];
        loop {
            let timeout = self.next_timeout();
            // Rounded up: a deadline 0.4 ms away is not a 0 ms busy poll.
            let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
            let [readable, signalled] =
                sys::poll_readable([sock.as_raw_fd(), signals.as_raw_fd()], ms)?;
            if signalled {
                if let Some(sig) = signals.read() {
                    log::info!(
                        "{}, removing {}",
                        spinguard_common::signals::signal_name(sig),
                        sock.path().display()
                    );
                    return Ok(());
                }
            }
            if readable {
                self.drain(sock.as_raw_fd(), &mut buf)?;
            }
            self.deliver(|streams, out| streams.expire(Instant::now(), out))?;
            self.tick(false)?;
        }
    }

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
        if let Some(d) = self.streams.next_deadline() {
            t = t.min(d.saturating_duration_since(Instant::now()));
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
                Ok(e) => self.event(e, bytes, sender)?,
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
    fn event(&mut self, e: Event, raw: &[u8], sender: Option<i32>) -> io::Result<()> {
        let key = StreamKey {
            source: e.source,
            sender: sender.unwrap_or(0).max(0),
            pid: e.pid,
        };
        let (seq, last) = (e.seq, matches!(e.body, Decoded::Summary { .. }));
        let keep_raw = self.out.json;
        let mut behind = None;
        let r = self.deliver(|streams, out| {
            let arrival = Arrival {
                key,
                seq,
                at: Instant::now(),
                last,
                bytes: raw.len() + std::mem::size_of::<Pending>(),
            };
            behind = streams.observe(
                arrival,
                |slot| {
                    // Once per stream (and after a restart: a new program),
                    // not per event. The name the event carries (the shim's
                    // header, the supervisor's attach) beats /proc's: a
                    // short-lived loader may have exited, its /proc entry
                    // gone, by the time we read this.
                    let origin = slot
                        .get_or_insert_with(|| {
                            origin::learn(e.source, key.sender, e.pid, e.comm.as_deref())
                        })
                        .clone();
                    Pending {
                        event: e,
                        raw: if keep_raw { raw.to_vec() } else { Vec::new() },
                        origin,
                    }
                },
                out,
            );
        });
        if let Some(behind) = behind {
            log::debug!(
                "{}: seq {seq} arrived after seq {behind}: put back in order (a reorder, not a loss)",
                human::who(key.source, key.pid, None, None)
            );
        }
        r
    }

    /// Runs `f` on the streams and hands what they deliver, in order, to
    /// [`delivered`](Self::delivered). After a write error (a closed stdout)
    /// the rest is still counted, and the first error returned.
    fn deliver(
        &mut self,
        f: impl FnOnce(&mut Streams<Pending>, &mut Vec<Delivery<Pending>>),
    ) -> io::Result<()> {
        let mut out = Vec::new();
        f(&mut self.streams, &mut out);
        let mut result = Ok(());
        for d in out {
            let r = self.delivered(d, result.is_ok());
            if result.is_ok() {
                result = r;
            }
        }
        result
    }

    /// An event its stream let go: counted, then printed (when `print`), after
    /// the note its `seq` called for. Counted first, so the metrics, the lines
    /// and the JSON notes tell the same story even when stdout fails.
    fn delivered(&mut self, d: Delivery<Pending>, print: bool) -> io::Result<()> {
        let Pending { event, raw, origin } = d.item;
        if let Some(SeqNote::Gap { lost, .. }) = d.note {
            self.metrics.lost(event.source, &origin, lost);
        }
        self.metrics.record(&event, &origin);
        self.metrics_dirty = true;
        if !print {
            return Ok(());
        }
        if let Some(note) = d.note {
            self.seq_note(&d.key, &origin, &note)?;
        }
        if self.out.json {
            self.out.line(&json_line(&raw, &origin))
        } else {
            self.out.line(&human::event_line(&event, Some(&origin)))
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
