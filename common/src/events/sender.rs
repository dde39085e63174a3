//! Sending events: a Unix datagram socket, never blocking, never signalling.
//!
//! Every call here is one the shim may make from inside a hooked `syscall()`,
//! possibly in a signal handler: only async-signal-safe functions (signal-safety(7)
//! lists socket, sendto, fstat, close, clock_gettime, getpid), atomics, and
//! stack buffers.

use std::sync::atomic::{AtomicI32, AtomicU64, Ordering::Relaxed};

use super::{encode, Body, Comm, EventBuf, Header, Source};

/// Why a [`Sender`] could not be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SenderError {
    /// The path is empty, has a NUL byte, or does not fit `sun_path` with its
    /// terminating NUL (107 bytes at most).
    BadPath,
}

impl std::fmt::Display for SenderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("event socket path must be 1 to 107 bytes without NUL")
    }
}

impl std::error::Error for SenderError {}

/// Wall-clock microseconds since the Unix epoch (CLOCK_REALTIME, via the vDSO).
pub fn now_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes into a local timespec; CLOCK_REALTIME always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000)
        .wrapping_add(ts.tv_nsec as u64 / 1000)
}

/// A per-process sequence: 1, 2, 3… and back to 1 in a forked child, whose
/// events form a new (source, pid) stream. The pid and the count share one
/// word so that a fork between reading and bumping cannot mix them up.
pub struct SeqCounter(AtomicU64);

impl Default for SeqCounter {
    fn default() -> Self {
        Self::new()
    }
}

impl SeqCounter {
    pub const fn new() -> SeqCounter {
        SeqCounter(AtomicU64::new(0))
    }

    /// The next number for process `pid` (the caller's `getpid()`).
    pub fn next(&self, pid: i32) -> u64 {
        let mut cur = self.0.load(Relaxed);
        loop {
            let (p, n) = ((cur >> 32) as u32, cur as u32);
            let n = if p == pid as u32 {
                n.wrapping_add(1)
            } else {
                1
            };
            let new = ((pid as u32 as u64) << 32) | n as u64;
            match self.0.compare_exchange_weak(cur, new, Relaxed, Relaxed) {
                Ok(_) => return n as u64,
                Err(actual) => cur = actual,
            }
        }
    }
}

/// Counters of one [`Sender`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SendStats {
    /// Datagrams the kernel accepted.
    pub sent: u64,
    /// sendto(2) failures: no listener (ENOENT, ECONNREFUSED), its queue full
    /// (EAGAIN), no socket (EMFILE)…
    pub send_failures: u64,
    /// Events that did not fit the encoding buffer, so were never sent.
    pub too_big: u64,
    /// errno of the last failure, 0 if none.
    pub last_errno: i32,
}

/// Sends datagrams to one socket path. Shareable between threads (`&self`),
/// usable from signal handlers, never blocks: a full or absent listener costs
/// one failed sendto(2), counted in [`Sender::stats`].
pub struct Sender {
    addr: libc::sockaddr_un,
    addr_len: libc::socklen_t,
    /// Our socket, -1 until the first send. The host program may close it
    /// behind our back (daemons close every fd at start-up) and the number may
    /// then name one of its own files: `ino` tells ours from theirs.
    fd: AtomicI32,
    ino: AtomicU64,
    seq: SeqCounter,
    sent: AtomicU64,
    failures: AtomicU64,
    too_big: AtomicU64,
    last_errno: AtomicI32,
    /// The process name [`Sender::emit`] puts in every header.
    comm: Comm,
}

impl Sender {
    /// Builds the address once. Creates no socket yet: a program that never
    /// makes a guarded call never gets an extra fd.
    pub fn new(path: impl AsRef<std::ffi::OsStr>) -> Result<Sender, SenderError> {
        use std::os::unix::ffi::OsStrExt;
        let path = path.as_ref().as_bytes();
        // SAFETY: sockaddr_un is plain old data; all-zero is a valid value.
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        // Keep one NUL at the end: Linux accepts an unterminated full-length
        // path, but the listener prints it, and 107 bytes is plenty.
        if path.is_empty() || path.len() >= addr.sun_path.len() || path.contains(&0) {
            return Err(SenderError::BadPath);
        }
        for (dst, &src) in addr.sun_path.iter_mut().zip(path) {
            *dst = src as libc::c_char;
        }
        let addr_len =
            (std::mem::size_of::<libc::sa_family_t>() + path.len() + 1) as libc::socklen_t;
        Ok(Sender {
            addr,
            addr_len,
            fd: AtomicI32::new(-1),
            ino: AtomicU64::new(0),
            seq: SeqCounter::new(),
            sent: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            too_big: AtomicU64::new(0),
            last_errno: AtomicI32::new(0),
            comm: Comm::EMPTY,
        })
    }

