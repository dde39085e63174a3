//! Events into JSON bytes in a fixed stack buffer.
//!
//! Everything here is plain byte copying and integer arithmetic: no heap, no
//! locks, no `core::fmt` (whose machinery is not documented as
//! async-signal-safe and panics on a failing writer in some paths). A value
//! that does not fit marks the buffer overflowed, and an overflowed buffer
//! yields nothing: a datagram is a whole object or is not sent at all.

use super::{
    Attach, Body, CallResult, ChildExit, Header, Livelock, ProgLoad, Rescue, RescueOutcome,
    Restart, Summary, VERSION,
};
use crate::bpf;
use crate::errno::static_errno_name;
use crate::signals::standard_signal_name;

/// Default [`EventBuf`] size: a `prog_load` holding back every blockable
/// signal (62 names) still fits, with room to spare.
pub const EVENT_BUF_LEN: usize = 1024;

/// A JSON object under construction, on the stack.
pub struct EventBuf<const N: usize = EVENT_BUF_LEN> {
    buf: [u8; N],
    len: usize,
    /// Usable bytes: N, or fewer in tests that try every size.
    cap: usize,
    overflow: bool,
}

impl<const N: usize> Default for EventBuf<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> EventBuf<N> {
    pub const fn new() -> Self {
        EventBuf {
            buf: [0; N],
            len: 0,
            cap: N,
            overflow: false,
        }
    }

    pub fn clear(&mut self) {
        self.len = 0;
        self.overflow = false;
    }

    /// The finished bytes, or `None` when something did not fit.
    pub fn bytes(&self) -> Option<&[u8]> {
        if self.overflow {
            None
        } else {
            self.buf.get(..self.len)
        }
    }

    fn raw(&mut self, b: &[u8]) {
        if self.overflow || self.len + b.len() > self.cap {
            self.overflow = true;
            return;
        }
        match self.buf.get_mut(self.len..self.len + b.len()) {
            Some(dst) => {
                dst.copy_from_slice(b);
                self.len += b.len();
            }
            None => self.overflow = true,
        }
    }

    fn byte(&mut self, b: u8) {
        self.raw(&[b]);
    }

    fn u64(&mut self, mut v: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            if let Some(d) = digits.get_mut(i) {
                *d = b'0' + (v % 10) as u8;
            }
            v /= 10;
            if v == 0 {
                break;
            }
        }
        if let Some(d) = digits.get(i..) {
            self.raw(d);
        }
    }

    fn i64(&mut self, v: i64) {
        if v < 0 {
            self.byte(b'-');
        }
        self.u64(v.unsigned_abs());
    }

    /// A JSON string from UTF-8 text: quotes, backslashes and control
    /// characters escaped (RFC 8259 §7), everything else copied.
    fn str(&mut self, s: &str) {
        self.byte(b'"');
        self.escaped(s);
        self.byte(b'"');
    }

    /// A JSON string from arbitrary bytes: invalid UTF-8 becomes U+FFFD.
    fn bytes_lossy(&mut self, b: &[u8]) {
        self.byte(b'"');
        for chunk in b.utf8_chunks() {
            self.escaped(chunk.valid());
            if !chunk.invalid().is_empty() {
                self.raw("\u{fffd}".as_bytes());
            }
        }
        self.byte(b'"');
    }

    fn escaped(&mut self, s: &str) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let bytes = s.as_bytes();
        let mut start = 0;
        for (i, &c) in bytes.iter().enumerate() {
            let esc: &[u8] = match c {
                b'"' => b"\\\"",
                b'\\' => b"\\\\",
                b'\n' => b"\\n",
                b'\r' => b"\\r",
                b'\t' => b"\\t",
                0..=0x1f => b"",
                _ => continue,
            };
            if let Some(plain) = bytes.get(start..i) {
                self.raw(plain);
            }
            if esc.is_empty() {
                let hex = [
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[(c >> 4) as usize],
                    HEX[(c & 15) as usize],
                ];
                self.raw(&hex);
            } else {
                self.raw(esc);
            }
            start = i + 1;
        }
        if let Some(plain) = bytes.get(start..) {
            self.raw(plain);
        }
    }

    /// `,"key":` (keys are ours: plain ASCII, never escaped).
    fn key(&mut self, k: &str) {
        self.byte(b',');
        self.byte(b'"');
        self.raw(k.as_bytes());
        self.raw(b"\":");
    }

    fn signal(&mut self, sig: i32) {
        match standard_signal_name(sig) {
            Some(name) => self.str(name),
            None => {
                self.byte(b'"');
                let rtmin = libc::SIGRTMIN();
                if sig >= rtmin {
                    self.raw(b"SIGRTMIN+");
                    self.u64((sig - rtmin) as u64);
                } else {
                    self.raw(b"SIG");
                    self.i64(sig as i64);
                }
                self.byte(b'"');
            }
        }
    }

    fn errno(&mut self, errno: i32) {
        match static_errno_name(errno) {
            Some(name) => self.str(name),
            None => {
                self.raw(b"\"E");
                self.i64(errno as i64);
                self.byte(b'"');
            }
        }
    }
}

