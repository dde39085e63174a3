//! bpf(2) command numbers and which of them spinguard guards.

/// `BPF_PROG_LOAD`: the verifier runs inside it and gives up with EAGAIN when
/// `signal_pending(current)` (kernel/bpf/verifier.c, `do_check()`).
pub const BPF_PROG_LOAD: u32 = 5;
/// `BPF_PROG_TEST_RUN`: returns EINTR when a signal is pending between repetitions.
pub const BPF_PROG_TEST_RUN: u32 = 10;
pub const BPF_MAP_CREATE: u32 = 0;
pub const BPF_MAP_LOOKUP_ELEM: u32 = 1;
pub const BPF_MAP_UPDATE_ELEM: u32 = 2;
pub const BPF_MAP_DELETE_ELEM: u32 = 3;
pub const BPF_MAP_GET_NEXT_KEY: u32 = 4;

/// `BPF_OBJ_NAME_LEN`: map and program names, NUL included.
pub const BPF_OBJ_NAME_LEN: usize = 16;

/// The leading fields of `union bpf_attr` for BPF_PROG_LOAD, up to the
/// program's name (Linux 4.15). The kernel takes an attr shorter than its own
/// and treats the rest as zero ("bpf_check_uarg_tail_zero", kernel/bpf/
/// syscall.c), so this one layout serves every kernel spinguard supports.
/// Used by the probe (watch, diagnose) and the demo's loader.
#[repr(C)]
#[derive(Default, Clone, Copy, Debug)]
pub struct ProgLoadAttr {
    pub prog_type: u32,
    pub insn_cnt: u32,
    pub insns: u64,
    pub license: u64,
    pub log_level: u32,
    pub log_size: u32,
    pub log_buf: u64,
    pub kern_version: u32,
    pub prog_flags: u32,
    pub prog_name: [u8; BPF_OBJ_NAME_LEN],
}

/// How many commands are guarded. Everything sized by the guarded list uses
/// this (or [`CommandCounts`]), never a literal: a third command then changes
/// every counter, the filter and the events at once.
pub const GUARDED_COUNT: usize = 2;

/// The commands whose duration a pending signal cuts short: the one list the
/// shim's hook, the supervisor's seccomp filter and guard policy, and every
/// counter and event are built from.
pub const GUARDED_COMMANDS: [u32; GUARDED_COUNT] = [BPF_PROG_LOAD, BPF_PROG_TEST_RUN];