    /// Names the process in every event [`Sender::emit`] sends (the shim:
    /// its host's name, read once at start).
    pub fn with_comm(mut self, comm: Comm) -> Sender {
        self.comm = comm;
        self
    }

    /// Encodes and sends an event about the calling thread: `pid`, `tid`,
    /// `ts` and this process's next `seq` are filled in here. For the shim.
    pub fn emit(&self, source: Source, body: &Body<'_>) -> bool {
        // SAFETY: getpid has no preconditions and cannot fail.
        let (pid, tid) = (unsafe { libc::getpid() }, crate::gettid());
        let h = Header {
            source,
            pid,
            tid,
            seq: self.seq.next(pid),
            ts_us: now_us(),
            comm: self.comm,
        };
        self.send_event(&h, body)
    }

    /// Encodes and sends an event with a header the caller made (the
    /// supervisor: `pid`/`tid` of its tracee, its own `seq` per tracee).
    pub fn send_event(&self, h: &Header, body: &Body<'_>) -> bool {
        let mut buf = EventBuf::<{ super::EVENT_BUF_LEN }>::new();
        match encode(&mut buf, h, body) {
            Some(bytes) => self.send(bytes),
            None => {
                self.too_big.fetch_add(1, Relaxed);
                false
            }
        }
    }

    /// Sends one datagram as it is. True when the kernel took it.
    pub fn send(&self, datagram: &[u8]) -> bool {
        let (fd, temporary) = match self.socket() {
            Ok(s) => s,
            Err(e) => return self.failed(e),
        };
        // MSG_DONTWAIT: a listener whose queue is full (stopped, slow) costs us
        // EAGAIN, not a wait. MSG_NOSIGNAL: never SIGPIPE the host.
        // SAFETY: fd is a socket we own; the buffer and address are live and
        // their lengths are theirs.
        let n = unsafe {
            libc::sendto(
                fd,
                datagram.as_ptr().cast(),
                datagram.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                (&self.addr as *const libc::sockaddr_un).cast(),
                self.addr_len,
            )
        };
        let err = errno();
        if temporary {
            // SAFETY: a socket of our own that nothing else knows of.
            unsafe { libc::close(fd) };
        }
        if n < 0 {
            return self.failed(err);
        }
        self.sent.fetch_add(1, Relaxed);
        true
    }

    pub fn stats(&self) -> SendStats {
        SendStats {
            sent: self.sent.load(Relaxed),
            send_failures: self.failures.load(Relaxed),
            too_big: self.too_big.load(Relaxed),
            last_errno: self.last_errno.load(Relaxed),
        }
    }

    /// Zeroes the counters (not the sequence): for a fork()ed child, whose
    /// summary must count its own sends only. Atomics only, async-signal-safe.
    pub fn reset_stats(&self) {
        self.sent.store(0, Relaxed);
        self.failures.store(0, Relaxed);
        self.too_big.store(0, Relaxed);
        self.last_errno.store(0, Relaxed);
    }

    fn failed(&self, errno: i32) -> bool {
        self.failures.fetch_add(1, Relaxed);
        self.last_errno.store(errno, Relaxed);
        false
    }

    /// Our socket, made on first use and again if the host closed it; true
    /// when it is a socket for this one send only, to be closed after it.
    fn socket(&self) -> Result<(i32, bool), i32> {
        let fd = self.fd.load(Relaxed);
        if fd >= 0 && inode(fd) == Some(self.ino.load(Relaxed)) {
            return Ok((fd, false));
        }
        // SAFETY: plain socket(2); the result is checked.
        let new = unsafe {
            libc::socket(
                libc::AF_UNIX,
                libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        };
        if new < 0 {
            return Err(errno());
        }
        let Some(ino) = inode(new) else {
            let e = errno();
            // SAFETY: `new` is ours and unused.
            unsafe { libc::close(new) };
            return Err(e);
        };
        // Another thread may be doing the same (two threads whose loads end
        // together): one wins and keeps its socket. The other cannot use the
        // winner's yet (its inode may not be stored), so it sends this one
        // datagram from its own fresh socket and closes it: no event is lost
        // to the race. A stale `fd` is never closed: that number is not ours.
        match self.fd.compare_exchange(fd, new, Relaxed, Relaxed) {
            Ok(_) => {
                self.ino.store(ino, Relaxed);
                Ok((new, false))
            }
            Err(_) => Ok((new, true)),
        }
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        let fd = *self.fd.get_mut();
        if fd >= 0 && inode(fd) == Some(*self.ino.get_mut()) {
            // SAFETY: the fd is still our socket (same inode).
            unsafe { libc::close(fd) };
        }
    }
}

fn inode(fd: i32) -> Option<u64> {
    // SAFETY: fstat into a zeroed local; fails cleanly on a bad fd.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &mut st) } != 0 || st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return None;
    }
    Some(st.st_ino)
}

