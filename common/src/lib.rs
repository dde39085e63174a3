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
    /// Comma-separated: `summary` prints one line on stderr at exit; `exec`
    /// one line per exec, saying which mechanism guards which program.
    pub const LOG: &str = "SPINGUARD_LOG";
    /// Path of a Unix datagram socket to send events to.
    pub const EVENTS: &str = "SPINGUARD_EVENTS";
    /// Overrides where `spinguard shim-path` looks for the shim.
    pub const SHIM: &str = "SPINGUARD_SHIM";
    /// The spinguard binary the shim hands a static or Go program to (`run`
    /// sets it; otherwise the shim looks next to itself).
    pub const BIN: &str = "SPINGUARD_BIN";
    /// Kernel features the ptrace engine must do without, as on Linux 4.18:
    /// `syscall-info`, `pidfd` or `all`, comma-separated (for tests).
    pub const FORCE_FALLBACK: &str = "SPINGUARD_FORCE_FALLBACK";
    /// `1`: `watch` and `diagnose` act as on a kernel without
    /// `bpf_get_ns_current_pid_tgid` (before 5.7) in a PID namespace of their
    /// own, i.e. refuse (for tests).
    pub const PROBE_NO_NS_PIDS: &str = "SPINGUARD_PROBE_NO_NS_PIDS";
    /// What the shim keeps in the environment of every program it starts,
    /// when the program it runs in dropped them (`env -i`, say).
    pub const CARRIED: [&str; 5] = [SIGNALS, MODE, LOG, EVENTS, BIN];

    use std::ffi::OsString;
    use std::fmt;

    /// A variable's value that is not UTF-8: a bad value like any other, never
    /// quietly the default.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct NotUtf8(pub OsString);

    impl fmt::Display for NotUtf8 {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "{:?} is not valid UTF-8", self.0)
        }
    }

    impl std::error::Error for NotUtf8 {}

    /// How every spinguard variable is read, by the CLI and the shim alike:
    /// unset and empty are the same, `None` (`VAR=` in a unit file or a pod
    /// spec turns a variable off); anything else is the value, to be parsed
    /// and refused like a bad flag when it is not one. `value` is what
    /// `std::env::var_os` gave.
    pub fn text(value: Option<OsString>) -> Result<Option<String>, NotUtf8> {
        match value {
            None => Ok(None),
            Some(v) if v.is_empty() => Ok(None),
            Some(v) => v.into_string().map(Some).map_err(NotUtf8),
        }
    }

    /// A path variable (SPINGUARD_EVENTS, SPINGUARD_SHIM): unset and empty are
    /// the same; any other bytes are a path.
    pub fn path(value: Option<OsString>) -> Option<std::path::PathBuf> {
        value.filter(|v| !v.is_empty()).map(Into::into)
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use std::os::unix::ffi::OsStringExt;

        #[test]
        fn empty_is_unset_and_bytes_are_an_error() {
            assert_eq!(text(None), Ok(None));
            assert_eq!(text(Some("".into())), Ok(None));
            assert_eq!(text(Some(" PROF".into())), Ok(Some(" PROF".into())));
            let bad = OsString::from_vec(b"PROF\xff".to_vec());
            let e = text(Some(bad.clone())).unwrap_err();
            assert_eq!(e, NotUtf8(bad.clone()));
            assert_eq!(e.to_string(), "\"PROF\\xFF\" is not valid UTF-8");
            assert_eq!(path(Some("".into())), None);
            assert_eq!(path(Some(bad.clone())), Some(bad.into()));
        }
    }
}

/// The calling thread's id. glibc has a `gettid()` wrapper only since 2.30 and
/// the release build links against 2.17 (scripts/dist), so this is the raw
/// syscall. In the shim `libc::syscall` is the shim's own hook, whose first
/// step passes any non-bpf call straight through.
pub fn gettid() -> libc::pid_t {
    // SAFETY: gettid(2) takes no arguments and "is always successful".
    unsafe { libc::syscall(libc::SYS_gettid) as libc::pid_t }
}

/// The file name of the spinguard binary.
pub const BIN_FILE_NAME: &str = "spinguard";

/// File name of the shim library as cargo builds and `install` places it.
pub const SHIM_FILE_NAME: &str = "libspinguard_shim.so";
