//! `spinguard listen` against real sockets, fed by the common crate's own
//! encoder and Sender, so these tests exercise the wire format the shim and
//! the supervisor send.

mod support;
use support::Scratch;

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use spinguard_common::bpf::{BPF_PROG_LOAD, BPF_PROG_TEST_RUN};
use spinguard_common::events::{
    encode, now_us, Body, CallResult, Comm, EventBuf, Header, ProgLoad, Sender, Source, Summary,
    EVENT_BUF_LEN,
};
use spinguard_common::SigSet;

const WAIT: Duration = Duration::from_secs(10);

/// A running listener whose stdout and stderr lines are collected as they come.
struct Listener {
    guard: Option<support::GroupGuard>,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    path: PathBuf,
}

impl Listener {
    fn start(path: &Path, extra: &[&str]) -> Listener {
        Self::start_with(path, extra, |_| {})
    }

    fn start_with(path: &Path, extra: &[&str], tweak: impl FnOnce(&mut Command)) -> Listener {
        let mut cmd = Command::new(support::spinguard_bin());
        cmd.arg("listen")
            .args(extra)
            .arg(path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        tweak(&mut cmd);
        let mut g = support::spawn_guarded(&mut cmd);
        let stdout = support::collect_lines(g.child.stdout.take().unwrap());
        let stderr = support::collect_lines(g.child.stderr.take().unwrap());
        let l = Listener {
            guard: Some(g),
            stdout,
            stderr,
            path: path.to_path_buf(),
        };
        // Ready once the socket exists: from then on datagrams queue for it.
        l.wait_until("the socket to appear", |l| {
            std::fs::symlink_metadata(&l.path).is_ok_and(|m| m.file_type().is_socket())
        });
        l
    }

    fn pid(&self) -> i32 {
        self.guard.as_ref().unwrap().pid()
    }

    fn out(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    fn err(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    fn wait_until(&self, what: &str, done: impl Fn(&Listener) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !done(self) {
            assert!(
                Instant::now() < deadline,
                "gave up waiting for {what} after {WAIT:?}\nstdout: {:#?}\nstderr: {:#?}",
                self.out(),
                self.err()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for a stdout line containing `needle`; returns it.
    fn line_with(&self, needle: &str) -> String {
        self.wait_until(&format!("a line with {needle:?}"), |l| {
            l.out().iter().any(|x| x.contains(needle))
        });
        self.out().into_iter().find(|x| x.contains(needle)).unwrap()
    }

    /// Sends `sig`, waits for the exit, and returns the output collected.
    fn stop(mut self, sig: i32) -> (Output, Vec<String>, Vec<String>) {
        let g = self.guard.take().unwrap();
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(g.pid(), sig) };
        let out = support::wait_timeout(g, WAIT, "spinguard listen");
        // The reader threads finish at EOF, right after the exit.
        std::thread::sleep(Duration::from_millis(50));
        (out, self.out(), self.err())
    }
}

fn load(result: CallResult) -> Body<'static> {
    Body::ProgLoad(ProgLoad {
        cmd: BPF_PROG_LOAD,
        attempts: 1,
        result,
        duration_us: 119_000,
        held_back: 1,
        held_back_signals: SigSet::from_bits(1 << (libc::SIGPROF - 1)),
    })
}

fn header(pid: i32, seq: u64) -> Header {
    Header {
        source: Source::Shim,
        pid,
        tid: pid + 1,
        seq,
        ts_us: now_us(),
        comm: Comm::EMPTY,
    }
}

/// This process's pid and name: the listener learns them from the kernel
/// (SCM_CREDENTIALS) and /proc whatever pid the test's events carry.
fn me() -> (u32, String) {
    let comm = std::fs::read_to_string("/proc/self/comm").unwrap();
    (std::process::id(), comm.trim_end().to_string())
}

fn tid() -> i32 {
    // SAFETY: gettid cannot fail.
    unsafe { libc::gettid() }
}

#[test]
fn prints_well_formed_events_with_gap_free_seq() {
    let dir = Scratch::new("listen-events");
    let path = dir.path("s.sock");
    let l = Listener::start(&path, &[]);
    let sender = Sender::new(&path).unwrap();
    for _ in 0..3 {
        assert!(sender.emit(Source::Shim, &load(CallResult::Ok(7))));
    }
    let test_run = Body::ProgLoad(ProgLoad {
        cmd: BPF_PROG_TEST_RUN,
        attempts: 1,
        result: CallResult::Err(libc::EINTR),
        duration_us: 3_250,
        held_back: 0,
        held_back_signals: SigSet::EMPTY,
    });
    assert!(sender.emit(Source::Shim, &test_run));
    let who = format!("shim pid {} tid {}:", std::process::id(), tid());
    l.line_with("BPF_PROG_TEST_RUN");
    let out = l.out();
    let loads: Vec<_> = out.iter().filter(|x| x.contains("BPF_PROG_LOAD")).collect();
    assert_eq!(loads.len(), 3, "{out:#?}");
    for line in loads {
        assert!(
            line.ends_with(&format!(
                " {who} BPF_PROG_LOAD loaded (fd 7) in 119 ms, 1 attempt, SIGPROF held back"
            )),
            "{line}"
        );
    }
    assert!(
        out.iter().any(|x| x.ends_with(&format!(
            "{who} BPF_PROG_TEST_RUN failed (EINTR) in 3.2 ms, 1 attempt, nothing held back"
        ))),
        "{out:#?}"
    );
    assert!(!out.iter().any(|x| x.contains("seq")), "gap-free: {out:#?}");
    let st = sender.stats();
    assert_eq!((st.sent, st.send_failures), (4, 0), "{st:?}");
    let (status, _, err) = l.stop(libc::SIGTERM);
    assert!(status.status.success(), "{err:#?}");
}

#[test]
fn json_mode_prints_datagrams_as_received() {
    let dir = Scratch::new("listen-json");
    let path = dir.path("s.sock");
    let l = Listener::start(&path, &["--json"]);
    let sender = Sender::new(&path).unwrap();
    let mut sent = Vec::new();
    for seq in 1..=3 {
        let h = header(777, seq);
        let body = load(CallResult::Err(libc::EAGAIN));
        let mut buf = EventBuf::<EVENT_BUF_LEN>::new();
        sent.push(String::from_utf8(encode(&mut buf, &h, &body).unwrap().to_vec()).unwrap());
        assert!(sender.send_event(&h, &body));
    }
    // A gap, noted as JSON from the listener itself.
    assert!(sender.send_event(&header(777, 9), &load(CallResult::Ok(3))));
    let note = l.line_with("\"seq_gap\"");
    let note: serde_json::Value = serde_json::from_str(&note).unwrap();
    assert_eq!(note["source"], "listener");
    assert_eq!(note["stream"], "shim");
    assert_eq!(note["pid"], 777);
    assert_eq!(note["lost"], 5);
    let (pid, comm) = me();
    let origin = serde_json::json!({"sender_pid": pid, "pid": pid, "program": comm});
    assert_eq!(note["origin"], origin, "{note}");
    let out = l.out();
    // Byte for byte, in order, with the listener's "origin" added last.
    for (got, sent) in out.iter().zip(&sent) {
        let (body, added) = got.split_at(sent.len() - 1);
        assert_eq!(body, &sent[..sent.len() - 1], "{got}");
        assert_eq!(added, format!(",\"origin\":{origin}}}"), "{got}");
    }
    for line in &out {
        serde_json::from_str::<serde_json::Value>(line).expect("every line is JSON");
    }
    drop(l);
}

#[test]
fn reports_a_seq_gap() {
    let dir = Scratch::new("listen-gap");
    let path = dir.path("s.sock");
    let l = Listener::start(&path, &[]);
    let sender = Sender::new(&path).unwrap();
    for seq in [1, 2, 6, 7] {
        assert!(sender.send_event(&header(4242, seq), &load(CallResult::Ok(7))));
    }
    let gap = l.line_with("seq gap");
    assert!(
        gap.ends_with(&format!(
            "listener: seq gap: 3 events lost from shim pid 4242 (host pid {}) (seq 6 after 2)",
            me().0
        )),
        "{gap}"
    );
    l.wait_until("4 events", |l| {
        l.out().iter().filter(|x| x.contains("loaded")).count() == 4
    });
    let out = l.out();
    assert_eq!(
        out.iter().filter(|x| x.contains("seq gap")).count(),
        1,
        "{out:#?}"
    );
    // The note comes right before the event that revealed the gap.
    let i = out.iter().position(|x| x.contains("seq gap")).unwrap();
    assert_eq!(
        out.iter().take(i).filter(|x| x.contains("loaded")).count(),
        2
    );
}

/// The incident: two threads of one process end their loads together; one
/// takes seq 1, the other seq 2, and the second one's datagram reaches the
/// socket first (the shim numbers an event, then sends it). Crafted
/// datagrams in that order reach a real listener: the events come out in
/// seq order, with no gap, no late start, no restart and nothing counted
/// lost; a real loss after them is still reported (once the listener has
/// waited for it) and counted; an exec (seq 1 again, after 9) is still a
/// restart, even when the new program's own first two events are reordered.
#[test]
fn events_sent_out_of_order_are_put_back_not_lost() {
    let dir = Scratch::new("listen-reorder");
    let path = dir.path("s.sock");
    let prom = dir.path("m.prom");
    let l = Listener::start(
        &path,
        &["-v", "--json", "--metrics", prom.to_str().unwrap()],
    );
    let sender = Sender::new(&path).unwrap();
    let pid = 4242;
    let send = |seq: u64, body: &Body| assert!(sender.send_event(&header(pid, seq), body));
    let ok = load(CallResult::Ok(7));
    // Reordered at the stream's very start, then in its middle.
    for seq in [2, 1, 3, 5, 4, 6] {
        send(seq, &ok);
    }
    let events = |l: &Listener| -> Vec<serde_json::Value> {
        l.out()
            .iter()
            .map(|x| serde_json::from_str(x).unwrap_or_else(|e| panic!("{e}: {x}")))
            .collect()
    };
    let seqs = |l: &Listener| -> Vec<u64> {
        events(l)
            .iter()
            .filter(|e| e["source"] == "shim")
            .map(|e| e["seq"].as_u64().unwrap())
            .collect()
    };
    l.wait_until("6 events", |l| seqs(l).len() == 6);
    assert_eq!(seqs(&l), [1, 2, 3, 4, 5, 6], "in seq order: {:#?}", l.out());
    let who = format!("source=\"shim\",program=\"{}\",container=\"\"", me().1);
    let loads = format!("spinguard_loads_total{{{who},cmd=\"BPF_PROG_LOAD\"}} 6");
    l.wait_until("6 loads in the metrics file", |_| {
        read_metrics(&prom).lines().any(|x| x == loads)
    });
    let text = read_metrics(&prom);
    assert!(
        !text.contains("spinguard_events_lost_total{"),
        "nothing lost: {text}"
    );
    assert!(
        !l.out()
            .iter()
            .any(|x| x.contains("\"source\":\"listener\"")),
        "no note: {:#?}",
        l.out()
    );
    // The reorders are told at -v, as what they are.
    l.wait_until("the debug lines", |l| {
        let err = l.err();
        ["seq 1 arrived after seq 2", "seq 4 arrived after seq 5"]
            .iter()
            .all(|w| {
                err.iter()
                    .any(|x| x.contains(w) && x.contains("put back in order"))
            })
    });

    // A real loss: 7 never comes. The listener waits for it, then says so.
    send(8, &ok);
    send(9, &ok);
    let gap: serde_json::Value = serde_json::from_str(&l.line_with("\"seq_gap\"")).unwrap();
    assert_eq!(
        (&gap["lost"], &gap["after"], &gap["seq"], &gap["pid"]),
        (&1.into(), &6.into(), &8.into(), &pid.into()),
        "{gap}"
    );
    l.wait_until("1 lost in the metrics file", |_| {
        read_metrics(&prom)
            .lines()
            .any(|x| x == format!("spinguard_events_lost_total{{{who}}} 1"))
    });

    // exec: the new program numbers from 1 again, its 2 ahead of its 1.
    send(2, &ok);
    send(1, &ok);
    let calls = [(BPF_PROG_LOAD, 2)];
    let summary = Body::Summary(Summary {
        calls: &calls,
        retries: 0,
        guarded_us: 238_000,
        held_back: 2,
        events_sent: 2,
        events_dropped: 0,
        send_failures: 0,
    });
    send(3, &summary);
    l.wait_until("the summary", |l| {
        events(l).iter().any(|e| e["event"] == "summary")
    });
    let all = events(&l);
    let order: Vec<String> = all
        .iter()
        .map(|e| match e["source"].as_str().unwrap() {
            "listener" => e["event"].as_str().unwrap().to_string(),
            _ => e["seq"].to_string(),
        })
        .collect();
    assert_eq!(
        order,
        [
            "1",
            "2",
            "3",
            "4",
            "5",
            "6",
            "seq_gap",
            "8",
            "9",
            "seq_restart",
            "1",
            "2",
            "3"
        ],
        "{all:#?}"
    );
    let restart = all.iter().find(|e| e["event"] == "seq_restart").unwrap();
    assert_eq!((&restart["after"], &restart["seq"]), (&9.into(), &1.into()));
    l.wait_until("10 loads in the metrics file", |_| {
        read_metrics(&prom)
            .lines()
            .any(|x| x == format!("spinguard_loads_total{{{who},cmd=\"BPF_PROG_LOAD\"}} 10"))
    });
    let (out, _, err) = l.stop(libc::SIGTERM);
    assert!(out.status.success(), "{err:#?}");
    let text = read_metrics(&prom);
    assert!(
        text.lines()
            .any(|x| x == format!("spinguard_events_lost_total{{{who}}} 1")),
        "only the real loss: {text}"
    );
}

/// The same in readable lines: the message the incident printed ("first
/// event seen ... has seq 2: 1 event before it not seen", then a restart)
/// is gone; a stream whose first events were really never seen still gets
/// it, once the listener has waited for them.
#[test]
fn a_reorder_at_the_start_is_not_a_late_start_in_lines_either() {
    let dir = Scratch::new("listen-reorder-lines");
    let path = dir.path("s.sock");
    let l = Listener::start(&path, &[]);
    let sender = Sender::new(&path).unwrap();
    for seq in [2, 1] {
        assert!(sender.send_event(&header(10, seq), &load(CallResult::Ok(seq as i64))));
    }
    // A stream the listener joins late: its 1 and 2 were never sent here.
    assert!(sender.send_event(&header(20, 3), &load(CallResult::Ok(3))));
    let late = l.line_with("first event seen");
    assert!(
        late.ends_with(&format!(
            " listener: first event seen from shim pid 20 (host pid {}) has seq 3: 2 events before it not seen",
            me().0
        )),
        "{late}"
    );
    let out = l.out();
    let of_10: Vec<&String> = out.iter().filter(|x| x.contains("shim pid 10 ")).collect();
    assert_eq!(of_10.len(), 2, "{out:#?}");
    assert!(
        of_10[0].contains("(fd 1)") && of_10[1].contains("(fd 2)"),
        "{out:#?}"
    );
    let notes: Vec<&String> = out.iter().filter(|x| x.contains(" listener: ")).collect();
    assert_eq!(notes.len(), 1, "only the late start of pid 20: {out:#?}");
    assert!(notes[0].contains("shim pid 20"), "{out:#?}");
}

#[test]
fn malformed_datagrams_are_counted_never_fatal() {
    let dir = Scratch::new("listen-malformed");
    let path = dir.path("s.sock");
    let l = Listener::start(&path, &[]);
    let sender = Sender::new(&path).unwrap();
    let mut buf = EventBuf::<EVENT_BUF_LEN>::new();
    let whole = encode(&mut buf, &header(5, 1), &load(CallResult::Ok(7)))
        .unwrap()
        .to_vec();
    let garbage: Vec<u8> = (0..200u32).map(|i| (i * 37 % 256) as u8).collect();
    let half = &whole[..whole.len() / 2];
    // A 64 KiB + 1 datagram that would otherwise be a valid event (padding
    // inside a string), and exactly 64 KiB of spaces (JSON whitespace: not an event).
    let mut big = whole[..whole.len() - 1].to_vec();
    big.extend_from_slice(b",\"pad\":\"");
    big.resize(64 * 1024 - 1, b'x');
    big.extend_from_slice(b"\"}");
    assert_eq!(big.len(), 64 * 1024 + 1);
    let spaces = vec![b' '; 64 * 1024];
    for d in [&garbage[..], half, &big, &spaces, b"{\"v\":1}"] {
        assert!(sender.send(d), "{:?}", sender.stats());
    }
    // Still listening: the next event is printed.
    assert!(sender.send(&whole));
    l.line_with(&format!(
        "shim pid 5 tid 6 (host pid {}): BPF_PROG_LOAD loaded",
        me().0
    ));
    let report = l.line_with("malformed");
    assert!(
        report.contains(
            "listener: ignored 5 malformed datagrams (5 so far: 1 oversized, 3 not JSON, 1 not a v1 event"
        ),
        "{report}"
    );
    let (status, _, err) = l.stop(libc::SIGTERM);
    assert!(status.status.success(), "{err:#?}");
    assert!(
        err.iter()
            .any(|x| x == "spinguard: warning: ignored 5 malformed datagrams in all"),
        "{err:#?}"
    );
}

#[test]
fn socket_mode_is_0600_even_with_umask_0() {
    let dir = Scratch::new("listen-mode");
    let path = dir.path("s.sock");
    let l = Listener::start_with(&path, &[], |cmd| {
        // SAFETY: umask is async-signal-safe; runs in the child before exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::umask(0);
                Ok(())
            });
        }
    });
    let m = std::fs::symlink_metadata(&path).unwrap();
    assert!(m.file_type().is_socket());
    assert_eq!(
        m.permissions().mode() & 0o7777,
        0o600,
        "{:o}",
        m.permissions().mode()
    );
    // And the listener put its umask back (to the inherited 0) after bind:
    // the socket appears at bind, a moment before that, so look once it
    // says it is listening.
    l.wait_until("the listening line", |l| {
        l.err().iter().any(|x| x.contains("listening on"))
    });
    let status = std::fs::read_to_string(format!("/proc/{}/status", l.pid())).unwrap();
    assert!(
        status.lines().any(|x| x == "Umask:\t0000"),
        "umask not restored to the inherited 0: {status}"
    );
}

#[test]
fn takes_over_a_stale_socket() {
    let dir = Scratch::new("listen-stale");
    let path = dir.path("s.sock");
    // A listener that died without cleaning up leaves exactly this: a socket
    // file with nobody bound behind it.
    drop(std::os::unix::net::UnixDatagram::bind(&path).unwrap());
    assert!(std::fs::symlink_metadata(&path)
        .unwrap()
        .file_type()
        .is_socket());
    let l = Listener::start(&path, &[]);
    l.wait_until("the takeover note", |l| {
        l.err()
            .iter()
            .any(|x| x.contains("took over a stale socket"))
    });
    let sender = Sender::new(&path).unwrap();
    assert!(sender.emit(Source::Shim, &load(CallResult::Ok(7))));
    l.line_with("BPF_PROG_LOAD loaded");
}

/// Runs a second `spinguard listen` that must refuse at once.
fn refused(path: &Path) -> (String, String) {
    let out = support::run_timeout(
        Command::new(support::spinguard_bin())
            .arg("listen")
            .arg(path),
        WAIT,
    );
    assert_eq!(out.status.code(), Some(1), "{}", support::describe(&out));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    (String::from_utf8_lossy(&out.stdout).into_owned(), err)
}

#[test]
fn refuses_a_live_listener() {
    let dir = Scratch::new("listen-live");
    let path = dir.path("s.sock");
    let first = Listener::start(&path, &[]);
    let ino = std::fs::symlink_metadata(&path).unwrap().ino();
    let (_, err) = refused(&path);
    assert!(err.contains("another listener is alive on"), "{err}");
    // The first one still owns the path and still hears events.
    assert_eq!(std::fs::symlink_metadata(&path).unwrap().ino(), ino);
    let sender = Sender::new(&path).unwrap();
    assert!(sender.emit(Source::Shim, &load(CallResult::Ok(7))));
    first.line_with("BPF_PROG_LOAD loaded");
}

#[test]
fn refuses_a_regular_file_and_symlinks() {
    let dir = Scratch::new("listen-refuse");
    let file = dir.path("file");
    std::fs::write(&file, "keep me\n").unwrap();
    let (_, err) = refused(&file);
    assert!(
        err.contains("is a regular file, not a socket; refusing"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me\n");

    // A symlink to a file, and to a stale socket: neither is followed or replaced.
    let stale = dir.path("stale.sock");
    drop(std::os::unix::net::UnixDatagram::bind(&stale).unwrap());
    for target in [&file, &stale, &dir.path("nowhere")] {
        let link = dir.path("link");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(target, &link).unwrap();
        let (_, err) = refused(&link);
        assert!(err.contains("is a symbolic link; refusing"), "{err}");
        assert_eq!(std::fs::read_link(&link).unwrap(), *target);
    }
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me\n");
    assert!(std::fs::symlink_metadata(&stale)
        .unwrap()
        .file_type()
        .is_socket());
    assert!(!dir.path("nowhere").exists());
}

#[test]
fn sigterm_and_sigint_remove_the_socket() {
    let dir = Scratch::new("listen-signals");
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let path = dir.path("s.sock");
        let l = Listener::start(&path, &[]);
        let (out, _, err) = l.stop(sig);
        assert_eq!(out.status.code(), Some(0), "{err:#?}");
        assert!(
            std::fs::symlink_metadata(&path).is_err(),
            "socket left behind after signal {sig}"
        );
    }
}

#[test]
fn a_stopped_listener_never_blocks_the_sender() {
    let dir = Scratch::new("listen-stopped");
    let path = dir.path("s.sock");
    let l = Listener::start(&path, &[]);
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(l.pid(), libc::SIGSTOP) };
    l.wait_until("the listener to be stopped", |l| {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", l.pid())).unwrap();
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('T'))
    });
    let sender = Sender::new(&path).unwrap();
    // More than any receive queue holds (net.unix.max_dgram_qlen): a blocking
    // sender would hang here until the test's timeout.
    for _ in 0..2000 {
        sender.emit(Source::Shim, &load(CallResult::Ok(7)));
    }
    let st = sender.stats();
    assert!(
        st.send_failures > 0 && st.sent + st.send_failures == 2000,
        "{st:?}"
    );
    assert_eq!(st.last_errno, libc::EAGAIN, "{st:?}");
    // SAFETY: as above.
    unsafe { libc::kill(l.pid(), libc::SIGCONT) };
    // Once it has read what its queue held, the next event shows what was lost.
    l.wait_until("the queued events", |l| {
        l.out().iter().filter(|x| x.contains("loaded")).count() as u64 == st.sent
    });
    assert!(sender.emit(Source::Shim, &load(CallResult::Ok(7))));
    let gap = l.line_with("seq gap");
    assert!(
        gap.contains(&format!("{} events lost from shim pid", st.send_failures)),
        "{gap} vs {st:?}"
    );
}

