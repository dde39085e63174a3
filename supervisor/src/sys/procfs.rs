//! What /proc says about a task. No unsafe here, but it is the same edge:
//! everything the engine knows about a thread that ptrace does not tell.

use super::Tid;
use spinguard_common::SigSet;

/// `/proc/<tid>/status`, the fields we use.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Status {
    pub name: String,
    pub tgid: Tid,
    pub ppid: Tid,
    /// The state letter: R, S, D, T, t, Z, X…
    pub state: char,
    pub tracer: Tid,
    /// Effective uid.
    pub uid: u32,
    pub kthread: bool,
    /// Pending for the thread (SigPnd) and its process (ShdPnd).
    pub pending: SigSet,
    pub shared_pending: SigSet,
    pub blocked: SigSet,
    /// Process-wide dispositions: SIG_IGN and caught.
    pub ignored: SigSet,
    pub caught: SigSet,
}

impl Status {
    pub fn parse(text: &str) -> Status {
        let field = |name: &str| {
            text.lines().find_map(|l| {
                l.strip_prefix(name)
                    .and_then(|r| r.strip_prefix(':'))
                    .map(str::trim)
            })
        };
        let num =
            |name: &str| -> Option<i64> { field(name)?.split_whitespace().next()?.parse().ok() };
        let set = |name: &str| {
            SigSet::from_bits(
                field(name)
                    .and_then(|h| u64::from_str_radix(h, 16).ok())
                    .unwrap_or(0),
            )
        };
        Status {
            name: field("Name").unwrap_or("?").to_string(),
            tgid: num("Tgid").unwrap_or(0) as Tid,
            ppid: num("PPid").unwrap_or(0) as Tid,
            state: field("State").and_then(|s| s.chars().next()).unwrap_or('?'),
            tracer: num("TracerPid").unwrap_or(0) as Tid,
            uid: field("Uid")
                .and_then(|v| v.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            kthread: field("Kthread") == Some("1"),
            pending: set("SigPnd"),
            shared_pending: set("ShdPnd"),
            blocked: set("SigBlk"),
            ignored: set("SigIgn"),
            caught: set("SigCgt"),
        }
    }

    /// A zombie or dead task.
    pub fn is_dead(&self) -> bool {
        matches!(self.state, 'Z' | 'X')
    }
}

/// `/proc/<tid>/status` (a thread id works: the kernel resolves it), or None
/// when the task is gone.
pub fn status(tid: Tid) -> Option<Status> {
    std::fs::read_to_string(format!("/proc/{tid}/status"))
        .ok()
        .map(|t| Status::parse(&t))
}

/// A thread of `pid`, read through the process's own task directory (a
/// thread id alone also finds threads of other processes).
pub fn thread_status(pid: Tid, tid: Tid) -> Option<Status> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status"))
        .ok()
        .map(|t| Status::parse(&t))
}

/// Signals pending for thread `tid` or its process, blocked or not. ptrace
/// has no request for this; procfs reads the same `task->pending` and
/// `signal->shared_pending` sets. Empty when the thread is gone.
pub fn pending_signals(tid: Tid) -> SigSet {
    status(tid).map_or(SigSet::EMPTY, |s| s.pending.union(s.shared_pending))
}

/// The state letter of thread `tid` of `pid` (R, S, D, T, t, Z…), from
/// /proc/PID/task/TID/stat (cheaper than `status`); None when it is gone.
pub fn thread_state(pid: Tid, tid: Tid) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
    stat.get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .next()?
        .chars()
        .next()
}

/// The thread ids of process `pid`.
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

/// The short name of a process (`comm`), or "?" when it is gone.
pub fn process_name(pid: Tid) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
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

/// Our own effective capabilities (CapEff).
pub fn own_capabilities() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// kernel.yama.ptrace_scope, if Yama is there.
/// True when we run in the initial PID namespace: /proc/self/ns/pid is
/// inode `PROC_PID_INIT_INO` (include/linux/proc_ns.h, 0xEFFFFFFC) there.
pub fn in_initial_pid_namespace() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self/ns/pid").is_ok_and(|m| m.ino() == 0xEFFF_FFFC)
}

pub fn yama_ptrace_scope() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope")
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_own() {
        let me = std::process::id() as i32;
        assert!(threads(me).unwrap().contains(&me));
        // Nothing is pending for a thread that is reading its own status.
        assert!(pending_signals(me).is_empty());
        let s = status(spinguard_common::gettid()).unwrap();
        assert_eq!((s.tgid, s.state), (me, 'R'), "this thread is running");
    }

    #[test]
    fn ancestry() {
        let me = std::process::id() as i32;
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        assert_eq!(parent(pid), Some(me));
        assert!(descends_from(pid, me));
        assert!(!descends_from(me, pid));
        assert!(!descends_from(0, me));
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(parent(pid), None);
    }

    #[test]
    fn parses_masks() {
        let s = Status::parse(
            "Name:\tx\nState:\tS (sleeping)\nTgid:\t7\nSigIgn:\t0000000000001000\nSigCgt:\t0000000180000000\n",
        );
        assert_eq!((s.name.as_str(), s.state, s.tgid), ("x", 'S', 7));
        assert!(s.ignored.contains(libc::SIGPIPE) && s.caught.contains(32));
    }
}
