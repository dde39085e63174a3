//! bpf(2) command numbers and which of them spinguard guards.

/// `BPF_PROG_LOAD`: the verifier runs inside it and gives up with EAGAIN when
/// `signal_pending(current)` (kernel/bpf/verifier.c, `do_check()`).
pub const BPF_PROG_LOAD: u32 = 5;
/// `BPF_PROG_TEST_RUN`: returns EINTR when a signal is pending between repetitions.
pub const BPF_PROG_TEST_RUN: u32 = 10;
pub const BPF_MAP_LOOKUP_ELEM: u32 = 1;

/// The commands whose duration a pending signal cuts short.
pub const GUARDED_COMMANDS: [u32; 2] = [BPF_PROG_LOAD, BPF_PROG_TEST_RUN];

/// True for the commands spinguard blocks the guard set around. `const` and
/// branch-only: the shim calls it on every `syscall(SYS_bpf, ..)`.
#[inline(always)]
pub const fn is_guarded(cmd: u32) -> bool {
    cmd == BPF_PROG_LOAD || cmd == BPF_PROG_TEST_RUN
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
    }
}