fn errno() -> i32 {
    // SAFETY: the calling thread's errno slot.
    unsafe { *libc::__errno_location() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;

    fn tmp(name: &str) -> std::path::PathBuf {
        let d =
            std::env::temp_dir().join(format!("spinguard-sender-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&d);
        d
    }

    #[test]
    fn path_limits() {
        assert!(Sender::new("").is_err());
        assert!(Sender::new("a\0b").is_err());
        assert!(Sender::new("x".repeat(108)).is_err());
        assert!(Sender::new("x".repeat(107)).is_ok());
    }

    #[test]
    fn seq_restarts_per_pid() {
        let s = SeqCounter::new();
        assert_eq!([s.next(10), s.next(10), s.next(10)], [1, 2, 3]);
        assert_eq!(s.next(11), 1, "a forked child starts its own stream");
        assert_eq!(s.next(11), 2);
    }

    #[test]
    fn sends_and_counts_failures_without_blocking() {
        let path = tmp("a");
        let sender = Sender::new(&path).unwrap();
        // No listener yet: ENOENT, counted.
        assert!(!sender.send(b"{}"));
        assert_eq!(sender.stats().send_failures, 1);
        assert_eq!(sender.stats().last_errno, libc::ENOENT);

        let rx = UnixDatagram::bind(&path).unwrap();
        rx.set_nonblocking(true).unwrap();
        assert!(sender.send(b"hello"));
        let mut buf = [0u8; 16];
        assert_eq!(rx.recv(&mut buf).unwrap(), 5);
        assert_eq!(&buf[..5], b"hello");

        // Nobody reading: the queue fills (net.unix.max_dgram_qlen) and sends
        // fail with EAGAIN instead of blocking.
        let mut ok = 0;
        let mut failed = 0;
        for _ in 0..10_000 {
            if sender.send(b"x") {
                ok += 1;
            } else {
                failed += 1;
                break;
            }
        }
        assert_eq!(failed, 1, "after {ok} sends the queue never filled");
        assert_eq!(sender.stats().last_errno, libc::EAGAIN);
        assert_eq!(sender.stats().sent, 1 + ok);
        drop(rx);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn survives_the_host_closing_its_socket() {
        let path = tmp("b");
        let rx = UnixDatagram::bind(&path).unwrap();
        let sender = Sender::new(&path).unwrap();
        assert!(sender.send(b"1"));
        let fd = sender.fd.load(Relaxed);
        // The host closes every fd, then opens a file that gets our number
        // (unless a test on another thread takes it first: fd numbers are
        // the process's, so what is checked is the file, not the number).
        unsafe { libc::close(fd) };
        let host_file = tmp("b-host-file");
        let f = std::fs::File::create(&host_file).unwrap();
        // The send goes out on a new socket of ours...
        assert!(sender.send(b"2"));
        let mut buf = [0u8; 4];
        assert_eq!(rx.recv(&mut buf).unwrap(), 1);
        assert_eq!(rx.recv(&mut buf).unwrap(), 1);
        assert_eq!(buf[0], b'2');
        // ...and the host's file is neither written nor closed by us.
        drop(sender);
        use std::io::Write;
        (&f).write_all(b"still mine")
            .expect("the host's file must stay open");
        assert_eq!(std::fs::read(&host_file).unwrap(), b"still mine");
        drop(f);
        let _ = std::fs::remove_file(&host_file);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn threads_sending_their_first_event_at_once_lose_none() {
        // Two loading threads whose loads end together both make the
        // sender's socket; the one that loses the race must still send.
        let path = tmp("c");
        let rx = UnixDatagram::bind(&path).unwrap();
        rx.set_nonblocking(true).unwrap();
        const THREADS: usize = 4; // below net.unix.max_dgram_qlen (10)
        let mut buf = [0u8; 4];
        for round in 0..300 {
            let sender = Sender::new(&path).unwrap();
            let go = std::sync::Barrier::new(THREADS);
            std::thread::scope(|s| {
                for _ in 0..THREADS {
                    s.spawn(|| {
                        go.wait();
                        sender.send(b"x")
                    });
                }
            });
            let st = sender.stats();
            assert_eq!(
                (st.sent, st.send_failures),
                (THREADS as u64, 0),
                "round {round}: errno {}",
                st.last_errno
            );
            for i in 0..THREADS {
                assert_eq!(
                    rx.recv(&mut buf).ok(),
                    Some(1),
                    "round {round}, datagram {i}"
                );
            }
        }
        let _ = std::fs::remove_file(&path);
    }
}
