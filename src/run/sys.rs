//! The raw calls `run` makes itself (the engine's are in the supervisor
//! crate), behind safe wrappers: the one place in `run` with `unsafe`.

use std::io;

/// The three interval timers, each with the signal it sends (setitimer(2)).
pub const ITIMERS: [(libc::c_int, libc::c_int, &str); 3] = [
    (libc::ITIMER_REAL, libc::SIGALRM, "ITIMER_REAL"),
    (libc::ITIMER_VIRTUAL, libc::SIGVTALRM, "ITIMER_VIRTUAL"),
    (libc::ITIMER_PROF, libc::SIGPROF, "ITIMER_PROF"),
];

/// Interval timer `which`, when it is armed.
pub fn itimer(which: libc::c_int) -> Option<libc::itimerval> {
    // SAFETY: a zeroed itimerval is a valid out-parameter.
    let mut v: libc::itimerval = unsafe { std::mem::zeroed() };
    // SAFETY: getitimer writes one itimerval.
    let r = unsafe { libc::getitimer(which, &mut v) };
    (r == 0 && (v.it_value.tv_sec != 0 || v.it_value.tv_usec != 0)).then_some(v)
}

/// Whether interval timer `which` is armed.
pub fn itimer_armed(which: libc::c_int) -> bool {
    itimer(which).is_some()
}

/// Stops interval timer `which`.
pub fn disarm_itimer(which: libc::c_int) -> io::Result<()> {
    // SAFETY: a zeroed itimerval disarms; the old value is not asked for.
    let zero: libc::itimerval = unsafe { std::mem::zeroed() };
    // SAFETY: setitimer reads one itimerval.
    if unsafe { libc::setitimer(which, &zero, std::ptr::null_mut()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether `sig` has a handler installed in this process (not SIG_DFL or
/// SIG_IGN): someone in here is counting on receiving it.
pub fn has_handler(sig: libc::c_int) -> bool {
    // SAFETY: a zeroed sigaction is a valid out-parameter; a null new action
    // only queries.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let r = unsafe { libc::sigaction(sig, std::ptr::null(), &mut old) };
    r == 0 && old.sa_sigaction != libc::SIG_DFL && old.sa_sigaction != libc::SIG_IGN
}

/// Ends this process by signal `sig`, as the program ended: default action,
/// unblocked, no core file of our own (the program's is what matters).
/// Returns only if `sig` does not end us (PID 1 of a namespace ignores a
/// signal it has no handler for, even from itself).
pub fn die_of(sig: libc::c_int) {
    // SAFETY: plain calls on our own process; the rlimit struct is local.
    unsafe {
        let no_core = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::setrlimit(libc::RLIMIT_CORE, &no_core);
        libc::signal(sig, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::raise(sig);
    }
}

/// This process's pid.
pub fn getpid() -> i32 {
    // SAFETY: no arguments.
    unsafe { libc::getpid() }
}