/// Encodes one event into `buf` (cleared first). Returns the datagram, or
/// `None` when it does not fit `N` bytes; then nothing is to be sent.
pub fn encode<'b, const N: usize>(
    buf: &'b mut EventBuf<N>,
    h: &Header,
    body: &Body<'_>,
) -> Option<&'b [u8]> {
    buf.clear();
    buf.raw(b"{\"v\":");
    buf.u64(VERSION);
    buf.key("source");
    buf.str(h.source.as_str());
    buf.key("pid");
    buf.i64(h.pid as i64);
    buf.key("tid");
    buf.i64(h.tid as i64);
    buf.key("seq");
    buf.u64(h.seq);
    buf.key("ts");
    buf.u64(h.ts_us);
    buf.key("event");
    buf.str(body.name());
    if !h.comm.is_empty() {
        buf.key("comm");
        buf.bytes_lossy(h.comm.as_bytes());
    }
    match body {
        Body::ProgLoad(p) => prog_load(buf, p),
        Body::Restart(r) => restart(buf, r),
        Body::Attach(a) | Body::Detach(a) => attach(buf, a),
        Body::ChildExit(c) => child_exit(buf, c),
        Body::Summary(s) => summary(buf, s),
        Body::Livelock(l) => livelock(buf, l),
        Body::Rescue(r) => rescue(buf, r),
    }
    buf.byte(b'}');
    buf.bytes()
}

fn prog_load<const N: usize>(buf: &mut EventBuf<N>, p: &ProgLoad) {
    buf.key("cmd");
    buf.str(bpf::command_name(p.cmd));
    buf.key("attempts");
    buf.u64(p.attempts as u64);
    buf.key("result");
    match p.result {
        CallResult::Ok(v) => {
            buf.raw(if p.cmd == bpf::BPF_PROG_LOAD {
                b"{\"fd\":"
            } else {
                b"{\"ret\":"
            });
            buf.i64(v);
        }
        CallResult::Err(e) => {
            buf.raw(b"{\"errno\":");
            buf.errno(e);
        }
    }
    buf.byte(b'}');
    buf.key("duration_us");
    buf.u64(p.duration_us);
    buf.key("held_back");
    buf.u64(p.held_back);
    buf.key("held_back_signals");
    signal_list(buf, p.held_back_signals);
}

fn restart<const N: usize>(buf: &mut EventBuf<N>, r: &Restart) {
    buf.key("cmd");
    buf.str(bpf::command_name(r.cmd));
    buf.key("errno");
    buf.errno(r.errno);
    buf.key("n");
    buf.u64(r.n as u64);
}

