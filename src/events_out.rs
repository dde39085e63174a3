//! The supervisor's events on their way out: `run`, `attach` and `diagnose`
//! hand the tracer an [`EventsOut`] as its observer.
//!
//! The tracer thread must never wait on I/O: between a stop and the resume
//! that ends it, every traced thread it has stopped waits with it. So the
//! observer only stamps each event with the time it happened, numbers it, and
//! `try_send`s it into a bounded crossbeam channel; a full channel drops the
//! event and counts it (the `seq` gap and the summary show it). A writer
//! thread owns the slow parts: the human log lines (`log`, as
//! [`LogObserver`] words them) and, with `--events PATH`, one datagram per
//! event through the common crate's non-blocking [`Sender`].
//!
//! Streams: one per traced process, `(supervisor, pid)`, numbered from 1. It
//! opens with `attach` (the process we attached to, the program `run`
//! started, each child it forks), and ends with `summary`: right after the
//! process's `child_exit`, or at the end of the session (`detach`, or a
//! process still traced when the program exited).

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use anyhow::{Context, Result};
use crossbeam_channel::{bounded, Receiver, Sender as Tx, TrySendError};
use spinguard_common::bpf::{self, CommandCounts};
use spinguard_common::errno::errno_name;
use spinguard_common::events::{
    now_us, Attach, Body, CallResult, ChildExit, Comm, Header, ProgLoad, Restart, Sender, Source,
    Summary,
};
use spinguard_common::SigSet;
use spinguard_supervisor::event::TaskKind;
use spinguard_supervisor::sys::signal::SignalBlock;
use spinguard_supervisor::{Event, ExitStatus, LogObserver, Observer};

/// Events the writer may lag behind by before the tracer drops them. A
/// guarded call makes one or two; a storm's signals are queued only at -vv.
pub const QUEUE_LEN: usize = 4096;

/// How the writer words a finished guarded call.
#[derive(Clone, Copy, Debug)]
pub enum LogStyle {
    /// [`LogObserver`]'s lines (`spinguard run`).
    Run,
    /// The same, plus how long after the attach the call finished
    /// (`start_us`: wall-clock microseconds of the attach).
    Attach { start_us: u64 },
}

/// A stream's counters for its `summary`, kept on the tracer thread so that a
/// dropped event still counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Guarded calls per command.
    pub calls: CommandCounts,
    /// Restarts, plus calls whose EAGAIN/EINTR reached the program.
    pub retries: u64,
    pub guarded_us: u64,
    pub held_back: u64,
    /// Events of this stream the full queue dropped.
    pub queue_drops: u64,
}

/// One datagram, minus the socket's own counters.
#[derive(Clone, Copy, Debug)]
enum Out {
    ProgLoad(ProgLoad),
    Restart(Restart),
    Attach { threads: u32, comm: Comm },
    Detach { threads: u32 },
    ChildExit(ChildExit),
    Summary(Counts),
}

/// What crosses the channel. `Copy`, no heap: the tracer allocates nothing
/// to hand an event over.
#[derive(Clone, Copy, Debug)]
struct Item {
    ts_us: u64,
    /// A tracer event to log.
    log: Option<Event>,
    /// A datagram to send: (pid, tid, seq, body).
    out: Option<(i32, i32, u64, Out)>,
}

/// A stream as the tracer thread knows it.
#[derive(Default)]
struct Stream {
    seq: u64,
    counts: Counts,
}

#[derive(Default)]
struct State {
    streams: HashMap<i32, Stream>,
    /// Items the full (or closed) queue dropped, log-only ones included.
    dropped: u64,
}

/// What the writer did, for the end-of-session log line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Datagrams the kernel accepted.
    pub sent: u64,
    /// sendto(2) failures (no listener, its queue full, not a socket).
    pub send_failures: u64,
    /// Events the full queue dropped before they reached the writer.
    pub queue_drops: u64,
    /// errno of the last failed send, 0 if none.
    pub last_errno: i32,
}

/// The observer half (tracer thread) and the writer thread. Methods take
/// `&self` so that `attach`'s on-seized callback can send while the tracer
/// holds the observer.
pub struct EventsOut {
    tx: Option<Tx<Item>>,
    writer: Option<JoinHandle<Report>>,
    /// Streams are numbered and sent only with `--events`.
    sending: bool,
    state: RefCell<State>,
}

