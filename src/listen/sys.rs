//! The raw system calls the listener needs, behind safe wrappers: the one
//! place in `listen` with `unsafe`.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn sockaddr(path: &Path) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain old data; all-zero is valid.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    if bytes.is_empty() || bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "socket path must be 1 to {} bytes without NUL",
                addr.sun_path.len() - 1
            ),
        ));
    }
    for (d, &s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = s as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    Ok((addr, len as libc::socklen_t))
}

fn dgram_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is wrapped at once.
    let fd = cvt(unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    })?;
    // SAFETY: a fresh fd nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A datagram socket bound at `path`, whose file is created with exactly
/// `mode` (e.g. 0o600), whatever the process umask.
///
/// Why umask and not chmod: bind(2) creates the file with
/// `sockfs inode mode & ~umask` (net/unix/af_unix.c, `unix_bind_bsd`), so a
/// chmod after bind leaves a window in which the socket is as open as the
/// umask allows, and an fchmod before bind is still masked (umask 0277 would
/// give 0400). Setting the umask around bind makes the file right from its
/// first instant. umask is process-wide: the listener calls this before it
/// starts any thread, so no other thread can create a file meanwhile.
pub fn bind_dgram(path: &Path, mode: libc::mode_t) -> io::Result<OwnedFd> {
    let (addr, len) = sockaddr(path)?;
    let fd = dgram_socket()?;
    // Before bind: a datagram queued between bind and a later setsockopt
    // would carry no credentials, and its stream would be keyed apart from
    // the sender's next ones (seen: a first event alone, then "seq 2: 1
    // event before it not seen").
    pass_credentials(&fd)?;
    // SAFETY: umask(2) cannot fail; the old value is restored right after.
    let old = unsafe { libc::umask(!mode & 0o777) };
    // SAFETY: a live sockaddr_un with its true length.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len,
        )
    };
    let err = io::Error::last_os_error();
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    if r < 0 {
        return Err(err);
    }
    Ok(fd)
}

/// SO_PASSCRED: the kernel attaches the sender's credentials to every
/// datagram queued on this socket, whether or not the sender sent any
/// (af_unix.c, `maybe_add_creds`), and [`recv`] reads its pid as an
/// SCM_CREDENTIALS message, translated into this process's pid namespace
/// (unix(7)). The senders need no change.
fn pass_credentials(fd: &OwnedFd) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: a live int of the size given.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PASSCRED,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// Connects a throw-away datagram socket to `path`: Ok when a socket is bound
/// there (a live listener), ECONNREFUSED when the file is a leftover nobody
/// holds (unix_find_other finds the inode but no bound socket), EPROTOTYPE
/// when a stream socket listens there.
pub fn probe(path: &Path) -> io::Result<()> {
    let (addr, len) = sockaddr(path)?;
    let fd = dgram_socket()?;
    // SAFETY: a live sockaddr_un with its true length.
    cvt(unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len,
        )
    })
    .map(drop)
}

/// What one recv(2) got.
pub enum Received {
    /// A datagram: its full length (`MSG_TRUNC`: even when it was longer than
    /// the buffer, in which case only the buffer's worth was kept), and the
    /// pid of the process that sent it as the kernel gives it in this pid
    /// namespace: 0 when the sender's process is not visible here (it lives
    /// in a namespace that is not ours or a descendant of ours), None when no
    /// credentials came (the socket was not made by [`bind_dgram`]).
    Datagram { len: usize, sender: Option<i32> },
    /// Nothing queued.
    Empty,
}

/// Room for exactly one SCM_CREDENTIALS message. Nothing else fits, which is
/// what we want: file descriptors a sender passes (SCM_RIGHTS) come after the
/// credentials (include/net/scm.h, `scm_recv_unix`) and, with no room left,
/// the kernel closes them instead of installing them in our fd table.
// SAFETY: CMSG_SPACE is arithmetic on its argument.
const CRED_SPACE: usize =
    unsafe { libc::CMSG_SPACE(std::mem::size_of::<libc::ucred>() as libc::c_uint) } as usize;

pub fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<Received> {
    // u64s: a control buffer must be aligned for cmsghdr.
    let mut control = [0u64; CRED_SPACE.div_ceil(8)];
    loop {
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: msghdr is plain old data; all-zero is valid.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = CRED_SPACE as _;
        // SAFETY: buf, iov and control are live and writable for the lengths
        // given. MSG_TRUNC on a datagram socket returns the real length of the
        // datagram (socket(7), unix(7) since Linux 3.4), so an oversized one
        // is seen as such rather than silently cut. MSG_CMSG_CLOEXEC: should
        // a descriptor ever be installed, it does not leak into a child.
        let n = unsafe {
            libc::recvmsg(
                fd,
                &mut msg,
                libc::MSG_TRUNC | libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC,
            )
        };
        if n >= 0 {
            // SAFETY: msg describes the control buffer the kernel just filled.
            let sender = unsafe { credentials(&msg) };
            return Ok(Received::Datagram {
                len: n as usize,
                sender,
            });
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EAGAIN) => return Ok(Received::Empty),
            Some(libc::EINTR) => continue,
            _ => return Err(e),
        }
    }
}