fn attach<const N: usize>(buf: &mut EventBuf<N>, a: &Attach<'_>) {
    buf.key("threads");
    buf.u64(a.threads as u64);
    buf.key("comm");
    buf.bytes_lossy(a.comm);
}

fn child_exit<const N: usize>(buf: &mut EventBuf<N>, c: &ChildExit) {
    match *c {
        ChildExit::Code(code) => {
            buf.key("code");
            buf.i64(code as i64);
        }
        ChildExit::Signal {
            signal,
            core_dumped,
        } => {
            buf.key("signal");
            buf.signal(signal);
            buf.key("core_dumped");
            buf.raw(if core_dumped { b"true" } else { b"false" });
        }
    }
}

fn summary<const N: usize>(buf: &mut EventBuf<N>, s: &Summary<'_>) {
    buf.key("guarded_calls");
    buf.u64(s.calls.iter().map(|&(_, n)| n).sum());
    buf.key("calls");
    buf.byte(b'{');
    for (i, &(cmd, n)) in s.calls.iter().enumerate() {
        if i > 0 {
            buf.byte(b',');
        }
        buf.str(bpf::command_name(cmd));
        buf.byte(b':');
        buf.u64(n);
    }
    buf.byte(b'}');
    buf.key("retries");
    buf.u64(s.retries);
    buf.key("guarded_us");
    buf.u64(s.guarded_us);
    buf.key("held_back");
    buf.u64(s.held_back);
    buf.key("events_sent");
    buf.u64(s.events_sent);
    buf.key("events_dropped");
    buf.u64(s.events_dropped);
    buf.key("send_failures");
    buf.u64(s.send_failures);
}

fn signal_list<const N: usize>(buf: &mut EventBuf<N>, set: crate::SigSet) {
    buf.byte(b'[');
    for (i, sig) in set.iter().enumerate() {
        if i > 0 {
            buf.byte(b',');
        }
        buf.signal(sig);
    }
    buf.byte(b']');
}

fn rescue<const N: usize>(buf: &mut EventBuf<N>, r: &Rescue<'_>) {
    buf.key("comm");
    buf.bytes_lossy(r.comm);
    buf.key("outcome");
    buf.str(r.outcome.name());
    buf.key("failures");
    buf.u64(r.failures);
    buf.key("ok");
    buf.u64(r.ok);
    buf.key("window_us");
    buf.u64(r.window_us);
    buf.key("guard");
    signal_list(buf, r.guard);
    match r.outcome {
        RescueOutcome::Loaded {
            load_us,
            attach_us,
            attempts,
            threads,
        } => {
            buf.key("load_us");
            buf.u64(load_us);
            buf.key("attach_us");
            buf.u64(attach_us);
            buf.key("attempts");
            buf.u64(attempts.into());
            buf.key("threads");
            buf.u64(threads.into());
        }
        RescueOutcome::Detached {
            linger,
            threads,
            attached_us,
            calls,
            loads,
        } => {
            buf.key("why");
            buf.str(if linger { "linger" } else { "watch_ended" });
            buf.key("threads");
            buf.u64(threads.into());
            buf.key("attached_us");
            buf.u64(attached_us);
            buf.key("calls");
            buf.u64(calls);
            buf.key("loads");
            buf.u64(loads);
        }
        RescueOutcome::Exited { attached_us, loads } => {
            buf.key("attached_us");
            buf.u64(attached_us);
            buf.key("loads");
            buf.u64(loads);
        }
        RescueOutcome::Failed { reason } => {
            buf.key("reason");
            buf.bytes_lossy(reason);
        }
        RescueOutcome::Traced {
            tracer,
            tracer_comm,
        } => {
            buf.key("tracer");
            buf.i64(tracer.into());
            buf.key("tracer_comm");
            buf.bytes_lossy(tracer_comm);
        }
    }
    if let Some(ns) = r.nspid {
        buf.key("nspid");
        buf.i64(ns.into());
    }
    if !r.container.is_empty() {
        buf.key("container");
        buf.bytes_lossy(r.container);
    }
}

