//! `spinguard run`'s own work, beside the engine (supervisor crate): the
//! environment preload mode gives the program, the timers it must not pass
//! on, and ending as the program ended.

pub mod preload;
mod sys;
pub mod timers;

/// Ends this process as the program ended when it died of signal `sig`
/// (`--raise-signal`: the shim hands a program to `run` in the middle of
/// someone's exec, and that caller must see the program's own status).
/// Returns when the signal cannot end us (PID 1 of a namespace): the caller
/// then exits 128+`sig`.
pub fn die_of(sig: i32) {
    sys::die_of(sig)
}

/// Whether this process is PID 1 of its PID namespace (a container's init).
pub fn is_pid1() -> bool {
    sys::getpid() == 1
}
