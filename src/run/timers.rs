//! Interval timers armed inside spinguard's own process are not passed on.
//!
//! setitimer(2) timers survive execve (and no other kind does: POSIX timers
//! are deleted, and fork never copies either). So when spinguard execs the
//! program, a timer a library inside spinguard armed (a profiler preloaded
//! into it: `LD_PRELOAD=$PROFILER spinguard run -- prog`) would keep firing
//! into the program, whose own handler is not installed yet: SIGALRM's
//! default action kills it (exit 142). The program must start as it would
//! under `spinguard run -- env LD_PRELOAD=$PROFILER prog`.
//!
//! Which timers are "ours": a library that arms a timer installs a handler
//! for its signal first. A timer armed before spinguard was exec'd (`alarm(5);
//! exec spinguard run ...`, a time limit on the command) arrives with the
//! signal at its default disposition (exec resets handlers): that one is
//! the caller's, and is the program's: an exec keeps it; where spinguard
//! forks the program instead (ptrace mode, staying as the parent), fork does
//! not copy it, so it is taken off spinguard and armed in the child just
//! before its exec ([`take_callers`]).

use super::sys;

/// Disarms each interval timer whose signal has a handler in this process.
/// Returns the names of the timers disarmed (for `-v`).
pub fn disarm_our_own() -> Vec<&'static str> {
    let mut disarmed = Vec::new();
    for (which, sig, name) in sys::ITIMERS {
        if sys::itimer_armed(which) && sys::has_handler(sig) && sys::disarm_itimer(which).is_ok() {
            disarmed.push(name);
        }
    }
    disarmed
}

/// The caller's interval timers (armed, their signal at its default
/// disposition), disarmed here and returned for the program to arm as it
/// starts, with the time they had left.
pub fn take_callers() -> Vec<(libc::c_int, libc::itimerval, &'static str)> {
    let mut taken = Vec::new();
    for (which, sig, name) in sys::ITIMERS {
        if sys::has_handler(sig) {
            continue;
        }
        if let Some(v) = sys::itimer(which) {
            if sys::disarm_itimer(which).is_ok() {
                taken.push((which, v, name));
            }
        }
    }
    taken
}

#[cfg(test)]
mod tests {
    use super::*;

    extern "C" fn on_prof(_: libc::c_int) {}

    #[test]
    fn a_timer_with_a_handler_is_ours_one_without_is_the_callers() {
        // ITIMER_VIRTUAL here only: the test harness may have others.
        let armed = libc::itimerval {
            it_interval: libc::timeval {
                tv_sec: 100,
                tv_usec: 0,
            },
            it_value: libc::timeval {
                tv_sec: 100,
                tv_usec: 0,
            },
        };
        // SAFETY: arming a far-off timer and installing a no-op handler on
        // this test process; both undone below.
        unsafe {
            libc::setitimer(libc::ITIMER_VIRTUAL, &armed, std::ptr::null_mut());
        }
        assert!(!disarm_our_own().contains(&"ITIMER_VIRTUAL"));
        assert!(
            sys::itimer_armed(libc::ITIMER_VIRTUAL),
            "the caller's timer was kept"
        );
        // SAFETY: as above.
        unsafe {
            libc::signal(libc::SIGVTALRM, on_prof as *const () as libc::sighandler_t);
        }
        assert!(
            take_callers().is_empty(),
            "a timer with a handler is not the caller's"
        );
        assert!(disarm_our_own().contains(&"ITIMER_VIRTUAL"));
        assert!(!sys::itimer_armed(libc::ITIMER_VIRTUAL));
        // SAFETY: restoring the default.
        unsafe {
            libc::signal(libc::SIGVTALRM, libc::SIG_DFL);
        }
    }
}