fn livelock<const N: usize>(buf: &mut EventBuf<N>, l: &Livelock<'_>) {
    buf.key("comm");
    buf.bytes_lossy(l.comm);
    buf.key("cmd");
    buf.str(bpf::command_name(l.cmd));
    buf.key("errno");
    buf.errno(l.errno);
    buf.key("failures");
    buf.u64(l.failures);
    buf.key("ok");
    buf.u64(l.ok);
    buf.key("window_us");
    buf.u64(l.window_us);
    buf.key("signals");
    signal_list(buf, l.signals);
    if let Some(ns) = l.nspid {
        buf.key("nspid");
        buf.i64(ns.into());
    }
    if !l.container.is_empty() {
        buf.key("container");
        buf.bytes_lossy(l.container);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Source;
    use crate::SigSet;

    fn header() -> Header {
        Header {
            source: Source::Shim,
            pid: 4242,
            tid: 4250,
            seq: 1,
            ts_us: 1_718_000_000_123_456,
            comm: crate::events::Comm::EMPTY,
        }
    }

    fn text<const N: usize>(buf: &mut EventBuf<N>, body: &Body<'_>) -> Option<String> {
        encode(buf, &header(), body).map(|b| String::from_utf8(b.to_vec()).unwrap())
    }

    fn load() -> ProgLoad {
        ProgLoad {
            cmd: bpf::BPF_PROG_LOAD,
            attempts: 1,
            result: CallResult::Ok(7),
            duration_us: 119_000,
            held_back: 1,
            held_back_signals: SigSet::from_bits(1 << (libc::SIGPROF - 1)),
        }
    }

    #[test]
    fn prog_load_exact_bytes() {
        let mut buf = EventBuf::<EVENT_BUF_LEN>::new();
        assert_eq!(
            text(&mut buf, &Body::ProgLoad(load())).unwrap(),
            r#"{"v":1,"source":"shim","pid":4242,"tid":4250,"seq":1,"ts":1718000000123456,"event":"prog_load","cmd":"BPF_PROG_LOAD","attempts":1,"result":{"fd":7},"duration_us":119000,"held_back":1,"held_back_signals":["SIGPROF"]}"#
        );
        let failed = ProgLoad {
            cmd: bpf::BPF_PROG_TEST_RUN,
            result: CallResult::Err(libc::EINTR),
            held_back: 0,
            held_back_signals: SigSet::EMPTY,
            ..load()
        };
        let t = text(&mut buf, &Body::ProgLoad(failed)).unwrap();
        assert!(
            t.ends_with(r#""cmd":"BPF_PROG_TEST_RUN","attempts":1,"result":{"errno":"EINTR"},"duration_us":119000,"held_back":0,"held_back_signals":[]}"#),
            "{t}"
        );
        let unnamed = ProgLoad {
            result: CallResult::Err(4000),
            ..load()
        };
        assert!(text(&mut buf, &Body::ProgLoad(unnamed))
            .unwrap()
            .contains(r#""result":{"errno":"E4000"}"#));
    }

    #[test]
    fn livelock_exact_bytes() {
        let mut buf = EventBuf::<EVENT_BUF_LEN>::new();
        let l = Livelock {
            comm: b"go-loader",
            cmd: bpf::BPF_PROG_LOAD,
            errno: libc::EAGAIN,
            failures: 1012,
            ok: 0,
            window_us: 1_000_000,
            signals: SigSet::from_bits(1 << (libc::SIGPROF - 1)),
            nspid: Some(1),
            container: b"4f3c2b1a0e9d",
        };
        let mut h = header();
        h.source = Source::Probe;
        let t = encode(&mut buf, &h, &Body::Livelock(l)).unwrap();
        assert_eq!(
            std::str::from_utf8(t).unwrap(),
            r#"{"v":1,"source":"probe","pid":4242,"tid":4250,"seq":1,"ts":1718000000123456,"event":"livelock","comm":"go-loader","cmd":"BPF_PROG_LOAD","errno":"EAGAIN","failures":1012,"ok":0,"window_us":1000000,"signals":["SIGPROF"],"nspid":1,"container":"4f3c2b1a0e9d"}"#
        );
        let host = Livelock {
            nspid: None,
            container: b"",
            ..l
        };
        let t = text(&mut buf, &Body::Livelock(host)).unwrap();
        assert!(t.ends_with(r#""signals":["SIGPROF"]}"#), "{t}");
    }

    #[test]
    fn integers_at_the_edges() {
        let mut buf = EventBuf::<64>::new();
        buf.u64(0);
        buf.byte(b' ');
        buf.u64(u64::MAX);
        buf.byte(b' ');
        buf.i64(i64::MIN);
        assert_eq!(
            buf.bytes().unwrap(),
            b"0 18446744073709551615 -9223372036854775808"
        );
    }

    #[test]
    fn every_blockable_signal_fits_the_default_buffer() {
        let mut buf = EventBuf::<EVENT_BUF_LEN>::new();
        let all = ProgLoad {
            held_back_signals: SigSet::all_blockable(),
            held_back: u64::MAX,
            duration_us: u64::MAX,
            ..load()
        };
        let t = text(&mut buf, &Body::ProgLoad(all)).expect("fits");
        assert!(t.contains("\"SIGRTMIN+30\""), "{t}");
    }

    #[test]
    fn escapes_quotes_backslashes_controls_and_bad_utf8() {
        let mut buf = EventBuf::<256>::new();
        buf.bytes_lossy(b"a\"b\\c\nd\x01e\x7f\xffz\xc3\xa9");
        assert_eq!(
            std::str::from_utf8(buf.bytes().unwrap()).unwrap(),
            "\"a\\\"b\\\\c\\nd\\u0001e\x7f\u{fffd}z\u{e9}\""
        );
    }

    #[test]
    fn too_small_gives_nothing_never_half_an_object() {
        let bodies = [
            Body::ProgLoad(load()),
            Body::Summary(Summary {
                calls: &[(bpf::BPF_PROG_LOAD, 3), (bpf::BPF_PROG_TEST_RUN, 1)],
                retries: 2,
                guarded_us: 361_249,
                held_back: 118,
                events_sent: 4,
                events_dropped: 1,
                send_failures: 1,
            }),
            Body::Attach(Attach {
                threads: 2,
                comm: b"x\"\n\xff",
            }),
        ];
        for body in &bodies {
            let mut buf = EventBuf::<EVENT_BUF_LEN>::new();
            let full = text(&mut buf, body).unwrap();
            // Every size below the full length refuses; not one cuts it short.
            for cap in 0..full.len() {
                buf.cap = cap;
                assert_eq!(text(&mut buf, body), None, "cap {cap} of {}", full.len());
            }
            buf.cap = full.len();
            assert_eq!(text(&mut buf, body).as_deref(), Some(full.as_str()));
        }
        // A buffer is reusable after an overflow.
        let mut b = EventBuf::<140>::new();
        assert!(text(&mut b, &bodies[0]).is_none());
        let exit = Body::ChildExit(ChildExit::Code(0));
        assert!(text(&mut b, &exit).unwrap().ends_with(r#""code":0}"#));
    }

    #[test]
    fn comm_is_escaped() {
        let mut buf = EventBuf::<EVENT_BUF_LEN>::new();
        let t = text(
            &mut buf,
            &Body::Attach(Attach {
                threads: 3,
                comm: b"a\"g\nent",
            }),
        )
        .unwrap();
        assert!(t.ends_with(r#""threads":3,"comm":"a\"g\nent"}"#), "{t}");
    }
}
