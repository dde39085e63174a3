//! Pieces the shim, the supervisor and the CLI share.
//!
//! Nothing here may allocate on a path the shim calls from inside a hooked
//! `syscall()`: [`bpf::is_guarded`] and [`signals::SigSet`]'s bit operations are
//! plain arithmetic; parsing and naming allocate and are for configuration and
//! reporting only.

pub mod bpf;
pub mod cli;
pub mod elf;
pub mod errno;
pub mod events;
pub mod mechanism;
pub mod signals;
pub mod sys;

pub use signals::{parse_signal_list, SigSet};

/// Environment variables the shim reads (and `spinguard run` sets for it).
pub mod env {
    /// Guard set, in the `--signals` syntax.
    pub const SIGNALS: &str = "SPINGUARD_SIGNALS";
    /// `guard` (default) or `observe` (count only, block nothing).
    pub const MODE: &str = "SPINGUARD_MODE";
    /// `summary` prints one line on stderr at exit.
    pub const LOG: &str = "SPINGUARD_LOG";
    /// Path of a Unix datagram socket to send events to.
    pub const EVENTS: &str = "SPINGUARD_EVENTS";
    /// Overrides where `spinguard shim-path` looks for the shim.
    pub const SHIM: &str = "SPINGUARD_SHIM";
}

/// The calling thread's id. glibc has a `gettid()` wrapper only since 2.30 and
/// the release build links against 2.17 (scripts/dist), so this is the raw
/// syscall. In the shim `libc::syscall` is the shim's own hook, whose first
/// step passes any non-bpf call straight through.
pub fn gettid() -> libc::pid_t {
    // SAFETY: gettid(2) takes no arguments and "is always successful".
    unsafe { libc::syscall(libc::SYS_gettid) as libc::pid_t }
}

/// File name of the shim library as cargo builds and `install` places it.
pub const SHIM_FILE_NAME: &str = "libspinguard_shim.so";
