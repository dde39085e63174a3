//! The exported `syscall()`: the pass-through, and the guarded call.
//!
//! Our own hook layer (no redhook): one symbol, libc's behind it resolved once
//! (see [`crate::real`]), so the hot path is a load and an indirect call.

use libc::c_long;
use spinguard_common::bpf;
use spinguard_common::events::pending_in;
use spinguard_common::SigSet;

use crate::call::GuardedCall;
use crate::real::{self, RealSyscall};
use crate::{config, events, guard, stats, sys};

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
    let addr = real::address();
    // bpf(2) takes `int cmd`: the kernel looks at the low 32 bits only.
    if addr != 0 && (n != libc::SYS_bpf || !bpf::is_guarded(a1 as u32)) {
        // SAFETY: from real::address, non-zero.
        let real = real::from_address(addr);
        return real(n, a1, a2, a3, a4, a5, a6);
    }
    slow_path(n, [a1, a2, a3, a4, a5, a6])
}

/// A guarded command, or a call that came before the constructor resolved
/// libc's `syscall`. Kept out of line so the pass-through needs no stack frame.
#[cold]
#[inline(never)]
unsafe fn slow_path(n: c_long, a: [c_long; 6]) -> c_long {
    let Some(real) = real::get() else {
        sys::set_errno(libc::ENOSYS);
        return -1;
    };
    if n != libc::SYS_bpf || !bpf::is_guarded(a[0] as u32) {
        return real(n, a[0], a[1], a[2], a[3], a[4], a[5]);
    }
    guarded_call(real, a[0] as u32, a)
}

unsafe fn guarded_call(real: RealSyscall, cmd: u32, a: [c_long; 6]) -> c_long {
    let cfg = config::current();
    let start = sys::now_ns();
    let saved = if cfg.blocks() {
        guard::block(real, cfg.guard)
    } else {
        None
    };
    let ret = real(libc::SYS_bpf, a[0], a[1], a[2], a[3], a[4], a[5]);
    // Save errno before anything else can touch it; restore it last.
    let errno = sys::errno();
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
        ns: sys::now_ns().saturating_sub(start),
        held_back,
    };
    stats::record(&call);
    // After the restore, so a slow or full socket never lengthens the time
    // the guard signals are held back; a failed send sets errno, hence last.
    events::prog_load(&call);
    sys::set_errno(errno);
    ret
}