/// clap's parser for `--events PATH`: made absolute (a relative one would
/// change meaning in a child that changes directory), and checked to fit a
/// socket address, so that a bad one is a usage error, not a silent nothing.
pub fn parse_path(s: &str) -> std::result::Result<PathBuf, String> {
    let p = std::path::absolute(s).map_err(|e| e.to_string())?;
    Sender::new(&p).map_err(|e| format!("{e} (made absolute: {})", p.display()))?;
    Ok(p)
}

impl EventsOut {
    /// Starts the writer. `path`: where to send datagrams (`--events`), or
    /// None to log only. Fails only on a path that cannot be a socket address.
    pub fn start(path: Option<&Path>, style: LogStyle) -> Result<EventsOut> {
        let sender = match path {
            Some(p) => Some(Sender::new(p).with_context(|| format!("--events {}", p.display()))?),
            None => None,
        };
        let sending = sender.is_some();
        let (tx, rx) = bounded(QUEUE_LEN);
        // The writer must take no signal: run, attach and diagnose receive
        // SIGINT/SIGTERM/SIGHUP (and run the job-control signals) through a
        // signalfd or sigwait on a blocked set, and a thread that left them
        // unblocked would take them instead, and die of them. A thread
        // inherits its creator's mask: block everything around the spawn.
        let block = SignalBlock::new(SigSet::all_blockable())
            .context("blocking signals for the event writer thread")?;
        let writer = std::thread::Builder::new()
            .name("spinguard-events".into())
            .spawn(move || write_all(rx, sender, style))
            .context("starting the event writer thread")?;
        drop(block);
        Ok(EventsOut {
            tx: Some(tx),
            writer: Some(writer),
            sending,
            state: RefCell::new(State::default()),
        })
    }

    /// The process `pid`, named `comm`, is traced from now on, with
    /// `threads` threads.
    pub fn attached(&self, ts_us: u64, pid: i32, threads: u32, comm: &str) {
        let mut st = self.state.borrow_mut();
        self.open(&mut st, ts_us, pid, threads, Comm::new(comm.as_bytes()));
    }

    /// We let go of `pid`; ends its stream with the summary.
    pub fn detached(&self, ts_us: u64, pid: i32, threads: u32) {
        let mut st = self.state.borrow_mut();
        if let Some(seq) = self.next_seq(&mut st, pid) {
            self.push(
                &mut st,
                ts_us,
                None,
                Some((pid, pid, seq, Out::Detach { threads })),
            );
            self.close(&mut st, ts_us, pid);
        }
    }

    /// Ends every open stream with its summary, waits for the writer to send
    /// and log everything queued, and says what it did.
    pub fn finish(mut self) -> Report {
        {
            let mut st = self.state.borrow_mut();
            let ts = now_us();
            let mut pids: Vec<i32> = st.streams.keys().copied().collect();
            pids.sort_unstable();
            for pid in pids {
                self.close_with(&mut st, ts, pid, true);
            }
        }
        let dropped = self.state.borrow().dropped;
        drop(self.tx.take());
        let mut report = self
            .writer
            .take()
            .and_then(|w| w.join().ok())
            .unwrap_or_default();
        report.queue_drops = dropped;
        report
    }

    /// Opens `pid`'s stream with its `attach`. An empty `comm`: the writer
    /// reads /proc/PID/comm (not the tracer thread: no file I/O there).
    fn open(&self, st: &mut State, ts_us: u64, pid: i32, threads: u32, comm: Comm) {
        if !self.sending || st.streams.contains_key(&pid) {
            return;
        }
        st.streams.insert(pid, Stream::default());
        if let Some(seq) = self.next_seq(st, pid) {
            self.push(
                st,
                ts_us,
                None,
                Some((pid, pid, seq, Out::Attach { threads, comm })),
            );
        }
    }

    fn next_seq(&self, st: &mut State, pid: i32) -> Option<u64> {
        let s = st.streams.get_mut(&pid)?;
        s.seq += 1;
        Some(s.seq)
    }

    fn child_exit(&self, st: &mut State, ts_us: u64, pid: i32, status: ExitStatus) {
        let Some(seq) = self.next_seq(st, pid) else {
            return;
        };
        let body = match status {
            ExitStatus::Code(c) => ChildExit::Code(c),
            ExitStatus::Signal {
                signal,
                core_dumped,
            } => ChildExit::Signal {
                signal,
                core_dumped,
            },
        };
        self.push(st, ts_us, None, Some((pid, pid, seq, Out::ChildExit(body))));
        self.close(st, ts_us, pid);
    }

    /// Sends the stream's summary and forgets it, without waiting (the
    /// tracer thread may be the caller).
    fn close(&self, st: &mut State, ts_us: u64, pid: i32) {
        self.close_with(st, ts_us, pid, false);
    }