fn read_metrics(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn metrics_file_is_complete_and_replaced_atomically() {
    let dir = Scratch::new("listen-metrics");
    let path = dir.path("s.sock");
    let prom = dir.path("spinguard.prom");
    let l = Listener::start(&path, &["--metrics", prom.to_str().unwrap()]);
    l.wait_until("the first metrics file", |_| prom.exists());
    let first_ino = std::fs::metadata(&prom).unwrap().ino();
    assert!(
        read_metrics(&prom).contains("spinguard_malformed_datagrams_total{reason=\"oversized\"} 0")
    );
    assert_eq!(
        std::fs::metadata(&prom).unwrap().permissions().mode() & 0o777,
        0o644,
        "node_exporter may run as another user"
    );

    // A reader that checks every version it sees is whole.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (stop, prom) = (stop.clone(), prom.clone());
        std::thread::spawn(move || {
            let mut seen = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let text = read_metrics(&prom);
                assert!(
                    text.trim_end().lines().last().is_some_and(|x| x
                        .starts_with("spinguard_malformed_datagrams_total{reason=\"invalid\"}")),
                    "a partial metrics file: {text:?}"
                );
                seen += 1;
            }
            seen
        })
    };

    let sender = Sender::new(&path).unwrap();
    let pid = 31337;
    assert!(sender.send_event(&header(pid, 1), &load(CallResult::Ok(7))));
    assert!(sender.send_event(&header(pid, 2), &load(CallResult::Err(libc::EAGAIN))));
    assert!(sender.send_event(&header(pid, 5), &load(CallResult::Ok(8))));
    assert!(sender.send(b"not json"));
    // Labelled by program (this test binary, as the kernel names the sender)
    // and container (none), not by pid.
    let who = format!("source=\"shim\",program=\"{}\",container=\"\"", me().1);
    let want = [
        format!("spinguard_loads_total{{{who},cmd=\"BPF_PROG_LOAD\"}} 3"),
        format!("spinguard_retries_total{{{who},cmd=\"BPF_PROG_LOAD\"}} 1"),
        format!("spinguard_signals_held_back_total{{{who},cmd=\"BPF_PROG_LOAD\"}} 3"),
        format!("spinguard_events_lost_total{{{who}}} 2"),
        "spinguard_malformed_datagrams_total{reason=\"not_json\"} 1".to_string(),
    ];
    l.wait_until("the counters in the metrics file", |_| {
        let text = read_metrics(&prom);
        want.iter().all(|w| text.lines().any(|x| x == w))
    });
    assert_ne!(
        std::fs::metadata(&prom).unwrap().ino(),
        first_ino,
        "replaced by rename, not rewritten in place"
    );
    // More events after the last write reach the file at exit at the latest.
    assert!(sender.send_event(&header(pid, 6), &load(CallResult::Ok(9))));
    l.line_with("(fd 9)");
    let (out, _, err) = l.stop(libc::SIGTERM);
    assert!(out.status.success(), "{err:#?}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let reads = reader.join().expect("reader saw only whole files");
    assert!(reads > 0);
    let text = read_metrics(&prom);
    assert!(
        text.contains(&format!(
            "spinguard_loads_total{{{who},cmd=\"BPF_PROG_LOAD\"}} 4"
        )),
        "{text}"
    );
    let names: Vec<_> = std::fs::read_dir(dir.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(
        names,
        ["spinguard.prom"],
        "no temporary files left, socket removed"
    );
}

#[test]
fn a_failing_metrics_write_costs_one_line_and_nothing_else() {
    let dir = Scratch::new("listen-metrics-fail");
    let path = dir.path("s.sock");
    let prom = dir.path("missing-dir/spinguard.prom");
    let l = Listener::start(&path, &["--metrics", prom.to_str().unwrap()]);
    let sender = Sender::new(&path).unwrap();
    // Several events over more than one write interval: each would write.
    for seq in 1..=3 {
        assert!(sender.send_event(&header(9, seq), &load(CallResult::Ok(7))));
        std::thread::sleep(Duration::from_millis(600));
    }
    l.wait_until("3 events", |l| l.out().len() == 3);
    let (out, _, err) = l.stop(libc::SIGTERM);
    assert!(out.status.success(), "{err:#?}");
    let complaints: Vec<_> = err
        .iter()
        .filter(|x| x.contains("cannot write metrics"))
        .collect();
    assert_eq!(complaints.len(), 1, "{err:#?}");
    assert!(!prom.exists());
}

/// `listen --metrics S S` would replace its own socket with the metrics file
/// at the first write: refused as a usage error, however the two are spelled,
/// before anything is created.
#[test]
fn refuses_a_metrics_file_at_its_own_socket_path() {
    let dir = Scratch::new("listen-metrics-self");
    let path = dir.path("s");
    let dotted = dir.dir().join(".").join("s");
    let around = dir
        .dir()
        .join("..")
        .join(dir.dir().file_name().unwrap())
        .join("s");
    for metrics in [&path, &dotted, &around] {
        let out = support::run_timeout(
            Command::new(support::spinguard_bin())
                .arg("listen")
                .arg("--metrics")
                .arg(metrics)
                .arg(&path),
            WAIT,
        );
        assert_eq!(out.status.code(), Some(2), "{}", support::describe(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(err.contains("is the socket PATH itself"), "{err}");
        assert!(!path.exists(), "created {}", path.display());
    }
    // A different name in the same directory is fine.
    let l = Listener::start(&path, &["--metrics", dir.path("m.prom").to_str().unwrap()]);
    let (status, _, err) = l.stop(libc::SIGTERM);
    assert!(status.status.success(), "{err:#?}");
}
