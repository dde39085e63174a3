//! The LD_PRELOAD shim: `LD_PRELOAD=libspinguard_shim.so ./loader`.
//!
//! It exports `syscall`. A `syscall(SYS_bpf, cmd, ..)` whose `cmd` the verifier
//! or the test runner cuts short on a pending signal (BPF_PROG_LOAD,
//! BPF_PROG_TEST_RUN) runs with the guard signals blocked on the calling
//! thread; everything else goes straight to libc's `syscall`.
//!
//! Modules, each using only those above it:
//! - [`real`]: libc's `syscall` behind our export, resolved once.
//! - [`sys`]: the raw calls the shim makes (through [`real`]).
//! - [`line`]: one stderr line, formatted on the stack.
//! - [`call`]: what one guarded call did.
//! - [`guard`]: blocking the guard set and restoring the exact old mask.
//! - [`config`]: `SPINGUARD_*`, read once in the constructor.
//! - [`stats`]: counters, and the exit summary.
//! - [`events`]: `SPINGUARD_EVENTS`, a datagram per guarded call and a summary.
//! - [`hook`]: the exported `syscall`.
//! - [`exec`]: the exec hooks (exec family, posix_spawn, system, popen).
//!
//! Life cycle: [`init`] (an `.init_array` entry) resolves the real `syscall` and
//! reads the configuration; [`fini`] (a `.fini_array` entry) prints the summary
//! and sends the `summary` event.
//! Neither may panic into or abort the host, so both run under `catch_unwind`.

// Unit tests build this crate without the `syscall` export and the
// constructors (a test binary must not interpose its own harness), which
// leaves the hook path unreferenced there: the integration tests cover it.
#![cfg_attr(test, allow(dead_code))]

mod call;
mod config;
mod events;
mod exec;
mod guard;
mod hook;
mod line;
mod real;
mod stats;
mod sys;

/// Runs when the dynamic loader initialises the shim, before the host's own
/// constructors and `main` (the shim's dependencies, libc, are initialised first).
#[cfg(not(test))]
#[used]
#[link_section = ".init_array"]
static INIT: extern "C" fn() = init;

/// Runs from `exit()` (via `_dl_fini`), not on `_exit()` or a fatal signal.
#[cfg(not(test))]
#[used]
#[link_section = ".fini_array"]
static FINI: extern "C" fn() = fini;

// glibc passes (argc, argv, envp) to `.init_array` entries; ignoring them is
// fine in the C ABI, where the caller owns the argument registers.
extern "C" fn init() {
    // A panic here would unwind into ld.so: catch it. The default panic hook
    // still prints the message, which is what we want a user to see.
    let _ = std::panic::catch_unwind(|| {
        real::resolve();
        if let Some(path) = config::load_from_environment() {
            if let Err(w) = events::init(&path) {
                line::say(format_args!("{w}"));
            }
        }
        // A secure-execution process is left alone: no exec is touched.
        if !sys::secure() {
            exec::state::capture();
        }
        // SAFETY: registers a handler that only stores to atomics.
        unsafe { libc::pthread_atfork(None, None, Some(events::after_fork)) };
    });
}

extern "C" fn fini() {
    let _ = std::panic::catch_unwind(|| {
        if config::summary_wanted(stats::counters().calls.total()) {
            stats::write_summary();
        }
        events::summary();
    });
}