    /// `wait`: only from `finish`, once the tracer is done.
    fn close_with(&self, st: &mut State, ts_us: u64, pid: i32, wait: bool) {
        let Some(mut s) = st.streams.remove(&pid) else {
            return;
        };
        s.seq += 1;
        let item = Item {
            ts_us,
            log: None,
            out: Some((pid, pid, s.seq, Out::Summary(s.counts))),
        };
        if let Some(tx) = &self.tx {
            let sent = if wait {
                tx.send(item).is_ok()
            } else {
                tx.try_send(item).is_ok()
            };
            if !sent {
                st.dropped += 1;
            }
        }
    }

    /// Hands an item to the writer without waiting. A full queue drops it:
    /// counted overall, and in its stream's summary.
    fn push(
        &self,
        st: &mut State,
        ts_us: u64,
        log: Option<Event>,
        out: Option<(i32, i32, u64, Out)>,
    ) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(Item { ts_us, log, out }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                st.dropped += 1;
                if let Some((pid, ..)) = out {
                    if let Some(s) = st.streams.get_mut(&pid) {
                        s.counts.queue_drops += 1;
                    }
                }
            }
        }
    }

    fn on_event(&self, e: &Event) {
        // The time of the event: we run on the tracer thread, inside the stop
        // that produced it.
        let ts = now_us();
        let mut st = self.state.borrow_mut();
        let st = &mut *st;
        let out = if self.sending {
            self.datagram(st, ts, e)
        } else {
            None
        };
        // Every event LogObserver words below info is debug or trace: at the
        // default level only the calls themselves need the writer.
        let log_it = matches!(e, Event::Guarded(_)) || log::max_level() >= log::LevelFilter::Debug;
        if out.is_some() || log_it {
            self.push(st, ts, log_it.then_some(*e), out);
        }
        if let Event::TaskExit { pid, tid, status } = *e {
            if pid == tid {
                self.child_exit(st, ts, pid, status);
            }
        }
    }

    /// The datagram for a tracer event, if it makes one; keeps the counts.
    fn datagram(&self, st: &mut State, ts: u64, e: &Event) -> Option<(i32, i32, u64, Out)> {
        match *e {
            Event::Guarded(c) => {
                self.open(st, ts, c.pid, 1, Comm::EMPTY);
                let failed_errno = (c.result < 0).then_some((-c.result) as i32);
                let s = st.streams.get_mut(&c.pid)?;
                s.counts.calls.add(c.cmd, 1);
                s.counts.retries += c.restarts as u64;
                if failed_errno.is_some_and(bpf::is_signal_failure) {
                    s.counts.retries += 1;
                }
                let us = c.elapsed.as_micros() as u64;
                s.counts.guarded_us += us;
                s.counts.held_back += c.held_back.len() as u64;
                let seq = self.next_seq(st, c.pid)?;
                Some((
                    c.pid,
                    c.tid,
                    seq,
                    Out::ProgLoad(ProgLoad {
                        cmd: c.cmd,
                        attempts: c.attempts,
                        result: match failed_errno {
                            Some(errno) => CallResult::Err(errno),
                            None => CallResult::Ok(c.result),
                        },
                        duration_us: us,
                        held_back: c.held_back.len() as u64,
                        held_back_signals: c.held_back,
                    }),
                ))
            }
            Event::Restart {
                pid,
                tid,
                cmd,
                errno,
                n,
            } => {
                self.open(st, ts, pid, 1, Comm::EMPTY);
                let seq = self.next_seq(st, pid)?;
                Some((pid, tid, seq, Out::Restart(Restart { cmd, errno, n })))
            }
            // A child process: its own stream from its first stop.
            Event::NewTask {
                pid,
                kind: TaskKind::Fork | TaskKind::Vfork,
                ..
            } => {
                self.open(st, ts, pid, 1, Comm::EMPTY);
                None
            }
            // The program `run` started is first heard of at its exec.
            Event::Exec { pid, .. } => {
                self.open(st, ts, pid, 1, Comm::EMPTY);
                None
            }
            _ => None,
        }
    }
}

impl Observer for &EventsOut {
    fn event(&mut self, event: &Event) {
        self.on_event(event);
    }
}

