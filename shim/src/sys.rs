//! The shim's raw calls, behind safe wrappers. Each is one syscall through
//! libc's `syscall` (see [`crate::real`]), or a libc function that is plain
//! code (`getauxval`, the vDSO clock): allocation-free, lock-free and
//! async-signal-safe, so a signal handler, a vfork child or the pass-through
//! itself may call any of them.

use libc::c_long;

use crate::real::{self, RealSyscall};

/// The kernel's `sizeof(sigset_t)` on x86_64 and aarch64 (`_NSIG / 8`); the
/// syscall rejects any other size with EINVAL.
const KERNEL_SIGSET_SIZE: c_long = 8;

/// One raw syscall through libc's `syscall`; -1 with errno set on failure, or
/// ENOSYS when libc's symbol cannot be found at all.
///
/// # Safety
/// The arguments must be valid for syscall `n` (live pointers of the right size).
unsafe fn raw(n: c_long, a: [c_long; 6]) -> c_long {
    match real::get() {
        Some(real) => real(n, a[0], a[1], a[2], a[3], a[4], a[5]),
        None => {
            set_errno(libc::ENOSYS);
            -1
        }
    }
}

pub(crate) fn errno() -> i32 {
    // SAFETY: the calling thread's errno, always valid.
    unsafe { *libc::__errno_location() }
}

pub(crate) fn set_errno(e: i32) {
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = e }
}

/// All of `bytes` to fd 2 if it takes them: one write(2) (a short or failed
/// write is dropped, there is nowhere to report it). One line in one write
/// is never interleaved with another process's output.
pub(crate) fn write_stderr(bytes: &[u8]) {
    let e = errno();
    // SAFETY: write(2) reads `bytes`, a live slice.
    unsafe {
        raw(
            libc::SYS_write,
            [2, bytes.as_ptr() as c_long, bytes.len() as c_long, 0, 0, 0],
        )
    };
    set_errno(e);
}

/// CLOCK_MONOTONIC in nanoseconds (vDSO, async-signal-safe).
pub(crate) fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes into a local timespec; CLOCK_MONOTONIC cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64)
}

pub(crate) fn getpid() -> i32 {
    // SAFETY: no arguments.
    unsafe { raw(libc::SYS_getpid, [0; 6]) as i32 }
}

/// The calling thread's name (`prctl(PR_GET_NAME)`): from the constructor,
/// which runs on the main thread before `main`, the program's name as the
/// kernel set it at exec (`comm`, at most 15 bytes).
pub(crate) fn comm() -> spinguard_common::events::Comm {
    let mut name = [0u8; 16];
    // SAFETY: PR_GET_NAME writes at most 16 bytes, NUL included, into `name`.
    let r = unsafe {
        raw(
            libc::SYS_prctl,
            [
                libc::PR_GET_NAME as c_long,
                name.as_mut_ptr() as c_long,
                0,
                0,
                0,
                0,
            ],
        )
    };
    if r != 0 {
        return spinguard_common::events::Comm::EMPTY;
    }
    spinguard_common::events::Comm::new(&name)
}

/// Whether this is a secure-execution process (setuid, setgid, file
/// capabilities): `getauxval(AT_SECURE)`, which is what glibc itself trusts.
pub(crate) fn secure() -> bool {
    // SAFETY: getauxval has no preconditions; 0 also means "not present".
    unsafe { libc::getauxval(libc::AT_SECURE) != 0 }
}

/// `rt_sigprocmask(how, set)` on the calling thread, through `real` (the
/// guarded path already holds it); the old mask, or None if the kernel
/// refused (it cannot for valid arguments), in which case nothing changed.
pub(crate) fn sigprocmask(real: RealSyscall, how: i32, set: u64) -> Option<u64> {
    let mut old = 0u64;
    // SAFETY: rt_sigprocmask(2) reads 8 bytes from `set` and writes 8 to
    // `old`, both live locals; it affects only the calling thread.
    let r = unsafe {
        real(
            libc::SYS_rt_sigprocmask,
            how as c_long,
            &set as *const u64 as c_long,
            &mut old as *mut u64 as c_long,
            KERNEL_SIGSET_SIZE,
            0,
            0,
        )
    };
    (r == 0).then_some(old)
}

