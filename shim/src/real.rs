//! libc's own `syscall`, the one behind our export.
//!
//! Resolved once, in the constructor, with `dlsym(RTLD_NEXT)` and kept in an
//! atomic, so the hot path is a load and an indirect call with no lazy-init
//! lock and no panic when `dlsym` fails. Every raw call the shim makes goes
//! through it (see [`crate::sys`]), never through `libc::syscall`: inside this
//! library that name binds to our own export, or to a definition the program
//! made itself.

use std::sync::atomic::{AtomicUsize, Ordering};

use libc::c_long;

/// glibc's `long syscall(long number, ...)`, called as a fixed seven-`long`
/// function. On x86_64 the variadic convention differs only in `%al` (the
/// number of vector registers used), which glibc's assembly `syscall` never
/// reads; on aarch64 Linux the two conventions are identical. Calling it as
/// fixed lets the compiler turn the pass-through into a tail jump (it will not
/// tail-call a variadic function with a stack argument), so libc returns
/// straight to our caller: one `ret` fewer, and a `ret` right after a syscall
/// is a likely mispredict on kernels that refill the return stack on exit.
pub(crate) type RealSyscall =
    unsafe extern "C" fn(c_long, c_long, c_long, c_long, c_long, c_long, c_long) -> c_long;

/// The next `syscall` in lookup order (libc's), as an address; 0 = not yet known.
static REAL: AtomicUsize = AtomicUsize::new(0);

/// Looks up libc's `syscall` once. Called from the constructor; also, as a
/// fallback, from the first call that needs it if something (another preloaded
/// library's constructor) calls in before ours has run.
pub(crate) fn resolve() -> Option<RealSyscall> {
    // SAFETY: dlsym with a NUL-terminated name. RTLD_NEXT searches only the
    // objects after this one, so the result is never our own export. (Do not
    // compare with `syscall as usize`: that address goes through our GOT and
    // is libc's own when the shim is dlopen()ed rather than preloaded.)
    let addr = unsafe { libc::dlsym(libc::RTLD_NEXT, c"syscall".as_ptr()) } as usize;
    if addr == 0 {
        return None;
    }
    REAL.store(addr, Ordering::Release);
    // SAFETY: a non-null address dlsym gave for "syscall" is libc's function.
    Some(unsafe { std::mem::transmute::<usize, RealSyscall>(addr) })
}

/// The resolved address, 0 until [`resolve`] succeeded: one atomic load, for
/// the pass-through.
#[inline(always)]
pub(crate) fn address() -> usize {
    REAL.load(Ordering::Acquire)
}

/// libc's `syscall` from a non-zero [`address`].
///
/// # Safety
/// `addr` must come from [`address`] (only [`resolve`] stores it).
#[inline(always)]
pub(crate) unsafe fn from_address(addr: usize) -> RealSyscall {
    std::mem::transmute::<usize, RealSyscall>(addr)
}

/// libc's `syscall`, resolving it now if the constructor has not run yet.
pub(crate) fn get() -> Option<RealSyscall> {
    match address() {
        // SAFETY: from `address`.
        0 => resolve(),
        addr => Some(unsafe { from_address(addr) }),
    }
}

/// The next definition of a libc function the shim interposes (besides
/// `syscall`): looked up with `dlsym(RTLD_NEXT)` on first use and kept.
/// Only for hooks that never run where dlsym is unsafe (posix_spawn, system,
/// popen run in an ordinary context; the exec family needs none: it is the
/// kernel call itself).
pub(crate) struct Next {
    name: &'static core::ffi::CStr,
    addr: AtomicUsize,
}

impl Next {
    pub const fn new(name: &'static core::ffi::CStr) -> Next {
        Next {
            name,
            addr: AtomicUsize::new(0),
        }
    }

    /// The address, or None when no later object defines the name.
    pub fn get(&self) -> Option<usize> {
        match self.addr.load(Ordering::Acquire) {
            0 => {
                // SAFETY: dlsym with a NUL-terminated name; RTLD_NEXT never
                // finds our own definition.
                let a = unsafe { libc::dlsym(libc::RTLD_NEXT, self.name.as_ptr()) } as usize;
                if a != 0 {
                    self.addr.store(a, Ordering::Release);
                }
                (a != 0).then_some(a)
            }
            a => Some(a),
        }
    }
}