impl Drop for EventsOut {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

/// The writer thread: logs and sends until the channel closes.
fn write_all(rx: Receiver<Item>, sender: Option<Sender>, style: LogStyle) -> Report {
    // Per stream: (sent, failed) so far, for its summary.
    let mut sends: HashMap<i32, (u64, u64)> = HashMap::new();
    let mut comm_cache: HashMap<i32, Vec<u8>> = HashMap::new();
    for item in rx {
        if let Some(e) = item.log {
            log_event(style, item.ts_us, &e);
        }
        let (Some((pid, tid, seq, out)), Some(sender)) = (item.out, &sender) else {
            continue;
        };
        let h = Header {
            source: Source::Supervisor,
            pid,
            tid,
            seq,
            ts_us: item.ts_us,
            comm: Comm::EMPTY,
        };
        let calls;
        let comm;
        let body = match out {
            Out::ProgLoad(p) => Body::ProgLoad(p),
            Out::Restart(r) => Body::Restart(r),
            Out::Attach {
                threads,
                comm: name,
            } => {
                comm = match name.as_bytes() {
                    [] => read_comm(pid),
                    given => given.to_vec(),
                };
                comm_cache.insert(pid, comm.clone());
                Body::Attach(Attach {
                    threads,
                    comm: &comm,
                })
            }
            Out::Detach { threads } => {
                comm = comm_cache.remove(&pid).unwrap_or_else(|| read_comm(pid));
                Body::Detach(Attach {
                    threads,
                    comm: &comm,
                })
            }
            Out::ChildExit(c) => Body::ChildExit(c),
            Out::Summary(c) => {
                let (sent, failed) = sends.remove(&pid).unwrap_or_default();
                comm_cache.remove(&pid);
                calls = c.calls.pairs();
                let body = Body::Summary(Summary {
                    calls: &calls,
                    retries: c.retries,
                    guarded_us: c.guarded_us,
                    held_back: c.held_back,
                    events_sent: sent,
                    events_dropped: c.queue_drops + failed,
                    send_failures: failed,
                });
                sender.send_event(&h, &body);
                continue;
            }
        };
        let ok = sender.send_event(&h, &body);
        let counts = sends.entry(pid).or_default();
        if ok {
            counts.0 += 1;
        } else {
            counts.1 += 1;
        }
    }
    let s = sender.map(|s| s.stats()).unwrap_or_default();
    Report {
        sent: s.sent,
        send_failures: s.send_failures + s.too_big,
        queue_drops: 0,
        last_errno: s.last_errno,
    }
}

/// The process name for an `attach`/`detach`, "" when unknown. Our pids are
/// those of our PID namespace; a /proc mounted for another one (spinguard in
/// `unshare --pid --fork` without `--mount-proc`, a container given the host's
/// /proc) names other processes under them, so it is not asked then.
fn read_comm(pid: i32) -> Vec<u8> {
    if !proc_is_ours() {
        return Vec::new();
    }
    let mut b = std::fs::read(format!("/proc/{pid}/comm")).unwrap_or_default();
    if b.last() == Some(&b'\n') {
        b.pop();
    }
    b
}

/// True when /proc belongs to our PID namespace: its `self` is our pid.
fn proc_is_ours() -> bool {
    static OURS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OURS.get_or_init(|| {
        std::fs::read_link("/proc/self")
            .ok()
            .and_then(|p| p.to_str()?.parse::<u32>().ok())
            == Some(std::process::id())
    })
}

fn log_event(style: LogStyle, ts_us: u64, e: &Event) {
    match (style, e) {
        (LogStyle::Attach { start_us }, Event::Guarded(call)) if !call.gave_up => log::info!(
            "{call} ({} ms after the attach)",
            ts_us.saturating_sub(start_us) / 1000
        ),
        _ => LogObserver.event(e),
    }
}

impl Report {
    /// Logs the end-of-session line: at info what was sent to `path`, at
    /// warn anything the full queue dropped (log lines included).
    pub fn log(&self, path: Option<&Path>) {
        if let Some(path) = path {
            let mut s = format!("events to {}: {} sent", path.display(), self.sent);
            if self.send_failures > 0 {
                s += &format!(
                    ", {} not sent (last error {})",
                    self.send_failures,
                    errno_name(self.last_errno)
                );
            }
            log::info!("{s}");
        }
        if self.queue_drops > 0 {
            log::warn!(
                "{} events dropped: the event writer fell behind (stderr or the socket too slow)",
                self.queue_drops
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spinguard_common::events::decode::{decode, Decoded, Outcome};
    use spinguard_supervisor::GuardedCall;
    use std::os::unix::net::UnixDatagram;
    use std::time::Duration;

    fn call(tid: i32, result: i64, restarts: u32) -> Event {
        let mut held = SigSet::EMPTY;
        held.insert(libc::SIGPROF);
        Event::Guarded(GuardedCall {
            pid: 100,
            tid,
            cmd: spinguard_common::bpf::BPF_PROG_LOAD,
            result,
            elapsed: Duration::from_micros(1500),
            attempts: 1 + restarts,
            restarts,
            gave_up: false,
            abandoned: false,
            guard: SigSet::DEFAULT_GUARD,
            held_back: held,
        })
    }

    #[test]
    fn tracer_events_become_one_gap_free_stream_per_process() {
        let path = std::env::temp_dir().join(format!("sg-events-out-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let rx = UnixDatagram::bind(&path).unwrap();
        let out = EventsOut::start(Some(&path), LogStyle::Run).unwrap();
        let mut obs = &out;
        let restart = |n| Event::Restart {
            pid: 100,
            tid: 101,
            cmd: spinguard_common::bpf::BPF_PROG_LOAD,
            errno: libc::EAGAIN,
            n,
        };
        let evs = [
            Event::Exec {
                pid: 100,
                former_tid: 100,
            },
            restart(1),
            restart(2),
            call(101, 7, 2),
            call(102, -(libc::EAGAIN as i64), 0),
            // A child: its own stream, ended by its exit.
            Event::NewTask {
                pid: 200,
                tid: 200,
                parent: 100,
                kind: TaskKind::Fork,
            },
            Event::TaskExit {
                pid: 200,
                tid: 200,
                status: ExitStatus::Signal {
                    signal: libc::SIGSEGV,
                    core_dumped: true,
                },
            },
            // A thread's end is no event; the process's is.
            Event::TaskExit {
                pid: 100,
                tid: 101,
                status: ExitStatus::Code(0),
            },
            Event::TaskExit {
                pid: 100,
                tid: 100,
                status: ExitStatus::Code(3),
            },
        ];
        for e in &evs {
            obs.event(e);
        }
        let report = out.finish();
        assert_eq!(report.queue_drops, 0);
        rx.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 2048];
        let mut got = Vec::new();
        while let Ok(n) = rx.recv(&mut buf) {
            got.push(decode(&buf[..n]).unwrap());
        }
        let _ = std::fs::remove_file(&path);
        assert_eq!(report.sent, got.len() as u64);
        let main: Vec<_> = got.iter().filter(|e| e.pid == 100).collect();
        let seqs: Vec<u64> = main.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=main.len() as u64).collect::<Vec<_>>());
        assert!(matches!(main[0].body, Decoded::Attach { threads: 1, .. }));
        assert!(matches!(main[1].body, Decoded::Restart { n: 1, .. }));
        assert!(matches!(main[2].body, Decoded::Restart { n: 2, .. }));
        assert!(matches!(
            main[3].body,
            Decoded::ProgLoad {
                attempts: 3,
                result: Outcome::Fd(7),
                duration_us: 1500,
                held_back: 1,
                ..
            }
        ));
        assert!(matches!(
            &main[4].body,
            Decoded::ProgLoad { result: Outcome::Errno(e), .. } if e == "EAGAIN"
        ));
        assert!(matches!(
            main[5].body,
            Decoded::ChildExit { code: Some(3), .. }
        ));
        match &main[6].body {
            Decoded::Summary {
                guarded_calls,
                retries,
                held_back,
                events_sent,
                events_dropped,
                ..
            } => {
                // 2 restarts + the EAGAIN that reached the program.
                assert_eq!(
                    (
                        *guarded_calls,
                        *retries,
                        *held_back,
                        *events_sent,
                        *events_dropped
                    ),
                    (2, 3, 2, 6, 0)
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(main.len(), 7);
        let child: Vec<_> = got.iter().filter(|e| e.pid == 200).collect();
        assert_eq!(child.len(), 3, "{child:?}");
        assert!(matches!(
            &child[1].body,
            Decoded::ChildExit { signal: Some(s), core_dumped: true, .. } if s == "SIGSEGV"
        ));
        assert!(matches!(
            child[2].body,
            Decoded::Summary {
                guarded_calls: 0,
                ..
            }
        ));
    }

    #[test]
    fn without_a_path_nothing_is_numbered_or_sent() {
        let out = EventsOut::start(None, LogStyle::Run).unwrap();
        let mut obs = &out;
        obs.event(&call(101, 7, 0));
        out.attached(1, 100, 1, "x");
        assert!(out.state.borrow().streams.is_empty());
        assert_eq!(out.finish(), Report::default());
    }
}
