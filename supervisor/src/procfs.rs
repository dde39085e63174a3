//! The little the tracer reads from /proc.

use crate::ptrace::Tid;
use spinguard_common::SigSet;

/// Signals pending for thread `tid` (its own, `SigPnd`) and for its process
/// (`ShdPnd`), blocked or not. ptrace has no request for this; procfs reads
/// the same `task->pending` and `signal->shared_pending` sets. Empty when the
/// thread is gone.
pub fn pending_signals(tid: Tid) -> SigSet {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{tid}/status")) else {
        return SigSet::EMPTY;
    };
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
            .unwrap_or(0)
    };
    SigSet::from_bits(field("SigPnd:") | field("ShdPnd:"))
}

/// The thread ids of process `pid` (for attaching to every thread).
pub fn threads(pid: Tid) -> std::io::Result<Vec<Tid>> {
    let mut tids = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        if let Some(tid) = entry?.file_name().to_str().and_then(|s| s.parse().ok()) {
            tids.push(tid);
        }
    }
    tids.sort_unstable();
    Ok(tids)
}

/// The parent of process `pid` (the 4th field of /proc/PID/stat, read after
/// the command name, which may hold spaces and parentheses); None when it is
/// gone.
pub fn parent(pid: Tid) -> Option<Tid> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = stat.get(stat.rfind(')')? + 1..)?;
    after_name.split_whitespace().nth(1)?.parse().ok()
}

/// Whether `pid` descends from process `ancestor` (following parent links,
/// at most 64 of them: deeper trees are not what a supervisor starts).
pub fn descends_from(pid: Tid, ancestor: Tid) -> bool {
    let mut p = pid;
    for _ in 0..64 {
        if p <= 0 {
            return false;
        }
        match parent(p) {
            Some(pp) if pp == ancestor => return true,
            Some(pp) if pp != p => p = pp,
            _ => return false,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_our_own() {
        let me = std::process::id() as i32;
        assert!(super::threads(me).unwrap().contains(&me));
        // Nothing is pending for a thread that is reading its own status.
        assert!(super::pending_signals(me).is_empty());
    }

    #[test]
    fn ancestry() {
        let me = std::process::id() as i32;
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        assert_eq!(super::parent(pid), Some(me));
        assert!(super::descends_from(pid, me));
        assert!(!super::descends_from(me, pid));
        assert!(!super::descends_from(0, me));
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(super::parent(pid), None);
    }
}
