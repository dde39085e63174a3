//! The exported `syscall()` and the real one behind it.
//!
//! Our own hook layer (no redhook): we need one symbol, resolved once in the
//! constructor and held in an atomic, so the hot path is a load and an indirect
//! call, with no lazy-init lock and no panic when `dlsym` fails.

use std::sync::atomic::{AtomicUsize, Ordering};

use libc::c_long;
use spinguard_common::bpf;
use spinguard_common::events::pending_in;
use spinguard_common::SigSet;

use crate::{config, events, guard, stats};

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
/// fallback, from the first hooked call if something (another preloaded
/// library's constructor) calls `syscall()` before ours has run.
pub(crate) fn resolve_real() -> Option<RealSyscall> {
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

/// The interposed `syscall`. glibc declares it variadic; on x86_64 and aarch64
/// Linux a variadic callee reads integer arguments from the same registers as a
/// fixed one, and glibc's own `syscall` always forwards all six, so declaring
/// seven `long`s reads exactly what the caller passed (and harmless garbage for
/// arguments it did not pass, which the kernel ignores just as it does for glibc).
///
/// Everything but a guarded bpf command is passed through as the first thing:
/// Rust std's futex code inside this very library calls `syscall` and lands
/// here, and signal handlers call it too, so this path allocates nothing, takes
/// no lock, touches no TLS and cannot panic.
///
/// # Safety
/// Same contract as libc's `syscall()`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn syscall(
    n: c_long,
    a1: c_long,
    a2: c_long,
    a3: c_long,
    a4: c_long,
    a5: c_long,
    a6: c_long,
) -> c_long {
    // The whole fast path: one atomic load, two compares, and a tail jump into
    // libc with the arguments still where the caller put them.
    let addr = REAL.load(Ordering::Acquire);
    // bpf(2) takes `int cmd`: the kernel looks at the low 32 bits only.
    if addr != 0 && (n != libc::SYS_bpf || !bpf::is_guarded(a1 as u32)) {
        // SAFETY: only resolve_real stores, and only libc's `syscall` address.
        let real = std::mem::transmute::<usize, RealSyscall>(addr);
        return real(n, a1, a2, a3, a4, a5, a6);
    }
    slow_path(n, [a1, a2, a3, a4, a5, a6])
}

/// A guarded command, or a call that came before the constructor resolved
/// libc's `syscall`. Kept out of line so the pass-through needs no stack frame.
#[cold]
#[inline(never)]
unsafe fn slow_path(n: c_long, a: [c_long; 6]) -> c_long {
    let real = match REAL.load(Ordering::Acquire) {
        // SAFETY: as above.
        addr if addr != 0 => std::mem::transmute::<usize, RealSyscall>(addr),
        _ => match resolve_real() {
            Some(real) => real,
            None => {
                *libc::__errno_location() = libc::ENOSYS;
                return -1;
            }
        },
    };
    if n != libc::SYS_bpf || !bpf::is_guarded(a[0] as u32) {
        return real(n, a[0], a[1], a[2], a[3], a[4], a[5]);
    }
    guarded_call(real, a[0] as u32, a)
}

/// What one guarded call did: handed to the counters and, with
/// `SPINGUARD_EVENTS`, sent as a `prog_load` event.
#[derive(Clone, Copy, Debug)]
pub(crate) struct GuardedCall {
    pub cmd: u32,
    /// The kernel's return value (-1 on failure, as libc reports it).
    pub ret: c_long,
    /// errno when `ret == -1`, else 0.
    pub errno: i32,
    /// Monotonic nanoseconds from before the mask change to after the restore.
    pub ns: u64,
    /// Guard signals pending when the guard came down that the thread had not
    /// blocked itself: what this call held back. Only looked at (one
    /// sigpending(2)) when events are on; empty otherwise.
    pub held_back: SigSet,
}

unsafe fn guarded_call(real: RealSyscall, cmd: u32, a: [c_long; 6]) -> c_long {
    let cfg = config::current();
    let start = stats::now_ns();
    let saved = if cfg.blocks() {
        guard::block(real, cfg.guard)
    } else {
        None
    };
    let ret = real(libc::SYS_bpf, a[0], a[1], a[2], a[3], a[4], a[5]);
    // Save errno before anything else can touch it; restore it last.
    let errno = *libc::__errno_location();
    // With the guard still up: what it is holding back. A guard signal the
    // thread had blocked itself would be pending with or without us.
    let held_back = match &saved {
        Some(saved) if events::enabled() => {
            pending_in(cfg.guard).difference(SigSet::from_bits(saved.bits()))
        }
        _ => SigSet::EMPTY,
    };
    if let Some(saved) = saved {
        saved.restore(real);
    }
    let call = GuardedCall {
        cmd,
        ret,
        errno: if ret == -1 { errno } else { 0 },
        ns: stats::now_ns().saturating_sub(start),
        held_back,
    };
    stats::record(&call);
    // After the restore, so a slow or full socket never lengthens the time
    // the guard signals are held back; a failed send sets errno, hence last.
    events::prog_load(&call);
    *libc::__errno_location() = errno;
    ret
}
