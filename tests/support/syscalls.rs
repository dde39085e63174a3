//! Counts, host-wide with bpftrace, the two calls the ptrace path replaces
//! below Linux 5.3 (ptrace(PTRACE_GET_SYSCALL_INFO) and pidfd_open), per
//! process: how a test tells that a forced fallback really ran. Counts are
//! keyed by host pid (tgid); [`host_pids_running`] finds the pids of a
//! binary that runs in another PID namespace.

use super::bpftrace::{totals, Bpftrace};
use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// PTRACE_GET_SYSCALL_INFO (linux/ptrace.h).
const PTRACE_GET_SYSCALL_INFO: u32 = 0x420e;

/// Calls made by a set of processes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub syscall_info: u64,
    pub pidfd_open: u64,
}

/// Starts counting (returns once bpftrace is attached).
pub fn count_fallback_calls() -> Bpftrace {
    Bpftrace::start(&format!(
        "t:syscalls:sys_enter_ptrace /args->request == {PTRACE_GET_SYSCALL_INFO}/ \
         {{ @info[pid] = count(); }} \
         t:syscalls:sys_enter_pidfd_open {{ @pidfd[pid] = count(); }} \
         interval:ms:200 {{ printf(\"tick %lld\\n\", nsecs); print(@info); print(@pidfd); }}"
    ))
}

/// What `pids` called, from a finished count's output.
pub fn calls_of(lines: &[String], pids: &HashSet<i32>) -> Counts {
    let sum = |name: &str| {
        totals(lines, name)
            .iter()
            .filter(|(pid, _)| pids.contains(&(**pid as i32)))
            .map(|(_, n)| n)
            .sum()
    };
    Counts {
        syscall_info: sum("info"),
        pidfd_open: sum("pidfd"),
    }
}

/// The host pids of the processes running `exe` now (found by the file's
/// device and inode, which hold in any mount namespace).
pub fn host_pids_running(exe: &Path) -> HashSet<i32> {
    let Ok(want) = std::fs::metadata(exe) else {
        return HashSet::new();
    };
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return HashSet::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::metadata(format!("/proc/{pid}/exe"))
                .is_ok_and(|m| m.dev() == want.dev() && m.ino() == want.ino())
        })
        .collect()
}