/// `execve(path, argv, envp)` as the kernel does it (glibc's `execve` is this
/// one syscall); returns only on failure, with errno set.
///
/// # Safety
/// `path` NUL-terminated; `argv` and `envp` NULL-terminated arrays of
/// NUL-terminated strings, all live across the call.
pub(crate) unsafe fn execve(
    path: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
) -> i32 {
    raw(
        libc::SYS_execve,
        [path as c_long, argv as c_long, envp as c_long, 0, 0, 0],
    ) as i32
}

/// `execveat(dirfd, path, argv, envp, flags)`; returns only on failure.
///
/// # Safety
/// As [`execve`].
pub(crate) unsafe fn execveat(
    dirfd: i32,
    path: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    flags: i32,
) -> i32 {
    raw(
        libc::SYS_execveat,
        [
            dirfd as c_long,
            path as c_long,
            argv as c_long,
            envp as c_long,
            flags as c_long,
            0,
        ],
    ) as i32
}

/// `len` bytes of fresh zeroed private memory (anonymous mmap: what a vfork
/// child may use instead of malloc). None when the kernel has none.
pub(crate) fn map(len: usize) -> Option<*mut u8> {
    // SAFETY: an anonymous private mapping touches nothing of ours.
    let p = unsafe {
        raw(
            libc::SYS_mmap,
            [
                0,
                len as c_long,
                (libc::PROT_READ | libc::PROT_WRITE) as c_long,
                (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as c_long,
                -1,
                0,
            ],
        )
    };
    (p != -1 && p != 0).then_some(p as *mut u8)
}

/// Unmaps what [`map`] returned.
///
/// # Safety
/// `p` and `len` exactly as [`map`] gave and took them; nothing refers to
/// the memory any more.
pub(crate) unsafe fn unmap(p: *mut u8, len: usize) {
    raw(libc::SYS_munmap, [p as c_long, len as c_long, 0, 0, 0, 0]);
}

/// (device, inode) of the file `path` names, following symbolic links
/// (including /proc's magic ones).
pub(crate) fn file_id(path: &core::ffi::CStr) -> Option<(u64, u64)> {
    stat(path).map(|st| (st.st_dev, st.st_ino))
}

/// Whether `path` names a regular file (following links, as execve does).
pub(crate) fn is_regular(path: &core::ffi::CStr) -> bool {
    stat(path).is_some_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFREG)
}

fn stat(path: &core::ffi::CStr) -> Option<libc::stat> {
    // SAFETY: a zeroed `stat` is a valid out-parameter.
    let mut st: libc::stat = unsafe { core::mem::zeroed() };
    // SAFETY: newfstatat(2) reads `path` and writes one `struct stat`.
    let r = unsafe {
        raw(
            libc::SYS_newfstatat,
            [
                libc::AT_FDCWD as c_long,
                path.as_ptr() as c_long,
                &mut st as *mut libc::stat as c_long,
                0,
                0,
                0,
            ],
        )
    };
    (r == 0).then_some(st)
}

extern "C" {
    #[link_name = "environ"]
    static ENVIRON: *const *const libc::c_char;
}

/// libc's `environ` pointer as it is now (the program may have replaced
/// the array since the constructor: setenv, putenv, clearenv).
pub(crate) fn environ() -> *const *const libc::c_char {
    // SAFETY: reading the pointer, not the strings.
    unsafe { ENVIRON }
}

/// The value of environment variable `name`, read from `environ` directly:
/// one pass, no lock and no copy (std's `var_os` takes a lock, builds a C
/// string and copies the value, about a microsecond each; the constructor
/// reads half a dozen in every process). For the constructor only, before
/// the program can have changed its environment.
pub(crate) fn getenv(name: &str) -> Option<&'static [u8]> {
    let name = name.as_bytes();
    // SAFETY: `environ` is NULL or a NULL-terminated array of NUL-terminated
    // strings that lives as long as nobody changes the environment. Each
    // entry is read byte by byte only as far as it matches `name=` (the NUL
    // ends a shorter one), and measured only when it does.
    unsafe {
        let mut e = ENVIRON;
        if e.is_null() {
            return None;
        }
        while !(*e).is_null() {
            let p = (*e).cast::<u8>();
            let matches = name.iter().enumerate().all(|(i, &c)| *p.add(i) == c);
            if matches && *p.add(name.len()) == b'=' {
                let v = p.add(name.len() + 1).cast::<libc::c_char>();
                return Some(core::ffi::CStr::from_ptr(v).to_bytes());
            }
            e = e.add(1);
        }
    }
    None
}
