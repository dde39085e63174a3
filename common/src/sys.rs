//! Raw file calls for inspecting a program before it runs, behind safe
//! wrappers: allocation-free, lock-free and async-signal-safe, because the
//! shim's exec hooks call them, also in a vfork child.
//!
//! Each is one `syscall(2)`: not glibc's `open`/`pread` wrappers, which another
//! preloaded library (fakeroot, a sandbox) may have interposed with code that
//! is not safe in a vfork child. Inside the shim `syscall` is the shim's own
//! export, whose pass-through is a tail jump into libc's.

use core::ffi::CStr;

use libc::{c_int, c_long};

/// An errno value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Errno(pub i32);

fn errno() -> Errno {
    // SAFETY: the calling thread's errno, always valid.
    Errno(unsafe { *libc::__errno_location() })
}

fn check(r: c_long) -> Result<c_long, Errno> {
    if r < 0 {
        Err(errno())
    } else {
        Ok(r)
    }
}

/// A file opened read-only; closed on drop.
#[derive(Debug)]
pub struct File(c_int);

/// What [`File::stat`] tells about a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl File {
    /// `openat(AT_FDCWD, path, O_RDONLY | O_CLOEXEC)`.
    pub fn open(path: &CStr) -> Result<File, Errno> {
        // SAFETY: `path` is NUL-terminated and lives across the call.
        let fd = check(unsafe {
            libc::syscall(
                libc::SYS_openat,
                libc::AT_FDCWD,
                path.as_ptr(),
                libc::O_RDONLY | libc::O_CLOEXEC,
                0,
            )
        })?;
        Ok(File(fd as c_int))
    }

    /// Up to `buf.len()` bytes at `offset` (fewer at the end of the file);
    /// retried on EINTR.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize, Errno> {
        loop {
            // SAFETY: pread64 writes at most `buf.len()` bytes into `buf`.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_pread64,
                    self.0,
                    buf.as_mut_ptr(),
                    buf.len(),
                    offset as libc::off_t,
                )
            };
            match check(r) {
                Err(Errno(libc::EINTR)) => continue,
                r => return r.map(|n| n as usize),
            }
        }
    }

    /// Fills `buf` from `offset`, or says the file is shorter (EIO).
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<(), Errno> {
        let mut done = 0;
        while done < buf.len() {
            let rest = buf.get_mut(done..).unwrap_or_default();
            match self.read_at(rest, offset + done as u64)? {
                0 => return Err(Errno(libc::EIO)),
                n => done += n,
            }
        }
        Ok(())
    }

    pub fn stat(&self) -> Result<Stat, Errno> {
        // SAFETY: a zeroed `stat` is a valid out-parameter.
        let mut st: libc::stat = unsafe { core::mem::zeroed() };
        // SAFETY: fstat(2) writes one `struct stat` into `st`.
        check(unsafe { libc::syscall(libc::SYS_fstat, self.0, &mut st as *mut libc::stat) })?;
        Ok(Stat {
            mode: st.st_mode,
            uid: st.st_uid,
            gid: st.st_gid,
        })
    }
}

impl Drop for File {
    fn drop(&mut self) {
        // The errno a failed close sets is put back: a hook must leave errno
        // as the real call left it.
        let e = errno();
        // SAFETY: our own fd, closed once; errno is the thread's own.
        unsafe {
            libc::syscall(libc::SYS_close, self.0);
            *libc::__errno_location() = e.0;
        }
    }
}

/// Whether `path` names a file this process may execute: `faccessat2(X_OK,
/// AT_EACCESS)`, which checks with the effective ids and capabilities, as
/// execve does (and refuses a noexec mount, as execve does). Kernels before
/// 5.8 lack faccessat2 (ENOSYS; an older container runtime's seccomp
/// profile answers EPERM): plain faccessat then, with the real ids, which
/// differ from the effective ones only in a process that changed them
/// itself.
pub fn executable(path: &CStr) -> bool {
    // SAFETY: `path` is NUL-terminated; no other pointers.
    let r = unsafe {
        libc::syscall(
            libc::SYS_faccessat2,
            libc::AT_FDCWD,
            path.as_ptr(),
            libc::X_OK,
            libc::AT_EACCESS,
        )
    };
    if r == 0 {
        return true;
    }
    if !matches!(errno().0, libc::ENOSYS | libc::EPERM) {
        return false;
    }
    // SAFETY: as above.
    let r = unsafe {
        libc::syscall(
            libc::SYS_faccessat,
            libc::AT_FDCWD,
            path.as_ptr(),
            libc::X_OK,
            0,
        )
    };
    r == 0
}

/// The target of the symbolic link at `path`, written into `buf` (not
/// NUL-terminated); its length.
pub fn readlink(path: &CStr, buf: &mut [u8]) -> Result<usize, Errno> {
    // SAFETY: readlinkat(2) writes at most `buf.len()` bytes into `buf`.
    let r = check(unsafe {
        libc::syscall(
            libc::SYS_readlinkat,
            libc::AT_FDCWD,
            path.as_ptr(),
            buf.as_mut_ptr(),
            buf.len(),
        )
    })?;
    Ok(r as usize)
}

/// The ids the kernel compares a set-id program's owner with.
#[derive(Clone, Copy, Debug)]
pub struct Ids {
    /// Real user id.
    pub uid: u32,
    /// Real group id.
    pub gid: u32,
    /// Effective user id.
    pub euid: u32,
}

pub fn ids() -> Ids {
    // SAFETY: no arguments; none of these calls can fail.
    unsafe {
        Ids {
            uid: libc::syscall(libc::SYS_getuid) as u32,
            gid: libc::syscall(libc::SYS_getgid) as u32,
            euid: libc::syscall(libc::SYS_geteuid) as u32,
        }
    }
}