/// Where `cmd` sits in [`GUARDED_COMMANDS`], if it is guarded. `const` and
/// branch-only (the loop is unrolled): the shim calls it on every
/// `syscall(SYS_bpf, ..)`.
#[inline(always)]
pub const fn guarded_index(cmd: u32) -> Option<usize> {
    let mut i = 0;
    while i < GUARDED_COUNT {
        if GUARDED_COMMANDS[i] == cmd {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// True for the commands spinguard blocks the guard set around.
#[inline(always)]
pub const fn is_guarded(cmd: u32) -> bool {
    guarded_index(cmd).is_some()
}

/// Whether a guarded command failing with `errno` means a signal cut it short:
/// the verifier returns EAGAIN when `signal_pending(current)`
/// (kernel/bpf/verifier.c, `do_check()`), BPF_PROG_TEST_RUN returns EINTR
/// between repetitions (`bpf_test_timer_continue()`). Neither is a restart
/// code, so SA_RESTART does nothing for them.
#[inline(always)]
pub const fn is_signal_failure(errno: i32) -> bool {
    errno == libc::EAGAIN || errno == libc::EINTR
}

/// [`is_signal_failure`] for a raw syscall return value (`-errno` on error),
/// as ptrace shows it.
#[inline(always)]
pub const fn is_signal_failure_ret(ret: i64) -> bool {
    ret < 0 && ret >= -4095 && is_signal_failure(-ret as i32)
}

/// A count per guarded command, keyed by [`GUARDED_COMMANDS`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommandCounts([u64; GUARDED_COUNT]);

impl CommandCounts {
    pub const ZERO: CommandCounts = CommandCounts([0; GUARDED_COUNT]);

    /// Counts in [`GUARDED_COMMANDS`] order (a snapshot of per-command atomics).
    pub const fn from_array(counts: [u64; GUARDED_COUNT]) -> CommandCounts {
        CommandCounts(counts)
    }

    /// Adds `n` calls of `cmd`; false (and nothing counted) for a command
    /// that is not guarded.
    pub fn add(&mut self, cmd: u32, n: u64) -> bool {
        match guarded_index(cmd).and_then(|i| self.0.get_mut(i)) {
            Some(c) => {
                *c += n;
                true
            }
            None => false,
        }
    }

    pub fn get(&self, cmd: u32) -> u64 {
        guarded_index(cmd)
            .and_then(|i| self.0.get(i))
            .copied()
            .unwrap_or(0)
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// `(command, count)` for every guarded command, in list order: what the
    /// `summary` event's `calls` object is written from.
    pub fn pairs(&self) -> [(u32, u64); GUARDED_COUNT] {
        let mut out = [(0, 0); GUARDED_COUNT];
        for (o, (&cmd, &n)) in out.iter_mut().zip(GUARDED_COMMANDS.iter().zip(&self.0)) {
            *o = (cmd, n);
        }
        out
    }
}

/// The uapi name of a bpf command (include/uapi/linux/bpf.h, `enum bpf_cmd`).
pub fn command_name(cmd: u32) -> &'static str {
    const NAMES: [&str; 37] = [
        "BPF_MAP_CREATE",
        "BPF_MAP_LOOKUP_ELEM",
        "BPF_MAP_UPDATE_ELEM",
        "BPF_MAP_DELETE_ELEM",
        "BPF_MAP_GET_NEXT_KEY",
        "BPF_PROG_LOAD",
        "BPF_OBJ_PIN",
        "BPF_OBJ_GET",
        "BPF_PROG_ATTACH",
        "BPF_PROG_DETACH",
        "BPF_PROG_TEST_RUN",
        "BPF_PROG_GET_NEXT_ID",
        "BPF_MAP_GET_NEXT_ID",
        "BPF_PROG_GET_FD_BY_ID",
        "BPF_MAP_GET_FD_BY_ID",
        "BPF_OBJ_GET_INFO_BY_FD",
        "BPF_PROG_QUERY",
        "BPF_RAW_TRACEPOINT_OPEN",
        "BPF_BTF_LOAD",
        "BPF_BTF_GET_FD_BY_ID",
        "BPF_TASK_FD_QUERY",
        "BPF_MAP_LOOKUP_AND_DELETE_ELEM",
        "BPF_MAP_FREEZE",
        "BPF_BTF_GET_NEXT_ID",
        "BPF_MAP_LOOKUP_BATCH",
        "BPF_MAP_LOOKUP_AND_DELETE_BATCH",
        "BPF_MAP_UPDATE_BATCH",
        "BPF_MAP_DELETE_BATCH",
        "BPF_LINK_CREATE",
        "BPF_LINK_UPDATE",
        "BPF_LINK_GET_FD_BY_ID",
        "BPF_LINK_GET_NEXT_ID",
        "BPF_ENABLE_STATS",
        "BPF_ITER_CREATE",
        "BPF_LINK_DETACH",
        "BPF_PROG_BIND_MAP",
        "BPF_TOKEN_CREATE",
    ];
    NAMES.get(cmd as usize).copied().unwrap_or("BPF_UNKNOWN")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_numbers() {
        assert_eq!(command_name(BPF_PROG_LOAD), "BPF_PROG_LOAD");
        assert_eq!(command_name(BPF_PROG_TEST_RUN), "BPF_PROG_TEST_RUN");
        assert_eq!(command_name(BPF_MAP_LOOKUP_ELEM), "BPF_MAP_LOOKUP_ELEM");
        assert_eq!(command_name(999), "BPF_UNKNOWN");
        assert!(GUARDED_COMMANDS.iter().all(|&c| is_guarded(c)));
        assert!(!is_guarded(BPF_MAP_LOOKUP_ELEM));
        assert_eq!(guarded_index(BPF_PROG_TEST_RUN), Some(1));
        assert_eq!(guarded_index(BPF_MAP_LOOKUP_ELEM), None);
    }

    #[test]
    fn signal_failures() {
        assert!(is_signal_failure(libc::EAGAIN) && is_signal_failure(libc::EINTR));
        assert!(!is_signal_failure(libc::EINVAL));
        assert!(is_signal_failure_ret(-(libc::EAGAIN as i64)));
        assert!(is_signal_failure_ret(-(libc::EINTR as i64)));
        assert!(
            !is_signal_failure_ret(libc::EAGAIN as i64),
            "an fd, not an error"
        );
        assert!(!is_signal_failure_ret(-(libc::EPERM as i64)));
    }

    #[test]
    fn counts_are_keyed_by_the_list() {
        let mut c = CommandCounts::ZERO;
        assert!(c.add(BPF_PROG_LOAD, 3));
        assert!(c.add(BPF_PROG_TEST_RUN, 1));
        assert!(!c.add(BPF_MAP_LOOKUP_ELEM, 7));
        assert_eq!(
            (c.get(BPF_PROG_LOAD), c.get(BPF_MAP_LOOKUP_ELEM), c.total()),
            (3, 0, 4)
        );
        assert_eq!(c.pairs(), [(BPF_PROG_LOAD, 3), (BPF_PROG_TEST_RUN, 1)]);
        assert_eq!(CommandCounts::from_array([3, 1]), c);
    }
}