/// The sender's pid from the SCM_CREDENTIALS message of `msg`; any file
/// descriptor that came along is closed.
///
/// # Safety
/// `msg` must be a msghdr recvmsg(2) has just filled.
unsafe fn credentials(msg: &libc::msghdr) -> Option<i32> {
    let mut pid = None;
    let mut c = libc::CMSG_FIRSTHDR(msg);
    while !c.is_null() {
        let h = &*c;
        let data = libc::CMSG_DATA(c);
        let len = h.cmsg_len as usize - (data as usize - c as usize);
        match (h.cmsg_level, h.cmsg_type) {
            (libc::SOL_SOCKET, libc::SCM_CREDENTIALS)
                if len >= std::mem::size_of::<libc::ucred>() =>
            {
                let cred: libc::ucred = std::ptr::read_unaligned(data.cast());
                pid = Some(cred.pid);
            }
            (libc::SOL_SOCKET, libc::SCM_RIGHTS) => {
                for i in 0..len / std::mem::size_of::<libc::c_int>() {
                    let fd: libc::c_int =
                        std::ptr::read_unaligned(data.cast::<libc::c_int>().add(i));
                    libc::close(fd);
                }
            }
            _ => {}
        }
        c = libc::CMSG_NXTHDR(msg, c);
    }
    pid
}

/// SIGINT and SIGTERM as readable events on an fd, so the listener's one
/// poll loop handles them between datagrams and cleans up in plain code
/// instead of inside a handler. The signals are blocked on the calling
/// thread first (signalfd(2): "the signals must first be blocked"); call it
/// before any thread starts, so every later thread inherits the mask.
pub struct SignalFd {
    fd: OwnedFd,
}

impl SignalFd {
    pub fn new(signals: &[libc::c_int]) -> io::Result<SignalFd> {
        // SAFETY: sigset manipulation on a local, then the calling thread's mask.
        let fd = unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for &s in signals {
                libc::sigaddset(&mut set, s);
            }
            let r = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            if r != 0 {
                return Err(io::Error::from_raw_os_error(r));
            }
            cvt(libc::signalfd(
                -1,
                &set,
                libc::SFD_CLOEXEC | libc::SFD_NONBLOCK,
            ))?
        };
        // SAFETY: a fresh fd nothing else owns.
        Ok(SignalFd {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// The next pending signal's number, if any.
    pub fn read(&self) -> Option<i32> {
        // SAFETY: reads one signalfd_siginfo into a zeroed local of that size.
        unsafe {
            let mut info: libc::signalfd_siginfo = std::mem::zeroed();
            let size = std::mem::size_of::<libc::signalfd_siginfo>();
            let n = libc::read(
                self.fd.as_raw_fd(),
                (&mut info as *mut libc::signalfd_siginfo).cast(),
                size,
            );
            (n == size as isize).then_some(info.ssi_signo as i32)
        }
    }
}

impl AsRawFd for SignalFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// poll(2) for readability on `fds`, up to `timeout_ms`; which are readable.
/// EINTR counts as "nothing yet".
pub fn poll_readable<const N: usize>(fds: [RawFd; N], timeout_ms: i32) -> io::Result<[bool; N]> {
    let mut p = fds.map(|fd| libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    });
    // SAFETY: a live array of N pollfds.
    let r = unsafe { libc::poll(p.as_mut_ptr(), N as libc::nfds_t, timeout_ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EINTR) {
            return Ok([false; N]);
        }
        return Err(e);
    }
    Ok(p.map(|p| p.revents != 0))
}

/// `HH:MM:SS.mmm` in local time for microseconds since the epoch.
pub fn local_time(ts_us: u64) -> String {
    extern "C" {
        // POSIX; the libc crate does not bind it.
        fn tzset();
    }
    static TZ: std::sync::Once = std::sync::Once::new();
    // SAFETY: tzset reads TZ and /etc/localtime once; localtime_r (unlike
    // localtime) is not required to, hence the explicit call. Called once,
    // from the listener's only thread.
    TZ.call_once(|| unsafe { tzset() });
    let secs = (ts_us / 1_000_000) as libc::time_t;
    let millis = (ts_us / 1000) % 1000;
    // SAFETY: localtime_r fills a local struct tm.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    if unsafe { libc::localtime_r(&secs, &mut tm) }.is_null() {
        return format!("@{}.{millis:03}", ts_us / 1_000_000);
    }
    format!(
        "{:02}:{:02}:{:02}.{millis:03}",
        tm.tm_hour, tm.tm_min, tm.tm_sec
    )
}
