//! What the ptrace path needs beyond Linux 4.18, and what it does without it.
//!
//! | feature | since | fallback |
//! | --- | --- | --- |
//! | `PTRACE_GET_SYSCALL_INFO` | 5.3 | the registers (`PTRACE_GETREGSET`), entry/exit told apart by our own bookkeeping, the ABI from the code segment and the instruction before the stop, `SECCOMP_RET_DATA` from `PTRACE_GETEVENTMSG` |
//! | `pidfd_open` / `pidfd_send_signal` | 5.3 | `kill()`, only while the child is not reaped (its pid cannot be reused before) |
//! | `SECCOMP_FILTER_FLAG_SPEC_ALLOW` | 4.17 | plain `prctl(PR_SET_SECCOMP)` (the mitigation it avoids does not exist there either) |
//! | `close_range` | 5.9 | the waker child keeps the fds it inherited (it holds no resource of ours but its pipe) |
//!
//! A missing feature is found out at its first use (`EIO`/`ENOSYS`/`EINVAL`
//! from the kernel) and the fallback used from then on. Tests force the
//! fallbacks on a new kernel with `SPINGUARD_FORCE_FALLBACK=syscall-info,pidfd`
//! (or `all`), read once per process.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

/// The environment variable that forces fallbacks (comma-separated names).
pub const FORCE_ENV: &str = spinguard_common::env::FORCE_FALLBACK;

/// One feature that has a fallback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Feature {
    /// PTRACE_GET_SYSCALL_INFO (Linux 5.3).
    SyscallInfo,
    /// pidfd_open + pidfd_send_signal (Linux 5.3).
    Pidfd,
}

impl Feature {
    pub const ALL: [Feature; 2] = [Feature::SyscallInfo, Feature::Pidfd];

    pub fn name(self) -> &'static str {
        match self {
            Feature::SyscallInfo => "syscall-info",
            Feature::Pidfd => "pidfd",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The features `SPINGUARD_FORCE_FALLBACK` names; an unknown name is reported
/// once on stderr through `log` and otherwise ignored.
pub fn parse_forced(value: &str) -> Result<[bool; 2], String> {
    let mut forced = [false; 2];
    for word in value.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        if word == "all" {
            forced = [true; 2];
            continue;
        }
        match Feature::ALL.iter().find(|f| f.name() == word) {
            Some(f) => forced[f.index()] = true,
            None => {
                return Err(format!(
                    "{FORCE_ENV}: unknown feature '{word}' (known: syscall-info, pidfd, all)"
                ))
            }
        }
    }
    Ok(forced)
}

/// `SPINGUARD_FORCE_FALLBACK` checked, for a command to refuse a bad value
/// (one line, exit 2) before it starts; the engine itself warns and ignores.
pub fn check_env() -> Result<(), String> {
    match spinguard_common::env::text(std::env::var_os(FORCE_ENV)) {
        Ok(None) => Ok(()),
        Ok(Some(v)) => parse_forced(&v).map(drop),
        Err(e) => Err(format!("{FORCE_ENV}: {e}")),
    }
}

fn forced() -> &'static [bool; 2] {
    static FORCED: OnceLock<[bool; 2]> = OnceLock::new();
    FORCED.get_or_init(|| {
        let Some(v) = std::env::var_os(FORCE_ENV) else {
            return [false; 2];
        };
        match parse_forced(&v.to_string_lossy()) {
            Ok(f) => {
                let names: Vec<&str> = Feature::ALL
                    .iter()
                    .filter(|x| f[x.index()])
                    .map(|x| x.name())
                    .collect();
                log::debug!("{FORCE_ENV}: using the fallback for {}", names.join(", "));
                f
            }
            Err(e) => {
                log::warn!("{e}");
                [false; 2]
            }
        }
    })
}

static MISSING: [AtomicBool; 2] = [AtomicBool::new(false), AtomicBool::new(false)];

/// Whether to use `feature` (not forced off, not found missing).
pub fn available(feature: Feature) -> bool {
    !forced()[feature.index()] && !MISSING[feature.index()].load(Ordering::Relaxed)
}

/// The kernel said it does not have `feature`: use the fallback from now on.
pub fn mark_missing(feature: Feature) {
    if !MISSING[feature.index()].swap(true, Ordering::Relaxed) {
        log::debug!(
            "this kernel lacks {}: using the fallback from now on",
            feature.name()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_variable() {
        assert_eq!(parse_forced(""), Ok([false, false]));
        assert_eq!(parse_forced("syscall-info"), Ok([true, false]));
        assert_eq!(parse_forced(" pidfd , syscall-info "), Ok([true, true]));
        assert_eq!(parse_forced("all"), Ok([true, true]));
        assert!(parse_forced("pidfd,nope").unwrap_err().contains("'nope'"));
    }
}
